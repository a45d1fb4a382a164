#!/usr/bin/env bash
# NBD benchmark: Khoi against nbdkit (file plugin + cow filter) and qemu-nbd
# (qcow2 overlay over the raw base), same image, same fio jobs, one run.
# Not a test: it prints a table and Khoi/peer ratios.
# All three serve on unix sockets (Khoi's default and only unauthenticated
# NBD transport), so the comparison is like for like.
#
#   ./scripts/bench-nbd.sh            # 1 GiB image, median of 3 runs of 10 s per row
#   SIZE_MIB=4096 RUNTIME=20 REPS=5 ./scripts/bench-nbd.sh
#   KHOI_BIN=path/to/khoi ./scripts/bench-nbd.sh   # a binary built elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
RUNTIME=${RUNTIME:-10}
REPS=${REPS:-3}
SEATS=${SEATS:-40}

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
./scripts/setup.sh test >/dev/null
KHOI=$(khoi_binary)

work=$(mktemp -d /tmp/khoi-bench-nbd.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

img=$work/base.img
echo "creating a ${SIZE_MIB} MiB image with random data" >&2
head -c $((SIZE_MIB << 20)) /dev/urandom >"$img"

# wait_socket PATH: until a server listens on the unix socket PATH.
wait_socket() {
    for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
    echo "no server on $1" >&2; return 1
}

# --- Khoi (NBD on its data folder's owner-only socket, the default) ---
ksock=$work/khoi/nbd.sock
cat >"$work/khoi.yaml" <<EOF
data_dir: $work/khoi
listen:
  iscsi: null
storage:
  free_space_floor: 0
  default_seat_quota: 0
EOF
"$KHOI" serve --config "$work/khoi.yaml" >"$work/khoi.log" 2>&1 &
kpid=$!; pids+=("$kpid")
for _ in $(seq 200); do [ -S "$work/khoi/khoi.sock" ] && break; sleep 0.05; done
"$KHOI" --config "$work/khoi.yaml" image import bench "$img" --note bench >/dev/null
for i in $(seq 0 "$SEATS"); do
    "$KHOI" --config "$work/khoi.yaml" seat add "s$i" --mac "$(printf '02:00:00:00:%02x:%02x' $((i / 256)) $((i % 256)))" --image bench >/dev/null
done

# --- nbdkit with the cow filter ---
nsock=$work/nbdkit.sock
nbdkit -f -U "$nsock" --filter=cow file "$img" 2>"$work/nbdkit.log" &
npid=$!; pids+=("$npid")

# --- qemu-nbd over a qcow2 overlay ---
qsock=$work/qemu-nbd.sock
qemu-img create -q -f qcow2 -b "$img" -F raw "$work/overlay.qcow2"
qemu-nbd -f qcow2 -k "$qsock" -t -e 64 --cache=writeback "$work/overlay.qcow2" 2>"$work/qemu-nbd.log" &
qpid=$!; pids+=("$qpid")

wait_socket "$ksock"; wait_socket "$nsock"; wait_socket "$qsock"
# Every server reads the base from the page cache, so the row measures the
# server, not the disk.
cat "$img" >/dev/null


# fio_row URI RW BS QD SERVER_PID -> "iops MiB/s cpu_s_per_GiB"
fio_row() {
    local uri=$1 rw=$2 bs=$3 qd=$4 pid=$5
    local t0; t0=$(cpu_ticks "$pid")
    local line
    line=$(fio --name=b --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
        --size="${SIZE_MIB}M" --time_based --runtime="$RUNTIME" --ramp_time=2 \
        --output-format=terse --terse-version=3 2>/dev/null | tail -n 1)
    local t1; t1=$(cpu_ticks "$pid")
    awk -F';' -v rw="$rw" -v t="$((t1 - t0))" -v hz="$hz" -v run="$RUNTIME" '{
        if (rw ~ /write/) { bw = $48; iops = $49 } else { bw = $7; iops = $8 }
        gib = bw * (run + 2) / 1048576; if (gib <= 0) gib = 1e-9
        printf "%d %.1f %.2f\n", iops, bw / 1024, (t / hz) / gib
    }' <<<"$line"
}

