//! What every wire codec in Khoi (NBD, iSCSI/SCSI, DHCP) shares: reading and
//! writing big-endian integers at fixed offsets, and code enums that keep
//! values they do not know as `Unknown(raw)`.
//!
//! The readers take a slice the caller has already length-checked (a view's
//! `new_checked`), so they index directly; a short slice is a bug in the
//! caller and panics loudly rather than reading garbage.

/// Declares a code enum with an `Unknown(raw)` variant and lossless
/// conversions both ways, so an unrecognised opcode or option is data the
/// state machine answers, not a parse error.
///
/// Values may be constant expressions (`REP_ERR | 1`): matching uses guards,
/// not patterns.
#[macro_export]
macro_rules! enum_with_unknown {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($ty:ty) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
            Unknown($ty),
        }

        impl From<$ty> for $name {
            fn from(value: $ty) -> Self {
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

/// The big-endian `u16` at the start of `b`.
#[inline]
pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The big-endian 24-bit value at the start of `b` (iSCSI's DataSegmentLength).
#[inline]
pub fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

/// The big-endian `u32` at the start of `b`.
#[inline]
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The big-endian `u64` at the start of `b`.
#[inline]
pub fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Writes `v` big-endian at the start of `b`.
#[inline]
pub fn put_be16(b: &mut [u8], v: u16) {
    b[..2].copy_from_slice(&v.to_be_bytes());
}

/// Writes the low 24 bits of `v` big-endian at the start of `b`.
#[inline]
pub fn put_be24(b: &mut [u8], v: u32) {
    b[..3].copy_from_slice(&v.to_be_bytes()[1..]);
}

/// Writes `v` big-endian at the start of `b`.
#[inline]
pub fn put_be32(b: &mut [u8], v: u32) {
    b[..4].copy_from_slice(&v.to_be_bytes());
}

/// Writes `v` big-endian at the start of `b`.
#[inline]
pub fn put_be64(b: &mut [u8], v: u64) {
    b[..8].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    enum_with_unknown! {
        pub enum Code(u32) {
            One = 1,
            High = (1 << 31) | 2,
        }
    }

    #[test]
    fn codes_round_trip_and_keep_unknown_values() {
        assert_eq!(Code::from(1), Code::One);
        assert_eq!(Code::from(0x8000_0002), Code::High);
        assert_eq!(Code::from(7), Code::Unknown(7));
        for raw in [0u32, 1, 2, 7, 0x8000_0002, u32::MAX] {
            assert_eq!(u32::from(Code::from(raw)), raw);
        }
    }

    #[test]
    fn integers_are_read_and_written_big_endian() {
        let mut b = [0u8; 8];
        put_be16(&mut b, 0x0102);
        assert_eq!(b[..2], [1, 2]);
        assert_eq!(be16(&b), 0x0102);
        put_be24(&mut b, 0x00a0_b0c0);
        assert_eq!(b[..3], [0xa0, 0xb0, 0xc0]);
        assert_eq!(be24(&b), 0x00a0_b0c0);
        put_be32(&mut b, 0xdead_beef);
        assert_eq!(b[..4], [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(be32(&b), 0xdead_beef);
        put_be64(&mut b, 0x0102_0304_0506_0708);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(be64(&b), 0x0102_0304_0506_0708);
    }

    #[test]
    fn readers_ignore_trailing_bytes() {
        let b = [0, 0, 0, 5, 0xff, 0xff];
        assert_eq!(be32(&b), 5);
        assert_eq!(be16(&b[2..]), 5);
    }
}
