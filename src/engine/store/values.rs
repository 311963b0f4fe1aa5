//! The memory store's small values (counters, marks, lists), each with its expiry.
//! Bounded: when full, expired entries are dropped; if none are, the oldest-expiring
//! one is.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Counters, values and lists of one process.
pub(super) struct Values {
    map: Mutex<HashMap<String, (Value, Instant)>>,
    capacity: usize,
}

enum Value {
    Count(u64),
    Bytes(Vec<u8>),
    List(VecDeque<String>),
}

impl Values {
    /// At most `capacity` names held.
    pub(super) fn new(capacity: usize) -> Values {
        Values {
            map: Mutex::default(),
            capacity: capacity.max(16),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Value, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live entry `name`, after dropping it if expired.
    fn live<'a>(
        map: &'a mut HashMap<String, (Value, Instant)>,
        name: &str,
        now: Instant,
    ) -> Option<&'a mut (Value, Instant)> {
        if map.get(name).is_some_and(|(_, until)| *until <= now) {
            map.remove(name);
        }
        map.get_mut(name)
    }

    /// Room for one more name.
    fn make_room(&self, map: &mut HashMap<String, (Value, Instant)>, now: Instant) {
        if map.len() < self.capacity {
            return;
        }
        map.retain(|_, (_, until)| *until > now);
        if map.len() >= self.capacity {
            if let Some(first) = map
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| k.clone())
            {
                map.remove(&first);
            }
        }
    }

    /// See [`super::Store::incr`].
    pub(super) fn incr(&self, name: &str, ttl: Duration, now: Instant) -> u64 {
        let mut map = self.lock();
        if let Some((Value::Count(n), _)) = Self::live(&mut map, name, now) {
            *n += 1;
            return *n;
        }
        self.make_room(&mut map, now);
        map.insert(name.to_owned(), (Value::Count(1), now + ttl));
        1
    }

    /// See [`super::Store::get`].
    pub(super) fn get(&self, name: &str, now: Instant) -> Option<Vec<u8>> {
        let mut map = self.lock();
        match Self::live(&mut map, name, now) {
            Some((Value::Bytes(b), _)) => Some(b.clone()),
            _ => None,
        }
    }

    /// See [`super::Store::set`].
    pub(super) fn set(&self, name: &str, value: &[u8], ttl: Duration, now: Instant) {
        let mut map = self.lock();
        if Self::live(&mut map, name, now).is_none() {
            self.make_room(&mut map, now);
        }
        map.insert(name.to_owned(), (Value::Bytes(value.to_vec()), now + ttl));
    }

    /// See [`super::Store::set_new`].
    pub(super) fn set_new(&self, name: &str, value: &[u8], ttl: Duration, now: Instant) -> bool {
        let mut map = self.lock();
        if Self::live(&mut map, name, now).is_some() {
            return false;
        }
        self.make_room(&mut map, now);
        map.insert(name.to_owned(), (Value::Bytes(value.to_vec()), now + ttl));
        true
    }

    /// See [`super::Store::delete`].
    pub(super) fn delete(&self, name: &str) {
        self.lock().remove(name);
    }

    /// See [`super::Store::push`].
    pub(super) fn push(&self, list: &str, item: &str, ttl: Duration, now: Instant) {
        let mut map = self.lock();
        if let Some((Value::List(items), until)) = Self::live(&mut map, list, now) {
            items.push_back(item.to_owned());
            *until = now + ttl;
            return;
        }
        self.make_room(&mut map, now);
        let items = VecDeque::from([item.to_owned()]);
        map.insert(list.to_owned(), (Value::List(items), now + ttl));
    }

    /// See [`super::Store::items`].
    pub(super) fn items(&self, list: &str, max: usize, now: Instant) -> Vec<String> {
        let mut map = self.lock();
        match Self::live(&mut map, list, now) {
            Some((Value::List(items), _)) => items.iter().take(max).cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// See [`super::Store::remove`].
    pub(super) fn remove(&self, list: &str, item: &str, now: Instant) -> bool {
        let mut map = self.lock();
        let Some((Value::List(items), _)) = Self::live(&mut map, list, now) else {
            return false;
        };
        let Some(at) = items.iter().position(|i| i == item) else {
            return false;
        };
        items.remove(at);
        if items.is_empty() {
            map.remove(list);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_values_and_lists_expire_and_stay_bounded() {
        let t0 = Instant::now();
        let v = Values::new(16);
        let ttl = Duration::from_secs(10);
        assert_eq!(v.incr("a", ttl, t0), 1);
        assert_eq!(v.incr("a", ttl, t0), 2);
        assert_eq!(v.incr("a", ttl, t0 + ttl), 1, "expired: counts anew");
        assert!(v.set_new("m", b"x", ttl, t0));
        assert!(!v.set_new("m", b"y", ttl, t0));
        assert_eq!(v.get("m", t0).as_deref(), Some(&b"x"[..]));
        v.set("m", b"z", ttl, t0);
        assert_eq!(v.get("m", t0).as_deref(), Some(&b"z"[..]));
        assert_eq!(v.get("m", t0 + ttl), None);
        v.push("l", "1", ttl, t0);
        v.push("l", "2", ttl, t0);
        v.push("l", "3", ttl, t0);
        assert_eq!(v.items("l", 2, t0), ["1", "2"]);
        assert!(v.remove("l", "2", t0));
        assert!(!v.remove("l", "2", t0), "removed once");
        assert_eq!(v.items("l", 9, t0), ["1", "3"]);
        for i in 0..100 {
            v.set(&format!("k{i}"), b"v", ttl, t0);
        }
        assert!(v.lock().len() <= 16);
    }
}
