//! Boot networks as the domain sees them: each seat is on one, and an image
//! is served only on a network of its profile's kind, so a kiosk image (for
//! citizens) never reaches the counter LAN and a counter image (TTHC records)
//! never the public network. The binary reads the networks from its config
//! and enforces the same rule again at boot and login.

use khoi_inspect::Profile;

use crate::service::{Result, Service, ServiceError};

/// A boot network: its name (what a seat names) and the profile of the
/// images it may serve (`counter`, or `kiosk` for the public network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNetwork {
    pub name: String,
    pub profile: Profile,
    /// The iSCSI portal seats on this network log in to (`address:port`).
    pub portal: Option<String>,
}

/// What the network is called by kind, in refusals.
pub fn kind_name(p: Profile) -> &'static str {
    match p {
        Profile::Counter => "counter",
        Profile::Kiosk => "public (kiosk)",
    }
}

fn profile_name(p: Profile) -> &'static str {
    match p {
        Profile::Counter => "counter",
        Profile::Kiosk => "kiosk",
    }
}

impl Service {
    /// The boot networks from the config, in its order (the first is the
    /// default of a seat that names none); set once at start.
    pub fn set_networks(&self, networks: Vec<BootNetwork>) {
        *self.networks.write() = networks;
    }

    pub fn networks(&self) -> Vec<BootNetwork> {
        self.networks.read().clone()
    }

    /// The network a seat naming `network` is on: that one, or the first;
    /// `None` when it names one the config does not have (or there are none).
    pub fn network_of(&self, network: Option<&str>) -> Option<BootNetwork> {
        let nets = self.networks.read();
        match network {
            Some(n) => nets.iter().find(|b| b.name == n).cloned(),
            None => nets.first().cloned(),
        }
    }

    /// Whether a seat on `network` may have `image`: the network exists, and
    /// the image's gate profile is the network's kind.
    pub fn check_seat_network(&self, image: &str, network: Option<&str>) -> Result<()> {
        let nets = self.networks.read().clone();
        if nets.is_empty() {
            return match network {
                Some(n) => Err(ServiceError::Invalid {
                    field: "network".into(),
                    reason: format!(
                        "there is no boot network {n:?}: the config has no pxe section"
                    ),
                }),
                None => Ok(()),
            };
        }
        let Some(net) = self.network_of(network) else {
            let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
            return Err(ServiceError::Invalid {
                field: "network".into(),
                reason: format!(
                    "there is no boot network {:?} (the config has: {})",
                    network.unwrap_or_default(),
                    names.join(", ")
                ),
            });
        };
        let profile = self.gate_settings(image)?.profile;
        if profile != net.profile {
            return Err(ServiceError::Conflict(format!(
                "image {image:?} has the {} profile and network {:?} is a {} network: \
                 {} images are never served there; choose a {} image or put the seat on a {} \
                 network",
                profile_name(profile),
                net.name,
                kind_name(net.profile),
                profile_name(profile),
                profile_name(net.profile),
                kind_name(profile),
            )));
        }
        Ok(())
    }

