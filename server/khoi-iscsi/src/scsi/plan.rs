//! Deciding what a command needs: a finished answer, a read range, a flush,
//! or Data-Out of a given length; and, once that data is in, the [`Job`] it
//! becomes. Range, length and write-protection checks happen here, before
//! any I/O.

use bytes::Bytes;
use khoi_block::WriteFlags;
use khoi_wire::{be16, be32, be64};

use super::cdb::{Cdb, SA_READ_CAPACITY16, SA_REPORT_SUPPORTED_OPCODES, ScsiOp};
use super::exec::Job;
use super::sense::{Done, Sense};
use super::{BLOCK_LEN, LuInfo, Nexus, pages};

/// Which command a Data-Out buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOutKind {
    Write {
        fua: bool,
    },
    /// VERIFY with BYTCHK: compare the data; `per_block` is BYTCHK=11b (one
    /// block compared against every block of the range).
    Compare {
        per_block: bool,
    },
    ModeSelect {
        ten: bool,
        save: bool,
    },
    Unmap,
    WriteSame {
        unmap: bool,
        fua: bool,
    },
}

/// What a command needs before it can complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Done(Done),
    /// Read `len` bytes at byte `offset`; GOOD once sent.
    Read {
        offset: u64,
        len: u64,
    },
    /// Flush the device, then GOOD.
    Flush,
    /// The command needs `len` bytes of Data-Out (the SCSI transfer length);
    /// pass them to [`with_data`].
    DataOut {
        kind: DataOutKind,
        offset: u64,
        len: u64,
        blocks: u64,
    },
    /// WRITE SAME(16) with NDOB: no data, the pattern is zeroes.
    Zero {
        offset: u64,
        len: u64,
        unmap: bool,
        fua: bool,
    },
}

/// Commands that neither report nor clear a pending unit attention (SPC-4
/// §5.14).
fn ua_exempt(op: ScsiOp) -> bool {
    matches!(
        op,
        ScsiOp::Inquiry | ScsiOp::ReportLuns | ScsiOp::RequestSense
    )
}

/// Range check shared by every medium-access command.
pub(super) fn range(lu: &LuInfo, lba: u64, blocks: u64) -> Result<(u64, u64), Done> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lu.blocks => Ok((lba * BLOCK_LEN, blocks * BLOCK_LEN)),
        _ => Err(Done::check(Sense::LBA_OUT_OF_RANGE)),
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(d) => return Plan::Done(d),
        }
    };
}

