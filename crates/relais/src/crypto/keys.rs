//! Signing keys on disk: `keys/<federation>/{active,next,retired}/<alg>-<n>.pem`
//! (PKCS#8 PEM). The JWKS publishes every key (active, next and retired), so a
//! rotation (next -> active -> retired) never invalidates a token in flight.

use super::jws::{generate_pkcs8, pem_decode, pem_encode, Alg, JwsError, SigningKey, Unverified};
use serde_json::json;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyStatus {
    Active,
    Next,
    Retired,
}

impl KeyStatus {
    pub const ALL: [KeyStatus; 3] = [KeyStatus::Active, KeyStatus::Next, KeyStatus::Retired];
    pub fn dir(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Next => "next",
            KeyStatus::Retired => "retired",
        }
    }
}

#[derive(Debug)]
pub enum KeyError {
    Io(PathBuf, std::io::Error),
    BadFile(PathBuf, String),
    Jws(JwsError),
    Missing(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            KeyError::BadFile(p, why) => write!(f, "{}: {why}", p.display()),
            KeyError::Jws(e) => write!(f, "{e}"),
            KeyError::Missing(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for KeyError {}

impl From<JwsError> for KeyError {
    fn from(e: JwsError) -> Self {
        KeyError::Jws(e)
    }
}

#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub status: KeyStatus,
    pub alg: Alg,
    pub kid: String,
    pub file: PathBuf,
}

/// All keys of one federation, loaded once.
pub struct KeySet {
    active: HashMap<Alg, Arc<SigningKey>>,
    by_kid: HashMap<String, Arc<SigningKey>>,
    infos: Vec<KeyInfo>,
    jwks_json: String,
    stamp: String,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.infos).finish()
    }
}

fn key_files(dir: &Path) -> Result<Vec<(KeyStatus, Alg, PathBuf, String)>, KeyError> {
    let mut out = Vec::new();
    for status in KeyStatus::ALL {
        let sub = dir.join(status.dir());
        let rd = match std::fs::read_dir(&sub) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(KeyError::Io(sub, e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| KeyError::Io(sub.clone(), e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".pem") else {
                continue;
            };
            let alg_name = stem.split('-').next().unwrap_or("");
            let alg = Alg::parse(alg_name).ok_or_else(|| {
                KeyError::BadFile(
                    path.clone(),
                    "file name must start with RS256-, ES256- or EdDSA-".into(),
                )
            })?;
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            out.push((status, alg, path, format!("{status:?}/{name}@{modified}")));
        }
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    Ok(out)
}

fn dir_stamp(dir: &Path) -> String {
    match key_files(dir) {
        Ok(files) => files.into_iter().map(|f| f.3).collect::<Vec<_>>().join(";"),
        Err(e) => format!("error:{e}"),
    }
}

impl KeySet {
    pub fn load(dir: &Path) -> Result<KeySet, KeyError> {
        let files = key_files(dir)?;
        let mut active = HashMap::new();
        let mut by_kid = HashMap::new();
        let mut infos = Vec::new();
        let mut jwks = Vec::new();
        let mut stamp = Vec::new();
        for (status, alg, path, s) in files {
            let pem = std::fs::read_to_string(&path).map_err(|e| KeyError::Io(path.clone(), e))?;
            let der = pem_decode("PRIVATE KEY", &pem)
                .ok_or_else(|| KeyError::BadFile(path.clone(), "not a PKCS#8 PEM file".into()))?;
            let key = Arc::new(
                SigningKey::from_pkcs8(alg, &der)
                    .map_err(|e| KeyError::BadFile(path.clone(), e.to_string()))?,
            );
            if status == KeyStatus::Active {
                if active.contains_key(&alg) {
                    return Err(KeyError::BadFile(
                        path,
                        format!("more than one active {alg} key"),
                    ));
                }
                active.insert(alg, key.clone());
            }
            jwks.push(key.public_jwk.clone());
            infos.push(KeyInfo {
                status,
                alg,
                kid: key.kid.clone(),
                file: path,
            });
            by_kid.insert(key.kid.clone(), key);
            stamp.push(s);
        }
        Ok(KeySet {
            active,
            by_kid,
            infos,
            jwks_json: json!({ "keys": jwks }).to_string(),
            stamp: stamp.join(";"),
        })
    }

    /// The active key for `alg`.
    pub fn signer(&self, alg: Alg) -> Option<&Arc<SigningKey>> {
        self.active.get(&alg)
    }

    pub fn active_algs(&self) -> Vec<Alg> {
        let mut v: Vec<Alg> = self.active.keys().copied().collect();
        v.sort();
        v
    }

    /// The published JWK set, serialized once.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    pub fn infos(&self) -> &[KeyInfo] {
        &self.infos
    }

    /// Verify a JWS made by one of our own keys (any status).
    pub fn verify<'a>(&self, jwt: &'a str) -> Result<Unverified<'a>, JwsError> {
        let u = Unverified::parse(jwt)?;
        let alg = u.alg()?;
        let key = u
            .kid()
            .and_then(|k| self.by_kid.get(k))
            .ok_or(JwsError::UnknownKey)?;
        if key.alg != alg {
            return Err(JwsError::AlgMismatch);
        }
        u.verify(&key.public_jwk)?;
        Ok(u)
    }
}

