//! The one block interface every frontend (NBD, iSCSI) talks to.
//!
//! Shaped like nbdkit's plugin API: a few verbs on byte ranges, capabilities
//! asked once per open, flags as a small bitset. Calls are synchronous and
//! positional; frontends run them on a blocking pool so the async reactor never
//! waits on disk. Ranges are validated once, by [`Checked`], so implementations
//! below it trust their input.
//!
//! Capabilities have two sides, as in nbdkit: a device reports what it does
//! natively ([`DeviceCaps`], with FUA and zeroing as a [`Level`]); `Checked`
//! raises what it can emulate and tells frontends what to advertise
//! ([`Caps`]). Frontends therefore never emulate anything themselves.

use std::fmt;
use std::fs::File;
use std::sync::Arc;

use parking_lot::Mutex;

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

/// How well a device supports an optional feature, as nbdkit's `can_fua` and
/// `can_zero` answer: not at all, by [`Checked`] doing it with other verbs, or
/// by the device itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    #[default]
    None,
    Emulate,
    Native,
}

/// What a device does natively, reported by [`BlockDevice::device_caps`].
///
/// A device states only its own abilities; [`Checked`] derives what may be
/// advertised and emulates the rest ([`Checked::device_caps`] holds the levels
/// after that derivation, [`Checked::caps`] the advertised form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCaps {
    pub read_only: bool,
    /// FLUSH does real work (the device has a volatile cache).
    pub flush: bool,
    /// `Native`: the device honours [`WriteFlags::fua`] itself. Anything
    /// else and `Checked` writes without the flag, then flushes.
    pub fua: Level,
    /// TRIM is supported (as overlay state, never on a layer).
    pub trim: bool,
    /// `Native`: [`BlockDevice::write_zeroes`] is cheap (a metadata update).
    /// Anything else and `Checked` writes zero buffers instead.
    pub zero: Level,
    /// Block status / extents can be answered.
    pub extents: bool,
    /// Several connections may share this device and see each other's
    /// flushed writes (all connections to a seat share one overlay object).
    pub multi_conn: bool,
    /// Smallest write the device takes, in bytes (a power of two; 1 when any
    /// byte range is fine). `Checked` read-modify-writes the partial head and
    /// tail of writes not aligned to it.
    pub write_granularity: u64,
}

impl DeviceCaps {
    /// The pre-levels form a device reported: `true` meant native.
    pub fn native(self) -> Caps {
        Caps {
            read_only: self.read_only,
            flush: self.flush,
            fua: self.fua == Level::Native,
            trim: self.trim,
            zero: self.zero == Level::Native,
            extents: self.extents,
            multi_conn: self.multi_conn,
        }
    }

    /// The levels `Checked` serves with: every writable device gets FUA and
    /// zeroing at least emulated; a read-only one gets neither.
    fn effective(self) -> DeviceCaps {
        let at_least_emulate = |l: Level| {
            if self.read_only {
                Level::None
            } else {
                l.max(Level::Emulate)
            }
        };
        DeviceCaps {
            fua: at_least_emulate(self.fua),
            zero: at_least_emulate(self.zero),
            write_granularity: self.write_granularity.max(1),
            ..self
        }
    }
}

impl From<Caps> for DeviceCaps {
    /// A device still reporting bools: `true` is native, `false` none, and
    /// writes of any byte range are fine.
    fn from(c: Caps) -> DeviceCaps {
        let level = |native: bool| if native { Level::Native } else { Level::None };
        DeviceCaps {
            read_only: c.read_only,
            flush: c.flush,
            fua: level(c.fua),
            trim: c.trim,
            zero: level(c.zero),
            extents: c.extents,
            multi_conn: c.multi_conn,
            write_granularity: 1,
        }
    }
}

