//! Every default and every allowed range of the config's numbers, in one place. The
//! README's config table is checked against this list by a test.

use std::time::Duration;

/// A numeric `[server]` key: its default and the range it must fall in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The key under `[server]`.
    pub key: &'static str,
    /// Used when the key is absent.
    pub default: u64,
    /// Smallest value accepted.
    pub min: u64,
    /// Largest value accepted.
    pub max: u64,
}

impl Bound {
    /// The value given (or the default), or a problem naming the key and its range.
    pub fn check(&self, value: Option<u64>, problems: &mut Vec<String>) -> u64 {
        match value {
            None => self.default,
            Some(v) if (self.min..=self.max).contains(&v) => v,
            Some(v) => {
                problems.push(format!(
                    "server.{}: {v} is out of range: must be {} to {}",
                    self.key, self.min, self.max
                ));
                self.default
            }
        }
    }
}

/// `max_body_bytes`: larger bodies get 413 without being read.
pub const MAX_BODY_BYTES: Bound = Bound {
    key: "max_body_bytes",
    default: 256 * 1024,
    min: 1,
    max: 64 * 1024 * 1024,
};
/// `max_params_bytes`: larger FastCGI params get 431.
pub const MAX_PARAMS_BYTES: Bound = Bound {
    key: "max_params_bytes",
    default: 64 * 1024,
    min: 1,
    max: 16 * 1024 * 1024,
};
/// `max_connections`: connections served at once.
pub const MAX_CONNECTIONS: Bound = Bound {
    key: "max_connections",
    default: 1024,
    min: 1,
    max: 1 << 20,
};
/// `listen_backlog`: the listen backlog of a socket we bind.
pub const LISTEN_BACKLOG: Bound = Bound {
    key: "listen_backlog",
    default: 1024,
    min: 1,
    max: 65_535,
};
/// `idle_timeout_secs`: an idle keep-alive connection is closed after this.
pub const IDLE_TIMEOUT_SECS: Bound = Bound {
    key: "idle_timeout_secs",
    default: 60,
    min: 1,
    max: 86_400,
};
/// `read_timeout_secs`: a request must arrive within this after its first byte.
pub const READ_TIMEOUT_SECS: Bound = Bound {
    key: "read_timeout_secs",
    default: 10,
    min: 1,
    max: 3_600,
};
/// `write_timeout_secs`: a connection whose output does not drain within this is closed.
pub const WRITE_TIMEOUT_SECS: Bound = Bound {
    key: "write_timeout_secs",
    default: 10,
    min: 1,
    max: 3_600,
};
/// `drain_timeout_secs`: how long in-flight requests get after SIGTERM.
pub const DRAIN_TIMEOUT_SECS: Bound = Bound {
    key: "drain_timeout_secs",
    default: 10,
    min: 0,
    max: 3_600,
};
/// `reply_budget_ms`: the answer goes out within this (WeChat gives up at 5000).
pub const REPLY_BUDGET: Bound = Bound {
    key: "reply_budget_ms",
    default: REPLY_BUDGET_MS,
    min: 100,
    max: 4_900,
};
/// `max_programs`: reply programs running at once.
pub const MAX_PROGRAMS_BOUND: Bound = Bound {
    key: "max_programs",
    default: MAX_PROGRAMS as u64,
    min: 1,
    max: 1_024,
};
/// `max_programs_per_sender`: reply programs one follower may have running at once.
pub const MAX_PROGRAMS_PER_SENDER: Bound = Bound {
    key: "max_programs_per_sender",
    default: 2,
    min: 1,
    max: 1_024,
};
/// `retry_cache_entries`: answers the in-memory store keeps.
pub const RETRY_CACHE: Bound = Bound {
    key: "retry_cache_entries",
    default: RETRY_CACHE_ENTRIES as u64,
    min: 2,
    max: 1 << 24,
};
/// `retry_cache_bytes`: the most the in-memory store's answers may take, in bytes.
pub const RETRY_CACHE_BYTES_BOUND: Bound = Bound {
    key: "retry_cache_bytes",
    default: RETRY_CACHE_BYTES as u64,
    min: 1024 * 1024,
    max: 2 * 1024 * 1024 * 1024,
};
/// `timestamp_window_secs`: how far a signed timestamp may be from our clock (0: off).
pub const TIMESTAMP_WINDOW: Bound = Bound {
    key: "timestamp_window_secs",
    default: TIMESTAMP_WINDOW_SECS,
    min: 0,
    max: 86_400,
};

/// Every numeric `[server]` key, in the README's order.
pub const SERVER_NUMBERS: &[Bound] = &[
    LISTEN_BACKLOG,
    MAX_BODY_BYTES,
    MAX_PARAMS_BYTES,
    MAX_CONNECTIONS,
    IDLE_TIMEOUT_SECS,
    READ_TIMEOUT_SECS,
    WRITE_TIMEOUT_SECS,
    DRAIN_TIMEOUT_SECS,
    REPLY_BUDGET,
    MAX_PROGRAMS_BOUND,
    MAX_PROGRAMS_PER_SENDER,
    RETRY_CACHE,
    RETRY_CACHE_BYTES_BOUND,
    TIMESTAMP_WINDOW,
];

/// The default reply budget in milliseconds.
pub const REPLY_BUDGET_MS: u64 = 4_500;
/// The default number of reply programs running at once.
pub const MAX_PROGRAMS: usize = 8;
/// The default retry cache size: two generations of 28 672, the most a 32 768-slot hash
/// table holds (7/8 full); one more entry would double the table.
pub const RETRY_CACHE_ENTRIES: usize = 57_344;
/// The default bound on the bytes the retry cache's answers take: replies rendered from
/// a message (`{content}`) or a program's output can be large.
pub const RETRY_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// The default timestamp window in seconds.
pub const TIMESTAMP_WINDOW_SECS: u64 = 300;
/// The default permission bits of a Unix socket we create.
pub const SOCKET_MODE: u32 = 0o660;

/// `run.timeout_ms` when not given.
pub const PROGRAM_TIMEOUT_MS: u64 = 3_000;
/// Largest `run.timeout_ms`: ten minutes (with `[late]` on, a slow answer is kept for
/// a pick-up or pushed; WeChat's own three tries span 15 s).
pub const MAX_PROGRAM_TIMEOUT_MS: u64 = 600_000;

/// `[late] mode` when not given.
pub const LATE_MODE: &str = "hold";
/// `[late] pending` when not given.
pub const LATE_PENDING: &str = "Still working on it. Send 1 to get the answer.";
/// `[late] pickup` when not given.
pub const LATE_PICKUP: &[&str] = &["1"];
/// `[late] still_running` when not given.
pub const LATE_STILL_RUNNING: &str = "Not ready yet, try again in a minute.";
/// `[late] pickup_ttl_secs`: default and range (one second to a week).
pub const PICKUP_TTL_SECS: (u64, u64, u64) = (86_400, 1, 604_800);
/// `[account] api_base` when not given.
pub const API_BASE: &str = "https://api.weixin.qq.com";

/// Largest config file read: a config is a few KiB; this stops `/dev/zero` and friends.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// How long answers are kept for retries and replays: the whole timestamp window (a
/// replay inside it is answered from the store), and at least WeChat's three tries,
/// plus a margin for clock steps.
pub fn retention(timestamp_window_secs: u64) -> Duration {
    Duration::from_secs(timestamp_window_secs.max(300) + 15)
}
