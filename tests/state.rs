//! State outside the process: several processes on one SQLite file answer each message
//! once, however WeChat's retries are spread over them.

mod common;
use common::*;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Send one FastCGI request on a fresh connection; returns the response text.
fn ask(addr: std::net::SocketAddr, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut out = Vec::new();
    fcgi_request(&mut out, 1, true, "POST", &signed("1"), body.as_bytes());
    s.write_all(&out).unwrap();
    fcgi_response(&mut s).expect("a response")
}

/// POST `body` with `query` to a CGI process using `config`: its stdout and stderr
/// (with the INFO request lines).
fn cgi_post(config: &str, query: &str, body: &str) -> (String, String) {
    let log = [("WECHAT_FCGI_LOG", "info")];
    let child = spawn_cgi(std::path::Path::new(config), query, body.as_bytes(), &log);
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn runs(dir: &TempDir) -> usize {
    std::fs::read_to_string(dir.path("runs.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// Two `serve` processes on one shared store (`state` is the `[state]` table): WeChat's
/// first attempt reaches one while its program runs, the retry the other; later
/// retries to either get the stored answer; the program ran once; and a signed query is
/// bound to its body across the processes.
fn two_processes_answer_once(dir: &TempDir, state: &str, msg_id: u64) {
    write_executable(
        dir,
        "count.sh",
        "#!/bin/sh\ncat >/dev/null\necho run >> runs.log\nsleep 0.5\necho \"run $(wc -l < runs.log)\"\n",
    );
    let config = write_config(
        dir,
        &format!(
            "[state]\n{state}\n[[rule]]\ntext = \"count\"\nrun = {{ command = [\"./count.sh\"] }}\n"
        ),
    );
    let (_a, addr_a) = start_server(dir, &config);
    let (b, addr_b) = start_server(dir, &config);
    let message = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "count", msg_id);
    let first = {
        let message = message.clone();
        std::thread::spawn(move || ask(addr_a, &message))
    };
    std::thread::sleep(Duration::from_millis(150));
    let retry = ask(addr_b, &message);
    let first = first.join().unwrap();
    // WeChat sends a retry only once it dropped the attempt before: that attempt
    // steps aside (`success`, which nobody hears), the retry gets A's answer.
    assert!(first.ends_with("success"), "{first}");
    assert!(
        retry.contains("run 1"),
        "the retry waited for A's answer: {retry}"
    );
    assert!(ask(addr_b, &message).contains("run 1"));
    assert!(ask(addr_a, &message).contains("run 1"));
    assert_eq!(runs(dir), 1, "the program ran once");
    wait_for_log(&b, "via=retry");
    let query = signed("9");
    let send = |addr: std::net::SocketAddr, body: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut out = Vec::new();
        fcgi_request(&mut out, 1, true, "POST", &query, body.as_bytes());
        s.write_all(&out).unwrap();
        fcgi_response(&mut s).unwrap()
    };
    let text = |id: u64| wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "x", id);
    assert!(send(addr_a, &text(20)).starts_with("Status: 200"));
    let forged = send(addr_b, &text(21));
    assert!(forged.starts_with("Status: 403"), "{forged}");
}

#[test]
fn two_serve_processes_on_one_sqlite_file_answer_once() {
    let dir = TempDir::new("sqlite-two");
    two_processes_answer_once(&dir, "store = \"sqlite:state.db\"", 7);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path("state.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the database is private");
}

#[test]
fn cgi_requests_over_sqlite_answer_a_retry_once() {
    let dir = TempDir::new("sqlite-cgi");
    write_executable(
        &dir,
        "count.sh",
        "#!/bin/sh\ncat >/dev/null\necho run >> runs.log\necho \"run $(wc -l < runs.log)\"\n",
    );
    let config = write_config(
        &dir,
        "[state]\nstore = \"sqlite:state.db\"\n\
         [[rule]]\ntext = \"count\"\nrun = { command = [\"./count.sh\"] }\n",
    );
    let config = config.to_str().unwrap().to_owned();
    let message = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "count", 8);
    let cgi = || cgi_post(&config, &signed("1"), &message);
    let (first, _) = cgi();
    let (second, log) = cgi();
    assert!(first.contains("run 1"), "{first}");
    assert!(second.contains("run 1"), "{second}");
    assert!(log.contains("via=retry"), "{log}");
    assert_eq!(runs(&dir), 1);
}

