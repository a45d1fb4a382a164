//! Content-addressed chunks of a layer's bytes.
//!
//! A layer's data runs are cut, in disk order, into chunks of
//! [`CHUNK_MAX`] bytes of data (the last one shorter); one chunk may gather
//! several small runs. A chunk's id is the BLAKE3 hash of its raw bytes (the
//! concatenation of its pieces), so equal bytes anywhere, in any layer of
//! any image, are stored and sent once; where the bytes go on the disk is
//! the manifest's business, not the chunk's. The stored form is one zstd
//! frame.

use std::fmt;

/// Data bytes per chunk. 4 MiB keeps a request's overhead small on a slow
/// link while a lost transfer costs little to redo.
pub const CHUNK_MAX: u64 = 4 << 20;

/// zstd level for stored chunks: level 3 is zstd's default, fast enough to
/// keep up with a disk on one core while gaining most of the ratio.
const ZSTD_LEVEL: i32 = 3;

/// A chunk's id: BLAKE3 of its raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(raw: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(raw).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let bytes = unhex(s)?;
        Some(ChunkId(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Lowercase hex only, so one value has one spelling (ids are compared as
/// strings in bucket keys).
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// A byte range of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
}

impl Range {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Where one chunk's bytes come from (and go to): its pieces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    pub pieces: Vec<Range>,
}

impl ChunkPlan {
    pub fn raw_len(&self) -> u64 {
        self.pieces.iter().map(|p| p.len).sum()
    }
}

/// Cuts data runs (in disk order, not overlapping) into chunks of
/// [`CHUNK_MAX`] data bytes each, the last one shorter.
pub fn plan(runs: &[Range]) -> Vec<ChunkPlan> {
    let mut out = Vec::new();
    let mut cur = ChunkPlan { pieces: Vec::new() };
    let mut filled = 0u64;
    for r in runs {
        let mut off = r.offset;
        let end = r.end();
        while off < end {
            let take = (end - off).min(CHUNK_MAX - filled);
            cur.pieces.push(Range {
                offset: off,
                len: take,
            });
            filled += take;
            off += take;
            if filled == CHUNK_MAX {
                out.push(std::mem::replace(
                    &mut cur,
                    ChunkPlan { pieces: Vec::new() },
                ));
                filled = 0;
            }
        }
    }
    if !cur.pieces.is_empty() {
        out.push(cur);
    }
    out
}

/// A chunk ready to store: its id and its zstd frame.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub id: ChunkId,
    pub stored: Vec<u8>,
}

/// Hashes and compresses a chunk's raw bytes.
pub fn seal(raw: &[u8]) -> std::io::Result<Sealed> {
    Ok(Sealed {
        id: ChunkId::of(raw),
        stored: zstd::bulk::compress(raw, ZSTD_LEVEL)?,
    })
}

/// Why a stored chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {id} is not a valid zstd frame of {raw_len} bytes")]
    Undecodable { id: ChunkId, raw_len: u64 },
    #[error("chunk {id} decompresses to {got} bytes, its manifest says {raw_len}")]
    WrongLength { id: ChunkId, raw_len: u64, got: u64 },
    #[error("chunk {id} does not match its hash (its bytes were changed)")]
    HashMismatch { id: ChunkId },
    #[error("chunk {id} claims {raw_len} bytes, more than the {CHUNK_MAX} a chunk may hold")]
    TooLarge { id: ChunkId, raw_len: u64 },
}

/// Decompresses a stored chunk and checks it is exactly the `raw_len` bytes
/// whose hash is `id`. Decompression never allocates more than `raw_len`
/// (itself at most [`CHUNK_MAX`]), so a hostile frame cannot blow up memory.
pub fn open(id: ChunkId, stored: &[u8], raw_len: u64) -> Result<Vec<u8>, ChunkError> {
    if raw_len > CHUNK_MAX {
        return Err(ChunkError::TooLarge { id, raw_len });
    }
    let cap = usize::try_from(raw_len).map_err(|_| ChunkError::TooLarge { id, raw_len })?;
    let raw =
        zstd::bulk::decompress(stored, cap).map_err(|_| ChunkError::Undecodable { id, raw_len })?;
    if raw.len() as u64 != raw_len {
        return Err(ChunkError::WrongLength {
            id,
            raw_len,
            got: raw.len() as u64,
        });
    }
    verify_raw(id, &raw)?;
    Ok(raw)
}

