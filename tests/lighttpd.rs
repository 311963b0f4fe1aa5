//! lighttpd in front, from Debian's packages, on a free loopback port: mod_fastcgi to a
//! running server (host/port), and starting the binary itself (bin-path).

mod common;
use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

fn start_lighttpd(dir: &TempDir, fastcgi: &str) -> (Proc, u16) {
    let port = free_port();
    let root = dir.0.display();
    let conf = format!(
        r#"server.modules = ("mod_fastcgi")
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.pid-file = "{root}/lighttpd.pid"
server.errorlog = "{root}/lighttpd-error.log"
server.breakagelog = "{root}/lighttpd-breakage.log"
server.max-request-size = 1024
fastcgi.server = ( "/wechat" => ( ( {fastcgi}, "check-local" => "disable" ) ) )
"#
    );
    let conf_path = dir.path("lighttpd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new("/usr/sbin/lighttpd");
    cmd.arg("-D").arg("-f").arg(&conf_path);
    let lighttpd = start_web_server(dir, cmd, port, "lighttpd-error.log");
    (lighttpd, port)
}

#[test]
fn lighttpd_mod_fastcgi_host_and_port() {
    let dir = TempDir::new("lighttpd-host");
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 300000\n{RULES}"));
    let (server, fcgi) = start_server(&dir, &config);
    let (_lighttpd, port) = start_lighttpd(
        &dir,
        &format!("\"host\" => \"{}\", \"port\" => {}", fcgi.ip(), fcgi.port()),
    );
    front_end_checks(port, "/wechat");
    wait_for_log(&server, "body_too_large");
}

#[test]
fn lighttpd_mod_fastcgi_bin_path_starts_the_binary() {
    let dir = TempDir::new("lighttpd-bin");
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 300000\n{RULES}"));
    let (lighttpd, port) = start_lighttpd(
        &dir,
        &format!(
            "\"bin-path\" => \"{BIN}\", \"socket\" => \"{}\", \"max-procs\" => 1, \
             \"bin-environment\" => ( \"WECHAT_FCGI_CONFIG\" => \"{}\" )",
            dir.path("w.sock").display(),
            config.display()
        ),
    );
    front_end_checks(port, "/wechat");
    // The app's stderr goes to server.breakagelog (without it, to /dev/null).
    let start = Instant::now();
    while !std::fs::read_to_string(dir.path("lighttpd-breakage.log"))
        .unwrap_or_default()
        .contains("wechat-fcgi serving")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no log in the breakage log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(lighttpd);
}
