//! The tokio transport: per-connection login and full-feature tasks over
//! the shared serving seam ([`khoi_serve`]): its accept loop, its choice of
//! where a command runs, and its reply writer. What stays here is iSCSI's:
//! framing PDUs, and stamping StatSN/ExpCmdSN/MaxCmdSN in the order replies
//! reach the wire ([`IscsiFramer`]).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use khoi_block::{Checked, ReadSegment};
use khoi_serve::{Dispatched, Framer, Limits, Piece, ReplySender, Work, Writer, WriterOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::frame::{self, Digests, FrameError};
use crate::login::{Login, LoginOutcome, Step};
use crate::pdu::{InitiatorRepr, Pdu, RejectReason};
use crate::registry::{Admission, Notice, Registry};
use crate::resolver::{IscsiConfig, IscsiEvent, TargetResolver};
use crate::scsi::{self, LuInfo};
use crate::session::{self, Action, Out, ReadReply, Reply, Session, Stamp, Stamper};

/// Largest data segment accepted during login (text only).
const LOGIN_MAX_DATA: usize = 65_536;

static ZEROS: [u8; 4] = [0u8; 4];

/// Serve iSCSI on an already-bound listener until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    resolver: Arc<dyn TargetResolver>,
    config: IscsiConfig,
    shutdown: CancellationToken,
) {
    serve_with_registry(
        listener,
        resolver,
        config,
        Arc::new(Registry::new()),
        shutdown,
    )
    .await;
}

/// [`serve`] with a registry the caller keeps, to end a seat's sessions
/// ([`Registry::end_sessions_of`]) when its disk changes.
pub async fn serve_with_registry(
    listener: TcpListener,
    resolver: Arc<dyn TargetResolver>,
    config: IscsiConfig,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    let limits = Limits {
        max_connections: config.max_connections.max(1),
        ..Limits::default()
    };
    khoi_serve::serve(
        listener,
        limits,
        "iscsi",
        shutdown,
        move |stream, peer, token| {
            let (resolver, config, registry) = (resolver.clone(), config.clone(), registry.clone());
            async move {
                if let Err(e) = tune_socket(&stream) {
                    debug!(%peer, error = %e, "socket options");
                }
                match connection(stream, peer, resolver, config, registry, token).await {
                    Ok(()) => debug!(%peer, "iscsi connection closed"),
                    Err(e) => info!(%peer, error = %e, "iscsi connection ended"),
                }
            }
        },
    )
    .await;
}

fn tune_socket(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    // iPXE abandons its session when Windows takes over and never logs out:
    // keepalive is how that dead connection gets noticed.
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(s).set_tcp_keepalive(&ka)
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("peer closed mid-PDU")]
    Truncated,
    #[error("login timed out")]
    LoginTimeout,
    #[error("{0}")]
    Protocol(String),
}

/// The socket under a reader, for per-read socket options.
trait PeerSocket {
    fn sock(&self) -> socket2::SockRef<'_>;
}

impl PeerSocket for TcpStream {
    fn sock(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(self)
    }
}

impl PeerSocket for OwnedReadHalf {
    fn sock(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(self.as_ref())
    }
}

async fn read_pdu<R: AsyncRead + PeerSocket + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    digests: Digests,
    max_data: usize,
) -> Result<Option<Pdu>, ConnError> {
    loop {
        if let Some(p) = frame::decode(buf, digests, max_data)? {
            return Ok(Some(p));
        }
        if !buf.is_empty() {
            // Half a PDU is here and the peer may be waiting for our ACK
            // before it sends the rest: iPXE keeps one unacknowledged segment
            // and sends a PDU's header and data as two, so every login step
            // and every Data-Out would otherwise wait out a delayed ACK (40 ms).
            let _ = rd.sock().set_tcp_quickack(true);
        }
        buf.reserve(64 * 1024);
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnError::Truncated)
            };
        }
    }
}

