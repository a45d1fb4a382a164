//! The check itself: partitions → NTFS volumes → the Windows volume's hives,
//! user profiles and Wi-Fi profiles → findings.
//!
//! Every step that reads the image runs under [`guarded`]: an error or a
//! panic inside a parser becomes a `malformed-image` finding naming the step,
//! and the other steps still run, so one bad hive does not hide a saved
//! password elsewhere.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::Instant;

use khoi_block::BlockDevice;

use crate::browser;
use crate::hive::Hive;
use crate::io::{Counters, PartReader, read_exact_at};
use crate::part::{FsKind, Partition, TableKind, fs_kind, read_table};
use crate::report::{Finding, Limits, Policy, Report, Stats};
use crate::rules::{Profile, RuleId, rule};
use crate::sam::{self, Member, RID_ADMINISTRATOR, Sam};
use crate::vol::{Budget, R, ReadError, Volume};

thread_local! {
    /// Set by the fuzz entry points: a panic must reach the fuzzer, not
    /// become a finding.
    pub(crate) static PROPAGATE_PANICS: Cell<bool> = const { Cell::new(false) };
}

/// Run `f`, turning a panic into an error string.
pub(crate) fn guarded<T>(f: impl FnOnce() -> R<T>) -> R<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) if PROPAGATE_PANICS.with(Cell::get) => resume_unwind(p),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".to_string());
            Err(format!("parser panicked: {msg}"))
        }
    }
}

struct Cx<'a> {
    dev: &'a dyn BlockDevice,
    profile: Profile,
    policy: &'a Policy,
    limits: Limits,
    counters: &'a Counters,
    findings: Vec<Finding>,
    stats: Stats,
    budget: Budget,
}

/// Check `dev` under `profile` with the image's `policy` and default limits.
pub fn check(dev: &dyn BlockDevice, profile: Profile, policy: &Policy) -> Report {
    check_with_limits(dev, profile, policy, Limits::default())
}

/// [`check`] with explicit [`Limits`].
pub fn check_with_limits(
    dev: &dyn BlockDevice,
    profile: Profile,
    policy: &Policy,
    limits: Limits,
) -> Report {
    let started = Instant::now();
    let counters = Counters::default();
    let mut cx = Cx {
        dev,
        profile,
        policy,
        limits,
        counters: &counters,
        findings: Vec::new(),
        stats: Stats::default(),
        budget: Budget {
            per_dir: limits.max_dir_entries,
            left: limits.max_total_entries,
            used: 0,
        },
    };
    if let Err(e) = guarded(|| {
        cx.run();
        Ok(())
    }) {
        cx.add(RuleId::MalformedImage, "image", Some(e));
    }
    let mut stats = cx.stats;
    stats.bytes_read = counters.bytes.get();
    stats.device_reads = counters.reads.get();
    stats.dir_entries = cx.budget.used;
    stats.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut findings = cx.findings;
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.rule.cmp(&b.rule))
            .then(a.subject.cmp(&b.subject))
    });
    findings.dedup();
    Report {
        profile,
        findings,
        stats,
    }
}

