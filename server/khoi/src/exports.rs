//! Adapters that let the protocol servers find devices through the service
//! layer, so a seat opened over NBD or iSCSI follows the same version rules.

use std::sync::Arc;

use khoi_admin::{ExportName, Opened, Service, ServiceError};
use khoi_block::Checked;
use khoi_block::filters::Metered;
use khoi_iscsi::{ChapSecret, IscsiEvent, LunIdentity, TargetAuth, TargetResolver};
use khoi_nbd::{ExportInfo, ExportResolver, OpenError};

use crate::metered::SeatMeter;
use crate::prewarm::Prewarm;
use crate::recorder::Recorder;

#[derive(Debug)]
pub struct NbdExports {
    service: Arc<Service>,
    prewarm: Arc<Prewarm>,
}

impl NbdExports {
    pub fn new(service: Arc<Service>, prewarm: Arc<Prewarm>) -> Self {
        NbdExports { service, prewarm }
    }
}

pub fn checked(opened: Opened) -> Checked {
    match opened {
        Opened::Overlay(o) => Checked::new(o),
        Opened::Version(v) => Checked::new(v),
    }
}

/// A seat's device, metered for the admin side and learning its version's
/// boot working set while the seat boots; other exports are not seats.
fn metered_seat(
    service: &Service,
    prewarm: &Prewarm,
    seat: &str,
    proto: &str,
    opened: Opened,
) -> Checked {
    let inner: Arc<dyn khoi_block::BlockDevice> = match opened {
        Opened::Overlay(o) => prewarm.wrap(seat, o),
        Opened::Version(v) => v,
    };
    let activity = service.activity();
    let sink = SeatMeter::new(activity, seat, proto);
    // NBD opens one handle per connection, so the handle is the session;
    // iSCSI sessions are reported from its login/logout events instead.
    let sink = if proto == "nbd" {
        sink.session(activity, proto)
    } else {
        sink
    };
    Checked::new(Arc::new(Metered::new(inner, sink)))
}

impl ExportResolver for NbdExports {
    fn list(&self) -> Vec<ExportInfo> {
        self.service
            .export_names()
            .into_iter()
            .map(|(name, description)| ExportInfo { name, description })
            .collect()
    }

    fn open(&self, name: &str) -> Result<Checked, OpenError> {
        let Some(export) = ExportName::parse(name) else {
            return Err(OpenError::NotFound(format!(
                "no export {name:?}; exports are seat/<seat>, image/<image>@<version> and draft/<image>"
            )));
        };
        match self.service.open_export(&export) {
            Ok(opened) => Ok(match &export {
                ExportName::Seat(seat) => {
                    metered_seat(&self.service, &self.prewarm, seat, "nbd", opened)
                }
                _ => checked(opened),
            }),
            Err(ServiceError::NotFound(m)) => Err(OpenError::NotFound(m)),
            Err(e) => {
                tracing::warn!(export = name, "cannot open export: {e}");
                Err(OpenError::Other(e.to_string()))
            }
        }
    }
}

/// Seats as iSCSI targets: `<prefix>:<seat>`, the seat's overlay at LUN 0,
/// the seat's own CHAP credentials and nothing else.
#[derive(Debug)]
pub struct IscsiTargets {
    service: Arc<Service>,
    recorder: Recorder,
    server_id: String,
    prewarm: Arc<Prewarm>,
}

impl IscsiTargets {
    pub fn new(
        service: Arc<Service>,
        recorder: Recorder,
        server_id: String,
        prewarm: Arc<Prewarm>,
    ) -> Self {
        IscsiTargets {
            service,
            recorder,
            server_id,
            prewarm,
        }
    }

    /// A session starting or ending on a seat, with its values for the pages.
    fn session_event(
        &self,
        kind: &'static str,
        seat: String,
        initiator: String,
        peer: &str,
        tsih: u16,
    ) {
        self.recorder.record_args(
            kind,
            seat,
            format!("{initiator} from {peer}, session {tsih}"),
            vec![
                ("initiator", initiator),
                ("peer", peer.to_string()),
                ("session", tsih.to_string()),
            ],
        );
    }
}

