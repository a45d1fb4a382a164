//! The JSON API over [`Service`]: served on the local control socket (file
//! permissions are the authentication) and under `/api` of the web page,
//! behind its login ([`crate::guard`]).

use std::sync::Arc;

use tokio::net::UnixListener;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use khoi_admin::gate::{FixView, GateResult, GateSettings};
use khoi_admin::schedule::{RunReport, ScheduleSettings, ScheduleView, Scheduler};
use khoi_admin::service::{
    Actor, AddSeat, Health, ImageView, PublishRequest as PublishWith, ResetReport, SeatDetails,
    SeatView, Service, ServiceError, VersionView,
};
use khoi_admin::staging;
use khoi_state::{EventFilter, SeatUpdate, UnknownMac, User};

use crate::auth::Auth;
pub use crate::error::ErrorBody;
use crate::error::{Replies, WebError};
use crate::i18n::Lang;

/// The control socket's caller, from the kernel (`SO_PEERCRED`): what the
/// audit log names, whatever the request says about itself.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for PeerCred
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        PeerCred {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// The user name of `uid` from the password database, else `uid<N>`.
pub fn user_name(uid: u32) -> String {
    // Records can be long (and a damaged /etc/passwd longer): grow the
    // buffer while the C library says it is too small.
    let mut size = 4096;
    let name = loop {
        let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut buf = vec![0 as libc::c_char; size];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwuid_r writes the record into `pw` and its strings
        // into `buf` (whose length it is given), and sets `found` to `pw` or
        // NULL; the name is copied out before `buf` goes away.
        let (rc, name) = unsafe {
            let rc = libc::getpwuid_r(
                uid,
                pw.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            );
            let name = (rc == 0 && !found.is_null() && !(*found).pw_name.is_null()).then(|| {
                std::ffi::CStr::from_ptr((*found).pw_name)
                    .to_string_lossy()
                    .into_owned()
            });
            (rc, name)
        };
        if rc == libc::ERANGE && size < 16 << 20 {
            size *= 4;
            continue;
        }
        break name;
    };
    name.unwrap_or_else(|| format!("uid{uid}"))
}

#[derive(Debug, Clone)]
pub struct ApiState {
    pub service: Arc<Service>,
    /// How this listener's callers are described in the audit log.
    pub source: String,
    /// The nightly reset, where the server runs one.
    pub scheduler: Option<Arc<Scheduler>>,
    /// Web users, where the web page runs.
    pub auth: Option<Arc<Auth>>,
    /// The first admin's setup link: the control socket only.
    pub setup_link: Option<crate::SetupLink>,
}

impl ApiState {
    pub fn new(service: Arc<Service>, source: impl Into<String>) -> ApiState {
        ApiState {
            service,
            source: source.into(),
            scheduler: None,
            auth: None,
            setup_link: None,
        }
    }
}

/// Who is calling: the logged-in web user (put in the request by the web
/// layer after it checked the session) or the local CLI user.
#[derive(Debug)]
pub struct Who(pub Actor);

impl FromRequestParts<ApiState> for Who {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, st: &ApiState) -> Result<Self, Self::Rejection> {
        if let Some(a) = parts.extensions.get::<Actor>() {
            return Ok(Who(a.clone()));
        }
        Ok(Who(actor(st, parts)))
    }
}

/// The body of a call that takes none (the CLI sends `null`). Reading it
/// matters: a server that answers and closes with request bytes unread makes
/// the kernel reset the connection, and the client may lose the answer.
pub type Unread = axum::body::Bytes;

/// A JSON body whose rejection is a JSON error naming the problem (and the
/// field, where serde says which), never a bare text body.
#[derive(Debug)]
pub struct Body422<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Body422<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = WebError;
    async fn from_request(req: axum::extract::Request, st: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, st).await {
            Ok(Json(v)) => Ok(Body422(v)),
            Err(e) => {
                let text = e.body_text();
                let field = text
                    .split('`')
                    .nth(1)
                    .filter(|_| text.contains("field `"))
                    .map(str::to_string);
                Err(WebError::bad_body(e.status(), text, field))
            }
        }
    }
}

type ApiResult<T> = Result<Json<T>, WebError>;

