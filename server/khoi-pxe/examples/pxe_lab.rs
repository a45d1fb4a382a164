//! Stand-alone PXE front door for `shared/e2e/pxe_lab.sh`, until the khoi binary wires the
//! crate in:
//!
//! ```sh
//! PRODUCT_CMD="$PWD/target/debug/examples/pxe_lab" shared/e2e/pxe_lab.sh -f bios
//! ```
//!
//! Reads the lab's environment (`LAB_IF`, `LAB_IP`, `TFTP_ROOT`, `IQN`), registers the lab's
//! client MACs 52:54:00:77:00:01..=10 as seats `c1`.. booting `$IQN` from `$LAB_IP:3260`,
//! and serves proxyDHCP, TFTP and the HTTP scripts on port 8077 until killed.
//!
//! `KHOI_PXE_MODE=authoritative` makes it the segment's DHCP server instead (pool
//! `.100`-`.199` of `$LAB_IP`'s /24, leases kept in memory); see `tests/lab_authoritative.sh`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::SystemTime;

use khoi_pxe::{BootDirectory, Lease, PxeConfig, SeatBoot, default_initiator_iqn, mac_colon};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct LabSeats(HashMap<[u8; 6], SeatBoot>);

impl BootDirectory for LabSeats {
    fn seat_by_mac(&self, mac: [u8; 6]) -> Option<SeatBoot> {
        self.0.get(&mac).cloned()
    }
    fn booting(&self, seat: &SeatBoot) {
        eprintln!("LAB: seat {} is booting", seat.seat);
    }
    fn unknown_mac(
        &self,
        mac: [u8; 6],
        arch: Option<u16>,
        from: Option<std::net::IpAddr>,
        _at: SystemTime,
    ) {
        eprintln!(
            "LAB: unknown MAC {} arch {arch:?} from {from:?}",
            mac_colon(mac)
        );
    }
    fn leases(&self) -> Vec<Lease> {
        Vec::new()
    }
    fn save_lease(&self, lease: &Lease) {
        eprintln!("LAB: lease {} -> {}", mac_colon(lease.mac), lease.ip);
    }
    fn remove_lease(&self, _: [u8; 6]) {}
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (run me from pxe_lab.sh)"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let ip: Ipv4Addr = env("LAB_IP")?.parse()?;
    let iqn = env("IQN")?;
    let mut cfg = PxeConfig::proxy(&env("LAB_IF")?, ip, env("TFTP_ROOT")?.into());
    if std::env::var("KHOI_PXE_MODE").as_deref() == Ok("authoritative") {
        let [a, b, c, _] = ip.octets();
        cfg.mode = khoi_pxe::DhcpMode::Authoritative;
        cfg.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
        cfg.pool = Some(khoi_pxe::Pool {
            start: Ipv4Addr::new(a, b, c, 100),
            end: Ipv4Addr::new(a, b, c, 199),
        });
        cfg.lease_secs = 3600;
    }
    let seats = (1u8..=10)
        .map(|i| {
            let mac = [0x52, 0x54, 0x00, 0x77, 0x00, i];
            let name = format!("c{i}");
            let seat = SeatBoot {
                initiator_iqn: default_initiator_iqn(&name),
                seat: name,
                mac,
                target_iqn: iqn.clone(),
                portal: SocketAddrV4::new(ip, 3260),
                chap: None,
                mutual_chap: None,
                reserved_ip: None,
            };
            (mac, seat)
        })
        .collect();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        c.cancel();
    });
    khoi_pxe::run(cfg, Arc::new(LabSeats(seats)), cancel).await?;
    Ok(())
}
