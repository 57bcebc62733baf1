#!/usr/bin/env bash
# The cost of the trust boundaries, against a release `bsm serve` on
# 127.0.0.1. One run prints both tables of BENCHMARKS.md's "Trust" section:
#
#  auth      POST /api/agents/run (hello-agent: no LLM, so the check is not
#            hidden behind a model's latency) at 50 connections: open mode
#            (no key exists) then, on the same server, with an API key in
#            `Authorization: Bearer`; requests/s and p50/p99
#  clients   1,000,000 requests from 100,000 distinct client addresses
#            (X-Forwarded-For from a trusted proxy, rate limiting on at its
#            defaults): server RSS and the rate limiter's tracked clients
#            after each slice, then after the quiet clients are pruned
#
#   host/cli/benches/trust.sh                (needs wrk and curl)
#   ONLY=auth host/cli/benches/trust.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
ONLY=${ONLY:-auth clients}
DURATION=${DURATION:-10}
cargo build --release -p bsm-cli --bin bsm --example llm_stub -q
BSM=$PWD/target/release/bsm
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

start_server() { # data dir, extra env...
  local data=$1; shift
  rm -f "$work/serve.out"
  env BSM_ADDR=127.0.0.1:0 BSM_DATA_DIR="$data" BSM_LOG=error "$@" "$BSM" serve > "$work/serve.out" &
  SERVER_PID=$!
  until grep -q listening "$work/serve.out" 2>/dev/null; do sleep 0.1; done
  URL=$(sed 's/listening on //' "$work/serve.out" | head -1)
}

# wrk_row SCRIPT PATH -> RPS P50 P99 ERRORS REQUESTS
wrk_row() {
  wrk -t2 -c50 -d"${DURATION}s" --latency -s "$1" "$URL$2" > "$work/wrk.out"
  RPS=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/wrk.out")
  P50=$(awk '$1=="50%" {print $2}' "$work/wrk.out")
  P99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
  REQUESTS=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out")
  ERRORS=${non2xx:-0}
}

if [[ " $ONLY " == *" auth "* ]]; then
  data="$work/auth"
  start_server "$data" BSM_RATE_LIMIT=0
  cat > "$work/run.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"agentId":"hello-agent","input":"load"}'
local key = os.getenv("KEY")
if key and key ~= "" then wrk.headers["authorization"] = "Bearer " .. key end
LUA
  echo "| /api/agents/run, hello-agent, 50 connections | requests/s | p50 | p99 | errors |"
  echo "|---|---|---|---|---|"
  KEY="" wrk_row "$work/run.lua" /api/agents/run
  KEY="" wrk_row "$work/run.lua" /api/agents/run
  echo "| open mode (no key exists) | $RPS | $P50 | $P99 | $ERRORS |"
  KEY=$(BSM_DATA_DIR="$data" "$BSM" keys create bench --context api --scope run 2>/dev/null)
  sleep 2.5 # the server's key lookups expire
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -d '{"agentId":"hello-agent","input":"x"}' "$URL/api/agents/run")
  [ "$code" = 401 ] || { echo "expected 401 without the key, got $code" >&2; exit 1; }
  KEY=$KEY wrk_row "$work/run.lua" /api/agents/run
  echo "| API key (Bearer, SHA-256 + constant-time compare, cached lookup) | $RPS | $P50 | $P99 | $ERRORS |"
  stop "$SERVER_PID"
fi

if [[ " $ONLY " == *" clients "* ]]; then
  start_server "$work/clients" BSM_TRUSTED_PROXIES=127.0.0.1 BSM_RATE_LIMIT_PRUNE_MS=10000
  cat > "$work/clients.lua" <<'LUA'
local n = 0
offset = 0
function setup(thread) thread:set("offset", offset); offset = offset + 50000 end
function request()
  n = n + 1
  local i = (offset + n) % 100000
  local ip = string.format("10.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", "/health", { ["x-forwarded-for"] = ip })
end
LUA
  clients() { curl -s "$URL/metrics" | awk '/^bsm_rate_limiter_clients/ {print $2}'; }
  echo
  echo "| requests so far (100,000 client addresses) | server RSS | limiter clients | errors in slice |"
  echo "|---|---|---|---|"
  echo "| 0 (after start) | $(rss_mb "$SERVER_PID") MB | - | - |"
  total=0
  while [ "$total" -lt 1000000 ]; do
    wrk_row "$work/clients.lua" /health
    total=$((total + REQUESTS))
    echo "| $total | $(rss_mb "$SERVER_PID") MB | $(clients) | $ERRORS |"
  done
  sleep 25 # two prune intervals without traffic
  curl -s "$URL/health" > /dev/null
  echo "| quiet for 25 s (clients pruned) | $(rss_mb "$SERVER_PID") MB | $(clients) | - |"
  stop "$SERVER_PID"
fi