fn actor(st: &ApiState, parts: &Parts) -> Actor {
    let user = parts
        .extensions
        .get::<axum::extract::ConnectInfo<PeerCred>>()
        .and_then(|c| c.0.uid)
        .map_or_else(|| "unknown".to_string(), user_name);
    Actor {
        name: format!("local:{user}"),
        source: st.source.clone(),
    }
}

/// Run a service call off the async threads: most of them touch SQLite or
/// the filesystem, and a slow disk must not stall the protocol servers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map(Json).map_err(WebError::from),
        Err(e) => Err(WebError::internal(format_args!("admin task failed: {e}"))),
    }
}

/// `GET /v1/setup-link`: the first admin's one-time link, while there is
/// no admin account.
#[derive(Debug, Serialize, Deserialize)]
pub struct SetupLinkView {
    pub url: Option<String>,
}

async fn setup_link(State(st): State<ApiState>) -> ApiResult<SetupLinkView> {
    let Some(link) = &st.setup_link else {
        return Err(WebError::refuse(
            axum::http::StatusCode::NOT_FOUND,
            "err.setup_link",
        ));
    };
    Ok(Json(SetupLinkView { url: link.url() }))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    pub data_dir: String,
    pub staging_dir: String,
    /// The server's import limits, so the CLI refuses what the server would
    /// before converting (absent from older servers).
    #[serde(default)]
    pub max_virtual_size: Option<u64>,
    #[serde(default)]
    pub free_space_floor: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImportRequest {
    pub name: String,
    /// File name inside the staging folder.
    pub staged: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub to: u32,
    /// An admin's written reason to make a version that failed the image
    /// gate current.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
}

/// What to check on demand: a version, or the draft (`version` absent and
/// `draft` set), or the current version (both absent).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CheckRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default)]
    pub draft: bool,
}

/// What the CLI sends to publish; the API also takes `force` (see
/// [`PublishWith`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishRequest {
    pub note: String,
    /// An admin's written reason to publish despite blocking findings.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    pub subject: Option<String>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub q: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<u32>,
}

