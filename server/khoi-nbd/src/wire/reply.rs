//! The 16-byte simple reply, and the error numbers every reply carries.

use khoi_wire::{be32, be64, enum_with_unknown, put_be32, put_be64};

use super::{Error, Result};

pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

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

mod field {
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
    pub const LEN: usize = field::COOKIE.end;

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
        be32(&self.buffer.as_ref()[field::MAGIC])
    }

    pub fn error(&self) -> Errno {
        Errno::from(be32(&self.buffer.as_ref()[field::ERROR]))
    }

    pub fn cookie(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::COOKIE])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SimpleReply<T> {
    pub fn set_magic(&mut self, v: u32) {
        put_be32(&mut self.buffer.as_mut()[field::MAGIC], v);
    }

    pub fn set_error(&mut self, v: Errno) {
        put_be32(&mut self.buffer.as_mut()[field::ERROR], u32::from(v));
    }

    pub fn set_cookie(&mut self, v: u64) {
        put_be64(&mut self.buffer.as_mut()[field::COOKIE], v);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