/// A key set shared by request handlers and refreshed when the directory changes
/// (so a rotation made by `relais keys rotate` on one node reaches every node).
pub struct KeyRing {
    dir: PathBuf,
    current: RwLock<Arc<KeySet>>,
    required: Vec<Alg>,
}

impl KeyRing {
    pub fn open(dir: &Path) -> Result<KeyRing, KeyError> {
        Self::open_requiring(dir, &[])
    }

    /// Open, and refuse (now and at every reload) a key set without an active
    /// key for each of `required`.
    pub fn open_requiring(dir: &Path, required: &[Alg]) -> Result<KeyRing, KeyError> {
        let set = KeySet::load(dir)?;
        check_required(&set, dir, required)?;
        Ok(KeyRing {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(set)),
            required: required.to_vec(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reload if the files changed; returns true when a new set was installed.
    pub fn refresh(&self) -> Result<bool, KeyError> {
        let stamp = dir_stamp(&self.dir);
        if stamp == self.get().stamp {
            return Ok(false);
        }
        let set = KeySet::load(&self.dir)?;
        if set.active.is_empty() {
            return Err(KeyError::Missing(format!(
                "{}: no active key after change; keeping the previous keys",
                self.dir.display()
            )));
        }
        check_required(&set, &self.dir, &self.required)?;
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(set),
            Err(p) => *p.into_inner() = Arc::new(set),
        }
        Ok(true)
    }
}

fn check_required(set: &KeySet, dir: &Path, required: &[Alg]) -> Result<(), KeyError> {
    for alg in required {
        if set.signer(*alg).is_none() {
            return Err(KeyError::Missing(format!(
                "{}: no active {alg} key — run `relais keys generate --alg {alg}`",
                dir.display()
            )));
        }
    }
    Ok(())
}

fn write_key(dir: &Path, status: KeyStatus, alg: Alg) -> Result<PathBuf, KeyError> {
    let sub = dir.join(status.dir());
    std::fs::create_dir_all(&sub).map_err(|e| KeyError::Io(sub.clone(), e))?;
    let der = generate_pkcs8(alg)?;
    let key = SigningKey::from_pkcs8(alg, &der)?;
    let now = crate::clock::system_now();
    let short: String = key.kid.chars().take(8).collect();
    let path = sub.join(format!("{alg}-{now}-{short}.pem"));
    let tmp = sub.join(format!(".{alg}-{now}-{short}.tmp"));
    write_private(&tmp, pem_encode("PRIVATE KEY", &der).as_bytes())?;
    std::fs::rename(&tmp, &path).map_err(|e| KeyError::Io(path.clone(), e))?;
    Ok(path)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| KeyError::Io(path.to_path_buf(), e))?;
    f.write_all(data)
        .map_err(|e| KeyError::Io(path.to_path_buf(), e))
}

/// Generate a key with the given status (default: next, or active if none is).
pub fn generate(dir: &Path, alg: Alg, status: Option<KeyStatus>) -> Result<PathBuf, KeyError> {
    let status = match status {
        Some(s) => s,
        None => {
            let has_active = key_files(dir)?
                .iter()
                .any(|(s, a, _, _)| *s == KeyStatus::Active && *a == alg);
            if has_active {
                KeyStatus::Next
            } else {
                KeyStatus::Active
            }
        }
    };
    write_key(dir, status, alg)
}

/// Make sure every algorithm in `algs` has an active and a next key.
pub fn ensure(dir: &Path, algs: &[Alg]) -> Result<Vec<PathBuf>, KeyError> {
    let files = key_files(dir)?;
    let mut made = Vec::new();
    for &alg in algs {
        for status in [KeyStatus::Active, KeyStatus::Next] {
            if !files.iter().any(|(s, a, _, _)| *s == status && *a == alg) {
                made.push(write_key(dir, status, alg)?);
            }
        }
    }
    Ok(made)
}

/// What `rotate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// next -> active, active -> retired, new next.
    Rotated,
    /// There was no next key: one was created (and published) so that the
    /// next rotation can promote it without invalidating anyone's JWKS cache.
    NextCreated,
}