async fn write_all_slices<W: AsyncWrite + Unpin>(w: &mut W, bufs: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

fn encode_pdu(pdu: &Pdu, digests: Digests, out: &mut Vec<Bytes>) {
    out.push(frame::encode_header(pdu, digests).freeze());
    if !pdu.data.is_empty() {
        out.push(pdu.data.clone());
        if digests.data || !pdu.data.len().is_multiple_of(4) {
            out.push(frame::encode_trailer(&pdu.data, digests).freeze());
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    resolver: Arc<dyn TargetResolver>,
    config: Arc<IscsiConfig>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let peer_s = peer.to_string();
    let login = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(config.login_timeout, login_phase(&mut stream, &mut rbuf, &peer_s, &resolver, &config, &registry)) => match r {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::LoginTimeout),
        },
    };
    let Some((outcome, dev)) = login else {
        return Ok(());
    };
    let target = outcome.target().map(str::to_owned);
    debug!(%peer, initiator = %outcome.initiator, target = ?target, tsih = outcome.tsih,
        params = ?outcome.params, "iscsi login complete");
    resolver.event(IscsiEvent::LoggedIn {
        peer: peer_s.clone(),
        initiator: outcome.initiator.clone(),
        target: target.clone(),
        tsih: outcome.tsih,
    });
    let cancel = shutdown.child_token();
    let mut admission = target.as_deref().map(|t| {
        registry.admit(
            &outcome.initiator,
            outcome.isid,
            t,
            outcome.tsih,
            cancel.clone(),
        )
    });
    if let Some(a) = admission.as_mut()
        && a.fencing() > 0
    {
        // The replaced session may still have writes in the pool: nothing
        // of this session runs until they are done, so an old write never
        // lands after a newer one. Our commands wait in the socket.
        debug!(%peer, initiator = %outcome.initiator, "waiting for the replaced session to finish");
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = a.fenced() => {}
        }
    }
    let ctx = SeatCtx {
        registry: &registry,
        admission: admission.as_mut(),
        cancel,
    };
    let result = full_feature(stream, rbuf, &outcome, dev, &resolver, &config, ctx).await;
    // Only now, with every job of this session finished, may a session
    // that replaces it start.
    drop(admission);
    resolver.event(IscsiEvent::SessionEnded {
        peer: peer_s,
        initiator: outcome.initiator.clone(),
        target,
        tsih: outcome.tsih,
    });
    result
}

/// A session's place among the other sessions of its LU, and how it is
/// told to end.
struct SeatCtx<'a> {
    registry: &'a Registry,
    admission: Option<&'a mut Admission>,
    cancel: CancellationToken,
}

