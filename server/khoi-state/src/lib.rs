//! Khoi's mutable state in SQLite: seats and the audit/event log.
//!
//! Image bytes, layer stacks and version manifests belong to the block store
//! (`khoi-block`), which keeps them next to the data they describe so a
//! publish is one atomic rename there. This database holds what the admin
//! decides (seats, assignments, policies) and what happened (events).
//!
//! One connection behind a mutex: every statement here is a small indexed
//! lookup or insert, far off the block path, so there is no pool to tune.
//!
//! One module per table (`seats`, `events`, `users`, `settings`, `gate`), the
//! migrations in `schema`, and the typed names in `names`; everything is
//! re-exported here so callers keep writing `khoi_state::Seat`.

mod boot_times;
mod boots;
mod captures;
mod events;
mod gate;
mod names;
mod schema;
mod seats;
mod settings;
mod users;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::Connection;

pub use boot_times::{BOOT_HISTORY, BootPhase, BootStep, BootTiming};
pub use boots::{BOOT_SECRET_LEN, Boot, BootCred, random_token};
pub use captures::{CAPTURE_TOKEN_LEN, Capture, CaptureStatus};
pub use events::{Event, EventFilter, EventLimits, NewEvent, UnknownMac};
pub use gate::{GateResult, GateSettings};
pub use names::{Mac, validate_name};
pub use seats::{NewSeat, ResetPolicy, Seat, SeatUpdate};
pub use users::{User, validate_user_name};

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

#[derive(Debug)]
pub struct State {
    conn: Mutex<Connection>,
    /// How long and how many events are kept (see `events::EventLimits`).
    event_limits: Mutex<EventLimits>,
    /// Inserts since the event log was last pruned.
    since_prune: std::sync::atomic::AtomicU32,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
        schema::migrate(&mut conn)?;
        Ok(State {
            conn: Mutex::new(conn),
            event_limits: Mutex::new(EventLimits::default()),
            since_prune: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

#[cfg(test)]
pub(crate) fn test_seat(name: &str, mac: &str) -> NewSeat {
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
