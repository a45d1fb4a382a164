//! Province distribution: a publisher puts each published version of the
//! images it shares into S3-compatible object storage as content-addressed
//! chunks plus a manifest signed with the province's Ed25519 key; sites pull
//! the versions they lack, verify every byte and the signature, and commit
//! them through the block core's own publish.
//!
//! - [`chunk`]: cutting a layer's data into chunks, sealing (BLAKE3, zstd)
//!   and opening them (bounded, verified). No I/O.
//! - [`sign`]: the signed envelope, key ids, key files.
//! - [`manifest`]: what a version is made of, checked before use.
//! - [`layout`]: object names in the bucket.
//! - [`remote`]: the bucket (`object_store`), with a bandwidth cap.
//! - [`publisher`] and [`site`]: the two roles, over a `khoi_block::Store`.
//! - [`standby`]: a primary's signed state snapshot and its standby's copy.

pub mod chunk;
pub mod config;
pub mod layout;
pub mod manifest;
pub mod publisher;
pub mod remote;
pub mod sign;
pub mod site;
pub mod standby;
pub mod status;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Something the binary records in the event log: a kind (`sync.pulled`),
/// the image or site it is about, an English sentence, and the sentence's
/// values by name (for pages in other languages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncEvent {
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
    pub args: Vec<(&'static str, String)>,
}

pub type EventFn = Arc<dyn Fn(SyncEvent) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    #[error(transparent)]
    Store(#[from] khoi_block::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Chunk(#[from] chunk::ChunkError),
    #[error(transparent)]
    Signature(#[from] sign::SignError),
    #[error("{0}")]
    Refused(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl SyncError {
    fn io(path: &Path, source: std::io::Error) -> SyncError {
        SyncError::Io {
            what: path.display().to_string(),
            source,
        }
    }

    fn join(e: tokio::task::JoinError) -> SyncError {
        SyncError::Internal(e.to_string())
    }
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a JSON file; `None` if there is none.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, SyncError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| SyncError::Io {
                what: path.display().to_string(),
                source: std::io::Error::other(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SyncError::io(path, e)),
    }
}

/// Replaces a file atomically and durably: tmp, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SyncError> {
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    r.map_err(|e| SyncError::io(path, e))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SyncError> {
    let bytes = serde_json::to_vec_pretty(value).expect("state always serialises");
    write_atomic(path, &bytes)
}
