#![no_main]
//! The full-feature session and the SCSI command set: framed PDUs from
//! arbitrary bytes go through `Session::on_pdu`; block jobs run against a
//! 1 MiB in-memory device and their results go through `session::reply`.

use std::sync::Arc;

use bytes::BytesMut;
use khoi_block::{Checked, MemDevice};
use khoi_iscsi::frame::{self, Digests};
use khoi_iscsi::login::{LoginOutcome, SessionKind};
use khoi_iscsi::scsi::{self, LuInfo};
use khoi_iscsi::session::{self, Action, Session};
use khoi_iscsi::text::Params;
use khoi_iscsi::{IscsiEvent, LunIdentity, TargetAuth, TargetResolver};
use libfuzzer_sys::fuzz_target;

struct R;

impl TargetResolver for R {
    fn targets(&self) -> Vec<String> {
        vec!["iqn.t:a".into()]
    }
    fn auth(&self, _: &str) -> Option<TargetAuth> {
        Some(TargetAuth::default())
    }
    fn open_lun0(&self, _: &str) -> Result<Checked, String> {
        Err("unused".into())
    }
    fn identity(&self, _: &str) -> LunIdentity {
        LunIdentity { serial: "S".into(), naa: [0x60; 16] }
    }
    fn event(&self, _: IscsiEvent) {}
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut params = Params::default();
    params.initial_r2t = data[0] & 1 != 0;
    params.immediate_data = data[0] & 2 != 0;
    params.max_outstanding_r2t = u32::from(data[0] >> 4) + 1;
    params.initiator_mrdsl = 512 << (data[1] & 7);
    params.max_burst_length = 4096 << (data[1] >> 5);
    let dev = Checked::new(Arc::new(MemDevice::new(1 << 20)));
    let lu = LuInfo::new(&dev, "iqn.t:a".into(), R.identity("iqn.t:a"), 1 << 20, params.max_burst_length);
    let outcome = LoginOutcome {
        initiator: "iqn.i".into(),
        isid: [0; 6],
        tsih: 1,
        cid: 0,
        kind: SessionKind::Normal { target: "iqn.t:a".into() },
        params,
        exp_cmd_sn: 0,
        stat_sn: 0,
    };
    let mut s = Session::new(Arc::new(R), &outcome, Some(lu), "127.0.0.1:3260".into(), 1, 128, true);
    let mut buf = BytesMut::from(&data[2..]);
    while let Ok(Some(pdu)) = frame::decode(&mut buf, Digests::default(), 65_536) {
        for a in s.on_pdu(&pdu) {
            if let Action::Exec(ex) = a {
                let r = scsi::execute(ex.job, &dev);
                let _ = session::reply(&ex.shape, r);
                s.exec_done(ex.itt);
            }
        }
    }
});
