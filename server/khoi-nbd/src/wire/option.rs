//! Option haggling as the client sends it: the 16-byte option header
//! and the data of the options the server understands.

use khoi_wire::{be16, be32, be64, enum_with_unknown, put_be16, put_be32, put_be64};

use super::greeting::OPTION_MAGIC;
use super::{Error, Result, len16, len32, take_string};

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

enum_with_unknown! {
    /// Information items of `NBD_REP_INFO` / requested by INFO and GO.
    pub enum InfoType(u16) {
        Export = 0,
        Name = 1,
        Description = 2,
        BlockSize = 3,
    }
}

mod field {
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
    pub const LEN: usize = field::LENGTH.end;

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
        be64(&self.buffer.as_ref()[field::MAGIC])
    }

    pub fn option(&self) -> OptionCode {
        OptionCode::from(be32(&self.buffer.as_ref()[field::OPTION]))
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::LENGTH])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> OptionHeader<T> {
    pub fn set_magic(&mut self, v: u64) {
        put_be64(&mut self.buffer.as_mut()[field::MAGIC], v);
    }

    pub fn set_option(&mut self, v: OptionCode) {
        put_be32(&mut self.buffer.as_mut()[field::OPTION], u32::from(v));
    }

    pub fn set_length(&mut self, v: u32) {
        put_be32(&mut self.buffer.as_mut()[field::LENGTH], v);
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
        put_be32(buf, len32(n));
        buf[4..4 + n].copy_from_slice(self.name.as_bytes());
        let count = len16(self.raw_requests.len() / 2);
        put_be16(&mut buf[4 + n..], count);
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
        put_be32(buf, len32(n));
        buf[4..4 + n].copy_from_slice(self.export.as_bytes());
        put_be32(&mut buf[4 + n..], self.count);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
