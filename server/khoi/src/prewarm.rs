//! Learning each version's boot working set and reading it into the page
//! cache before the morning (see `khoi_block::workset` for why).
//!
//! - A seat's **boot window** opens when its boot starts (the boot-script
//!   fetch, or the first open of an empty overlay: a seat that was just reset
//!   or added) and lasts `learn` (a few minutes: iPXE's loader, the Windows
//!   kernel, drivers, services, the logon screen). Reads through the seat's
//!   device during the window are marked in its version's set.
//! - Sets are saved to `<data>/worksets/<version uuid>.ws` when they grew,
//!   and merged across boots: the set learns the union of what boots read.
//! - A version with no set yet (just published) starts from the newest older
//!   version of the same image that has one: a new version is the old disk
//!   plus a delta, so its boot reads the same offsets.
//! - **Prewarm** reads the sets of every image's current version into the
//!   page cache: at start, after a publish, and at the configured time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use khoi_block::workset::{Prewarmed, Recording, WorkingSet};
use khoi_block::{BlockDevice, Overlay, Store};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Boot working sets of this server's versions.
#[derive(Debug)]
pub struct Prewarm {
    store: Arc<Store>,
    dir: PathBuf,
    learn: Duration,
    /// Loaded sets, by version uuid.
    sets: Mutex<HashMap<String, Arc<WorkingSet>>>,
    /// Open boot windows: seat → when the window closes.
    windows: Mutex<HashMap<String, Instant>>,
}

/// What one image's prewarm did.
#[derive(Debug, Clone)]
pub struct ImagePrewarm {
    pub image: String,
    pub version: u32,
    /// Bytes the set covers (before resolving through the version's map).
    pub set_bytes: u64,
    pub done: Prewarmed,
}

