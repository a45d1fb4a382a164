//! The accept loop every listener of the block protocols shares: TCP, and
//! unix sockets for local tools (NBD's default, so only the server's owner
//! reaches the disks).
//!
//! Two caps keep one client from starving the rest: a global one (the
//! process has a finite number of descriptors, and the admin page and boot
//! scripts need some too) and one per source (one machine on the LAN opening
//! a thousand idle connections must not lock out forty seats). The source is
//! the IP address on TCP and the peer's uid (`SO_PEERCRED`) on a unix socket.
//! A connection over the per-source cap is closed at once; at the global
//! cap the loop stops accepting, so the kernel's backlog holds new clients
//! until a slot frees.
//!
//! Shutdown cancels every connection's token, then waits for them at most
//! [`Limits::shutdown_grace`]: a client that never reads its replies must not
//! hold a SIGTERM hostage.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// Connections from one IP address (TCP) or one uid (unix socket) at
    /// once; more are closed on accept.
    pub max_per_peer: usize,
    /// How long shutdown waits for open connections before giving up on them.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            // A seat holds one or two sessions; a maintenance host with
            // nbdcopy or fio a few dozen. A flood from one address is neither.
            max_per_peer: 128,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Counts open connections per source (IP address or uid).
#[derive(Debug)]
struct PeerCounts<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for PeerCounts<K> {
    fn default() -> Self {
        PeerCounts(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq + Copy> PeerCounts<K> {
    fn try_take(self: &Arc<Self>, key: K, max: usize) -> Option<PeerSlot<K>> {
        let mut map = self.0.lock();
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            key,
        })
    }
}

/// One connection's share of its source's count, returned on drop.
#[derive(Debug)]
struct PeerSlot<K: Hash + Eq + Copy> {
    counts: Arc<PeerCounts<K>>,
    key: K,
}

impl<K: Hash + Eq + Copy> Drop for PeerSlot<K> {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Who is on the other end of a unix socket, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPeer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl fmt::Display for UnixPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)?;
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        Ok(())
    }
}

/// A listening socket the accept loop drives.
trait Acceptor: Send + Sync {
    type Stream: Send + 'static;
    type Peer: fmt::Display + Send + 'static;
    type Key: Hash + Eq + Copy + Send + Sync + 'static;
    fn accept_one(
        &self,
    ) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer, Self::Key)>> + Send;
}

impl Acceptor for TcpListener {
    type Stream = TcpStream;
    type Peer = SocketAddr;
    type Key = IpAddr;
    async fn accept_one(&self) -> io::Result<(TcpStream, SocketAddr, IpAddr)> {
        let (s, peer) = self.accept().await?;
        Ok((s, peer, peer.ip()))
    }
}

impl Acceptor for UnixListener {
    type Stream = UnixStream;
    type Peer = UnixPeer;
    type Key = u32;
    async fn accept_one(&self) -> io::Result<(UnixStream, UnixPeer, u32)> {
        let (s, _) = self.accept().await?;
        // The kernel always fills SO_PEERCRED for a connected stream socket;
        // should it fail, the peer counts as uid u32::MAX (nobody's slot).
        let peer = s.peer_cred().map_or(
            UnixPeer {
                uid: u32::MAX,
                pid: None,
            },
            |c| UnixPeer {
                uid: c.uid(),
                pid: c.pid(),
            },
        );
        Ok((s, peer, peer.uid))
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled and runs
/// `handler` for each on its own task. `handler` gets a token that is
/// cancelled at shutdown; it should stop reading new requests then and let
/// in-flight replies drain.
///
/// `name` labels log lines ("iscsi", "nbd").
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    name: &'static str,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr, CancellationToken) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    accept_loop(listener, limits, name, shutdown, handler).await;
}

/// [`serve`] on a unix socket: the same limits and shutdown, with the
/// per-source cap counted per peer uid.
pub async fn serve_unix<H, F>(
    listener: UnixListener,
    limits: Limits,
    name: &'static str,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(UnixStream, UnixPeer, CancellationToken) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    accept_loop(listener, limits, name, shutdown, handler).await;
}

async fn accept_loop<L, H, F>(
    listener: L,
    limits: Limits,
    name: &'static str,
    shutdown: CancellationToken,
    handler: H,
) where
    L: Acceptor,
    H: Fn(L::Stream, L::Peer, CancellationToken) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(PeerCounts::<L::Key>::default());
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer, key) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept_one() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(accept_backoff(&e)).await;
                    continue;
                }
            },
        };
        let Some(slot) = peers.try_take(key, limits.max_per_peer.max(1)) else {
            debug!(listener = name, %peer, "connection refused: too many from this source");
            drop(stream);
            continue;
        };
        let token = shutdown.child_token();
        tracker.spawn(handler(stream, peer, token).then_release((permit, slot)));
    }
    tracker.close();
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        info!(listener = name, open = tracker.len(), grace = ?limits.shutdown_grace,
            "shutdown: leaving connections that did not finish in time");
    }
}

/// Binds a unix socket at `path` that only this process's user can connect
/// to (mode 0600).
///
/// The socket is bound inside a fresh 0700 folder next to `path`, made 0600
/// and then renamed into place, so there is no moment at which another user
/// could connect to it: `bind(2)` follows the umask, and a `chmod` after it
/// would leave a window. A socket already at `path` is replaced only when
/// nothing answers on it (left by a server that died); a live one is an
/// error, never silently stolen.
pub fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no name"))?;
    let private = parent.join(format!(
        ".{}.bind-{}",
        file.to_string_lossy(),
        std::process::id()
    ));
    // A leftover from a crash of this very pid number: ours to clear.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let bound = (|| {
        let l = std::os::unix::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        l.set_nonblocking(true)?;
        UnixListener::from_std(l)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

