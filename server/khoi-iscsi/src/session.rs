//! The full-feature phase of one connection (RFC 7143 §4–§11), sans-I/O.
//!
//! [`Session::on_pdu`] takes a framed PDU and returns [`Action`]s: PDUs to
//! send (with a [`Stamp`] saying how the writer fills StatSN, ExpCmdSN and
//! MaxCmdSN at send time, so responses finished out of order still carry
//! ordered StatSNs), block jobs to run, "drain" barriers for task management
//! and logout, and close. Job results come back through [`reply`], which is
//! a pure function so I/O tasks can answer without the session.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use khoi_block::{BlockError, ReadSegment};

use crate::login::{LoginOutcome, SessionKind};
use crate::pdu::{
    BHS_LEN, Bhs, DataIn, DataOut, InitiatorRepr, LogoutRequest, LogoutResponse, NopIn, Opcode,
    Pdu, R2t, RESERVED_TAG, Reject, RejectReason, Residual, ScsiCommand, ScsiResponse, SeqNums,
    TaskMgmtRequest, TaskMgmtResponseRepr, TextRequest, TextResponse, TmfFunction, TmfResponse,
};
use crate::resolver::TargetResolver;
use crate::scsi::{self, DataOutKind, Done, Job, JobOutput, LuInfo, Nexus, Plan, Sense};
use crate::text::{self, Params, TextLimits};

/// Write data one connection may hold while waiting for Data-Out.
pub const MAX_PENDING_WRITE_BYTES: u64 = 64 << 20;

/// How the writer fills the sequence-number words of an outgoing PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Carries status: StatSN is assigned and advanced.
    Status,
    /// Shows the next StatSN without advancing it (R2T).
    Peek,
    /// Data-In without status: StatSN stays zero.
    Window,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub pdu: Pdu,
    pub stamp: Stamp,
}

/// Writer-side sequence state.
#[derive(Debug, Clone, Copy)]
pub struct Stamper {
    pub stat_sn: u32,
    pub window: u32,
}

impl Stamper {
    /// Fill words 24..36 of `bhs` according to `stamp`.
    pub fn apply(&mut self, bhs: &mut [u8; 48], stamp: Stamp, exp_cmd_sn: u32) {
        let mut b = Bhs::new_unchecked(&mut bhs[..]);
        let stat = match stamp {
            Stamp::Status => {
                let s = self.stat_sn;
                self.stat_sn = self.stat_sn.wrapping_add(1);
                s
            }
            Stamp::Peek => self.stat_sn,
            Stamp::Window => 0,
        };
        b.set_word(24, stat);
        b.set_word(28, exp_cmd_sn);
        b.set_word(32, exp_cmd_sn.wrapping_add(self.window.saturating_sub(1)));
    }
}

/// How to turn a job's result into PDUs.
#[derive(Debug, Clone, Copy)]
pub struct ReplyShape {
    pub itt: u32,
    pub lun: u64,
    pub edtl: u32,
    /// Residual to report with the status (reads report it against the
    /// SCSI length, writes against what was transferred).
    pub residual: Residual,
    pub max_pdu: usize,
    pub max_burst: usize,
}

#[derive(Debug)]
pub struct Exec {
    pub itt: u32,
    pub job: Job,
    pub shape: ReplyShape,
}

#[derive(Debug)]
pub enum Action {
    Send(Out),
    Exec(Exec),
    /// Wait until every Exec issued so far has been answered.
    Drain,
    /// Close the connection after what was sent before.
    Close(String),
    /// Abort the tasks of every other session of this LU and give them
    /// this unit attention; the TMF response queued after it waits for them.
    AbortOthers(Option<Sense>),
}

/// One Data-In PDU of a reply: its header, complete (DataSegmentLength
/// included) but for the sequence numbers the writer stamps into every PDU,
/// and the range of the command's data it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataInPdu {
    pub bhs: [u8; BHS_LEN],
    pub stamp: Stamp,
    /// Where the payload starts in the command's data (the BufferOffset).
    pub offset: u64,
    pub len: usize,
}

impl DataInPdu {
    /// The PDU with its payload in memory; `data` is the `len` bytes at
    /// `offset`.
    pub fn with_data(self, data: Bytes) -> Out {
        debug_assert_eq!(data.len(), self.len);
        Out {
            pdu: Pdu {
                bhs: self.bhs,
                ahs: Bytes::new(),
                data,
            },
            stamp: self.stamp,
        }
    }
}

/// Data-In PDUs plus where their data is, for a read served from
/// [`ReadSegment`]s (possibly straight from a file): the segments travel
/// as the device planned them, and the writer cuts each PDU's payload out
/// of them.
#[derive(Debug)]
pub struct ReadReply {
    pub pdus: Vec<DataInPdu>,
    pub segments: Vec<ReadSegment>,
    pub response: Option<Out>,
}

#[derive(Debug)]
pub enum Reply {
    Pdus(Vec<Out>),
    Read(ReadReply),
    /// The device is gone: close the connection.
    Close(String),
    /// The job failed with a condition worth an event (overlay full).
    NoSpace(Vec<Out>, String),
}

#[derive(Debug)]
struct R2tState {
    ttt: u32,
    offset: u64,
    len: u64,
    received: u64,
    next_data_sn: u32,
}

#[derive(Debug)]
struct WriteTask {
    lun: u64,
    kind: DataOutKind,
    offset: u64,
    blocks: u64,
    need: u64,
    buf: Vec<u8>,
    shape: ReplyShape,
    unsol_open: bool,
    unsol_next: u64,
    unsol_end: u64,
    unsol_data_sn: u32,
    r2ts: Vec<R2tState>,
    next_solicit: u64,
    r2t_sn: u32,
}

impl WriteTask {
    fn store(&mut self, offset: u64, data: &[u8]) {
        if offset >= self.need {
            return;
        }
        // offset < need ≤ buf.len(), so both fit in usize.
        let end = (offset + data.len() as u64).min(self.need);
        let s = usize::try_from(offset).unwrap_or(self.buf.len());
        let e = usize::try_from(end)
            .unwrap_or(self.buf.len())
            .min(self.buf.len());
        if s < e {
            self.buf[s..e].copy_from_slice(&data[..e - s]);
        }
    }

    fn complete(&self) -> bool {
        !self.unsol_open && self.r2ts.is_empty() && self.next_solicit >= self.need
    }
}

