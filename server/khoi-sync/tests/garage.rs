//! Province distribution against a real Garage server (a separate process;
//! `scripts/setup.sh test` installs it): publish, pull, deltas, refusals,
//! an outage mid-pull, the bandwidth cap and retirement.
//!
//! Each test starts its own single-node Garage on free loopback ports in its
//! own temporary folder and kills it by PID when it ends.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use khoi_block::{BlockDevice, Store, StoreOptions, WriteFlags};
use khoi_sync::SyncEvent;
use khoi_sync::manifest::Manifest;
use khoi_sync::publisher::Publisher;
use khoi_sync::remote::{BucketConfig, Remote};
use khoi_sync::sign::{self, Kind};
use khoi_sync::site::Site;
use parking_lot::Mutex;

#[path = "../../../tests/common/garage.rs"]
mod garage_support;

use garage_support::{Garage, Key};

fn bucket(g: &Garage, key: &Key, dir: &Path) -> BucketConfig {
    BucketConfig {
        endpoint: g.endpoint(),
        region: "garage".into(),
        name: "khoi".into(),
        prefix: "province".into(),
        credentials_file: g.credentials(key, dir),
        allow_http: true,
    }
}

type Events = Arc<Mutex<Vec<SyncEvent>>>;

fn sink() -> (Events, khoi_sync::EventFn) {
    let ev: Events = Arc::new(Mutex::new(Vec::new()));
    let e2 = Arc::clone(&ev);
    (ev, Arc::new(move |e| e2.lock().push(e)))
}

const MIB: usize = 1 << 20;

/// A disk of `mib` MiB that compresses partly, as installed files do:
/// runs of text-like bytes, runs of noise, and empty space.
fn disk(mib: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; mib * MIB];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for (i, block) in v.chunks_mut(4096).enumerate() {
        match i % 8 {
            0..=2 => {
                for (j, b) in block.iter_mut().enumerate() {
                    *b = b"khoi province sync "[(j + i) % 19];
                }
            }
            3..=5 => {
                for b in block.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x.to_le_bytes()[0];
                }
            }
            _ => {}
        }
    }
    v
}

struct Node {
    dir: tempfile::TempDir,
    store: Arc<Store>,
}

