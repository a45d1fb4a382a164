//! Sans-I/O DHCP: proxyDHCP (ports 67 and 4011) and authoritative DHCP for registered seats.
//!
//! [`DhcpCore::process`] takes the time, the seat directory and one received datagram and
//! returns what to send (destination and bytes, sent from the socket that received) plus an
//! [`Event`] saying what happened, for the caller to log. It never logs, sleeps or touches a
//! socket, so tests drive it with captured packets and a fake clock.
//!
//! Proxy-mode replies mirror what dnsmasq sends, which real BIOS and UEFI clients are known
//! to accept (see `shared/reference/pxe.md`):
//! - port 67 DISCOVER from a BIOS client: OFFER with yiaddr 0, siaddr 0, no file, options
//!   53, 54, 60 `PXEClient`, 97 echoed and 43 (sub-options 6 = 3, 10, 8, 9), so the client
//!   asks the boot server on port 4011;
//! - port 67 DISCOVER from a UEFI client: the same without 43 and with siaddr set;
//! - port 4011 REQUEST: ACK with siaddr and the boot file in the BOOTP header, 43.71 echoed
//!   when the client sent it. With 43.71 (BIOS boot-server discovery) yiaddr carries the
//!   client's address and ciaddr is 0; without it ciaddr is echoed: this is what dnsmasq
//!   does for each case.
//!
//! A client that is iPXE already (77 = `iPXE` or option 175) gets the absolute URL of its
//! HTTP script instead of an iPXE binary, which breaks the chainload loop.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{BootFiles, DhcpMode, Pool, PxeConfig};
// Kept at this path for callers that learnt it here; the URL is defined beside its route.
pub use crate::http::script_url;
use crate::wire::{self, Message, MessageType, Options, opt, pxe};
use crate::{BootDirectory, BootState, Lease, SeatBoot, unix_secs};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PXE_PORT: u16 = 4011;

/// How long an OFFER holds its address for the client that got it.
const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long an address a client DECLINEd (found in use) is kept out of the pool.
const DECLINE_QUARANTINE: Duration = Duration::from_secs(600);
/// PXE boot server type in option 43.8/43.9/43.71: vendor range, as dnsmasq numbers it.
const BOOT_ITEM_TYPE: [u8; 2] = [0x80, 0x01];
const MENU_TEXT: &[u8] = b"Khoi network boot";

/// One datagram as received.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// The local port it arrived on (67 or 4011); the reply leaves from the same port.
    pub local_port: u16,
    pub src: SocketAddrV4,
    pub payload: &'a [u8],
}

/// A reply to send from the socket on `Received::local_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// What one datagram amounted to, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Truncated, wrong magic, option lengths past the end, or not a BOOTREQUEST.
    Garbage,
    /// Well formed but not for us (not a PXE client in proxy mode, another server chosen,
    /// a message type we do not answer on this port).
    Ignored(&'static str),
    /// Unregistered MAC; `reported` is true the first time in a period.
    UnknownMac {
        mac: [u8; 6],
        arch: Option<u16>,
        reported: bool,
    },
    /// Registered, but no boot file is configured for its architecture.
    NoBootFile {
        seat: String,
        arch: u16,
    },
    /// Authoritative mode: no free address for this seat.
    PoolExhausted {
        seat: String,
    },
    Offer {
        seat: String,
        ip: Option<Ipv4Addr>,
        file: Option<String>,
    },
    Ack {
        seat: String,
        ip: Option<Ipv4Addr>,
        file: Option<String>,
    },
    Nak {
        seat: String,
        requested: Option<Ipv4Addr>,
    },
    Declined {
        seat: String,
        ip: Ipv4Addr,
    },
    Released {
        seat: String,
        ip: Ipv4Addr,
    },
    Inform {
        seat: String,
    },
}

/// Counters, cheap to copy out for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhcpStats {
    pub received: u64,
    pub garbage: u64,
    pub ignored: u64,
    pub unknown_mac: u64,
    pub no_boot_file: u64,
    pub pool_exhausted: u64,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub declines: u64,
    pub releases: u64,
    pub informs: u64,
}

