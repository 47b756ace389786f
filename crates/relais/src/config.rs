//! Configuration: one TOML file, overlaid by `RELAIS__SECTION__KEY` environment
//! variables, with unknown fields rejected and every rule checked at start.

use crate::crypto::Alg;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub federations: BTreeMap<String, FederationConfig>,
    #[serde(default)]
    pub aidants: AidantsConfig,
}

/// `[aidants]`: the aidants feature (see `docs/aidants.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AidantsConfig {
    /// Days after the end of an usager's last mandate before
    /// `relais aidants purge` removes their personal data (default 1825,
    /// five years).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Seconds between two automatic signatures of the journal head by
    /// `relais serve` (only when the journal grew); 0 turns it off.
    #[serde(default = "default_journal_head_interval")]
    pub journal_head_interval_secs: u64,
    /// External append-only file each head signed by `relais serve` (and
    /// `relais journal sign-head`) is appended to, one JWS per line, for
    /// `relais journal verify --heads`. Meant to be shipped to, or to live
    /// on, another system. None: heads are only stored in the database.
    #[serde(default)]
    pub journal_heads_file: Option<PathBuf>,
    /// Seconds between two retention purges run by `relais serve` (with
    /// `retention_days`); 0 turns them off (then run `relais aidants purge`
    /// from cron).
    #[serde(default = "default_purge_usagers_interval")]
    pub purge_usagers_interval_secs: u64,
    /// Procedure domains mandates may cover (organisations may restrict
    /// them further; services' `delegation_domains` must be among them).
    #[serde(default = "default_domains")]
    pub domains: Vec<String>,
}

impl Default for AidantsConfig {
    fn default() -> Self {
        AidantsConfig {
            retention_days: default_retention_days(),
            journal_head_interval_secs: default_journal_head_interval(),
            journal_heads_file: None,
            purge_usagers_interval_secs: default_purge_usagers_interval(),
            domains: default_domains(),
        }
    }
}

/// Longest interval between automatic journal head signatures (31 days).
pub const MAX_JOURNAL_HEAD_INTERVAL_SECS: u64 = 31 * 86_400;

