#!/usr/bin/env bash
# Gateway overhead benchmark, in one go: installs LiteLLM's proxy into a venv if missing,
# builds the benchmark, and runs the direct upstream, the gateway and LiteLLM in one process
# run (see README.md). Extra arguments go to gateway_bench (e.g. --seconds 5).
set -euo pipefail
cd "$(dirname "$0")/../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sortition/target}"
VENV="${LITELLM_VENV:-$HOME/.cache/sortition/litellm-venv}"

if [ ! -x "$VENV/bin/litellm" ]; then
    echo "installing litellm[proxy] into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet 'litellm[proxy]'
fi
echo "LiteLLM $("$VENV/bin/pip" show litellm 2>/dev/null | awk '/^Version/ {print $2}')" >&2

cargo build --release -p sortition-devnet --example gateway_bench >&2
echo "rustc processes running now: $(pgrep -c rustc || true); load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "$CARGO_TARGET_DIR/release/examples/gateway_bench" --litellm "$VENV/bin/litellm" "$@"