/// What frontends advertise (NBD transmission flags, SCSI mode/VPD bits), as
/// [`Checked::caps`] derives it from the device's levels.
///
/// Devices that have not moved to [`BlockDevice::device_caps`] still return
/// this from [`BlockDevice::caps`], where `fua` and `zero` mean native.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub read_only: bool,
    /// FLUSH does real work (the device has a volatile cache).
    pub flush: bool,
    /// FUA may be advertised: `Checked` honours it on every writable device
    /// (natively or by write + flush), so frontends pass it through.
    pub fua: bool,
    /// TRIM is supported (as overlay state, never on a layer).
    pub trim: bool,
    /// Zeroing is native, hence fast (NBD may promise `FAST_ZERO`).
    /// `Checked::write_zeroes` works on every writable device regardless.
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

    /// What the device does natively; asked once per open by [`Checked`].
    /// Implement this one. Its default reads [`BlockDevice::caps`], which
    /// devices written before levels existed implement instead; a device
    /// must implement at least one of the two (each default calls the other).
    fn device_caps(&self) -> DeviceCaps {
        DeviceCaps::from(self.caps())
    }

    /// The pre-levels form of [`BlockDevice::device_caps`] (`true` = native).
    /// Frontends read [`Checked::caps`], never this.
    fn caps(&self) -> Caps {
        self.device_caps().native()
    }

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

/// Largest zero buffer written at once when zeroing is emulated, so a large
/// request never allocates its whole length.
pub const ZERO_CHUNK: usize = 1 << 20;

/// Validates ranges and capabilities once, like nbdkit's backend layer, so the
/// devices below can trust their arguments, and emulates what a device lacks
/// once for every frontend:
///
/// - **FUA** on a device without native FUA: the write without the flag, then
///   [`Checked::flush`] (a no-op when there is no volatile cache, where a
///   completed write is already durable).
/// - **Write-zeroes** on a device without native zeroing: zero buffers of at
///   most [`ZERO_CHUNK`] bytes, then a flush if FUA was asked.
/// - **Partial blocks** on a device with a `write_granularity` above one: the
///   unaligned head and tail are read, patched and written whole, under a lock
///   so two partial writes to one block cannot lose each other's bytes.
#[derive(Debug, Clone)]
pub struct Checked {
    inner: Arc<dyn BlockDevice>,
    size: u64,
    levels: DeviceCaps,
    /// Serializes read-modify-writes through this handle and its clones.
    /// Each `Checked::new` has its own, so a device with a write granularity
    /// above one that several connections open separately must serialize
    /// partial blocks itself (no device in the tree needs this today).
    rmw: Arc<Mutex<()>>,
}

