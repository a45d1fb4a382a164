//! The SCSI block command set (SPC-4/SBC-3 subset from the reference
//! checklist). Sans-I/O: [`plan`] turns a CDB into a [`Plan`] — a finished
//! answer, a read range, or a request for Data-Out — and [`Job`]s describe
//! the block I/O that [`execute`] performs on a blocking thread. Errors are
//! mapped to sense data in one place, [`block_error`].

use bytes::Bytes;
use khoi_block::{BlockError, Checked, ReadSegment, WriteFlags};

use crate::resolver::LunIdentity;

/// Logical block size advertised (512e).
pub const BLOCK_LEN: u64 = 512;
const BLOCK_USIZE: usize = 512;

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
        let block = u32::try_from(BLOCK_LEN).unwrap_or(512);
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

    fn max_unmap_blocks(&self) -> u32 {
        // 512 MiB per UNMAP descriptor or WRITE SAME; larger ranges are split
        // by the initiator (libiscsi flags limits above 1Mi blocks as bogus).
        1 << 20
    }

    /// WRITE SAME is bounded like a transfer, so initiators that probe with
    /// a plain WRITE of MAXIMUM WRITE SAME LENGTH blocks stay within
    /// MAXIMUM TRANSFER LENGTH.
    fn max_write_same_blocks(&self) -> u32 {
        self.max_unmap_blocks().min(self.max_transfer_blocks.max(1))
    }
}

/// Per-I_T-nexus command-set state.
#[derive(Debug, Clone, Default)]
pub struct Nexus {
    /// A unit attention waiting to be reported.
    pub unit_attention: Option<Sense>,
}

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

/// Block I/O to run on a blocking thread.
#[derive(Debug, Clone)]
pub enum Job {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        data: Bytes,
        flags: WriteFlags,
    },
    Compare {
        offset: u64,
        len: u64,
        data: Bytes,
        per_block: bool,
    },
    Flush,
    Trim {
        ranges: Vec<(u64, u64)>,
    },
    Zero {
        offset: u64,
        len: u64,
        unmap: bool,
        fua: bool,
    },
    WriteSame {
        offset: u64,
        len: u64,
        pattern: Bytes,
        fua: bool,
    },
}

#[derive(Debug)]
pub enum JobOutput {
    Read(Vec<ReadSegment>),
    Done(Done),
}

