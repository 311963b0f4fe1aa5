//! Operations: the log written to a file by the server itself (for spawners that drop
//! stderr), in text or JSON, reopened for logrotate.

mod common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::*;

fn wait_for_file(path: &std::path::Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{needle:?} not in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn say(port: u16, text: &str, msg_id: u64) -> u16 {
    let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), text, msg_id);
    http(
        port,
        "POST",
        &format!("/wechat?{}", signed("op")),
        body.as_bytes(),
    )
    .0
}

#[test]
fn the_log_goes_to_its_file_as_json_and_is_reopened_on_sigusr1() {
    let dir = TempDir::new("log-file");
    let config = write_config(
        &dir,
        "[log]\nfile = \"wechat.log\"\nformat = \"json\"\n\
         [[rule]]\ntext = \"hi\"\nreply = { text = \"Hello!\" }\n",
    );
    let (mut server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let log = dir.path("wechat.log");
    assert_eq!(say(port, "hi", 1), 200);
    // A refusal whose cause carries what the client sent, control characters included.
    let (status, _) = http(
        port,
        "GET",
        "/wechat?signature=x%0A%1B&timestamp=1&nonce=2",
        b"",
    );
    assert_eq!(status, 403);
    let text = wait_for_file(&log, "request refused");
    wait_for_file(&log, "\"via\":\"rule\"");
    for line in text.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["time"].is_string() && object["level"].is_string(),
            "{line}"
        );
    }
    let request = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|o| o["message"] == "request" && o["via"] == "rule")
        .unwrap();
    assert_eq!(request["status"], 200);
    assert_eq!(request["rule"], "rule[0]");
    assert!(request["latency_us"].is_u64());
    assert!(
        !server.log().contains("\"via\""),
        "nothing on stderr once the file is open: {}",
        server.log()
    );

    // logrotate: the file is moved away, SIGUSR1 reopens a new one.
    std::fs::rename(&log, dir.path("wechat.log.1")).unwrap();
    send_signal(server.child.id(), 10);
    wait_for_file(&log, "SIGUSR1");
    assert_eq!(say(port, "hi", 2), 200);
    wait_for_file(&log, "\"via\":\"rule\"");
    let rotated = std::fs::read_to_string(dir.path("wechat.log.1")).unwrap();
    assert_eq!(
        rotated.matches("\"via\":\"rule\"").count(),
        1,
        "the rotated file got nothing more"
    );
    assert!(server.signal_and_wait(15).success());
    wait_for_file(&log, "SIGTERM");
}

#[test]
fn the_log_file_in_text_format_and_check_config() {
    let dir = TempDir::new("log-text");
    let config = write_config(&dir, "[log]\nfile = \"text.log\"\n");
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("log: ") && stdout.contains("text.log (text)"),
        "{stdout}"
    );
    let (_server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    assert_eq!(say(port, "anything", 1), 200);
    let text = wait_for_file(&dir.path("text.log"), "INFO request method=POST");
    assert!(text.contains("  INFO wechat-fcgi serving"), "{text}");

    let bad = write_config(
        &dir,
        "[log]\nfile = \"no-such-dir/x.log\"\nformat = \"xml\"\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.format: \"xml\" is not one of"), "{err}");
}

/// spawn-fcgi (Debian's package) binds the socket and starts the server with stderr on
/// /dev/null: with `[log] file` the log is still there; nginx answers through it.
#[test]
fn spawn_fcgi_starts_it_and_log_file_keeps_what_stderr_loses() {
    let dir = TempDir::new("spawn-fcgi");
    let config = write_config(&dir, &format!("[log]\nfile = \"spawned.log\"\n{RULES}"));
    let port = free_port();
    // -n: no fork, so the test holds the server process and stops it.
    let log = dir.path("spawn-fcgi.stderr");
    let spawner = std::process::Command::new("spawn-fcgi")
        .args([
            "-n",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--",
            BIN,
            "serve",
            "--config",
        ])
        .arg(&config)
        .env_remove("WECHAT_FCGI_LOG")
        .process_group(0)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn-fcgi (scripts/test.sh installs it)");
    let mut server = Proc {
        child: spawner,
        stderr: log,
        is_nginx: false,
    };
    let (_nginx, http_port) = start_nginx(&dir, &format!("127.0.0.1:{port}"));
    front_end_checks(http_port, "/wechat");
    wait_for_file(&dir.path("spawned.log"), "INFO request method=POST");
    assert!(server.signal_and_wait(15).success());
}
