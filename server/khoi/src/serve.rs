//! `khoi serve`: open the state and the block store, start the protocol
//! servers and the control socket, and stop them cleanly on SIGINT/SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use khoi_admin::{Metrics, Service, ServiceConfig};
use khoi_block::{BlockEvent, Durability, OverlayOwner, Store, StoreOptions};
use khoi_state::{NewEvent, ResetPolicy, State};
use khoi_web::api::{ApiState, socket_router};

use crate::recorder::Recorder;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::prewarm::Prewarm;
use crate::{boot, exports};

/// How long shutdown waits for requests on the control socket.
const CONTROL_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub fn control_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("khoi.sock")
}

/// Volatile overlays only for seats whose overlay is thrown away at the
/// next boot, and only when the configuration asks for it.
fn seat_durability(
    config: &Config,
    state: &Arc<State>,
) -> Arc<dyn Fn(&str) -> Durability + Send + Sync> {
    if config.storage.on_boot_durability != crate::config::DurabilityMode::Volatile {
        return Arc::new(|_| Durability::Durable);
    }
    let state = Arc::clone(state);
    Arc::new(move |seat| match state.seat(seat) {
        Ok(s) if s.policy == ResetPolicy::OnBoot => Durability::Volatile,
        _ => Durability::Durable,
    })
}

fn record_block_event(recorder: &Recorder, ev: BlockEvent) {
    let owner = |o: &OverlayOwner| match o {
        OverlayOwner::Seat(s) => s.clone(),
        OverlayOwner::Draft(i) => format!("draft/{i}"),
    };
    match ev {
        BlockEvent::QuotaExceeded { owner: o, quota } => recorder.record_args(
            "overlay.quota",
            owner(&o),
            format!("overlay reached its quota of {quota} bytes; new writes fail until reset"),
            vec![("quota", quota.to_string())],
        ),
        BlockEvent::FreeSpaceLow {
            free,
            floor,
            owner: o,
        } => recorder.record_args(
            "storage.low",
            owner(&o),
            format!(
                "data filesystem has {free} bytes free, below the floor of {floor}; new writes fail"
            ),
            vec![("free", free.to_string()), ("floor", floor.to_string())],
        ),
        BlockEvent::OverlayDiscarded { owner: o, reason } => {
            recorder.record("overlay.discarded", owner(&o), reason);
        }
        BlockEvent::OrphanRemoved { path } => recorder.record(
            "storage.orphan",
            path.display().to_string(),
            "removed a file no version or overlay uses",
        ),
    }
}

/// Where seats and the page are served, for the compliance report.
fn report_network(config: &Config) -> khoi_admin::report::ReportNetwork {
    let server = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    khoi_admin::report::ReportNetwork {
        server,
        boot_interfaces: config
            .pxe
            .iter()
            .flat_map(|nets| nets.iter())
            .map(|p| format!("{} ({})", p.interface, p.server_ip))
            .collect(),
        iscsi_portal: config.listen.iscsi.map(|a| a.to_string()),
        admin_address: config.admin.listen.map(|a| a.to_string()),
    }
}

/// How a local admin reaches a seat over NBD, for `khoi seat show`: the
/// unix socket's absolute path when it is on, else the TCP base URI.
fn nbd_address(config: &Config) -> Option<String> {
    if let Some(p) = config.nbd_socket_path() {
        let abs = std::path::absolute(&p).unwrap_or(p);
        return Some(abs.display().to_string());
    }
    let scheme = if config.nbd_tls.is_some() {
        "nbds"
    } else {
        "nbd"
    };
    config.listen.nbd.map(|a| format!("{scheme}://{a}"))
}

