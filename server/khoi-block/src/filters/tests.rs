#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::*;
use crate::testing::{Call, Spy};
use crate::{BlockDevice, BlockError, Checked, DeviceCaps, Level, MemDevice, WriteFlags};

fn mem(size: u64) -> Arc<MemDevice> {
    Arc::new(MemDevice::new(size))
}

fn is_eio(r: crate::device::Result<()>) -> bool {
    matches!(r, Err(BlockError::Io(e)) if e.raw_os_error() == Some(libc::EIO))
}

#[test]
fn fault_fails_only_the_chosen_kinds_and_range() {
    let f = Fault::new(
        mem(8192),
        FaultRule::new(FaultError::Io(libc::EIO))
            .ops(&OpKind::WRITES)
            .range(4096..8192),
    );
    let mut buf = [0u8; 512];
    assert!(f.read_at(&mut buf, 4096).is_ok(), "reads are not chosen");
    assert!(f.write_at(&[1; 512], 0, WriteFlags::NONE).is_ok());
    assert!(is_eio(f.write_at(&[1; 512], 4000, WriteFlags::NONE)));
    assert!(is_eio(f.write_zeroes(5000, 10, WriteFlags::NONE)));
    assert!(matches!(
        f.trim(4096, 512, WriteFlags::NONE),
        Err(BlockError::Io(_))
    ));
    assert!(f.flush().is_ok(), "flush has no range");
    assert_eq!(f.injected(), 3);
}

#[test]
fn fault_every_nth_and_arming() {
    let f = Fault::new(
        mem(4096),
        FaultRule::new(FaultError::NoSpace)
            .ops(&[OpKind::Write])
            .trigger(Trigger::EveryNth(3)),
    );
    let results: Vec<bool> = (0..7)
        .map(|_| f.write_at(&[1], 0, WriteFlags::NONE).is_ok())
        .collect();
    assert_eq!(results, [true, true, false, true, true, false, true]);
    assert!(matches!(
        f.write_at(&[1], 0, WriteFlags::NONE),
        Ok(()) // 8th
    ));
    assert!(matches!(
        f.write_at(&[1], 0, WriteFlags::NONE),
        Err(BlockError::NoSpace(_))
    ));
    f.disarm();
    assert!(!f.is_armed());
    assert!((0..10).all(|_| f.write_at(&[1], 0, WriteFlags::NONE).is_ok()));
    f.arm();
    f.set_rule(FaultRule::new(FaultError::Gone));
    let mut buf = [0u8; 1];
    assert!(matches!(f.read_at(&mut buf, 0), Err(BlockError::Gone)));
    assert!(matches!(f.flush(), Err(BlockError::Gone)));
}

#[test]
fn fault_probability_is_reproducible_from_its_seed() {
    let run = |p: f64, seed: u64| -> Vec<bool> {
        let f = Fault::new(
            mem(4096),
            FaultRule::new(FaultError::Io(libc::EIO)).trigger(Trigger::Probability { p, seed }),
        );
        (0..200).map(|_| f.flush().is_err()).collect()
    };
    let a = run(0.3, 42);
    assert_eq!(a, run(0.3, 42));
    assert_ne!(a, run(0.3, 43));
    let failed = a.iter().filter(|&&x| x).count();
    assert!((30..90).contains(&failed), "{failed} of 200 at p=0.3");
    assert!(run(0.0, 1).iter().all(|&x| !x));
    assert!(run(1.0, 1).iter().all(|&x| x));
}

#[test]
fn a_failing_flush_fails_an_emulated_fua_write() {
    let spy = Arc::new(Spy::new(mem(4096)).with_caps(DeviceCaps {
        read_only: false,
        flush: true,
        fua: Level::None,
        trim: true,
        zero: Level::Native,
        extents: true,
        multi_conn: true,
        write_granularity: 1,
    }));
    let fault = Arc::new(Fault::new(
        spy.clone(),
        FaultRule::new(FaultError::Io(libc::EIO)).ops(&[OpKind::Flush]),
    ));
    let dev = Checked::new(fault);
    assert!(dev.write_at(&[1; 512], 0, WriteFlags::NONE).is_ok());
    assert!(is_eio(dev.write_at(&[1; 512], 0, WriteFlags::FUA)));
    // The write reached the device; only the flush behind it failed.
    assert_eq!(
        spy.take(),
        [
            Call::Write {
                offset: 0,
                len: 512,
                fua: false
            },
            Call::Write {
                offset: 0,
                len: 512,
                fua: false
            }
        ]
    );
}

