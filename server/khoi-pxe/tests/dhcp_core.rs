//! The sans-I/O DHCP core driven with packets captured from real clients (qemu's iPXE ROM,
//! OVMF's EDK2 PXE, snponly.efi) and, where useful, compared with what dnsmasq answered.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{FakeDir, MAC, SERVER, seat};
use khoi_pxe::dhcp::{Event, Received};
use khoi_pxe::wire::{Message, MessageType, opt};
use khoi_pxe::{BootState, DhcpCore, DhcpMode, Pool, PxeConfig, Transmit};

static BIOS_DISCOVER: &[u8] = include_bytes!("vectors/ipxe-bios-f1.bin");
static DNSMASQ_BIOS_OFFER: &[u8] = include_bytes!("vectors/ipxe-bios-f2.bin");
static BIOS_REQUEST_4011: &[u8] = include_bytes!("vectors/ipxe-bios-f9.bin");
static DNSMASQ_BIOS_ACK: &[u8] = include_bytes!("vectors/ipxe-bios-f10.bin");
static OVMF_DISCOVER: &[u8] = include_bytes!("vectors/ovmf-f1.bin");
static DNSMASQ_OVMF_OFFER: &[u8] = include_bytes!("vectors/ovmf-f2.bin");
static OVMF_REQUEST_4011: &[u8] = include_bytes!("vectors/ovmf-f6.bin");
static DNSMASQ_OVMF_ACK: &[u8] = include_bytes!("vectors/ovmf-f7.bin");
static SNP_DISCOVER: &[u8] = include_bytes!("vectors/ovmf-f133.bin");
static SNP_REQUEST_4011: &[u8] = include_bytes!("vectors/ovmf-f138.bin");

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 130);
const URL: &str = "http://10.77.0.1:8077/boot/52-54-00-77-00-01.ipxe";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn proxy_cfg() -> PxeConfig {
    PxeConfig::proxy("br0", SERVER, "/srv/tftp".into())
}

fn auth_cfg() -> PxeConfig {
    let mut c = proxy_cfg();
    c.mode = DhcpMode::Authoritative;
    c.pool = Some(Pool {
        start: Ipv4Addr::new(10, 77, 0, 100),
        end: Ipv4Addr::new(10, 77, 0, 102),
    });
    c.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
    c.router = Some(Ipv4Addr::new(10, 77, 0, 254));
    c.dns = vec![Ipv4Addr::new(10, 77, 0, 254), Ipv4Addr::new(1, 1, 1, 1)];
    c.lease_secs = 3600;
    c.validate().unwrap();
    c
}

struct Rig {
    core: DhcpCore,
    dir: Arc<FakeDir>,
    state: Arc<BootState>,
}

impl Rig {
    fn new(cfg: &PxeConfig, dir: FakeDir) -> Self {
        let dir = Arc::new(dir);
        let state = Arc::new(BootState::new(cfg));
        let core = DhcpCore::new(cfg, state.clone(), khoi_pxe::BootDirectory::leases(&*dir));
        Rig { core, dir, state }
    }

    fn send_at(
        &mut self,
        now: SystemTime,
        port: u16,
        src: SocketAddrV4,
        bytes: &[u8],
    ) -> (Option<Transmit>, Event) {
        self.core.process(
            now,
            &*self.dir,
            Received {
                local_port: port,
                src,
                payload: bytes,
            },
        )
    }

    fn send(&mut self, port: u16, src: SocketAddrV4, bytes: &[u8]) -> (Option<Transmit>, Event) {
        self.send_at(t0(), port, src, bytes)
    }
}

fn from_68_unconfigured() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
}

fn parse(tx: &Transmit) -> Message {
    assert!(
        tx.payload.len() >= 300,
        "reply is {} bytes",
        tx.payload.len()
    );
    Message::parse_bytes(&tx.payload).unwrap()
}

fn registered() -> FakeDir {
    FakeDir::with([seat("pc01", MAC)])
}

