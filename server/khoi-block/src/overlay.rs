//! Copy-on-write overlay: nbdkit's `cow` made durable.
//!
//! An overlay is a sparse data file the size of the disk (offset == offset)
//! plus a map of 2-bit block states (see [`crate::mapfile`]), over a read-only
//! lower device (a version, or a [`crate::MemDevice`] in tests).
//!
//! Invariants:
//! - **Data before state.** A block's data is `pwrite`n before its state says
//!   `Present`, so a reader that sees `Present` finds the bytes in the file.
//! - **Durable data before durable state.** `flush` snapshots the dirty map
//!   pages, `fdatasync`s the data file, then writes the snapshot and
//!   `fdatasync`s the map. A state reaches disk only after its data did, so
//!   after a crash no block reads garbage; unflushed writes may read old.
//! - **The lower device is never written.** Trim and write-zeroes only set
//!   `Zero` here (and punch the overlay file); partial blocks are completed by
//!   read-modify-write from the lower device (or zeroes) into the overlay.
//! - **Mutations of a block are serialized** by striped locks (16-block
//!   groups), so a read-modify-write cannot resurrect bytes a concurrent
//!   whole-block write replaced. Reads take no lock: states are atomics.
//! - **Gone is final.** After reset/remove/publish every call fails with
//!   [`BlockError::Gone`]; frontends drop the connection.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::device::{
    BLOCK, BlockDevice, BlockError, DeviceCaps, Extent, ExtentKind, Level, ReadSegment, Result,
    WriteFlags,
};
use crate::error::StoreError;
use crate::event::{BlockEvent, EventSink, OverlayOwner};
use crate::map::{BLOCKS_PER_WORD, BlockState, Delta, Piece, StateMap, WORDS_PER_PAGE, split};
use crate::{fsio, mapfile};

/// Blocks covered by one stripe lock; 64 KiB, so a large aligned write takes
/// one lock per 64 KiB instead of one per block.
const STRIPE_SPAN: u64 = 16;
const STRIPES: usize = 64;
/// Blocks per map page, the unit of dirty tracking.
const BLOCKS_PER_PAGE: u64 = BLOCKS_PER_WORD * WORDS_PER_PAGE as u64;

/// What FLUSH and FUA promise for an overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// FLUSH and FUA `fdatasync` data and map: acknowledged writes survive
    /// a crash of Khoi or of the server.
    #[default]
    Durable,
    /// FLUSH and FUA return at once; the overlay reaches disk only when its
    /// last handle closes. For overlays thrown away at the seat's next boot:
    /// if Khoi stops uncleanly, the store reports the seat as needing a
    /// reboot ([`crate::Store::seat_needs_reboot`]) rather than hand back an
    /// overlay that may have lost acknowledged writes.
    Volatile,
}

/// How full an overlay is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayUsage {
    /// Bytes of blocks present in the overlay (present blocks × 4096).
    pub allocated: u64,
    /// 0 = unlimited.
    pub quota: u64,
    /// Version number the overlay was made against.
    pub version: u32,
    pub version_uuid: String,
}

/// The global free-space floor, shared by every overlay of a store. statvfs
/// is cached and re-read at most every second or 64 MiB of new allocation.
pub(crate) struct SpaceGuard {
    dir: PathBuf,
    floor: u64,
    state: Mutex<SpaceState>,
}

struct SpaceState {
    checked: Option<Instant>,
    free: u64,
    since: u64,
}

const SPACE_RECHECK_BYTES: u64 = 64 << 20;
const SPACE_RECHECK_TIME: Duration = Duration::from_secs(1);

impl SpaceGuard {
    pub(crate) fn new(dir: PathBuf, floor: u64) -> SpaceGuard {
        SpaceGuard {
            dir,
            floor,
            state: Mutex::new(SpaceState {
                checked: None,
                free: 0,
                since: 0,
            }),
        }
    }

    pub(crate) fn disabled() -> SpaceGuard {
        SpaceGuard::new(PathBuf::new(), 0)
    }

