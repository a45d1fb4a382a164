#!/bin/bash
# Manual check (root, qemu, ipxe-qemu, ovmf, ipxe): a real PXE client boots through Khoi as the
# segment's only DHCP server (authoritative mode) up to its iPXE script.
#   netns khoi-pxe-auth: bridge br0 10.78.0.1/24 <- tap1 <- qemu (SeaBIOS iPXE ROM or OVMF)
# Usage: tests/lab_authoritative.sh [bios|uefi]   (after `cargo build -p khoi-pxe --example pxe_lab`)
# Passes when the client's serial console shows the script's "Khoi: seat c1" line.
set -uo pipefail
FW=${1:-bios}
NS=khoi-pxe-auth
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${PXE_LAB_BIN:-$HERE/../../../target-pxe/debug/examples/pxe_lab}
[ -x "$BIN" ] || BIN=$HERE/../../../target/debug/examples/pxe_lab
[ "$(id -u)" = 0 ] || { echo "must run as root"; exit 2; }
[ -x "$BIN" ] || { echo "build the example first: cargo build -p khoi-pxe --example pxe_lab"; exit 2; }
WORK=$(mktemp -d /tmp/khoi-pxe-auth.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  ip netns list | grep -qw "^$NS" && ip netns del $NS
}
trap cleanup EXIT
ip netns list | grep -qw "^$NS" && ip netns del $NS
ip netns add $NS
ip -n $NS link set lo up
ip netns exec $NS sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n $NS link add br0 type bridge forward_delay 0 stp_state 0
ip -n $NS addr add 10.78.0.1/24 dev br0
ip -n $NS link set br0 up
ip -n $NS tuntap add dev tap1 mode tap
ip -n $NS link set tap1 master br0 up
mkdir -p "$WORK/tftp"
cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi "$WORK/tftp/"
ip netns exec $NS env LAB_IF=br0 LAB_IP=10.78.0.1 TFTP_ROOT="$WORK/tftp" IQN=iqn.2025-07.vn.khoi:lab \
  KHOI_PXE_MODE=authoritative RUST_LOG=info "$BIN" >"$WORK/khoi.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 50); do ip netns exec $NS ss -Hlun | grep -q ':67 ' && break; sleep 0.1; done
MAC=52:54:00:77:00:01
if [ "$FW" = bios ]; then
  FWOPT=(-machine pc -boot n -device virtio-net-pci,netdev=n0,mac=$MAC)
else
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
  FWOPT=(-machine q35 -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
         -drive if=pflash,format=raw,unit=1,file="$WORK/vars.fd"
         -device virtio-net-pci,netdev=n0,mac=$MAC,romfile=,bootindex=1)
fi
ip netns exec $NS qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -monitor none \
  -serial file:"$WORK/serial.log" -no-reboot -netdev tap,id=n0,ifname=tap1,script=no,downscript=no \
  "${FWOPT[@]}" >"$WORK/qemu.out" 2>&1 &
PIDS+=($!)
for i in $(seq 1 ${TIMEOUT:-120}); do
  grep -aq "Khoi: seat c1" "$WORK/serial.log" 2>/dev/null && break
  sleep 1
done
grep -a "LAB:\|DHCP" "$WORK/khoi.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200
if grep -aq "Khoi: seat c1" "$WORK/serial.log"; then
  echo "PASS ($FW, authoritative): $(grep -a -m1 'Khoi: seat c1' "$WORK/serial.log")"; exit 0
fi
echo "FAIL ($FW): last lines of the serial console:"; tail -20 "$WORK/serial.log"; exit 1