fn node(name: &str) -> Node {
    let dir = tempfile::Builder::new()
        .prefix(&format!("khoi-sync-{name}-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let store = Arc::new(Store::open(&dir.path().join("data"), StoreOptions::default()).unwrap());
    Node { dir, store }
}

fn import(n: &Node, image: &str, content: &[u8]) {
    let p = n.store.staging_dir().join("in.raw");
    let f = fs::File::create(&p).unwrap();
    f.set_len(content.len() as u64).unwrap();
    for (i, c) in content.chunks(4096).enumerate() {
        if c.iter().any(|&b| b != 0) {
            f.write_all_at(c, i as u64 * 4096).unwrap();
        }
    }
    drop(f);
    n.store.import_image(image, &p, "base", "so-tttt").unwrap();
}

/// A new version: `writes` (offset, bytes) and `zeroes` (offset, len) in a draft.
fn publish(n: &Node, image: &str, writes: &[(u64, Vec<u8>)], zeroes: &[(u64, u64)]) {
    let d = n.store.open_draft(image).unwrap();
    for (off, b) in writes {
        d.write_at(b, *off, WriteFlags::NONE).unwrap();
    }
    for (off, len) in zeroes {
        d.write_zeroes(*off, *len, WriteFlags::NONE).unwrap();
    }
    drop(d);
    n.store.publish_draft(image, "update", "so-tttt").unwrap();
}

fn read_version(store: &Store, image: &str, n: u32) -> Vec<u8> {
    let dev = store.open_version(image, n).unwrap();
    let mut buf = vec![0u8; dev.size() as usize];
    dev.read_at(&mut buf, 0).unwrap();
    buf
}

struct Province {
    garage: Garage,
    pk: Key,
    key: SigningKey,
    publisher: Node,
    pub_: Publisher,
    site: Node,
    site_events: Events,
    sync: Site,
}

fn no_gate() -> khoi_sync::publisher::GateFn {
    Arc::new(|_, _| None)
}

fn province(bandwidth: Option<u64>, in_use: khoi_sync::site::InUseFn) -> Province {
    let garage = Garage::start(None);
    let publisher = node("pub");
    let site = node("site");
    let pk = garage.key("publisher", true);
    let sk = garage.key("site", false);
    let key = sign::generate().unwrap();
    let remote = Remote::connect(&bucket(&garage, &pk, publisher.dir.path()), None).unwrap();
    let (_, pev) = sink();
    let pub_ = Publisher::new(
        Arc::clone(&publisher.store),
        remote,
        key.clone(),
        publisher.dir.path().join("sync"),
        no_gate(),
        pev,
    )
    .unwrap();
    let (site_events, sev) = sink();
    let sync = site_for(
        &garage,
        &sk,
        &site,
        &[key.verifying_key()],
        bandwidth,
        in_use,
        sev,
    );
    Province {
        garage,
        pk,
        key,
        publisher,
        pub_,
        site,
        site_events,
        sync,
    }
}

fn site_for(
    garage: &Garage,
    key: &Key,
    site: &Node,
    trusted: &[ed25519_dalek::VerifyingKey],
    bandwidth: Option<u64>,
    in_use: khoi_sync::site::InUseFn,
    events: khoi_sync::EventFn,
) -> Site {
    let remote = Remote::connect(&bucket(garage, key, site.dir.path()), bandwidth).unwrap();
    Site::new(
        Arc::clone(&site.store),
        remote,
        trusted.to_vec(),
        site.dir.path().join("sync"),
        in_use,
        events,
    )
    .unwrap()
}

fn never_in_use() -> khoi_sync::site::InUseFn {
    Arc::new(|_, _| None)
}

fn always() -> bool {
    true
}

fn no_incoming(n: &Node, image: &str) {
    let left: Vec<String> = fs::read_dir(n.dir.path().join("data/images").join(image))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with("incoming."))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let staged: Vec<_> = fs::read_dir(n.store.staging_dir())
        .unwrap()
        .flatten()
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn publish_pull_and_a_second_version_moves_only_its_delta() {
    let p = province(None, never_in_use());
    let rt = rt();
    let base = disk(24, 1);
    import(&p.publisher, "win11", &base);
    let up = rt.block_on(p.pub_.upload_image("win11")).unwrap();
    assert_eq!(up.versions, 1);
    assert!(up.chunks_sent >= 4, "{up:?}");

    let r1 = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r1.versions, r1.refused), (1, 0), "{r1:?}");
    assert_eq!(read_version(&p.site.store, "win11", 1), base);
    no_incoming(&p.site, "win11");

    // Version 2: 1 MiB rewritten, 64 KiB trimmed, in a 24 MiB disk.
    let patch: Vec<u8> = disk(1, 2);
    publish(
        &p.publisher,
        "win11",
        &[(5 * MIB as u64, patch.clone())],
        &[(20 * MIB as u64, 65536)],
    );
    let up2 = rt.block_on(p.pub_.upload_image("win11")).unwrap();
    assert_eq!((up2.versions, up2.chunks_sent), (1, 1), "{up2:?}");

    let before = p
        .sync
        .remote()
        .counters
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed);
    let r2 = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    let moved = p
        .sync
        .remote()
        .counters
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    assert_eq!(r2.versions, 1, "{r2:?}");
    assert_eq!(r2.chunks_fetched, 1, "{r2:?}");
    let mut want = base.clone();
    want[5 * MIB..6 * MIB].copy_from_slice(&patch);
    want[20 * MIB..20 * MIB + 65536].fill(0);
    assert_eq!(read_version(&p.site.store, "win11", 2), want);
    assert_eq!(read_version(&p.publisher.store, "win11", 2), want);

    // Bytes on the wire: the delta's chunk plus its manifest, nothing of
    // version 1.
    let signed = p.sync.remote().layout.manifest(
        "win11",
        &p.publisher.store.versions("win11").unwrap()[1].uuid,
    );
    let m_bytes = rt
        .block_on(p.sync.remote().get(&signed, 1 << 20))
        .unwrap()
        .unwrap();
    let (body, _) = sign::verify(&[p.key.verifying_key()], Kind::Manifest, &m_bytes).unwrap();
    let m = Manifest::parse(body).unwrap();
    assert_eq!(m.raw_bytes(), MIB as u64);
    assert_eq!(m.zeros, vec![[20 * MIB as u64, 65536]]);
    assert_eq!(r2.bytes_fetched, m.stored_bytes());
    assert!(
        moved <= m.stored_bytes() + m_bytes.len() as u64,
        "moved {moved}, delta stored {} + manifest {}",
        m.stored_bytes(),
        m_bytes.len()
    );
    // Partly compressible: the stored delta is well under its raw size.
    assert!(
        m.stored_bytes() < MIB as u64 * 3 / 4,
        "{}",
        m.stored_bytes()
    );

    // Nothing new: a pass fetches no chunk.
    let r3 = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r3.versions, r3.chunks_fetched), (0, 0));
    let kinds: Vec<&str> = p.site_events.lock().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec!["sync.pulled", "sync.pulled"]);
}

