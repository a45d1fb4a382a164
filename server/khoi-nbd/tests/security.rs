//! Attack tests for NBD access control (issue 10, attack 3): who can reach
//! the disks. Each replays what an attacker on the machine or the LAN would
//! try against the server as it was (TCP, no access control) and checks it
//! is refused, and that the legitimate ways in still work with real libnbd.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{PSK_GOOD, PSK_WRONG, RawClient, have, run, start, start_tls, write_psk};
use khoi_nbd::wire::{InfoRequest, OptionCode, OptionRepr, ReplyType};
use tokio::io::AsyncReadExt;

fn go_data(export: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&u32::try_from(export.len()).expect("small").to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    let r = InfoRequest::parse(&d).expect("valid");
    let mut b = vec![0u8; r.buffer_len()];
    r.emit(&mut b);
    b
}

/// (b) A client that skips TLS gets `NBD_REP_ERR_TLS_REQD` for every option
/// that would list or open an export, and `EXPORT_NAME` closes the
/// connection without an export. Before the fix the same bytes listed and
/// opened every seat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_without_tls_can_neither_list_nor_open() {
    let srv = start_tls().await;
    let mut c = RawClient::connect_raw(srv.addr).await;
    c.option(OptionRepr::List).await;
    let r = c.option_replies().await;
    assert_eq!(r.len(), 1, "no export listed: {r:?}");
    assert_eq!(r[0].1, ReplyType::ErrTlsReqd);
    let go = go_data("seat/a");
    for code in [OptionCode::Go, OptionCode::Info] {
        c.option(OptionRepr::Other { code, data: &go }).await;
        let r = c.option_replies().await;
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].1, ReplyType::ErrTlsReqd);
    }
    c.option(OptionRepr::ExportName(b"seat/a")).await;
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.s.read(&mut b))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "EXPORT_NAME must close: {n:?}");

    if have("nbdinfo") {
        for args in [
            vec!["--list".to_string(), format!("nbd://{}", srv.addr)],
            vec![format!("nbd://{}/seat/a", srv.addr)],
        ] {
            let (ok, out, err) = run("nbdinfo", args.clone()).await;
            assert!(!ok, "{args:?} worked without TLS:\n{out}");
            assert!(!out.contains("seat/a"), "{out}");
            // libnbd reports ERR_TLS_REQD to a list as "not supported".
            let e = err.to_lowercase();
            assert!(e.contains("tls") || e.contains("not supported"), "{err}");
        }
    }
    srv.stop().await;
}

/// (c) The wrong key, or an identity the server does not know, fails the
/// TLS handshake: nothing is listed or opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_with_the_wrong_key_fails_the_handshake() {
    if !have("nbdinfo") {
        return;
    }
    let srv = start_tls().await;
    let wrong = write_psk(srv.dir.path(), "wrong.psk", "alice", PSK_WRONG);
    let stranger = write_psk(srv.dir.path(), "bob.psk", "bob", PSK_GOOD);
    for (user, psk) in [("alice", &wrong), ("bob", &stranger)] {
        for url in [srv.tls_url("seat/a", user, psk), srv.tls_url("", user, psk)] {
            let (ok, out, err) = run("nbdinfo", vec!["--list".into(), url.clone()]).await;
            assert!(!ok, "{url} worked:\n{out}");
            assert!(!out.contains("seat/a"), "{out}");
            assert!(err.to_lowercase().contains("tls"), "{url}: {err}");
        }
    }
    srv.stop().await;
}