fn default_retention_days() -> u32 {
    1825
}
fn default_journal_head_interval() -> u64 {
    3600
}
fn default_purge_usagers_interval() -> u64 {
    86_400
}
fn default_domains() -> Vec<String> {
    crate::aidants::DEFAULT_DOMAINS
        .iter()
        .map(|d| d.to_string())
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. "127.0.0.1:8080".
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Public base URL (scheme://host[:port]) the browser and services use.
    pub public_url: String,
    /// `sqlite://path` (created if missing) or `postgres://…`.
    #[serde(default = "default_db")]
    pub database_url: String,
    #[serde(default = "default_pool")]
    pub database_max_connections: u32,
    /// Root of the key folders; each federation uses `<keys_dir>/<federation id>`.
    #[serde(default = "default_keys_dir")]
    pub keys_dir: PathBuf,
    /// PEM certificate chain and key: when both are set Relais serves HTTPS itself.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Trust `X-Forwarded-For` / `X-Forwarded-Proto` (only behind a proxy you run).
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    /// "text" or "json".
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Seconds between two purges of expired rows.
    #[serde(default = "default_purge")]
    pub purge_interval_secs: u64,
    /// Timeout of HTTP calls toward upstream providers, in milliseconds.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_ms: u64,
    /// Seconds a client has to send a complete request head (request line
    /// and headers), and to finish the TLS handshake.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Seconds without a byte read or written after which a connection is
    /// closed (idle keep-alive, stalled body, response not read).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Connections served at once; past it new ones get a `503` at once.
    /// Default: half of the open files limit left after a reserve of 256.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_db() -> String {
    "sqlite://relais.db".into()
}
fn default_pool() -> u32 {
    16
}
fn default_keys_dir() -> PathBuf {
    PathBuf::from("keys")
}
fn default_log_format() -> String {
    "text".into()
}
fn default_purge() -> u64 {
    60
}
fn default_upstream_timeout() -> u64 {
    5000
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Citizens: pivot identity, provider choice page (FranceConnect).
    #[default]
    Citizen,
    /// Public agents: email-first routing, agent claims (ProConnect).
    Agent,
}

impl Profile {
    pub fn scopes(self) -> &'static [&'static str] {
        match self {
            Profile::Citizen => CITIZEN_SCOPES,
            Profile::Agent => AGENT_SCOPES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RegistryKind {
    #[default]
    None,
    Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// Issuer URL; its path (if any) is where this federation's endpoints live.
    pub issuer: String,
    #[serde(default)]
    pub profile: Profile,
    /// Display name on pages.
    #[serde(default = "default_fed_name")]
    pub name: String,
    /// Secret for pairwise subjects (at least 32 characters). Changing it changes every `sub`.
    pub pairwise_secret: String,
    #[serde(default = "yes")]
    pub nonce_required: bool,
    #[serde(default = "default_nonce_min")]
    pub nonce_min_length: usize,
    /// Assurance levels, weakest first.
    #[serde(default = "default_acr_values")]
    pub acr_values: Vec<String>,
    #[serde(default = "default_access_ttl")]
    pub access_token_ttl_secs: i64,
    #[serde(default = "default_id_ttl")]
    pub id_token_ttl_secs: i64,
    #[serde(default = "default_code_ttl")]
    pub code_ttl_secs: i64,
    /// Broker (SSO) session lifetime.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: i64,
    /// Time to complete a sign-in (choice page, upstream, consent).
    #[serde(default = "default_interaction_ttl")]
    pub interaction_ttl_secs: i64,
    #[serde(default)]
    pub registry: RegistryKind,
    /// Algorithms with keys in this federation's key folder (default RS256, ES256, EdDSA).
    #[serde(default = "default_algs")]
    pub signing_algs: Vec<String>,
    #[serde(default)]
    pub theme: Theme,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Agent profile: provider used when no provider's domains match the email.
    pub default_provider: Option<String>,
    /// First acr value that means multi-factor authentication (agent profile);
    /// asking for it or above forces a fresh upstream sign-in.
    pub mfa_acr: Option<String>,
    /// Cooldown between two JWKS refetches of one upstream on an unknown kid.
    #[serde(default = "default_jwks_cooldown")]
    pub jwks_refetch_cooldown_secs: u64,
}

fn yes() -> bool {
    true
}
fn default_fed_name() -> String {
    "Relais".into()
}
fn default_nonce_min() -> usize {
    22
}
fn default_acr_values() -> Vec<String> {
    vec!["eidas1".into(), "eidas2".into(), "eidas3".into()]
}
fn default_access_ttl() -> i64 {
    60
}
fn default_id_ttl() -> i64 {
    60
}
fn default_code_ttl() -> i64 {
    60
}
fn default_session_ttl() -> i64 {
    1800
}
fn default_interaction_ttl() -> i64 {
    900
}
fn default_algs() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_jwks_cooldown() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Theme {
    pub logo_url: Option<String>,
    pub primary_color: Option<String>,
    pub extra_css: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAuth {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub id: String,
    pub name: String,
    /// Issuer; endpoints are discovered from `/.well-known/openid-configuration`
    /// unless all of authorization/token/jwks endpoints are given.
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub end_session_endpoint: Option<String>,
    /// Refuse a callback without `iss` (RFC 9207). Discovered providers
    /// that advertise `authorization_response_iss_parameter_supported` always
    /// have it required; this setting is for providers configured with
    /// explicit endpoints (or to require it of a provider that sends `iss`
    /// without advertising it).
    #[serde(default)]
    pub require_iss: bool,
    pub client_id: String,
    pub client_secret: Option<String>,
    #[serde(default = "default_upstream_auth")]
    pub auth_method: UpstreamAuth,
    /// For private_key_jwt: signing algorithm of the assertion (key from this federation's keys).
    pub assertion_alg: Option<String>,
    #[serde(default = "default_provider_scopes")]
    pub scopes: Vec<String>,
    /// Levels this provider can deliver (a subset of the federation's acr values).
    #[serde(default = "default_provider_acr")]
    pub acr_values: Vec<String>,
    #[serde(default)]
    pub order: i32,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default = "yes")]
    pub display: bool,
    /// Only these clients may use this provider (empty: all).
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    /// These clients may not use this provider.
    #[serde(default)]
    pub denied_clients: Vec<String>,
    /// Agent profile: email domains attached to this provider
    /// (`exact.fr` or `*.sub.fr` patterns), used for email-first routing.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Agent profile: other domains this provider may vouch for (not routed).
    #[serde(default)]
    pub extra_domains: Vec<String>,
    /// Agent profile: an email outside the provider's domains is refused
    /// (`refuse`, default) or accepted and logged (`log`).
    #[serde(default)]
    pub domain_mismatch: DomainMismatch,
    /// Agent profile: SIRET used when the provider sends an invalid one
    /// (without it, an invalid SIRET is refused).
    pub default_siret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DomainMismatch {
    #[default]
    Refuse,
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubjectType {
    #[default]
    Pairwise,
    Public,
}

/// A provider id: it names the provider's redirect URI
/// (`{issuer}/callback/{id}`), so letters, digits, `-` and `_` only.
pub fn valid_provider_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn default_upstream_auth() -> UpstreamAuth {
    UpstreamAuth::ClientSecretBasic
}
fn default_provider_scopes() -> Vec<String> {
    vec!["openid".into(), "identite_pivot".into(), "email".into()]
}
fn default_provider_acr() -> Vec<String> {
    vec!["eidas1".into()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    None,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
            ClientAuthMethod::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// Public-sector service: information page only.
    #[default]
    Public,
    /// Private service: explicit consent checkbox.
    Private,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    pub name: String,
    /// argon2id PHC string; plaintext accepted (hashed on load) and warned about.
    pub client_secret: Option<String>,
    #[serde(default = "default_client_auth")]
    pub token_endpoint_auth_method: ClientAuthMethod,
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default = "default_client_scopes")]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub kind: ClientKind,
    /// Sector identifier for pairwise subjects (default: host of the first redirect URI).
    pub sector_identifier: Option<String>,
    pub id_token_signed_response_alg: Option<String>,
    pub userinfo_signed_response_alg: Option<String>,
    /// `pairwise` (default) or `public` (agent profile: the account's public id).
    #[serde(default)]
    pub subject_type: SubjectType,
    /// private_key_jwt: inline JWK set (JSON text) or a jwks_uri.
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    /// private_key_jwt: also accept the token endpoint URL as the assertion's
    /// `aud` (older client libraries send it). Off: only the issuer, as a
    /// single string.
    #[serde(default)]
    pub assertion_audience_token_endpoint: bool,
    /// Procedure domains for which this service accepts an aidant acting for
    /// an usager under a mandate (citizen profile). Empty: no delegation.
    #[serde(default)]
    pub delegation_domains: Vec<String>,
}

fn default_client_auth() -> ClientAuthMethod {
    ClientAuthMethod::ClientSecretBasic
}
fn default_client_scopes() -> Vec<String> {
    vec!["openid".into()]
}

#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Scopes of the agent profile (one per claim; `phone` releases `phone_number`).
pub const AGENT_SCOPES: &[&str] = &[
    "openid",
    "given_name",
    "usual_name",
    "email",
    "uid",
    "siret",
    "siren",
    "organizational_unit",
    "belonging_population",
    "phone",
    "idp_id",
    "idp_acr",
    "amr",
    "custom",
];

/// Scopes Relais knows for the citizen profile.
pub const CITIZEN_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "birth",
    "identite_pivot",
    "email",
    "given_name",
    "family_name",
    "birthdate",
    "gender",
    "birthplace",
    "birthcountry",
    "preferred_username",
    "idp_id",
    "amr",
];

impl Config {
    /// Parse TOML text, apply the environment overlay, validate.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError(vec![format!("TOML: {e}")]))?;
        apply_env(&mut value, env).map_err(|e| ConfigError(vec![e]))?;
        let config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(vec![e.to_string()]))?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?;
        Self::from_toml_with_env(&text, std::env::vars())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if url::Url::parse(&self.server.public_url).is_err() {
            errs.push(format!(
                "server.public_url {:?} is not a URL",
                self.server.public_url
            ));
        }
        if !(self.server.database_url.starts_with("sqlite:")
            || self.server.database_url.starts_with("postgres://")
            || self.server.database_url.starts_with("postgresql://"))
        {
            errs.push("server.database_url must start with sqlite: or postgres://".into());
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            errs.push("server.tls_cert and server.tls_key go together".into());
        }
        if self.server.header_read_timeout_secs == 0 || self.server.idle_timeout_secs == 0 {
            errs.push(
                "server.header_read_timeout_secs and server.idle_timeout_secs must be at least 1"
                    .into(),
            );
        }
        if self.server.max_connections == Some(0) {
            errs.push("server.max_connections must be at least 1".into());
        }
        if !["text", "json"].contains(&self.server.log_format.as_str()) {
            errs.push("server.log_format must be \"text\" or \"json\"".into());
        }
        if self.federations.is_empty() {
            errs.push("at least one [federations.<id>] is required".into());
        }
        let a = &self.aidants;
        if !(1..=36_500).contains(&a.retention_days) {
            errs.push("aidants.retention_days must be 1 to 36500".into());
        }
        if a.purge_usagers_interval_secs > MAX_JOURNAL_HEAD_INTERVAL_SECS {
            errs.push(format!(
                "aidants.purge_usagers_interval_secs must be at most {MAX_JOURNAL_HEAD_INTERVAL_SECS} (31 days)"
            ));
        }
        if a.journal_head_interval_secs > MAX_JOURNAL_HEAD_INTERVAL_SECS {
            errs.push(format!(
                "aidants.journal_head_interval_secs must be at most {MAX_JOURNAL_HEAD_INTERVAL_SECS} (31 days)"
            ));
        }
        if a.journal_heads_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            errs.push("aidants.journal_heads_file: empty path".into());
        }
        if a.domains.is_empty() {
            errs.push("aidants.domains: at least one domain".into());
        }
        let mut seen_domains = std::collections::HashSet::new();
        for d in &a.domains {
            if !crate::aidants::valid_domain_name(d) {
                errs.push(format!(
                    "aidants.domains: {d:?} is not a lowercase slug (1 to 32 of a-z, 0-9, - and _)"
                ));
            }
            if !seen_domains.insert(d) {
                errs.push(format!("aidants.domains: {d:?} twice"));
            }
        }
        let mut prefixes = Vec::new();
        for (id, f) in &self.federations {
            let at = |s: &str| format!("federations.{id}.{s}");
            if !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                errs.push(format!(
                    "federation id {id:?}: letters, digits, - and _ only"
                ));
            }
            if id == crate::aidants::journal_key::JOURNAL_KEY_DIR {
                errs.push(format!(
                    "federation id {id:?} is reserved (its key folder would be the journal key's)"
                ));
            }
            match url::Url::parse(&f.issuer) {
                Ok(u) => {
                    if u.query().is_some() || u.fragment().is_some() {
                        errs.push(format!("{}: no query or fragment", at("issuer")));
                    }
                    prefixes.push((id.clone(), u.path().trim_end_matches('/').to_string()));
                }
                Err(_) => errs.push(format!("{} {:?} is not a URL", at("issuer"), f.issuer)),
            }
            if f.issuer.ends_with('/') {
                errs.push(format!("{}: no trailing slash", at("issuer")));
            }
            if f.pairwise_secret.len() < 32 {
                errs.push(format!("{}: at least 32 characters", at("pairwise_secret")));
            }
            if f.acr_values.is_empty() {
                errs.push(format!("{}: at least one level", at("acr_values")));
            }
            for a in &f.signing_algs {
                if Alg::parse(a).is_none() {
                    errs.push(format!(
                        "{}: {a:?} is not one of RS256, ES256, EdDSA",
                        at("signing_algs")
                    ));
                }
            }
            for (n, v) in [
                ("access_token_ttl_secs", f.access_token_ttl_secs),
                ("id_token_ttl_secs", f.id_token_ttl_secs),
                ("session_ttl_secs", f.session_ttl_secs),
                ("interaction_ttl_secs", f.interaction_ttl_secs),
            ] {
                if v <= 0 {
                    errs.push(format!("{}: must be positive", at(n)));
                }
            }
            if f.code_ttl_secs <= 0 || f.code_ttl_secs > 60 {
                errs.push(format!("{}: between 1 and 60 seconds", at("code_ttl_secs")));
            }
            if let Some(d) = f.default_provider.as_ref().filter(|d| !d.is_empty()) {
                if !f.providers.iter().any(|p| &p.id == d) {
                    errs.push(format!("{}: no provider {d:?}", at("default_provider")));
                }
            }
            if let Some(m) = &f.mfa_acr {
                if !f.acr_values.contains(m) {
                    errs.push(format!("{}: {m:?} is not in acr_values", at("mfa_acr")));
                }
            }
            let mut seen = std::collections::HashSet::new();
            for p in &f.providers {
                let at = |s: &str| format!("federations.{id}.providers[{}].{s}", p.id);
                if !seen.insert(&p.id) {
                    errs.push(format!("federations.{id}: provider id {:?} twice", p.id));
                }
                // The id is a path segment of the provider's redirect URI.
                if !valid_provider_id(&p.id) {
                    errs.push(format!(
                        "federations.{id}: provider id {:?}: 1 to 64 letters, digits, '-' or '_'",
                        p.id
                    ));
                }
                if url::Url::parse(&p.issuer).is_err() {
                    errs.push(format!("{}: not a URL", at("issuer")));
                }
                for a in &p.acr_values {
                    if !f.acr_values.contains(a) {
                        errs.push(format!(
                            "{}: {a:?} is not in the federation's acr_values",
                            at("acr_values")
                        ));
                    }
                }
                if !p.scopes.iter().any(|s| s == "openid") {
                    errs.push(format!("{}: must include openid", at("scopes")));
                }
                match p.auth_method {
                    UpstreamAuth::ClientSecretBasic | UpstreamAuth::ClientSecretPost => {
                        if p.client_secret.is_none() {
                            errs.push(format!(
                                "{}: required for this auth_method",
                                at("client_secret")
                            ));
                        }
                    }
                    UpstreamAuth::PrivateKeyJwt => {
                        let alg = p.assertion_alg.as_deref().unwrap_or("RS256");
                        if !f.signing_algs.iter().any(|a| a == alg) {
                            errs.push(format!(
                                "{}: {alg} has no key in this federation",
                                at("assertion_alg")
                            ));
                        }
                    }
                }
            }
            let mut seen = std::collections::HashSet::new();
            for c in &f.clients {
                let at = |s: &str| format!("federations.{id}.clients[{}].{s}", c.client_id);
                if !seen.insert(&c.client_id) {
                    errs.push(format!(
                        "federations.{id}: client id {:?} twice",
                        c.client_id
                    ));
                }
                if c.redirect_uris.is_empty() {
                    errs.push(format!("{}: at least one", at("redirect_uris")));
                }
                for d in &c.delegation_domains {
                    if !self.aidants.domains.contains(d) {
                        errs.push(format!(
                            "{}: {d:?} is not a known procedure domain",
                            at("delegation_domains")
                        ));
                    }
                }
                if !c.delegation_domains.is_empty() && f.profile != Profile::Citizen {
                    errs.push(format!(
                        "{}: only for the citizen profile",
                        at("delegation_domains")
                    ));
                }
                for (field, list) in [
                    ("redirect_uris", &c.redirect_uris),
                    ("post_logout_redirect_uris", &c.post_logout_redirect_uris),
                ] {
                    for u in list {
                        match url::Url::parse(u) {
                            Ok(p) if p.fragment().is_none() => {}
                            _ => errs.push(format!(
                                "{}: {u:?} is not an absolute URL without fragment",
                                at(field)
                            )),
                        }
                    }
                }
                if let Some(s) = &c.client_secret {
                    if s.starts_with("$argon2")
                        && argon2::password_hash::PasswordHash::new(s).is_err()
                    {
                        errs.push(format!(
                            "{}: not a valid argon2 PHC string",
                            at("client_secret")
                        ));
                    }
                }
                for s in &c.scopes {
                    if !f.profile.scopes().contains(&s.as_str()) {
                        errs.push(format!("{}: unknown scope {s:?}", at("scopes")));
                    }
                }
                if !c.scopes.iter().any(|s| s == "openid") {
                    errs.push(format!("{}: must include openid", at("scopes")));
                }
                for (n, alg) in [
                    (
                        "id_token_signed_response_alg",
                        &c.id_token_signed_response_alg,
                    ),
                    (
                        "userinfo_signed_response_alg",
                        &c.userinfo_signed_response_alg,
                    ),
                ] {
                    if let Some(a) = alg {
                        if !f.signing_algs.iter().any(|x| x == a) {
                            errs.push(format!(
                                "{}: {a:?} must be one of the federation's signing_algs (never none or HS256)",
                                at(n)
                            ));
                        }
                    }
                }
                if c.subject_type == SubjectType::Public && f.profile != Profile::Agent {
                    errs.push(format!(
                        "{}: \"public\" subjects exist only in agent federations (citizens always get pairwise subjects)",
                        at("subject_type")
                    ));
                }
                match c.token_endpoint_auth_method {
                    ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost => {
                        if c.client_secret.as_deref().unwrap_or("").is_empty() {
                            errs.push(format!("{}: required for this method", at("client_secret")));
                        }
                    }
                    ClientAuthMethod::PrivateKeyJwt => {
                        if c.jwks.is_none() == c.jwks_uri.is_none() {
                            errs.push(format!(
                                "{}: give exactly one of jwks or jwks_uri",
                                at("jwks")
                            ));
                        }
                        if let Some(j) = &c.jwks {
                            if serde_json::from_str::<serde_json::Value>(j)
                                .ok()
                                .and_then(|v| v.get("keys").cloned())
                                .is_none()
                            {
                                errs.push(format!("{}: not a JSON JWK set", at("jwks")));
                            }
                        }
                    }
                    ClientAuthMethod::None => {}
                }
            }
            if f.signing_algs.is_empty() || !f.signing_algs.iter().any(|a| a == "RS256") {
                errs.push(format!(
                    "{}: must include RS256 (the default for clients that registered no algorithm)",
                    at("signing_algs")
                ));
            }
        }
        prefixes.sort_by(|a, b| a.1.cmp(&b.1));
        for w in prefixes.windows(2) {
            if let [a, b] = w {
                if a.1 == b.1 {
                    errs.push(format!(
                        "federations {} and {} have the same issuer path {:?}",
                        a.0, b.0, a.1
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs))
        }
    }
}

