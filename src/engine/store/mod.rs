//! Where answers live between a message and its retries: claims with leases, stored
//! answers, and waiting for an answer another request (or process) is deciding.
//!
//! The interface assumes nothing about processes: a claim is a lease that ends at a
//! time, not a channel; waiting is the store's own business (the memory store wakes
//! waiters directly; a store shared between processes polls or subscribes). Time is
//! passed in, so the rules are tested with a clock the test controls.

mod memory;
pub mod redis;
pub mod sqlite;
mod values;

use std::time::Duration;

use tokio::time::Instant;

use crate::core::Answer;
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use sqlite::SqliteStore;

/// A body's fingerprint for [`Store::bind`]: the first 16 bytes of its SHA-1, the same
/// in every process.
pub type BodyDigest = [u8; 16];

/// The [`BodyDigest`] of a body.
pub fn body_digest(body: &[u8]) -> BodyDigest {
    use sha1::Digest;
    let full = sha1::Sha1::digest(body);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

impl Store {
    /// Whether other processes see what this store holds.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Store::Memory(_))
    }

    /// Upkeep to run in the background while serving: deleting expired rows, and for
    /// SQLite moving the write-ahead log into the database on a thread of its own.
    pub async fn maintain(&self) {
        match self {
            // Memory drops whole generations; Redis expires keys by their TTL.
            Store::Memory(_) | Store::Redis(_) => std::future::pending().await,
            Store::Sqlite(s) => {
                s.checkpoint_in_background().await;
                loop {
                    tokio::time::sleep(sqlite::PURGE_EVERY).await;
                    s.purge().await;
                }
            }
        }
    }
}

/// The first step for a message: store the answer a rule gave, or claim the message.
#[derive(Debug, Clone, Copy)]
pub enum First<'a> {
    /// A rule's answer, known at once: store it unless the message was seen before.
    Known(&'a Answer),
    /// Claim the message for this long (a program will decide it).
    Claim(Duration),
}

/// What [`Store::open_message`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// The signed query came before with another body: refuse the request.
    QueryReused,
    /// The known answer is stored: this request decided the message.
    Stored,
    /// What claiming found (or, for a known answer, what an earlier request left).
    Claim(Claim),
}

impl Store {
    /// Bind the signed query to the body, then take the message's first step
    /// ([`First`]): one transaction in SQLite, one lock in memory.
    pub async fn open_message(
        &self,
        signed_query: &str,
        body: &BodyDigest,
        key: &str,
        first: First<'_>,
        now: Instant,
    ) -> Opened {
        match self {
            Store::Sqlite(s) => s.open_message(signed_query, body, key, first).await,
            Store::Redis(r) => r.open_message(signed_query, body, key, first).await,
            Store::Memory(m) => {
                if !m.bind(signed_query, body, now) {
                    return Opened::QueryReused;
                }
                match first {
                    First::Known(answer) => match m.put_new(key, answer, now) {
                        None => Opened::Stored,
                        Some(earlier) => Opened::Claim(earlier),
                    },
                    First::Claim(lease) => Opened::Claim(m.claim(key, now, lease)),
                }
            }
        }
    }
}

/// Small shared values beside the answers, in the same store (so every process sees
/// them): WeChat's attempts of a message, late answers waiting for a follower, the API
/// access token. Every value and list has a time to live. A store that cannot be
/// reached reads as empty and writes nothing (its own WARN says so).
impl Store {
    /// Add one to the counter `name` (created at 1 with `ttl`); `None` when the store
    /// is unreachable.
    pub async fn incr(&self, name: &str, ttl: Duration) -> Option<u64> {
        match self {
            Store::Memory(m) => Some(m.values().incr(name, ttl, Instant::now())),
            Store::Sqlite(s) => s.incr(name, ttl).await,
            Store::Redis(r) => r.incr(name, ttl).await,
        }
    }

    /// The value `name` holds, if it holds one that has not expired.
    pub async fn get(&self, name: &str) -> Option<Vec<u8>> {
        match self {
            Store::Memory(m) => m.values().get(name, Instant::now()),
            Store::Sqlite(s) => s.get(name).await,
            Store::Redis(r) => r.get(name).await,
        }
    }

