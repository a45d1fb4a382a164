//! The boot path's view of the seats: who may PXE boot, what its iPXE
//! script says, and what happens when a seat announces it is booting.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use khoi_admin::gate::Profile;
use khoi_admin::{BootNetwork, Service, ServiceError};
use khoi_pxe::{BootDirectory, CaptureBoot, Lease, SeatBoot};
use khoi_state::{BootStep, Mac, Seat};
use parking_lot::Mutex;

use crate::recorder::Recorder;

/// Leases live in the state database as one JSON document: a room has tens
/// of seats, leases change a few times a day, and one row keeps the whole
/// table consistent without a schema of its own.
const LEASES_KEY: &str = "dhcp.leases";

/// The seats of one boot network: its DHCP, TFTP and boot scripts answer
/// these and no others.
#[derive(Debug)]
pub struct Seats {
    service: Arc<Service>,
    recorder: Recorder,
    portal: Option<SocketAddrV4>,
    network: BootNetwork,
    leases: Mutex<BTreeMap<String, (String, u64)>>,
}

/// Why a registered seat is not served on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It belongs to another network (named), or to one the config lacks.
    WrongNetwork { seat: String, own: Option<String> },
    /// Its image's gate profile is not this network's kind.
    WrongProfile {
        seat: String,
        image: String,
        profile: Profile,
    },
}

impl Refusal {
    /// Whether `seat` may be served on `network`, as the boot path and the
    /// iSCSI login both ask it.
    pub fn check(service: &Service, network: &BootNetwork, seat: &Seat) -> Option<Refusal> {
        let own = service.network_of(seat.network.as_deref());
        if own.as_ref().map(|n| n.name.as_str()) != Some(network.name.as_str()) {
            return Some(Refusal::WrongNetwork {
                seat: seat.name.clone(),
                own: own.map(|n| n.name).or_else(|| seat.network.clone()),
            });
        }
        let profile = match service.gate_settings(&seat.image) {
            Ok(g) => g.profile,
            Err(e) => {
                // Not knowing the image's profile must not let it through.
                tracing::error!(seat = %seat.name, "cannot read the image's gate profile: {e}");
                return Some(Refusal::WrongProfile {
                    seat: seat.name.clone(),
                    image: seat.image.clone(),
                    profile: if network.profile == Profile::Counter {
                        Profile::Kiosk
                    } else {
                        Profile::Counter
                    },
                });
            }
        };
        (profile != network.profile).then(|| Refusal::WrongProfile {
            seat: seat.name.clone(),
            image: seat.image.clone(),
            profile,
        })
    }

    /// Records the refusal of `what` (a boot request, a login) on `network`
    /// as `pxe.*` or, for a login, `iscsi.login.*`.
    pub fn record(&self, recorder: &Recorder, login: bool, network: &BootNetwork, what: &str) {
        let (subject, detail, args) = self.event(network, what);
        match (self, login) {
            (Refusal::WrongNetwork { .. }, false) => {
                recorder.record_args("pxe.wrong_network", subject, detail, args);
            }
            (Refusal::WrongProfile { .. }, false) => {
                recorder.record_args("pxe.wrong_profile", subject, detail, args);
            }
            (Refusal::WrongNetwork { .. }, true) => {
                recorder.record_args("iscsi.login.wrong_network", subject, detail, args);
            }
            (Refusal::WrongProfile { .. }, true) => {
                recorder.record_args("iscsi.login.wrong_profile", subject, detail, args);
            }
        }
    }

