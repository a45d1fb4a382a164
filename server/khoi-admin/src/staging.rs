//! Turning a disk image file into a raw file in the store's staging folder:
//! for imports started from the web page (a server-side path or a browser
//! upload) and for the CLI, which runs it in its own process so the admin's
//! terminal shows the progress.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

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
    pub fn qemu_name(self) -> &'static str {
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

/// A staged raw file, removed unless [`Staged::finish`] keeps it.
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    keep: bool,
}

impl Staged {
    /// Own `path`: it is removed when this is dropped.
    pub fn new(path: PathBuf) -> Staged {
        Staged { path, keep: false }
    }

    pub fn file_name(&self) -> Option<String> {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
    }

    /// The store moves an adopted file away; keep it only then.
    pub fn finish(mut self, adopted: bool) {
        self.keep = adopted;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A unique file name in the staging folder.
pub fn unique_name(prefix: &str, ext: &str) -> String {
    let mut raw = [0u8; 8];
    let _ = getrandom::fill(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}.{ext}")
}

/// Why a file could not be staged.
#[derive(Debug)]
pub enum StageError {
    /// The file is not something Khoi can import. `shown` is written for
    /// the officer (no server paths, no tool output); `detail` (qemu-img's
    /// stderr, the OS error) is for the log and the CLI's terminal.
    Unfit {
        shown: String,
        detail: Option<String>,
    },
    /// The server could not do its part (I/O on the staging folder).
    Failed(String),
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageError::Unfit {
                shown,
                detail: None,
            } => f.write_str(shown),
            StageError::Unfit {
                shown,
                detail: Some(d),
            } => write!(f, "{shown}: {d}"),
            StageError::Failed(d) => f.write_str(d),
        }
    }
}

impl std::error::Error for StageError {}

impl From<String> for StageError {
    fn from(detail: String) -> Self {
        StageError::Failed(detail)
    }
}

fn unfit(shown: String) -> StageError {
    StageError::Unfit {
        shown,
        detail: None,
    }
}

/// Copy (sparsely) or convert `src` into a new raw file in `staging`.
pub fn stage(src: &Path, staging: &Path) -> Result<Staged, StageError> {
    stage_with(src, staging, "web-import", &mut |_, _| {}, false)
}

/// [`stage`], reporting `(bytes done, total)` of a raw copy to `progress`;
/// with `terminal`, qemu-img's own progress goes to the caller's terminal.
pub fn stage_with(
    src: &Path,
    staging: &Path,
    prefix: &str,
    progress: &mut dyn FnMut(u64, u64),
    terminal: bool,
) -> Result<Staged, StageError> {
    let meta =
        std::fs::metadata(src).map_err(|e| unfit(format!("cannot read {}: {e}", src.display())))?;
    if !meta.is_file() {
        return Err(unfit(format!("{} is not a regular file", src.display())));
    }
    let format = sniff(src)?;
    std::fs::create_dir_all(staging).map_err(|e| format!("staging folder: {e}"))?;
    let staged = Staged {
        path: staging.join(unique_name(prefix, "raw")),
        keep: false,
    };
    match format {
        Format::Raw => {
            check_size(src, meta.len())?;
            copy_sparse(src, meta.len(), &staged.path, progress)?;
        }
        other => {
            convert(src, other, &staged.path, terminal)?;
            let size = std::fs::metadata(&staged.path)
                .map_err(|e| format!("converted file: {e}"))?
                .len();
            check_size(src, size)?;
        }
    }
    Ok(staged)
}

/// Prepare an upload that is already in the staging folder: a raw upload is
/// renamed in place (no second copy of a 40 GiB disk), others are converted.
pub fn stage_upload(part: &Path, staging: &Path) -> Result<Staged, StageError> {
    let upload = Staged {
        path: part.to_path_buf(),
        keep: false,
    };
    let format = sniff(part)?;
    let size = std::fs::metadata(part)
        .map_err(|e| format!("upload: {e}"))?
        .len();
    let staged = Staged {
        path: staging.join(unique_name("web-upload", "raw")),
        keep: false,
    };
    if format == Format::Raw {
        check_size(Path::new("the uploaded file"), size)?;
        std::fs::rename(part, &staged.path).map_err(|e| format!("upload: {e}"))?;
    } else {
        convert(part, format, &staged.path, false)?;
        let size = std::fs::metadata(&staged.path)
            .map_err(|e| format!("converted file: {e}"))?
            .len();
        check_size(Path::new("the uploaded file"), size)?;
    }
    drop(upload);
    Ok(staged)
}

