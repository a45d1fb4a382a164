//! The tokio transport: negotiation I/O, then a reader that keeps reading
//! while earlier requests run. The accept loop, where a request runs and the
//! reply writer are the shared serving seam ([`khoi_serve`]).
//!
//! Requests may finish in any order; NBD matches replies by cookie, so each
//! reply is queued to the connection's writer as soon as it is ready. In-flight
//! work is bounded per connection by a request count and a buffer budget,
//! which is also the back-pressure: the reader stops reading until the writer
//! has sent replies and released their permits.

use std::collections::VecDeque;
use std::fmt::Display;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use khoi_block::BlockError;
use khoi_serve::{Framer, Limits, Sink, Stream, Work, Writer, WriterOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_openssl::SslStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::handshake::{Action, CloseReason, Handshake, Negotiated, greeting};
use crate::tls::Tls;
use crate::transmission::{Op, Piece, Session, client_message, errno_for};
use crate::wire::{Request, RequestRepr};
use crate::{ExportResolver, NbdStats};

/// Requests in flight per connection.
pub const MAX_IN_FLIGHT: usize = 32;
/// Payload bytes in flight per connection (reads and writes).
pub const BUFFER_BUDGET: u64 = 64 << 20;
const BUFFER_UNIT: u64 = 64 << 10;
/// Connections served at once; further accepts wait.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time allowed from accept to entering transmission.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that accepts no reply bytes for this long is dropped.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("negotiation ended: {0:?}")]
    Negotiation(CloseReason),
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
    #[error("{0}")]
    Tls(io::Error),
    #[error("reply writer failed: {0}")]
    Writer(io::Error),
}

/// Serves NBD on `listener` until `shutdown` is cancelled, then waits for
/// open connections to finish their in-flight requests. No TLS: for
/// loopback and tests; [`serve_tcp`] takes TLS.
pub async fn serve(
    listener: TcpListener,
    exports: Arc<dyn ExportResolver>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with_stats(listener, exports, Arc::new(NbdStats::default()), shutdown).await
}

/// [`serve`], accumulating server-wide counters into `stats`.
pub async fn serve_with_stats(
    listener: TcpListener,
    exports: Arc<dyn ExportResolver>,
    stats: Arc<NbdStats>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_tcp(listener, exports, stats, None, shutdown).await
}

fn limits() -> Limits {
    Limits {
        max_connections: MAX_CONNECTIONS,
        ..Limits::default()
    }
}

/// Serves NBD over TCP. With `tls`, the server is in the spec's "TLS
/// required" mode: nothing is listed or opened before STARTTLS and a
/// successful PSK handshake.
pub async fn serve_tcp(
    listener: TcpListener,
    exports: Arc<dyn ExportResolver>,
    stats: Arc<NbdStats>,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    khoi_serve::serve(
        listener,
        limits(),
        "nbd",
        shutdown,
        move |stream, peer, token| {
            let (exports, stats, tls) = (exports.clone(), stats.clone(), tls.clone());
            async move {
                // Replies are small and latency-bound; batching is done with
                // MSG_MORE.
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%peer, error = %e, "nbd: TCP_NODELAY not set");
                }
                let r = serve_connection(stream, &peer, exports, stats, tls, token).await;
                log_end(&peer, r);
            }
        },
    )
    .await;
    Ok(())
}

/// Serves NBD on a unix socket. Who may connect is the socket file's
/// permissions (see [`khoi_serve::bind_owner_only`]); the peer's uid is
/// logged with each connection.
pub async fn serve_unix(
    listener: UnixListener,
    exports: Arc<dyn ExportResolver>,
    stats: Arc<NbdStats>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    khoi_serve::serve_unix(
        listener,
        limits(),
        "nbd",
        shutdown,
        move |stream, peer, token| {
            let (exports, stats) = (exports.clone(), stats.clone());
            async move {
                let r = serve_connection(stream, &peer, exports, stats, None, token).await;
                log_end(&peer, r);
            }
        },
    )
    .await;
    Ok(())
}

fn log_end(peer: &Peer, r: Result<(), ConnError>) {
    match r {
        Ok(()) => {}
        Err(ConnError::Negotiation(reason)) => {
            info!(%peer, ?reason, "nbd negotiation ended");
        }
        // A failed PSK handshake is someone without the key: worth a warning
        // with the address, as a failed login is.
        Err(e) => warn!(%peer, error = %e, "nbd connection closed with error"),
    }
}

