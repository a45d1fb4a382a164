//! Sockets: the only part of the crate that does network I/O.
//!
//! Every socket is bound to the boot interface with `SO_BINDTODEVICE`, so a datagram that
//! arrived on another interface never reaches [`DhcpCore`] and a reply can only leave
//! through the boot interface (broadcasts to 255.255.255.255 included). Because of that
//! `IP_PKTINFO` is not needed: the arrival interface is known, and the source address of a
//! reply is the interface's, which [`DhcpSockets::bind`] checks is the configured
//! `server_ip`.

use std::ffi::CStr;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use crate::dhcp::{DhcpCore, Event, PXE_PORT, Received, SERVER_PORT};
use crate::{BootDirectory, PxeConfig};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("boot interface `{0}` does not exist; refusing to start DHCP/TFTP")]
    InterfaceMissing(String),
    #[error(
        "boot interface `{iface}` has no IPv4 address {ip} (it has: {have:?}); refusing to start"
    )]
    AddressMissing {
        iface: String,
        ip: Ipv4Addr,
        have: Vec<Ipv4Addr>,
    },
    #[error("cannot bind {what} on {addr} (interface `{iface}`): {source}")]
    Bind {
        what: &'static str,
        iface: String,
        addr: SocketAddrV4,
        source: io::Error,
    },
    #[error("reading interface addresses: {0}")]
    Ifaddrs(io::Error),
    #[error("DHCP socket: {0}")]
    Io(#[from] io::Error),
}

/// The IPv4 addresses of interface `name`, or [`NetError::InterfaceMissing`].
pub fn interface_ipv4(name: &str) -> Result<Vec<Ipv4Addr>, NetError> {
    Ok(interface_ipv4_nets(name)?
        .into_iter()
        .map(|(ip, _)| ip)
        .collect())
}

