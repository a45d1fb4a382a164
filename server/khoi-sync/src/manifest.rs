//! The signed description of one published version: which chunks make its
//! top layer and where their bytes go, which ranges it zeroes, and which
//! version it stacks on.
//!
//! Everything in a manifest is checked before anything is fetched for it
//! ([`Manifest::check`]): ranges inside the disk and not overlapping, chunk
//! lengths matching their pieces and bounded, names valid. A manifest that
//! passes can be applied without further checks.

use serde::{Deserialize, Serialize};

use crate::chunk::{CHUNK_MAX, ChunkId, Range};

pub const FORMAT: u32 = 1;
const TEXT_MAX: usize = 4096;
/// Ranges one manifest may list: a 2 TiB disk in 4 KiB pieces, alternating.
const RANGES_MAX: usize = 1 << 29;

/// The image check's verdict on a version, if it was checked before it was
/// published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub passed: bool,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// BLAKE3 of the raw bytes, lowercase hex.
    pub id: String,
    pub raw_len: u64,
    /// Length of the stored zstd frame (what a site downloads).
    pub stored_len: u64,
    /// `[offset, len]` on the disk, in the order the raw bytes hold them.
    pub pieces: Vec<[u64; 2]>,
}

impl ChunkRef {
    pub fn chunk_id(&self) -> Option<ChunkId> {
        ChunkId::from_hex(&self.id)
    }

    pub fn ranges(&self) -> impl Iterator<Item = Range> + '_ {
        self.pieces
            .iter()
            .map(|&[offset, len]| Range { offset, len })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub image: String,
    /// The version's id in the province: the publisher's version uuid.
    pub version: String,
    /// The publisher's version number (shown to people; sites number their
    /// versions themselves).
    pub number: u32,
    /// The version this one's layer stacks on; `None` for a base layer.
    pub parent: Option<String>,
    /// Disk size in bytes.
    pub size: u64,
    /// Unix seconds.
    pub created: u64,
    pub note: String,
    pub author: String,
    pub gate: Option<Gate>,
    pub chunks: Vec<ChunkRef>,
    /// `[offset, len]` ranges the layer sets to zero.
    pub zeros: Vec<[u64; 2]>,
}

/// Why a (correctly signed) manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest refused: {0}")]
pub struct ManifestError(pub String);

fn bad(s: impl Into<String>) -> ManifestError {
    ManifestError(s.into())
}

/// A version id: a uuid as the block core makes them (lowercase hex and
/// dashes), used in bucket keys and file names.
pub fn valid_version_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
        && !s.starts_with('-')
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// Parses and checks a manifest body.
    pub fn parse(body: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(body).map_err(|e| bad(format!("not a manifest: {e}")))?;
        m.check()?;
        Ok(m)
    }

    /// Bytes of data the layer holds.
    pub fn raw_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.raw_len).sum()
    }

    /// Bytes a site downloads when it holds none of the chunks.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.stored_len).sum()
    }

    pub fn check(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(bad(format!("unknown format {}", self.format)));
        }
        if !khoi_block::is_valid_new_name(&self.image) {
            return Err(bad(format!("image name {:?} is not valid", self.image)));
        }
        if !valid_version_id(&self.version) {
            return Err(bad(format!("version id {:?} is not valid", self.version)));
        }
        if let Some(p) = &self.parent
            && (!valid_version_id(p) || *p == self.version)
        {
            return Err(bad(format!("parent {p:?} is not valid")));
        }
        if self.size == 0 || !self.size.is_multiple_of(512) {
            return Err(bad(format!(
                "disk size {} is not a multiple of 512",
                self.size
            )));
        }
        if self.note.len() > TEXT_MAX || self.author.len() > TEXT_MAX {
            return Err(bad("note or author too long"));
        }
        if self
            .gate
            .as_ref()
            .is_some_and(|g| g.summary.len() > TEXT_MAX)
        {
            return Err(bad("gate summary too long"));
        }
        let count = self.zeros.len() + self.chunks.iter().map(|c| c.pieces.len()).sum::<usize>();
        if count > RANGES_MAX {
            return Err(bad(format!("{count} ranges is too many")));
        }
        let mut all: Vec<Range> = Vec::with_capacity(count);
        for c in &self.chunks {
            if c.chunk_id().is_none() {
                return Err(bad(format!("chunk id {:?} is not a BLAKE3 hash", c.id)));
            }
            let sum = c
                .pieces
                .iter()
                .try_fold(0u64, |a, p| a.checked_add(p[1]))
                .ok_or_else(|| bad("chunk lengths overflow"))?;
            if c.raw_len == 0 || c.raw_len > CHUNK_MAX || sum != c.raw_len {
                return Err(bad(format!(
                    "chunk {} holds {} bytes but its pieces cover {sum} (at most {CHUNK_MAX})",
                    c.id, c.raw_len
                )));
            }
            // zstd never expands 4 MiB by more than a few hundred bytes.
            if c.stored_len == 0 || c.stored_len > CHUNK_MAX + 65536 {
                return Err(bad(format!(
                    "chunk {} stored length {}",
                    c.id, c.stored_len
                )));
            }
            all.extend(c.ranges());
        }
        all.extend(
            self.zeros
                .iter()
                .map(|&[offset, len]| Range { offset, len }),
        );
        all.sort_unstable();
        let mut end = 0u64;
        for r in &all {
            let r_end = r
                .offset
                .checked_add(r.len)
                .ok_or_else(|| bad("range overflows"))?;
            if r.len == 0 || r_end > self.size {
                return Err(bad(format!(
                    "range {}+{} is empty or beyond the {}-byte disk",
                    r.offset, r.len, self.size
                )));
            }
            if r.offset < end {
                return Err(bad(format!("range at {} overlaps another", r.offset)));
            }
            end = r_end;
        }
        Ok(())
    }
}

