//! Aidants: professional helpers acting for a citizen (an *usager*) under a
//! recorded mandate.
//!
//! The whole domain lives here:
//! - this file: the data model (organisations, aidants, usagers, mandates
//!   and their per-domain authorisations) and its errors;
//! - [`rules`]: consent text, durations, attestation/revocation hashes,
//!   renewal (pure functions);
//! - `store/`: its SQL (`impl Store` methods, one file per subject), each
//!   action in one transaction with its journal entry;
//! - [`journal`], [`journal_key`]: the tamper-evident journal and its key;
//! - [`totp`], [`secret`]: the aidants' second factor, secrets encrypted at rest;
//! - [`pages`]: the web pages and their router, merged only into citizen
//!   federations;
//! - [`cli`]: `relais aidants …` and `relais journal …`.
//!
//! See `docs/aidants.md`.

pub mod cli;
pub mod journal;
pub mod journal_key;
pub mod pages;
pub mod rules;
pub mod secret;
mod store;
pub mod totp;

pub use secret::TotpKey;

use crate::store::StoreError;
use ring::hmac;
use std::fmt;
use std::path::Path;

/// Procedure domains a mandate may cover when the configuration
/// (`[aidants] domains`) has no list of its own.
pub const DEFAULT_DOMAINS: [&str; 10] = [
    "papiers",
    "famille",
    "social",
    "travail",
    "logement",
    "transports",
    "argent",
    "justice",
    "etranger",
    "loisirs",
];

/// [`DEFAULT_DOMAINS`] as strings.
pub fn default_domains() -> Vec<String> {
    DEFAULT_DOMAINS.iter().map(|d| d.to_string()).collect()
}

/// How long a TOTP enrolment link stays valid, in seconds (72 hours).
pub const ENROLMENT_TTL_SECS: i64 = 72 * 3600;

/// Failed sign-in attempts before an aidant account is locked.
pub const MAX_FAILED_ATTEMPTS: i64 = 5;
/// How long a locked account stays locked, in seconds.
pub const LOCK_SECS: i64 = 15 * 60;
/// Longest mandate, in days.
pub const MAX_DURATION_DAYS: i64 = 366;
/// Shortest accepted aidant password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Whether `d` is a well-formed domain name: 1 to 32 characters among
/// `a-z`, `0-9`, `-` and `_`.
pub fn valid_domain_name(d: &str) -> bool {
    (1..=32).contains(&d.len())
        && d.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Role of an aidant in one organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Creates mandates and acts under them.
    Aidant,
    /// Also manages the organisation's aidants and sees all its mandates.
    Referent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Aidant => "aidant",
            Role::Referent => "referent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "aidant" => Some(Role::Aidant),
            "referent" => Some(Role::Referent),
            _ => None,
        }
    }
}

/// Who performs an action, as recorded in `revoked_by` and the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The operator, through the command line.
    Admin,
    /// An aidant, by id.
    Aidant(String),
    /// An usager, by id.
    Usager(String),
    /// `relais serve` itself (scheduled tasks such as the retention purge).
    System,
}

impl Actor {
    /// `admin:cli`, `aidant:{id}` or `usager:{id}` (ids are random, not
    /// personal data).
    pub fn name(&self) -> String {
        match self {
            Actor::Admin => "admin:cli".to_string(),
            Actor::Aidant(id) => format!("aidant:{id}"),
            Actor::Usager(id) => format!("usager:{id}"),
            Actor::System => "system:serve".to_string(),
        }
    }
}

/// The per-deployment secret salt under which personal fields are hashed in
/// the journal (HMAC-SHA-256). Without it, a hash cannot be linked to a
/// person by guessing; with it, the operator can still check that an entry
/// is about a given person.
#[derive(Clone)]
pub struct Salt(hmac::Key);

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(..)")
    }
}

/// File name of the salt in the server's `keys_dir`.
pub const SALT_FILE: &str = "journal-salt";

