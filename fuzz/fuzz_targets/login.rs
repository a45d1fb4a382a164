#![no_main]
//! The login state machine fed a sequence of arbitrary Login Request
//! headers and text segments.

use std::sync::Arc;

use khoi_iscsi::login::{Login, Step};
use khoi_iscsi::pdu::{Bhs, LoginRequest};
use khoi_iscsi::text::Offer;
use khoi_iscsi::{ChapSecret, IscsiEvent, LunIdentity, TargetAuth, TargetResolver};
use libfuzzer_sys::fuzz_target;

struct R;

impl TargetResolver for R {
    fn targets(&self) -> Vec<String> {
        vec!["iqn.t:a".into(), "iqn.t:b".into()]
    }
    fn auth(&self, target: &str) -> Option<TargetAuth> {
        match target {
            "iqn.t:a" => Some(TargetAuth {
                chap: Some(ChapSecret::new("u", "secretsecret")),
                mutual: Some(ChapSecret::new("t", "targetsecret")),
                allowed_initiator: None,
            }),
            "iqn.t:b" => Some(TargetAuth::default()),
            _ => None,
        }
    }
    fn open_lun0(&self, _: &str) -> Result<khoi_block::Checked, String> {
        Err("none".into())
    }
    fn identity(&self, _: &str) -> LunIdentity {
        LunIdentity { serial: "S".into(), naa: [0x60; 16] }
    }
    fn event(&self, _: IscsiEvent) {}
}

fuzz_target!(|data: &[u8]| {
    let mut login = Login::new(Arc::new(R), Offer::default(), 1, 128);
    let mut rest = data;
    // Each step: 48-byte header, 1 length byte, that many text bytes.
    while rest.len() >= 49 {
        let (h, tail) = rest.split_at(48);
        let n = usize::from(tail[0]).min(tail.len() - 1);
        let text = &tail[1..1 + n];
        rest = &tail[1 + n..];
        let mut hdr = [0u8; 48];
        hdr.copy_from_slice(h);
        // Force the opcode so every step reaches the state machine.
        hdr[0] = 0x43;
        let Ok(req) = LoginRequest::parse(&Bhs::new_unchecked(&hdr[..])) else {
            continue;
        };
        match login.on_pdu(&req, text) {
            Step::Continue(_) => {}
            Step::Fail(..) => return,
            Step::Ready { .. } => {
                let _ = login.finish(7, Ok(()));
                return;
            }
        }
    }
});
