//! `fix` on real NTFS images: every fixable finding of a failing image is
//! gone after it, checked again by the gate and read back with ntfs-3g's and
//! hivex's own tools, and the secrets' bytes are nowhere on the disk. The
//! tools run the way the packaged service runs them: as an unprivileged
//! user with `no_new_privs` (so no setuid helper can be used).

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod fixture;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fixture::{CS, Image, Login, PART_START, Table, Val, WINLOGON, chrome_login};
use khoi_block::{BlockDevice, MemDevice};
use khoi_inspect::fix::{self, ApplyOptions, Remedy};
use khoi_inspect::{Policy, Profile, Report, RuleId, check};

const NOBODY: u32 = 65534;
const PSK: &str = "KhoaWifiBiMat2025";
const PASSWORD_BLOB: [u8; 7] = [0x76, 0x31, 0x30, 0xde, 0xad, 0xbe, 0xef];

fn policy() -> Policy {
    Policy {
        admin_allow: vec!["quantri".into()],
        disabled: Vec::new(),
    }
}

/// Everything `fix` can fix, at once.
fn failing_image() -> Image {
    let mut img = Image::clean();
    img.logins.insert(
        chrome_login("canbo", "Default"),
        vec![
            Login {
                origin: "https://dichvucong.gov.vn/".into(),
                blacklisted: false,
            },
            Login {
                origin: "https://never.example/".into(),
                blacklisted: true,
            },
        ],
    );
    img.logins.insert(
        "Users\\vanthu\\AppData\\Local\\CocCoc\\Browser\\User Data\\Profile 1\\Login Data For Account"
            .into(),
        vec![Login {
            origin: "https://qlvb.tinh.gov.vn/".into(),
            blacklisted: false,
        }],
    );
    for k in [
        "Policies\\Google\\Chrome",
        "Policies\\Microsoft\\Edge",
        "Policies\\CocCoc\\Browser",
    ] {
        img.software.unset(k, "PasswordManagerEnabled");
    }
    img.software
        .set(WINLOGON, "AutoAdminLogon", Val::Sz("1".into()));
    img.software
        .set(WINLOGON, "DefaultPassword", Val::Sz("MatKhau@123".into()));
    img.security.set(
        "Policy\\Secrets\\DefaultPassword\\CurrVal",
        "",
        Val::Bin(vec![1, 2, 3]),
    );
    img.files.insert(
        "ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces\\{6B4A1E6B-1111-2222-3333-444455556666}\\{0D3C1F3A-AAAA-BBBB-CCCC-DDDDEEEEFFFF}.xml".into(),
        format!("<WLANProfile><keyMaterial>{PSK}</keyMaterial></WLANProfile>").into_bytes(),
    );
    img.system
        .set(&format!("{CS}\\Services\\WlanSvc"), "Start", Val::Dword(2));
    img.system.set(
        &format!("{CS}\\Control\\Session Manager\\Power"),
        "HiberbootEnabled",
        Val::Dword(1),
    );
    img.system
        .unset(&format!("{CS}\\Control\\Power"), "HibernateEnabled");
    img.files.insert("hiberfil.sys".into(), vec![0; 64 * 1024]);
    img
}

/// Run the child as `nobody` with `no_new_privs`, like the packaged unit.
fn unprivileged(cmd: &mut Command) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    // SAFETY: prctl with integer arguments, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn workdir() -> tempfile::TempDir {
    let parent = std::env::temp_dir();
    let dir = fix::workdir_in(&parent).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    dir
}

