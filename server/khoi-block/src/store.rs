//! The image store: golden versions, drafts and seat overlays on disk.
//!
//! # Layout
//! ```text
//! <dir>/
//!   lock                            flock'd by the one Store that owns the directory
//!   staging/                        raw images the CLI prepares for import
//!   trash/                          whole directories being deleted (emptied at open)
//!   images/<image>/
//!     versions.json                 versions, their layer stacks, `current`
//!                                   (replaced atomically: tmp, fsync, rename, fsync dir)
//!     layers/<id>.data              sparse layer data, offset == disk offset, mode 0400
//!     layers/<id>.map               block map (see `mapfile`), mode 0400
//!     draft/meta.json               the maintenance draft: base version uuid, generation
//!     draft/overlay.<gen>.data|map  the draft's overlay files
//!   seats/<seat>/
//!     meta.json                     image, version number + uuid, generation, size
//!     overlay.<gen>.data|map        the seat's overlay files
//! ```
//!
//! # Commit points
//! Every multi-file change has one atomic step that decides whether it
//! happened, and [`Store::open`] removes whatever a crash left on either side:
//! - import and publish hard-link files into `layers/` first; the version
//!   exists once `versions.json` names it. Layer files no version names are
//!   removed at open; so is a draft whose id a version records as its origin
//!   (published, but the crash came before the draft directory was removed).
//! - a seat reset or rebase creates the next generation's files, then rewrites
//!   `meta.json`; files of other generations are removed at open.
//! - deletes rename the directory into `trash/` first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::device::SECTOR;
use crate::error::{IMAGE, SEAT, StoreError, validate_name};
use crate::event::{BlockEvent, EventSink, OverlayOwner};
use crate::overlay::{Durability, Overlay, OverlayCtx, OverlayUsage, SpaceGuard};
use crate::version::{LayerPaths, VersionDevice};
use crate::{fsio, mapfile};

/// How the binary configures the store.
#[derive(Clone)]
pub struct StoreOptions {
    /// Bytes that must stay free on the data file system; writes that would
    /// allocate new overlay blocks below it fail with `BlockError::NoSpace`.
    /// 0 disables the check.
    pub free_space_floor: u64,
    pub events: EventSink,
    /// The durability mode [`Store::seat_overlay`] opens a seat's overlay
    /// in (the server's policy: volatile only for overlays reset on boot).
    pub seat_durability: Arc<dyn Fn(&str) -> Durability + Send + Sync>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            free_space_floor: 0,
            events: Arc::new(|_| {}),
            seat_durability: Arc::new(|_| Durability::Durable),
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("free_space_floor", &self.free_space_floor)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub number: u32,
    /// Unique per version, never reused; overlays are bound to it.
    pub uuid: String,
    pub note: String,
    pub author: String,
    /// Unix seconds.
    pub created: u64,
    pub size: u64,
    /// Layer ids, bottom first.
    pub layers: Vec<String>,
    /// Bytes allocated by the top layer's data file.
    pub delta_bytes: u64,
}

/// A byte range of one layer (see [`Store::top_layer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerRun {
    pub offset: u64,
    pub len: u64,
    /// `true`: the layer's data file holds these bytes; `false`: the layer
    /// sets them to zero.
    pub data: bool,
}

/// The top layer of a version, as it is on disk: what a province
/// distribution uploads for that version (the layers below are its parent's).
#[derive(Debug)]
pub struct LayerView {
    /// The layer's id in the version's stack.
    pub id: String,
    /// The read-only data file (offset == disk offset).
    pub file: fs::File,
    pub size: u64,
    /// Ranges the layer holds, in disk order, none overlapping; the rest of
    /// the disk comes from the layers below.
    pub runs: Vec<LayerRun>,
    /// Whether this is the base layer (nothing below it).
    pub base: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    /// Size of the current version.
    pub size: u64,
    pub current: u32,
    pub latest: u32,
    pub versions: usize,
    pub has_draft: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionRec {
    number: u32,
    uuid: String,
    note: String,
    author: String,
    created: u64,
    size: u64,
    layers: Vec<String>,
    /// The draft this version was published from; lets open recognise a
    /// draft directory a crash left behind after its publish committed.
    #[serde(default)]
    from_draft: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRec {
    current: u32,
    /// Highest number ever used, so a deleted version's number is not reused.
    last_number: u32,
    versions: Vec<VersionRec>,
}

impl ImageRec {
    fn version(&self, n: u32) -> Option<&VersionRec> {
        self.versions.iter().find(|v| v.number == n)
    }

    /// Version `n` of this image (named `image` in the error).
    fn version_of(&self, image: &str, n: u32) -> Result<VersionRec, StoreError> {
        self.version(n)
            .cloned()
            .ok_or_else(|| version_not_found(image, n))
    }

    fn by_uuid(&self, uuid: &str) -> Option<&VersionRec> {
        self.versions.iter().find(|v| v.uuid == uuid)
    }

    fn uses_layer(&self, id: &str) -> bool {
        self.versions
            .iter()
            .any(|v| v.layers.iter().any(|l| l == id))
    }
}

/// `meta.json` of a seat overlay or a draft.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OverlayMeta {
    image: String,
    version: u32,
    version_uuid: String,
    generation: u64,
    size: u64,
    /// Drafts only: the id a published version records as `from_draft`.
    #[serde(default)]
    draft_id: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    images: BTreeMap<String, ImageRec>,
    drafts: HashMap<String, Weak<Overlay>>,
    seats: HashMap<String, Weak<Overlay>>,
    /// Keyed by version uuid, so every seat on a version shares one map and
    /// one set of layer file descriptors.
    versions: HashMap<String, Weak<VersionDevice>>,
    /// Images whose draft is being published: it may not be opened again
    /// while its files become a layer outside the lock.
    publishing: HashSet<String>,
}

pub struct Store {
    /// Holds an exclusive `flock` on `<dir>/lock` for the store's lifetime:
    /// two servers on one directory would each believe they own the files.
    _lock: fs::File,
    dir: PathBuf,
    opts: StoreOptions,
    space: Arc<SpaceGuard>,
    inner: Mutex<Inner>,
    /// Serialises the slow admin operations (import, publish, draft and
    /// image removal). They take `inner` only for their short bookkeeping
    /// steps and fsync their data without it, so opening a seat's disk at
    /// login never waits behind a multi-gigabyte sync.
    admin: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Prefix of the folders [`Store::publish_layer`] builds layers in.
const INCOMING: &str = "incoming.";

fn not_found(kind: &'static str, name: impl Into<String>) -> StoreError {
    StoreError::NotFound {
        kind,
        name: name.into(),
    }
}

fn version_not_found(image: &str, n: u32) -> StoreError {
    not_found("version", format!("{image} v{n}"))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(StoreError::io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::corrupt(path, e.to_string()))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| StoreError::corrupt(path, e.to_string()))?;
    fsio::write_atomic(path, &bytes)
}

fn overlay_files(dir: &Path, generation: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("overlay.{generation}.data")),
        dir.join(format!("overlay.{generation}.map")),
    )
}

