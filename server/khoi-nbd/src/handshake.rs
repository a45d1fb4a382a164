//! Fixed newstyle negotiation as a sans-I/O state machine.
//!
//! The transport sends [`greeting`], then repeatedly reads exactly
//! [`Handshake::wants`] bytes and hands them to [`Handshake::receive`], which
//! answers with [`Action`]s: bytes to send, an export to open or the export
//! list to fetch, enter transmission, or close. No socket, clock, log or
//! export registry is touched here: when an option needs an export the
//! machine returns [`Action::Open`] and waits for [`Handshake::opened`]
//! (likewise [`Action::List`] and [`Handshake::listed`]), so the transport
//! decides where the possibly blocking lookup runs and tests answer it by
//! hand.
//!
//! TLS follows the spec's "TLS required" mode when the server has TLS
//! ([`Handshake::tls_required`]): until `NBD_OPT_STARTTLS` every option but
//! `ABORT` is refused with `NBD_REP_ERR_TLS_REQD` without being parsed, and
//! `NBD_OPT_EXPORT_NAME` (which cannot carry an error) closes. STARTTLS is
//! answered with an ack and [`Action::StartTls`]: the transport runs the TLS
//! handshake and calls [`Handshake::tls_started`], and negotiation continues
//! inside TLS from a clean state. Without TLS, STARTTLS gets `ERR_UNSUP`.
//!
//! Every option we do not implement gets `NBD_REP_ERR_UNSUP` and negotiation
//! continues, as the baseline requires. An option longer than
//! [`MAX_OPTION_LEN`] is answered with `ERR_TOO_BIG` and the connection is
//! closed instead of buffering attacker-chosen amounts of data.

use khoi_block::Checked;

pub use crate::negotiated::Negotiated;
use crate::negotiated::{MAX_PAYLOAD, MIN_BLOCK, PREFERRED_BLOCK, transmission_flags};
use crate::wire::{
    EXPORT_NAME_PADDING, GreetingRepr, InfoRepr, InfoRequest, InfoType, MAX_STRING_LEN,
    MetaRequest, OptionCode, OptionHeader, OptionHeaderRepr, OptionReplyRepr, OptionRepr,
    ReplyBody, ReplyType, client_flags, handshake_flags,
};
use crate::{ExportInfo, OpenError};

/// Longest option payload we accept. The largest legitimate one is a meta
/// context request: a name plus a few queries, each at most 4 KiB.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

pub const BASE_ALLOCATION: &str = "base:allocation";
/// Context id we hand out for `base:allocation` (ids are server-chosen).
pub const BASE_ALLOCATION_ID: u32 = 1;

/// The greeting the server sends first.
pub fn greeting() -> [u8; GreetingRepr::LEN] {
    let mut b = [0u8; GreetingRepr::LEN];
    GreetingRepr {
        flags: handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES,
    }
    .emit(&mut b);
    b
}

/// Why negotiation ended without entering transmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    BadClientFlags(u32),
    BadOptionMagic,
    OptionTooLong {
        option: OptionCode,
        len: u32,
    },
    Aborted,
    /// `NBD_OPT_EXPORT_NAME` before STARTTLS on a server that requires TLS.
    TlsRequired,
    /// `NBD_OPT_EXPORT_NAME` cannot report errors; the spec says close.
    ExportNameFailed {
        name: String,
        error: OpenError,
    },
}

#[derive(Debug)]
pub enum Action {
    Send(Vec<u8>),
    /// Open this export and pass the result to [`Handshake::opened`] before
    /// reading more. Always the last action of its batch.
    Open(String),
    /// Fetch the export list and pass it to [`Handshake::listed`] before
    /// reading more. Always the last action of its batch.
    List,
    /// STARTTLS was acked (in an earlier `Send` of this batch): run the
    /// server side of the TLS handshake on the stream, then call
    /// [`Handshake::tls_started`] before reading more. Always the last
    /// action of its batch.
    StartTls,
    Enter(Box<Negotiated>),
    Close(CloseReason),
}

/// Where TLS stands on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// The server has no TLS: STARTTLS is unsupported.
    Off,
    /// The server requires TLS and the client has not started it yet.
    Required,
    /// The handshake ran; everything from here on is inside TLS.
    Active,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ClientFlags,
    OptionHeader,
    OptionData { option: OptionCode, len: u32 },
    Done,
}

/// An INFO or GO waiting for its export.
#[derive(Debug)]
struct InfoWait {
    code: OptionCode,
    name: String,
    want_name: bool,
    want_description: bool,
}

/// The option an [`Action::Open`] or [`Action::List`] was issued for.
#[derive(Debug)]
enum Pending {
    ExportName(String),
    Info(InfoWait),
    /// INFO/GO whose export opened; the list is fetched for its description.
    Describe(InfoWait, Checked),
    /// A meta context request only checks that its export exists.
    Meta {
        code: OptionCode,
        export: String,
        set: bool,
        selected: bool,
    },
    List(OptionCode),
    /// STARTTLS acked; the TLS handshake is the transport's to run.
    Tls,
}

#[derive(Debug)]
pub struct Handshake {
    phase: Phase,
    /// Set while an `Open` or `List` is unanswered.
    pending: Option<Pending>,
    no_zeroes: bool,
    structured: bool,
    /// Export name `base:allocation` was selected for, if any.
    meta_export: Option<String>,
    tls: TlsState,
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}

fn reply(option: OptionCode, body: ReplyBody<'_>, out: &mut Vec<u8>) {
    OptionReplyRepr { option, body }.emit_to_vec(out);
}

fn error(option: OptionCode, kind: ReplyType, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    reply(option, ReplyBody::Error { kind, message }, &mut out);
    out
}

