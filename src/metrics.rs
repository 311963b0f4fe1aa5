//! Counters for the status page (`[server] status_path`): requests by status, outcome
//! and message type, answers by how they came about, a latency histogram, programs,
//! pushes, the store, the archive, the log, connections, reloads. One set per process
//! (each mod_fcgid or `serve` process reports its own).
//!
//! Counting is off unless a status path is configured, and costs a few relaxed atomic
//! adds and one uncontended map update per request when on (BENCHMARKS.md measures it).
//! Rendered as JSON (with PHP-FPM's status fields where they apply) or in Prometheus'
//! text exposition format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::{Outcome, Response, Via};

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Distinct (account, status, outcome, message type) series kept; new ones beyond are
/// counted under account and message type `other`.
const MAX_SERIES: usize = 512;

/// Request counts: by account, then (status, outcome), then message type. Nested so
/// that counting a series seen before allocates nothing.
type Series = HashMap<String, HashMap<(u16, &'static str), HashMap<String, u64>>>;

/// The process's counters.
pub struct Metrics {
    enabled: AtomicBool,
    start_unix: AtomicU64,
    requests: Mutex<Option<Series>>,
    /// Series counted so far (bounded by [`MAX_SERIES`]).
    series: AtomicU64,
    answers: [AtomicU64; Via::ALL.len()],
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    slow_requests: AtomicU64,
    slow_after_us: AtomicU64,
    program_ok: AtomicU64,
    program_failed: AtomicU64,
    program_timeout: AtomicU64,
    push_ok: AtomicU64,
    push_failed: AtomicU64,
    store_errors: AtomicU64,
    accepted: AtomicU64,
    open: AtomicI64,
    max_open: AtomicI64,
    in_flight: AtomicI64,
    max_connections: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // array initialisers only
const ZERO: AtomicU64 = AtomicU64::new(0);

/// The one set of counters.
pub static METRICS: Metrics = Metrics {
    enabled: AtomicBool::new(false),
    start_unix: AtomicU64::new(0),
    requests: Mutex::new(None),
    series: ZERO,
    answers: [ZERO; Via::ALL.len()],
    latency: [ZERO; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: ZERO,
    slow_requests: ZERO,
    slow_after_us: ZERO,
    program_ok: ZERO,
    program_failed: ZERO,
    program_timeout: ZERO,
    push_ok: ZERO,
    push_failed: ZERO,
    store_errors: ZERO,
    accepted: ZERO,
    open: AtomicI64::new(0),
    max_open: AtomicI64::new(0),
    in_flight: AtomicI64::new(0),
    max_connections: ZERO,
    reloads: ZERO,
    reload_failures: ZERO,
};

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How a program or hook ended, for [`Metrics::program`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramEnd {
    /// It answered.
    Answered,
    /// It failed (exit status, bad output, HTTP error).
    Failed,
    /// It ran out of time.
    TimedOut,
}

impl Metrics {
    /// Start counting (a status path is configured): `slow` is what counts as a slow
    /// request (the reply budget), `max_connections` the connection cap.
    pub fn enable(&self, slow: Duration, max_connections: usize) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.start_unix.store(now, Ordering::Relaxed);
        self.slow_after_us
            .store(slow.as_micros() as u64, Ordering::Relaxed);
        self.max_connections
            .store(max_connections as u64, Ordering::Relaxed);
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Whether counting is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Count one answered (or refused) request for `account` (`-`: none).
    pub fn request(&self, account: &str, response: &Response, latency: Duration) {
        if !self.enabled() {
            return;
        }
        let us = latency.as_micros() as u64;
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        add(&self.latency[bucket]);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        if us > self.slow_after_us.load(Ordering::Relaxed) {
            add(&self.slow_requests);
        }
        if let Outcome::Reply { via, .. } | Outcome::Success { via, .. } = &response.outcome {
            if let Some(i) = Via::ALL.iter().position(|v| v == via) {
                add(&self.answers[i]);
            }
        }
        let msg_type = response.outcome.msg_type();
        let outcome = response.outcome.label();
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let map = requests.get_or_insert_with(HashMap::new);
        if let Some(n) = map
            .get_mut(account)
            .and_then(|m| m.get_mut(&(response.status, outcome)))
            .and_then(|m| m.get_mut(msg_type))
        {
            *n += 1;
            return;
        }
        // A new series; past the bound, new ones count as one `other` series.
        let (account, msg_type) = if self.series.load(Ordering::Relaxed) < MAX_SERIES as u64 {
            (account, msg_type)
        } else {
            ("other", "other")
        };
        let n = map
            .entry(account.to_owned())
            .or_default()
            .entry((response.status, outcome))
            .or_default()
            .entry(msg_type.to_owned())
            .or_insert_with(|| {
                self.series.fetch_add(1, Ordering::Relaxed);
                0
            });
        *n += 1;
    }

    /// Count a program's or hook's end.
    pub fn program(&self, end: ProgramEnd) {
        add(match end {
            ProgramEnd::Answered => &self.program_ok,
            ProgramEnd::Failed => &self.program_failed,
            ProgramEnd::TimedOut => &self.program_timeout,
        });
    }

    /// Count a customer-service push.
    pub fn push(&self, ok: bool) {
        add(if ok { &self.push_ok } else { &self.push_failed });
    }

    /// Count a failed store operation.
    pub fn store_error(&self) {
        add(&self.store_errors);
    }

    /// Count a config reload (`ok`) or a reload refused.
    pub fn reload(&self, ok: bool) {
        add(if ok {
            &self.reloads
        } else {
            &self.reload_failures
        });
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        add(&self.accepted);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_open.fetch_max(open, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn connection_closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request is being answered (`true`) or was answered (`false`).
    pub fn in_flight(&self, started: bool) {
        self.in_flight
            .fetch_add(if started { 1 } else { -1 }, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| {
                let mut list = Vec::new();
                for (account, by_status) in m {
                    for ((status, outcome), by_type) in by_status {
                        for (msg_type, n) in by_type {
                            list.push((account.clone(), *status, *outcome, msg_type.clone(), *n));
                        }
                    }
                }
                list.sort();
                list
            })
            .unwrap_or_default();
        let open = self.open.load(Ordering::Relaxed).max(0) as u64;
        let in_flight = self.in_flight.load(Ordering::Relaxed).max(0) as u64;
        Snapshot {
            start_unix: get(&self.start_unix),
            requests,
            answers: Via::ALL
                .iter()
                .zip(&self.answers)
                .map(|(v, a)| (v.label(), get(a)))
                .collect(),
            latency: self.latency.iter().map(get).collect(),
            latency_sum_us: get(&self.latency_sum_us),
            slow_requests: get(&self.slow_requests),
            programs: [
                ("answered", get(&self.program_ok)),
                ("failed", get(&self.program_failed)),
                ("timeout", get(&self.program_timeout)),
            ],
            pushes: [
                ("ok", get(&self.push_ok)),
                ("failed", get(&self.push_failed)),
            ],
            store_errors: get(&self.store_errors),
            accepted: get(&self.accepted),
            open,
            idle: open.saturating_sub(in_flight),
            max_open: self.max_open.load(Ordering::Relaxed).max(0) as u64,
            max_connections: get(&self.max_connections),
            reloads: get(&self.reloads),
            reload_failures: get(&self.reload_failures),
        }
    }
}

/// What the status page shows besides the counters here.
#[derive(Debug, Clone, Copy, Default)]
pub struct Others {
    /// Archive records written and lost.
    pub archive: Option<(u64, u64)>,
    /// Log lines dropped.
    pub log_dropped: u64,
}

struct Snapshot {
    start_unix: u64,
    requests: Vec<(String, u16, &'static str, String, u64)>,
    answers: Vec<(&'static str, u64)>,
    latency: Vec<u64>,
    latency_sum_us: u64,
    slow_requests: u64,
    programs: [(&'static str, u64); 3],
    pushes: [(&'static str, u64); 2],
    store_errors: u64,
    accepted: u64,
    open: u64,
    idle: u64,
    max_open: u64,
    max_connections: u64,
    reloads: u64,
    reload_failures: u64,
}

/// The status as JSON: PHP-FPM's field names where they apply, then the rest.
pub fn json(others: Others, now_unix: u64) -> Vec<u8> {
    let s = METRICS.snapshot();
    let total: u64 = s.requests.iter().map(|r| r.4).sum();
    let requests: Vec<_> = s
        .requests
        .iter()
        .map(|(account, status, outcome, msg_type, n)| {
            serde_json::json!({"account": account, "status": status, "outcome": outcome, "msg_type": msg_type, "count": n})
        })
        .collect();
    let answers: serde_json::Map<String, serde_json::Value> = s
        .answers
        .iter()
        .map(|(v, n)| ((*v).to_owned(), (*n).into()))
        .collect();
    let value = serde_json::json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "start time": s.start_unix,
        "start since": now_unix.saturating_sub(s.start_unix),
        "accepted conn": s.accepted,
        "active processes": s.open.saturating_sub(s.idle),
        "idle connections": s.idle,
        "active connections": s.open,
        "max active connections": s.max_open,
        "max connections": s.max_connections,
        "slow requests": s.slow_requests,
        "requests total": total,
        "requests": requests,
        "answers": answers,
        "latency_seconds_sum": s.latency_sum_us as f64 / 1e6,
        "programs": {"answered": s.programs[0].1, "failed": s.programs[1].1, "timeout": s.programs[2].1},
        "pushes": {"ok": s.pushes[0].1, "failed": s.pushes[1].1},
        "store errors": s.store_errors,
        "archive": others.archive.map(|(w, l)| serde_json::json!({"written": w, "lost": l})),
        "log lines dropped": others.log_dropped,
        "config reloads": s.reloads,
        "config reload failures": s.reload_failures,
    });
    let mut out = serde_json::to_vec_pretty(&value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its HELP and TYPE lines, then each sample as `labels` (without
/// braces; empty for none) and value.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP wechat_fcgi_{name} {help}");
    let _ = writeln!(out, "# TYPE wechat_fcgi_{name} {kind}");
    for (labels, value) in samples {
        let _ = match labels.as_str() {
            "" => writeln!(out, "wechat_fcgi_{name} {value}"),
            l => writeln!(out, "wechat_fcgi_{name}{{{l}}} {value}"),
        };
    }
}

/// A sample without labels.
fn one(value: impl std::fmt::Display) -> Vec<(String, String)> {
    vec![(String::new(), value.to_string())]
}

/// Samples labelled `key="label"`.
fn by<'a, V: std::fmt::Display + 'a>(
    key: &str,
    pairs: impl IntoIterator<Item = (&'a str, V)>,
) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(l, v)| (format!("{key}=\"{}\"", label(l)), v.to_string()))
        .collect()
}

/// The status in Prometheus' text exposition format (version 0.0.4).
pub fn prometheus(others: Others) -> Vec<u8> {
    let s = METRICS.snapshot();
    let mut out = String::with_capacity(4096);
    let info = format!(
        "version=\"{}\",pid=\"{}\"",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    family(
        &mut out,
        "info",
        "gauge",
        "This process: its version and pid.",
        &[(info, "1".into())],
    );
    family(
        &mut out,
        "start_time_seconds",
        "gauge",
        "When this process started, in Unix seconds.",
        &one(s.start_unix),
    );
    let requests: Vec<_> = s
        .requests
        .iter()
        .map(|(account, status, outcome, msg_type, n)| {
            (
                format!(
                    "account=\"{}\",status=\"{status}\",outcome=\"{}\",msg_type=\"{}\"",
                    label(account),
                    label(outcome),
                    label(msg_type)
                ),
                n.to_string(),
            )
        })
        .collect();
    family(
        &mut out,
        "requests_total",
        "counter",
        "Requests answered, by HTTP status, outcome and message type.",
        &requests,
    );
    family(
        &mut out,
        "answers_total",
        "counter",
        "Messages answered, by how the answer came about (rule, program, retry from the cache, late modes, ...).",
        &by("via", s.answers.iter().map(|(v, n)| (*v, n))),
    );
    // The histogram's samples carry their own suffixes.
    let _ = writeln!(
        out,
        "# HELP wechat_fcgi_request_duration_seconds Time from a request's first byte to its answer."
    );
    let _ = writeln!(out, "# TYPE wechat_fcgi_request_duration_seconds histogram");
    let mut cumulative = 0;
    for (i, n) in s.latency.iter().enumerate() {
        cumulative += n;
        let le = LATENCY_BUCKETS
            .get(i)
            .map_or("+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "wechat_fcgi_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "wechat_fcgi_request_duration_seconds_sum {}",
        s.latency_sum_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "wechat_fcgi_request_duration_seconds_count {cumulative}"
    );
    family(
        &mut out,
        "slow_requests_total",
        "counter",
        "Requests answered after reply_budget_ms (held for a slow answer, or late).",
        &one(s.slow_requests),
    );
    family(
        &mut out,
        "program_runs_total",
        "counter",
        "Reply programs and hooks run, by how they ended.",
        &by("result", s.programs),
    );
    family(
        &mut out,
        "late_pushes_total",
        "counter",
        "Customer-service pushes of late answers, by result.",
        &by("result", s.pushes),
    );
    family(
        &mut out,
        "store_errors_total",
        "counter",
        "State store operations that failed (answered without the store).",
        &one(s.store_errors),
    );
    if let Some((written, lost)) = others.archive {
        family(
            &mut out,
            "archive_records_total",
            "counter",
            "Archive records, by result.",
            &by("result", [("written", written), ("lost", lost)]),
        );
    }
    family(
        &mut out,
        "log_lines_dropped_total",
        "counter",
        "Log lines dropped because the log did not take them.",
        &one(others.log_dropped),
    );
    family(
        &mut out,
        "connections_accepted_total",
        "counter",
        "FastCGI connections accepted (PHP-FPM: accepted conn).",
        &one(s.accepted),
    );
    family(
        &mut out,
        "connections",
        "gauge",
        "FastCGI connections open now, by state.",
        &by("state", [("active", s.open - s.idle), ("idle", s.idle)]),
    );
    family(
        &mut out,
        "connections_max_seen",
        "gauge",
        "The most connections open at once since start (PHP-FPM: max active processes).",
        &one(s.max_open),
    );
    family(
        &mut out,
        "connections_limit",
        "gauge",
        "server.max_connections.",
        &one(s.max_connections),
    );
    family(
        &mut out,
        "config_reloads_total",
        "counter",
        "Config reloads (SIGHUP), by result.",
        &by("result", [("ok", s.reloads), ("failed", s.reload_failures)]),
    );
    out.into_bytes()
}