/// Checks raw bytes (read back from a local layer, say) against an id.
pub fn verify_raw(id: ChunkId, raw: &[u8]) -> Result<(), ChunkError> {
    if ChunkId::of(raw) != id {
        return Err(ChunkError::HashMismatch { id });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(offset: u64, len: u64) -> Range {
        Range { offset, len }
    }

    #[test]
    fn plan_cuts_runs_at_chunk_max_and_gathers_small_ones() {
        const M: u64 = 1 << 20;
        let runs = [r(0, 4096), r(M, 6 * M), r(100 * M, 8192)];
        let p = plan(&runs);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].pieces, vec![r(0, 4096), r(M, 4 * M - 4096)]);
        assert_eq!(p[0].raw_len(), CHUNK_MAX);
        assert_eq!(
            p[1].pieces,
            vec![r(M + 4 * M - 4096, 2 * M + 4096), r(100 * M, 8192)]
        );
        let total: u64 = p.iter().map(ChunkPlan::raw_len).sum();
        assert_eq!(total, 4096 + 6 * M + 8192);
        assert!(plan(&[]).is_empty());
    }

    #[test]
    fn id_is_blake3_of_the_raw_bytes() {
        // BLAKE3 of the empty input, from the BLAKE3 specification's vectors.
        assert_eq!(
            ChunkId::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let id = ChunkId::of(b"abc");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex(&id.to_hex().to_uppercase()), None);
        assert_eq!(ChunkId::from_hex("abc"), None);
    }

    #[test]
    fn seal_then_open_round_trips_and_compresses() {
        let raw: Vec<u8> = (0u32..1 << 20)
            .map(|i| (i / 4096).to_le_bytes()[0])
            .collect();
        let s = seal(&raw).expect("seal");
        assert!(s.stored.len() < raw.len() / 10, "{} bytes", s.stored.len());
        assert_eq!(&s.stored[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
        assert_eq!(open(s.id, &s.stored, raw.len() as u64).expect("open"), raw);
    }

    #[test]
    fn a_tampered_chunk_is_refused() {
        let raw = vec![7u8; 65536];
        let s = seal(&raw).expect("seal");
        // Other bytes, validly compressed, under the old id.
        let mut other = raw.clone();
        other[100] = 8;
        let forged = seal(&other).expect("seal");
        assert_eq!(
            open(s.id, &forged.stored, 65536),
            Err(ChunkError::HashMismatch { id: s.id })
        );
        // A flipped bit in the frame itself.
        let mut bad = s.stored.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open(s.id, &bad, 65536).is_err());
        // Garbage.
        assert_eq!(
            open(s.id, b"not zstd", 65536),
            Err(ChunkError::Undecodable {
                id: s.id,
                raw_len: 65536
            })
        );
    }

    #[test]
    fn lengths_are_bounded_by_the_manifest() {
        let raw = vec![1u8; 8192];
        let s = seal(&raw).expect("seal");
        // Claims fewer bytes than the frame holds: decompression stops at the cap.
        assert!(open(s.id, &s.stored, 4096).is_err());
        assert!(matches!(
            open(s.id, &s.stored, 16384),
            Err(ChunkError::WrongLength { got: 8192, .. })
        ));
        assert!(matches!(
            open(s.id, &s.stored, CHUNK_MAX + 1),
            Err(ChunkError::TooLarge { .. })
        ));
        // A bomb: 4 MiB of zeroes compresses to a few hundred bytes; claiming
        // 4 KiB, it is refused without inflating.
        let bomb = seal(&vec![0u8; 4 << 20]).expect("seal");
        assert!(bomb.stored.len() < 1024);
        assert!(open(bomb.id, &bomb.stored, 4096).is_err());
    }
}
