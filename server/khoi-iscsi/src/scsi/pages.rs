//! Answers built from the LU's description alone: standard and VPD
//! INQUIRY data, READ CAPACITY, REPORT LUNS, REQUEST SENSE, REPORT
//! SUPPORTED OPERATION CODES, and the mode pages (MODE SENSE, and MODE
//! SELECT, which accepts only the current values).

use khoi_wire::{be16, be32, put_be32};

use super::cdb::{Cdb, ScsiOp};
use super::plan::{DataOutKind, Plan};
use super::sense::{Done, Sense};
use super::{BLOCK_LEN, BLOCK_U32, LuInfo, Nexus};

// ---------------------------------------------------------------------------
// Non-medium commands

pub(super) fn request_sense(c: &Cdb<'_>, nexus: &mut Nexus) -> Plan {
    if c.byte(1) & 0x01 != 0 {
        // DESC=1: only fixed format is supported.
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let s = nexus.unit_attention.take().unwrap_or(Sense::NO_SENSE);
    Plan::Done(Done::data(s.fixed().to_vec(), usize::from(c.byte(4))))
}

pub(super) fn report_luns(c: &Cdb<'_>) -> Plan {
    let alloc = c.u32_at(6);
    if alloc < 16 || !matches!(c.byte(2), 0x00 | 0x01 | 0x02 | 0x10 | 0x11 | 0x12) {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let mut d = vec![0u8; 16];
    // SELECT REPORT 01h asks for well-known LUs only, of which we have none.
    let n: u32 = if c.byte(2) == 0x01 { 0 } else { 1 };
    put_be32(&mut d[0..], 8 * n);
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

pub(super) fn standard_inquiry() -> Vec<u8> {
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

pub(super) fn inquiry(c: &Cdb<'_>, lu: &LuInfo) -> Plan {
    let evpd = c.byte(1) & 0x01 != 0;
    let page = c.byte(2);
    let alloc = usize::try_from(c.u16_at(3)).unwrap_or(0);
    if c.byte(1) & 0x02 != 0 || (!evpd && page != 0) {
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
            put_be32(&mut b[4..], lu.max_transfer_blocks);
            put_be32(&mut b[8..], lu.opt_transfer_blocks);
            if lu.thin {
                put_be32(&mut b[16..], lu.max_unmap_blocks());
                put_be32(&mut b[20..], 256); // max unmap descriptors
                put_be32(&mut b[24..], 8); // optimal unmap granularity
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

pub(super) fn read_capacity10(c: &Cdb<'_>, lu: &LuInfo) -> Plan {
    // PMI=0 requires the LBA field to be zero (SBC-3).
    if c.byte(8) & 0x01 == 0 && c.u32_at(2) != 0 {
        return Plan::Done(Done::check(Sense::INVALID_FIELD_IN_CDB));
    }
    let mut d = vec![0u8; 8];
    // Past 2^32 blocks the answer saturates, telling the initiator to ask
    // READ CAPACITY(16).
    let last = u32::try_from(lu.blocks.saturating_sub(1)).unwrap_or(u32::MAX);
    put_be32(&mut d[0..], last);
    put_be32(&mut d[4..], BLOCK_U32);
    Plan::Done(Done::data(d, 8))
}

pub(super) fn read_capacity16(c: &Cdb<'_>, lu: &LuInfo) -> Plan {
    let alloc = usize::try_from(c.u32_at(10)).unwrap_or(0);
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lu.blocks.saturating_sub(1).to_be_bytes());
    put_be32(&mut d[8..], BLOCK_U32);
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

pub(super) fn report_supported_opcodes(c: &Cdb<'_>, lu: &LuInfo) -> Plan {
    let rctd = c.byte(2) & 0x80 != 0;
    let options = c.byte(2) & 0x07;
    let req_op = c.byte(3);
    let req_sa = c.u16_at(4);
    let alloc = usize::try_from(c.u32_at(6)).unwrap_or(usize::MAX);
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
            let n = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
            put_be32(&mut d[0..], n);
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

pub(super) fn mode_sense(c: &Cdb<'_>, lu: &LuInfo) -> Plan {
    let ten = c.op() == ScsiOp::ModeSense10;
    let dbd = c.byte(1) & 0x08 != 0;
    let llbaa = ten && c.byte(1) & 0x10 != 0;
    let pc = c.byte(2) >> 6;
    let page = c.byte(2) & 0x3f;
    let subpage = c.byte(3);
    let alloc = if ten {
        usize::try_from(c.u16_at(7)).unwrap_or(0)
    } else {
        usize::from(c.byte(4))
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
            bd.extend_from_slice(&BLOCK_U32.to_be_bytes());
        } else {
            bd.extend_from_slice(&u32::try_from(lu.blocks).unwrap_or(u32::MAX).to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&BLOCK_U32.to_be_bytes()[1..]);
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

pub(super) fn mode_select(c: &Cdb<'_>) -> Plan {
    let ten = c.op() == ScsiOp::ModeSelect10;
    let save = c.byte(1) & 0x01 != 0;
    let len = if ten {
        c.u16_at(7)
    } else {
        u64::from(c.byte(4))
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
pub(super) fn mode_select_data(d: &[u8], ten: bool, save: bool, lu: &LuInfo) -> Done {
    let hdr = if ten { 8 } else { 4 };
    if d.len() < hdr {
        return Done::check(Sense::PARAM_LIST_LENGTH);
    }
    let bdl = if ten {
        usize::from(be16(&d[6..]))
    } else {
        usize::from(d[3])
    };
    let Some(mut rest) = d.get(hdr..).and_then(|r| r.get(bdl..)) else {
        return Done::check(Sense::PARAM_LIST_LENGTH);
    };
    if bdl >= 8 {
        let bd = &d[hdr..hdr + bdl];
        let blen = u64::from(be32(&bd[bdl - 4..]) & 0x00ff_ffff);
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::fixtures::{cdb, done, lu, run};
    use super::super::plan::plan;
    use super::super::sense::GOOD;
    use super::*;

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
    fn supported_opcode_table_names_known_ops() {
        for o in OPS {
            assert!(
                !matches!(ScsiOp::from(o.op), ScsiOp::Unknown(_)),
                "{:#x}",
                o.op
            );
            assert_eq!(o.usage[0], o.op);
            if let Some(sa) = o.sa {
                assert_eq!(o.usage[1], sa);
            }
        }
    }
}
