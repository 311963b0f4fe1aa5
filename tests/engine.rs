//! The reply engine end to end through nginx: keyword, regex captures, CLICK key, QR
//! scene, random pick, reply programs (fast, slow, failing), retries answered once, and
//! a SIGHUP reload.

mod common;
use common::*;

use std::time::{Duration, Instant};

fn write_program(dir: &TempDir, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn rules(dir: &TempDir, keyword_reply: &str) -> String {
    let fortune = format!("{}/scripts/examples/fortune.sh", env!("CARGO_MANIFEST_DIR"));
    let news = format!(
        "{}/scripts/examples/echo-news.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let counter = dir.path("counter.log");
    format!(
        r#"
[server]
reply_budget_ms = 500
# Late answers off: a slow answer is `success` at the budget (tests/late.rs covers the
# other modes).
[late]
mode = "off"
[[rule]]
name = "keyword"
text = "hi"
reply = {{ text = "{keyword_reply}" }}
[[rule]]
name = "weather"
regex = '^weather (?P<city>\w+) (\d+)$'
reply = {{ text = "Weather for {{city}}, day {{2}}" }}
[[rule]]
event = "CLICK"
key = "V1001"
reply = {{ text = "clicked V1001" }}
[[rule]]
event = "subscribe"
key = "123123"
reply = {{ text = "Welcome from scene {{scene}}" }}
[[rule]]
name = "random"
text = "pick"
replies = [ {{ text = "A" }}, {{ text = "B" }}, {{ text = "C" }} ]
[[rule]]
name = "fortune"
text = "fortune"
run = {{ command = ["{fortune}"], timeout_ms = 3000 }}
[[rule]]
name = "counter"
prefix = "count"
run = {{ command = ["./counter.sh", "{counter}"], timeout_ms = 3000 }}
[[rule]]
name = "news"
prefix = "news "
run = {{ command = ["{news}"] }}
[[rule]]
name = "slow"
text = "slow"
run = {{ command = ["./slow.sh"], timeout_ms = 6000 }}
[[rule]]
name = "broken"
text = "broken"
run = {{ command = ["./fail.sh"], timeout_ms = 2000 }}
fallback = {{ text = "fallback for {{from}}" }}
[[rule]]
name = "stuck"
text = "stuck"
run = {{ command = ["./stuck.sh"], timeout_ms = 300 }}
fallback = {{ text = "too slow" }}
"#,
        counter = counter.display()
    )
}

struct Setup {
    dir: TempDir,
    server: Proc,
    _nginx: Proc,
    port: u16,
    config: std::path::PathBuf,
    fcgi: std::net::SocketAddr,
}

fn setup() -> Setup {
    let dir = TempDir::new("engine");
    // counter.sh: a side effect (one line per run) and a reply naming the run.
    write_program(
        &dir,
        "counter.sh",
        r#"cat >/dev/null; echo run >> "$1"; echo "counted $(wc -l < "$1")""#,
    );
    // slow.sh: answers once the test creates `release` (after the 0.5 s reply budget
    // ran out), within its timeout.
    write_program(
        &dir,
        "slow.sh",
        "cat >/dev/null; while [ ! -e release ]; do sleep 0.02; done; echo slow answer",
    );
    write_program(&dir, "fail.sh", "echo oops >&2; exit 3");
    // stuck.sh: never answers; its sleeping child must die with it.
    write_program(
        &dir,
        "stuck.sh",
        "sleep 30 & echo $! > stuck.pids; echo $$ >> stuck.pids; sleep 30",
    );
    let config = write_config(&dir, &rules(&dir, "Hello!"));
    let (server, fcgi) = start_server(&dir, &config);
    let (nginx, port) = start_nginx(&dir, &fcgi.to_string());
    Setup {
        dir,
        server,
        _nginx: nginx,
        port,
        config,
        fcgi,
    }
}

impl Setup {
    fn post(&self, body: &str) -> String {
        let q = signed("4242");
        let (status, reply) = http(self.port, "POST", &format!("/wechat?{q}"), body.as_bytes());
        let reply = String::from_utf8_lossy(&reply).into_owned();
        assert_eq!(status, 200, "{reply}\n{}", self.server.log());
        reply
    }

    fn text(&self, content: &str, msg_id: u64) -> String {
        self.post(&wechat_fcgi::sample::text_with_id(
            "gh_acct",
            "oUser",
            1_700_000_000,
            content,
            msg_id,
        ))
    }
}

fn content(reply: &str) -> String {
    let start = reply.find("<Content><![CDATA[").map(|i| i + 18);
    let end = reply.find("]]></Content>");
    match (start, end) {
        (Some(s), Some(e)) => reply[s..e].to_owned(),
        _ => reply.to_owned(),
    }
}

#[test]
fn rules_and_programs_through_nginx() {
    let s = setup();
    let click =
        wechat_fcgi::sample::event("gh_acct", "oUser", 1_700_000_001, "CLICK", Some("V1001"));
    let scene = wechat_fcgi::sample::event(
        "gh_acct",
        "oUser",
        1_700_000_002,
        "subscribe",
        Some("qrscene_123123"),
    );
    assert_eq!(content(&s.text("hi", 1)), "Hello!");
    assert_eq!(
        content(&s.text("weather Shanghai 2", 2)),
        "Weather for Shanghai, day 2"
    );
    assert_eq!(content(&s.post(&click)), "clicked V1001");
    assert_eq!(content(&s.post(&scene)), "Welcome from scene 123123");
    let fortunes = std::fs::read_to_string(format!(
        "{}/scripts/examples/fortunes.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let fortune = content(&s.text("fortune", 3));
    assert!(
        fortunes.lines().any(|l| l == fortune),
        "not a fortune: {fortune}"
    );
    assert_eq!(content(&s.text("broken", 4)), "fallback for oUser");
    // A program answering with JSON: any reply type.
    let news = s.text("news hello", 6);
    assert!(
        news.contains("<MsgType><![CDATA[news]]></MsgType><ArticleCount>1</ArticleCount>"),
        "{news}"
    );
    assert!(
        news.contains("<Title><![CDATA[You said: news hello]]></Title>"),
        "{news}"
    );
    assert_eq!(content(&s.text("stuck", 5)), "too slow");
    // Killed on timeout with its child, and reaped: no process left running, and the
    // program itself is no zombie of ours (it is gone from /proc).
    let pids = std::fs::read_to_string(s.dir.path("stuck.pids")).unwrap();
    let pids: Vec<&str> = pids.lines().collect();
    let state = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit(')')
                    .next()
                    .map(|r| r.trim().chars().next().unwrap_or('?'))
            })
    };
    let start = Instant::now();
    while state(pids[1]).is_some() || state(pids[0]).is_some_and(|c| c != 'Z') {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "stuck program left running: {:?} {:?}",
            state(pids[0]),
            state(pids[1])
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen = std::collections::BTreeSet::new();
    for id in 100..130 {
        let pick = content(&s.text("pick", id));
        assert!(["A", "B", "C"].contains(&pick.as_str()), "{pick}");
        seen.insert(pick);
    }
    assert!(seen.len() > 1, "random pick always gave {seen:?}");
    // INFO lines are written in batches (src/log.rs): wait for the last one.
    wait_for_log(&s.server, "via=fallback");
    let log = wait_for_log(&s.server, "via=program");
    assert!(
        log.contains("program failed: answering with the fallback")
            && log.contains("exited with exit status: 3"),
        "{log}"
    );
    assert!(log.contains("timed out after 300 ms"), "{log}");
    assert!(
        log.contains("via=program") && log.contains("via=fallback"),
        "{log}"
    );
}

#[test]
fn retries_are_answered_once() {
    let s = setup();
    let counter = s.dir.path("counter.log");
    let runs = || {
        std::fs::read_to_string(&counter)
            .unwrap_or_default()
            .lines()
            .count()
    };
    // Sequential retries of one MsgId: same answer, the program ran once.
    let first = s.text("count me", 77);
    assert_eq!(content(&first), "counted 1");
    for _ in 0..3 {
        assert_eq!(content(&s.text("count me", 77)), "counted 1");
    }
    assert_eq!(runs(), 1);
    // Concurrent copies of a new MsgId (a retry while the first still runs) wait for
    // the one run.
    let port = s.port;
    let q = signed("4242");
    let body =
        wechat_fcgi::sample::text_with_id("gh_acct", "oUser", 1_700_000_000, "count again", 78);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (q, body) = (q.clone(), body.clone());
            std::thread::spawn(move || http(port, "POST", &format!("/wechat?{q}"), body.as_bytes()))
        })
        .collect();
    let answers: Vec<String> = handles
        .into_iter()
        .map(|h| content(&String::from_utf8_lossy(&h.join().unwrap().1)))
        .collect();
    assert!(answers.iter().all(|a| a == "counted 2"), "{answers:?}");
    assert_eq!(runs(), 2);
    wait_for_log(&s.server, "via=retry");

    // A slow program: the first answer is `success` at the budget; the program goes on,
    // and WeChat's retry gets its reply from the cache.
    let started = Instant::now();
    assert_eq!(s.text("slow", 79), "success");
    // (Log lines are written by the server's log thread: wait for them.)
    wait_for_log(&s.server, "reply budget ran out");
    std::fs::write(s.dir.path("release"), b"").unwrap();
    let mut retry = String::new();
    while started.elapsed() < Duration::from_secs(10) {
        retry = s.text("slow", 79);
        if retry != "success" {
            break;
        }
    }
    assert_eq!(content(&retry), "slow answer");
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_old_one() {
    let s = setup();
    assert_eq!(content(&s.text("hi", 1)), "Hello!");
    // A FastCGI keep-alive connection opened before the reload, used after it.
    let mut kept = std::net::TcpStream::connect(s.fcgi).unwrap();
    let ask = |kept: &mut std::net::TcpStream, id: u64| -> String {
        use std::io::Write;
        let body = wechat_fcgi::sample::text_with_id("gh", "oU", 1, "hi", 9_000 + id);
        let mut out = Vec::new();
        fcgi_request(&mut out, 1, true, "POST", &signed("3"), body.as_bytes());
        kept.write_all(&out).unwrap();
        content(&fcgi_response(kept).expect("connection dropped"))
    };
    assert_eq!(ask(&mut kept, 1), "Hello!");
    std::fs::write(
        &s.config,
        format!(
            "[account]\ntoken = \"{TOKEN}\"\n{}",
            rules(&s.dir, "Hello again!")
        ),
    )
    .unwrap();
    let pid = s.server.child.id();
    let hup = |n: usize| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        while s.server.log().matches("SIGHUP").count() < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no reload logged:\n{}",
                s.server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    hup(1);
    wait_for_log(&s.server, "SIGHUP: config reloaded");
    assert_eq!(
        ask(&mut kept, 2),
        "Hello again!",
        "the kept connection survived the reload"
    );
    assert_eq!(content(&s.text("hi", 2)), "Hello again!");
    // An invalid config is refused; the running one stays.
    std::fs::write(&s.config, "[account]\ntoken = \"x\"\n").unwrap();
    hup(2);
    let log = wait_for_log(&s.server, "config not reloaded");
    assert!(log.contains("account.token"), "{log}");
    assert_eq!(content(&s.text("hi", 3)), "Hello again!");
}

#[test]
fn max_programs_caps_programs_running_at_once() {
    let dir = TempDir::new("cap");
    // Each run writes "start", waits, writes "end": with one slot they never interleave.
    write_program(
        &dir,
        "slot.sh",
        "cat >/dev/null; echo start >> runs.log; sleep 0.3; echo end >> runs.log; echo done",
    );
    let config = write_config(
        &dir,
        "[server]\nmax_programs = 1\n[[rule]]\nprefix = \"run\"\nrun = { command = [\"./slot.sh\"], timeout_ms = 3000 }\n",
    );
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let handles: Vec<_> = (0..3u64)
        .map(|i| {
            std::thread::spawn(move || {
                // Three followers (one follower may run only max_programs_per_sender).
                let from = format!("oU{i}");
                let body = wechat_fcgi::sample::text_with_id("gh", &from, 1, "run", 500 + i);
                http(
                    port,
                    "POST",
                    &format!("/wechat?{}", signed("8")),
                    body.as_bytes(),
                )
            })
        })
        .collect();
    for h in handles {
        let (status, body) = h.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            content(&String::from_utf8_lossy(&body)),
            "done",
            "{}",
            server.log()
        );
    }
    let runs = std::fs::read_to_string(dir.path("runs.log")).unwrap();
    assert_eq!(runs, "start\nend\n".repeat(3), "programs overlapped");
}

