//! A two-host lab LAN for tests: network namespaces `a` and `b` joined by a
//! veth pair (`boot0` in `a`, `peer_if` in `b`), removed on drop.

/// The two namespaces; `a` holds the boot interface `boot0` at `10.77.<net>.1`.
pub struct Lan {
    pub a: String,
    pub b: String,
}

impl Lan {
    /// `None` (with a note) when not root: namespaces need it.
    pub fn new(tag: &str, net: u8, peer_if: &str, peer_host: u8) -> Option<Lan> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: namespaces need root");
            return None;
        }
        let id = std::process::id();
        let lan = Lan {
            a: format!("khoi-{tag}-a-{id}"),
            b: format!("khoi-{tag}-b-{id}"),
        };
        let (a, b) = (lan.a.as_str(), lan.b.as_str());
        let (a_ip, b_ip) = (
            format!("10.77.{net}.1/24"),
            format!("10.77.{net}.{peer_host}/24"),
        );
        for cmd in [
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "-n", a, "link", "add", "boot0", "type", "veth", "peer", "name", peer_if, "netns",
                b,
            ],
            vec!["-n", a, "addr", "add", &a_ip, "dev", "boot0"],
            vec!["-n", b, "addr", "add", &b_ip, "dev", peer_if],
            vec!["-n", a, "link", "set", "boot0", "up"],
            vec!["-n", b, "link", "set", peer_if, "up"],
        ] {
            let st = std::process::Command::new("ip")
                .args(&cmd)
                .status()
                .expect("ip");
            assert!(st.success(), "ip {cmd:?}");
        }
        Some(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// Moves the calling thread (network namespaces are per thread) into `ns`.
pub fn enter(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on a namespace fd we hold open; affects this thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}
