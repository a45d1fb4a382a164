//! Table definitions, applied in order and counted in `PRAGMA user_version`,
//! so an older database is brought forward on open and a newer one refused.

use rusqlite::Connection;

use crate::{Result, StateError};

/// Migrations in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE seats (
    name TEXT PRIMARY KEY,
    mac TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    pinned_version INTEGER,
    active_version INTEGER,
    policy TEXT NOT NULL CHECK (policy IN ('on-boot', 'nightly', 'persistent')),
    quota INTEGER NOT NULL DEFAULT 0,
    chap_user TEXT NOT NULL,
    chap_secret TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_subject ON events (subject);
"#,
    r#"
ALTER TABLE seats ADD COLUMN initiator_iqn TEXT;
ALTER TABLE seats ADD COLUMN mutual_secret TEXT;
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE seats ADD COLUMN maintenance INTEGER NOT NULL DEFAULT 0;
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    hash TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX events_kind ON events (kind);
"#,
    // The values in an event's detail, by name, so pages can word it in the
    // reader's language; `detail` keeps the English sentence for logs and CSV.
    r#"
ALTER TABLE events ADD COLUMN args TEXT NOT NULL DEFAULT '';
"#,
    // Each seat's current boot: one-boot CHAP credentials and the fence
    // (see `boots`). A row goes with its seat.
    r#"
CREATE TABLE seat_boots (
    seat TEXT PRIMARY KEY REFERENCES seats (name) ON DELETE CASCADE,
    boot_id INTEGER NOT NULL DEFAULT 0,
    chap_user TEXT,
    chap_secret TEXT,
    peer TEXT,
    initiator TEXT,
    started INTEGER,
    fenced INTEGER,
    fence_reason TEXT,
    prev_chap_user TEXT,
    pending_user TEXT,
    pending_secret TEXT,
    pending_peer TEXT,
    pending_initiator TEXT,
    pending_started INTEGER
);
"#,
    // The image gate: each image's profile and policy (JSON), and the
    // result of the check per version with any admin override.
    r#"
CREATE TABLE image_gate (
    image TEXT PRIMARY KEY,
    profile TEXT NOT NULL CHECK (profile IN ('counter', 'kiosk')),
    policy TEXT NOT NULL
);
CREATE TABLE gate_results (
    image TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('passed', 'warnings', 'failed')),
    report TEXT NOT NULL,
    checked INTEGER NOT NULL,
    checked_by TEXT NOT NULL,
    override_by TEXT,
    override_reason TEXT,
    PRIMARY KEY (image, version)
);
"#,
    // Mutual CHAP per boot: the secret the target proves itself with is
    // minted with each boot's credentials, so a script never carries a
    // long-lived one.
    r#"
ALTER TABLE seat_boots ADD COLUMN target_secret TEXT;
ALTER TABLE seat_boots ADD COLUMN pending_target_secret TEXT;
"#,
    // The boot network each seat is answered on (NULL: the config's first).
    r#"
ALTER TABLE seats ADD COLUMN network TEXT;
"#,
    // Each seat's recent boots: when each step happened (unix ms) and the
    // bytes read (see `boot_times`); bounded per seat, gone with the seat.
    r#"
CREATE TABLE boot_times (
    id INTEGER PRIMARY KEY,
    seat TEXT NOT NULL REFERENCES seats (name) ON DELETE CASCADE,
    started INTEGER NOT NULL,
    dhcp INTEGER,
    tftp INTEGER,
    script INTEGER,
    login INTEGER,
    handover INTEGER,
    bytes_read INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX boot_times_seat ON boot_times (seat, started);
CREATE INDEX boot_times_started ON boot_times (started);
"#,
    // Capture mode: a seat's next network boot copies its local disk into a
    // new image. One row per seat, the last capture (kept for the page).
    r#"
CREATE TABLE captures (
    seat TEXT PRIMARY KEY REFERENCES seats (name) ON DELETE CASCADE,
    image TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested INTEGER NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('armed', 'offered', 'copying', 'done', 'held', 'refused', 'failed')),
    token TEXT UNIQUE,
    peer TEXT,
    chap_user TEXT,
    chap_secret TEXT,
    initiator TEXT,
    image_created INTEGER NOT NULL DEFAULT 0,
    source_bytes INTEGER,
    total_bytes INTEGER,
    done_bytes INTEGER,
    rate INTEGER,
    started INTEGER,
    updated INTEGER,
    finished INTEGER,
    message TEXT
);
"#,
];

/// Runs the migrations `conn` has not seen yet, each in its own transaction
/// so a failure leaves the database at the last complete version.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StateError::TooNew {
            found: version,
            known,
        });
    }
    let start = usize::try_from(version).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::State;
    use crate::test_seat as seat;

    #[test]
    fn reopen_keeps_data_and_schema() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("khoi.db");
        {
            let st = State::open(&path).expect("open");
            st.add_seat(&seat("a", "02:00:00:00:00:01")).expect("add");
        }
        let st = State::open(&path).expect("reopen");
        assert_eq!(st.seats().expect("list").len(), 1);
    }
}
