//! Sends on tokio's non-blocking TCP socket with the flags tokio's own
//! writers do not expose: `MSG_MORE` on vectored sends, and `sendfile(2)`.
//! Each call waits for writability through tokio, so it parks the task, not
//! the thread, and gives up when the peer accepts nothing for `stall`.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// A tokio socket whose descriptor can be driven directly: TCP and unix
/// stream sockets both have these methods, but no trait that names them.
pub(crate) trait RawSock: AsRawFd + Sync {
    fn ready(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    fn attempt<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! raw_sock {
    ($t:ty) => {
        impl RawSock for $t {
            fn ready(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
                self.writable()
            }
            fn attempt<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
                self.try_io(Interest::WRITABLE, f)
            }
        }
    };
}

raw_sock!(TcpStream);
raw_sock!(UnixStream);

/// IOV_MAX on Linux; a send never passes more slices than this.
const IOV_MAX: usize = 1024;

async fn writable<S: RawSock>(sock: &S, stall: Duration) -> io::Result<()> {
    match tokio::time::timeout(stall, sock.ready()).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer stopped reading replies",
        )),
    }
}

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain old data (pointers and integers) for which all
    // zero bytes is the valid "no name, no iov, no control" value.
    unsafe { std::mem::zeroed() }
}

/// Sends every buffer in `bufs`, in order, and empties it. With `more`, the
/// kernel may hold a partial segment for what follows (`MSG_MORE`).
pub(crate) async fn send_vectored<S: RawSock>(
    sock: &S,
    bufs: &mut Vec<Bytes>,
    more: bool,
    stall: Duration,
) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest: &mut [IoSlice<'_>] = &mut slices[..];
    while !rest.is_empty() {
        writable(sock, stall).await?;
        let r = sock.attempt(|| {
            let mut msg = empty_msghdr();
            msg.msg_iov = rest.as_mut_ptr().cast();
            // At most IOV_MAX: fits every msg_iovlen type.
            msg.msg_iovlen = rest.len().min(IOV_MAX) as _;
            // SAFETY: `msg` points at `msg_iovlen` IoSlices, which are
            // ABI-compatible with iovec and borrow live buffers for the call;
            // the socket is open for as long as `sock` is borrowed.
            let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n.unsigned_abs())
            }
        });
        match r {
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    drop(slices);
    bufs.clear();
    Ok(())
}

/// `sendfile(2)` of `len` bytes at `offset` of `file`; falls back to copying
/// where the filesystem cannot splice.
pub(crate) async fn send_file<S: RawSock>(
    sock: &S,
    file: &File,
    mut offset: u64,
    mut len: u64,
    stall: Duration,
) -> io::Result<()> {
    while len > 0 {
        writable(sock, stall).await?;
        let r = sock.attempt(|| {
            let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
            let count = usize::try_from(len.min(1 << 30)).unwrap_or(1 << 30);
            // SAFETY: both descriptors are open for the call (the socket is
            // borrowed, the file too), `off` is a valid, exclusively borrowed
            // off_t, and sendfile writes nothing into our memory besides it.
            let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n.unsigned_abs() as u64)
            }
        });
        match r {
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                let file = file.try_clone()?;
                let data = tokio::task::spawn_blocking(move || pread(&file, offset, len))
                    .await
                    .map_err(io::Error::other)??;
                return send_vectored(sock, &mut vec![data], false, stall).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes at `offset` (may block on the disk).
pub(crate) fn pread(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let n = usize::try_from(len).map_err(io::Error::other)?;
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}
