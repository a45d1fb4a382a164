//! The login phase (RFC 7143 §6.3, §12): security and operational stages,
//! CHAP, and the policy checks. Sans-I/O: [`Login::on_pdu`] takes a parsed
//! Login Request and returns a [`Step`]; the caller sends PDUs, opens the LU
//! and allocates the TSIH when told to.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng as _;

use crate::chap;
use crate::pdu::{LoginRequest, LoginResponse, Pdu, SeqNums, Stage};
use crate::resolver::{ChapSecret, Credential, TargetAuth, TargetResolver};
use crate::text::{self, Answer, Offer, Params, TextLimits};

/// Login status codes (class << 8 | detail), RFC 7143 §11.13.5.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const INITIATOR_ERROR: u16 = 0x0200;
    pub const AUTH_FAILURE: u16 = 0x0201;
    pub const AUTHORIZATION_FAILURE: u16 = 0x0202;
    pub const NOT_FOUND: u16 = 0x0203;
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    pub const MISSING_PARAMETER: u16 = 0x0207;
    pub const SESSION_TYPE_UNSUPPORTED: u16 = 0x0209;
    pub const SESSION_DOES_NOT_EXIST: u16 = 0x020a;
    pub const INVALID_DURING_LOGIN: u16 = 0x020b;
    pub const TARGET_ERROR: u16 = 0x0300;
}

/// Upper bound on text accumulated across Login PDUs with the C bit.
const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// The answer to a PDU that isn't a parseable Login Request during login:
/// a Login Response with status 0x0200 (initiator error), ITT echoed.
pub fn malformed_response(bhs: &[u8; 48]) -> Pdu {
    let b = crate::pdu::Bhs::new_unchecked(&bhs[..]);
    let r = LoginResponse {
        transit: false,
        cont: false,
        csg: Stage::Security,
        nsg: Stage::Security,
        version_max: 0,
        version_active: 0,
        isid: b.isid(),
        tsih: 0,
        itt: b.itt(),
        seq: SeqNums::default(),
        status_class: 0x02,
        status_detail: 0x00,
    };
    Pdu::new(r.emit(), Bytes::new())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// A discovery session: SendTargets=All lists what this initiator may
    /// reach. `chap_targets` are the targets whose CHAP secret the initiator
    /// proved it knows.
    Discovery {
        chap_targets: Vec<String>,
    },
    Normal {
        target: String,
    },
}

/// Everything the full-feature phase needs from a finished login.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    pub kind: SessionKind,
    pub params: Params,
    /// ExpCmdSN at the start of the full-feature phase.
    pub exp_cmd_sn: u32,
    /// The next StatSN to send.
    pub stat_sn: u32,
}

impl LoginOutcome {
    pub fn target(&self) -> Option<&str> {
        match &self.kind {
            SessionKind::Normal { target } => Some(target),
            SessionKind::Discovery { .. } => None,
        }
    }
}

/// Why a login failed, for the response status and the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub reason: String,
    pub initiator: Option<String>,
    pub target: Option<String>,
}

