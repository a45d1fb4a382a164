//! Store-level tests: a model-based proptest, crash consistency, capacity,
//! golden immutability, version binding and constant-time operations.

// Test images are a few hundred KiB; narrowing casts cannot truncate here.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proptest::prelude::*;

use crate::store::{set_crash_point, set_hold_point};
use crate::*;

fn store(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open store")
}

fn recording_store(dir: &Path, floor: u64) -> (Store, Arc<Mutex<Vec<BlockEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let opts = StoreOptions {
        free_space_floor: floor,
        events: Arc::new(move |e| sink.lock().push(e)),
        ..StoreOptions::default()
    };
    (Store::open(dir, opts).expect("open store"), events)
}

/// Stages `content` as a raw image, leaving all-zero 4 KiB blocks as holes.
fn stage(store: &Store, file: &str, content: &[u8]) -> std::path::PathBuf {
    let p = store.staging_dir().join(file);
    let f = fs::File::create(&p).expect("create staged");
    f.set_len(content.len() as u64).expect("set_len");
    for (i, chunk) in content.chunks(4096).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            f.write_all_at(chunk, i as u64 * 4096)
                .expect("write staged");
        }
    }
    p
}

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect();
    // A zero region so holes and Zero extents get exercised.
    let z = size / 4;
    v[z..z + 3 * 4096].fill(0);
    v
}

fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(dev.size()).expect("small")];
    dev.read_at(&mut buf, 0).expect("read");
    buf
}

fn plan_bytes(dev: &dyn BlockDevice, offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for seg in dev.read_plan(offset, len).expect("plan") {
        match seg {
            ReadSegment::File { file, offset, len } => {
                let mut b = vec![0u8; usize::try_from(len).expect("small")];
                file.read_exact_at(&mut b, offset).expect("pread");
                out.extend(b);
            }
            ReadSegment::Zero { len } => {
                out.extend(vec![0u8; usize::try_from(len).expect("small")])
            }
            ReadSegment::Mem(v) => out.extend(v),
        }
    }
    out
}

fn check_extents(dev: &dyn BlockDevice, offset: u64, len: u64) {
    let ex = dev.extents(offset, len).expect("extents");
    let mut pos = offset;
    for e in &ex {
        assert_eq!(e.offset, pos, "extents are contiguous");
        assert!(e.len > 0);
        pos += e.len;
    }
    assert_eq!(pos, offset + len, "extents cover the range");
    for w in ex.windows(2) {
        assert_ne!(w[0].kind, w[1].kind, "extents are merged");
    }
    // Zero extents must read as zero.
    for e in ex.iter().filter(|e| e.kind == ExtentKind::Zero) {
        let mut b = vec![1u8; usize::try_from(e.len).expect("small")];
        dev.read_at(&mut b, e.offset).expect("read");
        assert!(b.iter().all(|x| *x == 0), "zero extent reads zero");
    }
}

// ---- overlay over MemDevice ------------------------------------------------

#[test]
fn overlay_over_memdevice_unaligned() {
    let tmp = tempfile::tempdir().expect("tmp");
    let size = 10 * 4096 + 1024;
    let base = pattern(size, 7);
    let lower: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(base.clone()));
    let o = Overlay::create_at(
        &tmp.path().join("d"),
        &tmp.path().join("m"),
        lower,
        OverlayOwner::Seat("t".into()),
        0,
    )
    .expect("overlay");
    let mut model = base.clone();
    let w = vec![0xAB; 5000];
    o.write_at(&w, 100, WriteFlags::NONE).expect("write");
    model[100..5100].copy_from_slice(&w);
    o.trim(4096 * 3 + 10, 9000, WriteFlags::NONE).expect("trim");
    model[4096 * 3 + 10..4096 * 3 + 9010].fill(0);
    o.write_zeroes(size as u64 - 1500, 1500, WriteFlags::FUA)
        .expect("zero");
    model[size - 1500..].fill(0);
    o.write_at(&[9; 512], size as u64 - 512, WriteFlags::NONE)
        .expect("write tail");
    model[size - 512..].fill(9);
    assert_eq!(read_all(&o), model);
    assert_eq!(plan_bytes(&o, 0, size as u64), model);
    assert_eq!(plan_bytes(&o, 77, 10000), model[77..10077].to_vec());
    check_extents(&o, 0, size as u64);
    let ex = o.extents(0, 4096).expect("extents");
    assert_eq!(ex[0].kind, ExtentKind::Overlay);
    let ex = o.extents(4096 * 4, 4096).expect("extents");
    assert_eq!(
        ex,
        vec![Extent {
            offset: 4096 * 4,
            len: 4096,
            kind: ExtentKind::Zero
        }]
    );
    let ex = o.extents(4096 * 8, 4096).expect("extents");
    assert_eq!(ex[0].kind, ExtentKind::Golden);
    o.flush().expect("flush");
}

