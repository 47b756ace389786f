//! Application state built once from the configuration: federations, their
//! clients, providers and keys, the store and the HTTP client.

use crate::config::{ClientAuthMethod, ClientConfig, Config, FederationConfig};
use crate::crypto::secrets::{hash_secret, is_phc, VerifiedCache};
use crate::crypto::{Alg, KeyRing};
use crate::error::AppError;
use crate::http::page::html_response;
use crate::store::Store;
use crate::upstream::Upstream;
use crate::web::i18n::PageCode;
use crate::web::{Lang, PageBase};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Client {
    pub cfg: ClientConfig,
    pub secret_hash: Option<String>,
    pub sector: String,
    pub id_token_alg: Alg,
    pub userinfo_alg: Option<Alg>,
    pub jwks: Option<Value>,
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.cfg.token_endpoint_auth_method == ClientAuthMethod::None
    }
}

pub struct Federation {
    pub id: String,
    pub cfg: FederationConfig,
    pub issuer: String,
    /// Path prefix of the issuer ("" at the root).
    pub prefix: String,
    pub keys: Arc<KeyRing>,
    pub clients: HashMap<String, Client>,
    pub providers: Vec<Arc<Upstream>>,
    pub cookie_name: String,
    pub cookie_path: String,
    pub base: PageBase,
    pub pairwise_secret: Vec<u8>,
    /// The discovery document, serialised once per key set (it lists the
    /// active signing algorithms, which a rotation may change).
    pub discovery: std::sync::Mutex<Option<(Arc<crate::crypto::KeySet>, Arc<str>)>>,
    /// Other ways to sign in that domains add under the providers of the
    /// choice page (citizen federations: the aidants' entry).
    pub other_ways: Vec<crate::oidc::choose::OtherWays>,
}

impl Federation {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.issuer, path)
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<Upstream>> {
        self.providers.iter().find(|p| p.cfg.id == id)
    }

    /// Whether `client` may use provider `p` (active, allow/deny lists).
    pub fn provider_allowed(&self, p: &Upstream, client_id: &str) -> bool {
        p.cfg.active
            && (p.cfg.allowed_clients.is_empty()
                || p.cfg.allowed_clients.iter().any(|c| c == client_id))
            && !p.cfg.denied_clients.iter().any(|c| c == client_id)
    }

    /// Rank of an acr value (weakest = 0).
    pub fn acr_rank(&self, acr: &str) -> Option<usize> {
        self.cfg.acr_values.iter().position(|a| a == acr)
    }

    pub fn provider_max_rank(&self, p: &Upstream) -> Option<usize> {
        p.cfg
            .acr_values
            .iter()
            .filter_map(|a| self.acr_rank(a))
            .max()
    }
}

pub struct AppState {
    pub store: Store,
    pub http: reqwest::Client,
    pub secrets: VerifiedCache,
    pub federations: Vec<Arc<Federation>>,
    pub secure_cookies: bool,
    pub trust_forwarded: bool,
    /// The journal salt file (`{keys_dir}/journal-salt`), for the aidant pages.
    pub journal_salt_path: std::path::PathBuf,
    /// The TOTP key (`{keys_dir}/totp-key`), read once at start (created
    /// then if absent, with a warning), for the aidant pages.
    pub totp_key: crate::aidants::TotpKey,
    /// The procedure domains mandates may cover (`[aidants] domains`).
    pub aidant_domains: Vec<String>,
    /// Every argon2 run of the process goes through this gate (shared with
    /// the store, which verifies aidant passwords).
    pub argon2: Arc<crate::crypto::gate::Argon2Gate>,
    /// Failed-attempt counters (`/token`, aidant sign-ins), in the store.
    pub throttle: crate::http::limits::Throttle,
    /// Sign-ins started per browser (`/authorize`), in memory on this node.
    pub pending: crate::http::limits::LocalCounter,
    /// The one clock (`crate::clock`).
    pub clock: crate::clock::Clock,
}

impl AppState {
    /// Unix seconds now, from the application's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }
}

/// The session cookie's name. Over https it carries the `__Host-` prefix,
/// which a sibling subdomain cannot plant (cookie tossing: the browser
/// accepts it only with `Secure`, `Path=/` and no `Domain`), so every
/// federation's cookie is then at `Path=/` ([`cookie_path`]); the names are
/// distinct per federation.
pub fn cookie_name(federation: &str, secure: bool) -> String {
    if secure {
        format!("__Host-relais_{federation}")
    } else {
        format!("relais_{federation}")
    }
}

/// The session cookie's `Path`: `/` over https (the `__Host-` rule), else
/// the issuer's path.
pub fn cookie_path(prefix: &str, secure: bool) -> String {
    if secure || prefix.is_empty() {
        "/".into()
    } else {
        prefix.to_string()
    }
}

pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("relais/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

fn sector_of(c: &ClientConfig) -> String {
    if let Some(s) = &c.sector_identifier {
        return s.clone();
    }
    c.redirect_uris
        .first()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| c.client_id.clone())
}

