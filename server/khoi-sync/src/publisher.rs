//! The publisher: every version of a shared image goes to the bucket as its
//! top layer's chunks, then its signed manifest. Chunks the bucket already
//! has are not sent again, so an interrupted upload resumes where it
//! stopped, and a version whose manifest is written is complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use khoi_block::{Store, VersionInfo};
use serde::{Deserialize, Serialize};

use crate::chunk::{self, Range};
use crate::manifest::{ChunkRef, FORMAT, Gate, Manifest, Retirement};
use crate::remote::Remote;
use crate::sign::{self, Kind};
use crate::{EventFn, SyncError, SyncEvent, read_json, write_json};

/// What the publisher knows it has uploaded: manifests written, by image,
/// as version uuids. The bucket is the truth; this only saves asking it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Uploaded {
    images: BTreeMap<String, BTreeSet<String>>,
}

/// The image check's verdict on a version, if any.
pub type GateFn = Arc<dyn Fn(&str, u32) -> Option<Gate> + Send + Sync>;

/// What one upload sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadReport {
    pub versions: u32,
    pub chunks_sent: u64,
    pub chunks_skipped: u64,
    pub bytes_sent: u64,
}

pub struct Publisher {
    store: Arc<Store>,
    remote: Remote,
    key: SigningKey,
    state_path: PathBuf,
    gate: GateFn,
    events: EventFn,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("state_path", &self.state_path)
            .finish_non_exhaustive()
    }
}

/// The parent of `v`: the version whose stack is `v`'s minus its top layer.
fn parent_of<'a>(v: &VersionInfo, all: &'a [VersionInfo]) -> Option<Option<&'a VersionInfo>> {
    if v.layers.len() == 1 {
        return Some(None);
    }
    let below = &v.layers[..v.layers.len() - 1];
    all.iter().find(|p| p.layers == below).map(Some)
}

impl Publisher {
    /// `state_dir` holds the publisher's own bookkeeping (created if missing).
    pub fn new(
        store: Arc<Store>,
        remote: Remote,
        key: SigningKey,
        state_dir: PathBuf,
        gate: GateFn,
        events: EventFn,
    ) -> Result<Publisher, SyncError> {
        std::fs::create_dir_all(&state_dir).map_err(|e| SyncError::io(&state_dir, e))?;
        Ok(Publisher {
            store,
            remote,
            key,
            state_path: state_dir.join("published.json"),
            gate,
            events,
        })
    }

