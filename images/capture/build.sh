#!/bin/bash
# Build Khoi's capture environment: a Linux kernel and a busybox initramfs
# that copies a seat's local disk into a new image over iSCSI.
#
# `khoi seat capture NAME --image NEW` makes the seat's next network boot load
# these two files (served from <data>/capture/ by the boot HTTP server, only to
# the seat whose capture it is). The environment's /init (capture-init.sh):
#   - brings up the NIC iPXE booted from, with iPXE's address (so it reports
#     from the address that fetched the script: Khoi accepts nothing else);
#   - picks the local disk, finds its partitions, estimates what it will copy
#     (NTFS: used clusters, from ntfsresize --info; everything else: raw);
#   - reports the disk (`begin`) and gets the draft target's one-time login;
#   - logs in with iscsistart, copies the areas outside partitions raw (the
#     partition table, the boot code, the GPT backup), has the kernel read the
#     copied table, copies NTFS partitions with `ntfsclone --overwrite` (used
#     clusters only) and other partitions raw, reporting bytes and rate;
#   - reports `done`: Khoi refuses a hibernated or dirty NTFS volume (the image
#     gate's own detection, over the copy) or publishes version 1; the answer
#     is shown on the seat's screen, then the seat powers off.
#
# Like images/test-disk/build.sh: Debian packages fetched with apt-get
# download, no loop mounts, reproducible for a given set of packages.
#
# Usage: build.sh [OUTDIR]     (default: $WORK/out; install into <data>/capture)
# Env:   KHOI_CAPTURE_WORK  work folder (default ${TMPDIR:-/tmp}/khoi-capture)
#        KHOI_DEBS          .deb cache (default ${TMPDIR:-/tmp}/khoi-test-disk/debs,
#                           shared with the test disk)
#        FORCE=1            rebuild even when the stamp says it is current
# Writes OUTDIR/vmlinuz, OUTDIR/initrd.gz, OUTDIR/manifest.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORKDIR=${KHOI_CAPTURE_WORK:-${TMPDIR:-/tmp}/khoi-capture}
OUT=${1:-$WORKDIR/out}
DEBS=${KHOI_DEBS:-${TMPDIR:-/tmp}/khoi-test-disk/debs}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export TZ=UTC LC_ALL=C
for t in cpio gzip dpkg-deb depmod modprobe apt-get flock readelf; do
  command -v "$t" >/dev/null || { echo "missing tool: $t (./scripts/setup.sh test)" >&2; exit 1; }
done
mkdir -p "$DEBS" "$OUT"

