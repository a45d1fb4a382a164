//! Server settings from YAML. Every key has a default, so no file at all is
//! the embedded default: state under `./var/khoi`, every listener on loopback.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the state database, images and overlays live.
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub storage: Storage,
    pub iscsi: Iscsi,
    /// Network boot (DHCP/proxyDHCP, TFTP, iPXE scripts): one boot network or
    /// a list of them. Absent: no boot services, so a fresh install never
    /// answers DHCP on a LAN by surprise.
    pub pxe: Option<khoi_pxe::BootNetworks>,
    pub admin: Admin,
    pub prewarm: Prewarm,
    /// TLS for NBD over TCP (`listen.nbd`); required off loopback.
    pub nbd_tls: Option<NbdTls>,
    pub power: Power,
    /// Province distribution (docs/province.md); absent: this Khoi stands alone.
    pub sync: Option<khoi_sync::config::SyncConfig>,
}

/// Wake-on-LAN on the boot network (see `wake.rs`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Power {
    /// When to wake every seat (cron, Vietnam time), e.g. `15 7 * * 1-6`
    /// so counters are up before opening; `null` (the default): never.
    pub wake_cron: Option<String>,
}

/// Reading each version's boot working set into the page cache before
/// seats boot (see `prewarm.rs`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Prewarm {
    /// When to prewarm every image's current version (cron, Vietnam time),
    /// besides at start and after a publish or rollback; `null`: only then.
    pub cron: Option<String>,
    /// Minutes after a seat's boot starts during which its reads are
    /// learned as the boot working set.
    pub learn_minutes: u64,
}

impl Default for Prewarm {
    fn default() -> Self {
        Prewarm {
            // Before opening hours on working days (Saturday mornings too).
            cron: Some("30 6 * * 1-6".into()),
            learn_minutes: 5,
        }
    }
}

/// NBD's standard TLS with a pre-shared key, as libnbd, qemu and nbdkit
/// speak it. With it set, the TCP listener serves nothing before STARTTLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NbdTls {
    /// `identity:hexkey` lines, as GnuTLS's `psktool` writes them; only the
    /// server's user may read it.
    pub psk_file: PathBuf,
}

/// The admin web page, its JSON API and `/metrics`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// `null` turns the web page off (the CLI still works).
    pub listen: Option<SocketAddr>,
    /// Creates the `admin` user at first start; without it a one-time setup
    /// link is printed in the log.
    pub initial_password: Option<String>,
    /// Khoi serves plain HTTP; set this when users reach it through an
    /// HTTPS reverse proxy, so session cookies are marked Secure.
    pub secure_cookies: bool,
    /// Folders the page may import images from by server-side path.
    pub import_roots: Vec<PathBuf>,
    pub nightly: Nightly,
    pub import: Import,
    pub events: Events,
    /// HTTPS for the page: `auto` (on unless the page is on loopback),
    /// `enabled` or `disabled`.
    pub tls: TlsMode,
    /// PEM certificate chain and key; without them a self-signed
    /// certificate is made in the data folder at first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Host names the page is reached by: requests naming another host are
    /// refused (DNS rebinding), and a self-signed certificate covers them.
    pub hosts: Vec<String>,
    /// Serve plain HTTP on a non-loopback address anyway (a TLS proxy on the
    /// same machine or network segment). Passwords then cross the LAN in
    /// clear unless that proxy is in front.
    pub allow_plain_http: bool,
    /// Bearer token for `/metrics`; without it `/metrics` only answers on a
    /// loopback page (it names every seat).
    pub metrics_token: Option<String>,
    /// A reverse proxy whose header names the client (for login limits and
    /// the audit log). Off unless set.
    pub trusted_proxy: Option<TrustedProxy>,
    /// Seconds a client has to send a request's headers (also how long an
    /// idle connection stays open).
    pub header_timeout_secs: u64,
    /// Connections to the page at once, and from one address.
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Seconds shutdown waits for open requests before leaving them.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Auto,
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustedProxy {
    /// Such as `X-Forwarded-For`; the last address in it is used.
    pub header: String,
    /// Addresses the proxy connects from.
    pub from: Vec<std::net::IpAddr>,
}

impl Admin {
    /// Whether the page is served over HTTPS.
    pub fn tls_enabled(&self) -> bool {
        match self.tls {
            TlsMode::Enabled => true,
            TlsMode::Disabled => false,
            TlsMode::Auto => self.listen.is_some_and(|a| !a.ip().is_loopback()),
        }
    }

    /// The web crate's options for this section.
    pub fn web_options(&self, data_dir: &Path) -> khoi_web::AdminOptions {
        let tls = self
            .tls_enabled()
            .then(|| match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => khoi_web::server::TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => {
                    let mut names = self.hosts.clone();
                    names.push("localhost".into());
                    if let Some(a) = self.listen.filter(|a| !a.ip().is_unspecified()) {
                        names.push(a.ip().to_string());
                    }
                    khoi_web::server::TlsSource::SelfSigned {
                        dir: data_dir.to_path_buf(),
                        names,
                    }
                }
            });
        let mut serve = khoi_web::server::ServeOptions::plain();
        serve.header_timeout = std::time::Duration::from_secs(self.header_timeout_secs.max(1));
        serve.limits.max_connections = self.max_connections.max(1);
        serve.limits.max_per_peer = self.max_per_address.max(1);
        serve.limits.shutdown_grace = std::time::Duration::from_secs(self.shutdown_grace_secs);
        khoi_web::AdminOptions {
            listen: self.listen,
            initial_password: self.initial_password.clone(),
            secure_cookies: self.secure_cookies,
            cron: self.nightly.cron.clone(),
            online: self.nightly.online.clone(),
            tls,
            hosts: self.hosts.clone(),
            metrics_token: self.metrics_token.clone(),
            trusted_proxy: self
                .trusted_proxy
                .as_ref()
                .map(|p| khoi_web::policy::TrustedProxy {
                    header: p.header.to_ascii_lowercase(),
                    from: p.from.clone(),
                }),
            serve,
            setup_link: khoi_web::SetupLink::default(),
            province: None,
        }
    }
}