pub struct Session {
    resolver: Arc<dyn TargetResolver>,
    pub params: Params,
    pub exp_cmd_sn: u32,
    window: u32,
    initiator: String,
    kind: SessionKind,
    portal: String,
    tpgt: u16,
    lu: Option<LuInfo>,
    nexus: Nexus,
    tasks: HashMap<u32, WriteTask>,
    in_flight: HashSet<u32>,
    next_ttt: u32,
    text_rest: Option<(u32, Bytes)>,
    text_partial: Vec<u8>,
    cid: u16,
    /// TTT of our unanswered NOP-In ping.
    ping_out: Option<u32>,
    /// The initiator has answered a ping: it runs a full stack that will
    /// answer the next ones too (iPXE never does).
    answers_pings: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("initiator", &self.initiator)
            .field("kind", &self.kind)
            .field("exp_cmd_sn", &self.exp_cmd_sn)
            .finish_non_exhaustive()
    }
}

/// Terminate a write whose Data-Out broke sequence (DataSN, offset, TTT).
/// The task fails with DATA PHASE ERROR but the connection stays up, so one
/// bad PDU doesn't cost the initiator its other commands.
fn fail_task(shape: &ReplyShape) -> Vec<Action> {
    done_pdus(
        shape,
        Done::check(Sense::new(0x0b, 0x4b, 0x00)),
        Some(Residual::None),
    )
    .into_iter()
    .map(Action::Send)
    .collect()
}

impl Session {
    pub fn new(
        resolver: Arc<dyn TargetResolver>,
        login: &LoginOutcome,
        lu: Option<LuInfo>,
        portal: String,
        tpgt: u16,
        window: u32,
        unit_attention: bool,
    ) -> Session {
        Session {
            resolver,
            params: login.params,
            exp_cmd_sn: login.exp_cmd_sn,
            window: window.max(1),
            initiator: login.initiator.clone(),
            kind: login.kind.clone(),
            portal,
            tpgt,
            lu,
            nexus: Nexus {
                unit_attention: unit_attention.then_some(Sense::POWER_ON),
            },
            tasks: HashMap::new(),
            in_flight: HashSet::new(),
            next_ttt: 1,
            text_rest: None,
            text_partial: Vec::new(),
            cid: login.cid,
            ping_out: None,
            answers_pings: false,
        }
    }

