//! In-memory block device: the test double other crates' tests serve, shaped
//! like nbdkit's `memory` plugin. Trim and write-zeroes store zeroes, so reads
//! are exact and a model comparison needs no special cases.

use parking_lot::RwLock;

use crate::device::{
    BlockDevice, DeviceCaps, Extent, ExtentKind, Level, ReadSegment, Result, WriteFlags,
};

#[derive(Debug)]
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemDevice {
    /// A zero-filled writable device of `size` bytes.
    pub fn new(size: u64) -> MemDevice {
        let size = usize::try_from(size).expect("MemDevice size fits in memory");
        MemDevice::from_vec(vec![0; size])
    }

    pub fn from_vec(data: Vec<u8>) -> MemDevice {
        MemDevice {
            data: RwLock::new(data),
            read_only: false,
        }
    }

    /// A read-only device with these contents (a stand-in for a version).
    pub fn read_only(data: Vec<u8>) -> MemDevice {
        MemDevice {
            data: RwLock::new(data),
            read_only: true,
        }
    }

    /// A copy of the whole contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

fn range(offset: u64, len: u64) -> std::ops::Range<usize> {
    let s = usize::try_from(offset).expect("in-range offset fits usize");
    let l = usize::try_from(len).expect("in-range length fits usize");
    s..s + l
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn device_caps(&self) -> DeviceCaps {
        let native = if self.read_only {
            Level::None
        } else {
            Level::Native
        };
        DeviceCaps {
            read_only: self.read_only,
            flush: !self.read_only,
            fua: native,
            trim: !self.read_only,
            zero: native,
            extents: true,
            multi_conn: true,
            write_granularity: 1,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        buf.copy_from_slice(&self.data.read()[range(offset, buf.len() as u64)]);
        Ok(())
    }

    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        Ok(vec![ReadSegment::Mem(
            self.data.read()[range(offset, len)].to_vec(),
        )])
    }

    fn write_at(&self, buf: &[u8], offset: u64, _flags: WriteFlags) -> Result<()> {
        self.data.write()[range(offset, buf.len() as u64)].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _flags: WriteFlags) -> Result<()> {
        self.data.write()[range(offset, len)].fill(0);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: WriteFlags) -> Result<()> {
        self.data.write()[range(offset, len)].fill(0);
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        // Reported as golden data so an overlay over a MemDevice shows the
        // same kinds it would over a real version.
        Ok(vec![Extent {
            offset,
            len,
            kind: ExtentKind::Golden,
        }])
    }
}