/// How much of the event and audit log is kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// Events older than this many days are removed.
    pub keep_days: u32,
    /// At most this many events; above it the oldest events anyone on the LAN
    /// can cause (unknown machines, failed logins, boot-script fetches) go
    /// first, admin actions only when those alone cannot make room.
    pub max_rows: u64,
}

impl Default for Events {
    fn default() -> Self {
        let d = khoi_state::EventLimits::default();
        Events {
            keep_days: d.keep_days,
            max_rows: d.max_rows,
        }
    }
}

impl Events {
    pub fn limits(&self) -> khoi_state::EventLimits {
        khoi_state::EventLimits {
            keep_days: self.keep_days,
            max_rows: self.max_rows,
        }
    }
}

/// Limits on what an import (CLI, path or upload) may take.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Import {
    /// Largest disk (virtual size) accepted; a tiny qcow2 can claim 8 EiB.
    pub max_virtual_size: Size,
    /// Largest browser upload (never more than the free space above
    /// `storage.free_space_floor`).
    pub max_upload: Size,
    /// Seconds an upload may send nothing before it is dropped.
    pub upload_idle_timeout: u64,
}

impl Default for Import {
    fn default() -> Self {
        let d = khoi_admin::staging::Limits::default();
        Import {
            max_virtual_size: Size(d.max_virtual_size),
            max_upload: Size(d.max_upload),
            upload_idle_timeout: d.upload_idle.as_secs(),
        }
    }
}

