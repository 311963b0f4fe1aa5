//! The SQLite store: one database file shared by every process on the machine (CGI
//! requests, mod_fcgid's processes, several `serve` instances).
//!
//! Claims, answers and query bindings are rows with their expiry in Unix milliseconds
//! (processes share no clock but the wall clock). Every statement runs on the store's
//! own thread, never on the thread that serves requests; the requests in flight share
//! one transaction and one commit. The database is in WAL mode
//! with a busy timeout, so readers never wait for the one writer; expired rows are
//! purged in the background. Waiting for an answer another process is deciding polls
//! the row every [`POLL`].
//!
//! When the database cannot be used (disk full, locked past the busy timeout), requests
//! are still answered: a claim is won locally, nothing is stored, and a WARN says so at
//! most once a minute.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{BodyDigest, Claim};
use crate::core::Answer;

/// How often a waiting request looks for an answer stored by another process.
pub const POLL: Duration = Duration::from_millis(10);
/// How long a statement waits for another process's write to finish.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
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
/// At most one "store unavailable" warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The schema's version, kept in the file's `user_version`.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS answers (
        key TEXT PRIMARY KEY,
        lease_until INTEGER,      -- Unix ms while being decided, NULL once answered
        answer BLOB,              -- Answer::encode, once answered
        expires INTEGER NOT NULL  -- Unix ms
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS bindings (
        query TEXT PRIMARY KEY,
        digest BLOB NOT NULL,
        expires INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS kv (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL,      -- bytes, or an integer for counters
        expires INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS lists (
        list TEXT NOT NULL,
        seq INTEGER NOT NULL,
        item TEXT NOT NULL,
        expires INTEGER NOT NULL,
        PRIMARY KEY (list, seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS answers_expires ON answers (expires);
    CREATE INDEX IF NOT EXISTS bindings_expires ON bindings (expires);
";

/// The SQLite store. Cloning shares the connection's thread.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    /// Dropped with the last clone: the checkpointer thread, if started, then ends.
    _alive: Arc<mpsc::SyncSender<()>>,
    lives: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    path: PathBuf,
    retention: Duration,
    warned: Arc<Mutex<Option<std::time::Instant>>>,
}

impl SqliteStore {
    /// Open (or create, with mode 0600) the database at `path`. Blocking: call at
    /// start-up. `retention`: how long answers and bindings are kept.
    pub fn open(path: &Path, retention: Duration) -> anyhow::Result<SqliteStore> {
        use std::os::unix::fs::OpenOptionsExt;
        // Create the file ourselves so that it never exists with a wider mode; SQLite
        // gives its -wal and -shm files the database's permissions.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
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
            retention,
            warned: Arc::default(),
        })
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// See [`super::Store::claim`].
    pub async fn claim(&self, key: &str, lease: Duration) -> Claim {
        let key = key.to_owned();
        let (retention, lease) = (ms(self.retention), ms(lease));
        let found = self
            .run(move |conn| first_step(conn, &key, None, lease, retention))
            .await;
        match found {
            Some(found) => found.into_claim(),
            None => Claim::Won,
        }
    }

    /// See [`super::Store::open_message`]: the binding and the first step in one
    /// transaction.
    pub async fn open_message(
        &self,
        signed_query: &str,
        body: &BodyDigest,
        key: &str,
        first: super::First<'_>,
    ) -> super::Opened {
        use super::{First, Opened};
        let query = signed_query.to_owned();
        let digest = body.to_vec();
        let key = key.to_owned();
        let retention = ms(self.retention);
        let (known, lease) = match first {
            First::Known(answer) => (Some(answer.encode()), 0),
            First::Claim(lease) => (None, ms(lease)),
        };
        let is_known = known.is_some();
        let found = self
            .run(move |conn| {
                let now = unix_ms();
                // A new query (the usual case) is one statement; a binding that
                // expired is replaced.
                let bound = conn
                    .prepare_cached(
                        "INSERT INTO bindings (query, digest, expires) VALUES (?1, ?2, ?3)
                         ON CONFLICT (query) DO UPDATE SET digest = excluded.digest,
                           expires = excluded.expires
                         WHERE bindings.expires <= ?4",
                    )?
                    .execute(params![query, digest, now + retention, now])?;
                if bound == 0 {
                    let earlier: Vec<u8> = conn
                        .prepare_cached("SELECT digest FROM bindings WHERE query = ?1")?
                        .query_row(params![query], |r| r.get(0))?;
                    if earlier != digest {
                        return Ok(None);
                    }
                }
                let outcome = first_step(conn, &key, known.as_deref(), lease, retention)?;
                Ok(Some(outcome))
            })
            .await;
        match found {
            Some(None) => Opened::QueryReused,
            Some(Some(Found::Won)) if is_known => Opened::Stored,
            Some(Some(found)) => Opened::Claim(found.into_claim()),
            // The store is unusable: decide here, without it.
            None if is_known => Opened::Stored,
            None => Opened::Claim(Claim::Won),
        }
    }

    /// See [`super::Store::finish`].
    pub async fn finish(&self, key: &str, answer: &Answer) {
        let key = key.to_owned();
        let bytes = answer.encode();
        let retention = ms(self.retention);
        self.run(move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO answers (key, lease_until, answer, expires)
                 VALUES (?1, NULL, ?2, ?3)",
            )?
            .execute(params![key, bytes, unix_ms() + retention])?;
            Ok(())
        })
        .await;
    }

    /// See [`super::Store::wait`]: polls until the row is answered, gone, or `until`.
    pub async fn wait(&self, key: &str, until: Instant) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep_until((now + POLL).min(until)).await;
            let key = key.to_owned();
            let pending = self
                .run(move |conn| {
                    let lease: Option<Option<i64>> = conn
                        .prepare_cached("SELECT lease_until FROM answers WHERE key = ?1")?
                        .query_row(params![key], |r| r.get(0))
                        .optional()?;
                    // Still being decided, and its lease not over.
                    Ok(matches!(lease, Some(Some(until)) if until > unix_ms()))
                })
                .await;
            if pending != Some(true) {
                return;
            }
        }
    }

    /// See [`super::Store::incr`].
    pub async fn incr(&self, name: &str, ttl: Duration) -> Option<u64> {
        let name = name.to_owned();
        let ttl = ms(ttl);
        self.run(move |conn| {
            let now = unix_ms();
            conn.prepare_cached(
                "INSERT INTO kv (name, value, expires) VALUES (?1, 1, ?2)
                 ON CONFLICT (name) DO UPDATE SET
                   value = CASE WHEN expires <= ?3 THEN 1 ELSE value + 1 END,
                   expires = CASE WHEN expires <= ?3 THEN ?2 ELSE expires END
                 RETURNING value",
            )?
            .query_row(params![name, now + ttl, now], |r| r.get::<_, i64>(0))
            .map(|n| n.unsigned_abs())
        })
        .await
    }

    /// See [`super::Store::get`].
    pub async fn get(&self, name: &str) -> Option<Vec<u8>> {
        let name = name.to_owned();
        self.run(move |conn| {
            conn.prepare_cached("SELECT value FROM kv WHERE name = ?1 AND expires > ?2")?
                .query_row(params![name, unix_ms()], |r| r.get::<_, Vec<u8>>(0))
                .optional()
        })
        .await
        .flatten()
    }

    /// See [`super::Store::set`] and [`super::Store::set_new`] (`only_new`): whether
    /// it was set (`None`: the store failed).
    pub async fn set(
        &self,
        name: &str,
        value: &[u8],
        ttl: Duration,
        only_new: bool,
    ) -> Option<bool> {
        let (name, value, ttl) = (name.to_owned(), value.to_vec(), ms(ttl));
        self.run(move |conn| {
            let now = unix_ms();
            if only_new {
                conn.prepare_cached("DELETE FROM kv WHERE name = ?1 AND expires <= ?2")?
                    .execute(params![name, now])?;
                let added = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO kv (name, value, expires) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![name, value, now + ttl])?;
                return Ok(added == 1);
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO kv (name, value, expires) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, value, now + ttl])?;
            Ok(true)
        })
        .await
    }

    /// See [`super::Store::delete`].
    pub async fn delete(&self, name: &str) {
        let name = name.to_owned();
        self.run(move |conn| {
            conn.prepare_cached("DELETE FROM kv WHERE name = ?1")?
                .execute(params![name])?;
            Ok(())
        })
        .await;
    }

    /// See [`super::Store::push`].
    pub async fn push(&self, list: &str, item: &str, ttl: Duration) {
        let (list, item, ttl) = (list.to_owned(), item.to_owned(), ms(ttl));
        self.run(move |conn| {
            let expires = unix_ms() + ttl;
            conn.prepare_cached(
                "INSERT INTO lists (list, seq, item, expires) VALUES
                 (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM lists WHERE list = ?1), ?2, ?3)",
            )?
            .execute(params![list, item, expires])?;
            // The whole list lives `ttl` from its last push, as in Redis.
            conn.prepare_cached("UPDATE lists SET expires = ?2 WHERE list = ?1")?
                .execute(params![list, expires])?;
            Ok(())
        })
        .await;
    }

    /// See [`super::Store::items`].
    pub async fn items(&self, list: &str, max: usize) -> Vec<String> {
        let list = list.to_owned();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT item FROM lists WHERE list = ?1 AND expires > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = statement.query_map(params![list, unix_ms(), max], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
        })
        .await
        .unwrap_or_default()
    }

    /// See [`super::Store::remove`].
    pub async fn remove(&self, list: &str, item: &str) -> bool {
        let (list, item) = (list.to_owned(), item.to_owned());
        self.run(move |conn| {
            let removed = conn
                .prepare_cached(
                    "DELETE FROM lists WHERE list = ?1 AND seq =
                     (SELECT seq FROM lists WHERE list = ?1 AND item = ?2 AND expires > ?3
                      ORDER BY seq LIMIT 1)",
                )?
                .execute(params![list, item, unix_ms()])?;
            Ok(removed == 1)
        })
        .await
        .unwrap_or(false)
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
        let conn = match Connection::open(&self.path) {
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
            self.run(|conn| conn.execute_batch("PRAGMA wal_autocheckpoint = 0"))
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
        let emptied = Connection::open(&self.path).and_then(|conn| {
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
        self.run(delete_expired).await;
    }

    /// Run `f` on the store's thread, in the transaction of the batch it joins; `None`
    /// (and a WARN at most once a minute) when SQLite fails or the batch does not
    /// commit.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Option<T> {
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
        let error = if self.jobs.send(job).is_err() {
            "no transaction: the store is locked past its busy timeout, or gone".to_owned()
        } else {
            match result.await {
                Ok(Ok(value)) => return Some(value),
                Ok(Err(e)) => e,
                Err(_) => {
                    "no transaction: the store is locked past its busy timeout, or gone".to_owned()
                }
            }
        };
        crate::metrics::METRICS.store_error();
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                store = %self.path.display(),
                error = %crate::log::Escaped(&error),
                "state store unavailable: answering without it (a retry may be decided again)"
            );
            *warned = Some(std::time::Instant::now());
        }
        None
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
    for table in ["answers", "bindings", "kv", "lists"] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE expires <= ?1"))?
            .execute(params![now])?;
    }
    Ok(())
}