/// How a connection's other end is named in the log: an address, or a
/// unix peer's uid and pid.
pub type Peer = dyn Display + Sync;

/// A connected byte stream NBD runs over: TCP, a unix socket, or TLS on
/// either. Raw sockets split into halves the writer can `sendfile(2)` to;
/// TLS splits into a [`khoi_serve::Stream`] that sees every byte.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: Sink;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl Transport for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Transport for UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl<S: Transport> Transport for SslStream<S> {
    type Read = ReadHalf<SslStream<S>>;
    type Write = Stream<WriteHalf<SslStream<S>>>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        let (r, w) = tokio::io::split(self);
        (r, Stream(w))
    }
}

/// Counters of one connection, plus the server-wide ones they roll into.
#[derive(Debug, Clone)]
struct Counters {
    global: Arc<NbdStats>,
    conn: Arc<NbdStats>,
}

impl Counters {
    fn add(&self, f: fn(&NbdStats) -> &std::sync::atomic::AtomicU64, n: u64) {
        NbdStats::add(f(&self.global), n);
        NbdStats::add(f(&self.conn), n);
    }
}

struct ActiveGuard(Arc<NbdStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0
            .connections_active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where negotiation left the connection.
enum Settled<S> {
    Clear(S, Negotiated),
    Tls(SslStream<S>, Negotiated),
    /// The client aborted or left during negotiation.
    Gone,
}

/// Serves one accepted connection: negotiation (with STARTTLS when `tls` is
/// set, which then is required), then transmission until the client
/// disconnects, a framing error, or `shutdown`.
pub async fn serve_connection<S: Transport>(
    stream: S,
    peer: &Peer,
    exports: Arc<dyn ExportResolver>,
    stats: Arc<NbdStats>,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    NbdStats::add(&stats.connections_total, 1);
    NbdStats::add(&stats.connections_active, 1);
    let _active = ActiveGuard(stats.clone());

    let settled = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, settle(stream, peer, exports, tls)) => match r {
            Err(_) => return Err(ConnError::HandshakeTimeout),
            Ok(Err(ConnError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                debug!(%peer, "nbd client left during negotiation");
                return Ok(());
            }
            Ok(r) => r?,
        },
    };
    let counters = Counters {
        global: stats,
        conn: Arc::new(NbdStats::default()),
    };
    let (result, negotiated) = match settled {
        Settled::Gone => return Ok(()),
        Settled::Clear(s, n) => (transmit_logged(s, peer, &n, &counters, shutdown).await, n),
        Settled::Tls(s, n) => (transmit_logged(s, peer, &n, &counters, shutdown).await, n),
    };
    let c = counters.conn.snapshot();
    info!(%peer, export = %negotiated.name, requests = c.requests, errors = c.errors,
        bytes_read = c.bytes_read, bytes_written = c.bytes_written, "nbd connection closed");
    result
}

async fn transmit_logged<S: Transport>(
    stream: S,
    peer: &Peer,
    n: &Negotiated,
    counters: &Counters,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    debug!(%peer, export = %n.name, structured = n.structured, flags = n.flags,
        "nbd transmission");
    transmit(stream, peer, n, counters.clone(), shutdown).await
}

/// Runs negotiation to its end, switching to TLS on STARTTLS.
async fn settle<S: Transport>(
    mut stream: S,
    peer: &Peer,
    exports: Arc<dyn ExportResolver>,
    tls: Option<Arc<Tls>>,
) -> Result<Settled<S>, ConnError> {
    stream.write_all(&greeting()).await?;
    let mut hs = match tls {
        Some(_) => Handshake::tls_required(),
        None => Handshake::new(),
    };
    let starttls = match negotiate(&mut stream, &mut hs, &exports).await? {
        Step::Enter(n) => return Ok(Settled::Clear(stream, n)),
        Step::Aborted => return Ok(Settled::Gone),
        Step::StartTls => {
            tls.ok_or_else(|| io::Error::other("handshake asked for TLS on a server without it"))?
        }
    };
    let accepted = starttls.accept(stream).await.map_err(ConnError::Tls)?;
    info!(%peer, identity = %accepted.identity, version = accepted.version,
        "nbd TLS established");
    let mut stream = accepted.stream;
    hs.tls_started();
    match negotiate(&mut stream, &mut hs, &exports).await? {
        Step::Enter(n) => Ok(Settled::Tls(stream, n)),
        Step::Aborted => Ok(Settled::Gone),
        Step::StartTls => Err(io::Error::other("STARTTLS inside TLS").into()),
    }
}