impl DhcpStats {
    /// Both counters added, for one total over several boot networks.
    pub fn sum(&self, o: &DhcpStats) -> DhcpStats {
        DhcpStats {
            received: self.received + o.received,
            garbage: self.garbage + o.garbage,
            ignored: self.ignored + o.ignored,
            unknown_mac: self.unknown_mac + o.unknown_mac,
            no_boot_file: self.no_boot_file + o.no_boot_file,
            pool_exhausted: self.pool_exhausted + o.pool_exhausted,
            offers: self.offers + o.offers,
            acks: self.acks + o.acks,
            naks: self.naks + o.naks,
            declines: self.declines + o.declines,
            releases: self.releases + o.releases,
            informs: self.informs + o.informs,
        }
    }
}

/// The sans-I/O DHCP state machine.
#[derive(Debug)]
pub struct DhcpCore {
    mode: DhcpMode,
    server_ip: Ipv4Addr,
    boot_files: BootFiles,
    http_port: u16,
    lease_secs: u32,
    subnet_mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    pool: Option<Pool>,
    state: Arc<BootState>,
    leases: HashMap<[u8; 6], Lease>,
    offers: HashMap<[u8; 6], (Ipv4Addr, SystemTime)>,
    quarantine: HashMap<Ipv4Addr, SystemTime>,
    stats: DhcpStats,
}

/// The architecture a client runs: option 93's first entry, else the digits in
/// `PXEClient:Arch:NNNNN`, else unknown.
pub fn client_arch(o: &Options) -> Option<u16> {
    o.client_arches()
        .first()
        .copied()
        .or_else(|| o.class_id_arch())
}

impl DhcpCore {
    /// `leases` are the stored leases (from [`BootDirectory::leases`]); ignored outside
    /// authoritative mode. The config must have passed [`PxeConfig::validate`].
    pub fn new(cfg: &PxeConfig, state: Arc<BootState>, leases: Vec<Lease>) -> Self {
        let leases = if cfg.mode == DhcpMode::Authoritative {
            leases.into_iter().map(|l| (l.mac, l)).collect()
        } else {
            HashMap::new()
        };
        DhcpCore {
            mode: cfg.mode,
            server_ip: cfg.server_ip,
            boot_files: cfg.boot_files.clone(),
            http_port: cfg.http_port,
            lease_secs: cfg.lease_secs,
            subnet_mask: cfg.subnet_mask,
            router: cfg.router,
            dns: cfg.dns.clone(),
            pool: cfg.pool,
            state,
            leases,
            offers: HashMap::new(),
            quarantine: HashMap::new(),
            stats: DhcpStats::default(),
        }
    }

    pub fn stats(&self) -> DhcpStats {
        self.stats
    }

    /// The current lease of `mac` (authoritative mode).
    pub fn lease(&self, mac: [u8; 6]) -> Option<Lease> {
        self.leases.get(&mac).copied()
    }

    /// Handles one datagram.
    pub fn process(
        &mut self,
        now: SystemTime,
        dir: &dyn BootDirectory,
        rx: Received<'_>,
    ) -> (Option<Transmit>, Event) {
        self.stats.received += 1;
        self.expire(now);
        let (reply, event) = self.dispatch(now, dir, rx);
        match &event {
            Event::Garbage => self.stats.garbage += 1,
            Event::Ignored(_) => self.stats.ignored += 1,
            Event::UnknownMac { .. } => self.stats.unknown_mac += 1,
            Event::NoBootFile { .. } => self.stats.no_boot_file += 1,
            Event::PoolExhausted { .. } => self.stats.pool_exhausted += 1,
            Event::Offer { .. } => self.stats.offers += 1,
            Event::Ack { .. } => self.stats.acks += 1,
            Event::Nak { .. } => self.stats.naks += 1,
            Event::Declined { .. } => self.stats.declines += 1,
            Event::Released { .. } => self.stats.releases += 1,
            Event::Inform { .. } => self.stats.informs += 1,
        }
        self.state.publish_dhcp_stats(self.stats);
        (reply, event)
    }

