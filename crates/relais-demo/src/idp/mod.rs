//! A small but genuine OpenID Connect Provider.
//!
//! It plays the upstream identity providers of the demo ("Impots demo",
//! "Ameli demo") and the real upstream of the integration tests and of the load
//! tool. Relais talks to it as an ordinary relying party (discovery, authorization
//! code flow with PKCE S256 and nonce, `client_secret_basic` or
//! `client_secret_post`, ID token checked against the JWKS, userinfo), so every
//! endpoint follows OpenID Connect Core 1.0, RFC 6749, RFC 6750, RFC 7636,
//! RFC 9207 and RP-Initiated Logout 1.0.
//!
//! [`Faults`] let tests make it misbehave on purpose (bad signatures, wrong
//! nonce, slow token endpoint...). Everything is kept in memory.

mod authorize;
mod discovery;
mod logout;
mod people;
mod token;
mod userinfo;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
pub use people::{demo_agents, demo_people};
use relais::crypto::jws::{b64, b64_decode, generate_pkcs8};
use relais::crypto::{half_hash, random_token, sha256_b64, Alg, KeyRing, SigningKey};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

/// Lifetime of an authorization code, in seconds.
const CODE_TTL: u64 = 60;
/// Lifetime of an access token, in seconds.
const ACCESS_TOKEN_TTL: u64 = 300;
/// Lifetime of an ID token, in seconds.
const ID_TOKEN_TTL: u64 = 300;
/// How long a login form stays usable, in seconds.
const PENDING_TTL: u64 = 600;
/// Lifetime of an IdP session, in seconds.
const SESSION_TTL: u64 = 8 * 3600;
/// Minimum interval between two sweeps of expired entries, in seconds.
const PRUNE_INTERVAL: u64 = 5;

/// Scopes the IdP knows; others are ignored (not granted).
const SUPPORTED_SCOPES: [&str; 20] = [
    "usual_name",
    "uid",
    "siret",
    "siren",
    "organizational_unit",
    "belonging_population",
    "phone",
    "custom",
    "openid",
    "profile",
    "email",
    "birth",
    "identite_pivot",
    "given_name",
    "family_name",
    "birthdate",
    "gender",
    "birthplace",
    "birthcountry",
    "preferred_username",
];

/// Person claims the IdP can release.
const PERSON_CLAIMS: [&str; 16] = [
    "usual_name",
    "uid",
    "siret",
    "siren",
    "organizational_unit",
    "belonging_population",
    "phone_number",
    "custom",
    "given_name",
    "family_name",
    "birthdate",
    "gender",
    "birthplace",
    "birthcountry",
    "email",
    "preferred_username",
];

/// A demo account.
#[derive(Clone, Debug)]
pub struct DemoPerson {
    pub login: String,
    pub password: String,
    /// given_name, family_name, birthdate, gender, birthplace, birthcountry,
    /// email, preferred_username...
    pub claims: Map<String, Value>,
}

/// A relying party registered at the demo IdP.
#[derive(Clone, Debug)]
pub struct DemoClient {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
}

/// Test knobs, switched at run time with [`DemoIdp::set_faults`].
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Flip a byte of the ID token signature.
    pub tamper_signature: bool,
    /// Sign with a key that is not in the JWKS (same alg, random kid).
    pub sign_with_foreign_key: bool,
    /// `alg: none` ID token with an empty signature.
    pub unsigned: bool,
    /// Put another nonce in the ID token.
    pub wrong_nonce: bool,
    /// Put another audience in the ID token.
    pub wrong_audience: bool,
    /// `exp` (and `iat`) in the past.
    pub expired: bool,
    /// Force this `acr` in the ID token.
    pub acr: Option<String>,
    /// Remove these claims from the ID token and the userinfo response.
    pub drop_claims: Vec<String>,
    /// Override these claims in the ID token and the userinfo response.
    pub set_claims: Map<String, Value>,
    /// Sleep this long before answering `/token`.
    pub token_delay_ms: u64,
    /// Answer `/authorize` by redirecting back with `error=<this>`.
    pub authorize_error: Option<String>,
    /// Leave `iss` out of the authorization responses (RFC 9207), although
    /// discovery advertises it.
    pub omit_iss: bool,
    /// Send this `iss` in the authorization responses instead of our own.
    pub response_iss: Option<String>,
    /// Leave `end_session_endpoint` out of discovery (a provider without
    /// RP-initiated logout). Relais caches discovery: switch it on before
    /// its first sign-in through this provider.
    pub no_end_session: bool,
}

