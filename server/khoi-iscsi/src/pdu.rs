//! iSCSI PDU wire format (RFC 7143 §11), in the smoltcp style.
//!
//! [`Bhs`] is a view over a 48-byte Basic Header Segment: getters need
//! `AsRef<[u8]>`, setters `AsMut<[u8]>`, and once [`Bhs::new_checked`] has
//! accepted a buffer no accessor can panic. Each PDU kind has a `Repr` with
//! `parse` (semantic checks) and `emit` (cannot fail on a 48-byte buffer).
//! Reprs never touch TotalAHSLength or DataSegmentLength: those, padding and
//! digests belong to the framer in [`crate::frame`].

use bytes::Bytes;
use khoi_wire::{
    be16, be24, be32, be64, enum_with_unknown, put_be16, put_be24, put_be32, put_be64,
};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Initiator Task Tag / Target Transfer Tag value meaning "none".
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// A malformed PDU. Unit type: the caller answers with Reject or closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed iSCSI PDU")
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

mod field {
    use std::ops::Range;

    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const B2: usize = 2;
    pub const B3: usize = 3;
    pub const TOTAL_AHS_LEN: usize = 4;
    pub const DATA_SEG_LEN: Range<usize> = 5..8;
    pub const LUN: Range<usize> = 8..16;
    pub const ISID: Range<usize> = 8..14;
    pub const TSIH: Range<usize> = 14..16;
    pub const ITT: Range<usize> = 16..20;
    /// Opcode-specific 32-bit words; most PDUs are a sequence of these.
    pub const W20: usize = 20;
    pub const W24: usize = 24;
    pub const W28: usize = 28;
    pub const W32: usize = 32;
    pub const W36: usize = 36;
    pub const W40: usize = 40;
    pub const W44: usize = 44;
    pub const CDB: Range<usize> = 32..48;
    pub const CID: Range<usize> = 20..22;
    pub const STATUS_CLASS: usize = 36;
    pub const STATUS_DETAIL: usize = 37;
    pub const TIME2WAIT: Range<usize> = 40..42;
    pub const TIME2RETAIN: Range<usize> = 42..44;
}

enum_with_unknown! {
    /// The six-bit opcode of byte 0.
    pub enum Opcode(u8) {
        NopOut = 0x00,
        ScsiCommand = 0x01,
        TaskMgmtRequest = 0x02,
        LoginRequest = 0x03,
        TextRequest = 0x04,
        DataOut = 0x05,
        LogoutRequest = 0x06,
        Snack = 0x10,
        NopIn = 0x20,
        ScsiResponse = 0x21,
        TaskMgmtResponse = 0x22,
        LoginResponse = 0x23,
        TextResponse = 0x24,
        DataIn = 0x25,
        LogoutResponse = 0x26,
        R2t = 0x31,
        AsyncMessage = 0x32,
        Reject = 0x3f,
    }
}

enum_with_unknown! {
    /// Reject reasons (RFC 7143 §11.17.1).
    pub enum RejectReason(u8) {
        DataDigestError = 0x02,
        SnackReject = 0x03,
        ProtocolError = 0x04,
        CommandNotSupported = 0x05,
        ImmediateCommandReject = 0x06,
        TaskInProgress = 0x07,
        InvalidDataAck = 0x08,
        InvalidPduField = 0x09,
        LongOpReject = 0x0a,
        WaitingForLogout = 0x0c,
    }
}

enum_with_unknown! {
    /// Task management functions (RFC 7143 §11.5.1).
    pub enum TmfFunction(u8) {
        AbortTask = 1,
        AbortTaskSet = 2,
        ClearAca = 3,
        ClearTaskSet = 4,
        LogicalUnitReset = 5,
        TargetWarmReset = 6,
        TargetColdReset = 7,
        TaskReassign = 8,
    }
}

enum_with_unknown! {
    /// Task management responses (RFC 7143 §11.6.1).
    pub enum TmfResponse(u8) {
        Complete = 0,
        TaskDoesNotExist = 1,
        LunDoesNotExist = 2,
        TaskStillAllegiant = 3,
        ReassignNotSupported = 4,
        NotSupported = 5,
        AuthorizationFailed = 6,
        Rejected = 255,
    }
}

/// A read-only or read-write view of a Basic Header Segment.
#[derive(Debug, Clone)]
pub struct Bhs<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Bhs<T> {
    /// Wrap a buffer without checking its length; accessors panic on a short
    /// buffer. Use for emitting into a buffer known to be `BHS_LEN` long.
    pub const fn new_unchecked(buffer: T) -> Bhs<T> {
        Bhs { buffer }
    }

