#!/usr/bin/env bash
# iSCSI benchmark: Khoi against tgt on the same image file, with libiscsi's
# iscsi-perf as the initiator, plus the loopback TCP ceiling from iperf3 in
# the same run. Not a test: it prints a table with Khoi/tgt ratios and the
# server CPU seconds spent per GiB served.
#
#   ./scripts/bench-iscsi.sh               # 1 GiB image, median of 3 runs of 10 s per row
#   SIZE_MIB=2048 RUNTIME=20 REPS=5 ./scripts/bench-iscsi.sh
#   KHOI_BIN=path/to/khoi ./scripts/bench-iscsi.sh   # a binary built elsewhere
#   FLUSH_STORM=1 ./scripts/bench-iscsi.sh  # add the flush storm in both durability modes
#   FLUSH_STORM=only ./scripts/bench-iscsi.sh   # only that (no tgt)
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
RUNTIME=${RUNTIME:-10}
REPS=${REPS:-3}
STORM=${STORM:-40}
FLUSH_STORM=${FLUSH_STORM:-}
# Writes per session in the flush storm (4 KiB, QD4, a flush every 64).
FLUSH_WRITES=${FLUSH_WRITES:-4096}
TGT_CTL=${TGT_CTL:-191}
# Khoi's listen.tcp_congestion default; the iperf3 ceiling uses the same.
CEILING_CC=${CEILING_CC:-cubic}

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
./scripts/setup.sh test >/dev/null
KHOI=$(khoi_binary)

