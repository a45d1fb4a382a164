//! Small block devices for tests, the `memserve` example and benchmarks.
//!
//! `MemDisk` behaves like an overlay with nothing underneath: unwritten or
//! trimmed 4 KiB blocks read as zeroes and are reported as `Zero` extents and
//! `Zero` read segments, so hole chunks and block status get exercised.
//! `FileDisk` serves a file the way a golden layer is served: `File` read
//! segments, so reads take the `sendfile` path.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use khoi_block::device::Result;
use khoi_block::{
    BLOCK, BlockDevice, BlockError, Caps, Extent, ExtentKind, ReadSegment, WriteFlags,
};
use parking_lot::Mutex;

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
    caps: Caps,
    state: Mutex<MemState>,
}

impl MemDisk {
    /// A writable disk of `size` bytes (rounded up to whole blocks internally).
    pub fn new(size: u64) -> Self {
        Self::with_caps(
            size,
            Caps {
                read_only: false,
                flush: true,
                fua: true,
                trim: true,
                zero: true,
                extents: true,
                multi_conn: true,
            },
        )
    }

    pub fn with_caps(size: u64, caps: Caps) -> Self {
        let blocks = size.div_ceil(BLOCK);
        MemDisk {
            size,
            caps,
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

    fn caps(&self) -> Caps {
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

/// A read-only file served like a golden layer (reads become `File` segments).
#[derive(Debug)]
pub struct FileDisk {
    file: Arc<File>,
    size: u64,
}

impl FileDisk {
    /// The size is rounded down to whole sectors, as block devices are.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len() / khoi_block::SECTOR * khoi_block::SECTOR;
        Ok(FileDisk {
            file: Arc::new(file),
            size,
        })
    }
}

impl BlockDevice for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps {
            read_only: true,
            flush: false,
            fua: false,
            trim: false,
            zero: false,
            extents: true,
            multi_conn: true,
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

    fn write_at(&self, _buf: &[u8], _offset: u64, _flags: WriteFlags) -> Result<()> {
        Err(BlockError::ReadOnly)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, _offset: u64, _len: u64, _flags: WriteFlags) -> Result<()> {
        Err(BlockError::ReadOnly)
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: WriteFlags) -> Result<()> {
        Err(BlockError::ReadOnly)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset,
            len,
            kind: ExtentKind::Golden,
        }])
    }
}

/// A resolver over a fixed list of named devices.
#[derive(Debug, Default)]
pub struct StaticExports {
    exports: Vec<(crate::ExportInfo, khoi_block::Checked)>,
}

impl StaticExports {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, name: &str, description: &str, dev: Arc<dyn BlockDevice>) -> Self {
        self.exports.push((
            crate::ExportInfo {
                name: name.to_owned(),
                description: description.to_owned(),
            },
            khoi_block::Checked::new(dev),
        ));
        self
    }
}

impl crate::ExportResolver for StaticExports {
    fn list(&self) -> Vec<crate::ExportInfo> {
        self.exports.iter().map(|(i, _)| i.clone()).collect()
    }

    fn open(&self, name: &str) -> std::result::Result<khoi_block::Checked, crate::OpenError> {
        self.exports
            .iter()
            .find(|(i, _)| i.name == name)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| crate::OpenError::NotFound(format!("no export named {name:?}")))
    }
}
