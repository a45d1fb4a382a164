//! nbdkit's `delay` filter: a fixed sleep before each request of chosen
//! kinds, to make timeouts, slow disks and request overlap reproducible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::OpKind;
use crate::device::{BlockDevice, DeviceCaps, Extent, ReadSegment, Result, WriteFlags};

/// Sleeps a configured duration per [`OpKind`] before passing the request on.
/// Durations can be changed while requests run.
#[derive(Debug)]
pub struct Delay {
    inner: Arc<dyn BlockDevice>,
    /// Nanoseconds per op kind, indexed by `OpKind::index`.
    nanos: [AtomicU64; 6],
}

impl Delay {
    /// No delay on anything until [`Delay::with`] or [`Delay::set`].
    pub fn new(inner: Arc<dyn BlockDevice>) -> Delay {
        Delay {
            inner,
            nanos: Default::default(),
        }
    }

    pub fn with(self, op: OpKind, delay: Duration) -> Delay {
        self.set(op, delay);
        self
    }

    pub fn set(&self, op: OpKind, delay: Duration) {
        let n = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[op.index()].store(n, Ordering::Relaxed);
    }

    pub fn get(&self, op: OpKind) -> Duration {
        Duration::from_nanos(self.nanos[op.index()].load(Ordering::Relaxed))
    }

    fn wait(&self, op: OpKind) {
        let d = self.get(op);
        if !d.is_zero() {
            // Requests run on blocking threads, so sleeping the thread is
            // exactly what a slow disk does.
            std::thread::sleep(d);
        }
    }
}

impl BlockDevice for Delay {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn device_caps(&self) -> DeviceCaps {
        self.inner.device_caps()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.wait(OpKind::Read);
        self.inner.read_at(buf, offset)
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.wait(OpKind::Read);
        self.inner.read_plan(offset, len)
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        self.wait(OpKind::Write);
        self.inner.write_at(buf, offset, flags)
    }

    fn flush(&self) -> Result<()> {
        self.wait(OpKind::Flush);
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.wait(OpKind::Trim);
        self.inner.trim(offset, len, flags)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.wait(OpKind::Zero);
        self.inner.write_zeroes(offset, len, flags)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.wait(OpKind::Extents);
        self.inner.extents(offset, len)
    }
}
