//! The on-disk block map shared by overlays and layers.
//!
//! ```text
//! offset 0     header (4096 bytes): magic "KHOIMAP\x01", u32 LE format (1),
//!              u32 LE flags (bit 0 = FULL: every block present, no body),
//!              u64 LE disk size in bytes, u64 LE block count, zero padding
//! offset 4096  body: 2 bits per 4 KiB block, packed little-endian into u64
//!              words, 32 blocks per word, whole 4 KiB pages (16384 blocks)
//! ```
//! The body is updated in place one page at a time, and only with states
//! whose data is already durable, so any page the kernel persists is a valid
//! (possibly older) picture of the overlay.

use std::fs::File;
use std::path::Path;

use crate::error::StoreError;
use crate::fsio;
use crate::map::{MAP_PAGE, StateMap, WORDS_PER_PAGE, blocks_for, words_for};

pub const HEADER: u64 = 4096;
const MAGIC: &[u8; 8] = b"KHOIMAP\x01";
const FORMAT: u32 = 1;
const FLAG_FULL: u32 = 1;

/// What a map file says about the blocks of its data file.
#[derive(Debug)]
pub enum MapBody {
    /// Every block present (an imported base layer).
    Full,
    States(StateMap),
}

fn header(size: u64, full: bool) -> Vec<u8> {
    let mut h = vec![0u8; usize::try_from(HEADER).expect("small")];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    let flags = if full { FLAG_FULL } else { 0 };
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&size.to_le_bytes());
    h[24..32].copy_from_slice(&blocks_for(size).to_le_bytes());
    h
}

fn body_len(size: u64) -> u64 {
    words_for(blocks_for(size)) as u64 * 8
}

/// Creates a map file, durably. `full` maps have no body.
pub fn create(path: &Path, size: u64, full: bool) -> Result<File, StoreError> {
    let len = if full {
        HEADER
    } else {
        HEADER + body_len(size)
    };
    let f = fsio::create_sparse(path, len)?;
    fsio::write_all_at(&f, &header(size, full), 0).map_err(StoreError::io(path))?;
    f.sync_all().map_err(StoreError::io(path))?;
    Ok(f)
}

/// Validates only the header and length of a map file, in constant time.
pub fn check(path: &Path, size: u64) -> Result<bool, StoreError> {
    read_inner(path, size, false).map(|b| matches!(b, MapBody::Full))
}

/// Reads and validates a map file for a disk of `size` bytes.
pub fn read(path: &Path, size: u64) -> Result<MapBody, StoreError> {
    read_inner(path, size, true)
}

fn read_inner(path: &Path, size: u64, body: bool) -> Result<MapBody, StoreError> {
    let f = fsio::open_ro(path)?;
    let len = f.metadata().map_err(StoreError::io(path))?.len();
    if len < HEADER {
        return Err(StoreError::corrupt(
            path,
            format!("map file is {len} bytes, shorter than its header"),
        ));
    }
    let mut h = vec![0u8; usize::try_from(HEADER).expect("small")];
    fsio::read_exact_at(&f, &mut h, 0).map_err(StoreError::io(path))?;
    if &h[0..8] != MAGIC {
        return Err(StoreError::corrupt(path, "bad magic"));
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&h[r]);
        u64::from_le_bytes(b)
    };
    let format = word(8..12);
    let flags = word(12..16);
    let hsize = word(16..24);
    let hblocks = word(24..32);
    if format != u64::from(FORMAT) {
        return Err(StoreError::corrupt(
            path,
            format!("unknown map format {format}"),
        ));
    }
    if hsize != size || hblocks != blocks_for(size) {
        return Err(StoreError::corrupt(
            path,
            format!("map is for a disk of {hsize} bytes, expected {size}"),
        ));
    }
    if flags & u64::from(FLAG_FULL) != 0 {
        return Ok(MapBody::Full);
    }
    let expect = HEADER + body_len(size);
    if len != expect {
        return Err(StoreError::corrupt(
            path,
            format!("map file is {len} bytes, expected {expect}"),
        ));
    }
    if !body {
        return Ok(MapBody::States(StateMap::new(0)));
    }
    let mut body = vec![0u8; usize::try_from(body_len(size)).expect("map fits in memory")];
    fsio::read_exact_at(&f, &mut body, HEADER).map_err(StoreError::io(path))?;
    let words: Vec<u64> = body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect();
    StateMap::from_words(blocks_for(size), &words)
        .map(MapBody::States)
        .map_err(|reason| StoreError::corrupt(path, reason))
}

/// Copies page `page` of the live map, to be written later by [`write_page`].
pub fn snapshot_page(map: &StateMap, page: usize) -> Vec<u8> {
    let first = page * WORDS_PER_PAGE;
    let mut buf = Vec::with_capacity(usize::try_from(MAP_PAGE).expect("small"));
    for i in first..(first + WORDS_PER_PAGE).min(map.word_count()) {
        buf.extend_from_slice(&map.load_word(i).to_le_bytes());
    }
    buf
}

pub fn write_page(f: &File, page: usize, bytes: &[u8]) -> std::io::Result<()> {
    fsio::write_all_at(f, bytes, HEADER + page as u64 * MAP_PAGE)
}
