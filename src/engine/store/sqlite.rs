//! The SQLite store: one database file shared by every process on the machine (CGI
//! requests, mod_fcgid's processes, several `serve` instances).
//!
//! One table, `state (key, value, expires)`: the protocol's records, the query
//! bindings and the access token, each value sealed ([`super::seal`]), each row with
//! its expiry in Unix milliseconds (processes on one machine share the wall clock,
//! which is this store's clock). A write is a compare-and-swap against the version
//! read (a hash of the stored bytes), inside a transaction. Every statement runs on
//! the store's own thread, never on the thread that serves requests; the requests in
//! flight share one transaction and one commit (`BEGIN IMMEDIATE`, so processes take
//! turns). The database is in WAL mode with a busy timeout, so readers never wait for
//! the one writer; expired rows are purged in the background. Waiting for another
//! process's write polls the row every [`POLL`].
//!
//! When the database cannot be used (disk full, locked past the busy timeout), each
//! operation fails with a [`StoreError`] and the protocol goes on in the process's
//! memory.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::seal::{rev_of, Sealer};
use crate::protocol::{Loaded, Ms, Opened, Record, Rev, StoreError, Swapped};

/// How often a waiting request looks for another process's write.
pub const POLL: Duration = Duration::from_millis(10);
/// How long a statement waits for another process's write to finish.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed operation (the file locked past the busy timeout, the disk full),
/// how long no operation is tried: requests go on without the store at once instead
/// of each waiting out the busy timeout.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// How often expired rows are deleted.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How often a serving process's checkpointer moves the write-ahead log into the
/// database (see [`SqliteStore::checkpoint_in_background`]).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// A process that serves one request (CGI) empties the write-ahead log when it has
/// grown past this many bytes (about a dozen messages): see
/// [`SqliteStore::end_of_process`]. Measured against 256 KiB and 1 MiB: a longer log
/// costs every process more to read, a shorter one more checkpoints (BENCHMARKS.md).
pub const CGI_WAL_LIMIT: u64 = 512 * 1024;

/// The schema's version, kept in the file's `user_version`. Version 3 replaced the
/// tables of versions 1 and 2 (answers, bindings, kv, lists) with `state`; what they
/// held (minutes of retries) is dropped on the upgrade.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
    DROP TABLE IF EXISTS answers;
    DROP TABLE IF EXISTS bindings;
    DROP TABLE IF EXISTS kv;
    DROP TABLE IF EXISTS lists;
    CREATE TABLE IF NOT EXISTS state (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,      -- sealed (see engine/store/seal.rs)
        expires INTEGER NOT NULL  -- Unix ms
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS state_expires ON state (expires);
";

/// The SQLite store. Cloning shares the connection's thread.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    /// Dropped with the last clone: the checkpointer thread, if started, then ends.
    _alive: Arc<mpsc::SyncSender<()>>,
    lives: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    path: PathBuf,
    /// No operation is tried before this (after a failure).
    down_until: Arc<Mutex<Option<Instant>>>,
}

/// A row's value and whether it is live, read inside a transaction.
fn read_row(conn: &Connection, key: &str, now: i64) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM state WHERE key = ?1 AND expires > ?2")?
        .query_row(params![key, now], |r| r.get(0))
        .optional()
}

/// Write a row (replacing whatever is there).
fn write_row(conn: &Connection, key: &str, value: &[u8], expires: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO state (key, value, expires) VALUES (?1, ?2, ?3)")?
        .execute(params![key, value, expires])?;
    Ok(())
}

/// Insert a row unless a live one is there: whether it was inserted.
fn insert_row(
    conn: &Connection,
    key: &str,
    value: &[u8],
    expires: i64,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO state (key, value, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires
             WHERE state.expires <= ?4",
        )?
        .execute(params![key, value, expires, now])?;
    Ok(n == 1)
}

/// What a store job found, before the caller opens the sealed bytes.
enum Raw {
    Reused,
    Created(Rev, i64),
    Found(Vec<u8>, i64, bool),
}

