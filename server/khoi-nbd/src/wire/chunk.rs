//! Structured reply chunks: header, payload kinds and `base:allocation`
//! extent descriptors.

use khoi_wire::{be16, be32, be64, enum_with_unknown, put_be16, put_be32, put_be64};

use super::reply::Errno;
use super::{Error, Result, len16, len32};

pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

enum_with_unknown! {
    /// Structured reply chunk types.
    pub enum ChunkType(u16) {
        None = 0,
        OffsetData = 1,
        OffsetHole = 2,
        BlockStatus = 5,
        Error = (1 << 15) | 1,
        ErrorOffset = (1 << 15) | 2,
    }
}

/// Structured reply chunk flags.
pub mod chunk_flags {
    pub const DONE: u16 = 1 << 0;
}

/// `base:allocation` extent flags.
pub mod state_flags {
    pub const HOLE: u32 = 1 << 0;
    pub const ZERO: u32 = 1 << 1;
}

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const TYPE: Range<usize> = 6..8;
    pub const COOKIE: Range<usize> = 8..16;
    pub const LENGTH: Range<usize> = 16..20;
    pub const PAYLOAD: usize = LENGTH.end;
}

/// View of a structured reply chunk: 20-byte header plus payload.
#[derive(Debug, Clone)]
pub struct Chunk<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Chunk<T> {
    pub const HEADER_LEN: usize = field::PAYLOAD;

