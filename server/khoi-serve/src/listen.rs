//! The accept loop every TCP listener of the block protocols shares.
//!
//! Two caps keep one client from starving the rest: a global one (the
//! process has a finite number of descriptors, and the admin page and boot
//! scripts need some too) and one per source address (one machine on the
//! LAN opening a thousand idle connections must not lock out forty seats).
//! A connection over the per-address cap is closed at once; at the global
//! cap the loop stops accepting, so the kernel's backlog holds new clients
//! until a slot frees.
//!
//! Shutdown cancels every connection's token, then waits for them at most
//! [`Limits::shutdown_grace`]: a client that never reads its replies must not
//! hold a SIGTERM hostage.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// Connections from one IP address at once; more are closed on accept.
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

/// Counts open connections per source address.
#[derive(Debug, Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

impl PeerCounts {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut map = self.0.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// One connection's share of its address's count, returned on drop.
#[derive(Debug)]
struct PeerSlot {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
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
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(PeerCounts::default());
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(accept_backoff(&e)).await;
                    continue;
                }
            },
        };
        let Some(slot) = peers.try_take(peer.ip(), limits.max_per_peer.max(1)) else {
            debug!(listener = name, %peer, "connection refused: too many from this address");
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
}
