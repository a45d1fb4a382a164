#![no_main]
//! Framing + every Repr parser + the session state machine on arbitrary
//! bytes: nothing may panic, and whatever parses must re-emit to a header
//! that parses to the same Repr.

use bytes::BytesMut;
use khoi_iscsi::frame::{self, Digests};
use khoi_iscsi::pdu::{Bhs, InitiatorRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let digests = Digests {
        header: data[0] & 1 != 0,
        data: data[0] & 2 != 0,
    };
    let mut buf = BytesMut::from(&data[1..]);
    while let Ok(Some(pdu)) = frame::decode(&mut buf, digests, 65_536) {
        let view = Bhs::new_checked(&pdu.bhs[..]).expect("decoded PDUs have a full BHS");
        if let Ok(repr) = InitiatorRepr::parse(&view) {
            let emitted = match &repr {
                InitiatorRepr::NopOut(r) => Some(r.emit()),
                InitiatorRepr::ScsiCommand(r) => Some(r.emit()),
                InitiatorRepr::TaskMgmt(r) => Some(r.emit()),
                InitiatorRepr::Login(r) => Some(r.emit()),
                InitiatorRepr::Text(r) => Some(r.emit()),
                InitiatorRepr::DataOut(r) => Some(r.emit()),
                InitiatorRepr::Logout(r) => Some(r.emit()),
                InitiatorRepr::Unsupported(_) => None,
            };
            if let Some(h) = emitted {
                let again = InitiatorRepr::parse(&Bhs::new_unchecked(&h[..])).expect("emitted header parses");
                assert_eq!(again, repr);
            }
        }
        // Round-trip through the encoder too.
        let wire = frame::encode(&pdu, digests);
        let mut b = BytesMut::from(&wire[..]);
        let back = frame::decode(&mut b, digests, 65_536).expect("own encoding decodes");
        assert_eq!(back.as_ref().map(|p| &p.data), Some(&pdu.data));
    }
});
