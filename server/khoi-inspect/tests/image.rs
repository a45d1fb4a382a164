//! The gate on real NTFS images built from Debian tools (see `fixture`):
//! a clean counter image passes, each rule is found on its own fixture, and
//! corrupted images give findings, never a panic.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod fixture;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use fixture::{CS, Image, Login, Table, Val, WINLOGON, chrome_login};
use khoi_block::MemDevice;
use khoi_inspect::{Policy, Profile, Report, RuleId, Severity, check};

fn counter_policy() -> Policy {
    Policy {
        admin_allow: vec!["quantri".into()],
        disabled: Vec::new(),
    }
}

fn run(bytes: Vec<u8>, profile: Profile) -> Report {
    let dev = MemDevice::read_only(bytes);
    check(&dev, profile, &counter_policy())
}

fn rules_of(r: &Report) -> BTreeSet<RuleId> {
    r.findings.iter().map(|f| f.rule).collect()
}

fn clean_bytes() -> &'static Vec<u8> {
    static CLEAN: OnceLock<Vec<u8>> = OnceLock::new();
    CLEAN.get_or_init(|| Image::clean().build())
}

#[test]
fn clean_counter_image_passes_mbr() {
    let r = run(clean_bytes().clone(), Profile::Counter);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert!(r.passed());
    assert_eq!(r.stats.table, "mbr");
    assert_eq!(r.stats.hives, 4);
    assert_eq!(r.stats.sqlite_files, 1);
    // It reads metadata and the files it needs, not the image.
    assert!(r.stats.bytes_read < 8 << 20, "{:?}", r.stats);
    eprintln!("clean MBR image: {:?}", r.stats);
}

#[test]
fn clean_counter_image_passes_gpt() {
    let mut img = Image::clean();
    img.table = Table::Gpt;
    let r = run(img.build(), Profile::Counter);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert_eq!(r.stats.table, "gpt");
}

/// Build `img`, check it, and require exactly `expected` rules.
fn expect(img: &Image, profile: Profile, expected: &[RuleId]) -> Report {
    let r = run(img.build(), profile);
    let want: BTreeSet<RuleId> = expected.iter().copied().collect();
    assert_eq!(rules_of(&r), want, "{:#?}", r.findings);
    r
}

#[test]
fn saved_passwords_in_every_browser_are_found_without_secrets() {
    let mut img = Image::clean();
    img.logins.insert(
        chrome_login("canbo", "Default"),
        vec![
            Login {
                origin: "https://dichvucong.gov.vn/dang-nhap?x=1".into(),
                blacklisted: false,
            },
            Login {
                origin: "https://never.example/".into(),
                blacklisted: true,
            },
        ],
    );
    img.logins.insert(
        "Users\\vanthu\\AppData\\Local\\Microsoft\\Edge\\User Data\\Profile 2\\Login Data".into(),
        vec![Login {
            origin: "https://qlvb.tinh.gov.vn/".into(),
            blacklisted: false,
        }],
    );
    img.logins.insert(
        "Users\\vanthu\\AppData\\Local\\CocCoc\\Browser\\User Data\\Default\\Login Data For Account"
            .into(),
        vec![Login { origin: "https://mail.tinh.gov.vn/".into(), blacklisted: false }],
    );
    let r = expect(&img, Profile::Counter, &[RuleId::SavedBrowserPassword]);
    let subjects: Vec<&str> = r.findings.iter().map(|f| f.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "canbo / Google Chrome / Default / https://dichvucong.gov.vn",
            "vanthu / Cốc Cốc / Default / https://mail.tinh.gov.vn",
            "vanthu / Microsoft Edge / Profile 2 / https://qlvb.tinh.gov.vn",
        ]
    );
    assert!(r.findings.iter().all(|f| f.severity == Severity::Blocking));
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        !json.contains("canbo.secret") && !json.contains("deadbeef"),
        "{json}"
    );
}

#[test]
fn password_manager_policies_missing() {
    let mut img = Image::clean();
    for k in [
        "Policies\\Google\\Chrome",
        "Policies\\Microsoft\\Edge",
        "Policies\\CocCoc\\Browser",
    ] {
        img.software.unset(k, "PasswordManagerEnabled");
    }
    expect(
        &img,
        Profile::Counter,
        &[
            RuleId::PasswordManagerChrome,
            RuleId::PasswordManagerEdge,
            RuleId::PasswordManagerCocCoc,
        ],
    );
}