#[test]
fn concurrent_writers_in_one_block_do_not_lose_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let size = 64 * 4096;
    let lower: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(vec![0x55; size]));
    let o = Arc::new(
        Overlay::create_at(
            &tmp.path().join("d"),
            &tmp.path().join("m"),
            lower,
            OverlayOwner::Seat("t".into()),
            0,
        )
        .expect("overlay"),
    );
    // 8 threads each own one 512-byte sector of every block: all partial
    // writes into shared blocks, which only works if RMW is serialized.
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let o = Arc::clone(&o);
            std::thread::spawn(move || {
                for round in 0..4u8 {
                    for b in 0..64u64 {
                        let off = b * 4096 + u64::from(t) * 512;
                        o.write_at(&[t * 16 + round; 512], off, WriteFlags::NONE)
                            .expect("write");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let data = read_all(&*o);
    for b in 0..64 {
        for t in 0..8u8 {
            let s = b * 4096 + usize::from(t) * 512;
            assert!(
                data[s..s + 512].iter().all(|x| *x == t * 16 + 3),
                "block {b} sector {t}"
            );
        }
    }
}

// ---- model-based proptest ------------------------------------------------

const PSIZE: usize = 48 * 4096 + 1536; // unaligned end on purpose

#[derive(Debug, Clone)]
enum Op {
    SeatWrite(u64, u64, u8),
    SeatTrim(u64, u64),
    SeatZero(u64, u64),
    SeatFlush,
    SeatReset,
    SeatRebase,
    DraftWrite(u64, u64, u8),
    DraftTrim(u64, u64),
    Publish,
    Rollback(u8),
    Reopen,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..PSIZE as u64).prop_flat_map(|off| {
        let max = (PSIZE as u64 - off).min(20000);
        (Just(off), 1..=max)
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (range(), any::<u8>()).prop_map(|((o, l), v)| Op::SeatWrite(o, l, v)),
        2 => range().prop_map(|(o, l)| Op::SeatTrim(o, l)),
        1 => range().prop_map(|(o, l)| Op::SeatZero(o, l)),
        1 => Just(Op::SeatFlush),
        1 => Just(Op::SeatReset),
        1 => Just(Op::SeatRebase),
        3 => (range(), any::<u8>()).prop_map(|((o, l), v)| Op::DraftWrite(o, l, v)),
        1 => range().prop_map(|(o, l)| Op::DraftTrim(o, l)),
        1 => Just(Op::Publish),
        1 => any::<u8>().prop_map(Op::Rollback),
        1 => Just(Op::Reopen),
    ]
}

fn fill(len: u64, v: u8, off: u64) -> Vec<u8> {
    (0..len).map(|i| v ^ ((off + i) as u8)).collect()
}

struct Model {
    versions: Vec<(u32, Vec<u8>)>,
    current: u32,
    seat_version: u32,
    seat: Vec<u8>,
    draft: Option<Vec<u8>>,
}

impl Model {
    fn version(&self, n: u32) -> Vec<u8> {
        self.versions
            .iter()
            .find(|(k, _)| *k == n)
            .expect("model version")
            .1
            .clone()
    }
}

fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut st = store(tmp.path());
    let base = pattern(PSIZE, 3);
    let staged = stage(&st, "base.raw", &base);
    st.import_image("img", &staged, "base", "t")
        .expect("import");
    let mut m = Model {
        versions: vec![(1, base.clone())],
        current: 1,
        seat_version: 1,
        seat: base.clone(),
        draft: None,
    };
    let mut seat = st.seat_overlay("s1", "img", 1, 0).expect("seat");
    let mut draft: Option<Arc<Overlay>> = None;
    for op in ops {
        match op {
            Op::SeatWrite(o, l, v) => {
                let d = fill(l, v, o);
                seat.write_at(&d, o, WriteFlags::NONE).expect("write");
                m.seat[o as usize..(o + l) as usize].copy_from_slice(&d);
            }
            Op::SeatTrim(o, l) => {
                seat.trim(o, l, WriteFlags::NONE).expect("trim");
                m.seat[o as usize..(o + l) as usize].fill(0);
            }
            Op::SeatZero(o, l) => {
                seat.write_zeroes(o, l, WriteFlags::FUA).expect("zero");
                m.seat[o as usize..(o + l) as usize].fill(0);
            }
            Op::SeatFlush => seat.flush().expect("flush"),
            Op::SeatReset => {
                st.reset_seat("s1").expect("reset");
                prop_assert!(matches!(
                    seat.read_at(&mut [0u8; 1], 0),
                    Err(BlockError::Gone)
                ));
                seat = st
                    .seat_overlay("s1", "img", m.seat_version, 0)
                    .expect("seat");
                m.seat = m.version(m.seat_version);
            }
            Op::SeatRebase => {
                let old = Arc::clone(&seat);
                seat = st.seat_overlay("s1", "img", m.current, 0).expect("seat");
                if m.current != m.seat_version {
                    prop_assert!(old.is_gone());
                    m.seat_version = m.current;
                    m.seat = m.version(m.current);
                } else {
                    prop_assert!(Arc::ptr_eq(&old, &seat));
                }
            }
            Op::DraftWrite(o, l, v) => {
                let d = draft.get_or_insert_with(|| st.open_draft("img").expect("draft"));
                let md = m.draft.get_or_insert_with(|| {
                    m.versions
                        .iter()
                        .find(|(k, _)| *k == m.current)
                        .expect("cur")
                        .1
                        .clone()
                });
                let data = fill(l, v, o);
                d.write_at(&data, o, WriteFlags::NONE).expect("draft write");
                md[o as usize..(o + l) as usize].copy_from_slice(&data);
            }
            Op::DraftTrim(o, l) => {
                let d = draft.get_or_insert_with(|| st.open_draft("img").expect("draft"));
                let md = m.draft.get_or_insert_with(|| {
                    m.versions
                        .iter()
                        .find(|(k, _)| *k == m.current)
                        .expect("cur")
                        .1
                        .clone()
                });
                d.trim(o, l, WriteFlags::NONE).expect("draft trim");
                md[o as usize..(o + l) as usize].fill(0);
            }
            Op::Publish => {
                if let Some(md) = m.draft.take() {
                    let d = draft.take().expect("draft open");
                    let info = st.publish_draft("img", "p", "t").expect("publish");
                    prop_assert!(matches!(
                        d.write_at(&[1], 0, WriteFlags::NONE),
                        Err(BlockError::Gone)
                    ));
                    m.versions.push((info.number, md));
                    m.current = info.number;
                    prop_assert!(st.draft("img").is_none());
                }
            }
            Op::Rollback(k) => {
                let (n, _) = &m.versions[usize::from(k) % m.versions.len()];
                st.set_current("img", *n).expect("set_current");
                m.current = *n;
            }
            Op::Reopen => {
                seat.flush().expect("flush");
                if let Some(d) = &draft {
                    d.flush().expect("flush draft");
                }
                drop(seat);
                draft = None;
                drop(st);
                st = store(tmp.path());
                seat = st
                    .seat_overlay("s1", "img", m.seat_version, 0)
                    .expect("seat");
                if m.draft.is_some() {
                    draft = Some(st.draft("img").expect("draft survives reopen"));
                }
            }
        }
        prop_assert_eq!(st.current_version("img").expect("cur"), m.current);
        prop_assert!(
            read_all(&*seat) == m.seat,
            "seat differs after {:?}",
            op_name(&m)
        );
        if let (Some(d), Some(md)) = (&draft, &m.draft) {
            prop_assert!(read_all(&**d) == *md, "draft differs");
        }
    }
    for (n, content) in &m.versions {
        let v = st.open_version("img", *n).expect("version");
        prop_assert!(read_all(&*v) == *content, "version {} differs", n);
        prop_assert!(plan_bytes(&*v, 0, PSIZE as u64) == *content);
        check_extents(&*v, 0, PSIZE as u64);
    }
    check_extents(&*seat, 0, PSIZE as u64);
    prop_assert!(plan_bytes(&*seat, 0, PSIZE as u64) == m.seat);
    Ok(())
}

fn op_name(m: &Model) -> String {
    format!("seat v{} current v{}", m.seat_version, m.current)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run_ops(ops)?;
    }
}

// ---- crash consistency -----------------------------------------------------

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("readdir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

#[test]
fn crash_keeps_flushed_writes_and_never_shows_garbage() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("store");
    let size = 64 * 4096;
    let base = pattern(size, 1);
    let st = store(&dir);
    let staged = stage(&st, "b.raw", &base);
    st.import_image("img", &staged, "", "").expect("import");
    let seat = st.seat_overlay("s", "img", 1, 0).expect("seat");
    // Flushed generation A on blocks 0..32.
    let a = vec![0xA1u8; 32 * 4096];
    seat.write_at(&a, 0, WriteFlags::NONE).expect("write a");
    seat.trim(40 * 4096, 4096, WriteFlags::NONE).expect("trim");
    seat.flush().expect("flush");
    // Unflushed generation B on blocks 16..48 (half overwrite, half new).
    let b = vec![0xB2u8; 32 * 4096];
    seat.write_at(&b, 16 * 4096, WriteFlags::NONE)
        .expect("write b");
    let mut after_flush = base.clone();
    after_flush[..32 * 4096].copy_from_slice(&a);
    after_flush[40 * 4096..41 * 4096].fill(0);
    let mut after_b = after_flush.clone();
    after_b[16 * 4096..48 * 4096].copy_from_slice(&b);

    // "Crash" 1: copy the live directory, as a power cut would leave it.
    let copy = tmp.path().join("copy");
    copy_dir(&dir, &copy);
    // "Crash" 2: drop the store without flushing; the overlay object is
    // leaked below rather than dropped, since closing it would flush.
    drop(st);

    for d in [&copy, &dir] {
        let st = store(d);
        let seat = st.seat_overlay("s", "img", 1, 0).expect("seat");
        let got = read_all(&*seat);
        for blk in 0..64 {
            let r = blk * 4096..(blk + 1) * 4096;
            let ok =
                got[r.clone()] == after_flush[r.clone()] || got[r.clone()] == after_b[r.clone()];
            assert!(
                ok,
                "block {blk} holds neither old nor new data in {}",
                d.display()
            );
        }
        assert_eq!(got[..16 * 4096], a[..16 * 4096], "flushed writes survive");
        assert!(
            got[40 * 4096..41 * 4096].iter().all(|x| *x == 0),
            "flushed trim survives"
        );
    }
    std::mem::forget(seat);
}

#[test]
fn volatile_overlay_skips_syncs_and_needs_reboot_after_a_crash() {
    use crate::Durability;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("store");
    let size = 64 * 4096;
    let st = store(&dir);
    let staged = stage(&st, "b.raw", &pattern(size, 1));
    st.import_image("img", &staged, "", "").expect("import");
    let seat = st
        .seat_overlay_with("s", "img", 1, 0, Durability::Volatile)
        .expect("seat");
    assert_eq!(seat.durability(), Durability::Volatile);
    assert!(!st.seat_needs_reboot("s"), "a live volatile seat is fine");
    seat.write_at(&[0xA1u8; 4096], 0, WriteFlags::NONE)
        .expect("write");
    seat.flush().expect("flush");
    seat.write_at(&[0xA2u8; 4096], 4096, WriteFlags { fua: true })
        .expect("fua write");
    // A power cut now: the flush and the FUA write did not reach the map.
    let copy = tmp.path().join("copy");
    copy_dir(&dir, &copy);
    match crate::mapfile::read(&copy.join("seats/s/overlay.0.map"), size as u64).expect("map") {
        crate::mapfile::MapBody::States(m) => assert_eq!(
            m.count_present(),
            0,
            "volatile FLUSH and FUA must not have synced the map"
        ),
        crate::mapfile::MapBody::Full => panic!("map marked full"),
    }
    {
        let st = store(&copy);
        assert!(st.seat_needs_reboot("s"));
        assert_eq!(st.seats_needing_reboot(), vec!["s".to_string()]);
        let refused = st.seat_overlay("s", "img", 1, 0);
        assert!(
            matches!(refused, Err(StoreError::InUse { .. })),
            "an overlay that may have lost writes is never handed back"
        );
        let fresh = st
            .seat_overlay("s2", "img", 1, 0)
            .expect("other seats work");
        drop(fresh);
        // The reboot's reset clears it.
        st.reset_seat("s").expect("reset");
        assert!(!st.seat_needs_reboot("s"));
        let seat = st.seat_overlay("s", "img", 1, 0).expect("after reset");
        assert_eq!(read_all(&*seat)[..4096], pattern(size, 1)[..4096]);
    }
    // A clean close makes it durable and clears the marker.
    drop(seat);
    assert!(!st.seat_needs_reboot("s"));
    drop(st);
    let st = store(&dir);
    assert!(st.seats_needing_reboot().is_empty());
    let seat = st.seat_overlay("s", "img", 1, 0).expect("reopen");
    assert_eq!(seat.durability(), Durability::Durable);
    let got = read_all(&*seat);
    assert_eq!(got[..4096], [0xA1u8; 4096]);
    assert_eq!(got[4096..8192], [0xA2u8; 4096]);
    // Volatile then durable on a live overlay: the marker goes at once.
    let v = st
        .seat_overlay_with("s", "img", 1, 0, Durability::Volatile)
        .expect("volatile");
    assert!(dir.join("seats/s/volatile").exists());
    let d = st.seat_overlay("s", "img", 1, 0).expect("durable");
    assert!(!dir.join("seats/s/volatile").exists());
    assert_eq!(v.durability(), Durability::Durable);
    drop((v, d));
}

#[test]
fn publish_is_atomic_across_crashes() {
    for point in ["publish:linked", "publish:committed"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let size = 16 * 4096;
        let base = pattern(size, 2);
        let st = store(tmp.path());
        let staged = stage(&st, "b.raw", &base);
        st.import_image("img", &staged, "", "").expect("import");
        let d = st.open_draft("img").expect("draft");
        d.write_at(&[7u8; 4096], 4096, WriteFlags::NONE)
            .expect("write");
        set_crash_point(Some(point));
        assert!(st.publish_draft("img", "", "").is_err());
        set_crash_point(None);
        drop(d);
        drop(st);
        let st = store(tmp.path());
        let mut expect = base.clone();
        expect[4096..8192].fill(7);
        if point == "publish:linked" {
            // Not committed: the draft is intact and unpublished.
            assert_eq!(st.versions("img").expect("versions").len(), 1);
            let d = st.draft("img").expect("draft intact");
            assert_eq!(read_all(&*d), expect);
            let layers = fs::read_dir(tmp.path().join("images/img/layers"))
                .expect("dir")
                .count();
            assert_eq!(layers, 2, "orphan links were collected");
        } else {
            // Committed: the version exists and the draft is gone.
            assert_eq!(st.current_version("img").expect("cur"), 2);
            assert!(st.draft("img").is_none());
            let v = st.open_version("img", 2).expect("v2");
            assert_eq!(read_all(&*v), expect);
            for e in fs::read_dir(tmp.path().join("images/img/layers")).expect("dir") {
                let mode = e.expect("e").metadata().expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o400);
            }
        }
    }
}

