//! Boot times: the protocol servers report each step of a seat's boot as it
//! happens ([`BootClock::step`], [`BootClock::logged_in`]); a boot is
//! finished once its window closes ([`BootClock::tick`]) and then kept in
//! the state database (`khoi_state::BootTiming`) and the histograms.
//!
//! Which step is which:
//! - DHCP: the first DHCP answer Khoi gave the seat's PXE ROM (not iPXE's).
//! - TFTP: the first TFTP read from the seat's address.
//! - Script: iPXE's script fetch.
//! - Login: the boot's credentials logging in for the first time (`sanboot`).
//! - Hand-over: the next login of the seat's target with another session
//!   (the OS logging in from the iBFT).
//!
//! A step that comes again counts once (its first time); a step that comes
//! after a later step was seen is a new boot: the
//! previous one is finished as it stands (incomplete if it never reached the
//! hand-over), so a seat that loops in its firmware shows as many short,
//! incomplete boots.
//!
//! Bytes read during the boot: everything the seat read over iSCSI from its
//! first login until [`BOOT_READ_TAIL`] after the hand-over. The OS is
//! still loading drivers and services then, and a fixed window keeps boots
//! comparable. A boot that never reaches the hand-over is finished
//! [`BOOT_ABANDON`] after its last step.
//!
//! Only memory is touched by the reports (they come from DHCP threads and
//! the iSCSI login path); the caller persists what [`BootClock::tick`]
//! returns, away from those paths.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use khoi_state::{BootPhase, BootStep, BootTiming};
use parking_lot::Mutex;

use crate::metrics::{Metrics, OutcomeLabel, PhaseLabel, SeatProto};

/// How long after the hand-over a boot's reads still count.
pub const BOOT_READ_TAIL: Duration = Duration::from_secs(30);
/// A boot with no new step for this long is over, wherever it stopped.
pub const BOOT_ABANDON: Duration = Duration::from_secs(600);

/// Addresses remembered for matching TFTP reads to seats; a backstop only,
/// since only registered seats are recorded.
const ADDRS_MAX: usize = 4096;

#[derive(Debug)]
struct Pending {
    timing: BootTiming,
    /// The session of the boot's first login (iPXE's).
    first_session: Option<u16>,
    /// The seat's iSCSI read counter at the first login.
    read_base: u64,
    last_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    seats: HashMap<String, Pending>,
    addrs: HashMap<IpAddr, String>,
    /// Boots a new boot of the same seat ended, for the next tick.
    ended: Vec<BootTiming>,
}

/// Seats' boots in progress.
#[derive(Debug)]
pub struct BootClock {
    metrics: Arc<Metrics>,
    tail_ms: i64,
    abandon_ms: i64,
    inner: Mutex<Inner>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

impl BootClock {
    pub fn new(metrics: Arc<Metrics>) -> BootClock {
        BootClock::with_windows(metrics, BOOT_READ_TAIL, BOOT_ABANDON)
    }

