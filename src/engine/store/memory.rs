//! The in-memory store: the protocol's records and bindings in this process, bounded
//! in entries and bytes, each with its time to live.

use std::collections::{hash_map::RandomState, BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::protocol::{Digest, Loaded, Ms, Opened, Record, Rev, Swapped};

/// At most one "store full" warning per this interval (ms): a store too small for the
/// load drops entries again and again, and a line each time would flood the log.
const EVICTION_WARNING_INTERVAL: Ms = 60_000;

/// The in-memory store. Times are milliseconds on the caller's clock (the engine's
/// monotonic clock; the simulator's).
///
/// Two areas:
/// - **Short-lived** entries (time to live up to the retention: bindings, answers kept
///   for retries) live in two generations: new ones go into `current`; lookups see
///   both. When `current` holds half the entry bound, or a quarter of the byte bound,
///   or is `retention` old, it becomes `previous` and the old `previous` is dropped
///   whole. So an entry is kept its whole time to live unless that many newer ones
///   came first (then a warning says to raise the limits). No entry is removed one by
///   one: a hash table churning at full load fills with tombstones and doubles.
/// - **Long-lived** entries (leases of programs, late answers waiting for a pick-up,
///   waiting lists) live in their own map, bounded by half the byte bound and half
///   the entry bound; past that the oldest are dropped first, with a warning naming
///   how many.
///
/// So everything held takes at most `bytes` (plus one entry), whatever the mix.
/// Keys are held as 128-bit fingerprints (two SipHash-1-3 runs with this process's
/// random keys), not as strings: two keys sharing one has a chance of about
/// n² / 2¹²⁹, and nobody outside can aim at one.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Entries per generation: half the entry bound.
    half: usize,
    /// Answer bytes per generation: a quarter of the byte bound.
    gen_bytes: usize,
    /// The long-lived area's bounds.
    long_entries: usize,
    long_bytes: usize,
    retention: Ms,
    hashers: (RandomState, RandomState),
    /// Small values beside the records (the API's access token).
    values: super::values::Values,
}

struct Inner {
    current: HashMap<u128, Slot>,
    previous: HashMap<u128, Slot>,
    /// What the entries in `current` take.
    current_bytes: usize,
    /// When `current` began taking entries.
    current_since: Option<Ms>,
    long: HashMap<u128, Slot>,
    /// The long-lived entries by when they were written, oldest first.
    long_order: BTreeMap<u64, u128>,
    long_bytes: usize,
    /// Who waits for which key to change.
    waiters: HashMap<u128, Arc<Notify>>,
    next_rev: u64,
    /// Entries dropped before their time since the last warning, and when that was.
    evicted: usize,
    warned: Option<Ms>,
}

struct Slot {
    rev: u64,
    record: Record,
    expires: Ms,
    bytes: usize,
}

impl MemoryStore {
    /// A store of at most `capacity` entries taking about `bytes` at most; entries up
    /// to `retention` old are short-lived (see the type's doc).
    pub fn new(capacity: usize, bytes: usize, retention: Ms) -> MemoryStore {
        let half = (capacity / 2).max(1);
        MemoryStore {
            inner: Mutex::new(Inner {
                current: HashMap::with_capacity(half.min(4096)),
                previous: HashMap::new(),
                current_bytes: 0,
                current_since: None,
                long: HashMap::new(),
                long_order: BTreeMap::new(),
                long_bytes: 0,
                waiters: HashMap::new(),
                next_rev: 1,
                evicted: 0,
                warned: None,
            }),
            half,
            gen_bytes: (bytes / 4).max(1),
            long_entries: (capacity / 2).max(16),
            long_bytes: (bytes / 2).max(1),
            retention,
            hashers: (RandomState::new(), RandomState::new()),
            values: super::values::Values::new(capacity.clamp(16, 4096)),
        }
    }

    /// The small values beside the records.
    pub(super) fn values(&self) -> &super::values::Values {
        &self.values
    }

    /// Entries held now (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len() + g.long.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the long-lived entries (leases, late answers, waiting lists) take.
    pub fn long_bytes(&self) -> usize {
        self.lock().long_bytes
    }

