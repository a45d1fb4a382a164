//! `khoi doctor`: what an expert checks on the host before a Monday morning,
//! one line each, OK / WARN / FAIL with the fix. Read-only, except for one
//! DHCP DISCOVER sent on the configured boot interface (never elsewhere) to
//! find a DHCP server that would fight Khoi's.
//!
//! Language: `KHOI_LANG`, else the first set of `LC_ALL`, `LC_MESSAGES`,
//! `LANG`: English when it starts with `en`, Vietnamese otherwise, so an
//! unset or `C` locale (common on servers) gets Vietnamese like the admin
//! page does by default.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use khoi_pxe::{DhcpMode, PxeConfig};
use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Lang {
    Vi,
    En,
}

impl Lang {
    pub fn from_env() -> Lang {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pick = var("KHOI_LANG")
            .or_else(|| var("LC_ALL"))
            .or_else(|| var("LC_MESSAGES"))
            .or_else(|| var("LANG"));
        Lang::from_locale(pick.as_deref())
    }

    fn from_locale(locale: Option<&str>) -> Lang {
        match locale {
            Some(l) if l.to_ascii_lowercase().starts_with("en") => Lang::En,
            _ => Lang::Vi,
        }
    }

    /// Picks the wording for this language.
    fn pick(self, vi: impl Into<String>, en: impl Into<String>) -> String {
        match self {
            Lang::Vi => vi.into(),
            Lang::En => en.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier for scripts (`--json`).
    pub id: &'static str,
    pub status: Status,
    pub message: String,
    /// What to do about it; empty when nothing needs doing.
    pub fix: String,
}

fn ok(id: &'static str, message: String) -> Check {
    Check {
        id,
        status: Status::Ok,
        message,
        fix: String::new(),
    }
}

fn warn(id: &'static str, message: String, fix: String) -> Check {
    Check {
        id,
        status: Status::Warn,
        message,
        fix,
    }
}

fn fail(id: &'static str, message: String, fix: String) -> Check {
    Check {
        id,
        status: Status::Fail,
        message,
        fix,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lang: Lang,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    pub fn summary(&self) -> String {
        let (o, w, f) = (
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail),
        );
        self.lang.pick(
            format!("{o} OK, {w} cảnh báo, {f} lỗi"),
            format!("{o} OK, {w} warnings, {f} failures"),
        )
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => "OK  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            out.push_str(&format!("{tag}  {}\n", c.message));
            if !c.fix.is_empty() {
                let arrow = self.lang.pick("      → cách sửa: ", "      → fix: ");
                out.push_str(&format!("{arrow}{}\n", c.fix));
            }
        }
        out.push_str(&format!("\n{}\n", self.summary()));
        out
    }
}

/// Every check, in the order an admin would go through them.
pub fn run(config: &Config, lang: Lang) -> Report {
    let mut checks = vec![version(config, lang)];
    checks.push(data_dir(&config.data_dir, lang));
    checks.push(free_space(config, lang));
    match &config.pxe {
        None => checks.push(warn(
            "pxe",
            lang.pick(
                "Chưa cấu hình mạng khởi động (không có mục pxe): máy trạm chưa khởi động được từ máy chủ này",
                "No boot network configured (no pxe section): seats cannot boot from this server yet",
            ),
            lang.pick(
                "thêm mục pxe (interface, server_ip, mode) vào /etc/khoi/khoi.yaml, rồi: sudo systemctl restart khoi",
                "add the pxe section (interface, server_ip, mode) to /etc/khoi/khoi.yaml, then: sudo systemctl restart khoi",
            ),
        )),
        Some(nets) => {
            for pxe in nets.iter() {
                let iface = interface(pxe, lang);
                let usable = iface.iter().all(|c| c.status != Status::Fail);
                checks.extend(iface);
                if usable {
                    checks.push(dhcp_servers(pxe, lang, Duration::from_secs(3)));
                }
                checks.push(firewall(pxe, config, lang));
                checks.push(ipxe_files(pxe, lang));
            }
            checks.extend(separate_subnets(nets, lang));
        }
    }
    checks.extend(ports(config, lang));
    checks.push(time_sync(lang));
    checks.push(admin_page(config, lang));
    Report { lang, checks }
}

/// The same checks for the admin page (`/doctor`), worded in the page's
/// language; the server runs them as itself, so its own ports count as held
/// by Khoi.
pub fn runner(config: Config) -> khoi_admin::doctor::Runner {
    use khoi_admin::doctor as page;
    std::sync::Arc::new(move |english| {
        let lang = if english { Lang::En } else { Lang::Vi };
        run(&config, lang)
            .checks
            .into_iter()
            .map(|c| page::Check {
                id: c.id.to_string(),
                status: match c.status {
                    Status::Ok => page::Status::Ok,
                    Status::Warn => page::Status::Warn,
                    Status::Fail => page::Status::Fail,
                },
                message: c.message,
                fix: c.fix,
            })
            .collect()
    })
}

fn server_running(config: &Config) -> bool {
    std::os::unix::net::UnixStream::connect(crate::serve::control_socket(&config.data_dir)).is_ok()
}

fn version(config: &Config, lang: Lang) -> Check {
    let v = env!("CARGO_PKG_VERSION");
    let running = if server_running(config) {
        lang.pick("máy chủ đang chạy", "server running")
    } else {
        lang.pick("máy chủ không chạy", "server not running")
    };
    ok("version", format!("Khoi {v} ({running})"))
}

fn data_dir(dir: &Path, lang: Lang) -> Check {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(dir) {
        Err(_) => warn(
            "data_dir",
            lang.pick(
                format!("Thư mục dữ liệu {} chưa có", dir.display()),
                format!("Data folder {} does not exist yet", dir.display()),
            ),
            lang.pick(
                "khoi serve tạo nó khi khởi động lần đầu",
                "khoi serve creates it at first start",
            ),
        ),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => warn(
            "data_dir",
            lang.pick(
                format!(
                    "Thư mục dữ liệu {} cho người khác đọc (quyền {:o}): trong đó có ổ đĩa và mật khẩu CHAP",
                    dir.display(),
                    m.permissions().mode() & 0o777
                ),
                format!(
                    "Data folder {} is open to other users (mode {:o}): it holds the disks and CHAP secrets",
                    dir.display(),
                    m.permissions().mode() & 0o777
                ),
            ),
            format!("chmod 0700 {}", dir.display()),
        ),
        Ok(_) => ok(
            "data_dir",
            lang.pick(
                format!("Thư mục dữ liệu {} chỉ chủ sở hữu truy cập", dir.display()),
                format!("Data folder {} is private to its owner", dir.display()),
            ),
        ),
    }
}

/// The nearest existing folder at or above `p` (the data folder may not
/// exist before the first start; its filesystem is what matters).
fn existing_ancestor(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs.ancestors()
        .find(|a| a.exists())
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

fn free_bytes(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe_zeroed_statvfs();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn unsafe_zeroed_statvfs() -> libc::statvfs {
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Overlay quotas of every seat (0 means the default; a default of 0 means
/// unlimited, reported as `None`).
fn seat_quotas(config: &Config) -> Option<Option<u64>> {
    let db = config.data_dir.join("khoi.db");
    let conn = rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    let mut stmt = conn.prepare("SELECT quota FROM seats").ok()?;
    let quotas: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let default = config.storage.default_seat_quota.0;
    let mut sum = 0u64;
    for q in quotas {
        let q = u64::try_from(q).unwrap_or(0);
        let q = if q == 0 { default } else { q };
        if q == 0 {
            return Some(None);
        }
        sum = sum.saturating_add(q);
    }
    Some(Some(sum))
}

/// Bytes as GiB with one decimal: how admins read disk space.
struct Gib(u64);

impl std::fmt::Display for Gib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[allow(clippy::cast_precision_loss)] // display only
        let g = self.0 as f64 / f64::from(1u32 << 30);
        write!(f, "{g:.1} GiB")
    }
}

fn free_space(config: &Config, lang: Lang) -> Check {
    let at = existing_ancestor(&config.data_dir);
    let floor = config.storage.free_space_floor.0;
    let Some(free) = free_bytes(&at) else {
        return warn(
            "space",
            lang.pick(
                format!("Không đọc được dung lượng trống của {}", at.display()),
                format!("Cannot read the free space of {}", at.display()),
            ),
            String::new(),
        );
    };
    if free < floor {
        return fail(
            "space",
            lang.pick(
                format!(
                    "Còn trống {} trên {}, dưới mức sàn {}: máy trạm không ghi được",
                    Gib(free),
                    at.display(),
                    Gib(floor)
                ),
                format!(
                    "{} free on {}, below the floor of {}: seats cannot write",
                    Gib(free),
                    at.display(),
                    Gib(floor)
                ),
            ),
            lang.pick(
                "xoá phiên bản ảnh cũ (khoi image delete-version) hoặc thêm ổ đĩa",
                "delete old image versions (khoi image delete-version) or add disk space",
            ),
        );
    }
    let usable = free - floor;
    match seat_quotas(config) {
        Some(Some(sum)) if sum > usable => warn(
            "space",
            lang.pick(
                format!(
                    "Còn trống {} (trên mức sàn {}), nhưng tổng hạn mức các máy trạm là {}: nếu mọi máy ghi đầy thì hết chỗ trước lần khôi phục đêm",
                    Gib(usable),
                    Gib(floor),
                    Gib(sum)
                ),
                format!(
                    "{} free above the floor of {}, but the seats' quotas add up to {}: if every seat fills its overlay the disk runs out before the nightly reset",
                    Gib(usable),
                    Gib(floor),
                    Gib(sum)
                ),
            ),
            lang.pick(
                "giảm hạn mức (storage.default_seat_quota, khoi seat add --quota) hoặc thêm ổ đĩa",
                "lower the quotas (storage.default_seat_quota, --quota) or add disk space",
            ),
        ),
        Some(None) => warn(
            "space",
            lang.pick(
                format!(
                    "Còn trống {} trên mức sàn {}; có máy trạm không giới hạn hạn mức",
                    Gib(usable),
                    Gib(floor)
                ),
                format!(
                    "{} free above the floor of {}; some seat has no quota",
                    Gib(usable),
                    Gib(floor)
                ),
            ),
            lang.pick(
                "đặt storage.default_seat_quota",
                "set storage.default_seat_quota",
            ),
        ),
        Some(Some(sum)) => ok(
            "space",
            lang.pick(
                format!(
                    "Còn trống {} trên mức sàn {}, đủ cho tổng hạn mức {}",
                    Gib(usable),
                    Gib(floor),
                    Gib(sum)
                ),
                format!(
                    "{} free above the floor of {}, enough for the quotas' total of {}",
                    Gib(usable),
                    Gib(floor),
                    Gib(sum)
                ),
            ),
        ),
        None => ok(
            "space",
            lang.pick(
                format!("Còn trống {} trên mức sàn {}", Gib(usable), Gib(floor)),
                format!("{} free above the floor of {}", Gib(usable), Gib(floor)),
            ),
        ),
    }
}

/// IFF_UP and IFF_RUNNING (carrier) of `name`, from the calling thread's
/// network namespace.
fn interface_flags(name: &str) -> std::io::Result<(bool, bool)> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes the
    // flags into `req`, which outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    Ok((flags & libc::IFF_UP != 0, flags & libc::IFF_RUNNING != 0))
}

/// The boot interface: exists, is up with a carrier, has `server_ip`.
pub fn interface(pxe: &PxeConfig, lang: Lang) -> Vec<Check> {
    let name = &pxe.interface;
    let addrs = match khoi_pxe::net::interface_ipv4(name) {
        Ok(a) => a,
        Err(_) => {
            return vec![fail(
                "interface",
                lang.pick(
                    format!("Không có card mạng {name} (pxe.interface)"),
                    format!("There is no network interface {name} (pxe.interface)"),
                ),
                lang.pick(
                    "xem tên card bằng: ip -br link; sửa pxe.interface trong /etc/khoi/khoi.yaml",
                    "list interfaces with: ip -br link; fix pxe.interface in /etc/khoi/khoi.yaml",
                ),
            )];
        }
    };
    let mut out = Vec::new();
    out.push(match interface_flags(name) {
        Ok((true, true)) => ok(
            "interface_up",
            lang.pick(
                format!("Card {name} đang bật và có cáp"),
                format!("Interface {name} is up with a link"),
            ),
        ),
        Ok((true, false)) => fail(
            "interface_up",
            lang.pick(
                format!("Card {name} bật nhưng không có tín hiệu (cáp rút? switch tắt?)"),
                format!("Interface {name} is up but has no link (cable? switch?)"),
            ),
            lang.pick(
                "kiểm tra cáp và switch của mạng quầy",
                "check the cable and the counter LAN's switch",
            ),
        ),
        Ok((false, _)) => fail(
            "interface_up",
            lang.pick(
                format!("Card {name} đang tắt"),
                format!("Interface {name} is down"),
            ),
            lang.pick(
                format!("sudo ip link set {name} up (và để tự bật trong /etc/network/interfaces)"),
                format!("sudo ip link set {name} up (and bring it up at boot in /etc/network/interfaces)"),
            ),
        ),
        Err(e) => warn(
            "interface_up",
            lang.pick(
                format!("Không đọc được trạng thái card {name}: {e}"),
                format!("Cannot read the state of {name}: {e}"),
            ),
            String::new(),
        ),
    });
    let have: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    out.push(if addrs.contains(&pxe.server_ip) {
        ok(
            "interface_address",
            lang.pick(
                format!("Card {name} có địa chỉ {}", pxe.server_ip),
                format!("Interface {name} has the address {}", pxe.server_ip),
            ),
        )
    } else {
        fail(
            "interface_address",
            lang.pick(
                format!(
                    "Card {name} không có địa chỉ {} (pxe.server_ip); đang có: {}",
                    pxe.server_ip,
                    if have.is_empty() { "không".into() } else { have.join(", ") }
                ),
                format!(
                    "Interface {name} does not have {} (pxe.server_ip); it has: {}",
                    pxe.server_ip,
                    if have.is_empty() { "none".into() } else { have.join(", ") }
                ),
            ),
            lang.pick(
                format!(
                    "đặt địa chỉ tĩnh {}/24 cho {name} trong /etc/network/interfaces, hoặc sửa pxe.server_ip",
                    pxe.server_ip
                ),
                format!(
                    "give {name} the static address {}/24 in /etc/network/interfaces, or fix pxe.server_ip",
                    pxe.server_ip
                ),
            ),
        )
    });
    out
}

/// Two boot networks on one subnet: the kernel would route one network's
/// replies (the admin page, anything not bound to an interface) out through
/// the other, and the counter LAN and the public network would no longer be
/// apart. Each network's subnet is its `server_ip`'s on its interface;
/// networks whose interface lacks that address are left to `interface`.
fn separate_subnets(nets: &[PxeConfig], lang: Lang) -> Option<Check> {
    if nets.len() < 2 {
        return None;
    }
    let subnets: Vec<(&str, (Ipv4Addr, u8))> = nets
        .iter()
        .filter_map(|p| {
            let have = khoi_pxe::net::interface_ipv4_nets(&p.interface).ok()?;
            let net = have.into_iter().find(|(ip, _)| *ip == p.server_ip)?;
            Some((p.network_name(), net))
        })
        .collect();
    for (i, (a, na)) in subnets.iter().enumerate() {
        for (b, nb) in &subnets[i + 1..] {
            if khoi_pxe::net::subnets_overlap(*na, *nb) {
                let (sa, sb) = (
                    khoi_pxe::net::subnet_text(*na),
                    khoi_pxe::net::subnet_text(*nb),
                );
                return Some(fail(
                    "subnets",
                    lang.pick(
                        format!("Mạng {a} ({sa}) và mạng {b} ({sb}) dùng chung dải địa chỉ: hai mạng không còn tách biệt"),
                        format!("Networks {a} ({sa}) and {b} ({sb}) share addresses: the two networks are no longer apart"),
                    ),
                    lang.pick(
                        format!("đặt cho {b} một dải riêng (ví dụ 10.20.0.1/24) trong /etc/network/interfaces và sửa pxe.server_ip của nó"),
                        format!("give {b} its own subnet (e.g. 10.20.0.1/24) in /etc/network/interfaces and fix its pxe.server_ip"),
                    ),
                ));
            }
        }
    }
    let list: Vec<String> = subnets
        .iter()
        .map(|(n, s)| format!("{n} {}", khoi_pxe::net::subnet_text(*s)))
        .collect();
    Some(ok(
        "subnets",
        lang.pick(
            format!(
                "Mỗi mạng khởi động một dải địa chỉ riêng: {}",
                list.join(", ")
            ),
            format!("Each boot network has its own subnet: {}", list.join(", ")),
        ),
    ))
}

/// Where Debian's `ipxe` package puts the binaries (as `boot.rs` copies them).
const IPXE_DIR: &str = "/usr/lib/ipxe";

/// The doctor's DHCP probe's MAC (locally administered, "khoid"). Khoi's own
/// DHCP server sees the probe too and must not list it as a machine asking
/// to boot.
pub(crate) const PROBE_MAC: [u8; 6] = [0x02, 0x6b, 0x68, 0x6f, 0x69, 0x64];

fn discover(xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    // Broadcast flag: the probe has no address to be answered at.
    p[10] = 0x80;
    p[28..34].copy_from_slice(&PROBE_MAC);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1, 55, 3, 1, 3, 6, 255]);
    p.resize(300, 0);
    p
}

