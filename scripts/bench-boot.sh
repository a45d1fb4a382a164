#!/usr/bin/env bash
# Boot benchmark (not a test): Khoi against the stock peers (dnsmasq + tgt), in the same run, on
# the same namespace lab, with the same test disk and the same qemu seats.
#
#   1. power-on -> DISKLESS-E2E-OK for 1, 2 and 4 BIOS seats booting at once
#      (SeaBIOS + iPXE ROM, TCG). Khoi: authoritative DHCP + per-seat script over HTTP + its own
#      iSCSI target on a per-seat overlay. Peers: dnsmasq authoritative DHCP (--no-ping, its fastest)
#      + TFTP script + tgtd, one target per seat on its own copy of the disk (the test disk writes).
#   2. DHCP DISCOVER -> OFFER latency (a raw client in its own namespace, registered MAC).
#   3. TFTP transfer of ipxe.efi, blksize 1468, windowsize 16 requested (dnsmasq ignores
#      windowsize, so it answers lock-step: that is the comparison the windowsize is for).
#   For the 1-seat boot, also when each phase shows on the seat's console (DHCP done, script
#   loaded, iSCSI login done, kernel's /init, marker), to see where the time goes.
# Stock dnsmasq leaves iPXE waiting ~3 s for ProxyDHCP offers after its DHCP offer; Khoi tells
# iPXE to skip that wait (175.176 = 1). dnsmasq could send the same option
# (--dhcp-option=encap:175,176,1b); the lab as given does not, so the table shows what each does
# out of the box.
# Prints a table with Khoi/peers ratios (< 1: Khoi is faster).
#
# Usage: sudo ./scripts/bench-boot.sh [-s "1 2 4"] [-r DHCP_ROUNDS (1000)] [-t TFTP_ROUNDS (20)]
# Env: KHOI_BIN (default: cargo build --release -p khoi), KHOI_TEST_DISK_WORK, CARGO_TARGET_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SEATS_LIST="1 2 4" DHCP_ROUNDS=1000 TFTP_ROUNDS=20
while getopts "s:r:t:h" o; do
  case $o in
    s) SEATS_LIST=$OPTARG;; r) DHCP_ROUNDS=$OPTARG;; t) TFTP_ROUNDS=$OPTARG;;
    *) sed -n '2,17p' "$0"; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "must run as root (network namespaces, taps)"; exit 2; }
for t in tgtd tgtadm dnsmasq qemu-system-x86_64 python3 bc; do
  command -v $t >/dev/null || { echo "missing $t: ./scripts/setup.sh test"; exit 2; }
done