/// A site stopped between the store's commit and `site.json` (a `kill -9`
/// there) adopts the committed version on its next pass instead of
/// committing it twice, for a base and for a delta. A local publish that
/// only looks like the province's version is never taken for it.
#[test]
fn a_stop_between_commit_and_site_state_adopts_the_version_once() {
    let p = province(None, never_in_use());
    let rt = rt();
    let base = disk(24, 1);
    import(&p.publisher, "win11", &base);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    let numbers = || -> Vec<u32> {
        p.site
            .store
            .versions("win11")
            .unwrap()
            .iter()
            .map(|v| v.number)
            .collect()
    };
    let stopped_pass = || {
        p.sync.inject_stop_after_commit(true);
        let r = rt.block_on(p.sync.pull_image("win11", &always));
        p.sync.inject_stop_after_commit(false);
        assert!(r.is_err(), "{r:?}");
    };

    stopped_pass();
    assert_eq!(numbers(), vec![1]);
    assert!(p.sync.state().unwrap().images.is_empty());
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r.versions, r.chunks_fetched), (1, 0), "{r:?}");
    assert_eq!(numbers(), vec![1]);
    assert_eq!(p.sync.state().unwrap().images["win11"].len(), 1);

    let patch = disk(1, 2);
    publish(&p.publisher, "win11", &[(5 * MIB as u64, patch)], &[]);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    stopped_pass();
    assert_eq!(numbers(), vec![1, 2]);
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r.versions, r.chunks_fetched), (1, 0), "{r:?}");
    assert_eq!(numbers(), vec![1, 2]);
    assert_eq!(
        read_version(&p.site.store, "win11", 2),
        read_version(&p.publisher.store, "win11", 2)
    );
    let held = p.sync.state().unwrap().images["win11"].clone();
    assert_eq!(
        held.values().map(|h| h.local).collect::<Vec<_>>().len(),
        2,
        "{held:?}"
    );
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!(r.versions, 0, "{r:?}");

    // Version 3 stops after its commit; then an admin here rolls back,
    // deletes that commit and publishes a draft with the same note, author
    // and size but other bytes. The next pass must not adopt it.
    publish(&p.publisher, "win11", &[(9 * MIB as u64, disk(1, 3))], &[]);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    stopped_pass();
    assert_eq!(numbers(), vec![1, 2, 3]);
    p.site.store.set_current("win11", 2).unwrap();
    p.site.store.delete_version("win11", 3).unwrap();
    publish(&p.site, "win11", &[(9 * MIB as u64, disk(1, 4))], &[]);
    let lookalike = *numbers().last().unwrap();
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!(r.versions, 1, "{r:?}");
    let pulled = *numbers().last().unwrap();
    assert!(pulled > lookalike, "{:?}", numbers());
    assert_eq!(
        read_version(&p.site.store, "win11", pulled),
        read_version(&p.publisher.store, "win11", 3)
    );
    let held = p.sync.state().unwrap().images["win11"].clone();
    assert!(
        held.values().all(|h| h.local != lookalike),
        "the local lookalike was adopted: {held:?}"
    );
}

