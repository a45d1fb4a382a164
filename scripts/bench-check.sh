#!/usr/bin/env bash
# Image gate benchmark (not a test): how long `khoi image check` takes on a
# large image. Builds a sparse disk with mkntfs and writes the files through
# ntfs-3g (FUSE), then times the check (best of three) and prints its stats
# (bytes and reads it did: the check reads metadata and the files it needs,
# not the image).
#
# Usage: ./scripts/bench-check.sh [NTFS_MIB (65536)] [FILES (100000)]
# Needs: ntfs-3g, libhivex-bin, libwin-hivex-perl, sqlite3, fdisk (setup.sh test).
# Building 100,000 files through FUSE takes minutes; the check itself is the figure.
set -euo pipefail
cd "$(dirname "$0")/.."
export KHOI_BENCH_NTFS_MIB=${1:-65536}
export KHOI_BENCH_FILES=${2:-100000}
# Optimised: the figure is the release build's.
exec cargo test --release -p khoi-inspect --test bench -- --ignored --nocapture check_time_big_image