async fn login_phase(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    peer: &str,
    resolver: &Arc<dyn TargetResolver>,
    config: &IscsiConfig,
    registry: &Registry,
) -> Result<Option<(LoginOutcome, Option<Checked>)>, ConnError> {
    let mut login = Login::new(
        resolver.clone(),
        config.offer,
        config.tpgt,
        config.cmd_window,
    )
    .with_peer(peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
    let nodigest = Digests::default();
    loop {
        let Some(pdu) = read_pdu(stream, rbuf, nodigest, LOGIN_MAX_DATA).await? else {
            return Ok(None);
        };
        let req = match InitiatorRepr::parse(&pdu.view()) {
            Ok(InitiatorRepr::Login(r)) => r,
            _ => {
                // Anything but a well-formed Login Request before login is
                // complete is a protocol error; there is no session to
                // reject it in, so answer "initiator error" and close.
                let mut out = Vec::new();
                encode_pdu(
                    &crate::login::malformed_response(&pdu.bhs),
                    nodigest,
                    &mut out,
                );
                let _ = write_all_slices(stream, &out).await;
                let _ = stream.shutdown().await;
                return Err(ConnError::Protocol("expected a Login Request".into()));
            }
        };
        let step = login.on_pdu(&req, &pdu.data);
        let (pdu, failure, ready_target) = match step {
            Step::Continue(p) => (p, None, None),
            Step::Fail(p, f) => (p, Some(f), None),
            Step::Ready { target } => {
                let (dev, lu_res) = match &target {
                    Some(t) => {
                        let r = resolver.clone();
                        let t2 = t.clone();
                        match tokio::task::spawn_blocking(move || r.open_lun0(&t2)).await {
                            Ok(Ok(d)) => (Some(d), Ok(())),
                            Ok(Err(e)) => (None, Err(e)),
                            Err(e) => (None, Err(e.to_string())),
                        }
                    }
                    None => (None, Ok(())),
                };
                let tsih = registry.allocate_tsih();
                match login.finish(tsih, lu_res) {
                    Ok((p, outcome)) => {
                        let mut out = Vec::new();
                        encode_pdu(&p, nodigest, &mut out);
                        write_all_slices(stream, &out).await?;
                        return Ok(Some((outcome, dev)));
                    }
                    Err((p, f)) => (p, Some(f), target),
                }
            }
        };
        let mut out = Vec::new();
        encode_pdu(&pdu, nodigest, &mut out);
        // A refusal is recorded before the reject is sent: an initiator that
        // resets the connection at once must not escape the log, and one that
        // has read the reject finds the event already there.
        let failed = failure.is_some();
        if let Some(f) = failure {
            info!(%peer, status = format_args!("{:#06x}", f.status), reason = %f.reason,
                initiator = ?f.initiator, target = ?f.target.as_ref().or(ready_target.as_ref()), "iscsi login failed");
            resolver.event(IscsiEvent::LoginFailed {
                peer: peer.to_owned(),
                initiator: f.initiator,
                target: f.target,
                status: f.status,
                reason: f.reason,
            });
        }
        write_all_slices(stream, &out).await?;
        if failed {
            let _ = stream.shutdown().await;
            return Ok(None);
        }
    }
}

enum WriterMsg {
    Out(Out),
    Read(ReadReply),
}

async fn full_feature(
    stream: TcpStream,
    mut rbuf: BytesMut,
    outcome: &LoginOutcome,
    dev: Option<Checked>,
    resolver: &Arc<dyn TargetResolver>,
    config: &IscsiConfig,
    mut seat: SeatCtx<'_>,
) -> Result<(), ConnError> {
    let cancel = seat.cancel.clone();
    let params = outcome.params;
    let digests = Digests {
        header: params.header_digest,
        data: params.data_digest,
    };
    let lu = match (&dev, outcome.target()) {
        (Some(d), Some(t)) => Some(LuInfo::new(
            d,
            t.to_owned(),
            resolver.identity(t),
            config.max_transfer,
            params.max_burst_length,
        )),
        _ => None,
    };
    let mut session = Session::new(
        resolver.clone(),
        outcome,
        lu,
        config.portal.clone(),
        config.tpgt,
        config.cmd_window,
        config.unit_attention_on_login,
    );
    let (mut rd, wr) = stream.into_split();
    let exp = Arc::new(AtomicU32::new(session.exp_cmd_sn));
    let framer = IscsiFramer {
        stamper: Stamper {
            stat_sn: outcome.stat_sn,
            window: config.cmd_window.max(1),
        },
        exp: exp.clone(),
        digests,
    };
    // Unbounded queue: what is in flight is bounded by the command window.
    let (tx, writer) = Writer::spawn(wr, framer, WriterOptions::default(), cancel.clone());
    let max_data = (params.target_mrdsl as usize).max(8192);
    let mut jobs: JoinSet<u32> = JoinSet::new();
    // One per connection: commands finished here borrow it, jobs sent to
    // the pool take a clone (refcounts, not strings).
    let done = Completion {
        tx: tx.clone(),
        materialize: digests.data,
        resolver: resolver.clone(),
        cancel: cancel.clone(),
        target: outcome.target().unwrap_or_default().into(),
        initiator: outcome.initiator.as_str().into(),
    };

    let mut last_rx = tokio::time::Instant::now();
    let mut user_timeout_set = false;
    let result: Result<(), ConnError> = 'conn: loop {
        let idle_at = last_rx + config.nop_interval.unwrap_or(Duration::MAX / 4);
        let pdu = tokio::select! {
            // Completions first, so the session forgets finished tags before
            // it reads a command that reuses one.
            biased;
            _ = cancel.cancelled() => break 'conn Ok(()),
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                if let Ok(itt) = done {
                    session.exec_done(itt);
                }
                continue;
            }
            Some(n) = next_notice(&mut seat.admission) => {
                obey(n, &mut session, &mut jobs).await;
                continue;
            }
            _ = tokio::time::sleep_until(idle_at), if config.nop_interval.is_some() => {
                last_rx = tokio::time::Instant::now();
                if !session.ping_pending() {
                    if tx.send(WriterMsg::Out(session.ping())).is_err() {
                        break 'conn Ok(());
                    }
                } else if session.answers_pings() {
                    info!(target = %done.target, initiator = %done.initiator,
                        "no answer to NOP-In: closing iscsi connection");
                    break 'conn Ok(());
                }
                // One that never answered (iPXE during INT13) is left to TCP.
                continue;
            }
            r = read_pdu(&mut rd, &mut rbuf, digests, max_data) => r,
        };
        last_rx = tokio::time::Instant::now();
        let pdu = match pdu {
            Ok(Some(p)) => p,
            Ok(None) => break Ok(()),
            Err(ConnError::Frame(FrameError::DataDigest { bhs })) => {
                // The PDU was framed correctly, so reject it and go on.
                let r = crate::pdu::Reject {
                    reason: RejectReason::DataDigestError,
                    seq: Default::default(),
                    data_sn: 0,
                };
                let out = Out {
                    pdu: Pdu::new(r.emit(), Bytes::copy_from_slice(&bhs)),
                    stamp: Stamp::Status,
                };
                if tx.send(WriterMsg::Out(out)).is_err() {
                    break Ok(());
                }
                continue;
            }
            Err(e) => break Err(e),
        };
        tracing::trace!(op = ?pdu.opcode(), itt = format_args!("{:#x}", pdu.view().itt()),
            bhs = ?&pdu.bhs[..], ahs = pdu.ahs.len(), len = pdu.data.len(), "rx");
        let actions = session.on_pdu(&pdu);
        tracing::trace!(?actions, "actions");
        exp.store(session.exp_cmd_sn, Ordering::Release);
        if session.answers_pings() && !user_timeout_set {
            // A full initiator stack that answers pings: from now on a
            // ping nobody acknowledges means the host is gone. Never set
            // before, as iPXE acknowledges nothing between INT13 calls.
            user_timeout_set = true;
            if let Err(e) = rd
                .sock()
                .set_tcp_user_timeout(Some(config.tcp_user_timeout))
            {
                debug!(error = %e, "TCP_USER_TIMEOUT");
            }
        }
        for a in actions {
            match a {
                Action::Send(o) => {
                    if tx.send(WriterMsg::Out(o)).is_err() {
                        break 'conn Ok(());
                    }
                }
                Action::Exec(ex) => {
                    let Some(dev) = dev.as_ref() else {
                        break 'conn Err(ConnError::Protocol("I/O without a LU".into()));
                    };
                    let itt = ex.itt;
                    let work = match &ex.job {
                        scsi::Job::Read { .. } => Work::ReadPlan,
                        scsi::Job::Write { data, flags, .. } => Work::Write {
                            len: data.len() as u64,
                            fua: flags.fua,
                        },
                        _ => Work::Other,
                    };
                    let (job, shape) = (ex.job, ex.shape);
                    let d = dev.clone();
                    match khoi_serve::engine::dispatch(work, move || scsi::execute(job, &d)) {
                        Dispatched::Executed(result) => {
                            done.deliver(&shape, result).await;
                            session.exec_done(itt);
                        }
                        Dispatched::Submitted(handle) => {
                            let done = done.clone();
                            jobs.spawn(async move {
                                let result = handle.await.unwrap_or_else(|e| {
                                    Err(khoi_block::BlockError::Io(io::Error::other(e.to_string())))
                                });
                                done.deliver(&shape, result).await;
                                itt
                            });
                        }
                    }
                }
                Action::Drain => drain(&mut jobs, &mut session).await,
                Action::AbortOthers(ua) => {
                    let (Some(t), Some(adm)) = (outcome.target(), seat.admission.as_mut()) else {
                        continue;
                    };
                    let acks = seat.registry.abort_others(t, adm.tsih(), ua);
                    for mut ack in acks {
                        // Serve our own notices meanwhile: two sessions
                        // resetting the LU at once must not wait on each other.
                        loop {
                            tokio::select! {
                                _ = &mut ack => break,
                                Some(n) = adm.notices.recv() => obey(n, &mut session, &mut jobs).await,
                                _ = cancel.cancelled() => break 'conn Ok(()),
                            }
                        }
                    }
                }
                Action::Close(why) => {
                    if why != "logout" {
                        info!(target = %done.target, initiator = %done.initiator, %why,
                            "closing iscsi connection");
                    }
                    break 'conn Ok(());
                }
            }
        }
    };
    // Let queued replies (a logout response, a reject) reach the wire.
    while jobs.join_next().await.is_some() {}
    // The writer ends once every sender is gone.
    drop((tx, done));
    let abort = writer.abort_handle();
    match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok(Err(e))) => debug!(error = %e, "iscsi writer"),
        Ok(_) => {}
        Err(_) => {
            // A peer that stopped reading: its replies are dropped.
            abort.abort();
            cancel.cancel();
        }
    }
    result
}