    /// The subject, the English detail and its values.
    fn event(
        &self,
        network: &BootNetwork,
        what: &str,
    ) -> (String, String, Vec<(&'static str, String)>) {
        let here = network.name.clone();
        match self {
            Refusal::WrongNetwork { seat, own } => {
                let own = own.clone().unwrap_or_else(|| "-".into());
                (
                    seat.clone(),
                    format!("{what} on network {here} refused: the seat is on network {own}"),
                    vec![("network", here), ("own", own)],
                )
            }
            Refusal::WrongProfile {
                seat,
                image,
                profile,
            } => {
                let profile = match profile {
                    Profile::Counter => "counter",
                    Profile::Kiosk => "kiosk",
                };
                (
                    seat.clone(),
                    format!(
                        "{what} on network {here} refused: image {image} has the {profile} \
                         profile, which is never served on a {} network",
                        khoi_admin::networks::kind_name(network.profile)
                    ),
                    vec![
                        ("network", here),
                        ("image", image.clone()),
                        ("profile", profile.to_string()),
                    ],
                )
            }
        }
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn mac_text(mac: [u8; 6]) -> String {
    Mac(mac).to_string()
}

impl Seats {
    /// The seats of `network`, whose iSCSI portal is `portal`.
    pub fn new(
        service: Arc<Service>,
        recorder: Recorder,
        portal: Option<SocketAddr>,
        network: BootNetwork,
    ) -> Seats {
        let portal = match portal {
            Some(SocketAddr::V4(a)) => Some(a),
            _ => None,
        };
        let leases = service
            .state()
            .setting(LEASES_KEY)
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        Seats {
            service,
            recorder,
            portal,
            network,
            leases: Mutex::new(leases),
        }
    }

    fn persist(&self, leases: &BTreeMap<String, (String, u64)>) {
        let saved = serde_json::to_string(leases)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                self.service
                    .state()
                    .set_setting(LEASES_KEY, &json)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            tracing::error!("cannot save DHCP leases: {e}");
        }
    }
}

impl BootDirectory for Seats {
    fn seat_by_mac(&self, mac: [u8; 6]) -> Option<SeatBoot> {
        // Without an IPv4 iSCSI portal there is nothing a seat could boot.
        let portal = self.portal?;
        let seat = match self.service.state().seat_by_mac(Mac(mac)) {
            Ok(seat) => seat?,
            Err(e) => {
                tracing::error!("seat lookup failed: {e}");
                return None;
            }
        };
        // A seat of another network, or whose image is not for this one, gets
        // what an unregistered machine gets: silence from DHCP, no script.
        // `unknown_mac` then says which it was.
        if Refusal::check(&self.service, &self.network, &seat).is_some() {
            return None;
        }
        let target_iqn = self.service.target_iqn(&seat.name);
        let initiator_iqn = seat
            .initiator_iqn
            .clone()
            .unwrap_or_else(|| khoi_pxe::default_initiator_iqn(&seat.name));
        Some(SeatBoot {
            mac,
            portal,
            initiator_iqn,
            // The long-lived secrets are never sent to a seat: `offer_boot` fills in
            // the credentials (and the target's mutual secret) of the boot the
            // script is for.
            chap: None,
            mutual_chap: None,
            target_iqn,
            reserved_ip: None,
            seat: seat.name,
        })
    }

    /// Not used: the fetch goes through `offer_boot`, and what a boot does
    /// happens when it begins (`begin_boot`, at its credentials' first login).
    fn booting(&self, _boot: &SeatBoot) {}

    /// The boot-script fetch from `peer`: mint this boot's credentials, bound
    /// to `peer` and the script's initiator name. Nothing else changes here;
    /// a forged fetch gets credentials that work only from its own address
    /// and leaves the running boot (and the overlay) alone.
    fn offer_boot(&self, mut boot: SeatBoot, peer: Option<IpAddr>) -> Result<SeatBoot, String> {
        let peer = peer
            .map(|p| p.to_canonical())
            .ok_or("the requester's address is unknown")?;
        let state = self.service.state();
        let before = state.seat_boot(&boot.seat).ok().flatten();
        let cred = state
            .offer_boot(&boot.seat, &peer.to_string(), &boot.initiator_iqn)
            .map_err(|e| e.to_string())?;
        let (mac, from) = (mac_text(boot.mac), peer.to_string());
        self.recorder.record_args(
            "seat.boot.offer",
            boot.seat.clone(),
            format!("boot script fetched by {mac} from {from}"),
            vec![("mac", mac), ("peer", from.clone())],
        );
        // The same seat's boot claimed from two addresses: a forged fetch, or
        // a cloned MAC. Either way the admin should see it.
        let running = before
            .as_ref()
            .filter(|b| b.fenced.is_none())
            .and_then(|b| b.current.as_ref());
        let offered = before.as_ref().and_then(|b| b.pending.as_ref());
        if let Some(other) = running.or(offered).filter(|c| c.peer != from) {
            self.recorder.record_args(
                "seat.boot.conflict",
                boot.seat.clone(),
                format!(
                    "boot script requested from {from} while the seat's boot is from {}",
                    other.peer
                ),
                vec![("peer", from), ("other", other.peer.clone())],
            );
        }
        let clock = self.service.activity().boots();
        clock.seen_at(&boot.seat, peer);
        clock.step(&boot.seat, BootStep::Script, unix_ms(SystemTime::now()));
        boot.chap = Some((cred.user, cred.secret));
        boot.mutual_chap = cred.target_secret.map(|s| (boot.target_iqn.clone(), s));
        Ok(boot)
    }

    /// The firmware's DHCP begins a boot (boot times); the DHCP of an iPXE
    /// the PXE ROM chainloaded (its answer names the script URL, not a
    /// binary) is part of the TFTP phase, and Windows' own DHCP is no step.
    fn dhcp_answered(&self, event: &khoi_pxe::dhcp::Event, pxe: bool, at: SystemTime) {
        use khoi_pxe::dhcp::Event;
        let (Event::Offer { seat, ip, file } | Event::Ack { seat, ip, file }) = event else {
            return;
        };
        let clock = self.service.activity().boots();
        if let Some(ip) = ip {
            clock.seen_at(seat, IpAddr::V4(*ip));
        }
        match file.as_deref() {
            _ if !pxe => {}
            Some(f) if f.contains("://") => clock.ipxe_dhcp(seat, unix_ms(at)),
            Some(_) => clock.step(seat, BootStep::Dhcp, unix_ms(at)),
            None => {}
        }
    }

    /// A seat in capture mode gets the capture environment with a token bound to
    /// the fetching address instead of a boot (no boot credentials are minted).
    fn offer_capture(
        &self,
        seat: &SeatBoot,
        peer: Option<IpAddr>,
    ) -> Option<Result<CaptureBoot, String>> {
        let peer = match peer {
            Some(p) => p.to_canonical().to_string(),
            None => {
                // Not in capture mode: boot normally; in capture mode: cannot bind.
                let active = self
                    .service
                    .capture(&seat.seat)
                    .ok()
                    .flatten()
                    .is_some_and(|c| c.status.is_active());
                return active.then(|| Err("the requester's address is unknown".to_string()));
            }
        };
        match self.service.capture_offer(&seat.seat, &peer) {
            Ok(Some((token, image))) => Some(Ok(CaptureBoot { token, image })),
            Ok(None) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }

    fn capture_file(&self, token: &str, peer: Option<IpAddr>, file: &str) -> Option<PathBuf> {
        let peer = peer?.to_canonical().to_string();
        if !khoi_admin::capture::CAPTURE_FILES.contains(&file)
            || !self.service.capture_may_fetch(token, &peer)
        {
            return None;
        }
        Some(self.service.capture_env_dir().join(file))
    }

    fn capture_report(
        &self,
        token: &str,
        peer: Option<IpAddr>,
        verb: &str,
        body: &str,
    ) -> (u16, String) {
        let Some(peer) = peer.map(|p| p.to_canonical().to_string()) else {
            return (404, "no such capture\n".into());
        };
        // The environment's HTTP client (busybox wget) shows no body on an error
        // status, and the seat's screen must say why: a report from the capture's
        // own address is answered 200 with the outcome on the first line (`ok`,
        // `refused`, `error`) and the officer's sentence after it.
        match capture_report(&self.service, self.portal, token, &peer, verb, body) {
            Ok(text) => (200, format!("ok\n{text}")),
            Err(ServiceError::NotFound(m)) => (404, format!("{m}\n")),
            Err(e) => {
                let (word, text) = match &e {
                    ServiceError::Conflict(m) if verb == "done" => ("refused", m.clone()),
                    ServiceError::Conflict(_)
                    | ServiceError::Gate(_)
                    | ServiceError::Invalid { .. } => ("error", e.to_string()),
                    _ => {
                        tracing::error!("capture report {verb} failed: {e}");
                        ("error", "the server failed; its log says more".to_string())
                    }
                };
                (200, format!("{word}\n{text}\n"))
            }
        }
    }

    fn unknown_mac(&self, mac: [u8; 6], arch: Option<u16>, from: Option<IpAddr>, at: SystemTime) {
        // The doctor's own probe: an officer's check is not an unregistered
        // machine. (Whoever else sends that MAC gets no answer either.)
        if mac == crate::doctor::PROBE_MAC {
            tracing::debug!(?from, "DHCP probe of khoi doctor seen");
            return;
        }
        if let Ok(Some(seat)) = self.service.state().seat_by_mac(Mac(mac))
            && let Some(refusal) = Refusal::check(&self.service, &self.network, &seat)
        {
            refusal.record(
                &self.recorder,
                false,
                &self.network,
                &match from {
                    Some(ip) => format!("boot request from {} at {ip}", mac_text(mac)),
                    None => format!("boot request from {}", mac_text(mac)),
                },
            );
            return;
        }
        let arch = match arch {
            Some(0) => "BIOS".to_string(),
            Some(6) => "UEFI IA32".to_string(),
            Some(7 | 9) => "UEFI x64".to_string(),
            Some(n) => format!("architecture {n}"),
            None => "unknown architecture".to_string(),
        };
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // A DHCP broadcast comes from a client with no address yet.
        let from = from.map_or_else(
            || "DHCP broadcast".to_string(),
            |p| p.to_canonical().to_string(),
        );
        self.recorder.record_args(
            "pxe.unknown_mac",
            mac_text(mac),
            format!("unregistered machine asked to boot ({arch}) from {from} at {secs}"),
            vec![("arch", arch), ("peer", from)],
        );
    }

    fn leases(&self) -> Vec<Lease> {
        self.leases
            .lock()
            .iter()
            .filter_map(|(mac, (ip, expires))| {
                Some(Lease {
                    mac: mac.parse::<Mac>().ok()?.0,
                    ip: ip.parse().ok()?,
                    expires_unix: *expires,
                })
            })
            .collect()
    }

    fn save_lease(&self, lease: &Lease) {
        let mut leases = self.leases.lock();
        leases.insert(
            mac_text(lease.mac),
            (lease.ip.to_string(), lease.expires_unix),
        );
        self.persist(&leases);
    }

    fn remove_lease(&self, mac: [u8; 6]) {
        let mut leases = self.leases.lock();
        if leases.remove(&mac_text(mac)).is_some() {
            self.persist(&leases);
        }
    }
}

/// The number `key` in a capture environment's `key=value&...` report.
fn report_number(body: &str, key: &str) -> Result<u64, ServiceError> {
    body.trim()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| ServiceError::Invalid {
            field: key.to_string(),
            reason: "expected a whole number of bytes".into(),
        })
}

/// One report of a capture environment (see `images/capture/`): `begin` with
/// `size=&need=` answers the draft target's login as `key=value` lines,
/// `progress` takes `done=&total=&rate=`, `done` publishes, `fail` takes
/// `reason=<text>`.
fn capture_report(
    service: &Service,
    portal: Option<SocketAddrV4>,
    token: &str,
    peer: &str,
    verb: &str,
    body: &str,
) -> Result<String, ServiceError> {
    match verb {
        "begin" => {
            let portal = portal.ok_or_else(|| {
                ServiceError::Conflict("the server has no IPv4 iSCSI portal to copy to".into())
            })?;
            let size = report_number(body, "size")?;
            let need = report_number(body, "need")?;
            let t = service.capture_begin(token, peer, size, need)?;
            Ok(format!(
                "target={}\nportal={}\nport={}\ninitiator={}\nuser={}\nsecret={}\n",
                t.target_iqn,
                portal.ip(),
                portal.port(),
                t.initiator_iqn,
                t.chap_user,
                t.chap_secret
            ))
        }
        "progress" => {
            let done = report_number(body, "done")?;
            let total = report_number(body, "total")?;
            let rate = report_number(body, "rate")?;
            service.capture_progress(token, peer, done, total, rate)?;
            Ok("ok\n".into())
        }
        "done" => service
            .capture_finish(token, peer)
            .map(|m| format!("{m}\n")),
        "fail" => {
            let reason = body.trim().strip_prefix("reason=").unwrap_or(body);
            service.capture_fail(token, peer, reason)?;
            Ok("recorded\n".into())
        }
        _ => Err(ServiceError::NotFound(format!(
            "unknown capture report {:?}",
            khoi_admin::service::cap(verb, 32)
        ))),
    }
}

/// Debian's `ipxe` package puts the boot binaries here.
const IPXE_DIR: &str = "/usr/lib/ipxe";

/// Fill the TFTP root with the iPXE binaries the config names, from the
/// distribution's `ipxe` package, when they are not there yet: the admin
/// should not have to copy files for the default setup to boot.
pub fn prepare_tftp_root(root: &Path, files: &[&str]) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create TFTP root {}", root.display()))?;
    for name in files {
        let dst = root.join(name);
        if dst.exists() {
            continue;
        }
        let src = Path::new(IPXE_DIR).join(name);
        if src.exists() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        } else {
            tracing::warn!(
                "{} is missing and {} has no copy (install Debian's ipxe package); \
                 seats needing it cannot boot",
                dst.display(),
                src.display()
            );
        }
    }
    Ok(())
}