impl Config {
    /// The import limits the service enforces.
    pub fn import_limits(&self) -> khoi_admin::staging::Limits {
        khoi_admin::staging::Limits {
            max_virtual_size: self.admin.import.max_virtual_size.0,
            max_upload: self.admin.import.max_upload.0,
            free_space_floor: self.storage.free_space_floor.0,
            upload_idle: std::time::Duration::from_secs(
                self.admin.import.upload_idle_timeout.max(1),
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Nightly {
    /// Cron expression (minute hour day month weekday) in `zone`.
    pub cron: String,
    /// Only Asia/Ho_Chi_Minh (UTC+7, no daylight saving) is supported.
    pub zone: String,
    /// `skip` (leave running seats alone and report them) or `force`.
    pub online: String,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            initial_password: None,
            secure_cookies: false,
            import_roots: vec![PathBuf::from("/media"), PathBuf::from("/mnt")],
            nightly: Nightly::default(),
            import: Import::default(),
            events: Events::default(),
            tls: TlsMode::Auto,
            tls_cert: None,
            tls_key: None,
            hosts: Vec::new(),
            allow_plain_http: false,
            metrics_token: None,
            trusted_proxy: None,
            header_timeout_secs: 10,
            max_connections: 256,
            max_per_address: 32,
            shutdown_grace_secs: 5,
        }
    }
}

impl Default for Nightly {
    fn default() -> Self {
        Nightly {
            cron: khoi_admin::schedule::DEFAULT_CRON.into(),
            zone: "Asia/Ho_Chi_Minh".into(),
            online: "skip".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// NBD over TCP: off unless set. Without `nbd_tls` it must be a loopback
    /// address, and even then every local user can reach it.
    pub nbd: Option<SocketAddr>,
    /// NBD on a unix socket only the server's user can open (relative paths
    /// are in `data_dir`); `null` turns it off.
    pub nbd_socket: Option<PathBuf>,
    /// iSCSI portal address; `null` turns the target off.
    pub iscsi: Option<SocketAddr>,
    /// TCP congestion control for the block listeners (iSCSI portals, NBD
    /// over TCP), or `system` for the kernel's default. Cubic by default:
    /// BBR, where a distribution makes it the default, paces every segment
    /// with a timer when no `fq` qdisc does it, which on a LAN costs the
    /// server a third of its CPU per GiB during a boot storm and buys nothing
    /// (docs/architecture.md, "Serving").
    pub tcp_congestion: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Writes that need new overlay space fail once the data filesystem has
    /// less than this free, so one runaway seat cannot fill the server's disk.
    pub free_space_floor: Size,
    /// Overlay quota for seats that do not set their own (0 = unlimited).
    pub default_seat_quota: Size,
    /// What FLUSH/SYNCHRONIZE CACHE/FUA do for overlays reset at every boot
    /// (policy on-boot): `durable` syncs them to disk; `volatile` skips the
    /// sync, and a Khoi that stops uncleanly then makes those seats reboot.
    pub on_boot_durability: DurabilityMode,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    #[default]
    Durable,
    Volatile,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Iscsi {
    /// Target IQNs are `<target_prefix>:<seat>`.
    pub target_prefix: String,
    /// Seconds a session may be idle before it gets a NOP-In ping (0: never).
    /// A session that answered one and then misses one is closed, so a
    /// powered-off Windows seat is gone within a minute; iPXE never answers
    /// and is never closed for it.
    pub nop_interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("var/khoi"),
            listen: Listen::default(),
            storage: Storage::default(),
            iscsi: Iscsi::default(),
            pxe: None,
            admin: Admin::default(),
            prewarm: Prewarm::default(),
            nbd_tls: None,
            power: Power::default(),
            sync: None,
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            nbd: None,
            nbd_socket: Some(PathBuf::from("nbd.sock")),
            iscsi: Some(SocketAddr::from(([127, 0, 0, 1], 3260))),
            tcp_congestion: "cubic".into(),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            free_space_floor: Size(2 << 30),
            default_seat_quota: Size(20 << 30),
            on_boot_durability: DurabilityMode::default(),
        }
    }
}

impl Default for Iscsi {
    fn default() -> Self {
        Iscsi {
            target_prefix: "iqn.2025-07.vn.khoi".into(),
            nop_interval: 30,
        }
    }
}

/// A byte count written as a number or with a binary unit (`512MiB`, `20G`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    /// The same spelling `khoi image create --size` takes.
    fn from_str(s: &str) -> Result<Self, String> {
        khoi_admin::capture::parse_size(s).map(Size)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
        for (unit, shift) in UNITS {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A config error that names the file, line, column and key.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        // An empty file (or only comments) means "all defaults", which the
        // YAML deserializer would otherwise reject as a null document.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Config::default());
        }
        let config: Config = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                key: key_at(text, line),
                message: first_line(&e.to_string()),
            }
        })?;
        config.validate(path, text)?;
        Ok(config)
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| {
            let line = find_key_line(text, key);
            ConfigError {
                file: path.to_path_buf(),
                line,
                column: 1,
                key: Some(key.to_string()),
                message,
            }
        };
        let p = &self.iscsi.target_prefix;
        if !p.starts_with("iqn.") || p.contains(char::is_whitespace) || p.ends_with(':') {
            return Err(fail(
                "target_prefix",
                format!("{p:?} is not an IQN prefix (like iqn.2025-07.vn.khoi)"),
            ));
        }
        let n = &self.admin.nightly;
        if let Err(e) = khoi_admin::schedule::parse_cron(&n.cron) {
            return Err(fail("cron", e.to_string()));
        }
        if let Some(c) = &self.prewarm.cron
            && let Err(e) = khoi_admin::schedule::parse_cron(c)
        {
            return Err(fail("prewarm.cron", e.to_string()));
        }
        if let Some(c) = &self.power.wake_cron {
            if let Err(e) = khoi_admin::schedule::parse_cron(c) {
                return Err(fail("wake_cron", e.to_string()));
            }
            if self.pxe.is_none() {
                return Err(fail(
                    "wake_cron",
                    "waking seats needs the boot network: add the pxe section (pxe.interface)"
                        .into(),
                ));
            }
        }
        let ev = &self.admin.events;
        if ev.keep_days == 0 {
            return Err(fail(
                "keep_days",
                "0 would drop the audit log as it is written: expected at least 1 day".into(),
            ));
        }
        if ev.max_rows < 1000 {
            return Err(fail(
                "max_rows",
                format!(
                    "{}: expected at least 1000 events (a busy morning's boots)",
                    ev.max_rows
                ),
            ));
        }
        if !(1..=120).contains(&self.prewarm.learn_minutes) {
            return Err(fail(
                "prewarm.learn_minutes",
                format!("{}: expected 1 to 120 minutes", self.prewarm.learn_minutes),
            ));
        }
        if !matches!(
            n.zone.as_str(),
            "Asia/Ho_Chi_Minh" | "Asia/Saigon" | "UTC+7" | "+07:00"
        ) {
            return Err(fail(
                "zone",
                format!("{:?}: only Asia/Ho_Chi_Minh (UTC+7) is supported", n.zone),
            ));
        }
        if !matches!(n.online.as_str(), "skip" | "force") {
            return Err(fail(
                "online",
                format!("{:?}: expected skip or force", n.online),
            ));
        }
        if let Some(p) = &self.admin.initial_password
            && let Err(e) = khoi_admin::users::check_password_policy(p)
        {
            return Err(fail("initial_password", e.to_string()));
        }
        let a = &self.admin;
        if a.listen.is_some_and(|l| !l.ip().is_loopback())
            && !a.tls_enabled()
            && !a.allow_plain_http
        {
            return Err(fail(
                "tls",
                "the admin page listens beyond loopback without TLS: passwords would cross \
                 the LAN in clear; use tls: auto, or set allow_plain_http: true behind an \
                 HTTPS proxy"
                    .into(),
            ));
        }
        if a.tls_cert.is_some() != a.tls_key.is_some() {
            return Err(fail("tls_cert", "tls_cert and tls_key go together".into()));
        }
        if a.metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(fail(
                "metrics_token",
                "must be at least 16 characters".into(),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(fail("data_dir", "must not be empty".into()));
        }
        self.validate_nbd(&fail)?;
        let cc = &self.listen.tcp_congestion;
        // The kernel's names (TCP_CA_NAME_MAX is 16 with the NUL): checked
        // here so a typo is a config error, not a warning at every start.
        if cc.is_empty()
            || cc.len() > 15
            || !cc
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(fail(
                "tcp_congestion",
                format!(
                    "{cc:?} is not a congestion control name: expected cubic, reno, bbr, \
                     another name in /proc/sys/net/ipv4/tcp_available_congestion_control, \
                     or system"
                ),
            ));
        }
        if let Some(sync) = &self.sync {
            sync.validate()
                .map_err(|(key, m)| fail(&format!("sync.{key}"), m))?;
        }
        if let Some(nets) = &self.pxe {
            nets.validate().map_err(|e| {
                let line = find_network_key_line(text, e.index, e.key);
                let which = match nets.0.get(e.index) {
                    Some(n) if nets.len() > 1 => format!("boot network {:?}: ", n.network_name()),
                    _ => String::new(),
                };
                ConfigError {
                    file: path.to_path_buf(),
                    line,
                    column: 1,
                    key: Some(if e.key == "pxe" {
                        "pxe".into()
                    } else {
                        format!("pxe.{}", e.key)
                    }),
                    message: format!("{which}{e}"),
                }
            })?;
            if nets.iter().any(|n| n.mode != khoi_pxe::DhcpMode::Off)
                && !matches!(self.listen.iscsi, Some(std::net::SocketAddr::V4(_)))
            {
                return Err(fail(
                    "iscsi",
                    "network boot needs an IPv4 iSCSI portal under listen.iscsi for the seats"
                        .into(),
                ));
            }
            if let Some(addr) = self.listen.iscsi
                && !addr.ip().is_loopback()
                && !addr.ip().is_unspecified()
                && !nets
                    .iter()
                    .any(|n| std::net::IpAddr::V4(n.server_ip) == addr.ip())
            {
                return Err(fail(
                    "iscsi",
                    format!(
                        "{addr} is neither loopback nor a boot network's server_ip: seats log in \
                         on their own network's address (Khoi listens there on this port), so \
                         use one of those, 0.0.0.0 or a loopback address"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where each boot network's iSCSI portal listens: its `server_ip` at the
    /// port of `listen.iscsi`, with its interface; none without a portal.
    pub fn network_portals(&self) -> Vec<(String, String, std::net::SocketAddrV4)> {
        let Some(port) = self.listen.iscsi.map(|a| a.port()) else {
            return Vec::new();
        };
        self.pxe
            .iter()
            .flat_map(|nets| nets.iter())
            .map(|n| {
                (
                    n.network_name().to_string(),
                    n.interface.clone(),
                    std::net::SocketAddrV4::new(n.server_ip, port),
                )
            })
            .collect()
    }

    /// The iSCSI listener besides the boot networks' own: `listen.iscsi`
    /// itself when it is loopback (tools on the server), or loopback at its
    /// port when it is 0.0.0.0, which with boot networks means "each boot
    /// network, and this machine" so no login arrives on a network the seat
    /// is not on. Without boot networks, `listen.iscsi` as it is.
    pub fn local_iscsi_listen(&self) -> Option<std::net::SocketAddr> {
        let addr = self.listen.iscsi?;
        let Some(nets) = &self.pxe else {
            return Some(addr);
        };
        // That network's own portal is this address already.
        if nets
            .iter()
            .any(|n| std::net::IpAddr::V4(n.server_ip) == addr.ip())
        {
            return None;
        }
        if addr.ip().is_loopback() {
            return Some(addr);
        }
        if addr.ip().is_unspecified() {
            return Some(std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())));
        }
        None
    }
}

/// The line of `key` in boot network `index` of the `pxe` section (a list
/// entry, or the section itself in the one-network form); the section's line
/// when the key is not written (a default), 0 without a section.
fn find_network_key_line(text: &str, index: usize, key: &str) -> u64 {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("pxe:")) else {
        return 0;
    };
    let line_no = |i: usize| u64::try_from(i + 1).unwrap_or(0);
    let mut entry: Option<usize> = None;
    let mut entry_start = start;
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !l.starts_with(' ') && !l.starts_with('-') {
            break;
        }
        let mut body = t;
        if let Some(rest) = t.strip_prefix("- ").or_else(|| (t == "-").then_some("")) {
            entry = Some(entry.map_or(0, |e| e + 1));
            if entry == Some(index) {
                entry_start = i;
            }
            body = rest.trim_start();
        }
        let here = entry.unwrap_or(0) == index;
        if here && body.starts_with(&format!("{key}:")) {
            return line_no(i);
        }
    }
    if key == "pxe" {
        return line_no(start);
    }
    line_no(entry_start)
}

impl Config {
    /// Where the NBD unix socket goes, if it is on.
    pub fn nbd_socket_path(&self) -> Option<PathBuf> {
        self.listen
            .nbd_socket
            .as_ref()
            .map(|p| self.data_dir.join(p))
    }

