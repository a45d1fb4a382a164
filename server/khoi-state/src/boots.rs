//! The `seat_boots` table: each seat's boot credentials and the fence.
//!
//! A seat's script fetch *offers* a boot: it mints a CHAP user and secret for
//! that boot only, bound to the address that fetched the script and the
//! initiator name the script sets. Nothing else changes at the fetch. The boot
//! *begins* when those credentials first log in (iPXE's `sanboot`): they become
//! the seat's current credentials, the previous boot's stop working, a fence is
//! lifted, and the binary does what a boot does (the `on-boot` reset). Until
//! then the running boot keeps its credentials, so a forged or drive-by fetch
//! takes nothing away from the seat that is running.
//!
//! The credentials live here, not in memory, so Windows' reconnects keep
//! working across a Khoi restart. CHAP-MD5 needs the secret itself on the
//! target side (the response is a hash over it and a fresh challenge), so it
//! cannot be stored hashed; the database file is the owner's only, and each
//! secret dies with its boot.
//!
//! Fencing marks the current boot: its credentials are refused from then on,
//! until the seat's next boot begins.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Result, State, StateError, now};

/// One boot's credentials and where they may be used from.
#[derive(Clone, PartialEq, Eq)]
pub struct BootCred {
    pub user: String,
    pub secret: String,
    /// The address that fetched the script: the only one that may log in.
    pub peer: String,
    /// The InitiatorName the script set: the only one that may log in.
    pub initiator: String,
    /// Unix seconds: the fetch for a pending boot, the first login for the
    /// current one.
    pub started: i64,
    /// For a seat with mutual CHAP: the secret the target answers this boot's
    /// initiator with (as the target's IQN).
    pub target_secret: Option<String>,
}

impl std::fmt::Debug for BootCred {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootCred")
            .field("user", &self.user)
            .field("peer", &self.peer)
            .field("initiator", &self.initiator)
            .field("started", &self.started)
            .field("mutual", &self.target_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// A seat's boots: the running one and the one its last script fetch offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub seat: String,
    /// Counts the boots that began, so a login can tell which one it is.
    pub boot_id: i64,
    pub current: Option<BootCred>,
    pub pending: Option<BootCred>,
    /// When and why the current boot was fenced.
    pub fenced: Option<(i64, String)>,
    /// The previous boot's CHAP user, to name a login with stale credentials.
    pub prev_chap_user: Option<String>,
}

/// Length of a boot's CHAP secret. The Microsoft initiator takes 12 to 16
/// characters; 16 from 62 symbols is about 95 bits.
pub const BOOT_SECRET_LEN: usize = 16;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `n` random letters and digits: safe in an iPXE script and in CHAP_N.
pub fn random_token(n: usize) -> Result<String> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|e| StateError::Invalid {
            field: "boot credentials",
            reason: format!("no randomness available: {e}"),
        })?;
        // 248 = 4 * 62: rejecting the rest keeps every symbol equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == n {
                break;
            }
            out.push(char::from(ALNUM[usize::from(*b) % ALNUM.len()]));
        }
    }
    Ok(out)
}

const COLUMNS: &str = "seat, boot_id, chap_user, chap_secret, peer, initiator, started, \
                       fenced, fence_reason, prev_chap_user, pending_user, pending_secret, \
                       pending_peer, pending_initiator, pending_started, \
                       target_secret, pending_target_secret";

fn cred(r: &Row<'_>, at: usize, target_at: usize) -> rusqlite::Result<Option<BootCred>> {
    let user: Option<String> = r.get(at)?;
    let Some(user) = user else {
        return Ok(None);
    };
    Ok(Some(BootCred {
        user,
        secret: r.get::<_, Option<String>>(at + 1)?.unwrap_or_default(),
        peer: r.get::<_, Option<String>>(at + 2)?.unwrap_or_default(),
        initiator: r.get::<_, Option<String>>(at + 3)?.unwrap_or_default(),
        started: r.get::<_, Option<i64>>(at + 4)?.unwrap_or_default(),
        target_secret: r.get(target_at)?,
    }))
}

fn row(r: &Row<'_>) -> rusqlite::Result<Boot> {
    let fenced: Option<i64> = r.get(7)?;
    let reason: Option<String> = r.get(8)?;
    Ok(Boot {
        seat: r.get(0)?,
        boot_id: r.get(1)?,
        current: cred(r, 2, 15)?,
        fenced: fenced.map(|t| (t, reason.unwrap_or_default())),
        prev_chap_user: r.get(9)?,
        pending: cred(r, 10, 16)?,
    })
}

