//! `khoi backup DIR` / `khoi restore DIR`: the small, changing part of the
//! data folder, copied consistently while the server runs: the state
//! database (seats, users, schedule, audit log) through SQLite's own
//! `VACUUM INTO`, and each image's `versions.json` (which versions exist and
//! which is current). Layer files are immutable once written (mode 0400), so
//! a plain copy of `images/` at any time is already consistent; overlays are
//! thrown away at the next reset anyway. See docs/operations.md.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

const DB: &str = "khoi.db";
const MANIFEST: &str = "backup.json";

/// What a backup holds, written into it as `backup.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub khoi_version: String,
    /// Unix seconds.
    pub created: i64,
    pub data_dir: String,
    pub images: Vec<String>,
}

/// Only the fields a restore checks; the store owns the format.
#[derive(Debug, Deserialize)]
struct Versions {
    versions: Vec<VersionLayers>,
}

#[derive(Debug, Deserialize)]
struct VersionLayers {
    number: u32,
    layers: Vec<String>,
}

fn image_names(images: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(images) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).with_context(|| format!("reading {}", images.display())),
    };
    for entry in entries {
        let entry = entry?;
        if entry.path().join("versions.json").is_file()
            && let Some(n) = entry.file_name().to_str()
        {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Copies the database and the version manifests of `data_dir` into the new
/// folder `dest` (refused if it exists: a backup never overwrites another).
pub fn backup(data_dir: &Path, dest: &Path) -> anyhow::Result<Manifest> {
    let db = data_dir.join(DB);
    if !db.is_file() {
        bail!(
            "no state database at {} (is --config/--data the server's?)",
            db.display()
        );
    }
    fs::create_dir(dest)
        .with_context(|| format!("cannot create {} (it must not exist yet)", dest.display()))?;
    // Seat CHAP secrets and password hashes are in the copy.
    fs::set_permissions(dest, fs::Permissions::from_mode(0o700))?;

    let sidecars = ["khoi.db-wal", "khoi.db-shm"].map(|s| data_dir.join(s));
    let existed = sidecars.each_ref().map(|p| p.exists());
    {
        // VACUUM INTO reads one snapshot of the database, so a copy taken
        // while the server writes events is still consistent.
        let conn = rusqlite::Connection::open_with_flags(
            &db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {}", db.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let to = dest.join(DB);
        conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])
            .with_context(|| format!("copying {} to {}", db.display(), to.display()))?;
    }
    // Run as root against a stopped server, SQLite may have created the
    // WAL side files; give them back to the server's user.
    let owner = fs::metadata(&db)?;
    for (p, existed) in sidecars.iter().zip(existed) {
        if !existed && p.exists() {
            let _ = std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid()));
        }
    }

    let images = image_names(&data_dir.join("images"))?;
    for name in &images {
        let from = data_dir.join("images").join(name).join("versions.json");
        let to_dir = dest.join("images").join(name);
        fs::create_dir_all(&to_dir)?;
        // versions.json is replaced by rename, so one read sees one version.
        let text = fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        fs::write(to_dir.join("versions.json"), text)?;
    }
    let manifest = Manifest {
        khoi_version: env!("CARGO_PKG_VERSION").into(),
        created: chrono::Utc::now().timestamp(),
        data_dir: data_dir.display().to_string(),
        images,
    };
    fs::write(dest.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
    sync_dir(dest)?;
    Ok(manifest)
}

/// Holds the data folder's lock, the one a running server holds.
struct DataLock {
    _file: fs::File,
}

fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataLock> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "a Khoi server is running on {}: stop it first (sudo systemctl stop khoi), then restore",
                data_dir.display()
            );
        }
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    Ok(DataLock { _file: file })
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Restored {
    pub from: Manifest,
    /// The database that was replaced, kept beside the new one.
    pub previous_db: Option<PathBuf>,
}

