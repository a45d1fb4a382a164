//! Read-only TFTP for the iPXE binaries (async-tftp: blksize, tsize, timeout, windowsize).
//!
//! async-tftp drives its own executor inside the task that awaits [`serve`], so all
//! transfers share that one task; fine for a few hundred KiB per boot. Its transfer sockets
//! bind `(listen_ip, 0)`, which is why [`crate::net::bind_tftp`] binds the server address
//! rather than `0.0.0.0`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_tftp::packet;
use async_tftp::server::handlers::{DirHandler, DirHandlerMode};
use async_tftp::server::{Handler, TftpServerBuilder};
use tokio_util::sync::CancellationToken;

use crate::PxeError;

/// Windows larger than this buy nothing on a LAN and let one client hog the executor.
const WINDOW_SIZE_LIMIT: u16 = 64;

/// Serves regular files under a root; refuses writes and anything resolving outside it
/// (`..`, absolute paths after the leading `/` is stripped, symlinks out of the root).
pub struct ReadOnlyRoot {
    root: PathBuf,
    inner: DirHandler,
    stats: Arc<TftpStats>,
}

/// Request counts since start, for `/metrics`, and who is told of each read.
#[derive(Debug, Default)]
pub struct TftpStats {
    pub reads: AtomicU64,
    pub reads_refused: AtomicU64,
    pub writes_refused: AtomicU64,
    on_read: std::sync::OnceLock<ReadHook>,
}

/// Told the client's address of every accepted read (boot times).
pub struct ReadHook(Box<dyn Fn(IpAddr) + Send + Sync>);

impl std::fmt::Debug for ReadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadHook")
    }
}

impl TftpStats {
    /// Calls `hook` with the client's address on every accepted read; set once.
    pub fn on_read(&self, hook: impl Fn(IpAddr) + Send + Sync + 'static) {
        if self.on_read.set(ReadHook(Box::new(hook))).is_err() {
            tracing::warn!("TFTP read hook set twice; keeping the first");
        }
    }
}

impl std::fmt::Debug for ReadOnlyRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyRoot")
            .field("root", &self.root)
            .finish()
    }
}

impl ReadOnlyRoot {
    pub fn new(root: &Path) -> Result<Self, PxeError> {
        let root = std::fs::canonicalize(root)
            .map_err(|e| PxeError::Tftp(format!("root {}: {e}", root.display())))?;
        let inner = DirHandler::new(&root, DirHandlerMode::ReadOnly)
            .map_err(|e| PxeError::Tftp(format!("root {}: {e}", root.display())))?;
        Ok(ReadOnlyRoot {
            root,
            inner,
            stats: Arc::default(),
        })
    }

    /// The path relative to the root, if it names a regular file inside the root.
    pub fn resolve(&self, requested: &Path) -> Result<PathBuf, packet::Error> {
        // Clients send `/undionly.kpxe` and `undionly.kpxe` alike.
        let rel = requested.strip_prefix("/").unwrap_or(requested);
        let mut clean = PathBuf::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => clean.push(p),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(packet::Error::PermissionDenied);
                }
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(packet::Error::FileNotFound);
        }
        let full = std::fs::canonicalize(self.root.join(&clean))
            .map_err(|_| packet::Error::FileNotFound)?;
        if !full.starts_with(&self.root) {
            return Err(packet::Error::PermissionDenied);
        }
        if !full.is_file() {
            return Err(packet::Error::FileNotFound);
        }
        full.strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .map_err(|_| packet::Error::PermissionDenied)
    }
}

impl Handler for ReadOnlyRoot {
    type Reader = <DirHandler as Handler>::Reader;
    type Writer = <DirHandler as Handler>::Writer;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let rel = match self.resolve(path) {
            Ok(rel) => rel,
            Err(e) => {
                self.stats.reads_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client, path = %path.display(), error = ?e, "TFTP read refused");
                return Err(e);
            }
        };
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(ReadHook(hook)) = self.stats.on_read.get() {
            hook(client.ip());
        }
        tracing::debug!(%client, path = %rel.display(), "TFTP read");
        self.inner.read_req_open(client, &rel).await
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        self.stats.writes_refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%client, path = %path.display(), "TFTP write refused");
        Err(packet::Error::PermissionDenied)
    }
}

/// Serves `root` read-only on an already-bound socket until `cancel` fires.
pub async fn serve(
    socket: UdpSocket,
    root: &Path,
    cancel: CancellationToken,
) -> Result<(), PxeError> {
    serve_with_stats(socket, root, Arc::default(), cancel).await
}

/// [`serve`], counting requests into `stats`.
pub async fn serve_with_stats(
    socket: UdpSocket,
    root: &Path,
    stats: Arc<TftpStats>,
    cancel: CancellationToken,
) -> Result<(), PxeError> {
    let mut handler = ReadOnlyRoot::new(root)?;
    handler.stats = stats;
    let server = TftpServerBuilder::with_handler(handler)
        .std_socket(socket)
        .map_err(|e| PxeError::Tftp(e.to_string()))?
        .window_size_limit(WINDOW_SIZE_LIMIT)
        .build()
        .await
        .map_err(|e| PxeError::Tftp(e.to_string()))?;
    tokio::select! {
        r = server.serve() => r.map_err(|e| PxeError::Tftp(e.to_string())),
        () = cancel.cancelled() => Ok(()),
    }
}