    fn dispatch(
        &mut self,
        now: SystemTime,
        dir: &dyn BootDirectory,
        rx: Received<'_>,
    ) -> (Option<Transmit>, Event) {
        let Ok(req) = Message::parse_bytes(rx.payload) else {
            return (None, Event::Garbage);
        };
        if req.op != wire::OP_REQUEST {
            return (None, Event::Garbage);
        }
        let Some(mac) = req.mac() else {
            return (None, Event::Ignored("not Ethernet"));
        };
        let Some(kind) = req.message_type() else {
            return (None, Event::Ignored("BOOTP without DHCP message type"));
        };
        match (self.mode, rx.local_port) {
            (DhcpMode::Off, _) => (None, Event::Ignored("DHCP is off")),
            (_, PXE_PORT) => self.boot_server(now, dir, rx, &req, mac, kind),
            (DhcpMode::Proxy, _) => self.proxy(now, dir, rx, &req, mac, kind),
            (DhcpMode::Authoritative, _) => self.authoritative(now, dir, rx, &req, mac, kind),
        }
    }

    fn expire(&mut self, now: SystemTime) {
        self.offers.retain(|_, (_, until)| *until > now);
        self.quarantine.retain(|_, until| *until > now);
    }

    fn unknown(
        &self,
        dir: &dyn BootDirectory,
        now: SystemTime,
        mac: [u8; 6],
        req: &Message,
        src: SocketAddrV4,
    ) -> Event {
        let arch = client_arch(&req.options);
        let reported = self.state.reporter.should_report(mac, now);
        if reported {
            let from = Some(*src.ip())
                .filter(|ip| !ip.is_unspecified())
                .map(std::net::IpAddr::V4);
            dir.unknown_mac(mac, arch, from, now);
        }
        Event::UnknownMac {
            mac,
            arch,
            reported,
        }
    }

    /// The boot file for this client: its script URL if it is iPXE already, else the iPXE
    /// binary for its architecture (missing arch information means a legacy BIOS ROM).
    fn boot_file(&self, req: &Message, mac: [u8; 6]) -> Result<String, u16> {
        if req.options.is_ipxe() {
            return Ok(script_url(self.server_ip, self.http_port, mac));
        }
        let arch = client_arch(&req.options).unwrap_or(0);
        self.boot_files
            .for_arch(arch)
            .map(str::to_string)
            .ok_or(arch)
    }

    fn reply_base(&self, req: &Message, kind: MessageType) -> Message {
        let mut options = Options::new();
        options.set(opt::MESSAGE_TYPE, [u8::from(kind)]);
        options.set(opt::SERVER_ID, self.server_ip.octets());
        Message {
            op: wire::OP_REPLY,
            htype: req.htype,
            hlen: req.hlen,
            hops: 0,
            xid: req.xid,
            secs: req.secs,
            flags: req.flags,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: req.giaddr,
            chaddr: req.chaddr,
            sname: Vec::new(),
            file: Vec::new(),
            options,
        }
    }

    /// Relayed: back to the relay's server port. Otherwise to the client's address if it
    /// has one (`unicast`), else broadcast, always to the request's source port.
    fn destination(
        &self,
        rx: &Received<'_>,
        req: &Message,
        unicast: Option<Ipv4Addr>,
        reply: &mut Message,
    ) -> SocketAddrV4 {
        if !req.giaddr.is_unspecified() {
            return SocketAddrV4::new(req.giaddr, SERVER_PORT);
        }
        match unicast.filter(|ip| !ip.is_unspecified() && !ip.is_broadcast()) {
            Some(ip) => SocketAddrV4::new(ip, rx.src.port()),
            None => {
                reply.flags |= wire::BROADCAST_FLAG;
                SocketAddrV4::new(Ipv4Addr::BROADCAST, rx.src.port())
            }
        }
    }

    // ---------------------------------------------------------------- proxy, port 67