/// Configuration of one demo IdP instance.
#[derive(Clone, Debug)]
pub struct DemoIdpConfig {
    /// E.g. `http://127.0.0.1:4001` (no trailing slash); may contain a path.
    pub issuer: String,
    /// Display name, e.g. "Impots demo".
    pub name: String,
    pub people: Vec<DemoPerson>,
    pub clients: Vec<DemoClient>,
    /// E.g. `["eidas1", "eidas2"]`; the highest is the IdP's maximum.
    pub acr_values: Vec<String>,
    /// When `login_hint` equals a person's login, sign in without the form.
    pub auto_login: bool,
    /// Algorithm of the ID tokens (the key ring must have an active key for it).
    pub alg: Alg,
}

/// The authorization request, once validated.
#[derive(Clone, Debug)]
struct AuthzRequest {
    client_id: String,
    redirect_uri: String,
    state: String,
    nonce: String,
    scopes: Vec<String>,
    code_challenge: Option<String>,
    acr: Option<String>,
    login_hint: Option<String>,
}

#[derive(Clone, Debug)]
struct Pending {
    req: AuthzRequest,
    expires: u64,
}

#[derive(Clone, Debug)]
struct CodeGrant {
    req: AuthzRequest,
    login: String,
    auth_time: u64,
    sid: String,
    expires: u64,
    used: bool,
    access_token: Option<String>,
}

#[derive(Clone, Debug)]
struct AccessGrant {
    login: String,
    scopes: Vec<String>,
    expires: u64,
}

#[derive(Clone, Debug)]
struct Session {
    login: String,
    auth_time: u64,
    expires: u64,
}

#[derive(Default)]
struct Store {
    pending: HashMap<String, Pending>,
    codes: HashMap<String, CodeGrant>,
    tokens: HashMap<String, AccessGrant>,
    sessions: HashMap<String, Session>,
    last_prune: u64,
}

impl Store {
    fn prune(&mut self, now: u64) {
        if now < self.last_prune.saturating_add(PRUNE_INTERVAL) {
            return;
        }
        self.last_prune = now;
        self.pending.retain(|_, p| p.expires > now);
        self.codes.retain(|_, c| c.expires > now);
        self.tokens.retain(|_, t| t.expires > now);
        self.sessions.retain(|_, s| s.expires > now);
    }
}

struct Inner {
    config: DemoIdpConfig,
    /// The issuer without a trailing slash, to build endpoint URLs.
    base_url: String,
    /// The issuer's path without a trailing slash ("" at the root), for links.
    base_path: String,
    cookie_name: String,
    secure_cookie: bool,
    keys: Arc<KeyRing>,
    faults: Mutex<Faults>,
    store: Mutex<Store>,
    foreign_key: Mutex<Option<Arc<SigningKey>>>,
}

/// A demo OpenID Connect Provider; cheap to clone.
#[derive(Clone)]
pub struct DemoIdp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DemoIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoIdp")
            .field("issuer", &self.inner.config.issuer)
            .field("name", &self.inner.config.name)
            .finish_non_exhaustive()
    }
}

/// The demo provider is another system: its own clock, the system's (the
/// broker's test clock does not move it).
fn now() -> u64 {
    u64::try_from(relais::clock::system_now()).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Constant-time comparison of two secrets (through their digests, so the
/// length does not leak either).
fn secret_eq(a: &str, b: &str) -> bool {
    let da = ring::digest::digest(&ring::digest::SHA256, a.as_bytes());
    let db = ring::digest::digest(&ring::digest::SHA256, b.as_bytes());
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `at_hash`: left half of the hash that goes with the signing algorithm
/// (SHA-256 for RS256 and ES256, SHA-512 for EdDSA over Ed25519, as the
/// `openidconnect` crate expects).
fn token_hash(alg: Alg, value: &str) -> String {
    half_hash(alg, value)
}

/// Parse `application/x-www-form-urlencoded` parameters. Empty values count as
/// absent and a repeated parameter is an error (RFC 6749 section 3.1).
fn parse_params(raw: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if v.is_empty() {
            continue;
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("parameter {k} is repeated"));
        }
    }
    Ok(out)
}

/// Parameters of a form POST.
fn form_params(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, String> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        if body.is_empty() && ctype.is_empty() {
            return Ok(HashMap::new());
        }
        return Err("the body must be application/x-www-form-urlencoded".into());
    }
    parse_params(body)
}

