# Helpers shared by bench-nbd.sh and bench-iscsi.sh (sourced, not run).

# The khoi binary to measure: $KHOI_BIN, else a release build of this tree.
khoi_binary() {
    if [ -n "${KHOI_BIN:-}" ]; then
        echo "$KHOI_BIN"
    else
        cargo build --release --bin khoi >&2
        echo "${CARGO_TARGET_DIR:-$PWD/target}/release/khoi"
    fi
}

# A free TCP port on loopback.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 never opened" >&2; return 1
}

# CPU ticks (user + system, all threads) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# The median (by IOPS) of "iops MiB/s cpu" lines on stdin.
median() { sort -n | awk '{l[NR] = $0} END {print l[int((NR + 1) / 2)]}'; }