    /// Wrap untrusted input; afterwards no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Bhs<T>> {
        let bhs = Bhs::new_unchecked(buffer);
        bhs.check_len()?;
        Ok(bhs)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < BHS_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self, i: usize) -> u8 {
        self.buffer.as_ref()[i]
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        be16(&self.buffer.as_ref()[r])
    }

    /// A 32-bit big-endian word at `off`.
    pub fn word(&self, off: usize) -> u32 {
        be32(&self.buffer.as_ref()[off..off + 4])
    }

    pub fn opcode(&self) -> Opcode {
        Opcode::from(self.b(field::OPCODE) & 0x3f)
    }

    /// The I bit: an immediate command, not subject to CmdSN ordering.
    pub fn immediate(&self) -> bool {
        self.b(field::OPCODE) & 0x40 != 0
    }

    /// Byte 1, holding the F bit and opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.b(field::FLAGS)
    }

    pub fn final_bit(&self) -> bool {
        self.flags() & 0x80 != 0
    }

    pub fn byte2(&self) -> u8 {
        self.b(field::B2)
    }

    pub fn byte3(&self) -> u8 {
        self.b(field::B3)
    }

    /// TotalAHSLength in bytes (the wire field counts 4-byte words).
    pub fn total_ahs_len(&self) -> usize {
        usize::from(self.b(field::TOTAL_AHS_LEN)) * 4
    }

    pub fn data_segment_len(&self) -> usize {
        be24(&self.buffer.as_ref()[field::DATA_SEG_LEN]) as usize
    }

    pub fn lun(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::LUN])
    }

    pub fn isid(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::ISID]);
        a
    }

    pub fn tsih(&self) -> u16 {
        self.u16_at(field::TSIH)
    }

    pub fn itt(&self) -> u32 {
        self.word(field::ITT.start)
    }

    pub fn cid(&self) -> u16 {
        self.u16_at(field::CID)
    }

    pub fn cdb(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::CDB]);
        a
    }

    pub fn status_class(&self) -> u8 {
        self.b(field::STATUS_CLASS)
    }

    pub fn status_detail(&self) -> u8 {
        self.b(field::STATUS_DETAIL)
    }

    pub fn time2wait(&self) -> u16 {
        self.u16_at(field::TIME2WAIT)
    }

    pub fn time2retain(&self) -> u16 {
        self.u16_at(field::TIME2RETAIN)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bhs<T> {
    fn set_b(&mut self, i: usize, v: u8) {
        self.buffer.as_mut()[i] = v;
    }

    fn set_u16(&mut self, r: std::ops::Range<usize>, v: u16) {
        put_be16(&mut self.buffer.as_mut()[r], v);
    }

    pub fn set_word(&mut self, off: usize, v: u32) {
        put_be32(&mut self.buffer.as_mut()[off..off + 4], v);
    }

    pub fn set_opcode(&mut self, op: Opcode, immediate: bool) {
        let i = if immediate { 0x40 } else { 0 };
        self.set_b(field::OPCODE, (u8::from(op) & 0x3f) | i);
    }

    pub fn set_flags(&mut self, v: u8) {
        self.set_b(field::FLAGS, v);
    }

    pub fn set_byte2(&mut self, v: u8) {
        self.set_b(field::B2, v);
    }

    pub fn set_byte3(&mut self, v: u8) {
        self.set_b(field::B3, v);
    }

    /// Set TotalAHSLength from a byte count that must be a multiple of 4 and
    /// at most 1020 (the framer guarantees both).
    pub fn set_total_ahs_len(&mut self, bytes: usize) {
        let words = u8::try_from(bytes / 4).unwrap_or(u8::MAX);
        self.set_b(field::TOTAL_AHS_LEN, words);
    }

    /// Set DataSegmentLength; values above 2^24-1 are truncated to the
    /// field, so the framer never passes one (lengths are bounded by the
    /// negotiated MaxRecvDataSegmentLength, at most 2^24-1).
    pub fn set_data_segment_len(&mut self, len: usize) {
        let v = u32::try_from(len & 0x00ff_ffff).unwrap_or(0);
        put_be24(&mut self.buffer.as_mut()[field::DATA_SEG_LEN], v);
    }

    pub fn set_lun(&mut self, lun: u64) {
        put_be64(&mut self.buffer.as_mut()[field::LUN], lun);
    }

    pub fn set_isid(&mut self, isid: [u8; 6]) {
        self.buffer.as_mut()[field::ISID].copy_from_slice(&isid);
    }

    pub fn set_tsih(&mut self, v: u16) {
        self.set_u16(field::TSIH, v);
    }

    pub fn set_itt(&mut self, v: u32) {
        self.set_word(field::ITT.start, v);
    }

    pub fn set_cid(&mut self, v: u16) {
        self.set_u16(field::CID, v);
    }

    pub fn set_cdb(&mut self, cdb: &[u8; 16]) {
        self.buffer.as_mut()[field::CDB].copy_from_slice(cdb);
    }

    pub fn set_status(&mut self, class: u8, detail: u8) {
        self.set_b(field::STATUS_CLASS, class);
        self.set_b(field::STATUS_DETAIL, detail);
    }

    pub fn set_time2(&mut self, wait: u16, retain: u16) {
        self.set_u16(field::TIME2WAIT, wait);
        self.set_u16(field::TIME2RETAIN, retain);
    }
}

/// An owned PDU as it travels through the framer: header, AHS and data
/// segment without padding or digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

impl Pdu {
    pub fn view(&self) -> Bhs<&[u8]> {
        Bhs::new_unchecked(&self.bhs[..])
    }

    pub fn opcode(&self) -> Opcode {
        self.view().opcode()
    }

    /// Build a PDU from an emitted header and a data segment; sets
    /// DataSegmentLength (AHS is never sent by this target).
    pub fn new(mut bhs: [u8; BHS_LEN], data: Bytes) -> Pdu {
        let mut v = Bhs::new_unchecked(&mut bhs[..]);
        v.set_total_ahs_len(0);
        v.set_data_segment_len(data.len());
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data,
        }
    }
}

