//! Status codes, sense data, and the one map from [`BlockError`] to SCSI
//! status.

use bytes::Bytes;
use khoi_block::BlockError;

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;
pub const TASK_SET_FULL: u8 = 0x28;

/// Sense key, additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq }
    }

    pub const NO_SENSE: Sense = Sense::new(0x00, 0x00, 0x00);
    pub const INVALID_OPCODE: Sense = Sense::new(0x05, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(0x05, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(0x05, 0x24, 0x00);
    pub const LU_NOT_SUPPORTED: Sense = Sense::new(0x05, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAM: Sense = Sense::new(0x05, 0x26, 0x00);
    pub const PARAM_LIST_LENGTH: Sense = Sense::new(0x05, 0x1a, 0x00);
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(0x05, 0x39, 0x00);
    /// INVALID FIELD IN COMMAND INFORMATION UNIT: a write whose SCSI length
    /// exceeds the iSCSI expected length (FCP-4 option b).
    pub const INVALID_FIELD_IN_IU: Sense = Sense::new(0x05, 0x0e, 0x03);
    pub const WRITE_PROTECTED: Sense = Sense::new(0x07, 0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(0x07, 0x27, 0x07);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(0x03, 0x11, 0x00);
    pub const MISCOMPARE: Sense = Sense::new(0x0e, 0x1d, 0x00);
    pub const POWER_ON: Sense = Sense::new(0x06, 0x29, 0x00);
    pub const ABORTED_COMMAND: Sense = Sense::new(0x0b, 0x00, 0x00);

    /// Fixed-format (70h) sense data, D_SENSE=0.
    pub fn fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

/// A finished command: status, optional sense, and Data-In bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub status: u8,
    pub sense: Option<Sense>,
    pub data: Bytes,
}

impl Done {
    pub fn good() -> Done {
        Done {
            status: GOOD,
            sense: None,
            data: Bytes::new(),
        }
    }

    pub fn data(mut v: Vec<u8>, alloc: usize) -> Done {
        v.truncate(alloc);
        Done {
            status: GOOD,
            sense: None,
            data: Bytes::from(v),
        }
    }

    pub fn check(sense: Sense) -> Done {
        Done {
            status: CHECK_CONDITION,
            sense: Some(sense),
            data: Bytes::new(),
        }
    }
}

/// The one place block errors become SCSI status. `Gone` is not a SCSI
/// condition: the caller closes the connection instead.
pub fn block_error(e: &BlockError) -> Done {
    match e {
        BlockError::OutOfRange { .. } => Done::check(Sense::LBA_OUT_OF_RANGE),
        BlockError::ReadOnly => Done::check(Sense::WRITE_PROTECTED),
        BlockError::NoSpace(_) => Done::check(Sense::SPACE_ALLOCATION_FAILED),
        BlockError::Io(_) | BlockError::Gone => Done::check(Sense::UNRECOVERED_READ_ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_fixed_format() {
        let s = Sense::SPACE_ALLOCATION_FAILED.fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x07);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x27, 0x07));
    }

    #[test]
    fn block_errors_map() {
        assert_eq!(
            block_error(&BlockError::NoSpace("full".into())).sense,
            Some(Sense::SPACE_ALLOCATION_FAILED)
        );
        assert_eq!(
            block_error(&BlockError::Io(std::io::Error::other("x"))).sense,
            Some(Sense::UNRECOVERED_READ_ERROR)
        );
        assert_eq!(
            block_error(&BlockError::ReadOnly).sense,
            Some(Sense::WRITE_PROTECTED)
        );
    }
}
