//! The `boot_times` table: when each step of a seat's recent boots happened,
//! and how much the boot read.
//!
//! A boot is five moments, each optional because a seat may boot without
//! Khoi's DHCP or TFTP (`pxe.mode: off`, another TFTP server) or stop on the
//! way: the PXE ROM's DHCP, its TFTP read of iPXE, iPXE's script fetch, the
//! first iSCSI login (iPXE's `sanboot`) and the hand-over login (the OS
//! logging in again from the iBFT). A phase runs from its moment to the next
//! moment that was seen, so a missing step is never counted as zero.
//!
//! The history is bounded: [`BOOT_HISTORY`] rows per seat, the oldest go
//! first, and a seat's rows go with it.

use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use crate::{Result, State};

/// Boots kept per seat.
pub const BOOT_HISTORY: usize = 30;

/// The steps of a boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootStep {
    /// The PXE ROM's first DHCP packet Khoi answered.
    Dhcp,
    /// The first TFTP read (the iPXE binary).
    Tftp,
    /// iPXE fetched its script.
    Script,
    /// The boot's first iSCSI login (iPXE's `sanboot`).
    Login,
    /// The operating system's own login after the iBFT hand-over.
    Handover,
}

impl BootStep {
    pub const ALL: [BootStep; 5] = [
        BootStep::Dhcp,
        BootStep::Tftp,
        BootStep::Script,
        BootStep::Login,
        BootStep::Handover,
    ];

    pub fn index(self) -> usize {
        match self {
            BootStep::Dhcp => 0,
            BootStep::Tftp => 1,
            BootStep::Script => 2,
            BootStep::Login => 3,
            BootStep::Handover => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BootStep::Dhcp => "dhcp",
            BootStep::Tftp => "tftp",
            BootStep::Script => "script",
            BootStep::Login => "login",
            BootStep::Handover => "handover",
        }
    }
}

/// The phases a boot's time is split into: each starts at its step.
/// (The hand-over ends the last one, so it starts none.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootPhase {
    /// DHCP until the firmware asks for iPXE: slow or contested DHCP.
    Dhcp,
    /// iPXE's download, its own DHCP and the script fetch.
    Tftp,
    /// The script runs and iPXE connects and logs in.
    Script,
    /// iPXE loads the OS over iSCSI until the OS logs in itself: the disk.
    Disk,
}

impl BootPhase {
    pub const ALL: [BootPhase; 4] = [
        BootPhase::Dhcp,
        BootPhase::Tftp,
        BootPhase::Script,
        BootPhase::Disk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BootPhase::Dhcp => "dhcp",
            BootPhase::Tftp => "tftp",
            BootPhase::Script => "script",
            BootPhase::Disk => "disk",
        }
    }

    /// The step that starts this phase.
    pub fn start(self) -> BootStep {
        match self {
            BootPhase::Dhcp => BootStep::Dhcp,
            BootPhase::Tftp => BootStep::Tftp,
            BootPhase::Script => BootStep::Script,
            BootPhase::Disk => BootStep::Login,
        }
    }
}

/// One boot of one seat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTiming {
    pub seat: String,
    /// Unix milliseconds of each [`BootStep`] seen, by [`BootStep::index`].
    pub steps: [Option<i64>; 5],
    /// Bytes the seat read from its first login until the end of the boot
    /// window (see `khoi_admin::boot_times`).
    pub bytes_read: u64,
}

impl BootTiming {
    pub fn at(&self, step: BootStep) -> Option<i64> {
        self.steps[step.index()]
    }

    /// The first moment seen.
    pub fn started(&self) -> Option<i64> {
        self.steps.iter().flatten().copied().next()
    }

    /// Whether the boot reached the operating system's own login.
    pub fn complete(&self) -> bool {
        self.at(BootStep::Handover).is_some()
    }

    /// Milliseconds of `phase`: from its step to the next step seen. `None`
    /// when its step was not seen or nothing came after it.
    pub fn phase_ms(&self, phase: BootPhase) -> Option<i64> {
        let i = phase.start().index();
        let start = self.steps[i]?;
        let end = self.steps[i + 1..].iter().flatten().next()?;
        Some((end - start).max(0))
    }

    /// From the first step seen to the hand-over.
    pub fn total_ms(&self) -> Option<i64> {
        Some((self.at(BootStep::Handover)? - self.started()?).max(0))
    }

    /// The phase that took longest, if any phase is known.
    pub fn slowest(&self) -> Option<(BootPhase, i64)> {
        BootPhase::ALL
            .iter()
            .filter_map(|p| Some((*p, self.phase_ms(*p)?)))
            .max_by_key(|(_, ms)| *ms)
    }
}

const COLUMNS: &str = "seat, dhcp, tftp, script, login, handover, bytes_read";

fn row(r: &Row<'_>) -> rusqlite::Result<BootTiming> {
    let mut steps = [None; 5];
    for (i, s) in steps.iter_mut().enumerate() {
        *s = r.get(i + 1)?;
    }
    let bytes: i64 = r.get(6)?;
    Ok(BootTiming {
        seat: r.get(0)?,
        steps,
        bytes_read: u64::try_from(bytes).unwrap_or(0),
    })
}

