//! The serving seam both block protocols (iSCSI and NBD) stand on, so the
//! machinery between a socket and a [`khoi_block`] device exists once:
//!
//! - [`listen`]: the accept loops (TCP and unix socket), with a global and a
//!   per-source connection cap, back-off when the process is out of
//!   descriptors, and a graceful shutdown that has a hard deadline.
//! - [`engine`]: where a request runs. Work that only touches memory or the
//!   page cache runs inline on the connection task; work that may wait for
//!   the disk goes to the blocking pool. The answer says which happened
//!   ([`engine::Dispatched`]), as Firecracker's file engine does.
//! - [`writer`]: the one reply writer: replies already queued leave in one
//!   vectored send, small file ranges are copied in from the page cache,
//!   large ones go with `sendfile(2)`, and ranges not in the page cache are
//!   read on the blocking pool so a cold disk never parks a reactor thread.
//!
//! The protocols keep what is theirs: parsing, state machines, and how a
//! reply is framed ([`writer::Framer`]: iSCSI stamps sequence numbers and
//! digests at send time, NBD's headers are final when queued).

pub mod engine;
pub mod listen;
pub mod sink;
mod sock;
pub mod writer;

pub use engine::{Dispatched, Work};
pub use listen::{Limits, UnixPeer, bind_owner_only, serve, serve_unix};
pub use sink::{Sink, Stream};
pub use writer::{Framer, Piece, ReplySender, Writer, WriterOptions};