/// The next notice from another session of the LU; never, without a LU.
async fn next_notice(adm: &mut Option<&mut Admission>) -> Option<Notice> {
    match adm {
        Some(a) => a.notices.recv().await,
        None => std::future::pending().await,
    }
}

/// Wait until every job issued so far has been answered.
async fn drain(jobs: &mut JoinSet<u32>, session: &mut Session) {
    while let Some(done) = jobs.join_next().await {
        if let Ok(itt) = done {
            session.exec_done(itt);
        }
    }
}

/// Carry out another session's task management on this one's tasks.
async fn obey(n: Notice, session: &mut Session, jobs: &mut JoinSet<u32>) {
    match n {
        Notice::AbortAll { ua, ack } => {
            if session.abort_all(ua) {
                // Jobs already on the pool can't be recalled; the reset is
                // complete once they are done.
                drain(jobs, session).await;
            }
            let _ = ack.send(());
        }
    }
}

/// Where a finished job's reply goes.
#[derive(Clone)]
struct Completion {
    tx: ReplySender<WriterMsg>,
    /// Data digests are on: the writer needs read data in memory to sum it.
    materialize: bool,
    resolver: Arc<dyn TargetResolver>,
    cancel: CancellationToken,
    target: Arc<str>,
    initiator: Arc<str>,
}

