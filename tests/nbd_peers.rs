//! End-to-end: the real `khoi` server and CLI, exercised by real NBD clients
//! (libnbd's nbdinfo/nbdcopy/nbdsh, qemu-img/qemu-io, fio's nbd engine).

mod common;

use std::process::Command;

use common::{
    Options, Server, make_image, nbdsh, qemu_io, qemu_io_mismatch, qemu_io_mismatch_with,
    qemu_io_ok, require, run, run_ok,
};

const MIB: u64 = 1 << 20;

/// A server with image `img` (version 1) imported from a generated file and
/// seat `a` assigned to it.
fn server_with_seat(opts: Options) -> (Server, std::path::PathBuf) {
    let s = Server::start_with(opts);
    let src = s.path("golden.img");
    make_image(&src, 32 * MIB);
    s.ok(&[
        "image",
        "import",
        "img",
        src.to_str().expect("path"),
        "--note",
        "base",
    ]);
    s.ok(&[
        "seat",
        "add",
        "a",
        "--mac",
        "52:54:00:00:00:0a",
        "--image",
        "img",
    ]);
    (s, src)
}

#[test]
fn exports_are_listed_and_a_seat_reads_the_imported_image() {
    require("nbdinfo");
    require("nbdcopy");
    require("qemu-img");
    let (s, src) = server_with_seat(Options::default());
    let list = run_ok(Command::new("nbdinfo").args(["--list", &s.nbd_uri("")]));
    for export in ["seat/a", "image/img@1"] {
        assert!(
            list.contains(&format!("export=\"{export}\"")) || list.contains(export),
            "{list}"
        );
    }
    let copy = s.path("copy.img");
    run_ok(Command::new("nbdcopy").args([&s.nbd_uri("seat/a"), copy.to_str().expect("path")]));
    assert_eq!(
        std::fs::read(&copy).expect("copy"),
        std::fs::read(&src).expect("src"),
        "nbdcopy of the seat differs from the imported image"
    );
    run_ok(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        src.to_str().expect("path"),
        &s.nbd_uri("seat/a"),
    ]));
    let info = run_ok(Command::new("nbdinfo").args(["--json", &s.nbd_uri("seat/a")]));
    let info: serde_json::Value = serde_json::from_str(&info).expect("nbdinfo json");
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 32 * MIB);
    assert_eq!(export["can_multi_conn"], true, "{info}");
    assert_eq!(export["can_flush"], true, "{info}");
    assert_eq!(export["can_fua"], true, "{info}");
    assert_eq!(export["is_read_only"], false, "{info}");
}

#[test]
fn writes_through_one_connection_read_back_through_another() {
    require("qemu-io");
    let (s, _) = server_with_seat(Options::default());
    let uri = s.nbd_uri("seat/a");
    qemu_io_ok(
        &uri,
        &["write -P 0xab 1M 64k", "write -P 0xcd 3000 1000", "flush"],
    );
    qemu_io_ok(&uri, &["read -P 0xab 1M 64k", "read -P 0xcd 3000 1000"]);
    // The golden image is untouched: the version export still has the
    // original bytes where the seat wrote.
    let golden = s.nbd_uri("image/img@1");
    qemu_io_mismatch_with(&golden, &["-r", "read -P 0xab 1M 64k"]);
    // The seat's traffic shows up in the Prometheus counters.
    let metrics = common::admin_get(&s, "/metrics");
    let written = metrics
        .lines()
        .find(|l| {
            l.starts_with("khoi_written_bytes_total")
                && l.contains("seat=\"a\"")
                && l.contains("proto=\"nbd\"")
        })
        .unwrap_or_else(|| panic!("no NBD write counter for seat a:\n{metrics}"));
    let n: f64 = written
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(n >= 65536.0 + 1000.0, "{written}");
}

#[test]
fn block_status_reports_trimmed_and_zeroed_overlay_extents() {
    require("nbdinfo");
    require("qemu-io");
    let (s, _) = server_with_seat(Options::default());
    let uri = s.nbd_uri("seat/a");
    qemu_io_ok(&uri, &["discard 4M 1M", "write -z -u 8M 512k"]);
    let map = run_ok(Command::new("nbdinfo").args(["--map", "--json", &uri]));
    let map: serde_json::Value = serde_json::from_str(&map).expect("map json");
    let zero_at = |off: u64| {
        map.as_array()
            .expect("extents")
            .iter()
            .find(|e| {
                let o = e["offset"].as_u64().expect("offset");
                let l = e["length"].as_u64().expect("length");
                o <= off && off < o + l
            })
            .map(|e| e["type"].as_u64().expect("type"))
            .expect("covered")
    };
    assert_eq!(
        zero_at(4 * MIB),
        3,
        "trimmed range must be hole+zero: {map}"
    );
    assert_eq!(zero_at(8 * MIB), 3, "zeroed range must be hole+zero: {map}");
    assert_eq!(zero_at(0), 0, "golden data is data: {map}");
    qemu_io_ok(&uri, &["read -P 0 4M 1M", "read -P 0 8M 512k"]);
}