#[test]
fn a_full_retry_cache_warns_once_not_per_message() {
    let dir = TempDir::new("cache-full");
    let config = write_config(
        &dir,
        "[server]\nretry_cache_entries = 2\n[[rule]]\ntext = \"hi\"\nreply = { text = \"Hello!\" }\n",
    );
    let (server, addr) = start_server(&dir, &config);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for id in 0..10u16 {
        let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", id.into());
        let mut out = Vec::new();
        fcgi_request(&mut out, 1, true, "POST", &signed("7"), body.as_bytes());
        std::io::Write::write_all(&mut s, &out).unwrap();
        let reply = fcgi_response(&mut s).expect("answered");
        assert!(reply.contains("Hello!"), "{reply}");
    }
    // Answers dropped before their retention again and again, one warning (the next
    // comes a minute later).
    let log = wait_for_log(&server, "retry cache full");
    assert_eq!(log.matches("retry cache full").count(), 1, "{log}");
    assert!(log.contains("capacity=2 dropped=1"), "{log}");
    assert!(log.contains("raise retry_cache_entries"), "{log}");
}

#[test]
fn request_lines_follow_the_log_filter_and_stay_one_line_each() {
    for (filter, info_lines) in [("info", 2), ("warn", 0), ("wechat_fcgi=warn", 0)] {
        let dir = TempDir::new("log-filter");
        let config = write_config(
            &dir,
            "[[rule]]\ntext = \"hi\"\nreply = { text = \"Hello!\" }\n",
        );
        let (server, addr) = start_server_with_env(&dir, &config, &[("WECHAT_FCGI_LOG", filter)]);
        let send = |query: &str, body: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let mut out = Vec::new();
            fcgi_request(&mut out, 1, false, "POST", query, body.as_bytes());
            std::io::Write::write_all(&mut s, &out).unwrap();
            fcgi_response(&mut s).expect("answered")
        };
        let hi = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", 1);
        assert!(send(&signed("1"), &hi).contains("Hello!"));
        // A value with a newline in it (MsgType is the peer's) stays on its line.
        let odd = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "x", 2)
            .replace("[CDATA[text]]", "[CDATA[te\nxt]]");
        assert!(send(&signed("2"), &odd).starts_with("Status: 200"));
        assert!(send("x=1", &hi).starts_with("Status: 403"));
        // The refusal is a WARN line: written at once, after the INFO lines before it.
        let log = wait_for_log(&server, "request refused");
        let infos: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" INFO request "))
            .collect();
        assert_eq!(infos.len(), info_lines, "{filter}: {log}");
        if info_lines > 0 {
            assert!(
                infos[0].contains(" INFO request method=POST outcome=reply status=200 msg_type=text rule=rule[0] reply_type=text via=rule latency_us="),
                "{log}"
            );
            assert!(infos[1].contains("msg_type=te?xt"), "{log}");
        }
        assert!(!log.lines().any(|l| l.starts_with("xt")), "{log}");
    }
}