    /// A NOP-In ping (RFC 7143 §11.19: ITT FFFFFFFFh, a TTT the initiator
    /// echoes in its NOP-Out). StatSN is shown, not advanced.
    pub fn ping(&mut self) -> Out {
        let ttt = self.alloc_ttt();
        self.ping_out = Some(ttt);
        let h = NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt,
            seq: SeqNums::default(),
        }
        .emit();
        Out {
            pdu: Pdu::new(h, Bytes::new()),
            stamp: Stamp::Peek,
        }
    }

    /// A ping is out and unanswered.
    pub fn ping_pending(&self) -> bool {
        self.ping_out.is_some()
    }

    pub fn answers_pings(&self) -> bool {
        self.answers_pings
    }

    /// Another session of the LU reset it or aborted its task set: every
    /// task of this one ends without status (SAM-5 5.6, TAS=0). Returns
    /// true when jobs may still be running (drain them before acking).
    pub fn abort_all(&mut self, ua: Option<Sense>) -> bool {
        self.tasks.clear();
        if ua.is_some() {
            self.nexus.unit_attention = ua;
        }
        !self.in_flight.is_empty()
    }

    /// The transport reports that an Exec's reply has been queued.
    pub fn exec_done(&mut self, itt: u32) {
        self.in_flight.remove(&itt);
    }

    pub fn outstanding_writes(&self) -> usize {
        self.tasks.len()
    }

    fn shape(&self, itt: u32, lun: u64, edtl: u32, residual: Residual) -> ReplyShape {
        ReplyShape {
            itt,
            lun,
            edtl,
            residual,
            max_pdu: self.params.initiator_mrdsl.max(512) as usize,
            max_burst: self.params.max_burst_length.max(512) as usize,
        }
    }

    /// CmdSN check for a non-immediate command: in window → accept and
    /// advance; outside → drop silently (RFC 7143 §4.2.2.1).
    fn accept_cmd_sn(&mut self, cmd_sn: u32, immediate: bool) -> bool {
        if immediate {
            return true;
        }
        if cmd_sn.wrapping_sub(self.exp_cmd_sn) >= self.window {
            return false;
        }
        // A gap can't happen on one TCP connection; if an initiator skips
        // numbers, move past them rather than stall the session.
        self.exp_cmd_sn = cmd_sn.wrapping_add(1);
        true
    }

    fn reject(&self, bhs: &[u8; 48], reason: RejectReason) -> Action {
        let r = Reject {
            reason,
            seq: SeqNums::default(),
            data_sn: 0,
        };
        Action::Send(Out {
            pdu: Pdu::new(r.emit(), Bytes::copy_from_slice(bhs)),
            // Like LIO, a Reject consumes a StatSN, so initiators that
            // account for it as a response stay in step.
            stamp: Stamp::Status,
        })
    }

    fn protocol_error(&self, bhs: &[u8; 48], why: &str) -> Vec<Action> {
        vec![
            self.reject(bhs, RejectReason::ProtocolError),
            Action::Close(why.to_owned()),
        ]
    }

    pub fn on_pdu(&mut self, pdu: &Pdu) -> Vec<Action> {
        let view = pdu.view();
        let repr = match InitiatorRepr::parse(&view) {
            Ok(r) => r,
            Err(_) => return vec![self.reject(&pdu.bhs, RejectReason::InvalidPduField)],
        };
        match repr {
            InitiatorRepr::NopOut(n) => {
                if n.itt == RESERVED_TAG && n.ttt != RESERVED_TAG && self.ping_out == Some(n.ttt) {
                    self.ping_out = None;
                    self.answers_pings = true;
                }
                if !self.accept_cmd_sn(n.cmd_sn, n.immediate) || n.itt == RESERVED_TAG {
                    // ITT FFFFFFFFh answers our ping or is a one-way
                    // keepalive: nothing to say.
                    return Vec::new();
                }
                let mut data = pdu.data.clone();
                data.truncate(self.params.initiator_mrdsl as usize);
                let h = NopIn {
                    lun: n.lun,
                    itt: n.itt,
                    ttt: RESERVED_TAG,
                    seq: SeqNums::default(),
                }
                .emit();
                vec![Action::Send(Out {
                    pdu: Pdu::new(h, data),
                    stamp: Stamp::Status,
                })]
            }
            InitiatorRepr::ScsiCommand(c) => self.on_command(&c, pdu),
            InitiatorRepr::DataOut(d) => self.on_data_out(&d, pdu),
            InitiatorRepr::TaskMgmt(t) => self.on_tmf(&t),
            InitiatorRepr::Text(t) => self.on_text(&t, pdu),
            InitiatorRepr::Logout(l) => self.on_logout(&l),
            InitiatorRepr::Login(_) => {
                self.protocol_error(&pdu.bhs, "login PDU in full-feature phase")
            }
            InitiatorRepr::Unsupported(op) => {
                let reason = if op == Opcode::Snack {
                    RejectReason::ProtocolError
                } else {
                    RejectReason::CommandNotSupported
                };
                vec![self.reject(&pdu.bhs, reason)]
            }
        }
    }

    fn on_command(&mut self, c: &ScsiCommand, pdu: &Pdu) -> Vec<Action> {
        if !self.accept_cmd_sn(c.cmd_sn, c.immediate) {
            return Vec::new();
        }
        let Some(lu) = self.lu.as_ref() else {
            return vec![self.reject(&pdu.bhs, RejectReason::CommandNotSupported)];
        };
        // Only a write still waiting for data is provably open: an executing
        // command's response may already be on the wire, and initiators
        // reuse a tag as soon as they see it.
        if self.tasks.contains_key(&c.itt) {
            return vec![self.reject(&pdu.bhs, RejectReason::TaskInProgress)];
        }
        let mut cdb = c.cdb;
        // Extended CDB AHS (type 1) would carry bytes past 16; none of our
        // commands need them, so only the first 16 matter.
        let edtl = u64::from(c.edtl);
        let plan = scsi::plan(&cdb, c.lun, lu, &mut self.nexus);
        cdb.fill(0);
        match plan {
            Plan::Done(d) => {
                let shape = self.shape(c.itt, c.lun, c.edtl, Residual::None);
                done_pdus(&shape, d, None)
                    .into_iter()
                    .map(Action::Send)
                    .collect()
            }
            Plan::Read { offset, len } => {
                let residual = Residual::between(edtl, len);
                let send = len.min(edtl);
                let shape = self.shape(c.itt, c.lun, c.edtl, residual);
                if send == 0 {
                    return done_pdus(&shape, Done::good(), Some(residual))
                        .into_iter()
                        .map(Action::Send)
                        .collect();
                }
                self.in_flight.insert(c.itt);
                vec![Action::Exec(Exec {
                    itt: c.itt,
                    job: Job::Read { offset, len: send },
                    shape,
                })]
            }
            Plan::Flush => self.exec(
                c.itt,
                Job::Flush,
                self.shape(c.itt, c.lun, c.edtl, Residual::between(edtl, 0)),
            ),
            Plan::Zero {
                offset,
                len,
                unmap,
                fua,
            } => self.exec(
                c.itt,
                Job::Zero {
                    offset,
                    len,
                    unmap,
                    fua,
                },
                self.shape(c.itt, c.lun, c.edtl, Residual::between(edtl, 0)),
            ),
            Plan::DataOut {
                kind,
                offset,
                len,
                blocks,
            } => {
                if matches!(kind, DataOutKind::WriteSame { .. }) && edtl != len {
                    // WRITE SAME carries exactly one block of data.
                    let shape = self.shape(c.itt, c.lun, c.edtl, Residual::None);
                    return done_pdus(
                        &shape,
                        Done::check(Sense::INVALID_FIELD_IN_CDB),
                        Some(Residual::between(edtl, len)),
                    )
                    .into_iter()
                    .map(Action::Send)
                    .collect();
                }
                let (len, residual) = if edtl < len {
                    match kind {
                        // FCP-4 option (a): write what the initiator sends
                        // (EDTL bytes) and report the overflow.
                        DataOutKind::Write { .. } => (edtl, Residual::between(edtl, len)),
                        // Parameter lists must arrive whole: option (b).
                        _ => {
                            let shape = self.shape(c.itt, c.lun, c.edtl, Residual::None);
                            let res = Residual::between(edtl, len);
                            return done_pdus(
                                &shape,
                                Done::check(Sense::INVALID_FIELD_IN_IU),
                                Some(res),
                            )
                            .into_iter()
                            .map(Action::Send)
                            .collect();
                        }
                    }
                } else {
                    (len, Residual::between(edtl, len))
                };
                let shape = self.shape(c.itt, c.lun, c.edtl, residual);
                if len == 0 {
                    return done_pdus(&shape, Done::good(), Some(residual))
                        .into_iter()
                        .map(Action::Send)
                        .collect();
                }
                let pending: u64 = self.tasks.values().map(|t| t.need).sum();
                if pending + len > MAX_PENDING_WRITE_BYTES {
                    // Bound the memory one connection can pin with writes
                    // waiting for data; initiators retry TASK SET FULL.
                    let d = Done {
                        status: scsi::TASK_SET_FULL,
                        sense: None,
                        data: Bytes::new(),
                    };
                    return done_pdus(&shape, d, Some(Residual::None))
                        .into_iter()
                        .map(Action::Send)
                        .collect();
                }
                let need_usize = usize::try_from(len).unwrap_or(usize::MAX);
                let imm = pdu.data.len() as u64;
                let unsol_end = if c.fin {
                    imm
                } else {
                    u64::from(self.params.first_burst_length).min(edtl).max(imm)
                };
                let mut t = WriteTask {
                    lun: c.lun,
                    kind,
                    offset,
                    blocks,
                    need: len,
                    buf: vec![0u8; need_usize],
                    shape,
                    unsol_open: !c.fin,
                    unsol_next: imm,
                    unsol_end,
                    unsol_data_sn: 0,
                    r2ts: Vec::new(),
                    next_solicit: unsol_end.min(len),
                    r2t_sn: 0,
                };
                t.store(0, &pdu.data);
                let mut out = Vec::new();
                self.solicit(c.itt, &mut t, &mut out);
                self.after_data(c.itt, t, out)
            }
        }
    }

    fn exec(&mut self, itt: u32, job: Job, shape: ReplyShape) -> Vec<Action> {
        self.in_flight.insert(itt);
        vec![Action::Exec(Exec { itt, job, shape })]
    }

    /// Issue R2Ts up to MaxOutstandingR2T, each at most MaxBurstLength.
    fn solicit(&mut self, itt: u32, t: &mut WriteTask, out: &mut Vec<Action>) {
        let burst = u64::from(self.params.max_burst_length.max(512));
        while t.next_solicit < t.need
            && t.r2ts.len() < self.params.max_outstanding_r2t.max(1) as usize
        {
            let len = (t.need - t.next_solicit).min(burst);
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1);
            if self.next_ttt == RESERVED_TAG {
                self.next_ttt = 1;
            }
            let h = R2t {
                lun: t.lun,
                itt,
                ttt,
                seq: SeqNums::default(),
                r2t_sn: t.r2t_sn,
                buffer_offset: u32::try_from(t.next_solicit).unwrap_or(u32::MAX),
                desired_len: u32::try_from(len).unwrap_or(u32::MAX),
            }
            .emit();
            out.push(Action::Send(Out {
                pdu: Pdu::new(h, Bytes::new()),
                stamp: Stamp::Peek,
            }));
            t.r2ts.push(R2tState {
                ttt,
                offset: t.next_solicit,
                len,
                received: 0,
                next_data_sn: 0,
            });
            t.r2t_sn = t.r2t_sn.wrapping_add(1);
            t.next_solicit += len;
        }
    }

    fn after_data(&mut self, itt: u32, t: WriteTask, mut out: Vec<Action>) -> Vec<Action> {
        if !t.complete() {
            self.tasks.insert(itt, t);
            return out;
        }
        let data = Bytes::from(t.buf);
        let Some(lu) = self.lu.as_ref() else {
            return out;
        };
        match scsi::with_data(t.kind, t.offset, t.blocks, data, lu) {
            Ok(job) => {
                self.in_flight.insert(itt);
                out.push(Action::Exec(Exec {
                    itt,
                    job,
                    shape: t.shape,
                }));
            }
            Err(done) => {
                out.extend(
                    done_pdus(&t.shape, done, Some(t.shape.residual))
                        .into_iter()
                        .map(Action::Send),
                );
            }
        }
        out
    }

    fn on_data_out(&mut self, d: &DataOut, pdu: &Pdu) -> Vec<Action> {
        // The LUN field is not checked: Windows fills it in wrongly.
        let Some(mut t) = self.tasks.remove(&d.itt) else {
            // Data for a task already answered (e.g. refused upfront) or
            // aborted: discard it.
            return Vec::new();
        };
        let off = u64::from(d.buffer_offset);
        let len = pdu.data.len() as u64;
        let mut out = Vec::new();
        if d.ttt == RESERVED_TAG {
            if !t.unsol_open
                || d.data_sn != t.unsol_data_sn
                || off != t.unsol_next
                || off + len > t.unsol_end.max(t.shape.edtl.into())
            {
                return fail_task(&t.shape);
            }
            t.store(off, &pdu.data);
            t.unsol_next = off + len;
            t.unsol_data_sn = t.unsol_data_sn.wrapping_add(1);
            if d.fin {
                t.unsol_open = false;
                let want = t.unsol_end.min(t.need);
                if t.unsol_next < want {
                    // The initiator sent less unsolicited data than the first
                    // burst; solicit the gap.
                    t.next_solicit = t.unsol_next;
                    t.unsol_end = t.unsol_next;
                    t.r2ts.clear();
                    self.solicit(d.itt, &mut t, &mut out);
                }
            }
        } else {
            let Some(i) = t.r2ts.iter().position(|r| r.ttt == d.ttt) else {
                return fail_task(&t.shape);
            };
            let r = &mut t.r2ts[i];
            if d.data_sn != r.next_data_sn
                || off != r.offset + r.received
                || r.received + len > r.len
            {
                return fail_task(&t.shape);
            }
            r.received += len;
            r.next_data_sn = r.next_data_sn.wrapping_add(1);
            let finished = r.received == r.len;
            if d.fin && !finished {
                return fail_task(&t.shape);
            }
            t.store(off, &pdu.data);
            if finished {
                t.r2ts.remove(i);
                self.solicit(d.itt, &mut t, &mut out);
            }
        }
        self.after_data(d.itt, t, out)
    }

    fn on_tmf(&mut self, t: &TaskMgmtRequest) -> Vec<Action> {
        if !self.accept_cmd_sn(t.cmd_sn, t.immediate) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let response = match t.function {
            TmfFunction::AbortTask => {
                if self.tasks.remove(&t.referenced_tag).is_some() {
                    TmfResponse::Complete
                } else {
                    // Executing or done: its status goes (or went) out, so
                    // the abort did nothing. On one TCP connection a command
                    // can't be lost, so RFC 7143's "not yet received" case
                    // doesn't arise; libiscsi expects this answer.
                    if self.in_flight.contains(&t.referenced_tag) {
                        out.push(Action::Drain);
                    }
                    TmfResponse::TaskDoesNotExist
                }
            }
            TmfFunction::AbortTaskSet
            | TmfFunction::ClearTaskSet
            | TmfFunction::LogicalUnitReset
            | TmfFunction::TargetWarmReset => {
                if t.lun != 0
                    && matches!(
                        t.function,
                        TmfFunction::LogicalUnitReset
                            | TmfFunction::AbortTaskSet
                            | TmfFunction::ClearTaskSet
                    )
                {
                    TmfResponse::LunDoesNotExist
                } else {
                    self.tasks.clear();
                    out.push(Action::Drain);
                    let reset = matches!(
                        t.function,
                        TmfFunction::LogicalUnitReset | TmfFunction::TargetWarmReset
                    );
                    if reset {
                        self.nexus.unit_attention = Some(Sense::new(0x06, 0x29, 0x03));
                    }
                    // The LU is shared by every session of the seat: a reset
                    // (or an aborted task set) reaches the other sessions'
                    // tasks too, which learn of it by unit attention: 29/03
                    // BUS DEVICE RESET FUNCTION OCCURRED after a reset, 2F/00
                    // COMMANDS CLEARED BY ANOTHER INITIATOR otherwise.
                    out.push(Action::AbortOthers(Some(if reset {
                        Sense::new(0x06, 0x29, 0x03)
                    } else {
                        Sense::new(0x06, 0x2f, 0x00)
                    })));
                    TmfResponse::Complete
                }
            }
            TmfFunction::TaskReassign => TmfResponse::ReassignNotSupported,
            TmfFunction::ClearAca | TmfFunction::TargetColdReset => TmfResponse::NotSupported,
            TmfFunction::Unknown(_) => TmfResponse::Rejected,
        };
        let h = TaskMgmtResponseRepr {
            response,
            itt: t.itt,
            seq: SeqNums::default(),
        }
        .emit();
        out.push(Action::Send(Out {
            pdu: Pdu::new(h, Bytes::new()),
            stamp: Stamp::Status,
        }));
        out
    }

    fn on_logout(&mut self, l: &LogoutRequest) -> Vec<Action> {
        if !self.accept_cmd_sn(l.cmd_sn, l.immediate) {
            return Vec::new();
        }
        let response = match l.reason {
            0 => 0,
            1 if l.cid == self.cid => 0,
            1 => 1,
            _ => 2,
        };
        let h = LogoutResponse {
            response,
            itt: l.itt,
            seq: SeqNums::default(),
            time2wait: self.params.default_time2wait,
            time2retain: self.params.default_time2retain,
        }
        .emit();
        let mut out = vec![
            Action::Drain,
            Action::Send(Out {
                pdu: Pdu::new(h, Bytes::new()),
                stamp: Stamp::Status,
            }),
        ];
        if response == 0 {
            self.tasks.clear();
            out.push(Action::Close("logout".to_owned()));
        }
        out
    }

    /// Targets this session may name in SendTargets.
    fn send_targets(&self, value: &str) -> Vec<String> {
        match &self.kind {
            SessionKind::Normal { target } => {
                if value.is_empty() || value == "All" || value == target {
                    vec![target.clone()]
                } else {
                    Vec::new()
                }
            }
            SessionKind::Discovery { chap_targets } => {
                let mut v: Vec<String> = self
                    .resolver
                    .targets()
                    .into_iter()
                    .filter(|t| value.is_empty() || value == "All" || value == t)
                    .filter(|t| {
                        self.resolver.auth(t).is_some_and(|a| {
                            (!a.requires_chap() || chap_targets.contains(t))
                                && a.allowed_initiator
                                    .as_ref()
                                    .is_none_or(|i| *i == self.initiator)
                        })
                    })
                    .collect();
                v.sort();
                v
            }
        }
    }

    fn on_text(&mut self, t: &TextRequest, pdu: &Pdu) -> Vec<Action> {
        if !self.accept_cmd_sn(t.cmd_sn, t.immediate) {
            return Vec::new();
        }
        let max = self.params.initiator_mrdsl.max(512) as usize;
        let body: Bytes = if t.ttt != RESERVED_TAG {
            match self.text_rest.take() {
                Some((ttt, rest)) if ttt == t.ttt => rest,
                _ => return vec![self.reject(&pdu.bhs, RejectReason::ProtocolError)],
            }
        } else {
            self.text_rest = None;
            if self.text_partial.len() + pdu.data.len() > 64 * 1024 {
                self.text_partial.clear();
                return vec![self.reject(&pdu.bhs, RejectReason::ProtocolError)];
            }
            self.text_partial.extend_from_slice(&pdu.data);
            if t.cont {
                let h = TextResponse {
                    fin: false,
                    cont: false,
                    lun: t.lun,
                    itt: t.itt,
                    ttt: self.alloc_ttt(),
                    seq: SeqNums::default(),
                }
                .emit();
                return vec![Action::Send(Out {
                    pdu: Pdu::new(h, Bytes::new()),
                    stamp: Stamp::Status,
                })];
            }
            let req = std::mem::take(&mut self.text_partial);
            let pairs = match text::parse(&req, TextLimits::default()) {
                Ok(p) => p,
                Err(_) => return vec![self.reject(&pdu.bhs, RejectReason::ProtocolError)],
            };
            let mut reply: Vec<(String, String)> = Vec::new();
            for (k, v) in pairs {
                match k.as_str() {
                    "SendTargets" => {
                        for name in self.send_targets(&v) {
                            reply.push(("TargetName".into(), name));
                            reply.push((
                                "TargetAddress".into(),
                                format!("{},{}", self.portal, self.tpgt),
                            ));
                        }
                    }
                    "MaxRecvDataSegmentLength" => {
                        if let Ok(n) = v.parse::<u32>()
                            && (512..=16_777_215).contains(&n)
                        {
                            self.params.initiator_mrdsl = n;
                        }
                    }
                    _ => reply.push((k, "NotUnderstood".into())),
                }
            }
            Bytes::from(text::emit(&reply))
        };
        let (chunk, rest) = if body.len() > max {
            (body.slice(..max), Some(body.slice(max..)))
        } else {
            (body, None)
        };
        let ttt = match rest {
            Some(rest) => {
                let ttt = self.alloc_ttt();
                self.text_rest = Some((ttt, rest));
                ttt
            }
            None => RESERVED_TAG,
        };
        let h = TextResponse {
            fin: ttt == RESERVED_TAG,
            cont: ttt != RESERVED_TAG,
            lun: t.lun,
            itt: t.itt,
            ttt,
            seq: SeqNums::default(),
        }
        .emit();
        vec![Action::Send(Out {
            pdu: Pdu::new(h, chunk),
            stamp: Stamp::Status,
        })]
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }
}

