#!/usr/bin/env bash
# Soak: REQUESTS (default 1 000 000) signed messages at CONNS (default 256) connections
# through nginx to wechat-fcgi; fails on any non-2xx or socket error, prints RSS every
# 10 s and fails if it kept growing after warm-up. Not part of the default tests.
# Usage: scripts/soak.sh [REQUESTS] [CONNS]
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_REQUESTS=${1:-1000000} SOAK_CONNS=${2:-256}
bash scripts/bench.sh --soak
