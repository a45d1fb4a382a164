//! Prometheus metrics (OpenMetrics text at `/metrics`). The registry is
//! shared: the binary registers the totals other crates keep (DHCP, TFTP,
//! NBD) into it with [`Metrics::counters_by`] and friends, read at each
//! scrape, so one scrape shows the whole server.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
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

/// Reads the current totals at each scrape: `(label value, total)` pairs.
type ReadTotals = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// A metric whose values another part of the server keeps itself (the DHCP
/// core in its state, the TFTP and NBD servers in their atomics): read when
/// `/metrics` is scraped, so it is never stale and never copied.
struct ReadAtScrape {
    name: String,
    help: String,
    kind: MetricType,
    /// The label naming each value; `None` for a single unlabelled value.
    label: Option<&'static str>,
    read: ReadTotals,
}

impl std::fmt::Debug for ReadAtScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAtScrape")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ReadAtScrape {
    fn value(&self, m: &mut MetricEncoder, total: u64) -> Result<(), std::fmt::Error> {
        match self.kind {
            MetricType::Gauge => m.encode_gauge(&total),
            _ => m.encode_counter::<NoLabelSet, _, u64>(&total, None),
        }
    }
}

impl Collector for ReadAtScrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(&self.name, &self.help, None, self.kind)?;
        let totals = (self.read)();
        match self.label {
            None => {
                let total = totals.first().map_or(0, |(_, v)| *v);
                self.value(&mut metric, total)?;
            }
            Some(label) => {
                for (value, total) in totals {
                    let labels = [(label, value)];
                    self.value(&mut metric.encode_family(&labels)?, total)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

fn boot_phase_histogram() -> Histogram {
    // 0.1 s .. ~200 s: a DHCP answer up to a disk phase on a cold cache.
    Histogram::new(exponential_buckets(0.1, 2.0, 12))
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
    /// Seconds of each boot phase (`khoi_boot_phase_seconds{phase}`).
    pub boot_phase: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    /// First step seen to the hand-over login, complete boots only.
    pub boot_seconds: Histogram,
    /// Bytes a complete boot read (see `boot_times`).
    pub boot_read_bytes: Histogram,
    /// Boots finished, by whether they reached the hand-over.
    pub boots: Family<OutcomeLabel, Counter>,
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
            boot_phase: Family::new_with_constructor(boot_phase_histogram as fn() -> Histogram),
            boot_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 16 MiB .. 8 GiB.
            boot_read_bytes: Histogram::new(exponential_buckets(16.0 * 1024.0 * 1024.0, 2.0, 10)),
            boots: Family::default(),
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
            r.register(
                "boot_phase_seconds",
                "Time of each boot phase: dhcp, tftp, script, disk",
                m.boot_phase.clone(),
            );
            r.register(
                "boot_seconds",
                "Time from a boot's first step to the hand-over login",
                m.boot_seconds.clone(),
            );
            r.register(
                "boot_read_bytes",
                "Bytes a seat read during its boot",
                m.boot_read_bytes.clone(),
            );
            r.register(
                "boots",
                "Boots finished, by outcome (complete: reached the hand-over)",
                m.boots.clone(),
            );
        }
        m
    }

    /// Add a metric owned by another part of the server (DHCP, TFTP, …);
    /// the name gets the `khoi_` prefix.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// Counters kept elsewhere, read at each scrape:
    /// `khoi_<name>_total{<label>="…"}`, one per pair `read` returns.
    pub fn counters_by(
        &self,
        name: &str,
        help: &str,
        label: &'static str,
        read: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    ) {
        self.read_at_scrape(name, help, MetricType::Counter, Some(label), Box::new(read));
    }

    /// One counter kept elsewhere, read at each scrape: `khoi_<name>_total`.
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let read: ReadTotals = Box::new(move || vec![("", read())]);
        self.read_at_scrape(name, help, MetricType::Counter, None, read);
    }

    /// One gauge kept elsewhere, read at each scrape: `khoi_<name>`.
    pub fn gauge_fn(&self, name: &str, help: &str, read: impl Fn() -> u64 + Send + Sync + 'static) {
        let read: ReadTotals = Box::new(move || vec![("", read())]);
        self.read_at_scrape(name, help, MetricType::Gauge, None, read);
    }

    fn read_at_scrape(
        &self,
        name: &str,
        help: &str,
        kind: MetricType,
        label: Option<&'static str>,
        read: ReadTotals,
    ) {
        // The registry's prefix applies to collectors as to metrics.
        self.registry
            .lock()
            .register_collector(Box::new(ReadAtScrape {
                name: name.to_string(),
                help: help.to_string(),
                kind,
                label,
                read,
            }));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// `# TYPE` of every metric family in an OpenMetrics text, by name; a
/// family declared twice is an error (each total must reach a scrape once).
pub fn declared_types(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut types = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest
            .split_once(' ')
            .ok_or_else(|| format!("bad line {line:?}"))?;
        if types.insert(name.to_string(), kind.to_string()).is_some() {
            return Err(format!("{name} is declared twice"));
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn totals_kept_elsewhere_are_counters_read_at_scrape() {
        let m = Metrics::new();
        let offers = Arc::new(AtomicU64::new(3));
        let o = Arc::clone(&offers);
        m.counters_by("dhcp_packets", "DHCP packets", "kind", move || {
            vec![("offer", o.load(Ordering::Relaxed)), ("garbage", 1)]
        });
        let active = Arc::new(AtomicU64::new(2));
        let a = Arc::clone(&active);
        m.gauge_fn(
            "nbd_connections_active",
            "Open NBD connections",
            move || a.load(Ordering::Relaxed),
        );
        m.counter_fn("nbd_requests", "NBD requests", || 7);
        offers.store(5, Ordering::Relaxed);
        active.store(1, Ordering::Relaxed);
        let text = m.encode();
        // The value of the scrape, not of registration.
        assert!(
            text.contains("khoi_dhcp_packets_total{kind=\"offer\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("khoi_dhcp_packets_total{kind=\"garbage\"} 1"),
            "{text}"
        );
        assert!(text.contains("khoi_nbd_connections_active 1\n"), "{text}");
        assert!(text.contains("khoi_nbd_requests_total 7\n"), "{text}");
        let types = declared_types(&text).expect("each family once");
        assert_eq!(types["khoi_dhcp_packets"], "counter");
        assert_eq!(types["khoi_nbd_requests"], "counter");
        assert_eq!(types["khoi_nbd_connections_active"], "gauge");
        assert_eq!(types["khoi_admin_login_failures"], "counter");
        assert!(declared_types("# TYPE a counter\n# TYPE a gauge\n").is_err());
    }
}
