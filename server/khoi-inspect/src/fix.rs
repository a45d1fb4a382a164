//! `khoi image fix`: the safe remedies, applied offline to a draft with a
//! real NTFS writer.
//!
//! Why this way (the long form is in `docs/image-gate.md`): deleting files
//! and growing a hive need NTFS allocation, which only ntfs-3g does right;
//! ntfs-3g needs a file that *is* the partition; and the packaged service runs
//! as its own user with `NoNewPrivileges`, so the setuid `fusermount` and
//! loop devices are out of reach. What is left, and what this module does:
//!
//! 1. Khoi serves the draft's Windows partition ([`Window`] over the draft
//!    overlay) as NBD over one end of a socket pair, in process. No socket
//!    file, no listener: only the child holding the other end can talk to it.
//! 2. The child is `unshare --user --mount --keep-caps`: an unprivileged user
//!    namespace in which the child may mount FUSE itself (kernel ≥ 4.18). In
//!    it, `nbdfuse --fd 3` turns the NBD connection into a file, and
//!    `ntfs-3g` mounts that file. The mounts exist only in that namespace and
//!    vanish with its last process, even after a `kill -9`.
//! 3. The remedies are fixed commands on fixed paths found with `find`
//!    (case-insensitively, as Windows names them): `sqlite3 -safe` deletes
//!    saved logins with `secure_delete` (the rows' bytes are zeroed, and the
//!    rollback journal stays in memory, so no copy of a page lands in a freed
//!    cluster), `shred -z -u` zeroes then removes Wi-Fi profiles (they hold
//!    the key), `hivexregedit --merge` applies `.reg` files written here
//!    (no text from the image goes into them).
//!
//! Nothing from the image is interpolated into the script: it is a constant,
//! its arguments are Khoi's own paths and step names, and names found on the
//! volume reach the tools only as `find -exec` arguments.

use std::fmt::Write as _;
use std::io::Read as _;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use khoi_block::{BlockDevice, BlockError, Checked, DeviceCaps, Extent, ReadSegment, WriteFlags};

type BlockResult<T> = std::result::Result<T, BlockError>;
use serde::{Deserialize, Serialize};

use crate::check::guarded;
use crate::hive::Hive;
use crate::io::{Counters, PartReader, read_exact_at};
use crate::part::{FsKind, fs_kind, read_table};
use crate::report::{Finding, Limits, Report};
use crate::rules::RuleId;
use crate::vol::{R, ReadError, Volume};

/// One remedy `fix` knows how to apply safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Remedy {
    /// Delete the saved-password rows of every browser profile's login files.
    SavedPasswords,
    /// `PasswordManagerEnabled = 0` for Chrome, Edge and both Cốc Cốc keys.
    PasswordManagerPolicies,
    /// Zero and remove the saved Wi-Fi profile files.
    WlanProfiles,
    /// `WlanSvc\Start = 4` (disabled).
    WlanService,
    /// `HiberbootEnabled = 0` and `HibernateEnabled = 0`.
    FastStartup,
    /// Remove `hiberfil.sys` (the volume is not hibernated: that is refused).
    Hiberfil,
    /// Remove Winlogon's `DefaultPassword`.
    AutologonPassword,
    /// Remove the LSA secret `DefaultPassword`.
    AutologonSecret,
}

