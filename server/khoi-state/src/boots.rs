//! The `seat_boots` table: each seat's current boot, its one-boot iSCSI
//! credentials, and the fence.
//!
//! A boot starts when a seat fetches its iPXE script. That mints a CHAP user
//! and secret for this boot only, bound to the address that fetched the script
//! and the initiator name the script sets; the row replaces the seat's previous
//! boot, so the previous credentials stop working at once. They live here, not
//! in memory, so Windows' reconnects keep working across a Khoi restart.
//!
//! CHAP-MD5 needs the secret itself on the target side (the response is a hash
//! over it and a fresh challenge), so it cannot be stored hashed; it is
//! protected by the database file's permissions and dies with the boot.
//!
//! Fencing a seat marks its current boot: the credentials are refused from then
//! on, until the seat's next boot replaces the row.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Result, State, StateError, now};

/// One seat's current boot.
#[derive(Clone, PartialEq, Eq)]
pub struct Boot {
    pub seat: String,
    /// Counts the seat's boots, so a login can tell which boot it belongs to.
    pub boot_id: i64,
    pub chap_user: String,
    pub chap_secret: String,
    /// The address that fetched the script: the only one that may log in.
    pub peer: String,
    /// The InitiatorName the script set: the only one that may log in.
    pub initiator: String,
    /// Unix seconds.
    pub started: i64,
    /// When this boot's credentials first logged in (the on-boot reset point).
    pub first_login: Option<i64>,
    /// When and why the seat was fenced during this boot.
    pub fenced: Option<(i64, String)>,
    /// The previous boot's CHAP user, to name a login with stale credentials.
    pub prev_chap_user: Option<String>,
}

impl std::fmt::Debug for Boot {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boot")
            .field("seat", &self.seat)
            .field("boot_id", &self.boot_id)
            .field("chap_user", &self.chap_user)
            .field("peer", &self.peer)
            .field("initiator", &self.initiator)
            .field("started", &self.started)
            .field("first_login", &self.first_login)
            .field("fenced", &self.fenced)
            .finish_non_exhaustive()
    }
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
                       first_login, fenced, fence_reason, prev_chap_user";

fn row(r: &Row<'_>) -> rusqlite::Result<Boot> {
    let fenced: Option<i64> = r.get(8)?;
    let reason: Option<String> = r.get(9)?;
    Ok(Boot {
        seat: r.get(0)?,
        boot_id: r.get(1)?,
        chap_user: r.get(2)?,
        chap_secret: r.get(3)?,
        peer: r.get(4)?,
        initiator: r.get(5)?,
        started: r.get(6)?,
        first_login: r.get(7)?,
        fenced: fenced.map(|t| (t, reason.unwrap_or_default())),
        prev_chap_user: r.get(10)?,
    })
}

impl State {
    /// Start a boot of `seat` requested from `peer` with `initiator`: fresh
    /// credentials replace the previous boot's (and lift a fence).
    pub fn start_boot(&self, seat: &str, peer: &str, initiator: &str) -> Result<Boot> {
        let user = format!("{seat}.{}", random_token(8)?);
        let secret = random_token(BOOT_SECRET_LEN)?;
        let conn = self.conn.lock();
        let prev: Option<(i64, String)> = conn
            .query_row(
                "SELECT boot_id, chap_user FROM seat_boots WHERE seat = ?1",
                [seat],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let boot_id = prev.as_ref().map_or(1, |(id, _)| id + 1);
        let n = conn.execute(
            "INSERT OR REPLACE INTO seat_boots
               (seat, boot_id, chap_user, chap_secret, peer, initiator, started,
                first_login, fenced, fence_reason, prev_chap_user)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, NULL, ?8
             WHERE EXISTS (SELECT 1 FROM seats WHERE name = ?1)",
            params![
                seat,
                boot_id,
                user,
                secret,
                peer,
                initiator,
                now(),
                prev.map(|(_, u)| u)
            ],
        )?;
        if n == 0 {
            return Err(StateError::NoSuchSeat(seat.to_string()));
        }
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM seat_boots WHERE seat = ?1"),
            [seat],
            row,
        )
        .map_err(Into::into)
    }

