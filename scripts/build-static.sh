#!/usr/bin/env bash
# Build a statically linked wechat-fcgi (glibc, crt-static) for CGI on shared hosting:
# it starts faster than the dynamic build (no dynamic loader work) and does not depend
# on the host's glibc version. Not position-independent (relocation-model=static): a
# static-pie binary relocates its data at every start, which cost 0.4-0.9 ms of each
# CGI request here (BENCHMARKS.md).
# Output: target/<host-triple>/release/wechat-fcgi
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the flag off build scripts and proc macros, which cannot be static.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" cargo build --release --bin wechat-fcgi --target "$host" "$@"
echo "target/$host/release/wechat-fcgi"
