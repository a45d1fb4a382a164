#!/usr/bin/env bash
# Build khoi_<version>_amd64.deb from a staged tree with dpkg-deb (no extra
# build tools). Usage:
#   scripts/package.sh [--binary PATH] [--out DIR]
# Without --binary the release binary is built first. The package test
# passes the debug binary it already has, so the suite does not pay for a
# release build; the package layout is the same.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="target/package"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "package.sh: unknown argument $1 (use --binary PATH, --out DIR)" >&2; exit 2 ;;
    esac
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }

if [ -z "$binary" ]; then
    cargo build --release --bin khoi
    binary="${CARGO_TARGET_DIR:-target}/release/khoi"
fi
[ -x "$binary" ] || { echo "package.sh: $binary is not an executable" >&2; exit 1; }

mkdir -p "$out"
stage=$(mktemp -d "$out/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/etc/khoi" \
    "$stage/lib/systemd/system" "$stage/usr/share/doc/khoi"
install -m 0755 "$binary" "$stage/usr/bin/khoi"
# The web pages, styles and translations are compiled into the binary.
# The packaged config is the example with the data in /var/lib/khoi.
sed -E 's#(^|[ =:])var/khoi#\1/var/lib/khoi#g' config/khoi.example.yaml >"$stage/etc/khoi/khoi.yaml"
chmod 0644 "$stage/etc/khoi/khoi.yaml"
install -m 0644 config/khoi.service "$stage/lib/systemd/system/khoi.service"
install -m 0644 docs/operations.md "$stage/usr/share/doc/khoi/operations.md"
install -m 0644 README.md "$stage/usr/share/doc/khoi/README.md"
printf 'Khoi diskless boot server\nLicense: Apache-2.0\n' >"$stage/usr/share/doc/khoi/copyright"
chmod 0644 "$stage/usr/share/doc/khoi/copyright"

for s in postinst prerm postrm; do
    install -m 0755 "debian/$s" "$stage/DEBIAN/$s"
done
echo /etc/khoi/khoi.yaml >"$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: khoi
Version: $version
Architecture: amd64
Maintainer: Khoi maintainers <khoi@localhost>
Installed-Size: $size
Depends: qemu-utils, ipxe, libssl3, adduser, libc6, fonts-dejavu-core, fonts-noto-mono, ntfs-3g, libnbd-bin, libhivex-bin, libwin-hivex-perl, sqlite3
Section: net
Priority: optional
Description: diskless boot server for rooms of Windows workstations
 Seats boot immutable golden image versions over iSCSI, write into their own
 copy-on-write overlays and are clean again after a reset. Includes PXE
 (DHCP/proxyDHCP, TFTP, iPXE scripts), an admin web page and NBD access.
CONTROL
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"

deb="$out/khoi_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
