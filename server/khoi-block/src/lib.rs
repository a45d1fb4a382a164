//! Khoi's block core: immutable golden image versions (stacks of layers read
//! through a flattened map), per-seat copy-on-write overlays, draft overlays
//! that publish into new versions, and the one block interface the NBD and
//! iSCSI frontends share.

pub mod device;

pub use device::{
    BLOCK, BlockDevice, BlockError, Caps, Checked, Extent, ExtentKind, ReadSegment, SECTOR,
    WriteFlags,
};
