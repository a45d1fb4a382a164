//! The boot-script HTTP server on 127.0.0.1, spoken to in raw HTTP/1.1 like iPXE does.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::{FakeDir, MAC, seat};
use khoi_pxe::{BootDirectory, BootState, Lease, SeatBoot};
use tokio_util::sync::CancellationToken;

struct Server {
    state: Arc<BootState>,
    _rt: tokio::runtime::Runtime,
    cancel: CancellationToken,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn start(dir: Arc<dyn BootDirectory>, period: Duration) -> Server {
    start_with(dir, period, khoi_pxe::http::HttpLimits::default())
}

fn start_with(
    dir: Arc<dyn BootDirectory>,
    period: Duration,
    limits: khoi_pxe::http::HttpLimits,
) -> Server {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let mut cfg = khoi_pxe::PxeConfig::proxy("lo", common::SERVER, "/x".into());
    cfg.unknown_report_secs = period.as_secs();
    let state = Arc::new(BootState::new(&cfg));
    let router = khoi_pxe::http::router(dir, state.clone());
    rt.spawn(khoi_pxe::http::serve_with(
        listener,
        router,
        cancel.clone(),
        limits,
    ));
    Server {
        state,
        _rt: rt,
        cancel,
        addr,
    }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: iPXE/1.21.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn chap_seat() -> SeatBoot {
    let mut s = seat("pc01", MAC);
    s.chap = Some(("pc01".into(), "pc01-secret-0123".into()));
    s
}

#[test]
fn known_mac_gets_sanboot_script_and_booting_is_signalled() {
    let dir = Arc::new(FakeDir::with([chap_seat()]));
    let srv = start(dir.clone(), Duration::from_secs(600));
    for path in [
        "/boot/52-54-00-77-00-01.ipxe",
        "/boot/52:54:00:77:00:01.ipxe",
        // Issue 10: only the separated forms; a bare or signed spelling is not a MAC.
        "/boot/525400770001.ipxe",
        "/boot/+5+2+5+4+0+0.ipxe",
        "/boot/52-54-00-77-00-01.IPXE",
    ] {
        let (status, body) = get(srv.addr, path);
        if path.ends_with(".IPXE") || !path.contains(['-', ':']) {
            assert_eq!(status, 404, "{path}");
            continue;
        }
        assert_eq!(status, 200, "{path}");
        assert!(body.starts_with("#!ipxe\n"));
        let lines: Vec<&str> = body.lines().collect();
        assert!(
            lines.contains(&"set initiator-iqn iqn.2025-07.vn.khoi.initiator:pc01"),
            "{body}"
        );
        assert!(lines.contains(&"set username pc01"));
        assert!(lines.contains(&"set password pc01-secret-0123"));
        assert!(lines.contains(
            &"sanboot iscsi:10.77.0.1::3260:0:iqn.2025-07.vn.khoi:seat.pc01 || goto failed"
        ));
        assert!(lines.contains(&"prompt --key 0x02 --timeout 10000 && shell || goto retry"));
    }
    assert_eq!(dir.booted.lock().clone(), vec!["pc01"; 2]);
    assert!(dir.unknown.lock().is_empty());
}

#[test]
fn unknown_mac_script_and_single_report() {
    let dir = Arc::new(FakeDir::default());
    let srv = start(dir.clone(), Duration::from_secs(600));
    for _ in 0..3 {
        let (status, body) = get(srv.addr, "/boot/02-00-00-00-00-2a.ipxe");
        assert_eq!(status, 200);
        assert!(
            body.contains("echo this machine is not registered: 02:00:00:00:00:2a\n"),
            "{body}"
        );
        assert!(!body.contains("sanboot"));
    }
    let reports = dir.unknown.lock().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!((reports[0].0, reports[0].1), ([2, 0, 0, 0, 0, 0x2a], None));
    assert_eq!(
        reports[0].2,
        Some(std::net::IpAddr::from([127, 0, 0, 1])),
        "the report names who asked"
    );
    assert!(dir.booted.lock().is_empty());
    for bad in [
        "/boot/nonsense.ipxe",
        "/boot/02-00-00-00-00-2a",
        "/boot/",
        "/other",
    ] {
        assert_eq!(get(srv.addr, bad).0, 404, "{bad}");
    }
}

/// Issue 10 attack: `/boot/<made-up MAC>.ipxe` in a loop flooded the unknown-machine
/// list; one address now reports a handful per period.
#[test]
fn unknown_mac_flood_from_one_address_is_capped() {
    let dir = Arc::new(FakeDir::default());
    let srv = start(dir.clone(), Duration::from_secs(600));
    for i in 0..40u8 {
        let (status, _) = get(srv.addr, &format!("/boot/02-00-00-00-01-{i:02x}.ipxe"));
        assert_eq!(status, 200);
    }
    assert_eq!(
        dir.unknown.lock().len(),
        khoi_pxe::UNKNOWN_REPORTS_PER_SOURCE
    );
}

#[test]
fn misconfigured_seat_gets_explanation_not_a_broken_script() {
    let mut s = chap_seat();
    s.chap = Some(("pc01".into(), "has space".into()));
    let dir = Arc::new(FakeDir::with([s]));
    let srv = start(dir.clone(), Duration::from_secs(600));
    let (status, body) = get(srv.addr, "/boot/52-54-00-77-00-01.ipxe");
    assert_eq!(status, 200);
    assert!(body.contains("misconfigured: CHAP secret"), "{body}");
    assert!(!body.contains("sanboot"));
    assert!(
        dir.booted.lock().is_empty(),
        "no reset for a seat that cannot boot"
    );
}

/// `booting` finishes before the script is sent: a slow reset delays the response.
struct SlowDir(FakeDir);

impl BootDirectory for SlowDir {
    fn seat_by_mac(&self, mac: [u8; 6]) -> Option<SeatBoot> {
        self.0.seat_by_mac(mac)
    }
    fn booting(&self, seat: &SeatBoot) {
        std::thread::sleep(Duration::from_millis(300));
        self.0.booting(seat);
    }
    fn unknown_mac(
        &self,
        mac: [u8; 6],
        arch: Option<u16>,
        from: Option<std::net::IpAddr>,
        at: std::time::SystemTime,
    ) {
        self.0.unknown_mac(mac, arch, from, at);
    }
    fn leases(&self) -> Vec<Lease> {
        vec![]
    }
    fn save_lease(&self, _: &Lease) {}
    fn remove_lease(&self, _: [u8; 6]) {}
}

#[test]
fn booting_completes_before_the_script_is_returned() {
    let dir = Arc::new(SlowDir(FakeDir::with([chap_seat()])));
    let srv = start(dir.clone(), Duration::from_secs(600));
    let t = std::time::Instant::now();
    let (status, _) = get(srv.addr, "/boot/52-54-00-77-00-01.ipxe");
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(dir.0.booted.lock().len(), 1);
}

#[test]
fn script_fetch_from_an_address_dhcp_did_not_give_is_refused() {
    let dir = Arc::new(FakeDir::with([chap_seat()]));
    let srv = start(dir.clone(), Duration::from_secs(600));
    srv.state
        .seen
        .record(MAC, std::net::Ipv4Addr::new(10, 77, 0, 130));
    let (status, body) = get(srv.addr, "/boot/52-54-00-77-00-01.ipxe");
    assert_eq!(status, 403);
    assert!(
        body.contains("refused: DHCP gave this MAC 10.77.0.130, not 127.0.0.1"),
        "{body}"
    );
    assert!(!body.contains("password"), "no secrets to a stranger");
    assert!(
        dir.booted.lock().is_empty(),
        "no reset triggered by a stranger"
    );
    srv.state.seen.record(MAC, std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(get(srv.addr, "/boot/52-54-00-77-00-01.ipxe").0, 200);
    assert_eq!(dir.booted.lock().len(), 1);
}

/// Reads until the server closes the connection; `Err` if it is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Result<(), ()> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(_) => return Err(()),
        }
    }
}