impl SqliteStore {
    /// Open (or create, with mode 0600) the database at `path`. Blocking: call at
    /// start-up. A file writable by other users is refused (anyone could change the
    /// answers it holds).
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        // Create the file ourselves so that it never exists with a wider mode (SQLite
        // gives its -wal and -shm files the database's permissions), never through a
        // symbolic link, and refuse one every user can write.
        crate::files::open_append(path, 0o600)
            .map_err(|e| anyhow::anyhow!("state store {}: {e}", path.display()))?;
        // Several processes starting at once on a new file contend for the switch to
        // WAL and the schema, which the busy timeout does not cover: try again.
        let started = std::time::Instant::now();
        let conn = loop {
            match prepare(path) {
                Ok(conn) => break conn,
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && started.elapsed() < BUSY_TIMEOUT * 2 =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => anyhow::bail!("state store {}: {e}", path.display()),
            }
        };
        let (jobs, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-store".into())
            .spawn(move || run_batches(conn, inbox))?;
        let (alive, lives) = mpsc::sync_channel(1);
        Ok(SqliteStore {
            jobs,
            _alive: Arc::new(alive),
            lives: Arc::new(Mutex::new(Some(lives))),
            path: path.to_path_buf(),
            down_until: Arc::default(),
        })
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// See [`crate::protocol::Action::Open`]: the binding and the record in one
    /// transaction.
    pub async fn open_record(
        &self,
        seal: &Sealer,
        op: super::Opening<'_>,
        retention: Ms,
    ) -> Result<Opened, StoreError> {
        let super::Opening {
            binding,
            digest,
            key,
            record,
            ttl,
        } = op;
        let bound_name = seal.name(binding);
        let bound_value = seal.binding(digest).to_vec();
        let name = key.map(|k| seal.name(k));
        let sealed = name
            .as_ref()
            .map(|n| seal.seal(n, &record.encode(), &mut crate::engine::ThreadRng));
        let (ttl, retention) = (ms(ttl), ms(retention));
        let raw = self
            .run(move |conn| {
                let now = unix_ms();
                let fresh = if insert_row(conn, &bound_name, &bound_value, now + retention, now)? {
                    true
                } else {
                    match read_row(conn, &bound_name, now)? {
                        Some(first) if first == bound_value => false,
                        _ => return Ok(Raw::Reused),
                    }
                };
                let (Some(name), Some(sealed)) = (name, sealed) else {
                    return Ok(Raw::Created(Rev(0), now));
                };
                if insert_row(conn, &name, &sealed, now + ttl, now)? {
                    return Ok(Raw::Created(rev_of(&sealed), now));
                }
                let found = read_row(conn, &name, now)?.unwrap_or_default();
                Ok(Raw::Found(found, now, fresh))
            })
            .await?;
        Ok(match raw {
            Raw::Reused => Opened::Reused,
            Raw::Created(rev, now) => Opened::Created {
                rev,
                now: now.unsigned_abs(),
            },
            Raw::Found(bytes, now, fresh) => Opened::Found {
                loaded: super::unseal(
                    seal,
                    key.unwrap_or_default(),
                    Some(bytes),
                    now.unsigned_abs(),
                ),
                fresh,
            },
        })
    }

    /// See [`crate::protocol::Action::Load`].
    pub async fn load(&self, seal: &Sealer, key: &str) -> Result<Loaded, StoreError> {
        let name = seal.name(key);
        let (bytes, now) = self
            .run(move |conn| {
                let now = unix_ms();
                Ok((read_row(conn, &name, now)?, now))
            })
            .await?;
        Ok(super::unseal(seal, key, bytes, now.unsigned_abs()))
    }

    /// See [`crate::protocol::Action::Swap`].
    pub async fn swap(
        &self,
        seal: &Sealer,
        key: &str,
        expected: Option<Rev>,
        record: &Record,
        ttl: Ms,
    ) -> Result<Swapped, StoreError> {
        let name = seal.name(key);
        let sealed = seal.seal(&name, &record.encode(), &mut crate::engine::ThreadRng);
        let ttl = ms(ttl);
        let outcome = self
            .run(move |conn| {
                let now = unix_ms();
                let current = read_row(conn, &name, now)?;
                if current.as_deref().map(rev_of) != expected {
                    return Ok(Err((current, now)));
                }
                write_row(conn, &name, &sealed, now + ttl)?;
                Ok(Ok((rev_of(&sealed), now)))
            })
            .await?;
        Ok(match outcome {
            Ok((rev, now)) => Swapped::Done {
                rev,
                now: now.unsigned_abs(),
            },
            Err((current, now)) => {
                Swapped::Changed(super::unseal(seal, key, current, now.unsigned_abs()))
            }
        })
    }

    /// The version `key` holds (`None`: nothing).
    async fn rev(&self, name: String) -> Result<Option<Rev>, StoreError> {
        self.run(move |conn| Ok(read_row(conn, &name, unix_ms())?.as_deref().map(rev_of)))
            .await
    }

    /// See [`crate::protocol::Action::Wait`]: polls until the row no longer holds
    /// `seen`, or `until`.
    pub async fn wait(&self, seal: &Sealer, key: &str, seen: Option<Rev>, until: Instant) {
        let name = seal.name(key);
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep_until((now + POLL).min(until)).await;
            match self.rev(name.clone()).await {
                Ok(rev) if rev == seen => {}
                _ => return,
            }
        }
    }