#[derive(Debug)]
pub enum Step {
    /// Send the response and wait for the next Login Request.
    Continue(Pdu),
    /// Send the failure response, then close the connection.
    Fail(Pdu, Failure),
    /// The initiator may enter the full-feature phase: open the LU of
    /// `target` (for a normal session), allocate a TSIH, and call
    /// [`Login::finish`] for the final response.
    Ready { target: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// No AuthMethod chosen yet.
    Start,
    WaitChapA,
    WaitChapResponse {
        id: u8,
        challenge: [u8; chap::CHALLENGE_LEN],
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Discovery,
}

pub struct Login {
    resolver: Arc<dyn TargetResolver>,
    offer: Offer,
    tpgt: u16,
    window: u32,
    started: bool,
    isid: [u8; 6],
    cid: u16,
    stage: Stage,
    initiator: Option<String>,
    target: Option<String>,
    kind: Kind,
    identity_checked: bool,
    target_auth: Option<TargetAuth>,
    /// The connection's remote address, for resolvers that bind credentials
    /// to addresses.
    peer: Option<IpAddr>,
    /// Set when the login must fail whatever the CHAP response: an unknown
    /// target or an initiator the target does not admit. Such logins run
    /// the same CHAP exchange as a real one and fail at the same step with
    /// the same status, so the wire does not tell a seat name from a guess.
    deny: Option<&'static str>,
    auth: Auth,
    chap_targets: Vec<String>,
    params: Params,
    pending_text: Vec<u8>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    sent_tpgt: bool,
    declared_mrdsl: bool,
    /// The final response under construction while the caller opens the LU.
    ready: Option<(LoginRequest, Vec<(String, String)>)>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("stage", &self.stage)
            .field("initiator", &self.initiator)
            .field("target", &self.target)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Login {
    pub fn new(resolver: Arc<dyn TargetResolver>, offer: Offer, tpgt: u16, window: u32) -> Login {
        Login {
            resolver,
            offer,
            tpgt,
            window: window.max(1),
            started: false,
            isid: [0; 6],
            cid: 0,
            stage: Stage::Security,
            initiator: None,
            target: None,
            kind: Kind::Normal,
            identity_checked: false,
            target_auth: None,
            peer: None,
            deny: None,
            auth: Auth::Start,
            chap_targets: Vec::new(),
            params: Params::default(),
            pending_text: Vec::new(),
            stat_sn: 0,
            exp_cmd_sn: 0,
            sent_tpgt: false,
            declared_mrdsl: false,
            ready: None,
        }
    }

    /// The connection's remote address, handed to [`TargetResolver::auth_from`].
    #[must_use]
    pub fn with_peer(mut self, peer: Option<IpAddr>) -> Login {
        self.peer = peer;
        self
    }

    /// The InitiatorName presented so far (for logs on a dropped login).
    pub fn initiator(&self) -> Option<&str> {
        self.initiator.as_deref()
    }

    fn failure(&self, status: u16, reason: impl Into<String>) -> Failure {
        Failure {
            status,
            reason: reason.into(),
            initiator: self.initiator.clone(),
            target: self.target.clone(),
        }
    }

    fn response(
        &mut self,
        req: &LoginRequest,
        transit: bool,
        nsg: Stage,
        tsih: u16,
        status: u16,
        pairs: &[(String, String)],
    ) -> Pdu {
        let r = LoginResponse {
            transit,
            cont: false,
            csg: req.csg,
            nsg: if transit { nsg } else { req.csg },
            version_max: 0,
            version_active: 0,
            isid: self.isid,
            tsih,
            itt: req.itt,
            seq: SeqNums {
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.exp_cmd_sn.wrapping_add(self.window - 1),
            },
            status_class: (status >> 8) as u8,
            status_detail: (status & 0xff) as u8,
        };
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Pdu::new(r.emit(), Bytes::from(text::emit(pairs)))
    }

    fn fail(&mut self, req: &LoginRequest, f: Failure) -> Step {
        let pdu = self.response(req, false, req.csg, 0, f.status, &[]);
        Step::Fail(pdu, f)
    }

    /// Handle one Login Request and its data segment.
    pub fn on_pdu(&mut self, req: &LoginRequest, data: &[u8]) -> Step {
        if !self.started {
            self.started = true;
            self.isid = req.isid;
            self.cid = req.cid;
            self.stat_sn = req.exp_stat_sn;
            if req.version_min > 0 {
                let f = self.failure(status::UNSUPPORTED_VERSION, "version-min above 0");
                return self.fail(req, f);
            }
            if req.tsih != 0 {
                // ERL 0 with MaxConnections=1: there is no session to join.
                let f = self.failure(
                    status::SESSION_DOES_NOT_EXIST,
                    "login with nonzero TSIH (adding a connection is not supported)",
                );
                return self.fail(req, f);
            }
        } else if req.isid != self.isid {
            let f = self.failure(status::INITIATOR_ERROR, "ISID changed during login");
            return self.fail(req, f);
        }
        self.exp_cmd_sn = req.cmd_sn;

        if self.pending_text.len() + data.len() > MAX_LOGIN_TEXT {
            let f = self.failure(status::INITIATOR_ERROR, "login text too long");
            return self.fail(req, f);
        }
        self.pending_text.extend_from_slice(data);
        if req.cont {
            return Step::Continue(self.response(req, false, req.csg, 0, status::SUCCESS, &[]));
        }
        let text = std::mem::take(&mut self.pending_text);
        let limits = TextLimits::default();
        let pairs = match text::parse(&text, limits) {
            Ok(p) => p,
            Err(e) => {
                let f = self.failure(status::INITIATOR_ERROR, format!("bad login text: {e}"));
                return self.fail(req, f);
            }
        };

        if req.csg == Stage::FullFeature || (req.csg as u8) < (self.stage as u8) {
            let f = self.failure(status::INITIATOR_ERROR, "invalid login stage");
            return self.fail(req, f);
        }

        let mut reply: Vec<(String, String)> = Vec::new();
        let mut auth_method: Option<String> = None;
        let mut chap_keys: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "InitiatorName" => self.initiator = Some(v),
                "TargetName" => self.target = Some(v),
                "InitiatorAlias" => {}
                "SessionType" => match v.as_str() {
                    "Normal" => self.kind = Kind::Normal,
                    "Discovery" => self.kind = Kind::Discovery,
                    _ => {
                        let f =
                            self.failure(status::SESSION_TYPE_UNSUPPORTED, "unknown SessionType");
                        return self.fail(req, f);
                    }
                },
                "AuthMethod" => auth_method = Some(v),
                "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R" => chap_keys.push((k, v)),
                _ => match self.params.negotiate(&k, &v, &self.offer) {
                    Answer::Reply(a) => reply.push((k, a)),
                    Answer::Silent => {}
                    Answer::Unknown => reply.push((k, "NotUnderstood".to_owned())),
                },
            }
        }
        self.params.settle();

        if !self.identity_checked {
            if let Err(f) = self.check_identity() {
                return self.fail(req, f);
            }
            self.identity_checked = true;
        }

        let chap_required = self.chap_required();
        if req.csg == Stage::Security {
            if let Some(list) = auth_method {
                match self.choose_auth(&list) {
                    Some(choice) => {
                        self.auth = if choice == "CHAP" {
                            Auth::WaitChapA
                        } else {
                            Auth::Done
                        };
                        reply.push(("AuthMethod".to_owned(), choice.to_owned()));
                    }
                    None => {
                        let f = self.failure(
                            status::AUTH_FAILURE,
                            format!("no acceptable AuthMethod in {list:?}"),
                        );
                        return self.fail(req, f);
                    }
                }
            }
            if !chap_keys.is_empty() {
                match self.chap_step(&chap_keys) {
                    Ok(mut pairs) => reply.append(&mut pairs),
                    Err(f) => return self.fail(req, f),
                }
            }
            if self.auth == Auth::Start && req.transit && !chap_required {
                // Security stage without AuthMethod: nothing to authenticate.
                self.auth = Auth::Done;
            }
        } else if self.auth != Auth::Done {
            if chap_required {
                let f = self.failure(status::AUTH_FAILURE, "security stage skipped");
                return self.fail(req, f);
            }
            self.auth = Auth::Done;
        }

        let transit = req.transit && self.auth == Auth::Done;
        if transit && req.nsg == Stage::Security {
            let f = self.failure(status::INITIATOR_ERROR, "transit back to security stage");
            return self.fail(req, f);
        }

        if self.kind == Kind::Normal && !self.sent_tpgt {
            self.sent_tpgt = true;
            reply.push(("TargetPortalGroupTag".to_owned(), self.tpgt.to_string()));
        }
        // Declared in an operational-stage response (or the final one when
        // the initiator skips that stage), never mixed into CHAP exchanges.
        if !self.declared_mrdsl
            && (req.csg == Stage::Operational || (transit && req.nsg == Stage::FullFeature))
        {
            self.declared_mrdsl = true;
            reply.push(self.params.declare_target_mrdsl(&self.offer));
        }

        if transit && req.nsg == Stage::FullFeature {
            self.ready = Some((req.clone(), reply));
            return Step::Ready {
                target: match self.kind {
                    Kind::Normal => self.target.clone(),
                    Kind::Discovery => None,
                },
            };
        }
        if transit {
            self.stage = req.nsg;
        }
        Step::Continue(self.response(req, transit, req.nsg, 0, status::SUCCESS, &reply))
    }

    /// Produce the final login response once the LU is open (or failed to
    /// open) and a TSIH is allocated.
    // The error carries the failure PDU by value; logins are rare enough
    // that boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    pub fn finish(
        &mut self,
        tsih: u16,
        lu: Result<(), String>,
    ) -> Result<(Pdu, LoginOutcome), (Pdu, Failure)> {
        let Some((req, reply)) = self.ready.take() else {
            let f = self.failure(status::TARGET_ERROR, "finish called before Ready");
            let req = LoginRequest {
                transit: false,
                cont: false,
                csg: Stage::Operational,
                nsg: Stage::Operational,
                version_max: 0,
                version_min: 0,
                isid: self.isid,
                tsih: 0,
                itt: 0,
                cid: self.cid,
                cmd_sn: self.exp_cmd_sn,
                exp_stat_sn: self.stat_sn,
            };
            let pdu = self.response(&req, false, Stage::Operational, 0, f.status, &[]);
            return Err((pdu, f));
        };
        if let Err(e) = lu {
            let f = self.failure(status::TARGET_ERROR, format!("cannot open LUN 0: {e}"));
            let pdu = self.response(&req, false, req.csg, 0, f.status, &[]);
            return Err((pdu, f));
        }
        let pdu = self.response(
            &req,
            true,
            Stage::FullFeature,
            tsih,
            status::SUCCESS,
            &reply,
        );
        let kind = match self.kind {
            Kind::Normal => SessionKind::Normal {
                target: self.target.clone().unwrap_or_default(),
            },
            Kind::Discovery => SessionKind::Discovery {
                chap_targets: self.chap_targets.clone(),
            },
        };
        let outcome = LoginOutcome {
            initiator: self.initiator.clone().unwrap_or_default(),
            isid: self.isid,
            tsih,
            cid: self.cid,
            kind,
            params: self.params,
            exp_cmd_sn: self.exp_cmd_sn,
            stat_sn: self.stat_sn,
        };
        Ok((pdu, outcome))
    }