/// A signed order to remove a version from every site (that does not use it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retirement {
    pub format: u32,
    pub image: String,
    pub version: String,
    pub created: u64,
}

impl Retirement {
    pub fn parse(body: &[u8]) -> Result<Retirement, ManifestError> {
        let r: Retirement =
            serde_json::from_slice(body).map_err(|e| bad(format!("not a retirement: {e}")))?;
        if r.format != FORMAT
            || !khoi_block::is_valid_new_name(&r.image)
            || !valid_version_id(&r.version)
        {
            return Err(bad("retirement names no valid version"));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            image: "win11".into(),
            version: "0f3c2a1e-8d7b-4c6a-9e5f-112233445566".into(),
            number: 2,
            parent: Some("aa3c2a1e-8d7b-4c6a-9e5f-112233445566".into()),
            size: 1 << 30,
            created: 1_780_000_000,
            note: "tháng 12: bản vá".into(),
            author: "so-tttt".into(),
            gate: Some(Gate {
                passed: true,
                summary: "ok".into(),
            }),
            chunks: vec![ChunkRef {
                id: ID.into(),
                raw_len: 12288,
                stored_len: 300,
                pieces: vec![[0, 4096], [1 << 20, 8192]],
            }],
            zeros: vec![[8192, 4096]],
        }
    }

    #[test]
    fn round_trips_and_counts() {
        let m = manifest();
        let back = Manifest::parse(&m.to_json()).expect("parse");
        assert_eq!(back, m);
        assert_eq!(m.raw_bytes(), 12288);
        assert_eq!(m.stored_bytes(), 300);
    }

    #[test]
    fn bytes_of_a_known_manifest() {
        let m = manifest();
        let json = String::from_utf8(m.to_json()).expect("utf8");
        assert_eq!(
            json,
            "{\"format\":1,\"image\":\"win11\",\"version\":\"0f3c2a1e-8d7b-4c6a-9e5f-112233445566\",\
             \"number\":2,\"parent\":\"aa3c2a1e-8d7b-4c6a-9e5f-112233445566\",\"size\":1073741824,\
             \"created\":1780000000,\"note\":\"tháng 12: bản vá\",\"author\":\"so-tttt\",\
             \"gate\":{\"passed\":true,\"summary\":\"ok\"},\"chunks\":[{\"id\":\"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\",\
             \"raw_len\":12288,\"stored_len\":300,\"pieces\":[[0,4096],[1048576,8192]]}],\
             \"zeros\":[[8192,4096]]}"
        );
    }

    fn refused(f: impl FnOnce(&mut Manifest)) -> String {
        let mut m = manifest();
        f(&mut m);
        Manifest::parse(&m.to_json()).expect_err("refused").0
    }

    #[test]
    fn bad_manifests_are_refused_before_anything_is_fetched() {
        assert!(refused(|m| m.format = 2).contains("format"));
        assert!(refused(|m| m.image = "../etc".into()).contains("image name"));
        assert!(refused(|m| m.version = "../x".into()).contains("version id"));
        assert!(refused(|m| m.parent = Some(m.version.clone())).contains("parent"));
        assert!(refused(|m| m.size = 1000).contains("512"));
        assert!(refused(|m| m.chunks[0].id = "zz".into()).contains("BLAKE3"));
        assert!(refused(|m| m.chunks[0].raw_len = 4096).contains("pieces cover"));
        assert!(refused(|m| m.chunks[0].pieces[1] = [1 << 30, 8192]).contains("beyond"));
        assert!(refused(|m| m.zeros.push([u64::MAX, 2])).contains("overflow"));
        assert!(refused(|m| m.zeros.push([2048, 4096])).contains("overlaps"));
        assert!(refused(|m| m.zeros.push([4096, 0])).contains("empty"));
        assert!(
            refused(|m| {
                m.chunks[0].pieces = vec![[0, CHUNK_MAX + 4096]];
                m.chunks[0].raw_len = CHUNK_MAX + 4096;
            })
            .contains("at most")
        );
        let e = Manifest::parse(br#"{"format":1,"extra":true}"#).expect_err("unknown field");
        assert!(e.0.contains("not a manifest"));
    }

    #[test]
    fn retirement_parses() {
        let r = Retirement {
            format: FORMAT,
            image: "win11".into(),
            version: "0f3c2a1e".into(),
            created: 1,
        };
        let body = serde_json::to_vec(&r).expect("json");
        assert_eq!(Retirement::parse(&body).expect("parse"), r);
        assert!(
            Retirement::parse(br#"{"format":1,"image":"x","version":"..","created":1}"#).is_err()
        );
    }
}
