//! Prometheus metrics (OpenMetrics text at `/metrics`). The registry is
//! shared: the binary registers the DHCP/TFTP counters of other crates into
//! it with [`Metrics::register`], so one scrape shows the whole server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use parking_lot::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeatProto {
    pub seat: String,
    pub proto: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeatProtoOp {
    pub seat: String,
    pub proto: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtoOp {
    pub proto: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeatLabel {
    pub seat: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Totals another part of the server keeps itself (DHCP counts packets in
/// its sans-I/O core), copied in by kind whenever the owner publishes them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    family: Family<KindLabel, Gauge>,
}

impl Snapshot {
    pub fn set(&self, kind: &str, value: u64) {
        self.family
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    pub trigger: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~3 s: a page-cache hit up to a stalled disk.
    Histogram::new(exponential_buckets(0.000_05, 3.0, 11))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub sessions: Family<SeatProto, Gauge>,
    pub bytes_read: Family<SeatProto, Counter>,
    pub bytes_written: Family<SeatProto, Counter>,
    pub ops: Family<SeatProtoOp, Counter>,
    pub latency: Family<ProtoOp, Histogram, fn() -> Histogram>,
    pub overlay_bytes: Family<SeatLabel, Gauge>,
    pub resets: Family<TriggerLabel, Counter>,
    pub logins_failed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("khoi")),
            sessions: Family::default(),
            bytes_read: Family::default(),
            bytes_written: Family::default(),
            ops: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            overlay_bytes: Family::default(),
            resets: Family::default(),
            logins_failed: Counter::default(),
        };
        {
            let mut r = m.registry.lock();
            r.register(
                "sessions",
                "Open protocol sessions per seat",
                m.sessions.clone(),
            );
            r.register("read_bytes", "Bytes read by seats", m.bytes_read.clone());
            r.register(
                "written_bytes",
                "Bytes written by seats",
                m.bytes_written.clone(),
            );
            r.register("ops", "Block requests served", m.ops.clone());
            r.register(
                "request_latency_seconds",
                "Time to serve a block request",
                m.latency.clone(),
            );
            r.register(
                "overlay_bytes",
                "Bytes held in each seat's overlay",
                m.overlay_bytes.clone(),
            );
            r.register("seat_resets", "Seat resets", m.resets.clone());
            r.register(
                "admin_login_failures",
                "Failed admin logins",
                m.logins_failed.clone(),
            );
        }
        m
    }

    /// Add a metric owned by another part of the server (DHCP, TFTP, …);
    /// the name gets the `khoi_` prefix.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// A [`Snapshot`] registered as `khoi_<name>{kind="…"}`.
    pub fn snapshot(&self, name: &str, help: &str) -> Snapshot {
        let snap = Snapshot::default();
        self.register(name, help, snap.family.clone());
        snap
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    #[test]
    fn snapshots_are_scraped_by_kind() {
        let m = Metrics::new();
        let dhcp = m.snapshot("dhcp_packets", "DHCP packets");
        dhcp.set("offer", 3);
        dhcp.set("offer", 5);
        dhcp.set("garbage", 1);
        let text = m.encode();
        assert!(
            text.contains("khoi_dhcp_packets{kind=\"offer\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("khoi_dhcp_packets{kind=\"garbage\"} 1"),
            "{text}"
        );
    }
}
