#!/usr/bin/env bash
# Build wechat-fcgi and run it behind nginx on 127.0.0.1:8080 with the example config
# (conf/wechat-fcgi.toml). Prints curl lines that send signed messages. Ctrl-C stops both.
# Environment: PORT (default 8080), FCGI_PORT (default 9000), CONFIG (default the example).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
port=${PORT:-8080}
fcgi_port=${FCGI_PORT:-9000}
config=${CONFIG:-$root/conf/wechat-fcgi.toml}

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
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }

echo "== building (release)"
cargo build --release --quiet
bin=$root/target/release/wechat-fcgi
"$bin" check-config --config "$config"

work=$(mktemp -d /tmp/wechat-fcgi-run.XXXXXX)
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
    access_log $work/access.log;
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

"$bin" serve --config "$config" --listen "tcp:127.0.0.1:$fcgi_port" &
fcgi_pid=$!
"$nginx_bin" -p "$work" -c "$work/nginx.conf" &
nginx_pid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

token=$(sed -n 's/^token *= *"\(.*\)".*/\1/p' "$config" | head -n1)
url="http://127.0.0.1:$port/wechat"
cat <<MSG

== wechat-fcgi is serving $url (FastCGI on 127.0.0.1:$fcgi_port, nginx on 127.0.0.1:$port)
Send a signed text message "hi" (the example config answers "Hello!"):

$("$bin" sign --token "$token" --text hi --url "$url")

The URL handshake WeChat does when you save the URL in the admin panel:

$("$bin" sign --token "$token" --echostr hello-wechat --url "$url")

A follow (subscribe) event:

$("$bin" sign --token "$token" --event subscribe --url "$url")

Press Ctrl-C to stop.
MSG
wait "$fcgi_pid"
