#!/usr/bin/env bash
# Hot swap under load, against a release `bsm serve` on 127.0.0.1:
#  1. wrk on POST /api/agents/run of the `versioned` test plugin, once
#     without swaps and once while a new version is uploaded every 500 ms
#     (requests/s, p50/p99, errors, server RSS; same run, side by side);
#  2. the time from an upload to the first answer of the new version;
#  3. the same as 1 for an LLM-bound plugin (prompt-agent against the local
#     OpenAI-protocol stub answering in ${LLM_MS:-200} ms).
#
#   host/cli/benches/swap.sh            (needs wrk and curl: apt-get install wrk curl)
set -euo pipefail
cd "$(dirname "$0")/../../.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
cargo build --release -p bsm-cli --bin bsm --example llm_stub -q
BSM=$PWD/target/release/bsm
STUB=$PWD/target/release/examples/llm_stub
PROMPT_WASM=$(ls -t target/release/build/bsm-cli-*/out/plugins/shipped/prompt-agent.wasm | head -1)
WASM=$(ls -t target/release/build/bsm-cli-*/out/plugins/test/versioned.wasm | head -1)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

manifest() { # tag
  cat <<TOML
id = "versioned"
version = "$1.0.0"
kind = "agent"
[budget]
max-concurrent = 256
max-queued = 4096
max-queue-wait-ms = 5000
[config]
tag = "$1"
TOML
}

upload() { # tag [id component]
  local id=${2:-versioned} wasm=${3:-$WASM}
  manifest "$1" | sed "s/^id = .*/id = \"$id\"/" > "$work/m.toml"
  curl -sf -X PUT -H "x-admin-token: $TOKEN" -F "component=@$wasm" -F "manifest=@$work/m.toml" \
    "$URL/api/plugins/$id" > /dev/null
}

cat > "$work/run.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"agentId":"versioned","input":"load"}'
LUA

mkdir -p "$work/plugins"
BSM_ADDR=127.0.0.1:0 BSM_DATA_DIR="$work/data" BSM_PLUGINS_DIR="$work/plugins" BSM_ADMIN_TOKEN="$TOKEN" \
  BSM_RATE_LIMIT=0 BSM_LOG=error "$BSM" serve > "$work/serve.out" &
SERVER_PID=$!
until grep -q listening "$work/serve.out" 2>/dev/null; do sleep 0.1; done
URL=$(sed 's/listening on //' "$work/serve.out" | head -1)
upload 1

load() { # name
  echo "== $1 ($CONNECTIONS connections, $DURATION)"
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/run.lua" "$URL/api/agents/run" \
    | grep -E "Requests/sec|Non-2xx|Socket errors|  50%|  99%"
  echo "server RSS: $(grep VmRSS /proc/$SERVER_PID/status | awk '{print $2, $3}')"
}

load "no swaps"
(
  tag=2
  while true; do upload "$tag"; tag=$((tag + 1)); echo "$tag" > "$work/swaps"; sleep 0.5; done
) &
SWAPPER=$!
load "a new version every 500 ms"
kill "$SWAPPER"; wait "$SWAPPER" 2>/dev/null || true
echo "versions installed during the run: $(( $(cat "$work/swaps") - 2 ))"

echo "== upload to first answer of the new version (ms), 20 swaps, no other load"
for tag in $(seq 1000 1019); do
  start=$(date +%s%N)
  upload "$tag"
  until curl -s -H 'content-type: application/json' -d '{"agentId":"versioned","input":"x"}' \
      "$URL/api/agents/run" | grep -q "version $tag"; do :; done
  echo $(( ($(date +%s%N) - start) / 1000000 ))
done | sort -n | awk '{a[NR]=$1} END {print "min", a[1], "median", a[int((NR+1)/2)], "max", a[NR]}'

echo "== LLM-bound: prompt-agent, stub LLM at ${LLM_MS:-200} ms"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
"$STUB" "${LLM_MS:-200}" > "$work/stub.out" &
until [ -s "$work/stub.out" ]; do sleep 0.1; done
rm -f "$work/serve.out"
BSM_ADDR=127.0.0.1:0 BSM_DATA_DIR="$work/data2" BSM_PLUGINS_DIR="$work/plugins" BSM_ADMIN_TOKEN="$TOKEN" \
  BSM_LLM_BASE_URL="$(head -1 "$work/stub.out")" BSM_LLM_MODEL=stub \
  BSM_RATE_LIMIT=0 BSM_LOG=error "$BSM" serve > "$work/serve.out" &
SERVER_PID=$!
until grep -q listening "$work/serve.out" 2>/dev/null; do sleep 0.1; done
URL=$(sed 's/listening on //' "$work/serve.out" | head -1)
upload 1 prompt-agent "$PROMPT_WASM"
cat > "$work/run.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"agentId":"prompt-agent","input":"load"}'
LUA
load "prompt-agent, no swaps"
(
  tag=2
  while true; do upload "$tag" prompt-agent "$PROMPT_WASM"; tag=$((tag + 1)); echo "$tag" > "$work/swaps"; sleep 0.5; done
) &
SWAPPER=$!
load "prompt-agent, a new version every 500 ms"
kill "$SWAPPER"; wait "$SWAPPER" 2>/dev/null || true
echo "versions installed during the run: $(( $(cat "$work/swaps") - 2 ))"
