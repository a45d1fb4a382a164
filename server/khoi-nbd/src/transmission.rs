//! Transmission phase without I/O: validate a request once, run it against
//! the device, and describe the reply as a list of [`Piece`]s for the
//! transport to write (so golden data can go out by `sendfile`).
//!
//! Malformed framing (bad magic) is the transport's business and closes the
//! connection. Everything that can be answered, including bad flags, bad
//! ranges and oversized requests, gets an error reply and the connection goes
//! on. `BlockError`s become NBD errors in exactly one place, [`errno_for`].

use std::borrow::Cow;

use khoi_block::{BlockError, Checked, ExtentKind, ReadSegment, WriteFlags};

use crate::negotiated::{MAX_PAYLOAD, Negotiated};
use crate::wire::{
    BlockDescriptor, ChunkPayload, ChunkRepr, Command, Descriptors, Errno, SimpleReplyRepr,
    command_flags as cf, state_flags, transmission_flags as tf,
};

/// The one mapping from block errors to NBD errors.
///
/// Out-of-range writes are `ENOSPC` and other out-of-range requests `EINVAL`,
/// as the spec's error section asks. `Gone` is `ESHUTDOWN`, which obliges
/// the client to disconnect; the transport closes after sending it.
pub fn errno_for(err: &BlockError, command: Command) -> Errno {
    match err {
        BlockError::OutOfRange { .. } => match command {
            Command::Write | Command::WriteZeroes => Errno::NoSpc,
            _ => Errno::Inval,
        },
        BlockError::ReadOnly => Errno::Perm,
        BlockError::NoSpace(_) => Errno::NoSpc,
        BlockError::Gone => Errno::Shutdown,
        BlockError::Io(_) => Errno::Io,
    }
}

/// Human-readable text for an error chunk. Internal details (paths, OS error
/// strings) stay in the server log.
pub fn client_message(err: &BlockError) -> Cow<'static, str> {
    match err {
        BlockError::OutOfRange { .. } | BlockError::ReadOnly | BlockError::Gone => {
            Cow::Owned(err.to_string())
        }
        BlockError::NoSpace(_) => Cow::Borrowed("no space left for writes"),
        BlockError::Io(_) => Cow::Borrowed("I/O error"),
    }
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Cache,
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Disc,
}

impl Op {
    /// Bytes of buffer this request pins while in flight (its payload).
    pub fn buffer_bytes(&self) -> u32 {
        match *self {
            Op::Read { len, .. } | Op::Write { len, .. } => len,
            _ => 0,
        }
    }
}

/// A request answered with an error without touching the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub errno: Errno,
    pub message: Cow<'static, str>,
    /// Payload bytes that follow the header and must be skipped (WRITE).
    pub discard: u32,
}

/// What a successful request produced.
#[derive(Debug)]
pub enum Outcome {
    Done,
    Read(Vec<ReadSegment>),
    Extents(Vec<BlockDescriptor>),
}

/// One connection's negotiated transmission state.
#[derive(Debug, Clone)]
pub struct Session {
    device: Checked,
    flags: u16,
    structured: bool,
    base_allocation: Option<u32>,
}

impl Session {
    pub fn new(n: &Negotiated) -> Self {
        Session {
            device: n.device.clone(),
            flags: n.flags,
            structured: n.structured,
            base_allocation: n.base_allocation,
        }
    }

    pub fn structured(&self) -> bool {
        self.structured
    }

    pub fn device(&self) -> &Checked {
        &self.device
    }