#[test]
fn coccoc_policy_in_its_other_key_form_counts() {
    let mut img = Image::clean();
    img.software
        .unset("Policies\\CocCoc\\Browser", "PasswordManagerEnabled");
    img.software.set(
        "Policies\\CocCoc\\CocCoc",
        "PasswordManagerEnabled",
        Val::Dword(0),
    );
    img.software.set(
        "Policies\\Microsoft\\Edge",
        "PasswordManagerEnabled",
        Val::Dword(1),
    );
    expect(&img, Profile::Counter, &[RuleId::PasswordManagerEdge]);
}

#[test]
fn extra_enabled_administrator_beyond_the_allow_list() {
    let mut img = Image::clean();
    img.user(1003, "nhanvien", false);
    img.user(1004, "cu", true); // disabled admins are fine
    img.admins(&[500, 1002, 1003, 1004]);
    let r = expect(&img, Profile::Counter, &[RuleId::ExtraAdministrator]);
    assert_eq!(r.findings[0].subject, "nhanvien (RID 1003)");
}

#[test]
fn builtin_administrator_enabled() {
    let mut img = Image::clean();
    img.user(500, "Administrator", false);
    let r = run(img.build(), Profile::Counter);
    // Enabled and not on the allow-list, so it is also an extra admin.
    assert_eq!(
        rules_of(&r),
        [
            RuleId::BuiltinAdministratorEnabled,
            RuleId::ExtraAdministrator
        ]
        .into(),
        "{:#?}",
        r.findings
    );
}

#[test]
fn autologon_with_stored_password_plain_and_lsa_secret() {
    let mut img = Image::clean();
    img.software
        .set(WINLOGON, "AutoAdminLogon", Val::Sz("1".into()));
    img.software
        .set(WINLOGON, "DefaultPassword", Val::Sz("MatKhau@123".into()));
    img.security.set(
        "Policy\\Secrets\\DefaultPassword\\CurrVal",
        "",
        Val::Bin(vec![1, 2, 3]),
    );
    let r = expect(&img, Profile::Counter, &[RuleId::AutologonStoredPassword]);
    assert_eq!(r.findings.len(), 2, "{:#?}", r.findings);
    assert!(!serde_json::to_string(&r).unwrap().contains("MatKhau"));
}

#[test]
fn kiosk_image_with_an_enabled_admin_fails_under_kiosk_only() {
    let img = Image::clean();
    let bytes = img.build();
    assert!(run(bytes.clone(), Profile::Counter).passed());
    let r = run(bytes, Profile::Kiosk);
    assert!(!r.passed());
    assert_eq!(
        rules_of(&r),
        [RuleId::ExtraAdministrator].into(),
        "{:#?}",
        r.findings
    );
    assert_eq!(r.findings[0].subject, "quantri (RID 1002)");
}

#[test]
fn kiosk_autologon_to_a_standard_user_passes_to_an_admin_fails() {
    let mut img = Image::clean();
    img.admins(&[500]);
    img.software
        .set(WINLOGON, "AutoAdminLogon", Val::Sz("1".into()));
    let standard = img.clone();
    let r = run(standard.build(), Profile::Kiosk);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    img.admins(&[500, 1001]);
    let r = expect(
        &img,
        Profile::Kiosk,
        &[RuleId::ExtraAdministrator, RuleId::AutologonAdministrator],
    );
    assert!(r.blocking().count() == 2);
}

#[test]
fn saved_wifi_profiles_and_wlan_service() {
    let mut img = Image::clean();
    let iface = "{6B4A1E6B-1111-2222-3333-444455556666}";
    img.files.insert(
        format!("ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces\\{iface}\\{{0D3C1F3A-AAAA-BBBB-CCCC-DDDDEEEEFFFF}}.xml"),
        b"<WLANProfile/>".to_vec(),
    );
    let r = expect(&img, Profile::Counter, &[RuleId::WlanProfileSaved]);
    assert_eq!(r.findings[0].subject, format!("interface {iface}"));

    let mut img = Image::clean();
    img.system
        .set(&format!("{CS}\\Services\\WlanSvc"), "Start", Val::Dword(2));
    expect(&img, Profile::Counter, &[RuleId::WlanServiceEnabled]);
}

#[test]
fn fast_startup_enabled() {
    let mut img = Image::clean();
    img.system.set(
        &format!("{CS}\\Control\\Session Manager\\Power"),
        "HiberbootEnabled",
        Val::Dword(1),
    );
    img.system
        .unset(&format!("{CS}\\Control\\Power"), "HibernateEnabled");
    expect(&img, Profile::Counter, &[RuleId::FastStartupEnabled]);
}

