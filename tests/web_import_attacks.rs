//! Image import as an attacker with an operator login (or a file they
//! handed the operator) would try it: images that make qemu-img read other
//! files, disks that claim far more than they hold, uploads that never end
//! or never stop, and the leftovers of a killed import. Each is replayed
//! through the JSON API (in process) and must be refused with a clear
//! reason, import nothing, leave nothing in staging, and never show server
//! paths or qemu-img's output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use khoi_admin::schedule::{OnlinePolicy, ScheduleSettings, Scheduler, SystemClock};
use khoi_admin::staging::{self, Limits, Staged};
use khoi_admin::{Service, ServiceConfig};
use khoi_block::{Store, StoreOptions};
use khoi_state::State;
use khoi_web::auth::Auth;
use khoi_web::{WebState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

struct H {
    app: Router,
    svc: Arc<Service>,
    dir: PathBuf,
    cookie: String,
    csrf: String,
}

fn service(dir: &Path) -> Arc<Service> {
    let store = Arc::new(Store::open(dir, StoreOptions::default()).expect("store"));
    let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
    Arc::new(Service::new(
        store,
        state,
        ServiceConfig {
            data_dir: dir.to_path_buf(),
            default_seat_quota: 1 << 30,
            target_prefix: "iqn.2025-07.vn.khoi".into(),
            iscsi_portal: None,
            nbd_address: None,
            import_roots: vec![dir.to_path_buf()],
        },
    ))
}

async fn harness(dir: &Path) -> H {
    let svc = service(dir);
    let auth = Auth::new(Arc::clone(&svc), Some("admin-pass-1")).expect("auth");
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
    let mut h = H {
        app,
        svc,
        dir: dir.to_path_buf(),
        cookie: String::new(),
        csrf: String::new(),
    };
    let r = h
        .send(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::HOST, "khoi.test")
                .body(Body::from("name=admin&password=admin-pass-1"))
                .expect("req"),
        )
        .await;
    assert_eq!(r.0, StatusCode::SEE_OTHER, "login: {}", r.1);
    h.cookie = r.2.split(';').next().expect("cookie").to_string();
    let page = h
        .send(
            h.req(Method::GET, "/audit")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    h.csrf = page
        .1
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf token")
        .to_string();
    h
}

impl H {
    fn req(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::COOKIE, &self.cookie)
            .header(header::HOST, "khoi.test")
            .header("x-csrf-token", &self.csrf)
    }

    /// (status, body, set-cookie)
    async fn send(&self, req: Request<Body>) -> (StatusCode, String, String) {
        let r = self.app.clone().oneshot(req).await.expect("infallible");
        let status = r.status();
        let cookie = r
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned(), cookie)
    }

    async fn upload(&self, name: &str, body: Body) -> (StatusCode, Value) {
        let req = self
            .req(Method::POST, &format!("/api/v1/images/upload?name={name}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .expect("req");
        let (status, body, _) = self.send(req).await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, v)
    }

    async fn import_path(&self, name: &str, path: &Path) -> (StatusCode, Value) {
        let req = self
            .req(Method::POST, "/api/v1/images/import-path")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"name": name, "path": path}).to_string()))
            .expect("req");
        let (status, body, _) = self.send(req).await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, v)
    }

    /// Nothing was imported and nothing was left behind.
    fn assert_nothing_imported(&self) {
        assert!(self.svc.images().is_empty(), "{:?}", self.svc.images());
        let left: Vec<_> = std::fs::read_dir(self.svc.staging_dir())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "staging keeps {left:?}");
    }
}