impl Handshake {
    pub fn new() -> Self {
        Handshake {
            phase: Phase::ClientFlags,
            pending: None,
            no_zeroes: false,
            structured: false,
            meta_export: None,
            tls: TlsState::Off,
        }
    }

    /// A handshake for a server that requires TLS: nothing but STARTTLS
    /// and ABORT is served until the transport reports
    /// [`Handshake::tls_started`].
    pub fn tls_required() -> Self {
        Handshake {
            tls: TlsState::Required,
            ..Self::new()
        }
    }

    pub fn tls(&self) -> TlsState {
        self.tls
    }

    /// The TLS handshake after [`Action::StartTls`] succeeded. The spec has
    /// both sides forget what was negotiated in the clear; nothing but
    /// STARTTLS was, but the state is reset all the same.
    pub fn tls_started(&mut self) {
        match self.pending.take() {
            Some(Pending::Tls) => {
                self.tls = TlsState::Active;
                self.structured = false;
                self.meta_export = None;
            }
            other => {
                debug_assert!(false, "tls_started() without a pending StartTls: {other:?}");
                self.pending = other;
            }
        }
    }

    /// Exact number of bytes the next `receive` call expects: 0 once done
    /// and while an `Open` or `List` is unanswered.
    pub fn wants(&self) -> usize {
        if self.pending.is_some() {
            return 0;
        }
        match self.phase {
            Phase::ClientFlags => 4,
            Phase::OptionHeader => OptionHeader::<&[u8]>::LEN,
            // Bounded by MAX_OPTION_LEN before this phase is entered.
            Phase::OptionData { len, .. } => len as usize,
            Phase::Done => 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Feeds exactly `wants()` bytes.
    pub fn receive(&mut self, data: &[u8]) -> Vec<Action> {
        debug_assert_eq!(data.len(), self.wants());
        if self.pending.is_some() {
            return Vec::new();
        }
        let actions = match self.phase {
            Phase::ClientFlags => self.client_flags(data),
            Phase::OptionHeader => self.option_header(data),
            Phase::OptionData { option, .. } => {
                self.phase = Phase::OptionHeader;
                self.option(option, data)
            }
            Phase::Done => Vec::new(),
        };
        self.settle(actions)
    }

    /// The answer to the last [`Action::Open`].
    pub fn opened(&mut self, result: Result<Checked, OpenError>) -> Vec<Action> {
        let actions = match self.pending.take() {
            Some(Pending::ExportName(name)) => self.export_name_opened(name, result),
            Some(Pending::Info(wait)) => match result {
                Err(e) => vec![Action::Send(open_error(wait.code, &e))],
                Ok(device) if wait.want_description => {
                    self.pending = Some(Pending::Describe(wait, device));
                    vec![Action::List]
                }
                Ok(device) => self.info_reply(&wait, device, ""),
            },
            Some(Pending::Meta {
                code,
                export,
                set,
                selected,
            }) => match result {
                Err(e) => vec![Action::Send(open_error(code, &e))],
                Ok(_) => vec![Action::Send(self.meta_reply(code, export, set, selected))],
            },
            other => {
                debug_assert!(false, "opened() without a pending Open: {other:?}");
                self.pending = other;
                Vec::new()
            }
        };
        self.settle(actions)
    }

    /// The answer to the last [`Action::List`].
    pub fn listed(&mut self, exports: Vec<ExportInfo>) -> Vec<Action> {
        let actions = match self.pending.take() {
            Some(Pending::List(code)) => {
                let mut out = Vec::new();
                for e in exports {
                    if e.name.len() > MAX_STRING_LEN {
                        continue;
                    }
                    reply(
                        code,
                        ReplyBody::Server {
                            name: &e.name,
                            description: clip(&e.description),
                        },
                        &mut out,
                    );
                }
                reply(code, ReplyBody::Ack, &mut out);
                vec![Action::Send(out)]
            }
            Some(Pending::Describe(wait, device)) => {
                let description = exports
                    .into_iter()
                    .find(|e| e.name == wait.name)
                    .map(|e| e.description)
                    .unwrap_or_default();
                self.info_reply(&wait, device, &description)
            }
            other => {
                debug_assert!(false, "listed() without a pending List: {other:?}");
                self.pending = other;
                Vec::new()
            }
        };
        self.settle(actions)
    }

    /// Ends negotiation once an action enters transmission or closes.
    fn settle(&mut self, actions: Vec<Action>) -> Vec<Action> {
        if actions
            .iter()
            .any(|a| matches!(a, Action::Enter(_) | Action::Close(_)))
        {
            self.phase = Phase::Done;
        }
        actions
    }

    /// Records what the answer resumes and asks the transport for it.
    fn wait(&mut self, pending: Pending, ask: Action) -> Vec<Action> {
        self.pending = Some(pending);
        vec![ask]
    }

    /// [`Handshake::wait`], with bytes to send first.
    fn wait_after(&mut self, pending: Pending, send: Vec<u8>, ask: Action) -> Vec<Action> {
        self.pending = Some(pending);
        vec![Action::Send(send), ask]
    }

    fn client_flags(&mut self, data: &[u8]) -> Vec<Action> {
        let mut b = [0u8; 4];
        b.copy_from_slice(&data[..4]);
        let flags = u32::from_be_bytes(b);
        let known = client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES;
        // Unknown flags must drop the connection; plain (non-fixed) newstyle
        // clients are not worth a second code path in 2025.
        if flags & !known != 0 || flags & client_flags::FIXED_NEWSTYLE == 0 {
            return vec![Action::Close(CloseReason::BadClientFlags(flags))];
        }
        self.no_zeroes = flags & client_flags::NO_ZEROES != 0;
        self.phase = Phase::OptionHeader;
        Vec::new()
    }

    fn option_header(&mut self, data: &[u8]) -> Vec<Action> {
        let Ok(h) = OptionHeader::new_checked(data).and_then(|h| OptionHeaderRepr::parse(&h))
        else {
            return vec![Action::Close(CloseReason::BadOptionMagic)];
        };
        if h.length > MAX_OPTION_LEN {
            return vec![
                Action::Send(error(h.option, ReplyType::ErrTooBig, "option too long")),
                Action::Close(CloseReason::OptionTooLong {
                    option: h.option,
                    len: h.length,
                }),
            ];
        }
        if h.length == 0 {
            return self.option(h.option, &[]);
        }
        self.phase = Phase::OptionData {
            option: h.option,
            len: h.length,
        };
        Vec::new()
    }

    fn option(&mut self, code: OptionCode, data: &[u8]) -> Vec<Action> {
        if self.tls == TlsState::Required {
            // Nothing from before TLS is parsed beyond its code: the clear
            // text is the attacker's, and serves no export.
            match code {
                OptionCode::StartTls if data.is_empty() => {
                    let mut out = Vec::new();
                    reply(code, ReplyBody::Ack, &mut out);
                    return self.wait_after(Pending::Tls, out, Action::StartTls);
                }
                OptionCode::StartTls => {
                    return vec![Action::Send(error(
                        code,
                        ReplyType::ErrInvalid,
                        "STARTTLS takes no data",
                    ))];
                }
                OptionCode::Abort => {}
                OptionCode::ExportName => return vec![Action::Close(CloseReason::TlsRequired)],
                _ => {
                    return vec![Action::Send(error(
                        code,
                        ReplyType::ErrTlsReqd,
                        "TLS is required: send NBD_OPT_STARTTLS first",
                    ))];
                }
            }
        }
        let Ok(opt) = OptionRepr::parse(code, data) else {
            return vec![Action::Send(error(
                code,
                ReplyType::ErrInvalid,
                "malformed option data",
            ))];
        };
        let mut out = Vec::new();
        match opt {
            OptionRepr::ExportName(name) => return self.export_name(name),
            OptionRepr::Abort => {
                reply(code, ReplyBody::Ack, &mut out);
                return vec![Action::Send(out), Action::Close(CloseReason::Aborted)];
            }
            OptionRepr::List => return self.wait(Pending::List(code), Action::List),
            OptionRepr::StartTls if self.tls == TlsState::Active => {
                out = error(code, ReplyType::ErrInvalid, "TLS is already active");
            }
            OptionRepr::StartTls => {
                out = error(code, ReplyType::ErrUnsup, "TLS is not supported");
            }
            OptionRepr::Info(req) | OptionRepr::Go(req) => return self.info_or_go(code, req),
            OptionRepr::StructuredReply => {
                self.structured = true;
                reply(code, ReplyBody::Ack, &mut out);
            }
            OptionRepr::ListMetaContext(req) => return self.meta_context(code, req, false),
            OptionRepr::SetMetaContext(req) => return self.meta_context(code, req, true),
            OptionRepr::ExtendedHeaders => {
                out = error(
                    code,
                    ReplyType::ErrUnsup,
                    "extended headers are not supported",
                );
            }
            OptionRepr::Other { .. } => {
                out = error(code, ReplyType::ErrUnsup, "unsupported option");
            }
        }
        vec![Action::Send(out)]
    }

    fn export_name(&mut self, name: &[u8]) -> Vec<Action> {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.len() > MAX_STRING_LEN {
            let error = OpenError::NotFound("export name too long".into());
            return vec![Action::Close(CloseReason::ExportNameFailed { name, error })];
        }
        self.wait(Pending::ExportName(name.clone()), Action::Open(name))
    }

    fn export_name_opened(
        &mut self,
        name: String,
        result: Result<Checked, OpenError>,
    ) -> Vec<Action> {
        let device = match result {
            Ok(d) => d,
            Err(error) => {
                return vec![Action::Close(CloseReason::ExportNameFailed { name, error })];
            }
        };
        // Structured replies negotiated earlier stay in force; meta contexts
        // too, if they were selected for this very export.
        let flags = transmission_flags(device.caps(), self.structured);
        let mut out = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
        out.extend_from_slice(&device.size().to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        if !self.no_zeroes {
            out.resize(out.len() + EXPORT_NAME_PADDING, 0);
        }
        let base_allocation = self.base_allocation_for(&name);
        vec![
            Action::Send(out),
            Action::Enter(Box::new(Negotiated {
                name,
                device,
                flags,
                structured: self.structured,
                base_allocation,
            })),
        ]
    }

    fn base_allocation_for(&self, name: &str) -> Option<u32> {
        (self.structured && self.meta_export.as_deref() == Some(name)).then_some(BASE_ALLOCATION_ID)
    }

    fn info_or_go(&mut self, code: OptionCode, req: InfoRequest<'_>) -> Vec<Action> {
        if req.name.len() > MAX_STRING_LEN {
            return vec![Action::Send(error(
                code,
                ReplyType::ErrTooBig,
                "export name too long",
            ))];
        }
        let mut wait = InfoWait {
            code,
            name: req.name.to_owned(),
            want_name: false,
            want_description: false,
        };
        for r in req.requests() {
            match r {
                InfoType::Name => wait.want_name = true,
                InfoType::Description => wait.want_description = true,
                _ => {}
            }
        }
        self.wait(Pending::Info(wait), Action::Open(req.name.to_owned()))
    }

    fn info_reply(&mut self, wait: &InfoWait, device: Checked, description: &str) -> Vec<Action> {
        let code = wait.code;
        let flags = transmission_flags(device.caps(), self.structured);
        let mut out = Vec::new();
        reply(
            code,
            ReplyBody::Info(InfoRepr::Export {
                size: device.size(),
                flags,
            }),
            &mut out,
        );
        if wait.want_name {
            reply(code, ReplyBody::Info(InfoRepr::Name(&wait.name)), &mut out);
        }
        if wait.want_description && !description.is_empty() {
            reply(
                code,
                ReplyBody::Info(InfoRepr::Description(clip(description))),
                &mut out,
            );
        }
        // Sent whether or not it was asked for (the spec allows that): the
        // values are the protocol defaults, so no client is constrained, and
        // clients learn the 32 MiB maximum.
        reply(
            code,
            ReplyBody::Info(InfoRepr::BlockSize {
                min: MIN_BLOCK,
                preferred: PREFERRED_BLOCK,
                max: MAX_PAYLOAD,
            }),
            &mut out,
        );
        reply(code, ReplyBody::Ack, &mut out);
        let mut actions = vec![Action::Send(out)];
        if code == OptionCode::Go {
            actions.push(Action::Enter(Box::new(Negotiated {
                base_allocation: self.base_allocation_for(&wait.name),
                name: wait.name.clone(),
                device,
                flags,
                structured: self.structured,
            })));
        }
        actions
    }

    fn meta_context(&mut self, code: OptionCode, req: MetaRequest<'_>, set: bool) -> Vec<Action> {
        if !self.structured {
            return vec![Action::Send(error(
                code,
                ReplyType::ErrInvalid,
                "structured replies must be negotiated first",
            ))];
        }
        let selected = if set {
            req.queries().any(|q| q == BASE_ALLOCATION)
        } else {
            // Listing: no query means everything, and a bare namespace
            // lists all of it.
            req.query_count() == 0 || req.queries().any(|q| q == "base:" || q == BASE_ALLOCATION)
        };
        let export = req.export.to_owned();
        self.wait(
            Pending::Meta {
                code,
                export: export.clone(),
                set,
                selected,
            },
            Action::Open(export),
        )
    }

    fn meta_reply(
        &mut self,
        code: OptionCode,
        export: String,
        set: bool,
        selected: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        if selected {
            reply(
                code,
                ReplyBody::MetaContext {
                    // List replies carry a reserved id of zero.
                    id: if set { BASE_ALLOCATION_ID } else { 0 },
                    name: BASE_ALLOCATION,
                },
                &mut out,
            );
        }
        if set {
            self.meta_export = selected.then_some(export);
        }
        reply(code, ReplyBody::Ack, &mut out);
        out
    }
}

fn open_error(code: OptionCode, e: &OpenError) -> Vec<u8> {
    match e {
        OpenError::NotFound(m) => error(code, ReplyType::ErrUnknown, clip(m)),
        OpenError::Other(m) => error(code, ReplyType::ErrPolicy, clip(m)),
    }
}

/// Strings on the wire are at most 4 KiB; cut on a character boundary.
fn clip(s: &str) -> &str {
    if s.len() <= MAX_STRING_LEN {
        return s;
    }
    let mut cut = MAX_STRING_LEN;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ExportResolver;
    use crate::doubles::StaticExports;
    use crate::wire::{OptionReply, transmission_flags as tf};
    use khoi_block::testing::MemDisk;

    fn exports() -> StaticExports {
        StaticExports::new()
            .with("seat/a", "Seat A", Arc::new(MemDisk::new(1 << 20)))
            .with("image/w@1", "", Arc::new(MemDisk::new(2 << 20)))
    }

    fn option(opt: OptionRepr<'_>) -> Vec<u8> {
        let mut b = vec![0u8; opt.buffer_len()];
        opt.emit(&mut b);
        b
    }

    fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
        let raw: Vec<u8> = reqs.iter().flat_map(|r| r.to_be_bytes()).collect();
        let r = InfoRequest::new(name, &raw);
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b);
        b
    }

    fn meta_data(export: &str, queries: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&u32::try_from(export.len()).expect("small").to_be_bytes());
        b.extend_from_slice(export.as_bytes());
        b.extend_from_slice(&u32::try_from(queries.len()).expect("small").to_be_bytes());
        for q in queries {
            b.extend_from_slice(&u32::try_from(q.len()).expect("small").to_be_bytes());
            b.extend_from_slice(q.as_bytes());
        }
        b
    }

