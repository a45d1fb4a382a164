//! `key=value\0` text segments and operational-key negotiation (RFC 7143
//! §6, §13). Result functions follow the reference table: list keys take
//! the initiator's first acceptable choice, numeric keys min/max, boolean
//! keys AND/OR, declarative keys just record the value.

use std::fmt;

/// Bounds on a text segment so a hostile peer cannot make us allocate or
/// loop without end.
#[derive(Debug, Clone, Copy)]
pub struct TextLimits {
    pub max_pairs: usize,
    pub max_key: usize,
    pub max_value: usize,
}

impl Default for TextLimits {
    fn default() -> Self {
        // RFC 7143 §6.1: keys ≤ 63 bytes; values ≤ 255 except binary values
        // (CHAP_C/CHAP_R) and SendTargets responses, up to 8192.
        TextLimits {
            max_pairs: 256,
            max_key: 63,
            max_value: 8192,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text segment has too many keys")]
    TooManyPairs,
    #[error("text key is malformed or too long")]
    BadKey,
    #[error("text value is malformed or too long")]
    BadValue,
}

/// Parse a text data segment. A trailing pair without its NUL is accepted
/// (some initiators omit the last one).
pub fn parse(data: &[u8], limits: TextLimits) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        if out.len() >= limits.max_pairs {
            return Err(TextError::TooManyPairs);
        }
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::BadKey)?;
        let (k, v) = (&item[..eq], &item[eq + 1..]);
        if k.is_empty() || k.len() > limits.max_key || !k.iter().all(|&c| is_key_char(c)) {
            return Err(TextError::BadKey);
        }
        if v.len() > limits.max_value {
            return Err(TextError::BadValue);
        }
        let v = std::str::from_utf8(v).map_err(|_| TextError::BadValue)?;
        // Keys were checked to be ASCII above.
        let k = String::from_utf8_lossy(k).into_owned();
        out.push((k, v.to_owned()));
    }
    Ok(out)
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// Serialize pairs into a text data segment.
pub fn emit<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// What the target offers for each operational key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    /// Whether CRC32C digests may be chosen when an initiator lists them.
    pub allow_digests: bool,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 16,
            default_time2wait: 2,
            default_time2retain: 20,
            allow_digests: true,
        }
    }
}

/// Negotiated session/connection parameters. Defaults are RFC 7143's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What the initiator can receive: bounds our Data-In and text PDUs.
    pub initiator_mrdsl: u32,
    /// What we declared we can receive.
    pub target_mrdsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_connections: u16,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            header_digest: false,
            data_digest: false,
            initiator_mrdsl: 8192,
            target_mrdsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
        }
    }
}

/// How one key was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send `key=value` back.
    Reply(String),
    /// Declarative or otherwise needs no answer.
    Silent,
    /// Not an operational key this module knows.
    Unknown,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Reply(v) => f.write_str(v),
            Answer::Silent => f.write_str("(silent)"),
            Answer::Unknown => f.write_str("NotUnderstood"),
        }
    }
}

