//! The reply writer: one tokio task per connection that owns the socket's
//! write half and sends replies in the order they become ready.
//!
//! - **Batching.** Every reply already queued when the writer wakes leaves in
//!   one vectored `sendmsg`: at queue depth 32 that is one syscall for a batch
//!   of 4 KiB replies instead of two each.
//! - **Small reads are copied.** File ranges up to [`WriterOptions::copy_max`]
//!   are read from the page cache into the batch (`preadv2(RWF_NOWAIT)`):
//!   the copy costs less than a `sendfile` call of its own.
//! - **Large reads are zero-copy.** Bigger ranges go from the page cache to
//!   the socket with `sendfile(2)`, the header sent just before with
//!   `MSG_MORE` so both share a segment.
//! - **Cold pages never park a reactor thread.** A small range not in the
//!   page cache is read on the blocking pool; a large one is first checked
//!   with `cachestat(2)` and warmed on the pool. Replies batched before such a
//!   wait are sent first, so a cold read delays only itself.
//!
//! The writer knows nothing of the protocol: a [`Framer`] turns each queued
//! message into [`Piece`]s right before it is sent, in wire order, which is
//! where iSCSI stamps its sequence numbers and digests.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use khoi_block::{ReadSegment, cache};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sink::Sink;
use crate::sock;

/// One piece of a reply on the wire.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Bytes in memory: headers, in-memory data, padding, digests.
    Bytes(Bytes),
    /// `n` zero bytes (sent from a static buffer).
    Zero(u64),
    /// `len` bytes at `offset` of a file (a read-only layer or an overlay).
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Zero(n) => *n,
            Piece::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces covering `[start, start + len)` of a read described by
    /// `segments`, for protocols that split one read over several messages
    /// (iSCSI Data-In PDUs). Ranges outside the segments are ignored.
    pub fn slice(segments: &[ReadSegment], start: u64, len: u64, out: &mut Vec<Piece>) {
        let end = start + len;
        let mut pos = 0u64;
        for s in segments {
            let (s_start, s_end) = (pos, pos + s.len());
            pos = s_end;
            if s_end <= start || s_start >= end {
                continue;
            }
            let a = start.max(s_start) - s_start;
            let b = end.min(s_end) - s_start;
            out.push(match s {
                ReadSegment::File { file, offset, .. } => Piece::File {
                    file: file.clone(),
                    offset: offset + a,
                    len: b - a,
                },
                ReadSegment::Zero { .. } => Piece::Zero(b - a),
                // Offsets within one read, which is in memory: they fit usize.
                ReadSegment::Mem(v) => Piece::Bytes(Bytes::copy_from_slice(&v[us(a)..us(b)])),
            });
        }
    }
}

impl From<ReadSegment> for Piece {
    fn from(s: ReadSegment) -> Self {
        match s {
            ReadSegment::File { file, offset, len } => Piece::File { file, offset, len },
            ReadSegment::Zero { len } => Piece::Zero(len),
            ReadSegment::Mem(v) => Piece::Bytes(Bytes::from(v)),
        }
    }
}

fn us(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Turns a protocol's queued message into wire pieces.
pub trait Framer: Send + 'static {
    type Msg: Send + 'static;

    /// Appends `msg`'s pieces to `out`. Called once per message, in the order
    /// messages go on the wire, just before they are sent. The message itself
    /// is dropped only after its bytes were handed to the kernel, so it may
    /// carry permits that bound the work in flight.
    fn frame(&mut self, msg: &mut Self::Msg, out: &mut Vec<Piece>);
}

/// Tuning of a [`Writer`].
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// File ranges up to this size are copied into the batch.
    pub copy_max: u64,
    /// Messages gathered into one batch at most.
    pub max_batch: usize,
    /// A peer that accepts no reply bytes for this long is dropped.
    pub stall_timeout: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            copy_max: 16 << 10,
            max_batch: 64,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// The sending side of a writer's queue. Sending never waits, so it works
/// from the connection task and from blocking-pool threads alike; the
/// protocols bound what is in flight (NBD's permits, iSCSI's command window).
#[derive(Debug)]
pub struct ReplySender<M> {
    tx: mpsc::UnboundedSender<M>,
}

impl<M> Clone for ReplySender<M> {
    fn clone(&self) -> Self {
        ReplySender {
            tx: self.tx.clone(),
        }
    }
}

impl<M> ReplySender<M> {
    /// Queues `msg`; gives it back if the writer has ended.
    pub fn send(&self, msg: M) -> Result<(), M> {
        self.tx.send(msg).map_err(|e| e.0)
    }
}