/// CGI processes over one SQLite file, each the file's only user while it runs: the
/// write-ahead log stays short (every later process would read all of it), what was
/// stored before the log was emptied still answers a retry, and expired rows are
/// deleted (no process lives long enough to purge them every minute).
#[test]
fn cgi_processes_keep_the_sqlite_log_short() {
    use wechat_fcgi::engine::store::sqlite::CGI_WAL_LIMIT;
    let dir = TempDir::new("sqlite-cgi-wal");
    let config = write_config(
        &dir,
        "[state]\nstore = \"sqlite:state.db\"\n\
         [[rule]]\ntext = \"hi\"\nreply = { text = \"Hello!\" }\n",
    );
    let config = config.to_str().unwrap().to_owned();
    let cgi = |msg_id: u64, nonce: &str| {
        let message = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", msg_id);
        let (stdout, stderr) = cgi_post(&config, &signed(nonce), &message);
        assert!(stdout.contains("Hello!"), "{stdout}{stderr}");
        stderr
    };
    let wal = || std::fs::metadata(dir.path("state.db-wal")).map_or(0, |m| m.len());
    let rows = |key: &str| -> i64 {
        let db = rusqlite::Connection::open(dir.path("state.db")).unwrap();
        db.query_row("SELECT count(*) FROM state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap()
    };
    cgi(999, "n-first");
    // A row that expired long ago: nothing but a CGI process is there to delete it.
    rusqlite::Connection::open(dir.path("state.db"))
        .unwrap()
        .execute(
            "INSERT INTO state (key, value, expires) VALUES ('m:1:old', x'00', 1)",
            [],
        )
        .unwrap();
    assert_eq!(rows("m:1:old"), 1);
    let mut longest = 0;
    // Each message adds a few pages (more than 4 KiB) to the log: 80 of them would take
    // it well past the limit if nothing emptied it.
    for id in 0..80u64 {
        cgi(1000 + id, &format!("n{id}"));
        longest = longest.max(wal());
    }
    assert!(
        longest <= CGI_WAL_LIMIT + 64 * 1024,
        "the log grew to {longest} bytes"
    );
    assert_eq!(rows("m:1:old"), 0, "expired rows are deleted");
    let log = cgi(1000, "again");
    assert!(log.contains("via=retry"), "answered from the store: {log}");
}

#[test]
fn a_message_whose_process_died_is_taken_over_after_its_lease() {
    let dir = TempDir::new("sqlite-lease");
    // The first run never answers (its process is killed); a later one answers at once.
    write_executable(
        &dir,
        "once.sh",
        "#!/bin/sh\ncat >/dev/null\nif [ ! -e first ]; then echo $$ > first; sleep 30; fi\necho taken over\n",
    );
    let config = write_config(
        &dir,
        "[state]\nstore = \"sqlite:state.db\"\n\
         [[rule]]\ntext = \"once\"\nrun = { command = [\"./once.sh\"], timeout_ms = 1500 }\n",
    );
    let (mut a, addr_a) = start_server(&dir, &config);
    let (_b, addr_b) = start_server(&dir, &config);
    let message = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "once", 9);
    let first = {
        let message = message.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr_a).unwrap();
            let mut out = Vec::new();
            fcgi_request(&mut out, 1, true, "POST", &signed("1"), message.as_bytes());
            s.write_all(&out).unwrap();
            fcgi_response(&mut s)
        })
    };
    let start = Instant::now();
    while !dir.path("first").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the first run never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let claimed = Instant::now();
    // The process holding the message dies without a word.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(first.join().unwrap().is_none(), "A never answered");
    let program = std::fs::read_to_string(dir.path("first")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", program.trim()])
        .status();
    // WeChat's retry reaches B: it waits for the lease (timeout + 1 s), then decides.
    let retry = ask(addr_b, &message);
    assert!(retry.contains("taken over"), "{retry}");
    let waited = claimed.elapsed();
    assert!(
        waited >= Duration::from_millis(2000) && waited < Duration::from_secs(6),
        "taken over when the 2.5 s lease ended, not before: {waited:?}"
    );
}

