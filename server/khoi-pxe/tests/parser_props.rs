//! Random bytes and mutated captures never panic the parser or the DHCP core, and whatever
//! parses re-emits to something that parses to the same message.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{FakeDir, MAC, SERVER, seat};
use khoi_pxe::dhcp::Received;
use khoi_pxe::wire::Message;
use khoi_pxe::{BootState, DhcpCore, DhcpMode, Pool, PxeConfig};
use proptest::prelude::*;

static SEEDS: [&[u8]; 4] = [
    include_bytes!("vectors/ipxe-bios-f1.bin"),
    include_bytes!("vectors/ipxe-bios-f9.bin"),
    include_bytes!("vectors/ovmf-f1.bin"),
    include_bytes!("vectors/ovmf-f6.bin"),
];

fn cores() -> Vec<DhcpCore> {
    let mut auth = PxeConfig::proxy("br0", SERVER, "/x".into());
    auth.mode = DhcpMode::Authoritative;
    auth.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
    auth.pool = Some(Pool {
        start: Ipv4Addr::new(10, 77, 0, 100),
        end: Ipv4Addr::new(10, 77, 0, 110),
    });
    let proxy = PxeConfig::proxy("br0", SERVER, "/x".into());
    [proxy, auth]
        .iter()
        .map(|c| DhcpCore::new(c, Arc::new(BootState::new(c)), vec![]))
        .collect()
}

fn feed(bytes: &[u8]) {
    let dir = FakeDir::with([seat("pc01", MAC)]);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    if let Ok(m) = Message::parse_bytes(bytes) {
        let again = Message::parse_bytes(&m.emit()).unwrap();
        assert_eq!(again.options, m.options);
        assert_eq!(again.xid, m.xid);
    }
    for mut core in cores() {
        for port in [67, 4011] {
            let rx = Received {
                local_port: port,
                src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 130), 68),
                payload: bytes,
            };
            let (tx, _) = core.process(now, &dir, rx);
            if let Some(tx) = tx {
                assert!(tx.payload.len() >= 300);
                Message::parse_bytes(&tx.payload).unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        feed(&bytes);
    }

    #[test]
    fn mutated_captures(
        seed in 0usize..SEEDS.len(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = SEEDS[seed].to_vec();
        for (i, v) in flips {
            let at = i.index(b.len());
            b[at] = v;
        }
        feed(&b);
        let len = cut.index(b.len() + 1);
        feed(&b[..len]);
    }
}
