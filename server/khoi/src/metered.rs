//! The admin side's end of [`khoi_block::filters::Metered`]: a sink that
//! files a seat's requests with its [`IoMeter`] (for `/metrics` and the
//! dashboard's throughput) and, for NBD, reports when a connection opens and
//! closes (one metered handle per connection).

use std::sync::Arc;
use std::time::Duration;

use khoi_admin::{Activity, IoMeter, IoOp};
use khoi_block::filters::{IoSink, OpKind};

#[derive(Debug)]
pub struct SeatMeter {
    meter: IoMeter,
    /// Set when this handle is one protocol connection (NBD): it reports the
    /// session open now and closed when dropped.
    session: Option<(Arc<Activity>, String)>,
}

impl SeatMeter {
    pub fn new(activity: &Arc<Activity>, seat: &str, proto: &str) -> Self {
        SeatMeter {
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
}

/// The admin meter's name for a request kind.
fn io_op(op: OpKind) -> IoOp {
    match op {
        OpKind::Read => IoOp::Read,
        OpKind::Write => IoOp::Write,
        OpKind::Zero => IoOp::Zero,
        OpKind::Flush => IoOp::Flush,
        OpKind::Trim => IoOp::Trim,
        OpKind::Extents => IoOp::Other,
    }
}

impl IoSink for SeatMeter {
    fn record(&self, op: OpKind, bytes: u64, latency: Option<Duration>) {
        self.meter.record(io_op(op), bytes, latency);
    }
}

impl Drop for SeatMeter {
    fn drop(&mut self) {
        if let Some((activity, proto)) = &self.session {
            activity.disconnected(self.meter.seat(), proto, proto);
        }
    }
}

#[cfg(test)]
mod tests {
    use khoi_admin::Metrics;
    use khoi_block::filters::Metered;
    use khoi_block::{BlockDevice, MemDevice, WriteFlags};

    use super::*;

    /// The value of the sample whose line contains every one of `parts`.
    fn sample(text: &str, parts: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn zeroing_is_its_own_kind_not_a_write_or_a_trim() {
        let activity = Arc::new(Activity::new(Arc::new(Metrics::new())));
        let dev = Metered::new(
            Arc::new(MemDevice::new(8192)),
            SeatMeter::new(&activity, "s1", "nbd"),
        );
        dev.write_zeroes(0, 4096, WriteFlags::NONE)
            .expect("zero a memory device");
        let text = activity.metrics().encode();
        let ops = |op: &str| {
            let label = format!("op=\"{op}\"");
            sample(&text, &["ops", "seat=\"s1\"", &label])
        };
        assert_eq!(ops("zero"), Some(1.0), "{text}");
        assert_eq!(ops("write").unwrap_or(0.0), 0.0, "{text}");
        assert_eq!(ops("trim").unwrap_or(0.0), 0.0, "{text}");
        assert_eq!(
            sample(&text, &["written_bytes_total", "seat=\"s1\""]),
            Some(0.0),
            "zeroing moves no payload: {text}"
        );
    }

    /// A planned read is counted with its bytes, but its latency is not known
    /// at planning time, so the histogram gets no (zero) sample for it.
    #[test]
    fn planned_reads_count_without_a_latency_sample() {
        let activity = Arc::new(Activity::new(Arc::new(Metrics::new())));
        let dev = Metered::new(
            Arc::new(MemDevice::new(8192)),
            SeatMeter::new(&activity, "s1", "nbd"),
        );
        dev.read_plan(0, 4096).expect("plan");
        let mut buf = [0u8; 512];
        dev.read_at(&mut buf, 0).expect("read");
        let text = activity.metrics().encode();
        let read = "op=\"read\"";
        assert_eq!(
            sample(&text, &["ops", "seat=\"s1\"", read]),
            Some(1.0 + 1.0)
        );
        assert_eq!(
            sample(&text, &["read_bytes_total", "seat=\"s1\""]),
            Some(4096.0 + 512.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &["request_latency_seconds_count", read]),
            Some(1.0),
            "only the read_at was timed: {text}"
        );
    }

    #[test]
    fn nbd_handles_are_sessions_while_they_live() {
        let activity = Arc::new(Activity::new(Arc::new(Metrics::new())));
        let sink = SeatMeter::new(&activity, "s1", "nbd").session(&activity, "nbd");
        assert_eq!(activity.total_sessions(), 1);
        drop(sink);
        assert_eq!(activity.total_sessions(), 0);
    }

    #[test]
    fn kinds_map_onto_the_admin_meter() {
        assert_eq!(io_op(OpKind::Read), IoOp::Read);
        assert_eq!(io_op(OpKind::Zero), IoOp::Zero);
        assert_eq!(io_op(OpKind::Trim), IoOp::Trim);
        assert_eq!(io_op(OpKind::Extents), IoOp::Other);
    }
}
