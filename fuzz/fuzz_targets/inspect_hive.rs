#![no_main]
//! Bytes → registry hive (regf) → the lookups the check does on SYSTEM,
//! SOFTWARE, SAM (including the F/V/C decoders) and SECURITY.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    khoi_inspect::fuzz::hive(data);
});