/// The refusal names the reason and keeps server paths and qemu-img's
/// output to the log.
fn assert_refused(r: &(StatusCode, Value), status: StatusCode, reason: &str, dir: &Path) {
    assert_eq!(r.0, status, "{}", r.1);
    let text = r.1["error"].as_str().unwrap_or("");
    assert!(text.contains(reason), "{text:?} should say {reason:?}");
    for leak in [
        "/etc/passwd",
        "khoi.db",
        "qemu-img:",
        "/dev/fd",
        &dir.display().to_string(),
    ] {
        assert!(!text.contains(leak), "{text:?} leaks {leak:?}");
    }
    assert_eq!(r.1["field"], "body");
}

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is not installed; run ./scripts/setup.sh test");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn qcow2_with(dir: &Path, name: &str, args: &[&str], size: Option<&str>) -> Vec<u8> {
    let p = dir.join(name);
    let ps = p.to_str().expect("utf8");
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    a.extend_from_slice(args);
    a.push(ps);
    if let Some(s) = size {
        a.push(s);
    }
    qemu_img(&a);
    let b = std::fs::read(&p).expect("read");
    std::fs::remove_file(&p).expect("rm");
    b
}

/// Attack 2: a qcow2 whose backing file is /etc/passwd, uploaded; and one
/// whose backing file is Khoi's own database, imported by path from an
/// import folder. Before the fix both became readable images.
#[tokio::test]
async fn qcow2_backing_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = harness(tmp.path()).await;
    let img = qcow2_with(
        tmp.path(),
        "x.qcow2",
        &["-b", "/etc/passwd", "-F", "raw"],
        None,
    );
    let r = h.upload("stolen", Body::from(img)).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "backing file", &h.dir);
    h.assert_nothing_imported();

    let db = tmp.path().join("khoi.db");
    let db_s = db.to_str().expect("utf8");
    let p = tmp.path().join("db.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        db_s,
        "-F",
        "raw",
        p.to_str().expect("utf8"),
    ]);
    let r = h.import_path("stolen", &p).await;
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.1);
    let text = r.1["error"].as_str().unwrap_or("");
    assert!(
        text.contains("backing file") && !text.contains("khoi.db"),
        "{text}"
    );
    h.assert_nothing_imported();
}

/// Attack 2: a qcow2 whose data lives in an external data file (any file
/// the server can read).
#[tokio::test]
async fn qcow2_external_data_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = harness(tmp.path()).await;
    // Never name a real system file here: `qemu-img create` with a raw data
    // file truncates that file to the image size (it zeroed /etc/passwd once).
    // A secret of our own stands for "any file the server can read".
    let secret = tmp.path().join("secret-khoi.db");
    std::fs::write(&secret, b"not for seats").expect("secret");
    let opt = format!("data_file={},data_file_raw=on", secret.display());
    let img = qcow2_with(tmp.path(), "x.qcow2", &["-o", &opt], Some("1M"));
    let r = h.upload("stolen", Body::from(img)).await;
    assert_refused(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "external data file",
        &h.dir,
    );
    h.assert_nothing_imported();
}

/// Attack 2: a VMDK descriptor written by hand whose extent is another
/// file on the server.
#[tokio::test]
async fn vmdk_extent_pointing_at_another_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = harness(tmp.path()).await;
    let desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                createType=\"monolithicFlat\"\n\n# Extent description\n\
                RW 8 FLAT \"/etc/passwd\" 0\n\nddb.virtualHWVersion = \"4\"\n";
    let r = h.upload("stolen", Body::from(desc)).await;
    assert_refused(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VMDK descriptor",
        &h.dir,
    );
    h.assert_nothing_imported();
}

/// Item 7: a 229 KB qcow2 claiming 2 TiB. Refused for the free space it
/// would need above the floor; with room to spare, for the maximum.
#[tokio::test]
async fn tiny_qcow2_claiming_2_tib_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = harness(tmp.path()).await;
    let img = qcow2_with(tmp.path(), "x.qcow2", &[], Some("2T"));
    assert!(img.len() < 300 << 10, "{} bytes", img.len());
    let free = staging::fs_space(&h.svc.staging_dir()).0;
    // Whatever this disk's size: 64 GiB above the floor.
    h.svc.set_import_limits(Limits {
        free_space_floor: free.saturating_sub(64 << 30),
        ..Limits::default()
    });
    let r = h.upload("huge", Body::from(img.clone())).await;
    assert_refused(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "free-space floor",
        &h.dir,
    );
    h.assert_nothing_imported();
    h.svc.set_import_limits(Limits {
        max_virtual_size: 1 << 40,
        ..Limits::default()
    });
    let r = h.upload("huge", Body::from(img)).await;
    assert_refused(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "largest image accepted",
        &h.dir,
    );
    h.assert_nothing_imported();
}

