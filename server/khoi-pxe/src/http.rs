//! HTTP boot scripts: `GET /boot/<mac>.ipxe`.
//!
//! The fetch offers the seat a boot: [`BootDirectory::offer_boot`] runs (on the blocking
//! pool, it touches SQLite) with the requester's address and returns the credentials this
//! boot's script carries. It changes nothing else: the boot begins, and an `on-boot` seat
//! is reset, when those credentials first log in (iPXE's `sanboot`), so a forged or
//! drive-by fetch neither resets a seat nor takes a running seat's credentials away.
//!
//! A request for a seat's script from an address other than the one DHCP last acknowledged
//! for that MAC is refused (403) as a first filter. With no DHCP record (mode `off`, or a
//! restart since the seat's last DHCP) the request is allowed: the credentials it gets only
//! work from the address that asked. A fetch from a machine on a connected network whose own
//! MAC (the kernel's neighbour table) is not the one in the URL is refused too. Serve with [`serve`] (or
//! `into_make_service_with_connect_info`) so the peer address is known.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
        .route(
            "/capture/{token}/{item}",
            get(capture_file)
                .post(capture_report)
                .layer(axum::extract::DefaultBodyLimit::max(CAPTURE_BODY_MAX)),
        )
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

/// Connection limits of the boot-script server. A script is a few hundred bytes asked
/// for once per boot, so the limits are tight: a LAN host holding connections open, or
/// sending its headers a byte at a time, must not starve the seats or the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections from one address at once; more are closed on accept.
    pub max_per_peer: usize,
    /// A connection that sends nothing for this long is closed (this bounds the
    /// header read too).
    pub idle: Duration,
    /// Every connection is closed this long after it was accepted, however busy.
    pub lifetime: Duration,
    /// Shutdown waits this long for open connections, then drops them.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            max_per_peer: 8,
            idle: Duration::from_secs(10),
            lifetime: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on an already-bound listener until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, cancel, HttpLimits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    limits: HttpLimits,
) -> std::io::Result<()> {
    let grace = limits.shutdown_grace;
    let listener = capped::Capped::new(listener, limits);
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<capped::Peer>(),
    )
    .with_graceful_shutdown({
        let cancel = cancel.clone();
        async move { cancel.cancelled().await }
    });
    tokio::select! {
        r = server => r,
        // A client that never finishes its request must not hold shutdown hostage.
        () = async { cancel.cancelled().await; tokio::time::sleep(grace).await } => Ok(()),
    }
}

mod capped {
    //! A listener that enforces [`HttpLimits`]: a global cap (a semaphore, so the
    //! backlog holds clients at the cap), a per-address cap, and per-connection idle
    //! and lifetime deadlines enforced in the stream itself.

    use std::collections::HashMap;
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use axum::extract::connect_info::Connected;
    use axum::serve::{IncomingStream, Listener};
    use parking_lot::Mutex;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{OwnedSemaphorePermit, Semaphore};
    use tokio::time::{Instant, Sleep};

    use super::HttpLimits;

    /// The remote address, as `ConnectInfo` for the routes.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Peer(pub SocketAddr);