/// A copy of a captured request with options removed or changed.
fn edit(bytes: &[u8], f: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut m = Message::parse_bytes(bytes).unwrap();
    f(&mut m);
    m.emit()
}

fn without(m: &mut Message, codes: &[u8]) {
    let mut o = khoi_pxe::wire::Options::new();
    for (c, v) in m.options.iter() {
        if !codes.contains(&c) {
            o.set(c, v.to_vec());
        }
    }
    m.options = o;
}

// ---------------------------------------------------------------- proxy, BIOS

#[test]
fn proxy_bios_discover_gets_option_43_menu() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let (tx, ev) = r.send(67, from_68_unconfigured(), BIOS_DISCOVER);
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    let m = parse(&tx);
    let req = Message::parse_bytes(BIOS_DISCOVER).unwrap();
    assert_eq!(m.op, 2);
    assert_eq!(m.xid, req.xid);
    assert_eq!(m.chaddr, req.chaddr);
    assert_eq!(m.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.siaddr, Ipv4Addr::UNSPECIFIED);
    assert!(m.file.is_empty());
    assert_eq!(m.flags & 0x8000, 0x8000);
    assert_eq!(m.message_type(), Some(MessageType::Offer));
    assert_eq!(m.options.server_id(), Some(SERVER));
    assert_eq!(m.options.class_id(), Some(b"PXEClient".as_slice()));
    assert_eq!(
        m.options.get(opt::CLIENT_UUID),
        req.options.get(opt::CLIENT_UUID)
    );
    let mut expect43 = vec![
        6, 1, 3, 10, 4, 0, b'P', b'X', b'E', 8, 7, 0x80, 1, 1, 10, 77, 0, 1,
    ];
    expect43.extend_from_slice(&[9, 20, 0x80, 1, 17]);
    expect43.extend_from_slice(b"Khoi network boot");
    expect43.push(255);
    assert_eq!(m.options.get(opt::VENDOR), Some(expect43.as_slice()));
    assert_eq!(m.options.codes(), vec![53, 54, 60, 97, 43]);
    assert!(matches!(ev, Event::Offer { ip: None, .. }));

    // Same shape as dnsmasq's offer, which this client accepted.
    let d = Message::parse_bytes(DNSMASQ_BIOS_OFFER).unwrap();
    assert_eq!(
        (d.yiaddr, d.siaddr, d.file.is_empty()),
        (m.yiaddr, m.siaddr, true)
    );
    let d43 = d.options.get(opt::VENDOR).unwrap();
    assert_eq!(
        d43[..18],
        expect43[..18],
        "6, 10 and 8 byte-identical to dnsmasq"
    );
}

#[test]
fn proxy_bios_request_4011_gets_file_in_header_and_71_echo() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let (tx, ev) = r.send(4011, SocketAddrV4::new(CLIENT, 68), BIOS_REQUEST_4011);
    let tx = tx.unwrap();
    // Reply to the source port (68 here), unicast to the client's address.
    assert_eq!(tx.dst, SocketAddrV4::new(CLIENT, 68));
    let m = parse(&tx);
    assert_eq!(m.message_type(), Some(MessageType::Ack));
    assert_eq!(m.siaddr, SERVER);
    // The captured client is iPXE (77 and 175): it gets its script, not another iPXE.
    assert_eq!(m.file, URL.as_bytes());
    assert_eq!(
        m.options.get(opt::VENDOR),
        Some([71, 4, 0x80, 1, 0, 0, 255].as_slice())
    );
    assert!(!m.options.contains(67), "boot file only in the header");
    assert!(!m.options.contains(66));
    assert!(matches!(
        ev,
        Event::Ack {
            ip: Some(CLIENT),
            ..
        }
    ));
    assert_eq!(
        r.state.seen.get(MAC),
        Some(CLIENT),
        "HTTP will expect the script fetch from here"
    );

    let d = Message::parse_bytes(DNSMASQ_BIOS_ACK).unwrap();
    assert_eq!(
        (m.yiaddr, m.ciaddr, m.siaddr),
        (d.yiaddr, d.ciaddr, d.siaddr)
    );
    assert_eq!(m.options.get(opt::VENDOR), d.options.get(opt::VENDOR));
    assert_eq!(m.flags, d.flags);
}

