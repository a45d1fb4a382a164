//! Test doubles every crate's tests can share (cargo feature `testing`; a
//! crate enables it from its dev-dependencies). [`crate::MemDevice`] is the
//! plain in-memory device; these add what frontend tests need:
//!
//! - [`MemDisk`] behaves like an overlay with nothing underneath: unwritten
//!   or trimmed 4 KiB blocks read as zeroes and are reported as `Zero`
//!   extents and `Zero` read segments, so hole chunks and block status get
//!   exercised.
//! - [`FileDisk`] serves a file the way a golden layer is served: `File`
//!   read segments, so reads take the `sendfile` path; read-only, or a
//!   writable scratch file without native FUA or zeroing.
//! - [`Spy`] wraps a device, logs every call it receives and can present
//!   other capabilities, to check what a layer above sends to the device.
//!
//! Failing and slow devices are the [`crate::filters::Fault`] and
//! [`crate::filters::Delay`] layers over any of these (a full overlay is
//! `Fault` with `FaultError::NoSpace` on [`crate::filters::OpKind::WRITES`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::device::{
    BLOCK, BlockDevice, BlockError, DeviceCaps, Extent, ExtentKind, Level, ReadSegment, Result,
    SECTOR, WriteFlags,
};

fn idx(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[derive(Debug)]
struct MemState {
    data: Vec<u8>,
    /// One entry per BLOCK: written since the last trim/zero.
    allocated: Vec<bool>,
}

/// A RAM disk with per-block allocation tracking.
#[derive(Debug)]
pub struct MemDisk {
    size: u64,
    caps: DeviceCaps,
    state: Mutex<MemState>,
}

impl MemDisk {
    /// A writable disk of `size` bytes (rounded up to whole blocks internally)
    /// that does everything natively.
    pub fn new(size: u64) -> Self {
        Self::with_caps(
            size,
            DeviceCaps {
                read_only: false,
                flush: true,
                fua: Level::Native,
                trim: true,
                zero: Level::Native,
                extents: true,
                multi_conn: true,
                write_granularity: 1,
            },
        )
    }

    /// Takes levels, or the bools of [`crate::Caps`] (`true` = native).
    pub fn with_caps(size: u64, caps: impl Into<DeviceCaps>) -> Self {
        let blocks = size.div_ceil(BLOCK);
        MemDisk {
            size,
            caps: caps.into(),
            state: Mutex::new(MemState {
                data: vec![0; idx(size)],
                allocated: vec![false; idx(blocks)],
            }),
        }
    }

    fn zero_range(&self, offset: u64, len: u64) {
        let mut st = self.state.lock();
        let end = offset + len;
        st.data[idx(offset)..idx(end)].fill(0);
        // Only blocks wholly inside the range (the device's last partial
        // block counts as whole) become unallocated; partially covered blocks
        // stay allocated, which is still correct since their bytes were zeroed.
        for b in offset.div_ceil(BLOCK)..end.div_ceil(BLOCK) {
            let block_end = ((b + 1) * BLOCK).min(self.size);
            if block_end <= end {
                st.allocated[idx(b)] = false;
            }
        }
    }

    /// Runs of (allocated, start, end) covering `[offset, offset+len)`.
    fn runs(st: &MemState, offset: u64, len: u64) -> Vec<(bool, u64, u64)> {
        let end = offset + len;
        let mut out: Vec<(bool, u64, u64)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let next = ((b + 1) * BLOCK).min(end);
            let a = st.allocated[idx(b)];
            match out.last_mut() {
                Some(last) if last.0 == a => last.2 = next,
                _ => out.push((a, pos, next)),
            }
            pos = next;
        }
        out
    }
}

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn device_caps(&self) -> DeviceCaps {
        self.caps
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let st = self.state.lock();
        buf.copy_from_slice(&st.data[idx(offset)..idx(offset) + buf.len()]);
        Ok(())
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        let st = self.state.lock();
        Ok(Self::runs(&st, offset, len)
            .into_iter()
            .map(|(allocated, s, e)| {
                if allocated {
                    ReadSegment::Mem(st.data[idx(s)..idx(e)].to_vec())
                } else {
                    ReadSegment::Zero { len: e - s }
                }
            })
            .collect())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _flags: WriteFlags) -> Result<()> {
        if self.caps.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut st = self.state.lock();
        st.data[idx(offset)..idx(offset) + buf.len()].copy_from_slice(buf);
        let end = offset + buf.len() as u64;
        for b in offset / BLOCK..end.div_ceil(BLOCK) {
            st.allocated[idx(b)] = true;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _flags: WriteFlags) -> Result<()> {
        self.zero_range(offset, len);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: WriteFlags) -> Result<()> {
        self.zero_range(offset, len);
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let st = self.state.lock();
        Ok(Self::runs(&st, offset, len)
            .into_iter()
            .map(|(allocated, s, e)| Extent {
                offset: s,
                len: e - s,
                kind: if allocated {
                    ExtentKind::Overlay
                } else {
                    ExtentKind::Zero
                },
            })
            .collect())
    }
}