/// Item 7: an upload larger than the cap, declared (Content-Length) and
/// undeclared (streamed); and one larger than the free space above the
/// floor. 413, the partial file removed.
#[tokio::test]
async fn upload_over_the_cap_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = harness(tmp.path()).await;
    h.svc.set_import_limits(Limits {
        max_upload: 1 << 20,
        ..Limits::default()
    });
    let req = h
        .req(Method::POST, "/api/v1/images/upload?name=big")
        .header(header::CONTENT_LENGTH, (2u64 << 20).to_string())
        .body(Body::from(vec![1u8; 2 << 20]))
        .expect("req");
    let (status, body, _) = h.send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("larger than"), "{body}");
    h.assert_nothing_imported();

    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(vec![1u8; 512 << 10]));
    let r = h
        .upload("big", Body::from_stream(futures_util::stream::iter(chunks)))
        .await;
    assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "larger than", &h.dir);
    h.assert_nothing_imported();

    // No room above the floor: even a small upload does not start.
    h.svc.set_import_limits(Limits {
        free_space_floor: u64::MAX / 2,
        ..Limits::default()
    });
    let r = h.upload("big", Body::from(vec![0u8; 1 << 20])).await;
    assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "free space", &h.dir);
    h.assert_nothing_imported();
}

/// Item 7: an upload that sends a little and then nothing is dropped after
/// the idle timeout, and its partial file removed.
#[tokio::test]
async fn stalled_upload_is_dropped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = harness(tmp.path()).await;
    h.svc.set_import_limits(Limits {
        upload_idle: Duration::from_millis(300),
        ..Limits::default()
    });
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(vec![0u8; 4096])]);
    let stall = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let body = Body::from_stream(futures_util::StreamExt::chain(first, stall));
    let r = tokio::time::timeout(Duration::from_secs(10), h.upload("slow", body))
        .await
        .expect("the server must give up on a stalled upload");
    assert_refused(&r, StatusCode::REQUEST_TIMEOUT, "stopped sending", &h.dir);
    h.assert_nothing_imported();
}

const CHILD_ENV: &str = "KHOI_TEST_KILLED_IMPORT_STAGING";

/// Not a test of its own: the import [`killed_import_leftovers_are_swept`]
/// kills. It stages a raw disk into the given staging folder and hangs
/// halfway through the copy.
#[test]
#[ignore = "run by killed_import_leftovers_are_swept"]
fn killed_import_child() {
    let Ok(staging_dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let staging_dir = PathBuf::from(staging_dir);
    let src = staging_dir.with_file_name("child-src.raw");
    std::fs::write(&src, vec![7u8; 8 << 20]).expect("src");
    let marker = staging_dir.with_file_name("child-started");
    let _ = staging::stage_with(
        &src,
        &staging_dir,
        "import",
        &Limits::default(),
        &mut |done, _| {
            if done >= 2 << 20 {
                std::fs::write(&marker, b"1").expect("marker");
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
        },
        false,
    );
}

/// Item 7: a killed import (here a CLI-like process killed mid-copy) left
/// its staging file forever. The next server start removes it, and keeps a
/// file a live import is still writing.
#[tokio::test]
async fn killed_import_leftovers_are_swept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let staging_dir = tmp.path().join("staging");
    std::fs::create_dir_all(&staging_dir).expect("mkdir");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "killed_import_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &staging_dir)
        .spawn()
        .expect("spawn");
    let marker = tmp.path().join("child-started");
    for _ in 0..1000 {
        if marker.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(marker.exists(), "the child import never started");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let left: Vec<_> = std::fs::read_dir(&staging_dir)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left.len(), 1, "the killed import leaves its file: {left:?}");

    // A live import (the CLI staging while the server restarts).
    let live = Staged::create(&staging_dir, "import", "raw").expect("live");
    let h = harness(tmp.path()).await;
    assert!(
        !left[0].exists(),
        "leftover {} survived the start",
        left[0].display()
    );
    assert!(live.path.exists(), "a live import's file was removed");
    drop(live);
    h.assert_nothing_imported();
}
