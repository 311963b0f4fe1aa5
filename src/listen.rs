//! Where the listening socket comes from: `--listen`, systemd socket activation
//! (`LISTEN_FDS`), fd 0 when a spawner passed a listening socket (FCGI_LISTENSOCK_FILENO,
//! as spawn-fcgi and mod_fcgid do), or `[server] listen`, first that applies.

use std::fmt;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// An address from `--listen` or `[server] listen`: `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `tcp:HOST:PORT`.
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
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A Unix-domain listener.
    Unix(std::os::unix::net::UnixListener),
}

/// Where the socket came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--listen`.
    Flag(ListenAddr),
    /// systemd socket activation (fd 3).
    Systemd,
    /// fd 0, from a spawner.
    Fd0,
    /// `[server] listen`.
    Config(ListenAddr),
}

impl Source {
    /// The Unix socket file this process bound itself (and so removes at exit).
    pub fn created_socket(&self) -> Option<&Path> {
        match self {
            Source::Flag(ListenAddr::Unix(path)) | Source::Config(ListenAddr::Unix(path)) => {
                Some(path)
            }
            _ => None,
        }
    }
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
        return Ok((adopt(fd, "fd 3 (systemd)")?, Source::Systemd));
    }
    if let Some(fd) = stdin_listener() {
        return Ok((adopt(fd, "fd 0")?, Source::Fd0));
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

/// Mark every file descriptor above 2 that this process inherited close-on-exec, so no
/// reply program gets one: a listening socket passed by systemd (a program that kept
/// it could answer requests itself, or set it blocking and freeze the server), or
/// whatever else the parent left open. Call before anything else opens files.
pub fn close_inherited_on_exec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl(2) F_GETFD/F_SETFD on a descriptor number only reads and sets
        // that descriptor's flags; on a number that is not open (the directory listing
        // was just closed) it fails with EBADF and changes nothing. No memory is passed.
        #[allow(unsafe_code)]
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Whether fd 0 is a socket in the listening state (libfcgi's `FCGX_IsCGI` test): a
/// spawner (spawn-fcgi, mod_fcgid) handed us `FCGI_LISTENSOCK_FILENO`.
pub fn stdin_is_listening_socket() -> bool {
    is_listening(&std::io::stdin())
}

/// Whether this file descriptor is a listening socket (`SO_ACCEPTCONN`); false for
/// anything that is not a socket.
pub fn is_listening(fd: &impl AsFd) -> bool {
    socket2::SockRef::from(fd).is_listener().unwrap_or(false)
}

/// fd 3 when systemd passed exactly our sockets (`LISTEN_PID` is us, `LISTEN_FDS` ≥ 1).
fn systemd_fd() -> Option<OwnedFd> {
    const SD_LISTEN_FDS_START: RawFd = 3;
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID is ours) and nothing else
    // in this program opens, owns or closes fd 3, so taking ownership of it is sound;
    // an fd 3 that is not a listening socket is closed again at once below.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    if is_listening(&fd) {
        Some(fd)
    } else {
        // Not ours to close if it is something else: forget it rather than drop it.
        std::mem::forget(fd);
        None
    }
}

/// fd 0 when it is a listening socket, taken over: stdin is not used for anything else
/// by a FastCGI server.
fn stdin_listener() -> Option<OwnedFd> {
    if !stdin_is_listening_socket() {
        return None;
    }
    // SAFETY: fd 0 is a listening socket handed to us by the spawner (checked just
    // above), and once serving FastCGI nothing else in this program reads stdin or
    // closes fd 0, so this is its only owner.
    #[allow(unsafe_code)]
    Some(unsafe { OwnedFd::from_raw_fd(0) })
}

/// Make an inherited listening socket ours, as TCP or Unix by its family, and close it
/// on exec so reply programs never inherit it.
fn adopt(fd: OwnedFd, name: &str) -> anyhow::Result<Listener> {
    let socket = socket2::Socket::from(fd);
    socket
        .set_cloexec(true)
        .map_err(|e| anyhow::anyhow!("{name}: FD_CLOEXEC: {e}"))?;
    let addr = socket
        .local_addr()
        .map_err(|e| anyhow::anyhow!("{name}: getsockname: {e}"))?;
    let fd = OwnedFd::from(socket);
    Ok(match addr.domain() {
        socket2::Domain::UNIX => Listener::Unix(std::os::unix::net::UnixListener::from(fd)),
        socket2::Domain::IPV4 | socket2::Domain::IPV6 => {
            Listener::Tcp(std::net::TcpListener::from(fd))
        }
        other => anyhow::bail!("{name}: unsupported socket family {other:?}"),
    })
}

fn bind(addr: &ListenAddr, socket_mode: u32, backlog: u32) -> anyhow::Result<Listener> {
    let listener = match addr {
        ListenAddr::Tcp(a) => {
            let l =
                std::net::TcpListener::bind(a).map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
            Listener::Tcp(l)
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)?;
            // The socket file is created with the umask's mode: exactly socket_mode. No
            // chmod afterwards, which would follow a link someone put in its place.
            let bound = with_umask(!socket_mode & 0o777, || {
                std::os::unix::net::UnixListener::bind(path)
            });
            let l = bound.map_err(|e| bind_error(addr, path, e))?;
            Listener::Unix(l)
        }
    };
    // std listens with a backlog of 128; a burst of new connections from nginx beyond
    // that is dropped by the kernel and retried after 200 ms or more. Listening again
    // on the bound socket sets the backlog we were configured with (capped by the
    // kernel's somaxconn).
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    let socket = match &listener {
        Listener::Tcp(l) => socket2::SockRef::from(l),
        Listener::Unix(l) => socket2::SockRef::from(l),
    };
    socket
        .listen(backlog)
        .map_err(|e| anyhow::anyhow!("listen {addr} with backlog {backlog}: {e}"))?;
    Ok(listener)
}

/// Run `f` with this umask, then put the old one back. The umask is process-wide: call
/// only at start-up, before other threads create files.
fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(mask as libc::mode_t));
    let result = f();
    umask(old);
    result
}

/// A bind error that says what to do: name the missing folder, or who cannot write it.
fn bind_error(addr: &ListenAddr, path: &Path, e: std::io::Error) -> anyhow::Error {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    match (e.kind(), folder) {
        (std::io::ErrorKind::NotFound, Some(dir)) if !dir.exists() => anyhow::anyhow!(
            "bind {addr}: the folder {} does not exist: create it (mkdir -p {}; with systemd, RuntimeDirectory= does it)",
            dir.display(),
            dir.display()
        ),
        (std::io::ErrorKind::PermissionDenied, Some(dir)) => anyhow::anyhow!(
            "bind {addr}: this user cannot create a file in {}: {e}",
            dir.display()
        ),
        _ => anyhow::anyhow!("bind {addr}: {e}"),
    }
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
    use std::os::unix::fs::PermissionsExt;

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
        assert!(is_listening(&l));
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(!is_listening(&s));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_listening(&file));
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
