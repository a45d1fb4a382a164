//! The province role of this server (`sync` in the config): a publisher
//! uploads every version of the images it shares, a site pulls the versions
//! of the images it takes, on a timer (and at once on `khoi sync now`).
//! The work is `khoi_sync`'s; this wires it to the service, the event log
//! and the control socket.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use khoi_admin::gate::GateStatus;
use khoi_admin::service::Service;
use khoi_sync::config::{Role, SyncConfig};
use khoi_sync::manifest::Gate;
use khoi_sync::publisher::Publisher;
use khoi_sync::remote::Remote;
use khoi_sync::site::{Site, SiteState, Window};
use khoi_sync::standby::{Pulled, Snapshot, Standby};
use khoi_sync::{SyncError, SyncEvent};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::recorder::Recorder;

enum Engine {
    Publisher(Publisher),
    Site(Site),
    /// Pulls the primary's images (as a site, trusting the primary's
    /// standby key) and its state snapshot.
    Standby {
        site: Site,
        standby: Standby,
    },
}

/// A primary with a standby: it exposes its images under
/// `standby/<name>/` in the bucket, signed with its standby key, and writes
/// its state snapshot there.
struct Primary {
    publisher: Publisher,
    key: ed25519_dalek::SigningKey,
    remote: Remote,
}

/// The bucket folder a primary shares with its standby.
fn standby_bucket(
    bucket: &khoi_sync::remote::BucketConfig,
    primary: &str,
) -> khoi_sync::remote::BucketConfig {
    let mut b = bucket.clone();
    let p = b.prefix.trim_matches('/');
    b.prefix = if p.is_empty() {
        format!("standby/{primary}")
    } else {
        format!("{p}/standby/{primary}")
    };
    b
}

/// What `khoi standby status` and the standby's page show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StandbyStatus {
    pub primary: String,
    /// Unix seconds the last verified snapshot was taken at the primary; 0: none yet.
    pub last_snapshot: u64,
    /// Seats in that snapshot.
    pub seats: usize,
    /// Images of the primary this server holds every pulled version of,
    /// and those it lacks.
    pub images_held: Vec<String>,
    pub images_missing: Vec<String>,
    /// When and from what it was promoted; `None`: standing by.
    pub promoted: Option<String>,
    /// Why the last snapshot in the bucket was refused, if it was.
    pub refused: Option<String>,
}

/// What `khoi sync status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    pub role: String,
    pub name: String,
    /// Unix seconds of the last pass that finished, and its outcome.
    pub last_pass: u64,
    pub last_error: Option<String>,
    /// Site: what it holds from the province.
    pub held: Option<SiteState>,
    /// Publisher: each listed site's state, as last read (`in_sync`,
    /// `behind`, `failing`, `unknown`).
    #[serde(default)]
    pub sites: Vec<(String, String)>,
    /// Standby: its primary, snapshot and promotion.
    #[serde(default)]
    pub standby: Option<StandbyStatus>,
}

pub struct Sync {
    cfg: SyncConfig,
    engine: Engine,
    service: Arc<Service>,
    /// Site: signs the status it writes for the province page.
    status_key: Option<ed25519_dalek::SigningKey>,
    /// Publisher: the sites of the province page, with their keys.
    site_keys: Vec<(String, ed25519_dalek::VerifyingKey)>,
    /// Publisher: the sites as last read from the bucket.
    province: Mutex<Option<Vec<khoi_sync::publisher::SiteRow>>>,
    window: Option<Window>,
    kick: Notify,
    /// Wakes the primary's snapshot loop (`khoi sync now` too).
    snapshot_kick: Notify,
    recorder: Recorder,
    status: Mutex<SyncStatus>,
    /// The bucket was unreachable at the last pass (one event per outage).
    down: Mutex<bool>,
    /// A primary's side of its standby.
    primary: Option<Primary>,
    /// Standby: cancelled once promoted (at once if it was before a restart).
    pub promoted: CancellationToken,
    /// Standby: the last snapshot refusal reported (one event per reason).
    refused: Mutex<Option<String>>,
}

impl std::fmt::Debug for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sync")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