/// Sequence numbers every target PDU that carries status or a window shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqNums {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

fn emit_seq(b: &mut Bhs<&mut [u8]>, s: &SeqNums) {
    b.set_word(field::W24, s.stat_sn);
    b.set_word(field::W28, s.exp_cmd_sn);
    b.set_word(field::W32, s.max_cmd_sn);
}

fn parse_seq(b: &Bhs<&[u8]>) -> SeqNums {
    SeqNums {
        stat_sn: b.word(field::W24),
        exp_cmd_sn: b.word(field::W28),
        max_cmd_sn: b.word(field::W32),
    }
}

/// The T, C, CSG and NSG bits of a login request or response (byte 1).
struct StageFlags {
    transit: bool,
    cont: bool,
    csg: Stage,
    nsg: Stage,
}

impl StageFlags {
    fn parse(f: u8) -> Result<Self> {
        let transit = f & 0x80 != 0;
        let csg = Stage::from_bits(f >> 2)?;
        // NSG is only meaningful with T set; a reserved value there is harmless.
        let nsg = if transit { Stage::from_bits(f)? } else { csg };
        Ok(StageFlags {
            transit,
            cont: f & 0x40 != 0,
            csg,
            nsg,
        })
    }
}

fn expect(b: &Bhs<&[u8]>, op: Opcode) -> Result<()> {
    if b.opcode() == op { Ok(()) } else { Err(Error) }
}

fn header(op: Opcode, immediate: bool) -> [u8; BHS_LEN] {
    let mut h = [0u8; BHS_LEN];
    Bhs::new_unchecked(&mut h[..]).set_opcode(op, immediate);
    h
}

// ---------------------------------------------------------------------------
// Login

/// Login stages (CSG/NSG values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    fn from_bits(v: u8) -> Result<Stage> {
        match v & 3 {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            _ => Err(Error),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LoginRequest {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::LoginRequest)?;
        let StageFlags {
            transit,
            cont,
            csg,
            nsg,
        } = StageFlags::parse(b.flags())?;
        Ok(LoginRequest {
            transit,
            cont,
            csg,
            nsg,
            version_max: b.byte2(),
            version_min: b.byte3(),
            isid: b.isid(),
            tsih: b.tsih(),
            itt: b.itt(),
            cid: b.cid(),
            cmd_sn: b.word(field::W24),
            exp_stat_sn: b.word(field::W28),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::LoginRequest, true);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(login_flags(self.transit, self.cont, self.csg, self.nsg));
        b.set_byte2(self.version_max);
        b.set_byte3(self.version_min);
        b.set_isid(self.isid);
        b.set_tsih(self.tsih);
        b.set_itt(self.itt);
        b.set_cid(self.cid);
        b.set_word(field::W24, self.cmd_sn);
        b.set_word(field::W28, self.exp_stat_sn);
        h
    }
}

fn login_flags(transit: bool, cont: bool, csg: Stage, nsg: Stage) -> u8 {
    let mut f = ((csg as u8) << 2) | if transit { nsg as u8 } else { 0 };
    if transit {
        f |= 0x80;
    }
    if cont {
        f |= 0x40;
    }
    f
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub seq: SeqNums,
    pub status_class: u8,
    pub status_detail: u8,
}

