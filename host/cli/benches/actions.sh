#!/usr/bin/env bash
# The outbox, against a release `bsm serve` on 127.0.0.1 with the shipped
# BSM agents, the local OpenAI-protocol stub (0 ms) and a local receiver.
# One run prints both tables of BENCHMARKS.md's "Actions" section:
#
#  latency   POST /api/agents/run (code-review-agent) at 50 connections,
#            the LLM answering without an action, then (same run, a new
#            server) with `ACTION: review_pr`, each written to the outbox
#            with its run and delivered by the webhook-sink handler to the
#            receiver: requests/s and p50/p99 side by side
#  delivery  actions delivered per second by the dispatcher to the local
#            receiver, while the runs above produce them and until the
#            outbox is drained
#
#   host/cli/benches/actions.sh              (needs wrk and curl)
set -euo pipefail
cd "$(dirname "$0")/../../.."
DURATION=${DURATION:-10}
cargo build --release -p bsm-cli --bin bsm --example llm_stub --example receiver -q
BSM=$PWD/target/release/bsm
STUB=$PWD/target/release/examples/llm_stub
RECEIVER=$PWD/target/release/examples/receiver
OUT=$(ls -td target/release/build/bsm-cli-*/out/plugins | head -1)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
started() { until [ -s "$1" ]; do sleep 0.1; done; head -1 "$1"; }

"$RECEIVER" > "$work/receiver.out" &
RECEIVER_URL=$(started "$work/receiver.out")

mkdir -p "$work/plugins"
cp "$OUT"/shipped/* "$work/plugins/"
cat > "$work/plugins/webhook-sink.toml" <<TOML
id = "webhook-sink"
version = "0.1.0"
kind = "handler"
[capabilities.http]
allowed-hosts = ["$RECEIVER_URL"]
secrets = ["webhook-sink-key"]
[config]
url = "$RECEIVER_URL/hooks/bsm"
signing-secret = "webhook-sink-key"
TOML
cat > "$work/bsm.toml" <<'TOML'
[secrets]
webhook-sink-key = { env = "BENCH_SINK_KEY" }
[actions]
concurrency = 32
[actions.routes]
"*" = "webhook-sink"
TOML

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"agentId":"code-review-agent","input":"Review PR 1"}'
LUA

gauge() { curl -s "$URL/metrics" | awk -v s="$1" '$1 == "bsm_actions{status=\"" s "\"}" {print $2}'; }

row() { # reply
  "$STUB" 0 "$1" > "$work/stub.out" &
  local stub=$!
  local llm; llm=$(started "$work/stub.out")
  rm -f "$work/serve.out"
  BSM_ADDR=127.0.0.1:0 BSM_DATA_DIR="$work/data-$RANDOM" BSM_PLUGINS_DIR="$work/plugins" BSM_CONFIG="$work/bsm.toml" \
    BENCH_SINK_KEY=bench-key-0123456789 BSM_LLM_BASE_URL="$llm" BSM_LLM_MODEL=stub BSM_RATE_LIMIT=0 BSM_LOG=error \
    "$BSM" serve > "$work/serve.out" &
  SERVER=$!
  URL=$(started "$work/serve.out" | sed 's/listening on //')
  wrk -t2 -c50 -d5s -s "$work/post.lua" "$URL/api/agents/run" > /dev/null # warm-up
  local t0; t0=$(date +%s.%N)
  local before; before=$(gauge delivered); before=${before:-0}
  wrk -t2 -c50 -d"${DURATION}s" --latency -s "$work/post.lua" "$URL/api/agents/run" > "$work/wrk.out"
  RPS=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/wrk.out")
  P50=$(awk '$1=="50%" {print $2}' "$work/wrk.out")
  P99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
  while true; do
    local pending=0 s
    for s in queued delivering failed; do pending=$((pending + $(gauge "$s" | cut -d. -f1))); done
    [ "$pending" -eq 0 ] && break
    sleep 0.2
  done
  local t1; t1=$(date +%s.%N)
  local after; after=$(gauge delivered)
  DELIVERED=$(( ${after%.*} - ${before%.*} ))
  DEAD=$(gauge dead)
  RATE=$(awk -v n="$DELIVERED" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n/(b-a)}')
  DRAIN=$(awk -v a="$t0" -v b="$t1" -v d="$DURATION" 'BEGIN {printf "%.1f", (b-a)-d}')
  stop "$SERVER"; stop "$stub"
}

echo "| /api/agents/run, code-review-agent, 50 connections, 0 ms LLM | requests/s | p50 | p99 |"
echo "|---|---|---|---|"
row "Reviewed: looks good to me."
echo "| no action | $RPS | $P50 | $P99 |"
row "Reviewed: looks good to me.
ACTION: review_pr"
echo "| one action per run (outbox write with the run; delivered meanwhile) | $RPS | $P50 | $P99 |"
echo
echo "| dispatcher → webhook-sink → local receiver | actions delivered | delivered/s (production + drain) | drain after the load | dead |"
echo "|---|---|---|---|---|"
echo "| concurrency 32 | $DELIVERED | $RATE | ${DRAIN} s | ${DEAD:-0} |"
