//! The Debian package: built by `scripts/package.sh` from the debug binary
//! cargo already built for this test (a release build would cost the suite
//! minutes for the same layout), unpacked into a throwaway root, checked,
//! and its binary started the way the systemd unit starts it.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The `ExecStart=` line of the unit, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn package_builds_unpacks_and_starts_like_the_unit() {
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("out");
    let deb = run(Command::new(repo().join("scripts/package.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_khoi"))
        .arg("--out")
        .arg(&out));
    let deb = PathBuf::from(deb.trim());
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.file_name().and_then(|n| n.to_str()),
        Some(format!("khoi_{version}_amd64.deb").as_str())
    );

    // Control area: metadata, conffiles and maintainer scripts.
    let control = work.path().join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let fields = std::fs::read_to_string(control.join("control")).expect("control");
    assert!(
        fields.contains(&format!("Version: {version}\n")),
        "{fields}"
    );
    assert!(fields.contains("Architecture: amd64\n"), "{fields}");
    // The image fix's tools and the report PDF's fonts come with the package.
    for dep in [
        "qemu-utils",
        "ipxe",
        "libssl3",
        "adduser",
        "ntfs-3g",
        "libnbd-bin",
        "libhivex-bin",
        "libwin-hivex-perl",
        "sqlite3",
        "fonts-dejavu-core",
        "fonts-noto-mono",
    ] {
        assert!(fields.contains(dep), "Depends lacks {dep}: {fields}");
    }
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).expect("conffiles"),
        "/etc/khoi/khoi.yaml\n"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(postinst.contains("-m 0700 /var/lib/khoi"), "{postinst}");
    for s in ["postinst", "prerm", "postrm"] {
        assert_eq!(mode(&control.join(s)), 0o755, "{s}");
        // Maintainer scripts run under dash: they must at least parse.
        run(Command::new("sh").arg("-n").arg(control.join(s)));
    }
    let postrm = std::fs::read_to_string(control.join("postrm")).expect("postrm");
    assert!(
        !postrm.contains("rm -rf"),
        "purge must not delete the admin's data"
    );

    // Data: files, owners (root) and modes.
    let root = work.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for line in listing.lines() {
        assert!(line.contains(" root/root "), "not root-owned: {line}");
    }
    let bin = root.join("usr/bin/khoi");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&root.join("etc/khoi/khoi.yaml")), 0o644);
    let unit_path = root.join("lib/systemd/system/khoi.service");
    assert_eq!(mode(&unit_path), 0o644);
    assert!(root.join("usr/share/doc/khoi/operations.md").is_file());
    let yaml = std::fs::read_to_string(root.join("etc/khoi/khoi.yaml")).expect("yaml");
    assert!(yaml.contains("\ndata_dir: /var/lib/khoi\n"), "{yaml}");
    assert!(
        !yaml.contains(" var/khoi"),
        "relative data path left: {yaml}"
    );
    let check = run(Command::new(&bin)
        .args(["config", "check"])
        .arg(root.join("etc/khoi/khoi.yaml")));
    assert!(check.contains("data in /var/lib/khoi"), "{check}");

    let unit = std::fs::read_to_string(&unit_path).expect("unit");
    for want in [
        "Type=notify",
        "Restart=on-failure",
        "User=khoi",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_RAW",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/khoi",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "LimitNOFILE=65536",
        "StateDirectory=khoi",
        "StateDirectoryMode=0700",
    ] {
        assert!(unit.lines().any(|l| l == want), "unit lacks {want}");
    }
    verify_unit(&unit, &bin, work.path());

    start_like_the_unit(&unit, &bin, &root.join("etc/khoi/khoi.yaml"), work.path());
}

/// `systemd-analyze verify` needs the unit's binary at its path; the unit
/// is checked with ExecStart pointing at the unpacked copy instead.
fn verify_unit(unit: &str, bin: &Path, work: &Path) {
    let dir = work.join("units");
    std::fs::create_dir_all(&dir).expect("units dir");
    let local = unit.replace("/usr/bin/khoi", &bin.display().to_string());
    let path = dir.join("khoi.service");
    std::fs::write(&path, local).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Without systemd as PID 1 (a container) verify still loads and checks
    // the unit; only lines naming our file are about us, the rest are the
    // host's own units it reads along the way.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("khoi.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{text}");
}

/// Runs ExecStart's arguments as an unprivileged user with a config like
/// the packaged one (data in a temp folder, free ports), with NOTIFY_SOCKET
/// on a socket this test reads: READY=1 must arrive, and the admin page
/// must answer once it has.
fn start_like_the_unit(unit: &str, bin: &Path, packaged_yaml: &Path, work: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the start as user nobody: setpriv needs root");
        return;
    }
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = work.join("data");
    std::fs::create_dir(&data).expect("data");
    run(Command::new("chown").arg("65534:65534").arg(&data));
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    let (admin, iscsi) = (free_port(), free_port());
    let yaml = std::fs::read_to_string(packaged_yaml)
        .expect("yaml")
        .replace(
            "data_dir: /var/lib/khoi",
            &format!("data_dir: {}", data.display()),
        )
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:3260", &format!("127.0.0.1:{iscsi}"));
    let config = work.join("khoi.yaml");
    std::fs::write(&config, yaml).expect("config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let notify_path = work.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");

    let mut args = exec_start(unit);
    assert_eq!(args[0], "/usr/bin/khoi");
    let cfg_at = args.iter().position(|a| a == "--config").expect("--config") + 1;
    args[cfg_at] = config.display().to_string();
    // Twice: once reading the admin page before stopping it, once stopping
    // it the instant READY=1 arrives, as systemd may (the signal handlers
    // must already be in place by then).
    for fetch_page in [true, false] {
        run_once(
            bin,
            &args[1..],
            &data,
            &notify_path,
            &notify,
            admin,
            fetch_page,
        );
    }
    // The data was written as the unprivileged user.
    use std::os::unix::fs::MetadataExt;
    let db = std::fs::metadata(data.join("khoi.db")).expect("khoi.db");
    assert_eq!(db.uid(), 65534);
}

/// Starts the binary as `nobody` with the unit's arguments, waits for
/// READY=1, optionally reads the admin page, then stops it with SIGTERM
/// and expects a clean exit.
fn run_once(
    bin: &Path,
    args: &[String],
    data: &Path,
    notify_path: &Path,
    notify: &UnixDatagram,
    admin: u16,
    fetch_page: bool,
) {
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .arg(bin)
        .args(args)
        .current_dir(data)
        .env_clear()
        .env("NOTIFY_SOCKET", notify_path)
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start khoi");

    // Skip what an earlier run left (its STOPPING=1) until READY=1.
    let mut buf = [0u8; 256];
    let got = loop {
        match notify.recv(&mut buf) {
            Ok(n) if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") => break Ok(n),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    let ready = got.is_ok();
    let page = (ready && fetch_page).then(|| http_get(admin, "/login"));

    // SAFETY: signalling the child this test started, by its pid.
    unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "khoi did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(ready, "no READY=1 ({got:?}); khoi said:\n{err}");
    if fetch_page {
        let page = page.unwrap_or_default();
        assert!(
            page.starts_with("HTTP/1.1 200"),
            "admin page: {page}\n{err}"
        );
    }
    assert!(status.success(), "exit {status}: {err}");
}

fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return "connect failed".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