#[test]
fn delay_sleeps_only_for_configured_kinds() {
    let d = Delay::new(mem(4096)).with(OpKind::Flush, Duration::from_millis(40));
    assert_eq!(d.get(OpKind::Flush), Duration::from_millis(40));
    assert_eq!(d.get(OpKind::Read), Duration::ZERO);
    let t = Instant::now();
    d.flush().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(40));
    d.set(OpKind::Flush, Duration::ZERO);
    d.set(OpKind::Read, Duration::from_millis(30));
    let t = Instant::now();
    let mut buf = [0u8; 8];
    d.read_at(&mut buf, 0).unwrap();
    d.read_plan(0, 8).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(60));
    // Data still passes through.
    d.write_at(&[5; 8], 0, WriteFlags::NONE).unwrap();
    d.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [5; 8]);
}

#[derive(Debug, Default)]
struct Log(Mutex<Vec<(OpKind, u64, Option<Duration>)>>);

impl IoSink for Arc<Log> {
    fn record(&self, op: OpKind, bytes: u64, latency: Option<Duration>) {
        self.0.lock().push((op, bytes, latency));
    }
}

#[test]
fn metered_reports_bytes_moved_and_real_latency_only() {
    let log = Arc::new(Log::default());
    let inner = Arc::new(Delay::new(mem(8192)).with(OpKind::Write, Duration::from_millis(5)));
    let m = Metered::new(inner, log.clone());
    m.read_plan(0, 4096).unwrap();
    let mut buf = [0u8; 512];
    m.read_at(&mut buf, 0).unwrap();
    m.write_at(&[1; 1024], 0, WriteFlags::NONE).unwrap();
    m.write_zeroes(0, 4096, WriteFlags::NONE).unwrap();
    m.trim(0, 4096, WriteFlags::NONE).unwrap();
    m.flush().unwrap();
    m.extents(0, 4096).unwrap();
    let got = log.0.lock().clone();
    let kinds: Vec<(OpKind, u64, bool)> = got.iter().map(|r| (r.0, r.1, r.2.is_some())).collect();
    assert_eq!(
        kinds,
        [
            // A plan is a lookup: its bytes count, its time does not.
            (OpKind::Read, 4096, false),
            (OpKind::Read, 512, true),
            (OpKind::Write, 1024, true),
            // Zeroing is its own kind, not a trim.
            (OpKind::Zero, 0, true),
            (OpKind::Trim, 0, true),
            (OpKind::Flush, 0, true),
            (OpKind::Extents, 0, true),
        ]
    );
    assert!(got[2].2.unwrap() >= Duration::from_millis(5));
}

#[test]
fn metered_skips_failed_requests() {
    let log = Arc::new(Log::default());
    let fault = Arc::new(Fault::new(mem(4096), FaultRule::new(FaultError::NoSpace)));
    let m = Metered::new(fault.clone(), log.clone());
    assert!(m.write_at(&[1], 0, WriteFlags::NONE).is_err());
    assert!(m.read_plan(0, 512).is_err());
    assert!(log.0.lock().is_empty());
    fault.disarm();
    m.write_at(&[1], 0, WriteFlags::NONE).unwrap();
    assert_eq!(log.0.lock().len(), 1);
}

#[test]
fn a_scratch_file_disk_serves_through_checked_with_emulation() {
    use crate::testing::FileDisk;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let disk = Arc::new(FileDisk::create(&path, 1 << 20).unwrap());
    let spy = Arc::new(Spy::new(disk));
    let dev = Checked::new(spy.clone());
    let caps = dev.caps();
    assert!(!caps.read_only && caps.fua && !caps.zero && caps.flush);
    dev.write_at(&[3; 4096], 8192, WriteFlags::FUA).unwrap();
    dev.write_zeroes(8192, 100, WriteFlags::NONE).unwrap();
    let mut buf = [9u8; 4096];
    dev.read_at(&mut buf, 8192).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 0));
    assert!(buf[100..].iter().all(|&b| b == 3));
    assert_eq!(
        spy.take()[..3],
        [
            Call::Write {
                offset: 8192,
                len: 4096,
                fua: false
            },
            Call::Flush,
            Call::Write {
                offset: 8192,
                len: 100,
                fua: false
            },
        ]
    );
    let ro = Checked::new(Arc::new(FileDisk::open(&path).unwrap()));
    assert!(ro.caps().read_only);
    assert!(matches!(
        ro.write_at(&[1], 0, WriteFlags::NONE),
        Err(BlockError::ReadOnly)
    ));
    ro.read_at(&mut buf, 8192).unwrap();
    assert_eq!(buf[100], 3);
}