work=$(mktemp -d /tmp/khoi-bench-iscsi.XXXXXX)
pids=()
tgt_up=0
cleanup() {
    if [ "$tgt_up" = 1 ]; then
        # tgtd ignores SIGTERM; take it down through its own control socket.
        tgtadm -C "$TGT_CTL" --op update --mode sys --name State -v offline >/dev/null 2>&1 || true
        for tid in $(seq 1 $((STORM + 1))); do
            tgtadm -C "$TGT_CTL" --op delete --force --mode target --tid "$tid" >/dev/null 2>&1 || true
        done
        tgtadm -C "$TGT_CTL" --op delete --mode system >/dev/null 2>&1 || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

img=$work/base.img
echo "creating a ${SIZE_MIB} MiB image with random data" >&2
head -c $((SIZE_MIB << 20)) /dev/urandom >"$img"

# --- Khoi ---
kport=$(port)
cat >"$work/khoi.yaml" <<EOF
data_dir: $work/khoi
listen:
  nbd: null
  iscsi: 127.0.0.1:$kport
storage:
  free_space_floor: 0
  default_seat_quota: 0
EOF
"$KHOI" serve --config "$work/khoi.yaml" >"$work/khoi.log" 2>&1 &
kpid=$!; pids+=("$kpid")
for _ in $(seq 200); do [ -S "$work/khoi/khoi.sock" ] && break; sleep 0.05; done
"$KHOI" --config "$work/khoi.yaml" image import bench "$img" >/dev/null
"$KHOI" --config "$work/khoi.yaml" seat add bench --mac 02:00:00:00:00:01 --image bench >/dev/null
khoi_url=$("$KHOI" --config "$work/khoi.yaml" --json seat show bench | python3 -c '
import json, sys; s = json.load(sys.stdin)
print("iscsi://%s%%%s@%s/%s/0" % (s["chap_user"], s["chap_secret"], s["portal"], s["target_iqn"]))')

# Flush storm: STORM on-boot seats at once, each writing 4 KiB blocks at
# QD4 with a SYNCHRONIZE CACHE every 64 writes (qemu-img bench
# --flush-interval), against a Khoi whose on-boot overlays are durable and
# one where they are volatile. Prints "writes/s MiB/s cpu_s_per_GiB" rows.
flush_storm_rows() {
    local mode port2 pid2 conf dir n url urls t0 t1 secs
    for mode in durable volatile; do
        port2=$(port)
        dir=$work/khoi-$mode
        conf=$work/khoi-$mode.yaml
        cat >"$conf" <<EOF2
data_dir: $dir
listen:
  nbd: null
  iscsi: 127.0.0.1:$port2
storage:
  free_space_floor: 0
  default_seat_quota: 0
  on_boot_durability: $mode
admin:
  listen: null
EOF2
        "$KHOI" serve --config "$conf" >"$work/khoi-$mode.log" 2>&1 &
        pid2=$!; pids+=("$pid2")
        for _ in $(seq 200); do [ -S "$dir/khoi.sock" ] && break; sleep 0.05; done
        cp --reflink=auto "$img" "$work/fs-$mode.img"
        "$KHOI" --config "$conf" image import fs "$work/fs-$mode.img" >/dev/null
        urls=()
        for n in $(seq "$STORM"); do
            "$KHOI" --config "$conf" seat add "f$n" \
                --mac "$(printf '02:00:00:01:%02x:%02x' $((n / 256)) $((n % 256)))" --image fs >/dev/null
            urls+=("$("$KHOI" --config "$conf" --json seat show "f$n" | python3 -c '
import json, sys; s = json.load(sys.stdin)
print("iscsi://%s%%%s@%s/%s/0" % (s["chap_user"], s["chap_secret"], s["portal"], s["target_iqn"]))')")
        done
        wait_port "$port2"
        sync
        t0=$(cpu_ticks "$pid2")
        local s0; s0=$(date +%s%N)
        local cps=()
        for url in "${urls[@]}"; do
            qemu-img bench -f raw -w -c "$FLUSH_WRITES" -d 4 -s 4096 --flush-interval=64 \
                -S $((SIZE_MIB * 1048576 / FLUSH_WRITES / 4096 * 4096)) "$url" >/dev/null 2>&1 &
            cps+=($!)
        done
        for p in "${cps[@]}"; do wait "$p" || echo "a flush-storm client failed" >&2; done
        local s1; s1=$(date +%s%N)
        t1=$(cpu_ticks "$pid2")
        secs=$(awk -v a="$s0" -v b="$s1" 'BEGIN{print (b - a) / 1e9}')
        awk -v n=$((STORM * FLUSH_WRITES)) -v s="$secs" -v t=$((t1 - t0)) -v hz="$hz" -v m="$mode" 'BEGIN {
            w = n / s; mib = w * 4096 / 1048576; gib = n * 4096 / 1073741824
            printf "%s %d %.1f %.2f %.1f\n", m, w, mib, (t / hz) / gib, s
        }'
        kill "$pid2"; wait "$pid2" 2>/dev/null || true
    done
}
print_flush_storm() {
    printf '\nFlush storm: %s on-boot seats, 4 KiB writes QD4, SYNCHRONIZE CACHE every 64 writes, %s writes each, %s\n' \
        "$STORM" "$FLUSH_WRITES" "$(date -u +%F)"
    printf '%-10s | %10s | %8s | %10s | %8s\n' "durability" "writes/s" "MiB/s" "CPU s/GiB" "wall s"
    printf '%s\n' "-----------+------------+----------+------------+---------"
    while read -r m w mib c s; do
        printf '%-10s | %10s | %8s | %10s | %8s\n' "$m" "$w" "$mib" "$c" "$s"
    done <<<"$1"
}
if [ "$FLUSH_STORM" = only ]; then
    echo "running: flush storm, $STORM sessions, both durability modes" >&2
    print_flush_storm "$(flush_storm_rows)"
    exit 0
fi

# --- tgt, backed by the same file (its LUN 0 is the controller, the disk is LUN 1) ---
tport=$(port)
mkdir -p /var/run/tgtd
tgtd -f -C "$TGT_CTL" --iscsi portal=127.0.0.1:"$tport" >"$work/tgtd.log" 2>&1 &
tpid=$!; pids+=("$tpid"); tgt_up=1
TA="tgtadm -C $TGT_CTL --lld iscsi"
for _ in $(seq 50); do $TA --mode system --op show >/dev/null 2>&1 && break; sleep 0.1; done
$TA --mode target --op new --tid 1 --targetname iqn.2025-07.vn.khoi.bench:tgt
$TA --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$img"
$TA --mode target --op bind --tid 1 --initiator-address ALL
tgt_url="iscsi://127.0.0.1:$tport/iqn.2025-07.vn.khoi.bench:tgt/1"
wait_port "$kport"; wait_port "$tport"

cat "$img" >/dev/null   # both serve from the page cache

# perf URL QD BLOCKS RANDOM PID -> "iops MiB/s cpu_s_per_GiB"
perf() {
    local url=$1 qd=$2 blocks=$3 rnd=$4 pid=$5
    local args=(-m "$qd" -b "$blocks" -t "$RUNTIME")
    [ "$rnd" = 1 ] && args+=(-r)
    local t0; t0=$(cpu_ticks "$pid")
    local out; out=$(timeout $((RUNTIME + 30)) iscsi-perf "${args[@]}" "$url" 2>&1 | tr '\r' '\n' || true)
    local t1; t1=$(cpu_ticks "$pid")
    local iops; iops=$(awk '/iops average/ {for (i = 1; i <= NF; i++) if ($i == "average") v = $(i + 1)} END {print v + 0}' <<<"$out")
    awk -v iops="$iops" -v bs=$((blocks * 512)) -v t=$((t1 - t0)) -v hz="$hz" -v run="$RUNTIME" 'BEGIN {
        mib = iops * bs / 1048576; gib = mib * run / 1024; if (gib <= 0) gib = 1e-9
        printf "%d %.1f %.2f\n", iops, mib, (t / hz) / gib
    }'
}

# wbench URL PID -> "iops MiB/s cpu_s_per_GiB": 4K writes at QD32 through
# qemu's iscsi driver (iscsi-perf only reads). Khoi's land in the seat's
# overlay; tgt's go straight into the file.
wbench() {
    local url=$1 pid=$2 count=$((RUNTIME * 4000))
    local t0; t0=$(cpu_ticks "$pid")
    local out; out=$(qemu-img bench -f raw -w -c "$count" -d 32 -s 4096 "$url" 2>&1 || true)
    local t1; t1=$(cpu_ticks "$pid")
    local secs; secs=$(awk '/Run completed in/ {print $4}' <<<"$out")
    awk -v n="$count" -v s="${secs:-0}" -v t=$((t1 - t0)) -v hz="$hz" 'BEGIN {
        iops = (s > 0) ? n / s : 0; mib = iops * 4096 / 1048576; gib = n * 4096 / 1073741824
        printf "%d %.1f %.2f\n", iops, mib, (t / hz) / gib
    }'
}

