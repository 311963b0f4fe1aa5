//! The log: `tracing` lines on stderr, filtered by `WECHAT_FCGI_LOG` (default `info`).
//!
//! The server writes one INFO line per request. Written one by one, that is one
//! `write(2)` per request, which measured 10-15% of the server's throughput behind
//! nginx (BENCHMARKS.md). So in `serve`, lines go into a bounded buffer that a thread of
//! its own writes to stderr: INFO lines [`FLUSH_AFTER`] after the first line of a batch
//! or when [`FLUSH_AT`] bytes are waiting, WARN and ERROR lines at once (after what is
//! buffered, in order), and everything at exit. Only a SIGKILL can lose lines.
//!
//! Logging never blocks the server: when stderr is not read (a full pipe, a stopped
//! terminal), only the writer thread waits; the buffer fills to [`MAX_BUFFERED`], and
//! lines beyond that are dropped and counted. When the writer gets through again it
//! first writes how many were dropped ([`dropped`] has the total). CGI mode and the
//! other commands write every line at once.
//!
//! The INFO line for each answered request is written by [`request_line`], in the
//! same format, without `tracing`'s formatter: that formatter cost 3.4 µs per request
//! (measured: CPU per request behind nginx at `info` vs `warn`), more than the core's
//! whole answer. Refusals (WARN) and everything else go through `tracing`.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

use crate::core::{Outcome, Response};
use Value::{Num, Str};

/// Buffered bytes that trigger a write at once.
pub const FLUSH_AT: usize = 8 * 1024;
/// The longest an INFO line waits in the buffer.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// The most the buffer holds while stderr is not taking lines; more are dropped.
pub const MAX_BUFFERED: usize = 1024 * 1024;
/// The longest the process waits at exit for its last lines to be written.
pub const EXIT_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// What the writer thread and the loggers share.
struct Shared {
    /// Lines waiting to be written.
    buf: Vec<u8>,
    /// Write without waiting for the batch to fill (a WARN line, exit).
    urgent: bool,
    /// The writer thread is writing (the buffer it took is not on stderr yet).
    writing: bool,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    buf: Vec::new(),
    urgent: false,
    writing: false,
});
/// Wakes the writer thread (new lines, urgent) and [`flush`] (written).
static WAKE: Condvar = Condvar::new();
static BUFFERED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Dropped lines not yet reported in the log itself.
static UNREPORTED: AtomicU64 = AtomicU64::new(0);

/// Install the subscriber. `buffered`: lines go through the writer thread (the server);
/// otherwise every line is written as it is logged (CGI, the CLI's other commands).
/// `default`: the level when `WECHAT_FCGI_LOG` is not set (`info` for the server; `warn`
/// in CGI mode, where every line lands in the web server's error log).
pub fn init(buffered: bool, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("WECHAT_FCGI_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    if buffered
        && std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(writer)
            .is_ok()
    {
        BUFFERED.store(true, Ordering::Relaxed);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .event_format(LineFormat)
        .try_init();
}

/// Where lines go instead of stderr (`[log] file`), and the path to reopen.
static FILE: Mutex<Option<(std::path::PathBuf, std::fs::File)>> = Mutex::new(None);
/// `[log] format = "json"`: one JSON object per line.
static JSON: AtomicBool = AtomicBool::new(false);

/// Apply `[log]`: write to `file` (created with mode 0640, appended to) instead of
/// stderr, and in `json` or text format. Lines already logged stay where they went.
pub fn configure(file: Option<&std::path::Path>, json: bool) -> std::io::Result<()> {
    // Lines logged before this (config warnings) go out where and as they were made.
    flush();
    if let Some(path) = file {
        let opened = open_log(path)?;
        *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some((path.to_path_buf(), opened));
    }
    JSON.store(json, Ordering::Relaxed);
    Ok(())
}

/// Reopen `[log] file` (logrotate moved it away): SIGUSR1. A failure keeps the old
/// file open and says why.
pub fn reopen() -> std::io::Result<()> {
    let mut file = FILE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, current)) = file.as_mut() {
        *current = open_log(path)?;
    }
    Ok(())
}

/// Whether lines go to a file (`[log] file`).
pub fn to_file() -> bool {
    FILE.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    crate::files::open_append(path, 0o640)
}

