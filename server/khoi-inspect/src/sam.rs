//! The local accounts in the SAM hive: each user's RID, name and "account
//! disabled" flag, and the members of the built-in Administrators alias.
//!
//! Layouts (undocumented by Microsoft; the ones forensic tools rely on):
//! - `SAM\Domains\Account\Users\<RID as 8 hex digits>\F`: fixed record;
//!   RID at 0x30 (u32), account control flags at 0x38 (u16, bit 0x0001 =
//!   disabled).
//! - `…\Users\<RID>\V`: a table of 12-byte (offset, length, unknown) entries
//!   from 0, data from 0xCC; entry 1 (at 0x0C) is the user name, UTF-16LE.
//! - `SAM\Domains\Account\V`: the machine's domain SID in its last 24 bytes.
//! - `SAM\Domains\Builtin\Aliases\00000220\C` (alias RID 544,
//!   Administrators): member array offset at 0x28 and member count at 0x30,
//!   data from 0x34; members are SIDs one after another.
//!
//! Every offset is checked: a bad record makes that user "unreadable"
//! (reported as malformed), never a panic.

use std::fmt;

use crate::hive::Hive;
use crate::vol::R;

const USERS: &str = "SAM\\Domains\\Account\\Users";
const ACCOUNT: &str = "SAM\\Domains\\Account";
const ADMINS: &str = "SAM\\Domains\\Builtin\\Aliases\\00000220";
const ACB_DISABLED: u16 = 0x0001;
/// RID of the built-in Administrator account.
pub(crate) const RID_ADMINISTRATOR: u32 = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub rid: u32,
    pub name: String,
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sid {
    pub authority: u64,
    pub subs: Vec<u32>,
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S-1-{}", self.authority)?;
        for s in &self.subs {
            write!(f, "-{s}")?;
        }
        Ok(())
    }
}

/// Parse one SID at the start of `b`; returns it and its length.
pub(crate) fn parse_sid(b: &[u8]) -> Option<(Sid, usize)> {
    let (&rev, &count) = (b.first()?, b.get(1)?);
    let len = 8 + 4 * usize::from(count);
    if rev != 1 || count > 15 || b.len() < len {
        return None;
    }
    let authority = b[2..8].iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    let subs = b[8..len]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((Sid { authority, subs }, len))
}

/// A member of Administrators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    /// A local account of this machine (its RID).
    Local(u32),
    /// Anything else: a domain account or group, a deleted account.
    Other(Sid),
}

#[derive(Debug, Default)]
pub(crate) struct Sam {
    pub users: Vec<User>,
    pub domain_sid: Option<Sid>,
    pub admins: Vec<Member>,
    /// Records that could not be parsed (key name and why).
    pub problems: Vec<String>,
}

impl Sam {
    pub fn user(&self, rid: u32) -> Option<&User> {
        self.users.iter().find(|u| u.rid == rid)
    }

    /// The local user called `name` (Windows compares names without case).
    pub fn user_named(&self, name: &str) -> Option<&User> {
        let name = name.to_lowercase();
        self.users.iter().find(|u| u.name.to_lowercase() == name)
    }

    /// The SID string of a local user, if the domain SID is known.
    pub fn sid_of(&self, rid: u32) -> Option<String> {
        let mut sid = self.domain_sid.clone()?;
        sid.subs.push(rid);
        Some(sid.to_string())
    }

