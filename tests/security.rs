//! Attacks found by a security review, run against the real server: each test replays
//! the attack and shows it no longer works.

mod common;
use common::*;

use std::io::Write;
use std::net::TcpStream;

use base64::Engine as _;
use wechat_fcgi::core::crypto::AesKey;
use wechat_fcgi::core::signature::sign;

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx0123456789abcdef";

fn safe_config(dir: &TempDir) -> std::path::PathBuf {
    write_config(
        dir,
        &format!("appid = \"{APPID}\"\nmode = \"safe\"\nencoding_aes_key = \"{KEY}\"\n{RULES}"),
    )
}

/// Send one FastCGI request on a kept-alive connection; returns the response text.
fn ask(s: &mut TcpStream, method: &str, query: &str, body: &[u8]) -> String {
    let mut out = Vec::new();
    fcgi_request(&mut out, 1, true, method, query, body);
    s.write_all(&out).unwrap();
    fcgi_response(s).expect("a response")
}

/// The query for an `<Encrypt>` text, signed as whoever has the token can sign it.
fn signed_encrypted(encrypt: &str, nonce: &str) -> (String, String) {
    let ts = unix_now();
    let ts_text = ts.to_string();
    let msg_signature = sign(&mut [
        TOKEN.as_bytes(),
        ts_text.as_bytes(),
        nonce.as_bytes(),
        encrypt.as_bytes(),
    ]);
    let query = format!(
        "{}&encrypt_type=aes&msg_signature={}",
        wechat_fcgi::sample::signed_query(TOKEN, ts, nonce),
        String::from_utf8_lossy(&msg_signature)
    );
    let body = format!("<xml><ToUserName><![CDATA[gh]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>");
    (query, body)
}

// Regression: after a valid msg_signature, bad padding answered 400 and an AppID
// mismatch 403, which let a script with the token decrypt a captured message.
#[test]
fn safe_mode_is_no_padding_oracle() {
    let dir = TempDir::new("oracle");
    let config = safe_config(&dir);
    let (server, addr) = start_server(&dir, &config);
    let mut s = TcpStream::connect(addr).unwrap();
    let key = AesKey::parse(KEY).unwrap();
    let message = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", 5);
    let captured = wechat_fcgi::core::crypto::encrypt(&key, APPID, message.as_bytes(), &[9; 16]);
    let b64 = &base64::engine::general_purpose::STANDARD;
    let cipher = b64.decode(&captured).unwrap();
    // The classic attack on the last byte: vary the penultimate block's last byte and
    // watch the answers. Valid padding leads on to other checks (length, AppID, XML);
    // any difference in the answer tells the attacker which.
    let target = cipher.len() - 17;
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for guess in 0..=255u8 {
        if guess == cipher[target] {
            continue; // the untouched message
        }
        let mut forged = cipher.clone();
        forged[target] = guess;
        let (query, body) = signed_encrypted(&b64.encode(&forged), &guess.to_string());
        let response = ask(&mut s, "POST", &query, body.as_bytes());
        *answers.entry(response).or_default() += 1;
    }
    // Other failures after msg_signature: another AppID, a truncated frame, garbage
    // that is not XML, a frame whose length field points past its end.
    let others = [
        wechat_fcgi::core::crypto::encrypt(
            &key,
            "wx9999999999999999",
            message.as_bytes(),
            &[1; 16],
        ),
        b64.encode(&cipher[..cipher.len() - 32]),
        wechat_fcgi::core::crypto::encrypt(&key, APPID, b"not xml at all", &[2; 16]),
        wechat_fcgi::core::crypto::encrypt(
            &key,
            APPID,
            b"<xml><MsgType>text</MsgType></xml>",
            &[3; 16],
        ),
    ];
    for (i, encrypt) in others.iter().enumerate() {
        let (query, body) = signed_encrypted(encrypt, &format!("9{i}"));
        let response = ask(&mut s, "POST", &query, body.as_bytes());
        *answers.entry(response).or_default() += 1;
    }
    assert_eq!(
        answers.len(),
        1,
        "every failure must look the same, got {answers:#?}"
    );
    let (only, _) = answers.into_iter().next().unwrap();
    assert!(only.starts_with("Status: 400 Bad Request"), "{only}");
    assert!(only.ends_with("encrypted message refused\n"), "{only}");
    // The log still says which check failed.
    let log = wait_for_log(&server, "bad_padding");
    assert!(
        log.contains("appid_mismatch") || log.contains("-40005"),
        "{log}"
    );
    // The real message still works.
    let (query, body) = signed_encrypted(&captured, "1");
    assert!(ask(&mut s, "POST", &query, body.as_bytes()).starts_with("Status: 200"));
}