rows=("1 8 1" "32 8 1" "1 128 0" "32 128 0" "8 2048 0")
labels=("4K random QD1" "4K random QD32" "64K seq QD1 (iPXE-like)" "64K seq QD32" "1M seq QD8")

# Each row runs REPS times, alternating the two servers, and reports each
# one's median: on a shared machine the load of other work comes and goes
# within minutes, and alternating puts it on both sides alike.
declare -A res
for i in "${!rows[@]}"; do
    read -r qd blocks rnd <<<"${rows[$i]}"
    echo "running: ${labels[$i]}" >&2
    kr="" tr=""
    for _ in $(seq "$REPS"); do
        kr+=$(perf "$khoi_url" "$qd" "$blocks" "$rnd" "$kpid")$'\n'
        tr+=$(perf "$tgt_url" "$qd" "$blocks" "$rnd" "$tpid")$'\n'
    done
    res[k$i]=$(printf '%s' "$kr" | median)
    res[t$i]=$(printf '%s' "$tr" | median)
done
echo "running: 4K write QD32" >&2
labels+=("4K write QD32 (qemu-img)")
kr="" tr=""
for _ in $(seq "$REPS"); do
    kr+=$(wbench "$khoi_url" "$kpid")$'\n'
    tr+=$(wbench "$tgt_url" "$tpid")$'\n'
done
res[k5]=$(printf '%s' "$kr" | median)
res[t5]=$(printf '%s' "$tr" | median)
rows+=("w")