/// Decode one `application/x-www-form-urlencoded` value ('+' is a space).
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hi = (bytes[i + 1] as char).to_digit(16);
                let lo = (bytes[i + 2] as char).to_digit(16);
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `s` is made of PKCE unreserved characters (RFC 7636 section 4.1).
fn pkce_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Claim names released for a set of granted scopes.
fn claims_for_scopes(scopes: &[String]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    let mut add = |list: &[&'static str]| {
        for n in list {
            if !names.contains(n) {
                names.push(n);
            }
        }
    };
    for scope in scopes {
        match scope.as_str() {
            "profile" => add(&[
                "given_name",
                "family_name",
                "birthdate",
                "gender",
                "preferred_username",
            ]),
            "birth" => add(&["birthplace", "birthcountry"]),
            "identite_pivot" => add(&[
                "given_name",
                "family_name",
                "birthdate",
                "gender",
                "birthplace",
                "birthcountry",
            ]),
            "email" => add(&["email"]),
            "phone" => add(&["phone_number"]),
            other => {
                if let Some(n) = PERSON_CLAIMS.iter().find(|n| **n == other) {
                    add(&[n]);
                }
            }
        }
    }
    names
}

fn apply_claim_faults(claims: &mut Map<String, Value>, faults: &Faults) {
    for name in &faults.drop_claims {
        claims.remove(name);
    }
    for (k, v) in &faults.set_claims {
        claims.insert(k.clone(), v.clone());
    }
}

// ---------------------------------------------------------------------------
// Responses

const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn page(title: &str, idp_name: &str, content: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 34rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #161616; }}
h1 {{ font-size: 1.5rem; }}
label {{ display: block; margin-top: 1rem; font-weight: 600; }}
input[type=text], input[type=password] {{ width: 100%; padding: .5rem; font-size: 1rem; box-sizing: border-box; }}
button {{ margin-top: 1.25rem; margin-right: .5rem; padding: .6rem 1.2rem; font-size: 1rem; }}
.error {{ color: #b00020; border-left: 4px solid #b00020; padding-left: .75rem; }}
table {{ border-collapse: collapse; margin-top: .5rem; }}
th, td {{ border: 1px solid #999; padding: .25rem .5rem; text-align: left; }}
</style>
</head>
<body>
<main>
<p>{name}</p>
<h1>{title}</h1>
{content}
</main>
</body>
</html>
"#,
        title = esc(title),
        name = esc(idp_name),
        content = content,
    )
}

fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, v),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "redirect URI is not a valid header value",
        )
            .into_response(),
    }
}

