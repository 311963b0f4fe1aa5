//! `[server]`: where to listen and the limits that protect the process.

use std::time::Duration;

use super::defaults::{self, Bound};
use super::raw::RawServer;
use crate::engine::EngineConfig;
use crate::listen::ListenAddr;

/// `[server]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `listen`: the address to bind when no other source gives a socket.
    pub listen: Option<ListenAddr>,
    /// Permission bits of a Unix socket we create.
    pub socket_mode: u32,
    /// Listen backlog for sockets we bind (inherited ones keep their spawner's).
    pub listen_backlog: u32,
    /// The limits the FastCGI server and the CGI adapter enforce.
    pub limits: Limits,
    /// The answer path's settings.
    pub engine: EngineConfig,
    /// Requests whose timestamp is further than this from our clock are refused
    /// (0: no check). The store keeps answers at least this long.
    pub timestamp_window_secs: u64,
    /// TCP peers allowed to connect (PHP-FPM's listen.allowed_clients); None: any.
    pub allowed_clients: Option<Vec<std::net::IpAddr>>,
    /// The status and ping paths, when either is set.
    pub status: Option<StatusConfig>,
    /// `user` (and `group`): who to run as after binding. The names are resolved when
    /// serving starts (a lookup in the system's user database is IO).
    pub user: Option<String>,
    /// `group`: the group to run as; the user's primary group when not given.
    pub group: Option<String>,
    /// `socket_owner` and `socket_group`: who owns a Unix socket we create.
    pub socket_owner: Option<String>,
    /// See `socket_owner`.
    pub socket_group: Option<String>,
}

/// `[server] status_path`, `ping_path`, `status_allowed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    /// `status_path`: answers the status (JSON, or Prometheus' text format).
    pub status_path: Option<String>,
    /// `ping_path`: answers `pong`.
    pub ping_path: Option<String>,
    /// `status_allowed`: the `REMOTE_ADDR`s that may read them.
    pub allowed: Vec<std::net::IpAddr>,
}

/// Explicit limits; see README "Limits" for what each protects against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Largest total size of one request's FastCGI params (431 beyond).
    pub max_params_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// How long one request may take to arrive once it started.
    pub read_timeout: Duration,
    /// How long the peer may take to take in what we write.
    pub write_timeout: Duration,
    /// How long in-flight requests get to finish after SIGTERM.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        let n = |b: Bound| b.default as usize;
        let secs = |b: Bound| Duration::from_secs(b.default);
        Limits {
            max_body_bytes: n(defaults::MAX_BODY_BYTES),
            max_params_bytes: n(defaults::MAX_PARAMS_BYTES),
            max_connections: n(defaults::MAX_CONNECTIONS),
            idle_timeout: secs(defaults::IDLE_TIMEOUT_SECS),
            read_timeout: secs(defaults::READ_TIMEOUT_SECS),
            write_timeout: secs(defaults::WRITE_TIMEOUT_SECS),
            drain_timeout: secs(defaults::DRAIN_TIMEOUT_SECS),
        }
    }
}