#[test]
fn fio_verify_job_passes() {
    require("fio");
    let (s, _) = server_with_seat(Options::default());
    let out = run(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", s.nbd_uri("seat/a")),
        "--rw=randwrite",
        "--bs=4k",
        "--size=16M",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--randrepeat=0",
        "--verify_state_save=0",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("verify: bad"),
        "fio verify failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flushed_writes_survive_kill_9() {
    require("qemu-io");
    let (mut s, _) = server_with_seat(Options::default());
    let uri = s.nbd_uri("seat/a");
    // qemu-io flushes on close too; the explicit flush is the contract under test.
    qemu_io_ok(
        &uri,
        &["write -P 0x5a 2M 1M", "write -P 0x11 7000 5000", "flush"],
    );
    s.kill9();
    s.spawn();
    qemu_io_ok(&uri, &["read -P 0x5a 2M 1M", "read -P 0x11 7000 5000"]);
}

#[test]
fn full_quota_gives_enospc_and_other_seats_carry_on() {
    require("qemu-io");
    let (s, _) = server_with_seat(Options::default());
    s.ok(&[
        "seat",
        "add",
        "small",
        "--mac",
        "52:54:00:00:00:0b",
        "--image",
        "img",
        "--quota",
        "1MiB",
    ]);
    let small = s.nbd_uri("seat/small");
    qemu_io_ok(&small, &["write -P 1 0 512k"]);
    let (ok, text) = qemu_io(&small, &["write -P 2 4M 2M"]);
    assert!(!ok && text.contains("No space left on device"), "{text}");
    // The overwrite of an already-allocated block still works when full,
    // and the seat's earlier data is intact.
    qemu_io_ok(
        &small,
        &["write -P 3 0 4k", "read -P 3 0 4k", "read -P 1 4k 508k"],
    );
    // Another seat is unaffected.
    qemu_io_ok(
        &s.nbd_uri("seat/a"),
        &["write -P 9 4M 2M", "read -P 9 4M 2M"],
    );
    let events = s.json(&["events", "--subject", "small"]);
    assert!(
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "overlay.quota"),
        "no quota event: {events}"
    );
}