impl Completion {
    async fn deliver(
        &self,
        shape: &session::ReplyShape,
        result: Result<scsi::JobOutput, khoi_block::BlockError>,
    ) {
        match session::reply(shape, result) {
            Reply::Pdus(outs) => {
                for o in outs {
                    let _ = self.tx.send(WriterMsg::Out(o));
                }
            }
            Reply::NoSpace(outs, detail) => {
                self.resolver.event(IscsiEvent::SpaceAllocationFailed {
                    target: self.target.to_string(),
                    initiator: self.initiator.to_string(),
                    detail,
                });
                for o in outs {
                    let _ = self.tx.send(WriterMsg::Out(o));
                }
            }
            Reply::Read(mut rr) => {
                if self.materialize {
                    // The file bytes are read on a blocking thread, never on
                    // the reactor, even when the command ran inline.
                    let segs = std::mem::take(&mut rr.segments);
                    match tokio::task::spawn_blocking(move || materialize(segs)).await {
                        Ok(Ok(segs)) => rr.segments = segs,
                        Ok(Err(e)) => {
                            warn!(target = %self.target, error = %e, "iscsi read for digest failed");
                            self.cancel.cancel();
                            return;
                        }
                        Err(e) => {
                            warn!(target = %self.target, error = %e, "iscsi read task failed");
                            self.cancel.cancel();
                            return;
                        }
                    }
                }
                let _ = self.tx.send(WriterMsg::Read(rr));
            }
            Reply::Close(why) => {
                warn!(target = %self.target, initiator = %self.initiator, %why, "closing iscsi connection");
                self.cancel.cancel();
            }
        }
    }
}

