//! The journal signing key, apart from the ID-token keys:
//!
//! ```text
//! {keys_dir}/journal/active.pem        the Ed25519 key that signs heads (PKCS#8, 0600)
//! {keys_dir}/journal/public/{kid}.jwk  the public JWK of every key that ever signed heads
//! ```
//!
//! `relais keys rotate` never touches this folder. `relais journal
//! rotate-key` replaces `active.pem` and keeps the old public JWK, so every
//! head ever signed stays verifiable. A head whose `kid` is not in
//! `public/` fails verification.
//!
//! When the folder is created, the public keys of the federations' current
//! key folders are copied into `public/` too: heads signed before this
//! folder existed (older versions signed them with the citizen
//! federation's ES256 key) stay verifiable after those keys are rotated
//! away.

use crate::crypto::jws::{generate_pkcs8, pem_decode, pem_encode};
use crate::crypto::{Alg, JwsError, KeySet, SigningKey, Unverified};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The journal key folder under `keys_dir`.
pub const JOURNAL_KEY_DIR: &str = "journal";
const ACTIVE: &str = "active.pem";
const PUBLIC: &str = "public";
const ALG: Alg = Alg::EdDSA;

/// `{keys_dir}/journal`.
pub fn dir(keys_dir: &Path) -> PathBuf {
    keys_dir.join(JOURNAL_KEY_DIR)
}

/// The public keys heads may be signed with, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct PublicKeys(BTreeMap<String, Value>);

impl PublicKeys {
    pub fn new() -> PublicKeys {
        PublicKeys::default()
    }

    /// Trust `jwk` (it must have a `kid`).
    pub fn insert(&mut self, jwk: Value) {
        if let Some(kid) = jwk.get("kid").and_then(Value::as_str) {
            self.0.insert(kid.to_string(), jwk);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.0.contains_key(kid)
    }

    /// Verify a compact JWS: its `kid` must be one of these keys, and the
    /// key decides the algorithm.
    pub fn verify<'a>(&self, jws: &'a str) -> Result<Unverified<'a>, JwsError> {
        let u = Unverified::parse(jws)?;
        let jwk = u
            .kid()
            .and_then(|k| self.0.get(k))
            .ok_or(JwsError::UnknownKey)?;
        u.verify(jwk)?;
        Ok(u)
    }

    /// The `public/` folder of a journal key folder (empty when absent).
    fn read_dir(dir: &Path) -> Result<PublicKeys, String> {
        let mut keys = PublicKeys::new();
        let public = dir.join(PUBLIC);
        let rd = match std::fs::read_dir(&public) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(format!("{}: {e}", public.display())),
        };
        for entry in rd {
            let path = entry
                .map_err(|e| format!("{}: {e}", public.display()))?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("jwk") {
                continue;
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let jwk: Value = serde_json::from_str(&text)
                .map_err(|_| format!("{}: not a JSON Web Key", path.display()))?;
            let kid = crate::crypto::jws::thumbprint(&jwk)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if jwk.get("kid").and_then(Value::as_str) != Some(kid.as_str()) {
                return Err(format!(
                    "{}: its kid is not its RFC 7638 thumbprint",
                    path.display()
                ));
            }
            keys.insert(jwk);
        }
        Ok(keys)
    }
}

/// The journal key: the active signer and every public key ever used.
pub struct JournalKey {
    pub signer: Arc<SigningKey>,
    pub public: PublicKeys,
    pub dir: PathBuf,
}

impl std::fmt::Debug for JournalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalKey")
            .field("kid", &self.signer.kid)
            .field("public", &self.public.len())
            .finish()
    }
}

fn load_signer(path: &Path) -> Result<SigningKey, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let der = pem_decode("PRIVATE KEY", &pem)
        .ok_or_else(|| format!("{}: not a PKCS#8 PEM file", path.display()))?;
    SigningKey::from_pkcs8(ALG, &der).map_err(|e| format!("{}: {e}", path.display()))
}

