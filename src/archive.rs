//! The message archive: one JSON line per accepted message, on disk before its reply
//! leaves.
//!
//! A thread of its own owns the file. Requests hand it their record and wait until it
//! is written and synced; records that arrive while one batch is being synced go out
//! together with the next `fdatasync` (group commit), so the cost of durability is
//! shared by every request in flight. SIGHUP and SIGUSR1 reopen the file (logrotate).
//! When the file cannot be written (full disk, permissions), requests are answered all
//! the same; a WARN with the count of lost records says so at most once a minute.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
}

impl ArchiveSpec {
    /// Parse `jsonl:PATH` (a relative path is relative to `base`; pure).
    pub fn parse(text: &str, base: &Path) -> Result<ArchiveSpec, String> {
        match text.strip_prefix("jsonl:") {
            Some("") => Err("jsonl: needs a file path".into()),
            Some(path) => Ok(ArchiveSpec::Jsonl(base.join(path))),
            None => Err(format!("{text:?} is not \"jsonl:PATH\"")),
        }
    }

    /// Check the archive can be written (for `check-config`): the file is opened for
    /// appending, created if needed, and nothing is written.
    pub fn check_writable(&self) -> std::io::Result<()> {
        match self {
            ArchiveSpec::Jsonl(path) => open(path).map(drop),
        }
    }
}

impl std::fmt::Display for ArchiveSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveSpec::Jsonl(path) => write!(f, "jsonl:{}", path.display()),
        }
    }
}

/// The archive's handle: cheap to share.
#[derive(Clone)]
pub struct Archive {
    queue: mpsc::Sender<(Vec<u8>, oneshot::Sender<bool>)>,
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    reopen: AtomicBool,
    written: AtomicU64,
    lost: AtomicU64,
}

impl Archive {
    /// Open the archive (creating the file with mode 0640) and start its writer thread.
    pub fn open(spec: &ArchiveSpec) -> anyhow::Result<Archive> {
        let ArchiveSpec::Jsonl(path) = spec;
        let file = open(path).map_err(|e| anyhow::anyhow!("archive {}: {e}", path.display()))?;
        let shared = Arc::new(Shared {
            path: path.clone(),
            reopen: AtomicBool::new(false),
            written: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        });
        let (queue, inbox) = mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || write_batches(file, inbox, &writer))?;
        Ok(Archive { queue, shared })
    }

    /// Append one record (a JSON object, without the newline) and wait until it is on
    /// disk. `false` when it could not be written (counted and warned about).
    pub async fn record(&self, line: Vec<u8>) -> bool {
        let (done, written) = oneshot::channel();
        if self.queue.send((line, done)).is_err() {
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        written.await.unwrap_or(false)
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
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// The writer thread: everything queued goes out in one write and one `fdatasync`, then
/// every request in the batch hears whether its record made it.
fn write_batches(
    mut file: File,
    inbox: mpsc::Receiver<(Vec<u8>, oneshot::Sender<bool>)>,
    shared: &Shared,
) {
    let mut warned: Option<Instant> = None;
    let mut batch = Vec::new();
    let mut waiting = Vec::new();
    while let Ok(first) = inbox.recv() {
        let mut next = Some(first);
        while let Some((line, done)) = next {
            batch.extend_from_slice(&line);
            batch.push(b'\n');
            waiting.push(done);
            next = inbox.try_recv().ok();
        }
        if shared.reopen.swap(false, Ordering::Relaxed) {
            match open(&shared.path) {
                Ok(reopened) => file = reopened,
                Err(e) => tracing::warn!(
                    archive = %shared.path.display(),
                    error = %e,
                    "archive not reopened; writing to the file already open"
                ),
            }
        }
        let result = file.write_all(&batch).and_then(|()| file.sync_data());
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
        if batch.capacity() > 1 << 20 {
            batch.shrink_to(64 * 1024);
        }
    }
}