/// Starts NBD on the owner-only unix socket and, if configured, on TCP
/// (with TLS required when a key file is set). Returns the socket path to
/// remove at shutdown.
async fn start_nbd(
    config: &Config,
    service: &Arc<Service>,
    prewarm: &Arc<Prewarm>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    if config.nbd_socket_path().is_none() && config.listen.nbd.is_none() {
        return Ok(None);
    }
    let resolver: Arc<dyn khoi_nbd::ExportResolver> = Arc::new(exports::NbdExports::new(
        Arc::clone(service),
        Arc::clone(prewarm),
    ));
    // One set of counters for both listeners: `/metrics` shows NBD as one.
    let stats = Arc::new(khoi_nbd::NbdStats::default());
    register_nbd_metrics(service.metrics(), Arc::clone(&stats));
    let socket = config.nbd_socket_path();
    if let Some(path) = &socket {
        // The store's lock on the data folder is held, so no other server
        // of this folder runs; a socket left by a crash is replaced, and one
        // something still answers on (a path outside the folder) is not.
        let listener = khoi_serve::bind_owner_only(path)
            .with_context(|| format!("cannot create the NBD socket {}", path.display()))?;
        tracing::info!("NBD exports on unix socket {} (owner only)", path.display());
        let (resolver, stats, token) = (resolver.clone(), stats.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = khoi_nbd::serve_unix(listener, resolver, stats, token).await {
                tracing::error!("NBD server stopped: {e}");
            }
        });
    }
    if let Some(addr) = config.listen.nbd {
        let tls = match &config.nbd_tls {
            Some(t) => Some(Arc::new(
                khoi_nbd::Tls::from_psk_file(&t.psk_file)
                    .with_context(|| format!("NBD TLS key file {}", t.psk_file.display()))?,
            )),
            // Config::load refuses this already; a config built any other
            // way must not open the disks to the network either.
            None if !addr.ip().is_loopback() => {
                anyhow::bail!("NBD on {addr} needs nbd_tls: refusing to serve disks without TLS")
            }
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for NBD on {addr}"))?;
        set_congestion(&listener, &config.listen.tcp_congestion);
        if tls.is_some() {
            tracing::info!(
                "NBD exports on {} (TLS with PSK required)",
                listener.local_addr()?
            );
        } else {
            tracing::warn!(
                "NBD exports on {} without TLS: every local user can read and write every seat",
                listener.local_addr()?
            );
        }
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = khoi_nbd::serve_tcp(listener, resolver, stats, tls, token).await {
                tracing::error!("NBD server stopped: {e}");
            }
        });
    }
    Ok(socket)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create data folder {}", dir.display()))?;
    restrict_data_folder(&dir)?;

    let state = Arc::new(State::open(&dir.join("khoi.db")).context("opening the state database")?);
    let pruned = state
        .set_event_limits(config.admin.events.limits())
        .context("pruning the event log")?;
    if pruned > 0 {
        tracing::info!(pruned, "old events removed from the log");
    }
    let recorder = Recorder::start(Arc::clone(&state));
    let block_recorder = recorder.clone();
    // The state database lives on the same filesystem as the overlays but
    // is not gated by the floor: seats stop allocating while `floor` bytes
    // are still free, and those bytes are what SQLite (audit and boot
    // events, schedule runs) keeps writing into when every seat is full.
    // The floor counts free space as statvfs's f_bavail, so a server run as
    // root also has the filesystem's root-reserved blocks below it. With
    // the floor at 0 there is no such reserve, hence the warning.
    if config.storage.free_space_floor.0 == 0 {
        tracing::warn!(
            "storage.free_space_floor is 0: seats may fill the data filesystem, and then \
             the state database cannot record events"
        );
    }
    let store = Arc::new(
        Store::open(
            &dir,
            StoreOptions {
                free_space_floor: config.storage.free_space_floor.0,
                events: Arc::new(move |ev| record_block_event(&block_recorder, ev)),
                seat_durability: seat_durability(&config, &state),
            },
        )
        .context("opening the image store")?,
    );
    let service = Arc::new(Service::new(
        store,
        Arc::clone(&state),
        ServiceConfig {
            data_dir: dir.clone(),
            default_seat_quota: config.storage.default_seat_quota.0,
            target_prefix: config.iscsi.target_prefix.clone(),
            iscsi_portal: config.listen.iscsi.map(|a| a.to_string()),
            nbd_address: nbd_address(&config),
            import_roots: config.admin.import_roots.clone(),
        },
    ));
    service.set_import_limits(config.import_limits());
    service.set_doctor(crate::doctor::runner(config.clone()));
    service.set_report_network(report_network(&config));

    seed_last_boots(&service);
    let unclean = service.fence_after_unclean_stop();
    if !unclean.is_empty() {
        tracing::warn!(seats = ?unclean, "seats whose unsynced overlays may have lost writes wait for a reboot");
    }

    let prewarm = Arc::new(
        Prewarm::new(
            Arc::clone(service.store()),
            dir.clone(),
            std::time::Duration::from_secs(config.prewarm.learn_minutes * 60),
        )
        .context("creating the boot working set folder")?,
    );

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let nbd_socket = start_nbd(&config, &service, &prewarm, &shutdown, &mut tasks).await?;

    service.set_networks(boot_networks(&config));
    warn_seats_off_networks(&service);

    // A standby answers no seat (no PXE, no iSCSI login) until it is
    // promoted; then, or after a restart as promoted, it serves as usual.
    let standing_by = config
        .sync
        .as_ref()
        .is_some_and(|s| s.role == khoi_sync::config::Role::Standby)
        && !crate::standby::is_promoted(&service);
    if !standing_by {
        start_seat_services(
            &config, &service, &recorder, &state, &prewarm, &shutdown, &mut tasks,
        )
        .await?;
    }

    tasks.spawn(boot::keep_boot_times(
        Arc::clone(&service),
        shutdown.clone(),
    ));

    {
        let cron = config
            .prewarm
            .cron
            .as_deref()
            .and_then(|c| khoi_admin::schedule::parse_cron(c).ok());
        let (p, token) = (Arc::clone(&prewarm), shutdown.clone());
        tasks.spawn(crate::prewarm::run(p, cron, token));
    }

    let sock = control_socket(&dir);
    // The lock above proves no other server owns this socket file.
    let _ = std::fs::remove_file(&sock);
    let control = UnixListener::bind(&sock)
        .with_context(|| format!("cannot create control socket {}", sock.display()))?;
    // Whoever can open the socket administers Khoi: keep it to the owner.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!("control socket at {}", sock.display());
    let setup_link = khoi_web::SetupLink::default();
    let mut socket_api = ApiState::new(Arc::clone(&service), "control-socket");
    socket_api.setup_link = Some(setup_link.clone());
    let waker = Arc::new(crate::wake::Waker::on_networks(
        Arc::clone(&service),
        config
            .pxe
            .iter()
            .flat_map(|n| n.iter())
            .map(|n| (n.network_name().to_string(), n.interface.clone()))
            .collect(),
    ));
    if let Some(cron) = config.power.wake_cron.as_deref() {
        // Config::load checked it; a config built otherwise is told here.
        let cron = khoi_admin::schedule::parse_cron(cron)
            .map_err(|e| anyhow::anyhow!("power.wake_cron: {e}"))?;
        let (w, token) = (Arc::clone(&waker), shutdown.clone());
        tasks.spawn(crate::wake::run_schedule(w, cron, token));
    }
    let sync = match config.sync.clone() {
        Some(cfg) => {
            let s = crate::sync::Sync::new(cfg, &service, recorder.clone(), &dir)
                .context("starting province sync")?;
            tasks.spawn(crate::sync::run(Arc::clone(&s), shutdown.clone()));
            tasks.spawn(crate::sync::run_snapshots(Arc::clone(&s), shutdown.clone()));
            if standing_by {
                tasks.spawn(serve_when_promoted(
                    config.clone(),
                    Arc::clone(&service),
                    recorder.clone(),
                    Arc::clone(&state),
                    Arc::clone(&prewarm),
                    s.promoted.clone(),
                    shutdown.clone(),
                ));
            }
            Some(s)
        }
        None => None,
    };
    let app = socket_router(socket_api)
        .merge(crate::wake::router(waker))
        .merge(crate::sync::router(sync.clone()));
    let token = shutdown.clone();
    tasks.spawn(async move {
        // The audit log names the caller by the socket's peer uid.
        let app = app.into_make_service_with_connect_info::<khoi_web::api::PeerCred>();
        let deadline = token.clone();
        let served = axum::serve(control, app)
            .with_graceful_shutdown(async move { token.cancelled().await });
        // Graceful shutdown waits for every open request; a client that
        // never finishes its request must not hold SIGTERM hostage.
        tokio::select! {
            r = served => if let Err(e) = r {
                tracing::error!("control socket failed: {e}");
            },
            () = async {
                deadline.cancelled().await;
                tokio::time::sleep(CONTROL_SHUTDOWN_GRACE).await;
            } => tracing::info!("shutdown: leaving control-socket requests that did not finish"),
        }
    });

    khoi_web::start(
        Arc::clone(&service),
        khoi_web::AdminOptions {
            setup_link,
            province: sync
                .clone()
                .map(|s| s as Arc<dyn khoi_web::pages::province::ProvinceSource>),
            ..config.admin.web_options(&dir)
        },
        shutdown.clone(),
        &mut tasks,
    )
    .await
    .map_err(anyhow::Error::msg)
    .context("starting the admin page and the nightly reset")?;

    let data = dir.display().to_string();
    state.record(&NewEvent {
        kind: "server.start",
        actor: "khoi",
        source: "-",
        subject: "khoi",
        detail: &format!("data {data}"),
        args: &[("data", &data)],
    })?;
    println!(
        "khoi: serving; data in {}, control socket {}",
        dir.display(),
        sock.display()
    );
    let signalled = wait_for_signal();
    crate::sdnotify::notify("READY=1");

    signalled.await;
    tracing::info!("shutting down");
    crate::sdnotify::notify("STOPPING=1");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&sock);
    if let Some(p) = nbd_socket {
        let _ = std::fs::remove_file(p);
    }
    state.record(&NewEvent {
        kind: "server.stop",
        actor: "khoi",
        source: "-",
        subject: "khoi",
        detail: "",
        args: &[],
    })?;
    Ok(())
}

