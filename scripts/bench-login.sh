#!/usr/bin/env bash
# Login latency while the server does admin work. Not a test: it prints the
# p50/p99/max of iSCSI logins (iscsi-inq: login, INQUIRY, logout) against
# one seat while idle, during an image import and during a draft publish.
# Opening a seat at login must never wait for the store's full-image syncs.
#
#   ./scripts/bench-login.sh                 # 4 GiB import, 1 GiB dirty draft
#   IMPORT_MIB=1024 DRAFT_MIB=256 ./scripts/bench-login.sh
#   KHOI_BIN=path/to/khoi ./scripts/bench-login.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IMPORT_MIB=${IMPORT_MIB:-4096}
DRAFT_MIB=${DRAFT_MIB:-1024}
IDLE_LOGINS=${IDLE_LOGINS:-200}

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
KHOI=$(khoi_binary)

# The staged image must be on the store's file system (a hard link), so the
# work folder is under the tree, not on a tmpfs /tmp.
work=$(mktemp -d "${BENCH_DIR:-$PWD/target}/khoi-bench-login.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

kport=$(port)
cat >"$work/khoi.yaml" <<EOF
data_dir: $work/khoi
listen:
  iscsi: 127.0.0.1:$kport
storage:
  free_space_floor: 0
  default_seat_quota: 0
admin:
  listen: null
EOF
"$KHOI" serve --config "$work/khoi.yaml" >"$work/khoi.log" 2>&1 &
pids+=("$!")
for _ in $(seq 200); do [ -S "$work/khoi/khoi.sock" ] && break; sleep 0.05; done
k() { "$KHOI" --config "$work/khoi.yaml" "$@"; }
# The seat's image is as large as the draft written later (sparse).
head -c $((1 << 20)) /dev/urandom >"$work/small.img"
truncate -s "${DRAFT_MIB}M" "$work/small.img"
k image import seatimg "$work/small.img" >/dev/null
k seat add s1 --mac 02:00:00:00:00:01 --image seatimg >/dev/null
url=$(k --json seat show s1 | python3 -c '
import json, sys; s = json.load(sys.stdin)
print("iscsi://%s%%%s@%s/%s/0" % (s["chap_user"], s["chap_secret"], s["portal"], s["target_iqn"]))')
wait_port "$kport"

# logins FILE [N | while PID]: one latency in ms per line.
logins() {
    local out=$1 mode=$2 arg=$3 n=0
    : >"$out"
    while :; do
        if [ "$mode" = count ]; then [ "$n" -ge "$arg" ] && break
        else kill -0 "$arg" 2>/dev/null || break; fi
        local t0 t1; t0=$(date +%s%N)
        iscsi-inq "$url" >/dev/null 2>&1 || echo "login failed" >&2
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000)) >>"$out"
        n=$((n + 1))
    done
}
# stats FILE -> "n p50 p99 max" (ms)
stats() {
    sort -n "$1" | awk '{v[NR] = $1} END {
        if (NR == 0) { print "0 - - -"; exit }
        p50 = v[int(NR * 0.50 + 0.5) > 0 ? int(NR * 0.50 + 0.5) : 1]
        i99 = int(NR * 0.99 + 0.5); if (i99 < 1) i99 = 1; if (i99 > NR) i99 = NR
        printf "%d %.1f %.1f %.1f\n", NR, p50 / 1000, v[i99] / 1000, v[NR] / 1000 }'
}

echo "idle: $IDLE_LOGINS logins" >&2
logins "$work/idle" count "$IDLE_LOGINS"

echo "import of a $IMPORT_MIB MiB image" >&2
head -c $((IMPORT_MIB << 20)) /dev/urandom >"$work/big.img"
sync
( k image import big "$work/big.img" >/dev/null ) &
ipid=$!
logins "$work/import" while "$ipid"
wait "$ipid"

echo "publish of a draft with $DRAFT_MIB MiB written" >&2
k draft open seatimg >/dev/null
# In 32 MiB requests: one request of the whole size is refused by NBD.
wr=()
for ((off = 0; off < DRAFT_MIB; off += 32)); do wr+=(-c "write -P 0x5a ${off}M 32M"); done
qemu-io -f raw "${wr[@]}" "nbd+unix:///draft/seatimg?socket=$work/khoi/nbd.sock" >/dev/null
( k draft publish seatimg --note "bench" >/dev/null ) &
ppid=$!
logins "$work/publish" while "$ppid"
wait "$ppid"

printf '\nKhoi login latency (iscsi-inq: login + INQUIRY + logout), loopback, %s\n' "$(date -u +%F)"
printf '%-34s | %6s | %8s | %8s | %8s\n' "while" "logins" "p50 ms" "p99 ms" "max ms"
printf '%s\n' "-----------------------------------+--------+----------+----------+---------"
for row in "idle:idle" "import:import of ${IMPORT_MIB} MiB" "publish:publish of ${DRAFT_MIB} MiB dirty draft"; do
    f=${row%%:*} label=${row#*:}
    read -r n p50 p99 mx <<<"$(stats "$work/$f")"
    printf '%-34s | %6s | %8s | %8s | %8s\n' "$label" "$n" "$p50" "$p99" "$mx"
done