#[test]
fn a_chunk_already_held_locally_is_not_fetched() {
    let p = province(None, never_in_use());
    let rt = rt();
    // No empty blocks: the base layer's chunks are exactly its 4 MiB halves.
    let mut base = vec![0u8; 8 * MIB];
    getrandom::fill(&mut base).unwrap();
    import(&p.publisher, "win11", &base);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    // Version 2 copies the first 4 MiB of the disk (one whole chunk of the
    // base layer) to the end: same bytes, so the same chunk.
    publish(
        &p.publisher,
        "win11",
        &[(4 * MIB as u64, base[..4 * MIB].to_vec())],
        &[],
    );
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!(
        (r.versions, r.chunks_fetched, r.chunks_local),
        (1, 0, 1),
        "{r:?}"
    );
    let mut want = base.clone();
    want.copy_within(..4 * MIB, 4 * MIB);
    assert_eq!(read_version(&p.site.store, "win11", 2), want);
}

/// Puts `bytes` in the bucket with the publisher's (read-write) key.
fn put(p: &Province, path: &object_store::path::Path, bytes: Vec<u8>) {
    let pk_remote = p.pub_remote();
    rt().block_on(pk_remote.put(path, bytes)).unwrap();
}

impl Province {
    /// The bucket with the publisher's read-write key, to play the attacker.
    fn pub_remote(&self) -> Remote {
        Remote::connect(
            &bucket(&self.garage, &self.pk, self.garage.dir.path()),
            None,
        )
        .unwrap()
    }

    fn refusals(&self) -> Vec<String> {
        self.site_events
            .lock()
            .iter()
            .filter(|e| e.kind == "sync.refused")
            .map(|e| e.detail.clone())
            .collect()
    }
}