/// What seats talk to: the iSCSI portals and the boot networks (DHCP, TFTP,
/// boot scripts).
async fn start_seat_services(
    config: &Config,
    service: &Arc<Service>,
    recorder: &Recorder,
    state: &State,
    prewarm: &Arc<Prewarm>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    if config.listen.iscsi.is_some() {
        let targets = Arc::new(exports::IscsiTargets::new(
            Arc::clone(service),
            recorder.clone(),
            state.server_id()?,
            Arc::clone(prewarm),
        ));
        // A fence ends the seat's live sessions at once (their in-flight work
        // drains in the background); its logins are refused from then on.
        // One registry for every portal: a seat's sessions are one set
        // whichever listener they came through.
        let registry = Arc::new(khoi_iscsi::registry::Registry::new());
        let (r, prefix) = (Arc::clone(&registry), config.iscsi.target_prefix.clone());
        service.on_fence(move |seat| {
            drop(r.cancel_sessions_of(&format!("{prefix}:{seat}")));
        });
        let mut portals: Vec<(TcpListener, Arc<dyn khoi_iscsi::TargetResolver>)> = Vec::new();
        if let Some(addr) = config.local_iscsi_listen() {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for iSCSI on {addr}"))?;
            portals.push((listener, targets.clone()));
        }
        // Each boot network's portal takes connections arriving on its own
        // interface only, and logs in that network's seats only.
        for ((name, iface, addr), net) in
            config.network_portals().into_iter().zip(service.networks())
        {
            let listener = khoi_pxe::net::bind_tcp_on(&iface, addr, "iSCSI")
                .map_err(anyhow::Error::from)
                .and_then(|l| Ok(TcpListener::from_std(l)?))
                .with_context(|| format!("cannot listen for iSCSI on boot network {name}"))?;
            portals.push((
                listener,
                Arc::new(exports::NetworkTargets::new(targets.clone(), net)),
            ));
        }
        for (listener, resolver) in portals {
            let portal = listener.local_addr()?;
            set_congestion(&listener, &config.listen.tcp_congestion);
            tracing::info!("iSCSI portal on {portal}");
            let mut cfg = khoi_iscsi::IscsiConfig::new(portal.to_string());
            cfg.nop_interval = (config.iscsi.nop_interval > 0)
                .then(|| Duration::from_secs(config.iscsi.nop_interval));
            let (registry, token) = (Arc::clone(&registry), shutdown.clone());
            tasks.spawn(async move {
                khoi_iscsi::transport::serve_with_registry(
                    listener, resolver, cfg, registry, token,
                )
                .await;
            });
        }
    }

    if let Some(nets) = config.pxe.clone() {
        start_boot_services(config, nets, service, recorder, shutdown, tasks).await?;
    }

    Ok(())
}

