#![no_main]
//! Bytes → DHCP parser → emit/parse round trip, and the proxy and authoritative cores on
//! ports 67 and 4011 (khoi-pxe).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use khoi_pxe::dhcp::Received;
use khoi_pxe::wire::Message;
use khoi_pxe::{BootDirectory, DhcpCore, DhcpMode, Lease, Pool, PxeConfig, SeatBoot, BootState};
use libfuzzer_sys::fuzz_target;

struct Dir(HashMap<[u8; 6], SeatBoot>);

impl BootDirectory for Dir {
    fn seat_by_mac(&self, mac: [u8; 6]) -> Option<SeatBoot> {
        self.0.get(&mac).cloned()
    }
    fn booting(&self, _: &SeatBoot) {}
    fn unknown_mac(&self, _: [u8; 6], _: Option<u16>, _: SystemTime) {}
    fn leases(&self) -> Vec<Lease> {
        Vec::new()
    }
    fn save_lease(&self, _: &Lease) {}
    fn remove_lease(&self, _: [u8; 6]) {}
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse_bytes(data) {
        let again = Message::parse_bytes(&m.emit()).expect("emitted message parses");
        assert_eq!(again.options, m.options);
    }
    let server = Ipv4Addr::new(10, 77, 0, 1);
    let mac = [0x52, 0x54, 0, 0x77, 0, 1];
    let dir = Dir(HashMap::from([(
        mac,
        SeatBoot {
            seat: "pc01".into(),
            mac,
            target_iqn: "iqn.2025-07.vn.khoi:seat.pc01".into(),
            portal: SocketAddrV4::new(server, 3260),
            initiator_iqn: khoi_pxe::default_initiator_iqn("pc01"),
            chap: None,
            mutual_chap: None,
            reserved_ip: None,
        },
    )]));
    let mut auth = PxeConfig::proxy("br0", server, "/x".into());
    auth.mode = DhcpMode::Authoritative;
    auth.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
    auth.pool = Some(Pool { start: Ipv4Addr::new(10, 77, 0, 100), end: Ipv4Addr::new(10, 77, 0, 101) });
    for cfg in [PxeConfig::proxy("br0", server, "/x".into()), auth] {
        let mut core = DhcpCore::new(&cfg, Arc::new(BootState::new(&cfg)), Vec::new());
        for port in [67, 4011] {
            let rx = Received { local_port: port, src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 130), 68), payload: data };
            let (tx, _) = core.process(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30), &dir, rx);
            if let Some(tx) = tx {
                assert!(tx.payload.len() >= 300);
                Message::parse_bytes(&tx.payload).expect("our reply parses");
            }
        }
    }
});
