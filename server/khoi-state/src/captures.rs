//! The `captures` table: a seat in capture mode and the progress of its copy.
//!
//! An admin *arms* a capture of a seat into a new image name. The seat's next
//! script fetch gets the capture environment instead of its image and an
//! HTTP token bound to the fetching address (*offered*; every fetch mints a
//! new token, so a forged fetch only takes the capture over from its own
//! address, which the running environment would then fail loudly on). The
//! environment reports the source disk with that token from that address,
//! once: the image and its draft are created and the draft target's CHAP
//! credentials minted (*copying*). It then reports progress and the result
//! (*done*, *held* by the image gate, *refused*, *failed*). The last capture's row stays for the page
//! until the seat is armed again.
//!
//! The token and CHAP secret live here for the reason the boot credentials
//! do: the environment and its iSCSI session must survive a Khoi restart.

use rusqlite::{OptionalExtension, Row, params};

use crate::boots::random_token;
use crate::{BOOT_SECRET_LEN, Result, State, StateError, now};

/// Where a capture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureStatus {
    /// Asked for; the seat has not fetched its script since.
    Armed,
    /// The script (the capture environment) was fetched; the environment has
    /// not reported its disk yet.
    Offered,
    /// The environment is copying into the draft.
    Copying,
    /// Published as the image's first version.
    Done,
    /// Copied, but the image gate refused the publish: the draft waits for a
    /// fix or an admin's override.
    Held,
    /// The source may not be captured (hibernated or dirty NTFS).
    Refused,
    /// Anything else went wrong; the message says what.
    Failed,
}

impl CaptureStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureStatus::Armed => "armed",
            CaptureStatus::Offered => "offered",
            CaptureStatus::Copying => "copying",
            CaptureStatus::Done => "done",
            CaptureStatus::Held => "held",
            CaptureStatus::Refused => "refused",
            CaptureStatus::Failed => "failed",
        }
    }

    /// The page's wording key (`capture.<status>`).
    pub fn key(self) -> &'static str {
        match self {
            CaptureStatus::Armed => "capture.armed",
            CaptureStatus::Offered => "capture.offered",
            CaptureStatus::Copying => "capture.copying",
            CaptureStatus::Done => "capture.done",
            CaptureStatus::Held => "capture.held",
            CaptureStatus::Refused => "capture.refused",
            CaptureStatus::Failed => "capture.failed",
        }
    }

    fn parse(s: &str) -> CaptureStatus {
        match s {
            "armed" => CaptureStatus::Armed,
            "offered" => CaptureStatus::Offered,
            "copying" => CaptureStatus::Copying,
            "done" => CaptureStatus::Done,
            "held" => CaptureStatus::Held,
            "refused" => CaptureStatus::Refused,
            _ => CaptureStatus::Failed,
        }
    }

    /// The seat's next boot (or the running one) is a capture.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            CaptureStatus::Armed | CaptureStatus::Offered | CaptureStatus::Copying
        )
    }
}

/// One seat's capture.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct Capture {
    pub seat: String,
    pub image: String,
    pub requested_by: String,
    pub requested: i64,
    pub status: CaptureStatus,
    /// The environment's HTTP token (offered and later).
    #[serde(skip)]
    pub token: Option<String>,
    /// The address that fetched the environment: the only one it works from.
    pub peer: Option<String>,
    #[serde(skip)]
    pub chap_user: Option<String>,
    #[serde(skip)]
    pub chap_secret: Option<String>,
    pub initiator: Option<String>,
    /// This capture created `image` (so a failure removes it again).
    pub image_created: bool,
    pub source_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    pub done_bytes: Option<u64>,
    /// Bytes per second, as the environment last measured it.
    pub rate: Option<u64>,
    pub started: Option<i64>,
    pub updated: Option<i64>,
    pub finished: Option<i64>,
    pub message: Option<String>,
}