impl State {
    /// Keeps one finished boot; the seat's oldest beyond [`BOOT_HISTORY`]
    /// go. A boot with no step, or of a seat that no longer exists, is not
    /// kept (the seat was removed while it booted).
    pub fn record_boot_timing(&self, boot: &BootTiming) -> Result<bool> {
        let Some(started) = boot.started() else {
            return Ok(false);
        };
        let s = &boot.steps;
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "INSERT INTO boot_times (seat, started, dhcp, tftp, script, login, handover,
                                     bytes_read)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
             WHERE EXISTS (SELECT 1 FROM seats WHERE name = ?1)",
            params![
                boot.seat,
                started,
                s[0],
                s[1],
                s[2],
                s[3],
                s[4],
                i64::try_from(boot.bytes_read).unwrap_or(i64::MAX)
            ],
        )?;
        tx.execute(
            "DELETE FROM boot_times WHERE seat = ?1 AND id NOT IN
               (SELECT id FROM boot_times WHERE seat = ?1 ORDER BY started DESC, id DESC
                LIMIT ?2)",
            params![boot.seat, i64::try_from(BOOT_HISTORY).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// The seat's kept boots, newest first.
    pub fn boot_timings(&self, seat: &str) -> Result<Vec<BootTiming>> {
        let conn = self.conn.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM boot_times WHERE seat = ?1 ORDER BY started DESC, id DESC"
        ))?;
        let rows = st.query_map([seat], row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Into::into)
    }

    /// Every seat's boots that started at or after `since_ms`, oldest first.
    pub fn boot_timings_since(&self, since_ms: i64) -> Result<Vec<BootTiming>> {
        let conn = self.conn.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM boot_times WHERE started >= ?1 ORDER BY started, id"
        ))?;
        let rows = st.query_map([since_ms], row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Into::into)
    }

    /// The start of the newest boot of any seat, unix milliseconds.
    pub fn last_boot_started(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .lock()
            .query_row("SELECT MAX(started) FROM boot_times", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_seat as seat;

    fn boot(name: &str, t0: i64) -> BootTiming {
        BootTiming {
            seat: name.into(),
            steps: [
                Some(t0),
                Some(t0 + 2_000),
                Some(t0 + 2_500),
                Some(t0 + 3_000),
                Some(t0 + 20_000),
            ],
            bytes_read: 300 << 20,
        }
    }

    #[test]
    fn phases_run_to_the_next_step_seen() {
        let b = boot("pc01", 1_000);
        assert_eq!(b.phase_ms(BootPhase::Dhcp), Some(2_000));
        assert_eq!(b.phase_ms(BootPhase::Tftp), Some(500));
        assert_eq!(b.phase_ms(BootPhase::Script), Some(500));
        assert_eq!(b.phase_ms(BootPhase::Disk), Some(17_000));
        assert_eq!(b.total_ms(), Some(20_000));
        assert_eq!(b.slowest(), Some((BootPhase::Disk, 17_000)));
        assert!(b.complete());

        // No TFTP seen (another TFTP server): DHCP runs to the script.
        let mut no_tftp = b.clone();
        no_tftp.steps[1] = None;
        assert_eq!(no_tftp.phase_ms(BootPhase::Dhcp), Some(2_500));
        assert_eq!(no_tftp.phase_ms(BootPhase::Tftp), None);
        // Stuck before the OS took over: the disk phase is unknown, not zero.
        let mut stuck = b.clone();
        stuck.steps[4] = None;
        assert_eq!(stuck.phase_ms(BootPhase::Disk), None);
        assert_eq!(stuck.total_ms(), None);
        assert!(!stuck.complete());
        assert_eq!(BootTiming::default().started(), None);
    }

    #[test]
    fn history_is_bounded_per_seat_and_goes_with_the_seat() {
        let st = State::open_in_memory().expect("db");
        st.add_seat(&seat("pc01", "02:00:00:00:00:01"))
            .expect("add");
        st.add_seat(&seat("pc02", "02:00:00:00:00:02"))
            .expect("add");
        let extra = 5;
        for i in 0..BOOT_HISTORY + extra {
            let t = i64::try_from(i).expect("small") * 60_000;
            assert!(st.record_boot_timing(&boot("pc01", t)).expect("record"));
        }
        assert!(st.record_boot_timing(&boot("pc02", 7)).expect("record"));
        let kept = st.boot_timings("pc01").expect("list");
        assert_eq!(kept.len(), BOOT_HISTORY);
        // Newest first, and the oldest ones are the ones that went.
        let newest = i64::try_from(BOOT_HISTORY + extra - 1).expect("small") * 60_000;
        assert_eq!(kept[0].started(), Some(newest));
        assert_eq!(
            kept.last().and_then(BootTiming::started),
            Some(i64::try_from(extra).expect("small") * 60_000)
        );
        assert_eq!(st.boot_timings("pc02").expect("list").len(), 1);
        assert_eq!(st.last_boot_started().expect("max"), Some(newest));
        let since = st.boot_timings_since(newest - 60_000).expect("since");
        assert_eq!(since.len(), 2);
        assert!(since[0].started() < since[1].started(), "oldest first");

        // Unknown seats and empty boots are not kept.
        assert!(!st.record_boot_timing(&boot("ghost", 1)).expect("record"));
        assert!(
            !st.record_boot_timing(&BootTiming {
                seat: "pc01".into(),
                ..BootTiming::default()
            })
            .expect("record")
        );
        st.remove_seat("pc01").expect("rm");
        assert!(st.boot_timings("pc01").expect("list").is_empty());
    }

    #[test]
    fn timings_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("khoi.db");
        let b = boot("pc01", 42);
        {
            let st = State::open(&path).expect("open");
            st.add_seat(&seat("pc01", "02:00:00:00:00:01"))
                .expect("add");
            st.record_boot_timing(&b).expect("record");
        }
        let st = State::open(&path).expect("reopen");
        assert_eq!(st.boot_timings("pc01").expect("list"), vec![b]);
    }
}
