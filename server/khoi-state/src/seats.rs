//! The `seats` table: which machine (MAC) boots which image, how its overlay
//! is reset, and the CHAP credentials its target checks.

use std::fmt;
use std::str::FromStr;

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::{Mac, Result, State, StateError, now, validate_name};

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
    /// The boot network the seat is answered on; `None`: the config's first.
    #[serde(default)]
    pub network: Option<String>,
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
    /// Moves the seat to this boot network.
    #[serde(default)]
    pub network: Option<String>,
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
        network: row.get("network")?,
    })
}

/// The same rule as the config's network names (`khoi_pxe::valid_network_name`).
fn validate_network(n: &str) -> Result<()> {
    if n.is_empty()
        || n.len() > 32
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(StateError::Invalid {
            field: "network",
            reason: format!("{n:?} is not a network name (letters, digits, - and _, at most 32)"),
        });
    }
    Ok(())
}

fn quota_param(q: u64) -> i64 {
    i64::try_from(q).unwrap_or(i64::MAX)
}

impl State {
    pub fn add_seat(&self, new: &NewSeat) -> Result<Seat> {
        self.add_seat_on(new, None)
    }

    /// [`State::add_seat`] on boot network `network` (`None`: the first).
    pub fn add_seat_on(&self, new: &NewSeat, network: Option<&str>) -> Result<Seat> {
        validate_name("name", &new.name)?;
        if let Some(n) = network {
            validate_network(n)?;
        }
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
                                chap_user, chap_secret, created, initiator_iqn, mutual_secret,
                                network)
             VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
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
                mutual,
                network
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
        if let Some(n) = &up.network {
            validate_network(n)?;
        }
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
                              maintenance = ?7, network = ?8
             WHERE name = ?1",
            params![
                name,
                mac,
                up.image.as_ref().unwrap_or(&old.image),
                up.pinned_version.unwrap_or(old.pinned_version),
                up.policy.unwrap_or(old.policy).as_str(),
                quota_param(up.quota.unwrap_or(old.quota)),
                i64::from(up.maintenance.unwrap_or(old.maintenance)),
                up.network.as_ref().or(old.network.as_ref()),
            ],
        )?;
        drop(conn);
        self.seat(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_seat as seat;

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
    fn update_seat() {
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
    }

    /// Names are checked when a seat is created, never when one is read: a
    /// row written before the rule (or by hand) still lists, loads and updates.
    #[test]
    fn rows_outside_the_name_rule_still_load() {
        let st = State::open_in_memory().expect("db");
        st.conn
            .lock()
            .execute(
                "INSERT INTO seats (name, mac, image, policy, chap_user, chap_secret, created)
                 VALUES ('PC_01', '02:00:00:00:00:07', 'Win_11', 'nightly', 'PC_01', 's', 1)",
                [],
            )
            .expect("insert");
        assert!(validate_name("name", "PC_01").is_err());
        let s = st.seat("PC_01").expect("load");
        assert_eq!(s.image, "Win_11");
        assert_eq!(st.seats().expect("list").len(), 1);
        assert_eq!(st.seats_on_image("Win_11").expect("on image").len(), 1);
        let by_mac = st
            .seat_by_mac("02:00:00:00:00:07".parse().expect("mac"))
            .expect("by mac");
        assert_eq!(by_mac.map(|s| s.name), Some("PC_01".into()));
        let up = SeatUpdate {
            quota: Some(1 << 30),
            ..SeatUpdate::default()
        };
        assert_eq!(st.update_seat("PC_01", &up).expect("update").quota, 1 << 30);
        st.set_active_version("PC_01", Some(2)).expect("active");
        st.remove_seat("PC_01").expect("remove");
    }

    #[test]
    fn network_defaults_to_none_and_is_kept() {
        let st = State::open_in_memory().expect("db");
        let a = st
            .add_seat(&seat("quay-01", "52:54:00:00:00:01"))
            .expect("add");
        assert_eq!(a.network, None, "no network named: the config's first");
        let k = st
            .add_seat_on(&seat("kiosk-01", "52:54:00:00:00:02"), Some("public"))
            .expect("add on a network");
        assert_eq!(k.network.as_deref(), Some("public"));
        let e = st
            .add_seat_on(&seat("x", "52:54:00:00:00:03"), Some("bad name"))
            .expect_err("bad network name");
        assert!(
            matches!(
                e,
                StateError::Invalid {
                    field: "network",
                    ..
                }
            ),
            "{e}"
        );
        let up = SeatUpdate {
            network: Some("quay".into()),
            ..SeatUpdate::default()
        };
        assert_eq!(
            st.update_seat("quay-01", &up)
                .expect("move")
                .network
                .as_deref(),
            Some("quay")
        );
        // Other changes keep the network.
        let up = SeatUpdate {
            quota: Some(1),
            ..SeatUpdate::default()
        };
        assert_eq!(
            st.update_seat("quay-01", &up)
                .expect("quota")
                .network
                .as_deref(),
            Some("quay")
        );
    }
}
