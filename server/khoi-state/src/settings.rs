//! The `settings` table: small server-wide values kept across restarts.

use rusqlite::{OptionalExtension, params};

use crate::{Result, State, StateError};

impl State {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_replace() {
        let st = State::open_in_memory().expect("db");
        st.set_setting("k", "1").expect("set");
        st.set_setting("k", "2").expect("set");
        assert_eq!(st.setting("k").expect("get").as_deref(), Some("2"));
    }
}