    /// See [`crate::protocol::Action::Open`].
    pub fn open(
        &self,
        binding: &str,
        digest: &Digest,
        key: Option<&str>,
        record: &Record,
        ttl: Ms,
        now: Ms,
    ) -> Opened {
        let bound = self.fingerprint(binding);
        let message = key.map(|k| self.fingerprint(k));
        let mut g = self.lock();
        let fresh = match live(&g, bound, now) {
            Some(slot) => match &slot.record {
                Record::Binding(first) if first == digest => false,
                _ => return Opened::Reused,
            },
            None => {
                let binding = Record::Binding(*digest);
                self.write(&mut g, bound, binding, self.retention, now);
                true
            }
        };
        let Some(message) = message else {
            return Opened::Created { rev: Rev(0), now };
        };
        if let Some(slot) = live(&g, message, now) {
            return Opened::Found {
                loaded: Loaded {
                    rev: Some(Rev(slot.rev)),
                    record: Some(slot.record.clone()),
                    now,
                },
                fresh,
            };
        }
        let rev = self.write(&mut g, message, record.clone(), ttl, now);
        Opened::Created { rev: Rev(rev), now }
    }

    /// What this store knows of a signed query: `Some(true)` bound to `digest`,
    /// `Some(false)` bound to another digest, `None` not seen.
    pub fn bound(&self, binding: &str, digest: &Digest, now: Ms) -> Option<bool> {
        let key = self.fingerprint(binding);
        let g = self.lock();
        live(&g, key, now).map(|slot| matches!(&slot.record, Record::Binding(d) if d == digest))
    }

    /// Keep a signed query's binding as the shared store decided it (over any this
    /// process made on its own during an outage), for the retention.
    pub fn bind(&self, binding: &str, digest: &Digest, now: Ms) {
        let key = self.fingerprint(binding);
        let mut g = self.lock();
        let same = live(&g, key, now).is_some_and(|s| s.record == Record::Binding(*digest));
        if !same {
            self.write(&mut g, key, Record::Binding(*digest), self.retention, now);
        }
    }

    /// See [`crate::protocol::Action::Load`].
    pub fn load(&self, key: &str, now: Ms) -> Loaded {
        let key = self.fingerprint(key);
        let g = self.lock();
        match live(&g, key, now) {
            Some(slot) => Loaded {
                rev: Some(Rev(slot.rev)),
                record: Some(slot.record.clone()),
                now,
            },
            None => Loaded {
                rev: None,
                record: None,
                now,
            },
        }
    }

    /// See [`crate::protocol::Action::Swap`].
    pub fn swap(
        &self,
        key: &str,
        expected: Option<Rev>,
        record: Record,
        ttl: Ms,
        now: Ms,
    ) -> Swapped {
        let key = self.fingerprint(key);
        let mut g = self.lock();
        let current = live(&g, key, now).map(|s| Rev(s.rev));
        if current != expected {
            let loaded = match live(&g, key, now) {
                Some(slot) => Loaded {
                    rev: Some(Rev(slot.rev)),
                    record: Some(slot.record.clone()),
                    now,
                },
                None => Loaded {
                    rev: None,
                    record: None,
                    now,
                },
            };
            return Swapped::Changed(loaded);
        }
        let rev = self.write(&mut g, key, record, ttl, now);
        Swapped::Done { rev: Rev(rev), now }
    }

    /// See [`crate::protocol::Action::Put`].
    pub fn put(&self, key: &str, record: Record, ttl: Ms, now: Ms) {
        let key = self.fingerprint(key);
        let mut g = self.lock();
        self.write(&mut g, key, record, ttl, now);
    }

    /// The version `key` holds now (`None`: nothing).
    pub fn rev(&self, key: &str, now: Ms) -> Option<Rev> {
        let key = self.fingerprint(key);
        let g = self.lock();
        live(&g, key, now).map(|s| Rev(s.rev))
    }

