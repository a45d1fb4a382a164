#![allow(clippy::unwrap_used)]
//! End-to-end tests: the target on 127.0.0.1:0 against libiscsi's tools,
//! qemu-io, and a small raw-PDU initiator for what the tools can't do.
//! Tests needing an external tool print a note and pass when it's missing.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use khoi_iscsi::frame::{self, Digests};
use khoi_iscsi::pdu::{
    Bhs, DataIn, LoginRequest, LoginResponse, NopIn, NopOut, Opcode, Pdu, R2t, RESERVED_TAG,
    ScsiCommand, ScsiResponse, Stage,
};
use khoi_iscsi::{IscsiConfig, IscsiEvent, text};
use support::*;
use tokio_util::sync::CancellationToken;

struct Server {
    addr: SocketAddr,
    resolver: Arc<TestResolver>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start() -> Server {
    start_with(|_| {})
}

fn start_with(tune: impl FnOnce(&mut IscsiConfig)) -> Server {
    start_on("127.0.0.1:0", tune)
}

fn start_on(bind: &str, tune: impl FnOnce(&mut IscsiConfig)) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let resolver = Arc::new(TestResolver::new(dir.path(), 64 << 20));
    let std_listener = std::net::TcpListener::bind(bind).expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let (r, s) = (resolver.clone(), shutdown.clone());
    let mut config = IscsiConfig::new(addr.to_string());
    tune(&mut config);
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            khoi_iscsi::serve(listener, r, config, s).await;
        });
    });
    Server {
        addr,
        resolver,
        shutdown,
        thread: Some(thread),
        _dir: dir,
    }
}

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("note: {tool} not installed; skipping this check");
    }
    ok
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("spawn tool");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

fn url(srv: &Server, creds: Option<(&str, &str)>, target: &str) -> String {
    let c = creds.map(|(u, p)| format!("{u}%{p}@")).unwrap_or_default();
    format!("iscsi://{c}{}/{target}/0", srv.addr)
}

#[test]
fn inquiry_and_discovery() {
    if !have("iscsi-inq") || !have("iscsi-ls") {
        return;
    }
    let srv = start();
    let (ok, out) = run(Command::new("iscsi-inq").arg(url(&srv, None, OPEN)));
    assert!(ok, "{out}");
    assert!(out.contains("Vendor:KHOI"), "{out}");
    let (ok, out) = run(Command::new("iscsi-inq")
        .args(["-e", "1", "-c", "0x83"])
        .arg(url(&srv, None, OPEN)));
    assert!(ok, "{out}");

    // Discovery without credentials sees only targets needing none.
    let (ok, out) = run(Command::new("iscsi-ls").arg(format!("iscsi://{}", srv.addr)));
    assert!(ok, "{out}");
    assert!(out.contains(OPEN), "{out}");
    assert!(
        !out.contains(CHAP) && !out.contains(MUTUAL) && !out.contains(BOUND),
        "{out}"
    );
    assert!(out.contains(&format!("Portal:{},1", srv.addr)), "{out}");
    // With seat01's credentials its own target appears too, nobody else's.
    let (ok, out) = run(
        Command::new("iscsi-ls").arg(format!("iscsi://{CHAP_USER}%{CHAP_SECRET}@{}", srv.addr))
    );
    assert!(ok, "{out}");
    assert!(out.contains(OPEN) && out.contains(CHAP), "{out}");
    assert!(!out.contains(MUTUAL) && !out.contains(BOUND), "{out}");
}

/// The reference's must-pass set: zero failures; skips are listed.
#[test]
fn libiscsi_must_pass_set() {
    if !have("iscsi-test-cu") {
        return;
    }
    let srv = start();
    let set = "SCSI.TestUnitReady.*,SCSI.Inquiry.*,SCSI.ReadCapacity10.*,SCSI.ReadCapacity16.*,SCSI.Read6.*,SCSI.Read10.*,SCSI.Read12.*,SCSI.Read16.*,SCSI.Write10.*,SCSI.Write12.*,SCSI.Write16.*,SCSI.WriteVerify10.*,SCSI.WriteVerify16.*,SCSI.Verify10.*,SCSI.Verify16.*,SCSI.ModeSense6.*,SCSI.Mandatory.*,SCSI.NoMedia.*,SCSI.StartStopUnit.*,SCSI.ReportSupportedOpcodes.*,SCSI.Prefetch10.*,SCSI.Prefetch16.*,iSCSI.*";
    let (ok, out) = run(Command::new("iscsi-test-cu")
        .args(["-d", "-t", set])
        .arg(url(&srv, None, OPEN)));
    report_cu(&out);
    assert!(ok, "iscsi-test-cu failed:\n{out}");
    let (total, failed) = cu_counts(&out);
    assert_eq!(failed, 0, "{out}");
    assert!(total >= 100, "{out}");
}

/// (tests run, tests failed) from the CUnit run summary.
fn cu_counts(out: &str) -> (u32, u32) {
    let summary = out
        .lines()
        .find(|l| l.trim_start().starts_with("tests"))
        .unwrap_or("");
    let nums: Vec<u32> = summary
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (
        nums.first().copied().unwrap_or(0),
        nums.get(3).copied().unwrap_or(u32::MAX),
    )
}

/// Print which tests reported [SKIPPED] (libiscsi counts them as passed).
fn report_cu(out: &str) {
    let mut test = "";
    let mut skipped = std::collections::BTreeSet::new();
    for line in out.lines() {
        if let Some(i) = line.find("Test: ") {
            test = line[i + 6..].split(" ...").next().unwrap_or("");
        }
        if line.contains("[SKIPPED]") && !line.contains("PERSISTENT RESERVE IN") {
            let why = line.split("[SKIPPED]").nth(1).unwrap_or("").trim();
            skipped.insert(format!("{test}: {why}"));
        }
    }
    for s in &skipped {
        eprintln!("skipped: {s}");
    }
    if let Some(l) = out.lines().find(|l| l.trim_start().starts_with("tests")) {
        eprintln!("{l}");
    }
}

