//! Khoi's mutable state in SQLite: seats and the audit/event log.
//!
//! Image bytes, layer stacks and version manifests belong to the block store
//! (`khoi-block`), which keeps them next to the data they describe so a
//! publish is one atomic rename there. This database holds what the admin
//! decides (seats, assignments, policies) and what happened (events).
//!
//! One connection behind a mutex: every statement here is a small indexed
//! lookup or insert, far off the block path, so there is no pool to tune.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("seat {0:?} does not exist")]
    NoSuchSeat(String),
    #[error("a seat named {0:?} already exists")]
    SeatExists(String),
    #[error("MAC address {mac} is already used by seat {seat:?}")]
    MacInUse { mac: String, seat: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("state database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(
        "state database was written by a newer Khoi (schema {found}, this build knows {known})"
    )]
    TooNew { found: i64, known: i64 },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// When a seat's overlay is thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetPolicy {
    /// At every boot (the boot-script fetch) and at the nightly reset.
    OnBoot,
    /// Only at the nightly reset.
    Nightly,
    /// Only when the admin resets it.
    Persistent,
}

impl ResetPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetPolicy::OnBoot => "on-boot",
            ResetPolicy::Nightly => "nightly",
            ResetPolicy::Persistent => "persistent",
        }
    }
}

impl fmt::Display for ResetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResetPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on-boot" => Ok(ResetPolicy::OnBoot),
            "nightly" => Ok(ResetPolicy::Nightly),
            "persistent" => Ok(ResetPolicy::Persistent),
            other => Err(format!(
                "unknown reset policy {other:?} (expected on-boot, nightly or persistent)"
            )),
        }
    }
}

/// A MAC address in canonical lower-case colon form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-…` and bare `aabbccddeeff`, any case,
    /// because admins copy MACs from stickers, Windows and switch tables.
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
        let bad = || format!("{s:?} is not a MAC address (expected like 52:54:00:12:34:56)");
        if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    pub name: String,
    pub mac: String,
    pub image: String,
    /// `None` follows the image's current version.
    pub pinned_version: Option<u32>,
    /// The version the seat's overlay is made against; it changes only at a
    /// reset (boot, nightly, or admin), never under a running seat.
    pub active_version: Option<u32>,
    pub policy: ResetPolicy,
    /// Overlay quota in bytes; 0 means the server default.
    pub quota: u64,
    pub chap_user: String,
    pub chap_secret: String,
    /// Only this initiator IQN may log in to the seat's target.
    pub initiator_iqn: Option<String>,
    /// The secret the target proves itself with when mutual CHAP is on.
    pub mutual_secret: Option<String>,
    pub created: i64,
    /// The seat boots its image's draft (maintenance overlay) instead of its
    /// own overlay, so an admin can change the golden image from it.
    pub maintenance: bool,
}

#[derive(Debug, Clone)]
pub struct NewSeat {
    pub name: String,
    pub mac: Mac,
    pub image: String,
    pub pinned_version: Option<u32>,
    pub policy: ResetPolicy,
    pub quota: u64,
    pub initiator_iqn: Option<String>,
    pub mutual_chap: bool,
}

/// What an admin may change on an existing seat; `None` keeps the value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeatUpdate {
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    /// `Some(None)` unpins (follow the image's current version).
    #[serde(default, with = "double_option")]
    pub pinned_version: Option<Option<u32>>,
    #[serde(default)]
    pub policy: Option<ResetPolicy>,
    #[serde(default)]
    pub quota: Option<u64>,
    #[serde(default)]
    pub maintenance: Option<bool>,
}

/// Tells an absent field (keep) from an explicit `null` (clear).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Option<u32>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(inner) => inner.serialize(s),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
        Option::<u32>::deserialize(d).map(Some)
    }
}

/// An administrator of the web page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: String,
    /// argon2 PHC string; never sent to a browser.
    #[serde(skip_serializing, default)]
    pub hash: String,
    pub created: i64,
}