/// Issue 10 attack: half-sent headers and idle connections stayed open forever on the
/// boot-script port, and enough of them exhausted the process's descriptors.
#[test]
fn slow_headers_idle_connections_and_per_address_flood_are_cut() {
    let limits = khoi_pxe::http::HttpLimits {
        max_per_peer: 2,
        idle: Duration::from_secs(1),
        lifetime: Duration::from_secs(3),
        ..khoi_pxe::http::HttpLimits::default()
    };
    let dir = Arc::new(FakeDir::with([chap_seat()]));
    let srv = start_with(dir, Duration::from_secs(600), limits);
    // A header sent a piece at a time, slower than the idle limit.
    let mut slow = TcpStream::connect(srv.addr).unwrap();
    slow.write_all(b"GET /boot/52-54-00-77-00-01.ipxe HTTP/1.1\r\n")
        .unwrap();
    assert_eq!(closed_within(&mut slow, Duration::from_secs(5)), Ok(()));
    // A header trickled faster than the idle limit still ends at the lifetime.
    let mut trickle = TcpStream::connect(srv.addr).unwrap();
    let t0 = std::time::Instant::now();
    let mut cut = false;
    while t0.elapsed() < Duration::from_secs(8) {
        if trickle.write_all(b"X").is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(cut || closed_within(&mut trickle, Duration::from_secs(1)).is_ok());
    // Two idle connections fill this address's share; a third is closed at once.
    let _a = TcpStream::connect(srv.addr).unwrap();
    let _b = TcpStream::connect(srv.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = TcpStream::connect(srv.addr).unwrap();
    assert_eq!(closed_within(&mut c, Duration::from_millis(500)), Ok(()));
    // Once the idle ones are cut, scripts are served again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(srv.addr, "/boot/52-54-00-77-00-01.ipxe").0, 200);
}
