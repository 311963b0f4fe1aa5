//! The shipped logrotate snippet, run by logrotate itself: valid, rotating as the
//! service's user, and signalling only the server, which reopens its log (nothing lost,
//! nothing written to the rotated file).

mod common;
use common::*;

use std::process::Command;

fn snippet() -> String {
    std::fs::read_to_string(format!(
        "{}/conf/logrotate-wechat-fcgi",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn the_snippet_rotates_as_the_service_user_and_signals_only_the_service() {
    let text = snippet();
    for stanza in text.split("}\n").filter(|s| s.contains('{')) {
        assert!(stanza.contains("su wechat-fcgi wechat-fcgi"), "{stanza}");
        assert!(stanza.contains("--kill-whom=main"), "{stanza}");
    }
    assert!(
        !text.contains("pkill"),
        "pkill would kill CGI processes too"
    );
    // logrotate accepts it (a dry run; the user it names need not exist here).
    let dir = TempDir::new("logrotate-dry");
    let conf = dir.path("snippet");
    let here = text
        .replace("su wechat-fcgi wechat-fcgi", "su root root")
        .replace(
            "create 0640 wechat-fcgi wechat-fcgi",
            "create 0640 root root",
        );
    std::fs::write(&conf, here).unwrap();
    let out = Command::new("logrotate")
        .args(["-d", "-s"])
        .arg(dir.path("state"))
        .arg(&conf)
        .output()
        .expect("logrotate (scripts/test.sh installs it)");
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("error"), "{log}");
}

/// The log stanza, pointed at a test server's log and pid: after a forced rotation the
/// server writes to the new file and never to the rotated one.
#[test]
fn a_rotation_makes_the_server_reopen_its_log() {
    let dir = TempDir::new("logrotate-run");
    let log = dir.path("wechat-fcgi.log");
    let config = write_config(
        &dir,
        &format!("[log]\nfile = \"{}\"\n{RULES}", log.display()),
    );
    let (server, addr) = start_server(&dir, &config);
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("serving")
    {
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stanza = snippet()
        .split("}\n")
        .find(|s| s.contains("/var/log/wechat-fcgi/wechat-fcgi.log"))
        .unwrap()
        .to_owned()
        + "}\n";
    let stanza = stanza
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "/var/log/wechat-fcgi/wechat-fcgi.log",
            &log.display().to_string(),
        )
        .replace("su wechat-fcgi wechat-fcgi", "su root root")
        .replace(
            "create 0640 wechat-fcgi wechat-fcgi",
            "create 0640 root root",
        )
        .replace(
            "systemctl kill --kill-whom=main --signal=USR1 wechat-fcgi.service 2>/dev/null || true",
            &format!("kill -USR1 {}", server.child.id()),
        );
    let conf = dir.path("logrotate.conf");
    std::fs::write(&conf, stanza).unwrap();
    let out = Command::new("logrotate")
        .args(["-f", "-s"])
        .arg(dir.path("state"))
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = dir.path("wechat-fcgi.log.1");
    assert!(rotated.exists(), "rotated");
    let before = std::fs::read_to_string(&rotated).unwrap();
    // A request after the rotation: its line lands in the new file.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = wechat_fcgi::sample::text("gh", "oF", unix_now(), "hi");
    let mut out = Vec::new();
    fcgi_request(&mut out, 1, true, "POST", &signed("r"), body.as_bytes());
    std::io::Write::write_all(&mut s, &out).unwrap();
    assert!(fcgi_response(&mut s).unwrap().contains("Hello!"));
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("outcome=reply")
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the new log got nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap(),
        before,
        "nothing written to the rotated file"
    );
}