#[test]
fn tampered_chunk_wrong_signature_and_foreign_key_are_refused_and_nothing_is_committed() {
    let p = province(None, never_in_use());
    let rt = rt();
    let base = disk(8, 4);
    import(&p.publisher, "win11", &base);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    publish(&p.publisher, "win11", &[(0, disk(1, 5))], &[]);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    let v2 = p.publisher.store.versions("win11").unwrap()[1].uuid.clone();
    let layout = p.sync.remote().layout.clone();
    let signed = rt
        .block_on(p.sync.remote().get(&layout.manifest("win11", &v2), 1 << 20))
        .unwrap()
        .unwrap();
    let (body, _) = sign::verify(&[p.key.verifying_key()], Kind::Manifest, &signed).unwrap();
    let m = Manifest::parse(body).unwrap();

    // 1. A tampered chunk: other bytes of the same length, validly
    //    compressed, under the chunk's name.
    let cid = m.chunks[0].chunk_id().unwrap();
    let chunk_path = layout.chunk(&cid);
    let original = rt
        .block_on(p.sync.remote().get(&chunk_path, 8 << 20))
        .unwrap()
        .unwrap();
    let mut raw = khoi_sync::chunk::open(cid, &original, m.chunks[0].raw_len).unwrap();
    raw[12345] ^= 0xff;
    let forged = khoi_sync::chunk::seal(&raw).unwrap().stored;
    put(&p, &chunk_path, forged);
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r.versions, r.refused), (0, 1), "{r:?}");
    assert_eq!(p.site.store.versions("win11").unwrap().len(), 1);
    no_incoming(&p.site, "win11");
    let refusals = p.refusals();
    assert_eq!(refusals.len(), 1);
    assert!(
        refusals[0].contains("does not match its hash"),
        "{refusals:?}"
    );
    assert!(refusals[0].contains("nothing committed"), "{refusals:?}");
    put(&p, &chunk_path, original);

    // 2. A wrong signature: the manifest's body altered after signing.
    let mut altered = signed.clone();
    let pos = altered
        .windows(b"update".len())
        .position(|w| w == b"update")
        .unwrap();
    altered[pos] = b'U';
    put(&p, &layout.manifest("win11", &v2), altered);
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r.versions, r.refused), (0, 1), "{r:?}");
    assert_eq!(p.site.store.versions("win11").unwrap().len(), 1);
    let refusals = p.refusals();
    assert_eq!(refusals.len(), 2);
    assert!(
        refusals[1].contains("signature does not match"),
        "{refusals:?}"
    );

    // 3. A manifest from another key (validly signed, just not the
    //    province's).
    let other = sign::generate().unwrap();
    put(
        &p,
        &layout.manifest("win11", &v2),
        sign::sign(&other, Kind::Manifest, body),
    );
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r.versions, r.refused), (0, 1), "{r:?}");
    let refusals = p.refusals();
    assert_eq!(refusals.len(), 3);
    assert!(refusals[2].contains("not a trusted key"), "{refusals:?}");
    assert_eq!(p.site.store.versions("win11").unwrap().len(), 1);
    no_incoming(&p.site, "win11");
    // The site still serves what it has.
    assert_eq!(read_version(&p.site.store, "win11", 1), base);

    // The genuine manifest back: the version comes through.
    put(&p, &layout.manifest("win11", &v2), signed);
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r.versions, r.refused), (1, 0), "{r:?}");
    assert_eq!(
        read_version(&p.site.store, "win11", 2),
        read_version(&p.publisher.store, "win11", 2)
    );
}

#[test]
fn garage_stopped_mid_pull_the_site_keeps_serving_and_resumes() {
    // 2 MB/s, so the pull of 16 MiB is still running when Garage dies.
    let mut p = province(Some(2_000_000), never_in_use());
    let rt = rt();
    let base = disk(4, 6);
    import(&p.publisher, "win11", &base);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    // Incompressible, so the four stored chunks are as large as the data.
    let mut fresh = vec![0u8; 16 * MIB];
    getrandom::fill(&mut fresh).unwrap();
    import(&p.publisher, "win10", &fresh);
    rt.block_on(p.pub_.upload_image("win10")).unwrap();

    let counters = Arc::clone(&p.sync.remote().counters);
    let start = counters.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
    let (sync, garage) = (&p.sync, &mut p.garage);
    let r = rt.block_on(async {
        let pass = sync.pull_image("win10", &always);
        tokio::pin!(pass);
        let halfway = async {
            while counters.bytes_in.load(std::sync::atomic::Ordering::Relaxed) - start
                < 9 * MIB as u64
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            r = &mut pass => panic!("the pull finished before the outage: {r:?}"),
            () = halfway => {}
        }
        garage.stop();
        pass.await
    });
    assert!(r.is_err(), "{r:?}");
    // Nothing committed; the site serves what it had.
    assert!(p.site.store.versions("win10").is_err());
    assert_eq!(read_version(&p.site.store, "win11", 1), base);
    no_incoming(&p.site, "win10");
    // A pass while the bucket is unreachable fails and changes nothing.
    assert!(rt.block_on(p.sync.pull_image("win10", &always)).is_err());

    p.garage.spawn();
    let r = rt.block_on(p.sync.pull_image("win10", &always)).unwrap();
    assert_eq!(r.versions, 1, "{r:?}");
    assert!(r.chunks_resumed >= 2, "{r:?}");
    assert_eq!(r.chunks_fetched + r.chunks_resumed, 4, "{r:?}");
    assert_eq!(read_version(&p.site.store, "win10", 1), fresh);
}

