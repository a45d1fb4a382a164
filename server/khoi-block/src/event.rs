//! What the block core reports to the binary (which records it in the audit
//! log), and who an overlay belongs to.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Whose writes an overlay holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OverlayOwner {
    Seat(String),
    /// The maintenance draft of this image.
    Draft(String),
}

impl fmt::Display for OverlayOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverlayOwner::Seat(s) => write!(f, "seat {s:?}"),
            OverlayOwner::Draft(i) => write!(f, "draft of image {i:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEvent {
    /// A write was refused because the overlay reached its quota. Sent once
    /// per overlay until its usage drops below the quota again.
    QuotaExceeded { owner: OverlayOwner, quota: u64 },
    /// A write was refused because the data file system is down to its floor.
    FreeSpaceLow {
        free: u64,
        floor: u64,
        owner: OverlayOwner,
    },
    /// An overlay was thrown away (made against another version, or its files
    /// were inconsistent).
    OverlayDiscarded { owner: OverlayOwner, reason: String },
    /// A file or directory no metadata referred to was removed at open.
    OrphanRemoved { path: PathBuf },
}

/// The callback the binary installs.
pub type EventSink = Arc<dyn Fn(BlockEvent) + Send + Sync>;
