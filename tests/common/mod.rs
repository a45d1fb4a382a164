//! Harness for end-to-end tests: a real `khoi serve` on loopback with a
//! private data folder and free ports, driven by the real `khoi` CLI and by
//! real protocol peers (libnbd tools, qemu, fio, libiscsi).
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KHOI: &str = env!("CARGO_BIN_EXE_khoi");

/// Whether a peer tool is installed; `./scripts/test.sh` installs them all,
/// so a missing one is a failure there, but a developer running one test
/// file by hand gets a clear message instead of a confusing error.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; run ./scripts/setup.sh test (or ./scripts/test.sh)"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[derive(Debug)]
pub struct Server {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    pub nbd_port: u16,
    pub iscsi_port: u16,
    pub admin_port: u16,
    child: Option<Child>,
    netns: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub free_space_floor: Option<String>,
    pub default_seat_quota: Option<String>,
    pub iscsi: bool,
    /// The iSCSI portal to listen on instead of loopback (with `iscsi`).
    pub iscsi_addr: Option<String>,
    /// Also serve NBD on TCP (`nbd_port`) with TLS, keys from this file.
    pub nbd_psk: Option<PathBuf>,
    /// YAML appended to the generated config (e.g. a `pxe:` section).
    pub extra_yaml: String,
    /// Run `khoi serve` inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// `listen.tcp_congestion`, when not the default.
    pub tcp_congestion: Option<String>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("khoi-e2e-")
            .tempdir()
            .expect("tmp dir");
        let data = dir.path().join("data");
        let config = dir.path().join("khoi.yaml");
        let nbd_port = free_port();
        let iscsi_port = free_port();
        let admin_port = free_port();
        let mut f = std::fs::File::create(&config).expect("config");
        let mut tls_yaml = None;
        writeln!(f, "data_dir: {}", data.display()).expect("write");
        // NBD is on the data folder's unix socket (the default); TCP only
        // with TLS, when a test asks for it.
        writeln!(f, "listen:").expect("write");
        if let Some(psk) = &opts.nbd_psk {
            writeln!(f, "  nbd: 127.0.0.1:{nbd_port}").expect("write");
            let tls = format!("nbd_tls:\n  psk_file: {}\n", psk.display());
            tls_yaml = Some(tls);
        }
        if opts.iscsi {
            let addr = opts
                .iscsi_addr
                .clone()
                .unwrap_or_else(|| format!("127.0.0.1:{iscsi_port}"));
            writeln!(f, "  iscsi: {addr}").expect("write");
        } else {
            writeln!(f, "  iscsi: null").expect("write");
        }
        if let Some(cc) = &opts.tcp_congestion {
            writeln!(f, "  tcp_congestion: {cc}").expect("write");
        }
        writeln!(
            f,
            "storage:\n  free_space_floor: {}\n  default_seat_quota: {}",
            opts.free_space_floor.as_deref().unwrap_or("0"),
            opts.default_seat_quota.as_deref().unwrap_or("0")
        )
        .expect("write");
        // Every server gets its own admin port, so tests can run in parallel.
        writeln!(f, "admin:\n  listen: 127.0.0.1:{admin_port}").expect("write");
        if let Some(tls) = tls_yaml {
            f.write_all(tls.as_bytes()).expect("write");
        }
        f.write_all(opts.extra_yaml.as_bytes()).expect("write");
        drop(f);
        let mut s = Server {
            dir,
            data,
            config,
            nbd_port,
            iscsi_port,
            admin_port,
            child: None,
            netns: opts.netns,
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log");
        // `ip netns exec` execs, so the child's pid is khoi's own.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, KHOI]);
                c
            }
            None => Command::new(KHOI),
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("KHOI_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start khoi serve");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let sock = self.data.join("khoi.sock");
        while Instant::now() < deadline {
            if sock.exists() && self.khoi(&["image", "list"]).status.success() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("khoi serve exited early ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("khoi serve did not become ready:\n{}", self.log());
    }

    /// The server's process id (to read its /proc entries).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kill -9`: no flush, no clean shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL khoi");
            child.wait().expect("reap khoi");
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).expect("pid");
            // SAFETY: plain kill(2) on the child we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("khoi did not stop on SIGTERM:\n{}", self.log());
        }
    }

    pub fn khoi(&self, args: &[&str]) -> Output {
        Command::new(KHOI)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run khoi CLI")
    }

    /// Run a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.khoi(args);
        assert!(
            out.status.success(),
            "khoi {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run a CLI command that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.khoi(args);
        assert!(
            !out.status.success(),
            "khoi {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    /// The export on the server's owner-only unix socket.
    pub fn nbd_uri(&self, export: &str) -> String {
        format!(
            "nbd+unix:///{export}?socket={}",
            self.data.join("nbd.sock").display()
        )
    }

    /// The export on TCP with TLS (a server started with `nbd_psk`).
    pub fn nbd_tls_uri(&self, export: &str, user: &str, psk: &std::path::Path) -> String {
        format!(
            "nbds://{user}@127.0.0.1:{}/{export}?tls-psk-file={}",
            self.nbd_port,
            psk.display()
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A deterministic, incompressible-looking test image: every 4 KiB block
/// starts with its own index so misplaced blocks are caught, and a few
/// regions are left as holes to exercise sparse paths.
pub fn make_image(path: &Path, size: u64) {
    let mut data = vec![0u8; usize::try_from(size).expect("size")];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, block) in data.chunks_mut(4096).enumerate() {
        // Leave every 16th MiB-aligned run of 64 KiB as zeroes.
        if (i / 16) % 16 == 3 {
            continue;
        }
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        for b in block[8..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x.to_le_bytes()[3];
        }
    }
    std::fs::write(path, data).expect("write image");
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-io` on an NBD URI with the given `-c` commands (entries starting
/// with `-`, like `-r`, are options): (succeeded, all output).
pub fn qemu_io(uri: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        if cmd.starts_with('-') {
            c.arg(cmd);
        } else {
            c.args(["-c", cmd]);
        }
    }
    c.arg(uri);
    let out = run(&mut c);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io keeps going after a failed command; its messages tell.
    let ok = out.status.success() && !text.contains("failed") && !text.contains("error");
    (ok, text)
}

pub fn qemu_io_ok(uri: &str, cmds: &[&str]) -> String {
    let (ok, text) = qemu_io(uri, cmds);
    assert!(ok, "qemu-io {cmds:?} on {uri} failed:\n{text}");
    text
}

/// A `qemu-io` read that must find other bytes than `pattern`.
pub fn qemu_io_mismatch(uri: &str, cmd: &str) {
    qemu_io_mismatch_with(uri, &[cmd]);
}

pub fn qemu_io_mismatch_with(uri: &str, cmds: &[&str]) {
    let (ok, text) = qemu_io(uri, cmds);
    let cmd = cmds.join(" ");
    assert!(
        !ok && text.contains("Pattern verification failed"),
        "qemu-io {cmd:?} on {uri} should have found other data:\n{text}"
    );
}

/// `nbdsh` with Debian's python: a developer's pyenv python has no `nbd`.
pub fn nbdsh(script: &str) -> String {
    run_ok(
        Command::new("nbdsh")
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .args(["-c", "import errno", "-c", script]),
    )
}

/// GET a path from the server's admin listener (plain HTTP/1.0).
pub fn admin_get(s: &Server, path: &str) -> String {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.admin_port)).expect("admin port");
    write!(c, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("response");
    out
}
