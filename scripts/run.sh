#!/usr/bin/env bash
# Run Khoi on its embedded default: state and data under ./var/khoi, every
# listener on 127.0.0.1. Extra arguments go to `khoi serve` (e.g. --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh run
cargo build --release --bin khoi
exec ./target/release/khoi serve "$@"
