//! A single-node Garage (the S3-compatible store of the province sync tests)
//! for one test: its own temporary folder, free loopback ports, sqlite
//! metadata, replication factor 1; optionally inside a network namespace.
//! Killed by its PID when dropped. Garage is AGPL: only ever a separate
//! process. `scripts/setup.sh test` installs it.
//!
//! Shared by `server/khoi-sync/tests/garage.rs` and `tests/pxe_e2e.rs`
//! (included with `#[path]`).

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn garage_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GARAGE_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo = Path::new(&home).join(".cargo/bin/garage");
    if cargo.exists() {
        return cargo;
    }
    PathBuf::from("garage")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One single-node Garage, killed (by its PID) when dropped.
pub struct Garage {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub s3_port: u16,
    cfg: PathBuf,
    netns: Option<String>,
}

/// An S3 access key.
#[derive(Debug, Clone)]
pub struct Key {
    pub id: String,
    pub secret: String,
}

impl Garage {
    /// Starts Garage (in `netns` if given: its loopback ports are then the
    /// namespace's), with one bucket, `khoi`.
    pub fn start(netns: Option<&str>) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix(&format!("khoi-garage-{}-", std::process::id()))
            .tempdir()
            .expect("tmp");
        // In a fresh namespace every port is free; outside, ask the kernel.
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let cfg = dir.path().join("garage.toml");
        fs::write(
            &cfg,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                d = dir.path().display(),
                secret = random_hex(32),
            ),
        )
        .expect("config");
        fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut g = Garage {
            dir,
            child: None,
            s3_port: s3,
            cfg,
            netns: netns.map(str::to_string),
        };
        g.spawn();
        let id = g.cli(&["node", "id", "-q"]);
        let node = id.trim().split('@').next().expect("node id").to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["bucket", "create", "khoi"]);
        g
    }

    fn command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(garage_bin());
                c
            }
            None => Command::new(garage_bin()),
        }
    }

    /// Starts (or restarts) the server on the same folder and ports.
    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .expect("log");
        // `ip netns exec` execs, so the child's PID is Garage's own.
        let child = self
            .command()
            .arg("-c")
            .arg(&self.cfg)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): run scripts/setup.sh test",
                    garage_bin().display()
                )
            });
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            let ok = self
                .command()
                .arg("-c")
                .arg(&self.cfg)
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("garage status")
                .success();
            if ok {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "garage did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .arg("-c")
            .arg(&self.cfg)
            .args(args)
            .output()
            .expect("garage");
        assert!(
            out.status.success(),
            "garage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// A new key allowed to read the bucket (and write it if `write`).
    pub fn key(&self, name: &str, write: bool) -> Key {
        let out = self.cli(&["key", "create", name]);
        let field = |label: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(label))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {label} in {out}"))
        };
        let key = Key {
            id: field("Key ID:"),
            secret: field("Secret key:"),
        };
        let mut allow = vec!["bucket", "allow", "--read"];
        if write {
            allow.push("--write");
        }
        allow.extend(["khoi", "--key", name]);
        self.cli(&allow);
        key
    }

    /// Writes `key` as a Khoi credentials file (owner-only) into `dir`.
    pub fn credentials(&self, key: &Key, dir: &Path) -> PathBuf {
        let cred = dir.join(format!("cred-{}", key.id));
        fs::write(&cred, format!("{} {}\n", key.id, key.secret)).expect("write");
        fs::set_permissions(&cred, fs::Permissions::from_mode(0o600)).expect("chmod");
        cred
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Kills the server (by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