impl Checked {
    pub fn new(inner: Arc<dyn BlockDevice>) -> Self {
        let size = inner.size();
        let levels = inner.device_caps().effective();
        Checked {
            inner,
            size,
            levels,
            rmw: Arc::new(Mutex::new(())),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// What frontends may advertise.
    pub fn caps(&self) -> Caps {
        let l = &self.levels;
        Caps {
            read_only: l.read_only,
            flush: l.flush,
            fua: l.fua != Level::None,
            trim: l.trim,
            zero: l.zero == Level::Native,
            extents: l.extents,
            multi_conn: l.multi_conn,
        }
    }

    /// The levels requests are served with: the device's own, raised to
    /// `Emulate` where this layer fills the gap.
    pub fn device_caps(&self) -> DeviceCaps {
        self.levels
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
        if self.levels.read_only {
            Err(BlockError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// The flags the device sees, and whether a flush must follow.
    fn fua(&self, flags: WriteFlags) -> (WriteFlags, bool) {
        if flags.fua && self.levels.fua != Level::Native {
            (WriteFlags::NONE, true)
        } else {
            (flags, false)
        }
    }

    fn after(&self, flush: bool) -> Result<()> {
        if flush { self.flush() } else { Ok(()) }
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
        let (dev_flags, flush) = self.fua(flags);
        self.write_aligned(buf, offset, dev_flags)?;
        self.after(flush)
    }

    /// Writes `buf`, completing partial blocks of the device's write
    /// granularity by read-modify-write.
    fn write_aligned(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        let g = self.levels.write_granularity;
        let end = offset + buf.len() as u64;
        if g <= 1 || (offset.is_multiple_of(g) && end.is_multiple_of(g)) {
            return self.inner.write_at(buf, offset, flags);
        }
        let start = offset / g * g;
        // A device's size should be a multiple of its granularity; if not,
        // the block holding the last bytes cannot be written whole.
        let stop = end.div_ceil(g) * g;
        if stop > self.size {
            return Err(BlockError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: self.size,
            });
        }
        let len = usize::try_from(stop - start).map_err(|_| BlockError::OutOfRange {
            offset,
            len: buf.len() as u64,
            size: self.size,
        })?;
        let head = usize::try_from(offset - start).unwrap_or(0);
        let glen = usize::try_from(g).unwrap_or(usize::MAX);
        let mut whole = vec![0u8; len];
        let _guard = self.rmw.lock();
        let head_partial = !offset.is_multiple_of(g);
        if head_partial {
            self.inner.read_at(&mut whole[..glen], start)?;
        }
        // A partial tail in the block the head read already covered needs
        // no second read.
        let tail_read = head_partial && len == glen;
        if !end.is_multiple_of(g) && !tail_read {
            self.inner.read_at(&mut whole[len - glen..], stop - g)?;
        }
        whole[head..head + buf.len()].copy_from_slice(buf);
        self.inner.write_at(&whole, start, flags)
    }

    pub fn flush(&self) -> Result<()> {
        if self.levels.read_only || !self.levels.flush {
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
        let (dev_flags, flush) = self.fua(flags);
        self.inner.trim(offset, len, dev_flags)?;
        self.after(flush)
    }

    pub fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.writable()?;
        self.range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.levels.zero == Level::Native {
            let (dev_flags, flush) = self.fua(flags);
            self.inner.write_zeroes(offset, len, dev_flags)?;
            return self.after(flush);
        }
        self.zero_by_writes(offset, len, flags)
    }

    /// Zeroes that must be allocated, not recorded as a zero state (NBD's
    /// `NO_HOLE`): always written as zero buffers, whatever the device can do
    /// natively.
    pub fn write_zeroes_allocated(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.writable()?;
        self.range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.zero_by_writes(offset, len, flags)
    }

    fn zero_by_writes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        let zeroes = vec![0u8; usize::try_from(len).map_or(ZERO_CHUNK, |l| l.min(ZERO_CHUNK))];
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let n = usize::try_from(end - pos).map_or(zeroes.len(), |r| r.min(zeroes.len()));
            self.write_aligned(&zeroes[..n], pos, WriteFlags::NONE)?;
            pos += n as u64;
        }
        self.after(flags.fua)
    }

    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        self.inner.extents(offset, len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::MemDevice;
    use crate::testing::{Call, Spy};

    const NATIVE: DeviceCaps = DeviceCaps {
        read_only: false,
        flush: true,
        fua: Level::Native,
        trim: true,
        zero: Level::Native,
        extents: true,
        multi_conn: true,
        write_granularity: 1,
    };

    fn spied(size: u64, caps: DeviceCaps) -> (Checked, Arc<Spy>, Arc<MemDevice>) {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
        let mem = Arc::new(MemDevice::from_vec(data));
        let spy = Arc::new(Spy::new(mem.clone()).with_caps(caps));
        (Checked::new(spy.clone()), spy, mem)
    }

    #[test]
    fn fua_without_native_support_is_a_write_then_a_flush() {
        let (dev, spy, _) = spied(
            8192,
            DeviceCaps {
                fua: Level::None,
                ..NATIVE
            },
        );
        assert_eq!(dev.device_caps().fua, Level::Emulate);
        assert!(dev.caps().fua, "an emulated FUA is advertised");
        dev.write_at(&[7; 512], 512, WriteFlags::FUA).unwrap();
        assert_eq!(
            spy.take(),
            [
                Call::Write {
                    offset: 512,
                    len: 512,
                    fua: false
                },
                Call::Flush
            ]
        );
        dev.trim(0, 512, WriteFlags::FUA).unwrap();
        dev.write_zeroes(0, 512, WriteFlags::FUA).unwrap();
        let calls = spy.take();
        assert_eq!(
            calls,
            [
                Call::Trim {
                    offset: 0,
                    len: 512,
                    fua: false
                },
                Call::Flush,
                Call::Zero {
                    offset: 0,
                    len: 512,
                    fua: false
                },
                Call::Flush
            ]
        );
        // Without FUA nothing is added.
        dev.write_at(&[7; 512], 0, WriteFlags::NONE).unwrap();
        assert_eq!(spy.take().len(), 1);
    }

    #[test]
    fn native_fua_reaches_the_device_without_a_flush() {
        let (dev, spy, _) = spied(8192, NATIVE);
        dev.write_at(&[7; 512], 0, WriteFlags::FUA).unwrap();
        assert_eq!(
            spy.take(),
            [Call::Write {
                offset: 0,
                len: 512,
                fua: true
            }]
        );
    }

    #[test]
    fn fua_needs_no_flush_without_a_volatile_cache() {
        let (dev, spy, _) = spied(
            8192,
            DeviceCaps {
                flush: false,
                fua: Level::None,
                ..NATIVE
            },
        );
        assert!(dev.caps().fua);
        dev.write_at(&[7; 512], 0, WriteFlags::FUA).unwrap();
        assert_eq!(
            spy.take(),
            [Call::Write {
                offset: 0,
                len: 512,
                fua: false
            }]
        );
    }

    #[test]
    fn zeroing_without_native_support_writes_bounded_zero_buffers() {
        let size = 3 * ZERO_CHUNK as u64;
        let (dev, spy, mem) = spied(
            size,
            DeviceCaps {
                zero: Level::None,
                ..NATIVE
            },
        );
        assert_eq!(dev.device_caps().zero, Level::Emulate);
        assert!(!dev.caps().zero, "emulated zeroing is not fast");
        let len = 2 * ZERO_CHUNK as u64 + 1000;
        dev.write_zeroes(100, len, WriteFlags::FUA).unwrap();
        let chunk = ZERO_CHUNK as u64;
        assert_eq!(
            spy.take(),
            [
                Call::Write {
                    offset: 100,
                    len: chunk,
                    fua: false
                },
                Call::Write {
                    offset: 100 + chunk,
                    len: chunk,
                    fua: false
                },
                Call::Write {
                    offset: 100 + 2 * chunk,
                    len: 1000,
                    fua: false
                },
                Call::Flush
            ]
        );
        let data = mem.contents();
        let end = usize::try_from(100 + len).unwrap();
        assert!(data[100..end].iter().all(|&b| b == 0));
        assert_ne!(data[99], 0);
        assert_ne!(data[end], 0);
        // Without FUA, no flush.
        dev.write_zeroes(0, 10, WriteFlags::NONE).unwrap();
        assert_eq!(spy.take().len(), 1);
    }

    #[test]
    fn native_zeroing_reaches_the_device() {
        let (dev, spy, _) = spied(8192, NATIVE);
        assert!(dev.caps().zero);
        dev.write_zeroes(0, 4096, WriteFlags::FUA).unwrap();
        assert_eq!(
            spy.take(),
            [Call::Zero {
                offset: 0,
                len: 4096,
                fua: true
            }]
        );
    }

    #[test]
    fn read_only_devices_refuse_changes_and_advertise_none() {
        let (dev, spy, _) = spied(
            8192,
            DeviceCaps {
                read_only: true,
                ..NATIVE
            },
        );
        let caps = dev.caps();
        assert!(caps.read_only && !caps.fua && !caps.zero);
        assert_eq!(dev.device_caps().fua, Level::None);
        assert_eq!(dev.device_caps().zero, Level::None);
        assert!(matches!(
            dev.write_at(&[1], 0, WriteFlags::FUA),
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(
            dev.trim(0, 512, WriteFlags::NONE),
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(
            dev.write_zeroes(0, 512, WriteFlags::NONE),
            Err(BlockError::ReadOnly)
        ));
        dev.flush().unwrap();
        assert_eq!(spy.take(), []);
    }

    #[test]
    fn partial_blocks_are_read_modified_and_written_whole() {
        let (dev, spy, mem) = spied(
            4096,
            DeviceCaps {
                write_granularity: 512,
                ..NATIVE
            },
        );
        let before = mem.contents();
        // Inside one block.
        dev.write_at(&[0xaa; 100], 300, WriteFlags::NONE).unwrap();
        assert_eq!(
            spy.take(),
            [
                Call::Read {
                    offset: 0,
                    len: 512
                },
                Call::Write {
                    offset: 0,
                    len: 512,
                    fua: false
                }
            ]
        );
        // Unaligned at both ends, across three blocks.
        dev.write_at(&[0xbb; 1000], 1300, WriteFlags::NONE).unwrap();
        assert_eq!(
            spy.take(),
            [
                Call::Read {
                    offset: 1024,
                    len: 512
                },
                Call::Read {
                    offset: 2048,
                    len: 512
                },
                Call::Write {
                    offset: 1024,
                    len: 1536,
                    fua: false
                }
            ]
        );
        let mut want = before;
        want[300..400].fill(0xaa);
        want[1300..2300].fill(0xbb);
        assert_eq!(mem.contents(), want);
        // Aligned writes go straight through.
        dev.write_at(&[1; 512], 512, WriteFlags::NONE).unwrap();
        assert_eq!(spy.take().len(), 1);
    }

    #[test]
    fn a_short_tail_is_completed_like_the_scsi_layer_did() {
        // iSCSI's short-EDTL case: whole blocks, then a few bytes of the next.
        let (dev, spy, mem) = spied(
            4096,
            DeviceCaps {
                write_granularity: 512,
                ..NATIVE
            },
        );
        let before = mem.contents();
        dev.write_at(&[9; 600], 1024, WriteFlags::FUA).unwrap();
        let mut want = before;
        want[1024..1624].fill(9);
        assert_eq!(mem.contents(), want);
        assert_eq!(
            spy.take(),
            [
                Call::Read {
                    offset: 1536,
                    len: 512
                },
                Call::Write {
                    offset: 1024,
                    len: 1024,
                    fua: true
                }
            ]
        );
    }

    /// A device written before levels existed: it implements only `caps`.
    #[derive(Debug)]
    struct Legacy(MemDevice);

    impl BlockDevice for Legacy {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn caps(&self) -> Caps {
            Caps {
                read_only: false,
                flush: true,
                fua: false,
                trim: true,
                zero: false,
                extents: false,
                multi_conn: true,
            }
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.0.read_at(buf, offset)
        }
        fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
            self.0.read_plan(offset, len)
        }
        fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
            self.0.write_at(buf, offset, flags)
        }
        fn flush(&self) -> Result<()> {
            self.0.flush()
        }
        fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
            self.0.trim(offset, len, flags)
        }
        fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
            self.0.write_zeroes(offset, len, flags)
        }
        fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
            self.0.extents(offset, len)
        }
    }

    #[test]
    fn bool_caps_and_levels_convert_both_ways() {
        let legacy = Legacy(MemDevice::new(4096));
        let levels = legacy.device_caps();
        assert_eq!((levels.fua, levels.zero), (Level::None, Level::None));
        assert_eq!(levels.write_granularity, 1);
        let dev = Checked::new(Arc::new(legacy));
        assert_eq!(dev.device_caps().fua, Level::Emulate);
        assert!(dev.caps().fua && !dev.caps().zero && !dev.caps().extents);

        let mem = MemDevice::new(4096);
        assert_eq!(BlockDevice::caps(&mem), NATIVE.native());
        assert!(NATIVE.native().fua && NATIVE.native().zero);
    }
}