    /// Whether `image` may take `profile`: no seat using it sits on a
    /// network of the other kind.
    pub fn check_profile_on_networks(&self, image: &str, profile: Profile) -> Result<()> {
        if self.networks.read().is_empty() {
            return Ok(());
        }
        for seat in self.state().seats_on_image(image)? {
            let Some(net) = self.network_of(seat.network.as_deref()) else {
                continue;
            };
            if net.profile != profile {
                return Err(ServiceError::Conflict(format!(
                    "seat {:?} uses image {image:?} on the {} network {:?}: a {} image is \
                     never served there; move the seat or give it another image first",
                    seat.name,
                    kind_name(net.profile),
                    net.name,
                    profile_name(profile),
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use khoi_block::{Store, StoreOptions};
    use khoi_state::{SeatUpdate, State};

    use super::*;
    use crate::Actor;
    use crate::gate::GateSettings;
    use crate::service::{AddSeat, ServiceConfig};

    fn service(dir: &Path) -> Arc<Service> {
        let store = Arc::new(Store::open(dir, StoreOptions::default()).expect("store"));
        let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
        let svc = Arc::new(Service::new(
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
        ));
        svc.set_gate_enforced(false);
        svc.add_user(&Actor::server(), "an", "admin", "admin-pass-1")
            .expect("admin");
        let staging = svc.staging_dir();
        std::fs::create_dir_all(&staging).expect("staging");
        for image in ["quay", "kiosk"] {
            std::fs::write(staging.join("base.raw"), vec![0u8; 1 << 20]).expect("image");
            svc.import(&Actor::server(), image, "base.raw", "base")
                .expect("import");
        }
        svc
    }

    fn admin() -> Actor {
        Actor {
            name: "an".into(),
            source: "127.0.0.1".into(),
        }
    }

    fn seat(name: &str, mac: &str, image: &str) -> AddSeat {
        AddSeat {
            name: name.into(),
            mac: mac.into(),
            image: image.into(),
            version: None,
            policy: None,
            quota: None,
            initiator_iqn: None,
            mutual_chap: false,
        }
    }

    fn two_networks(svc: &Service) {
        svc.set_networks(vec![
            BootNetwork {
                name: "quay".into(),
                profile: Profile::Counter,
                portal: None,
            },
            BootNetwork {
                name: "public".into(),
                profile: Profile::Kiosk,
                portal: None,
            },
        ]);
    }

    fn make_kiosk(svc: &Arc<Service>) {
        svc.set_gate_settings(
            &admin(),
            "kiosk",
            &GateSettings {
                profile: Profile::Kiosk,
                ..GateSettings::default()
            },
        )
        .expect("kiosk profile");
    }

    #[test]
    fn assignment_refuses_an_image_of_the_other_kind() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        two_networks(&svc);
        make_kiosk(&svc);
        let a = Actor::server();

        // The first network is the default, and it is the counter LAN.
        let pc = svc
            .add_seat(&a, &seat("pc01", "02:00:00:00:00:01", "quay"))
            .expect("counter seat on the counter LAN");
        assert_eq!(pc.network, None);
        let e = svc
            .add_seat(&a, &seat("k01", "02:00:00:00:00:02", "kiosk"))
            .expect_err("kiosk image on the counter LAN");
        assert!(
            matches!(e, ServiceError::Conflict(ref m) if m.contains("kiosk") && m.contains("quay")),
            "{e}"
        );
        let k = svc
            .add_seat_on(
                &a,
                &seat("k01", "02:00:00:00:00:02", "kiosk"),
                Some("public"),
            )
            .expect("kiosk seat on the public network");
        assert_eq!(k.network.as_deref(), Some("public"));
        let e = svc
            .add_seat_on(
                &a,
                &seat("k02", "02:00:00:00:00:03", "kiosk"),
                Some("lobby"),
            )
            .expect_err("no such network");
        assert!(
            matches!(e, ServiceError::Invalid { ref field, .. } if field == "network"),
            "{e}"
        );
        assert!(svc.state().seat("k02").is_err(), "nothing was added");

        let to = |network: Option<&str>, image: Option<&str>| SeatUpdate {
            network: network.map(Into::into),
            image: image.map(Into::into),
            ..SeatUpdate::default()
        };
        let e = svc
            .update_seat(&a, "pc01", &to(Some("public"), None))
            .expect_err("counter image onto the public network");
        assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
        let e = svc
            .update_seat(&a, "pc01", &to(None, Some("kiosk")))
            .expect_err("kiosk image on the counter LAN");
        assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
        assert_eq!(svc.state().seat("pc01").expect("seat").image, "quay");
        let moved = svc
            .update_seat(&a, "pc01", &to(Some("public"), Some("kiosk")))
            .expect("both at once");
        assert_eq!(moved.network.as_deref(), Some("public"));
        let audit = svc.state().events(Some("pc01"), 10).expect("events");
        assert!(
            audit
                .iter()
                .any(|e| e.kind == "seat.update" && e.detail.contains("network (first) -> public")),
            "{audit:?}"
        );

        // Turning the kiosk image into a counter one would serve it on the
        // public network its seats are on.
        let e = svc
            .set_gate_settings(&admin(), "kiosk", &GateSettings::default())
            .expect_err("profile change under seats of the other kind");
        assert!(
            matches!(e, ServiceError::Conflict(ref m) if m.contains("public")),
            "{e}"
        );
        assert_eq!(
            svc.gate_settings("kiosk").expect("settings").profile,
            Profile::Kiosk
        );
    }

    /// `seat show` (and the API) give each seat its own network's portal:
    /// the one it can log in at.
    #[test]
    fn a_seat_is_shown_its_own_networks_portal() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        svc.set_networks(vec![
            BootNetwork {
                name: "quay".into(),
                profile: Profile::Counter,
                portal: Some("10.10.0.1:3260".into()),
            },
            BootNetwork {
                name: "public".into(),
                profile: Profile::Kiosk,
                portal: Some("10.20.0.1:3260".into()),
            },
        ]);
        make_kiosk(&svc);
        let a = Actor::server();
        svc.add_seat(&a, &seat("pc01", "02:00:00:00:00:01", "quay"))
            .expect("counter seat");
        svc.add_seat_on(
            &a,
            &seat("k01", "02:00:00:00:00:02", "kiosk"),
            Some("public"),
        )
        .expect("kiosk seat");
        let portal = |s: &str| svc.seat(s).expect("seat").portal;
        assert_eq!(portal("pc01").as_deref(), Some("10.10.0.1:3260"));
        assert_eq!(portal("k01").as_deref(), Some("10.20.0.1:3260"));
    }

    #[test]
    fn without_networks_no_seat_names_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let a = Actor::server();
        let e = svc
            .add_seat_on(&a, &seat("pc01", "02:00:00:00:00:01", "quay"), Some("quay"))
            .expect_err("no networks configured");
        assert!(
            matches!(e, ServiceError::Invalid { ref field, .. } if field == "network"),
            "{e}"
        );
        // Without boot networks a kiosk image may be given to any seat (NBD,
        // tools): the rule is about networks.
        make_kiosk(&svc);
        svc.add_seat(&a, &seat("k01", "02:00:00:00:00:02", "kiosk"))
            .expect("no networks, no rule");
    }
}