exec 9>"$OUT/.lock"
flock 9
STAMP=$(cat "$0" "$HERE/capture-init.sh" | sha256sum | cut -c1-64)
if [ "${FORCE:-0}" != 1 ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.gz" ] &&
   [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "capture environment up to date: $OUT"
  exit 0
fi
WORK=$WORKDIR/build
rm -rf "$WORK"; mkdir -p "$WORK"

fetch() { # fetch <pkgname> -> path of the cached .deb
  local p=$1 f
  f=$(ls "$DEBS"/"${p}"_*.deb 2>/dev/null | head -1 || true)
  if [ -z "$f" ]; then
    (cd "$DEBS" && apt-get download "$p" >/dev/null 2>&1) || { echo "apt-get download $p failed" >&2; exit 1; }
    f=$(ls "$DEBS"/"${p}"_*.deb | head -1)
  fi
  echo "$f"
}
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}' || true; }
KPKG=$(kernel_pkg)
if [ -z "$KPKG" ] && ! ls "$DEBS"/linux-image-*-amd64_*.deb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -q >/dev/null; else sudo apt-get update -q >/dev/null; fi
  KPKG=$(kernel_pkg)
fi
[ -n "$KPKG" ] || KPKG=$(ls "$DEBS"/linux-image-*-amd64_*.deb | head -1 | xargs -n1 basename | cut -d_ -f1)
# ntfs-3g's library package is named after its soname, which changes between
# releases: ask apt which one ntfs-3g needs.
NTFSLIB=$(apt-cache depends ntfs-3g 2>/dev/null | awk '/Depends: libntfs-3g/{print $2; exit}' || true)
[ -n "$NTFSLIB" ] || NTFSLIB=$(ls "$DEBS"/libntfs-3g*_*.deb 2>/dev/null | head -1 | xargs -rn1 basename | cut -d_ -f1)
[ -n "$NTFSLIB" ] || { echo "cannot tell which libntfs-3g package ntfs-3g needs" >&2; exit 1; }
PKGS=("$KPKG" busybox-static open-iscsi libopeniscsiusr ntfs-3g "$NTFSLIB"
      libc6 libssl3 libkmod2 libzstd1 liblzma5)
X=$WORK/x
for p in "${PKGS[@]}"; do dpkg-deb -x "$(fetch "$p")" "$X"; done
KVER=$(ls "$X/lib/modules" | head -1)
VMLINUZ=$X/boot/vmlinuz-$KVER

R=$WORK/initramfs
mkdir -p "$R"/{bin,sbin,dev,proc,sys,run,tmp,etc/iscsi,var/lock/iscsi,lib/x86_64-linux-gnu,lib64,modules}
cp "$X/bin/busybox" "$R/bin/busybox"
BINS=("$X/sbin/iscsistart" "$X/usr/sbin/ntfsclone" "$X/usr/sbin/ntfsresize")
for b in "${BINS[@]}"; do
  [ -s "$b" ] || b=$(find "$X" -name "$(basename "$b")" -type f | head -1)
  [ -s "$b" ] || { echo "missing $(basename "$b") in the packages" >&2; exit 1; }
  cp "$b" "$R/sbin/"
done
# Every library the binaries need, found by soname in the packages and
# followed transitively (readelf: nothing is executed).
need_libs() { readelf -d "$1" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'; }
todo=("$R"/sbin/*)
seen=" "
while [ ${#todo[@]} -gt 0 ]; do
  f=${todo[0]}; todo=("${todo[@]:1}")
  for lib in $(need_libs "$f"); do
    case "$seen" in *" $lib "*) continue ;; esac
    seen="$seen$lib "
    src=$(find "$X" -name "$lib" \( -type f -o -type l \) | head -1)
    [ -n "$src" ] || { echo "library $lib (for $(basename "$f")) not in the packages" >&2; exit 1; }
    cp -L "$src" "$R/lib/x86_64-linux-gnu/$lib"
    todo+=("$R/lib/x86_64-linux-gnu/$lib")
  done
done
cp -L "$(find "$X" -name 'ld-linux-x86-64.so.2' | head -1)" "$R/lib64/ld-linux-x86-64.so.2"
ln -sf ../lib64/ld-linux-x86-64.so.2 "$R/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"

# Drivers: NICs common in offices and VMs, disk controllers, iSCSI. Missing
# ones (built in, or not in this kernel) are skipped.
depmod -b "$X" "$KVER"
: > "$R/modules/order"
for m in virtio_pci virtio_net virtio_blk virtio_scsi e1000 e1000e igb igc r8169 tg3 bnx2 atlantic \
         ahci ata_piix nvme sd_mod crc32c_generic iscsi_tcp; do
  modprobe -d "$X" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' | while read -r ko; do
    b=$(basename "$ko")
    grep -qx "$b" "$R/modules/order" && continue
    cp "$ko" "$R/modules/$b"
    echo "$b" >> "$R/modules/order"
  done
done
cp "$HERE/capture-init.sh" "$R/init"
echo "InitiatorName=iqn.2025-07.vn.khoi.initiator:capture" > "$R/etc/iscsi/initiatorname.iscsi"
chmod 755 "$R/init" "$R/bin/busybox" "$R"/sbin/*
for a in sh mkdir cat; do ln -s busybox "$R/bin/$a"; done
if [ "$(id -u)" = 0 ]; then mknod -m 600 "$R/dev/console" c 5 1; fi
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 --quiet) | gzip -n -9 > "$WORK/initrd.gz"
install -m 0644 "$VMLINUZ" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
install -m 0644 "$WORK/initrd.gz" "$OUT/initrd.gz.tmp" && mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
{
  echo "kernel=$KVER"
  for p in "${PKGS[@]}"; do echo "deb=$(basename "$(fetch "$p")")"; done
  echo "vmlinuz_sha256=$(sha256sum "$OUT/vmlinuz" | cut -c1-64)"
  echo "initrd_sha256=$(sha256sum "$OUT/initrd.gz" | cut -c1-64)"
} > "$OUT/manifest"
echo "$STAMP" > "$OUT/stamp"
rm -rf "$WORK"
cat "$OUT/manifest"
echo "install: cp $OUT/vmlinuz $OUT/initrd.gz <data>/capture/"
