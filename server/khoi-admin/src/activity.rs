//! What the protocol servers tell the admin side about seats: sessions
//! opening and closing, I/O, and boot-script fetches. It drives the
//! dashboard's seat state and throughput and the Prometheus counters.
//!
//! The protocol crates know nothing of this type; the binary calls it from
//! its wiring (see the crate README for the calls).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::{Metrics, ProtoOp, SeatProto, SeatProtoOp};

/// A booting seat that has not opened a session for this long is offline
/// again (it failed to boot, or was switched off at the boot menu).
const BOOT_GRACE: Duration = Duration::from_secs(180);
/// A session this young after a boot-script fetch is still the boot.
const BOOT_SETTLE: Duration = Duration::from_secs(60);
/// A seat that moved data this recently is still on, sessions or not (a
/// session that just dropped, a tool's NBD handle that reads in bursts).
pub const RECENT_IO: Duration = Duration::from_secs(600);
/// Throughput is measured over windows of this length.
const RATE_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeatState {
    Offline,
    Booting,
    Online,
    Maintenance,
    /// Fenced after a change of its disk: every login is refused until the
    /// seat reboots.
    Fenced,
}

impl SeatState {
    pub fn as_str(self) -> &'static str {
        match self {
            SeatState::Offline => "offline",
            SeatState::Booting => "booting",
            SeatState::Online => "online",
            SeatState::Maintenance => "maintenance",
            SeatState::Fenced => "fenced",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    Trim,
    /// Write-zeroes: changes data without carrying any.
    Zero,
    Other,
}

impl IoOp {
    const ALL: [IoOp; 6] = [
        IoOp::Read,
        IoOp::Write,
        IoOp::Flush,
        IoOp::Trim,
        IoOp::Zero,
        IoOp::Other,
    ];

    fn index(self) -> usize {
        match self {
            IoOp::Read => 0,
            IoOp::Write => 1,
            IoOp::Flush => 2,
            IoOp::Trim => 3,
            IoOp::Zero => 4,
            IoOp::Other => 5,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Trim => "trim",
            IoOp::Zero => "zero",
            IoOp::Other => "other",
        }
    }
}

#[derive(Debug, Default)]
struct Live {
    /// (protocol, peer) of each open session.
    sessions: Vec<(String, String)>,
    booting_at: Option<Instant>,
    session_since: Option<Instant>,
    last_boot_unix: Option<i64>,
    window_start: Option<Instant>,
    window_read: u64,
    window_written: u64,
    rate_read: u64,
    rate_written: u64,
    rate_at: Option<Instant>,
    /// The last time the seat's reads or writes were counted.
    last_io: Option<Instant>,
}

/// A seat's live view for the dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveView {
    pub online: bool,
    pub booting: bool,
    pub sessions: usize,
    pub peers: Vec<String>,
    pub last_boot: Option<i64>,
    /// Bytes per second over the last couple of seconds.
    pub read_rate: u64,
    pub write_rate: u64,
}

#[derive(Debug)]
pub struct Activity {
    seats: Mutex<HashMap<String, Live>>,
    metrics: Arc<Metrics>,
    boots: crate::boot_times::BootClock,
}

impl Activity {
    pub fn new(metrics: Arc<Metrics>) -> Activity {
        Activity {
            seats: Mutex::new(HashMap::new()),
            boots: crate::boot_times::BootClock::new(Arc::clone(&metrics)),
            metrics,
        }
    }