fn yes_no(v: bool) -> String {
    if v { "Yes" } else { "No" }.to_owned()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn parse_num(v: &str, lo: u64, hi: u64) -> Option<u64> {
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        v.parse::<u64>().ok()?
    };
    (lo..=hi).contains(&n).then_some(n)
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn to_u16(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

const REJECT: &str = "Reject";

impl Params {
    /// Negotiate one operational key the initiator sent.
    pub fn negotiate(&mut self, key: &str, value: &str, offer: &Offer) -> Answer {
        let reply = |s: String| Answer::Reply(s);
        let reject = || Answer::Reply(REJECT.to_owned());
        match key {
            "HeaderDigest" | "DataDigest" => {
                let mut choice = None;
                for v in value.split(',') {
                    if v == "None" || (v == "CRC32C" && offer.allow_digests) {
                        choice = Some(v);
                        break;
                    }
                }
                match choice {
                    Some(c) => {
                        let on = c == "CRC32C";
                        if key == "HeaderDigest" {
                            self.header_digest = on;
                        } else {
                            self.data_digest = on;
                        }
                        reply(c.to_owned())
                    }
                    None => reject(),
                }
            }
            "MaxRecvDataSegmentLength" => match parse_num(value, 512, 16_777_215) {
                Some(n) => {
                    self.initiator_mrdsl = to_u32(n);
                    Answer::Silent
                }
                None => reject(),
            },
            "MaxBurstLength" => match parse_num(value, 512, 16_777_215) {
                Some(n) => {
                    self.max_burst_length = to_u32(n).min(offer.max_burst_length);
                    self.first_burst_length = self.first_burst_length.min(self.max_burst_length);
                    reply(self.max_burst_length.to_string())
                }
                None => reject(),
            },
            "FirstBurstLength" => match parse_num(value, 512, 16_777_215) {
                Some(n) => {
                    self.first_burst_length = to_u32(n).min(offer.first_burst_length);
                    reply(self.first_burst_length.to_string())
                }
                None => reject(),
            },
            "InitialR2T" => match parse_bool(value) {
                Some(b) => {
                    self.initial_r2t = b || offer.initial_r2t;
                    reply(yes_no(self.initial_r2t))
                }
                None => reject(),
            },
            "ImmediateData" => match parse_bool(value) {
                Some(b) => {
                    self.immediate_data = b && offer.immediate_data;
                    reply(yes_no(self.immediate_data))
                }
                None => reject(),
            },
            "MaxOutstandingR2T" => match parse_num(value, 1, 65_535) {
                Some(n) => {
                    self.max_outstanding_r2t = to_u32(n).min(offer.max_outstanding_r2t);
                    reply(self.max_outstanding_r2t.to_string())
                }
                None => reject(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                // OR with our Yes: always Yes, which keeps reassembly linear.
                Some(_) => reply(yes_no(true)),
                None => reject(),
            },
            "ErrorRecoveryLevel" => match parse_num(value, 0, 2) {
                Some(_) => {
                    self.error_recovery_level = 0;
                    reply("0".to_owned())
                }
                None => reject(),
            },
            "DefaultTime2Wait" => match parse_num(value, 0, 3600) {
                Some(n) => {
                    self.default_time2wait = to_u16(n).max(offer.default_time2wait);
                    reply(self.default_time2wait.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Retain" => match parse_num(value, 0, 3600) {
                Some(n) => {
                    self.default_time2retain = to_u16(n).min(offer.default_time2retain);
                    reply(self.default_time2retain.to_string())
                }
                None => reject(),
            },
            "MaxConnections" => match parse_num(value, 1, 65_535) {
                Some(_) => {
                    self.max_connections = 1;
                    reply("1".to_owned())
                }
                None => reject(),
            },
            "IFMarker" | "OFMarker" | "RDMAExtensions" => match parse_bool(value) {
                Some(_) => reply(yes_no(false)),
                None => reject(),
            },
            "IFMarkInt"
            | "OFMarkInt"
            | "TargetRecvDataSegmentLength"
            | "InitiatorRecvDataSegmentLength" => reply("Irrelevant".to_owned()),
            "TaskReporting" => reply("RFC3720".to_owned()),
            "iSCSIProtocolLevel" => match parse_num(value, 0, 31) {
                Some(n) => reply(n.min(1).to_string()),
                None => reject(),
            },
            // Target-side keys an initiator has no business sending; ignoring
            // them is kinder than failing a login over it.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => Answer::Silent,
            _ => Answer::Unknown,
        }
    }

    /// The value we declare for our own receive limit.
    pub fn declare_target_mrdsl(&mut self, offer: &Offer) -> (String, String) {
        self.target_mrdsl = offer.max_recv_data_segment_length;
        (
            "MaxRecvDataSegmentLength".to_owned(),
            self.target_mrdsl.to_string(),
        )
    }

    /// Enforce cross-key invariants after a negotiation round.
    pub fn settle(&mut self) {
        self.first_burst_length = self.first_burst_length.min(self.max_burst_length);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    /// iPXE's operational proposals (iscsi_build_login_request_strings).
    const IPXE: &[(&str, &str)] = &[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxConnections", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxRecvDataSegmentLength", "8192"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("DefaultTime2Wait", "0"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("ErrorRecoveryLevel", "0"),
    ];

    #[test]
    fn ipxe_proposal_answers() {
        let offer = Offer::default();
        let mut p = Params::default();
        let answers: Vec<(String, Answer)> = IPXE
            .iter()
            .map(|(k, v)| (k.to_string(), p.negotiate(k, v, &offer)))
            .collect();
        p.settle();
        let get = |k: &str| {
            answers
                .iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, a)| a.clone())
        };
        let r = |s: &str| Some(Answer::Reply(s.to_owned()));
        assert_eq!(get("HeaderDigest"), r("None"));
        assert_eq!(get("DataDigest"), r("None"));
        assert_eq!(get("MaxConnections"), r("1"));
        assert_eq!(get("InitialR2T"), r("Yes"));
        assert_eq!(get("ImmediateData"), r("No"));
        assert_eq!(get("MaxRecvDataSegmentLength"), Some(Answer::Silent));
        assert_eq!(get("MaxBurstLength"), r("262144"));
        assert_eq!(get("FirstBurstLength"), r("65536"));
        assert_eq!(get("DefaultTime2Wait"), r("2"));
        assert_eq!(get("DefaultTime2Retain"), r("0"));
        assert_eq!(get("MaxOutstandingR2T"), r("1"));
        assert_eq!(get("DataPDUInOrder"), r("Yes"));
        assert_eq!(get("ErrorRecoveryLevel"), r("0"));
        assert!(
            answers
                .iter()
                .all(|(_, a)| *a != Answer::Reply("Reject".into()))
        );
        assert_eq!(p.initiator_mrdsl, 8192);
        assert!(p.initial_r2t && !p.immediate_data);
        assert_eq!(p.max_burst_length, 262_144);
        assert_eq!(p.first_burst_length, 65_536);
    }

    #[test]
    fn generous_initiator_gets_our_offer() {
        let offer = Offer::default();
        let mut p = Params::default();
        for (k, v) in [
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "16776192"),
            ("MaxOutstandingR2T", "64"),
            ("HeaderDigest", "CRC32C,None"),
        ] {
            p.negotiate(k, v, &offer);
        }
        p.settle();
        assert!(!p.initial_r2t && p.immediate_data);
        assert_eq!(p.max_burst_length, 1 << 20);
        assert_eq!(p.first_burst_length, 262_144);
        assert_eq!(p.max_outstanding_r2t, 16);
        assert!(p.header_digest);
    }

    #[test]
    fn unknown_and_invalid() {
        let offer = Offer::default();
        let mut p = Params::default();
        assert_eq!(
            p.negotiate("X-com.example.Foo", "1", &offer),
            Answer::Unknown
        );
        assert_eq!(
            p.negotiate("MaxBurstLength", "12", &offer),
            Answer::Reply("Reject".into())
        );
        assert_eq!(
            p.negotiate("HeaderDigest", "MD5", &offer),
            Answer::Reply("Reject".into())
        );
    }

    #[test]
    fn parse_and_emit() {
        let seg =
            b"InitiatorName=iqn.2010-04.org.ipxe:pc1\0SessionType=Normal\0AuthMethod=CHAP,None\0";
        let pairs = parse(seg, TextLimits::default()).unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(
            pairs[0],
            ("InitiatorName".into(), "iqn.2010-04.org.ipxe:pc1".into())
        );
        assert_eq!(emit(&pairs), seg.to_vec());
        // Missing final NUL and padding NULs are both fine.
        assert_eq!(
            parse(b"A=1\0\0\0B=2", TextLimits::default()).unwrap().len(),
            2
        );
    }

    #[test]
    fn parse_limits() {
        let l = TextLimits::default();
        assert_eq!(parse(b"novalue\0", l), Err(TextError::BadKey));
        assert_eq!(parse(b"=x\0", l), Err(TextError::BadKey));
        assert_eq!(parse(b"a b=x\0", l), Err(TextError::BadKey));
        assert_eq!(parse(b"A=\xff\0", l), Err(TextError::BadValue));
        let many: Vec<u8> = (0..300).flat_map(|_| b"A=1\0".to_vec()).collect();
        assert_eq!(parse(&many, l), Err(TextError::TooManyPairs));
    }
}
