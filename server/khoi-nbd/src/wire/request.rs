//! The 28-byte transmission request header, the commands it carries and
//! the per-export flags that say which commands and flags a client may use.

use khoi_wire::{be16, be32, be64, enum_with_unknown, put_be16, put_be32, put_be64};

use super::{Error, Result};

pub const REQUEST_MAGIC: u32 = 0x2560_9513;

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

mod field {
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
    pub const LEN: usize = field::LENGTH.end;

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
        be32(&self.buffer.as_ref()[field::MAGIC])
    }

    pub fn flags(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::FLAGS])
    }

    pub fn command(&self) -> Command {
        Command::from(be16(&self.buffer.as_ref()[field::COMMAND]))
    }

    pub fn cookie(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::COOKIE])
    }

    pub fn offset(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::OFFSET])
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::LENGTH])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Request<T> {
    pub fn set_magic(&mut self, v: u32) {
        put_be32(&mut self.buffer.as_mut()[field::MAGIC], v);
    }

    pub fn set_flags(&mut self, v: u16) {
        put_be16(&mut self.buffer.as_mut()[field::FLAGS], v);
    }

    pub fn set_command(&mut self, v: Command) {
        put_be16(&mut self.buffer.as_mut()[field::COMMAND], u16::from(v));
    }

    pub fn set_cookie(&mut self, v: u64) {
        put_be64(&mut self.buffer.as_mut()[field::COOKIE], v);
    }

    pub fn set_offset(&mut self, v: u64) {
        put_be64(&mut self.buffer.as_mut()[field::OFFSET], v);
    }

    pub fn set_length(&mut self, v: u32) {
        put_be32(&mut self.buffer.as_mut()[field::LENGTH], v);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
