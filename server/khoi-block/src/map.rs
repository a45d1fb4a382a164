//! Block-state bookkeeping shared by overlays and layers.
//!
//! A [`StateMap`] holds two bits per 4 KiB block in atomic words so readers
//! never take a lock: they load a word, and whatever state they see was set
//! only after the block's data was written. A [`RunMap`] is the flattened,
//! run-length form used for versions, where the map never changes after open.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::device::BLOCK;

/// The state of one 4 KiB block in an overlay or a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockState {
    /// Not held here: read through to whatever is below.
    NotPresent = 0,
    /// Data lives at the same offset of this overlay's/layer's data file.
    Present = 1,
    /// Reads as zeroes (trimmed or zeroed); the data file is not consulted.
    Zero = 2,
}

impl BlockState {
    fn from_bits(bits: u64) -> Option<BlockState> {
        match bits {
            0 => Some(BlockState::NotPresent),
            1 => Some(BlockState::Present),
            2 => Some(BlockState::Zero),
            _ => None,
        }
    }
}

/// Blocks per 64-bit word of the packed map.
pub const BLOCKS_PER_WORD: u64 = 32;
/// Bytes of the packed map flushed as one unit (one page of the map file).
pub const MAP_PAGE: u64 = 4096;
/// Words per map page.
pub const WORDS_PER_PAGE: usize = (MAP_PAGE / 8) as usize;

/// Number of blocks covering `size` bytes (the last one may be short).
pub fn blocks_for(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

/// Number of packed words for `nblocks`, rounded up to whole map pages so the
/// map file is always a whole number of pages.
pub fn words_for(nblocks: u64) -> usize {
    let words = nblocks.div_ceil(BLOCKS_PER_WORD);
    let pages = words.div_ceil(WORDS_PER_PAGE as u64).max(1);
    usize::try_from(pages).expect("map fits in memory") * WORDS_PER_PAGE
}

fn word_index(block: u64) -> usize {
    usize::try_from(block / BLOCKS_PER_WORD).expect("block index fits usize")
}

fn shift(block: u64) -> u64 {
    (block % BLOCKS_PER_WORD) * 2
}

/// How many blocks changed into and out of `Present` by a state update; the
/// overlay turns these into quota accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub gained: u64,
    pub lost: u64,
}

/// A contiguous range of blocks in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRun {
    pub start: u64,
    pub end: u64,
    pub state: BlockState,
}

/// Lock-free two-bit-per-block state map.
#[derive(Debug)]
pub struct StateMap {
    words: Vec<AtomicU64>,
    nblocks: u64,
}

impl StateMap {
    pub fn new(nblocks: u64) -> StateMap {
        let words = (0..words_for(nblocks)).map(|_| AtomicU64::new(0)).collect();
        StateMap { words, nblocks }
    }

    /// Builds a map from packed little-endian words as stored in a map file.
    /// Fails on the unused state `3` or on bits set beyond `nblocks`, both of
    /// which mean the file is not one we wrote.
    pub fn from_words(nblocks: u64, raw: &[u64]) -> Result<StateMap, String> {
        if raw.len() != words_for(nblocks) {
            return Err(format!(
                "map has {} words, expected {}",
                raw.len(),
                words_for(nblocks)
            ));
        }
        for (i, w) in raw.iter().enumerate() {
            // `3` in any slot shows up as both bits of the pair set.
            if (w & (w >> 1)) & 0x5555_5555_5555_5555 != 0 {
                return Err(format!("invalid block state in word {i}"));
            }
            let first_block = i as u64 * BLOCKS_PER_WORD;
            if first_block + BLOCKS_PER_WORD > nblocks && *w != 0 {
                let valid = nblocks.saturating_sub(first_block);
                let mask = if valid == 0 {
                    0
                } else {
                    u64::MAX >> (64 - valid * 2)
                };
                if w & !mask != 0 {
                    return Err(format!("state set beyond the end of the disk in word {i}"));
                }
            }
        }
        let words = raw.iter().map(|w| AtomicU64::new(*w)).collect();
        Ok(StateMap { words, nblocks })
    }

    pub fn nblocks(&self) -> u64 {
        self.nblocks
    }

    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    pub fn load_word(&self, i: usize) -> u64 {
        self.words[i].load(Ordering::Acquire)
    }

    pub fn get(&self, block: u64) -> BlockState {
        let w = self.words[word_index(block)].load(Ordering::Acquire);
        BlockState::from_bits((w >> shift(block)) & 3).unwrap_or(BlockState::NotPresent)
    }

