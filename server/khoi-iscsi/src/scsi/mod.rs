//! The SCSI block command set (SPC-4/SBC-3 subset from the reference
//! checklist), sans-I/O, one file per concern:
//!
//! - [`cdb`]: the CDB bytes as a [`ScsiOp`] and a field view;
//! - [`mod@plan`]: what a command needs — a finished answer, a read range, or
//!   Data-Out — and, once the data is in, the [`Job`] it becomes;
//! - [`exec`]: running a [`Job`] against the block device (blocking);
//! - [`pages`]: INQUIRY and VPD pages, READ CAPACITY, REPORT LUNS, REPORT
//!   SUPPORTED OPERATION CODES and the mode pages;
//! - [`sense`]: status, sense data, and the one map from block errors to
//!   sense, [`block_error`].

pub mod cdb;
pub mod exec;
pub mod pages;
pub mod plan;
pub mod sense;

use khoi_block::Checked;

pub use cdb::{Cdb, ScsiOp};
pub use exec::{Job, JobOutput, execute};
pub use pages::{PRODUCT, REVISION, VENDOR, VPD_PAGES, vpd_page};
pub use plan::{DataOutKind, Plan, plan, with_data};
pub use sense::{CHECK_CONDITION, Done, GOOD, Sense, TASK_SET_FULL, block_error};

use crate::resolver::LunIdentity;

/// Logical block size advertised (512e).
pub const BLOCK_LEN: u64 = 512;
const BLOCK_U32: u32 = 512;

/// What the LU looks like to the command set; derived once per session from
/// the device's size and caps.
#[derive(Debug, Clone)]
pub struct LuInfo {
    pub blocks: u64,
    pub read_only: bool,
    /// Volatile write cache present (WCE=1; SYNCHRONIZE CACHE does work).
    pub wce: bool,
    /// Thin provisioned: UNMAP and WRITE SAME(UNMAP) are supported.
    pub thin: bool,
    pub target: String,
    pub identity: LunIdentity,
    /// Largest transfer a command may request, in blocks (VPD B0h).
    pub max_transfer_blocks: u32,
    /// Optimal transfer length in blocks (VPD B0h).
    pub opt_transfer_blocks: u32,
}

impl LuInfo {
    pub fn new(
        dev: &Checked,
        target: String,
        identity: LunIdentity,
        max_transfer: u32,
        max_burst: u32,
    ) -> LuInfo {
        let caps = dev.caps();
        let block = BLOCK_U32;
        LuInfo {
            blocks: dev.size() / BLOCK_LEN,
            read_only: caps.read_only,
            wce: caps.flush,
            thin: caps.trim && !caps.read_only,
            target,
            identity,
            // The reference asks for 0 or at least MaxBurstLength/512.
            max_transfer_blocks: (max_transfer / block).max(max_burst / block),
            opt_transfer_blocks: (1 << 20) / block,
        }
    }

    pub(crate) fn max_unmap_blocks(&self) -> u32 {
        // 512 MiB per UNMAP descriptor or WRITE SAME; larger ranges are split
        // by the initiator (libiscsi flags limits above 1Mi blocks as bogus).
        1 << 20
    }

    /// WRITE SAME is bounded like a transfer, so initiators that probe with
    /// a plain WRITE of MAXIMUM WRITE SAME LENGTH blocks stay within
    /// MAXIMUM TRANSFER LENGTH.
    pub(crate) fn max_write_same_blocks(&self) -> u32 {
        self.max_unmap_blocks().min(self.max_transfer_blocks.max(1))
    }
}

/// Per-I_T-nexus command-set state.
#[derive(Debug, Clone, Default)]
pub struct Nexus {
    /// A unit attention waiting to be reported.
    pub unit_attention: Option<Sense>,
}

/// The LU and CDB builders the command-set tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn lu() -> LuInfo {
        LuInfo {
            blocks: 2048,
            read_only: false,
            wce: true,
            thin: true,
            target: "iqn.2025-01.vn.khoi:seat01".into(),
            identity: LunIdentity {
                serial: "KHOI0001".into(),
                naa: [0x60, 0x01, 0x40, 0x5f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            },
            max_transfer_blocks: 32768,
            opt_transfer_blocks: 2048,
        }
    }

    pub fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    pub fn done(p: Plan) -> Done {
        match p {
            Plan::Done(d) => d,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    pub fn run(bytes: &[u8]) -> Done {
        done(plan(&cdb(bytes), 0, &lu(), &mut Nexus::default()))
    }
}