    /// Drives the machine with raw option bytes, splitting them the way the
    /// transport would (header, then data), answers its `Open` and `List`
    /// actions from the fake resolver, and collects the other actions. The
    /// names it was asked to open are kept in `opens`.
    struct Driver {
        hs: Handshake,
        ex: StaticExports,
        opens: Vec<String>,
        lists: usize,
    }

    impl Driver {
        fn new(flags: u32) -> (Self, Vec<Action>) {
            let mut d = Driver {
                hs: Handshake::new(),
                ex: exports(),
                opens: Vec::new(),
                lists: 0,
            };
            assert_eq!(d.hs.wants(), 4);
            let a = d.hs.receive(&flags.to_be_bytes());
            let a = d.answer(a);
            (d, a)
        }

        fn fixed() -> Self {
            let (d, a) = Self::new(client_flags::FIXED_NEWSTYLE);
            assert!(a.is_empty());
            d
        }

        /// Resolves `Open` and `List` the way the transport does.
        fn answer(&mut self, actions: Vec<Action>) -> Vec<Action> {
            let mut queue = std::collections::VecDeque::from(actions);
            let mut out = Vec::new();
            while let Some(a) = queue.pop_front() {
                match a {
                    Action::Open(name) => {
                        assert!(queue.is_empty(), "Open must end its batch");
                        assert_eq!(self.hs.wants(), 0, "no bytes while opening");
                        let r = self.ex.open(&name);
                        self.opens.push(name);
                        queue.extend(self.hs.opened(r));
                    }
                    Action::List => {
                        assert!(queue.is_empty(), "List must end its batch");
                        self.lists += 1;
                        queue.extend(self.hs.listed(self.ex.list()));
                    }
                    Action::StartTls => {
                        assert!(queue.is_empty(), "StartTls must end its batch");
                        assert_eq!(self.hs.wants(), 0, "no clear text after STARTTLS");
                        // Stands for a TLS handshake that succeeded.
                        self.hs.tls_started();
                        out.push(Action::StartTls);
                    }
                    other => out.push(other),
                }
            }
            out
        }

