//! SIGTERM under continuous load: the first instance stops accepting, finishes what it
//! accepted (a slow program's request included) and exits 0; a second instance on the
//! same listening socket (as systemd socket activation hands it over) takes the rest.
//! No request is lost.

mod common;
use common::*;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn spawn_on(listener: &TcpListener, config: &std::path::Path, log: std::path::PathBuf) -> Proc {
    let fd = OwnedFd::from(listener.try_clone().unwrap());
    let child = Command::new(BIN)
        .process_group(0)
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::from(fd))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        stderr: log,
        is_nginx: false,
    }
}

/// One request on its own connection (no keep-conn, like nginx without keepalive).
/// Returns the response text, or the error.
fn one_request(
    addr: std::net::SocketAddr,
    method: &str,
    query: &str,
    body: &[u8],
) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let mut out = Vec::new();
    fcgi_request(&mut out, 1, false, method, query, body);
    s.write_all(&out).map_err(|e| format!("write: {e}"))?;
    match fcgi_response(&mut s) {
        Some(text) if text.starts_with("Status: 200") => Ok(text),
        other => Err(format!("incomplete or failed response: {other:?}")),
    }
}

#[test]
fn sigterm_and_restart_under_load_lose_nothing() {
    let dir = TempDir::new("lifecycle");
    let slow = dir.path("slow.sh");
    std::fs::write(
        &slow,
        // It says when it runs, so the test knows the request is in flight.
        "#!/bin/sh\ncat >/dev/null; touch started; sleep 0.7; echo drained answer\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(
        &dir,
        &format!("{RULES}[[rule]]\ntext = \"slow\"\nrun = {{ command = [\"./slow.sh\"], timeout_ms = 3000 }}\n"),
    );
    // The test holds the listening socket, as systemd does with socket activation.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut first = spawn_on(&listener, &config, dir.path("first.log"));
    wait_for_log(&first, "wechat-fcgi serving");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let q = format!("{}&echostr=load", signed("9"));
                    match one_request(addr, "GET", &q, b"") {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A request in flight when SIGTERM arrives: its program takes 0.7 s.
    let in_flight = std::thread::spawn(move || {
        let body = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "slow", 4242);
        one_request(addr, "POST", &signed("10"), body.as_bytes())
    });
    let start = std::time::Instant::now();
    while !dir.path("started").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the slow program never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = ok.load(Ordering::Relaxed);
    // SIGTERM the first instance and start the second on the same socket at once.
    let pid = first.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let second = spawn_on(&listener, &config, dir.path("second.log"));
    let status = first.wait_exit();
    assert!(
        status.success(),
        "first instance exit: {status:?}\n{}",
        first.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let drained = in_flight
        .join()
        .unwrap()
        .expect("the in-flight request was answered");
    assert!(drained.contains("drained answer"), "{drained}");
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}\nfirst:\n{}\nsecond:\n{}",
        failures.len(),
        failures.first(),
        first.log(),
        second.log()
    );
    let total = ok.load(Ordering::Relaxed);
    assert!(
        before > 0 && total > before,
        "load ran before ({before}) and after ({total}) the restart"
    );
    assert!(first.log().contains("SIGTERM: draining"));
    // The second instance served (its INFO lines are written in batches).
    wait_for_log(&second, "outcome=handshake");
    // One log line per answered request, none lost: the first instance wrote what it
    // had buffered before exiting. (+1: the slow in-flight request.)
    let lines = |p: &Proc| p.log().lines().filter(|l| l.contains(" outcome=")).count();
    let start = std::time::Instant::now();
    while lines(&first) + lines(&second) < total + 1 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        lines(&first) + lines(&second),
        total + 1,
        "request lines in both logs"
    );
}
