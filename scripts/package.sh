#!/usr/bin/env bash
# Build the Debian package with cargo-deb (installed with cargo when missing):
# target/debian/wechat-fcgi_VERSION_ARCH.deb. With --test, also install it on this
# machine (dpkg -i; needs root), start it on a free loopback port through
# systemd-socket-activate, check that it answers a signed request, and purge it again.
#   scripts/package.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
# The config installed in /etc: the example, its reply program where the package puts it.
mkdir -p target/debian-config
sed 's|"../scripts/examples/|"/usr/share/wechat-fcgi/examples/|' conf/wechat-fcgi.toml \
    > target/debian-config/wechat-fcgi.toml
cargo deb --quiet
deb=$(ls -t target/debian/wechat-fcgi_*.deb | head -n1)
echo "$deb"
[ "${1:-}" = "--test" ] || exit 0

echo "== install test: dpkg -i $deb"
[ "$(id -u)" -eq 0 ] || { echo "--test needs root (dpkg -i)" >&2; exit 1; }
if dpkg -s wechat-fcgi >/dev/null 2>&1; then
    echo "wechat-fcgi is already installed here: not touching it" >&2
    exit 1
fi
need=()
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v cgi-fcgi >/dev/null 2>&1 || need+=(libfcgi-bin)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
work=$(mktemp -d)
server=""
# The package keeps its system user on purge (Debian policy); the test removes the one
# it made, so the machine is left as it was.
had_user=$(getent passwd wechat-fcgi >/dev/null && echo yes || echo no)
cleanup() {
    [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    dpkg --purge wechat-fcgi >/dev/null 2>&1 || true
    [ "$had_user" = yes ] || userdel wechat-fcgi >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
dpkg -i "$deb"
fail() { echo "FAIL: $*" >&2; exit 1; }
# What the package promised.
[ -x /usr/bin/wechat-fcgi ] || fail "no /usr/bin/wechat-fcgi"
getent passwd wechat-fcgi >/dev/null || fail "no wechat-fcgi user"
[ "$(stat -c '%a %U %G' /etc/wechat-fcgi/wechat-fcgi.toml)" = "640 root wechat-fcgi" ] \
    || fail "config mode/owner: $(stat -c '%a %U %G' /etc/wechat-fcgi/wechat-fcgi.toml)"
[ -f /lib/systemd/system/wechat-fcgi.service ] && [ -f /lib/systemd/system/wechat-fcgi.socket ] \
    || fail "no systemd units"
[ -d /var/lib/wechat-fcgi ] || fail "no /var/lib/wechat-fcgi"
# The placeholder token is refused until the owner sets one.
if wechat-fcgi check-config --config /etc/wechat-fcgi/wechat-fcgi.toml >/dev/null 2>&1; then
    fail "check-config accepted the placeholder token"
fi
# Set a token in a copy (the conffile stays as shipped), readable by the service user.
token=packageTest42
sed "s|^token = \"<your token>\"|token = \"$token\"|" /etc/wechat-fcgi/wechat-fcgi.toml > "$work/c.toml"
chgrp wechat-fcgi "$work/c.toml" "$work" && chmod 0640 "$work/c.toml" && chmod 0750 "$work"
su -s /bin/sh wechat-fcgi -c "wechat-fcgi check-config --config $work/c.toml" >/dev/null \
    || fail "check-config as wechat-fcgi"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# As the socket unit does: the socket bound first, handed over (LISTEN_FDS), the server
# run as the package's user.
systemd-socket-activate -l "127.0.0.1:$port" \
    setpriv --reuid=wechat-fcgi --regid=wechat-fcgi --init-groups \
    /usr/bin/wechat-fcgi serve --config "$work/c.toml" 2> "$work/server.log" &
server=$!
for _ in $(seq 100); do
    grep -q "wechat-fcgi serving" "$work/server.log" 2>/dev/null && break
    sleep 0.05
done
handshake=$(wechat-fcgi sign --config "$work/c.toml" --echostr package-ok)
reply=$(REQUEST_METHOD=GET QUERY_STRING="$handshake" \
    cgi-fcgi -bind -connect "127.0.0.1:$port" | tr -d '\r' | tail -n1)
[ "$reply" = "package-ok" ] || fail "handshake through the installed binary: $reply ($(cat "$work/server.log"))"
signed=$(wechat-fcgi sign --config "$work/c.toml" --text hi)
query=$(printf '%s\n' "$signed" | sed -n 1p)
body=$(printf '%s\n' "$signed" | sed -n 2p)
reply=$(printf '%s' "$body" | REQUEST_METHOD=POST QUERY_STRING="$query" CONTENT_LENGTH=$(printf "%s" "$body" | wc -c) \
    cgi-fcgi -bind -connect "127.0.0.1:$port" | tr -d '\r')
case "$reply" in
    *"<Content><![CDATA[Hello!]]></Content>"*) ;;
    *) fail "a signed message through the installed binary: $reply ($(cat "$work/server.log"))" ;;
esac
echo "ok: installed, ran as wechat-fcgi from socket activation, answered a signed request"