NS=khoi-bench-$$ NSC=khoi-bench-$$-c
LAB_IP=10.77.0.1 CLIENT_IP=10.77.0.250
TGT_CTL=$(( 300 + $$ % 100 ))
WORK=$(mktemp -d /tmp/khoi-bench-boot.XXXXXX)
PIDS=()
stop_pid() {
  local p=$1 i
  kill "$p" 2>/dev/null || return 0
  for i in $(seq 1 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$p" 2>/dev/null
  # Reap here, quietly: tgtd ignores SIGTERM and bash would report the SIGKILL.
  wait "$p" 2>/dev/null
}
stop_all() {
  local i
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do stop_pid "${PIDS[$i]}"; done
  PIDS=()
}
del_ns() {
  local ns=$1 p
  [ -e "/run/netns/$ns" ] || return 0
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  sleep 0.2
  ip netns del "$ns"
}
cleanup() {
  stop_all
  del_ns $NSC; del_ns $NS
  rm -f /var/run/tgtd/socket.$TGT_CTL /var/run/tgtd/socket.$TGT_CTL.lock
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[bench] $*" >&2; }

./images/test-disk/build.sh >"$WORK/disk.log" 2>&1 || { cat "$WORK/disk.log"; exit 1; }
DISK_DIR=${KHOI_TEST_DISK_WORK:-${TMPDIR:-/tmp}/khoi-test-disk}/out
DISK=$DISK_DIR/disk.img
EXPECT=$(cat "$DISK_DIR/disk.marker")
if [ -z "${KHOI_BIN:-}" ]; then
  log "building khoi (release)"
  cargo build --release -q -p khoi || exit 1
  KHOI_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/khoi
fi

# A fresh lab per run: bridge + RA-only dnsmasq (iPXE would otherwise wait ~13 s for IPv6 on
# both sides alike) + a client namespace on a veth for the protocol probes.
lab_up() {
  del_ns $NSC; del_ns $NS
  ip netns add $NS && ip netns add $NSC || exit 1
  ip -n $NS link set lo up; ip -n $NSC link set lo up
  ip -n $NS link add br0 type bridge forward_delay 0 stp_state 0
  ip -n $NS addr add $LAB_IP/24 dev br0
  ip -n $NS addr add fd77::1/64 dev br0 nodad
  ip -n $NS link set br0 up
  ip -n $NS link add cli0 type veth peer name cli0-br
  ip -n $NS link set cli0 netns $NSC
  ip -n $NS link set cli0-br master br0 up
  ip -n $NSC addr add $CLIENT_IP/24 dev cli0
  ip -n $NSC link set cli0 address 52:54:00:78:ff:01
  ip -n $NSC link set cli0 up
  ip netns exec $NSC sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  ip netns exec $NS dnsmasq -k --conf-file=/dev/null --port=0 --interface=br0 --bind-interfaces \
    --user=root --group=root --enable-ra --dhcp-range=::,constructor:br0,ra-only >"$WORK/ra.log" 2>&1 &
  PIDS+=($!)
}
lab_down() {
  stop_all; del_ns $NSC; del_ns $NS; rm -f /var/run/tgtd/socket.$TGT_CTL /var/run/tgtd/socket.$TGT_CTL.lock; }
mac_of() { printf '52:54:00:78:00:%02x' "$1"; }
wait_udp() { # wait_udp PORT
  local i
  for i in $(seq 1 100); do ip netns exec $NS ss -Hlun | grep -q ":$1 " && return 0; sleep 0.1; done
  echo "nothing on udp/$1" >&2; return 1
}

start_khoi() { # start_khoi NSEATS
  local d=$WORK/khoi i
  rm -rf "$d"; mkdir -p "$d"
  cat > "$d/khoi.yaml" <<EOF
data_dir: $d/data
listen:
  nbd: null
  iscsi: $LAB_IP:3260
pxe:
  mode: authoritative
  interface: br0
  server_ip: $LAB_IP
  http_port: 8077
  tftp_root: $d/tftp
  pool: { start: 10.77.0.100, end: 10.77.0.199 }
  subnet_mask: 255.255.255.0
EOF
  ip netns exec $NS env KHOI_LOG=warn "$KHOI_BIN" serve --config "$d/khoi.yaml" >"$d/khoi.log" 2>&1 &
  PIDS+=($!); SERVER_PIDS=($!)
  K=("$KHOI_BIN" --config "$d/khoi.yaml")
  for i in $(seq 1 100); do "${K[@]}" image list >/dev/null 2>&1 && break; sleep 0.1; done
  "${K[@]}" image import bench "$DISK" >/dev/null || exit 1
  for i in $(seq 1 "$1"); do "${K[@]}" seat add "s$i" --mac "$(mac_of "$i")" --image bench >/dev/null || exit 1; done
  "${K[@]}" seat add probe --mac 52:54:00:78:ff:01 --image bench >/dev/null || exit 1
  wait_udp 67
}

start_peers() { # start_peers NSEATS
  local d=$WORK/peers i iqn
  rm -rf "$d"; mkdir -p "$d/tftp"
  cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi "$d/tftp/"
  cp -L /usr/lib/ipxe/ipxe.efi "$d/tftp/"
  # One script for all seats: the target is named after the seat's MAC.
  cat > "$d/tftp/boot.ipxe" <<'EOF'
#!ipxe
set initiator-iqn iqn.2024-01.bench:client-${net0/mac:hexhyp}
sanboot iscsi:10.77.0.1:::1:iqn.2024-01.bench:${net0/mac:hexhyp} || shell
EOF
  ip netns exec $NS dnsmasq -k --conf-file=/dev/null --port=0 --interface=br0 --bind-interfaces \
    --user=root --group=root --dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h \
    --dhcp-authoritative --no-ping --dhcp-leasefile="$d/leases" \
    --enable-tftp --tftp-root="$d/tftp" --dhcp-match=set:ipxe,175 \
    --dhcp-boot=tag:ipxe,boot.ipxe --dhcp-boot=tag:!ipxe,undionly.kpxe >"$d/dnsmasq.log" 2>&1 &
  PIDS+=($!); SERVER_PIDS=($!)
  mkdir -p /var/run/tgtd
  ip netns exec $NS tgtd -f -C $TGT_CTL --iscsi portal=$LAB_IP:3260 >"$d/tgtd.log" 2>&1 &
  PIDS+=($!); SERVER_PIDS+=($!)
  local TA="tgtadm -C $TGT_CTL --lld iscsi"
  for i in $(seq 1 50); do $TA --mode system --op show >/dev/null 2>&1 && break; sleep 0.1; done
  for i in $(seq 1 "$1"); do
    cp "$DISK" "$d/disk$i.img"
    iqn=iqn.2024-01.bench:$(mac_of "$i" | tr ':' '-')
    $TA --mode target --op new --tid "$i" --targetname "$iqn" &&
    $TA --mode logicalunit --op new --tid "$i" --lun 1 --backing-store "$d/disk$i.img" &&
    $TA --mode target --op bind --tid "$i" --initiator-address ALL || { echo "tgtadm failed" >&2; exit 1; }
  done
  wait_udp 67
}

# CPU seconds (user + system, all threads) the serving processes used so far.
server_cpu() {
  local p t=0 f
  for p in "${SERVER_PIDS[@]}"; do
    f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
    t=$(( t + ${f% *} + ${f#* } ))
  done
  printf '%.2f\n' "$(echo "scale=2; $t / $(getconf CLK_TCK)" | bc)"
}

# boot_seats NSEATS -> prints "max mean cpu" (seconds from qemu start to marker, server CPU
# seconds during the boot), or "FAIL"
boot_seats() {
  local n=$1 i sers=() qs=() t0 ok cpu0
  cpu0=$(server_cpu)
  for i in $(seq 1 "$n"); do
    ip -n $NS tuntap add dev "tap$i" mode tap 2>/dev/null
    ip -n $NS link set "tap$i" master br0 up
  done
  t0=$EPOCHREALTIME
  for i in $(seq 1 "$n"); do
    local ser=$WORK/serial-$i.log; : > "$ser"; sers+=("$ser")
    ip netns exec $NS qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -monitor none \
      -serial file:"$ser" -no-reboot -netdev "tap,id=n0,ifname=tap$i,script=no,downscript=no" \
      -machine pc -boot n -device "virtio-net-pci,netdev=n0,mac=$(mac_of "$i")" >/dev/null 2>&1 &
    qs+=($!); PIDS+=($!)
  done
  python3 - "$t0" 300 "$EXPECT" "$WORK/phases" "${sers[@]}" <<'EOF'
import sys, time
t0, timeout, expect, phases_out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
sers = sys.argv[5:]
# When the first seat's console first shows each boot phase, to see where time goes.
marks = [("dhcp", b"Configuring (net0"), ("script", b"[script]"), ("san", b"Registered SAN device"),
         ("init", b"E2E-INIT: running"), ("marker", expect)]
phases = {}
done = {}
while len(done) < len(sers) and time.time() - t0 < timeout:
    for s in sers:
        data = open(s, 'rb').read()
        if s == sers[0]:
            for name, m in marks:
                # "Configuring" is printed when DHCP starts and " ok" when it ends.
                if name == "dhcp":
                    i = data.find(m)
                    hit = i >= 0 and b" ok" in data[i:i + 200]
                else:
                    hit = m in data
                if name not in phases and hit:
                    phases[name] = time.time() - t0
        if s not in done and expect in data:
            done[s] = time.time() - t0
    time.sleep(0.02)
with open(phases_out, 'w') as f:
    f.write(" ".join(f"{phases.get(n, float('nan')):.2f}" for n, _ in marks) + "\n")
if len(done) < len(sers):
    for s in sers:
        if s not in done:
            tail = open(s, 'rb').read().decode('latin-1').replace('\r', '\n').splitlines()[-15:]
            print(f"{s}: no marker\n  " + "\n  ".join(tail), file=sys.stderr)
    print("FAIL")
else:
    v = sorted(done.values())
    print(f"{max(v):.1f} {sum(v)/len(v):.1f}", end=" ")
EOF
  printf '%.2f\n' "$(echo "$(server_cpu) - $cpu0" | bc)"
  for q in "${qs[@]}"; do stop_pid "$q"; done
}

# The protocol probes, run in the client namespace.
cat > "$WORK/probe.py" <<'EOF'
import os, socket, struct, sys, time, statistics

def dhcp(rounds, server_hint):
    mac = bytes.fromhex('525400 78ff01'.replace(' ', ''))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'cli0')
    s.bind(('0.0.0.0', 68))
    s.settimeout(2.0)
    lat, lost = [], 0
    warmup = 5  # first answers of a fresh server (cold caches, first lease) are not counted
    for i in range(rounds + warmup):
        xid = os.urandom(4)
        pkt = struct.pack('!BBBB4sHH4s4s4s4s16s64s128s', 1, 1, 6, 0, xid, 0, 0x8000,
                          b'\0'*4, b'\0'*4, b'\0'*4, b'\0'*4, mac + b'\0'*10, b'', b'')
        opts = b'\x63\x82\x53\x63' + b'\x35\x01\x01' + b'\x5d\x02\x00\x00' + \
               b'\x3c\x20' + b'PXEClient:Arch:00000:UNDI:002001' + \
               b'\x37\x04\x01\x03\x06\x43' + b'\xff'
        pkt += opts + b'\0' * (300 - len(pkt) - len(opts) if len(pkt) + len(opts) < 300 else 0)
        t = time.perf_counter()
        s.sendto(pkt, ('255.255.255.255', 67))
        while True:
            try:
                data, _ = s.recvfrom(2048)
            except socket.timeout:
                lost += 1
                break
            if len(data) > 240 and data[4:8] == xid and data[0] == 2:
                if i >= warmup:
                    lat.append((time.perf_counter() - t) * 1000)
                break
    for v in lat:
        print(f"dhcp {v:.4f}")
    print(f"lost {lost}")

def tftp(rounds, server, name, expect_size):
    times, ws_seen = [], set()
    for _ in range(rounds):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3.0)
        req = b'\0\x01' + name.encode() + b'\0octet\0blksize\x001468\0windowsize\x0016\0tsize\x000\0'
        t = time.perf_counter()
        s.sendto(req, (server, 69))
        got, blk, ws, last_acked, peer = 0, 0, 1, 0, None
        while True:
            data, peer = s.recvfrom(65536)
            op = struct.unpack('!H', data[:2])[0]
            if op == 6:  # OACK
                o = data[2:].split(b'\0')
                kv = dict(zip(o[0::2], o[1::2]))
                ws = int(kv.get(b'windowsize', b'1'))
                s.sendto(b'\0\x04\0\0', peer)
                continue
            if op == 5:
                raise SystemExit(f"TFTP error {data!r}")
            n = struct.unpack('!H', data[2:4])[0]
            if n == (blk + 1) & 0xffff:
                blk += 1
                got += len(data) - 4
                if len(data) - 4 < 1468 or blk - last_acked >= ws:
                    s.sendto(b'\0\x04' + struct.pack('!H', n), peer)
                    last_acked = blk
                if len(data) - 4 < 1468:
                    break
            else:  # out of order: re-ACK the last good block
                s.sendto(b'\0\x04' + struct.pack('!H', blk & 0xffff), peer)
        assert got == expect_size, (got, expect_size)
        print(f"tftp {(time.perf_counter() - t) * 1000:.3f} {ws}")

def summary(path):
    dhcp, tftp, lost, ws = [], [], 0, 1
    for line in open(path):
        f = line.split()
        if f[0] == 'dhcp': dhcp.append(float(f[1]))
        elif f[0] == 'tftp': tftp.append(float(f[1])); ws = int(f[2])
        elif f[0] == 'lost': lost += int(f[1])
    dhcp.sort(); tftp.sort()
    p99 = dhcp[max(0, int(len(dhcp) * 0.99) - 1)] if dhcp else float('nan')
    print(f"{statistics.median(dhcp):.3f} {p99:.3f} {lost} {statistics.median(tftp):.1f} {tftp[0]:.1f} {ws}"
          if dhcp and tftp else "FAIL")

if sys.argv[1] == 'dhcp':
    dhcp(int(sys.argv[2]), None)
elif sys.argv[1] == 'summary':
    summary(sys.argv[2])
else:
    tftp(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
EOF
EFI_SIZE=$(stat -L -c %s /usr/lib/ipxe/ipxe.efi)

declare -A R
for n in $SEATS_LIST; do
  for who in khoi peers; do
    lab_up
    if [ $who = khoi ]; then start_khoi "$n"; else start_peers "$n"; fi
    log "$who: booting $n seat(s) at once"
    R[boot-$who-$n]=$(boot_seats "$n")
    [ "$n" = 1 ] && R[phases-$who]=$(cat "$WORK/phases")
    log "$who: $n seat(s): max/mean ${R[boot-$who-$n]}"
    lab_down
  done
done
# Alternate the two servers in a few short sessions, so the load other work puts on the machine
# falls on both sides alike.
REPS=5
for rep in $(seq 1 $REPS); do
  for who in khoi peers; do
    lab_up
    if [ $who = khoi ]; then
      start_khoi 1
      # ipxe.efi is served once it is in the TFTP root (Debian's ipxe package has it).
      cp -L /usr/lib/ipxe/ipxe.efi "$WORK/khoi/tftp/"
    else
      start_peers 1
    fi
    ip netns exec $NSC python3 "$WORK/probe.py" dhcp $(( (DHCP_ROUNDS + REPS - 1) / REPS )) >>"$WORK/probe-$who.txt"
    ip netns exec $NSC python3 "$WORK/probe.py" tftp $(( (TFTP_ROUNDS + REPS - 1) / REPS )) $LAB_IP ipxe.efi "$EFI_SIZE" \
      >>"$WORK/probe-$who.txt"
    lab_down
  done
done
for who in khoi peers; do
  read -r a b c d e f <<<"$(python3 "$WORK/probe.py" summary "$WORK/probe-$who.txt")"
  R[dhcp-$who]="$a $b $c"; R[tftp-$who]="$d $e $f"
  log "$who: dhcp median/p99/lost ${R[dhcp-$who]}; tftp median/best/window ${R[tftp-$who]}"
done

ratio() { [ "$1" = FAIL ] || [ "$2" = FAIL ] && { echo "-"; return; }; printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
echo
echo "| measurement | Khoi | dnsmasq + tgt | Khoi / peers |"
echo "|---|---|---|---|"
for n in $SEATS_LIST; do
  read -r km ka kc <<<"${R[boot-khoi-$n]}"; read -r pm pa pc <<<"${R[boot-peers-$n]}"
  echo "| power-on -> marker, $n BIOS seat(s), slowest (s) | $km | $pm | $(ratio "$km" "$pm") |"
  [ "$n" != 1 ] && echo "| power-on -> marker, $n BIOS seats, mean (s) | ${ka:--} | ${pa:--} | $(ratio "${ka:-FAIL}" "${pa:-FAIL}") |"
  echo "| server CPU during the $n-seat boot (s) | ${kc:--} | ${pc:--} | $(ratio "${kc:-FAIL}" "${pc:-FAIL}") |"
done
if [ -n "${R[phases-khoi]:-}" ] && [ -n "${R[phases-peers]:-}" ]; then
  read -r -a KP <<<"${R[phases-khoi]}"; read -r -a PP <<<"${R[phases-peers]}"
  NAMES=("iPXE DHCP done" "boot script loaded" "SAN disk registered (iSCSI login)"
         "kernel's /init running" "marker")
  for i in 0 1 2 3 4; do
    echo "| 1 seat: power-on -> ${NAMES[$i]} (s) | ${KP[$i]} | ${PP[$i]} | $(ratio "${KP[$i]}" "${PP[$i]}") |"
  done
fi
read -r kd kp kl <<<"${R[dhcp-khoi]}"; read -r pd pp pl <<<"${R[dhcp-peers]}"
echo "| DHCP DISCOVER -> OFFER, median (ms, $DHCP_ROUNDS rounds) | $kd | $pd | $(ratio "$kd" "$pd") |"
echo "| DHCP DISCOVER -> OFFER, p99 (ms) | $kp | $pp | $(ratio "$kp" "$pp") |"
echo "| DHCP unanswered | ${kl:--} | ${pl:--} | |"
read -r kt kmin kw <<<"${R[tftp-khoi]}"; read -r pt pmin pw <<<"${R[tftp-peers]}"
echo "| TFTP ipxe.efi ($EFI_SIZE B, blksize 1468), median (ms) | $kt (window $kw) | $pt (window $pw) | $(ratio "$kt" "$pt") |"
echo "| TFTP ipxe.efi, best (ms) | $kmin | $pmin | $(ratio "$kmin" "$pmin") |"
