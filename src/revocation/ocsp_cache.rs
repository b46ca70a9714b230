//! OCSP answers about client leaves, kept until their nextUpdate so that a
//! client's next connections are answered without asking the responder.
//! Bounded: when full, answers past their time go first, then the one
//! that expires soonest, so a flood of distinct certificates cannot grow
//! memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{CertKey, OcspAnswer};

/// Answers kept at most: far more distinct client certificates than a
/// gateway sees between two nextUpdates, at ~2 KiB each.
pub const CAPACITY: usize = 10_000;

pub struct OcspCache {
    answers: Mutex<HashMap<CertKey, Arc<OcspAnswer>>>,
    capacity: usize,
}

impl Default for OcspCache {
    fn default() -> Self {
        OcspCache::with_capacity(CAPACITY)
    }
}

impl OcspCache {
    pub fn with_capacity(capacity: usize) -> OcspCache {
        OcspCache {
            answers: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The answer about `leaf`, while it is valid at `now`.
    pub fn get(&self, leaf: &CertKey, now: i64) -> Option<Arc<OcspAnswer>> {
        self.lock()
            .get(leaf)
            .filter(|a| a.valid_until_unix > now)
            .cloned()
    }

    pub fn insert(&self, leaf: CertKey, answer: Arc<OcspAnswer>, now: i64) {
        let mut answers = self.lock();
        if answers.len() >= self.capacity && !answers.contains_key(&leaf) {
            answers.retain(|_, a| a.valid_until_unix > now);
            if answers.len() >= self.capacity {
                let soonest = answers
                    .iter()
                    .min_by_key(|(_, a)| a.valid_until_unix)
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    answers.remove(&k);
                }
            }
        }
        answers.insert(leaf, answer);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CertKey, Arc<OcspAnswer>>> {
        self.answers.lock().expect("OCSP cache lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::OcspStatus;

    fn answer(valid_until_unix: i64) -> Arc<OcspAnswer> {
        Arc::new(OcspAnswer {
            status: OcspStatus::Good,
            responder: "http://ocsp".into(),
            this_update_unix: 0,
            valid_until_unix,
            der: Vec::new(),
        })
    }

    #[test]
    fn answers_last_until_their_time_and_the_cache_stays_bounded() {
        let cache = OcspCache::with_capacity(2);
        cache.insert([1; 32], answer(100), 0);
        assert!(cache.get(&[1; 32], 99).is_some(), "valid before nextUpdate");
        assert!(cache.get(&[1; 32], 100).is_none(), "gone at nextUpdate");
        cache.insert([2; 32], answer(50), 0);
        cache.insert([3; 32], answer(200), 0);
        assert_eq!(cache.len(), 2, "full: one answer made room");
        assert!(
            cache.get(&[2; 32], 0).is_none(),
            "the soonest to expire went"
        );
        cache.insert([4; 32], answer(300), 150);
        assert!(cache.get(&[1; 32], 0).is_none(), "expired answers go first");
        assert!(cache.get(&[3; 32], 150).is_some() && cache.get(&[4; 32], 150).is_some());
    }
}