impl Cx<'_> {
    fn add(&mut self, id: RuleId, subject: impl Into<String>, detail: Option<String>) {
        if self.policy.disabled.contains(&id) {
            return;
        }
        let Some(severity) = rule(id).severity(self.profile) else {
            return;
        };
        self.findings.push(Finding {
            rule: id,
            severity,
            subject: subject.into(),
            detail,
        });
    }

    fn malformed(&mut self, subject: impl Into<String>, detail: String) {
        self.add(RuleId::MalformedImage, subject, Some(detail));
    }

    fn run(&mut self) {
        let table =
            match guarded(|| read_table(self.dev, self.counters, self.limits.max_partitions)) {
                Ok(t) => t,
                Err(e) => {
                    self.malformed("partition table", e);
                    return;
                }
            };
        for w in &table.warnings {
            self.malformed("partition table", w.clone());
        }
        self.stats.partitions = table.partitions.len();
        self.stats.table = match table.kind {
            TableKind::Mbr => "mbr",
            TableKind::Gpt => "gpt",
            TableKind::None => "none",
        }
        .to_string();
        let mut windows = 0;
        let mut encrypted = false;
        for p in &table.partitions {
            if p.is_container_or_reserved() {
                continue;
            }
            let mut boot = [0u8; 512];
            if let Err(e) = read_exact_at(self.dev, self.counters, &mut boot, p.start) {
                self.malformed(p.describe(), format!("boot sector: {e}"));
                continue;
            }
            match fs_kind(&boot) {
                FsKind::Ntfs => {
                    self.stats.ntfs_volumes += 1;
                    if self.ntfs_volume(p) {
                        windows += 1;
                    }
                }
                FsKind::BitLocker => {
                    encrypted = true;
                    self.add(
                        RuleId::EncryptedVolume,
                        p.describe(),
                        Some("boot sector OEM id -FVE-FS-".to_string()),
                    );
                }
                FsKind::Fat | FsKind::Exfat | FsKind::Empty => {}
                FsKind::Unknown => self.add(
                    RuleId::UnknownFilesystem,
                    p.describe(),
                    Some(format!(
                        "boot sector OEM id {:?}",
                        String::from_utf8_lossy(&boot[3..11])
                    )),
                ),
            }
        }
        if windows == 0 && !encrypted {
            self.add(RuleId::NoWindowsVolume, "image", None);
        }
    }

    /// Check one NTFS volume; returns whether it holds Windows.
    fn ntfs_volume(&mut self, p: &Partition) -> bool {
        let subject = p.describe();
        let reader = PartReader::new(self.dev, self.counters, p.start, p.len);
        let mut vol = match guarded(|| Volume::open(reader)) {
            Ok(v) => v,
            Err(e) => {
                self.malformed(subject, e);
                return false;
            }
        };
        match guarded(|| vol.is_dirty()) {
            Ok(true) => self.add(RuleId::NtfsDirty, subject.clone(), None),
            Ok(false) => {}
            Err(e) => self.malformed(subject.clone(), e),
        }
        match guarded(|| vol.find(&["Windows", "System32", "config", "SYSTEM"])) {
            Ok(Some(_)) => {
                self.windows(&mut vol, &subject);
                true
            }
            Ok(None) => false,
            Err(e) => {
                self.malformed(subject, e);
                false
            }
        }
    }

    fn windows(&mut self, vol: &mut Volume<'_>, part: &str) {
        self.hibernation(vol, part);
        let hives: Vec<Option<Hive>> = ["SYSTEM", "SOFTWARE", "SAM", "SECURITY"]
            .into_iter()
            .map(|name| self.hive(vol, name))
            .collect();
        let [system, software, sam, security] = <[Option<Hive>; 4]>::try_from(hives)
            .unwrap_or_else(|_| unreachable!("four names, four results"));
        if let Some(h) = &system
            && let Err(e) = guarded(|| self.system(h))
        {
            self.malformed("SYSTEM hive", e);
        }
        if let Some(h) = &software
            && let Err(e) = guarded(|| self.policies(h))
        {
            self.malformed("SOFTWARE hive", e);
        }
        let accounts = match &sam {
            Some(h) => match guarded(|| sam::read(h)) {
                Ok(s) => {
                    for p in &s.problems {
                        self.malformed("SAM hive", p.clone());
                    }
                    Some(s)
                }
                Err(e) => {
                    self.malformed("SAM hive", e);
                    None
                }
            },
            None => None,
        };
        if let Some(s) = &accounts {
            self.administrators(s);
        }
        if let Some(h) = &software
            && let Err(e) = guarded(|| self.autologon(h, security.as_ref(), accounts.as_ref()))
        {
            self.malformed("Winlogon", e);
        }
        if let Err(e) = guarded(|| self.wlan_profiles(vol)) {
            self.malformed("Wi-Fi profiles", e);
        }
        if let Err(e) = guarded(|| self.browsers(vol)) {
            self.malformed("user profiles", e);
        }
    }

    fn hive(&mut self, vol: &mut Volume<'_>, name: &'static str) -> Option<Hive> {
        let subject = format!("{name} hive");
        let cap = self.limits.max_hive_bytes;
        let read = guarded(|| {
            let Some(rec) = vol.find(&["Windows", "System32", "config", name])? else {
                return Err("missing from Windows\\System32\\config".to_string());
            };
            vol.read_all(rec, cap).map_err(|e| match e {
                ReadError::TooBig(n) => format!("{n} bytes, more than the {cap}-byte cap"),
                ReadError::Bad(s) => s,
            })
        });
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                self.malformed(subject, e);
                return None;
            }
        };
        self.stats.files_read += 1;
        match guarded(|| Hive::parse(name, bytes)) {
            Ok(h) => {
                self.stats.hives += 1;
                if h.is_dirty() {
                    self.add(RuleId::RegistryHiveDirty, subject, None);
                }
                Some(h)
            }
            Err(e) => {
                self.malformed(subject, e);
                None
            }
        }
    }

    fn hibernation(&mut self, vol: &mut Volume<'_>, part: &str) {
        let r = guarded(|| {
            let Some(rec) = vol.find(&["hiberfil.sys"])? else {
                return Ok(None);
            };
            let size = vol.size(rec)?.unwrap_or(0);
            let head = if size > 0 {
                vol.read_head(rec, 4096)?
            } else {
                Vec::new()
            };
            Ok(Some((size, head)))
        });
        match r {
            Ok(Some((size, head))) if size > 0 => {
                self.stats.files_read += 1;
                let sig = head.get(..4).unwrap_or(&[]);
                let sig_text = String::from_utf8_lossy(sig).to_string();
                let hibernated =
                    sig.eq_ignore_ascii_case(b"hibr") || sig.eq_ignore_ascii_case(b"rstr");
                if hibernated {
                    self.add(
                        RuleId::VolumeHibernated,
                        part,
                        Some(format!("hiberfil.sys header {sig_text:?}")),
                    );
                }
                let detail = if sig.iter().all(|&b| b == 0) {
                    format!("{} MiB, header empty", size >> 20)
                } else {
                    format!("{} MiB, header {sig_text:?}", size >> 20)
                };
                self.add(RuleId::HiberfilPresent, "hiberfil.sys", Some(detail));
            }
            Ok(_) => {}
            Err(e) => self.malformed("hiberfil.sys", e),
        }
    }

    fn system(&mut self, h: &Hive) -> R<()> {
        let Some(current) = h.number("Select", "Current")? else {
            return Err("Select\\Current is missing".to_string());
        };
        let cs = format!("ControlSet{current:03}");
        let services = format!("{cs}\\Services");

        if h.has_key(&format!("{services}\\WlanSvc"))? {
            let start = h.number(&format!("{services}\\WlanSvc"), "Start")?;
            if start != Some(4) {
                self.add(
                    RuleId::WlanServiceEnabled,
                    "WlanSvc",
                    Some(format!(
                        "{services}\\WlanSvc\\Start = {}",
                        start.map_or("(missing)".to_string(), |s| s.to_string())
                    )),
                );
            }
        }

        let hiberboot = h.number(
            &format!("{cs}\\Control\\Session Manager\\Power"),
            "HiberbootEnabled",
        )?;
        let hibernate = h.number(&format!("{cs}\\Control\\Power"), "HibernateEnabled")?;
        // Fast Startup is a hibernation of the kernel session: off when either
        // switch is 0. Windows treats a missing HiberbootEnabled as on.
        if hiberboot != Some(0) && hibernate != Some(0) {
            let show = |v: Option<u64>| v.map_or("(missing)".to_string(), |v| v.to_string());
            self.add(
                RuleId::FastStartupEnabled,
                "power settings",
                Some(format!(
                    "HiberbootEnabled = {}, HibernateEnabled = {}",
                    show(hiberboot),
                    show(hibernate)
                )),
            );
        }

        // Heuristic: a network adapter miniport is a kernel driver (Type 1) in
        // load-order group "NDIS". Start = 0 means the boot loader loads it,
        // which a disk reached over the network needs. The group is set by the
        // driver's INF, so a NIC driver installed without it is missed, and a
        // virtual adapter with it is counted.
        let mut boot_nics = Vec::new();
        for name in h.subkeys(&services)? {
            let key = format!("{services}\\{name}");
            let group = h.string(&key, "Group")?.unwrap_or_default();
            if !group.eq_ignore_ascii_case("NDIS") {
                continue;
            }
            if h.number(&key, "Start")? == Some(0) && h.number(&key, "Type")? == Some(1) {
                boot_nics.push(name);
            }
        }
        if boot_nics.is_empty() {
            self.add(
                RuleId::NoBootNetworkDriver,
                "network drivers",
                Some(format!(
                    "no service under {services} with Start = 0, Type = 1, Group = NDIS"
                )),
            );
        }
        Ok(())
    }

    fn policies(&mut self, h: &Hive) -> R<()> {
        let checks: [(RuleId, &[&str]); 3] = [
            (RuleId::PasswordManagerChrome, &["Policies\\Google\\Chrome"]),
            (RuleId::PasswordManagerEdge, &["Policies\\Microsoft\\Edge"]),
            // Both forms are seen in the field; either one set to 0 is taken
            // as disabled, because Cốc Cốc builds read one or the other.
            (
                RuleId::PasswordManagerCocCoc,
                &["Policies\\CocCoc\\Browser", "Policies\\CocCoc\\CocCoc"],
            ),
        ];
        for (id, keys) in checks {
            let mut disabled = false;
            for k in keys {
                if h.number(k, "PasswordManagerEnabled")? == Some(0) {
                    disabled = true;
                }
            }
            if !disabled {
                self.add(
                    id,
                    "HKLM\\SOFTWARE\\".to_string() + keys[0],
                    Some("PasswordManagerEnabled is not 0".to_string()),
                );
            }
        }
        Ok(())
    }

    fn allowed(&self, s: &Sam, member: &Member) -> bool {
        let (name, rid, sid) = match member {
            Member::Local(rid) => (
                s.user(*rid).map(|u| u.name.to_lowercase()),
                Some(*rid),
                s.sid_of(*rid),
            ),
            Member::Other(sid) => (None, None, Some(sid.to_string())),
        };
        self.policy.admin_allow.iter().any(|a| {
            let a = a.trim();
            name.as_deref() == Some(a.to_lowercase().as_str())
                || sid.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(a))
                || rid.is_some_and(|r| a.parse::<u32>() == Ok(r))
        })
    }

    fn administrators(&mut self, s: &Sam) {
        self.stats.users = self.stats.users.max(s.users.len());
        for m in &s.admins {
            let (subject, detail) = match m {
                Member::Local(rid) => match s.user(*rid) {
                    Some(u) if u.disabled => continue,
                    Some(u) => (format!("{} (RID {rid})", u.name), None),
                    None => (format!("RID {rid}"), Some("no such local user".to_string())),
                },
                Member::Other(sid) => (
                    sid.to_string(),
                    Some(
                        "not a local account: whether it is enabled cannot be read offline"
                            .to_string(),
                    ),
                ),
            };
            if self.profile == Profile::Kiosk || !self.allowed(s, m) {
                self.add(RuleId::ExtraAdministrator, subject, detail);
            }
        }
        if let Some(u) = s.user(RID_ADMINISTRATOR)
            && !u.disabled
        {
            self.add(
                RuleId::BuiltinAdministratorEnabled,
                format!("{} (RID 500)", u.name),
                None,
            );
        }
    }

    fn autologon(&mut self, software: &Hive, security: Option<&Hive>, s: Option<&Sam>) -> R<()> {
        const WINLOGON: &str = "Microsoft\\Windows NT\\CurrentVersion\\Winlogon";
        let on = software.number(WINLOGON, "AutoAdminLogon")? == Some(1);
        let user = software
            .string(WINLOGON, "DefaultUserName")?
            .unwrap_or_default();
        let plain = software
            .value(WINLOGON, "DefaultPassword")?
            .is_some_and(|v| v.string().map_or(!v.data.is_empty(), |s| !s.is_empty()));
        let secret = match security {
            Some(h) => h.has_key("Policy\\Secrets\\DefaultPassword")?,
            None => false,
        };
        let state = if on { "on" } else { "off" };
        if plain {
            self.add(
                RuleId::AutologonStoredPassword,
                format!("Winlogon DefaultPassword (user {user})"),
                Some(format!("AutoAdminLogon {state}; the value is not read")),
            );
        }
        if secret {
            self.add(
                RuleId::AutologonStoredPassword,
                format!("LSA secret DefaultPassword (user {user})"),
                Some(format!(
                    "AutoAdminLogon {state}; presence only, the secret is not read"
                )),
            );
        }
        if on {
            let name = user.rsplit('\\').next().unwrap_or(&user);
            if let Some(u) = s.and_then(|s| s.user_named(name).filter(|u| s.is_admin(u.rid)))
                && !u.disabled
            {
                self.add(
                    RuleId::AutologonAdministrator,
                    format!("{} (RID {})", u.name, u.rid),
                    None,
                );
            }
        }
        Ok(())
    }

    fn wlan_profiles(&mut self, vol: &mut Volume<'_>) -> R<()> {
        let path = [
            "ProgramData",
            "Microsoft",
            "Wlansvc",
            "Profiles",
            "Interfaces",
        ];
        let Some(dir) = vol.find(&path)? else {
            return Ok(());
        };
        for iface in vol.list(dir, &mut self.budget)? {
            if !iface.is_dir {
                continue;
            }
            let profiles = vol
                .list(iface.record, &mut self.budget)?
                .into_iter()
                .filter(|e| !e.is_dir && e.name.to_ascii_lowercase().ends_with(".xml"))
                .count();
            if profiles > 0 {
                self.add(
                    RuleId::WlanProfileSaved,
                    format!("interface {}", iface.name),
                    Some(format!("{profiles} profile file(s) under ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces\\{}", iface.name)),
                );
            }
        }
        Ok(())
    }

    fn browsers(&mut self, vol: &mut Volume<'_>) -> R<()> {
        let Some(users) = vol.find(&["Users"])? else {
            return Ok(());
        };
        let homes: Vec<_> = vol
            .list(users, &mut self.budget)?
            .into_iter()
            // "All Users" and "Default User" are junctions to folders listed
            // on their own; "Default" is kept: it is copied to new users.
            .filter(|e| e.is_dir && !matches!(e.name.as_str(), "All Users" | "Default User"))
            .collect();
        self.stats.users = self.stats.users.max(homes.len());
        for home in homes {
            for (browser, rel) in browser::BROWSERS {
                let mut path = vec!["Users", home.name.as_str()];
                path.extend_from_slice(rel);
                let Some(user_data) = vol.find(&path)? else {
                    continue;
                };
                let profiles: Vec<_> = vol
                    .list(user_data, &mut self.budget)?
                    .into_iter()
                    .filter(|e| e.is_dir && browser::is_profile_dir(&e.name))
                    .collect();
                for profile in profiles {
                    for file in browser::LOGIN_FILES {
                        let mut p = path.clone();
                        p.push(&profile.name);
                        p.push(file);
                        let where_ =
                            format!("{} / {browser} / {} / {file}", home.name, profile.name);
                        if let Err(e) =
                            guarded(|| self.login_file(vol, &p, &home.name, browser, &profile.name))
                        {
                            self.malformed(where_, e);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn login_file(
        &mut self,
        vol: &mut Volume<'_>,
        path: &[&str],
        user: &str,
        browser: &str,
        profile: &str,
    ) -> R<()> {
        let Some(rec) = vol.find(path)? else {
            return Ok(());
        };
        let cap = self.limits.max_sqlite_bytes;
        let bytes = vol.read_all(rec, cap).map_err(|e| match e {
            ReadError::TooBig(n) => format!("{n} bytes, more than the {cap}-byte cap"),
            ReadError::Bad(s) => s,
        })?;
        self.stats.files_read += 1;
        if bytes.is_empty() {
            return Ok(());
        }
        self.stats.sqlite_files += 1;
        let file = path.last().copied().unwrap_or_default();
        for origin in browser::saved_origins(&bytes)? {
            self.add(
                RuleId::SavedBrowserPassword,
                format!("{user} / {browser} / {profile} / {origin}"),
                Some(format!("in {file}")),
            );
        }
        Ok(())
    }
}
