#!/usr/bin/env bash
# The whole test suite: installs the real peers the tests drive, checks
# formatting and lints, then runs every unit, property and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    # nextest does not run doctests.
    cargo test --workspace --doc
else
    cargo test --workspace --no-fail-fast
fi
