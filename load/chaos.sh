#!/usr/bin/env bash
# Chaos run (issue #20): two release gateways on one Redis behind steady streaming load, while
# Redis is SIGKILLed and restarted, a replica is SIGKILLed and restarted, and the provider fails
# mid-stream; then the request log, the metrics and Redis are reconciled (load/chaos.py prints
# the table and exits non-zero when a check fails).
#
#   load/chaos.sh                        # 180 s of load, 6 users x 3 streams
#   DURATION=60 load/chaos.sh            # shorter (the faults are placed proportionally)
#   TOLLGATE_BIN=target/debug/tollgate DURATION=45 load/chaos.sh   # a binary as is, no build
#
# Needs python3 (3.11, standard library only) and redis-server on PATH (Debian: redis-server).
# Loopback only, ports chosen by the OS; logs are kept in a /tmp/tollgate-chaos.XXXXXX
# directory, named at the end. See load/README.md#chaos-run and docs/reliability.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-180}"
USERS="${USERS:-6}"
STREAMS_PER_USER="${STREAMS_PER_USER:-3}"
REDIS_OP_TIMEOUT_MS="${REDIS_OP_TIMEOUT_MS:-50}"

command -v redis-server >/dev/null || { echo "load/chaos.sh: redis-server is not on PATH" >&2; exit 2; }
command -v python3 >/dev/null || { echo "load/chaos.sh: python3 is not on PATH" >&2; exit 2; }

if [[ -n "${TOLLGATE_BIN:-}" ]]; then
    BIN="$TOLLGATE_BIN"
else
    (cd "$ROOT" && cargo build --release --locked --bin tollgate)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate"
fi
[[ -x "$BIN" ]] || { echo "load/chaos.sh: no binary at $BIN" >&2; exit 2; }

WORKDIR="$(mktemp -d /tmp/tollgate-chaos.XXXXXX)"
# Bounded: the load, the faults' recoveries, the leases' end and the reconciliation.
exec timeout --kill-after=10 "$((DURATION + 240))" python3 "$ROOT/load/chaos.py" \
    --binary "$BIN" --workdir "$WORKDIR" --duration "$DURATION" \
    --users "$USERS" --streams-per-user "$STREAMS_PER_USER" --redis-op-timeout-ms "$REDIS_OP_TIMEOUT_MS"
