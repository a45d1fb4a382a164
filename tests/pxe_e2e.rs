//! Real firmware boots the test disk from Khoi alone: qemu's iPXE ROM under
//! SeaBIOS and OVMF's own PXE stack, in private network namespaces, through
//! Khoi's DHCP (proxy beside a plain site DHCP server, or authoritative),
//! TFTP, per-seat iPXE script and iSCSI target. The booted Linux logs in
//! again from the iBFT, mounts the disk read-write and reports whether the
//! file its previous boot wrote is still there, which is how the reset
//! policies are checked with a real boot.
//!
//! Needs root (namespaces, taps) and the packages of `./scripts/setup.sh
//! test`; the test disk is built by `images/test-disk/build.sh` (cached).
//! Boots are serialised by a lock file: each TCG guest wants a whole core.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Options, Server, require, run, run_ok};

const LAB_IP: &str = "10.77.0.1";
const ROUTER_IP: &str = "10.77.0.254";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this run can drive the lab at all; a developer's non-root
/// `cargo test` skips with a note, `./scripts/test.sh` runs as root.
fn lab_available() -> bool {
    if !is_root() {
        eprintln!("skipping: the PXE end-to-end tests need root (network namespaces, taps)");
        return false;
    }
    for tool in [
        "ip",
        "qemu-system-x86_64",
        "dnsmasq",
        "mcopy",
        "syslinux",
        "depmod",
    ] {
        require(tool);
    }
    for f in [
        "/usr/lib/ipxe/undionly.kpxe",
        "/usr/lib/ipxe/snponly.efi",
        "/usr/lib/ipxe/qemu/efi-virtio.rom",
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
    ] {
        assert!(
            Path::new(f).exists(),
            "{f} is missing; run ./scripts/setup.sh test"
        );
    }
    true
}

/// One boot at a time across test processes (nextest runs each test in its
/// own process): two TCG guests on two busy cores double every timing.
struct BootLock {
    _file: File,
}

impl BootLock {
    fn take() -> BootLock {
        let f = File::create(std::env::temp_dir().join("khoi-pxe-e2e.lock")).expect("lock file");
        // SAFETY: flock on a descriptor we own; released when the file closes.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock");
        BootLock { _file: f }
    }
}

struct Disk {
    image: PathBuf,
    marker: String,
}

fn test_disk() -> &'static Disk {
    static DISK: OnceLock<Disk> = OnceLock::new();
    DISK.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/test-disk/build.sh");
        let out = run(&mut Command::new(&script));
        assert!(
            out.status.success(),
            "{} failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = std::env::var_os("KHOI_TEST_DISK_WORK")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("khoi-test-disk"))
            .join("out");
        let marker = std::fs::read_to_string(dir.join("disk.marker")).expect("disk.marker");
        Disk {
            image: dir.join("disk.img"),
            marker: marker.trim().to_string(),
        }
    })
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Kill what still runs in one of our namespaces, then delete it.
fn delete_netns(ns: &str) {
    if !netns_exists(ns) {
        return;
    }
    let pids = run(Command::new("ip").args(["netns", "pids", ns]));
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: plain kill(2) of a process inside our own namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = run(Command::new("ip").args(["netns", "del", ns]));
}

/// Namespaces of earlier runs of this file that were killed before their
/// cleanup ran (a nextest timeout sends SIGKILL): the pid in the name is gone.
fn reap_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("kpxe-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if let Ok(pid) = pid.parse::<u32>()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            delete_netns(&name);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Firmware {
    Bios,
    Uefi,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Khoi answers PXE only; a plain dnsmasq in another namespace hands out addresses.
    Proxy,
    /// Khoi is the segment's only DHCP server.
    Authoritative,
}

/// A bridge in a fresh namespace with Khoi on it, optionally a site router
/// namespace on a veth, and qemu guests on taps. Everything goes on drop.
struct Lab {
    ns: String,
    router_ns: String,
    dir: tempfile::TempDir,
    children: Vec<Child>,
    taps: u32,
    server: Option<Server>,
    /// Namespaces made by [`Lab::add_host`].
    hosts: Vec<String>,
    _lock: BootLock,
}

struct Vm {
    name: String,
    mac: String,
    serial: PathBuf,
    child: usize,
    started: Instant,
}