/// Plan a command addressed to `lun`.
pub fn plan(cdb: &[u8; 16], lun: u64, lu: &LuInfo, nexus: &mut Nexus) -> Plan {
    let c = Cdb::new(cdb);
    let op = c.op();
    if lun != 0 {
        return match op {
            ScsiOp::Inquiry if c.byte(1) & 1 == 0 => {
                let mut d = pages::standard_inquiry();
                // Peripheral qualifier 011b: no LU at this address.
                d[0] = 0x7f;
                Plan::Done(Done::data(d, usize::try_from(c.u16_at(3)).unwrap_or(0)))
            }
            ScsiOp::ReportLuns => pages::report_luns(&c),
            ScsiOp::RequestSense => Plan::Done(Done::data(
                Sense::LU_NOT_SUPPORTED.fixed().to_vec(),
                usize::from(c.byte(4)),
            )),
            _ => Plan::Done(Done::check(Sense::LU_NOT_SUPPORTED)),
        };
    }
    if op == ScsiOp::RequestSense {
        return pages::request_sense(&c, nexus);
    }
    if !ua_exempt(op)
        && let Some(ua) = nexus.unit_attention.take()
    {
        return Plan::Done(Done::check(ua));
    }
    match op {
        ScsiOp::TestUnitReady | ScsiOp::StartStopUnit => Plan::Done(Done::good()),
        ScsiOp::Inquiry => pages::inquiry(&c, lu),
        ScsiOp::ReadCapacity10 => pages::read_capacity10(&c, lu),
        ScsiOp::ServiceActionIn16 if c.service_action() == SA_READ_CAPACITY16 => {
            pages::read_capacity16(&c, lu)
        }
        ScsiOp::Read6 => {
            let (lba, n) = c.read6();
            read(lu, lba, n)
        }
        ScsiOp::Read10 | ScsiOp::Read12 | ScsiOp::Read16 => {
            if c.protect() != 0 {
                return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
            }
            let (lba, n) = c.lba_len();
            read(lu, lba, n)
        }
        ScsiOp::Write10
        | ScsiOp::Write12
        | ScsiOp::Write16
        | ScsiOp::WriteAndVerify10
        | ScsiOp::WriteAndVerify12
        | ScsiOp::WriteAndVerify16 => {
            if c.protect() != 0 {
                return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
            }
            let (lba, n) = c.lba_len();
            let write_verify = matches!(
                op,
                ScsiOp::WriteAndVerify10 | ScsiOp::WriteAndVerify12 | ScsiOp::WriteAndVerify16
            );
            // WRITE AND VERIFY checks the medium; FUA gives that guarantee.
            let fua = c.fua() || write_verify;
            write(lu, lba, n, DataOutKind::Write { fua })
        }
        ScsiOp::Verify10 | ScsiOp::Verify12 | ScsiOp::Verify16 => verify(&c, lu),
        ScsiOp::ModeSense6 | ScsiOp::ModeSense10 => pages::mode_sense(&c, lu),
        ScsiOp::ModeSelect6 | ScsiOp::ModeSelect10 => pages::mode_select(&c),
        ScsiOp::SynchronizeCache10 | ScsiOp::SynchronizeCache16 => {
            let (lba, n) = c.lba_len();
            // Zero blocks means "to the end of the medium".
            if n == 0 && lba > lu.blocks {
                return Plan::Done(Done::check(Sense::LBA_OUT_OF_RANGE));
            }
            tri!(range(lu, lba, n));
            Plan::Flush
        }
        ScsiOp::PreFetch10 | ScsiOp::PreFetch16 => {
            let (lba, n) = c.lba_len();
            tri!(range(lu, lba, n));
            Plan::Done(Done::good())
        }
        ScsiOp::ReportLuns => pages::report_luns(&c),
        ScsiOp::Unmap if lu.thin => {
            if c.byte(1) & 0x01 != 0 {
                // ANCHOR needs anchored-state support we don't have.
                return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
            }
            if lu.read_only {
                return Plan::Done(Done::check(Sense::WRITE_PROTECTED));
            }
            let len = c.u16_at(7);
            if len == 0 {
                return Plan::Done(Done::good());
            }
            Plan::DataOut {
                kind: DataOutKind::Unmap,
                offset: 0,
                len,
                blocks: 0,
            }
        }
        ScsiOp::WriteSame10 | ScsiOp::WriteSame16 => write_same(&c, lu),
        ScsiOp::MaintenanceIn if c.service_action() == SA_REPORT_SUPPORTED_OPCODES => {
            pages::report_supported_opcodes(&c, lu)
        }
        // Unknown opcodes, UNMAP on a thick LU, and service actions we don't
        // implement.
        _ => Plan::Done(Done::check(Sense::INVALID_OPCODE)),
    }
}

fn too_long(lu: &LuInfo, n: u64) -> bool {
    lu.max_transfer_blocks != 0 && n > u64::from(lu.max_transfer_blocks)
}

