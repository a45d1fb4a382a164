//! Turning a disk image file into a raw file in the store's staging folder:
//! for imports started from the web page (a server-side path or a browser
//! upload) and for the CLI, which runs it in its own process so the admin's
//! terminal shows the progress.
//!
//! An image file is untrusted input. Container formats can name other files
//! (qcow2 backing and external data files, VMDK extents), and qemu-img would
//! follow those names with the server's rights, turning a 1 KiB upload into
//! a copy of `/etc/shadow` or `khoi.db`. So:
//! - the format is taken from the file's magic, never guessed by qemu-img;
//!   only raw, qcow2, VMDK (single file), VHDX and VDI are accepted;
//! - `qemu-img info` runs first and anything that refers to another file, or
//!   claims more than [`Limits::max_virtual_size`] or the free space above
//!   the floor, is refused before a byte is converted;
//! - qemu-img only ever opens the image through an inherited descriptor,
//!   with `backing: null`, inside [`sandbox`]: as `nobody` when Khoi runs as
//!   root, under a Landlock rule set that lets it read the one input, write
//!   the one output and load its own program and libraries, with resource
//!   limits. A file swapped between the check and the conversion still
//!   cannot make it open anything else.
//!
//! qemu-img runs without `--force-share`: an image another program is still
//! writing (a VM running on the share) is refused rather than copied torn.
//! Without root and without Landlock only the checks and `backing: null`
//! remain; an image rewritten between the check and the conversion is
//! caught by a second `qemu-img info` afterwards.
//!
//! Every file a writer creates here holds an `flock` until it is adopted or
//! removed, so [`sweep`] at server start removes exactly the leftovers of
//! killed imports and never a file the CLI is still writing.

pub(crate) mod sandbox;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECTOR: u64 = 512;
const GIB: u64 = 1 << 30;

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

/// How much an import may take (`admin.import` and
/// `storage.free_space_floor` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest disk (virtual size) accepted.
    pub max_virtual_size: u64,
    /// Largest browser upload accepted.
    pub max_upload: u64,
    /// Free bytes the data filesystem keeps for the seats; an import never
    /// eats into them.
    pub free_space_floor: u64,
    /// An upload that sends nothing for this long is dropped.
    pub upload_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_virtual_size: 2 << 40,
            max_upload: 256 * GIB,
            free_space_floor: 0,
            upload_idle: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// Bytes an import may still write into `dir`'s filesystem.
    pub fn room(&self, dir: &Path) -> u64 {
        fs_space(dir).0.saturating_sub(self.free_space_floor)
    }

    /// The largest upload that may start now.
    pub fn upload_cap(&self, dir: &Path) -> u64 {
        self.max_upload.min(self.room(dir))
    }

    /// Refuse a disk of `size` bytes that is over the maximum or would not
    /// fit above the floor (a raw staged file may be written in full).
    pub fn check_disk(&self, size: u64, dir: &Path) -> Result<(), StageError> {
        if size > self.max_virtual_size {
            return Err(unfit(format!(
                "the disk in the file is {}, more than the largest image accepted ({}, \
                 admin.import.max_virtual_size)",
                human(size),
                human(self.max_virtual_size)
            )));
        }
        let room = self.room(dir);
        if size > room {
            return Err(unfit(format!(
                "the disk in the file is {}, but the data disk has only {} free above the \
                 free-space floor",
                human(size),
                human(room)
            )));
        }
        Ok(())
    }
}

/// Sizes as the officer reads them (binary units, one decimal).
pub fn human(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} bytes");
    }
    let mut unit = 0;
    let mut scale = 1024u64;
    while unit + 1 < UNITS.len() && b / scale >= 1024 {
        scale *= 1024;
        unit += 1;
    }
    let tenths = u128::from(b) * 10 / u128::from(scale);
    if tenths % 10 == 0 {
        format!("{} {}", tenths / 10, UNITS[unit])
    } else {
        format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

/// A staged file, removed unless [`Staged::finish`] keeps it. A file this
/// process writes holds an `flock` for as long as this lives, which is how
/// [`sweep`] tells a killed import's leftover from a live one.
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    keep: bool,
    file: Option<File>,
}