impl Lab {
    fn new(tag: &str, mode: Mode) -> Lab {
        let lock = BootLock::take();
        reap_stale_namespaces();
        let ns = format!("kpxe-{}-{tag}", std::process::id());
        let router_ns = format!("{ns}-r");
        delete_netns(&ns);
        delete_netns(&router_ns);
        let dir = tempfile::Builder::new()
            .prefix("khoi-pxe-e2e-")
            .tempdir()
            .expect("tmp dir");
        let mut lab = Lab {
            ns: ns.clone(),
            router_ns: router_ns.clone(),
            dir,
            children: Vec::new(),
            taps: 0,
            server: None,
            hosts: Vec::new(),
            _lock: lock,
        };
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{LAB_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        match mode {
            Mode::Proxy => lab.start_router(),
            // iPXE waits ~13 s for IPv6 autoconfiguration on a segment without
            // router advertisements; an RA-only dnsmasq (no DHCPv4 at all, so
            // Khoi stays the only DHCP server) keeps boots short.
            Mode::Authoritative => {
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    "fd77::1/64",
                    "dev",
                    "br0",
                    "nodad",
                ]);
                let ra = lab.spawn_in(
                    &ns.clone(),
                    "ra-dnsmasq",
                    &[
                        "dnsmasq",
                        "-k",
                        "--conf-file=/dev/null",
                        "--port=0",
                        "--interface=br0",
                        "--bind-interfaces",
                        "--user=root",
                        "--group=root",
                        "--enable-ra",
                        "--dhcp-range=::,constructor:br0,ra-only",
                    ],
                );
                let _ = ra;
            }
        }
        lab
    }

    /// The site's router: plain DHCP with addresses only, no PXE options, in
    /// its own namespace so Khoi's proxyDHCP meets a real coexisting server.
    fn start_router(&mut self) {
        let (ns, rns) = (self.ns.clone(), self.router_ns.clone());
        ip(&["netns", "add", &rns]);
        ip(&["-n", &rns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &ns, "link", "add", "rtr0", "type", "veth", "peer", "name", "rtr0-br",
        ]);
        ip(&["-n", &ns, "link", "set", "rtr0", "netns", &rns]);
        ip(&["-n", &ns, "link", "set", "rtr0-br", "master", "br0", "up"]);
        ip(&[
            "-n",
            &rns,
            "addr",
            "add",
            &format!("{ROUTER_IP}/24"),
            "dev",
            "rtr0",
        ]);
        ip(&[
            "-n",
            &rns,
            "addr",
            "add",
            "fd77::fe/64",
            "dev",
            "rtr0",
            "nodad",
        ]);
        ip(&["-n", &rns, "link", "set", "rtr0", "up"]);
        let leases = self.dir.path().join("rtr.leases");
        let range = "--dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h".to_string();
        let router = format!("--dhcp-option=option:router,{ROUTER_IP}");
        let leasefile = format!("--dhcp-leasefile={}", leases.display());
        self.spawn_in(
            &rns,
            "rtr-dnsmasq",
            &[
                "dnsmasq",
                "-k",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=rtr0",
                "--bind-interfaces",
                "--user=root",
                "--group=root",
                &range,
                &router,
                "--dhcp-authoritative",
                // The ping check before each offer costs 3 s per lease, serially.
                "--no-ping",
                &leasefile,
                "--log-dhcp",
                "--enable-ra",
                "--dhcp-range=::,constructor:rtr0,ra-only",
            ],
        );
        self.wait_udp(&rns, 67);
    }

    fn spawn_in(&mut self, ns: &str, name: &str, argv: &[&str]) -> usize {
        let log = File::create(self.dir.path().join(format!("{name}.out"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    /// A second LAN: bridge `name` in the lab namespace at `cidr`, with an
    /// RA-only dnsmasq (no DHCPv4) so iPXE does not wait for IPv6 on it.
    fn add_bridge(&mut self, name: &str, cidr: &str, v6: &str) {
        let ns = self.ns.clone();
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            name,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ]);
        ip(&["-n", &ns, "addr", "add", cidr, "dev", name]);
        ip(&["-n", &ns, "addr", "add", v6, "dev", name, "nodad"]);
        ip(&["-n", &ns, "link", "set", name, "up"]);
        let iface = format!("--interface={name}");
        let range = format!("--dhcp-range=::,constructor:{name},ra-only");
        self.spawn_in(
            &ns,
            &format!("ra-dnsmasq-{name}"),
            &[
                "dnsmasq",
                "-k",
                "--conf-file=/dev/null",
                "--port=0",
                &iface,
                "--bind-interfaces",
                "--user=root",
                "--group=root",
                "--pid-file",
                "--enable-ra",
                &range,
            ],
        );
    }

    /// A host namespace `<lab>-<tag>` on `bridge` at `cidr` (via a veth),
    /// its default route through `gw`; removed with the lab's namespaces.
    fn add_host(&mut self, tag: &str, bridge: &str, cidr: &str, gw: &str) -> String {
        let host = format!("{}-{tag}", self.ns);
        delete_netns(&host);
        ip(&["netns", "add", &host]);
        ip(&["-n", &host, "link", "set", "lo", "up"]);
        let (inner, outer) = (format!("{tag}0"), format!("{tag}0-br"));
        ip(&[
            "-n", &self.ns, "link", "add", &inner, "type", "veth", "peer", "name", &outer,
        ]);
        ip(&["-n", &self.ns, "link", "set", &inner, "netns", &host]);
        ip(&[
            "-n", &self.ns, "link", "set", &outer, "master", bridge, "up",
        ]);
        ip(&["-n", &host, "addr", "add", cidr, "dev", &inner]);
        ip(&["-n", &host, "link", "set", &inner, "up"]);
        ip(&["-n", &host, "route", "add", "default", "via", gw]);
        self.hosts.push(host.clone());
        host
    }

    fn wait_udp(&self, ns: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = run(Command::new("ip").args(["netns", "exec", ns, "ss", "-Hlun"]));
            if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nothing listens on udp/{port} in {ns}");
    }

    /// Khoi in the lab namespace, its boot services on the bridge, with the
    /// test disk imported as image `e2e`.
    fn start_khoi(&mut self, mode: Mode) -> &Server {
        let tftp = self.dir.path().join("tftp");
        let mode_text = match mode {
            Mode::Proxy => "proxy",
            Mode::Authoritative => "authoritative",
        };
        let mut pxe = format!(
            "pxe:\n  mode: {mode_text}\n  interface: br0\n  server_ip: {LAB_IP}\n  \
             http_port: 8077\n  tftp_root: {}\n",
            tftp.display()
        );
        if mode == Mode::Authoritative {
            pxe.push_str(
                "  pool: { start: 10.77.0.100, end: 10.77.0.199 }\n  \
                 subnet_mask: 255.255.255.0\n",
            );
        }
        self.start_khoi_yaml(pxe, &format!("{LAB_IP}:3260"))
    }

    /// `start_khoi` with more YAML, and the test disk imported or not.
    fn start_khoi_with(&mut self, mode: Mode, extra_yaml: &str, import: bool) -> &Server {
        assert_eq!(mode, Mode::Proxy, "the proxy lab only");
        let pxe = format!(
            "pxe:\n  mode: proxy\n  interface: br0\n  server_ip: {LAB_IP}\n  \
             http_port: 8077\n  tftp_root: {}\n{extra_yaml}",
            self.dir.path().join("tftp").display()
        );
        self.start_khoi_full(pxe, &format!("{LAB_IP}:3260"), import)
    }

    /// Khoi with this `pxe:` section and iSCSI portal, the test disk
    /// imported as image `e2e`.
    fn start_khoi_yaml(&mut self, pxe: String, iscsi: &str) -> &Server {
        self.start_khoi_full(pxe, iscsi, true)
    }

    fn start_khoi_full(&mut self, yaml: String, iscsi: &str, import: bool) -> &Server {
        let server = Server::start_with(Options {
            iscsi: true,
            iscsi_addr: Some(iscsi.to_string()),
            extra_yaml: yaml,
            netns: Some(self.ns.clone()),
            ..Options::default()
        });
        if import {
            let disk = test_disk();
            server.ok(&["image", "import", "e2e", &disk.image.to_string_lossy()]);
        }
        self.wait_udp(&self.ns, 67);
        self.server = Some(server);
        self.server.as_ref().expect("server")
    }

    fn khoi(&self) -> &Server {
        self.server.as_ref().expect("khoi started")
    }

    fn add_seat(&self, name: &str, mac: &str, policy: &str) {
        self.add_seat_with(name, mac, policy, &[]);
    }

    fn add_seat_with(&self, name: &str, mac: &str, policy: &str, extra: &[&str]) {
        let mut args = vec![
            "seat", "add", name, "--mac", mac, "--image", "e2e", "--policy", policy,
        ];
        args.extend_from_slice(extra);
        self.khoi().ok(&args);
    }

    fn mac(&self, i: u32) -> String {
        format!("52:54:00:77:01:{i:02x}")
    }

    fn start_vm(&mut self, name: &str, mac: &str, fw: Firmware) -> Vm {
        self.start_vm_on("br0", name, mac, fw)
    }

    /// A seat with a local disk (virtio-blk) besides its network boot.
    fn start_vm_with_disk(
        &mut self,
        name: &str,
        mac: &str,
        fw: Firmware,
        local_disk: Option<&Path>,
    ) -> Vm {
        self.start_vm_full("br0", name, mac, fw, local_disk)
    }

    /// A guest on `bridge` (`br0`, or one added with [`Lab::add_bridge`]).
    fn start_vm_on(&mut self, bridge: &str, name: &str, mac: &str, fw: Firmware) -> Vm {
        self.start_vm_full(bridge, name, mac, fw, None)
    }

    fn start_vm_full(
        &mut self,
        bridge: &str,
        name: &str,
        mac: &str,
        fw: Firmware,
        local_disk: Option<&Path>,
    ) -> Vm {
        self.taps += 1;
        let tap = format!("tap{}", self.taps);
        let ns = self.ns.clone();
        ip(&["-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
        ip(&["-n", &ns, "link", "set", &tap, "master", bridge, "up"]);
        let serial = self.dir.path().join(format!("{name}.serial.log"));
        File::create(&serial).expect("serial log");
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let serial_arg = format!("file:{}", serial.display());
        let mut argv: Vec<String> = [
            "qemu-system-x86_64",
            "-name",
            name,
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "1",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            &serial_arg,
            "-no-reboot",
            "-netdev",
            &netdev,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match fw {
            // qemu's default NIC ROM is iPXE (efi-virtio.rom); leave romfile
            // alone: qemu patches the PCI ids only into its default ROM.
            Firmware::Bios => argv.extend([
                "-machine".into(),
                "pc".into(),
                "-boot".into(),
                "n".into(),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={mac}"),
            ]),
            // romfile= (empty): no iPXE ROM, so OVMF's own PXE client boots.
            Firmware::Uefi => {
                let vars = self.dir.path().join(format!("{name}.vars.fd"));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("OVMF vars");
                argv.extend([
                    "-machine".into(),
                    "q35".into(),
                    "-drive".into(),
                    "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
                        .into(),
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"),
                ]);
            }
        }
        if let Some(disk) = local_disk {
            argv.extend([
                "-drive".into(),
                format!("file={},format=raw,if=virtio", disk.display()),
            ]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let child = self.spawn_in(&ns, name, &argv);
        Vm {
            name: name.to_string(),
            mac: mac.to_string(),
            serial,
            child,
            started: Instant::now(),
        }
    }

    fn vm_exited(&mut self, vm: &Vm) -> bool {
        matches!(self.children[vm.child].try_wait(), Ok(Some(_)))
    }

    /// Wait until every guest printed the disk's marker and powered off;
    /// returns each one's serial log and time to marker.
    fn wait_booted(&mut self, vms: &[&Vm]) -> Vec<(String, Duration)> {
        let marker = test_disk().marker.clone();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut done: Vec<Option<(String, Duration)>> = vec![None; vms.len()];
        while done.iter().any(Option::is_none) {
            for (i, vm) in vms.iter().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                let log = serial_text(&vm.serial);
                if log.contains(&marker) {
                    done[i] = Some((log, vm.started.elapsed()));
                    continue;
                }
                let failure = if log.contains("DISKLESS-E2E-OK") {
                    Some("printed a marker for another payload")
                } else if log.contains("No bootable device") {
                    Some("the firmware found nothing to boot")
                } else if log.contains("Khoi: could not boot") {
                    Some("sanboot failed")
                } else if self.vm_exited(vm) {
                    Some("qemu exited without the marker")
                } else if Instant::now() > deadline {
                    Some("timed out")
                } else {
                    None
                };
                if let Some(why) = failure {
                    self.fail(vm, why);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Power-off follows the marker at once; reap so a second boot on the
        // same tap does not race the first qemu.
        for vm in vms {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !self.vm_exited(vm) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !self.vm_exited(vm) {
                let _ = self.children[vm.child].kill();
                let _ = self.children[vm.child].wait();
            }
        }
        done.into_iter().map(|d| d.expect("booted")).collect()
    }

    fn fail(&self, vm: &Vm, why: &str) -> ! {
        let khoi_log = self.server.as_ref().map(Server::log).unwrap_or_default();
        panic!(
            "{} ({}): {why} after {:.1} s\n---- serial console (last 40 lines) ----\n{}\n\
             ---- khoi log (last 40 lines) ----\n{}\n----",
            vm.name,
            vm.mac,
            vm.started.elapsed().as_secs_f64(),
            tail(&serial_text(&vm.serial), 40),
            tail(&khoi_log, 40)
        );
    }

    fn tftp_root(&self) -> PathBuf {
        self.dir.path().join("tftp")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Khoi runs in the namespace too: stop it before the bridge goes.
        if let Some(mut s) = self.server.take() {
            s.kill9();
        }
        for h in &self.hosts {
            delete_netns(h);
        }
        delete_netns(&self.router_ns);
        delete_netns(&self.ns);
    }
}

/// The serial log without terminal escapes and carriage returns.
fn serial_text(path: &Path) -> String {
    let raw = std::fs::read(path).unwrap_or_default();
    let raw = String::from_utf8_lossy(&raw);
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\r' {
            out.push('\n');
            continue;
        }
        out.push(c);
    }
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The booted Linux reached the disk read-write (see the disk's `/init`).
fn persist_line(vm: &Vm, log: &str) -> &'static str {
    if log.contains("KHOI-PERSIST-FOUND") {
        "found"
    } else if log.contains("KHOI-PERSIST-ABSENT") {
        "absent"
    } else {
        panic!(
            "{} booted but could not use the disk read-write:\n{}",
            vm.name,
            tail(log, 40)
        );
    }
}

fn report(scenario: &str, vm: &Vm, took: Duration) {
    eprintln!(
        "pxe_e2e: {scenario}: {} marker after {:.1} s",
        vm.name,
        took.as_secs_f64()
    );
}

/// The seat's boot as Khoi kept it (`khoi seat boots`): every step seen, in
/// order, and the bytes read. The boot is kept 30 s after its hand-over.
/// `tftp`: whether the firmware fetched iPXE (qemu's BIOS NIC ROM is iPXE
/// already, so that boot goes from DHCP straight to the script).
fn assert_boot_recorded(lab: &Lab, seat: &str, tftp: bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let times = loop {
        let t = lab.khoi().json(&["seat", "boots", seat]);
        let kept = t["boots"].as_array().is_some_and(|b| !b.is_empty());
        if kept || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let boot = &times["boots"][0];
    let steps: Vec<Option<i64>> = boot["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no boot kept for {seat}: {times:#}"))
        .iter()
        .map(serde_json::Value::as_i64)
        .collect();
    assert_eq!(steps.len(), 5, "{times:#}");
    assert_eq!(steps[1].is_some(), tftp, "the TFTP step: {times:#}");
    let seen: Vec<i64> = steps.iter().flatten().copied().collect();
    assert_eq!(
        seen.len(),
        if tftp { 5 } else { 4 },
        "a step is missing (dhcp, tftp, script, login, handover): {times:#}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "steps out of order: {times:#}"
    );
    let read = boot["bytes_read"].as_u64().unwrap_or(0);
    // The test disk's kernel and initrd at least.
    assert!(read > 1 << 20, "only {read} bytes read: {times:#}");
    let table = lab.khoi().ok(&["seat", "boots", seat]);
    assert!(
        table.contains("DISK") && table.lines().nth(1).is_some_and(|l| l.ends_with("ok")),
        "{table}"
    );
}

#[test]
fn bios_seat_boots_with_khoi_as_proxy_dhcp_beside_site_dhcp() {
    if !lab_available() {
        return;
    }
    test_disk();
    let mut lab = Lab::new("proxy", Mode::Proxy);
    lab.start_khoi(Mode::Proxy);
    let mac = lab.mac(1);
    lab.add_seat("pc01", &mac, "on-boot");
    let vm = lab.start_vm("pc01", &mac, Firmware::Bios);
    let booted = lab.wait_booted(&[&vm]);
    let (log, took) = &booted[0];
    report("bios proxy", &vm, *took);
    // The site router gave the address, Khoi only the boot information.
    assert!(
        log.contains("gw 10.77.0.254"),
        "address not from the site router:\n{}",
        tail(log, 40)
    );
    assert_eq!(persist_line(&vm, log), "absent");
    assert!(
        log.contains("Khoi: seat pc01"),
        "Khoi's script did not run:\n{}",
        tail(log, 40)
    );
    assert_boot_recorded(&lab, "pc01", false);
}

#[test]
fn bios_seat_boots_with_khoi_authoritative_and_unknown_mac_gets_nothing() {
    if !lab_available() {
        return;
    }
    test_disk();
    let mut lab = Lab::new("auth", Mode::Authoritative);
    lab.start_khoi(Mode::Authoritative);
    let mac = lab.mac(2);
    lab.add_seat("pc02", &mac, "on-boot");
    let stranger_mac = lab.mac(0xee);
    let stranger = lab.start_vm("stranger", &stranger_mac, Firmware::Bios);
    let vm = lab.start_vm("pc02", &mac, Firmware::Bios);
    let booted = lab.wait_booted(&[&vm]);
    let (log, took) = &booted[0];
    report("bios authoritative", &vm, *took);
    assert!(
        log.contains("net0: 10.77.0.1") && log.contains("Khoi: seat pc02"),
        "no address/script from Khoi:\n{}",
        tail(log, 40)
    );
    assert_eq!(persist_line(&vm, log), "absent");
    assert_boot_recorded(&lab, "pc02", false);

    // The stranger has been asking all along; iPXE gives DHCP up after a
    // few rounds, so by now it has heard nothing or never will.
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = lab.khoi().json(&["events", "--limit", "200"]);
        let seen = events.as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["kind"] == "pxe.unknown_mac"
                    && e["subject"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(&stranger_mac))
            })
        });
        if seen || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let slog = serial_text(&stranger.serial);
    assert!(
        events
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "pxe.unknown_mac"
                && e["subject"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(&stranger_mac)))),
        "no pxe.unknown_mac event for {stranger_mac}: {events:#}"
    );
    assert!(
        slog.contains("Configuring") || slog.contains("DHCP"),
        "the stranger never asked:\n{}",
        tail(&slog, 30)
    );
    assert!(
        !slog.contains("net0: 10.77.0.") && !slog.contains("Khoi:"),
        "an unregistered MAC got an address or a script:\n{}",
        tail(&slog, 30)
    );
}

#[test]
fn uefi_seat_boots_through_snponly_efi() {
    if !lab_available() {
        return;
    }
    test_disk();
    let mut lab = Lab::new("uefi", Mode::Proxy);
    lab.start_khoi(Mode::Proxy);
    let mac = lab.mac(3);
    lab.add_seat("pc03", &mac, "on-boot");
    let vm = lab.start_vm("pc03", &mac, Firmware::Uefi);
    let booted = lab.wait_booted(&[&vm]);
    let (log, took) = &booted[0];
    report("uefi proxy", &vm, *took);
    assert!(
        lab.tftp_root().join("snponly.efi").exists(),
        "TFTP root lacks snponly.efi"
    );
    assert!(
        log.contains("gw 10.77.0.254"),
        "address not from the site router:\n{}",
        tail(log, 40)
    );
    assert!(
        log.contains("Khoi: seat pc03"),
        "UEFI iPXE did not run Khoi's script:\n{}",
        tail(log, 40)
    );
    assert_eq!(persist_line(&vm, log), "absent");
    // The site's DHCP gave the address: the TFTP read is matched to the
    // one seat waiting for it.
    assert_boot_recorded(&lab, "pc03", true);
}

#[test]
fn reset_policies_with_real_reboots() {
    if !lab_available() {
        return;
    }
    test_disk();
    let mut lab = Lab::new("reset", Mode::Authoritative);
    lab.start_khoi(Mode::Authoritative);
    let (fresh_mac, kept_mac) = (lab.mac(4), lab.mac(5));
    lab.add_seat("fresh", &fresh_mac, "on-boot");
    // With mutual CHAP: iPXE checks the target's answer with the per-boot
    // secret its script carried, and the test disk's re-login from the iBFT
    // does the same, so each round proves a fresh target secret works.
    lab.add_seat_with("kept", &kept_mac, "persistent", &["--mutual-chap"]);
    let mut seen = Vec::new();
    for round in 1..=2 {
        let a = lab.start_vm(&format!("fresh-{round}"), &fresh_mac, Firmware::Bios);
        let b = lab.start_vm(&format!("kept-{round}"), &kept_mac, Firmware::Bios);
        let booted = lab.wait_booted(&[&a, &b]);
        report(&format!("reset round {round}"), &a, booted[0].1);
        report(&format!("reset round {round}"), &b, booted[1].1);
        seen.push((
            persist_line(&a, &booted[0].0),
            persist_line(&b, &booted[1].0),
        ));
    }
    assert_eq!(
        seen,
        vec![("absent", "absent"), ("absent", "found")],
        "(on-boot, persistent) per boot"
    );
}

/// Issue 10's boot-path attacks on the lab LAN, against a real iPXE seat. An
/// attacker namespace on the same bridge fetches the seat's script, replays
/// the seat's boot credentials (as read off the plain-HTTP script) from its
/// own address and, once the seat is off, from the seat's own address around
/// an admin reset.
#[test]
fn boot_path_attacks_from_the_lab_lan() {
    if !lab_available() {
        return;
    }
    test_disk();
    let mut lab = Lab::new("attack", Mode::Authoritative);
    lab.start_khoi(Mode::Authoritative);
    let mac = lab.mac(6);
    lab.add_seat("vict", &mac, "on-boot");
    let target = "iqn.2025-07.vn.khoi:vict";
    let seat_iqn = "iqn.2025-07.vn.khoi.initiator:vict";
    // The attacker: its own namespace on the seats' bridge.
    let att = format!("{}-a", lab.ns);
    delete_netns(&att);
    ip(&["netns", "add", &att]);
    ip(&["-n", &att, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &lab.ns, "link", "add", "att0", "type", "veth", "peer", "name", "att0-br",
    ]);
    ip(&["-n", &lab.ns, "link", "set", "att0", "netns", &att]);
    ip(&[
        "-n", &lab.ns, "link", "set", "att0-br", "master", "br0", "up",
    ]);
    ip(&["-n", &att, "addr", "add", "10.77.0.66/24", "dev", "att0"]);
    ip(&["-n", &att, "link", "set", "att0", "up"]);
    let in_att = |argv: &[&str]| {
        let out = run(Command::new("ip").args(["netns", "exec", &att]).args(argv));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let script_url = format!("http://{LAB_IP}:8077/boot/{}.ipxe", mac.replace(':', "-"));
    let resets = |lab: &Lab| {
        lab.khoi()
            .json(&["events", "--limit", "500"])
            .as_array()
            .map_or(0, |a| {
                a.iter()
                    .filter(|e| e["kind"] == "seat.reset" && e["subject"] == "vict")
                    .count()
            })
    };
    let db = lab.khoi().data.join("khoi.db");
    let running_cred = || {
        let out = run_ok(
            Command::new("sqlite3")
                .arg(&db)
                .arg("SELECT chap_user || ' ' || chap_secret FROM seat_boots WHERE seat = 'vict'"),
        );
        let (u, s) = out.trim().split_once(' ').expect("a running boot");
        (u.to_string(), s.to_string())
    };
    let inq = |cred: &(String, String)| {
        in_att(&[
            "iscsi-inq",
            "-i",
            seat_iqn,
            &format!("iscsi://{}%{}@{LAB_IP}:3260/{target}/0", cred.0, cred.1),
        ])
    };

    // 1. A drive-by fetch of the seat's script from the attacker's own MAC
    //    is refused: the kernel resolved that address to another machine.
    let script_status = || {
        let argv = [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            script_url.as_str(),
        ];
        in_att(&argv).1.trim().to_string()
    };
    assert_eq!(script_status(), "403", "a fetch from another machine's MAC");
    // With the seat's MAC taken over (DHCP has not seen the seat yet, so
    // the address filter cannot help either), the fetch gets a script, and
    // that changes nothing.
    let att_mac = in_att(&["cat", "/sys/class/net/att0/address"])
        .1
        .trim()
        .to_string();
    let set_att_mac = |m: &str| {
        ip(&["-n", &att, "link", "set", "att0", "down"]);
        ip(&["-n", &att, "link", "set", "att0", "address", m]);
        ip(&["-n", &att, "link", "set", "att0", "up"]);
        // The server forgets what it resolved 10.77.0.66 to.
        ip(&["-n", &lab.ns, "neigh", "flush", "all"]);
    };
    set_att_mac(&mac);
    let (ok, text) = in_att(&["curl", "-sS", &script_url]);
    set_att_mac(&att_mac);
    assert!(ok && text.contains("set password"), "{text}");
    assert!(
        !text.contains(
            &lab.khoi().json(&["seat", "show", "vict"])["chap_secret"]
                .as_str()
                .expect("secret")
                .to_string()
        ),
        "the script carries the stored secret"
    );
    assert_eq!(resets(&lab), 0, "a script fetch reset the seat");

    // 2. The real seat boots; its first login resets it (on-boot), once.
    let vm = lab.start_vm("vict-1", &mac, Firmware::Bios);
    let booted = lab.wait_booted(&[&vm]);
    report("attack: first boot", &vm, booted[0].1);
    assert_eq!(persist_line(&vm, &booted[0].0), "absent");
    assert_eq!(resets(&lab), 1);

    // 3. Its credentials, stolen, from the attacker's address: refused.
    let cred = running_cred();
    let (ok, text) = inq(&cred);
    assert!(
        !ok,
        "stolen boot credentials opened the seat from another address:\n{text}"
    );
    // And the attacker's own fetch is now refused (DHCP gave the MAC another
    // address): nothing usable.
    assert_eq!(script_status(), "403");

    // 4. The seat is off; the attacker takes over its address. The running
    //    boot's credentials still open the same overlay from there (a
    //    reconnect) until an admin reset fences the seat.
    ip(&["-n", &att, "addr", "flush", "dev", "att0"]);
    let seat_ip = run_ok(
        Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT peer FROM seat_boots WHERE seat = 'vict'"),
    );
    ip(&[
        "-n",
        &att,
        "addr",
        "add",
        &format!("{}/24", seat_ip.trim()),
        "dev",
        "att0",
    ]);
    let (ok, text) = inq(&cred);
    assert!(ok, "the running boot's reconnect was refused:\n{text}");
    assert_eq!(resets(&lab), 1, "a reconnect reset the seat");
    lab.khoi().ok(&["seat", "reset", "vict"]);
    let (ok, text) = inq(&cred);
    assert!(!ok, "a fenced seat's login was accepted:\n{text}");
    assert!(
        lab.khoi()
            .ok(&["seat", "list"])
            .contains("waiting for reboot")
    );
    // A fetch alone does not lift the fence.
    let (ok, _) = in_att(&["curl", "-sS", &script_url]);
    assert!(ok);
    let (ok, _) = inq(&cred);
    assert!(!ok);
    ip(&["-n", &att, "addr", "flush", "dev", "att0"]);

    // 5. The seat's next boot begins normally and clears the fence.
    let vm = lab.start_vm("vict-2", &mac, Firmware::Bios);
    let booted = lab.wait_booted(&[&vm]);
    report("attack: boot after fence", &vm, booted[0].1);
    assert_eq!(persist_line(&vm, &booted[0].0), "absent");
    assert!(
        !lab.khoi()
            .ok(&["seat", "list"])
            .contains("waiting for reboot")
    );
    let events = lab.khoi().json(&["events", "--limit", "500"]);
    for kind in ["iscsi.login.stolen", "iscsi.login.fenced", "seat.fence"] {
        assert!(
            events
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["kind"] == kind)),
            "no {kind} event: {events:#}"
        );
    }
    delete_netns(&att);
}

/// One DHCPDISCOVER as a BIOS PXE ROM with `mac` sends it, broadcast from
/// the calling thread's namespace on `iface`; the server ids of the offers
/// that answer within `wait`.
fn dhcp_offers(ns: &str, iface: &str, mac: [u8; 6], wait: Duration) -> Vec<std::net::Ipv4Addr> {
    let (ns, iface) = (ns.to_string(), iface.to_string());
    std::thread::spawn(move || {
        let f = File::open(format!("/run/netns/{ns}")).expect("netns");
        // SAFETY: setns on a namespace fd we hold; it moves this thread only.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        use std::net::{Ipv4Addr, SocketAddrV4};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        s.set_broadcast(true).expect("broadcast");
        s.bind_device(Some(iface.as_bytes())).expect("bind device");
        s.bind(&SockAddr::from(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            68,
        )))
        .expect("bind :68");
        let xid = std::process::id() ^ 0x6e65_7473;
        let mut p = vec![0u8; 240];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[10] = 0x80; // broadcast the answer: the probe has no lease
        p[28..34].copy_from_slice(&mac);
        p[236..240].copy_from_slice(&[99, 130, 83, 99]);
        p.extend_from_slice(&[53, 1, 1]);
        let class = b"PXEClient:Arch:00000:UNDI:002001";
        p.extend_from_slice(&[60, u8::try_from(class.len()).expect("short")]);
        p.extend_from_slice(class);
        p.extend_from_slice(&[93, 2, 0, 0, 94, 3, 1, 2, 1]);
        p.extend_from_slice(&[255]);
        p.resize(300, 0);
        s.send_to(
            &p,
            &SockAddr::from(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)),
        )
        .expect("send DISCOVER");
        let sock: std::net::UdpSocket = s.into();
        let deadline = Instant::now() + wait;
        let mut servers = Vec::new();
        let mut buf = [0u8; 1500];
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            sock.set_read_timeout(Some(left)).expect("timeout");
            let Ok(n) = sock.recv(&mut buf) else { break };
            let r = &buf[..n];
            if n < 240 || r[0] != 2 || r[4..8] != xid.to_be_bytes() {
                continue;
            }
            let mut i = 240;
            while i + 1 < n && r[i] != 255 {
                if r[i] == 0 {
                    i += 1;
                    continue;
                }
                let len = usize::from(r[i + 1]);
                if r[i] == 54 && len == 4 && i + 6 <= n {
                    servers.push(Ipv4Addr::new(r[i + 2], r[i + 3], r[i + 4], r[i + 5]));
                }
                i += 2 + len;
            }
        }
        servers
    })
    .join()
    .expect("probe thread")
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    v.try_into().expect("six bytes")
}

