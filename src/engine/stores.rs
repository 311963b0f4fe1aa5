//! The protocol's store actions carried out: this process's memory, and the shared
//! store when there is one; store outages noticed and logged once each.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::store::{MemoryStore, Sealer, Shared};
use crate::protocol::{Digest, Level, Loaded, Ms, Opened, Record, Rev, StoreError, Swapped};

/// The stores the engine runs on, and the local clock the protocol reads.
pub struct Stores {
    /// This process's memory: the only store without a `[state]` one; else where the
    /// protocol goes on while the shared one fails.
    pub local: MemoryStore,
    /// The `[state]` store shared by processes, if any.
    pub shared: Option<Shared>,
    /// Zero on the local clock.
    epoch: Instant,
    /// How long answers and bindings are kept.
    pub retention: Ms,
    outage: Outage,
}

/// Whether the shared store is failing, since when, and how many requests went on
/// without it: logged once when an outage starts and once when it ends.
#[derive(Default)]
struct Outage {
    down: AtomicBool,
    since: Mutex<Option<Instant>>,
    degraded: AtomicU64,
    /// What this process decided in local memory while the shared store failed, to
    /// write there before its next operation there: signed queries it bound (so that
    /// no other process accepts them with another body), answers it gave (so that no
    /// pick-up or push gives them again).
    backlog: Mutex<Vec<Backlog>>,
    /// Whether `backlog` holds anything (read on every shared operation, lock-free).
    any_backlog: AtomicBool,
}

/// One thing decided during an outage (see [`Outage::backlog`]).
enum Backlog {
    Binding(Sealer, String, Digest),
    Given(Sealer, String),
    /// A waiting list to add a message key to (its late mark was written, the list
    /// not), and the list's time to live.
    Listed(Sealer, String, String, Ms),
}

/// Most outage decisions kept for the shared store (the oldest go first).
const BACKLOG: usize = 10_000;

impl Stores {
    /// Stores over `local` and `shared`.
    pub fn new(local: MemoryStore, shared: Option<Shared>, retention: Ms) -> Stores {
        Stores {
            local,
            shared,
            epoch: Instant::now(),
            retention,
            outage: Outage::default(),
        }
    }

    /// The local clock: milliseconds since the engine started (tokio's clock, so tests
    /// pause and advance it).
    pub fn now(&self) -> Ms {
        self.epoch.elapsed().as_millis() as Ms
    }

    /// A local-clock time as an instant.
    pub fn instant(&self, at: Ms) -> Instant {
        self.epoch + Duration::from_millis(at)
    }

    /// The clock of the store the protocol starts on.
    pub fn store_now(&self) -> Ms {
        match &self.shared {
            Some(shared) => shared.now(),
            None => self.now(),
        }
    }

    /// Whether the shared store is failing now.
    pub fn degraded(&self) -> bool {
        self.outage.down.load(Ordering::Relaxed)
    }

    fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) => {
                if self.outage.down.load(Ordering::Relaxed)
                    && self.outage.down.swap(false, Ordering::Relaxed)
                {
                    let since = self
                        .outage
                        .since
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    tracing::info!(
                        after_secs = since.map_or(0, |s| s.elapsed().as_secs()),
                        answered_from_memory = self.outage.degraded.swap(0, Ordering::Relaxed),
                        "state store reachable again: answers are shared again"
                    );
                }
            }
            Err(e) => {
                self.outage.degraded.fetch_add(1, Ordering::Relaxed);
                if !self.outage.down.swap(true, Ordering::Relaxed) {
                    *self.outage.since.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                    tracing::warn!(
                        error = %crate::log::Escaped(&e.0),
                        "state store unreachable: answering from this process's memory until it \
                         is back. Meanwhile an answer decided here is not seen by other processes \
                         (a retry reaching another one is decided again), a program runs at most \
                         once per process, and a signed query reused with another body is refused \
                         only where it was seen"
                    );
                }
            }
        }
        result
    }

    /// See [`crate::protocol::Action::Open`]. Shared: a query this process saw with
    /// another body is refused at once (fails closed, even while the shared store
    /// fails); otherwise the shared store decides, and a binding it accepted is kept
    /// in local memory too. Local, with a shared store (an outage): the binding is
    /// remembered for the shared store.
    #[allow(clippy::too_many_arguments)] // the action's fields, one by one
    pub async fn open(
        &self,
        seal: &Sealer,
        level: Level,
        binding: &str,
        digest: &Digest,
        key: Option<&str>,
        record: &Record,
        ttl: Ms,
    ) -> Result<Opened, StoreError> {
        let now = self.now();
        match (level, &self.shared) {
            (Level::Shared, Some(shared)) => {
                if self.local.bound(binding, digest, now) == Some(false) {
                    return Ok(Opened::Reused);
                }
                self.resync(shared).await;
                let op = super::store::Opening {
                    binding,
                    digest,
                    key,
                    record,
                    ttl,
                };
                let opened = shared.open(seal, op, self.retention).await;
                if matches!(opened, Ok(Opened::Created { .. } | Opened::Found { .. })) {
                    self.local.bind(binding, digest, self.now());
                }
                self.noted(opened)
            }
            (_, shared) => {
                let opened = self.local.open(binding, digest, key, record, ttl, now);
                if shared.is_some() && opened != Opened::Reused {
                    self.remember(Backlog::Binding(seal.clone(), binding.to_owned(), *digest));
                }
                Ok(opened)
            }
        }
    }

    fn remember(&self, item: Backlog) {
        let mut backlog = self
            .outage
            .backlog
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if backlog.len() >= BACKLOG {
            backlog.remove(0);
        }
        backlog.push(item);
        self.outage.any_backlog.store(true, Ordering::Relaxed);
    }

    /// A request marked a message late in the shared store, which failed before the
    /// follower's list was written: it is written once the store is back.
    pub fn list_after_outage(&self, seal: &Sealer, list: &str, key: &str, ttl: Ms) {
        if self.shared.is_some() {
            self.remember(Backlog::Listed(
                seal.clone(),
                list.to_owned(),
                key.to_owned(),
                ttl,
            ));
        }
    }

    /// A degraded request gave the answer of the message `key` from local memory: the
    /// shared store's record is marked given once it is back.
    pub fn given_in_outage(&self, seal: &Sealer, key: &str) {
        if self.shared.is_some() {
            self.remember(Backlog::Given(seal.clone(), key.to_owned()));
        }
    }

    /// Write what was decided during an outage to the shared store: each binding only
    /// where it holds none, each answer given marked so; keep the rest when it still
    /// fails.
    async fn resync(&self, shared: &Shared) {
        if !self.outage.any_backlog.load(Ordering::Relaxed) {
            return;
        }
        let backlog = {
            let mut backlog = self
                .outage
                .backlog
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.outage.any_backlog.store(false, Ordering::Relaxed);
            std::mem::take(&mut *backlog)
        };
        let mut left = Vec::new();
        let mut backlog = backlog.into_iter();
        for item in backlog.by_ref() {
            let done = match &item {
                Backlog::Binding(seal, binding, digest) => {
                    let record = Record::Binding(*digest);
                    let op = super::store::Opening {
                        binding,
                        digest,
                        key: None,
                        record: &record,
                        ttl: self.retention,
                    };
                    shared.open(seal, op, self.retention).await.map(|_| ())
                }
                Backlog::Given(seal, key) => self.mark_given(shared, seal, key).await,
                Backlog::Listed(seal, list, key, ttl) => {
                    self.add_to_list(shared, seal, list, key, *ttl).await
                }
            };
            if done.is_err() {
                left.push(item);
                break;
            }
        }
        left.extend(backlog);
        if !left.is_empty() {
            let mut kept = self
                .outage
                .backlog
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            left.append(&mut kept);
            *kept = left;
            self.outage.any_backlog.store(true, Ordering::Relaxed);
        }
    }

    /// Add a key to a waiting list (compare-and-swap, as the protocol's own edits).
    async fn add_to_list(
        &self,
        shared: &Shared,
        seal: &Sealer,
        list: &str,
        key: &str,
        ttl: Ms,
    ) -> Result<(), StoreError> {
        for _ in 0..4 {
            let loaded = shared.load(seal, list).await?;
            let mut waiting = loaded
                .record
                .as_ref()
                .and_then(Record::waiting)
                .cloned()
                .unwrap_or_default();
            if waiting.keys.iter().any(|k| &**k == key) {
                return Ok(());
            }
            waiting.keys.push(std::sync::Arc::from(key));
            let record = Record::Waiting(waiting);
            if let Swapped::Done { .. } = shared.swap(seal, list, loaded.rev, &record, ttl).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Mark a message's record as given (see [`crate::protocol::given_in_outage`]).
    async fn mark_given(
        &self,
        shared: &Shared,
        seal: &Sealer,
        key: &str,
    ) -> Result<(), StoreError> {
        for _ in 0..4 {
            let loaded = shared.load(seal, key).await?;
            let Some(Record::Message(m)) = &loaded.record else {
                return Ok(());
            };
            let Some(next) = crate::protocol::given_in_outage(m) else {
                return Ok(());
            };
            let ttl = crate::protocol::ttl_of(&next, loaded.now, self.retention, None)
                .max(self.retention);
            let record = Record::Message(next);
            match shared.swap(seal, key, loaded.rev, &record, ttl).await? {
                Swapped::Done { .. } => return Ok(()),
                Swapped::Changed(_) => {}
            }
        }
        Ok(())
    }

    /// See [`crate::protocol::Action::Load`].
    pub async fn load(&self, seal: &Sealer, level: Level, key: &str) -> Result<Loaded, StoreError> {
        match (level, &self.shared) {
            (Level::Shared, Some(shared)) => {
                self.resync(shared).await;
                self.noted(shared.load(seal, key).await)
            }
            _ => Ok(self.local.load(key, self.now())),
        }
    }

    /// See [`crate::protocol::Action::Swap`].
    pub async fn swap(
        &self,
        seal: &Sealer,
        level: Level,
        key: &str,
        expected: Option<Rev>,
        record: Record,
        ttl: Ms,
    ) -> Result<Swapped, StoreError> {
        match (level, &self.shared) {
            (Level::Shared, Some(shared)) => {
                self.resync(shared).await;
                self.noted(shared.swap(seal, key, expected, &record, ttl).await)
            }
            _ => Ok(self.local.swap(key, expected, record, ttl, self.now())),
        }
    }

    /// See [`crate::protocol::Action::Put`] (always local).
    pub fn put(&self, key: &str, record: Record, ttl: Ms) {
        self.local.put(key, record, ttl, self.now());
    }

    /// See [`crate::protocol::Action::Wait`].
    pub async fn wait(&self, seal: &Sealer, level: Level, key: &str, seen: Option<Rev>, until: Ms) {
        let until = self.instant(until);
        match (level, &self.shared) {
            (Level::Shared, Some(shared)) => shared.wait(seal, key, seen, until).await,
            _ => {
                self.local
                    .wait(key, seen, until, || self.epoch.elapsed().as_millis() as Ms)
                    .await
            }
        }
    }

    /// A small value (the access token): from the shared store, or this process's
    /// memory.
    pub async fn get_value(&self, seal: &Sealer, name: &str) -> Option<Vec<u8>> {
        if let Some(shared) = &self.shared {
            if let Ok(value) = self.noted(shared.get(seal, name).await) {
                return value;
            }
        }
        self.local.get_value(name)
    }

    /// Set a small value for `ttl`; with `only_new`, only when none is there.
    pub async fn set_value(
        &self,
        seal: &Sealer,
        name: &str,
        value: &[u8],
        ttl: Duration,
        only_new: bool,
    ) -> bool {
        if let Some(shared) = &self.shared {
            let ms = ttl.as_millis() as Ms;
            if let Ok(set) = self.noted(shared.set(seal, name, value, ms, only_new).await) {
                return set;
            }
        }
        self.local.set_value(name, value, ttl, only_new)
    }

    /// Forget a small value.
    pub async fn delete_value(&self, seal: &Sealer, name: &str) {
        if let Some(shared) = &self.shared {
            let _ = self.noted(shared.delete(seal, name).await);
        }
        self.local.delete_value(name);
    }
}