    fn proxy(
        &mut self,
        now: SystemTime,
        dir: &dyn BootDirectory,
        rx: Received<'_>,
        req: &Message,
        mac: [u8; 6],
        kind: MessageType,
    ) -> (Option<Transmit>, Event) {
        if kind != MessageType::Discover {
            // The site's DHCP server owns REQUEST/DECLINE/RELEASE/INFORM on port 67.
            return (None, Event::Ignored("proxy: not a DISCOVER"));
        }
        if !req.options.is_pxe_client() {
            return (None, Event::Ignored("proxy: not a PXE client"));
        }
        let Some(seat) = dir.seat_by_mac(mac) else {
            return (None, self.unknown(dir, now, mac, req, rx.src));
        };
        let arch = client_arch(&req.options).unwrap_or(0);
        let file = match self.boot_file(req, mac) {
            Ok(f) => f,
            Err(arch) => {
                return (
                    None,
                    Event::NoBootFile {
                        seat: seat.seat,
                        arch,
                    },
                );
            }
        };
        let mut reply = self.reply_base(req, MessageType::Offer);
        reply.options.set(opt::CLASS_ID, b"PXEClient".to_vec());
        if let Some(uuid) = req.options.get(opt::CLIENT_UUID) {
            reply.options.set(opt::CLIENT_UUID, uuid.to_vec());
        }
        if arch == 0 {
            reply.options.set(opt::VENDOR, self.pxe_menu());
        } else {
            reply.siaddr = self.server_ip;
        }
        let dst = self.destination(&rx, req, Some(req.ciaddr), &mut reply);
        let event = Event::Offer {
            seat: seat.seat,
            ip: None,
            file: Some(file),
        };
        (
            Some(Transmit {
                dst,
                payload: reply.emit(),
            }),
            event,
        )
    }

    /// Option 43 for a BIOS proxy offer: discovery control 3 (no broadcast or multicast
    /// discovery: use the list), prompt with timeout 0, one boot server (us), one menu item.
    fn pxe_menu(&self) -> Vec<u8> {
        let mut servers = BOOT_ITEM_TYPE.to_vec();
        servers.push(1);
        servers.extend_from_slice(&self.server_ip.octets());
        let mut menu = BOOT_ITEM_TYPE.to_vec();
        menu.push(u8::try_from(MENU_TEXT.len()).unwrap_or(u8::MAX));
        menu.extend_from_slice(MENU_TEXT);
        wire::encode_pxe_vendor(&[
            (pxe::DISCOVERY_CONTROL, vec![0x03]),
            (pxe::MENU_PROMPT, b"\x00PXE".to_vec()),
            (pxe::BOOT_SERVERS, servers),
            (pxe::BOOT_MENU, menu),
        ])
    }

    // ---------------------------------------------------------------- boot server, port 4011

    fn boot_server(
        &mut self,
        now: SystemTime,
        dir: &dyn BootDirectory,
        rx: Received<'_>,
        req: &Message,
        mac: [u8; 6],
        kind: MessageType,
    ) -> (Option<Transmit>, Event) {
        if kind != MessageType::Request {
            return (None, Event::Ignored("4011: not a REQUEST"));
        }
        if !req.options.is_pxe_client() {
            return (None, Event::Ignored("4011: not a PXE client"));
        }
        let Some(seat) = dir.seat_by_mac(mac) else {
            return (None, self.unknown(dir, now, mac, req, rx.src));
        };
        let file = match self.boot_file(req, mac) {
            Ok(f) => f,
            Err(arch) => {
                return (
                    None,
                    Event::NoBootFile {
                        seat: seat.seat,
                        arch,
                    },
                );
            }
        };
        let mut reply = self.reply_base(req, MessageType::Ack);
        reply.options.set(opt::CLASS_ID, b"PXEClient".to_vec());
        if let Some(uuid) = req.options.get(opt::CLIENT_UUID) {
            reply.options.set(opt::CLIENT_UUID, uuid.to_vec());
        }
        let boot_item = req.options.pxe_boot_item();
        if let Some(item) = boot_item {
            reply.options.set(
                opt::VENDOR,
                wire::encode_pxe_vendor(&[(pxe::BOOT_ITEM, item.to_vec())]),
            );
            reply.yiaddr = req.ciaddr;
        } else {
            reply.ciaddr = req.ciaddr;
        }
        reply.siaddr = self.server_ip;
        reply.sname = self.server_ip.to_string().into_bytes();
        reply.file = file.clone().into_bytes();
        let to = if req.ciaddr.is_unspecified() {
            *rx.src.ip()
        } else {
            req.ciaddr
        };
        let dst = self.destination(&rx, req, Some(to), &mut reply);
        // The site's DHCP gave the client this address; its script fetch will come from it.
        self.state.seen.record(mac, to);
        let event = Event::Ack {
            seat: seat.seat,
            // Not ours to give, but where the seat is (for boot times).
            ip: Some(to),
            file: Some(file),
        };
        (
            Some(Transmit {
                dst,
                payload: reply.emit(),
            }),
            event,
        )
    }