impl LoginResponse {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::LoginResponse)?;
        let StageFlags {
            transit,
            cont,
            csg,
            nsg,
        } = StageFlags::parse(b.flags())?;
        Ok(LoginResponse {
            transit,
            cont,
            csg,
            nsg,
            version_max: b.byte2(),
            version_active: b.byte3(),
            isid: b.isid(),
            tsih: b.tsih(),
            itt: b.itt(),
            seq: parse_seq(b),
            status_class: b.status_class(),
            status_detail: b.status_detail(),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::LoginResponse, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(login_flags(self.transit, self.cont, self.csg, self.nsg));
        b.set_byte2(self.version_max);
        b.set_byte3(self.version_active);
        b.set_isid(self.isid);
        b.set_tsih(self.tsih);
        b.set_itt(self.itt);
        emit_seq(&mut b, &self.seq);
        b.set_status(self.status_class, self.status_detail);
        h
    }
}

// ---------------------------------------------------------------------------
// Text

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub fin: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl TextRequest {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::TextRequest)?;
        Ok(TextRequest {
            immediate: b.immediate(),
            fin: b.final_bit(),
            cont: b.flags() & 0x40 != 0,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.word(field::W20),
            cmd_sn: b.word(field::W24),
            exp_stat_sn: b.word(field::W28),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::TextRequest, self.immediate);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(fc_flags(self.fin, self.cont));
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.ttt);
        b.set_word(field::W24, self.cmd_sn);
        b.set_word(field::W28, self.exp_stat_sn);
        h
    }
}

fn fc_flags(fin: bool, cont: bool) -> u8 {
    (if fin { 0x80 } else { 0 }) | (if cont { 0x40 } else { 0 })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextResponse {
    pub fin: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub seq: SeqNums,
}

impl TextResponse {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::TextResponse)?;
        Ok(TextResponse {
            fin: b.final_bit(),
            cont: b.flags() & 0x40 != 0,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.word(field::W20),
            seq: parse_seq(b),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::TextResponse, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(fc_flags(self.fin, self.cont));
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.ttt);
        emit_seq(&mut b, &self.seq);
        h
    }
}

// ---------------------------------------------------------------------------
// SCSI Command / Response

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub fin: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub edtl: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

impl ScsiCommand {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::ScsiCommand)?;
        let f = b.flags();
        Ok(ScsiCommand {
            immediate: b.immediate(),
            fin: f & 0x80 != 0,
            read: f & 0x40 != 0,
            write: f & 0x20 != 0,
            attr: f & 0x07,
            lun: b.lun(),
            itt: b.itt(),
            edtl: b.word(field::W20),
            cmd_sn: b.word(field::W24),
            exp_stat_sn: b.word(field::W28),
            cdb: b.cdb(),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::ScsiCommand, self.immediate);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        let f = (if self.fin { 0x80 } else { 0 })
            | (if self.read { 0x40 } else { 0 })
            | (if self.write { 0x20 } else { 0 })
            | (self.attr & 7);
        b.set_flags(f);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.edtl);
        b.set_word(field::W24, self.cmd_sn);
        b.set_word(field::W28, self.exp_stat_sn);
        b.set_cdb(&self.cdb);
        h
    }
}

/// Residual reporting shared by SCSI Response and Data-In.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Residual {
    #[default]
    None,
    Underflow(u32),
    Overflow(u32),
}

impl Residual {
    fn flags(self) -> u8 {
        match self {
            Residual::None => 0,
            Residual::Overflow(_) => 0x04,
            Residual::Underflow(_) => 0x02,
        }
    }

    fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Overflow(n) | Residual::Underflow(n) => n,
        }
    }

    fn from_bits(flags: u8, count: u32) -> Result<Residual> {
        match (flags & 0x04 != 0, flags & 0x02 != 0) {
            (false, false) => Ok(Residual::None),
            (true, false) => Ok(Residual::Overflow(count)),
            (false, true) => Ok(Residual::Underflow(count)),
            (true, true) => Err(Error),
        }
    }

    /// Residual for a transfer of `actual` bytes when the initiator expected
    /// `expected` bytes (iSCSI EDTL).
    pub fn between(expected: u64, wanted: u64) -> Residual {
        use std::cmp::Ordering;
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        match wanted.cmp(&expected) {
            Ordering::Equal => Residual::None,
            Ordering::Less => Residual::Underflow(clamp(expected - wanted)),
            Ordering::Greater => Residual::Overflow(clamp(wanted - expected)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    pub response: u8,
    pub status: u8,
    pub residual: Residual,
    pub itt: u32,
    pub seq: SeqNums,
    pub exp_data_sn: u32,
}

impl ScsiResponse {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::ScsiResponse)?;
        Ok(ScsiResponse {
            response: b.byte2(),
            status: b.byte3(),
            residual: Residual::from_bits(b.flags(), b.word(field::W44))?,
            itt: b.itt(),
            seq: parse_seq(b),
            exp_data_sn: b.word(field::W36),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::ScsiResponse, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80 | self.residual.flags());
        b.set_byte2(self.response);
        b.set_byte3(self.status);
        b.set_itt(self.itt);
        emit_seq(&mut b, &self.seq);
        b.set_word(field::W36, self.exp_data_sn);
        b.set_word(field::W44, self.residual.count());
        h
    }
}

// ---------------------------------------------------------------------------
// Data-Out / Data-In / R2T

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    pub fin: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

impl DataOut {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::DataOut)?;
        Ok(DataOut {
            fin: b.final_bit(),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.word(field::W20),
            exp_stat_sn: b.word(field::W28),
            data_sn: b.word(field::W36),
            buffer_offset: b.word(field::W40),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::DataOut, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(if self.fin { 0x80 } else { 0 });
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.ttt);
        b.set_word(field::W28, self.exp_stat_sn);
        b.set_word(field::W36, self.data_sn);
        b.set_word(field::W40, self.buffer_offset);
        h
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIn {
    pub fin: bool,
    /// Status carried in this PDU (S bit); implies `fin`.
    pub status: Option<u8>,
    pub residual: Residual,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    /// StatSN is only meaningful when `status` is set.
    pub seq: SeqNums,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

impl DataIn {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::DataIn)?;
        let f = b.flags();
        let status = if f & 0x01 != 0 { Some(b.byte3()) } else { None };
        Ok(DataIn {
            fin: f & 0x80 != 0,
            status,
            residual: Residual::from_bits(f, b.word(field::W44))?,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.word(field::W20),
            seq: parse_seq(b),
            data_sn: b.word(field::W36),
            buffer_offset: b.word(field::W40),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::DataIn, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        let mut f = if self.fin || self.status.is_some() {
            0x80
        } else {
            0
        };
        if let Some(st) = self.status {
            f |= 0x01 | self.residual.flags();
            b.set_byte3(st);
            b.set_word(field::W44, self.residual.count());
        }
        b.set_flags(f);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.ttt);
        let mut seq = self.seq;
        if self.status.is_none() {
            seq.stat_sn = 0;
        }
        emit_seq(&mut b, &seq);
        b.set_word(field::W36, self.data_sn);
        b.set_word(field::W40, self.buffer_offset);
        h
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub seq: SeqNums,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

impl R2t {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::R2t)?;
        Ok(R2t {
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.word(field::W20),
            seq: parse_seq(b),
            r2t_sn: b.word(field::W36),
            buffer_offset: b.word(field::W40),
            desired_len: b.word(field::W44),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::R2t, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.ttt);
        emit_seq(&mut b, &self.seq);
        b.set_word(field::W36, self.r2t_sn);
        b.set_word(field::W40, self.buffer_offset);
        b.set_word(field::W44, self.desired_len);
        h
    }
}

// ---------------------------------------------------------------------------
// NOP

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl NopOut {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::NopOut)?;
        Ok(NopOut {
            immediate: b.immediate(),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.word(field::W20),
            cmd_sn: b.word(field::W24),
            exp_stat_sn: b.word(field::W28),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::NopOut, self.immediate);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.ttt);
        b.set_word(field::W24, self.cmd_sn);
        b.set_word(field::W28, self.exp_stat_sn);
        h
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub seq: SeqNums,
}

impl NopIn {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::NopIn)?;
        Ok(NopIn {
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.word(field::W20),
            seq: parse_seq(b),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::NopIn, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80);
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.ttt);
        emit_seq(&mut b, &self.seq);
        h
    }
}

// ---------------------------------------------------------------------------
// Task management

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: u64,
    pub itt: u32,
    pub referenced_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

impl TaskMgmtRequest {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::TaskMgmtRequest)?;
        Ok(TaskMgmtRequest {
            immediate: b.immediate(),
            function: TmfFunction::from(b.flags() & 0x7f),
            lun: b.lun(),
            itt: b.itt(),
            referenced_tag: b.word(field::W20),
            cmd_sn: b.word(field::W24),
            exp_stat_sn: b.word(field::W28),
            ref_cmd_sn: b.word(field::W32),
            exp_data_sn: b.word(field::W36),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::TaskMgmtRequest, self.immediate);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80 | (u8::from(self.function) & 0x7f));
        b.set_lun(self.lun);
        b.set_itt(self.itt);
        b.set_word(field::W20, self.referenced_tag);
        b.set_word(field::W24, self.cmd_sn);
        b.set_word(field::W28, self.exp_stat_sn);
        b.set_word(field::W32, self.ref_cmd_sn);
        b.set_word(field::W36, self.exp_data_sn);
        h
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtResponseRepr {
    pub response: TmfResponse,
    pub itt: u32,
    pub seq: SeqNums,
}