#[test]
fn version_exports_are_read_only() {
    require("nbdsh");
    let (s, _) = server_with_seat(Options::default());
    let uri = s.nbd_uri("image/img@1");
    let script = format!(
        "h.set_strict_mode(0)\n\
         h.connect_uri({uri:?})\n\
         assert h.is_read_only()\n\
         try:\n    h.pwrite(b'x' * 512, 0)\n    raise SystemExit('write to a version succeeded')\n\
         except nbd.Error as e:\n    assert 'EPERM' in str(e) or 'EROFS' in str(e), e\n    print('ok', e)\n"
    );
    let out = nbdsh(&script);
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn bad_requests_get_errors_and_the_connection_carries_on() {
    require("nbdsh");
    let (s, _) = server_with_seat(Options::default());
    let uri = s.nbd_uri("seat/a");
    // libnbd checks ranges itself unless strict mode is relaxed.
    let script = format!(
        "h.set_strict_mode(0)\n\
         h.connect_uri({uri:?})\n\
         size = h.get_size()\n\
         for (n, off) in [(4096, size), (8192, size - 4096), (64 << 20, 0)]:\n\
         \x20   try:\n\
         \x20       h.pread(n, off)\n\
         \x20       raise SystemExit('out-of-range read succeeded')\n\
         \x20   except nbd.Error as e:\n\
         \x20       print('refused', n, off, e.errno)\n\
         assert h.pread(4096, 0)[:8] == (0).to_bytes(8, 'little')\n\
         print('alive')\n"
    );
    let out = nbdsh(&script);
    assert!(out.contains("alive"), "{out}");
}

#[test]
fn draft_publish_rollback_and_reset_through_the_cli() {
    require("qemu-io");
    let (s, _) = server_with_seat(Options::default());
    s.ok(&["draft", "open", "img"]);
    qemu_io_ok(&s.nbd_uri("draft/img"), &["write -P 0x77 0 64k", "flush"]);
    // The test disk has no Windows in it: the image gate refuses the
    // publish and the CLI prints what it found; the local CLI user is an
    // admin and overrides with a reason.
    let err = s.fails(&[
        "draft",
        "publish",
        "img",
        "--note",
        "install printer driver",
    ]);
    // (Bytes 0x77 over the first 64 KiB make its partition table malformed.)
    assert!(
        err.contains("image gate refused") && err.contains("BLOCKING malformed-image"),
        "{err}"
    );
    let v = s.json(&[
        "draft",
        "publish",
        "img",
        "--note",
        "install printer driver",
        "--override",
        "test disk without Windows",
    ]);
    assert_eq!(v["number"], 2);
    assert_eq!(v["note"], "install printer driver");
    // The seat keeps running version 1 until it is reset.
    let seat = s.json(&["seat", "show", "a"]);
    assert_eq!(seat["active_version"], 1, "{seat}");
    let a = s.nbd_uri("seat/a");
    qemu_io_mismatch(&a, "read -P 0x77 0 64k");
    qemu_io_ok(&a, &["write -P 0x42 1M 4k"]);
    s.ok(&["seat", "reset", "a"]);
    qemu_io_ok(&a, &["read -P 0x77 0 64k"]);
    qemu_io_mismatch(&a, "read -P 0x42 1M 4k");
    // Roll back: version 1 is current again, and the seat moves at reset.
    s.ok(&[
        "image",
        "rollback",
        "img",
        "--to",
        "1",
        "--override",
        "test disk without Windows",
    ]);
    s.ok(&["seat", "reset", "a"]);
    qemu_io_mismatch(&a, "read -P 0x77 0 64k");
    let versions = s.json(&["image", "versions", "img"]);
    assert_eq!(versions.as_array().expect("versions").len(), 2);
    // Version 2 is no longer used by anyone and can be deleted; version 1 cannot.
    let err = s.fails(&["image", "delete-version", "img", "1"]);
    assert!(err.contains("used by") || err.contains("current"), "{err}");
    s.ok(&["image", "delete-version", "img", "2"]);
    let kinds: Vec<String> = s
        .json(&["events", "--subject", "img"])
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    for k in [
        "image.import",
        "draft.open",
        "draft.publish",
        "image.rollback",
        "image.version.delete",
        "image.gate.check",
        "image.gate.override",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "missing audit event {k}: {kinds:?}"
        );
    }
}

#[test]
fn import_refuses_bad_files_with_clear_messages() {
    let s = Server::start();
    let odd = s.path("odd.img");
    std::fs::write(&odd, vec![7u8; 1000]).expect("write");
    let err = s.fails(&["image", "import", "x", odd.to_str().expect("path")]);
    assert!(err.contains("multiple of 512"), "{err}");
    let err = s.fails(&["image", "import", "x", "/nonexistent/disk.img"]);
    assert!(err.contains("cannot read"), "{err}");
    let err = s.fails(&["seat", "add", "b", "--mac", "zz", "--image", "x"]);
    assert!(err.contains("MAC"), "{err}");
    assert_eq!(s.json(&["image", "list"]), serde_json::json!([]));
}

#[test]
fn qcow2_imports_are_converted() {
    require("qemu-img");
    let s = Server::start();
    let raw = s.path("src.raw");
    make_image(&raw, 4 * MIB);
    let q = s.path("src.qcow2");
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().expect("path"),
        q.to_str().expect("path"),
    ]));
    s.ok(&["image", "import", "q", q.to_str().expect("path")]);
    s.ok(&[
        "seat",
        "add",
        "c",
        "--mac",
        "52:54:00:00:00:0c",
        "--image",
        "q",
    ]);
    run_ok(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        raw.to_str().expect("path"),
        &s.nbd_uri("seat/c"),
    ]));
}

