//! The message archive: one synced JSON line per accepted message, none lost when the
//! process is killed, reopened for logrotate, and never in the way of an answer.

mod common;
use common::*;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn ask(s: &mut TcpStream, body: &str) -> Option<String> {
    let mut out = Vec::new();
    fcgi_request(&mut out, 1, true, "POST", &signed("1"), body.as_bytes());
    s.write_all(&out).ok()?;
    fcgi_response(s)
}

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn every_message_through_nginx_has_one_record_with_its_answer() {
    let dir = TempDir::new("archive");
    let archive = dir.path("messages.jsonl");
    let config = write_config(
        &dir,
        &format!("[archive]\nto = \"jsonl:messages.jsonl\"\n{RULES}"),
    );
    let (_server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let message = |i: u64| {
        let text = if i % 2 == 0 { "hi" } else { "what?" };
        wechat_fcgi::sample::text_with_id("gh", &format!("oF{i}"), unix_now(), text, 500 + i)
    };
    for i in 0..20 {
        let (status, _) = http(
            port,
            "POST",
            &format!("/wechat?{}", signed("1")),
            message(i).as_bytes(),
        );
        assert_eq!(status, 200);
    }
    // WeChat's retries of five of them: answered, not archived again.
    for i in 0..5 {
        let (status, _) = http(
            port,
            "POST",
            &format!("/wechat?{}", signed("2")),
            message(i).as_bytes(),
        );
        assert_eq!(status, 200);
    }
    let all = records(&archive);
    assert_eq!(all.len(), 20, "one record per message");
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["from"], format!("oF{i}"));
        assert_eq!(r["account"], "gh");
        assert_eq!(r["msg_type"], "text");
        assert_eq!(r["message"]["MsgId"], (500 + i).to_string());
        let want = if i % 2 == 0 {
            ("greeting", "Hello!")
        } else {
            ("default", "Sorry, I did not understand.")
        };
        assert_eq!(r["rule"], want.0);
        assert_eq!(r["reply"]["text"], want.1);
        assert_eq!(r["via"], "rule");
        assert!(r["received_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn a_killed_server_loses_no_message_whose_reply_was_received() {
    let dir = TempDir::new("archive-kill");
    let archive = dir.path("messages.jsonl");
    let config = write_config(
        &dir,
        &format!("[archive]\nto = \"jsonl:messages.jsonl\"\n{RULES}"),
    );
    let (mut server, addr) = start_server(&dir, &config);
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let answered = answered.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return;
                };
                for n in 0..100_000u64 {
                    let id = c * 1_000_000 + n;
                    let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", id);
                    match ask(&mut s, &body) {
                        Some(reply) if reply.contains("Hello!") => {
                            answered.lock().unwrap().push(id)
                        }
                        _ => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    // Mid-load: once some replies came back (however busy the machine is), kill -9.
    let start = std::time::Instant::now();
    while answered.lock().unwrap().len() < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no load: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.child.kill().unwrap(); // kill -9, mid-load
    server.child.wait().unwrap();
    for c in clients {
        c.join().unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 20, "the load ran: {}", answered.len());
    let archived: std::collections::HashSet<String> = records(&archive)
        .iter()
        .map(|r| r["message"]["MsgId"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&u64> = answered
        .iter()
        .filter(|id| !archived.contains(&id.to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered messages not archived, e.g. {:?}",
        missing.len(),
        missing.first()
    );
}

#[test]
fn the_archive_is_reopened_for_logrotate_and_never_blocks_an_answer() {
    let dir = TempDir::new("archive-rotate");
    let archive = dir.path("messages.jsonl");
    let config = write_config(
        &dir,
        &format!("[archive]\nto = \"jsonl:messages.jsonl\"\n{RULES}"),
    );
    let (server, addr) = start_server(&dir, &config);
    let mut s = TcpStream::connect(addr).unwrap();
    let hi = |id: u64| wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", id);
    assert!(ask(&mut s, &hi(1)).unwrap().contains("Hello!"));
    for (n, signal) in [(2u64, "-USR1"), (3, "-HUP")] {
        let rotated = dir.path(&format!("messages.jsonl.{n}"));
        std::fs::rename(&archive, &rotated).unwrap();
        std::process::Command::new("kill")
            .args([signal, &server.child.id().to_string()])
            .status()
            .unwrap();
        wait_for_log(&server, if n == 2 { "archive reopened" } else { "SIGHUP" });
        assert!(ask(&mut s, &hi(n)).unwrap().contains("Hello!"));
        let fresh = records(&archive);
        assert_eq!(
            fresh.len(),
            1,
            "after {signal}, the new file has the new record"
        );
        assert_eq!(fresh[0]["message"]["MsgId"], n.to_string());
    }
    // A full disk: requests are answered all the same, and the log says so.
    let dir = TempDir::new("archive-full");
    let config = write_config(
        &dir,
        &format!("[archive]\nto = \"jsonl:/dev/full\"\n{RULES}"),
    );
    let (full, addr) = start_server(&dir, &config);
    let mut s = TcpStream::connect(addr).unwrap();
    for id in 10..13 {
        assert!(ask(&mut s, &hi(id)).unwrap().contains("Hello!"));
    }
    wait_for_log(&full, "archive records not written");
    // check-config checks that the archive can be written.
    let bad = write_config(
        &dir,
        &format!("[archive]\nto = \"jsonl:no/such/dir/m.jsonl\"\n{RULES}"),
    );
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("archive.to"));
}

/// The same records in a SQLite table, and in a Redis stream (the `[state]` Redis).
#[test]
fn the_archive_can_be_a_sqlite_table_or_a_redis_stream() {
    let dir = TempDir::new("archive-stores");
    let port = free_port();
    let _redis = start_redis(&dir, port);
    let hi = |id: u64| wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", id);
    for (to, state) in [
        ("sqlite:archive.db".to_owned(), String::new()),
        (
            "redis".to_owned(),
            format!("[state]\nstore = \"redis://127.0.0.1:{port}/0\"\nkey_prefix = \"t:\"\n"),
        ),
    ] {
        let config = write_config(&dir, &format!("{state}[archive]\nto = \"{to}\"\n{RULES}"));
        let (server, addr) = start_server(&dir, &config);
        let mut s = TcpStream::connect(addr).unwrap();
        for id in 0..7 {
            assert!(ask(&mut s, &hi(id)).unwrap().contains("Hello!"));
        }
        assert!(ask(&mut s, &hi(3)).unwrap().contains("Hello!"), "a retry");
        drop(server);
        let count = if to == "redis" {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "XLEN", "t:messages"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        } else {
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sqlite3, sys, json; c = sqlite3.connect(sys.argv[1]); \
                     rows = [json.loads(r[0]) for r in c.execute('select record from messages')]; \
                     assert all(r['reply']['text'] == 'Hello!' for r in rows); print(len(rows))",
                    dir.path("archive.db").to_str().unwrap(),
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(
            count, "7",
            "{to}: one record per message, retries not again"
        );
    }
}