fn gate_of(service: &Service, image: &str, n: u32) -> Option<Gate> {
    let r = service.gate_result(image, n).ok()?;
    let passed = match r.status {
        GateStatus::NotChecked => return None,
        GateStatus::Passed | GateStatus::Warnings | GateStatus::Overridden => true,
        GateStatus::Failed => false,
    };
    Some(Gate {
        passed,
        summary: r.status.as_str().to_string(),
    })
}

/// Why version `n` of `image` must stay: it is current, or seats use it.
fn in_use(service: &Service, image: &str, n: u32) -> Option<String> {
    let versions = match service.versions(image) {
        Ok(v) => v,
        Err(e) => return Some(e.to_string()),
    };
    let v = versions.iter().find(|v| v.number == n)?;
    if v.current {
        return Some(format!("version {n} is the current version of {image}"));
    }
    if !v.used_by.is_empty() {
        return Some(format!("seats {} use version {n}", v.used_by.join(", ")));
    }
    None
}

impl Sync {
    pub fn new(
        cfg: SyncConfig,
        service: &Arc<Service>,
        recorder: Recorder,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Arc<Sync>> {
        cfg.validate()
            .map_err(|(k, m)| anyhow::anyhow!("sync.{k}: {m}"))?;
        let rate = cfg.rate().map_err(anyhow::Error::msg)?;
        let remote = Remote::connect(&cfg.bucket, rate)?;
        let rec = recorder.clone();
        let events: khoi_sync::EventFn = Arc::new(move |e: SyncEvent| {
            rec.record_args(e.kind, e.subject, e.detail, e.args);
        });
        let state_dir = data_dir.join("sync");
        let engine = match cfg.role {
            Role::Publisher => {
                let path = cfg
                    .signing_key
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("sync.signing_key is required"))?;
                let key = khoi_sync::sign::read_secret(path).map_err(anyhow::Error::msg)?;
                let svc = Arc::clone(service);
                Engine::Publisher(Publisher::new(
                    Arc::clone(service.store()),
                    remote,
                    key,
                    state_dir.clone(),
                    Arc::new(move |image, n| gate_of(&svc, image, n)),
                    Arc::clone(&events),
                )?)
            }
            Role::Site => {
                let svc = Arc::clone(service);
                Engine::Site(Site::new(
                    Arc::clone(service.store()),
                    remote,
                    cfg.trusted().map_err(anyhow::Error::msg)?,
                    state_dir.clone(),
                    Arc::new(move |image, n| in_use(&svc, image, n)),
                    Arc::clone(&events),
                )?)
            }
            Role::Standby => {
                let (primary, key) = cfg.primary().map_err(anyhow::Error::msg)?;
                let remote = Remote::connect(&standby_bucket(&cfg.bucket, &primary), rate)?;
                let dir = state_dir.join("standby");
                let svc = Arc::clone(service);
                Engine::Standby {
                    site: Site::new(
                        Arc::clone(service.store()),
                        remote.clone(),
                        vec![key],
                        dir.clone(),
                        Arc::new(move |image, n| in_use(&svc, image, n)),
                        Arc::clone(&events),
                    )?,
                    standby: Standby::new(remote, &primary, key, dir)?,
                }
            }
        };
        let primary = match (&cfg.standby_key, cfg.role) {
            (Some(path), Role::Publisher | Role::Site) => {
                let key = khoi_sync::sign::read_secret(path).map_err(anyhow::Error::msg)?;
                let remote = Remote::connect(&standby_bucket(&cfg.bucket, &cfg.name), rate)?;
                let svc = Arc::clone(service);
                Some(Primary {
                    publisher: Publisher::new(
                        Arc::clone(service.store()),
                        remote.clone(),
                        key.clone(),
                        state_dir.join("primary"),
                        Arc::new(move |image, n| gate_of(&svc, image, n)),
                        events,
                    )?,
                    key,
                    remote,
                })
            }
            _ => None,
        };
        let promoted = CancellationToken::new();
        if crate::standby::is_promoted(service) {
            promoted.cancel();
        }
        let window = cfg.window().map_err(anyhow::Error::msg)?;
        let status_key = match &cfg.status_key {
            Some(p) => Some(khoi_sync::sign::read_secret(p).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let site_keys = cfg.site_keys().map_err(anyhow::Error::msg)?;
        let held = match &engine {
            Engine::Site(s) | Engine::Standby { site: s, .. } => s.state().ok(),
            Engine::Publisher(_) => None,
        };
        let status = SyncStatus {
            role: match cfg.role {
                Role::Publisher => "publisher".into(),
                Role::Site => "site".into(),
                Role::Standby => "standby".into(),
            },
            name: cfg.name.clone(),
            held,
            ..SyncStatus::default()
        };
        Ok(Arc::new(Sync {
            cfg,
            engine,
            service: Arc::clone(service),
            status_key,
            site_keys,
            province: Mutex::new(None),
            window,
            kick: Notify::new(),
            snapshot_kick: Notify::new(),
            recorder,
            status: Mutex::new(status),
            down: Mutex::new(false),
            primary,
            promoted,
            refused: Mutex::new(None),
        }))
    }

    fn in_window(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.window.is_none_or(|w| w.contains(now))
    }

    /// One pass over every configured image.
    pub async fn pass(&self) {
        let mut error = None;
        let mut images = self.cfg.images.clone();
        if let Engine::Standby { standby, .. } = &self.engine {
            if self.promoted.is_cancelled() {
                // The primary is gone (or must not come back over us): a
                // promoted standby takes nothing more from it.
                self.after_pass(None);
                return;
            }
            match self.pull_snapshot(standby).await {
                Ok(Some(s)) => images.extend(snapshot_images(&s)),
                Ok(None) => {}
                Err(e) => {
                    let unreachable = matches!(e, SyncError::Remote(_));
                    error = Some((unreachable, e.to_string()));
                }
            }
            images.sort();
            images.dedup();
        }
        for image in &images {
            let r = match &self.engine {
                Engine::Publisher(p) => {
                    if p.has_image(image) {
                        p.upload_image(image).await.map(|_| ())
                    } else {
                        Ok(())
                    }
                }
                Engine::Site(s) | Engine::Standby { site: s, .. } => {
                    if !self.in_window() {
                        break;
                    }
                    let keep_going = || self.in_window();
                    s.pull_image(image, &keep_going).await.map(|_| ())
                }
            };
            if let Err(e) = r {
                tracing::warn!(image, error = %e, "province sync");
                let unreachable = matches!(e, SyncError::Remote(_));
                error = Some((unreachable, e.to_string()));
                if unreachable {
                    break;
                }
            }
        }
        if error.as_ref().is_none_or(|(unreachable, _)| !unreachable)
            && let Some(p) = &self.primary
            && let Err(e) = self.expose_images(p).await
        {
            tracing::warn!(error = %e, "exposing images to the standby");
            error = Some((matches!(e, SyncError::Remote(_)), e.to_string()));
        }
        self.report(error.as_ref().map(|(_, e)| e.clone())).await;
        self.after_pass(error);
    }

    /// A primary: every image it has (site-local ones too) goes to the
    /// standby's folder of the bucket, through the publisher's own code.
    async fn expose_images(&self, p: &Primary) -> Result<(), SyncError> {
        for image in self.service.images() {
            p.publisher.upload_image(&image.name).await?;
        }
        Ok(())
    }

    /// A primary: writes its state snapshot for its standby.
    pub async fn write_snapshot(&self) -> anyhow::Result<()> {
        let Some(p) = &self.primary else {
            return Ok(());
        };
        let svc = Arc::clone(&self.service);
        let state = tokio::task::spawn_blocking(move || crate::standby::take(&svc)).await??;
        let snap = Snapshot::new(
            &self.cfg.name,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            serde_json::to_value(state)?,
        );
        khoi_sync::standby::write_snapshot(&p.remote, &p.key, &snap).await?;
        Ok(())
    }

    /// A standby: the primary's snapshot, if a newer one verifies; the one
    /// kept otherwise. A refusal is recorded once per reason.
    async fn pull_snapshot(&self, standby: &Standby) -> Result<Option<Snapshot>, SyncError> {
        match standby.pull().await {
            Ok(Pulled::New(s)) => {
                *self.refused.lock() = None;
                Ok(Some(s))
            }
            Ok(Pulled::Unchanged | Pulled::None) => {
                *self.refused.lock() = None;
                standby.kept()
            }
            Err(SyncError::Refused(why)) => {
                let mut last = self.refused.lock();
                if last.as_deref() != Some(why.as_str()) {
                    *last = Some(why.clone());
                    self.recorder.record_args(
                        "standby.refused",
                        standby.primary().to_string(),
                        why.clone(),
                        vec![("reason", why.clone())],
                    );
                }
                drop(last);
                standby.kept()
            }
            Err(e) => Err(e),
        }
    }

    /// Standby: what its page and `khoi standby status` show.
    pub fn standby_status(&self) -> Option<StandbyStatus> {
        let Engine::Standby { site, standby } = &self.engine else {
            return None;
        };
        let kept = standby.kept().ok().flatten();
        let held = site.state().unwrap_or_default();
        let mut st = StandbyStatus {
            primary: standby.primary().to_string(),
            promoted: self
                .service
                .state()
                .setting(crate::standby::PROMOTED)
                .ok()
                .flatten(),
            refused: self.refused.lock().clone(),
            ..StandbyStatus::default()
        };
        if let Some(s) = &kept {
            st.last_snapshot = s.written;
            st.seats = serde_json::from_value::<crate::standby::SnapState>(s.state.clone())
                .map_or(0, |x| x.seats.len());
            for image in snapshot_images(s) {
                if held.images.get(&image).is_some_and(|v| !v.is_empty()) {
                    st.images_held.push(image);
                } else {
                    st.images_missing.push(image);
                }
            }
        }
        Some(st)
    }

    /// `khoi standby promote` and the page's button: restore the last
    /// verified snapshot's seats and start answering them. Blocking.
    pub fn promote_blocking(
        &self,
        actor: &khoi_admin::service::Actor,
    ) -> Result<crate::standby::Promoted, String> {
        let Engine::Standby { site, standby } = &self.engine else {
            return Err("this server is not a standby (sync.role: standby)".into());
        };
        let kept = standby.kept().map_err(|e| e.to_string())?;
        let held = site.state().map_err(|e| e.to_string())?;
        let local = |image: &str, n: u32| {
            held.images
                .get(image)?
                .values()
                .find(|h| h.number == n)
                .map(|h| h.local)
        };
        let done = crate::standby::promote(&self.service, actor, kept, &local)?;
        self.promoted.cancel();
        Ok(done)
    }

    pub async fn promote(
        self: &Arc<Self>,
        actor: khoi_admin::service::Actor,
    ) -> Result<crate::standby::Promoted, String> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.promote_blocking(&actor))
            .await
            .map_err(|e| e.to_string())?
    }

