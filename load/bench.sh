#!/usr/bin/env bash
# Overhead benchmark: direct to the mock vs nginx vs tollgate (in-memory) vs tollgate with Redis,
# interleaved, in one run.
#
#   load/bench.sh                      # the full run (≈ 5 minutes after the build)
#   CONC=200 MEM_STREAMS=1000 load/bench.sh
#   ARMS=direct,tollgate,tollgate-redis load/bench.sh
#
# Installs nginx and redis-server (Debian packages) if they are missing, raises the open-file
# limit so 10,000 streams can be held open through a proxy (2 sockets each), and runs
# `cargo bench --bench overhead` (benches/overhead/main.rs; every knob it reads is listed at its
# top).
# Loopback traffic only; the whole run is bounded by MAX_SECS (default 900) plus the build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NOFILE="${NOFILE:-65536}"
MAX_SECS="${MAX_SECS:-900}"

die() { echo "load/bench.sh: $*" >&2; exit 2; }

# apt_install PACKAGE WHAT: the Debian package, quietly; on failure the bench skips WHAT.
apt_install() {
    echo "load/bench.sh: installing $1 (Debian package)" >&2
    if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    # Debian's postinst may try to start the system service; no init system here, and the bench
    # runs its own instance on a free loopback port either way.
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >/dev/null \
        || { "${SUDO[@]}" apt-get update >/dev/null && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >/dev/null; } \
        || echo "load/bench.sh: could not install $1; $2 will be skipped" >&2
}

if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    apt_install nginx "the nginx arm"
fi
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server "the tollgate-redis arm"
fi

# Open files: raise the soft limit to NOFILE, and the hard limit first when allowed (root).
hard="$(ulimit -Hn)"
if [[ "$hard" != unlimited && "$hard" -lt "$NOFILE" ]]; then
    ulimit -Hn "$NOFILE" 2>/dev/null || NOFILE="$hard"
fi
ulimit -Sn "$NOFILE" || die "could not raise the open-file limit to $NOFILE"
echo "load/bench.sh: open-file limit $(ulimit -n), $(nproc) CPUs" >&2

cd "$ROOT"
echo "load/bench.sh: cargo bench --bench overhead --no-run (builds the release binary and the driver)" >&2
cargo bench --bench overhead --no-run
# The driver kills its children (mock, nginx, both tollgates, redis-server) on every exit path
# it controls; the timeout bounds the run if something hangs anyway (SIGINT, then SIGKILL 20 s
# later).
exec timeout --signal=INT --kill-after=20 "$MAX_SECS" cargo bench --bench overhead