impl Staged {
    /// Own `path` (made by someone else): it is removed when this is dropped.
    pub fn new(path: PathBuf) -> Staged {
        Staged {
            path,
            keep: false,
            file: None,
        }
    }

    /// A new, empty, locked file in `dir` with a unique Khoi name.
    pub fn create(dir: &Path, prefix: &str, ext: &str) -> std::io::Result<Staged> {
        std::fs::create_dir_all(dir)?;
        loop {
            let path = dir.join(unique_name(prefix, ext));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.lock()?;
            // A sweep that got the lock between create and lock has unlinked
            // the name: that file is gone, make another.
            if file.metadata()?.nlink() == 0 {
                continue;
            }
            return Ok(Staged {
                path,
                keep: false,
                file: Some(file),
            });
        }
    }

    /// The open, locked file (for files made with [`Staged::create`]).
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
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
            // Unlink while still holding the lock.
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

/// Whether `name` is one [`unique_name`] made (`<prefix>-<16 hex>.<ext>`):
/// the sweep leaves anything else (a file an admin put there) alone.
fn khoi_made(name: &str) -> bool {
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    let Some((prefix, hex)) = stem.rsplit_once('-') else {
        return false;
    };
    matches!(ext, "raw" | "part" | "src")
        && !prefix.is_empty()
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        && hex.len() == 16
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Remove the staged files of imports that died (killed CLI, server crash
/// during an upload): Khoi-made files no live process holds locked. Returns
/// the names removed.
pub fn sweep(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !khoi_made(&name) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        // A writer holds its lock until the file is adopted or removed.
        if f.try_lock().is_ok() && std::fs::remove_file(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
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

fn unfit_because(shown: &str, detail: String) -> StageError {
    StageError::Unfit {
        shown: shown.to_string(),
        detail: Some(detail),
    }
}

/// Copy (sparsely) or convert `src` into a new raw file in `staging`.
pub fn stage(src: &Path, staging: &Path, limits: &Limits) -> Result<Staged, StageError> {
    stage_with(src, staging, "web-import", limits, &mut |_, _| {}, false)
}

/// [`stage`], reporting `(bytes done, total)` of a raw copy to `progress`;
/// with `terminal`, qemu-img's own progress goes to the caller's terminal.
pub fn stage_with(
    src: &Path,
    staging: &Path,
    prefix: &str,
    limits: &Limits,
    progress: &mut dyn FnMut(u64, u64),
    terminal: bool,
) -> Result<Staged, StageError> {
    let input =
        File::open(src).map_err(|e| unfit(format!("cannot read {}: {e}", src.display())))?;
    let meta = input
        .metadata()
        .map_err(|e| unfit(format!("cannot read {}: {e}", src.display())))?;
    if !meta.is_file() {
        return Err(unfit(format!("{} is not a regular file", src.display())));
    }
    let format = sniff(&input)?;
    let what = src.display().to_string();
    std::fs::create_dir_all(staging)
        .map_err(|e| StageError::Failed(format!("staging folder {}: {e}", staging.display())))?;
    match format {
        Format::Raw => {
            check_size(&what, meta.len())?;
            limits.check_disk(meta.len(), staging)?;
            let out = create(staging, prefix, "raw")?;
            copy_sparse(
                &input,
                meta.len(),
                out_file(&out)?,
                limits,
                staging,
                progress,
            )?;
            Ok(out)
        }
        other => convert_checked(
            &input, false, other, staging, prefix, limits, terminal, &what,
        ),
    }
}

/// Prepare an upload that is already in the staging folder: a raw upload is
/// renamed in place (no second copy of a 40 GiB disk), others are converted.
pub fn stage_upload(
    mut part: Staged,
    staging: &Path,
    limits: &Limits,
) -> Result<Staged, StageError> {
    let what = "the uploaded file";
    let input = match part.file.take() {
        Some(f) => f,
        None => File::open(&part.path).map_err(|e| format!("upload: {e}"))?,
    };
    let format = sniff(&input)?;
    let size = input.metadata().map_err(|e| format!("upload: {e}"))?.len();
    if format == Format::Raw {
        check_size(what, size)?;
        limits.check_disk(size, staging)?;
        let path = staging.join(unique_name("web-upload", "raw"));
        std::fs::rename(&part.path, &path).map_err(|e| format!("upload: {e}"))?;
        // The lock is on the file, not the name: it moves along.
        let staged = Staged {
            path,
            keep: false,
            file: Some(input),
        };
        part.finish(true);
        Ok(staged)
    } else {
        // `part` stays locked (through `input`) until the conversion is over.
        let r = convert_checked(
            &input,
            true,
            format,
            staging,
            "web-upload",
            limits,
            false,
            what,
        );
        drop(part);
        r
    }
}

fn create(staging: &Path, prefix: &str, ext: &str) -> Result<Staged, StageError> {
    Staged::create(staging, prefix, ext)
        .map_err(|e| StageError::Failed(format!("staging folder {}: {e}", staging.display())))
}

fn out_file(s: &Staged) -> Result<&File, StageError> {
    s.file()
        .ok_or_else(|| StageError::Failed("staged file is not open".into()))
}

fn sniff(f: &File) -> Result<Format, StageError> {
    let mut head = vec![0u8; 4096];
    let n = read_at_most(f, &mut head, 0)?;
    head.truncate(n);
    Ok(detect(&head))
}

fn read_at_most(f: &File, buf: &mut [u8], at: u64) -> Result<usize, StageError> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(StageError::Failed(format!("cannot read the file: {e}"))),
        }
    }
    Ok(n)
}

fn check_size(what: &str, size: u64) -> Result<(), StageError> {
    if size == 0 {
        return Err(unfit(format!("{what} is empty")));
    }
    if !size.is_multiple_of(SECTOR) {
        return Err(unfit(format!(
            "{what} is {size} bytes, not a multiple of 512: it is not a whole disk image \
             (was the copy cut short?)"
        )));
    }
    Ok(())
}

/// Copy, leaving all-zero megabytes as holes: disk images are mostly empty.
/// Stops if the data filesystem reaches the floor meanwhile (someone else
/// may be filling it too).
fn copy_sparse(
    input: &File,
    size: u64,
    out: &File,
    limits: &Limits,
    staging: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), StageError> {
    const CHUNK: usize = 1 << 20;
    const SPACE_EVERY: u64 = 256 << 20;
    let err = |e: std::io::Error| StageError::Failed(format!("copying the image: {e}"));
    let mut input = input;
    input.seek(SeekFrom::Start(0)).map_err(err)?;
    let mut out = out;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut next_space = SPACE_EVERY;
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
        if done >= next_space {
            next_space = done + SPACE_EVERY;
            if limits.free_space_floor > 0 && fs_space(staging).0 < limits.free_space_floor {
                return Err(unfit(
                    "the data disk reached its free-space floor during the copy".into(),
                ));
            }
        }
    }
    out.set_len(size).map_err(err)?;
    out.sync_all().map_err(err)
}

/// What `qemu-img info` found, once it passed [`check_info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub virtual_size: u64,
}

