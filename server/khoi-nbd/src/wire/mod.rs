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
//!
//! One file per message family, in the order a connection meets them:
//! the greeting ([`GreetingRepr`]) and client flags, option requests
//! ([`OptionRepr`]), option replies ([`OptionReplyRepr`]), transmission
//! requests ([`RequestRepr`]), simple replies ([`SimpleReplyRepr`]) and
//! structured reply chunks ([`ChunkRepr`]). Everything is re-exported here,
//! so users write `wire::X` and never care which file holds it.

mod chunk;
mod greeting;
mod option;
mod option_reply;
mod reply;
mod request;

use std::fmt;

use khoi_wire::be32;

pub use chunk::*;
pub use greeting::*;
pub use option::*;
pub use option_reply::*;
pub use reply::*;
pub use request::*;

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

/// Longest string (export name, message, query) the spec allows.
pub const MAX_STRING_LEN: usize = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;

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