    /// Return when `key` no longer holds version `seen`, or at `until` (the caller's
    /// clock, as a tokio instant), whichever comes first.
    pub async fn wait(
        &self,
        key: &str,
        seen: Option<Rev>,
        until: tokio::time::Instant,
        now: impl Fn() -> Ms,
    ) {
        let fingerprint = self.fingerprint(key);
        let notify = {
            let mut g = self.lock();
            g.waiters
                .entry(fingerprint)
                .or_insert_with(|| Arc::new(Notify::new()))
                .clone()
        };
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before looking, so a write in between still wakes us.
        notified.as_mut().enable();
        if self.rev(key, now()) == seen {
            let _ = tokio::time::timeout_at(until, notified).await;
        }
        // Nobody else waits for it: forget the notifier (a write would have too).
        let mut g = self.lock();
        if g.waiters
            .get(&fingerprint)
            .is_some_and(|n| Arc::ptr_eq(n, &notify) && Arc::strong_count(n) <= 2)
        {
            g.waiters.remove(&fingerprint);
        }
    }

    fn fingerprint(&self, key: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update; the maps are
        // still valid maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write `record` at `key` for `ttl`, in the area its time to live belongs to;
    /// wake whoever waits for the key. Returns the new version.
    fn write(&self, g: &mut Inner, key: u128, record: Record, ttl: Ms, now: Ms) -> u64 {
        let rev = g.next_rev;
        g.next_rev += 1;
        let bytes = 48 + record.heap_bytes();
        let slot = Slot {
            rev,
            record,
            expires: now.saturating_add(ttl),
            bytes,
        };
        if ttl > self.retention {
            if g.current.contains_key(&key) || g.previous.contains_key(&key) {
                g.current.remove(&key);
                g.previous.remove(&key);
            }
            if let Some(old) = g.long.insert(key, slot) {
                g.long_bytes -= old.bytes;
                g.long_order.remove(&old.rev);
            }
            g.long_bytes += bytes;
            g.long_order.insert(rev, key);
            self.bound_long(g, now);
        } else {
            if let Some(old) = g.long.remove(&key) {
                g.long_bytes -= old.bytes;
                g.long_order.remove(&old.rev);
            }
            let since = *g.current_since.get_or_insert(now);
            let replacing = g.current.contains_key(&key);
            if !replacing
                && (g.current.len() >= self.half
                    || (g.current_bytes + bytes > self.gen_bytes && !g.current.is_empty())
                    || now.saturating_sub(since) >= self.retention)
            {
                self.rotate(g, now);
            }
            g.current.insert(key, slot);
            g.current_bytes += bytes;
        }
        if !g.waiters.is_empty() {
            if let Some(notify) = g.waiters.remove(&key) {
                notify.notify_waiters();
            }
        }
        rev
    }

    /// Drop the oldest long-lived entries (expired ones first) until the area is within
    /// its bounds.
    fn bound_long(&self, g: &mut Inner, now: Ms) {
        if g.long_bytes <= self.long_bytes && g.long.len() <= self.long_entries {
            return;
        }
        let expired: Vec<u128> = g
            .long
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(old) = g.long.remove(&key) {
                g.long_bytes -= old.bytes;
                g.long_order.remove(&old.rev);
            }
        }
        // The oldest answers first (what takes the room), then anything oldest
        // first: leases and the follower lists that index the answers go last.
        let over = |g: &Inner| g.long_bytes > self.long_bytes || g.long.len() > self.long_entries;
        let mut dropped = 0;
        for answers_only in [true, false] {
            let order: Vec<(u64, u128)> = g.long_order.iter().map(|(r, k)| (*r, *k)).collect();
            for (rev, key) in order {
                if !over(g) {
                    break;
                }
                let is_answer = g
                    .long
                    .get(&key)
                    .is_some_and(|s| s.record.message().is_some_and(|m| m.answer().is_some()));
                if answers_only && !is_answer {
                    continue;
                }
                if let Some(old) = g.long.remove(&key) {
                    g.long_bytes -= old.bytes;
                    g.long_order.remove(&rev);
                    dropped += 1;
                }
            }
        }
        if dropped > 0 {
            g.evicted += dropped;
            if g.warned
                .is_none_or(|at| now.saturating_sub(at) >= EVICTION_WARNING_INTERVAL)
            {
                tracing::warn!(
                    dropped = g.evicted,
                    bytes = self.long_bytes,
                    "state in memory full: dropped the oldest leases or late answers \
                     waiting for a pick-up (count since the last such warning); raise \
                     retry_cache_bytes or retry_cache_entries"
                );
                g.evicted = 0;
                g.warned = Some(now);
            }
        }
    }

