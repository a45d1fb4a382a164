//! The image gate: the directive's rules (`khoi-inspect`) checked on a
//! version or a draft before it can reach a seat.
//!
//! Where it runs: at import, at draft publish, on demand, and in the
//! background when an image's profile or policy changes. The check reads the
//! image through the block store (a version device, the draft overlay); it
//! is synchronous and may take seconds, so every caller is already on a
//! blocking thread (the API wraps service calls in `spawn_blocking`) or on
//! the re-check thread spawned here.
//!
//! What it decides: a version with a blocking finding cannot become
//! current (publish, rollback, a new import) unless an admin overrides it
//! with a written reason, which goes into the audit log with the findings.

use std::sync::Arc;

use khoi_block::BlockDevice as _;

pub use khoi_inspect::{Finding, Policy, Profile, Report, RuleId, Severity};
use serde::{Deserialize, Serialize};

use crate::service::{Actor, Result, Service, ServiceError};
use crate::users::Role;

/// The shortest override reason accepted: a word or two is not a reason.
pub const MIN_OVERRIDE_REASON: usize = 10;

/// An image's gate settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSettings {
    pub profile: Profile,
    #[serde(flatten)]
    pub policy: Policy,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            profile: Profile::Counter,
            policy: Policy::default(),
        }
    }
}

/// The badge of a version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateStatus {
    Passed,
    Warnings,
    Failed,
    /// Failed, and an admin let it through with a reason.
    Overridden,
    #[default]
    NotChecked,
}

impl GateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GateStatus::Passed => "passed",
            GateStatus::Warnings => "warnings",
            GateStatus::Failed => "failed",
            GateStatus::Overridden => "overridden",
            GateStatus::NotChecked => "not-checked",
        }
    }

    /// The translation key of the badge.
    pub fn key(self) -> &'static str {
        match self {
            GateStatus::Passed => "gate.passed",
            GateStatus::Warnings => "gate.warnings",
            GateStatus::Failed => "gate.failed",
            GateStatus::Overridden => "gate.overridden",
            GateStatus::NotChecked => "gate.not-checked",
        }
    }

    /// What the check alone says (before any override).
    pub fn of(report: &Report) -> GateStatus {
        if !report.passed() {
            GateStatus::Failed
        } else if report.findings.is_empty() {
            GateStatus::Passed
        } else {
            GateStatus::Warnings
        }
    }

    /// Seats must not boot it without an admin's decision.
    pub fn blocks(self) -> bool {
        self == GateStatus::Failed
    }
}

/// An admin's override as kept with the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateOverride {
    pub by: String,
    pub reason: String,
}

/// The gate's result for one version (or a draft: `version` is `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub image: String,
    pub version: Option<u32>,
    pub status: GateStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    #[serde(default)]
    pub checked: i64,
    #[serde(default)]
    pub checked_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<GateOverride>,
}

impl GateResult {
    /// An on-demand check of a draft (not kept: the draft still changes).
    pub fn of_draft(image: &str, report: Report, by: &str) -> GateResult {
        GateResult {
            image: image.into(),
            version: None,
            status: GateStatus::of(&report),
            report: Some(report),
            checked: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            checked_by: by.into(),
            r#override: None,
        }
    }

    fn not_checked(image: &str, version: Option<u32>) -> GateResult {
        GateResult {
            image: image.into(),
            version,
            status: GateStatus::NotChecked,
            report: None,
            checked: 0,
            checked_by: String::new(),
            r#override: None,
        }
    }
}

/// A publish (or rollback) the gate refused: the findings the caller shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRefusal {
    pub image: String,
    pub findings: Vec<Finding>,
}

impl std::fmt::Display for GateRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .findings
            .iter()
            .filter(|x| x.severity == Severity::Blocking)
            .count();
        write!(
            f,
            "the image gate refused {:?}: {n} blocking finding(s); fix them (see the findings) \
             or have an admin override with a written reason",
            self.image
        )
    }
}

/// One line per finding, the way the audit log keeps an override's findings:
/// rule id and subject, never a detail that could hold more.
pub fn findings_summary(findings: &[Finding]) -> String {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Blocking)
        .map(|f| format!("{} ({})", rule_name(f.rule), f.subject))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn rule_name(id: RuleId) -> String {
    serde_json::to_string(&id)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default()
}

fn profile_name(p: Profile) -> &'static str {
    match p {
        Profile::Counter => "counter",
        Profile::Kiosk => "kiosk",
    }
}

pub fn parse_profile(s: &str) -> Result<Profile> {
    match s {
        "counter" => Ok(Profile::Counter),
        "kiosk" => Ok(Profile::Kiosk),
        other => Err(ServiceError::Invalid {
            field: "profile".into(),
            reason: format!("{other:?}: expected counter or kiosk"),
        }),
    }
}

