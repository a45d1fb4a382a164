//! What a check takes (a [`Policy`], [`Limits`]) and what it returns (a
//! [`Report`]). All of it is serde-serialisable so the API can return it and
//! the store can keep it per version.

use serde::{Deserialize, Serialize};

use crate::rules::{Profile, RuleId, RuleInfo, Severity, rule};

/// What the admin set for one image: its allow-list and the rules turned off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Accounts allowed in Administrators on a `counter` image: a user name
    /// (case-insensitive), a SID (`S-1-5-21-…-1001`) or a RID (`1001`).
    /// Ignored under `kiosk`, where no enabled administrator is allowed.
    #[serde(default)]
    pub admin_allow: Vec<String>,
    /// Rules not checked for this image (an audited admin decision).
    #[serde(default)]
    pub disabled: Vec<RuleId>,
}

/// Caps that keep a malformed or hostile image from making the check read or
/// allocate without bound. Anything past a cap is a `malformed-image` finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest registry hive read (SOFTWARE is ~100 MiB on a full Windows 11).
    pub max_hive_bytes: u64,
    /// Largest SQLite file copied out.
    pub max_sqlite_bytes: u64,
    /// Largest other file read whole (hiberfil.sys header reads 4 KiB only).
    pub max_small_file_bytes: u64,
    /// Entries listed per directory.
    pub max_dir_entries: usize,
    /// Directory entries listed in the whole check.
    pub max_total_entries: usize,
    /// Partitions considered (GPT entries, MBR primaries and logicals).
    pub max_partitions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_hive_bytes: 512 << 20,
            max_sqlite_bytes: 256 << 20,
            max_small_file_bytes: 16 << 20,
            max_dir_entries: 100_000,
            max_total_entries: 1_000_000,
            max_partitions: 128,
        }
    }
}

/// One thing the gate found. `subject` names what it is about (a user, a
/// browser profile and a site's origin, a partition); it never holds a
/// password or a saved user name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: RuleId,
    pub severity: Severity,
    pub subject: String,
    /// Technical detail (an error, a registry path) for the admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Finding {
    pub fn info(&self) -> &'static RuleInfo {
        rule(self.rule)
    }
}

/// How much work a check did: it must read only metadata and the files it
/// needs, so these stay small whatever the image size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `mbr`, `gpt` or `none` (a filesystem on the whole disk).
    pub table: String,
    pub partitions: usize,
    pub ntfs_volumes: usize,
    pub bytes_read: u64,
    pub device_reads: u64,
    pub files_read: usize,
    pub dir_entries: usize,
    pub hives: usize,
    pub sqlite_files: usize,
    pub users: usize,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub profile: Profile,
    pub findings: Vec<Finding>,
    pub stats: Stats,
}

impl Report {
    /// No blocking finding: the version may reach seats.
    pub fn passed(&self) -> bool {
        self.blocking().next().is_none()
    }

    pub fn blocking(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Blocking)
    }

    /// Findings of one rule.
    pub fn of(&self, id: RuleId) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.rule == id)
    }

    pub fn has(&self, id: RuleId) -> bool {
        self.of(id).next().is_some()
    }
}
