//! Warm standby (docs/province.md): what a primary puts in its state
//! snapshot, and what `khoi standby promote` does with the last one that
//! verified on its standby.
//!
//! The snapshot holds the seats (and the names of the images they use),
//! never users, password hashes or CHAP secrets: the standby keeps its own
//! users and keys, and gives each restored seat fresh secrets (the boot
//! script hands them to the seat at its next boot, so nothing on the seat
//! needs them). Overlays are not carried over: seats reboot onto the
//! standby clean, which is what their reset policy would do anyway.

use std::sync::Arc;

use khoi_admin::service::{Actor, AddSeat, Service};
use khoi_state::ResetPolicy;
use khoi_sync::standby::Snapshot;
use serde::{Deserialize, Serialize};

/// The state setting that says this standby was promoted: a restart keeps
/// serving the seats instead of standing by again.
pub const PROMOTED: &str = "standby.promoted";

/// One seat as the primary had it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapSeat {
    pub name: String,
    pub mac: String,
    pub image: String,
    /// The primary's version number; the standby maps it to its own.
    pub pinned_version: Option<u32>,
    pub policy: ResetPolicy,
    pub quota: u64,
    pub initiator_iqn: Option<String>,
    pub mutual_chap: bool,
    pub network: Option<String>,
}

/// The `state` of a snapshot, as this binary writes and reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapState {
    pub seats: Vec<SnapSeat>,
    pub images: Vec<String>,
}

/// The primary's side: its seats and images now.
pub fn take(service: &Service) -> anyhow::Result<SnapState> {
    let seats = service
        .state()
        .seats()?
        .into_iter()
        .map(|s| SnapSeat {
            name: s.name,
            mac: s.mac,
            image: s.image,
            pinned_version: s.pinned_version,
            policy: s.policy,
            quota: s.quota,
            initiator_iqn: s.initiator_iqn,
            mutual_chap: s.mutual_secret.is_some(),
            network: s.network,
        })
        .collect();
    let images = service.images().into_iter().map(|i| i.name).collect();
    Ok(SnapState { seats, images })
}

/// What a promotion did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Promoted {
    pub primary: String,
    /// Unix seconds the restored snapshot was taken at the primary.
    pub snapshot: u64,
    /// Seats added from the snapshot.
    pub restored: Vec<String>,
    /// Seats this server already had (left as they are).
    pub kept: Vec<String>,
    /// Seats pinned to a version this server does not hold: they follow
    /// the image's current version instead.
    pub unpinned: Vec<String>,
    /// Seats that could not be added, and why (an image not pulled yet).
    pub failed: Vec<(String, String)>,
}

/// Whether this server was promoted (the setting survives restarts).
pub fn is_promoted(service: &Service) -> bool {
    service.state().setting(PROMOTED).ok().flatten().is_some()
}

