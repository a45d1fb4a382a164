//! Configuration, embeddable in the binary's YAML.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Which DHCP role Khoi plays on the boot interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// No DHCP at all (the site's DHCP server hands out next-server/filename itself).
    Off,
    /// The site has a DHCP server; Khoi answers PXE clients only, never hands out addresses.
    #[default]
    Proxy,
    /// Khoi is the LAN's DHCP server for registered seats.
    Authoritative,
}

/// Boot file (relative to `tftp_root`) per client architecture (DHCP option 93).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFiles {
    /// Arch 0 (x86 BIOS).
    #[serde(default = "default_bios")]
    pub bios: String,
    /// Arch 7 and 9 (x64 UEFI). `ipxe.efi` carries its own NIC drivers; `snponly.efi` uses
    /// the firmware's and is smaller.
    #[serde(default = "default_efi_x64")]
    pub efi_x64: String,
    /// Arch 6 (IA32 UEFI); no answer when unset.
    #[serde(default)]
    pub efi_ia32: Option<String>,
    /// Arch 11 (ARM64 UEFI); no answer when unset.
    #[serde(default)]
    pub efi_arm64: Option<String>,
}

fn default_bios() -> String {
    "undionly.kpxe".into()
}
fn default_efi_x64() -> String {
    "snponly.efi".into()
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: default_bios(),
            efi_x64: default_efi_x64(),
            efi_ia32: None,
            efi_arm64: None,
        }
    }
}

impl BootFiles {
    /// The file for a client architecture, `None` if this architecture is not served.
    pub fn for_arch(&self, arch: u16) -> Option<&str> {
        match arch {
            0 => Some(&self.bios),
            7 | 9 => Some(&self.efi_x64),
            6 => self.efi_ia32.as_deref(),
            11 => self.efi_arm64.as_deref(),
            _ => None,
        }
    }
}

/// An inclusive address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.start)..=u32::from(self.end)).map(Ipv4Addr::from)
    }
}

/// Who sits on a boot network: the TTHC counter LAN, or the public network with kiosks
/// for citizens. Khoi serves an image only on a network of its kind (the image gate's
/// profile: counter or kiosk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    #[default]
    Counter,
    /// Kiosks for citizens; `kiosk` is accepted as another name for it.
    #[serde(alias = "kiosk")]
    Public,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Counter => "counter",
            NetworkKind::Public => "public",
        }
    }
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One boot network. Durations are whole seconds to keep the YAML plain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PxeConfig {
    /// What seats and the admin call this network; the interface's name when unset.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: NetworkKind,
    #[serde(default)]
    pub mode: DhcpMode,
    /// The boot LAN interface; DHCP and TFTP bind to it only.
    pub interface: String,
    /// Khoi's address on `interface`: DHCP server id, next-server, TFTP and HTTP address.
    pub server_ip: Ipv4Addr,
    /// Port of the boot-script HTTP server.
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// Read-only TFTP root holding the iPXE binaries.
    pub tftp_root: PathBuf,
    #[serde(default = "default_true")]
    pub tftp_enabled: bool,
    #[serde(default = "default_tftp_port")]
    pub tftp_port: u16,
    #[serde(default)]
    pub boot_files: BootFiles,
    /// Authoritative mode: addresses for seats without a reservation.
    #[serde(default)]
    pub pool: Option<Pool>,
    #[serde(default)]
    pub subnet_mask: Option<Ipv4Addr>,
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// Each unknown MAC is reported at most once per this many seconds.
    #[serde(default = "default_unknown_report_secs")]
    pub unknown_report_secs: u64,
}

