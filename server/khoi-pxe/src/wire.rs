//! BOOTP/DHCP wire format, smoltcp style.
//!
//! [`Packet`] is a view over a buffer with `mod field` offsets; [`Packet::new_checked`] is the
//! only entry for untrusted bytes and, once it passes, no accessor panics. [`Message`] is the
//! owned Repr: [`Message::parse`] validates the option area (lengths past the end, a missing
//! end marker after a truncated option, a wrong magic cookie are all [`Error`]) and
//! [`Message::emit`] writes a reply that is padded to the 300-byte BOOTP minimum, because
//! some old PXE ROMs drop shorter packets.
//!
//! Written here rather than taken from dhcproto because PXE needs the raw form of several
//! options that dhcproto decodes lossily (93 as one u16, 77 unsplit, 43 as opaque bytes) and
//! because a parser small enough to read in one sitting is easy to fuzz.

use std::net::Ipv4Addr;

use khoi_wire::{be16, be32, put_be16, put_be32};

/// A malformed datagram. Unit type: a bad packet is simply counted and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error;

pub type Result<T> = core::result::Result<T, Error>;

mod field {
    use core::ops::Range;
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: Range<usize> = 4..8;
    pub const SECS: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const SIADDR: Range<usize> = 20..24;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const SNAME: Range<usize> = 44..108;
    pub const FILE: Range<usize> = 108..236;
    pub const MAGIC: Range<usize> = 236..240;
    pub const OPTIONS: usize = 240;
}

/// Length of the fixed BOOTP header plus the DHCP magic cookie.
pub const HEADER_LEN: usize = field::OPTIONS;
/// RFC 951 minimum BOOTP message; replies are padded up to it.
pub const MIN_REPLY_LEN: usize = 300;
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
pub const BROADCAST_FLAG: u16 = 0x8000;

pub const OP_REQUEST: u8 = 1;
pub const OP_REPLY: u8 = 2;

/// Option codes this crate reads or writes.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const BROADCAST: u8 = 28;
    pub const VENDOR: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const MESSAGE: u8 = 56;
    pub const CLASS_ID: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const USER_CLASS: u8 = 77;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE_ENCAP: u8 = 175;
    /// Inside 175: skip waiting for ProxyDHCP offers.
    pub const IPXE_NO_PXEDHCP: u8 = 176;
    pub const END: u8 = 255;
}

/// PXE sub-options inside option 43 (PXE 2.1 spec, table 2-1).
pub mod pxe {
    pub const DISCOVERY_CONTROL: u8 = 6;
    pub const BOOT_SERVERS: u8 = 8;
    pub const BOOT_MENU: u8 = 9;
    pub const MENU_PROMPT: u8 = 10;
    pub const BOOT_ITEM: u8 = 71;
}

khoi_wire::enum_with_unknown! {
    /// DHCP message types (option 53). `Unknown` keeps any other value instead of failing.
    pub enum MessageType(u8) {
        Discover = 1,
        Offer = 2,
        Request = 3,
        Decline = 4,
        Ack = 5,
        Nak = 6,
        Release = 7,
        Inform = 8,
    }
}