/// Every SCSI suite libiscsi has, on a writable LU: what we do not implement
/// (reservations, EXTENDED COPY, SANITIZE, ...) must be refused the way the
/// tests accept, and nothing may fail. The suites are named one by one:
/// with the pattern `SCSI.*` libiscsi 1.19 puts CDBs on the wire whose LBA
/// and transfer length disagree with the transfer length it declares
/// (READ16 of LBA 0, one block, for an expected 1 KiB, seen in a capture),
/// and then fails 18 of its own 16-byte-CDB tests; the same 215 tests
/// listed by suite pass.
#[test]
fn libiscsi_every_scsi_suite() {
    if !have("iscsi-test-cu") {
        return;
    }
    let (ok, list) = run(Command::new("iscsi-test-cu").arg("-l"));
    assert!(ok, "{list}");
    let suites: Vec<String> = list
        .lines()
        .filter(|l| l.starts_with("SCSI.") && l.matches('.').count() == 1)
        .map(|l| format!("{}.*", l.trim()))
        .collect();
    assert!(suites.len() >= 40, "{list}");
    let srv = start();
    let (ok, out) = run(Command::new("iscsi-test-cu")
        .args(["-d", "-t", &suites.join(",")])
        .arg(url(&srv, None, OPEN)));
    report_cu(&out);
    assert!(ok, "{out}");
    let (total, failed) = cu_counts(&out);
    assert_eq!(failed, 0, "{out}");
    assert!(total >= 200, "{out}");
}

/// Suites that must pass because the LU advertises them (thin
/// provisioning: UNMAP, WRITE SAME), plus the 12-byte variants and a
/// read-only LU.
#[test]
fn libiscsi_conditional_suites() {
    if !have("iscsi-test-cu") {
        return;
    }
    let srv = start();
    let set = "SCSI.Unmap.*,SCSI.WriteSame10.*,SCSI.WriteSame16.*,SCSI.GetLBAStatus.*,SCSI.Verify12.*,SCSI.WriteVerify12.*";
    let (ok, out) = run(Command::new("iscsi-test-cu")
        .args(["-d", "-t", set])
        .arg(url(&srv, None, OPEN)));
    report_cu(&out);
    assert!(ok, "{out}");
    let (total, failed) = cu_counts(&out);
    assert_eq!(failed, 0, "{out}");
    assert!(total >= 30, "{out}");
    let (ok, out) = run(Command::new("iscsi-test-cu")
        .args(["-d", "-t", "SCSI.ReadOnly.*,SCSI.ModeSense6.*"])
        .arg(url(&srv, None, READONLY)));
    report_cu(&out);
    assert!(ok, "{out}");
    assert_eq!(cu_counts(&out).1, 0, "{out}");
}

#[test]
fn iscsi_family_with_chap() {
    if !have("iscsi-test-cu") {
        return;
    }
    let srv = start();
    let (ok, out) = run(Command::new("iscsi-test-cu")
        .args(["-d", "-t", "iSCSI.*"])
        .arg(url(&srv, Some((CHAP_USER, CHAP_SECRET)), CHAP)));
    report_cu(&out);
    assert!(ok, "{out}");
    let (total, failed) = cu_counts(&out);
    assert_eq!(failed, 0, "{out}");
    assert!(total > 0, "{out}");
}

#[test]
fn qemu_io_patterns() {
    if !have("qemu-io") {
        return;
    }
    let srv = start();
    let (ok, out) = run(Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(["-c", "write -P 0x5a 0 1M"])
        .args(["-c", "write -P 0xa5 3M 768k"])
        .args(["-c", "read -P 0x5a 0 1M"])
        .args(["-c", "read -P 0xa5 3M 768k"])
        .args(["-c", "read -P 0 8M 64k"])
        .args(["-c", "flush"])
        .arg(url(&srv, None, OPEN)));
    if out.contains("Unknown protocol") || out.contains("Unknown driver") {
        eprintln!("note: qemu-io lacks the iscsi driver (qemu-block-extra): {out}");
        return;
    }
    assert!(ok, "{out}");
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(out.matches("read ").count(), 3, "{out}");
}

/// Mutual CHAP: libiscsi verifies our CHAP_R against the target secret.
#[test]
fn mutual_chap_with_libiscsi() {
    if !have("iscsi-inq") {
        return;
    }
    let srv = start();
    let base = url(&srv, Some((MUTUAL_USER, MUTUAL_SECRET)), MUTUAL);
    let (ok, out) = run(Command::new("iscsi-inq").arg(format!(
        "{base}?target_user={TARGET_USER}&target_password={TARGET_SECRET}"
    )));
    assert!(ok, "{out}");
    // With the wrong target secret the initiator must refuse our answer.
    let (ok, out) = run(Command::new("iscsi-inq").arg(format!(
        "{base}?target_user={TARGET_USER}&target_password=not-the-target-secret"
    )));
    assert!(!ok, "{out}");
}