/// Issue 14: the TTHC counter LAN and the public kiosk network on one
/// server. A counter seat boots real iPXE on its bridge and a kiosk seat on
/// the other; then, from a host on each network, the other network's seat
/// gets no DHCP answer, no boot script, and no iSCSI login, and a kiosk
/// image is refused for a seat on the counter LAN.
#[test]
fn counter_and_kiosk_networks_serve_only_their_own_seats() {
    if !lab_available() {
        return;
    }
    test_disk();
    const PUB_IP: &str = "10.77.5.1";
    let mut lab = Lab::new("nets", Mode::Authoritative);
    lab.add_bridge("br1", &format!("{PUB_IP}/24"), "fd75::1/64");
    let tftp = lab.tftp_root();
    let pxe = format!(
        "pxe:\n\
         \x20 - name: quay\n    kind: counter\n    mode: authoritative\n    interface: br0\n    \
         server_ip: {LAB_IP}\n    tftp_root: {t}\n    \
         pool: {{ start: 10.77.0.100, end: 10.77.0.199 }}\n    subnet_mask: 255.255.255.0\n\
         \x20 - name: public\n    kind: public\n    mode: authoritative\n    interface: br1\n    \
         server_ip: {PUB_IP}\n    tftp_root: {t}\n    \
         pool: {{ start: 10.77.5.100, end: 10.77.5.199 }}\n    subnet_mask: 255.255.255.0\n",
        t = tftp.display()
    );
    lab.start_khoi_yaml(pxe, "0.0.0.0:3260");
    let disk = test_disk();
    let k = lab.khoi();
    k.ok(&[
        "image",
        "import",
        "e2e-kiosk",
        &disk.image.to_string_lossy(),
    ]);
    k.ok(&["image", "profile", "e2e-kiosk", "kiosk"]);

    let (q_mac, p_mac) = (lab.mac(0x21), lab.mac(0x22));
    lab.add_seat("quay-1", &q_mac, "on-boot");
    // A kiosk image for a seat on the counter LAN (the default network) is
    // refused, naming both.
    let out = lab.khoi().khoi(&[
        "seat",
        "add",
        "kiosk-1",
        "--mac",
        &p_mac,
        "--image",
        "e2e-kiosk",
    ]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "kiosk image on the counter LAN");
    assert!(text.contains("kiosk") && text.contains("quay"), "{text}");
    lab.khoi().ok(&[
        "seat",
        "add",
        "kiosk-1",
        "--mac",
        &p_mac,
        "--image",
        "e2e-kiosk",
        "--network",
        "public",
    ]);
    // Each seat is told the portal of its own network, and the list shows
    // which network each seat is on.
    let show = lab.khoi().json(&["seat", "show", "kiosk-1"]);
    assert_eq!(show["portal"], format!("{PUB_IP}:3260"), "{show}");
    let show = lab.khoi().json(&["seat", "show", "quay-1"]);
    assert_eq!(show["portal"], format!("{LAB_IP}:3260"), "{show}");
    let list = lab.khoi().ok(&["seat", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("kiosk-1") && l.contains(" public ")),
        "{list}"
    );

    // 1. Each seat boots with real iPXE on its own network.
    let vm = lab.start_vm_on("br0", "quay-1", &q_mac, Firmware::Bios);
    let booted = lab.wait_booted(&[&vm]);
    report("networks: counter seat", &vm, booted[0].1);
    assert!(
        booted[0].0.contains("Khoi: seat quay-1"),
        "{}",
        tail(&booted[0].0, 40)
    );
    let vm = lab.start_vm_on("br1", "kiosk-1", &p_mac, Firmware::Bios);
    let booted = lab.wait_booted(&[&vm]);
    report("networks: kiosk seat", &vm, booted[0].1);
    assert!(
        booted[0].0.contains("Khoi: seat kiosk-1"),
        "{}",
        tail(&booted[0].0, 40)
    );
    assert!(
        booted[0].0.contains(PUB_IP),
        "the kiosk did not boot from the public network's address:\n{}",
        tail(&booted[0].0, 40)
    );

    // 2. A host on each network asks for the other network's seat.
    let q_host = lab.add_host("q", "br0", "10.77.0.66/24", LAB_IP);
    let p_host = lab.add_host("p", "br1", "10.77.5.66/24", PUB_IP);
    let lab_ip: std::net::Ipv4Addr = LAB_IP.parse().expect("ip");
    let pub_ip: std::net::Ipv4Addr = PUB_IP.parse().expect("ip");
    let wait = Duration::from_secs(3);
    // DHCP: each network answers its own seat and is silent for the other.
    assert_eq!(
        dhcp_offers(&q_host, "q0", mac_bytes(&q_mac), wait),
        [lab_ip]
    );
    assert_eq!(
        dhcp_offers(&p_host, "p0", mac_bytes(&p_mac), wait),
        [pub_ip]
    );
    let none: Vec<std::net::Ipv4Addr> = Vec::new();
    assert_eq!(dhcp_offers(&p_host, "p0", mac_bytes(&q_mac), wait), none);
    assert_eq!(dhcp_offers(&q_host, "q0", mac_bytes(&p_mac), wait), none);

    let in_ns = |ns: &str, argv: &[&str]| {
        let out = run(Command::new("ip").args(["netns", "exec", ns]).args(argv));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let script = |server: &str, mac: &str| {
        format!("http://{server}:8077/boot/{}.ipxe", mac.replace(':', "-"))
    };
    for (host, own_ip, other_ip, seat_mac) in [
        (&p_host, PUB_IP, LAB_IP, &q_mac),
        (&q_host, LAB_IP, PUB_IP, &p_mac),
    ] {
        // Scripts: the host's own network's server has no script for the
        // other network's seat...
        let (ok, text) = in_ns(host, &["curl", "-sS", "-m", "5", &script(own_ip, seat_mac)]);
        assert!(ok, "{text}");
        assert!(
            !text.contains("set password") && !text.contains("sanboot"),
            "a seat's script was served on the wrong network:\n{text}"
        );
        // ...and the other network's address, routed to the server from
        // here, takes no connection from this network at all.
        let (ok, text) = in_ns(
            host,
            &["curl", "-sS", "-m", "5", &script(other_ip, seat_mac)],
        );
        assert!(!ok, "boot scripts answered across networks:\n{text}");
    }

    // 3. iSCSI: the seats' running credentials, used from the other
    //    network, open nothing, on either address.
    let db = lab.khoi().data.join("khoi.db");
    let cred = |seat: &str| {
        let out = run_ok(Command::new("sqlite3").arg(&db).arg(format!(
            "SELECT chap_user || ' ' || chap_secret FROM seat_boots WHERE seat = '{seat}'"
        )));
        let (u, s) = out.trim().split_once(' ').expect("a running boot");
        (u.to_string(), s.to_string())
    };
    for (host, own_ip, other_ip, seat) in [
        (&p_host, PUB_IP, LAB_IP, "quay-1"),
        (&q_host, LAB_IP, PUB_IP, "kiosk-1"),
    ] {
        let (user, secret) = cred(seat);
        let initiator = format!("iqn.2025-07.vn.khoi.initiator:{seat}");
        for portal in [own_ip, other_ip] {
            let url = format!("iscsi://{user}%{secret}@{portal}:3260/iqn.2025-07.vn.khoi:{seat}/0");
            let (ok, text) = in_ns(host, &["iscsi-inq", "-i", &initiator, &url]);
            assert!(
                !ok,
                "{seat} logged in from the wrong network via {portal}:\n{text}"
            );
        }
    }
    let events = lab.khoi().json(&["events", "--limit", "1000"]);
    let has = |kind: &str, subject: &str| {
        events.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["kind"] == kind && e["subject"] == subject)
        })
    };
    for seat in ["quay-1", "kiosk-1"] {
        for kind in ["pxe.wrong_network", "iscsi.login.wrong_network"] {
            assert!(has(kind, seat), "no {kind} event for {seat}: {events:#}");
        }
    }
    assert!(
        !has("pxe.unknown_mac", "52:54:00:77:01:21"),
        "a registered seat was reported as unknown"
    );

    // 4. `config check` of a file without the public network, while this
    //    server runs: kiosk-1 would boot nowhere, and is named.
    let text = std::fs::read_to_string(&lab.khoi().config).expect("config");
    let one = text
        .split("  - name: public")
        .next()
        .expect("first part")
        .to_string();
    let file = lab.khoi().dir.path().join("one-network.yaml");
    std::fs::write(&file, one).expect("write");
    let out = run(Command::new("ip").args(["netns", "exec", &lab.ns]).args([
        common::KHOI,
        "config",
        "check",
        &file.to_string_lossy(),
    ]));
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "config check passed a seat's missing network"
    );
    assert!(text.contains("kiosk-1 (on public)"), "{text}");
}