# Boot storm: STORM seats at once, each its own session reading 64 KiB blocks
# at random, one at a time (what a booting Windows seat looks like). Khoi
# serves each from its own seat target; tgt gets as many targets on the
# same file. The clients take most of the CPU here, so the telling columns
# are the total and the server's CPU per GiB.
echo "running: boot storm, $STORM sessions" >&2
storm_urls_k=() storm_urls_t=()
for n in $(seq "$STORM"); do
    "$KHOI" --config "$work/khoi.yaml" seat add "storm$n" \
        --mac "$(printf '02:00:00:00:%02x:%02x' $((n / 256 + 1)) $((n % 256)))" --image bench >/dev/null
    storm_urls_k+=("$("$KHOI" --config "$work/khoi.yaml" --json seat show "storm$n" | python3 -c '
import json, sys; s = json.load(sys.stdin)
print("iscsi://%s%%%s@%s/%s/0" % (s["chap_user"], s["chap_secret"], s["portal"], s["target_iqn"]))')")
    $TA --mode target --op new --tid $((n + 1)) --targetname "iqn.2025-07.vn.khoi.bench:storm$n"
    $TA --mode logicalunit --op new --tid $((n + 1)) --lun 1 --backing-store "$img"
    $TA --mode target --op bind --tid $((n + 1)) --initiator-address ALL
    storm_urls_t+=("iscsi://127.0.0.1:$tport/iqn.2025-07.vn.khoi.bench:storm$n/1")
done
# storm PID URL... -> "iops MiB/s cpu_s_per_GiB", IOPS summed over the sessions
storm() {
    local pid=$1; shift
    local t0; t0=$(cpu_ticks "$pid")
    local outs=() cps=() u p
    for u in "$@"; do
        outs+=("$work/storm.${#outs[@]}")
        timeout $((RUNTIME + 30)) iscsi-perf -m 1 -b 128 -t "$RUNTIME" -r "$u" >"${outs[-1]}" 2>&1 &
        cps+=($!)
    done
    for p in "${cps[@]}"; do wait "$p" 2>/dev/null || true; done
    local t1; t1=$(cpu_ticks "$pid")
    # iscsi-perf prints a running average; each session's last one counts.
    local iops=0 o v
    for o in "${outs[@]}"; do
        v=$(tr '\r' '\n' <"$o" | awk '/iops average/ {for (i = 1; i <= NF; i++) if ($i == "average") v = $(i + 1)} END {print v + 0}')
        iops=$((iops + ${v%.*}))
    done
    rm -f "${outs[@]}"
    awk -v iops="$iops" -v t=$((t1 - t0)) -v hz="$hz" -v run="$RUNTIME" 'BEGIN {
        mib = iops * 65536 / 1048576; gib = mib * run / 1024; if (gib <= 0) gib = 1e-9
        printf "%d %.1f %.2f\n", iops, mib, (t / hz) / gib
    }'
}
kr="" tr=""
for _ in $(seq "$REPS"); do
    kr+=$(storm "$kpid" "${storm_urls_k[@]}")$'\n'
    tr+=$(storm "$tpid" "${storm_urls_t[@]}")$'\n'
done
labels+=("boot storm: $STORM x 64K QD1")
res[k6]=$(printf '%s' "$kr" | median)
res[t6]=$(printf '%s' "$tr" | median)
rows+=("s")

