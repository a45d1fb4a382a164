//! The tokio transport: accept loop, per-connection login and full-feature
//! tasks, block I/O on the blocking pool, and a writer task that stamps
//! sequence numbers and sends Data-In straight from files with sendfile(2)
//! when digests are off.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use khoi_block::{Checked, ReadSegment, cache};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::frame::{self, Digests, FrameError};
use crate::login::{Login, LoginOutcome, Step};
use crate::pdu::{InitiatorRepr, Pdu, RejectReason};
use crate::registry::Registry;
use crate::resolver::{IscsiConfig, IscsiEvent, TargetResolver};
use crate::scsi::{self, LuInfo};
use crate::session::{self, Action, DataInPdu, Out, ReadReply, Reply, Session, Stamp, Stamper};

/// Largest data segment accepted during login (text only).
const LOGIN_MAX_DATA: usize = 65_536;
/// Replies queued for the writer before I/O tasks wait.
const WRITER_QUEUE: usize = 256;

static ZEROS: [u8; 65_536] = [0u8; 65_536];

/// Serve iSCSI on an already-bound listener until `shutdown` is cancelled.
/// Writes up to this size without FUA run on the connection's task.
const INLINE_WRITE_MAX: usize = 64 << 10;

pub async fn serve(
    listener: TcpListener,
    resolver: Arc<dyn TargetResolver>,
    config: IscsiConfig,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    let registry = Arc::new(Registry::new());
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "iscsi accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let resolver = resolver.clone();
        let config = config.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            if let Err(e) = tune_socket(&stream) {
                debug!(%peer, error = %e, "socket options");
            }
            match connection(stream, peer, resolver, config, registry, shutdown).await {
                Ok(()) => debug!(%peer, "iscsi connection closed"),
                Err(e) => info!(%peer, error = %e, "iscsi connection ended"),
            }
        });
    }
    tracker.close();
    tracker.wait().await;
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
    if target.is_some() {
        registry.insert(
            &outcome.initiator,
            outcome.isid,
            outcome.tsih,
            cancel.clone(),
        );
    }
    let result = full_feature(stream, rbuf, &outcome, dev, &resolver, &config, cancel).await;
    if target.is_some() {
        registry.remove(&outcome.initiator, outcome.isid, outcome.tsih);
    }
    resolver.event(IscsiEvent::SessionEnded {
        peer: peer_s,
        initiator: outcome.initiator.clone(),
        target,
        tsih: outcome.tsih,
    });
    result
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
    );
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
        write_all_slices(stream, &out).await?;
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
    cancel: CancellationToken,
) -> Result<(), ConnError> {
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
    let (tx, rx) = mpsc::channel::<WriterMsg>(WRITER_QUEUE);
    let stamper = Stamper {
        stat_sn: outcome.stat_sn,
        window: config.cmd_window.max(1),
    };
    let writer_cancel = cancel.clone();
    let writer = tokio::spawn(writer_task(
        wr,
        rx,
        stamper,
        exp.clone(),
        digests,
        writer_cancel,
    ));
    let max_data = (params.target_mrdsl as usize).max(8192);
    let mut jobs: JoinSet<u32> = JoinSet::new();
    // One per connection: commands finished here borrow it, jobs sent to
    // the pool take a clone (refcounts, not strings).
    let done = Completion {
        tx: tx.clone(),
        resolver: resolver.clone(),
        cancel: cancel.clone(),
        target: outcome.target().unwrap_or_default().into(),
        initiator: outcome.initiator.as_str().into(),
    };

    let result: Result<(), ConnError> = 'conn: loop {
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
            r = read_pdu(&mut rd, &mut rbuf, digests, max_data) => r,
        };
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
                if tx.send(WriterMsg::Out(out)).await.is_err() {
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
        for a in actions {
            match a {
                Action::Send(o) => {
                    if tx.send(WriterMsg::Out(o)).await.is_err() {
                        break 'conn Ok(());
                    }
                }
                Action::Exec(ex) => {
                    let Some(dev) = dev.as_ref() else {
                        break 'conn Err(ConnError::Protocol("I/O without a LU".into()));
                    };
                    let itt = ex.itt;
                    // A read only plans (block states and the version map are
                    // in memory; the bytes move in the writer), and a small
                    // write without FUA only lands in the page cache, so both
                    // run right here: a task or the blocking pool's two thread
                    // hand-offs would cost more than the work. Flushes, FUA
                    // and large transfers may wait on the disk and go to the
                    // pool, so the connection keeps reading meanwhile.
                    let inline = match &ex.job {
                        scsi::Job::Read { .. } => true,
                        scsi::Job::Write { data, flags, .. } => {
                            !flags.fua && data.len() <= INLINE_WRITE_MAX
                        }
                        _ => false,
                    };
                    if inline {
                        let result = scsi::execute(ex.job, dev);
                        done.deliver(&ex.shape, result).await;
                        session.exec_done(itt);
                    } else {
                        let (dev, done) = (dev.clone(), done.clone());
                        jobs.spawn(async move {
                            let (job, shape) = (ex.job, ex.shape);
                            let result =
                                match tokio::task::spawn_blocking(move || scsi::execute(job, &dev))
                                    .await
                                {
                                    Ok(r) => r,
                                    Err(e) => Err(khoi_block::BlockError::Io(io::Error::other(
                                        e.to_string(),
                                    ))),
                                };
                            done.deliver(&shape, result).await;
                            itt
                        });
                    }
                }
                Action::Drain => {
                    while let Some(done) = jobs.join_next().await {
                        if let Ok(itt) = done {
                            session.exec_done(itt);
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
    match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok(Err(e))) => debug!(error = %e, "iscsi writer"),
        Ok(_) => {}
        Err(_) => cancel.cancel(),
    }
    result
}

/// Reads up to this size are copied into the batch and sent with one
/// vectored write together with the other queued replies; larger ones go to
/// the socket with sendfile. For 4 KiB reads the copy (one pread from the page
/// cache) costs less than the cork, header write, sendfile and uncork it
/// replaces, and it lets 32 queued replies share one syscall.
const COPY_READ_MAX: usize = 16 << 10;
/// A batch stops growing at this many buffers (IOV_MAX is 1024).
const BATCH_BUFS: usize = 512;

/// Where a finished job's reply goes.
#[derive(Clone)]
struct Completion {
    tx: mpsc::Sender<WriterMsg>,
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
                    let _ = self.tx.send(WriterMsg::Out(o)).await;
                }
            }
            Reply::NoSpace(outs, detail) => {
                self.resolver.event(IscsiEvent::SpaceAllocationFailed {
                    target: self.target.to_string(),
                    initiator: self.initiator.to_string(),
                    detail,
                });
                for o in outs {
                    let _ = self.tx.send(WriterMsg::Out(o)).await;
                }
            }
            Reply::Read(rr) => {
                let _ = self.tx.send(WriterMsg::Read(rr)).await;
            }
            Reply::Close(why) => {
                warn!(target = %self.target, initiator = %self.initiator, %why, "closing iscsi connection");
                self.cancel.cancel();
            }
        }
    }
}