/// Opening a seat (what a login does) while an import or a publish is in
/// its slow sync: it must not wait for it.
#[test]
fn seat_opens_while_import_or_publish_syncs() {
    use std::sync::mpsc;
    use std::time::Duration;
    let tmp = tempfile::tempdir().expect("tmp");
    let st = Arc::new(store(tmp.path()));
    let size = 16 * 4096;
    let staged = stage(&st, "a.raw", &pattern(size, 1));
    st.import_image("img", &staged, "", "").expect("import");
    let d = st.open_draft("img").expect("draft");
    d.write_at(&[7u8; 4096], 0, WriteFlags::NONE)
        .expect("write");
    drop(d);
    let staged2 = stage(&st, "b.raw", &pattern(size, 2));
    for (point, seat) in [("publish:sync", "s1"), ("import:sync", "s2")] {
        let (reached_tx, reached) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let admin = {
            let (st, staged2) = (Arc::clone(&st), staged2.clone());
            std::thread::spawn(move || {
                set_hold_point(point, reached_tx, release_rx);
                if point == "publish:sync" {
                    st.publish_draft("img", "", "").map(|_| ())
                } else {
                    st.import_image("other", &staged2, "", "").map(|_| ())
                }
            })
        };
        reached.recv().expect("admin operation reached its sync");
        let (done_tx, done) = mpsc::channel();
        let login = {
            let st = Arc::clone(&st);
            std::thread::spawn(move || {
                let r = st.seat_overlay(seat, "img", 1, 0).map(|_| ());
                let _ = done_tx.send(r.is_ok());
            })
        };
        let opened = done.recv_timeout(Duration::from_secs(5));
        let _ = release.send(());
        admin
            .join()
            .expect("admin thread")
            .expect("admin operation");
        login.join().expect("login thread");
        assert_eq!(opened, Ok(true), "seat open waited behind {point}");
        if point == "publish:sync" {
            // The draft could not be reopened mid-publish, and is gone now.
            assert!(st.draft("img").is_none());
        }
    }
    assert_eq!(st.current_version("img").expect("cur"), 2);
    assert_eq!(st.current_version("other").expect("cur"), 1);
}

