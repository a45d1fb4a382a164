//! A [`BootDirectory`] test double that records every call.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::SystemTime;

use khoi_pxe::{BootDirectory, Lease, SeatBoot, default_initiator_iqn};
use parking_lot::Mutex;

pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x01];
/// One `unknown_mac` call.
pub type UnknownReport = ([u8; 6], Option<u16>, Option<std::net::IpAddr>, SystemTime);

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

#[derive(Debug, Default)]
pub struct FakeDir {
    pub seats: Mutex<HashMap<[u8; 6], SeatBoot>>,
    pub booted: Mutex<Vec<String>>,
    pub unknown: Mutex<Vec<UnknownReport>>,
    pub leases: Mutex<HashMap<[u8; 6], Lease>>,
    pub removed: Mutex<Vec<[u8; 6]>>,
    /// `dhcp_answered` calls: the seat and whether a PXE client asked.
    pub answered: Mutex<Vec<(String, bool)>>,
}

pub fn seat(name: &str, mac: [u8; 6]) -> SeatBoot {
    SeatBoot {
        seat: name.into(),
        mac,
        target_iqn: format!("iqn.2025-07.vn.khoi:seat.{name}"),
        portal: SocketAddrV4::new(SERVER, 3260),
        initiator_iqn: default_initiator_iqn(name),
        chap: None,
        mutual_chap: None,
        reserved_ip: None,
    }
}

impl FakeDir {
    pub fn with(seats: impl IntoIterator<Item = SeatBoot>) -> Self {
        let d = FakeDir::default();
        for s in seats {
            d.seats.lock().insert(s.mac, s);
        }
        d
    }
}

impl BootDirectory for FakeDir {
    fn seat_by_mac(&self, mac: [u8; 6]) -> Option<SeatBoot> {
        self.seats.lock().get(&mac).cloned()
    }
    fn booting(&self, seat: &SeatBoot) {
        self.booted.lock().push(seat.seat.clone());
    }
    fn unknown_mac(
        &self,
        mac: [u8; 6],
        arch: Option<u16>,
        from: Option<std::net::IpAddr>,
        at: SystemTime,
    ) {
        self.unknown.lock().push((mac, arch, from, at));
    }
    fn dhcp_answered(&self, event: &khoi_pxe::dhcp::Event, pxe: bool, _at: SystemTime) {
        use khoi_pxe::dhcp::Event;
        if let Event::Offer { seat, .. } | Event::Ack { seat, .. } = event {
            self.answered.lock().push((seat.clone(), pxe));
        }
    }
    fn leases(&self) -> Vec<Lease> {
        self.leases.lock().values().copied().collect()
    }
    fn save_lease(&self, lease: &Lease) {
        self.leases.lock().insert(lease.mac, *lease);
    }
    fn remove_lease(&self, mac: [u8; 6]) {
        self.leases.lock().remove(&mac);
        self.removed.lock().push(mac);
    }
}
