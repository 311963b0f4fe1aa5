//! The memory store's small values (the API's access token and its refresh lock),
//! each with its expiry.
//! Bounded: when full, expired entries are dropped; if none are, the oldest-expiring
//! one is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Values of one process.
pub(super) struct Values {
    map: Mutex<HashMap<String, (Value, Instant)>>,
    capacity: usize,
}

enum Value {
    Bytes(Vec<u8>),
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

    /// See [`super::Store::get`].
    pub(super) fn get(&self, name: &str, now: Instant) -> Option<Vec<u8>> {
        let mut map = self.lock();
        Self::live(&mut map, name, now).map(|(Value::Bytes(b), _)| b.clone())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expire_and_stay_bounded() {
        let t0 = Instant::now();
        let v = Values::new(16);
        let ttl = Duration::from_secs(10);
        assert!(v.set_new("m", b"x", ttl, t0));
        assert!(!v.set_new("m", b"y", ttl, t0));
        assert_eq!(v.get("m", t0).as_deref(), Some(&b"x"[..]));
        v.set("m", b"z", ttl, t0);
        assert_eq!(v.get("m", t0).as_deref(), Some(&b"z"[..]));
        assert_eq!(v.get("m", t0 + ttl), None);
        assert!(v.set_new("m", b"n", ttl, t0 + ttl), "expired: set anew");
        v.delete("m");
        assert_eq!(v.get("m", t0), None);
        for i in 0..100 {
            v.set(&format!("k{i}"), b"v", ttl, t0);
        }
        assert!(v.lock().len() <= 16);
    }
}