impl Remedy {
    /// The remedy for a finding, when there is a safe one.
    pub fn for_finding(f: &Finding) -> Option<Remedy> {
        Some(match f.rule {
            RuleId::SavedBrowserPassword => Remedy::SavedPasswords,
            RuleId::PasswordManagerChrome
            | RuleId::PasswordManagerEdge
            | RuleId::PasswordManagerCocCoc => Remedy::PasswordManagerPolicies,
            RuleId::WlanProfileSaved => Remedy::WlanProfiles,
            RuleId::WlanServiceEnabled => Remedy::WlanService,
            RuleId::FastStartupEnabled => Remedy::FastStartup,
            RuleId::HiberfilPresent => Remedy::Hiberfil,
            RuleId::AutologonStoredPassword if f.subject.starts_with("LSA secret") => {
                Remedy::AutologonSecret
            }
            RuleId::AutologonStoredPassword => Remedy::AutologonPassword,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Remedy::SavedPasswords => "saved-passwords",
            Remedy::PasswordManagerPolicies => "password-manager-policies",
            Remedy::WlanProfiles => "wlan-profiles",
            Remedy::WlanService => "wlan-service",
            Remedy::FastStartup => "fast-startup",
            Remedy::Hiberfil => "hiberfil",
            Remedy::AutologonPassword => "autologon-password",
            Remedy::AutologonSecret => "autologon-secret",
        }
    }
}

/// The remedies for a report's findings, each once, in a fixed order.
pub fn remedies(report: &Report) -> Vec<Remedy> {
    let mut v: Vec<Remedy> = report
        .findings
        .iter()
        .filter_map(Remedy::for_finding)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Why a fix must not touch this image at all, from its check: writing a
/// hibernated or dirty NTFS volume loses what Windows has not written yet,
/// and a hive with unapplied logs would have our change undone at boot.
pub fn refusal(report: &Report) -> Option<String> {
    let has = |id| report.has(id);
    if has(RuleId::VolumeHibernated) {
        return Some(
            "Windows is hibernated in this image (Fast Startup): writing it would lose what it \
             has not saved; boot it, turn Fast Startup off and shut down fully first"
                .into(),
        );
    }
    if has(RuleId::NtfsDirty) {
        return Some(
            "the NTFS volume is marked dirty: boot the image, let chkdsk run and shut down fully \
             first"
                .into(),
        );
    }
    if has(RuleId::RegistryHiveDirty) {
        return Some(
            "a registry hive has unapplied transaction logs, which Windows would replay over the \
             fix: boot the image and shut down fully first"
                .into(),
        );
    }
    if has(RuleId::EncryptedVolume) {
        return Some("the image has a BitLocker volume: it cannot be fixed offline".into());
    }
    if has(RuleId::NoWindowsVolume) {
        return Some("no Windows volume was found in the image".into());
    }
    if has(RuleId::MalformedImage) {
        return Some(
            "the image has a malformed structure (see the findings): it is not written".into(),
        );
    }
    None
}

/// Where the Windows volume is and what its SYSTEM hive says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub part_start: u64,
    pub part_len: u64,
    /// `Select\Current`: the control set Windows boots with.
    pub control_set: u64,
}

/// Find the Windows volume (the NTFS partition holding
/// `Windows\System32\config\SYSTEM`) and its current control set.
pub fn locate(dev: &dyn BlockDevice) -> Result<Target, String> {
    guarded(|| locate_inner(dev))
}

fn locate_inner(dev: &dyn BlockDevice) -> R<Target> {
    let counters = Counters::default();
    let limits = Limits::default();
    let table = read_table(dev, &counters, limits.max_partitions)?;
    for p in &table.partitions {
        if p.is_container_or_reserved() {
            continue;
        }
        let mut boot = [0u8; 512];
        read_exact_at(dev, &counters, &mut boot, p.start).map_err(|e| e.to_string())?;
        if fs_kind(&boot) != FsKind::Ntfs {
            continue;
        }
        let mut vol = Volume::open(PartReader::new(dev, &counters, p.start, p.len))?;
        let Some(rec) = vol.find(&["Windows", "System32", "config", "SYSTEM"])? else {
            continue;
        };
        let bytes = vol
            .read_all(rec, limits.max_hive_bytes)
            .map_err(|e| match e {
                ReadError::TooBig(n) => format!("SYSTEM hive of {n} bytes"),
                ReadError::Bad(s) => s,
            })?;
        let hive = Hive::parse("SYSTEM", bytes)?;
        let cs = hive
            .number("Select", "Current")?
            .ok_or("SYSTEM hive: Select\\Current is missing")?;
        if !(1..=999).contains(&cs) {
            return Err(format!("SYSTEM hive: Select\\Current = {cs}"));
        }
        return Ok(Target {
            part_start: p.start,
            part_len: p.len,
            control_set: cs,
        });
    }
    Err("no Windows volume".into())
}

/// A fix that could not run or did not finish. The draft may hold part of
/// the writes; the check after it says what is left.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("{0}")]
    Refused(String),
    #[error("the fix tools failed: {0}")]
    Tools(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How the child runs: the caller confines it (drops to an unprivileged
/// user, resource limits) before it is spawned.
pub type Confine<'a> = &'a dyn Fn(&mut Command);

/// Options for [`apply`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// A private, empty directory the child may write (mount points, `.reg`
    /// files, its log). The child's uid must own it.
    pub workdir: PathBuf,
    /// The whole run is killed after this long.
    pub timeout: Duration,
}

/// What a run did: the steps in order and the tools' own output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub remedies: Vec<Remedy>,
    pub log: String,
}

/// The step script run inside the namespace. `$1` is the work directory,
/// the rest are step names. Exit codes: the failing step's tool's.
const SCRIPT: &str = r#"
set -eu
W=$1; shift
M=$W/mnt; D=$W/dev
mkdir -p "$M" "$D"
nbdfuse "$D" --fd 3 &
NBD=$!
exec 3>&-
NTFS=
cleanup() {
  if [ -n "$NTFS" ]; then umount "$M" 2>/dev/null || true; wait "$NTFS" 2>/dev/null || true; fi
  umount "$D" 2>/dev/null || true
  wait "$NBD" 2>/dev/null || true
}
trap cleanup EXIT
i=0
while [ ! -e "$D/nbd" ]; do
  i=$((i+1)); [ $i -lt 300 ] || { echo "nbdfuse did not start"; exit 70; }
  kill -0 "$NBD" 2>/dev/null || { echo "nbdfuse exited"; exit 70; }
  sleep 0.1
done
# No remove_hiberfile, no recover: ntfs-3g itself refuses a hibernated or
# unclean volume, a second line behind the check.
ntfs-3g -o no_detach,uid=1000,gid=1000,umask=077 "$D/nbd" "$M" &
NTFS=$!
i=0
while ! mountpoint -q "$M"; do
  i=$((i+1)); [ $i -lt 300 ] || { echo "ntfs-3g did not mount"; exit 71; }
  kill -0 "$NTFS" 2>/dev/null || { echo "ntfs-3g refused the volume"; NTFS=; exit 71; }
  sleep 0.1
done
hive() {
  found=$(find "$M" -mindepth 4 -maxdepth 4 -type f -ipath "$M/Windows/System32/config/$1" | head -n 1)
  [ -n "$found" ] || { echo "hive $1 not found"; exit 72; }
  printf '%s\n' "$found"
}
for step in "$@"; do
  echo "step $step"
  case $step in
    logins)
      find "$M" -mindepth 9 -maxdepth 9 -type f \( \
          -ipath "$M/Users/*/AppData/Local/Google/Chrome/User Data/*/Login Data" \
       -o -ipath "$M/Users/*/AppData/Local/Google/Chrome/User Data/*/Login Data For Account" \
       -o -ipath "$M/Users/*/AppData/Local/Microsoft/Edge/User Data/*/Login Data" \
       -o -ipath "$M/Users/*/AppData/Local/Microsoft/Edge/User Data/*/Login Data For Account" \
       -o -ipath "$M/Users/*/AppData/Local/CocCoc/Browser/User Data/*/Login Data" \
       -o -ipath "$M/Users/*/AppData/Local/CocCoc/Browser/User Data/*/Login Data For Account" \
        \) -size +0 -exec sqlite3 -safe -bail -batch {} \
        "PRAGMA trusted_schema=OFF; PRAGMA journal_mode=MEMORY; PRAGMA secure_delete=ON; DELETE FROM logins WHERE blacklisted_by_user = 0;" \; ;;
    wlan-files)
      find "$M" -mindepth 7 -maxdepth 7 -type f \
        -ipath "$M/ProgramData/Microsoft/Wlansvc/Profiles/Interfaces/*/*.xml" \
        -exec shred -n 0 -z -u {} + ;;
    hiberfil)
      find "$M" -mindepth 1 -maxdepth 1 -type f -iname hiberfil.sys -delete ;;
    reg-SYSTEM|reg-SOFTWARE|reg-SECURITY)
      h=${step#reg-}
      f=$(hive "$h")
      # Edit a copy, then write it over the file in place: hivex rewrites a
      # hive from scratch, and ntfs-3g would then free the old clusters with
      # the old values still in them.
      cp -- "$f" "$W/$h.hive"
      hivexregedit --merge --prefix 'HKEY_LOCAL_MACHINE\X' "$W/$h.hive" "$W/$h.reg"
      perl "$W/scrub.pl" "$W/$h.hive" "$(stat -c %s -- "$f")"
      dd if="$W/$h.hive" of="$f" bs=1M conv=notrunc status=none ;;
    *) echo "unknown step $step"; exit 64 ;;
  esac
