//! NBD wire formats: zero-copy views over byte buffers plus `Repr`s.
//!
//! Follows smoltcp's contract. A view (`OptionHeader`, `Request`, ...) wraps
//! any `AsRef<[u8]>`; `new_checked` verifies the length once so no accessor can
//! panic afterwards, and `new_unchecked` is for emitting into a buffer the
//! caller sized with `buffer_len()`. A `Repr` is the parsed, validated meaning
//! of a message: `parse` never panics on untrusted bytes, `emit` never fails on
//! a buffer of `buffer_len()` bytes. Code enums keep unknown values as
//! `Unknown(raw)` so an unrecognised option or command is data, not an error.
//!
//! All integers are big-endian (network order), as the protocol requires.

use std::fmt;

/// A message was truncated or malformed. Deliberately carries no detail: the
/// caller knows which message it was parsing and picks the protocol reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed NBD message")
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// "NBDMAGIC": first word of every newstyle greeting.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": greeting's second word and every option request's magic.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Longest string (export name, message, query) the spec allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Bytes of zero padding after an `NBD_OPT_EXPORT_NAME` reply, unless the
/// client negotiated `NO_ZEROES`.
pub const EXPORT_NAME_PADDING: usize = 124;

macro_rules! enum_with_unknown {
    (
        $(#[$meta:meta])*
        pub enum $name:ident($ty:ty) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            Unknown($ty),
        }

        impl From<$ty> for $name {
            fn from(value: $ty) -> Self {
                // Guards rather than patterns so values may be const
                // expressions (the error bit of reply types).
                $( if value == $value { return $name::$variant; } )+
                $name::Unknown(value)
            }
        }

        impl From<$name> for $ty {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

enum_with_unknown! {
    /// Option codes sent during option haggling.
    pub enum OptionCode(u32) {
        ExportName = 1,
        Abort = 2,
        List = 3,
        PeekExport = 4,
        StartTls = 5,
        Info = 6,
        Go = 7,
        StructuredReply = 8,
        ListMetaContext = 9,
        SetMetaContext = 10,
        ExtendedHeaders = 11,
    }
}

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

enum_with_unknown! {
    /// Information items of `NBD_REP_INFO` / requested by INFO and GO.
    pub enum InfoType(u16) {
        Export = 0,
        Name = 1,
        Description = 2,
        BlockSize = 3,
    }
}

enum_with_unknown! {
    /// Transmission-phase commands.
    pub enum Command(u16) {
        Read = 0,
        Write = 1,
        Disc = 2,
        Flush = 3,
        Trim = 4,
        Cache = 5,
        WriteZeroes = 6,
        BlockStatus = 7,
        Resize = 8,
    }
}

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

enum_with_unknown! {
    /// Error values of replies. The protocol fixes these numbers (they are
    /// Linux errno values) independently of the host's errno.
    pub enum Errno(u32) {
        Ok = 0,
        Perm = 1,
        Io = 5,
        NoMem = 12,
        Inval = 22,
        NoSpc = 28,
        Overflow = 75,
        NotSup = 95,
        Shutdown = 108,
    }
}

/// Handshake flags (server greeting).
pub mod handshake_flags {
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (reply to the greeting).
pub mod client_flags {
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags (per export).
pub mod transmission_flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_RESIZE: u16 = 1 << 9;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command flags (transmission request).
pub mod command_flags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Every flag this server understands; anything else is rejected.
    pub const KNOWN: u16 = FUA | NO_HOLE | DF | REQ_ONE | FAST_ZERO;
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

fn be16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_be_bytes(a)
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Length of a string or payload as a wire `u32`; every caller bounds its
/// input far below 4 GiB, so saturation never happens in practice but keeps
/// the conversion total.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Reads a `u32`-length-prefixed string at `*pos`, advancing it.
fn take_string<'a>(data: &'a [u8], pos: &mut usize) -> Result<&'a str> {
    let len_end = pos.checked_add(4).ok_or(Error)?;
    let len_bytes = data.get(*pos..len_end).ok_or(Error)?;
    let len = usize::try_from(be32(len_bytes)).map_err(|_| Error)?;
    let end = len_end.checked_add(len).ok_or(Error)?;
    let bytes = data.get(len_end..end).ok_or(Error)?;
    *pos = end;
    std::str::from_utf8(bytes).map_err(|_| Error)
}

// ---------------------------------------------------------------------------
// Handshake: greeting and client flags

/// The fixed newstyle server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreetingRepr {
    pub flags: u16,
}

impl GreetingRepr {
    pub const LEN: usize = 18;

    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.len() < Self::LEN
            || be64(&buf[0..8]) != INIT_MAGIC
            || be64(&buf[8..16]) != OPTION_MAGIC
        {
            return Err(Error);
        }
        Ok(GreetingRepr {
            flags: be16(&buf[16..18]),
        })
    }

    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&INIT_MAGIC.to_be_bytes());
        buf[8..16].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
        buf[16..18].copy_from_slice(&self.flags.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------
// Option request header

mod opt_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const OPTION: Range<usize> = 8..12;
    pub const LENGTH: Range<usize> = 12..16;
}

/// View of the 16-byte header preceding each option's data.
#[derive(Debug, Clone)]
pub struct OptionHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> OptionHeader<T> {
    pub const LEN: usize = opt_field::LENGTH.end;

    pub fn new_unchecked(buffer: T) -> Self {
        OptionHeader { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    pub fn magic(&self) -> u64 {
        be64(&self.buffer.as_ref()[opt_field::MAGIC])
    }

    pub fn option(&self) -> OptionCode {
        OptionCode::from(be32(&self.buffer.as_ref()[opt_field::OPTION]))
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[opt_field::LENGTH])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> OptionHeader<T> {
    pub fn set_magic(&mut self, v: u64) {
        self.buffer.as_mut()[opt_field::MAGIC].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_option(&mut self, v: OptionCode) {
        self.buffer.as_mut()[opt_field::OPTION].copy_from_slice(&u32::from(v).to_be_bytes());
    }

    pub fn set_length(&mut self, v: u32) {
        self.buffer.as_mut()[opt_field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeaderRepr {
    pub option: OptionCode,
    pub length: u32,
}

impl OptionHeaderRepr {
    pub fn parse<T: AsRef<[u8]>>(h: &OptionHeader<T>) -> Result<Self> {
        if h.magic() != OPTION_MAGIC {
            return Err(Error);
        }
        Ok(OptionHeaderRepr {
            option: h.option(),
            length: h.length(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        OptionHeader::<&[u8]>::LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut OptionHeader<T>) {
        h.set_magic(OPTION_MAGIC);
        h.set_option(self.option);
        h.set_length(self.length);
    }
}

// ---------------------------------------------------------------------------
// Option request data

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: export name and the list of
/// information items the client asks for (kept raw; iterate with `requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a str,
    raw_requests: &'a [u8],
}

impl<'a> InfoRequest<'a> {
    pub fn new(name: &'a str, raw_requests: &'a [u8]) -> Self {
        InfoRequest { name, raw_requests }
    }

    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let mut pos = 0;
        let name = take_string(data, &mut pos)?;
        let count_bytes = data.get(pos..pos + 2).ok_or(Error)?;
        let count = usize::from(be16(count_bytes));
        let raw_requests = &data[pos + 2..];
        if raw_requests.len() != count * 2 {
            return Err(Error);
        }
        Ok(InfoRequest { name, raw_requests })
    }

    pub fn requests(&self) -> impl Iterator<Item = InfoType> + 'a {
        self.raw_requests
            .chunks_exact(2)
            .map(|c| InfoType::from(be16(c)))
    }

    pub fn buffer_len(&self) -> usize {
        4 + self.name.len() + 2 + self.raw_requests.len()
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let n = self.name.len();
        buf[0..4].copy_from_slice(&len32(n).to_be_bytes());
        buf[4..4 + n].copy_from_slice(self.name.as_bytes());
        let count = len16(self.raw_requests.len() / 2);
        buf[4 + n..6 + n].copy_from_slice(&count.to_be_bytes());
        buf[6 + n..6 + n + self.raw_requests.len()].copy_from_slice(self.raw_requests);
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`:
/// export name and queries (kept raw and validated; iterate with `queries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub export: &'a str,
    count: u32,
    raw_queries: &'a [u8],
}

impl<'a> MetaRequest<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let mut pos = 0;
        let export = take_string(data, &mut pos)?;
        let count_bytes = data.get(pos..pos + 4).ok_or(Error)?;
        let count = be32(count_bytes);
        pos += 4;
        let raw_queries = &data[pos..];
        // Validate every query now so the iterator below cannot fail.
        let mut qpos = 0;
        for _ in 0..count {
            take_string(raw_queries, &mut qpos)?;
        }
        if qpos != raw_queries.len() {
            return Err(Error);
        }
        Ok(MetaRequest {
            export,
            count,
            raw_queries,
        })
    }

    pub fn query_count(&self) -> u32 {
        self.count
    }

    pub fn queries(&self) -> impl Iterator<Item = &'a str> + 'a {
        let raw = self.raw_queries;
        let mut pos = 0;
        std::iter::from_fn(move || {
            if pos >= raw.len() {
                None
            } else {
                take_string(raw, &mut pos).ok()
            }
        })
    }

    pub fn buffer_len(&self) -> usize {
        4 + self.export.len() + 4 + self.raw_queries.len()
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let n = self.export.len();
        buf[0..4].copy_from_slice(&len32(n).to_be_bytes());
        buf[4..4 + n].copy_from_slice(self.export.as_bytes());
        buf[4 + n..8 + n].copy_from_slice(&self.count.to_be_bytes());
        buf[8 + n..8 + n + self.raw_queries.len()].copy_from_slice(self.raw_queries);
    }
}

/// A parsed option request (header already consumed; `data` is its payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionRepr<'a> {
    /// Raw name bytes: this option has no length prefix and may be empty.
    ExportName(&'a [u8]),
    Abort,
    List,
    StartTls,
    Info(InfoRequest<'a>),
    Go(InfoRequest<'a>),
    StructuredReply,
    ListMetaContext(MetaRequest<'a>),
    SetMetaContext(MetaRequest<'a>),
    ExtendedHeaders,
    /// Known-but-unsupported or unknown options, data kept for completeness.
    Other {
        code: OptionCode,
        data: &'a [u8],
    },
}

impl<'a> OptionRepr<'a> {
    /// Options with no data reject a non-empty payload, as the spec asks
    /// (`NBD_REP_ERR_INVALID`); `Err` means "reply ERR_INVALID".
    pub fn parse(code: OptionCode, data: &'a [u8]) -> Result<Self> {
        let empty = |r: OptionRepr<'a>| if data.is_empty() { Ok(r) } else { Err(Error) };
        match code {
            OptionCode::ExportName => Ok(OptionRepr::ExportName(data)),
            // ABORT's data is ignored: the connection ends either way.
            OptionCode::Abort => Ok(OptionRepr::Abort),
            OptionCode::List => empty(OptionRepr::List),
            OptionCode::StartTls => empty(OptionRepr::StartTls),
            OptionCode::Info => InfoRequest::parse(data).map(OptionRepr::Info),
            OptionCode::Go => InfoRequest::parse(data).map(OptionRepr::Go),
            OptionCode::StructuredReply => empty(OptionRepr::StructuredReply),
            OptionCode::ListMetaContext => {
                MetaRequest::parse(data).map(OptionRepr::ListMetaContext)
            }
            OptionCode::SetMetaContext => MetaRequest::parse(data).map(OptionRepr::SetMetaContext),
            OptionCode::ExtendedHeaders => empty(OptionRepr::ExtendedHeaders),
            code => Ok(OptionRepr::Other { code, data }),
        }
    }

    pub fn code(&self) -> OptionCode {
        match self {
            OptionRepr::ExportName(_) => OptionCode::ExportName,
            OptionRepr::Abort => OptionCode::Abort,
            OptionRepr::List => OptionCode::List,
            OptionRepr::StartTls => OptionCode::StartTls,
            OptionRepr::Info(_) => OptionCode::Info,
            OptionRepr::Go(_) => OptionCode::Go,
            OptionRepr::StructuredReply => OptionCode::StructuredReply,
            OptionRepr::ListMetaContext(_) => OptionCode::ListMetaContext,
            OptionRepr::SetMetaContext(_) => OptionCode::SetMetaContext,
            OptionRepr::ExtendedHeaders => OptionCode::ExtendedHeaders,
            OptionRepr::Other { code, .. } => *code,
        }
    }

    /// Length of the option's data (without the 16-byte header).
    pub fn data_len(&self) -> usize {
        match self {
            OptionRepr::ExportName(d) | OptionRepr::Other { data: d, .. } => d.len(),
            OptionRepr::Info(r) | OptionRepr::Go(r) => r.buffer_len(),
            OptionRepr::ListMetaContext(r) | OptionRepr::SetMetaContext(r) => r.buffer_len(),
            _ => 0,
        }
    }

    /// Header plus data.
    pub fn buffer_len(&self) -> usize {
        OptionHeader::<&[u8]>::LEN + self.data_len()
    }

    /// Emits header and data (the client side; used by tests and tools).
    pub fn emit(&self, buf: &mut [u8]) {
        let (hdr, data) = buf.split_at_mut(OptionHeader::<&[u8]>::LEN);
        OptionHeaderRepr {
            option: self.code(),
            length: len32(self.data_len()),
        }
        .emit(&mut OptionHeader::new_unchecked(hdr));
        match self {
            OptionRepr::ExportName(d) | OptionRepr::Other { data: d, .. } => {
                data[..d.len()].copy_from_slice(d)
            }
            OptionRepr::Info(r) | OptionRepr::Go(r) => r.emit(data),
            OptionRepr::ListMetaContext(r) | OptionRepr::SetMetaContext(r) => r.emit(data),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Option replies

mod rep_field {
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
    pub const HEADER_LEN: usize = rep_field::PAYLOAD;

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
        be64(&self.buffer.as_ref()[rep_field::MAGIC])
    }

    pub fn option(&self) -> OptionCode {
        OptionCode::from(be32(&self.buffer.as_ref()[rep_field::OPTION]))
    }

    pub fn reply_type(&self) -> ReplyType {
        ReplyType::from(be32(&self.buffer.as_ref()[rep_field::TYPE]))
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[rep_field::LENGTH])
    }

    /// Total bytes this reply occupies (header plus payload).
    pub fn total_len(&self) -> usize {
        Self::HEADER_LEN + usize::try_from(self.length()).unwrap_or(usize::MAX - Self::HEADER_LEN)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> OptionReply<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let len = usize::try_from(be32(&b[rep_field::LENGTH])).unwrap_or(0);
        &b[rep_field::PAYLOAD..rep_field::PAYLOAD + len]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> OptionReply<T> {
    pub fn set_magic(&mut self, v: u64) {
        self.buffer.as_mut()[rep_field::MAGIC].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_option(&mut self, v: OptionCode) {
        self.buffer.as_mut()[rep_field::OPTION].copy_from_slice(&u32::from(v).to_be_bytes());
    }

    pub fn set_reply_type(&mut self, v: ReplyType) {
        self.buffer.as_mut()[rep_field::TYPE].copy_from_slice(&u32::from(v).to_be_bytes());
    }

    pub fn set_length(&mut self, v: u32) {
        self.buffer.as_mut()[rep_field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[rep_field::PAYLOAD..]
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
        buf[0..2].copy_from_slice(&u16::from(kind).to_be_bytes());
        let body = &mut buf[2..];
        match self {
            InfoRepr::Export { size, flags } => {
                body[0..8].copy_from_slice(&size.to_be_bytes());
                body[8..10].copy_from_slice(&flags.to_be_bytes());
            }
            InfoRepr::Name(s) | InfoRepr::Description(s) => {
                body[..s.len()].copy_from_slice(s.as_bytes())
            }
            InfoRepr::BlockSize {
                min,
                preferred,
                max,
            } => {
                body[0..4].copy_from_slice(&min.to_be_bytes());
                body[4..8].copy_from_slice(&preferred.to_be_bytes());
                body[8..12].copy_from_slice(&max.to_be_bytes());
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
                p[0..4].copy_from_slice(&len32(n).to_be_bytes());
                p[4..4 + n].copy_from_slice(name.as_bytes());
                p[4 + n..4 + n + description.len()].copy_from_slice(description.as_bytes());
            }
            ReplyBody::Info(i) => i.emit(p),
            ReplyBody::MetaContext { id, name } => {
                p[0..4].copy_from_slice(&id.to_be_bytes());
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

// ---------------------------------------------------------------------------
// Transmission request

mod req_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const COMMAND: Range<usize> = 6..8;
    pub const COOKIE: Range<usize> = 8..16;
    pub const OFFSET: Range<usize> = 16..24;
    pub const LENGTH: Range<usize> = 24..28;
}

/// View of the 28-byte transmission request header.
#[derive(Debug, Clone)]
pub struct Request<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Request<T> {
    pub const LEN: usize = req_field::LENGTH.end;

    pub fn new_unchecked(buffer: T) -> Self {
        Request { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let r = Self::new_unchecked(buffer);
        r.check_len()?;
        Ok(r)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    pub fn magic(&self) -> u32 {
        be32(&self.buffer.as_ref()[req_field::MAGIC])
    }

    pub fn flags(&self) -> u16 {
        be16(&self.buffer.as_ref()[req_field::FLAGS])
    }

    pub fn command(&self) -> Command {
        Command::from(be16(&self.buffer.as_ref()[req_field::COMMAND]))
    }

    pub fn cookie(&self) -> u64 {
        be64(&self.buffer.as_ref()[req_field::COOKIE])
    }

    pub fn offset(&self) -> u64 {
        be64(&self.buffer.as_ref()[req_field::OFFSET])
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[req_field::LENGTH])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Request<T> {
    pub fn set_magic(&mut self, v: u32) {
        self.buffer.as_mut()[req_field::MAGIC].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_flags(&mut self, v: u16) {
        self.buffer.as_mut()[req_field::FLAGS].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_command(&mut self, v: Command) {
        self.buffer.as_mut()[req_field::COMMAND].copy_from_slice(&u16::from(v).to_be_bytes());
    }

    pub fn set_cookie(&mut self, v: u64) {
        self.buffer.as_mut()[req_field::COOKIE].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_offset(&mut self, v: u64) {
        self.buffer.as_mut()[req_field::OFFSET].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_length(&mut self, v: u32) {
        self.buffer.as_mut()[req_field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRepr {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestRepr {
    pub const LEN: usize = Request::<&[u8]>::LEN;

    /// Only framing is checked here (magic); command semantics are the
    /// transmission layer's job, because they produce error replies rather
    /// than a dropped connection.
    pub fn parse<T: AsRef<[u8]>>(r: &Request<T>) -> Result<Self> {
        if r.magic() != REQUEST_MAGIC {
            return Err(Error);
        }
        Ok(RequestRepr {
            flags: r.flags(),
            command: r.command(),
            cookie: r.cookie(),
            offset: r.offset(),
            length: r.length(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, r: &mut Request<T>) {
        r.set_magic(REQUEST_MAGIC);
        r.set_flags(self.flags);
        r.set_command(self.command);
        r.set_cookie(self.cookie);
        r.set_offset(self.offset);
        r.set_length(self.length);
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        self.emit(&mut Request::new_unchecked(&mut b[..]));
        b
    }
}

// ---------------------------------------------------------------------------
// Simple reply

mod simple_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const ERROR: Range<usize> = 4..8;
    pub const COOKIE: Range<usize> = 8..16;
}

/// View of the 16-byte simple reply header (read data, if any, follows).
#[derive(Debug, Clone)]
pub struct SimpleReply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SimpleReply<T> {
    pub const LEN: usize = simple_field::COOKIE.end;

    pub fn new_unchecked(buffer: T) -> Self {
        SimpleReply { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let r = Self::new_unchecked(buffer);
        r.check_len()?;
        Ok(r)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    pub fn magic(&self) -> u32 {
        be32(&self.buffer.as_ref()[simple_field::MAGIC])
    }

    pub fn error(&self) -> Errno {
        Errno::from(be32(&self.buffer.as_ref()[simple_field::ERROR]))
    }

    pub fn cookie(&self) -> u64 {
        be64(&self.buffer.as_ref()[simple_field::COOKIE])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SimpleReply<T> {
    pub fn set_magic(&mut self, v: u32) {
        self.buffer.as_mut()[simple_field::MAGIC].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_error(&mut self, v: Errno) {
        self.buffer.as_mut()[simple_field::ERROR].copy_from_slice(&u32::from(v).to_be_bytes());
    }

    pub fn set_cookie(&mut self, v: u64) {
        self.buffer.as_mut()[simple_field::COOKIE].copy_from_slice(&v.to_be_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReplyRepr {
    pub error: Errno,
    pub cookie: u64,
}

impl SimpleReplyRepr {
    pub const LEN: usize = SimpleReply::<&[u8]>::LEN;

    pub fn parse<T: AsRef<[u8]>>(r: &SimpleReply<T>) -> Result<Self> {
        if r.magic() != SIMPLE_REPLY_MAGIC {
            return Err(Error);
        }
        Ok(SimpleReplyRepr {
            error: r.error(),
            cookie: r.cookie(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, r: &mut SimpleReply<T>) {
        r.set_magic(SIMPLE_REPLY_MAGIC);
        r.set_error(self.error);
        r.set_cookie(self.cookie);
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        self.emit(&mut SimpleReply::new_unchecked(&mut b[..]));
        b
    }
}

// ---------------------------------------------------------------------------
// Structured reply chunks

mod chunk_field {
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
    pub const HEADER_LEN: usize = chunk_field::PAYLOAD;

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
        be32(&self.buffer.as_ref()[chunk_field::MAGIC])
    }

    pub fn flags(&self) -> u16 {
        be16(&self.buffer.as_ref()[chunk_field::FLAGS])
    }

    pub fn chunk_type(&self) -> ChunkType {
        ChunkType::from(be16(&self.buffer.as_ref()[chunk_field::TYPE]))
    }

    pub fn cookie(&self) -> u64 {
        be64(&self.buffer.as_ref()[chunk_field::COOKIE])
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[chunk_field::LENGTH])
    }

    pub fn total_len(&self) -> usize {
        Self::HEADER_LEN + usize::try_from(self.length()).unwrap_or(usize::MAX - Self::HEADER_LEN)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Chunk<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let len = usize::try_from(be32(&b[chunk_field::LENGTH])).unwrap_or(0);
        &b[chunk_field::PAYLOAD..chunk_field::PAYLOAD + len]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Chunk<T> {
    pub fn set_magic(&mut self, v: u32) {
        self.buffer.as_mut()[chunk_field::MAGIC].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_flags(&mut self, v: u16) {
        self.buffer.as_mut()[chunk_field::FLAGS].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_chunk_type(&mut self, v: ChunkType) {
        self.buffer.as_mut()[chunk_field::TYPE].copy_from_slice(&u16::from(v).to_be_bytes());
    }

    pub fn set_cookie(&mut self, v: u64) {
        self.buffer.as_mut()[chunk_field::COOKIE].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_length(&mut self, v: u32) {
        self.buffer.as_mut()[chunk_field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[chunk_field::PAYLOAD..]
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
            ChunkPayload::OffsetData { offset, .. } => {
                p[0..8].copy_from_slice(&offset.to_be_bytes())
            }
            ChunkPayload::OffsetHole { offset, length } => {
                p[0..8].copy_from_slice(&offset.to_be_bytes());
                p[8..12].copy_from_slice(&length.to_be_bytes());
            }
            ChunkPayload::BlockStatus {
                context_id,
                descriptors,
            } => {
                p[0..4].copy_from_slice(&context_id.to_be_bytes());
                for (i, d) in descriptors.iter().enumerate() {
                    let at = 4 + 8 * i;
                    p[at..at + 4].copy_from_slice(&d.length.to_be_bytes());
                    p[at + 4..at + 8].copy_from_slice(&d.flags.to_be_bytes());
                }
            }
            ChunkPayload::Error { error, message } => {
                p[0..4].copy_from_slice(&u32::from(error).to_be_bytes());
                p[4..6].copy_from_slice(&len16(message.len()).to_be_bytes());
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

    // Server greeting with FIXED_NEWSTYLE | NO_ZEROES.
    static GREETING: [u8; 18] = [
        b'N', b'B', b'D', b'M', b'A', b'G', b'I', b'C', b'I', b'H', b'A', b'V', b'E', b'O', b'P',
        b'T', 0x00, 0x03,
    ];

    #[test]
    fn greeting_parse_emit() {
        let r = GreetingRepr::parse(&GREETING).expect("valid greeting");
        assert_eq!(
            r.flags,
            handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES
        );
        let mut buf = [0xa5u8; 18];
        r.emit(&mut buf);
        assert_eq!(buf, GREETING);
        let mut bad = GREETING;
        bad[0] = b'X';
        assert_eq!(GreetingRepr::parse(&bad), Err(Error));
        assert_eq!(GreetingRepr::parse(&GREETING[..17]), Err(Error));
    }

    // NBD_OPT_GO, export "ab", requesting NAME and BLOCK_SIZE.
    static OPT_GO: [u8; 30] = [
        0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, // IHAVEOPT
        0x00, 0x00, 0x00, 0x07, // NBD_OPT_GO
        0x00, 0x00, 0x00, 0x0c, // length 12
        0x00, 0x00, 0x00, 0x02, b'a', b'b', // name
        0x00, 0x02, // two info requests
        0x00, 0x01, 0x00, 0x03, // NAME, BLOCK_SIZE
        // trailing bytes belong to the next message
        0xff, 0xff,
    ];

    #[test]
    fn option_header_deconstruct() {
        let h = OptionHeader::new_checked(&OPT_GO[..]).expect("long enough");
        assert_eq!(h.magic(), OPTION_MAGIC);
        assert_eq!(h.option(), OptionCode::Go);
        assert_eq!(h.length(), 12);
        assert!(OptionHeader::new_checked(&OPT_GO[..15]).is_err());
    }

    #[test]
    fn option_header_construct() {
        let mut buf = [0xa5u8; 16];
        let mut h = OptionHeader::new_unchecked(&mut buf[..]);
        h.set_magic(OPTION_MAGIC);
        h.set_option(OptionCode::Go);
        h.set_length(12);
        assert_eq!(buf, OPT_GO[..16]);
    }

    #[test]
    fn option_go_parse_emit() {
        let h = OptionHeader::new_checked(&OPT_GO[..]).expect("long enough");
        let hr = OptionHeaderRepr::parse(&h).expect("magic ok");
        assert_eq!(
            hr,
            OptionHeaderRepr {
                option: OptionCode::Go,
                length: 12
            }
        );
        let data = &OPT_GO[16..28];
        let repr = OptionRepr::parse(hr.option, data).expect("valid GO");
        let OptionRepr::Go(req) = repr else {
            panic!("expected GO, got {repr:?}")
        };
        assert_eq!(req.name, "ab");
        assert_eq!(
            req.requests().collect::<Vec<_>>(),
            vec![InfoType::Name, InfoType::BlockSize]
        );
        assert_eq!(repr.buffer_len(), 28);
        let mut buf = vec![0xa5u8; repr.buffer_len()];
        repr.emit(&mut buf);
        assert_eq!(buf, OPT_GO[..28]);
    }

    #[test]
    fn option_go_malformed() {
        // Name length runs past the data.
        assert!(OptionRepr::parse(OptionCode::Go, &[0, 0, 0, 9, b'a', 0, 0]).is_err());
        // Request count disagrees with the bytes present.
        assert!(OptionRepr::parse(OptionCode::Go, &[0, 0, 0, 0, 0, 2, 0, 1]).is_err());
        // LIST must not carry data.
        assert!(OptionRepr::parse(OptionCode::List, &[1]).is_err());
        assert_eq!(
            OptionRepr::parse(OptionCode::from(42), &[1, 2]),
            Ok(OptionRepr::Other {
                code: OptionCode::Unknown(42),
                data: &[1, 2]
            })
        );
    }

    // NBD_OPT_SET_META_CONTEXT for export "" with query "base:allocation".
    static OPT_SET_META: [u8; 16 + 4 + 4 + 4 + 15] = [
        0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, // IHAVEOPT
        0x00, 0x00, 0x00, 0x0a, // SET_META_CONTEXT
        0x00, 0x00, 0x00, 0x1b, // length 27
        0x00, 0x00, 0x00, 0x00, // empty export name
        0x00, 0x00, 0x00, 0x01, // one query
        0x00, 0x00, 0x00, 0x0f, b'b', b'a', b's', b'e', b':', b'a', b'l', b'l', b'o', b'c', b'a',
        b't', b'i', b'o', b'n',
    ];

    #[test]
    fn option_meta_parse_emit() {
        let hr =
            OptionHeaderRepr::parse(&OptionHeader::new_checked(&OPT_SET_META[..]).expect("len"))
                .expect("magic");
        assert_eq!(hr.option, OptionCode::SetMetaContext);
        let repr = OptionRepr::parse(hr.option, &OPT_SET_META[16..]).expect("valid");
        let OptionRepr::SetMetaContext(m) = repr else {
            panic!("expected SET_META_CONTEXT")
        };
        assert_eq!(m.export, "");
        assert_eq!(m.query_count(), 1);
        assert_eq!(m.queries().collect::<Vec<_>>(), vec!["base:allocation"]);
        let mut buf = vec![0xa5u8; repr.buffer_len()];
        repr.emit(&mut buf);
        assert_eq!(buf, OPT_SET_META);
        // A query count larger than the queries present is malformed.
        let mut bad = OPT_SET_META;
        bad[23] = 2;
        assert!(OptionRepr::parse(hr.option, &bad[16..]).is_err());
    }

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

    // READ of 4096 bytes at 1 MiB, cookie 0x0102030405060708, FUA.
    static REQUEST: [u8; 28] = [
        0x25, 0x60, 0x95, 0x13, // magic
        0x00, 0x01, // FUA
        0x00, 0x00, // READ
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // cookie
        0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // offset
        0x00, 0x00, 0x10, 0x00, // length
    ];

    fn request_repr() -> RequestRepr {
        RequestRepr {
            flags: command_flags::FUA,
            command: Command::Read,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 20,
            length: 4096,
        }
    }

    #[test]
    fn request_deconstruct() {
        let r = Request::new_checked(&REQUEST[..]).expect("28 bytes");
        assert_eq!(r.magic(), REQUEST_MAGIC);
        assert_eq!(r.flags(), command_flags::FUA);
        assert_eq!(r.command(), Command::Read);
        assert_eq!(r.cookie(), 0x0102_0304_0506_0708);
        assert_eq!(r.offset(), 1 << 20);
        assert_eq!(r.length(), 4096);
        assert!(Request::new_checked(&REQUEST[..27]).is_err());
    }

    #[test]
    fn request_construct() {
        let mut buf = [0xa5u8; 28];
        let mut r = Request::new_unchecked(&mut buf[..]);
        r.set_magic(REQUEST_MAGIC);
        r.set_flags(command_flags::FUA);
        r.set_command(Command::Read);
        r.set_cookie(0x0102_0304_0506_0708);
        r.set_offset(1 << 20);
        r.set_length(4096);
        assert_eq!(buf, REQUEST);
    }

    #[test]
    fn request_parse_emit() {
        let r = Request::new_checked(&REQUEST[..]).expect("28 bytes");
        assert_eq!(RequestRepr::parse(&r), Ok(request_repr()));
        assert_eq!(request_repr().to_bytes(), REQUEST);
        let mut bad = REQUEST;
        bad[3] = 0x14;
        assert!(RequestRepr::parse(&Request::new_unchecked(&bad[..])).is_err());
        let mut unknown = REQUEST;
        unknown[7] = 0x63;
        let r = RequestRepr::parse(&Request::new_unchecked(&unknown[..])).expect("framing ok");
        assert_eq!(r.command, Command::Unknown(0x63));
    }

    // Simple reply: EINVAL for cookie 0x0102030405060708.
    static SIMPLE: [u8; 16] = [
        0x67, 0x44, 0x66, 0x98, 0x00, 0x00, 0x00, 0x16, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
        0x08,
    ];

    #[test]
    fn simple_reply_all() {
        let v = SimpleReply::new_checked(&SIMPLE[..]).expect("16 bytes");
        assert_eq!(v.magic(), SIMPLE_REPLY_MAGIC);
        assert_eq!(v.error(), Errno::Inval);
        assert_eq!(v.cookie(), 0x0102_0304_0506_0708);
        let mut buf = [0xa5u8; 16];
        let mut w = SimpleReply::new_unchecked(&mut buf[..]);
        w.set_magic(SIMPLE_REPLY_MAGIC);
        w.set_error(Errno::Inval);
        w.set_cookie(0x0102_0304_0506_0708);
        assert_eq!(buf, SIMPLE);
        let repr = SimpleReplyRepr {
            error: Errno::Inval,
            cookie: 0x0102_0304_0506_0708,
        };
        assert_eq!(SimpleReplyRepr::parse(&v), Ok(repr));
        assert_eq!(repr.to_bytes(), SIMPLE);
    }

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

    #[test]
    fn enums_keep_unknown_values() {
        assert_eq!(Command::from(99), Command::Unknown(99));
        assert_eq!(u16::from(Command::Unknown(99)), 99);
        assert_eq!(OptionCode::from(11), OptionCode::ExtendedHeaders);
        assert_eq!(u32::from(ReplyType::ErrTooBig), 0x8000_0009);
        assert_eq!(u16::from(ChunkType::Error), 0x8001);
        assert_eq!(u32::from(Errno::Shutdown), 108);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Parsers see attacker-controlled bytes: they may reject, never panic.
        #[test]
        fn parsers_never_panic(code in 0u32..16, data in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = OptionRepr::parse(OptionCode::from(code), &data);
            let _ = InfoRepr::parse(&data);
            let _ = GreetingRepr::parse(&data);
            if let Ok(r) = OptionReply::new_checked(&data[..]) {
                let _ = OptionReplyRepr::parse(&r);
            }
            if let Ok(c) = Chunk::new_checked(&data[..]) {
                let _ = ChunkRepr::parse(&c);
            }
            if let Ok(r) = Request::new_checked(&data[..]) {
                let _ = RequestRepr::parse(&r);
            }
        }

        #[test]
        fn request_round_trip(flags: u16, cmd: u16, cookie: u64, offset: u64, length: u32) {
            let r = RequestRepr { flags, command: Command::from(cmd), cookie, offset, length };
            let b = r.to_bytes();
            prop_assert_eq!(RequestRepr::parse(&Request::new_unchecked(&b[..])), Ok(r));
        }
    }
}