/// A read/write view over a BOOTP/DHCP datagram.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn ip_at(b: &[u8], r: core::ops::Range<usize>) -> Ipv4Addr {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    Ipv4Addr::from(a)
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Validates that every fixed field is present; after this no getter panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn op(&self) -> u8 {
        self.buffer.as_ref()[field::OP]
    }
    pub fn htype(&self) -> u8 {
        self.buffer.as_ref()[field::HTYPE]
    }
    pub fn hlen(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }
    pub fn hops(&self) -> u8 {
        self.buffer.as_ref()[field::HOPS]
    }
    pub fn xid(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::XID])
    }
    pub fn secs(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SECS])
    }
    pub fn flags(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::FLAGS])
    }
    pub fn ciaddr(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::CIADDR)
    }
    pub fn yiaddr(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::YIADDR)
    }
    pub fn siaddr(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::SIADDR)
    }
    pub fn giaddr(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::GIADDR)
    }
    pub fn chaddr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::CHADDR]);
        a
    }
    /// The 64-byte server name field, raw (NUL padded).
    pub fn sname(&self) -> &[u8] {
        &self.buffer.as_ref()[field::SNAME]
    }
    /// The 128-byte boot file field, raw (NUL padded).
    pub fn file(&self) -> &[u8] {
        &self.buffer.as_ref()[field::FILE]
    }
    pub fn magic(&self) -> [u8; 4] {
        let b = &self.buffer.as_ref()[field::MAGIC];
        [b[0], b[1], b[2], b[3]]
    }
    /// Everything after the magic cookie.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_op(&mut self, v: u8) {
        self.buffer.as_mut()[field::OP] = v;
    }
    pub fn set_htype(&mut self, v: u8) {
        self.buffer.as_mut()[field::HTYPE] = v;
    }
    pub fn set_hlen(&mut self, v: u8) {
        self.buffer.as_mut()[field::HLEN] = v;
    }
    pub fn set_hops(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOPS] = v;
    }
    pub fn set_xid(&mut self, v: u32) {
        put_be32(&mut self.buffer.as_mut()[field::XID], v);
    }
    pub fn set_secs(&mut self, v: u16) {
        put_be16(&mut self.buffer.as_mut()[field::SECS], v);
    }
    pub fn set_flags(&mut self, v: u16) {
        put_be16(&mut self.buffer.as_mut()[field::FLAGS], v);
    }
    pub fn set_ciaddr(&mut self, v: Ipv4Addr) {
        self.buffer.as_mut()[field::CIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_yiaddr(&mut self, v: Ipv4Addr) {
        self.buffer.as_mut()[field::YIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_siaddr(&mut self, v: Ipv4Addr) {
        self.buffer.as_mut()[field::SIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_giaddr(&mut self, v: Ipv4Addr) {
        self.buffer.as_mut()[field::GIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_chaddr(&mut self, v: [u8; 16]) {
        self.buffer.as_mut()[field::CHADDR].copy_from_slice(&v);
    }
    /// Writes `v` NUL padded; the caller guarantees `v.len() < 64` (see [`Message::emit`]).
    pub fn set_sname(&mut self, v: &[u8]) {
        write_padded(&mut self.buffer.as_mut()[field::SNAME], v);
    }
    /// Writes `v` NUL padded; the caller guarantees `v.len() < 128`.
    pub fn set_file(&mut self, v: &[u8]) {
        write_padded(&mut self.buffer.as_mut()[field::FILE], v);
    }
    pub fn set_magic(&mut self) {
        self.buffer.as_mut()[field::MAGIC].copy_from_slice(&MAGIC_COOKIE);
    }
    pub fn options_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::OPTIONS..]
    }
}

fn write_padded(dst: &mut [u8], v: &[u8]) {
    dst.fill(0);
    // Keep one NUL: the field is a C string on every client.
    let n = v.len().min(dst.len().saturating_sub(1));
    dst[..n].copy_from_slice(&v[..n]);
}

/// Iterates the option area: `(code, value)`, stopping at END. Pad bytes are skipped.
/// Yields `Err` once (then stops) if an option's length runs past the buffer.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    data: &'a [u8],
    done: bool,
}

impl<'a> OptionIter<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        OptionIter { data, done: false }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<(u8, &'a [u8])>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            match self.data.split_first() {
                None => {
                    // No END marker: tolerated (several ROMs omit it when the packet ends
                    // exactly at the last option); nothing was cut short.
                    self.done = true;
                    return None;
                }
                Some((&opt::PAD, rest)) => self.data = rest,
                Some((&opt::END, _)) => {
                    self.done = true;
                    return None;
                }
                Some((&code, rest)) => {
                    let Some((&len, rest)) = rest.split_first() else {
                        self.done = true;
                        return Some(Err(Error));
                    };
                    let len = usize::from(len);
                    if rest.len() < len {
                        self.done = true;
                        return Some(Err(Error));
                    }
                    let (value, rest) = rest.split_at(len);
                    self.data = rest;
                    return Some(Ok((code, value)));
                }
            }
        }
    }
}