impl State {
    /// A script fetch of `seat` from `peer`, whose script sets `initiator`:
    /// fresh credentials for the boot it offers, replacing an earlier offer
    /// that never logged in. The running boot is left alone.
    /// A seat with mutual CHAP also gets a fresh target secret for the boot.
    pub fn offer_boot(&self, seat: &str, peer: &str, initiator: &str) -> Result<BootCred> {
        let mutual = self.seat(seat)?.mutual_secret.is_some();
        let cred = BootCred {
            user: format!("{seat}.{}", random_token(8)?),
            secret: random_token(BOOT_SECRET_LEN)?,
            peer: peer.to_string(),
            initiator: initiator.to_string(),
            started: now(),
            target_secret: if mutual {
                Some(random_token(BOOT_SECRET_LEN)?)
            } else {
                None
            },
        };
        let n = self.conn.lock().execute(
            "INSERT INTO seat_boots (seat, pending_user, pending_secret, pending_peer,
                                     pending_initiator, pending_started, pending_target_secret)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM seats WHERE name = ?1)
             ON CONFLICT (seat) DO UPDATE SET
               pending_user = excluded.pending_user, pending_secret = excluded.pending_secret,
               pending_peer = excluded.pending_peer,
               pending_initiator = excluded.pending_initiator,
               pending_started = excluded.pending_started,
               pending_target_secret = excluded.pending_target_secret",
            params![
                seat,
                cred.user,
                cred.secret,
                cred.peer,
                cred.initiator,
                cred.started,
                cred.target_secret
            ],
        )?;
        if n == 0 {
            return Err(StateError::NoSuchSeat(seat.to_string()));
        }
        Ok(cred)
    }

    /// The offered boot whose credentials are `user` logged in: it becomes the
    /// seat's current boot (the previous credentials die, a fence is lifted).
    /// `Some` exactly once per offer, for the caller that does what a boot
    /// does; `None` if `user` is not the pending offer.
    pub fn begin_boot(&self, seat: &str, user: &str) -> Result<Option<Boot>> {
        let conn = self.conn.lock();
        let n = conn.execute(
            "UPDATE seat_boots SET
               boot_id = boot_id + 1, prev_chap_user = chap_user,
               chap_user = pending_user, chap_secret = pending_secret, peer = pending_peer,
               initiator = pending_initiator, started = ?3,
               target_secret = pending_target_secret,
               fenced = NULL, fence_reason = NULL,
               pending_user = NULL, pending_secret = NULL, pending_peer = NULL,
               pending_initiator = NULL, pending_started = NULL, pending_target_secret = NULL
             WHERE seat = ?1 AND pending_user = ?2",
            params![seat, user, now()],
        )?;
        if n == 0 {
            return Ok(None);
        }
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM seat_boots WHERE seat = ?1"),
            [seat],
            row,
        )
        .optional()
        .map_err(Into::into)
    }

    /// The seat's boots, if its script was ever fetched.
    pub fn seat_boot(&self, seat: &str) -> Result<Option<Boot>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM seat_boots WHERE seat = ?1"),
                [seat],
                row,
            )
            .optional()?)
    }

    /// Every seat's boots, for the seat list.
    pub fn boots(&self) -> Result<Vec<Boot>> {
        let conn = self.conn.lock();
        let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM seat_boots ORDER BY seat"))?;
        let rows = st.query_map([], row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Into::into)
    }

    /// Fence the seat's current boot: its credentials are refused until the
    /// next boot begins. True if a boot was fenced now (false if the seat has
    /// no running boot or was fenced already, which keeps the first reason).
    pub fn fence_seat(&self, seat: &str, reason: &str) -> Result<bool> {
        let n = self.conn.lock().execute(
            "UPDATE seat_boots SET fenced = ?2, fence_reason = ?3
             WHERE seat = ?1 AND chap_user IS NOT NULL AND fenced IS NULL",
            params![seat, now(), reason],
        )?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use crate::State;
    use crate::test_seat as seat;

    fn db() -> State {
        let st = State::open_in_memory().expect("db");
        st.add_seat(&seat("pc01", "02:00:00:00:00:01"))
            .expect("add");
        st
    }

    #[test]
    fn an_offer_changes_nothing_until_it_logs_in() {
        let st = db();
        let a = st
            .offer_boot("pc01", "10.0.0.5", "iqn.x:pc01")
            .expect("offer");
        let stored = st.seat("pc01").expect("seat");
        assert_ne!(a.secret, stored.chap_secret, "never the long-lived secret");
        assert_eq!(a.secret.len(), super::BOOT_SECRET_LEN);
        assert!(a.user.starts_with("pc01."));
        let running = st
            .begin_boot("pc01", &a.user)
            .expect("begin")
            .expect("once");
        assert_eq!(
            running.current,
            Some(a.clone()).map(|mut c| {
                c.started = running.current.as_ref().map_or(0, |c| c.started);
                c
            })
        );
        assert_eq!(running.boot_id, 1);
        assert_eq!(running.pending, None);
        assert_eq!(st.begin_boot("pc01", &a.user).expect("again"), None);

        // A second fetch (a forged one, say) offers new credentials but the
        // running boot keeps its own until the offer logs in.
        let b = st
            .offer_boot("pc01", "10.0.0.66", "iqn.x:pc01")
            .expect("offer");
        assert_ne!((&a.user, &a.secret), (&b.user, &b.secret));
        let both = st.seat_boot("pc01").expect("q").expect("row");
        assert_eq!(both.current.as_ref().map(|c| &c.user), Some(&a.user));
        assert_eq!(both.pending.as_ref().map(|c| &c.user), Some(&b.user));
        let next = st
            .begin_boot("pc01", &b.user)
            .expect("begin")
            .expect("once");
        assert_eq!(next.boot_id, 2);
        assert_eq!(
            next.current.as_ref().map(|c| c.peer.as_str()),
            Some("10.0.0.66")
        );
        assert_eq!(next.prev_chap_user.as_deref(), Some(a.user.as_str()));
        assert!(st.offer_boot("nope", "10.0.0.5", "iqn.x:y").is_err());
    }

    #[test]
    fn fence_lasts_until_the_next_boot_begins() {
        let st = db();
        assert!(
            !st.fence_seat("pc01", "reset").expect("fence"),
            "no boot yet"
        );
        let a = st
            .offer_boot("pc01", "10.0.0.5", "iqn.x:pc01")
            .expect("offer");
        assert!(!st.fence_seat("pc01", "reset").expect("fence"), "not begun");
        st.begin_boot("pc01", &a.user).expect("begin");
        assert!(st.fence_seat("pc01", "admin reset").expect("fence"));
        assert!(!st.fence_seat("pc01", "again").expect("fence"));
        let b = st
            .offer_boot("pc01", "10.0.0.5", "iqn.x:pc01")
            .expect("offer");
        let cur = st.seat_boot("pc01").expect("q").expect("row");
        assert_eq!(
            cur.fenced.map(|(_, r)| r).as_deref(),
            Some("admin reset"),
            "a fetch lifts nothing"
        );
        let next = st
            .begin_boot("pc01", &b.user)
            .expect("begin")
            .expect("once");
        assert_eq!(next.fenced, None);
    }

    #[test]
    fn boots_survive_reopen_and_go_with_the_seat() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("khoi.db");
        let before = {
            let st = State::open(&path).expect("open");
            st.add_seat(&seat("pc01", "02:00:00:00:00:01"))
                .expect("add");
            let a = st
                .offer_boot("pc01", "10.0.0.5", "iqn.x:pc01")
                .expect("offer");
            st.begin_boot("pc01", &a.user).expect("begin")
        };
        let st = State::open(&path).expect("reopen");
        assert_eq!(st.seat_boot("pc01").expect("q"), before);
        st.remove_seat("pc01").expect("rm");
        assert_eq!(st.boots().expect("list"), vec![]);
    }

    #[test]
    fn mutual_seats_get_a_target_secret_per_boot() {
        let st = db();
        let mut m = seat("pc02", "02:00:00:00:00:02");
        m.mutual_chap = true;
        let m = st.add_seat(&m).expect("add");
        let long_lived = m.mutual_secret.expect("mutual seat");
        let a = st
            .offer_boot("pc02", "10.0.0.5", "iqn.x:pc02")
            .expect("offer");
        let ta = a.target_secret.clone().expect("a target secret");
        assert_eq!(ta.len(), super::BOOT_SECRET_LEN);
        assert_ne!(ta, long_lived, "never the long-lived target secret");
        assert_ne!(ta, a.secret);
        let b = st
            .offer_boot("pc02", "10.0.0.5", "iqn.x:pc02")
            .expect("offer");
        assert_ne!(b.target_secret, a.target_secret, "fresh per offer");
        let running = st
            .begin_boot("pc02", &b.user)
            .expect("begin")
            .expect("once");
        assert_eq!(
            running.current.and_then(|c| c.target_secret),
            b.target_secret,
            "the boot keeps the secret its script carried"
        );
        let one_way = st
            .offer_boot("pc01", "10.0.0.6", "iqn.x:pc01")
            .expect("offer");
        assert_eq!(one_way.target_secret, None);
    }

    #[test]
    fn tokens_are_alphanumeric() {
        let t = super::random_token(200).expect("rand");
        assert_eq!(t.len(), 200);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
