//! Caddy in front, from Debian's package, on a free loopback port: `reverse_proxy` with
//! `transport fastcgi` to a running server (conf/Caddyfile's recipe), the body capped
//! by `request_body max_size`.

mod common;
use common::*;

use std::process::Command;

#[test]
fn caddy_reverse_proxy_transport_fastcgi() {
    let dir = TempDir::new("caddy");
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 300000\n{RULES}"));
    let (server, fcgi) = start_server(&dir, &config);
    let port = free_port();
    // As conf/Caddyfile, on a test port: no admin endpoint, no automatic HTTPS, and
    // default_bind so that Caddy listens on loopback only.
    let caddyfile = format!(
        r#"{{
    admin off
    auto_https off
    default_bind 127.0.0.1
    storage file_system {root}/caddy-data
}}

# Any host name on this port (a site address with a host also matches the Host header).
http://:{port} {{
    handle /wechat {{
        request_body {{
            max_size 512KB
        }}
        reverse_proxy {fcgi} {{
            transport fastcgi
        }}
    }}
    respond 404
}}
"#,
        root = dir.0.display()
    );
    let path = dir.path("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", &dir.0)
        .env("XDG_DATA_HOME", dir.path("xdg-data"))
        .env("XDG_CONFIG_HOME", dir.path("xdg-config"));
    let caddy = start_web_server(&dir, cmd, port, "web-server.stderr");
    front_end_checks(port, "/wechat");
    // Caddy refused the 600 KB body itself (over max_size); the server never saw it.
    assert!(!server.log().contains("body_too_large"), "{}", server.log());
    drop(caddy);
}