/// A file served like a golden layer (reads become `File` segments): read-only
/// from [`FileDisk::open`], or a writable scratch disk from
/// [`FileDisk::create`] whose FUA and zeroing [`crate::Checked`] emulates.
#[derive(Debug)]
pub struct FileDisk {
    file: Arc<File>,
    size: u64,
    writable: bool,
}

impl FileDisk {
    /// The size is rounded down to whole sectors, as block devices are.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len() / SECTOR * SECTOR;
        Ok(FileDisk {
            file: Arc::new(file),
            size,
            writable: false,
        })
    }

    /// A new zero-filled file of `size` bytes (replacing any file at `path`).
    pub fn create(path: &std::path::Path, size: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(FileDisk {
            file: Arc::new(file),
            size,
            writable: true,
        })
    }

    fn writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(BlockError::ReadOnly)
        }
    }

    /// A scratch file has no cheaper way to zero than writing zeroes.
    fn fill_zero(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        let zeroes = vec![0u8; usize::try_from(len).map_or(1 << 20, |l| l.min(1 << 20))];
        let mut done = 0;
        while done < len {
            let n = usize::try_from(len - done).map_or(zeroes.len(), |r| r.min(zeroes.len()));
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

impl BlockDevice for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn device_caps(&self) -> DeviceCaps {
        DeviceCaps {
            read_only: !self.writable,
            flush: self.writable,
            fua: Level::None,
            trim: self.writable,
            zero: Level::None,
            extents: true,
            multi_conn: true,
            write_granularity: 1,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self.file.read_exact_at(buf, offset)?)
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        Ok(vec![ReadSegment::File {
            file: self.file.clone(),
            offset,
            len,
        }])
    }

    fn write_at(&self, buf: &[u8], offset: u64, _flags: WriteFlags) -> Result<()> {
        self.writable()?;
        Ok(self.file.write_all_at(buf, offset)?)
    }

    fn flush(&self) -> Result<()> {
        if self.writable {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _flags: WriteFlags) -> Result<()> {
        // Trimmed ranges must read back as zeroes.
        self.fill_zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: WriteFlags) -> Result<()> {
        // Zero is `Level::None`, so under Checked this is not called; a
        // caller without Checked still gets the right bytes.
        self.fill_zero(offset, len)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let kind = if self.writable {
            ExtentKind::Overlay
        } else {
            ExtentKind::Golden
        };
        Ok(vec![Extent { offset, len, kind }])
    }
}

/// One call a [`Spy`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Read { offset: u64, len: u64 },
    Plan { offset: u64, len: u64 },
    Write { offset: u64, len: u64, fua: bool },
    Flush,
    Trim { offset: u64, len: u64, fua: bool },
    Zero { offset: u64, len: u64, fua: bool },
    Extents { offset: u64, len: u64 },
}

/// Logs the calls it passes to `inner`, and reports `caps` instead of the
/// inner device's when given (say, a device without native FUA).
#[derive(Debug)]
pub struct Spy {
    inner: Arc<dyn BlockDevice>,
    caps: Option<DeviceCaps>,
    calls: Mutex<Vec<Call>>,
}

impl Spy {
    pub fn new(inner: Arc<dyn BlockDevice>) -> Spy {
        Spy {
            inner,
            caps: None,
            calls: Mutex::new(Vec::new()),
        }
    }

    pub fn with_caps(mut self, caps: DeviceCaps) -> Spy {
        self.caps = Some(caps);
        self
    }

    /// The calls so far, oldest first; the log is emptied.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock())
    }

    fn log(&self, call: Call) {
        self.calls.lock().push(call);
    }
}

impl BlockDevice for Spy {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn device_caps(&self) -> DeviceCaps {
        self.caps.unwrap_or_else(|| self.inner.device_caps())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        self.log(Call::Read { offset, len });
        self.inner.read_at(buf, offset)
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.log(Call::Plan { offset, len });
        self.inner.read_plan(offset, len)
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> Result<()> {
        let len = buf.len() as u64;
        let fua = flags.fua;
        self.log(Call::Write { offset, len, fua });
        self.inner.write_at(buf, offset, flags)
    }

    fn flush(&self) -> Result<()> {
        self.log(Call::Flush);
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        let fua = flags.fua;
        self.log(Call::Trim { offset, len, fua });
        self.inner.trim(offset, len, flags)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> Result<()> {
        let fua = flags.fua;
        self.log(Call::Zero { offset, len, fua });
        self.inner.write_zeroes(offset, len, flags)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.log(Call::Extents { offset, len });
        self.inner.extents(offset, len)
    }
}