/// Options in arrival order; a code repeated is concatenated (RFC 3396).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    items: Vec<(u8, Vec<u8>)>,
}

impl Options {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut o = Options::new();
        for item in OptionIter::new(data) {
            let (code, value) = item?;
            o.append(code, value);
        }
        Ok(o)
    }

    /// Adds `value` to `code`, concatenating if it is already present.
    pub fn append(&mut self, code: u8, value: &[u8]) {
        match self.items.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => v.extend_from_slice(value),
            None => self.items.push((code, value.to_vec())),
        }
    }

    /// Sets `code` to `value`, replacing any previous value (keeps its position).
    pub fn set(&mut self, code: u8, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self.items.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => *v = value,
            None => self.items.push((code, value)),
        }
    }

    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.items
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    pub fn contains(&self, code: u8) -> bool {
        self.get(code).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.items.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    pub fn codes(&self) -> Vec<u8> {
        self.items.iter().map(|(c, _)| *c).collect()
    }

    /// Bytes needed to encode, long values split into 255-byte pieces, plus END.
    pub fn buffer_len(&self) -> usize {
        let mut n = 1;
        for (_, v) in &self.items {
            let pieces = v.len().div_ceil(255).max(1);
            n += 2 * pieces + v.len();
        }
        n
    }

    /// Writes the options and END into `buf`, which must hold [`Self::buffer_len`] bytes.
    /// Returns the number of bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut at = 0;
        for (code, v) in &self.items {
            if v.is_empty() {
                buf[at] = *code;
                buf[at + 1] = 0;
                at += 2;
                continue;
            }
            for chunk in v.chunks(255) {
                buf[at] = *code;
                // chunks(255) bounds the length, so the conversion cannot fail.
                buf[at + 1] = u8::try_from(chunk.len()).unwrap_or(u8::MAX);
                buf[at + 2..at + 2 + chunk.len()].copy_from_slice(chunk);
                at += 2 + chunk.len();
            }
        }
        buf[at] = opt::END;
        at + 1
    }

    // --- typed accessors for the options PXE cares about ---

    pub fn message_type(&self) -> Option<MessageType> {
        match self.get(opt::MESSAGE_TYPE) {
            Some([t]) => Some(MessageType::from(*t)),
            _ => None,
        }
    }

    fn ip(&self, code: u8) -> Option<Ipv4Addr> {
        match self.get(code) {
            Some(&[a, b, c, d]) => Some(Ipv4Addr::new(a, b, c, d)),
            _ => None,
        }
    }

    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        self.ip(opt::REQUESTED_IP)
    }

    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.ip(opt::SERVER_ID)
    }

    /// Option 93, RFC 4578: a list of u16; the first is what the client runs now.
    pub fn client_arches(&self) -> Vec<u16> {
        self.get(opt::CLIENT_ARCH)
            .map(|v| v.chunks_exact(2).map(be16).collect())
            .unwrap_or_default()
    }

    pub fn class_id(&self) -> Option<&[u8]> {
        self.get(opt::CLASS_ID)
    }

    /// Option 60 starts with `PXEClient`.
    pub fn is_pxe_client(&self) -> bool {
        self.class_id().is_some_and(|v| v.starts_with(b"PXEClient"))
    }

    /// The architecture from `PXEClient:Arch:NNNNN:...` in option 60, for clients that
    /// omit option 93.
    pub fn class_id_arch(&self) -> Option<u16> {
        let v = self.class_id()?.strip_prefix(b"PXEClient:Arch:")?;
        let digits = v.get(..5)?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// The client is iPXE already: option 77 is `iPXE` (iPXE sends it raw, not RFC 3004
    /// length-prefixed) or option 175 (iPXE's encapsulated settings) is present.
    pub fn is_ipxe(&self) -> bool {
        let user_class_ipxe = self.get(opt::USER_CLASS).is_some_and(|v| {
            v == b"iPXE" || (v.first() == Some(&4) && v.get(1..5) == Some(b"iPXE".as_slice()))
        });
        user_class_ipxe || self.contains(opt::IPXE_ENCAP)
    }

    /// PXE sub-option 71 (boot item: type u16, layer u16) from option 43.
    pub fn pxe_boot_item(&self) -> Option<[u8; 4]> {
        let v = self.get(opt::VENDOR)?;
        for item in OptionIter::new(v) {
            let Ok((code, value)) = item else { return None };
            if code == pxe::BOOT_ITEM {
                return <[u8; 4]>::try_from(value).ok();
            }
        }
        None
    }
}

