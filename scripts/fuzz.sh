#!/usr/bin/env bash
# Run each cargo-fuzz target for SECONDS (default 600), JOBS at a time (default 2).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); stable Rust works with RUSTC_BOOTSTRAP.
# Crashes land in fuzz/artifacts/<target>/; turn each into a regression test.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fcgi_records fcgi_params message_xml crypto_envelope)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
mkdir -p logs
run() {
    local t=$1
    # The committed seed corpus is read-only input; new finds go to corpus-new/ (ignored).
    mkdir -p "corpus-new/$t"
    cargo fuzz run -O "$t" "corpus-new/$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=1024 \
        >"logs/$t.log" 2>&1 && echo "$t: ok" || echo "$t: FAILED (see fuzz/logs/$t.log)"
    grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "logs/$t.log" | tail -n1 || true
}
jobs=${JOBS:-2}
for ((i = 0; i < ${#targets[@]}; i += jobs)); do
    for ((j = i; j < i + jobs && j < ${#targets[@]}; j++)); do
        run "${targets[$j]}" &
    done
    wait
done
