//! Reading the block device: range-checked positional reads, and a
//! `Read + Seek` view of one partition for the `ntfs` crate.
//!
//! Devices trust their callers' ranges (`khoi_block::Checked` does the
//! checking), so every read here is checked first: a partition table may
//! point anywhere. Reads go through a small chunk cache because the `ntfs`
//! crate reads metadata in many small pieces.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom};

use khoi_block::BlockDevice;

/// Counts what a check reads, for [`crate::Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub bytes: Cell<u64>,
    pub reads: Cell<u64>,
}

/// Read `buf.len()` bytes at `offset`, refusing ranges past the device.
pub(crate) fn read_exact_at(
    dev: &dyn BlockDevice,
    counters: &Counters,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<()> {
    offset
        .checked_add(buf.len() as u64)
        .filter(|&e| e <= dev.size())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read {}+{} past the device end", offset, buf.len()),
            )
        })?;
    if buf.is_empty() {
        return Ok(());
    }
    counters.bytes.set(counters.bytes.get() + buf.len() as u64);
    counters.reads.set(counters.reads.get() + 1);
    dev.read_at(buf, offset).map_err(io::Error::other)
}

const CHUNK: u64 = 64 * 1024;
const CACHED_CHUNKS: usize = 32;

/// A partition of the device as a `Read + Seek` stream.
pub(crate) struct PartReader<'a> {
    dev: &'a dyn BlockDevice,
    counters: &'a Counters,
    start: u64,
    len: u64,
    pos: u64,
    /// Most recently used last; (chunk index, bytes).
    cache: Vec<(u64, Vec<u8>)>,
}

impl std::fmt::Debug for PartReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartReader")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("pos", &self.pos)
            .finish()
    }
}

impl<'a> PartReader<'a> {
    /// `len` is clipped to the device, so a partition entry that runs past the
    /// end reads as a short stream instead of failing every read.
    pub fn new(dev: &'a dyn BlockDevice, counters: &'a Counters, start: u64, len: u64) -> Self {
        let len = len.min(dev.size().saturating_sub(start));
        PartReader {
            dev,
            counters,
            start,
            len,
            pos: 0,
            cache: Vec::new(),
        }
    }

    fn chunk(&mut self, index: u64) -> io::Result<&[u8]> {
        if let Some(i) = self.cache.iter().position(|(c, _)| *c == index) {
            let hit = self.cache.remove(i);
            self.cache.push(hit);
        } else {
            let off = index * CHUNK;
            let n = CHUNK.min(self.len - off);
            let mut buf = vec![0; usize::try_from(n).map_err(io::Error::other)?];
            read_exact_at(self.dev, self.counters, &mut buf, self.start + off)?;
            if self.cache.len() >= CACHED_CHUNKS {
                self.cache.remove(0);
            }
            self.cache.push((index, buf));
        }
        Ok(&self.cache.last().expect("just pushed").1)
    }
}

impl Read for PartReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let index = self.pos / CHUNK;
        let within = usize::try_from(self.pos % CHUNK).map_err(io::Error::other)?;
        let chunk = self.chunk(index)?;
        let n = buf.len().min(chunk.len().saturating_sub(within));
        buf[..n].copy_from_slice(&chunk[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PartReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use khoi_block::MemDevice;

    #[test]
    fn reads_across_chunks_and_stops_at_the_end() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let dev = MemDevice::read_only(data.clone());
        let c = Counters::default();
        let mut r = PartReader::new(&dev, &c, 1000, 1_000_000);
        r.seek(SeekFrom::Start(CHUNK - 10)).expect("seek");
        let mut buf = [0; 20];
        r.read_exact(&mut buf).expect("read");
        let at = usize::try_from(1000 + CHUNK - 10).expect("fits");
        assert_eq!(&buf[..], &data[at..at + 20]);
        let mut rest = Vec::new();
        r.seek(SeekFrom::Start(0)).expect("seek");
        r.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, &data[1000..]);
        assert!(read_exact_at(&dev, &c, &mut buf, 299_990).is_err());
    }
}