impl Salt {
    /// A salt from raw bytes (at least 16).
    pub fn new(bytes: &[u8]) -> Result<Salt, String> {
        if bytes.len() < 16 {
            return Err("the journal salt must be at least 16 bytes".into());
        }
        Ok(Salt(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// Hex HMAC-SHA-256 of a personal value under this salt.
    pub fn hash(&self, value: &str) -> String {
        journal::hex(hmac::sign(&self.0, value.as_bytes()).as_ref())
    }

    /// Read the salt file (base64url), creating it (mode 0600, 32 random
    /// bytes) when missing. Every node of a deployment must share it, like
    /// the key folder it lives in.
    pub fn load_or_create(path: &Path) -> Result<Salt, String> {
        let bytes = load_or_create_key_file(path)?;
        Salt::new(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Read a secret key file (base64url text), creating it with 32 random
/// bytes (mode 0600) when missing. Several processes starting at once agree
/// on one content; a damaged file is an error, never silently replaced.
pub(crate) fn load_or_create_key_file(path: &Path) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    match std::fs::read_to_string(path) {
        Ok(text) => b64
            .decode(text.trim())
            .map_err(|_| format!("{}: not base64url", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| "system random generator unavailable".to_string())?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            // Written to a private temporary file, then linked into place:
            // the link fails if another process won the race, and nobody
            // ever reads a half-written file.
            let tmp = path.with_extension(format!("tmp-{}", crate::crypto::random_token(6)));
            let written = write_private(&tmp, b64.encode(bytes).as_bytes())
                .and_then(|()| std::fs::hard_link(&tmp, path));
            let _ = std::fs::remove_file(&tmp);
            match written {
                Ok(()) => Ok(bytes.to_vec()),
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_key_file(path)
                }
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Create `path` (which must not exist) readable by the owner only.
fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(content)?;
    f.sync_all()
}

/// An organisation (structure habilitée).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organisation {
    pub id: String,
    pub name: String,
    pub siret: String,
    pub active: bool,
    /// Domains its mandates may cover; empty: the deployment's list.
    pub domains: Vec<String>,
    pub created_at: i64,
}

impl Organisation {
    /// The domains its mandates may cover, given the deployment's list
    /// (`[aidants] domains`): its own list within it, or the whole list when
    /// it has none.
    pub fn allowed_domains(&self, deployment: &[String]) -> Vec<String> {
        if self.domains.is_empty() {
            deployment.to_vec()
        } else {
            self.domains
                .iter()
                .filter(|d| deployment.contains(d))
                .cloned()
                .collect()
        }
    }
}

/// An aidant account as stored (without its password hash and TOTP secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aidant {
    pub id: String,
    pub email: String,
    pub name: String,
    pub current_org: Option<String>,
    pub failed_attempts: i64,
    pub locked_until: i64,
    pub totp_last_step: i64,
    pub created_at: i64,
    /// (organisation id, role), sorted by organisation id.
    pub orgs: Vec<(String, Role)>,
}

/// What `create_aidant` needs.
#[derive(Debug, Clone)]
pub struct NewAidant<'a> {
    pub email: &'a str,
    pub name: &'a str,
    pub password: &'a str,
    /// First organisation (becomes the current one).
    pub org_id: &'a str,
    pub role: Role,
}

/// A new aidant: its id and TOTP secret (base32), shown once for enrolment.
#[derive(Debug, Clone)]
pub struct AidantCreated {
    pub id: String,
    pub email: String,
    pub totp_secret: String,
}

impl AidantCreated {
    pub fn otpauth_uri(&self) -> String {
        totp::otpauth_uri(&self.email, &self.totp_secret)
    }
}

/// A one-time TOTP enrolment link issued for an aidant: the token is shown
/// once (only its hash is stored).
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub aidant_id: String,
    pub email: String,
    pub token: String,
    pub expires_at: i64,
}

/// A pending enrolment, as its page shows it.
#[derive(Debug, Clone)]
pub struct PendingEnrolment {
    pub aidant_id: String,
    pub email: String,
    /// The base32 secret to enrol.
    pub totp_secret: String,
    pub expires_at: i64,
}

impl PendingEnrolment {
    pub fn otpauth_uri(&self) -> String {
        totp::otpauth_uri(&self.email, &self.totp_secret)
    }
}

/// A successful aidant sign-in (password and TOTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AidantLogin {
    pub aidant_id: String,
    pub current_org: Option<String>,
    /// The TOTP step just consumed.
    pub totp_step: i64,
}

/// What `create_mandate` needs.
#[derive(Debug, Clone)]
pub struct NewMandate<'a> {
    pub org_id: &'a str,
    pub usager_id: &'a str,
    pub aidant_id: &'a str,
    pub domains: &'a [&'a str],
    pub duration_days: i64,
    pub consent_version: &'a str,
    /// Hash of the consent text shown (hex SHA-256).
    pub consent_hash: &'a str,
}

/// One procedure domain of a mandate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorisation {
    pub id: String,
    pub mandate_id: String,
    pub domain: String,
    pub starts_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
}

impl Authorisation {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.starts_at <= now && now < self.expires_at
    }

    /// `active`, `revoked` or `expired` (or `pending` before it starts).
    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else if now < self.starts_at {
            "pending"
        } else {
            "active"
        }
    }
}

