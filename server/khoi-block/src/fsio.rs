//! Small file-system helpers: positional I/O, durable replace, holes, free
//! space. Everything here is a thin, named wrapper so the callers read as the
//! algorithm they implement.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::StoreError;

/// Opens a file for reading only: the one way layer files are ever opened.
pub fn open_ro(path: &Path) -> Result<File, StoreError> {
    File::open(path).map_err(StoreError::io(path))
}

/// Opens an overlay file for read-write; never used on layers.
pub fn open_rw(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(StoreError::io(path))
}

/// Creates a new file (failing if it exists) of `len` bytes, sparse.
pub fn create_sparse(path: &Path, len: u64) -> Result<File, StoreError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(StoreError::io(path))?;
    f.set_len(len).map_err(StoreError::io(path))?;
    Ok(f)
}

pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir))
}

/// Replaces `path` atomically and durably: a reader (or a crash) sees either
/// the old contents or the new ones, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("store files live in a directory");
    let name = path
        .file_name()
        .expect("store files have names")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(StoreError::io(&tmp))?;
        f.write_all(bytes).map_err(StoreError::io(&tmp))?;
        f.sync_all().map_err(StoreError::io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(StoreError::io(path))?;
    fsync_dir(dir)
}

pub fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    let meta = fs::metadata(path).map_err(StoreError::io(path))?;
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(StoreError::io(path))?;
    }
    Ok(())
}

pub fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    f.read_exact_at(buf, offset)
}

pub fn write_all_at(f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    f.write_all_at(buf, offset)
}

/// Frees the blocks of `[offset, offset+len)` in a file; best effort, since a
/// file system without hole punching just keeps the (unreferenced) bytes.
pub fn punch_hole(f: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: fallocate on a valid open fd with plain integer arguments; it
    // touches no memory of ours.
    let _ = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
}

/// Byte ranges of `f` that hold data (everything else is a hole), via
/// SEEK_DATA/SEEK_HOLE. If the file system cannot tell, the whole file is data.
pub fn data_ranges(f: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let Ok(p) = libc::off_t::try_from(pos) else {
            break;
        };
        // SAFETY: lseek on a valid fd; no memory involved.
        let data = unsafe { libc::lseek(fd, p, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // no more data
            }
            return vec![(0, size)];
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return vec![(0, size)];
        }
        let (Ok(d), Ok(h)) = (u64::try_from(data), u64::try_from(hole)) else {
            return vec![(0, size)];
        };
        let h = h.min(size);
        if d >= h {
            break;
        }
        out.push((d, h));
        pos = h;
    }
    out
}

/// Bytes available to us on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // the field widths differ between libcs
    let avail = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Ok(avail)
}

/// Bytes actually allocated to a file (sparse files count only their data).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// 128 random bits as 32 hex digits: version UUIDs and layer ids are never
/// reused, so they come from the kernel's CSPRNG rather than a counter.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writes at most the remaining length into our own buffer.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n > 0 {
            filled += usize::try_from(n).expect("positive");
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A version UUID (random, RFC 4122 v4 layout).
pub fn new_uuid() -> String {
    let h = random_hex();
    let mut b: Vec<char> = h.chars().collect();
    b[12] = '4';
    let variant = ['8', '9', 'a', 'b'];
    b[16] = variant[usize::from(u8::from_str_radix(&h[16..17], 16).unwrap_or(0) & 3)];
    let s: String = b.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
