//! The tokio transport: accept loop, negotiation I/O, a reader that keeps
//! reading while earlier requests run, and one writer per connection.
//!
//! Requests run on the blocking pool (the device API is synchronous) and may
//! finish in any order; NBD matches replies by cookie, so each reply is queued
//! to the connection's writer as soon as it is ready. In-flight work is
//! bounded per connection by a request count and a buffer budget, which is
//! also the back-pressure: the reader stops reading until permits free up.
//!
//! The writer is a plain thread doing blocking `sendmsg`/`sendfile` on the
//! socket, so slow disk reads never stall the reactor. It gathers every reply
//! already queued into one vectored send; golden data (`ReadSegment::File`)
//! above 16 KiB goes from page cache to socket with sendfile, smaller pieces
//! are copied into the batch because a syscall each costs more than the copy.
//! Because the socket is non-blocking (tokio owns it), the writer waits with
//! `poll`.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use khoi_block::{BlockError, ReadSegment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::handshake::{Action, CloseReason, Handshake, Negotiated, greeting};
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
    #[error("reply writer failed: {0}")]
    Writer(io::Error),
}

/// Serves NBD on `listener` until `shutdown` is cancelled, then waits for
/// open connections to finish their in-flight requests.
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
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE/ENFILE: back off instead of spinning.
                warn!(error = %e, "nbd accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let exports = exports.clone();
        let stats = stats.clone();
        let token = shutdown.child_token();
        tracker.spawn(async move {
            let _permit = permit;
            match serve_connection(stream, exports, stats, token).await {
                Ok(()) => {}
                Err(ConnError::Negotiation(reason)) => {
                    info!(%peer, ?reason, "nbd negotiation ended");
                }
                Err(e) => warn!(%peer, error = %e, "nbd connection closed with error"),
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
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

/// Serves one accepted connection: negotiation, then transmission until the
/// client disconnects, a framing error, or `shutdown`.
pub async fn serve_connection(
    mut stream: TcpStream,
    exports: Arc<dyn ExportResolver>,
    stats: Arc<NbdStats>,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    let peer = stream.peer_addr()?;
    // Replies are small and latency-bound; batching is done with MSG_MORE.
    stream.set_nodelay(true)?;
    NbdStats::add(&stats.connections_total, 1);
    NbdStats::add(&stats.connections_active, 1);
    let _active = ActiveGuard(stats.clone());

    let negotiated = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(&mut stream, exports)) => match r {
            Err(_) => return Err(ConnError::HandshakeTimeout),
            Ok(Err(ConnError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                debug!(%peer, "nbd client left during negotiation");
                return Ok(());
            }
            Ok(r) => r?,
        },
    };
    let Some(negotiated) = negotiated else {
        return Ok(());
    };
    debug!(%peer, export = %negotiated.name, structured = negotiated.structured,
        flags = negotiated.flags, "nbd transmission");
    let counters = Counters {
        global: stats,
        conn: Arc::new(NbdStats::default()),
    };
    let result = transmit(stream, peer, &negotiated, counters.clone(), shutdown).await;
    let c = counters.conn.snapshot();
    info!(%peer, export = %negotiated.name, requests = c.requests, errors = c.errors,
        bytes_read = c.bytes_read, bytes_written = c.bytes_written, "nbd connection closed");
    result
}

/// Runs the handshake; `None` means the client aborted cleanly.
async fn negotiate(
    stream: &mut TcpStream,
    exports: Arc<dyn ExportResolver>,
) -> Result<Option<Negotiated>, ConnError> {
    stream.write_all(&greeting()).await?;
    let mut hs = Handshake::new();
    loop {
        // wants() is at most MAX_OPTION_LEN, checked by the machine, and
        // never 0 here: every Open/List is answered before reading again.
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
                Action::Enter(n) => {
                    stream.flush().await?;
                    return Ok(Some(*n));
                }
                Action::Close(CloseReason::Aborted) => {
                    stream.flush().await?;
                    return Ok(None);
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

async fn transmit(
    stream: TcpStream,
    peer: SocketAddr,
    negotiated: &Negotiated,
    counters: Counters,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    let session = Arc::new(Session::new(negotiated));
    let (rd, wr) = stream.into_split();
    // Pipelining clients send many small requests back to back; one buffered
    // read picks up a burst of headers instead of a syscall per header.
    let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
    // Cancelled by server shutdown, by the writer failing, or by the device
    // going away; the reader stops and in-flight replies drain.
    let conn = shutdown.child_token();
    let (tx, rx) = mpsc::channel::<Outgoing>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let writer_cancel = conn.clone();
    std::thread::Builder::new()
        .name("nbd-writer".into())
        .spawn(move || {
            let r = writer_loop(&wr, rx);
            if r.is_err() {
                writer_cancel.cancel();
            }
            // Dropping the write half here sends FIN after the last reply.
            drop(wr);
            let _ = done_tx.send(r);
        })?;

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
        // A read only plans here: block states and the version map are in
        // memory, and the file bytes move later in the writer's sendfile.
        // A small write without FUA only lands in the page cache. Running
        // them inline saves two thread hand-offs per request, which cost
        // more than the work; flushes, FUA and large writes may wait on the
        // disk and go to the blocking pool.
        let inline = match op {
            Op::Read { .. } => true,
            Op::Write { len, fua, .. } => !fua && len <= INLINE_WRITE_MAX,
            _ => false,
        };
        if inline {
            job();
        } else {
            tokio::task::spawn_blocking(job);
        }
    }

    // The writer drains replies of requests still running, then exits once
    // every sender (ours and the tasks') is gone.
    drop(tx);
    drop(rd);
    let writer = done_rx
        .await
        .unwrap_or_else(|_| Err(io::Error::other("writer thread vanished")));
    match (result, writer) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(ConnError::Writer(e)),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Writes replies in the order they become ready. Replies already waiting
/// go out together in one vectored send: at queue depth 32 that is one
/// syscall for many small replies, not one or two each.
fn writer_loop(wr: &OwnedWriteHalf, rx: mpsc::Receiver<Outgoing>) -> io::Result<()> {
    let sock = Sock {
        fd: wr.as_ref().as_raw_fd(),
    };
    let mut batch: Vec<Outgoing> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        for msg in &mut batch {
            copy_small_files(&mut msg.pieces)?;
        }
        let mut iov: Vec<io::IoSlice<'_>> = Vec::new();
        for msg in &batch {
            for piece in &msg.pieces {
                match piece {
                    Piece::Bytes(b) => iov.push(io::IoSlice::new(b)),
                    Piece::Data(ReadSegment::Mem(v)) => iov.push(io::IoSlice::new(v)),
                    Piece::Data(ReadSegment::Zero { len }) => {
                        let mut left = *len;
                        while left > 0 {
                            let n =
                                usize::try_from(left).map_or(ZEROES.len(), |l| l.min(ZEROES.len()));
                            iov.push(io::IoSlice::new(&ZEROES[..n]));
                            left -= n as u64;
                            if iov.len() >= IOV_FLUSH {
                                sock.send_vectored(&mut iov, true)?;
                            }
                        }
                    }
                    Piece::Data(ReadSegment::File { file, offset, len }) => {
                        // MSG_MORE keeps the header and the file bytes in one
                        // segment; sendfile pushes at its end.
                        sock.send_vectored(&mut iov, true)?;
                        sock.send_file(file, *offset, *len, false)?;
                    }
                }
                if iov.len() >= IOV_FLUSH {
                    sock.send_vectored(&mut iov, true)?;
                }
            }
        }
        // Without MSG_MORE: the batch's tail goes out now. (A batch ending in
        // a file piece was pushed by sendfile itself, which ends uncorked.)
        sock.send_vectored(&mut iov, false)?;
        drop(iov);
        // Releases the permits: the reader may take more requests.
        batch.clear();
    }
    Ok(())
}

/// Replace small file pieces by their bytes: a pread from the page cache
/// costs less than a sendfile call of its own and lets the piece join the
/// batch's single send. Large pieces stay zero-copy.
fn copy_small_files(pieces: &mut [Piece]) -> io::Result<()> {
    for piece in pieces {
        if let Piece::Data(ReadSegment::File { file, offset, len }) = piece
            && *len <= COPY_READ_MAX
        {
            let mut buf = vec![0u8; usize::try_from(*len).unwrap_or(0)];
            file.read_exact_at(&mut buf, *offset)?;
            *piece = Piece::Data(ReadSegment::Mem(buf));
        }
    }
    Ok(())
}

/// File pieces up to this size are copied into the batch (see `copy_small_files`).
const COPY_READ_MAX: u64 = 16 << 10;
/// Replies gathered into one send at most.
const MAX_BATCH: usize = 64;
/// Flush the gather list before it nears IOV_MAX (1024).
const IOV_FLUSH: usize = 512;

/// Writes up to this size without FUA run on the connection task.
const INLINE_WRITE_MAX: u32 = 64 << 10;

/// Read-side buffer per connection: enough for a few hundred request headers.
const READ_BUFFER: usize = 64 << 10;

static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

/// Blocking-style writes on tokio's non-blocking socket fd. The fd stays
/// valid because the `OwnedWriteHalf` it came from outlives every use.
struct Sock {
    fd: RawFd,
}

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain old data (pointers and integers) for which all
    // zero bytes is the valid "no name, no iov, no control" value.
    unsafe { std::mem::zeroed() }
}

fn last_errno() -> io::Error {
    io::Error::last_os_error()
}

impl Sock {
    /// Waits until the socket accepts more bytes.
    fn wait_writable(&self, since: Instant) -> io::Result<()> {
        loop {
            if since.elapsed() > WRITE_STALL_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped reading replies",
                ));
            }
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call and
            // we pass a count of exactly one.
            let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
            if r < 0 {
                let e = last_errno();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r > 0 {
                // POLLERR/POLLHUP also end the wait; the next send reports them.
                return Ok(());
            }
        }
    }

    fn send_all(&self, mut buf: &[u8], more: bool) -> io::Result<()> {
        let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
        let mut since = Instant::now();
        while !buf.is_empty() {
            // SAFETY: `buf` points to `buf.len()` initialised bytes that stay
            // borrowed for the call; `fd` is a live socket (see `Sock`).
            let n = unsafe { libc::send(self.fd, buf.as_ptr().cast(), buf.len(), flags) };
            if n < 0 {
                let e = last_errno();
                match e.kind() {
                    io::ErrorKind::WouldBlock => self.wait_writable(since)?,
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
                continue;
            }
            // n >= 0 and at most buf.len().
            buf = &buf[n.unsigned_abs()..];
            since = Instant::now();
        }
        Ok(())
    }

    /// Send every slice (and empty the list), waiting when the socket is full.
    fn send_vectored(&self, iov: &mut Vec<io::IoSlice<'_>>, more: bool) -> io::Result<()> {
        let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
        let mut rest: &mut [io::IoSlice<'_>] = &mut iov[..];
        let mut since = Instant::now();
        while !rest.is_empty() {
            let mut msg: libc::msghdr = empty_msghdr();
            msg.msg_iov = rest.as_mut_ptr().cast();
            // At most IOV_FLUSH plus one piece's zero slices: far below IOV_MAX.
            msg.msg_iovlen = rest.len().min(1024) as _;
            // SAFETY: `msg` points at `msg_iovlen` IoSlices, which are
            // ABI-compatible with iovec and borrow live buffers for the call;
            // `fd` is a live socket (see `Sock`).
            let n = unsafe { libc::sendmsg(self.fd, &msg, flags) };
            if n < 0 {
                let e = last_errno();
                match e.kind() {
                    io::ErrorKind::WouldBlock => self.wait_writable(since)?,
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
                continue;
            }
            io::IoSlice::advance_slices(&mut rest, n.unsigned_abs());
            since = Instant::now();
        }
        iov.clear();
        Ok(())
    }

    /// `sendfile(2)` from the layer file; falls back to `pread` + `send` if
    /// the kernel or the file type does not support it.
    fn send_file(&self, file: &std::fs::File, offset: u64, len: u64, more: bool) -> io::Result<()> {
        let mut off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let mut remaining = len;
        let mut since = Instant::now();
        while remaining > 0 {
            // sendfile moves at most ~2 GiB per call; requests are far smaller.
            let chunk = usize::try_from(remaining.min(1 << 30)).unwrap_or(1 << 30);
            // SAFETY: both fds are open for the call (the socket per `Sock`, the
            // file borrowed from an Arc<File>), and `off` is a valid, exclusive
            // off_t the kernel updates in place.
            let n = unsafe { libc::sendfile(self.fd, file.as_raw_fd(), &mut off, chunk) };
            if n < 0 {
                let e = last_errno();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => self.wait_writable(since)?,
                    Some(libc::EINTR) => {}
                    Some(libc::EINVAL) | Some(libc::ENOSYS) => {
                        let pos = u64::try_from(off).unwrap_or(offset);
                        return self.send_file_copy(file, pos, remaining, more);
                    }
                    _ => return Err(e),
                }
                continue;
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "layer file shorter than its read plan",
                ));
            }
            remaining -= n.unsigned_abs() as u64;
            since = Instant::now();
        }
        Ok(())
    }

    fn send_file_copy(
        &self,
        file: &std::fs::File,
        mut offset: u64,
        mut len: u64,
        more: bool,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; usize::try_from(len.min(256 << 10)).unwrap_or(256 << 10)];
        while len > 0 {
            let n = usize::try_from(len.min(buf.len() as u64)).unwrap_or(buf.len());
            file.read_exact_at(&mut buf[..n], offset)?;
            offset += n as u64;
            len -= n as u64;
            self.send_all(&buf[..n], more || len > 0)?;
        }
        Ok(())
    }
}
