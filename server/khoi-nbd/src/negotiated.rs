//! What negotiation settles and transmission honours: the [`Negotiated`]
//! result, the transmission flags an export's capabilities turn into, and
//! the block size limits we advertise.
//!
//! Both [`handshake`](crate::handshake) (which announces these) and
//! [`transmission`](crate::transmission) (which enforces them) import this
//! module and nothing of each other, so the dependency points one way.

use khoi_block::{Caps, Checked};

use crate::wire::transmission_flags as tf;

/// Result of a successful negotiation.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub name: String,
    pub device: Checked,
    /// Transmission flags as sent to the client.
    pub flags: u16,
    pub structured: bool,
    /// Context id of `base:allocation`, if the client selected it.
    pub base_allocation: Option<u32>,
}

/// Block size constraints we advertise: the protocol defaults, so clients
/// that never ask (the Linux kernel, `NBD_OPT_EXPORT_NAME`) see no difference.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest READ/WRITE payload; the spec says 32 MiB must not be treated as
/// a denial of service, and it bounds the per-request buffer.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Transmission flags for an export with `caps`.
///
/// FLUSH and FUA are advertised on every writable export: [`Checked::flush`]
/// is a no-op for devices without a volatile cache, and FUA is emulated by a
/// flush where the device lacks it natively, so both are always honest.
/// `SEND_DF` is only meaningful (and only allowed) with structured replies.
pub fn transmission_flags(caps: Caps, structured: bool) -> u16 {
    let mut f = tf::HAS_FLAGS | tf::SEND_CACHE;
    if caps.read_only {
        f |= tf::READ_ONLY;
    } else {
        f |= tf::SEND_FLUSH | tf::SEND_FUA;
        if caps.trim {
            f |= tf::SEND_TRIM;
        }
        if caps.zero {
            // Our zeroing is a metadata update, never a slow write loop, so
            // FAST_ZERO can always be honoured.
            f |= tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO;
        }
    }
    if caps.multi_conn {
        f |= tf::CAN_MULTI_CONN;
    }
    if structured {
        f |= tf::SEND_DF;
    }
    f
}
