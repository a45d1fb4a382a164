//! The host checks on the admin page, against a real `khoi serve` on
//! loopback: the API and the page give the checks `khoi doctor` gives, in
//! the page's language, to admins only; and the page in headless chromium
//! (`tests/browser/doctor.test.mjs`, as `tests/web_browser.rs` runs it).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Server};

const ADMIN_PASSWORD: &str = "admin-pass-doctor";
const VIEWER_PASSWORD: &str = "viewer-pass-doctor";

/// A server with a first admin, once its page answers.
fn server() -> Server {
    let s = Server::start_with(Options {
        extra_yaml: format!("  initial_password: {ADMIN_PASSWORD}\n"),
        ..Default::default()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", s.admin_port)).is_err() {
        assert!(Instant::now() < deadline, "no admin page:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request with `Connection: close`.
fn request(s: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut c = TcpStream::connect(("127.0.0.1", s.admin_port)).expect("admin port");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        s.admin_port,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Chunked bodies: the JSON and HTML checks below only look for
    // substrings, and a chunk boundary inside one of them would hide it.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(rest.get(..n).unwrap_or(rest));
        body = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// Logs in; returns the session cookie (`name=value`).
fn login(s: &Server, name: &str, password: &str) -> String {
    let body = format!("name={name}&password={password}");
    let a = request(
        s,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &body,
    );
    assert_eq!(a.status, 303, "login {name}: {}", a.body);
    a.head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.trim().split(';').next().unwrap_or("").to_string())
        })
        .expect("session cookie")
}

fn csrf(s: &Server, cookie: &str) -> String {
    let page = request(s, "GET", "/users", &[("Cookie", cookie)], "");
    page.body
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf token")
        .to_string()
}

/// `(id, status)` of each check, in order.
fn ids_and_statuses(checks: &serde_json::Value) -> Vec<(String, String)> {
    checks
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or("").to_string(),
                c["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn admins_get_the_cli_checks_in_their_language_and_no_one_else_does() {
    let s = server();
    let admin = login(&s, "admin", ADMIN_PASSWORD);

    // The API: the same checks, in the same order and with the same
    // outcomes, as `khoi doctor` run beside the server.
    let a = request(
        &s,
        "GET",
        "/api/v1/doctor?lang=en",
        &[("Cookie", &admin)],
        "",
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let report: serde_json::Value = serde_json::from_str(&a.body).expect("json");
    let cli = s.khoi(&["--json", "doctor"]);
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("cli json");
    assert_eq!(
        ids_and_statuses(&report["checks"]),
        ids_and_statuses(&cli["checks"]),
        "page: {report:#}\ncli: {cli:#}"
    );
    let by_id = |id: &str| {
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no {id} check: {report:#}"))
    };
    // The server runs the checks itself: it is running, and its ports are
    // its own.
    assert!(
        by_id("version")["message"]
            .as_str()
            .is_some_and(|m| m.contains("server running")),
        "{report:#}"
    );
    // No boot network in this config: a warning with its fix, in English.
    let pxe = by_id("pxe");
    assert_eq!(pxe["status"], "warn");
    assert!(
        pxe["fix"]
            .as_str()
            .is_some_and(|f| f.contains("add the pxe section")),
        "{pxe:#}"
    );

    // The page, Vietnamese by default, English by the language cookie.
    let page = request(&s, "GET", "/doctor", &[("Cookie", &admin)], "");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("<tr class=\"check-warn\" data-id=\"pxe\">"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Cách sửa:"), "{}", page.body);
    assert!(page.body.contains("thêm mục pxe"), "{}", page.body);
    let en = format!("{admin}; khoi_lang=en");
    let page = request(&s, "GET", "/doctor", &[("Cookie", &en)], "");
    assert!(page.body.contains("Fix:") && page.body.contains("add the pxe section"));
    assert!(
        page.body.contains("href=\"/doctor\""),
        "linked from the menu"
    );

    // Viewers and operators get 403 on both: only admins pass.
    let token = csrf(&s, &admin);
    for (name, role) in [("lan", "viewer"), ("minh", "operator")] {
        let body = format!(r#"{{"name":"{name}","role":"{role}","password":"{VIEWER_PASSWORD}"}}"#);
        let made = request(
            &s,
            "POST",
            "/api/v1/users",
            &[
                ("Cookie", &admin),
                ("x-csrf-token", &token),
                ("Content-Type", "application/json"),
            ],
            &body,
        );
        assert_eq!(made.status, 200, "{}", made.body);
        let session = login(&s, name, VIEWER_PASSWORD);
        for path in ["/api/v1/doctor", "/doctor"] {
            let a = request(&s, "GET", path, &[("Cookie", &session)], "");
            assert_eq!(a.status, 403, "{role} {path}: {}", a.body);
        }
        let dash = request(&s, "GET", "/", &[("Cookie", &session)], "");
        assert!(
            !dash.body.contains("href=\"/doctor\""),
            "{role}: no menu entry"
        );
    }
    // Without a session: 401, and the checks never ran for it.
    assert_eq!(request(&s, "GET", "/api/v1/doctor", &[], "").status, 401);
}

#[test]
fn the_doctor_page_in_headless_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists()
            && browser_dir.join("node_modules/playwright-core").exists(),
        "needs Debian chromium and tests/browser/node_modules: run ./scripts/setup.sh test"
    );
    let s = server();
    let artifacts = root.join("target/test-artifacts/browser-doctor");
    let out = Command::new("node")
        .arg("doctor.test.mjs")
        .current_dir(&browser_dir)
        .env("KHOI_URL", format!("http://127.0.0.1:{}", s.admin_port))
        .env("KHOI_PASSWORD", ADMIN_PASSWORD)
        .env("KHOI_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