impl Service {
    /// The role behind an actor: a web user's from the accounts; the local
    /// control socket's callers are the server's own administrators (the
    /// socket's file permissions are their authentication, and web user
    /// names cannot contain `:`).
    pub fn role_of(&self, actor: &Actor) -> Option<Role> {
        if actor.name.starts_with("local:") {
            return Some(Role::Admin);
        }
        let user = self.state().user(&actor.name).ok()??;
        Role::parse(&user.role).ok()
    }

    pub fn gate_settings(&self, image: &str) -> Result<GateSettings> {
        self.store().current_version(image)?;
        Ok(match self.state().gate_settings(image)? {
            Some(s) => GateSettings {
                profile: parse_profile(&s.profile)?,
                policy: serde_json::from_str(&s.policy)
                    .map_err(|e| ServiceError::Internal(format!("gate policy of {image}: {e}")))?,
            },
            None => GateSettings::default(),
        })
    }

    /// Change an image's profile and policy (audited); the current version
    /// is checked again in the background under the new rules.
    pub fn set_gate_settings(
        self: &Arc<Self>,
        actor: &Actor,
        image: &str,
        new: &GateSettings,
    ) -> Result<GateSettings> {
        // Turning a rule off or allowing an administrator decides what
        // reaches every seat: the same role as an override.
        if self.role_of(actor) != Some(Role::Admin) {
            return Err(ServiceError::Forbidden(
                "only an admin can change an image's gate profile or policy".into(),
            ));
        }
        let old = self.gate_settings(image)?;
        if new.profile != old.profile {
            self.check_profile_on_networks(image, new.profile)?;
        }
        for a in &new.policy.admin_allow {
            if a.trim().is_empty() || a.len() > 256 {
                return Err(ServiceError::Invalid {
                    field: "admin_allow".into(),
                    reason: "an allowed account is a user name, a SID or a RID".into(),
                });
            }
        }
        let policy = serde_json::to_string(&new.policy)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.state().set_gate_settings(
            image,
            &khoi_state::GateSettings {
                profile: profile_name(new.profile).into(),
                policy,
            },
        )?;
        let mut changes = Vec::new();
        if old.profile != new.profile {
            changes.push(format!(
                "profile {} -> {}",
                profile_name(old.profile),
                profile_name(new.profile)
            ));
        }
        if old.policy.admin_allow != new.policy.admin_allow {
            changes.push(format!(
                "admin allow-list [{}] -> [{}]",
                old.policy.admin_allow.join(", "),
                new.policy.admin_allow.join(", ")
            ));
        }
        if old.policy.disabled != new.policy.disabled {
            let names = |v: &[RuleId]| v.iter().map(|r| rule_name(*r)).collect::<Vec<_>>();
            changes.push(format!(
                "disabled rules [{}] -> [{}]",
                names(&old.policy.disabled).join(", "),
                names(&new.policy.disabled).join(", ")
            ));
        }
        if !changes.is_empty() {
            self.audit(actor, "image.gate.settings", image, &changes.join(", "));
            let svc = Arc::clone(self);
            let image = image.to_string();
            // A check reads the image for seconds: the caller's answer does
            // not wait for it, the badge shows the new result when it lands.
            let spawned = std::thread::Builder::new()
                .name("gate-recheck".into())
                .spawn(move || {
                    if let Err(e) = svc.recheck_current(&image) {
                        tracing::warn!(image, "gate re-check failed: {e}");
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start the gate re-check: {e}");
            }
        }
        self.gate_settings(image)
    }

    /// Check the image's current version again (after a rule change).
    pub fn recheck_current(&self, image: &str) -> Result<GateResult> {
        let n = self.store().current_version(image)?;
        self.check_version(&Actor::server(), image, n)
    }

    /// Check a published version and keep the result.
    pub fn check_version(&self, actor: &Actor, image: &str, n: u32) -> Result<GateResult> {
        let dev = self.store().open_version(image, n)?;
        let s = self.gate_settings(image)?;
        let report = khoi_inspect::check(dev.as_ref(), s.profile, &s.policy);
        self.keep_result(actor, image, n, &report)?;
        self.gate_result(image, n)
    }

    /// Check the image's open draft (nothing is kept: the draft changes).
    pub fn check_draft(&self, image: &str) -> Result<Report> {
        let draft = self.store().draft(image).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "image {image:?} has no open draft (open one with: khoi draft open {image})"
            ))
        })?;
        let s = self.gate_settings(image)?;
        Ok(khoi_inspect::check(draft.as_ref(), s.profile, &s.policy))
    }

    pub(crate) fn keep_result(
        &self,
        actor: &Actor,
        image: &str,
        n: u32,
        report: &Report,
    ) -> Result<()> {
        let json =
            serde_json::to_string(report).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let status = GateStatus::of(report);
        self.state()
            .put_gate_result(image, n, status.as_str(), &json, &actor.name)?;
        let n_s = n.to_string();
        let count = report.findings.len().to_string();
        self.audit_args(
            actor,
            "image.gate.check",
            image,
            &format!(
                "version {n}: {} ({} finding(s))",
                status.as_str(),
                report.findings.len()
            ),
            &[
                ("version", &n_s),
                ("status", status.as_str()),
                ("findings", &count),
            ],
        );
        Ok(())
    }

    /// The kept result of a version (`not-checked` when there is none).
    pub fn gate_result(&self, image: &str, n: u32) -> Result<GateResult> {
        Ok(match self.state().gate_result(image, n)? {
            Some(r) => from_row(r),
            None => GateResult::not_checked(image, Some(n)),
        })
    }

    /// Refuse to let a failed report through unless `reason` is an admin's
    /// written override; on an accepted override, audit it with the
    /// findings. Returns the override to keep with the version.
    pub(crate) fn gate_decide(
        &self,
        actor: &Actor,
        image: &str,
        what: &str,
        report: &Report,
        reason: Option<&str>,
    ) -> Result<Option<GateOverride>> {
        if report.passed() {
            return Ok(None);
        }
        let Some(reason) = reason else {
            return Err(ServiceError::Gate(Box::new(GateRefusal {
                image: image.into(),
                findings: report.findings.clone(),
            })));
        };
        if self.role_of(actor) != Some(Role::Admin) {
            return Err(ServiceError::Forbidden(
                "only an admin can override the image gate".into(),
            ));
        }
        let reason = reason.trim();
        if reason.chars().count() < MIN_OVERRIDE_REASON {
            return Err(ServiceError::Invalid {
                field: "override".into(),
                reason: format!(
                    "write why the findings are accepted (at least {MIN_OVERRIDE_REASON} characters); \
                     it goes into the audit log"
                ),
            });
        }
        let findings = findings_summary(&report.findings);
        self.audit_args(
            actor,
            "image.gate.override",
            image,
            &format!("{what}: {reason}; findings: {findings}"),
            &[("what", what), ("reason", reason), ("findings", &findings)],
        );
        Ok(Some(GateOverride {
            by: actor.name.clone(),
            reason: reason.into(),
        }))
    }

    /// A seat pinned to a version boots it whatever the current version is:
    /// the same gate as making it current. Checks the version first if it
    /// never was; an override given once for the version stands.
    pub(crate) fn gate_pin(
        &self,
        actor: &Actor,
        image: &str,
        n: u32,
        seat: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        if !self.gate_enforced() {
            return Ok(());
        }
        let (report, overridden) = self.gate_version_report(image, n)?;
        if overridden {
            return Ok(());
        }
        if let Some(o) = self.gate_decide(
            actor,
            image,
            &format!("pin seat {seat} to version {n}"),
            &report,
            reason,
        )? {
            self.state().set_gate_override(image, n, &o.by, &o.reason)?;
        }
        Ok(())
    }

    /// Whether a version may become current, checking it first if it never
    /// was (a version published before the gate existed).
    pub(crate) fn gate_version_report(&self, image: &str, n: u32) -> Result<(Report, bool)> {
        if let Some(r) = self.state().gate_result(image, n)?
            && let Ok(report) = serde_json::from_str::<Report>(&r.report)
        {
            return Ok((report, r.override_reason.is_some()));
        }
        let r = self.check_version(&Actor::server(), image, n)?;
        let report = r
            .report
            .ok_or_else(|| ServiceError::Internal("gate check kept no report".into()))?;
        Ok((report, false))
    }
}