    /// Accounts `bytes` of new allocation; `Err(free)` if it would cross the floor.
    fn reserve(&self, bytes: u64) -> std::result::Result<(), u64> {
        if self.floor == 0 {
            return Ok(());
        }
        let mut st = self.state.lock();
        let stale = st
            .checked
            .is_none_or(|t| t.elapsed() >= SPACE_RECHECK_TIME || st.since >= SPACE_RECHECK_BYTES);
        if stale {
            // An unreadable statvfs is treated as "no space": refusing a write
            // is recoverable, filling the disk under every seat is not.
            st.free = fsio::free_bytes(&self.dir).unwrap_or(0);
            st.since = 0;
            st.checked = Some(Instant::now());
        }
        let avail = st.free.saturating_sub(st.since);
        if avail < self.floor.saturating_add(bytes) {
            return Err(avail);
        }
        st.since += bytes;
        Ok(())
    }
}

impl std::fmt::Debug for SpaceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceGuard")
            .field("dir", &self.dir)
            .field("floor", &self.floor)
            .finish()
    }
}

/// Everything about an overlay that is not its files.
pub(crate) struct OverlayCtx {
    pub owner: OverlayOwner,
    pub quota: u64,
    pub version: u32,
    pub version_uuid: String,
    pub space: Arc<SpaceGuard>,
    pub events: EventSink,
}

enum Op<'a> {
    Data(&'a [u8]),
    /// `trim` requests are exempt from quota and floor: freeing space must
    /// work on a full overlay, even when a partial block needs allocating.
    Zero {
        trim: bool,
    },
}

pub struct Overlay {
    owner: OverlayOwner,
    size: u64,
    lower: Arc<dyn BlockDevice>,
    data: Arc<File>,
    data_path: PathBuf,
    map_file: File,
    states: StateMap,
    dirty_pages: Vec<AtomicU64>,
    data_dirty: AtomicBool,
    flush_lock: Mutex<()>,
    stripes: Vec<Mutex<()>>,
    used_blocks: AtomicU64,
    quota: AtomicU64,
    quota_flagged: AtomicBool,
    space_flagged: AtomicBool,
    gone: AtomicBool,
    /// Held shared by every mutation; taken exclusively once after `gone` is
    /// set, so when a publish links the files into a layer no write is still
    /// landing in them.
    gate: RwLock<()>,
    version: u32,
    version_uuid: String,
    space: Arc<SpaceGuard>,
    events: EventSink,
    /// Set while the overlay runs [`Durability::Volatile`]: the marker file
    /// that says so on disk, removed once a clean close made it durable.
    volatile: Mutex<Option<PathBuf>>,
    is_volatile: AtomicBool,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("owner", &self.owner)
            .field("size", &self.size)
            .field("data", &self.data_path)
            .field("version", &self.version)
            .field("gone", &self.gone.load(Ordering::Relaxed))
            .finish()
    }
}

impl Overlay {
    /// Creates fresh (empty) overlay files and the overlay over `lower`.
    pub(crate) fn create(
        data_path: &Path,
        map_path: &Path,
        lower: Arc<dyn BlockDevice>,
        ctx: OverlayCtx,
    ) -> std::result::Result<Overlay, StoreError> {
        let size = lower.size();
        let data = fsio::create_sparse(data_path, size)?;
        data.sync_all().map_err(StoreError::io(data_path))?;
        let map_file = mapfile::create(map_path, size, false)?;
        if let Some(dir) = data_path.parent() {
            fsio::fsync_dir(dir)?;
        }
        let states = StateMap::new(crate::map::blocks_for(size));
        Ok(Overlay::assemble(
            data, data_path, map_file, states, lower, ctx,
        ))
    }

    /// Opens existing overlay files, validating them against `lower`.
    pub(crate) fn open(
        data_path: &Path,
        map_path: &Path,
        lower: Arc<dyn BlockDevice>,
        ctx: OverlayCtx,
    ) -> std::result::Result<Overlay, StoreError> {
        let size = lower.size();
        let states = match mapfile::read(map_path, size)? {
            mapfile::MapBody::States(s) => s,
            mapfile::MapBody::Full => {
                return Err(StoreError::corrupt(map_path, "overlay map marked full"));
            }
        };
        let data = fsio::open_rw(data_path)?;
        let len = data.metadata().map_err(StoreError::io(data_path))?.len();
        if len != size {
            return Err(StoreError::corrupt(
                data_path,
                format!("overlay data is {len} bytes, expected {size}"),
            ));
        }
        let map_file = fsio::open_rw(map_path)?;
        Ok(Overlay::assemble(
            data, data_path, map_file, states, lower, ctx,
        ))
    }