/// Removes `overlay.*` files of generations other than `keep` (and stray tmp
/// files) from an overlay directory.
fn remove_stale_overlay_files(dir: &Path, keep: Option<u64>, events: &EventSink) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = if let Some(rest) = name.strip_prefix("overlay.") {
            let gen_part = rest.split('.').next().unwrap_or("");
            keep.is_none_or(|k| gen_part != k.to_string())
        } else {
            name.ends_with(".tmp")
        };
        if stale && fs::remove_file(entry.path()).is_ok() {
            events(BlockEvent::OrphanRemoved { path: entry.path() });
        }
    }
}

fn remove_in_background(paths: Vec<PathBuf>) {
    // Unlinking a large sparse file can take a while on some file systems;
    // reset must not, so the old generation goes away off the caller's thread.
    let spawned = std::thread::Builder::new()
        .name("khoi-block-unlink".into())
        .spawn(move || {
            for p in paths {
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(e) = r
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.display(), error = %e, "could not remove old overlay files");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start unlink thread; files are removed at next open");
    }
}

fn lock_dir(dir: &Path) -> Result<fs::File, StoreError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StoreError::io(&path))?;
    // SAFETY: flock on a file descriptor we own; no memory involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::InUse {
                what: format!("store {}", dir.display()),
                reason: "another Store (or server) has it open".into(),
            });
        }
        return Err(StoreError::Io { path, source: err });
    }
    Ok(f)
}