// ---- capacity ----------------------------------------------------------------

#[test]
fn quota_refuses_new_blocks_but_allows_overwrite_and_trim() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, events) = recording_store(tmp.path(), 0);
    let staged = stage(&st, "b.raw", &pattern(64 * 4096, 4));
    st.import_image("img", &staged, "", "").expect("import");
    let seat = st.seat_overlay("s", "img", 1, 8 * 4096).expect("seat");
    seat.write_at(&[1u8; 8 * 4096], 0, WriteFlags::NONE)
        .expect("within quota");
    let before = read_all(&*seat);
    let err = seat.write_at(&[2u8; 4096 + 100], 7 * 4096, WriteFlags::NONE);
    assert!(matches!(err, Err(BlockError::NoSpace(_))), "{err:?}");
    assert_eq!(read_all(&*seat), before, "a refused write writes nothing");
    let err = seat.write_at(&[2u8; 10], 20 * 4096, WriteFlags::NONE);
    assert!(matches!(err, Err(BlockError::NoSpace(_))));
    let quota_events = events
        .lock()
        .iter()
        .filter(|e| matches!(e, BlockEvent::QuotaExceeded { .. }))
        .count();
    assert_eq!(quota_events, 1, "one event until usage drops");
    seat.write_at(&[3u8; 100], 50, WriteFlags::NONE)
        .expect("overwrite when full");
    seat.trim(4096 * 2 + 7, 4096 * 3, WriteFlags::NONE)
        .expect("trim when full");
    let u = st.seat_usage("s").expect("usage");
    assert_eq!(u.quota, 8 * 4096);
    assert!(u.allocated < 8 * 4096);
    seat.write_at(&[4u8; 4096], 30 * 4096, WriteFlags::NONE)
        .expect("room again after trim");
}