    /// A standalone overlay over any device, for tests in this and other
    /// crates: `data_path` and `map_path` must not exist yet.
    pub fn create_at(
        data_path: &Path,
        map_path: &Path,
        lower: Arc<dyn BlockDevice>,
        owner: OverlayOwner,
        quota: u64,
    ) -> std::result::Result<Overlay, StoreError> {
        let ctx = OverlayCtx {
            owner,
            quota,
            version: 0,
            version_uuid: String::new(),
            space: Arc::new(SpaceGuard::disabled()),
            events: Arc::new(|_| {}),
        };
        Overlay::create(data_path, map_path, lower, ctx)
    }

    fn assemble(
        data: File,
        data_path: &Path,
        map_file: File,
        states: StateMap,
        lower: Arc<dyn BlockDevice>,
        ctx: OverlayCtx,
    ) -> Overlay {
        let pages = states.nblocks().div_ceil(BLOCKS_PER_PAGE);
        let dirty_words = usize::try_from(pages.div_ceil(64).max(1)).expect("fits");
        let used = states.count_present();
        Overlay {
            owner: ctx.owner,
            size: lower.size(),
            lower,
            data: Arc::new(data),
            data_path: data_path.to_path_buf(),
            map_file,
            states,
            dirty_pages: (0..dirty_words).map(|_| AtomicU64::new(0)).collect(),
            data_dirty: AtomicBool::new(false),
            flush_lock: Mutex::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            used_blocks: AtomicU64::new(used),
            quota: AtomicU64::new(ctx.quota),
            quota_flagged: AtomicBool::new(false),
            space_flagged: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            gate: RwLock::new(()),
            version: ctx.version,
            version_uuid: ctx.version_uuid,
            space: ctx.space,
            events: ctx.events,
            volatile: Mutex::new(None),
            is_volatile: AtomicBool::new(false),
        }
    }

    /// Switch to volatile mode; `marker` already exists on disk (durably)
    /// and is removed by the clean close that ends the mode.
    pub(crate) fn set_volatile(&self, marker: PathBuf) {
        *self.volatile.lock() = Some(marker);
        self.is_volatile.store(true, Ordering::Release);
    }

    /// Back to durable: everything acknowledged so far is synced before the
    /// marker goes.
    pub(crate) fn set_durable(&self) -> Result<()> {
        let mut g = self.volatile.lock();
        if g.is_none() {
            return Ok(());
        }
        self.is_volatile.store(false, Ordering::Release);
        self.flush_inner()?;
        if let Some(m) = g.take() {
            remove_marker(&m)?;
        }
        Ok(())
    }

    pub fn durability(&self) -> Durability {
        if self.is_volatile.load(Ordering::Acquire) {
            Durability::Volatile
        } else {
            Durability::Durable
        }
    }

    pub fn owner(&self) -> &OverlayOwner {
        &self.owner
    }

    pub fn usage(&self) -> OverlayUsage {
        OverlayUsage {
            allocated: self.used_blocks.load(Ordering::Acquire) * BLOCK,
            quota: self.quota.load(Ordering::Acquire),
            version: self.version,
            version_uuid: self.version_uuid.clone(),
        }
    }

    pub fn version_uuid(&self) -> &str {
        &self.version_uuid
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    pub(crate) fn set_quota(&self, quota: u64) {
        self.quota.store(quota, Ordering::Release);
    }

    /// Makes every later call fail with [`BlockError::Gone`].
    /// Returns once no mutation is in flight.
    pub(crate) fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
        drop(self.gate.write());
    }

    /// Flush even when gone: publish makes the draft durable after stopping it.
    pub(crate) fn sync(&self) -> Result<()> {
        self.flush_inner()
    }

    fn check(&self) -> Result<()> {
        if self.is_gone() {
            Err(BlockError::Gone)
        } else {
            Ok(())
        }
    }

    fn block_len(&self, block: u64) -> u64 {
        BLOCK.min(self.size - block * BLOCK)
    }

