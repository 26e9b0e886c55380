//! Tokens rejected a moment ago, so that a client retrying a bad token in a loop costs a hash
//! lookup instead of a key-set lookup and a userinfo call each time.
//!
//! In-process and bounded: the entry lifetime is fixed, so insertion order is expiry order and
//! the oldest entries go first when the bound is reached.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct NegativeCache {
    ttl: Duration,
    capacity: usize,
    until: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl NegativeCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            until: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The rejection reason is not kept: the first rejection was logged with it.
    pub fn contains(&self, key: &str, now: Instant) -> bool {
        self.until.get(key).is_some_and(|until| *until > now)
    }

    pub fn insert(&mut self, key: String, now: Instant) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        self.evict(now);
        while self.until.len() >= self.capacity {
            if !self.pop_oldest() {
                break;
            }
        }
        let until = now + self.ttl;
        self.until.insert(key.clone(), until);
        self.order.push_back((key, until));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.until.len()
    }

    fn evict(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(_, until)| *until <= now) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) -> bool {
        let Some((key, until)) = self.order.pop_front() else {
            return false;
        };
        // A key inserted again later has a newer deadline; only its latest queue entry removes it.
        if self.until.get(&key) == Some(&until) {
            self.until.remove(&key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut c = NegativeCache::new(Duration::from_secs(10), 100);
        c.insert("a".into(), t0);
        assert!(c.contains("a", t0 + Duration::from_secs(9)));
        assert!(!c.contains("a", t0 + Duration::from_secs(10)));
        assert!(!c.contains("b", t0));
        c.insert("b".into(), t0 + Duration::from_secs(11));
        assert_eq!(c.len(), 1, "expired entries are dropped on insert");
    }

    #[test]
    fn bounded_by_capacity_oldest_first() {
        let t0 = Instant::now();
        let mut c = NegativeCache::new(Duration::from_secs(10), 3);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            c.insert(k.into(), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(c.len(), 3);
        assert!(!c.contains("a", t0));
        assert!(c.contains("d", t0));
    }

    #[test]
    fn reinserting_extends_and_is_not_dropped_by_its_old_slot() {
        let t0 = Instant::now();
        let mut c = NegativeCache::new(Duration::from_secs(10), 10);
        c.insert("a".into(), t0);
        c.insert("a".into(), t0 + Duration::from_secs(5));
        c.insert("b".into(), t0 + Duration::from_secs(10));
        assert!(c.contains("a", t0 + Duration::from_secs(14)));
        assert!(!c.contains("a", t0 + Duration::from_secs(15)));
    }

    #[test]
    fn zero_capacity_or_ttl_disables() {
        let t0 = Instant::now();
        let mut c = NegativeCache::new(Duration::from_secs(10), 0);
        c.insert("a".into(), t0);
        assert!(!c.contains("a", t0));
        let mut c = NegativeCache::new(Duration::ZERO, 10);
        c.insert("a".into(), t0);
        assert!(!c.contains("a", t0));
    }
}
