//! Test harness: start the real binary (FastCGI on a socket handed over as fd 0, as
//! spawn-fcgi does), a real nginx in front of it, and talk plain HTTP/1.0 to nginx.

#![allow(dead_code)] // each test file uses a different part
#![allow(unreachable_pub)] // `pub` here means "for the test files", which are crates of their own

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "testtoken123";
pub const BIN: &str = env!("CARGO_BIN_EXE_wechat-fcgi");

pub const RULES: &str = r#"
[[rule]]
name = "greeting"
text = ["hi", "你好"]
reply = { text = "Hello!" }
[[rule]]
event = "subscribe"
reply = { text = "Welcome!" }
[default]
reply = { text = "Sorry, I did not understand." }
"#;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wechat-fcgi-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop; its stderr goes to a file we can read.
pub struct Proc {
    pub child: Child,
    pub stderr: PathBuf,
    /// Stopped with QUIT rather than TERM.
    pub is_nginx: bool,
}

impl Proc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Send a signal and wait for exit, returning the exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        send_signal(self.child.id(), sig);
        self.wait_exit()
    }

    /// Wait (up to 20 s) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "process did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stop on drop the way its own docs say, so that nothing it started outlives the test:
/// nginx with QUIT (its master then stops its workers; a SIGKILLed master leaves them
/// running), wechat-fcgi with TERM (it drains and kills its programs' groups). Only a
/// process that ignores that for 10 s is killed, with its whole process group (every
/// process here is started as the leader of its own group).
impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let polite = if self.is_nginx { 3 } else { 15 }; // QUIT, TERM
        send_signal(self.child.id(), polite);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The group: the process, and whatever it started that is still there.
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// `kill -SIG PID`.
pub fn send_signal(pid: u32, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Run the binary as a CGI program; returns (exit ok, stdout, stderr).
pub fn run_cgi(args: &[&str], vars: &[(&str, &str)], body: &[u8]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    // The request lines are INFO (CGI mode's default is WARN): the tests read them.
    cmd.env_clear()
        .args(args)
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("WECHAT_FCGI_LOG", "info");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = spawn_piped(&mut cmd, body).wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write an executable file (a reply program, a script) into `dir`.
pub fn write_executable(dir: &TempDir, name: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Start the binary as a CGI program for one POST, as a web server does: a clean
/// environment (the config from `WECHAT_FCGI_CONFIG`, the request's variables, `PATH`,
/// and `extra`), `body` on stdin (then closed); stdout and stderr piped.
pub fn spawn_cgi(config: &Path, query: &str, body: &[u8], extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .envs([
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("WECHAT_FCGI_CONFIG", config.to_str().unwrap()),
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", query),
            ("CONTENT_LENGTH", &body.len().to_string()),
            ("PATH", "/usr/bin:/bin"),
        ])
        .envs(extra.iter().copied())
        .process_group(0);
    spawn_piped(&mut cmd, body)
}

/// Spawn `cmd` with stdin, stdout and stderr piped, write `body` to its stdin and close
/// it.
fn spawn_piped(cmd: &mut Command, body: &[u8]) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(body); // the program may refuse before reading it all
    child
}

/// Write a config with our test token and these extra lines.
pub fn write_config(dir: &TempDir, extra: &str) -> PathBuf {
    let path = dir.path("wechat-fcgi.toml");
    std::fs::write(&path, format!("[account]\ntoken = \"{TOKEN}\"\n{extra}")).unwrap();
    path
}

/// Start `wechat-fcgi serve` on a fresh loopback listener passed as fd 0 (as spawn-fcgi
/// does). Returns the process and the FastCGI address.
pub fn start_server(dir: &TempDir, config: &Path) -> (Proc, std::net::SocketAddr) {
    start_server_with_env(dir, config, &[])
}

/// [`start_server`] with extra environment variables (the log filter at its default
/// `info` unless given).
pub fn start_server_with_env(
    dir: &TempDir,
    config: &Path,
    env: &[(&str, &str)],
) -> (Proc, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // server.log; a second instance in the same folder gets server-2.log, and so on.
    let stderr = (1..)
        .map(|n| match n {
            1 => dir.path("server.log"),
            n => dir.path(&format!("server-{n}.log")),
        })
        .find(|p| !p.exists())
        .unwrap();
    let child = Command::new(BIN)
        .process_group(0)
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .env_remove("WECHAT_FCGI_CONFIG")
        .env_remove("LISTEN_FDS")
        .env_remove("WECHAT_FCGI_LOG")
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    (
        Proc {
            child,
            stderr,
            is_nginx: false,
        },
        addr,
    )
}

/// A real redis-server on a free loopback port, stopped (TERM) on drop.
pub fn start_redis(dir: &TempDir, port: u16) -> Proc {
    start_redis_with(dir, port, &[])
}

/// [`start_redis`] with more arguments (TLS, an ACL file); `port` 0 with `--tls-port`.
pub fn start_redis_with(dir: &TempDir, port: u16, more: &[String]) -> Proc {
    let log = dir.path(&format!("redis-{port}-{}.log", more.len()));
    let child = std::process::Command::new("redis-server")
        .process_group(0)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(more)
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir.0)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (scripts/test.sh installs it)");
    let redis = Proc {
        child,
        stderr: log,
        is_nginx: false,
    };
    wait_for_log(&redis, "Ready to accept connections");
    redis
}

/// What every front-end recipe must get right: the handshake, a bad signature refused,
/// a keyword reply, an oversized body refused with 413 (not a 500 from a connection
/// closed under the web server), and a small burst.
pub fn front_end_checks(port: u16, path: &str) {
    let handshake = format!("{path}?{}&echostr=front-end-ok", signed("1"));
    let (status, body) = http(port, "GET", &handshake, b"");
    assert_eq!((status, body.as_slice()), (200, b"front-end-ok".as_slice()));
    let bad = format!("{path}?{}", signed("2")).replace("signature=", "signature=0");
    let hi = || wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", unix_now());
    let (status, _) = http(port, "POST", &bad, hi().as_bytes());
    assert_eq!(status, 403);
    let (status, body) = http(
        port,
        "POST",
        &format!("{path}?{}", signed("3")),
        hi().as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("Hello!"));
    let big = vec![b'x'; 600_000];
    let (status, body) = http(port, "POST", &format!("{path}?{}", signed("4")), &big);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let burst: Vec<_> = (0..20u64)
        .map(|i| {
            let target = format!("{path}?{}", signed("5"));
            std::thread::spawn(move || {
                let body = wechat_fcgi::sample::text_with_id(
                    "gh",
                    &format!("o{i}"),
                    unix_now(),
                    "hi",
                    7000 + i,
                );
                http(port, "POST", &target, body.as_bytes())
            })
        })
        .collect();
    for h in burst {
        let (status, body) = h.join().unwrap();
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("Hello!"));
    }
}

