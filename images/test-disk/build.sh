#!/bin/bash
# Build the diskless end-to-end test disk: a tiny raw disk (MBR + FAT16) that
# boots under SeaBIOS (syslinux) and UEFI (systemd-boot) through iPXE's
# `sanboot`, then proves from inside the booted Linux that it reached Khoi's
# iSCSI target read-write:
#
#   /init logs in again with iscsistart from the iBFT iPXE left behind (the
#   way a real diskless Linux continues after the firmware), mounts the FAT
#   partition read-write and prints
#     KHOI-PERSIST-FOUND   a marker from an earlier boot is still there
#     KHOI-PERSIST-ABSENT  it is not (fresh disk or overlay reset)
#     KHOI-PERSIST-ERROR <why>
#   then writes the marker, syncs, prints `DISKLESS-E2E-OK <sha256(payload)>`
#   and powers off.
#
# Adapted from shared/e2e/build_disk.sh: no loop mounts, reproducible bit for
# bit (fixed SOURCE_DATE_EPOCH, sorted cpio, gzip -n, mkfs.fat --invariant)
# for a given set of downloaded Debian packages.
#
# Usage: build.sh [OUTDIR]
# Env:   KHOI_TEST_DISK_WORK  cache folder (default ${TMPDIR:-/tmp}/khoi-test-disk):
#                             debs/ (apt-get download cache), out/ (default OUTDIR)
#        PAYLOAD_MB           incompressible payload in the initramfs (default 4)
#        FORCE=1              rebuild even when the stamp says the disk is current
# Writes OUTDIR/disk.img, disk.marker (the expected marker line), disk.manifest.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORKDIR=${KHOI_TEST_DISK_WORK:-${TMPDIR:-/tmp}/khoi-test-disk}
OUT=${1:-$WORKDIR/out}
PAYLOAD_MB=${PAYLOAD_MB:-4}
DEBS=$WORKDIR/debs
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export TZ=UTC LC_ALL=C
for t in mcopy mmd syslinux mkfs.fat sfdisk cpio gzip dpkg-deb python3 depmod modprobe apt-get flock; do
  command -v "$t" >/dev/null || { echo "missing tool: $t (./scripts/setup.sh test)" >&2; exit 1; }
done
mkdir -p "$DEBS" "$OUT"

# Several tests may ask for the disk at once: one builds, the others wait.
exec 9>"$OUT/.lock"
flock 9
STAMP=$( { cat "$0"; echo "payload=$PAYLOAD_MB"; } | sha256sum | cut -c1-64)
if [ "${FORCE:-0}" != 1 ] && [ -s "$OUT/disk.img" ] && [ -s "$OUT/disk.marker" ] &&
   [ "$(cat "$OUT/disk.stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "test disk up to date: $OUT/disk.img"
  exit 0
fi
WORK=$OUT/build
rm -rf "$WORK"; mkdir -p "$WORK"

# ---- 1. Debian packages (ordinary apt client, cached in debs/) -------------
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
# A fresh container often has no package lists at all.
if [ -z "$KPKG" ] && ! ls "$DEBS"/linux-image-*-amd64_*.deb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -q >/dev/null; else sudo apt-get update -q >/dev/null; fi
  KPKG=$(kernel_pkg)
fi
[ -n "$KPKG" ] || KPKG=$(ls "$DEBS"/linux-image-*-amd64_*.deb | head -1 | xargs -n1 basename | cut -d_ -f1)
# iscsistart and the libraries it links (libc, libcrypto, libkmod and theirs).
PKGS=("$KPKG" busybox-static systemd-boot-efi syslinux-common open-iscsi libopeniscsiusr
      libc6 libssl3 libkmod2 libzstd1 liblzma5)
X=$WORK/x
for p in "${PKGS[@]}"; do dpkg-deb -x "$(fetch "$p")" "$X"; done
KVER=$(ls "$X/lib/modules" | head -1)
VMLINUZ=$X/boot/vmlinuz-$KVER
BUSYBOX=$X/bin/busybox
SDBOOT=$X/usr/lib/systemd/boot/efi/systemd-bootx64.efi
MBRBIN=$X/usr/lib/syslinux/mbr/mbr.bin
ISCSISTART=$X/sbin/iscsistart
for f in "$VMLINUZ" "$BUSYBOX" "$SDBOOT" "$MBRBIN" "$ISCSISTART"; do [ -s "$f" ] || { echo "missing $f" >&2; exit 1; }; done

# ---- 2. initramfs -----------------------------------------------------------
R=$WORK/initramfs
mkdir -p "$R"/{bin,sbin,dev,proc,sys,run,mnt,etc/iscsi,var/lock/iscsi,lib/x86_64-linux-gnu,lib64,modules}
cp "$BUSYBOX" "$R/bin/busybox"
cp "$ISCSISTART" "$R/sbin/iscsistart"
# Libraries by name, following symlinks: the .deb paths differ (/lib vs /usr/lib).
for lib in libc.so.6 libcrypto.so.3 libkmod.so.2 libopeniscsiusr.so.0.2.0 libzstd.so.1 liblzma.so.5; do
  src=$(find "$X" -name "$lib" \( -type f -o -type l \) | head -1)
  [ -n "$src" ] || { echo "library $lib not found in the packages" >&2; exit 1; }
  cp -L "$src" "$R/lib/x86_64-linux-gnu/$lib"
done
cp -L "$(find "$X" -name 'ld-linux-x86-64.so.2' | head -1)" "$R/lib64/ld-linux-x86-64.so.2"
ln -s ../lib64/ld-linux-x86-64.so.2 "$R/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
# Modules in load order (dependencies first), resolved by the host's kmod.
depmod -b "$X" "$KVER"
: > "$R/modules/order"
for m in virtio_pci virtio_net iscsi_ibft crc32c_generic iscsi_tcp sd_mod vfat nls_cp437 nls_ascii; do
  modprobe -d "$X" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}' | while read -r ko; do
    b=$(basename "$ko")
    grep -qx "$b" "$R/modules/order" && continue
    cp "$ko" "$R/modules/$b"
    echo "$b" >> "$R/modules/order"
  done
