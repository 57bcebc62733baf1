#!/usr/bin/env bash
# Where a request's CPU goes, against this machine's floor: rows that each
# leave out one part of the work, alternated round by round in one run,
# with the stub LLM at 0 ms.
#
#   host/cli/benches/floor.sh agent|fanout [ROUNDS]
#
# `floor` is examples/proxy_floor.rs: the route's LLM completions (one, or
# four at once) and nothing else, on the same HTTP stack and allocator.
# agent (`POST /api/agents/run`, 50 connections): `hello-agent` (a WASM
# run with no LLM call); code-review-agent with neither its knowledge
# search nor an action (the stub's answer names none), without the
# knowledge search, without the action, and as shipped.
# fanout (`POST /api/orchestrator/run?wait=true`, 10 connections): jobs of
# four hello-agents (a job's own bookkeeping, four WASM runs, no LLM); the
# four pull_request agents with no decision and no report; with the
# decision, no report; and `pull_request.opened` as shipped.
# Each row prints requests/s, the server's CPU (cores) and its CPU per
# request (us). Env: DURATION (s, default 8), WARMUP (s, default 3), CONNS,
# BSM (a `bsm` binary to measure; default: target/release/bsm, built).
set -euo pipefail
cd "$(dirname "$0")/../../.."
KIND=${1:-}
ROUNDS=${2:-2}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-3}
case $KIND in
  agent) CONNS=${CONNS:-50} ;;
  fanout) CONNS=${CONNS:-10} ;;
  *) sed -n 2,18p "$0"; exit 2 ;;
esac
if [ -z "${BSM:-}" ]; then
  cargo build --release -p bsm-cli --bin bsm -q
  BSM=$PWD/target/release/bsm
fi
cargo build --release -p bsm-cli --example llm_stub --example proxy_floor -q
FLOOR=$PWD/target/release/examples/proxy_floor
STUB=$PWD/target/release/examples/llm_stub
. host/cli/benches/lib.sh
bench_init

# A second stub whose answer emits no action, and the BSM agents without
# their knowledge directory (nothing to search).
"$STUB" 0 "Reviewed: looks good to me." > "$work/quiet.out" &
until [ -s "$work/quiet.out" ]; do sleep 0.1; done
QUIET=$(head -1 "$work/quiet.out")
cp -r examples/bsm "$work/bsm-no-knowledge"
rm -rf "$work/bsm-no-knowledge/data/knowledge"
NO_KNOWLEDGE=BSM_BSM_DIR=$work/bsm-no-knowledge
start_stub 0

REVIEW='{"agentId":"code-review-agent","input":"Review PR 1"}'
HELLO='{"agentId":"hello-agent","input":"Review PR 1"}'
job() { echo "{\"event\":\"$1\",\"payload\":{\"pull_request\":{\"number\":1}}}"; }
# The fan-out's parts as pipelines of their own.
cat > "$work/pipelines.toml" <<'TOML'
[pipelines."bench.hello"]
agents = ["hello-agent", "hello-agent", "hello-agent", "hello-agent"]
report = false
[pipelines."bench.agents"]
agents = ["governance-review-agent", "code-review-agent", "security-agent", "integrity-agent"]
report = false
[pipelines."bench.decided"]
agents = ["governance-review-agent", "code-review-agent", "security-agent", "integrity-agent"]
decision = "pr-decision"
report = false
TOML
PIPELINES=BSM_CONFIG=$work/pipelines.toml

# row NAME BINARY BODY [NAME=VALUE...]: one measured row.
row() {
  local name=$1 bin=$2 body=$3
  shift 3
  BSM=$bin start_server "$@"
  BODY=$body wrk -t2 -c"$CONNS" -d"${WARMUP}s" -s "$work/post.lua" "$URL$ROUTE" > /dev/null
  local c0 c1
  c0=$(cpu_ticks "$SERVER_PID")
  BODY=$body wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$work/post.lua" "$URL$ROUTE" > "$work/wrk.out"
  c1=$(cpu_ticks "$SERVER_PID")
  local rps non2xx cores
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/wrk.out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out")
  cores=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v s="$DURATION" 'BEGIN {printf "%.2f", (b-a)/t/s}')
  printf '%-32s rps=%-6s cores=%s us_per_request=%s non2xx=%s\n' "$name" "$rps" "$cores" \
    "$(awk -v r="$rps" -v c="$cores" 'BEGIN {printf "%.0f", 1e6*c/r}')" "${non2xx:-0}"
  stop "$SERVER_PID"
  sleep 2
}

for round in $(seq "$ROUNDS"); do
  echo "round $round"
  if [ "$KIND" = agent ]; then
    ROUTE=/api/agents/run
    row floor "$FLOOR" "$REVIEW"
    row hello-agent "$BSM" "$HELLO"
    row review-no-knowledge-no-action "$BSM" "$REVIEW" "$NO_KNOWLEDGE" BSM_LLM_BASE_URL="$QUIET"
    row review-no-knowledge "$BSM" "$REVIEW" "$NO_KNOWLEDGE"
    row review-no-action "$BSM" "$REVIEW" BSM_LLM_BASE_URL="$QUIET"
    row review "$BSM" "$REVIEW"
  else
    ROUTE='/api/orchestrator/run?wait=true'
    row floor "$FLOOR" "$(job pull_request.opened)"
    row four-hello-agents "$BSM" "$(job bench.hello)" "$PIPELINES"
    row four-agents "$BSM" "$(job bench.agents)" "$PIPELINES"
    row four-agents-decided "$BSM" "$(job bench.decided)" "$PIPELINES"
    row pull_request.opened "$BSM" "$(job pull_request.opened)" "$PIPELINES"
  fi
done