    fn check_identity(&mut self) -> Result<(), Failure> {
        let Some(initiator) = self.initiator.clone().filter(|s| !s.is_empty()) else {
            return Err(self.failure(status::MISSING_PARAMETER, "InitiatorName missing"));
        };
        if self.kind == Kind::Discovery {
            return Ok(());
        }
        let Some(target) = self.target.clone().filter(|s| !s.is_empty()) else {
            return Err(self.failure(status::MISSING_PARAMETER, "TargetName missing"));
        };
        let auth = match self.resolver.auth_from(&target, self.peer) {
            Some(auth) => auth,
            None => {
                self.deny = Some("no such target");
                decoy_auth()
            }
        };
        if let Some(allowed) = &auth.allowed_initiator
            && *allowed != initiator
        {
            if !auth.requires_chap() {
                return Err(self.failure(
                    status::AUTH_FAILURE,
                    "initiator is not allowed on this target",
                ));
            }
            self.deny
                .get_or_insert("initiator is not allowed on this target");
        }
        self.target_auth = Some(auth);
        Ok(())
    }

    fn chap_required(&self) -> bool {
        match self.kind {
            Kind::Normal => self
                .target_auth
                .as_ref()
                .is_some_and(TargetAuth::requires_chap),
            // Discovery never requires CHAP: unauthenticated initiators just
            // see the targets that need no credentials.
            Kind::Discovery => false,
        }
    }