    /// A small value (the access token): opened, if it is there and opens.
    pub async fn get(&self, seal: &Sealer, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = seal.name(key);
        let bytes = self
            .run({
                let name = name.clone();
                move |conn| read_row(conn, &name, unix_ms())
            })
            .await?;
        Ok(bytes.and_then(|b| seal.open(&name, &b)))
    }

    /// Set a small value for `ttl`; with `only_new`, only when none is there: whether
    /// it was set.
    pub async fn set(
        &self,
        seal: &Sealer,
        key: &str,
        value: &[u8],
        ttl: Ms,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        let name = seal.name(key);
        let sealed = seal.seal(&name, value, &mut crate::engine::ThreadRng);
        let ttl = ms(ttl);
        self.run(move |conn| {
            let now = unix_ms();
            if only_new {
                return insert_row(conn, &name, &sealed, now + ttl, now);
            }
            write_row(conn, &name, &sealed, now + ttl)?;
            Ok(true)
        })
        .await
    }

    /// Forget a small value.
    pub async fn delete(&self, seal: &Sealer, key: &str) -> Result<(), StoreError> {
        let name = seal.name(key);
        self.run(move |conn| {
            conn.prepare_cached("DELETE FROM state WHERE key = ?1")?
                .execute(params![name])?;
            Ok(())
        })
        .await
    }