    /// NBD reaches every seat disk and the draft that becomes the golden
    /// image, so nothing but the owner's unix socket or TLS may expose it.
    fn validate_nbd(&self, fail: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        if self
            .listen
            .nbd_socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(fail(
                "nbd_socket",
                "must not be empty (null turns it off)".into(),
            ));
        }
        match (&self.listen.nbd, &self.nbd_tls) {
            (Some(addr), None) if !addr.ip().is_loopback() => {
                return Err(fail(
                    "nbd",
                    format!(
                        "{addr} is not a loopback address: NBD over the network needs \
                         nbd_tls.psk_file (anyone who reaches it could read and write \
                         every seat disk)"
                    ),
                ));
            }
            (None, Some(_)) => {
                return Err(fail(
                    "nbd_tls",
                    "is set but listen.nbd (the TCP listener it protects) is off".into(),
                ));
            }
            _ => {}
        }
        if let Some(tls) = &self.nbd_tls {
            let meta = std::fs::metadata(&tls.psk_file).map_err(|e| {
                fail(
                    "psk_file",
                    format!("cannot read {}: {e}", tls.psk_file.display()),
                )
            })?;
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
                return Err(fail(
                    "psk_file",
                    format!(
                        "{} is readable by other users (chmod 600 it)",
                        tls.psk_file.display()
                    ),
                ));
            }
            khoi_nbd::Tls::from_psk_file(&tls.psk_file)
                .map_err(|e| fail("psk_file", format!("{}: {e}", tls.psk_file.display())))?;
        }
        Ok(())
    }
}