    /// The seat's current boot, if it has booted since boots were recorded.
    pub fn current_boot(&self, seat: &str) -> Result<Option<Boot>> {
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

    /// Every seat's current boot, for the seat list.
    pub fn boots(&self) -> Result<Vec<Boot>> {
        let conn = self.conn.lock();
        let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM seat_boots ORDER BY seat"))?;
        let rows = st.query_map([], row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Into::into)
    }

    /// Fence the seat's current boot: its credentials are refused until the
    /// next boot. Returns true if a boot was fenced now (false if the seat has
    /// no boot or was already fenced, which keeps the first reason).
    pub fn fence_seat(&self, seat: &str, reason: &str) -> Result<bool> {
        let n = self.conn.lock().execute(
            "UPDATE seat_boots SET fenced = ?2, fence_reason = ?3
             WHERE seat = ?1 AND fenced IS NULL",
            params![seat, now(), reason],
        )?;
        Ok(n > 0)
    }

    /// Record the first login of boot `boot_id`. True exactly once per boot,
    /// for the caller that should do what happens at a boot's first login.
    pub fn claim_first_login(&self, seat: &str, boot_id: i64) -> Result<bool> {
        let n = self.conn.lock().execute(
            "UPDATE seat_boots SET first_login = ?3
             WHERE seat = ?1 AND boot_id = ?2 AND first_login IS NULL AND fenced IS NULL",
            params![seat, boot_id, now()],
        )?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use crate::State;
    use crate::test_seat as seat;

    #[test]
    fn each_boot_gets_new_credentials_and_ends_the_last() {
        let st = State::open_in_memory().expect("db");
        st.add_seat(&seat("pc01", "02:00:00:00:00:01"))
            .expect("add");
        let a = st
            .start_boot("pc01", "10.0.0.5", "iqn.x:pc01")
            .expect("boot");
        let stored = st.seat("pc01").expect("seat");
        assert_ne!(
            a.chap_secret, stored.chap_secret,
            "never the long-lived secret"
        );
        assert_eq!(a.chap_secret.len(), super::BOOT_SECRET_LEN);
        assert!(a.chap_user.starts_with("pc01."));
        let b = st
            .start_boot("pc01", "10.0.0.6", "iqn.x:pc01")
            .expect("boot");
        assert_ne!(a.chap_secret, b.chap_secret);
        assert_ne!(a.chap_user, b.chap_user);
        assert_eq!(b.boot_id, a.boot_id + 1);
        assert_eq!(b.prev_chap_user.as_deref(), Some(a.chap_user.as_str()));
        assert_eq!(st.current_boot("pc01").expect("q"), Some(b));
        assert!(st.start_boot("nope", "10.0.0.5", "iqn.x:y").is_err());
    }

    #[test]
    fn fence_until_next_boot_and_first_login_once() {
        let st = State::open_in_memory().expect("db");
        st.add_seat(&seat("pc01", "02:00:00:00:00:01"))
            .expect("add");
        assert!(
            !st.fence_seat("pc01", "reset").expect("fence"),
            "no boot yet"
        );
        let a = st
            .start_boot("pc01", "10.0.0.5", "iqn.x:pc01")
            .expect("boot");
        assert!(st.claim_first_login("pc01", a.boot_id).expect("claim"));
        assert!(!st.claim_first_login("pc01", a.boot_id).expect("claim"));
        assert!(st.fence_seat("pc01", "admin reset").expect("fence"));
        assert!(!st.fence_seat("pc01", "again").expect("fence"));
        let cur = st.current_boot("pc01").expect("q").expect("boot");
        assert_eq!(cur.fenced.map(|(_, r)| r).as_deref(), Some("admin reset"));
        let b = st
            .start_boot("pc01", "10.0.0.5", "iqn.x:pc01")
            .expect("boot");
        assert_eq!(b.fenced, None);
        assert!(!st.claim_first_login("pc01", a.boot_id).expect("stale boot"));
        assert!(st.claim_first_login("pc01", b.boot_id).expect("claim"));
    }

    #[test]
    fn boots_survive_reopen_and_go_with_the_seat() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("khoi.db");
        let a = {
            let st = State::open(&path).expect("open");
            st.add_seat(&seat("pc01", "02:00:00:00:00:01"))
                .expect("add");
            st.start_boot("pc01", "10.0.0.5", "iqn.x:pc01")
                .expect("boot")
        };
        let st = State::open(&path).expect("reopen");
        assert_eq!(st.current_boot("pc01").expect("q"), Some(a));
        st.remove_seat("pc01").expect("rm");
        assert_eq!(st.boots().expect("list"), vec![]);
    }

    #[test]
    fn tokens_are_alphanumeric() {
        let t = super::random_token(200).expect("rand");
        assert_eq!(t.len(), 200);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