/// A standby's seat services, started when it is promoted.
async fn serve_when_promoted(
    config: Config,
    service: Arc<Service>,
    recorder: Recorder,
    state: Arc<State>,
    prewarm: Arc<Prewarm>,
    promoted: CancellationToken,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = promoted.cancelled() => {}
        () = shutdown.cancelled() => return,
    }
    let mut seat_tasks = tokio::task::JoinSet::new();
    match start_seat_services(
        &config,
        &service,
        &recorder,
        &state,
        &prewarm,
        &shutdown,
        &mut seat_tasks,
    )
    .await
    {
        Ok(()) => recorder.record(
            "standby.serving",
            "khoi",
            "promoted: this server now answers the seats (PXE, iSCSI)",
        ),
        Err(e) => {
            tracing::error!("promoted, but the seat services did not start: {e:#}");
            recorder.record_args(
                "standby.failed",
                "khoi",
                format!("promoted, but the seat services did not start: {e:#}"),
                vec![("error", format!("{e:#}"))],
            );
        }
    }
    while seat_tasks.join_next().await.is_some() {}
}

/// The data folder holds CHAP secrets, password hashes and every seat's
/// disk: owner only. New files are owner-only by the umask; this fixes a
/// folder and state files made by an older version or by hand.
fn restrict_data_folder(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict data folder {}", dir.display()))?;
    for name in ["khoi.db", "khoi.db-wal", "khoi.db-shm", "khoi.db-journal"] {
        let p = dir.join(name);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", p.display()))?;
        }
    }
    Ok(())
}

