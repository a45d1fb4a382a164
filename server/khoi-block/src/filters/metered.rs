//! Request accounting for the admin side. The layer measures; an [`IoSink`]
//! (in the binary: the admin crate's per-seat meter) decides where numbers go,
//! so this crate does not depend on the admin crate.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::OpKind;
use crate::device::{BlockDevice, DeviceCaps, Extent, ReadSegment, Result, WriteFlags};

/// Where [`Metered`] reports requests that succeeded.
pub trait IoSink: Send + Sync + fmt::Debug {
    /// One request of kind `op` moved `bytes` of payload (0 for requests
    /// that carry none: flush, trim, zero, extents). `latency` is how long
    /// the device took, or `None` when this layer cannot know it.
    fn record(&self, op: OpKind, bytes: u64, latency: Option<Duration>);
}

/// Reports every successful request to its sink.
#[derive(Debug)]
pub struct Metered<S> {
    inner: Arc<dyn BlockDevice>,
    sink: S,
}

impl<S: IoSink> Metered<S> {
    pub fn new(inner: Arc<dyn BlockDevice>, sink: S) -> Self {
        Metered { inner, sink }
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    fn timed<T>(&self, op: OpKind, bytes: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let r = f();
        if r.is_ok() {
            self.sink.record(op, bytes, Some(start.elapsed()));
        }
        r
    }
}

impl<S: IoSink> BlockDevice for Metered<S> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn device_caps(&self) -> DeviceCaps {
        self.inner.device_caps()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = buf.len() as u64;
        self.timed(OpKind::Read, n, || self.inner.read_at(buf, offset))
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        // A plan is a map lookup; the bytes move later, when the frontend
        // sends the segments (sendfile or a copy). Their latency can only be
        // measured there, by the serving seam, so none is recorded here.
        let plan = self.inner.read_plan(offset, len)?;
        self.sink.record(OpKind::Read, len, None);
        Ok(plan)
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        let n = buf.len() as u64;
        self.timed(OpKind::Write, n, || self.inner.write_at(buf, offset, flags))
    }

    fn flush(&self) -> Result<()> {
        self.timed(OpKind::Flush, 0, || self.inner.flush())
    }

    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.timed(OpKind::Trim, 0, || self.inner.trim(offset, len, flags))
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.timed(OpKind::Zero, 0, || {
            self.inner.write_zeroes(offset, len, flags)
        })
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.timed(OpKind::Extents, 0, || self.inner.extents(offset, len))
    }
}
