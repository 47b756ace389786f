//! Stored secrets (client secrets, passwords) as argon2id PHC strings, and a
//! verification cache so the token endpoint pays argon2 once per client and
//! secret, not once per request.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::hmac;
use std::collections::HashSet;
use std::sync::Mutex;

/// Hash a secret as an argon2id PHC string.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "system random generator unavailable".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether a configured value is already a PHC hash.
pub fn is_phc(value: &str) -> bool {
    value.starts_with("$argon2")
}

/// Full argon2 verification (slow by design).
pub fn verify_secret(phc: &str, presented: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(presented.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Remembers successful verifications under an HMAC keyed with a per-process
/// random key, over (client id, stored hash, presented secret). Changing the
/// stored hash changes every entry's key, so a rotated secret never hits. A
/// wrong secret never hits either, so it always costs a full argon2 run.
pub struct VerifiedCache {
    key: hmac::Key,
    seen: Mutex<HashSet<[u8; 32]>>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> VerifiedCache {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, b"relais-fallback-cache-key"));
        VerifiedCache {
            key,
            seen: Mutex::new(HashSet::new()),
            capacity,
        }
    }

    fn tag(&self, client_id: &str, phc: &str, presented: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [client_id, phc, presented] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether this exact (client, stored hash, secret) was verified before.
    pub fn is_cached(&self, client_id: &str, phc: &str, presented: &str) -> bool {
        let tag = self.tag(client_id, phc, presented);
        self.seen.lock().map(|s| s.contains(&tag)).unwrap_or(false)
    }

    /// Remember a successful full verification.
    pub fn remember(&self, client_id: &str, phc: &str, presented: &str) {
        let tag = self.tag(client_id, phc, presented);
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= self.capacity {
                seen.clear();
            }
            seen.insert(tag);
        }
    }

    /// Verify `presented` against `phc`, using the cache when possible.
    /// Returns (valid, cache_hit).
    pub fn verify(&self, client_id: &str, phc: &str, presented: &str) -> (bool, bool) {
        let tag = self.tag(client_id, phc, presented);
        if let Ok(seen) = self.seen.lock() {
            if seen.contains(&tag) {
                return (true, true);
            }
        }
        let ok = verify_secret(phc, presented);
        if ok {
            if let Ok(mut seen) = self.seen.lock() {
                if seen.len() >= self.capacity {
                    seen.clear();
                }
                seen.insert(tag);
            }
        }
        (ok, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_secret("s3cret").unwrap();
        assert!(is_phc(&h));
        assert!(verify_secret(&h, "s3cret"));
        assert!(!verify_secret(&h, "other"));
        assert!(!verify_secret("not a hash", "s3cret"));
    }

    #[test]
    fn cache_hits_only_for_same_secret_and_hash() {
        let cache = VerifiedCache::new(10);
        let h = hash_secret("s3cret").unwrap();
        assert_eq!(cache.verify("c", &h, "s3cret"), (true, false));
        assert_eq!(cache.verify("c", &h, "s3cret"), (true, true));
        assert_eq!(cache.verify("c", &h, "wrong"), (false, false));
        assert_eq!(cache.verify("c", &h, "wrong"), (false, false));
        // Same secret, other client id: not a hit.
        assert_eq!(cache.verify("d", &h, "s3cret"), (true, false));
        // Secret rotated: the new hash never hits the old entry.
        let h2 = hash_secret("s3cret").unwrap();
        assert_eq!(cache.verify("c", &h2, "s3cret"), (true, false));
    }
}
