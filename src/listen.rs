//! Where the listening socket comes from: `--listen`, systemd socket activation
//! (`LISTEN_FDS`), fd 0 when a spawner passed a listening socket (FCGI_LISTENSOCK_FILENO,
//! as spawn-fcgi and mod_fcgid do), or `[server] listen`, first that applies.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An address from `--listen` or `[server] listen`: `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl ListenAddr {
    /// Parse `unix:/run/x.sock` or `tcp:127.0.0.1:9000` (`tcp:[::1]:9000` for IPv6).
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: unix: needs a path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            return match addr.parse::<std::net::SocketAddr>() {
                Ok(_) => Ok(ListenAddr::Tcp(addr.to_owned())),
                Err(_) => Err(format!(
                    "{s:?}: tcp: needs HOST:PORT with an IP address, like tcp:127.0.0.1:9000"
                )),
            };
        }
        Err(format!("{s:?}: expected unix:PATH or tcp:HOST:PORT"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A bound, listening socket (std types; the server turns them into tokio ones).
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Where the socket came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(ListenAddr),
    Systemd,
    Fd0,
    Config(ListenAddr),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(a) => write!(f, "{a} (--listen)"),
            Source::Systemd => f.write_str("fd 3 (systemd socket activation)"),
            Source::Fd0 => f.write_str("fd 0 (listening socket passed by the spawner)"),
            Source::Config(a) => write!(f, "{a} ([server] listen)"),
        }
    }
}

/// Pick the listening socket: the flag, then systemd, then fd 0, then the config.
pub fn acquire(
    flag: Option<&ListenAddr>,
    config: Option<&ListenAddr>,
    socket_mode: u32,
    backlog: u32,
) -> anyhow::Result<(Listener, Source)> {
    if let Some(addr) = flag {
        return Ok((
            bind(addr, socket_mode, backlog)?,
            Source::Flag(addr.clone()),
        ));
    }
    if let Some(fd) = systemd_fd() {
        return Ok((adopt(fd)?, Source::Systemd));
    }
    if fd_is_listening_socket(0) {
        return Ok((adopt(0)?, Source::Fd0));
    }
    if let Some(addr) = config {
        return Ok((
            bind(addr, socket_mode, backlog)?,
            Source::Config(addr.clone()),
        ));
    }
    anyhow::bail!(
        "no listening socket: give --listen, set [server] listen, or start under systemd socket activation or spawn-fcgi"
    )
}

/// Whether `fd` is a socket in the listening state (libfcgi's `FCGX_IsCGI` test).
pub fn fd_is_listening_socket(fd: RawFd) -> bool {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`, a live c_int; an
    // invalid or non-socket fd only makes it return -1.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && accepting != 0
}

/// fd 3 when systemd passed exactly our sockets (`LISTEN_PID` is us, `LISTEN_FDS` ≥ 1).
fn systemd_fd() -> Option<RawFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    (pid == std::process::id() && fds >= 1 && fd_is_listening_socket(3)).then_some(3)
}

/// Take ownership of an inherited listening socket, as TCP or Unix by its family.
fn adopt(fd: RawFd) -> anyhow::Result<Listener> {
    // SAFETY: sockaddr_storage is plain data; getsockname fills at most `len` bytes.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is a live sockaddr_storage of `len` bytes.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        anyhow::bail!("fd {fd}: getsockname: {}", io::Error::last_os_error());
    }
    let family = libc::c_int::from(addr.ss_family);
    // SAFETY: `fd` is an open listening socket we were handed and now own alone.
    let listener = match family {
        libc::AF_UNIX => {
            Listener::Unix(unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) })
        }
        libc::AF_INET | libc::AF_INET6 => {
            Listener::Tcp(unsafe { std::net::TcpListener::from_raw_fd(fd) })
        }
        other => anyhow::bail!("fd {fd}: unsupported socket family {other}"),
    };
    Ok(listener)
}

fn bind(addr: &ListenAddr, socket_mode: u32, backlog: u32) -> anyhow::Result<Listener> {
    use std::os::fd::AsRawFd;
    let listener = match addr {
        ListenAddr::Tcp(a) => {
            let l =
                std::net::TcpListener::bind(a).map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
            Listener::Tcp(l)
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let l = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
                .map_err(|e| anyhow::anyhow!("chmod {addr} to {socket_mode:o}: {e}"))?;
            Listener::Unix(l)
        }
    };
    // std listens with a backlog of 128; a burst of new connections from nginx beyond
    // that is dropped by the kernel and retried after 200 ms or more. Listening again
    // on the bound socket sets the backlog we were configured with (capped by the
    // kernel's somaxconn).
    let fd = match &listener {
        Listener::Tcp(l) => l.as_raw_fd(),
        Listener::Unix(l) => l.as_raw_fd(),
    };
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen(2) on a socket fd we own; no memory is passed.
    if unsafe { libc::listen(fd, backlog) } != 0 {
        anyhow::bail!(
            "listen {addr} with backlog {backlog}: {}",
            io::Error::last_os_error()
        );
    }
    Ok(listener)
}

/// Remove a socket file left by a process that is gone; refuse if one still answers.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!(
            "{} exists and is not a socket; not removing it",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => anyhow::bail!("{} is in use by a running server", path.display()),
        Err(_) => std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("remove stale socket {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let rows: &[(&str, Option<ListenAddr>)] = &[
            (
                "tcp:127.0.0.1:9000",
                Some(ListenAddr::Tcp("127.0.0.1:9000".into())),
            ),
            ("tcp:[::1]:9000", Some(ListenAddr::Tcp("[::1]:9000".into()))),
            (
                "unix:/run/w.sock",
                Some(ListenAddr::Unix("/run/w.sock".into())),
            ),
            ("unix:", None),
            ("tcp:localhost", None),
            ("tcp:127.0.0.1", None),
            ("127.0.0.1:9000", None),
            ("", None),
        ];
        for (s, expected) in rows {
            assert_eq!(ListenAddr::parse(s).ok(), *expected, "{s:?}");
        }
    }

    #[test]
    fn listening_socket_detection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        assert!(fd_is_listening_socket(l.as_raw_fd()));
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(!fd_is_listening_socket(s.as_raw_fd()));
        assert!(!fd_is_listening_socket(-1));
    }

    #[test]
    fn stale_unix_socket_is_replaced_live_one_is_not() {
        let dir = std::env::temp_dir().join(format!("wf-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let addr = ListenAddr::Unix(path.clone());
        // A stale socket: bound, then the listener dropped (file stays).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(&addr, 0o600, 64).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // While `live` listens, a second bind refuses.
        let err = bind(&addr, 0o600, 64).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(live);
        // A regular file is never removed.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        assert!(bind(&addr, 0o600, 64)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
