//! Page-cache residency of file ranges.
//!
//! A frontend that sends golden data from an async task must not let a read
//! that misses the page cache wait on the disk there: on the morning after a
//! server restart, forty seats booting at once would park every reactor
//! thread on disk reads. These helpers let it read without blocking when the
//! pages are cached (the usual case, one copy shared by every seat) and move
//! only the cold ranges to a blocking thread.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// `cachestat(2)` (Linux 6.5). The number is 451 on every architecture: it
/// was allocated after the syscall tables were unified. Not in `libc` yet.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

const PAGE: u64 = 4096;

/// Whether every page of `[offset, offset + len)` is in the page cache.
///
/// Exact with `cachestat(2)`. Kernels without it (before 6.5) get a probe of
/// the first and last byte with a non-blocking read: readahead fills whole
/// windows, so a range whose ends are cached almost always is too, and a
/// wrong "yes" only costs the old behaviour of one blocking read.
pub fn resident(file: &File, offset: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let first = offset / PAGE;
    let last = (offset + len - 1) / PAGE;
    let range = CachestatRange {
        off: first * PAGE,
        len: (last - first + 1) * PAGE,
    };
    let mut stat = Cachestat::default();
    // SAFETY: `range` and `stat` are valid, properly laid out (repr(C), the
    // kernel's struct cachestat_range / struct cachestat) and live for the
    // call; the fd is open for the borrow of `file`.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if r == 0 {
        // A range past the end of the file has no pages to be cached; the
        // caller's read will report the short file.
        let pages = last - first + 1;
        return stat.nr_cache >= pages || file_end_within(file, offset, len);
    }
    let mut byte = [0u8; 1];
    matches!(read_nowait(file, &mut byte, offset), Ok(1))
        && matches!(read_nowait(file, &mut byte, offset + len - 1), Ok(1))
}

fn file_end_within(file: &File, offset: u64, len: u64) -> bool {
    file.metadata().is_ok_and(|m| m.len() < offset + len)
}

/// Read into `buf` at `offset` only as far as the page cache serves it
/// without waiting: returns the bytes read, 0 when the first page is not
/// cached. Kernels without `RWF_NOWAIT` for this file get 0 as well, so
/// callers fall back to a blocking read on a blocking thread.
pub fn read_nowait(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: `iov` describes `rest`, which is exclusively borrowed and
        // valid for writes of its length for the call; the fd is open.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(done),
                Some(libc::EINTR) => continue,
                _ => Err(e),
            };
        }
        if n == 0 {
            break; // end of file
        }
        done += n.unsigned_abs();
    }
    Ok(done)
}

/// Bring `[offset, offset + len)` into the page cache (blocking: call it on
/// a blocking thread). Reads through a bounded scratch buffer.
pub fn warm(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let end = offset + len;
    let mut buf = vec![0u8; usize::try_from(len.min(CHUNK)).unwrap_or(0)];
    while offset < end {
        let n = usize::try_from((end - offset).min(CHUNK)).unwrap_or(buf.len());
        let got = file.read_at(&mut buf[..n], offset)?;
        if got == 0 {
            break;
        }
        offset += got as u64;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Drop the file's clean pages; false where the filesystem keeps them
    /// regardless (tmpfs), so cold-path checks cannot be made there.
    fn evict(file: &File) -> bool {
        file.sync_all().unwrap();
        // SAFETY: plain advice call on an open fd.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        !resident(file, 0, PAGE)
    }

    #[test]
    fn cold_ranges_are_reported_and_warmed_without_blocking_reads() {
        // /var/tmp: on disk on Debian, where /tmp may be tmpfs.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("layer.data");
        let data: Vec<u8> = (0..(64 * PAGE))
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let file = File::open(&path).unwrap();

        let mut buf = vec![0u8; 8192];
        assert_eq!(read_nowait(&file, &mut buf, 4096).unwrap(), 8192);
        assert_eq!(&buf[..], &data[4096..4096 + 8192]);
        assert!(resident(&file, 4096, 8192));
        // Unaligned ranges count the pages they touch.
        assert!(resident(&file, 4095, 2));
        // Past the end: nothing to wait for, and a non-blocking read stops there.
        assert!(resident(&file, 64 * PAGE - 10, 100));
        assert_eq!(read_nowait(&file, &mut buf, 64 * PAGE - 10).unwrap(), 10);
        assert!(resident(&file, 0, 0));

        if evict(&file) {
            assert!(!resident(&file, 8 * PAGE, 16 * PAGE));
            assert_eq!(read_nowait(&file, &mut buf, 8 * PAGE).unwrap(), 0);
            warm(&file, 8 * PAGE, 16 * PAGE).unwrap();
            assert!(resident(&file, 8 * PAGE, 16 * PAGE));
            let got = read_nowait(&file, &mut buf, 8 * PAGE).unwrap();
            assert_eq!(got, 8192);
            let at = usize::try_from(8 * PAGE).unwrap();
            assert_eq!(&buf[..], &data[at..at + 8192]);
        } else {
            eprintln!("page cache cannot be dropped here (tmpfs?): cold checks not run");
        }
    }
}