    /// Start a new generation: `current` becomes `previous`, the old `previous` goes.
    fn rotate(&self, g: &mut Inner, now: Ms) {
        let since = g.current_since.unwrap_or(now);
        // The dropped generation's newest entry is as old as `current` is.
        if now.saturating_sub(since) < self.retention {
            let live = g.previous.values().filter(|s| s.expires > now).count();
            if live > 0 {
                g.evicted += live;
                if g.warned
                    .is_none_or(|at| now.saturating_sub(at) >= EVICTION_WARNING_INTERVAL)
                {
                    tracing::warn!(
                        capacity = self.half * 2,
                        dropped = g.evicted,
                        "retry cache full: dropped answers younger than their retention \
                         (count since the last such warning); raise retry_cache_entries \
                         or retry_cache_bytes"
                    );
                    g.evicted = 0;
                    g.warned = Some(now);
                }
            }
        }
        // Free the old generation before allocating the new one.
        g.previous = HashMap::new();
        g.previous = std::mem::replace(&mut g.current, HashMap::with_capacity(self.half.min(4096)));
        g.current_bytes = 0;
        g.current_since = Some(now);
    }
}

/// The entry at `key`, unless it expired.
fn live(g: &Inner, key: u128, now: Ms) -> Option<&Slot> {
    g.long
        .get(&key)
        .or_else(|| g.current.get(&key))
        .or_else(|| g.previous.get(&key))
        .filter(|s| s.expires > now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reply::Reply;
    use crate::core::{Answer, Via};
    use crate::protocol::{Late, Message, State};

    const RETENTION: Ms = 60_000;

    fn answered(text: &str) -> Record {
        Record::Message(Message {
            first: 0,
            attempts: 1,
            state: State::Answered(Answer {
                reply: Some(Arc::new(Reply::Text(text.to_owned()))),
                rule: Arc::from("r"),
                via: Via::Rule,
            }),
            late: Late::No,
            job: None,
        })
    }

    fn open(store: &MemoryStore, query: &str, digest: u8, key: &str, now: Ms) -> Opened {
        store.open(
            query,
            &[digest; 16],
            Some(key),
            &answered(key),
            RETENTION,
            now,
        )
    }

    #[test]
    fn open_binds_the_query_and_creates_once() {
        let store = MemoryStore::new(100, 1 << 20, RETENTION);
        assert!(matches!(
            open(&store, "q1", 1, "k", 0),
            Opened::Created { .. }
        ));
        // The same query and body again (a duplicate): found, not fresh.
        let Opened::Found { loaded, fresh } = open(&store, "q1", 1, "k", 1) else {
            panic!()
        };
        assert!(!fresh);
        assert_eq!(loaded.record, Some(answered("k")));
        // Another query for the same message (a retry): found, fresh.
        assert!(matches!(
            open(&store, "q2", 2, "k", 2),
            Opened::Found { fresh: true, .. }
        ));
        // The first query with another body: refused, nothing else done.
        assert_eq!(open(&store, "q1", 9, "other", 3), Opened::Reused);
        assert_eq!(store.load("other", 3).record, None);
        // A handshake binds its query only.
        let handshake = store.open("h", &[5; 16], None, &answered("x"), RETENTION, 4);
        assert!(matches!(handshake, Opened::Created { .. }));
        assert_eq!(
            store.open("h", &[6; 16], Some("k2"), &answered("k2"), RETENTION, 5),
            Opened::Reused
        );
    }

    #[test]
    fn swap_writes_only_over_the_version_read() {
        let store = MemoryStore::new(100, 1 << 20, RETENTION);
        let Opened::Created { rev, .. } = open(&store, "q", 1, "k", 0) else {
            panic!()
        };
        let done = store.swap("k", Some(rev), answered("b"), RETENTION, 1);
        let Swapped::Done { rev: second, .. } = done else {
            panic!("{done:?}")
        };
        // The old version again: refused, and told what is there.
        let Swapped::Changed(now) = store.swap("k", Some(rev), answered("c"), RETENTION, 2) else {
            panic!()
        };
        assert_eq!(now.rev, Some(second));
        assert_eq!(now.record, Some(answered("b")));
        // Creating over an existing key: refused; over an expired one: done.
        assert!(matches!(
            store.swap("k", None, answered("d"), RETENTION, 3),
            Swapped::Changed(_)
        ));
        assert!(matches!(
            store.swap("k", None, answered("e"), RETENTION, RETENTION + 2),
            Swapped::Done { .. }
        ));
    }

    #[test]
    fn entries_expire_with_their_time_to_live() {
        let store = MemoryStore::new(100, 1 << 20, RETENTION);
        store.put("short", answered("s"), 10, 0);
        store.put("long", answered("l"), RETENTION * 10, 0);
        assert!(store.load("short", 9).record.is_some());
        assert!(store.load("short", 10).record.is_none());
        assert!(store.load("long", RETENTION * 10 - 1).record.is_some());
        assert!(store.load("long", RETENTION * 10).record.is_none());
    }

    #[test]
    fn a_full_store_keeps_at_least_the_newest_half() {
        let store = MemoryStore::new(100, 1 << 20, RETENTION);
        for i in 0..1000usize {
            assert!(matches!(
                open(&store, &format!("q{i}"), 1, &format!("m{i}"), 0),
                Opened::Created { .. }
            ));
            assert!(store.len() <= 100, "bounded: {}", store.len());
        }
        for j in 990..1000 {
            assert!(store.load(&format!("m{j}"), 0).record.is_some(), "m{j}");
        }
    }

    #[test]
    fn is_bounded_in_bytes_in_both_areas() {
        let store = MemoryStore::new(100_000, 1 << 20, RETENTION);
        let big = answered(&"x".repeat(60_000));
        // 600 late answers of 60 KB kept for a day: at most half the bound is held,
        // the oldest dropped first.
        for i in 0..600 {
            store.put(&format!("late{i}"), big.clone(), 86_400_000, i);
            assert!(
                store.long_bytes() <= (1 << 19) + 61_000,
                "{}",
                store.long_bytes()
            );
        }
        assert!(
            store.load("late0", 600).record.is_none(),
            "the oldest went first"
        );
        assert!(store.load("late599", 600).record.is_some());
        // Answers kept for retries: a quarter of the bound per generation.
        for i in 0..600 {
            store.put(&format!("ans{i}"), big.clone(), RETENTION, 1000);
        }
        let held: usize = {
            let g = store.lock();
            g.current
                .values()
                .chain(g.previous.values())
                .map(|s| s.bytes)
                .sum()
        };
        assert!(held <= (1 << 19) + 2 * 61_000, "{held}");
    }

    #[test]
    fn a_key_moves_between_areas_with_its_time_to_live() {
        let store = MemoryStore::new(100, 1 << 20, RETENTION);
        store.put("k", answered("lease"), RETENTION * 2, 0);
        assert_eq!(store.lock().long.len(), 1);
        store.put("k", answered("answer"), RETENTION, 1);
        assert_eq!(store.lock().long.len(), 0);
        assert_eq!(store.long_bytes(), 0);
        assert_eq!(store.load("k", 2).record, Some(answered("answer")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_when_the_key_changes_not_before() {
        let store = Arc::new(MemoryStore::new(10, 1 << 20, RETENTION));
        let t0 = tokio::time::Instant::now();
        let now = move || t0.elapsed().as_millis() as Ms;
        store.put("k", answered("a"), RETENTION, 0);
        let seen = store.rev("k", 0);
        let writer = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            writer.put("k", answered("b"), RETENTION, 1500);
        });
        store
            .wait("k", seen, t0 + std::time::Duration::from_secs(4), now)
            .await;
        assert_eq!(t0.elapsed().as_millis(), 1500, "woken by the write");
        // A version already gone returns at once; with nothing written, at `until`.
        let t1 = tokio::time::Instant::now();
        store
            .wait("k", seen, t1 + std::time::Duration::from_secs(4), now)
            .await;
        assert_eq!(t1.elapsed().as_millis(), 0);
        let seen = store.rev("k", now());
        store
            .wait("k", seen, t1 + std::time::Duration::from_millis(700), now)
            .await;
        assert_eq!(t1.elapsed().as_millis(), 700);
    }
}
