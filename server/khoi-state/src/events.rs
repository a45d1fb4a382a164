//! The `events` table: the audit and event log (who did what to which seat,
//! image or MAC), and the unknown-MAC report the PXE side feeds.

use std::collections::BTreeMap;

use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use crate::{Result, State, now};

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

/// How much of the event log is kept. Events are small, but some come from
/// anyone on the LAN (unknown MACs, failed logins, boot-script fetches), so
/// the log needs a bound that holds whatever the LAN sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Events older than this many days go. The default keeps a year and a
    /// month, so a yearly compliance report still finds its period.
    pub keep_days: u32,
    /// At most this many events. Above it the oldest LAN-side events go
    /// first (see `is_lan_noise`); admin actions go only when those alone
    /// cannot make room.
    pub max_rows: u64,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            keep_days: 400,
            max_rows: 200_000,
        }
    }
}

/// Pruning runs every this many inserts, so a flood is cut back while it
/// lasts and a quiet server never pays for it.
const PRUNE_EVERY: u32 = 512;

/// Event kinds anyone on the LAN can cause, in SQL: the first to go when the
/// log is over its row limit.
const LAN_NOISE: &str = "(kind LIKE 'pxe.%' OR kind LIKE 'iscsi.%' OR kind LIKE 'seat.boot.%' \
                          OR kind = 'login.failed')";

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

impl State {
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

    /// Sets how much of the log is kept and prunes to it now.
    pub fn set_event_limits(&self, limits: EventLimits) -> Result<usize> {
        *self.event_limits.lock() = limits;
        self.prune_events()
    }

    /// Removes what the limits say must go; returns how many events went.
    pub fn prune_events(&self) -> Result<usize> {
        let limits = *self.event_limits.lock();
        let cutoff = now().saturating_sub(i64::from(limits.keep_days).saturating_mul(86_400));
        let max = i64::try_from(limits.max_rows).unwrap_or(i64::MAX);
        let conn = self.conn.lock();
        let mut gone = conn.execute("DELETE FROM events WHERE ts < ?1", [cutoff])?;
        for only in [LAN_NOISE, "1"] {
            let over: i64 =
                conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? - max;
            if over <= 0 {
                break;
            }
            gone += conn.execute(
                &format!(
                    "DELETE FROM events WHERE id IN
                       (SELECT id FROM events WHERE {only} ORDER BY id LIMIT ?1)"
                ),
                [over],
            )?;
        }
        Ok(gone)
    }

    pub fn record(&self, ev: &NewEvent<'_>) -> Result<i64> {
        use std::sync::atomic::Ordering;
        if self.since_prune.fetch_add(1, Ordering::Relaxed) + 1 >= PRUNE_EVERY {
            self.since_prune.store(0, Ordering::Relaxed);
            self.prune_events()?;
        }
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
    use crate::test_seat as seat;

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

    fn ev(st: &State, kind: &str) {
        st.record(&NewEvent {
            kind,
            actor: "khoi",
            source: "-",
            subject: "s",
            detail: "",
            args: &[],
        })
        .expect("record");
    }

    /// A flood from the LAN (unknown MACs, failed logins) cannot grow the log
    /// past its row limit, and it pushes out its own kind before any admin
    /// action.
    #[test]
    fn a_flood_is_bounded_and_admin_actions_outlive_it() {
        let st = State::open_in_memory().expect("db");
        st.set_event_limits(EventLimits {
            keep_days: 400,
            max_rows: 600,
        })
        .expect("limits");
        for _ in 0..50 {
            ev(&st, "seat.add");
        }
        for i in 0..5000 {
            ev(
                &st,
                if i % 2 == 0 {
                    "pxe.unknown_mac"
                } else {
                    "login.failed"
                },
            );
        }
        let count = |kind: &str| {
            st.events_filtered(&EventFilter {
                kind: Some(kind.into()),
                limit: 100_000,
                ..EventFilter::default()
            })
            .expect("q")
            .len()
        };
        let all = st.events(None, 100_000).expect("all").len();
        assert!(
            all <= 600 + super::PRUNE_EVERY as usize,
            "{all} events kept"
        );
        assert_eq!(count("seat.add"), 50, "admin actions stay");
        // The newest of the flood are still there to be seen.
        assert_eq!(st.events(None, 1).expect("one")[0].kind, "login.failed");

        // A limit below the admin actions alone: the whole flood goes, then
        // the oldest admin actions.
        st.set_event_limits(EventLimits {
            keep_days: 400,
            max_rows: 20,
        })
        .expect("limits");
        assert_eq!(st.events(None, 100_000).expect("all").len(), 20);
        assert_eq!(
            count("login.failed") + count("pxe."),
            0,
            "the flood went first"
        );
        assert_eq!(count("seat.add"), 20);
    }

    #[test]
    fn old_events_go_after_keep_days() {
        let st = State::open_in_memory().expect("db");
        ev(&st, "seat.add");
        st.conn
            .lock()
            .execute(
                "INSERT INTO events (ts, kind, actor, source, subject, detail)
                 VALUES (?1, 'seat.reset', 'khoi', '-', 'pc02', 'long ago')",
                [crate::now() - 31 * 86_400],
            )
            .expect("insert");
        let gone = st
            .set_event_limits(EventLimits {
                keep_days: 30,
                max_rows: 1000,
            })
            .expect("limits");
        assert_eq!(gone, 1);
        let left = st.events(None, 10).expect("events");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].kind, "seat.add");
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
    fn unknown_macs_leave_out_seats() {
        let st = State::open_in_memory().expect("db");
        st.add_seat(&seat("a", "02:00:00:00:00:01")).expect("add");
        st.add_seat(&seat("b", "02:00:00:00:00:02")).expect("add");
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
}