#[test]
fn free_space_floor_refuses_allocation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, events) = recording_store(tmp.path(), u64::MAX / 2);
    let staged = stage(&st, "b.raw", &pattern(16 * 4096, 5));
    st.import_image("img", &staged, "", "").expect("import");
    let seat = st.seat_overlay("s", "img", 1, 0).expect("seat");
    let err = seat.write_at(&[1u8; 4096], 0, WriteFlags::NONE);
    assert!(matches!(err, Err(BlockError::NoSpace(_))), "{err:?}");
    assert!(
        events
            .lock()
            .iter()
            .any(|e| matches!(e, BlockEvent::FreeSpaceLow { .. }))
    );
    seat.trim(0, 8192, WriteFlags::NONE)
        .expect("trim needs no space");
    seat.write_zeroes(8192, 8192, WriteFlags::NONE)
        .expect("aligned zeroing needs no space");
    assert!(read_all(&*seat)[..16384].iter().all(|b| *b == 0));
}

#[test]
fn overwrite_of_present_blocks_works_below_the_floor() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("s");
    let st = store(&dir);
    let staged = stage(&st, "b.raw", &pattern(16 * 4096, 5));
    st.import_image("img", &staged, "", "").expect("import");
    let seat = st.seat_overlay("s", "img", 1, 0).expect("seat");
    seat.write_at(&[1u8; 8192], 0, WriteFlags::FUA)
        .expect("write");
    drop(seat);
    drop(st);
    let (st, _) = recording_store(&dir, u64::MAX / 2);
    let seat = st.seat_overlay("s", "img", 1, 0).expect("seat");
    seat.write_at(&[2u8; 5000], 100, WriteFlags::NONE)
        .expect("overwrite needs no space");
    assert!(seat.write_at(&[2u8; 1], 9000, WriteFlags::NONE).is_err());
}

// ---- immutability, version binding ------------------------------------------

fn layer_snapshot(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    for img in fs::read_dir(dir.join("images")).expect("images") {
        let layers = img.expect("img").path().join("layers");
        for e in fs::read_dir(layers).expect("layers") {
            let e = e.expect("e");
            let mode = e.metadata().expect("meta").permissions().mode() & 0o777;
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("read"),
                mode,
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn golden_layers_never_change() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = store(tmp.path());
    let size = 32 * 4096 + 512;
    let staged = stage(&st, "b.raw", &pattern(size, 6));
    st.import_image("img", &staged, "", "").expect("import");
    let d = st.open_draft("img").expect("draft");
    d.write_at(&[5u8; 9000], 3000, WriteFlags::NONE)
        .expect("draft write");
    d.trim(20 * 4096, 4096, WriteFlags::NONE)
        .expect("draft trim");
    st.publish_draft("img", "v2", "t").expect("publish");
    let before = layer_snapshot(tmp.path());
    assert_eq!(before.len(), 4);
    assert!(before.iter().all(|(_, _, mode)| *mode == 0o400));
    for v in [1, 2] {
        let seat = st
            .seat_overlay(&format!("s{v}"), "img", v, 0)
            .expect("seat");
        seat.write_at(&vec![9u8; size], 0, WriteFlags::FUA)
            .expect("write all");
        seat.trim(0, size as u64, WriteFlags::NONE)
            .expect("trim all");
        seat.write_zeroes(100, 50000, WriteFlags::FUA)
            .expect("zero");
        seat.write_at(&[1u8; 700], 4000, WriteFlags::NONE)
            .expect("rmw");
        seat.flush().expect("flush");
    }
    let d = st.open_draft("img").expect("draft over v2");
    d.write_at(&[8u8; 4096], 0, WriteFlags::FUA)
        .expect("draft write");
    d.trim(4096, 8192, WriteFlags::FUA).expect("draft trim");
    st.reset_seat("s1").expect("reset");
    st.discard_draft("img").expect("discard");
    assert_eq!(layer_snapshot(tmp.path()), before);
}

#[test]
fn overlay_for_another_version_is_discarded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, events) = recording_store(tmp.path(), 0);
    let size = 16 * 4096;
    let staged = stage(&st, "b.raw", &pattern(size, 1));
    st.import_image("img", &staged, "", "").expect("import");
    let staged = stage(&st, "c.raw", &pattern(size, 2));
    let v2 = st.import_image("img", &staged, "", "").expect("import v2");
    assert_eq!(v2.number, 2);
    let seat = st.seat_overlay("s", "img", 1, 0).expect("seat");
    seat.write_at(&[1u8; 4096], 0, WriteFlags::FUA)
        .expect("write");
    drop(seat);
    let seat = st.seat_overlay("s", "img", 2, 0).expect("seat v2");
    assert_eq!(
        read_all(&*seat),
        pattern(size, 2),
        "v1 overlay not applied to v2"
    );
    assert!(events.lock().iter().any(|e| matches!(e, BlockEvent::OverlayDiscarded { owner: OverlayOwner::Seat(s), .. } if s == "s")));
    // And the other way, after reopening the store from disk.
    seat.write_at(&[2u8; 4096], 0, WriteFlags::FUA)
        .expect("write");
    drop(seat);
    drop(st);
    let st = store(tmp.path());
    let seat = st.seat_overlay("s", "img", 1, 0).expect("seat v1");
    assert_eq!(read_all(&*seat), pattern(size, 1));
    assert_eq!(st.seat_usage("s").expect("usage").version, 1);
}