    fn advertised(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Checks command, flags, length and range. Only requests that pass are
    /// executed, so the device sees no surprises.
    pub fn validate(
        &self,
        command: Command,
        flags: u16,
        offset: u64,
        len: u32,
    ) -> Result<Op, Rejection> {
        let discard = if command == Command::Write { len } else { 0 };
        let reject = |errno: Errno, message: &'static str| Rejection {
            errno,
            message: Cow::Borrowed(message),
            discard,
        };
        let block_err = |err: BlockError| Rejection {
            errno: errno_for(&err, command),
            message: client_message(&err),
            discard,
        };

        if flags & !cf::KNOWN != 0 {
            return Err(reject(Errno::Inval, "unknown command flags"));
        }
        // FUA is valid on every command once advertised (the spec asks servers
        // to accept it even where it means nothing).
        if flags & cf::FUA != 0 && !self.advertised(tf::SEND_FUA) {
            return Err(reject(Errno::Inval, "FUA was not negotiated"));
        }
        let allowed = match command {
            Command::Read => cf::FUA | cf::DF,
            Command::WriteZeroes => cf::FUA | cf::NO_HOLE | cf::FAST_ZERO,
            Command::BlockStatus => cf::FUA | cf::REQ_ONE,
            _ => cf::FUA,
        };
        if flags & !allowed != 0 {
            return Err(reject(Errno::Inval, "flag not valid for this command"));
        }
        if flags & cf::DF != 0 && !self.advertised(tf::SEND_DF) {
            return Err(reject(Errno::Inval, "DF was not negotiated"));
        }
        if flags & cf::FAST_ZERO != 0 && !self.advertised(tf::SEND_FAST_ZERO) {
            return Err(reject(Errno::Inval, "FAST_ZERO was not negotiated"));
        }
        let fua = flags & cf::FUA != 0;

        let needs_range = !matches!(command, Command::Flush | Command::Disc);
        if needs_range {
            if len == 0 {
                return Err(reject(Errno::Inval, "zero-length request"));
            }
            if matches!(command, Command::Read | Command::Write) && len > MAX_PAYLOAD {
                return Err(reject(Errno::Inval, "request exceeds the maximum payload"));
            }
        }
        let writes = matches!(
            command,
            Command::Write | Command::Trim | Command::WriteZeroes
        );
        if writes && self.device.caps().read_only {
            return Err(block_err(BlockError::ReadOnly));
        }
        if needs_range {
            let size = self.device.size();
            let in_range = offset
                .checked_add(u64::from(len))
                .is_some_and(|end| end <= size);
            if !in_range {
                return Err(block_err(BlockError::OutOfRange {
                    offset,
                    len: u64::from(len),
                    size,
                }));
            }
        }

        match command {
            Command::Read => Ok(Op::Read {
                offset,
                len,
                df: flags & cf::DF != 0,
            }),
            Command::Write => Ok(Op::Write { offset, len, fua }),
            Command::Flush => Ok(Op::Flush),
            Command::Disc => Ok(Op::Disc),
            Command::Cache => Ok(Op::Cache),
            Command::Trim if self.advertised(tf::SEND_TRIM) => Ok(Op::Trim { offset, len, fua }),
            Command::Trim => Err(reject(Errno::Inval, "TRIM is not supported")),
            Command::WriteZeroes if self.advertised(tf::SEND_WRITE_ZEROES) => {
                let no_hole = flags & cf::NO_HOLE != 0;
                if no_hole && flags & cf::FAST_ZERO != 0 {
                    // Allocating zeroes means writing them, which is the slow
                    // path FAST_ZERO asks us to refuse.
                    return Err(reject(Errno::NotSup, "zeroing without holes is not fast"));
                }
                Ok(Op::WriteZeroes {
                    offset,
                    len,
                    fua,
                    no_hole,
                })
            }
            Command::WriteZeroes => Err(reject(Errno::Inval, "WRITE_ZEROES is not supported")),
            Command::BlockStatus if self.structured && self.base_allocation.is_some() => {
                Ok(Op::BlockStatus {
                    offset,
                    len,
                    req_one: flags & cf::REQ_ONE != 0,
                })
            }
            Command::BlockStatus => Err(reject(Errno::Inval, "no metadata context was negotiated")),
            Command::Resize | Command::Unknown(_) => {
                Err(reject(Errno::Inval, "unsupported command"))
            }
        }
    }

    /// `Checked` honours FUA on every writable device (natively or by a
    /// flush after the write), so the flag goes down as the client sent it.
    fn write_flags(fua: bool) -> WriteFlags {
        WriteFlags { fua }
    }

