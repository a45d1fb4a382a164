//! CHAP with MD5 (RFC 1994, RFC 7143 §12.1.3) and the iSCSI binary value
//! encodings (`0x` hex, `0b` base64, RFC 7143 §6.1).

use base64::Engine as _;
use md5::{Digest, Md5};

/// CHAP_A value for MD5, the only algorithm iSCSI requires.
pub const CHAP_MD5: &str = "5";
/// Challenge length we send: RFC 7143 recommends ≥ the digest length.
pub const CHALLENGE_LEN: usize = 16;

/// The MD5 CHAP response: MD5(identifier || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Constant-time comparison so response checks don't leak timing.
pub fn verify(expected: &[u8], got: &[u8]) -> bool {
    if expected.len() != got.len() {
        return false;
    }
    expected
        .iter()
        .zip(got)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Decode a binary value (`0x…` hex or `0b…` base64). Odd-length hex is
/// left-padded with a zero nibble, as RFC 7143 §6.1 allows.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(h.len().div_ceil(2));
        let digits: Vec<u8> = h
            .bytes()
            .map(|c| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok()))
            .collect::<Option<_>>()?;
        let mut it = digits.iter();
        if digits.len() % 2 == 1 {
            out.push(*it.next()?);
        }
        while let (Some(a), Some(b)) = (it.next(), it.next()) {
            out.push((a << 4) | b);
        }
        Some(out)
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        base64::engine::general_purpose::STANDARD.decode(b).ok()
    } else {
        None
    }
}

/// Encode a binary value in hex, the form every initiator accepts.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parse CHAP_I: a decimal (or hex) number 0..=255.
pub fn parse_id(v: &str) -> Option<u8> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u8::from_str_radix(h, 16).ok()
    } else {
        v.parse::<u8>().ok()
    }
}

/// Does a CHAP_A list offer MD5?
pub fn offers_md5(list: &str) -> bool {
    list.split(',').any(|a| a.trim() == CHAP_MD5)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    #[test]
    fn md5_vectors() {
        // Computed independently with Python's hashlib.
        let c: Vec<u8> = (0..16).collect();
        assert_eq!(
            encode_hex(&response(1, b"secretsecret", &c)),
            "0x226dc576c33f04ff9c3a200ffe35f442"
        );
        let c = decode_binary("0x00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(
            encode_hex(&response(42, b"Khoi-seat-01", &c)),
            "0x3a1d0c583559c2e2b778aee668f8bfbd"
        );
        // RFC 1321 test suite: MD5("") via the same primitive.
        let mut h = Md5::new();
        h.update(b"");
        assert_eq!(
            encode_hex(&h.finalize()),
            "0xd41d8cd98f00b204e9800998ecf8427e"
        );
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0a0B"), Some(vec![0x0a, 0x0b]));
        assert_eq!(decode_binary("0XabC"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAAEC"), Some(vec![0, 1, 2]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(parse_id("17"), Some(17));
        assert_eq!(parse_id("0x11"), Some(17));
        assert_eq!(parse_id("256"), None);
        assert!(offers_md5("7,5"));
        assert!(!offers_md5("7"));
    }

    #[test]
    fn verify_is_exact() {
        assert!(verify(b"abc", b"abc"));
        assert!(!verify(b"abc", b"abd"));
        assert!(!verify(b"abc", b"ab"));
    }
}