/// In CGI mode a program slower than the reply budget still answers the retry: the
/// process sends `success`, ends its stdout (the web server replies at once), lets the
/// program finish and stores its answer; the retry, another process, finds it.
#[test]
fn a_slow_program_in_cgi_mode_answers_the_retry() {
    use std::io::Read;
    let dir = TempDir::new("sqlite-cgi-slow");
    write_executable(
        &dir,
        "slow.sh",
        "#!/bin/sh\ncat >/dev/null\necho run >> runs.log\nsleep 1.5\necho slow answer\n",
    );
    let config = write_config(
        &dir,
        "[server]\nreply_budget_ms = 300\n[late]\nmode = \"off\"\n[state]\nstore = \"sqlite:state.db\"\n\
         [[rule]]\ntext = \"slow\"\nrun = { command = [\"./slow.sh\"] }\n",
    );
    let message = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "slow", 10);
    let start = |query: &str| spawn_cgi(&config, query, message.as_bytes(), &[]);
    let mut first = start(&signed("1"));
    let mut reply = String::new();
    first
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut reply)
        .unwrap();
    assert!(reply.ends_with("success"), "{reply}");
    // The output ended while the process (and its program) went on.
    assert!(
        first.try_wait().unwrap().is_none(),
        "stdout ended before the process did"
    );
    assert!(first.wait().unwrap().success());
    // The retry: the stored answer, the program not run again.
    let second = start(&signed("2")).wait_with_output().unwrap();
    let reply = String::from_utf8_lossy(&second.stdout);
    assert!(reply.contains("slow answer"), "{reply}");
    assert_eq!(runs(&dir), 1);
}