/// Write finished lines to the log file, or to stderr.
fn write_out(data: &[u8]) {
    let mut file = FILE.lock().unwrap_or_else(|e| e.into_inner());
    // Nowhere to report a failed log write; dropping the lines is all we can do.
    match file.as_mut() {
        Some((_, f)) => {
            let _ = f.write_all(data);
        }
        None => {
            let _ = std::io::stderr().lock().write_all(data);
        }
    }
}

/// The line format: text (`<time>  INFO message k=v ..`, as `tracing`'s default
/// formatter writes it) or one JSON object (`{"time":..,"level":..,"message":..,k:v}`).
struct LineFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        let mut line = Vec::with_capacity(160);
        if JSON.load(Ordering::Relaxed) {
            let mut object = serde_json::Map::new();
            object.insert("time".into(), timestamp_string().into());
            object.insert("level".into(), level.as_str().into());
            object.insert("message".into(), fields.message.into());
            for (key, value) in fields.pairs {
                object.insert(key.into(), value);
            }
            line = serde_json::to_vec(&object).unwrap_or_default();
        } else {
            timestamp(&mut line);
            let _ = write!(line, " {:>5} {}", level.as_str(), fields.message);
            for (key, value) in fields.pairs {
                match value {
                    serde_json::Value::String(text) => {
                        let _ = write!(line, " {key}={text}");
                    }
                    other => {
                        let _ = write!(line, " {key}={other}");
                    }
                }
            }
        }
        line.push(b'\n');
        writer.write_str(&String::from_utf8_lossy(&line))
    }
}

/// An event's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, serde_json::Value)>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.pairs.push((field.name(), text.into()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            // Quoted in text, as `tracing`'s formatter does; a plain string in JSON.
            let shown = if JSON.load(Ordering::Relaxed) {
                value.to_owned()
            } else {
                format!("{value:?}")
            };
            self.pairs.push((field.name(), shown.into()));
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.pairs.push((field.name(), value.into()));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.pairs.push((field.name(), value.into()));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.pairs.push((field.name(), value.into()));
    }
}