done
sync
umount "$M"
wait "$NTFS"
NTFS=
echo "done"
"#;

/// Zeroes every free cell of a hive file in place, and pads it with zeroes
/// to the original file's size (hivex never shrinks a hive; the padding
/// makes sure the in-place copy back overwrites every old byte). hivex frees a deleted
/// value's cell without clearing it, so a removed `DefaultPassword` would stay
/// readable in the file (and so on every seat). Free cells carry nothing
/// Windows reads; the base block and its checksum are not touched. Perl,
/// because hivexregedit already brings it and it runs inside the namespace.
const HIVE_SCRUB: &str = r#"
use strict; use warnings;
my $f = shift; open(my $h, '+<:raw', $f) or die "$f: $!\n";
my $base; (read($h, $base, 4096) // 0) == 4096 or die "short hive\n";
substr($base, 0, 4) eq 'regf' or die "not a hive\n";
my $len = unpack('V', substr($base, 40, 4));
my $off = 0;
while ($off < $len) {
  my $bin; seek($h, 4096 + $off, 0) or die;
  (read($h, $bin, 32) // 0) == 32 && substr($bin, 0, 4) eq 'hbin' or die "bad hive bin at $off\n";
  my $size = unpack('V', substr($bin, 8, 4));
  ($size >= 4096 && $size % 4096 == 0 && $off + $size <= $len) or die "bad hive bin size at $off\n";
  seek($h, 4096 + $off, 0) or die; (read($h, $bin, $size) // 0) == $size or die "short bin\n";
  my ($c, $changed) = (32, 0);
  while ($c + 4 <= $size) {
    my $cs = unpack('l<', substr($bin, $c, 4));
    my $n = $cs < 0 ? -$cs : $cs;
    ($n >= 8 && $c + $n <= $size) or die "bad cell at $off+$c\n";
    if ($cs > 0) { substr($bin, $c + 4, $n - 4) = "\0" x ($n - 4); $changed = 1; }
    $c += $n;
  }
  if ($changed) { seek($h, 4096 + $off, 0) or die; print $h $bin or die "$f: $!\n"; }
  $off += $size;
}
my $want = shift // 0;
my $have = -s $h;
if ($have < $want) { seek($h, $have, 0) or die; print $h ("\0" x ($want - $have)) or die "$f: $!\n"; }
close($h) or die "$f: $!\n";
"#;

/// The `.reg` text (for `hivexregedit --prefix 'HKEY_LOCAL_MACHINE\X'`) and
/// the script steps for `remedies`.
fn plan(remedies: &[Remedy], control_set: u64) -> (Vec<(String, String)>, Vec<String>) {
    const HEAD: &str = "Windows Registry Editor Version 5.00\n\n";
    let mut system = String::new();
    let mut software = String::new();
    let mut security = String::new();
    let mut steps = Vec::new();
    let cs = format!("ControlSet{control_set:03}");
    for r in remedies {
        match r {
            Remedy::SavedPasswords => steps.push("logins".to_string()),
            Remedy::WlanProfiles => steps.push("wlan-files".to_string()),
            Remedy::Hiberfil => steps.push("hiberfil".to_string()),
            Remedy::PasswordManagerPolicies => {
                for k in [
                    "Policies\\Google\\Chrome",
                    "Policies\\Microsoft\\Edge",
                    // Both forms seen in the field: builds read one or the other.
                    "Policies\\CocCoc\\Browser",
                    "Policies\\CocCoc\\CocCoc",
                ] {
                    let _ = write!(
                        software,
                        "[HKEY_LOCAL_MACHINE\\X\\{k}]\n\"PasswordManagerEnabled\"=dword:00000000\n\n"
                    );
                }
            }
            Remedy::AutologonPassword => {
                software.push_str(
                    "[HKEY_LOCAL_MACHINE\\X\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon]\n\
                     \"DefaultPassword\"=-\n\n",
                );
            }
            Remedy::AutologonSecret => {
                security.push_str("[-HKEY_LOCAL_MACHINE\\X\\Policy\\Secrets\\DefaultPassword]\n\n");
            }
            Remedy::WlanService => {
                let _ = write!(
                    system,
                    "[HKEY_LOCAL_MACHINE\\X\\{cs}\\Services\\WlanSvc]\n\"Start\"=dword:00000004\n\n"
                );
            }
            Remedy::FastStartup => {
                let _ = write!(
                    system,
                    "[HKEY_LOCAL_MACHINE\\X\\{cs}\\Control\\Session Manager\\Power]\n\
                     \"HiberbootEnabled\"=dword:00000000\n\n\
                     [HKEY_LOCAL_MACHINE\\X\\{cs}\\Control\\Power]\n\
                     \"HibernateEnabled\"=dword:00000000\n\n"
                );
            }
        }
    }
    let mut regs = Vec::new();
    for (name, body) in [
        ("SYSTEM", system),
        ("SOFTWARE", software),
        ("SECURITY", security),
    ] {
        if !body.is_empty() {
            regs.push((name.to_string(), format!("{HEAD}{body}")));
            steps.push(format!("reg-{name}"));
        }
    }
    (regs, steps)
}

/// Apply `remedies` to `dev` (a draft) through ntfs-3g, as described in the
/// module doc. `confine` prepares the child's credentials and limits.
pub fn apply(
    dev: Arc<dyn BlockDevice>,
    target: Target,
    remedies: &[Remedy],
    opts: &ApplyOptions,
    confine: Confine<'_>,
) -> Result<Applied, FixError> {
    if remedies.is_empty() {
        return Ok(Applied {
            remedies: Vec::new(),
            log: String::new(),
        });
    }
    let (regs, steps) = plan(remedies, target.control_set);
    std::fs::write(opts.workdir.join("scrub.pl"), HIVE_SCRUB)?;
    for (name, text) in &regs {
        std::fs::write(opts.workdir.join(format!("{name}.reg")), text)?;
    }
    let window: Arc<dyn BlockDevice> =
        Arc::new(Window::new(dev, target.part_start, target.part_len)?);
    let (ours, theirs) = UnixStream::pair()?;
    let server = NbdBridge::start(ours, window)?;

    let log_path = opts.workdir.join("fix.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--user",
        "--mount",
        "--propagation",
        "private",
        // Not root inside: ntfs-3g drops "root" privileges with setgroups(),
        // which an unprivileged user namespace forbids. --keep-caps keeps
        // CAP_SYS_ADMIN (of this namespace only) across exec so the FUSE
        // daemons can mount.
        "--map-user=1000",
        "--map-group=1000",
        "--keep-caps",
        "--",
        "sh",
        "-c",
        SCRIPT,
        "khoi-fix",
    ])
    .arg(&opts.workdir)
    .args(&steps)
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log)
    .process_group(0);
    let fd = theirs.as_raw_fd();
    confine(&mut cmd);
    // SAFETY: between fork and exec only dup2, an async-signal-safe call on
    // a descriptor this process holds open; dup2 leaves the copy inheritable.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| FixError::Tools(format!("cannot start unshare (util-linux): {e}")))?;
    drop(theirs);
    let deadline = Instant::now() + opts.timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let pgid = i32::try_from(child.id()).unwrap_or(0);
            if pgid > 0 {
                // SAFETY: kill with a process group this function created.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    server.stop();
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(&log_path) {
        let _ = f.by_ref().take(64 << 10).read_to_string(&mut text);
    }
    match status {
        None => Err(FixError::Tools(format!(
            "did not finish in {} s; {text}",
            opts.timeout.as_secs()
        ))),
        Some(st) if !st.success() => Err(FixError::Tools(format!("{st}; {text}"))),
        Some(_) => Ok(Applied {
            remedies: remedies.to_vec(),
            log: text,
        }),
    }
}

/// The NBD server side of the socket pair, on its own thread and runtime.
struct NbdBridge {
    token: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct OneExport(Arc<dyn BlockDevice>);

impl khoi_nbd::ExportResolver for OneExport {
    fn list(&self) -> Vec<khoi_nbd::ExportInfo> {
        vec![khoi_nbd::ExportInfo {
            name: String::new(),
            description: "draft Windows volume".into(),
        }]
    }
    fn open(&self, _name: &str) -> Result<Checked, khoi_nbd::OpenError> {
        Ok(Checked::new(Arc::clone(&self.0)))
    }
}

impl NbdBridge {
    fn start(sock: UnixStream, dev: Arc<dyn BlockDevice>) -> std::io::Result<NbdBridge> {
        let token = tokio_util::sync::CancellationToken::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        sock.set_nonblocking(true)?;
        let t = token.clone();
        let thread = std::thread::Builder::new()
            .name("fix-nbd".into())
            .spawn(move || {
                rt.block_on(async move {
                    let stream = match tokio::net::UnixStream::from_std(sock) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("fix: NBD socket: {e}");
                            return;
                        }
                    };
                    let r = khoi_nbd::serve_connection(
                        stream,
                        &"fix helper",
                        Arc::new(OneExport(dev)),
                        Arc::new(khoi_nbd::NbdStats::default()),
                        None,
                        t,
                    )
                    .await;
                    if let Err(e) = r {
                        tracing::info!("fix: NBD connection ended: {e}");
                    }
                });
            })?;
        Ok(NbdBridge {
            token,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        self.token.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A byte range of a device as a device of its own (the Windows partition
/// of a disk), like nbdkit's `offset` filter.
#[derive(Debug)]
pub struct Window {
    inner: Arc<dyn BlockDevice>,
    start: u64,
    len: u64,
}

impl Window {
    pub fn new(inner: Arc<dyn BlockDevice>, start: u64, len: u64) -> std::io::Result<Window> {
        let fits = start
            .checked_add(len)
            .is_some_and(|end| end <= inner.size());
        if !fits || !start.is_multiple_of(512) || !len.is_multiple_of(512) || len == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("partition {start}+{len} does not fit the disk"),
            ));
        }
        Ok(Window { inner, start, len })
    }
}

impl BlockDevice for Window {
    fn size(&self) -> u64 {
        self.len
    }
    fn device_caps(&self) -> DeviceCaps {
        self.inner.device_caps()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> BlockResult<()> {
        self.inner.read_at(buf, self.start + offset)
    }
    fn read_plan(&self, offset: u64, len: u64) -> BlockResult<Vec<ReadSegment>> {
        self.inner.read_plan(self.start + offset, len)
    }
    fn write_at(&self, buf: &[u8], offset: u64, flags: WriteFlags) -> BlockResult<()> {
        self.inner.write_at(buf, self.start + offset, flags)
    }
    fn flush(&self) -> BlockResult<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64, flags: WriteFlags) -> BlockResult<()> {
        self.inner.trim(self.start + offset, len, flags)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: WriteFlags) -> BlockResult<()> {
        self.inner.write_zeroes(self.start + offset, len, flags)
    }
    fn extents(&self, offset: u64, len: u64) -> BlockResult<Vec<Extent>> {
        Ok(self
            .inner
            .extents(self.start + offset, len)?
            .into_iter()
            .map(|e| Extent {
                offset: e.offset - self.start,
                ..e
            })
            .collect())
    }
}

/// The difference between the findings before and after a fix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingsDiff {
    pub fixed: Vec<Finding>,
    pub remaining: Vec<Finding>,
    pub new: Vec<Finding>,
}

/// Compare findings by rule and subject (details such as sizes may differ).
pub fn diff(before: &Report, after: &Report) -> FindingsDiff {
    let key = |f: &Finding| (f.rule, f.subject.clone());
    let in_after: std::collections::HashSet<_> = after.findings.iter().map(key).collect();
    let in_before: std::collections::HashSet<_> = before.findings.iter().map(key).collect();
    FindingsDiff {
        fixed: before
            .findings
            .iter()
            .filter(|f| !in_after.contains(&key(f)))
            .cloned()
            .collect(),
        remaining: after
            .findings
            .iter()
            .filter(|f| in_before.contains(&key(f)))
            .cloned()
            .collect(),
        new: after
            .findings
            .iter()
            .filter(|f| !in_before.contains(&key(f)))
            .cloned()
            .collect(),
    }
}

/// Where [`apply`]'s work directory goes: a fresh directory under `parent`.
pub fn workdir_in(parent: &Path) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("fix-").tempdir_in(parent)
}