/// How one stretch of negotiation ended.
enum Step {
    Enter(Negotiated),
    Aborted,
    StartTls,
}

/// Feeds the handshake from `stream` until it enters transmission, closes,
/// or asks for TLS.
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hs: &mut Handshake,
    exports: &Arc<dyn ExportResolver>,
) -> Result<Step, ConnError> {
    loop {
        // wants() is at most MAX_OPTION_LEN, checked by the machine, and
        // never 0 here: every Open/List/StartTls is answered before reading
        // again. Exactly that much is read, so nothing sent after STARTTLS
        // (the client's TLS hello) is consumed in the clear.
        let mut buf = vec![0u8; hs.wants()];
        stream.read_exact(&mut buf).await?;
        let mut actions = VecDeque::from(hs.receive(&buf));
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Send(bytes) => stream.write_all(&bytes).await?,
                // The resolver may touch disk (opening overlays), so lookups
                // run off the reactor; the machine stays here.
                Action::Open(name) => {
                    let ex = exports.clone();
                    let opened = off_reactor(move || ex.open(&name)).await?;
                    actions.extend(hs.opened(opened));
                }
                Action::List => {
                    let ex = exports.clone();
                    let list = off_reactor(move || ex.list()).await?;
                    actions.extend(hs.listed(list));
                }
                Action::StartTls => {
                    stream.flush().await?;
                    return Ok(Step::StartTls);
                }
                Action::Enter(n) => {
                    stream.flush().await?;
                    return Ok(Step::Enter(*n));
                }
                Action::Close(CloseReason::Aborted) => {
                    stream.flush().await?;
                    return Ok(Step::Aborted);
                }
                Action::Close(reason) => {
                    stream.flush().await?;
                    return Err(ConnError::Negotiation(reason));
                }
            }
        }
    }
}

/// Runs `f` on the blocking pool.
async fn off_reactor<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("export lookup failed: {e}")))
}