#[test]
fn the_bandwidth_cap_is_respected() {
    let rate = 1_000_000u64;
    let p = province(Some(rate), never_in_use());
    let rt = rt();
    let mut noise = vec![0u8; 4 * MIB];
    getrandom::fill(&mut noise).unwrap();
    import(&p.publisher, "win11", &noise);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    let t0 = Instant::now();
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    let took = t0.elapsed();
    assert_eq!(r.versions, 1);
    let bytes = p
        .sync
        .remote()
        .counters
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed);
    // At most one second's burst above the cap: a lower bound on the time,
    // never an upper one (a loaded machine is only slower).
    let floor = Duration::from_secs_f64((bytes.saturating_sub(rate)) as f64 / rate as f64);
    assert!(bytes >= 4 * MIB as u64, "{bytes}");
    assert!(took >= floor, "{bytes} bytes in {took:?}, cap {rate} B/s");
}

#[test]
fn a_retirement_removes_an_unused_version_and_refuses_a_used_one() {
    let used: Arc<Mutex<HashSet<u32>>> = Arc::new(Mutex::new(HashSet::new()));
    let u2 = Arc::clone(&used);
    let in_use: khoi_sync::site::InUseFn = Arc::new(move |_, n| {
        u2.lock()
            .contains(&n)
            .then(|| format!("seat quay-1 runs version {n}"))
    });
    let p = province(None, in_use);
    let rt = rt();
    import(&p.publisher, "win11", &disk(4, 7));
    publish(&p.publisher, "win11", &[(0, disk(1, 8))], &[]);
    publish(&p.publisher, "win11", &[(MIB as u64, disk(1, 9))], &[]);
    rt.block_on(p.pub_.upload_image("win11")).unwrap();
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!(r.versions, 3);
    used.lock().insert(1);
    rt.block_on(p.pub_.retire("win11", 1)).unwrap();
    rt.block_on(p.pub_.retire("win11", 2)).unwrap();
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!(r.retired, 1, "{r:?}");
    let left: Vec<u32> = p
        .site
        .store
        .versions("win11")
        .unwrap()
        .iter()
        .map(|v| v.number)
        .collect();
    assert_eq!(left, vec![1, 3]);
    let refusals = p.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("seat quay-1 runs version 1"),
        "{refusals:?}"
    );
    // Version 3 still reads right with 2 gone (its layers stay).
    assert_eq!(
        read_version(&p.site.store, "win11", 3),
        read_version(&p.publisher.store, "win11", 3)
    );
    // Once the seat moved on, the next pass removes it; 2 is never pulled again.
    used.lock().clear();
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r.retired, r.versions), (1, 0), "{r:?}");
    let left: Vec<u32> = p
        .site
        .store
        .versions("win11")
        .unwrap()
        .iter()
        .map(|v| v.number)
        .collect();
    assert_eq!(left, vec![3]);
    // A forged retirement (another key) is refused.
    let v3 = p.publisher.store.versions("win11").unwrap()[2].uuid.clone();
    let other = sign::generate().unwrap();
    let body = format!(r#"{{"format":1,"image":"win11","version":"{v3}","created":1}}"#);
    put(
        &p,
        &p.sync.remote().layout.retirement("win11", &v3),
        sign::sign(&other, Kind::Retire, body.as_bytes()),
    );
    let r = rt.block_on(p.sync.pull_image("win11", &always)).unwrap();
    assert_eq!((r.retired, r.refused), (0, 1), "{r:?}");
    assert_eq!(p.site.store.versions("win11").unwrap().len(), 1);
}

