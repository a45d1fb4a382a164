//! Khoi's block core: immutable golden image versions (stacks of layers read
//! through a flattened map), per-seat copy-on-write overlays, draft overlays
//! that publish into new versions, and the one block interface the NBD and
//! iSCSI frontends share.
//!
//! - [`device`]: the [`BlockDevice`] trait and [`Checked`]. A device reports
//!   what it does natively ([`DeviceCaps`]: FUA and zeroing as a [`Level`],
//!   a write granularity); `Checked` validates every request once, derives
//!   what frontends may advertise ([`Caps`]) and emulates the rest once for
//!   every frontend: FUA as write + flush, write-zeroes as bounded zero
//!   writes, partial blocks as read-modify-write.
//! - [`filters`]: layers that are devices over devices, as nbdkit's filters:
//!   [`filters::Metered`] (request accounting through an [`filters::IoSink`]),
//!   [`filters::Fault`] (injected errors) and [`filters::Delay`] (slow disks).
//!   A seat is served as `Checked` over `Metered` over an [`Overlay`].
//! - [`Store`]: images, versions, drafts and seat overlays on disk (the
//!   layout and crash-recovery rules are in the `store` module docs).
//! - [`VersionDevice`]: a read-only version; [`Overlay`]: a seat's or a
//!   draft's copy-on-write view (durability rules in the `overlay` docs).
//! - [`MemDevice`]: an in-memory device; `testing` (cargo feature `testing`)
//!   holds the doubles other crates' tests share (`MemDisk`, `FileDisk`,
//!   and `Spy`, which logs what reaches a device).
//! - [`workset`]: each version's boot working set, learned from seats'
//!   boots and read into the page cache ahead of the morning.
//! - [`cache`]: page-cache residency, so async frontends keep cold reads off
//!   their reactor threads.

pub mod cache;
pub mod device;
mod error;
mod event;
pub mod filters;
mod fsio;
pub mod map;
mod mapfile;
mod mem;
mod overlay;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod version;
pub mod workset;

#[cfg(test)]
mod tests;

pub use device::{
    BLOCK, BlockDevice, BlockError, Caps, Checked, DeviceCaps, Extent, ExtentKind, Level,
    ReadSegment, SECTOR, WriteFlags,
};
pub use error::{NAME_RULE, StoreError, is_valid_new_name, validate_name};
pub use event::{BlockEvent, EventSink, OverlayOwner};
pub use mem::MemDevice;
pub use overlay::{Durability, Overlay, OverlayUsage};
pub use store::{ImageInfo, LayerRun, LayerView, Store, StoreOptions, VersionInfo};
pub use version::VersionDevice;
