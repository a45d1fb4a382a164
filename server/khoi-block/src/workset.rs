//! A version's boot working set: the blocks seats read while they boot, so
//! they can be read into the page cache before the morning's first seat asks.
//!
//! On Monday at 7:30 the server may have been restarted over the weekend and
//! the page cache is empty: forty seats booting at once then queue on the
//! disk for the same few hundred MiB. Every seat on a version reads the same
//! layer files, so reading those blocks once, ahead of time, turns the cold
//! storm into a warm one.
//!
//! A [`WorkingSet`] is a bitmap of 4 KiB blocks (one bit each: 4 KiB of
//! memory per 128 MiB of image) filled by [`Recording`], a layer that marks
//! what a seat reads during its boot window. It is kept on disk per version
//! and merged across boots, so it learns; [`prewarm`] reads it back through
//! the version's map into the page cache.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::device::{BLOCK, BlockDevice, DeviceCaps, Extent, ReadSegment, Result, WriteFlags};
use crate::error::StoreError;
use crate::{cache, fsio};

const MAGIC: &[u8; 8] = b"KHOIWS1\n";
/// Ranges are merged up to this gap when prewarming: reading a few unneeded
/// blocks costs less than a separate request each.
const MERGE_GAP: u64 = 16 * BLOCK;

/// The set of 4 KiB blocks of one device that seats read while booting.
pub struct WorkingSet {
    blocks: u64,
    bits: Vec<AtomicU64>,
    dirty: AtomicBool,
}

impl fmt::Debug for WorkingSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkingSet")
            .field("blocks", &self.blocks)
            .field("marked", &self.count())
            .finish()
    }
}

impl WorkingSet {
    /// An empty set for a device of `size` bytes.
    pub fn new(size: u64) -> Self {
        let blocks = size.div_ceil(BLOCK);
        let words = usize::try_from(blocks.div_ceil(64)).unwrap_or(0);
        WorkingSet {
            blocks,
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            dirty: AtomicBool::new(false),
        }
    }

    /// Marks the blocks `[offset, offset + len)` touches. Lock-free: seats
    /// mark from their own connection tasks.
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 || offset / BLOCK >= self.blocks {
            return;
        }
        let first = offset / BLOCK;
        let last = ((offset + len - 1) / BLOCK).min(self.blocks - 1);
        let mut b = first;
        while b <= last {
            let word = usize::try_from(b / 64).unwrap_or(usize::MAX);
            let bit = b % 64;
            let span = (64 - bit).min(last - b + 1);
            let mask = if span == 64 {
                u64::MAX
            } else {
                ((1u64 << span) - 1) << bit
            };
            if let Some(w) = self.bits.get(word)
                && w.fetch_or(mask, Ordering::Relaxed) & mask != mask
            {
                self.dirty.store(true, Ordering::Relaxed);
            }
            b += span;
        }
    }

    /// Whether block `block` is in the set.
    pub fn contains(&self, block: u64) -> bool {
        let word = usize::try_from(block / 64).unwrap_or(usize::MAX);
        self.bits
            .get(word)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (block % 64)) != 0)
    }

    /// Blocks in the set.
    pub fn count(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Bytes the set covers.
    pub fn bytes(&self) -> u64 {
        self.count() * BLOCK
    }

    /// Adds every block of `other` (same device size).
    pub fn merge(&self, other: &WorkingSet) {
        for (a, b) in self.bits.iter().zip(&other.bits) {
            let add = b.load(Ordering::Relaxed);
            if a.fetch_or(add, Ordering::Relaxed) & add != add {
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Byte ranges of runs of marked blocks, in order, runs closer than
    /// `gap` bytes merged.
    pub fn ranges(&self, gap: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut b = 0;
        while b < self.blocks {
            if !self.contains(b) {
                // Skip empty words quickly.
                if b % 64 == 0
                    && self
                        .bits
                        .get(usize::try_from(b / 64).unwrap_or(usize::MAX))
                        .is_some_and(|w| w.load(Ordering::Relaxed) == 0)
                {
                    b += 64;
                } else {
                    b += 1;
                }
                continue;
            }
            let start = b;
            while b < self.blocks && self.contains(b) {
                b += 1;
            }
            let (off, end) = (start * BLOCK, b * BLOCK);
            match out.last_mut() {
                Some((o, l)) if off - (*o + *l) <= gap => *l = end - *o,
                _ => out.push((off, end - off)),
            }
        }
        out
    }

    /// Whether blocks were added since the last save or load.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    /// Writes the set to `path` atomically (a temporary file, fsync, rename):
    /// a crash leaves the old set or the new one, never half of each.
    pub fn save(&self, path: &Path) -> std::result::Result<(), StoreError> {
        let mut buf = Vec::with_capacity(16 + self.bits.len() * 8);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&self.blocks.to_le_bytes());
        for w in &self.bits {
            buf.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        fsio::write_atomic(path, &buf)?;
        self.dirty.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Reads a set saved for a device of `size` bytes. A missing file is an
    /// empty set; a file of another size or format is an error (the caller
    /// logs it and starts afresh rather than warming the wrong blocks).
    pub fn load(path: &Path, size: u64) -> io::Result<WorkingSet> {
        let set = WorkingSet::new(size);
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(set),
            Err(e) => return Err(e),
        };
        let mut head = [0u8; 16];
        f.read_exact(&mut head)?;
        let blocks = u64::from_le_bytes(head[8..16].try_into().map_err(io::Error::other)?);
        if &head[..8] != MAGIC || blocks != set.blocks {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a working set of this version", path.display()),
            ));
        }
        let mut body = Vec::new();
        f.read_to_end(&mut body)?;
        if body.len() != set.bits.len() * 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: truncated working set", path.display()),
            ));
        }
        for (w, b) in set.bits.iter().zip(body.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            w.store(u64::from_le_bytes(a), Ordering::Relaxed);
        }
        Ok(set)
    }
}

