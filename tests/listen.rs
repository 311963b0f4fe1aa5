//! Where the listening socket comes from, each source through the real binary:
//! systemd socket activation (LISTEN_FDS/LISTEN_PID, fd 3), `[server] listen`, and
//! `--listen` winning over both. (fd 0 from a spawner is what every other test uses.)

mod common;
use common::*;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

fn handshake_on(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut out = Vec::new();
    fcgi_request(
        &mut out,
        1,
        false,
        "GET",
        &format!("{}&echostr=here", signed("1")),
        b"",
    );
    s.write_all(&out).unwrap();
    fcgi_response(&mut s).unwrap_or_default()
}

#[test]
fn systemd_socket_activation() {
    let dir = TempDir::new("systemd");
    let config = write_config(&dir, RULES);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = dir.path("log");
    // systemd passes the socket as fd 3 and names our pid in LISTEN_PID; the shell
    // moves the socket from fd 0 to fd 3 and execs with its own pid.
    let child = Command::new("sh")
        .process_group(0)
        .arg("-c")
        .arg(format!(
            "exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec '{BIN}' serve --config '{}'",
            config.display()
        ))
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let p = Proc {
        child,
        stderr: log,
        is_nginx: false,
    };
    wait_for_log(&p, "wechat-fcgi serving");
    assert!(
        p.log().contains("fd 3 (systemd socket activation)"),
        "{}",
        p.log()
    );
    assert!(handshake_on(addr).ends_with("\r\n\r\nhere"));
}

#[test]
fn config_listen_and_flag_precedence() {
    let dir = TempDir::new("cfg-listen");
    let port = free_port();
    let config = write_config(
        &dir,
        &format!("[server]\nlisten = \"tcp:127.0.0.1:{port}\"\n"),
    );
    let log = dir.path("a.log");
    let p = Proc {
        child: Command::new(BIN)
            .process_group(0)
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        stderr: log,
        is_nginx: false,
    };
    wait_for_log(&p, "wechat-fcgi serving");
    assert!(
        p.log()
            .contains(&format!("tcp:127.0.0.1:{port} ([server] listen)")),
        "{}",
        p.log()
    );
    assert!(handshake_on(format!("127.0.0.1:{port}").parse().unwrap()).ends_with("here"));
    drop(p);
    // --listen wins over the config (and over fd 0).
    let flag_port = free_port();
    let log = dir.path("b.log");
    let spawner = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = Proc {
        child: Command::new(BIN)
            .process_group(0)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--listen")
            .arg(format!("tcp:127.0.0.1:{flag_port}"))
            .stdin(Stdio::from(OwnedFd::from(spawner)))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        stderr: log,
        is_nginx: false,
    };
    wait_for_log(&p, "wechat-fcgi serving");
    assert!(p.log().contains("(--listen)"), "{}", p.log());
    assert!(handshake_on(format!("127.0.0.1:{flag_port}").parse().unwrap()).ends_with("here"));
    // With no source at all: a clear error, exit 1.
    let bare = write_config(&dir, "");
    let out = Command::new(BIN)
        .process_group(0)
        .args(["serve", "--config"])
        .arg(&bare)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no listening socket"));
}

/// `socket_owner`/`socket_group` give the socket we create to the web server's user.
#[test]
fn socket_owner_and_group_are_set_on_the_socket() {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("skipped: giving a socket away needs the tests to run as root");
        return;
    }
    let id = |args: &[&str]| -> u32 {
        let out = Command::new("id").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let (nobody, nogroup) = (id(&["-u", "nobody"]), id(&["-g", "nobody"]));
    let dir = TempDir::new("socket-owner");
    let sock = dir.path("w.sock");
    let config = write_config(
        &dir,
        &format!(
            "[server]\nlisten = \"unix:{}\"\nsocket_owner = \"nobody\"\nsocket_group = \"nogroup\"\n",
            sock.display()
        ),
    );
    let log = dir.path("log");
    let p = Proc {
        child: Command::new(BIN)
            .process_group(0)
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        stderr: log,
        is_nginx: false,
    };
    wait_for_log(&p, "wechat-fcgi serving");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (nobody, nogroup));
}

/// The shipped files agree on one default address: the nginx site, the systemd socket,
/// the example config and the spawn-fcgi lines.
#[test]
fn the_shipped_conf_files_use_one_address() {
    let conf = |name: &str| {
        std::fs::read_to_string(format!("{}/conf/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let address = "/run/wechat-fcgi/wechat-fcgi.sock";
    let active = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(active(&conf("nginx-site.conf")).contains(&format!("server unix:{address};")));
    assert!(active(&conf("wechat-fcgi.socket")).contains(&format!("ListenStream={address}")));
    assert!(active(&conf("wechat-fcgi.toml")).contains(&format!("listen = \"unix:{address}\"")));
    assert!(active(&conf("spawn-fcgi.txt")).contains(&format!("spawn-fcgi -s {address}")));
}

/// A user who can write to the socket's folder swaps the socket for a link to a file
/// of root's between the bind and the ownership change (a racer replacing it as soon
/// as it appears, over twenty starts): that file's owner and mode never change, and a
/// start that lost its socket says so and exits.
#[test]
fn a_socket_swapped_for_a_link_never_changes_another_file() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    if !nix_is_root() {
        eprintln!("ignored: giving a socket away needs root");
        return;
    }
    let dir = TempDir::new("socket-race");
    let secret = dir.path("root-only");
    std::fs::write(&secret, b"root's").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = dir.path("run");
    std::fs::create_dir(&run).unwrap();
    let sock = run.join("s.sock");
    let config = write_config(
        &dir,
        "[server]\nsocket_owner = \"nobody\"\nsocket_group = \"nogroup\"\n",
    );
    let mut swapped = 0;
    for round in 0..20 {
        let _ = std::fs::remove_file(&sock);
        let stop = Arc::new(AtomicBool::new(false));
        let racer = {
            let (stop, sock, secret, run) =
                (stop.clone(), sock.clone(), secret.clone(), run.clone());
            std::thread::spawn(move || {
                let link = run.join(format!("link{round}"));
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&secret, &link).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
                        // Atomically replace the socket with the link.
                        return std::fs::rename(&link, &sock).is_ok();
                    }
                    std::hint::spin_loop();
                }
                false
            })
        };
        let log = dir.path(&format!("log{round}"));
        let mut child = Command::new(BIN)
            .process_group(0)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Serving (then stopped) or refused (exits by itself).
        let start = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("wechat-fcgi serving") {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                break;
            }
            if child.try_wait().unwrap().is_some() {
                assert!(
                    text.contains("no longer the socket") || text.contains("was replaced"),
                    "{text}"
                );
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        if racer.join().unwrap() {
            swapped += 1;
        }
        let meta = std::fs::metadata(&secret).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
            (0, 0, 0o600),
            "round {round}: the root-only file was changed"
        );
    }
    assert!(
        swapped > 0,
        "the racer never won a race: the test proves nothing"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}
