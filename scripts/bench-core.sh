#!/usr/bin/env bash
# The core in process: criterion benches (benches/core.rs) next to wechatpy 1.8.18 doing
# the same work (scripts/bench-core.py), in the same run. Installs wechatpy with pip
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import wechatpy" 2>/dev/null || pip install -q "wechatpy==1.8.18" cryptography
cargo bench --bench core -- --warm-up-time 2 --measurement-time 5 2>&1 | grep -E "time:" -B1 | grep -v "^--"
python3 scripts/bench-core.py 20000
