#!/usr/bin/env bash
# Province sync benchmark (not a test): bring a site from version N to N+1 over an emulated WAN,
# Khoi's signed chunk sync through a real Garage against `rsync -z` of the raw image files over the
# same link (the do-it-yourself baseline).
#
#   - Two namespaces joined by a veth pair: the province (Garage, the publisher Khoi, an rsync
#     daemon) and the site (the site Khoi, the rsync client). tc netem on both ends: RATE, DELAY
#     each way, LOSS.
#   - Version N: a SIZE_GIB image with BASE_MIB of file data (real files of this machine's
#     Debian packages, from /usr); the site pulls it before the link is slowed.
#   - Version N+1: DELTA_MIB more files written over it in a draft (qemu-io over the draft's NBD
#     export), published, uploaded.
#   - Measured, with the link slowed: the site's pull of N+1 (time to the `sync.pulled` event; bytes
#     on the wire from the veth counters), and `rsync -z --inplace` of N+1's raw file onto a copy
#     of N's at the site. Also the delta's compressed size (zstd, what the chunks store).
# Goal (issue 13): Khoi's bytes <= 1.05 x the delta's compressed size, time <= 0.8 x rsync's.
#
# Usage: sudo ./scripts/bench-sync.sh
# Env: SIZE_GIB (16) BASE_MIB (1024) DELTA_MIB (1024) RATE (20mbit) DELAY (40ms) LOSS (0.1%)
#      KHOI_BIN (default: cargo build --release -p khoi), GARAGE_BIN, CARGO_TARGET_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE_GIB=${SIZE_GIB:-16} BASE_MIB=${BASE_MIB:-1024} DELTA_MIB=${DELTA_MIB:-1024}
RATE=${RATE:-20mbit} DELAY=${DELAY:-40ms} LOSS=${LOSS:-0.1%}
[ "$(id -u)" = 0 ] || { echo "must run as root (network namespaces)"; exit 2; }
for t in ip tc rsync qemu-io python3 zstd; do
  command -v $t >/dev/null || { echo "missing $t: ./scripts/setup.sh test (zstd: apt-get install zstd)"; exit 2; }
