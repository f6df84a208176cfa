#!/usr/bin/env bash
# The demo: edged runs deployment.json on Tennessee Eastman data with a simulated DCS, all on
# this machine and offline. A live view shows modules, routes, the model's scores, DCS writes
# and health; it ends by itself when the replay is done (or on Ctrl-C) with a summary.
#
#   scripts/demo.sh            # six TEP test runs (normal + five faults) at 36000x real time
#   DEMO_RUNS="d00_te d01_te d06_te" scripts/demo.sh     # other runs
#   DEMO_SPEED=0 scripts/demo.sh                         # as fast as the pipeline accepts
#   DEMO_PROFILE=dev scripts/demo.sh                     # use the debug build (the smoke test does)
#   DEMO_SKIP_BUILD=1, DEMO_DIR=DIR, DEMO_SECONDS=N      # (the smoke test sets these too)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
scripts/setup.sh
# shellcheck disable=SC1091
source .venv/env.sh

PROFILE=${DEMO_PROFILE:-release}
if [ "$PROFILE" = release ]; then BIN=$ROOT/target/release; else BIN=$ROOT/target/debug; fi
if [ -z "${DEMO_SKIP_BUILD:-}" ]; then
    echo "[demo] building ($PROFILE)..." >&2
    cargo build --profile "$PROFILE" --workspace --bins --locked -q
fi

DEMO=${DEMO_DIR:-$ROOT/.demo}
rm -rf "$DEMO"; mkdir -p "$DEMO/data"
pids=()
cleanup() {
    if [ -n "${EDGED_PID:-}" ] && kill -0 "$EDGED_PID" 2>/dev/null; then
        kill -TERM "$EDGED_PID" 2>/dev/null || true
        wait "$EDGED_PID" 2>/dev/null || true
    fi
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DCS_URL=""
if [ -x "$BIN/dcs-sim" ] && grep -q '"opcua-writer"' deployment.json; then
    "$BIN/dcs-sim" --port 0 --remote-enable --data-dir "$DEMO/dcs" > "$DEMO/dcs.out" 2> "$DEMO/dcs.log" &
    pids+=($!)
    # It prints its URL once listening (first start makes its certificate: seconds in a debug
    # build on a loaded machine). Wait while it lives, up to 60 s.
    for _ in $(seq 1 1200); do
        DCS_URL=$(head -n1 "$DEMO/dcs.out" 2>/dev/null || true)
        [ -n "$DCS_URL" ] && break
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    [ -n "$DCS_URL" ] || { echo "[demo] dcs-sim did not start; see $DEMO/dcs.log" >&2; exit 1; }
    echo "[demo] simulated DCS at $DCS_URL" >&2
fi

# The demo's copy of deployment.json: absolute working dirs, the DCS endpoint, the runs.
DCS_URL="$DCS_URL" DEMO_RUNS="${DEMO_RUNS:-d00_te d01_te d02_te d04_te d06_te d07_te}" \
    DEMO_SPEED="${DEMO_SPEED:-36000}" ROOT="$ROOT" python3 - "$DEMO/deployment.json" <<'PY'
import json, os, sys
root = os.environ["ROOT"]
d = json.load(open(os.path.join(root, "deployment.json")))
mc = d["modulesContent"]
for m in mc["$edgeAgent"]["properties.desired"]["modules"].values():
    s = m.setdefault("settings", {})
    wd = s.get("workingDir", ".")
    s["workingDir"] = os.path.normpath(os.path.join(root, wd))
runs = os.environ["DEMO_RUNS"].split()
if runs and "historian-ingest" in mc:
    mc["historian-ingest"]["properties.desired"]["source"]["files"] = [f"data/tep/{r}.dat" for r in runs]
url = os.environ["DCS_URL"]
if url and "opcua-writer" in mc:
    mc["opcua-writer"]["properties.desired"]["endpoint"] = url
speed = os.environ.get("DEMO_SPEED", "")
if speed and "historian-ingest" in mc:
    mc["historian-ingest"]["properties.desired"]["speed"] = float(speed)
json.dump(d, open(sys.argv[1], "w"), indent=2)
PY

EDGED_HUB__LISTEN=127.0.0.1:0 EDGED_METRICS__LISTEN=127.0.0.1:0 EDGED_MODULE_PATH="$BIN" \
    "$BIN/edged" --deployment "$DEMO/deployment.json" --data-dir "$DEMO/data" 2> "$DEMO/edged.log" &
EDGED_PID=$!
for _ in $(seq 1 400); do
    [ -f "$DEMO/data/endpoints.json" ] && break
    kill -0 "$EDGED_PID" 2>/dev/null || { echo "[demo] edged exited; see $DEMO/edged.log" >&2; exit 1; }
    sleep 0.05
done
echo "[demo] edged: $(cat "$DEMO/data/endpoints.json")" >&2

PLAIN=()
[ -t 1 ] || PLAIN=(--plain --interval-ms 2000)
"$BIN/edgectl" --data-dir "$DEMO/data" top --exit-when-idle 3 --fault-onset 161 --normal-run d00_te \
    --max-seconds "${DEMO_SECONDS:-600}" "${PLAIN[@]}"
echo "[demo] data dir: $DEMO/data (edgectl --data-dir $DEMO/data …), edged log: $DEMO/edged.log"
