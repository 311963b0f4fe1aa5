//! Late answers end to end, through a real nginx, with real programs, a real HTTP hook
//! server, a local HTTPS stand-in for WeChat's API, and a WeChat simulator that gives
//! up on an attempt after 600 ms and tries three times in all (the config's
//! `reply_budget_ms` is 450: WeChat's 5 s and 4.5 s, scaled down).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How long the simulated WeChat waits for one attempt.
const PATIENCE: Duration = Duration::from_millis(600);

fn runs(dir: &TempDir) -> usize {
    std::fs::read_to_string(dir.path("runs.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// The reply's Content, or the body as it is (`success`).
fn content(body: &str) -> String {
    match (body.find("<Content><![CDATA["), body.find("]]></Content>")) {
        (Some(a), Some(b)) => body[a + 18..b].to_owned(),
        _ => body.to_owned(),
    }
}

/// WeChat delivering one message: each attempt on a new connection with a new
/// signature, given up after [`PATIENCE`]; three attempts in all. Returns the attempt
/// that was answered (1-based) and its reply's content.
fn deliver(port: u16, body: &str) -> Option<(u32, String)> {
    for attempt in 1..=3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let head = format!(
            "POST /wechat?{} HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            signed("sim"),
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        let given_up = Instant::now() + PATIENCE;
        let mut response = Vec::new();
        let answered = loop {
            let left = given_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            s.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                Err(_) => break false,
            }
        };
        if answered {
            let text = String::from_utf8_lossy(&response).into_owned();
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            return Some((attempt, content(body)));
        }
        // Given up: the connection is dropped, as WeChat does.
    }
    None
}

/// One plain request (a follower's message answered at once).
fn say(port: u16, text: &str, msg_id: u64) -> String {
    let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), text, msg_id);
    let (status, reply) = http(
        port,
        "POST",
        &format!("/wechat?{}", signed("say")),
        body.as_bytes(),
    );
    assert_eq!(status, 200);
    content(&String::from_utf8_lossy(&reply))
}

fn message(text: &str, msg_id: u64) -> String {
    wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), text, msg_id)
}