    pub fn new_unchecked(buffer: T) -> Self {
        Chunk { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let c = Self::new_unchecked(buffer);
        c.check_len()?;
        Ok(c)
    }

    /// Checks the header and that the declared payload is fully present.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < Self::HEADER_LEN {
            return Err(Error);
        }
        let len = usize::try_from(self.length()).map_err(|_| Error)?;
        if b.len() - Self::HEADER_LEN < len {
            return Err(Error);
        }
        Ok(())
    }

    pub fn magic(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::MAGIC])
    }

    pub fn flags(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::FLAGS])
    }

    pub fn chunk_type(&self) -> ChunkType {
        ChunkType::from(be16(&self.buffer.as_ref()[field::TYPE]))
    }

    pub fn cookie(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::COOKIE])
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::LENGTH])
    }

    pub fn total_len(&self) -> usize {
        Self::HEADER_LEN + usize::try_from(self.length()).unwrap_or(usize::MAX - Self::HEADER_LEN)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Chunk<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let len = usize::try_from(be32(&b[field::LENGTH])).unwrap_or(0);
        &b[field::PAYLOAD..field::PAYLOAD + len]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Chunk<T> {
    pub fn set_magic(&mut self, v: u32) {
        put_be32(&mut self.buffer.as_mut()[field::MAGIC], v);
    }

    pub fn set_flags(&mut self, v: u16) {
        put_be16(&mut self.buffer.as_mut()[field::FLAGS], v);
    }

    pub fn set_chunk_type(&mut self, v: ChunkType) {
        put_be16(&mut self.buffer.as_mut()[field::TYPE], u16::from(v));
    }

    pub fn set_cookie(&mut self, v: u64) {
        put_be64(&mut self.buffer.as_mut()[field::COOKIE], v);
    }

    pub fn set_length(&mut self, v: u32) {
        put_be32(&mut self.buffer.as_mut()[field::LENGTH], v);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// One `base:allocation` (or other context) extent descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDescriptor {
    pub length: u32,
    pub flags: u32,
}

/// Descriptors of a BLOCK_STATUS chunk, either parsed (raw bytes) or to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptors<'a> {
    Raw(&'a [u8]),
    List(&'a [BlockDescriptor]),
}

impl<'a> Descriptors<'a> {
    pub fn len(&self) -> usize {
        match self {
            Descriptors::Raw(b) => b.len() / 8,
            Descriptors::List(l) => l.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = BlockDescriptor> + 'a {
        let (raw, list): (&'a [u8], &'a [BlockDescriptor]) = match *self {
            Descriptors::Raw(b) => (b, &[]),
            Descriptors::List(l) => (&[], l),
        };
        raw.chunks_exact(8)
            .map(|c| BlockDescriptor {
                length: be32(&c[0..4]),
                flags: be32(&c[4..8]),
            })
            .chain(list.iter().copied())
    }
}

/// Payload of a structured reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPayload<'a> {
    None,
    /// Only the 8-byte offset is part of the Repr: `data_len` bytes of data
    /// follow it on the wire, written by the caller (possibly by `sendfile`).
    OffsetData {
        offset: u64,
        data_len: u32,
    },
    OffsetHole {
        offset: u64,
        length: u32,
    },
    BlockStatus {
        context_id: u32,
        descriptors: Descriptors<'a>,
    },
    Error {
        error: Errno,
        message: &'a str,
    },
    Unknown {
        kind: u16,
        data: &'a [u8],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRepr<'a> {
    pub done: bool,
    pub cookie: u64,
    pub payload: ChunkPayload<'a>,
}

impl<'a> ChunkRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(c: &Chunk<&'a T>) -> Result<Self> {
        c.check_len()?;
        if c.magic() != STRUCTURED_REPLY_MAGIC {
            return Err(Error);
        }
        let p = c.payload();
        let payload = match c.chunk_type() {
            ChunkType::None if p.is_empty() => ChunkPayload::None,
            ChunkType::OffsetData if p.len() > 8 => ChunkPayload::OffsetData {
                offset: be64(&p[0..8]),
                data_len: len32(p.len() - 8),
            },
            ChunkType::OffsetHole if p.len() == 12 => ChunkPayload::OffsetHole {
                offset: be64(&p[0..8]),
                length: be32(&p[8..12]),
            },
            ChunkType::BlockStatus if p.len() >= 12 && (p.len() - 4).is_multiple_of(8) => {
                ChunkPayload::BlockStatus {
                    context_id: be32(&p[0..4]),
                    descriptors: Descriptors::Raw(&p[4..]),
                }
            }
            ChunkType::Error if p.len() >= 6 => {
                let mlen = usize::from(be16(&p[4..6]));
                let msg = p.get(6..6 + mlen).ok_or(Error)?;
                ChunkPayload::Error {
                    error: Errno::from(be32(&p[0..4])),
                    message: std::str::from_utf8(msg).map_err(|_| Error)?,
                }
            }
            ChunkType::Unknown(kind) => ChunkPayload::Unknown { kind, data: p },
            _ => return Err(Error),
        };
        Ok(ChunkRepr {
            done: c.flags() & chunk_flags::DONE != 0,
            cookie: c.cookie(),
            payload,
        })
    }

    fn chunk_type(&self) -> ChunkType {
        match self.payload {
            ChunkPayload::None => ChunkType::None,
            ChunkPayload::OffsetData { .. } => ChunkType::OffsetData,
            ChunkPayload::OffsetHole { .. } => ChunkType::OffsetHole,
            ChunkPayload::BlockStatus { .. } => ChunkType::BlockStatus,
            ChunkPayload::Error { .. } => ChunkType::Error,
            ChunkPayload::Unknown { kind, .. } => ChunkType::Unknown(kind),
        }
    }

    /// Bytes of payload this Repr itself emits (excluding OFFSET_DATA's data).
    fn emitted_payload_len(&self) -> usize {
        match self.payload {
            ChunkPayload::None => 0,
            ChunkPayload::OffsetData { .. } => 8,
            ChunkPayload::OffsetHole { .. } => 12,
            ChunkPayload::BlockStatus { descriptors, .. } => 4 + 8 * descriptors.len(),
            ChunkPayload::Error { message, .. } => 6 + message.len(),
            ChunkPayload::Unknown { data, .. } => data.len(),
        }
    }

    /// Value of the header's length field.
    fn wire_length(&self) -> u32 {
        let base = len32(self.emitted_payload_len());
        match self.payload {
            ChunkPayload::OffsetData { data_len, .. } => base.saturating_add(data_len),
            _ => base,
        }
    }

    /// Bytes `emit` writes. For OFFSET_DATA the data itself is not included.
    pub fn buffer_len(&self) -> usize {
        Chunk::<&[u8]>::HEADER_LEN + self.emitted_payload_len()
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, c: &mut Chunk<T>) {
        c.set_magic(STRUCTURED_REPLY_MAGIC);
        c.set_flags(if self.done { chunk_flags::DONE } else { 0 });
        c.set_chunk_type(self.chunk_type());
        c.set_cookie(self.cookie);
        c.set_length(self.wire_length());
        let p = c.payload_mut();
        match self.payload {
            ChunkPayload::None => {}
            ChunkPayload::OffsetData { offset, .. } => put_be64(p, offset),
            ChunkPayload::OffsetHole { offset, length } => {
                put_be64(p, offset);
                put_be32(&mut p[8..], length);
            }
            ChunkPayload::BlockStatus {
                context_id,
                descriptors,
            } => {
                put_be32(p, context_id);
                for (i, d) in descriptors.iter().enumerate() {
                    let at = 4 + 8 * i;
                    put_be32(&mut p[at..], d.length);
                    put_be32(&mut p[at + 4..], d.flags);
                }
            }
            ChunkPayload::Error { error, message } => {
                put_be32(p, u32::from(error));
                put_be16(&mut p[4..], len16(message.len()));
                p[6..6 + message.len()].copy_from_slice(message.as_bytes());
            }
            ChunkPayload::Unknown { data, .. } => p[..data.len()].copy_from_slice(data),
        }
    }

    pub fn emit_to_vec(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.buffer_len(), 0);
        self.emit(&mut Chunk::new_unchecked(&mut out[start..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Structured chunks, all for cookie 7.
    static CHUNK_DATA: [u8; 20 + 8 + 4] = [
        0x66, 0x8e, 0x33, 0xef, 0x00, 0x01, // DONE
        0x00, 0x01, // OFFSET_DATA
        0, 0, 0, 0, 0, 0, 0, 7, // cookie
        0x00, 0x00, 0x00, 0x0c, // length 8 + 4
        0, 0, 0, 0, 0, 0, 0x02, 0x00, // offset 512
        0xde, 0xad, 0xbe, 0xef,
    ];
    static CHUNK_HOLE: [u8; 20 + 12] = [
        0x66, 0x8e, 0x33, 0xef, 0x00, 0x00, 0x00, 0x02, // OFFSET_HOLE
        0, 0, 0, 0, 0, 0, 0, 7, 0x00, 0x00, 0x00, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0x00, // 4096
        0x00, 0x01, 0x00, 0x00, // 64 KiB
    ];
    static CHUNK_BS: [u8; 20 + 4 + 16] = [
        0x66, 0x8e, 0x33, 0xef, 0x00, 0x01, 0x00, 0x05, // BLOCK_STATUS, DONE
        0, 0, 0, 0, 0, 0, 0, 7, 0x00, 0x00, 0x00, 0x14, // 20
        0x00, 0x00, 0x00, 0x01, // context 1
        0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, // 4096 data
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, // 64 KiB hole|zero
    ];
    static CHUNK_ERR: [u8; 20 + 6 + 3] = [
        0x66, 0x8e, 0x33, 0xef, 0x00, 0x01, 0x80, 0x01, // ERROR, DONE
        0, 0, 0, 0, 0, 0, 0, 7, 0x00, 0x00, 0x00, 0x09, // 9
        0x00, 0x00, 0x00, 0x05, // EIO
        0x00, 0x03, b'b', b'a', b'd',
    ];
    static CHUNK_NONE: [u8; 20] = [
        0x66, 0x8e, 0x33, 0xef, 0x00, 0x01, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0,
    ];
    static DESCS: [BlockDescriptor; 2] = [
        BlockDescriptor {
            length: 4096,
            flags: 0,
        },
        BlockDescriptor {
            length: 65536,
            flags: state_flags::HOLE | state_flags::ZERO,
        },
    ];

    #[test]
    fn chunk_deconstruct_construct() {
        let c = Chunk::new_checked(&CHUNK_DATA[..]).expect("complete");
        assert_eq!(c.magic(), STRUCTURED_REPLY_MAGIC);
        assert_eq!(c.flags(), chunk_flags::DONE);
        assert_eq!(c.chunk_type(), ChunkType::OffsetData);
        assert_eq!(c.cookie(), 7);
        assert_eq!(c.length(), 12);
        assert_eq!(c.payload(), &CHUNK_DATA[20..]);
        assert!(Chunk::new_checked(&CHUNK_DATA[..31]).is_err());

        let mut buf = [0xa5u8; 32];
        let mut w = Chunk::new_unchecked(&mut buf[..]);
        w.set_magic(STRUCTURED_REPLY_MAGIC);
        w.set_flags(chunk_flags::DONE);
        w.set_chunk_type(ChunkType::OffsetData);
        w.set_cookie(7);
        w.set_length(12);
        w.payload_mut()[..8].copy_from_slice(&512u64.to_be_bytes());
        w.payload_mut()[8..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(buf, CHUNK_DATA);
    }

    #[test]
    fn chunk_parse_emit() {
        let cases: Vec<(&[u8], ChunkRepr<'static>)> = vec![
            (
                &CHUNK_HOLE[..],
                ChunkRepr {
                    done: false,
                    cookie: 7,
                    payload: ChunkPayload::OffsetHole {
                        offset: 4096,
                        length: 65536,
                    },
                },
            ),
            (
                &CHUNK_ERR[..],
                ChunkRepr {
                    done: true,
                    cookie: 7,
                    payload: ChunkPayload::Error {
                        error: Errno::Io,
                        message: "bad",
                    },
                },
            ),
            (
                &CHUNK_NONE[..],
                ChunkRepr {
                    done: true,
                    cookie: 7,
                    payload: ChunkPayload::None,
                },
            ),
        ];
        for (bytes, repr) in cases {
            assert_eq!(ChunkRepr::parse(&Chunk::new_unchecked(bytes)), Ok(repr));
            let mut out = Vec::new();
            repr.emit_to_vec(&mut out);
            assert_eq!(out, bytes);
        }

        // BLOCK_STATUS: parsed descriptors are raw, emitted from a list.
        let parsed = ChunkRepr::parse(&Chunk::new_unchecked(&CHUNK_BS[..])).expect("parses");
        let ChunkPayload::BlockStatus {
            context_id,
            descriptors,
        } = parsed.payload
        else {
            panic!("expected block status")
        };
        assert_eq!(context_id, 1);
        assert_eq!(descriptors.iter().collect::<Vec<_>>(), DESCS.to_vec());
        let repr = ChunkRepr {
            done: true,
            cookie: 7,
            payload: ChunkPayload::BlockStatus {
                context_id: 1,
                descriptors: Descriptors::List(&DESCS),
            },
        };
        let mut out = Vec::new();
        repr.emit_to_vec(&mut out);
        assert_eq!(out, CHUNK_BS);

        // OFFSET_DATA: the Repr covers header + offset; data is appended.
        let parsed = ChunkRepr::parse(&Chunk::new_unchecked(&CHUNK_DATA[..])).expect("parses");
        let repr = ChunkRepr {
            done: true,
            cookie: 7,
            payload: ChunkPayload::OffsetData {
                offset: 512,
                data_len: 4,
            },
        };
        assert_eq!(parsed, repr);
        assert_eq!(repr.buffer_len(), 28);
        let mut out = Vec::new();
        repr.emit_to_vec(&mut out);
        out.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(out, CHUNK_DATA);
    }
}
