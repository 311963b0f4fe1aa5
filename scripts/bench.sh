#!/usr/bin/env bash
# Benchmarks through nginx (scripts/bench.py) and the core in process (bench-core.sh).
# Installs nginx and wrk when missing. Usage: scripts/bench.sh [--quick] [--only=plain,safe:1024]
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --bin wechat-fcgi --example bench_bodies --example null_responder
STATIC_BIN=$(bash scripts/build-static.sh --quiet | tail -n1)
export STATIC_BIN="$PWD/$STATIC_BIN"
ulimit -n 65536 2>/dev/null || true
python3 scripts/bench.py "$@"