    /// Set `name` to `value` for `ttl`, replacing what it held.
    pub async fn set(&self, name: &str, value: &[u8], ttl: Duration) {
        match self {
            Store::Memory(m) => m.values().set(name, value, ttl, Instant::now()),
            Store::Sqlite(s) => {
                s.set(name, value, ttl, false).await;
            }
            Store::Redis(r) => {
                r.set(name, value, ttl, false).await;
            }
        }
    }

    /// Set `name` to `value` for `ttl` only if it holds nothing: whether this call set
    /// it (exactly one of several processes racing does).
    pub async fn set_new(&self, name: &str, value: &[u8], ttl: Duration) -> bool {
        match self {
            Store::Memory(m) => m.values().set_new(name, value, ttl, Instant::now()),
            Store::Sqlite(s) => s.set(name, value, ttl, true).await.unwrap_or(false),
            Store::Redis(r) => r.set(name, value, ttl, true).await,
        }
    }

    /// Forget the value `name`.
    pub async fn delete(&self, name: &str) {
        match self {
            Store::Memory(m) => m.values().delete(name),
            Store::Sqlite(s) => s.delete(name).await,
            Store::Redis(r) => r.delete(name).await,
        }
    }

    /// Append `item` to the list `list`, which then lives `ttl` from now.
    pub async fn push(&self, list: &str, item: &str, ttl: Duration) {
        match self {
            Store::Memory(m) => m.values().push(list, item, ttl, Instant::now()),
            Store::Sqlite(s) => s.push(list, item, ttl).await,
            Store::Redis(r) => r.push(list, item, ttl).await,
        }
    }

    /// The first `max` items of `list`, oldest first.
    pub async fn items(&self, list: &str, max: usize) -> Vec<String> {
        match self {
            Store::Memory(m) => m.values().items(list, max, Instant::now()),
            Store::Sqlite(s) => s.items(list, max).await,
            Store::Redis(r) => r.items(list, max).await,
        }
    }

    /// Remove `item` from `list`: whether this call removed it (exactly one of several
    /// processes racing does).
    pub async fn remove(&self, list: &str, item: &str) -> bool {
        match self {
            Store::Memory(m) => m.values().remove(list, item, Instant::now()),
            Store::Sqlite(s) => s.remove(list, item).await,
            Store::Redis(r) => r.remove(list, item).await,
        }
    }
}

/// What [`Store::claim`] found for a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller now holds the message's lease: it decides the answer and stores it
    /// with [`Store::finish`] before the lease ends.
    Won,
    /// The message was answered before: this is the answer.
    Answered(Answer),
    /// Another request (in this process or another) holds the lease until `until`.
    /// Wait with [`Store::wait`] and claim again: the answer, or the lease's end (then
    /// the message is taken over), comes first.
    Held {
        /// When the holder's lease ends.
        until: Instant,
    },
}

/// The answer store the engine runs on. One variant per kind of store; they all keep
/// the rules of [`Claim`].
pub enum Store {
    /// In this process's memory: answers are shared by the requests of one process.
    Memory(MemoryStore),
    /// In a SQLite file: shared by every process on this machine.
    Sqlite(SqliteStore),
    /// In Redis: shared by every instance on every machine that uses it.
    Redis(RedisStore),
}

impl Store {
    /// Claim `key` at `now`: when nobody holds it (or the holder's lease ended), the
    /// caller holds it until `now + lease`.
    pub async fn claim(&self, key: &str, now: Instant, lease: Duration) -> Claim {
        match self {
            Store::Memory(m) => m.claim(key, now, lease),
            Store::Sqlite(s) => s.claim(key, lease).await,
            Store::Redis(r) => r.claim(key, lease).await,
        }
    }

    /// Store the answer of a claimed `key` and wake whoever waits for it.
    pub async fn finish(&self, key: &str, answer: Answer, now: Instant) {
        match self {
            Store::Memory(m) => m.finish(key, answer, now),
            Store::Sqlite(s) => s.finish(key, &answer).await,
            Store::Redis(r) => r.finish(key, &answer).await,
        }
    }

    /// Return when `key`'s answer may have been stored, or at `until`, whichever comes
    /// first. The caller claims again to see which.
    pub async fn wait(&self, key: &str, until: Instant) {
        match self {
            Store::Memory(m) => m.wait(key, until).await,
            Store::Sqlite(s) => s.wait(key, until).await,
            Store::Redis(r) => r.wait(key, until).await,
        }
    }
}