    /// Runs a validated request. Blocking: call it on a blocking thread.
    pub fn execute(&self, op: &Op, payload: &[u8]) -> Result<Outcome, BlockError> {
        let dev = &self.device;
        match *op {
            Op::Read { offset, len, .. } => {
                let segments = dev.read_plan(offset, u64::from(len))?;
                let total: u64 = segments.iter().map(ReadSegment::len).sum();
                if total != u64::from(len) {
                    // A wrong plan would desynchronise the stream; refuse it.
                    return Err(BlockError::Io(std::io::Error::other(format!(
                        "read plan covers {total} bytes, expected {len}"
                    ))));
                }
                Ok(Outcome::Read(segments))
            }
            Op::Write { offset, fua, .. } => {
                dev.write_at(payload, offset, Self::write_flags(fua))?;
                Ok(Outcome::Done)
            }
            Op::Flush => {
                dev.flush()?;
                Ok(Outcome::Done)
            }
            Op::Trim { offset, len, fua } => {
                dev.trim(offset, u64::from(len), Self::write_flags(fua))?;
                Ok(Outcome::Done)
            }
            Op::WriteZeroes {
                offset,
                len,
                fua,
                no_hole,
            } => {
                // The client wants the range allocated (NO_HOLE): real
                // zeroes, not a zero state in the overlay.
                if no_hole {
                    dev.write_zeroes_allocated(offset, u64::from(len), Self::write_flags(fua))?;
                } else {
                    dev.write_zeroes(offset, u64::from(len), Self::write_flags(fua))?;
                }
                Ok(Outcome::Done)
            }
            Op::BlockStatus {
                offset,
                len,
                req_one,
            } => self
                .block_status(offset, len, req_one)
                .map(Outcome::Extents),
            Op::Cache | Op::Disc => Ok(Outcome::Done),
        }
    }

    fn block_status(
        &self,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> Result<Vec<BlockDescriptor>, BlockError> {
        let end = offset + u64::from(len);
        let extents = if self.device.caps().extents {
            self.device.extents(offset, u64::from(len))?
        } else {
            // Unknown allocation is reported as plain data, which is always
            // a truthful answer for base:allocation.
            vec![khoi_block::Extent {
                offset,
                len: u64::from(len),
                kind: ExtentKind::Golden,
            }]
        };
        let mut out: Vec<BlockDescriptor> = Vec::new();
        let mut pos = offset;
        for e in extents {
            // Stop at anything that breaks the contiguous-cover contract
            // rather than report a map that lies.
            if e.offset != pos || e.len == 0 || pos >= end {
                break;
            }
            let n = e.len.min(end - pos);
            let flags = match e.kind {
                ExtentKind::Zero => state_flags::HOLE | state_flags::ZERO,
                ExtentKind::Overlay | ExtentKind::Golden => 0,
            };
            // n <= len, which is a u32.
            let n32 = u32::try_from(n).unwrap_or(u32::MAX);
            match out.last_mut() {
                Some(last) if last.flags == flags => last.length += n32,
                _ => out.push(BlockDescriptor { length: n32, flags }),
            }
            pos += n;
        }
        if out.is_empty() {
            return Err(BlockError::Io(std::io::Error::other(
                "device returned no extents",
            )));
        }
        if req_one {
            out.truncate(1);
        }
        Ok(out)
    }

    /// The bytes of an error reply: an error chunk when structured replies
    /// are on (the spec prefers them, and requires them for READ), otherwise a
    /// simple reply.
    pub fn error_reply(&self, cookie: u64, errno: Errno, message: &str) -> Vec<u8> {
        if self.structured {
            let mut msg = message;
            while msg.len() > crate::wire::MAX_STRING_LEN {
                // Keep the message a valid string while clipping it.
                let mut cut = crate::wire::MAX_STRING_LEN;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg = &msg[..cut];
            }
            let mut out = Vec::new();
            ChunkRepr {
                done: true,
                cookie,
                payload: ChunkPayload::Error {
                    error: errno,
                    message: msg,
                },
            }
            .emit_to_vec(&mut out);
            out
        } else {
            SimpleReplyRepr {
                error: errno,
                cookie,
            }
            .to_bytes()
            .to_vec()
        }
    }

    /// Reply for a successful request.
    pub fn success_reply(&self, cookie: u64, op: &Op, outcome: Outcome) -> Vec<Piece> {
        match outcome {
            Outcome::Done => vec![Piece::Bytes(simple_ok(cookie))],
            Outcome::Extents(descs) => {
                let mut out = Vec::new();
                ChunkRepr {
                    done: true,
                    cookie,
                    payload: ChunkPayload::BlockStatus {
                        context_id: self.base_allocation.unwrap_or_default(),
                        descriptors: Descriptors::List(&descs),
                    },
                }
                .emit_to_vec(&mut out);
                vec![Piece::Bytes(out)]
            }
            Outcome::Read(segments) => {
                let (offset, df) = match *op {
                    Op::Read { offset, df, .. } => (offset, df),
                    _ => (0, false),
                };
                read_reply(cookie, offset, self.structured, df, segments)
            }
        }
    }
}

fn simple_ok(cookie: u64) -> Vec<u8> {
    SimpleReplyRepr {
        error: Errno::Ok,
        cookie,
    }
    .to_bytes()
    .to_vec()
}

/// Part of a reply as the transport writes it.
#[derive(Debug)]
pub enum Piece {
    /// Header bytes (simple reply, chunk headers, whole small chunks).
    Bytes(Vec<u8>),
    /// Raw data of a read segment (zero segments are sent as zero bytes).
    Data(ReadSegment),
}

impl Piece {
    pub fn wire_len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Data(s) => s.len(),
        }
    }
}