// Regression: the signature does not cover the body, so a signed query (from an access
// log, say) could be replayed with any message while its timestamp was fresh.
#[test]
fn a_signed_query_is_bound_to_its_first_body() {
    let dir = TempDir::new("replay");
    let config = write_config(&dir, RULES);
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let query = signed("8080");
    let real = wechat_fcgi::sample::text_with_id("gh", "oVictim", unix_now(), "hi", 77);
    let post = |body: &str| {
        let (status, reply) = http(port, "POST", &format!("/wechat?{query}"), body.as_bytes());
        (status, String::from_utf8_lossy(&reply).into_owned())
    };
    let (status, reply) = post(&real);
    assert_eq!(status, 200);
    assert!(reply.contains("Hello!"), "{reply}");
    // The same query with a forged message: another sender, another text.
    for forged in [
        wechat_fcgi::sample::text_with_id("gh", "oAttacker", unix_now(), "hi", 78),
        wechat_fcgi::sample::text_with_id("gh", "oVictim", unix_now(), "something else", 79),
        real.replace("hi", "hi "),
    ] {
        let (status, reply) = post(&forged);
        assert_eq!(
            (status, reply.as_str()),
            (403, "signed query already used\n")
        );
    }
    // WeChat's retry (same query, same body) is still answered, from the cache.
    let (status, reply) = post(&real);
    assert_eq!(status, 200);
    assert!(reply.contains("Hello!"), "{reply}");
    let log = wait_for_log(&server, "outcome=query_reused");
    assert!(
        log.contains("a replayed query with a forged message"),
        "{log}"
    );
    wait_for_log(&server, "via=retry");
}

// Regression: a message pre-sent by someone else under another sender must not answer
// (or pre-decide) the real sender's message with the same MsgId.
#[test]
fn answers_are_kept_per_sender() {
    let dir = TempDir::new("per-sender");
    let config = write_config(
        &dir,
        "[[rule]]\ntext = \"hi\"\nreply = { text = \"Hello {from}!\" }\n",
    );
    let (_server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let send = |from: &str, nonce: &str| {
        let body = wechat_fcgi::sample::text_with_id("gh", from, unix_now(), "hi", 4242);
        let (status, reply) = http(
            port,
            "POST",
            &format!("/wechat?{}", signed(nonce)),
            body.as_bytes(),
        );
        assert_eq!(status, 200);
        String::from_utf8_lossy(&reply).into_owned()
    };
    assert!(send("oAttacker", "1").contains("Hello oAttacker!"));
    assert!(send("oVictim", "2").contains("Hello oVictim!"));
}

// Regression: the retry cache was bounded in entries only; 1 500 replies of 200 KB
// (rendered from the message) took the process from 4.8 MB to 300 MB.
#[test]
fn the_retry_cache_is_bounded_in_bytes() {
    let dir = TempDir::new("cache-bytes");
    let config = write_config(
        &dir,
        "[server]\nretry_cache_bytes = 1048576\nmax_body_bytes = 300000\n\
         [[rule]]\nprefix = \"echo\"\nreply = { text = \"{content}\" }\n",
    );
    let (server, addr) = start_server(&dir, &config);
    let mut s = TcpStream::connect(addr).unwrap();
    let message = |i: u64| {
        let content = format!("echo {i} {}", "x".repeat(100_000));
        wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), &content, 1000 + i)
    };
    for i in 0..30 {
        let reply = ask(&mut s, "POST", &signed("1"), message(i).as_bytes());
        assert!(reply.starts_with("Status: 200"), "{}", &reply[..100]);
    }
    // 3 MB of replies into a 1 MiB cache: the first answers were dropped, oldest first,
    // and said so; the newest are still there.
    let retry_of_newest = ask(&mut s, "POST", &signed("2"), message(29).as_bytes());
    assert!(retry_of_newest.starts_with("Status: 200"));
    let retry_of_oldest = ask(&mut s, "POST", &signed("3"), message(0).as_bytes());
    assert!(retry_of_oldest.starts_with("Status: 200"));
    let log = wait_for_log(&server, "retry_cache_bytes");
    let log = {
        let start = std::time::Instant::now();
        let mut log = log;
        while log.matches(" outcome=reply").count() < 32 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
            log = server.log();
        }
        log
    };
    let vias: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" outcome=reply"))
        .map(|l| {
            l.split(" via=")
                .nth(1)
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("")
        })
        .collect();
    assert_eq!(vias[30], "retry", "the newest answer is kept");
    assert_eq!(vias[31], "rule", "the oldest answer was dropped");
}

