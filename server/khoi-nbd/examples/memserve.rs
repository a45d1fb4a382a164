//! Serves a RAM disk (and optionally a read-only file) over NBD, for trying
//! the server with real clients by hand:
//!
//! ```text
//! cargo run -p khoi-nbd --example memserve -- 127.0.0.1:10809 64M [golden.img]
//! nbdinfo --list nbd://127.0.0.1:10809
//! qemu-io -f raw -c 'write -P 0xab 0 64k' nbd://127.0.0.1:10809/mem
//! ```
//!
//! Exports: `mem` (writable RAM disk) and, with a file argument, `file`
//! (read-only, served with sendfile).

use std::sync::Arc;

use khoi_block::testing::{FileDisk, MemDisk};
use khoi_nbd::doubles::StaticExports;
use khoi_nbd::{ExportResolver, NbdStats};
use tokio_util::sync::CancellationToken;

fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "khoi_nbd=info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:10809".into());
    let size = args
        .next()
        .map(|s| parse_size(&s).ok_or_else(|| anyhow::anyhow!("bad size {s:?}")))
        .transpose()?
        .unwrap_or(64 << 20);
    let mut exports = StaticExports::new().with("mem", "RAM disk", Arc::new(MemDisk::new(size)));
    if let Some(path) = args.next() {
        let disk = FileDisk::open(path.as_ref())?;
        exports = exports.with("file", &path, Arc::new(disk));
    }
    let exports: Arc<dyn ExportResolver> = Arc::new(exports);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let stats = Arc::new(NbdStats::default());
    khoi_nbd::serve_with_stats(listener, exports, stats.clone(), shutdown).await?;
    tracing::info!(stats = ?stats.snapshot(), "stopped");
    Ok(())
}
