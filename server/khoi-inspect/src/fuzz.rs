//! Entry points for the fuzz targets (`fuzz/fuzz_targets/inspect_*.rs`) and
//! the corruption tests: the same parsing the check does, with panics let
//! through so a fuzzer sees them (the check itself turns them into findings).

use khoi_block::MemDevice;

use crate::check::PROPAGATE_PANICS;
use crate::report::{Policy, Report};
use crate::rules::Profile;

struct Propagate;

impl Propagate {
    fn on() -> Propagate {
        PROPAGATE_PANICS.with(|p| p.set(true));
        Propagate
    }
}

impl Drop for Propagate {
    fn drop(&mut self) {
        PROPAGATE_PANICS.with(|p| p.set(false));
    }
}

/// Check `bytes` as a whole disk image.
pub fn image(bytes: &[u8]) -> Report {
    let _p = Propagate::on();
    let dev = MemDevice::read_only(bytes.to_vec());
    crate::check(&dev, Profile::Counter, &Policy::default())
}

/// Parse `bytes` as a registry hive and read what the check reads from each
/// kind of hive.
pub fn hive(bytes: &[u8]) {
    let Ok(h) = crate::hive::Hive::parse("fuzz", bytes.to_vec()) else {
        return;
    };
    let _ = h.is_dirty();
    let _ = crate::sam::read(&h);
    let _ = h.number("Select", "Current");
    let _ = h.subkeys("ControlSet001\\Services");
    let _ = h.string(
        "Microsoft\\Windows NT\\CurrentVersion\\Winlogon",
        "DefaultUserName",
    );
    let _ = h.has_key("Policy\\Secrets\\DefaultPassword");
}

/// Read `bytes` as a Chromium `Login Data` file.
pub fn login_data(bytes: &[u8]) {
    let _ = crate::browser::saved_origins(bytes);
}

/// Decode `bytes` as an alias `C` value and as a SID.
pub fn sam_records(bytes: &[u8]) {
    let _ = crate::sam::alias_members(bytes);
    let _ = crate::sam::parse_sid(bytes);
}