#[test]
fn bios_rom_that_is_not_ipxe_gets_undionly() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let plain = edit(BIOS_REQUEST_4011, |m| {
        without(m, &[opt::USER_CLASS, opt::IPXE_ENCAP])
    });
    let (tx, _) = r.send(4011, SocketAddrV4::new(CLIENT, 68), &plain);
    assert_eq!(parse(&tx.unwrap()).file, b"undionly.kpxe");
    // Option 175 alone marks iPXE too.
    let only175 = edit(BIOS_REQUEST_4011, |m| without(m, &[opt::USER_CLASS]));
    let (tx, _) = r.send(4011, SocketAddrV4::new(CLIENT, 68), &only175);
    assert_eq!(parse(&tx.unwrap()).file, URL.as_bytes());
}

// ---------------------------------------------------------------- proxy, UEFI

#[test]
fn proxy_uefi_discover_has_siaddr_and_no_43() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let (tx, _) = r.send(67, from_68_unconfigured(), OVMF_DISCOVER);
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    let m = parse(&tx);
    assert_eq!(m.message_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.siaddr, SERVER);
    assert!(m.file.is_empty());
    assert!(!m.options.contains(opt::VENDOR));
    assert_eq!(m.options.codes(), vec![53, 54, 60, 97]);
    let d = Message::parse_bytes(DNSMASQ_OVMF_OFFER).unwrap();
    assert_eq!(m.options, d.options, "option for option what dnsmasq sent");
    assert_eq!((m.yiaddr, m.siaddr, m.flags), (d.yiaddr, d.siaddr, d.flags));
}

#[test]
fn proxy_uefi_request_from_4011_answered_to_4011() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let (tx, _) = r.send(4011, SocketAddrV4::new(CLIENT, 4011), OVMF_REQUEST_4011);
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(CLIENT, 4011));
    let m = parse(&tx);
    let d = Message::parse_bytes(DNSMASQ_OVMF_ACK).unwrap();
    assert_eq!(m.file, b"snponly.efi");
    assert_eq!(m.file, d.file);
    assert_eq!(m.sname, d.sname);
    assert_eq!(
        (m.ciaddr, m.yiaddr, m.siaddr, m.flags),
        (d.ciaddr, d.yiaddr, d.siaddr, d.flags)
    );
    assert_eq!(m.options, d.options);

    // ipxe.efi when configured.
    let mut cfg = proxy_cfg();
    cfg.boot_files.efi_x64 = "ipxe.efi".into();
    let mut r = Rig::new(&cfg, registered());
    let (tx, _) = r.send(4011, SocketAddrV4::new(CLIENT, 4011), OVMF_REQUEST_4011);
    assert_eq!(parse(&tx.unwrap()).file, b"ipxe.efi");
    // Arch 9 is x64 UEFI as well.
    let arch9 = edit(OVMF_REQUEST_4011, |m| {
        m.options.set(opt::CLIENT_ARCH, [0, 9])
    });
    let (tx, _) = r.send(4011, SocketAddrV4::new(CLIENT, 4011), &arch9);
    assert_eq!(parse(&tx.unwrap()).file, b"ipxe.efi");
}

#[test]
fn snponly_gets_script_url_no_chainload_loop() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let (tx, _) = r.send(67, from_68_unconfigured(), SNP_DISCOVER);
    let m = parse(&tx.unwrap());
    assert_eq!(m.siaddr, SERVER);
    assert!(!m.options.contains(opt::VENDOR));
    // iPXE asks from 68 to 4011 without 43.71 and must be answered (to 68).
    let (tx, _) = r.send(4011, SocketAddrV4::new(CLIENT, 68), SNP_REQUEST_4011);
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(CLIENT, 68));
    let m = parse(&tx);
    assert_eq!(m.file, URL.as_bytes());
    assert!(!m.options.contains(opt::VENDOR));
    assert_eq!(m.ciaddr, CLIENT);
}