#[test]
fn hibernated_volume_and_hiberfil() {
    let mut img = Image::clean();
    let mut hib = b"HIBR".to_vec();
    hib.resize(256 * 1024, 0);
    img.files.insert("hiberfil.sys".into(), hib);
    expect(
        &img,
        Profile::Counter,
        &[RuleId::VolumeHibernated, RuleId::HiberfilPresent],
    );

    let mut img = Image::clean();
    img.files.insert("hiberfil.sys".into(), vec![0; 64 * 1024]);
    let r = expect(&img, Profile::Counter, &[RuleId::HiberfilPresent]);
    assert!(r.passed(), "hiberfil.sys alone is a warning");
}

#[test]
fn no_boot_start_network_driver() {
    let mut img = Image::clean();
    img.system.set(
        &format!("{CS}\\Services\\e1iexpress"),
        "Start",
        Val::Dword(3),
    );
    expect(&img, Profile::Counter, &[RuleId::NoBootNetworkDriver]);
}

#[test]
fn dirty_ntfs_volume() {
    let mut img = Image::clean();
    img.dirty = true;
    expect(&img, Profile::Counter, &[RuleId::NtfsDirty]);
}

fn with_boot_sector_oem(oem: &[u8; 8]) -> Vec<u8> {
    let mut b = clean_bytes().clone();
    let at = fixture::PART_START as usize + 3;
    b[at..at + 8].copy_from_slice(oem);
    b
}

#[test]
fn bitlocker_volume() {
    let r = run(with_boot_sector_oem(b"-FVE-FS-"), Profile::Counter);
    assert_eq!(
        rules_of(&r),
        [RuleId::EncryptedVolume].into(),
        "{:#?}",
        r.findings
    );
}

#[test]
fn unknown_filesystem() {
    let r = run(with_boot_sector_oem(b"XFSB\0\0\0\0"), Profile::Counter);
    assert_eq!(
        rules_of(&r),
        [RuleId::UnknownFilesystem, RuleId::NoWindowsVolume].into(),
        "{:#?}",
        r.findings
    );
}

#[test]
fn malformed_partition_tables_and_volumes() {
    // No MBR signature.
    let mut b = clean_bytes().clone();
    b[510] = 0;
    let r = run(b, Profile::Counter);
    assert_eq!(
        rules_of(&r),
        [RuleId::MalformedImage].into(),
        "{:#?}",
        r.findings
    );

    // GPT whose primary and backup headers both fail their CRC.
    let mut img = Image::clean();
    img.table = Table::Gpt;
    let mut b = img.build();
    let last = b.len() - 512;
    b[512 + 16] ^= 0xFF;
    b[last + 16] ^= 0xFF;
    let r = run(b, Profile::Counter);
    assert_eq!(
        rules_of(&r),
        [RuleId::MalformedImage].into(),
        "{:#?}",
        r.findings
    );

    // An NTFS boot sector with nonsense geometry.
    let mut b = clean_bytes().clone();
    let at = fixture::PART_START as usize;
    b[at + 11..at + 13].copy_from_slice(&3u16.to_le_bytes());
    let r = run(b, Profile::Counter);
    assert!(
        r.has(RuleId::MalformedImage) && !r.passed(),
        "{:#?}",
        r.findings
    );

    // A truncated image.
    let r = run(clean_bytes()[..300].to_vec(), Profile::Counter);
    assert!(r.has(RuleId::MalformedImage));
}

#[test]
fn gpt_backup_header_is_used_when_the_primary_is_bad() {
    let mut img = Image::clean();
    img.table = Table::Gpt;
    let mut b = img.build();
    b[512 + 16] ^= 0xFF;
    let r = run(b, Profile::Counter);
    // The disk is still read; the bad primary is reported.
    assert_eq!(
        rules_of(&r),
        [RuleId::MalformedImage].into(),
        "{:#?}",
        r.findings
    );
    assert_eq!(r.stats.hives, 4);
}

#[test]
fn disabled_rules_are_not_reported() {
    let mut img = Image::clean();
    img.dirty = true;
    let dev = MemDevice::read_only(img.build());
    let mut policy = counter_policy();
    policy.disabled.push(RuleId::NtfsDirty);
    assert!(check(&dev, Profile::Counter, &policy).findings.is_empty());
}

/// A device that records the ranges read, so corruption can aim at the
/// bytes the check really looks at.
#[derive(Debug)]
struct Recorder {
    inner: MemDevice,
    reads: std::sync::Mutex<Vec<(u64, usize)>>,
}