#[test]
fn shared_arcs_and_gone_handles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = store(tmp.path());
    let staged = stage(&st, "b.raw", &pattern(8 * 4096, 1));
    st.import_image("img", &staged, "", "").expect("import");
    let a = st.seat_overlay("s", "img", 1, 0).expect("a");
    let b = st.seat_overlay("s", "img", 1, 0).expect("b");
    assert!(Arc::ptr_eq(&a, &b));
    let v1 = st.open_version("img", 1).expect("v");
    let v2 = st.open_version("img", 1).expect("v");
    assert!(Arc::ptr_eq(&v1, &v2));
    a.write_at(&[1u8; 10], 0, WriteFlags::NONE).expect("write");
    st.reset_seat("s").expect("reset");
    assert!(matches!(
        b.read_at(&mut [0u8; 10], 0),
        Err(BlockError::Gone)
    ));
    assert!(matches!(b.flush(), Err(BlockError::Gone)));
    let c = st.seat_overlay("s", "img", 1, 0).expect("c");
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(read_all(&*c), pattern(8 * 4096, 1));
    st.remove_seat("s").expect("remove");
    assert!(matches!(
        c.write_at(&[0], 0, WriteFlags::NONE),
        Err(BlockError::Gone)
    ));
    assert!(st.seat_usage("s").is_none());
    assert!(matches!(
        st.reset_seat("s"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn admin_operations_and_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = store(tmp.path());
    let size = 8 * 4096;
    assert!(matches!(
        st.import_image("../x", &st.staging_dir().join("a"), "", ""),
        Err(StoreError::InvalidName { .. })
    ));
    let bad = stage(&st, "bad.raw", &[1u8; 1000]);
    assert!(matches!(
        st.import_image("img", &bad, "", ""),
        Err(StoreError::InvalidImage { .. })
    ));
    let outside = tmp.path().join("outside.raw");
    fs::write(&outside, vec![0u8; 4096]).expect("write");
    assert!(matches!(
        st.import_image("img", &outside, "", ""),
        Err(StoreError::InvalidImage { .. })
    ));
    let staged = stage(&st, "b.raw", &pattern(size, 1));
    let v1 = st
        .import_image("img", &staged, "first", "alice")
        .expect("import");
    assert!(!staged.exists(), "staged file was moved");
    assert_eq!(
        (v1.number, v1.note.as_str(), v1.author.as_str()),
        (1, "first", "alice")
    );
    let d = st.open_draft("img").expect("draft");
    d.write_at(&[1u8; 4096], 0, WriteFlags::NONE).expect("w");
    let v2 = st.publish_draft("img", "second", "bob").expect("publish");
    assert_eq!(v2.layers.len(), 2);
    assert_eq!(v2.layers[0], v1.layers[0]);
    assert!(v2.delta_bytes >= 4096);
    assert_ne!(v1.uuid, v2.uuid);
    let imgs = st.list_images();
    assert_eq!(imgs.len(), 1);
    assert_eq!(
        (
            imgs[0].current,
            imgs[0].latest,
            imgs[0].versions,
            imgs[0].has_draft
        ),
        (2, 2, 2, false)
    );
    assert!(matches!(
        st.delete_version("img", 2),
        Err(StoreError::InUse { .. })
    ));
    st.set_current("img", 1).expect("rollback");
    assert!(matches!(
        st.set_current("img", 9),
        Err(StoreError::NotFound { .. })
    ));
    st.open_draft("img").expect("draft over v1");
    assert!(matches!(
        st.delete_version("img", 1),
        Err(StoreError::InUse { .. })
    ));
    st.delete_version("img", 2).expect("delete v2");
    // v2's own layer is gone, v1's base stays.
    assert_eq!(
        fs::read_dir(tmp.path().join("images/img/layers"))
            .expect("d")
            .count(),
        2
    );
    let v3 = st.publish_draft("img", "third", "c").expect("publish");
    assert_eq!(v3.number, 3, "numbers are not reused");
    st.delete_image("img").expect("delete image");
    assert!(st.list_images().is_empty());
    assert!(matches!(
        st.open_version("img", 1),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        st.open_draft("nope"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn open_collects_orphans() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = store(tmp.path());
    let staged = stage(&st, "b.raw", &pattern(8 * 4096, 1));
    st.import_image("img", &staged, "", "").expect("import");
    drop(st);
    let layers = tmp.path().join("images/img/layers");
    fs::write(layers.join("deadbeef.data"), b"x").expect("w");
    fs::create_dir_all(tmp.path().join("images/half/layers")).expect("mkdir");
    fs::create_dir_all(tmp.path().join("seats/ghost")).expect("mkdir");
    let (st, events) = recording_store(tmp.path(), 0);
    let removed = events
        .lock()
        .iter()
        .filter(|e| matches!(e, BlockEvent::OrphanRemoved { .. }))
        .count();
    assert_eq!(removed, 3);
    assert!(!layers.join("deadbeef.data").exists());
    assert_eq!(st.list_images().len(), 1);
}

// ---- scale -----------------------------------------------------------------

#[test]
fn publish_reset_rollback_are_constant_time_on_64gib() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = store(tmp.path());
    let size: u64 = 64 << 30;
    let staged = st.staging_dir().join("big.raw");
    let f = fs::File::create(&staged).expect("create");
    f.set_len(size).expect("set_len");
    f.write_all_at(&[0x42; 4096], 1 << 30).expect("write");
    drop(f);
    st.import_image("big", &staged, "", "").expect("import");
    let v1 = st.open_version("big", 1).expect("v1");
    assert!(
        v1.map_bytes() < 1 << 20,
        "flattened map is {} bytes",
        v1.map_bytes()
    );
    let d = st.open_draft("big").expect("draft");
    d.write_at(&[1u8; 8192], 10 << 30, WriteFlags::NONE)
        .expect("write");
    d.write_at(&[2u8; 8192], 63 << 30, WriteFlags::NONE)
        .expect("write");
    drop(d);
    let t = Instant::now();
    st.publish_draft("big", "", "").expect("publish");
    let publish = t.elapsed();
    let seat = st.seat_overlay("s", "big", 2, 0).expect("seat");
    seat.write_at(&[3u8; 4096], 5 << 30, WriteFlags::FUA)
        .expect("write");
    let t = Instant::now();
    st.reset_seat("s").expect("reset");
    let reset = t.elapsed();
    let t = Instant::now();
    st.set_current("big", 1).expect("rollback");
    let rollback = t.elapsed();
    let limit = Duration::from_millis(500);
    assert!(
        publish < limit && reset < limit && rollback < limit,
        "publish {publish:?} reset {reset:?} rollback {rollback:?}"
    );
    let v2 = st.open_version("big", 2).expect("v2");
    let mut b = [0u8; 4];
    v2.read_at(&mut b, 10 << 30).expect("read");
    assert_eq!(b, [1; 4]);
    v2.read_at(&mut b, 1 << 30).expect("read");
    assert_eq!(b, [0x42; 4]);
    assert!(v2.map_runs() < 16, "runs {}", v2.map_runs());
    let ex = v2.extents(0, size).expect("extents");
    assert!(ex.iter().any(|e| e.kind == ExtentKind::Zero));
    eprintln!("64 GiB: publish {publish:?}, reset {reset:?}, rollback {rollback:?}");
}

#[test]
fn inconsistent_overlay_files_are_discarded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let size = 16 * 4096;
    {
        let st = store(tmp.path());
        let staged = stage(&st, "b.raw", &pattern(size, 1));
        st.import_image("img", &staged, "", "").expect("import");
        let seat = st.seat_overlay("s", "img", 1, 0).expect("seat");
        seat.write_at(&[1u8; 4096], 0, WriteFlags::FUA)
            .expect("write");
    }
    let map = tmp.path().join("seats/s/overlay.0.map");
    let f = fs::OpenOptions::new().write(true).open(&map).expect("open");
    f.set_len(100).expect("truncate");
    drop(f);
    let (st, events) = recording_store(tmp.path(), 0);
    let seat = st.seat_overlay("s", "img", 1, 0).expect("seat");
    assert_eq!(
        read_all(&*seat),
        pattern(size, 1),
        "nothing of the broken overlay applied"
    );
    assert!(
        events
            .lock()
            .iter()
            .any(|e| matches!(e, BlockEvent::OverlayDiscarded { .. }))
    );
}

#[test]
fn version_read_plan_points_at_layer_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = store(tmp.path());
    let size = 16 * 4096;
    let staged = stage(&st, "b.raw", &pattern(size, 1));
    st.import_image("img", &staged, "", "").expect("import");
    let v = st.open_version("img", 1).expect("v");
    assert!(v.caps().read_only && v.caps().extents);
    assert!(matches!(
        v.write_at(&[0], 0, WriteFlags::NONE),
        Err(BlockError::ReadOnly)
    ));
    let plan = v.read_plan(100, 8000).expect("plan");
    assert!(matches!(plan[0], ReadSegment::File { offset: 100, .. }));
    assert_eq!(plan.iter().map(ReadSegment::len).sum::<u64>(), 8000);
    let checked = Checked::new(v);
    assert!(matches!(
        checked.read_at(&mut [0u8; 10], size as u64 - 5),
        Err(BlockError::OutOfRange { .. })
    ));
}

#[test]
fn second_store_on_same_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = store(tmp.path());
    assert!(matches!(
        Store::open(tmp.path(), StoreOptions::default()),
        Err(StoreError::InUse { .. })
    ));
    drop(st);
    store(tmp.path());
}

#[test]
fn store_types_are_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<Overlay>();
    assert_send_sync::<VersionDevice>();
    assert_send_sync::<MemDevice>();
}