/// Redirect to `uri` with extra query parameters.
fn redirect_with(uri: &str, params: &[(&str, &str)]) -> Response {
    match url::Url::parse(uri) {
        Ok(mut u) => {
            if !params.is_empty() {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            found(u.as_str())
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "registered redirect URI is not a valid URL",
        )
            .into_response(),
    }
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// An RFC 6749 section 5.2 error from the token endpoint.
struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl TokenError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> TokenError {
        TokenError {
            status,
            error,
            description: description.into(),
        }
    }
    fn invalid_request(d: impl Into<String>) -> TokenError {
        TokenError::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    fn invalid_client(d: impl Into<String>) -> TokenError {
        TokenError::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }
    fn invalid_grant(d: impl Into<String>) -> TokenError {
        TokenError::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }
    fn server_error(d: impl Into<String>) -> TokenError {
        TokenError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", d)
    }

    fn into_response(self, realm: &str) -> Response {
        let mut resp = (
            self.status,
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

fn json_no_store(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// The provider

impl DemoIdp {
    pub fn new(config: DemoIdpConfig, keys: Arc<KeyRing>) -> DemoIdp {
        let base_url = config.issuer.trim_end_matches('/').to_string();
        let base_path = url::Url::parse(&config.issuer)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        // Cookies ignore ports: two IdPs on 127.0.0.1 need different names.
        let digest = ring::digest::digest(&ring::digest::SHA256, config.issuer.as_bytes());
        let cookie_name = format!("demo_idp_{}", &hex(digest.as_ref())[..16]);
        let secure_cookie = config.issuer.starts_with("https://");
        DemoIdp {
            inner: Arc::new(Inner {
                config,
                base_url,
                base_path,
                cookie_name,
                secure_cookie,
                keys,
                faults: Mutex::new(Faults::default()),
                store: Mutex::new(Store::default()),
                foreign_key: Mutex::new(None),
            }),
        }
    }

    /// The routes, relative to the issuer (nest them under the issuer's path).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize_get).post(authorize_post))
            .route("/login", post(login))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo).post(userinfo))
            .route("/session/end", get(end_session_get).post(end_session_post))
            .with_state(self.clone())
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.inner.faults) = f;
    }

    pub fn issuer(&self) -> &str {
        &self.inner.config.issuer
    }

    /// Number of live IdP sessions (so tests can check logout ended them).
    /// Reload the signing keys from their folder (after a rotation); true if they changed.
    pub fn reload_keys(&self) -> bool {
        self.inner.keys.refresh().unwrap_or(false)
    }

    pub fn session_count(&self) -> usize {
        let now = now();
        self.store()
            .sessions
            .values()
            .filter(|s| s.expires > now)
            .count()
    }

    fn faults(&self) -> Faults {
        lock(&self.inner.faults).clone()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        let mut s = lock(&self.inner.store);
        s.prune(now());
        s
    }

    fn config(&self) -> &DemoIdpConfig {
        &self.inner.config
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base_url)
    }

    fn client(&self, client_id: &str) -> Option<&DemoClient> {
        self.config()
            .clients
            .iter()
            .find(|c| c.client_id == client_id)
    }

    fn person(&self, login: &str) -> Option<&DemoPerson> {
        self.config().people.iter().find(|p| p.login == login)
    }

    /// Stable pairwise-free subject: hex(SHA-256(issuer + login)).
    fn subject(&self, login: &str) -> String {
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{}{login}", self.config().issuer).as_bytes(),
        );
        hex(d.as_ref())
    }

    fn acr_rank(&self, v: &str) -> Option<u32> {
        if let Some(n) = v.strip_prefix("eidas").and_then(|n| n.parse::<u32>().ok()) {
            return Some(n);
        }
        self.config()
            .acr_values
            .iter()
            .position(|a| a == v)
            .and_then(|i| u32::try_from(i + 1).ok())
    }

    /// The level delivered for the requested `acr_values`: the lowest
    /// supported level at least as strong as the strongest requested one, or
    /// the IdP's maximum when it cannot reach it (the RP then refuses).
    fn choose_acr(&self, requested: Option<&str>) -> Option<String> {
        let mut supported: Vec<(u32, &String)> = self
            .config()
            .acr_values
            .iter()
            .filter_map(|a| self.acr_rank(a).map(|r| (r, a)))
            .collect();
        supported.sort_by_key(|(r, _)| *r);
        let want = requested
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|v| self.acr_rank(v))
            .max();
        let chosen = match want {
            None => supported.first(),
            Some(w) => supported.iter().find(|(r, _)| *r >= w).or(supported.last()),
        };
        chosen.map(|(_, a)| (*a).clone())
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            self.inner.cookie_name,
            if self.inner.secure_cookie {
                "; Secure"
            } else {
                ""
            }
        )
    }

    fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        for v in headers.get_all(header::COOKIE) {
            let Ok(s) = v.to_str() else { continue };
            for part in s.split(';') {
                if let Some((n, val)) = part.trim().split_once('=') {
                    if n == self.inner.cookie_name && !val.is_empty() {
                        return Some(val.to_string());
                    }
                }
            }
        }
        None
    }

    fn live_session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let sid = self.session_id(headers)?;
        let now = now();
        let store = self.store();
        let s = store.sessions.get(&sid).filter(|s| s.expires > now)?;
        Some((sid, s.clone()))
    }

    /// Start a session for `login`, replacing the browser's previous one.
    fn new_session(&self, headers: &HeaderMap, login: &str) -> (String, u64) {
        let previous = self.session_id(headers);
        let sid = random_token(32);
        let now = now();
        let mut store = self.store();
        if let Some(p) = previous {
            store.sessions.remove(&p);
        }
        store.sessions.insert(
            sid.clone(),
            Session {
                login: login.to_string(),
                auth_time: now,
                expires: now + SESSION_TTL,
            },
        );
        (sid, now)
    }

    fn error_page(&self, status: StatusCode, title: &str, detail: &str) -> Response {
        let content = format!(
            "<p class=\"error\" role=\"alert\">{}</p>\n<p>Cette demande ne peut pas aboutir ; recommencez depuis le service d'origine. (This request cannot be completed; start again from the service you came from.)</p>",
            esc(detail)
        );
        html(status, page(title, &self.config().name, &content))
    }

    fn error_redirect(
        &self,
        redirect_uri: &str,
        error: &str,
        description: &str,
        state: Option<&str>,
    ) -> Response {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(s) = state {
            params.push(("state", s));
        }
        let iss = self.response_iss();
        if let Some(i) = &iss {
            params.push(("iss", i.as_str()));
        }
        redirect_with(redirect_uri, &params)
    }

    /// The `iss` of an authorization response (RFC 9207), unless a fault
    /// leaves it out or changes it.
    fn response_iss(&self) -> Option<String> {
        let f = self.faults();
        if f.omit_iss {
            return None;
        }
        Some(f.response_iss.unwrap_or_else(|| self.issuer().to_string()))
    }

    /// Create a single-use code for `req` and send the browser back with it.
    fn code_redirect(&self, req: AuthzRequest, login: &str, auth_time: u64, sid: &str) -> Response {
        let code = random_token(32);
        let redirect_uri = req.redirect_uri.clone();
        let state = req.state.clone();
        self.store().codes.insert(
            code.clone(),
            CodeGrant {
                req,
                login: login.to_string(),
                auth_time,
                sid: sid.to_string(),
                expires: now() + CODE_TTL,
                used: false,
                access_token: None,
            },
        );
        let iss = self.response_iss();
        let mut params = vec![("code", code.as_str()), ("state", state.as_str())];
        if let Some(i) = &iss {
            params.push(("iss", i.as_str()));
        }
        redirect_with(&redirect_uri, &params)
    }
}

