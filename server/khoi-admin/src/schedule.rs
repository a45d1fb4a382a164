//! The nightly reset: a cron schedule in Vietnam time (UTC+7, no daylight
//! saving, so a fixed offset is exact). Offline seats are reset; online ones
//! are skipped and reported, or forced, by policy. The time of the last run
//! is kept in the state database, so a run missed while the server was down
//! happens as soon as it starts again.
//!
//! The clock is injected so tests can move time without sleeping.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use croner::Cron;
use khoi_state::{EventFilter, ResetPolicy};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::service::{Actor, Service, ServiceError};

pub const DEFAULT_CRON: &str = "0 2 * * *";
const KEY_CRON: &str = "nightly.cron";
const KEY_ONLINE: &str = "nightly.online";
const KEY_LAST: &str = "nightly.last_run";
/// The loop re-reads the schedule at least this often, so an edit on the
/// page or a jump of the system clock is noticed without a restart.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Asia/Ho_Chi_Minh.
pub fn vietnam() -> FixedOffset {
    FixedOffset::east_opt(7 * 3600).unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"))
}

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What to do with a seat that is still running at reset time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnlinePolicy {
    /// Leave it alone and list it in the report (the default: someone may
    /// still be working late).
    #[default]
    Skip,
    /// Reset it anyway; its sessions fail and Windows sees its disk vanish.
    Force,
}

impl OnlinePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OnlinePolicy::Skip => "skip",
            OnlinePolicy::Force => "force",
        }
    }
}