    // ---------------------------------------------------------------- authoritative, port 67

    fn authoritative(
        &mut self,
        now: SystemTime,
        dir: &dyn BootDirectory,
        rx: Received<'_>,
        req: &Message,
        mac: [u8; 6],
        kind: MessageType,
    ) -> (Option<Transmit>, Event) {
        if let Some(sid) = req.options.server_id()
            && sid != self.server_ip
        {
            // The client picked (or talks to) another server: forget our offer.
            self.offers.remove(&mac);
            return (None, Event::Ignored("addressed to another server"));
        }
        let Some(seat) = dir.seat_by_mac(mac) else {
            return match kind {
                MessageType::Discover | MessageType::Request | MessageType::Inform => {
                    (None, self.unknown(dir, now, mac, req, rx.src))
                }
                _ => (None, Event::Ignored("unknown MAC")),
            };
        };
        match kind {
            MessageType::Discover => self.auth_discover(now, rx, req, mac, seat),
            MessageType::Request => self.auth_request(now, dir, rx, req, mac, seat),
            MessageType::Decline => self.auth_decline(now, dir, req, mac, seat),
            MessageType::Release => self.auth_release(dir, req, mac, seat),
            MessageType::Inform => self.auth_inform(rx, req, mac, seat),
            _ => (None, Event::Ignored("unexpected message type")),
        }
    }

    fn is_taken_by_other(&self, ip: Ipv4Addr, mac: [u8; 6], now: SystemTime) -> bool {
        self.leases
            .values()
            .any(|l| l.mac != mac && l.ip == ip && !l.expired(now))
            || self
                .offers
                .iter()
                .any(|(m, (o, until))| *m != mac && *o == ip && *until > now)
    }

    fn usable(&self, ip: Ipv4Addr, mac: [u8; 6], now: SystemTime) -> bool {
        let pool_ok = self.pool.is_some_and(|p| p.contains(ip));
        pool_ok
            && ip != self.server_ip
            && Some(ip) != self.router
            && !self.dns.contains(&ip)
            && !self.quarantine.contains_key(&ip)
            && !self.is_net_or_broadcast(ip)
            && !self.is_taken_by_other(ip, mac, now)
    }

    fn is_net_or_broadcast(&self, ip: Ipv4Addr) -> bool {
        let Some(mask) = self.subnet_mask else {
            return false;
        };
        let host = u32::from(ip) & !u32::from(mask);
        host == 0 || host == !u32::from(mask)
    }

