//! The operations an administrator can perform, each one a typed call that
//! the block store and the state database execute, and each one audited.
//!
//! Every frontend (the local CLI socket today, the web page later, the
//! protocol servers when they open a seat) goes through here, so the rules
//! live in one place: which version a seat runs, what may be deleted, what is
//! recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use khoi_block::{Overlay, Store, StoreError, VersionDevice};
use khoi_state::{Mac, NewEvent, NewSeat, ResetPolicy, Seat, SeatUpdate, State, StateError};

use crate::activity::{Activity, SeatState};
use crate::metrics::{Metrics, SeatLabel, TriggerLabel};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Longest name-like field (actor, address, subject, argument) an audit
/// event keeps; the rest is cut.
pub const CAP_NAME: usize = 128;
/// Longest detail sentence an audit event keeps.
pub const CAP_DETAIL: usize = 1024;

/// `s` cut to at most `max` bytes on a character boundary. Every string a
/// client chooses passes here before it reaches the audit log or the
/// server's log, so no request can make either grow by more than a line.
pub fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Who asked, and from where: recorded with every change.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub source: String,
}

impl Actor {
    pub fn server() -> Actor {
        Actor {
            name: "khoi".into(),
            source: "-".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    Internal(String),
    /// The caller's role may not do this (an operator overriding the gate).
    #[error("{0}")]
    Forbidden(String),
    /// The image gate found blocking findings (HTTP 409 with them).
    #[error("{0}")]
    Gate(Box<crate::gate::GateRefusal>),
}

impl ServiceError {
    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        ServiceError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl ServiceError {
    /// A staging failure as the officer should read it: what is wrong with
    /// the file names `field`; tool output and server-side failures only
    /// reach the log.
    pub fn from_stage(field: &str, e: crate::staging::StageError) -> Self {
        match e {
            crate::staging::StageError::Unfit { shown, detail } => {
                if let Some(d) = detail {
                    tracing::warn!("staging refused a file: {d}");
                }
                ServiceError::invalid(field, shown)
            }
            crate::staging::StageError::Failed(d) => {
                ServiceError::Internal(format!("staging: {d}"))
            }
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ServiceError::NotFound(e.to_string()),
            StoreError::Exists { .. } | StoreError::InUse { .. } => {
                ServiceError::Conflict(e.to_string())
            }
            StoreError::InvalidName { .. } => ServiceError::invalid("name", e.to_string()),
            StoreError::InvalidImage { .. } => ServiceError::invalid("staged", e.to_string()),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<StateError> for ServiceError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NoSuchSeat(_) => ServiceError::NotFound(e.to_string()),
            StateError::SeatExists(_) | StateError::MacInUse { .. } => {
                ServiceError::Conflict(e.to_string())
            }
            StateError::Invalid { field, reason } => ServiceError::invalid(field, reason),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Settings the service needs from the server config.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub data_dir: PathBuf,
    pub default_seat_quota: u64,
    pub target_prefix: String,
    /// The iSCSI portal seats are told to use (`None` when iSCSI is off).
    pub iscsi_portal: Option<String>,
    pub nbd_address: Option<String>,
    /// Folders images may be imported from by path (USB disks, shares): an
    /// operator must not be able to turn any file the server can read into
    /// an image.
    pub import_roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageView {
    pub name: String,
    pub size: u64,
    pub current: u32,
    pub latest: u32,
    pub versions: usize,
    pub has_draft: bool,
    /// The image gate's badge of the current version (absent from older
    /// servers).
    #[serde(default)]
    pub gate: crate::gate::GateStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionView {
    pub number: u32,
    pub current: bool,
    pub note: String,
    pub author: String,
    pub created: u64,
    pub size: u64,
    pub delta_bytes: u64,
    pub layers: usize,
    /// Seats whose overlay is on this version or that are pinned to it.
    pub used_by: Vec<String>,
    /// The image gate's badge (absent from older servers).
    #[serde(default)]
    pub gate: crate::gate::GateStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeatView {
    pub name: String,
    pub mac: String,
    pub image: String,
    /// `null` follows the image's current version.
    pub pinned_version: Option<u32>,
    /// The version the seat runs until its next reset.
    pub active_version: Option<u32>,
    pub policy: ResetPolicy,
    pub quota: u64,
    pub overlay_bytes: u64,
    #[serde(default)]
    pub maintenance: bool,
    /// Fenced after a change of its disk: refused until it reboots.
    #[serde(default)]
    pub fenced: bool,
    /// The boot network it is on; `null`: the config's first.
    #[serde(default)]
    pub network: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeatDetails {
    #[serde(flatten)]
    pub seat: SeatView,
    pub target_iqn: String,
    pub portal: Option<String>,
    pub lun: u32,
    pub chap_user: String,
    pub chap_secret: String,
    /// Set when mutual CHAP is on: the target answers with this user/secret.
    pub mutual_chap_user: Option<String>,
    pub mutual_chap_secret: Option<String>,
    /// When set, only this initiator may log in to the seat's target.
    pub initiator_iqn: Option<String>,
    pub nbd_export: String,
    pub nbd_address: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddSeat {
    pub name: String,
    pub mac: String,
    pub image: String,
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub policy: Option<ResetPolicy>,
    /// Overlay quota in bytes; absent means the server default.
    #[serde(default)]
    pub quota: Option<u64>,
    /// Bind the seat's target to this initiator IQN.
    #[serde(default)]
    pub initiator_iqn: Option<String>,
    /// Have the target prove itself to the seat too (mutual CHAP).
    #[serde(default)]
    pub mutual_chap: bool,
}

/// Server health for the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub sessions: usize,
    /// Error-like events (quota, low space, failures) in the last 24 hours.
    pub errors_24h: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    pub note: String,
    /// Publish even while a maintenance seat of the image is running (its
    /// unflushed writes may be lost).
    #[serde(default)]
    pub force: bool,
    /// An admin's written reason to publish despite blocking findings.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResetReport {
    pub reset: Vec<String>,
}

/// An export the NBD server can offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportName {
    Seat(String),
    Version(String, u32),
    Draft(String),
}

impl ExportName {
    pub fn parse(name: &str) -> Option<ExportName> {
        let (kind, rest) = name.split_once('/')?;
        match kind {
            "seat" => Some(ExportName::Seat(rest.into())),
            "draft" => Some(ExportName::Draft(rest.into())),
            "image" => {
                let (image, n) = rest.rsplit_once('@')?;
                Some(ExportName::Version(image.into(), n.parse().ok()?))
            }
            _ => None,
        }
    }
}

/// A device opened for a protocol frontend.
#[derive(Debug, Clone)]
pub enum Opened {
    Overlay(Arc<Overlay>),
    Version(Arc<VersionDevice>),
}

/// Ends a seat's live protocol sessions when it is fenced (set by the binary,
/// which owns the protocol servers).
type SessionEnder = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Ender(std::sync::OnceLock<SessionEnder>);

impl std::fmt::Debug for Ender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Ender(set)"
        } else {
            "Ender(unset)"
        })
    }
}

#[derive(Debug)]
pub struct Service {
    store: Arc<Store>,
    state: Arc<State>,
    config: ServiceConfig,
    activity: Arc<Activity>,
    /// Admin changes are rare and must not interleave (a reset racing a
    /// version delete could strand a seat), so they take turns.
    admin: Mutex<()>,
    import_limits: parking_lot::RwLock<crate::staging::Limits>,
    end_sessions: Ender,
    /// Off only in tests whose images are not Windows disks.
    gate_enforced: std::sync::atomic::AtomicBool,
    /// The config's boot networks (`networks`).
    pub(crate) networks: parking_lot::RwLock<Vec<crate::networks::BootNetwork>>,
    /// The host checks for the admin page (`doctor`).
    pub(crate) doctor: crate::doctor::Doctor,
    report_network: parking_lot::RwLock<crate::report::ReportNetwork>,
}

impl Service {
    /// Also removes what killed imports left in the staging folder (files no
    /// live writer holds; the CLI may be staging while the server starts).
    pub fn new(store: Arc<Store>, state: Arc<State>, config: ServiceConfig) -> Service {
        let leftovers = crate::staging::sweep(&store.staging_dir());
        if !leftovers.is_empty() {
            tracing::info!(
                "removed {} staged file(s) of interrupted imports: {}",
                leftovers.len(),
                leftovers.join(", ")
            );
        }
        Service {
            store,
            state,
            config,
            activity: Arc::new(Activity::new(Arc::new(Metrics::new()))),
            admin: Mutex::new(()),
            import_limits: parking_lot::RwLock::new(crate::staging::Limits::default()),
            end_sessions: Ender::default(),
            gate_enforced: std::sync::atomic::AtomicBool::new(true),
            networks: parking_lot::RwLock::new(Vec::new()),
            doctor: crate::doctor::Doctor::default(),
            report_network: parking_lot::RwLock::default(),
        }
    }

    /// How a fence ends a seat's live sessions (the binary's protocol
    /// servers); set once at start.
    pub fn on_fence(&self, end_sessions: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.end_sessions.0.set(Box::new(end_sessions));
    }

    /// Seats whose overlay ran in volatile durability mode when Khoi stopped
    /// without a clean close may have lost acknowledged writes: they are
    /// fenced, so their Windows reboots onto a reset disk instead of carrying
    /// on over a damaged one. Called once at start.
    pub fn fence_after_unclean_stop(&self) -> Vec<String> {
        let actor = Actor {
            name: "khoi".into(),
            source: "start".into(),
        };
        let seats = self.store.seats_needing_reboot();
        for seat in &seats {
            self.fence(
                &actor,
                seat,
                "Khoi stopped while the seat's overlay was not synced (volatile durability)",
            );
        }
        seats
    }

    /// After a change of what a seat's disk is, a running Windows must never
    /// reconnect to the new disk under its live NTFS: the seat's boot is
    /// fenced (its credentials refused until the next boot begins) and its
    /// sessions end. A seat with no running boot has nothing to fence.
    fn fence(&self, actor: &Actor, seat: &str, why: &str) {
        match self.state.fence_seat(seat, why) {
            Ok(true) => {
                self.audit_args(
                    actor,
                    "seat.fence",
                    seat,
                    &format!("waiting for reboot: {why}"),
                    &[("reason", why)],
                );
                if let Some(end) = self.end_sessions.0.get() {
                    end(seat);
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!(seat, "cannot fence seat: {e}"),
        }
    }

    /// Whether a seat is fenced and waiting for its next boot.
    pub fn is_fenced(&self, seat: &str) -> bool {
        self.state
            .seat_boot(seat)
            .ok()
            .flatten()
            .is_some_and(|b| b.fenced.is_some())
    }

    /// Whether a failed gate refuses publish and rollback, and keeps a
    /// failed import from becoming current. Always on in the server; tests
    /// whose images are blank disks (every one fails `no-windows-volume`)
    /// turn it off. The checks still run and their results are kept.
    pub fn set_gate_enforced(&self, on: bool) {
        self.gate_enforced
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn gate_enforced(&self) -> bool {
        self.gate_enforced
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Size caps and the free-space floor for imports and uploads (from the
    /// config at start; the defaults until then).
    pub fn set_import_limits(&self, limits: crate::staging::Limits) {
        *self.import_limits.write() = limits;
    }

    pub fn import_limits(&self) -> crate::staging::Limits {
        self.import_limits.read().clone()
    }

    /// Where the protocol servers report sessions and I/O; also owns the
    /// Prometheus registry.
    pub(crate) fn report_network(&self) -> &parking_lot::RwLock<crate::report::ReportNetwork> {
        &self.report_network
    }

    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.activity.metrics()
    }

    pub fn seat_state(&self, seat: &SeatView) -> SeatState {
        if seat.fenced {
            return SeatState::Fenced;
        }
        self.activity.state(&seat.name, seat.maintenance)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Record an event on behalf of an actor (logins, schedule runs).
    pub fn audit(&self, actor: &Actor, kind: &str, subject: &str, detail: &str) {
        self.audit_args(actor, kind, subject, detail, &[]);
    }

    /// `audit` with the detail's values by name, for pages in other languages.
    pub fn audit_args(
        &self,
        actor: &Actor,
        kind: &str,
        subject: &str,
        detail: &str,
        args: &[(&str, &str)],
    ) {
        // Anyone who can reach the login form chooses these strings (a user
        // name, an address from a proxy header); uncapped, forty requests
        // with a megabyte each filled the data filesystem.
        let args: Vec<(&str, &str)> = args
            .iter()
            .map(|(k, v)| (cap(k, CAP_NAME), cap(v, CAP_NAME)))
            .collect();
        let ev = NewEvent {
            kind: cap(kind, CAP_NAME),
            actor: cap(&actor.name, CAP_NAME),
            source: cap(&actor.source, CAP_NAME),
            subject: cap(subject, CAP_NAME),
            detail: cap(detail, CAP_DETAIL),
            args: &args,
        };
        if let Err(e) = self.state.record(&ev) {
            // The change itself succeeded; losing its audit line must be
            // loud but must not undo or fail the change.
            tracing::error!(
                kind = ev.kind,
                subject = ev.subject,
                "cannot record audit event: {e}"
            );
        }
    }

    // ---- images ----

    pub fn staging_dir(&self) -> PathBuf {
        self.store.staging_dir()
    }

    pub fn images(&self) -> Vec<ImageView> {
        self.store
            .list_images()
            .into_iter()
            .map(|i| ImageView {
                gate: self
                    .gate_result(&i.name, i.current)
                    .map_or(crate::gate::GateStatus::NotChecked, |r| r.status),
                name: i.name,
                size: i.size,
                current: i.current,
                latest: i.latest,
                versions: i.versions,
                has_draft: i.has_draft,
            })
            .collect()
    }

    /// Adopt a file the CLI prepared in the staging folder as a new image (or
    /// a new version of an existing one).
    pub fn import(
        &self,
        actor: &Actor,
        name: &str,
        staged: &str,
        note: &str,
    ) -> Result<VersionView> {
        // Only a bare file name: the CLI writes into staging, and nothing
        // else on the server may be turned into an image through this call.
        if staged.is_empty() || staged.contains('/') || staged.starts_with('.') {
            return Err(ServiceError::invalid(
                "staged",
                format!("{staged:?} must be a file name inside the staging folder"),
            ));
        }
        let path = self.store.staging_dir().join(staged);
        let Ok(meta) = std::fs::metadata(&path).map(|m| (m.is_file(), m.len())) else {
            return Err(ServiceError::invalid(
                "staged",
                format!("{staged:?} is not in the staging folder"),
            ));
        };
        if !meta.0 {
            return Err(ServiceError::invalid(
                "staged",
                format!("{staged:?} is not a file"),
            ));
        }
        // The CLI checks before it stages; an older CLI (or a file put there
        // by hand) meets the same maximum here.
        let max = self.import_limits().max_virtual_size;
        if meta.1 > max {
            return Err(ServiceError::invalid(
                "staged",
                format!(
                    "the disk is {}, more than the largest image accepted ({})",
                    crate::staging::human(meta.1),
                    crate::staging::human(max)
                ),
            ));
        }
        // Not under `admin`: open_seat (every login) takes it, and the store
        // serialises imports itself while it syncs the whole image.
        let before = self.store.current_version(name).ok();
        let v = self.store.import_image(name, &path, note, &actor.name)?;
        // The import itself stands (the image is the officer's data, to be
        // fixed in a draft); what the gate decides is whether the new
        // version becomes what seats boot.
        let report = self.check_new_version(actor, name, v.number);
        if let (Some(prev), Some(r)) = (before, &report)
            && !r.passed()
            && self.gate_enforced()
        {
            self.store.set_current(name, prev)?;
            self.audit_args(
                actor,
                "image.gate.held",
                name,
                &format!(
                    "version {} failed the gate; version {prev} stays current",
                    v.number
                ),
                &[
                    ("version", &v.number.to_string()),
                    ("current", &prev.to_string()),
                ],
            );
        }
        self.audit_args(
            actor,
            "image.import",
            name,
            &format!("version {} ({} bytes): {note}", v.number, v.size),
            &with_note(
                &[
                    ("version", &v.number.to_string()),
                    ("bytes", &v.size.to_string()),
                ],
                note,
            ),
        );
        self.version(name, v.number)
    }

    /// Check a version just made; a failure to check is logged, not fatal
    /// (the version is then `not-checked` and checked before it can become
    /// current again).
    fn check_new_version(
        &self,
        actor: &Actor,
        image: &str,
        n: u32,
    ) -> Option<khoi_inspect::Report> {
        match self.check_version(actor, image, n) {
            Ok(r) => r.report,
            Err(e) => {
                tracing::warn!(image, version = n, "gate check failed: {e}");
                None
            }
        }
    }

    fn version(&self, image: &str, n: u32) -> Result<VersionView> {
        self.versions(image)?
            .into_iter()
            .find(|v| v.number == n)
            .ok_or_else(|| ServiceError::NotFound(format!("image {image:?} has no version {n}")))
    }

    pub fn versions(&self, image: &str) -> Result<Vec<VersionView>> {
        let current = self.store.current_version(image)?;
        let seats = self.state.seats_on_image(image)?;
        let gate = self.gate_badges(image)?;
        Ok(self
            .store
            .versions(image)?
            .into_iter()
            .map(|v| VersionView {
                number: v.number,
                current: v.number == current,
                note: v.note,
                author: v.author,
                created: v.created,
                size: v.size,
                delta_bytes: v.delta_bytes,
                layers: v.layers.len(),
                used_by: seats
                    .iter()
                    .filter(|s| {
                        s.active_version == Some(v.number) || s.pinned_version == Some(v.number)
                    })
                    .map(|s| s.name.clone())
                    .collect(),
                gate: gate
                    .get(&v.number)
                    .copied()
                    .unwrap_or(crate::gate::GateStatus::NotChecked),
            })
            .collect())
    }

    /// Make version `n` current again; seats following the image pick it up
    /// at their next reset, never under a running system.
    pub fn rollback(&self, actor: &Actor, image: &str, n: u32) -> Result<VersionView> {
        self.rollback_with(actor, image, n, None)
    }

    /// [`Service::rollback`]; a version that failed the gate needs an
    /// admin's written `override_reason` (it would reach every seat).
    pub fn rollback_with(
        &self,
        actor: &Actor,
        image: &str,
        n: u32,
        override_reason: Option<&str>,
    ) -> Result<VersionView> {
        self.store
            .versions(image)?
            .iter()
            .find(|v| v.number == n)
            .ok_or_else(|| ServiceError::NotFound(format!("image {image:?} has no version {n}")))?;
        let (report, overridden) = self.gate_version_report(image, n)?;
        if self.gate_enforced()
            && !overridden
            && let Some(o) = self.gate_decide(
                actor,
                image,
                &format!("rollback to version {n}"),
                &report,
                override_reason,
            )?
        {
            self.state.set_gate_override(image, n, &o.by, &o.reason)?;
        }
        let _g = self.admin.lock();
        let before = self.store.current_version(image)?;
        self.store.set_current(image, n)?;
        self.audit_args(
            actor,
            "image.rollback",
            image,
            &format!("current version {before} -> {n}"),
            &[("from", &before.to_string()), ("to", &n.to_string())],
        );
        drop(_g);
        self.version(image, n)
    }

    pub fn delete_version(&self, actor: &Actor, image: &str, n: u32) -> Result<()> {
        let _g = self.admin.lock();
        let users: Vec<String> = self
            .state
            .seats_on_image(image)?
            .into_iter()
            .filter(|s| s.active_version == Some(n) || s.pinned_version == Some(n))
            .map(|s| s.name)
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "version {n} of {image:?} is used by seats {}; reset or re-pin them first",
                users.join(", ")
            )));
        }
        self.store.delete_version(image, n)?;
        self.state.forget_gate_result(image, n)?;
        self.audit_args(
            actor,
            "image.version.delete",
            image,
            &format!("version {n}"),
            &[("version", &n.to_string())],
        );
        Ok(())
    }

    pub fn delete_image(&self, actor: &Actor, image: &str) -> Result<()> {
        let _g = self.admin.lock();
        let seats = self.state.seats_on_image(image)?;
        if !seats.is_empty() {
            let names: Vec<_> = seats.into_iter().map(|s| s.name).collect();
            return Err(ServiceError::Conflict(format!(
                "image {image:?} is assigned to seats {}",
                names.join(", ")
            )));
        }
        self.store.delete_image(image)?;
        self.state.forget_gate(image)?;
        self.audit(actor, "image.delete", image, "");
        Ok(())
    }

    // ---- drafts ----

    pub fn draft_open(&self, actor: &Actor, image: &str) -> Result<()> {
        let _g = self.admin.lock();
        let existed = self.store.draft(image).is_some();
        self.store.open_draft(image)?;
        if !existed {
            let base = self.store.current_version(image)?;
            self.audit_args(
                actor,
                "draft.open",
                image,
                &format!("over version {base}"),
                &[("version", &base.to_string())],
            );
        }
        Ok(())
    }

    pub fn draft_publish(&self, actor: &Actor, image: &str, note: &str) -> Result<VersionView> {
        self.draft_publish_with(
            actor,
            image,
            &PublishRequest {
                note: note.into(),
                force: false,
                override_reason: None,
            },
        )
    }

    /// Publish the draft. A maintenance seat still running on the draft
    /// would keep writing into files that became an immutable layer, so it
    /// must be off unless the admin forces it.
    pub fn draft_publish_with(
        &self,
        actor: &Actor,
        image: &str,
        req: &PublishRequest,
    ) -> Result<VersionView> {
        let note = req.note.as_str();
        let running: Vec<String> = self
            .state
            .seats_on_image(image)?
            .into_iter()
            .filter(|s| s.maintenance && self.activity.is_online(&s.name))
            .map(|s| s.name)
            .collect();
        if !running.is_empty() && !req.force {
            return Err(ServiceError::Conflict(format!(
                "maintenance seat(s) {} still running on the draft of {image:?}; shut them down \
                 first or publish with force",
                running.join(", ")
            )));
        }
        if note.trim().is_empty() {
            return Err(ServiceError::invalid(
                "note",
                "say what changed in this version (it goes into the version list and the audit log)",
            ));
        }
        // Not under `admin`, as for import: the store serialises publishes
        // and refuses to reopen the draft meanwhile.
        // The gate reads the draft before it becomes a version: a refused
        // publish leaves the draft open for the fix.
        let report = self.check_draft(image)?;
        let accepted = if self.gate_enforced() {
            self.gate_decide(
                actor,
                image,
                "publish",
                &report,
                req.override_reason.as_deref(),
            )?
        } else {
            None
        };
        let v = self.store.publish_draft(image, note, &actor.name)?;
        // A forced publish turns a running maintenance seat's disk into a
        // read-only version under it.
        for seat in &running {
            self.fence(actor, seat, "its draft was published");
        }
        self.audit_args(
            actor,
            "draft.publish",
            image,
            &format!("version {}: {note}", v.number),
            &with_note(&[("version", &v.number.to_string())], note),
        );
        // The published version holds exactly the draft's blocks.
        self.keep_result(actor, image, v.number, &report)?;
        if let Some(o) = accepted {
            self.state
                .set_gate_override(image, v.number, &o.by, &o.reason)?;
        }
        self.version(image, v.number)
    }

    pub fn draft_discard(&self, actor: &Actor, image: &str) -> Result<()> {
        let _g = self.admin.lock();
        self.store.discard_draft(image)?;
        self.audit(actor, "draft.discard", image, "");
        for seat in self.state.seats_on_image(image)? {
            if seat.maintenance {
                self.fence(actor, &seat.name, "its draft was discarded");
            }
        }
        Ok(())
    }

    // ---- seats ----

    fn target_version(&self, seat: &Seat) -> Result<u32> {
        match seat.pinned_version {
            Some(n) => Ok(n),
            None => Ok(self.store.current_version(&seat.image)?),
        }
    }

    fn quota(&self, seat: &Seat) -> u64 {
        if seat.quota == 0 {
            self.config.default_seat_quota
        } else {
            seat.quota
        }
    }

    fn view(&self, seat: Seat) -> SeatView {
        let overlay_bytes = self.store.seat_usage(&seat.name).map_or(0, |u| u.allocated);
        let quota = self.quota(&seat);
        let fenced = self.is_fenced(&seat.name);
        SeatView {
            name: seat.name,
            mac: seat.mac,
            image: seat.image,
            pinned_version: seat.pinned_version,
            active_version: seat.active_version,
            policy: seat.policy,
            quota,
            overlay_bytes,
            maintenance: seat.maintenance,
            fenced,
            network: seat.network,
        }
    }

    pub fn add_seat(&self, actor: &Actor, req: &AddSeat) -> Result<SeatView> {
        self.add_seat_on(actor, req, None)
    }

    /// [`Service::add_seat`] on boot network `network` (`None`: the first).
    pub fn add_seat_on(
        &self,
        actor: &Actor,
        req: &AddSeat,
        network: Option<&str>,
    ) -> Result<SeatView> {
        self.add_seat_with(actor, req, network, None)
    }

    /// [`Service::add_seat_on`]; pinning the seat to a version that failed
    /// the gate needs an admin's written `override_reason`, as a rollback
    /// does.
    pub fn add_seat_with(
        &self,
        actor: &Actor,
        req: &AddSeat,
        network: Option<&str>,
        override_reason: Option<&str>,
    ) -> Result<SeatView> {
        let mac: Mac = req
            .mac
            .parse()
            .map_err(|e: String| ServiceError::invalid("mac", e))?;
        if let Some(n) = req.version
            && self
                .store
                .versions(&req.image)?
                .iter()
                .any(|v| v.number == n)
        {
            self.gate_pin(actor, &req.image, n, &req.name, override_reason)?;
        }
        let _g = self.admin.lock();
        let versions = self.store.versions(&req.image)?;
        if let Some(n) = req.version
            && !versions.iter().any(|v| v.number == n)
        {
            return Err(ServiceError::invalid(
                "version",
                format!("image {:?} has no version {n}", req.image),
            ));
        }
        self.check_seat_network(&req.image, network)?;
        let seat = self.state.add_seat_on(
            &NewSeat {
                name: req.name.clone(),
                mac,
                image: req.image.clone(),
                pinned_version: req.version,
                policy: req.policy.unwrap_or(ResetPolicy::OnBoot),
                quota: req.quota.unwrap_or(0),
                initiator_iqn: req.initiator_iqn.clone(),
                mutual_chap: req.mutual_chap,
            },
            network,
        )?;
        // A new seat starts clean on its target version, so `seat list`
        // shows what it will boot before it ever does.
        let target = self.target_version(&seat)?;
        self.state.set_active_version(&seat.name, Some(target))?;
        let seat = self.state.seat(&seat.name)?;
        let version = seat
            .pinned_version
            .map_or_else(|| "latest".to_string(), |n| n.to_string());
        let policy = seat.policy.to_string();
        let on = seat
            .network
            .as_deref()
            .map(|n| format!(" network {n}"))
            .unwrap_or_default();
        self.audit_args(
            actor,
            "seat.add",
            &seat.name,
            &format!(
                "mac {} image {} version {version} policy {policy}{on}",
                seat.mac, seat.image
            ),
            &[
                ("mac", &seat.mac),
                ("image", &seat.image),
                ("version", &version),
                ("policy", &policy),
            ],
        );
        Ok(self.view(seat))
    }

    pub fn seats(&self) -> Result<Vec<SeatView>> {
        Ok(self
            .state
            .seats()?
            .into_iter()
            .map(|s| self.view(s))
            .collect())
    }

    /// The iSCSI target name of a seat.
    pub fn target_iqn(&self, seat: &str) -> String {
        format!("{}:{}", self.config.target_prefix, seat)
    }

    /// The seat a target IQN belongs to, if it is one of ours.
    pub fn seat_of_target<'a>(&self, target: &'a str) -> Option<&'a str> {
        target
            .strip_prefix(self.config.target_prefix.as_str())?
            .strip_prefix(':')
    }

    pub fn seat(&self, name: &str) -> Result<SeatDetails> {
        let seat = self.state.seat(name)?;
        let target_iqn = self.target_iqn(&seat.name);
        let (chap_user, chap_secret) = (seat.chap_user.clone(), seat.chap_secret.clone());
        let mutual_chap_secret = seat.mutual_secret.clone();
        let mutual_chap_user = mutual_chap_secret.as_ref().map(|_| target_iqn.clone());
        let initiator_iqn = seat.initiator_iqn.clone();
        let nbd_export = format!("seat/{}", seat.name);
        // With boot networks a seat logs in only at its own network's portal.
        let portal = self
            .network_of(seat.network.as_deref())
            .and_then(|n| n.portal)
            .or_else(|| self.config.iscsi_portal.clone());
        Ok(SeatDetails {
            seat: self.view(seat),
            target_iqn,
            portal,
            lun: 0,
            chap_user,
            chap_secret,
            mutual_chap_user,
            mutual_chap_secret,
            initiator_iqn,
            nbd_export,
            nbd_address: self.config.nbd_address.clone(),
        })
    }

    pub fn remove_seat(&self, actor: &Actor, name: &str) -> Result<()> {
        let _g = self.admin.lock();
        self.state.seat(name)?;
        match self.store.remove_seat(name) {
            // A seat that never booted has no overlay on disk.
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.state.remove_seat(name)?;
        self.audit(actor, "seat.remove", name, "");
        Ok(())
    }

    /// Throw a seat's overlay away and move it to the version it should run
    /// (its pin, or the image's current version). Live connections to the
    /// old overlay fail from now on, so stale sessions drop.
    pub fn reset_seat(&self, actor: &Actor, name: &str) -> Result<SeatView> {
        let _g = self.admin.lock();
        let seat = self.reset_locked(actor, name)?;
        self.fence(actor, name, &format!("reset by {}", actor.name));
        Ok(self.view(seat))
    }

    /// The reset an `on-boot` seat gets when a boot begins (its credentials'
    /// first login): the same reset, but the boot that asked for it is the
    /// one that runs on the new overlay, so nothing is fenced.
    pub fn reset_seat_at_boot(&self, actor: &Actor, name: &str) -> Result<SeatView> {
        let _g = self.admin.lock();
        let seat = self.reset_locked(actor, name)?;
        Ok(self.view(seat))
    }

    fn reset_locked(&self, actor: &Actor, name: &str) -> Result<Seat> {
        let seat = self.state.seat(name)?;
        let target = self.target_version(&seat)?;
        match self.store.reset_seat(name) {
            // A seat that never booted has no overlay to throw away.
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.state.set_active_version(name, Some(target))?;
        let to = target.to_string();
        let was = seat
            .active_version
            .filter(|&old| old != target)
            .map(|v| v.to_string());
        match &was {
            Some(old) => self.audit_args(
                actor,
                "seat.reset",
                name,
                &format!("now on version {target} (was {old})"),
                &[("version", &to), ("was", old)],
            ),
            None => self.audit_args(
                actor,
                "seat.reset",
                name,
                &format!("on version {target}"),
                &[("version", &to)],
            ),
        }
        self.metrics()
            .resets
            .get_or_create(&TriggerLabel {
                trigger: if actor.name == "nightly" {
                    "nightly".into()
                } else {
                    "admin".into()
                },
            })
            .inc();
        self.state.seat(name).map_err(Into::into)
    }

    pub fn reset_all(&self, actor: &Actor) -> Result<ResetReport> {
        let _g = self.admin.lock();
        let mut reset = Vec::new();
        for seat in self.state.seats()? {
            self.reset_locked(actor, &seat.name)?;
            self.fence(actor, &seat.name, &format!("reset by {}", actor.name));
            reset.push(seat.name);
        }
        Ok(ResetReport { reset })
    }

    /// Open a seat's overlay for a protocol frontend. A seat that never ran
    /// starts on its target version; afterwards it stays on its active
    /// version until reset.
    pub fn open_seat(&self, name: &str) -> Result<Arc<Overlay>> {
        let _g = self.admin.lock();
        let seat = self.state.seat(name)?;
        if seat.maintenance {
            // A seat in maintenance boots the image's draft, so the admin's
            // changes there become the next version when published.
            return Ok(self.store.open_draft(&seat.image)?);
        }
        let version = match seat.active_version {
            Some(v) => v,
            None => {
                let v = self.target_version(&seat)?;
                self.state.set_active_version(name, Some(v))?;
                v
            }
        };
        let quota = self.quota(&seat);
        Ok(self.store.seat_overlay(name, &seat.image, version, quota)?)
    }

    pub fn open_export(&self, name: &ExportName) -> Result<Opened> {
        match name {
            ExportName::Seat(s) => self.open_seat(s).map(Opened::Overlay),
            ExportName::Version(image, n) => {
                Ok(Opened::Version(self.store.open_version(image, *n)?))
            }
            ExportName::Draft(image) => {
                self.store.draft(image).map(Opened::Overlay).ok_or_else(|| {
                    ServiceError::NotFound(format!(
                        "image {image:?} has no open draft (open one with: khoi draft open {image})"
                    ))
                })
            }
        }
    }

    /// Every export name, for NBD_OPT_LIST.
    pub fn export_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Ok(seats) = self.state.seats() {
            for s in seats {
                let desc = format!("seat {} ({})", s.name, s.image);
                out.push((format!("seat/{}", s.name), desc));
            }
        }
        for img in self.store.list_images() {
            if let Ok(vs) = self.store.versions(&img.name) {
                for v in vs {
                    out.push((
                        format!("image/{}@{}", img.name, v.number),
                        format!("{} version {} (read-only)", img.name, v.number),
                    ));
                }
            }
            if img.has_draft {
                out.push((
                    format!("draft/{}", img.name),
                    format!("maintenance draft of {}", img.name),
                ));
            }
        }
        out
    }

    /// The admin mutation lock, for long operations in sibling modules
    /// (the image fix holds it while its tools write the draft).
    pub(crate) fn admin_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.admin.lock()
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Change a seat. A new image or pin takes effect at its next reset, like
    /// a publish; maintenance takes effect at its next boot.
    pub fn update_seat(&self, actor: &Actor, name: &str, up: &SeatUpdate) -> Result<SeatView> {
        self.update_seat_with(actor, name, up, None)
    }

    /// [`Service::update_seat`]; a new pin to a version that failed the gate
    /// needs an admin's written `override_reason`.
    pub fn update_seat_with(
        &self,
        actor: &Actor,
        name: &str,
        up: &SeatUpdate,
        override_reason: Option<&str>,
    ) -> Result<SeatView> {
        if let Some(Some(n)) = up.pinned_version {
            let cur = self.state.seat(name)?;
            let image = up.image.clone().unwrap_or_else(|| cur.image.clone());
            let exists = self.store.versions(&image)?.iter().any(|v| v.number == n);
            if exists && (cur.pinned_version != Some(n) || image != cur.image) {
                self.gate_pin(actor, &image, n, name, override_reason)?;
            }
        }
        let _g = self.admin.lock();
        let old = self.state.seat(name)?;
        let image = up.image.clone().unwrap_or_else(|| old.image.clone());
        let versions = self.store.versions(&image)?;
        if let Some(Some(n)) = up.pinned_version
            && !versions.iter().any(|v| v.number == n)
        {
            return Err(ServiceError::invalid(
                "version",
                format!("image {image:?} has no version {n}"),
            ));
        }
        if up.image.is_some() || up.network.is_some() {
            let network = up.network.as_deref().or(old.network.as_deref());
            self.check_seat_network(&image, network)?;
        }
        if up.maintenance == Some(true) && !old.maintenance {
            // The draft must exist before the seat boots into it.
            self.store.open_draft(&image)?;
        }
        let seat = self.state.update_seat(name, up)?;
        let mut changes = Vec::new();
        if seat.mac != old.mac {
            changes.push(format!("mac {} -> {}", old.mac, seat.mac));
        }
        if seat.image != old.image {
            changes.push(format!("image {} -> {}", old.image, seat.image));
        }
        if seat.pinned_version != old.pinned_version {
            let show = |v: Option<u32>| v.map_or_else(|| "latest".to_string(), |n| n.to_string());
            changes.push(format!(
                "version {} -> {}",
                show(old.pinned_version),
                show(seat.pinned_version)
            ));
        }
        if seat.policy != old.policy {
            changes.push(format!("policy {} -> {}", old.policy, seat.policy));
        }
        if seat.quota != old.quota {
            changes.push(format!("quota {} -> {}", old.quota, seat.quota));
        }
        if seat.maintenance != old.maintenance {
            changes.push(format!(
                "maintenance {}",
                if seat.maintenance { "on" } else { "off" }
            ));
        }
        if seat.network != old.network {
            let show = |n: &Option<String>| n.clone().unwrap_or_else(|| "(first)".into());
            changes.push(format!(
                "network {} -> {}",
                show(&old.network),
                show(&seat.network)
            ));
        }
        if !changes.is_empty() {
            self.audit(actor, "seat.update", name, &changes.join(", "));
        }
        // What a reconnect would open: the draft or an overlay of another
        // image or version.
        // A seat moved to another network boots anew there: its running
        // boot belongs to an address on the old one.
        if seat.maintenance != old.maintenance
            || seat.image != old.image
            || seat.pinned_version != old.pinned_version
            || seat.network != old.network
        {
            self.fence(
                actor,
                name,
                "its image, version, maintenance or network changed",
            );
        }
        Ok(self.view(seat))
    }

    /// Adopt a disk image that is already on the server (a USB disk, a
    /// network share): it is staged (converted if it is not raw) and imported.
    pub fn import_path(
        &self,
        actor: &Actor,
        name: &str,
        path: &Path,
        note: &str,
    ) -> Result<VersionView> {
        if !path.is_absolute() {
            return Err(ServiceError::invalid(
                "path",
                format!("{} must be an absolute path on the server", path.display()),
            ));
        }
        let real = path
            .canonicalize()
            .map_err(|e| ServiceError::invalid("path", format!("{}: {e}", path.display())))?;
        let allowed = self
            .config
            .import_roots
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .any(|root| real.starts_with(root));
        if !allowed {
            let roots: Vec<String> = self
                .config
                .import_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            return Err(ServiceError::invalid(
                "path",
                format!(
                    "{} is outside the import folders ({}); copy the image there or add the \
                     folder to admin.import_roots",
                    path.display(),
                    roots.join(", ")
                ),
            ));
        }
        khoi_state::validate_name("name", name)?;
        let staged = crate::staging::stage(&real, &self.staging_dir(), &self.import_limits())
            .map_err(|e| ServiceError::from_stage("path", e))?;
        let file = staged
            .file_name()
            .ok_or_else(|| ServiceError::Internal("staged file has no name".into()))?;
        let r = self.import(actor, name, &file, note);
        staged.finish(r.is_ok());
        r
    }

    pub fn health(&self) -> Health {
        let (free_bytes, total_bytes) = crate::staging::fs_space(&self.config.data_dir);
        let since = crate::activity::unix_now() - 86_400;
        let errors_24h = self
            .state
            .events_filtered(&khoi_state::EventFilter {
                since: Some(since),
                limit: 10_000,
                ..Default::default()
            })
            .map_or(0, |evs| {
                evs.iter().filter(|e| is_error_kind(&e.kind)).count()
            });
        Health {
            free_bytes,
            total_bytes,
            sessions: self.activity.total_sessions(),
            errors_24h,
        }
    }

    /// Refresh the per-seat overlay gauge (called at each scrape).
    pub fn refresh_overlay_metrics(&self) {
        if let Ok(seats) = self.seats() {
            for s in seats {
                self.metrics()
                    .overlay_bytes
                    .get_or_create(&SeatLabel { seat: s.name })
                    .set(i64::try_from(s.overlay_bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

impl Service {
    /// Each version's badge, from the kept results.
    fn gate_badges(
        &self,
        image: &str,
    ) -> Result<std::collections::HashMap<u32, crate::gate::GateStatus>> {
        Ok(self
            .state
            .gate_results(image)?
            .into_iter()
            .map(|r| {
                let s = match r.status.as_str() {
                    "passed" => crate::gate::GateStatus::Passed,
                    "warnings" => crate::gate::GateStatus::Warnings,
                    _ if r.override_reason.is_some() => crate::gate::GateStatus::Overridden,
                    _ => crate::gate::GateStatus::Failed,
                };
                (r.version, s)
            })
            .collect())
    }
}

/// Event values plus the admin's note, when there is one: pages word an
/// event without a note differently instead of ending on an empty colon.
fn with_note<'a>(args: &[(&'a str, &'a str)], note: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v = args.to_vec();
    if !note.trim().is_empty() {
        v.push(("note", note));
    }
    v
}

/// Event kinds that mean something went wrong and the officer should look.
pub fn is_error_kind(kind: &str) -> bool {
    matches!(kind, "overlay.quota" | "storage.low" | "overlay.discarded")
        || kind.ends_with(".error")
        || kind.ends_with(".failed")
        || kind == "nightly.seat.failed"
        || kind == "login.failed"
        // Signs of someone else on the boot path (issue 10).
        || matches!(
            kind,
            "seat.boot.conflict" | "iscsi.login.stolen" | "iscsi.login.backoff"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(dir: &Path) -> Service {
        let store = Arc::new(Store::open(dir, khoi_block::StoreOptions::default()).expect("store"));
        let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
        let svc = Service::new(
            store,
            state,
            ServiceConfig {
                data_dir: dir.to_path_buf(),
                default_seat_quota: 0,
                target_prefix: "iqn.2025-07.vn.khoi".into(),
                iscsi_portal: None,
                nbd_address: None,
                import_roots: Vec::new(),
            },
        );
        let staging = svc.staging_dir();
        std::fs::create_dir_all(&staging).expect("staging");
        std::fs::write(staging.join("base.raw"), vec![0u8; 1 << 20]).expect("image");
        svc.import(&Actor::server(), "win10", "base.raw", "base")
            .expect("import");
        svc.add_seat(
            &Actor::server(),
            &AddSeat {
                name: "pc01".into(),
                mac: "02:00:00:00:00:01".into(),
                image: "win10".into(),
                version: None,
                policy: None,
                quota: None,
                initiator_iqn: None,
                mutual_chap: false,
            },
        )
        .expect("seat");
        svc
    }

    fn boot(svc: &Service) {
        let offer = svc
            .state()
            .offer_boot("pc01", "10.0.0.5", "iqn.x:pc01")
            .expect("offer");
        svc.state()
            .begin_boot("pc01", &offer.user)
            .expect("begin")
            .expect("began");
    }

    /// Issue 11: every change of what a seat's disk is fences its running
    /// boot (and ends its sessions) until the next boot begins; the reset a
    /// boot itself asks for does not.
    #[test]
    fn disk_changes_fence_the_running_boot() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        // Its image is not a Windows disk, and a pin is gated like a
        // rollback (tested in gate.rs): this test is about the fence.
        svc.set_gate_enforced(false);
        let ended = Arc::new(Mutex::new(Vec::<String>::new()));
        let e = ended.clone();
        svc.on_fence(move |seat| e.lock().push(seat.to_string()));
        let admin = Actor {
            name: "admin".into(),
            source: "test".into(),
        };
        type Change<'a> = (&'a str, Box<dyn Fn(&Service) + 'a>);
        let changes: Vec<Change> = vec![
            (
                "admin reset",
                Box::new(|s: &Service| {
                    s.reset_seat(&admin, "pc01").expect("reset");
                }),
            ),
            (
                "reset all",
                Box::new(|s: &Service| {
                    s.reset_all(&admin).expect("reset all");
                }),
            ),
            (
                "nightly",
                Box::new(|s: &Service| {
                    let nightly = Actor {
                        name: "nightly".into(),
                        source: "schedule".into(),
                    };
                    s.reset_seat(&nightly, "pc01").expect("reset");
                }),
            ),
            (
                "maintenance on",
                Box::new(|s: &Service| {
                    let up = SeatUpdate {
                        maintenance: Some(true),
                        ..SeatUpdate::default()
                    };
                    s.update_seat(&admin, "pc01", &up).expect("update");
                }),
            ),
            (
                "maintenance off",
                Box::new(|s: &Service| {
                    let up = SeatUpdate {
                        maintenance: Some(false),
                        ..SeatUpdate::default()
                    };
                    s.update_seat(&admin, "pc01", &up).expect("update");
                }),
            ),
            (
                "pin",
                Box::new(|s: &Service| {
                    let up = SeatUpdate {
                        pinned_version: Some(Some(1)),
                        ..SeatUpdate::default()
                    };
                    s.update_seat(&admin, "pc01", &up).expect("update");
                }),
            ),
        ];
        for (what, change) in &changes {
            boot(&svc);
            assert!(!svc.seat("pc01").expect("seat").seat.fenced, "{what}");
            svc.reset_seat_at_boot(&Actor::server(), "pc01")
                .expect("boot reset");
            assert!(!svc.is_fenced("pc01"), "the boot's own reset: {what}");
            ended.lock().clear();
            change(&svc);
            let view = svc.seat("pc01").expect("seat").seat;
            assert!(view.fenced, "{what}");
            assert_eq!(svc.seat_state(&view), SeatState::Fenced, "{what}");
            assert_eq!(*ended.lock(), vec!["pc01".to_string()], "{what}");
        }
        // A change that leaves the disk alone fences nothing.
        boot(&svc);
        ended.lock().clear();
        let up = SeatUpdate {
            quota: Some(1 << 30),
            ..SeatUpdate::default()
        };
        svc.update_seat(&admin, "pc01", &up).expect("update");
        assert!(!svc.is_fenced("pc01"));
        assert!(ended.lock().is_empty());
    }

    #[test]
    fn export_names_parse() {
        assert_eq!(
            ExportName::parse("seat/quay-01"),
            Some(ExportName::Seat("quay-01".into()))
        );
        assert_eq!(
            ExportName::parse("image/win10@3"),
            Some(ExportName::Version("win10".into(), 3))
        );
        assert_eq!(
            ExportName::parse("draft/win10"),
            Some(ExportName::Draft("win10".into()))
        );
        assert_eq!(ExportName::parse("image/win10"), None);
        assert_eq!(ExportName::parse("image/win10@x"), None);
        assert_eq!(ExportName::parse(""), None);
        assert_eq!(ExportName::parse("other/x"), None);
    }

    #[test]
    fn caps_cut_on_a_character_boundary() {
        assert_eq!(cap("abc", 8), "abc");
        assert_eq!(cap("abcdef", 4), "abcd");
        // "ớ" is three bytes: a cut inside it backs off to before it.
        assert_eq!(cap("mớ", 2), "m");
        assert_eq!(cap(&"x".repeat(1 << 20), CAP_NAME).len(), CAP_NAME);
    }
}