    /// A clock with other windows (tests).
    pub fn with_windows(metrics: Arc<Metrics>, tail: Duration, abandon: Duration) -> BootClock {
        BootClock {
            metrics,
            tail_ms: millis(tail),
            abandon_ms: millis(abandon),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn iscsi_read(&self, seat: &str) -> u64 {
        self.metrics
            .bytes_read
            .get_or_create(&SeatProto {
                seat: seat.to_string(),
                proto: "iscsi".to_string(),
            })
            .get()
    }

    /// `seat` is known at `addr` (its DHCP address, or where its script
    /// fetch came from), so a TFTP read from there is its.
    pub fn seen_at(&self, seat: &str, addr: IpAddr) {
        let addr = addr.to_canonical();
        let mut inner = self.inner.lock();
        if inner.addrs.len() >= ADDRS_MAX && !inner.addrs.contains_key(&addr) {
            inner.addrs.clear();
        }
        inner.addrs.retain(|a, s| s != seat || *a == addr);
        inner.addrs.insert(addr, seat.to_string());
    }

    /// DHCP answered iPXE (its answer names the script). That is the boot's
    /// DHCP step when iPXE is the firmware (a NIC with an iPXE ROM, as in
    /// qemu), but part of the TFTP phase when the PXE ROM chainloaded it:
    /// then the boot already has its DHCP or TFTP step and no script yet.
    pub fn ipxe_dhcp(&self, seat: &str, at_ms: i64) {
        let chainloaded = self.inner.lock().seats.get(seat).is_some_and(|p| {
            let t = &p.timing;
            (t.at(BootStep::Dhcp).is_some() || t.at(BootStep::Tftp).is_some())
                && t.steps[BootStep::Script.index()..]
                    .iter()
                    .all(Option::is_none)
        });
        if !chainloaded {
            self.step(seat, BootStep::Dhcp, at_ms);
        }
    }

    /// A TFTP read from `addr` at `at_ms`: the seat seen at that address,
    /// or else the only seat whose boot got its DHCP answer and nothing
    /// after (proxy mode with UEFI firmware: the site's DHCP gave the
    /// address, so Khoi learns it here). Several such seats: not guessed.
    pub fn tftp_from(&self, addr: IpAddr, at_ms: i64) {
        let seat = self.seat_at(addr).or_else(|| {
            let inner = self.inner.lock();
            let mut waiting = inner.seats.iter().filter(|(_, p)| {
                p.timing.at(BootStep::Dhcp).is_some()
                    && p.timing.steps[BootStep::Tftp.index()..]
                        .iter()
                        .all(Option::is_none)
            });
            match (waiting.next(), waiting.next()) {
                (Some((seat, _)), None) => Some(seat.clone()),
                _ => None,
            }
        });
        if let Some(seat) = seat {
            self.seen_at(&seat, addr);
            self.step(&seat, BootStep::Tftp, at_ms);
        }
    }

    /// The seat at `addr`, if one was seen there.
    pub fn seat_at(&self, addr: IpAddr) -> Option<String> {
        self.inner.lock().addrs.get(&addr.to_canonical()).cloned()
    }

    /// A step of `seat`'s boot happened at `at_ms`. If it begins a new boot,
    /// the previous one is finished and handed out by the next
    /// [`BootClock::tick`]. [`BootStep::Handover`] is not a step callers
    /// report: [`BootClock::logged_in`] finds it.
    pub fn step(&self, seat: &str, step: BootStep, at_ms: i64) {
        if step == BootStep::Handover {
            return;
        }
        let read_now = (step == BootStep::Login).then(|| self.iscsi_read(seat));
        let mut inner = self.inner.lock();
        let again = inner.seats.get(seat).is_some_and(|p| {
            p.timing.steps[step.index() + 1..]
                .iter()
                .any(Option::is_some)
        });
        if again && let Some(p) = inner.seats.remove(seat) {
            let ended = self.finish(p, read_now.unwrap_or_else(|| self.iscsi_read(seat)));
            inner.ended.push(ended);
        }
        let p = inner
            .seats
            .entry(seat.to_string())
            .or_insert_with(|| Pending {
                timing: BootTiming {
                    seat: seat.to_string(),
                    ..BootTiming::default()
                },
                first_session: None,
                read_base: 0,
                last_ms: at_ms,
            });
        // The first of repeated packets counts (DISCOVER then REQUEST, the
        // TFTP size probe then the transfer).
        if p.timing.steps[step.index()].is_none() {
            p.timing.steps[step.index()] = Some(at_ms);
            if let Some(base) = read_now {
                p.read_base = base;
            }
        }
        p.last_ms = at_ms;
    }

    /// A session of `seat`'s target logged in. The first after the boot's
    /// first login is iPXE's own; one with another session is the hand-over.
    pub fn logged_in(&self, seat: &str, session: u16, at_ms: i64) {
        let mut inner = self.inner.lock();
        let Some(p) = inner.seats.get_mut(seat) else {
            return;
        };
        if p.timing.at(BootStep::Login).is_none() || p.timing.complete() {
            return;
        }
        match p.first_session {
            None => p.first_session = Some(session),
            Some(first) if first != session => {
                p.timing.steps[BootStep::Handover.index()] = Some(at_ms);
                p.last_ms = at_ms;
            }
            Some(_) => {}
        }
    }

    /// Boots finished by `now_ms`: complete ones [`BOOT_READ_TAIL`] after
    /// their hand-over, others [`BOOT_ABANDON`] after their last step or
    /// when the seat's next boot began.
    pub fn tick(&self, now_ms: i64) -> Vec<BootTiming> {
        let (mut out, due): (Vec<BootTiming>, Vec<String>) = {
            let mut inner = self.inner.lock();
            let ended = std::mem::take(&mut inner.ended);
            let due = inner
                .seats
                .iter()
                .filter(|(_, p)| match p.timing.at(BootStep::Handover) {
                    Some(h) => now_ms - h >= self.tail_ms,
                    None => now_ms - p.last_ms >= self.abandon_ms,
                })
                .map(|(s, _)| s.clone())
                .collect();
            (ended, due)
        };
        out.extend(due.into_iter().filter_map(|seat| {
            let read = self.iscsi_read(&seat);
            let p = self.inner.lock().seats.remove(&seat)?;
            Some(self.finish(p, read))
        }));
        out
    }

    /// The boot of `seat` in progress, as far as it got.
    pub fn in_progress(&self, seat: &str) -> Option<BootTiming> {
        self.inner.lock().seats.get(seat).map(|p| p.timing.clone())
    }

    fn finish(&self, p: Pending, read_now: u64) -> BootTiming {
        let mut timing = p.timing;
        if timing.at(BootStep::Login).is_some() {
            timing.bytes_read = read_now.saturating_sub(p.read_base);
        }
        for phase in BootPhase::ALL {
            if let Some(ms) = timing.phase_ms(phase) {
                self.metrics
                    .boot_phase
                    .get_or_create(&PhaseLabel {
                        phase: phase.as_str().to_string(),
                    })
                    .observe(seconds(ms));
            }
        }
        let outcome = if let Some(total) = timing.total_ms() {
            self.metrics.boot_seconds.observe(seconds(total));
            #[allow(clippy::cast_precision_loss)]
            self.metrics
                .boot_read_bytes
                .observe(timing.bytes_read as f64);
            "complete"
        } else {
            "incomplete"
        };
        self.metrics
            .boots
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        timing
    }
}

#[allow(clippy::cast_precision_loss)]
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> (Arc<Metrics>, BootClock) {
        let m = Arc::new(Metrics::new());
        let c = BootClock::with_windows(
            Arc::clone(&m),
            Duration::from_secs(30),
            Duration::from_secs(600),
        );
        (m, c)
    }

    fn read(m: &Metrics, seat: &str, bytes: u64) {
        m.bytes_read
            .get_or_create(&SeatProto {
                seat: seat.into(),
                proto: "iscsi".into(),
            })
            .inc_by(bytes);
    }

    #[test]
    fn a_boot_is_its_steps_then_the_window_after_the_hand_over() {
        let (m, c) = clock();
        read(&m, "pc01", 1000); // yesterday's Windows
        c.step("pc01", BootStep::Dhcp, 0);
        // DISCOVER then REQUEST, and the firmware's retries: one step.
        c.step("pc01", BootStep::Dhcp, 100);
        c.seen_at("pc01", "10.0.0.5".parse().expect("ip"));
        let seat = c.seat_at("10.0.0.5".parse().expect("ip"));
        assert_eq!(seat.as_deref(), Some("pc01"));
        c.step("pc01", BootStep::Tftp, 1_500);
        c.step("pc01", BootStep::Script, 2_000);
        c.step("pc01", BootStep::Login, 2_200);
        c.logged_in("pc01", 7, 2_210);
        read(&m, "pc01", 50 << 20);
        // iPXE reconnecting with its own session is not the hand-over.
        c.logged_in("pc01", 7, 5_000);
        assert_eq!(c.in_progress("pc01").and_then(|b| b.total_ms()), None);
        c.logged_in("pc01", 8, 12_000);
        read(&m, "pc01", 100 << 20);
        assert!(c.tick(12_000 + 29_999).is_empty(), "window still open");
        let done = c.tick(12_000 + 30_000);
        assert_eq!(done.len(), 1);
        let b = &done[0];
        assert_eq!(
            b.steps,
            [Some(0), Some(1_500), Some(2_000), Some(2_200), Some(12_000)]
        );
        assert_eq!(b.bytes_read, 150 << 20, "only what this boot read");
        assert_eq!(b.total_ms(), Some(12_000));
        assert!(c.in_progress("pc01").is_none());
        let text = m.encode();
        assert!(
            text.contains("khoi_boot_phase_seconds_count{phase=\"disk\"} 1"),
            "{text}"
        );
        assert!(text.contains("khoi_boot_seconds_sum 12.0"), "{text}");
        assert!(
            text.contains("khoi_boots_total{outcome=\"complete\"} 1"),
            "{text}"
        );
        let types = crate::metrics::declared_types(&text).expect("once each");
        assert_eq!(types["khoi_boot_phase_seconds"], "histogram");
        assert_eq!(types["khoi_boot_read_bytes"], "histogram");
    }

    #[test]
    fn a_step_seen_again_begins_a_new_boot_and_a_stuck_one_is_abandoned() {
        let (m, c) = clock();
        c.step("pc02", BootStep::Dhcp, 0);
        c.step("pc02", BootStep::Tftp, 1_000);
        c.step("pc02", BootStep::Tftp, 1_200);
        assert_eq!(c.tick(1_300), vec![], "the size probe is the same step");
        // The firmware starts over (TFTP timed out): the first boot ends.
        c.step("pc02", BootStep::Dhcp, 60_000);
        let ended = c.tick(60_001);
        assert_eq!(ended.len(), 1);
        let prev = &ended[0];
        assert_eq!(prev.steps[..2], [Some(0), Some(1_000)]);
        assert!(!prev.complete());
        assert_eq!(prev.bytes_read, 0);
        // A hand-over needs a first login: a reconnecting Windows is no boot.
        c.logged_in("pc02", 1, 61_000);
        c.logged_in("pc02", 2, 62_000);
        assert!(!c.in_progress("pc02").expect("boot").complete());
        assert!(c.tick(60_000 + 599_999).is_empty());
        let stuck = c.tick(60_000 + 600_000);
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].phase_ms(BootPhase::Dhcp), None, "nothing after it");
        assert!(
            m.encode()
                .contains("khoi_boots_total{outcome=\"incomplete\"} 2")
        );
        // No boot in progress: a login of a running seat starts nothing.
        c.logged_in("pc03", 1, 0);
        assert!(c.in_progress("pc03").is_none());
    }