impl EventQuery {
    pub fn filter(&self) -> EventFilter {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        EventFilter {
            subject: nonempty(&self.subject),
            kind: nonempty(&self.kind),
            actor: nonempty(&self.actor),
            text: nonempty(&self.q),
            since: self.since,
            until: self.until,
            limit: self.limit.unwrap_or(100).min(10_000),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImportPathRequest {
    pub name: String,
    /// Absolute path of a disk image on the server.
    pub path: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    pub name: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    pub on: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UserRequest {
    pub name: String,
    pub role: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UserUpdate {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// The API alone, as the control socket serves it: errors in English,
/// since its reader is the CLI on a terminal.
pub fn socket_router(state: ApiState) -> Router {
    router(state).layer(axum::middleware::from_fn_with_state(
        Replies {
            json_only: true,
            default_lang: Lang::En,
        },
        crate::error::reply,
    ))
}

/// The API's routes (under `/v1`); the caller adds the error wording.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/setup-link", get(setup_link))
        .route("/v1/images", get(images).post(import))
        .route("/v1/images/import-path", post(import_path))
        .route("/v1/images/create", post(image_create))
        .route("/v1/images/upload", post(upload))
        .route("/v1/images/{name}", axum::routing::delete(delete_image))
        .route("/v1/images/{name}/versions", get(versions))
        .route(
            "/v1/images/{name}/versions/{n}",
            axum::routing::delete(delete_version),
        )
        .route("/v1/images/{name}/rollback", post(rollback))
        .route(
            "/v1/images/{name}/draft",
            post(draft_open).delete(draft_discard),
        )
        .route("/v1/images/{name}/draft/publish", post(draft_publish))
        .route(
            "/v1/images/{name}/gate",
            get(gate_settings).put(gate_settings_set),
        )
        .route("/v1/images/{name}/check", post(gate_check))
        .route("/v1/images/{name}/fix", post(image_fix))
        .route("/v1/seats", get(seats).post(add_seat))
        .route(
            "/v1/seats/{name}",
            get(seat).delete(remove_seat).patch(update_seat),
        )
        .route("/v1/seats/{name}/boots", get(seat_boot_times))
        .route("/v1/seats/{name}/maintenance", post(maintenance))
        .route("/v1/seats/{name}/reset", post(reset_seat))
        .route(
            "/v1/seats/{name}/capture",
            get(capture_show).post(capture_arm).delete(capture_cancel),
        )
        .route("/v1/reset-all", post(reset_all))
        .route("/v1/events", get(events))
        .route("/v1/report", get(report))
        .route("/v1/report.pdf", get(report_pdf))
        .route("/v1/health", get(health))
        .route("/v1/doctor", get(doctor))
        .route("/v1/unknown-macs", get(unknown_macs))
        .route("/v1/schedule", get(schedule).post(schedule_update))
        .route("/v1/schedule/run", post(schedule_run))
        .route("/v1/users", get(users).post(user_add))
        .route(
            "/v1/users/{name}",
            axum::routing::patch(user_update).delete(user_remove),
        )
        .with_state(state)
}

async fn info(State(st): State<ApiState>) -> Json<Info> {
    let svc = &st.service;
    Json(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        data_dir: svc.data_dir().display().to_string(),
        staging_dir: svc.staging_dir().display().to_string(),
        max_virtual_size: Some(svc.import_limits().max_virtual_size),
        free_space_floor: Some(svc.import_limits().free_space_floor),
    })
}

/// On the blocking pool: each image's badge is a database read.
async fn images(State(st): State<ApiState>) -> ApiResult<Vec<ImageView>> {
    blocking(move || Ok(st.service.images())).await
}

async fn import(
    State(st): State<ApiState>,
    Who(who): Who,
    Body422(req): Body422<ImportRequest>,
) -> ApiResult<VersionView> {
    blocking(move || st.service.import(&who, &req.name, &req.staged, &req.note)).await
}

async fn versions(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Vec<VersionView>> {
    blocking(move || st.service.versions(&name)).await
}

async fn delete_image(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<()> {
    blocking(move || st.service.delete_image(&who, &name)).await
}

async fn delete_version(
    State(st): State<ApiState>,
    Who(who): Who,
    Path((name, n)): Path<(String, u32)>,
) -> ApiResult<()> {
    blocking(move || st.service.delete_version(&who, &name, n)).await
}

async fn rollback(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    Body422(req): Body422<RollbackRequest>,
) -> ApiResult<VersionView> {
    blocking(move || {
        st.service
            .rollback_with(&who, &name, req.to, req.override_reason.as_deref())
    })
    .await
}

async fn gate_settings(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<GateSettings> {
    blocking(move || st.service.gate_settings(&name)).await
}

async fn gate_settings_set(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    Body422(req): Body422<GateSettings>,
) -> ApiResult<GateSettings> {
    blocking(move || st.service.set_gate_settings(&who, &name, &req)).await
}

/// Run the gate now. The check reads the image for up to seconds: it runs
/// on the blocking pool like every service call.
async fn gate_check(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    Body422(req): Body422<Option<CheckRequest>>,
) -> ApiResult<GateResult> {
    let req = req.unwrap_or_default();
    blocking(move || {
        if req.draft && req.version.is_none() {
            let report = st.service.check_draft(&name)?;
            return Ok(GateResult::of_draft(&name, report, &who.name));
        }
        let n = match req.version {
            Some(n) => n,
            None => st.service.store().current_version(&name)?,
        };
        st.service.check_version(&who, &name, n)
    })
    .await
}

/// Apply the safe remedies to the draft (admin only); minutes at most, on
/// the blocking pool.
async fn image_fix(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<FixView> {
    blocking(move || st.service.image_fix(&who, &name)).await
}

/// The report's period: two days, `YYYY-MM-DD` in Vietnam time.
#[derive(Debug, Default, Deserialize)]
pub struct ReportQuery {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The compliance report (directive item 4) as JSON.
async fn report(
    State(st): State<ApiState>,
    Query(q): Query<ReportQuery>,
) -> ApiResult<khoi_admin::report::ComplianceReport> {
    blocking(move || {
        let (from, to) = khoi_admin::report::period(q.from.as_deref(), q.to.as_deref())?;
        st.service.compliance_report(from, to)
    })
    .await
}

/// The compliance report as the Vietnamese A4 PDF.
async fn report_pdf(
    State(st): State<ApiState>,
    Query(q): Query<ReportQuery>,
) -> Result<axum::response::Response, crate::error::WebError> {
    let pdf = tokio::task::spawn_blocking(move || {
        let (from, to) = khoi_admin::report::period(q.from.as_deref(), q.to.as_deref())?;
        st.service.compliance_report_pdf(from, to)
    })
    .await
    .map_err(|e| crate::error::WebError::internal(format_args!("report task: {e}")))??;
    Ok(pdf_response(pdf))
}

/// A PDF body, offered as a download named like the report.
pub fn pdf_response(pdf: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/pdf"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"khoi-bao-cao.pdf\"",
            ),
        ],
        pdf,
    )
        .into_response()
}

async fn draft_open(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    _body: Unread,
) -> ApiResult<()> {
    blocking(move || st.service.draft_open(&who, &name)).await
}

async fn draft_discard(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<()> {
    blocking(move || st.service.draft_discard(&who, &name)).await
}

async fn draft_publish(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    Body422(req): Body422<PublishWith>,
) -> ApiResult<VersionView> {
    blocking(move || st.service.draft_publish_with(&who, &name, &req)).await
}

async fn seats(State(st): State<ApiState>) -> ApiResult<Vec<SeatView>> {
    blocking(move || st.service.seats()).await
}

/// A new seat, optionally on a named boot network (default: the first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddSeatRequest {
    #[serde(flatten)]
    pub seat: AddSeat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// An admin's reason when the seat is pinned to a version that failed
    /// the image gate.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
}

async fn add_seat(
    State(st): State<ApiState>,
    Who(who): Who,
    Body422(req): Body422<AddSeatRequest>,
) -> ApiResult<SeatView> {
    blocking(move || {
        st.service.add_seat_with(
            &who,
            &req.seat,
            req.network.as_deref(),
            req.override_reason.as_deref(),
        )
    })
    .await
}

async fn seat(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    ctx: Option<axum::Extension<crate::guard::Ctx>>,
) -> ApiResult<SeatDetails> {
    let mut d = blocking(move || st.service.seat(&name)).await?;
    // As on the seat page: a viewer reads a seat but not its secrets. The
    // control socket (no web session) is the server's owner and sees all.
    if ctx.is_some_and(|c| c.0.session.role < khoi_admin::users::Role::Operator) {
        d.0.chap_secret = String::new();
        d.0.mutual_chap_secret = None;
    }
    Ok(d)
}

async fn seat_boot_times(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<khoi_admin::boot_times::SeatBootTimes> {
    blocking(move || st.service.boot_times(&name)).await
}

async fn remove_seat(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<()> {
    blocking(move || st.service.remove_seat(&who, &name)).await
}

async fn reset_seat(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    _body: Unread,
) -> ApiResult<SeatView> {
    blocking(move || st.service.reset_seat(&who, &name)).await
}

/// `POST /v1/images/create`: an empty image to install onto.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateImage {
    pub name: String,
    /// Bytes.
    pub size: u64,
}

async fn image_create(
    State(st): State<ApiState>,
    Who(who): Who,
    Body422(req): Body422<CreateImage>,
) -> ApiResult<VersionView> {
    blocking(move || st.service.image_create(&who, &req.name, req.size)).await
}

/// `POST /v1/seats/{name}/capture`: capture the seat's disk into a new image.
#[derive(Debug, Serialize, Deserialize)]
pub struct CaptureRequest {
    pub image: String,
}

/// A seat's capture and whether the capture environment is built.
#[derive(Debug, Serialize, Deserialize)]
pub struct CaptureState {
    pub capture: Option<khoi_admin::capture::CaptureView>,
    pub environment: khoi_admin::capture::CaptureEnvironment,
}

async fn capture_show(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<CaptureState> {
    blocking(move || {
        st.service.state().seat(&name)?;
        Ok(CaptureState {
            capture: st.service.capture(&name)?,
            environment: st.service.capture_environment(),
        })
    })
    .await
}

async fn capture_arm(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    Body422(req): Body422<CaptureRequest>,
) -> ApiResult<CaptureState> {
    blocking(move || {
        let c = st.service.capture_arm(&who, &name, &req.image)?;
        Ok(CaptureState {
            capture: Some(c),
            environment: st.service.capture_environment(),
        })
    })
    .await
}

async fn capture_cancel(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<()> {
    blocking(move || st.service.capture_cancel(&who, &name)).await
}

async fn reset_all(
    State(st): State<ApiState>,
    Who(who): Who,
    _body: Unread,
) -> ApiResult<ResetReport> {
    blocking(move || st.service.reset_all(&who)).await
}

async fn events(
    State(st): State<ApiState>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Vec<khoi_state::Event>> {
    let f = q.filter();
    blocking(move || st.service.state().events_filtered(&f).map_err(Into::into)).await
}

async fn import_path(
    State(st): State<ApiState>,
    Who(who): Who,
    Body422(req): Body422<ImportPathRequest>,
) -> ApiResult<VersionView> {
    blocking(move || {
        st.service
            .import_path(&who, &req.name, std::path::Path::new(&req.path), &req.note)
    })
    .await
}

/// Stream a browser upload into the staging folder, then convert and import
/// it. The body is never held in memory: disk images are tens of GiB. It is
/// capped (`admin.import.max_upload`, and never past the free space above
/// the floor, checked before and while it is written), and dropped when it
/// stalls for `admin.import.upload_idle_timeout`.
async fn upload(
    State(st): State<ApiState>,
    Who(who): Who,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<VersionView> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    khoi_state::validate_name("name", &q.name)
        .map_err(|e| WebError::from(ServiceError::from(e)))?;
    let limits = st.service.import_limits();
    let staging = st.service.staging_dir();
    let too_large = |reason: String| {
        WebError::bad_body(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            reason,
            Some("body".into()),
        )
    };
    let over_cap = |cap: u64| {
        too_large(format!(
            "the upload is larger than the {} an upload may take now (admin.import.max_upload, \
             and the free space above the floor); import large images from a USB disk or with \
             the khoi command instead",
            staging::human(cap)
        ))
    };
    let cap = {
        let (l, s) = (limits.clone(), staging.clone());
        tokio::task::spawn_blocking(move || l.upload_cap(&s))
            .await
            .map_err(|e| WebError::internal(format_args!("upload: {e}")))?
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(over_cap(cap));
    }
    let io = |e: std::io::Error| WebError::internal(format_args!("upload: {e}"));
    let part = {
        let s = staging.clone();
        tokio::task::spawn_blocking(move || staging::Staged::create(&s, "upload", "part"))
            .await
            .map_err(|e| WebError::internal(format_args!("upload: {e}")))?
            .map_err(io)?
    };
    let std_file = part
        .file()
        .ok_or_else(|| WebError::internal("upload: staged file is not open"))?
        .try_clone()
        .map_err(io)?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut stream = body.into_data_stream();
    // Free space is asked again every so often: seats and other imports
    // write to the same filesystem while this one streams.
    const SPACE_EVERY: u64 = 64 << 20;
    let mut written = 0u64;
    let mut next_space = SPACE_EVERY;
    loop {
        let next = tokio::time::timeout(limits.upload_idle, stream.next()).await;
        let chunk = match next {
            Err(_) => {
                return Err(WebError::bad_body(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the upload stopped sending data for {} s and was dropped",
                        limits.upload_idle.as_secs()
                    ),
                    Some("body".into()),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::warn!("upload interrupted: {e}");
                return Err(WebError::from(ServiceError::Invalid {
                    field: "body".into(),
                    reason: "the upload was interrupted".into(),
                }));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        written += chunk.len() as u64;
        if written > cap {
            return Err(over_cap(cap));
        }
        file.write_all(&chunk).await.map_err(io)?;
        if written >= next_space {
            next_space = written + SPACE_EVERY;
            let (free, _) = staging::fs_space(&staging);
            if free < limits.free_space_floor {
                return Err(too_large(
                    "the data disk reached its free-space floor during the upload; the \
                     upload was removed"
                        .into(),
                ));
            }
        }
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    blocking(move || {
        let staged = staging::stage_upload(part, &staging, &limits)
            .map_err(|e| ServiceError::from_stage("body", e))?;
        let file = staged
            .file_name()
            .ok_or_else(|| ServiceError::Internal("staged file has no name".into()))?;
        let r = st.service.import(&who, &q.name, &file, &q.note);
        staged.finish(r.is_ok());
        r
    })
    .await
}

async fn update_seat(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    Body422(req): Body422<SeatUpdateWith>,
) -> ApiResult<SeatView> {
    blocking(move || {
        st.service
            .update_seat_with(&who, &name, &req.update, req.override_reason.as_deref())
    })
    .await
}

/// A seat change, with an admin's reason when it pins the seat to a version
/// that failed the image gate.
#[derive(Debug, Deserialize)]
pub struct SeatUpdateWith {
    #[serde(flatten)]
    pub update: SeatUpdate,
    #[serde(default, rename = "override")]
    pub override_reason: Option<String>,
}

async fn maintenance(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    Body422(req): Body422<MaintenanceRequest>,
) -> ApiResult<SeatView> {
    let up = SeatUpdate {
        maintenance: Some(req.on),
        ..SeatUpdate::default()
    };
    blocking(move || st.service.update_seat(&who, &name, &up)).await
}

async fn health(State(st): State<ApiState>) -> ApiResult<Health> {
    blocking(move || Ok(st.service.health())).await
}

#[derive(Debug, Deserialize)]
pub struct DoctorQuery {
    /// `en` for English; Vietnamese otherwise, like the page.
    #[serde(default)]
    pub lang: Option<String>,
}

/// The host checks of `khoi doctor` (admin only, see `guard`).
async fn doctor(
    State(st): State<ApiState>,
    axum::extract::Query(q): axum::extract::Query<DoctorQuery>,
) -> ApiResult<khoi_admin::doctor::Report> {
    let english = q.lang.as_deref() == Some("en");
    blocking(move || st.service.doctor(english)).await
}

async fn unknown_macs(State(st): State<ApiState>) -> ApiResult<Vec<UnknownMac>> {
    blocking(move || st.service.state().unknown_macs(100).map_err(Into::into)).await
}

fn scheduler(st: &ApiState) -> Result<Arc<Scheduler>, WebError> {
    st.scheduler.clone().ok_or_else(|| {
        WebError::from(ServiceError::NotFound(
            "this server runs no scheduler".into(),
        ))
    })
}

fn auth(st: &ApiState) -> Result<Arc<Auth>, WebError> {
    st.auth.clone().ok_or_else(|| {
        WebError::from(ServiceError::NotFound(
            "users exist only where the web page runs".into(),
        ))
    })
}

async fn schedule(State(st): State<ApiState>) -> ApiResult<ScheduleView> {
    let s = scheduler(&st)?;
    blocking(move || Ok(s.view())).await
}

async fn schedule_update(
    State(st): State<ApiState>,
    Who(who): Who,
    Body422(req): Body422<ScheduleSettings>,
) -> ApiResult<ScheduleView> {
    let s = scheduler(&st)?;
    blocking(move || {
        s.update(&who, &req)?;
        Ok(s.view())
    })
    .await
}

async fn schedule_run(
    State(st): State<ApiState>,
    Who(who): Who,
    _body: Unread,
) -> ApiResult<RunReport> {
    let s = scheduler(&st)?;
    blocking(move || s.run_now(&who, "manual")).await
}

async fn users(State(st): State<ApiState>) -> ApiResult<Vec<User>> {
    let _ = auth(&st)?;
    blocking(move || st.service.users()).await
}

async fn user_add(
    State(st): State<ApiState>,
    Who(who): Who,
    Body422(req): Body422<UserRequest>,
) -> ApiResult<()> {
    let a = auth(&st)?;
    blocking(move || a.add_user(&who, &req.name, &req.role, &req.password)).await
}

async fn user_update(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
    ctx: Option<axum::Extension<crate::guard::Ctx>>,
    Body422(req): Body422<UserUpdate>,
) -> ApiResult<()> {
    let a = auth(&st)?;
    let sid = ctx.map(|c| c.0.sid);
    blocking(move || {
        if let Some(role) = &req.role {
            a.set_role(&who, &name, role)?;
        }
        if let Some(pw) = &req.password {
            a.set_password(&who, &name, pw, sid.as_deref())?;
        }
        Ok(())
    })
    .await
}

async fn user_remove(
    State(st): State<ApiState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<()> {
    let a = auth(&st)?;
    blocking(move || a.remove_user(&who, &name)).await
}

#[cfg(test)]
mod peer_tests {
    #[test]
    fn uid_zero_is_root() {
        assert_eq!(super::user_name(0), "root");
        assert_eq!(super::user_name(4_000_000_000), "uid4000000000");
    }
}