/// Above this many buffers a batch is sent before more are added (IOV_MAX
/// is 1024).
const IOV_FLUSH: usize = 512;

static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

/// The writer task of one connection.
#[derive(Debug)]
pub struct Writer;

impl Writer {
    /// Starts the writer on `sink` (a socket's write half, or a TLS stream
    /// in a [`crate::sink::Stream`]). It runs until every [`ReplySender`] is
    /// dropped and the queue is empty, then ends the stream (FIN after the
    /// last reply). If sending fails it cancels `on_error`, so the connection
    /// stops reading, and returns the error.
    pub fn spawn<F: Framer, S: Sink>(
        sink: S,
        framer: F,
        options: WriterOptions,
        on_error: CancellationToken,
    ) -> (ReplySender<F::Msg>, JoinHandle<io::Result<()>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut w = Run {
                sink,
                framer,
                options,
            };
            let r = w.run(rx).await;
            if r.is_err() {
                on_error.cancel();
            }
            w.sink.finish().await;
            r
        });
        (ReplySender { tx }, task)
    }
}

struct Run<F: Framer, S: Sink> {
    sink: S,
    framer: F,
    options: WriterOptions,
}

impl<F: Framer, S: Sink> Run<F, S> {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<F::Msg>) -> io::Result<()> {
        let mut batch: Vec<F::Msg> = Vec::new();
        let mut pieces: Vec<Piece> = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < self.options.max_batch {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            for m in &mut batch {
                self.framer.frame(m, &mut pieces);
            }
            self.send(&mut pieces).await?;
            // Releases whatever the messages held (in-flight permits).
            batch.clear();
        }
        Ok(())
    }

    /// Sends `pieces` in order and empties the list.
    async fn send(&mut self, pieces: &mut Vec<Piece>) -> io::Result<()> {
        let stall = self.options.stall_timeout;
        // A sink that must see every byte (TLS) gets file ranges copied in,
        // whatever their size.
        let copy_max = if self.sink.zero_copy() {
            self.options.copy_max
        } else {
            u64::MAX
        };
        // No TCP_CORK: the header before each sendfile goes with MSG_MORE and
        // sendfile pushes at its end. Corking a whole batch was measured
        // (bench-iscsi, 64K QD32 and 1M QD8) to cost a third of the
        // throughput: the client's next commands wait on the held tails.
        let mut pending: Vec<Bytes> = Vec::new();
        for piece in pieces.drain(..) {
            match piece {
                Piece::Bytes(b) => pending.push(b),
                Piece::Zero(mut n) => {
                    while n > 0 {
                        let k = n.min(ZEROES.len() as u64);
                        pending.push(Bytes::from_static(&ZEROES[..us(k)]));
                        n -= k;
                        if pending.len() >= IOV_FLUSH {
                            self.sink.send(&mut pending, true, stall).await?;
                        }
                    }
                }
                Piece::File { file, offset, len } if len <= copy_max => {
                    let mut buf = BytesMut::zeroed(us(len));
                    if cache::read_nowait(&file, &mut buf, offset)? == us(len) {
                        pending.push(buf.freeze());
                    } else {
                        // Not all in the page cache: what is ready goes out
                        // now, then the disk read runs off the reactor.
                        self.sink.send(&mut pending, false, stall).await?;
                        let b =
                            tokio::task::spawn_blocking(move || sock::pread(&file, offset, len))
                                .await
                                .map_err(io::Error::other)??;
                        pending.push(b);
                    }
                }
                Piece::File { file, offset, len } => {
                    if !cache::resident(&file, offset, len) {
                        self.sink.send(&mut pending, false, stall).await?;
                        let f = file.clone();
                        tokio::task::spawn_blocking(move || cache::warm(&f, offset, len))
                            .await
                            .map_err(io::Error::other)??;
                    }
                    self.sink.send(&mut pending, true, stall).await?;
                    self.sink.send_file(&file, offset, len, stall).await?;
                }
            }
            if pending.len() >= IOV_FLUSH {
                self.sink.send(&mut pending, true, stall).await?;
            }
        }
        self.sink.send(&mut pending, false, stall).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::net::{TcpListener, TcpStream};

    /// Messages are already pieces (NBD's headers are final when queued).
    struct Plain;

    impl Framer for Plain {
        type Msg = Vec<Piece>;
        fn frame(&mut self, msg: &mut Vec<Piece>, out: &mut Vec<Piece>) {
            out.append(msg);
        }
    }

    /// Numbers each message at send time, as iSCSI stamps StatSN.
    struct Numbered(u32);

    impl Framer for Numbered {
        type Msg = Vec<Piece>;
        fn frame(&mut self, msg: &mut Vec<Piece>, out: &mut Vec<Piece>) {
            self.0 += 1;
            out.push(Piece::Bytes(Bytes::copy_from_slice(&self.0.to_be_bytes())));
            out.append(msg);
        }
    }

    async fn pair() -> (OwnedWriteHalf, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let (_rd, wr) = s.into_split();
        // The read half may go: the writer only needs the write half.
        (wr, c)
    }

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        f.sync_all().expect("sync");
        Arc::new(f)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| {
                u8::try_from(i % 251)
                    .unwrap_or(0)
                    .wrapping_mul(31)
                    .wrapping_add(seed)
            })
            .collect()
    }

    /// Evicts the file from the page cache so the writer takes its cold path.
    fn evict(f: &File) {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is open for the call; fadvise only takes integers.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    }

    async fn read_n(c: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        c.read_exact(&mut buf).await.expect("read");
        buf
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_kind_of_piece_arrives_in_order() {
        let data = pattern(1 << 20, 7);
        let file = file_with(&data);
        let (wr, mut c) = pair().await;
        let (tx, task) = Writer::spawn(
            wr,
            Plain,
            WriterOptions::default(),
            CancellationToken::new(),
        );
        let mut expect = Vec::new();
        // A header, a small copied range, zeroes, a large sendfile range,
        // in-memory bytes: one reply of each shape NBD and iSCSI send.
        let msgs: Vec<Vec<Piece>> = vec![
            vec![Piece::Bytes(Bytes::from_static(b"HDR1"))],
            vec![Piece::File {
                file: file.clone(),
                offset: 4096,
                len: 4096,
            }],
            vec![Piece::Zero(200_000)],
            vec![
                Piece::Bytes(Bytes::from_static(b"HDR2")),
                Piece::File {
                    file: file.clone(),
                    offset: 65_536,
                    len: 512 << 10,
                },
            ],
            vec![Piece::Bytes(Bytes::from_static(b"tail"))],
        ];
        expect.extend_from_slice(b"HDR1");
        expect.extend_from_slice(&data[4096..8192]);
        expect.extend_from_slice(&[0u8; 200_000]);
        expect.extend_from_slice(b"HDR2");
        expect.extend_from_slice(&data[65_536..65_536 + (512 << 10)]);
        expect.extend_from_slice(b"tail");
        for m in msgs {
            tx.send(m).expect("queued");
        }
        drop(tx);
        let got = read_n(&mut c, expect.len()).await;
        assert!(got == expect, "bytes differ");
        task.await.expect("join").expect("writer");
        // The writer shut the write half down after the last reply.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    }

    /// One reply of every shape, and the bytes a client must receive.
    fn mixed_replies(file: &Arc<File>, data: &[u8]) -> (Vec<Vec<Piece>>, Vec<u8>) {
        let msgs = vec![
            vec![
                Piece::Bytes(Bytes::from_static(b"H")),
                Piece::File {
                    file: file.clone(),
                    offset: 10,
                    len: 1000,
                },
            ],
            vec![Piece::Zero(70_000)],
            vec![Piece::File {
                file: file.clone(),
                offset: 100_000,
                len: 300_000,
            }],
        ];
        let mut expect = b"H".to_vec();
        expect.extend_from_slice(&data[10..1010]);
        expect.extend_from_slice(&[0u8; 70_000]);
        expect.extend_from_slice(&data[100_000..400_000]);
        (msgs, expect)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unix_socket_gets_the_same_bytes() {
        let data = pattern(1 << 20, 9);
        let file = file_with(&data);
        let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
        let (_rd, wr) = a.into_split();
        let (tx, task) = Writer::spawn(
            wr,
            Plain,
            WriterOptions::default(),
            CancellationToken::new(),
        );
        let (msgs, expect) = mixed_replies(&file, &data);
        for m in msgs {
            tx.send(m).expect("queued");
        }
        drop(tx);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert!(got == expect, "bytes differ");
        task.await.expect("join").expect("writer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_byte_stream_sink_gets_file_ranges_copied_in() {
        let data = pattern(1 << 20, 11);
        let file = file_with(&data);
        // A duplex pipe stands for a TLS session: it has no descriptor to
        // sendfile into, so every range must be copied through write().
        let (a, mut b) = tokio::io::duplex(64 << 10);
        let sink = crate::sink::Stream(a);
        let (tx, task) = Writer::spawn(
            sink,
            Plain,
            WriterOptions::default(),
            CancellationToken::new(),
        );
        let (msgs, expect) = mixed_replies(&file, &data);
        for m in msgs {
            tx.send(m).expect("queued");
        }
        drop(tx);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert!(got == expect, "bytes differ");
        task.await.expect("join").expect("writer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cold_ranges_small_and_large_are_read_correctly() {
        let data = pattern(4 << 20, 3);
        let file = file_with(&data);
        let (wr, mut c) = pair().await;
        let (tx, task) = Writer::spawn(
            wr,
            Plain,
            WriterOptions::default(),
            CancellationToken::new(),
        );
        for round in 0..3u64 {
            evict(&file);
            let small = round * 8192;
            let big = (1 << 20) + round * (256 << 10);
            tx.send(vec![
                Piece::Bytes(Bytes::from_static(b"a")),
                Piece::File {
                    file: file.clone(),
                    offset: small,
                    len: 8192,
                },
                Piece::File {
                    file: file.clone(),
                    offset: big,
                    len: 256 << 10,
                },
            ])
            .expect("queued");
            let got = read_n(&mut c, 1 + 8192 + (256 << 10)).await;
            assert_eq!(got[0], b'a');
            assert!(got[1..8193] == data[us(small)..us(small) + 8192]);
            assert!(got[8193..] == data[us(big)..us(big) + (256 << 10)]);
        }
        drop(tx);
        task.await.expect("join").expect("writer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn framing_happens_in_wire_order_across_batches() {
        let (wr, mut c) = pair().await;
        let (tx, task) = Writer::spawn(
            wr,
            Numbered(0),
            WriterOptions::default(),
            CancellationToken::new(),
        );
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..250u32 {
                        let body = (t * 1000 + i).to_be_bytes();
                        tx.send(vec![Piece::Bytes(Bytes::copy_from_slice(&body))])
                            .expect("queued");
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().expect("sender");
        }
        drop(tx);
        let got = read_n(&mut c, 1000 * 8).await;
        let mut seen = std::collections::HashSet::new();
        for (i, rec) in got.chunks(8).enumerate() {
            let n = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
            assert_eq!(n as usize, i + 1, "numbers follow wire order");
            seen.insert(u32::from_be_bytes([rec[4], rec[5], rec[6], rec[7]]));
        }
        assert_eq!(seen.len(), 1000, "every message sent exactly once");
        task.await.expect("join").expect("writer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_reading_is_dropped_and_the_connection_cancelled() {
        let (wr, c) = pair().await;
        let cancel = CancellationToken::new();
        let options = WriterOptions {
            stall_timeout: Duration::from_millis(300),
            ..WriterOptions::default()
        };
        let (tx, task) = Writer::spawn(wr, Plain, options, cancel.clone());
        // Far more than the socket buffers hold; the client never reads.
        for _ in 0..64 {
            if tx.send(vec![Piece::Zero(1 << 20)]).is_err() {
                break;
            }
        }
        let r = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("writer gave up")
            .expect("join");
        assert_eq!(r.expect_err("stalled").kind(), io::ErrorKind::TimedOut);
        assert!(cancel.is_cancelled());
        drop(c);
    }

    #[test]
    fn slices_of_a_read_cover_exactly_the_asked_range() {
        let file = file_with(&pattern(8192, 1));
        let segs = vec![
            ReadSegment::Mem(vec![1, 2, 3, 4]),
            ReadSegment::Zero { len: 4 },
            ReadSegment::File {
                file: file.clone(),
                offset: 100,
                len: 8,
            },
        ];
        let mut out = Vec::new();
        Piece::slice(&segs, 2, 9, &mut out);
        let shape: Vec<(u64, &str)> = out
            .iter()
            .map(|p| match p {
                Piece::Bytes(_) => (p.len(), "mem"),
                Piece::Zero(_) => (p.len(), "zero"),
                Piece::File { .. } => (p.len(), "file"),
            })
            .collect();
        assert_eq!(shape, vec![(2, "mem"), (4, "zero"), (3, "file")]);
        match &out[0] {
            Piece::Bytes(b) => assert_eq!(&b[..], &[3, 4]),
            _ => unreachable!(),
        }
        match &out[2] {
            Piece::File { offset, .. } => assert_eq!(*offset, 100),
            _ => unreachable!(),
        }
        let total: u64 = out.iter().map(Piece::len).sum();
        assert_eq!(total, 9);
    }
}
