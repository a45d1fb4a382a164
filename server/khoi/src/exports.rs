//! Adapters that let the protocol servers find devices through the service
//! layer, so a seat opened over NBD or iSCSI follows the same version rules.

use std::sync::Arc;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use khoi_admin::{Actor, ExportName, Opened, Service, ServiceError};
use khoi_block::Checked;
use khoi_block::filters::Metered;
use khoi_iscsi::{ChapSecret, Credential, IscsiEvent, LunIdentity, TargetAuth, TargetResolver};
use khoi_nbd::{ExportInfo, ExportResolver, OpenError};
use khoi_state::{BootCred, CaptureStatus, ResetPolicy};

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

/// Seats as iSCSI targets: `<prefix>:<seat>`, the seat's overlay at LUN 0.
///
/// Who may log in (issue 10's boot path): from the address that holds a
/// seat's running boot, that boot's credentials; from the address its last
/// script fetch came from, the offered boot's credentials (their first login
/// begins that boot, and resets an `on-boot` seat). Always the initiator name
/// the script set. A fenced seat's running boot opens nothing. The seat's
/// long-lived secret (shown to admins for tools on the server itself) works
/// only from loopback. Everything else gets a decoy secret, so every refusal
/// looks the same on the wire.
#[derive(Debug)]
pub struct IscsiTargets {
    service: Arc<Service>,
    recorder: Recorder,
    server_id: String,
    prewarm: Arc<Prewarm>,
    backoff: Backoff,
}

/// Per-address backoff after refused CHAP logins: a guesser from one address
/// slows down, other addresses (the seats) are untouched.
#[derive(Debug, Default)]
struct Backoff(parking_lot::Mutex<std::collections::HashMap<IpAddr, (u32, Instant)>>);

/// Refusals an address may have before it waits.
const BACKOFF_FREE: u32 = 5;
/// The longest wait, and how long a quiet address keeps its count.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_FORGET: Duration = Duration::from_secs(900);

impl Backoff {
    /// Counts a refusal; returns the new count.
    fn refused(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut m = self.0.lock();
        if m.len() > 4096 {
            m.retain(|_, (_, t)| now.duration_since(*t) < BACKOFF_FORGET);
        }
        let e = m.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= BACKOFF_FORGET {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        e.0
    }

    /// Whether `ip` must wait: 1 s after the sixth refusal, doubling to
    /// [`BACKOFF_MAX`], counted from its last refusal.
    fn waiting(&self, ip: IpAddr, now: Instant) -> bool {
        let m = self.0.lock();
        let Some(&(n, last)) = m.get(&ip) else {
            return false;
        };
        if n <= BACKOFF_FREE {
            return false;
        }
        let wait = Duration::from_secs(1u64 << (n - BACKOFF_FREE - 1).min(9)).min(BACKOFF_MAX);
        now.duration_since(last) < wait
    }
}

/// A secret nobody knows: what a refused login is checked against.
fn decoy() -> ChapSecret {
    let secret = khoi_state::random_token(khoi_state::BOOT_SECRET_LEN)
        .unwrap_or_else(|_| format!("{:?}", Instant::now()));
    ChapSecret::new("", format!("decoy-{secret}"))
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
            backoff: Backoff::default(),
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

impl IscsiTargets {
    /// The draft target of a seat's capture: its one-time credentials, only
    /// from the address that fetched the capture environment, only while it
    /// copies, only for the initiator name it was given. Anything else gets
    /// the decoy every refusal gets.
    fn capture_auth(&self, seat: &str, peer: Option<IpAddr>) -> TargetAuth {
        let peer = peer.map(|p| p.to_canonical().to_string());
        let waiting = peer
            .as_deref()
            .and_then(|p| p.parse().ok())
            .is_some_and(|p| self.backoff.waiting(p, Instant::now()));
        let c = self
            .service
            .state()
            .capture(seat)
            .ok()
            .flatten()
            .filter(|c| c.status == CaptureStatus::Copying && !waiting)
            .filter(|c| peer.is_some() && c.peer == peer);
        let chap = c.as_ref().and_then(|c| {
            Some(ChapSecret::new(
                c.chap_user.clone()?,
                c.chap_secret.clone()?,
            ))
        });
        TargetAuth {
            chap: vec![Credential::one_way(chap.unwrap_or_else(decoy))],
            allowed_initiator: Some(
                c.and_then(|c| c.initiator)
                    .unwrap_or_else(|| khoi_pxe::default_initiator_iqn(seat)),
            ),
        }
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
        let mut targets: Vec<String> = self
            .service
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
            });
        // A copying capture's draft target exists for as long as the copy.
        if let Ok(captures) = self.service.state().captures() {
            targets.extend(
                captures
                    .iter()
                    .filter(|c| c.status == CaptureStatus::Copying)
                    .map(|c| self.service.capture_target_iqn(&c.seat)),
            );
        }
        targets
    }

