//! `/metrics`: the OpenMetrics text of the shared registry
//! ([`khoi_admin::Metrics`]), with the values that are read at scrape time
//! (overlay sizes, other servers' totals) brought up to date first.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::WebState;
use crate::error::WebError;

pub async fn metrics(State(st): State<WebState>, headers: HeaderMap) -> Result<Response, WebError> {
    if !st.policy.metrics.allows(&headers) {
        return Err(WebError::refuse(StatusCode::UNAUTHORIZED, "err.metrics"));
    }
    let svc = Arc::clone(&st.service);
    let text = tokio::task::spawn_blocking(move || {
        svc.refresh_overlay_metrics();
        svc.metrics().encode()
    })
    .await
    .map_err(|e| WebError::internal(format_args!("metrics task failed: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
