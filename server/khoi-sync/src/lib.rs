//! Province distribution: a publisher puts each published version of the
//! images it shares into S3-compatible object storage as content-addressed
//! chunks plus a manifest signed with the province's Ed25519 key; sites pull
//! the versions they lack, verify every byte and the signature, and commit
//! them through the block core's own publish.
//!
//! - [`chunk`]: cutting a layer's data into chunks, sealing (BLAKE3, zstd)
//!   and opening them (bounded, verified). No I/O.
//! - [`sign`]: the signed envelope, key ids, key files.
//! - [`manifest`]: what a version is made of, checked before use.
//! - [`layout`]: object names in the bucket.
//! - [`remote`]: the bucket (`object_store`), with a bandwidth cap.
//! - [`publisher`] and [`site`]: the two roles, over a `khoi_block::Store`.

pub mod chunk;
pub mod layout;
pub mod manifest;
pub mod sign;