async fn writer_task(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<WriterMsg>,
    mut stamper: Stamper,
    exp: Arc<AtomicU32>,
    digests: Digests,
    cancel: CancellationToken,
) -> io::Result<()> {
    let mut bufs: Vec<Bytes> = Vec::new();
    let r: io::Result<()> = async {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = cancel.cancelled() => break,
            };
            let mut msg = Some(msg);
            // Everything already queued goes out in as few writes as possible.
            while let Some(m) = msg.take() {
                match m {
                    WriterMsg::Out(mut o) => {
                        stamper.apply(&mut o.pdu.bhs, o.stamp, exp.load(Ordering::Acquire));
                        encode_pdu(&o.pdu, digests, &mut bufs);
                    }
                    WriterMsg::Read(rr) if read_len(&rr) <= COPY_READ_MAX => {
                        encode_read_copied(&mut wr, rr, &mut stamper, &exp, digests, &mut bufs)
                            .await?;
                    }
                    WriterMsg::Read(rr) => {
                        write_all_slices(&mut wr, &bufs).await?;
                        bufs.clear();
                        write_read(&mut wr, rr, &mut stamper, &exp, digests).await?;
                    }
                }
                if bufs.len() < BATCH_BUFS {
                    msg = rx.try_recv().ok();
                }
            }
            if !bufs.is_empty() {
                write_all_slices(&mut wr, &bufs).await?;
                bufs.clear();
            }
        }
        Ok(())
    }
    .await;
    let _ = wr.shutdown().await;
    r
}