done
python3 - "$R/payload.bin" "$PAYLOAD_MB" <<'EOF'
import hashlib, sys
out, mb = sys.argv[1], int(sys.argv[2])
with open(out, 'wb') as f:
    for i in range(mb * 1024 * 1024 // 32):
        f.write(hashlib.sha256(b'diskless-e2e-%d' % i).digest())
EOF
PAYLOAD_SHA=$(sha256sum "$R/payload.bin" | cut -c1-64)
echo "InitiatorName=iqn.2024-01.lab.e2e:placeholder" > "$R/etc/iscsi/initiatorname.iscsi"
cat > "$R/init" <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t devtmpfs devtmpfs /dev 2>/dev/null
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
exec </dev/console >/dev/ttyS0 2>&1
echo "E2E-INIT: running /init (uptime $($B cut -d' ' -f1 /proc/uptime)s)"
H=$($B sha256sum /payload.bin | $B cut -c1-64)
echo "E2E-INIT: payload bytes=$($B stat -c %s /payload.bin)"
for m in $($B cat /modules/order); do $B insmod /modules/$m 2>/dev/null; done
persist() {
  [ -d /sys/firmware/ibft/target0 ] || { echo "no iBFT (not booted by iPXE sanboot?)"; return 1; }
  echo "E2E-INIT: iBFT target $($B cat /sys/firmware/ibft/target0/target-name) initiator $($B cat /sys/firmware/ibft/initiator/initiator-name)"
  $B ip link set lo up
  iscsistart -N >/tmp/iscsistart-net.log 2>&1 || { $B cat /tmp/iscsistart-net.log; echo "iscsistart -N failed"; return 1; }
  iscsistart -b >/tmp/iscsistart.log 2>&1 || { $B tail -n 5 /tmp/iscsistart.log; echo "iscsistart -b failed"; return 1; }
  i=0
  while [ ! -b /dev/sda1 ]; do
    i=$((i + 1)); [ $i -gt 100 ] && { echo "no /dev/sda1 after login"; return 1; }
    $B sleep 0.1
  done
  $B mount -t vfat -o rw /dev/sda1 /mnt || { echo "mount /dev/sda1 failed"; return 1; }
  if [ -f /mnt/KHOIMARK.TXT ]; then
    echo "KHOI-PERSIST-FOUND $($B cat /mnt/KHOIMARK.TXT)"
  else
    echo "KHOI-PERSIST-ABSENT"
  fi
  echo "written at uptime $($B cut -d' ' -f1 /proc/uptime)" > /mnt/KHOIMARK.TXT
  $B sync
  $B umount /mnt || { echo "umount failed"; return 1; }
  $B sync
}
mkdir -p /tmp
$B mount -t tmpfs tmpfs /tmp
if out=$(persist 2>&1); then
  echo "$out"
else
  echo "KHOI-PERSIST-ERROR $(echo "$out" | $B tail -n 8 | $B tr '\n' ' ')"
fi
echo "DISKLESS-E2E-OK $H"
$B sync
$B poweroff -f
EOF
chmod 755 "$R/init" "$R/bin/busybox" "$R/sbin/iscsistart"
for a in sh mkdir cat; do ln -s busybox "$R/bin/$a"; done
if [ "$(id -u)" = 0 ]; then mknod -m 600 "$R/dev/console" c 5 1; mknod -m 666 "$R/dev/ttyS0" c 4 64; fi
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 --quiet) | gzip -n -9 > "$WORK/initrd.gz"

