//! A site's signed status object (`sites/<name>/status`) and how the
//! publisher reads the province from them: which sites are in sync, behind
//! or failing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::FORMAT;

/// What a site says about itself after each pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteStatus {
    pub format: u32,
    pub site: String,
    /// Unix seconds this status was written.
    pub written: u64,
    /// Unix seconds of the last pass that reached the bucket.
    pub last_sync: u64,
    /// image → province version ids held.
    pub held: BTreeMap<String, Vec<String>>,
    /// image → the province version id the image's current version is.
    #[serde(default)]
    pub current: BTreeMap<String, String>,
    /// image → province version id → did the image gate pass.
    #[serde(default)]
    pub gates: BTreeMap<String, BTreeMap<String, bool>>,
    pub seats: u32,
    /// What went wrong at the last pass (refusals, an unreachable bucket).
    pub errors: Vec<String>,
}

impl SiteStatus {
    pub fn new(site: &str, written: u64) -> SiteStatus {
        SiteStatus {
            format: FORMAT,
            site: site.to_string(),
            written,
            last_sync: 0,
            held: BTreeMap::new(),
            current: BTreeMap::new(),
            gates: BTreeMap::new(),
            seats: 0,
            errors: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a status always serialises")
    }

    pub fn parse(body: &[u8]) -> Result<SiteStatus, String> {
        let s: SiteStatus = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if s.format != FORMAT {
            return Err(format!("unknown status format {}", s.format));
        }
        Ok(s)
    }
}

/// A site as the publisher's page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    /// Holds every version the publisher has sent.
    InSync,
    /// Lacks some; the number of versions missing.
    Behind(u32),
    /// Reported errors, or has not synced for `STALE_SECS`.
    Failing,
    /// No status in the bucket, or one that does not verify.
    Unknown,
}

/// A site that has not reached the bucket for two days is failing, even
/// if what it holds is complete: its WAN or its server needs a person.
pub const STALE_SECS: u64 = 2 * 86_400;

/// Classifies one site against what the publisher has sent (image →
/// version ids in the bucket).
pub fn classify(
    status: Option<&SiteStatus>,
    sent: &BTreeMap<String, Vec<String>>,
    now: u64,
) -> SiteState {
    let Some(s) = status else {
        return SiteState::Unknown;
    };
    if !s.errors.is_empty() || now.saturating_sub(s.last_sync) > STALE_SECS {
        return SiteState::Failing;
    }
    let missing: usize = sent
        .iter()
        .map(|(image, ids)| {
            let held = s.held.get(image);
            ids.iter()
                .filter(|id| !held.is_some_and(|h| h.contains(id)))
                .count()
        })
        .sum();
    match u32::try_from(missing).unwrap_or(u32::MAX) {
        0 => SiteState::InSync,
        n => SiteState::Behind(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent() -> BTreeMap<String, Vec<String>> {
        [("win11".to_string(), vec!["a".to_string(), "b".to_string()])]
            .into_iter()
            .collect()
    }

    #[test]
    fn states() {
        let now = 1_000_000;
        let mut s = SiteStatus::new("phuong-1", now);
        s.last_sync = now - 60;
        assert_eq!(classify(None, &sent(), now), SiteState::Unknown);
        assert_eq!(classify(Some(&s), &sent(), now), SiteState::Behind(2));
        s.held.insert("win11".into(), vec!["a".into()]);
        assert_eq!(classify(Some(&s), &sent(), now), SiteState::Behind(1));
        s.held.insert("win11".into(), vec!["a".into(), "b".into()]);
        assert_eq!(classify(Some(&s), &sent(), now), SiteState::InSync);
        s.last_sync = now - STALE_SECS - 1;
        assert_eq!(classify(Some(&s), &sent(), now), SiteState::Failing);
        s.last_sync = now;
        s.errors.push("bucket unreachable".into());
        assert_eq!(classify(Some(&s), &sent(), now), SiteState::Failing);
    }

    #[test]
    fn round_trips() {
        let mut s = SiteStatus::new("phuong-1", 5);
        s.held.insert("win11".into(), vec!["a".into()]);
        s.seats = 40;
        assert_eq!(SiteStatus::parse(&s.to_json()), Ok(s));
        assert!(SiteStatus::parse(br#"{"format":2}"#).is_err());
    }
}