/// Build the state: open keys, hash plaintext secrets, prepare providers.
pub async fn build(config: &Config, store: Store) -> Result<AppState, String> {
    let secure_cookies = config.server.public_url.starts_with("https://");
    let http = http_client(Duration::from_millis(config.server.upstream_timeout_ms))?;
    let mut federations = Vec::new();
    for (id, f) in &config.federations {
        let dir = config.server.keys_dir.join(id);
        let algs: Vec<Alg> = f
            .signing_algs
            .iter()
            .filter_map(|a| Alg::parse(a))
            .collect();
        let keys = KeyRing::open_requiring(&dir, &algs).map_err(|e| {
            format!("federation {id}: keys: {e} (relais keys generate --federation {id} --alg …)")
        })?;
        let mut clients = HashMap::new();
        for c in &f.clients {
            let secret_hash = match &c.client_secret {
                Some(s) if is_phc(s) => {
                    argon2::password_hash::PasswordHash::new(s).map_err(|e| {
                        format!(
                            "client {}: client_secret is not a valid argon2 PHC string: {e}",
                            c.client_id
                        )
                    })?;
                    Some(s.clone())
                }
                Some(s) => {
                    tracing::warn!(client = %c.client_id, "plaintext client secret in configuration, hashed at start; store an argon2id hash instead (relais hash-secret)");
                    Some(hash_secret(s)?)
                }
                None => None,
            };
            let jwks = match &c.jwks {
                Some(j) => Some(serde_json::from_str(j).map_err(|e| e.to_string())?),
                None => None,
            };
            clients.insert(
                c.client_id.clone(),
                Client {
                    secret_hash,
                    sector: sector_of(c),
                    id_token_alg: c
                        .id_token_signed_response_alg
                        .as_deref()
                        .and_then(Alg::parse)
                        .unwrap_or(Alg::RS256),
                    userinfo_alg: c
                        .userinfo_signed_response_alg
                        .as_deref()
                        .and_then(Alg::parse),
                    jwks,
                    cfg: c.clone(),
                },
            );
        }
        let mut providers: Vec<Arc<Upstream>> = f
            .providers
            .iter()
            .map(|p| {
                Arc::new(Upstream::new(
                    p.clone(),
                    Duration::from_secs(f.jwks_refetch_cooldown_secs),
                ))
            })
            .collect();
        providers.sort_by_key(|p| p.cfg.order);
        let issuer_url = url::Url::parse(&f.issuer).map_err(|e| e.to_string())?;
        let prefix = issuer_url.path().trim_end_matches('/').to_string();
        let base = PageBase {
            lang: "fr",
            fed_name: f.name.clone(),
            prefix: prefix.clone(),
            logo_url: f.theme.logo_url.clone(),
        };
        federations.push(Arc::new(Federation {
            id: id.clone(),
            issuer: f.issuer.clone(),
            cookie_name: cookie_name(id, secure_cookies),
            cookie_path: cookie_path(&prefix, secure_cookies),
            prefix,
            keys: Arc::new(keys),
            clients,
            providers,
            base,
            pairwise_secret: f.pairwise_secret.as_bytes().to_vec(),
            discovery: Default::default(),
            other_ways: match f.profile {
                crate::config::Profile::Citizen => {
                    vec![crate::aidants::pages::interaction::choice_entry]
                }
                crate::config::Profile::Agent => vec![],
            },
            cfg: f.clone(),
        }));
    }
    let totp_key = crate::aidants::TotpKey::at_start(&config.server.keys_dir)?;
    Ok(AppState {
        argon2: store.argon2_gate(),
        store,
        http,
        secrets: VerifiedCache::new(10_000),
        federations,
        secure_cookies,
        trust_forwarded: config.server.trust_forwarded_headers,
        journal_salt_path: config.server.keys_dir.join(crate::aidants::SALT_FILE),
        totp_key,
        aidant_domains: config.aidants.domains.clone(),
        throttle: Default::default(),
        pending: Default::default(),
        clock: Default::default(),
    })
}

/// Handler state: the application and one federation.
#[derive(Clone)]
pub struct Ctx {
    pub app: Arc<AppState>,
    pub fed: Arc<Federation>,
}

impl Ctx {
    pub fn now(&self) -> i64 {
        self.app.now()
    }

    pub fn base(&self, lang: Lang) -> Box<PageBase> {
        let mut b = self.fed.base.clone();
        b.lang = lang.code();
        Box::new(b)
    }

    /// HTML error page (nothing trusted, or a browser step failed).
    pub fn page_error(
        &self,
        lang: Lang,
        status: StatusCode,
        code: PageCode,
        back: Option<String>,
    ) -> AppError {
        AppError::Page {
            status,
            code,
            detail: None,
            back,
            base: self.base(lang),
            lang,
        }
    }

    /// The "sign-in expired or unknown" page (400), with an optional link.
    pub fn expired(&self, lang: Lang, back: Option<String>) -> AppError {
        self.page_error(
            lang,
            StatusCode::BAD_REQUEST,
            PageCode::InteractionExpired,
            back,
        )
    }

    pub fn page(
        &self,
        lang: Lang,
        name: &str,
        extra: minijinja::Value,
    ) -> Result<Response, AppError> {
        let html =
            crate::web::render(name, &self.base(lang), lang, extra).map_err(AppError::Internal)?;
        Ok(html_response(html))
    }
}
