//! Real-browser test: serves the admin page on a loopback port and runs
//! `tests/browser/admin.test.mjs` (playwright-core driving Debian's headless
//! chromium). Screenshots go to `target/test-artifacts/browser/`.
//! `./scripts/setup.sh test` installs chromium and the npm package.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use khoi_admin::schedule::{OnlinePolicy, ScheduleSettings, Scheduler, SystemClock};
use khoi_admin::{Service, ServiceConfig};
use khoi_block::{Store, StoreOptions};
use khoi_state::{NewEvent, State};
use khoi_web::auth::Auth;
use khoi_web::{WebState, router};

const PASSWORD: &str = "mat-khau-thu-nghiem";
const UNKNOWN_MAC: &str = "52:54:00:ab:cd:ef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_headless_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists()
            && browser_dir.join("node_modules/playwright-core").exists(),
        "needs Debian chromium and tests/browser/node_modules: run ./scripts/setup.sh test"
    );
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
            iscsi_portal: Some("10.10.0.1:3260".into()),
            nbd_address: None,
            import_roots: vec![dir.path().to_path_buf()],
        },
    ));
    // A blank disk fails the image gate (`no-windows-volume`); the gate
    // has its own tests (web_gate.rs), this one walks the pages.
    svc.set_gate_enforced(false);
    state
        .record(&NewEvent {
            kind: "pxe.unknown_mac",
            actor: "khoi",
            source: "10.10.0.57",
            subject: UNKNOWN_MAC,
            detail: "unregistered machine asked to boot (BIOS) at 1795000000",
            args: &[("arch", "BIOS")],
        })
        .expect("event");
    let image = dir.path().join("win10.img");
    let mut disk = vec![0u8; 8 << 20];
    disk[510] = 0x55;
    disk[511] = 0xaa;
    std::fs::write(&image, disk).expect("image");

    let auth = Auth::new(Arc::clone(&svc), Some(PASSWORD)).expect("auth");
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });

    let artifacts = root.join("target/test-artifacts/browser");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("admin.test.mjs")
            .current_dir(&browser_dir)
            .env("KHOI_URL", format!("http://{addr}"))
            .env("KHOI_PASSWORD", PASSWORD)
            .env("KHOI_IMAGE", &image)
            .env("KHOI_UNKNOWN_MAC", UNKNOWN_MAC)
            .env("KHOI_ARTIFACTS", &artifacts)
            .env("CHROMIUM", chromium)
            .output()
            .expect("run node")
    })
    .await
    .expect("join");
    server.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    // What the browser did is in the state the service sees.
    let seats = svc.seats().expect("seats");
    assert_eq!(seats.len(), 1);
    assert_eq!(seats[0].mac, UNKNOWN_MAC);
    let images = svc.images();
    let win10 = images.iter().find(|i| i.name == "win10").expect("win10");
    assert_eq!(
        (win10.current, win10.latest),
        (1, 2),
        "published then rolled back"
    );
    assert!(images.iter().any(|i| i.name == "lab"), "uploaded image");

    // The PDF the browser downloaded opens, and its rows are there with
    // their Vietnamese diacritics.
    let pdf = root.join("target/test-artifacts/browser/report.pdf");
    let text = Command::new("pdftotext")
        .args(["-layout", "-enc", "UTF-8"])
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) must be installed");
    assert!(
        text.status.success(),
        "pdftotext failed on {}",
        pdf.display()
    );
    let text = String::from_utf8_lossy(&text.stdout);
    for want in [
        "Báo cáo bảo đảm an ninh hệ thống máy trạm giải quyết TTHC",
        seats[0].name.as_str(),
        "win10",
        "Không đạt",
        "Thao tác quản trị trong kỳ",
        "draft.publish",
        "Người lập báo cáo",
    ] {
        assert!(
            text.contains(want),
            "{want:?} missing from the PDF:\n{text}"
        );
    }
}