    fn choose_auth(&self, list: &str) -> Option<&'static str> {
        let offered = |m: &str| list.split(',').any(|x| x.trim() == m);
        match self.kind {
            Kind::Normal => {
                if self.chap_required() {
                    offered("CHAP").then_some("CHAP")
                } else {
                    offered("None").then_some("None")
                }
            }
            Kind::Discovery => {
                let any_chap = self.resolver.targets().iter().any(|t| {
                    self.resolver
                        .auth_from(t, self.peer)
                        .is_some_and(|a| a.requires_chap())
                });
                if any_chap && offered("CHAP") {
                    Some("CHAP")
                } else if offered("None") {
                    Some("None")
                } else {
                    None
                }
            }
        }
    }

    fn chap_step(&mut self, keys: &[(String, String)]) -> Result<Vec<(String, String)>, Failure> {
        let get = |name: &str| {
            keys.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(algs) = get("CHAP_A") {
            if self.auth != Auth::WaitChapA {
                return Err(self.failure(status::AUTH_FAILURE, "unexpected CHAP_A"));
            }
            if !chap::offers_md5(algs) {
                return Err(self.failure(status::AUTH_FAILURE, "CHAP_A without MD5"));
            }
            let mut rng = rand::rng();
            let id: u8 = rng.random();
            let mut challenge = [0u8; chap::CHALLENGE_LEN];
            rng.fill(&mut challenge[..]);
            self.auth = Auth::WaitChapResponse { id, challenge };
            return Ok(vec![
                ("CHAP_A".to_owned(), chap::CHAP_MD5.to_owned()),
                ("CHAP_I".to_owned(), id.to_string()),
                ("CHAP_C".to_owned(), chap::encode_hex(&challenge)),
            ]);
        }
        let Auth::WaitChapResponse { id, challenge } = self.auth.clone() else {
            return Err(self.failure(status::AUTH_FAILURE, "CHAP response out of sequence"));
        };
        let (Some(name), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) else {
            return Err(self.failure(status::AUTH_FAILURE, "CHAP_N or CHAP_R missing"));
        };
        let Some(resp) = chap::decode_binary(resp) else {
            return Err(self.failure(status::AUTH_FAILURE, "CHAP_R is not a binary value"));
        };
        let proves = |s: &ChapSecret| {
            s.user == name
                && chap::verify(&chap::response(id, s.secret.as_bytes(), &challenge), &resp)
        };

        let mutual: Option<ChapSecret>;
        match self.kind {
            Kind::Normal => {
                let auth = self.target_auth.clone().unwrap_or_default();
                // Every credential is checked, so the time does not say which
                // one (or whether any) matched.
                let matched = auth.chap.iter().fold(None, |found, c| {
                    let ok = proves(&c.initiator);
                    found.or(ok.then_some(c))
                });
                let Some(matched) = matched.filter(|_| self.deny.is_none()) else {
                    // One status for every refusal (RFC 7143 §11.13.5: class 2
                    // tells the initiator not to retry as is); the reason stays
                    // in the event log.
                    let target = self.target.clone().unwrap_or_default();
                    self.resolver.chap_refused(&target, name, self.peer);
                    let reason = self.deny.unwrap_or("CHAP response does not verify");
                    return Err(self.failure(status::AUTH_FAILURE, reason));
                };
                let target = self.target.clone().unwrap_or_default();
                self.resolver.chap_accepted(&target, name, self.peer);
                mutual = matched.target.clone();
            }
            Kind::Discovery => {
                let mut first_mutual = None;
                for t in self.resolver.targets() {
                    let auth = self.resolver.auth_from(&t, self.peer);
                    if let Some(c) = auth
                        .as_ref()
                        .and_then(|a| a.chap.iter().find(|c| proves(&c.initiator)))
                    {
                        if first_mutual.is_none() {
                            first_mutual = c.target.clone();
                        }
                        self.chap_targets.push(t);
                    }
                }
                if self.chap_targets.is_empty() {
                    return Err(self.failure(status::AUTH_FAILURE, "CHAP response does not verify"));
                }
                mutual = first_mutual;
            }
        }

        let mut out = Vec::new();
        if let Some(ci) = get("CHAP_I") {
            let Some(their_id) = chap::parse_id(ci) else {
                return Err(self.failure(status::AUTH_FAILURE, "bad CHAP_I"));
            };
            let Some(their_c) = get("CHAP_C").and_then(chap::decode_binary) else {
                return Err(self.failure(status::AUTH_FAILURE, "mutual CHAP without CHAP_C"));
            };
            if their_c.is_empty() || their_c.len() > 1024 {
                return Err(self.failure(status::AUTH_FAILURE, "bad CHAP_C length"));
            }
            if their_c[..] == challenge[..] {
                return Err(self.failure(status::AUTH_FAILURE, "reflected CHAP challenge"));
            }
            let Some(m) = mutual else {
                return Err(self.failure(
                    status::AUTH_FAILURE,
                    "mutual CHAP requested but not configured",
                ));
            };
            let r = chap::response(their_id, m.secret.as_bytes(), &their_c);
            out.push(("CHAP_N".to_owned(), m.user));
            out.push(("CHAP_R".to_owned(), chap::encode_hex(&r)));
        }
        self.auth = Auth::Done;
        Ok(out)
    }
}