    /// Sets `[start, end)` to `state`, word by word with atomic updates so that
    /// concurrent updates of neighbouring blocks in the same word are not lost.
    pub fn set_range(&self, start: u64, end: u64, state: BlockState) -> Delta {
        let mut delta = Delta::default();
        let mut b = start;
        while b < end {
            let wi = word_index(b);
            let word_end = ((b / BLOCKS_PER_WORD) + 1) * BLOCKS_PER_WORD;
            let stop = word_end.min(end);
            let lo = shift(b);
            let count = stop - b;
            let mask = if count == BLOCKS_PER_WORD {
                u64::MAX
            } else {
                ((1u64 << (count * 2)) - 1) << lo
            };
            let pattern = match state {
                BlockState::NotPresent => 0,
                BlockState::Present => 0x5555_5555_5555_5555 & mask,
                BlockState::Zero => 0xAAAA_AAAA_AAAA_AAAA & mask,
            };
            let old = self.words[wi]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    Some((w & !mask) | pattern)
                })
                .unwrap_or_else(|w| w);
            let present_before = count_present(old & mask);
            match state {
                BlockState::Present => delta.gained += count - present_before,
                _ => delta.lost += present_before,
            }
            b = stop;
        }
        delta
    }

    /// Number of blocks in `[start, end)` that are not `Present`.
    pub fn count_not_present(&self, start: u64, end: u64) -> u64 {
        let mut present = 0;
        for run in self.runs(start, end) {
            if run.state == BlockState::Present {
                present += run.end - run.start;
            }
        }
        (end - start) - present
    }

    pub fn count_present(&self) -> u64 {
        self.words
            .iter()
            .map(|w| count_present(w.load(Ordering::Acquire)))
            .sum()
    }

    /// Merged runs of equal state covering `[start, end)`.
    pub fn runs(&self, start: u64, end: u64) -> Vec<StateRun> {
        let mut out: Vec<StateRun> = Vec::new();
        let mut b = start;
        while b < end {
            let wi = word_index(b);
            let w = self.words[wi].load(Ordering::Acquire);
            let word_end = ((b / BLOCKS_PER_WORD) + 1) * BLOCKS_PER_WORD;
            let stop = word_end.min(end);
            // Whole-word fast path: common for large untouched or fully written areas.
            if b.is_multiple_of(BLOCKS_PER_WORD) && (w == 0 || w == 0x5555_5555_5555_5555) {
                let state = if w == 0 {
                    BlockState::NotPresent
                } else {
                    BlockState::Present
                };
                push_run(&mut out, b, stop, state);
                b = stop;
                continue;
            }
            while b < stop {
                let s =
                    BlockState::from_bits((w >> shift(b)) & 3).unwrap_or(BlockState::NotPresent);
                push_run(&mut out, b, b + 1, s);
                b += 1;
            }
        }
        out
    }
}

fn count_present(bits: u64) -> u64 {
    // Present is 0b01: low bit set, high bit clear.
    u64::from((bits & !(bits >> 1) & 0x5555_5555_5555_5555).count_ones())
}

fn push_run(out: &mut Vec<StateRun>, start: u64, end: u64, state: BlockState) {
    if let Some(last) = out.last_mut()
        && last.state == state
        && last.end == start
    {
        last.end = end;
        return;
    }
    out.push(StateRun { start, end, state });
}

/// Where a run of a flattened version reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Zero,
    Layer(u32),
}

/// Flattened run-length map: sorted run starts, each run extends to the next
/// start (the last to `nblocks`). Lookups are a binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMap {
    starts: Vec<u64>,
    sources: Vec<Source>,
    nblocks: u64,
}

impl RunMap {
    /// A map where every block reads as zero.
    pub fn zero(nblocks: u64) -> RunMap {
        RunMap {
            starts: vec![0],
            sources: vec![Source::Zero],
            nblocks,
        }
    }

    pub fn nblocks(&self) -> u64 {
        self.nblocks
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Approximate heap bytes used, to keep the memory bound honest in tests.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<u64>()
            + self.sources.capacity() * std::mem::size_of::<Source>()
    }

    /// Paints `[start, end)` with `src`, replacing whatever was below.
    /// `paints` must be sorted and non-overlapping; the whole batch is merged
    /// in one linear pass so building a version is O(runs), not O(runs²).
    pub fn paint(&mut self, paints: &[(u64, u64, Source)]) {
        if paints.is_empty() {
            return;
        }
        let mut starts = Vec::with_capacity(self.starts.len() + paints.len() * 2);
        let mut sources = Vec::with_capacity(starts.capacity());
        let mut push = |s: u64, src: Source| {
            if let Some(last) = sources.last()
                && *last == src
            {
                return;
            }
            starts.push(s);
            sources.push(src);
        };
        let mut i = 0; // index into old runs
        let mut pos = 0u64;
        for &(ps, pe, psrc) in paints {
            let pe = pe.min(self.nblocks);
            if ps >= pe {
                continue;
            }
            // Old runs between pos and ps.
            while pos < ps {
                while i + 1 < self.starts.len() && self.starts[i + 1] <= pos {
                    i += 1;
                }
                push(pos, self.sources[i]);
                let next = self.starts.get(i + 1).copied().unwrap_or(self.nblocks);
                pos = next.min(ps);
            }
            push(ps, psrc);
            pos = pe;
        }
        while pos < self.nblocks {
            while i + 1 < self.starts.len() && self.starts[i + 1] <= pos {
                i += 1;
            }
            push(pos, self.sources[i]);
            pos = self.starts.get(i + 1).copied().unwrap_or(self.nblocks);
        }
        if starts.is_empty() {
            starts.push(0);
            sources.push(Source::Zero);
        }
        starts.shrink_to_fit();
        sources.shrink_to_fit();
        self.starts = starts;
        self.sources = sources;
    }

