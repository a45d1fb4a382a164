//! The server's answers during option haggling: the option reply header,
//! its typed bodies (`NBD_REP_INFO` items among them) and the bare reply
//! to `NBD_OPT_EXPORT_NAME`.

use khoi_wire::{be16, be32, be64, enum_with_unknown, put_be16, put_be32, put_be64};

use super::option::{InfoType, OptionCode};
use super::{Error, Result, len32, take_string};

pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Bytes of zero padding after an `NBD_OPT_EXPORT_NAME` reply, unless the
/// client negotiated `NO_ZEROES`.
pub const EXPORT_NAME_PADDING: usize = 124;

const REP_ERR: u32 = 1 << 31;

enum_with_unknown! {
    /// Option reply types; errors have bit 31 set.
    pub enum ReplyType(u32) {
        Ack = 1,
        Server = 2,
        Info = 3,
        MetaContext = 4,
        ErrUnsup = REP_ERR | 1,
        ErrPolicy = REP_ERR | 2,
        ErrInvalid = REP_ERR | 3,
        ErrPlatform = REP_ERR | 4,
        ErrTlsReqd = REP_ERR | 5,
        ErrUnknown = REP_ERR | 6,
        ErrShutdown = REP_ERR | 7,
        ErrBlockSizeReqd = REP_ERR | 8,
        ErrTooBig = REP_ERR | 9,
        ErrExtHeaderReqd = REP_ERR | 10,
    }
}

impl ReplyType {
    pub fn is_error(self) -> bool {
        u32::from(self) & REP_ERR != 0
    }
}

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const OPTION: Range<usize> = 8..12;
    pub const TYPE: Range<usize> = 12..16;
    pub const LENGTH: Range<usize> = 16..20;
    pub const PAYLOAD: usize = LENGTH.end;
}

/// View of an option reply: 20-byte header plus payload.
#[derive(Debug, Clone)]
pub struct OptionReply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> OptionReply<T> {
    pub const HEADER_LEN: usize = field::PAYLOAD;