/// Restores the snapshot's seats into this server's state and records the
/// promotion. `local_version(image, primary_n)` maps the primary's version
/// numbers to this server's (the versions pulled from it).
pub fn promote(
    service: &Arc<Service>,
    actor: &Actor,
    snapshot: Option<Snapshot>,
    local_version: &dyn Fn(&str, u32) -> Option<u32>,
) -> Result<Promoted, String> {
    if let Some(when) = service
        .state()
        .setting(PROMOTED)
        .map_err(|e| e.to_string())?
    {
        return Err(format!("this server is already promoted ({when})"));
    }
    let snapshot = snapshot.ok_or(
        "no verified snapshot of the primary has arrived yet: there are no seats to take over \
         (check `khoi sync status` and the events for refused snapshots)",
    )?;
    let state: SnapState = serde_json::from_value(snapshot.state.clone())
        .map_err(|e| format!("the snapshot's state is not one this version reads: {e}"))?;
    let mut done = Promoted {
        primary: snapshot.primary.clone(),
        snapshot: snapshot.written,
        ..Promoted::default()
    };
    let existing: Vec<String> = service
        .state()
        .seats()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|s| s.name)
        .collect();
    for seat in state.seats {
        if existing.contains(&seat.name) {
            done.kept.push(seat.name);
            continue;
        }
        let version = seat
            .pinned_version
            .and_then(|n| local_version(&seat.image, n));
        if seat.pinned_version.is_some() && version.is_none() {
            done.unpinned.push(seat.name.clone());
        }
        let req = AddSeat {
            name: seat.name.clone(),
            mac: seat.mac,
            image: seat.image,
            version,
            policy: Some(seat.policy),
            quota: Some(seat.quota),
            initiator_iqn: seat.initiator_iqn,
            mutual_chap: seat.mutual_chap,
        };
        let mut added = service.add_seat_on(actor, &req, seat.network.as_deref());
        if added.is_err() && req.version.is_some() {
            // A pin this server refuses (the version failed the image gate
            // here, and an override is an admin's own decision, not the
            // primary's): the seat still boots, on the current version.
            let unpinned = AddSeat {
                version: None,
                ..req.clone()
            };
            if let Ok(v) = service.add_seat_on(actor, &unpinned, seat.network.as_deref()) {
                done.unpinned.push(seat.name.clone());
                added = Ok(v);
            }
        }
        match added {
            Ok(_) => done.restored.push(seat.name),
            Err(e) => done.failed.push((seat.name, e.to_string())),
        }
    }
    let when = chrono::Utc::now().to_rfc3339();
    let value = format!("{when} from {} snapshot {}", done.primary, done.snapshot);
    service
        .state()
        .set_setting(PROMOTED, &value)
        .map_err(|e| e.to_string())?;
    let restored = done.restored.len().to_string();
    let failed = done.failed.len().to_string();
    service.audit_args(
        actor,
        "standby.promote",
        &done.primary,
        &format!(
            "promoted in place of {}: {restored} seats restored, {failed} failed; seats reboot onto this server",
            done.primary
        ),
        &[
            ("primary", &done.primary),
            ("restored", &restored),
            ("failed", &failed),
        ],
    );
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use khoi_admin::ServiceConfig;
    use khoi_block::{Store, StoreOptions};
    use khoi_state::State;

    fn service(dir: &std::path::Path) -> Arc<Service> {
        let store = Arc::new(Store::open(dir, StoreOptions::default()).expect("store"));
        let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
        Arc::new(Service::new(
            store,
            state,
            ServiceConfig {
                data_dir: dir.to_path_buf(),
                default_seat_quota: 0,
                target_prefix: "iqn.2026-01.vn.khoi".into(),
                iscsi_portal: None,
                nbd_address: None,
                import_roots: Vec::new(),
            },
        ))
    }

    fn image(service: &Service, name: &str) {
        let staging = service.staging_dir();
        std::fs::create_dir_all(&staging).expect("staging");
        std::fs::write(staging.join("base.raw"), vec![0u8; 1 << 20]).expect("image");
        service
            .import(&Actor::server(), name, "base.raw", "base")
            .expect("import");
    }

    fn snap_seat(name: &str, mac: &str, image: &str, pin: Option<u32>) -> SnapSeat {
        SnapSeat {
            name: name.into(),
            mac: mac.into(),
            image: image.into(),
            pinned_version: pin,
            policy: ResetPolicy::OnBoot,
            quota: 0,
            initiator_iqn: None,
            mutual_chap: false,
            network: None,
        }
    }

    fn snapshot(seats: Vec<SnapSeat>) -> Snapshot {
        let state = SnapState {
            seats,
            images: vec!["win10".into()],
        };
        Snapshot::new(
            "phuong-1",
            1_700_000_000,
            serde_json::to_value(state).expect("json"),
        )
    }

    #[test]
    fn promote_without_a_snapshot_is_a_clear_error_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let e = promote(&svc, &Actor::server(), None, &|_, _| None).expect_err("no snapshot");
        assert!(e.contains("no verified snapshot"), "{e}");
        assert!(!is_promoted(&svc));
        assert!(svc.state().seats().expect("seats").is_empty());
    }

    #[test]
    fn promote_restores_the_seats_once_and_is_remembered() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        // A blank disk fails the image gate; the gate's refusal of a pin
        // is the next test's.
        svc.set_gate_enforced(false);
        image(&svc, "win10");
        let s = snapshot(vec![
            snap_seat("quay-01", "52:54:00:00:00:01", "win10", None),
            // The primary's version 7 is this server's version 1.
            snap_seat("quay-02", "52:54:00:00:00:02", "win10", Some(7)),
            snap_seat("quay-03", "52:54:00:00:00:03", "win10", Some(9)),
            snap_seat("quay-04", "52:54:00:00:00:04", "win11", None),
        ]);
        let map = |image: &str, n: u32| (image == "win10" && n == 7).then_some(1);
        let p = promote(&svc, &Actor::server(), Some(s.clone()), &map).expect("promote");
        assert_eq!(p.primary, "phuong-1");
        assert_eq!(p.restored, ["quay-01", "quay-02", "quay-03"]);
        assert_eq!(p.unpinned, ["quay-03"]);
        assert_eq!(p.failed.len(), 1, "{:?}", p.failed);
        assert_eq!(p.failed[0].0, "quay-04");
        assert_eq!(
            svc.state().seat("quay-02").expect("seat").pinned_version,
            Some(1)
        );
        assert_eq!(
            svc.state().seat("quay-03").expect("seat").pinned_version,
            None
        );
        assert!(is_promoted(&svc));
        let e = promote(&svc, &Actor::server(), Some(s), &map).expect_err("twice");
        assert!(e.contains("already promoted"), "{e}");
        let events = svc.state().events(None, 50).expect("events");
        assert!(events.iter().any(|e| e.kind == "standby.promote"));
    }

    #[test]
    fn a_pin_the_gate_refuses_here_restores_the_seat_unpinned() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        // Enforced, and the blank disk fails it: pinning needs an override.
        image(&svc, "win10");
        let s = snapshot(vec![snap_seat(
            "quay-01",
            "52:54:00:00:00:01",
            "win10",
            Some(7),
        )]);
        let p = promote(&svc, &Actor::server(), Some(s), &|_, _| Some(1)).expect("promote");
        assert_eq!(p.restored, ["quay-01"]);
        assert_eq!(p.unpinned, ["quay-01"]);
        assert!(p.failed.is_empty(), "{:?}", p.failed);
        assert_eq!(
            svc.state().seat("quay-01").expect("seat").pinned_version,
            None
        );
    }
}