#[test]
fn login_rejections() {
    if !have("iscsi-inq") {
        return;
    }
    let srv = start();
    let (ok, _) =
        run(Command::new("iscsi-inq").arg(url(&srv, Some((CHAP_USER, "wrong-secret-999")), CHAP)));
    assert!(!ok);
    // seat01's valid credentials presented to another CHAP target.
    let (ok, _) =
        run(Command::new("iscsi-inq").arg(url(&srv, Some((CHAP_USER, CHAP_SECRET)), MUTUAL)));
    assert!(!ok);
    let (ok, _) = run(Command::new("iscsi-inq").arg(url(&srv, None, "iqn.2025-01.vn.khoi:nope")));
    assert!(!ok);
    let (ok, _) = run(Command::new("iscsi-inq").arg(url(&srv, None, BOUND)));
    assert!(!ok);
    let f = srv.resolver.login_failures();
    // Issue 10: one status for every refusal, so a wrong secret, another
    // seat's secret, a made-up target and a bound initiator look alike
    // (before: 0x0201, 0x0202, 0x0203, 0x0202 told them apart).
    assert_eq!(f, vec![0x0201; 4], "{f:x?}");
}

// ---------------------------------------------------------------------------
// A raw initiator for session-level behaviour.

struct Client {
    s: TcpStream,
    buf: BytesMut,
    cmd_sn: u32,
    itt: u32,
    digests: Digests,
}

fn login(addr: SocketAddr, target: &str, isid: [u8; 6]) -> Client {
    login_with(addr, target, isid, false)
}

fn login_with(addr: SocketAddr, target: &str, isid: [u8; 6], crc: bool) -> Client {
    login_as(addr, "iqn.2025-01.test:raw", target, isid, crc)
}

