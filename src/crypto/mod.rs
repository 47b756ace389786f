//! Cryptography: JWS/JWK over ring, key files and rotation, argon2 secrets.
pub mod jws;
pub mod keys;
pub mod secrets;

pub use jws::{b64, half_hash, random_token, sha256_b64, Alg, JwsError, SigningKey, Unverified};
pub use keys::{KeyRing, KeySet, KeyStatus};
