//! Tokens we already verified, so a client sending the same token again costs one hash and
//! one lookup instead of a signature check. A hit must never accept a token that a fresh
//! verification would now refuse.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::jwks::KeySet;
use super::jwt::{now_unix, Verified};

pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Each entry lives until its token's `exp` and not a moment longer (no clock skew: after
/// `exp` a fresh verification decides, applying the skew itself).
struct UntilExp;

/// Entries are dropped after a day even if `exp` is later: a far-future `exp` must not
/// overflow the cache's clock arithmetic, and re-verifying once a day costs nothing.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn until(exp: u64) -> Duration {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .map_or(MAX_LIFETIME, |at| {
            at.duration_since(SystemTime::now()).unwrap_or_default()
        })
        .min(MAX_LIFETIME)
}

impl Expiry<TokenDigest, Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &Arc<Verified>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(until(value.exp))
    }
}

pub(crate) struct VerifiedCache {
    cache: Cache<TokenDigest, Arc<Verified>>,
}

impl VerifiedCache {
    pub(crate) fn new(max_entries: u64) -> Self {
        VerifiedCache {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// A hit only while the token has not expired and the key that verified it is still in
    /// the current set (a refresh that dropped the key revokes every token it signed).
    pub(crate) async fn get(&self, digest: &TokenDigest, keys: &KeySet) -> Option<Arc<Verified>> {
        let hit = self.cache.get(digest).await?;
        if now_unix() < hit.exp && keys.contains(&hit.key) {
            return Some(hit);
        }
        self.cache.invalidate(digest).await;
        None
    }

    pub(crate) async fn insert(&self, digest: TokenDigest, verified: Verified) {
        // A token accepted only thanks to the clock skew is past `exp` already: not cached.
        if now_unix() < verified.exp {
            self.cache.insert(digest, Arc::new(verified)).await;
        }
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keyset_with(kid: &str) -> (KeySet, [u8; 32]) {
        let doc = json!({"keys": [{"kty": "RSA", "kid": kid, "n": "AQAB", "e": "AQAB"}]});
        let set = KeySet::parse(&doc).unwrap();
        let fp = super::super::jwks::KeyEntry::from_jwk_value(&doc["keys"][0])
            .unwrap()
            .fingerprint;
        (set, fp)
    }

    #[tokio::test]
    async fn hit_requires_unexpired_token_and_present_key() {
        let cache = VerifiedCache::new(10);
        let (set, fp) = keyset_with("a");
        let (other_set, _) = keyset_with("b");
        let d = digest("token");
        let v = Verified {
            subject: "u".into(),
            exp: now_unix() + 60,
            key: fp,
        };
        cache.insert(d, v.clone()).await;
        assert_eq!(cache.get(&d, &set).await.as_deref(), Some(&v));
        // The key was rotated away: a miss, and the entry is gone.
        assert!(cache.get(&d, &other_set).await.is_none());
        assert!(cache.get(&d, &set).await.is_none());

        // Expired (accepted within skew only): never cached.
        let d2 = digest("old");
        cache
            .insert(
                d2,
                Verified {
                    exp: now_unix() - 1,
                    ..v.clone()
                },
            )
            .await;
        assert!(cache.get(&d2, &set).await.is_none());
    }

    #[test]
    fn lifetime_ends_at_exp() {
        let now = now_unix();
        assert!(until(now + 10) <= Duration::from_secs(10));
        assert!(until(now + 10) > Duration::from_secs(8));
        assert_eq!(until(now - 5), Duration::ZERO);
        assert_eq!(until(u64::MAX), MAX_LIFETIME);
    }
}
