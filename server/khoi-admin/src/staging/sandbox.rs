//! Running qemu-img with as little as it needs: it is a large C program
//! parsing a file an operator (or whoever sent them the file) wrote.
//!
//! - The image and the output are handed over as inherited descriptors and
//!   named `/dev/fd/N`; nothing else is named to it.
//! - When Khoi runs as root, the child drops to `nobody`/`nogroup` (no
//!   supplementary groups) before exec. The caller makes the input and
//!   output readable/writable for that uid (see `staging::for_sandbox`).
//!   When Khoi is not root it keeps Khoi's uid: the Landlock rule set below
//!   is then what stops it reading Khoi's own files.
//! - `PR_SET_NO_NEW_PRIVS`, then a Landlock rule set (when the kernel has
//!   one): read the input, read and write the output, read and execute the
//!   system's program folders; no other file, no TCP, no signals to other
//!   processes. On kernels without Landlock this step is skipped and logged.
//! - Resource limits: address space, CPU seconds, largest file it may write,
//!   no core dumps.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
#[cfg(test)]
use std::path::Path;
use std::process::Command;

/// The uid/gid of `nobody`/`nogroup` on Debian and most other systems.
const NOBODY: libc::uid_t = 65534;

/// Resource limits for one qemu-img run.
#[derive(Debug, Clone, Copy)]
pub struct Rlimits {
    pub cpu_secs: u64,
    /// Largest file the child may write (the raw output's size).
    pub max_file: u64,
}

/// Address space for qemu-img: its caches and coroutine stacks fit many
/// times over; a parser driven into a huge allocation stops here instead of
/// taking the server's memory.
const ADDRESS_SPACE: u64 = 4 << 30;

/// Whether the child will run as `nobody` (Khoi runs as root).
pub fn drops_to_nobody() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid the child runs as.
pub fn child_uid() -> Option<libc::uid_t> {
    drops_to_nobody().then_some(NOBODY)
}

/// `/dev/fd/N` for a descriptor the child inherits.
pub fn fd_path(f: &File) -> String {
    format!("/dev/fd/{}", f.as_raw_fd())
}

