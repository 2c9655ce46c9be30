#!/usr/bin/env bash
# The test command. Installs what the tests need (PostgreSQL from Debian, the default models,
# the OpenAI Python SDK), then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sortition"
export SORTITION_MODEL_CACHE="${SORTITION_MODEL_CACHE:-$CACHE/models}"
mkdir -p "$CACHE"

echo "== PostgreSQL (for the gateway's shared-store tests)"
SORTITION_TEST_PG_URL="$(bash scripts/pg.sh | tail -n 1)"
export SORTITION_TEST_PG_URL

echo "== client libraries for the OpenAI-compatibility tests"
# The OpenAI Python SDK, LangChain, litellm and LlamaIndex, in a virtual environment of their
# own (litellm's pins would otherwise fight the system's packages), and the OpenAI Node SDK.
VENV="$CACHE/compat-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c 'import openai, langchain_openai, litellm, llama_index.llms.openai_like' 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    'openai>=1.50,<3' 'langchain-openai>=0.3,<2' 'litellm>=1.50,<2' 'llama-index-llms-openai-like>=0.3,<1'
fi
export SORTITION_COMPAT_PYTHON="$VENV/bin/python"
if command -v npm >/dev/null; then
  if [ ! -d "$CACHE/npm/node_modules/openai" ]; then
    mkdir -p "$CACHE/npm"
    npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" 'openai@^5'
  fi
  export OPENAI_NODE_SDK="$CACHE/npm/node_modules/openai"
fi

echo "== build (the test build also builds the sortition binary, with the same features)"
cargo test --locked --workspace --no-run

BIN="${CARGO_TARGET_DIR:-target}/debug/sortition"
echo "== default models"
"$BIN" model pull smollm2-135m-instruct
"$BIN" model pull all-minilm-l6-v2

echo "== tests"
cargo test --locked --workspace -- --test-threads 2