#[test]
fn config_check_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listen:\n  nbd: 127.0.0.1:10809\n  nbdx: 1\n").expect("write");
    let out = Command::new(common::KHOI)
        .args(["config", "check", bad.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:3:3"), "{err}");
    assert!(err.contains("nbdx"), "{err}");
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/khoi.example.yaml"
    );
    let out = Command::new(common::KHOI)
        .args(["config", "check", example])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Attack 3 (e): `config check` refuses NBD on a LAN address without TLS,
/// naming the file, line and key; before the fix it printed "ok".
#[test]
fn config_check_refuses_nbd_on_the_network_without_tls() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("open.yaml");
    std::fs::write(&bad, "listen:\n  iscsi: null\n  nbd: 0.0.0.0:10809\n").expect("write");
    let out = Command::new(common::KHOI)
        .args(["config", "check", bad.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!out.status.success(), "accepted NBD on 0.0.0.0 without TLS");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open.yaml:3:1"), "{err}");
    assert!(err.contains("`nbd`") && err.contains("nbd_tls"), "{err}");
    // `khoi serve` refuses the same file before listening.
    let out = Command::new(common::KHOI)
        .args(["--config", bad.to_str().expect("path"), "serve"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nbd_tls"));
}

/// NBD over TCP with TLS on the real server: libnbd with the key reads the
/// seat through the metered export layer; without TLS or with a wrong key it
/// gets nothing.
#[test]
fn nbd_over_tcp_needs_the_pre_shared_key() {
    require("nbdinfo");
    require("nbdcopy");
    let keys = tempfile::tempdir().expect("tmp");
    let key = "3c".repeat(32);
    let psk = keys.path().join("nbd.psk");
    let wrong = keys.path().join("wrong.psk");
    std::fs::write(&psk, format!("maint:{key}\n")).expect("psk");
    std::fs::write(&wrong, format!("maint:{}\n", "3d".repeat(32))).expect("psk");
    for p in [&psk, &wrong] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
    }
    let (s, src) = server_with_seat(Options {
        nbd_psk: Some(psk.clone()),
        ..Options::default()
    });
    let copy = s.path("tls-copy.img");
    run_ok(Command::new("nbdcopy").args([
        &s.nbd_tls_uri("seat/a", "maint", &psk),
        copy.to_str().expect("path"),
    ]));
    assert!(
        std::fs::read(&copy).expect("copy") == std::fs::read(&src).expect("src"),
        "the seat read over TLS differs from the imported image"
    );
    let mode = std::fs::metadata(s.data.join("nbd.sock"))
        .expect("the NBD socket")
        .permissions();
    let mode = std::os::unix::fs::PermissionsExt::mode(&mode);
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // `seat show` points the admin at the owner-only socket, as a URI the
    // tools take as is.
    let show = s.ok(&["seat", "show", "a"]);
    assert!(show.contains(&s.nbd_uri("seat/a")), "{show}");
    let plain = format!("nbd://127.0.0.1:{}/seat/a", s.nbd_port);
    for uri in [plain, s.nbd_tls_uri("seat/a", "maint", &wrong)] {
        let out = Command::new("nbdinfo").arg(&uri).output().expect("run");
        assert!(!out.status.success(), "{uri} was served");
    }
}

/// `khoi image create`: an empty disk (version 0) reads as zeros over NBD,
/// its draft takes an installation and publishes as version 1; sizes with
/// units, and clear refusals of bad ones.
#[test]
fn image_create_gives_an_empty_disk_whose_draft_becomes_version_1() {
    require("qemu-io");
    let s = Server::start();
    for (size, want) in [
        ("0", "more than zero"),
        ("1000", "512-byte sectors"),
        ("64XB", "unknown size unit"),
        ("99999TiB", "largest image accepted"),
    ] {
        let err = s.fails(&["image", "create", "blank", "--size", size]);
        assert!(err.contains(want), "{size}: {err}");
    }
    let out = s.ok(&["image", "create", "blank", "--size", "64MiB"]);
    assert!(out.contains("64MiB") && out.contains("version 0"), "{out}");
    let err = s.fails(&["image", "create", "blank", "--size", "64MiB"]);
    assert!(err.contains("already exists"), "{err}");
    let v0 = s.nbd_uri("image/blank@0");
    qemu_io_ok(&v0, &["-r", "read -P 0 0 64M"]);
    s.ok(&["draft", "open", "blank"]);
    qemu_io_ok(&s.nbd_uri("draft/blank"), &["write -P 0x5a 1M 4M"]);
    // A blank disk is no Windows installation: the gate needs an override.
    s.ok(&[
        "draft",
        "publish",
        "blank",
        "--note",
        "installed",
        "--override",
        "test disk, not Windows",
    ]);
    let versions = s.json(&["image", "versions", "blank"]);
    let current: Vec<u64> = versions
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["current"] == true)
        .filter_map(|v| v["number"].as_u64())
        .collect();
    assert_eq!(current, vec![1], "{versions}");
    let v1 = s.nbd_uri("image/blank@1");
    qemu_io_ok(
        &v1,
        &[
            "-r",
            "read -P 0x5a 1M 4M",
            "read -P 0 0 1M",
            "read -P 0 5M 59M",
        ],
    );
}