#[test]
fn site_status_objects_tell_the_publisher_who_is_in_sync() {
    use khoi_sync::status::SiteState;
    let garage = Garage::start(None);
    let rt = rt();
    let publisher = node("pub");
    let pk = garage.key("publisher", true);
    let key = sign::generate().unwrap();
    let (_, pev) = sink();
    let pub_ = Publisher::new(
        Arc::clone(&publisher.store),
        Remote::connect(&bucket(&garage, &pk, publisher.dir.path()), None).unwrap(),
        key.clone(),
        publisher.dir.path().join("sync"),
        no_gate(),
        pev,
    )
    .unwrap();
    // Two sites; each signs its status with its own key. (Their bucket key
    // may write: integrity rests on signatures, not on bucket rights.)
    let mk_site = |name: &str| {
        let n = node(name);
        let k = garage.key(name, true);
        let (_, ev) = sink();
        let s = site_for(
            &garage,
            &k,
            &n,
            &[key.verifying_key()],
            None,
            never_in_use(),
            ev,
        );
        (n, s, sign::generate().unwrap())
    };
    let (n1, s1, k1) = mk_site("phuong-1");
    let (_n2, s2, k2) = mk_site("xa-2");
    import(&publisher, "win11", &disk(4, 10));
    rt.block_on(pub_.upload_image("win11")).unwrap();
    let sites = vec![
        ("phuong-1".to_string(), k1.verifying_key()),
        ("xa-2".to_string(), k2.verifying_key()),
        (
            "xa-3".to_string(),
            sign::generate().unwrap().verifying_key(),
        ),
    ];
    rt.block_on(s1.pull_image("win11", &always)).unwrap();
    rt.block_on(s1.write_status(&k1, "phuong-1", 40, Vec::new()))
        .unwrap();
    // xa-2 has not pulled yet, and its WAN failed once.
    rt.block_on(s2.write_status(&k2, "xa-2", 12, Vec::new()))
        .unwrap();
    let rows = rt.block_on(pub_.province(&sites)).unwrap();
    let states: Vec<SiteState> = rows.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        vec![SiteState::InSync, SiteState::Failing, SiteState::Unknown],
        "{rows:?}"
    );
    let st1 = rows[0].status.as_ref().unwrap();
    assert_eq!(st1.seats, 40);
    let v1 = publisher.store.versions("win11").unwrap()[0].uuid.clone();
    assert_eq!(st1.current.get("win11"), Some(&v1));
    assert_eq!(n1.store.current_version("win11").unwrap(), 1);

    // xa-2 catches up (it had never synced, hence failing); then a second
    // version leaves it behind.
    rt.block_on(s2.pull_image("win11", &always)).unwrap();
    rt.block_on(s2.write_status(&k2, "xa-2", 12, Vec::new()))
        .unwrap();
    publish(&publisher, "win11", &[(0, disk(1, 11))], &[]);
    rt.block_on(pub_.upload_image("win11")).unwrap();
    rt.block_on(s1.pull_image("win11", &always)).unwrap();
    rt.block_on(s1.write_status(&k1, "phuong-1", 40, vec!["a test error".into()]))
        .unwrap();
    let rows = rt.block_on(pub_.province(&sites)).unwrap();
    let states: Vec<SiteState> = rows.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        vec![SiteState::Failing, SiteState::Behind(1), SiteState::Unknown],
        "{rows:?}"
    );
    // One site signing as another is not believed.
    rt.block_on(s2.write_status(&k2, "phuong-1", 1, Vec::new()))
        .unwrap();
    let rows = rt.block_on(pub_.province(&sites)).unwrap();
    assert_eq!(rows[0].state, SiteState::Unknown);
    assert!(
        rows[0]
            .problem
            .as_deref()
            .unwrap()
            .contains("not a trusted key"),
        "{rows:?}"
    );
}
