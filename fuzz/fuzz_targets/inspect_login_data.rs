#![no_main]
//! Bytes → a Chromium `Login Data` file → SQLite (read-only, immutable) →
//! the saved-password origins.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    khoi_inspect::fuzz::login_data(data);
});