/// File segments read into memory (blocking).
fn materialize(segments: Vec<ReadSegment>) -> io::Result<Vec<ReadSegment>> {
    use std::os::unix::fs::FileExt;
    segments
        .into_iter()
        .map(|s| match s {
            ReadSegment::File { file, offset, len } => {
                let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
                file.read_exact_at(&mut buf, offset)?;
                Ok(ReadSegment::Mem(buf))
            }
            other => Ok(other),
        })
        .collect()
}

/// Frames replies for the writer, in wire order: StatSN is assigned here so
/// it follows the order PDUs reach the initiator, whichever command
/// finished first; ExpCmdSN/MaxCmdSN are the freshest the reader knows.
struct IscsiFramer {
    stamper: Stamper,
    exp: Arc<AtomicU32>,
    digests: Digests,
}

impl Framer for IscsiFramer {
    type Msg = WriterMsg;

    fn frame(&mut self, msg: &mut WriterMsg, out: &mut Vec<Piece>) {
        let exp = self.exp.load(Ordering::Acquire);
        match msg {
            WriterMsg::Out(o) => {
                self.stamper.apply(&mut o.pdu.bhs, o.stamp, exp);
                push_pdu(&o.pdu, self.digests, out);
            }
            WriterMsg::Read(rr) => {
                for p in &rr.pdus {
                    let mut bhs = p.bhs;
                    self.stamper.apply(&mut bhs, p.stamp, exp);
                    out.push(Piece::Bytes(frame::encode_bhs(&bhs, self.digests).freeze()));
                    let at = out.len();
                    Piece::slice(&rr.segments, p.offset, p.len as u64, out);
                    if self.digests.data {
                        // Materialized by the completion: every piece is in
                        // memory (or zeroes), so the digest can be summed.
                        let mut data = BytesMut::with_capacity(p.len);
                        for piece in out.drain(at..) {
                            match piece {
                                Piece::Bytes(b) => data.extend_from_slice(&b),
                                Piece::Zero(n) => data.resize(data.len() + us(n), 0),
                                Piece::File { .. } => {
                                    unreachable!("reads are materialized when data digests are on")
                                }
                            }
                        }
                        let trailer = frame::encode_trailer(&data, self.digests).freeze();
                        out.push(Piece::Bytes(data.freeze()));
                        out.push(Piece::Bytes(trailer));
                    } else {
                        let pad = frame::padded(p.len) - p.len;
                        if pad > 0 {
                            out.push(Piece::Bytes(Bytes::from_static(&ZEROS[..pad])));
                        }
                    }
                }
                if let Some(o) = &mut rr.response {
                    self.stamper.apply(&mut o.pdu.bhs, o.stamp, exp);
                    push_pdu(&o.pdu, self.digests, out);
                }
            }
        }
    }
}

/// A whole PDU (header, data, padding and digests) as pieces.
fn push_pdu(pdu: &Pdu, digests: Digests, out: &mut Vec<Piece>) {
    out.push(Piece::Bytes(frame::encode_header(pdu, digests).freeze()));
    if !pdu.data.is_empty() {
        out.push(Piece::Bytes(pdu.data.clone()));
        if digests.data || !pdu.data.len().is_multiple_of(4) {
            out.push(Piece::Bytes(
                frame::encode_trailer(&pdu.data, digests).freeze(),
            ));
        }
    }
}

/// Offsets within one read, which fits in memory, so never truncated.
fn us(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}
