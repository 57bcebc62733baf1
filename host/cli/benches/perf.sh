#!/usr/bin/env bash
# Performance where users live, against a release `bsm serve` on 127.0.0.1
# with the shipped BSM agents and the local OpenAI-protocol stub. One run
# prints every row of BENCHMARKS.md's "Where users live" section:
#
#  idle      RSS after start with the BSM agents loaded, and CPU idle
#  latency   POST /api/agents/run (code-review-agent) with the stub at
#            0/50/200/1000 ms and 50/500/2000 connections: requests/s,
#            p50/p99, errors, server RSS (peak during the row) and CPU
#            (cores), next to the bound connections/latency
#  fairness  hello-agent p99 alone, then beside a plugin spinning at its
#            max-concurrent (two runs of 1.5 s back to back), same run
#  fanout    POST /api/orchestrator/run?wait=true pull_request.opened (four
#            agents + decision + report) at 10 and 50 connections, 0 ms LLM
#
#   host/cli/benches/perf.sh                 (needs wrk and curl)
#   ONLY="idle fanout" host/cli/benches/perf.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
ONLY=${ONLY:-idle latency fairness fanout}
DURATION=${DURATION:-10}
LATENCIES=${LATENCIES:-0 50 200 1000}
CONNECTIONS=${CONNECTIONS:-50 500 2000}
cargo build --release -p bsm-cli --bin bsm --example llm_stub -q
BSM=$PWD/target/release/bsm
STUB=$PWD/target/release/examples/llm_stub
OUT=$(ls -td target/release/build/bsm-cli-*/out/plugins | head -1)
. host/cli/benches/lib.sh
bench_init

# wrk_row CONNS SECONDS PATH BODY -> sets RPS P50 P99 ERRORS CORES PEAK_MB
wrk_row() {
  local conns=$1 secs=$2 path=$3 body=$4 threads=2
  [ "$conns" -lt 2 ] && threads=1
  local before; before=$(cpu_ticks "$SERVER_PID")
  PEAK_MB=$(rss_mb "$SERVER_PID")
  ( while kill -0 "$SERVER_PID" 2>/dev/null; do echo "$(rss_mb "$SERVER_PID")" >> "$work/rss"; sleep 0.5; done ) &
  local sampler=$!
  BODY=$body wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 30s --latency -s "$work/post.lua" "$URL$path" > "$work/wrk.out"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  local after; after=$(cpu_ticks "$SERVER_PID")
  PEAK_MB=$(sort -n "$work/rss" | tail -1); rm -f "$work/rss"
  RPS=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/wrk.out")
  P50=$(awk '$1=="50%" {print $2}' "$work/wrk.out")
  P99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
  local non2xx sock
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out"); non2xx=${non2xx:-0}
  sock=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' "$work/wrk.out"); sock=${sock:-0}
  ERRORS=$((non2xx + sock))
  CORES=$(awk -v a="$before" -v b="$after" -v t="$TICK" -v s="$secs" 'BEGIN {printf "%.2f", (b-a)/t/s}')
}

AGENT='{"agentId":"code-review-agent","input":"Review PR 1"}'
JOB='{"event":"pull_request.opened","payload":{"pull_request":{"number":1}}}'

if [[ " $ONLY " == *" idle "* ]]; then
  start_server
  sleep 2
  echo "idle RSS after start with the BSM agents loaded: $(rss_mb "$SERVER_PID") MB"
  before=$(cpu_ticks "$SERVER_PID"); sleep 10; after=$(cpu_ticks "$SERVER_PID")
  echo "idle CPU over 10 s: $(awk -v a="$before" -v b="$after" -v t="$TICK" 'BEGIN {printf "%.1f", 100*(b-a)/t/10}')% of a core"
  curl -s "$URL/api/agents" -o /dev/null
  stop "$SERVER_PID"
fi

