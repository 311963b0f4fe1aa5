//! The in-memory store: bounded, answers kept for a retention, claims as leases.

use std::collections::{hash_map::RandomState, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{BodyDigest, Claim};
use crate::core::Answer;

/// At most one "retry cache full" warning per this interval: a cache too small for the
/// load drops entries again and again, and a line each time would flood the log.
const EVICTION_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The in-memory store: bounded in entries and in bytes, answers kept for `retention`
/// (at least the timestamp window, so a replay inside the window is always answered
/// from it).
///
/// Two generations of entries: new ones go into `current`; lookups see both. When
/// `current` holds half the capacity or is `retention` old, it becomes `previous` and
/// the old `previous` is dropped whole; `current` also turns over when its answers take
/// half the byte bound. So every entry is kept at least `retention` unless
/// `capacity / 2` newer ones (or half the bytes) came first (then a warning says to
/// raise the limits), and at most twice that. The answers held take at most the byte
/// bound, plus one answer (which can be up to the largest reply: a program's 64 KiB,
/// or a template filled from a body of `max_body_bytes`). No entry is removed one by one: a hash table
/// churning at full load fills with tombstones and doubles (measured: a full
/// string-keyed map and age queue grew from 5 to 8.3 MiB that way).
///
/// Keys are held as 128-bit fingerprints (two SipHash-1-3 runs with this process's
/// random keys), not as strings. Two messages sharing a fingerprint has a chance of
/// about n² / 2¹²⁹ (n entries held), and nobody outside can aim at one: the hash keys
/// are secret. Full at the default capacity: 3.3 MiB (`examples/cache_mem.rs`).
pub struct MemoryStore {
    inner: Mutex<Generations>,
    /// Entries per generation: half the capacity.
    half: usize,
    /// Answer bytes per generation: half the byte bound.
    half_bytes: usize,
    retention: Duration,
    hashers: (RandomState, RandomState),
    /// Counters, marks and lists ([`super::Store::incr`] and the rest).
    values: super::values::Values,
}

struct Generations {
    current: HashMap<u128, Entry>,
    previous: HashMap<u128, Entry>,
    /// What the answers in `current` take ([`Answer::heap_bytes`]).
    current_bytes: usize,
    /// When `current` began taking entries (`None` until the first entry).
    current_since: Option<Instant>,
    /// Entries dropped before their retention since the last warning, and when that was.
    evicted: usize,
    warned: Option<Instant>,
}

enum Entry {
    /// Claimed until `until`; `answered` wakes the requests waiting for it.
    Running {
        until: Instant,
        answered: Arc<Notify>,
    },
    Done(Answer),
    /// A signed query and the digest of the body it came with.
    Bound(BodyDigest),
}

impl MemoryStore {
    /// A store of at most `capacity` entries whose answers take about `bytes` at most,
    /// each kept at least `retention` unless a limit is reached first.
    pub fn new(capacity: usize, bytes: usize, retention: Duration) -> MemoryStore {
        let half = (capacity / 2).max(1);
        MemoryStore {
            inner: Mutex::new(Generations {
                current: HashMap::with_capacity(half),
                previous: HashMap::new(),
                current_bytes: 0,
                current_since: None,
                evicted: 0,
                warned: None,
            }),
            half,
            half_bytes: (bytes / 2).max(1),
            retention,
            hashers: (RandomState::new(), RandomState::new()),
            values: super::values::Values::new(capacity),
        }
    }

    /// The small values beside the answers.
    pub(super) fn values(&self) -> &super::values::Values {
        &self.values
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// See [`super::Store::claim`].
    pub fn claim(&self, key: &str, now: Instant, lease: Duration) -> Claim {
        let key = self.fingerprint(key);
        let mut g = self.lock();
        let g = &mut *g;
        match g.current.get_mut(&key).or_else(|| g.previous.get_mut(&key)) {
            Some(Entry::Done(answer)) => return Claim::Answered(answer.clone()),
            // A message key never fingerprints like a query key ("q:" prefix); this is
            // only reached by a fingerprint collision, treated as a new message.
            Some(Entry::Bound(_)) => return Claim::Won,
            Some(Entry::Running { until, .. }) if *until > now => {
                return Claim::Held { until: *until }
            }
            Some(Entry::Running { until, .. }) => {
                // The holder's lease ended without an answer: the caller takes over.
                // Whoever waits keeps waiting on the same entry.
                *until = now + lease;
                return Claim::Won;
            }
            None => {}
        }
        self.insert(
            g,
            key,
            Entry::Running {
                until: now + lease,
                answered: Arc::new(Notify::new()),
            },
            0,
            now,
        );
        Claim::Won
    }

    /// Store an answer known at once (a rule's reply) for a new `key`, in one step.
    /// `None`: stored. `Some(claim)`: what an earlier request left, which wins. No
    /// [`Notify`] for a message answered at once:
    /// nobody can be waiting for it yet.
    pub fn put_new(&self, key: &str, answer: &Answer, now: Instant) -> Option<Claim> {
        let key = self.fingerprint(key);
        let mut g = self.lock();
        let g = &mut *g;
        match g.current.get(&key).or_else(|| g.previous.get(&key)) {
            Some(Entry::Done(earlier)) => return Some(Claim::Answered(earlier.clone())),
            Some(Entry::Running { until, .. }) => return Some(Claim::Held { until: *until }),
            Some(Entry::Bound(_)) | None => {}
        }
        self.insert(
            g,
            key,
            Entry::Done(answer.clone()),
            answer.heap_bytes(),
            now,
        );
        None
    }

    /// Bind a signed query to the body it first came with, for as long as answers are
    /// kept. `true`: first seen, or seen with the same body (a retry); `false`: seen
    /// with a different body.
    pub fn bind(&self, signed_query: &str, body: &BodyDigest, now: Instant) -> bool {
        let mut prefixed = String::with_capacity(signed_query.len() + 2);
        prefixed.push_str("q:");
        prefixed.push_str(signed_query);
        let key = self.fingerprint(&prefixed);
        let mut g = self.lock();
        let g = &mut *g;
        match g.current.get(&key).or_else(|| g.previous.get(&key)) {
            Some(Entry::Bound(first)) => first == body,
            _ => {
                self.insert(g, key, Entry::Bound(*body), 0, now);
                true
            }
        }
    }

    /// See [`super::Store::finish`].
    pub fn finish(&self, key: &str, answer: Answer, _now: Instant) {
        let key = self.fingerprint(key);
        let bytes = answer.heap_bytes();
        let mut g = self.lock();
        let g = &mut *g;
        let (entry, in_current) = match g.current.get_mut(&key) {
            Some(entry) => (Some(entry), true),
            None => (g.previous.get_mut(&key), false),
        };
        // Not found: dropped while it ran (a cache far too small); nothing to record.
        if let Some(entry) = entry {
            if let Entry::Running { answered, .. } = std::mem::replace(entry, Entry::Done(answer)) {
                answered.notify_waiters();
            }
            // An answer that lands in the previous generation goes when that does.
            if in_current {
                g.current_bytes += bytes;
            }
        }
    }

    /// See [`super::Store::wait`].
    pub async fn wait(&self, key: &str, until: Instant) {
        let key = self.fingerprint(key);
        let answered = {
            let g = self.lock();
            match g.current.get(&key).or_else(|| g.previous.get(&key)) {
                Some(Entry::Running { answered, .. }) => answered.clone(),
                _ => return,
            }
        };
        let notified = answered.notified();
        tokio::pin!(notified);
        // Registered before looking again, so an answer stored in between still wakes us.
        notified.as_mut().enable();
        if !self.is_running(key) {
            return;
        }
        let _ = tokio::time::timeout_at(until, notified).await;
    }

    fn is_running(&self, key: u128) -> bool {
        let g = self.lock();
        matches!(
            g.current.get(&key).or_else(|| g.previous.get(&key)),
            Some(Entry::Running { .. })
        )
    }

    fn fingerprint(&self, key: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A poisoned lock only means another thread panicked mid-update; the maps are
        // still valid maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a new entry whose answer takes `bytes`, in a new generation when the current
    /// one is full (in entries or bytes) or old.
    fn insert(&self, g: &mut Generations, key: u128, entry: Entry, bytes: usize, now: Instant) {
        let since = *g.current_since.get_or_insert(now);
        if g.current.len() >= self.half
            || (g.current_bytes + bytes > self.half_bytes && !g.current.is_empty())
            || now.duration_since(since) >= self.retention
        {
            self.rotate(g, now);
        }
        g.current.insert(key, entry);
        g.current_bytes += bytes;
    }

    /// Start a new generation: `current` becomes `previous`, the old `previous` goes.
    fn rotate(&self, g: &mut Generations, now: Instant) {
        let since = g.current_since.unwrap_or(now);
        // The dropped generation's newest entry is as old as `current` is.
        if now.duration_since(since) < self.retention && !g.previous.is_empty() {
            g.evicted += g.previous.len();
            if g.warned
                .is_none_or(|at| now.duration_since(at) >= EVICTION_WARNING_INTERVAL)
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
        // Free the old generation before allocating the new one.
        g.previous = HashMap::new();
        g.previous = std::mem::replace(&mut g.current, HashMap::with_capacity(self.half));
        g.current_bytes = 0;
        g.current_since = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reply::Reply;
    use crate::core::Via;

    const LEASE: Duration = Duration::from_secs(4);

    fn answer(text: &str) -> Answer {
        Answer {
            reply: Some(Arc::new(Reply::Text(text.to_owned()))),
            rule: Arc::from("r"),
            via: Via::Rule,
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn won_held_answered() {
        let t0 = Instant::now();
        let store = MemoryStore::new(10, 1 << 20, Duration::from_secs(60));
        assert_eq!(store.claim("k", t0, LEASE), Claim::Won);
        assert_eq!(
            store.claim("k", at(t0, 10), LEASE),
            Claim::Held { until: t0 + LEASE }
        );
        store.finish("k", answer("a"), at(t0, 20));
        assert_eq!(
            store.claim("k", at(t0, 30), LEASE),
            Claim::Answered(answer("a"))
        );
    }

    #[test]
    fn a_lease_that_ends_unanswered_is_taken_over_once() {
        let t0 = Instant::now();
        let store = MemoryStore::new(10, 1 << 20, Duration::from_secs(60));
        assert_eq!(store.claim("k", t0, LEASE), Claim::Won);
        let end = t0 + LEASE;
        assert_eq!(
            store.claim("k", end - Duration::from_millis(1), LEASE),
            Claim::Held { until: end }
        );
        assert_eq!(
            store.claim("k", end, LEASE),
            Claim::Won,
            "taken over at the lease's end"
        );
        assert_eq!(
            store.claim("k", end, LEASE),
            Claim::Held { until: end + LEASE },
            "by one caller only"
        );
    }

    #[test]
    fn is_bounded_oldest_first() {
        let t0 = Instant::now();
        let store = MemoryStore::new(2, 1 << 20, Duration::from_secs(60));
        for k in ["a", "b", "c"] {
            assert_eq!(store.put_new(k, &answer(k), t0), None);
        }
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.claim("a", t0, LEASE),
            Claim::Won,
            "the oldest was evicted"
        );
        assert_eq!(store.claim("c", t0, LEASE), Claim::Answered(answer("c")));
    }

    #[test]
    fn keeps_entries_for_the_retention_then_forgets() {
        let t0 = Instant::now();
        let store = MemoryStore::new(10, 1 << 20, Duration::from_millis(50));
        assert_eq!(store.put_new("k", &answer("a"), t0), None);
        // A new message after the retention starts a new generation; "k" is kept.
        assert_eq!(store.put_new("x", &answer("x"), at(t0, 80)), None);
        assert_eq!(
            store.claim("k", at(t0, 80), LEASE),
            Claim::Answered(answer("a")),
            "kept >= retention"
        );
        assert_eq!(store.put_new("y", &answer("y"), at(t0, 160)), None);
        assert_eq!(store.len(), 2, "the generation holding k is gone");
        assert_eq!(
            store.claim("k", at(t0, 160), LEASE),
            Claim::Won,
            "forgotten after at most twice the retention"
        );
    }

    #[test]
    fn a_full_store_keeps_at_least_the_newest_half() {
        let t0 = Instant::now();
        let store = MemoryStore::new(100, 1 << 20, Duration::from_secs(60));
        for i in 0..1000usize {
            assert_eq!(store.put_new(&format!("m{i}"), &answer("a"), t0), None);
            assert!(store.len() <= 100, "bounded: {}", store.len());
            for j in i.saturating_sub(49)..=i {
                assert!(
                    matches!(store.claim(&format!("m{j}"), t0, LEASE), Claim::Answered(_)),
                    "m{j} at m{i}"
                );
            }
        }
    }

    #[test]
    fn an_answer_known_at_once_loses_to_an_earlier_claim() {
        let t0 = Instant::now();
        let store = MemoryStore::new(10, 1 << 20, Duration::from_secs(60));
        assert_eq!(store.put_new("k", &answer("first"), t0), None);
        assert_eq!(
            store.put_new("k", &answer("second"), t0),
            Some(Claim::Answered(answer("first")))
        );
        assert_eq!(store.claim("p", t0, LEASE), Claim::Won);
        assert_eq!(
            store.put_new("p", &answer("x"), t0),
            Some(Claim::Held { until: t0 + LEASE })
        );
    }

    #[test]
    fn a_running_entry_survives_a_generation_change() {
        let t0 = Instant::now();
        let store = MemoryStore::new(4, 1 << 20, Duration::from_secs(60));
        assert_eq!(store.claim("slow", t0, LEASE), Claim::Won);
        for k in ["a", "b"] {
            assert_eq!(store.claim(k, t0, LEASE), Claim::Won);
        }
        assert!(matches!(store.claim("slow", t0, LEASE), Claim::Held { .. }));
        store.finish("slow", answer("late"), t0);
        assert_eq!(
            store.claim("slow", t0, LEASE),
            Claim::Answered(answer("late"))
        );
    }

    #[test]
    fn is_bounded_in_bytes_too() {
        let t0 = Instant::now();
        // Room for 10 000 entries, but 1 MiB of answers: 100 KB replies turn the
        // generations over long before the entry count does.
        let store = MemoryStore::new(10_000, 1 << 20, Duration::from_secs(60));
        let big = answer(&"x".repeat(100_000));
        for i in 0..100 {
            assert_eq!(store.put_new(&format!("m{i}"), &big, t0), None);
            let held: usize = {
                let g = store.lock();
                g.current
                    .values()
                    .chain(g.previous.values())
                    .map(|e| match e {
                        Entry::Done(a) => a.heap_bytes(),
                        _ => 0,
                    })
                    .sum()
            };
            assert!(held <= (1 << 20) + 100_300, "{held} bytes held after {i}");
        }
        assert_eq!(
            store.claim("m0", t0, LEASE),
            Claim::Won,
            "the oldest went first"
        );
        assert_eq!(store.claim("m99", t0, LEASE), Claim::Answered(big.clone()));
        // Answers that finish late count too.
        let store = MemoryStore::new(10_000, 1 << 20, Duration::from_secs(60));
        for i in 0..100 {
            assert_eq!(store.claim(&format!("p{i}"), t0, LEASE), Claim::Won);
            store.finish(&format!("p{i}"), big.clone(), t0);
        }
        assert!(store.len() < 30, "{} entries", store.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_when_the_answer_is_stored_not_before() {
        let store = Arc::new(MemoryStore::new(10, 1 << 20, Duration::from_secs(60)));
        let t0 = Instant::now();
        assert_eq!(store.claim("k", t0, LEASE), Claim::Won);
        let finisher = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            finisher.finish("k", answer("done"), Instant::now());
        });
        store.wait("k", t0 + LEASE).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(1500),
            "woken by the answer"
        );
        assert_eq!(
            store.claim("k", Instant::now(), LEASE),
            Claim::Answered(answer("done"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_at_its_deadline_without_an_answer() {
        let store = MemoryStore::new(10, 1 << 20, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(store.claim("k", t0, LEASE), Claim::Won);
        store.wait("k", t0 + Duration::from_millis(700)).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(700));
        // Nothing to wait for: an answered or unknown key returns at once.
        store.finish("k", answer("a"), Instant::now());
        let t1 = Instant::now();
        store.wait("k", t1 + LEASE).await;
        store.wait("unknown", t1 + LEASE).await;
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }
}
