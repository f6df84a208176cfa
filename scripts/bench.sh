#!/usr/bin/env bash
# The benchmark command: builds in release mode, runs every benchmark (ours and the peers:
# Mosquitto, a bare rumqttd, Python onnxruntime) and writes bench/results.json and
# bench/results.md (also printed).
#   scripts/bench.sh [--quick]      # --quick: under 5 minutes on 2 cores after the build
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[bench] %s\n' "$*" >&2; }

scripts/setup.sh
# shellcheck disable=SC1091
source .venv/env.sh

say "cargo build --release --workspace --bins --examples"
cargo build --release --workspace --bins --examples
# The criterion benches edge-bench runs, built now so that their build is not timed. One
# package at a time, as edge-bench runs them: cargo resolves features per invocation.
for pb in edge-route:route edge-store:store feature-pipeline:features edge-agent:reconcile onnx-scoring:score; do
    say "cargo bench --no-run -p ${pb%%:*} --bench ${pb##*:}"
    cargo bench -q --no-run -p "${pb%%:*}" --bench "${pb##*:}"
done

say "target/release/edge-bench $*"
exec target/release/edge-bench "$@"