// ---------------------------------------------------------------------------
// Handlers

async fn discovery(State(idp): State<DemoIdp>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(idp.discovery_document()),
    )
        .into_response()
}

async fn jwks(State(idp): State<DemoIdp>) -> Response {
    let set = idp.inner.keys.get();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        set.jwks_json().to_string(),
    )
        .into_response()
}

async fn authorize_get(
    State(idp): State<DemoIdp>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let params = parse_params(q.unwrap_or_default().as_bytes());
    idp.authorize(&headers, params)
}

async fn authorize_post(State(idp): State<DemoIdp>, headers: HeaderMap, body: Bytes) -> Response {
    let params = form_params(&headers, &body);
    idp.authorize(&headers, params)
}

async fn login(State(idp): State<DemoIdp>, headers: HeaderMap, body: Bytes) -> Response {
    idp.login(&headers, form_params(&headers, &body))
}

async fn token(State(idp): State<DemoIdp>, headers: HeaderMap, body: Bytes) -> Response {
    idp.token(&headers, &body).await
}

async fn userinfo(
    State(idp): State<DemoIdp>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    idp.userinfo(&method, &headers, &body)
}

async fn end_session_get(
    State(idp): State<DemoIdp>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let params = parse_params(q.unwrap_or_default().as_bytes());
    idp.end_session(&headers, params)
}

async fn end_session_post(State(idp): State<DemoIdp>, headers: HeaderMap, body: Bytes) -> Response {
    let params = form_params(&headers, &body);
    idp.end_session(&headers, params)
}

// ---------------------------------------------------------------------------
// Sample people

#[cfg(test)]
mod tests;
