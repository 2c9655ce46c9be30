#!/usr/bin/env bash
# Runs the Rust engine bench and the llama.cpp baseline with the same thread count and
# prints the ratios. usage: bench/engine/run.sh [THREADS] [TOKENS]
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${1:-$(nproc)}"
TOKENS="${2:-128}"
PY="${LLAMACPP_PYTHON:-python3}"
export CANDLE_NUM_THREADS="$THREADS" RAYON_NUM_THREADS="$THREADS"

ours=$(cargo run --release -q -p sortition-engine --example engine_bench -- both "$TOKENS")
echo "$ours"
model=$(python3 - <<'PY'
import os, pathlib
root = os.environ.get("SORTITION_MODEL_CACHE") or os.path.join(os.environ["HOME"], ".cache/sortition/models")
print(pathlib.Path(root) / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf")
PY
)
if base=$("$PY" bench/engine/llamacpp.py "$model" "$THREADS" "$TOKENS"); then
  echo "$base"
  python3 - "$ours" "$base" <<'PY'
import re, sys
ours, base = sys.argv[1], sys.argv[2]
def nums(line):
    p = re.search(r"prefill \d+ tok: ([\d.]+)", line).group(1)
    d = re.search(r"decode 1 stream: ([\d.]+)", line).group(1)
    # Ours with prefills, as llama.cpp's sequential streams include theirs.
    a = (re.search(r"([\d.]+) with prefills", line)
         or re.search(r"8 streams[^:]*: ([\d.]+)", line)).group(1)
    return float(p), float(d), float(a)
b = nums(base)
for line in ours.splitlines():
    if "prefill" not in line:
        continue
    o = nums(line)
    name = line.split(":")[0].strip()
    print(f"ratio ours/llama.cpp [{name}]: prefill {o[0]/b[0]:.2f}x | decode 1 stream {o[1]/b[1]:.2f}x | 8-stream aggregate {o[2]/b[2]:.2f}x")
PY
else
  echo "llama.cpp baseline unavailable (install: pip install llama-cpp-python; set LLAMACPP_PYTHON)" >&2
fi
