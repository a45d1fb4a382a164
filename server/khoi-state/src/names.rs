//! The names and addresses admins type: seat and image names, MAC addresses.

use std::fmt;
use std::str::FromStr;

use crate::{Result, StateError};

/// Seat names become iSCSI IQN suffixes, NBD export names and file names, so
/// they are kept to characters that are safe in all three.
pub fn validate_name(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid {
            field,
            reason: format!(
                "{name:?}: use 1-64 characters a-z, 0-9, '-' and '.', not starting with '-' or '.'"
            ),
        })
    }
}

/// A MAC address in canonical lower-case colon form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-…` and bare `aabbccddeeff`, any case,
    /// because admins copy MACs from stickers, Windows and switch tables.
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
        let bad = || format!("{s:?} is not a MAC address (expected like 52:54:00:12:34:56)");
        if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        let m: Mac = "52-54-00-AB-cd-01".parse().expect("dash form");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!("525400abcd01".parse::<Mac>(), Ok(m));
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<Mac>().is_err());
    }
}