    /// Checkpoint on a thread of its own, with its own connection, every
    /// [`CHECKPOINT_EVERY`], and stop the store's thread from checkpointing in its
    /// commits: requests no longer wait for a checkpoint, and the work runs beside them
    /// (SQLite's passive checkpoint waits for no reader or writer). The thread ends
    /// with the store. Called once by a serving process; a CGI process empties the log
    /// at its end instead ([`SqliteStore::end_of_process`]).
    pub async fn checkpoint_in_background(&self) {
        let Some(lives) = self.lives.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let conn = match open_nofollow(&self.path) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(store = %self.path.display(), error = %e, "state store: no checkpointer thread; commits checkpoint");
                return;
            }
        };
        let started = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    lives.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "state store: checkpoint failed");
                    }
                }
            });
        if started.is_ok() {
            let _ = self
                .run(|conn| conn.execute_batch("PRAGMA wal_autocheckpoint = 0"))
                .await;
        }
    }

    /// Before a process that served one request (CGI) exits: when the write-ahead log
    /// has grown past [`CGI_WAL_LIMIT`], delete expired rows (no CGI process lives to
    /// purge them every minute), move the log into the database and empty it
    /// (`wal_checkpoint(TRUNCATE)`). Blocking; call after the response is out.
    ///
    /// Why: a process that opens the file while no other process has it open rebuilds
    /// the log's index by reading the whole log, and cannot know which part of it was
    /// checkpointed before. Left to grow, the log is read (and checkpointed again) by
    /// every later request; emptied every few requests, it stays a few pages long.
    pub fn end_of_process(&self) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let long = std::fs::metadata(&wal).is_ok_and(|m| m.len() > CGI_WAL_LIMIT);
        if !long {
            return;
        }
        let emptied = open_nofollow(&self.path).and_then(|conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            delete_expired(&conn)?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        });
        if let Err(e) = emptied {
            tracing::debug!(store = %self.path.display(), error = %e, "state store: log not emptied");
        }
    }

    /// Delete expired rows.
    pub async fn purge(&self) {
        let _ = self.run(delete_expired).await;
    }

    /// Run `f` on the store's thread, in the transaction of the batch it joins; an
    /// error when SQLite fails or the batch does not commit.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let down = *self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_some_and(|until| Instant::now() < until) {
            return Err(StoreError(format!(
                "{}: unusable a moment ago (tried again after a second)",
                self.path.display()
            )));
        }
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let outcome = f(conn);
            Box::new(move |committed: Result<(), String>| {
                let _ = done.send(match (outcome, committed) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Err(e), _) => Err(e.to_string()),
                    (Ok(_), Err(e)) => Err(e),
                });
            })
        });
        let gone = "no transaction: the store is locked past its busy timeout, or gone";
        let error = if self.jobs.send(job).is_err() {
            gone.to_owned()
        } else {
            match result.await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => e,
                Err(_) => gone.to_owned(),
            }
        };
        crate::metrics::METRICS.store_error();
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + BACKOFF);
        Err(StoreError(format!("{}: {error}", self.path.display())))
    }
}

/// Work for the store's thread: runs in the batch's transaction and returns what to do
/// once the batch committed (or did not).
type Job = Box<dyn FnOnce(&Connection) -> Finish + Send>;
type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Most jobs in one transaction.
const MAX_BATCH: usize = 512;

/// The store's thread: every job queued runs in one `BEGIN IMMEDIATE` .. `COMMIT`, so
/// the requests in flight share one commit (group commit), and the thread that serves
/// requests never waits for SQLite.
fn run_batches(conn: Connection, inbox: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = inbox.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let began = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string());
        if let Err(e) = &began {
            // Nothing runs outside a transaction: every job hears why.
            for job in batch.drain(..) {
                drop(job);
            }
            tracing::debug!(error = %e, "state store: BEGIN failed");
            continue;
        }
        let finishes: Vec<Finish> = batch.drain(..).map(|job| job(&conn)).collect();
        let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for finish in finishes {
            finish(committed.clone());
        }
    }
}

/// Delete every expired row (in the caller's transaction, if any).
fn delete_expired(conn: &Connection) -> rusqlite::Result<()> {
    let now = unix_ms();
    conn.prepare_cached("DELETE FROM state WHERE expires <= ?1")?
        .execute(params![now])?;
    Ok(())
}

/// Open the database in WAL mode with the schema in place.
/// Open the database without following a symbolic link.
fn open_nofollow(path: &Path) -> rusqlite::Result<Connection> {
    let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
    Connection::open_with_flags(path, flags)
}

fn prepare(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open_nofollow(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    // NORMAL: a commit does not wait for the disk (the WAL is synced at checkpoints), and
    // a crash or power loss cannot corrupt the file. A 16 MiB page cache keeps the
    // recent answers' pages in memory. A serving process checkpoints on a thread of its
    // own, a CGI process at its end (SqliteStore::end_of_process); SQLite's automatic
    // checkpoint (1 000 pages) stays on until the checkpointer thread starts.
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384;")?;
    // The schema once per file (a CGI request opens the file every time).
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < SCHEMA_VERSION {
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    }
    Ok(conn)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Ms) -> i64 {
    i64::try_from(d).unwrap_or(i64::MAX / 4)
}