/// Give the dashboard each seat's last boot from the event log, so a
/// restart of the server does not blank it.
fn seed_last_boots(service: &Service) {
    let filter = khoi_state::EventFilter {
        kind: Some("seat.boot".into()),
        limit: 10_000,
        ..Default::default()
    };
    match service.state().events_filtered(&filter) {
        // Newest first: the first event seen for a seat is its last boot.
        Ok(events) => {
            for ev in events.iter().filter(|e| e.kind == "seat.boot") {
                service.activity().seed_last_boot(&ev.subject, ev.ts);
            }
        }
        Err(e) => tracing::warn!("cannot read past boots: {e}"),
    }
}

/// The config's boot networks as the service knows them: a counter network
/// serves counter-profile images, a public one kiosk images.
fn boot_networks(config: &Config) -> Vec<khoi_admin::BootNetwork> {
    let portals = config.network_portals();
    config
        .pxe
        .iter()
        .flat_map(|n| n.iter())
        .map(|n| {
            let name = n.network_name().to_string();
            let portal = portals
                .iter()
                .find(|(net, _, _)| *net == name)
                .map(|(_, _, addr)| addr.to_string());
            khoi_admin::BootNetwork {
                name,
                profile: match n.kind {
                    khoi_pxe::NetworkKind::Counter => khoi_admin::gate::Profile::Counter,
                    khoi_pxe::NetworkKind::Public => khoi_admin::gate::Profile::Kiosk,
                },
                portal,
            }
        })
        .collect()
}

