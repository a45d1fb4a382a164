//! The kernel's IPv4 neighbour table (`/proc/net/arp`): which link-layer
//! address a directly connected peer has.
//!
//! The boot-script port uses it to refuse a fetch of one seat's script by
//! another machine on the same LAN: the MAC in the URL is no secret, but the
//! kernel resolved the fetching address's own MAC to answer its TCP
//! handshake. A peer beyond a router has no entry of its own (its packets
//! come through the router's), so for it the check says nothing.

use std::net::Ipv4Addr;

/// ATF_COM: the entry is resolved (an incomplete one has no address yet).
const ATF_COM: u32 = 0x2;

/// What the neighbour table says about `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Neighbour {
    /// No resolved entry: not on a connected network, or not known.
    Unknown,
    /// The link-layer addresses `ip` resolves to (one per interface it was
    /// seen on).
    Macs(Vec<[u8; 6]>),
}

impl Neighbour {
    /// Whether the table contradicts `mac` being the machine at this address.
    pub fn contradicts(&self, mac: [u8; 6]) -> bool {
        match self {
            Neighbour::Unknown => false,
            Neighbour::Macs(m) => !m.contains(&mac),
        }
    }
}

impl std::fmt::Display for Neighbour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Neighbour::Unknown => f.write_str("unknown"),
            Neighbour::Macs(m) => {
                let names: Vec<String> = m.iter().map(|&m| crate::mac_colon(m)).collect();
                f.write_str(&names.join(", "))
            }
        }
    }
}

/// Looks `ip` up in this network namespace's table. An unreadable table
/// (no procfs) is `Unknown`: the other checks still apply.
pub fn lookup(ip: Ipv4Addr) -> Neighbour {
    match std::fs::read_to_string("/proc/net/arp") {
        Ok(text) => parse(&text, ip),
        Err(_) => Neighbour::Unknown,
    }
}

/// Parses `/proc/net/arp`: a header line, then
/// `IP address  HW type  Flags  HW address  Mask  Device` per entry.
pub fn parse(text: &str, ip: Ipv4Addr) -> Neighbour {
    let mut macs = Vec::new();
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(_hw_type), Some(flags), Some(hw)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if addr.parse::<Ipv4Addr>().ok() != Some(ip) {
            continue;
        }
        let resolved = flags
            .strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .is_some_and(|f| f & ATF_COM != 0);
        match crate::parse_mac(hw) {
            Some(mac) if resolved && mac != [0; 6] && !macs.contains(&mac) => macs.push(mac),
            _ => {}
        }
    }
    if macs.is_empty() {
        Neighbour::Unknown
    } else {
        Neighbour::Macs(macs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.77.0.2        0x1         0x2         52:54:00:aa:bb:01     *        lab0
10.77.0.66       0x1         0x2         02:00:00:00:00:66     *        lab0
10.77.0.9        0x1         0x0         00:00:00:00:00:00     *        lab0
10.88.0.2        0x1         0x2         52:54:00:aa:bb:02     *        pub0
10.88.0.2        0x1         0x6         52:54:00:aa:bb:03     *        lab0
garbage line
";

    #[test]
    fn resolved_entries_name_their_mac() {
        let seat = [0x52, 0x54, 0, 0xaa, 0xbb, 1];
        let n = parse(TABLE, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(n, Neighbour::Macs(vec![seat]));
        assert!(!n.contradicts(seat));
        // The attacker's own address with the seat's MAC in the URL.
        let n = parse(TABLE, Ipv4Addr::new(10, 77, 0, 66));
        assert!(n.contradicts(seat));
    }

    #[test]
    fn unresolved_absent_and_malformed_say_nothing() {
        let any = [2, 0, 0, 0, 0, 9];
        for ip in [
            Ipv4Addr::new(10, 77, 0, 9),
            Ipv4Addr::new(10, 77, 0, 200),
            Ipv4Addr::LOCALHOST,
        ] {
            assert_eq!(parse(TABLE, ip), Neighbour::Unknown, "{ip}");
            assert!(!parse(TABLE, ip).contradicts(any));
        }
        assert_eq!(parse("", Ipv4Addr::new(10, 77, 0, 2)), Neighbour::Unknown);
        assert_eq!(
            parse(
                "h\n10.77.0.2 0x1 0x2 not-a-mac * lab0\n",
                Ipv4Addr::new(10, 77, 0, 2)
            ),
            Neighbour::Unknown
        );
    }

    #[test]
    fn an_address_seen_on_two_interfaces_accepts_either_mac() {
        let n = parse(TABLE, Ipv4Addr::new(10, 88, 0, 2));
        assert!(!n.contradicts([0x52, 0x54, 0, 0xaa, 0xbb, 2]));
        assert!(!n.contradicts([0x52, 0x54, 0, 0xaa, 0xbb, 3]));
        assert!(n.contradicts([0x52, 0x54, 0, 0xaa, 0xbb, 1]));
    }
}
