//! The message archive: one record (a JSON object) per accepted message, stored before
//! its reply leaves.
//!
//! A JSON-lines file or a SQLite table: a thread of its own owns it. Requests hand it
//! their record and wait until it is written and synced; records that arrive while one
//! batch is being synced go out with the next sync (group commit: one `fdatasync`, or
//! one transaction, per batch), so the cost of durability is shared by every request in
//! flight. SIGHUP and SIGUSR1 reopen the file (logrotate). A Redis stream: `XADD` with
//! `MAXLEN`, acknowledged before the reply leaves. When the archive cannot be written
//! (full disk, permissions, Redis down), requests are answered all the same; a WARN
//! with the count of lost records says so at most once a minute.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// At most one "archive not written" warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where the archive goes (`[archive] to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveSpec {
    /// `jsonl:PATH`: JSON lines appended to a file.
    Jsonl(PathBuf),
    /// `sqlite:PATH`: rows of a `messages` table in a SQLite file.
    Sqlite(PathBuf),
    /// `redis`: a stream in the `[state]` Redis, capped at `max_len` entries.
    Redis {
        /// The `[state]` Redis URL.
        url: String,
        /// Its `[state] ca_file` (`rediss://`).
        ca_file: Option<PathBuf>,
        /// The stream's key (`[state] key_prefix` + `messages`).
        key: String,
        /// `XADD ... MAXLEN ~`.
        max_len: u64,
    },
}

/// The Redis stream's default cap.
pub const REDIS_MAX_LEN: u64 = 1_000_000;

impl ArchiveSpec {
    /// Parse `jsonl:PATH`, `sqlite:PATH` (a relative path is relative to `base`) or
    /// `redis` (the `[state]` store's Redis: `state` gives its URL and key prefix); pure.
    pub fn parse(
        text: &str,
        base: &Path,
        state: Option<(&str, &str, Option<&Path>)>,
    ) -> Result<ArchiveSpec, String> {
        if text == "redis" {
            return match state {
                Some((url, prefix, ca_file)) => Ok(ArchiveSpec::Redis {
                    url: url.to_owned(),
                    ca_file: ca_file.map(Path::to_path_buf),
                    key: format!("{prefix}messages"),
                    max_len: REDIS_MAX_LEN,
                }),
                None => Err(
                    "\"redis\" archives to the [state] Redis: set [state] store = \"redis://...\""
                        .into(),
                ),
            };
        }
        let file = |path: &str| -> Result<PathBuf, String> {
            if path.is_empty() {
                return Err("needs a file path".into());
            }
            Ok(base.join(path))
        };
        if let Some(path) = text.strip_prefix("jsonl:") {
            return file(path).map(ArchiveSpec::Jsonl);
        }
        if let Some(path) = text.strip_prefix("sqlite:") {
            return file(path).map(ArchiveSpec::Sqlite);
        }
        Err(format!(
            "{text:?} is not \"jsonl:PATH\", \"sqlite:PATH\" or \"redis\""
        ))
    }

    /// Check the archive can be written (for `check-config`): the file is opened for
    /// appending, created if needed, and nothing is written.
    pub fn check_writable(&self) -> std::io::Result<()> {
        match self {
            ArchiveSpec::Jsonl(path) => open(path).map(drop),
            ArchiveSpec::Sqlite(path) => open_table(path).map(drop).map_err(std::io::Error::other),
            // Reached over the network: checked when serving starts.
            ArchiveSpec::Redis { .. } => Ok(()),
        }
    }
}

impl std::fmt::Display for ArchiveSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveSpec::Jsonl(path) => write!(f, "jsonl:{}", path.display()),
            ArchiveSpec::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            ArchiveSpec::Redis { key, max_len, .. } => {
                write!(f, "redis stream {key} (MAXLEN ~{max_len})")
            }
        }
    }
}

/// The archive's handle: cheap to share.
#[derive(Clone)]
pub struct Archive {
    sink: SinkHandle,
    shared: Arc<Shared>,
}

#[derive(Clone)]
enum SinkHandle {
    /// A file or a table, written by the archive's thread.
    Thread(mpsc::Sender<(Vec<u8>, oneshot::Sender<bool>)>),
    /// A Redis stream, written from the request.
    Redis {
        conn: redis::aio::ConnectionManager,
        key: Arc<str>,
        max_len: u64,
        warned: Arc<std::sync::Mutex<Option<Instant>>>,
    },
}

struct Shared {
    path: PathBuf,
    reopen: AtomicBool,
    written: AtomicU64,
    lost: AtomicU64,
}

