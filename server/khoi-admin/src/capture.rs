//! Getting a first image in: `image create` (an empty disk to install onto)
//! and capture mode (a seat's next network boot copies its local disk into a
//! new image).
//!
//! Capture is driven by two sides. The admin arms it ([`Service::capture_arm`]).
//! The seat's capture environment then talks to Khoi over the boot HTTP
//! server with the token its script carried, and only from the address that
//! fetched that script: it reports the source disk ([`Service::capture_begin`],
//! once: the image, its draft and the draft target's CHAP credentials are
//! made here), its progress, and the end ([`Service::capture_finish`] or
//! [`Service::capture_fail`]). Hibernated or dirty NTFS is refused with the
//! image gate's own detection (khoi-inspect) over the copied draft, before
//! anything is published; the publish itself goes through the gate like any.

use std::sync::Arc;

use khoi_block::Overlay;
use khoi_inspect::RuleId;
use khoi_state::{Capture, CaptureStatus};
use serde::{Deserialize, Serialize};

use crate::service::{Actor, PublishRequest, Result, Service, ServiceError, VersionView};
use crate::staging::human;

/// What the capture environment needs to log in to the draft target.
#[derive(Clone, PartialEq, Eq)]
pub struct CaptureTarget {
    pub target_iqn: String,
    pub initiator_iqn: String,
    pub chap_user: String,
    pub chap_secret: String,
}

impl std::fmt::Debug for CaptureTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureTarget")
            .field("target_iqn", &self.target_iqn)
            .field("initiator_iqn", &self.initiator_iqn)
            .field("chap_user", &self.chap_user)
            .finish_non_exhaustive()
    }
}

/// A seat's capture as the pages and the CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaptureView {
    pub seat: String,
    pub image: String,
    pub status: CaptureStatus,
    pub requested_by: String,
    pub requested: i64,
    pub peer: Option<String>,
    pub source_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    pub done_bytes: Option<u64>,
    pub rate: Option<u64>,
    /// Seconds left at the last reported rate.
    pub seconds_left: Option<u64>,
    pub started: Option<i64>,
    pub updated: Option<i64>,
    pub finished: Option<i64>,
    pub message: Option<String>,
}

impl From<Capture> for CaptureView {
    fn from(c: Capture) -> Self {
        let seconds_left = match (c.status, c.total_bytes, c.done_bytes, c.rate) {
            (CaptureStatus::Copying, Some(t), Some(d), Some(r)) if r > 0 => {
                Some(t.saturating_sub(d).div_ceil(r))
            }
            _ => None,
        };
        CaptureView {
            seat: c.seat,
            image: c.image,
            status: c.status,
            requested_by: c.requested_by,
            requested: c.requested,
            peer: c.peer,
            source_bytes: c.source_bytes,
            total_bytes: c.total_bytes,
            done_bytes: c.done_bytes,
            rate: c.rate,
            seconds_left,
            started: c.started,
            updated: c.updated,
            finished: c.finished,
            message: c.message,
        }
    }
}

/// Where the capture environment's kernel and initramfs are looked for, and
/// whether they are there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaptureEnvironment {
    pub dir: String,
    pub built: bool,
}

/// The files of the capture environment, in [`Service::capture_env_dir`].
pub const CAPTURE_FILES: [&str; 2] = ["vmlinuz", "initrd.gz"];

/// Largest message an environment may leave (it ends up on the page).
const MAX_REASON: usize = 300;

/// The ID part of the draft target of a seat's capture: seat names have no
/// `:`, so it never names a seat's own target.
const CAPTURE_TARGET: &str = "capture:";

/// Rules whose finding means the source must not be captured: Windows holds
/// state of that volume in memory or in a hibernation file, and a copy of it
/// would boot into a damaged or stale filesystem.
const REFUSE: [RuleId; 2] = [RuleId::VolumeHibernated, RuleId::NtfsDirty];