impl TaskMgmtResponseRepr {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::TaskMgmtResponse)?;
        Ok(TaskMgmtResponseRepr {
            response: TmfResponse::from(b.byte2()),
            itt: b.itt(),
            seq: parse_seq(b),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::TaskMgmtResponse, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80);
        b.set_byte2(self.response.into());
        b.set_itt(self.itt);
        emit_seq(&mut b, &self.seq);
        h
    }
}

// ---------------------------------------------------------------------------
// Logout

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    /// 0 close session, 1 close connection, 2 remove connection for recovery.
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::LogoutRequest)?;
        Ok(LogoutRequest {
            immediate: b.immediate(),
            reason: b.flags() & 0x7f,
            itt: b.itt(),
            cid: b.cid(),
            cmd_sn: b.word(field::W24),
            exp_stat_sn: b.word(field::W28),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::LogoutRequest, self.immediate);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80 | (self.reason & 0x7f));
        b.set_itt(self.itt);
        b.set_cid(self.cid);
        b.set_word(field::W24, self.cmd_sn);
        b.set_word(field::W28, self.exp_stat_sn);
        h
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutResponse {
    /// 0 closed successfully, 1 CID not found, 2 recovery not supported.
    pub response: u8,
    pub itt: u32,
    pub seq: SeqNums,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::LogoutResponse)?;
        Ok(LogoutResponse {
            response: b.byte2(),
            itt: b.itt(),
            seq: parse_seq(b),
            time2wait: b.time2wait(),
            time2retain: b.time2retain(),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::LogoutResponse, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80);
        b.set_byte2(self.response);
        b.set_itt(self.itt);
        emit_seq(&mut b, &self.seq);
        b.set_time2(self.time2wait, self.time2retain);
        h
    }
}

// ---------------------------------------------------------------------------
// Reject / Async

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub seq: SeqNums,
    pub data_sn: u32,
}

impl Reject {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::Reject)?;
        Ok(Reject {
            reason: RejectReason::from(b.byte2()),
            seq: parse_seq(b),
            data_sn: b.word(field::W36),
        })
    }

    /// The data segment of a Reject is the rejected PDU's header.
    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::Reject, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80);
        b.set_byte2(self.reason.into());
        b.set_itt(RESERVED_TAG);
        emit_seq(&mut b, &self.seq);
        b.set_word(field::W36, self.data_sn);
        h
    }
}

/// Asynchronous message; only the "target requests logout" event is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: u64,
    pub seq: SeqNums,
    pub event: u8,
    pub parameter3: u16,
}

impl AsyncMessage {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        expect(b, Opcode::AsyncMessage)?;
        Ok(AsyncMessage {
            lun: b.lun(),
            seq: parse_seq(b),
            event: b.buffer[36],
            parameter3: be16(&b.buffer[40..42]),
        })
    }

    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut h = header(Opcode::AsyncMessage, false);
        let mut b = Bhs::new_unchecked(&mut h[..]);
        b.set_flags(0x80);
        b.set_lun(self.lun);
        b.set_itt(RESERVED_TAG);
        emit_seq(&mut b, &self.seq);
        h[36] = self.event;
        put_be16(&mut h[40..42], self.parameter3);
        h
    }
}

/// Any PDU an initiator may send, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiatorRepr {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmt(TaskMgmtRequest),
    Login(LoginRequest),
    Text(TextRequest),
    DataOut(DataOut),
    Logout(LogoutRequest),
    /// SNACK and anything unknown: recognised but unsupported at ERL 0.
    Unsupported(Opcode),
}

