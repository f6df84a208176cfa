#!/usr/bin/env bash
# The test command: set up what is missing, build every target once, run every test in
# parallel (nextest when present, else cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
source .venv/env.sh
export EDGE_PYTHON="$PWD/.venv/bin/python"
cargo build --workspace --all-targets --locked
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
    # nextest does not run doctests
    cargo test --workspace --doc --locked
else
    cargo test --workspace --locked --no-fail-fast
fi
