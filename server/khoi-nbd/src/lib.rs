//! Khoi's NBD server: fixed newstyle negotiation, structured replies,
//! `base:allocation` block status and pipelined, out-of-order transmission
//! over the shared [`khoi_block::Checked`] block interface.
//!
//! Layers, bottom up:
//! - [`wire`]: zero-copy views and `Repr`s of every message (no I/O).
//! - [`handshake`]: sans-I/O option negotiation returning actions.
//! - [`transmission`]: request validation, execution against the device and
//!   reply construction, with the one `BlockError` → errno mapping.
//! - [`server`]: the thin tokio transport (accept loop, reader, writer).

pub mod wire;