/// A seat naming a network the config no longer has boots nowhere; say so
/// at start rather than refuse to start (the admin moves it with the CLI,
/// which needs the server).
fn warn_seats_off_networks(service: &Service) {
    if service.networks().is_empty() {
        return;
    }
    for seat in service.state().seats().unwrap_or_default() {
        if let Some(n) = seat.network.as_deref()
            && service.network_of(Some(n)).is_none()
        {
            tracing::error!(
                seat = %seat.name,
                "seat is on boot network {n:?}, which the config does not have: it cannot boot \
                 until it is moved (khoi seat network {} NAME) or the network is added",
                seat.name
            );
        }
    }
}

/// Bind every boot socket of every network before serving any, so a missing
/// boot interface or a port in use stops `khoi serve` with a clear error
/// instead of leaving a half-working boot LAN.
async fn start_boot_services(
    config: &Config,
    nets: khoi_pxe::BootNetworks,
    service: &Arc<Service>,
    recorder: &Recorder,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    use khoi_pxe::{BootState, DhcpCore, DhcpMode, DhcpSockets, http, net, tftp};
    /// One network's sockets, bound before any is served.
    struct Bound {
        pxe: khoi_pxe::PxeConfig,
        dir: Arc<dyn khoi_pxe::BootDirectory>,
        state: Arc<BootState>,
        dhcp: Option<(DhcpSockets, DhcpCore)>,
        tftp: Option<std::net::UdpSocket>,
        http: TcpListener,
    }
    let mut bound: Vec<Bound> = Vec::new();
    for (pxe, network) in nets.0.into_iter().zip(service.networks()) {
        let portal = config
            .listen
            .iscsi
            .map(|a| std::net::SocketAddr::from((pxe.server_ip, a.port())));
        let dir: Arc<dyn khoi_pxe::BootDirectory> = Arc::new(boot::Seats::new(
            Arc::clone(service),
            recorder.clone(),
            portal,
            network,
        ));
        let state = Arc::new(BootState::new(&pxe));
        let dhcp = if pxe.mode == DhcpMode::Off {
            None
        } else {
            let sockets = DhcpSockets::bind(&pxe)
                .with_context(|| format!("cannot start DHCP on interface {}", pxe.interface))?;
            Some((
                sockets,
                DhcpCore::new(&pxe, Arc::clone(&state), dir.leases()),
            ))
        };
        let tftp_socket = if pxe.tftp_enabled {
            let files: Vec<&str> = [
                Some(pxe.boot_files.bios.as_str()),
                Some(pxe.boot_files.efi_x64.as_str()),
                pxe.boot_files.efi_ia32.as_deref(),
                pxe.boot_files.efi_arm64.as_deref(),
            ]
            .into_iter()
            .flatten()
            .collect();
            boot::prepare_tftp_root(&pxe.tftp_root, &files)?;
            Some(net::bind_tftp(&pxe).with_context(|| {
                format!("cannot start TFTP on {}:{}", pxe.server_ip, pxe.tftp_port)
            })?)
        } else {
            None
        };
        let http_addr = std::net::SocketAddrV4::new(pxe.server_ip, pxe.http_port);
        let http_listener = net::bind_tcp_on(&pxe.interface, http_addr, "boot scripts (HTTP)")
            .map_err(anyhow::Error::from)
            .and_then(|l| Ok(TcpListener::from_std(l)?))
            .with_context(|| format!("cannot serve boot scripts on {http_addr}"))?;
        bound.push(Bound {
            pxe,
            dir,
            state,
            dhcp,
            tftp: tftp_socket,
            http: http_listener,
        });
    }
    let tftp_stats = Arc::new(tftp::TftpStats::default());
    {
        // Every network's reads go to the one boot clock, which knows the
        // seats by address.
        let svc = Arc::clone(service);
        tftp_stats.on_read(move |ip| {
            let at = khoi_admin::boot_times::now_ms();
            let svc = Arc::clone(&svc);
            // A neighbour-table read and a seat lookup in SQLite: off the
            // TFTP server's task.
            let attribute = move || {
                let neighbour = match ip {
                    std::net::IpAddr::V4(v4) => khoi_pxe::neigh::lookup(v4),
                    std::net::IpAddr::V6(_) => khoi_pxe::neigh::Neighbour::Unknown,
                };
                boot::tftp_read(&svc, ip, &neighbour, at);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(attribute)),
                Err(_) => attribute(),
            }
        });
    }
    let mut states = Vec::new();
    for Bound {
        pxe,
        dir,
        state,
        dhcp,
        tftp: tftp_socket,
        http: http_listener,
    } in bound
    {
        tracing::info!(
            network = %pxe.network_name(),
            kind = %pxe.kind,
            mode = ?pxe.mode,
            interface = %pxe.interface,
            "network boot: scripts on http://{}:{}/boot/<mac>.ipxe",
            pxe.server_ip,
            pxe.http_port
        );
        if let Some((sockets, core)) = dhcp {
            let (dir, token) = (Arc::clone(&dir), shutdown.clone());
            tasks.spawn(async move {
                if let Err(e) = net::serve_dhcp(sockets, core, dir, token).await {
                    tracing::error!("DHCP stopped: {e}");
                }
            });
        }
        if let Some(socket) = tftp_socket {
            let (root, token, stats) = (
                pxe.tftp_root.clone(),
                shutdown.clone(),
                Arc::clone(&tftp_stats),
            );
            tasks.spawn(async move {
                if let Err(e) = tftp::serve_with_stats(socket, &root, stats, token).await {
                    tracing::error!("TFTP stopped: {e}");
                }
            });
        }
        states.push(Arc::clone(&state));
        let router = http::router(dir, state);
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = http::serve(http_listener, router, token).await {
                tracing::error!("boot-script HTTP server stopped: {e}");
            }
        });
    }
    register_boot_metrics(
        service.metrics(),
        move || {
            states
                .iter()
                .map(|s| s.dhcp_stats())
                .fold(khoi_pxe::DhcpStats::default(), |a, b| a.sum(&b))
        },
        tftp_stats,
    );
    Ok(())
}

