#![no_main]
//! Bytes → the SAM alias `C` member list and SID decoders.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    khoi_inspect::fuzz::sam_records(data);
});