fn printable(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

/// A disk size as an officer types it: a whole number with an optional
/// binary unit (`B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`), the same
/// spelling the config and the CLI take.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 64GiB, 512MiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl Service {
    /// The folder the capture environment is served from:
    /// `<data>/capture/{vmlinuz,initrd.gz}` (`images/capture/build.sh` writes them).
    pub fn capture_env_dir(&self) -> std::path::PathBuf {
        self.data_dir().join("capture")
    }

    pub fn capture_environment(&self) -> CaptureEnvironment {
        let dir = self.capture_env_dir();
        let built = CAPTURE_FILES
            .iter()
            .all(|f| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.is_file() && m.len() > 0));
        CaptureEnvironment {
            dir: dir.display().to_string(),
            built,
        }
    }

    /// Refuse a new disk of `size` bytes: zero, not whole sectors, over the
    /// import maximum, or with `need` bytes not fitting above the floor.
    fn check_new_disk(&self, field: &str, size: u64, need: u64) -> Result<()> {
        let invalid = |reason: String| ServiceError::Invalid {
            field: field.into(),
            reason,
        };
        if size == 0 {
            return Err(invalid("the size must be more than zero".into()));
        }
        if !size.is_multiple_of(512) {
            return Err(invalid(format!(
                "the size must be a whole number of 512-byte sectors ({size} bytes is not)"
            )));
        }
        let limits = self.import_limits();
        if size > limits.max_virtual_size {
            return Err(invalid(format!(
                "{} is more than the largest image accepted ({}, admin.import.max_virtual_size)",
                human(size),
                human(limits.max_virtual_size)
            )));
        }
        let room = limits.room(self.data_dir());
        if need > room {
            return Err(invalid(format!(
                "{} would not fit: the data disk has only {} free above the free-space floor",
                human(need),
                human(room)
            )));
        }
        Ok(())
    }

    /// A new image whose only version (0) is an empty disk of `size` bytes,
    /// for installing straight onto its draft. An empty disk takes no space,
    /// but an installation may fill it, so it must fit above the floor.
    pub fn image_create(&self, actor: &Actor, name: &str, size: u64) -> Result<VersionView> {
        khoi_block::validate_name("image", name).map_err(|e| ServiceError::Invalid {
            field: "name".into(),
            reason: e.to_string(),
        })?;
        self.check_new_disk("size", size, size)?;
        let v = self
            .store()
            .create_empty_image(name, size, "empty disk", &actor.name)?;
        self.audit_args(
            actor,
            "image.create",
            name,
            &format!("empty disk of {} bytes", v.size),
            &[("bytes", &v.size.to_string())],
        );
        self.versions(name)?
            .into_iter()
            .find(|x| x.number == v.number)
            .ok_or_else(|| ServiceError::Internal(format!("image {name:?} has no version 0")))
    }

    /// The draft target's IQN of a seat's capture.
    pub fn capture_target_iqn(&self, seat: &str) -> String {
        format!("{}:{CAPTURE_TARGET}{seat}", self.config().target_prefix)
    }

    /// The seat a capture target IQN belongs to.
    pub fn seat_of_capture_target<'a>(&self, target: &'a str) -> Option<&'a str> {
        self.seat_of_target(target)?.strip_prefix(CAPTURE_TARGET)
    }

    /// Put a seat in capture mode: its next network boot copies its local
    /// disk into the new image `image`.
    pub fn capture_arm(&self, actor: &Actor, seat: &str, image: &str) -> Result<CaptureView> {
        khoi_block::validate_name("image", image).map_err(|e| ServiceError::Invalid {
            field: "image".into(),
            reason: e.to_string(),
        })?;
        self.state().seat(seat)?;
        if self.store().current_version(image).is_ok() {
            return Err(ServiceError::Conflict(format!(
                "image {image:?} already exists: a capture makes a new image, choose another name"
            )));
        }
        let c = self.state().arm_capture(seat, image, &actor.name)?;
        let env = self.capture_environment();
        self.audit_args(
            actor,
            "seat.capture.arm",
            seat,
            &format!("the next network boot captures the seat's disk into image {image}"),
            &[("image", image)],
        );
        if !env.built {
            tracing::warn!(
                "capture armed for {seat}, but the capture environment is not in {} \
                 (build it with images/capture/build.sh)",
                env.dir
            );
        }
        Ok(c.into())
    }

    /// Take a seat out of capture mode. A copy in progress is abandoned and
    /// the image it was making removed.
    pub fn capture_cancel(&self, actor: &Actor, seat: &str) -> Result<()> {
        let c = self
            .state()
            .capture(seat)?
            .filter(|c| c.status.is_active())
            .ok_or_else(|| {
                ServiceError::NotFound(format!("seat {seat:?} is not in capture mode"))
            })?;
        let msg = format!("cancelled by {}", actor.name);
        if self
            .state()
            .finish_capture(seat, CaptureStatus::Failed, &msg)?
        {
            self.remove_captured_image(&c);
            self.audit_args(
                actor,
                "seat.capture.cancel",
                seat,
                &msg,
                &[("image", &c.image)],
            );
        }
        Ok(())
    }

    pub fn capture(&self, seat: &str) -> Result<Option<CaptureView>> {
        Ok(self.state().capture(seat)?.map(Into::into))
    }

    pub fn captures(&self) -> Result<Vec<CaptureView>> {
        Ok(self
            .state()
            .captures()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The seat's script fetch from `peer` while in capture mode: the token
    /// its capture environment will use. `None` when the seat boots normally.
    pub fn capture_offer(&self, seat: &str, peer: &str) -> Result<Option<(String, String)>> {
        let Some(c) = self.state().offer_capture(seat, peer)? else {
            return Ok(None);
        };
        let token = c
            .token
            .ok_or_else(|| ServiceError::Internal("an offered capture has no token".into()))?;
        let actor = Actor {
            name: "khoi".into(),
            source: peer.into(),
        };
        self.audit_args(
            &actor,
            "seat.boot.capture",
            seat,
            &format!(
                "capture environment offered to {peer} for image {}",
                c.image
            ),
            &[("peer", peer), ("image", &c.image)],
        );
        Ok(Some((token, c.image)))
    }

    /// The capture a token names, if it is active and `peer` is the address
    /// that fetched it. Anything else looks like an unknown token.
    fn capture_for(&self, token: &str, peer: &str) -> Result<Capture> {
        let unknown = || ServiceError::NotFound("no such capture".into());
        let c = self.state().capture_by_token(token)?.ok_or_else(unknown)?;
        if !c.status.is_active() {
            return Err(unknown());
        }
        if c.peer.as_deref() != Some(peer) {
            tracing::warn!(
                seat = %c.seat,
                peer,
                owner = ?c.peer,
                "capture token used from another address"
            );
            return Err(unknown());
        }
        Ok(c)
    }

    /// Whether `token` may fetch the environment's files from `peer`.
    pub fn capture_may_fetch(&self, token: &str, peer: &str) -> bool {
        self.capture_for(token, peer).is_ok()
    }

    /// The environment found a source disk of `size` bytes and will copy
    /// `need` of them: make the image (an empty disk of that size) and its
    /// draft, and mint the draft target's credentials. Once per token.
    pub fn capture_begin(
        &self,
        token: &str,
        peer: &str,
        size: u64,
        need: u64,
    ) -> Result<CaptureTarget> {
        let c = self.capture_for(token, peer)?;
        if c.status != CaptureStatus::Offered {
            return Err(ServiceError::Conflict(
                "this capture has already started; reboot the seat to start over".into(),
            ));
        }
        let actor = Actor {
            name: "capture".into(),
            source: peer.into(),
        };
        let seat = c.seat.clone();
        if let Err(e) = self.check_new_disk("size", size, need.min(size)) {
            self.capture_end(&actor, &c, CaptureStatus::Failed, &e.to_string());
            return Err(e);
        }
        // A capture that started over (the seat rebooted mid-copy) drops
        // what it had made; any other image of that name is not ours.
        if c.image_created {
            self.remove_captured_image(&c);
        }
        if let Err(e) = self.store().create_empty_image(
            &c.image,
            size,
            &format!("empty disk for the capture of seat {seat}"),
            &actor.name,
        ) {
            let e = ServiceError::from(e);
            self.capture_end(&actor, &c, CaptureStatus::Failed, &e.to_string());
            return Err(e);
        }
        let created = Capture {
            image_created: true,
            ..c.clone()
        };
        if let Err(e) = self.store().open_draft(&c.image) {
            self.capture_end(&actor, &created, CaptureStatus::Failed, &e.to_string());
            return Err(e.into());
        }
        let initiator = format!("{}:{seat}", khoi_pxe_initiator_prefix());
        let Some(started) = self
            .state()
            .begin_capture_copy(token, size, need, &initiator, true)?
        else {
            self.remove_captured_image(&created);
            return Err(ServiceError::Conflict(
                "this capture has already started; reboot the seat to start over".into(),
            ));
        };
        self.audit_args(
            &actor,
            "seat.capture.start",
            &seat,
            &format!(
                "copying a {} disk ({} to copy) into image {}",
                human(size),
                human(need),
                c.image
            ),
            &[
                ("image", &c.image),
                ("bytes", &size.to_string()),
                ("need", &need.to_string()),
            ],
        );
        Ok(CaptureTarget {
            target_iqn: self.capture_target_iqn(&seat),
            initiator_iqn: initiator,
            chap_user: started.chap_user.unwrap_or_default(),
            chap_secret: started.chap_secret.unwrap_or_default(),
        })
    }

    pub fn capture_progress(
        &self,
        token: &str,
        peer: &str,
        done: u64,
        total: u64,
        rate: u64,
    ) -> Result<()> {
        self.capture_for(token, peer)?;
        if self.state().capture_progress(token, done, total, rate)? {
            Ok(())
        } else {
            Err(ServiceError::Conflict(
                "this capture is not copying (report the disk first)".into(),
            ))
        }
    }

    /// The environment failed (no disk, a copy error): say why and drop
    /// what the capture made.
    pub fn capture_fail(&self, token: &str, peer: &str, reason: &str) -> Result<()> {
        let c = self.capture_for(token, peer)?;
        let actor = Actor {
            name: "capture".into(),
            source: peer.into(),
        };
        let reason = printable(reason, MAX_REASON);
        let reason = if reason.is_empty() {
            "the capture environment gave no reason".to_string()
        } else {
            reason
        };
        self.capture_end(&actor, &c, CaptureStatus::Failed, &reason);
        Ok(())
    }

    /// The copy is complete: refuse a hibernated or dirty source, else
    /// publish the draft as version 1 through the gate. The answer (or the
    /// error's text) is what the seat's screen shows.
    pub fn capture_finish(&self, token: &str, peer: &str) -> Result<String> {
        let c = self.capture_for(token, peer)?;
        if c.status != CaptureStatus::Copying {
            return Err(ServiceError::Conflict(
                "this capture has not started copying".into(),
            ));
        }
        let actor = Actor {
            name: "capture".into(),
            source: peer.into(),
        };
        let report = match self.check_draft(&c.image) {
            Ok(r) => r,
            Err(e) => {
                self.capture_end(&actor, &c, CaptureStatus::Failed, &e.to_string());
                return Err(e);
            }
        };
        let refused: Vec<String> = report
            .findings
            .iter()
            .filter(|f| REFUSE.contains(&f.rule))
            .map(|f| format!("{} ({})", f.info().title_en, f.subject))
            .collect();
        if !refused.is_empty() {
            let msg = format!(
                "The disk cannot be captured: {} Start Windows on this PC, turn Fast Startup \
                 and hibernation off (powercfg /h off), shut down fully (shutdown /s /t 0), \
                 then capture again.",
                refused.join("; ")
            );
            self.capture_end(&actor, &c, CaptureStatus::Refused, &msg);
            return Err(ServiceError::Conflict(msg));
        }
        let req = PublishRequest {
            note: format!("captured from seat {}", c.seat),
            force: false,
            override_reason: None,
        };
        match self.draft_publish_with(&actor, &c.image, &req) {
            Ok(v) => {
                // The empty disk it was captured over is nobody's to boot.
                if let Err(e) = self.store().delete_version(&c.image, 0) {
                    tracing::warn!(image = %c.image, "cannot remove the empty version 0: {e}");
                }
                let msg = format!("published as image {} version {}", c.image, v.number);
                self.capture_end(&actor, &c, CaptureStatus::Done, &msg);
                Ok(msg)
            }
            Err(ServiceError::Gate(g)) => {
                let msg = format!(
                    "copied, but the image gate refused to publish it: {}. The draft of {} is \
                     kept: fix it, or publish it with an override.",
                    g, c.image
                );
                self.capture_end(&actor, &c, CaptureStatus::Held, &msg);
                Ok(msg)
            }
            Err(e) => {
                self.capture_end(&actor, &c, CaptureStatus::Failed, &e.to_string());
                Err(e)
            }
        }
    }

    /// The seat leaves capture mode with `status`; a failure removes the
    /// image the capture made.
    fn capture_end(&self, actor: &Actor, c: &Capture, status: CaptureStatus, msg: &str) {
        match self.state().finish_capture(&c.seat, status, msg) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(seat = %c.seat, "cannot record the end of a capture: {e}");
                return;
            }
        }
        if matches!(status, CaptureStatus::Failed | CaptureStatus::Refused) {
            self.remove_captured_image(c);
        }
        let args = [("image", c.image.as_str()), ("reason", msg)];
        let seat = c.seat.as_str();
        // One literal kind per call: the event-name test finds them there.
        match status {
            CaptureStatus::Done => self.audit_args(actor, "seat.capture.finish", seat, msg, &args),
            CaptureStatus::Held => self.audit_args(actor, "seat.capture.held", seat, msg, &args),
            CaptureStatus::Refused => {
                self.audit_args(actor, "seat.capture.refused", seat, msg, &args);
            }
            _ => self.audit_args(actor, "seat.capture.failed", seat, msg, &args),
        }
    }

    fn remove_captured_image(&self, c: &Capture) {
        if !c.image_created {
            return;
        }
        if self.store().draft(&c.image).is_some()
            && let Err(e) = self.store().discard_draft(&c.image)
        {
            tracing::warn!(image = %c.image, "cannot discard the capture's draft: {e}");
        }
        if let Err(e) = self.store().delete_image(&c.image) {
            tracing::warn!(image = %c.image, "cannot remove the capture's image: {e}");
        }
    }

    /// The draft a capture target serves, while its capture copies.
    pub fn open_capture_target(&self, seat: &str) -> Result<Arc<Overlay>> {
        let c = self
            .state()
            .capture(seat)?
            .filter(|c| c.status == CaptureStatus::Copying)
            .ok_or_else(|| ServiceError::NotFound(format!("seat {seat:?} is not capturing")))?;
        Ok(self.store().open_draft(&c.image)?)
    }
}