impl Archive {
    /// Open the archive (creating a file with mode 0640) and start its writer thread.
    /// A Redis stream connects lazily (call inside the runtime).
    pub fn open(spec: &ArchiveSpec) -> anyhow::Result<Archive> {
        let (sink, path) = match spec {
            ArchiveSpec::Jsonl(path) => {
                let file =
                    open(path).map_err(|e| anyhow::anyhow!("archive {}: {e}", path.display()))?;
                (Sink::Jsonl(file), path.clone())
            }
            ArchiveSpec::Sqlite(path) => {
                let conn = open_table(path)
                    .map_err(|e| anyhow::anyhow!("archive {}: {e}", path.display()))?;
                (Sink::Sqlite(conn), path.clone())
            }
            ArchiveSpec::Redis {
                url,
                ca_file,
                key,
                max_len,
            } => {
                let shown = crate::config::redact_url(url);
                let client = crate::engine::store::redis::client(url, ca_file.as_deref())
                    .map_err(|e| anyhow::anyhow!("archive {shown}: {e}"))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_millis(500)))
                    .set_number_of_retries(1);
                let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|_| anyhow::anyhow!("archive {shown}: cannot make a connection"))?;
                let shared = Arc::new(Shared {
                    path: PathBuf::from(key),
                    reopen: AtomicBool::new(false),
                    written: AtomicU64::new(0),
                    lost: AtomicU64::new(0),
                });
                let sink = SinkHandle::Redis {
                    conn,
                    key: Arc::from(key.as_str()),
                    max_len: *max_len,
                    warned: Arc::default(),
                };
                return Ok(Archive { sink, shared });
            }
        };
        let shared = Arc::new(Shared {
            path,
            reopen: AtomicBool::new(false),
            written: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        });
        let (queue, inbox) = mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || write_batches(sink, inbox, &writer))?;
        Ok(Archive {
            sink: SinkHandle::Thread(queue),
            shared,
        })
    }

    /// Store one record (a JSON object) and wait until it is durable. `false` when it
    /// could not be stored (counted and warned about).
    pub async fn record(&self, line: Vec<u8>) -> bool {
        match &self.sink {
            SinkHandle::Thread(queue) => {
                let (done, written) = oneshot::channel();
                if queue.send((line, done)).is_err() {
                    self.shared.lost.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                written.await.unwrap_or(false)
            }
            SinkHandle::Redis {
                conn,
                key,
                max_len,
                warned,
            } => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&**key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(*max_len)
                    .arg("*")
                    .arg("record")
                    .arg(line);
                let mut conn = conn.clone();
                let added: Result<redis::RedisResult<String>, _> =
                    tokio::time::timeout(Duration::from_millis(500), cmd.query_async(&mut conn))
                        .await;
                match added {
                    Ok(Ok(_)) => {
                        self.shared.written.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    failed => {
                        let lost = self.shared.lost.fetch_add(1, Ordering::Relaxed) + 1;
                        let mut warned = warned.lock().unwrap_or_else(|p| p.into_inner());
                        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                            let error = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => "no answer within 500 ms".to_owned(),
                            };
                            tracing::warn!(
                                stream = %key,
                                error = %crate::log::Escaped(&error),
                                lost,
                                "archive records not written (count since start); requests are still answered"
                            );
                            *warned = Some(Instant::now());
                        }
                        false
                    }
                }
            }
        }
    }

    /// Reopen the file before the next write (after logrotate moved it away).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }

    /// Records on disk since start.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Records that could not be written since start.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    crate::files::open_append(path, 0o640)
}

/// Open (or create, mode 0640) a SQLite archive with its table.
fn open_table(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    crate::files::open_append(path, 0o640).map_err(|e| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(e.to_string()),
        )
    })?;
    let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(2))?;
    // FULL: a committed record is on disk, as the archive promises.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS messages (
             id INTEGER PRIMARY KEY,
             received_ms INTEGER,
             record TEXT NOT NULL   -- the same JSON object as a jsonl line
         );",
    )?;
    Ok(conn)
}

/// Where the archive's thread writes.
enum Sink {
    Jsonl(File),
    Sqlite(rusqlite::Connection),
}

impl Sink {
    /// Write a batch of records durably: one write and one `fdatasync`, or one
    /// transaction.
    fn write(&mut self, records: &[Vec<u8>]) -> Result<(), String> {
        match self {
            Sink::Jsonl(file) => {
                let mut batch = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
                for r in records {
                    batch.extend_from_slice(r);
                    batch.push(b'\n');
                }
                file.write_all(&batch)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| e.to_string())
            }
            Sink::Sqlite(conn) => {
                let tx = conn.transaction().map_err(|e| e.to_string())?;
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO messages (received_ms, record) VALUES (json_extract(?1, '$.received_ms'), ?1)",
                        )
                        .map_err(|e| e.to_string())?;
                    for r in records {
                        let text = String::from_utf8_lossy(r);
                        insert.execute([text.as_ref()]).map_err(|e| e.to_string())?;
                    }
                }
                tx.commit().map_err(|e| e.to_string())
            }
        }
    }

    /// Open the file again (after logrotate moved it); a table has nothing to reopen.
    fn reopen(&mut self, path: &Path) {
        if let Sink::Jsonl(file) = self {
            match open(path) {
                Ok(reopened) => *file = reopened,
                Err(e) => tracing::warn!(
                    archive = %path.display(),
                    error = %e,
                    "archive not reopened; writing to the file already open"
                ),
            }
        }
    }
}

/// The writer thread: everything queued goes out in one durable write, then every
/// request in the batch hears whether its record made it.
fn write_batches(
    mut sink: Sink,
    inbox: mpsc::Receiver<(Vec<u8>, oneshot::Sender<bool>)>,
    shared: &Shared,
) {
    let mut warned: Option<Instant> = None;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut waiting = Vec::new();
    while let Ok(first) = inbox.recv() {
        let mut next = Some(first);
        while let Some((line, done)) = next {
            batch.push(line);
            waiting.push(done);
            next = inbox.try_recv().ok();
        }
        if shared.reopen.swap(false, Ordering::Relaxed) {
            sink.reopen(&shared.path);
        }
        let result = sink.write(&batch);
        let ok = result.is_ok();
        let count = waiting.len() as u64;
        if ok {
            shared.written.fetch_add(count, Ordering::Relaxed);
        } else {
            let lost = shared.lost.fetch_add(count, Ordering::Relaxed) + count;
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    archive = %shared.path.display(),
                    error = %result.err().map(|e| e.to_string()).unwrap_or_default(),
                    lost,
                    "archive records not written (count since start); requests are still answered"
                );
                warned = Some(Instant::now());
            }
        }
        for done in waiting.drain(..) {
            let _ = done.send(ok);
        }
        batch.clear();
    }
}