done
GARAGE_BIN=${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
[ -x "$GARAGE_BIN" ] || { echo "missing garage: ./scripts/setup.sh test"; exit 2; }
if [ -z "${KHOI_BIN:-}" ]; then
  echo "building khoi (release)..." >&2
  cargo build --release -q -p khoi || exit 1
  KHOI_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/khoi
fi

NSP=ksync-$$-p NSS=ksync-$$-s
P_IP=10.78.0.1 S_IP=10.78.0.2
WORK=$(mktemp -d /tmp/khoi-bench-sync.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  ip netns del "$NSP" 2>/dev/null; ip netns del "$NSS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
inp() { ip netns exec "$NSP" "$@"; }
ins() { ip netns exec "$NSS" "$@"; }

ip netns add "$NSP"; ip netns add "$NSS"
ip -n "$NSP" link set lo up; ip -n "$NSS" link set lo up
ip -n "$NSP" link add wan0 type veth peer name wan1
ip -n "$NSP" link set wan1 netns "$NSS"
ip -n "$NSP" addr add $P_IP/24 dev wan0; ip -n "$NSS" addr add $S_IP/24 dev wan1
ip -n "$NSP" link set wan0 up; ip -n "$NSS" link set wan1 up

# --- Garage, in the province namespace ------------------------------------------------------
G=$WORK/garage; mkdir -p "$G"
cat > "$G/garage.toml" <<EOF
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "0.0.0.0:3900"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:3903"
EOF
chmod 600 "$G/garage.toml"
gar() { inp "$GARAGE_BIN" -c "$G/garage.toml" "$@"; }
# `ip netns exec` execs, so $! is the program itself (a shell function would
# put a subshell in between, which the cleanup's kill would not reach through).
ip netns exec "$NSP" "$GARAGE_BIN" -c "$G/garage.toml" server >"$G/log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do gar status >/dev/null 2>&1 && break; sleep 0.2; done
gar layout assign -z dc1 -c 10G "$(gar node id -q | cut -d@ -f1)" >/dev/null
gar layout apply --version 1 >/dev/null
gar bucket create khoi >/dev/null
key() { # name -> "ID SECRET"
  local out; out=$(gar key create "$1")
  gar bucket allow --read --write khoi --key "$1" >/dev/null
  echo "$(echo "$out" | sed -n 's/^Key ID:\s*//p') $(echo "$out" | sed -n 's/^Secret key:\s*//p')"
}
(umask 077; key publisher > "$WORK/publisher.cred"; key site > "$WORK/site.cred")

# --- two Khois ---------------------------------------------------------------------------------
"$KHOI_BIN" sync keygen "$WORK/province.key" > "$WORK/keygen.out"
PUBKEY=$(tail -n1 "$WORK/keygen.out")
mkcfg() { # name role data extra
  cat > "$WORK/$1.yaml" <<EOF
data_dir: $3
listen:
  iscsi: null
admin:
  listen: null
storage:
  free_space_floor: 0
sync:
  role: $2
  name: $1
  bucket:
    endpoint: http://$P_IP:3900
    name: khoi
    credentials_file: $WORK/$1.cred
    allow_http: true
  images: [bench]
$4
EOF
}
mkcfg publisher publisher "$WORK/pdata" "  signing_key: $WORK/province.key"
mkcfg site site "$WORK/sdata" "  trusted_keys: [$PUBKEY]"
ip netns exec "$NSP" "$KHOI_BIN" serve --config "$WORK/publisher.yaml" >"$WORK/publisher.log" 2>&1 & PIDS+=($!)
ip netns exec "$NSS" "$KHOI_BIN" serve --config "$WORK/site.yaml" >"$WORK/site.log" 2>&1 & PIDS+=($!)
kp() { "$KHOI_BIN" --config "$WORK/publisher.yaml" "$@"; }
ks() { "$KHOI_BIN" --config "$WORK/site.yaml" "$@"; }
for _ in $(seq 100); do kp image list >/dev/null 2>&1 && ks image list >/dev/null 2>&1 && break; sleep 0.2; done
wait_event() { # khoi-fn kind count
  for _ in $(seq 36000); do
    n=$($1 --json events --subject bench --limit 1000 | python3 -c "import json,sys; print(sum(1 for e in json.load(sys.stdin) if e['kind']=='$2'))")
    [ "$n" -ge "$3" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for $2" >&2; exit 1
}

# --- files from Debian packages, as a data source ---------------------------------------------
files_blob() { # out MiB seed: concatenated files under /usr, in an order chosen by seed
  find /usr/lib /usr/share /usr/bin -type f -size +4k 2>/dev/null | sort | \
    python3 -c "import sys,random; l=sys.stdin.read().split(); random.Random($3).shuffle(l); print('\n'.join(l))" | \
    while read -r f; do cat "$f" 2>/dev/null; done | head -c $(( $2 * 1048576 )) > "$1"
}
echo "preparing version N (${SIZE_GIB} GiB, ${BASE_MIB} MiB of files) and the delta (${DELTA_MIB} MiB)..." >&2
files_blob "$WORK/base.bin" "$BASE_MIB" 1
files_blob "$WORK/delta.bin" "$DELTA_MIB" 2
truncate -s "${SIZE_GIB}G" "$WORK/v1.raw"
dd if="$WORK/base.bin" of="$WORK/v1.raw" bs=1M conv=notrunc status=none
# The delta lands in the middle of the disk, as an update's files would.
DELTA_OFF=$(( SIZE_GIB * 1024 / 2 ))
cp --sparse=always "$WORK/v1.raw" "$WORK/v2.raw"
dd if="$WORK/delta.bin" of="$WORK/v2.raw" bs=1M seek=$DELTA_OFF conv=notrunc status=none

mkdir -p "$WORK/pdata/staging"
kp image import bench "$WORK/v1.raw" >/dev/null
kp sync now >/dev/null; wait_event kp sync.uploaded 1
ks sync now >/dev/null; wait_event ks sync.pulled 1

# Version N+1 on the publisher: the delta written into a draft, published.
kp draft open bench >/dev/null
qemu-io -f raw "nbd+unix:///draft/bench?socket=$WORK/pdata/nbd.sock" \
  -c "write -s $WORK/delta.bin $(( DELTA_OFF * 1048576 )) $(( DELTA_MIB * 1048576 ))" >/dev/null
# Not a Windows disk: the image gate would hold it back.
kp draft publish bench --note "bench delta" --override "benchmark data, not a Windows image" >/dev/null
kp sync now >/dev/null; wait_event kp sync.uploaded 2
ZSTD=$(zstd -3 -c "$WORK/delta.bin" | wc -c)

# --- the WAN ------------------------------------------------------------------------------------
# Kernels without sch_netem (some VMs) get the rate alone, from tbf; the table says so.
WAN="$RATE, $DELAY each way, loss $LOSS"
if ! inp tc qdisc add dev wan0 root netem rate "$RATE" delay "$DELAY" loss "$LOSS" 2>/dev/null; then
  WAN="$RATE (tbf; this kernel has no netem: no delay, no loss)"
  inp tc qdisc add dev wan0 root tbf rate "$RATE" burst 32kbit latency 400ms
  ins tc qdisc add dev wan1 root tbf rate "$RATE" burst 32kbit latency 400ms
else
  ins tc qdisc add dev wan1 root netem rate "$RATE" delay "$DELAY" loss "$LOSS"
fi
rx() { ins cat /sys/class/net/wan1/statistics/rx_bytes; }

b0=$(rx); t0=$(date +%s.%N)
ks sync now >/dev/null; wait_event ks sync.pulled 2
t1=$(date +%s.%N); b1=$(rx)
KHOI_T=$(echo "$t1 - $t0" | bc -l); KHOI_B=$(( b1 - b0 ))

# rsync: the site holds N's raw file and brings it to N+1 (rsync's own delta transfer).
mkdir -p "$WORK/rsync-src" "$WORK/rsync-dst"
ln "$WORK/v2.raw" "$WORK/rsync-src/bench.raw"
cp --sparse=always "$WORK/v1.raw" "$WORK/rsync-dst/bench.raw"
cat > "$WORK/rsyncd.conf" <<EOF
use chroot = no
[img]
path = $WORK/rsync-src
read only = yes
EOF
ip netns exec "$NSP" rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --address=$P_IP --port=8873 & PIDS+=($!)
sleep 1
b0=$(rx); t0=$(date +%s.%N)
ins rsync -z --inplace "rsync://$P_IP:8873/img/bench.raw" "$WORK/rsync-dst/bench.raw"
t1=$(date +%s.%N); b1=$(rx)
RS_T=$(echo "$t1 - $t0" | bc -l); RS_B=$(( b1 - b0 ))
cmp -s "$WORK/rsync-dst/bench.raw" "$WORK/v2.raw" || echo "warning: rsync's copy differs" >&2

printf '\nWAN %s; %s GiB image, %s MiB delta of files (zstd -3: %s bytes)\n' \
  "$WAN" "$SIZE_GIB" "$DELTA_MIB" "$ZSTD"
printf '%-12s %10s %14s %16s\n' method seconds "wire bytes" "bytes/zstd(delta)"
printf '%-12s %10.1f %14d %16.3f\n' khoi-sync "$KHOI_T" "$KHOI_B" "$(echo "$KHOI_B / $ZSTD" | bc -l)"
printf '%-12s %10.1f %14d %16.3f\n' "rsync -z" "$RS_T" "$RS_B" "$(echo "$RS_B / $ZSTD" | bc -l)"
printf 'time khoi/rsync: %.3f (goal <= 0.8); bytes khoi/zstd(delta): %.3f (goal <= 1.05)\n' \
  "$(echo "$KHOI_T / $RS_T" | bc -l)" "$(echo "$KHOI_B / $ZSTD" | bc -l)"
