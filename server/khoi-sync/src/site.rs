//! The site: pulls the versions of its subscribed images that it lacks,
//! fetching only chunks no local layer holds, verifies every chunk's hash
//! and every manifest's signature, and commits each version through the
//! block core's publish (`Store::import_image` for a base layer,
//! `Store::publish_layer` for a delta). Nothing is committed until every
//! byte of a version is verified.
//!
//! Downloaded chunks wait in `<state>/partial/<version>/` until their version
//! commits, so an interrupted pull (WAN down, outside the window, Khoi
//! restarted) resumes without fetching them again. A site never removes a
//! version because the bucket lacks it; only a signed retirement does, and
//! never while a seat uses the version.
//!
//! The store's commit and `site.json` are two writes. Between them sits
//! `<state>/committing.json`, written before the commit and removed after
//! `site.json`: a site that stopped in between finds it, and adopts the
//! version the store already holds instead of committing it a second time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use khoi_block::{BlockDevice, Checked, Store, WriteFlags};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkId, Range};
use crate::manifest::{Gate, Manifest, Retirement};
use crate::publisher::read_pieces;
use crate::remote::Remote;
use crate::sign::{self, Kind};
use crate::{EventFn, SyncError, SyncEvent, read_json, write_atomic, write_json};

/// Largest manifest a site accepts: a fully written 2 TiB disk's manifest
/// is about 50 MB.
const MANIFEST_MAX: u64 = 256 << 20;

/// A version this site holds that came from the province.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The local version number.
    pub local: u32,
    /// The local id of the version's top layer (whose bytes the manifest's
    /// chunks are).
    pub layer: String,
    /// The publisher's version number.
    pub number: u32,
    pub gate: Option<Gate>,
    /// Unix seconds.
    pub pulled: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SiteState {
    /// image → province version id → what this site made of it.
    pub images: BTreeMap<String, BTreeMap<String, Held>>,
    /// Province version ids retired here.
    #[serde(default)]
    pub retired: BTreeMap<String, Vec<String>>,
    /// Unix seconds of the last pass that reached the bucket.
    #[serde(default)]
    pub last_sync: u64,
}

/// Why a version may not be removed now (a seat is on it, it is current),
/// or `None`.
pub type InUseFn = Arc<dyn Fn(&str, u32) -> Option<String> + Send + Sync>;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullReport {
    pub versions: u32,
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    /// Chunks taken from local layers instead of the bucket.
    pub chunks_local: u64,
    /// Chunks already downloaded by an interrupted pass.
    pub chunks_resumed: u64,
    pub refused: u32,
    pub retired: u32,
    /// The pass stopped early (the window closed); the rest comes next time.
    pub paused: bool,
}

/// Where one chunk's verified bytes are.
#[derive(Debug, Clone)]
enum Source {
    Partial(PathBuf),
    Local { layer: String, pieces: Vec<Range> },
}

/// A commit under way (`committing.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Intent {
    image: String,
    /// The province version id being committed.
    version: String,
    /// The image's newest local version before the commit (`None`: no image).
    top_before: Option<u32>,
}