/// A reply on its way to the writer, holding the in-flight permits until
/// it has been written.
struct Outgoing {
    pieces: Vec<Piece>,
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

async fn transmit<S: Transport>(
    stream: S,
    peer: &Peer,
    negotiated: &Negotiated,
    counters: Counters,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    let session = Arc::new(Session::new(negotiated));
    // Request jobs may run on the blocking pool and outlive this borrow.
    let peer_name: Arc<str> = Arc::from(peer.to_string());
    let (rd, wr) = stream.into_halves();
    // Pipelining clients send many small requests back to back; one buffered
    // read picks up a burst of headers instead of a syscall per header.
    let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
    // Cancelled by server shutdown, by the writer failing, or by the device
    // going away; the reader stops and in-flight replies drain.
    let conn = shutdown.child_token();
    let options = WriterOptions {
        stall_timeout: WRITE_STALL_TIMEOUT,
        ..WriterOptions::default()
    };
    let (tx, writer) = Writer::spawn(wr, NbdFramer, options, conn.clone());

    let ops = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget_units = u32::try_from(BUFFER_BUDGET / BUFFER_UNIT).unwrap_or(u32::MAX);
    let buffers = Arc::new(Semaphore::new(budget_units as usize));
    let mut result = Ok(());

    loop {
        let mut hdr = [0u8; RequestRepr::LEN];
        let read = tokio::select! {
            biased;
            _ = conn.cancelled() => break,
            r = rd.read_exact(&mut hdr) => r,
        };
        match read {
            Ok(_) => {}
            // A client closing between requests is a normal end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        }
        let view = Request::new_unchecked(&hdr[..]);
        let Ok(req) = RequestRepr::parse(&view) else {
            // Framing is lost: nothing after this can be trusted.
            result = Err(ConnError::BadMagic(view.magic()));
            break;
        };
        counters.add(|s| &s.requests, 1);

        let op = match session.validate(req.command, req.flags, req.offset, req.length) {
            Ok(Op::Disc) => break,
            Ok(op) => op,
            Err(rej) => {
                debug!(%peer, cookie = req.cookie, command = ?req.command, errno = ?rej.errno,
                    message = %rej.message, "nbd request rejected");
                counters.add(|s| &s.errors, 1);
                if rej.discard > 0 {
                    let n = tokio::io::copy(
                        &mut (&mut rd).take(u64::from(rej.discard)),
                        &mut tokio::io::sink(),
                    )
                    .await?;
                    if n != u64::from(rej.discard) {
                        break;
                    }
                }
                let bytes = session.error_reply(req.cookie, rej.errno, &rej.message);
                if tx
                    .send(Outgoing {
                        pieces: vec![Piece::Bytes(bytes)],
                        _permits: None,
                    })
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };

        let units = u64::from(op.buffer_bytes()).div_ceil(BUFFER_UNIT);
        let units = u32::try_from(units)
            .unwrap_or(budget_units)
            .min(budget_units);
        let permits = tokio::select! {
            biased;
            _ = conn.cancelled() => break,
            p = async {
                let op_permit = ops.clone().acquire_owned().await;
                let buf_permit = buffers.clone().acquire_many_owned(units).await;
                (op_permit, buf_permit)
            } => p,
        };
        let (Ok(op_permit), Ok(buf_permit)) = permits else {
            break;
        };
        let mut payload = Vec::new();
        if let Op::Write { len, .. } = op {
            // Bounded by MAX_PAYLOAD in validation.
            payload = vec![0u8; len as usize];
            if let Err(e) = rd.read_exact(&mut payload).await {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    result = Err(e.into());
                }
                break;
            }
        }

        let session = session.clone();
        let tx = tx.clone();
        let counters = counters.clone();
        let conn = conn.clone();
        let cookie = req.cookie;
        let command = req.command;
        let peer = peer_name.clone();
        let job = move || {
            let pieces = match session.execute(&op, &payload) {
                Ok(outcome) => {
                    match op {
                        Op::Read { len, .. } => counters.add(|s| &s.bytes_read, u64::from(len)),
                        Op::Write { len, .. } => counters.add(|s| &s.bytes_written, u64::from(len)),
                        _ => {}
                    }
                    session.success_reply(cookie, &op, outcome)
                }
                Err(err) => {
                    counters.add(|s| &s.errors, 1);
                    warn!(%peer, cookie, ?command, error = %err, "nbd request failed");
                    let errno = errno_for(&err, command);
                    let bytes = session.error_reply(cookie, errno, &client_message(&err));
                    if matches!(err, BlockError::Gone) {
                        // ESHUTDOWN obliges the client to disconnect; stop
                        // reading so nothing new starts on a dead device.
                        conn.cancel();
                    }
                    vec![Piece::Bytes(bytes)]
                }
            };
            drop(payload);
            // The writer may be gone (connection failed); nothing to do then.
            let _ = tx.send(Outgoing {
                pieces,
                _permits: Some((op_permit, buf_permit)),
            });
        };
        let work = match op {
            Op::Read { .. } => Work::ReadPlan,
            Op::Write { len, fua, .. } => Work::Write {
                len: u64::from(len),
                fua,
            },
            _ => Work::Other,
        };
        // The reply is queued by the job itself, wherever it ran.
        let _ = khoi_serve::engine::dispatch(work, job);
    }

    // The writer drains replies of requests still running, then exits once
    // every sender (ours and the tasks') is gone.
    drop(tx);
    drop(rd);
    let writer = writer
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("writer task failed: {e}"))));
    match (result, writer) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(ConnError::Writer(e)),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// NBD replies are final when queued (no sequence numbers to stamp), so
/// framing only hands their pieces to the writer.
struct NbdFramer;

impl Framer for NbdFramer {
    type Msg = Outgoing;

    fn frame(&mut self, msg: &mut Outgoing, out: &mut Vec<khoi_serve::Piece>) {
        out.extend(msg.pieces.drain(..).map(|p| match p {
            Piece::Bytes(b) => khoi_serve::Piece::Bytes(b.into()),
            Piece::Data(seg) => seg.into(),
        }));
    }
}

/// Read-side buffer per connection: enough for a few hundred request headers.
const READ_BUFFER: usize = 64 << 10;