/// A reply program that reports what it inherited: file descriptors above 2 (what they
/// are) and its environment.
const INHERITANCE_REPORT: &str = "#!/bin/sh\ncat >/dev/null\n\
    for fd in 3 4 5 6 7 8 9; do t=$(readlink /proc/$$/fd/$fd 2>/dev/null) && echo \"fd$fd=$t\"; done\n\
    env | sort\n";

// Regression: under systemd socket activation, fd 3 (the listening socket) and
// LISTEN_FDS/LISTEN_PID reached reply programs; one that kept a child answered
// requests itself.
#[test]
fn reply_programs_inherit_no_socket_under_socket_activation() {
    use std::os::fd::OwnedFd;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("inherit");
    write_executable(&dir, "report.sh", INHERITANCE_REPORT);
    let config = write_config(
        &dir,
        "[[rule]]\ntext = \"report\"\nrun = { command = [\"./report.sh\"] }\n",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = dir.path("log");
    let child = std::process::Command::new("sh")
        .process_group(0)
        .arg("-c")
        .arg(format!(
            "exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec '{BIN}' serve --config '{}'",
            config.display()
        ))
        .stdin(std::process::Stdio::from(OwnedFd::from(listener)))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = Proc {
        child,
        stderr: log,
        is_nginx: false,
    };
    wait_for_log(&server, "systemd socket activation");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "report", 1);
    let reply = ask(&mut s, "POST", &signed("1"), body.as_bytes());
    assert!(reply.starts_with("Status: 200"), "{reply}");
    assert!(reply.contains("PATH="), "the report ran: {reply}");
    assert!(!reply.contains("socket:"), "a socket leaked: {reply}");
    assert!(!reply.contains("LISTEN_"), "{reply}");
}

// Regression: in CGI mode programs got the whole environment, client-controlled
// HTTP_* headers and the signed QUERY_STRING included.
#[test]
fn reply_programs_get_a_small_documented_environment() {
    let dir = TempDir::new("program-env");
    write_executable(&dir, "report.sh", INHERITANCE_REPORT);
    let config = write_config(
        &dir,
        "[[rule]]\ntext = \"report\"\nrun = { command = [\"./report.sh\"], env = { BOT_URL = \"http://127.0.0.1:5000\" } }\n",
    );
    let config = config.to_str().unwrap();
    let query = signed("1");
    let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "report", 2);
    let len = body.len().to_string();
    let (_, stdout, stderr) = run_cgi(
        &[],
        &[
            ("WECHAT_FCGI_CONFIG", config),
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", &query),
            ("CONTENT_LENGTH", &len),
            ("HTTP_X_EVIL", "1"),
            ("REMOTE_ADDR", "203.0.113.9"),
            ("PATH", "/usr/bin:/bin"),
            ("LANG", "C.UTF-8"),
            ("SECRET_FROM_THE_HOST", "s3cret"),
        ],
        body.as_bytes(),
    );
    assert!(stdout.starts_with("Status: 200"), "{stdout}\n{stderr}");
    let content = stdout
        .split("<Content><![CDATA[")
        .nth(1)
        .and_then(|c| c.split("]]></Content>").next())
        .unwrap_or_else(|| panic!("{stdout}"));
    // (The report's own `fdN=` lines are what the shell opened for it, not the env.)
    let names: Vec<&str> = content
        .lines()
        .filter(|l| !l.starts_with("fd"))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(!content.contains("socket:"), "{content}");
    for name in &names {
        assert!(
            [
                "PATH",
                "LANG",
                "HOME",
                "TZ",
                "WECHAT_RULE",
                "BOT_URL",
                "PWD",
                "SHLVL",
                "_"
            ]
            .contains(name),
            "{name} reached the program: {content}"
        );
    }
    assert!(
        content.contains("BOT_URL=http://127.0.0.1:5000"),
        "{content}"
    );
    assert!(content.contains("WECHAT_RULE=rule[0]"), "{content}");
    assert!(content.contains("LANG=C.UTF-8"), "{content}");
}