    pub fn new_unchecked(buffer: T) -> Self {
        OptionReply { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let r = Self::new_unchecked(buffer);
        r.check_len()?;
        Ok(r)
    }

    /// Checks the header and that the whole declared payload is present.
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

    pub fn magic(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::MAGIC])
    }

    pub fn option(&self) -> OptionCode {
        OptionCode::from(be32(&self.buffer.as_ref()[field::OPTION]))
    }

    pub fn reply_type(&self) -> ReplyType {
        ReplyType::from(be32(&self.buffer.as_ref()[field::TYPE]))
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Total bytes this reply occupies (header plus payload).
    pub fn total_len(&self) -> usize {
        Self::HEADER_LEN + usize::try_from(self.length()).unwrap_or(usize::MAX - Self::HEADER_LEN)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> OptionReply<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let len = usize::try_from(be32(&b[field::LENGTH])).unwrap_or(0);
        &b[field::PAYLOAD..field::PAYLOAD + len]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> OptionReply<T> {
    pub fn set_magic(&mut self, v: u64) {
        put_be64(&mut self.buffer.as_mut()[field::MAGIC], v);
    }

    pub fn set_option(&mut self, v: OptionCode) {
        put_be32(&mut self.buffer.as_mut()[field::OPTION], u32::from(v));
    }

    pub fn set_reply_type(&mut self, v: ReplyType) {
        put_be32(&mut self.buffer.as_mut()[field::TYPE], u32::from(v));
    }

    pub fn set_length(&mut self, v: u32) {
        put_be32(&mut self.buffer.as_mut()[field::LENGTH], v);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// An `NBD_REP_INFO` item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoRepr<'a> {
    Export { size: u64, flags: u16 },
    Name(&'a str),
    Description(&'a str),
    BlockSize { min: u32, preferred: u32, max: u32 },
    Unknown { kind: u16, data: &'a [u8] },
}

impl<'a> InfoRepr<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let kind = InfoType::from(be16(data.get(0..2).ok_or(Error)?));
        let body = &data[2..];
        let text = || std::str::from_utf8(body).map_err(|_| Error);
        match kind {
            InfoType::Export if body.len() == 10 => Ok(InfoRepr::Export {
                size: be64(&body[0..8]),
                flags: be16(&body[8..10]),
            }),
            InfoType::Name => text().map(InfoRepr::Name),
            InfoType::Description => text().map(InfoRepr::Description),
            InfoType::BlockSize if body.len() == 12 => Ok(InfoRepr::BlockSize {
                min: be32(&body[0..4]),
                preferred: be32(&body[4..8]),
                max: be32(&body[8..12]),
            }),
            InfoType::Unknown(kind) => Ok(InfoRepr::Unknown { kind, data: body }),
            _ => Err(Error),
        }
    }

    pub fn buffer_len(&self) -> usize {
        2 + match self {
            InfoRepr::Export { .. } => 10,
            InfoRepr::Name(s) | InfoRepr::Description(s) => s.len(),
            InfoRepr::BlockSize { .. } => 12,
            InfoRepr::Unknown { data, .. } => data.len(),
        }
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let kind = match self {
            InfoRepr::Export { .. } => InfoType::Export,
            InfoRepr::Name(_) => InfoType::Name,
            InfoRepr::Description(_) => InfoType::Description,
            InfoRepr::BlockSize { .. } => InfoType::BlockSize,
            InfoRepr::Unknown { kind, .. } => InfoType::Unknown(*kind),
        };
        put_be16(buf, u16::from(kind));
        let body = &mut buf[2..];
        match *self {
            InfoRepr::Export { size, flags } => {
                put_be64(body, size);
                put_be16(&mut body[8..], flags);
            }
            InfoRepr::Name(s) | InfoRepr::Description(s) => {
                body[..s.len()].copy_from_slice(s.as_bytes())
            }
            InfoRepr::BlockSize {
                min,
                preferred,
                max,
            } => {
                put_be32(body, min);
                put_be32(&mut body[4..], preferred);
                put_be32(&mut body[8..], max);
            }
            InfoRepr::Unknown { data, .. } => body[..data.len()].copy_from_slice(data),
        }
    }
}

/// The meaning of an option reply's type and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBody<'a> {
    Ack,
    Server {
        name: &'a str,
        description: &'a str,
    },
    Info(InfoRepr<'a>),
    MetaContext {
        id: u32,
        name: &'a str,
    },
    /// Any error reply type, with its optional human-readable message.
    Error {
        kind: ReplyType,
        message: &'a str,
    },
    Unknown {
        kind: ReplyType,
        data: &'a [u8],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyRepr<'a> {
    pub option: OptionCode,
    pub body: ReplyBody<'a>,
}

impl<'a> OptionReplyRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(r: &OptionReply<&'a T>) -> Result<Self> {
        r.check_len()?;
        if r.magic() != OPTION_REPLY_MAGIC {
            return Err(Error);
        }
        let data = r.payload();
        let text = |b: &'a [u8]| std::str::from_utf8(b).map_err(|_| Error);
        let body = match r.reply_type() {
            ReplyType::Ack if data.is_empty() => ReplyBody::Ack,
            ReplyType::Ack => return Err(Error),
            ReplyType::Server => {
                let mut pos = 0;
                let name = take_string(data, &mut pos)?;
                ReplyBody::Server {
                    name,
                    description: text(&data[pos..])?,
                }
            }
            ReplyType::Info => ReplyBody::Info(InfoRepr::parse(data)?),
            ReplyType::MetaContext => ReplyBody::MetaContext {
                id: be32(data.get(0..4).ok_or(Error)?),
                name: text(&data[4..])?,
            },
            kind if kind.is_error() => ReplyBody::Error {
                kind,
                message: text(data)?,
            },
            kind => ReplyBody::Unknown { kind, data },
        };
        Ok(OptionReplyRepr {
            option: r.option(),
            body,
        })
    }

    fn reply_type(&self) -> ReplyType {
        match self.body {
            ReplyBody::Ack => ReplyType::Ack,
            ReplyBody::Server { .. } => ReplyType::Server,
            ReplyBody::Info(_) => ReplyType::Info,
            ReplyBody::MetaContext { .. } => ReplyType::MetaContext,
            ReplyBody::Error { kind, .. } | ReplyBody::Unknown { kind, .. } => kind,
        }
    }

    fn payload_len(&self) -> usize {
        match self.body {
            ReplyBody::Ack => 0,
            ReplyBody::Server { name, description } => 4 + name.len() + description.len(),
            ReplyBody::Info(i) => i.buffer_len(),
            ReplyBody::MetaContext { name, .. } => 4 + name.len(),
            ReplyBody::Error { message, .. } => message.len(),
            ReplyBody::Unknown { data, .. } => data.len(),
        }
    }

    pub fn buffer_len(&self) -> usize {
        OptionReply::<&[u8]>::HEADER_LEN + self.payload_len()
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, r: &mut OptionReply<T>) {
        r.set_magic(OPTION_REPLY_MAGIC);
        r.set_option(self.option);
        r.set_reply_type(self.reply_type());
        r.set_length(len32(self.payload_len()));
        let p = r.payload_mut();
        match self.body {
            ReplyBody::Ack => {}
            ReplyBody::Server { name, description } => {
                let n = name.len();
                put_be32(p, len32(n));
                p[4..4 + n].copy_from_slice(name.as_bytes());
                p[4 + n..4 + n + description.len()].copy_from_slice(description.as_bytes());
            }
            ReplyBody::Info(i) => i.emit(p),
            ReplyBody::MetaContext { id, name } => {
                put_be32(p, id);
                p[4..4 + name.len()].copy_from_slice(name.as_bytes());
            }
            ReplyBody::Error { message, .. } => {
                p[..message.len()].copy_from_slice(message.as_bytes())
            }
            ReplyBody::Unknown { data, .. } => p[..data.len()].copy_from_slice(data),
        }
    }

    /// Appends the emitted reply to `out` (convenience for the handshake).
    pub fn emit_to_vec(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.buffer_len(), 0);
        self.emit(&mut OptionReply::new_unchecked(&mut out[start..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Option replies: ACK to STRUCTURED_REPLY, SERVER, INFO(EXPORT),
    // INFO(BLOCK_SIZE), META_CONTEXT, ERR_UNKNOWN with message.
    static REP_ACK: [u8; 20] = [
        0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, // reply magic
        0x00, 0x00, 0x00, 0x08, // STRUCTURED_REPLY
        0x00, 0x00, 0x00, 0x01, // ACK
        0x00, 0x00, 0x00, 0x00,
    ];
    static REP_SERVER: [u8; 20 + 4 + 2 + 3] = [
        0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0x00, 0x00, 0x00, 0x03, // LIST
        0x00, 0x00, 0x00, 0x02, // SERVER
        0x00, 0x00, 0x00, 0x09, // length 9
        0x00, 0x00, 0x00, 0x02, b's', b'1', b'd', b'e', b'v',
    ];
    static REP_INFO_EXPORT: [u8; 20 + 12] = [
        0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0x00, 0x00, 0x00, 0x07, // GO
        0x00, 0x00, 0x00, 0x03, // INFO
        0x00, 0x00, 0x00, 0x0c, // length 12
        0x00, 0x00, // NBD_INFO_EXPORT
        0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // 1 MiB
        0x0d, 0x6d, // flags
    ];
    static REP_INFO_BLOCK_SIZE: [u8; 20 + 14] = [
        0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0x00, 0x00, 0x00, 0x06, // INFO
        0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x03, // BLOCK_SIZE
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x10, 0x00, 0x02, 0x00, 0x00, 0x00,
    ];
    static REP_META: [u8; 20 + 4 + 15] = [
        0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0x00, 0x00, 0x00, 0x0a, // SET_META
        0x00, 0x00, 0x00, 0x04, // META_CONTEXT
        0x00, 0x00, 0x00, 0x13, // length 19
        0x00, 0x00, 0x00, 0x01, // id 1
        b'b', b'a', b's', b'e', b':', b'a', b'l', b'l', b'o', b'c', b'a', b't', b'i', b'o', b'n',
    ];
    static REP_ERR_UNKNOWN: [u8; 20 + 2] = [
        0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0x00, 0x00, 0x00, 0x07, // GO
        0x80, 0x00, 0x00, 0x06, // ERR_UNKNOWN
        0x00, 0x00, 0x00, 0x02, b'n', b'o',
    ];

    fn reply_cases() -> Vec<(&'static [u8], OptionReplyRepr<'static>)> {
        vec![
            (
                &REP_ACK[..],
                OptionReplyRepr {
                    option: OptionCode::StructuredReply,
                    body: ReplyBody::Ack,
                },
            ),
            (
                &REP_SERVER[..],
                OptionReplyRepr {
                    option: OptionCode::List,
                    body: ReplyBody::Server {
                        name: "s1",
                        description: "dev",
                    },
                },
            ),
            (
                &REP_INFO_EXPORT[..],
                OptionReplyRepr {
                    option: OptionCode::Go,
                    body: ReplyBody::Info(InfoRepr::Export {
                        size: 1 << 20,
                        flags: 0x0d6d,
                    }),
                },
            ),
            (
                &REP_INFO_BLOCK_SIZE[..],
                OptionReplyRepr {
                    option: OptionCode::Info,
                    body: ReplyBody::Info(InfoRepr::BlockSize {
                        min: 1,
                        preferred: 4096,
                        max: 32 << 20,
                    }),
                },
            ),
            (
                &REP_META[..],
                OptionReplyRepr {
                    option: OptionCode::SetMetaContext,
                    body: ReplyBody::MetaContext {
                        id: 1,
                        name: "base:allocation",
                    },
                },
            ),
            (
                &REP_ERR_UNKNOWN[..],
                OptionReplyRepr {
                    option: OptionCode::Go,
                    body: ReplyBody::Error {
                        kind: ReplyType::ErrUnknown,
                        message: "no",
                    },
                },
            ),
        ]
    }

    #[test]
    fn option_reply_deconstruct() {
        let r = OptionReply::new_checked(&REP_SERVER[..]).expect("complete");
        assert_eq!(r.magic(), OPTION_REPLY_MAGIC);
        assert_eq!(r.option(), OptionCode::List);
        assert_eq!(r.reply_type(), ReplyType::Server);
        assert_eq!(r.length(), 9);
        assert_eq!(r.payload(), &REP_SERVER[20..]);
        assert!(OptionReply::new_checked(&REP_SERVER[..28]).is_err());
        assert!(ReplyType::ErrUnknown.is_error());
        assert!(!ReplyType::Server.is_error());
    }

    #[test]
    fn option_reply_construct() {
        let mut buf = [0xa5u8; 22];
        let mut r = OptionReply::new_unchecked(&mut buf[..]);
        r.set_magic(OPTION_REPLY_MAGIC);
        r.set_option(OptionCode::Go);
        r.set_reply_type(ReplyType::ErrUnknown);
        r.set_length(2);
        r.payload_mut().copy_from_slice(b"no");
        assert_eq!(buf, REP_ERR_UNKNOWN);
    }

    #[test]
    fn option_reply_parse_emit() {
        for (bytes, repr) in reply_cases() {
            let parsed =
                OptionReplyRepr::parse(&OptionReply::new_unchecked(bytes)).expect("parses");
            assert_eq!(parsed, repr);
            assert_eq!(repr.buffer_len(), bytes.len());
            let mut buf = vec![0xa5u8; repr.buffer_len()];
            repr.emit(&mut OptionReply::new_unchecked(&mut buf[..]));
            assert_eq!(buf, bytes, "{repr:?}");
        }
    }

    #[test]
    fn info_name_description_round_trip() {
        for info in [InfoRepr::Name("seat/a"), InfoRepr::Description("Seat A")] {
            let mut buf = vec![0xa5u8; info.buffer_len()];
            info.emit(&mut buf);
            assert_eq!(InfoRepr::parse(&buf), Ok(info));
        }
        assert_eq!(
            InfoRepr::parse(&[0x00, 0x01, b'x']),
            Ok(InfoRepr::Name("x"))
        );
        // EXPORT info with the wrong length.
        assert!(InfoRepr::parse(&[0, 0, 1, 2, 3]).is_err());
    }
}