if [[ " $ONLY " == *" latency "* ]]; then
  echo
  echo "| LLM latency | connections | bound (conn/latency) | requests/s | % of bound | p50 | p99 | errors | server RSS peak | server CPU (cores) | req/s per CPU-second | provider limit after |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for latency in $LATENCIES; do
    start_stub "$latency"
    start_server
    for conns in $CONNECTIONS; do
      # Warm up (the provider's limit adapts, pools fill), then measure.
      # wrk counts answers from its first second on: at a latency of L the
      # first answers come after L, so each row lasts at least 30 L.
      warm=$(( latency * 12 / 1000 )); [ "$warm" -lt 5 ] && warm=5
      secs=$(( latency * 30 / 1000 )); [ "$secs" -lt "$DURATION" ] && secs=$DURATION
      wrk_row "$conns" "$warm" /api/agents/run "$AGENT"
      wrk_row "$conns" "$secs" /api/agents/run "$AGENT"
      if [ "$latency" -eq 0 ]; then bound="-"; pct="-"; else
        bound=$(( conns * 1000 / latency )); pct=$(awk -v r="$RPS" -v b="$bound" 'BEGIN {printf "%.0f%%", 100*r/b}'); fi
      per_cpu=$(awk -v r="$RPS" -v c="$CORES" 'BEGIN {if (c > 0) printf "%.0f", r/c; else print "-"}')
      limit=$(curl -s "$URL/api/metrics" | grep -o '"concurrencyLimit":[0-9]*' | head -1 | cut -d: -f2)
      echo "| ${latency} ms | $conns | $bound | $RPS | $pct | $P50 | $P99 | $ERRORS | ${PEAK_MB} MB | $CORES | $per_cpu | $limit |"
    done
    stop "$SERVER_PID"
    stop "$STUB_PID"
  done
fi

if [[ " $ONLY " == *" fairness "* ]]; then
  mkdir -p "$work/plugins"
  cp "$OUT"/shipped/* "$work/plugins/"
  cp "$OUT/test/spin-loop.wasm" "$work/plugins/spinner.wasm"
  cat > "$work/plugins/spinner.toml" <<'TOML'
id = "spinner"
version = "1.0.0"
kind = "agent"
[budget]
timeout-ms = 1500
memory-mb = 16
max-concurrent = 2
max-queued = 0
TOML
  start_server BSM_PLUGINS_DIR="$work/plugins"
  HELLO='{"agentId":"hello-agent","input":"load"}'
  echo
  echo "| hello-agent, 50 connections | requests/s | p50 | p99 | errors |"
  echo "|---|---|---|---|---|"
  wrk_row 50 5 /api/agents/run "$HELLO"
  wrk_row 50 "$DURATION" /api/agents/run "$HELLO"
  echo "| alone | $RPS | $P50 | $P99 | $ERRORS |"
  alone_p99=$P99
  for i in 1 2; do
    ( while :; do curl -s -o /dev/null -X POST -H 'content-type: application/json' \
        -d '{"agentId":"spinner","input":"x"}' "$URL/api/agents/run"; done ) &
  done
  sleep 1
  wrk_row 50 "$DURATION" /api/agents/run "$HELLO"
  echo "| beside two runs of a spinning plugin (1.5 s each, back to back) | $RPS | $P50 | $P99 | $ERRORS |"
  echo "p99 ratio (beside / alone): $(awk -v a="$alone_p99" -v b="$P99" 'function ms(x) { if (x ~ /us$/) return x/1000; if (x ~ /ms$/) return x+0; if (x ~ /s$/) return x*1000; return x } BEGIN {printf "%.2f", ms(b)/ms(a)}')"
  stop "$SERVER_PID"
  pkill -P $$ -f "curl" 2>/dev/null || true
  for j in $(jobs -p); do kill "$j" 2>/dev/null || true; done
fi

if [[ " $ONLY " == *" fanout "* ]]; then
  start_stub 0
  start_server
  echo
  echo "| pull_request.opened fan-out, 0 ms LLM | jobs/s | p50 | p99 | errors | server RSS peak | server CPU (cores) |"
  echo "|---|---|---|---|---|---|---|"
  for conns in 10 50; do
    wrk_row "$conns" 5 "/api/orchestrator/run?wait=true" "$JOB"
    wrk_row "$conns" "$DURATION" "/api/orchestrator/run?wait=true" "$JOB"
    echo "| $conns connections | $RPS | $P50 | $P99 | $ERRORS | ${PEAK_MB} MB | $CORES |"
  done
  stop "$SERVER_PID"
  stop "$STUB_PID"
fi