/// Waits until the server's event log has an event of `kind` about `subject`.
fn wait_event(server: &Server, subject: &str, kind: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let events = server.json(&["events", "--subject", subject, "--limit", "200"]);
        let found = events
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == kind));
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event about {subject}: {events}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The province path end to end: a publisher Khoi uploads the image to a
/// real Garage, a site Khoi (the lab's) pulls and verifies it, and a seat
/// boots it from the site.
#[test]
fn site_seat_boots_a_version_pulled_from_the_province() {
    if !lab_available() {
        return;
    }
    let disk = test_disk();
    let mut lab = Lab::new("sync", Mode::Proxy);
    // Garage and the publisher live in the lab namespace too, so the site
    // reaches the bucket on the namespace's loopback.
    let g = garage::Garage::start(Some(&lab.ns.clone()));
    let keys = lab.dir.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    let pub_cred = g.credentials(&g.key("so-tttt", true), &keys);
    // The site writes its status object, so its key may write (integrity
    // rests on the signatures, not on bucket rights).
    let site_cred = g.credentials(&g.key("phuong-1", true), &keys);
    let keygen = |file: &Path| {
        let out =
            run_ok(Command::new(common::KHOI).args(["sync", "keygen", &file.to_string_lossy()]));
        out.lines().last().expect("public key").trim().to_string()
    };
    let signing = keys.join("province.key");
    let public = keygen(&signing);
    // The site signs its status with its own key; the publisher lists it.
    let status_key = keys.join("phuong-1.key");
    let site_public = keygen(&status_key);
    let bucket = |cred: &Path| {
        format!(
            "  bucket:\n    endpoint: {}\n    name: khoi\n    credentials_file: {}\n    allow_http: true\n",
            g.endpoint(),
            cred.display()
        )
    };
    let publisher = Server::start_with(Options {
        netns: Some(lab.ns.clone()),
        extra_yaml: format!(
            "sync:\n  role: publisher\n  name: so-tttt\n{}  signing_key: {}\n  images: [e2e]\n  \
             sites: [{{name: phuong-1, key: {site_public}}}]\n",
            bucket(&pub_cred),
            signing.display()
        ),
        ..Options::default()
    });
    publisher.ok(&["image", "import", "e2e", &disk.image.to_string_lossy()]);
    publisher.ok(&["sync", "now"]);
    wait_event(&publisher, "e2e", "sync.uploaded", Duration::from_secs(120));

    let site_yaml = format!(
        "sync:\n  role: site\n  name: phuong-1\n{}  trusted_keys: [{public}]\n  images: [e2e]\n  \
         status_key: {}\n",
        bucket(&site_cred),
        status_key.display()
    );
    lab.start_khoi_with(Mode::Proxy, &site_yaml, false);
    lab.khoi().ok(&["sync", "now"]);
    wait_event(lab.khoi(), "e2e", "sync.pulled", Duration::from_secs(120));
    let versions = lab.khoi().json(&["image", "versions", "e2e"]);
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    // The site's status reaches the publisher: in sync.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        publisher.ok(&["sync", "now"]);
        std::thread::sleep(Duration::from_secs(1));
        let st = publisher.json(&["sync", "status"]);
        if st["sites"][0][1] == "in_sync" {
            assert_eq!(st["sites"][0][0], "phuong-1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publisher never saw phuong-1 in sync: {st}"
        );
    }

    let mac = lab.mac(1);
    lab.add_seat("pc01", &mac, "on-boot");
    let vm = lab.start_vm("pc01", &mac, Firmware::Bios);
    let booted = lab.wait_booted(&[&vm]);
    let (log, took) = &booted[0];
    report("bios site from province", &vm, *took);
    assert!(
        log.contains("Khoi: seat pc01"),
        "Khoi's script did not run:\n{}",
        tail(log, 40)
    );
    drop(publisher);
}

