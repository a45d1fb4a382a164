//! Configuration, embeddable in the binary's YAML.

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

/// Everything the PXE front door needs. Durations are whole seconds to keep the YAML plain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PxeConfig {
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
}

impl PxeConfig {
    /// A proxy-mode config with defaults, for tests and as a starting point.
    pub fn proxy(interface: &str, server_ip: Ipv4Addr, tftp_root: PathBuf) -> Self {
        PxeConfig {
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

    /// The boot-script URL an iPXE client gets for `mac`.
    pub fn script_url(&self, mac: [u8; 6]) -> String {
        crate::http::script_url(self.server_ip, self.http_port, mac)
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
