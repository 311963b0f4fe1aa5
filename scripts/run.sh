#!/usr/bin/env bash
# Build wechat-fcgi and run it behind nginx on 127.0.0.1:8080 with the example config
# (conf/wechat-fcgi.toml, given a token of its own). Prints curl lines that send signed
# messages, only once both are answering. Ctrl-C stops both.
# Environment: PORT (nginx, default 8080), FCGI_PORT (wechat-fcgi, default 9000),
# CONFIG (a config of your own instead of the example).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
port=${PORT:-8080}
fcgi_port=${FCGI_PORT:-9000}

nginx_bin=$(command -v nginx || true)
[ -n "$nginx_bin" ] || { [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx; } || true
if [ -z "$nginx_bin" ]; then
    echo "== installing nginx"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends nginx
    nginx_bin=/usr/sbin/nginx
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust 1.85 or newer (https://rustup.rs) first" >&2; exit 1; }

# Both ports must be free: another program on them would answer the curl lines.
busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if busy "$port"; then
    echo "port $port is in use by another program: choose another with PORT=8081 $0" >&2; exit 1
fi
if busy "$fcgi_port"; then
    echo "port $fcgi_port is in use by another program (PHP-FPM uses 9000): choose another with FCGI_PORT=9001 $0" >&2; exit 1
fi

echo "== building (release; the first build takes a few minutes)"
cargo build --release --bin wechat-fcgi
bin=$root/target/release/wechat-fcgi

work=$(mktemp -d /tmp/wechat-fcgi-run.XXXXXX)
# From here on every exit (a config check that fails included) removes $work: it holds
# a config with a token.
fcgi_pid=""
nginx_pid=""
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "== stopping"
    [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null || true
    [ -n "$fcgi_pid" ] && kill -TERM "$fcgi_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup INT TERM EXIT
if [ -n "${CONFIG:-}" ]; then
    config=$CONFIG
else
    # The example config with a token of its own (the shipped one is a placeholder that
    # serve refuses) and the example program's path made absolute.
    token=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    config=$work/wechat-fcgi.toml
    sed -e "s|^token = \".*\"|token = \"$token\"|" \
        -e "s|\"\.\./scripts/examples/|\"$root/scripts/examples/|" \
        "$root/conf/wechat-fcgi.toml" > "$config"
    chmod 600 "$config"
fi
"$bin" check-config --config "$config"


user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root;"
params=/etc/nginx/fastcgi_params
cat > "$work/nginx.conf" <<NGINX
$user_line
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/client_body;
    fastcgi_temp_path $work/fastcgi_temp;
    proxy_temp_path $work/proxy_temp;
    scgi_temp_path $work/scgi_temp;
    uwsgi_temp_path $work/uwsgi_temp;
    upstream wechat_fcgi {
        server 127.0.0.1:$fcgi_port;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$port;
        location = /wechat {
            fastcgi_pass wechat_fcgi;
            fastcgi_keep_conn on;
            include $params;
            client_max_body_size 256k;
        }
    }
}
NGINX

"$bin" serve --config "$config" --listen "tcp:127.0.0.1:$fcgi_port" 2> >(tee "$work/wechat-fcgi.log" >&2) &
fcgi_pid=$!
"$nginx_bin" -p "$work" -c "$work/nginx.conf" &
nginx_pid=$!

# Up means: both processes alive, and a signed handshake through nginx echoed back by
# wechat-fcgi (so it is our nginx and our responder answering, not another program).
url="http://127.0.0.1:$port/wechat"
up=""
for _ in $(seq 100); do
    kill -0 "$fcgi_pid" 2>/dev/null || { echo "wechat-fcgi did not start (see above)" >&2; exit 1; }
    kill -0 "$nginx_pid" 2>/dev/null || { echo "nginx did not start: $(cat "$work/nginx-error.log")" >&2; exit 1; }
    probe=$("$bin" sign --config "$config" --echostr "probe-$$")
    if [ "$(curl -s --max-time 2 "$url?$probe" 2>/dev/null)" = "probe-$$" ]; then
        up=yes
        break
    fi
    sleep 0.1
done
[ -n "$up" ] || { echo "no answer from $url after 10 s" >&2; exit 1; }

cat <<MSG

== wechat-fcgi is serving $url (FastCGI on 127.0.0.1:$fcgi_port, nginx on 127.0.0.1:$port)
Send a signed text message "hi" (the example config answers "Hello!"):

$("$bin" sign --config "$config" --text hi --url "$url")

The URL handshake WeChat does when you save the URL in the admin panel:

$("$bin" sign --config "$config" --echostr hello-wechat --url "$url")

A follow (subscribe) event:

$("$bin" sign --config "$config" --event subscribe --url "$url")

These lines are signed with the time they were printed: the server accepts them for
timestamp_window_secs (5 minutes) and answers a repeated one from its cache. New ones:
  $bin sign --config $config --text hi --url $url

Press Ctrl-C to stop.
MSG
wait "$fcgi_pid"
