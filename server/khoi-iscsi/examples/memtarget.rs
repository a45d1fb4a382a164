//! A standalone iSCSI target over file-backed LUs, for poking at the target
//! with real initiators:
//!
//! ```text
//! cargo run -p khoi-iscsi --example memtarget -- 127.0.0.1:3260 /tmp/luns 64
//! iscsi-inq iscsi://127.0.0.1:3260/iqn.2025-01.vn.khoi:open/0
//! ```
//!
//! Targets and credentials are the fixed set in `tests/support/mod.rs`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use khoi_iscsi::IscsiConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:3260".into());
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let size_mb: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    std::fs::create_dir_all(&dir)?;
    let listener = TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    println!("LISTENING {addr}");
    let resolver = Arc::new(support::TestResolver::new(&dir, size_mb << 20));
    let shutdown = CancellationToken::new();
    let s2 = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s2.cancel();
    });
    khoi_iscsi::serve(
        listener,
        resolver,
        IscsiConfig::new(addr.to_string()),
        shutdown,
    )
    .await;
    Ok(())
}