    /// After a pass: a site writes its signed status, the publisher reads
    /// every site's. Failures here only go to the log: the bucket may be
    /// the very thing that is down.
    async fn report(&self, error: Option<String>) {
        match &self.engine {
            // A standby is no site of the province page.
            Engine::Standby { .. } => {}
            Engine::Site(s) => {
                let Some(key) = &self.status_key else { return };
                let svc = Arc::clone(&self.service);
                let seats = tokio::task::spawn_blocking(move || svc.seats().map(|v| v.len()))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
                let errors = error.into_iter().collect();
                if let Err(e) = s.write_status(key, &self.cfg.name, seats, errors).await {
                    tracing::warn!(error = %e, "could not write this site's status");
                }
            }
            Engine::Publisher(p) => {
                if self.site_keys.is_empty() {
                    return;
                }
                match p.province(&self.site_keys).await {
                    Ok(rows) => {
                        use khoi_sync::status::SiteState as S;
                        self.status.lock().sites = rows
                            .iter()
                            .map(|r| {
                                let state = match r.state {
                                    S::InSync => "in_sync".to_string(),
                                    S::Behind(n) => format!("behind ({n} missing)"),
                                    S::Failing => "failing".to_string(),
                                    S::Unknown => "unknown".to_string(),
                                };
                                (r.name.clone(), state)
                            })
                            .collect();
                        *self.province.lock() = Some(rows);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read the sites' status"),
                }
            }
        }
    }

    fn after_pass(&self, error: Option<(bool, String)>) {
        let mut down = self.down.lock();
        match &error {
            Some((true, e)) if !*down => {
                *down = true;
                self.recorder.record_args(
                    "sync.unreachable",
                    self.cfg.name.clone(),
                    format!(
                        "the province bucket cannot be reached; local images keep serving: {e}"
                    ),
                    vec![("error", e.clone())],
                );
            }
            None if *down => {
                *down = false;
                self.recorder.record(
                    "sync.reachable",
                    self.cfg.name.clone(),
                    "the province bucket is reachable again; syncing resumes",
                );
            }
            _ => {}
        }
        drop(down);
        let held = match &self.engine {
            Engine::Site(s) | Engine::Standby { site: s, .. } => s.state().ok(),
            Engine::Publisher(_) => None,
        };
        let standby = self.standby_status();
        let mut st = self.status.lock();
        st.standby = standby;
        st.last_pass = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        st.last_error = error.map(|(_, e)| e);
        st.held = held;
    }

    pub fn status(&self) -> SyncStatus {
        self.status.lock().clone()
    }
}

fn snapshot_images(s: &Snapshot) -> Vec<String> {
    serde_json::from_value::<crate::standby::SnapState>(s.state.clone())
        .map(|x| x.images)
        .unwrap_or_default()
}

/// A primary's state snapshot every `snapshot_secs`, until shutdown.
pub async fn run_snapshots(sync: Arc<Sync>, shutdown: CancellationToken) {
    if sync.primary.is_none() {
        return;
    }
    let interval = Duration::from_secs(sync.cfg.snapshot_secs);
    loop {
        if let Err(e) = sync.write_snapshot().await {
            // The bucket being down is reported by the passes already.
            tracing::warn!(error = %e, "could not write the state snapshot for the standby");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sync.snapshot_kick.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Passes every `interval_secs`, or at once when kicked, until shutdown.
pub async fn run(sync: Arc<Sync>, shutdown: CancellationToken) {
    let interval = Duration::from_secs(sync.cfg.interval_secs);
    loop {
        tokio::select! {
            () = sync.pass() => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sync.kick.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RetireRequest {
    pub image: String,
    pub version: u32,
}

/// Control-socket routes: `sync now`, `sync status`, `sync retire`.
pub fn router(sync: Option<Arc<Sync>>) -> Router {
    Router::new()
        .route("/v1/sync/now", post(now))
        .route("/v1/sync/status", get(status))
        .route("/v1/sync/retire", post(retire))
        .route("/v1/standby/promote", post(promote))
        .route("/v1/standby/status", get(standby_status))
        .with_state(sync)
}

async fn standby_status(State(sync): State<Option<Arc<Sync>>>) -> Response {
    match sync.as_ref().and_then(|s| s.standby_status()) {
        Some(st) => axum::Json(st).into_response(),
        None => refuse("this server is not a standby (sync.role: standby)"),
    }
}

async fn promote(State(sync): State<Option<Arc<Sync>>>, req: Request) -> Response {
    // The control socket is the admin's (owner-only); the audit log names
    // the caller by the kernel's word for it.
    let user = req
        .extensions()
        .get::<axum::extract::ConnectInfo<khoi_web::api::PeerCred>>()
        .and_then(|c| c.0.uid)
        .map_or_else(|| "unknown".to_string(), khoi_web::api::user_name);
    let _ = axum::body::to_bytes(req.into_body(), 64 * 1024).await;
    let Some(sync) = sync else {
        return refuse("this server is not a standby (sync.role: standby)");
    };
    let actor = khoi_admin::service::Actor {
        name: format!("local:{user}"),
        source: "control-socket".into(),
    };
    match sync.promote(actor).await {
        Ok(p) => axum::Json(p).into_response(),
        Err(e) => refuse(&e),
    }
}

fn refuse(msg: &str) -> Response {
    (
        StatusCode::CONFLICT,
        axum::Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

async fn now(State(sync): State<Option<Arc<Sync>>>, req: Request) -> Response {
    let _ = axum::body::to_bytes(req.into_body(), 64 * 1024).await;
    let Some(sync) = sync else {
        return refuse("this server has no sync section in its config");
    };
    sync.kick.notify_one();
    sync.snapshot_kick.notify_one();
    axum::Json(()).into_response()
}

async fn status(State(sync): State<Option<Arc<Sync>>>) -> Response {
    match sync {
        Some(s) => axum::Json(s.status()).into_response(),
        None => refuse("this server has no sync section in its config"),
    }
}

async fn retire(State(sync): State<Option<Arc<Sync>>>, req: Request) -> Response {
    let Some(sync) = sync else {
        return refuse("this server has no sync section in its config");
    };
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return refuse("request body too large");
    };
    let Ok(r) = serde_json::from_slice::<RetireRequest>(&body) else {
        return refuse("expected {\"image\": ..., \"version\": N}");
    };
    let Engine::Publisher(p) = &sync.engine else {
        return refuse("only the publisher retires versions");
    };
    match p.retire(&r.image, r.version).await {
        Ok(()) => axum::Json(()).into_response(),
        Err(e) => refuse(&e.to_string()),
    }
}

impl khoi_web::pages::province::ProvinceSource for Sync {
    fn standby(&self) -> Option<khoi_web::pages::province::StandbyView> {
        let s = self.standby_status()?;
        Some(khoi_web::pages::province::StandbyView {
            primary: s.primary,
            last_snapshot: (s.last_snapshot > 0)
                .then(|| i64::try_from(s.last_snapshot).unwrap_or(i64::MAX)),
            seats: s.seats,
            images_held: s.images_held,
            images_missing: s.images_missing,
            promoted: s.promoted,
            refused: s.refused,
        })
    }

    fn promote(&self, actor: &khoi_admin::service::Actor) -> Result<String, String> {
        let p = self.promote_blocking(actor)?;
        let mut text = format!(
            "promoted in place of {}: {} seats restored; seats reboot onto this server",
            p.primary,
            p.restored.len()
        );
        for (seat, e) in &p.failed {
            text.push_str(&format!("; {seat} not restored: {e}"));
        }
        Ok(text)
    }

    fn sites(&self) -> Option<Vec<khoi_web::pages::province::ProvinceSite>> {
        use khoi_sync::status::SiteState as S;
        use khoi_web::pages::province::{ProvinceSite, SiteState};
        if !matches!(self.engine, Engine::Publisher(_)) {
            return None;
        }
        let rows = self.province.lock().clone();
        let rows = rows.unwrap_or_else(|| {
            // Before the first pass read them: every listed site, no status yet.
            self.site_keys
                .iter()
                .map(|(name, _)| khoi_sync::publisher::SiteRow {
                    name: name.clone(),
                    state: S::Unknown,
                    status: None,
                    problem: None,
                })
                .collect()
        });
        Some(
            rows.into_iter()
                .map(|r| {
                    let state = match r.state {
                        S::InSync => SiteState::InSync,
                        S::Behind(n) => SiteState::Behind(n),
                        S::Failing => SiteState::Failing,
                        S::Unknown => SiteState::Unknown,
                    };
                    let mut errors: Vec<String> = r.problem.into_iter().collect();
                    let (last_sync, seats, held) = match &r.status {
                        Some(s) => {
                            errors.extend(s.errors.iter().cloned());
                            let held = s
                                .held
                                .iter()
                                .map(|(image, ids)| format!("{image}: {}", ids.len()))
                                .collect::<Vec<_>>()
                                .join(", ");
                            (
                                (s.last_sync > 0)
                                    .then(|| i64::try_from(s.last_sync).unwrap_or(i64::MAX)),
                                Some(s.seats),
                                held,
                            )
                        }
                        None => (None, None, String::new()),
                    };
                    ProvinceSite {
                        name: r.name,
                        state,
                        last_sync,
                        seats,
                        held,
                        errors,
                    }
                })
                .collect(),
        )
    }

    fn origin(&self, image: &str, n: u32) -> Option<u32> {
        let st = self.status.lock();
        st.held
            .as_ref()?
            .images
            .get(image)?
            .values()
            .find(|h| h.local == n)
            .map(|h| h.number)
    }
}