/// How often finished boots are looked for.
const BOOT_TIMES_TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps the boots the clock finishes in the state database, off the DHCP
/// and login paths that report them. The addresses of the seats' running
/// boots are known at once, so a TFTP read is matched to its seat even when
/// DHCP gave no address (proxy mode, UEFI firmware).
pub async fn keep_boot_times(service: Arc<Service>, cancel: tokio_util::sync::CancellationToken) {
    if let Ok(boots) = service.state().boots() {
        for b in boots {
            let peer = b
                .current
                .as_ref()
                .and_then(|c| c.peer.parse::<IpAddr>().ok());
            if let Some(ip) = peer {
                service.activity().boots().seen_at(&b.seat, ip);
            }
        }
    }
    let mut every = tokio::time::interval(BOOT_TIMES_TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let done = service
            .activity()
            .boots()
            .tick(khoi_admin::boot_times::now_ms());
        if done.is_empty() {
            continue;
        }
        let svc = Arc::clone(&service);
        let kept = tokio::task::spawn_blocking(move || {
            for b in &done {
                if let Err(e) = svc.state().record_boot_timing(b) {
                    tracing::warn!(seat = b.seat, "cannot keep the boot's times: {e}");
                }
            }
        })
        .await;
        if let Err(e) = kept {
            tracing::error!("keeping boot times failed: {e}");
        }
    }
}

