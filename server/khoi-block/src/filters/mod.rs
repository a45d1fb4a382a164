//! Layers that wrap a [`BlockDevice`](crate::BlockDevice) and are one
//! themselves, like nbdkit's filters: each changes one thing and passes the
//! rest through to `inner`.
//! They sit below [`crate::Checked`], so they see what reaches the device,
//! emulation included (an emulated FUA write is a write, then a flush).
//!
//! - [`Metered`]: reports each request's bytes and latency to an [`IoSink`].
//! - [`Fault`]: fails chosen requests (nbdkit's `error` filter).
//! - [`Delay`]: sleeps before chosen requests (nbdkit's `delay` filter).

mod delay;
mod fault;
mod metered;

pub use delay::Delay;
pub use fault::{Fault, FaultError, FaultRule, Trigger};
pub use metered::{IoSink, Metered};

/// The kind of a block request, as filters select and report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `read_at` and `read_plan`.
    Read,
    Write,
    Flush,
    Trim,
    /// `write_zeroes`.
    Zero,
    Extents,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::Read,
        OpKind::Write,
        OpKind::Flush,
        OpKind::Trim,
        OpKind::Zero,
        OpKind::Extents,
    ];

    /// The requests that change data.
    pub const WRITES: [OpKind; 3] = [OpKind::Write, OpKind::Trim, OpKind::Zero];

    fn index(self) -> usize {
        match self {
            OpKind::Read => 0,
            OpKind::Write => 1,
            OpKind::Flush => 2,
            OpKind::Trim => 3,
            OpKind::Zero => 4,
            OpKind::Extents => 5,
        }
    }
}

#[cfg(test)]
mod tests;
