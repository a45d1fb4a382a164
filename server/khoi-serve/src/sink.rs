//! Where a writer's bytes go: a TCP socket, a unix socket, or a stream that
//! must see every byte (TLS).
//!
//! Raw sockets take file ranges with `sendfile(2)` and hold partial
//! segments back with `MSG_MORE`; a TLS stream encrypts in user
//! space, so file ranges are read into memory first (the writer does that,
//! with its cold-page care, when [`Sink::zero_copy`] is false).

use std::fs::File;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::sock;

/// The write side of one connection, as the reply writer drives it.
pub trait Sink: Send + 'static {
    /// Whether file ranges may be sent with [`Sink::send_file`] (no copy
    /// through user space). When false the writer copies them into memory.
    fn zero_copy(&self) -> bool;

    /// Sends every buffer, in order, and empties `bufs`. With `more`, more
    /// bytes follow at once and the sink may hold a partial segment back.
    /// Fails with `TimedOut` when the peer accepts nothing for `stall`.
    fn send(
        &mut self,
        bufs: &mut Vec<Bytes>,
        more: bool,
        stall: Duration,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Sends `len` bytes at `offset` of `file`; only called when
    /// [`Sink::zero_copy`] is true.
    fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        stall: Duration,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends the stream after the last reply (FIN, TLS close_notify).
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

impl Sink for tokio::net::tcp::OwnedWriteHalf {
    fn zero_copy(&self) -> bool {
        true
    }

    async fn send(&mut self, bufs: &mut Vec<Bytes>, more: bool, stall: Duration) -> io::Result<()> {
        sock::send_vectored(self.as_ref(), bufs, more, stall).await
    }

    async fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        stall: Duration,
    ) -> io::Result<()> {
        sock::send_file(self.as_ref(), file, offset, len, stall).await
    }

    async fn finish(&mut self) {
        // Best effort: the peer may be gone already.
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl Sink for tokio::net::unix::OwnedWriteHalf {
    fn zero_copy(&self) -> bool {
        true
    }

    async fn send(
        &mut self,
        bufs: &mut Vec<Bytes>,
        _more: bool,
        stall: Duration,
    ) -> io::Result<()> {
        // MSG_MORE means nothing to a unix socket: there are no segments.
        sock::send_vectored(self.as_ref(), bufs, false, stall).await
    }

    async fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        stall: Duration,
    ) -> io::Result<()> {
        sock::send_file(self.as_ref(), file, offset, len, stall).await
    }

    async fn finish(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

/// Any byte stream (a TLS session): every byte passes through `write`, and
/// the stream is flushed when a batch ends.
#[derive(Debug)]
pub struct Stream<W>(pub W);

impl<W: AsyncWrite + Unpin + Send + 'static> Sink for Stream<W> {
    fn zero_copy(&self) -> bool {
        false
    }

    async fn send(&mut self, bufs: &mut Vec<Bytes>, more: bool, stall: Duration) -> io::Result<()> {
        let w = &mut self.0;
        let work = async {
            for b in bufs.iter() {
                w.write_all(b).await?;
            }
            if !more {
                w.flush().await?;
            }
            Ok::<(), io::Error>(())
        };
        match tokio::time::timeout(stall, work).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading replies",
                ));
            }
        }
        bufs.clear();
        Ok(())
    }

    async fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        stall: Duration,
    ) -> io::Result<()> {
        // Not called while zero_copy() is false; correct anyway.
        let file = file.try_clone()?;
        let data = tokio::task::spawn_blocking(move || sock::pread(&file, offset, len))
            .await
            .map_err(io::Error::other)??;
        self.send(&mut vec![data], false, stall).await
    }

    async fn finish(&mut self) {
        let _ = self.0.shutdown().await;
    }
}