        fn send(&mut self, bytes: &[u8]) -> Vec<Action> {
            let mut pos = 0;
            let mut actions = Vec::new();
            while pos < bytes.len() && !self.hs.is_done() {
                let n = self.hs.wants();
                let a = self.hs.receive(&bytes[pos..pos + n]);
                actions.extend(self.answer(a));
                pos += n;
            }
            actions
        }

        fn opt(&mut self, opt: OptionRepr<'_>) -> Vec<Action> {
            self.send(&option(opt))
        }
    }

    /// Splits the bytes of `Send` actions into parsed option replies.
    fn replies(actions: &[Action]) -> Vec<OptionReplyRepr<'_>> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::Send(bytes) = a {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let r = OptionReply::new_checked(rest).expect("complete reply");
                    let len = r.total_len();
                    out.push(
                        OptionReplyRepr::parse(&OptionReply::new_unchecked(&rest[..len]))
                            .expect("valid"),
                    );
                    rest = &rest[len..];
                }
            }
        }
        out
    }

    fn entered(actions: &[Action]) -> Option<&Negotiated> {
        actions.iter().find_map(|a| match a {
            Action::Enter(n) => Some(&**n),
            _ => None,
        })
    }

    #[test]
    fn greeting_bytes() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(g[16..], [0, 3]);
    }

    #[test]
    fn bad_client_flags_close() {
        let (_, a) = Driver::new(0x10 | client_flags::FIXED_NEWSTYLE);
        assert!(matches!(
            a[..],
            [Action::Close(CloseReason::BadClientFlags(0x11))]
        ));
        let (_, a) = Driver::new(0);
        assert!(matches!(
            a[..],
            [Action::Close(CloseReason::BadClientFlags(0))]
        ));
    }

    #[test]
    fn unknown_option_is_unsupported_and_negotiation_continues() {
        let mut d = Driver::fixed();
        let a = d.opt(OptionRepr::Other {
            code: OptionCode::Unknown(0x1234),
            data: b"junk",
        });
        let r = replies(&a);
        assert_eq!(r.len(), 1);
        assert!(matches!(
            r[0].body,
            ReplyBody::Error {
                kind: ReplyType::ErrUnsup,
                ..
            }
        ));
        assert_eq!(r[0].option, OptionCode::Unknown(0x1234));
        for opt in [OptionRepr::ExtendedHeaders, OptionRepr::StartTls] {
            let a = d.opt(opt);
            assert!(matches!(
                replies(&a)[0].body,
                ReplyBody::Error {
                    kind: ReplyType::ErrUnsup,
                    ..
                }
            ));
        }
        let a = d.opt(OptionRepr::List);
        assert_eq!(replies(&a).len(), 3);
        assert!(!d.hs.is_done());
    }

    fn tls_driver() -> Driver {
        let mut d = Driver {
            hs: Handshake::tls_required(),
            ex: exports(),
            opens: Vec::new(),
            lists: 0,
        };
        let a = d.hs.receive(&client_flags::FIXED_NEWSTYLE.to_be_bytes());
        assert!(d.answer(a).is_empty());
        d
    }

    fn kind(a: &[Action]) -> ReplyType {
        match replies(a)[0].body {
            ReplyBody::Error { kind, .. } => kind,
            other => panic!("error expected, got {other:?}"),
        }
    }

    /// Attack: a client that skips STARTTLS on a TLS server must neither
    /// list nor open anything, whichever option it tries.
    #[test]
    fn tls_required_refuses_every_option_before_starttls() {
        let mut d = tls_driver();
        let go = info_data("seat/a", &[]);
        let meta = meta_data("seat/a", &[BASE_ALLOCATION]);
        for opt in [
            OptionRepr::List,
            OptionRepr::Go(InfoRequest::parse(&go).expect("valid")),
            OptionRepr::Info(InfoRequest::parse(&go).expect("valid")),
            OptionRepr::StructuredReply,
            OptionRepr::Other {
                code: OptionCode::SetMetaContext,
                data: &meta,
            },
            OptionRepr::Other {
                code: OptionCode::Unknown(0x99),
                data: b"junk",
            },
        ] {
            let a = d.opt(opt);
            assert_eq!(kind(&a), ReplyType::ErrTlsReqd);
            assert!(entered(&a).is_none());
        }
        assert!(d.opens.is_empty() && d.lists == 0, "nothing looked up");
        assert!(!d.hs.is_done());
        // EXPORT_NAME cannot carry an error, so it closes, unopened.
        let a = d.opt(OptionRepr::ExportName(b"seat/a"));
        assert!(matches!(a[..], [Action::Close(CloseReason::TlsRequired)]));
        assert!(d.opens.is_empty());
    }

    #[test]
    fn starttls_acks_then_negotiation_continues_inside_tls() {
        let mut d = tls_driver();
        // STARTTLS with data is invalid and changes nothing.
        let a = d.opt(OptionRepr::Other {
            code: OptionCode::StartTls,
            data: b"x",
        });
        assert_eq!(kind(&a), ReplyType::ErrInvalid);
        assert_eq!(d.hs.tls(), TlsState::Required);
        let a = d.opt(OptionRepr::StartTls);
        assert_eq!(replies(&a)[0].body, ReplyBody::Ack);
        assert!(matches!(a[..], [Action::Send(_), Action::StartTls]));
        assert_eq!(d.hs.tls(), TlsState::Active);
        assert_eq!(replies(&d.opt(OptionRepr::List)).len(), 3);
        // A second STARTTLS inside TLS is invalid, not a downgrade.
        assert_eq!(kind(&d.opt(OptionRepr::StartTls)), ReplyType::ErrInvalid);
        let go = info_data("seat/a", &[]);
        let a = d.opt(OptionRepr::Go(InfoRequest::parse(&go).expect("valid")));
        assert_eq!(entered(&a).expect("entered").name, "seat/a");
    }

    #[test]
    fn abort_before_starttls_is_still_acked() {
        let mut d = tls_driver();
        let a = d.opt(OptionRepr::Abort);
        assert_eq!(replies(&a)[0].body, ReplyBody::Ack);
        assert!(matches!(a[1], Action::Close(CloseReason::Aborted)));
    }

    #[test]
    fn list_exports() {
        let mut d = Driver::fixed();
        let a = d.opt(OptionRepr::List);
        let r = replies(&a);
        assert_eq!(
            r.iter().map(|r| r.body).collect::<Vec<_>>(),
            vec![
                ReplyBody::Server {
                    name: "seat/a",
                    description: "Seat A"
                },
                ReplyBody::Server {
                    name: "image/w@1",
                    description: ""
                },
                ReplyBody::Ack,
            ]
        );
        // LIST with data is syntactically invalid, and negotiation goes on.
        let a = d.opt(OptionRepr::Other {
            code: OptionCode::List,
            data: b"x",
        });
        assert!(matches!(
            replies(&a)[0].body,
            ReplyBody::Error {
                kind: ReplyType::ErrInvalid,
                ..
            }
        ));
    }

    #[test]
    fn go_unknown_export() {
        let mut d = Driver::fixed();
        let data = info_data("seat/nope", &[]);
        let a = d.opt(OptionRepr::Go(InfoRequest::parse(&data).expect("valid")));
        let r = replies(&a);
        assert_eq!(r.len(), 1);
        let ReplyBody::Error { kind, message } = r[0].body else {
            panic!("error expected")
        };
        assert_eq!(kind, ReplyType::ErrUnknown);
        assert!(message.contains("seat/nope"));
        assert!(entered(&a).is_none());
        assert!(!d.hs.is_done());
    }

    #[test]
    fn info_then_go() {
        let mut d = Driver::fixed();
        let data = info_data("seat/a", &[1, 2, 3, 77]);
        let a = d.opt(OptionRepr::Info(InfoRequest::parse(&data).expect("valid")));
        let r = replies(&a);
        let flags = match r[0].body {
            ReplyBody::Info(InfoRepr::Export { size, flags }) => {
                assert_eq!(size, 1 << 20);
                flags
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_ne!(flags & tf::HAS_FLAGS, 0);
        assert_eq!(flags & tf::READ_ONLY, 0);
        assert_eq!(r[1].body, ReplyBody::Info(InfoRepr::Name("seat/a")));
        assert_eq!(r[2].body, ReplyBody::Info(InfoRepr::Description("Seat A")));
        assert_eq!(
            r[3].body,
            ReplyBody::Info(InfoRepr::BlockSize {
                min: 1,
                preferred: 4096,
                max: 32 << 20
            })
        );
        assert_eq!(r[4].body, ReplyBody::Ack);
        assert!(entered(&a).is_none());

        let data = info_data("seat/a", &[]);
        let a = d.opt(OptionRepr::Go(InfoRequest::parse(&data).expect("valid")));
        let r = replies(&a);
        assert!(matches!(
            r[0].body,
            ReplyBody::Info(InfoRepr::Export { .. })
        ));
        assert_eq!(r.last().map(|r| r.body), Some(ReplyBody::Ack));
        let n = entered(&a).expect("entered transmission");
        assert_eq!(n.name, "seat/a");
        assert!(!n.structured);
        assert_eq!(n.base_allocation, None);
        assert!(d.hs.is_done());
    }

    #[test]
    fn structured_and_base_allocation() {
        let mut d = Driver::fixed();
        // Meta contexts need structured replies first.
        let m = meta_data("seat/a", &[BASE_ALLOCATION]);
        let a = d.opt(OptionRepr::SetMetaContext(
            MetaRequest::parse(&m).expect("valid"),
        ));
        assert!(matches!(
            replies(&a)[0].body,
            ReplyBody::Error {
                kind: ReplyType::ErrInvalid,
                ..
            }
        ));
        let a = d.opt(OptionRepr::StructuredReply);
        assert_eq!(replies(&a)[0].body, ReplyBody::Ack);

        for queries in [&[][..], &["base:"][..], &[BASE_ALLOCATION][..]] {
            let l = meta_data("seat/a", queries);
            let a = d.opt(OptionRepr::ListMetaContext(
                MetaRequest::parse(&l).expect("valid"),
            ));
            let r = replies(&a);
            assert_eq!(
                r.iter().map(|r| r.body).collect::<Vec<_>>(),
                vec![
                    ReplyBody::MetaContext {
                        id: 0,
                        name: BASE_ALLOCATION
                    },
                    ReplyBody::Ack
                ],
                "{queries:?}"
            );
        }
        let l = meta_data("seat/a", &["qemu:dirty-bitmap:x"]);
        let a = d.opt(OptionRepr::ListMetaContext(
            MetaRequest::parse(&l).expect("valid"),
        ));
        assert_eq!(replies(&a)[0].body, ReplyBody::Ack);

        let a = d.opt(OptionRepr::SetMetaContext(
            MetaRequest::parse(&m).expect("valid"),
        ));
        let r = replies(&a);
        assert_eq!(
            r[0].body,
            ReplyBody::MetaContext {
                id: BASE_ALLOCATION_ID,
                name: BASE_ALLOCATION
            }
        );
        assert_eq!(r[1].body, ReplyBody::Ack);

        let data = info_data("seat/a", &[]);
        let a = d.opt(OptionRepr::Go(InfoRequest::parse(&data).expect("valid")));
        let n = entered(&a).expect("entered");
        assert!(n.structured);
        assert_eq!(n.base_allocation, Some(BASE_ALLOCATION_ID));
        assert_ne!(n.flags & tf::SEND_DF, 0);
    }

    #[test]
    fn meta_context_for_other_export_is_dropped() {
        let mut d = Driver::fixed();
        d.opt(OptionRepr::StructuredReply);
        let m = meta_data("image/w@1", &[BASE_ALLOCATION]);
        d.opt(OptionRepr::SetMetaContext(
            MetaRequest::parse(&m).expect("valid"),
        ));
        let data = info_data("seat/a", &[]);
        let a = d.opt(OptionRepr::Go(InfoRequest::parse(&data).expect("valid")));
        assert_eq!(entered(&a).expect("entered").base_allocation, None);
    }

    #[test]
    fn export_name_with_and_without_zeroes() {
        for (flags, len) in [
            (client_flags::FIXED_NEWSTYLE, 10 + 124),
            (client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES, 10),
        ] {
            let (mut d, a) = Driver::new(flags);
            assert!(a.is_empty());
            let a = d.opt(OptionRepr::ExportName(b"seat/a"));
            let Action::Send(bytes) = &a[0] else {
                panic!("send first")
            };
            assert_eq!(bytes.len(), len);
            assert_eq!(bytes[..8], (1u64 << 20).to_be_bytes());
            assert!(bytes[10..].iter().all(|&b| b == 0));
            assert_eq!(entered(&a).expect("entered").name, "seat/a");
        }
    }

    #[test]
    fn export_name_unknown_closes() {
        let mut d = Driver::fixed();
        let a = d.opt(OptionRepr::ExportName(b"nope"));
        assert!(matches!(
            a[..],
            [Action::Close(CloseReason::ExportNameFailed { .. })]
        ));
        assert!(d.hs.is_done());
    }

    #[test]
    fn absurd_option_length_closes_without_reading_it() {
        let mut d = Driver::fixed();
        let mut hdr = vec![0u8; 16];
        OptionHeaderRepr {
            option: OptionCode::Go,
            length: 0xffff_fff0,
        }
        .emit(&mut OptionHeader::new_unchecked(&mut hdr[..]));
        let a = d.send(&hdr);
        assert!(matches!(
            replies(&a)[0].body,
            ReplyBody::Error {
                kind: ReplyType::ErrTooBig,
                ..
            }
        ));
        assert!(matches!(
            a.last(),
            Some(Action::Close(CloseReason::OptionTooLong { .. }))
        ));
        assert_eq!(d.hs.wants(), 0);
    }

    #[test]
    fn bad_option_magic_closes() {
        let mut d = Driver::fixed();
        let a = d.send(&[0u8; 16]);
        assert!(matches!(
            a[..],
            [Action::Close(CloseReason::BadOptionMagic)]
        ));
    }

    #[test]
    fn abort_acks_then_closes() {
        let mut d = Driver::fixed();
        let a = d.opt(OptionRepr::Abort);
        assert_eq!(replies(&a)[0].body, ReplyBody::Ack);
        assert!(matches!(
            a.last(),
            Some(Action::Close(CloseReason::Aborted))
        ));
    }

    #[test]
    fn each_export_option_opens_its_export_once() {
        let mut d = Driver::fixed();
        let info = info_data("seat/a", &[2]);
        let a = d.opt(OptionRepr::Info(InfoRequest::parse(&info).expect("valid")));
        assert_eq!(
            replies(&a)[1].body,
            ReplyBody::Info(InfoRepr::Description("Seat A"))
        );
        assert_eq!(d.opens, ["seat/a"]);
        // The description comes from the list, fetched only when asked for.
        assert_eq!(d.lists, 1);
        d.opt(OptionRepr::StructuredReply);
        let m = meta_data("seat/a", &[BASE_ALLOCATION]);
        d.opt(OptionRepr::SetMetaContext(
            MetaRequest::parse(&m).expect("valid"),
        ));
        assert_eq!(d.opens, ["seat/a", "seat/a"]);
        let go = info_data("image/w@1", &[1]);
        let a = d.opt(OptionRepr::Go(InfoRequest::parse(&go).expect("valid")));
        assert_eq!(entered(&a).expect("entered").name, "image/w@1");
        assert_eq!(d.opens, ["seat/a", "seat/a", "image/w@1"]);
        assert_eq!(d.lists, 1);

        let mut d = Driver::fixed();
        let a = d.opt(OptionRepr::List);
        assert_eq!(replies(&a).len(), 3);
        assert!(d.opens.is_empty());
        let a = d.opt(OptionRepr::ExportName(b"seat/a"));
        assert!(entered(&a).is_some());
        assert_eq!(d.opens, ["seat/a"]);
    }

    /// Feeds one option's bytes as the transport would, without answering
    /// anything, and returns what the machine asked for.
    fn feed(hs: &mut Handshake, bytes: &[u8]) -> Vec<Action> {
        let mut pos = 0;
        let mut actions = Vec::new();
        while pos < bytes.len() && hs.wants() > 0 {
            let n = hs.wants();
            actions.extend(hs.receive(&bytes[pos..pos + n]));
            pos += n;
        }
        assert_eq!(pos, bytes.len(), "machine stopped early");
        actions
    }

    #[test]
    fn open_is_requested_and_failures_are_answered() {
        let mut hs = Handshake::new();
        assert!(
            hs.receive(&client_flags::FIXED_NEWSTYLE.to_be_bytes())
                .is_empty()
        );

        // GO for a missing export: one Open, nothing read meanwhile, then
        // ERR_UNKNOWN carrying the resolver's message, and haggling goes on.
        let go = info_data("seat/x", &[]);
        let a = feed(
            &mut hs,
            &option(OptionRepr::Go(InfoRequest::parse(&go).expect("valid"))),
        );
        assert!(
            matches!(&a[..], [Action::Open(n)] if n == "seat/x"),
            "{a:?}"
        );
        assert_eq!(hs.wants(), 0);
        let a = hs.opened(Err(OpenError::NotFound("no export seat/x".into())));
        let r = replies(&a);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0],
            OptionReplyRepr {
                option: OptionCode::Go,
                body: ReplyBody::Error {
                    kind: ReplyType::ErrUnknown,
                    message: "no export seat/x"
                }
            }
        );
        assert!(!hs.is_done());
        assert_eq!(hs.wants(), OptionHeader::<&[u8]>::LEN);

        // INFO for a refused export: ERR_POLICY.
        let info = info_data("seat/y", &[1, 2]);
        let a = feed(
            &mut hs,
            &option(OptionRepr::Info(InfoRequest::parse(&info).expect("valid"))),
        );
        assert!(
            matches!(&a[..], [Action::Open(n)] if n == "seat/y"),
            "{a:?}"
        );
        let a = hs.opened(Err(OpenError::Other("seat is disabled".into())));
        let r = replies(&a);
        assert_eq!(
            r.iter().map(|r| r.body).collect::<Vec<_>>(),
            vec![ReplyBody::Error {
                kind: ReplyType::ErrPolicy,
                message: "seat is disabled"
            }]
        );
        assert!(!hs.is_done());

        // EXPORT_NAME cannot carry an error: the machine closes.
        let a = feed(&mut hs, &option(OptionRepr::ExportName(b"seat/z")));
        assert!(
            matches!(&a[..], [Action::Open(n)] if n == "seat/z"),
            "{a:?}"
        );
        let a = hs.opened(Err(OpenError::Other("refused".into())));
        assert!(
            matches!(
                &a[..],
                [Action::Close(CloseReason::ExportNameFailed { name, error })]
                    if name == "seat/z" && *error == OpenError::Other("refused".into())
            ),
            "{a:?}"
        );
        assert!(hs.is_done());
    }

    #[test]
    fn malformed_go_is_invalid() {
        let mut d = Driver::fixed();
        let a = d.opt(OptionRepr::Other {
            code: OptionCode::Go,
            data: &[0, 0, 0, 50, b'x'],
        });
        assert!(matches!(
            replies(&a)[0].body,
            ReplyBody::Error {
                kind: ReplyType::ErrInvalid,
                ..
            }
        ));
        assert!(!d.hs.is_done());
    }
}