/// Sets up `cmd` to run confined: `read` and `write` are the only files it
/// may open (by `/dev/fd/N`).
pub fn confine(cmd: &mut Command, read: &[&File], write: &[&File], limits: Rlimits) {
    let inherit: Vec<RawFd> = read
        .iter()
        .chain(write.iter())
        .map(|f| f.as_raw_fd())
        .collect();
    let ruleset = landlock::ruleset(read, write);
    // Nothing from Khoi's environment but where to find programs; few
    // malloc arenas, so the address-space limit measures real use.
    let path = std::env::var_os("PATH");
    cmd.env_clear()
        .env("LC_ALL", "C")
        .env("MALLOC_ARENA_MAX", "2");
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let drop_privs = drops_to_nobody();
    let rl = [
        (libc::RLIMIT_AS, ADDRESS_SPACE),
        (libc::RLIMIT_CPU, limits.cpu_secs),
        (libc::RLIMIT_FSIZE, limits.max_file.max(1)),
        (libc::RLIMIT_CORE, 0),
    ];
    let hook = move || -> std::io::Result<()> {
        // Runs between fork and exec: only raw system calls, no allocation.
        let fail = || Err(std::io::Error::last_os_error());
        for fd in &inherit {
            // SAFETY: fcntl on a descriptor this process holds open.
            if unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } < 0 {
                return fail();
            }
        }
        // Dies with Khoi: an orphaned conversion would keep its staged
        // file locked (the lock is shared with the inherited descriptor).
        limit_and_drop(&rl, drop_privs)?;
        if let Some(fd) = ruleset.as_ref() {
            // SAFETY: landlock_restrict_self on a rule set descriptor this
            // process holds; flags must be 0.
            if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0) } < 0 {
                return fail();
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls on values
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// CPU seconds for one `khoi image fix` run (sqlite3, hivex and ntfs-3g
/// over a 64 GiB image take a small fraction of it).
const FIX_CPU_SECS: u64 = 20 * 60;

/// Sets up the `khoi image fix` child (`unshare` → nbdfuse, ntfs-3g, the
/// remedy tools): `nobody` when Khoi is root, `no_new_privs`, resource
/// limits, dies with Khoi. No file-size limit: the kernel applies it to the
/// write *offset*, and ntfs-3g writes the partition file (the whole Windows
/// volume, tens of GiB) wherever its metadata lies. No Landlock here: a Landlock-restricted process
/// may not mount, and mounting FUSE inside its own user namespace is what
/// this child is for; what it can reach is its work folder and the one NBD
/// connection it inherits.
pub fn confine_fix(cmd: &mut Command) {
    let path = std::env::var_os("PATH");
    cmd.env_clear().env("LC_ALL", "C");
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let drop_privs = drops_to_nobody();
    let rl = [(libc::RLIMIT_CPU, FIX_CPU_SECS), (libc::RLIMIT_CORE, 0)];
    // Runs between fork and exec: only raw system calls, no allocation.
    let hook = move || limit_and_drop(&rl, drop_privs);
    // SAFETY: the hook only makes async-signal-safe system calls on values
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// The part of both children's pre-exec hooks that is the same: resource
/// limits, `nobody` (when `drop_privs`), death with Khoi (set after the uid
/// change, which clears it), and `no_new_privs`. Between fork and exec:
/// only raw system calls, no allocation.
fn limit_and_drop(
    rl: &[(libc::__rlimit_resource_t, libc::rlim_t)],
    drop_privs: bool,
) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    for &(res, v) in rl {
        let lim = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: `lim` is a valid rlimit value.
        if unsafe { libc::setrlimit(res, &lim) } < 0 {
            return fail();
        }
    }
    if drop_privs {
        // SAFETY: plain credential changes in the child; gid before uid,
        // since after the uid change the gid cannot change.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) < 0
                || libc::setresgid(NOBODY, NOBODY, NOBODY) < 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) < 0
            {
                return fail();
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } < 0 {
        return fail();
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return fail();
    }
    Ok(())
}

/// Give a private work folder to the child's uid (when it drops to
/// `nobody`), mode 0700.
pub fn chown_dir_for_child(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some(uid) = child_uid() {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// Landlock, spoken directly (no crate): a rule set is made in the parent
/// and enforced by the child just before exec.
mod landlock {
    use super::*;

    const CREATE_RULESET_VERSION: u32 = 1;
    const RULE_PATH_BENEATH: libc::c_int = 1;

    const EXECUTE: u64 = 1 << 0;
    const WRITE_FILE: u64 = 1 << 1;
    const READ_FILE: u64 = 1 << 2;
    const READ_DIR: u64 = 1 << 3;
    const TRUNCATE: u64 = 1 << 14;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }

    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }

    /// Every filesystem right the kernel's ABI version knows.
    fn fs_rights(abi: i64) -> u64 {
        let mut all = (1 << 13) - 1; // v1: EXECUTE ..= MAKE_SYM
        if abi >= 2 {
            all |= 1 << 13; // REFER
        }
        if abi >= 3 {
            all |= TRUNCATE;
        }
        if abi >= 5 {
            all |= 1 << 15; // IOCTL_DEV
        }
        all
    }

    /// Folders qemu-img needs to start: its program, the loader, libraries
    /// and their data. None of them holds Khoi's or the operator's files.
    const SYSTEM: &[&str] = &[
        "/usr",
        "/lib",
        "/lib64",
        "/lib32",
        "/bin",
        "/sbin",
        "/etc/ld.so.cache",
        "/etc/ld.so.preload",
    ];

    fn abi() -> i64 {
        // SAFETY: the documented way to ask the ABI version: null attr, size 0.
        unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        }
    }

    fn add(ruleset: &OwnedFd, fd: RawFd, allowed: u64) -> bool {
        let rule = PathBeneath {
            allowed_access: allowed,
            parent_fd: fd,
        };
        // SAFETY: `rule` is a valid path-beneath attribute for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &raw const rule,
                0u32,
            )
        };
        if rc != 0 {
            tracing::warn!(
                "cannot add a Landlock rule: {}; qemu-img runs without a file allow-list",
                std::io::Error::last_os_error()
            );
        }
        rc == 0
    }

    /// The rule set for one run, or `None` when the kernel has no Landlock
    /// (the run then relies on the uid drop alone).
    pub fn ruleset(read: &[&File], write: &[&File]) -> Option<OwnedFd> {
        let abi = abi();
        if abi < 1 {
            tracing::warn!(
                "Landlock is not available in this kernel: qemu-img runs without a file \
                 allow-list (only {})",
                if drops_to_nobody() {
                    "as nobody"
                } else {
                    "with resource limits"
                }
            );
            return None;
        }
        let fs = fs_rights(abi);
        let attr = RulesetAttr {
            handled_access_fs: fs,
            // TCP bind/connect (v4) are handled and never allowed.
            handled_access_net: if abi >= 4 { 0b11 } else { 0 },
            // Abstract unix sockets and signals outside the domain (v6).
            scoped: if abi >= 6 { 0b11 } else { 0 },
        };
        // SAFETY: `attr` is valid for its size; the kernel zero-checks the
        // fields an older ABI does not know (we leave them 0 there).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &raw const attr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        let Ok(fd) = RawFd::try_from(fd) else {
            return None;
        };
        if fd < 0 {
            tracing::warn!(
                "cannot create a Landlock rule set: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let ruleset = unsafe { OwnedFd::from_raw_fd(fd) };
        let trunc = if abi >= 3 { TRUNCATE } else { 0 };
        for f in read {
            if !add(&ruleset, f.as_raw_fd(), READ_FILE) {
                return None;
            }
        }
        for f in write {
            if !add(&ruleset, f.as_raw_fd(), READ_FILE | WRITE_FILE | trunc) {
                return None;
            }
        }
        for p in SYSTEM {
            let Ok(f) = File::open(p) else { continue };
            let is_dir = f.metadata().map(|m| m.is_dir()).unwrap_or(false);
            let allowed = if is_dir {
                READ_FILE | READ_DIR | EXECUTE
            } else {
                READ_FILE
            };
            if !add(&ruleset, f.as_raw_fd(), allowed) {
                return None;
            }
        }
        Some(ruleset)
    }
}

