//! The `sync` section of the server's config.

use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::remote::BucketConfig;
use crate::site::Window;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Uploads every version of `images` and signs it with `signing_key`.
    Publisher,
    /// Pulls every version of `images` signed by one of `trusted_keys`.
    Site,
    /// Warm standby of `primary`: pulls its images and its state snapshot,
    /// serves no seat until `khoi standby promote`.
    Standby,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub role: Role,
    /// This Khoi's name in the province (a site's status goes under it).
    pub name: String,
    pub bucket: BucketConfig,
    /// Publisher: the province's private key (`khoi sync keygen`), owner-only.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Site: the province's public keys (64 hex digits each); several while
    /// a key is being rotated.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Publisher: the images it shares. Site: the images it takes.
    pub images: Vec<String>,
    /// Site: when to download, Vietnam time, e.g. `19:00-06:00`; absent: any time.
    #[serde(default)]
    pub window: Option<String>,
    /// Cap on bucket traffic, e.g. `20Mbit` or `2MB` (per second): a site's
    /// downloads, a publisher's uploads; absent: none.
    #[serde(default)]
    pub bandwidth: Option<String>,
    /// Site: its own private key (`khoi sync keygen`), which signs the status
    /// it writes to the bucket for the publisher's province page; absent:
    /// no status is written.
    #[serde(default)]
    pub status_key: Option<PathBuf>,
    /// Publisher: the sites whose status the province page shows, with the
    /// public key each signs with.
    #[serde(default)]
    pub sites: Vec<SiteEntry>,
    /// Seconds between passes.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// A primary (any other role): its standby key (`khoi sync keygen`,
    /// mode 0600), which signs the state snapshot and the images it exposes
    /// to its standby; absent: no standby.
    #[serde(default)]
    pub standby_key: Option<PathBuf>,
    /// A primary: seconds between state snapshots.
    #[serde(default = "default_interval")]
    pub snapshot_secs: u64,
    /// Standby: the primary's `name`.
    #[serde(default)]
    pub primary: Option<String>,
    /// Standby: the public half of the primary's `standby_key` (64 hex digits).
    #[serde(default)]
    pub primary_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteEntry {
    pub name: String,
    /// The site's status key, public half (64 hex digits).
    pub key: String,
}

fn default_interval() -> u64 {
    300
}

/// Bytes per second from `20Mbit`, `512kbit`, `2MB`, `500KB`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a rate like 20Mbit or 2MB"))?;
    let per_sec = match unit.trim() {
        "kbit" => n * 1000 / 8,
        "Mbit" => n * 1_000_000 / 8,
        "Gbit" => n * 1_000_000_000 / 8,
        "KB" => n * 1000,
        "MB" => n * 1_000_000,
        _ => {
            return Err(format!(
                "{s:?}: the unit is kbit, Mbit, Gbit, KB or MB (per second)"
            ));
        }
    };
    if per_sec < 1000 {
        return Err(format!("{s:?}: below 1 KB/s a version would never arrive"));
    }
    Ok(per_sec)
}

impl SyncConfig {
    /// The trusted keys, parsed.
    pub fn trusted(&self) -> Result<Vec<VerifyingKey>, String> {
        self.trusted_keys
            .iter()
            .map(|k| crate::sign::parse_public(k))
            .collect()
    }

    /// The sites of the province page with their keys, parsed.
    pub fn site_keys(&self) -> Result<Vec<(String, VerifyingKey)>, String> {
        self.sites
            .iter()
            .map(|s| Ok((s.name.clone(), crate::sign::parse_public(&s.key)?)))
            .collect()
    }

    /// Standby: the primary's name and public key, parsed.
    pub fn primary(&self) -> Result<(String, VerifyingKey), String> {
        let name = self
            .primary
            .clone()
            .ok_or("a standby names its primary (primary: NAME)")?;
        let key = self
            .primary_key
            .as_deref()
            .ok_or("a standby needs the primary's public key (primary_key: HEX)")?;
        Ok((name, crate::sign::parse_public(key)?))
    }

    pub fn window(&self) -> Result<Option<Window>, String> {
        self.window.as_deref().map(Window::parse).transpose()
    }

    pub fn rate(&self) -> Result<Option<u64>, String> {
        self.bandwidth.as_deref().map(parse_rate).transpose()
    }

