//! The names and addresses admins type: seat and image names, MAC addresses.

use std::fmt;
use std::str::FromStr;

use crate::{Result, StateError};

/// Checks a new seat or image name against the one naming rule, which lives
/// in khoi-block beside the store that turns names into directories (see
/// [`khoi_block::is_valid_new_name`] for why it allows what it does). Only new
/// names are checked: rows written under an older rule still load.
pub fn validate_name(field: &'static str, name: &str) -> Result<()> {
    if khoi_block::is_valid_new_name(name) {
        Ok(())
    } else {
        Err(StateError::Invalid {
            field,
            reason: format!("{name:?}: use {}", khoi_block::NAME_RULE),
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
        let bad = || format!("{s:?} is not a MAC address (expected like 52:54:00:12:34:56)");
        // One separator, between every pair, or none: "5254:00ab-cd01" is a typo,
        // not a MAC.
        let hex: String = match s.len() {
            12 => s.to_string(),
            17 => {
                let sep = s
                    .chars()
                    .nth(2)
                    .filter(|c| *c == ':' || *c == '-')
                    .ok_or_else(bad)?;
                let parts: Vec<&str> = s.split(sep).collect();
                if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                    return Err(bad());
                }
                parts.concat()
            }
            _ => return Err(bad()),
        };
        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
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

    /// Seat and image names: what the rule accepts and rejects, the same for
    /// khoi-state (seats, admin imports) and the store's creation check, and
    /// every accepted name is one the store can also load.
    #[test]
    fn one_name_rule() {
        let longest = "x".repeat(64);
        let too_long = "x".repeat(65);
        let good = [
            "pc01",
            "quay-01",
            "a",
            "9",
            "win10.22h2",
            "a..b",
            "lab.b-07",
            longest.as_str(),
        ];
        let bad = [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "PC01",
            "Win11",
            "pc_01",
            "a/b",
            "../x",
            "a b",
            "a:b",
            "é",
            "a\0",
            too_long.as_str(),
        ];
        for name in good {
            assert!(validate_name("name", name).is_ok(), "{name:?}");
            assert!(khoi_block::is_valid_new_name(name), "{name:?}");
            assert!(khoi_block::validate_name("seat", name).is_ok(), "{name:?}");
        }
        for name in bad {
            assert!(
                matches!(
                    validate_name("name", name),
                    Err(StateError::Invalid { field: "name", .. })
                ),
                "{name:?}"
            );
            assert!(!khoi_block::is_valid_new_name(name), "{name:?}");
        }
    }

    #[test]
    fn mac_forms() {
        let m: Mac = "52-54-00-AB-cd-01".parse().expect("dash form");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!("525400abcd01".parse::<Mac>(), Ok(m));
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<Mac>().is_err());
        // Issue 10: sign characters and mixed or missing separators are refused.
        for bad in [
            "+5+2+5+4+0+0",
            "+5:+2:+5:+4:+0:+0",
            "5254:00ab-cd01",
            "52:54-00:ab:cd:01",
            "52:54:00:ab:cd:01:",
            "::525400abcd01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
    }
}
