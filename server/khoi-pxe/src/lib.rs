//! Khoi's network-boot front door.
//!
//! Boot chain: PXE ROM → DHCP ([`dhcp`], proxy or authoritative) → TFTP iPXE binary
//! ([`tftp`]) → HTTP per-seat iPXE script ([`http`]) → `sanboot` from Khoi's iSCSI target.
//!
//! Layering follows the repository's style guide: [`wire`] is a sans-I/O view/Repr pair,
//! [`dhcp::DhcpCore`] is a sans-I/O state machine that takes `(now, datagram)` and returns the
//! reply to send, and only [`net`] touches sockets. The binary supplies a [`BootDirectory`]
//! (seats and leases, backed by SQLite) and wires [`run`] into its runtime.

// Tests may unwrap; library code may not (workspace lint).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod dhcp;
pub mod http;
pub mod neigh;
pub mod net;
pub mod script;
pub mod tftp;
pub mod wire;

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use config::{
    BootFiles, BootNetworks, ConfigError, DhcpMode, ListError, NetworkKind, NetworksError, Pool,
    PxeConfig,
};
pub use dhcp::{DhcpCore, DhcpStats, Received, Transmit};
pub use net::{DhcpSockets, NetError};

/// Default prefix for seat initiator names; the binary may use another.
pub const DEFAULT_INITIATOR_PREFIX: &str = "iqn.2025-07.vn.khoi.initiator";

/// `iqn.2025-07.vn.khoi.initiator:<seat>`.
pub fn default_initiator_iqn(seat: &str) -> String {
    format!("{DEFAULT_INITIATOR_PREFIX}:{seat}")
}

/// What a seat boots: everything the iPXE script and DHCP need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatBoot {
    pub seat: String,
    pub mac: [u8; 6],
    pub target_iqn: String,
    /// The iSCSI portal the seat logs into (Khoi's target).
    pub portal: SocketAddrV4,
    pub initiator_iqn: String,
    /// One-way CHAP `(username, secret)` the initiator presents.
    pub chap: Option<(String, String)>,
    /// Mutual CHAP `(username, secret)` the target presents back.
    pub mutual_chap: Option<(String, String)>,
    /// Authoritative mode: a fixed address instead of one from the pool.
    pub reserved_ip: Option<Ipv4Addr>,
}

/// A capture-mode boot: the environment's token and the image it makes.
#[derive(Clone, PartialEq, Eq)]
pub struct CaptureBoot {
    pub token: String,
    pub image: String,
}

impl fmt::Debug for CaptureBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureBoot")
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

/// An address bound to a MAC in authoritative mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// Seconds since the Unix epoch.
    pub expires_unix: u64,
}

impl Lease {
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_unix <= unix_secs(now)
    }
}

/// Seats and leases, implemented by the binary over its SQLite state.
///
/// Calls are synchronous and may block briefly (SQLite): the network layers call them from
/// blocking-pool threads, never from an async task directly.
pub trait BootDirectory: Send + Sync + 'static {
    /// The registered seat with this MAC, if any. Unregistered MACs get nothing.
    fn seat_by_mac(&self, mac: [u8; 6]) -> Option<SeatBoot>;
    /// The seat fetched its boot script: it is (re)booting. Called before the script is
    /// returned, so the binary can reset the overlay and drop stale sessions first.
    fn booting(&self, seat: &SeatBoot);
    /// The seat's script was fetched from `peer`: offer it a boot, and return the seat as
    /// its script must carry it (this boot's credentials). Called before the script is
    /// rendered. The default signals [`BootDirectory::booting`] and returns `seat` as is;
    /// the binary overrides it to mint per-boot credentials and change nothing else, so a
    /// forged or drive-by fetch resets nothing.
    fn offer_boot(
        &self,
        seat: SeatBoot,
        peer: Option<std::net::IpAddr>,
    ) -> Result<SeatBoot, String> {
        let _ = peer;
        self.booting(&seat);
        Ok(seat)
    }
    /// The seat is in capture mode: instead of its image, its script loads the capture
    /// environment, with a token bound to `peer`. `None` (the default) for a normal boot.
    fn offer_capture(
        &self,
        seat: &SeatBoot,
        peer: Option<std::net::IpAddr>,
    ) -> Option<Result<CaptureBoot, String>> {
        let _ = (seat, peer);
        None
    }
    /// A file of the capture environment (`vmlinuz`, `initrd.gz`) for the capture with
    /// `token`, asked for from `peer`. The default serves nothing.
    fn capture_file(
        &self,
        token: &str,
        peer: Option<std::net::IpAddr>,
        file: &str,
    ) -> Option<std::path::PathBuf> {
        let _ = (token, peer, file);
        None
    }
    /// A report of the capture environment (`begin`, `progress`, `done`, `fail`) with its
    /// `key=value&...` body: the answer's status and plain-text body.
    fn capture_report(
        &self,
        token: &str,
        peer: Option<std::net::IpAddr>,
        verb: &str,
        body: &str,
    ) -> (u16, String) {
        let _ = (token, peer, verb, body);
        (404, "no such capture\n".into())
    }
    /// An unregistered MAC asked to boot. Rate-limited here: at most once per MAC per
    /// `unknown_report_secs`. `from` is the requester's address: none for a DHCP
    /// broadcast from a client that has no address yet.
    fn unknown_mac(
        &self,
        mac: [u8; 6],
        arch: Option<u16>,
        from: Option<std::net::IpAddr>,
        at: SystemTime,
    );
    /// DHCP answered a registered seat (an offer or an ack, `event`; `pxe`: the request
    /// came from a PXE client, firmware or iPXE, not an operating system), for boot
    /// times. Called on the DHCP thread right after the answer: keep it to memory.
    fn dhcp_answered(&self, event: &dhcp::Event, pxe: bool, at: SystemTime) {
        let _ = (event, pxe, at);
    }
    /// All stored leases (authoritative mode), read once at start.
    fn leases(&self) -> Vec<Lease>;
    fn save_lease(&self, lease: &Lease);
    fn remove_lease(&self, mac: [u8; 6]);
}

