//! Decoding a 16-byte CDB: the operation code as a [`ScsiOp`] (unknown
//! codes are data, answered with INVALID COMMAND OPERATION CODE) and a [`Cdb`]
//! view whose accessors name the fields the command set reads.
//!
//! Every iSCSI CDB arrives in a 16-byte array (shorter CDBs zero-padded by
//! the BHS), so no accessor can read past the end.

use khoi_wire::{be16, be32, be64, enum_with_unknown};

enum_with_unknown! {
    /// The operation codes the command set knows (SPC-4/SBC-3).
    pub enum ScsiOp(u8) {
        TestUnitReady = 0x00,
        RequestSense = 0x03,
        Read6 = 0x08,
        Inquiry = 0x12,
        ModeSelect6 = 0x15,
        ModeSense6 = 0x1a,
        StartStopUnit = 0x1b,
        ReadCapacity10 = 0x25,
        Read10 = 0x28,
        Write10 = 0x2a,
        WriteAndVerify10 = 0x2e,
        Verify10 = 0x2f,
        PreFetch10 = 0x34,
        SynchronizeCache10 = 0x35,
        WriteSame10 = 0x41,
        Unmap = 0x42,
        ModeSelect10 = 0x55,
        ModeSense10 = 0x5a,
        Read16 = 0x88,
        Write16 = 0x8a,
        WriteAndVerify16 = 0x8e,
        Verify16 = 0x8f,
        PreFetch16 = 0x90,
        SynchronizeCache16 = 0x91,
        WriteSame16 = 0x93,
        /// SERVICE ACTION IN(16); READ CAPACITY(16) is service action 10h.
        ServiceActionIn16 = 0x9e,
        ReportLuns = 0xa0,
        /// MAINTENANCE IN; REPORT SUPPORTED OPERATION CODES is service
        /// action 0Ch.
        MaintenanceIn = 0xa3,
        Read12 = 0xa8,
        Write12 = 0xaa,
        WriteAndVerify12 = 0xae,
        Verify12 = 0xaf,
    }
}

/// Service action of READ CAPACITY(16) under SERVICE ACTION IN(16).
pub const SA_READ_CAPACITY16: u8 = 0x10;
/// Service action of REPORT SUPPORTED OPERATION CODES under MAINTENANCE IN.
pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;

/// A read-only view of a CDB.
#[derive(Debug, Clone, Copy)]
pub struct Cdb<'a> {
    bytes: &'a [u8; 16],
}

impl<'a> Cdb<'a> {
    pub const fn new(bytes: &'a [u8; 16]) -> Cdb<'a> {
        Cdb { bytes }
    }

    pub fn op(&self) -> ScsiOp {
        ScsiOp::from(self.bytes[0])
    }

    /// The raw operation code, for tables keyed by it.
    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// Byte `i` (flag bytes and one-byte fields such as the page code).
    pub fn byte(&self, i: usize) -> u8 {
        self.bytes[i]
    }

    /// The big-endian 16-bit field at `at`.
    pub fn u16_at(&self, at: usize) -> u64 {
        u64::from(be16(&self.bytes[at..]))
    }

    /// The big-endian 32-bit field at `at`.
    pub fn u32_at(&self, at: usize) -> u64 {
        u64::from(be32(&self.bytes[at..]))
    }

    /// The 5-bit service action of byte 1.
    pub fn service_action(&self) -> u8 {
        self.bytes[1] & 0x1f
    }

    /// RDPROTECT/WRPROTECT/VRPROTECT (byte 1, bits 7..5): protection
    /// information, which this target does not support, so non-zero is an
    /// invalid field.
    pub fn protect(&self) -> u8 {
        self.bytes[1] >> 5
    }

    /// FUA (byte 1, bit 3) of READ/WRITE(10/12/16).
    pub fn fua(&self) -> bool {
        self.bytes[1] & 0x08 != 0
    }

    /// LOGICAL BLOCK ADDRESS and the block count of a 10-, 12- or 16-byte
    /// medium-access CDB, placed by the opcode's group.
    pub fn lba_len(&self) -> (u64, u64) {
        let c = self.bytes;
        match c[0] >> 5 {
            // Group 1/2: 10-byte CDBs.
            1 | 2 => (u64::from(be32(&c[2..])), u64::from(be16(&c[7..]))),
            // Group 5: 12-byte CDBs.
            5 => (u64::from(be32(&c[2..])), u64::from(be32(&c[6..]))),
            // Group 4: 16-byte CDBs.
            _ => (be64(&c[2..]), u64::from(be32(&c[10..]))),
        }
    }

    /// READ(6): a 21-bit LBA and a count where 0 means 256 blocks.
    pub fn read6(&self) -> (u64, u64) {
        let c = self.bytes;
        let lba = (u64::from(c[1] & 0x1f) << 16) | u64::from(be16(&c[2..]));
        let n = if c[4] == 0 { 256 } else { u64::from(c[4]) };
        (lba, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_round_trip_and_keep_unknown_values() {
        assert_eq!(ScsiOp::from(0x28), ScsiOp::Read10);
        assert_eq!(ScsiOp::from(0x9e), ScsiOp::ServiceActionIn16);
        assert_eq!(ScsiOp::from(0xc1), ScsiOp::Unknown(0xc1));
        for raw in 0..=u8::MAX {
            assert_eq!(u8::from(ScsiOp::from(raw)), raw);
        }
    }

    #[test]
    fn lba_and_length_by_group() {
        let mut c = [0u8; 16];
        c[..10].copy_from_slice(&[0x28, 0, 0x01, 0x02, 0x03, 0x04, 0, 0x05, 0x06, 0]);
        assert_eq!(Cdb::new(&c).lba_len(), (0x0102_0304, 0x0506));
        let mut c = [0u8; 16];
        c[..12].copy_from_slice(&[0xa8, 0, 0, 0, 0, 9, 0, 0, 0x01, 0x00, 0, 0]);
        assert_eq!(Cdb::new(&c).lba_len(), (9, 0x100));
        let c = [0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(Cdb::new(&c).lba_len(), (0x0102_0304_0506_0708, 0x1000));
        let mut c = [0u8; 16];
        c[..6].copy_from_slice(&[0x08, 0xff, 0x12, 0x34, 0, 0]);
        assert_eq!(Cdb::new(&c).read6(), (0x1f_1234, 256));
        c[4] = 7;
        assert_eq!(Cdb::new(&c).read6(), (0x1f_1234, 7));
    }
}