/// `RELAIS__SERVER__LISTEN=0.0.0.0:80` sets `server.listen`. Values are read as
/// TOML when they parse (numbers, booleans, arrays), else as strings.
pub fn apply_env(
    root: &mut toml::Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), String> {
    for (k, v) in env {
        let Some(path) = k.strip_prefix("RELAIS__") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let parsed = toml::from_str::<toml::Value>(&format!("v = {v}"))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .unwrap_or(toml::Value::String(v.clone()));
        let mut cur = &mut *root;
        for (i, part) in parts.iter().enumerate() {
            let table = cur
                .as_table_mut()
                .ok_or_else(|| format!("{k}: {part:?} is not inside a table"))?;
            if i + 1 == parts.len() {
                table.insert(part.clone(), parsed.clone());
                break;
            }
            cur = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[server]
public_url = "http://127.0.0.1:8080"
[federations.citizen]
issuer = "http://127.0.0.1:8080"
pairwise_secret = "0123456789abcdef0123456789abcdef"
[[federations.citizen.clients]]
client_id = "svc"
name = "Service"
client_secret = "secret"
redirect_uris = ["http://127.0.0.1:9000/cb"]
"#;

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = Config::from_toml_with_env(MIN, vec![]).unwrap();
        let f = &c.federations["citizen"];
        assert!(f.nonce_required);
        assert_eq!(f.access_token_ttl_secs, 60);
        assert_eq!(c.server.database_url, "sqlite://relais.db");
    }

    #[test]
    fn provider_ids_are_path_segments_and_require_iss_defaults_off() {
        let with = |id: &str, extra: &str| {
            format!(
                "{MIN}[[federations.citizen.providers]]\nid = \"{id}\"\nname = \"P\"\n\
                 issuer = \"https://idp.example\"\nclient_id = \"relais\"\n\
                 client_secret = \"s\"\n{extra}"
            )
        };
        let c = Config::from_toml_with_env(&with("ameli-bis_2", ""), vec![]).unwrap();
        assert!(!c.federations["citizen"].providers[0].require_iss);
        let c = Config::from_toml_with_env(&with("x", "require_iss = true\n"), vec![]).unwrap();
        assert!(c.federations["citizen"].providers[0].require_iss);
        for bad in ["", "a/b", "a.b", "a b", "é", &"x".repeat(65)] {
            let e = Config::from_toml_with_env(&with(bad, ""), vec![])
                .unwrap_err()
                .to_string();
            assert!(e.contains("provider id"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn delegation_domains_must_be_known() {
        let ok = format!("{MIN}delegation_domains = [\"social\", \"logement\"]\n");
        let c = Config::from_toml_with_env(&ok, vec![]).unwrap();
        assert_eq!(
            c.federations["citizen"].clients[0].delegation_domains,
            ["social", "logement"]
        );
        assert!(c.federations["citizen"].clients[0]
            .delegation_domains
            .iter()
            .all(|d| crate::aidants::DEFAULT_DOMAINS.contains(&d.as_str())));
        let bad = format!("{MIN}delegation_domains = [\"social\", \"impots\"]\n");
        let e = Config::from_toml_with_env(&bad, vec![])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("delegation_domains") && e.contains("impots"),
            "{e}"
        );
        let d = Config::from_toml_with_env(MIN, vec![]).unwrap();
        assert!(d.federations["citizen"].clients[0]
            .delegation_domains
            .is_empty());
    }

    #[test]
    fn aidants_section_defaults_and_validation() {
        let c = Config::from_toml_with_env(MIN, vec![]).unwrap();
        assert_eq!(c.aidants.retention_days, 1825);
        assert_eq!(c.aidants.journal_head_interval_secs, 3600);
        assert_eq!(c.aidants.purge_usagers_interval_secs, 86_400);
        assert_eq!(c.aidants.domains, crate::aidants::DEFAULT_DOMAINS);
        let custom = format!(
            "{MIN}delegation_domains = [\"impots\"]\n\
             [aidants]\nretention_days = 30\njournal_head_interval_secs = 0\n\
             domains = [\"impots\", \"social\"]\n"
        );
        let c = Config::from_toml_with_env(&custom, vec![]).unwrap();
        assert_eq!(c.aidants.domains, ["impots", "social"]);
        assert_eq!(c.aidants.journal_head_interval_secs, 0);
        assert_eq!(c.aidants.retention_days, 30);
        // A service may only accept configured domains.
        let bad = custom.replace(
            "domains = [\"impots\", \"social\"]",
            "domains = [\"social\"]",
        );
        let e = Config::from_toml_with_env(&bad, vec![])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("delegation_domains") && e.contains("impots"),
            "{e}"
        );
        for (list, why) in [
            ("[]", "at least one"),
            ("[\"social\", \"social\"]", "twice"),
            ("[\"Social\"]", "lowercase slug"),
            ("[\"aide sociale\"]", "lowercase slug"),
        ] {
            let text = format!("{MIN}[aidants]\ndomains = {list}\n");
            let e = Config::from_toml_with_env(&text, vec![])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("aidants.domains") && e.contains(why),
                "{list}: {e}"
            );
        }
        let text = format!("{MIN}[aidants]\njournal_head_interval_secs = 2678401\n");
        let e = Config::from_toml_with_env(&text, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("journal_head_interval_secs"), "{e}");
        let text = format!("{MIN}[aidants]\njournal_head_interval_secs = 2678400\n");
        assert!(Config::from_toml_with_env(&text, vec![]).is_ok());
        let text = format!("{MIN}[aidants]\npurge_usagers_interval_secs = 2678401\n");
        let e = Config::from_toml_with_env(&text, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("purge_usagers_interval_secs"), "{e}");
        let text = format!("{MIN}[aidants]\nretention_days = 0\n");
        let e = Config::from_toml_with_env(&text, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("retention_days"), "{e}");
        let text = format!("{MIN}[aidants]\nretention = 3\n");
        let e = Config::from_toml_with_env(&text, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
        // The external heads file.
        assert_eq!(c.aidants.journal_heads_file, None);
        let text =
            format!("{MIN}[aidants]\njournal_heads_file = \"/var/log/relais/heads.jsonl\"\n");
        let c = Config::from_toml_with_env(&text, vec![]).unwrap();
        assert_eq!(
            c.aidants.journal_heads_file.as_deref(),
            Some(std::path::Path::new("/var/log/relais/heads.jsonl"))
        );
        let text = format!("{MIN}[aidants]\njournal_heads_file = \"\"\n");
        let e = Config::from_toml_with_env(&text, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("journal_heads_file"), "{e}");
        // A federation named like the journal key folder.
        let text = MIN.replace("federations.citizen", "federations.journal");
        let e = Config::from_toml_with_env(&text, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let text = MIN.replace("[server]", "[server]\nlisten_port = 3");
        let e = Config::from_toml_with_env(&text, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn env_overlay_sets_nested_values() {
        let c = Config::from_toml_with_env(
            MIN,
            vec![
                ("RELAIS__SERVER__LISTEN".into(), "0.0.0.0:9999".into()),
                (
                    "RELAIS__FEDERATIONS__CITIZEN__ACCESS_TOKEN_TTL_SECS".into(),
                    "30".into(),
                ),
                ("OTHER".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9999");
        assert_eq!(c.federations["citizen"].access_token_ttl_secs, 30);
    }

    #[test]
    fn validation_lists_every_problem() {
        let text = MIN
            .replace("0123456789abcdef0123456789abcdef", "short")
            .replace("[\"http://127.0.0.1:9000/cb\"]", "[\"not a url\"]");
        let e = Config::from_toml_with_env(&text, vec![]).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
    }
}
