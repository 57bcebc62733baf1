#!/usr/bin/env bash
# Load test of `bsm serve` with wrk, against the local OpenAI-protocol stub
# answering at 0 ms and at 50 ms. Prints requests/s, latency percentiles,
# errors and the server's RSS. Everything listens on 127.0.0.1 only.
#
#   host/cli/benches/load.sh            (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/../../.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
cargo build --release -p bsm-cli --bin bsm --example llm_stub -q
BSM=$PWD/target/release/bsm
STUB=$PWD/target/release/examples/llm_stub
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/run.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = os.getenv("BODY")
LUA
# The same provider without server-sent events (plain JSON answers).
cat > "$work/json.toml" <<'TOML'
[[llm.providers]]
name = "default"
base-url = "http://127.0.0.1:1/v1"
default-model = "stub"
stream = false
TOML
touch "$work/stream.toml"

run() { # name path [body]
  local name=$1 path=$2 body=${3:-}
  echo "== $name ($CONNECTIONS connections, $DURATION)"
  if [ -n "$body" ]; then
    BODY=$body wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/run.lua" "$URL$path" | grep -E "Requests/sec|Non-2xx|Socket errors|  50%|  99%"
  else
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$URL$path" | grep -E "Requests/sec|Non-2xx|Socket errors|  50%|  99%"
  fi
  echo "server RSS: $(grep VmRSS /proc/$SERVER_PID/status | awk '{print $2, $3}')"
}

start_server() { # config
  rm -f "$work/serve.out"
  BSM_ADDR=127.0.0.1:0 BSM_DATA_DIR="$work/data-$RANDOM" BSM_BSM_DIR="${BSM_BSM_DIR:-examples/bsm}" BSM_CONFIG="$1" \
    BSM_LLM_BASE_URL="$LLM" BSM_LLM_MODEL=stub BSM_RATE_LIMIT=0 BSM_LOG=error \
    "$BSM" serve > "$work/serve.out" &
  SERVER_PID=$!
  until grep -q listening "$work/serve.out" 2>/dev/null; do sleep 0.1; done
  URL=$(sed 's/listening on //' "$work/serve.out" | head -1)
}

stop_server() {
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
}

AGENT='{"agentId":"code-review-agent","input":"Review PR 1"}'
JOB='{"event":"pull_request.opened","payload":{"pull_request":{"number":1}}}'
for latency in 0 50; do
  rm -f "$work/stub.out"
  "$STUB" "$latency" > "$work/stub.out" &
  STUB_PID=$!
  until [ -s "$work/stub.out" ]; do sleep 0.1; done
  LLM=$(head -1 "$work/stub.out")
  echo "#### LLM stub latency ${latency} ms"
  start_server "$work/stream.toml"
  run "GET /health" /health
  run "POST /api/agents/run hello-agent (no LLM)" /api/agents/run '{"agentId":"hello-agent","input":"load"}'
  run "POST /api/agents/run code-review-agent (LLM, streamed)" /api/agents/run "$AGENT"
  run "POST /api/orchestrator/run?wait=true pull_request.opened (4 agents + decision + report)" "/api/orchestrator/run?wait=true" "$JOB"
  stop_server
  start_server "$work/json.toml"
  run "POST /api/agents/run code-review-agent (LLM, JSON answers)" /api/agents/run "$AGENT"
  stop_server
  kill "$STUB_PID"; wait "$STUB_PID" 2>/dev/null || true
done
