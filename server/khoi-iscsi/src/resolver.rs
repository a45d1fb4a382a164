//! The policy seam: which targets exist, who may log in, and the disk behind
//! each. The `khoi` binary implements [`TargetResolver`] over its state.

use crate::text::Offer;

/// A CHAP user name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecret {
    pub user: String,
    pub secret: String,
}

impl ChapSecret {
    pub fn new(user: impl Into<String>, secret: impl Into<String>) -> Self {
        ChapSecret {
            user: user.into(),
            secret: secret.into(),
        }
    }
}

impl std::fmt::Debug for ChapSecret {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecret")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// One set of credentials that opens a target: what the initiator proves,
/// and what the target answers with when the initiator asks for mutual CHAP.
/// Each boot carries its own pair, so the target's answer to one boot's
/// initiator proves nothing to a login with another boot's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub initiator: ChapSecret,
    pub target: Option<ChapSecret>,
}

impl Credential {
    /// One-way CHAP: the target does not prove itself.
    pub fn one_way(initiator: ChapSecret) -> Self {
        Credential {
            initiator,
            target: None,
        }
    }

    pub fn mutual(initiator: ChapSecret, target: ChapSecret) -> Self {
        Credential {
            initiator,
            target: Some(target),
        }
    }
}

/// Who may log in to a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetAuth {
    /// Credentials any one of which opens the target (a seat's running boot
    /// and the boot its last script fetch offered). Empty: no CHAP.
    pub chap: Vec<Credential>,
    /// Only this InitiatorName may log in.
    pub allowed_initiator: Option<String>,
}

impl TargetAuth {
    pub fn requires_chap(&self) -> bool {
        !self.chap.is_empty()
    }
}

/// Stable identity of the LU behind a target (VPD 80h and 83h).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunIdentity {
    /// Unit serial number: printable ASCII, stable across boots.
    pub serial: String,
    /// NAA IEEE Registered Extended (type 6) designator, 16 bytes, first
    /// nibble 6.
    pub naa: [u8; 16],
}

/// Things the binary records (login failures, full overlays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IscsiEvent {
    LoginFailed {
        peer: String,
        initiator: Option<String>,
        target: Option<String>,
        /// Login status class << 8 | detail, e.g. 0x0201.
        status: u16,
        reason: String,
    },
    LoggedIn {
        peer: String,
        initiator: String,
        target: Option<String>,
        tsih: u16,
    },
    /// A write failed because the seat's overlay is full; the initiator got
    /// DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT.
    SpaceAllocationFailed {
        target: String,
        initiator: String,
        detail: String,
    },
    SessionEnded {
        peer: String,
        initiator: String,
        target: Option<String>,
        tsih: u16,
    },
}

pub trait TargetResolver: Send + Sync + 'static {
    /// All target IQNs.
    fn targets(&self) -> Vec<String>;
    /// `None` means no such target.
    fn auth(&self, target: &str) -> Option<TargetAuth>;
    /// Who may log in to `target` over a connection from `peer`: a resolver
    /// that binds credentials to addresses answers here. `None` means no such
    /// target; the login then fails exactly like a wrong password, so the
    /// wire does not tell which targets exist.
    fn auth_from(&self, target: &str, peer: Option<std::net::IpAddr>) -> Option<TargetAuth> {
        let _ = peer;
        self.auth(target)
    }
    /// A normal login to `target` (as the initiator named it) from `peer`
    /// presented CHAP name `user` and was refused: the response did not
    /// verify, or the target does not exist or does not admit this
    /// initiator. The binary turns these into events and backoff.
    fn chap_refused(&self, target: &str, user: &str, peer: Option<std::net::IpAddr>) {
        let _ = (target, user, peer);
    }
    /// A normal login to `target` from `peer` proved CHAP name `user`. Called
    /// before the LU is opened, so a resolver can act on which of the
    /// target's credentials was used (a boot beginning).
    fn chap_accepted(&self, target: &str, user: &str, peer: Option<std::net::IpAddr>) {
        let _ = (target, user, peer);
    }
    /// The disk at LUN 0, shared by every session to the target.
    fn open_lun0(&self, target: &str) -> Result<khoi_block::Checked, String>;
    fn identity(&self, target: &str) -> LunIdentity;
    fn event(&self, ev: IscsiEvent);
}

/// Transport configuration.
#[derive(Debug, Clone)]
pub struct IscsiConfig {
    /// `ip:port` advertised in SendTargets' TargetAddress.
    pub portal: String,
    /// Target portal group tag (sent at login and in TargetAddress).
    pub tpgt: u16,
    /// Operational key offers.
    pub offer: Offer,
    /// CmdSN window: MaxCmdSN = ExpCmdSN + window - 1.
    pub cmd_window: u32,
    /// Report POWER ON OCCURRED on a new session's first command.
    pub unit_attention_on_login: bool,
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// Give up on a login that has not finished after this long.
    pub login_timeout: std::time::Duration,
    /// Largest transfer one command may ask for (bytes); bounds the memory a
    /// write can pin while its data arrives.
    pub max_transfer: u32,
    /// Ping a session idle this long with a NOP-In; `None` never pings. A
    /// session that has answered a ping and then misses one is closed;
    /// one that never answered (iPXE) is never closed for it.
    pub nop_interval: Option<std::time::Duration>,
    /// `TCP_USER_TIMEOUT`, set once a session has answered a ping: how long
    /// sent data may stay unacknowledged before the connection is dead.
    pub tcp_user_timeout: std::time::Duration,
}

impl IscsiConfig {
    pub fn new(portal: impl Into<String>) -> Self {
        IscsiConfig {
            portal: portal.into(),
            tpgt: 1,
            offer: Offer::default(),
            cmd_window: 128,
            unit_attention_on_login: true,
            max_connections: 1024,
            login_timeout: std::time::Duration::from_secs(30),
            max_transfer: 16 << 20,
            nop_interval: Some(std::time::Duration::from_secs(30)),
            tcp_user_timeout: std::time::Duration::from_secs(20),
        }
    }
}