/// The initiator names seats get by default; the capture environment uses
/// the same form, so the seat is recognisable in iSCSI logs.
fn khoi_pxe_initiator_prefix() -> &'static str {
    "iqn.2025-07.vn.khoi.initiator"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::AddSeat;

    fn service(dir: &std::path::Path) -> Service {
        let store = Arc::new(
            khoi_block::Store::open(dir, khoi_block::StoreOptions::default()).expect("store"),
        );
        let state = Arc::new(khoi_state::State::open(&dir.join("khoi.db")).expect("state"));
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

    fn add_seat(svc: &Service, name: &str, mac: &str) {
        // A seat needs an image to be on.
        if svc.store().current_version("base").is_err() {
            svc.image_create(&Actor::server(), "base", 1 << 20)
                .expect("base image");
        }
        svc.add_seat(
            &Actor::server(),
            &AddSeat {
                name: name.into(),
                mac: mac.into(),
                image: "base".into(),
                version: None,
                policy: None,
                quota: None,
                initiator_iqn: None,
                mutual_chap: false,
            },
        )
        .expect("add seat");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size(" 512M "), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "GiB", "64 XB", "-1G", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_create_refuses_bad_sizes_and_names() {
        let tmp = tempfile::tempdir().expect("tmp");
        let svc = service(tmp.path());
        let a = Actor::server();
        for (size, want) in [
            (0, "more than zero"),
            (1000, "512-byte sectors"),
            (u64::MAX - 511, "largest image accepted"),
        ] {
            let e = svc.image_create(&a, "x", size).expect_err("refused");
            assert!(
                matches!(&e, ServiceError::Invalid { field, reason } if field == "size" && reason.contains(want)),
                "{size}: {e}"
            );
        }
        let mut limits = svc.import_limits();
        limits.free_space_floor = u64::MAX / 2;
        svc.set_import_limits(limits);
        let e = svc
            .image_create(&a, "x", 1 << 30)
            .expect_err("over the floor");
        assert!(e.to_string().contains("free-space floor"), "{e}");
        svc.set_import_limits(crate::staging::Limits::default());
        assert!(matches!(
            svc.image_create(&a, "../x", 1 << 20),
            Err(ServiceError::Invalid { .. })
        ));
        let v = svc.image_create(&a, "blank", 64 << 20).expect("create");
        assert_eq!((v.number, v.size, v.current), (0, 64 << 20, true));
        assert!(matches!(
            svc.image_create(&a, "blank", 64 << 20),
            Err(ServiceError::Conflict(_))
        ));
        let ev = svc.state().events(None, 200).expect("events");
        assert!(
            ev.iter()
                .any(|e| e.kind == "image.create" && e.subject == "blank")
        );
    }

    #[test]
    fn capture_runs_once_from_its_address_and_publishes_version_1() {
        let tmp = tempfile::tempdir().expect("tmp");
        let svc = service(tmp.path());
        svc.set_gate_enforced(false);
        add_seat(&svc, "pc01", "02:00:00:00:00:01");
        let a = Actor::server();
        assert!(matches!(
            svc.capture_arm(&a, "pc01", "base"),
            Err(ServiceError::Conflict(_))
        ));
        svc.capture_arm(&a, "pc01", "master").expect("arm");
        let (token, image) = svc
            .capture_offer("pc01", "10.0.0.5")
            .expect("offer")
            .expect("armed");
        assert_eq!(image, "master");
        assert!(!svc.capture_may_fetch(&token, "10.0.0.6"));
        assert!(svc.capture_may_fetch(&token, "10.0.0.5"));
        assert!(matches!(
            svc.capture_begin(&token, "10.0.0.6", 1 << 20, 1 << 20),
            Err(ServiceError::NotFound(_))
        ));
        let t = svc
            .capture_begin(&token, "10.0.0.5", 1 << 20, 1 << 20)
            .expect("begin");
        assert_eq!(t.target_iqn, svc.capture_target_iqn("pc01"));
        assert_eq!(svc.seat_of_capture_target(&t.target_iqn), Some("pc01"));
        assert!(matches!(
            svc.capture_begin(&token, "10.0.0.5", 1 << 20, 1 << 20),
            Err(ServiceError::Conflict(_))
        ));
        let draft = svc.open_capture_target("pc01").expect("draft");
        khoi_block::BlockDevice::write_at(
            draft.as_ref(),
            &[0xabu8; 4096],
            8192,
            khoi_block::WriteFlags::NONE,
        )
        .expect("write");
        drop(draft);
        svc.capture_progress(&token, "10.0.0.5", 4096, 1 << 20, 2048)
            .expect("progress");
        let view = svc.capture("pc01").expect("q").expect("row");
        assert_eq!(
            view.seconds_left,
            Some(((1 << 20) - 4096u64).div_ceil(2048))
        );
        let msg = svc.capture_finish(&token, "10.0.0.5").expect("finish");
        assert!(msg.contains("version 1"), "{msg}");
        let vs = svc.versions("master").expect("versions");
        assert_eq!(vs.len(), 1, "the empty version 0 is gone");
        assert_eq!((vs[0].number, vs[0].current), (1, true));
        let dev = svc.store().open_version("master", 1).expect("v1");
        let mut buf = [0u8; 4096];
        khoi_block::BlockDevice::read_at(dev.as_ref(), &mut buf, 8192).expect("read");
        assert!(buf.iter().all(|b| *b == 0xab));
        let view = svc.capture("pc01").expect("q").expect("row");
        assert_eq!(view.status, CaptureStatus::Done);
        assert!(!svc.capture_may_fetch(&token, "10.0.0.5"), "the token died");
        assert!(svc.capture_offer("pc01", "10.0.0.5").expect("o").is_none());
        let kinds: Vec<String> = svc
            .state()
            .events(None, 200)
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        for k in [
            "seat.capture.arm",
            "seat.boot.capture",
            "seat.capture.start",
            "seat.capture.finish",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
        }
    }

    #[test]
    fn a_failed_or_cancelled_capture_removes_its_image() {
        let tmp = tempfile::tempdir().expect("tmp");
        let svc = service(tmp.path());
        add_seat(&svc, "pc01", "02:00:00:00:00:01");
        let a = Actor::server();
        svc.capture_arm(&a, "pc01", "master").expect("arm");
        let (token, _) = svc
            .capture_offer("pc01", "10.0.0.5")
            .expect("o")
            .expect("armed");
        svc.capture_begin(&token, "10.0.0.5", 1 << 20, 4096)
            .expect("begin");
        assert!(svc.store().current_version("master").is_ok());
        svc.capture_fail(&token, "10.0.0.5", "ntfsclone\u{1b}[2J failed")
            .expect("fail");
        assert!(
            svc.store().current_version("master").is_err(),
            "image removed"
        );
        let view = svc.capture("pc01").expect("q").expect("row");
        assert_eq!(view.status, CaptureStatus::Failed);
        assert_eq!(view.message.as_deref(), Some("ntfsclone [2J failed"));
        svc.capture_arm(&a, "pc01", "master").expect("arm again");
        let (token, _) = svc
            .capture_offer("pc01", "10.0.0.5")
            .expect("o")
            .expect("armed");
        svc.capture_begin(&token, "10.0.0.5", 1 << 20, 4096)
            .expect("begin");
        svc.capture_cancel(&a, "pc01").expect("cancel");
        assert!(svc.store().current_version("master").is_err());
        assert!(matches!(
            svc.capture_cancel(&a, "pc01"),
            Err(ServiceError::NotFound(_))
        ));
    }

    /// Copies `bytes` into a fresh capture of seat pc01 as its environment would.
    fn capture_bytes(svc: &Service, image: &str, bytes: &[u8]) -> String {
        let a = Actor::server();
        svc.capture_arm(&a, "pc01", image).expect("arm");
        let (token, _) = svc
            .capture_offer("pc01", "10.0.0.5")
            .expect("offer")
            .expect("armed");
        let size = bytes.len() as u64;
        svc.capture_begin(&token, "10.0.0.5", size, size)
            .expect("begin");
        let draft = svc.open_capture_target("pc01").expect("draft");
        khoi_block::BlockDevice::write_at(draft.as_ref(), bytes, 0, khoi_block::WriteFlags::NONE)
            .expect("copy");
        drop(draft);
        token
    }

    #[test]
    fn a_dirty_windows_volume_is_refused_with_the_gates_detection() {
        let tmp = tempfile::tempdir().expect("tmp");
        let svc = service(tmp.path());
        // Refused whether or not the gate is enforced: it is the capture's rule.
        svc.set_gate_enforced(false);
        add_seat(&svc, "pc01", "02:00:00:00:00:01");
        let mut img = khoi_inspect::fixtures::Image::clean();
        img.dirty = true;
        let token = capture_bytes(&svc, "dirtywin", &img.build());
        let e = svc.capture_finish(&token, "10.0.0.5").expect_err("refused");
        let msg = e.to_string();
        assert!(msg.contains("not shut down cleanly"), "{msg}");
        assert!(msg.contains("powercfg /h off"), "{msg}");
        let view = svc.capture("pc01").expect("q").expect("row");
        assert_eq!(view.status, CaptureStatus::Refused);
        assert!(
            svc.store().current_version("dirtywin").is_err(),
            "no image is left"
        );
        let ev = svc.state().events(Some("pc01"), 50).expect("events");
        assert!(ev.iter().any(|e| e.kind == "seat.capture.refused"));
    }

    #[test]
    fn a_hibernated_windows_volume_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let svc = service(tmp.path());
        add_seat(&svc, "pc01", "02:00:00:00:00:01");
        let mut img = khoi_inspect::fixtures::Image::clean();
        let mut hiber = vec![0u8; 64 << 10];
        hiber[..4].copy_from_slice(b"HIBR");
        img.files.insert("hiberfil.sys".into(), hiber);
        let token = capture_bytes(&svc, "sleepy", &img.build());
        let e = svc.capture_finish(&token, "10.0.0.5").expect_err("refused");
        assert!(e.to_string().contains("hibernated"), "{e}");
        let view = svc.capture("pc01").expect("q").expect("row");
        assert_eq!(view.status, CaptureStatus::Refused);
        assert!(
            svc.store().current_version("sleepy").is_err(),
            "no image is left"
        );
    }

    #[test]
    fn a_gate_failure_holds_the_copy_in_its_draft() {
        let tmp = tempfile::tempdir().expect("tmp");
        let svc = service(tmp.path());
        add_seat(&svc, "pc01", "02:00:00:00:00:01");
        // Not a Windows disk at all: the enforced gate refuses to publish.
        let token = capture_bytes(&svc, "notwin", &vec![0x5a; 1 << 20]);
        let msg = svc.capture_finish(&token, "10.0.0.5").expect("answered");
        assert!(msg.contains("image gate refused"), "{msg}");
        let view = svc.capture("pc01").expect("q").expect("row");
        assert_eq!(view.status, CaptureStatus::Held);
        assert!(
            svc.store().draft("notwin").is_some(),
            "the draft is kept for a fix"
        );
        assert_eq!(svc.store().current_version("notwin").expect("image"), 0);
    }
}
