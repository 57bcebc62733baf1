#!/usr/bin/env bash
# Two (or more) builds of `bsm` under the same load, alternated round by
# round within one run, so that this machine's drift falls on all of them
# alike: what BENCHMARKS.md's "before / after" tables come from.
#
#   host/cli/benches/side_by_side.sh KIND CONNECTIONS ROUNDS BIN...
#
# KIND is `fanout` (POST /api/orchestrator/run?wait=true, pull_request.opened)
# or `agent` (POST /api/agents/run, code-review-agent). BIN is a `bsm`
# binary, e.g. a copy of target/release/bsm built at each commit. Env:
# LATENCY (stub LLM, ms, default 0), DURATION (s, default 10), WARMUP (s,
# default 3). Each round starts each binary on a fresh data directory with
# the shipped BSM agents, and prints requests (or jobs)/s, p99, non-2xx
# answers, the server's CPU (cores) and requests per server CPU-second,
# the machine's context switches/s and busy share, and the server's RSS peak.
set -euo pipefail
cd "$(dirname "$0")/../../.."
[ $# -ge 4 ] || { sed -n 2,16p "$0"; exit 2; }
KIND=$1 CONNS=$2 ROUNDS=$3
shift 3
BINS=("$@")
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
cargo build --release -p bsm-cli --example llm_stub -q
STUB=$PWD/target/release/examples/llm_stub
. host/cli/benches/lib.sh
bench_init

case $KIND in
  fanout)
    BODY='{"event":"pull_request.opened","payload":{"pull_request":{"number":1}}}'
    ROUTE='/api/orchestrator/run?wait=true' ;;
  agent)
    BODY='{"agentId":"code-review-agent","input":"Review PR 1"}'
    ROUTE=/api/agents/run ;;
  *) echo "KIND is fanout or agent" >&2; exit 2 ;;
esac
export BODY
start_stub "${LATENCY:-0}"

busy() { awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }
switches() { awk '/^ctxt/ {print $2}' /proc/stat; }

# Odd rounds run the builds in the order given, even rounds in reverse
# (A B, B A, A B...): on this machine the first server of a round did
# ~10% better than the second whichever build it was, so a fixed order
# favoured the first build given.
for round in $(seq "$ROUNDS"); do
  order=("${BINS[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=()
    for ((i=${#BINS[@]}-1; i>=0; i--)); do order+=("${BINS[$i]}"); done
  fi
  for bin in "${order[@]}"; do
    BSM=$bin start_server
    wrk -t2 -c"$CONNS" -d"${WARMUP}s" -s "$work/post.lua" "$URL$ROUTE" > /dev/null
    cpu0=$(cpu_ticks "$SERVER_PID"); sw0=$(switches); m0=$(busy)
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$work/post.lua" "$URL$ROUTE" > "$work/wrk.out"
    cpu1=$(cpu_ticks "$SERVER_PID"); sw1=$(switches); m1=$(busy)
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/wrk.out")
    p99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out")
    cores=$(awk -v a="$cpu0" -v b="$cpu1" -v t="$TICK" -v s="$DURATION" 'BEGIN {printf "%.2f", (b-a)/t/s}')
    machine=$(echo "$m0 $m1" | awk '{b=$3-$1; i=$4-$2; printf "%.0f%%", 100*b/(b+i)}')
    rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$SERVER_PID/status")
    echo "round $round $(basename "$bin"): rps=$rps p99=$p99 non2xx=${non2xx:-0} cores=$cores" \
      "per_cpu_s=$(awk -v r="$rps" -v c="$cores" 'BEGIN {printf "%.0f", r/c}')" \
      "switches/s=$(( (sw1 - sw0) / DURATION )) machine=$machine rss_peak=${rss}MB"
    stop "$SERVER_PID"
    sleep 2
  done
done