/// Frames a read: a simple reply followed by the data; or, structured, one
/// OFFSET_DATA chunk per data segment and one OFFSET_HOLE chunk per zero run
/// (a single OFFSET_DATA chunk when the client set DF), the last one DONE.
pub fn read_reply(
    cookie: u64,
    offset: u64,
    structured: bool,
    df: bool,
    segments: Vec<ReadSegment>,
) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(segments.len() * 2 + 1);
    let chunk = |done: bool, payload: ChunkPayload<'_>| {
        let mut out = Vec::new();
        ChunkRepr {
            done,
            cookie,
            payload,
        }
        .emit_to_vec(&mut out);
        Piece::Bytes(out)
    };
    // Segment lengths are bounded by the request length (a u32).
    let len32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    if !structured {
        pieces.push(Piece::Bytes(simple_ok(cookie)));
        pieces.extend(segments.into_iter().map(Piece::Data));
    } else if df
        || segments.len() <= 1 && !matches!(segments.first(), Some(ReadSegment::Zero { .. }))
    {
        let total: u64 = segments.iter().map(ReadSegment::len).sum();
        pieces.push(chunk(
            true,
            ChunkPayload::OffsetData {
                offset,
                data_len: len32(total),
            },
        ));
        pieces.extend(segments.into_iter().map(Piece::Data));
    } else {
        let last = segments.len().saturating_sub(1);
        let mut pos = offset;
        for (i, seg) in segments.into_iter().enumerate() {
            let n = seg.len();
            let done = i == last;
            if let ReadSegment::Zero { len } = seg {
                pieces.push(chunk(
                    done,
                    ChunkPayload::OffsetHole {
                        offset: pos,
                        length: len32(len),
                    },
                ));
            } else {
                pieces.push(chunk(
                    done,
                    ChunkPayload::OffsetData {
                        offset: pos,
                        data_len: len32(n),
                    },
                ));
                pieces.push(Piece::Data(seg));
            }
            pos += n;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::negotiated::transmission_flags;
    use crate::wire::{Chunk, ChunkType};
    use khoi_block::testing::MemDisk;

    fn session(structured: bool, read_only: bool) -> Session {
        let mut caps = khoi_block::BlockDevice::device_caps(&MemDisk::new(0));
        caps.read_only = read_only;
        let dev = Checked::new(Arc::new(MemDisk::with_caps(1 << 20, caps)));
        Session {
            flags: transmission_flags(dev.caps(), structured),
            device: dev,
            structured,
            base_allocation: structured.then_some(1),
        }
    }

    #[test]
    fn flags_follow_caps() {
        let rw = session(false, false);
        let f = rw.flags;
        for bit in [
            tf::HAS_FLAGS,
            tf::SEND_FLUSH,
            tf::SEND_FUA,
            tf::SEND_TRIM,
            tf::SEND_WRITE_ZEROES,
            tf::SEND_FAST_ZERO,
            tf::CAN_MULTI_CONN,
        ] {
            assert_ne!(f & bit, 0, "bit {bit:#x}");
        }
        assert_eq!(f & (tf::READ_ONLY | tf::SEND_DF), 0);
        let ro = session(true, true);
        assert_ne!(ro.flags & tf::READ_ONLY, 0);
        assert_ne!(ro.flags & tf::SEND_DF, 0);
        assert_eq!(
            ro.flags & (tf::SEND_FUA | tf::SEND_TRIM | tf::SEND_WRITE_ZEROES),
            0
        );
    }

    #[test]
    fn errno_mapping() {
        let oor = BlockError::OutOfRange {
            offset: 1,
            len: 2,
            size: 0,
        };
        assert_eq!(errno_for(&oor, Command::Read), Errno::Inval);
        assert_eq!(errno_for(&oor, Command::Write), Errno::NoSpc);
        assert_eq!(
            errno_for(&BlockError::ReadOnly, Command::Write),
            Errno::Perm
        );
        assert_eq!(
            errno_for(&BlockError::NoSpace("x".into()), Command::Write),
            Errno::NoSpc
        );
        assert_eq!(errno_for(&BlockError::Gone, Command::Read), Errno::Shutdown);
        let io = BlockError::Io(std::io::Error::other("disk on fire"));
        assert_eq!(errno_for(&io, Command::Flush), Errno::Io);
        assert_eq!(client_message(&io), "I/O error");
    }

    #[test]
    fn validation() {
        let s = session(false, false);
        let ok = |c, f, o, l| s.validate(c, f, o, l);
        assert_eq!(
            ok(Command::Read, 0, 0, 512),
            Ok(Op::Read {
                offset: 0,
                len: 512,
                df: false
            })
        );
        let e = |r: Result<Op, Rejection>| r.expect_err("rejected").errno;
        assert_eq!(e(ok(Command::Read, 0, (1 << 20) - 511, 512)), Errno::Inval);
        assert_eq!(e(ok(Command::Write, 0, 1 << 20, 1)), Errno::NoSpc);
        assert_eq!(e(ok(Command::Read, 0, u64::MAX, 512)), Errno::Inval);
        assert_eq!(e(ok(Command::Read, 0, 0, MAX_PAYLOAD + 1)), Errno::Inval);
        assert_eq!(e(ok(Command::Read, 0, 0, 0)), Errno::Inval);
        assert_eq!(e(ok(Command::Read, cf::DF, 0, 512)), Errno::Inval);
        assert_eq!(e(ok(Command::Read, cf::REQ_ONE, 0, 512)), Errno::Inval);
        assert_eq!(e(ok(Command::Read, 1 << 9, 0, 512)), Errno::Inval);
        assert_eq!(e(ok(Command::BlockStatus, 0, 0, 512)), Errno::Inval);
        assert_eq!(e(ok(Command::Unknown(42), 0, 0, 512)), Errno::Inval);
        assert_eq!(
            e(ok(
                Command::WriteZeroes,
                cf::NO_HOLE | cf::FAST_ZERO,
                0,
                512
            )),
            Errno::NotSup
        );
        let rej = ok(Command::Write, 0, 0, MAX_PAYLOAD + 1).expect_err("too big");
        assert_eq!(rej.discard, MAX_PAYLOAD + 1);
        assert_eq!(ok(Command::Flush, cf::FUA, 0, 0), Ok(Op::Flush));

        let ro = session(true, true);
        assert_eq!(e(ro.validate(Command::Write, 0, 0, 512)), Errno::Perm);
        assert_eq!(e(ro.validate(Command::Read, cf::FUA, 0, 512)), Errno::Inval);
        assert_eq!(
            ro.validate(Command::BlockStatus, cf::REQ_ONE, 0, 512),
            Ok(Op::BlockStatus {
                offset: 0,
                len: 512,
                req_one: true
            })
        );
    }

    #[test]
    fn write_read_block_status() {
        let s = session(true, false);
        let w = s
            .validate(Command::Write, cf::FUA, 8192, 4096)
            .expect("valid");
        s.execute(&w, &[0xab; 4096]).expect("write");
        let r = s.validate(Command::Read, 0, 4096, 8192).expect("valid");
        let Outcome::Read(segs) = s.execute(&r, &[]).expect("read") else {
            panic!("expected read outcome")
        };
        assert!(matches!(segs[0], ReadSegment::Zero { len: 4096 }));
        assert!(matches!(&segs[1], ReadSegment::Mem(v) if v.len() == 4096 && v[0] == 0xab));

        let pieces = s.success_reply(9, &r, Outcome::Read(segs));
        // HOLE chunk, DATA chunk header, data.
        assert_eq!(pieces.len(), 3);
        let Piece::Bytes(hole) = &pieces[0] else {
            panic!("header first")
        };
        let c = Chunk::new_checked(&hole[..]).expect("chunk");
        assert_eq!(c.chunk_type(), ChunkType::OffsetHole);
        assert_eq!(c.flags(), 0);
        let Piece::Bytes(data) = &pieces[1] else {
            panic!("data header")
        };
        let c = Chunk::new_unchecked(&data[..]);
        assert_eq!(c.chunk_type(), ChunkType::OffsetData);
        assert_eq!(c.flags(), crate::wire::chunk_flags::DONE);
        assert_eq!(c.length(), 8 + 4096);

        let bs = s
            .validate(Command::BlockStatus, 0, 0, 16384)
            .expect("valid");
        let Outcome::Extents(d) = s.execute(&bs, &[]).expect("status") else {
            panic!("expected extents")
        };
        let hz = state_flags::HOLE | state_flags::ZERO;
        assert_eq!(
            d,
            vec![
                BlockDescriptor {
                    length: 8192,
                    flags: hz
                },
                BlockDescriptor {
                    length: 4096,
                    flags: 0
                },
                BlockDescriptor {
                    length: 4096,
                    flags: hz
                },
            ]
        );
        let one = s
            .validate(Command::BlockStatus, cf::REQ_ONE, 0, 16384)
            .expect("valid");
        let Outcome::Extents(d) = s.execute(&one, &[]).expect("status") else {
            panic!("expected extents")
        };
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn simple_read_and_df() {
        let segs = || {
            vec![
                ReadSegment::Mem(vec![1; 512]),
                ReadSegment::Zero { len: 512 },
            ]
        };
        let simple = read_reply(5, 0, false, false, segs());
        assert_eq!(simple.len(), 3);
        assert_eq!(simple.iter().map(Piece::wire_len).sum::<u64>(), 16 + 1024);
        let df = read_reply(5, 0, true, true, segs());
        let Piece::Bytes(h) = &df[0] else {
            panic!("header")
        };
        let c = Chunk::new_unchecked(&h[..]);
        assert_eq!(c.chunk_type(), ChunkType::OffsetData);
        assert_eq!(c.length(), 8 + 1024);
        // A read that is all hole is a single DONE hole chunk.
        let hole = read_reply(5, 0, true, false, vec![ReadSegment::Zero { len: 512 }]);
        assert_eq!(hole.len(), 1);
    }

    #[test]
    fn error_replies() {
        let s = session(false, false);
        assert_eq!(
            s.error_reply(3, Errno::Inval, "x"),
            SimpleReplyRepr {
                error: Errno::Inval,
                cookie: 3
            }
            .to_bytes()
        );
        let st = session(true, false);
        let long = "é".repeat(3000);
        let b = st.error_reply(3, Errno::Io, &long);
        let c = ChunkRepr::parse(&Chunk::new_checked(&b[..]).expect("complete")).expect("parses");
        let ChunkPayload::Error { error, message } = c.payload else {
            panic!("error chunk")
        };
        assert_eq!(error, Errno::Io);
        assert!(message.len() <= crate::wire::MAX_STRING_LEN);
        assert!(c.done);
    }
}