/// Reports each unknown MAC once per period; shared by DHCP and HTTP.
///
/// Made-up MACs are free, so besides once per MAC the reports are capped per period: at
/// most [`UNKNOWN_REPORTS_PER_SOURCE`] from one requesting address (the HTTP side knows
/// it; a DHCP packet's source is not worth trusting) and [`UNKNOWN_REPORTS_PER_PERIOD`]
/// in all, so a flood cannot bury the event log or grow the database.
#[derive(Debug)]
pub struct UnknownMacReporter {
    period: Duration,
    last: Mutex<HashMap<[u8; 6], SystemTime>>,
    budget: Mutex<Budget>,
}

/// New unknown MACs one address may report per period.
pub const UNKNOWN_REPORTS_PER_SOURCE: usize = 8;
/// New unknown MACs reported per period from everywhere.
pub const UNKNOWN_REPORTS_PER_PERIOD: usize = 64;

#[derive(Debug, Default)]
struct Budget {
    since: Option<SystemTime>,
    total: usize,
    per_source: HashMap<std::net::IpAddr, usize>,
}

impl Budget {
    /// Takes one report from the period's budget, if any is left.
    fn take(
        &mut self,
        source: Option<std::net::IpAddr>,
        now: SystemTime,
        period: Duration,
    ) -> bool {
        let expired = self
            .since
            .is_none_or(|t| now.duration_since(t).map_or(true, |d| d >= period));
        if expired {
            *self = Budget {
                since: Some(now),
                ..Budget::default()
            };
        }
        if self.total >= UNKNOWN_REPORTS_PER_PERIOD {
            return false;
        }
        if let Some(src) = source {
            let n = self.per_source.entry(src).or_default();
            if *n >= UNKNOWN_REPORTS_PER_SOURCE {
                return false;
            }
            *n += 1;
        }
        self.total += 1;
        true
    }
}

/// State shared by the DHCP and HTTP sides; create one per server with [`BootState::new`].
#[derive(Debug)]
pub struct BootState {
    /// Rate limit for [`BootDirectory::unknown_mac`], whichever side saw the MAC.
    pub reporter: UnknownMacReporter,
    /// Where DHCP last saw each seat, so the HTTP side can tell a seat fetching its own
    /// script (which resets its overlay) from another host asking for it.
    pub seen: SeenAddrs,
    /// The DHCP counters as of the last datagram, for metrics.
    dhcp_stats: Mutex<DhcpStats>,
}

impl BootState {
    pub fn new(cfg: &PxeConfig) -> Self {
        BootState {
            reporter: UnknownMacReporter::new(cfg.unknown_report_period()),
            seen: SeenAddrs::default(),
            dhcp_stats: Mutex::new(DhcpStats::default()),
        }
    }

    /// DHCP counters (received, garbage, offers, acks, unknown MACs, ...).
    pub fn dhcp_stats(&self) -> DhcpStats {
        *self.dhcp_stats.lock()
    }

    pub(crate) fn publish_dhcp_stats(&self, stats: DhcpStats) {
        *self.dhcp_stats.lock() = stats;
    }
}

