#!/usr/bin/env bash
# Run the answer protocol's deterministic simulation over many seeds (default: a
# million), in a release build, on every core: each core takes its own range of seeds.
# A failing seed prints itself; replay it with
#   SIMULATE_SEED=N cargo test --release --test simulate -- --nocapture
# Usage: scripts/simulate.sh [SEEDS] [FROM]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-1000000}
from=${2:-0}
cores=$(nproc)
per=$(( (seeds + cores - 1) / cores ))
cargo test --release --test simulate --no-run
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pids=()
for ((i = 0; i < cores; i++)); do
    start=$(( from + i * per ))
    SIMULATE_FROM=$start SIMULATE_SEEDS=$per \
        cargo test --release --test simulate the_protocol -- --nocapture >"$dir/$i.log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        status=1
        grep -E "^seed [0-9]+:|panicked" "$dir/$i.log" | head -5
    fi
done
if [ "$status" -eq 0 ]; then
    grep -h "seeds from" "$dir"/*.log
    echo "simulate: $seeds seeds from $from passed"
fi
exit "$status"