    impl Connected<IncomingStream<'_, Capped>> for Peer {
        fn connect_info(stream: IncomingStream<'_, Capped>) -> Self {
            Peer(*stream.remote_addr())
        }
    }

    type PerPeer = Arc<Mutex<HashMap<IpAddr, usize>>>;

    pub(super) struct Capped {
        inner: TcpListener,
        limits: HttpLimits,
        slots: Arc<Semaphore>,
        per_peer: PerPeer,
    }

    impl Capped {
        pub(super) fn new(inner: TcpListener, limits: HttpLimits) -> Self {
            Capped {
                inner,
                limits,
                slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
                per_peer: PerPeer::default(),
            }
        }
    }

    impl Listener for Capped {
        type Io = Guarded;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Guarded, SocketAddr) {
            loop {
                let Ok(permit) = self.slots.clone().acquire_owned().await else {
                    // The semaphore is never closed; wait rather than spin.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let (stream, addr) = match self.inner.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "boot-script accept failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let ip = addr.ip().to_canonical();
                {
                    let mut m = self.per_peer.lock();
                    let n = m.entry(ip).or_default();
                    if *n >= self.limits.max_per_peer {
                        tracing::debug!(%addr, "boot-script connection over the per-address cap");
                        continue;
                    }
                    *n += 1;
                }
                let now = Instant::now();
                return (
                    Guarded {
                        inner: stream,
                        idle: self.limits.idle,
                        idle_sleep: Box::pin(tokio::time::sleep_until(now + self.limits.idle)),
                        end: Box::pin(tokio::time::sleep_until(now + self.limits.lifetime)),
                        _slot: Slot {
                            ip,
                            per_peer: self.per_peer.clone(),
                            _permit: permit,
                        },
                    },
                    addr,
                );
            }
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.inner.local_addr()
        }
    }

    /// Gives the connection's places back when it closes.
    struct Slot {
        ip: IpAddr,
        per_peer: PerPeer,
        _permit: OwnedSemaphorePermit,
    }

    impl Drop for Slot {
        fn drop(&mut self) {
            let mut m = self.per_peer.lock();
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }

    pub(super) struct Guarded {
        inner: TcpStream,
        idle: Duration,
        idle_sleep: Pin<Box<Sleep>>,
        end: Pin<Box<Sleep>>,
        _slot: Slot,
    }

    fn timed_out(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, what.to_string())
    }

    impl AsyncRead for Guarded {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.end.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out("connection lifetime over")));
            }
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(r) => {
                    let next = Instant::now() + self.idle;
                    self.idle_sleep.as_mut().reset(next);
                    Poll::Ready(r)
                }
                Poll::Pending => {
                    if self.idle_sleep.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Err(timed_out("connection idle")))
                    } else {
                        Poll::Pending
                    }
                }
            }
        }
    }

    impl AsyncWrite for Guarded {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.end.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out("connection lifetime over")));
            }
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    use std::future::Future as _;
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
    let addr = match req.extensions().get::<ConnectInfo<capped::Peer>>() {
        Some(ConnectInfo(capped::Peer(a))) => *a,
        None => req.extensions().get::<ConnectInfo<SocketAddr>>()?.0,
    };
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
    let peer_ip = peer_v4(&req);
    if let (Some(peer), Some(seen)) = (peer_ip, ctx.state.seen.get(mac))
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
    // The fetching machine's own MAC, as the kernel resolved it to answer
    // this connection, must be the seat's: a machine beside it on the LAN
    // may know the seat's MAC, but cannot fetch its boot (and its capture
    // token) without taking that MAC over too.
    if let Some(peer) = peer_ip {
        let neighbour = tokio::task::spawn_blocking(move || crate::neigh::lookup(peer))
            .await
            .unwrap_or(crate::neigh::Neighbour::Unknown);
        if neighbour.contradicts(mac) {
            tracing::warn!(mac = %mac_colon(mac), %peer, %neighbour,
                "boot script requested by another machine than the seat");
            return ipxe(
                StatusCode::FORBIDDEN,
                format!(
                    "#!ipxe\necho Khoi: boot script for {} refused: {peer} is another machine\nexit 1\n",
                    mac_colon(mac)
                ),
            );
        }
    }
    let peer = peer_ip.map(IpAddr::V4);
    // Where the seat reached this server: its capture environment reports there.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let joined = tokio::task::spawn_blocking(move || match ctx.dir.seat_by_mac(mac) {
        None => {
            ctx.state
                .reporter
                .report_from(&*ctx.dir, mac, None, peer, SystemTime::now());
            tracing::info!(mac = %mac_colon(mac), "boot script for unregistered MAC");
            (StatusCode::OK, script::unknown_script(mac))
        }
        Some(seat) => {
            // Checked before a boot is offered: a seat whose script cannot be rendered
            // gets no credentials either.
            if let Err(e) = script::seat_script(&seat) {
                tracing::error!(seat = %seat.seat, error = %e, "cannot render boot script");
                return (StatusCode::OK, script::config_error_script(mac, &e));
            }
            let name = seat.seat.clone();
            if let Some(offer) = ctx.dir.offer_capture(&seat, peer) {
                return match (offer, host) {
                    (Ok(cb), Some(host)) => {
                        match script::capture_script(&seat, &cb, &format!("http://{host}")) {
                            Ok(body) => {
                                tracing::info!(seat = %name, ?peer, "seat booting the capture environment");
                                (StatusCode::OK, body)
                            }
                            Err(e) => (StatusCode::OK, script::config_error_script(mac, &e)),
                        }
                    }
                    (Ok(_), None) => {
                        tracing::warn!(seat = %name, "capture script asked for without a Host header");
                        (StatusCode::OK, script::unavailable_script(mac))
                    }
                    (Err(e), _) => {
                        tracing::error!(seat = %name, error = %e, "cannot offer a capture");
                        (StatusCode::OK, script::unavailable_script(mac))
                    }
                };
            }
            match ctx.dir.offer_boot(seat, peer) {
                Ok(seat) => match script::seat_script(&seat) {
                    Ok(body) => {
                        tracing::info!(seat = %seat.seat, mac = %mac_colon(mac), ?peer, "seat booting");
                        (StatusCode::OK, body)
                    }
                    Err(e) => {
                        tracing::error!(seat = %seat.seat, error = %e, "cannot render boot script");
                        (StatusCode::OK, script::config_error_script(mac, &e))
                    }
                },
                Err(e) => {
                    tracing::error!(seat = %name, error = %e, "cannot offer a boot");
                    (StatusCode::OK, script::unavailable_script(mac))
                }
            }
        }
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