/// Write `content` to `path` through a temporary file and a rename
/// (readers never see half a file; the same content written twice is fine).
fn write_public(path: &Path, content: &str) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp-{}", crate::crypto::random_token(6)));
    let r = std::fs::write(&tmp, content).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(|e| format!("{}: {e}", path.display()))
}

fn public_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(PUBLIC).join(format!("{kid}.jwk"))
}

fn record_public(dir: &Path, jwk: &Value) -> Result<(), String> {
    let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
        return Err("a public key without kid".into());
    };
    let path = public_path(dir, kid);
    if path.exists() {
        return Ok(());
    }
    let public = dir.join(PUBLIC);
    std::fs::create_dir_all(&public).map_err(|e| format!("{}: {e}", public.display()))?;
    write_public(&path, &format!("{jwk}\n"))
}

/// A fresh PKCS#8 key, written to a private temporary file in `dir`.
fn new_key_file(dir: &Path) -> Result<(PathBuf, SigningKey), String> {
    let der = generate_pkcs8(ALG).map_err(|e| e.to_string())?;
    let key = SigningKey::from_pkcs8(ALG, &der).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".key-{}.tmp", crate::crypto::random_token(6)));
    super::write_private(&tmp, pem_encode("PRIVATE KEY", &der).as_bytes())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    Ok((tmp, key))
}

impl JournalKey {
    /// Load the journal key of `keys_dir` (it must exist). The active key's
    /// public JWK is added to `public/` if it is missing there (for example
    /// after `active.pem` was restored from a backup).
    pub fn load(keys_dir: &Path) -> Result<JournalKey, String> {
        let dir = dir(keys_dir);
        let path = dir.join(ACTIVE);
        let signer = load_signer(&path)?;
        record_public(&dir, &signer.public_jwk)?;
        let mut public = PublicKeys::read_dir(&dir)?;
        public.insert(signer.public_jwk.clone());
        Ok(JournalKey {
            signer: Arc::new(signer),
            public,
            dir,
        })
    }

    /// Load the journal key, creating it first when `{keys_dir}/journal/`
    /// has none. At creation, the public keys found in `legacy_dirs` (the
    /// federations' key folders) are recorded in `public/` as well. Several
    /// processes starting at once agree on one key.
    pub fn load_or_create(keys_dir: &Path, legacy_dirs: &[PathBuf]) -> Result<JournalKey, String> {
        let dir = dir(keys_dir);
        let path = dir.join(ACTIVE);
        match std::fs::metadata(&path) {
            Ok(_) => return JournalKey::load(keys_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for jwk in legacy_public_keys(legacy_dirs)? {
            record_public(&dir, &jwk)?;
        }
        let (tmp, key) = new_key_file(&dir)?;
        // Its public key is recorded before it can sign anything.
        let recorded = record_public(&dir, &key.public_jwk);
        // The link fails if another process created the key first.
        let linked = recorded.and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(format!("{}: {e}", path.display())),
        });
        let _ = std::fs::remove_file(&tmp);
        if !linked? {
            // Never used: not a key that "ever signed".
            let _ = std::fs::remove_file(public_path(&dir, &key.kid));
        } else {
            tracing::info!(path = %path.display(), kid = %key.kid, "journal signing key created");
        }
        JournalKey::load(keys_dir)
    }

