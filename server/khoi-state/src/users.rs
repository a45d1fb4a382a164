//! The `users` table: administrators of the web page and their roles.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::{Result, State, StateError, now};

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

impl State {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_roles_and_names() {
        let st = State::open_in_memory().expect("db");
        st.put_user("an", "admin", "h").expect("user");
        st.put_user("an", "viewer", "h2").expect("replace");
        assert_eq!(
            st.user("an").expect("q").map(|u| u.role),
            Some("viewer".into())
        );
        assert!(st.put_user("x", "root", "h").is_err());
        assert!(st.put_user("a b", "admin", "h").is_err());
        assert!(st.remove_user("an").expect("rm"));
    }
}
