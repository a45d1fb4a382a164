//! `khoi image import`: turn a disk image file into a raw file in the
//! server's staging folder, then ask the server to adopt it. The heavy copy
//! runs here, in the admin's terminal with a progress bar, not in the server.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

const SECTOR: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhdx,
    Vdi,
    Vpc,
}

impl Format {
    fn qemu_name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Vpc => "vpc",
        }
    }
}

/// Recognise container formats by their magic, so a raw disk never needs
/// qemu-img and a qcow2 is never imported as if it were a raw disk.
pub fn detect(head: &[u8]) -> Format {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        Format::Qcow2
    } else if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") {
        Format::Vmdk
    } else if at(0, b"vhdxfile") {
        Format::Vhdx
    } else if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        Format::Vdi
    } else if at(0, b"conectix") {
        Format::Vpc
    } else {
        Format::Raw
    }
}

/// A staged file that is removed unless the server adopted it.
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    pub keep: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub fn stage(src: &Path, staging: &Path) -> anyhow::Result<Staged> {
    let mut f = File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {}", src.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", src.display());
    }
    let mut head = vec![0u8; 4096];
    let n =
        read_full(&mut f, &mut head).with_context(|| format!("cannot read {}", src.display()))?;
    head.truncate(n);
    let format = detect(&head);
    let name = format!(
        "import-{}-{}.raw",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let staged = Staged {
        path: staging.join(name),
        keep: false,
    };
    match format {
        Format::Raw => {
            let size = meta.len();
            check_size(src, size)?;
            f.seek(SeekFrom::Start(0))?;
            copy_sparse(&mut f, size, &staged.path)?;
        }
        other => {
            convert(src, other, &staged.path)?;
            let size = std::fs::metadata(&staged.path)?.len();
            check_size(src, size)?;
        }
    }
    Ok(staged)
}

fn check_size(src: &Path, size: u64) -> anyhow::Result<()> {
    if size == 0 {
        bail!("{} is empty", src.display());
    }
    if !size.is_multiple_of(SECTOR) {
        bail!(
            "{} is {size} bytes, which is not a multiple of 512: it is not a whole disk image \
             (was the download or copy cut short?)",
            src.display()
        );
    }
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn bar(len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// Copy, leaving all-zero megabytes as holes: disk images are mostly empty,
/// and holes cost neither disk space nor page cache.
fn copy_sparse(src: &mut File, size: u64, dst: &Path) -> anyhow::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut out = File::create(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    let pb = bar(size);
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < size {
        let n = read_full(src, &mut buf)?;
        if n == 0 {
            bail!("source shrank while importing (read {done} of {size} bytes)");
        }
        if buf[..n].iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(i64::try_from(n)?))?;
        } else {
            out.write_all(&buf[..n])?;
        }
        done += n as u64;
        pb.set_position(done);
    }
    out.set_len(size)?;
    out.sync_all()
        .with_context(|| format!("cannot sync {}", dst.display()))?;
    pb.finish_and_clear();
    Ok(())
}

fn convert(src: &Path, format: Format, dst: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", format.qemu_name(), "-O", "raw"]);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        cmd.arg("-p");
    }
    cmd.arg(src).arg(dst);
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!(
            "{} is a {} image and converting it needs qemu-img, which could not be run ({e}); \
             install it with: apt-get install qemu-utils",
            src.display(),
            format.qemu_name()
        )
    })?;
    if !status.success() {
        bail!(
            "qemu-img could not convert {} from {} ({status})",
            src.display(),
            format.qemu_name()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_magic() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(detect(b"KDMV...."), Format::Vmdk);
        assert_eq!(detect(b"vhdxfile"), Format::Vhdx);
        let mut vdi = vec![0u8; 0x48];
        vdi[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(detect(&vdi), Format::Vdi);
        assert_eq!(detect(&[0u8; 512]), Format::Raw);
        assert_eq!(detect(b""), Format::Raw);
    }

    #[test]
    fn stages_raw_sparse_and_refuses_odd_sizes() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("disk.img");
        let mut data = vec![0u8; 3 << 20];
        data[(1 << 20) + 7] = 0x5a;
        std::fs::write(&src, &data).expect("write");
        let mut staged = stage(&src, dir.path()).expect("stage");
        assert_eq!(std::fs::read(&staged.path).expect("read"), data);
        staged.keep = true;
        let path = staged.path.clone();
        drop(staged);
        assert!(path.exists());

        let odd = dir.path().join("odd.img");
        std::fs::write(&odd, vec![1u8; 1000]).expect("write");
        let e = stage(&odd, dir.path()).expect_err("odd size");
        assert!(e.to_string().contains("multiple of 512"), "{e}");
        let e = stage(&dir.path().join("missing.img"), dir.path()).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