fn accept_backoff(e: &io::Error) -> Duration {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
            Duration::from_millis(100)
        }
        // ECONNABORTED and friends are one client's problem.
        _ => Duration::from_millis(1),
    }
}

/// Holds the connection's slots until its future completes.
trait ThenRelease: Future + Sized {
    fn then_release<G: Send + 'static>(self, guard: G) -> impl Future<Output = Self::Output> {
        async move {
            let out = self.await;
            drop(guard);
            out
        }
    }
}

impl<F: Future> ThenRelease for F {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn bound() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        (l, a)
    }

    /// A handler that echoes one byte back, then holds the connection until
    /// the client closes or shutdown.
    async fn echo_hold(mut s: TcpStream, token: CancellationToken, open: Arc<AtomicUsize>) {
        open.fetch_add(1, Ordering::SeqCst);
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_ok() {
            let _ = s.write_all(&b).await;
            tokio::select! {
                _ = token.cancelled() => {}
                _ = s.read(&mut b) => {}
            }
        }
        open.fetch_sub(1, Ordering::SeqCst);
    }

    async fn ping(c: &mut TcpStream) -> bool {
        if c.write_all(b"x").await.is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut b)).await,
            Ok(Ok(_))
        )
    }

    #[tokio::test]
    async fn a_flood_from_one_address_is_capped_and_others_still_get_in() {
        let (l, addr) = bound().await;
        let open = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let limits = Limits {
            max_connections: 64,
            max_per_peer: 3,
            shutdown_grace: Duration::from_secs(1),
        };
        let o = open.clone();
        let server = tokio::spawn(serve(
            l,
            limits,
            "test",
            shutdown.clone(),
            move |s, _, t| echo_hold(s, t, o.clone()),
        ));
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            assert!(ping(&mut c).await);
            held.push(c);
        }
        // The fourth from the same address is closed without an answer.
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        assert!(!ping(&mut extra).await);
        assert_eq!(open.load(Ordering::SeqCst), 3);
        // Closing one frees its slot for the same address.
        drop(held.pop());
        let mut again = None;
        for _ in 0..50 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            if ping(&mut c).await {
                again = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(again.is_some(), "a freed slot is usable again");
        shutdown.cancel();
        server.await.expect("server");
        assert_eq!(
            open.load(Ordering::SeqCst),
            0,
            "shutdown ended every handler"
        );
    }

    #[tokio::test]
    async fn at_the_global_cap_new_clients_wait_in_the_backlog() {
        let (l, addr) = bound().await;
        let open = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let limits = Limits {
            max_connections: 2,
            max_per_peer: 100,
            shutdown_grace: Duration::from_secs(1),
        };
        let o = open.clone();
        let server = tokio::spawn(serve(
            l,
            limits,
            "test",
            shutdown.clone(),
            move |s, _, t| echo_hold(s, t, o.clone()),
        ));
        let mut a = TcpStream::connect(addr).await.expect("connect");
        let mut b = TcpStream::connect(addr).await.expect("connect");
        assert!(ping(&mut a).await && ping(&mut b).await);
        let mut c = TcpStream::connect(addr).await.expect("connect");
        assert!(!ping(&mut c).await, "third client is not served yet");
        drop(a);
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut byte))
            .await
            .expect("served once a slot frees")
            .expect("echo");
        shutdown.cancel();
        server.await.expect("server");
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_past_the_grace_for_a_stuck_handler() {
        let (l, addr) = bound().await;
        let shutdown = CancellationToken::new();
        let limits = Limits {
            max_connections: 8,
            max_per_peer: 8,
            shutdown_grace: Duration::from_millis(200),
        };
        let server = tokio::spawn(serve(
            l,
            limits,
            "test",
            shutdown.clone(),
            |s, _, _t| async move {
                // Ignores its token: a client that never lets go.
                let _s = s;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            },
        ));
        let _c = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = std::time::Instant::now();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returned")
            .expect("server");
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn unix_connections_are_capped_per_uid_and_shut_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sock");
        let l = bind_owner_only(&path).expect("bind");
        let shutdown = CancellationToken::new();
        let limits = Limits {
            max_connections: 64,
            max_per_peer: 2,
            shutdown_grace: Duration::from_secs(1),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let server = tokio::spawn(serve_unix(
            l,
            limits,
            "test",
            shutdown.clone(),
            move |mut s: UnixStream, peer, token| {
                s2.lock().push(peer);
                async move {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = s.read(&mut b) => {}
                        }
                    }
                }
            },
        ));
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = UnixStream::connect(&path).await.expect("connect");
            assert!(uping(&mut c).await);
            held.push(c);
        }
        // Same uid, over its cap: closed without an answer.
        let mut extra = UnixStream::connect(&path).await.expect("connect");
        assert!(!uping(&mut extra).await);
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert!(seen.lock().iter().all(|p| p.uid == me));
        assert_eq!(
            seen.lock()[0].pid,
            Some(i32::try_from(std::process::id()).expect("pid"))
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returned")
            .expect("server");
    }

    async fn uping(c: &mut UnixStream) -> bool {
        if c.write_all(b"x").await.is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut b)).await,
            Ok(Ok(_))
        )
    }

    #[tokio::test]
    async fn an_owner_only_socket_is_0600_and_a_stale_one_is_replaced_but_a_live_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n.sock");
        // A stale socket: bound, then its listener gone.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        let live = bind_owner_only(&path).expect("replaces the stale socket");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing left behind by the private bind folder.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("n.sock")]);
        let e = bind_owner_only(&path).expect_err("a live socket is not stolen");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(live);
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, b"data").expect("file");
        let e = bind_owner_only(&path).expect_err("a plain file is not removed");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).expect("kept"), b"data");
    }
}