    /// Runs intersecting `[start, end)`, clipped to it.
    pub fn runs(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, Source)> + '_ {
        let first = self
            .starts
            .partition_point(|s| *s <= start)
            .saturating_sub(1);
        (first..self.starts.len())
            .map(move |i| {
                let s = self.starts[i];
                let e = self.starts.get(i + 1).copied().unwrap_or(self.nblocks);
                (s.max(start), e.min(end), self.sources[i])
            })
            .take_while(move |(s, _, _)| *s < end)
            .filter(|(s, e, _)| s < e)
    }
}

/// A piece of a byte request after splitting on block boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Part of one block: needs read-modify-write.
    Partial {
        block: u64,
        /// Offset of the request bytes inside the block.
        in_block: u64,
        /// Offset into the caller's buffer.
        buf_off: u64,
        len: u64,
    },
    /// Whole blocks `[start, end)`.
    Full {
        start: u64,
        end: u64,
        buf_off: u64,
        len: u64,
    },
}

/// Splits `[offset, offset+len)` of a device of `size` bytes into head, body
/// and tail. A short last block counts as whole when the request reaches the
/// end of the device, so the end of an unaligned disk needs no RMW.
pub fn split(offset: u64, len: u64, size: u64) -> Vec<Piece> {
    let mut out = Vec::with_capacity(3);
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let block = pos / BLOCK;
        let bstart = block * BLOCK;
        let bend = (bstart + BLOCK).min(size);
        if pos == bstart && end >= bend {
            // Aligned body: as many whole blocks as the request covers.
            let mut e = bend;
            while e < end && (e + BLOCK).min(size) <= end {
                e = (e + BLOCK).min(size);
            }
            let end_block = blocks_for(e);
            match out.last_mut() {
                Some(Piece::Full {
                    end: last_end, len, ..
                }) if *last_end == block => {
                    *last_end = end_block;
                    *len += e - pos;
                }
                _ => out.push(Piece::Full {
                    start: block,
                    end: end_block,
                    buf_off: pos - offset,
                    len: e - pos,
                }),
            }
            pos = e;
        } else {
            let stop = bend.min(end);
            out.push(Piece::Partial {
                block,
                in_block: pos - bstart,
                buf_off: pos - offset,
                len: stop - pos,
            });
            pos = stop;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_get_states() {
        let m = StateMap::new(100);
        assert_eq!(m.get(5), BlockState::NotPresent);
        let d = m.set_range(3, 40, BlockState::Present);
        assert_eq!(
            d,
            Delta {
                gained: 37,
                lost: 0
            }
        );
        let d = m.set_range(10, 12, BlockState::Zero);
        assert_eq!(d, Delta { gained: 0, lost: 2 });
        let d = m.set_range(0, 5, BlockState::Present);
        assert_eq!(d, Delta { gained: 3, lost: 0 });
        assert_eq!(m.get(11), BlockState::Zero);
        assert_eq!(m.get(39), BlockState::Present);
        assert_eq!(m.get(40), BlockState::NotPresent);
        assert_eq!(m.count_present(), 38);
        assert_eq!(m.count_not_present(0, 100), 62);
    }

    #[test]
    fn runs_merge_across_words() {
        let m = StateMap::new(200);
        m.set_range(10, 150, BlockState::Present);
        m.set_range(64, 96, BlockState::Zero);
        let runs = m.runs(0, 200);
        let expect = [
            (0, 10, BlockState::NotPresent),
            (10, 64, BlockState::Present),
            (64, 96, BlockState::Zero),
            (96, 150, BlockState::Present),
            (150, 200, BlockState::NotPresent),
        ];
        assert_eq!(runs.len(), expect.len());
        for (r, e) in runs.iter().zip(expect) {
            assert_eq!((r.start, r.end, r.state), e);
        }
        let mid = m.runs(20, 70);
        assert_eq!(mid.len(), 2);
        assert_eq!((mid[0].start, mid[0].end), (20, 64));
        assert_eq!((mid[1].start, mid[1].end), (64, 70));
    }

    #[test]
    fn from_words_rejects_bad_states() {
        let mut raw = vec![0u64; words_for(40)];
        raw[0] = 0b11;
        assert!(StateMap::from_words(40, &raw).is_err());
        raw[0] = 0;
        raw[1] = 1 << 20; // block 42, beyond 40
        assert!(StateMap::from_words(40, &raw).is_err());
        raw[1] = 1 << 14; // block 39
        let m = StateMap::from_words(40, &raw).expect("valid map");
        assert_eq!(m.get(39), BlockState::Present);
    }

    #[test]
    fn runmap_paint_and_lookup() {
        let mut m = RunMap::zero(100);
        m.paint(&[(0, 100, Source::Layer(0))]);
        assert_eq!(m.len(), 1);
        m.paint(&[(10, 20, Source::Layer(1)), (30, 40, Source::Zero)]);
        let runs: Vec<_> = m.runs(0, 100).collect();
        assert_eq!(
            runs,
            vec![
                (0, 10, Source::Layer(0)),
                (10, 20, Source::Layer(1)),
                (20, 30, Source::Layer(0)),
                (30, 40, Source::Zero),
                (40, 100, Source::Layer(0)),
            ]
        );
        // Painting the same source merges neighbours away.
        m.paint(&[(10, 20, Source::Layer(0)), (30, 40, Source::Layer(0))]);
        assert_eq!(m.len(), 1);
        let clipped: Vec<_> = m.runs(5, 7).collect();
        assert_eq!(clipped, vec![(5, 7, Source::Layer(0))]);
        // Paint at the very start and the very end.
        m.paint(&[(0, 1, Source::Zero), (99, 100, Source::Layer(2))]);
        let runs: Vec<_> = m.runs(0, 100).collect();
        assert_eq!(
            runs,
            vec![
                (0, 1, Source::Zero),
                (1, 99, Source::Layer(0)),
                (99, 100, Source::Layer(2)),
            ]
        );
    }

    #[test]
    fn runmap_paint_matches_per_block_model() {
        let n = 64u64;
        let mut model = vec![Source::Zero; 64];
        let mut m = RunMap::zero(n);
        let mut seed = 12345u64;
        for round in 0..200u32 {
            let mut paints = Vec::new();
            let mut pos = 0;
            while pos < n {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let gap = (seed >> 33) % 8;
                let len = 1 + (seed >> 40) % 8;
                let s = pos + gap;
                let e = (s + len).min(n);
                if s >= n {
                    break;
                }
                let src = if (seed >> 50).is_multiple_of(3) {
                    Source::Zero
                } else {
                    Source::Layer(round % 4)
                };
                paints.push((s, e, src));
                pos = e;
            }
            for &(s, e, src) in &paints {
                for b in s..e {
                    model[usize::try_from(b).expect("small")] = src;
                }
            }
            m.paint(&paints);
            for (s, e, src) in m.runs(0, n) {
                for b in s..e {
                    assert_eq!(model[usize::try_from(b).expect("small")], src, "block {b}");
                }
            }
        }
    }

    #[test]
    fn split_head_body_tail() {
        let size = 10 * BLOCK;
        assert_eq!(
            split(100, 50, size),
            vec![Piece::Partial {
                block: 0,
                in_block: 100,
                buf_off: 0,
                len: 50
            }]
        );
        assert_eq!(
            split(4000, 4096 * 2 + 200, size),
            vec![
                Piece::Partial {
                    block: 0,
                    in_block: 4000,
                    buf_off: 0,
                    len: 96
                },
                Piece::Full {
                    start: 1,
                    end: 3,
                    buf_off: 96,
                    len: 8192
                },
                Piece::Partial {
                    block: 3,
                    in_block: 0,
                    buf_off: 8288,
                    len: 104
                },
            ]
        );
        assert_eq!(
            split(BLOCK, BLOCK, size),
            vec![Piece::Full {
                start: 1,
                end: 2,
                buf_off: 0,
                len: BLOCK
            }]
        );
    }

    #[test]
    fn split_short_last_block_is_whole() {
        let size = 2 * BLOCK + 512;
        assert_eq!(
            split(BLOCK, BLOCK + 512, size),
            vec![Piece::Full {
                start: 1,
                end: 3,
                buf_off: 0,
                len: BLOCK + 512
            }]
        );
        assert_eq!(
            split(2 * BLOCK, 512, size),
            vec![Piece::Full {
                start: 2,
                end: 3,
                buf_off: 0,
                len: 512
            }]
        );
        assert_eq!(
            split(2 * BLOCK, 256, size),
            vec![Piece::Partial {
                block: 2,
                in_block: 0,
                buf_off: 0,
                len: 256
            }]
        );
    }
}
