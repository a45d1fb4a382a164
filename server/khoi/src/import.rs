//! `khoi image import`: stage a disk image file as raw in the server's
//! staging folder (the shared staging code, run here in the admin's process
//! with a terminal progress bar), then ask the server to adopt it.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use khoi_admin::staging::{self, Limits, Staged};
use khoi_web::api::Info;

fn bar() -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// Stage `src` in the server's staging folder under the server's limits
/// (its maximum disk size and free-space floor), as `/v1/info` gives them.
pub fn stage(src: &Path, info: &Info) -> anyhow::Result<Staged> {
    let defaults = Limits::default();
    let limits = Limits {
        max_virtual_size: info.max_virtual_size.unwrap_or(defaults.max_virtual_size),
        free_space_floor: info.free_space_floor.unwrap_or(defaults.free_space_floor),
        ..defaults
    };
    stage_in(src, Path::new(&info.staging_dir), &limits)
}

fn stage_in(src: &Path, staging_dir: &Path, limits: &Limits) -> anyhow::Result<Staged> {
    // indicatif draws nothing when stderr is not a terminal.
    let pb = bar();
    let staged = staging::stage_with(
        src,
        staging_dir,
        "import",
        limits,
        &mut |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        },
        std::io::stderr().is_terminal(),
    );
    pb.finish_and_clear();
    staged.map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_raw_sparse_and_refuses_odd_sizes() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("disk.img");
        let mut data = vec![0u8; 3 << 20];
        data[(1 << 20) + 7] = 0x5a;
        std::fs::write(&src, &data).expect("write");
        let staged = stage_in(&src, dir.path(), &Limits::default()).expect("stage");
        assert_eq!(std::fs::read(&staged.path).expect("read"), data);
        let path = staged.path.clone();
        staged.finish(true);
        assert!(path.exists());

        let odd = dir.path().join("odd.img");
        std::fs::write(&odd, vec![1u8; 1000]).expect("write");
        let e = stage_in(&odd, dir.path(), &Limits::default()).expect_err("odd size");
        assert!(e.to_string().contains("multiple of 512"), "{e}");
        let e = stage_in(
            &dir.path().join("missing.img"),
            dir.path(),
            &Limits::default(),
        )
        .expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    /// The CLI meets the same refusals as the web page and prints why (it
    /// may name the file: the terminal is the admin's own).
    #[test]
    fn refuses_a_qcow2_with_a_backing_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let img = dir.path().join("x.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "/etc/passwd",
                "-F",
                "raw",
            ])
            .arg(&img)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("qemu-img is not installed: skipping");
            return;
        }
        let staging = dir.path().join("staging");
        let e = stage_in(&img, &staging, &Limits::default()).expect_err("backing file");
        let msg = format!("{e:#}");
        assert!(msg.contains("backing file"), "{msg}");
        assert!(
            msg.contains("/etc/passwd"),
            "the admin sees which file: {msg}"
        );
        assert_eq!(std::fs::read_dir(&staging).expect("ls").count(), 0);
    }
}
