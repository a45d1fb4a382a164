//! Wake-on-LAN: the magic packet `etherwake` and BIOS "wake on PME" expect
//! (6 × 0xff, then the MAC 16 times), sent as a UDP broadcast to port 9 on
//! the boot interface only, so counters can be powered on before opening
//! (`power.wake_cron`), one at a time or all at once (`khoi seat wake`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use khoi_admin::Service;
use khoi_state::{Mac, NewEvent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// UDP "discard": what etherwake-style senders use; NICs ignore the port.
pub const WOL_PORT: u16 = 9;

pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut p = [0xffu8; 102];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    p
}

/// Broadcasts the magic packet for `mac` on `interface` alone: bound to the
/// device, so a second network (the office LAN) never sees it.
pub fn send_magic(interface: &str, mac: [u8; 6], port: u16) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    let to = SockAddr::from(SocketAddrV4::new(Ipv4Addr::BROADCAST, port));
    s.send_to(&magic_packet(mac), &to)?;
    Ok(())
}

/// One seat's wake-up, as the API and the CLI report it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Woken {
    pub seat: String,
    pub mac: String,
    pub interface: String,
}

#[derive(Debug)]
pub struct Waker {
    service: Arc<Service>,
    /// Each boot network's (name, interface), the first being the default
    /// of a seat that names none; empty without network boot.
    networks: Vec<(String, String)>,
    port: u16,
}

impl Waker {
    /// One boot network on `interface` (`None`: no network boot).
    #[cfg(test)]
    pub fn new(service: Arc<Service>, interface: Option<String>) -> Waker {
        let networks = interface.map(|i| (i.clone(), i)).into_iter().collect();
        Self::on_networks(service, networks)
    }

    /// Boot networks as (name, interface): a seat is woken on its own.
    pub fn on_networks(service: Arc<Service>, networks: Vec<(String, String)>) -> Waker {
        Waker {
            service,
            networks,
            port: WOL_PORT,
        }
    }

    /// The interface of the seat's network.
    fn interface_of(&self, seat: &khoi_state::Seat) -> anyhow::Result<&str> {
        if self.networks.is_empty() {
            anyhow::bail!(
                "Wake-on-LAN needs the boot network: set pxe.interface in the config (no pxe section, so Khoi does not know which network the seats are on)"
            );
        }
        let found = match seat.network.as_deref() {
            Some(n) => self.networks.iter().find(|(name, _)| name == n),
            None => self.networks.first(),
        };
        found.map(|(_, i)| i.as_str()).ok_or_else(|| {
            anyhow::anyhow!(
                "seat {} is on boot network {:?}, which the config (pxe) does not have",
                seat.name,
                seat.network.as_deref().unwrap_or_default()
            )
        })
    }

    fn interface(&self) -> anyhow::Result<()> {
        if self.networks.is_empty() {
            anyhow::bail!(
                "Wake-on-LAN needs the boot network: set pxe.interface in the config (no pxe section, so Khoi does not know which network the seats are on)"
            );
        }
        Ok(())
    }

    /// Wakes one seat and records who asked.
    pub fn wake(&self, name: &str, actor: &str) -> anyhow::Result<Woken> {
        self.interface()?;
        let seat = self
            .service
            .state()
            .seat(name)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.send(&seat, self.interface_of(&seat)?, actor)
    }

    /// Wakes every seat, each on its network; stops at the first failure
    /// to send (the next on that interface would fail the same way).
    pub fn wake_all(&self, actor: &str) -> anyhow::Result<Vec<Woken>> {
        self.interface()?;
        let seats = self
            .service
            .state()
            .seats()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        seats
            .iter()
            .map(|s| self.send(s, self.interface_of(s)?, actor))
            .collect()
    }

    fn send(&self, seat: &khoi_state::Seat, interface: &str, actor: &str) -> anyhow::Result<Woken> {
        let mac: Mac = seat.mac.parse().map_err(anyhow::Error::msg)?;
        send_magic(interface, mac.0, self.port).map_err(|e| {
            anyhow::anyhow!(
                "cannot send the wake-up packet on {interface}: {e} (the interface must exist and Khoi needs CAP_NET_RAW)"
            )
        })?;
        let detail = format!("magic packet to {} on {interface}", seat.mac);
        if let Err(e) = self.service.state().record(&NewEvent {
            kind: "seat.wake",
            actor,
            source: "-",
            subject: &seat.name,
            detail: &detail,
            args: &[("mac", &seat.mac), ("interface", interface)],
        }) {
            tracing::warn!("cannot record the wake-up of {}: {e}", seat.name);
        }
        Ok(Woken {
            seat: seat.name.clone(),
            mac: seat.mac.clone(),
            interface: interface.to_string(),
        })
    }
}