#[test]
fn two_serve_processes_on_one_redis_answer_once() {
    let dir = TempDir::new("redis-two");
    let port = free_port();
    let _redis = start_redis(&dir, port);
    two_processes_answer_once(
        &dir,
        &format!("store = \"redis://127.0.0.1:{port}/0\"\nkey_prefix = \"test:\""),
        11,
    );
    // Every key has a TTL, under the configured prefix.
    let keys = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--scan", "--pattern", "test:*"])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    assert!(keys.lines().count() >= 2, "{keys}");
    for key in keys.lines() {
        let ttl = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PTTL", key])
            .output()
            .unwrap();
        let ttl: i64 = String::from_utf8_lossy(&ttl.stdout).trim().parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

#[test]
fn a_redis_restart_only_costs_the_shared_cache_while_it_is_down() {
    let dir = TempDir::new("redis-restart");
    let port = free_port();
    let mut redis = start_redis(&dir, port);
    let config = write_config(
        &dir,
        &format!("[state]\nstore = \"redis://127.0.0.1:{port}/0\"\n{RULES}"),
    );
    let (server, addr) = start_server(&dir, &config);
    let hi = |id: u64| wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", id);
    let retried = |log: &str| log.matches("via=retry").count();
    assert!(ask(addr, &hi(1)).contains("Hello!"));
    assert!(ask(addr, &hi(1)).contains("Hello!"));
    let log = wait_for_log(&server, "via=retry");
    assert_eq!(retried(&log), 1);
    // Redis goes away: every request is still answered, from this process's memory
    // (a retry reaching this process is recognised), and the log says so once.
    assert!(redis.signal_and_wait(15).success());
    for _ in 0..3 {
        assert!(ask(addr, &hi(2)).contains("Hello!"));
    }
    // The retries of message 2 are answered from memory (the first retry of
    // message 1 was answered from Redis).
    let log = wait_for_log_count(&server, "via=retry", 3);
    assert_eq!(
        log.matches("state store unreachable").count(),
        1,
        "once per outage"
    );
    // Redis is back (empty): the shared cache works again.
    let _redis = start_redis(&dir, port);
    let start = Instant::now();
    loop {
        let id = 100 + start.elapsed().as_millis() as u64;
        assert!(ask(addr, &hi(id)).contains("Hello!"));
        assert!(ask(addr, &hi(id)).contains("Hello!"));
        std::thread::sleep(Duration::from_millis(100));
        if server.log().contains("state store reachable again") && retried(&server.log()) > 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            server.log()
        );
    }
}

/// Two instances behind one nginx `upstream` (round-robin), sharing Redis: WeChat's
/// first attempt and its retry land on different instances, and get one answer.
#[test]
fn two_instances_behind_one_nginx_upstream_share_redis() {
    let dir = TempDir::new("redis-upstream");
    let port = free_port();
    let _redis = start_redis(&dir, port);
    write_executable(
        &dir,
        "count.sh",
        "#!/bin/sh\ncat >/dev/null\necho run >> runs.log\nsleep 0.5\necho \"run $(wc -l < runs.log)\"\n",
    );
    let config = write_config(
        &dir,
        &format!(
            "[state]\nstore = \"redis://127.0.0.1:{port}/0\"\n\
             [[rule]]\ntext = \"count\"\nrun = {{ command = [\"./count.sh\"] }}\n"
        ),
    );
    let (a, addr_a) = start_server(&dir, &config);
    let (b, addr_b) = start_server(&dir, &config);
    // Two `server` lines in the upstream.
    let (_nginx, http_port) = start_nginx(&dir, &format!("{addr_a};\n        server {addr_b}"));
    let message = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "count", 30);
    let post = move |body: String| {
        std::thread::spawn(move || {
            let (status, reply) = http(
                http_port,
                "POST",
                &format!("/wechat?{}", signed("1")),
                body.as_bytes(),
            );
            assert_eq!(status, 200);
            String::from_utf8_lossy(&reply).into_owned()
        })
    };
    let first = post(message.clone());
    std::thread::sleep(Duration::from_millis(150));
    let retry = post(message.clone()).join().unwrap();
    let first = first.join().unwrap();
    // The first attempt steps aside for WeChat's retry, which gets the answer.
    assert!(
        first == "success" && retry.contains("run 1"),
        "{first}\n{retry}"
    );
    assert_eq!(runs(&dir), 1, "the program ran once");
    // Each instance served one of them; the retry's instance answered from Redis.
    let start = Instant::now();
    while !(a.log().contains("via=retry") || b.log().contains("via=retry")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ... and the other stepped aside.
    let stepped_aside =
        |log: String| log.contains("outcome=success") && log.contains("via=late_hold");
    let start = Instant::now();
    while !(stepped_aside(a.log()) || stepped_aside(b.log())) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long the stores of [`shared_stores`] keep answers (ms).
const RETENTION: u64 = 60_000;

/// A redis-server on a free port (stopped when dropped), a runtime, and the two shared
/// stores opened in it: SQLite (a file in `dir`) and that Redis (keys under `t:`).
fn shared_stores(
    dir: &TempDir,
) -> (
    Proc,
    tokio::runtime::Runtime,
    [wechat_fcgi::engine::store::Shared; 2],
    u16,
) {
    use wechat_fcgi::engine::store::{RedisStore, Shared, SqliteStore};
    let port = free_port();
    let redis = start_redis(dir, port);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stores = {
        let _in_runtime = runtime.enter();
        let url = format!("redis://127.0.0.1:{port}/0");
        [
            Shared::Sqlite(SqliteStore::open(&dir.path("state.db")).unwrap()),
            Shared::Redis(RedisStore::open(&url, "t:", None).unwrap()),
        ]
    };
    (redis, runtime, stores, port)
}

/// The atomic operations the protocol asks of a store, the same in memory, SQLite and
/// Redis: open (bind a signed query to its body, create the message's record unless
/// there is one), load, compare-and-swap against the version read, time to live,
/// waiting for a change; and, in the shared stores, values sealed so that a forged or
/// altered entry is refused, never served.
#[test]
fn every_store_keeps_the_same_rules() {
    use std::sync::Arc;
    use wechat_fcgi::core::{reply::Reply, Answer, Via};
    use wechat_fcgi::engine::store::{body_digest, MemoryStore, Sealer, Shared};
    use wechat_fcgi::protocol::{Late, Loaded, Message, Opened, Record, Rev, State, Swapped};
    let dir = TempDir::new("stores");
    let (_redis, runtime, [sqlite, redis], port) = shared_stores(&dir);
    let _in_runtime = runtime.enter();
    let seal = Sealer::new(b"the account's token", "live");
    let record = |text: &str| {
        Record::Message(Message {
            first: 1,
            attempts: 1,
            state: State::Answered(Answer {
                reply: Some(Arc::new(Reply::Text(text.to_owned()))),
                rule: Arc::from("r"),
                via: Via::Rule,
            }),
            late: Late::No,
            job: None,
        })
    };
    let (a, b) = (record("a"), record("b"));
    let (one, two) = (body_digest(b"<xml>1</xml>"), body_digest(b"<xml>2</xml>"));
    // The three stores behind one face (memory on the test's own clock).
    enum Under<'a> {
        Memory(Box<MemoryStore>, std::time::Instant),
        Shared(&'a Shared),
    }
    impl Under<'_> {
        fn now(&self) -> u64 {
            match self {
                Under::Memory(_, t0) => t0.elapsed().as_millis() as u64,
                Under::Shared(s) => s.now(),
            }
        }
        async fn open(
            &self,
            seal: &Sealer,
            q: &str,
            d: &[u8; 16],
            k: Option<&str>,
            r: &Record,
            ttl: u64,
        ) -> Opened {
            match self {
                Under::Memory(m, _) => m.open(q, d, k, r, ttl, self.now()),
                Under::Shared(s) => {
                    let op = wechat_fcgi::engine::store::Opening {
                        binding: q,
                        digest: d,
                        key: k,
                        record: r,
                        ttl,
                    };
                    s.open(seal, op, RETENTION).await.unwrap()
                }
            }
        }
        async fn load(&self, seal: &Sealer, k: &str) -> Loaded {
            match self {
                Under::Memory(m, _) => m.load(k, self.now()),
                Under::Shared(s) => s.load(seal, k).await.unwrap(),
            }
        }
        async fn swap(
            &self,
            seal: &Sealer,
            k: &str,
            e: Option<Rev>,
            r: &Record,
            ttl: u64,
        ) -> Swapped {
            match self {
                Under::Memory(m, _) => m.swap(k, e, r.clone(), ttl, self.now()),
                Under::Shared(s) => s.swap(seal, k, e, r, ttl).await.unwrap(),
            }
        }
        async fn wait(&self, seal: &Sealer, k: &str, seen: Option<Rev>, ms: u64) {
            let until = tokio::time::Instant::now() + Duration::from_millis(ms);
            match self {
                Under::Memory(m, t0) => {
                    let t0 = *t0;
                    m.wait(k, seen, until, move || t0.elapsed().as_millis() as u64)
                        .await
                }
                Under::Shared(s) => s.wait(seal, k, seen, until).await,
            }
        }
    }
    let stores = [
        Under::Memory(
            Box::new(MemoryStore::new(1000, 1 << 20, RETENTION)),
            std::time::Instant::now(),
        ),
        Under::Shared(&sqlite),
        Under::Shared(&redis),
    ];
    for store in &stores {
        runtime.block_on(async {
            let q1 = "q/live/1700000000:sig1:n1";
            let m1 = "m/live/m:1:oA";
            let Opened::Created { rev: first, .. } =
                store.open(&seal, q1, &one, Some(m1), &a, RETENTION).await
            else {
                panic!("a new message is created")
            };
            // The same request again (a replay): found, the query not fresh.
            match store.open(&seal, q1, &one, Some(m1), &b, RETENTION).await {
                Opened::Found { loaded, fresh } => {
                    assert!(!fresh);
                    assert_eq!(loaded.record, Some(a.clone()));
                    assert_eq!(loaded.rev, Some(first));
                }
                other => panic!("{other:?}"),
            }
            // Its signed query with another body: refused, nothing else done.
            assert_eq!(
                store
                    .open(&seal, q1, &two, Some("m/live/m:2:oA"), &b, RETENTION)
                    .await,
                Opened::Reused
            );
            assert_eq!(store.load(&seal, "m/live/m:2:oA").await.record, None);
            // A retry (a new query, the same message): found, fresh.
            assert!(matches!(
                store
                    .open(
                        &seal,
                        "q/live/1700000005:sig2:n2",
                        &one,
                        Some(m1),
                        &b,
                        RETENTION
                    )
                    .await,
                Opened::Found { fresh: true, .. }
            ));
            // Compare-and-swap: over the version read only.
            let Swapped::Done { rev: second, .. } =
                store.swap(&seal, m1, Some(first), &b, RETENTION).await
            else {
                panic!("swap over the version read")
            };
            match store.swap(&seal, m1, Some(first), &a, RETENTION).await {
                Swapped::Changed(now) => {
                    assert_eq!(now.rev, Some(second));
                    assert_eq!(now.record, Some(b.clone()));
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                store.swap(&seal, "m/live/new", None, &a, RETENTION).await,
                Swapped::Done { .. }
            ));
            assert!(matches!(
                store.swap(&seal, "m/live/new", None, &b, RETENTION).await,
                Swapped::Changed(_)
            ));
            // A handshake binds its query: it is not accepted again with a body.
            assert!(matches!(
                store
                    .open(&seal, "q/live/h", &one, None, &a, RETENTION)
                    .await,
                Opened::Created { .. }
            ));
            assert_eq!(
                store
                    .open(&seal, "q/live/h", &two, Some("m/live/x"), &a, RETENTION)
                    .await,
                Opened::Reused
            );
            // Time to live.
            assert!(matches!(
                store.swap(&seal, "m/live/brief", None, &a, 100).await,
                Swapped::Done { .. }
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert_eq!(
                store.load(&seal, "m/live/brief").await.record,
                None,
                "expired"
            );
            assert!(matches!(
                store.swap(&seal, "m/live/brief", None, &b, RETENTION).await,
                Swapped::Done { .. }
            ));
            // Waiting: until the version changes, or the time is up.
            let seen = store.load(&seal, m1).await.rev;
            let t = std::time::Instant::now();
            store.wait(&seal, m1, seen, 300).await;
            assert!(
                t.elapsed() >= Duration::from_millis(290),
                "nothing changed: waited"
            );
            let t = std::time::Instant::now();
            store.wait(&seal, m1, Some(Rev(12345)), 3000).await;
            assert!(
                t.elapsed() < Duration::from_millis(1000),
                "already changed: at once"
            );
        });
    }
    // Sealed: another account (or another secret) reads nothing; a forged or altered
    // entry is refused and replaced, never served.
    let other = Sealer::new(b"another secret", "live");
    let m1 = "m/live/m:1:oA";
    for shared in [&sqlite, &redis] {
        runtime.block_on(async {
            assert!(shared.load(&seal, m1).await.unwrap().record.is_some());
            assert_eq!(shared.load(&other, m1).await.unwrap().record, None);
        });
    }
    let name = seal.name(m1);
    assert!(!name.contains("oA"), "key names tell nothing: {name}");
    let forged = b"{\"m\":{\"first\":1,\"attempts\":1,\"answer\":{\"reply\":{\"text\":\"phish\"},\"rule\":\"r\",\"via\":\"rule\"},\"late\":\"no\"}}";
    {
        let conn = rusqlite::Connection::open(dir.path("state.db")).unwrap();
        conn.execute(
            "UPDATE state SET value = ?1 WHERE key = ?2",
            rusqlite::params![&forged[..], name],
        )
        .unwrap();
    }
    redis_cli(
        port,
        &[
            "SET",
            &format!("t:{name}"),
            std::str::from_utf8(forged).unwrap(),
        ],
    );
    for shared in [&sqlite, &redis] {
        runtime.block_on(async {
            let loaded = shared.load(&seal, m1).await.unwrap();
            assert_eq!(loaded.record, None, "the forged entry is not served");
            assert!(loaded.rev.is_some());
            assert!(matches!(
                shared
                    .swap(&seal, m1, loaded.rev, &a, RETENTION)
                    .await
                    .unwrap(),
                Swapped::Done { .. }
            ));
            assert_eq!(
                shared.load(&seal, m1).await.unwrap().record,
                Some(a.clone())
            );
            // Small values (the access token) are sealed too.
            assert!(shared
                .set(&seal, "t/live/wx1", b"token", 60_000, false)
                .await
                .unwrap());
            assert!(shared
                .set(&seal, "t/live/wx1:lock", b"1", 60_000, true)
                .await
                .unwrap());
            assert!(
                !shared
                    .set(&seal, "t/live/wx1:lock", b"2", 60_000, true)
                    .await
                    .unwrap(),
                "set once"
            );
            assert_eq!(
                shared.get(&seal, "t/live/wx1").await.unwrap().as_deref(),
                Some(&b"token"[..])
            );
            assert_eq!(shared.get(&other, "t/live/wx1").await.unwrap(), None);
            shared.delete(&seal, "t/live/wx1").await.unwrap();
            assert_eq!(shared.get(&seal, "t/live/wx1").await.unwrap(), None);
        });
    }
}

/// How a shared store becomes unusable in [`an_outage_keeps_the_promises_per_process`].
enum Outage {
    /// redis-server stopped.
    RedisStopped,
    /// The SQLite file locked by another process (an exclusive transaction held).
    SqliteLocked,
}

/// The store becomes unusable while serving. Decided and checked here: answers that
/// need no program still go out; a program message runs once in the process and its
/// retry there gets its answer; a query seen with another body is refused (and a
/// handshake's query with a body); the log says once what is degraded; when the store
/// is back, answers are shared again.
fn an_outage_keeps_the_promises_per_process(outage: Outage) {
    let dir = TempDir::new("outage");
    write_executable(
        &dir,
        "count.sh",
        "#!/bin/sh\ncat >/dev/null\necho run >> runs.log\nsleep 0.3\necho \"run $(wc -l < runs.log)\"\n",
    );
    let port = free_port();
    let (redis, state) = match outage {
        Outage::RedisStopped => (
            Some(start_redis(&dir, port)),
            format!("store = \"redis://127.0.0.1:{port}/0\""),
        ),
        Outage::SqliteLocked => (None, "store = \"sqlite:state.db\"".to_owned()),
    };
    let config = write_config(
        &dir,
        &format!(
            "[state]\n{state}\n[[rule]]\ntext = \"count\"\nrun = {{ command = [\"./count.sh\"] }}\n{RULES}"
        ),
    );
    let (server, addr) = start_server(&dir, &config);
    let hi = |id: u64| wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", id);
    assert!(
        ask(addr, &hi(1)).contains("Hello!"),
        "the store works first"
    );
    // The outage.
    let mut redis = redis;
    let lock = match outage {
        Outage::RedisStopped => {
            assert!(redis.as_mut().unwrap().signal_and_wait(15).success());
            None
        }
        Outage::SqliteLocked => {
            let conn = rusqlite::Connection::open(dir.path("state.db")).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            Some(conn)
        }
    };
    // Answers that need no program go out.
    assert!(ask(addr, &hi(2)).contains("Hello!"));
    // A program message: its first attempt and WeChat's retry (a new signature) reach
    // this process; the program runs once and the retry gets its answer.
    let count = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "count", 3);
    let first = {
        let count = count.clone();
        std::thread::spawn(move || ask(addr, &count))
    };
    std::thread::sleep(Duration::from_millis(100));
    let retry = ask(addr, &count);
    let first = first.join().unwrap();
    assert!(
        retry.contains("run 1"),
        "the retry got the answer: {retry}\n{}",
        server.log()
    );
    assert!(
        first.ends_with("success"),
        "the first stepped aside: {first}"
    );
    assert_eq!(runs(&dir), 1, "the program ran once");
    // A captured signed query with another body: refused, never answered (and so never
    // cached for the genuine message's retry).
    let query = signed("captured");
    let send = |query: &str, method: &str, body: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut out = Vec::new();
        fcgi_request(&mut out, 1, true, method, query, body.as_bytes());
        s.write_all(&out).unwrap();
        fcgi_response(&mut s).unwrap()
    };
    assert!(send(&query, "POST", &hi(4)).contains("Hello!"));
    let forged = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "count", 4);
    assert!(
        send(&query, "POST", &forged).starts_with("Status: 403"),
        "forged body refused"
    );
    // A handshake's signed query, then as a POST with a body: refused.
    let handshake = signed("url-check");
    assert!(send(&format!("{handshake}&echostr=e"), "GET", "").ends_with("\r\n\r\ne"));
    assert!(send(&handshake, "POST", &hi(5)).starts_with("Status: 403"));
    let log = wait_for_log(&server, "state store unreachable");
    assert_eq!(
        log.matches("state store unreachable").count(),
        1,
        "once per outage"
    );
    // Back: shared again (a retry is found in the store), and the log says so.
    match outage {
        Outage::RedisStopped => redis = Some(start_redis(&dir, port)),
        Outage::SqliteLocked => drop(lock),
    }
    let start = Instant::now();
    loop {
        let id = 100 + start.elapsed().as_millis() as u64;
        assert!(ask(addr, &hi(id)).contains("Hello!"));
        if server.log().contains("state store reachable again") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(redis);
}

#[test]
fn a_redis_outage_keeps_the_promises_per_process() {
    an_outage_keeps_the_promises_per_process(Outage::RedisStopped);
}

#[test]
fn a_locked_sqlite_file_keeps_the_promises_per_process() {
    an_outage_keeps_the_promises_per_process(Outage::SqliteLocked);
}

/// Write a test CA and a server certificate for 127.0.0.1 (PEM files in `dir`).
fn tls_files(dir: &TempDir) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wechat-fcgi test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.path("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.path("server.key"), key.serialize_pem()).unwrap();
}

/// `rediss://`: Redis over TLS, trusting `[state] ca_file` (the test's own CA); a
/// retry reaching the server is answered from Redis.
#[test]
fn redis_over_tls_with_a_ca_of_our_own() {
    let dir = TempDir::new("rediss");
    tls_files(&dir);
    let port = free_port();
    let path = |name: &str| dir.path(name).display().to_string();
    let _redis = start_redis_with(
        &dir,
        0,
        &[
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
    );
    let config = write_config(
        &dir,
        &format!("[state]\nstore = \"rediss://127.0.0.1:{port}/0\"\nca_file = \"ca.pem\"\n{RULES}"),
    );
    let (server, addr) = start_server(&dir, &config);
    let hi = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", 1);
    assert!(ask(addr, &hi).contains("Hello!"));
    assert!(ask(addr, &hi).contains("Hello!"));
    let log = wait_for_log(&server, "via=retry");
    assert!(!log.contains("state store unreachable"), "{log}");
    // Without the CA, the server's certificate is not trusted: no store (and the log
    // says so), answers still go out.
    let config = write_config(
        &dir,
        &format!("[state]\nstore = \"rediss://127.0.0.1:{port}/0\"\n{RULES}"),
    );
    let (untrusting, addr) = start_server(&dir, &config);
    assert!(ask(addr, &hi).contains("Hello!"));
    wait_for_log(&untrusting, "state store unreachable");
}

/// The shipped ACL recipe: the server works under a user confined to its prefix (the
/// shared store and the archive stream), and that user can read no other key.
#[test]
fn the_redis_acl_recipe_confines_the_server_to_its_prefix() {
    let dir = TempDir::new("redis-acl");
    let recipe = std::fs::read_to_string(format!(
        "{}/conf/redis-acl.conf",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let user = recipe
        .lines()
        .find(|l| l.starts_with("user "))
        .unwrap()
        .replace(">change-this-password", ">s3cret-acl-pass");
    std::fs::write(
        dir.path("users.acl"),
        format!("{user}\nuser default on nopass ~* &* +@all\n"),
    )
    .unwrap();
    let port = free_port();
    let _redis = start_redis_with(
        &dir,
        port,
        &[
            "--aclfile".into(),
            dir.path("users.acl").display().to_string(),
        ],
    );
    write_executable(
        &dir,
        "slow.sh",
        "#!/bin/sh\ncat >/dev/null\nsleep 0.3\necho slow answer\n",
    );
    let config = write_config(
        &dir,
        &format!(
            "[state]\nstore = \"redis://wechat-fcgi:s3cret-acl-pass@127.0.0.1:{port}/0\"\n\
             [archive]\nto = \"redis\"\n\
             [[rule]]\ntext = \"slow\"\nrun = {{ command = [\"./slow.sh\"] }}\n{RULES}"
        ),
    );
    let (server, addr) = start_server(&dir, &config);
    let hi = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", 1);
    assert!(ask(addr, &hi).contains("Hello!"));
    assert!(ask(addr, &hi).contains("Hello!"));
    let slow = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "slow", 2);
    assert!(ask(addr, &slow).contains("slow answer"));
    let log = wait_for_log(&server, "via=retry");
    assert!(!log.contains("unreachable"), "{log}");
    assert!(!log.contains("NOPERM") && !log.contains("archive"), "{log}");
    // Everything it wrote is under its prefix; it can read nothing else.
    let keys = redis_cli(port, &["--no-auth-warning", "KEYS", "*"]);
    assert!(!keys.trim().is_empty());
    assert!(
        keys.lines().all(|k| k.starts_with("wechat-fcgi:")),
        "{keys}"
    );
    redis_cli(port, &["SET", "other:secret", "x"]);
    let denied = redis_cli(
        port,
        &[
            "--no-auth-warning",
            "--user",
            "wechat-fcgi",
            "--pass",
            "s3cret-acl-pass",
            "GET",
            "other:secret",
        ],
    );
    assert!(denied.contains("NOPERM"), "{denied}");
}