pub struct Site {
    store: Arc<Store>,
    remote: Remote,
    trusted: Vec<VerifyingKey>,
    dir: PathBuf,
    events: EventFn,
    in_use: InUseFn,
    /// Refusals already reported (version id → reason), so a bad object in
    /// the bucket makes one event, not one per pass.
    reported: Mutex<HashMap<String, String>>,
    /// Fault injection for tests: stop as a crash would, right after the
    /// store's commit and before `site.json` records it.
    stop_after_commit: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What to do between chunks: go on, or stop for now.
pub type KeepGoing<'a> = &'a (dyn Fn() -> bool + Sync);

impl Site {
    pub fn new(
        store: Arc<Store>,
        remote: Remote,
        trusted: Vec<VerifyingKey>,
        state_dir: PathBuf,
        in_use: InUseFn,
        events: EventFn,
    ) -> Result<Site, SyncError> {
        for d in [
            state_dir.clone(),
            state_dir.join("partial"),
            state_dir.join("manifests"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| SyncError::io(&d, e))?;
        }
        Ok(Site {
            store,
            remote,
            trusted,
            dir: state_dir,
            events,
            in_use,
            reported: Mutex::new(HashMap::new()),
            stop_after_commit: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Fault injection: the next commits stop as if Khoi died right after
    /// the store's commit, before `site.json` records it (a test's crash).
    #[doc(hidden)]
    pub fn inject_stop_after_commit(&self, on: bool) {
        self.stop_after_commit
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The image's local versions; none when the image is not here yet.
    fn local_versions(&self, image: &str) -> Result<Vec<khoi_block::VersionInfo>, SyncError> {
        match self.store.versions(image) {
            Ok(vs) => Ok(vs),
            Err(khoi_block::StoreError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn intent_path(&self) -> PathBuf {
        self.dir.join("committing.json")
    }

    /// The version an interrupted commit of `m` left in the store, if any:
    /// a local version newer than the intent's `top_before`, with `m`'s
    /// note, author and size, whose top layer holds every chunk of `m`
    /// (each hash checked again, so an admin's publish that merely looks
    /// alike is never taken for it). When none is, that commit never
    /// happened and the intent is removed.
    async fn committed_before(&self, m: &Manifest) -> Result<Option<Held>, SyncError> {
        let Some(intent) = read_json::<Intent>(&self.intent_path())? else {
            return Ok(None);
        };
        if intent.image != m.image || intent.version != m.version {
            return Ok(None);
        }
        let candidates: Vec<_> = self
            .local_versions(&m.image)?
            .into_iter()
            .filter(|v| {
                intent.top_before.is_none_or(|t| v.number > t)
                    && v.note == m.note
                    && v.author == m.author
                    && v.size == m.size
            })
            .collect();
        // Reading a whole version back may take minutes: not on a reactor thread.
        let (store, m2) = (Arc::clone(&self.store), m.clone());
        let held = tokio::task::spawn_blocking(move || {
            candidates.into_iter().find_map(|v| {
                let layer = v.layers.last()?.clone();
                let holds_every_chunk = m2.chunks.iter().all(|c| {
                    c.chunk_id().is_some_and(|id| {
                        let pieces: Vec<Range> = c.ranges().collect();
                        read_local(&store, &m2.image, &layer, &pieces, id).is_ok()
                    })
                });
                holds_every_chunk.then(|| Held {
                    local: v.number,
                    layer,
                    number: m2.number,
                    gate: m2.gate.clone(),
                    pulled: crate::now_unix(),
                })
            })
        })
        .await
        .map_err(SyncError::join)?;
        if held.is_none() {
            let _ = std::fs::remove_file(self.intent_path());
        }
        Ok(held)
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("site.json")
    }

    /// What the site holds from the province.
    pub fn state(&self) -> Result<SiteState, SyncError> {
        Ok(read_json(&self.state_path())?.unwrap_or_default())
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

    /// Reports a refusal once per version and reason.
    fn refuse(&self, image: &str, id: &str, reason: &str) {
        let mut r = self.reported.lock();
        if r.get(id).is_some_and(|old| old == reason) {
            return;
        }
        r.insert(id.to_string(), reason.to_string());
        drop(r);
        self.record(
            "sync.refused",
            image,
            format!("province version {id} of {image} refused, nothing committed: {reason}"),
            vec![("version", id.to_string()), ("reason", reason.to_string())],
        );
    }

    fn manifest_cache(&self, image: &str, id: &str) -> PathBuf {
        self.dir.join("manifests").join(image).join(id)
    }

    /// Chunks the site's province layers hold: id → (layer, pieces).
    fn local_chunks(&self, state: &SiteState) -> HashMap<ChunkId, (String, String, Vec<Range>)> {
        let mut out = HashMap::new();
        for (image, held) in &state.images {
            for (id, h) in held {
                let Ok(bytes) = std::fs::read(self.manifest_cache(image, id)) else {
                    continue;
                };
                // Our own copy of a manifest we verified when we pulled it.
                let Some(m) = sign::verify(&self.trusted, Kind::Manifest, &bytes)
                    .ok()
                    .and_then(|(body, _)| Manifest::parse(body).ok())
                else {
                    continue;
                };
                for c in &m.chunks {
                    if let Some(cid) = c.chunk_id() {
                        out.entry(cid).or_insert_with(|| {
                            (image.clone(), h.layer.clone(), c.ranges().collect())
                        });
                    }
                }
            }
        }
        out
    }

    /// One pass over `image`: retirements, then every version the site
    /// lacks whose parent it holds, oldest first.
    pub async fn pull_image(
        &self,
        image: &str,
        keep_going: KeepGoing<'_>,
    ) -> Result<PullReport, SyncError> {
        let mut report = PullReport::default();
        let layout = self.remote.layout.clone();
        let retired_ids = self.remote.list(&layout.retired(image)).await?;
        let mut retired_ok: HashSet<String> = HashSet::new();
        for id in &retired_ids {
            match self.fetch_retirement(image, id).await {
                Ok(()) => {
                    retired_ok.insert(id.clone());
                }
                Err(reason) => {
                    report.refused += 1;
                    self.refuse(image, id, &reason);
                }
            }
        }
        report.retired += self.apply_retirements(image, &retired_ok)?;

        let listed = self.remote.list(&layout.versions(image)).await?;
        let mut state = self.state()?;
        let mut pending: Vec<(Manifest, Vec<u8>)> = Vec::new();
        for id in &listed {
            let held = state.images.get(image).is_some_and(|h| h.contains_key(id));
            let was_retired = state.retired.get(image).is_some_and(|r| r.contains(id));
            if held || was_retired || retired_ok.contains(id) {
                continue;
            }
            match self.fetch_manifest(image, id).await? {
                Ok(pair) => pending.push(pair),
                Err(reason) => {
                    report.refused += 1;
                    self.refuse(image, id, &reason);
                }
            }
        }
        pending.sort_by_key(|(m, _)| m.number);
        loop {
            let pos = pending.iter().position(|(m, _)| {
                m.parent
                    .as_ref()
                    .is_none_or(|p| state.images.get(image).is_some_and(|h| h.contains_key(p)))
            });
            let Some(pos) = pos else { break };
            let (m, signed) = pending.remove(pos);
            match self.pull_version(&state, &m, &mut report, keep_going).await {
                Ok(Some(held)) => {
                    std::fs::create_dir_all(self.dir.join("manifests").join(image))
                        .map_err(|e| SyncError::io(&self.dir, e))?;
                    write_atomic(&self.manifest_cache(image, &m.version), &signed)?;
                    state
                        .images
                        .entry(image.to_string())
                        .or_default()
                        .insert(m.version.clone(), held.clone());
                    state.last_sync = crate::now_unix();
                    write_json(&self.state_path(), &state)?;
                    let _ = std::fs::remove_file(self.intent_path());
                    self.reported.lock().remove(&m.version);
                    let partial = self.dir.join("partial").join(&m.version);
                    let _ = std::fs::remove_dir_all(&partial);
                    report.versions += 1;
                    self.record(
                        "sync.pulled",
                        image,
                        format!(
                            "province version {} of {image} is now version {} here ({} bytes fetched so far this pass)",
                            m.number, held.local, report.bytes_fetched
                        ),
                        vec![
                            ("number", m.number.to_string()),
                            ("version", held.local.to_string()),
                        ],
                    );
                }
                Ok(None) => {
                    report.paused = true;
                    break;
                }
                Err(SyncError::Refused(reason)) => {
                    report.refused += 1;
                    self.refuse(image, &m.version, &reason);
                }
                Err(e) => return Err(e),
            }
        }
        let mut state = self.state()?;
        state.last_sync = crate::now_unix();
        write_json(&self.state_path(), &state)?;
        Ok(report)
    }

    /// The verified manifest, or why it is refused. Errors reaching the
    /// bucket are the outer `Err`.
    async fn fetch_manifest(
        &self,
        image: &str,
        id: &str,
    ) -> Result<Result<(Manifest, Vec<u8>), String>, SyncError> {
        if !crate::manifest::valid_version_id(id) {
            return Ok(Err(format!("{id:?} is not a version id")));
        }
        let Some(signed) = self
            .remote
            .get(&self.remote.layout.manifest(image, id), MANIFEST_MAX)
            .await?
        else {
            return Ok(Err("its manifest vanished from the bucket".into()));
        };
        let body = match sign::verify(&self.trusted, Kind::Manifest, &signed) {
            Ok((body, _)) => body,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let m = match Manifest::parse(body) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if m.image != image || m.version != id {
            return Ok(Err(format!(
                "the manifest is for {} version {}, found under {image}/{id}",
                m.image, m.version
            )));
        }
        Ok(Ok((m, signed)))
    }

    async fn fetch_retirement(&self, image: &str, id: &str) -> Result<(), String> {
        let signed = self
            .remote
            .get(&self.remote.layout.retirement(image, id), 65536)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the retirement vanished".to_string())?;
        let (body, _) = sign::verify(&self.trusted, Kind::Retire, &signed)
            .map_err(|e| format!("retirement {e}"))?;
        let r = Retirement::parse(body).map_err(|e| e.to_string())?;
        if r.image != image || r.version != id {
            return Err("the retirement names another version".into());
        }
        Ok(())
    }

    /// Removes held versions the province retired, unless one is in use.
    fn apply_retirements(&self, image: &str, retired: &HashSet<String>) -> Result<u32, SyncError> {
        let mut state = self.state()?;
        let mut n = 0;
        let held: Vec<(String, Held)> = state
            .images
            .get(image)
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (id, h) in held {
            if !retired.contains(&id) {
                continue;
            }
            if let Some(why) = (self.in_use)(image, h.local) {
                self.refuse(image, &id, &format!("retired, but kept: {why}"));
                continue;
            }
            match self.store.delete_version(image, h.local) {
                Ok(()) => {}
                Err(khoi_block::StoreError::NotFound { .. }) => {}
                Err(e) => {
                    self.refuse(image, &id, &format!("retired, but kept: {e}"));
                    continue;
                }
            }
            if let Some(m) = state.images.get_mut(image) {
                m.remove(&id);
            }
            state
                .retired
                .entry(image.to_string())
                .or_default()
                .push(id.clone());
            self.reported.lock().remove(&id);
            let _ = std::fs::remove_file(self.manifest_cache(image, &id));
            write_json(&self.state_path(), &state)?;
            n += 1;
            self.record(
                "sync.version_retired",
                image,
                format!(
                    "version {} of {image} removed: the province retired it",
                    h.local
                ),
                vec![("version", h.local.to_string())],
            );
        }
        Ok(n)
    }

    /// Gathers, verifies and commits one version. `Ok(None)`: stopped
    /// before the commit because `keep_going` said so.
    async fn pull_version(
        &self,
        state: &SiteState,
        m: &Manifest,
        report: &mut PullReport,
        keep_going: KeepGoing<'_>,
    ) -> Result<Option<Held>, SyncError> {
        if let Some(held) = self.committed_before(m).await? {
            tracing::info!(image = %m.image, version = held.local, province = m.number,
                "adopting the version an interrupted pass committed");
            return Ok(Some(held));
        }
        let image = &m.image;
        let parent_local = match &m.parent {
            None => None,
            Some(p) => Some(
                state
                    .images
                    .get(image)
                    .and_then(|h| h.get(p))
                    .map(|h| h.local)
                    .ok_or_else(|| SyncError::Refused(format!("its parent {p} is not here")))?,
            ),
        };
        if let Some(n) = parent_local {
            let size = self
                .store
                .versions(image)?
                .into_iter()
                .find(|v| v.number == n)
                .map(|v| v.size)
                .ok_or_else(|| {
                    SyncError::Refused(format!("its parent (version {n} here) was deleted"))
                })?;
            if size != m.size {
                return Err(SyncError::Refused(format!(
                    "its disk is {} bytes, its parent's {size}",
                    m.size
                )));
            }
        }
        let local = self.local_chunks(state);
        let partial = self.dir.join("partial").join(&m.version);
        std::fs::create_dir_all(&partial).map_err(|e| SyncError::io(&partial, e))?;
        let mut sources = Vec::with_capacity(m.chunks.len());
        for c in &m.chunks {
            let id = c
                .chunk_id()
                .ok_or_else(|| SyncError::Internal("checked id".into()))?;
            let file = partial.join(format!("{}.zst", id.to_hex()));
            if let Ok(stored) = std::fs::read(&file) {
                if chunk::open(id, &stored, c.raw_len).is_ok() {
                    report.chunks_resumed += 1;
                    sources.push(Source::Partial(file));
                    continue;
                }
                let _ = std::fs::remove_file(&file);
            }
            if let Some((img, layer, pieces)) = local.get(&id) {
                let (store, img2, layer2, pieces2) = (
                    Arc::clone(&self.store),
                    img.clone(),
                    layer.clone(),
                    pieces.clone(),
                );
                let reusable = tokio::task::spawn_blocking(move || {
                    read_local(&store, &img2, &layer2, &pieces2, id).is_ok()
                })
                .await
                .unwrap_or(false);
                if reusable {
                    report.chunks_local += 1;
                    sources.push(Source::Local {
                        layer: format!("{img}/{layer}"),
                        pieces: pieces.clone(),
                    });
                    continue;
                }
            }
            if !keep_going() {
                return Ok(None);
            }
            let before = self
                .remote
                .counters
                .bytes_in
                .load(std::sync::atomic::Ordering::Relaxed);
            let stored = self
                .remote
                .get(&self.remote.layout.chunk(&id), c.stored_len)
                .await;
            let after = self
                .remote
                .counters
                .bytes_in
                .load(std::sync::atomic::Ordering::Relaxed);
            report.bytes_fetched += after - before;
            let stored = match stored {
                Ok(Some(s)) => s,
                Ok(None) => {
                    return Err(SyncError::Refused(format!(
                        "chunk {id} is missing from the bucket"
                    )));
                }
                // Longer than the manifest says: changed in the bucket.
                Err(crate::remote::RemoteError::Store(object_store::Error::Generic {
                    store: "khoi-sync",
                    ..
                })) => {
                    return Err(SyncError::Refused(format!(
                        "chunk {id} is not the size its manifest says (altered in the bucket)"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            report.chunks_fetched += 1;
            if let Err(e) = chunk::open(id, &stored, c.raw_len) {
                return Err(SyncError::Refused(e.to_string()));
            }
            write_atomic(&file, &stored)?;
            sources.push(Source::Partial(file));
        }
        if !keep_going() {
            return Ok(None);
        }
        let top_before = self.local_versions(image)?.iter().map(|v| v.number).max();
        write_json(
            &self.intent_path(),
            &Intent {
                image: image.clone(),
                version: m.version.clone(),
                top_before,
            },
        )?;
        let store = Arc::clone(&self.store);
        let m2 = m.clone();
        let dir = self.dir.clone();
        let held =
            tokio::task::spawn_blocking(move || commit(&store, &dir, &m2, parent_local, &sources))
                .await
                .map_err(SyncError::join)?;
        let held = match held {
            Ok(h) => h,
            // The intent stays: the next pass looks for what it left.
            Err(e) => return Err(e),
        };
        if self
            .stop_after_commit
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(SyncError::Internal(
                "injected stop between the commit and site.json".into(),
            ));
        }
        Ok(Some(held))
    }

    /// Writes this site's signed status to the bucket (`sites/<name>/status`),
    /// for the publisher's province page. `errors` are the binary's (an
    /// unreachable bucket); refusals still standing are added.
    pub async fn write_status(
        &self,
        key: &ed25519_dalek::SigningKey,
        name: &str,
        seats: u32,
        mut errors: Vec<String>,
    ) -> Result<(), SyncError> {
        let state = self.state()?;
        let mut s = crate::status::SiteStatus::new(name, crate::now_unix());
        s.last_sync = state.last_sync;
        s.seats = seats;
        for (image, held) in &state.images {
            s.held.insert(image.clone(), held.keys().cloned().collect());
            let current = self.store.current_version(image).ok();
            if let Some((id, _)) = held.iter().find(|(_, h)| Some(h.local) == current) {
                s.current.insert(image.clone(), id.clone());
            }
            let gates: BTreeMap<String, bool> = held
                .iter()
                .filter_map(|(id, h)| h.gate.as_ref().map(|g| (id.clone(), g.passed)))
                .collect();
            if !gates.is_empty() {
                s.gates.insert(image.clone(), gates);
            }
        }
        errors.extend(self.reported.lock().values().cloned());
        errors.sort();
        s.errors = errors;
        let signed = sign::sign(key, Kind::Status, &s.to_json());
        self.remote
            .put(&self.remote.layout.status(name), signed)
            .await?;
        Ok(())
    }
}

/// One chunk's bytes read back from a local layer, its hash checked again
/// (blocking: run it off the reactor).
fn read_local(
    store: &Store,
    image: &str,
    layer: &str,
    pieces: &[Range],
    id: ChunkId,
) -> Result<Vec<u8>, SyncError> {
    let f = store.open_layer_data(image, layer)?;
    let raw = read_pieces(&f, pieces).map_err(|e| SyncError::Io {
        what: format!("layer {layer} of {image}"),
        source: e,
    })?;
    chunk::verify_raw(id, &raw)?;
    Ok(raw)
}

/// Reads one chunk's raw bytes from where it waits, verifying them again.
fn load(store: &Store, src: &Source, id: ChunkId, raw_len: u64) -> Result<Vec<u8>, SyncError> {
    match src {
        Source::Partial(p) => {
            let stored = std::fs::read(p).map_err(|e| SyncError::io(p, e))?;
            Ok(chunk::open(id, &stored, raw_len)?)
        }
        Source::Local { layer, pieces } => {
            let (image, layer) = layer
                .split_once('/')
                .ok_or_else(|| SyncError::Internal("local source".into()))?;
            read_local(store, image, layer, pieces, id)
        }
    }
}

/// Writes the verified version into the store through its publish path.
fn commit(
    store: &Store,
    dir: &Path,
    m: &Manifest,
    parent: Option<u32>,
    sources: &[Source],
) -> Result<Held, SyncError> {
    let ids: Vec<ChunkId> = m
        .chunks
        .iter()
        .map(|c| {
            c.chunk_id()
                .ok_or_else(|| SyncError::Internal("checked id".into()))
        })
        .collect::<Result<_, _>>()?;
    let info = match parent {
        None => {
            // A base layer is imported like any image: a raw file in staging.
            use std::os::unix::fs::FileExt;
            let path = store.staging_dir().join(format!("sync-{}.raw", m.version));
            let f = std::fs::File::create(&path).map_err(|e| SyncError::io(&path, e))?;
            let r = (|| -> Result<khoi_block::VersionInfo, SyncError> {
                f.set_len(m.size).map_err(|e| SyncError::io(&path, e))?;
                for ((c, id), src) in m.chunks.iter().zip(&ids).zip(sources) {
                    let raw = load(store, src, *id, c.raw_len)?;
                    let mut at = 0usize;
                    for r in c.ranges() {
                        let len = usize::try_from(r.len)
                            .map_err(|e| SyncError::Internal(e.to_string()))?;
                        f.write_all_at(&raw[at..at + len], r.offset)
                            .map_err(|e| SyncError::io(&path, e))?;
                        at += len;
                    }
                }
                f.sync_all().map_err(|e| SyncError::io(&path, e))?;
                Ok(store.import_image(&m.image, &path, &m.note, &m.author)?)
            })();
            if r.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            r?
        }
        Some(base) => {
            let mut failure: Option<SyncError> = None;
            let r = store.publish_layer(&m.image, base, &m.note, &m.author, &mut |o| {
                let dev = Checked::new(Arc::clone(o) as Arc<dyn BlockDevice>);
                let fail = |e: khoi_block::BlockError| khoi_block::StoreError::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                };
                for ((c, id), src) in m.chunks.iter().zip(&ids).zip(sources) {
                    let raw = match load(store, src, *id, c.raw_len) {
                        Ok(raw) => raw,
                        Err(e) => {
                            let msg = e.to_string();
                            failure = Some(e);
                            return Err(khoi_block::StoreError::Io {
                                path: dir.to_path_buf(),
                                source: std::io::Error::other(msg),
                            });
                        }
                    };
                    let mut at = 0usize;
                    for r in c.ranges() {
                        let len =
                            usize::try_from(r.len).map_err(|e| khoi_block::StoreError::Io {
                                path: dir.to_path_buf(),
                                source: std::io::Error::other(e),
                            })?;
                        dev.write_at(&raw[at..at + len], r.offset, WriteFlags::NONE)
                            .map_err(fail)?;
                        at += len;
                    }
                }
                for &[offset, len] in &m.zeros {
                    dev.write_zeroes(offset, len, WriteFlags::NONE)
                        .map_err(fail)?;
                }
                Ok(())
            });
            match (r, failure) {
                (Ok(info), _) => info,
                (Err(_), Some(e)) => return Err(e),
                (Err(e), None) => return Err(e.into()),
            }
        }
    };
    let layer = info
        .layers
        .last()
        .cloned()
        .ok_or_else(|| SyncError::Internal("a version without layers".into()))?;
    Ok(Held {
        local: info.number,
        layer,
        number: m.number,
        gate: m.gate.clone(),
        pulled: crate::now_unix(),
    })
}

/// A daily window, Vietnam time (UTC+7), such as `19:00-06:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u32,
    end: u32,
}

impl Window {
    pub fn parse(s: &str) -> Result<Window, String> {
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        let bad = || format!("{s:?} is not a window like 19:00-06:00");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!(
                "{s:?} is empty; leave the window out to sync at any time"
            ));
        }
        Ok(Window { start, end })
    }

    /// Whether the Unix time `t` is inside the window.
    pub fn contains(&self, t: u64) -> bool {
        let local = (t + 7 * 3600) % 86400;
        let m = u32::try_from(local / 60).unwrap_or(0);
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let w = Window::parse("19:00-06:00").expect("parse");
        // 2026-12-04 12:00 UTC is 19:00 in Vietnam.
        let noon_utc = 1_796_385_600;
        assert!(w.contains(noon_utc));
        assert!(!w.contains(noon_utc - 60));
        assert!(w.contains(noon_utc + 10 * 3600));
        assert!(!w.contains(noon_utc + 11 * 3600));
        let day = Window::parse("08:30-11:00").expect("parse");
        assert!(day.contains(noon_utc - 10 * 3600));
        assert!(Window::parse("7:00-8:00").is_err());
        assert!(Window::parse("25:00-06:00").is_err());
        assert!(Window::parse("06:00-06:00").is_err());
        assert!(Window::parse("19:00").is_err());
    }
}