/// The IPv4 addresses of interface `name` with their prefix lengths, or
/// [`NetError::InterfaceMissing`].
pub fn interface_ipv4_nets(name: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`; on success we own the list and
    // free it below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(NetError::Ifaddrs(io::Error::last_os_error()));
    }
    let mut found = false;
    let mut addrs = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, alive until
        // freeifaddrs; ifa_name is a NUL-terminated string; ifa_addr and ifa_netmask, when
        // non-null and of family AF_INET, point at sockaddr_in.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_name.is_null() && CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
            {
                found = true;
                if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
                {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    let prefix = if ifa.ifa_netmask.is_null() {
                        32
                    } else {
                        let mask = &*ifa.ifa_netmask.cast::<libc::sockaddr_in>();
                        u8::try_from(u32::from_be(mask.sin_addr.s_addr).count_ones()).unwrap_or(32)
                    };
                    addrs.push((ip, prefix));
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    if !found {
        // An interface that is down without addresses still appears in getifaddrs (as
        // AF_PACKET), so "not found" really means "does not exist".
        return Err(NetError::InterfaceMissing(name.to_string()));
    }
    Ok(addrs)
}

fn netmask(prefix: u8) -> u32 {
    match prefix.min(32) {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

/// Whether two IPv4 subnets (address, prefix length) share any address.
pub fn subnets_overlap(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let mask = netmask(a.1.min(b.1));
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// `10.10.0.0/24` for (10.10.0.1, 24).
pub fn subnet_text(net: (Ipv4Addr, u8)) -> String {
    let prefix = net.1.min(32);
    format!(
        "{}/{prefix}",
        Ipv4Addr::from(u32::from(net.0) & netmask(prefix))
    )
}

fn check_interface(cfg: &PxeConfig) -> Result<(), NetError> {
    let have = interface_ipv4(&cfg.interface)?;
    if !have.contains(&cfg.server_ip) {
        return Err(NetError::AddressMissing {
            iface: cfg.interface.clone(),
            ip: cfg.server_ip,
            have,
        });
    }
    Ok(())
}

/// A UDP socket bound to `addr` on interface `iface` only.
pub fn bind_udp_on(
    iface: &str,
    addr: SocketAddrV4,
    what: &'static str,
) -> Result<UdpSocket, NetError> {
    let err = |source| NetError::Bind {
        what,
        iface: iface.to_string(),
        addr,
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    // No SO_REUSEADDR: sockets on 0.0.0.0:67 bound to different devices do not conflict
    // anyway, and a second DHCP server on the same interface (another Khoi, a wildcard
    // dnsmasq) should fail here with EADDRINUSE rather than answer alongside it.
    s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    Ok(s.into())
}

/// A TCP listener on `addr` that takes connections arriving on interface `iface` only.
///
/// Linux answers for any of its addresses on any interface (the weak host model), so a
/// listener bound to one boot network's address alone would also take a connection a
/// host on another network sends to that address; bound to the device as well, such a
/// connection is refused. This is what keeps a seat's boot script and iSCSI login on its
/// own network.
pub fn bind_tcp_on(
    iface: &str,
    addr: SocketAddrV4,
    what: &'static str,
) -> Result<std::net::TcpListener, NetError> {
    let err = |source| NetError::Bind {
        what,
        iface: iface.to_string(),
        addr,
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    // A restarted server must get its port back while old connections sit in TIME_WAIT.
    s.set_reuse_address(true).map_err(err)?;
    s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    s.listen(1024).map_err(err)?;
    Ok(s.into())
}

/// The DHCP sockets (ports 67 and 4011), bound to the boot interface.
#[derive(Debug)]
pub struct DhcpSockets {
    iface: String,
    port67: UdpSocket,
    port4011: UdpSocket,
}

impl DhcpSockets {
    /// Checks that the interface exists and carries `server_ip`, then binds. Must run in
    /// the network namespace the sockets are for (relevant to tests).
    pub fn bind(cfg: &PxeConfig) -> Result<Self, NetError> {
        check_interface(cfg)?;
        let any = |port| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        Ok(DhcpSockets {
            iface: cfg.interface.clone(),
            port67: bind_udp_on(&cfg.interface, any(SERVER_PORT), "DHCP")?,
            port4011: bind_udp_on(&cfg.interface, any(PXE_PORT), "PXE boot server")?,
        })
    }
}

/// The TFTP listening socket: `server_ip:tftp_port` on the boot interface.
pub fn bind_tftp(cfg: &PxeConfig) -> Result<UdpSocket, NetError> {
    check_interface(cfg)?;
    bind_udp_on(
        &cfg.interface,
        SocketAddrV4::new(cfg.server_ip, cfg.tftp_port),
        "TFTP",
    )
}

/// Runs the DHCP core over the sockets until `cancel` fires.
///
/// Each port gets one long-lived blocking-pool thread that receives, processes (the
/// directory may hit SQLite) and replies in turn. Handing every datagram from an async
/// task to the blocking pool and back cost about 45 µs per answer, more than the whole
/// answer takes; a thread that owns its socket answers as fast as dnsmasq. Datagrams are
/// still processed one at a time (the core is behind one lock).
pub async fn serve_dhcp(
    sockets: DhcpSockets,
    core: DhcpCore,
    dir: Arc<dyn BootDirectory>,
    cancel: CancellationToken,
) -> Result<(), NetError> {
    let core = Arc::new(Mutex::new(core));
    tracing::info!(iface = %sockets.iface, "DHCP listening on ports 67 and 4011");
    let mut loops = Vec::new();
    for (port, socket) in [(SERVER_PORT, sockets.port67), (PXE_PORT, sockets.port4011)] {
        socket.set_nonblocking(false)?;
        // The loop notices a shutdown at the next timeout.
        socket.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
        let (core, dir, cancel) = (core.clone(), dir.clone(), cancel.clone());
        loops.push(tokio::task::spawn_blocking(move || {
            dhcp_loop(port, &socket, &core, &*dir, &cancel);
        }));
    }
    for l in loops {
        if let Err(e) = l.await {
            tracing::error!(error = %e, "DHCP loop failed");
        }
    }
    Ok(())
}

fn dhcp_loop(
    port: u16,
    socket: &UdpSocket,
    core: &Mutex<DhcpCore>,
    dir: &dyn BootDirectory,
    cancel: &CancellationToken,
) {
    let mut buf = vec![0u8; 4096];
    while !cancel.is_cancelled() {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A receive error on one datagram (ENOBUFS, a stray ICMP error) must not stop
                // DHCP for the whole LAN; pause briefly so a persistent one cannot spin.
                tracing::warn!(port, error = %e, "DHCP receive failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let SocketAddr::V4(src) = src else { continue };
        let rx = Received {
            local_port: port,
            src,
            payload: &buf[..n],
        };
        let now = SystemTime::now();
        let (reply, event) = core.lock().process(now, dir, rx);
        log_event(&event, src, port);
        if matches!(event, Event::Offer { .. } | Event::Ack { .. }) {
            // Authoritative mode also answers the OS's own DHCP: only a
            // firmware's (PXE) request can be a boot's first step.
            let pxe = crate::wire::Message::parse_bytes(&buf[..n])
                .is_ok_and(|m| m.options.is_pxe_client());
            dir.dhcp_answered(&event, pxe, now);
        }
        if let Some(tx) = reply
            && let Err(e) = socket.send_to(&tx.payload, SocketAddr::V4(tx.dst))
        {
            tracing::warn!(dst = %tx.dst, error = %e, "DHCP reply not sent");
        }
    }
}

fn log_event(event: &Event, src: SocketAddrV4, port: u16) {
    match event {
        Event::Garbage => tracing::debug!(%src, port, "malformed DHCP datagram dropped"),
        Event::Ignored(why) => tracing::trace!(%src, port, why, "DHCP ignored"),
        Event::UnknownMac {
            mac,
            arch,
            reported,
        } => {
            if *reported {
                tracing::info!(mac = %crate::mac_colon(*mac), ?arch, "unregistered MAC tried to boot");
            }
        }
        Event::NoBootFile { seat, arch } => {
            tracing::warn!(seat, arch, "no boot file configured for this architecture")
        }
        Event::PoolExhausted { seat } => tracing::warn!(seat, "DHCP pool exhausted"),
        other => tracing::info!(%src, port, event = ?other, "DHCP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> (Ipv4Addr, u8) {
        let (ip, p) = s.split_once('/').expect("a/p");
        (ip.parse().expect("ip"), p.parse().expect("prefix"))
    }

    #[test]
    fn subnets_overlap_when_one_holds_an_address_of_the_other() {
        assert!(subnets_overlap(net("10.10.0.1/24"), net("10.10.0.200/24")));
        assert!(subnets_overlap(net("10.10.0.1/16"), net("10.10.7.1/24")));
        assert!(subnets_overlap(net("10.10.7.1/24"), net("10.10.0.1/16")));
        assert!(!subnets_overlap(net("10.10.0.1/24"), net("10.10.1.1/24")));
        assert!(!subnets_overlap(net("10.10.0.1/25"), net("10.10.0.129/25")));
        assert!(subnets_overlap(net("10.10.0.1/0"), net("192.168.1.1/24")));
        assert!(!subnets_overlap(net("10.10.0.1/32"), net("10.10.0.2/32")));
        assert_eq!(subnet_text(net("10.10.7.9/16")), "10.10.0.0/16");
        assert_eq!(subnet_text(net("10.10.7.9/32")), "10.10.7.9/32");
        assert_eq!(subnet_text(net("10.10.7.9/0")), "0.0.0.0/0");
    }
}
