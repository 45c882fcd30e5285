#!/usr/bin/env bash
# Per-request cost of the gateway under a fixed workload, repeatable on a busy machine:
# N requests one at a time over one keep-alive connection (load/percall.py), streamed and
# whole (20-token replies from an unpaced mock), after a warm-up.
#
#   load/percall.sh callgrind   # instructions per request (valgrind --tool=callgrind)
#   load/percall.sh stat        # context switches and CPU per request (perf stat)
#   load/percall.sh record      # perf record -g of both workloads, folded into $OUT/*.folded
#   load/percall.sh nginx       # CPU per request of nginx and of the gateway, side by side:
#                               # wrk -t1 -c1 (keep-alive, a new question per request) for SECS
#                               # seconds per arm and ROUNDS rounds, each proxy pinned to CPU 0
#                               # (the mock and wrk to CPU 1); needs nginx and wrk
#
# Env: TOLLGATE_BIN (default target/release/tollgate, or $CARGO_TARGET_DIR's), N (200),
# WARM (20), OUT (a temp dir), REDIS_URL (gateway in Redis mode), WORKERS (HTTP workers, 1);
# for `nginx`: SECS (10), ROUNDS (3); for `record`: PERF_CALLGRAPH (perf's call-graph flag, "-g";
# "--call-graph dwarf" gives whole stacks of a build without frame pointers, at a larger file).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-callgrind}
N=${N:-200}
WARM=${WARM:-20}
BIN=${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/tollgate}
OUT=${OUT:-$(mktemp -d /tmp/percall.XXXXXX)}
SECRET=percall-secret
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 600); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1" >&2
  return 1
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

MOCK_PORT=$(free_port)
PIN_MOCK=()
PIN_PROXY=()
if [ "$MODE" = nginx ]; then PIN_MOCK=(taskset -c 1); PIN_PROXY=(taskset -c 0); fi
"${PIN_MOCK[@]}" "$BIN" mock-provider --listen "127.0.0.1:$MOCK_PORT" --tokens 20 --tokens-per-second 0 \
  --first-token-delay-ms 0 >"$OUT/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$MOCK_PORT"

TOKEN=$(TOLLGATE_JWT_SECRET=$SECRET "$BIN" token --sub percall-user --plan pro --ttl 3600)
GW_PORT=$(free_port)
export TOLLGATE_LISTEN=127.0.0.1:$GW_PORT
export TOLLGATE_UPSTREAM_URL=http://127.0.0.1:$MOCK_PORT/v1
export TOLLGATE_JWT_SECRET=$SECRET
export TOLLGATE__SERVER__WORKERS=${WORKERS:-1}
export TOLLGATE__RATE__REQUESTS_PER_MINUTE=1000000
export TOLLGATE__RATE__REQUESTS_PER_DAY=1000000000
export TOLLGATE__RATE__TOKENS_PER_DAY=1000000000000
export TOLLGATE__RATE__MAX_CONCURRENT_STREAMS=1000000
export TOLLGATE__COST__MAX_DAILY_USD=1000000.0
export TOLLGATE__COST__MAX_MONTHLY_USD=1000000.0
export RUST_LOG=info
if [ -n "${REDIS_URL:-}" ]; then
  export TOLLGATE_REDIS_URL=$REDIS_URL TOLLGATE__REDIS__OP_TIMEOUT_MS=5000
fi

case $MODE in
  callgrind)
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.%p" "$BIN" \
      >"$OUT/requests.log" 2>"$OUT/gateway.log" &
    ;;
  *)
    "${PIN_PROXY[@]}" "$BIN" >"$OUT/requests.log" 2>"$OUT/gateway.log" &
    ;;
esac
GW=$!
PIDS+=($GW)
wait_port "$GW_PORT"