/// A mandate between an organisation and an usager, with its domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mandate {
    pub id: String,
    pub org_id: String,
    pub usager_id: String,
    pub created_by: String,
    pub consent_version: String,
    pub consent_hash: String,
    pub created_at: i64,
    /// Sorted by domain, then start.
    pub authorisations: Vec<Authorisation>,
}

/// Why a mandate operation failed.
#[derive(Debug)]
pub enum MandateError {
    Store(StoreError),
    /// Bad input (message safe to show to the operator or the aidant).
    Invalid(String),
    /// Something referred to does not exist.
    NotFound(&'static str),
    /// Already exists (e.g. the SIRET or the e-mail).
    Conflict(String),
    /// The actor may not do this (e.g. an aidant of another organisation).
    NotAllowed,
}

impl fmt::Display for MandateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MandateError::Store(e) => e.fmt(f),
            MandateError::Invalid(why) => f.write_str(why),
            MandateError::NotFound(what) => write!(f, "{what} not found"),
            MandateError::Conflict(why) => f.write_str(why),
            MandateError::NotAllowed => f.write_str("not allowed"),
        }
    }
}

impl std::error::Error for MandateError {}

impl From<StoreError> for MandateError {
    fn from(e: StoreError) -> Self {
        MandateError::Store(e)
    }
}

impl From<sqlx::Error> for MandateError {
    fn from(e: sqlx::Error) -> Self {
        MandateError::Store(e.into())
    }
}

/// Why an aidant sign-in failed. `Refused` is deliberately the same for an
/// unknown e-mail, a wrong password, a wrong or replayed code and a locked
/// account, so that answers reveal nothing about accounts.
#[derive(Debug)]
pub enum LoginError {
    Refused,
    Store(StoreError),
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Refused => f.write_str("incorrect e-mail, password or code"),
            LoginError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoginError {}

impl From<StoreError> for LoginError {
    fn from(e: StoreError) -> Self {
        LoginError::Store(e)
    }
}

impl From<sqlx::Error> for LoginError {
    fn from(e: sqlx::Error) -> Self {
        LoginError::Store(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_file_is_created_once_private_and_shared() {
        let dir =
            std::env::temp_dir().join(format!("relais-salt-{}", crate::crypto::random_token(6)));
        let path = dir.join(SALT_FILE);
        // Several processes (here threads) starting at once agree on one salt.
        let hashes: Vec<String> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Salt::load_or_create(&path).unwrap().hash("x"))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
        assert_eq!(Salt::load_or_create(&path).unwrap().hash("x"), hashes[0]);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Another deployment's salt gives other hashes.
        let other = dir.join("other");
        assert_ne!(Salt::load_or_create(&other).unwrap().hash("x"), hashes[0]);
        // A damaged file is an error, never silently replaced.
        std::fs::write(&path, "short").unwrap();
        assert!(Salt::load_or_create(&path).is_err());
        std::fs::write(&path, "not base64 !").unwrap();
        assert!(Salt::load_or_create(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn domains_roles_and_authorisation_status() {
        assert!(DEFAULT_DOMAINS.iter().all(|d| valid_domain_name(d)));
        for bad in ["", "Papiers", "pa piers", "é", &"a".repeat(33)] {
            assert!(!valid_domain_name(bad), "{bad:?}");
        }
        for r in [Role::Aidant, Role::Referent] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
        assert_eq!(Actor::Aidant("a1".into()).name(), "aidant:a1");
        assert_eq!(Actor::Usager("u1".into()).name(), "usager:u1");
        let mut a = Authorisation {
            id: "x".into(),
            mandate_id: "m".into(),
            domain: "social".into(),
            starts_at: 100,
            expires_at: 200,
            revoked_at: None,
            revoked_by: None,
        };
        assert_eq!(
            [99, 100, 199, 200].map(|t| (a.is_active(t), a.status(t))),
            [
                (false, "pending"),
                (true, "active"),
                (true, "active"),
                (false, "expired")
            ]
        );
        a.revoked_at = Some(150);
        assert_eq!((a.is_active(120), a.status(120)), (false, "revoked"));
    }
}

/// What the aidant chose before the usager's sign-in.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MandateDraft {
    pub aidant_id: String,
    pub org_id: String,
    pub domains: Vec<String>,
    pub duration_days: i64,
}

/// One use of a mandate at a service (a `mandate_used` journal entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateUse {
    pub at: i64,
    pub mandate_id: String,
    /// The service's client id.
    pub client: String,
    pub domain: String,
}

/// An aidant of an organisation, with their role there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgMember {
    pub aidant_id: String,
    pub email: String,
    pub role: Role,
}
