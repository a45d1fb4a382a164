//! Warm standby: the primary's signed state snapshot (`sites/<primary>/snapshot`)
//! and the standby's copy of the last one that verified.
//!
//! The snapshot carries only what a promoted standby needs to serve the
//! primary's seats (the binary decides what: seats and settings), never
//! users or keys. It is signed with the primary's standby key under its own
//! envelope kind, so neither a manifest nor a site status can pass for one.
//! The standby keeps the last good snapshot on its disk: a bucket that is
//! down, or a forged object in it, never takes away what promote restores.

use std::path::PathBuf;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::manifest::FORMAT;
use crate::remote::Remote;
use crate::sign::{self, Kind};
use crate::{SyncError, read_json, write_atomic};

/// A snapshot is seats and settings, not images or events: 8 MiB is far
/// above any centre's and keeps a hostile object from filling memory.
pub const MAX_SNAPSHOT: u64 = 8 << 20;

/// What the primary writes every `snapshot_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    /// The primary's `sync.name`.
    pub primary: String,
    /// Unix seconds the primary took it.
    pub written: u64,
    /// The binary's own description of its state (seats, settings).
    pub state: serde_json::Value,
}

impl Snapshot {
    pub fn new(primary: &str, written: u64, state: serde_json::Value) -> Snapshot {
        Snapshot {
            format: FORMAT,
            primary: primary.to_string(),
            written,
            state,
        }
    }

    /// The signed envelope the primary uploads.
    pub fn seal(&self, key: &SigningKey) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("a snapshot always serialises");
        sign::sign(key, Kind::Snapshot, &body)
    }

    /// Checks an envelope: signed by `key` as a snapshot, of `primary`.
    pub fn open(key: &VerifyingKey, primary: &str, signed: &[u8]) -> Result<Snapshot, String> {
        let (body, _) = sign::verify(&[*key], Kind::Snapshot, signed).map_err(|e| e.to_string())?;
        let s: Snapshot = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if s.format != FORMAT {
            return Err(format!("unknown snapshot format {}", s.format));
        }
        // A primary's key signs only its own snapshots; one copied under
        // another centre's name is still refused.
        if s.primary != primary {
            return Err(format!(
                "the snapshot is of {:?}, this server is the standby of {primary:?}",
                s.primary
            ));
        }
        Ok(s)
    }
}

/// Uploads a snapshot of this (primary) server.
pub async fn write_snapshot(
    remote: &Remote,
    key: &SigningKey,
    snapshot: &Snapshot,
) -> Result<(), SyncError> {
    remote
        .put(
            &remote.layout.snapshot(&snapshot.primary),
            snapshot.seal(key),
        )
        .await?;
    Ok(())
}

/// What a pull of the primary's snapshot found.
#[derive(Debug, Clone, PartialEq)]
pub enum Pulled {
    /// A newer snapshot verified and is now the one kept.
    New(Snapshot),
    /// The bucket holds the one already kept (or an older one).
    Unchanged,
    /// The primary has not written one yet.
    None,
}

/// The standby's side: pulls and keeps the primary's last good snapshot.
#[derive(Debug)]
pub struct Standby {
    remote: Remote,
    primary: String,
    key: VerifyingKey,
    dir: PathBuf,
}

impl Standby {
    pub fn new(
        remote: Remote,
        primary: &str,
        key: VerifyingKey,
        state_dir: PathBuf,
    ) -> Result<Standby, SyncError> {
        std::fs::create_dir_all(&state_dir).map_err(|e| SyncError::io(&state_dir, e))?;
        Ok(Standby {
            remote,
            primary: primary.to_string(),
            key,
            dir: state_dir,
        })
    }

    pub fn primary(&self) -> &str {
        &self.primary
    }

    fn kept_path(&self) -> PathBuf {
        self.dir.join("snapshot.json")
    }

    /// The last snapshot that verified, if any.
    pub fn kept(&self) -> Result<Option<Snapshot>, SyncError> {
        read_json(&self.kept_path())
    }

