//! Live sessions: TSIH allocation, fencing, and LU-wide task management.
//!
//! A new session of a seat *fences* the ones it replaces: ERL-0
//! reinstatement (the same InitiatorName + ISID with TSIH 0) and a new
//! session from the same initiator to the same target (Windows logging in
//! after iPXE, under its own ISID) both end the older session, and the new
//! session runs no command until the old one's in-flight work (pool jobs,
//! flushes) has finished. Writes still waiting for Data-Out die with their
//! connection. So an old write can never land after a newer one, as LIO and
//! SCST guarantee.
//!
//! Sessions of one target from *different* initiators coexist (libiscsi's
//! multi-session suites, a second host); a LUN RESET or ABORT TASK SET on
//! one of them reaches the others through [`Notice`]s.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::scsi::Sense;

/// Work a session must do on behalf of another session of its LU.
#[derive(Debug)]
pub enum Notice {
    /// Abort every task (pending writes, in-flight jobs), then set `ua` as
    /// the unit attention for the next command, then answer `ack`.
    AbortAll {
        ua: Option<Sense>,
        ack: oneshot::Sender<()>,
    },
}

#[derive(Debug)]
struct Entry {
    initiator: String,
    isid: [u8; 6],
    target: String,
    cancel: CancellationToken,
    /// Cancelled once the session's connection and every job it started
    /// have finished.
    done: CancellationToken,
    notices: mpsc::UnboundedSender<Notice>,
}

#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_tsih: u16,
    /// Every live normal session by TSIH.
    live: HashMap<u16, Entry>,
}

/// A session's place in the registry. Dropping it forgets the session and
/// tells whoever fenced it that it is finished, so drop it only after the
/// session's jobs are done.
#[derive(Debug)]
pub struct Admission {
    registry: std::sync::Arc<Registry>,
    tsih: u16,
    done: CancellationToken,
    /// Old sessions this one replaced; wait on [`Admission::fenced`] before
    /// running commands.
    fenced: Vec<CancellationToken>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

impl Admission {
    /// Resolves once every session this one replaced has finished.
    pub async fn fenced(&mut self) {
        for d in std::mem::take(&mut self.fenced) {
            d.cancelled().await;
        }
    }

    /// Sessions this one replaced that are still finishing.
    pub fn fencing(&self) -> usize {
        self.fenced.iter().filter(|d| !d.is_cancelled()).count()
    }

