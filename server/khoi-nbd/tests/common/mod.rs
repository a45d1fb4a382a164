//! Shared helpers: an in-process server on a unix socket (what the real
//! clients use, as in production) and on 127.0.0.1:0 (for the raw NBD
//! client that speaks exactly the bytes the tests want to check), optionally
//! with TLS on the TCP side.

#![allow(dead_code, clippy::cast_possible_truncation)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use khoi_block::testing::{FileDisk, MemDisk};
use khoi_nbd::doubles::StaticExports;
use khoi_nbd::wire::{
    Chunk, ChunkRepr, Command, Errno, InfoRequest, OptionCode, OptionReply, OptionReplyRepr,
    OptionRepr, ReplyBody, ReplyType, RequestRepr, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
    SimpleReply, SimpleReplyRepr, client_flags,
};
use khoi_nbd::{ExportResolver, NbdStats, Tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const MEM_SIZE: u64 = 8 << 20;
pub const GOLDEN_SIZE: u64 = 4 << 20;

pub struct TestServer {
    /// TCP, with TLS required when started with a key.
    pub addr: SocketAddr,
    /// The unix socket (mode 0600, in `dir`).
    pub socket: PathBuf,
    pub shutdown: CancellationToken,
    pub stats: Arc<NbdStats>,
    pub task: JoinHandle<std::io::Result<()>>,
    pub unix_task: JoinHandle<std::io::Result<()>>,
    pub golden: Vec<u8>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// The export on the unix socket, as libnbd, qemu and fio spell it.
    pub fn url(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// The export on TCP with TLS, PSK identity `user` and key file `psk`.
    pub fn tls_url(&self, export: &str, user: &str, psk: &std::path::Path) -> String {
        format!(
            "nbds://{user}@{}/{export}?tls-psk-file={}",
            self.addr,
            psk.display()
        )
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in [self.task, self.unix_task] {
            let r = tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("server stops in time")
                .expect("server task joined");
            r.expect("serve returned ok");
        }
    }
}

/// A `psktool`-format key file with one identity.
pub fn write_psk(dir: &std::path::Path, name: &str, user: &str, key_hex: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{user}:{key_hex}\n")).expect("write psk");
    p
}

pub const PSK_GOOD: &str = "5f0c1a9e3b7d24c8e6f1a0b9d3c7e2f4a8b6c0d2e4f6a8b0c2d4e6f8a0b2c4d6";
pub const PSK_WRONG: &str = "5f0c1a9e3b7d24c8e6f1a0b9d3c7e2f4a8b6c0d2e4f6a8b0c2d4e6f8a0b2c4d7";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "khoi_nbd=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Golden data with a recognisable, offset-dependent pattern.
pub fn golden_bytes() -> Vec<u8> {
    (0..GOLDEN_SIZE)
        .map(|i| u8::try_from((i / 512 + i) % 251).expect("< 251"))
        .collect()
}

/// Reads of the first block fail with EIO; writes past 512 KiB fail as a
/// full overlay does (nbdkit's `error` filter, as khoi-block's `Fault`).
pub const FAULTY_EIO: std::ops::Range<u64> = 0..4096;
pub const FAULTY_FULL: std::ops::Range<u64> = (512 << 10)..(1 << 20);

fn faulty_disk() -> Arc<dyn khoi_block::BlockDevice> {
    use khoi_block::filters::{Fault, FaultError, FaultRule, OpKind};
    let eio = Fault::new(
        Arc::new(MemDisk::new(1 << 20)),
        FaultRule::new(FaultError::Io(libc::EIO))
            .ops(&[OpKind::Read])
            .range(FAULTY_EIO),
    );
    Arc::new(Fault::new(
        Arc::new(eio),
        FaultRule::new(FaultError::NoSpace)
            .ops(&[OpKind::Write, OpKind::Zero])
            .range(FAULTY_FULL),
    ))
}

/// Writes take [`SLOW_WRITE`] (nbdkit's `delay` filter, as khoi-block's
/// `Delay`); reads are immediate.
pub const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(300);

fn slow_disk() -> Arc<dyn khoi_block::BlockDevice> {
    use khoi_block::filters::{Delay, OpKind};
    Arc::new(Delay::new(Arc::new(MemDisk::new(1 << 20))).with(OpKind::Write, SLOW_WRITE))
}

/// Exports: `seat/a` (writable RAM disk), `golden` (read-only file, served
/// with sendfile), `seat/ro` (read-only RAM disk), `faulty` (fails chosen
/// requests), `slow` (slow writes).
pub async fn start() -> TestServer {
    start_with(None).await
}

/// [`start`], with TLS (PSK identity `alice`, key [`PSK_GOOD`]) required on
/// the TCP side.
pub async fn start_tls() -> TestServer {
    let keys = khoi_nbd::tls::parse_psk_file(&format!("alice:{PSK_GOOD}\n")).expect("keys");
    start_with(Some(Arc::new(Tls::from_keys(keys).expect("tls")))).await
}

pub async fn start_with(tls: Option<Arc<Tls>>) -> TestServer {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("golden.img");
    let golden = golden_bytes();
    std::fs::write(&path, &golden).expect("write golden");
    let mut ro_caps = khoi_block::BlockDevice::caps(&MemDisk::new(0));
    ro_caps.read_only = true;
    let exports = StaticExports::new()
        .with("seat/a", "Seat A overlay", Arc::new(MemDisk::new(MEM_SIZE)))
        .with(
            "golden",
            "Golden image v1",
            Arc::new(FileDisk::open(&path).expect("open golden")),
        )
        .with(
            "seat/ro",
            "",
            Arc::new(MemDisk::with_caps(1 << 20, ro_caps)),
        )
        .with("faulty", "", faulty_disk())
        .with("slow", "", slow_disk());
    let exports: Arc<dyn ExportResolver> = Arc::new(exports);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let stats = Arc::new(NbdStats::default());
    let socket = dir.path().join("nbd.sock");
    let unix: UnixListener = khoi_serve::bind_owner_only(&socket).expect("bind unix");
    let unix_task = tokio::spawn(khoi_nbd::serve_unix(
        unix,
        exports.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    let task = tokio::spawn(khoi_nbd::serve_tcp(
        listener,
        exports,
        stats.clone(),
        tls,
        shutdown.clone(),
    ));
    TestServer {
        addr,
        socket,
        shutdown,
        stats,
        task,
        unix_task,
        golden,
        dir,
    }
}

/// A reply read by the raw client.
#[derive(Debug)]
pub enum Reply {
    Simple { error: Errno, cookie: u64 },
    Chunk { bytes: Vec<u8> },
}

impl Reply {
    pub fn cookie(&self) -> u64 {
        match self {
            Reply::Simple { cookie, .. } => *cookie,
            Reply::Chunk { bytes } => Chunk::new_unchecked(&bytes[..]).cookie(),
        }
    }

    pub fn chunk(&self) -> ChunkRepr<'_> {
        match self {
            Reply::Chunk { bytes } => {
                ChunkRepr::parse(&Chunk::new_unchecked(&bytes[..])).expect("valid chunk")
            }
            Reply::Simple { .. } => panic!("expected a chunk, got {self:?}"),
        }
    }

    pub fn chunk_data(&self) -> &[u8] {
        match self {
            Reply::Chunk { bytes } => &bytes[Chunk::<&[u8]>::HEADER_LEN + 8..],
            Reply::Simple { .. } => panic!("expected a chunk"),
        }
    }
}

pub struct RawClient {
    pub s: TcpStream,
}

impl RawClient {
    pub async fn connect_raw(addr: SocketAddr) -> Self {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut g = [0u8; 18];
        s.read_exact(&mut g).await.expect("greeting");
        assert_eq!(&g[..8], b"NBDMAGIC");
        s.write_all(&(client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES).to_be_bytes())
            .await
            .expect("flags");
        RawClient { s }
    }

    /// Negotiates and enters transmission on `export`.
    pub async fn connect(addr: SocketAddr, export: &str, structured: bool) -> Self {
        let mut c = Self::connect_raw(addr).await;
        if structured {
            c.option(OptionRepr::StructuredReply).await;
            let r = c.option_replies().await;
            assert!(matches!(r[..], [(_, ReplyType::Ack, _)]), "{r:?}");
            let mut meta = Vec::new();
            meta.extend_from_slice(&u32::try_from(export.len()).expect("small").to_be_bytes());
            meta.extend_from_slice(export.as_bytes());
            meta.extend_from_slice(&1u32.to_be_bytes());
            meta.extend_from_slice(&15u32.to_be_bytes());
            meta.extend_from_slice(b"base:allocation");
            c.option(OptionRepr::Other {
                code: OptionCode::SetMetaContext,
                data: &meta,
            })
            .await;
            let r = c.option_replies().await;
            assert_eq!(r.len(), 2, "{r:?}");
            assert_eq!(r[0].1, ReplyType::MetaContext);
        }
        let info = InfoRequest::parse(&{
            let mut d = Vec::new();
            d.extend_from_slice(&u32::try_from(export.len()).expect("small").to_be_bytes());
            d.extend_from_slice(export.as_bytes());
            d.extend_from_slice(&0u16.to_be_bytes());
            d
        })
        .map(|r| {
            let mut b = vec![0u8; r.buffer_len()];
            r.emit(&mut b);
            b
        })
        .expect("valid info request");
        c.option(OptionRepr::Other {
            code: OptionCode::Go,
            data: &info,
        })
        .await;
        let r = c.option_replies().await;
        assert_eq!(r.last().map(|r| r.1), Some(ReplyType::Ack), "{r:?}");
        c
    }

    pub async fn option(&mut self, opt: OptionRepr<'_>) {
        let mut b = vec![0u8; opt.buffer_len()];
        opt.emit(&mut b);
        self.s.write_all(&b).await.expect("send option");
    }

    /// Reads option replies up to and including ACK or an error.
    pub async fn option_replies(&mut self) -> Vec<(OptionCode, ReplyType, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut hdr = [0u8; 20];
            self.s.read_exact(&mut hdr).await.expect("reply header");
            let len = OptionReply::new_unchecked(&hdr[..]).length() as usize;
            let mut full = hdr.to_vec();
            full.resize(20 + len, 0);
            self.s
                .read_exact(&mut full[20..])
                .await
                .expect("reply payload");
            let r = OptionReplyRepr::parse(&OptionReply::new_unchecked(&full[..])).expect("valid");
            let kind = match r.body {
                ReplyBody::Ack => ReplyType::Ack,
                ReplyBody::Server { .. } => ReplyType::Server,
                ReplyBody::Info(_) => ReplyType::Info,
                ReplyBody::MetaContext { .. } => ReplyType::MetaContext,
                ReplyBody::Error { kind, .. } | ReplyBody::Unknown { kind, .. } => kind,
            };
            let end = kind == ReplyType::Ack || kind.is_error();
            out.push((r.option, kind, full[20..].to_vec()));
            if end {
                return out;
            }
        }
    }

    pub async fn request(
        &mut self,
        command: Command,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let r = RequestRepr {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.s.write_all(&r.to_bytes()).await.expect("send request");
        if !payload.is_empty() {
            self.s.write_all(payload).await.expect("send payload");
        }
    }

    /// Reads one reply message. Simple replies to reads carry `read_len`
    /// bytes of data, returned as a chunk-less tail via `read_data`.
    pub async fn reply(&mut self) -> Reply {
        let mut magic = [0u8; 4];
        self.s.read_exact(&mut magic).await.expect("reply magic");
        match u32::from_be_bytes(magic) {
            SIMPLE_REPLY_MAGIC => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&magic);
                self.s.read_exact(&mut b[4..]).await.expect("simple reply");
                let r = SimpleReplyRepr::parse(&SimpleReply::new_unchecked(&b[..]))
                    .expect("simple reply");
                Reply::Simple {
                    error: r.error,
                    cookie: r.cookie,
                }
            }
            STRUCTURED_REPLY_MAGIC => {
                let mut b = vec![0u8; 20];
                b[..4].copy_from_slice(&magic);
                self.s.read_exact(&mut b[4..]).await.expect("chunk header");
                let len = Chunk::new_unchecked(&b[..]).length() as usize;
                b.resize(20 + len, 0);
                self.s
                    .read_exact(&mut b[20..])
                    .await
                    .expect("chunk payload");
                Reply::Chunk { bytes: b }
            }
            other => panic!("unexpected reply magic {other:#x}"),
        }
    }

    pub async fn read_data(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.s.read_exact(&mut v).await.expect("read data");
        v
    }

    /// Simple-reply READ.
    pub async fn read_simple(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(Command::Read, 0, cookie, offset, len, &[])
            .await;
        match self.reply().await {
            Reply::Simple {
                error: Errno::Ok,
                cookie: c,
            } => {
                assert_eq!(c, cookie);
                self.read_data(len as usize).await
            }
            other => panic!("read failed: {other:?}"),
        }
    }

    /// Structured READ, reassembled from its chunks.
    pub async fn read_structured(
        &mut self,
        cookie: u64,
        offset: u64,
        len: u32,
    ) -> (Vec<u8>, usize) {
        self.request(Command::Read, 0, cookie, offset, len, &[])
            .await;
        let mut out = vec![0xeeu8; len as usize];
        let mut chunks = 0;
        loop {
            let r = self.reply().await;
            chunks += 1;
            let c = r.chunk();
            assert_eq!(c.cookie, cookie);
            match c.payload {
                khoi_nbd::wire::ChunkPayload::OffsetData {
                    offset: o,
                    data_len,
                } => {
                    let at = (o - offset) as usize;
                    out[at..at + data_len as usize].copy_from_slice(r.chunk_data());
                }
                khoi_nbd::wire::ChunkPayload::OffsetHole { offset: o, length } => {
                    let at = (o - offset) as usize;
                    out[at..at + length as usize].fill(0);
                }
                other => panic!("unexpected chunk {other:?}"),
            }
            if c.done {
                return (out, chunks);
            }
        }
    }

    pub async fn simple_status(&mut self, cookie: u64) -> Errno {
        match self.reply().await {
            Reply::Simple { error, cookie: c } => {
                assert_eq!(c, cookie);
                error
            }
            Reply::Chunk { bytes } => {
                let c = ChunkRepr::parse(&Chunk::new_unchecked(&bytes[..])).expect("chunk");
                assert_eq!(c.cookie, cookie);
                assert!(c.done);
                match c.payload {
                    khoi_nbd::wire::ChunkPayload::Error { error, .. } => error,
                    khoi_nbd::wire::ChunkPayload::None => Errno::Ok,
                    other => panic!("unexpected chunk {other:?}"),
                }
            }
        }
    }
}

/// Whether an external tool is installed; prints why a test is skipped.
pub fn have(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!("SKIP: {tool} is not installed");
    }
    found
}

/// Runs a command on a blocking thread (the server keeps running on the
/// runtime meanwhile) and returns (success, stdout, stderr).
pub async fn run(cmd: &str, args: Vec<String>) -> (bool, String, String) {
    run_with_path(cmd, args, None).await
}

/// [`run`] with `prefix` put in front of `PATH` (nbdsh runs whatever
/// `python3` comes first, which must be the system one with the bindings).
pub async fn run_with_path(
    cmd: &str,
    args: Vec<String>,
    prefix: Option<&str>,
) -> (bool, String, String) {
    let cmd = cmd.to_owned();
    let path = prefix.map(|p| format!("{p}:{}", std::env::var("PATH").unwrap_or_default()));
    tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new(&cmd);
        if let Some(path) = path {
            c.env("PATH", path);
        }
        let out = c
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("command task")
}