fn default_http_port() -> u16 {
    8077
}
fn default_true() -> bool {
    true
}
fn default_tftp_port() -> u16 {
    69
}
fn default_lease_secs() -> u32 {
    12 * 3600
}
fn default_unknown_report_secs() -> u64 {
    600
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("authoritative DHCP needs `subnet_mask`")]
    MissingSubnetMask,
    #[error("`subnet_mask` {0} is not a contiguous netmask")]
    BadSubnetMask(Ipv4Addr),
    #[error("pool {start}-{end} is empty or reversed")]
    BadPool { start: Ipv4Addr, end: Ipv4Addr },
    #[error("pool {start}-{end} is not inside {server_ip}/{mask}")]
    PoolOutsideSubnet {
        start: Ipv4Addr,
        end: Ipv4Addr,
        server_ip: Ipv4Addr,
        mask: Ipv4Addr,
    },
    #[error("`lease_secs` must be at least 60")]
    LeaseTooShort,
    #[error("`interface` is empty")]
    NoInterface,
    #[error("`name` {0:?} is not a network name (letters, digits, `-` and `_`, at most 32)")]
    BadName(String),
}

impl PxeConfig {
    /// A proxy-mode config with defaults, for tests and as a starting point.
    pub fn proxy(interface: &str, server_ip: Ipv4Addr, tftp_root: PathBuf) -> Self {
        PxeConfig {
            name: None,
            kind: NetworkKind::Counter,
            mode: DhcpMode::Proxy,
            interface: interface.into(),
            server_ip,
            http_port: default_http_port(),
            tftp_root,
            tftp_enabled: true,
            tftp_port: default_tftp_port(),
            boot_files: BootFiles::default(),
            pool: None,
            subnet_mask: None,
            router: None,
            dns: Vec::new(),
            lease_secs: default_lease_secs(),
            unknown_report_secs: default_unknown_report_secs(),
        }
    }

    pub fn unknown_report_period(&self) -> Duration {
        Duration::from_secs(self.unknown_report_secs)
    }

    /// Checks what serde cannot. Authoritative mode without a pool is valid: seats then
    /// need reservations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interface.is_empty() {
            return Err(ConfigError::NoInterface);
        }
        if let Some(n) = &self.name
            && !valid_network_name(n)
        {
            return Err(ConfigError::BadName(n.clone()));
        }
        if self.mode != DhcpMode::Authoritative {
            return Ok(());
        }
        let mask = self.subnet_mask.ok_or(ConfigError::MissingSubnetMask)?;
        let m = u32::from(mask);
        if m.leading_ones() + m.trailing_zeros() != 32 {
            return Err(ConfigError::BadSubnetMask(mask));
        }
        if self.lease_secs < 60 {
            return Err(ConfigError::LeaseTooShort);
        }
        if let Some(pool) = self.pool {
            if u32::from(pool.start) > u32::from(pool.end) {
                return Err(ConfigError::BadPool {
                    start: pool.start,
                    end: pool.end,
                });
            }
            let net = u32::from(self.server_ip) & m;
            if u32::from(pool.start) & m != net || u32::from(pool.end) & m != net {
                return Err(ConfigError::PoolOutsideSubnet {
                    start: pool.start,
                    end: pool.end,
                    server_ip: self.server_ip,
                    mask,
                });
            }
        }
        Ok(())
    }

    /// The network's name: `name`, or the interface's when unset.
    pub fn network_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.interface)
    }

    /// The subnet of `server_ip` as (network, mask), when a mask is configured.
    pub fn subnet(&self) -> Option<(u32, u32)> {
        let m = u32::from(self.subnet_mask?);
        Some((u32::from(self.server_ip) & m, m))
    }

    /// The boot-script URL an iPXE client gets for `mac`.
    pub fn script_url(&self, mac: [u8; 6]) -> String {
        crate::http::script_url(self.server_ip, self.http_port, mac)
    }
}

/// Network names go into the state database, events and the page: short and plain.
pub fn valid_network_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The boot networks, in the order the config lists them; the first is the default
/// network of a seat that names none.
///
/// `pxe:` may be one network (a mapping, the form before there were several) or a list of
/// them; both read as a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNetworks(pub Vec<PxeConfig>);