#[test]
fn top_layer_lists_what_each_layer_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(dir.path());
    let size = 64 * 4096;
    let base = pattern(size, 3);
    st.import_image("img", &stage(&st, "a.raw", &base), "", "")
        .expect("import");
    let l1 = st.top_layer("img", 1).expect("layer");
    assert!(l1.base);
    assert_eq!(l1.size, size as u64);
    // pattern() leaves three zero blocks at size/4, staged as a hole.
    let z = (size / 4) as u64;
    assert_eq!(
        l1.runs,
        vec![
            LayerRun {
                offset: 0,
                len: z,
                data: true
            },
            LayerRun {
                offset: z,
                len: 3 * 4096,
                data: false
            },
            LayerRun {
                offset: z + 3 * 4096,
                len: size as u64 - z - 3 * 4096,
                data: true
            },
        ]
    );
    let d = st.open_draft("img").expect("draft");
    d.write_at(&[9u8; 8192], 8 * 4096, WriteFlags::NONE)
        .expect("write");
    d.write_zeroes(40 * 4096, 4096, WriteFlags::NONE)
        .expect("zero");
    drop(d);
    st.publish_draft("img", "", "").expect("publish");
    let l2 = st.top_layer("img", 2).expect("layer");
    assert!(!l2.base);
    assert_eq!(
        l2.runs,
        vec![
            LayerRun {
                offset: 8 * 4096,
                len: 8192,
                data: true
            },
            LayerRun {
                offset: 40 * 4096,
                len: 4096,
                data: false
            },
        ]
    );
    let mut b = [0u8; 8192];
    l2.file.read_exact_at(&mut b, 8 * 4096).expect("read");
    assert_eq!(b, [9u8; 8192]);
    assert!(st.open_layer_data("img", &l2.id).is_ok());
    assert!(st.open_layer_data("img", "../x").is_err());
}