/// Which events to list; every field narrows the result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventFilter {
    /// Exact subject (a seat, image or MAC).
    pub subject: Option<String>,
    /// Kind prefix: `seat.` matches `seat.add` and `seat.reset`.
    pub kind: Option<String>,
    pub actor: Option<String>,
    /// Substring of subject or detail.
    pub text: Option<String>,
    /// Unix seconds, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: u32,
}

/// A MAC that asked to boot but belongs to no seat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownMac {
    pub mac: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: i64,
    /// The detail of the latest request (address, architecture).
    pub detail: String,
    /// The values of that detail, by name (see `Event::args`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    /// Unix seconds.
    pub ts: i64,
    /// Machine-readable kind, e.g. `seat.add`, `seat.reset`, `overlay.quota`.
    pub kind: String,
    /// Who: `local:<user>`, a web user name, or `khoi` for the server itself.
    pub actor: String,
    /// From where: a socket address, `cli`, or `-`.
    pub source: String,
    /// What it is about: a seat, image or MAC.
    pub subject: String,
    pub detail: String,
    /// The values in `detail`, by name (empty for kinds that carry none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// An event to record; the id and time are assigned on insert.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub kind: &'a str,
    pub actor: &'a str,
    pub source: &'a str,
    pub subject: &'a str,
    pub detail: &'a str,
    pub args: &'a [(&'a str, &'a str)],
}

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
];

#[derive(Debug)]
pub struct State {
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Seat names become iSCSI IQN suffixes, NBD export names and file names, so
/// they are kept to characters that are safe in all three.
pub fn validate_name(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid {
            field,
            reason: format!(
                "{name:?}: use 1-64 characters a-z, 0-9, '-' and '.', not starting with '-' or '.'"
            ),
        })
    }
}

/// A CHAP secret the Microsoft initiator accepts (it demands 12-16 characters).
fn generate_secret() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| StateError::Invalid {
        field: "chap_secret",
        reason: format!("no randomness available: {e}"),
    })?;
    Ok(raw
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

fn seat_from_row(row: &Row<'_>) -> rusqlite::Result<Seat> {
    let policy: String = row.get("policy")?;
    Ok(Seat {
        name: row.get("name")?,
        mac: row.get("mac")?,
        image: row.get("image")?,
        pinned_version: row.get("pinned_version")?,
        active_version: row.get("active_version")?,
        // The CHECK constraint keeps anything else out of the column.
        policy: policy.parse().unwrap_or(ResetPolicy::OnBoot),
        quota: row.get::<_, i64>("quota")?.try_into().unwrap_or(0),
        chap_user: row.get("chap_user")?,
        chap_secret: row.get("chap_secret")?,
        initiator_iqn: row.get("initiator_iqn")?,
        mutual_secret: row.get("mutual_secret")?,
        created: row.get("created")?,
        maintenance: row.get::<_, i64>("maintenance")? != 0,
    })
}

fn encode_args(args: &[(&str, &str)]) -> String {
    if args.is_empty() {
        return String::new();
    }
    let map: BTreeMap<&str, &str> = args.iter().copied().collect();
    serde_json::to_string(&map).unwrap_or_default()
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: row.get("id")?,
        ts: row.get("ts")?,
        kind: row.get("kind")?,
        actor: row.get("actor")?,
        source: row.get("source")?,
        subject: row.get("subject")?,
        detail: row.get("detail")?,
        // Rows from before the column, or unreadable ones, just have none.
        args: serde_json::from_str(&row.get::<_, String>("args")?).unwrap_or_default(),
    })
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: row.get("name")?,
        role: row.get("role")?,
        hash: row.get("hash")?,
        created: row.get("created")?,
    })
}

/// User names appear in the audit log and CSV exports: printable, short,
/// no separators that would make a log line ambiguous.
pub fn validate_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= 32
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid {
            field: "name",
            reason: format!("{name:?}: use 1-32 letters, digits, '-', '_', '.' or '@'"),
        })
    }
}

fn quota_param(q: u64) -> i64 {
    i64::try_from(q).unwrap_or(i64::MAX)
}