/// Pick up until the answer is no longer being made (bounded).
fn pick_up(port: u16, first_id: u64) -> String {
    let start = Instant::now();
    let mut id = first_id;
    loop {
        let got = say(port, "1", id);
        if got != "still running" || start.elapsed() > Duration::from_secs(10) {
            return got;
        }
        id += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sleep.sh SECONDS ANSWER`: a slow reply program with a side effect per run.
fn late_rules(dir: &TempDir, late: &str, extra_rules: &str) -> String {
    write_executable(
        dir,
        "sleep.sh",
        "#!/bin/sh\ncat >/dev/null\necho run >> runs.log\nsleep \"$1\"\necho \"$2\"\n",
    );
    format!(
        "[server]\nreply_budget_ms = 450\n\
         [late]\n{late}\npickup = [\"1\"]\npending = {{ text = \"pending\" }}\n\
         still_running = {{ text = \"still running\" }}\n\
         [[rule]]\ntext = \"inline\"\nrun = {{ command = [\"./sleep.sh\", \"0.9\", \"inline answer\"], timeout_ms = 10000 }}\n\
         [[rule]]\ntext = \"late\"\nrun = {{ command = [\"./sleep.sh\", \"2.5\", \"late answer\"], timeout_ms = 10000 }}\n\
         {extra_rules}\
         [default]\nreply = {{ text = \"default\" }}\n"
    )
}

/// The hold timeline, whichever instance each attempt reaches.
fn hold_timeline(dir: &TempDir, port: u16, logs: &dyn Fn() -> String) {
    // Answered during attempt 2: inline, on attempt 2.
    assert_eq!(
        deliver(port, &message("inline", 1)),
        Some((2, "inline answer".into()))
    );
    assert_eq!(runs(dir), 1, "the program ran once for three attempts");
    // Not ready by attempt 3: `pending`, then a pick-up.
    assert_eq!(
        deliver(port, &message("late", 2)),
        Some((3, "pending".into()))
    );
    assert_eq!(say(port, "hello", 10), "default", "other messages as usual");
    assert_eq!(say(port, "1", 11), "still running");
    assert_eq!(pick_up(port, 12), "late answer");
    assert_eq!(runs(dir), 2);
    assert_eq!(say(port, "1", 40), "default", "delivered once");
    // WeChat retrying the late message now: `success`, not a second delivery.
    assert_eq!(
        deliver(port, &message("late", 2)),
        Some((1, "success".into()))
    );
    let start = Instant::now();
    loop {
        let log = logs();
        if [
            "via=late_hold",
            "via=still_running",
            "via=pickup",
            "via=late_done",
        ]
        .iter()
        .all(|v| log.contains(v))
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hold_answers_inline_or_pending_then_pickup_through_nginx() {
    let dir = TempDir::new("late-hold");
    let config = write_config(&dir, &late_rules(&dir, "mode = \"hold\"", ""));
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    hold_timeline(&dir, port, &|| server.log());
    // Requests WeChat gave up on, dropped by nginx while held: normal, not an error.
    let log = server.log();
    let complaints: Vec<_> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !l.contains("readable by every user") && !l.contains("serving as root"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:?}");
}

#[test]
fn hold_over_redis_with_two_instances() {
    let dir = TempDir::new("late-hold-redis");
    let redis_port = free_port();
    let _redis = start_redis(&dir, redis_port);
    let rules = late_rules(&dir, "mode = \"hold\"", "");
    let config = write_config(
        &dir,
        &format!("[state]\nstore = \"redis://127.0.0.1:{redis_port}/0\"\n{rules}"),
    );
    let (a, addr_a) = start_server(&dir, &config);
    let (b, addr_b) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &format!("{addr_a};\n        server {addr_b}"));
    hold_timeline(&dir, port, &|| format!("{}{}", a.log(), b.log()));
}

/// A small HTTP/1.1 server (keep-alive), optionally over TLS: counts connections,
/// records requests, answers with `handler`.
struct HttpServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: Requests,
}

/// Each request's target and body, in order.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

type Handler = Arc<dyn Fn(&str, &[u8]) -> (u16, Vec<u8>) + Send + Sync>;

fn start_http(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests: Requests = Arc::default();
    let (count, log) = (connections.clone(), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let (handler, log, tls) = (handler.clone(), log.clone(), tls.clone());
            std::thread::spawn(move || match tls {
                Some(config) => {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    serve_http(rustls::StreamOwned::new(conn, stream), &handler, &log);
                }
                None => serve_http(stream, &handler, &log),
            });
        }
    });
    HttpServer {
        port,
        connections,
        requests,
    }
}

fn serve_http(mut s: impl Read + Write, handler: &Handler, log: &Mutex<Vec<(String, Vec<u8>)>>) {
    let mut buf = Vec::new();
    let read_more = |s: &mut dyn Read, buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    };
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if !read_more(&mut s, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if !read_more(&mut s, &mut buf) {
                return;
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        log.lock().unwrap().push((target.clone(), body.clone()));
        let (status, out) = handler(&target, &body);
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            out.len()
        );
        if s.write_all(head.as_bytes()).is_err() || s.write_all(&out).is_err() {
            return;
        }
        let _ = s.flush();
    }
}

#[test]
fn http_hooks_answer_reuse_connections_and_fall_back() {
    let dir = TempDir::new("late-hooks");
    let hook = start_http(
        Arc::new(|target: &str, _body: &[u8]| match target {
            "/fast" => (200, b"from the hook".to_vec()),
            "/json" => (200, br#"{"image": {"media_id": "MEDIA"}}"#.to_vec()),
            "/slow" => {
                std::thread::sleep(Duration::from_millis(2500));
                (200, b"slow hook answer".to_vec())
            }
            "/big" => (200, vec![b'x'; 100 * 1024]),
            _ => (500, b"oops".to_vec()),
        }),
        None,
    );
    let hook_rule = |word: &str, path: &str| {
        format!(
            "[[rule]]\ntext = \"{word}\"\nrun = {{ url = \"http://127.0.0.1:{}{path}\", timeout_ms = 10000 }}\n\
             fallback = {{ text = \"hook fallback\" }}\n",
            hook.port
        )
    };
    let rules = [
        hook_rule("fast", "/fast"),
        hook_rule("json", "/json"),
        hook_rule("slow", "/slow"),
        hook_rule("error", "/500"),
        hook_rule("big", "/big"),
    ]
    .concat();
    let config = write_config(&dir, &late_rules(&dir, "mode = \"hold\"", &rules));
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());

    for id in 1..=3 {
        assert_eq!(say(port, "fast", id), "from the hook");
    }
    assert_eq!(
        hook.connections.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
    // The hook got the message as a program gets it.
    let (target, body) = hook.requests.lock().unwrap()[0].clone();
    assert_eq!(target, "/fast");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["Content"], "fast");
    assert_eq!(json["FromUserName"], "oF");

    let (status, image) = http(
        port,
        "POST",
        &format!("/wechat?{}", signed("j")),
        message("json", 4).as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&image).contains("<MediaId><![CDATA[MEDIA]]></MediaId>"));
    assert_eq!(
        say(port, "error", 5),
        "hook fallback",
        "non-2xx: the fallback"
    );
    assert_eq!(
        say(port, "big", 6),
        "hook fallback",
        "oversized: the fallback"
    );
    // A slow hook goes through the late modes like a program.
    assert_eq!(
        deliver(port, &message("slow", 7)),
        Some((3, "pending".into()))
    );
    assert_eq!(pick_up(port, 100), "slow hook answer");
    let log = wait_for_log(&server, "answered HTTP 500");
    assert!(log.contains("what=hook"), "{log}");
    assert!(!log.contains("/500"), "no URL path in the log: {log}");
}

/// A CA and a certificate for 127.0.0.1 signed by it; the CA's PEM goes to `ca_file`.
fn tls_config(ca_file: &std::path::Path) -> Arc<rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wechat-fcgi test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(ca_file, ca.pem()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    Arc::new(config)
}

/// A stand-in for WeChat's API: `stable_token` hands out `token-N`; `custom/send`
/// checks the token, answers the next scripted errcode (if any) and records the push.
struct Api {
    server: HttpServer,
    tokens: Arc<AtomicUsize>,
    errors: Arc<Mutex<std::collections::VecDeque<i64>>>,
}

impl Api {
    fn start(ca_file: &std::path::Path) -> Api {
        let tokens = Arc::new(AtomicUsize::new(0));
        let errors: Arc<Mutex<std::collections::VecDeque<i64>>> = Arc::default();
        let (t, e) = (tokens.clone(), errors.clone());
        let handler: Handler = Arc::new(move |target: &str, body: &[u8]| {
            if target == "/cgi-bin/stable_token" {
                let ask: serde_json::Value = serde_json::from_slice(body).unwrap();
                if ask["appid"] != "wx1234567890abcdef" || ask["secret"] != "s3cretS3cret" {
                    return (
                        200,
                        br#"{"errcode":40013,"errmsg":"invalid appid"}"#.to_vec(),
                    );
                }
                let n = t.fetch_add(1, Ordering::SeqCst) + 1;
                return (
                    200,
                    format!(r#"{{"access_token":"token-{n}","expires_in":7200}}"#).into_bytes(),
                );
            }
            if let Some(query) = target.strip_prefix("/cgi-bin/message/custom/send?access_token=") {
                let current = format!("token-{}", t.load(Ordering::SeqCst));
                if query != current {
                    return (
                        200,
                        br#"{"errcode":40001,"errmsg":"invalid credential"}"#.to_vec(),
                    );
                }
                if let Some(code) = e.lock().unwrap().pop_front() {
                    return (
                        200,
                        format!(r#"{{"errcode":{code},"errmsg":"scripted"}}"#).into_bytes(),
                    );
                }
                return (200, br#"{"errcode":0,"errmsg":"ok"}"#.to_vec());
            }
            (404, b"{}".to_vec())
        });
        let server = start_http(handler, Some(tls_config(ca_file)));
        Api {
            server,
            tokens,
            errors,
        }
    }

    /// The pushes WeChat accepted or refused, in order (body JSON).
    fn pushes(&self) -> Vec<serde_json::Value> {
        self.server
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.starts_with("/cgi-bin/message/custom/send"))
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }

    fn token_requests(&self) -> Vec<serde_json::Value> {
        self.server
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == "/cgi-bin/stable_token")
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }

    fn wait_pushes(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let pushes = self.pushes();
            if pushes.len() >= n || start.elapsed() > Duration::from_secs(10) {
                return pushes;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn customer_service_config(dir: &TempDir, api_port: u16, extra: &str) -> std::path::PathBuf {
    let account = format!(
        "appid = \"wx1234567890abcdef\"\nappsecret = \"s3cretS3cret\"\n\
         api_base = \"https://127.0.0.1:{api_port}\"\napi_ca_file = \"ca.pem\"\n"
    );
    let rules = late_rules(dir, "mode = \"customer_service\"", "");
    write_config(dir, &format!("{account}{extra}{rules}"))
}

#[test]
fn customer_service_pushes_refreshes_a_refused_token_and_falls_back_to_pickup() {
    let dir = TempDir::new("late-cs");
    let api = Api::start(&dir.path("ca.pem"));
    let config = customer_service_config(
        &dir,
        api.server.port,
        "[archive]\nto = \"jsonl:archive.jsonl\"\n",
    );
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());

    // `success` at the budget, on the first attempt; the answer pushed when ready.
    assert_eq!(
        deliver(port, &message("late", 1)),
        Some((1, "success".into()))
    );
    let pushes = api.wait_pushes(1);
    assert_eq!(
        pushes,
        [
            serde_json::json!({"touser": "oF", "msgtype": "text", "text": {"content": "late answer"}})
        ]
    );
    assert_eq!(api.tokens.load(Ordering::SeqCst), 1);

    // A token WeChat no longer accepts: one forced refresh, the push tried again.
    api.errors.lock().unwrap().push_back(40001);
    assert_eq!(
        deliver(port, &message("late", 2)),
        Some((1, "success".into()))
    );
    assert_eq!(api.wait_pushes(3).len(), 3);
    let tokens = api.token_requests();
    assert_eq!(tokens.len(), 2, "refreshed once");
    assert_eq!(tokens[1]["force_refresh"], true);

    // Outside the 48-hour window: the answer waits for a pick-up.
    api.errors.lock().unwrap().push_back(45015);
    assert_eq!(
        deliver(port, &message("late", 3)),
        Some((1, "success".into()))
    );
    wait_for_log(&server, "errcode 45015");
    assert_eq!(say(port, "1", 50), "late answer");
    assert_eq!(say(port, "1", 51), "default", "picked up once");
    // The archive has each message (answered `success` for a push) and each push.
    let archive = std::fs::read_to_string(dir.path("archive.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = archive
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pushes: Vec<_> = records
        .iter()
        .filter(|r| r.get("pushed").is_some())
        .collect();
    assert_eq!(pushes.len(), 3, "{archive}");
    assert_eq!(pushes[0]["pushed"], true);
    assert_eq!(pushes[0]["reply"]["text"], "late answer");
    assert_eq!(pushes[2]["pushed"], false);
    assert!(pushes[2]["error"].as_str().unwrap().contains("45015"));
    assert!(records
        .iter()
        .any(|r| r["via"] == "customer_service" && r["message"]["MsgId"] == "1"));
    assert!(records.iter().any(|r| r["via"] == "pickup"));
    let log = server.log();
    assert!(log.contains("via=customer_service"), "{log}");
    assert!(
        !log.contains("token-"),
        "the access token is never logged: {log}"
    );
    assert!(
        !log.contains("s3cretS3cret"),
        "the AppSecret is never logged"
    );
}

#[test]
fn customer_service_with_the_api_down_falls_back_to_pickup() {
    let dir = TempDir::new("late-cs-down");
    // Nothing listens on this port; ca.pem must still be a CA file.
    let _ = tls_config(&dir.path("ca.pem"));
    let config = customer_service_config(&dir, free_port(), "");
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    assert_eq!(
        deliver(port, &message("late", 1)),
        Some((1, "success".into()))
    );
    wait_for_log(&server, "customer-service push failed");
    assert_eq!(say(port, "1", 60), "late answer");
}

/// Two instances (behind one nginx upstream) over one shared store (SQLite, then Redis)
/// push at the same time: one fetches the token, the other uses it.
#[test]
fn customer_service_token_is_fetched_once_across_two_processes() {
    for kind in ["sqlite", "redis"] {
        let dir = TempDir::new(&format!("late-cs-two-{kind}"));
        let api = Api::start(&dir.path("ca.pem"));
        let redis_port = free_port();
        let (_redis, store) = match kind {
            "sqlite" => (None, format!("sqlite:{}", dir.path("state.db").display())),
            _ => (
                Some(start_redis(&dir, redis_port)),
                format!("redis://127.0.0.1:{redis_port}/0"),
            ),
        };
        let config = customer_service_config(
            &dir,
            api.server.port,
            &format!("[state]\nstore = \"{store}\"\n"),
        );
        let (_a, addr_a) = start_server(&dir, &config);
        let (_b, addr_b) = start_server(&dir, &config);
        let (_nginx, port) = start_nginx(&dir, &format!("{addr_a};\n        server {addr_b}"));
        let senders: Vec<_> = (1..=2)
            .map(|id| std::thread::spawn(move || deliver(port, &message("late", id))))
            .collect();
        for s in senders {
            assert_eq!(s.join().unwrap(), Some((1, "success".into())), "{kind}");
        }
        assert_eq!(api.wait_pushes(2).len(), 2, "{kind}");
        assert_eq!(runs(&dir), 2, "{kind}");
        assert_eq!(
            api.tokens.load(Ordering::SeqCst),
            1,
            "one token for both ({kind})"
        );
    }
}

/// The examples in scripts/examples answer as the README says: the slow program held
/// and picked up, the hook server inline.
#[test]
fn the_slow_bot_and_hook_server_examples_work() {
    let dir = TempDir::new("late-examples");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/examples");
    let hook_port = free_port();
    let hook_log = dir.path("hook.log");
    // Stopped (TERM, then its group) when dropped, also when the test fails.
    let _hook = Proc {
        child: std::process::Command::new("python3")
            .arg(format!("{examples}/hook-server.py"))
            .arg(hook_port.to_string())
            .env("HOOK_DELAY", "0")
            .process_group(0)
            .stderr(std::fs::File::create(&hook_log).unwrap())
            .spawn()
            .expect("python3 (scripts/test.sh installs it)"),
        stderr: hook_log,
        is_nginx: false,
    };
    let rules = format!(
        "[[rule]]\nprefix = \"think\"\n\
         run = {{ command = [\"{examples}/slow-bot.sh\"], timeout_ms = 20000, env = {{ SLOW_BOT_SECONDS = \"2.5\" }} }}\n\
         [[rule]]\nprefix = \"ask \"\nrun = {{ url = \"http://127.0.0.1:{hook_port}/wechat-reply\", timeout_ms = 5000 }}\n"
    );
    let config = write_config(&dir, &late_rules(&dir, "mode = \"hold\"", &rules));
    let (_server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", hook_port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "hook-server.py did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        say(port, "ask what time is it", 1),
        "You asked: what time is it"
    );
    assert_eq!(
        deliver(port, &message("think hard", 2)),
        Some((3, "pending".into()))
    );
    assert_eq!(
        pick_up(port, 3),
        "You said: think hard (thought about it for 2.5 s)"
    );
}

/// One CGI request (as Apache's mod_cgi runs it): returns the reply's content once the
/// process closed its stdout (it may stay alive to finish a program).
fn cgi(config: &std::path::Path, body: &str) -> (String, std::process::Child) {
    let mut child = spawn_cgi(config, &signed("cgi"), body.as_bytes(), &[]);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (content(body), child)
}

/// CGI mode over a SQLite file: each attempt is its own process, held or answered
/// `pending` as in a server; the pick-up is one more process. With the memory store,
/// late answers are off in CGI mode (`success` at the budget).
#[test]
fn hold_in_cgi_mode_over_sqlite_and_off_with_memory() {
    let dir = TempDir::new("late-cgi");
    let rules = late_rules(&dir, "mode = \"hold\"", "");
    let config = write_config(
        &dir,
        &format!("[state]\nstore = \"sqlite:state.db\"\n{rules}"),
    );
    let attempt = |n: u64| {
        let config = config.clone();
        std::thread::spawn(move || {
            std::thread::sleep(PATIENCE * (n as u32 - 1));
            let started = Instant::now();
            let (reply, mut child) = cgi(&config, &message("late", 5));
            let waited = started.elapsed();
            child.wait().unwrap();
            (reply, waited)
        })
    };
    let attempts: Vec<_> = (1..=3).map(attempt).collect();
    let replies: Vec<(String, Duration)> =
        attempts.into_iter().map(|a| a.join().unwrap()).collect();
    assert_eq!(replies[2].0, "pending", "{replies:?}");
    assert!(replies[2].1 < Duration::from_millis(1000), "{replies:?}");
    for (reply, waited) in &replies[..2] {
        assert_eq!(reply, "success", "held, then late: {replies:?}");
        assert!(
            *waited > PATIENCE,
            "held past WeChat's patience: {replies:?}"
        );
    }
    let (picked, mut child) = cgi(&config, &message("1", 6));
    child.wait().unwrap();
    assert_eq!(picked, "late answer");
    assert_eq!(runs(&dir), 1, "one program for the three processes");

    let memory = write_config(&dir, &late_rules(&dir, "mode = \"hold\"", ""));
    let started = Instant::now();
    let (reply, mut child) = cgi(&memory, &message("late", 7));
    assert_eq!(reply, "success");
    assert!(started.elapsed() < Duration::from_millis(1500), "not held");
    child.wait().unwrap();
}
