#![no_main]
//! The key=value parser and every negotiation rule on arbitrary input.

use khoi_iscsi::text::{self, Offer, Params, TextLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pairs) = text::parse(data, TextLimits::default()) else {
        return;
    };
    let mut p = Params::default();
    let offer = Offer::default();
    for (k, v) in &pairs {
        let _ = p.negotiate(k, v, &offer);
    }
    p.settle();
    assert!(p.first_burst_length <= p.max_burst_length);
    assert!(p.max_burst_length <= offer.max_burst_length);
    assert!(p.max_outstanding_r2t <= offer.max_outstanding_r2t);
    assert_eq!(p.error_recovery_level, 0);
    let emitted = text::emit(&pairs);
    assert_eq!(text::parse(&emitted, TextLimits::default()).ok(), Some(pairs));
});
