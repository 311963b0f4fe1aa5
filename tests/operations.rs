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

/// Parse Prometheus' text format with the reference parser (Python's
/// prometheus_client): every sample as `name{labels} value`, sorted labels.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = {}\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       out[f'{s.name}{{{labels}}}'] = s.value\n\
        print(json.dumps(out))\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/test.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused it: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_and_ping_through_nginx_count_what_was_sent() {
    let dir = TempDir::new("status");
    let config = write_config(
        &dir,
        &format!(
            "[server]\nstatus_path = \"/wechat-status\"\nping_path = \"/wechat-ping\"\n{RULES}"
        ),
    );
    let (_server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let (status, pong) = http(port, "GET", "/wechat-ping", b"");
    assert_eq!((status, pong.as_slice()), (200, b"pong\n".as_slice()));
    for id in 1..=5 {
        assert_eq!(say(port, "hi", id), 200);
    }
    assert_eq!(say(port, "hi", 5), 200, "a retry of MsgId 5");
    for _ in 0..2 {
        let bad = format!("/wechat?{}", signed("b")).replace("signature=", "signature=0");
        assert_eq!(http(port, "POST", &bad, b"<xml/>").0, 403);
    }
    // JSON, with PHP-FPM's field names where they apply.
    let (status, body) = http(port, "GET", "/wechat-status", b"");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["answers"]["rule"], 5, "{json}");
    assert_eq!(json["answers"]["retry"], 1, "{json}");
    assert!(json["accepted conn"].as_u64().unwrap() >= 1, "{json}");
    assert!(json["start time"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(
        json["requests total"], 9,
        "ping + 6 messages + 2 refused: {json}"
    );

    let (status, text) = http(port, "GET", "/wechat-status?format=prometheus", b"");
    assert_eq!(status, 200);
    let samples = parse_prometheus(&String::from_utf8_lossy(&text));
    let get = |k: &str| {
        *samples
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in {samples:?}"))
    };
    assert_eq!(
        get("wechat_fcgi_requests_total{account=default,msg_type=text,outcome=reply,status=200}"),
        6.0
    );
    assert_eq!(
        get("wechat_fcgi_requests_total{account=default,msg_type=-,outcome=bad_signature,status=403}"),
        2.0
    );
    assert_eq!(get("wechat_fcgi_answers_total{via=retry}"), 1.0);
    // Everything before this scrape: ping, 6 messages, 2 refused, the JSON status.
    assert_eq!(get("wechat_fcgi_request_duration_seconds_count{}"), 10.0);
    assert_eq!(
        get("wechat_fcgi_request_duration_seconds_bucket{le=+Inf}"),
        10.0
    );
    assert!(get("wechat_fcgi_connections_accepted_total{}") >= 1.0);
    assert_eq!(get("wechat_fcgi_config_reloads_total{result=failed}"), 0.0);

    // scripts/status.sh prints its summary from the same page.
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/status.sh"))
        .arg(format!("http://127.0.0.1:{port}/wechat-status"))
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{summary}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(summary.contains("answers: retry: 1, rule: 5"), "{summary}");
    assert!(summary.contains("by status: 200: "), "{summary}");
}

/// Only `status_allowed` addresses read the status: 403 from any other REMOTE_ADDR
/// (sent straight over FastCGI, as a web server would pass it).
#[test]
fn the_status_is_refused_to_other_addresses() {
    use std::io::{Read, Write};
    use wechat_fcgi::fcgi::{params, record};
    let dir = TempDir::new("status-denied");
    let config = write_config(
        &dir,
        "[server]\nstatus_path = \"/s\"\nstatus_allowed = [\"10.0.0.1\"]\n",
    );
    let (server, fcgi) = start_server(&dir, &config);
    let ask = |remote: &str| {
        let mut out = Vec::new();
        begin(&mut out, 1, record::ROLE_RESPONDER, 0);
        let mut p = Vec::new();
        params::write_pair(&mut p, b"REQUEST_METHOD", b"GET");
        params::write_pair(&mut p, b"DOCUMENT_URI", b"/s");
        params::write_pair(&mut p, b"REMOTE_ADDR", remote.as_bytes());
        record::write_stream(&mut out, record::PARAMS, 1, &p);
        record::write_stream(&mut out, record::STDIN, 1, b"");
        let mut s = std::net::TcpStream::connect(fcgi).unwrap();
        s.write_all(&out).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let (records, _) = decode_records(&reply);
        records
            .into_iter()
            .filter(|r| r.0 == record::STDOUT)
            .flat_map(|r| r.2)
            .map(char::from)
            .collect::<String>()
    };
    let allowed = ask("10.0.0.1");
    assert!(allowed.starts_with("Status: 200"), "{allowed}");
    let denied = ask("192.0.2.7");
    assert!(denied.starts_with("Status: 403"), "{denied}");
    assert!(
        denied.contains("status not allowed from this address"),
        "{denied}"
    );
    wait_for_log(&server, "status_forbidden");
}