fn read(lu: &LuInfo, lba: u64, n: u64) -> Plan {
    let (offset, len) = tri!(range(lu, lba, n));
    if too_long(lu, n) {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    if len == 0 {
        return Plan::Done(Done::good());
    }
    Plan::Read { offset, len }
}

fn write(lu: &LuInfo, lba: u64, n: u64, kind: DataOutKind) -> Plan {
    if lu.read_only {
        return Plan::Done(Done::check(Sense::WRITE_PROTECTED));
    }
    let (offset, len) = tri!(range(lu, lba, n));
    if too_long(lu, n) {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    if len == 0 {
        return Plan::Done(Done::good());
    }
    Plan::DataOut {
        kind,
        offset,
        len,
        blocks: n,
    }
}

fn verify(c: &Cdb<'_>, lu: &LuInfo) -> Plan {
    if c.protect() != 0 {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let (lba, n) = c.lba_len();
    let (offset, len) = tri!(range(lu, lba, n));
    // BYTCHK.
    match (c.byte(1) >> 1) & 3 {
        0 => Plan::Done(Done::good()),
        _ if len == 0 => Plan::Done(Done::good()),
        1 => {
            if too_long(lu, n) {
                return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
            }
            Plan::DataOut {
                kind: DataOutKind::Compare { per_block: false },
                offset,
                len,
                blocks: n,
            }
        }
        3 => Plan::DataOut {
            kind: DataOutKind::Compare { per_block: true },
            offset,
            len: BLOCK_LEN,
            blocks: n,
        },
        _ => Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB)),
    }
}

fn write_same(c: &Cdb<'_>, lu: &LuInfo) -> Plan {
    let unmap = c.byte(1) & 0x08 != 0;
    let anchor = c.byte(1) & 0x10 != 0;
    let ndob = c.op() == ScsiOp::WriteSame16 && c.byte(1) & 0x01 != 0;
    if c.protect() != 0 || anchor {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    // Write protection is reported before the UNMAP bit is judged: a
    // read-only LU refuses every write-like command the same way.
    if lu.read_only {
        return Plan::Done(Done::check(Sense::WRITE_PROTECTED));
    }
    if unmap && !lu.thin {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let (lba, n) = c.lba_len();
    let (offset, len) = tri!(range(lu, lba, n));
    // WSNZ=1: zero blocks is not "the whole medium" here.
    if n == 0 || n > u64::from(lu.max_write_same_blocks()) {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let fua = false;
    if ndob {
        return Plan::Zero {
            offset,
            len,
            unmap,
            fua,
        };
    }
    Plan::DataOut {
        kind: DataOutKind::WriteSame { unmap, fua },
        offset,
        len: BLOCK_LEN,
        blocks: n,
    }
}

/// Turn a completed Data-Out buffer into a job (or an immediate answer).
pub fn with_data(
    kind: DataOutKind,
    offset: u64,
    blocks: u64,
    data: Bytes,
    lu: &LuInfo,
) -> Result<Job, Done> {
    match kind {
        DataOutKind::Write { fua } => Ok(Job::Write {
            offset,
            data,
            flags: if fua {
                WriteFlags::FUA
            } else {
                WriteFlags::NONE
            },
        }),
        DataOutKind::Compare { per_block } => Ok(Job::Compare {
            offset,
            len: blocks * BLOCK_LEN,
            data,
            per_block,
        }),
        DataOutKind::ModeSelect { ten, save } => Err(pages::mode_select_data(&data, ten, save, lu)),
        DataOutKind::Unmap => unmap_data(&data, lu).map(|ranges| Job::Trim { ranges }),
        DataOutKind::WriteSame { unmap, fua } => {
            let len = blocks * BLOCK_LEN;
            if data.iter().all(|&b| b == 0) {
                Ok(Job::Zero {
                    offset,
                    len,
                    unmap,
                    fua,
                })
            } else {
                Ok(Job::WriteSame {
                    offset,
                    len,
                    pattern: data,
                    fua,
                })
            }
        }
    }
}

/// The UNMAP parameter list as byte ranges to trim.
fn unmap_data(d: &[u8], lu: &LuInfo) -> Result<Vec<(u64, u64)>, Done> {
    if d.len() < 8 {
        return if d.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Done::check(Sense::PARAM_LIST_LENGTH))
        };
    }
    let desc_len = usize::from(be16(&d[2..]));
    if desc_len % 16 != 0 || 8 + desc_len > d.len() {
        return Err(Done::check(Sense::PARAM_LIST_LENGTH));
    }
    let mut ranges = Vec::new();
    for desc in d[8..8 + desc_len].chunks_exact(16) {
        let lba = be64(desc);
        let n = u64::from(be32(&desc[8..]));
        if n > u64::from(lu.max_unmap_blocks()) {
            return Err(Done::check(Sense::INVALID_FIELD_IN_PARAM));
        }
        let (off, len) = range(lu, lba, n)?;
        if len > 0 {
            ranges.push((off, len));
        }
    }
    Ok(ranges)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::fixtures::{cdb, done, lu, run};
    use super::super::sense::GOOD;
    use super::*;

    #[test]
    fn unit_attention_once_and_exemptions() {
        let mut n = Nexus {
            unit_attention: Some(Sense::POWER_ON),
        };
        let l = lu();
        // INQUIRY neither reports nor clears it.
        let d = done(plan(&cdb(&[0x12, 0, 0, 0, 36, 0]), 0, &l, &mut n));
        assert_eq!(d.status, GOOD);
        let d = done(plan(&cdb(&[0x00]), 0, &l, &mut n));
        assert_eq!(d.sense, Some(Sense::POWER_ON));
        let d = done(plan(&cdb(&[0x00]), 0, &l, &mut n));
        assert_eq!(d.status, GOOD);
    }

    #[test]
    fn unknown_opcodes_and_service_actions_are_invalid_opcode() {
        for bytes in [
            &[0xc1, 0, 0, 0, 0, 0][..],
            // SERVICE ACTION IN(16) other than READ CAPACITY(16).
            &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0][..],
            // MAINTENANCE IN other than REPORT SUPPORTED OPERATION CODES.
            &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0][..],
        ] {
            let d = run(bytes);
            assert_eq!(d.sense, Some(Sense::INVALID_OPCODE), "{bytes:02x?}");
            assert_eq!(
                d.sense.unwrap().fixed()[2..14],
                [0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x00]
            );
        }
        // UNMAP exists only on thin LUs.
        let mut thick = lu();
        thick.thin = false;
        let d = done(plan(
            &cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
            0,
            &thick,
            &mut Nexus::default(),
        ));
        assert_eq!(d.sense, Some(Sense::INVALID_OPCODE));
    }

    #[test]
    fn reads_and_writes_plan() {
        assert_eq!(
            plan(
                &cdb(&[0x28, 0, 0, 0, 0, 0x10, 0, 0, 8, 0]),
                0,
                &lu(),
                &mut Nexus::default()
            ),
            Plan::Read {
                offset: 0x10 * 512,
                len: 4096
            }
        );
        assert_eq!(
            run(&[0x28, 0, 0, 0, 0x08, 0, 0, 0, 1, 0]).sense,
            Some(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            run(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).sense,
            Some(Sense::INVALID_FIELD_IN_CDB)
        );
        assert_eq!(run(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Done::good());
        // READ(6) with 0 means 256 blocks.
        assert_eq!(
            plan(
                &cdb(&[0x08, 0, 0, 0, 0, 0]),
                0,
                &lu(),
                &mut Nexus::default()
            ),
            Plan::Read {
                offset: 0,
                len: 256 * 512
            }
        );
        match plan(
            &cdb(&[0x8a, 0x08, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0]),
            0,
            &lu(),
            &mut Nexus::default(),
        ) {
            Plan::DataOut {
                kind: DataOutKind::Write { fua: true },
                offset: 512,
                len: 1024,
                blocks: 2,
            } => {}
            other => panic!("{other:?}"),
        }
        let mut ro = lu();
        ro.read_only = true;
        let d = done(plan(
            &cdb(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            0,
            &ro,
            &mut Nexus::default(),
        ));
        assert_eq!(d.sense, Some(Sense::WRITE_PROTECTED));
    }

    #[test]
    fn unmap_parameter_list() {
        let l = lu();
        let mut d = vec![0u8; 24];
        d[0..2].copy_from_slice(&22u16.to_be_bytes());
        d[2..4].copy_from_slice(&16u16.to_be_bytes());
        d[8..16].copy_from_slice(&8u64.to_be_bytes());
        d[16..20].copy_from_slice(&16u32.to_be_bytes());
        assert_eq!(unmap_data(&d, &l).unwrap(), vec![(8 * 512, 16 * 512)]);
        d[8..16].copy_from_slice(&2040u64.to_be_bytes());
        assert_eq!(
            unmap_data(&d, &l).unwrap_err().sense,
            Some(Sense::LBA_OUT_OF_RANGE)
        );
    }
}
