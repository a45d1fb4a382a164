//! Interoperability with real NBD clients (libnbd 1.14 tools, qemu 7.2).
//! Each test prints SKIP and passes when its tool is missing.

mod common;

/// Where Debian's python3 (with the libnbd bindings) lives.
const SYS_PATH: Option<&str> = Some("/usr/bin:/bin");

use common::{have, run, run_with_path, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_list_and_details() {
    if !have("nbdinfo") {
        return;
    }
    let srv = start().await;
    let (ok, out, err) = run(
        "nbdinfo",
        vec![
            "--list".into(),
            format!("nbd+unix:///?socket={}", srv.socket.display()),
        ],
    )
    .await;
    assert!(ok, "nbdinfo --list failed: {err}");
    for name in [
        "seat/a",
        "golden",
        "seat/ro",
        "Seat A overlay",
        "Golden image v1",
    ] {
        assert!(out.contains(name), "missing {name} in:\n{out}");
    }

    let (ok, out, err) = run("nbdinfo", vec!["--json".into(), srv.url("seat/a")]).await;
    assert!(ok, "nbdinfo failed: {err}");
    assert!(out.contains("\"export-size\": 8388608"), "{out}");
    assert!(out.contains("\"can_flush\": true"), "{out}");
    assert!(out.contains("\"can_multi_conn\": true"), "{out}");
    assert!(out.contains("\"can_zero\": true"), "{out}");
    assert!(out.contains("\"can_fast_zero\": true"), "{out}");
    assert!(out.contains("base:allocation"), "{out}");
    assert!(out.contains("\"block_size_maximum\": 33554432"), "{out}");

    let (ok, out, err) = run("nbdinfo", vec!["--json".into(), srv.url("golden")]).await;
    assert!(ok, "nbdinfo failed: {err}");
    assert!(out.contains("\"is_read_only\": true"), "{out}");

    let (ok, _, err) = run("nbdinfo", vec![srv.url("no/such/export")]).await;
    assert!(!ok);
    assert!(err.contains("no/such/export"), "{err}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_write_read_and_nbdinfo_map() {
    if !have("qemu-io") {
        return;
    }
    let srv = start().await;
    let url = srv.url("seat/a");
    let (ok, out, err) = run(
        "qemu-io",
        vec![
            "-f".into(),
            "raw".into(),
            "-c".into(),
            "write -P 0xab 0 64k".into(),
            "-c".into(),
            "read -P 0xab 0 64k".into(),
            "-c".into(),
            "write -z -u 64k 64k".into(),
            "-c".into(),
            "read -P 0 64k 64k".into(),
            "-c".into(),
            "write -f -P 0xcd 1m 4k".into(),
            "-c".into(),
            "read -P 0xcd 1m 4k".into(),
            "-c".into(),
            "flush".into(),
            url.clone(),
        ],
    )
    .await;
    assert!(ok, "qemu-io failed:\n{out}\n{err}");
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");

    // The data outlives the connection that wrote it.
    let (_, out, err) = run(
        "qemu-io",
        vec![
            "-f".into(),
            "raw".into(),
            "-c".into(),
            "read -P 0xab 0 64k".into(),
            url.clone(),
        ],
    )
    .await;
    assert!(!out.contains("Pattern verification failed"), "{out}{err}");

    if have("nbdinfo") {
        let (ok, out, err) = run("nbdinfo", vec!["--map".into(), url.clone()]).await;
        assert!(ok, "nbdinfo --map failed: {err}");
        // First 64k written, then a zeroed hole, ... up to the 1 MiB write.
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][..3], ["0", "65536", "0"], "{out}");
        assert_eq!(lines[1][..3], ["65536", "983040", "3"], "{out}");
        assert_eq!(lines[2][..3], ["1048576", "4096", "0"], "{out}");
        assert!(out.contains("hole,zero"), "{out}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_golden_with_qemu_img_and_nbdcopy() {
    let srv = start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    if have("qemu-img") {
        let out_path = dir.path().join("qemu.img");
        let (ok, out, err) = run(
            "qemu-img",
            vec![
                "convert".into(),
                "-f".into(),
                "raw".into(),
                "-O".into(),
                "raw".into(),
                srv.url("golden"),
                out_path.display().to_string(),
            ],
        )
        .await;
        assert!(ok, "qemu-img convert failed:\n{out}\n{err}");
        assert!(std::fs::read(&out_path).expect("copy") == srv.golden);
    }
    if have("nbdcopy") {
        let out_path = dir.path().join("nbdcopy.img");
        let (ok, out, err) = run(
            "nbdcopy",
            vec![
                "--connections=4".into(),
                "--requests=16".into(),
                srv.url("golden"),
                out_path.display().to_string(),
            ],
        )
        .await;
        assert!(ok, "nbdcopy failed:\n{out}\n{err}");
        assert!(std::fs::read(&out_path).expect("copy") == srv.golden);

        // Copy golden into the RAM disk over NBD and read it back.
        let (ok, out, err) = run(
            "nbdcopy",
            vec![
                "--synchronous".into(),
                out_path.display().to_string(),
                srv.url("seat/a"),
            ],
        )
        .await;
        assert!(ok, "nbdcopy to nbd failed:\n{out}\n{err}");
        let back = dir.path().join("back.img");
        let (ok, _, err) = run(
            "nbdcopy",
            vec![srv.url("seat/a"), back.display().to_string()],
        )
        .await;
        assert!(ok, "nbdcopy back failed: {err}");
        let back = std::fs::read(&back).expect("back");
        assert!(back[..srv.golden.len()] == srv.golden[..]);
        assert!(back[srv.golden.len()..].iter().all(|&b| b == 0));
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdsh_errors_keep_the_connection() {
    if !have("nbdsh") {
        return;
    }
    let (works, _, err) = run_with_path("nbdsh", vec!["-c".into(), "pass".into()], SYS_PATH).await;
    if !works {
        eprintln!("SKIP: nbdsh is installed but does not start: {err}");
        return;
    }
    let srv = start().await;
    // strict_mode 0 lets libnbd send requests it would otherwise refuse
    // client-side, so the server's own checks are what is tested. libnbd's
    // nbd.Error.errno is the symbolic name ("EINVAL"), not the number.
    let script = format!(
        r#"
h.set_strict_mode(0)
h.connect_uri("{uri}")
size = h.get_size()
for off, n, want in [(size - 512, 1024, "EINVAL"), (0, 33 * 1024 * 1024, "EINVAL")]:
    try:
        h.pread(n, off)
        raise SystemExit("out-of-range read succeeded")
    except nbd.Error as e:
        assert e.errno == want, e
try:
    h.pwrite(b"x" * 512, size)
    raise SystemExit("write past the end succeeded")
except nbd.Error as e:
    assert e.errno == "ENOSPC", e
h.pwrite(b"\xab" * 4096, 0)
assert h.pread(4096, 0) == b"\xab" * 4096
h.zero(4096, 0)
assert h.pread(4096, 0) == bytes(4096)
h.shutdown()
print("nbdsh ok")
"#,
        uri = srv.url("seat/a")
    );
    let (ok, out, err) = run_with_path("nbdsh", vec!["-c".into(), script], SYS_PATH).await;
    assert!(
        ok && out.contains("nbdsh ok"),
        "nbdsh failed:\n{out}\n{err}"
    );
    srv.stop().await;
}
