//! The one block interface every frontend (NBD, iSCSI) talks to.
//!
//! Shaped like nbdkit's plugin API: a few verbs on byte ranges, capabilities
//! asked once per open, flags as a small bitset. Calls are synchronous and
//! positional; frontends run them on a blocking pool so the async reactor never
//! waits on disk. Ranges are validated once, by [`Checked`], so implementations
//! below it trust their input.

use std::fmt;
use std::fs::File;
use std::sync::Arc;

/// Sector size every frontend advertises as the logical block size.
pub const SECTOR: u64 = 512;
/// Copy-on-write granularity: one bitmap entry covers this many bytes.
/// Matches NTFS clusters, so Windows writes rarely need read-modify-write.
pub const BLOCK: u64 = 4096;

/// Flags on a write-like request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// Force unit access: the data (and the metadata that makes it readable)
    /// is durable before the call returns.
    pub fua: bool,
}

impl WriteFlags {
    pub const NONE: WriteFlags = WriteFlags { fua: false };
    pub const FUA: WriteFlags = WriteFlags { fua: true };
}

/// What a device can do; derived once per open and used by frontends to set
/// NBD transmission flags and SCSI mode/VPD bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub read_only: bool,
    /// FLUSH does real work (the device has a volatile cache).
    pub flush: bool,
    /// FUA is honoured natively.
    pub fua: bool,
    /// TRIM and WRITE ZEROES are supported (as overlay state, never on a layer).
    pub trim: bool,
    pub zero: bool,
    /// Block status / extents can be answered.
    pub extents: bool,
    /// Several connections may share this device and see each other's
    /// flushed writes (all connections to a seat share one overlay object).
    pub multi_conn: bool,
}

/// Allocation state of a range, as reported by [`BlockDevice::extents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Written in the seat's (or draft's) overlay.
    Overlay,
    /// Falls through to the golden version's data.
    Golden,
    /// Reads as zeroes (trimmed/zeroed in the overlay, or a hole in every layer).
    Zero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

/// One piece of a read, so a frontend can send golden data straight from the
/// layer file to the socket (`sendfile`) without a userspace copy.
#[derive(Debug, Clone)]
pub enum ReadSegment {
    /// `len` bytes at `offset` of `file` (opened read-only for layers).
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
    /// `len` bytes of zeroes.
    Zero { len: u64 },
    /// Bytes already in memory (test doubles, read-modify-write results).
    Mem(Vec<u8>),
}

impl ReadSegment {
    pub fn len(&self) -> u64 {
        match self {
            ReadSegment::File { len, .. } | ReadSegment::Zero { len } => *len,
            ReadSegment::Mem(v) => v.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Errors a block request can fail with. Frontends map them to protocol codes
/// in one place each (NBD errno, SCSI sense).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("request range {offset}+{len} is outside the device of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("device is read-only")]
    ReadOnly,
    #[error("overlay is full: {0}")]
    NoSpace(String),
    #[error("device is gone (reset or removed); reconnect")]
    Gone,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = BlockError> = std::result::Result<T, E>;

/// A block device: a seat's read-write view, a read-only version, or a draft.
///
/// Offsets and lengths are in bytes; callers going through [`Checked`] are
/// guaranteed in-range, non-empty requests.
pub trait BlockDevice: Send + Sync + fmt::Debug {
    /// Size in bytes (a multiple of [`SECTOR`]).
    fn size(&self) -> u64;
    fn caps(&self) -> Caps;

    /// Fill `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Describe a read as file ranges and zero runs, in order, covering exactly
    /// `len` bytes. Devices whose data does not live in files return `Mem`.
    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>>;

    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()>;

    /// Make every write completed before this call durable.
    fn flush(&self) -> Result<()>;

    /// Discard a range: it reads back as zeroes afterwards (our overlays never
    /// let a trim fall through to golden data, so the result is deterministic).
    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()>;

    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()>;

    /// Allocation map of `[offset, offset+len)`, merged runs, covering at least
    /// one byte and at most the range.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;
}

/// Validates ranges and capabilities once, like nbdkit's backend layer, so the
/// devices below can trust their arguments.
#[derive(Debug, Clone)]
pub struct Checked {
    inner: Arc<dyn BlockDevice>,
    size: u64,
    caps: Caps,
}

impl Checked {
    pub fn new(inner: Arc<dyn BlockDevice>) -> Self {
        let size = inner.size();
        let caps = inner.caps();
        Checked { inner, size, caps }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    pub fn inner(&self) -> &Arc<dyn BlockDevice> {
        &self.inner
    }

    fn range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn writable(&self) -> Result<()> {
        if self.caps.read_only {
            Err(BlockError::ReadOnly)
        } else {
            Ok(())
        }
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.inner.read_at(buf, offset)
    }

    pub fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        self.inner.read_plan(offset, len)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        self.writable()?;
        self.range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return if flags.fua {
                self.inner.flush()
            } else {
                Ok(())
            };
        }
        self.inner.write_at(buf, offset, flags)
    }

    pub fn flush(&self) -> Result<()> {
        if self.caps.read_only || !self.caps.flush {
            return Ok(());
        }
        self.inner.flush()
    }

    pub fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.writable()?;
        self.range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.inner.trim(offset, len, flags)
    }

    pub fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.writable()?;
        self.range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.inner.write_zeroes(offset, len, flags)
    }

    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        self.inner.extents(offset, len)
    }
}
