//! Where one block request runs: inline on the connection task, or on the
//! blocking pool.
//!
//! The device API is synchronous. Running a request on the pool costs two
//! thread hand-offs, which is more than a read plan (block states and the
//! version map are in memory; the bytes move later, in the writer) or a small
//! write without FUA (it only reaches the page cache). Flushes, FUA writes,
//! large writes and everything else may wait on the disk, and the connection
//! must keep reading meanwhile, so they go to the pool.

use tokio::task::JoinHandle;

/// Writes up to this many bytes without FUA run inline.
pub const INLINE_WRITE_MAX: u64 = 64 << 10;

/// What a request will do to the device, as far as placement cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Planning a read (no file bytes are touched).
    ReadPlan,
    /// A read that copies bytes (`read_at`): may wait for the disk.
    ReadCopy,
    Write {
        len: u64,
        fua: bool,
    },
    /// Flush, trim, zero, extents, and anything else.
    Other,
}

impl Work {
    /// Whether this work runs on the connection task.
    pub fn inline(self) -> bool {
        match self {
            Work::ReadPlan => true,
            Work::Write { len, fua } => !fua && len <= INLINE_WRITE_MAX,
            Work::ReadCopy | Work::Other => false,
        }
    }
}

/// What [`dispatch`] did with a request.
#[derive(Debug)]
pub enum Dispatched<R> {
    /// It ran inline; here is the result.
    Executed(R),
    /// It runs on the blocking pool; the handle yields the result.
    Submitted(JoinHandle<R>),
}

/// Runs `job` inline or on the blocking pool, as [`Work::inline`] decides.
pub fn dispatch<R, F>(work: Work, job: F) -> Dispatched<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if work.inline() {
        Dispatched::Executed(job())
    } else {
        Dispatched::Submitted(tokio::task::spawn_blocking(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_memory_and_page_cache_work_runs_inline() {
        assert!(Work::ReadPlan.inline());
        assert!(
            Work::Write {
                len: 4096,
                fua: false
            }
            .inline()
        );
        assert!(
            Work::Write {
                len: INLINE_WRITE_MAX,
                fua: false
            }
            .inline()
        );
        assert!(
            !Work::Write {
                len: INLINE_WRITE_MAX + 1,
                fua: false
            }
            .inline()
        );
        assert!(
            !Work::Write {
                len: 512,
                fua: true
            }
            .inline()
        );
        assert!(!Work::ReadCopy.inline());
        assert!(!Work::Other.inline());
    }

    #[tokio::test]
    async fn inline_work_runs_on_the_calling_thread_and_pool_work_does_not() {
        let here = std::thread::current().id();
        match dispatch(Work::ReadPlan, move || std::thread::current().id()) {
            Dispatched::Executed(id) => assert_eq!(id, here),
            Dispatched::Submitted(_) => panic!("a read plan must run inline"),
        }
        match dispatch(Work::Other, move || std::thread::current().id()) {
            Dispatched::Executed(_) => panic!("a flush must go to the pool"),
            Dispatched::Submitted(h) => assert_ne!(h.await.expect("join"), here),
        }
    }
}
