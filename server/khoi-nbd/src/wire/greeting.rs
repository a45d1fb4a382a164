//! The fixed newstyle greeting the server sends first, and the flags the
//! client answers it with.

use khoi_wire::{be16, be64, put_be16, put_be64};

use super::{Error, Result};

/// "NBDMAGIC": first word of every newstyle greeting.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": greeting's second word and every option request's magic.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;

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
        put_be64(buf, INIT_MAGIC);
        put_be64(&mut buf[8..], OPTION_MAGIC);
        put_be16(&mut buf[16..], self.flags);
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
}
