# Shared by the load scripts beside it (sourced, not run): a scratch
# directory, the stub LLM and `bsm serve` started the same way everywhere,
# so that two scripts' figures differ only in what they measure.
#
# After `bench_init`: $work (removed on exit, with every background job),
# $TICK (clock ticks per second), $work/post.lua (wrk: POST $BODY as JSON).

# Where a script notes when it deleted its data: on ext4 without a journal
# (this machine's root) a new file skips, one lookup each, every inode
# freed in the last one to six minutes, so a fan-out (a report file per
# job) right after another run's clean-up is slower (BENCHMARKS.md, the
# eleventh pass).
CLEANUP_STAMP=${TMPDIR:-/tmp}/bsm-bench-cleanup.stamp

bench_init() {
  work=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"; touch "$CLEANUP_STAMP"' EXIT
  if [ -e "$CLEANUP_STAMP" ]; then
    local ago=$(( $(date +%s) - $(stat -c %Y "$CLEANUP_STAMP") ))
    [ "$ago" -ge 360 ] || echo "note: a benchmark deleted its data ${ago}s ago;" \
      "file creation may be slower for up to 360s (see BENCHMARKS.md)" >&2
  fi
  ulimit -n "$(ulimit -Hn)"
  TICK=$(getconf CLK_TCK)
  cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = os.getenv("BODY")
LUA
}

# start_stub LATENCY_MS: the OpenAI-protocol stub ($STUB) on a free port;
# sets STUB_PID and LLM (its base URL).
start_stub() {
  rm -f "$work/stub.out"
  "$STUB" "$1" > "$work/stub.out" &
  STUB_PID=$!
  until [ -s "$work/stub.out" ]; do sleep 0.1; done
  LLM=$(head -1 "$work/stub.out")
}

# start_server [NAME=VALUE...]: `$BSM serve` on a fresh data directory with
# the shipped BSM agents, the stub at $LLM and rate limiting off, plus (and
# overridden by) the given environment; sets SERVER_PID and URL once it
# listens.
start_server() {
  rm -f "$work/serve.out"
  env BSM_ADDR=127.0.0.1:0 BSM_DATA_DIR="$(mktemp -d "$work/data-XXXXXX")" \
    BSM_BSM_DIR="${BSM_BSM_DIR:-examples/bsm}" BSM_LLM_BASE_URL="${LLM:-http://127.0.0.1:1/v1}" BSM_LLM_MODEL=stub \
    BSM_RATE_LIMIT=0 BSM_LOG=error "$@" "$BSM" serve > "$work/serve.out" &
  SERVER_PID=$!
  until grep -q listening "$work/serve.out" 2>/dev/null; do sleep 0.1; done
  URL=$(sed 's/listening on //' "$work/serve.out" | head -1)
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