# The Monday morning: the same storm after the page cache was emptied
# (server restarted over the weekend, or the image never read since boot),
# first cold, then with Khoi's prewarm. Khoi learned the storm's working set
# in the runs above (a seat's first minutes on an empty overlay are its
# boot); after a restart it reads that set into the page cache before
# serving. tgt has no such thing, so its prewarmed column repeats its cold one.
evict() {
    python3 - "$@" <<'PY'
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}
layers=("$work"/khoi/images/bench/layers/*.data)
echo "running: boot storm, cold page cache" >&2
kr="" tr=""
for _ in $(seq "$REPS"); do
    evict "${layers[@]}"
    kr+=$(storm "$kpid" "${storm_urls_k[@]}")$'\n'
    evict "$img"
    tr+=$(storm "$tpid" "${storm_urls_t[@]}")$'\n'
done
labels+=("storm, cold cache")
res[k7]=$(printf '%s' "$kr" | median)
res[t7]=$(printf '%s' "$tr" | median)
rows+=("c")

# restart_khoi: SIGTERM (which saves the learned sets), empty the cache,
# start again and wait (up to 120 s) until the start-up prewarm is done.
restart_khoi() {
    kill -TERM "$kpid"; wait "$kpid" 2>/dev/null || true
    evict "${layers[@]}"
    "$KHOI" serve --config "$work/khoi.yaml" >"$work/khoi.log" 2>&1 &
    kpid=$!; pids+=("$kpid")
    wait_port "$kport"
    for _ in $(seq 1200); do
        grep -q 'prewarm at start done' "$work/khoi.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no prewarm reported (a Khoi without it): the row is a cold one" >&2
}
echo "running: boot storm, prewarmed after a restart" >&2
kr=""
for _ in $(seq "$REPS"); do
    restart_khoi
    kr+=$(storm "$kpid" "${storm_urls_k[@]}")$'\n'
done
labels+=("storm, prewarmed (tgt cold)")
res[k8]=$(printf '%s' "$kr" | median)
res[t8]=${res[t7]}
rows+=("p")

echo "running: iperf3 loopback ceiling" >&2
iport=$(port)
# No wait_port here: probing the port would count as iperf3's test client.
iperf3 -s -p "$iport" >/dev/null 2>&1 &
ipid=$!; pids+=("$ipid")
sleep 1
# The ceiling uses Khoi's congestion control (listen.tcp_congestion, cubic by
# default) and is the median of REPS runs: on this shared 2-core VM single
# runs measured 25 to 62 Gbit/s within minutes, pinned to cores or not.
gbits=""
for _ in $(seq "$REPS"); do
    gbits+=$(iperf3 -c 127.0.0.1 -p "$iport" -l 1M -t "$RUNTIME" -C "$CEILING_CC" -J 2>/dev/null |
        python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))' || echo 0)$'\n'
done
gbit=$(printf '%s' "$gbits" | median)

printf '\nKhoi iSCSI benchmark: %s MiB image, median of %s alternating %s s runs per row, iscsi-perf (reads), loopback, %s\n' \
    "$SIZE_MIB" "$REPS" "$RUNTIME" "$(date -u +%F)"
printf '%-26s | %19s | %19s | %8s | %17s\n' "row (IOPS, MiB/s)" "khoi" "tgt" "khoi/tgt" "CPU s/GiB khoi|tgt"
printf '%s\n' "---------------------------+---------------------+---------------------+----------+-------------------"
for i in "${!rows[@]}"; do
    read -r ki kb kc <<<"${res[k$i]}"
    read -r ti tb tc <<<"${res[t$i]}"
    printf '%-26s | %8s %10s | %8s %10s | %7.2fx | %7s | %7s\n' "${labels[$i]}" "$ki" "$kb" "$ti" "$tb" \
        "$(awk -v a="$ki" -v b="$ti" 'BEGIN{print (b>0)?a/b:0}')" "$kc" "$tc"
done
read -r _ sb _ <<<"${res[k6]}"
read -r _ kb _ <<<"${res[k4]}"
printf '\nTCP congestion control: the system default is %s (tgt uses it); iperf3 uses %s, as Khoi does by default\n' \
    "$(cat /proc/sys/net/ipv4/tcp_congestion_control)" "$CEILING_CC"
printf 'loopback TCP (iperf3 -l 1M -C %s): %s Gbit/s = %.0f MiB/s; Khoi 1M QD8 reaches %.0f%% of it\n' \
    "$CEILING_CC" "$gbit" "$(awk -v g="$gbit" 'BEGIN{print g * 1e9 / 8 / 1048576}')" \
    "$(awk -v g="$gbit" -v k="$kb" 'BEGIN{c = g * 1e9 / 8 / 1048576; print (c > 0) ? 100 * k / c : 0}')"
printf 'the warm boot storm reaches %.0f%% of it\n' \
    "$(awk -v g="$gbit" -v k="$sb" 'BEGIN{c = g * 1e9 / 8 / 1048576; print (c > 0) ? 100 * k / c : 0}')"
if [ -n "$FLUSH_STORM" ]; then
    echo "running: flush storm, $STORM sessions, both durability modes" >&2
    print_flush_storm "$(flush_storm_rows)"
fi