impl RawServer {
    /// Validate; every problem goes to `problems`, naming its key.
    pub(super) fn validate(self, problems: &mut Vec<String>) -> ServerConfig {
        let listen = match self.listen.as_deref().map(ListenAddr::parse) {
            None => None,
            Some(Ok(addr)) => Some(addr),
            Some(Err(e)) => {
                problems.push(format!("server.listen: {e}"));
                None
            }
        };
        let socket_mode = match self.socket_mode.as_deref() {
            None => defaults::SOCKET_MODE,
            Some(s) => match u32::from_str_radix(s, 8) {
                Ok(mode) if mode <= 0o777 => mode,
                _ => {
                    problems.push(format!(
                        "server.socket_mode: {s:?} is not an octal permission like \"0660\""
                    ));
                    defaults::SOCKET_MODE
                }
            },
        };
        let mut num = |bound: Bound, value: Option<u64>| bound.check(value, problems);
        // Every bound's maximum fits in usize and u32 (checked by a test).
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let limits = Limits {
            max_body_bytes: size(num(defaults::MAX_BODY_BYTES, self.max_body_bytes)),
            max_params_bytes: size(num(defaults::MAX_PARAMS_BYTES, self.max_params_bytes)),
            max_connections: size(num(defaults::MAX_CONNECTIONS, self.max_connections)),
            idle_timeout: Duration::from_secs(num(
                defaults::IDLE_TIMEOUT_SECS,
                self.idle_timeout_secs,
            )),
            read_timeout: Duration::from_secs(num(
                defaults::READ_TIMEOUT_SECS,
                self.read_timeout_secs,
            )),
            write_timeout: Duration::from_secs(num(
                defaults::WRITE_TIMEOUT_SECS,
                self.write_timeout_secs,
            )),
            drain_timeout: Duration::from_secs(num(
                defaults::DRAIN_TIMEOUT_SECS,
                self.drain_timeout_secs,
            )),
        };
        let listen_backlog = num(defaults::LISTEN_BACKLOG, self.listen_backlog);
        let timestamp_window_secs = num(defaults::TIMESTAMP_WINDOW, self.timestamp_window_secs);
        let engine = EngineConfig {
            reply_budget: Duration::from_millis(num(defaults::REPLY_BUDGET, self.reply_budget_ms)),
            max_programs: size(num(defaults::MAX_PROGRAMS_BOUND, self.max_programs)),
            max_programs_per_sender: size(num(
                defaults::MAX_PROGRAMS_PER_SENDER,
                self.max_programs_per_sender,
            )),
            cache_entries: size(num(defaults::RETRY_CACHE, self.retry_cache_entries)),
            cache_bytes: size(num(
                defaults::RETRY_CACHE_BYTES_BOUND,
                self.retry_cache_bytes,
            )),
            cache_retention: defaults::retention(timestamp_window_secs),
        };
        let allowed_clients = self.allowed_clients.map(|list| {
            if list.is_empty() {
                problems.push(
                    "server.allowed_clients: empty list would refuse everyone; remove the key to allow any"
                        .to_owned(),
                );
            }
            addresses("server.allowed_clients", &list, problems)
        });
        let status = match (self.status_path, self.ping_path) {
            (None, None) => {
                if self.status_allowed.is_some() {
                    problems.push(
                        "server.status_allowed: only goes with status_path or ping_path".to_owned(),
                    );
                }
                None
            }
            (status_path, ping_path) => {
                for (key, path) in [("status_path", &status_path), ("ping_path", &ping_path)] {
                    if let Some(p) = path {
                        if !p.starts_with('/') || p.contains(char::is_whitespace) {
                            problems.push(format!(
                                "server.{key}: {p:?} is not a path (like \"/wechat-status\")"
                            ));
                        }
                    }
                }
                if status_path.is_some() && status_path == ping_path {
                    problems.push("server.ping_path: the same as status_path".to_owned());
                }
                let allowed = self
                    .status_allowed
                    .unwrap_or_else(|| vec!["127.0.0.1".into(), "::1".into()]);
                Some(StatusConfig {
                    status_path,
                    ping_path,
                    allowed: addresses("server.status_allowed", &allowed, problems),
                })
            }
        };
        if self.group.is_some() && self.user.is_none() {
            problems.push("server.group: only goes with server.user".to_owned());
        }
        ServerConfig {
            socket_owner: self.socket_owner,
            socket_group: self.socket_group,
            user: self.user,
            group: self.group,
            listen,
            socket_mode,
            listen_backlog: u32::try_from(listen_backlog).unwrap_or(u32::MAX),
            limits,
            engine,
            timestamp_window_secs,
            allowed_clients,
            status,
        }
    }
}

/// Parse IP addresses, each problem naming `key`.
fn addresses(key: &str, list: &[String], problems: &mut Vec<String>) -> Vec<std::net::IpAddr> {
    list.iter()
        .filter_map(|a| match a.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip.to_canonical()),
            Err(_) => {
                problems.push(format!("{key}: {a:?} is not an IPv4 or IPv6 address"));
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_is_consistent_and_fits_its_type() {
        for b in defaults::SERVER_NUMBERS {
            assert!(b.min <= b.default && b.default <= b.max, "{b:?}");
            assert!(u32::try_from(b.max).is_ok(), "{b:?}");
        }
        // Durations built from the largest values do not overflow an Instant.
        let far = tokio::time::Instant::now()
            + Duration::from_secs(defaults::IDLE_TIMEOUT_SECS.max)
            + Duration::from_millis(defaults::MAX_PROGRAM_TIMEOUT_MS);
        assert!(far > tokio::time::Instant::now());
    }
}