    /// The address this seat should have: its reservation, else the address it already
    /// holds or was offered (affinity across reboots), else the first free pool address.
    fn address_for(&self, seat: &SeatBoot, mac: [u8; 6], now: SystemTime) -> Option<Ipv4Addr> {
        if let Some(ip) = seat.reserved_ip {
            return Some(ip);
        }
        if let Some(l) = self.leases.get(&mac)
            && self.usable(l.ip, mac, now)
        {
            return Some(l.ip);
        }
        if let Some((ip, _)) = self.offers.get(&mac)
            && self.usable(*ip, mac, now)
        {
            return Some(*ip);
        }
        let pool = self.pool?;
        let taken: HashSet<Ipv4Addr> = self
            .leases
            .values()
            .filter(|l| l.mac != mac && !l.expired(now))
            .map(|l| l.ip)
            .chain(
                self.offers
                    .iter()
                    .filter(|(m, _)| **m != mac)
                    .map(|(_, (ip, _))| *ip),
            )
            .collect();
        pool.iter()
            .filter(|ip| !taken.contains(ip))
            .find(|ip| self.usable(*ip, mac, now))
    }

    fn add_lan_options(&self, reply: &mut Message, with_lease: bool) {
        if with_lease {
            reply
                .options
                .set(opt::LEASE_TIME, self.lease_secs.to_be_bytes());
        }
        if let Some(mask) = self.subnet_mask {
            reply.options.set(opt::SUBNET_MASK, mask.octets());
        }
        if let Some(r) = self.router {
            reply.options.set(opt::ROUTER, r.octets());
        }
        if !self.dns.is_empty() {
            let v: Vec<u8> = self.dns.iter().flat_map(|ip| ip.octets()).collect();
            reply.options.set(opt::DNS, v);
        }
        if let Some(mask) = self.subnet_mask {
            let bcast = Ipv4Addr::from(u32::from(self.server_ip) | !u32::from(mask));
            reply.options.set(opt::BROADCAST, bcast.octets());
        }
    }

    /// Plain DHCP boot fields (next-server and file in the header), which BIOS ROMs, EDK2
    /// and iPXE all take from a non-proxy offer. A client with no served architecture
    /// still gets its address, just no file.
    fn add_boot_fields(&self, reply: &mut Message, req: &Message, mac: [u8; 6]) -> Option<String> {
        let file = self.boot_file(req, mac).ok()?;
        if req.options.is_ipxe() {
            // We are the only boot server on this LAN: tell iPXE not to wait for
            // ProxyDHCP offers, which otherwise costs every boot about 3 s
            // (iPXE's "no-pxedhcp" setting, encapsulated option 175.176).
            reply
                .options
                .set(opt::IPXE_ENCAP, [opt::IPXE_NO_PXEDHCP, 1, 1]);
        }
        reply.siaddr = self.server_ip;
        reply.sname = self.server_ip.to_string().into_bytes();
        reply.file = file.clone().into_bytes();
        Some(file)
    }

    fn auth_discover(
        &mut self,
        now: SystemTime,
        rx: Received<'_>,
        req: &Message,
        mac: [u8; 6],
        seat: SeatBoot,
    ) -> (Option<Transmit>, Event) {
        let Some(ip) = self.address_for(&seat, mac, now) else {
            return (None, Event::PoolExhausted { seat: seat.seat });
        };
        self.offers.insert(mac, (ip, now + OFFER_HOLD));
        let mut reply = self.reply_base(req, MessageType::Offer);
        reply.yiaddr = ip;
        self.add_lan_options(&mut reply, true);
        let file = self.add_boot_fields(&mut reply, req, mac);
        let dst = self.destination(&rx, req, None, &mut reply);
        (
            Some(Transmit {
                dst,
                payload: reply.emit(),
            }),
            Event::Offer {
                seat: seat.seat,
                ip: Some(ip),
                file,
            },
        )
    }

    fn nak(
        &self,
        rx: Received<'_>,
        req: &Message,
        seat: SeatBoot,
        requested: Option<Ipv4Addr>,
    ) -> (Option<Transmit>, Event) {
        let mut reply = self.reply_base(req, MessageType::Nak);
        reply.secs = 0;
        reply
            .options
            .set(opt::MESSAGE, b"address not valid for this client".to_vec());
        // RFC 2131 4.3.2: NAKs are broadcast (the client's address is what is wrong).
        let dst = self.destination(&rx, req, None, &mut reply);
        (
            Some(Transmit {
                dst,
                payload: reply.emit(),
            }),
            Event::Nak {
                seat: seat.seat,
                requested,
            },
        )
    }