/// What a [`prewarm`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prewarmed {
    /// Bytes of file data read into the page cache (zero runs need nothing).
    pub bytes: u64,
    /// Of those, bytes that were already cached.
    pub already: u64,
}

/// Reads the set's blocks of `dev` into the page cache, through its read
/// plan, so the layer files a seat will read are the ones warmed. Blocking:
/// run it on a blocking thread.
pub fn prewarm(dev: &dyn BlockDevice, set: &WorkingSet) -> Result<Prewarmed> {
    let mut done = Prewarmed::default();
    let size = dev.size();
    for (off, len) in set.ranges(MERGE_GAP) {
        let len = len.min(size.saturating_sub(off));
        if len == 0 {
            continue;
        }
        for seg in dev.read_plan(off, len)? {
            if let ReadSegment::File { file, offset, len } = seg {
                if cache::resident(&file, offset, len) {
                    done.already += len;
                } else {
                    cache::warm(&file, offset, len)?;
                }
                done.bytes += len;
            }
        }
    }
    Ok(done)
}

/// A layer that marks what is read through it in a [`WorkingSet`] until its
/// deadline: a seat's device during the first minutes after its boot starts.
#[derive(Debug)]
pub struct Recording {
    inner: Arc<dyn BlockDevice>,
    set: Arc<WorkingSet>,
    until: Instant,
}

impl Recording {
    pub fn new(inner: Arc<dyn BlockDevice>, set: Arc<WorkingSet>, until: Instant) -> Self {
        Recording { inner, set, until }
    }

    fn note(&self, offset: u64, len: u64) {
        if Instant::now() < self.until {
            self.set.mark(offset, len);
        }
    }
}

impl BlockDevice for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn device_caps(&self) -> DeviceCaps {
        self.inner.device_caps()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.note(offset, buf.len() as u64);
        self.inner.read_at(buf, offset)
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.note(offset, len);
        self.inner.read_plan(offset, len)
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        self.inner.write_at(buf, offset, flags)
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.inner.trim(offset, len, flags)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.inner.write_zeroes(offset, len, flags)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.inner.extents(offset, len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::MemDevice;
    use std::time::Duration;

    #[test]
    fn marks_whole_blocks_and_merges_runs() {
        let s = WorkingSet::new(2 << 20);
        assert_eq!(s.count(), 0);
        assert!(!s.is_dirty());
        s.mark(100, 1); // block 0
        s.mark(BLOCK * 3 - 1, 2); // blocks 2 and 3
        s.mark(BLOCK * 200, BLOCK * 70); // across a word boundary
        s.mark(2 << 20, 4096); // past the end: ignored
        s.mark(BLOCK * 5, 0); // empty: ignored
        assert!(s.is_dirty());
        assert_eq!(s.count(), 1 + 2 + 70);
        assert!(s.contains(0) && !s.contains(1) && s.contains(2) && s.contains(3));
        assert_eq!(
            s.ranges(0),
            vec![
                (0, BLOCK),
                (2 * BLOCK, 2 * BLOCK),
                (200 * BLOCK, 70 * BLOCK)
            ]
        );
        // With a gap allowance the first runs join.
        assert_eq!(
            s.ranges(BLOCK),
            vec![(0, 4 * BLOCK), (200 * BLOCK, 70 * BLOCK)]
        );
        // A range up to the last block of a size that is not a multiple.
        let t = WorkingSet::new(BLOCK * 10 + 512);
        t.mark(BLOCK * 9, BLOCK * 5);
        assert_eq!(t.ranges(0), vec![(9 * BLOCK, 2 * BLOCK)]);
    }

    #[test]
    fn saves_and_loads_and_refuses_another_versions_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.workset");
        let s = WorkingSet::new(64 << 20);
        s.mark(0, 3 * BLOCK);
        s.mark(40 << 20, 1 << 20);
        s.save(&path).unwrap();
        assert!(!s.is_dirty());
        let back = WorkingSet::load(&path, 64 << 20).unwrap();
        assert_eq!(back.ranges(0), s.ranges(0));
        assert!(!back.is_dirty());
        // Missing: empty. Wrong size or garbage: an error, never a wrong set.
        assert_eq!(
            WorkingSet::load(&dir.path().join("none"), 64 << 20)
                .unwrap()
                .count(),
            0
        );
        assert!(WorkingSet::load(&path, 32 << 20).is_err());
        std::fs::write(&path, b"KHOIWS1\nshort").unwrap();
        assert!(WorkingSet::load(&path, 64 << 20).is_err());
        // Merging learns: the union of two boots.
        let other = WorkingSet::new(64 << 20);
        other.mark(8 << 20, BLOCK);
        back.merge(&other);
        assert!(back.is_dirty());
        assert_eq!(back.count(), s.count() + 1);
    }