impl State {
    /// Open (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<State> {
        let conn = Connection::open(path).map_err(|source| StateError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<State> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<State> {
        // WAL lets the admin page read while the server records events;
        // synchronous=FULL because an acknowledged admin change must survive
        // a power cut like a flushed seat write does.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
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
        Ok(State {
            conn: Mutex::new(conn),
        })
    }

    pub fn add_seat(&self, new: &NewSeat) -> Result<Seat> {
        validate_name("name", &new.name)?;
        if let Some(iqn) = &new.initiator_iqn
            && (!(iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa."))
                || iqn.len() > 223
                || iqn.contains(char::is_whitespace))
        {
            return Err(StateError::Invalid {
                field: "initiator_iqn",
                reason: format!("{iqn:?} is not an iSCSI name (iqn.…, eui.… or naa.…)"),
            });
        }
        let mac = new.mac.to_string();
        let secret = generate_secret()?;
        // Mutual CHAP needs a different secret in each direction (RFC 7143
        // 12.1.3 forbids reuse), so it gets its own.
        let mutual = if new.mutual_chap {
            Some(generate_secret()?)
        } else {
            None
        };
        let conn = self.conn.lock();
        if let Some(seat) = conn
            .query_row("SELECT name FROM seats WHERE mac = ?1", [&mac], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        {
            return Err(StateError::MacInUse { mac, seat });
        }
        let inserted = conn.execute(
            "INSERT INTO seats (name, mac, image, pinned_version, active_version, policy, quota,
                                chap_user, chap_secret, created, initiator_iqn, mutual_secret)
             VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (name) DO NOTHING",
            params![
                new.name,
                mac,
                new.image,
                new.pinned_version,
                new.policy.as_str(),
                quota_param(new.quota),
                new.name,
                secret,
                now(),
                new.initiator_iqn,
                mutual
            ],
        )?;
        if inserted == 0 {
            return Err(StateError::SeatExists(new.name.clone()));
        }
        drop(conn);
        self.seat(&new.name)
    }

    pub fn seat(&self, name: &str) -> Result<Seat> {
        self.conn
            .lock()
            .query_row("SELECT * FROM seats WHERE name = ?1", [name], seat_from_row)
            .optional()?
            .ok_or_else(|| StateError::NoSuchSeat(name.to_string()))
    }

    pub fn seat_by_mac(&self, mac: Mac) -> Result<Option<Seat>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT * FROM seats WHERE mac = ?1",
                [mac.to_string()],
                seat_from_row,
            )
            .optional()?)
    }

    pub fn seats(&self) -> Result<Vec<Seat>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached("SELECT * FROM seats ORDER BY name")?;
        let rows = stmt.query_map([], seat_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn seats_on_image(&self, image: &str) -> Result<Vec<Seat>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached("SELECT * FROM seats WHERE image = ?1 ORDER BY name")?;
        let rows = stmt.query_map([image], seat_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Record the version a seat's overlay is now made against.
    pub fn set_active_version(&self, seat: &str, version: Option<u32>) -> Result<()> {
        let n = self.conn.lock().execute(
            "UPDATE seats SET active_version = ?2 WHERE name = ?1",
            params![seat, version],
        )?;
        if n == 0 {
            return Err(StateError::NoSuchSeat(seat.to_string()));
        }
        Ok(())
    }

    pub fn remove_seat(&self, seat: &str) -> Result<()> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM seats WHERE name = ?1", [seat])?;
        if n == 0 {
            return Err(StateError::NoSuchSeat(seat.to_string()));
        }
        Ok(())
    }

    /// A value that identifies this installation, created on first use: it
    /// keeps SCSI device identifiers unique across Khoi servers.
    pub fn server_id(&self) -> Result<String> {
        let conn = self.conn.lock();
        if let Some(id) = conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'server_id'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            return Ok(id);
        }
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| StateError::Invalid {
            field: "server_id",
            reason: format!("no randomness available: {e}"),
        })?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        conn.execute(
            "INSERT OR IGNORE INTO settings (key, value) VALUES ('server_id', ?1)",
            [&id],
        )?;
        conn.query_row(
            "SELECT value FROM settings WHERE key = 'server_id'",
            [],
            |r| r.get(0),
        )
        .map_err(Into::into)
    }

    /// Change an existing seat; validation matches [`State::add_seat`].
    pub fn update_seat(&self, name: &str, up: &SeatUpdate) -> Result<Seat> {
        let old = self.seat(name)?;
        let mac = match &up.mac {
            Some(m) => m
                .parse::<Mac>()
                .map_err(|reason| StateError::Invalid {
                    field: "mac",
                    reason,
                })?
                .to_string(),
            None => old.mac.clone(),
        };
        let conn = self.conn.lock();
        if mac != old.mac
            && let Some(seat) = conn
                .query_row("SELECT name FROM seats WHERE mac = ?1", [&mac], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
        {
            return Err(StateError::MacInUse { mac, seat });
        }
        conn.execute(
            "UPDATE seats SET mac = ?2, image = ?3, pinned_version = ?4, policy = ?5, quota = ?6,
                              maintenance = ?7
             WHERE name = ?1",
            params![
                name,
                mac,
                up.image.as_ref().unwrap_or(&old.image),
                up.pinned_version.unwrap_or(old.pinned_version),
                up.policy.unwrap_or(old.policy).as_str(),
                quota_param(up.quota.unwrap_or(old.quota)),
                i64::from(up.maintenance.unwrap_or(old.maintenance)),
            ],
        )?;
        drop(conn);
        self.seat(name)
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .lock()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.lock().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- users ----

    pub fn users(&self) -> Result<Vec<User>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached("SELECT * FROM users ORDER BY name")?;
        let rows = stmt.query_map([], user_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn user(&self, name: &str) -> Result<Option<User>> {
        Ok(self
            .conn
            .lock()
            .query_row("SELECT * FROM users WHERE name = ?1", [name], user_from_row)
            .optional()?)
    }

    /// Insert or replace a user's role and hash.
    pub fn put_user(&self, name: &str, role: &str, hash: &str) -> Result<()> {
        validate_user_name(name)?;
        if !matches!(role, "admin" | "operator" | "viewer") {
            return Err(StateError::Invalid {
                field: "role",
                reason: format!("{role:?}: expected admin, operator or viewer"),
            });
        }
        self.conn.lock().execute(
            "INSERT INTO users (name, role, hash, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET role = excluded.role, hash = excluded.hash",
            params![name, role, hash, now()],
        )?;
        Ok(())
    }

    pub fn remove_user(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM users WHERE name = ?1", [name])?
            > 0)
    }

    // ---- events ----

    pub fn events_filtered(&self, f: &EventFilter) -> Result<Vec<Event>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT * FROM events
             WHERE (?1 IS NULL OR subject = ?1)
               AND (?2 IS NULL OR substr(kind, 1, length(?2)) = ?2)
               AND (?3 IS NULL OR actor = ?3)
               AND (?4 IS NULL OR instr(subject, ?4) > 0 OR instr(detail, ?4) > 0)
               AND (?5 IS NULL OR ts >= ?5)
               AND (?6 IS NULL OR ts <= ?6)
             ORDER BY id DESC LIMIT ?7",
        )?;
        let rows = stmt.query_map(
            params![
                f.subject, f.kind, f.actor, f.text, f.since, f.until, f.limit
            ],
            event_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// MACs recorded by the PXE server (`pxe.unknown_mac`, subject = MAC)
    /// that no seat has, newest first.
    pub fn unknown_macs(&self, limit: u32) -> Result<Vec<UnknownMac>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT lower(e.subject) AS mac, MIN(e.ts) AS first_seen, MAX(e.ts) AS last_seen,
                    COUNT(*) AS n,
                    (SELECT detail FROM events d WHERE d.kind = 'pxe.unknown_mac'
                       AND lower(d.subject) = lower(e.subject) ORDER BY d.id DESC LIMIT 1) AS detail,
                    (SELECT args FROM events d WHERE d.kind = 'pxe.unknown_mac'
                       AND lower(d.subject) = lower(e.subject) ORDER BY d.id DESC LIMIT 1) AS args
             FROM events e
             WHERE e.kind = 'pxe.unknown_mac'
               AND lower(e.subject) NOT IN (SELECT mac FROM seats)
             GROUP BY lower(e.subject)
             ORDER BY last_seen DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(UnknownMac {
                mac: r.get("mac")?,
                first_seen: r.get("first_seen")?,
                last_seen: r.get("last_seen")?,
                count: r.get("n")?,
                detail: r.get::<_, Option<String>>("detail")?.unwrap_or_default(),
                args: r
                    .get::<_, Option<String>>("args")?
                    .and_then(|a| serde_json::from_str(&a).ok())
                    .unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn record(&self, ev: &NewEvent<'_>) -> Result<i64> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO events (ts, kind, actor, source, subject, detail, args)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                now(),
                ev.kind,
                ev.actor,
                ev.source,
                ev.subject,
                ev.detail,
                encode_args(ev.args)
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Most recent events first; `subject` filters to one seat/image/MAC.
    pub fn events(&self, subject: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT * FROM events WHERE (?1 IS NULL OR subject = ?1)
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![subject, limit], event_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(name: &str, mac: &str) -> NewSeat {
        NewSeat {
            name: name.into(),
            mac: mac.parse().expect("valid mac"),
            image: "win10".into(),
            pinned_version: None,
            policy: ResetPolicy::OnBoot,
            quota: 0,
            initiator_iqn: None,
            mutual_chap: false,
        }
    }

    #[test]
    fn mac_forms() {
        let m: Mac = "52-54-00-AB-cd-01".parse().expect("dash form");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!("525400abcd01".parse::<Mac>(), Ok(m));
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<Mac>().is_err());
    }

    #[test]
    fn seat_lifecycle_and_uniqueness() {
        let st = State::open_in_memory().expect("db");
        let s = st
            .add_seat(&seat("quay-01", "52:54:00:00:00:01"))
            .expect("add");
        assert_eq!(s.chap_user, "quay-01");
        assert_eq!(s.chap_secret.len(), 16);
        assert!(matches!(
            st.add_seat(&seat("quay-01", "52:54:00:00:00:02")),
            Err(StateError::SeatExists(_))
        ));
        assert!(matches!(
            st.add_seat(&seat("quay-02", "52:54:00:00:00:01")),
            Err(StateError::MacInUse { .. })
        ));
        assert!(matches!(
            st.add_seat(&seat("Bad/Name", "52:54:00:00:00:03")),
            Err(StateError::Invalid { field: "name", .. })
        ));
        let by_mac = st
            .seat_by_mac("52:54:00:00:00:01".parse().expect("mac"))
            .expect("query");
        assert_eq!(by_mac.map(|s| s.name), Some("quay-01".into()));
        st.set_active_version("quay-01", Some(3)).expect("set");
        assert_eq!(st.seat("quay-01").expect("get").active_version, Some(3));
        let mut m = seat("quay-03", "52:54:00:00:00:03");
        m.mutual_chap = true;
        m.initiator_iqn = Some("iqn.1991-05.com.microsoft:quay-03".into());
        let m = st.add_seat(&m).expect("mutual");
        assert_ne!(m.mutual_secret.as_deref(), Some(m.chap_secret.as_str()));
        assert!(m.mutual_secret.is_some_and(|s| s.len() == 16));
        let mut bad = seat("quay-04", "52:54:00:00:00:04");
        bad.initiator_iqn = Some("windows pc".into());
        assert!(matches!(
            st.add_seat(&bad),
            Err(StateError::Invalid {
                field: "initiator_iqn",
                ..
            })
        ));
        let id = st.server_id().expect("id");
        assert_eq!(st.server_id().expect("id again"), id);
        st.remove_seat("quay-01").expect("remove");
        assert!(matches!(st.seat("quay-01"), Err(StateError::NoSuchSeat(_))));
        assert_eq!(st.seats().expect("list").len(), 1);
    }

    #[test]
    fn event_values_round_trip_and_old_rows_have_none() {
        let st = State::open_in_memory().expect("db");
        st.record(&NewEvent {
            kind: "seat.reset",
            actor: "khoi",
            source: "-",
            subject: "pc01",
            detail: "now on version 3 (was 2)",
            args: &[("version", "3"), ("was", "2")],
        })
        .expect("record");
        // A row as written before the column existed.
        st.conn
            .lock()
            .execute(
                "INSERT INTO events (ts, kind, actor, source, subject, detail)
                 VALUES (1, 'seat.reset', 'khoi', '-', 'pc02', 'on version 1')",
                [],
            )
            .expect("insert");
        let ev = st.events(None, 10).expect("events");
        assert!(ev[0].args.is_empty());
        assert_eq!(ev[0].detail, "on version 1");
        assert_eq!(ev[1].args.get("version").map(String::as_str), Some("3"));
        assert_eq!(ev[1].args.get("was").map(String::as_str), Some("2"));
        // The API keeps its shape for events without values.
        let json = serde_json::to_value(&ev[0]).expect("json");
        assert!(json.get("args").is_none(), "{json}");
    }

    #[test]
    fn events_newest_first_and_filtered() {
        let st = State::open_in_memory().expect("db");
        for (kind, subject) in [("a", "s1"), ("b", "s2"), ("c", "s1")] {
            st.record(&NewEvent {
                kind,
                actor: "khoi",
                source: "-",
                subject,
                detail: "",
                args: &[],
            })
            .expect("record");
        }
        let all = st.events(None, 10).expect("events");
        assert_eq!(
            all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        let s1 = st.events(Some("s1"), 10).expect("events");
        assert_eq!(s1.len(), 2);
    }

    #[test]
    fn update_seat_users_settings_and_unknown_macs() {
        let st = State::open_in_memory().expect("db");
        st.add_seat(&seat("a", "02:00:00:00:00:01")).expect("add");
        st.add_seat(&seat("b", "02:00:00:00:00:02")).expect("add");
        let up = SeatUpdate {
            pinned_version: Some(Some(2)),
            maintenance: Some(true),
            policy: Some(ResetPolicy::Nightly),
            ..SeatUpdate::default()
        };
        let s = st.update_seat("a", &up).expect("update");
        assert_eq!(
            (s.pinned_version, s.maintenance, s.policy),
            (Some(2), true, ResetPolicy::Nightly)
        );
        let unpin: SeatUpdate = serde_json::from_str(r#"{"pinned_version":null}"#).expect("json");
        assert_eq!(
            st.update_seat("a", &unpin).expect("unpin").pinned_version,
            None
        );
        let keep: SeatUpdate = serde_json::from_str("{}").expect("json");
        assert!(st.update_seat("a", &keep).expect("keep").maintenance);
        let clash = SeatUpdate {
            mac: Some("02:00:00:00:00:02".into()),
            ..SeatUpdate::default()
        };
        assert!(matches!(
            st.update_seat("a", &clash),
            Err(StateError::MacInUse { .. })
        ));

        st.put_user("an", "admin", "h").expect("user");
        st.put_user("an", "viewer", "h2").expect("replace");
        assert_eq!(
            st.user("an").expect("q").map(|u| u.role),
            Some("viewer".into())
        );
        assert!(st.put_user("x", "root", "h").is_err());
        assert!(st.put_user("a b", "admin", "h").is_err());
        assert!(st.remove_user("an").expect("rm"));

        st.set_setting("k", "1").expect("set");
        st.set_setting("k", "2").expect("set");
        assert_eq!(st.setting("k").expect("get").as_deref(), Some("2"));

        for mac in [
            "02:00:00:00:00:09",
            "02:00:00:00:00:01",
            "02:00:00:00:00:09",
        ] {
            st.record(&NewEvent {
                kind: "pxe.unknown_mac",
                actor: "khoi",
                source: "10.0.0.9",
                subject: mac,
                detail: "bios",
                args: &[],
            })
            .expect("record");
        }
        let unknown = st.unknown_macs(10).expect("unknown");
        assert_eq!(unknown.len(), 1);
        assert_eq!(
            (unknown[0].mac.as_str(), unknown[0].count),
            ("02:00:00:00:00:09", 2)
        );
        let f = EventFilter {
            kind: Some("pxe.".into()),
            text: Some(":09".into()),
            limit: 10,
            ..EventFilter::default()
        };
        assert_eq!(st.events_filtered(&f).expect("filter").len(), 2);
    }

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
