#!/usr/bin/env bash
# From `bsm plugin new` to the first answer of the new agent from a running
# server, following docs/PLUGIN-GUIDE.md: new, cargo build --release,
# bsm plugins install, POST /api/agents/run. Command time only (no typing).
#
#  cold   the first plugin on this machine: its dependencies (the SDK,
#         wit-bindgen) compile with it
#  warm   a second plugin with the dependencies already compiled
#         (CARGO_TARGET_DIR shared, as the guide suggests for several plugins)
#
# Also prints the lines of the generated agent and the component's size.
#
#   host/cli/benches/first_answer.sh          (needs curl)
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build -p bsm-cli --bin bsm --example llm_stub -q
BSM=$PWD/target/debug/bsm
STUB=$PWD/target/debug/examples/llm_stub
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# The first line a background process ($2) prints; fails if it exits first.
started() {
  until [ -s "$1" ]; do
    kill -0 "$2" 2>/dev/null || { echo "it stopped: $(cat "$work"/*.err 2>/dev/null)" >&2; exit 1; }
    sleep 0.1
  done
  head -1 "$1"
}

"$STUB" 0 "Hello from the LLM." > "$work/stub.out" 2> "$work/stub.err" &
export BSM_LLM_BASE_URL=$(started "$work/stub.out" $!) BSM_LLM_MODEL=stub
export BSM_ADMIN_TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
BSM_ADDR=127.0.0.1:0 BSM_DATA_DIR="$work/data" BSM_LOG=warn "$BSM" serve > "$work/serve.out" 2> "$work/serve.err" &
SERVER=$(started "$work/serve.out" $! | sed 's/^listening on //')

now() { date +%s.%N; }
first_answer() { # NAME: prints seconds from new to answer
  local name=$1 t0 t1
  t0=$(now)
  (cd "$work" && "$BSM" plugin new "$name" > /dev/null)
  (cd "$work/$name" && cargo build --release -q)
  local crate=${name//-/_}
  local target=${CARGO_TARGET_DIR:-$work/$name/target}
  "$BSM" plugins install "$target/wasm32-wasip2/release/$crate.wasm" \
    --manifest "$work/$name/plugin.toml" --server "$SERVER" > /dev/null
  answer=$(curl -sf "$SERVER/api/agents/run" -H 'content-type: application/json' \
    -d "{\"agentId\": \"$name\", \"input\": \"Hello?\"}")
  t1=$(now)
  echo "$answer" | grep -q 'Hello from the LLM.' || { echo "unexpected answer: $answer" >&2; exit 1; }
  echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}'
}

export CARGO_TARGET_DIR="$work/shared-target"
cold=$(first_answer first-agent)
warm=$(first_answer second-agent)
lines=$(grep -cv '^\s*\(//.*\)\?$' "$work/first-agent/src/lib.rs")
size=$(stat -c %s "$CARGO_TARGET_DIR/wasm32-wasip2/release/first_agent.wasm")
echo "cold (dependencies compiled too): ${cold} s"
echo "warm (dependencies already compiled): ${warm} s"
echo "generated agent: ${lines} lines of code (src/lib.rs, without comments and blank lines); component ${size} bytes"