/// A parsed (or to-be-emitted) BOOTP/DHCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub sname: Vec<u8>,
    pub file: Vec<u8>,
    pub options: Options,
}

fn trim_nul(v: &[u8]) -> Vec<u8> {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    v[..end].to_vec()
}

impl Message {
    /// Parses a DHCP message. Plain BOOTP (no magic cookie) is an error: PXE clients always
    /// speak DHCP.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self> {
        p.check_len()?;
        if p.magic() != MAGIC_COOKIE {
            return Err(Error);
        }
        if p.op() != OP_REQUEST && p.op() != OP_REPLY {
            return Err(Error);
        }
        let options = Options::parse(p.options())?;
        Ok(Message {
            op: p.op(),
            htype: p.htype(),
            hlen: p.hlen(),
            hops: p.hops(),
            xid: p.xid(),
            secs: p.secs(),
            flags: p.flags(),
            ciaddr: p.ciaddr(),
            yiaddr: p.yiaddr(),
            siaddr: p.siaddr(),
            giaddr: p.giaddr(),
            chaddr: p.chaddr(),
            sname: trim_nul(p.sname()),
            file: trim_nul(p.file()),
            options,
        })
    }

    /// Parses untrusted bytes.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(&Packet::new_checked(bytes)?)
    }

    /// The Ethernet client MAC, if the hardware type says Ethernet.
    pub fn mac(&self) -> Option<[u8; 6]> {
        if self.htype != 1 || self.hlen != 6 {
            return None;
        }
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.chaddr[..6]);
        Some(m)
    }

    pub fn message_type(&self) -> Option<MessageType> {
        self.options.message_type()
    }

    pub fn buffer_len(&self) -> usize {
        (HEADER_LEN + self.options.buffer_len()).max(MIN_REPLY_LEN)
    }

    /// Encodes into a fresh buffer of [`Self::buffer_len`] bytes. `sname` and `file` longer
    /// than their fields are cut (one NUL is always kept).
    pub fn emit(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.buffer_len()];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_op(self.op);
        p.set_htype(self.htype);
        p.set_hlen(self.hlen);
        p.set_hops(self.hops);
        p.set_xid(self.xid);
        p.set_secs(self.secs);
        p.set_flags(self.flags);
        p.set_ciaddr(self.ciaddr);
        p.set_yiaddr(self.yiaddr);
        p.set_siaddr(self.siaddr);
        p.set_giaddr(self.giaddr);
        p.set_chaddr(self.chaddr);
        p.set_sname(&self.sname);
        p.set_file(&self.file);
        p.set_magic();
        self.options.emit(p.options_mut());
        buf
    }
}