/// Largest report a capture environment sends (a few numbers, or a reason).
const CAPTURE_BODY_MAX: usize = 4096;

fn plain(status: StatusCode, body: String) -> Response {
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

/// `GET /capture/<token>/{vmlinuz,initrd.gz}`: the capture environment, only for an
/// active capture's token and from the address that fetched its script (the files are
/// tens of megabytes: nobody else makes this server send them).
async fn capture_file(
    State(ctx): State<Ctx>,
    Path((token, item)): Path<(String, String)>,
    req: Request,
) -> Response {
    let peer = peer_v4(&req).map(IpAddr::V4);
    let dir = Arc::clone(&ctx.dir);
    let path = tokio::task::spawn_blocking(move || dir.capture_file(&token, peer, &item))
        .await
        .ok()
        .flatten();
    let Some(path) = path else {
        return plain(StatusCode::NOT_FOUND, "no such capture file\n".into());
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the capture environment");
            plain(
                StatusCode::NOT_FOUND,
                "the capture environment is not built on the server\n".into(),
            )
        }
    }
}

/// `POST /capture/<token>/<verb>`: the capture environment's reports.
async fn capture_report(
    State(ctx): State<Ctx>,
    Path((token, verb)): Path<(String, String)>,
    req: Request,
) -> Response {
    let peer = peer_v4(&req).map(IpAddr::V4);
    let Ok(body) = axum::body::to_bytes(req.into_body(), CAPTURE_BODY_MAX).await else {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "report too large\n".into());
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let dir = Arc::clone(&ctx.dir);
    let answer =
        tokio::task::spawn_blocking(move || dir.capture_report(&token, peer, &verb, &body)).await;
    match answer {
        Ok((code, text)) => plain(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            text,
        ),
        Err(e) => {
            tracing::error!(error = %e, "capture report task failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into())
        }
    }
}
