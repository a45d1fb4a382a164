//! The image gate through the JSON API, on real NTFS images (built by
//! `khoi_inspect::fixtures` from Debian tools): a clean draft publishes, a
//! failing one gets 409 with its findings, an operator cannot override, an
//! admin can with a reason that lands in the audit log with the findings, a
//! kiosk profile fails an enabled admin, and the results survive a restart.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use khoi_admin::schedule::{OnlinePolicy, ScheduleSettings, Scheduler, SystemClock};
use khoi_admin::{Actor, Service, ServiceConfig};
use khoi_block::{BlockDevice, Store, StoreOptions, WriteFlags};
use khoi_inspect::fixtures::{Image, Login, chrome_login};
use khoi_state::State;
use khoi_web::auth::Auth;
use khoi_web::{WebState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A clean counter image (no enabled admin besides the disabled built-in)
/// and the same image with a saved TTHC password.
fn images() -> &'static (Vec<u8>, Vec<u8>) {
    static IMAGES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let mut clean = Image::clean();
        clean.user(1002, "quantri", true);
        let mut dirty = clean.clone();
        dirty.logins.insert(
            chrome_login("canbo", "Default"),
            vec![Login {
                origin: "https://dichvucong.gov.vn/".into(),
                blacklisted: false,
            }],
        );
        (clean.build(), dirty.build())
    })
}

fn make_app(dir: &Path) -> (Router, Arc<Service>) {
    let store = Arc::new(Store::open(dir, StoreOptions::default()).expect("store"));
    let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
    let svc = Arc::new(Service::new(
        store,
        state,
        ServiceConfig {
            data_dir: dir.to_path_buf(),
            default_seat_quota: 1 << 30,
            target_prefix: "iqn.2025-07.vn.khoi".into(),
            iscsi_portal: None,
            nbd_address: None,
            import_roots: vec![],
        },
    ));
    let auth = Auth::new(Arc::clone(&svc), Some("admin-pass-1")).expect("auth");
    let _ = auth.add_user(&Actor::server(), "op", "operator", "operator-pass");
    let scheduler = Scheduler::new(
        Arc::clone(&svc),
        Arc::new(SystemClock),
        ScheduleSettings {
            cron: "0 2 * * *".into(),
            online: OnlinePolicy::Skip,
        },
    )
    .expect("scheduler");
    let app = router(WebState {
        service: Arc::clone(&svc),
        auth: Arc::new(auth),
        scheduler: Arc::new(scheduler),
        secure_cookies: false,
        policy: Default::default(),
        province: None,
    });
    (app, svc)
}

struct S {
    app: Router,
    cookie: String,
    csrf: String,
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let r = app.clone().oneshot(req).await.expect("infallible");
    let status = r.status();
    let bytes = r.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn login(app: &Router, user: &str, pw: &str) -> S {
    let body = serde_urlencoded::to_string([("name", user), ("password", pw)]).expect("form");
    let r = app
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .expect("req"),
        )
        .await
        .expect("infallible");
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "login {user}");
    let cookie = r.headers()[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let mut s = S {
        app: app.clone(),
        cookie,
        csrf: String::new(),
    };
    let (_, page) = s.call(Method::GET, "/audit", None).await;
    s.csrf = page
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf token in the page")
        .to_string();
    s
}

impl S {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::COOKIE, &self.cookie)
            .header(header::HOST, "khoi.test")
            .header("x-csrf-token", &self.csrf)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.map_or_else(String::new, |b| b.to_string())))
            .expect("req");
        send(&self.app, req).await
    }

    async fn json(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (st, text) = self.call(method, uri, body).await;
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (st, v)
    }
}

fn import(svc: &Service, bytes: &[u8]) {
    std::fs::write(svc.staging_dir().join("win.raw"), bytes).expect("stage");
    svc.import(&Actor::server(), "win", "win.raw", "golden")
        .expect("import");
}