/// The server identifier of a DHCPOFFER answering `xid`.
fn offer_server(p: &[u8], xid: u32) -> Option<Ipv4Addr> {
    if p.len() < 240
        || p[0] != 2
        || p[4..8] != xid.to_be_bytes()
        || p[236..240] != [99, 130, 83, 99]
    {
        return None;
    }
    let (mut i, mut kind, mut server) = (240, None, None);
    while i < p.len() {
        let code = p[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*p.get(i + 1)?);
        let val = p.get(i + 2..i + 2 + len)?;
        match (code, len) {
            (53, 1) => kind = Some(val[0]),
            (54, 4) => server = Some(Ipv4Addr::new(val[0], val[1], val[2], val[3])),
            _ => {}
        }
        i += 2 + len;
    }
    (kind == Some(2)).then_some(server).flatten()
}

/// Sends one DHCPDISCOVER on the boot interface and collects who offers.
/// Khoi's own answers (server id `server_ip`) are left out.
pub fn probe_dhcp(
    iface: &str,
    server_ip: Ipv4Addr,
    wait: Duration,
) -> std::io::Result<Vec<Ipv4Addr>> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_broadcast(true)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        68,
    )))?;
    let xid = std::process::id() ^ 0x6b68_6f69;
    s.send_to(
        &discover(xid),
        &SockAddr::from(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)),
    )?;
    let sock: std::net::UdpSocket = s.into();
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Some(ip) = offer_server(&buf[..n], xid)
                    && ip != server_ip
                    && !found.contains(&ip)
                {
                    found.push(ip);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

fn dhcp_servers(pxe: &PxeConfig, lang: Lang, wait: Duration) -> Check {
    if pxe.mode == DhcpMode::Off {
        return ok(
            "dhcp",
            lang.pick(
                "DHCP của Khoi tắt (mode: off): DHCP của cơ quan phải chỉ next-server/filename về Khoi",
                "Khoi's DHCP is off (mode: off): the site's DHCP must point next-server/filename at Khoi",
            ),
        );
    }
    let iface = &pxe.interface;
    let others = match probe_dhcp(iface, pxe.server_ip, wait) {
        Ok(o) => o,
        Err(e) => {
            return warn(
                "dhcp",
                lang.pick(
                    format!("Không dò được máy chủ DHCP khác trên {iface}: {e}"),
                    format!("Cannot probe for other DHCP servers on {iface}: {e}"),
                ),
                lang.pick(
                    "chạy khoi doctor bằng root (sudo); cổng 68 có thể đang bị dhclient giữ",
                    "run khoi doctor as root (sudo); port 68 may be held by dhclient",
                ),
            );
        }
    };
    let list = others
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match (pxe.mode, others.is_empty()) {
        (DhcpMode::Authoritative, true) => ok(
            "dhcp",
            lang.pick(
                format!("Không có máy chủ DHCP nào khác trả lời trên {iface}"),
                format!("No other DHCP server answers on {iface}"),
            ),
        ),
        (DhcpMode::Authoritative, false) => fail(
            "dhcp",
            lang.pick(
                format!("Máy chủ DHCP khác ({list}) đang trả lời trên {iface} trong khi Khoi cấp địa chỉ (authoritative): máy trạm sẽ nhận địa chỉ lộn xộn"),
                format!("Another DHCP server ({list}) answers on {iface} while Khoi hands out addresses (authoritative): seats get addresses at random"),
            ),
            lang.pick(
                "tắt DHCP của thiết bị kia trên mạng quầy, hoặc đặt pxe.mode: proxy",
                "turn the other DHCP server off on the counter LAN, or set pxe.mode: proxy",
            ),
        ),
        (_, true) => warn(
            "dhcp",
            lang.pick(
                format!("Chế độ proxy nhưng không có máy chủ DHCP nào trả lời trên {iface}: máy trạm sẽ không có địa chỉ"),
                format!("Proxy mode, but no DHCP server answers on {iface}: seats will get no address"),
            ),
            lang.pick(
                "bật DHCP của cơ quan trên mạng này, hoặc đặt pxe.mode: authoritative với pool",
                "enable the site's DHCP on this LAN, or set pxe.mode: authoritative with a pool",
            ),
        ),
        (_, false) => ok(
            "dhcp",
            lang.pick(
                format!("Máy chủ DHCP của cơ quan ({list}) trả lời trên {iface}; Khoi chỉ bổ sung thông tin khởi động"),
                format!("The site's DHCP server ({list}) answers on {iface}; Khoi only adds boot information"),
            ),
        ),
    }
}

/// Whether an nftables ruleset lets `ports` in on `iface`: `None` when the
/// text does not say clearly either way.
pub fn nft_allows(ruleset: &str, iface: &str, ports: &[u16]) -> Result<(), Vec<u16>> {
    // A filter input hook with a drop policy is the only way nftables
    // blocks by default; without one, everything is accepted.
    let blocks = ruleset.lines().any(|l| {
        let l = l.trim();
        l.contains("hook input") && (l.contains("policy drop") || l.contains("policy reject"))
    });
    if !blocks {
        return Ok(());
    }
    let whole_iface = ruleset.lines().any(|l| {
        let l = l.trim();
        l.contains(&format!("iifname \"{iface}\"")) && l.ends_with("accept") && !l.contains("dport")
    });
    if whole_iface {
        return Ok(());
    }
    let missing: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| {
            !ruleset.lines().any(|l| {
                l.contains("accept")
                    && l.contains("dport")
                    && l.split(|c: char| !c.is_ascii_digit())
                        .any(|w| w == p.to_string())
            })
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

fn firewall(pxe: &PxeConfig, config: &Config, lang: Lang) -> Check {
    let iface = &pxe.interface;
    let mut ports = vec![67, pxe.http_port];
    if pxe.tftp_enabled {
        ports.push(pxe.tftp_port);
    }
    if let Some(a) = config.listen.iscsi {
        ports.push(a.port());
    }
    let out = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            return warn(
                "firewall",
                lang.pick(
                    format!(
                        "Không đọc được tường lửa (nft list ruleset: {})",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                    format!(
                        "Cannot read the firewall (nft list ruleset: {})",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                ),
                lang.pick(
                    "chạy khoi doctor bằng root (sudo)",
                    "run khoi doctor as root (sudo)",
                ),
            );
        }
        Err(_) => {
            return warn(
                "firewall",
                lang.pick(
                    "Không có lệnh nft: không biết tường lửa có chặn DHCP/TFTP/HTTP/iSCSI không",
                    "No nft command: cannot tell whether a firewall blocks DHCP/TFTP/HTTP/iSCSI",
                ),
                lang.pick(
                    format!("cài nftables, hoặc tự kiểm tra các cổng {ports:?} trên {iface}"),
                    format!("install nftables, or check ports {ports:?} on {iface} yourself"),
                ),
            );
        }
    };
    match nft_allows(&text, iface, &ports) {
        Ok(()) => ok(
            "firewall",
            lang.pick(
                format!("Tường lửa (nftables) cho phép DHCP/TFTP/HTTP/iSCSI vào trên {iface}"),
                format!("The firewall (nftables) lets DHCP/TFTP/HTTP/iSCSI in on {iface}"),
            ),
        ),
        Err(missing) => warn(
            "firewall",
            lang.pick(
                format!("Tường lửa chặn mặc định và không thấy luật mở cổng {missing:?} trên {iface}"),
                format!("The firewall drops by default and no rule is seen opening ports {missing:?} on {iface}"),
            ),
            format!("nft add rule inet filter input iifname \"{iface}\" udp dport {{ 67, 69 }} accept; nft add rule inet filter input iifname \"{iface}\" tcp dport {{ {}, {} }} accept", pxe.http_port, config.listen.iscsi.map_or(3260, |a| a.port())),
        ),
    }
}

fn ipxe_files(pxe: &PxeConfig, lang: Lang) -> Check {
    let files: Vec<&str> = [
        Some(pxe.boot_files.bios.as_str()),
        Some(pxe.boot_files.efi_x64.as_str()),
        pxe.boot_files.efi_ia32.as_deref(),
        pxe.boot_files.efi_arm64.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !pxe.tftp_root.join(f).is_file() && !Path::new(IPXE_DIR).join(f).is_file())
        .collect();
    if missing.is_empty() {
        ok(
            "ipxe",
            lang.pick(
                format!("Có đủ tệp iPXE: {}", files.join(", ")),
                format!("iPXE binaries present: {}", files.join(", ")),
            ),
        )
    } else {
        fail(
            "ipxe",
            lang.pick(
                format!(
                    "Thiếu tệp iPXE: {} (không có trong {} lẫn {})",
                    missing.join(", "),
                    pxe.tftp_root.display(),
                    IPXE_DIR
                ),
                format!(
                    "iPXE binaries missing: {} (neither in {} nor {})",
                    missing.join(", "),
                    pxe.tftp_root.display(),
                    IPXE_DIR
                ),
            ),
            "sudo apt install ipxe".into(),
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

fn port_check(what: &str, proto: Proto, addr: SocketAddr, khoi_running: bool, lang: Lang) -> Check {
    let bound = match proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
        Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
    };
    let p = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    match bound {
        Ok(()) => ok(
            "port",
            lang.pick(
                format!("Cổng {what} {p} {addr} đang trống"),
                format!("Port for {what} {p} {addr} is free"),
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && khoi_running => ok(
            "port",
            lang.pick(
                format!("Cổng {what} {p} {addr} đang được dùng (Khoi đang chạy)"),
                format!("Port for {what} {p} {addr} is in use (Khoi is running)"),
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => fail(
            "port",
            lang.pick(
                format!("Cổng {what} {p} {addr} đang bị chương trình khác giữ"),
                format!("Port for {what} {p} {addr} is held by another program"),
            ),
            lang.pick(
                format!(
                    "tìm chương trình đó: sudo ss -lnp{} 'sport = :{}', rồi tắt nó",
                    &p[..1],
                    addr.port()
                ),
                format!(
                    "find it with: sudo ss -lnp{} 'sport = :{}', then stop it",
                    &p[..1],
                    addr.port()
                ),
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => fail(
            "port",
            lang.pick(
                format!("Không có địa chỉ {} trên máy này cho {what}", addr.ip()),
                format!("This host has no address {} for {what}", addr.ip()),
            ),
            lang.pick(
                "đặt địa chỉ đó cho card mạng, hoặc sửa cấu hình",
                "give an interface that address, or fix the config",
            ),
        ),
        Err(e) => warn(
            "port",
            lang.pick(
                format!("Không kiểm tra được cổng {what} {p} {addr}: {e}"),
                format!("Cannot check the port for {what} {p} {addr}: {e}"),
            ),
            lang.pick(
                "chạy khoi doctor bằng root (sudo)",
                "run khoi doctor as root (sudo)",
            ),
        ),
    }
}

fn ports(config: &Config, lang: Lang) -> Vec<Check> {
    let running = server_running(config);
    let mut out = Vec::new();
    if let Some(a) = config.admin.listen {
        out.push(port_check(
            &lang.pick("trang quản trị", "the admin page"),
            Proto::Tcp,
            a,
            running,
            lang,
        ));
    }
    if let Some(a) = config.local_iscsi_listen() {
        out.push(port_check("iSCSI", Proto::Tcp, a, running, lang));
    }
    for (_, _, a) in config.network_portals() {
        out.push(port_check(
            "iSCSI",
            Proto::Tcp,
            SocketAddr::V4(a),
            running,
            lang,
        ));
    }
    if let Some(a) = config.listen.nbd {
        out.push(port_check("NBD", Proto::Tcp, a, running, lang));
    }
    for pxe in config.pxe.iter().flat_map(|n| n.iter()) {
        let ip = std::net::IpAddr::V4(pxe.server_ip);
        out.push(port_check(
            &lang.pick("kịch bản khởi động", "boot scripts"),
            Proto::Tcp,
            SocketAddr::new(ip, pxe.http_port),
            running,
            lang,
        ));
        if pxe.tftp_enabled {
            out.push(port_check(
                "TFTP",
                Proto::Udp,
                SocketAddr::new(ip, pxe.tftp_port),
                running,
                lang,
            ));
        }
        if pxe.mode != DhcpMode::Off {
            out.push(port_check(
                "DHCP",
                Proto::Udp,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 67)),
                running,
                lang,
            ));
        }
    }
    out
}

fn time_sync(lang: Lang) -> Check {
    let synced = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes");
    let synced = synced.or_else(|| {
        Path::new("/run/systemd/timesync/synchronized")
            .exists()
            .then_some(true)
    });
    match synced {
        Some(true) => ok(
            "time",
            lang.pick("Đồng hồ đã đồng bộ (NTP)", "The clock is synchronised (NTP)"),
        ),
        Some(false) => warn(
            "time",
            lang.pick(
                "Đồng hồ chưa đồng bộ: giờ khôi phục đêm, bật máy theo lịch và nhật ký có thể sai",
                "The clock is not synchronised: the nightly reset, the wake-up schedule and the log times may be wrong",
            ),
            "sudo timedatectl set-ntp true".into(),
        ),
        None => warn(
            "time",
            lang.pick(
                "Không biết đồng hồ có đồng bộ không (không có timedatectl/systemd-timesyncd)",
                "Cannot tell whether the clock is synchronised (no timedatectl/systemd-timesyncd)",
            ),
            lang.pick(
                "cài systemd-timesyncd hoặc chrony",
                "install systemd-timesyncd or chrony",
            ),
        ),
    }
}

/// Days from now until the certificate in `pem` expires (negative: past).
fn cert_days_left(pem: &[u8]) -> anyhow::Result<(i32, String)> {
    let cert = openssl::x509::X509::from_pem(pem)?;
    let now = openssl::asn1::Asn1Time::days_from_now(0)?;
    let diff = now.diff(cert.not_after())?;
    let subject = cert
        .subject_name()
        .entries()
        .filter_map(|e| e.data().to_string().ok())
        .collect::<Vec<_>>()
        .join(", ");
    Ok((diff.days, subject))
}

/// The admin page's certificate: the configured one, or the self-signed
/// one Khoi makes in the data folder at first start.
fn certificate(path: &Path, configured: bool, lang: Lang) -> Check {
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(_) if !configured => {
            return ok(
                "admin_cert",
                lang.pick(
                    format!("Trang quản trị dùng HTTPS; chứng chỉ tự ký sẽ được tạo ở {} khi khởi động", path.display()),
                    format!("The admin page uses HTTPS; a self-signed certificate is made at {} at start", path.display()),
                ),
            );
        }
        Err(e) => {
            return fail(
                "admin_cert",
                lang.pick(
                    format!(
                        "Không đọc được chứng chỉ trang quản trị {}: {e}",
                        path.display()
                    ),
                    format!(
                        "Cannot read the admin page's certificate {}: {e}",
                        path.display()
                    ),
                ),
                lang.pick(
                    "sửa admin.tls_cert, hoặc bỏ nó để Khoi tự tạo chứng chỉ tự ký",
                    "fix admin.tls_cert, or remove it so Khoi makes a self-signed one",
                ),
            );
        }
    };
    match cert_days_left(&pem) {
        Err(e) => fail(
            "admin_cert",
            lang.pick(
                format!("{} không phải chứng chỉ PEM hợp lệ: {e}", path.display()),
                format!("{} is not a valid PEM certificate: {e}", path.display()),
            ),
            lang.pick("thay tệp chứng chỉ", "replace the certificate file"),
        ),
        Ok((days, subject)) if days < 0 => fail(
            "admin_cert",
            lang.pick(
                format!(
                    "Chứng chỉ trang quản trị ({subject}) đã hết hạn {} ngày",
                    -days
                ),
                format!(
                    "The admin page's certificate ({subject}) expired {} days ago",
                    -days
                ),
            ),
            lang.pick(
                format!(
                    "gia hạn hoặc thay {}, rồi: sudo systemctl restart khoi",
                    path.display()
                ),
                format!(
                    "renew or replace {}, then: sudo systemctl restart khoi",
                    path.display()
                ),
            ),
        ),
        Ok((days, subject)) if days < 30 => warn(
            "admin_cert",
            lang.pick(
                format!("Chứng chỉ trang quản trị ({subject}) hết hạn sau {days} ngày"),
                format!("The admin page's certificate ({subject}) expires in {days} days"),
            ),
            lang.pick(
                format!("gia hạn {} trước khi hết hạn", path.display()),
                format!("renew {} before it expires", path.display()),
            ),
        ),
        Ok((days, subject)) => ok(
            "admin_cert",
            lang.pick(
                format!("Chứng chỉ trang quản trị ({subject}) còn hạn {days} ngày"),
                format!("The admin page's certificate ({subject}) is valid for {days} more days"),
            ),
        ),
    }
}

fn admin_page(config: &Config, lang: Lang) -> Check {
    let admin = &config.admin;
    let Some(a) = admin.listen else {
        return ok(
            "admin",
            lang.pick("Trang quản trị tắt", "The admin page is off"),
        );
    };
    if admin.tls_enabled() {
        return match &admin.tls_cert {
            Some(cert) => certificate(cert, true, lang),
            None => certificate(
                &config.data_dir.join(khoi_web::server::SELF_SIGNED_CERT),
                false,
                lang,
            ),
        };
    }
    if a.ip().is_loopback() {
        ok(
            "admin",
            lang.pick(
                format!("Trang quản trị chỉ trên máy này ({a}, HTTP)"),
                format!("The admin page is on this host only ({a}, HTTP)"),
            ),
        )
    } else {
        warn(
            "admin",
            lang.pick(
                format!("Trang quản trị mở trên {a} bằng HTTP thường (allow_plain_http): mật khẩu đi không mã hoá nếu không có proxy HTTPS phía trước"),
                format!("The admin page is open on {a} over plain HTTP (allow_plain_http): passwords cross the LAN in clear unless an HTTPS proxy is in front"),
            ),
            lang.pick(
                "bỏ admin.tls: disabled / allow_plain_http để Khoi tự dùng HTTPS, hoặc đặt proxy HTTPS phía trước",
                "drop admin.tls: disabled / allow_plain_http so Khoi serves HTTPS itself, or put an HTTPS proxy in front",
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_follows_the_locale_and_defaults_to_vietnamese() {
        assert_eq!(Lang::from_locale(None), Lang::Vi);
        assert_eq!(Lang::from_locale(Some("C.UTF-8")), Lang::Vi);
        assert_eq!(Lang::from_locale(Some("vi_VN.UTF-8")), Lang::Vi);
        assert_eq!(Lang::from_locale(Some("en_US.UTF-8")), Lang::En);
        assert_eq!(Lang::from_locale(Some("EN")), Lang::En);
    }

    #[test]
    fn dhcp_offer_is_read_from_the_reply() {
        let xid = 0x1234_5678;
        let req = discover(xid);
        assert_eq!(req.len(), 300);
        assert_eq!(&req[28..34], &PROBE_MAC);
        let mut offer = req.clone();
        offer.truncate(240);
        offer[0] = 2;
        offer.extend_from_slice(&[53, 1, 2, 54, 4, 10, 0, 0, 9, 255]);
        assert_eq!(offer_server(&offer, xid), Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(offer_server(&offer, xid + 1), None, "someone else's answer");
        // An ACK is not an offer; a truncated option is garbage, not a panic.
        let mut ack = offer.clone();
        ack[242] = 5;
        assert_eq!(offer_server(&ack, xid), None);
        assert_eq!(offer_server(&offer[..245], xid), None);
    }

    #[test]
    fn nftables_rulesets_are_read_for_the_boot_ports() {
        let ports = [67, 69, 8077, 3260];
        assert_eq!(nft_allows("", "eno1", &ports), Ok(()));
        let open = "table inet filter {\n chain input {\n  type filter hook input priority filter; policy accept;\n }\n}\n";
        assert_eq!(nft_allows(open, "eno1", &ports), Ok(()));
        let closed = "table inet filter {\n chain input {\n  type filter hook input priority filter; policy drop;\n  ct state established,related accept\n  tcp dport 22 accept\n }\n}\n";
        assert_eq!(nft_allows(closed, "eno1", &ports), Err(ports.to_vec()));
        let iface = closed.replace("tcp dport 22 accept", "iifname \"eno1\" accept");
        assert_eq!(nft_allows(&iface, "eno1", &ports), Ok(()));
        assert_eq!(nft_allows(&iface, "eno2", &ports), Err(ports.to_vec()));
        let some = closed.replace(
            "tcp dport 22 accept",
            "iifname \"eno1\" udp dport { 67, 69 } accept\n  tcp dport 8077 accept",
        );
        assert_eq!(nft_allows(&some, "eno1", &ports), Err(vec![3260]));
    }

    use crate::testlan::{Lan, enter};

    fn pxe(mode: &str, iface: &str, ip: &str) -> PxeConfig {
        serde_saphyr::from_str(&format!(
            "mode: {mode}\ninterface: {iface}\nserver_ip: {ip}\ntftp_root: /nonexistent\npool: {{start: 10.77.8.100, end: 10.77.8.110}}\nsubnet_mask: 255.255.255.0\n"
        ))
        .expect("pxe config")
    }

    fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            enter(&ns);
            f()
        })
        .join()
        .expect("thread")
    }

    /// Two boot networks on one subnet are reported (the counter LAN and the
    /// public network would no longer be apart); separate ones are listed.
    #[test]
    fn boot_networks_on_one_subnet_fail() {
        let Some(lan) = Lan::new("doc-sub", 9, "lan0", 254) else {
            return;
        };
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(["-n", &lan.a])
                .args(args)
                .status()
                .expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&[
            "link", "add", "kiosk0", "type", "veth", "peer", "name", "kiosk1",
        ]);
        ip(&["addr", "add", "10.77.9.2/24", "dev", "kiosk0"]);
        let check = |a: &str, b: &str| {
            let nets = vec![pxe("proxy", "boot0", a), pxe("proxy", "kiosk0", b)];
            in_ns(&lan.a, move || separate_subnets(&nets, Lang::En))
        };
        let c = check("10.77.9.1", "10.77.9.2").expect("a check");
        assert_eq!(c.status, Status::Fail, "{}", c.message);
        assert!(c.message.contains("10.77.9.0/24"), "{}", c.message);
        ip(&["addr", "del", "10.77.9.2/24", "dev", "kiosk0"]);
        ip(&["addr", "add", "10.78.9.1/16", "dev", "kiosk0"]);
        let c = check("10.77.9.1", "10.78.9.1").expect("a check");
        assert_eq!(c.status, Status::Ok, "{}", c.message);
        assert!(
            c.message.contains("boot0 10.77.9.0/24") && c.message.contains("kiosk0 10.78.0.0/16"),
            "{}",
            c.message
        );
        // One network: nothing to compare.
        let one = vec![pxe("proxy", "boot0", "10.77.9.1")];
        assert!(in_ns(&lan.a, move || separate_subnets(&one, Lang::En)).is_none());
    }

    #[test]
    fn interface_checks_in_a_namespace() {
        let Some(lan) = Lan::new("doc-if", 8, "lan0", 254) else {
            return;
        };
        let statuses = |p: PxeConfig| {
            in_ns(&lan.a, move || {
                interface(&p, Lang::En)
                    .into_iter()
                    .map(|c| (c.id, c.status))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            statuses(pxe("proxy", "boot0", "10.77.8.1")),
            [
                ("interface_up", Status::Ok),
                ("interface_address", Status::Ok)
            ]
        );
        assert_eq!(
            statuses(pxe("proxy", "boot0", "10.77.8.2")),
            [
                ("interface_up", Status::Ok),
                ("interface_address", Status::Fail)
            ]
        );
        assert_eq!(
            statuses(pxe("proxy", "eno9", "10.77.8.1")),
            [("interface", Status::Fail)]
        );
        // The other end down: no carrier on ours (the kernel notes it
        // within a second or so).
        let st = std::process::Command::new("ip")
            .args(["-n", &lan.b, "link", "set", "lan0", "down"])
            .status()
            .expect("ip");
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = statuses(pxe("proxy", "boot0", "10.77.8.1"))[0];
            if now == ("interface_up", Status::Fail) {
                break;
            }
            assert!(Instant::now() < deadline, "carrier loss not seen: {now:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let st = std::process::Command::new("ip")
            .args(["-n", &lan.a, "link", "set", "boot0", "down"])
            .status()
            .expect("ip");
        assert!(st.success());
        let down = in_ns(&lan.a, || {
            interface(&pxe("proxy", "boot0", "10.77.8.1"), Lang::Vi)
        });
        assert_eq!(down[0].status, Status::Fail);
        assert!(
            down[0].fix.contains("ip link set boot0 up"),
            "{:?}",
            down[0]
        );
    }

    /// A rogue DHCP server on the boot LAN: answers every DISCOVER.
    fn rogue_dhcp(ns: &str, answers: bool) -> std::thread::JoinHandle<()> {
        let ns = ns.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            enter(&ns);
            let s = std::net::UdpSocket::bind(("0.0.0.0", 67)).expect("bind 67");
            s.set_broadcast(true).expect("broadcast");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            tx.send(()).expect("ready");
            let mut buf = [0u8; 1500];
            if let Ok(n) = s.recv(&mut buf)
                && answers
            {
                let mut offer = buf[..240.min(n)].to_vec();
                offer[0] = 2;
                offer[16..20].copy_from_slice(&[10, 77, 8, 50]);
                offer.extend_from_slice(&[53, 1, 2, 54, 4, 10, 77, 8, 254, 255]);
                // The subnet broadcast: this namespace has no route for 255.255.255.255.
                s.send_to(&offer, ("10.77.8.255", 68)).expect("offer");
            }
        });
        rx.recv().expect("rogue up");
        h
    }

    #[test]
    fn a_second_dhcp_server_on_the_boot_lan_is_found() {
        let Some(lan) = Lan::new("doc-dhcp", 8, "lan0", 254) else {
            return;
        };
        let run = |mode: &'static str| {
            in_ns(&lan.a, move || {
                dhcp_servers(
                    &pxe(mode, "boot0", "10.77.8.1"),
                    Lang::En,
                    Duration::from_secs(2),
                )
            })
        };
        let rogue = rogue_dhcp(&lan.b, true);
        let c = run("authoritative");
        rogue.join().expect("rogue");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.message.contains("10.77.8.254"), "{c:?}");

        let rogue = rogue_dhcp(&lan.b, true);
        let c = run("proxy");
        rogue.join().expect("rogue");
        assert_eq!(c.status, Status::Ok, "{c:?}");

        // Nobody answers: fine when authoritative, a problem in proxy mode.
        let quiet = rogue_dhcp(&lan.b, false);
        let c = run("authoritative");
        quiet.join().expect("quiet");
        assert_eq!(c.status, Status::Ok, "{c:?}");
        let quiet = rogue_dhcp(&lan.b, false);
        let c = run("proxy");
        quiet.join().expect("quiet");
        assert_eq!(c.status, Status::Warn, "{c:?}");
    }

    #[test]
    fn ports_free_taken_and_held_by_khoi() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr");
        assert_eq!(
            port_check("x", Proto::Tcp, addr, false, Lang::En).status,
            Status::Fail
        );
        assert_eq!(
            port_check("x", Proto::Tcp, addr, true, Lang::En).status,
            Status::Ok
        );
        drop(held);
        assert_eq!(
            port_check("x", Proto::Tcp, addr, false, Lang::En).status,
            Status::Ok
        );
        let gone = SocketAddr::from(([192, 0, 2, 1], 3260));
        assert_eq!(
            port_check("x", Proto::Tcp, gone, false, Lang::En).status,
            Status::Fail
        );
    }

    #[test]
    fn the_embedded_default_runs_every_check_and_reports_the_missing_boot_network() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.admin.listen = None;
        config.listen.iscsi = None;
        let r = run(&config, Lang::En);
        let pxe = r.checks.iter().find(|c| c.id == "pxe").expect("pxe line");
        assert_eq!(pxe.status, Status::Warn);
        assert!(r.render().contains("WARN  No boot network configured"));
        assert!(
            r.checks
                .iter()
                .any(|c| c.id == "version" && c.message.contains(env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn admin_certificate_expiry_is_reported() {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
        let dir = tempfile::tempdir().expect("tmp");
        let make = |days: u32, not_before_days_ago: u32| {
            let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("key");
            let mut name = x509::X509NameBuilder::new().expect("name");
            name.append_entry_by_text("CN", "khoi.local").expect("cn");
            let name = name.build();
            let mut b = x509::X509Builder::new().expect("builder");
            b.set_subject_name(&name).expect("subject");
            b.set_issuer_name(&name).expect("issuer");
            b.set_pubkey(&key).expect("pubkey");
            let start = Asn1Time::from_unix(
                chrono::Utc::now().timestamp() - i64::from(not_before_days_ago) * 86_400,
            )
            .expect("start");
            b.set_not_before(&start).expect("nb");
            let end = Asn1Time::from_unix(
                chrono::Utc::now().timestamp() - i64::from(not_before_days_ago) * 86_400
                    + i64::from(days) * 86_400,
            )
            .expect("end");
            b.set_not_after(&end).expect("na");
            b.sign(&key, MessageDigest::sha256()).expect("sign");
            b.build().to_pem().expect("pem")
        };
        let path = dir.path().join("admin.crt");
        std::fs::write(&path, make(365, 0)).expect("write");
        let c = certificate(&path, true, Lang::En);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.message.contains("khoi.local"), "{c:?}");
        std::fs::write(&path, make(10, 0)).expect("write");
        assert_eq!(certificate(&path, true, Lang::En).status, Status::Warn);
        std::fs::write(&path, make(10, 20)).expect("write");
        let c = certificate(&path, true, Lang::Vi);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.message.contains("hết hạn"), "{c:?}");
        // A configured file that is missing fails; the self-signed one that
        // Khoi has not made yet is fine.
        let gone = dir.path().join("none.crt");
        assert_eq!(certificate(&gone, true, Lang::En).status, Status::Fail);
        assert_eq!(certificate(&gone, false, Lang::En).status, Status::Ok);
    }
}
