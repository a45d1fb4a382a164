//! Builds Windows-like disk images from Debian tools, the way an officer's
//! golden image looks to the gate:
//!
//! - `mkntfs` (ntfs-3g) formats a separate file, which `ntfs-3g -o no_detach`
//!   mounts through FUSE (no loop device) so directories and files can be
//!   written; a guard unmounts it and waits for the driver to exit.
//! - Hives start from a minimal `regf` file written here (one hive bin: a
//!   security cell and the root key) and get their keys and values from
//!   `hivexregedit --merge` (libwin-hivex-perl).
//! - `Login Data` files are made by the `sqlite3` shell with Chromium's
//!   column names for the columns the check reads.
//! - `sfdisk` (MBR) or `sgdisk` (GPT) writes the partition table; the NTFS
//!   file is copied in at 1 MiB.
//!
//! SAM fixtures are a model: only the records the check decodes exist (each
//! user's `F` and `V` with the fields at their real offsets, the Account
//! domain's `V` ending in the machine SID, alias 0x220's `C`), zero-filled
//! elsewhere. A real SAM has many more fields and keys; they are not read.
//!
//! A missing tool fails the test with its name: fixtures never skip.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sam_layout;

pub const MIB: u64 = 1 << 20;
/// The partition starts at 1 MiB, like Windows lays it out.
pub const PART_START: u64 = MIB;

