//! A few seconds' memory of the API tokens this replica has checked, so a
//! request does not read its token from the database before doing its own
//! work (measured: that read halved the API's throughput).
//!
//! The price is staleness: a token revoked, or its record altered, keeps
//! working on a replica that checked it within the last
//! `CAP_API_TOKEN_CACHE_SECS` (default 5; 0 turns the cache off). A token
//! revoked through this replica stops at once here, since revoking clears
//! the cache. An entry never outlives its token's expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tokens remembered at most; past it the memory starts over (a flood of
/// distinct valid tokens is not a workload, and this keeps memory bounded).
const MAX_ENTRIES: usize = 10_000;

/// What a checked token stands for (`V`: the caller), by token.
pub struct TokenCache<V> {
    ttl: Duration,
    /// By token record id (the keyed hash of the secret, never the secret).
    entries: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> TokenCache<V> {
    pub fn new(ttl: Duration) -> TokenCache<V> {
        TokenCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The caller behind `record_id`, while remembered.
    pub fn get(&self, record_id: &str) -> Option<V> {
        let entries = self.entries.lock().expect("token cache");
        match entries.get(record_id) {
            Some((caller, until)) if Instant::now() < *until => Some(caller.clone()),
            _ => None,
        }
    }

    /// Remembers `caller` for the cache's time, or until `token_left` (the
    /// token's remaining lifetime, by the database's clock) if sooner.
    pub fn put(&self, record_id: &str, caller: &V, token_left: Option<Duration>) {
        let keep = token_left.map_or(self.ttl, |left| left.min(self.ttl));
        if keep.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("token cache");
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            record_id.to_string(),
            (caller.clone(), Instant::now() + keep),
        );
    }

    /// Forgets every token: after a revocation through this replica.
    pub fn clear(&self) {
        self.entries.lock().expect("token cache").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(id: &str) -> String {
        id.to_string()
    }

    #[test]
    fn an_entry_lasts_the_shorter_of_the_ttl_and_the_tokens_life() {
        let cache = TokenCache::new(Duration::from_secs(60));
        cache.put("a", &caller("tok_a"), None);
        cache.put("b", &caller("tok_b"), Some(Duration::from_millis(30)));
        cache.put("c", &caller("tok_c"), Some(Duration::ZERO));
        assert_eq!(cache.get("a").unwrap(), "tok_a");
        assert!(cache.get("b").is_some());
        assert!(
            cache.get("c").is_none(),
            "an expired token is not remembered"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(cache.get("b").is_none(), "gone when the token expired");
        assert!(cache.get("a").is_some());
        cache.clear();
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let cache = TokenCache::<String>::new(Duration::ZERO);
        cache.put("a", &caller("tok_a"), None);
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn it_stays_bounded() {
        let cache = TokenCache::new(Duration::from_secs(60));
        for i in 0..MAX_ENTRIES + 5 {
            cache.put(&i.to_string(), &caller("t"), None);
        }
        assert!(cache.entries.lock().unwrap().len() <= MAX_ENTRIES);
        assert!(cache.get(&(MAX_ENTRIES + 4).to_string()).is_some());
    }
}