/// 128-bit FNV-1a: a stable, well-spread digest for device identifiers (not
/// a security boundary, so no cryptographic hash is needed).
fn fnv128(parts: &[&str]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    let mut h = OFFSET;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The LU identity of a seat: stable for the seat on this server, different
/// for every seat and every server, so Windows never sees two disks with
/// one identifier.
pub fn identity(server_id: &str, seat: &str) -> LunIdentity {
    let h = fnv128(&[server_id, seat]).to_be_bytes();
    let mut naa = [0u8; 16];
    // NAA 6 (IEEE Registered Extended); the company id and vendor-specific
    // bits come from the digest, since Khoi has no IEEE OUI of its own.
    naa.copy_from_slice(&h);
    naa[0] = 0x60 | (naa[0] & 0x0f);
    let serial = format!(
        "KHOI{}",
        h[..8]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    );
    LunIdentity { serial, naa }
}

impl TargetResolver for IscsiTargets {
    fn targets(&self) -> Vec<String> {
        self.service
            .state()
            .seats()
            .map(|seats| {
                seats
                    .iter()
                    .map(|s| self.service.target_iqn(&s.name))
                    .collect()
            })
            .unwrap_or_else(|e| {
                tracing::error!("cannot list seats: {e}");
                Vec::new()
            })
    }

    fn auth(&self, target: &str) -> Option<TargetAuth> {
        let seat = self.service.seat_of_target(target)?;
        let seat = self.service.state().seat(seat).ok()?;
        Some(TargetAuth {
            chap: Some(ChapSecret::new(seat.chap_user, seat.chap_secret)),
            mutual: seat
                .mutual_secret
                .map(|secret| ChapSecret::new(target, secret)),
            allowed_initiator: seat.initiator_iqn,
        })
    }

    fn open_lun0(&self, target: &str) -> Result<Checked, String> {
        let seat = self
            .service
            .seat_of_target(target)
            .ok_or_else(|| format!("{target} is not a Khoi seat target"))?;
        self.service
            .open_seat(seat)
            .map(|o| {
                metered_seat(
                    &self.service,
                    &self.prewarm,
                    seat,
                    "iscsi",
                    Opened::Overlay(o),
                )
            })
            .map_err(|e| e.to_string())
    }

    fn identity(&self, target: &str) -> LunIdentity {
        identity(&self.server_id, target)
    }

    fn event(&self, ev: IscsiEvent) {
        let seat = |t: &Option<String>| {
            t.as_deref()
                .map(|t| self.service.seat_of_target(t).unwrap_or(t).to_string())
                .unwrap_or_else(|| "-".into())
        };
        match ev {
            IscsiEvent::LoginFailed {
                peer,
                initiator,
                target,
                status,
                reason,
            } => self.recorder.record(
                "iscsi.login.failed",
                seat(&target),
                format!(
                    "status {status:#06x} from {peer} ({}): {reason}",
                    initiator.as_deref().unwrap_or("no initiator name")
                ),
            ),
            IscsiEvent::LoggedIn {
                peer,
                initiator,
                target,
                tsih,
            } => {
                let name = seat(&target);
                if target.is_some() {
                    self.service.activity().connected(&name, "iscsi", &peer);
                }
                self.session_event("iscsi.login", name, initiator, &peer, tsih);
            }
            IscsiEvent::SessionEnded {
                peer,
                initiator,
                target,
                tsih,
            } => {
                let name = seat(&target);
                if target.is_some() {
                    self.service.activity().disconnected(&name, "iscsi", &peer);
                }
                self.session_event("iscsi.session.end", name, initiator, &peer, tsih);
            }
            IscsiEvent::SpaceAllocationFailed {
                target,
                initiator,
                detail,
            } => self.recorder.record(
                "overlay.full",
                seat(&Some(target)),
                format!("write from {initiator} refused (27/07): {detail}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_stable_and_distinct() {
        let a = identity("srv1", "iqn.x:quay-01");
        assert_eq!(a, identity("srv1", "iqn.x:quay-01"));
        assert_ne!(a.naa, identity("srv1", "iqn.x:quay-02").naa);
        assert_ne!(a.naa, identity("srv2", "iqn.x:quay-01").naa);
        assert_eq!(a.naa[0] >> 4, 6);
        assert!(a.serial.is_ascii() && a.serial.len() == 20);
    }
}