fn run(cmd: &mut Command) -> String {
    let name = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("fixture tool missing or failed to start ({e}): {name}; install ntfs-3g, libhivex-bin, libwin-hivex-perl, sqlite3, fdisk, gdisk"));
    assert!(
        out.status.success(),
        "{name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A registry value for `hivexregedit`.
#[derive(Debug, Clone)]
pub enum Val {
    Dword(u32),
    Sz(String),
    Bin(Vec<u8>),
}

/// Keys (backslash paths from the hive root) and their values.
#[derive(Debug, Clone, Default)]
pub struct RegSpec {
    pub keys: BTreeMap<String, BTreeMap<String, Val>>,
}

impl RegSpec {
    pub fn key(&mut self, path: &str) -> &mut BTreeMap<String, Val> {
        self.keys.entry(path.to_string()).or_default()
    }

    pub fn set(&mut self, path: &str, name: &str, v: Val) {
        self.key(path).insert(name.to_string(), v);
    }

    pub fn unset(&mut self, path: &str, name: &str) {
        self.key(path).remove(name);
    }

    fn reg_text(&self) -> String {
        let mut all: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for k in self.keys.keys() {
            let parts: Vec<&str> = k.split('\\').collect();
            for i in 1..=parts.len() {
                let p = parts[..i].join("\\");
                if seen.insert(p.clone()) {
                    all.push(p);
                }
            }
        }
        let mut s = String::from("Windows Registry Editor Version 5.00\n\n");
        for k in &all {
            writeln!(s, "[HKEY_LOCAL_MACHINE\\X\\{k}]").unwrap();
            if let Some(vals) = self.keys.get(k) {
                for (name, v) in vals {
                    let n = if name.is_empty() {
                        "@".to_string()
                    } else {
                        format!("\"{name}\"")
                    };
                    match v {
                        Val::Dword(d) => writeln!(s, "{n}=dword:{d:08x}").unwrap(),
                        Val::Sz(t) => writeln!(s, "{n}=\"{t}\"").unwrap(),
                        Val::Bin(b) => {
                            let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
                            writeln!(s, "{n}=hex:{}", hex.join(",")).unwrap()
                        }
                    }
                }
            }
            s.push('\n');
        }
        s
    }
}

/// The smallest hive `hivex` accepts: a base block, one 4 KiB hive bin with a
/// security cell and the root key, and the rest of the bin free.
pub fn minimal_hive() -> Vec<u8> {
    fn cell(data: &[u8]) -> Vec<u8> {
        let size = (data.len() + 4).div_ceil(8) * 8;
        let mut c = (-(size as i32)).to_le_bytes().to_vec();
        c.extend_from_slice(data);
        c.resize(size, 0);
        c
    }
    let sk_off: u32 = 0x20;
    // Self-relative security descriptor with no owner, group or ACLs.
    let sd: [u8; 20] = [
        1, 0, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut sk = b"sk".to_vec();
    sk.extend_from_slice(&0u16.to_le_bytes());
    for v in [sk_off, sk_off, 1, sd.len() as u32] {
        sk.extend_from_slice(&v.to_le_bytes());
    }
    sk.extend_from_slice(&sd);
    let skc = cell(&sk);
    let nk_off = sk_off + skc.len() as u32;
    let name = b"ROOT";
    let mut nk = b"nk".to_vec();
    nk.extend_from_slice(&0x2Cu16.to_le_bytes()); // hive entry, no delete, ASCII name
    nk.extend_from_slice(&0u64.to_le_bytes());
    for v in [
        0u32,
        0xFFFF_FFFF,
        0,
        0,
        0xFFFF_FFFF,
        0xFFFF_FFFF,
        0,
        0xFFFF_FFFF,
        sk_off,
        0xFFFF_FFFF,
        0,
        0,
        0,
        0,
        0,
    ] {
        nk.extend_from_slice(&v.to_le_bytes());
    }
    nk.extend_from_slice(&(name.len() as u16).to_le_bytes());
    nk.extend_from_slice(&0u16.to_le_bytes());
    nk.extend_from_slice(name);
    let nkc = cell(&nk);
    let mut bin = b"hbin".to_vec();
    bin.extend_from_slice(&0u32.to_le_bytes());
    bin.extend_from_slice(&4096u32.to_le_bytes());
    bin.resize(32, 0);
    bin.extend_from_slice(&skc);
    bin.extend_from_slice(&nkc);
    let free = 4096 - bin.len();
    bin.extend_from_slice(&(free as i32).to_le_bytes());
    bin.resize(4096, 0);
    let mut base = vec![0u8; 4096];
    base[0..4].copy_from_slice(b"regf");
    for (at, v) in [
        (4, 1u32),
        (8, 1),
        (20, 1),
        (24, 5),
        (28, 0),
        (32, 1),
        (36, nk_off),
        (40, 4096),
        (44, 1),
    ] {
        base[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    let sum = (0..127).fold(0u32, |x, i| {
        x ^ u32::from_le_bytes(base[i * 4..i * 4 + 4].try_into().unwrap())
    });
    base[508..512].copy_from_slice(&sum.to_le_bytes());
    base.extend_from_slice(&bin);
    base
}

/// Build a hive file from `spec` with `hivexregedit`.
pub fn build_hive(dir: &Path, name: &str, spec: &RegSpec) -> Vec<u8> {
    let hive = dir.join(format!("{name}.hive"));
    let reg = dir.join(format!("{name}.reg"));
    fs::write(&hive, minimal_hive()).unwrap();
    fs::write(&reg, spec.reg_text()).unwrap();
    run(Command::new("hivexregedit")
        .arg("--merge")
        .arg("--prefix")
        .arg("HKEY_LOCAL_MACHINE\\X")
        .arg(&hive)
        .arg(&reg));
    fs::read(&hive).unwrap()
}

/// A saved login or a "never save" entry in a `Login Data` file.
#[derive(Debug, Clone)]
pub struct Login {
    pub origin: String,
    pub blacklisted: bool,
}

pub fn login_data(dir: &Path, logins: &[Login]) -> Vec<u8> {
    let db = dir.join(format!("login-{}.db", logins.len() * 1000 + rand_suffix()));
    let mut sql = String::from(
        "CREATE TABLE meta(key LONGVARCHAR NOT NULL UNIQUE PRIMARY KEY, value LONGVARCHAR);\
         INSERT INTO meta VALUES('version','40');\
         CREATE TABLE logins (origin_url VARCHAR NOT NULL, action_url VARCHAR, \
         username_element VARCHAR, username_value VARCHAR, password_element VARCHAR, \
         password_value BLOB, submit_element VARCHAR, signon_realm VARCHAR NOT NULL, \
         date_created INTEGER NOT NULL, blacklisted_by_user INTEGER NOT NULL, scheme INTEGER NOT NULL, \
         password_type INTEGER, times_used INTEGER, id INTEGER PRIMARY KEY AUTOINCREMENT);",
    );
    for l in logins {
        write!(
            sql,
            "INSERT INTO logins (origin_url, username_value, password_value, signon_realm, \
             date_created, blacklisted_by_user, scheme) VALUES ('{o}', '{u}', x'763130deadbeef', '{o}', 13300000000000000, {b}, 0);",
            o = l.origin,
            u = if l.blacklisted { "" } else { "canbo.secret" },
            b = u8::from(l.blacklisted),
        )
        .unwrap();
    }
    run(Command::new("sqlite3").arg(&db).arg(&sql));
    fs::read(&db).unwrap()
}

fn rand_suffix() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Partition table of a fixture disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Mbr,
    Gpt,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub table: Table,
    pub ntfs_mib: u64,
    pub system: RegSpec,
    pub software: RegSpec,
    pub sam: RegSpec,
    pub security: RegSpec,
    /// Files (backslash paths) and their contents.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Login Data files: path → logins.
    pub logins: BTreeMap<String, Vec<Login>>,
    pub dirty: bool,
}

pub const CS: &str = "ControlSet001";
pub const WINLOGON: &str = "Microsoft\\Windows NT\\CurrentVersion\\Winlogon";
pub const USERS: &str = "SAM\\Domains\\Account\\Users";
pub const DOMAIN: [u32; 3] = [1_111_111_111, 222_222_222, 333_333_333];

pub fn domain_sid_rid(rid: u32) -> Vec<u8> {
    sam_layout::sid(5, &[21, DOMAIN[0], DOMAIN[1], DOMAIN[2], rid])
}

pub fn chrome_login(user: &str, profile: &str) -> String {
    format!("Users\\{user}\\AppData\\Local\\Google\\Chrome\\User Data\\{profile}\\Login Data")
}

impl Image {
    /// A counter workstation that passes: standard user `canbo`, an allowed
    /// admin `quantri`, every policy set, no Wi-Fi, a boot-start NIC driver.
    pub fn clean() -> Image {
        let mut img = Image {
            table: Table::Mbr,
            ntfs_mib: 24,
            system: RegSpec::default(),
            software: RegSpec::default(),
            sam: RegSpec::default(),
            security: RegSpec::default(),
            files: BTreeMap::new(),
            logins: BTreeMap::new(),
            dirty: false,
        };
        let s = &mut img.system;
        s.set("Select", "Current", Val::Dword(1));
        s.set(&format!("{CS}\\Services\\WlanSvc"), "Start", Val::Dword(4));
        s.set(
            &format!("{CS}\\Services\\e1iexpress"),
            "Start",
            Val::Dword(0),
        );
        s.set(
            &format!("{CS}\\Services\\e1iexpress"),
            "Type",
            Val::Dword(1),
        );
        s.set(
            &format!("{CS}\\Services\\e1iexpress"),
            "Group",
            Val::Sz("NDIS".into()),
        );
        s.set(&format!("{CS}\\Services\\NDIS"), "Start", Val::Dword(0));
        s.set(
            &format!("{CS}\\Services\\NDIS"),
            "Group",
            Val::Sz("NDIS Wrapper".into()),
        );
        s.set(
            &format!("{CS}\\Control\\Session Manager\\Power"),
            "HiberbootEnabled",
            Val::Dword(0),
        );
        s.set(
            &format!("{CS}\\Control\\Power"),
            "HibernateEnabled",
            Val::Dword(0),
        );
        let sw = &mut img.software;
        for k in [
            "Policies\\Google\\Chrome",
            "Policies\\Microsoft\\Edge",
            "Policies\\CocCoc\\Browser",
        ] {
            sw.set(k, "PasswordManagerEnabled", Val::Dword(0));
        }
        sw.set(WINLOGON, "AutoAdminLogon", Val::Sz("0".into()));
        sw.set(WINLOGON, "DefaultUserName", Val::Sz("canbo".into()));
        let mut v = vec![0u8; 0x100];
        v.extend_from_slice(&sam_layout::sid(5, &[21, DOMAIN[0], DOMAIN[1], DOMAIN[2]]));
        img.sam.set("SAM\\Domains\\Account", "V", Val::Bin(v));
        img.user(500, "Administrator", true);
        img.user(501, "Guest", true);
        img.user(1001, "canbo", false);
        img.user(1002, "quantri", false);
        img.admins(&[500, 1002]);
        img.security
            .set("Policy\\Secrets", "", Val::Sz(String::new()));
        img.files.insert(
            "Windows\\System32\\drivers\\etc\\hosts".into(),
            b"127.0.0.1 localhost\r\n".to_vec(),
        );
        img.files
            .insert("Users\\canbo\\NTUSER.DAT".into(), minimal_hive());
        img.files.insert(
            "ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces\\.keep".into(),
            Vec::new(),
        );
        img.logins.insert(
            chrome_login("canbo", "Default"),
            vec![Login {
                origin: "https://dichvucong.gov.vn/".into(),
                blacklisted: true,
            }],
        );
        img
    }

    pub fn user(&mut self, rid: u32, name: &str, disabled: bool) {
        let k = format!("{USERS}\\{rid:08X}");
        self.sam
            .set(&k, "F", Val::Bin(sam_layout::user_f(rid, disabled)));
        self.sam.set(&k, "V", Val::Bin(sam_layout::user_v(name)));
        self.sam.key(&format!("{USERS}\\Names\\{name}"));
    }

    pub fn admins(&mut self, rids: &[u32]) {
        let members: Vec<Vec<u8>> = rids.iter().map(|&r| domain_sid_rid(r)).collect();
        self.sam.set(
            "SAM\\Domains\\Builtin\\Aliases\\00000220",
            "C",
            Val::Bin(sam_layout::alias_c(544, &members)),
        );
    }

    /// The raw disk.
    pub fn build(&self) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        fs::read(self.build_file(dir.path())).unwrap()
    }

    /// The disk as a sparse file in `dir` (for images too big for memory).
    pub fn build_file(&self, dir: &Path) -> PathBuf {
        let ntfs_path = self.build_ntfs(dir);
        let ntfs_len = fs::metadata(&ntfs_path).unwrap().len();
        let disk = dir.join("disk.img");
        let size = PART_START + ntfs_len + MIB;
        fs::File::create(&disk).unwrap().set_len(size).unwrap();
        let sectors = ntfs_len / 512;
        match self.table {
            Table::Mbr => {
                let script = format!("label: dos\nstart=2048, size={sectors}, type=7, bootable\n");
                let mut child = Command::new("sfdisk")
                    .arg("--no-reread")
                    .arg("-q")
                    .arg(&disk)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("sfdisk (fdisk package) must be installed");
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(script.as_bytes())
                    .unwrap();
                assert!(child.wait().unwrap().success(), "sfdisk failed");
            }
            Table::Gpt => {
                run(Command::new("sgdisk")
                    .arg("-n")
                    .arg(format!("1:2048:{}", 2048 + sectors - 1))
                    .arg("-t")
                    .arg("1:0700")
                    .arg(&disk));
            }
        }
        copy_sparse(&ntfs_path, &disk, PART_START);
        fs::remove_file(&ntfs_path).unwrap();
        disk
    }

    fn build_ntfs(&self, dir: &Path) -> PathBuf {
        let img = dir.join("ntfs.img");
        fs::File::create(&img)
            .unwrap()
            .set_len(self.ntfs_mib * MIB)
            .unwrap();
        run(Command::new("mkntfs")
            .args([
                "-F", "-f", "-q", "-s", "512", "-p", "2048", "-H", "255", "-S", "63", "-L",
                "Windows",
            ])
            .arg(&img));
        {
            let mnt = Mount::new(&img, &dir.join("mnt"));
            let root = mnt.dir.clone();
            let cfg = root.join("Windows/System32/config");
            fs::create_dir_all(&cfg).unwrap();
            for (name, spec) in [
                ("SYSTEM", &self.system),
                ("SOFTWARE", &self.software),
                ("SAM", &self.sam),
                ("SECURITY", &self.security),
            ] {
                if spec.keys.is_empty() {
                    continue;
                }
                fs::write(cfg.join(name), build_hive(dir, name, spec)).unwrap();
            }
            for (path, data) in &self.files {
                write_file(&root, path, data);
            }
            for (path, logins) in &self.logins {
                write_file(&root, path, &login_data(dir, logins));
            }
        }
        if self.dirty {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .unwrap();
            let mut head = vec![0u8; 512];
            f.read_exact_at(&mut head, 0).unwrap();
            let (rec_at, rec_size) = volume_record(&head);
            let mut rec = vec![0u8; rec_size];
            f.read_exact_at(&mut rec, rec_at).unwrap();
            set_dirty(&mut rec);
            f.write_all_at(&rec, rec_at).unwrap();
        }
        img
    }
}

fn write_file(root: &Path, path: &str, data: &[u8]) {
    let p = root.join(path.replace('\\', "/"));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    if p.file_name().is_some_and(|n| n == ".keep") {
        return;
    }
    fs::write(p, data).unwrap();
}

/// Where `$Volume` (MFT record 3) is, from the NTFS boot sector.
fn volume_record(boot: &[u8]) -> (u64, usize) {
    let bps = u64::from(u16::from_le_bytes([boot[11], boot[12]]));
    let cluster = bps * u64::from(boot[13]);
    let mft_lcn = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap());
    let cpr = boot[0x40] as i8;
    let rec_size = if cpr < 0 {
        1u64 << (-cpr)
    } else {
        cpr as u64 * cluster
    };
    (mft_lcn * cluster + 3 * rec_size, rec_size as usize)
}

/// Set the dirty flag in `$VOLUME_INFORMATION` of the `$Volume` record, as
/// Windows leaves it when it did not shut down cleanly. No ntfs-3g tool sets
/// it (ntfsfix only clears it).
pub fn set_dirty(rec: &mut [u8]) {
    assert_eq!(&rec[..4], b"FILE");
    let mut at = usize::from(u16::from_le_bytes([rec[0x14], rec[0x15]]));
    loop {
        let ty = u32::from_le_bytes(rec[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(rec[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(
            ty != 0xFFFF_FFFF && len > 0,
            "$VOLUME_INFORMATION not found"
        );
        if ty == 0x70 {
            let content = at + usize::from(u16::from_le_bytes([rec[at + 0x14], rec[at + 0x15]]));
            let flags = content + 10;
            assert!(
                flags % 512 < 510,
                "flags would sit under the update sequence"
            );
            rec[flags] |= 1;
            return;
        }
        at += len;
    }
}

/// Copy `src` into `dst` at `offset`, leaving all-zero blocks as holes.
fn copy_sparse(src: &Path, dst: &Path, offset: u64) {
    let s = fs::File::open(src).unwrap();
    let d = fs::OpenOptions::new().write(true).open(dst).unwrap();
    let len = s.metadata().unwrap().len();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        s.read_exact_at(&mut buf[..n], at).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            d.write_all_at(&buf[..n], offset + at).unwrap();
        }
        at += n as u64;
    }
}

/// An ntfs-3g FUSE mount of an image file, unmounted on drop; the driver
/// runs in the foreground so the unmount can wait for it to finish writing.
struct Mount {
    dir: PathBuf,
    child: Child,
}

impl Mount {
    fn new(img: &Path, dir: &Path) -> Mount {
        fs::create_dir_all(dir).unwrap();
        let child = Command::new("ntfs-3g")
            .arg("-o")
            .arg("no_detach")
            .arg(img)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ntfs-3g (package ntfs-3g) must be installed, with /dev/fuse");
        let mut m = Mount {
            dir: dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let target = fs::canonicalize(dir).unwrap();
        loop {
            let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
            if mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(target.to_str().unwrap()))
            {
                return m;
            }
            if let Some(st) = m.child.try_wait().unwrap() {
                panic!("ntfs-3g exited with {st} before mounting {}", img.display());
            }
            assert!(
                Instant::now() < deadline,
                "ntfs-3g did not mount {}",
                img.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = self.child.wait();
    }
}