    pub fn tsih(&self) -> u16 {
        self.tsih
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.registry.inner.lock().live.remove(&self.tsih);
        self.done.cancel();
    }
}

/// Sessions told to end; see [`Registry::cancel_sessions_of`].
#[derive(Debug)]
#[must_use = "the sessions are ending; wait() to know they have"]
pub struct SessionsEnding(Vec<CancellationToken>);

impl SessionsEnding {
    /// How many sessions were told to end.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Resolves once every one of them has finished its in-flight work.
    pub async fn wait(self) {
        for d in self.0 {
            d.cancelled().await;
        }
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Allocate a nonzero TSIH not used by any live session.
    pub fn allocate_tsih(&self) -> u16 {
        let mut g = self.inner.lock();
        loop {
            g.next_tsih = g.next_tsih.wrapping_add(1);
            let t = g.next_tsih;
            if t != 0 && !g.live.contains_key(&t) {
                return t;
            }
        }
    }

    /// Register a new session of `target`. Sessions it replaces (the same
    /// initiator with the same ISID, or the same initiator on the same
    /// target) are told to close; the returned admission waits for them.
    pub fn admit(
        self: &std::sync::Arc<Self>,
        initiator: &str,
        isid: [u8; 6],
        target: &str,
        tsih: u16,
        cancel: CancellationToken,
    ) -> Admission {
        let (tx, rx) = mpsc::unbounded_channel();
        let done = CancellationToken::new();
        let mut g = self.inner.lock();
        let mut fenced = Vec::new();
        for e in g.live.values() {
            if e.initiator == initiator && (e.isid == isid || e.target == target) {
                e.cancel.cancel();
                fenced.push(e.done.clone());
            }
        }
        g.live.insert(
            tsih,
            Entry {
                initiator: initiator.to_owned(),
                isid,
                target: target.to_owned(),
                cancel,
                done: done.clone(),
                notices: tx,
            },
        );
        Admission {
            registry: self.clone(),
            tsih,
            done,
            fenced,
            notices: rx,
        }
    }

    /// End every session of `target` and wait until each has finished its
    /// in-flight work: after this returns, nothing they started touches the
    /// disk. Sessions logging in meanwhile are the caller's to refuse.
    pub async fn end_sessions_of(&self, target: &str) {
        self.cancel_sessions_of(target).wait().await;
    }

    /// The synchronous half of [`Registry::end_sessions_of`], for callers
    /// that are not async (a fence callback): the sessions are told to end
    /// now; [`SessionsEnding::wait`] resolves once they have.
    pub fn cancel_sessions_of(&self, target: &str) -> SessionsEnding {
        let g = self.inner.lock();
        SessionsEnding(
            g.live
                .values()
                .filter(|e| e.target == target)
                .map(|e| {
                    e.cancel.cancel();
                    e.done.clone()
                })
                .collect(),
        )
    }

    /// Ask every other session of `target` to abort its tasks (and report
    /// `ua` next); resolves when all have done so. A session that ends
    /// meanwhile counts as done.
    pub fn abort_others(
        &self,
        target: &str,
        except_tsih: u16,
        ua: Option<Sense>,
    ) -> Vec<oneshot::Receiver<()>> {
        let g = self.inner.lock();
        g.live
            .iter()
            .filter(|(t, e)| **t != except_tsih && e.target == target)
            .filter_map(|(_, e)| {
                let (ack, rx) = oneshot::channel();
                e.notices
                    .send(Notice::AbortAll { ua, ack })
                    .ok()
                    .map(|_| rx)
            })
            .collect()
    }

    /// Live sessions of `target`.
    pub fn sessions_of(&self, target: &str) -> usize {
        self.inner
            .lock()
            .live
            .values()
            .filter(|e| e.target == target)
            .count()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn reinstatement_and_same_seat_fence_old() {
        let r = Arc::new(Registry::new());
        let a = r.allocate_tsih();
        let b = r.allocate_tsih();
        assert_ne!(a, b);
        assert_ne!(a, 0);
        let old = CancellationToken::new();
        let mut first = r.admit("iqn.i", [1; 6], "t1", a, old.clone());
        assert_eq!(first.fencing(), 0);
        // Another initiator on the same target, and the same initiator on
        // another target, coexist.
        let other = CancellationToken::new();
        let _b = r.admit("iqn.j", [2; 6], "t1", b, other.clone());
        let _c = r.admit(
            "iqn.i",
            [3; 6],
            "t2",
            r.allocate_tsih(),
            CancellationToken::new(),
        );
        assert!(!old.is_cancelled());
        // Same initiator + ISID: reinstatement.
        let mut second = r.admit(
            "iqn.i",
            [1; 6],
            "t1",
            r.allocate_tsih(),
            CancellationToken::new(),
        );
        assert!(old.is_cancelled());
        assert!(!other.is_cancelled());
        assert_eq!(second.fencing(), 1);
        // Not fenced until the old admission is dropped.
        let waiter = tokio::spawn(async move {
            second.fenced().await;
            second
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        first.fenced().await;
        drop(first);
        let mut second = waiter.await.unwrap();
        assert_eq!(r.len(), 3);
        // Same initiator, new ISID, same target: the seat's new session.
        let third = r.admit(
            "iqn.i",
            [9; 6],
            "t1",
            r.allocate_tsih(),
            CancellationToken::new(),
        );
        assert_eq!(third.fencing(), 1);
        assert!(second.notices.try_recv().is_err());
        drop(second);
        assert_eq!(third.fencing(), 0);
        assert_eq!(r.sessions_of("t1"), 2);
    }

    #[tokio::test]
    async fn end_sessions_of_waits_for_each() {
        let r = Arc::new(Registry::new());
        let c1 = CancellationToken::new();
        let s1 = r.admit("iqn.a", [1; 6], "t", r.allocate_tsih(), c1.clone());
        let s2 = r.admit(
            "iqn.b",
            [1; 6],
            "t",
            r.allocate_tsih(),
            CancellationToken::new(),
        );
        let keep = r.admit(
            "iqn.a",
            [1; 6],
            "u",
            r.allocate_tsih(),
            CancellationToken::new(),
        );
        let r2 = r.clone();
        let ending = tokio::spawn(async move { r2.end_sessions_of("t").await });
        tokio::task::yield_now().await;
        assert!(c1.is_cancelled());
        assert!(!ending.is_finished());
        drop(s1);
        drop(s2);
        ending.await.unwrap();
        assert_eq!(r.sessions_of("t"), 0);
        assert_eq!(r.sessions_of("u"), 1);
        drop(keep);
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn abort_others_reaches_every_other_session() {
        let r = Arc::new(Registry::new());
        let ta = r.allocate_tsih();
        let _a = r.admit("iqn.a", [1; 6], "t", ta, CancellationToken::new());
        let mut b = r.admit(
            "iqn.b",
            [1; 6],
            "t",
            r.allocate_tsih(),
            CancellationToken::new(),
        );
        let acks = r.abort_others("t", ta, Some(Sense::new(0x06, 0x29, 0x03)));
        assert_eq!(acks.len(), 1);
        match b.notices.try_recv().unwrap() {
            Notice::AbortAll { ua, ack } => {
                assert_eq!(ua, Some(Sense::new(0x06, 0x29, 0x03)));
                ack.send(()).unwrap();
            }
        }
        for a in acks {
            a.await.unwrap();
        }
    }
}