/// Puts a backup made by [`backup`] back into `data_dir`. Refused while a
/// server holds the folder, and when a manifest names layer files the folder
/// does not have (copy `images/` back first), before anything is changed.
pub fn restore(src: &Path, data_dir: &Path) -> anyhow::Result<Restored> {
    let manifest: Manifest = serde_json::from_slice(
        &fs::read(src.join(MANIFEST))
            .with_context(|| format!("{} is not a Khoi backup", src.display()))?,
    )
    .with_context(|| format!("{} is not a Khoi backup", src.join(MANIFEST).display()))?;
    let backup_db = src.join(DB);
    {
        let conn = rusqlite::Connection::open_with_flags(
            &backup_db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .with_context(|| format!("opening {}", backup_db.display()))?;
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            bail!("{} is damaged: {ok}", backup_db.display());
        }
    }
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let _lock = lock_data_dir(data_dir)?;

    let mut missing = Vec::new();
    for name in &manifest.images {
        let text = fs::read(src.join("images").join(name).join("versions.json"))?;
        let v: Versions = serde_json::from_slice(&text)
            .with_context(|| format!("versions.json of {name} in the backup"))?;
        let layers = data_dir.join("images").join(name).join("layers");
        for ver in &v.versions {
            for id in &ver.layers {
                for ext in ["data", "map"] {
                    let p = layers.join(format!("{id}.{ext}"));
                    if !p.is_file() {
                        missing.push(format!("{name} version {}: {}", ver.number, p.display()));
                    }
                }
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "the backup names image files {} does not have; copy the images folder back first (see docs/operations.md), then restore:\n  {}",
            data_dir.display(),
            missing.join("\n  ")
        );
    }

    let owner = fs::metadata(data_dir)?;
    let give = |p: &Path| std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid()));

    let db = data_dir.join(DB);
    let previous_db = if db.exists() {
        let keep = data_dir.join(format!(
            "khoi.db.before-restore-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        ));
        fs::rename(&db, &keep)?;
        // The old WAL belongs to the old database: keep it with it, or
        // SQLite would replay it into the restored one.
        for side in ["-wal", "-shm"] {
            let p = data_dir.join(format!("{DB}{side}"));
            if p.exists() {
                fs::rename(&p, PathBuf::from(format!("{}{side}", keep.display())))?;
            }
        }
        Some(keep)
    } else {
        None
    };
    let tmp = data_dir.join("khoi.db.restoring");
    fs::copy(&backup_db, &tmp)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    give(&tmp)?;
    fs::rename(&tmp, &db)?;

    for name in &manifest.images {
        let dir = data_dir.join("images").join(name);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(".versions.json.restoring");
        fs::copy(src.join("images").join(name).join("versions.json"), &tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
        give(&tmp)?;
        fs::rename(&tmp, dir.join("versions.json"))?;
        sync_dir(&dir)?;
    }
    sync_dir(data_dir)?;
    Ok(Restored {
        from: manifest,
        previous_db,
    })
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use khoi_state::{NewSeat, ResetPolicy, State};

    fn seat(state: &State, name: &str, mac: &str) {
        state
            .add_seat(&NewSeat {
                name: name.into(),
                mac: mac.parse().expect("mac"),
                image: "win10".into(),
                pinned_version: Some(2),
                policy: ResetPolicy::OnBoot,
                quota: 0,
                initiator_iqn: None,
                mutual_chap: false,
            })
            .expect("seat");
    }

    /// An image folder as the store lays it out: two versions, one layer each.
    fn image(data: &Path) -> String {
        let dir = data.join("images/win10");
        fs::create_dir_all(dir.join("layers")).expect("layers");
        for id in ["l1", "l2"] {
            for ext in ["data", "map"] {
                fs::write(dir.join(format!("layers/{id}.{ext}")), id).expect("layer");
            }
        }
        let v = r#"{"current":2,"last_number":2,"versions":[
            {"number":1,"uuid":"u1","note":"base","author":"a","created":1,"size":512,"layers":["l1"]},
            {"number":2,"uuid":"u2","note":"printer","author":"a","created":2,"size":512,"layers":["l1","l2"]}]}"#;
        fs::write(dir.join("versions.json"), v).expect("versions");
        v.to_string()
    }

    #[test]
    fn backup_wipe_restore_brings_seats_and_versions_back() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        fs::create_dir(&data).expect("data");
        let versions = image(&data);
        // The server keeps the database open (WAL) while the backup runs.
        let live = State::open(&data.join(DB)).expect("state");
        seat(&live, "quay-01", "52:54:00:00:00:01");
        seat(&live, "quay-02", "52:54:00:00:00:02");

        let dest = tmp.path().join("backup-1");
        let m = backup(&data, &dest).expect("backup");
        assert_eq!(m.images, vec!["win10".to_string()]);
        assert!(backup(&data, &dest).is_err(), "never overwrites a backup");
        // Changes after the backup are not in it.
        seat(&live, "quay-03", "52:54:00:00:00:03");
        drop(live);

        // Lose the database and the manifest (the layers survive).
        for f in ["khoi.db-wal", "khoi.db-shm"] {
            let _ = fs::remove_file(data.join(f));
        }
        fs::write(data.join(DB), b"garbage").expect("wipe db");
        fs::remove_file(data.join("images/win10/versions.json")).expect("wipe versions");

        let r = restore(&dest, &data).expect("restore");
        assert!(r.previous_db.as_ref().is_some_and(|p| p.exists()));
        let state = State::open(&data.join(DB)).expect("restored state");
        let names: Vec<String> = state
            .seats()
            .expect("seats")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["quay-01", "quay-02"]);
        assert_eq!(state.seat("quay-01").expect("seat").pinned_version, Some(2));
        assert_eq!(
            fs::read_to_string(data.join("images/win10/versions.json")).expect("versions"),
            versions
        );
    }

    #[test]
    fn restore_refuses_a_running_server_and_missing_layers() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        fs::create_dir(&data).expect("data");
        image(&data);
        let live = State::open(&data.join(DB)).expect("state");
        seat(&live, "quay-01", "52:54:00:00:00:01");
        let dest = tmp.path().join("b");
        backup(&data, &dest).expect("backup");

        // A server (here: the store's own lock) holds the folder.
        let store = khoi_block::Store::open(&data, khoi_block::StoreOptions::default());
        if let Ok(store) = store {
            let e = restore(&dest, &data).expect_err("server running");
            assert!(e.to_string().contains("stop it first"), "{e}");
            drop(store);
        } else {
            let _held = lock_data_dir(&data).expect("lock");
            let e = restore(&dest, &data).expect_err("server running");
            assert!(e.to_string().contains("stop it first"), "{e}");
        }

        fs::remove_file(data.join("images/win10/layers/l2.map")).expect("rm layer");
        let before = fs::read(data.join(DB)).expect("db");
        let e = restore(&dest, &data).expect_err("missing layer");
        assert!(e.to_string().contains("l2.map"), "{e}");
        assert_eq!(
            fs::read(data.join(DB)).expect("db"),
            before,
            "nothing changed"
        );
        drop(live);
    }
}