impl Store {
    /// Opens (creating if missing) the store at `dir`, removes what crashes
    /// left behind and validates every image's metadata and layer files.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        for sub in ["", "images", "seats", "staging", "trash"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(StoreError::io(&p))?;
        }
        let lock = lock_dir(dir)?;
        let space = Arc::new(SpaceGuard::new(dir.to_path_buf(), opts.free_space_floor));
        let store = Store {
            _lock: lock,
            dir: dir.to_path_buf(),
            opts,
            space,
            inner: Mutex::new(Inner::default()),
            admin: Mutex::new(()),
        };
        store.empty_trash();
        let images = store.load_images()?;
        store.gc_seats();
        store.inner.lock().images = images;
        Ok(store)
    }

    fn event(&self, e: BlockEvent) {
        tracing::info!(event = ?e, "block store event");
        (self.opts.events)(e);
    }

    fn orphan(&self, path: &Path) {
        let r = if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        match r {
            Ok(()) => self.event(BlockEvent::OrphanRemoved {
                path: path.to_path_buf(),
            }),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove orphan"),
        }
    }

    fn empty_trash(&self) {
        let trash = self.dir.join("trash");
        if let Ok(entries) = fs::read_dir(&trash) {
            for e in entries.flatten() {
                let _ = if e.path().is_dir() {
                    fs::remove_dir_all(e.path())
                } else {
                    fs::remove_file(e.path())
                };
            }
        }
    }

    fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    fn image_dir(&self, image: &str) -> PathBuf {
        self.images_dir().join(image)
    }

    fn versions_path(&self, image: &str) -> PathBuf {
        self.image_dir(image).join("versions.json")
    }

    fn layer_paths(&self, image: &str, id: &str) -> LayerPaths {
        let dir = self.image_dir(image).join("layers");
        LayerPaths {
            data: dir.join(format!("{id}.data")),
            map: dir.join(format!("{id}.map")),
        }
    }

    fn draft_dir(&self, image: &str) -> PathBuf {
        self.image_dir(image).join("draft")
    }

    fn seat_dir(&self, seat: &str) -> PathBuf {
        self.dir.join("seats").join(seat)
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join("staging")
    }

    fn load_images(&self) -> Result<BTreeMap<String, ImageRec>, StoreError> {
        let mut images = BTreeMap::new();
        let dir = self.images_dir();
        let entries = fs::read_dir(&dir).map_err(StoreError::io(&dir))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if validate_name(IMAGE, &name).is_err() || !path.is_dir() {
                tracing::warn!(path = %path.display(), "ignoring unexpected entry in images/");
                continue;
            }
            let vpath = self.versions_path(&name);
            if !vpath.exists() {
                // An import of a new image crashed before its commit point.
                self.orphan(&path);
                continue;
            }
            let rec: ImageRec = read_json(&vpath)?;
            if rec.version(rec.current).is_none() {
                return Err(StoreError::corrupt(
                    &vpath,
                    format!("current version {} does not exist", rec.current),
                ));
            }
            let _ = fs::remove_file(self.image_dir(&name).join(".versions.json.tmp"));
            self.gc_incoming(&name);
            self.gc_layers(&name, &rec)?;
            self.gc_draft(&name, &rec);
            images.insert(name, rec);
        }
        Ok(images)
    }

    /// Removes layer files no version names and checks the named ones exist
    /// and are read-only (a crash can come between link and chmod).
    fn gc_layers(&self, image: &str, rec: &ImageRec) -> Result<(), StoreError> {
        let dir = self.image_dir(image).join("layers");
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.rsplit_once('.').map_or(name.as_str(), |(id, _)| id);
                if !rec.uses_layer(id) {
                    self.orphan(&e.path());
                }
            }
        }
        for v in &rec.versions {
            for id in &v.layers {
                let lp = self.layer_paths(image, id);
                for p in [&lp.data, &lp.map] {
                    if !p.exists() {
                        return Err(StoreError::corrupt(
                            p,
                            format!("layer of {image} v{} is missing", v.number),
                        ));
                    }
                    fsio::set_mode(p, 0o400)?;
                }
            }
        }
        Ok(())
    }

    /// A layer being received ([`Store::publish_layer`]) when Khoi
    /// stopped: if its version committed, the layer files are links the
    /// version keeps; if not, it is a partial transfer. Either way the
    /// folder goes.
    fn gc_incoming(&self, image: &str) {
        let Ok(entries) = fs::read_dir(self.image_dir(image)) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(INCOMING) {
                self.orphan(&e.path());
            }
        }
    }

    fn gc_draft(&self, image: &str, rec: &ImageRec) {
        let dir = self.draft_dir(image);
        if !dir.exists() {
            return;
        }
        let meta_path = dir.join("meta.json");
        let meta: Option<OverlayMeta> = read_json(&meta_path).ok();
        let Some(meta) = meta else {
            self.orphan(&dir);
            return;
        };
        let published = rec
            .versions
            .iter()
            .any(|v| v.from_draft.is_some() && v.from_draft == meta.draft_id);
        if published {
            self.orphan(&dir);
            return;
        }
        if rec.by_uuid(&meta.version_uuid).is_none() {
            self.event(BlockEvent::OverlayDiscarded {
                owner: OverlayOwner::Draft(image.to_string()),
                reason: format!("its base version {} no longer exists", meta.version),
            });
            let _ = fs::remove_dir_all(&dir);
            return;
        }
        remove_stale_overlay_files(&dir, Some(meta.generation), &self.opts.events);
    }

    fn gc_seats(&self) {
        let dir = self.dir.join("seats");
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let meta: Option<OverlayMeta> = read_json(&path.join("meta.json")).ok();
            match meta {
                None => self.orphan(&path),
                Some(m) => remove_stale_overlay_files(&path, Some(m.generation), &self.opts.events),
            }
        }
    }

    fn write_image(&self, image: &str, rec: &ImageRec) -> Result<(), StoreError> {
        write_json(&self.versions_path(image), rec)
    }

    fn info(&self, image: &str, v: &VersionRec) -> VersionInfo {
        let delta_bytes = v.layers.last().map_or(0, |id| {
            fsio::allocated_bytes(&self.layer_paths(image, id).data)
        });
        VersionInfo {
            number: v.number,
            uuid: v.uuid.clone(),
            note: v.note.clone(),
            author: v.author.clone(),
            created: v.created,
            size: v.size,
            layers: v.layers.clone(),
            delta_bytes,
        }
    }

    // ---- images and versions -------------------------------------------

    /// Moves `staged` (a raw image inside [`Store::staging_dir`]) into the
    /// store as the base layer of a new version, which becomes current.
    pub fn import_image(
        &self,
        name: &str,
        staged: &Path,
        note: &str,
        author: &str,
    ) -> Result<VersionInfo, StoreError> {
        validate_name(IMAGE, name)?;
        let staging =
            fs::canonicalize(self.staging_dir()).map_err(StoreError::io(self.staging_dir()))?;
        let canon = fs::canonicalize(staged).map_err(StoreError::io(staged))?;
        if canon.parent() != Some(staging.as_path()) {
            return Err(StoreError::InvalidImage {
                path: staged.to_path_buf(),
                reason: format!("must be a file directly inside {}", staging.display()),
            });
        }
        let meta = fs::metadata(&canon).map_err(StoreError::io(&canon))?;
        let size = meta.len();
        if !meta.is_file() || size == 0 || size % SECTOR != 0 {
            return Err(StoreError::InvalidImage {
                path: staged.to_path_buf(),
                reason: format!(
                    "must be a regular file whose size is a non-zero multiple of {SECTOR} bytes (is {size})"
                ),
            });
        }
        let _admin = self.admin.lock();
        // The data is linked and made durable without the store lock: a
        // 4 GiB sync_all must not hold up logins (seat_overlay).
        let layers_dir = self.image_dir(name).join("layers");
        fs::create_dir_all(&layers_dir).map_err(StoreError::io(&layers_dir))?;
        fsio::fsync_dir(&self.images_dir())?;
        let id = fsio::random_hex();
        let lp = self.layer_paths(name, &id);
        // Link, not rename: until versions.json names the layer, a crash
        // leaves the staged file where the operator put it.
        fs::hard_link(&canon, &lp.data).map_err(StoreError::io(&lp.data))?;
        #[cfg(test)]
        hold_point("import:sync");
        fsio::open_ro(&lp.data)?
            .sync_all()
            .map_err(StoreError::io(&lp.data))?;
        mapfile::create(&lp.map, size, true)?;
        fsio::set_mode(&lp.data, 0o400)?;
        fsio::set_mode(&lp.map, 0o400)?;
        fsio::fsync_dir(&layers_dir)?;
        let mut inner = self.inner.lock();
        let mut rec = inner.images.get(name).cloned().unwrap_or(ImageRec {
            current: 0,
            last_number: 0,
            versions: Vec::new(),
        });
        let number = rec.last_number + 1;
        let v = VersionRec {
            number,
            uuid: fsio::new_uuid(),
            note: note.to_string(),
            author: author.to_string(),
            created: fsio::now_unix(),
            size,
            layers: vec![id],
            from_draft: None,
        };
        rec.versions.push(v.clone());
        rec.last_number = number;
        rec.current = number;
        if let Err(e) = self.write_image(name, &rec) {
            let _ = fs::remove_file(&lp.data);
            let _ = fs::remove_file(&lp.map);
            return Err(e);
        }
        inner.images.insert(name.to_string(), rec);
        drop(inner);
        fs::remove_file(&canon).map_err(StoreError::io(&canon))?;
        fsio::fsync_dir(&staging)?;
        Ok(self.info(name, &v))
    }

    /// Creates image `name` whose only version, number 0, is an empty disk of
    /// `size` bytes (no layer: every block reads as zero and takes no space).
    /// A draft over it is where an installation or a capture writes; its
    /// publish becomes version 1.
    pub fn create_empty_image(
        &self,
        name: &str,
        size: u64,
        note: &str,
        author: &str,
    ) -> Result<VersionInfo, StoreError> {
        validate_name(IMAGE, name)?;
        // Whole sectors, like an import: a captured disk keeps its exact size
        // (a GPT's backup header sits in its last sector).
        if size == 0 || !size.is_multiple_of(SECTOR) {
            return Err(StoreError::InvalidImage {
                path: self.image_dir(name),
                reason: format!(
                    "the size must be a non-zero multiple of {SECTOR} bytes (is {size})"
                ),
            });
        }
        let _admin = self.admin.lock();
        let mut inner = self.inner.lock();
        let dir = self.image_dir(name);
        if inner.images.contains_key(name) || dir.exists() {
            return Err(StoreError::Exists {
                kind: IMAGE,
                name: name.to_string(),
            });
        }
        let layers_dir = dir.join("layers");
        fs::create_dir_all(&layers_dir).map_err(StoreError::io(&layers_dir))?;
        fsio::fsync_dir(&self.images_dir())?;
        let v = VersionRec {
            number: 0,
            uuid: fsio::new_uuid(),
            note: note.to_string(),
            author: author.to_string(),
            created: fsio::now_unix(),
            size,
            layers: Vec::new(),
            from_draft: None,
        };
        let rec = ImageRec {
            current: 0,
            last_number: 0,
            versions: vec![v.clone()],
        };
        if let Err(e) = self.write_image(name, &rec) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        inner.images.insert(name.to_string(), rec);
        Ok(self.info(name, &v))
    }

    pub fn list_images(&self) -> Vec<ImageInfo> {
        let inner = self.inner.lock();
        inner
            .images
            .iter()
            .map(|(name, rec)| ImageInfo {
                name: name.clone(),
                size: rec.version(rec.current).map_or(0, |v| v.size),
                current: rec.current,
                latest: rec.versions.iter().map(|v| v.number).max().unwrap_or(0),
                versions: rec.versions.len(),
                has_draft: self.draft_dir(name).join("meta.json").exists(),
            })
            .collect()
    }

    pub fn versions(&self, image: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        Ok(rec.versions.iter().map(|v| self.info(image, v)).collect())
    }

    pub fn current_version(&self, image: &str) -> Result<u32, StoreError> {
        let inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        Ok(rec.current)
    }

    /// Rollback (or roll forward): only the `current` pointer changes.
    pub fn set_current(&self, image: &str, n: u32) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        if rec.version(n).is_none() {
            return Err(version_not_found(image, n));
        }
        let mut rec = rec.clone();
        rec.current = n;
        self.write_image(image, &rec)?;
        inner.images.insert(image.to_string(), rec);
        Ok(())
    }

    /// Deletes a version that is neither current nor the base of the draft,
    /// then the layers no remaining version uses. Seats are the caller's job.
    pub fn delete_version(&self, image: &str, n: u32) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        let v = rec.version_of(image, n)?;
        if rec.current == n {
            return Err(StoreError::InUse {
                what: format!("{image} v{n}"),
                reason: "it is the current version".into(),
            });
        }
        if let Some(meta) = self.draft_meta(image)
            && meta.version_uuid == v.uuid
        {
            return Err(StoreError::InUse {
                what: format!("{image} v{n}"),
                reason: "the draft is based on it".into(),
            });
        }
        let mut rec = rec.clone();
        rec.versions.retain(|x| x.number != n);
        self.write_image(image, &rec)?;
        for id in &v.layers {
            if !rec.uses_layer(id) {
                let lp = self.layer_paths(image, id);
                for p in [lp.data, lp.map] {
                    if let Err(e) = fs::remove_file(&p) {
                        tracing::warn!(path = %p.display(), error = %e, "could not remove layer; removed at next open");
                    }
                }
            }
        }
        inner.versions.remove(&v.uuid);
        inner.images.insert(image.to_string(), rec);
        Ok(())
    }

    /// Deletes an image with all its versions and its draft.
    pub fn delete_image(&self, image: &str) -> Result<(), StoreError> {
        let _admin = self.admin.lock();
        let mut inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?
            .clone();
        if let Some(d) = inner.drafts.remove(image).and_then(|w| w.upgrade()) {
            d.mark_gone();
        }
        let trash = self
            .dir
            .join("trash")
            .join(format!("image-{image}-{}", fsio::random_hex()));
        let src = self.image_dir(image);
        fs::rename(&src, &trash).map_err(StoreError::io(&src))?;
        fsio::fsync_dir(&self.images_dir())?;
        for v in &rec.versions {
            inner.versions.remove(&v.uuid);
        }
        inner.images.remove(image);
        remove_in_background(vec![trash]);
        Ok(())
    }

    fn version_device(
        &self,
        inner: &mut Inner,
        image: &str,
        v: &VersionRec,
    ) -> Result<Arc<VersionDevice>, StoreError> {
        if let Some(dev) = inner.versions.get(&v.uuid).and_then(Weak::upgrade) {
            return Ok(dev);
        }
        let layers: Vec<LayerPaths> = v
            .layers
            .iter()
            .map(|id| self.layer_paths(image, id))
            .collect();
        let dev = Arc::new(VersionDevice::open(
            image, v.number, &v.uuid, v.size, &layers,
        )?);
        inner.versions.retain(|_, w| w.strong_count() > 0);
        inner.versions.insert(v.uuid.clone(), Arc::downgrade(&dev));
        Ok(dev)
    }

    /// The read-only device of a version; the same `Arc` while any is alive.
    pub fn open_version(&self, image: &str, n: u32) -> Result<Arc<VersionDevice>, StoreError> {
        let mut inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        let v = rec.version_of(image, n)?;
        self.version_device(&mut inner, image, &v)
    }

    /// The top layer of version `n` of `image`.
    pub fn top_layer(&self, image: &str, n: u32) -> Result<LayerView, StoreError> {
        let v = {
            let inner = self.inner.lock();
            let rec = inner
                .images
                .get(image)
                .ok_or_else(|| not_found(IMAGE, image))?;
            rec.version_of(image, n)?
        };
        let id = v
            .layers
            .last()
            .ok_or_else(|| {
                StoreError::corrupt(self.versions_path(image), "version without layers")
            })?
            .clone();
        let (file, runs) = crate::version::layer_runs(&self.layer_paths(image, &id), v.size)?;
        Ok(LayerView {
            id,
            file,
            size: v.size,
            runs,
            base: v.layers.len() == 1,
        })
    }

    /// The data file of layer `id` of `image`, read-only (to reuse bytes a
    /// local layer already holds).
    pub fn open_layer_data(&self, image: &str, id: &str) -> Result<fs::File, StoreError> {
        validate_name(IMAGE, image)?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found("layer", id));
        }
        fsio::open_ro(&self.layer_paths(image, id).data)
    }

    /// Adds version max+1 of `image` on top of version `base`: `fill` writes
    /// the new layer into a fresh overlay over `base`, which is then
    /// committed exactly as a draft is published (same commit point, same
    /// recovery), and becomes current. For layers that arrive from elsewhere
    /// (a province's distribution); the image's draft is left alone. If
    /// `fill` fails nothing is committed.
    pub fn publish_layer(
        &self,
        image: &str,
        base: u32,
        note: &str,
        author: &str,
        fill: &mut dyn FnMut(&Arc<Overlay>) -> Result<(), StoreError>,
    ) -> Result<VersionInfo, StoreError> {
        let _admin = self.admin.lock();
        let mut inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        let v = rec.version_of(image, base)?;
        let id = fsio::random_hex();
        let dir = self.image_dir(image).join(format!("{INCOMING}{id}"));
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let lower = self.version_device(&mut inner, image, &v)?;
        drop(inner);
        let (data, map) = overlay_files(&dir, 0);
        let owner = OverlayOwner::Draft(image.to_string());
        let r = Overlay::create(&data, &map, lower, self.ctx(owner, 0, &v)).and_then(|o| {
            let o = Arc::new(o);
            fill(&o)?;
            o.mark_gone();
            let meta = OverlayMeta {
                image: image.to_string(),
                version: v.number,
                version_uuid: v.uuid.clone(),
                generation: 0,
                size: v.size,
                draft_id: Some(format!("{INCOMING}{id}")),
            };
            self.publish_unlocked(image, note, author, Some(o), &v, &meta, &data, &map, &dir)
        });
        if r.is_err()
            && dir.exists()
            && let Err(e) = fs::remove_dir_all(&dir)
        {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove a failed layer; removed at next open");
        }
        r
    }

    // ---- drafts ----------------------------------------------------------

    fn draft_meta(&self, image: &str) -> Option<OverlayMeta> {
        read_json(&self.draft_dir(image).join("meta.json")).ok()
    }

    fn ctx(&self, owner: OverlayOwner, quota: u64, v: &VersionRec) -> OverlayCtx {
        OverlayCtx {
            owner,
            quota,
            version: v.number,
            version_uuid: v.uuid.clone(),
            space: Arc::clone(&self.space),
            events: Arc::clone(&self.opts.events),
        }
    }

    /// Opens the on-disk draft if there is a usable one. A draft whose files
    /// are inconsistent is discarded (with an event) and `None` returned.
    fn load_draft(
        &self,
        inner: &mut Inner,
        image: &str,
    ) -> Result<Option<Arc<Overlay>>, StoreError> {
        if inner.publishing.contains(image) {
            return Err(StoreError::InUse {
                what: format!("draft of image {image:?}"),
                reason: "it is being published".into(),
            });
        }
        if let Some(d) = inner.drafts.get(image).and_then(Weak::upgrade)
            && !d.is_gone()
        {
            return Ok(Some(d));
        }
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        let Some(meta) = self.draft_meta(image) else {
            return Ok(None);
        };
        let owner = OverlayOwner::Draft(image.to_string());
        let Some(v) = rec.by_uuid(&meta.version_uuid).cloned() else {
            self.discard_dir(
                &self.draft_dir(image),
                owner,
                "its base version no longer exists".into(),
            );
            return Ok(None);
        };
        let lower = self.version_device(inner, image, &v)?;
        let (data, map) = overlay_files(&self.draft_dir(image), meta.generation);
        match Overlay::open(&data, &map, lower, self.ctx(owner.clone(), 0, &v)) {
            Ok(o) => {
                let o = Arc::new(o);
                inner.drafts.insert(image.to_string(), Arc::downgrade(&o));
                Ok(Some(o))
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                self.discard_dir(&self.draft_dir(image), owner, e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn discard_dir(&self, dir: &Path, owner: OverlayOwner, reason: String) {
        if let Err(e) = fs::remove_dir_all(dir) {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove discarded overlay");
        }
        self.event(BlockEvent::OverlayDiscarded { owner, reason });
    }

    /// The image's draft, created over the current version if there is none.
    pub fn open_draft(&self, image: &str) -> Result<Arc<Overlay>, StoreError> {
        validate_name(IMAGE, image)?;
        let mut inner = self.inner.lock();
        if let Some(d) = self.load_draft(&mut inner, image)? {
            return Ok(d);
        }
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        let v = rec.version_of(image, rec.current)?;
        let dir = self.draft_dir(image);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(StoreError::io(&dir))?;
        }
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let lower = self.version_device(&mut inner, image, &v)?;
        let (data, map) = overlay_files(&dir, 0);
        let owner = OverlayOwner::Draft(image.to_string());
        let o = Arc::new(Overlay::create(&data, &map, lower, self.ctx(owner, 0, &v))?);
        let meta = OverlayMeta {
            image: image.to_string(),
            version: v.number,
            version_uuid: v.uuid.clone(),
            generation: 0,
            size: v.size,
            draft_id: Some(fsio::random_hex()),
        };
        write_json(&dir.join("meta.json"), &meta)?;
        inner.drafts.insert(image.to_string(), Arc::downgrade(&o));
        Ok(o)
    }

    /// The existing draft, if any.
    pub fn draft(&self, image: &str) -> Option<Arc<Overlay>> {
        let mut inner = self.inner.lock();
        match self.load_draft(&mut inner, image) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(image, error = %e, "could not open draft");
                None
            }
        }
    }

    /// Turns the draft into version max+1 (its base version's layers plus the
    /// draft as the new top layer) by hard-linking its files: no data is
    /// copied. The new version becomes current; the draft is gone.
    pub fn publish_draft(
        &self,
        image: &str,
        note: &str,
        author: &str,
    ) -> Result<VersionInfo, StoreError> {
        let _admin = self.admin.lock();
        let mut inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?
            .clone();
        let meta = self
            .draft_meta(image)
            .ok_or_else(|| not_found("draft of image", image))?;
        let base = rec
            .by_uuid(&meta.version_uuid)
            .ok_or_else(|| not_found("base version of draft", image))?
            .clone();
        let (data_path, map_path) = overlay_files(&self.draft_dir(image), meta.generation);
        let live = inner.drafts.remove(image).and_then(|w| w.upgrade());
        if let Some(draft) = &live {
            // Stop writers first: the files are about to become an immutable
            // layer.
            draft.mark_gone();
        }
        inner.publishing.insert(image.to_string());
        drop(inner);
        let dir = self.draft_dir(image);
        let r = self.publish_unlocked(
            image, note, author, live, &base, &meta, &data_path, &map_path, &dir,
        );
        self.inner.lock().publishing.remove(image);
        r
    }

    /// The slow half of [`Store::publish_draft`]: the draft's data is synced
    /// and linked without the store lock (logins keep opening seats), and
    /// the lock is taken again only to record the new version.
    #[allow(clippy::too_many_arguments)]
    fn publish_unlocked(
        &self,
        image: &str,
        note: &str,
        author: &str,
        live: Option<Arc<Overlay>>,
        base: &VersionRec,
        meta: &OverlayMeta,
        data_path: &Path,
        map_path: &Path,
        dir: &Path,
    ) -> Result<VersionInfo, StoreError> {
        #[cfg(test)]
        hold_point("publish:sync");
        if let Some(draft) = live {
            // Everything written so far becomes durable.
            draft.sync().map_err(|e| StoreError::Io {
                path: data_path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
        } else {
            // Nobody has it open: its files on disk are the draft, and
            // validating them keeps a damaged draft from becoming a layer.
            if mapfile::check(map_path, base.size)? {
                return Err(StoreError::corrupt(map_path, "draft map marked full"));
            }
        }
        let id = fsio::random_hex();
        let lp = self.layer_paths(image, &id);
        fs::hard_link(data_path, &lp.data).map_err(StoreError::io(&lp.data))?;
        fs::hard_link(map_path, &lp.map).map_err(StoreError::io(&lp.map))?;
        fsio::fsync_dir(&self.image_dir(image).join("layers"))?;
        #[cfg(test)]
        crate::store::crash_point("publish:linked")?;
        let mut inner = self.inner.lock();
        // Re-read: set_current may have run while the lock was free.
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?
            .clone();
        let number = rec.last_number + 1;
        let mut layers = base.layers.clone();
        layers.push(id);
        let v = VersionRec {
            number,
            uuid: fsio::new_uuid(),
            note: note.to_string(),
            author: author.to_string(),
            created: fsio::now_unix(),
            size: base.size,
            layers,
            from_draft: meta.draft_id.clone(),
        };
        let mut new_rec = rec.clone();
        new_rec.versions.push(v.clone());
        new_rec.last_number = number;
        new_rec.current = number;
        if let Err(e) = self.write_image(image, &new_rec) {
            let _ = fs::remove_file(&lp.data);
            let _ = fs::remove_file(&lp.map);
            return Err(e);
        }
        inner.images.insert(image.to_string(), new_rec);
        drop(inner);
        #[cfg(test)]
        crate::store::crash_point("publish:committed")?;
        fsio::set_mode(&lp.data, 0o400)?;
        fsio::set_mode(&lp.map, 0o400)?;
        fs::remove_dir_all(dir).map_err(StoreError::io(dir))?;
        fsio::fsync_dir(&self.image_dir(image))?;
        Ok(self.info(image, &v))
    }

    pub fn discard_draft(&self, image: &str) -> Result<(), StoreError> {
        let _admin = self.admin.lock();
        let mut inner = self.inner.lock();
        if !inner.images.contains_key(image) {
            return Err(not_found(IMAGE, image));
        }
        if let Some(d) = inner.drafts.remove(image).and_then(|w| w.upgrade()) {
            d.mark_gone();
        }
        let dir = self.draft_dir(image);
        if !dir.exists() {
            return Err(not_found("draft of image", image));
        }
        fs::remove_dir_all(&dir).map_err(StoreError::io(&dir))?;
        fsio::fsync_dir(&self.image_dir(image))
    }

    // ---- seats -----------------------------------------------------------

    fn seat_meta(&self, seat: &str) -> Option<OverlayMeta> {
        read_json(&self.seat_dir(seat).join("meta.json")).ok()
    }

    /// The seat's overlay over `image` version `version`, opened or created,
    /// in the durability mode [`StoreOptions::seat_durability`] gives it.
    /// The same `Arc` is returned while one is alive (NBD multi-conn needs all
    /// connections on one object). An overlay made against another version is
    /// never applied: it is discarded and a fresh one created.
    pub fn seat_overlay(
        &self,
        seat: &str,
        image: &str,
        version: u32,
        quota: u64,
    ) -> Result<Arc<Overlay>, StoreError> {
        let durability = (self.opts.seat_durability)(seat);
        self.seat_overlay_with(seat, image, version, quota, durability)
    }

    /// [`Store::seat_overlay`] in the given durability mode. Volatile is for
    /// overlays reset at the seat's next boot: a marker file in the seat's
    /// folder says the overlay on disk may lack acknowledged writes until a
    /// clean close removes it. An overlay found with the marker is refused
    /// (see [`Store::seat_needs_reboot`]) until the seat is reset.
    pub fn seat_overlay_with(
        &self,
        seat: &str,
        image: &str,
        version: u32,
        quota: u64,
        durability: Durability,
    ) -> Result<Arc<Overlay>, StoreError> {
        let o = self.seat_overlay_open(seat, image, version, quota)?;
        match durability {
            Durability::Durable => o.set_durable().map_err(|e| StoreError::Io {
                path: self.volatile_marker(seat),
                source: std::io::Error::other(e.to_string()),
            })?,
            Durability::Volatile if o.durability() == Durability::Volatile => {}
            Durability::Volatile => {
                let m = self.volatile_marker(seat);
                fs::write(&m, b"").map_err(StoreError::io(&m))?;
                fsio::fsync_dir(&self.seat_dir(seat))?;
                o.set_volatile(m);
            }
        }
        Ok(o)
    }

    fn volatile_marker(&self, seat: &str) -> PathBuf {
        self.seat_dir(seat).join("volatile")
    }

    /// The seat's overlay ran volatile when Khoi stopped without closing it:
    /// writes it acknowledged may be lost, so the running OS must not get
    /// it back. The seat needs a reboot (whose reset clears this).
    pub fn seat_needs_reboot(&self, seat: &str) -> bool {
        if validate_name(SEAT, seat).is_err() {
            return false;
        }
        let live = self
            .inner
            .lock()
            .seats
            .get(seat)
            .and_then(Weak::upgrade)
            .is_some_and(|o| !o.is_gone());
        !live && self.volatile_marker(seat).exists()
    }

    /// Every seat for which [`Store::seat_needs_reboot`] holds; at startup,
    /// these are the seats to fence.
    pub fn seats_needing_reboot(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.dir.join("seats")) else {
            return Vec::new();
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|s| self.seat_needs_reboot(s))
            .collect();
        out.sort();
        out
    }

    fn seat_overlay_open(
        &self,
        seat: &str,
        image: &str,
        version: u32,
        quota: u64,
    ) -> Result<Arc<Overlay>, StoreError> {
        validate_name(SEAT, seat)?;
        validate_name(IMAGE, image)?;
        let mut inner = self.inner.lock();
        let rec = inner
            .images
            .get(image)
            .ok_or_else(|| not_found(IMAGE, image))?;
        let v = rec.version_of(image, version)?;
        if let Some(live) = inner.seats.get(seat).and_then(Weak::upgrade)
            && !live.is_gone()
        {
            if live.version_uuid() == v.uuid {
                live.set_quota(quota);
                return Ok(live);
            }
            // A different version while connections are up: a rebase.
            self.reset_locked(&mut inner, seat)?;
        }
        let dir = self.seat_dir(seat);
        let owner = OverlayOwner::Seat(seat.to_string());
        let lower = self.version_device(&mut inner, image, &v)?;
        let mut next_gen = 0;
        if let Some(meta) = self.seat_meta(seat) {
            next_gen = meta.generation + 1;
            if meta.version_uuid == v.uuid && meta.image == image {
                if self.volatile_marker(seat).exists() {
                    return Err(StoreError::InUse {
                        what: format!("seat {seat:?}'s overlay"),
                        reason: "Khoi stopped while it ran in volatile mode, so writes it \
                                 acknowledged may be lost: the seat must reboot"
                            .into(),
                    });
                }
                let (data, map) = overlay_files(&dir, meta.generation);
                match Overlay::open(
                    &data,
                    &map,
                    Arc::clone(&lower) as _,
                    self.ctx(owner.clone(), quota, &v),
                ) {
                    Ok(o) => {
                        let o = Arc::new(o);
                        inner.seats.insert(seat.to_string(), Arc::downgrade(&o));
                        return Ok(o);
                    }
                    Err(e @ StoreError::Corrupt { .. }) => {
                        self.event(BlockEvent::OverlayDiscarded {
                            owner: owner.clone(),
                            reason: e.to_string(),
                        });
                    }
                    Err(e) => return Err(e),
                }
            } else {
                self.event(BlockEvent::OverlayDiscarded {
                    owner: owner.clone(),
                    reason: format!(
                        "made against {} v{} ({}), now opened for {image} v{} ({})",
                        meta.image, meta.version, meta.version_uuid, v.number, v.uuid
                    ),
                });
            }
        }
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        // A fresh overlay has lost nothing.
        let _ = fs::remove_file(self.volatile_marker(seat));
        let (data, map) = overlay_files(&dir, next_gen);
        let _ = fs::remove_file(&data);
        let _ = fs::remove_file(&map);
        let o = Arc::new(Overlay::create(
            &data,
            &map,
            lower as _,
            self.ctx(owner, quota, &v),
        )?);
        let meta = OverlayMeta {
            image: image.to_string(),
            version: v.number,
            version_uuid: v.uuid.clone(),
            generation: next_gen,
            size: v.size,
            draft_id: None,
        };
        write_json(&dir.join("meta.json"), &meta)?;
        let quiet: EventSink = Arc::new(|_| {});
        remove_stale_overlay_files(&dir, Some(next_gen), &quiet);
        inner.seats.insert(seat.to_string(), Arc::downgrade(&o));
        Ok(o)
    }

    fn reset_locked(&self, inner: &mut Inner, seat: &str) -> Result<(), StoreError> {
        if let Some(live) = inner.seats.remove(seat).and_then(|w| w.upgrade()) {
            live.mark_gone();
        }
        let dir = self.seat_dir(seat);
        let meta = self.seat_meta(seat).ok_or_else(|| not_found(SEAT, seat))?;
        let next = meta.generation + 1;
        let (data, map) = overlay_files(&dir, next);
        let _ = fs::remove_file(&data);
        let _ = fs::remove_file(&map);
        let f = fsio::create_sparse(&data, meta.size)?;
        f.sync_all().map_err(StoreError::io(&data))?;
        mapfile::create(&map, meta.size, false)?;
        fsio::fsync_dir(&dir)?;
        let new_meta = OverlayMeta {
            generation: next,
            ..meta.clone()
        };
        write_json(&dir.join("meta.json"), &new_meta)?;
        // The new generation is empty: whatever the old one lost is moot.
        let marker = self.volatile_marker(seat);
        if fs::remove_file(&marker).is_ok() {
            fsio::fsync_dir(&dir)?;
        }
        let (old_data, old_map) = overlay_files(&dir, meta.generation);
        remove_in_background(vec![old_data, old_map]);
        Ok(())
    }

    /// Discards the seat's writes in constant time: a fresh, empty generation
    /// of overlay files replaces the old one, which is deleted in the
    /// background. Live handles to the old overlay fail with `Gone`.
    pub fn reset_seat(&self, seat: &str) -> Result<(), StoreError> {
        validate_name(SEAT, seat)?;
        let mut inner = self.inner.lock();
        self.reset_locked(&mut inner, seat)
    }

    pub fn remove_seat(&self, seat: &str) -> Result<(), StoreError> {
        validate_name(SEAT, seat)?;
        let mut inner = self.inner.lock();
        if let Some(live) = inner.seats.remove(seat).and_then(|w| w.upgrade()) {
            live.mark_gone();
        }
        let dir = self.seat_dir(seat);
        if !dir.exists() {
            return Err(not_found(SEAT, seat));
        }
        let trash = self
            .dir
            .join("trash")
            .join(format!("seat-{seat}-{}", fsio::random_hex()));
        fs::rename(&dir, &trash).map_err(StoreError::io(&dir))?;
        fsio::fsync_dir(&self.dir.join("seats"))?;
        remove_in_background(vec![trash]);
        Ok(())
    }

    /// Usage of the seat's overlay; from the live object if one is open, else
    /// from its map file (quota is then reported as 0: it lives in the caller).
    pub fn seat_usage(&self, seat: &str) -> Option<OverlayUsage> {
        let inner = self.inner.lock();
        if let Some(live) = inner.seats.get(seat).and_then(Weak::upgrade)
            && !live.is_gone()
        {
            return Some(live.usage());
        }
        let meta = self.seat_meta(seat)?;
        let (_, map) = overlay_files(&self.seat_dir(seat), meta.generation);
        let allocated = match mapfile::read(&map, meta.size).ok()? {
            mapfile::MapBody::States(s) => s.count_present() * crate::device::BLOCK,
            mapfile::MapBody::Full => meta.size,
        };
        Some(OverlayUsage {
            allocated,
            quota: 0,
            version: meta.version,
            version_uuid: meta.version_uuid,
        })
    }
}

#[cfg(test)]
thread_local! {
    static CRASH_AT: std::cell::RefCell<Option<&'static str>> = const { std::cell::RefCell::new(None) };
}

/// Test-only fault injection: makes the named step of a multi-step operation
/// fail as if the process died there (the on-disk state is left as is).
#[cfg(test)]
pub(crate) fn set_crash_point(at: Option<&'static str>) {
    CRASH_AT.with(|c| *c.borrow_mut() = at);
}

#[cfg(test)]
type Hold = (
    &'static str,
    std::sync::mpsc::Sender<()>,
    std::sync::mpsc::Receiver<()>,
);

#[cfg(test)]
thread_local! {
    static HOLD_AT: std::cell::RefCell<Option<Hold>> = const { std::cell::RefCell::new(None) };
}

/// Make this thread stop at `name`: it sends on `reached`, then waits for
/// `release`. Tests use it to keep an admin operation in its slow part.
#[cfg(test)]
pub(crate) fn set_hold_point(
    name: &'static str,
    reached: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) {
    HOLD_AT.with(|h| *h.borrow_mut() = Some((name, reached, release)));
}

#[cfg(test)]
fn hold_point(name: &'static str) {
    HOLD_AT.with(|h| {
        if let Some((at, reached, release)) = &*h.borrow()
            && *at == name
        {
            let _ = reached.send(());
            let _ = release.recv();
        }
    });
}

#[cfg(test)]
fn crash_point(name: &'static str) -> Result<(), StoreError> {
    if CRASH_AT.with(|c| *c.borrow() == Some(name)) {
        return Err(StoreError::Io {
            path: PathBuf::from(name),
            source: std::io::Error::other("injected crash"),
        });
    }
    Ok(())
}