    /// Fetches the primary's snapshot; keeps it only if it verifies and is
    /// newer than the one kept. A refused one is an error and changes nothing.
    pub async fn pull(&self) -> Result<Pulled, SyncError> {
        let path = self.remote.layout.snapshot(&self.primary);
        let Some(signed) = self.remote.get(&path, MAX_SNAPSHOT).await? else {
            return Ok(Pulled::None);
        };
        let s = Snapshot::open(&self.key, &self.primary, &signed).map_err(|e| {
            SyncError::Refused(format!(
                "the snapshot of {} in the bucket is refused, the last good one is kept: {e}",
                self.primary
            ))
        })?;
        if self.kept()?.is_some_and(|k| k.written >= s.written) {
            return Ok(Pulled::Unchanged);
        }
        let bytes = serde_json::to_vec_pretty(&s).expect("a snapshot always serialises");
        write_atomic(&self.kept_path(), &bytes)?;
        Ok(Pulled::New(s))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;
    use crate::layout::Layout;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn remote(store: &Arc<InMemory>) -> Remote {
        Remote::new(store.clone(), Layout::new("province"), None)
    }

    fn standby(store: &Arc<InMemory>, dir: &std::path::Path, k: &SigningKey) -> Standby {
        Standby::new(remote(store), "phuong-1", k.verifying_key(), dir.into()).expect("standby")
    }

    fn snap(written: u64, seats: &[&str]) -> Snapshot {
        Snapshot::new("phuong-1", written, serde_json::json!({ "seats": seats }))
    }

    #[tokio::test]
    async fn keeps_the_newest_good_snapshot() {
        let store = Arc::new(InMemory::new());
        let dir = tempfile::tempdir().expect("tmp");
        let primary = key(1);
        let sb = standby(&store, dir.path(), &primary);
        assert_eq!(sb.pull().await.expect("pull"), Pulled::None);
        assert_eq!(sb.kept().expect("kept"), None);

        let first = snap(100, &["quay-01"]);
        write_snapshot(&remote(&store), &primary, &first)
            .await
            .expect("write");
        assert_eq!(sb.pull().await.expect("pull"), Pulled::New(first.clone()));
        assert_eq!(sb.kept().expect("kept"), Some(first.clone()));
        assert_eq!(sb.pull().await.expect("pull"), Pulled::Unchanged);

        // An older one (a primary whose clock went back) does not replace it.
        write_snapshot(&remote(&store), &primary, &snap(50, &[]))
            .await
            .expect("write");
        assert_eq!(sb.pull().await.expect("pull"), Pulled::Unchanged);
        assert_eq!(sb.kept().expect("kept"), Some(first));

        let second = snap(200, &["quay-01", "quay-02"]);
        write_snapshot(&remote(&store), &primary, &second)
            .await
            .expect("write");
        assert_eq!(sb.pull().await.expect("pull"), Pulled::New(second.clone()));
        assert_eq!(sb.kept().expect("kept"), Some(second));
    }

    #[tokio::test]
    async fn forged_or_foreign_snapshots_are_refused_and_nothing_is_kept() {
        let store = Arc::new(InMemory::new());
        let dir = tempfile::tempdir().expect("tmp");
        let primary = key(1);
        let sb = standby(&store, dir.path(), &primary);
        let good = snap(100, &["quay-01"]);
        write_snapshot(&remote(&store), &primary, &good)
            .await
            .expect("write");
        sb.pull().await.expect("pull");
        let path = remote(&store).layout.snapshot("phuong-1");

        // Another key, a newer snapshot: refused by key id.
        write_snapshot(&remote(&store), &key(2), &snap(300, &["evil"]))
            .await
            .expect("write");
        let e = sb.pull().await.expect_err("another key");
        assert!(e.to_string().contains("not a trusted key"), "{e}");
        assert_eq!(sb.kept().expect("kept"), Some(good.clone()));

        // The right key id, the body altered after signing.
        let mut forged = snap(300, &["evil"]).seal(&primary);
        let last = forged.len() - 2;
        forged[last] ^= 1;
        remote(&store).put(&path, forged).await.expect("put");
        let e = sb.pull().await.expect_err("altered");
        assert!(e.to_string().contains("does not match"), "{e}");
        assert_eq!(sb.kept().expect("kept"), Some(good.clone()));

        // The primary's key, but a status relabelled as a snapshot.
        let status = sign::sign(&primary, Kind::Status, b"{}");
        remote(&store).put(&path, status).await.expect("put");
        assert!(sb.pull().await.is_err());

        // Another centre's snapshot (signed by the same key) copied here.
        let other = Snapshot::new("phuong-2", 400, serde_json::json!({}));
        remote(&store)
            .put(&path, other.seal(&primary))
            .await
            .expect("put");
        let e = sb.pull().await.expect_err("other centre");
        assert!(e.to_string().contains("phuong-2"), "{e}");
        assert_eq!(sb.kept().expect("kept"), Some(good));
    }

    #[tokio::test]
    async fn a_refused_first_snapshot_leaves_none() {
        let store = Arc::new(InMemory::new());
        let dir = tempfile::tempdir().expect("tmp");
        let sb = standby(&store, dir.path(), &key(1));
        write_snapshot(&remote(&store), &key(2), &snap(1, &["evil"]))
            .await
            .expect("write");
        assert!(sb.pull().await.is_err());
        assert_eq!(sb.kept().expect("kept"), None);
        assert!(!dir.path().join("snapshot.json").exists());
    }
}
