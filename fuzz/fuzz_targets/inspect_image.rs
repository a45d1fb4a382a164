#![no_main]
//! Bytes → a whole disk image → khoi-inspect's check (partition tables,
//! boot sectors, NTFS, hives, Login Data). Panics are let through, so the
//! fuzzer sees what the check would otherwise turn into a finding. Seed the
//! corpus with a fixture image (the tests' `Image::clean().build()`), cut to
//! its first few MiB, so mutations land in real structures.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > 64 << 20 {
        return;
    }
    let _ = khoi_inspect::fuzz::image(data);
});