/// A TFTP read from `ip` at `at_ms`, for the boot clock. `neighbour` is what
/// the kernel's neighbour table says of `ip` (see [`khoi_pxe::neigh`]): the
/// seat with that MAC is the reader, and a machine that is no seat is
/// nobody's boot; it must not be taken for the one seat waiting for its TFTP
/// step. Without an entry (a reader beyond a router), the clock's own
/// guess by address applies.
pub fn tftp_read(
    service: &Service,
    ip: IpAddr,
    neighbour: &khoi_pxe::neigh::Neighbour,
    at_ms: i64,
) {
    let clock = service.activity().boots();
    let khoi_pxe::neigh::Neighbour::Macs(macs) = neighbour else {
        clock.tftp_from(ip, at_ms);
        return;
    };
    let seat = macs
        .iter()
        .find_map(|m| service.state().seat_by_mac(Mac(*m)).ok().flatten());
    if let Some(seat) = seat {
        clock.seen_at(&seat.name, ip);
        clock.step(&seat.name, BootStep::Tftp, at_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use khoi_admin::service::AddSeat;
    use khoi_admin::{Actor, ServiceConfig};
    use khoi_block::{Store, StoreOptions};
    use khoi_pxe::dhcp::Event;
    use khoi_state::State;
    use std::time::Duration;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn seats(dir: &Path) -> Seats {
        let store = Arc::new(Store::open(dir, StoreOptions::default()).expect("store"));
        let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
        let svc = Arc::new(Service::new(
            store,
            Arc::clone(&state),
            ServiceConfig {
                data_dir: dir.to_path_buf(),
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
                mac: Mac(MAC).to_string(),
                image: "win10".into(),
                version: None,
                policy: None,
                quota: None,
                initiator_iqn: None,
                mutual_chap: false,
            },
        )
        .expect("seat");
        let quay = BootNetwork {
            name: "quay".into(),
            profile: Profile::Counter,
            portal: Some("10.0.0.1:3260".into()),
        };
        svc.set_networks(vec![quay.clone()]);
        let portal = "10.0.0.1:3260".parse().ok();
        Seats::new(svc, Recorder::start(state), portal, quay)
    }

    /// A TFTP read is the seat's whose MAC the kernel resolved the reader
    /// to; a stranger's read is nobody's, even with one seat waiting (it
    /// used to be taken for that seat, skewing its boot times).
    #[test]
    fn tftp_reads_are_attributed_by_the_readers_mac() {
        use khoi_pxe::neigh::Neighbour;
        let dir = tempfile::tempdir().expect("tmp");
        let s = seats(dir.path());
        let clock = s.service.activity().boots();
        let tftp_at = || clock.in_progress("pc01").and_then(|b| b.at(BootStep::Tftp));
        let (seat_ip, stranger_ip): (IpAddr, IpAddr) = (
            "10.0.0.5".parse().expect("ip"),
            "10.0.0.66".parse().expect("ip"),
        );
        clock.step("pc01", BootStep::Dhcp, 0);
        // The one seat waiting, but the reader is another machine.
        let stranger = Neighbour::Macs(vec![[2, 0, 0, 0, 0, 0x66]]);
        tftp_read(&s.service, stranger_ip, &stranger, 100);
        assert_eq!(tftp_at(), None);
        assert_eq!(clock.seat_at(stranger_ip), None);
        // The seat's own MAC: its step, and its address learned.
        tftp_read(&s.service, seat_ip, &Neighbour::Macs(vec![MAC]), 200);
        assert_eq!(tftp_at(), Some(200));
        assert_eq!(clock.seat_at(seat_ip).as_deref(), Some("pc01"));
        // No neighbour entry (routed): the clock's guess by address.
        clock.step("pc01", BootStep::Dhcp, 1000);
        tftp_read(&s.service, seat_ip, &Neighbour::Unknown, 1100);
        assert_eq!(tftp_at(), Some(1100));
    }

    /// Each `khoi doctor` run used to leave an unknown-machine event: its
    /// DHCP probe reaches Khoi's own DHCP server too.
    #[test]
    fn the_doctors_dhcp_probe_is_not_an_unknown_machine() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = seats(dir.path());
        let stranger = [2, 0, 0, 0, 0, 0x99];
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        s.unknown_mac(crate::doctor::PROBE_MAC, Some(0), None, t0);
        s.unknown_mac(stranger, Some(0), None, t0);
        let state = s.service.state();
        let subjects = || -> Vec<String> {
            state
                .events(None, 100)
                .expect("events")
                .into_iter()
                .filter(|e| e.kind == "pxe.unknown_mac")
                .map(|e| e.subject)
                .collect()
        };
        // The recorder writes in order: once the stranger is in, the probe
        // would have been too.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while subjects().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(subjects(), vec![mac_text(stranger)]);
    }

    /// What the DHCP, TFTP and script-fetch hooks tell the boot clock:
    /// the OS's own DHCP only where the seat is, the firmware's its step.
    #[test]
    fn boot_steps_from_the_pxe_hooks() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = seats(dir.path());
        let clock = s.service.activity().boots();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ip = std::net::Ipv4Addr::new(10, 0, 0, 5);
        let ack = |file: &str| Event::Ack {
            seat: "pc01".into(),
            ip: Some(ip),
            file: Some(file.into()),
        };
        // Windows renewing its lease in authoritative mode: no boot.
        s.dhcp_answered(&ack("undionly.kpxe"), false, t0);
        assert_eq!(clock.in_progress("pc01"), None);
        assert_eq!(clock.seat_at(IpAddr::V4(ip)).as_deref(), Some("pc01"));
        // The firmware: the boot's first step.
        s.dhcp_answered(&ack("undionly.kpxe"), true, t0);
        let ms = |t: SystemTime| unix_ms(t);
        let at = |step| clock.in_progress("pc01").and_then(|b| b.at(step));
        assert_eq!(at(BootStep::Dhcp), Some(ms(t0)));
        // The chainloaded iPXE's DHCP (the script URL) changes nothing.
        let url = "http://10.0.0.1:8077/boot/02-00-00-00-00-01.ipxe";
        s.dhcp_answered(&ack(url), true, t0 + Duration::from_secs(3));
        assert_eq!(at(BootStep::Dhcp), Some(ms(t0)));
        // (TFTP reads reach the clock straight from the TFTP server.)
        clock.tftp_from(IpAddr::V4(ip), ms(t0 + Duration::from_secs(1)));
        assert_eq!(at(BootStep::Tftp), Some(ms(t0 + Duration::from_secs(1))));
        let boot = s.seat_by_mac(MAC).expect("registered");
        s.offer_boot(boot, Some(IpAddr::V4(ip))).expect("offer");
        assert!(at(BootStep::Script).is_some());
    }
}
