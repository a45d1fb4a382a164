//! Reading a Windows golden image offline and checking the provincial
//! directive's rules on it, before a version reaches any seat.
//!
//! A pure library over [`khoi_block::BlockDevice`]: it only calls `read_at`
//! (never writes, never mounts), so it can check a published version, a
//! draft or an import alike. The path through an image:
//!
//! 1. [`part`]: MBR (with extended partitions) or GPT (CRC-checked, backup
//!    header if the primary is bad); each partition's boot sector says NTFS,
//!    BitLocker (`-FVE-FS-`), FAT/exFAT or unknown.
//! 2. NTFS through the `ntfs` crate over a `Read + Seek` view of the
//!    partition: the `$Volume` dirty flag, `hiberfil.sys`, files by path.
//! 3. Registry hives (SYSTEM, SOFTWARE, SAM, SECURITY) through the `regf`
//!    crate; SAM records are decoded here ([`sam`]).
//! 4. Chromium `Login Data` files copied to a private temporary file and
//!    opened read-only with SQLite.
//! 5. Findings per [`rules::RULES`], severities by [`Profile`].
//!
//! Nothing in an image can make the check panic the caller or allocate
//! without bound: reads are range-checked, sizes capped by [`Limits`], and
//! every error or parser panic becomes a `malformed-image` [`Finding`].

mod browser;
mod check;
pub mod fix;
#[cfg(feature = "fixtures")]
pub mod fixtures;
#[doc(hidden)]
pub mod fuzz;
mod hive;
mod io;
mod part;
mod report;
pub mod rules;
mod sam;
mod vol;

pub use check::{check, check_with_limits};
pub use report::{Finding, Limits, Policy, Report, Stats};
pub use rules::{DirectiveItem, Profile, RuleId, RuleInfo, Severity, rule, rules};

/// Byte layouts of the SAM records the check decodes, for building test
/// fixtures (the integration tests and the fuzz seeds use them).
#[doc(hidden)]
pub mod sam_layout {
    pub use crate::sam::layout::*;
}