    pub fn is_admin(&self, rid: u32) -> bool {
        self.admins.contains(&Member::Local(rid))
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn user_name(v: &[u8]) -> Option<String> {
    let off = usize::try_from(le32(v, 0x0C)?).ok()?;
    let len = usize::try_from(le32(v, 0x10)?).ok()?;
    let start = 0xCCusize.checked_add(off)?;
    let raw = v.get(start..start.checked_add(len)?)?;
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(String::from_utf16_lossy(&units))
}

/// Members of the alias whose `C` value is `c`.
pub(crate) fn alias_members(c: &[u8]) -> Option<Vec<Sid>> {
    let off = usize::try_from(le32(c, 0x28)?).ok()?;
    let count = le32(c, 0x30)?;
    let mut at = 0x34usize.checked_add(off)?;
    let mut out = Vec::new();
    // A SID is at least 8 bytes, so the count cannot exceed what the value
    // holds; checking keeps a bogus count from looping long.
    if u64::from(count) * 8 > c.len() as u64 {
        return None;
    }
    for _ in 0..count {
        let (sid, len) = parse_sid(c.get(at..)?)?;
        out.push(sid);
        at += len;
    }
    Some(out)
}

pub(crate) fn read(h: &Hive) -> R<Sam> {
    let mut sam = Sam {
        domain_sid: h.value(ACCOUNT, "V")?.and_then(|v| {
            let tail = v.data.get(v.data.len().checked_sub(24)?..)?;
            let (sid, _) = parse_sid(tail)?;
            (sid.authority == 5 && sid.subs.len() == 4 && sid.subs[0] == 21).then_some(sid)
        }),
        ..Sam::default()
    };
    for key in h.subkeys(USERS)? {
        let Ok(rid) = u32::from_str_radix(&key, 16) else {
            continue; // "Names"
        };
        let path = format!("{USERS}\\{key}");
        let f = h.value(&path, "F")?;
        let Some(flags) = f.as_ref().and_then(|f| f.data.get(0x38..0x3A)) else {
            sam.problems
                .push(format!("user {key}: no readable F value"));
            continue;
        };
        let flags = u16::from_le_bytes([flags[0], flags[1]]);
        let name = h
            .value(&path, "V")?
            .and_then(|v| user_name(&v.data))
            .unwrap_or_else(|| format!("RID {rid}"));
        sam.users.push(User {
            rid,
            name,
            disabled: flags & ACB_DISABLED != 0,
        });
    }
    if let Some(c) = h.value(ADMINS, "C")? {
        match alias_members(&c.data) {
            Some(sids) => {
                for sid in sids {
                    let local = match (&sam.domain_sid, sid.subs.split_last()) {
                        (Some(d), Some((rid, prefix)))
                            if prefix == d.subs.as_slice() && sid.authority == d.authority =>
                        {
                            Some(*rid)
                        }
                        // Without the domain SID, a machine-account-shaped
                        // SID whose RID is a local user is taken as local.
                        (None, Some((rid, prefix)))
                            if prefix.len() == 4 && prefix[0] == 21 && sam.user(*rid).is_some() =>
                        {
                            Some(*rid)
                        }
                        _ => None,
                    };
                    sam.admins.push(match local {
                        Some(rid) => Member::Local(rid),
                        None => Member::Other(sid),
                    });
                }
            }
            None => sam
                .problems
                .push("Administrators alias (00000220): unreadable C value".to_string()),
        }
    } else {
        sam.problems
            .push("Administrators alias (00000220) not found".to_string());
    }
    Ok(sam)
}

/// Build a `C` value and user `F`/`V` values the way [`read`] parses them
/// (used by the tests' SAM fixtures).
pub mod layout {
    /// An alias `C` value listing `members` (binary SIDs).
    pub fn alias_c(rid: u32, members: &[Vec<u8>]) -> Vec<u8> {
        let mut c = vec![0u8; 0x34];
        c[0..4].copy_from_slice(&rid.to_le_bytes());
        c[0x28..0x2C].copy_from_slice(&0u32.to_le_bytes());
        let total: usize = members.iter().map(Vec::len).sum();
        c[0x2C..0x30].copy_from_slice(&u32::try_from(total).unwrap_or(0).to_le_bytes());
        c[0x30..0x34].copy_from_slice(&u32::try_from(members.len()).unwrap_or(0).to_le_bytes());
        for m in members {
            c.extend_from_slice(m);
        }
        c
    }

    /// A user's `F` value.
    pub fn user_f(rid: u32, disabled: bool) -> Vec<u8> {
        let mut f = vec![0u8; 0x50];
        f[0] = 2; // revision
        f[0x30..0x34].copy_from_slice(&rid.to_le_bytes());
        // 0x0010 = normal account; 0x0001 = disabled.
        let acb: u16 = 0x0010 | u16::from(disabled);
        f[0x38..0x3A].copy_from_slice(&acb.to_le_bytes());
        f
    }

    /// A user's `V` value holding only the name entry.
    pub fn user_v(name: &str) -> Vec<u8> {
        let utf16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut v = vec![0u8; 0xCC];
        v[0x0C..0x10].copy_from_slice(&0u32.to_le_bytes());
        v[0x10..0x14].copy_from_slice(&u32::try_from(utf16.len()).unwrap_or(0).to_le_bytes());
        v.extend_from_slice(&utf16);
        v
    }

    /// A binary SID.
    pub fn sid(authority: u8, subs: &[u32]) -> Vec<u8> {
        let mut s = vec![
            1,
            u8::try_from(subs.len()).unwrap_or(0),
            0,
            0,
            0,
            0,
            0,
            authority,
        ];
        for x in subs {
            s.extend_from_slice(&x.to_le_bytes());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_round_trip_and_alias_members() {
        let local = layout::sid(5, &[21, 1, 2, 3, 1001]);
        let system = layout::sid(5, &[18]);
        let c = layout::alias_c(544, &[local.clone(), system]);
        let m = alias_members(&c).expect("parses");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].to_string(), "S-1-5-21-1-2-3-1001");
        assert_eq!(m[1].to_string(), "S-1-5-18");
        // A count larger than the value can hold is refused, not looped on.
        let mut bad = c.clone();
        bad[0x30..0x34].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(alias_members(&bad).is_none());
        assert_eq!(
            user_name(&layout::user_v("Cán bộ")).as_deref(),
            Some("Cán bộ")
        );
    }
}