fn read_len(rr: &ReadReply) -> usize {
    rr.pdus.iter().map(|p| p.len).sum()
}

/// Encode a small read's Data-In PDUs (and its response) with the payload
/// copied in, so they can join a batch.
async fn encode_read_copied(
    wr: &mut OwnedWriteHalf,
    rr: ReadReply,
    stamper: &mut Stamper,
    exp: &AtomicU32,
    digests: Digests,
    bufs: &mut Vec<Bytes>,
) -> io::Result<()> {
    let total = read_len(&rr);
    let ReadReply {
        pdus,
        segments,
        response,
    } = rr;
    let data = match copy_segments(&segments, total, false)? {
        Some(d) => d,
        None => {
            // Not all in the page cache: the disk read goes to a blocking
            // thread so this worker keeps serving the other connections, and
            // the replies batched so far go out rather than wait for it.
            write_all_slices(wr, bufs).await?;
            bufs.clear();
            tokio::task::spawn_blocking(move || copy_segments(&segments, total, true))
                .await
                .map_err(io::Error::other)??
                .ok_or_else(|| io::Error::other("blocking read came back empty"))?
        }
    };
    for p in pdus {
        let start = us(p.offset);
        let payload = data.slice(start..start + p.len);
        let mut out = p.with_data(payload);
        stamper.apply(&mut out.pdu.bhs, out.stamp, exp.load(Ordering::Acquire));
        encode_pdu(&out.pdu, digests, bufs);
    }
    if let Some(mut o) = response {
        stamper.apply(&mut o.pdu.bhs, o.stamp, exp.load(Ordering::Acquire));
        encode_pdu(&o.pdu, digests, bufs);
    }
    Ok(())
}

/// The read's bytes in one buffer. Without `may_block`, file ranges are read
/// only from the page cache and `None` means some page was not there.
fn copy_segments(
    segments: &[ReadSegment],
    total: usize,
    may_block: bool,
) -> io::Result<Option<Bytes>> {
    use std::os::unix::fs::FileExt;
    let mut data = BytesMut::with_capacity(total);
    for s in segments {
        match s {
            ReadSegment::File { file, offset, len } => {
                let at = data.len();
                data.resize(at + us(*len), 0);
                if may_block {
                    file.read_exact_at(&mut data[at..], *offset)?;
                } else if cache::read_nowait(file, &mut data[at..], *offset)? < us(*len) {
                    return Ok(None);
                }
            }
            ReadSegment::Zero { len } => data.resize(data.len() + us(*len), 0),
            ReadSegment::Mem(v) => data.extend_from_slice(v),
        }
    }
    Ok(Some(data.freeze()))
}

