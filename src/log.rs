//! The log: `tracing` lines on stderr, filtered by `WECHAT_FCGI_LOG` (default `info`).
//!
//! The server writes one INFO line per request. Written one by one, that is one
//! `write(2)` per request, which measured 10-15% of the server's throughput behind
//! nginx (README, Performance). So in `serve`, INFO and lower lines are gathered in a
//! buffer and written together: when the runtime has nothing left to do (its park hook
//! calls [`flush`]), when [`FLUSH_AT`] bytes are waiting, with the next WARN or ERROR
//! line (which is never held back: it flushes the buffer and itself, in order), and at
//! exit. Under load that is one write per batch of requests; when idle, a line appears
//! as soon as its request is answered. Only a SIGKILL can lose lines (at most one
//! batch). CGI mode writes every line at once.

use std::io::Write;
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes that trigger a write even while the runtime is busy.
pub const FLUSH_AT: usize = 8 * 1024;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Install the subscriber. `buffered`: hold INFO lines until [`flush`] (the server);
/// otherwise every line is written as it is logged (CGI, the CLI's other commands).
pub fn init(buffered: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("WECHAT_FCGI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr { buffered })
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

/// Write whatever is buffered to stderr.
pub fn flush() {
    let mut buf = lock();
    write_out(&mut buf);
}

fn lock() -> std::sync::MutexGuard<'static, Vec<u8>> {
    // A panic while holding the lock leaves at worst a partial line: keep logging.
    BUFFER.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // Nowhere to report a failed log write; dropping the batch is all we can do.
        let _ = std::io::stderr().lock().write_all(buf);
        buf.clear();
        if buf.capacity() > 4 * FLUSH_AT {
            buf.shrink_to(FLUSH_AT);
        }
    }
}

struct Stderr {
    buffered: bool,
}

/// One event's writer: appends to the shared buffer, or writes through.
pub struct LineWriter {
    hold: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { hold: false }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter {
            hold: self.buffered && *meta.level() >= Level::INFO,
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = lock();
        buf.extend_from_slice(data);
        if !self.hold || buf.len() >= FLUSH_AT {
            write_out(&mut buf);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
