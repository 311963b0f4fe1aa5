//! Where the protocol's records live: this process's memory ([`MemoryStore`]) always,
//! and the `[state]` store shared by processes when one is configured ([`Shared`]:
//! SQLite, Redis). Every store offers the same few atomic operations the protocol
//! asks for ([`crate::protocol::Action`]): open a message (bind its signed query and
//! create its record unless there is one), load, compare-and-swap, wait for a change.
//! The stores decide nothing: they keep what the protocol writes.

mod memory;
pub mod redis;
pub mod seal;
pub mod sqlite;
mod values;

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use seal::Sealer;
pub use sqlite::SqliteStore;

use crate::protocol::{Digest, Loaded, Ms, Opened, Record, Rev, StoreError, Swapped};

/// A body's fingerprint for query bindings: the first 16 bytes of its SHA-1, the same
/// in every process.
pub fn body_digest(body: &[u8]) -> Digest {
    use sha1::Digest;
    let full = sha1::Sha1::digest(body);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// The Unix time in milliseconds: the SQLite store's clock.
pub(crate) fn unix_ms() -> Ms {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Ms)
}

/// At most one "forged entry" warning per this interval.
const FORGED_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

static FORGED_WARNED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Open and decode a shared store's value for `key`. A value that does not open or
/// decode is refused (logged, at most once a minute) and reads as none, with its
/// version, so that the protocol replaces it.
pub(crate) fn unseal(seal: &Sealer, key: &str, value: Option<Vec<u8>>, now: Ms) -> Loaded {
    let Some(stored) = value else {
        return Loaded {
            rev: None,
            record: None,
            now,
        };
    };
    let rev = Some(seal::rev_of(&stored));
    let record = seal
        .open(&seal.name(key), &stored)
        .and_then(|plain| Record::decode(&plain));
    if record.is_none() {
        crate::metrics::METRICS.store_error();
        let mut warned = FORGED_WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= FORGED_WARN_EVERY) {
            let kind = key.split('/').next().unwrap_or("?");
            tracing::warn!(
                kind = %crate::log::Escaped(kind),
                "state store: refused an entry that does not open with this server's key \
                 (forged or altered by another user of the store, or written under another \
                 [state] secret or token): it is replaced, never served"
            );
            *warned = Some(std::time::Instant::now());
        }
    }
    Loaded { rev, record, now }
}

/// What [`crate::protocol::Action::Open`] asks of a store.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    /// The signed query's key.
    pub binding: &'a str,
    /// The body's fingerprint it is bound to.
    pub digest: &'a Digest,
    /// The message's record key (`None`: a handshake binds only).
    pub key: Option<&'a str>,
    /// The record to create unless one exists.
    pub record: &'a Record,
    /// Its time to live.
    pub ttl: Ms,
}

/// The `[state]` store shared by processes.
pub enum Shared {
    /// A SQLite file shared by the processes of one machine.
    Sqlite(SqliteStore),
    /// A Redis shared by every machine that uses it.
    Redis(RedisStore),
}

impl Shared {
    /// The store's clock now (SQLite: the wall clock; Redis: its own, as last seen).
    pub fn now(&self) -> Ms {
        match self {
            Shared::Sqlite(_) => unix_ms(),
            Shared::Redis(r) => r.now(),
        }
    }

    /// See [`crate::protocol::Action::Open`]; a binding lives `retention`.
    pub async fn open(
        &self,
        seal: &Sealer,
        op: Opening<'_>,
        retention: Ms,
    ) -> Result<Opened, StoreError> {
        match self {
            Shared::Sqlite(s) => s.open_record(seal, op, retention).await,
            Shared::Redis(r) => r.open_record(seal, op, retention).await,
        }
    }

    /// See [`crate::protocol::Action::Load`].
    pub async fn load(&self, seal: &Sealer, key: &str) -> Result<Loaded, StoreError> {
        match self {
            Shared::Sqlite(s) => s.load(seal, key).await,
            Shared::Redis(r) => r.load(seal, key).await,
        }
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
        match self {
            Shared::Sqlite(s) => s.swap(seal, key, expected, record, ttl).await,
            Shared::Redis(r) => r.swap(seal, key, expected, record, ttl).await,
        }
    }

    /// See [`crate::protocol::Action::Wait`].
    pub async fn wait(&self, seal: &Sealer, key: &str, seen: Option<Rev>, until: Instant) {
        match self {
            Shared::Sqlite(s) => s.wait(seal, key, seen, until).await,
            Shared::Redis(r) => r.wait(seal, key, seen, until).await,
        }
    }

    /// A small value (the access token), if there and it opens.
    pub async fn get(&self, seal: &Sealer, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Shared::Sqlite(s) => s.get(seal, key).await,
            Shared::Redis(r) => r.get(seal, key).await,
        }
    }

    /// Set a small value; with `only_new`, only when none is there: whether it was set.
    pub async fn set(
        &self,
        seal: &Sealer,
        key: &str,
        value: &[u8],
        ttl: Ms,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        match self {
            Shared::Sqlite(s) => s.set(seal, key, value, ttl, only_new).await,
            Shared::Redis(r) => r.set(seal, key, value, ttl, only_new).await,
        }
    }

    /// Forget a small value.
    pub async fn delete(&self, seal: &Sealer, key: &str) -> Result<(), StoreError> {
        match self {
            Shared::Sqlite(s) => s.delete(seal, key).await,
            Shared::Redis(r) => r.delete(seal, key).await,
        }
    }

    /// Upkeep to run in the background while serving: for SQLite, deleting expired
    /// rows and moving the write-ahead log into the database on a thread of its own.
    /// (Redis expires keys by their TTL.)
    pub async fn maintain(&self) {
        match self {
            Shared::Redis(_) => std::future::pending().await,
            Shared::Sqlite(s) => {
                s.checkpoint_in_background().await;
                loop {
                    tokio::time::sleep(sqlite::PURGE_EVERY).await;
                    s.purge().await;
                }
            }
        }
    }
}

/// The memory store's small values, for a process without a shared store.
impl MemoryStore {
    /// A small value, if there.
    pub fn get_value(&self, name: &str) -> Option<Vec<u8>> {
        self.values().get(name, Instant::now())
    }

    /// Set a small value; with `only_new`, only when none is there.
    pub fn set_value(
        &self,
        name: &str,
        value: &[u8],
        ttl: std::time::Duration,
        only_new: bool,
    ) -> bool {
        if only_new {
            self.values().set_new(name, value, ttl, Instant::now())
        } else {
            self.values().set(name, value, ttl, Instant::now());
            true
        }
    }

    /// Forget a small value.
    pub fn delete_value(&self, name: &str) {
        self.values().delete(name)
    }
}
