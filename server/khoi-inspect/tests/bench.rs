//! How long a check takes and how it scales (a benchmark, not a test: run
//! with `cargo test -p khoi-inspect --test bench -- --ignored --nocapture`).
//! The check reads only metadata and the files it needs, so its time follows
//! the hive sizes and the number of user and browser profiles, not the
//! image size or the file count.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod fixture;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use fixture::{Image, Login, Val, chrome_login};
use khoi_block::device::Result;
use khoi_block::{BlockDevice, Caps, Extent, ExtentKind, ReadSegment, WriteFlags};
use khoi_inspect::{Policy, Profile, check};

/// A read-only raw image file, like a published version's flattened view.
#[derive(Debug)]
struct FileDev {
    file: File,
    size: u64,
}

impl BlockDevice for FileDev {
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> Caps {
        Caps {
            read_only: true,
            flush: false,
            fua: false,
            trim: false,
            zero: false,
            extents: false,
            multi_conn: true,
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self.file.read_exact_at(buf, offset)?)
    }
    fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        let mut b = vec![0; len as usize];
        self.read_at(&mut b, offset)?;
        Ok(vec![ReadSegment::Mem(b)])
    }
    fn write_at(&self, _: &[u8], _: u64, _: WriteFlags) -> Result<()> {
        Err(khoi_block::BlockError::ReadOnly)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn trim(&self, _: u64, _: u64, _: WriteFlags) -> Result<()> {
        Err(khoi_block::BlockError::ReadOnly)
    }
    fn write_zeroes(&self, _: u64, _: u64, _: WriteFlags) -> Result<()> {
        Err(khoi_block::BlockError::ReadOnly)
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset,
            len,
            kind: ExtentKind::Golden,
        }])
    }
}

fn time(img: &Image, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let path = img.build_file(dir.path());
    let built = t.elapsed();
    let file = File::open(&path).unwrap();
    let size = file.metadata().unwrap().len();
    let dev = FileDev { file, size };
    let policy = Policy {
        admin_allow: vec!["quantri".into()],
        disabled: Vec::new(),
    };
    // The first run reads cold from the page cache of a just-written file;
    // report the best of three.
    let mut best = u128::MAX;
    let mut report = None;
    for _ in 0..3 {
        let t = Instant::now();
        let r = check(&dev, Profile::Counter, &policy);
        best = best.min(t.elapsed().as_micros());
        report = Some(r);
    }
    let r = report.unwrap();
    eprintln!(
        "{label}: image {} MiB, built in {:.1?}; check {:.1} ms, {} findings; {:?}",
        size >> 20,
        built,
        best as f64 / 1000.0,
        r.findings.len(),
        r.stats
    );
}

#[test]
#[ignore = "benchmark"]
fn check_time_and_scaling() {
    time(&Image::clean(), "clean fixture");

    let mut big = Image::clean();
    big.ntfs_mib = 4096;
    // 10,000 files in 100 folders: the check must not walk them.
    for d in 0..100 {
        for f in 0..100 {
            big.files.insert(
                format!("Data\\d{d:03}\\f{f:03}.txt"),
                format!("{d} {f}").into_bytes(),
            );
        }
    }
    // 30 users with two Chrome profiles and an Edge profile each.
    for u in 0..30 {
        let user = format!("user{u:02}");
        for p in ["Default", "Profile 1"] {
            big.logins.insert(
                chrome_login(&user, p),
                vec![Login {
                    origin: "https://never.example/".into(),
                    blacklisted: true,
                }],
            );
        }
        big.logins.insert(
            format!(
                "Users\\{user}\\AppData\\Local\\Microsoft\\Edge\\User Data\\Default\\Login Data"
            ),
            vec![Login {
                origin: "https://never.example/".into(),
                blacklisted: true,
            }],
        );
    }
    // A SOFTWARE hive with 10,000 more keys (a real one has ~300,000), in
    // groups of 50: hivex rewrites a parent's subkey list on every insert.
    for a in 0..200 {
        for b in 0..50 {
            big.software.set(
                &format!("Classes\\G{a:03}\\{{{a:08X}-0000-0000-0000-{b:012X}}}"),
                "",
                Val::Sz(format!("component {a} {b}")),
            );
        }
    }
    time(&big, "big fixture");
}

/// The figure: a 64 GiB image with 100,000 files (sizes from
/// `KHOI_BENCH_NTFS_MIB` and `KHOI_BENCH_FILES`; `scripts/bench-check.sh`
/// sets them). The NTFS file is sparse: only what ntfs-3g wrote takes room.
#[test]
#[ignore = "benchmark"]
fn check_time_big_image() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mib = env("KHOI_BENCH_NTFS_MIB", 64 * 1024);
    let files = env("KHOI_BENCH_FILES", 100_000);
    let mut img = Image::clean();
    img.ntfs_mib = mib;
    // 1,000 files a folder, like a profile's cache folders.
    for i in 0..files {
        img.files.insert(
            format!("Data\\d{:03}\\f{:05}.txt", i / 1000, i % 1000),
            format!("{i}").into_bytes(),
        );
    }
    time(&img, &format!("{mib} MiB NTFS, {files} files"));
}