#[cfg(test)]
mod fuzz {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::ExportResolver;
    use crate::doubles::StaticExports;
    use khoi_block::testing::MemDisk;

    /// Answers the machine's `Open`/`List` (always last in a batch).
    fn answer(hs: &mut Handshake, mut actions: Vec<Action>, ex: &StaticExports) {
        loop {
            actions = match actions.pop() {
                Some(Action::Open(name)) => hs.opened(ex.open(&name)),
                Some(Action::List) => hs.listed(ex.list()),
                _ => return,
            };
        }
    }

    proptest! {
        /// Arbitrary option streams never panic the machine, and it never
        /// asks for more than MAX_OPTION_LEN bytes at once.
        #[test]
        fn option_stream_never_panics(
            opts in proptest::collection::vec((0u32..14, proptest::collection::vec(any::<u8>(), 0..64)), 0..8)
        ) {
            let ex = StaticExports::new().with("", "", Arc::new(MemDisk::new(4096)));
            let mut hs = Handshake::new();
            hs.receive(&client_flags::FIXED_NEWSTYLE.to_be_bytes());
            for (code, data) in opts {
                if hs.is_done() {
                    break;
                }
                let mut hdr = [0u8; 16];
                OptionHeaderRepr { option: OptionCode::from(code), length: u32::try_from(data.len()).unwrap_or(0) }
                    .emit(&mut OptionHeader::new_unchecked(&mut hdr[..]));
                let a = hs.receive(&hdr);
                answer(&mut hs, a, &ex);
                if !data.is_empty() && !hs.is_done() {
                    prop_assert_eq!(hs.wants(), data.len());
                    let a = hs.receive(&data);
                    answer(&mut hs, a, &ex);
                }
                prop_assert!(hs.wants() <= MAX_OPTION_LEN as usize);
                // Every Open/List was answered, so the machine wants bytes again.
                prop_assert!(hs.is_done() || hs.wants() > 0);
            }
        }
    }
}
