//! A bounded least-recently-used cache of runnable plans.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `capacity` values by key; inserting past that drops the least recently used one.
#[derive(Debug)]
pub struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    capacity: usize,
    clock: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Lru { entries: HashMap::new(), capacity: capacity.max(1), clock: 0 }
    }

    /// The value of `key`, marking it used now.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = clock;
            value.clone()
        })
    }

    /// Stores `value` under `key` unless a value is already there (a concurrent build finished
    /// first); returns the value kept and the key dropped to make room, if any.
    pub fn insert(&mut self, key: K, value: V) -> (V, Option<K>) {
        self.clock += 1;
        if let Some((kept, used)) = self.entries.get_mut(&key) {
            *used = self.clock;
            return (kept.clone(), None);
        }
        let mut evicted = None;
        if self.entries.len() >= self.capacity {
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k);
            if let Some(oldest) = oldest.cloned() {
                self.entries.remove(&oldest);
                evicted = Some(oldest);
            }
        }
        self.entries.insert(key, (value.clone(), self.clock));
        (value, evicted)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(v, _)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, (v, _))| (k, v))
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entry_leaves_first() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get(&"a"), Some(1)); // "b" is now the oldest
        let (_, evicted) = lru.insert("c", 3);
        assert_eq!(evicted, Some("b"));
        assert_eq!(lru.get(&"b"), None);
        assert_eq!((lru.get(&"a"), lru.get(&"c")), (Some(1), Some(3)));
        // A second insert of a key keeps the first value (a build that lost the race).
        assert_eq!(lru.insert("a", 9), (1, None));
        assert_eq!(lru.len(), 2);
    }
}