/// The capture environment, built once (`images/capture/build.sh`, cached).
fn capture_env() -> &'static PathBuf {
    static ENV: OnceLock<PathBuf> = OnceLock::new();
    ENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/capture/build.sh");
        let out = run(&mut Command::new(&script));
        assert!(
            out.status.success(),
            "{} failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::env::var_os("KHOI_CAPTURE_WORK")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("khoi-capture"))
            .join("out")
    })
}

/// NTFS partition size in the capture tests' source disks.
const NTFS_MIB: u64 = 48;

/// A local disk: the test disk with an NTFS partition appended after its FAT
/// one (made with mkntfs, files put in with ntfscp: no mounts). With `dirty`,
/// the volume's dirty flag is set, as Windows leaves it after an unclean
/// shutdown (no ntfs-3g tool sets it: the bytes are patched as the image
/// gate's fixtures do).
fn source_disk(dir: &Path, name: &str, dirty: bool) -> (PathBuf, u64, u64) {
    let disk = dir.join(format!("{name}.img"));
    std::fs::copy(&test_disk().image, &disk).expect("copy test disk");
    let fat_end = std::fs::metadata(&disk).expect("meta").len();
    let start = fat_end.div_ceil(1 << 20) * (1 << 20);
    let len = NTFS_MIB << 20;
    let part = dir.join(format!("{name}.ntfs"));
    File::create(&part)
        .and_then(|f| f.set_len(len))
        .expect("ntfs file");
    run_ok(
        Command::new("mkntfs")
            .args(["-Q", "-F", "-q", "-L", "CAPTURE"])
            .args(["-p", &(start / 512).to_string(), "-H", "255", "-S", "63"])
            .arg(&part),
    );
    let put = |content: &[u8], dest: &str| {
        let src = dir.join(format!("{name}.put"));
        std::fs::write(&src, content).expect("file");
        run_ok(
            Command::new("ntfscp")
                .args(["-f", "-q"])
                .arg(&part)
                .arg(&src)
                .arg(dest),
        );
    };
    let payload: Vec<u8> = (0..(1u32 << 20))
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    put(&payload, "payload.bin");
    put(b"captured by khoi\n", "hello.txt");
    if dirty {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&part)
            .expect("ntfs");
        let mut boot = [0u8; 512];
        f.read_exact_at(&mut boot, 0).expect("boot sector");
        // $Volume is MFT record 3; the boot sector says where the MFT is.
        let cluster = u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13]);
        let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().expect("8 bytes")) * cluster;
        // Clusters per record, or (negative) the log2 of the record size.
        let per = boot[0x40].cast_signed();
        let rec_size = match u64::try_from(per) {
            Ok(clusters) => clusters * cluster,
            Err(_) => 1u64 << per.unsigned_abs(),
        };
        let mut rec = vec![0u8; usize::try_from(rec_size).expect("small record")];
        f.read_exact_at(&mut rec, mft + 3 * rec_size)
            .expect("$Volume");
        khoi_inspect::fixtures::set_dirty(&mut rec);
        // The mirror holds the first records too; ntfs-3g refuses a mismatch.
        let mirror = u64::from_le_bytes(boot[0x38..0x40].try_into().expect("8 bytes")) * cluster;
        for at in [mft, mirror] {
            f.write_all_at(&rec, at + 3 * rec_size).expect("$Volume");
        }
    }
    // The NTFS partition goes after the FAT one; the disk grows to hold it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("disk");
    f.set_len(start + len + (1 << 20)).expect("grow");
    drop(f);
    run_ok(Command::new("dd").args([
        &format!("if={}", part.display()),
        &format!("of={}", disk.display()),
        "bs=1M",
        &format!("seek={}", start >> 20),
        "conv=notrunc,sparse",
        "status=none",
    ]));
    let mut sf = Command::new("sfdisk");
    sf.args(["--append", "--no-reread", "--no-tell-kernel", "-q"])
        .arg(&disk);
    sf.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "start={}, size={}, type=7", start / 512, len / 512).expect("sfdisk input");
    }
    let out = child.wait_with_output().expect("sfdisk");
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (disk, start, len)
}