/// Split `total` bytes of Data-In into PDUs of at most `max_pdu` bytes,
/// with the F bit at every MaxBurstLength boundary and at the end, and the
/// status folded into the last PDU when `status` is given. The one place a
/// Data-In header is built.
pub fn datain_pdus(
    shape: &ReplyShape,
    total: usize,
    status: Option<(u8, Residual)>,
) -> Vec<DataInPdu> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let mut data_sn = 0u32;
    let max_pdu = shape.max_pdu.max(512);
    let burst = shape.max_burst.max(max_pdu);
    while off < total {
        let burst_end = (off / burst + 1) * burst;
        let len = (total - off).min(max_pdu).min(burst_end - off);
        let last = off + len == total;
        let fin = last || off + len == burst_end;
        let st = if last { status } else { None };
        let mut bhs = DataIn {
            fin,
            status: st.map(|(s, _)| s),
            residual: st.map(|(_, r)| r).unwrap_or_default(),
            lun: shape.lun,
            itt: shape.itt,
            ttt: RESERVED_TAG,
            seq: SeqNums::default(),
            data_sn,
            buffer_offset: u32::try_from(off).unwrap_or(u32::MAX),
        }
        .emit();
        // The payload travels apart from the header (copied into a batch or
        // sent from a file), so the header states its length here.
        Bhs::new_unchecked(&mut bhs[..]).set_data_segment_len(len);
        let stamp = if st.is_some() {
            Stamp::Status
        } else {
            Stamp::Window
        };
        out.push(DataInPdu {
            bhs,
            stamp,
            offset: off as u64,
            len,
        });
        data_sn = data_sn.wrapping_add(1);
        off += len;
    }
    out
}

