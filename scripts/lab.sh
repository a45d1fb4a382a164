#!/usr/bin/env bash
# A newcomer's demo: one virtual seat boots diskless from Khoi, end to end.
#
#   netns khoi-lab-<pid>   bridge br0 10.77.0.1  <- khoi serve (DHCP, TFTP, iPXE scripts, iSCSI)
#                                                <- tap1 <- qemu seat (SeaBIOS + iPXE ROM, or OVMF)
#   netns khoi-lab-<pid>-r (with -m proxy) a plain site DHCP server, as on a real LAN
#
# The test disk (images/test-disk) is a tiny Linux that prints DISKLESS-E2E-OK and powers off;
# Khoi's progress (DHCP, TFTP, boot script, iSCSI login) and the seat's serial console are shown
# as they happen. Everything is deleted on exit or Ctrl-C. Needs root; nothing leaves the
# namespaces.
#
# Usage: sudo ./scripts/lab.sh [-f bios|uefi] [-m authoritative|proxy] [-p on-boot|persistent]
#                              [-b N] [-t TIMEOUT_S] [-k]
#   -f  firmware (default bios)          -m  Khoi's DHCP mode (default authoritative)
#   -p  the seat's reset policy          -b  boot the seat N times in a row (default 1), to see
#                                            the reset policy at work (KHOI-PERSIST-... lines)
#   -k  keep the lab running afterwards (Ctrl-C ends it)
# Env: KHOI_TEST_DISK_WORK (disk cache), CARGO_TARGET_DIR, KHOI_BIN (skip the build)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FW=bios MODE=authoritative POLICY=on-boot BOOTS=1 TIMEOUT=300 KEEP=0
while getopts "f:m:p:b:t:kh" o; do
  case $o in
    f) FW=$OPTARG;; m) MODE=$OPTARG;; p) POLICY=$OPTARG;; b) BOOTS=$OPTARG;;
    t) TIMEOUT=$OPTARG;; k) KEEP=1;;
    *) sed -n '2,20p' "$0"; exit 2;;
  esac