/// MAC → the IPv4 address DHCP last acknowledged for it (bounded like the reporter).
#[derive(Debug, Default)]
pub struct SeenAddrs(Mutex<HashMap<[u8; 6], Ipv4Addr>>);

impl SeenAddrs {
    pub fn record(&self, mac: [u8; 6], ip: Ipv4Addr) {
        if ip.is_unspecified() || ip.is_broadcast() {
            return;
        }
        let mut m = self.0.lock();
        if m.len() >= REPORTER_PRUNE_AT && !m.contains_key(&mac) {
            // Only registered seats are recorded, so this is a backstop, not a policy.
            m.clear();
        }
        m.insert(mac, ip);
    }
    pub fn forget(&self, mac: [u8; 6]) {
        self.0.lock().remove(&mac);
    }
    pub fn get(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.0.lock().get(&mac).copied()
    }
}

/// Beyond this many remembered MACs, entries older than the period are dropped, so a
/// flood of random MACs cannot grow memory without bound.
const REPORTER_PRUNE_AT: usize = 4096;

impl UnknownMacReporter {
    pub fn new(period: Duration) -> Self {
        UnknownMacReporter {
            period,
            last: Mutex::new(HashMap::new()),
            budget: Mutex::new(Budget::default()),
        }
    }

    /// True if `mac` has not been reported within the period and the period's budget
    /// allows it; records it if so.
    pub fn should_report(&self, mac: [u8; 6], now: SystemTime) -> bool {
        self.should_report_from(mac, None, now)
    }

    /// [`Self::should_report`] for a request from `source`, which also spends that
    /// address's budget.
    pub fn should_report_from(
        &self,
        mac: [u8; 6],
        source: Option<std::net::IpAddr>,
        now: SystemTime,
    ) -> bool {
        let mut last = self.last.lock();
        let due = match last.get(&mac) {
            // A clock that went backwards counts as "due" rather than silencing forever.
            Some(&t) => now.duration_since(t).map_or(true, |d| d >= self.period),
            None => true,
        } && self.budget.lock().take(source, now, self.period);
        if due {
            if last.len() >= REPORTER_PRUNE_AT {
                let period = self.period;
                last.retain(|_, t| now.duration_since(*t).is_ok_and(|d| d < period));
            }
            last.insert(mac, now);
        }
        due
    }

    /// Reports to `dir` if due, spending `source`'s budget.
    pub fn report_from(
        &self,
        dir: &dyn BootDirectory,
        mac: [u8; 6],
        arch: Option<u16>,
        source: Option<std::net::IpAddr>,
        now: SystemTime,
    ) {
        if self.should_report_from(mac, source, now) {
            dir.unknown_mac(mac, arch, source, now);
        }
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `52:54:00:77:00:01`.
pub fn mac_colon(mac: [u8; 6]) -> String {
    MacFmt(mac, ':').to_string()
}

/// `52-54-00-77-00-01`, the form used in script URLs (safe in any URI parser).
pub fn mac_hyphen(mac: [u8; 6]) -> String {
    MacFmt(mac, '-').to_string()
}

struct MacFmt([u8; 6], char);

impl fmt::Display for MacFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "{}", self.1)?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Parses `52:54:00:77:00:01`, `52-54-00-77-00-01` or `525400770001` (any case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let hex: String = match s.len() {
        12 => s.to_string(),
        17 => {
            let sep = s.as_bytes().get(2).copied()?;
            if sep != b':' && sep != b'-' {
                return None;
            }
            let parts: Vec<&str> = s.split(char::from(sep)).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return None;
            }
            parts.concat()
        }
        _ => return None,
    };
    // `from_str_radix` takes a leading `+`, so "+5+2+5+4+0+0" would parse:
    // only hex digits may reach it.
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2)?;
        *b = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(mac)
}

/// Errors that stop the PXE services from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("TFTP: {0}")]
    Tftp(String),
    #[error("PXE service task failed: {0}")]
    Task(String),
    #[error("HTTP on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Starts every configured service (DHCP unless `mode: off`, TFTP unless disabled, the
