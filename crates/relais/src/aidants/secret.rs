//! Encryption at rest of the aidants' TOTP secrets.
//!
//! A secret is stored as `v1:` followed by base64url(nonce || ciphertext),
//! where the ciphertext (with its 16-byte tag) is AES-256-GCM of the base32
//! secret under the deployment's TOTP key, with a random 96-bit nonce and
//! the aidant id as associated data: a row copied to another aidant does
//! not decrypt. The key is the file `{keys_dir}/totp-key` (32 random bytes,
//! base64url, mode 0600, created on first use), shared by every node like
//! the journal salt. Rows written before encryption existed hold the base32
//! secret itself; they are still accepted and re-encrypted on the next
//! write (`relais aidants encrypt-secrets` converts them all at once).

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::fmt;
use std::path::Path;

/// File name of the TOTP key in the server's `keys_dir`.
pub const TOTP_KEY_FILE: &str = "totp-key";

/// Prefix of the current stored format.
const V1: &str = "v1:";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The deployment's key encrypting TOTP secrets (AES-256-GCM).
#[derive(Clone)]
pub struct TotpKey([u8; 32]);

impl fmt::Debug for TotpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpKey(..)")
    }
}

/// How a stored secret was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Encrypted (current format): the base32 secret.
    Encrypted(String),
    /// Stored as is by an older version: the base32 secret, to re-encrypt.
    Plain(String),
}

impl Opened {
    pub fn secret(&self) -> &str {
        match self {
            Opened::Encrypted(s) | Opened::Plain(s) => s,
        }
    }
}

impl TotpKey {
    /// A key from exactly 32 bytes.
    pub fn new(bytes: &[u8]) -> Result<TotpKey, String> {
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the TOTP key must be 32 bytes".to_string())?;
        Ok(TotpKey(key))
    }

    /// Read the key file (base64url), creating it (mode 0600, 32 random
    /// bytes) when missing.
    pub fn load_or_create(path: &Path) -> Result<TotpKey, String> {
        let bytes = super::load_or_create_key_file(path)?;
        TotpKey::new(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key of the deployment whose keys folder is `keys_dir`.
    pub fn in_keys_dir(keys_dir: &Path) -> Result<TotpKey, String> {
        TotpKey::load_or_create(&keys_dir.join(TOTP_KEY_FILE))
    }

    /// The key for a running server, read once at start: created (with a
    /// clear warning) when absent, so that sign-ins never create one later.
    /// Every node must share the same file.
    pub fn at_start(keys_dir: &Path) -> Result<TotpKey, String> {
        let path = keys_dir.join(TOTP_KEY_FILE);
        match std::fs::metadata(&path) {
            Ok(_) => {
                tracing::info!(path = %path.display(), "TOTP key loaded");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "no TOTP key: creating a new one; TOTP secrets encrypted under another key will not decrypt (copy the same totp-key to every node)");
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        TotpKey::load_or_create(&path)
    }

    /// The key next to the journal salt file (same keys folder), for the
    /// pages, which know the salt's path.
    pub fn beside(salt_path: &Path) -> Result<TotpKey, String> {
        TotpKey::load_or_create(&salt_path.with_file_name(TOTP_KEY_FILE))
    }

    /// An HMAC-SHA256 key for `purpose`, derived from this key (HMAC of a
    /// label under it): signing with it never uses the encryption key
    /// itself, and different purposes get unrelated keys.
    pub fn derived_hmac_key(&self, purpose: &str) -> ring::hmac::Key {
        let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let derived = ring::hmac::sign(&master, format!("relais-derive:{purpose}").as_bytes());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
    }

    fn aead(&self) -> Result<LessSafeKey, String> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| "AES-256-GCM key rejected".to_string())
    }

    /// Encrypt a base32 secret for the aidant `aidant_id`: `v1:…`.
    pub fn seal(&self, aidant_id: &str, secret_b32: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| "system random generator unavailable".to_string())?;
        let mut data = secret_b32.as_bytes().to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aidant_id.as_bytes()),
                &mut data,
            )
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{V1}{}", B64.encode(out)))
    }

    /// Read a stored secret of the aidant `aidant_id`: decrypt `v1:…`, or
    /// accept an older plain base32 secret. An encrypted secret that does
    /// not decrypt (another key, another aidant, edited) is an error.
    pub fn open(&self, aidant_id: &str, stored: &str) -> Result<Opened, String> {
        let Some(b64) = stored.strip_prefix(V1) else {
            if stored.contains(':') || super::totp::base32_decode(stored).is_none() {
                return Err("unknown TOTP secret format".into());
            }
            return Ok(Opened::Plain(stored.to_string()));
        };
        let raw = B64
            .decode(b64)
            .map_err(|_| "TOTP secret: not base64url".to_string())?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err("TOTP secret: too short".into());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| "TOTP secret: bad nonce".to_string())?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(aidant_id.as_bytes()), &mut sealed)
            .map_err(|_| {
                "the TOTP secret does not decrypt (another totp-key, or a row moved to another aidant)"
                    .to_string()
            })?;
        let secret =
            String::from_utf8(plain.to_vec()).map_err(|_| "TOTP secret: not text".to_string())?;
        Ok(Opened::Encrypted(secret))
    }

    /// Whether a stored value is in the current encrypted format.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(V1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

    #[test]
    fn seal_open_and_bindings() {
        let key = TotpKey::new(&[3u8; 32]).unwrap();
        let sealed = key.seal("aidant-1", SECRET).unwrap();
        assert!(
            sealed.starts_with("v1:") && !sealed.contains(SECRET),
            "{sealed}"
        );
        assert!(TotpKey::is_sealed(&sealed));
        assert_eq!(
            key.open("aidant-1", &sealed).unwrap(),
            Opened::Encrypted(SECRET.into())
        );
        // A fresh nonce each time.
        assert_ne!(key.seal("aidant-1", SECRET).unwrap(), sealed);
        // Bound to the aidant id and to the key.
        assert!(key.open("aidant-2", &sealed).is_err());
        assert!(TotpKey::new(&[4u8; 32])
            .unwrap()
            .open("aidant-1", &sealed)
            .is_err());
        // Any edit is detected.
        let mut raw = B64.decode(&sealed[3..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(key
            .open("aidant-1", &format!("v1:{}", B64.encode(&raw)))
            .is_err());
        assert!(key.open("aidant-1", "v1:AAAA").is_err());
        assert!(key.open("aidant-1", "v9:AAAA").is_err());
        // Older rows: the base32 secret itself.
        assert_eq!(
            key.open("aidant-1", SECRET).unwrap(),
            Opened::Plain(SECRET.into())
        );
        assert!(key.open("aidant-1", "not base32!").is_err());
        assert!(TotpKey::new(&[1u8; 16]).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir =
            std::env::temp_dir().join(format!("relais-totpkey-{}", crate::crypto::random_token(6)));
        let k1 = TotpKey::in_keys_dir(&dir).unwrap();
        let sealed = k1.seal("a", SECRET).unwrap();
        let k2 = TotpKey::beside(&dir.join(super::super::SALT_FILE)).unwrap();
        assert_eq!(k2.open("a", &sealed).unwrap().secret(), SECRET);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(TOTP_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.join(TOTP_KEY_FILE), "c2hvcnQ").unwrap();
        assert!(TotpKey::in_keys_dir(&dir).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