declare -A res
rows=("randread 4k 32" "read 1M 8" "randwrite 4k 32")
labels=("4K random read QD32" "1M sequential read QD8" "4K random write QD32")
# Each row runs REPS times, rotating through the servers, and reports each
# one's median: on a shared machine the load of other work comes and goes
# within minutes, and rotating puts it on every side alike.
for i in "${!rows[@]}"; do
    read -r rw bs qd <<<"${rows[$i]}"
    echo "running: ${labels[$i]}" >&2
    kr="" nr="" qr=""
    for _ in $(seq "$REPS"); do
        kr+=$(fio_row "nbd+unix:///seat/s0?socket=$ksock" "$rw" "$bs" "$qd" "$kpid")$'\n'
        nr+=$(fio_row "nbd+unix:///?socket=$nsock" "$rw" "$bs" "$qd" "$npid")$'\n'
        qr+=$(fio_row "nbd+unix:///?socket=$qsock" "$rw" "$bs" "$qd" "$qpid")$'\n'
    done
    res[k$i]=$(printf '%s' "$kr" | median)
    res[n$i]=$(printf '%s' "$nr" | median)
    res[q$i]=$(printf '%s' "$qr" | median)
done

# RSS with every seat attached and reading.
jobs=$work/seats.fio
{
    echo "[global]"; echo "ioengine=nbd"; echo "rw=randread"; echo "bs=64k"; echo "iodepth=4"
    echo "time_based"; echo "runtime=6"; echo "size=${SIZE_MIB}M"
    for i in $(seq 1 "$SEATS"); do echo "[s$i]"; echo "uri=nbd+unix:///seat/s$i?socket=$ksock"; done
} >"$jobs"
rss_idle=$(awk '/VmRSS/ {print $2}' "/proc/$kpid/status")
fio "$jobs" --output-format=terse >/dev/null 2>&1 &
fiopid=$!
sleep 4
rss_busy=$(awk '/VmRSS/ {print $2}' "/proc/$kpid/status")
wait "$fiopid" || true

printf '\nKhoi NBD benchmark: %s MiB image, median of %s rotating %s s runs per row, fio nbd engine, unix sockets, %s\n' \
    "$SIZE_MIB" "$REPS" "$RUNTIME" "$(date -u +%F)"
printf '%-24s | %18s | %18s | %18s | %9s | %9s\n' "row (IOPS, MiB/s)" "khoi" "nbdkit+cow" "qemu-nbd+qcow2" "k/nbdkit" "k/qemu"
printf '%s\n' "-------------------------+--------------------+--------------------+--------------------+-----------+----------"
for i in "${!rows[@]}"; do
    read -r ki kb kc <<<"${res[k$i]}"
    read -r ni nb nc <<<"${res[n$i]}"
    read -r qi qb qc <<<"${res[q$i]}"
    printf '%-24s | %8s %9s | %8s %9s | %8s %9s | %8.2fx | %8.2fx\n' "${labels[$i]}" \
        "$ki" "$kb" "$ni" "$nb" "$qi" "$qb" \
        "$(awk -v a="$ki" -v b="$ni" 'BEGIN{print (b>0)?a/b:0}')" \
        "$(awk -v a="$ki" -v b="$qi" 'BEGIN{print (b>0)?a/b:0}')"
done
printf '\nserver CPU seconds per GiB moved (lower is better)\n'
for i in "${!rows[@]}"; do
    read -r _ _ kc <<<"${res[k$i]}"; read -r _ _ nc <<<"${res[n$i]}"; read -r _ _ qc <<<"${res[q$i]}"
    printf '%-24s | khoi %6s | nbdkit %6s | qemu-nbd %6s\n' "${labels[$i]}" "$kc" "$nc" "$qc"
done
bitmap_kib=$(( (SIZE_MIB * 256 * 2 / 8 + 1023) / 1024 ))
printf '\nKhoi RSS: %s KiB idle, %s KiB with %s seats reading; %s KiB per seat (bitmap share %s KiB)\n' \
    "$rss_idle" "$rss_busy" "$SEATS" "$(( (rss_busy - rss_idle) / SEATS ))" "$bitmap_kib"