/// Waits for a capture environment's last word on the serial console.
fn wait_capture(lab: &mut Lab, vm: &Vm, want: &str) -> String {
    let deadline = Instant::now() + BOOT_TIMEOUT * 2;
    loop {
        let log = serial_text(&vm.serial);
        if log.contains(want) {
            return log;
        }
        let why = if log.contains("KHOI-CAPTURE: FAILED") {
            Some("the capture failed")
        } else if log.contains("KHOI-CAPTURE-REFUSED") && want != "KHOI-CAPTURE-REFUSED" {
            Some("the capture was refused")
        } else if lab.vm_exited(vm) {
            Some("qemu exited")
        } else if Instant::now() > deadline {
            Some("timed out")
        } else {
            None
        };
        if let Some(why) = why {
            lab.fail(vm, &format!("{why} before {want}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn stop_vm(lab: &mut Lab, vm: &Vm) {
    let _ = lab.children[vm.child].kill();
    let _ = lab.children[vm.child].wait();
}

/// Issue 11 §2: a seat in capture mode boots the capture environment, which
/// copies its local disk (MBR, the FAT boot partition raw, an NTFS partition
/// by used clusters) into a new image published as version 1; the copy equals
/// the source where it matters, and the same seat then boots it over iSCSI.
#[test]
fn capture_mode_copies_a_local_disk_into_version_1_and_the_seat_boots_it() {
    if !lab_available() {
        return;
    }
    require("mkntfs");
    require("ntfscp");
    require("ntfscat");
    let mut lab = Lab::new("cap", Mode::Authoritative);
    lab.start_khoi(Mode::Authoritative);
    let env = capture_env().clone();
    let data = lab.khoi().data.clone();
    std::fs::create_dir_all(data.join("capture")).expect("capture dir");
    for f in ["vmlinuz", "initrd.gz"] {
        std::fs::copy(env.join(f), data.join("capture").join(f)).expect("install environment");
    }
    let dir = lab.dir.path().to_path_buf();
    let (disk, start, len) = source_disk(&dir, "master", false);
    let mac = lab.mac(0x30);
    lab.add_seat("master", &mac, "persistent");
    let armed = lab
        .khoi()
        .ok(&["seat", "capture", "master", "--image", "golden"]);
    assert!(armed.contains("environment: built"), "{armed}");

    // A fetch of the seat's script from another machine (here: the server's
    // own address) gets a capture token that works from there only, and
    // the seat's own fetch replaces it.
    let ns = lab.ns.clone();
    let in_lab = |argv: &[&str]| {
        let out = run(Command::new("ip").args(["netns", "exec", &ns]).args(argv));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let script_url = format!("http://{LAB_IP}:8077/boot/{}.ipxe", mac.replace(':', "-"));
    let script = in_lab(&["curl", "-sS", &script_url]);
    let initrd_url = script
        .lines()
        .find_map(|l| l.strip_prefix("initrd "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no capture script: {script}"))
        .to_string();
    let code = |url: &str| in_lab(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url]);
    assert_eq!(
        code(&initrd_url),
        "200",
        "the fetching address gets the environment"
    );

    let vm = lab.start_vm_with_disk("master", &mac, Firmware::Bios, Some(&disk));
    let log = wait_capture(&mut lab, &vm, "KHOI-CAPTURE-DONE");
    assert_eq!(
        code(&initrd_url),
        "404",
        "the seat's own fetch replaced that token"
    );
    stop_vm(&mut lab, &vm);
    eprintln!(
        "pxe_e2e: capture finished after {:.1} s",
        vm.started.elapsed().as_secs_f64()
    );
    let status = lab.khoi().ok(&["seat", "capture", "master", "--status"]);
    // The test disk is no Windows installation: the gate holds the copy, and
    // the officer publishes it with a reason (what the page offers).
    if status.contains("status:   held") {
        lab.khoi().ok(&[
            "draft",
            "publish",
            "golden",
            "--note",
            "captured test disk",
            "--override",
            "the test disk is not Windows",
        ]);
    } else {
        assert!(
            status.contains("status:   done"),
            "{status}\n{}",
            tail(&log, 30)
        );
    }
    let versions = lab.khoi().json(&["image", "versions", "golden"]);
    let numbers: Vec<u64> = versions
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["number"].as_u64())
        .collect();
    assert!(numbers.contains(&1), "{versions}");

    // Equal where it matters: everything before the NTFS partition (MBR,
    // boot code, the FAT partition) byte for byte, and the NTFS files.
    let copy = dir.join("golden.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(lab.khoi().nbd_uri("image/golden@1"))
            .arg(&copy),
    );
    assert_eq!(
        std::fs::metadata(&copy).expect("copy").len(),
        std::fs::metadata(&disk).expect("disk").len(),
        "the image has the source disk's size"
    );
    let head = |p: &Path| {
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!("head -c {start} {} | sha256sum", p.display())),
        )
    };
    assert_eq!(
        head(&disk),
        head(&copy),
        "partition table, boot code and FAT partition"
    );
    let extract = |p: &Path, tag: &str| {
        let part = dir.join(format!("{tag}.part"));
        run_ok(Command::new("dd").args([
            &format!("if={}", p.display()),
            &format!("of={}", part.display()),
            "bs=1M",
            &format!("skip={}", start >> 20),
            &format!("count={}", len >> 20),
            "status=none",
        ]));
        part
    };
    let (src_part, dst_part) = (extract(&disk, "src"), extract(&copy, "dst"));
    for f in ["payload.bin", "hello.txt"] {
        let a = run(Command::new("ntfscat").arg(&src_part).arg(f));
        let b = run(Command::new("ntfscat").arg(&dst_part).arg(f));
        assert!(a.status.success() && b.status.success(), "ntfscat {f}");
        assert!(a.stdout == b.stdout, "{f} differs in the copy");
    }
    let ev = lab.khoi().ok(&["events", "--subject", "master"]);
    for k in ["seat.capture.arm", "seat.capture.start", "seat.capture"] {
        assert!(ev.contains(k), "{k} in {ev}");
    }

    // The seat left capture mode; the same machine, now on the captured
    // image, boots it over iSCSI (its local disk still attached).
    lab.khoi().ok(&["seat", "remove", "master"]);
    lab.khoi().ok(&[
        "seat",
        "add",
        "master",
        "--mac",
        &mac,
        "--image",
        "golden",
        "--policy",
        "persistent",
    ]);
    let vm = lab.start_vm_with_disk("master-2", &mac, Firmware::Bios, Some(&disk));
    let booted = lab.wait_booted(&[&vm]);
    assert_eq!(persist_line(&vm, &booted[0].0), "absent");
    report("captured image", &vm, booted[0].1);
}

/// A source whose NTFS volume Windows did not shut down cleanly is refused
/// (the image gate's detection, run over the copy): the seat's screen says
/// why, the event log has it, no image is left.
#[test]
fn capture_of_a_dirty_ntfs_volume_is_refused() {
    if !lab_available() {
        return;
    }
    require("mkntfs");
    require("ntfscp");
    let mut lab = Lab::new("caph", Mode::Authoritative);
    lab.start_khoi(Mode::Authoritative);
    let env = capture_env().clone();
    let data = lab.khoi().data.clone();
    std::fs::create_dir_all(data.join("capture")).expect("capture dir");
    for f in ["vmlinuz", "initrd.gz"] {
        std::fs::copy(env.join(f), data.join("capture").join(f)).expect("install environment");
    }
    let dir = lab.dir.path().to_path_buf();
    let (disk, _, _) = source_disk(&dir, "sleepy", true);
    let mac = lab.mac(0x31);
    lab.add_seat("sleepy", &mac, "persistent");
    lab.khoi()
        .ok(&["seat", "capture", "sleepy", "--image", "never"]);
    let vm = lab.start_vm_with_disk("sleepy", &mac, Firmware::Bios, Some(&disk));
    let log = wait_capture(&mut lab, &vm, "KHOI-CAPTURE-REFUSED");
    stop_vm(&mut lab, &vm);
    assert!(log.contains("not shut down cleanly"), "{}", tail(&log, 20));
    let status = lab.khoi().ok(&["seat", "capture", "sleepy", "--status"]);
    assert!(status.contains("status:   refused"), "{status}");
    let ev = lab.khoi().ok(&["events", "--subject", "sleepy"]);
    assert!(ev.contains("seat.capture.refused"), "{ev}");
    let images = lab.khoi().ok(&["image", "list"]);
    assert!(
        !images.contains("never"),
        "the refused capture left no image: {images}"
    );
}

/// Warm standby end to end: a primary Khoi with a seat and an image, its
/// standby pulling both from the same Garage; the primary is killed
/// (`kill -9`), the standby takes the service address (`ip addr add`, as
/// keepalived would) and is promoted, and a real iPXE seat boots from it.
/// Both run in the lab namespace (Garage listens on its loopback), so the
/// service address is a second address on the bridge that the test removes
/// with the dead primary and adds back for the standby.
#[test]
fn seat_boots_from_a_promoted_standby_after_the_primary_dies() {
    if !lab_available() {
        return;
    }
    const SERVICE_IP: &str = "10.77.0.2";
    let mut lab = Lab::new("standby", Mode::Proxy);
    let lab_dir = lab.dir.path().to_path_buf();
    let ns = lab.ns.clone();
    let g = garage::Garage::start(Some(&ns));
    let keys = lab.dir.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    let primary_cred = g.credentials(&g.key("phuong-1", true), &keys);
    let standby_cred = g.credentials(&g.key("phuong-1-b", false), &keys);
    let keygen = |file: &Path| {
        let out =
            run_ok(Command::new(common::KHOI).args(["sync", "keygen", &file.to_string_lossy()]));
        out.lines().last().expect("public key").trim().to_string()
    };
    let province_key = keys.join("province.key");
    let province_public = keygen(&province_key);
    let standby_key = keys.join("standby.key");
    let standby_public = keygen(&standby_key);
    let bucket = |cred: &Path| {
        format!(
            "  bucket:\n    endpoint: {}\n    name: khoi\n    credentials_file: {}\n    allow_http: true\n",
            g.endpoint(),
            cred.display()
        )
    };
    let pxe = |tftp: &str| {
        format!(
            "pxe:\n  mode: proxy\n  interface: br0\n  server_ip: {SERVICE_IP}\n  \
             http_port: 8077\n  tftp_root: {}\n",
            lab_dir.join(tftp).display()
        )
    };
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{SERVICE_IP}/24"),
        "dev",
        "br0",
    ]);

    // The primary: the centre's Khoi, publishing its images and state for
    // its standby.
    let primary_yaml = format!(
        "{}sync:\n  role: publisher\n  name: phuong-1\n{}  signing_key: {}\n  images: [e2e]\n  \
         standby_key: {}\n  snapshot_secs: 10\n  interval_secs: 10\n",
        pxe("tftp"),
        bucket(&primary_cred),
        province_key.display(),
        standby_key.display()
    );
    lab.start_khoi_full(primary_yaml, &format!("{SERVICE_IP}:3260"), true);
    let mac = lab.mac(1);
    lab.add_seat("pc01", &mac, "on-boot");
    lab.khoi().ok(&["sync", "now"]);

    // The standby: same boot network, nothing answered until promoted.
    let standby = Server::start_with(Options {
        iscsi: true,
        iscsi_addr: Some(format!("{SERVICE_IP}:3260")),
        netns: Some(ns.clone()),
        extra_yaml: format!(
            "{}sync:\n  role: standby\n  name: phuong-1-b\n{}  trusted_keys: [{province_public}]\n  \
             images: [e2e]\n  primary: phuong-1\n  primary_key: {standby_public}\n  \
             interval_secs: 10\n",
            pxe("tftp-b"),
            bucket(&standby_cred)
        ),
        ..Options::default()
    });
    wait_event(&standby, "e2e", "sync.pulled", Duration::from_secs(180));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        lab.khoi().ok(&["sync", "now"]);
        standby.ok(&["sync", "now"]);
        std::thread::sleep(Duration::from_secs(2));
        let st = standby.json(&["standby", "status"]);
        if st["seats"] == 1 && st["images_missing"].as_array().is_some_and(Vec::is_empty) {
            assert_eq!(st["primary"], "phuong-1", "{st}");
            assert!(st["promoted"].is_null(), "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never got the primary's seat and image: {st}\n{}",
            standby.log()
        );
    }
    assert!(
        standby
            .json(&["seat", "list"])
            .as_array()
            .is_some_and(Vec::is_empty),
        "a standby restores nothing before it is promoted"
    );
    // Standing by, it holds none of the seats' ports (DHCP, TFTP, boot
    // scripts, iSCSI): only its admin listener.
    let sockets = run_ok(Command::new("ip").args(["netns", "exec", &ns, "ss", "-Hlntup"]));
    let mine = format!("pid={},", standby.pid());
    assert!(
        sockets.contains(&mine),
        "the standby's admin listener: {sockets}"
    );
    for line in sockets.lines().filter(|l| l.contains(&mine)) {
        for port in [":67 ", ":69 ", ":4011 ", ":8077 ", ":3260 "] {
            assert!(!line.contains(port), "a standby listens for seats: {line}");
        }
    }

    // The primary dies; its address goes with it and comes back on the
    // standby, which is promoted.
    lab.server.as_mut().expect("primary").kill9();
    ip(&[
        "-n",
        &ns,
        "addr",
        "del",
        &format!("{SERVICE_IP}/24"),
        "dev",
        "br0",
    ]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{SERVICE_IP}/24"),
        "dev",
        "br0",
    ]);
    let promoted = standby.json(&["standby", "promote"]);
    assert_eq!(
        promoted["restored"],
        serde_json::json!(["pc01"]),
        "{promoted}"
    );
    lab.wait_udp(&ns, 67);
    // Promoted is remembered: a restart serves the seats again at once.
    let mut standby = standby;
    standby.stop();
    standby.spawn();
    lab.wait_udp(&ns, 67);
    let again = standby.fails(&["standby", "promote"]);
    assert!(again.contains("already promoted"), "{again}");
    lab.server = Some(standby);

    let vm = lab.start_vm("pc01", &mac, Firmware::Bios);
    let booted = lab.wait_booted(&[&vm]);
    let (log, took) = &booted[0];
    report("bios seat from a promoted standby", &vm, *took);
    assert!(
        log.contains("Khoi: seat pc01"),
        "Khoi's script did not run on the standby:\n{}",
        tail(log, 40)
    );
    let events = lab.khoi().json(&["events", "--limit", "200"]);
    assert!(
        events
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "standby.promote")),
        "{events:#}"
    );
    drop(g);
}