/// Control-socket routes: `POST /v1/seats/{name}/wake`, `POST /v1/wake-all`.
pub fn router(waker: Arc<Waker>) -> Router {
    Router::new()
        .route("/v1/seats/{name}/wake", post(wake_one))
        .route("/v1/wake-all", post(wake_all))
        .with_state(waker)
}

/// The caller as the kernel names it (`SO_PEERCRED`), like every other
/// control-socket change in the audit log.
fn actor(req: &Request) -> String {
    let user = req
        .extensions()
        .get::<axum::extract::ConnectInfo<khoi_web::api::PeerCred>>()
        .and_then(|c| c.0.uid)
        .map_or_else(|| "unknown".to_string(), khoi_web::api::user_name);
    format!("local:{user}")
}

/// Reads the (empty) body: closing with it unread resets the connection
/// before the client reads the answer.
async fn drain(req: Request) {
    let _ = axum::body::to_bytes(req.into_body(), 64 * 1024).await;
}

fn reply<T: Serialize>(r: anyhow::Result<T>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({ "error": format!("{e:#}") })),
        )
            .into_response(),
    }
}

async fn wake_one(State(w): State<Arc<Waker>>, Path(name): Path<String>, req: Request) -> Response {
    let actor = actor(&req);
    drain(req).await;
    let r = tokio::task::spawn_blocking(move || w.wake(&name, &actor)).await;
    reply(r.map_err(anyhow::Error::from).and_then(|r| r))
}

async fn wake_all(State(w): State<Arc<Waker>>, req: Request) -> Response {
    let actor = actor(&req);
    drain(req).await;
    let r = tokio::task::spawn_blocking(move || w.wake_all(&actor)).await;
    reply(r.map_err(anyhow::Error::from).and_then(|r| r))
}

