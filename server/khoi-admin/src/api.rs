//! The JSON API over [`Service`]. Today it is served on the local control
//! socket (file permissions are the authentication); the web page will mount
//! the same routes behind its login.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::service::{
    Actor, AddSeat, ImageView, ResetReport, SeatDetails, SeatView, Service, ServiceError,
    VersionView,
};

/// The header a local client uses to say which person is running it, for the
/// audit log (the socket's peer uid is recorded alongside).
pub const USER_HEADER: &str = "x-khoi-user";

#[derive(Debug, Clone)]
pub struct ApiState {
    pub service: Arc<Service>,
    /// How this listener's callers are described in the audit log.
    pub source: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError(ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, field) = match &self.0 {
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, None),
            ServiceError::Invalid { field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, Some(field.clone()))
            }
            ServiceError::Internal(msg) => {
                tracing::error!("internal error in admin API: {msg}");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        let body = ErrorBody {
            error: self.0.to_string(),
            field,
        };
        (status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn actor(st: &ApiState, headers: &HeaderMap) -> Actor {
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .unwrap_or("unknown");
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
        Ok(r) => r.map(Json).map_err(ApiError),
        Err(e) => Err(ApiError(ServiceError::Internal(format!(
            "admin task failed: {e}"
        )))),
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    pub data_dir: String,
    pub staging_dir: String,
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
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PublishRequest {
    pub note: String,
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    subject: Option<String>,
    limit: Option<u32>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/images", get(images).post(import))
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
        .route("/v1/seats", get(seats).post(add_seat))
        .route("/v1/seats/{name}", get(seat).delete(remove_seat))
        .route("/v1/seats/{name}/reset", post(reset_seat))
        .route("/v1/reset-all", post(reset_all))
        .route("/v1/events", get(events))
        .with_state(state)
}

async fn info(State(st): State<ApiState>) -> Json<Info> {
    let svc = &st.service;
    Json(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        data_dir: svc.data_dir().display().to_string(),
        staging_dir: svc.staging_dir().display().to_string(),
    })
}

async fn images(State(st): State<ApiState>) -> Json<Vec<ImageView>> {
    Json(st.service.images())
}

async fn import(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<ImportRequest>,
) -> ApiResult<VersionView> {
    let who = actor(&st, &headers);
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
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<()> {
    let who = actor(&st, &headers);
    blocking(move || st.service.delete_image(&who, &name)).await
}

async fn delete_version(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((name, n)): Path<(String, u32)>,
) -> ApiResult<()> {
    let who = actor(&st, &headers);
    blocking(move || st.service.delete_version(&who, &name, n)).await
}

async fn rollback(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<RollbackRequest>,
) -> ApiResult<VersionView> {
    let who = actor(&st, &headers);
    blocking(move || st.service.rollback(&who, &name, req.to)).await
}

async fn draft_open(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<()> {
    let who = actor(&st, &headers);
    blocking(move || st.service.draft_open(&who, &name)).await
}

async fn draft_discard(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<()> {
    let who = actor(&st, &headers);
    blocking(move || st.service.draft_discard(&who, &name)).await
}

async fn draft_publish(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<PublishRequest>,
) -> ApiResult<VersionView> {
    let who = actor(&st, &headers);
    blocking(move || st.service.draft_publish(&who, &name, &req.note)).await
}

async fn seats(State(st): State<ApiState>) -> ApiResult<Vec<SeatView>> {
    blocking(move || st.service.seats()).await
}

async fn add_seat(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<AddSeat>,
) -> ApiResult<SeatView> {
    let who = actor(&st, &headers);
    blocking(move || st.service.add_seat(&who, &req)).await
}

async fn seat(State(st): State<ApiState>, Path(name): Path<String>) -> ApiResult<SeatDetails> {
    blocking(move || st.service.seat(&name)).await
}

async fn remove_seat(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<()> {
    let who = actor(&st, &headers);
    blocking(move || st.service.remove_seat(&who, &name)).await
}

async fn reset_seat(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<SeatView> {
    let who = actor(&st, &headers);
    blocking(move || st.service.reset_seat(&who, &name)).await
}

async fn reset_all(State(st): State<ApiState>, headers: HeaderMap) -> ApiResult<ResetReport> {
    let who = actor(&st, &headers);
    blocking(move || st.service.reset_all(&who)).await
}

async fn events(
    State(st): State<ApiState>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Vec<khoi_state::Event>> {
    let limit = q.limit.unwrap_or(100).min(10_000);
    blocking(move || {
        st.service
            .state()
            .events(q.subject.as_deref(), limit)
            .map_err(Into::into)
    })
    .await
}