fn run_fix(dev: &Arc<MemDevice>, before: &Report) -> fix::Applied {
    let target = fix::locate(dev.as_ref()).unwrap();
    assert_eq!(target.part_start, PART_START);
    assert_eq!(target.control_set, 1);
    let remedies = fix::remedies(before);
    let wd = workdir();
    let opts = ApplyOptions {
        workdir: wd.path().to_path_buf(),
        timeout: Duration::from_secs(300),
    };
    let dyn_dev: Arc<dyn BlockDevice> = dev.clone();
    fix::apply(dyn_dev, target, &remedies, &opts, &unprivileged)
        .unwrap_or_else(|e| panic!("fix failed: {e}"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ntfscat` a file of the partition image `part` into `dir`.
fn ntfscat(part: &Path, path: &str, dir: &Path) -> std::path::PathBuf {
    let out = Command::new("ntfscat")
        .arg(part)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ntfscat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = path.rsplit('/').next().unwrap().replace(' ', "_");
    let to = dir.join(name);
    std::fs::write(&to, out.stdout).unwrap();
    to
}

#[test]
fn fix_turns_a_failing_image_into_a_passing_one_and_the_secrets_are_gone() {
    let bytes = failing_image().build();
    assert!(
        contains(&bytes, PSK.as_bytes()),
        "the fixture holds the PSK"
    );
    assert!(contains(&bytes, &utf16("MatKhau@123")));
    assert_eq!(count(&bytes, &PASSWORD_BLOB), 3);
    let dev = Arc::new(MemDevice::from_vec(bytes));
    let before = check(dev.as_ref(), Profile::Counter, &policy());
    for id in [
        RuleId::SavedBrowserPassword,
        RuleId::PasswordManagerChrome,
        RuleId::PasswordManagerEdge,
        RuleId::PasswordManagerCocCoc,
        RuleId::AutologonStoredPassword,
        RuleId::WlanProfileSaved,
        RuleId::WlanServiceEnabled,
        RuleId::FastStartupEnabled,
        RuleId::HiberfilPresent,
    ] {
        assert!(before.has(id), "{id:?} missing: {:#?}", before.findings);
    }
    assert_eq!(fix::refusal(&before), None);
    let applied = run_fix(&dev, &before);
    assert_eq!(applied.remedies.len(), 8, "{applied:?}");

    let after = check(dev.as_ref(), Profile::Counter, &policy());
    assert!(
        after.findings.is_empty(),
        "{:#?}\n{}",
        after.findings,
        applied.log
    );
    let d = fix::diff(&before, &after);
    assert_eq!(d.fixed.len(), before.findings.len());
    assert!(d.remaining.is_empty() && d.new.is_empty());

    // Read back with the Debian tools, not with the gate's own reader.
    let raw = dev.contents();
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part.img");
    let target = fix::locate(dev.as_ref()).unwrap();
    let start = target.part_start as usize;
    std::fs::write(&part, &raw[start..start + target.part_len as usize]).unwrap();
    let listing = tool(Command::new("ntfsls").arg("-R").arg("-a").arg(&part));
    assert!(
        !listing.to_lowercase().contains("hiberfil.sys"),
        "{listing}"
    );
    assert!(!listing.contains(".xml"), "{listing}");
    let login = ntfscat(
        &part,
        "/Users/canbo/AppData/Local/Google/Chrome/User Data/Default/Login Data",
        dir.path(),
    );
    let rows = tool(
        Command::new("sqlite3")
            .arg(&login)
            .arg("SELECT origin_url, blacklisted_by_user FROM logins"),
    );
    assert_eq!(
        rows.trim(),
        "https://never.example/|1",
        "never-save rows stay"
    );
    let software = ntfscat(&part, "/Windows/System32/config/SOFTWARE", dir.path());
    let system = ntfscat(&part, "/Windows/System32/config/SYSTEM", dir.path());
    let security = ntfscat(&part, "/Windows/System32/config/SECURITY", dir.path());
    for k in [
        "\\Policies\\Google\\Chrome",
        "\\Policies\\Microsoft\\Edge",
        "\\Policies\\CocCoc\\Browser",
        "\\Policies\\CocCoc\\CocCoc",
    ] {
        let v = tool(
            Command::new("hivexget")
                .arg(&software)
                .arg(k)
                .arg("PasswordManagerEnabled"),
        );
        assert_eq!(v.trim(), "0", "{k}");
    }
    let winlogon = tool(
        Command::new("hivexget")
            .arg(&software)
            .arg(format!("\\{WINLOGON}")),
    );
    assert!(!winlogon.contains("DefaultPassword"), "{winlogon}");
    let start_v = tool(
        Command::new("hivexget")
            .arg(&system)
            .arg(format!("\\{CS}\\Services\\WlanSvc"))
            .arg("Start"),
    );
    assert_eq!(start_v.trim(), "4");
    let script = dir.path().join("ls.hivexsh");
    std::fs::write(&script, "cd \\Policy\\Secrets\nls\n").unwrap();
    let secrets = tool(
        Command::new("hivexsh")
            .arg("-f")
            .arg(&script)
            .arg(&security),
    );
    assert!(!secrets.contains("DefaultPassword"), "{secrets}");

    // The secrets' bytes are gone from the whole disk, not just unlinked.
    assert!(
        !contains(&raw, PSK.as_bytes()),
        "the Wi-Fi key is still on disk"
    );
    // The fixture gives the kept "never save" row the same blob: one left.
    assert_eq!(
        count(&raw, &PASSWORD_BLOB),
        1,
        "a saved password is still on disk"
    );
    assert!(!contains(&raw, b"canbo.secret"));
    assert!(
        !contains(&raw, &utf16("MatKhau@123")),
        "the autologon password is still on disk"
    );
}

#[test]
fn hibernated_and_dirty_volumes_are_refused() {
    let mut img = Image::clean();
    let mut hib = b"HIBR".to_vec();
    hib.resize(256 * 1024, 0);
    img.files.insert("hiberfil.sys".into(), hib);
    let r = check(
        &MemDevice::read_only(img.build()),
        Profile::Counter,
        &policy(),
    );
    assert!(r.has(RuleId::HiberfilPresent));
    assert!(fix::refusal(&r).is_some_and(|s| s.contains("hibernated")));
    // hiberfil.sys has a remedy, but not on a hibernated volume.
    assert!(fix::remedies(&r).contains(&Remedy::Hiberfil));

    let mut img = Image::clean();
    img.dirty = true;
    img.system
        .set(&format!("{CS}\\Services\\WlanSvc"), "Start", Val::Dword(2));
    let bytes = img.build();
    let r = check(
        &MemDevice::read_only(bytes.clone()),
        Profile::Counter,
        &policy(),
    );
    assert!(fix::refusal(&r).is_some_and(|s| s.contains("dirty")));

    // Behind the check, ntfs-3g itself will not write a dirty volume: the
    // run fails and the device is left as it was.
    let dev = Arc::new(MemDevice::from_vec(bytes.clone()));
    let target = fix::locate(dev.as_ref()).unwrap();
    let wd = workdir();
    let opts = ApplyOptions {
        workdir: wd.path().to_path_buf(),
        timeout: Duration::from_secs(120),
    };
    let dyn_dev: Arc<dyn BlockDevice> = dev.clone();
    let err = fix::apply(
        dyn_dev,
        target,
        &[Remedy::WlanService],
        &opts,
        &unprivileged,
    )
    .expect_err("ntfs-3g must refuse a dirty volume");
    assert!(err.to_string().contains("ntfs-3g"), "{err}");
    assert!(dev.contents() == bytes, "nothing was written");
}

/// The partition is found through a GPT as well, and one finding alone is
/// fixed alone.
#[test]
fn fix_on_a_gpt_disk() {
    let mut img = Image::clean();
    img.table = Table::Gpt;
    img.system
        .set(&format!("{CS}\\Services\\WlanSvc"), "Start", Val::Dword(3));
    let dev = Arc::new(MemDevice::from_vec(img.build()));
    let before = check(dev.as_ref(), Profile::Counter, &policy());
    assert_eq!(fix::remedies(&before), [Remedy::WlanService]);
    let applied = run_fix(&dev, &before);
    assert_eq!(applied.remedies, [Remedy::WlanService]);
    let after = check(dev.as_ref(), Profile::Counter, &policy());
    assert!(after.findings.is_empty(), "{:#?}", after.findings);
    assert_eq!(after.stats.table, "gpt");
}