/// What an unknown target answers with: CHAP with a random secret nobody
/// knows, so the login takes the same steps and time as a real one.
fn decoy_auth() -> TargetAuth {
    let mut secret = [0u8; 16];
    rand::rng().fill(&mut secret[..]);
    TargetAuth {
        chap: vec![Credential::one_way(ChapSecret::new(
            "",
            chap::encode_hex(&secret),
        ))],
        allowed_initiator: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
pub(crate) mod tests {
    use super::*;
    use crate::pdu::{Bhs, LoginResponse};
    use crate::resolver::{IscsiEvent, LunIdentity};
    use parking_lot::Mutex;

    #[derive(Default)]
    pub(crate) struct FakeResolver {
        pub targets: Vec<(String, TargetAuth)>,
        pub events: Mutex<Vec<IscsiEvent>>,
        pub refused: Mutex<Vec<(String, String, Option<IpAddr>)>>,
        pub accepted: Mutex<Vec<(String, String)>>,
    }

    impl TargetResolver for FakeResolver {
        fn targets(&self) -> Vec<String> {
            self.targets.iter().map(|(t, _)| t.clone()).collect()
        }
        fn auth(&self, target: &str) -> Option<TargetAuth> {
            self.targets
                .iter()
                .find(|(t, _)| t == target)
                .map(|(_, a)| a.clone())
        }
        fn open_lun0(&self, _target: &str) -> Result<khoi_block::Checked, String> {
            Err("no disks in this fake".into())
        }
        fn identity(&self, _target: &str) -> LunIdentity {
            LunIdentity {
                serial: "S1".into(),
                naa: [0x60; 16],
            }
        }
        fn event(&self, ev: IscsiEvent) {
            self.events.lock().push(ev);
        }
        fn chap_refused(&self, target: &str, user: &str, peer: Option<IpAddr>) {
            self.refused
                .lock()
                .push((target.to_string(), user.to_string(), peer));
        }
        fn chap_accepted(&self, target: &str, user: &str, _peer: Option<IpAddr>) {
            self.accepted
                .lock()
                .push((target.to_string(), user.to_string()));
        }
    }

    pub(crate) fn resolver() -> Arc<FakeResolver> {
        Arc::new(FakeResolver {
            targets: vec![
                (
                    "iqn.2025-01.vn.khoi:seat01".into(),
                    TargetAuth {
                        chap: vec![Credential::mutual(
                            ChapSecret::new("seat01", "secret-seat-01"),
                            ChapSecret::new("khoi", "target-secret-1"),
                        )],
                        allowed_initiator: None,
                    },
                ),
                (
                    "iqn.2025-01.vn.khoi:seat02".into(),
                    TargetAuth {
                        chap: vec![Credential::one_way(ChapSecret::new(
                            "seat02",
                            "secret-seat-02",
                        ))],
                        allowed_initiator: Some("iqn.2010-04.org.ipxe:seat02".into()),
                    },
                ),
                ("iqn.2025-01.vn.khoi:open".into(), TargetAuth::default()),
            ],
            events: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
        })
    }

    fn req(csg: Stage, nsg: Stage, transit: bool) -> LoginRequest {
        LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x40, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    fn parse_resp(p: &Pdu) -> (LoginResponse, Vec<(String, String)>) {
        let r = LoginResponse::parse(&Bhs::new_unchecked(&p.bhs[..])).unwrap();
        (r, text::parse(&p.data, TextLimits::default()).unwrap())
    }

    fn get<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
        pairs
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }

    fn cont(step: Step) -> (LoginResponse, Vec<(String, String)>) {
        match step {
            Step::Continue(p) => parse_resp(&p),
            other => panic!("expected Continue, got {other:?}"),
        }
    }

    fn fail_status(step: Step) -> u16 {
        match step {
            Step::Fail(p, f) => {
                let (r, _) = parse_resp(&p);
                assert_eq!(
                    u16::from(r.status_class) << 8 | u16::from(r.status_detail),
                    f.status
                );
                f.status
            }
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    /// Drive an iPXE-style CHAP login; returns the step after CHAP_R.
    fn ipxe_chap(target: &str, user: &str, secret: &str, mutual: bool) -> (Login, Step) {
        let r = resolver();
        let mut l = Login::new(r, Offer::default(), 1, 128);
        let first = format!(
            "InitiatorName=iqn.2010-04.org.ipxe:seat01\0TargetName={target}\0SessionType=Normal\0AuthMethod=CHAP,None\0"
        );
        let (resp, pairs) = cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            first.as_bytes(),
        ));
        assert!(!resp.transit, "must not leave security before CHAP");
        assert_eq!(get(&pairs, "AuthMethod"), Some("CHAP"));
        assert_eq!(get(&pairs, "TargetPortalGroupTag"), Some("1"));
        assert_eq!(resp.status_class, 0);

        let (resp, pairs) = cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            b"CHAP_A=5\0",
        ));
        assert!(!resp.transit);
        assert_eq!(get(&pairs, "CHAP_A"), Some("5"));
        let id: u8 = get(&pairs, "CHAP_I").unwrap().parse().unwrap();
        let c = chap::decode_binary(get(&pairs, "CHAP_C").unwrap()).unwrap();
        let r = chap::response(id, secret.as_bytes(), &c);
        let mut text = format!("CHAP_N={user}\0CHAP_R={}\0", chap::encode_hex(&r));
        if mutual {
            text.push_str("CHAP_I=7\0CHAP_C=0xa1a2a3a4a5a6a7a8a9aaabacadaeafb0\0");
        }
        let step = l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            text.as_bytes(),
        );
        (l, step)
    }

    #[test]
    fn ipxe_chap_login_succeeds() {
        let (mut l, step) = ipxe_chap(
            "iqn.2025-01.vn.khoi:seat01",
            "seat01",
            "secret-seat-01",
            true,
        );
        let (resp, pairs) = cont(step);
        assert!(resp.transit);
        assert_eq!(resp.nsg, Stage::Operational);
        assert_eq!(get(&pairs, "CHAP_N"), Some("khoi"));
        let c = chap::decode_binary("0xa1a2a3a4a5a6a7a8a9aaabacadaeafb0").unwrap();
        let want = chap::encode_hex(&chap::response(7, b"target-secret-1", &c));
        assert_eq!(get(&pairs, "CHAP_R"), Some(want.as_str()));

        let ops = b"HeaderDigest=None\0DataDigest=None\0MaxConnections=1\0InitialR2T=Yes\0ImmediateData=No\0MaxRecvDataSegmentLength=8192\0MaxBurstLength=262144\0FirstBurstLength=65536\0DefaultTime2Wait=0\0DefaultTime2Retain=0\0MaxOutstandingR2T=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0ErrorRecoveryLevel=0\0";
        let step = l.on_pdu(&req(Stage::Operational, Stage::FullFeature, true), ops);
        assert!(
            matches!(step, Step::Ready { target: Some(ref t) } if t == "iqn.2025-01.vn.khoi:seat01")
        );
        let (pdu, out) = l.finish(0x11, Ok(())).unwrap();
        let (resp, pairs) = parse_resp(&pdu);
        assert!(resp.transit);
        assert_eq!(resp.nsg, Stage::FullFeature);
        assert_eq!(resp.tsih, 0x11);
        assert_eq!(get(&pairs, "MaxRecvDataSegmentLength"), Some("262144"));
        assert_eq!(get(&pairs, "ImmediateData"), Some("No"));
        assert!(pairs.iter().all(|(_, v)| v != "Reject"));
        assert_eq!(out.params.initiator_mrdsl, 8192);
        assert!(out.params.initial_r2t);
        assert_eq!(out.exp_cmd_sn, 1);
        assert_eq!(out.tsih, 0x11);
    }

    #[test]
    fn wrong_secret_is_auth_failure() {
        let (_, step) = ipxe_chap("iqn.2025-01.vn.khoi:seat01", "seat01", "wrong", false);
        assert_eq!(fail_status(step), status::AUTH_FAILURE);
    }

    #[test]
    fn other_targets_credentials_fail_like_a_wrong_secret() {
        // seat02's valid credentials presented to seat01: the same status as
        // any wrong secret (issue 10: failures tell nothing about targets).
        let (_, step) = ipxe_chap(
            "iqn.2025-01.vn.khoi:seat01",
            "seat02",
            "secret-seat-02",
            false,
        );
        assert_eq!(fail_status(step), status::AUTH_FAILURE);
    }

    /// Issue 10 attack: iSCSI login failures told which seat names exist
    /// (0x0203 at once for a guess, a CHAP challenge for a seat). Now an
    /// unknown target, a target that does not admit the initiator, and a
    /// wrong secret all get a CHAP challenge and then 0x0201, with the same
    /// keys in every response.
    #[test]
    fn unknown_and_known_targets_fail_alike() {
        let shape = |target: &str, user: &str, secret: &str| {
            let r = resolver();
            let mut l = Login::new(r.clone(), Offer::default(), 1, 128)
                .with_peer(Some("10.0.0.9".parse().unwrap()));
            let first = format!(
                "InitiatorName=iqn.2010-04.org.ipxe:seat01\0TargetName={target}\0AuthMethod=CHAP,None\0"
            );
            let (r1, p1) = cont(l.on_pdu(
                &req(Stage::Security, Stage::Operational, true),
                first.as_bytes(),
            ));
            let (r2, p2) = cont(l.on_pdu(
                &req(Stage::Security, Stage::Operational, true),
                b"CHAP_A=5\0",
            ));
            let id: u8 = get(&p2, "CHAP_I").unwrap().parse().unwrap();
            let c = chap::decode_binary(get(&p2, "CHAP_C").unwrap()).unwrap();
            let rr = chap::encode_hex(&chap::response(id, secret.as_bytes(), &c));
            let step = l.on_pdu(
                &req(Stage::Security, Stage::Operational, true),
                format!("CHAP_N={user}\0CHAP_R={rr}\0").as_bytes(),
            );
            let keys =
                |p: &[(String, String)]| p.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
            let refused = r.refused.lock().clone();
            (
                (r1.status_class, r1.transit, keys(&p1)),
                (r2.status_class, keys(&p2)),
                fail_status(step),
                refused,
            )
        };
        let wrong = shape("iqn.2025-01.vn.khoi:seat01", "seat01", "wrong");
        let unknown = shape("iqn.2025-01.vn.khoi:nope", "seat01", "secret-seat-01");
        let unbound = shape("iqn.2025-01.vn.khoi:seat02", "seat02", "secret-seat-02");
        assert_eq!(wrong.2, status::AUTH_FAILURE);
        for other in [&unknown, &unbound] {
            assert_eq!(other.0, wrong.0);
            assert_eq!(other.1, wrong.1);
            assert_eq!(other.2, wrong.2);
        }
        // The resolver hears of each refusal with the name and address used.
        assert_eq!(
            unknown.3,
            vec![(
                "iqn.2025-01.vn.khoi:nope".to_string(),
                "seat01".to_string(),
                Some("10.0.0.9".parse().unwrap())
            )]
        );
        // Only AuthMethod=None to an unknown target: the same refusal as to a
        // CHAP seat.
        let none = |target: &str| {
            let mut l = Login::new(resolver(), Offer::default(), 1, 128);
            fail_status(l.on_pdu(
                &req(Stage::Security, Stage::Operational, true),
                format!("InitiatorName=iqn.x:y\0TargetName={target}\0AuthMethod=None\0").as_bytes(),
            ))
        };
        assert_eq!(none("iqn.nope"), none("iqn.2025-01.vn.khoi:seat01"));
    }

    /// A seat's running boot and the boot its script fetch offered both open
    /// it; the resolver learns which one logged in, before the LU opens, and
    /// the target proves itself with the secret of the boot that logged in.
    #[test]
    fn any_of_a_targets_credentials_and_which_one_is_reported() {
        let mut r = FakeResolver::default();
        r.targets.push((
            "iqn.2025-01.vn.khoi:seat01".into(),
            TargetAuth {
                chap: vec![
                    Credential::mutual(
                        ChapSecret::new("seat01.a", "running-boot-1"),
                        ChapSecret::new("iqn.2025-01.vn.khoi:seat01", "target-of-boot-1"),
                    ),
                    Credential::mutual(
                        ChapSecret::new("seat01.b", "offered-boot-2"),
                        ChapSecret::new("iqn.2025-01.vn.khoi:seat01", "target-of-boot-2"),
                    ),
                ],
                allowed_initiator: None,
            },
        ));
        let r = Arc::new(r);
        for (user, secret, ok) in [
            ("seat01.a", "running-boot-1", true),
            ("seat01.b", "offered-boot-2", true),
            ("seat01.a", "offered-boot-2", false),
        ] {
            let mut l = Login::new(r.clone(), Offer::default(), 1, 128);
            cont(l.on_pdu(
                &req(Stage::Security, Stage::Operational, true),
                b"InitiatorName=iqn.x:y\0TargetName=iqn.2025-01.vn.khoi:seat01\0AuthMethod=CHAP\0",
            ));
            let (_, p) = cont(l.on_pdu(
                &req(Stage::Security, Stage::Operational, true),
                b"CHAP_A=5\0",
            ));
            let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
            let c = chap::decode_binary(get(&p, "CHAP_C").unwrap()).unwrap();
            let rr = chap::encode_hex(&chap::response(id, secret.as_bytes(), &c));
            let step = l.on_pdu(
                &req(Stage::Security, Stage::Operational, true),
                format!("CHAP_N={user}\0CHAP_R={rr}\0CHAP_I=9\0CHAP_C=0x0102030405060708\0")
                    .as_bytes(),
            );
            if ok {
                let (resp, pairs) = cont(step);
                assert!(resp.transit, "{user}");
                let theirs = chap::decode_binary("0x0102030405060708").unwrap();
                let target_secret = if user == "seat01.a" {
                    "target-of-boot-1"
                } else {
                    "target-of-boot-2"
                };
                let want = chap::encode_hex(&chap::response(9, target_secret.as_bytes(), &theirs));
                assert_eq!(get(&pairs, "CHAP_R"), Some(want.as_str()), "{user}");
            } else {
                assert_eq!(fail_status(step), status::AUTH_FAILURE);
            }
        }
        let seat = "iqn.2025-01.vn.khoi:seat01".to_string();
        assert_eq!(
            *r.accepted.lock(),
            vec![(seat.clone(), "seat01.a".into()), (seat, "seat01.b".into())]
        );
        assert_eq!(r.refused.lock().len(), 1);
    }

    #[test]
    fn peer_reaches_the_resolver() {
        struct ByPeer;
        impl TargetResolver for ByPeer {
            fn targets(&self) -> Vec<String> {
                vec!["t".into()]
            }
            fn auth(&self, _: &str) -> Option<TargetAuth> {
                None
            }
            fn auth_from(&self, _: &str, peer: Option<IpAddr>) -> Option<TargetAuth> {
                (peer == Some("10.1.1.1".parse().unwrap())).then(TargetAuth::default)
            }
            fn open_lun0(&self, _: &str) -> Result<khoi_block::Checked, String> {
                Err("none".into())
            }
            fn identity(&self, _: &str) -> LunIdentity {
                LunIdentity {
                    serial: "S".into(),
                    naa: [0x60; 16],
                }
            }
            fn event(&self, _: IscsiEvent) {}
        }
        let text = b"InitiatorName=iqn.x:y\0TargetName=t\0AuthMethod=None\0";
        let mut l = Login::new(Arc::new(ByPeer), Offer::default(), 1, 128)
            .with_peer(Some("10.1.1.1".parse().unwrap()));
        assert!(matches!(
            l.on_pdu(&req(Stage::Security, Stage::FullFeature, true), text),
            Step::Ready { .. }
        ));
        let mut l = Login::new(Arc::new(ByPeer), Offer::default(), 1, 128)
            .with_peer(Some("10.1.1.2".parse().unwrap()));
        assert_eq!(
            fail_status(l.on_pdu(&req(Stage::Security, Stage::FullFeature, true), text)),
            status::AUTH_FAILURE
        );
    }

    #[test]
    fn reflected_challenge_rejected() {
        let r = resolver();
        let mut l = Login::new(r, Offer::default(), 1, 128);
        cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            b"InitiatorName=iqn.x:y\0TargetName=iqn.2025-01.vn.khoi:seat01\0AuthMethod=CHAP\0",
        ));
        let (_, pairs) = cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            b"CHAP_A=5\0",
        ));
        let id: u8 = get(&pairs, "CHAP_I").unwrap().parse().unwrap();
        let cs = get(&pairs, "CHAP_C").unwrap().to_owned();
        let c = chap::decode_binary(&cs).unwrap();
        let rr = chap::encode_hex(&chap::response(id, b"secret-seat-01", &c));
        let text = format!("CHAP_N=seat01\0CHAP_R={rr}\0CHAP_I={id}\0CHAP_C={cs}\0");
        let s = l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            text.as_bytes(),
        );
        assert_eq!(fail_status(s), status::AUTH_FAILURE);
    }

    #[test]
    fn chap_target_refuses_auth_none() {
        let mut l = Login::new(resolver(), Offer::default(), 1, 128);
        let s = l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            b"InitiatorName=iqn.x:y\0TargetName=iqn.2025-01.vn.khoi:seat01\0AuthMethod=None\0",
        );
        assert_eq!(fail_status(s), status::AUTH_FAILURE);
        // Jumping straight to the operational stage doesn't dodge CHAP.
        let mut l = Login::new(resolver(), Offer::default(), 1, 128);
        let s = l.on_pdu(
            &req(Stage::Operational, Stage::FullFeature, true),
            b"InitiatorName=iqn.x:y\0TargetName=iqn.2025-01.vn.khoi:seat01\0",
        );
        assert_eq!(fail_status(s), status::AUTH_FAILURE);
    }

    #[test]
    fn open_target_single_pdu_login() {
        let mut l = Login::new(resolver(), Offer::default(), 1, 128);
        let s = l.on_pdu(
            &req(Stage::Security, Stage::FullFeature, true),
            b"InitiatorName=iqn.x:y\0TargetName=iqn.2025-01.vn.khoi:open\0AuthMethod=None\0X-foo=bar\0",
        );
        assert!(matches!(s, Step::Ready { .. }));
        let (pdu, _) = l.finish(3, Ok(())).unwrap();
        let (resp, pairs) = parse_resp(&pdu);
        assert_eq!(get(&pairs, "X-foo"), Some("NotUnderstood"));
        assert_eq!(get(&pairs, "AuthMethod"), Some("None"));
        assert_eq!(resp.tsih, 3);
        // The LU failing to open turns the final response into a target error.
        let mut l = Login::new(resolver(), Offer::default(), 1, 128);
        l.on_pdu(
            &req(Stage::Security, Stage::FullFeature, true),
            b"InitiatorName=iqn.x:y\0TargetName=iqn.2025-01.vn.khoi:open\0AuthMethod=None\0",
        );
        let (pdu, f) = l.finish(3, Err("gone".into())).unwrap_err();
        assert_eq!(f.status, status::TARGET_ERROR);
        assert_eq!(parse_resp(&pdu).0.status_class, 3);
    }

    #[test]
    fn discovery_with_chap_records_proven_targets() {
        let mut l = Login::new(resolver(), Offer::default(), 1, 128);
        let (resp, pairs) = cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            b"InitiatorName=iqn.x:y\0SessionType=Discovery\0AuthMethod=CHAP,None\0",
        ));
        assert!(!resp.transit);
        assert_eq!(get(&pairs, "AuthMethod"), Some("CHAP"));
        assert_eq!(get(&pairs, "TargetPortalGroupTag"), None);
        let (_, pairs) = cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            b"CHAP_A=5\0",
        ));
        let id: u8 = get(&pairs, "CHAP_I").unwrap().parse().unwrap();
        let c = chap::decode_binary(get(&pairs, "CHAP_C").unwrap()).unwrap();
        let rr = chap::encode_hex(&chap::response(id, b"secret-seat-02", &c));
        let (resp, _) = cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            format!("CHAP_N=seat02\0CHAP_R={rr}\0").as_bytes(),
        ));
        assert!(resp.transit);
        assert!(matches!(
            l.on_pdu(&req(Stage::Operational, Stage::FullFeature, true), b""),
            Step::Ready { target: None }
        ));
        let (_, out) = l.finish(9, Ok(())).unwrap();
        assert_eq!(
            out.kind,
            SessionKind::Discovery {
                chap_targets: vec!["iqn.2025-01.vn.khoi:seat02".into()]
            }
        );
    }

    #[test]
    fn base64_chap_response_accepted() {
        use base64::Engine as _;
        let mut l = Login::new(resolver(), Offer::default(), 1, 128);
        cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            b"InitiatorName=iqn.x:y\0TargetName=iqn.2025-01.vn.khoi:seat01\0AuthMethod=CHAP\0",
        ));
        let (_, pairs) = cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            b"CHAP_A=7,5\0",
        ));
        let id: u8 = get(&pairs, "CHAP_I").unwrap().parse().unwrap();
        let c = chap::decode_binary(get(&pairs, "CHAP_C").unwrap()).unwrap();
        let r = chap::response(id, b"secret-seat-01", &c);
        let b64 = base64::engine::general_purpose::STANDARD.encode(r);
        let (resp, _) = cont(l.on_pdu(
            &req(Stage::Security, Stage::Operational, true),
            format!("CHAP_N=seat01\0CHAP_R=0b{b64}\0").as_bytes(),
        ));
        assert!(resp.transit);
    }

    #[test]
    fn nonzero_tsih_and_bad_version() {
        let mut l = Login::new(resolver(), Offer::default(), 1, 128);
        let mut r = req(Stage::Security, Stage::Operational, true);
        r.tsih = 5;
        assert_eq!(
            fail_status(l.on_pdu(&r, b"")),
            status::SESSION_DOES_NOT_EXIST
        );
        let mut l = Login::new(resolver(), Offer::default(), 1, 128);
        let mut r = req(Stage::Security, Stage::Operational, true);
        r.version_min = 2;
        r.version_max = 2;
        assert_eq!(fail_status(l.on_pdu(&r, b"")), status::UNSUPPORTED_VERSION);
    }
}
