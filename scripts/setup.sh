#!/usr/bin/env bash
# Install what Khoi needs on Debian 12: `setup.sh run` for the server,
# `setup.sh test` for the server plus every real peer the tests drive.
# Only installs what is missing, so it is cheap to call every time.
set -euo pipefail

mode=${1:-run}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# qemu-img converts qcow2/vmdk/vhdx/vdi on import; ipxe provides the boot
# binaries the TFTP server hands out. NBD's TLS (pre-shared keys) links the
# system OpenSSL: libssl-dev and pkg-config to build, libssl3 at run time.
run_pkgs=(qemu-utils ipxe libssl-dev pkg-config)
# `khoi image fix` writes a draft's NTFS with ntfs-3g through nbdfuse
# (libnbd-bin), hives with hivexregedit, Login Data with sqlite3; the
# compliance report's PDF embeds DejaVu Sans and Noto Sans Mono
# (fonts-dejavu-core, fonts-noto-mono).
run_pkgs+=(ntfs-3g libnbd-bin libhivex-bin libwin-hivex-perl sqlite3 fonts-dejavu-core fonts-noto-mono)
# Real peers: NBD clients (libnbd-bin, fio, qemu-io), NBD peers for the
# benchmark (nbdkit, qemu-nbd), iSCSI initiators (libiscsi-bin, qemu's
# iscsi:// driver in qemu-block-extra) and tgt for the iSCSI benchmark.
# chromium drives the admin page in the browser test (tests/web_browser.rs),
# with playwright-core from npm (installed below); nodejs runs it.
test_pkgs=(libnbd-bin python3-libnbd nbdkit fio libiscsi-bin qemu-block-extra tgt iperf3 sqlite3 chromium)
# curl and openssl check the admin page's HTTPS (tests/web_attacks.rs).
test_pkgs+=(curl openssl)
# The package test (tests/package.rs): dpkg-deb builds and unpacks the .deb,
# systemd-analyze verifies the unit, setpriv (util-linux) starts it unprivileged.
test_pkgs+=(dpkg systemd util-linux)
# The PXE end-to-end tests (tests/pxe_e2e.rs, scripts/lab.sh): real firmware
# in qemu (SeaBIOS + ipxe-qemu's NIC ROM, OVMF), a plain site DHCP server
# (dnsmasq-base: the binary without the distribution's service, which would
# grab port 53 on the host), namespaces (iproute2), and what
# images/test-disk/build.sh needs to build the boot disk (mtools, syslinux,
# dosfstools, fdisk, cpio, kmod's depmod/modprobe, python3).
test_pkgs+=(qemu-system-x86 ipxe-qemu ovmf dnsmasq-base iproute2 mtools syslinux
    syslinux-common dosfstools fdisk cpio kmod python3)

# The image gate's tests (server/khoi-inspect) build real Windows-shaped
# images: NTFS with ntfs-3g (mkntfs, a FUSE mount), registry hives with
# hivex, Chromium's `Login Data` with sqlite3, MBR/GPT tables with fdisk's
# sfdisk and gdisk's sgdisk.
test_pkgs+=(ntfs-3g libhivex-bin libwin-hivex-perl gdisk)
# The compliance report's PDF is read back with pdftotext.
test_pkgs+=(poppler-utils)
# images/capture/build.sh finds the libraries its binaries need with readelf.
test_pkgs+=(binutils)

# scripts/bench-sync.sh compares province sync with rsync -z (and zstd for the
# delta's compressed size, bc for the table).
test_pkgs+=(rsync zstd bc)

want=("${run_pkgs[@]}")
[ "$mode" = test ] && want+=("${test_pkgs[@]}")

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# qemu-block-extra must be the same build as qemu-utils, or qemu-img loses
# its block drivers; some images ship a newer qemu-utils from backports than
# the release has a qemu-block-extra for, so pin the whole qemu set to the
# release when the versions disagree (see ../shared/reference/machine.md).
qemu_mismatch=0
if [ "$mode" = test ]; then
    u=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    b=$(dpkg-query -W -f='${Version}' qemu-block-extra 2>/dev/null || true)
    x=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
    [ -n "$u" ] && { [ "$u" != "$b" ] || [ "$u" != "$x" ]; } && qemu_mismatch=1
fi

if [ ${#missing[@]} -gt 0 ] || [ "$qemu_mismatch" = 1 ]; then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    pkgs=()
    for p in "${missing[@]}"; do
        case "$p" in
            qemu-utils|qemu-block-extra|qemu-system-x86) ;;
            *) pkgs+=("$p") ;;
        esac
    done
    qemu=(qemu-utils/"$codename")
    # qemu-system-x86 from another release would replace qemu-utils (and
    # with it qemu-img/qemu-io), so it joins the pinned set.
    [ "$mode" = test ] && qemu+=(qemu-block-extra/"$codename" qemu-system-x86/"$codename")
    as_root apt-get install -y -q --allow-downgrades "${pkgs[@]}" "${qemu[@]}"
fi

if [ "$mode" = test ]; then
    # Node may come from Debian or from NodeSource (which bundles npm and
    # conflicts with Debian's npm package), so install it only if missing.
    if ! command -v npm >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get update -q
        as_root apt-get install -y -q nodejs npm
    fi
    browser="$(dirname "$0")/../tests/browser"
    if [ ! -d "$browser/node_modules/playwright-core" ]; then
        (cd "$browser" && npm ci --no-audit --no-fund)
    fi
fi

# The workspace needs Rust at its rust-version; Debian 12's own cargo (1.63)
# is too old, so say in one line what to install and why.
need=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml")
have=$(rustc --version 2>/dev/null | cut -d' ' -f2 || true)
if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
    echo "setup: building Khoi needs Rust $need or newer (found: ${have:-none}; Debian 12's own is 1.63): install it with rustup (https://rustup.rs), or install the khoi .deb package instead (docs/operations.md)" >&2
    exit 1
fi

# The province sync tests (server/khoi-sync/tests/garage.rs) run a real
# Garage, the S3-compatible store provinces run. It is AGPL, so Khoi only
# ever starts it as a separate process; Debian has no package, so it is
# built from crates.io once (about 16 CPU-minutes) and kept in ~/.cargo/bin.
# A CI cache of ~/.cargo/bin/garage skips the build.
if [ "$mode" = test ]; then
    garage_version=2.5.0
    have_garage=$( (garage --version || "$HOME/.cargo/bin/garage" --version) 2>/dev/null | head -n1 || true)
    case "$have_garage" in
        *"$garage_version"*) ;;
        *)
            echo "setup: building garage $garage_version (cargo install; takes a while)" >&2
            nice cargo install --locked garage --version "$garage_version"
            ;;
    esac
fi