/// The NBD server's own totals (every export, drafts included), read at
/// each scrape. Per-seat bytes and latencies are the `IoMeter`'s.
fn register_nbd_metrics(metrics: &Metrics, stats: Arc<khoi_nbd::NbdStats>) {
    let read = move |f: fn(&khoi_nbd::StatsSnapshot) -> u64| {
        let stats = Arc::clone(&stats);
        move || f(&stats.snapshot())
    };
    metrics.counter_fn(
        "nbd_connections",
        "NBD connections accepted since start",
        read(|s| s.connections_total),
    );
    metrics.gauge_fn(
        "nbd_connections_active",
        "NBD connections open now",
        read(|s| s.connections_active),
    );
    metrics.counter_fn(
        "nbd_requests",
        "NBD requests since start",
        read(|s| s.requests),
    );
    metrics.counter_fn(
        "nbd_errors",
        "NBD requests answered with an error since start",
        read(|s| s.errors),
    );
    metrics.counter_fn(
        "nbd_read_bytes",
        "Bytes NBD clients read since start",
        read(|s| s.bytes_read),
    );
    metrics.counter_fn(
        "nbd_written_bytes",
        "Bytes NBD clients wrote since start",
        read(|s| s.bytes_written),
    );
}

/// DHCP and TFTP totals as counters, read at each scrape from where their
/// servers keep them (the DHCP core publishes its totals per packet).
fn register_boot_metrics(
    metrics: &Metrics,
    dhcp: impl Fn() -> khoi_pxe::DhcpStats + Send + Sync + 'static,
    tftp: Arc<khoi_pxe::tftp::TftpStats>,
) {
    metrics.counters_by(
        "dhcp_packets",
        "DHCP packets since start, by what happened to them",
        "kind",
        move || {
            let s = dhcp();
            vec![
                ("received", s.received),
                ("garbage", s.garbage),
                ("ignored", s.ignored),
                ("unknown_mac", s.unknown_mac),
                ("no_boot_file", s.no_boot_file),
                ("pool_exhausted", s.pool_exhausted),
                ("offer", s.offers),
                ("ack", s.acks),
                ("nak", s.naks),
                ("decline", s.declines),
                ("release", s.releases),
                ("inform", s.informs),
            ]
        },
    );
    metrics.counters_by(
        "tftp_requests",
        "TFTP requests since start, by outcome",
        "kind",
        move || {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            vec![
                ("read", load(&tftp.reads)),
                ("read_refused", load(&tftp.reads_refused)),
                ("write_refused", load(&tftp.writes_refused)),
            ]
        },
    );
}