#[test]
fn unserved_architecture_gets_nothing() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let arm = edit(OVMF_DISCOVER, |m| m.options.set(opt::CLIENT_ARCH, [0, 11]));
    let (tx, ev) = r.send(67, from_68_unconfigured(), &arm);
    assert!(tx.is_none());
    assert!(matches!(ev, Event::NoBootFile { arch: 11, .. }));
    // Arch from option 60 when 93 is missing.
    let no93 = edit(OVMF_DISCOVER, |m| without(m, &[opt::CLIENT_ARCH]));
    let (tx, _) = r.send(67, from_68_unconfigured(), &no93);
    assert_eq!(parse(&tx.unwrap()).siaddr, SERVER, "still seen as UEFI");
}

// ---------------------------------------------------------------- proxy: who gets nothing

#[test]
fn proxy_ignores_non_pxe_and_non_discover_and_off_mode() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let not_pxe = edit(OVMF_DISCOVER, |m| without(m, &[opt::CLASS_ID]));
    assert!(r.send(67, from_68_unconfigured(), &not_pxe).0.is_none());
    let request = edit(BIOS_DISCOVER, |m| m.options.set(opt::MESSAGE_TYPE, [3]));
    assert!(r.send(67, from_68_unconfigured(), &request).0.is_none());
    assert_eq!(r.core.stats().ignored, 2);
    assert!(r.dir.unknown.lock().is_empty());

    let mut off = proxy_cfg();
    off.mode = DhcpMode::Off;
    let mut r = Rig::new(&off, registered());
    assert!(
        r.send(67, from_68_unconfigured(), BIOS_DISCOVER)
            .0
            .is_none()
    );
    assert!(
        r.send(4011, SocketAddrV4::new(CLIENT, 68), BIOS_REQUEST_4011)
            .0
            .is_none()
    );
}

#[test]
fn unknown_mac_no_reply_reported_once_per_period() {
    let mut cfg = proxy_cfg();
    cfg.unknown_report_secs = 600;
    let mut r = Rig::new(&cfg, FakeDir::default());
    let src = from_68_unconfigured();
    for i in 0..5 {
        let at = t0() + Duration::from_secs(i * 60);
        let (tx, ev) = r.send_at(at, 67, src, OVMF_DISCOVER);
        assert!(tx.is_none());
        assert_eq!(
            ev,
            Event::UnknownMac {
                mac: MAC,
                arch: Some(7),
                reported: i == 0
            }
        );
        assert!(
            r.send_at(at, 4011, SocketAddrV4::new(CLIENT, 4011), OVMF_REQUEST_4011)
                .0
                .is_none()
        );
    }
    assert_eq!(
        r.dir.unknown.lock().clone(),
        vec![(MAC, Some(7), None, t0())]
    );
    let later = t0() + Duration::from_secs(600);
    assert!(r.send_at(later, 67, src, BIOS_DISCOVER).0.is_none());
    let reports = r.dir.unknown.lock().clone();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[1], (MAC, Some(0), None, later));
    assert_eq!(r.core.stats().unknown_mac, 11);
}

/// A client that already has an address (here asking the boot server on
/// 4011) is named in the report; a broadcast from 0.0.0.0 names nobody.
#[test]
fn unknown_mac_report_names_a_configured_requester() {
    let mut r = Rig::new(&proxy_cfg(), FakeDir::default());
    let (tx, _) = r.send(4011, SocketAddrV4::new(CLIENT, 4011), OVMF_REQUEST_4011);
    assert!(tx.is_none());
    let reports = r.dir.unknown.lock().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].2, Some(std::net::IpAddr::V4(CLIENT)));
}