#[test]
fn publish_layer_commits_a_layer_beside_the_draft_and_a_failure_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = store(dir.path());
    let size = 32 * 4096;
    let base = pattern(size, 5);
    st.import_image("img", &stage(&st, "a.raw", &base), "", "")
        .expect("import");
    // An admin's draft in progress is neither used nor disturbed.
    let draft = st.open_draft("img").expect("draft");
    draft
        .write_at(&[1u8; 4096], 0, WriteFlags::NONE)
        .expect("write");
    let failed = st.publish_layer("img", 1, "n", "a", &mut |o| {
        o.write_at(&[2u8; 4096], 4096, WriteFlags::NONE)
            .map_err(|e| StoreError::corrupt(Path::new("x"), e.to_string()))?;
        Err(StoreError::corrupt(Path::new("x"), "the transfer failed"))
    });
    assert!(failed.is_err());
    assert_eq!(st.versions("img").expect("versions").len(), 1);
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("images/img"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("incoming."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let v = st
        .publish_layer("img", 1, "from the province", "so", &mut |o| {
            o.write_at(&[2u8; 4096], 4096, WriteFlags::NONE)
                .map_err(|e| StoreError::corrupt(Path::new("x"), e.to_string()))?;
            o.write_zeroes(8192, 4096, WriteFlags::NONE)
                .map_err(|e| StoreError::corrupt(Path::new("x"), e.to_string()))
        })
        .expect("publish layer");
    assert_eq!((v.number, v.layers.len()), (2, 2));
    assert_eq!(st.current_version("img").expect("current"), 2);
    let mut want = base.clone();
    want[4096..8192].fill(2);
    want[8192..12288].fill(0);
    assert_eq!(read_all(&*st.open_version("img", 2).expect("v2")), want);
    // The draft is still the admin's, over version 1.
    assert_eq!(draft.version_uuid(), st.versions("img").expect("v")[0].uuid);
    let mut b = [0u8; 4096];
    draft.read_at(&mut b, 0).expect("read");
    assert_eq!(b, [1u8; 4096]);
    drop(draft);
    drop(st);
    // A folder a crash left mid-transfer goes at the next open.
    fs::create_dir(dir.path().join("images/img/incoming.abc")).expect("mkdir");
    let st = store(dir.path());
    assert!(!dir.path().join("images/img/incoming.abc").exists());
    assert_eq!(st.versions("img").expect("versions").len(), 2);
}

#[test]
fn empty_image_reads_zero_and_its_draft_publishes_as_version_1() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = store(tmp.path());
    // Whole sectors, not whole blocks: a disk's exact size.
    let size = 64 * 4096 + 512;
    for bad in [0, 4096 + 100] {
        assert!(
            matches!(
                st.create_empty_image("blank", bad, "", ""),
                Err(StoreError::InvalidImage { .. })
            ),
            "{bad}"
        );
    }
    let v0 = st
        .create_empty_image("blank", size, "empty disk", "alice")
        .expect("create");
    assert_eq!((v0.number, v0.size, v0.delta_bytes), (0, size, 0));
    assert!(v0.layers.is_empty());
    assert!(matches!(
        st.create_empty_image("blank", size, "", ""),
        Err(StoreError::Exists { .. })
    ));
    let dev = st.open_version("blank", 0).expect("open v0");
    assert!(read_all(&*dev).iter().all(|b| *b == 0));
    let d = st.open_draft("blank").expect("draft");
    let data = pattern(4 * 4096, 7);
    d.write_at(&data, 8 * 4096, WriteFlags::NONE)
        .expect("write");
    drop(d);
    let v1 = st
        .publish_draft("blank", "installed", "bob")
        .expect("publish");
    assert_eq!((v1.number, v1.layers.len()), (1, 1));
    assert_eq!(st.current_version("blank").expect("current"), 1);
    drop(dev);
    // Survives a reopen: version 0 has no layer file to check.
    drop(st);
    let st = store(tmp.path());
    let got = read_all(&*st.open_version("blank", 1).expect("open v1"));
    assert_eq!(&got[8 * 4096..12 * 4096], &data[..]);
    assert!(got[..8 * 4096].iter().all(|b| *b == 0));
    st.delete_version("blank", 0)
        .expect("v0 can go once v1 is current");
}