impl InitiatorRepr {
    pub fn parse(b: &Bhs<&[u8]>) -> Result<Self> {
        Ok(match b.opcode() {
            Opcode::NopOut => InitiatorRepr::NopOut(NopOut::parse(b)?),
            Opcode::ScsiCommand => InitiatorRepr::ScsiCommand(ScsiCommand::parse(b)?),
            Opcode::TaskMgmtRequest => InitiatorRepr::TaskMgmt(TaskMgmtRequest::parse(b)?),
            Opcode::LoginRequest => InitiatorRepr::Login(LoginRequest::parse(b)?),
            Opcode::TextRequest => InitiatorRepr::Text(TextRequest::parse(b)?),
            Opcode::DataOut => InitiatorRepr::DataOut(DataOut::parse(b)?),
            Opcode::LogoutRequest => InitiatorRepr::Logout(LogoutRequest::parse(b)?),
            other => InitiatorRepr::Unsupported(other),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    /// A login request as iPXE sends it first: CSG=0 NSG=1 T=1, ISID with
    /// the iPXE OUI-format qualifier, CmdSN 0, ITT 0, 0x1d3 bytes of keys.
    static IPXE_LOGIN: [u8; 48] = [
        0x43, 0x81, 0x00, 0x00, 0x00, 0x00, 0x01, 0xd3, // op, flags, vers, ahs, dsl
        0x40, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x00, // isid, tsih
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // itt, cid
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // cmdsn, expstatsn
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    ];

    fn ipxe_login_repr() -> LoginRequest {
        LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_min: 0,
            isid: [0x40, 0, 0, 0, 0x12, 0x34],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
        }
    }

    #[test]
    fn login_deconstruct() {
        let b = Bhs::new_checked(&IPXE_LOGIN[..]).unwrap();
        assert_eq!(b.opcode(), Opcode::LoginRequest);
        assert!(b.immediate());
        assert!(b.final_bit());
        assert_eq!(b.data_segment_len(), 0x1d3);
        assert_eq!(b.total_ahs_len(), 0);
        assert_eq!(b.isid(), [0x40, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(b.tsih(), 0);
    }

    #[test]
    fn login_construct() {
        let mut buf = [0xa5u8; 48];
        let mut b = Bhs::new_unchecked(&mut buf[..]);
        b.set_opcode(Opcode::LoginRequest, true);
        b.set_flags(0x81);
        b.set_byte2(0);
        b.set_byte3(0);
        b.set_total_ahs_len(0);
        b.set_data_segment_len(0x1d3);
        b.set_isid([0x40, 0, 0, 0, 0x12, 0x34]);
        b.set_tsih(0);
        b.set_itt(0);
        b.set_cid(0);
        b.buffer[22..24].copy_from_slice(&[0, 0]);
        for off in [24, 28, 32, 36, 40, 44] {
            b.set_word(off, 0);
        }
        assert_eq!(buf, IPXE_LOGIN);
    }

    #[test]
    fn login_parse_emit() {
        let b = Bhs::new_checked(&IPXE_LOGIN[..]).unwrap();
        assert_eq!(LoginRequest::parse(&b).unwrap(), ipxe_login_repr());
        let mut emitted = ipxe_login_repr().emit();
        Bhs::new_unchecked(&mut emitted[..]).set_data_segment_len(0x1d3);
        assert_eq!(emitted, IPXE_LOGIN);
    }

    /// A READ(10) of 8 blocks at LBA 0x10 as Windows sends it.
    static READ10_CMD: [u8; 48] = [
        0x01, 0xc1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // lun 0
        0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x10, 0x00, // itt 42, edtl 4096
        0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x05, // cmdsn 7, expstatsn 5
        0x28, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // cdb
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn scsi_command_roundtrip() {
        let b = Bhs::new_checked(&READ10_CMD[..]).unwrap();
        let c = ScsiCommand::parse(&b).unwrap();
        assert!(c.fin && c.read && !c.write && !c.immediate);
        assert_eq!(c.attr, 1);
        assert_eq!(c.itt, 42);
        assert_eq!(c.edtl, 4096);
        assert_eq!(c.cmd_sn, 7);
        assert_eq!(c.exp_stat_sn, 5);
        assert_eq!(c.cdb[0], 0x28);
        assert_eq!(c.emit(), READ10_CMD);
    }

    #[test]
    fn data_in_with_status() {
        let d = DataIn {
            fin: true,
            status: Some(0),
            residual: Residual::Underflow(512),
            lun: 0,
            itt: 9,
            ttt: RESERVED_TAG,
            seq: SeqNums {
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 131,
            },
            data_sn: 2,
            buffer_offset: 16384,
        };
        let h = d.emit();
        assert_eq!(h[0], 0x25);
        assert_eq!(h[1], 0x80 | 0x02 | 0x01);
        assert_eq!(&h[16..20], &[0, 0, 0, 9]);
        assert_eq!(&h[20..24], &[0xff; 4]);
        assert_eq!(&h[24..28], &[0, 0, 0, 3]);
        assert_eq!(&h[36..40], &[0, 0, 0, 2]);
        assert_eq!(&h[40..44], &[0, 0, 0x40, 0]);
        assert_eq!(&h[44..48], &[0, 0, 2, 0]);
        let p = DataIn::parse(&Bhs::new_unchecked(&h[..])).unwrap();
        assert_eq!(p, d);
    }

    #[test]
    fn data_in_without_status_hides_statsn() {
        let d = DataIn {
            fin: false,
            status: None,
            residual: Residual::None,
            lun: 0,
            itt: 1,
            ttt: RESERVED_TAG,
            seq: SeqNums {
                stat_sn: 77,
                exp_cmd_sn: 1,
                max_cmd_sn: 128,
            },
            data_sn: 0,
            buffer_offset: 0,
        };
        let h = d.emit();
        assert_eq!(h[1], 0);
        assert_eq!(&h[24..28], &[0, 0, 0, 0]);
    }

    #[test]
    fn scsi_response_roundtrip() {
        let r = ScsiResponse {
            response: 0,
            status: 2,
            residual: Residual::Overflow(512),
            itt: 0x1234,
            seq: SeqNums {
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 129,
            },
            exp_data_sn: 0,
        };
        let h = r.emit();
        assert_eq!(h[0], 0x21);
        assert_eq!(h[1], 0x84);
        assert_eq!(h[3], 2);
        assert_eq!(&h[44..48], &[0, 0, 2, 0]);
        assert_eq!(ScsiResponse::parse(&Bhs::new_unchecked(&h[..])).unwrap(), r);
    }

    #[test]
    fn r2t_and_dataout_roundtrip() {
        let r = R2t {
            lun: 0,
            itt: 5,
            ttt: 0x10,
            seq: SeqNums {
                stat_sn: 9,
                exp_cmd_sn: 10,
                max_cmd_sn: 137,
            },
            r2t_sn: 1,
            buffer_offset: 1 << 20,
            desired_len: 65536,
        };
        let h = r.emit();
        assert_eq!(h[0], 0x31);
        assert_eq!(R2t::parse(&Bhs::new_unchecked(&h[..])).unwrap(), r);
        let d = DataOut {
            fin: true,
            lun: 0,
            itt: 5,
            ttt: 0x10,
            exp_stat_sn: 10,
            data_sn: 3,
            buffer_offset: 1536,
        };
        let h = d.emit();
        assert_eq!(h[..2], [0x05, 0x80]);
        assert_eq!(DataOut::parse(&Bhs::new_unchecked(&h[..])).unwrap(), d);
    }

    #[test]
    fn other_roundtrips() {
        let seq = SeqNums {
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 3,
        };
        let t = TaskMgmtRequest {
            immediate: true,
            function: TmfFunction::AbortTask,
            lun: 0,
            itt: 7,
            referenced_tag: 6,
            cmd_sn: 4,
            exp_stat_sn: 5,
            ref_cmd_sn: 3,
            exp_data_sn: 0,
        };
        assert_eq!(
            TaskMgmtRequest::parse(&Bhs::new_unchecked(&t.emit()[..])).unwrap(),
            t
        );
        let tr = TaskMgmtResponseRepr {
            response: TmfResponse::NotSupported,
            itt: 7,
            seq,
        };
        assert_eq!(
            TaskMgmtResponseRepr::parse(&Bhs::new_unchecked(&tr.emit()[..])).unwrap(),
            tr
        );
        let l = LogoutResponse {
            response: 0,
            itt: 1,
            seq,
            time2wait: 2,
            time2retain: 0,
        };
        let h = l.emit();
        assert_eq!(&h[40..44], &[0, 2, 0, 0]);
        assert_eq!(
            LogoutResponse::parse(&Bhs::new_unchecked(&h[..])).unwrap(),
            l
        );
        let n = NopIn {
            lun: 0,
            itt: 1,
            ttt: RESERVED_TAG,
            seq,
        };
        assert_eq!(NopIn::parse(&Bhs::new_unchecked(&n.emit()[..])).unwrap(), n);
        let rj = Reject {
            reason: RejectReason::ProtocolError,
            seq,
            data_sn: 0,
        };
        let h = rj.emit();
        assert_eq!(h[..3], [0x3f, 0x80, 0x04]);
        assert_eq!(Reject::parse(&Bhs::new_unchecked(&h[..])).unwrap(), rj);
        let tx = TextResponse {
            fin: true,
            cont: false,
            lun: 0,
            itt: 3,
            ttt: RESERVED_TAG,
            seq,
        };
        assert_eq!(
            TextResponse::parse(&Bhs::new_unchecked(&tx.emit()[..])).unwrap(),
            tx
        );
    }

    #[test]
    fn unknown_opcode_is_not_an_error() {
        let mut h = [0u8; 48];
        h[0] = 0x1c;
        let b = Bhs::new_checked(&h[..]).unwrap();
        assert_eq!(b.opcode(), Opcode::Unknown(0x1c));
        assert_eq!(
            InitiatorRepr::parse(&b).unwrap(),
            InitiatorRepr::Unsupported(Opcode::Unknown(0x1c))
        );
    }

    #[test]
    fn short_buffer_rejected() {
        assert!(Bhs::new_checked(&[0u8; 47][..]).is_err());
    }

    #[test]
    fn residual_between() {
        assert_eq!(Residual::between(512, 512), Residual::None);
        assert_eq!(Residual::between(10000, 512), Residual::Underflow(9488));
        assert_eq!(Residual::between(200, 512), Residual::Overflow(312));
    }
}