#[test]
fn garbage_counted_and_dropped() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let src = from_68_unconfigured();
    let mut bad_magic = BIOS_DISCOVER.to_vec();
    bad_magic[239] ^= 0xff;
    let mut overlong = BIOS_DISCOVER.to_vec();
    // Option 97's length byte now claims far more than the datagram holds.
    let at = overlong.len() - 20;
    assert_eq!(overlong[at], 97);
    overlong[at + 1] = 200;
    let mut reply_op = BIOS_DISCOVER.to_vec();
    reply_op[0] = 2;
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1; 10],
        BIOS_DISCOVER[..100].to_vec(),
        BIOS_DISCOVER[..241].to_vec(),
        bad_magic,
        overlong,
        reply_op,
    ];
    for (i, c) in cases.iter().enumerate() {
        let (tx, ev) = r.send(67, src, c);
        assert!(tx.is_none(), "case {i}");
        assert_eq!(ev, Event::Garbage, "case {i}");
        let (tx, _) = r.send(4011, src, c);
        assert!(tx.is_none());
    }
    assert_eq!(r.core.stats().garbage, 14);
    assert_eq!(r.state.dhcp_stats(), r.core.stats());
    assert_eq!(r.core.stats().received, 14);
    // Still works afterwards.
    assert!(r.send(67, src, BIOS_DISCOVER).0.is_some());
}

#[test]
fn relayed_discover_goes_back_to_relay() {
    let mut r = Rig::new(&proxy_cfg(), registered());
    let relay = Ipv4Addr::new(10, 9, 9, 1);
    let relayed = edit(OVMF_DISCOVER, |m| m.giaddr = relay);
    let (tx, _) = r.send(67, SocketAddrV4::new(relay, 67), &relayed);
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(relay, 67));
    assert_eq!(parse(&tx).giaddr, relay);
}

// ---------------------------------------------------------------- authoritative

fn discover_from(mac: [u8; 6]) -> Vec<u8> {
    edit(OVMF_DISCOVER, |m| m.chaddr[..6].copy_from_slice(&mac))
}

fn request_from(mac: [u8; 6], ip: Ipv4Addr, server: Option<Ipv4Addr>) -> Vec<u8> {
    edit(OVMF_DISCOVER, |m| {
        m.chaddr[..6].copy_from_slice(&mac);
        m.options.set(opt::MESSAGE_TYPE, [3]);
        m.options.set(opt::REQUESTED_IP, ip.octets());
        if let Some(s) = server {
            m.options.set(opt::SERVER_ID, s.octets());
        }
    })
}

fn with_type(mac: [u8; 6], kind: u8, ciaddr: Ipv4Addr, requested: Option<Ipv4Addr>) -> Vec<u8> {
    edit(OVMF_DISCOVER, |m| {
        m.chaddr[..6].copy_from_slice(&mac);
        m.ciaddr = ciaddr;
        m.flags = 0;
        m.options.set(opt::MESSAGE_TYPE, [kind]);
        if let Some(ip) = requested {
            m.options.set(opt::REQUESTED_IP, ip.octets());
        }
        m.options.set(opt::SERVER_ID, SERVER.octets());
    })
}

const MAC2: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x02];
const MAC3: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x03];
const POOL0: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const POOL1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 101);
const POOL2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 102);

