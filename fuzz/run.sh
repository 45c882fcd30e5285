#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 60) from its corpus in
# fuzz/corpus/<target>, and prints each target's executions. Installs cargo-fuzz when missing;
# builds on the nightly toolchain when there is one, else on stable with RUSTC_BOOTSTRAP=1.
#
#   fuzz/run.sh                 # every target, 60 s each
#   SECONDS_EACH=20 fuzz/run.sh sse_parser jwt
#   RUNS=10000000 fuzz/run.sh anthropic_events   # a fixed number of executions instead
#   MAX_LEN=65536 fuzz/run.sh chat_request       # longer inputs (default 4096 bytes)
#   FUZZ_DEV=1 fuzz/run.sh      # unoptimised build: builds in half the time, runs slower (CI)
#
# No sanitizer (`-s none`): tollgate forbids unsafe code, so ASan adds cost and finds nothing a
# panic, a hang (-timeout) or an allocation past -rss_limit_mb would not. New corpus entries are
# written to a scratch copy, not to the repo (pass KEEP_CORPUS=1 to grow fuzz/corpus).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
    TARGETS=(sse_parser chat_request jwt anthropic_events output_scanner chunk_reader)
fi
SECONDS_EACH="${SECONDS_EACH:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
TOOLCHAIN=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    TOOLCHAIN=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

status=0
for target in "${TARGETS[@]}"; do
    corpus="corpus/$target"
    if [[ "${KEEP_CORPUS:-0}" != 1 ]]; then
        scratch="$(mktemp -d)"
        cp -r "$corpus/." "$scratch/"
        corpus="$scratch"
    fi
    limit=(-max_total_time="$SECONDS_EACH")
    [[ -n "${RUNS:-}" ]] && limit=(-runs="$RUNS")
    log="$(mktemp)"
    echo "== $target" >&2
    if cargo "${TOOLCHAIN[@]}" fuzz run -s none ${FUZZ_DEV:+--dev} "$target" "$corpus" -- \
        "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -max_len="${MAX_LEN:-4096}" -print_final_stats=1 \
        >"$log" 2>&1; then
        execs="$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')"
        echo "$target: ok, ${execs:-?} executions" >&2
    else
        status=1
        tail -40 "$log" >&2
        echo "$target: FAILED (crash input under fuzz/artifacts/$target)" >&2
    fi
done
exit "$status"