    #[test]
    fn a_tftp_read_from_an_unknown_address_is_the_one_seat_waiting_for_it() {
        let (_, c) = clock();
        let a: IpAddr = "10.0.0.5".parse().expect("ip");
        let b: IpAddr = "10.0.0.6".parse().expect("ip");
        c.step("pc01", BootStep::Dhcp, 0);
        c.step("pc02", BootStep::Dhcp, 10);
        c.tftp_from(a, 100);
        assert!(
            c.in_progress("pc01")
                .and_then(|t| t.at(BootStep::Tftp))
                .is_none()
                && c.in_progress("pc02")
                    .and_then(|t| t.at(BootStep::Tftp))
                    .is_none(),
            "two seats wait: no guess"
        );
        c.seen_at("pc02", b);
        c.tftp_from(b, 200);
        assert_eq!(
            c.in_progress("pc02").and_then(|t| t.at(BootStep::Tftp)),
            Some(200)
        );
        c.tftp_from(a, 300);
        assert_eq!(
            c.in_progress("pc01").and_then(|t| t.at(BootStep::Tftp)),
            Some(300),
            "the only one left"
        );
        assert_eq!(c.seat_at(a).as_deref(), Some("pc01"));
    }

    #[test]
    fn ipxe_dhcp_begins_a_boot_only_when_ipxe_is_the_firmware() {
        let (_, c) = clock();
        // Chainloaded: the PXE ROM's DHCP and TFTP came first.
        c.step("pc01", BootStep::Dhcp, 0);
        c.step("pc01", BootStep::Tftp, 1_000);
        c.ipxe_dhcp("pc01", 3_000);
        assert_eq!(
            c.in_progress("pc01").map(|t| t.steps[..2].to_vec()),
            Some(vec![Some(0), Some(1_000)])
        );
        assert!(c.tick(3_001).is_empty(), "the same boot");
        // iPXE in the NIC's ROM: its DHCP is the boot's first step, and after
        // a script fetch it begins the next boot.
        c.ipxe_dhcp("pc02", 0);
        c.step("pc02", BootStep::Script, 500);
        c.ipxe_dhcp("pc02", 90_000);
        let ended = c.tick(90_001);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].phase_ms(BootPhase::Dhcp), Some(500));
        assert_eq!(
            c.in_progress("pc02").and_then(|t| t.at(BootStep::Dhcp)),
            Some(90_000)
        );
    }

    #[test]
    fn an_address_belongs_to_one_seat() {
        let (_, c) = clock();
        let a: IpAddr = "10.0.0.5".parse().expect("ip");
        let b: IpAddr = "10.0.0.6".parse().expect("ip");
        c.seen_at("pc01", a);
        c.seen_at("pc01", b);
        assert_eq!(c.seat_at(a), None, "the seat moved");
        c.seen_at("pc02", b);
        assert_eq!(c.seat_at(b).as_deref(), Some("pc02"));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("ip");
        c.seen_at("pc03", mapped);
        assert_eq!(
            c.seat_at("10.0.0.7".parse().expect("ip")).as_deref(),
            Some("pc03")
        );
    }
}