#[test]
fn authoritative_dora_with_lan_options_and_lease_saved() {
    let mut r = Rig::new(&auth_cfg(), registered());
    let src = from_68_unconfigured();
    let (tx, ev) = r.send(67, src, OVMF_DISCOVER);
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    let offer = parse(&tx);
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr, POOL0);
    assert_eq!(offer.siaddr, SERVER);
    assert_eq!(offer.file, b"snponly.efi");
    assert_eq!(
        offer.options.get(opt::SUBNET_MASK),
        Some([255, 255, 255, 0].as_slice())
    );
    assert_eq!(
        offer.options.get(opt::ROUTER),
        Some([10, 77, 0, 254].as_slice())
    );
    assert_eq!(
        offer.options.get(opt::DNS),
        Some([10, 77, 0, 254, 1, 1, 1, 1].as_slice())
    );
    assert_eq!(
        offer.options.get(opt::BROADCAST),
        Some([10, 77, 0, 255].as_slice())
    );
    assert_eq!(
        offer.options.get(opt::LEASE_TIME),
        Some(3600u32.to_be_bytes().as_slice())
    );
    assert_eq!(offer.options.server_id(), Some(SERVER));
    assert!(
        !offer.options.contains(opt::CLASS_ID),
        "plain DHCP offer, no proxy dance"
    );
    assert!(matches!(
        ev,
        Event::Offer {
            ip: Some(POOL0),
            ..
        }
    ));
    assert!(r.dir.leases.lock().is_empty(), "an offer is not a lease");

    let (tx, _) = r.send(67, src, &request_from(MAC, POOL0, Some(SERVER)));
    let ack = parse(&tx.unwrap());
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr, POOL0);
    assert_eq!(ack.file, b"snponly.efi");
    let saved = r.dir.leases.lock().get(&MAC).copied().unwrap();
    assert_eq!(saved.ip, POOL0);
    assert_eq!(saved.expires_unix, khoi_pxe::unix_secs(t0()) + 3600);
    assert_eq!(r.state.seen.get(MAC), Some(POOL0));

    // iPXE (snponly) then does its own DORA and gets the script URL.
    let (tx, _) = r.send(67, src, SNP_DISCOVER);
    let m = parse(&tx.unwrap());
    assert_eq!((m.yiaddr, m.file.as_slice()), (POOL0, URL.as_bytes()));
    // Only iPXE is told to skip the ProxyDHCP wait (175.176 = 1); the firmware's
    // offer above carries no iPXE options.
    assert_eq!(
        m.options.get(opt::IPXE_ENCAP),
        Some([opt::IPXE_NO_PXEDHCP, 1, 1].as_slice())
    );
    assert!(!offer.options.contains(opt::IPXE_ENCAP));
}

#[test]
fn leases_survive_restart_and_pool_is_shared() {
    let dir = FakeDir::with([seat("pc01", MAC), seat("pc02", MAC2), seat("pc03", MAC3)]);
    let mut r = Rig::new(&auth_cfg(), dir);
    let src = from_68_unconfigured();
    // pc02 first, so pc01 would get POOL1 on a fresh start.
    for (mac, ip) in [(MAC2, POOL0), (MAC, POOL1)] {
        let (tx, _) = r.send(67, src, &discover_from(mac));
        assert_eq!(parse(&tx.unwrap()).yiaddr, ip);
        assert!(
            r.send(67, src, &request_from(mac, ip, Some(SERVER)))
                .0
                .is_some()
        );
    }
    // Restart: a new core from the directory's stored leases.
    let dir = Arc::try_unwrap(r.dir).unwrap();
    let mut r = Rig::new(&auth_cfg(), dir);
    let (tx, _) = r.send(67, src, &discover_from(MAC));
    assert_eq!(
        parse(&tx.unwrap()).yiaddr,
        POOL1,
        "same address after restart"
    );
    let (tx, _) = r.send(67, src, &discover_from(MAC3));
    assert_eq!(
        parse(&tx.unwrap()).yiaddr,
        POOL2,
        "held addresses are not reused"
    );
    // INIT-REBOOT (no server id) for the stored address is acknowledged.
    let (tx, _) = r.send(67, src, &request_from(MAC2, POOL0, None));
    assert_eq!(parse(&tx.unwrap()).message_type(), Some(MessageType::Ack));
}

