//! TFTP on 127.0.0.1 (bound to `lo` with SO_BINDTODEVICE, like the boot interface): a raw
//! client checks the option negotiation byte by byte (blksize, tsize, windowsize, EDK2's
//! abort-after-OACK), and curl, atftp and tftp-hpa fetch files when installed.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

struct Server {
    _rt: tokio::runtime::Runtime,
    stats: std::sync::Arc<khoi_pxe::tftp::TftpStats>,
    /// The clients the read hook was told of.
    readers: std::sync::Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>,
    cancel: CancellationToken,
    addr: SocketAddrV4,
    root: PathBuf,
    _tmp: tempfile::TempDir,
    payload: Vec<u8>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn pattern(n: usize) -> Vec<u8> {
    // Not a multiple of any block size, so the last block is short.
    (0..n).map(|i| ((i * 7 + i / 251) % 256) as u8).collect()
}

fn start() -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let payload = pattern(70_001);
    std::fs::write(root.join("undionly.kpxe"), &payload).unwrap();
    std::fs::write(root.join("sub/snponly.efi"), b"efi").unwrap();
    std::fs::write(tmp.path().join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("escape")).unwrap();
    let sock = khoi_pxe::net::bind_udp_on("lo", SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), "TFTP")
        .unwrap();
    let SocketAddr::V4(addr) = sock.local_addr().unwrap() else {
        unreachable!()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = CancellationToken::new();
    let (c, r) = (cancel.clone(), root.clone());
    let stats = std::sync::Arc::new(khoi_pxe::tftp::TftpStats::default());
    let readers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let r2 = readers.clone();
    stats.on_read(move |ip| r2.lock().unwrap().push(ip));
    let st = stats.clone();
    rt.spawn(async move {
        khoi_pxe::tftp::serve_with_stats(sock, &r, st, c)
            .await
            .unwrap()
    });
    Server {
        _rt: rt,
        stats,
        readers,
        cancel,
        addr,
        root,
        _tmp: tmp,
        payload,
    }
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn rq(opcode: u16, file: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = opcode.to_be_bytes().to_vec();
    p.extend_from_slice(file.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0");
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut b = vec![0u8; 70_000];
    let (n, from) = s.recv_from(&mut b).unwrap();
    b.truncate(n);
    (b, from)
}

fn oack_opts(p: &[u8]) -> Vec<(String, String)> {
    assert_eq!(p[..2], [0, 6], "expected OACK, got {p:?}");
    let parts: Vec<String> = p[2..]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).to_lowercase())
        .collect();
    parts
        .chunks(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

fn error_code(p: &[u8]) -> u16 {
    assert_eq!(
        p[..2],
        [0, 5],
        "expected ERROR, got {:?}",
        &p[..p.len().min(8)]
    );
    u16::from_be_bytes([p[2], p[3]])
}

fn ack(s: &UdpSocket, to: SocketAddr, block: u16) {
    let mut p = vec![0, 4];
    p.extend_from_slice(&block.to_be_bytes());
    s.send_to(&p, to).unwrap();
}

/// EDK2's sequence: RRQ with `tsize=0 blksize=1468 windowsize=4`, read the size from the
/// OACK, abort with ERROR 8, ask again and take the file four blocks per ACK.
#[test]
fn edk2_pattern_blksize_tsize_windowsize() {
    let srv = start();
    let c = client();
    let opts = [("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")];
    c.send_to(&rq(1, "undionly.kpxe", &opts), srv.addr).unwrap();
    let (p, tid) = recv(&c);
    let got = oack_opts(&p);
    assert!(
        got.contains(&("tsize".into(), srv.payload.len().to_string())),
        "{got:?}"
    );
    assert!(got.contains(&("blksize".into(), "1468".into())), "{got:?}");
    assert!(got.contains(&("windowsize".into(), "4".into())), "{got:?}");
    let mut abort = vec![0, 5, 0, 8];
    abort.extend_from_slice(b"size known\0");
    c.send_to(&abort, tid).unwrap();

    c.send_to(&rq(1, "/undionly.kpxe", &opts), srv.addr)
        .unwrap();
    let (p, tid) = recv(&c);
    oack_opts(&p);
    ack(&c, tid, 0);
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    loop {
        // A whole window arrives before we acknowledge anything.
        let mut last_len = 1468;
        for _ in 0..4 {
            let (p, from) = recv(&c);
            assert_eq!(from, tid);
            assert_eq!(p[..2], [0, 3]);
            assert_eq!(u16::from_be_bytes([p[2], p[3]]), expect);
            data.extend_from_slice(&p[4..]);
            last_len = p.len() - 4;
            expect += 1;
            if last_len < 1468 {
                break;
            }
        }
        ack(&c, tid, expect - 1);
        if last_len < 1468 {
            break;
        }
    }
    assert_eq!(data, srv.payload);
}

#[test]
fn writes_escapes_and_missing_files_refused() {
    let srv = start();
    let c = client();
    c.send_to(&rq(2, "undionly.kpxe", &[]), srv.addr).unwrap();
    assert_eq!(error_code(&recv(&c).0), 2, "write: access violation");
    c.send_to(&rq(2, "new.bin", &[("tsize", "10")]), srv.addr)
        .unwrap();
    assert_eq!(error_code(&recv(&c).0), 2);
    assert!(!srv.root.join("new.bin").exists());
    for path in ["../secret", "/../secret", "sub/../../secret", "escape"] {
        c.send_to(&rq(1, path, &[]), srv.addr).unwrap();
        assert_eq!(error_code(&recv(&c).0), 2, "{path}");
    }
    for path in ["missing.efi", "sub", ""] {
        c.send_to(&rq(1, path, &[]), srv.addr).unwrap();
        let (p, _) = recv(&c);
        assert_eq!(p[..2], [0, 5], "{path}");
    }
    // Subdirectories inside the root are fine; `./` is tolerated.
    c.send_to(&rq(1, "./sub/snponly.efi", &[]), srv.addr)
        .unwrap();
    let (p, tid) = recv(&c);
    assert_eq!(&p[..], &[0, 3, 0, 1, b'e', b'f', b'i']);
    ack(&c, tid, 1);
    // Every refusal and the one read are counted for /metrics.
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(n(&srv.stats.writes_refused), 2);
    assert_eq!(n(&srv.stats.reads_refused), 7);
    assert_eq!(n(&srv.stats.reads), 1);
    // Boot times hear of the read, from the client's address, and of no refusal.
    assert_eq!(
        *srv.readers.lock().unwrap(),
        vec![std::net::IpAddr::from(Ipv4Addr::LOCALHOST)]
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

#[test]
fn real_clients() {
    let srv = start();
    let out = tempfile::tempdir().unwrap();
    let port = srv.addr.port().to_string();
    let mut ran = 0;
    if have("curl") {
        let f = out.path().join("curl.bin");
        let st = Command::new("curl")
            .args(["-sS", "--tftp-blksize", "1432", "-o"])
            .arg(&f)
            .arg(format!("tftp://127.0.0.1:{port}/undionly.kpxe"))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(read(&f), srv.payload);
        let st = Command::new("curl")
            .args(["-sS", "-o", "/dev/null"])
            .arg(format!("tftp://127.0.0.1:{port}/../secret"))
            .status()
            .unwrap();
        assert!(!st.success(), "curl fetched a path outside the root");
        ran += 1;
    }
    if have("atftp") {
        let f = out.path().join("atftp.bin");
        let st = Command::new("atftp")
            .args([
                "--option",
                "blksize 1468",
                "--option",
                "tsize 0",
                "--option",
                "windowsize 4",
                "-g",
                "-r",
                "undionly.kpxe",
                "-l",
            ])
            .arg(&f)
            .args(["127.0.0.1", &port])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(read(&f), srv.payload);
        let up = out.path().join("up.bin");
        std::fs::write(&up, b"x").unwrap();
        let o = Command::new("atftp")
            .args(["-p", "-r", "up.bin", "-l"])
            .arg(&up)
            .args(["127.0.0.1", &port])
            .output()
            .unwrap();
        assert!(!srv.root.join("up.bin").exists());
        assert!(!o.status.success() || !o.stderr.is_empty());
        ran += 1;
    }
    if have("tftp") {
        let f = out.path().join("hpa.bin");
        let st = Command::new("tftp")
            .args([
                "-m",
                "binary",
                "127.0.0.1",
                &port,
                "-c",
                "get",
                "undionly.kpxe",
            ])
            .arg(&f)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(read(&f), srv.payload);
        ran += 1;
    }
    if ran == 0 {
        eprintln!("no TFTP client installed (curl, atftp, tftp-hpa): only the raw client ran");
    }
}