const SELF_CONTAINED: &str = "export or convert it to a single self-contained file first \
     (for example with qemu-img convert on the machine that made it)";

/// Decide from `qemu-img info --output=json` whether an image may be
/// converted: it must be the format its magic said, self-contained (no
/// backing file, no external data file, a VMDK only of extents in the file
/// itself) and say how big it is. `opened` is the name qemu-img was given.
pub fn check_info(
    format: Format,
    opened: &str,
    info: &serde_json::Value,
) -> Result<ImageInfo, StageError> {
    let fmt = format.qemu_name();
    // The detail (for the log and the CLI) names only the offending field.
    let field = |v: Option<&serde_json::Value>| v.map_or_else(|| "?".into(), |v| v.to_string());
    let found = info.get("format").and_then(|v| v.as_str());
    if found != Some(fmt) {
        return Err(unfit_because(
            &format!("the file is not a readable {fmt} image"),
            format!("qemu-img reads it as {found:?}"),
        ));
    }
    let backing = [
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
    ];
    if let Some(k) = backing.into_iter().find(|k| info.get(k).is_some()) {
        return Err(unfit_because(
            &format!(
                "the {fmt} image refers to another file (a backing file): it holds only the \
                 changes to some other disk. {SELF_CONTAINED}"
            ),
            format!("{k} {}", field(info.get(k))),
        ));
    }
    let data = info.pointer("/format-specific/data");
    if let Some(df) = data.and_then(|d| d.get("data-file")) {
        return Err(unfit_because(
            &format!(
                "the {fmt} image keeps its data in another file (an external data file). \
                 {SELF_CONTAINED}"
            ),
            format!("data-file {df}"),
        ));
    }
    if format == Format::Vmdk {
        let create = data
            .and_then(|d| d.get("create-type"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let extents = data.and_then(|d| d.get("extents"));
        let own = extents.and_then(|v| v.as_array()).is_some_and(|xs| {
            !xs.is_empty()
                && xs
                    .iter()
                    .all(|x| x.get("filename").and_then(|v| v.as_str()) == Some(opened))
        });
        if !matches!(create, "monolithicSparse" | "streamOptimized") || !own {
            return Err(unfit_because(
                &format!(
                    "the VMDK image is split over several files (type {create:?}); only \
                     single-file VMDK (monolithicSparse or streamOptimized) is accepted. \
                     {SELF_CONTAINED}"
                ),
                format!("extents {}", field(extents)),
            ));
        }
    }
    let virtual_size = info
        .get("virtual-size")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| {
            unfit_because(
                "the image does not say how large its disk is",
                format!("virtual-size {}", field(info.get("virtual-size"))),
            )
        })?;
    Ok(ImageInfo { virtual_size })
}

/// VMDK refusals that need no qemu-img: a text descriptor always names
/// other files, and a binary header with capacity 0 makes qemu-img read its
/// embedded descriptor's extent list (which may name any file).
fn check_vmdk_header(input: &File) -> Result<(), StageError> {
    let mut head = [0u8; 32];
    let n = read_at_most(input, &mut head, 0)?;
    if head[..n].starts_with(b"# Disk DescriptorFile") {
        return Err(unfit(format!(
            "the file is a VMDK descriptor, which only names other files (its extents). \
             {SELF_CONTAINED}"
        )));
    }
    // KDMV, version (4 bytes), flags (4 bytes), capacity (8 bytes, LE).
    let capacity = head
        .get(12..20)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    if n < 20 || capacity == 0 {
        return Err(unfit(format!(
            "the VMDK header gives no disk size and defers to a descriptor that may name \
             other files. {SELF_CONTAINED}"
        )));
    }
    Ok(())
}

/// The `json:` name that opens `fd` as `format` and nothing else: an
/// explicit driver (qemu-img never probes) over the plain file protocol and
/// `backing: null`, so even a backing file written into the header after
/// [`check_info`] is not opened.
fn image_spec(format: Format, fd_path: &str) -> String {
    let spec = serde_json::json!({
        "driver": format.qemu_name(),
        "backing": null,
        "file": {"driver": "file", "filename": fd_path},
    });
    format!("json:{spec}")
}

/// Make `input` something the sandboxed child can open through `/dev/fd`:
/// as `nobody` it needs read permission on the inode itself. An upload
/// (`owned`) is handed over; another file that `nobody` cannot read is
/// copied into staging first (its owner's permissions are left alone).
fn for_sandbox(
    input: &File,
    owned: bool,
    staging: &Path,
    limits: &Limits,
) -> Result<Option<Staged>, StageError> {
    let Some(uid) = sandbox::child_uid() else {
        return Ok(None);
    };
    let fail = |e: std::io::Error| StageError::Failed(format!("preparing the image: {e}"));
    let meta = input.metadata().map_err(fail)?;
    if owned {
        input
            .set_permissions(std::fs::Permissions::from_mode(0o400))
            .map_err(fail)?;
        sandbox::chown_for_child(input).map_err(fail)?;
        return Ok(None);
    }
    if meta.mode() & 0o004 != 0 || meta.uid() == uid {
        return Ok(None);
    }
    limits.check_disk(meta.len(), staging)?;
    let copy = create(staging, "web-import", "src")?;
    let f = out_file(&copy)?;
    copy_sparse(input, meta.len(), f, limits, staging, &mut |_, _| {})?;
    f.set_permissions(std::fs::Permissions::from_mode(0o400))
        .map_err(fail)?;
    sandbox::chown_for_child(f).map_err(fail)?;
    Ok(Some(copy))
}

#[allow(clippy::too_many_arguments)]
fn convert_checked(
    input: &File,
    owned: bool,
    format: Format,
    staging: &Path,
    prefix: &str,
    limits: &Limits,
    terminal: bool,
    what: &str,
) -> Result<Staged, StageError> {
    if format == Format::Vpc {
        return Err(unfit(
            "VHD (vpc) images are not accepted; convert the disk to VHDX, qcow2 or raw first"
                .into(),
        ));
    }
    if format == Format::Vmdk {
        check_vmdk_header(input)?;
    }
    let copy = for_sandbox(input, owned, staging, limits)?;
    let input = match &copy {
        Some(c) => out_file(c)?,
        None => input,
    };
    let info = inspect(input, format, what)?;
    let size = info.virtual_size;
    check_size(what, size)?;
    limits.check_disk(size, staging)?;
    let out = create(staging, prefix, "raw")?;
    let f = out_file(&out)?;
    let fail = |e: std::io::Error| StageError::Failed(format!("staged file: {e}"));
    f.set_len(size).map_err(fail)?;
    sandbox::chown_for_child(f).map_err(fail)?;
    let r = run_convert(input, format, f, size, terminal, what);
    sandbox::chown_back(f).map_err(fail)?;
    r?;
    // A file changed under us between the check and the conversion would
    // have been opened with `backing: null` inside the sandbox anyway; say
    // so loudly instead of importing whatever came out.
    if inspect(input, format, what)? != info {
        return Err(unfit(
            "the image file changed while it was being converted".into(),
        ));
    }
    let len = f.metadata().map_err(fail)?.len();
    if len != size {
        return Err(StageError::Failed(format!(
            "conversion wrote {len} bytes, expected {size}"
        )));
    }
    f.sync_all().map_err(fail)?;
    Ok(out)
}

fn qemu_missing(format: Format, e: &std::io::Error) -> StageError {
    StageError::Unfit {
        shown: format!(
            "the file is a {} image and converting it needs qemu-img, which could not be \
             run; install it with: apt-get install qemu-utils",
            format.qemu_name()
        ),
        detail: Some(e.to_string()),
    }
}

/// `qemu-img info` on `input`, confined, then [`check_info`].
pub fn inspect(input: &File, format: Format, what: &str) -> Result<ImageInfo, StageError> {
    let opened = sandbox::fd_path(input);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json"])
        .arg(image_spec(format, &opened))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sandbox::confine(
        &mut cmd,
        &[input],
        &[],
        sandbox::Rlimits {
            cpu_secs: 60,
            max_file: 0,
        },
    );
    let out = run_bounded(cmd, Duration::from_secs(120)).map_err(|e| qemu_missing(format, &e))?;
    if !out.status.success() {
        return Err(unfit_because(
            &format!(
                "qemu-img could not read the file as a {} image",
                format.qemu_name()
            ),
            format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        unfit_because(
            "qemu-img gave an answer Khoi does not understand",
            format!("{what}: {e}"),
        )
    })?;
    check_info(format, &opened, &v).map_err(|e| match e {
        StageError::Unfit { shown, detail } => StageError::Unfit {
            shown,
            detail: detail.map(|d| format!("{what}: {d}")),
        },
        other => other,
    })
}

/// Run `cmd` to completion, killing it after `limit` (a stuck open or
/// parse must not hold an import request forever).
fn run_bounded(mut cmd: Command, limit: Duration) -> std::io::Result<std::process::Output> {
    let mut child = cmd.spawn()?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(16 << 20).read_to_end(&mut b);
        }
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(1 << 20).read_to_end(&mut b);
        }
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

fn run_convert(
    input: &File,
    format: Format,
    out: &File,
    size: u64,
    terminal: bool,
    what: &str,
) -> Result<(), StageError> {
    let mut cmd = Command::new("qemu-img");
    // -n: the output exists (made here, sized, sparse, locked), so qemu-img
    // creates nothing; --target-is-zero: it is a fresh sparse file, zero
    // blocks need not be written.
    cmd.args(["convert", "-n", "--target-is-zero", "-O", "raw"]);
    if terminal {
        // qemu-img draws its own progress bar on the admin's terminal.
        cmd.arg("-p").stdout(Stdio::inherit());
    } else {
        cmd.stdout(Stdio::null());
    }
    cmd.arg(image_spec(format, &sandbox::fd_path(input)))
        .arg(sandbox::fd_path(out))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    sandbox::confine(
        &mut cmd,
        &[input],
        &[out],
        sandbox::Rlimits {
            // Hours of CPU: far more than any real conversion, a stop for
            // a parser caught in a loop.
            cpu_secs: 6 * 3600,
            max_file: size,
        },
    );
    let res = cmd.output().map_err(|e| qemu_missing(format, &e))?;
    if !res.status.success() {
        return Err(unfit_because(
            &format!(
                "qemu-img could not convert the file from {}",
                format.qemu_name()
            ),
            format!("{what}: {}", String::from_utf8_lossy(&res.stderr).trim()),
        ));
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
        let staged = stage(&src, &staging, &Limits::default()).expect("stage");
        assert_eq!(std::fs::read(&staged.path).expect("read"), data);
        let path = staged.path.clone();
        drop(staged);
        assert!(!path.exists(), "unadopted staged files are removed");
        let odd = dir.path().join("odd.img");
        std::fs::write(&odd, vec![1u8; 1000]).expect("write");
        assert!(
            stage(&odd, &staging, &Limits::default())
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
        let e = stage_upload(
            Staged::new(src.clone()),
            &dir.path().join("staging"),
            &Limits::default(),
        )
        .expect_err("broken");
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

    fn qemu_img(args: &[&str]) -> bool {
        match Command::new("qemu-img").args(args).output() {
            Ok(o) if o.status.success() => true,
            Ok(o) => panic!("qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(_) => {
                eprintln!("qemu-img is not installed: skipping");
                false
            }
        }
    }

    fn disk_with_data() -> Vec<u8> {
        let mut data = vec![0u8; 4 << 20];
        data[(1 << 20) + 3] = 0x5a;
        data[(3 << 20) + 9..(3 << 20) + 13].copy_from_slice(b"khoi");
        data
    }

    fn listing(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The formats Khoi accepts convert to the same bytes, through the
    /// sandbox (as nobody when the tests run as root, under Landlock).
    #[test]
    fn converts_self_contained_images_in_the_sandbox() {
        let dir = tempfile::tempdir().expect("tmp");
        let raw = dir.path().join("disk.raw");
        let data = disk_with_data();
        std::fs::write(&raw, &data).expect("write");
        let raw_s = raw.to_str().expect("utf8");
        let staging = dir.path().join("staging");
        for (fmt, opts) in [
            ("qcow2", ""),
            ("vmdk", "subformat=monolithicSparse"),
            ("vmdk", "subformat=streamOptimized"),
            ("vhdx", ""),
            ("vdi", ""),
        ] {
            let img = dir.path().join(format!("disk.{fmt}"));
            let img_s = img.to_str().expect("utf8");
            let mut args = vec!["convert", "-q", "-f", "raw", "-O", fmt];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            args.extend([raw_s, img_s]);
            if !qemu_img(&args) {
                return;
            }
            // Not world-readable: as root it is copied for `nobody` first.
            std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            let staged = stage(&img, &staging, &Limits::default())
                .unwrap_or_else(|e| panic!("{fmt} {opts}: {e}"));
            let out = std::fs::read(&staged.path).expect("read");
            assert!(out == data, "{fmt} {opts}: converted bytes differ");
            let meta = std::fs::metadata(&staged.path).expect("meta");
            assert_eq!(
                meta.uid(),
                unsafe_euid(),
                "{fmt}: staged file is Khoi's again"
            );
            drop(staged);
            assert!(
                listing(&staging).is_empty(),
                "{fmt}: {:?}",
                listing(&staging)
            );
        }
    }

    fn unsafe_euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    /// Attack: a qcow2 whose backing file is /etc/passwd (or khoi.db)
    /// would convert into a readable copy of that file. Refused before
    /// conversion, with no path in the officer's sentence.
    #[test]
    fn refuses_a_qcow2_with_a_backing_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let img = dir.path().join("x.qcow2");
        let img_s = img.to_str().expect("utf8");
        if !qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/passwd",
            "-F",
            "raw",
            img_s,
        ]) {
            return;
        }
        let staging = dir.path().join("staging");
        let e = stage(&img, &staging, &Limits::default()).expect_err("backing file");
        let StageError::Unfit { shown, .. } = &e else {
            panic!("{e}")
        };
        assert!(shown.contains("backing file"), "{shown}");
        assert!(!shown.contains("/etc/passwd"), "{shown}");
        assert!(listing(&staging).is_empty(), "{:?}", listing(&staging));
    }

    /// Attack: a qcow2 with an external data file naming another file.
    #[test]
    fn refuses_a_qcow2_with_an_external_data_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, vec![0x41u8; 1 << 20]).expect("secret");
        let img = dir.path().join("x.qcow2");
        let opt = format!("data_file={},data_file_raw=on", secret.display());
        if !qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opt,
            img.to_str().expect("utf8"),
            "1M",
        ]) {
            return;
        }
        let staging = dir.path().join("staging");
        let e = stage(&img, &staging, &Limits::default()).expect_err("data file");
        assert!(e.to_string().contains("external data file"), "{e}");
        assert!(listing(&staging).is_empty());
    }

    /// Attack: a hand-written VMDK descriptor whose extent is another file,
    /// and the same descriptor embedded behind a binary header.
    #[test]
    fn refuses_vmdk_descriptors_that_name_other_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                    createType=\"monolithicFlat\"\n\nRW 8 FLAT \"/etc/passwd\" 0\n\n\
                    ddb.virtualHWVersion = \"4\"\n";
        let img = dir.path().join("x.vmdk");
        std::fs::write(&img, desc).expect("write");
        let staging = dir.path().join("staging");
        let e = stage(&img, &staging, &Limits::default()).expect_err("descriptor");
        assert!(e.to_string().contains("VMDK descriptor"), "{e}");
        assert!(!e.to_string().contains("/etc/passwd"), "{e}");
        // KDMV header, capacity 0, descriptor at sector 1.
        let mut bin = vec![0u8; 4096];
        bin[..4].copy_from_slice(b"KDMV");
        bin[4..8].copy_from_slice(&1u32.to_le_bytes());
        bin[28..36].copy_from_slice(&1u64.to_le_bytes());
        bin[36..44].copy_from_slice(&2u64.to_le_bytes());
        bin[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
        std::fs::write(&img, &bin).expect("write");
        let e = stage(&img, &staging, &Limits::default()).expect_err("embedded");
        assert!(e.to_string().contains("descriptor"), "{e}");
        assert!(listing(&staging).is_empty());
    }

    /// Attack: a 229 KB qcow2 claiming 2 TiB. Refused for the free space it
    /// would need (above the floor), and for the maximum when over it.
    #[test]
    fn refuses_disks_larger_than_the_maximum_or_the_free_space() {
        let dir = tempfile::tempdir().expect("tmp");
        let img = dir.path().join("x.qcow2");
        let img_s = img.to_str().expect("utf8");
        if !qemu_img(&["create", "-q", "-f", "qcow2", img_s, "2T"]) {
            return;
        }
        assert!(std::fs::metadata(&img).expect("meta").len() < 300 << 10);
        let staging = dir.path().join("staging");
        std::fs::create_dir_all(&staging).expect("mkdir");
        let free = fs_space(&staging).0;
        let limits = Limits {
            // Leave 64 GiB above the floor whatever this disk's size.
            free_space_floor: free.saturating_sub(64 << 30),
            ..Limits::default()
        };
        let e = stage(&img, &staging, &limits).expect_err("2 TiB");
        assert!(e.to_string().contains("free-space floor"), "{e}");
        let limits = Limits {
            max_virtual_size: 1 << 40,
            ..Limits::default()
        };
        let e = stage(&img, &staging, &limits).expect_err("over max");
        assert!(e.to_string().contains("largest image accepted"), "{e}");
        assert!(
            e.to_string().contains("2 TiB") && e.to_string().contains("1 TiB"),
            "{e}"
        );
        assert!(listing(&staging).is_empty());
        // Raw files meet the same maximum.
        let raw = dir.path().join("big.raw");
        File::create(&raw)
            .expect("raw")
            .set_len(2 << 40)
            .expect("sparse 2 TiB");
        let e = stage(&raw, &staging, &limits).expect_err("raw over max");
        assert!(e.to_string().contains("largest image accepted"), "{e}");
    }

    #[test]
    fn info_checks() {
        let ok = serde_json::json!({"format": "qcow2", "virtual-size": 1048576});
        assert_eq!(
            check_info(Format::Qcow2, "/dev/fd/3", &ok)
                .expect("ok")
                .virtual_size,
            1 << 20
        );
        let vmdk = |ty: &str, file: &str| {
            serde_json::json!({"format": "vmdk", "virtual-size": 512,
                "format-specific": {"type": "vmdk", "data": {"create-type": ty,
                    "extents": [{"filename": file}]}}})
        };
        assert!(
            check_info(
                Format::Vmdk,
                "/dev/fd/3",
                &vmdk("monolithicSparse", "/dev/fd/3")
            )
            .is_ok()
        );
        assert!(
            check_info(
                Format::Vmdk,
                "/dev/fd/3",
                &vmdk("monolithicSparse", "/etc/passwd")
            )
            .is_err()
        );
        assert!(
            check_info(
                Format::Vmdk,
                "/dev/fd/3",
                &vmdk("monolithicFlat", "/dev/fd/3")
            )
            .is_err()
        );
        let other = serde_json::json!({"format": "raw", "virtual-size": 512});
        assert!(check_info(Format::Qcow2, "/dev/fd/3", &other).is_err());
    }

    #[test]
    fn refuses_vhd() {
        let dir = tempfile::tempdir().expect("tmp");
        let img = dir.path().join("x.vhd");
        let mut b = b"conectix".to_vec();
        b.resize(4096, 0);
        std::fs::write(&img, &b).expect("write");
        let e = stage(&img, &dir.path().join("s"), &Limits::default()).expect_err("vhd");
        assert!(e.to_string().contains("VHD"), "{e}");
    }

    /// The sweep at start removes Khoi-made files nobody holds, and keeps a
    /// file a live writer (the CLI, mid-conversion) holds and files an
    /// admin put there by hand.
    #[test]
    fn sweep_removes_only_unheld_leftovers() {
        let dir = tempfile::tempdir().expect("tmp");
        let live = Staged::create(dir.path(), "import", "raw").expect("live");
        let dead = dir.path().join(unique_name("upload", "part"));
        std::fs::write(&dead, b"x").expect("dead");
        let mine = dir.path().join("win10.raw");
        std::fs::write(&mine, b"x").expect("mine");
        let removed = sweep(dir.path());
        assert_eq!(
            removed,
            vec![
                dead.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned()
            ]
        );
        assert!(live.path.exists() && mine.exists() && !dead.exists());
        let p = live.path.clone();
        drop(live);
        assert!(!p.exists());
        assert!(khoi_made("web-upload-0123456789abcdef.raw"));
        assert!(!khoi_made("web-upload-0123456789abcdeg.raw"));
        assert_eq!(human(2 << 40), "2 TiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(100), "100 bytes");
    }
}
