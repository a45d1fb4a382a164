//! The host checks of `khoi doctor`, for the admin page. The checks
//! themselves belong to the binary (they read its configuration and the
//! host); it hands the service a [`Runner`] at start, and the page and the
//! API ask the service.
//!
//! A run probes the boot LAN (one DHCP DISCOVER) and waits for answers, so
//! runs take turns and a result is reused for [`FRESH`]: reloading the page
//! neither stacks probes nor floods the LAN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::service::{Service, ServiceError};

/// How long a result is shown before the checks run again.
pub const FRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Stable identifier (`version`, `free_space`, `dhcp`, ...).
    pub id: String,
    pub status: Status,
    pub message: String,
    /// What to do about it; empty when nothing needs doing.
    pub fix: String,
}

/// The checks as of `at` (unix seconds), worded in one language.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub at: i64,
    pub english: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }
}

/// Runs every check, worded in English when asked, else Vietnamese.
pub type Runner = Arc<dyn Fn(bool) -> Vec<Check> + Send + Sync>;

#[derive(Default)]
pub(crate) struct Doctor {
    runner: Mutex<Option<Runner>>,
    /// Held while the checks run: one probe at a time.
    last: Mutex<Option<(Instant, Report)>>,
}

impl std::fmt::Debug for Doctor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doctor").finish_non_exhaustive()
    }
}

impl Service {
    /// The checks the page runs (the binary's `khoi doctor`).
    pub fn set_doctor(&self, runner: Runner) {
        *self.doctor.runner.lock() = Some(runner);
    }

    /// The host checks, from the last run if it is under [`FRESH`] old and
    /// in the same language. Blocks for as long as the checks take.
    pub fn doctor(&self, english: bool) -> Result<Report, ServiceError> {
        let runner = self.doctor.runner.lock().clone().ok_or_else(|| {
            ServiceError::NotFound("the host checks run only inside khoi serve".into())
        })?;
        let mut last = self.doctor.last.lock();
        if let Some((when, r)) = last.as_ref()
            && r.english == english
            && when.elapsed() < FRESH
        {
            return Ok(r.clone());
        }
        let report = Report {
            at: crate::activity::unix_now(),
            english,
            checks: runner(english),
        };
        *last = Some((Instant::now(), report.clone()));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn service(dir: &std::path::Path) -> Service {
        let store = Arc::new(
            khoi_block::Store::open(dir, khoi_block::StoreOptions::default()).expect("store"),
        );
        let state = Arc::new(khoi_state::State::open_in_memory().expect("state"));
        Service::new(
            store,
            state,
            crate::ServiceConfig {
                data_dir: dir.to_path_buf(),
                default_seat_quota: 0,
                target_prefix: "iqn.2025-07.vn.khoi".into(),
                iscsi_portal: None,
                nbd_address: None,
                import_roots: Vec::new(),
            },
        )
    }

    #[test]
    fn runs_take_turns_and_a_fresh_result_is_reused_per_language() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        assert!(matches!(svc.doctor(false), Err(ServiceError::NotFound(_))));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        svc.set_doctor(Arc::new(move |english| {
            r.fetch_add(1, Ordering::SeqCst);
            vec![Check {
                id: "version".into(),
                status: Status::Ok,
                message: if english { "Khoi" } else { "Khôi" }.into(),
                fix: String::new(),
            }]
        }));
        let vi = svc.doctor(false).expect("run");
        assert_eq!(vi.checks[0].message, "Khôi");
        assert_eq!(vi.count(Status::Ok), 1);
        svc.doctor(false).expect("again");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "reused while fresh");
        let en = svc.doctor(true).expect("english");
        assert_eq!(en.checks[0].message, "Khoi");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "another language runs");
    }
}