/// Lines dropped since start because stderr did not take them.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Write whatever is buffered, waiting at most [`EXIT_FLUSH_WAIT`] (a stalled stderr
/// must not keep the process from exiting).
pub fn flush() {
    if !BUFFERED.load(Ordering::Relaxed) {
        return;
    }
    let deadline = Instant::now() + EXIT_FLUSH_WAIT;
    let mut shared = lock();
    shared.urgent = true;
    WAKE.notify_all();
    while !shared.buf.is_empty() || shared.writing {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        shared = WAKE
            .wait_timeout(shared, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Shared> {
    // A panic while holding the lock leaves at worst a partial line: keep logging.
    SHARED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer thread: takes batches from the buffer and writes them to stderr, which
/// may block here and nowhere else.
fn writer() {
    let mut out = Vec::new();
    loop {
        {
            let mut shared = lock();
            shared.writing = false;
            WAKE.notify_all();
            while shared.buf.is_empty() {
                shared = WAKE.wait(shared).unwrap_or_else(|e| e.into_inner());
            }
            // A batch started: give it FLUSH_AFTER to fill, unless urgent or full.
            let deadline = Instant::now() + FLUSH_AFTER;
            while !shared.urgent && shared.buf.len() < FLUSH_AT {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                shared = WAKE
                    .wait_timeout(shared, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            shared.urgent = false;
            shared.writing = true;
            std::mem::swap(&mut shared.buf, &mut out);
        }
        let lost = UNREPORTED.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let mut note = Vec::with_capacity(120);
            if JSON.load(Ordering::Relaxed) {
                let object = serde_json::json!({
                    "time": timestamp_string(),
                    "level": "WARN",
                    "message": "log lines dropped: the log did not take them",
                    "dropped": lost,
                });
                note = serde_json::to_vec(&object).unwrap_or_default();
            } else {
                timestamp(&mut note);
                note.extend_from_slice(
                    b"  WARN log lines dropped: the log did not take them dropped=",
                );
                note.extend_from_slice(itoa::Buffer::new().format(lost).as_bytes());
            }
            note.push(b'\n');
            write_out(&note);
        }
        write_out(&out);
        out.clear();
        if out.capacity() > 4 * FLUSH_AT {
            out.shrink_to(FLUSH_AT);
        }
    }
}

/// The subscriber's writer.
struct Stderr;

/// One event's writer: hands the line to the writer thread, or writes it through.
pub struct LineWriter {
    /// Through the writer thread ([`BUFFERED`]).
    buffered: bool,
    /// A WARN or ERROR line: written without waiting for the batch.
    urgent: bool,
    /// A line `tracing` formatted: its values may hold control characters.
    sanitize: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buffered: BUFFERED.load(Ordering::Relaxed),
            urgent: true,
            sanitize: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter {
            buffered: BUFFERED.load(Ordering::Relaxed),
            urgent: *meta.level() < Level::INFO,
            sanitize: true,
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.sanitize {
            if let Some(clean) = one_line(data) {
                self.sanitize = false;
                self.write_all(&clean)?;
                self.sanitize = true;
                return Ok(data.len());
            }
        }
        if !self.buffered {
            write_out(data);
            return Ok(data.len());
        }
        let mut shared = lock();
        if shared.buf.len() + data.len() > MAX_BUFFERED {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            UNREPORTED.fetch_add(1, Ordering::Relaxed);
            return Ok(data.len());
        }
        let first = shared.buf.is_empty();
        shared.buf.extend_from_slice(data);
        if self.urgent || shared.buf.len() >= FLUSH_AT {
            shared.urgent = true;
            WAKE.notify_all();
        } else if first {
            WAKE.notify_all();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A formatted event as exactly one line, when it is not one already: every control
/// character (C0, DEL, C1: a newline that would start a forged line, ESC that a
/// terminal would obey) becomes `?`, except the final newline. Values that came from
/// outside (a request, a program, a config file) reach the log through here whatever
/// level they are logged at. `None`: nothing to replace.
fn one_line(data: &[u8]) -> Option<Vec<u8>> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let suspect = body.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == 0x7f) | (b == 0xC2)
    });
    if !suspect {
        return None;
    }
    let text = String::from_utf8_lossy(body);
    if !text.contains(char::is_control) {
        return None;
    }
    let mut clean: Vec<u8> = Escaped(&text).to_string().into_bytes();
    clean.push(b'\n');
    Some(clean)
}

/// Write one INFO line for an answered request, as `tracing` would print
/// `tracing::info!(fields.., "request")`: `<time>  INFO request k=v k=v ...`. `fields`
/// gives the pairs; values are written as they are, control characters (C0, DEL, C1)
/// replaced by `?`.
/// Nothing is written when the filter (`WECHAT_FCGI_LOG`) leaves INFO out.
pub fn request_line(fields: &[(&str, Value<'_>)]) {
    if !tracing::enabled!(Level::INFO) {
        return;
    }
    let mut line = Vec::with_capacity(160);
    if JSON.load(Ordering::Relaxed) {
        let mut object = serde_json::Map::new();
        object.insert("time".into(), timestamp_string().into());
        object.insert("level".into(), "INFO".into());
        object.insert("message".into(), "request".into());
        for (key, value) in fields {
            let value: serde_json::Value = match value {
                Value::Str(v) => (*v).into(),
                Value::Num(n) => (*n).into(),
            };
            object.insert((*key).into(), value);
        }
        line = serde_json::to_vec(&object).unwrap_or_default();
        line.push(b'\n');
        let mut out = LineWriter {
            buffered: BUFFERED.load(Ordering::Relaxed),
            urgent: false,
            sanitize: false,
        };
        let _ = out.write_all(&line);
        return;
    }
    timestamp(&mut line);
    line.extend_from_slice(b"  INFO request");
    for (key, value) in fields {
        line.push(b' ');
        line.extend_from_slice(key.as_bytes());
        line.push(b'=');
        match value {
            Value::Str(v) => {
                let suspect = v
                    .bytes()
                    .fold(false, |any, b| any | (b < 0x20) | (b == 0x7f) | (b == 0xC2));
                if suspect {
                    line.extend_from_slice(Escaped(v).to_string().as_bytes());
                } else {
                    line.extend_from_slice(v.as_bytes());
                }
            }
            Value::Num(n) => line.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
        }
    }
    line.push(b'\n');
    // Values were escaped above: no second pass.
    let mut out = LineWriter {
        buffered: BUFFERED.load(Ordering::Relaxed),
        urgent: false,
        sanitize: false,
    };
    let _ = out.write_all(&line);
}

/// Log one answered (or refused) request: an INFO line with method, outcome, status,
/// message type, rule, reply type, `via` and latency; a refusal is a WARN line that
/// also names its cause.
pub fn request(method: &str, response: &Response, latency: Duration) {
    let latency_us = latency.as_micros() as u64;
    match &response.outcome {
        Outcome::Rejected(cause) => tracing::warn!(
            method = %Escaped(method),
            outcome = %response.outcome.label(),
            status = response.status,
            latency_us,
            cause = %Escaped(&cause.to_string()),
            "request refused"
        ),
        Outcome::Reply {
            msg_type,
            rule,
            reply_type,
            via,
        } => request_line(&[
            ("method", Str(method)),
            ("outcome", Str("reply")),
            ("status", Num(response.status.into())),
            ("msg_type", Str(msg_type)),
            ("rule", Str(rule)),
            ("reply_type", Str(reply_type)),
            ("via", Str(via.label())),
            ("latency_us", Num(latency_us)),
        ]),
        Outcome::Success { msg_type, via } => request_line(&[
            ("method", Str(method)),
            ("outcome", Str("success")),
            ("status", Num(response.status.into())),
            ("msg_type", Str(msg_type)),
            ("via", Str(via.label())),
            ("latency_us", Num(latency_us)),
        ]),
        other => request_line(&[
            ("method", Str(method)),
            ("outcome", Str(other.label())),
            ("status", Num(response.status.into())),
            ("latency_us", Num(latency_us)),
        ]),
    }
}

/// A value that came from outside (a request, a program, a file), written into a log
/// line with control characters replaced by `?`, so it can neither forge a line nor
/// reach the terminal as an escape sequence.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(|c: char| c.is_control()) {
            f.write_str(&rest[..i])?;
            f.write_str("?")?;
            let c = rest[i..].chars().next().map_or(1, char::len_utf8);
            rest = &rest[i + c..];
        }
        f.write_str(rest)
    }
}

/// A field value of [`request_line`].
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Text (control characters replaced).
    Str(&'a str),
    /// A number.
    Num(u64),
}

thread_local! {
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// [`timestamp`] as a string.
fn timestamp_string() -> String {
    let mut out = Vec::with_capacity(27);
    timestamp(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `2026-11-25T21:47:09.411359Z` (UTC, microseconds), as `tracing`'s formatter writes it.
fn timestamp(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, civil(secs));
        }
        out.extend_from_slice(&cached.1);
    });
    let micros = now.subsec_micros();
    out.push(b'.');
    for div in [100_000, 10_000, 1_000, 100, 10, 1] {
        out.push(b'0' + (micros / div % 10) as u8);
    }
    out.push(b'Z');
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS` (UTC), by the days-to-civil algorithm
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_table() {
        let rows: &[(&str, Option<&str>)] = &[
            ("plain line\n", None),
            ("plain 你好 line\n", None),
            ("a\nforged INFO line\n", Some("a?forged INFO line\n")),
            ("esc \u{1b}[31mred\n", Some("esc ?[31mred\n")),
            ("csi \u{9b}31m, del \u{7f}\n", Some("csi ?31m, del ?\n")),
            ("tab\tand cr\r\n", Some("tab?and cr?\n")),
            ("\u{a0}nbsp is fine\n", None),
        ];
        for (line, want) in rows {
            let got = one_line(line.as_bytes()).map(|v| String::from_utf8(v).unwrap());
            assert_eq!(got.as_deref(), *want, "{line:?}");
        }
    }

    #[test]
    fn civil_table() {
        // Values from `date -u -d @N +%Y-%m-%dT%H:%M:%S`.
        let rows: &[(u64, &str)] = &[
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_700_000_000, "2023-11-14T22:13:20"),
            (1_709_164_799, "2024-02-28T23:59:59"),
            (1_709_251_199, "2024-02-29T23:59:59"),
            (1_798_761_599, "2026-12-31T23:59:59"),
            (4_102_444_800, "2100-01-01T00:00:00"),
        ];
        for &(secs, want) in rows {
            assert_eq!(std::str::from_utf8(&civil(secs)).unwrap(), want, "{secs}");
        }
    }

    #[test]
    fn timestamp_has_the_tracing_shape() {
        let mut out = Vec::new();
        timestamp(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), "2026-11-25T21:47:09.411359Z".len(), "{text}");
        assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
    }
}
