//! Live sessions: TSIH allocation and ERL-0 session reinstatement (a login
//! with the same InitiatorName + ISID and TSIH 0 replaces the old session,
//! whose connection is cancelled).

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Entry {
    tsih: u16,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_tsih: u16,
    by_nexus: HashMap<(String, [u8; 6]), Entry>,
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
            if t != 0 && !g.by_nexus.values().any(|e| e.tsih == t) {
                return t;
            }
        }
    }

    /// Register a new session; an existing session of the same initiator
    /// and ISID is reinstated, i.e. its connection is told to close.
    /// Returns true if an old session was replaced.
    pub fn insert(
        &self,
        initiator: &str,
        isid: [u8; 6],
        tsih: u16,
        cancel: CancellationToken,
    ) -> bool {
        let mut g = self.inner.lock();
        let old = g
            .by_nexus
            .insert((initiator.to_owned(), isid), Entry { tsih, cancel });
        match old {
            Some(e) => {
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Forget a session when its connection ends, unless it was already
    /// replaced by a reinstating login.
    pub fn remove(&self, initiator: &str, isid: [u8; 6], tsih: u16) {
        let mut g = self.inner.lock();
        let key = (initiator.to_owned(), isid);
        if g.by_nexus.get(&key).is_some_and(|e| e.tsih == tsih) {
            g.by_nexus.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().by_nexus.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    #[test]
    fn reinstatement_cancels_old() {
        let r = Registry::new();
        let a = r.allocate_tsih();
        let b = r.allocate_tsih();
        assert_ne!(a, b);
        assert_ne!(a, 0);
        let old = CancellationToken::new();
        assert!(!r.insert("iqn.i", [1; 6], a, old.clone()));
        // A different ISID is a separate session to the same target.
        assert!(!r.insert("iqn.i", [2; 6], b, CancellationToken::new()));
        assert!(!old.is_cancelled());
        let c = r.allocate_tsih();
        assert!(r.insert("iqn.i", [1; 6], c, CancellationToken::new()));
        assert!(old.is_cancelled());
        // The old connection's cleanup must not remove its replacement.
        r.remove("iqn.i", [1; 6], a);
        assert_eq!(r.len(), 2);
        r.remove("iqn.i", [1; 6], c);
        assert_eq!(r.len(), 1);
    }
}