    /// The seats' boots in progress (boot times).
    pub fn boots(&self) -> &crate::boot_times::BootClock {
        &self.boots
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A session of `seat` opened (`proto` = "iscsi" or "nbd").
    pub fn connected(&self, seat: &str, proto: &str, peer: &str) {
        let mut seats = self.seats.lock();
        let live = seats.entry(seat.to_string()).or_default();
        live.sessions.push((proto.to_string(), peer.to_string()));
        if live.session_since.is_none() {
            live.session_since = Some(Instant::now());
        }
        self.metrics
            .sessions
            .get_or_create(&label(seat, proto))
            .inc();
    }

    pub fn disconnected(&self, seat: &str, proto: &str, peer: &str) {
        let mut seats = self.seats.lock();
        if let Some(live) = seats.get_mut(seat)
            && let Some(i) = live
                .sessions
                .iter()
                .position(|(p, a)| p == proto && a == peer)
        {
            live.sessions.swap_remove(i);
            if live.sessions.is_empty() {
                live.session_since = None;
            }
            self.metrics
                .sessions
                .get_or_create(&label(seat, proto))
                .dec();
        }
    }

    /// The seat fetched its boot script: it is (re)booting now.
    /// The last boot known from the event log, for a server that just
    /// started: a later `booting` replaces it.
    pub fn seed_last_boot(&self, seat: &str, unix: i64) {
        let mut seats = self.seats.lock();
        let live = seats.entry(seat.to_string()).or_default();
        live.last_boot_unix.get_or_insert(unix);
    }

    pub fn booting(&self, seat: &str) {
        let mut seats = self.seats.lock();
        let live = seats.entry(seat.to_string()).or_default();
        live.booting_at = Some(Instant::now());
        live.last_boot_unix = Some(unix_now());
    }

    /// A meter for one seat and protocol, made once per opened device: the
    /// per-request path then only bumps atomics (the metric families hand
    /// out shared counters), and the seat table's lock is taken at most once
    /// per rate window instead of once per request.
    pub fn meter(self: &Arc<Self>, seat: &str, proto: &str) -> IoMeter {
        let sp = label(seat, proto);
        let per_op = |op: IoOp| {
            let ops = self
                .metrics
                .ops
                .get_or_create(&SeatProtoOp {
                    seat: seat.to_string(),
                    proto: proto.to_string(),
                    op: op.as_str().to_string(),
                })
                .clone();
            let latency = self
                .metrics
                .latency
                .get_or_create(&ProtoOp {
                    proto: proto.to_string(),
                    op: op.as_str().to_string(),
                })
                .clone();
            (ops, latency)
        };
        IoMeter {
            activity: Arc::clone(self),
            seat: seat.to_string(),
            read_bytes: self.metrics.bytes_read.get_or_create(&sp).clone(),
            written_bytes: self.metrics.bytes_written.get_or_create(&sp).clone(),
            per_op: IoOp::ALL.map(per_op),
            pending_read: AtomicU64::new(0),
            pending_written: AtomicU64::new(0),
            born: Instant::now(),
            last_fold_ms: AtomicU64::new(0),
        }
    }

    /// Fold bytes a meter accumulated into the seat's throughput window.
    fn fold(&self, seat: &str, read: u64, written: u64) {
        let now = Instant::now();
        let mut seats = self.seats.lock();
        let live = seats.entry(seat.to_string()).or_default();
        let start = *live.window_start.get_or_insert(now);
        live.last_io = Some(now);
        live.window_read += read;
        live.window_written += written;
        let elapsed = now.duration_since(start);
        if elapsed >= RATE_WINDOW {
            let secs = elapsed.as_secs_f64();
            live.rate_read = per_second(live.window_read, secs);
            live.rate_written = per_second(live.window_written, secs);
            live.rate_at = Some(now);
            live.window_start = Some(now);
            live.window_read = 0;
            live.window_written = 0;
        }
    }

    /// One block request served for `seat`.
    pub fn io(&self, seat: &str, proto: &str, op: IoOp, bytes: u64, latency: Duration) {
        let sp = label(seat, proto);
        match op {
            IoOp::Read => {
                self.metrics.bytes_read.get_or_create(&sp).inc_by(bytes);
            }
            IoOp::Write => {
                self.metrics.bytes_written.get_or_create(&sp).inc_by(bytes);
            }
            _ => {}
        }
        self.metrics
            .ops
            .get_or_create(&SeatProtoOp {
                seat: seat.to_string(),
                proto: proto.to_string(),
                op: op.as_str().to_string(),
            })
            .inc();
        self.metrics
            .latency
            .get_or_create(&ProtoOp {
                proto: proto.to_string(),
                op: op.as_str().to_string(),
            })
            .observe(latency.as_secs_f64());
        match op {
            IoOp::Read => self.fold(seat, bytes, 0),
            IoOp::Write => self.fold(seat, 0, bytes),
            _ => {}
        }
    }

    pub fn live(&self, seat: &str) -> LiveView {
        let now = Instant::now();
        let seats = self.seats.lock();
        let Some(l) = seats.get(seat) else {
            return LiveView::default();
        };
        let online = !l.sessions.is_empty();
        let booting = match l.booting_at {
            Some(b) if now.duration_since(b) < BOOT_GRACE => match l.session_since {
                // Sessions opened by the boot (iPXE, then Windows) count as
                // booting until they have run for a while.
                Some(s) => now.duration_since(s) < BOOT_SETTLE,
                None => true,
            },
            _ => false,
        };
        let fresh = l
            .rate_at
            .is_some_and(|t| now.duration_since(t) < RATE_WINDOW * 2);
        LiveView {
            online,
            booting,
            sessions: l.sessions.len(),
            peers: l.sessions.iter().map(|(p, a)| format!("{p} {a}")).collect(),
            last_boot: l.last_boot_unix,
            read_rate: if fresh { l.rate_read } else { 0 },
            write_rate: if fresh { l.rate_written } else { 0 },
        }
    }

    pub fn state(&self, seat: &str, maintenance: bool) -> SeatState {
        let l = self.live(seat);
        if maintenance {
            SeatState::Maintenance
        } else if l.booting {
            SeatState::Booting
        } else if l.online {
            SeatState::Online
        } else {
            SeatState::Offline
        }
    }

    /// Whether any session of the seat is open (the nightly reset and
    /// publish refuse to pull a disk from under a running Windows).
    pub fn is_online(&self, seat: &str) -> bool {
        self.seats
            .lock()
            .get(seat)
            .is_some_and(|l| !l.sessions.is_empty())
    }

    /// Whether the seat is still on: a session is open, or it read or
    /// wrote within [`RECENT_IO`] (what the nightly reset reports).
    pub fn still_on(&self, seat: &str) -> bool {
        self.still_on_at(seat, Instant::now())
    }

    fn still_on_at(&self, seat: &str, now: Instant) -> bool {
        self.seats.lock().get(seat).is_some_and(|l| {
            !l.sessions.is_empty()
                || l.last_io
                    .is_some_and(|t| now.saturating_duration_since(t) < RECENT_IO)
        })
    }

    pub fn total_sessions(&self) -> usize {
        self.seats.lock().values().map(|l| l.sessions.len()).sum()
    }
}

fn label(seat: &str, proto: &str) -> SeatProto {
    SeatProto {
        seat: seat.to_string(),
        proto: proto.to_string(),
    }
}

fn per_second(bytes: u64, secs: f64) -> u64 {
    if secs <= 0.0 {
        return 0;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let r = (bytes as f64 / secs) as u64;
    r
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_boot_survives_a_restart_through_seeding() {
        let a = Activity::new(Arc::new(Metrics::new()));
        a.seed_last_boot("q1", 1_700_000_000);
        a.seed_last_boot("q1", 1_600_000_000);
        assert_eq!(
            a.live("q1").last_boot,
            Some(1_700_000_000),
            "newest seed wins"
        );
        a.booting("q1");
        assert!(a.live("q1").last_boot.is_some_and(|t| t > 1_700_000_000));
        assert_eq!(a.live("q2").last_boot, None);
    }

    #[test]
    fn still_on_is_a_session_or_recent_io() {
        let a = Activity::new(Arc::new(Metrics::new()));
        assert!(!a.still_on("s1"));
        a.connected("s1", "iscsi", "10.0.0.5:5000");
        assert!(a.still_on("s1"));
        a.disconnected("s1", "iscsi", "10.0.0.5:5000");
        assert!(!a.still_on("s1"), "no session, never any I/O");
        // A meter's bytes reach the seat when it folds them (at the latest
        // when it goes away).
        let m = Arc::new(a);
        drop({
            let meter = m.meter("s2", "nbd");
            meter.record(IoOp::Write, 512, Some(Duration::from_micros(10)));
            meter
        });
        assert!(m.still_on("s2"), "wrote just now");
        let later = Instant::now() + RECENT_IO;
        assert!(!m.still_on_at("s2", later), "quiet for {RECENT_IO:?}");
    }

    #[test]
    fn sessions_drive_state_and_metrics() {
        let a = Activity::new(Arc::new(Metrics::new()));
        assert_eq!(a.state("s1", false), SeatState::Offline);
        a.booting("s1");
        assert_eq!(a.state("s1", false), SeatState::Booting);
        a.connected("s1", "iscsi", "10.0.0.5:5000");
        assert!(a.is_online("s1"));
        assert_eq!(a.state("s1", true), SeatState::Maintenance);
        a.io("s1", "iscsi", IoOp::Read, 4096, Duration::from_micros(80));
        assert_eq!(a.total_sessions(), 1);
        let text = a.metrics().encode();
        assert!(
            text.contains("khoi_read_bytes_total{seat=\"s1\",proto=\"iscsi\"} 4096"),
            "{text}"
        );
        assert!(
            text.contains("khoi_sessions{seat=\"s1\",proto=\"iscsi\"} 1"),
            "{text}"
        );
        a.disconnected("s1", "iscsi", "10.0.0.5:5000");
        assert!(!a.is_online("s1"));
        assert!(a.live("s1").last_boot.is_some());
    }
}

/// Per-device I/O accounting; see [`Activity::meter`].
#[derive(Debug)]
pub struct IoMeter {
    activity: Arc<Activity>,
    seat: String,
    read_bytes: Counter,
    written_bytes: Counter,
    per_op: [(Counter, Histogram); 6],
    pending_read: AtomicU64,
    pending_written: AtomicU64,
    born: Instant,
    last_fold_ms: AtomicU64,
}

/// How often a busy meter folds its bytes into the dashboard's rates.
const FOLD_EVERY_MS: u64 = 250;

impl IoMeter {
    pub fn seat(&self) -> &str {
        &self.seat
    }

    /// One request; `latency` is `None` when the layer that saw it cannot
    /// know how long it took (a planned read: its bytes move later), so the
    /// latency histogram only holds real measurements.
    pub fn record(&self, op: IoOp, bytes: u64, latency: Option<Duration>) {
        let (ops, hist) = &self.per_op[op.index()];
        ops.inc();
        if let Some(l) = latency {
            hist.observe(l.as_secs_f64());
        }
        match op {
            IoOp::Read => {
                self.read_bytes.inc_by(bytes);
                self.pending_read.fetch_add(bytes, Ordering::Relaxed);
            }
            IoOp::Write => {
                self.written_bytes.inc_by(bytes);
                self.pending_written.fetch_add(bytes, Ordering::Relaxed);
            }
            _ => {}
        }
        let now_ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_fold_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= FOLD_EVERY_MS
            && self
                .last_fold_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.flush_rates();
        }
    }

    fn flush_rates(&self) {
        let read = self.pending_read.swap(0, Ordering::AcqRel);
        let written = self.pending_written.swap(0, Ordering::AcqRel);
        if read > 0 || written > 0 {
            self.activity.fold(&self.seat, read, written);
        }
    }
}

impl Drop for IoMeter {
    fn drop(&mut self) {
        self.flush_rates();
    }
}