impl FromStr for OnlinePolicy {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, ServiceError> {
        match s {
            "skip" => Ok(OnlinePolicy::Skip),
            "force" => Ok(OnlinePolicy::Force),
            other => Err(ServiceError::Invalid {
                field: "online".into(),
                reason: format!("{other:?}: expected skip or force"),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSettings {
    pub cron: String,
    pub online: OnlinePolicy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Unix seconds.
    pub at: i64,
    pub trigger: String,
    pub reset: Vec<String>,
    pub forced: Vec<String>,
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
    /// Every seat still on when the run began (a session open or I/O in
    /// the last minutes), whatever its policy: who left a machine running.
    #[serde(default)]
    pub still_on: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleView {
    pub cron: String,
    pub online: OnlinePolicy,
    /// Unix seconds of the next run.
    pub next_run: Option<i64>,
    pub last_run: Option<i64>,
}

pub fn parse_cron(expr: &str) -> Result<Cron, ServiceError> {
    Cron::from_str(expr.trim()).map_err(|e| ServiceError::Invalid {
        field: "cron".into(),
        reason: format!("{expr:?} is not a cron expression (like \"0 2 * * *\"): {e}"),
    })
}

#[derive(Debug)]
pub struct Scheduler {
    service: Arc<Service>,
    clock: Arc<dyn Clock>,
    defaults: ScheduleSettings,
}

impl Scheduler {
    /// `defaults` come from the config file; edits on the page are stored
    /// in the database and win over them.
    pub fn new(
        service: Arc<Service>,
        clock: Arc<dyn Clock>,
        defaults: ScheduleSettings,
    ) -> Result<Scheduler, ServiceError> {
        parse_cron(&defaults.cron)?;
        Ok(Scheduler {
            service,
            clock,
            defaults,
        })
    }

    pub fn settings(&self) -> ScheduleSettings {
        let st = self.service.state();
        let cron = st
            .setting(KEY_CRON)
            .ok()
            .flatten()
            .filter(|c| parse_cron(c).is_ok())
            .unwrap_or_else(|| self.defaults.cron.clone());
        let online = st
            .setting(KEY_ONLINE)
            .ok()
            .flatten()
            .and_then(|o| o.parse().ok())
            .unwrap_or(self.defaults.online);
        ScheduleSettings { cron, online }
    }

    pub fn update(&self, actor: &Actor, new: &ScheduleSettings) -> Result<(), ServiceError> {
        parse_cron(&new.cron)?;
        let st = self.service.state();
        st.set_setting(KEY_CRON, new.cron.trim())?;
        st.set_setting(KEY_ONLINE, new.online.as_str())?;
        self.service.audit_args(
            actor,
            "schedule.update",
            "nightly",
            &format!(
                "cron {:?}, online seats: {}",
                new.cron.trim(),
                new.online.as_str()
            ),
            &[("cron", new.cron.trim()), ("online", new.online.as_str())],
        );
        Ok(())
    }

    pub fn last_run(&self) -> Option<i64> {
        self.service
            .state()
            .setting(KEY_LAST)
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
    }

    fn local(&self, unix: i64) -> DateTime<FixedOffset> {
        vietnam()
            .timestamp_opt(unix, 0)
            .single()
            .unwrap_or_else(|| self.clock.now().with_timezone(&vietnam()))
    }

    /// The first scheduled time after `after` (Unix seconds).
    fn next_after(&self, after: i64) -> Option<i64> {
        let cron = parse_cron(&self.settings().cron).ok()?;
        cron.find_next_occurrence(&self.local(after), false)
            .ok()
            .map(|t| t.timestamp())
    }

    pub fn view(&self) -> ScheduleView {
        let s = self.settings();
        let now = self.clock.now().timestamp();
        let from = self.last_run().map_or(now, |l| l.max(now));
        ScheduleView {
            cron: s.cron,
            online: s.online,
            next_run: self.next_after(from),
            last_run: self.last_run(),
        }
    }

    /// Reset every seat that should be reset now.
    pub fn run_now(&self, actor: &Actor, trigger: &str) -> Result<RunReport, ServiceError> {
        let policy = self.settings().online;
        let now = self.clock.now().timestamp();
        let mut report = RunReport {
            at: now,
            trigger: trigger.to_string(),
            ..RunReport::default()
        };
        let resetter = Actor {
            name: "nightly".into(),
            source: actor.name.clone(),
        };
        let seats = self.service.state().seats()?;
        report.still_on = seats
            .iter()
            .filter(|s| self.service.activity().still_on(&s.name))
            .map(|s| s.name.clone())
            .collect();
        for seat in seats {
            if seat.policy == ResetPolicy::Persistent || seat.maintenance {
                continue;
            }
            let online = self.service.activity().is_online(&seat.name);
            if online && policy == OnlinePolicy::Skip {
                self.service.audit(
                    &resetter,
                    "nightly.seat.skipped",
                    &seat.name,
                    "still online; not reset",
                );
                report.skipped.push(seat.name);
                continue;
            }
            match self.service.reset_seat(&resetter, &seat.name) {
                Ok(_) if online => report.forced.push(seat.name),
                Ok(_) => report.reset.push(seat.name),
                Err(e) => {
                    self.service.audit(
                        &resetter,
                        "nightly.seat.failed",
                        &seat.name,
                        &e.to_string(),
                    );
                    report.failed.push(seat.name);
                }
            }
        }
        self.service
            .state()
            .set_setting(KEY_LAST, &now.to_string())?;
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(" ")
            }
        };
        let (reset, forced) = (list(&report.reset), list(&report.forced));
        let (skipped, failed) = (list(&report.skipped), list(&report.failed));
        let still_on = list(&report.still_on);
        let counts = [
            report.reset.len().to_string(),
            report.forced.len().to_string(),
            report.skipped.len().to_string(),
            report.failed.len().to_string(),
            report.still_on.len().to_string(),
        ];
        self.service.audit_args(
            actor,
            "nightly.run",
            "nightly",
            &format!(
                "{trigger}: reset {}: {reset}; forced {}: {forced}; skipped {}: {skipped}; failed {}: {failed}; still on {}: {still_on}",
                counts[0], counts[1], counts[2], counts[3], counts[4]
            ),
            &[
                ("trigger", trigger),
                ("reset_n", &counts[0]),
                ("reset", &reset),
                ("forced_n", &counts[1]),
                ("forced", &forced),
                ("skipped_n", &counts[2]),
                ("skipped", &skipped),
                ("failed_n", &counts[3]),
                ("failed", &failed),
                ("still_on_n", &counts[4]),
                ("still_on", &still_on),
            ],
        );
        Ok(report)
    }

    /// Run if a scheduled time passed since the last run (at most once,
    /// however many were missed).
    pub fn tick(&self) -> Result<Option<RunReport>, ServiceError> {
        let now = self.clock.now().timestamp();
        let Some(last) = self.last_run() else {
            // First start of this installation: nothing was missed yet.
            self.service
                .state()
                .set_setting(KEY_LAST, &now.to_string())?;
            return Ok(None);
        };
        match self.next_after(last) {
            Some(due) if due <= now => {
                let trigger = if now - due > 120 {
                    "catch-up"
                } else {
                    "schedule"
                };
                self.run_now(&Actor::server(), trigger).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The scheduler loop; a run missed while the server was down happens
    /// on the first tick.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        loop {
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.tick()).await {
                Ok(Ok(Some(r))) => tracing::info!(
                    "nightly reset ({}): {} reset, {} forced, {} skipped, {} failed; still on: {}",
                    r.trigger,
                    r.reset.len(),
                    r.forced.len(),
                    r.skipped.len(),
                    r.failed.len(),
                    r.still_on.join(" ")
                ),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!("nightly reset: {e}"),
                Err(e) => tracing::error!("nightly reset task: {e}"),
            }
            let now = self.clock.now().timestamp();
            let wait = self
                .next_after(self.last_run().unwrap_or(now).max(now))
                .map_or(MAX_SLEEP, |n| {
                    Duration::from_secs(u64::try_from(n - now).unwrap_or(0)).min(MAX_SLEEP)
                });
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(wait.max(Duration::from_secs(1))) => {}
            }
        }
    }

    /// Past runs, newest first.
    pub fn history(&self, limit: u32) -> Vec<khoi_state::Event> {
        self.service
            .state()
            .events_filtered(&EventFilter {
                kind: Some("nightly.run".into()),
                limit,
                ..EventFilter::default()
            })
            .unwrap_or_default()
    }
}
