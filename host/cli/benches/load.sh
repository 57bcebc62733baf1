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
. host/cli/benches/lib.sh
bench_init

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
    BODY=$body wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/post.lua" "$URL$path" | grep -E "Requests/sec|Non-2xx|Socket errors|  50%|  99%"
  else
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$URL$path" | grep -E "Requests/sec|Non-2xx|Socket errors|  50%|  99%"
  fi
  echo "server RSS: $(grep VmRSS /proc/$SERVER_PID/status | awk '{print $2, $3}')"
}

AGENT='{"agentId":"code-review-agent","input":"Review PR 1"}'
JOB='{"event":"pull_request.opened","payload":{"pull_request":{"number":1}}}'
for latency in 0 50; do
  start_stub "$latency"
  echo "#### LLM stub latency ${latency} ms"
  start_server BSM_CONFIG="$work/stream.toml"
  run "GET /health" /health
  run "POST /api/agents/run hello-agent (no LLM)" /api/agents/run '{"agentId":"hello-agent","input":"load"}'
  run "POST /api/agents/run code-review-agent (LLM, streamed)" /api/agents/run "$AGENT"
  run "POST /api/orchestrator/run?wait=true pull_request.opened (4 agents + decision + report)" "/api/orchestrator/run?wait=true" "$JOB"
  stop "$SERVER_PID"
  start_server BSM_CONFIG="$work/json.toml"
  run "POST /api/agents/run code-review-agent (LLM, JSON answers)" /api/agents/run "$AGENT"
  stop "$SERVER_PID"
  stop "$STUB_PID"
done
