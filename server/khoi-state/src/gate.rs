//! The image gate's tables: each image's gate settings (`image_gate`: the
//! profile and the policy the admin set) and the result of the gate per
//! version (`gate_results`). The policy and the report are kept as the JSON
//! `khoi-inspect` writes, so this crate does not need to know the rules.

use rusqlite::{OptionalExtension, params};

use crate::{Result, State, now};

/// An image's gate settings as stored: `profile` is `counter` or `kiosk`,
/// `policy` the JSON of the image's allow-list and disabled rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSettings {
    pub profile: String,
    pub policy: String,
}

/// The gate's result for one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateResult {
    pub image: String,
    pub version: u32,
    /// `passed`, `warnings` or `failed`.
    pub status: String,
    /// The JSON of the check's report.
    pub report: String,
    pub checked: i64,
    pub checked_by: String,
    /// Set when an admin let the version through with blocking findings.
    pub override_by: Option<String>,
    pub override_reason: Option<String>,
}

impl State {
    /// `None`: the image has the defaults (counter, empty policy).
    pub fn gate_settings(&self, image: &str) -> Result<Option<GateSettings>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT profile, policy FROM image_gate WHERE image = ?1",
                [image],
                |r| {
                    Ok(GateSettings {
                        profile: r.get(0)?,
                        policy: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_gate_settings(&self, image: &str, s: &GateSettings) -> Result<()> {
        self.conn.lock().execute(
            "INSERT INTO image_gate (image, profile, policy) VALUES (?1, ?2, ?3)
             ON CONFLICT (image) DO UPDATE SET profile = excluded.profile,
                 policy = excluded.policy",
            params![image, s.profile, s.policy],
        )?;
        Ok(())
    }

    /// Keep a check's result for a version, replacing an older one; an
    /// override recorded earlier stays (it was given for this version).
    pub fn put_gate_result(
        &self,
        image: &str,
        version: u32,
        status: &str,
        report: &str,
        by: &str,
    ) -> Result<()> {
        self.conn.lock().execute(
            "INSERT INTO gate_results (image, version, status, report, checked, checked_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (image, version) DO UPDATE SET status = excluded.status,
                 report = excluded.report, checked = excluded.checked,
                 checked_by = excluded.checked_by",
            params![image, version, status, report, now(), by],
        )?;
        Ok(())
    }

    pub fn set_gate_override(
        &self,
        image: &str,
        version: u32,
        by: &str,
        reason: &str,
    ) -> Result<()> {
        self.conn.lock().execute(
            "UPDATE gate_results SET override_by = ?3, override_reason = ?4
             WHERE image = ?1 AND version = ?2",
            params![image, version, by, reason],
        )?;
        Ok(())
    }

    pub fn gate_result(&self, image: &str, version: u32) -> Result<Option<GateResult>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT image, version, status, report, checked, checked_by, override_by,
                        override_reason
                 FROM gate_results WHERE image = ?1 AND version = ?2",
                params![image, version],
                row,
            )
            .optional()?)
    }

    pub fn gate_results(&self, image: &str) -> Result<Vec<GateResult>> {
        let conn = self.conn.lock();
        let mut st = conn.prepare(
            "SELECT image, version, status, report, checked, checked_by, override_by,
                    override_reason
             FROM gate_results WHERE image = ?1 ORDER BY version",
        )?;
        let rows = st.query_map([image], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forget an image's results and settings (the image was deleted, and a
    /// new image of the same name must not inherit them).
    pub fn forget_gate(&self, image: &str) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM gate_results WHERE image = ?1", [image])?;
        conn.execute("DELETE FROM image_gate WHERE image = ?1", [image])?;
        Ok(())
    }

    pub fn forget_gate_result(&self, image: &str, version: u32) -> Result<()> {
        self.conn.lock().execute(
            "DELETE FROM gate_results WHERE image = ?1 AND version = ?2",
            params![image, version],
        )?;
        Ok(())
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GateResult> {
    Ok(GateResult {
        image: r.get(0)?,
        version: r.get(1)?,
        status: r.get(2)?,
        report: r.get(3)?,
        checked: r.get(4)?,
        checked_by: r.get(5)?,
        override_by: r.get(6)?,
        override_reason: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use crate::State;

    use super::GateSettings;

    #[test]
    fn settings_and_results_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("khoi.db");
        {
            let st = State::open(&path).expect("open");
            assert_eq!(st.gate_settings("win10").expect("get"), None);
            st.set_gate_settings(
                "win10",
                &GateSettings {
                    profile: "kiosk".into(),
                    policy: "{}".into(),
                },
            )
            .expect("set");
            st.put_gate_result("win10", 2, "failed", "{\"findings\":[]}", "an")
                .expect("put");
            st.set_gate_override("win10", 2, "an", "accepted for the pilot")
                .expect("override");
            // A re-check keeps the override given for this version.
            st.put_gate_result("win10", 2, "failed", "{}", "khoi")
                .expect("recheck");
        }
        let st = State::open(&path).expect("reopen");
        assert_eq!(
            st.gate_settings("win10").expect("get").map(|s| s.profile),
            Some("kiosk".into())
        );
        let r = st.gate_result("win10", 2).expect("get").expect("kept");
        assert_eq!(r.status, "failed");
        assert_eq!(r.checked_by, "khoi");
        assert_eq!(r.override_reason.as_deref(), Some("accepted for the pilot"));
        assert_eq!(st.gate_results("win10").expect("list").len(), 1);
        st.forget_gate("win10").expect("forget");
        assert!(st.gate_results("win10").expect("list").is_empty());
        assert_eq!(st.gate_settings("win10").expect("get"), None);
    }
}