    /// Checks the section; on error, the key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !khoi_block::is_valid_new_name(&self.name) {
            return Err((
                "name",
                format!("{:?}: {}", self.name, khoi_block::NAME_RULE),
            ));
        }
        if self.images.is_empty() {
            return Err(("images", "list at least one image".into()));
        }
        if let Some(bad) = self
            .images
            .iter()
            .find(|i| !khoi_block::is_valid_new_name(i))
        {
            return Err(("images", format!("{bad:?}: {}", khoi_block::NAME_RULE)));
        }
        let e = &self.bucket.endpoint;
        if !(e.starts_with("https://") || (self.bucket.allow_http && e.starts_with("http://"))) {
            return Err((
                "endpoint",
                format!("{e:?}: must be https:// (or http:// with allow_http: true)"),
            ));
        }
        match self.role {
            Role::Publisher => {
                if self.signing_key.is_none() {
                    return Err(("signing_key", "a publisher signs: set signing_key".into()));
                }
            }
            Role::Site => {
                if self.trusted_keys.is_empty() {
                    return Err((
                        "trusted_keys",
                        "a site needs the province's public key".into(),
                    ));
                }
                self.trusted().map_err(|e| ("trusted_keys", e))?;
                if self.signing_key.is_some() {
                    return Err((
                        "signing_key",
                        "a site must not hold the province's private key".into(),
                    ));
                }
            }
            Role::Standby => {
                let (primary, _) = self.primary().map_err(|e| ("primary", e))?;
                if !khoi_block::is_valid_new_name(&primary) || primary == self.name {
                    return Err((
                        "primary",
                        format!(
                            "{primary:?}: the primary's name ({}), not this server's",
                            khoi_block::NAME_RULE
                        ),
                    ));
                }
                if self.signing_key.is_some() || self.standby_key.is_some() {
                    return Err((
                        "signing_key",
                        "a standby signs nothing: it holds no private key until promoted".into(),
                    ));
                }
                // Province images still come through the province's keys.
                self.trusted().map_err(|e| ("trusted_keys", e))?;
            }
        }
        if self.role != Role::Standby && (self.primary.is_some() || self.primary_key.is_some()) {
            return Err((
                "primary",
                "only a standby (role: standby) has a primary".into(),
            ));
        }
        for site in &self.sites {
            if !khoi_block::is_valid_new_name(&site.name) {
                return Err((
                    "sites",
                    format!("{:?}: {}", site.name, khoi_block::NAME_RULE),
                ));
            }
            crate::sign::parse_public(&site.key).map_err(|e| ("sites", e))?;
        }
        if self.role == Role::Publisher && self.status_key.is_some() {
            return Err(("status_key", "only a site writes a status".into()));
        }
        self.window().map_err(|e| ("window", e))?;
        self.rate().map_err(|e| ("bandwidth", e))?;
        if !(10..=86_400).contains(&self.snapshot_secs) {
            return Err((
                "snapshot_secs",
                format!("{}: 10 to 86400", self.snapshot_secs),
            ));
        }
        if !(10..=86_400).contains(&self.interval_secs) {
            return Err((
                "interval_secs",
                format!("{}: 10 to 86400", self.interval_secs),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20Mbit"), Ok(2_500_000));
        assert_eq!(parse_rate("512kbit"), Ok(64_000));
        assert_eq!(parse_rate("2MB"), Ok(2_000_000));
        assert!(parse_rate("20").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1kbit").is_err());
    }

    fn standby(extra: serde_json::Value) -> Result<(), (&'static str, String)> {
        let mut v = serde_json::json!({
            "role": "standby",
            "name": "phuong-1-b",
            "bucket": {
                "endpoint": "https://s3.example",
                "name": "province",
                "credentials_file": "/etc/khoi/sync.credentials"
            },
            "trusted_keys": ["11".repeat(32)],
            "images": ["win11"],
            "primary": "phuong-1",
            "primary_key": crate::sign::public_hex(
                &ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key()
            ),
        });
        for (k, x) in extra.as_object().expect("object") {
            if x.is_null() {
                v.as_object_mut().expect("object").remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        let cfg: SyncConfig = serde_json::from_value(v).map_err(|e| ("parse", e.to_string()))?;
        cfg.validate()
    }

    #[test]
    fn standby_keys() {
        use serde_json::json;
        standby(json!({})).expect("a good standby");
        assert_eq!(
            standby(json!({ "primary": null })).expect_err("").0,
            "primary"
        );
        assert_eq!(
            standby(json!({ "primary_key": null })).expect_err("").0,
            "primary"
        );
        assert_eq!(
            standby(json!({ "primary_key": "abc" })).expect_err("").0,
            "primary"
        );
        assert_eq!(
            standby(json!({ "primary": "phuong-1-b" })).expect_err("").0,
            "primary"
        );
        assert_eq!(
            standby(json!({ "standby_key": "/etc/khoi/standby.key" }))
                .expect_err("")
                .0,
            "signing_key"
        );
        assert_eq!(
            standby(json!({ "snapshot_secs": 5 })).expect_err("").0,
            "snapshot_secs"
        );
        // A primary of any role may have a standby key, never a primary.
        let e = standby(json!({ "role": "site", "standby_key": "/k" })).expect_err("");
        assert_eq!(e.0, "primary");
        standby(
            json!({ "role": "site", "standby_key": "/k", "primary": null, "primary_key": null }),
        )
        .expect("a site with a standby");
    }
}