    fn record(
        &self,
        kind: &'static str,
        image: &str,
        detail: String,
        args: Vec<(&'static str, String)>,
    ) {
        (self.events)(SyncEvent {
            kind,
            subject: image.to_string(),
            detail,
            args,
        });
    }

    /// Whether the store has `image` (a shared image may not exist yet).
    pub fn has_image(&self, image: &str) -> bool {
        self.store.versions(image).is_ok()
    }

    /// Uploads every version of `image` the bucket lacks, oldest first.
    pub async fn upload_image(&self, image: &str) -> Result<UploadReport, SyncError> {
        let mut done: Uploaded = read_json(&self.state_path)?.unwrap_or_default();
        let mut versions = self.store.versions(image)?;
        versions.sort_by_key(|v| v.number);
        let mut report = UploadReport::default();
        for v in &versions {
            if done.images.get(image).is_some_and(|s| s.contains(&v.uuid)) {
                continue;
            }
            let Some(parent) = parent_of(v, &versions) else {
                self.record(
                    "sync.upload_skipped",
                    image,
                    format!(
                        "version {} of {image} is not uploaded: the version it was made from was deleted",
                        v.number
                    ),
                    vec![("version", v.number.to_string())],
                );
                continue;
            };
            if let Some(p) = parent
                && !done.images.get(image).is_some_and(|s| s.contains(&p.uuid))
            {
                // Its parent failed or was skipped this pass.
                continue;
            }
            let r = self
                .upload_version(image, v, parent.map(|p| p.uuid.clone()))
                .await;
            match r {
                Ok(r) => {
                    report.versions += 1;
                    report.chunks_sent += r.chunks_sent;
                    report.chunks_skipped += r.chunks_skipped;
                    report.bytes_sent += r.bytes_sent;
                    done.images
                        .entry(image.to_string())
                        .or_default()
                        .insert(v.uuid.clone());
                    write_json(&self.state_path, &done)?;
                    self.record(
                        "sync.uploaded",
                        image,
                        format!(
                            "version {} of {image} uploaded: {} chunks ({} bytes) sent, {} already in the bucket",
                            v.number, r.chunks_sent, r.bytes_sent, r.chunks_skipped
                        ),
                        vec![
                            ("version", v.number.to_string()),
                            ("chunks", r.chunks_sent.to_string()),
                            ("bytes", r.bytes_sent.to_string()),
                        ],
                    );
                }
                Err(e) => {
                    self.record(
                        "sync.upload_failed",
                        image,
                        format!("version {} of {image} not uploaded: {e}", v.number),
                        vec![("version", v.number.to_string()), ("error", e.to_string())],
                    );
                    return Err(e);
                }
            }
        }
        Ok(report)
    }

    async fn upload_version(
        &self,
        image: &str,
        v: &VersionInfo,
        parent: Option<String>,
    ) -> Result<UploadReport, SyncError> {
        let store = Arc::clone(&self.store);
        let (img, n) = (image.to_string(), v.number);
        let layer = tokio::task::spawn_blocking(move || store.top_layer(&img, n))
            .await
            .map_err(SyncError::join)??;
        let file = Arc::new(layer.file);
        let data: Vec<Range> = layer
            .runs
            .iter()
            .filter(|r| r.data)
            .map(|r| Range {
                offset: r.offset,
                len: r.len,
            })
            .collect();
        // The base layer is over nothing: its zero ranges are what an empty
        // disk reads anyway, so they need not be listed.
        let zeros: Vec<[u64; 2]> = if layer.base {
            Vec::new()
        } else {
            layer
                .runs
                .iter()
                .filter(|r| !r.data)
                .map(|r| [r.offset, r.len])
                .collect()
        };
        let mut report = UploadReport::default();
        let mut chunks = Vec::new();
        for plan in chunk::plan(&data) {
            let f = Arc::clone(&file);
            let pieces = plan.pieces.clone();
            let sealed = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let raw = read_pieces(&f, &pieces)?;
                chunk::seal(&raw)
            })
            .await
            .map_err(SyncError::join)?
            .map_err(|e| SyncError::Io {
                what: format!("layer {} of {image}", layer.id),
                source: e,
            })?;
            let path = self.remote.layout.chunk(&sealed.id);
            let stored_len = sealed.stored.len() as u64;
            if self.remote.exists(&path).await? {
                report.chunks_skipped += 1;
            } else {
                self.remote.put(&path, sealed.stored).await?;
                report.chunks_sent += 1;
                report.bytes_sent += stored_len;
            }
            chunks.push(ChunkRef {
                id: sealed.id.to_hex(),
                raw_len: plan.raw_len(),
                stored_len,
                pieces: plan.pieces.iter().map(|p| [p.offset, p.len]).collect(),
            });
        }
        let m = Manifest {
            format: FORMAT,
            image: image.to_string(),
            version: v.uuid.clone(),
            number: v.number,
            parent,
            size: v.size,
            created: v.created,
            note: v.note.clone(),
            author: v.author.clone(),
            gate: (self.gate)(image, v.number),
            chunks,
            zeros,
        };
        m.check()?;
        let signed = sign::sign(&self.key, Kind::Manifest, &m.to_json());
        // Last: a manifest in the bucket promises every chunk it names.
        self.remote
            .put(&self.remote.layout.manifest(image, &v.uuid), signed)
            .await?;
        Ok(report)
    }

    /// Orders every site to remove `version` (a local version number) of
    /// `image`; a site keeps it while one of its seats uses it.
    pub async fn retire(&self, image: &str, version: u32) -> Result<(), SyncError> {
        let v = self
            .store
            .versions(image)?
            .into_iter()
            .find(|v| v.number == version)
            .ok_or_else(|| SyncError::Refused(format!("{image} has no version {version}")))?;
        let r = Retirement {
            format: FORMAT,
            image: image.to_string(),
            version: v.uuid.clone(),
            created: crate::now_unix(),
        };
        let body = serde_json::to_vec(&r).expect("a retirement always serialises");
        let signed = sign::sign(&self.key, Kind::Retire, &body);
        self.remote
            .put(&self.remote.layout.retirement(image, &v.uuid), signed)
            .await?;
        self.record(
            "sync.retired",
            image,
            format!("version {version} of {image} retired for every site"),
            vec![("version", version.to_string())],
        );
        Ok(())
    }
}

/// One site as the publisher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRow {
    pub name: String,
    pub state: crate::status::SiteState,
    pub status: Option<crate::status::SiteStatus>,
    /// Why the status could not be used (bad signature, another site's).
    pub problem: Option<String>,
}

impl Publisher {
    /// Reads every listed site's status and classifies it against what this
    /// publisher has sent.
    pub async fn province(
        &self,
        sites: &[(String, ed25519_dalek::VerifyingKey)],
    ) -> Result<Vec<SiteRow>, SyncError> {
        use crate::status::{SiteState, SiteStatus, classify};
        let done: Uploaded = read_json(&self.state_path)?.unwrap_or_default();
        let sent: BTreeMap<String, Vec<String>> = done
            .images
            .into_iter()
            .map(|(image, ids)| (image, ids.into_iter().collect()))
            .collect();
        let now = crate::now_unix();
        let mut rows = Vec::with_capacity(sites.len());
        for (name, key) in sites {
            let got = self
                .remote
                .get(&self.remote.layout.status(name), 1 << 20)
                .await?;
            let (status, problem) = match got {
                None => (None, None),
                Some(bytes) => match sign::verify(&[*key], Kind::Status, &bytes) {
                    Err(e) => (None, Some(e.to_string())),
                    Ok((body, _)) => match SiteStatus::parse(body) {
                        Err(e) => (None, Some(e)),
                        Ok(s) if s.site != *name => {
                            (None, Some(format!("the status is {:?}'s", s.site)))
                        }
                        Ok(s) => (Some(s), None),
                    },
                },
            };
            let state = if problem.is_some() {
                SiteState::Unknown
            } else {
                classify(status.as_ref(), &sent, now)
            };
            rows.push(SiteRow {
                name: name.clone(),
                state,
                status,
                problem,
            });
        }
        Ok(rows)
    }
}

/// Reads a chunk's pieces from a layer's data file.
pub(crate) fn read_pieces(f: &std::fs::File, pieces: &[Range]) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    let mut raw = vec![0u8; usize::try_from(total).map_err(std::io::Error::other)?];
    let mut at = 0usize;
    for p in pieces {
        let len = usize::try_from(p.len).map_err(std::io::Error::other)?;
        f.read_exact_at(&mut raw[at..at + len], p.offset)?;
        at += len;
    }
    Ok(raw)
}