/// Wakes every seat at each time of `cron` (Vietnam time) until shutdown.
/// Polls instead of sleeping until the time, so a clock set right by NTP
/// after boot does not make it miss or repeat a morning.
pub async fn run_schedule(waker: Arc<Waker>, cron: croner::Cron, shutdown: CancellationToken) {
    let next_time = || {
        let now = chrono::Utc::now().with_timezone(&khoi_admin::schedule::vietnam());
        cron.find_next_occurrence(&now, false)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let mut next = next_time();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(20)) => {}
        }
        if next.is_none_or(|t| chrono::Utc::now() < t) {
            continue;
        }
        next = next_time();
        let w = Arc::clone(&waker);
        match tokio::task::spawn_blocking(move || w.wake_all("schedule")).await {
            Ok(Ok(woken)) => tracing::info!("scheduled wake-up: {} seats", woken.len()),
            Ok(Err(e)) => tracing::error!("scheduled wake-up failed: {e:#}"),
            Err(e) => tracing::error!("scheduled wake-up failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_packet_is_six_ff_then_the_mac_sixteen_times() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xff; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + i * 6..12 + i * 6], &mac, "repeat {i}");
        }
    }

    use crate::testlan::{Lan, enter};

    #[test]
    fn wake_sends_the_magic_packet_on_the_boot_lan_and_records_it() {
        let Some(lan) = Lan::new("wol", 9, "seats0", 2) else {
            return;
        };
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(
            khoi_block::Store::open(dir.path(), khoi_block::StoreOptions::default())
                .expect("store"),
        );
        let state = Arc::new(khoi_state::State::open(&dir.path().join("khoi.db")).expect("state"));
        let service = Arc::new(Service::new(
            store,
            Arc::clone(&state),
            khoi_admin::ServiceConfig {
                data_dir: dir.path().to_path_buf(),
                default_seat_quota: 0,
                target_prefix: "iqn.2025-07.vn.khoi".into(),
                iscsi_portal: None,
                nbd_address: None,
                import_roots: vec![],
            },
        ));
        let mac: Mac = "52:54:00:aa:bb:01".parse().expect("mac");
        for (name, mac) in [
            ("quay-01", mac),
            ("quay-02", "52:54:00:aa:bb:02".parse().expect("mac")),
        ] {
            state
                .add_seat(&khoi_state::NewSeat {
                    name: name.into(),
                    mac,
                    image: "win10".into(),
                    pinned_version: None,
                    policy: khoi_state::ResetPolicy::OnBoot,
                    quota: 0,
                    initiator_iqn: None,
                    mutual_chap: false,
                })
                .expect("seat");
        }

        // Without a boot network there is nowhere to send: a clear refusal.
        let e = Waker::new(Arc::clone(&service), None)
            .wake("quay-01", "test")
            .expect_err("no pxe");
        assert!(e.to_string().contains("pxe.interface"), "{e}");

        let listener_ns = lan.b.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listener = std::thread::spawn(move || {
            enter(&listener_ns);
            let sock = std::net::UdpSocket::bind(("0.0.0.0", WOL_PORT)).expect("bind :9");
            sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut got = Vec::new();
            let mut buf = [0u8; 1500];
            while got.len() < 2 {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) => got.push(buf[..n].to_vec()),
                    Err(_) => break,
                }
            }
            got
        });
        ready_rx.recv().expect("listener up");

        let sender_ns = lan.a.clone();
        let waker = Arc::new(Waker::new(Arc::clone(&service), Some("boot0".into())));
        let w = Arc::clone(&waker);
        let sent = std::thread::spawn(move || {
            enter(&sender_ns);
            let one = w.wake("quay-01", "local:test");
            let missing = w.wake("no-such-seat", "local:test").map(|_| ());
            let wrong = Waker::new(Arc::clone(&w.service), Some("eth-missing".into()))
                .wake("quay-01", "local:test")
                .map(|_| ());
            let all = w.wake_all("schedule");
            (one, missing, wrong, all)
        })
        .join()
        .expect("sender");
        let (one, missing, wrong, all) = sent;
        let one = one.expect("wake quay-01");
        assert_eq!(
            (one.seat.as_str(), one.interface.as_str()),
            ("quay-01", "boot0")
        );
        assert!(missing.is_err());
        let wrong = wrong.expect_err("no such interface");
        assert!(wrong.to_string().contains("eth-missing"), "{wrong}");
        assert_eq!(all.expect("wake all").len(), 2);

        let got = listener.join().expect("listener");
        assert!(
            !got.is_empty(),
            "no packet reached the other end of the boot LAN"
        );
        assert_eq!(got[0].len(), 102);
        assert_eq!(got[0], magic_packet(mac.0).to_vec());
        // The audit log names who woke which seat, and the scheduled run.
        let events = state
            .events_filtered(&khoi_state::EventFilter {
                kind: Some("seat.wake".into()),
                limit: 10,
                ..Default::default()
            })
            .expect("events");
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(
            events
                .iter()
                .any(|e| e.actor == "local:test" && e.subject == "quay-01")
        );
        assert_eq!(events.iter().filter(|e| e.actor == "schedule").count(), 2);
        drop(lan);
    }

    fn service(dir: &std::path::Path) -> Arc<Service> {
        let store = Arc::new(
            khoi_block::Store::open(dir, khoi_block::StoreOptions::default()).expect("store"),
        );
        let state = Arc::new(khoi_state::State::open(&dir.join("khoi.db")).expect("state"));
        Arc::new(Service::new(
            store,
            state,
            khoi_admin::ServiceConfig {
                data_dir: dir.to_path_buf(),
                default_seat_quota: 0,
                target_prefix: "iqn.2025-07.vn.khoi".into(),
                iscsi_portal: None,
                nbd_address: None,
                import_roots: vec![],
            },
        ))
    }

    /// The CLI's path: its client over a unix socket to these routes, and
    /// the refusal without a boot network reaching the admin as written.
    #[test]
    fn cli_client_reaches_the_wake_routes() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let sock = dir.path().join("ctl.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let listener = rt
            .block_on(async { tokio::net::UnixListener::bind(&sock) })
            .expect("bind");
        let app = router(Arc::new(Waker::new(svc, None)));
        let (done, stop) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            rt.block_on(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.await;
                    })
                    .await;
            });
        });
        let client = crate::client::Client::new(&sock);
        for _ in 0..30 {
            let e = client
                .post::<_, Vec<Woken>>("/v1/wake-all", &())
                .expect_err("no boot network");
            assert!(e.to_string().contains("pxe.interface"), "{e:#}");
            let e = client
                .post::<_, Woken>("/v1/seats/quay-01/wake", &())
                .expect_err("no boot network");
            assert!(e.to_string().contains("pxe.interface"), "{e:#}");
        }
        let _ = done.send(());
        server.join().expect("server");
    }
}