    fn auth_request(
        &mut self,
        now: SystemTime,
        dir: &dyn BootDirectory,
        rx: Received<'_>,
        req: &Message,
        mac: [u8; 6],
        seat: SeatBoot,
    ) -> (Option<Transmit>, Event) {
        // SELECTING and INIT-REBOOT name the address in option 50; RENEWING and REBINDING
        // in ciaddr.
        let requested = req
            .options
            .requested_ip()
            .or(Some(req.ciaddr).filter(|ip| !ip.is_unspecified()));
        let Some(requested) = requested else {
            return (None, Event::Ignored("REQUEST without an address"));
        };
        let expected = self.address_for(&seat, mac, now);
        if expected != Some(requested) {
            return self.nak(rx, req, seat, Some(requested));
        }
        self.offers.remove(&mac);
        let lease = Lease {
            mac,
            ip: requested,
            expires_unix: unix_secs(now) + u64::from(self.lease_secs),
        };
        self.leases.insert(mac, lease);
        dir.save_lease(&lease);
        self.state.seen.record(mac, requested);
        let mut reply = self.reply_base(req, MessageType::Ack);
        reply.yiaddr = requested;
        reply.ciaddr = req.ciaddr;
        self.add_lan_options(&mut reply, true);
        let file = self.add_boot_fields(&mut reply, req, mac);
        let dst = self.destination(&rx, req, Some(req.ciaddr), &mut reply);
        (
            Some(Transmit {
                dst,
                payload: reply.emit(),
            }),
            Event::Ack {
                seat: seat.seat,
                ip: Some(requested),
                file,
            },
        )
    }

    fn auth_decline(
        &mut self,
        now: SystemTime,
        dir: &dyn BootDirectory,
        req: &Message,
        mac: [u8; 6],
        seat: SeatBoot,
    ) -> (Option<Transmit>, Event) {
        let Some(ip) = req.options.requested_ip() else {
            return (None, Event::Ignored("DECLINE without option 50"));
        };
        self.offers.remove(&mac);
        if self.leases.get(&mac).is_some_and(|l| l.ip == ip) {
            self.leases.remove(&mac);
            dir.remove_lease(mac);
        }
        // Someone else answers ARP for it: keep it out of the pool for a while. A
        // reservation cannot move, so a declined reservation is offered again regardless.
        self.quarantine.insert(ip, now + DECLINE_QUARANTINE);
        (
            None,
            Event::Declined {
                seat: seat.seat,
                ip,
            },
        )
    }

    fn auth_release(
        &mut self,
        dir: &dyn BootDirectory,
        req: &Message,
        mac: [u8; 6],
        seat: SeatBoot,
    ) -> (Option<Transmit>, Event) {
        let ip = req.ciaddr;
        if self.leases.get(&mac).is_none_or(|l| l.ip != ip) {
            return (
                None,
                Event::Ignored("RELEASE of an address this MAC does not hold"),
            );
        }
        self.leases.remove(&mac);
        dir.remove_lease(mac);
        self.state.seen.forget(mac);
        (
            None,
            Event::Released {
                seat: seat.seat,
                ip,
            },
        )
    }

    fn auth_inform(
        &mut self,
        rx: Received<'_>,
        req: &Message,
        mac: [u8; 6],
        seat: SeatBoot,
    ) -> (Option<Transmit>, Event) {
        // RFC 2131 3.4: configuration only; no yiaddr and no lease time.
        let mut reply = self.reply_base(req, MessageType::Ack);
        reply.ciaddr = req.ciaddr;
        self.add_lan_options(&mut reply, false);
        self.add_boot_fields(&mut reply, req, mac);
        let to = if req.ciaddr.is_unspecified() {
            *rx.src.ip()
        } else {
            req.ciaddr
        };
        let dst = self.destination(&rx, req, Some(to), &mut reply);
        (
            Some(Transmit {
                dst,
                payload: reply.emit(),
            }),
            Event::Inform { seat: seat.seat },
        )
    }
}
