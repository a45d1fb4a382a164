//! HTTP boot scripts: `GET /boot/<mac>.ipxe`.
//!
//! The fetch is the seat's "I am booting" signal: [`BootDirectory::booting`] runs (on the
//! blocking pool, it may touch SQLite and the overlay) and completes before the script is
//! returned, so a stale session or overlay is gone before iPXE issues `sanboot`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{BootDirectory, UnknownMacReporter, parse_mac, script};

#[derive(Clone)]
struct Ctx {
    dir: Arc<dyn BootDirectory>,
    reporter: Arc<UnknownMacReporter>,
}

/// The boot-script routes. `reporter` should be the one the DHCP side uses, so a MAC is
/// reported once per period whichever way it shows up.
pub fn router(dir: Arc<dyn BootDirectory>, reporter: Arc<UnknownMacReporter>) -> Router {
    Router::new()
        .route("/boot/{file}", get(boot_script))
        .with_state(Ctx { dir, reporter })
}

/// Serves `router` on an already-bound listener until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

fn ipxe(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn boot_script(State(ctx): State<Ctx>, Path(file): Path<String>) -> Response {
    let Some(mac) = file.strip_suffix(".ipxe").and_then(parse_mac) else {
        return (StatusCode::NOT_FOUND, "expected /boot/<mac>.ipxe\n").into_response();
    };
    let joined = tokio::task::spawn_blocking(move || match ctx.dir.seat_by_mac(mac) {
        None => {
            ctx.reporter.report(&*ctx.dir, mac, None, SystemTime::now());
            tracing::info!(mac = %crate::mac_colon(mac), "boot script for unregistered MAC");
            (StatusCode::OK, script::unknown_script(mac))
        }
        Some(seat) => match script::seat_script(&seat) {
            Ok(body) => {
                ctx.dir.booting(&seat);
                tracing::info!(seat = %seat.seat, mac = %crate::mac_colon(mac), "seat booting");
                (StatusCode::OK, body)
            }
            Err(e) => {
                tracing::error!(seat = %seat.seat, error = %e, "cannot render boot script");
                (StatusCode::OK, script::config_error_script(mac, &e))
            }
        },
    })
    .await;
    match joined {
        // Unknown and misconfigured seats also get 200: iPXE shows a script's echo output
        // but only a terse error code for a 4xx/5xx.
        Ok((status, body)) => ipxe(status, body),
        Err(e) => {
            tracing::error!(error = %e, "boot script task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}