#[test]
fn expired_leases_are_reusable_and_pool_exhaustion_is_silent() {
    let dir = FakeDir::with([seat("pc01", MAC), seat("pc02", MAC2), seat("pc03", MAC3)]);
    let mut cfg = auth_cfg();
    cfg.pool = Some(Pool {
        start: POOL0,
        end: POOL0,
    });
    let mut r = Rig::new(&cfg, dir);
    let src = from_68_unconfigured();
    r.send(67, src, &discover_from(MAC));
    r.send(67, src, &request_from(MAC, POOL0, Some(SERVER)));
    let (tx, ev) = r.send(67, src, &discover_from(MAC2));
    assert!(tx.is_none());
    assert!(matches!(ev, Event::PoolExhausted { .. }));
    let later = t0() + Duration::from_secs(3601);
    let (tx, _) = r.send_at(later, 67, src, &discover_from(MAC2));
    assert_eq!(parse(&tx.unwrap()).yiaddr, POOL0);
    // While offered to pc02, pc03 cannot get it.
    assert!(r.send_at(later, 67, src, &discover_from(MAC3)).0.is_none());
}

#[test]
fn reservation_wins_and_wrong_request_is_nakked() {
    let mut s = seat("pc01", MAC);
    s.reserved_ip = Some(Ipv4Addr::new(10, 77, 0, 50));
    let mut r = Rig::new(&auth_cfg(), FakeDir::with([s]));
    let src = from_68_unconfigured();
    let (tx, _) = r.send(67, src, OVMF_DISCOVER);
    assert_eq!(parse(&tx.unwrap()).yiaddr, Ipv4Addr::new(10, 77, 0, 50));
    let (tx, ev) = r.send(67, src, &request_from(MAC, POOL0, None));
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    let nak = parse(&tx);
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert_eq!(nak.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert!(!nak.options.contains(opt::LEASE_TIME));
    assert!(matches!(
        ev,
        Event::Nak {
            requested: Some(POOL0),
            ..
        }
    ));
    assert!(r.dir.leases.lock().is_empty());
}

#[test]
fn request_for_another_server_drops_our_offer() {
    let dir = FakeDir::with([seat("pc01", MAC), seat("pc02", MAC2)]);
    let mut r = Rig::new(&auth_cfg(), dir);
    let src = from_68_unconfigured();
    r.send(67, src, &discover_from(MAC));
    let other = Ipv4Addr::new(10, 77, 0, 254);
    let (tx, ev) = r.send(67, src, &request_from(MAC, POOL0, Some(other)));
    assert!(tx.is_none());
    assert!(matches!(ev, Event::Ignored(_)));
    // The held address is free again at once.
    let (tx, _) = r.send(67, src, &discover_from(MAC2));
    assert_eq!(parse(&tx.unwrap()).yiaddr, POOL0);
}

#[test]
fn renew_is_unicast_to_ciaddr() {
    let mut r = Rig::new(&auth_cfg(), registered());
    r.send(67, from_68_unconfigured(), &discover_from(MAC));
    r.send(
        67,
        from_68_unconfigured(),
        &request_from(MAC, POOL0, Some(SERVER)),
    );
    let renew = edit(&with_type(MAC, 3, POOL0, None), |m| {
        without(m, &[opt::SERVER_ID])
    });
    let (tx, _) = r.send(67, SocketAddrV4::new(POOL0, 68), &renew);
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(POOL0, 68));
    let m = parse(&tx);
    assert_eq!(
        (m.message_type(), m.yiaddr, m.ciaddr),
        (Some(MessageType::Ack), POOL0, POOL0)
    );
}

