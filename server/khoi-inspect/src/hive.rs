//! Registry hives through the `regf` crate (MIT): keys by path, values as
//! raw type and bytes, interpreted here so an odd type (a DWORD stored as a
//! string, as `AutoAdminLogon` often is) is read the way Windows reads it.

use regf::{Error, RegistryHive};

use crate::vol::R;

const REG_SZ: u32 = 1;
const REG_EXPAND_SZ: u32 = 2;
const REG_DWORD: u32 = 4;
const REG_QWORD: u32 = 11;

pub(crate) struct Hive {
    name: &'static str,
    h: RegistryHive,
}

impl std::fmt::Debug for Hive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hive").field("name", &self.name).finish()
    }
}

/// A value's registry type and data.
#[derive(Debug, Clone)]
pub(crate) struct Val {
    pub ty: u32,
    pub data: Vec<u8>,
}

impl Val {
    /// As Windows components read a number: a DWORD/QWORD, or a decimal
    /// string.
    pub fn number(&self) -> Option<u64> {
        match self.ty {
            REG_DWORD if self.data.len() >= 4 => Some(u64::from(u32::from_le_bytes([
                self.data[0],
                self.data[1],
                self.data[2],
                self.data[3],
            ]))),
            REG_QWORD if self.data.len() >= 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.data[..8]);
                Some(u64::from_le_bytes(b))
            }
            REG_SZ | REG_EXPAND_SZ => self.string()?.trim().parse().ok(),
            _ => None,
        }
    }

    /// A REG_SZ/REG_EXPAND_SZ as text, without its terminator.
    pub fn string(&self) -> Option<String> {
        if !matches!(self.ty, REG_SZ | REG_EXPAND_SZ) {
            return None;
        }
        let units: Vec<u16> = self
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Some(String::from_utf16_lossy(&units))
    }
}

fn missing(e: &Error) -> bool {
    matches!(e, Error::KeyNotFound(_) | Error::ValueNotFound(_))
}

impl Hive {
    pub fn parse(name: &'static str, bytes: Vec<u8>) -> R<Hive> {
        let h = RegistryHive::from_bytes(bytes).map_err(|e| format!("{name} hive: {e}"))?;
        Ok(Hive { name, h })
    }

    /// The base block's sequence numbers differ: Windows had not written the
    /// transaction logs into the hive (we do not replay them).
    pub fn is_dirty(&self) -> bool {
        self.h.is_dirty()
    }

    fn err(&self, path: &str, e: Error) -> String {
        format!("{} hive, key {path}: {e}", self.name)
    }

    pub fn has_key(&self, path: &str) -> R<bool> {
        match self.h.open_key(path) {
            Ok(_) => Ok(true),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(self.err(path, e)),
        }
    }

    /// The value `name` of key `path`; `None` if either is absent.
    pub fn value(&self, path: &str, name: &str) -> R<Option<Val>> {
        let key = match self.h.open_key(path) {
            Ok(k) => k,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(self.err(path, e)),
        };
        let v = match key.value(name) {
            Ok(v) => v,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(self.err(path, e)),
        };
        let data = v.raw_data().map_err(|e| self.err(path, e))?;
        Ok(Some(Val {
            ty: v.raw_data_type(),
            data,
        }))
    }

    pub fn number(&self, path: &str, name: &str) -> R<Option<u64>> {
        Ok(self.value(path, name)?.and_then(|v| v.number()))
    }

    pub fn string(&self, path: &str, name: &str) -> R<Option<String>> {
        Ok(self.value(path, name)?.and_then(|v| v.string()))
    }

    /// Names of the subkeys of `path` (empty if it is absent).
    pub fn subkeys(&self, path: &str) -> R<Vec<String>> {
        let key = match self.h.open_key(path) {
            Ok(k) => k,
            Err(e) if missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(path, e)),
        };
        let subs = key.subkeys().map_err(|e| self.err(path, e))?;
        Ok(subs.iter().map(|k| k.name()).collect())
    }
}