# ---- 3. FAT partition image (a plain file, no loop device) -------------------
CMDLINE="console=ttyS0,115200 panic=-1 loglevel=4"
cat > "$WORK/syslinux.cfg" <<EOF
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT e2e
LABEL e2e
  SAY E2E-SYSLINUX: loading /vmlinuz and /initrd.gz via INT13
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND $CMDLINE
EOF
printf 'timeout 0\ndefault e2e.conf\nconsole-mode keep\n' > "$WORK/loader.conf"
printf 'title diskless-e2e\nlinux /vmlinuz\ninitrd /initrd.gz\noptions %s\n' "$CMDLINE" > "$WORK/e2e.conf"
cp "$VMLINUZ" "$WORK/vmlinuz"
cp "$SDBOOT" "$WORK/BOOTX64.EFI"
for f in syslinux.cfg loader.conf e2e.conf vmlinuz BOOTX64.EFI initrd.gz; do touch -d "@$SOURCE_DATE_EPOCH" "$WORK/$f"; done

PSTART=2048
NEED_KB=$(( ( $(stat -c %s "$WORK/vmlinuz") + $(stat -c %s "$WORK/initrd.gz") + $(stat -c %s "$WORK/BOOTX64.EFI") ) / 1024 ))
PART_MB=$(( (NEED_KB / 1024) + 6 ))
[ $PART_MB -lt 16 ] && PART_MB=16
PART=$WORK/part.img
rm -f "$PART"
mkfs.fat --invariant -F 16 -h $PSTART -i 4E2E0001 -n E2EDISK -C "$PART" $(( PART_MB * 1024 )) >/dev/null
export MTOOLS_SKIP_CHECK=1 MTOOLS_NO_VFAT=1
mmd -i "$PART" ::/syslinux ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -m -i "$PART" "$WORK/syslinux.cfg" ::/syslinux/syslinux.cfg
mcopy -m -i "$PART" "$WORK/vmlinuz" ::/vmlinuz
mcopy -m -i "$PART" "$WORK/initrd.gz" ::/initrd.gz
mcopy -m -i "$PART" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -m -i "$PART" "$WORK/loader.conf" ::/loader/loader.conf
mcopy -m -i "$PART" "$WORK/e2e.conf" ::/loader/entries/e2e.conf
syslinux --install --directory /syslinux "$PART"

# ---- 4. whole disk: MBR + partition ------------------------------------------
DISK=$OUT/disk.img
rm -f "$DISK"
truncate -s $(( PSTART * 512 )) "$DISK"
cat "$PART" >> "$DISK"
printf 'label: dos\nlabel-id: 0x4e2e0001\nunit: sectors\n\nstart=%d, size=%d, type=e, bootable\n' \
  $PSTART $(( PART_MB * 2048 )) | sfdisk --no-reread --no-tell-kernel -q "$DISK"
dd if="$MBRBIN" of="$DISK" bs=440 count=1 conv=notrunc status=none
EXPECT="DISKLESS-E2E-OK $PAYLOAD_SHA"
echo "$EXPECT" > "$OUT/disk.marker"
{
  echo "kernel=$KVER"
  for p in "${PKGS[@]}"; do echo "deb=$(basename "$(fetch "$p")")"; done
  echo "vmlinuz_bytes=$(stat -c %s "$WORK/vmlinuz")"
  echo "initrd_bytes=$(stat -c %s "$WORK/initrd.gz")"
  echo "payload_mb=$PAYLOAD_MB"
  echo "disk_bytes=$(stat -c %s "$DISK")"
  echo "disk_sha256=$(sha256sum "$DISK" | cut -c1-64)"
  echo "expect=$EXPECT"
} > "$OUT/disk.manifest"
echo "$STAMP" > "$OUT/disk.stamp"
rm -rf "$WORK"
cat "$OUT/disk.manifest"