    fn stripe(&self, block: u64) -> &Mutex<()> {
        let i = usize::try_from((block / STRIPE_SPAN) % STRIPES as u64).expect("small");
        &self.stripes[i]
    }

    fn mark_dirty(&self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        for page in (start / BLOCKS_PER_PAGE)..=((end - 1) / BLOCKS_PER_PAGE) {
            let w = usize::try_from(page / 64).expect("fits");
            self.dirty_pages[w].fetch_or(1 << (page % 64), Ordering::AcqRel);
        }
    }

    /// Reserves room for `n` new blocks against quota and floor.
    fn reserve(&self, n: u64, enforce: bool) -> Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        if !enforce {
            self.used_blocks.fetch_add(n, Ordering::AcqRel);
            return Ok(n);
        }
        let quota = self.quota.load(Ordering::Acquire);
        let res = self
            .used_blocks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                if quota != 0 && (used + n).saturating_mul(BLOCK) > quota {
                    None
                } else {
                    Some(used + n)
                }
            });
        if res.is_err() {
            if !self.quota_flagged.swap(true, Ordering::AcqRel) {
                (self.events)(BlockEvent::QuotaExceeded {
                    owner: self.owner.clone(),
                    quota,
                });
            }
            return Err(BlockError::NoSpace(format!(
                "{} reached its quota of {quota} bytes",
                self.owner
            )));
        }
        if let Err(free) = self.space.reserve(n * BLOCK) {
            self.used_blocks.fetch_sub(n, Ordering::AcqRel);
            if !self.space_flagged.swap(true, Ordering::AcqRel) {
                (self.events)(BlockEvent::FreeSpaceLow {
                    free,
                    floor: self.space.floor,
                    owner: self.owner.clone(),
                });
            }
            return Err(BlockError::NoSpace(format!(
                "data file system is down to {free} free bytes (floor {})",
                self.space.floor
            )));
        }
        self.space_flagged.store(false, Ordering::Release);
        Ok(n)
    }

    fn settle(&self, reserved: u64, delta: Delta) {
        self.used_blocks.fetch_add(delta.gained, Ordering::AcqRel);
        self.used_blocks
            .fetch_sub(delta.lost + reserved, Ordering::AcqRel);
        let quota = self.quota.load(Ordering::Acquire);
        if quota == 0 || self.used_blocks.load(Ordering::Acquire) * BLOCK < quota {
            self.quota_flagged.store(false, Ordering::Release);
        }
    }

    /// Current contents of one block, for read-modify-write. Caller holds the
    /// block's stripe lock, so the state cannot change underneath.
    fn read_block(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let off = block * BLOCK;
        match self.states.get(block) {
            BlockState::Present => fsio::read_exact_at(&self.data, buf, off)?,
            BlockState::Zero => buf.fill(0),
            BlockState::NotPresent => self.lower.read_at(buf, off)?,
        }
        Ok(())
    }

    fn mutate(&self, offset: u64, len: u64, op: Op<'_>, flags: WriteFlags) -> Result<()> {
        let _gate = self.gate.read();
        self.check()?;
        let pieces = split(offset, len, self.size);
        let first = offset / BLOCK;
        let last = (offset + len).div_ceil(BLOCK);
        let (need, enforce) = match op {
            Op::Data(_) => (self.states.count_not_present(first, last), true),
            Op::Zero { trim } => {
                let partial = pieces
                    .iter()
                    .filter(|p| match p {
                        Piece::Partial { block, .. } => {
                            self.states.get(*block) != BlockState::Present
                        }
                        Piece::Full { .. } => false,
                    })
                    .count() as u64;
                (partial, !trim)
            }
        };
        let reserved = self.reserve(need, enforce)?;
        let mut delta = Delta::default();
        let mut wrote_data = false;
        let res = self.apply(&pieces, &op, &mut delta, &mut wrote_data);
        self.mark_dirty(first, last);
        if wrote_data {
            self.data_dirty.store(true, Ordering::Release);
        }
        self.settle(reserved, delta);
        res?;
        if flags.fua && !self.is_volatile.load(Ordering::Acquire) {
            self.flush_inner()?;
        }
        Ok(())
    }

    fn apply(
        &self,
        pieces: &[Piece],
        op: &Op<'_>,
        delta: &mut Delta,
        wrote_data: &mut bool,
    ) -> Result<()> {
        let add = |delta: &mut Delta, d: Delta| {
            delta.gained += d.gained;
            delta.lost += d.lost;
        };
        for piece in pieces {
            match *piece {
                Piece::Partial {
                    block,
                    in_block,
                    buf_off,
                    len,
                } => {
                    let bl = usize::try_from(self.block_len(block)).expect("small");
                    let mut cur = vec![0u8; bl];
                    let _g = self.stripe(block).lock();
                    self.read_block(block, &mut cur)?;
                    let dst = &mut cur[to_usize(in_block)..to_usize(in_block + len)];
                    match op {
                        Op::Data(buf) => {
                            dst.copy_from_slice(&buf[to_usize(buf_off)..to_usize(buf_off + len)]);
                        }
                        Op::Zero { .. } => dst.fill(0),
                    }
                    if matches!(op, Op::Zero { .. }) && cur.iter().all(|b| *b == 0) {
                        add(
                            delta,
                            self.states.set_range(block, block + 1, BlockState::Zero),
                        );
                    } else {
                        fsio::write_all_at(&self.data, &cur, block * BLOCK)?;
                        *wrote_data = true;
                        add(
                            delta,
                            self.states.set_range(block, block + 1, BlockState::Present),
                        );
                    }
                }
                Piece::Full {
                    start,
                    end,
                    buf_off,
                    ..
                } => {
                    let mut b = start;
                    while b < end {
                        let stop = end.min((b / STRIPE_SPAN + 1) * STRIPE_SPAN);
                        let byte_start = b * BLOCK;
                        let byte_end = (stop * BLOCK).min(self.size);
                        let _g = self.stripe(b).lock();
                        match op {
                            Op::Data(buf) => {
                                let from = to_usize(buf_off + (byte_start - start * BLOCK));
                                let to = from + to_usize(byte_end - byte_start);
                                fsio::write_all_at(&self.data, &buf[from..to], byte_start)?;
                                *wrote_data = true;
                                add(delta, self.states.set_range(b, stop, BlockState::Present));
                            }
                            Op::Zero { .. } => {
                                add(delta, self.states.set_range(b, stop, BlockState::Zero));
                                fsio::punch_hole(&self.data, byte_start, byte_end - byte_start);
                            }
                        }
                        b = stop;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush_inner(&self) -> Result<()> {
        let _g = self.flush_lock.lock();
        let data_dirty = self.data_dirty.swap(false, Ordering::AcqRel);
        let mut pages = Vec::new();
        for (w, word) in self.dirty_pages.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                pages.push(w * 64 + bit);
            }
        }
        if !data_dirty && pages.is_empty() {
            return Ok(());
        }
        // Snapshot before syncing data: every state in the snapshot had its
        // data written before the snapshot, so the fdatasync below covers it.
        let snaps: Vec<(usize, Vec<u8>)> = pages
            .iter()
            .map(|p| (*p, mapfile::snapshot_page(&self.states, *p)))
            .collect();
        let res = (|| -> std::io::Result<()> {
            self.data.sync_data()?;
            if !snaps.is_empty() {
                for (page, bytes) in &snaps {
                    mapfile::write_page(&self.map_file, *page, bytes)?;
                }
                self.map_file.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            // Keep the work for the next flush; the caller sees this one fail.
            self.data_dirty.store(true, Ordering::Release);
            for p in pages {
                self.dirty_pages[p / 64].fetch_or(1 << (p % 64), Ordering::AcqRel);
            }
            tracing::warn!(overlay = %self.owner, error = %e, "overlay flush failed");
            return Err(BlockError::Io(e));
        }
        Ok(())
    }

    /// Byte range `[rs, re)` of a run of blocks clipped to `[offset, end)`.
    fn clip(start: u64, end: u64, offset: u64, stop: u64) -> (u64, u64) {
        ((start * BLOCK).max(offset), (end * BLOCK).min(stop))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // The last handle going away (seat disconnected, draft closed) is a
        // natural point to persist: the next open reads only what is durable.
        if self.is_gone() {
            return;
        }
        match self.flush_inner() {
            Err(e) => {
                tracing::warn!(overlay = %self.owner, error = %e, "flush on close failed");
            }
            Ok(()) => {
                // Durable now: a volatile overlay closed cleanly may be
                // handed out again.
                if let Some(m) = self.volatile.get_mut().take()
                    && let Err(e) = remove_marker(&m)
                {
                    tracing::warn!(overlay = %self.owner, error = %e, "cannot clear volatile marker");
                }
            }
        }
    }
}

/// Remove a volatile marker durably (its directory is synced).
fn remove_marker(m: &Path) -> Result<()> {
    match std::fs::remove_file(m) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BlockError::Io(e)),
    }
    if let Some(dir) = m.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(BlockError::Io)?;
    }
    Ok(())
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("request sizes fit in memory")
}

impl BlockDevice for Overlay {
    fn size(&self) -> u64 {
        self.size
    }

    fn device_caps(&self) -> DeviceCaps {
        DeviceCaps {
            read_only: false,
            flush: true,
            fua: Level::Native,
            trim: true,
            zero: Level::Native,
            extents: true,
            multi_conn: true,
            // Partial 4 KiB blocks are completed from the lower device here,
            // under the block's stripe lock.
            write_granularity: 1,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check()?;
        let end = offset + buf.len() as u64;
        for run in self.states.runs(offset / BLOCK, end.div_ceil(BLOCK)) {
            let (rs, re) = Overlay::clip(run.start, run.end, offset, end);
            let dst = &mut buf[to_usize(rs - offset)..to_usize(re - offset)];
            match run.state {
                BlockState::Present => fsio::read_exact_at(&self.data, dst, rs)?,
                BlockState::Zero => dst.fill(0),
                BlockState::NotPresent => self.lower.read_at(dst, rs)?,
            }
        }
        Ok(())
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.check()?;
        let end = offset + len;
        let mut out = Vec::new();
        for run in self.states.runs(offset / BLOCK, end.div_ceil(BLOCK)) {
            let (rs, re) = Overlay::clip(run.start, run.end, offset, end);
            match run.state {
                BlockState::Present => out.push(ReadSegment::File {
                    file: Arc::clone(&self.data),
                    offset: rs,
                    len: re - rs,
                }),
                BlockState::Zero => out.push(ReadSegment::Zero { len: re - rs }),
                BlockState::NotPresent => out.extend(self.lower.read_plan(rs, re - rs)?),
            }
        }
        Ok(out)
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        self.mutate(offset, buf.len() as u64, Op::Data(buf), flags)
    }

    fn flush(&self) -> Result<()> {
        self.check()?;
        if self.is_volatile.load(Ordering::Acquire) {
            return Ok(());
        }
        self.flush_inner()
    }

    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.mutate(offset, len, Op::Zero { trim: true }, flags)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        self.mutate(offset, len, Op::Zero { trim: false }, flags)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check()?;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        for run in self.states.runs(offset / BLOCK, end.div_ceil(BLOCK)) {
            let (rs, re) = Overlay::clip(run.start, run.end, offset, end);
            match run.state {
                BlockState::Present => push_extent(&mut out, rs, re - rs, ExtentKind::Overlay),
                BlockState::Zero => push_extent(&mut out, rs, re - rs, ExtentKind::Zero),
                BlockState::NotPresent => {
                    let mut pos = rs;
                    for e in self.lower.extents(rs, re - rs)? {
                        // Only the fall-through kinds make sense from below.
                        let kind = match e.kind {
                            ExtentKind::Zero => ExtentKind::Zero,
                            _ => ExtentKind::Golden,
                        };
                        push_extent(&mut out, e.offset, e.len, kind);
                        pos = e.offset + e.len;
                    }
                    if pos < re {
                        push_extent(&mut out, pos, re - pos, ExtentKind::Golden);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Appends an extent, merging with the previous one when contiguous and alike.
pub(crate) fn push_extent(out: &mut Vec<Extent>, offset: u64, len: u64, kind: ExtentKind) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.kind == kind
        && last.offset + last.len == offset
    {
        last.len += len;
        return;
    }
    out.push(Extent { offset, len, kind });
}