/// Start a web server (Apache, lighttpd) in the foreground, in its own process group,
/// and wait until it accepts connections on `port`; its error log (`error_log`, in
/// `dir`) is shown if it does not.
pub fn start_web_server(dir: &TempDir, mut cmd: Command, port: u16, error_log: &str) -> Proc {
    let stderr = dir.path("web-server.stderr");
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test.sh installs it)"));
    let server = Proc {
        child,
        stderr,
        is_nginx: false,
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{program} did not start: {}\n{}",
            server.log(),
            std::fs::read_to_string(dir.path(error_log)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// Wait until the log contains `needle`.
pub fn wait_for_log(p: &Proc, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let log = p.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "log never showed {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until the log shows `needle` at least `n` times; the log then.
pub fn wait_for_log_count(p: &Proc, needle: &str, n: usize) -> String {
    let start = Instant::now();
    loop {
        let log = p.log();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "log never showed {needle:?} {n} times:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `redis-cli -p PORT ARGS...` against a test's Redis; its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback port (bound then released; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The nginx binary, or a clear failure telling how to get it.
pub fn nginx_bin() -> PathBuf {
    for p in [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx not found: run scripts/test.sh, which installs it (apt-get install nginx)");
}

/// Start nginx on a free loopback port with `/wechat` passed to `fastcgi` (host:port
/// or unix:path) through a keepalive upstream. Returns nginx and its HTTP port.
pub fn start_nginx(dir: &TempDir, fastcgi: &str) -> (Proc, u16) {
    let port = free_port();
    let root = dir.0.display();
    let user = if is_root() { "user root;" } else { "" };
    let conf = format!(
        r#"{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    fastcgi_temp_path {root}/fastcgi_temp;
    proxy_temp_path {root}/proxy_temp;
    scgi_temp_path {root}/scgi_temp;
    uwsgi_temp_path {root}/uwsgi_temp;
    upstream wechat_fcgi {{
        server {fastcgi};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        # The callback, other accounts' paths, and the status and ping paths.
        location ~ ^/wechat {{
            fastcgi_pass wechat_fcgi;
            fastcgi_keep_conn on;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param DOCUMENT_URI $document_uri;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            client_max_body_size 1m;
        }}
    }}
}}
"#
    );
    let conf_path = dir.path("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let stderr = dir.path("nginx.stderr");
    let child = Command::new(nginx_bin())
        .process_group(0)
        .arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let p = Proc {
        child,
        stderr,
        is_nginx: true,
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not start: {}\n{}",
            p.log(),
            std::fs::read_to_string(dir.path("nginx-error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, port)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A plain HTTP/1.0 request; returns (status, body).
pub fn http(port: u16, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response has a header");
    let status_line = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, resp[split + 4..].to_vec())
}

/// A signed query with the current time (the server refuses stale timestamps) and a
/// nonce that starts with `nonce` and is new on every call, as WeChat's are: the server
/// binds a signed query to the first body it came with.
pub fn signed(nonce: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    wechat_fcgi::sample::signed_query(TOKEN, unix_now(), &format!("{nonce}{n}"))
}

/// The Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Append a BEGIN_REQUEST record for `id` with this role and flags.
pub fn begin(out: &mut Vec<u8>, id: u16, role: u16, flags: u8) {
    use wechat_fcgi::fcgi::record;
    let r = role.to_be_bytes();
    record::write_record(
        out,
        record::BEGIN_REQUEST,
        id,
        &[r[0], r[1], flags, 0, 0, 0, 0, 0],
    );
}

/// Every complete record in `buf` as (type, request id, content), and how many bytes
/// they took.
pub fn decode_records(buf: &[u8]) -> (Vec<(u8, u16, Vec<u8>)>, usize) {
    use wechat_fcgi::fcgi::record;
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(Some((rec, used))) = record::decode(&buf[pos..]) {
        out.push((rec.record_type, rec.request_id, rec.content.to_vec()));
        pos += used;
    }
    (out, pos)
}

/// Read records until one of type `until` arrives; returns all of them. Panics when
/// the server closes first.
pub fn read_records(s: &mut TcpStream, until: u8) -> Vec<(u8, u16, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    loop {
        let (records, _) = decode_records(&buf);
        if let Some(end) = records.iter().position(|r| r.0 == until) {
            return records[..=end].to_vec();
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "server closed before record type {until}; got {records:?}"
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Append one complete FastCGI Responder request: BEGIN_REQUEST, PARAMS (method, query,
/// content length), STDIN.
pub fn fcgi_request(
    out: &mut Vec<u8>,
    id: u16,
    keep_conn: bool,
    method: &str,
    query: &str,
    body: &[u8],
) {
    use wechat_fcgi::fcgi::{params, record};
    let flags = if keep_conn { record::FLAG_KEEP_CONN } else { 0 };
    begin(out, id, record::ROLE_RESPONDER, flags);
    let mut p = Vec::new();
    params::write_pair(&mut p, b"REQUEST_METHOD", method.as_bytes());
    params::write_pair(&mut p, b"QUERY_STRING", query.as_bytes());
    params::write_pair(&mut p, b"CONTENT_LENGTH", body.len().to_string().as_bytes());
    record::write_stream(out, record::PARAMS, id, &p);
    record::write_stream(out, record::STDIN, id, body);
}

/// Read one FastCGI response from `s`: the STDOUT text once END_REQUEST arrives, or
/// `None` if the connection ends first.
pub fn fcgi_response(s: &mut TcpStream) -> Option<String> {
    use wechat_fcgi::fcgi::record;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    loop {
        let mut stdout = Vec::new();
        for (kind, _, content) in decode_records(&buf).0 {
            match kind {
                record::STDOUT => stdout.extend_from_slice(&content),
                record::END_REQUEST => return Some(String::from_utf8_lossy(&stdout).into_owned()),
                _ => {}
            }
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