    #[test]
    fn recording_marks_reads_only_until_its_deadline() {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
        let set = Arc::new(WorkingSet::new(1 << 20));
        let rec = Recording::new(
            dev.clone(),
            set.clone(),
            Instant::now() + Duration::from_secs(60),
        );
        let mut buf = vec![0u8; 8192];
        rec.read_at(&mut buf, 0).unwrap();
        rec.read_plan(BLOCK * 10, BLOCK).unwrap();
        rec.write_at(&buf, BLOCK * 20, WriteFlags::NONE).unwrap();
        assert_eq!(set.ranges(0), vec![(0, 2 * BLOCK), (10 * BLOCK, BLOCK)]);
        let past = Recording::new(dev, set.clone(), Instant::now());
        past.read_at(&mut buf, BLOCK * 30).unwrap();
        assert!(!set.contains(30), "nothing is marked after the window");
    }

    #[test]
    fn recording_passes_the_devices_levels_through() {
        use crate::device::{DeviceCaps, Level};
        use crate::testing::Spy;
        let caps = DeviceCaps {
            read_only: false,
            flush: true,
            fua: Level::Emulate,
            trim: true,
            zero: Level::None,
            extents: true,
            multi_conn: true,
            write_granularity: 512,
        };
        let dev = Arc::new(Spy::new(Arc::new(MemDevice::new(1 << 20))).with_caps(caps));
        let rec = Recording::new(dev, Arc::new(WorkingSet::new(1 << 20)), Instant::now());
        assert_eq!(rec.device_caps(), caps);
    }

    #[test]
    fn prewarm_reads_the_sets_file_ranges_into_the_page_cache() {
        use crate::{Store, StoreOptions};
        // /var/tmp is on disk on Debian; /tmp may be tmpfs, where pages
        // cannot be evicted and the cold half of this check cannot run.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = Store::open(&dir.path().join("store"), StoreOptions::default()).unwrap();
        let raw = store.staging_dir().join("base.raw");
        let data: Vec<u8> = (0..(8u64 << 20))
            .map(|i| u8::try_from(i % 249).unwrap())
            .collect();
        std::fs::write(&raw, &data).unwrap();
        store.import_image("win", &raw, "base", "test").unwrap();
        let dev = store.open_version("win", 1).unwrap();
        let set = WorkingSet::new(dev.size());
        set.mark(1 << 20, 256 << 10);
        set.mark(6 << 20, 64 << 10);
        // Evict the layer file, prewarm, and check the planned ranges are
        // cached again.
        let plan = dev.read_plan(1 << 20, 256 << 10).unwrap();
        let Some(ReadSegment::File { file, offset, len }) = plan.into_iter().next() else {
            panic!("an imported layer is read from its file");
        };
        file.sync_all().unwrap();
        // SAFETY: plain advice call on an open fd.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&*file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        let evicted = !cache::resident(&file, offset, len);
        let done = prewarm(&*dev, &set).unwrap();
        assert_eq!(done.bytes, (256 + 64) << 10);
        assert!(cache::resident(&file, offset, len));
        if evicted {
            assert!(done.already < done.bytes, "prewarm read what was cold");
        } else {
            eprintln!("page cache cannot be dropped here: cold half not checked");
        }
    }
}