// Regression: a client that pipelined requests and never read its answers held a
// connection slot forever (a legitimate request waited 20 s).
#[test]
fn a_client_that_never_reads_is_closed_after_the_write_timeout() {
    let dir = TempDir::new("write-timeout");
    let config = write_config(
        &dir,
        "[server]\nmax_connections = 1\nwrite_timeout_secs = 1\n",
    );
    let (server, addr) = start_server(&dir, &config);
    // The hog: many handshakes with a 30 KB echostr each, written from a thread (its
    // writes block once the server stops reading), never reading an answer.
    // A small receive buffer, so the server's output backs up after little data.
    let hog = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hog.set_recv_buffer_size(4096).unwrap();
    hog.connect(&addr.into()).unwrap();
    let hog: TcpStream = hog.into();
    let mut writer = hog.try_clone().unwrap();
    let echo = "e".repeat(30_000);
    let query = format!("{}&echostr={echo}", signed("1"));
    let feeder = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for id in 0..50u16 {
            fcgi_request(&mut batch, id + 1, true, "GET", &query, b"");
        }
        for _ in 0..20 {
            if writer.write_all(&batch).is_err() {
                return; // closed by the server
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A legitimate request, in the backlog behind the hog's connection slot.
    let started = std::time::Instant::now();
    let mut legit = TcpStream::connect(addr).unwrap();
    let reply = ask(
        &mut legit,
        "GET",
        &format!("{}&echostr=ok", signed("2")),
        b"",
    );
    assert!(reply.ends_with("\r\n\r\nok"), "{reply}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "waited {:?}",
        started.elapsed()
    );
    wait_for_log(&server, "did not take our output within write_timeout_secs");
    drop(hog);
    feeder.join().unwrap();
}

// A connection that only sends records that are not requests (here GET_VALUES) is
// idle: it is closed after idle_timeout_secs however often it sends them.
#[test]
fn records_that_are_not_requests_do_not_keep_a_connection_open() {
    let dir = TempDir::new("idle");
    let config = write_config(&dir, "[server]\nidle_timeout_secs = 1\n");
    let (_server, addr) = start_server(&dir, &config);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut get_values = Vec::new();
    wechat_fcgi::fcgi::record::write_record(
        &mut get_values,
        wechat_fcgi::fcgi::record::GET_VALUES,
        0,
        &[],
    );
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let closed = loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(6),
            "still open after 6 s"
        );
        if s.write_all(&get_values).is_err() {
            break started.elapsed();
        }
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => break started.elapsed(), // closed by the server
            Ok(_) => {}                       // GET_VALUES_RESULT
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break started.elapsed(), // reset by the server
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(closed < std::time::Duration::from_secs(4), "{closed:?}");
}

/// Whether a process is gone (or only a zombie waiting for its reaper).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

// Regression: timeouts killed a program's process group, SIGTERM did not: a running
// program's children outlived the server.
#[test]
fn sigterm_kills_running_programs_and_their_children() {
    let dir = TempDir::new("sigterm-programs");
    write_executable(
        &dir,
        "lingers.sh",
        "#!/bin/sh\ncat >/dev/null\nsleep 30 &\necho $! > child.pid\necho $$ > program.pid\nsleep 30\n",
    );
    let config = write_config(
        &dir,
        "[server]\nreply_budget_ms = 300\n[late]\nmode = \"off\"\n\
         [[rule]]\ntext = \"linger\"\nrun = { command = [\"./lingers.sh\"], timeout_ms = 15000 }\n",
    );
    let (mut server, addr) = start_server(&dir, &config);
    let mut s = TcpStream::connect(addr).unwrap();
    let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "linger", 1);
    let reply = ask(&mut s, "POST", &signed("1"), body.as_bytes());
    assert!(
        reply.ends_with("success"),
        "answered at the budget: {reply}"
    );
    let read_pid = |name: &str| {
        let start = std::time::Instant::now();
        loop {
            if let Ok(pid) = std::fs::read_to_string(dir.path(name)) {
                if !pid.trim().is_empty() {
                    return pid.trim().to_owned();
                }
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no {name}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let (child, program) = (read_pid("child.pid"), read_pid("program.pid"));
    assert!(!gone(&child) && !gone(&program));
    drop(s);
    assert!(server.signal_and_wait(15).success());
    let start = std::time::Instant::now();
    while !(gone(&child) && gone(&program)) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "left running after SIGTERM: program {program}, child {child}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

// Regression: replies carried characters XML 1.0 forbids (from a template or a
// program), which no XML parser accepts. Checked with Python's parser, not ours.
#[test]
fn replies_are_always_well_formed_xml() {
    let dir = TempDir::new("xml-chars");
    write_executable(
        &dir,
        "odd.sh",
        "#!/bin/sh\ncat >/dev/null\nprintf 'bell\\001 esc\\033[31m fffe\\357\\277\\276 ok'\n",
    );
    let config = write_config(
        &dir,
        "[[rule]]\ntext = \"odd\"\nrun = { command = [\"./odd.sh\"] }\n\
         [[rule]]\nprefix = \"echo\"\nreply = { text = \"{content}\" }\n",
    );
    let (_server, addr) = start_server(&dir, &config);
    let mut s = TcpStream::connect(addr).unwrap();
    let odd = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "odd", 1);
    // A message whose Content holds a character reference XML 1.0 forbids, echoed.
    let echo = format!(
        "<xml><ToUserName><![CDATA[gh]]></ToUserName><FromUserName><![CDATA[oF]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content>echo a&#1;b&#27;c</Content><MsgId>2</MsgId></xml>",
        unix_now()
    );
    for body in [odd, echo] {
        let reply = ask(&mut s, "POST", &signed("1"), body.as_bytes());
        let xml = reply.split("\r\n\r\n").nth(1).unwrap();
        let parsed = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys, xml.dom.minidom as m; d = m.parseString(sys.stdin.buffer.read()); \
                 print(d.getElementsByTagName('Content')[0].firstChild.data)",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut p| {
                p.stdin.take().unwrap().write_all(xml.as_bytes())?;
                p.wait_with_output()
            })
            .unwrap();
        assert!(
            parsed.status.success(),
            "not XML: {xml:?}\n{}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        let content = String::from_utf8_lossy(&parsed.stdout);
        assert!(
            content.contains("ok") || content.contains("echo abc"),
            "{content}"
        );
    }
}

// Regression: program slots were one shared queue; six slow messages from one follower
// made everyone else's program answers fall back.
#[test]
fn one_follower_cannot_take_every_program_slot() {
    let dir = TempDir::new("per-sender");
    write_executable(
        &dir,
        "bot.sh",
        "#!/bin/sh\nif grep -q fast; then echo fast answer; exit; fi\n\
         while [ ! -e release ]; do sleep 0.02; done\necho slow answer\n",
    );
    let config = write_config(
        &dir,
        "[server]\nmax_programs = 4\nmax_programs_per_sender = 2\nreply_budget_ms = 1000\n\
         [[rule]]\nprefix = \"ask\"\nrun = { command = [\"./bot.sh\"], timeout_ms = 10000 }\n\
         fallback = { text = \"busy\" }\n",
    );
    let (server, addr) = start_server(&dir, &config);
    // Six slow questions from one follower, at once.
    let hog: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let body = wechat_fcgi::sample::text_with_id(
                    "gh",
                    "oHog",
                    unix_now(),
                    &format!("ask slow {i}"),
                    100 + i,
                );
                ask(&mut s, "POST", &signed("1"), body.as_bytes())
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Another follower still gets its program's answer.
    let mut s = TcpStream::connect(addr).unwrap();
    let body = wechat_fcgi::sample::text_with_id("gh", "oOther", unix_now(), "ask fast", 1);
    let reply = ask(&mut s, "POST", &signed("2"), body.as_bytes());
    assert!(reply.contains("fast answer"), "{reply}\n{}", server.log());
    std::fs::write(dir.path("release"), b"").unwrap();
    let answers: Vec<String> = hog.into_iter().map(|h| h.join().unwrap()).collect();
    let busy = answers.iter().filter(|a| a.contains("busy")).count();
    assert_eq!(
        busy, 4,
        "two ran, four got the fallback at once: {answers:?}"
    );
    wait_for_log(&server, "max_programs_per_sender");
}

// Regression: with stderr a pipe nobody read, the server froze after 399 refused
// requests (each logged as a WARN line).
#[test]
fn a_stalled_log_reader_never_stalls_the_server() {
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("stalled-log");
    let config = write_config(&dir, "");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = std::process::Command::new(BIN)
        .process_group(0)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::from(OwnedFd::from(listener)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env_remove("WECHAT_FCGI_LOG")
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let server = Proc {
        child,
        stderr: dir.path("unused"),
        is_nginx: false,
    };
    // 1 000 refusals with a 2 KB method each: 2 MB of WARN lines into a 64 KB pipe.
    let method = format!("X{}", "Y".repeat(2_000));
    let mut s = TcpStream::connect(addr).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..1_000 {
        let reply = ask(&mut s, &method, "", b"");
        assert!(reply.starts_with("Status: 405"), "{reply}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // The reader comes back: the log says how many lines it could not keep. (If it
    // never does, the server is stopped after 20 s so the read ends.)
    let pid = server.child.id().to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
        })
    };
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut chunk = [0u8; 65536];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&all).contains("log lines dropped") {
                break;
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    // One more line after the reader is back, so the writer reports the count.
    let reply = ask(&mut s, &method, "", b"");
    assert!(reply.starts_with("Status: 405"));
    let log = reader.join().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watchdog.join().unwrap();
    assert!(
        log.contains("log lines dropped"),
        "{}",
        &log[log.len().saturating_sub(500)..]
    );
    drop(server);
}

// Regression: a request refused early (413 on CONTENT_LENGTH) closed the connection
// while the web server was still sending the body; Apache and Caddy turned that into a
// 500/502 or a cut-off response. The body is now read (and dropped) first.
#[test]
fn an_early_refusal_reads_the_rest_of_the_body_first() {
    let dir = TempDir::new("early-refusal");
    let config = write_config(&dir, "[server]\nmax_body_bytes = 100000\n");
    let (_server, addr) = start_server(&dir, &config);
    // As Apache's mod_proxy_fcgi does: the whole body first, then read the answer. The
    // body is larger than the kernel's socket buffers can hold, so a server that stops
    // reading makes the write fail.
    let large = vec![b'x'; 48 << 20];
    let mut s = TcpStream::connect(addr).unwrap();
    let mut request = Vec::new();
    fcgi_request(&mut request, 1, false, "POST", &signed("1"), &large);
    drop(large);
    let body = vec![b'x'; 1_000_000];
    s.write_all(&request)
        .expect("the server reads the whole body");
    let reply = fcgi_response(&mut s).expect("an answer after the body");
    assert!(reply.starts_with("Status: 413"), "{reply}");
    // And libfcgi's cgi-fcgi, which also sends all of stdin before it reads.
    let mut child = std::process::Command::new("cgi-fcgi")
        .env_clear()
        .args(["-bind", "-connect", &addr.to_string()])
        .envs([
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", signed("2").as_str()),
            ("CONTENT_LENGTH", "1000000"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cgi-fcgi (libfcgi-bin)");
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("Status: 413"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// The same in CGI mode: the body over max_body_bytes is read (and dropped) before the
// 413, so the web server writing it sees no broken pipe.
#[test]
fn a_cgi_refusal_reads_the_body_first() {
    let dir = TempDir::new("cgi-early");
    let config = write_config(&dir, "[server]\nmax_body_bytes = 100000\n");
    let query = signed("1");
    let mut child = std::process::Command::new(BIN)
        .env_clear()
        .envs([
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("WECHAT_FCGI_CONFIG", config.to_str().unwrap()),
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", query.as_str()),
            ("CONTENT_LENGTH", "4000000"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&vec![b'x'; 4_000_000]));
    let out = child.wait_with_output().unwrap();
    assert!(feeder.join().unwrap().is_ok(), "the whole body was read");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Status: 413"));
}

/// Every line of a log is a line the server wrote: it starts with a timestamp, and no
/// control character (a terminal escape, a forged newline) survived.
fn assert_clean_log(log: &str) {
    for line in log.lines() {
        assert!(
            line.starts_with("20") && line.as_bytes().get(4) == Some(&b'-'),
            "a line that is not the server's: {line:?}\n{log}"
        );
        assert!(
            !line.contains(char::is_control),
            "control character in {line:?}"
        );
    }
}

// Regression: control characters from requests reached WARN lines (REQUEST_METHOD,
// FromUserName in the budget warning, XML error text): a forged line, or an escape
// sequence for the terminal reading the log.
#[test]
fn nothing_from_outside_can_forge_a_log_line_at_any_level() {
    let dir = TempDir::new("log-escape");
    write_executable(
        &dir,
        "slow.sh",
        "#!/bin/sh\ncat >/dev/null\nsleep 0.5\necho late\n",
    );
    let config = write_config(
        &dir,
        "[server]\nreply_budget_ms = 100\n[late]\nmode = \"off\"\n\
         [[rule]]\ntext = \"slow\"\nrun = { command = [\"./slow.sh\"] }\n",
    );
    let forged = "\n2026-01-01T00:00:00.000000Z  INFO request forged=1\u{1b}[2J";
    let (server, addr) = start_server_with_env(&dir, &config, &[("WECHAT_FCGI_LOG", "debug")]);
    let mut s = TcpStream::connect(addr).unwrap();
    // WARN: a refusal naming the method.
    ask(&mut s, &format!("GET{forged}"), "", b"");
    // WARN: XML error text.
    ask(
        &mut s,
        "POST",
        &signed("1"),
        format!("<xml><{forged}></xml>").as_bytes(),
    );
    // INFO: the request line's message type; WARN: the budget warning's sender.
    let odd = format!(
        "<xml><ToUserName>gh</ToUserName><FromUserName>o&#10;forged&#27;[2J</FromUserName>\
         <CreateTime>{}</CreateTime><MsgType>text</MsgType><Content>slow</Content>\
         <MsgId>1</MsgId></xml>",
        unix_now()
    );
    ask(&mut s, "POST", &signed("2"), odd.as_bytes());
    let weird_type = odd
        .replace(
            "<MsgType>text</MsgType>",
            "<MsgType>te&#10;xt&#155;</MsgType>",
        )
        .replace("<MsgId>1</MsgId>", "<MsgId>2</MsgId>");
    ask(&mut s, "POST", &signed("3"), weird_type.as_bytes());
    wait_for_log(&server, "reply budget ran out");
    let log = wait_for_log(&server, "program answered");
    assert_clean_log(&log);
    assert!(
        log.contains("forged"),
        "the values are logged, escaped: {log}"
    );
    // ERROR (CGI mode): a config path from the environment.
    let (_, _, stderr) = run_cgi(
        &[],
        &[
            ("WECHAT_FCGI_CONFIG", &format!("/nonexistent{forged}")),
            ("REQUEST_METHOD", "GET"),
        ],
        b"",
    );
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert_clean_log(&stderr);
}

// Regression: under umask 0 the Unix socket existed with mode 0777 between bind and
// chmod. Watch the path while the server starts: it never has more than socket_mode.
#[test]
fn the_unix_socket_never_exists_with_a_wider_mode() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("socket-mode");
    let config = write_config(&dir, "[server]\nsocket_mode = \"0600\"\n");
    for attempt in 0..5 {
        let sock = dir.path(&format!("s{attempt}.sock"));
        let watched = sock.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watching = stop.clone();
        let watcher = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(meta) = std::fs::symlink_metadata(&watched) {
                    seen.insert(meta.permissions().mode() & 0o777);
                }
            }
            seen
        });
        let log = dir.path(&format!("s{attempt}.log"));
        let child = std::process::Command::new("sh")
            .process_group(0)
            .arg("-c")
            .arg(format!(
                "umask 0; exec '{BIN}' serve --config '{}' --listen 'unix:{}'",
                config.display(),
                sock.display()
            ))
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Proc {
            child,
            stderr: log,
            is_nginx: false,
        };
        wait_for_log(&server, "wechat-fcgi serving");
        // Let the watcher see the socket at least once even on a busy machine, then
        // take the mode it has now too.
        let start = std::time::Instant::now();
        while std::fs::symlink_metadata(&sock).is_err() && start.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut seen = watcher.join().unwrap();
        seen.insert(
            std::fs::symlink_metadata(&sock)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
        );
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![0o600],
            "modes the socket had"
        );
    }
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// Run as root, the server served requests and ran programs as root. With [server] user
// it gives root up once it has bound its socket; without, it warns.
#[test]
fn user_and_group_drop_root_after_binding() {
    if uid_of(std::process::id()) != Some(0) {
        eprintln!("skipped: switching users needs the tests to run as root");
        return;
    }
    let nobody = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    let nobody: u32 = String::from_utf8_lossy(&nobody.stdout)
        .trim()
        .parse()
        .unwrap();
    let dir = TempDir::new("run-as");
    write_executable(
        &dir,
        "whoami.sh",
        "#!/bin/sh\ncat >/dev/null\necho \"uid=$(id -u) gid=$(id -g)\"\n",
    );
    let config = write_config(
        &dir,
        "[server]\nuser = \"nobody\"\ngroup = \"nogroup\"\n\
         [[rule]]\ntext = \"who\"\nrun = { command = [\"./whoami.sh\"] }\n",
    );
    let (server, addr) = start_server(&dir, &config);
    wait_for_log(&server, "switched user");
    assert_eq!(uid_of(server.child.id()), Some(nobody), "the server itself");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "who", 1);
    let reply = ask(&mut s, "POST", &signed("1"), body.as_bytes());
    assert!(
        reply.contains(&format!("uid={nobody} ")),
        "the program: {reply}"
    );
    // Without `user`, running as root is said out loud.
    let plain = TempDir::new("as-root");
    let config = write_config(&plain, "");
    let (root_server, _) = start_server(&plain, &config);
    wait_for_log(&root_server, "serving as root: set [server] user");
}

/// `[log] file` in a folder the service user owns: a link placed there to a file of
/// root's is refused (never followed, never appended to), and the log is opened as
/// the service user, after root is given up.
#[test]
fn the_log_file_is_never_opened_through_a_link_nor_as_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if uid_of(std::process::id()) != Some(0) {
        eprintln!("ignored: switching users needs the tests to run as root");
        return;
    }
    let dir = TempDir::new("log-link");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.path("root-only");
    std::fs::write(&secret, b"root's\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let logs = dir.path("logs");
    std::fs::create_dir(&logs).unwrap();
    let nobody = std::fs::metadata("/proc/self")
        .map(|_| {
            let out = std::process::Command::new("id")
                .args(["-u", "nobody"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .unwrap()
        })
        .unwrap();
    std::os::unix::fs::chown(&logs, Some(nobody), None).unwrap();
    let log = logs.join("wechat-fcgi.log");
    std::os::unix::fs::symlink(&secret, &log).unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[server]\nuser = \"nobody\"\ngroup = \"nogroup\"\n[log]\nfile = \"{}\"\n",
            log.display()
        ),
    );
    let run = || {
        std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--listen")
            .arg(format!("tcp:127.0.0.1:{}", free_port()))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        b"root's\n",
        "nothing appended"
    );
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), 0);
    // Without the link, the service user creates and owns its log.
    std::fs::remove_file(&log).unwrap();
    let mut server = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--listen")
        .arg(format!("tcp:127.0.0.1:{}", free_port()))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("serving")
    {
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::metadata(&log).unwrap().uid(),
        nobody,
        "opened as the service user"
    );
    let _ = std::process::Command::new("kill")
        .arg(server.id().to_string())
        .status();
    server.wait().unwrap();
}

/// A program's children that leave its process group (`setsid`) end with it: after
/// its timeout, and when it exits normally leaving them behind.
#[test]
fn descendants_in_a_new_session_do_not_outlive_their_program() {
    let dir = TempDir::new("setsid-programs");
    // Prints its daemon's pid at once, then sleeps past its timeout (or exits at once).
    write_executable(
        &dir,
        "daemonize.sh",
        "#!/bin/sh\ncat >/dev/null\nsetsid sleep 301 < /dev/null > /dev/null 2>&1 &\n\
         echo $! > \"$1.pid\"\nif [ \"$1\" = slow ]; then sleep 30; fi\necho done\n",
    );
    let config = write_config(
        &dir,
        "[server]\nreply_budget_ms = 300\n[late]\nmode = \"off\"\n\
         [[rule]]\ntext = \"slow\"\nrun = { command = [\"./daemonize.sh\", \"slow\"], timeout_ms = 1000 }\n\
         [[rule]]\ntext = \"quick\"\nrun = { command = [\"./daemonize.sh\", \"quick\"], timeout_ms = 5000 }\n",
    );
    let (_server, addr) = start_server(&dir, &config);
    for (word, id) in [("slow", 1), ("quick", 2)] {
        let mut s = TcpStream::connect(addr).unwrap();
        let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), word, id);
        ask(&mut s, "POST", &signed(word), body.as_bytes());
        let start = std::time::Instant::now();
        let pid = loop {
            if let Ok(pid) = std::fs::read_to_string(dir.path(&format!("{word}.pid"))) {
                if !pid.trim().is_empty() {
                    break pid.trim().to_owned();
                }
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no pid"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        while !gone(&pid) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{word}: `setsid sleep 301` left running (pid {pid})"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
