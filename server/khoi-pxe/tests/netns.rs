//! DHCP and TFTP on real sockets inside private network namespaces (root only):
//!
//! ```text
//!   ns C (client)  kcli 10.211.0.50 ──veth── kboot 10.211.0.1  ns S (Khoi, boot interface)
//!   ns O (other)   koth 10.212.0.50 ──veth── kother 10.212.0.1 ns S (not the boot interface)
//! ```
//!
//! Clients are plain UDP sockets bound to their veth with SO_BINDTODEVICE, sending the
//! captured OVMF packets. Nothing leaves these namespaces; a guard deletes them (and with
//! them the veths) even when an assertion fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeDir, MAC, seat};
use khoi_pxe::wire::{Message, MessageType, opt};
use khoi_pxe::{BootDirectory, BootState, DhcpCore, DhcpSockets, NetError, PxeConfig};
use tokio_util::sync::CancellationToken;

static OVMF_DISCOVER: &[u8] = include_bytes!("vectors/ovmf-f1.bin");
static OVMF_REQUEST_4011: &[u8] = include_bytes!("vectors/ovmf-f6.bin");

const KHOI: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 50);

/// Deletes the namespaces on drop, including during a panic's unwinding.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {}", args.join(" "));
}

/// Moves the calling thread (only) into namespace `ns`.
fn enter_ns(ns: &str) {
    let fd = File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a valid namespace fd only changes the calling thread's network
    // namespace; callers are threads spawned for that purpose.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread that has entered namespace `ns`; sockets created there stay in it.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_ns(ns);
            f()
        })
        .join()
        .unwrap()
    })
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !has_ip {
        eprintln!("skipping: needs root and iproute2 (root={root}, ip={has_ip})");
    }
    root && has_ip
}

