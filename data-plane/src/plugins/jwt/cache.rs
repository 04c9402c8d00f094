//! Tokens a verifier has already verified, so a client that sends the same
//! token on every request pays for its base64, its JSON and its signature
//! once (an RS256 or ES256 check costs tens of microseconds).
//!
//! - Only a token whose signature verified **and** whose claims passed is
//!   kept. A forged token never enters, so filling the cache takes tokens
//!   the issuer signed.
//! - It is kept from its second sighting: the first one only leaves the
//!   token's hash in a small direct-mapped table. Tokens used once (a
//!   client that gets a new token per call) would otherwise churn the
//!   cache, and keeping thousands of entries alive made a new token's
//!   check about 2 µs slower in `benches/hot_paths.rs`.
//! - A hit still runs the claim checks (`exp`, `nbf`, issuer, audience,
//!   matchers), so a cached token expires on time.
//! - Each entry remembers the JWKS generation it was verified under; a
//!   fetch that installs new keys makes every older entry miss, so a key
//!   removed from the JWKS stops admitting its tokens at once.
//! - The cache belongs to its [`CompiledVerifier`](super::CompiledVerifier),
//!   which is rebuilt when the verifier's spec changes (new inline keys),
//!   so it never outlives the keys it trusted.
//! - Sixteen shards, each a hash table behind a read-write lock: a hit
//!   takes one shard's read lock (many requests read at once), only a miss
//!   that verifies takes its write lock. Tokens are hashed with a
//!   per-process random key (SipHash) and compared only when the whole
//!   64-bit hash matches, so a client cannot aim a token at a cached one
//!   to time the comparison.
//! - At most [`CAPACITY`] tokens of at most 4 KiB each (longer ones are
//!   verified on every request): when a shard is full, its expired tokens
//!   and those of older keys go, and if that is not enough the shard starts
//!   over (its tokens are verified once more).

use hashbrown::HashTable;
use serde_json::{Map, Value};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Most tokens one verifier keeps.
pub const CAPACITY: usize = 4096;
const SHARDS: usize = 16;
/// Slots of the table of tokens seen once (8 bytes each).
const SEEN: usize = 4096;
/// Longest token kept (a JWT is usually under 2 KiB): with the count, this
/// bounds the cache's memory.
const MAX_TOKEN: usize = 4096;

/// A token that verified, and what the request path reads from it.
pub struct Verified {
    pub claims: Map<String, Value>,
    /// The JWKS generation its signature was checked under.
    generation: u64,
}

struct Entry {
    hash: u64,
    token: Box<str>,
    verified: Arc<Verified>,
}