    fn auth(&self, target: &str) -> Option<TargetAuth> {
        self.auth_from(target, None)
    }

    fn auth_from(&self, target: &str, peer: Option<IpAddr>) -> Option<TargetAuth> {
        if let Some(seat) = self.service.seat_of_capture_target(target) {
            return Some(self.capture_auth(seat, peer));
        }
        let name = self.service.seat_of_target(target)?;
        let seat = self.service.state().seat(name).ok()?;
        let peer = peer.map(|p| p.to_canonical());
        let boot = self.service.state().seat_boot(name).ok().flatten();
        let fenced = boot.as_ref().is_some_and(|b| b.fenced.is_some());
        let mut creds = Vec::new();
        let waiting = peer.is_some_and(|p| self.backoff.waiting(p, Instant::now()));
        if let (Some(p), Some(b), false) = (peer, &boot, waiting) {
            let from = |c: &&BootCred| c.peer == p.to_string();
            // Each boot answers mutual CHAP with its own target secret, the
            // one its script carried.
            let pair = |c: &BootCred| Credential {
                initiator: ChapSecret::new(c.user.clone(), c.secret.clone()),
                target: c.target_secret.clone().map(|s| ChapSecret::new(target, s)),
            };
            if let Some(c) = b.current.as_ref().filter(from).filter(|_| !fenced) {
                creds.push(pair(c));
            }
            if let Some(c) = b.pending.as_ref().filter(from) {
                creds.push(pair(c));
            }
        }
        let local = peer.is_some_and(|p| p.is_loopback());
        if local && !fenced && !waiting {
            creds.push(Credential {
                initiator: ChapSecret::new(seat.chap_user.clone(), seat.chap_secret.clone()),
                target: seat
                    .mutual_secret
                    .clone()
                    .map(|secret| ChapSecret::new(target, secret)),
            });
        }
        // Bound by default to the initiator name the boot script set; tools on
        // the server itself keep the admin's explicit binding, if any.
        // (`auth` without an address is SendTargets' view of a logged-in
        // session, which already passed this check.)
        let allowed_initiator = if peer.is_none_or(|p| p.is_loopback()) {
            seat.initiator_iqn.clone()
        } else {
            Some(
                seat.initiator_iqn
                    .clone()
                    .unwrap_or_else(|| khoi_pxe::default_initiator_iqn(name)),
            )
        };
        if creds.is_empty() {
            creds.push(Credential::one_way(decoy()));
        }
        Some(TargetAuth {
            chap: creds,
            allowed_initiator,
        })
    }