/// Registers for SIGINT and SIGTERM now (before READY=1 is sent: systemd
/// may stop the service the moment it is ready) and resolves on either.
fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (int, term) => {
                if let Some(e) = int.err().or(term.err()) {
                    tracing::error!("cannot watch SIGINT/SIGTERM: {e}");
                }
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Sets `listen.tcp_congestion` on a block listener; accepted connections
/// inherit it. A name the kernel lacks (or does not allow unprivileged
/// processes, tcp_allowed_congestion_control) leaves the system default and
/// says so: it costs speed, not correctness, so the server still starts.
fn set_congestion(listener: &TcpListener, name: &str) {
    if name == "system" {
        return;
    }
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_congestion(name.as_bytes()) {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        tracing::warn!(
            listener = %addr,
            "listen.tcp_congestion {name:?} not set ({e}); connections use the system default"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use khoi_admin::metrics::declared_types;

    /// Every total of the NBD, DHCP and TFTP servers reaches a scrape
    /// once, as a counter (open connections: a gauge), with today's value.
    #[test]
    fn protocol_totals_reach_metrics_once_with_their_type() {
        let metrics = Metrics::new();
        let nbd = Arc::new(khoi_nbd::NbdStats::default());
        register_nbd_metrics(&metrics, Arc::clone(&nbd));
        let tftp = Arc::new(khoi_pxe::tftp::TftpStats::default());
        register_boot_metrics(
            &metrics,
            || khoi_pxe::DhcpStats {
                offers: 4,
                ..Default::default()
            },
            Arc::clone(&tftp),
        );
        tftp.reads.fetch_add(2, Ordering::Relaxed);
        nbd.requests.fetch_add(9, Ordering::Relaxed);
        let text = metrics.encode();
        let types = declared_types(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for (name, kind) in [
            ("khoi_nbd_connections", "counter"),
            ("khoi_nbd_connections_active", "gauge"),
            ("khoi_nbd_requests", "counter"),
            ("khoi_nbd_errors", "counter"),
            ("khoi_nbd_read_bytes", "counter"),
            ("khoi_nbd_written_bytes", "counter"),
            ("khoi_dhcp_packets", "counter"),
            ("khoi_tftp_requests", "counter"),
        ] {
            assert_eq!(
                types.get(name).map(String::as_str),
                Some(kind),
                "{name}\n{text}"
            );
        }
        for sample in [
            "khoi_nbd_requests_total 9\n",
            "khoi_dhcp_packets_total{kind=\"offer\"} 4\n",
            "khoi_tftp_requests_total{kind=\"read\"} 2\n",
        ] {
            assert!(text.contains(sample), "{sample}\n{text}");
        }
    }
}