fn be16(b: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn put32(v: &mut [u8], x: u64) {
    v[..4].copy_from_slice(&u32::try_from(x).unwrap_or(u32::MAX).to_be_bytes());
}

/// Commands that neither report nor clear a pending unit attention (SPC-4
/// §5.14).
fn ua_exempt(op: u8) -> bool {
    matches!(op, 0x12 | 0xa0 | 0x03)
}

/// Range check shared by every medium-access command.
fn range(lu: &LuInfo, lba: u64, blocks: u64) -> Result<(u64, u64), Done> {
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
    let op = cdb[0];
    if lun != 0 {
        return match op {
            0x12 if cdb[1] & 1 == 0 => {
                let mut d = standard_inquiry();
                // Peripheral qualifier 011b: no LU at this address.
                d[0] = 0x7f;
                Plan::Done(Done::data(d, usize::try_from(be16(&cdb[3..])).unwrap_or(0)))
            }
            0xa0 => report_luns(cdb),
            0x03 => Plan::Done(Done::data(
                Sense::LU_NOT_SUPPORTED.fixed().to_vec(),
                usize::from(cdb[4]),
            )),
            _ => Plan::Done(Done::check(Sense::LU_NOT_SUPPORTED)),
        };
    }
    if op == 0x03 {
        return request_sense(cdb, nexus);
    }
    if !ua_exempt(op)
        && let Some(ua) = nexus.unit_attention.take()
    {
        return Plan::Done(Done::check(ua));
    }
    match op {
        0x00 => Plan::Done(Done::good()),
        0x12 => inquiry(cdb, lu),
        0x25 => read_capacity10(cdb, lu),
        0x9e if cdb[1] & 0x1f == 0x10 => read_capacity16(cdb, lu),
        0x08 => {
            let lba = (u64::from(cdb[1] & 0x1f) << 16) | be16(&cdb[2..]);
            let n = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
            read(lu, lba, n)
        }
        0x28 | 0xa8 | 0x88 => {
            if cdb[1] & 0xe0 != 0 {
                return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
            }
            let (lba, n) = lba_len(cdb);
            read(lu, lba, n)
        }
        0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e => {
            if cdb[1] & 0xe0 != 0 {
                return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
            }
            let (lba, n) = lba_len(cdb);
            let write_verify = matches!(op, 0x2e | 0xae | 0x8e);
            // WRITE AND VERIFY checks the medium; FUA gives that guarantee.
            let fua = cdb[1] & 0x08 != 0 || write_verify;
            write(lu, lba, n, DataOutKind::Write { fua })
        }
        0x2f | 0xaf | 0x8f => verify(cdb, lu),
        0x1a | 0x5a => mode_sense(cdb, lu),
        0x15 | 0x55 => mode_select(cdb, lu),
        0x35 | 0x91 => {
            let (lba, n) = if op == 0x35 {
                (be32(&cdb[2..]), be16(&cdb[7..]))
            } else {
                (be64(&cdb[2..]), be32(&cdb[10..]))
            };
            // Zero blocks means "to the end of the medium".
            if n == 0 && lba > lu.blocks {
                return Plan::Done(Done::check(Sense::LBA_OUT_OF_RANGE));
            }
            tri!(range(lu, lba, n));
            Plan::Flush
        }
        0x34 | 0x90 => {
            let (lba, n) = if op == 0x34 {
                (be32(&cdb[2..]), be16(&cdb[7..]))
            } else {
                (be64(&cdb[2..]), be32(&cdb[10..]))
            };
            tri!(range(lu, lba, n));
            Plan::Done(Done::good())
        }
        0xa0 => report_luns(cdb),
        0x1b => Plan::Done(Done::good()),
        0x42 if lu.thin => {
            if cdb[1] & 0x01 != 0 {
                // ANCHOR needs anchored-state support we don't have.
                return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
            }
            if lu.read_only {
                return Plan::Done(Done::check(Sense::WRITE_PROTECTED));
            }
            let len = be16(&cdb[7..]);
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
        0x41 | 0x93 => write_same(cdb, lu),
        0xa3 if cdb[1] & 0x1f == 0x0c => report_supported_opcodes(cdb, lu),
        _ => Plan::Done(Done::check(Sense::INVALID_OPCODE)),
    }
}

fn lba_len(cdb: &[u8; 16]) -> (u64, u64) {
    match cdb[0] >> 5 {
        // Group 1/2: 10-byte CDBs.
        1 | 2 => (be32(&cdb[2..]), be16(&cdb[7..])),
        // Group 5: 12-byte CDBs.
        5 => (be32(&cdb[2..]), be32(&cdb[6..])),
        // Group 4: 16-byte CDBs.
        _ => (be64(&cdb[2..]), be32(&cdb[10..])),
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

fn verify(cdb: &[u8; 16], lu: &LuInfo) -> Plan {
    if cdb[1] & 0xe0 != 0 {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let (lba, n) = lba_len(cdb);
    let (offset, len) = tri!(range(lu, lba, n));
    match (cdb[1] >> 1) & 3 {
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

fn write_same(cdb: &[u8; 16], lu: &LuInfo) -> Plan {
    let unmap = cdb[1] & 0x08 != 0;
    let anchor = cdb[1] & 0x10 != 0;
    let ndob = cdb[0] == 0x93 && cdb[1] & 0x01 != 0;
    if cdb[1] & 0xe0 != 0 || anchor {
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
    let (lba, n) = if cdb[0] == 0x41 {
        (be32(&cdb[2..]), be16(&cdb[7..]))
    } else {
        (be64(&cdb[2..]), be32(&cdb[10..]))
    };
    if lu.read_only {
        return Plan::Done(Done::check(Sense::WRITE_PROTECTED));
    }
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
        DataOutKind::ModeSelect { ten, save } => Err(mode_select_data(&data, ten, save, lu)),
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

fn unmap_data(d: &[u8], lu: &LuInfo) -> Result<Vec<(u64, u64)>, Done> {
    if d.len() < 8 {
        return if d.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Done::check(Sense::PARAM_LIST_LENGTH))
        };
    }
    let desc_len = usize::try_from(be16(&d[2..])).unwrap_or(usize::MAX);
    if desc_len % 16 != 0 || 8 + desc_len > d.len() {
        return Err(Done::check(Sense::PARAM_LIST_LENGTH));
    }
    let mut ranges = Vec::new();
    for desc in d[8..8 + desc_len].chunks_exact(16) {
        let lba = be64(desc);
        let n = be32(&desc[8..]);
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

/// Run a job against the device. Blocking: call from a blocking thread.
pub fn execute(job: Job, dev: &Checked) -> Result<JobOutput, BlockError> {
    match job {
        Job::Read { offset, len } => Ok(JobOutput::Read(dev.read_plan(offset, len)?)),
        Job::Write {
            offset,
            data,
            flags,
        } => {
            let tail = data.len() % BLOCK_USIZE;
            if tail != 0 {
                // A write truncated by a short iSCSI EDTL ends mid-block:
                // read-modify-write the last block so devices only ever see
                // whole sectors.
                let mut buf = data.to_vec();
                let head = buf.len() - tail;
                let mut block = vec![0u8; BLOCK_USIZE];
                dev.read_at(&mut block, offset + head as u64)?;
                block[..tail].copy_from_slice(&buf[head..]);
                buf.truncate(head);
                buf.extend_from_slice(&block);
                dev.write_at(&buf, offset, flags)?;
            } else {
                dev.write_at(&data, offset, flags)?;
            }
            fua_emulation(dev, flags)?;
            Ok(JobOutput::Done(Done::good()))
        }
        Job::Compare {
            offset,
            len,
            data,
            per_block,
        } => {
            let len_usize = usize::try_from(len).map_err(|_| BlockError::OutOfRange {
                offset,
                len,
                size: dev.size(),
            })?;
            let mut buf = vec![0u8; len_usize];
            dev.read_at(&mut buf, offset)?;
            let same = if per_block {
                buf.chunks(data.len().max(1)).all(|c| c == &data[..c.len()])
            } else {
                buf == data[..]
            };
            Ok(JobOutput::Done(if same {
                Done::good()
            } else {
                Done::check(Sense::MISCOMPARE)
            }))
        }
        Job::Flush => {
            dev.flush()?;
            Ok(JobOutput::Done(Done::good()))
        }
        Job::Trim { ranges } => {
            for (off, len) in ranges {
                dev.trim(off, len, WriteFlags::NONE)?;
            }
            Ok(JobOutput::Done(Done::good()))
        }
        Job::Zero {
            offset,
            len,
            unmap,
            fua,
        } => {
            let flags = if fua {
                WriteFlags::FUA
            } else {
                WriteFlags::NONE
            };
            if unmap {
                dev.trim(offset, len, flags)?;
            } else {
                dev.write_zeroes(offset, len, flags)?;
            }
            Ok(JobOutput::Done(Done::good()))
        }
        Job::WriteSame {
            offset,
            len,
            pattern,
            fua,
        } => {
            // Repeat the block into a bounded buffer and write in chunks.
            let chunk_blocks = 256u64;
            let mut buf = Vec::with_capacity(pattern.len() * 256);
            for _ in 0..chunk_blocks {
                buf.extend_from_slice(&pattern);
            }
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(chunk_blocks * BLOCK_LEN);
                let n_usize = usize::try_from(n).unwrap_or(buf.len()).min(buf.len());
                dev.write_at(&buf[..n_usize], offset + done, WriteFlags::NONE)?;
                done += n;
            }
            if fua {
                dev.flush()?;
            }
            Ok(JobOutput::Done(Done::good()))
        }
    }
}

/// Devices that don't honour FUA natively get a flush after the write, so
/// DPOFUA=1 is always truthful.
fn fua_emulation(dev: &Checked, flags: WriteFlags) -> Result<(), BlockError> {
    if flags.fua && !dev.caps().fua {
        dev.flush()?;
    }
    Ok(())
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

// ---------------------------------------------------------------------------
// Non-medium commands

fn request_sense(cdb: &[u8; 16], nexus: &mut Nexus) -> Plan {
    if cdb[1] & 0x01 != 0 {
        // DESC=1: only fixed format is supported.
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let s = nexus.unit_attention.take().unwrap_or(Sense::NO_SENSE);
    Plan::Done(Done::data(s.fixed().to_vec(), usize::from(cdb[4])))
}

fn report_luns(cdb: &[u8; 16]) -> Plan {
    let alloc = be32(&cdb[6..]);
    if alloc < 16 || !matches!(cdb[2], 0x00 | 0x01 | 0x02 | 0x10 | 0x11 | 0x12) {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let mut d = vec![0u8; 16];
    // SELECT REPORT 01h asks for well-known LUs only, of which we have none.
    let n = if cdb[2] == 0x01 { 0 } else { 1 };
    put32(&mut d[0..], 8 * n);
    d.truncate(8 + 8 * usize::try_from(n).unwrap_or(0));
    Plan::Done(Done::data(d, usize::try_from(alloc).unwrap_or(usize::MAX)))
}

fn pad_ascii(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .filter(|b| b.is_ascii_graphic() || *b == b' ')
        .take(len)
        .collect();
    v.resize(len, b' ');
    v
}

pub const VENDOR: &str = "KHOI";
pub const PRODUCT: &str = "Khoi Disk";
pub const REVISION: &str = "0001";

fn standard_inquiry() -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = 0x00; // direct-access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HiSup, response data format 2
    d[4] = 96 - 5;
    d[7] = 0x02; // CmdQue
    d[8..16].copy_from_slice(&pad_ascii(VENDOR, 8));
    d[16..32].copy_from_slice(&pad_ascii(PRODUCT, 16));
    d[32..36].copy_from_slice(&pad_ascii(REVISION, 4));
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// VPD pages we list in 00h, ascending and starting with 00h.
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

fn inquiry(cdb: &[u8; 16], lu: &LuInfo) -> Plan {
    let evpd = cdb[1] & 0x01 != 0;
    let page = cdb[2];
    let alloc = usize::try_from(be16(&cdb[3..])).unwrap_or(0);
    if cdb[1] & 0x02 != 0 || (!evpd && page != 0) {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    if !evpd {
        return Plan::Done(Done::data(standard_inquiry(), alloc));
    }
    match vpd_page(page, lu) {
        Some(d) => Plan::Done(Done::data(d, alloc)),
        None => Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB)),
    }
}

fn vpd(page: u8, body: Vec<u8>) -> Vec<u8> {
    let mut d = vec![0u8, page];
    d.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    d.extend_from_slice(&body);
    d
}

fn designator(proto_codeset: u8, piv_assoc_type: u8, value: &[u8]) -> Vec<u8> {
    let mut d = vec![
        proto_codeset,
        piv_assoc_type,
        0,
        u8::try_from(value.len()).unwrap_or(u8::MAX),
    ];
    d.extend_from_slice(&value[..value.len().min(255)]);
    d
}

/// A NUL-terminated SCSI name string padded to a multiple of 4 bytes.
fn name_string(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(250).collect();
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// Build a VPD page; `None` for pages we don't support.
pub fn vpd_page(page: u8, lu: &LuInfo) -> Option<Vec<u8>> {
    Some(match page {
        0x00 => vpd(0x00, VPD_PAGES.to_vec()),
        0x80 => vpd(
            0x80,
            pad_ascii(&lu.identity.serial, lu.identity.serial.len().min(252)),
        ),
        0x83 => {
            let mut b = Vec::new();
            // LU association: NAA 6 (binary, type 3).
            b.extend(designator(0x01, 0x03, &lu.identity.naa));
            // LU association: T10 vendor ID (ASCII, type 1).
            let mut t10 = pad_ascii(VENDOR, 8);
            t10.extend_from_slice(lu.identity.serial.as_bytes());
            t10.truncate(255);
            b.extend(designator(0x02, 0x01, &t10));
            // Target port association, iSCSI protocol, PIV: relative target
            // port 1 (type 4) and the port's SCSI name (type 8).
            b.extend(designator(0x51, 0x94, &[0, 0, 0, 1]));
            b.extend(designator(
                0x53,
                0x98,
                &name_string(&format!("{},t,0x0001", lu.target)),
            ));
            // Target device association: the target's SCSI name.
            b.extend(designator(0x53, 0xa8, &name_string(&lu.target)));
            vpd(0x83, b)
        }
        0xb0 => {
            let mut b = vec![0u8; 0x3c];
            b[0] = 0x01; // WSNZ
            // Optimal transfer length granularity: 8 blocks (4 KiB).
            b[2..4].copy_from_slice(&8u16.to_be_bytes());
            put32(&mut b[4..], u64::from(lu.max_transfer_blocks));
            put32(&mut b[8..], u64::from(lu.opt_transfer_blocks));
            if lu.thin {
                put32(&mut b[16..], u64::from(lu.max_unmap_blocks()));
                put32(&mut b[20..], 256); // max unmap descriptors
                put32(&mut b[24..], 8); // optimal unmap granularity
                b[32..40].copy_from_slice(&u64::from(lu.max_write_same_blocks()).to_be_bytes());
            }
            vpd(0xb0, b)
        }
        0xb1 => {
            let mut b = vec![0u8; 0x3c];
            b[1] = 0x01; // medium rotation rate 0001h: non-rotating
            vpd(0xb1, b)
        }
        0xb2 => {
            let mut b = vec![0u8; 4];
            if lu.thin {
                b[1] = 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10; LBPRZ=0
                b[2] = 0x02; // thin provisioned
            }
            vpd(0xb2, b)
        }
        _ => return None,
    })
}

fn read_capacity10(cdb: &[u8; 16], lu: &LuInfo) -> Plan {
    // PMI=0 requires the LBA field to be zero (SBC-3).
    if cdb[8] & 0x01 == 0 && be32(&cdb[2..]) != 0 {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let mut d = vec![0u8; 8];
    let last = lu.blocks.saturating_sub(1).min(0xffff_ffff);
    put32(&mut d[0..], last);
    put32(&mut d[4..], BLOCK_LEN);
    Plan::Done(Done::data(d, 8))
}

fn read_capacity16(cdb: &[u8; 16], lu: &LuInfo) -> Plan {
    let alloc = usize::try_from(be32(&cdb[10..])).unwrap_or(0);
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lu.blocks.saturating_sub(1).to_be_bytes());
    put32(&mut d[8..], BLOCK_LEN);
    d[13] = 0x03; // LBPPBE: 8 logical blocks per 4 KiB physical block
    if lu.thin {
        d[14] = 0x80; // LBPME (LBPRZ=0, matching VPD B2h)
    }
    Plan::Done(Done::data(d, alloc))
}

// ---------------------------------------------------------------------------
// REPORT SUPPORTED OPERATION CODES

/// One supported command: opcode, service action (if it has them) and the
/// CDB usage data — a mask of the bits the device server looks at, with the
/// opcode (and service action) in the first bytes. Must match [`plan`].
struct OpInfo {
    op: u8,
    sa: Option<u8>,
    usage: &'static [u8],
}

const fn op(op: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        op,
        sa: None,
        usage,
    }
}

const OPS: &[OpInfo] = &[
    op(0x00, &[0x00, 0, 0, 0, 0, 0]),
    op(0x03, &[0x03, 0x01, 0, 0, 0xff, 0]),
    op(0x08, &[0x08, 0x1f, 0xff, 0xff, 0xff, 0]),
    op(0x12, &[0x12, 0x01, 0xff, 0xff, 0xff, 0]),
    op(0x15, &[0x15, 0x11, 0, 0, 0xff, 0]),
    op(0x1a, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0]),
    op(0x1b, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0]),
    op(0x25, &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0]),
    op(
        0x28,
        &[0x28, 0x1a, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    op(
        0x2a,
        &[0x2a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    op(
        0x2e,
        &[0x2e, 0x10, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    op(
        0x2f,
        &[0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    op(
        0x34,
        &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    op(
        0x35,
        &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    op(
        0x41,
        &[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    op(0x42, &[0x42, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op(0x55, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op(0x5a, &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]),
    op(
        0x88,
        &[
            0x88, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    op(
        0x8a,
        &[
            0x8a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    op(
        0x8e,
        &[
            0x8e, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    op(
        0x8f,
        &[
            0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    op(
        0x90,
        &[
            0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    op(
        0x91,
        &[
            0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    op(
        0x93,
        &[
            0x93, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    OpInfo {
        op: 0x9e,
        sa: Some(0x10),
        usage: &[
            0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    },
    op(
        0xa0,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    OpInfo {
        op: 0xa3,
        sa: Some(0x0c),
        usage: &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    },
    op(
        0xa8,
        &[
            0xa8, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0xaa,
        &[
            0xaa, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0xae,
        &[
            0xae, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(
        0xaf,
        &[
            0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
];

/// UNMAP and the UNMAP bit of WRITE SAME exist only on thin LUs.
fn op_supported(o: &OpInfo, lu: &LuInfo) -> bool {
    o.op != 0x42 || lu.thin
}

fn usage_for(o: &OpInfo, lu: &LuInfo) -> Vec<u8> {
    let mut u = o.usage.to_vec();
    if matches!(o.op, 0x41 | 0x93) && !lu.thin {
        u[1] &= !0x08;
    }
    u
}

/// Command timeouts descriptor: length 0Ah, timeouts "not specified".
const TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn report_supported_opcodes(cdb: &[u8; 16], lu: &LuInfo) -> Plan {
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let req_op = cdb[3];
    let req_sa = be16(&cdb[4..]);
    let alloc = usize::try_from(be32(&cdb[6..])).unwrap_or(usize::MAX);
    let ops = OPS.iter().filter(|o| op_supported(o, lu));
    let mut d = Vec::new();
    match options {
        0 => {
            d.extend_from_slice(&[0; 4]);
            for o in ops {
                let u = usage_for(o, lu);
                d.push(o.op);
                d.push(0);
                d.extend_from_slice(&u16::from(o.sa.unwrap_or(0)).to_be_bytes());
                d.push(0);
                d.push((if rctd { 0x02 } else { 0 }) | u8::from(o.sa.is_some()));
                d.extend_from_slice(&u16::try_from(u.len()).unwrap_or(0).to_be_bytes());
                if rctd {
                    d.extend_from_slice(&TIMEOUTS);
                }
            }
            let n = (d.len() - 4) as u64;
            put32(&mut d[0..], n);
        }
        1..=3 => {
            let found = OPS.iter().find(|o| o.op == req_op && op_supported(o, lu));
            let entry = match (options, found) {
                (1, Some(o)) if o.sa.is_some() => {
                    return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
                }
                (2, Some(o)) if o.sa.is_none() => {
                    return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
                }
                (1 | 3, Some(o)) if o.sa.is_none() => Some(o),
                (2 | 3, Some(o)) if o.sa.map(u64::from) == Some(req_sa) => Some(o),
                _ => None,
            };
            match entry {
                Some(o) => {
                    let u = usage_for(o, lu);
                    d.push(0);
                    d.push((if rctd { 0x80 } else { 0 }) | 0x03);
                    d.extend_from_slice(&u16::try_from(u.len()).unwrap_or(0).to_be_bytes());
                    d.extend_from_slice(&u);
                    if rctd {
                        d.extend_from_slice(&TIMEOUTS);
                    }
                }
                None => d.extend_from_slice(&[0, 0x01, 0, 0]),
            }
        }
        _ => return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB)),
    }
    Plan::Done(Done::data(d, alloc))
}

// ---------------------------------------------------------------------------
// Mode pages

const PAGE_RW_RECOVERY: u8 = 0x01;
const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0a;
const PAGE_INFO_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: [u8; 4] = [
    PAGE_RW_RECOVERY,
    PAGE_CACHING,
    PAGE_CONTROL,
    PAGE_INFO_EXCEPTIONS,
];

/// A mode page for page control `pc` (0 current, 1 changeable, 2 default).
/// Nothing is changeable: MODE SELECT accepts only the current values.
fn mode_page(page: u8, pc: u8, lu: &LuInfo) -> Option<Vec<u8>> {
    let changeable = pc == 1;
    let mut p = match page {
        PAGE_RW_RECOVERY => vec![0u8; 12],
        PAGE_CACHING => {
            let mut p = vec![0u8; 20];
            if lu.wce && !changeable {
                p[2] = 0x04; // WCE
            }
            p
        }
        PAGE_CONTROL => {
            let mut p = vec![0u8; 12];
            if !changeable {
                p[2] = 0x02; // GLTSD; D_SENSE=0
                p[3] = 0x10; // queue algorithm modifier 1, QERR=0
                p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
            }
            p
        }
        PAGE_INFO_EXCEPTIONS => vec![0u8; 12],
        _ => return None,
    };
    p[0] = page;
    p[1] = u8::try_from(p.len() - 2).unwrap_or(0);
    Some(p)
}

fn mode_sense(cdb: &[u8; 16], lu: &LuInfo) -> Plan {
    let ten = cdb[0] == 0x5a;
    let dbd = cdb[1] & 0x08 != 0;
    let llbaa = ten && cdb[1] & 0x10 != 0;
    let pc = cdb[2] >> 6;
    let page = cdb[2] & 0x3f;
    let subpage = cdb[3];
    let alloc = if ten {
        usize::try_from(be16(&cdb[7..])).unwrap_or(0)
    } else {
        usize::from(cdb[4])
    };
    if pc == 3 {
        return Plan::Done(Done::check(Sense::SAVING_NOT_SUPPORTED));
    }
    let mut pages = Vec::new();
    if page == 0x3f {
        if subpage != 0x00 && subpage != 0xff {
            return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
        }
        for p in ALL_PAGES {
            pages.extend(mode_page(p, pc, lu).unwrap_or_default());
        }
    } else {
        if subpage != 0 {
            return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
        }
        match mode_page(page, pc, lu) {
            Some(p) => pages.extend(p),
            None => return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB)),
        }
    }
    let dev_specific = (if lu.read_only { 0x80 } else { 0 }) | 0x10; // WP, DPOFUA
    let mut bd = Vec::new();
    if !dbd {
        if llbaa {
            bd.extend_from_slice(&lu.blocks.to_be_bytes());
            bd.extend_from_slice(&[0; 4]);
            bd.extend_from_slice(&u32::try_from(BLOCK_LEN).unwrap_or(512).to_be_bytes());
        } else {
            bd.extend_from_slice(&u32::try_from(lu.blocks).unwrap_or(u32::MAX).to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&u32::try_from(BLOCK_LEN).unwrap_or(512).to_be_bytes()[1..]);
        }
    }
    let mut d = Vec::new();
    if ten {
        d.extend_from_slice(&[0, 0, 0, dev_specific, u8::from(llbaa && !dbd), 0]);
        d.extend_from_slice(&u16::try_from(bd.len()).unwrap_or(0).to_be_bytes());
        d.extend(bd);
        d.extend(pages);
        let len = u16::try_from(d.len() - 2).unwrap_or(u16::MAX);
        d[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        d.extend_from_slice(&[0, 0, dev_specific, u8::try_from(bd.len()).unwrap_or(0)]);
        d.extend(bd);
        d.extend(pages);
        // MODE SENSE(6) lengths are one byte; everything fits in 255.
        d.truncate(255);
        d[0] = u8::try_from(d.len() - 1).unwrap_or(u8::MAX);
    }
    Plan::Done(Done::data(d, alloc))
}

fn mode_select(cdb: &[u8; 16], _lu: &LuInfo) -> Plan {
    let ten = cdb[0] == 0x55;
    let save = cdb[1] & 0x01 != 0;
    let len = if ten {
        be16(&cdb[7..])
    } else {
        u64::from(cdb[4])
    };
    if len == 0 {
        return Plan::Done(Done::good());
    }
    Plan::DataOut {
        kind: DataOutKind::ModeSelect { ten, save },
        offset: 0,
        len,
        blocks: 0,
    }
}

/// Accept a MODE SELECT parameter list that leaves every page as it is
/// (what Windows sends when zeroing QERR); reject any real change.
fn mode_select_data(d: &[u8], ten: bool, save: bool, lu: &LuInfo) -> Done {
    let hdr = if ten { 8 } else { 4 };
    if d.len() < hdr {
        return Done::check(Sense::PARAM_LIST_LENGTH);
    }
    let bdl = if ten {
        usize::try_from(be16(&d[6..])).unwrap_or(usize::MAX)
    } else {
        usize::from(d[3])
    };
    let Some(mut rest) = d.get(hdr..).and_then(|r| r.get(bdl..)) else {
        return Done::check(Sense::PARAM_LIST_LENGTH);
    };
    if bdl >= 8 {
        let bd = &d[hdr..hdr + bdl];
        let blen = be32(&bd[bdl - 4..]) & 0x00ff_ffff;
        if blen != 0 && blen != BLOCK_LEN {
            return Done::check(Sense::INVALID_FIELD_IN_PARAM);
        }
    }
    while !rest.is_empty() {
        if rest.len() < 2 || rest[0] & 0x40 != 0 {
            return Done::check(Sense::INVALID_FIELD_IN_PARAM);
        }
        let page = rest[0] & 0x3f;
        let plen = usize::from(rest[1]) + 2;
        let Some(given) = rest.get(..plen) else {
            return Done::check(Sense::PARAM_LIST_LENGTH);
        };
        let Some(cur) = mode_page(page, 0, lu) else {
            return Done::check(Sense::INVALID_FIELD_IN_PARAM);
        };
        if cur.len() != given.len() || cur[2..] != given[2..] {
            return Done::check(Sense::INVALID_FIELD_IN_PARAM);
        }
        rest = &rest[plen..];
    }
    if save {
        return Done::check(Sense::INVALID_FIELD_IN_CDB);
    }
    Done::good()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    fn lu() -> LuInfo {
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

    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    fn done(p: Plan) -> Done {
        match p {
            Plan::Done(d) => d,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn run(bytes: &[u8]) -> Done {
        done(plan(&cdb(bytes), 0, &lu(), &mut Nexus::default()))
    }

    #[test]
    fn sense_fixed_format() {
        let s = Sense::SPACE_ALLOCATION_FAILED.fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x07);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x27, 0x07));
    }

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
    fn inquiry_standard_and_errors() {
        let d = run(&[0x12, 0, 0, 0, 0xff, 0]);
        assert_eq!(d.data.len(), 96);
        assert_eq!(d.data[0], 0);
        assert_eq!(d.data[4], 91);
        assert_eq!(&d.data[8..12], b"KHOI");
        let d = run(&[0x12, 0, 0, 0, 5, 0]);
        assert_eq!(d.data.len(), 5);
        assert_eq!(
            run(&[0x12, 0, 0x80, 0, 0xff, 0]).sense,
            Some(Sense::INVALID_FIELD_IN_CDB)
        );
        assert_eq!(
            run(&[0x12, 1, 0x86, 0, 0xff, 0]).sense,
            Some(Sense::INVALID_FIELD_IN_CDB)
        );
        // Another LUN: qualifier 3, device type 1Fh.
        let d = done(plan(
            &cdb(&[0x12, 0, 0, 0, 0xff, 0]),
            1 << 48,
            &lu(),
            &mut Nexus::default(),
        ));
        assert_eq!(d.data[0], 0x7f);
    }

    #[test]
    fn vpd_pages_bytes() {
        let d = run(&[0x12, 1, 0x00, 0, 0xff, 0]);
        assert_eq!(
            &d.data[..],
            &[0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]
        );
        let d = run(&[0x12, 1, 0x80, 0, 0xff, 0]);
        assert_eq!(&d.data[..], b"\x00\x80\x00\x08KHOI0001");
        let d = run(&[0x12, 1, 0x83, 0, 0xff, 0]);
        let page = &d.data[..];
        assert_eq!(page[1], 0x83);
        assert_eq!(
            usize::from(page[2]) << 8 | usize::from(page[3]),
            page.len() - 4
        );
        // First designator: NAA 6, 16 bytes, LU association.
        assert_eq!(&page[4..8], &[0x01, 0x03, 0x00, 0x10]);
        assert_eq!(page[8] >> 4, 6);
        // Walk all designators and collect (assoc, type).
        let mut i = 4;
        let mut seen = Vec::new();
        while i < page.len() {
            let len = usize::from(page[i + 3]);
            seen.push((
                (page[i + 1] >> 4) & 3,
                page[i + 1] & 0x0f,
                page[i + 1] & 0x80 != 0,
            ));
            if page[i + 1] & 0x0f == 8 {
                assert_eq!(len % 4, 0, "SCSI name strings are padded to 4");
                assert_eq!(page[i + 4 + len - 1], 0);
            }
            i += 4 + len;
        }
        assert_eq!(i, page.len());
        assert_eq!(
            seen,
            vec![
                (0, 3, false),
                (0, 1, false),
                (1, 4, true),
                (1, 8, true),
                (2, 8, true)
            ]
        );
        let d = run(&[0x12, 1, 0xb0, 0, 0xff, 0]);
        assert_eq!(&d.data[..4], &[0, 0xb0, 0, 0x3c]);
        assert_eq!(d.data[4] & 1, 1, "WSNZ");
        assert_eq!(&d.data[6..8], &[0, 8]);
        assert!(be32(&d.data[8..]) >= (1 << 20) / 512);
        let d = run(&[0x12, 1, 0xb1, 0, 0xff, 0]);
        assert_eq!(&d.data[..6], &[0, 0xb1, 0, 0x3c, 0, 1]);
        let d = run(&[0x12, 1, 0xb2, 0, 0xff, 0]);
        assert_eq!(&d.data[..], &[0, 0xb2, 0, 4, 0, 0xe0, 0x02, 0]);
    }

    #[test]
    fn read_capacity() {
        let d = run(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&d.data[..], &[0, 0, 0x07, 0xff, 0, 0, 2, 0]);
        let d = run(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
        assert_eq!(d.data.len(), 32);
        assert_eq!(&d.data[..12], &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0]);
        assert_eq!(d.data[13], 3);
        assert_eq!(d.data[14], 0x80);
        let mut big = lu();
        big.blocks = 1 << 33;
        let d = done(plan(&cdb(&[0x25]), 0, &big, &mut Nexus::default()));
        assert_eq!(&d.data[..4], &[0xff; 4]);
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
    fn mode_sense_pages() {
        let d = run(&[0x1a, 0, 0x3f, 0, 0xff, 0]);
        assert!(d.data.len() <= 255);
        assert_eq!(usize::from(d.data[0]) + 1, d.data.len());
        assert_eq!(d.data[2], 0x10, "DPOFUA, not WP");
        assert_eq!(d.data[3], 8);
        // Caching page with WCE.
        let d = run(&[0x1a, 0x08, 0x08, 0, 0xff, 0]);
        assert_eq!(&d.data[..6], &[3 + 20, 0, 0x10, 0, 0x08, 0x12]);
        assert_eq!(d.data[6], 0x04);
        // Changeable values: nothing.
        let d = run(&[0x1a, 0x08, 0x48, 0, 0xff, 0]);
        assert_eq!(d.data[6], 0);
        assert_eq!(
            run(&[0x1a, 0, 0x30, 0, 0xff, 0]).sense,
            Some(Sense::INVALID_FIELD_IN_CDB)
        );
        assert_eq!(
            run(&[0x1a, 0, 0xc8, 0, 0xff, 0]).sense,
            Some(Sense::SAVING_NOT_SUPPORTED)
        );
        let d = run(&[0x5a, 0x10, 0x0a, 0, 0, 0, 0, 0, 0xff, 0]);
        assert_eq!(d.data[4], 1, "LONGLBA");
        assert_eq!(&d.data[6..8], &[0, 16]);
        let mut ro = lu();
        ro.read_only = true;
        let d = done(plan(
            &cdb(&[0x1a, 0x08, 0x3f, 0, 0xff, 0]),
            0,
            &ro,
            &mut Nexus::default(),
        ));
        assert_eq!(d.data[2], 0x90);
    }

    #[test]
    fn mode_select_roundtrip_accepted_change_rejected() {
        let l = lu();
        let sense = run(&[0x1a, 0x08, 0x0a, 0, 0xff, 0]);
        let mut params = sense.data.to_vec();
        params[0] = 0;
        assert_eq!(mode_select_data(&params, false, false, &l), Done::good());
        params[4 + 3] |= 0x02; // QERR=01b
        assert_eq!(
            mode_select_data(&params, false, false, &l).sense,
            Some(Sense::INVALID_FIELD_IN_PARAM)
        );
    }

    #[test]
    fn report_luns_and_request_sense() {
        let d = run(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            &d.data[..],
            &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            run(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]).sense,
            Some(Sense::INVALID_FIELD_IN_CDB)
        );
        let d = run(&[0x03, 0, 0, 0, 252, 0]);
        assert_eq!(d.status, GOOD);
        assert_eq!(d.data[0], 0x70);
        assert_eq!(d.data.len(), 18);
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

    #[test]
    fn report_supported_opcodes_consistent() {
        let d = run(&[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]);
        let n = usize::try_from(be32(&d.data[..])).unwrap();
        assert_eq!(n + 4, d.data.len());
        assert_eq!(n % 8, 0);
        // Every listed opcode is one `plan` implements (not INVALID OPCODE).
        for desc in d.data[4..].chunks(8) {
            let mut c = [0u8; 16];
            c[0] = desc[0];
            c[1] = desc[3];
            let p = plan(&c, 0, &lu(), &mut Nexus::default());
            assert_ne!(
                p,
                Plan::Done(Done::check(Sense::INVALID_OPCODE)),
                "{:#x}",
                desc[0]
            );
            let one = run(&[
                0xa3,
                0x0c,
                if desc[5] & 1 != 0 { 2 } else { 1 },
                desc[0],
                desc[2],
                desc[3],
                0,
                0,
                0xff,
                0xff,
                0,
                0,
            ]);
            assert_eq!(one.data[1] & 7, 3);
            assert_eq!(one.data[4], desc[0]);
            assert_eq!(be16(&one.data[2..]), be16(&desc[6..]));
        }
        // With RCTD, descriptors grow by the 12-byte timeouts descriptor.
        let d = run(&[0xa3, 0x0c, 0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!((d.data.len() - 4) % 20, 0);
        // Unsupported opcode: SUPPORT=001b.
        let d = run(&[0xa3, 0x0c, 1, 0xc1, 0, 0, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!(&d.data[..], &[0, 1, 0, 0]);
        // RC16 has service actions: option 1 is refused.
        assert_eq!(
            run(&[0xa3, 0x0c, 1, 0x9e, 0, 0x10, 0, 0, 0xff, 0xff, 0, 0]).sense,
            Some(Sense::INVALID_FIELD_IN_CDB)
        );
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