    /// A boot's credentials logging in for the first time begin that boot:
    /// the previous boot's credentials die, a fence lifts, and an `on-boot`
    /// seat is reset before its LU opens (once per boot, never at a fetch).
    fn chap_accepted(&self, target: &str, user: &str, peer: Option<IpAddr>) {
        if self.service.seat_of_capture_target(target).is_some() {
            // A capture's copy is no boot of the seat.
            return;
        }
        let Some(seat) = self.service.seat_of_target(target) else {
            return;
        };
        let began = match self.service.state().begin_boot(seat, user) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(seat, "cannot begin boot: {e}");
                return;
            }
        };
        let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_canonical().to_string());
        let policy = self
            .service
            .state()
            .seat(seat)
            .map(|s| s.policy)
            .unwrap_or(ResetPolicy::Persistent);
        self.service.activity().booting(seat);
        self.service.activity().boots().step(
            seat,
            khoi_state::BootStep::Login,
            khoi_admin::boot_times::now_ms(),
        );
        // What this boot reads is the version's boot working set.
        self.prewarm.boot_started(seat);
        // The event log is where the dashboard finds the last boot again
        // after a server restart.
        let p = policy.to_string();
        self.recorder.record_args(
            "seat.boot",
            seat.to_string(),
            format!("boot {} began from {peer} (policy {p})", began.boot_id),
            vec![("peer", peer), ("policy", p)],
        );
        if policy == ResetPolicy::OnBoot {
            let actor = Actor {
                name: "khoi".into(),
                source: format!("boot {}", began.boot_id),
            };
            if let Err(e) = self.service.reset_seat_at_boot(&actor, seat) {
                tracing::error!(seat, "reset at boot failed: {e}");
                self.recorder
                    .record("seat.boot.reset_failed", seat.to_string(), e.to_string());
            }
        }
    }

    /// Names what a refused login was, for the admin, and slows the address.
    fn chap_refused(&self, target: &str, user: &str, peer: Option<IpAddr>) {
        let peer = peer.map(|p| p.to_canonical());
        let from = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        if let Some(p) = peer {
            let n = self.backoff.refused(p, Instant::now());
            if n == BACKOFF_FREE + 1 {
                self.recorder.record_args(
                    "iscsi.login.backoff",
                    "-".to_string(),
                    format!("{n} refused logins from {from}: it now waits between attempts"),
                    vec![("peer", from.clone())],
                );
            }
        }
        let Some(seat) = self.service.seat_of_target(target) else {
            return;
        };
        let Ok(Some(boot)) = self.service.state().seat_boot(seat) else {
            return;
        };
        let is = |c: &Option<BootCred>| c.as_ref().filter(|c| c.user == user).cloned();
        let user = user.chars().take(80).collect::<String>();
        let args = vec![("peer", from.clone()), ("user", user.clone())];
        let seat = seat.to_string();
        if let Some(c) = is(&boot.current).or_else(|| is(&boot.pending)) {
            if c.peer != from {
                self.recorder.record_args(
                    "iscsi.login.stolen",
                    seat,
                    format!(
                        "boot credentials of the seat used from {from}; they belong to {}",
                        c.peer
                    ),
                    args,
                );
            } else if boot.fenced.is_some() && boot.current.as_ref().is_some_and(|b| b.user == user)
            {
                self.recorder.record_args(
                    "iscsi.login.fenced",
                    seat,
                    format!("login from {from} refused: the seat waits for a reboot"),
                    args,
                );
            }
        } else if boot.prev_chap_user.as_deref() == Some(user.as_str()) {
            self.recorder.record_args(
                "iscsi.login.expired",
                seat,
                format!("login from {from} with the previous boot's credentials"),
                args,
            );
        }
    }

    fn open_lun0(&self, target: &str) -> Result<Checked, String> {
        if let Some(seat) = self.service.seat_of_capture_target(target) {
            return self
                .service
                .open_capture_target(seat)
                .map(|o| checked(Opened::Overlay(o)))
                .map_err(|e| e.to_string());
        }
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
                    // The OS's login after iPXE's is the boot's hand-over.
                    self.service.activity().boots().logged_in(
                        &name,
                        tsih,
                        khoi_admin::boot_times::now_ms(),
                    );
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

/// One boot network's iSCSI portal: the seats of that network, and only
/// those whose image is for its kind, may log in here. Another seat's target
/// gets the decoy exchange every refusal gets (status 0x0201, nothing told
/// apart on the wire) and an event says why.
#[derive(Debug)]
pub struct NetworkTargets {
    inner: Arc<IscsiTargets>,
    network: khoi_admin::BootNetwork,
}

impl NetworkTargets {
    pub fn new(inner: Arc<IscsiTargets>, network: khoi_admin::BootNetwork) -> Self {
        NetworkTargets { inner, network }
    }

    /// Why `target`'s seat may not log in on this network, if it may not.
    /// A capture's draft target belongs to its seat's network like the seat.
    fn refusal(&self, target: &str) -> Option<crate::boot::Refusal> {
        let svc = &self.inner.service;
        let name = svc
            .seat_of_capture_target(target)
            .or_else(|| svc.seat_of_target(target))?;
        let seat = svc.state().seat(name).ok()?;
        crate::boot::Refusal::check(svc, &self.network, &seat)
    }
}

impl TargetResolver for NetworkTargets {
    fn targets(&self) -> Vec<String> {
        self.inner
            .targets()
            .into_iter()
            .filter(|t| self.refusal(t).is_none())
            .collect()
    }

    fn auth(&self, target: &str) -> Option<TargetAuth> {
        if self.refusal(target).is_some() {
            return None;
        }
        self.inner.auth(target)
    }

    fn auth_from(&self, target: &str, peer: Option<IpAddr>) -> Option<TargetAuth> {
        let auth = self.inner.auth_from(target, peer)?;
        match self.refusal(target) {
            None => Some(auth),
            Some(r) => {
                let from = peer.map_or_else(|| "-".into(), |p| p.to_canonical().to_string());
                r.record(
                    &self.inner.recorder,
                    true,
                    &self.network,
                    &format!("login from {from}"),
                );
                Some(TargetAuth {
                    chap: vec![Credential::one_way(decoy())],
                    ..auth
                })
            }
        }
    }

    fn chap_accepted(&self, target: &str, user: &str, peer: Option<IpAddr>) {
        // Only reachable with this network's own credentials (`auth_from`).
        self.inner.chap_accepted(target, user, peer);
    }

    fn chap_refused(&self, target: &str, user: &str, peer: Option<IpAddr>) {
        self.inner.chap_refused(target, user, peer);
    }

    fn open_lun0(&self, target: &str) -> Result<Checked, String> {
        // Checked again: the seat may have moved since its login began.
        if self.refusal(target).is_some() {
            return Err(format!(
                "{target} is not served on boot network {}",
                self.network.name
            ));
        }
        self.inner.open_lun0(target)
    }

    fn identity(&self, target: &str) -> LunIdentity {
        self.inner.identity(target)
    }

    fn event(&self, ev: IscsiEvent) {
        self.inner.event(ev);
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

/// Issue 10's boot-path attacks replayed against the real resolver and the
/// real login state machine (byte level; `tests/pxe_e2e.rs` boots real
/// iPXE seats over the same code).
#[cfg(test)]
mod boot_path_tests {
    use super::*;
    use khoi_admin::ServiceConfig;
    use khoi_admin::service::AddSeat;
    use khoi_block::{Store, StoreOptions};
    use khoi_iscsi::login::{Login, Step, status};
    use khoi_iscsi::pdu::{Bhs, LoginRequest, LoginResponse, Stage};
    use khoi_iscsi::text::{self, Offer, TextLimits};
    use khoi_state::State;

    const SEAT: &str = "iqn.2025-07.vn.khoi:pc01";
    const IQN: &str = "iqn.2025-07.vn.khoi.initiator:pc01";

    struct Lab {
        _dir: tempfile::TempDir,
        svc: Arc<Service>,
        targets: Arc<IscsiTargets>,
    }

    fn lab() -> Lab {
        lab_with(false)
    }

    fn lab_with(mutual_chap: bool) -> Lab {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("store"));
        let state = Arc::new(State::open(&dir.path().join("khoi.db")).expect("state"));
        let svc = Arc::new(Service::new(
            Arc::clone(&store),
            Arc::clone(&state),
            ServiceConfig {
                data_dir: dir.path().to_path_buf(),
                default_seat_quota: 0,
                target_prefix: "iqn.2025-07.vn.khoi".into(),
                iscsi_portal: None,
                nbd_address: None,
                import_roots: Vec::new(),
            },
        ));
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
                mutual_chap,
            },
        )
        .expect("seat");
        let prewarm = Arc::new(
            Prewarm::new(store, dir.path().to_path_buf(), Duration::from_secs(60)).expect("pw"),
        );
        let targets = Arc::new(IscsiTargets::new(
            Arc::clone(&svc),
            Recorder::start(state),
            "srv".into(),
            prewarm,
        ));
        Lab {
            _dir: dir,
            svc,
            targets,
        }
    }

    fn req(csg: Stage, nsg: Stage) -> LoginRequest {
        LoginRequest {
            transit: true,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x40, 0, 0x01, 0x37, 0, 1],
            tsih: 0,
            itt: 0,
            cid: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    fn pairs(p: &khoi_iscsi::pdu::Pdu) -> Vec<(String, String)> {
        text::parse(&p.data, TextLimits::default()).expect("text")
    }

    /// An iPXE-style CHAP login; the login status (0 = reached full feature).
    fn login(l: &Lab, from: &str, initiator: &str, user: &str, secret: &str) -> u16 {
        login_with(l, from, initiator, user, secret, None)
    }

    /// `login` with mutual CHAP: the target's answer must verify against
    /// `target_secret`, as iPXE and the Microsoft initiator check it.
    fn login_with(
        l: &Lab,
        from: &str,
        initiator: &str,
        user: &str,
        secret: &str,
        target_secret: Option<&str>,
    ) -> u16 {
        let resolver: Arc<dyn khoi_iscsi::TargetResolver> = l.targets.clone();
        login_on(resolver, SEAT, from, initiator, user, secret, target_secret)
    }

    /// [`login_with`] through `resolver` (a network's portal) to `target`.
    fn login_on(
        resolver: Arc<dyn khoi_iscsi::TargetResolver>,
        target: &str,
        from: &str,
        initiator: &str,
        user: &str,
        secret: &str,
        target_secret: Option<&str>,
    ) -> u16 {
        let peer: IpAddr = from.parse().expect("ip");
        let mut lg = Login::new(resolver, Offer::default(), 1, 128).with_peer(Some(peer));
        let sec = || req(Stage::Security, Stage::Operational);
        let first = format!(
            "InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0AuthMethod=CHAP,None\0"
        );
        let fail = |s: Step| match s {
            Step::Fail(_, f) => f.status,
            other => panic!("unexpected {other:?}"),
        };
        let Step::Continue(_) = lg.on_pdu(&sec(), first.as_bytes()) else {
            unreachable!("first step never fails for a CHAP-capable initiator")
        };
        let Step::Continue(p) = lg.on_pdu(&sec(), b"CHAP_A=5\0") else {
            unreachable!("CHAP_A=5 is accepted")
        };
        let kv = pairs(&p);
        let get = |k: &str| kv.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        let id: u8 = get("CHAP_I").expect("id").parse().expect("id");
        let c = khoi_iscsi::chap::decode_binary(&get("CHAP_C").expect("c")).expect("c");
        let r =
            khoi_iscsi::chap::encode_hex(&khoi_iscsi::chap::response(id, secret.as_bytes(), &c));
        let mut answer = format!("CHAP_N={user}\0CHAP_R={r}\0");
        let ours = [0x5au8; 16];
        if target_secret.is_some() {
            answer.push_str(&format!(
                "CHAP_I=3\0CHAP_C={}\0",
                khoi_iscsi::chap::encode_hex(&ours)
            ));
        }
        let step = lg.on_pdu(&sec(), answer.as_bytes());
        let Step::Continue(p) = step else {
            return fail(step);
        };
        let resp = LoginResponse::parse(&Bhs::new_unchecked(&p.bhs[..])).expect("resp");
        assert!(resp.transit);
        if let Some(ts) = target_secret {
            let kv = pairs(&p);
            let got = kv
                .iter()
                .find(|(k, _)| k == "CHAP_R")
                .map(|(_, v)| v.clone());
            let want = khoi_iscsi::chap::response(3, ts.as_bytes(), &ours);
            assert_eq!(
                got,
                Some(khoi_iscsi::chap::encode_hex(&want)),
                "the target answered with another secret"
            );
        }
        match lg.on_pdu(&req(Stage::Operational, Stage::FullFeature), b"") {
            Step::Ready { .. } => status::SUCCESS,
            other => fail(other),
        }
    }

    fn offer(l: &Lab, from: &str) -> BootCred {
        l.svc.state().offer_boot("pc01", from, IQN).expect("offer")
    }

    /// How many `kind` events the seat has, waiting up to 5 s for `want`
    /// (the recorder writes from its own thread).
    fn events_reach(l: &Lab, kind: &str, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = l
                .svc
                .state()
                .events(Some("pc01"), 500)
                .expect("events")
                .iter()
                .filter(|e| e.kind == kind)
                .count();
            if n >= want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    const SEAT_IP: &str = "10.0.0.5";
    const ATTACKER: &str = "10.0.0.66";

    /// Mutual CHAP per boot: the script carries a target secret minted for
    /// that boot (never the seat's stored one), the target answers each boot
    /// with its own, and the running boot keeps its answer while a later
    /// fetch is only offered.
    #[test]
    fn mutual_chap_answers_each_boot_with_its_own_target_secret() {
        let l = lab_with(true);
        let stored = l.svc.state().seat("pc01").expect("seat").mutual_secret;
        let a = offer(&l, SEAT_IP);
        let ta = a.target_secret.clone().expect("a mutual seat's boot");
        assert_ne!(Some(&ta), stored.as_ref());
        let ok = login_with(&l, SEAT_IP, IQN, &a.user, &a.secret, Some(&ta));
        assert_eq!(ok, status::SUCCESS);
        let b = offer(&l, SEAT_IP);
        let tb = b.target_secret.clone().expect("fresh");
        assert_ne!(ta, tb);
        // Both open the seat until b begins; each gets its own answer.
        let ok = login_with(&l, SEAT_IP, IQN, &a.user, &a.secret, Some(&ta));
        assert_eq!(ok, status::SUCCESS);
        let ok = login_with(&l, SEAT_IP, IQN, &b.user, &b.secret, Some(&tb));
        assert_eq!(ok, status::SUCCESS);
        // b began: a's credentials are dead.
        assert_ne!(login(&l, SEAT_IP, IQN, &a.user, &a.secret), status::SUCCESS);
    }

    #[test]
    fn fetch_resets_nothing_first_login_resets_once() {
        let l = lab();
        let a = offer(&l, SEAT_IP);
        assert_eq!(
            events_reach(&l, "seat.reset", 0),
            0,
            "a script fetch resets nothing"
        );
        assert_eq!(login(&l, SEAT_IP, IQN, &a.user, &a.secret), status::SUCCESS);
        assert_eq!(
            events_reach(&l, "seat.reset", 1),
            1,
            "the boot's first login resets"
        );
        // Windows' re-logins after the hand-over, and reconnects, with the same
        // credentials: no further reset.
        assert_eq!(login(&l, SEAT_IP, IQN, &a.user, &a.secret), status::SUCCESS);
        assert_eq!(login(&l, SEAT_IP, IQN, &a.user, &a.secret), status::SUCCESS);
        assert_eq!(events_reach(&l, "seat.reset", 1), 1);
    }

    #[test]
    fn stolen_credentials_from_another_address_are_refused() {
        let l = lab();
        let a = offer(&l, SEAT_IP);
        assert_eq!(
            login(&l, ATTACKER, IQN, &a.user, &a.secret),
            status::AUTH_FAILURE
        );
        assert_eq!(events_reach(&l, "iscsi.login.stolen", 1), 1);
        assert_eq!(events_reach(&l, "seat.reset", 0), 0);
        // The seat's own login still works, and then the stolen ones still not.
        assert_eq!(login(&l, SEAT_IP, IQN, &a.user, &a.secret), status::SUCCESS);
        assert_eq!(
            login(&l, ATTACKER, IQN, &a.user, &a.secret),
            status::AUTH_FAILURE
        );
        // Nor with another initiator name from the right address.
        assert_eq!(
            login(
                &l,
                SEAT_IP,
                "iqn.1991-05.com.microsoft:evil",
                &a.user,
                &a.secret
            ),
            status::AUTH_FAILURE
        );
        // The long-lived secret is not a seat's credential off the server.
        let seat = l.svc.state().seat("pc01").expect("seat");
        assert_eq!(
            login(&l, SEAT_IP, IQN, &seat.chap_user, &seat.chap_secret),
            status::AUTH_FAILURE
        );
    }

    #[test]
    fn forged_fetch_gets_nothing_usable_against_the_running_seat() {
        let l = lab();
        let a = offer(&l, SEAT_IP);
        assert_eq!(login(&l, SEAT_IP, IQN, &a.user, &a.secret), status::SUCCESS);
        let resets = events_reach(&l, "seat.reset", 1);
        // The attacker fetches the seat's script from its own address.
        let f = offer(&l, ATTACKER);
        assert_eq!(
            events_reach(&l, "seat.reset", resets),
            resets,
            "the forged fetch resets nothing"
        );
        // Its credentials do not open the seat from the seat's address...
        assert_eq!(
            login(&l, SEAT_IP, IQN, &f.user, &f.secret),
            status::AUTH_FAILURE
        );
        // ...and the running seat keeps reconnecting with its own.
        assert_eq!(login(&l, SEAT_IP, IQN, &a.user, &a.secret), status::SUCCESS);
        assert_eq!(events_reach(&l, "seat.reset", resets), resets);
    }

    #[test]
    fn fenced_seat_is_refused_until_its_next_boot() {
        let l = lab();
        let a = offer(&l, SEAT_IP);
        assert_eq!(login(&l, SEAT_IP, IQN, &a.user, &a.secret), status::SUCCESS);
        l.svc
            .reset_seat(&Actor::server(), "pc01")
            .expect("admin reset");
        assert!(l.svc.seat("pc01").expect("seat").seat.fenced);
        // Windows reconnecting after the reset must not get the new overlay.
        assert_eq!(
            login(&l, SEAT_IP, IQN, &a.user, &a.secret),
            status::AUTH_FAILURE
        );
        assert_eq!(events_reach(&l, "iscsi.login.fenced", 1), 1);
        // A fetch alone lifts nothing; the next boot's login does.
        let b = offer(&l, SEAT_IP);
        assert_eq!(
            login(&l, SEAT_IP, IQN, &a.user, &a.secret),
            status::AUTH_FAILURE
        );
        assert_eq!(login(&l, SEAT_IP, IQN, &b.user, &b.secret), status::SUCCESS);
        assert!(!l.svc.seat("pc01").expect("seat").seat.fenced);
        // The last boot's credentials are over.
        assert_eq!(
            login(&l, SEAT_IP, IQN, &a.user, &a.secret),
            status::AUTH_FAILURE
        );
        assert_eq!(events_reach(&l, "iscsi.login.expired", 1), 1);
    }

    #[test]
    fn repeated_failures_from_one_address_back_off() {
        let l = lab();
        let a = offer(&l, ATTACKER);
        for _ in 0..=BACKOFF_FREE {
            assert_eq!(
                login(&l, ATTACKER, IQN, &a.user, "wrong"),
                status::AUTH_FAILURE
            );
        }
        // Even the right credentials wait now (the same status, so a guesser
        // cannot tell)...
        assert_eq!(
            login(&l, ATTACKER, IQN, &a.user, &a.secret),
            status::AUTH_FAILURE
        );
        // ...while other addresses are untouched.
        let s = offer(&l, SEAT_IP);
        assert_eq!(login(&l, SEAT_IP, IQN, &s.user, &s.secret), status::SUCCESS);
    }

    /// Issue 14: a seat logs in only through its own network's portal, and
    /// only with an image of that network's kind; the boot path (DHCP and
    /// scripts) answers it only there, and each refusal leaves an event.
    #[test]
    fn seats_are_served_only_on_their_own_network() {
        use khoi_admin::BootNetwork;
        use khoi_admin::gate::Profile;
        use khoi_pxe::BootDirectory;

        let l = lab();
        let quay = BootNetwork {
            name: "quay".into(),
            profile: Profile::Counter,
            portal: None,
        };
        let public = BootNetwork {
            name: "public".into(),
            profile: Profile::Kiosk,
            portal: None,
        };
        l.svc.set_networks(vec![quay.clone(), public.clone()]);
        let recorder = Recorder::start(Arc::clone(l.svc.state()));
        let portal = |net: &BootNetwork| -> Arc<dyn khoi_iscsi::TargetResolver> {
            Arc::new(NetworkTargets::new(l.targets.clone(), net.clone()))
        };
        let seats = |net: &BootNetwork| {
            crate::boot::Seats::new(
                Arc::clone(&l.svc),
                recorder.clone(),
                Some("10.0.0.1:3260".parse().expect("portal")),
                net.clone(),
            )
        };
        let mac = [2, 0, 0, 0, 0, 1];

        // pc01 names no network: it is on the first, the counter LAN.
        assert!(seats(&quay).seat_by_mac(mac).is_some());
        assert_eq!(
            seats(&public).seat_by_mac(mac),
            None,
            "DHCP and scripts stay silent"
        );
        seats(&public).unknown_mac(mac, Some(0), None, std::time::SystemTime::now());
        assert_eq!(events_reach(&l, "pxe.wrong_network", 1), 1);
        assert!(
            l.svc.state().unknown_macs(10).expect("unknown").is_empty(),
            "a registered seat is not offered for enrolment"
        );
        assert_eq!(portal(&public).targets(), Vec::<String>::new());
        assert_eq!(portal(&quay).targets(), vec![SEAT.to_string()]);

        let a = offer(&l, SEAT_IP);
        assert_eq!(
            login_on(
                portal(&public),
                SEAT,
                SEAT_IP,
                IQN,
                &a.user,
                &a.secret,
                None
            ),
            status::AUTH_FAILURE,
            "its own credentials, on the wrong network"
        );
        assert_eq!(events_reach(&l, "iscsi.login.wrong_network", 1), 1);
        assert_eq!(events_reach(&l, "seat.reset", 0), 0, "nothing began");
        assert_eq!(
            login_on(portal(&quay), SEAT, SEAT_IP, IQN, &a.user, &a.secret, None),
            status::SUCCESS
        );
        assert!(portal(&public).open_lun0(SEAT).is_err());

        // An image that became kiosk under the seat (the profile changed
        // behind the service, or a network changed kind in the config) is
        // not served on the counter LAN either.
        l.svc
            .state()
            .set_gate_settings(
                "win10",
                &khoi_state::GateSettings {
                    profile: "kiosk".into(),
                    policy: "{}".into(),
                },
            )
            .expect("profile");
        assert_eq!(
            l.svc.gate_settings("win10").expect("settings").profile,
            Profile::Kiosk
        );
        assert_eq!(seats(&quay).seat_by_mac(mac), None);
        seats(&quay).unknown_mac(mac, Some(0), None, std::time::SystemTime::now());
        assert_eq!(events_reach(&l, "pxe.wrong_profile", 1), 1);
        let b = offer(&l, SEAT_IP);
        assert_eq!(
            login_on(portal(&quay), SEAT, SEAT_IP, IQN, &b.user, &b.secret, None),
            status::AUTH_FAILURE
        );
        assert_eq!(events_reach(&l, "iscsi.login.wrong_profile", 1), 1);
        assert!(portal(&quay).open_lun0(SEAT).is_err());
    }

    /// Issue 11 §2: a capture's draft target opens with its one-time
    /// credentials only, from the address that fetched the capture
    /// environment, for the initiator name it was given, while it copies;
    /// its logins begin no boot of the seat.
    #[test]
    fn capture_target_opens_only_for_its_copy() {
        let l = lab();
        let a = Actor::server();
        l.svc.capture_arm(&a, "pc01", "master").expect("arm");
        let (token, _) = l
            .svc
            .capture_offer("pc01", "10.0.0.5")
            .expect("offer")
            .expect("armed");
        let target = l.svc.capture_target_iqn("pc01");
        let t = l
            .svc
            .capture_begin(&token, "10.0.0.5", 1 << 20, 1 << 20)
            .expect("begin");
        assert_eq!(t.target_iqn, target);
        let (ini, user, secret) = (t.initiator_iqn.as_str(), &t.chap_user, &t.chap_secret);
        assert_eq!(
            login_on(
                l.targets.clone(),
                &target,
                "10.0.0.5",
                ini,
                user,
                secret,
                None
            ),
            status::SUCCESS
        );
        assert_ne!(
            login_on(
                l.targets.clone(),
                &target,
                "10.0.0.6",
                ini,
                user,
                secret,
                None
            ),
            status::SUCCESS,
            "another address"
        );
        assert_ne!(
            login_on(
                l.targets.clone(),
                &target,
                "10.0.0.5",
                "iqn.x:other",
                user,
                secret,
                None
            ),
            status::SUCCESS,
            "another initiator"
        );
        // Like its seat, the capture is served on the seat's boot network only.
        let quay = khoi_admin::BootNetwork {
            name: "quay".into(),
            profile: khoi_admin::gate::Profile::Counter,
            portal: None,
        };
        let public = khoi_admin::BootNetwork {
            name: "public".into(),
            profile: khoi_admin::gate::Profile::Kiosk,
            portal: None,
        };
        l.svc.set_networks(vec![quay.clone(), public.clone()]);
        let on = |net: &khoi_admin::BootNetwork| -> Arc<dyn khoi_iscsi::TargetResolver> {
            Arc::new(NetworkTargets::new(l.targets.clone(), net.clone()))
        };
        assert_eq!(
            login_on(on(&quay), &target, "10.0.0.5", ini, user, secret, None),
            status::SUCCESS
        );
        assert_ne!(
            login_on(on(&public), &target, "10.0.0.5", ini, user, secret, None),
            status::SUCCESS,
            "another boot network's portal"
        );
        // The seat's own boot credentials open its own target, not the capture's.
        let boot = offer(&l, "10.0.0.5");
        assert_ne!(
            login_on(
                l.targets.clone(),
                &target,
                "10.0.0.5",
                IQN,
                &boot.user,
                &boot.secret,
                None
            ),
            status::SUCCESS
        );
        assert_ne!(
            login(&l, "10.0.0.5", ini, user, secret),
            status::SUCCESS,
            "the capture's credentials do not open the seat"
        );
        assert_eq!(events_reach(&l, "seat.boot", 0), 0, "a copy is no boot");
        l.svc
            .capture_fail(&token, "10.0.0.5", "test over")
            .expect("fail");
        assert_ne!(
            login_on(
                l.targets.clone(),
                &target,
                "10.0.0.5",
                ini,
                user,
                secret,
                None
            ),
            status::SUCCESS,
            "the credentials die with the capture"
        );
    }
}
