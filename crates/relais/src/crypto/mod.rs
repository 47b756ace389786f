//! Cryptography: JWS/JWK over ring, key files and rotation, argon2 secrets.
pub mod gate;
pub mod jws;
pub mod keys;
pub mod secrets;

pub use jws::{b64, half_hash, random_token, sha256_b64, Alg, JwsError, SigningKey, Unverified};
pub use keys::{KeyRing, KeySet, KeyStatus};

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
