//! Errors of store (administrative) operations. Block I/O errors are
//! [`crate::BlockError`]; these name the image, seat, version or file involved
//! so an operator can act on the message alone.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    Exists { kind: &'static str, name: String },
    #[error(
        "invalid {kind} name {name:?}: use 1-64 characters from A-Z a-z 0-9 . _ - (not \".\" or \"..\")"
    )]
    InvalidName { kind: &'static str, name: String },
    #[error("{what} is in use: {reason}")]
    InUse { what: String, reason: String },
    #[error("invalid image {path}: {reason}")]
    InvalidImage { path: PathBuf, reason: String },
    #[error("corrupt store file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Kinds of named things, for messages.
pub(crate) const IMAGE: &str = "image";
pub(crate) const SEAT: &str = "seat";

/// The rule for a new seat or image name, in words, for error messages.
pub const NAME_RULE: &str = "1-64 characters a-z, 0-9, '-' and '.', not starting with '-' or '.'";

/// The one rule for naming a new seat or image; khoi-state checks seat names
/// and the admin checks image names with it. A name becomes three things:
/// - a directory under the store, so no '/', NUL, "." or ".."; and no leading
///   '.', which keeps it apart from hidden and temporary files;
/// - the suffix of an iSCSI target IQN, where RFC 3722 folds upper case to
///   lower (so "PC1" and "pc1" would be one target) and allows only a-z, 0-9,
///   '-', '.' and ':' (':' separates the IQN's own parts; '_' is not allowed);
/// - an NBD export name, which may be any UTF-8 and so constrains nothing.
///
/// No leading '-' either, so a name pasted into a shell is never an option.
/// The rule lives in this crate, the lowest one that turns names into paths and
/// one the iSCSI and NBD servers already link, so khoi-state depends on the
/// store for it rather than the block path depending on SQLite.
pub fn is_valid_new_name(name: &str) -> bool {
    validate_name(SEAT, name).is_ok()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
}

/// Checks that a name already on disk or in the database is safe to use as a
/// directory name: it must not be able to escape the store or collide with our
/// own temporary names. Looser than [`is_valid_new_name`] on purpose: installs
/// made before that rule may have images named with capitals or '_', and those
/// must still load and serve; the strict rule applies when a name is created.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            kind,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["win11", "a", "A.b_c-9", &"x".repeat(64), "..a"] {
            assert!(validate_name(IMAGE, good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65), "a\0"] {
            assert!(validate_name(IMAGE, bad).is_err(), "{bad:?}");
        }
    }
}