/// The YAML key on `line` (1-based), to name the field in a type error.
fn key_at(text: &str, line: u64) -> Option<String> {
    let idx = usize::try_from(line.checked_sub(1)?).ok()?;
    let l = text.lines().nth(idx)?;
    let (key, _) = l.split_once(':')?;
    let key = key.trim().trim_start_matches("- ");
    (!key.is_empty()).then(|| key.to_string())
}

/// The line of `key`; `section.key` finds `key` below `section:`, so two
/// sections with a key of the same name point at the right one.
fn find_key_line(text: &str, key: &str) -> u64 {
    let (from, key) = match key.split_once('.') {
        Some((section, k)) => match text
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{section}:")))
        {
            Some(i) => (i + 1, k),
            None => return 0,
        },
        None => (0, key),
    };
    text.lines()
        .skip(from)
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map_or(0, |i| u64::try_from(from + i + 1).unwrap_or(0))
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or(s);
    // saphyr prefixes "error: line L column C: "; we print our own location.
    match l.find(": ") {
        Some(i) if l.starts_with("error: line") => {
            let rest = &l[i + 2..];
            rest.split_once(": ").map_or(rest, |(_, m)| m).to_string()
        }
        _ => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("khoi.yaml"), text)
    }

    #[test]
    fn empty_file_is_default_and_loopback() {
        let c = parse("# nothing\n").expect("defaults");
        assert_eq!(c, Config::default());
        // NBD is the owner's unix socket only; TCP is opt-in.
        assert_eq!(c.listen.nbd, None);
        assert_eq!(c.nbd_socket_path(), Some(c.data_dir.join("nbd.sock")));
        assert!(c.listen.iscsi.expect("iscsi on").ip().is_loopback());
    }

    /// Attack 3 (e): NBD on a LAN address without TLS is refused, naming
    /// the key and its line; loopback keeps working, and TLS makes any
    /// address acceptable.
    #[test]
    fn nbd_off_loopback_needs_tls() {
        for addr in ["0.0.0.0:10809", "10.77.0.1:10809", "'[::]:10809'"] {
            let e = parse(&format!(
                "data_dir: /d\nlisten:\n  iscsi: null\n  nbd: {addr}\n"
            ))
            .expect_err("refused");
            assert_eq!((e.line, e.key.as_deref()), (4, Some("nbd")), "{e}");
            assert!(e.to_string().contains("nbd_tls"), "{e}");
        }
        let c = parse("listen:\n  nbd: 127.0.0.1:10809\n").expect("loopback");
        assert!(c.listen.nbd.expect("on").ip().is_loopback());
        assert!(parse("listen:\n  nbd: '[::1]:10809'\n").is_ok());

        let dir = tempfile::tempdir().expect("tmp");
        let psk = dir.path().join("nbd.psk");
        std::fs::write(&psk, format!("alice:{}\n", "ab".repeat(32))).expect("psk");
        let tls = format!(
            "listen:\n  nbd: 0.0.0.0:10809\nnbd_tls:\n  psk_file: {}\n",
            psk.display()
        );
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = parse(&tls).expect_err("world-readable key");
        assert_eq!((e.line, e.key.as_deref()), (4, Some("psk_file")), "{e}");
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = parse(&tls).expect("TLS on any address");
        assert_eq!(c.nbd_tls.expect("tls").psk_file, psk);

        std::fs::write(&psk, "alice:not-hex\n").expect("psk");
        let e = parse(&tls).expect_err("bad key file");
        assert_eq!(e.key.as_deref(), Some("psk_file"));
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse(&format!("nbd_tls:\n  psk_file: {}\n", psk.display()))
            .expect_err("TLS without a TCP listener");
        assert_eq!(e.key.as_deref(), Some("nbd_tls"));
        let e = parse("listen:\n  nbd_socket: ''\n").expect_err("empty socket");
        assert_eq!(e.key.as_deref(), Some("nbd_socket"));
        let c = parse("data_dir: /srv/k\nlisten:\n  nbd_socket: null\n").expect("off");
        assert_eq!(c.nbd_socket_path(), None);
        let c = parse("data_dir: /srv/k\nlisten:\n  nbd_socket: /run/k.sock\n").expect("abs");
        assert_eq!(c.nbd_socket_path(), Some(PathBuf::from("/run/k.sock")));
    }

    #[test]
    fn tcp_congestion_names_are_checked() {
        assert_eq!(Config::default().listen.tcp_congestion, "cubic");
        for ok in ["bbr", "system", "dctcp", "h_tcp2"] {
            let c = parse(&format!("listen:\n  tcp_congestion: {ok}\n")).expect(ok);
            assert_eq!(c.listen.tcp_congestion, ok);
        }
        for bad in ["''", "Cubic", "cubic;reboot", "a-very-long-algorithm-name"] {
            let e =
                parse(&format!("data_dir: /d\nlisten:\n  tcp_congestion: {bad}\n")).expect_err(bad);
            assert_eq!(
                (e.line, e.key.as_deref()),
                (3, Some("tcp_congestion")),
                "{e}"
            );
        }
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../config/khoi.example.yaml");
        let c = parse(text).expect("the shipped example must be valid");
        assert_eq!(c.import_limits(), Config::default().import_limits());
    }

    /// The example's commented `pxe` list, uncommented, is a valid config.
    #[test]
    fn example_boot_networks_parse() {
        let text = include_str!("../../../config/khoi.example.yaml");
        let block: String = text
            .lines()
            .skip_while(|l| !l.starts_with("#pxe:"))
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&format!("listen:\n  iscsi: 0.0.0.0:3260\n{block}"))
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
        let nets = c.pxe.expect("pxe");
        assert_eq!(
            nets.iter().map(|n| n.network_name()).collect::<Vec<_>>(),
            ["quay", "public"]
        );
        assert_eq!(nets[1].kind, khoi_pxe::NetworkKind::Public);
    }

    #[test]
    fn event_limits_come_from_admin_events_and_are_checked() {
        let c = parse("admin:\n  events:\n    keep_days: 30\n    max_rows: 5000\n")
            .expect("events keys");
        assert_eq!(
            c.admin.events.limits(),
            khoi_state::EventLimits {
                keep_days: 30,
                max_rows: 5000
            }
        );
        let e = parse("admin:\n  events:\n    keep_days: 30\n    max_rows: 10\n")
            .expect_err("too few rows");
        assert_eq!((e.line, e.key.as_deref()), (4, Some("max_rows")));
        let e = parse("admin:\n  events:\n    keep_days: 0\n").expect_err("zero days");
        assert_eq!((e.line, e.key.as_deref()), (3, Some("keep_days")));
    }

    #[test]
    fn import_limits_come_from_admin_import_and_the_floor() {
        let c = parse(
            "storage:\n  free_space_floor: 1GiB\nadmin:\n  import:\n    max_virtual_size: 100GiB\n    \
             max_upload: 10GiB\n    upload_idle_timeout: 5\n",
        )
        .expect("import keys");
        let l = c.import_limits();
        assert_eq!(
            (l.max_virtual_size, l.max_upload, l.free_space_floor),
            (100 << 30, 10 << 30, 1 << 30)
        );
        assert_eq!(l.upload_idle, std::time::Duration::from_secs(5));
        let d = Config::default().import_limits();
        assert_eq!((d.max_virtual_size, d.max_upload), (2 << 40, 256 << 30));
    }

    #[test]
    fn unknown_key_names_file_line_column() {
        let e = parse("listen:\n  nbd: 127.0.0.1:1\n  nbdd: 1\n").expect_err("unknown");
        assert_eq!((e.line, e.column), (3, 3));
        let msg = e.to_string();
        assert!(msg.starts_with("khoi.yaml:3:3: "), "{msg}");
        assert!(msg.contains("nbdd"), "{msg}");
    }

    #[test]
    fn bad_value_names_key() {
        let e = parse("storage:\n  free_space_floor: 12 parsecs\n").expect_err("bad size");
        assert_eq!(e.line, 2);
        assert_eq!(e.key.as_deref(), Some("free_space_floor"));
        assert!(e.to_string().contains("parsecs"), "{e}");
        let e = parse("listen:\n  nbd: not-an-address\n").expect_err("bad addr");
        assert_eq!(e.key.as_deref(), Some("nbd"));
        let e = parse("iscsi:\n  target_prefix: bogus\n").expect_err("bad iqn");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("target_prefix")));
    }

    #[test]
    fn pxe_section_is_checked() {
        let ok = parse(
            "pxe:\n  mode: proxy\n  interface: br0\n  server_ip: 10.77.0.1\n  tftp_root: /srv/tftp\n",
        )
        .expect("pxe");
        assert_eq!(ok.pxe.expect("pxe")[0].interface, "br0");
        let e = parse("pxe:\n  mode: proxy\n  interface: br0\n  server_ip: 10.77.0.1\n  tftp_root: /t\n  bogus: 1\n")
            .expect_err("unknown pxe key");
        assert_eq!(e.line, 6);
        let e = parse(
            "listen:\n  iscsi: null\npxe:\n  mode: proxy\n  interface: br0\n  server_ip: 10.77.0.1\n  tftp_root: /t\n",
        )
        .expect_err("boot without a portal");
        assert_eq!(e.key.as_deref(), Some("iscsi"));
    }

    const TWO: &str = "listen:\n  iscsi: 0.0.0.0:3260\npxe:\n  - name: quay\n    interface: br-quay\n    \
         server_ip: 10.77.1.1\n    tftp_root: /t\n  - name: public\n    kind: kiosk\n    \
         interface: br-pub\n    server_ip: 10.77.2.1\n    tftp_root: /t\n";

    #[test]
    fn pxe_as_a_list_of_networks() {
        let c = parse(TWO).expect("two networks");
        let nets = c.pxe.as_ref().expect("pxe");
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[1].kind, khoi_pxe::NetworkKind::Public);
        // Each network's portal on its own address; 0.0.0.0 becomes loopback
        // for tools on the server, so no login arrives on another network.
        let portals: Vec<String> = c
            .network_portals()
            .iter()
            .map(|(n, i, a)| format!("{n} {i} {a}"))
            .collect();
        assert_eq!(
            portals,
            [
                "quay br-quay 10.77.1.1:3260",
                "public br-pub 10.77.2.1:3260"
            ]
        );
        assert_eq!(
            c.local_iscsi_listen(),
            Some("127.0.0.1:3260".parse().expect("addr"))
        );
        // The one-network form keeps its portal on the network's address.
        let one = parse(
            "listen:\n  iscsi: 10.77.0.1:3260\npxe:\n  interface: br0\n  server_ip: 10.77.0.1\n  tftp_root: /t\n",
        )
        .expect("one");
        assert_eq!(one.local_iscsi_listen(), None);
        assert_eq!(one.network_portals().len(), 1);
        // A boot network on loopback (a lab) has its portal there, once.
        let lo = parse(
            "listen:\n  iscsi: 127.0.0.1:3260\npxe:\n  interface: lo\n  server_ip: 127.0.0.1\n  tftp_root: /t\n",
        )
        .expect("lo");
        assert_eq!(lo.local_iscsi_listen(), None);
        assert_eq!(lo.network_portals().len(), 1);
        // Without boot networks, listen.iscsi is what it says.
        let none = parse("listen:\n  iscsi: 0.0.0.0:3260\n").expect("none");
        assert_eq!(none.local_iscsi_listen(), none.listen.iscsi);
        assert!(none.network_portals().is_empty());
    }

    /// A bad entry of the list names the file, the entry's own line and key.
    #[test]
    fn pxe_list_errors_name_line_and_key() {
        let e = parse(&TWO.replace("br-pub", "br-quay")).expect_err("one interface twice");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (10, Some("pxe.interface")),
            "{e}"
        );
        assert!(e.to_string().starts_with("khoi.yaml:10:"), "{e}");
        assert!(
            e.message.contains("public") && e.message.contains("quay"),
            "{e}"
        );
        let e = parse(&TWO.replace("10.77.2.1", "10.77.1.1")).expect_err("one address twice");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (11, Some("pxe.server_ip")),
            "{e}"
        );
        let e = parse(&TWO.replace("name: public", "name: quay")).expect_err("one name twice");
        assert_eq!((e.line, e.key.as_deref()), (8, Some("pxe.name")), "{e}");
        let e = parse(&TWO.replace("name: public", "name: 'pub lic'")).expect_err("bad name");
        assert_eq!((e.line, e.key.as_deref()), (8, Some("pxe.name")), "{e}");
        let e = parse(&TWO.replace("kind: kiosk", "kind: lobby")).expect_err("bad kind");
        assert_eq!((e.line, e.key.as_deref()), (9, Some("kind")), "{e}");
        let e = parse(&TWO.replace(
            "    tftp_root: /t\n  - name: public",
            "    bogus: 1\n    tftp_root: /t\n  - name: public",
        ))
        .expect_err("unknown key in an entry");
        assert_eq!(e.line, 7, "{e}");
        // Overlapping pools in authoritative mode, the second entry named.
        let auth = |ip: &str, pool: &str| {
            format!(
                "mode: authoritative\n    subnet_mask: 255.255.0.0\n    pool: {{ start: {pool}.100, end: {pool}.199 }}\n    server_ip: {ip}"
            )
        };
        let text = TWO
            .replace("server_ip: 10.77.1.1", &auth("10.77.1.1", "10.77.1"))
            .replace("server_ip: 10.77.2.1", &auth("10.77.2.1", "10.77.1"));
        let e = parse(&text).expect_err("pools overlap");
        assert_eq!(e.key.as_deref(), Some("pxe.pool"), "{e}");
        assert_eq!(e.line, 16, "{e}");
        assert!(e.message.contains("overlaps the pool"), "{e}");
        // A portal on an address that is no boot network's would take
        // logins from whichever network routes to it.
        let e = parse(&TWO.replace("iscsi: 0.0.0.0:3260", "iscsi: 10.77.9.1:3260"))
            .expect_err("portal off the networks");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("iscsi")), "{e}");
        let e = parse("pxe: []\n").expect_err("empty list");
        assert_eq!((e.line, e.key.as_deref()), (1, Some("pxe")), "{e}");
    }

    #[test]
    fn admin_section() {
        let c = parse("# nothing\n").expect("defaults");
        assert!(c.admin.listen.expect("admin on").ip().is_loopback());
        assert_eq!(c.admin.nightly.cron, "0 2 * * *");
        assert_eq!(c.prewarm.learn_minutes, 5);
        let e = parse("admin:\n  nightly:\n    cron: 0 2 * * *\nprewarm:\n  cron: at dawn\n")
            .expect_err("bad prewarm cron");
        assert_eq!((e.key.as_deref(), e.line), (Some("prewarm.cron"), 5));
        let e = parse("prewarm:\n  learn_minutes: 0\n").expect_err("no window");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("prewarm.learn_minutes"), 2)
        );
        let e = parse("admin:\n  nightly:\n    cron: every night\n").expect_err("bad cron");
        assert_eq!((e.line, e.key.as_deref()), (3, Some("cron")));
        let e = parse("admin:\n  nightly:\n    online: maybe\n").expect_err("bad policy");
        assert_eq!(e.key.as_deref(), Some("online"));
    }

    /// A page on the LAN gets HTTPS by default; plain HTTP there must be
    /// asked for, because passwords would cross the LAN in clear.
    #[test]
    fn admin_beyond_loopback_needs_tls() {
        let c = parse("# nothing\n").expect("defaults");
        assert!(!c.admin.tls_enabled(), "loopback stays plain HTTP");
        let c = parse("admin:\n  listen: 10.0.0.1:8443\n").expect("auto");
        assert!(c.admin.tls_enabled());
        let web = c.admin.web_options(Path::new("/var/lib/khoi"));
        assert!(matches!(
            web.tls,
            Some(khoi_web::server::TlsSource::SelfSigned { ref names, .. })
                if names.contains(&"10.0.0.1".to_string())
        ));
        let e = parse("admin:\n  listen: 0.0.0.0:8080\n  tls: disabled\n")
            .expect_err("plain HTTP on the LAN");
        assert_eq!(e.key.as_deref(), Some("tls"));
        let c =
            parse("admin:\n  listen: 0.0.0.0:8080\n  tls: disabled\n  allow_plain_http: true\n")
                .expect("explicitly allowed");
        assert!(!c.admin.tls_enabled());
        let e = parse("admin:\n  tls_cert: /etc/khoi/a.crt\n").expect_err("cert without key");
        assert_eq!(e.key.as_deref(), Some("tls_cert"));
        let e = parse("admin:\n  metrics_token: short\n").expect_err("short token");
        assert_eq!(e.key.as_deref(), Some("metrics_token"));
        let e = parse("admin:\n  initial_password: password\n").expect_err("common");
        assert_eq!(e.key.as_deref(), Some("initial_password"));
    }

    #[test]
    fn power_section() {
        assert_eq!(
            parse("# nothing\n").expect("defaults").power.wake_cron,
            None
        );
        let e = parse("power:\n  wake_cron: 15 7 * * 1-6\n").expect_err("no boot network");
        assert_eq!((e.key.as_deref(), e.line), (Some("wake_cron"), 2));
        assert!(e.message.contains("pxe"), "{}", e.message);
        let e = parse("power:\n  wake_cron: at seven\n").expect_err("bad cron");
        assert_eq!(e.key.as_deref(), Some("wake_cron"));
    }

    #[test]
    fn sync_section() {
        assert_eq!(parse("# nothing\n").expect("defaults").sync, None);
        let key = "ab".repeat(32);
        let site = |extra: &str| {
            format!(
                "sync:\n  role: site\n  name: phuong-1\n  bucket:\n    endpoint: https://s3.example\n    \
                 name: khoi\n    credentials_file: /etc/khoi/cred\n  trusted_keys: [{key}]\n  \
                 images: [win11]\n{extra}"
            )
        };
        // 0xab.. is not a point on the curve; a real public key is.
        let e = parse(&site("")).expect_err("not a key");
        assert_eq!((e.key.as_deref(), e.line), (Some("sync.trusted_keys"), 8));
        let good =
            khoi_sync::sign::public_hex(&khoi_sync::sign::generate().expect("key").verifying_key());
        let site = |extra: &str| site(extra).replace(&key, &good);
        let c = parse(&site("  window: \"19:00-06:00\"\n  bandwidth: 20Mbit\n")).expect("valid");
        let s = c.sync.expect("sync");
        assert_eq!(s.rate(), Ok(Some(2_500_000)));
        let e = parse(&site("  window: 7pm-6am\n")).expect_err("bad window");
        assert_eq!((e.key.as_deref(), e.line), (Some("sync.window"), 10));
        let e = parse(&site("  bandwidth: fast\n")).expect_err("bad rate");
        assert_eq!(e.key.as_deref(), Some("sync.bandwidth"));
        let e = parse(&site("  signing_key: /etc/khoi/province.key\n")).expect_err("site with key");
        assert_eq!(e.key.as_deref(), Some("sync.signing_key"));
        let e = parse(&site("  colour: blue\n")).expect_err("unknown key");
        assert_eq!((e.key.as_deref(), e.line), (Some("colour"), 10));
        let plain = site("").replace("https://s3.example", "http://10.0.0.5:3900");
        let e = parse(&plain).expect_err("http");
        assert_eq!((e.key.as_deref(), e.line), (Some("sync.endpoint"), 5));
        let e = parse(&site("").replace("role: site", "role: publisher")).expect_err("no key");
        assert_eq!(e.key.as_deref(), Some("sync.signing_key"));
        let e = parse(&site("  sites: [{name: xa-2, key: nope}]\n")).expect_err("bad site key");
        assert_eq!((e.key.as_deref(), e.line), (Some("sync.sites"), 10));
        let publisher = site("  signing_key: /k\n  status_key: /s\n")
            .replace("role: site", "role: publisher")
            .replace(&format!("  trusted_keys: [{good}]\n"), "");
        let e = parse(&publisher).expect_err("publisher with a status key");
        assert_eq!(e.key.as_deref(), Some("sync.status_key"));
    }

    #[test]
    fn sizes() {
        assert_eq!("4096".parse::<Size>(), Ok(Size(4096)));
        assert_eq!("20GiB".parse::<Size>(), Ok(Size(20 << 30)));
        assert_eq!("512M".parse::<Size>(), Ok(Size(512 << 20)));
        assert!("5 furlongs".parse::<Size>().is_err());
        assert!("99999999999T".parse::<Size>().is_err());
        assert_eq!(Size(20 << 30).to_string(), "20GiB");
        let c =
            parse("storage:\n  default_seat_quota: 0\n  free_space_floor: 1GiB\n").expect("sizes");
        assert_eq!(c.storage.free_space_floor, Size(1 << 30));
    }

    #[test]
    fn durability_and_nop_interval() {
        let c = parse("").expect("defaults");
        assert_eq!(c.storage.on_boot_durability, DurabilityMode::Durable);
        assert_eq!(c.iscsi.nop_interval, 30);
        let c = parse("storage:\n  on_boot_durability: volatile\niscsi:\n  nop_interval: 0\n")
            .expect("set");
        assert_eq!(c.storage.on_boot_durability, DurabilityMode::Volatile);
        assert_eq!(c.iscsi.nop_interval, 0);
        parse("storage:\n  on_boot_durability: maybe\n").expect_err("unknown mode");
    }
}