/// A seat's kept boots and the one in progress, for its page and the API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeatBootTimes {
    pub seat: String,
    /// Newest first.
    pub boots: Vec<BootTiming>,
    pub in_progress: Option<BootTiming>,
}

/// The room's last morning: each seat's first boot of the latest day (in
/// the schedule's time zone) on which any seat booted.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RoomMorning {
    /// The day, `YYYY-MM-DD`, if any boot is kept.
    pub day: Option<String>,
    /// By start time.
    pub boots: Vec<BootTiming>,
}

impl crate::Service {
    /// `seat`'s boot history.
    pub fn boot_times(&self, seat: &str) -> Result<SeatBootTimes, crate::ServiceError> {
        self.state().seat(seat)?;
        Ok(SeatBootTimes {
            seat: seat.to_string(),
            boots: self.state().boot_timings(seat)?,
            in_progress: self.activity().boots().in_progress(seat),
        })
    }

    /// The room's last morning (see [`RoomMorning`]).
    pub fn room_morning(&self) -> Result<RoomMorning, crate::ServiceError> {
        use chrono::TimeZone;
        let Some(last) = self.state().last_boot_started()? else {
            return Ok(RoomMorning::default());
        };
        let tz = crate::schedule::vietnam();
        let Some(at) = tz.timestamp_millis_opt(last).single() else {
            return Ok(RoomMorning::default());
        };
        let day = at.date_naive();
        let start = day
            .and_hms_opt(0, 0, 0)
            .and_then(|t| tz.from_local_datetime(&t).single())
            .map_or(last, |t| t.timestamp_millis());
        let mut seen = std::collections::HashSet::new();
        let boots = self
            .state()
            .boot_timings_since(start)?
            .into_iter()
            .filter(|b| seen.insert(b.seat.clone()))
            .collect();
        Ok(RoomMorning {
            day: Some(day.format("%Y-%m-%d").to_string()),
            boots,
        })
    }
}
