//! Khoi's iSCSI target.
//!
//! A sans-I/O core — [`pdu`] (wire views and Reprs), [`frame`] (padding and
//! digests), [`text`] (key negotiation), [`chap`], [`login`], [`session`]
//! (full-feature phase) and [`scsi`] (the block command set) — returns PDUs
//! and I/O plans; only [`transport`] touches sockets, files and the clock.

pub mod chap;
pub mod frame;
pub mod login;
pub mod pdu;
pub mod registry;
pub mod resolver;
pub mod scsi;
pub mod session;
pub mod text;
pub mod transport;

pub use resolver::{
    ChapSecret, Credential, IscsiConfig, IscsiEvent, LunIdentity, TargetAuth, TargetResolver,
};
pub use transport::serve;