fn setup() -> (Namespaces, [String; 3]) {
    let pid = std::process::id();
    let names = ["s", "c", "o"].map(|x| format!("khoi-pxe-test-{pid}-{x}"));
    for n in &names {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
    let mut guard = Namespaces(Vec::new());
    for n in &names {
        ip(&["netns", "add", n]);
        guard.0.push(n.clone());
    }
    let [s, c, o] = &names;
    ip(&[
        "-n", s, "link", "add", "kboot", "type", "veth", "peer", "name", "kcli", "netns", c,
    ]);
    ip(&[
        "-n", s, "link", "add", "kother", "type", "veth", "peer", "name", "koth", "netns", o,
    ]);
    for (ns, dev, addr) in [
        (s, "kboot", "10.211.0.1/24"),
        (s, "kother", "10.212.0.1/24"),
        (c, "kcli", "10.211.0.50/24"),
        (o, "koth", "10.212.0.50/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    (guard, names)
}

fn client_socket(dev: &str, port: u16) -> UdpSocket {
    let s = khoi_pxe::net::bind_udp_on(
        dev,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        "client",
    )
    .unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    s
}

fn recv_reply(s: &UdpSocket) -> Option<(Message, SocketAddr)> {
    let mut b = [0u8; 1500];
    loop {
        match s.recv_from(&mut b) {
            Ok((n, from)) => {
                let m = Message::parse_bytes(&b[..n]).unwrap();
                if m.op == 2 {
                    return Some((m, from));
                }
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn dhcp_and_tftp_bound_to_the_boot_interface_only() {
    if !can_run() {
        return;
    }
    let (_guard, [s, c, o]) = setup();
    let tftp_root = tempfile::tempdir().unwrap();
    std::fs::write(tftp_root.path().join("snponly.efi"), b"EFI-BINARY").unwrap();
    let cfg = PxeConfig::proxy("kboot", KHOI, tftp_root.path().into());

    // Refusals name the interface.
    let mut missing = cfg.clone();
    missing.interface = "nope0".into();
    let err = in_ns(&s, || DhcpSockets::bind(&missing)).unwrap_err();
    assert!(matches!(err, NetError::InterfaceMissing(_)));
    assert!(err.to_string().contains("`nope0`"), "{err}");
    let mut wrong_ip = cfg.clone();
    wrong_ip.server_ip = Ipv4Addr::new(10, 212, 0, 1);
    let err = in_ns(&s, || DhcpSockets::bind(&wrong_ip)).unwrap_err();
    assert!(matches!(err, NetError::AddressMissing { .. }), "{err}");
    assert!(err.to_string().contains("`kboot`"), "{err}");

    let (sockets, tftp_sock) = in_ns(&s, || {
        (
            DhcpSockets::bind(&cfg).unwrap(),
            khoi_pxe::net::bind_tftp(&cfg).unwrap(),
        )
    });
    // A second DHCP server on the same interface is refused, not run alongside.
    let dup = in_ns(&s, || DhcpSockets::bind(&cfg)).unwrap_err();
    assert!(matches!(dup, NetError::Bind { .. }), "{dup}");
    assert!(dup.to_string().contains("`kboot`"), "{dup}");
    let dir = Arc::new(FakeDir::with([seat("pc01", MAC)]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let state = Arc::new(BootState::new(&cfg));
    let core = DhcpCore::new(&cfg, state, dir.leases());
    let dyn_dir: Arc<dyn BootDirectory> = dir.clone();
    rt.spawn(khoi_pxe::net::serve_dhcp(
        sockets,
        core,
        dyn_dir,
        cancel.clone(),
    ));
    // async-tftp opens a socket per transfer in whatever namespace its task runs in, so the
    // TFTP server runs on a thread inside ns S (in production the whole process is there).
    let (root, c2, ns) = (cfg.tftp_root.clone(), cancel.clone(), s.clone());
    let tftp_thread = std::thread::spawn(move || {
        enter_ns(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(khoi_pxe::tftp::serve(tftp_sock, &root, c2))
            .unwrap();
    });

    // Broadcast DISCOVER from an unconfigured-looking client on the boot segment.
    let (offer, from) = in_ns(&c, || {
        let sock = client_socket("kcli", 68);
        sock.send_to(OVMF_DISCOVER, "255.255.255.255:67").unwrap();
        recv_reply(&sock).expect("no OFFER on the boot interface")
    });
    assert_eq!(from, SocketAddr::from((KHOI, 67)));
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    assert_eq!(offer.siaddr, KHOI);
    assert_eq!(offer.options.server_id(), Some(KHOI));
    assert!(!offer.options.contains(opt::VENDOR));

    // EDK2's boot-server request, from port 4011 to 4011, unicast.
    let mut req = Message::parse_bytes(OVMF_REQUEST_4011).unwrap();
    req.ciaddr = CLIENT;
    let req = req.emit();
    let (ack, from) = in_ns(&c, || {
        let sock = client_socket("kcli", 4011);
        sock.send_to(&req, (KHOI, 4011)).unwrap();
        recv_reply(&sock).expect("no ACK from port 4011")
    });
    assert_eq!(from, SocketAddr::from((KHOI, 4011)));
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.file, b"snponly.efi");
    assert_eq!(ack.siaddr, KHOI);
    // Both answers went to boot times as a PXE client's.
    assert_eq!(
        *dir.answered.lock(),
        vec![("pc01".to_string(), true), ("pc01".to_string(), true)]
    );

    // TFTP of the announced file from the client namespace.
    let data = in_ns(&c, || {
        let sock = UdpSocket::bind((CLIENT, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        sock.send_to(b"\0\x01snponly.efi\0octet\0", (KHOI, 69))
            .unwrap();
        let mut b = [0u8; 600];
        let (n, from) = sock.recv_from(&mut b).unwrap();
        sock.send_to(&[0, 4, 0, 1], from).unwrap();
        assert_eq!(from.ip(), std::net::IpAddr::V4(KHOI));
        b[..n].to_vec()
    });
    assert_eq!(data, b"\0\x03\0\x01EFI-BINARY");

    // The same registered client on the other interface gets nothing, broadcast or unicast.
    let silent = in_ns(&o, || {
        let sock = client_socket("koth", 68);
        sock.send_to(OVMF_DISCOVER, "255.255.255.255:67").unwrap();
        let a = recv_reply(&sock);
        let sock4011 = client_socket("koth", 4011);
        sock4011.send_to(&req, ("10.212.0.1", 4011)).unwrap();
        let b = recv_reply(&sock4011);
        a.is_none() && b.is_none()
    });
    assert!(silent, "answered on a non-boot interface");
    assert!(dir.unknown.lock().is_empty());

    // Still serving on the boot interface afterwards.
    let again = in_ns(&c, || {
        let sock = client_socket("kcli", 68);
        sock.send_to(OVMF_DISCOVER, "255.255.255.255:67").unwrap();
        recv_reply(&sock)
    });
    assert!(again.is_some());
    cancel.cancel();
    rt.shutdown_timeout(Duration::from_secs(2));
    tftp_thread.join().unwrap();
}
