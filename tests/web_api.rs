//! The admin web page and its JSON API, in process (tower `oneshot`): every
//! endpoint, with the 401/403/422 answers and CSRF refusals.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use khoi_admin::schedule::{OnlinePolicy, ScheduleSettings, Scheduler, SystemClock};
use khoi_admin::{Actor, Service, ServiceConfig};
use khoi_block::{Store, StoreOptions};
use khoi_state::{NewEvent, State};
use khoi_web::auth::Auth;
use khoi_web::pages::province::{ProvinceSite, ProvinceSource, SiteState, StandbyView};
use khoi_web::{WebState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

struct H {
    app: Router,
    svc: Arc<Service>,
    _dir: tempfile::TempDir,
}

fn harness() -> H {
    harness_with(None)
}

fn harness_with(province: Option<Arc<dyn ProvinceSource>>) -> H {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("store"));
    let state = Arc::new(State::open(&dir.path().join("khoi.db")).expect("state"));
    let svc = Arc::new(Service::new(
        store,
        Arc::clone(&state),
        ServiceConfig {
            data_dir: dir.path().to_path_buf(),
            default_seat_quota: 1 << 30,
            target_prefix: "iqn.2025-07.vn.khoi".into(),
            iscsi_portal: Some("127.0.0.1:3260".into()),
            nbd_address: None,
            import_roots: vec![dir.path().to_path_buf()],
        },
    ));
    // These images are blank disks, which the image gate fails
    // (`no-windows-volume`); the gate has its own tests (web_gate.rs).
    svc.set_gate_enforced(false);
    let auth = Auth::new(Arc::clone(&svc), Some("admin-pass-1")).expect("auth");
    auth.add_user(&Actor::server(), "op", "operator", "operator-pass")
        .expect("op");
    auth.add_user(&Actor::server(), "vi", "viewer", "viewer-pass")
        .expect("viewer");
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
        province,
    });
    H {
        app,
        svc,
        _dir: dir,
    }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn send(app: &Router, req: Request<Body>) -> Resp {
    let r = app.clone().oneshot(req).await.expect("infallible");
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.into_body().collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn form_body(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("form")
}

struct S<'a> {
    app: &'a Router,
    cookie: String,
    csrf: String,
}

async fn login<'a>(h: &'a H, user: &str, pw: &str) -> S<'a> {
    let r = send(
        &h.app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form_body(&[("name", user), ("password", pw)])))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "login {user}: {}", r.body);
    let set = r.headers[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().expect("pair").to_string();
    let mut s = S {
        app: &h.app,
        cookie,
        csrf: String::new(),
    };
    let page = s.get("/audit").await;
    assert_eq!(page.status, StatusCode::OK);
    s.csrf = page
        .body
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf token in the page")
        .to_string();
    s
}

impl S<'_> {
    fn req(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::COOKIE, &self.cookie)
            .header(header::HOST, "khoi.test")
    }

    async fn get(&self, uri: &str) -> Resp {
        send(
            self.app,
            self.req(Method::GET, uri).body(Body::empty()).expect("req"),
        )
        .await
    }

    async fn json(&self, method: Method, uri: &str, body: Value) -> Resp {
        let req = self
            .req(method, uri)
            .header("x-csrf-token", &self.csrf)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("req");
        send(self.app, req).await
    }

    async fn post(&self, uri: &str, body: Value) -> Resp {
        self.json(Method::POST, uri, body).await
    }

    async fn delete(&self, uri: &str) -> Resp {
        let req = self
            .req(Method::DELETE, uri)
            .header("x-csrf-token", &self.csrf)
            .body(Body::empty())
            .expect("req");
        send(self.app, req).await
    }

    async fn form(&self, uri: &str, pairs: &[(&str, &str)]) -> Resp {
        let mut all = vec![("_csrf", self.csrf.as_str())];
        all.extend_from_slice(pairs);
        let req = self
            .req(Method::POST, uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, "http://khoi.test")
            .body(Body::from(form_body(&all)))
            .expect("req");
        send(self.app, req).await
    }

    /// The flash message shown after a form redirect.
    async fn flash(&self, page: &str) -> String {
        let r = self.get(page).await;
        r.body
            .split("class=\"flash ")
            .nth(1)
            .and_then(|f| f.split("</div>").next())
            .unwrap_or("")
            .to_string()
    }
}

fn stage(h: &H, file: &str, mib: usize, fill: u8) {
    let staging = h.svc.staging_dir();
    std::fs::create_dir_all(&staging).expect("staging");
    let mut data = vec![0u8; mib << 20];
    data[4096..8192].fill(fill);
    std::fs::write(staging.join(file), data).expect("stage");
}