impl khoi_block::BlockDevice for Recorder {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn caps(&self) -> khoi_block::Caps {
        self.inner.caps()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> khoi_block::device::Result<()> {
        self.reads.lock().unwrap().push((offset, buf.len()));
        self.inner.read_at(buf, offset)
    }
    fn read_plan(
        &self,
        offset: u64,
        len: u64,
    ) -> khoi_block::device::Result<Vec<khoi_block::ReadSegment>> {
        self.inner.read_plan(offset, len)
    }
    fn write_at(
        &self,
        buf: &[u8],
        offset: u64,
        flags: khoi_block::WriteFlags,
    ) -> khoi_block::device::Result<()> {
        self.inner.write_at(buf, offset, flags)
    }
    fn flush(&self) -> khoi_block::device::Result<()> {
        self.inner.flush()
    }
    fn trim(
        &self,
        offset: u64,
        len: u64,
        flags: khoi_block::WriteFlags,
    ) -> khoi_block::device::Result<()> {
        self.inner.trim(offset, len, flags)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: khoi_block::WriteFlags,
    ) -> khoi_block::device::Result<()> {
        self.inner.write_zeroes(offset, len, flags)
    }
    fn extents(
        &self,
        offset: u64,
        len: u64,
    ) -> khoi_block::device::Result<Vec<khoi_block::Extent>> {
        self.inner.extents(offset, len)
    }
}

/// Corrupt the clean image at random offsets inside the ranges a check of it
/// reads (partition table, boot sector, MFT records, indexes, hives, the
/// SQLite file) and check it with panics let through: no parser may panic,
/// and the check must still return a report.
#[test]
fn corrupted_images_never_panic() {
    let clean = clean_bytes();
    let rec = Recorder {
        inner: MemDevice::read_only(clean.clone()),
        reads: std::sync::Mutex::new(Vec::new()),
    };
    assert!(check(&rec, Profile::Counter, &counter_policy()).passed());
    let reads = rec.reads.into_inner().unwrap();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let baseline = khoi_inspect::fuzz::image(clean).findings;
    let mut malformed = 0;
    let mut differs = 0;
    let iterations = 200;
    for _ in 0..iterations {
        let mut b = clean.clone();
        for _ in 0..(next() % 8 + 1) {
            let (off, len) = reads[(next() % reads.len() as u64) as usize];
            let i = (off + next() % len as u64) as usize;
            b[i] = next() as u8;
        }
        let r = khoi_inspect::fuzz::image(&b);
        malformed += usize::from(r.has(RuleId::MalformedImage));
        differs += usize::from(r.findings != baseline);
    }
    eprintln!(
        "{iterations} corrupted images: {differs} with findings, {malformed} reported malformed"
    );
    // Reads come in 64 KiB chunks, so many edits land in bytes no parser
    // looks at; some must still hit a structure.
    assert!(malformed > 0, "the corruption should hit parsed structures");
}

fn fixture_hives() -> &'static Vec<Vec<u8>> {
    static HIVES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    HIVES.get_or_init(|| {
        let img = Image::clean();
        let dir = tempfile::tempdir().unwrap();
        vec![
            fixture::build_hive(dir.path(), "SYSTEM", &img.system),
            fixture::build_hive(dir.path(), "SAM", &img.sam),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

    /// Hives corrupted at random offsets (the SAM one exercises the F/V/C
    /// decoders) parse to an error or to values, never a panic.
    #[test]
    fn corrupted_hives_never_panic(
        which in 0usize..2,
        edits in proptest::collection::vec((proptest::prelude::any::<u32>(), proptest::prelude::any::<u8>()), 1..16),
    ) {
        let mut h = fixture_hives()[which].clone();
        for (off, byte) in edits {
            let i = off as usize % h.len();
            h[i] = byte;
        }
        khoi_inspect::fuzz::hive(&h);
    }

    #[test]
    fn random_sam_records_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        khoi_inspect::fuzz::sam_records(&bytes);
    }
}

#[test]
fn corrupted_login_data_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let clean = fixture::login_data(
        dir.path(),
        &[Login {
            origin: "https://dichvucong.gov.vn/".into(),
            blacklisted: false,
        }],
    );
    let mut seed: u64 = 12345;
    for _ in 0..200 {
        let mut b = clean.clone();
        for _ in 0..8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed % b.len() as u64) as usize;
            b[i] = (seed >> 32) as u8;
        }
        khoi_inspect::fuzz::login_data(&b);
    }
}