/// HTTP boot-script server) and runs them until `cancel` fires or one of them fails.
///
/// Binding happens before anything is served, so a missing interface or a busy port is
/// reported at once, naming the interface or address.
pub async fn run(
    config: PxeConfig,
    dir: Arc<dyn BootDirectory>,
    cancel: CancellationToken,
) -> Result<(), PxeError> {
    config.validate()?;
    let state = Arc::new(BootState::new(&config));

    let dhcp = if config.mode == DhcpMode::Off {
        None
    } else {
        let sockets = DhcpSockets::bind(&config)?;
        let core = DhcpCore::new(&config, state.clone(), dir.leases());
        Some((sockets, core))
    };
    let tftp_socket = if config.tftp_enabled {
        Some(net::bind_tftp(&config)?)
    } else {
        None
    };
    let http_v4 = SocketAddrV4::new(config.server_ip, config.http_port);
    let http_addr = std::net::SocketAddr::V4(http_v4);
    let listener = net::bind_tcp_on(&config.interface, http_v4, "boot scripts (HTTP)")
        .and_then(|l| tokio::net::TcpListener::from_std(l).map_err(NetError::Io))?;

    let mut tasks = tokio::task::JoinSet::new();
    if let Some((sockets, core)) = dhcp {
        let (dir, cancel) = (dir.clone(), cancel.clone());
        tasks.spawn(async move {
            net::serve_dhcp(sockets, core, dir, cancel)
                .await
                .map_err(PxeError::from)
        });
    }
    if let Some(sock) = tftp_socket {
        let (root, cancel) = (config.tftp_root.clone(), cancel.clone());
        tasks.spawn(async move { tftp::serve(sock, &root, cancel).await });
    }
    {
        let router = http::router(dir.clone(), state.clone());
        let cancel = cancel.clone();
        tasks.spawn(async move {
            http::serve(listener, router, cancel)
                .await
                .map_err(|source| PxeError::Http {
                    addr: http_addr,
                    source,
                })
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let r = joined.unwrap_or_else(|e| Err(PxeError::Task(e.to_string())));
        if let Err(e) = r {
            // One service failing takes the others down: a half-working boot chain is
            // harder to diagnose than a stopped one.
            cancel.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        let m = [0x52, 0x54, 0x00, 0x77, 0x00, 0xab];
        assert_eq!(mac_colon(m), "52:54:00:77:00:ab");
        assert_eq!(mac_hyphen(m), "52-54-00-77-00-ab");
        assert_eq!(parse_mac("52:54:00:77:00:AB"), Some(m));
        assert_eq!(parse_mac("52-54-00-77-00-ab"), Some(m));
        assert_eq!(parse_mac("5254007700ab"), Some(m));
        for bad in [
            "",
            "52:54:00:77:00",
            "52:54:00:77:00:zz",
            "52:54-00:77:00:ab",
            "5254007700ab0",
            // Issue 10: `from_str_radix` accepts a sign.
            "+5+2+5+4+0+0",
            "+5:+2:+5:+4:+0:+0",
            "+5-+2-+5-+4-+0-+0",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    /// Issue 10 attack: `/boot/<made-up MAC>.ipxe` flooded the unknown-machine list.
    #[test]
    fn unknown_reports_capped_per_source_and_in_all() {
        let r = UnknownMacReporter::new(Duration::from_secs(600));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mac = |i: u32| {
            let b = i.to_be_bytes();
            [2, 0, b[0], b[1], b[2], b[3]]
        };
        let a: std::net::IpAddr = "10.0.0.66".parse().unwrap();
        let n = (0..1000)
            .filter(|i| r.should_report_from(mac(*i), Some(a), t0))
            .count();
        assert_eq!(n, UNKNOWN_REPORTS_PER_SOURCE);
        // Many addresses (or DHCP, which has none worth trusting) hit the global cap.
        let n = (1000..5000u32)
            .filter(|i| {
                let b = i.to_be_bytes();
                let src = std::net::IpAddr::from([10, 1, b[2], b[3]]);
                r.should_report_from(mac(*i), Some(src), t0)
            })
            .count()
            + (5000..6000)
                .filter(|i| r.should_report(mac(*i), t0))
                .count();
        assert_eq!(n, UNKNOWN_REPORTS_PER_PERIOD - UNKNOWN_REPORTS_PER_SOURCE);
        // The next period has a fresh budget; a real new machine is reported then.
        assert!(r.should_report_from(mac(7000), Some(a), t0 + Duration::from_secs(600)));
    }

    #[test]
    fn reporter_once_per_period() {
        let r = UnknownMacReporter::new(Duration::from_secs(600));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let m = [1, 2, 3, 4, 5, 6];
        assert!(r.should_report(m, t0));
        assert!(!r.should_report(m, t0 + Duration::from_secs(599)));
        assert!(r.should_report([9; 6], t0));
        assert!(r.should_report(m, t0 + Duration::from_secs(600)));
        assert!(!r.should_report(m, t0 + Duration::from_secs(601)));
    }
}