fn draft_of(svc: &Service, bytes: &[u8]) {
    svc.draft_open(&Actor::server(), "win").expect("draft");
    let d = svc.store().draft("win").expect("draft open");
    d.write_at(bytes, 0, WriteFlags::NONE).expect("write draft");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_gated_and_only_an_admin_overrides_with_a_reason() {
    let (clean, dirty) = images();
    let dir = tempfile::tempdir().expect("tmp");
    let (app, svc) = make_app(dir.path());
    import(&svc, clean);
    let op = login(&app, "op", "operator-pass").await;
    let admin = login(&app, "admin", "admin-pass-1").await;

    // On demand: the current version passes.
    let (st, r) = op
        .json(Method::POST, "/api/v1/images/win/check", Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "passed", "{r}");

    // A clean draft publishes.
    draft_of(&svc, clean);
    let (st, v) = op
        .json(
            Method::POST,
            "/api/v1/images/win/draft/publish",
            Some(json!({"note": "clean"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["gate"], "passed");

    // A failing draft: the draft check shows it, the publish gets 409
    // with the findings.
    draft_of(&svc, dirty);
    let (st, r) = op
        .json(
            Method::POST,
            "/api/v1/images/win/check",
            Some(json!({"draft": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "failed", "{r}");
    let (st, e) = op
        .json(
            Method::POST,
            "/api/v1/images/win/draft/publish",
            Some(json!({"note": "saved password"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    let findings = e["findings"].as_array().expect("findings");
    assert!(
        findings
            .iter()
            .any(|f| f["rule"] == "saved-browser-password"
                && f["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains("dichvucong.gov.vn"))),
        "{e}"
    );

    // An operator cannot override.
    let (st, e) = op
        .json(
            Method::POST,
            "/api/v1/images/win/draft/publish",
            Some(json!({"note": "x", "override": "the clerk needs it today"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{e}");

    // An admin needs a real reason, then it publishes and is audited.
    let (st, e) = admin
        .json(
            Method::POST,
            "/api/v1/images/win/draft/publish",
            Some(json!({"note": "x", "override": "ok"})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["field"], "override");
    let reason = "pilot seat only, fixed in the next version";
    let (st, v) = admin
        .json(
            Method::POST,
            "/api/v1/images/win/draft/publish",
            Some(json!({"note": "accepted", "override": reason})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["gate"], "overridden");
    let (_, evs) = admin
        .json(Method::GET, "/api/v1/events?kind=image.gate.override", None)
        .await;
    let evs = evs.as_array().expect("events");
    assert_eq!(evs.len(), 1, "{evs:?}");
    let detail = evs[0]["detail"].as_str().expect("detail");
    assert!(detail.contains(reason), "{detail}");
    assert!(
        detail.contains("saved-browser-password") && detail.contains("dichvucong.gov.vn"),
        "{detail}"
    );
    assert_eq!(evs[0]["actor"], "admin");

    // Restart: the badges are still there.
    drop((op, admin, app, svc));
    let (app, _svc) = make_app(dir.path());
    let admin = login(&app, "admin", "admin-pass-1").await;
    let (_, vs) = admin
        .json(Method::GET, "/api/v1/images/win/versions", None)
        .await;
    let badges: Vec<&str> = vs
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["gate"].as_str().expect("badge"))
        .collect();
    assert_eq!(badges, ["passed", "passed", "overridden"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiosk_profile_set_by_an_admin_fails_an_enabled_admin() {
    // The fixture's default: `quantri` is an enabled administrator.
    let with_admin = Image::clean().build();
    let dir = tempfile::tempdir().expect("tmp");
    let (app, svc) = make_app(dir.path());
    import(&svc, &with_admin);
    let op = login(&app, "op", "operator-pass").await;
    let admin = login(&app, "admin", "admin-pass-1").await;
    let counter = json!({"profile": "counter", "admin_allow": ["quantri"], "disabled": []});
    let (st, _) = op
        .json(
            Method::PUT,
            "/api/v1/images/win/gate",
            Some(counter.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "the policy is an admin decision");
    let (st, g) = admin
        .json(Method::PUT, "/api/v1/images/win/gate", Some(counter))
        .await;
    assert_eq!(st, StatusCode::OK, "{g}");
    wait_badge(&admin, "passed").await;
    let (st, g) = admin
        .json(
            Method::PUT,
            "/api/v1/images/win/gate",
            Some(json!({"profile": "kiosk", "admin_allow": ["quantri"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{g}");
    assert_eq!(g["profile"], "kiosk");
    wait_badge(&admin, "failed").await;
    let (_, r) = admin
        .json(
            Method::POST,
            "/api/v1/images/win/check",
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(r["status"], "failed");
    assert_eq!(r["report"]["profile"], "kiosk");
    assert!(
        r["report"]["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["rule"] == "extra-administrator"),
        "{r}"
    );
}

/// The background re-check lands on its own time.
async fn wait_badge(s: &S, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, vs) = s
            .json(Method::GET, "/api/v1/images/win/versions", None)
            .await;
        if vs[0]["gate"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "badge never became {want}: {vs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_badges_findings_and_a_seat_on_a_failed_version() {
    let (_, dirty) = images();
    let dir = tempfile::tempdir().expect("tmp");
    let (app, svc) = make_app(dir.path());
    // The first version of an image has nothing to fall back to: it is
    // current, marked failed, and a seat on it is flagged.
    import(&svc, dirty);
    svc.add_seat(
        &Actor::server(),
        &khoi_admin::service::AddSeat {
            name: "quay-01".into(),
            mac: "02:00:00:00:00:01".into(),
            image: "win".into(),
            version: None,
            policy: None,
            quota: None,
            initiator_iqn: None,
            mutual_chap: false,
        },
    )
    .expect("seat");
    let admin = login(&app, "admin", "admin-pass-1").await;
    let (st, page) = admin.call(Method::GET, "/images/win", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains("badge gate-failed"), "badge on the page");
    assert!(
        page.contains("data-rule=\"saved-browser-password\"") && page.contains("dichvucong.gov.vn"),
        "findings listed"
    );
    let (_, dash) = admin.call(Method::GET, "/", None).await;
    let row = dash
        .split("data-seat=\"quay-01\"")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .expect("seat row");
    assert!(row.contains("gate-failed"), "{row}");
}

/// Over the API: the fix is admin only and answers with the diff of
/// findings; pinning a seat to a failed version is 409 with the findings
/// until an admin gives a reason (`"override"` in the same JSON); the
/// report lists the override; the PDF is a PDF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fix_pins_and_report_over_the_api() {
    let (clean, dirty) = images();
    let dir = tempfile::tempdir().expect("tmp");
    let (app, svc) = make_app(dir.path());
    import(&svc, clean);
    // A failing import is kept as version 2, not current, not overridden.
    import(&svc, dirty);
    let op = login(&app, "op", "operator-pass").await;
    let admin = login(&app, "admin", "admin-pass-1").await;

    // A seat pinned to the failed version: 409 with the findings, an
    // operator's reason is 403, an admin's goes through.
    let seat = json!({"name": "quay-1", "mac": "52:54:00:12:34:09", "image": "win", "version": 2});
    let (st, r) = op
        .json(Method::POST, "/api/v1/seats", Some(seat.clone()))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{r}");
    assert!(
        r["findings"].as_array().is_some_and(|f| !f.is_empty()),
        "{r}"
    );
    let mut seat1 = seat.clone();
    seat1["version"] = json!(1);
    let (st, s) = op.json(Method::POST, "/api/v1/seats", Some(seat1)).await;
    assert_eq!(st, StatusCode::OK, "{s}");
    let (st, r) = admin
        .json(
            Method::PATCH,
            "/api/v1/seats/quay-1",
            Some(json!({"pinned_version": 2})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{r}");
    let (st, _) = op
        .json(
            Method::PATCH,
            "/api/v1/seats/quay-1",
            Some(json!({"pinned_version": 2, "override": "the clerk needs it today"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let reason = "thí điểm ở quầy 1, sửa bản sau";
    let (st, s) = admin
        .json(
            Method::PATCH,
            "/api/v1/seats/quay-1",
            Some(json!({"pinned_version": 2, "override": reason})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{s}");
    assert_eq!(s["pinned_version"], 2);
    // Unpinning with `null` still works through the wrapper.
    let (st, s) = admin
        .json(
            Method::PATCH,
            "/api/v1/seats/quay-1",
            Some(json!({"pinned_version": null})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{s}");
    assert_eq!(s["pinned_version"], Value::Null);

    // The fix of a failing draft: an operator may not; an admin gets the diff.
    draft_of(&svc, dirty);
    let (st, _) = op.json(Method::POST, "/api/v1/images/win/fix", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, f) = admin
        .json(Method::POST, "/api/v1/images/win/fix", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{f}");
    assert_eq!(f["opened_draft"], false, "the open draft is fixed: {f}");
    assert_eq!(f["remedies"], json!(["saved-passwords"]), "{f}");
    assert_eq!(f["after"]["findings"], json!([]), "{f}");
    assert_eq!(
        f["diff"]["fixed"][0]["rule"], "saved-browser-password",
        "{f}"
    );

    // The report of today has the override with its reason.
    let (st, r) = op.json(Method::GET, "/api/v1/report", None).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert!(r.to_string().contains(reason), "{r}");
    let (st, pdf) = op.call(Method::GET, "/api/v1/report.pdf", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(pdf.starts_with("%PDF-"));
    let (st, _) = op
        .call(Method::GET, "/api/v1/report?from=2026-13-01", None)
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
}