pub struct TokenCache {
    hasher: RandomState,
    shards: [RwLock<HashTable<Entry>>; SHARDS],
    /// The hash of the last token seen once, per slot.
    seen: Box<[AtomicU64]>,
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache {
            hasher: RandomState::new(),
            shards: Default::default(),
            seen: (0..SEEN).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl TokenCache {
    fn locate(&self, token: &str) -> (u64, &RwLock<HashTable<Entry>>) {
        let hash = self.hasher.hash_one(token);
        // Middle bits pick the shard: the table takes its buckets from the
        // low bits and its 7-bit tags from the top ones.
        (hash, &self.shards[(hash >> 32) as usize % SHARDS])
    }

    /// The verified token, if it is cached under the current keys.
    pub fn get(&self, token: &str, generation: u64) -> Option<Arc<Verified>> {
        let (hash, shard) = self.locate(token);
        let table = shard.read().unwrap_or_else(PoisonError::into_inner);
        table
            .find(hash, |e| e.hash == hash && &*e.token == token)
            .map(|e| &e.verified)
            .filter(|v| v.generation == generation)
            .cloned()
    }

    /// A token that just verified and passed: kept if it was seen before.
    pub fn insert(&self, token: &str, claims: Map<String, Value>, generation: u64, now: f64) {
        if token.len() > MAX_TOKEN {
            return;
        }
        let (hash, shard) = self.locate(token);
        let slot = &self.seen[hash as usize % SEEN];
        if slot.swap(hash, Ordering::Relaxed) != hash {
            return; // the first sighting (or its slot went to another token)
        }
        let verified = Arc::new(Verified { claims, generation });
        let mut table = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Ok(mut old) = table.find_entry(hash, |e| e.hash == hash && &*e.token == token) {
            old.get_mut().verified = verified;
            return;
        }
        if table.len() >= CAPACITY / SHARDS {
            table.retain(|e| {
                e.verified.generation == generation && !expired(&e.verified.claims, now)
            });
            if table.len() >= CAPACITY / SHARDS {
                table.clear();
            }
        }
        table.insert_unique(
            hash,
            Entry {
                hash,
                token: token.into(),
                verified,
            },
            |e| e.hash,
        );
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Whether `exp` has passed (a cached token always had a numeric one or
/// none).
fn expired(claims: &Map<String, Value>, now: f64) -> bool {
    claims
        .get("exp")
        .and_then(Value::as_f64)
        .is_some_and(|exp| now >= exp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn claims(exp: u64) -> Map<String, Value> {
        json!({"sub": "u", "exp": exp}).as_object().unwrap().clone()
    }

    /// Two sightings: the second one keeps the token.
    fn keep(cache: &TokenCache, token: &str, claims: Map<String, Value>, now: f64) {
        cache.insert(token, claims.clone(), 0, now);
        cache.insert(token, claims, 0, now);
    }

    #[test]
    fn tokens_seen_once_are_not_kept() {
        let cache = TokenCache::default();
        for i in 0..3 * SEEN {
            cache.insert(&format!("once{i}"), claims(500), 0, 10.0);
        }
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn long_tokens_are_not_kept() {
        let cache = TokenCache::default();
        let long = "t".repeat(MAX_TOKEN + 1);
        keep(&cache, &long, claims(500), 10.0);
        assert!(cache.get(&long, 0).is_none());
        let fits = "t".repeat(MAX_TOKEN);
        keep(&cache, &fits, claims(500), 10.0);
        assert!(cache.get(&fits, 0).is_some());
    }

    #[test]
    fn hits_only_under_the_same_key_generation() {
        let cache = TokenCache::default();
        assert!(cache.get("a.b.c", 0).is_none());
        cache.insert("a.b.c", claims(100), 0, 10.0);
        assert!(
            cache.get("a.b.c", 0).is_none(),
            "kept from the second sighting"
        );
        cache.insert("a.b.c", claims(100), 0, 10.0);
        assert_eq!(cache.get("a.b.c", 0).unwrap().claims["sub"], "u");
        assert!(cache.get("a.b.c", 1).is_none(), "new keys: verify again");
        assert!(cache.get("a.b.d", 0).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_tokens_first_and_stays_bounded() {
        let cache = TokenCache::default();
        // A quarter of the capacity: about 64 per shard, far from full.
        let live: Vec<String> = (0..CAPACITY / 4).map(|i| format!("live{i}")).collect();
        for t in &live {
            keep(&cache, t, claims(500), 10.0);
        }
        // Enough expired ones to fill every shard many times over.
        for i in 0..10 * CAPACITY {
            keep(&cache, &format!("old{i}"), claims(50), 60.0);
        }
        assert!(cache.len() <= CAPACITY);
        assert!(live.iter().all(|t| cache.get(t, 0).is_some()));

        // Live tokens beyond the capacity: the shards start over.
        for i in 0..3 * CAPACITY {
            keep(&cache, &format!("new{i}"), claims(500), 60.0);
        }
        assert!(cache.len() <= CAPACITY);
        assert!(cache.get(&format!("new{}", 3 * CAPACITY - 1), 0).is_some());
    }
}