/// Offsets within one read, which fits in memory, so never truncated.
fn us(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The parts of a read's segments that make up `[start, start+len)` of its
/// data: each segment with the offset and length of the part inside it.
fn parts(
    segments: &[ReadSegment],
    start: u64,
    len: u64,
) -> impl Iterator<Item = (&ReadSegment, u64, u64)> {
    let end = start + len;
    segments
        .iter()
        .scan(0u64, |pos, s| {
            let s_start = *pos;
            *pos += s.len();
            Some((s, s_start, *pos))
        })
        .skip_while(move |&(_, _, s_end)| s_end <= start)
        .take_while(move |&(_, s_start, _)| s_start < end)
        .map(move |(s, s_start, s_end)| {
            let a = start.max(s_start) - s_start;
            let b = end.min(s_end) - s_start;
            (s, a, b - a)
        })
}

fn pread_exact(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let n = usize::try_from(len).map_err(io::Error::other)?;
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

async fn write_read(
    wr: &mut OwnedWriteHalf,
    rr: ReadReply,
    stamper: &mut Stamper,
    exp: &AtomicU32,
    digests: Digests,
) -> io::Result<()> {
    let ReadReply {
        pdus,
        segments,
        response,
    } = rr;
    // sendfile would wait for the disk right here, on a reactor thread:
    // bring cold ranges into the page cache on a blocking thread first.
    for s in &segments {
        if let ReadSegment::File { file, offset, len } = s
            && !cache::resident(file, *offset, *len)
        {
            let (file, offset, len) = (file.clone(), *offset, *len);
            tokio::task::spawn_blocking(move || cache::warm(&file, offset, len))
                .await
                .map_err(io::Error::other)??;
        }
    }
    // Headers and sendfile payloads are separate syscalls; corking lets the
    // kernel pack them into full segments instead of a 48-byte one each.
    let cork = !digests.data
        && segments
            .iter()
            .any(|s| matches!(s, ReadSegment::File { .. }));
    if cork {
        let _ = socket2::SockRef::from(wr.as_ref()).set_tcp_cork(true);
    }
    let r = write_read_pdus(wr, pdus, &segments, response, stamper, exp, digests).await;
    if cork {
        let _ = socket2::SockRef::from(wr.as_ref()).set_tcp_cork(false);
    }
    r
}

async fn write_read_pdus(
    wr: &mut OwnedWriteHalf,
    pdus: Vec<DataInPdu>,
    segments: &[ReadSegment],
    response: Option<Out>,
    stamper: &mut Stamper,
    exp: &AtomicU32,
    digests: Digests,
) -> io::Result<()> {
    let mut bufs: Vec<Bytes> = Vec::new();
    for p in pdus {
        let (start, len) = (p.offset, p.len);
        let mut bhs = p.bhs;
        stamper.apply(&mut bhs, p.stamp, exp.load(Ordering::Acquire));
        bufs.push(frame::encode_bhs(&bhs, digests).freeze());
        if digests.data {
            // The digest needs the bytes in hand: read file ranges.
            let mut data = BytesMut::with_capacity(len);
            for (s, at, n) in parts(segments, start, len as u64) {
                match s {
                    ReadSegment::File { file, offset, .. } => {
                        let (file, offset) = (file.clone(), offset + at);
                        let b = tokio::task::spawn_blocking(move || pread_exact(&file, offset, n))
                            .await
                            .map_err(io::Error::other)??;
                        data.extend_from_slice(&b);
                    }
                    ReadSegment::Zero { .. } => data.resize(data.len() + us(n), 0),
                    ReadSegment::Mem(v) => data.extend_from_slice(&v[us(at)..us(at + n)]),
                }
            }
            let trailer = frame::encode_trailer(&data, digests).freeze();
            bufs.push(data.freeze());
            bufs.push(trailer);
        } else {
            for (s, at, n) in parts(segments, start, len as u64) {
                match s {
                    ReadSegment::File { file, offset, .. } => {
                        write_all_slices(wr, &bufs).await?;
                        bufs.clear();
                        send_file(wr, file, offset + at, n).await?;
                    }
                    ReadSegment::Zero { .. } => {
                        let mut n = n;
                        while n > 0 {
                            let k = n.min(ZEROS.len() as u64);
                            bufs.push(Bytes::from_static(&ZEROS[..us(k)]));
                            n -= k;
                        }
                    }
                    // Only in-memory test devices plan Mem segments; copying
                    // their bytes here is what keeps one segment type from
                    // the device to the socket.
                    ReadSegment::Mem(v) => {
                        bufs.push(Bytes::copy_from_slice(&v[us(at)..us(at + n)]));
                    }
                }
            }
            let pad = frame::padded(len) - len;
            if pad > 0 {
                bufs.push(Bytes::from_static(&ZEROS[..pad]));
            }
        }
        if bufs.len() > 48 {
            write_all_slices(wr, &bufs).await?;
            bufs.clear();
        }
    }
    if let Some(mut o) = response {
        stamper.apply(&mut o.pdu.bhs, o.stamp, exp.load(Ordering::Acquire));
        encode_pdu(&o.pdu, digests, &mut bufs);
    }
    write_all_slices(wr, &bufs).await
}

/// sendfile(2) a file range to the socket, waiting for writability.
async fn send_file(
    wr: &OwnedWriteHalf,
    file: &std::fs::File,
    mut offset: u64,
    mut len: u64,
) -> io::Result<()> {
    let sock: &TcpStream = wr.as_ref();
    while len > 0 {
        sock.writable().await?;
        let res = sock.try_io(Interest::WRITABLE, || {
            let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
            let count = usize::try_from(len.min(1 << 30)).unwrap_or(1 << 30);
            // SAFETY: both descriptors are open for the duration of the call
            // (the socket half and the Arc'd file are borrowed), `off` is a
            // valid, exclusively borrowed off_t, and sendfile writes nothing
            // into our memory besides it.
            let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(u64::try_from(n).unwrap_or(0))
            }
        });
        match res {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than its read plan",
                ));
            }
            Ok(n) => {
                offset += n;
                len -= n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                // Filesystems without sendfile support: copy instead.
                let file = file.try_clone()?;
                let data = tokio::task::spawn_blocking(move || pread_exact(&file, offset, len))
                    .await
                    .map_err(io::Error::other)??;
                let mut w: &TcpStream = sock;
                return write_all_ref(&mut w, &data).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn write_all_ref(sock: &mut &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        sock.writable().await?;
        match sock.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What `parts` selects, with segments named by index.
    fn cut(segments: &[ReadSegment], start: u64, len: u64) -> Vec<(usize, u64, u64)> {
        parts(segments, start, len)
            .map(|(s, at, n)| {
                let i = segments.iter().position(|x| std::ptr::eq(x, s)).unwrap();
                (i, at, n)
            })
            .collect()
    }

    #[test]
    fn parts_cut_pdu_ranges_out_of_segments() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let segments = vec![
            ReadSegment::File {
                file,
                offset: 1000,
                len: 100,
            },
            ReadSegment::Zero { len: 50 },
            ReadSegment::Mem(vec![7; 30]),
        ];
        // Whole read.
        assert_eq!(
            cut(&segments, 0, 180),
            vec![(0, 0, 100), (1, 0, 50), (2, 0, 30)]
        );
        // Inside one segment.
        assert_eq!(cut(&segments, 10, 20), vec![(0, 10, 20)]);
        // Across a boundary, starting and ending mid-segment.
        assert_eq!(
            cut(&segments, 90, 70),
            vec![(0, 90, 10), (1, 0, 50), (2, 0, 10)]
        );
        // Starting exactly on a boundary, ending on the next.
        assert_eq!(cut(&segments, 100, 50), vec![(1, 0, 50)]);
        // The tail.
        assert_eq!(cut(&segments, 175, 5), vec![(2, 25, 5)]);
        // Consecutive PDU ranges cover every byte exactly once.
        for pdu in [1u64, 7, 50, 64, 180] {
            let mut covered = 0;
            let mut start = 0;
            while start < 180 {
                let len = pdu.min(180 - start);
                covered += cut(&segments, start, len).iter().map(|p| p.2).sum::<u64>();
                start += len;
            }
            assert_eq!(covered, 180, "PDUs of {pdu} bytes");
        }
    }
}