#[test]
fn decline_removes_lease_and_quarantines_address() {
    let mut r = Rig::new(&auth_cfg(), registered());
    let src = from_68_unconfigured();
    r.send(67, src, &discover_from(MAC));
    r.send(67, src, &request_from(MAC, POOL0, Some(SERVER)));
    let (tx, ev) = r.send(
        67,
        src,
        &with_type(MAC, 4, Ipv4Addr::UNSPECIFIED, Some(POOL0)),
    );
    assert!(tx.is_none());
    assert_eq!(
        ev,
        Event::Declined {
            seat: "pc01".into(),
            ip: POOL0
        }
    );
    assert!(r.dir.leases.lock().is_empty());
    assert_eq!(r.dir.removed.lock().clone(), vec![MAC]);
    let (tx, _) = r.send(67, src, &discover_from(MAC));
    assert_eq!(
        parse(&tx.unwrap()).yiaddr,
        POOL1,
        "declined address is skipped"
    );
    let much_later = t0() + Duration::from_secs(601);
    let (tx, _) = r.send_at(much_later, 67, src, &discover_from(MAC));
    let m = parse(&tx.unwrap());
    assert!(m.yiaddr == POOL0 || m.yiaddr == POOL1);
    assert_eq!(r.core.stats().declines, 1);
}

#[test]
fn release_removes_lease_inform_gets_config_only() {
    let mut r = Rig::new(&auth_cfg(), registered());
    let src = from_68_unconfigured();
    r.send(67, src, &discover_from(MAC));
    r.send(67, src, &request_from(MAC, POOL0, Some(SERVER)));

    let (tx, ev) = r.send(
        67,
        SocketAddrV4::new(POOL0, 68),
        &with_type(MAC, 8, POOL0, None),
    );
    let tx = tx.unwrap();
    assert_eq!(tx.dst, SocketAddrV4::new(POOL0, 68));
    let m = parse(&tx);
    assert_eq!(m.message_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr, POOL0);
    assert!(!m.options.contains(opt::LEASE_TIME));
    assert!(m.options.contains(opt::SUBNET_MASK));
    assert_eq!(m.options.server_id(), Some(SERVER));
    assert!(matches!(ev, Event::Inform { .. }));

    // RELEASE of an address it does not hold changes nothing.
    let (_, ev) = r.send(
        67,
        SocketAddrV4::new(POOL1, 68),
        &with_type(MAC, 7, POOL1, None),
    );
    assert!(matches!(ev, Event::Ignored(_)));
    assert_eq!(r.dir.leases.lock().len(), 1);
    let (tx, ev) = r.send(
        67,
        SocketAddrV4::new(POOL0, 68),
        &with_type(MAC, 7, POOL0, None),
    );
    assert!(tx.is_none());
    assert_eq!(
        ev,
        Event::Released {
            seat: "pc01".into(),
            ip: POOL0
        }
    );
    assert!(r.dir.leases.lock().is_empty());
    assert_eq!(r.dir.removed.lock().clone(), vec![MAC]);
    assert_eq!(r.core.lease(MAC), None);
    assert_eq!(r.state.seen.get(MAC), None);
}

#[test]
fn authoritative_unknown_mac_gets_nothing_and_is_reported() {
    let mut r = Rig::new(&auth_cfg(), FakeDir::default());
    let src = from_68_unconfigured();
    assert!(r.send(67, src, OVMF_DISCOVER).0.is_none());
    assert!(
        r.send(67, src, &request_from(MAC, POOL0, Some(SERVER)))
            .0
            .is_none()
    );
    assert_eq!(r.dir.unknown.lock().len(), 1);
    // Non-PXE unknown devices are reported too: here they are asking us for an address.
    let phone = edit(OVMF_DISCOVER, |m| {
        m.chaddr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        without(m, &[opt::CLASS_ID, opt::CLIENT_ARCH]);
    });
    assert!(r.send(67, src, &phone).0.is_none());
    assert_eq!(r.dir.unknown.lock()[1].1, None);
    assert!(r.dir.leases.lock().is_empty());
}

#[test]
fn authoritative_still_answers_4011() {
    let mut r = Rig::new(&auth_cfg(), registered());
    let (tx, _) = r.send(4011, SocketAddrV4::new(CLIENT, 4011), OVMF_REQUEST_4011);
    assert_eq!(parse(&tx.unwrap()).file, b"snponly.efi");
}