/// Open the database in WAL mode with the schema in place.
fn prepare(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
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

/// What a claim found, inside the transaction.
enum Found {
    Won,
    Answered(Vec<u8>),
    /// Held for this many more milliseconds.
    Held(i64),
}

impl Found {
    fn into_claim(self) -> Claim {
        match self {
            Found::Answered(bytes) => match Answer::decode(&bytes) {
                Some(answer) => Claim::Answered(answer),
                None => Claim::Won, // unreadable (another version?): decide anew
            },
            Found::Held(left) => Claim::Held {
                until: Instant::now() + Duration::from_millis(left.unsigned_abs()),
            },
            Found::Won => Claim::Won,
        }
    }
}

/// A message's first step inside the caller's transaction: an answer stored before, or
/// a lease still running, wins; otherwise (new, expired, or a lease that ended
/// unanswered) store the `known` answer, or claim it for `lease` ms. A new message (the
/// usual case) is one statement.
fn first_step(
    conn: &Connection,
    key: &str,
    known: Option<&[u8]>,
    lease: i64,
    retention: i64,
) -> rusqlite::Result<Found> {
    let now = unix_ms();
    let (lease_until, expires) = match known {
        Some(_) => (None, now + retention),
        None => (Some(now + lease), now + retention.max(lease)),
    };
    let taken = conn
        .prepare_cached(
            "INSERT INTO answers (key, lease_until, answer, expires) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET lease_until = excluded.lease_until,
               answer = excluded.answer, expires = excluded.expires
             WHERE answers.expires <= ?5
               OR (answers.answer IS NULL AND coalesce(answers.lease_until, 0) <= ?5)",
        )?
        .execute(params![key, lease_until, known, expires, now])?;
    if taken == 1 {
        return Ok(Found::Won);
    }
    let (until, answer): (Option<i64>, Option<Vec<u8>>) = conn
        .prepare_cached("SELECT lease_until, answer FROM answers WHERE key = ?1")?
        .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(match (answer, until) {
        (Some(answer), _) => Found::Answered(answer),
        (None, until) => Found::Held(until.unwrap_or(now) - now),
    })
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
