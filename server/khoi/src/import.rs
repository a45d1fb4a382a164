//! `khoi image import`: stage a disk image file as raw in the server's
//! staging folder (the shared staging code, run here in the admin's process
//! with a terminal progress bar), then ask the server to adopt it.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use khoi_admin::staging::{self, Staged};

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

pub fn stage(src: &Path, staging_dir: &Path) -> anyhow::Result<Staged> {
    // indicatif draws nothing when stderr is not a terminal.
    let pb = bar();
    let staged = staging::stage_with(
        src,
        staging_dir,
        "import",
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
        let staged = stage(&src, dir.path()).expect("stage");
        assert_eq!(std::fs::read(&staged.path).expect("read"), data);
        let path = staged.path.clone();
        staged.finish(true);
        assert!(path.exists());

        let odd = dir.path().join("odd.img");
        std::fs::write(&odd, vec![1u8; 1000]).expect("write");
        let e = stage(&odd, dir.path()).expect_err("odd size");
        assert!(e.to_string().contains("multiple of 512"), "{e}");
        let e = stage(&dir.path().join("missing.img"), dir.path()).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