/// (d) The right key works end to end with real libnbd: listing, details,
/// and a copy into a seat and back out (replies pass through TLS, including
/// the file-backed golden export that plain sockets get with sendfile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_key_works_with_libnbd() {
    if !have("nbdinfo") || !have("nbdcopy") {
        return;
    }
    let srv = start_tls().await;
    let psk = write_psk(srv.dir.path(), "alice.psk", "alice", PSK_GOOD);
    let (ok, out, err) = run(
        "nbdinfo",
        vec!["--list".into(), srv.tls_url("", "alice", &psk)],
    )
    .await;
    assert!(ok, "nbdinfo --list over TLS failed: {err}");
    assert!(out.contains("seat/a") && out.contains("golden"), "{out}");
    let (ok, out, err) = run(
        "nbdinfo",
        vec!["--json".into(), srv.tls_url("seat/a", "alice", &psk)],
    )
    .await;
    assert!(ok, "nbdinfo over TLS failed: {err}");
    assert!(out.contains("\"export-size\": 8388608"), "{out}");

    let golden_out = srv.dir.path().join("golden.out");
    let (ok, _, err) = run(
        "nbdcopy",
        vec![
            srv.tls_url("golden", "alice", &psk),
            golden_out.display().to_string(),
        ],
    )
    .await;
    assert!(ok, "nbdcopy golden out failed: {err}");
    assert!(std::fs::read(&golden_out).expect("read") == srv.golden);

    let src = srv.dir.path().join("src.img");
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 253) as u8).collect();
    std::fs::write(&src, &data).expect("write src");
    let back = srv.dir.path().join("back.img");
    for (from, to) in [
        (
            src.display().to_string(),
            srv.tls_url("seat/a", "alice", &psk),
        ),
        (
            srv.tls_url("seat/a", "alice", &psk),
            back.display().to_string(),
        ),
    ] {
        let (ok, _, err) = run("nbdcopy", vec![from, to]).await;
        assert!(ok, "nbdcopy over TLS failed: {err}");
    }
    assert!(std::fs::read(&back).expect("read back") == data);
    srv.stop().await;
}

/// (a) Another local user cannot connect to the unix socket, even with the
/// folder around it open to them: the socket itself is 0600. Before the fix
/// any local user reached every disk over 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_cannot_connect_to_the_unix_socket() {
    let srv = start().await;
    let mode = std::fs::metadata(&srv.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("setpriv") || !have("nbdinfo") {
        eprintln!("SKIP: needs root, setpriv and nbdinfo to act as another user");
        srv.stop().await;
        return;
    }
    // Let `nobody` reach the socket file, so only its own mode stands in
    // the way.
    std::fs::set_permissions(srv.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let list = format!("nbd+unix:///?socket={}", srv.socket.display());
    let (ok, out, err) = run(
        "setpriv",
        vec![
            "--reuid=65534".into(),
            "--regid=65534".into(),
            "--clear-groups".into(),
            "nbdinfo".into(),
            "--list".into(),
            list.clone(),
        ],
    )
    .await;
    assert!(!ok, "nobody listed the exports:\n{out}");
    assert!(err.contains("Permission denied"), "{err}");
    // The owner still gets in.
    let (ok, out, err) = run("nbdinfo", vec!["--list".into(), list]).await;
    assert!(ok && out.contains("seat/a"), "owner: {err}");
    srv.stop().await;
}

/// qemu's NBD client with `tls-creds-psk` (its own key folder layout) also
/// gets in with the right key, writes and reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_with_tls_creds_psk_reads_and_writes() {
    if !have("qemu-io") {
        return;
    }
    let srv = start_tls().await;
    // qemu reads `keys.psk` from the folder it is given.
    let creds = srv.dir.path().join("qemu-creds");
    std::fs::create_dir(&creds).expect("mkdir");
    write_psk(&creds, "keys.psk", "alice", PSK_GOOD);
    let image = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=seat/a,tls-creds=tls0",
        srv.addr.port()
    );
    let object = format!(
        "tls-creds-psk,id=tls0,endpoint=client,username=alice,dir={}",
        creds.display()
    );
    let (ok, out, err) = run(
        "qemu-io",
        vec![
            "--object".into(),
            object,
            "--image-opts".into(),
            image,
            "-c".into(),
            "write -P 0x5a 64k 64k".into(),
            "-c".into(),
            "read -P 0x5a 64k 64k".into(),
            "-c".into(),
            "read -P 0 0 64k".into(),
        ],
    )
    .await;
    assert!(
        ok && !out.contains("Pattern verification failed") && !err.contains("failed"),
        "qemu-io over TLS:\n{out}\n{err}"
    );
    srv.stop().await;
}