    /// Replace the active key by a new one; the old public key stays in
    /// `public/`. Returns (old kid, new kid).
    pub fn rotate(keys_dir: &Path) -> Result<(String, String), String> {
        let old = JournalKey::load(keys_dir)?;
        let (tmp, key) = new_key_file(&old.dir)?;
        let path = old.dir.join(ACTIVE);
        let r = record_public(&old.dir, &key.public_jwk).and_then(|()| {
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        Ok((old.signer.kid.clone(), key.kid))
    }
}

/// The public keys of the key sets in `dirs` (folders that do not load are
/// skipped).
fn legacy_public_keys(dirs: &[PathBuf]) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for d in dirs {
        if let Ok(set) = KeySet::load(d) {
            let jwks: Value = serde_json::from_str(set.jwks_json())
                .map_err(|e| format!("{}: {e}", d.display()))?;
            if let Some(keys) = jwks.get("keys").and_then(Value::as_array) {
                out.extend(keys.iter().cloned());
            }
        }
    }
    Ok(out)
}

/// The keys `relais journal verify` trusts, read only: `public/` (and the
/// active key), or, while the journal key folder does not exist yet, the
/// public keys of `legacy_dirs` (what its creation will record).
pub fn trusted_keys(keys_dir: &Path, legacy_dirs: &[PathBuf]) -> Result<PublicKeys, String> {
    let dir = dir(keys_dir);
    if !dir.exists() {
        let mut keys = PublicKeys::new();
        for jwk in legacy_public_keys(legacy_dirs)? {
            keys.insert(jwk);
        }
        return Ok(keys);
    }
    let mut keys = PublicKeys::read_dir(&dir)?;
    match load_signer(&dir.join(ACTIVE)) {
        Ok(k) => keys.insert(k.public_jwk.clone()),
        Err(_) if !dir.join(ACTIVE).exists() => {}
        Err(e) => return Err(e),
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "relais-journal-key-{name}-{}",
            crate::crypto::random_token(6)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn created_once_rotated_and_old_public_keys_kept() {
        let keys_dir = tmpdir("create");
        let fed = keys_dir.join("citizen");
        crate::crypto::keys::generate(&fed, Alg::ES256, None).unwrap();
        let fed_kid = KeySet::load(&fed)
            .unwrap()
            .signer(Alg::ES256)
            .unwrap()
            .kid
            .clone();
        // Nothing exists yet: verification trusts what creation will record.
        let before = trusted_keys(&keys_dir, std::slice::from_ref(&fed)).unwrap();
        assert!(before.contains(&fed_kid) && before.len() == 1);

        let k = JournalKey::load_or_create(&keys_dir, std::slice::from_ref(&fed)).unwrap();
        assert_eq!(k.signer.alg, Alg::EdDSA);
        assert!(k.public.contains(&k.signer.kid) && k.public.contains(&fed_kid));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys_dir.join("journal/active.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Loaded again, not replaced.
        let again = JournalKey::load_or_create(&keys_dir, &[]).unwrap();
        assert_eq!(again.signer.kid, k.signer.kid);
        let jws = k.signer.sign_jwt("t", &json!({"a": 1})).unwrap();

        let (old, new) = JournalKey::rotate(&keys_dir).unwrap();
        assert_eq!(old, k.signer.kid);
        let after = JournalKey::load(&keys_dir).unwrap();
        assert_eq!(after.signer.kid, new);
        // The old key's signatures still verify; a stranger's do not.
        let trusted = trusted_keys(&keys_dir, &[]).unwrap();
        assert!(trusted.verify(&jws).is_ok());
        assert_eq!(trusted.len(), 3);
        let stranger = tmpdir("stranger");
        let s = JournalKey::load_or_create(&stranger, &[]).unwrap();
        let forged = s.signer.sign_jwt("t", &json!({"a": 1})).unwrap();
        assert_eq!(trusted.verify(&forged).unwrap_err(), JwsError::UnknownKey);
        // Its kid with another key's signature.
        let (_, rest) = forged.split_once('.').unwrap();
        let header = crate::crypto::b64(
            json!({"alg": "EdDSA", "kid": new, "typ": "t"})
                .to_string()
                .as_bytes(),
        );
        let relabelled = format!("{header}.{rest}");
        assert_eq!(
            trusted.verify(&relabelled).unwrap_err(),
            JwsError::BadSignature
        );
        // A public key file whose kid lies is refused.
        std::fs::write(
            keys_dir.join("journal/public/x.jwk"),
            json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": new}).to_string(),
        )
        .unwrap();
        assert!(trusted_keys(&keys_dir, &[]).unwrap_err().contains("x.jwk"));
        std::fs::remove_dir_all(&keys_dir).ok();
        std::fs::remove_dir_all(&stranger).ok();
    }
}