/// Encodes PXE option 43 from `(sub-option, value)` pairs, ending with 255.
pub fn encode_pxe_vendor(subs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut o = Vec::new();
    for (code, v) in subs {
        o.push(*code);
        o.push(u8::try_from(v.len()).unwrap_or(u8::MAX));
        o.extend_from_slice(&v[..v.len().min(255)]);
    }
    o.push(opt::END);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    static IPXE_DISCOVER: &[u8] = include_bytes!("../tests/vectors/ipxe-bios-f1.bin");
    static DNSMASQ_BIOS_OFFER: &[u8] = include_bytes!("../tests/vectors/ipxe-bios-f2.bin");
    static IPXE_REQUEST_4011: &[u8] = include_bytes!("../tests/vectors/ipxe-bios-f9.bin");
    static OVMF_DISCOVER: &[u8] = include_bytes!("../tests/vectors/ovmf-f1.bin");
    static OVMF_REQUEST_4011: &[u8] = include_bytes!("../tests/vectors/ovmf-f6.bin");

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x01];

    #[test]
    fn deconstruct_ipxe_discover() {
        let p = Packet::new_checked(IPXE_DISCOVER).unwrap();
        assert_eq!(p.op(), OP_REQUEST);
        assert_eq!(p.htype(), 1);
        assert_eq!(p.hlen(), 6);
        assert_eq!(p.xid(), 0x1eab_e026);
        assert_eq!(p.secs(), 4);
        assert_eq!(p.flags(), 0);
        assert_eq!(p.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(&p.chaddr()[..6], &MAC);
        assert_eq!(p.magic(), MAGIC_COOKIE);
        assert_eq!(p.options()[..3], [53, 1, 1]);
    }

    #[test]
    fn parse_ipxe_discover() {
        let m = Message::parse_bytes(IPXE_DISCOVER).unwrap();
        assert_eq!(m.message_type(), Some(MessageType::Discover));
        assert_eq!(m.mac(), Some(MAC));
        assert_eq!(
            m.options.class_id(),
            Some(b"PXEClient:Arch:00000:UNDI:002001".as_slice())
        );
        assert_eq!(m.options.client_arches(), vec![0]);
        assert_eq!(m.options.class_id_arch(), Some(0));
        assert!(m.options.is_pxe_client());
        assert!(m.options.is_ipxe());
        assert_eq!(m.options.get(opt::USER_CLASS), Some(b"iPXE".as_slice()));
        assert_eq!(m.options.get(opt::IPXE_ENCAP).map(<[u8]>::len), Some(48));
        assert_eq!(m.options.get(opt::CLIENT_UUID).map(<[u8]>::len), Some(17));
        assert_eq!(
            m.options.codes(),
            vec![53, 57, 93, 94, 60, 77, 55, 175, 61, 97]
        );
    }

    #[test]
    fn parse_ovmf_discover() {
        let m = Message::parse_bytes(OVMF_DISCOVER).unwrap();
        assert_eq!(m.flags, BROADCAST_FLAG);
        assert_eq!(m.options.client_arches(), vec![7]);
        assert!(m.options.is_pxe_client());
        assert!(!m.options.is_ipxe());
        assert_eq!(m.options.pxe_boot_item(), None);
    }

    #[test]
    fn parse_boot_item_from_4011_request() {
        let m = Message::parse_bytes(IPXE_REQUEST_4011).unwrap();
        assert_eq!(m.message_type(), Some(MessageType::Request));
        assert_eq!(m.ciaddr, Ipv4Addr::new(10, 77, 0, 130));
        assert_eq!(m.options.pxe_boot_item(), Some([0x80, 0x01, 0, 0]));
        let m = Message::parse_bytes(OVMF_REQUEST_4011).unwrap();
        assert_eq!(m.options.pxe_boot_item(), None);
    }

    #[test]
    fn parse_dnsmasq_offer_option_43() {
        let m = Message::parse_bytes(DNSMASQ_BIOS_OFFER).unwrap();
        assert_eq!(m.message_type(), Some(MessageType::Offer));
        let v = m.options.get(opt::VENDOR).unwrap();
        let subs: Vec<u8> = OptionIter::new(v).map(|r| r.unwrap().0).collect();
        assert_eq!(subs, vec![6, 10, 8, 9]);
    }

    /// Emitting the parsed request reproduces it byte for byte up to the END option (the
    /// capture has no trailing padding after END), so the option encoder is exact.
    #[test]
    fn emit_round_trips_captures() {
        for bytes in [
            IPXE_DISCOVER,
            IPXE_REQUEST_4011,
            OVMF_DISCOVER,
            OVMF_REQUEST_4011,
            DNSMASQ_BIOS_OFFER,
        ] {
            let m = Message::parse_bytes(bytes).unwrap();
            let out = m.emit();
            let end = HEADER_LEN + m.options.buffer_len();
            assert_eq!(&out[..end], &bytes[..end]);
            assert_eq!(Message::parse_bytes(&out).unwrap(), m);
        }
    }

    #[test]
    fn construct_over_a5_buffer() {
        let m = Message::parse_bytes(OVMF_DISCOVER).unwrap();
        let mut buf = vec![0xa5u8; OVMF_DISCOVER.len()];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_op(m.op);
        p.set_htype(m.htype);
        p.set_hlen(m.hlen);
        p.set_hops(m.hops);
        p.set_xid(m.xid);
        p.set_secs(m.secs);
        p.set_flags(m.flags);
        p.set_ciaddr(m.ciaddr);
        p.set_yiaddr(m.yiaddr);
        p.set_siaddr(m.siaddr);
        p.set_giaddr(m.giaddr);
        p.set_chaddr(m.chaddr);
        p.set_sname(b"");
        p.set_file(b"");
        p.set_magic();
        let n = m.options.emit(p.options_mut());
        assert_eq!(&buf[..HEADER_LEN + n], &OVMF_DISCOVER[..HEADER_LEN + n]);
    }

    #[test]
    fn emit_pads_to_300_and_splits_long_options() {
        let mut m = Message::parse_bytes(OVMF_DISCOVER).unwrap();
        m.options = Options::new();
        m.options.set(opt::MESSAGE_TYPE, [2]);
        assert_eq!(m.emit().len(), MIN_REPLY_LEN);
        m.options.set(opt::VENDOR, vec![7u8; 300]);
        let out = m.emit();
        let back = Message::parse_bytes(&out).unwrap();
        assert_eq!(back.options.get(opt::VENDOR).map(<[u8]>::len), Some(300));
    }

    #[test]
    fn message_type_codes_round_trip() {
        assert_eq!(MessageType::from(1), MessageType::Discover);
        assert_eq!(MessageType::from(8), MessageType::Inform);
        assert_eq!(MessageType::from(0), MessageType::Unknown(0));
        assert_eq!(MessageType::from(9), MessageType::Unknown(9));
        assert_eq!(u8::from(MessageType::Ack), 5);
        for v in 0..=u8::MAX {
            assert_eq!(u8::from(MessageType::from(v)), v);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Message::parse_bytes(&[]), Err(Error));
        assert_eq!(Message::parse_bytes(&IPXE_DISCOVER[..239]), Err(Error));
        let mut bad_magic = IPXE_DISCOVER.to_vec();
        bad_magic[236] = 0;
        assert_eq!(Message::parse_bytes(&bad_magic), Err(Error));
        // Cut inside option 97's value: its length now runs past the end.
        let cut = IPXE_DISCOVER.len() - 5;
        assert_eq!(Message::parse_bytes(&IPXE_DISCOVER[..cut]), Err(Error));
        // A lone option code with no length byte.
        let mut lone = IPXE_DISCOVER[..HEADER_LEN].to_vec();
        lone.push(53);
        assert_eq!(Message::parse_bytes(&lone), Err(Error));
    }
}
