//! HTTP boot scripts: `GET /boot/<mac>.ipxe`.
//!
//! The fetch is the seat's "I am booting" signal: [`BootDirectory::booting`] runs (on the
//! blocking pool, it may touch SQLite and the overlay) and completes before the script is
//! returned, so a stale session or overlay is gone before iPXE issues `sanboot`.
//!
//! Because that signal resets a seat, a request for a seat's script from an address other
//! than the one DHCP last acknowledged for that MAC is refused (403) without calling
//! `booting`. With no DHCP record (mode `off`, or a restart since the seat's last DHCP) the
//! request is allowed. Serve with [`serve`] (or `into_make_service_with_connect_info`) so
//! the peer address is known; without it the check is skipped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{BootDirectory, BootState, mac_colon, parse_mac, script};

#[derive(Clone)]
struct Ctx {
    dir: Arc<dyn BootDirectory>,
    state: Arc<BootState>,
}

/// The boot-script routes. `state` must be the one the DHCP side uses: it carries the
/// unknown-MAC rate limit and the addresses DHCP acknowledged.
pub fn router(dir: Arc<dyn BootDirectory>, state: Arc<BootState>) -> Router {
    Router::new()
        .route("/boot/{file}", get(boot_script))
        .with_state(Ctx { dir, state })
}

/// `http://<server>:<port>/boot/<mac>.ipxe`, the URL [`router`] answers. It lives beside
/// the route so the two cannot drift, and so DHCP and the config both depend on this module
/// instead of on each other.
pub fn script_url(server_ip: Ipv4Addr, http_port: u16, mac: [u8; 6]) -> String {
    format!(
        "http://{server_ip}:{http_port}/boot/{}.ipxe",
        crate::mac_hyphen(mac)
    )
}

/// Serves `router` on an already-bound listener until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
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

fn peer_v4(req: &Request) -> Option<Ipv4Addr> {
    let ConnectInfo(addr) = req.extensions().get::<ConnectInfo<SocketAddr>>()?;
    match addr.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

async fn boot_script(State(ctx): State<Ctx>, Path(file): Path<String>, req: Request) -> Response {
    // Only the separated forms `script_url` and admins write; a bare 12-digit
    // name is one more spelling of every MAC for a flooder to use.
    let Some(mac) = file
        .strip_suffix(".ipxe")
        .filter(|m| m.len() == 17)
        .and_then(parse_mac)
    else {
        return (StatusCode::NOT_FOUND, "expected /boot/<mac>.ipxe\n").into_response();
    };
    if let (Some(peer), Some(seen)) = (peer_v4(&req), ctx.state.seen.get(mac))
        && peer != seen
    {
        tracing::warn!(mac = %mac_colon(mac), %peer, dhcp = %seen, "boot script requested from another address");
        return ipxe(
            StatusCode::FORBIDDEN,
            format!(
                "#!ipxe\necho Khoi: boot script for {} refused: DHCP gave this MAC {seen}, not {peer}\nexit 1\n",
                mac_colon(mac)
            ),
        );
    }
    let joined = tokio::task::spawn_blocking(move || match ctx.dir.seat_by_mac(mac) {
        None => {
            ctx.state
                .reporter
                .report(&*ctx.dir, mac, None, SystemTime::now());
            tracing::info!(mac = %mac_colon(mac), "boot script for unregistered MAC");
            (StatusCode::OK, script::unknown_script(mac))
        }
        Some(seat) => match script::seat_script(&seat) {
            Ok(body) => {
                ctx.dir.booting(&seat);
                tracing::info!(seat = %seat.seat, mac = %mac_colon(mac), "seat booting");
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
