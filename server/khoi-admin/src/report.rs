//! The compliance report (directive item 4): what the officer signs for a
//! period, as data ([`ComplianceReport`]) that the page prints and
//! [`pdf`] lays out on A4.
//!
//! Everything in it comes from the state database and the store: the seats
//! and what they run, every image version with its gate result and any
//! override's reason, the nightly reset runs and the admin actions of the
//! period. Where seats are served and where the admin page is are told by
//! the binary at start ([`Service::set_report_network`]).

pub mod pdf;

use serde::{Deserialize, Serialize};

use crate::gate::GateStatus;
use crate::service::{Result, Service, ServiceError};

/// The report's title, in Vietnamese as the directive names it.
pub const TITLE_VI: &str = "Báo cáo bảo đảm an ninh hệ thống máy trạm giải quyết TTHC";
pub const TITLE_EN: &str = "Security assurance report for the TTHC workstation system";

/// The longest period a report covers: a year and a month (the event log
/// keeps that much by default).
pub const MAX_PERIOD_DAYS: i64 = 400;

/// Where Khoi serves seats and its page, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportNetwork {
    /// The host's name.
    pub server: String,
    /// Network interfaces that serve seats (DHCP/TFTP), with addresses.
    pub boot_interfaces: Vec<String>,
    /// The iSCSI portal seats use.
    pub iscsi_portal: Option<String>,
    /// Where the admin page listens (`None`: off).
    pub admin_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeatRow {
    pub name: String,
    pub mac: String,
    pub image: String,
    /// What it runs until its next reset.
    pub version: Option<u32>,
    pub pinned: bool,
    pub profile: String,
    pub policy: String,
    pub last_boot: Option<i64>,
    pub last_reset: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRow {
    pub image: String,
    pub version: u32,
    pub current: bool,
    /// Unix seconds.
    pub created: u64,
    pub note: String,
    pub gate: GateStatus,
    pub blocking: usize,
    pub warnings: usize,
    pub override_by: Option<String>,
    pub override_reason: Option<String>,
}

/// One event as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub ts: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindCount {
    pub kind: String,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComplianceReport {
    pub generated: i64,
    /// Unix seconds, inclusive.
    pub from: i64,
    pub to: i64,
    pub network: ReportNetwork,
    pub seats: Vec<SeatRow>,
    pub versions: Vec<VersionRow>,
    pub nightly_runs: Vec<EventRow>,
    /// Admin actions of the period by kind (every recorded change by a
    /// person, not the server's own events).
    pub admin_actions: Vec<KindCount>,
    pub admin_total: usize,
    pub overrides: Vec<EventRow>,
}

/// Events of one period read for a report, at most.
const MAX_EVENTS: u32 = 200_000;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn row(e: khoi_state::Event) -> EventRow {
    EventRow {
        ts: e.ts,
        kind: e.kind,
        actor: e.actor,
        subject: e.subject,
        detail: e.detail,
    }
}

/// A person's change, as opposed to what the server, a seat or the LAN
/// caused (boots, logins, unknown MACs, the nightly run itself).
fn is_admin_action(e: &khoi_state::Event) -> bool {
    e.actor != "khoi" && !e.actor.is_empty() && e.actor != "-"
}

impl Service {
    /// Tell the report where seats and the page are served.
    pub fn set_report_network(&self, n: ReportNetwork) {
        *self.report_network().write() = n;
    }

    /// The report for `[from, to]` (unix seconds, inclusive).
    pub fn compliance_report(&self, from: i64, to: i64) -> Result<ComplianceReport> {
        if to < from {
            return Err(ServiceError::invalid(
                "to",
                "the period ends before it starts".to_string(),
            ));
        }
        if to - from > MAX_PERIOD_DAYS * 86_400 {
            return Err(ServiceError::invalid(
                "to",
                format!("a report covers at most {MAX_PERIOD_DAYS} days"),
            ));
        }
        let events = self.state().events_filtered(&khoi_state::EventFilter {
            since: Some(from),
            until: Some(to),
            limit: MAX_EVENTS,
            ..Default::default()
        })?;
        let mut seats = Vec::new();
        for s in self.seats()? {
            let profile = self
                .gate_settings(&s.image)
                .map(|g| match g.profile {
                    crate::gate::Profile::Counter => "counter",
                    crate::gate::Profile::Kiosk => "kiosk",
                })
                .unwrap_or("-");
            let last_reset = self
                .state()
                .events_filtered(&khoi_state::EventFilter {
                    subject: Some(s.name.clone()),
                    kind: Some("seat.reset".into()),
                    limit: 1,
                    ..Default::default()
                })?
                .first()
                .map(|e| e.ts);
            seats.push(SeatRow {
                last_boot: self.activity().live(&s.name).last_boot,
                last_reset,
                profile: profile.into(),
                policy: s.policy.to_string(),
                pinned: s.pinned_version.is_some(),
                version: s.active_version,
                image: s.image,
                mac: s.mac,
                name: s.name,
            });
        }
        let mut versions = Vec::new();
        for img in self.images() {
            for v in self.store().versions(&img.name)? {
                let g = self.gate_result(&img.name, v.number)?;
                let (blocking, warnings) = g.report.as_ref().map_or((0, 0), |r| {
                    let b = r.blocking().count();
                    (b, r.findings.len() - b)
                });
                versions.push(VersionRow {
                    image: img.name.clone(),
                    version: v.number,
                    current: v.number == img.current,
                    created: v.created,
                    note: v.note.clone(),
                    gate: g.status,
                    blocking,
                    warnings,
                    override_by: g.r#override.as_ref().map(|o| o.by.clone()),
                    override_reason: g.r#override.map(|o| o.reason),
                });
            }
        }
        let mut nightly_runs = Vec::new();
        let mut overrides = Vec::new();
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        let mut admin_total = 0;
        for e in events {
            if e.kind == "nightly.run" {
                nightly_runs.push(row(e));
                continue;
            }
            if !is_admin_action(&e) {
                continue;
            }
            admin_total += 1;
            *counts.entry(e.kind.clone()).or_default() += 1;
            if e.kind == "image.gate.override" {
                overrides.push(row(e));
            }
        }
        nightly_runs.sort_by_key(|e| e.ts);
        overrides.sort_by_key(|e| e.ts);
        Ok(ComplianceReport {
            generated: now(),
            from,
            to,
            network: self.report_network().read().clone(),
            seats,
            versions,
            nightly_runs,
            admin_actions: counts
                .into_iter()
                .map(|(kind, count)| KindCount { kind, count })
                .collect(),
            admin_total,
            overrides,
        })
    }
}

impl Service {
    /// The report for `[from, to]` as a Vietnamese A4 PDF.
    pub fn compliance_report_pdf(&self, from: i64, to: i64) -> Result<Vec<u8>> {
        let r = self.compliance_report(from, to)?;
        let fonts = pdf::Fonts::load().map_err(ServiceError::Internal)?;
        pdf::render(&r, &fonts).map_err(ServiceError::Internal)
    }
}

/// The period `[from, to]` from two days (`YYYY-MM-DD`, Vietnam time, both
/// whole days included); a missing `to` is today, a missing `from` 30 days
/// before `to`.
pub fn period(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64)> {
    use chrono::{Duration, NaiveDate, TimeZone};
    let tz = crate::schedule::vietnam();
    let day = |field: &str, v: &str| {
        NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d")
            .map_err(|_| ServiceError::invalid(field, "use a date like 2026-11-20"))
    };
    let to_day = match to.filter(|v| !v.trim().is_empty()) {
        Some(v) => day("to", v)?,
        None => chrono::Utc::now().with_timezone(&tz).date_naive(),
    };
    let from_day = match from.filter(|v| !v.trim().is_empty()) {
        Some(v) => day("from", v)?,
        None => to_day - Duration::days(30),
    };
    let at = |d: NaiveDate, h, m, s| {
        d.and_hms_opt(h, m, s)
            .and_then(|t| tz.from_local_datetime(&t).single())
            .map(|t| t.timestamp())
            .ok_or_else(|| ServiceError::invalid("from", "not a valid day"))
    };
    Ok((at(from_day, 0, 0, 0)?, at(to_day, 23, 59, 59)?))
}