done
case $FW in bios|uefi) ;; *) echo "-f bios|uefi"; exit 2;; esac
case $MODE in authoritative|proxy) ;; *) echo "-m authoritative|proxy"; exit 2;; esac
[ "$(id -u)" = 0 ] || { echo "must run as root (network namespaces, taps): sudo $0 $*"; exit 2; }

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' C=$'\e[36m' Y=$'\e[33m' R=$'\e[31m' N=$'\e[0m'; else B= G= C= Y= R= N=; fi
T0=$EPOCHREALTIME
say() { printf '%s[lab %6.1fs]%s %s\n' "$B" "$(echo "$EPOCHREALTIME - $T0" | bc)" "$N" "$*"; }

NS=khoi-lab-$$ NSR=khoi-lab-$$-r
LAB_IP=10.77.0.1 RTR_IP=10.77.0.254
MAC=52:54:00:77:10:01
WORK=$(mktemp -d /tmp/khoi-lab.XXXXXX)
PIDS=()
CLEANED=0
cleanup() {
  [ $CLEANED = 1 ] && return; CLEANED=1
  local p i
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    p=${PIDS[$i]}
    kill "$p" 2>/dev/null || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null
  done
  for ns in $NSR $NS; do
    if [ -e "/run/netns/$ns" ]; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
      ip netns del "$ns"
    fi
  done
  rm -rf "$WORK"
  say "cleaned up (namespaces $NS${MODE:+ }$([ "$MODE" = proxy ] && echo "$NSR") removed)"
}
trap cleanup EXIT
trap 'echo; exit 130' INT TERM

# ---- 1. the test disk and khoi ------------------------------------------------
./scripts/setup.sh test >/dev/null || exit 1
say "building the test disk (cached after the first time)"
./images/test-disk/build.sh >"$WORK/disk-build.log" 2>&1 || { cat "$WORK/disk-build.log"; exit 1; }
DISK_DIR=${KHOI_TEST_DISK_WORK:-${TMPDIR:-/tmp}/khoi-test-disk}/out
EXPECT=$(cat "$DISK_DIR/disk.marker")
if [ -z "${KHOI_BIN:-}" ]; then
  say "building khoi (cargo build -p khoi)"
  cargo build -q -p khoi || exit 1
  KHOI_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/khoi
fi

# ---- 2. the network: a bridge in a namespace ------------------------------------
ip netns add $NS || exit 1
ip -n $NS link set lo up
ip -n $NS link add br0 type bridge forward_delay 0 stp_state 0
ip -n $NS addr add $LAB_IP/24 dev br0
# iPXE waits ~13 s for IPv6 autoconfiguration when no router advertises; a
# router-advertisement-only dnsmasq spares the demo that pause.
ip -n $NS addr add fd77::1/64 dev br0 nodad
ip -n $NS link set br0 up
ip -n $NS tuntap add dev tap1 mode tap
ip -n $NS link set tap1 master br0 up
if [ "$MODE" = proxy ]; then
  ip netns add $NSR || exit 1
  ip -n $NSR link set lo up
  ip -n $NS link add rtr0 type veth peer name rtr0-br
  ip -n $NS link set rtr0 netns $NSR
  ip -n $NS link set rtr0-br master br0 up
  ip -n $NSR addr add $RTR_IP/24 dev rtr0
  ip -n $NSR link set rtr0 up
  ip netns exec $NSR dnsmasq -k --conf-file=/dev/null --port=0 --interface=rtr0 --bind-interfaces \
    --user=root --group=root --dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h \
    --dhcp-option=option:router,$RTR_IP --dhcp-authoritative --no-ping \
    --dhcp-leasefile="$WORK/rtr.leases" >"$WORK/router.log" 2>&1 &
  PIDS+=($!)
  say "site router in $NSR: plain DHCP (no PXE options) on $RTR_IP"
fi
ip netns exec $NS dnsmasq -k --conf-file=/dev/null --port=0 --interface=br0 --bind-interfaces \
  --user=root --group=root --enable-ra --dhcp-range=::,constructor:br0,ra-only >"$WORK/ra.log" 2>&1 &
PIDS+=($!)
say "namespace $NS: br0 $LAB_IP/24, tap1 for the seat"

# ---- 3. khoi ------------------------------------------------------------------------
cat > "$WORK/khoi.yaml" <<EOF
data_dir: $WORK/data
listen:
  nbd: null
  iscsi: $LAB_IP:3260
pxe:
  mode: $MODE
  interface: br0
  server_ip: $LAB_IP
  http_port: 8077
  tftp_root: $WORK/tftp
  pool: { start: 10.77.0.100, end: 10.77.0.199 }
  subnet_mask: 255.255.255.0
EOF
KHOI=("$KHOI_BIN" --config "$WORK/khoi.yaml")
ip netns exec $NS env KHOI_LOG=info,khoi_pxe=debug "$KHOI_BIN" serve --config "$WORK/khoi.yaml" \
  >"$WORK/khoi.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do "${KHOI[@]}" image list >/dev/null 2>&1 && break; sleep 0.2; done
"${KHOI[@]}" image list >/dev/null 2>&1 || { say "${R}khoi did not start$N"; tail -20 "$WORK/khoi.log"; exit 1; }
say "khoi serve is up in $NS ($MODE DHCP on br0, iSCSI on $LAB_IP:3260); log: $WORK/khoi.log"
"${KHOI[@]}" image import demo "$DISK_DIR/disk.img" --note "test disk" >/dev/null || exit 1
say "khoi image import demo $DISK_DIR/disk.img"
"${KHOI[@]}" seat add pc01 --mac $MAC --image demo --policy "$POLICY" >/dev/null || exit 1
say "khoi seat add pc01 --mac $MAC --image demo --policy $POLICY"

# Khoi's side of the story, as it happens: DHCP, TFTP, the script fetch
# (the seat's "I am booting" signal), resets and iSCSI logins.
KHOI_PID=${PIDS[-1]}
tail --pid="$KHOI_PID" -n +1 -F "$WORK/khoi.log" 2>/dev/null | sed -u -e 's/\x1b\[[0-9;]*m//g' |
  grep --line-buffered -E 'DHCP|TFTP|seat booting|seat\.|iscsi\.|unregistered|reset' |
  sed -u -E -e 's/^[0-9T:.-]+Z +//' -e "s/^/${C}  khoi | ${N}/" &
PIDS+=($!)

# ---- 4. the seat ------------------------------------------------------------------
boot() { # boot N -> 0 when the marker appeared
  local n=$1 ser="$WORK/serial-$1.log" fwopt
  : > "$ser"
  if [ "$FW" = bios ]; then
    fwopt=(-machine pc -boot n -device virtio-net-pci,netdev=n0,mac=$MAC)
  else
    [ -f "$WORK/vars.fd" ] || cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
    fwopt=(-machine q35 -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
           -drive if=pflash,format=raw,unit=1,file="$WORK/vars.fd"
           -device virtio-net-pci,netdev=n0,mac=$MAC,romfile=,bootindex=1)
  fi
  say "${B}power on${N} seat pc01 (boot $n of $BOOTS, $FW firmware, TCG: 15-40 s)"
  ip netns exec $NS qemu-system-x86_64 -name pc01 -accel tcg -m 512 -smp 1 -nographic -monitor none \
    -serial file:"$ser" -no-reboot -netdev tap,id=n0,ifname=tap1,script=no,downscript=no \
    "${fwopt[@]}" >"$WORK/qemu.log" 2>&1 &
  local q=$!
  PIDS+=($q)
  tail --pid=$q -n +1 -F "$ser" 2>/dev/null | sed -u -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\r/\n/g' |
    grep --line-buffered -v '^\s*$' | sed -u "s/^/${Y}  seat | ${N}/" &
  local t=$!
  PIDS+=($t)
  local deadline=$((SECONDS + TIMEOUT)) rc=1
  while [ $SECONDS -lt $deadline ]; do
    if grep -aq "$EXPECT" "$ser"; then rc=0; break; fi
    kill -0 $q 2>/dev/null || break
    sleep 0.3
  done
  for _ in $(seq 1 50); do kill -0 $q 2>/dev/null || break; sleep 0.2; done
  kill $q 2>/dev/null
  sleep 0.5
  kill $t 2>/dev/null
  if [ $rc = 0 ]; then
    say "${G}boot $n: the seat printed $(cut -c1-40 <<<"$EXPECT")... from Khoi's iSCSI disk$N"
    grep -ao 'KHOI-PERSIST-[A-Z]*' "$ser" | head -1 | sed "s/^/       the disk's marker file: /"
  else
    say "${R}boot $n: no marker within ${TIMEOUT}s$N"
  fi
  return $rc
}
RC=0
for n in $(seq 1 "$BOOTS"); do boot "$n" || { RC=1; break; }; done
say "events: $("${KHOI[@]}" events --limit 20 | wc -l) recorded; the last few:"
"${KHOI[@]}" events --limit 8 | sed 's/^/       /'
if [ $KEEP = 1 ]; then
  say "lab kept running (-k); khoi CLI: ${KHOI[*]} ...; Ctrl-C to clean up"
  while :; do sleep 3600; done
fi
exit $RC