fn scsi_response(shape: &ReplyShape, status: u8, sense: Option<Sense>, residual: Residual) -> Out {
    let h = ScsiResponse {
        response: 0,
        status,
        residual,
        itt: shape.itt,
        seq: SeqNums::default(),
        exp_data_sn: 0,
    }
    .emit();
    let data = match sense {
        Some(s) => {
            let mut d = Vec::with_capacity(20);
            d.extend_from_slice(&18u16.to_be_bytes());
            d.extend_from_slice(&s.fixed());
            Bytes::from(d)
        }
        None => Bytes::new(),
    };
    Out {
        pdu: Pdu::new(h, data),
        stamp: Stamp::Status,
    }
}

/// PDUs for a finished command whose data (if any) is in memory.
pub fn done_pdus(shape: &ReplyShape, d: Done, residual: Option<Residual>) -> Vec<Out> {
    let edtl = u64::from(shape.edtl);
    if d.status != scsi::GOOD || d.data.is_empty() {
        let res = residual.unwrap_or(if d.status == scsi::GOOD {
            Residual::between(edtl, 0)
        } else {
            Residual::None
        });
        return vec![scsi_response(shape, d.status, d.sense, res)];
    }
    let res = residual.unwrap_or(Residual::between(edtl, d.data.len() as u64));
    let send = d.data.len().min(shape.edtl as usize);
    if send == 0 {
        return vec![scsi_response(shape, d.status, None, res)];
    }
    let collapse = res == Residual::None;
    let mut out: Vec<Out> = datain_pdus(shape, send, collapse.then_some((scsi::GOOD, res)))
        .into_iter()
        .map(|p| {
            let off = usize::try_from(p.offset).unwrap_or(0);
            let data = d.data.slice(off..off + p.len);
            p.with_data(data)
        })
        .collect();
    if !collapse {
        out.push(scsi_response(shape, scsi::GOOD, None, res));
    }
    out
}