if [ "$MODE" = nginx ]; then
  NGINX_PORT=$(free_port)
  sed -e "s#{{PREFIX}}#$OUT#g" -e "s#{{LISTEN}}#127.0.0.1:$NGINX_PORT#" \
    -e "s#{{UPSTREAM}}#127.0.0.1:$MOCK_PORT#" -e "s#{{WORKER_CONNECTIONS}}#1024#" \
    -e "s#{{RLIMIT_NOFILE}}#4096#" load/nginx.conf.template >"$OUT/nginx.conf"
  taskset -c 0 nginx -p "$OUT" -c "$OUT/nginx.conf" -e "$OUT/error.log" &
  NGINX=$!
  PIDS+=($NGINX)
  wait_port "$NGINX_PORT"
  # A POST per request with a question of its own (counter), as load/percall.py sends.
  cat >"$OUT/post.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  local body = '{"model":"mock-gpt","stream":STREAM,"max_tokens":20,"messages":[' ..
    '{"role":"system","content":"You are a helpful support assistant."},' ..
    '{"role":"user","content":"hello there, how do I reset my password? (' .. RUN .. '-' .. counter .. ')"}]}'
  return wrk.format("POST", "/v1/chat/completions", {
    ["Authorization"] = "Bearer $TOKEN", ["Content-Type"] = "application/json"}, body)
end
LUA
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  # arm PID PORT KIND ROUND: wrk for SECS against PORT; prints the proxy's CPU per request.
  arm() {
    local pid=$1 port=$2 kind=$3 round=$4 stream=false
    [ "$kind" = stream ] && stream=true
    sed -e "s/STREAM/$stream/" -e "s/RUN/'$kind$round$port'/" "$OUT/post.lua" >"$OUT/run.lua"
    local t0 t1 n
    t0=$(ticks "$pid")
    n=$(taskset -c 1 wrk -t1 -c1 -d"${SECS:-10}s" -s "$OUT/run.lua" "http://127.0.0.1:$port" |
      awk '/requests in/ {print $1}')
    t1=$(ticks "$pid")
    awk -v t="$((t1 - t0))" -v n="$n" -v hz="$(getconf CLK_TCK)" \
      'BEGIN {printf "%.1f us CPU per request (%d requests)", t * 1e6 / hz / n, n}'
  }
  for round in $(seq 1 "${ROUNDS:-3}"); do
    for kind in stream whole; do
      echo "round $round $kind: nginx $(arm "$NGINX" "$NGINX_PORT" "$kind" "$round"); tollgate $(arm "$GW" "$GW_PORT" "$kind" "$round")"
    done
  done
  exit 0
fi

drive() { python3 load/percall.py "127.0.0.1:$GW_PORT" "$TOKEN" "$1" "$2"; }
nudge() { curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/healthz" || true; }

# Runs `$2` (a workload) between two steps of the measuring tool, for workload name $1.
for kind in stream whole; do
  drive "$WARM" "$kind"
  case $MODE in
    callgrind)
      # callgrind_control waits for the process to look at its command file: nudge it.
      callgrind_control -z "$GW" >/dev/null & c=$!; sleep 0.5; nudge; wait $c
      drive "$N" "$kind"
      callgrind_control -d "$kind" "$GW" >/dev/null & c=$!; sleep 0.5; nudge; wait $c
      ;;
    stat)
      perf stat -e task-clock,context-switches,cpu-migrations -p "$GW" -o "$OUT/stat.$kind" &
      s=$!; sleep 0.3
      drive "$N" "$kind"
      kill -INT $s; wait $s || true
      ;;
    record)
      perf record -e cpu-clock -F 4999 ${PERF_CALLGRAPH:--g} -p "$GW" -o "$OUT/perf.$kind.data" 2>/dev/null &
      s=$!; sleep 0.3
      drive "$N" "$kind"
      kill -INT $s; wait $s || true
      perf script -i "$OUT/perf.$kind.data" 2>/dev/null | inferno-collapse-perf >"$OUT/$kind.folded"
      inferno-flamegraph <"$OUT/$kind.folded" >"$OUT/$kind.svg" || true
      ;;
  esac
done

case $MODE in
  callgrind)
    for kind in stream whole; do
      # Dumps are numbered in order: 1 after the streamed run, 2 after the whole one.
      if [ "$kind" = stream ]; then f=$OUT/callgrind.$GW.1; else f=$OUT/callgrind.$GW.2; fi
      total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
      echo "$kind: $total instructions / $N = $((total / N)) per request ($f)"
    done
    ;;
  stat)
    for kind in stream whole; do
      awk -v n="$N" -v k="$kind" '/task-clock/ {gsub(",","",$1); t=$1} /context-switches/ {gsub(",","",$1); c=$1}
        END {printf "%s: %.1f us CPU, %.2f context switches per request\n", k, t*1000/n, c/n}' "$OUT/stat.$kind"
    done
    ;;
  record) echo "folded stacks and flame graphs in $OUT" ;;
esac