/// The owner the staged files must have while the child works on them.
pub fn chown_for_child(f: &File) -> std::io::Result<()> {
    if let Some(uid) = child_uid() {
        std::os::unix::fs::fchown(f, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// Back to Khoi's own uid once the child is done, with the mode Khoi
/// chose (the child owned the file meanwhile and could have changed it).
pub fn chown_back(f: &File) -> std::io::Result<()> {
    if drops_to_nobody() {
        std::os::unix::fs::fchown(f, Some(0), Some(0))?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &mut Command) -> (bool, String) {
        let o = cmd.output().expect("spawn");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// The fix's child: no new privileges, `nobody` when Khoi is root, a
    /// CPU limit, and no file-size limit (ntfs-3g writes anywhere in a
    /// volume of tens of GiB, and the kernel checks the offset).
    #[test]
    fn fix_child_is_unprivileged_without_a_file_size_limit() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("ulimit -f; ulimit -t; id -u; grep NoNewPrivs /proc/self/status");
        confine_fix(&mut cmd);
        let (ok, out) = run(&mut cmd);
        assert!(ok, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "unlimited", "{out}");
        assert_eq!(lines[1], FIX_CPU_SECS.to_string(), "{out}");
        if drops_to_nobody() {
            assert_eq!(lines[2], NOBODY.to_string(), "{out}");
        }
        assert!(lines[3].ends_with('1'), "{out}");
    }

    /// The confined child reads the file it was handed and nothing else,
    /// not even a world-readable one.
    #[test]
    fn confined_child_reads_only_what_it_was_handed() {
        if landlock::ruleset(&[], &[]).is_none() {
            eprintln!("no Landlock in this kernel: skipping");
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let given = dir.path().join("given");
        std::fs::write(&given, b"handed over\n").expect("write");
        let other = dir.path().join("other");
        std::fs::write(&other, b"secret\n").expect("write");
        for p in [&given, &other] {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .expect("chmod");
        }
        let f = File::open(&given).expect("open");
        let limits = Rlimits {
            cpu_secs: 10,
            max_file: 0,
        };
        let mut ok = Command::new("cat");
        ok.arg(fd_path(&f));
        confine(&mut ok, &[&f], &[], limits);
        assert_eq!(run(&mut ok), (true, "handed over\n".into()));
        for path in [other.as_path(), Path::new("/etc/hostname")] {
            let mut no = Command::new("cat");
            no.arg(path);
            confine(&mut no, &[&f], &[], limits);
            assert!(!run(&mut no).0, "{} was readable", path.display());
        }
        if drops_to_nobody() {
            let mut id = Command::new("id");
            id.arg("-u");
            confine(&mut id, &[], &[], limits);
            assert_eq!(run(&mut id), (true, "65534\n".into()));
        }
    }
}