impl std::ops::Deref for BootNetworks {
    type Target = [PxeConfig];
    fn deref(&self) -> &[PxeConfig] {
        &self.0
    }
}

impl BootNetworks {
    /// The network called `name`.
    pub fn get(&self, name: &str) -> Option<&PxeConfig> {
        self.0.iter().find(|n| n.network_name() == name)
    }

    /// The network a seat is on: the one it names, or the first.
    pub fn of_seat(&self, network: Option<&str>) -> Option<&PxeConfig> {
        match network {
            Some(n) => self.get(n),
            None => self.0.first(),
        }
    }

    /// Checks every network, then what only the list can show: names, interfaces and
    /// addresses used twice, and authoritative pools that overlap. The error names the
    /// entry (its index) and the key at fault.
    pub fn validate(&self) -> Result<(), NetworksError> {
        if self.0.is_empty() {
            return Err(NetworksError {
                index: 0,
                key: "pxe",
                error: ListError::Empty,
            });
        }
        for (index, n) in self.0.iter().enumerate() {
            n.validate().map_err(|e| NetworksError {
                index,
                key: e.key(),
                error: ListError::Entry(e),
            })?;
        }
        for (index, n) in self.0.iter().enumerate() {
            for earlier in &self.0[..index] {
                let clash =
                    |key: &'static str, error: ListError| Err(NetworksError { index, key, error });
                if n.network_name() == earlier.network_name() {
                    return clash(
                        if n.name.is_some() {
                            "name"
                        } else {
                            "interface"
                        },
                        ListError::SameName(n.network_name().to_string()),
                    );
                }
                if n.interface == earlier.interface {
                    return clash(
                        "interface",
                        ListError::SameInterface {
                            interface: n.interface.clone(),
                            other: earlier.network_name().to_string(),
                        },
                    );
                }
                if n.server_ip == earlier.server_ip {
                    return clash(
                        "server_ip",
                        ListError::SameAddress {
                            ip: n.server_ip,
                            other: earlier.network_name().to_string(),
                        },
                    );
                }
                if let (Some(a), Some(b)) = (n.pool, earlier.pool)
                    && u32::from(a.start) <= u32::from(b.end)
                    && u32::from(b.start) <= u32::from(a.end)
                {
                    return clash(
                        "pool",
                        ListError::PoolsOverlap {
                            pool: a,
                            other: earlier.network_name().to_string(),
                            other_pool: b,
                        },
                    );
                }
                if let (Some((na, ma)), Some((nb, mb))) = (n.subnet(), earlier.subnet()) {
                    // Two interfaces on one subnet make the kernel's route for it pick
                    // one of them: replies to the other network's seats would leave
                    // on the wrong wire.
                    let m = ma & mb;
                    if na & m == nb & m {
                        return clash(
                            "subnet_mask",
                            ListError::SubnetsOverlap {
                                other: earlier.network_name().to_string(),
                            },
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for BootNetworks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BootNetworks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boot network (interface, server_ip, ...) or a list of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                PxeConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|n| BootNetworks(vec![n]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = seq.next_element::<PxeConfig>()? {
                    out.push(n);
                }
                Ok(BootNetworks(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of boot networks that cannot work together: entry `index`, key `key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct NetworksError {
    pub index: usize,
    pub key: &'static str,
    pub error: ListError,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the list of boot networks is empty (leave pxe out for no network boot)")]
    Empty,
    #[error(transparent)]
    Entry(ConfigError),
    #[error("two boot networks are called {0:?} (set `name` on one)")]
    SameName(String),
    #[error("interface {interface} is already boot network {other:?}: one network per interface")]
    SameInterface { interface: String, other: String },
    #[error("{ip} is already the address of boot network {other:?}")]
    SameAddress { ip: Ipv4Addr, other: String },
    #[error(
        "pool {}-{} overlaps the pool {}-{} of boot network {other:?}",
        pool.start, pool.end, other_pool.start, other_pool.end
    )]
    PoolsOverlap {
        pool: Pool,
        other: String,
        other_pool: Pool,
    },
    #[error("this network's subnet overlaps the subnet of boot network {other:?}")]
    SubnetsOverlap { other: String },
}

impl ConfigError {
    /// The config key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            ConfigError::MissingSubnetMask | ConfigError::BadSubnetMask(_) => "subnet_mask",
            ConfigError::BadPool { .. } | ConfigError::PoolOutsideSubnet { .. } => "pool",
            ConfigError::LeaseTooShort => "lease_secs",
            ConfigError::NoInterface => "interface",
            ConfigError::BadName(_) => "name",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_defaults_and_unknown_field_rejected() {
        let y = "mode: authoritative\ninterface: br0\nserver_ip: 10.77.0.1\ntftp_root: /srv/tftp\n\
                 pool: {start: 10.77.0.100, end: 10.77.0.199}\nsubnet_mask: 255.255.255.0\n\
                 router: 10.77.0.254\ndns: [10.77.0.254]\nboot_files: {efi_x64: ipxe.efi}\n";
        let c: PxeConfig = serde_saphyr::from_str(y).unwrap();
        assert_eq!(c.mode, DhcpMode::Authoritative);
        assert_eq!(c.boot_files.bios, "undionly.kpxe");
        assert_eq!(c.boot_files.for_arch(9), Some("ipxe.efi"));
        assert_eq!(c.http_port, 8077);
        assert_eq!(c.unknown_report_secs, 600);
        c.validate().unwrap();
        let bad = format!("{y}colour: blue\n");
        assert!(serde_saphyr::from_str::<PxeConfig>(&bad).is_err());
        let off: PxeConfig = serde_saphyr::from_str(
            "mode: off\ninterface: br0\nserver_ip: 10.0.0.1\ntftp_root: /x\n",
        )
        .unwrap();
        assert_eq!(off.mode, DhcpMode::Off);
    }

    #[test]
    fn validate_authoritative() {
        let mut c = PxeConfig::proxy("br0", Ipv4Addr::new(10, 0, 0, 1), "/x".into());
        c.mode = DhcpMode::Authoritative;
        assert_eq!(c.validate(), Err(ConfigError::MissingSubnetMask));
        c.subnet_mask = Some(Ipv4Addr::new(255, 0, 255, 0));
        assert!(matches!(c.validate(), Err(ConfigError::BadSubnetMask(_))));
        c.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
        c.pool = Some(Pool {
            start: Ipv4Addr::new(10, 0, 1, 10),
            end: Ipv4Addr::new(10, 0, 1, 20),
        });
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PoolOutsideSubnet { .. })
        ));
        c.pool = Some(Pool {
            start: Ipv4Addr::new(10, 0, 0, 20),
            end: Ipv4Addr::new(10, 0, 0, 10),
        });
        assert!(matches!(c.validate(), Err(ConfigError::BadPool { .. })));
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    const COUNTER: &str = "interface: br-quay\nserver_ip: 10.77.1.1\ntftp_root: /t\n";

    fn list(y: &str) -> BootNetworks {
        serde_saphyr::from_str(y).unwrap()
    }

    #[test]
    fn one_network_reads_as_a_list_of_one() {
        let one = list(COUNTER);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].network_name(), "br-quay");
        assert_eq!(one[0].kind, NetworkKind::Counter);
        one.validate().unwrap();
        assert_eq!(
            one.of_seat(None).map(|n| n.interface.as_str()),
            Some("br-quay")
        );
        assert!(one.of_seat(Some("public")).is_none());
    }

    #[test]
    fn list_with_names_and_kinds() {
        let two = list(
            "- name: quay\n  interface: br-quay\n  server_ip: 10.77.1.1\n  tftp_root: /t\n\
             - name: public\n  kind: kiosk\n  interface: br-pub\n  server_ip: 10.77.2.1\n  \
             tftp_root: /t\n",
        );
        two.validate().unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two.get("public").map(|n| n.kind), Some(NetworkKind::Public));
        assert_eq!(two.of_seat(None).map(PxeConfig::network_name), Some("quay"));
        // `public` and `kiosk` are one kind.
        let p: PxeConfig = serde_saphyr::from_str(&format!("kind: public\n{COUNTER}")).unwrap();
        assert_eq!(p.kind, NetworkKind::Public);
        assert!(serde_saphyr::from_str::<PxeConfig>(&format!("kind: lobby\n{COUNTER}")).is_err());
        // An unknown key inside a list entry is still refused.
        assert!(
            serde_saphyr::from_str::<BootNetworks>(&format!("- colour: blue\n  {}", "x: 1\n"))
                .is_err()
        );
    }

    #[test]
    fn overlaps_are_refused_naming_entry_and_key() {
        let base = |name: &str, iface: &str, ip: [u8; 4]| {
            let mut n = PxeConfig::proxy(iface, Ipv4Addr::from(ip), "/t".into());
            n.name = Some(name.into());
            n
        };
        let a = base("quay", "br-quay", [10, 77, 1, 1]);
        let err = |nets: Vec<PxeConfig>| BootNetworks(nets).validate().unwrap_err();

        let e = err(vec![a.clone(), base("quay", "br-pub", [10, 77, 2, 1])]);
        assert_eq!((e.index, e.key), (1, "name"));
        let e = err(vec![a.clone(), base("public", "br-quay", [10, 77, 2, 1])]);
        assert_eq!((e.index, e.key), (1, "interface"));
        assert!(e.to_string().contains("br-quay"), "{e}");
        let e = err(vec![a.clone(), base("public", "br-pub", [10, 77, 1, 1])]);
        assert_eq!((e.index, e.key), (1, "server_ip"));
        // Unnamed networks are named by their interface, so two unnamed ones on one
        // interface clash by name first.
        let mut u = a.clone();
        u.name = None;
        let e = err(vec![u.clone(), u.clone()]);
        assert_eq!((e.index, e.key), (1, "interface"));

        let auth = |mut n: PxeConfig, mask: [u8; 4], pool: ([u8; 4], [u8; 4])| {
            n.mode = DhcpMode::Authoritative;
            n.subnet_mask = Some(Ipv4Addr::from(mask));
            n.pool = Some(Pool {
                start: Ipv4Addr::from(pool.0),
                end: Ipv4Addr::from(pool.1),
            });
            n
        };
        let a16 = auth(
            a.clone(),
            [255, 255, 0, 0],
            ([10, 77, 1, 100], [10, 77, 1, 199]),
        );
        let b = auth(
            base("public", "br-pub", [10, 77, 2, 1]),
            [255, 255, 255, 0],
            ([10, 77, 2, 100], [10, 77, 2, 199]),
        );
        let e = err(vec![a16.clone(), b.clone()]);
        assert_eq!((e.index, e.key), (1, "subnet_mask"));
        let mut b_pool = b.clone();
        b_pool.server_ip = Ipv4Addr::new(10, 77, 3, 1);
        b_pool.subnet_mask = Some(Ipv4Addr::new(255, 255, 0, 0));
        b_pool.pool = Some(Pool {
            start: Ipv4Addr::new(10, 77, 1, 150),
            end: Ipv4Addr::new(10, 77, 1, 160),
        });
        let e = err(vec![a16.clone(), b_pool]);
        assert_eq!((e.index, e.key), (1, "pool"));
        assert!(e.to_string().contains("quay"), "{e}");

        let a24 = auth(a, [255, 255, 255, 0], ([10, 77, 1, 100], [10, 77, 1, 199]));
        BootNetworks(vec![a24.clone(), b]).validate().unwrap();

        let mut bad = a24.clone();
        bad.name = Some("quầy 1".into());
        let e = err(vec![a24, bad]);
        assert_eq!((e.index, e.key), (1, "name"));
        assert_eq!(err(vec![]).error, ListError::Empty);
    }
}