fn sniff(src: &Path) -> Result<Format, String> {
    let mut f = File::open(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("cannot read {}: {e}", src.display())),
        }
    }
    head.truncate(n);
    Ok(detect(&head))
}

fn check_size(src: &Path, size: u64) -> Result<(), StageError> {
    if size == 0 {
        return Err(unfit(format!("{} is empty", src.display())));
    }
    if !size.is_multiple_of(SECTOR) {
        return Err(unfit(format!(
            "{} is {size} bytes, not a multiple of 512: it is not a whole disk image \
             (was the copy cut short?)",
            src.display()
        )));
    }
    Ok(())
}

/// Copy, leaving all-zero megabytes as holes: disk images are mostly empty.
fn copy_sparse(
    src: &Path,
    size: u64,
    dst: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), String> {
    const CHUNK: usize = 1 << 20;
    let err = |e: std::io::Error| format!("copying {}: {e}", src.display());
    let mut input = File::open(src).map_err(err)?;
    let mut out = File::create(dst).map_err(err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        done += n as u64;
        progress(done, size);
        if buf[..n].iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(i64::try_from(n).unwrap_or(0)))
                .map_err(err)?;
        } else {
            out.write_all(&buf[..n]).map_err(err)?;
        }
    }
    out.set_len(size).map_err(err)?;
    out.sync_all().map_err(err)
}

fn convert(src: &Path, format: Format, dst: &Path, terminal: bool) -> Result<(), StageError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", format.qemu_name(), "-O", "raw"]);
    if terminal {
        // qemu-img draws its own progress bar on the admin's terminal.
        cmd.arg("-p").stdout(std::process::Stdio::inherit());
    }
    let out = cmd
        .arg(src)
        .arg(dst)
        .output()
        .map_err(|e| StageError::Unfit {
            shown: format!(
                "the file is a {} image and converting it needs qemu-img, which could not be \
                 run; install it with: apt-get install qemu-utils",
                format.qemu_name()
            ),
            detail: Some(e.to_string()),
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(dst);
        return Err(StageError::Unfit {
            shown: format!(
                "qemu-img could not convert the file from {}",
                format.qemu_name()
            ),
            detail: Some(format!(
                "{}: {}",
                src.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    Ok(())
}

/// (free, total) bytes of the filesystem holding `dir`; zeros if unknown.
pub fn fs_space(dir: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return (0, 0);
    }
    #[allow(clippy::useless_conversion)]
    let frsize = u64::from(st.f_frsize);
    #[allow(clippy::useless_conversion)]
    (
        u64::from(st.f_bavail).saturating_mul(frsize),
        u64::from(st.f_blocks).saturating_mul(frsize),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_magic() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(detect(b"vhdxfile"), Format::Vhdx);
        assert_eq!(detect(&[0u8; 512]), Format::Raw);
    }

    #[test]
    fn stages_raw_and_refuses_odd_sizes() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("disk.img");
        let mut data = vec![0u8; 3 << 20];
        data[(1 << 20) + 7] = 0x5a;
        std::fs::write(&src, &data).expect("write");
        let staging = dir.path().join("staging");
        let staged = stage(&src, &staging).expect("stage");
        assert_eq!(std::fs::read(&staged.path).expect("read"), data);
        let path = staged.path.clone();
        drop(staged);
        assert!(!path.exists(), "unadopted staged files are removed");
        let odd = dir.path().join("odd.img");
        std::fs::write(&odd, vec![1u8; 1000]).expect("write");
        assert!(
            stage(&odd, &staging)
                .expect_err("odd")
                .to_string()
                .contains("multiple of 512")
        );
        let (free, total) = fs_space(dir.path());
        assert!(free > 0 && total >= free);
    }

    /// A qcow2 file qemu-img cannot convert (or cannot be run for): the
    /// sentence for the officer names neither the server's paths nor the
    /// tool's output; both stay in the detail for the log and the CLI.
    #[test]
    fn conversion_failures_keep_paths_and_tool_output_out_of_the_shown_text() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("broken.qcow2");
        let mut data = b"QFI\xfb\0\0\0\x03".to_vec();
        data.resize(4096, 0xee);
        std::fs::write(&src, &data).expect("write");
        let e = stage_upload(&src, &dir.path().join("staging")).expect_err("broken");
        let StageError::Unfit { shown, detail } = e else {
            panic!("expected Unfit, got {e}");
        };
        let here = dir.path().display().to_string();
        assert!(!shown.contains(&here), "{shown}");
        assert!(
            shown.contains("qcow2") || shown.contains("qemu-img"),
            "{shown}"
        );
        assert!(detail.is_some());
    }
}