impl std::fmt::Debug for Capture {
    // The token and secret never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("seat", &self.seat)
            .field("image", &self.image)
            .field("status", &self.status)
            .field("peer", &self.peer)
            .field("done_bytes", &self.done_bytes)
            .field("total_bytes", &self.total_bytes)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "seat, image, requested_by, requested, status, token, peer, chap_user, \
                       chap_secret, initiator, image_created, source_bytes, total_bytes, \
                       done_bytes, rate, started, updated, finished, message";

fn bytes(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(r.get::<_, Option<i64>>(i)?
        .map(|v| u64::try_from(v).unwrap_or(0)))
}

fn row(r: &Row<'_>) -> rusqlite::Result<Capture> {
    Ok(Capture {
        seat: r.get(0)?,
        image: r.get(1)?,
        requested_by: r.get(2)?,
        requested: r.get(3)?,
        status: CaptureStatus::parse(&r.get::<_, String>(4)?),
        token: r.get(5)?,
        peer: r.get(6)?,
        chap_user: r.get(7)?,
        chap_secret: r.get(8)?,
        initiator: r.get(9)?,
        image_created: r.get::<_, i64>(10)? != 0,
        source_bytes: bytes(r, 11)?,
        total_bytes: bytes(r, 12)?,
        done_bytes: bytes(r, 13)?,
        rate: bytes(r, 14)?,
        started: r.get(15)?,
        updated: r.get(16)?,
        finished: r.get(17)?,
        message: r.get(18)?,
    })
}

fn sql_bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Length of the environment's HTTP token (about 190 bits).
pub const CAPTURE_TOKEN_LEN: usize = 32;

impl State {
    /// Put `seat` in capture mode into `image`, replacing a finished capture.
    /// Refused while the seat's capture is running or another seat captures
    /// into the same name.
    pub fn arm_capture(&self, seat: &str, image: &str, by: &str) -> Result<Capture> {
        let conn = self.conn.lock();
        let busy: Option<String> = conn
            .query_row(
                "SELECT seat FROM captures WHERE image = ?1 AND seat <> ?2
                   AND status IN ('armed', 'offered', 'copying')",
                params![image, seat],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = busy {
            return Err(StateError::Invalid {
                field: "image",
                reason: format!("seat {other:?} is already being captured into {image:?}"),
            });
        }
        let n = conn.execute(
            "INSERT INTO captures (seat, image, requested_by, requested, status)
             SELECT ?1, ?2, ?3, ?4, 'armed' WHERE EXISTS (SELECT 1 FROM seats WHERE name = ?1)
             ON CONFLICT (seat) DO UPDATE SET
               image = excluded.image, requested_by = excluded.requested_by,
               requested = excluded.requested, status = 'armed', token = NULL, peer = NULL,
               chap_user = NULL, chap_secret = NULL, initiator = NULL, image_created = 0,
               source_bytes = NULL, total_bytes = NULL, done_bytes = NULL, rate = NULL,
               started = NULL, updated = NULL, finished = NULL, message = NULL
             WHERE captures.status NOT IN ('copying')",
            params![seat, image, by, now()],
        )?;
        if n == 0 {
            drop(conn);
            if self.capture(seat)?.is_some() {
                return Err(StateError::Invalid {
                    field: "seat",
                    reason: format!(
                        "seat {seat:?} is copying its disk now; wait for the result or cancel it"
                    ),
                });
            }
            return Err(StateError::NoSuchSeat(seat.to_string()));
        }
        drop(conn);
        self.capture(seat)?
            .ok_or_else(|| StateError::NoSuchSeat(seat.to_string()))
    }

    /// The seat's last capture, if any.
    pub fn capture(&self, seat: &str) -> Result<Option<Capture>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM captures WHERE seat = ?1"),
                [seat],
                row,
            )
            .optional()?)
    }

    /// Every seat's last capture.
    pub fn captures(&self) -> Result<Vec<Capture>> {
        let conn = self.conn.lock();
        let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM captures ORDER BY seat"))?;
        let rows = st.query_map([], row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Into::into)
    }

    /// The capture an environment's token belongs to.
    pub fn capture_by_token(&self, token: &str) -> Result<Option<Capture>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM captures WHERE token = ?1"),
                [token],
                row,
            )
            .optional()?)
    }

    /// The seat fetched its script from `peer` while in capture mode: a new
    /// token for the environment, bound to `peer`. A capture that was copying
    /// starts over (the seat rebooted mid-copy). `None` if the seat is not in
    /// capture mode.
    pub fn offer_capture(&self, seat: &str, peer: &str) -> Result<Option<Capture>> {
        let token = random_token(CAPTURE_TOKEN_LEN)?;
        let n = self.conn.lock().execute(
            "UPDATE captures SET status = 'offered', token = ?2, peer = ?3, chap_user = NULL,
               chap_secret = NULL, initiator = NULL, done_bytes = NULL, rate = NULL,
               updated = ?4, message = NULL
             WHERE seat = ?1 AND status IN ('armed', 'offered', 'copying')",
            params![seat, token, peer, now()],
        )?;
        if n == 0 {
            return Ok(None);
        }
        self.capture(seat)
    }

    /// The environment with `token` reported a source disk of `size` bytes,
    /// `total` of which it will copy: mint the draft target's credentials.
    /// Succeeds once per token (`None` afterwards, or for a stale token).
    pub fn begin_capture_copy(
        &self,
        token: &str,
        size: u64,
        total: u64,
        initiator: &str,
        image_created: bool,
    ) -> Result<Option<Capture>> {
        let user = format!("capture.{}", random_token(8)?);
        let secret = random_token(BOOT_SECRET_LEN)?;
        let t = now();
        let n = self.conn.lock().execute(
            "UPDATE captures SET status = 'copying', chap_user = ?2, chap_secret = ?3,
               initiator = ?4, image_created = ?5, source_bytes = ?6, total_bytes = ?7,
               done_bytes = 0, rate = 0, started = ?8, updated = ?8
             WHERE token = ?1 AND status = 'offered'",
            params![
                token,
                user,
                secret,
                initiator,
                i64::from(image_created),
                sql_bytes(size),
                sql_bytes(total),
                t
            ],
        )?;
        if n == 0 {
            return Ok(None);
        }
        self.capture_by_token(token)
    }

    /// Progress of a copying capture. False if the token is not copying.
    pub fn capture_progress(&self, token: &str, done: u64, total: u64, rate: u64) -> Result<bool> {
        let n = self.conn.lock().execute(
            "UPDATE captures SET done_bytes = ?2, total_bytes = MAX(?3, ?2), rate = ?4,
               updated = ?5
             WHERE token = ?1 AND status = 'copying'",
            params![
                token,
                sql_bytes(done),
                sql_bytes(total),
                sql_bytes(rate),
                now()
            ],
        )?;
        Ok(n > 0)
    }

    /// The capture of `seat` ended with `status` (done, refused, failed) and
    /// `message`; the seat leaves capture mode and the token and credentials
    /// die. False if it was not active.
    pub fn finish_capture(&self, seat: &str, status: CaptureStatus, message: &str) -> Result<bool> {
        if status.is_active() {
            return Err(StateError::Invalid {
                field: "status",
                reason: format!("{} does not end a capture", status.as_str()),
            });
        }
        let n = self.conn.lock().execute(
            "UPDATE captures SET status = ?2, message = ?3, finished = ?4, updated = ?4,
               token = NULL, chap_user = NULL, chap_secret = NULL
             WHERE seat = ?1 AND status IN ('armed', 'offered', 'copying')",
            params![seat, status.as_str(), message, now()],
        )?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_seat as seat;

    fn db() -> State {
        let st = State::open_in_memory().expect("db");
        st.add_seat(&seat("pc01", "02:00:00:00:00:01"))
            .expect("add");
        st.add_seat(&seat("pc02", "02:00:00:00:00:02"))
            .expect("add");
        st
    }

    #[test]
    fn a_capture_runs_through_its_states_once() {
        let st = db();
        assert!(
            st.offer_capture("pc01", "10.0.0.5")
                .expect("offer")
                .is_none()
        );
        let c = st.arm_capture("pc01", "win11", "alice").expect("arm");
        assert_eq!(
            (c.status, c.image.as_str()),
            (CaptureStatus::Armed, "win11")
        );
        assert!(matches!(
            st.arm_capture("pc02", "win11", "bob"),
            Err(StateError::Invalid { field: "image", .. })
        ));
        assert!(matches!(
            st.arm_capture("nope", "x", "bob"),
            Err(StateError::NoSuchSeat(_))
        ));
        let first = st
            .offer_capture("pc01", "10.0.0.5")
            .expect("offer")
            .expect("armed");
        let c = st
            .offer_capture("pc01", "10.0.0.5")
            .expect("offer")
            .expect("armed");
        let token = c.token.clone().expect("token");
        assert_ne!(first.token, c.token, "every fetch mints a new token");
        assert!(
            st.capture_by_token(first.token.as_deref().expect("t"))
                .expect("q")
                .is_none()
        );
        assert!(
            !st.capture_progress(&token, 1, 2, 3).expect("p"),
            "not copying yet"
        );
        let c = st
            .begin_capture_copy(&token, 1 << 30, 1 << 20, "iqn.x:pc01", true)
            .expect("begin")
            .expect("offered");
        assert_eq!(c.status, CaptureStatus::Copying);
        assert!(c.chap_user.is_some() && c.chap_secret.as_ref().is_some_and(|s| s.len() == 16));
        assert!(
            st.begin_capture_copy(&token, 1 << 30, 1 << 20, "iqn.x:pc01", true)
                .expect("again")
                .is_none(),
            "the target's credentials are minted once"
        );
        assert!(matches!(
            st.arm_capture("pc01", "other", "bob"),
            Err(StateError::Invalid { field: "seat", .. })
        ));
        assert!(
            st.capture_progress(&token, 512 << 10, 1 << 20, 4096)
                .expect("p")
        );
        let c = st.capture("pc01").expect("q").expect("row");
        assert_eq!((c.done_bytes, c.rate), (Some(512 << 10), Some(4096)));
        assert!(
            st.finish_capture("pc01", CaptureStatus::Done, "version 1")
                .expect("f")
        );
        assert!(
            !st.finish_capture("pc01", CaptureStatus::Failed, "x")
                .expect("f")
        );
        let c = st.capture("pc01").expect("q").expect("row");
        assert_eq!(c.status, CaptureStatus::Done);
        assert!(
            c.token.is_none() && c.chap_secret.is_none(),
            "credentials die"
        );
        assert!(st.capture_by_token(&token).expect("q").is_none());
        assert!(
            st.offer_capture("pc01", "10.0.0.5").expect("o").is_none(),
            "left capture mode"
        );
        // Armed again after the result: a fresh row.
        let c = st.arm_capture("pc01", "win11b", "alice").expect("re-arm");
        assert_eq!((c.status, c.done_bytes), (CaptureStatus::Armed, None));
        assert!(
            st.finish_capture("pc01", CaptureStatus::Copying, "x")
                .is_err()
        );
    }

    #[test]
    fn removing_the_seat_removes_its_capture() {
        let st = db();
        st.arm_capture("pc01", "win11", "alice").expect("arm");
        st.remove_seat("pc01").expect("remove");
        assert!(st.captures().expect("list").is_empty());
    }
}
