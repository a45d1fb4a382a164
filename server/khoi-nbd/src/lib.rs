//! Khoi's NBD server: fixed newstyle negotiation, structured replies,
//! `base:allocation` block status and pipelined, out-of-order transmission
//! over the shared [`khoi_block::Checked`] block interface.
//!
//! Layers, bottom up:
//! - [`wire`]: zero-copy views and `Repr`s of every message (no I/O).
//! - [`negotiated`]: what negotiation settles and transmission honours
//!   (transmission flags, block size limits, the [`Negotiated`] result).
//! - [`handshake`]: sans-I/O option negotiation returning actions; it asks
//!   the transport to open exports instead of calling the resolver.
//! - [`transmission`]: request validation, execution against the device and
//!   reply construction, with the one `BlockError` → errno mapping.
//! - [`tls`]: TLS with a pre-shared key for STARTTLS (OpenSSL; why there).
//! - [`server`]: the thin tokio transport over TCP, unix sockets and TLS
//!   (accept loop, reader, writer).

use std::sync::atomic::{AtomicU64, Ordering};

use khoi_block::Checked;

pub mod doubles;
pub mod handshake;
pub mod negotiated;
pub mod server;
pub mod tls;
pub mod transmission;
pub mod wire;

pub use negotiated::Negotiated;
pub use server::{Transport, serve, serve_connection, serve_tcp, serve_unix, serve_with_stats};
pub use tls::Tls;

/// One entry of `NBD_OPT_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
}

/// Why an export could not be opened. The message is sent to the client, so
/// it must not leak internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}

/// Maps export names to devices; implemented by the server binary.
pub trait ExportResolver: Send + Sync + 'static {
    fn list(&self) -> Vec<ExportInfo>;
    /// Open an export by name for one connection (all connections to a seat
    /// get the same underlying device). Called on a blocking thread, as is
    /// `list`.
    fn open(&self, name: &str) -> Result<Checked, OpenError>;
}

/// Counters for a server or a single connection. Relaxed atomics: they are
/// statistics, never used for synchronisation.
#[derive(Debug, Default)]
pub struct NbdStats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// A point-in-time copy of [`NbdStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections_total: u64,
    pub connections_active: u64,
    pub requests: u64,
    pub errors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl NbdStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_active: self.connections_active.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