/// Turn a job's result into what the writer sends.
pub fn reply(shape: &ReplyShape, result: Result<JobOutput, BlockError>) -> Reply {
    match result {
        Ok(JobOutput::Read(segments)) => {
            let total: u64 = segments.iter().map(ReadSegment::len).sum();
            let collapse = shape.residual == Residual::None;
            let pdus = datain_pdus(
                shape,
                usize::try_from(total).unwrap_or(0),
                collapse.then_some((scsi::GOOD, Residual::None)),
            );
            let response =
                (!collapse).then(|| scsi_response(shape, scsi::GOOD, None, shape.residual));
            Reply::Read(ReadReply {
                pdus,
                segments,
                response,
            })
        }
        Ok(JobOutput::Done(d)) => Reply::Pdus(done_pdus(shape, d, Some(shape.residual))),
        Err(BlockError::Gone) => Reply::Close("device is gone".to_owned()),
        Err(e @ BlockError::NoSpace(_)) => Reply::NoSpace(
            done_pdus(shape, scsi::block_error(&e), Some(shape.residual)),
            e.to_string(),
        ),
        Err(e) => Reply::Pdus(done_pdus(
            shape,
            scsi::block_error(&e),
            Some(shape.residual),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use crate::login::tests::resolver;
    use crate::pdu::{ScsiCommand, TaskMgmtRequest};
    use crate::resolver::LunIdentity;

    fn outcome(params: Params) -> LoginOutcome {
        LoginOutcome {
            initiator: "iqn.2010-04.org.ipxe:seat01".into(),
            isid: [0; 6],
            tsih: 1,
            cid: 0,
            kind: SessionKind::Normal {
                target: "iqn.2025-01.vn.khoi:seat01".into(),
            },
            params,
            exp_cmd_sn: 10,
            stat_sn: 5,
        }
    }

    fn lu() -> LuInfo {
        LuInfo {
            blocks: 1 << 20,
            read_only: false,
            wce: true,
            thin: false,
            target: "iqn.2025-01.vn.khoi:seat01".into(),
            identity: LunIdentity {
                serial: "S".into(),
                naa: [0x60; 16],
            },
            max_transfer_blocks: 32768,
            opt_transfer_blocks: 2048,
        }
    }

    fn session(params: Params) -> Session {
        Session::new(
            resolver(),
            &outcome(params),
            Some(lu()),
            "127.0.0.1:3260".into(),
            1,
            128,
            false,
        )
    }

    fn cmd(itt: u32, cmd_sn: u32, cdb: &[u8], edtl: u32, write: bool, data: &'static [u8]) -> Pdu {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        let h = ScsiCommand {
            immediate: false,
            fin: true,
            read: !write,
            write,
            attr: 1,
            lun: 0,
            itt,
            edtl,
            cmd_sn,
            exp_stat_sn: 5,
            cdb: c,
        }
        .emit();
        Pdu::new(h, Bytes::from_static(data))
    }

    fn sends(actions: &[Action]) -> Vec<&Out> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn cmdsn_window() {
        let mut s = session(Params::default());
        // Too high (MaxCmdSN + 1) and too low are dropped silently.
        assert!(
            s.on_pdu(&cmd(1, 10 + 128, &[0x00], 0, false, b""))
                .is_empty()
        );
        assert!(s.on_pdu(&cmd(1, 9, &[0x00], 0, false, b"")).is_empty());
        let a = s.on_pdu(&cmd(1, 10, &[0x00], 0, false, b""));
        assert_eq!(sends(&a).len(), 1);
        assert_eq!(s.exp_cmd_sn, 11);
    }

    #[test]
    fn inquiry_segmented_to_ipxe_mrdsl_with_residual() {
        let mut p = Params::default();
        p.initiator_mrdsl = 512;
        let mut s = session(p);
        // VPD 83h with a 1000-byte EDTL: data shorter than EDTL → underflow,
        // so status goes in a separate SCSI Response.
        let a = s.on_pdu(&cmd(
            7,
            10,
            &[0x12, 1, 0x83, 0x03, 0xe8, 0],
            1000,
            false,
            b"",
        ));
        let o = sends(&a);
        let last = o.last().unwrap();
        assert_eq!(last.pdu.opcode(), Opcode::ScsiResponse);
        let r = ScsiResponse::parse(&last.pdu.view()).unwrap();
        assert!(matches!(r.residual, Residual::Underflow(_)));
        let din = DataIn::parse(&o[0].pdu.view()).unwrap();
        assert!(din.status.is_none());
        assert!(o[..o.len() - 1].iter().all(|x| x.pdu.data.len() <= 512));
    }

    #[test]
    fn status_collapsed_when_exact() {
        let mut s = session(Params::default());
        let a = s.on_pdu(&cmd(
            7,
            10,
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            8,
            false,
            b"",
        ));
        let o = sends(&a);
        assert_eq!(o.len(), 1);
        let d = DataIn::parse(&o[0].pdu.view()).unwrap();
        assert_eq!(d.status, Some(0));
        assert!(d.fin);
        assert_eq!(o[0].stamp, Stamp::Status);
    }

    #[test]
    fn datain_bounded_by_burst() {
        let shape = ReplyShape {
            itt: 1,
            lun: 0,
            edtl: 20000,
            residual: Residual::None,
            max_pdu: 8192,
            max_burst: 16384,
        };
        let h = datain_pdus(&shape, 20000, Some((0, Residual::None)));
        let lens: Vec<usize> = h.iter().map(|p| p.len).collect();
        assert_eq!(lens, vec![8192, 8192, 3616]);
        let parsed: Vec<DataIn> = h
            .iter()
            .map(|p| DataIn::parse(&Bhs::new_unchecked(&p.bhs[..])).unwrap())
            .collect();
        let fins: Vec<bool> = parsed.iter().map(|d| d.fin).collect();
        assert_eq!(fins, vec![false, true, true]);
        let sns: Vec<u32> = parsed.iter().map(|d| d.data_sn).collect();
        assert_eq!(sns, vec![0, 1, 2]);
        // Each header is whole before the writer sees it: it states its
        // own length and offset, and only the last carries status.
        for (p, d) in h.iter().zip(&parsed) {
            let v = Bhs::new_unchecked(&p.bhs[..]);
            assert_eq!(v.data_segment_len(), p.len);
            assert_eq!(v.total_ahs_len(), 0);
            assert_eq!(u64::from(d.buffer_offset), p.offset);
        }
        let stamps: Vec<Stamp> = h.iter().map(|p| p.stamp).collect();
        assert_eq!(stamps, vec![Stamp::Window, Stamp::Window, Stamp::Status]);
        assert_eq!(parsed[2].status, Some(0));
    }

    fn data_out(itt: u32, ttt: u32, sn: u32, off: u32, fin: bool, data: &'static [u8]) -> Pdu {
        let h = DataOut {
            fin,
            lun: 0xdead, // wrong on purpose: never checked
            itt,
            ttt,
            exp_stat_sn: 6,
            data_sn: sn,
            buffer_offset: off,
        }
        .emit();
        Pdu::new(h, Bytes::from_static(data))
    }

    #[test]
    fn ipxe_write_via_r2t_in_512_byte_pdus() {
        // iPXE: InitialR2T=Yes, ImmediateData=No, MaxOutstandingR2T=1.
        let mut s = session(Params::default());
        let a = s.on_pdu(&cmd(
            3,
            10,
            &[0x2a, 0, 0, 0, 0, 8, 0, 0, 2, 0],
            1024,
            true,
            b"",
        ));
        let o = sends(&a);
        assert_eq!(o.len(), 1);
        let r = R2t::parse(&o[0].pdu.view()).unwrap();
        assert_eq!((r.buffer_offset, r.desired_len, r.r2t_sn), (0, 1024, 0));
        static A: [u8; 512] = [0xaa; 512];
        static B: [u8; 512] = [0xbb; 512];
        assert!(s.on_pdu(&data_out(3, r.ttt, 0, 0, false, &A)).is_empty());
        let a = s.on_pdu(&data_out(3, r.ttt, 1, 512, true, &B));
        match &a[..] {
            [
                Action::Exec(Exec {
                    job: Job::Write { offset, data, .. },
                    ..
                }),
            ] => {
                assert_eq!(*offset, 8 * 512);
                assert_eq!(&data[..512], &A[..]);
                assert_eq!(&data[512..], &B[..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_datasn_closes() {
        let mut s = session(Params::default());
        let a = s.on_pdu(&cmd(
            3,
            10,
            &[0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0],
            512,
            true,
            b"",
        ));
        let r = R2t::parse(&sends(&a)[0].pdu.view()).unwrap();
        static A: [u8; 512] = [0; 512];
        let a = s.on_pdu(&data_out(3, r.ttt, 27, 0, true, &A));
        let r = ScsiResponse::parse(&sends(&a)[0].pdu.view()).unwrap();
        assert_eq!(r.status, scsi::CHECK_CONDITION);
        assert_eq!(s.outstanding_writes(), 0);
    }

    #[test]
    fn immediate_and_unsolicited_then_r2t() {
        let mut p = Params::default();
        p.initial_r2t = false;
        p.immediate_data = true;
        p.first_burst_length = 1024;
        p.max_outstanding_r2t = 4;
        p.max_burst_length = 512;
        let mut s = session(p);
        static IMM: [u8; 512] = [1; 512];
        let mut c = cmd(4, 10, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 4, 0], 2048, true, &IMM);
        Bhs::new_unchecked(&mut c.bhs[..]).set_flags(0x20); // W, not F: unsolicited follows
        let a = s.on_pdu(&c);
        let r2ts: Vec<R2t> = sends(&a)
            .iter()
            .map(|o| R2t::parse(&o.pdu.view()).unwrap())
            .collect();
        assert_eq!(r2ts.len(), 2);
        assert_eq!((r2ts[0].buffer_offset, r2ts[1].buffer_offset), (1024, 1536));
        static U: [u8; 512] = [2; 512];
        assert!(
            s.on_pdu(&data_out(4, RESERVED_TAG, 0, 512, true, &U))
                .is_empty()
        );
        static X: [u8; 512] = [3; 512];
        static Y: [u8; 512] = [4; 512];
        assert!(
            s.on_pdu(&data_out(4, r2ts[0].ttt, 0, 1024, true, &X))
                .is_empty()
        );
        let a = s.on_pdu(&data_out(4, r2ts[1].ttt, 0, 1536, true, &Y));
        assert!(matches!(&a[..], [Action::Exec(_)]));
    }

    #[test]
    fn write_overflow_truncated_underflow_reported() {
        let mut s = session(Params::default());
        let w1 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        // EDTL 200 < one block: solicit (and later write) only 200 bytes.
        let a = s.on_pdu(&cmd(5, 10, &w1, 200, true, b""));
        let r = R2t::parse(&sends(&a)[0].pdu.view()).unwrap();
        assert_eq!(r.desired_len, 200);
        let a = s.on_pdu(&cmd(7, 11, &w1, 0, true, b""));
        let r = ScsiResponse::parse(&sends(&a)[0].pdu.view()).unwrap();
        assert_eq!(r.status, scsi::GOOD);
        assert_eq!(r.residual, Residual::Overflow(512));
        let a = s.on_pdu(&cmd(6, 12, &w1, 10000, true, b""));
        let r = R2t::parse(&sends(&a)[0].pdu.view()).unwrap();
        assert_eq!(r.desired_len, 512);
    }

    #[test]
    fn tmf_abort_pending_write_and_unknown() {
        let mut s = session(Params::default());
        s.on_pdu(&cmd(
            9,
            10,
            &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            512,
            true,
            b"",
        ));
        let tmf = |itt, f, r| {
            let h = TaskMgmtRequest {
                immediate: true,
                function: f,
                lun: 0,
                itt,
                referenced_tag: r,
                cmd_sn: 11,
                exp_stat_sn: 5,
                ref_cmd_sn: 10,
                exp_data_sn: 0,
            }
            .emit();
            Pdu::new(h, Bytes::new())
        };
        let a = s.on_pdu(&tmf(20, TmfFunction::AbortTask, 9));
        let r = TaskMgmtResponseRepr::parse(&sends(&a)[0].pdu.view()).unwrap();
        assert_eq!(r.response, TmfResponse::Complete);
        assert_eq!(s.outstanding_writes(), 0);
        let a = s.on_pdu(&tmf(21, TmfFunction::TargetColdReset, 0));
        let r = TaskMgmtResponseRepr::parse(&sends(&a)[0].pdu.view()).unwrap();
        assert_eq!(r.response, TmfResponse::NotSupported);
    }

    #[test]
    fn pending_write_memory_is_bounded() {
        let mut s = session(Params::default());
        // 16 MiB writes waiting for R2T data: the fifth exceeds 64 MiB.
        let w = [0x2a, 0, 0, 0, 0, 0, 0, 0x80, 0, 0];
        for i in 0..4 {
            let a = s.on_pdu(&cmd(100 + i, 10 + i, &w, 16 << 20, true, b""));
            assert_eq!(sends(&a)[0].pdu.opcode(), Opcode::R2t);
        }
        let a = s.on_pdu(&cmd(200, 14, &w, 16 << 20, true, b""));
        let r = ScsiResponse::parse(&sends(&a)[0].pdu.view()).unwrap();
        assert_eq!(r.status, scsi::TASK_SET_FULL);
    }

    fn text_req(itt: u32, cmd_sn: u32, body: &'static [u8]) -> Pdu {
        let h = TextRequest {
            immediate: false,
            fin: true,
            cont: false,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn: 5,
        }
        .emit();
        Pdu::new(h, Bytes::from_static(body))
    }

    #[test]
    fn send_targets_in_normal_session_names_own_target() {
        let mut s = session(Params::default());
        for (i, body) in [(0u32, &b"SendTargets=\0"[..]), (1, b"SendTargets=All\0")] {
            let a = s.on_pdu(&text_req(30 + i, 10 + i, body));
            let o = sends(&a);
            let pairs = text::parse(&o[0].pdu.data, TextLimits::default()).unwrap();
            assert_eq!(
                pairs,
                vec![
                    (
                        "TargetName".to_string(),
                        "iqn.2025-01.vn.khoi:seat01".to_string()
                    ),
                    ("TargetAddress".to_string(), "127.0.0.1:3260,1".to_string()),
                ]
            );
            assert!(TextResponse::parse(&o[0].pdu.view()).unwrap().fin);
        }
    }

    #[test]
    fn discovery_lists_only_reachable_targets() {
        let mut out = outcome(Params::default());
        out.kind = SessionKind::Discovery {
            chap_targets: vec!["iqn.2025-01.vn.khoi:seat01".into()],
        };
        let mut s = Session::new(
            resolver(),
            &out,
            None,
            "10.0.0.1:3260".into(),
            1,
            128,
            false,
        );
        let a = s.on_pdu(&text_req(1, 10, b"SendTargets=All\0"));
        let pairs = text::parse(&sends(&a)[0].pdu.data, TextLimits::default()).unwrap();
        let names: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "TargetName")
            .map(|(_, v)| v.as_str())
            .collect();
        // seat01 (CHAP proven) and open; seat02 is CHAP-protected and bound
        // to another initiator.
        assert_eq!(
            names,
            vec!["iqn.2025-01.vn.khoi:open", "iqn.2025-01.vn.khoi:seat01"]
        );
        // SCSI commands have no LU in a discovery session.
        let a = s.on_pdu(&cmd(2, 11, &[0x00], 0, false, b""));
        assert_eq!(sends(&a)[0].pdu.opcode(), Opcode::Reject);
    }

    #[test]
    fn stamper_orders_statsn() {
        let mut st = Stamper {
            stat_sn: 5,
            window: 128,
        };
        let mut h = [0u8; 48];
        st.apply(&mut h, Stamp::Peek, 10);
        assert_eq!(&h[24..36], &[0, 0, 0, 5, 0, 0, 0, 10, 0, 0, 0, 137]);
        st.apply(&mut h, Stamp::Status, 10);
        assert_eq!(&h[24..28], &[0, 0, 0, 5]);
        st.apply(&mut h, Stamp::Status, 10);
        assert_eq!(&h[24..28], &[0, 0, 0, 6]);
        st.apply(&mut h, Stamp::Window, 10);
        assert_eq!(&h[24..28], &[0, 0, 0, 0]);
    }
}
