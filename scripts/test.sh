#!/usr/bin/env bash
# Install what the tests need when missing (nginx, libfcgi-bin's cgi-fcgi, redis-server
# and redis-cli, apache2 with mod_fcgid, lighttpd, caddy, spawn-fcgi, logrotate,
# systemd's systemd-analyze, python3 for the hook example and python3-prometheus-client
# to parse the metrics;
# the tests start their own on free loopback ports), then run the
# gates and every test: rustfmt, clippy (warnings are errors), the fuzz targets build,
# cargo test. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v cgi-fcgi >/dev/null 2>&1 || need+=(libfcgi-bin)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/sbin/apache2 ] || need+=(apache2)
[ -f /usr/lib/apache2/modules/mod_fcgid.so ] || need+=(libapache2-mod-fcgid)
[ -x /usr/sbin/lighttpd ] || need+=(lighttpd)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v spawn-fcgi >/dev/null 2>&1 || need+=(spawn-fcgi)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
[ -x /usr/sbin/logrotate ] || need+=(logrotate)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# Debian's python3 (a python3 earlier in PATH, like pyenv's, lacks Debian's modules).
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The Debian packages may start a system nginx, Apache or Redis on their usual ports; the
# tests start their own on free loopback ports and do not need them.

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --all-targets -- -D warnings

echo "== fuzz targets build (scripts/fuzz.sh runs them)"
cargo build --manifest-path fuzz/Cargo.toml

# Known vulnerabilities in dependencies: cargo-audit needs the RustSec advisory
# database, which is fetched from GitHub; run it when both are here (README, Security).
if cargo audit --version >/dev/null 2>&1 && [ -d "${CARGO_HOME:-$HOME/.cargo}/advisory-db" ]; then
    echo "== cargo audit (offline, against the fetched advisory database)"
    cargo audit --no-fetch --stale
else
    echo "== cargo audit skipped: cargo-audit or its advisory database is not here"
fi

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets "$@" 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