/// What `khoi image fix` did: the remedies applied to the draft and the
/// findings before and after (the diff the officer reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixView {
    pub image: String,
    /// A draft was opened for the fix (otherwise the open one was fixed).
    pub opened_draft: bool,
    pub remedies: Vec<khoi_inspect::fix::Remedy>,
    pub before: Report,
    pub after: Report,
    pub diff: khoi_inspect::fix::FindingsDiff,
}

/// The longest a fix may run before its tools are killed.
const FIX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

impl Service {
    /// Apply the safe remedies to the image's draft (opened over the current
    /// version when there is none), then check it again. Admin only,
    /// audited; the admin publishes as usual afterwards (the gate runs again).
    pub fn image_fix(&self, actor: &Actor, image: &str) -> Result<FixView> {
        if self.role_of(actor) != Some(Role::Admin) {
            return Err(ServiceError::Forbidden(
                "only an admin can fix an image".into(),
            ));
        }
        let s = self.gate_settings(image)?;
        // A maintenance seat boots the draft: Windows would have the volume
        // mounted while ntfs-3g writes it, and one of them would corrupt it.
        // Turned off first, the seat cannot boot into the draft meanwhile.
        let maintenance: Vec<String> = self
            .state()
            .seats_on_image(image)?
            .into_iter()
            .filter(|s| s.maintenance)
            .map(|s| s.name)
            .collect();
        if !maintenance.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "seat(s) {} are in maintenance on the draft of {image:?}: shut them down and turn                  maintenance off before the fix writes the draft",
                maintenance.join(", ")
            )));
        }
        // Decide from what the fix would write: the open draft, or the
        // current version a new draft would start from.
        let before = match self.store().draft(image) {
            Some(d) => khoi_inspect::check(d.as_ref(), s.profile, &s.policy),
            None => {
                let n = self.store().current_version(image)?;
                let dev = self.store().open_version(image, n)?;
                khoi_inspect::check(dev.as_ref(), s.profile, &s.policy)
            }
        };
        if let Some(why) = khoi_inspect::fix::refusal(&before) {
            return Err(ServiceError::Conflict(format!(
                "image {image:?} cannot be fixed: {why}"
            )));
        }
        let remedies = khoi_inspect::fix::remedies(&before);
        if remedies.is_empty() {
            return Ok(FixView {
                image: image.into(),
                opened_draft: false,
                remedies,
                diff: khoi_inspect::fix::diff(&before, &before),
                after: before.clone(),
                before,
            });
        }
        let opened_draft = self.store().draft(image).is_none();
        if opened_draft {
            self.draft_open(actor, image)?;
        }
        // Publish and discard take this lock: the draft stays put while the
        // tools write it.
        let _g = self.admin_lock();
        let draft = self
            .store()
            .draft(image)
            .ok_or_else(|| ServiceError::Conflict(format!("the draft of {image:?} went away")))?;
        let target = khoi_inspect::fix::locate(draft.as_ref())
            .map_err(|e| ServiceError::Conflict(format!("image {image:?} cannot be fixed: {e}")))?;
        // In the temporary folder, not the data folder: the child may run as
        // `nobody` (when Khoi is root), who cannot reach into the 0700 data
        // folder; the packaged unit's PrivateTmp makes it private to Khoi and
        // emptied at every restart, which also clears what a killed fix left.
        let work = khoi_inspect::fix::workdir_in(&std::env::temp_dir())
            .map_err(|e| ServiceError::Internal(format!("fix work folder: {e}")))?;
        crate::staging::sandbox::chown_dir_for_child(work.path())
            .map_err(|e| ServiceError::Internal(format!("fix work folder: {e}")))?;
        let opts = khoi_inspect::fix::ApplyOptions {
            workdir: work.path().to_path_buf(),
            timeout: FIX_TIMEOUT,
        };
        let dev: Arc<dyn khoi_block::BlockDevice> = draft.clone();
        let applied = khoi_inspect::fix::apply(dev, target, &remedies, &opts, &|cmd| {
            crate::staging::sandbox::confine_fix(cmd);
        });
        draft
            .flush()
            .map_err(|e| ServiceError::Internal(format!("flush the draft: {e}")))?;
        let after = khoi_inspect::check(draft.as_ref(), s.profile, &s.policy);
        let names: Vec<&str> = remedies.iter().map(|r| r.name()).collect();
        let names = names.join(", ");
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(image, "fix failed: {e}");
                self.audit_args(
                    actor,
                    "image.fix.failed",
                    image,
                    &format!("{names}: the tools failed"),
                    &[("remedies", &names)],
                );
                return Err(ServiceError::Conflict(format!(
                    "the fix of {image:?} did not finish (details in the server log); the draft \
                     may be partly fixed: check it, or discard it"
                )));
            }
        };
        tracing::debug!(image, log = %applied.log, "fix tools output");
        let diff = khoi_inspect::fix::diff(&before, &after);
        let (fixed, left) = (
            diff.fixed.len().to_string(),
            after.findings.len().to_string(),
        );
        self.audit_args(
            actor,
            "image.fix",
            image,
            &format!("draft: {names}; {fixed} finding(s) fixed, {left} left"),
            &[("remedies", &names), ("fixed", &fixed), ("left", &left)],
        );
        Ok(FixView {
            image: image.into(),
            opened_draft,
            remedies: applied.remedies,
            before,
            after,
            diff,
        })
    }
}