fn login_as(addr: SocketAddr, initiator: &str, target: &str, isid: [u8; 6], crc: bool) -> Client {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut c = Client {
        s,
        buf: BytesMut::new(),
        cmd_sn: 1,
        itt: 0x100,
        digests: Digests::default(),
    };
    let digest = if crc { "CRC32C,None" } else { "None" };
    let keys = text::emit(&[
        ("HeaderDigest", digest),
        ("DataDigest", digest),
        ("InitiatorName", initiator),
        ("TargetName", target),
        ("SessionType", "Normal"),
        ("AuthMethod", "None"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxRecvDataSegmentLength", "65536"),
    ]);
    let h = LoginRequest {
        transit: true,
        cont: false,
        csg: Stage::Security,
        nsg: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid,
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    }
    .emit();
    c.send(Pdu::new(h, Bytes::from(keys)));
    let r = c.recv().expect("login response");
    let lr = LoginResponse::parse(&r.view()).expect("login response parses");
    assert_eq!((lr.status_class, lr.status_detail), (0, 0));
    assert!(lr.transit && lr.nsg == Stage::FullFeature);
    assert_ne!(lr.tsih, 0);
    c.digests = Digests {
        header: crc,
        data: crc,
    };
    c
}

impl Client {
    fn send(&mut self, p: Pdu) {
        self.s
            .write_all(&frame::encode(&p, self.digests))
            .expect("send");
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send");
    }

    /// The next PDU, or None on EOF/error.
    fn recv(&mut self) -> Option<Pdu> {
        loop {
            match frame::decode(&mut self.buf, self.digests, 1 << 20) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(_) => return None,
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Run one command; returns (status, sense bytes, Data-In bytes).
    fn command(&mut self, cdb: &[u8], edtl: u32, write: Option<&[u8]>) -> (u8, Vec<u8>, Vec<u8>) {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        self.itt += 1;
        let itt = self.itt;
        let h = ScsiCommand {
            immediate: false,
            fin: true,
            read: write.is_none() && edtl > 0,
            write: write.is_some(),
            attr: 1,
            lun: 0,
            itt,
            edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            cdb: c,
        }
        .emit();
        self.cmd_sn += 1;
        let imm = write.map(Bytes::copy_from_slice).unwrap_or_default();
        self.send(Pdu::new(h, imm));
        let mut data = Vec::new();
        loop {
            let p = self.recv().expect("response");
            match p.opcode() {
                Opcode::DataIn => {
                    let d = DataIn::parse(&p.view()).expect("data-in");
                    data.extend_from_slice(&p.data);
                    if let Some(st) = d.status {
                        return (st, Vec::new(), data);
                    }
                }
                Opcode::ScsiResponse => {
                    let r = ScsiResponse::parse(&p.view()).expect("response");
                    let sense = p.data.get(2..).map(<[u8]>::to_vec).unwrap_or_default();
                    return (r.status, sense, data);
                }
                Opcode::R2t => {
                    let r = R2t::parse(&p.view()).expect("r2t");
                    panic!("unexpected R2T {r:?}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn nop(&mut self) -> bool {
        self.itt += 1;
        let h = NopOut {
            immediate: true,
            lun: 0,
            itt: self.itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
        }
        .emit();
        self.send(Pdu::new(h, Bytes::from_static(b"ping")));
        match self.recv() {
            Some(p) if p.opcode() == Opcode::NopIn => {
                let n = NopIn::parse(&p.view()).expect("nop-in");
                n.itt == self.itt && &p.data[..] == b"ping"
            }
            _ => false,
        }
    }
}

const TUR: [u8; 6] = [0; 6];

#[test]
fn two_sessions_malformed_pdu_and_reinstatement() {
    let srv = start();
    // Two hosts: sessions of one initiator to one target replace each
    // other (see same_seat_new_session_fences_old).
    let mut a = login(srv.addr, OPEN, [0x40, 0, 0, 0, 0, 1]);
    let mut b = login_as(
        srv.addr,
        "iqn.2025-01.test:raw-b",
        OPEN,
        [0x40, 0, 0, 0, 0, 2],
        false,
    );
    // Each new session's first command sees POWER ON OCCURRED, then GOOD.
    for c in [&mut a, &mut b] {
        let (st, sense, _) = c.command(&TUR, 0, None);
        assert_eq!(st, 2);
        assert_eq!((sense[2], sense[12]), (0x06, 0x29));
        assert_eq!(c.command(&TUR, 0, None).0, 0);
    }
    // A write on one session is visible on the other (one shared LU).
    let block = [0x77u8; 512];
    let (st, _, _) = a.command(&[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0], 512, Some(&block));
    assert_eq!(st, 0);
    let (st, _, data) = b.command(&[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], 512, None);
    assert_eq!(st, 0);
    assert_eq!(data, block.to_vec());

    // A malformed PDU (data segment far beyond what we declared) closes only
    // its own connection.
    let mut c = login_as(
        srv.addr,
        "iqn.2025-01.test:raw-c",
        OPEN,
        [0x40, 0, 0, 0, 0, 3],
        false,
    );
    let mut bad = [0u8; 48];
    bad[0] = 0x01;
    Bhs::new_unchecked(&mut bad[..]).set_data_segment_len(0x00ff_ffff);
    c.send_raw(&bad);
    assert!(c.recv().is_none(), "connection with the bad PDU must close");
    assert!(a.nop() && b.nop());

    // Unknown opcode: rejected, connection stays.
    let mut odd = [0u8; 48];
    odd[0] = 0x1c;
    a.send_raw(&odd);
    let r = a.recv().expect("reject");
    assert_eq!(r.opcode(), Opcode::Reject);
    assert!(a.nop());

    // Same initiator + ISID with TSIH 0 reinstates: the old connection dies.
    let mut a2 = login(srv.addr, OPEN, [0x40, 0, 0, 0, 0, 1]);
    assert!(
        a.recv().is_none(),
        "reinstated session's connection must close"
    );
    assert!(a2.nop() && b.nop());
}

#[test]
fn crc32c_digests_end_to_end() {
    let srv = start();
    let mut c = login_with(srv.addr, OPEN, [0x40, 0, 0, 0, 0, 7], true);
    let _ = c.command(&TUR, 0, None);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let (st, _, _) = c.command(&[0x2a, 0, 0, 0, 0, 16, 0, 0, 8, 0], 4096, Some(&data));
    assert_eq!(st, 0);
    // Read back through the file: a small read is copied into the writer's
    // batch, and its data digest computed over the copy.
    let (st, _, back) = c.command(&[0x28, 0, 0, 0, 0, 16, 0, 0, 8, 0], 4096, None);
    assert_eq!(st, 0);
    assert_eq!(back, data);
    // A large read takes the other path (Data-In segments read from the
    // device's file, then digested); 128 KiB from LBA 0 covers the block
    // written above.
    let (st, _, big) = c.command(&[0x28, 0, 0, 0, 0, 0, 0, 1, 0, 0], 128 << 10, None);
    assert_eq!(st, 0);
    assert_eq!(big.len(), 128 << 10);
    assert_eq!(&big[16 * 512..16 * 512 + 4096], &data[..]);
    assert!(c.nop());
}

#[test]
fn full_overlay_is_data_protect_27_07() {
    let srv = start();
    let mut c = login(srv.addr, FULL, [0x40, 0, 0, 0, 0, 9]);
    let _ = c.command(&TUR, 0, None);
    let (st, sense, _) = c.command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, Some(&[1u8; 512]));
    assert_eq!(st, 2);
    assert_eq!((sense[2], sense[12], sense[13]), (0x07, 0x27, 0x07));
    // The connection survives and the event was recorded.
    assert!(c.nop());
    let events = srv.resolver.events.lock();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, IscsiEvent::SpaceAllocationFailed { .. }))
    );
}

/// A 16-bit boot sector that writes "KHOI-BOOT-OK" to COM1 and halts.
fn boot_sector() -> [u8; 512] {
    let code: &[u8] = &[
        0x31, 0xc0, // xor ax, ax
        0x8e, 0xd8, // mov ds, ax
        0xfc, // cld
        0xbe, 0x17, 0x7c, // mov si, 0x7c17 (the message)
        0xac, // lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x06, // jz halt
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0xeb, 0xf5, // jmp lodsb
        0xfa, 0xf4, 0xeb, 0xfc, // halt: cli; hlt; jmp halt
    ];
    let mut s = [0u8; 512];
    s[..code.len()].copy_from_slice(code);
    let msg = b"KHOI-BOOT-OK\r\n\0";
    s[code.len()..code.len() + msg.len()].copy_from_slice(msg);
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// Boot iPXE under QEMU/TCG with `script` and wait for the boot sector's
/// serial output. Returns None when QEMU or the iPXE image is missing.
fn ipxe_boots(script_body: &str) -> Option<(bool, String)> {
    ipxe_boots_then(script_body, || {})
}

/// Boot iPXE; `after_boot` runs while the booted machine is still up.
fn ipxe_boots_then(script_body: &str, after_boot: impl FnOnce()) -> Option<(bool, String)> {
    let lkrn = "/usr/lib/ipxe/ipxe.lkrn";
    if !have("qemu-system-x86_64") || !std::path::Path::new(lkrn).exists() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("boot.ipxe");
    std::fs::write(&script, format!("#!ipxe\n{script_body}")).unwrap();
    let serial = dir.path().join("serial.txt");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-nographic",
            "-m",
            "128",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-kernel", lkrn, "-initrd"])
        .arg(&script)
        .args(["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut booted = false;
    while std::time::Instant::now() < deadline {
        let out = std::fs::read(&serial).unwrap_or_default();
        if out.windows(12).any(|w| w == b"KHOI-BOOT-OK") {
            booted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if booted {
        after_boot();
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let out = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    Some((booted, out))
}

fn ipxe_logged_in(srv: &Server) -> bool {
    srv.resolver.events.lock().iter().any(|e| {
        matches!(e, IscsiEvent::LoggedIn { initiator, .. } if initiator.starts_with("iqn.2010-04.org.ipxe"))
    })
}

/// iPXE itself (the real client: MRDSL 8192, InitialR2T=Yes,
/// ImmediateData=No, a unit attention on its first TUR) sanboots from the
/// target and runs the boot sector we wrote.
#[test]
fn ipxe_sanboot() {
    let srv = start();
    let mut c = login(srv.addr, OPEN, [0x40, 0, 0, 0, 0, 0x20]);
    let _ = c.command(&TUR, 0, None);
    let (st, _, _) = c.command(
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        512,
        Some(&boot_sector()),
    );
    assert_eq!(st, 0);
    // QEMU user networking maps 10.0.2.2 to the host's loopback.
    let script = format!(
        "dhcp\nsanboot iscsi:10.0.2.2::{}::{OPEN}\n",
        srv.addr.port()
    );
    let Some((booted, out)) = ipxe_boots(&script) else {
        return;
    };
    assert!(booted, "iPXE did not boot from the target:\n{out}");
    assert!(ipxe_logged_in(&srv), "no iPXE login recorded");
}

/// iPXE with CHAP and reverse (mutual) CHAP, as the iBFT later hands to
/// Windows.
#[test]
fn ipxe_sanboot_mutual_chap() {
    use khoi_iscsi::TargetResolver as _;
    let srv = start();
    let dev = srv.resolver.open_lun0(MUTUAL).unwrap();
    dev.write_at(&boot_sector(), 0, khoi_block::WriteFlags::NONE)
        .unwrap();
    let script = format!(
        "dhcp\nset username {MUTUAL_USER}\nset password {MUTUAL_SECRET}\n\
         set reverse-username {TARGET_USER}\nset reverse-password {TARGET_SECRET}\n\
         sanboot iscsi:10.0.2.2::{}::{MUTUAL}\n",
        srv.addr.port()
    );
    let Some((booted, out)) = ipxe_boots(&script) else {
        return;
    };
    assert!(booted, "iPXE did not boot with mutual CHAP:\n{out}");
    assert!(ipxe_logged_in(&srv));
    assert!(srv.resolver.login_failures().is_empty());
}

#[test]
fn command_before_login_is_initiator_error() {
    let srv = start();
    let s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Client {
        s,
        buf: BytesMut::new(),
        cmd_sn: 1,
        itt: 5,
        digests: Digests::default(),
    };
    let h = ScsiCommand {
        immediate: false,
        fin: true,
        read: false,
        write: false,
        attr: 1,
        lun: 0,
        itt: 5,
        edtl: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        cdb: [0; 16],
    }
    .emit();
    c.send(Pdu::new(h, Bytes::new()));
    let r = c.recv().expect("login response");
    let lr = LoginResponse::parse(&r.view()).unwrap();
    assert_eq!((lr.status_class, lr.status_detail, lr.itt), (2, 0, 5));
    assert!(c.recv().is_none());
}

impl Client {
    /// Send a command without waiting: `data` goes as immediate data, and
    /// the write may ask for more (EDTL beyond it) that never comes.
    fn start_cmd(&mut self, cdb: &[u8], edtl: u32, write: bool, data: &[u8]) -> u32 {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        self.itt += 1;
        let h = ScsiCommand {
            immediate: false,
            fin: true,
            read: !write && edtl > 0,
            write,
            attr: 1,
            lun: 0,
            itt: self.itt,
            edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            cdb: c,
        }
        .emit();
        self.cmd_sn += 1;
        self.send(Pdu::new(h, Bytes::copy_from_slice(data)));
        self.itt
    }
}

/// WRITE(10) of one block at `lba`, FUA set so it runs on the blocking
/// pool (where a slow disk keeps it in flight).
fn write10_fua(lba: u8) -> [u8; 10] {
    [0x2a, 0x08, 0, 0, 0, lba, 0, 0, 1, 0]
}

fn read_block(path: &std::path::Path, lba: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; 512];
    f.read_exact_at(&mut b, lba * 512).unwrap();
    b
}

#[test]
fn same_seat_new_session_fences_old() {
    const INI: &str = "iqn.1991-05.com.microsoft:seat07";
    let srv = start();
    // iPXE's session: it clears its unit attention, then the disk turns slow.
    let mut ipxe = login_as(srv.addr, INI, SLOW, [0x40, 0, 0x27, 0x23, 0, 1], false);
    assert_eq!(ipxe.command(&TUR, 0, None).0, 2);
    let slow = srv.resolver.slow.lock().clone().unwrap();
    slow.set(
        khoi_block::filters::OpKind::Write,
        Duration::from_millis(1500),
    );
    // A write in the pool (FUA) and one still waiting for half its data.
    ipxe.start_cmd(&write10_fua(5), 512, true, &[0xaa; 512]);
    ipxe.start_cmd(&[0x2a, 0, 0, 0, 0, 6, 0, 0, 2, 0], 1024, true, &[0xaa; 512]);
    std::thread::sleep(Duration::from_millis(200));
    let sent = std::time::Instant::now();

    // Windows takes over: the same initiator under its own ISID.
    let mut win = login_as(srv.addr, INI, SLOW, [0x40, 0, 0x01, 0x37, 0, 1], false);
    slow.set(khoi_block::filters::OpKind::Write, Duration::ZERO);
    // Commands sent right after login wait for the old session's writes.
    assert_eq!(win.command(&TUR, 0, None).0, 2);
    assert!(
        sent.elapsed() >= Duration::from_millis(1200),
        "the new session ran a command while the old write was in flight ({:?})",
        sent.elapsed()
    );
    for lba in [5u8, 6, 7] {
        let (st, _, _) = win.command(
            &[0x2a, 0, 0, 0, 0, lba, 0, 0, 1, 0],
            512,
            Some(&[0xbb; 512]),
        );
        assert_eq!(st, 0);
    }
    // R2T for the half-sent write, maybe the pool write's status, then EOF.
    assert!(
        (0..4).any(|_| ipxe.recv().is_none()),
        "the replaced session must close"
    );
    std::thread::sleep(Duration::from_millis(1600));
    let img = srv.resolver.dir.join("slow.img");
    for lba in [5, 6, 7] {
        assert_eq!(
            read_block(&img, lba),
            vec![0xbb; 512],
            "LBA {lba}: an old write landed late"
        );
    }
}

#[test]
fn reinstatement_waits_for_old_writes() {
    let srv = start();
    let isid = [0x40, 0, 0x01, 0x37, 0, 1];
    let mut old = login(srv.addr, SLOW, isid);
    assert_eq!(old.command(&TUR, 0, None).0, 2);
    let slow = srv.resolver.slow.lock().clone().unwrap();
    slow.set(
        khoi_block::filters::OpKind::Write,
        Duration::from_millis(1500),
    );
    old.start_cmd(&write10_fua(9), 512, true, &[0xaa; 512]);
    std::thread::sleep(Duration::from_millis(200));
    let t0 = std::time::Instant::now();
    let mut new = login(srv.addr, SLOW, isid);
    slow.set(khoi_block::filters::OpKind::Write, Duration::ZERO);
    assert_eq!(new.command(&TUR, 0, None).0, 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "ran before the old write ended"
    );
    let (st, _, _) = new.command(&[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0], 512, Some(&[0xbb; 512]));
    assert_eq!(st, 0);
    // Long enough for an unfenced old write to have landed.
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        read_block(&srv.resolver.dir.join("slow.img"), 9),
        vec![0xbb; 512]
    );
}

#[test]
fn lun_reset_reaches_other_sessions_with_unit_attention() {
    use khoi_iscsi::pdu::{TaskMgmtRequest, TaskMgmtResponseRepr, TmfFunction, TmfResponse};
    let srv = start();
    let mut a = login_as(
        srv.addr,
        "iqn.2025-01.test:host-a",
        SLOW,
        [0x40, 0, 0, 0, 0, 1],
        false,
    );
    let mut b = login_as(
        srv.addr,
        "iqn.2025-01.test:host-b",
        SLOW,
        [0x40, 0, 0, 0, 0, 2],
        false,
    );
    for c in [&mut a, &mut b] {
        assert_eq!(c.command(&TUR, 0, None).0, 2);
    }
    let slow = srv.resolver.slow.lock().clone().unwrap();
    slow.set(
        khoi_block::filters::OpKind::Write,
        Duration::from_millis(800),
    );
    // b has a write in the pool and one waiting for its data.
    b.start_cmd(&write10_fua(3), 512, true, &[0xaa; 512]);
    let pending = b.start_cmd(&[0x2a, 0, 0, 0, 0, 4, 0, 0, 2, 0], 1024, true, &[0xaa; 512]);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = std::time::Instant::now();
    let h = TaskMgmtRequest {
        immediate: true,
        function: TmfFunction::LogicalUnitReset,
        lun: 0,
        itt: 0x999,
        referenced_tag: RESERVED_TAG,
        cmd_sn: a.cmd_sn,
        exp_stat_sn: 0,
        ref_cmd_sn: 0,
        exp_data_sn: 0,
    }
    .emit();
    a.send(Pdu::new(h, Bytes::new()));
    let r = a.recv().expect("tmf response");
    let r = TaskMgmtResponseRepr::parse(&r.view()).expect("tmf response parses");
    assert_eq!(r.response, TmfResponse::Complete);
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "LUN RESET answered before the other session's write finished"
    );
    slow.set(khoi_block::filters::OpKind::Write, Duration::ZERO);
    // b: its pool write completes; the pending one is gone (its Data-Out
    // would be for a task that no longer exists).
    let mut p = b.recv().expect("R2T or status");
    if p.opcode() == Opcode::R2t {
        assert_eq!(R2t::parse(&p.view()).unwrap().itt, pending);
        p = b.recv().expect("status of the pool write");
    }
    assert_eq!(p.opcode(), Opcode::ScsiResponse);
    assert_ne!(ScsiResponse::parse(&p.view()).unwrap().itt, pending);
    // Each session's next command reports 29/03, then all is well.
    for c in [&mut a, &mut b] {
        let (st, sense, _) = c.command(&TUR, 0, None);
        assert_eq!(st, 2);
        assert_eq!((sense[2], sense[12], sense[13]), (0x06, 0x29, 0x03));
        assert_eq!(c.command(&TUR, 0, None).0, 0);
    }
}

#[test]
fn idle_sessions_get_nop_in_and_silent_ones_are_closed() {
    let srv = start_with(|c| {
        c.nop_interval = Some(Duration::from_millis(300));
    });
    let mut c = login(srv.addr, OPEN, [0x40, 0, 0, 0, 0, 0x31]);
    // An initiator that never answers (iPXE) is pinged once and kept.
    let mut quiet = login_as(
        srv.addr,
        "iqn.2010-04.org.ipxe:quiet",
        OPEN,
        [0x40, 0, 0x27, 0x23, 0, 1],
        false,
    );
    // Answer two pings.
    for _ in 0..2 {
        let p = c.recv().expect("NOP-In ping");
        assert_eq!(p.opcode(), Opcode::NopIn);
        let n = NopIn::parse(&p.view()).unwrap();
        assert_eq!(n.itt, RESERVED_TAG);
        assert_ne!(n.ttt, RESERVED_TAG);
        let h = NopOut {
            immediate: true,
            lun: 0,
            itt: RESERVED_TAG,
            ttt: n.ttt,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: 0,
        }
        .emit();
        c.send(Pdu::new(h, Bytes::new()));
    }
    // Then go silent: the next unanswered ping ends the session.
    let t0 = std::time::Instant::now();
    let p = c.recv().expect("third ping");
    assert_eq!(p.opcode(), Opcode::NopIn);
    assert!(c.recv().is_none(), "a silent session must be closed");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // The quiet one got one ping and still works.
    let p = quiet.recv().expect("one ping");
    assert_eq!(p.opcode(), Opcode::NopIn);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(quiet.command(&TUR, 0, None).0, 2);
    assert_eq!(quiet.command(&TUR, 0, None).0, 0);
}

/// The Microsoft initiator's known wire behaviour, replayed byte for byte
/// where a capture exists (the login of `win2003s`, see
/// shared/reference/windows-initiator.md) and by its documented habits
/// elsewhere: REPORT LUNS untagged first, new commands while a write waits
/// for Data-Out, a wrong LUN field in Data-Out.
#[test]
fn windows_initiator_replay() {
    use khoi_iscsi::pdu::DataOut;
    let srv = start();
    let s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Client {
        s,
        buf: BytesMut::new(),
        cmd_sn: 1,
        itt: 1,
        digests: Digests::default(),
    };
    // Security stage, as captured: immediate, T=1 CSG=0 NSG=1, ISID
    // 40 00 01 37 00 00, TSIH 0, ITT 1, CID 1, CmdSN 1, ExpStatSN 0.
    let mut data = Vec::new();
    for kv in [
        "InitiatorName=iqn.1991-05.com.microsoft:win2003s".to_owned(),
        "SessionType=Normal".to_owned(),
        format!("TargetName={OPEN}"),
        "AuthMethod=None".to_owned(),
    ] {
        data.extend_from_slice(kv.as_bytes());
        data.push(0);
    }
    let mut bhs: [u8; 48] = [
        0x43, 0x81, 0x00, 0x00, 0x00, 0x00, 0x00, 0x8e, //
        0x40, 0x00, 0x01, 0x37, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    // Only the data length differs: our target's name is not the capture's.
    bhs[7] = u8::try_from(data.len()).unwrap();
    let mut wire = bhs.to_vec();
    wire.extend_from_slice(&data);
    wire.resize(wire.len().div_ceil(4) * 4, 0);
    c.send_raw(&wire);
    let r = c.recv().expect("security-stage response");
    let lr = LoginResponse::parse(&r.view()).unwrap();
    assert_eq!((lr.status_class, lr.status_detail), (0, 0));
    assert!(lr.transit && lr.nsg == Stage::Operational);
    assert_eq!(lr.isid, [0x40, 0x00, 0x01, 0x37, 0x00, 0x00]);
    let keys = text::parse(&r.data, Default::default()).unwrap();
    assert!(keys.iter().any(|(k, _)| k == "TargetPortalGroupTag"));

    // Operational stage: no capture exists; these are RFC-legal values in
    // the ranges Windows documents.
    let ops = text::emit(&[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxConnections", "1"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "20"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("MaxRecvDataSegmentLength", "65536"),
    ]);
    let h = LoginRequest {
        transit: true,
        cont: false,
        csg: Stage::Operational,
        nsg: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid: [0x40, 0x00, 0x01, 0x37, 0x00, 0x00],
        tsih: 0,
        itt: 1,
        cid: 1,
        cmd_sn: 1,
        exp_stat_sn: lr.seq.stat_sn.wrapping_add(1),
    }
    .emit();
    c.send(Pdu::new(h, Bytes::from(ops)));
    let r = c.recv().expect("operational-stage response");
    let lr = LoginResponse::parse(&r.view()).unwrap();
    assert_eq!((lr.status_class, lr.status_detail), (0, 0));
    assert!(lr.transit && lr.nsg == Stage::FullFeature);
    assert_ne!(lr.tsih, 0);

    // REPORT LUNS first, untagged (flags C0: F, R, attribute 0), EDTL 16.
    let mut cdb = [0u8; 16];
    cdb[..12].copy_from_slice(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]);
    let mut h = ScsiCommand {
        immediate: false,
        fin: true,
        read: true,
        write: false,
        attr: 0,
        lun: 0,
        itt: 2,
        edtl: 16,
        cmd_sn: 1,
        exp_stat_sn: 0,
        cdb,
    }
    .emit();
    assert_eq!(h[1], 0xc0);
    h[1] = 0xc0;
    c.send(Pdu::new(h, Bytes::new()));
    let mut got = Vec::new();
    let status = loop {
        let p = c.recv().expect("REPORT LUNS reply");
        match p.opcode() {
            Opcode::DataIn => {
                got.extend_from_slice(&p.data);
                if let Some(st) = DataIn::parse(&p.view()).unwrap().status {
                    break st;
                }
            }
            Opcode::ScsiResponse => break ScsiResponse::parse(&p.view()).unwrap().status,
            o => panic!("unexpected {o:?}"),
        }
    };
    // REPORT LUNS is answered despite the pending POWER ON unit attention.
    assert_eq!(status, 0);
    assert_eq!(got, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    c.cmd_sn = 2;
    c.itt = 2;
    let (st, sense, _) = c.command(&TUR, 0, None);
    assert_eq!((st, sense[12]), (2, 0x29));

    // A two-block WRITE with InitialR2T=Yes and no immediate data: R2T.
    let w_itt = c.start_cmd(&[0x2a, 0, 0, 0, 0, 0x20, 0, 0, 2, 0], 1024, true, &[]);
    let p = c.recv().expect("R2T");
    let r2t = R2t::parse(&p.view()).expect("an R2T");
    assert_eq!(
        (r2t.itt, r2t.buffer_offset, r2t.desired_len),
        (w_itt, 0, 1024)
    );
    // While it waits: a READ, a NOP-Out and a TEST UNIT READY, all answered.
    let (st, _, data) = c.command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, None);
    assert_eq!((st, data.len()), (0, 512));
    assert!(c.nop());
    assert_eq!(c.command(&TUR, 0, None).0, 0);
    // Now the data, with a LUN field Windows is known to get wrong.
    let d = DataOut {
        fin: true,
        lun: 0x0001_0000_0000_0000,
        itt: w_itt,
        ttt: r2t.ttt,
        exp_stat_sn: 0,
        data_sn: 0,
        buffer_offset: 0,
    }
    .emit();
    c.send(Pdu::new(d, Bytes::from(vec![0x5a; 1024])));
    let p = c.recv().expect("write status");
    let resp = ScsiResponse::parse(&p.view()).expect("SCSI response");
    assert_eq!((resp.itt, resp.status), (w_itt, 0));
    let (st, _, data) = c.command(&[0x28, 0, 0, 0, 0, 0x20, 0, 0, 2, 0], 1024, None);
    assert_eq!(st, 0);
    assert_eq!(data, vec![0x5a; 1024]);
}

/// A network namespace with a veth pair to it, removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    /// `None` (and the test passes with a note) without root or `ip`.
    fn new(octet: u8) -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !have("ip") {
            eprintln!("note: needs root and ip(8) for a network namespace; skipped");
            return None;
        }
        let id = std::process::id() % 100_000;
        let n = Netns {
            name: format!("khoiil{id}"),
            host_if: format!("kil{id}h"),
        };
        let peer = format!("kil{id}n");
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", &n.name]);
        ip(&[
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &n.name]);
        ip(&[
            "addr",
            "add",
            &format!("10.251.{octet}.1/30"),
            "dev",
            &n.host_if,
        ]);
        ip(&["link", "set", &n.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &n.name, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("10.251.{octet}.2/30"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        Some(n)
    }

    /// Run `f` on a thread whose sockets live in the namespace.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&path).expect("netns file");
            // SAFETY: setns on a namespace fd we hold; it changes only this
            // thread's network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            f()
        })
    }

    /// Drop every packet between the two ends, as a powered-off seat does.
    fn cut(&self) {
        let _ = Command::new("ip")
            .args(["link", "set", &self.host_if, "down"])
            .status();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A Windows-like initiator that answers pings, then its host loses power
/// (every packet dropped): its session must end within the ping interval
/// plus TCP_USER_TIMEOUT (30 s + 20 s by default; scaled down here).
#[test]
fn vanished_peer_is_cleaned_up() {
    let Some(ns) = Netns::new(7) else { return };
    let srv = start_on("10.251.7.1:0", |c| {
        c.nop_interval = Some(Duration::from_millis(500));
        c.tcp_user_timeout = Duration::from_secs(2);
    });
    let addr = srv.addr;
    let (answered_tx, answered) = std::sync::mpsc::channel();
    let client = ns.spawn(move || {
        let mut c = login_as(
            addr,
            "iqn.1991-05.com.microsoft:gone",
            OPEN,
            [0x40, 0, 1, 0x37, 0, 1],
            false,
        );
        let p = c.recv().expect("ping");
        let n = NopIn::parse(&p.view()).expect("NOP-In");
        let h = NopOut {
            immediate: true,
            lun: 0,
            itt: RESERVED_TAG,
            ttt: n.ttt,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: 0,
        }
        .emit();
        c.send(Pdu::new(h, Bytes::new()));
        answered_tx.send(()).expect("signal");
        // Hold the socket open (never closed cleanly) until the test ends.
        std::thread::sleep(Duration::from_secs(8));
        drop(c);
    });
    answered
        .recv_timeout(Duration::from_secs(10))
        .expect("the client answered a ping");
    std::thread::sleep(Duration::from_millis(100));
    ns.cut();
    let t0 = std::time::Instant::now();
    let ended = loop {
        let gone = srv
            .resolver
            .events
            .lock()
            .iter()
            .any(|e| matches!(e, IscsiEvent::SessionEnded { .. }));
        if gone || t0.elapsed() > Duration::from_secs(6) {
            break gone;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        ended,
        "the vanished seat's session is still there after {:?}",
        t0.elapsed()
    );
    eprintln!("vanished session ended after {:?}", t0.elapsed());
    let _ = client.join();
}

/// iPXE ignores NOP-In pings, and once the boot sector has halted it polls
/// the network no more (no INT13 call): pinged every 100 ms, its session
/// must stay.
#[test]
fn ipxe_is_never_dropped_for_ignoring_nop_in() {
    let srv = start_with(|c| c.nop_interval = Some(Duration::from_millis(100)));
    let mut c = login(srv.addr, OPEN, [0x40, 0, 0, 0, 0, 0x21]);
    let _ = c.command(&TUR, 0, None);
    let (st, _, _) = c.command(
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        512,
        Some(&boot_sector()),
    );
    assert_eq!(st, 0);
    drop(c);
    let script = format!(
        "dhcp\nsanboot iscsi:10.0.2.2::{}::{OPEN}\n",
        srv.addr.port()
    );
    let ipxe_ended = || {
        srv.resolver.events.lock().iter().any(|e| {
            matches!(e, IscsiEvent::SessionEnded { initiator, .. } if initiator.starts_with("iqn.2010-04.org.ipxe"))
        })
    };
    let mut ended_while_up = true;
    let Some((booted, out)) = ipxe_boots_then(&script, || {
        std::thread::sleep(Duration::from_secs(2));
        ended_while_up = ipxe_ended();
    }) else {
        return;
    };
    assert!(booted, "iPXE did not boot from the target:\n{out}");
    assert!(ipxe_logged_in(&srv), "no iPXE login recorded");
    assert!(
        !ended_while_up,
        "iPXE's session was dropped for ignoring NOP-In"
    );
}