/// Rotate `alg`: retired keys are deleted, active -> retired, next -> active,
/// and a new next key is generated. A key is never made active before it was
/// published as the next key.
pub fn rotate(dir: &Path, alg: Alg) -> Result<Rotation, KeyError> {
    let files = key_files(dir)?;
    let mine = |s: KeyStatus| {
        files
            .iter()
            .filter(move |(st, a, _, _)| *st == s && *a == alg)
            .map(|f| f.2.clone())
    };
    if mine(KeyStatus::Next).next().is_none() {
        write_key(dir, KeyStatus::Next, alg)?;
        return Ok(Rotation::NextCreated);
    }
    for p in mine(KeyStatus::Retired) {
        std::fs::remove_file(&p).map_err(|e| KeyError::Io(p.clone(), e))?;
    }
    let move_to = |p: &PathBuf, status: KeyStatus| -> Result<(), KeyError> {
        let sub = dir.join(status.dir());
        std::fs::create_dir_all(&sub).map_err(|e| KeyError::Io(sub.clone(), e))?;
        let name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        std::fs::rename(p, sub.join(name)).map_err(|e| KeyError::Io(p.clone(), e))
    };
    for p in mine(KeyStatus::Active) {
        move_to(&p, KeyStatus::Retired)?;
    }
    if let Some(p) = mine(KeyStatus::Next).next() {
        move_to(&p, KeyStatus::Active)?;
    }
    write_key(dir, KeyStatus::Next, alg)?;
    Ok(Rotation::Rotated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "relais-keys-{name}-{}",
            crate::crypto::jws::random_token(6)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn ensure_rotate_and_refresh() {
        let dir = tmpdir("rotate");
        ensure(&dir, &[Alg::ES256, Alg::EdDSA]).unwrap();
        let ring = KeyRing::open(&dir).unwrap();
        let before = ring.get();
        let old_active = before.signer(Alg::ES256).unwrap().kid.clone();
        let next_kid = before
            .infos()
            .iter()
            .find(|i| i.status == KeyStatus::Next && i.alg == Alg::ES256)
            .unwrap()
            .kid
            .clone();
        let jwt = before
            .signer(Alg::ES256)
            .unwrap()
            .sign_jwt("JWT", &json!({"a": 1}))
            .unwrap();
        // Four keys published: active + next for two algs.
        let jwks: Value = serde_json::from_str(before.jwks_json()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 4);

        rotate(&dir, Alg::ES256).unwrap();
        assert!(ring.refresh().unwrap());
        let after = ring.get();
        assert_eq!(after.signer(Alg::ES256).unwrap().kid, next_kid);
        // A token signed with the previous active key still verifies (retired).
        assert!(after.verify(&jwt).is_ok());
        assert!(after
            .infos()
            .iter()
            .any(|i| i.kid == old_active && i.status == KeyStatus::Retired));
        // A second rotation drops the retired key: the old token no longer verifies.
        rotate(&dir, Alg::ES256).unwrap();
        ring.refresh().unwrap();
        assert_eq!(ring.get().verify(&jwt).unwrap_err(), JwsError::UnknownKey);
        assert!(!ring.refresh().unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_file_is_reported_with_its_path() {
        let dir = tmpdir("bad");
        std::fs::create_dir_all(dir.join("active")).unwrap();
        std::fs::write(dir.join("active/ES256-1.pem"), "nope").unwrap();
        let err = KeySet::load(&dir).unwrap_err().to_string();
        assert!(err.contains("ES256-1.pem"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