#[tokio::test]
async fn unauthenticated_calls_get_401_and_pages_redirect() {
    let h = harness();
    for (m, uri) in [
        (Method::GET, "/api/v1/seats"),
        (Method::GET, "/api/v1/images"),
        (Method::POST, "/api/v1/reset-all"),
        (Method::GET, "/api/v1/users"),
    ] {
        let r = send(
            &h.app,
            Request::builder()
                .method(m)
                .uri(uri)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(r.json()["error"].is_string());
    }
    let r = send(
        &h.app,
        Request::get("/seats").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/login");
    let r = send(
        &h.app,
        Request::get("/login").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Đăng nhập"), "Vietnamese by default");
    let forged = Request::get("/api/v1/seats")
        .header(header::COOKIE, "khoi_session=forged")
        .body(Body::empty())
        .expect("req");
    assert_eq!(send(&h.app, forged).await.status, StatusCode::UNAUTHORIZED);
    let metrics = send(
        &h.app,
        Request::get("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.body.contains("khoi_admin_login_failures_total"),
        "{}",
        metrics.body
    );
}

/// `/metrics` declares each family once, with the type its values have
/// (totals are counters, levels gauges, latencies histograms).
#[tokio::test]
async fn metrics_scrape_declares_each_family_once_with_its_type() {
    let h = harness();
    // A seat session and some I/O, so the labelled families have samples.
    h.svc.activity().connected("seat-1", "nbd", "10.0.0.9:5000");
    h.svc.activity().meter("seat-1", "nbd").record(
        khoi_admin::IoOp::Read,
        4096,
        Some(std::time::Duration::from_micros(80)),
    );
    let r = send(
        &h.app,
        Request::get("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("application/openmetrics-text"),
    );
    let types =
        khoi_admin::metrics::declared_types(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body));
    for (name, kind) in [
        ("khoi_sessions", "gauge"),
        ("khoi_read_bytes", "counter"),
        ("khoi_written_bytes", "counter"),
        ("khoi_ops", "counter"),
        ("khoi_request_latency_seconds", "histogram"),
        ("khoi_admin_login_failures", "counter"),
    ] {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(kind),
            "{name}\n{}",
            r.body
        );
    }
    assert!(
        r.body
            .contains("khoi_read_bytes_total{seat=\"seat-1\",proto=\"nbd\"} 4096"),
        "{}",
        r.body
    );
    assert!(r.body.trim_end().ends_with("# EOF"), "{}", r.body);
}

#[tokio::test]
async fn login_is_rate_limited_and_audited() {
    let h = harness();
    for _ in 0..5 {
        let r = send(
            &h.app,
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form_body(&[
                    ("name", "admin"),
                    ("password", "wrong"),
                ])))
                .expect("req"),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = send(
        &h.app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form_body(&[
                ("name", "admin"),
                ("password", "admin-pass-1"),
            ])))
            .expect("req"),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    // The five wrong passwords are audited; the refusal before any check
    // (429) is not, so a flood of refused logins cannot fill the disk.
    let failed = h.svc.state().events(Some("admin"), 10).expect("events");
    assert!(failed.iter().all(|e| e.kind == "login.failed"));
    assert_eq!(failed.len(), 5);
}

#[tokio::test]
async fn csrf_and_origin_are_enforced_on_every_change() {
    let h = harness();
    let s = login(&h, "admin", "admin-pass-1").await;
    stage(&h, "a.raw", 4, 1);
    // No token.
    let r = send(
        &h.app,
        s.req(Method::POST, "/api/v1/reset-all")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Wrong token.
    let r = send(
        &h.app,
        s.req(Method::POST, "/api/v1/reset-all")
            .header("x-csrf-token", "0".repeat(64))
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A form without the field.
    let r = send(
        &h.app,
        s.req(Method::POST, "/seats/reset-all")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("x=1"))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The right token from another site.
    let r = send(
        &h.app,
        s.req(Method::POST, "/api/v1/reset-all")
            .header("x-csrf-token", &s.csrf)
            .header(header::ORIGIN, "http://evil.example")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(
        &h.app,
        s.req(Method::POST, "/api/v1/reset-all")
            .header("x-csrf-token", &s.csrf)
            .header("sec-fetch-site", "cross-site")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Logout is a change too.
    let r = send(
        &h.app,
        s.req(Method::POST, "/logout")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // And with everything right it works.
    let r = s.post("/api/v1/reset-all", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s.form("/logout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        s.get("/api/v1/seats").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn roles_viewer_operator_admin() {
    let h = harness();
    stage(&h, "a.raw", 4, 1);
    let admin = login(&h, "admin", "admin-pass-1").await;
    let r = admin
        .post(
            "/api/v1/images",
            json!({"name": "win10", "staged": "a.raw", "note": "base"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let viewer = login(&h, "vi", "viewer-pass").await;
    assert_eq!(viewer.get("/api/v1/seats").await.status, StatusCode::OK);
    assert_eq!(viewer.get("/").await.status, StatusCode::OK);
    for (uri, body) in [
        (
            "/api/v1/seats",
            json!({"name": "s1", "mac": "02:00:00:00:00:01", "image": "win10"}),
        ),
        ("/api/v1/reset-all", json!({})),
        ("/api/v1/images/win10/draft", json!({})),
        ("/api/v1/schedule/run", json!({})),
    ] {
        assert_eq!(
            viewer.post(uri, body).await.status,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
    }
    assert_eq!(
        viewer.form("/seats/reset-all", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(viewer.get("/users").await.status, StatusCode::FORBIDDEN);
    let page = viewer.get("/seats").await.body;
    assert!(
        !page.contains("action=\"/seats/reset-all\""),
        "viewers see no buttons"
    );

    let op = login(&h, "op", "operator-pass").await;
    let r = op
        .post(
            "/api/v1/seats",
            json!({"name": "s1", "mac": "02:00:00:00:00:01", "image": "win10"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        op.post("/api/v1/seats/s1/reset", json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(op.get("/api/v1/users").await.status, StatusCode::FORBIDDEN);
    let r = op
        .post(
            "/api/v1/users",
            json!({"name": "x", "role": "admin", "password": "12345678"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(op.get("/users").await.status, StatusCode::FORBIDDEN);
    assert_eq!(admin.get("/users").await.status, StatusCode::OK);
    // The audit log names the web user and address.
    let ev = h.svc.state().events(Some("s1"), 5).expect("events");
    assert!(
        ev.iter().any(|e| e.kind == "seat.reset" && e.actor == "op"),
        "{ev:?}"
    );
    // The Vietnamese page names the kind and words the detail from the
    // event's values; the English detail stays in the record (API, CSV).
    let page = admin.get("/audit?subject=s1").await.body;
    assert!(page.contains("Khôi phục máy trạm"), "{page}");
    assert!(page.contains("Về phiên bản 1"), "{page}");
    assert!(!page.contains("on version 1"), "{page}");
}

#[tokio::test]
async fn bad_input_is_400_or_422_naming_the_field() {
    let h = harness();
    stage(&h, "a.raw", 4, 1);
    let s = login(&h, "admin", "admin-pass-1").await;
    s.post(
        "/api/v1/images",
        json!({"name": "win10", "staged": "a.raw"}),
    )
    .await;
    let cases = [
        (json!({"name": "s1", "mac": "zz", "image": "win10"}), "mac"),
        (
            json!({"name": "Bad Name", "mac": "02:00:00:00:00:01", "image": "win10"}),
            "name",
        ),
        (
            json!({"name": "s1", "mac": "02:00:00:00:00:01", "image": "win10", "version": 9}),
            "version",
        ),
        (
            json!({"mac": "02:00:00:00:00:01", "image": "win10"}),
            "name",
        ),
    ];
    for (body, field) in cases {
        let r = s.post("/api/v1/seats", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert_eq!(r.json()["field"], field, "{body}: {}", r.body);
    }
    let r = s
        .req(Method::POST, "/api/v1/seats")
        .header("x-csrf-token", &s.csrf)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .expect("req");
    let r = send(&h.app, r).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].is_string());
    let r = s
        .post("/api/v1/images/win10/draft/publish", json!({"note": " "}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT.max(r.status));
    let r = s
        .post(
            "/api/v1/schedule",
            json!({"cron": "every night", "online": "skip"}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("cron"))
    );
    let r = s
        .post(
            "/api/v1/schedule",
            json!({"cron": "0 2 * * *", "online": "maybe"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = s
        .post(
            "/api/v1/users",
            json!({"name": "x", "role": "root", "password": "12345678"}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("role"))
    );
    let r = s
        .post(
            "/api/v1/users",
            json!({"name": "x", "role": "viewer", "password": "short"}),
        )
        .await;
    assert_eq!(r.json()["field"], "password");
    let r = s.get("/api/v1/seats/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s
        .post(
            "/api/v1/images/import-path",
            json!({"name": "x", "path": "relative.img"}),
        )
        .await;
    assert_eq!(r.json()["field"], "path");
    // Only the configured import folders: not any file the server can read.
    let r = s
        .post(
            "/api/v1/images/import-path",
            json!({"name": "x", "path": "/etc/hostname"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["field"], "path");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("import folders")
    );
    let r = s.get("/api/v1/images/win10/versions/abc").await;
    assert!(r.status.is_client_error(), "{}", r.status);
    // Form posts with bad input come back as a message, never a 500.
    let r = s
        .form(
            "/seats",
            &[("name", "s2"), ("mac", "bogus"), ("image", "win10")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(s.flash("/seats").await.contains("mac"));
    let r = s.get("/audit?from=yesterday").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("from"));
}

#[tokio::test]
async fn every_endpoint_round_trip() {
    let h = harness();
    stage(&h, "a.raw", 4, 1);
    let s = login(&h, "admin", "admin-pass-1").await;
    assert_eq!(s.get("/api/v1/info").await.status, StatusCode::OK);
    let r = s
        .post(
            "/api/v1/images",
            json!({"name": "win10", "staged": "a.raw", "note": "base"}),
        )
        .await;
    assert_eq!(r.json()["number"], 1);
    assert_eq!(s.get("/api/v1/images").await.json()[0]["name"], "win10");
    // Server-side path import (raw; qemu-img formats go the same way).
    let src = h._dir.path().join("disk.img");
    std::fs::write(&src, vec![7u8; 1 << 20]).expect("src");
    let r = s
        .post(
            "/api/v1/images/import-path",
            json!({"name": "win10", "path": src, "note": "v2"}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["number"].clone()),
        (StatusCode::OK, json!(2)),
        "{}",
        r.body
    );
    // Browser upload: the raw body streamed to staging.
    let mut disk = vec![0u8; 2 << 20];
    disk[100] = 9;
    let req = s
        .req(Method::POST, "/api/v1/images/upload?name=other&note=up")
        .header("x-csrf-token", &s.csrf)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(disk))
        .expect("req");
    let r = send(&h.app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let req = s
        .req(Method::POST, "/api/v1/images/upload?name=bad")
        .header("x-csrf-token", &s.csrf)
        .body(Body::from(vec![1u8; 1000]))
        .expect("req");
    let r = send(&h.app, req).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("body"))
    );
    let staged: Vec<_> = std::fs::read_dir(h.svc.staging_dir())
        .expect("ls")
        .collect();
    assert!(
        staged.is_empty(),
        "failed uploads leave nothing behind: {staged:?}"
    );

    let versions = s.get("/api/v1/images/win10/versions").await.json();
    assert_eq!(versions.as_array().map(Vec::len), Some(2));
    // Seats.
    let r = s
        .post(
            "/api/v1/seats",
            json!({"name": "s1", "mac": "02:00:00:00:00:01", "image": "win10"}),
        )
        .await;
    assert_eq!(r.json()["active_version"], 2);
    assert_eq!(
        s.get("/api/v1/seats").await.json().as_array().map(Vec::len),
        Some(1)
    );
    let d = s.get("/api/v1/seats/s1").await.json();
    assert_eq!(d["target_iqn"], "iqn.2025-07.vn.khoi:s1");
    let r = s
        .json(
            Method::PATCH,
            "/api/v1/seats/s1",
            json!({"pinned_version": 1, "policy": "nightly"}),
        )
        .await;
    assert_eq!(
        (
            r.json()["pinned_version"].clone(),
            r.json()["policy"].clone()
        ),
        (json!(1), json!("nightly"))
    );
    let r = s.post("/api/v1/seats/s1/reset", json!({})).await;
    assert_eq!(r.json()["active_version"], 1);
    // Maintenance opens the draft; the seat's export is the draft.
    let r = s
        .post("/api/v1/seats/s1/maintenance", json!({"on": true}))
        .await;
    assert_eq!(r.json()["maintenance"], true, "{}", r.body);
    assert!(
        s.get("/api/v1/images").await.json()[1]["has_draft"] == true
            || s.get("/api/v1/images").await.json()[0]["has_draft"] == true
    );
    // A running maintenance seat blocks publishing unless forced.
    h.svc.activity().connected("s1", "iscsi", "127.0.0.1:4000");
    let r = s
        .post(
            "/api/v1/images/win10/draft/publish",
            json!({"note": "office 2021"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = s
        .post(
            "/api/v1/images/win10/draft/publish",
            json!({"note": "office 2021", "force": true}),
        )
        .await;
    assert_eq!(r.json()["number"], 3, "{}", r.body);
    h.svc
        .activity()
        .disconnected("s1", "iscsi", "127.0.0.1:4000");
    assert_eq!(
        s.post("/api/v1/images/win10/draft", json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.delete("/api/v1/images/win10/draft").await.status,
        StatusCode::OK
    );
    let r = s
        .post("/api/v1/images/win10/rollback", json!({"to": 2}))
        .await;
    assert_eq!(r.json()["current"], true);
    // Version 1 is pinned by s1: refused; after unpinning it can go.
    assert_eq!(
        s.delete("/api/v1/images/win10/versions/1").await.status,
        StatusCode::CONFLICT
    );
    s.json(
        Method::PATCH,
        "/api/v1/seats/s1",
        json!({"pinned_version": null, "maintenance": false}),
    )
    .await;
    s.post("/api/v1/seats/s1/reset", json!({})).await;
    let r = s.delete("/api/v1/images/win10/versions/1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s.post("/api/v1/reset-all", json!({})).await;
    assert_eq!(r.json()["reset"], json!(["s1"]));
    // Health, unknown MACs, events.
    assert!(s.get("/api/v1/health").await.json()["total_bytes"].as_u64() > Some(0));
    h.svc
        .state()
        .record(&NewEvent {
            kind: "pxe.unknown_mac",
            actor: "khoi",
            source: "10.0.0.7",
            subject: "02:00:00:00:00:99",
            detail: "bios",
            args: &[],
        })
        .expect("event");
    assert_eq!(
        s.get("/api/v1/unknown-macs").await.json()[0]["mac"],
        "02:00:00:00:00:99"
    );
    let ev = s
        .get("/api/v1/events?kind=seat.&subject=s1&limit=3")
        .await
        .json();
    assert_eq!(ev.as_array().map(Vec::len), Some(3));
    assert!(
        ev.as_array()
            .expect("list")
            .iter()
            .all(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("seat.")))
    );
    // Schedule.
    let r = s
        .post(
            "/api/v1/schedule",
            json!({"cron": "30 22 * * 1-5", "online": "force"}),
        )
        .await;
    assert_eq!(r.json()["cron"], "30 22 * * 1-5");
    assert!(r.json()["next_run"].is_i64());
    assert_eq!(s.get("/api/v1/schedule").await.json()["online"], "force");
    let r = s.post("/api/v1/schedule/run", json!({})).await;
    assert_eq!(r.json()["reset"], json!(["s1"]), "{}", r.body);
    assert_eq!(r.json()["still_on"], json!([]), "{}", r.body);
    // The schedule page says who was still on at the last run.
    let page = s.get("/schedule").await.body;
    assert!(
        page.contains("id=\"still-on\">không có: mọi máy đều đã tắt<"),
        "{page}"
    );
    h.svc.activity().connected("s1", "iscsi", "10.0.0.7:50000");
    let r = s.post("/api/v1/schedule/run", json!({})).await;
    assert_eq!(r.json()["still_on"], json!(["s1"]), "{}", r.body);
    let page = s.get("/schedule").await.body;
    assert!(
        page.contains("id=\"still-on\"><strong>s1</strong>"),
        "{page}"
    );
    assert!(page.contains("còn bật 1: s1"), "the run's detail: {page}");
    h.svc
        .activity()
        .disconnected("s1", "iscsi", "10.0.0.7:50000");
    // Users.
    let r = s
        .post(
            "/api/v1/users",
            json!({"name": "lan", "role": "viewer", "password": "lan-pass-123"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .post(
            "/api/v1/users",
            json!({"name": "lan", "role": "viewer", "password": "lan-pass-123"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = s
        .json(
            Method::PATCH,
            "/api/v1/users/lan",
            json!({"role": "operator", "password": "lan-pass-456"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let users = s.get("/api/v1/users").await.json();
    assert!(
        users
            .as_array()
            .expect("users")
            .iter()
            .all(|u| u.get("hash").is_none()),
        "hashes stay on the server"
    );
    assert_eq!(s.delete("/api/v1/users/lan").await.status, StatusCode::OK);
    assert_eq!(
        s.delete("/api/v1/users/admin").await.status,
        StatusCode::CONFLICT,
        "last admin"
    );
    // Cleanup endpoints.
    assert_eq!(s.delete("/api/v1/seats/s1").await.status, StatusCode::OK);
    assert_eq!(
        s.delete("/api/v1/images/other").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn pages_and_forms_work_and_escape_user_text() {
    let h = harness();
    stage(&h, "a.raw", 4, 1);
    let s = login(&h, "admin", "admin-pass-1").await;
    let evil = "<script>alert(1)</script>";
    s.post(
        "/api/v1/images",
        json!({"name": "win10", "staged": "a.raw", "note": evil}),
    )
    .await;
    h.svc
        .state()
        .record(&NewEvent {
            kind: "pxe.unknown_mac",
            actor: "khoi",
            source: "10.0.0.7",
            subject: "02:00:00:00:00:42",
            detail: evil,
            args: &[],
        })
        .expect("event");
    for page in [
        "/",
        "/images",
        "/images/win10",
        "/seats",
        "/schedule",
        "/audit",
        "/users",
    ] {
        let r = s.get(page).await;
        assert_eq!(r.status, StatusCode::OK, "{page}");
        assert!(!r.body.contains(evil), "{page} must escape user text");
    }
    assert!(
        s.get("/images/win10")
            .await
            .body
            .contains("&#60;script&#62;")
            || s.get("/images/win10").await.body.contains("&lt;script&gt;")
    );
    // Enrol the unknown MAC in one click.
    let r = s
        .form(
            "/seats/enrol",
            &[("mac", "02:00:00:00:00:42"), ("image", "win10")],
        )
        .await;
    assert_eq!(r.headers[header::LOCATION], "/seats/seat-000042");
    assert!(h.svc.state().unknown_macs(10).expect("q").is_empty());
    let seat = s.get("/seats/seat-000042").await;
    assert!(seat.body.contains("iqn.2025-07.vn.khoi:seat-000042"));
    // Edit, maintenance, reset, draft, publish, rollback via forms.
    assert_eq!(
        s.form(
            "/seats/seat-000042",
            &[
                ("policy", "persistent"),
                ("quota_gib", "5"),
                ("version", "")
            ]
        )
        .await
        .status,
        StatusCode::SEE_OTHER
    );
    assert!(s.flash("/seats/seat-000042").await.contains("seat-000042"));
    s.form("/seats/seat-000042/maintenance", &[("on", "1")])
        .await;
    assert!(h.svc.seats().expect("seats")[0].maintenance);
    s.form("/images/win10/draft/publish", &[("note", "cài Office")])
        .await;
    assert!(s.flash("/images/win10").await.contains("v2"));
    s.form("/images/win10/rollback", &[("to", "1")]).await;
    assert_eq!(h.svc.images()[0].current, 1);
    s.form("/seats/seat-000042/maintenance", &[("on", "0")])
        .await;
    s.form("/seats/seat-000042/reset", &[]).await;
    assert!(s.flash("/seats/seat-000042").await.contains("seat-000042"));
    s.form("/images/win10/draft", &[]).await;
    s.form("/images/win10/draft/discard", &[]).await;
    s.form("/schedule", &[("cron", "0 3 * * *"), ("online", "skip")])
        .await;
    assert!(s.get("/schedule").await.body.contains("0 3 * * *"));
    s.form("/schedule/run", &[]).await;
    s.form(
        "/users",
        &[
            ("name", "hoa"),
            ("role", "operator"),
            ("password", "mat-khau-1"),
        ],
    )
    .await;
    s.form("/users/hoa", &[("role", "viewer"), ("password", "")])
        .await;
    s.form("/users/hoa/delete", &[]).await;
    s.form("/images/win10/versions/2/delete", &[]).await;
    // English switch.
    let r = send(
        &h.app,
        s.req(Method::GET, "/lang/en?back=/seats")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.headers[header::LOCATION], "/seats");
    let lang = r.headers[header::SET_COOKIE]
        .to_str()
        .expect("c")
        .split(';')
        .next()
        .expect("kv")
        .to_string();
    let en = send(
        &h.app,
        s.req(Method::GET, "/seats")
            .header(header::COOKIE, format!("{}; {lang}", s.cookie))
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert!(en.body.contains("Reset now"), "English page");
    let open = send(
        &h.app,
        s.req(Method::GET, "/lang/en?back=//evil.example")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(open.headers[header::LOCATION], "/", "no open redirect");
    // Audit filter and CSV export.
    let a = s.get("/audit?kind=seat.&subject=seat-000042").await;
    assert!(a.body.contains("seat.add"));
    let csv = s.get("/audit.csv?kind=image.").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("text/csv")
    );
    assert!(csv.body.contains("image.import") && !csv.body.contains("seat.add"));
    assert!(csv.body.contains("login") || csv.body.lines().count() >= 2);
    let all = s.get("/audit.csv").await.body;
    assert!(all.contains("\"login\""), "logins are audited");
}

// ---- attacks of issue 10, replayed in process ----

/// Attack 7: the viewer role read CHAP secrets through the API although the
/// seat page hides them.
#[tokio::test]
async fn a_viewer_never_reads_a_chap_secret_through_the_api() {
    let h = harness();
    stage(&h, "a.raw", 4, 1);
    let admin = login(&h, "admin", "admin-pass-1").await;
    let r = admin
        .post(
            "/api/v1/images",
            json!({"name": "win10", "staged": "a.raw", "note": "base"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = admin
        .post(
            "/api/v1/seats",
            json!({"name": "s1", "mac": "02:00:00:00:00:01", "image": "win10", "mutual_chap": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let secret = admin.get("/api/v1/seats/s1").await.json()["chap_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    assert!(!secret.is_empty());
    let viewer = login(&h, "vi", "viewer-pass").await;
    let r = viewer.get("/api/v1/seats/s1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains(&secret), "{}", r.body);
    assert_eq!(r.json()["chap_secret"], "");
    assert!(r.json()["mutual_chap_secret"].is_null(), "{}", r.body);
    for uri in ["/api/v1/seats", "/seats/s1", "/seats"] {
        assert!(!viewer.get(uri).await.body.contains(&secret), "{uri}");
    }
    let op = login(&h, "op", "operator-pass").await;
    assert_eq!(
        op.get("/api/v1/seats/s1").await.json()["chap_secret"],
        secret
    );
}

/// Attack 7: `password` and eight spaces were accepted as passwords.
#[tokio::test]
async fn weak_passwords_are_refused() {
    let h = harness();
    let s = login(&h, "admin", "admin-pass-1").await;
    for pw in [
        "password",
        "        ",
        "            ",
        "12345678",
        "matkhau123",
        "Password123",
        &"long-pass-".repeat(13),
    ] {
        let r = s
            .post(
                "/api/v1/users",
                json!({"name": "lan", "role": "viewer", "password": pw}),
            )
            .await;
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!("password")),
            "{pw:?}: {}",
            r.body
        );
    }
    let r = s
        .post(
            "/api/v1/users",
            json!({"name": "x".repeat(65), "role": "viewer", "password": "lan-pass-123"}),
        )
        .await;
    assert_eq!(r.json()["field"], "name", "{}", r.body);
}

/// Attack 7: a password change left the user's other sessions alive.
#[tokio::test]
async fn a_password_change_ends_the_other_sessions() {
    let h = harness();
    let stolen = login(&h, "op", "operator-pass").await;
    let mine = login(&h, "op", "operator-pass").await;
    let admin = login(&h, "admin", "admin-pass-1").await;
    let r = admin
        .json(
            Method::PATCH,
            "/api/v1/users/op",
            json!({"password": "a-fresh-pass-9"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for s in [&stolen, &mine] {
        assert_eq!(
            s.get("/api/v1/seats").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Changing one's own password keeps the session that did it.
    let a2 = login(&h, "admin", "admin-pass-1").await;
    let r = admin
        .json(
            Method::PATCH,
            "/api/v1/users/admin",
            json!({"password": "admin-pass-2x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(admin.get("/api/v1/seats").await.status, StatusCode::OK);
    assert_eq!(
        a2.get("/api/v1/seats").await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Attack 7: `/lang/<x>?back=/\evil.example` redirected off-site.
#[tokio::test]
async fn language_switch_redirects_only_to_local_paths() {
    let h = harness();
    for back in [
        "/\\evil.example",
        "//evil.example",
        "https://evil.example",
        "/%0d%0aX",
    ] {
        let uri = format!(
            "/lang/en?back={}",
            back.replace('\\', "%5C")
                .replace('/', "%2F")
                .replace(':', "%3A")
        );
        let r = send(
            &h.app,
            Request::get(uri.as_str()).body(Body::empty()).expect("req"),
        )
        .await;
        let to = r.headers[header::LOCATION].to_str().expect("location");
        assert_eq!(to, "/", "{back}");
    }
    let r = send(
        &h.app,
        Request::get("/lang/en?back=%2Fseats")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.headers[header::LOCATION], "/seats");
}

/// Attack 7: no security headers; pages with secrets could be cached or
/// framed.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let h = harness();
    let s = login(&h, "admin", "admin-pass-1").await;
    for uri in ["/login", "/", "/seats", "/api/v1/seats", "/nope"] {
        let r = s.get(uri).await;
        let hv = |k: &str| {
            r.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert!(
            hv("content-security-policy").contains("frame-ancestors 'none'"),
            "{uri}"
        );
        assert!(
            hv("content-security-policy").contains("script-src 'self'"),
            "{uri}"
        );
        assert_eq!(hv("x-content-type-options"), "nosniff", "{uri}");
        assert_eq!(hv("referrer-policy"), "same-origin", "{uri}");
        assert_eq!(hv("cache-control"), "no-store", "{uri}");
    }
    let css = s.get("/static/app.css").await;
    assert!(css.headers.get("cache-control").is_none());
}

/// Attack 7: `Host` was not checked (DNS rebinding reaches the page with
/// the officer's cookies).
#[tokio::test]
async fn a_foreign_host_is_refused() {
    let mut h = harness();
    let st_policy = khoi_web::policy::HttpPolicy {
        hosts: Some(khoi_web::policy::HostCheck {
            names: vec!["khoi.test".into()],
            listen: "127.0.0.1".parse().expect("ip"),
        }),
        ..Default::default()
    };
    h.app = rebuild(&h, st_policy);
    for (host, ok) in [
        ("evil.example", false),
        ("evil.example:8080", false),
        ("khoi.test", true),
        ("127.0.0.1:8080", true),
        ("localhost", true),
    ] {
        let r = send(
            &h.app,
            Request::get("/login")
                .header(header::HOST, host)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!(r.status == StatusCode::OK, ok, "{host}: {}", r.status);
    }
}

/// Attack 7: `/metrics` was public and lists seat names.
#[tokio::test]
async fn metrics_need_the_bearer_token_when_one_is_set() {
    let mut h = harness();
    let policy = khoi_web::policy::HttpPolicy {
        metrics: khoi_web::policy::MetricsAccess::Token("a-long-metrics-token".into()),
        ..Default::default()
    };
    h.app = rebuild(&h, policy);
    let get = |auth: Option<&'static str>| {
        let mut r = Request::get("/metrics");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        r.body(Body::empty()).expect("req")
    };
    assert_eq!(
        send(&h.app, get(None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&h.app, get(Some("Bearer wrong"))).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = send(&h.app, get(Some("Bearer a-long-metrics-token"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("# EOF"));
    let closed = khoi_web::policy::HttpPolicy {
        metrics: khoi_web::policy::MetricsAccess::Closed,
        ..Default::default()
    };
    h.app = rebuild(&h, closed);
    assert_eq!(
        send(&h.app, get(None)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// The harness's service and users behind a router with `policy`.
fn rebuild(h: &H, policy: khoi_web::policy::HttpPolicy) -> Router {
    let scheduler = Scheduler::new(
        Arc::clone(&h.svc),
        Arc::new(SystemClock),
        ScheduleSettings {
            cron: "0 2 * * *".into(),
            online: OnlinePolicy::Skip,
        },
    )
    .expect("scheduler");
    let auth = Auth::new(Arc::clone(&h.svc), None).expect("auth");
    router(WebState {
        service: Arc::clone(&h.svc),
        auth: Arc::new(auth),
        scheduler: Arc::new(scheduler),
        secure_cookies: false,
        policy: Arc::new(policy),
        province: None,
    })
}

/// The first admin's setup link is the control socket's alone: the web
/// API does not hand it out, even to a logged-in user.
#[tokio::test]
async fn the_web_api_does_not_give_the_setup_link() {
    let h = harness();
    let s = login(&h, "admin", "admin-pass-1").await;
    assert_eq!(
        s.get("/api/v1/setup-link").await.status,
        StatusCode::NOT_FOUND
    );
}

/// Issue 14: a seat's boot network through the JSON API and the seat form:
/// set at add and by a change, refused when it does not exist or when the
/// image is not for the network's kind, with the reason.
#[tokio::test]
async fn a_seats_boot_network_is_set_and_checked_through_api_and_page() {
    use khoi_admin::BootNetwork;
    use khoi_admin::gate::Profile;
    let h = harness();
    h.svc.set_networks(vec![
        BootNetwork {
            name: "quay".into(),
            profile: Profile::Counter,
            portal: None,
        },
        BootNetwork {
            name: "public".into(),
            profile: Profile::Kiosk,
            portal: None,
        },
    ]);
    stage(&h, "a.raw", 1, 1);
    let s = login(&h, "admin", "admin-pass-1").await;
    for image in ["win10", "kiosk"] {
        stage(&h, "a.raw", 1, 1);
        let r = s
            .post(
                "/api/v1/images",
                json!({"name": image, "staged": "a.raw", "note": "base"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let r = s
        .json(
            Method::PUT,
            "/api/v1/images/kiosk/gate",
            json!({"profile": "kiosk", "admin_allow": [], "disabled": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let r = s
        .post(
            "/api/v1/seats",
            json!({"name": "k1", "mac": "02:00:00:00:00:11", "image": "kiosk", "network": "lobby"}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("network")),
        "{}",
        r.body
    );
    let r = s
        .post(
            "/api/v1/seats",
            json!({"name": "k1", "mac": "02:00:00:00:00:11", "image": "kiosk"}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "kiosk image on the counter LAN: {}",
        r.body
    );
    let r = s
        .post(
            "/api/v1/seats",
            json!({"name": "k1", "mac": "02:00:00:00:00:11", "image": "kiosk", "network": "public"}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["network"].clone()),
        (StatusCode::OK, json!("public")),
        "{}",
        r.body
    );
    let r = s
        .json(
            Method::PATCH,
            "/api/v1/seats/k1",
            json!({"network": "quay"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);

    // The page: a network select on the add form, and the seat's own.
    let page = s.get("/seats").await;
    assert!(page.body.contains("name=\"network\""), "no network field");
    let r = s
        .form(
            "/seats",
            &[
                ("name", "pc1"),
                ("mac", "02:00:00:00:00:21"),
                ("image", "win10"),
                ("policy", "on-boot"),
                ("network", "quay"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        h.svc.state().seat("pc1").expect("seat").network.as_deref(),
        Some("quay")
    );
    let r = s
        .form(
            "/seats/pc1",
            &[("image", "kiosk"), ("version", ""), ("network", "public")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let seat = h.svc.state().seat("pc1").expect("seat");
    assert_eq!(
        (seat.network.as_deref(), seat.image.as_str()),
        (Some("public"), "kiosk")
    );
    let page = s.get("/seats/pc1").await;
    assert!(
        page.body.contains("<option value=\"public\" selected>"),
        "the seat page shows its network"
    );
    let audit = h.svc.state().events(Some("pc1"), 20).expect("events");
    assert!(
        audit
            .iter()
            .any(|e| e.kind == "seat.update" && e.detail.contains("network quay -> public")),
        "{audit:?}"
    );
}

/// Boot times from the clock the protocol servers feed to what a viewer
/// reads: the API, the seat page's chart, the dashboard's morning (the
/// seat that did not finish named with where it stopped) and `/metrics`.
#[tokio::test]
async fn boot_times_reach_the_api_the_charts_and_metrics() {
    use khoi_state::BootStep;
    let h = harness();
    stage(&h, "a.raw", 4, 1);
    let admin = login(&h, "admin", "admin-pass-1").await;
    let r = admin
        .post(
            "/api/v1/images",
            json!({"name": "win10", "staged": "a.raw", "note": "base"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for (name, mac) in [("pc01", "02:00:00:00:00:01"), ("pc02", "02:00:00:00:00:02")] {
        let r = admin
            .post(
                "/api/v1/seats",
                json!({"name": name, "mac": mac, "image": "win10"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // pc01 boots through every step; pc02 never gets past its script.
    let clock = h.svc.activity().boots();
    let t0 = khoi_admin::boot_times::now_ms() - 120_000;
    clock.step("pc01", BootStep::Dhcp, t0);
    clock.step("pc01", BootStep::Tftp, t0 + 1_800);
    clock.step("pc01", BootStep::Script, t0 + 2_600);
    clock.step("pc01", BootStep::Login, t0 + 2_900);
    clock.logged_in("pc01", 1, t0 + 2_950);
    clock.logged_in("pc01", 2, t0 + 21_000);
    clock.step("pc02", BootStep::Dhcp, t0);
    clock.step("pc02", BootStep::Script, t0 + 4_000);
    let done = clock.tick(t0 + 21_000 + 30_000 + 600_000);
    assert_eq!(done.len(), 2);
    for b in &done {
        assert!(h.svc.state().record_boot_timing(b).expect("keep"));
    }

    let viewer = login(&h, "vi", "viewer-pass").await;
    let r = viewer.get("/api/v1/seats/pc01/boots").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let steps = r.json()["boots"][0]["steps"].clone();
    assert_eq!(steps[0], t0);
    assert_eq!(steps[4], t0 + 21_000);
    assert_eq!(
        viewer.get("/api/v1/seats/nope/boots").await.status,
        StatusCode::NOT_FOUND
    );

    let page = viewer.get("/seats/pc01").await;
    assert_eq!(page.status, StatusCode::OK);
    let chart = page
        .body
        .split("<svg class=\"boot-chart\"")
        .nth(1)
        .expect("the seat page has a boot chart");
    // DHCP, TFTP, script and disk, in that order.
    let at = |class: &str| chart.find(&format!("class=\"{class}\"")).expect(class);
    assert!(at("ph-dhcp") < at("ph-tftp") && at("ph-tftp") < at("ph-script"));
    assert!(at("ph-script") < at("ph-disk"));
    assert!(chart.contains("data-ms=\"18100\""), "disk phase: {chart}");
    assert!(chart.contains(">21.0 s</text>"), "total: {chart}");

    let dash = viewer.get("/").await;
    let morning = dash
        .body
        .split("id=\"morning\"")
        .nth(1)
        .expect("the dashboard has the room's last morning");
    assert!(morning.contains("href=\"/seats/pc01#boots\""), "{morning}");
    assert!(
        morning.contains("Không hoàn tất: Kịch bản"),
        "pc02 stopped at its script: {morning}"
    );

    let metrics = send(
        &h.app,
        Request::get("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    let types = khoi_admin::metrics::declared_types(&metrics.body).expect("types");
    for name in [
        "khoi_boot_phase_seconds",
        "khoi_boot_seconds",
        "khoi_boot_read_bytes",
    ] {
        assert_eq!(types[name], "histogram", "{name}");
    }
    for sample in [
        "khoi_boot_phase_seconds_count{phase=\"disk\"} 1",
        "khoi_boot_phase_seconds_count{phase=\"dhcp\"} 2",
        "khoi_boot_seconds_count 1",
        "khoi_boots_total{outcome=\"incomplete\"} 1",
    ] {
        assert!(metrics.body.contains(sample), "{sample}\n{}", metrics.body);
    }
}

/// What the binary's province sync would report: three sites, and version 2
/// of win10 received from the province's version 7.
#[derive(Debug)]
struct Province;

impl ProvinceSource for Province {
    fn sites(&self) -> Option<Vec<ProvinceSite>> {
        let site = |name: &str, state| ProvinceSite {
            name: name.into(),
            state,
            last_sync: Some(1_780_000_000),
            seats: Some(40),
            held: "win10: 2".into(),
            errors: Vec::new(),
        };
        let mut failing = site("xa-<b>3</b>", SiteState::Failing);
        failing.errors.push("bucket <unreachable>".into());
        Some(vec![
            site("phuong-1", SiteState::InSync),
            site("xa-2", SiteState::Behind(2)),
            failing,
        ])
    }

    fn origin(&self, image: &str, n: u32) -> Option<u32> {
        (image == "win10" && n == 2).then_some(7)
    }
}

#[tokio::test]
async fn the_province_page_lists_sites_and_the_image_page_shows_origins() {
    let h = harness_with(Some(Arc::new(Province)));
    stage(&h, "a.raw", 4, 1);
    stage(&h, "b.raw", 4, 2);
    let s = login(&h, "vi", "viewer-pass").await;
    let admin = login(&h, "admin", "admin-pass-1").await;
    admin
        .post(
            "/api/v1/images",
            json!({"name": "win10", "staged": "a.raw"}),
        )
        .await;
    admin
        .post(
            "/api/v1/images",
            json!({"name": "win10", "staged": "b.raw"}),
        )
        .await;
    let page = s.get("/province").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for want in [
        "Các điểm trong tỉnh",
        "data-site=\"phuong-1\"",
        "Đã đồng bộ",
        "Chậm (2 phiên bản chưa có)",
        "Đang lỗi",
        "bucket &#60;unreachable&#62;",
        "xa-&#60;b&#62;3&#60;/b&#62;",
    ] {
        assert!(page.body.contains(want), "{want} missing:\n{}", page.body);
    }
    assert!(!page.body.contains("<b>3"), "unescaped site name");
    let image = s.get("/images/win10").await;
    assert!(image.body.contains("Tỉnh v7"), "{}", image.body);
    assert!(image.body.contains("Tạo tại đây"), "{}", image.body);
    // A standalone Khoi says it has no province.
    let alone = harness();
    let s = login(&alone, "vi", "viewer-pass").await;
    let page = s.get("/province").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("không phải bên phát hành"),
        "{}",
        page.body
    );
}

/// Issue 11 §2: `image create` and capture mode through the API and the seat
/// page; a viewer can do neither, and bad sizes name the field.
#[tokio::test]
async fn image_create_and_capture_mode_through_the_api_and_the_seat_page() {
    let h = harness();
    let op = login(&h, "op", "operator-pass").await;
    let r = op
        .post(
            "/api/v1/images/create",
            json!({"name": "blank", "size": 64u64 << 20}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.json()["number"].as_u64(), r.json()["size"].as_u64()),
        (Some(0), Some(64 << 20))
    );
    let r = op
        .post("/api/v1/images/create", json!({"name": "zero", "size": 0}))
        .await;
    assert!(r.status.is_client_error(), "{}", r.body);
    assert!(r.body.contains("size"), "{}", r.body);
    let r = op
        .post(
            "/api/v1/images/create",
            json!({"name": "blank", "size": 1 << 20}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = op
        .post(
            "/api/v1/seats",
            json!({"name": "master", "mac": "02:00:00:00:00:31", "image": "blank"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let viewer = login(&h, "vi", "viewer-pass").await;
    for (uri, body) in [
        (
            "/api/v1/images/create",
            json!({"name": "v", "size": 1 << 20}),
        ),
        ("/api/v1/seats/master/capture", json!({"image": "golden"})),
    ] {
        assert_eq!(
            viewer.post(uri, body).await.status,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
    }
    let st = viewer.get("/api/v1/seats/master/capture").await;
    assert_eq!(st.status, StatusCode::OK, "{}", st.body);
    assert!(st.json()["capture"].is_null());
    assert_eq!(st.json()["environment"]["built"], json!(false));

    let r = op
        .post("/api/v1/seats/master/capture", json!({"image": "blank"}))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "an existing image: {}",
        r.body
    );
    let r = op
        .post("/api/v1/seats/master/capture", json!({"image": "golden"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["capture"]["status"], json!("armed"));
    let page = op.get("/seats/master").await.body;
    assert!(
        page.contains("id=\"capture-status\""),
        "the page shows the capture"
    );
    assert!(
        page.contains("images/capture/build.sh"),
        "and where to build the environment"
    );
    assert_eq!(
        op.delete("/api/v1/seats/master/capture").await.status,
        StatusCode::OK
    );
    let st = op.get("/api/v1/seats/master/capture").await.json();
    assert_eq!(st["capture"]["status"], json!("failed"));
    // The page's form arms it again.
    let r = op
        .form("/seats/master/capture", &[("image", "golden2")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let st = op.get("/api/v1/seats/master/capture").await.json();
    assert_eq!(
        (
            st["capture"]["status"].clone(),
            st["capture"]["image"].clone()
        ),
        (json!("armed"), json!("golden2"))
    );
    let events = op.get("/api/v1/events?subject=master").await.body;
    assert!(events.contains("seat.capture.arm") && events.contains("seat.capture.cancel"));

    // The images page's form takes sizes with units and names a bad one.
    assert!(op.get("/images").await.body.contains("id=\"create-image\""));
    let r = op
        .form("/images/create", &[("name", "paged"), ("size", "2GiB")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        h.svc.store().versions("paged").expect("created")[0].size,
        2 << 30
    );
    op.form("/images/create", &[("name", "bad"), ("size", "2 parsecs")])
        .await;
    let flash = op.flash("/images").await;
    assert!(
        flash.contains("size") && flash.contains("parsecs"),
        "{flash}"
    );
    assert!(h.svc.store().versions("bad").is_err());
    assert_eq!(
        viewer
            .form("/images/create", &[("name", "v"), ("size", "1GiB")])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

/// A standby as the binary's sync would report it: standing by until
/// promoted, then promoted (the promotion itself is tested in the binary
/// and end to end in pxe_e2e.rs).
#[derive(Debug, Default)]
struct StandbySource {
    promoted_by: std::sync::Mutex<Option<String>>,
}

impl ProvinceSource for StandbySource {
    fn sites(&self) -> Option<Vec<ProvinceSite>> {
        None
    }

    fn origin(&self, _image: &str, _n: u32) -> Option<u32> {
        None
    }

    fn standby(&self) -> Option<StandbyView> {
        Some(StandbyView {
            primary: "phuong-<1>".into(),
            last_snapshot: Some(1_780_000_000),
            seats: 40,
            images_held: vec!["win10".into()],
            images_missing: Vec::new(),
            promoted: self
                .promoted_by
                .lock()
                .expect("lock")
                .as_ref()
                .map(|who| format!("by {who}")),
            refused: None,
        })
    }

    fn promote(&self, actor: &Actor) -> Result<String, String> {
        let mut p = self.promoted_by.lock().expect("lock");
        if p.is_some() {
            return Err("this server is already promoted".into());
        }
        *p = Some(actor.name.clone());
        Ok("promoted in place of phuong-1".into())
    }
}

#[tokio::test]
async fn the_standby_page_shows_its_primary_and_only_an_admin_promotes() {
    let source = Arc::new(StandbySource::default());
    let h = harness_with(Some(Arc::clone(&source) as Arc<dyn ProvinceSource>));
    let viewer = login(&h, "vi", "viewer-pass").await;
    let page = viewer.get("/province").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for want in [
        "Máy dự phòng nóng",
        "Dự phòng cho",
        "phuong-&#60;1&#62;",
        "Ảnh đĩa đã đủ: win10",
    ] {
        assert!(page.body.contains(want), "{want} missing:\n{}", page.body);
    }
    assert!(
        !page.body.contains("không phải bên phát hành"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("/province/promote"),
        "a viewer is offered the take-over button"
    );
    // Neither a viewer nor an operator may take over.
    for (user, pw) in [("vi", "viewer-pass"), ("op", "operator-pass")] {
        let s = login(&h, user, pw).await;
        let r = s.form("/province/promote", &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{user}: {}", r.body);
    }
    assert!(source.promoted_by.lock().expect("lock").is_none());

    let admin = login(&h, "admin", "admin-pass-1").await;
    let page = admin.get("/province").await;
    assert!(
        page.body.contains("action=\"/province/promote\""),
        "{}",
        page.body
    );
    let r = admin.form("/province/promote", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        source.promoted_by.lock().expect("lock").as_deref(),
        Some("admin")
    );
    let page = admin.get("/province").await;
    assert!(page.body.contains("Đã lên thay cho"), "{}", page.body);
    assert!(!page.body.contains("/province/promote"), "{}", page.body);
    // A second take-over is refused with the reason shown.
    let r = admin.form("/province/promote", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let flash = admin.flash("/province").await;
    assert!(flash.contains("already promoted"), "{flash}");
}
