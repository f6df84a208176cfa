#!/usr/bin/env bash
# Installs what this project needs on a fresh machine (Debian + Rust toolchain + Python 3.11).
# Idempotent: each step is skipped when its result is already there.
#   - Debian packages: mosquitto (benchmark peer, upstream tests), iproute2/util-linux (netns)
#   - a Python venv at .venv with ONNX Runtime (its shared library is what `ort` loads),
#     numpy/scipy/onnx (model training), asyncua (independent OPC UA client in tests) and
#     azure-iot-device (Azure's unmodified Python module SDK, for the migration tests)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        say "apt-get install ${need_apt[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        say "missing Debian packages (${need_apt[*]}); run as root or install them"
    fi
fi

PY_REQS=(numpy==2.4.6 scipy==1.17.1 onnx==1.23.2 onnxruntime==1.31.1 asyncua==2.1.0
         azure-iot-device==2.14.0)
stamp=.venv/.reqs
want="${PY_REQS[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "python venv .venv (${PY_REQS[*]})"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "${PY_REQS[@]}"
    echo "$want" > "$stamp"
fi

ORT=$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1 || true)
if [ -z "$ORT" ]; then
    say "ONNX Runtime shared library not found in .venv"; exit 1
fi
# scripts that source this file get ORT_DYLIB_PATH
echo "export ORT_DYLIB_PATH=$ORT" > .venv/env.sh
say "ok (ORT_DYLIB_PATH=$ORT)"