impl Prewarm {
    pub fn new(store: Arc<Store>, data_dir: PathBuf, learn: Duration) -> std::io::Result<Self> {
        let dir = data_dir.join("worksets");
        std::fs::create_dir_all(&dir)?;
        Ok(Prewarm {
            store,
            dir,
            learn,
            sets: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// The seat's boot started now (its boot script was fetched).
    pub fn boot_started(&self, seat: &str) {
        self.windows
            .lock()
            .insert(seat.to_string(), Instant::now() + self.learn);
    }

    /// The seat's device, recording into its version's set while the seat's
    /// boot window is open. An empty overlay opens a window itself: the seat
    /// was just reset or added, so this open is its boot.
    pub fn wrap(&self, seat: &str, overlay: Arc<Overlay>) -> Arc<dyn BlockDevice> {
        let now = Instant::now();
        let until = {
            let mut w = self.windows.lock();
            w.retain(|_, until| *until > now);
            match w.get(seat) {
                Some(until) => Some(*until),
                None if overlay.usage().allocated == 0 => {
                    let until = now + self.learn;
                    w.insert(seat.to_string(), until);
                    Some(until)
                }
                None => None,
            }
        };
        let Some(until) = until else {
            return overlay;
        };
        let uuid = overlay.version_uuid().to_string();
        match self.set_for(&uuid, overlay.size()) {
            Some(set) => Arc::new(Recording::new(overlay, set, until)),
            None => overlay,
        }
    }

    fn path(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.ws"))
    }

    /// The loaded set of a version, loading or seeding it on first use.
    fn set_for(&self, uuid: &str, size: u64) -> Option<Arc<WorkingSet>> {
        if let Some(s) = self.sets.lock().get(uuid) {
            return Some(s.clone());
        }
        let set = match WorkingSet::load(&self.path(uuid), size) {
            Ok(s) => s,
            Err(e) => {
                warn!(version = uuid, error = %e, "boot working set unreadable; learning afresh");
                WorkingSet::new(size)
            }
        };
        if set.count() == 0 {
            self.seed(uuid, &set);
        }
        let set = Arc::new(set);
        Some(
            self.sets
                .lock()
                .entry(uuid.to_string())
                .or_insert(set)
                .clone(),
        )
    }

    /// Seeds a new version's set from the newest older version of its image
    /// that has one.
    fn seed(&self, uuid: &str, set: &WorkingSet) {
        for image in self.store.list_images() {
            let Ok(versions) = self.store.versions(&image.name) else {
                continue;
            };
            let Some(pos) = versions.iter().position(|v| v.uuid == uuid) else {
                continue;
            };
            for older in versions[..pos].iter().rev() {
                if older.size != versions[pos].size {
                    continue;
                }
                if let Ok(prev) = WorkingSet::load(&self.path(&older.uuid), older.size)
                    && prev.count() > 0
                {
                    set.merge(&prev);
                    return;
                }
            }
            return;
        }
    }

    /// Saves every set that grew. Blocking (fsync).
    pub fn save(&self) {
        let sets: Vec<(String, Arc<WorkingSet>)> = self
            .sets
            .lock()
            .iter()
            .filter(|(_, s)| s.is_dirty())
            .map(|(u, s)| (u.clone(), s.clone()))
            .collect();
        for (uuid, set) in sets {
            if let Err(e) = set.save(&self.path(&uuid)) {
                warn!(version = %uuid, error = %e, "cannot save boot working set");
            }
        }
    }

    /// Removes saved sets of versions that no longer exist.
    pub fn forget_deleted(&self) {
        let mut live = std::collections::HashSet::new();
        for image in self.store.list_images() {
            if let Ok(vs) = self.store.versions(&image.name) {
                live.extend(vs.into_iter().map(|v| v.uuid));
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let uuid = name.strip_suffix(".ws").unwrap_or(&name);
            if !live.contains(uuid) {
                let _ = std::fs::remove_file(e.path());
                self.sets.lock().remove(uuid);
            }
        }
    }

    /// Reads the boot working set of every image's current version into the
    /// page cache. Blocking: run it on a blocking thread.
    pub fn prewarm_current(&self) -> Vec<ImagePrewarm> {
        self.save();
        let mut out = Vec::new();
        for image in self.store.list_images() {
            let Ok(versions) = self.store.versions(&image.name) else {
                continue;
            };
            let Some(v) = versions.iter().find(|v| v.number == image.current) else {
                continue;
            };
            let Some(set) = self.set_for(&v.uuid, v.size) else {
                continue;
            };
            if set.count() == 0 {
                continue;
            }
            let started = Instant::now();
            let r = self
                .store
                .open_version(&image.name, v.number)
                .map_err(|e| e.to_string())
                .and_then(|dev| {
                    khoi_block::workset::prewarm(&*dev, &set).map_err(|e| e.to_string())
                });
            match r {
                Ok(done) => {
                    info!(image = %image.name, version = v.number, bytes = done.bytes,
                        already_cached = done.already, took = ?started.elapsed(), "prewarmed boot working set");
                    out.push(ImagePrewarm {
                        image: image.name.clone(),
                        version: v.number,
                        set_bytes: set.bytes(),
                        done,
                    });
                }
                Err(e) => {
                    warn!(image = %image.name, version = v.number, error = %e, "prewarm failed")
                }
            }
        }
        out
    }
}

/// Keeps the sets saved and the page cache warm until `shutdown`: prewarms
/// at start, when an image's current version changes (publish, rollback),
/// and at each `cron` time; saves grown sets every minute and at the end.
pub async fn run(p: Arc<Prewarm>, cron: Option<croner::Cron>, shutdown: CancellationToken) {
    let blocking = |p: &Arc<Prewarm>, f: fn(&Prewarm)| {
        let p = p.clone();
        tokio::task::spawn_blocking(move || f(&p))
    };
    let _ = blocking(&p, |p| {
        p.forget_deleted();
        let done = p.prewarm_current();
        let names: Vec<String> = done
            .iter()
            .map(|d| format!("{}@{}", d.image, d.version))
            .collect();
        let learned: u64 = done.iter().map(|d| d.set_bytes).sum();
        let bytes: u64 = done.iter().map(|d| d.done.bytes).sum();
        info!(versions = ?names, learned, bytes, "prewarm at start done");
    })
    .await;
    let mut currents = current_versions(&p.store);
    let mut next = cron.as_ref().and_then(next_time);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let _ = blocking(&p, Prewarm::save).await;
        let now_currents = current_versions(&p.store);
        let due = next.is_some_and(|t| chrono::Utc::now() >= t);
        if now_currents != currents || due {
            if due {
                info!("prewarm at the scheduled time");
                next = cron.as_ref().and_then(next_time);
            }
            currents = now_currents;
            let _ = blocking(&p, |p| {
                p.forget_deleted();
                p.prewarm_current();
            })
            .await;
        }
    }
    let _ = blocking(&p, Prewarm::save).await;
}

fn current_versions(store: &Store) -> Vec<(String, u32)> {
    store
        .list_images()
        .into_iter()
        .map(|i| (i.name, i.current))
        .collect()
}

fn next_time(cron: &croner::Cron) -> Option<chrono::DateTime<chrono::Utc>> {
    let now = chrono::Utc::now().with_timezone(&khoi_admin::schedule::vietnam());
    cron.find_next_occurrence(&now, false)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use khoi_block::StoreOptions;

    fn store_with_image(dir: &std::path::Path) -> Arc<Store> {
        let store = Arc::new(Store::open(&dir.join("data"), StoreOptions::default()).unwrap());
        let raw = store.staging_dir().join("base.raw");
        std::fs::write(&raw, vec![7u8; 4 << 20]).unwrap();
        store.import_image("win", &raw, "base", "test").unwrap();
        store
    }

    #[test]
    fn a_fresh_seat_boot_is_learned_saved_and_prewarmed() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = store_with_image(tmp.path());
        let p = Prewarm::new(
            store.clone(),
            tmp.path().join("data"),
            Duration::from_secs(300),
        )
        .unwrap();
        let overlay = store.seat_overlay("quay-01", "win", 1, 0).unwrap();
        // An empty overlay: this open is the seat's boot, so reads are learned.
        let dev = p.wrap("quay-01", overlay);
        let mut buf = vec![0u8; 8192];
        dev.read_at(&mut buf, 1 << 20).unwrap();
        dev.read_plan(2 << 20, 4096).unwrap();
        p.save();
        let v = &store.versions("win").unwrap()[0];
        let saved = WorkingSet::load(&p.path(&v.uuid), v.size).unwrap();
        assert_eq!(saved.count(), 3);
        let warmed = p.prewarm_current();
        assert_eq!(warmed.len(), 1);
        assert_eq!(warmed[0].set_bytes, 3 * 4096);
        assert_eq!(warmed[0].done.bytes, 3 * 4096);
    }

    #[test]
    fn a_seat_with_data_is_not_learned_outside_a_boot_window() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = store_with_image(tmp.path());
        let p = Prewarm::new(
            store.clone(),
            tmp.path().join("data"),
            Duration::from_secs(300),
        )
        .unwrap();
        let overlay = store.seat_overlay("quay-01", "win", 1, 0).unwrap();
        overlay
            .write_at(&[1u8; 4096], 0, khoi_block::WriteFlags::NONE)
            .unwrap();
        // A reconnect of a running seat (its overlay has data): not a boot.
        let dev = p.wrap("quay-01", overlay.clone());
        let mut buf = vec![0u8; 4096];
        dev.read_at(&mut buf, 1 << 20).unwrap();
        p.save();
        let v = &store.versions("win").unwrap()[0];
        assert_eq!(
            WorkingSet::load(&p.path(&v.uuid), v.size).unwrap().count(),
            0
        );
        // The boot-script fetch opens the window again.
        p.boot_started("quay-01");
        let dev = p.wrap("quay-01", overlay);
        dev.read_at(&mut buf, 1 << 20).unwrap();
        p.save();
        assert_eq!(
            WorkingSet::load(&p.path(&v.uuid), v.size).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_new_version_starts_from_its_parents_set_and_deleted_ones_are_forgotten() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = store_with_image(tmp.path());
        let p = Prewarm::new(
            store.clone(),
            tmp.path().join("data"),
            Duration::from_secs(300),
        )
        .unwrap();
        let v1 = store.versions("win").unwrap()[0].clone();
        let set = WorkingSet::new(v1.size);
        set.mark(0, 64 << 10);
        set.save(&p.path(&v1.uuid)).unwrap();
        // Publish version 2 through a draft.
        let draft = store.open_draft("win").unwrap();
        draft
            .write_at(&[9u8; 4096], 3 << 20, khoi_block::WriteFlags::NONE)
            .unwrap();
        drop(draft);
        store.publish_draft("win", "update", "test").unwrap();
        let warmed = p.prewarm_current();
        assert_eq!(warmed.len(), 1);
        assert_eq!(warmed[0].version, 2);
        assert_eq!(warmed[0].set_bytes, 64 << 10, "seeded from version 1");
        // Deleting version 1 removes its saved set.
        store.delete_version("win", 1).unwrap();
        p.forget_deleted();
        assert!(!p.path(&v1.uuid).exists());
    }
}