fn from_row(r: khoi_state::GateResult) -> GateResult {
    let report: Option<Report> = serde_json::from_str(&r.report).ok();
    let status = match r.status.as_str() {
        "passed" => GateStatus::Passed,
        "warnings" => GateStatus::Warnings,
        _ if r.override_reason.is_some() => GateStatus::Overridden,
        _ => GateStatus::Failed,
    };
    GateResult {
        image: r.image,
        version: Some(r.version),
        status,
        report,
        checked: r.checked,
        checked_by: r.checked_by,
        r#override: r.override_reason.map(|reason| GateOverride {
            by: r.override_by.unwrap_or_default(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use khoi_block::{BlockDevice, Store, StoreOptions, WriteFlags};
    use khoi_inspect::fixtures::{Image, Login, chrome_login};
    use khoi_state::State;

    use super::*;
    use crate::service::{PublishRequest, ServiceConfig};

    /// A clean counter image (its only other admin, `quantri`, disabled, so
    /// the default empty allow-list passes) and the same image with a saved
    /// password; built once for the module (mkntfs and ntfs-3g take seconds).
    fn images() -> &'static (Vec<u8>, Vec<u8>) {
        static IMAGES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
        IMAGES.get_or_init(|| {
            let mut clean = Image::clean();
            clean.user(1002, "quantri", true);
            let mut dirty = clean.clone();
            dirty.logins.insert(
                chrome_login("canbo", "Default"),
                vec![Login {
                    origin: "https://dichvucong.gov.vn/".into(),
                    blacklisted: false,
                }],
            );
            let (a, b) = (clean.build(), dirty.build());
            assert_eq!(a.len(), b.len(), "both fixtures have one size");
            (a, b)
        })
    }

    fn service(dir: &Path) -> Arc<Service> {
        let store = Arc::new(Store::open(dir, StoreOptions::default()).expect("store"));
        let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
        let svc = Arc::new(Service::new(
            store,
            Arc::clone(&state),
            ServiceConfig {
                data_dir: dir.to_path_buf(),
                default_seat_quota: 1 << 30,
                target_prefix: "iqn.2025-07.vn.khoi".into(),
                iscsi_portal: None,
                nbd_address: None,
                import_roots: vec![],
            },
        ));
        svc.add_user(&Actor::server(), "an", "admin", "admin-pass-1")
            .or_else(|e| match e {
                ServiceError::Conflict(_) | ServiceError::Invalid { .. } => Ok(()),
                e => Err(e),
            })
            .expect("admin");
        let _ = svc.add_user(&Actor::server(), "op", "operator", "operator-pass");
        svc
    }

    fn web(name: &str) -> Actor {
        Actor {
            name: name.into(),
            source: "127.0.0.1".into(),
        }
    }

    fn import(svc: &Service, bytes: &[u8]) -> u32 {
        let file = format!("fixture-{}.raw", bytes.len());
        std::fs::write(svc.staging_dir().join(&file), bytes).expect("stage");
        svc.import(&web("an"), "win", &file, "golden")
            .expect("import")
            .number
    }

    /// Open a draft of `win` whose blocks are `bytes`.
    fn draft_of(svc: &Service, bytes: &[u8]) {
        svc.draft_open(&web("an"), "win").expect("draft");
        let d = svc.store().draft("win").expect("open draft");
        d.write_at(bytes, 0, WriteFlags::NONE).expect("write draft");
    }

    fn publish(
        svc: &Service,
        who: &str,
        reason: Option<&str>,
    ) -> Result<crate::service::VersionView> {
        svc.draft_publish_with(
            &web(who),
            "win",
            &PublishRequest {
                note: "update".into(),
                force: false,
                override_reason: reason.map(str::to_string),
            },
        )
    }

    fn events(svc: &Service, kind: &str) -> Vec<khoi_state::Event> {
        svc.state()
            .events_filtered(&khoi_state::EventFilter {
                kind: Some(kind.into()),
                limit: 100,
                ..Default::default()
            })
            .expect("events")
    }

    #[test]
    fn clean_image_passes_and_a_failing_draft_is_refused_until_an_admin_overrides() {
        let (clean, dirty) = images();
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let v1 = import(&svc, clean);
        assert_eq!(
            svc.gate_result("win", v1).expect("r").status,
            GateStatus::Passed
        );

        // A clean draft publishes.
        draft_of(&svc, clean);
        let v2 = publish(&svc, "op", None).expect("clean publish");
        assert_eq!(v2.gate, GateStatus::Passed);

        // A failing draft is refused with its findings, and stays open.
        draft_of(&svc, dirty);
        let Err(ServiceError::Gate(refusal)) = publish(&svc, "op", None) else {
            panic!("a failing draft must be refused");
        };
        assert!(
            refusal
                .findings
                .iter()
                .any(|f| f.rule == RuleId::SavedBrowserPassword
                    && f.subject.contains("dichvucong.gov.vn")),
            "{refusal:?}"
        );
        assert!(
            svc.store().draft("win").is_some(),
            "the draft stays for the fix"
        );

        // An operator cannot override; a short reason is no reason.
        assert!(matches!(
            publish(&svc, "op", Some("the clerk needs it today")),
            Err(ServiceError::Forbidden(_))
        ));
        assert!(matches!(
            publish(&svc, "an", Some("ok")),
            Err(ServiceError::Invalid { .. })
        ));
        assert!(events(&svc, "image.gate.override").is_empty());

        let reason = "pilot seat only, fixed in the next version";
        let v3 = publish(&svc, "an", Some(reason)).expect("admin override");
        assert_eq!(v3.gate, GateStatus::Overridden);
        assert_eq!(svc.store().current_version("win").expect("cur"), v3.number);
        let ev = events(&svc, "image.gate.override");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].actor, "an");
        assert!(ev[0].detail.contains(reason), "{}", ev[0].detail);
        assert!(
            ev[0].detail.contains("saved-browser-password (")
                && ev[0].detail.contains("dichvucong"),
            "{}",
            ev[0].detail
        );
        let kept = svc.gate_result("win", v3.number).expect("r");
        assert_eq!(kept.r#override.expect("kept").reason, reason);

        // Rolling back to the overridden version needs no second override;
        // the results survive a restart.
        svc.rollback(&web("op"), "win", v2.number)
            .expect("back to clean");
        svc.rollback(&web("op"), "win", v3.number)
            .expect("overridden already");
        drop(svc);
        let svc = service(dir.path());
        assert_eq!(
            svc.gate_result("win", v1).expect("r").status,
            GateStatus::Passed
        );
        let vs = svc.versions("win").expect("versions");
        let badges: Vec<_> = vs.iter().map(|v| v.gate).collect();
        assert_eq!(
            badges,
            [
                GateStatus::Passed,
                GateStatus::Passed,
                GateStatus::Overridden
            ]
        );
    }

    #[test]
    fn a_failing_import_is_kept_but_does_not_become_current_and_rollback_to_it_is_gated() {
        let (clean, dirty) = images();
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let v1 = import(&svc, clean);
        let v2 = import(&svc, dirty);
        assert_eq!(
            svc.gate_result("win", v2).expect("r").status,
            GateStatus::Failed
        );
        assert_eq!(svc.store().current_version("win").expect("cur"), v1);
        assert_eq!(events(&svc, "image.gate.held").len(), 1);
        assert!(matches!(
            svc.rollback(&web("an"), "win", v2),
            Err(ServiceError::Gate(_))
        ));
        assert!(matches!(
            svc.rollback_with(&web("op"), "win", v2, Some("the clerk needs it today")),
            Err(ServiceError::Forbidden(_))
        ));
        svc.rollback_with(&web("an"), "win", v2, Some("accepted until the fix lands"))
            .expect("admin override");
        assert_eq!(svc.store().current_version("win").expect("cur"), v2);
    }

    #[test]
    fn kiosk_profile_fails_an_enabled_admin_in_the_background_recheck() {
        // `quantri` is an enabled administrator here: it fails until the
        // allow-list names it, and a kiosk allows no administrator at all.
        let with_admin = Image::clean().build();
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let v1 = import(&svc, &with_admin);
        let first = svc.gate_result("win", v1).expect("r");
        assert_eq!(first.status, GateStatus::Failed);
        assert!(
            first
                .report
                .expect("report")
                .has(RuleId::ExtraAdministrator)
        );
        let allow = GateSettings {
            profile: Profile::Counter,
            policy: Policy {
                admin_allow: vec!["quantri".into()],
                disabled: vec![],
            },
        };
        svc.set_gate_settings(&web("an"), "win", &allow)
            .expect("allow");
        wait_for(&svc, v1, |s| s == GateStatus::Passed);
        let kiosk = GateSettings {
            profile: Profile::Kiosk,
            ..allow
        };
        let before = svc.gate_result("win", v1).expect("r").checked;
        let got = svc
            .set_gate_settings(&web("an"), "win", &kiosk)
            .expect("kiosk");
        assert_eq!(got.profile, Profile::Kiosk);
        let r = wait_for(&svc, v1, |s| s == GateStatus::Failed);
        assert!(r.checked >= before);
        let report = r.report.expect("report");
        assert_eq!(report.profile, Profile::Kiosk);
        assert!(report.has(RuleId::ExtraAdministrator), "{report:?}");
        assert_eq!(events(&svc, "image.gate.settings").len(), 2);
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn fix_turns_a_failing_version_into_a_passing_draft_that_publishes_without_the_secrets() {
        let (_, dirty) = images();
        let psk = "KhoaWifiBiMat2025";
        let mut img = Image::clean();
        img.user(1002, "quantri", true);
        img.logins.insert(
            chrome_login("canbo", "Default"),
            vec![Login {
                origin: "https://dichvucong.gov.vn/".into(),
                blacklisted: false,
            }],
        );
        img.files.insert(
            "ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces\\{6B4A1E6B-1111-2222-3333-444455556666}\\p.xml".into(),
            format!("<WLANProfile><keyMaterial>{psk}</keyMaterial></WLANProfile>").into_bytes(),
        );
        img.software
            .unset("Policies\\Google\\Chrome", "PasswordManagerEnabled");
        let bytes = img.build();
        assert!(contains(&bytes, psk.as_bytes()));
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let v1 = import(&svc, &bytes);
        assert_eq!(
            svc.gate_result("win", v1).expect("r").status,
            GateStatus::Failed
        );

        assert!(matches!(
            svc.image_fix(&web("op"), "win"),
            Err(ServiceError::Forbidden(_))
        ));
        assert!(
            svc.store().draft("win").is_none(),
            "an operator opens nothing"
        );

        let view = svc.image_fix(&web("an"), "win").expect("fix");
        assert!(view.opened_draft);
        assert!(!view.before.passed());
        assert!(view.after.findings.is_empty(), "{:#?}", view.after.findings);
        let fixed: Vec<RuleId> = view.diff.fixed.iter().map(|f| f.rule).collect();
        for id in [
            RuleId::SavedBrowserPassword,
            RuleId::WlanProfileSaved,
            RuleId::PasswordManagerChrome,
        ] {
            assert!(fixed.contains(&id), "{id:?} not fixed: {fixed:?}");
        }
        let ev = events(&svc, "image.fix");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].actor, "an");

        // Published as usual: the gate runs again and passes.
        let v2 = publish(&svc, "an", None).expect("publish the fixed draft");
        assert_eq!(v2.gate, GateStatus::Passed);
        let dev = svc.store().open_version("win", v2.number).expect("v2");
        let mut raw = vec![0u8; usize::try_from(dev.size()).expect("size")];
        dev.read_at(&mut raw, 0).expect("read v2");
        assert!(
            !contains(&raw, psk.as_bytes()),
            "the Wi-Fi key reached the version"
        );
        assert!(
            !contains(&raw, b"canbo.secret"),
            "the saved login reached the version"
        );
        assert!(contains(dirty, b"canbo.secret"), "the fixture had it");
        // ntfs-3g's own reader agrees: no profile file is left.
        let part = dir.path().join("part.img");
        let target = khoi_inspect::fix::locate(dev.as_ref()).expect("locate");
        let start = usize::try_from(target.part_start).expect("start");
        let len = usize::try_from(target.part_len).expect("len");
        std::fs::write(&part, &raw[start..start + len]).expect("part");
        let out = std::process::Command::new("ntfsls")
            .arg("-R")
            .arg(&part)
            .output()
            .expect("ntfsls");
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("Login Data"), "{listing}");
        assert!(!listing.contains("p.xml"), "{listing}");

        // Nothing left to fix: no draft is opened for nothing.
        let again = svc.image_fix(&web("an"), "win").expect("fix again");
        assert!(again.remedies.is_empty() && !again.opened_draft);
        assert!(svc.store().draft("win").is_none());
    }

    #[test]
    fn fix_refuses_while_a_seat_is_in_maintenance_on_the_draft() {
        let (_, dirty) = images();
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        import(&svc, dirty);
        svc.add_seat(
            &web("an"),
            &crate::service::AddSeat {
                name: "may-mau".into(),
                mac: "52:54:00:12:34:07".into(),
                image: "win".into(),
                version: None,
                policy: None,
                quota: None,
                initiator_iqn: None,
                mutual_chap: false,
            },
        )
        .expect("seat");
        let on = khoi_state::SeatUpdate {
            maintenance: Some(true),
            ..Default::default()
        };
        svc.update_seat(&web("an"), "may-mau", &on)
            .expect("maintenance");
        let Err(ServiceError::Conflict(why)) = svc.image_fix(&web("an"), "win") else {
            panic!("a fix under a maintenance seat must be refused");
        };
        assert!(
            why.contains("may-mau") && why.contains("maintenance"),
            "{why}"
        );
        assert!(events(&svc, "image.fix").is_empty());
    }

    #[test]
    fn fix_refuses_a_dirty_volume_and_opens_no_draft() {
        let mut img = Image::clean();
        img.user(1002, "quantri", true);
        img.dirty = true;
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        import(&svc, &img.build());
        let Err(ServiceError::Conflict(why)) = svc.image_fix(&web("an"), "win") else {
            panic!("a dirty volume must be refused");
        };
        assert!(why.contains("dirty"), "{why}");
        assert!(svc.store().draft("win").is_none());
    }

    #[test]
    fn pinning_a_seat_to_a_failed_version_needs_an_admin_override() {
        let (clean, dirty) = images();
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let v1 = import(&svc, clean);
        let v2 = import(&svc, dirty);
        assert_eq!(
            svc.gate_result("win", v2).expect("r").status,
            GateStatus::Failed
        );
        let add = |version| crate::service::AddSeat {
            name: "quay-1".into(),
            mac: "52:54:00:12:34:01".into(),
            image: "win".into(),
            version,
            policy: None,
            quota: None,
            initiator_iqn: None,
            mutual_chap: false,
        };
        // A new seat pinned to the failed version: refused with the findings.
        let Err(ServiceError::Gate(refusal)) = svc.add_seat(&web("an"), &add(Some(v2))) else {
            panic!("pinning a new seat to a failed version must be refused");
        };
        assert!(
            refusal
                .findings
                .iter()
                .any(|f| f.rule == RuleId::SavedBrowserPassword)
        );
        assert!(svc.state().seat("quay-1").is_err(), "no seat was added");

        // An existing seat re-pinned: refused, then an operator cannot
        // override, then an admin can, audited.
        svc.add_seat(&web("an"), &add(Some(v1)))
            .expect("pin to the clean one");
        let pin = khoi_state::SeatUpdate {
            pinned_version: Some(Some(v2)),
            ..Default::default()
        };
        assert!(matches!(
            svc.update_seat(&web("an"), "quay-1", &pin),
            Err(ServiceError::Gate(_))
        ));
        assert!(matches!(
            svc.update_seat_with(&web("op"), "quay-1", &pin, Some("the clerk needs it today")),
            Err(ServiceError::Forbidden(_))
        ));
        assert_eq!(
            svc.state().seat("quay-1").expect("seat").pinned_version,
            Some(v1)
        );
        svc.update_seat_with(
            &web("an"),
            "quay-1",
            &pin,
            Some("pilot seat, fix next week"),
        )
        .expect("admin override");
        assert_eq!(
            svc.state().seat("quay-1").expect("seat").pinned_version,
            Some(v2)
        );
        let ev = events(&svc, "image.gate.override");
        assert_eq!(ev.len(), 1);
        assert!(
            ev[0].detail.contains("pin seat quay-1 to version"),
            "{}",
            ev[0].detail
        );
        assert_eq!(
            svc.gate_result("win", v2).expect("r").status,
            GateStatus::Overridden
        );
        // Unpinning and pinning to a passing version need nothing.
        let unpin = khoi_state::SeatUpdate {
            pinned_version: Some(None),
            ..Default::default()
        };
        svc.update_seat(&web("op"), "quay-1", &unpin)
            .expect("unpin");
    }

    /// The compliance report (here with the gate's fixtures, which give it
    /// a failed version and an override): every part the issue lists is in
    /// the PDF, read back with poppler's pdftotext, diacritics included.
    #[test]
    fn compliance_report_pdf_has_every_part_in_vietnamese() {
        let (clean, dirty) = images();
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let v1 = import(&svc, clean);
        draft_of(&svc, dirty);
        let reason = "máy thí điểm, sửa ở bản sau";
        publish(&svc, "an", Some(reason)).expect("override");
        svc.add_seat(
            &web("an"),
            &crate::service::AddSeat {
                name: "quay-tiep-nhan-1".into(),
                mac: "52:54:00:12:34:01".into(),
                image: "win".into(),
                version: Some(v1),
                policy: None,
                quota: None,
                initiator_iqn: None,
                mutual_chap: false,
            },
        )
        .expect("seat");
        svc.audit_args(
            &Actor::server(),
            "nightly.run",
            "all",
            "reset 1 seat(s), 0 failed",
            &[],
        );
        svc.set_report_network(crate::report::ReportNetwork {
            server: "khoi-xa-an-binh".into(),
            boot_interfaces: vec!["enp2s0 (10.10.0.1/24)".into()],
            iscsi_portal: Some("10.10.0.1:3260".into()),
            admin_address: Some("https://10.20.0.5:8443".into()),
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let now = i64::try_from(now).expect("now");
        let r = svc
            .compliance_report(now - 86_400, now + 60)
            .expect("report");
        assert_eq!(r.seats.len(), 1);
        assert_eq!(r.versions.len(), 2);
        assert_eq!(r.overrides.len(), 1);
        assert_eq!(r.nightly_runs.len(), 1);
        assert!(r.admin_total >= 4, "{:?}", r.admin_actions);
        assert!(
            svc.compliance_report(now, now - 1).is_err(),
            "backwards period"
        );

        let pdf = svc
            .compliance_report_pdf(now - 86_400, now + 60)
            .expect("pdf");
        assert!(pdf.starts_with(b"%PDF-"));
        let file = dir.path().join("report.pdf");
        std::fs::write(&file, &pdf).expect("write");
        let out = std::process::Command::new("pdftotext")
            .args(["-layout", "-enc", "UTF-8"])
            .arg(&file)
            .arg("-")
            .output()
            .expect("pdftotext (poppler-utils) must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let info = std::process::Command::new("pdfinfo")
            .arg(&file)
            .output()
            .expect("pdfinfo");
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("595.28 x 841.89"), "A4: {info}");
        for want in [
            crate::report::TITLE_VI,
            "Đơn vị:",
            "Kỳ báo cáo",
            "khoi-xa-an-binh",
            "enp2s0 (10.10.0.1/24)",
            "https://10.20.0.5:8443",
            "quay-tiep-nhan-1",
            "Máy quầy",
            "Đạt",
            "Đã bỏ qua",
            reason,
            "Làm sạch hằng đêm",
            "reset 1 seat(s), 0 failed",
            "Thao tác quản trị",
            "image.gate.override",
            "Người lập báo cáo (ký, ghi rõ họ tên)",
            "Thủ trưởng đơn vị",
        ] {
            assert!(
                text.contains(want),
                "{want:?} missing from the PDF:\n{text}"
            );
        }
    }

    fn wait_for(svc: &Service, n: u32, ok: impl Fn(GateStatus) -> bool) -> GateResult {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = svc.gate_result("win", n).expect("r");
            if ok(r.status) {
                return r;
            }
            assert!(Instant::now() < deadline, "no re-check result: {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
