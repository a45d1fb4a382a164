//! A block device that tells the admin side what a seat is doing: requests
//! (for `/metrics` and the dashboard's throughput) and, for NBD, when a
//! connection opens and closes (one metered handle per connection).

use std::sync::Arc;
use std::time::Instant;

use khoi_admin::{Activity, IoMeter, IoOp};
use khoi_block::device::Result;
use khoi_block::{BlockDevice, Caps, Extent, ReadSegment, WriteFlags};

#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn BlockDevice>,
    meter: IoMeter,
    /// Set when this handle is one protocol connection (NBD): it reports the
    /// session open now and closed when dropped.
    session: Option<(Arc<Activity>, String)>,
}

impl Metered {
    pub fn new(
        inner: Arc<dyn BlockDevice>,
        activity: &Arc<Activity>,
        seat: &str,
        proto: &str,
    ) -> Self {
        Metered {
            inner,
            meter: activity.meter(seat, proto),
            session: None,
        }
    }

    /// Also count this handle as an open session of the seat.
    pub fn session(mut self, activity: &Arc<Activity>, proto: &str) -> Self {
        activity.connected(self.meter.seat(), proto, proto);
        self.session = Some((Arc::clone(activity), proto.to_string()));
        self
    }

    fn timed<T>(&self, op: IoOp, bytes: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let r = f();
        if r.is_ok() {
            self.meter.record(op, bytes, start.elapsed());
        }
        r
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some((activity, proto)) = &self.session {
            activity.disconnected(self.meter.seat(), proto, proto);
        }
    }
}

impl BlockDevice for Metered {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn caps(&self) -> Caps {
        self.inner.caps()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = buf.len() as u64;
        self.timed(IoOp::Read, n, || self.inner.read_at(buf, offset))
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.timed(IoOp::Read, len, || self.inner.read_plan(offset, len))
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        let n = buf.len() as u64;
        self.timed(IoOp::Write, n, || self.inner.write_at(buf, offset, flags))
    }

    fn flush(&self) -> Result<()> {
        self.timed(IoOp::Flush, 0, || self.inner.flush())
    }

    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.timed(IoOp::Trim, 0, || self.inner.trim(offset, len, flags))
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.timed(IoOp::Trim, 0, || {
            self.inner.write_zeroes(offset, len, flags)
        })
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.timed(IoOp::Other, 0, || self.inner.extents(offset, len))
    }
}
