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

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
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

    fn login_page(
        &self,
        status: StatusCode,
        request_id: &str,
        req: &AuthzRequest,
        login_value: &str,
        error: Option<&str>,
    ) -> Response {
        let mut c = String::new();
        let _ = writeln!(
            c,
            "<p>Le service <strong>{}</strong> demande votre identité{}. (The service <strong>{}</strong> asks for your identity.)</p>",
            esc(&req.client_id),
            req.acr
                .as_deref()
                .map(|a| format!(" (niveau / level {})", esc(a)))
                .unwrap_or_default(),
            esc(&req.client_id),
        );
        if let Some(e) = error {
            let _ = writeln!(
                c,
                "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
                esc(e)
            );
        }
        let described = if error.is_some() {
            " aria-describedby=\"login-error\" aria-invalid=\"true\""
        } else {
            ""
        };
        let _ = write!(
            c,
            r#"<form method="post" action="{action}">
<input type="hidden" name="request_id" value="{rid}">
<label for="login">Identifiant (login)</label>
<input type="text" id="login" name="login" value="{login}" autocomplete="username" autocapitalize="none" spellcheck="false" required{described}>
<label for="password">Mot de passe (password)</label>
<input type="password" id="password" name="password" autocomplete="current-password" required{described}>
<div>
<button type="submit" name="action" value="login">Se connecter (Sign in)</button>
<button type="submit" name="action" value="cancel" formnovalidate>Annuler (Cancel)</button>
</div>
</form>
"#,
            action = esc(&format!("{}/login", self.inner.base_path)),
            rid = esc(request_id),
            login = esc(login_value),
            described = described,
        );
        c.push_str(
            "<h2>Comptes de démonstration (demo accounts)</h2>\n<table>\n<caption>Identifiants et mots de passe de test (test logins and passwords)</caption>\n<thead><tr><th scope=\"col\">Identifiant (login)</th><th scope=\"col\">Mot de passe (password)</th><th scope=\"col\">Nom (name)</th></tr></thead>\n<tbody>\n",
        );
        for p in &self.config().people {
            let name = format!(
                "{} {}",
                p.claims
                    .get("given_name")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                p.claims
                    .get("family_name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            let _ = writeln!(
                c,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.login),
                esc(&p.password),
                esc(name.trim())
            );
        }
        c.push_str("</tbody>\n</table>\n");
        html(status, page("Connexion (sign in)", &self.config().name, &c))
    }

    // -- /authorize ----------------------------------------------------------

    fn authorize(
        &self,
        headers: &HeaderMap,
        params: Result<HashMap<String, String>, String>,
    ) -> Response {
        let bad = |detail: &str| {
            self.error_page(
                StatusCode::BAD_REQUEST,
                "Requête invalide (invalid request)",
                detail,
            )
        };
        let p = match params {
            Ok(p) => p,
            Err(e) => return bad(&e),
        };
        let Some(client_id) = p.get("client_id") else {
            return bad("client_id manquant (missing client_id)");
        };
        let Some(client) = self.client(client_id) else {
            return bad("client inconnu (unknown client_id)");
        };
        let Some(redirect_uri) = p.get("redirect_uri") else {
            return bad("redirect_uri manquant (missing redirect_uri)");
        };
        if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
            return bad("redirect_uri non enregistrée pour ce client (redirect_uri is not registered for this client)");
        }
        // From here on the redirect URI is trusted: errors go back to the client.
        let state = p.get("state").map(String::as_str);
        let back = |error: &str, description: &str| {
            self.error_redirect(redirect_uri, error, description, state)
        };
        if let Some(e) = self.faults().authorize_error {
            return back(&e, "error injected by the demo IdP");
        }
        if p.contains_key("request") {
            return back(
                "request_not_supported",
                "the request parameter is not supported",
            );
        }
        if p.contains_key("request_uri") {
            return back(
                "request_uri_not_supported",
                "the request_uri parameter is not supported",
            );
        }
        match p.get("response_type").map(String::as_str) {
            None => return back("invalid_request", "response_type is required"),
            Some("code") => {}
            Some(_) => {
                return back(
                    "unsupported_response_type",
                    "only response_type=code is supported",
                )
            }
        }
        if p.get("response_mode").is_some_and(|m| m != "query") {
            return back("invalid_request", "only response_mode=query is supported");
        }
        let requested: Vec<&str> = p
            .get("scope")
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        if !requested.contains(&"openid") {
            return back("invalid_scope", "the openid scope is required");
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in requested {
            if SUPPORTED_SCOPES.contains(&s) && !scopes.iter().any(|x| x == s) {
                scopes.push(s.to_string());
            }
        }
        let Some(state) = state else {
            return back("invalid_request", "state is required");
        };
        let Some(nonce) = p.get("nonce") else {
            return back("invalid_request", "nonce is required");
        };
        let code_challenge = match (
            p.get("code_challenge"),
            p.get("code_challenge_method").map(String::as_str),
        ) {
            (None, None) => None,
            (None, Some(_)) => {
                return back(
                    "invalid_request",
                    "code_challenge_method without code_challenge",
                )
            }
            (Some(c), Some("S256")) => {
                if c.len() != 43 || !pkce_chars(c) {
                    return back("invalid_request", "malformed S256 code_challenge");
                }
                Some(c.clone())
            }
            (Some(_), _) => {
                return back(
                    "invalid_request",
                    "transform algorithm not supported: use code_challenge_method=S256",
                )
            }
        };
        let prompts: Vec<&str> = p
            .get("prompt")
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        let prompt_none = prompts.contains(&"none");
        if prompt_none && prompts.len() > 1 {
            return back("invalid_request", "prompt=none cannot be combined");
        }
        let prompt_login = prompts.contains(&"login");
        let max_age = match p.get("max_age").map(|m| m.parse::<u64>()) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(_)) => return back("invalid_request", "max_age must be a number"),
        };
        let req = AuthzRequest {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            state: state.to_string(),
            nonce: nonce.clone(),
            scopes,
            code_challenge,
            acr: self.choose_acr(p.get("acr_values").map(String::as_str)),
            login_hint: p.get("login_hint").cloned(),
        };

        // Single sign-on with the IdP session.
        if let Some((sid, session)) = self.live_session(headers) {
            // max_age=0 asks for a fresh sign-in, like prompt=login.
            let fresh =
                max_age.is_none_or(|m| m > 0 && now().saturating_sub(session.auth_time) <= m);
            let same_person = req.login_hint.as_ref().is_none_or(|h| *h == session.login);
            if !prompt_login && fresh && same_person {
                return self.code_redirect(req, &session.login, session.auth_time, &sid);
            }
        }
        if prompt_none {
            return back("login_required", "the user is not signed in at the IdP");
        }
        if self.config().auto_login {
            if let Some(person) = req.login_hint.as_deref().and_then(|h| self.person(h)) {
                let login = person.login.clone();
                let (sid, auth_time) = self.new_session(headers, &login);
                let resp = self.code_redirect(req, &login, auth_time, &sid);
                return with_cookie(resp, &self.cookie(&sid, SESSION_TTL));
            }
        }
        let request_id = random_token(24);
        let login_value = req.login_hint.clone().unwrap_or_default();
        self.store().pending.insert(
            request_id.clone(),
            Pending {
                req: req.clone(),
                expires: now() + PENDING_TTL,
            },
        );
        self.login_page(StatusCode::OK, &request_id, &req, &login_value, None)
    }

    // -- /login --------------------------------------------------------------

    fn login(
        &self,
        headers: &HeaderMap,
        params: Result<HashMap<String, String>, String>,
    ) -> Response {
        let bad = |detail: &str| {
            self.error_page(
                StatusCode::BAD_REQUEST,
                "Requête invalide (invalid request)",
                detail,
            )
        };
        let p = match params {
            Ok(p) => p,
            Err(e) => return bad(&e),
        };
        let Some(request_id) = p.get("request_id") else {
            return bad("request_id manquant (missing request_id)");
        };
        let now = now();
        let pending = self
            .store()
            .pending
            .get(request_id)
            .filter(|x| x.expires > now)
            .cloned();
        let Some(pending) = pending else {
            return bad("demande inconnue ou expirée (unknown or expired request)");
        };
        let req = pending.req;
        if p.get("action").is_some_and(|a| a == "cancel") {
            self.store().pending.remove(request_id);
            return self.error_redirect(
                &req.redirect_uri,
                "access_denied",
                "the user cancelled the sign-in",
                Some(&req.state),
            );
        }
        let login = p.get("login").map(String::as_str).unwrap_or("");
        let password = p.get("password").map(String::as_str).unwrap_or("");
        let person = self
            .config()
            .people
            .iter()
            .find(|x| x.login == login && secret_eq(&x.password, password));
        let Some(person) = person else {
            return self.login_page(
                StatusCode::UNAUTHORIZED,
                request_id,
                &req,
                login,
                Some("Identifiant ou mot de passe incorrect. (Wrong login or password.)"),
            );
        };
        if self.store().pending.remove(request_id).is_none() {
            return bad("demande déjà utilisée (request already used)");
        }
        let login = person.login.clone();
        let (sid, auth_time) = self.new_session(headers, &login);
        let resp = self.code_redirect(req, &login, auth_time, &sid);
        with_cookie(resp, &self.cookie(&sid, SESSION_TTL))
    }

    // -- /token --------------------------------------------------------------

    fn authenticate_client(
        &self,
        headers: &HeaderMap,
        p: &HashMap<String, String>,
    ) -> Result<&DemoClient, TokenError> {
        let basic = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| TokenError::invalid_client("malformed Authorization header"))?;
                let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
                if !scheme.eq_ignore_ascii_case("basic") {
                    return Err(TokenError::invalid_client(
                        "only HTTP Basic client authentication is accepted in the header",
                    ));
                }
                let raw =
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, rest.trim())
                        .map_err(|_| {
                            TokenError::invalid_client("malformed HTTP Basic credentials")
                        })?;
                let raw = String::from_utf8(raw)
                    .map_err(|_| TokenError::invalid_client("malformed HTTP Basic credentials"))?;
                let (id, secret) = raw.split_once(':').ok_or_else(|| {
                    TokenError::invalid_client("malformed HTTP Basic credentials")
                })?;
                Some((form_decode(id), form_decode(secret)))
            }
        };
        let (client_id, secret) = match basic {
            Some((id, secret)) => {
                if p.contains_key("client_secret") {
                    return Err(TokenError::invalid_request(
                        "use only one client authentication method",
                    ));
                }
                if p.get("client_id").is_some_and(|c| *c != id) {
                    return Err(TokenError::invalid_client(
                        "client_id does not match the authenticated client",
                    ));
                }
                (id, secret)
            }
            None => match (p.get("client_id"), p.get("client_secret")) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone()),
                _ => return Err(TokenError::invalid_client("client authentication required")),
            },
        };
        match self.client(&client_id) {
            Some(c) if secret_eq(&c.client_secret, &secret) => Ok(c),
            _ => Err(TokenError::invalid_client("client authentication failed")),
        }
    }

    async fn token(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let realm = self.issuer().to_string();
        match self.token_inner(headers, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(&realm),
        }
    }

    async fn token_inner(&self, headers: &HeaderMap, body: &[u8]) -> Result<Response, TokenError> {
        let faults = self.faults();
        if faults.token_delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(faults.token_delay_ms)).await;
        }
        let p = form_params(headers, body).map_err(TokenError::invalid_request)?;
        let client = self.authenticate_client(headers, &p)?;
        match p.get("grant_type").map(String::as_str) {
            None => return Err(TokenError::invalid_request("grant_type is required")),
            Some("authorization_code") => {}
            Some(_) => {
                return Err(TokenError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only authorization_code is supported",
                ))
            }
        }
        let code = p
            .get("code")
            .ok_or_else(|| TokenError::invalid_request("code is required"))?;
        let redirect_uri = p
            .get("redirect_uri")
            .ok_or_else(|| TokenError::invalid_request("redirect_uri is required"))?;
        let verifier = p.get("code_verifier");
        let now = now();
        let access_token = random_token(32);
        let grant = {
            let mut store = self.store();
            let Some(g) = store.codes.get_mut(code) else {
                return Err(TokenError::invalid_grant("unknown authorization code"));
            };
            if g.expires <= now {
                store.codes.remove(code);
                return Err(TokenError::invalid_grant("authorization code expired"));
            }
            if g.used {
                // RFC 6749 section 4.1.2: revoke what the code gave.
                if let Some(at) = g.access_token.take() {
                    store.tokens.remove(&at);
                }
                return Err(TokenError::invalid_grant("authorization code already used"));
            }
            if g.req.client_id != client.client_id {
                return Err(TokenError::invalid_grant(
                    "authorization code issued to another client",
                ));
            }
            if g.req.redirect_uri != *redirect_uri {
                return Err(TokenError::invalid_grant("redirect_uri does not match"));
            }
            match (&g.req.code_challenge, verifier) {
                (None, None) => {}
                (None, Some(_)) => {
                    return Err(TokenError::invalid_grant(
                        "code_verifier sent but no code_challenge was",
                    ))
                }
                (Some(_), None) => {
                    return Err(TokenError::invalid_grant("code_verifier is required"))
                }
                (Some(challenge), Some(v)) => {
                    if v.len() < 43 || v.len() > 128 || !pkce_chars(v) {
                        return Err(TokenError::invalid_grant("malformed code_verifier"));
                    }
                    if sha256_b64(v.as_bytes()) != *challenge {
                        return Err(TokenError::invalid_grant("PKCE verification failed"));
                    }
                }
            }
            g.used = true;
            g.access_token = Some(access_token.clone());
            let grant = g.clone();
            store.tokens.insert(
                access_token.clone(),
                AccessGrant {
                    login: grant.login.clone(),
                    scopes: grant.req.scopes.clone(),
                    expires: now + ACCESS_TOKEN_TTL,
                },
            );
            grant
        };
        let claims = self.id_token_claims(&grant, &access_token, &faults, now);
        let id_token = self
            .sign_id_token(&Value::Object(claims), &faults)
            .await
            .map_err(TokenError::server_error)?;
        Ok(json_no_store(
            StatusCode::OK,
            json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": ACCESS_TOKEN_TTL,
                "id_token": id_token,
                "scope": grant.req.scopes.join(" "),
            }),
        ))
    }

    /// `sub` and the person's claims allowed by `scopes` (before faults).
    fn person_claims(&self, login: &str, scopes: &[String]) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("sub".into(), Value::String(self.subject(login)));
        if let Some(person) = self.person(login) {
            for name in claims_for_scopes(scopes) {
                if let Some(v) = person.claims.get(name) {
                    out.insert(name.to_string(), v.clone());
                }
            }
        }
        out
    }

    fn id_token_claims(
        &self,
        g: &CodeGrant,
        access_token: &str,
        faults: &Faults,
        now: u64,
    ) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("iss".into(), json!(self.issuer()));
        c.insert("sub".into(), json!(self.subject(&g.login)));
        c.insert("aud".into(), json!(g.req.client_id));
        c.insert("exp".into(), json!(now + ID_TOKEN_TTL));
        c.insert("iat".into(), json!(now));
        c.insert("auth_time".into(), json!(g.auth_time));
        c.insert("nonce".into(), json!(g.req.nonce));
        if let Some(acr) = &g.req.acr {
            c.insert("acr".into(), json!(acr));
        }
        c.insert("amr".into(), json!(["pwd"]));
        c.insert(
            "at_hash".into(),
            json!(token_hash(self.config().alg, access_token)),
        );
        c.insert("sid".into(), json!(g.sid));
        for (k, v) in self.person_claims(&g.login, &g.req.scopes) {
            c.insert(k, v);
        }
        if faults.wrong_nonce {
            c.insert("nonce".into(), json!(random_token(16)));
        }
        if faults.wrong_audience {
            c.insert("aud".into(), json!(format!("not-{}", g.req.client_id)));
        }
        if faults.expired {
            c.insert("exp".into(), json!(now.saturating_sub(3600)));
            c.insert("iat".into(), json!(now.saturating_sub(3600 + ID_TOKEN_TTL)));
        }
        if let Some(acr) = &faults.acr {
            c.insert("acr".into(), json!(acr));
        }
        apply_claim_faults(&mut c, faults);
        c
    }

    /// A key of the configured algorithm that is not in the JWKS, made once.
    async fn foreign_key(&self) -> Result<Arc<SigningKey>, String> {
        if let Some(k) = lock(&self.inner.foreign_key).clone() {
            return Ok(k);
        }
        let alg = self.config().alg;
        let key = tokio::task::spawn_blocking(move || {
            generate_pkcs8(alg).and_then(|der| SigningKey::from_pkcs8(alg, &der))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let key = Arc::new(key);
        *lock(&self.inner.foreign_key) = Some(key.clone());
        Ok(key)
    }

    async fn sign_id_token(&self, claims: &Value, faults: &Faults) -> Result<String, String> {
        let alg = self.config().alg;
        let payload = b64(claims.to_string().as_bytes());
        if faults.unsigned {
            let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
            return Ok(format!("{header}.{payload}."));
        }
        let jwt = if faults.sign_with_foreign_key {
            let key = self.foreign_key().await?;
            let header = json!({"alg": alg.as_str(), "kid": random_token(16), "typ": "JWT"});
            let input = format!("{}.{payload}", b64(header.to_string().as_bytes()));
            let sig = key.sign(input.as_bytes()).map_err(|e| e.to_string())?;
            format!("{input}.{}", b64(&sig))
        } else {
            let set = self.inner.keys.get();
            let key = set
                .signer(alg)
                .ok_or_else(|| format!("no active {alg} key"))?;
            key.sign_jwt("JWT", claims).map_err(|e| e.to_string())?
        };
        if !faults.tamper_signature {
            return Ok(jwt);
        }
        let (input, sig) = jwt
            .rsplit_once('.')
            .ok_or_else(|| "malformed JWS".to_string())?;
        let mut sig = b64_decode(sig).map_err(|e| e.to_string())?;
        if let Some(last) = sig.last_mut() {
            *last ^= 0x01;
        }
        Ok(format!("{input}.{}", b64(&sig)))
    }

    // -- /userinfo -----------------------------------------------------------

    fn userinfo(&self, method: &Method, headers: &HeaderMap, body: &[u8]) -> Response {
        let bearer_error = |status: StatusCode, error: Option<(&str, &str)>| {
            let mut challenge = format!("Bearer realm=\"{}\"", self.issuer());
            if let Some((e, d)) = error {
                let _ = write!(challenge, ", error=\"{e}\", error_description=\"{d}\"");
            }
            let body = match error {
                Some((e, d)) => json!({"error": e, "error_description": d}),
                None => json!({"error": "invalid_token", "error_description": "no access token"}),
            };
            let mut resp = json_no_store(status, body);
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            resp
        };
        let from_header = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v.to_str().unwrap_or("");
                match v.split_once(' ') {
                    Some((s, t)) if s.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                        Some(t.trim().to_string())
                    }
                    _ => {
                        return bearer_error(
                            StatusCode::UNAUTHORIZED,
                            Some(("invalid_token", "malformed Authorization header")),
                        )
                    }
                }
            }
        };
        let from_body = if method == Method::POST {
            match form_params(headers, body) {
                Ok(p) => p.get("access_token").cloned(),
                Err(_) => {
                    return bearer_error(
                        StatusCode::BAD_REQUEST,
                        Some(("invalid_request", "malformed form body")),
                    );
                }
            }
        } else {
            None
        };
        let token = match (from_header, from_body) {
            (Some(_), Some(_)) => {
                return bearer_error(
                    StatusCode::BAD_REQUEST,
                    Some(("invalid_request", "more than one access token")),
                )
            }
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return bearer_error(StatusCode::UNAUTHORIZED, None),
        };
        let now = now();
        let grant = self
            .store()
            .tokens
            .get(&token)
            .filter(|g| g.expires > now)
            .cloned();
        let Some(grant) = grant else {
            return bearer_error(
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", "the access token is invalid or expired")),
            );
        };
        let mut claims = self.person_claims(&grant.login, &grant.scopes);
        apply_claim_faults(&mut claims, &self.faults());
        json_no_store(StatusCode::OK, Value::Object(claims))
    }

    // -- /session/end --------------------------------------------------------

    fn end_session(
        &self,
        headers: &HeaderMap,
        params: Result<HashMap<String, String>, String>,
    ) -> Response {
        let p = match params {
            Ok(p) => p,
            Err(e) => {
                return self.error_page(
                    StatusCode::BAD_REQUEST,
                    "Requête invalide (invalid request)",
                    &e,
                )
            }
        };
        // The hint is one of our ID tokens: verify it (expired is fine).
        let keys = self.inner.keys.get();
        let hint = p
            .get("id_token_hint")
            .and_then(|h| keys.verify(h).ok())
            .map(|u| u.claims)
            .filter(|c| c.get("iss").and_then(Value::as_str) == Some(self.issuer()));
        let hint_aud = hint.as_ref().and_then(|c| match c.get("aud") {
            Some(Value::String(a)) => Some(a.clone()),
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(String::from),
            _ => None,
        });
        let hint_invalid = p.contains_key("id_token_hint") && hint.is_none();
        let mut ended = 0;
        {
            let mut store = self.store();
            if let Some(sid) = self.session_id(headers) {
                ended += usize::from(store.sessions.remove(&sid).is_some());
            }
            if let Some(sid) = hint
                .as_ref()
                .and_then(|c| c.get("sid"))
                .and_then(Value::as_str)
            {
                ended += usize::from(store.sessions.remove(sid).is_some());
            }
        }
        let expire = self.cookie("", 0);
        let client_id = match (p.get("client_id"), hint_aud) {
            (Some(c), Some(a)) if *c != a => None,
            (Some(c), _) => Some(c.clone()),
            (None, a) => a,
        };
        let mut note = String::new();
        if let Some(uri) = p.get("post_logout_redirect_uri") {
            let registered = client_id
                .as_deref()
                .and_then(|c| self.client(c))
                .is_some_and(|c| c.post_logout_redirect_uris.iter().any(|u| u == uri));
            if registered && !hint_invalid {
                let mut params = Vec::new();
                if let Some(s) = p.get("state") {
                    params.push(("state", s.as_str()));
                }
                return with_cookie(redirect_with(uri, &params), &expire);
            }
            note = "<p class=\"error\" role=\"alert\">L'adresse de retour n'est pas enregistrée pour ce client : vous restez ici. (The post_logout_redirect_uri is not registered for this client.)</p>\n".into();
        }
        let content = format!(
            "{note}<p>Vous êtes déconnecté de {} ({}). (You are signed out.)</p>",
            esc(&self.config().name),
            if ended > 0 {
                "session terminée / session ended"
            } else {
                "aucune session / no session"
            }
        );
        with_cookie(
            html(
                StatusCode::OK,
                page("Déconnexion (signed out)", &self.config().name, &content),
            ),
            &expire,
        )
    }

    // -- discovery -----------------------------------------------------------

    fn discovery_document(&self) -> Value {
        let mut claims: Vec<&str> = vec![
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "acr",
            "amr",
            "at_hash",
            "sid",
        ];
        claims.extend(PERSON_CLAIMS);
        let mut doc = json!({
            "issuer": self.issuer(),
            "authorization_endpoint": self.endpoint("/authorize"),
            "token_endpoint": self.endpoint("/token"),
            "userinfo_endpoint": self.endpoint("/userinfo"),
            "jwks_uri": self.endpoint("/jwks"),
            "end_session_endpoint": self.endpoint("/session/end"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.config().alg.as_str()],
            "scopes_supported": SUPPORTED_SCOPES,
            "claims_supported": claims,
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "acr_values_supported": self.config().acr_values,
            "prompt_values_supported": ["none", "login"],
            "claims_parameter_supported": false,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
            "authorization_response_iss_parameter_supported": true,
        });
        if self.faults().no_end_session {
            if let Some(d) = doc.as_object_mut() {
                d.remove("end_session_endpoint");
            }
        }
        doc
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

fn sample_person(login: &str, claims: Value) -> DemoPerson {
    DemoPerson {
        login: login.to_string(),
        password: "123".to_string(),
        claims: match claims {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

/// Sample public agents for the agent federation. `which == 1`: a ministry's
/// provider (agents of `interieur.gouv.fr`); `which == 2`: a general-purpose
/// provider (the federation's default). Camille is at both, with the same
/// verified email, so Relais links the two into one account.
pub fn demo_agents(which: u8) -> Vec<DemoPerson> {
    let agent = |login: &str, given: &str, usual: &str, email: &str, siret: &str, unit: &str| {
        sample_person(
            login,
            json!({
                "given_name": given,
                "usual_name": usual,
                "email": email,
                "uid": format!("{login}-{which}"),
                "siret": siret,
                "organizational_unit": unit,
                "belonging_population": "agent",
                "phone_number": "01 40 07 60 60",
            }),
        )
    };
    if which == 2 {
        vec![
            agent(
                "dominique",
                "Dominique",
                "Leroy",
                "dominique.leroy@mairie-demoville.fr",
                "21750000800008",
                "Accueil",
            ),
            agent(
                "camille",
                "Camille",
                "Martin",
                "camille.martin@interieur.gouv.fr",
                "13002526500013",
                "DNUM",
            ),
        ]
    } else {
        vec![
            agent(
                "camille",
                "Camille",
                "Martin",
                "camille.martin@interieur.gouv.fr",
                "13002526500013",
                "DNUM",
            ),
            // An invalid SIRET: Relais uses the provider's default SIRET.
            agent(
                "lea",
                "Léa",
                "Petit",
                "lea.petit@prefecture.interieur.gouv.fr",
                "12345678901234",
                "Préfecture",
            ),
        ]
    }
}

/// Sample people with full French pivot identities. `which == 2` gives the
/// second list; any other value gives the first. Both lists share one person
/// (Éric Jean Mercier, written "ERIC JEAN" / "MERCIER" in the second list) and
/// differ otherwise. Every password is "123".
pub fn demo_people(which: u8) -> Vec<DemoPerson> {
    if which == 2 {
        vec![
            sample_person(
                "eric",
                json!({
                    "given_name": "ERIC JEAN",
                    "family_name": "MERCIER",
                    "birthdate": "1985-03-14",
                    "gender": "male",
                    "birthplace": "69123",
                    "birthcountry": "99100",
                    "email": "e.mercier@example.com",
                    "preferred_username": "MERCIER",
                }),
            ),
            sample_person(
                "marie",
                json!({
                    "given_name": "Marie-Thérèse Jeanne",
                    "family_name": "Lefèvre-Dupont",
                    "birthdate": "1990-01-31",
                    "gender": "female",
                    "birthplace": "13055",
                    "birthcountry": "99100",
                    "email": "marie.lefevre@example.com",
                    "preferred_username": "Lefèvre",
                }),
            ),
            sample_person(
                "jean",
                json!({
                    "given_name": "Jean-Baptiste Pierre",
                    "family_name": "N'Diaye",
                    "birthdate": "2001-06-15",
                    "gender": "male",
                    "birthplace": "97411",
                    "birthcountry": "99100",
                    "email": "jb.ndiaye@example.com",
                }),
            ),
            sample_person(
                "lucia",
                json!({
                    "given_name": "Lucia Maria",
                    "family_name": "Rossi",
                    "birthdate": "1974-12-01",
                    "gender": "female",
                    "birthcountry": "99127",
                    "email": "lucia.rossi@example.com",
                    "preferred_username": "Bernard",
                }),
            ),
        ]
    } else {
        vec![
            sample_person(
                "angela",
                json!({
                    "given_name": "Angela Claire Louise",
                    "family_name": "DUBOIS",
                    "birthdate": "1962-08-24",
                    "gender": "female",
                    "birthplace": "75107",
                    "birthcountry": "99100",
                    "email": "angela.dubois@example.fr",
                    "preferred_username": "MARTIN",
                }),
            ),
            sample_person(
                "eric",
                json!({
                    "given_name": "Éric Jean",
                    "family_name": "Mercier",
                    "birthdate": "1985-03-14",
                    "gender": "male",
                    "birthplace": "69123",
                    "birthcountry": "99100",
                    "email": "eric.mercier@example.fr",
                    "preferred_username": "Mercier",
                }),
            ),
            sample_person(
                "hiroshi",
                json!({
                    "given_name": "Hiroshi",
                    "family_name": "Tanaka",
                    "birthdate": "1979-11-02",
                    "gender": "male",
                    "birthcountry": "99217",
                    "email": "hiroshi.tanaka@example.jp",
                }),
            ),
            sample_person(
                "paul",
                json!({
                    "given_name": "Paul Émile",
                    "family_name": "Durand",
                    "birthdate": "1958-05-09",
                    "gender": "male",
                    "birthplace": "33063",
                    "birthcountry": "99100",
                    "email": "paul.durand@example.fr",
                }),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais::crypto::jws::verify_with_jwks;
    use relais::crypto::keys;
    use std::path::PathBuf;

    const CLIENT: &str = "relais-test";
    /// Characters that must be form-encoded inside HTTP Basic (RFC 6749 2.3.1).
    const SECRET: &str = "s3cr:et+%/é";
    const CB: &str = "http://rp.example/callback";
    const BYE: &str = "http://rp.example/bye";

    struct T {
        idp: DemoIdp,
        base: String,
        http: reqwest::Client,
        dir: PathBuf,
    }

    impl Drop for T {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    struct Flow {
        verifier: String,
        state: String,
        nonce: String,
    }

    impl Flow {
        fn new() -> Flow {
            Flow {
                verifier: random_token(32),
                state: random_token(8),
                nonce: random_token(8),
            }
        }
    }

    async fn start_with(alg: Alg, path: &str, auto_login: bool) -> T {
        let dir = std::env::temp_dir().join(format!("relais-demoidp-{}", random_token(6)));
        keys::ensure(&dir, &[alg]).unwrap();
        let ring = Arc::new(KeyRing::open(&dir).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let issuer = format!("http://127.0.0.1:{port}{path}");
        let idp = DemoIdp::new(
            DemoIdpConfig {
                issuer: issuer.clone(),
                name: "Impots demo".into(),
                people: demo_people(1),
                clients: vec![DemoClient {
                    client_id: CLIENT.into(),
                    client_secret: SECRET.into(),
                    redirect_uris: vec![CB.into()],
                    post_logout_redirect_uris: vec![BYE.into()],
                }],
                acr_values: vec!["eidas1".into(), "eidas2".into()],
                auto_login,
                alg,
            },
            ring,
        );
        let app = if path.is_empty() {
            idp.router()
        } else {
            Router::new().nest(path, idp.router())
        };
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        T {
            idp,
            base: issuer,
            http,
            dir,
        }
    }

    async fn start() -> T {
        start_with(Alg::ES256, "", false).await
    }

    fn location(r: &reqwest::Response) -> HashMap<String, String> {
        let loc = r
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("no Location, status {}", r.status()))
            .to_str()
            .unwrap();
        url::Url::parse(loc)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn location_base(r: &reqwest::Response) -> String {
        let loc = r.headers()["location"].to_str().unwrap();
        loc.split('?').next().unwrap().to_string()
    }

    fn request_id(html: &str) -> String {
        let i = html.find("name=\"request_id\" value=\"").unwrap() + 25;
        html[i..].split('"').next().unwrap().to_string()
    }

    /// The `name=value` part of the session cookie set by `r`.
    fn cookie_of(r: &reqwest::Response) -> String {
        let sc = r.headers()["set-cookie"].to_str().unwrap();
        sc.split(';').next().unwrap().to_string()
    }

    fn basic(id: &str, secret: &str) -> String {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let raw = format!("{}:{}", enc(id), enc(secret));
        format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw)
        )
    }

    impl T {
        fn url(&self, p: &str) -> String {
            format!("{}{p}", self.base)
        }

        /// GET /authorize with a valid request; `extra` overrides parameters
        /// (an empty value removes one).
        async fn authorize(
            &self,
            f: &Flow,
            extra: &[(&str, &str)],
            cookie: Option<&str>,
        ) -> reqwest::Response {
            let challenge = sha256_b64(f.verifier.as_bytes());
            let mut q: Vec<(&str, &str)> = vec![
                ("client_id", CLIENT),
                ("redirect_uri", CB),
                ("response_type", "code"),
                ("scope", "openid profile birth email"),
                ("state", &f.state),
                ("nonce", &f.nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ];
            for (k, v) in extra {
                q.retain(|(a, _)| a != k);
                if !v.is_empty() {
                    q.push((k, v));
                }
            }
            let mut rb = self.http.get(self.url("/authorize")).query(&q);
            if let Some(c) = cookie {
                rb = rb.header("cookie", c);
            }
            rb.send().await.unwrap()
        }

        async fn login(&self, html: &str, login: &str, password: &str) -> reqwest::Response {
            self.http
                .post(self.url("/login"))
                .form(&[
                    ("request_id", request_id(html).as_str()),
                    ("login", login),
                    ("password", password),
                    ("action", "login"),
                ])
                .send()
                .await
                .unwrap()
        }

        /// Authorize, show the form, sign in: (code, session cookie).
        async fn sign_in(&self, f: &Flow, extra: &[(&str, &str)], login: &str) -> (String, String) {
            let r = self.authorize(f, extra, None).await;
            assert_eq!(r.status(), 200);
            let html = r.text().await.unwrap();
            let r = self.login(&html, login, "123").await;
            assert_eq!(r.status(), 302);
            let q = location(&r);
            assert_eq!(q["state"], f.state);
            assert_eq!(q["iss"], self.base);
            (q["code"].clone(), cookie_of(&r))
        }

        async fn token(&self, code: &str, verifier: Option<&str>, post: bool) -> reqwest::Response {
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", CB),
            ];
            if let Some(v) = verifier {
                form.push(("code_verifier", v));
            }
            let mut rb = self.http.post(self.url("/token"));
            if post {
                form.push(("client_id", CLIENT));
                form.push(("client_secret", SECRET));
            } else {
                rb = rb.header("authorization", basic(CLIENT, SECRET));
            }
            rb.form(&form).send().await.unwrap()
        }

        async fn jwks(&self) -> Value {
            let r = self.http.get(self.url("/jwks")).send().await.unwrap();
            assert_eq!(r.headers()["content-type"], "application/json");
            r.json().await.unwrap()
        }

        /// Code flow to the token response (auto-login must be on).
        async fn tokens(&self, f: &Flow) -> Value {
            let r = self.authorize(f, &[("login_hint", "angela")], None).await;
            let code = location(&r)["code"].clone();
            let r = self.token(&code, Some(&f.verifier), false).await;
            assert_eq!(r.status(), 200);
            r.json().await.unwrap()
        }

        async fn userinfo(&self, at: &str) -> reqwest::Response {
            self.http
                .get(self.url("/userinfo"))
                .bearer_auth(at)
                .send()
                .await
                .unwrap()
        }
    }

    fn payload(jwt: &str) -> Map<String, Value> {
        let p = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&b64_decode(p).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn discovery_document() {
        let t = start().await;
        let d: Value = t
            .http
            .get(t.url("/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["issuer"], t.base);
        assert_eq!(d["authorization_endpoint"], t.url("/authorize"));
        assert_eq!(d["token_endpoint"], t.url("/token"));
        assert_eq!(d["userinfo_endpoint"], t.url("/userinfo"));
        assert_eq!(d["jwks_uri"], t.url("/jwks"));
        assert_eq!(d["end_session_endpoint"], t.url("/session/end"));
        assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
        assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(d["acr_values_supported"], json!(["eidas1", "eidas2"]));
        assert_eq!(d["authorization_response_iss_parameter_supported"], true);
        assert_eq!(
            d["token_endpoint_auth_methods_supported"],
            json!(["client_secret_basic", "client_secret_post"])
        );
        let scopes = d["scopes_supported"].as_array().unwrap();
        for s in ["openid", "identite_pivot", "birth", "birthcountry"] {
            assert!(scopes.contains(&json!(s)), "{s}");
        }
        assert_eq!(t.jwks().await["keys"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn full_code_flow_with_pkce() {
        let t = start().await;
        let f = Flow::new();
        let r = t.authorize(&f, &[("acr_values", "eidas2")], None).await;
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        assert!(html.contains("<html lang=\"fr\">"));
        assert!(html.contains("<label for=\"login\">"));
        assert!(html.contains("<label for=\"password\">"));
        assert!(html.contains("action=\"/login\""));
        assert!(
            html.contains("<td>angela</td><td>123</td>"),
            "demo accounts listed"
        );

        let r = t.login(&html, "angela", "123").await;
        assert_eq!(r.status(), 302);
        assert_eq!(location_base(&r), CB);
        let sc = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(sc.starts_with("demo_idp_"), "{sc}");
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(sc.contains(attr), "{sc}");
        }
        assert_eq!(t.idp.session_count(), 1);
        let q = location(&r);
        assert_eq!(q["state"], f.state);
        assert_eq!(q["iss"], t.base);

        let r = t.token(&q["code"], Some(&f.verifier), false).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let tok: Value = r.json().await.unwrap();
        assert_eq!(tok["token_type"], "Bearer");
        assert_eq!(tok["expires_in"], 300);
        assert_eq!(tok["scope"], "openid profile birth email");
        let at = tok["access_token"].as_str().unwrap();
        let id_token = tok["id_token"].as_str().unwrap();

        let jwks = t.jwks().await;
        let u = verify_with_jwks(id_token, &jwks).unwrap();
        assert_eq!(u.header["alg"], "ES256");
        let c = &u.claims;
        let now = now();
        assert_eq!(c["iss"], t.base);
        assert_eq!(c["aud"], CLIENT);
        assert_eq!(c["nonce"], f.nonce.as_str());
        assert_eq!(c["acr"], "eidas2");
        assert_eq!(c["amr"], json!(["pwd"]));
        assert_eq!(c["at_hash"], half_hash(Alg::ES256, at).as_str());
        let sub = hex(ring::digest::digest(
            &ring::digest::SHA256,
            format!("{}angela", t.base).as_bytes(),
        )
        .as_ref());
        assert_eq!(c["sub"], sub.as_str());
        assert!(c["exp"].as_u64().unwrap() > now + 200);
        assert!(c["iat"].as_u64().unwrap() <= now + 1);
        assert!(c["auth_time"].as_u64().unwrap() <= now + 1);
        assert_eq!(c["given_name"], "Angela Claire Louise");
        assert_eq!(c["birthplace"], "75107");
        assert_eq!(c["birthcountry"], "99100");
        assert_eq!(c["email"], "angela.dubois@example.fr");

        let r = t.userinfo(at).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let ui: Value = r.json().await.unwrap();
        assert_eq!(ui["sub"], sub.as_str());
        assert_eq!(ui["family_name"], "DUBOIS");
        assert_eq!(ui["birthdate"], "1962-08-24");
        assert!(ui.get("nonce").is_none());
        // POST with the token in the body (RFC 6750 section 2.2).
        let r = t
            .http
            .post(t.url("/userinfo"))
            .form(&[("access_token", at)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), ui);
    }

    #[tokio::test]
    async fn scopes_select_claims() {
        let t = start_with(Alg::ES256, "", true).await;
        let f = Flow::new();
        let r = t
            .authorize(
                &f,
                &[
                    ("login_hint", "hiroshi"),
                    ("scope", "openid birthcountry unknown_scope"),
                ],
                None,
            )
            .await;
        let code = location(&r)["code"].clone();
        let tok: Value = t
            .token(&code, Some(&f.verifier), true)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(tok["scope"], "openid birthcountry");
        let c = payload(tok["id_token"].as_str().unwrap());
        assert_eq!(c["birthcountry"], "99217");
        assert!(!c.contains_key("given_name"));
        assert!(!c.contains_key("birthplace"));
        assert_eq!(c["acr"], "eidas1", "lowest level when none is requested");
        let ui: Value = t
            .userinfo(tok["access_token"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(ui.as_object().unwrap().len(), 2, "{ui}");

        // identite_pivot of someone born abroad: no birthplace.
        let f = Flow::new();
        let r = t
            .authorize(
                &f,
                &[
                    ("login_hint", "hiroshi"),
                    ("scope", "openid identite_pivot"),
                ],
                None,
            )
            .await;
        let code = location(&r)["code"].clone();
        let tok: Value = t
            .token(&code, Some(&f.verifier), true)
            .await
            .json()
            .await
            .unwrap();
        let c = payload(tok["id_token"].as_str().unwrap());
        for k in [
            "given_name",
            "family_name",
            "birthdate",
            "gender",
            "birthcountry",
        ] {
            assert!(c.contains_key(k), "{k}");
        }
        assert!(!c.contains_key("birthplace"));
        assert!(!c.contains_key("email"));
    }

    #[tokio::test]
    async fn wrong_password_shows_the_form_again() {
        let t = start().await;
        let f = Flow::new();
        let html = t.authorize(&f, &[], None).await.text().await.unwrap();
        let r = t.login(&html, "angela", "nope").await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("location").is_none());
        assert!(r.headers().get("set-cookie").is_none());
        let again = r.text().await.unwrap();
        assert!(again.contains("role=\"alert\""));
        assert!(again.contains("value=\"angela\""));
        assert_eq!(request_id(&again), request_id(&html));
        assert_eq!(t.idp.session_count(), 0);
        // The same pending request still works with the right password.
        let r = t.login(&again, "angela", "123").await;
        assert_eq!(r.status(), 302);
        assert!(location(&r).contains_key("code"));
        // ...once.
        let r = t.login(&again, "angela", "123").await;
        assert_eq!(r.status(), 400);
    }

    #[tokio::test]
    async fn cancel_returns_access_denied() {
        let t = start().await;
        let f = Flow::new();
        let html = t.authorize(&f, &[], None).await.text().await.unwrap();
        let r = t
            .http
            .post(t.url("/login"))
            .form(&[
                ("request_id", request_id(&html).as_str()),
                ("action", "cancel"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(location_base(&r), CB);
        let q = location(&r);
        assert_eq!(q["error"], "access_denied");
        assert_eq!(q["state"], f.state);
        assert_eq!(q["iss"], t.base);
    }

    #[tokio::test]
    async fn client_authentication() {
        let t = start().await;
        // client_secret_post works.
        let f = Flow::new();
        let (code, _) = t.sign_in(&f, &[], "eric").await;
        let r = t.token(&code, Some(&f.verifier), true).await;
        assert_eq!(r.status(), 200);

        // Wrong secret, Basic and post.
        let f = Flow::new();
        let (code, _) = t.sign_in(&f, &[], "eric").await;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CB),
            ("code_verifier", f.verifier.as_str()),
        ];
        let r = t
            .http
            .post(t.url("/token"))
            .header("authorization", basic(CLIENT, "wrong"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
        let mut post = form.to_vec();
        post.push(("client_id", CLIENT));
        post.push(("client_secret", "wrong"));
        let r = t
            .http
            .post(t.url("/token"))
            .form(&post)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
        // The raw secret in Basic without form-encoding is not the secret.
        let raw = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{CLIENT}:{SECRET}")
            )
        );
        let r = t
            .http
            .post(t.url("/token"))
            .header("authorization", raw)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // No authentication at all.
        let r = t
            .http
            .post(t.url("/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // Two methods at once.
        let mut both = form.to_vec();
        both.push(("client_secret", SECRET));
        let r = t
            .http
            .post(t.url("/token"))
            .header("authorization", basic(CLIENT, SECRET))
            .form(&both)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
        // The code was not consumed by the failures.
        let r = t.token(&code, Some(&f.verifier), false).await;
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn token_request_errors() {
        let t = start().await;
        let f = Flow::new();
        let (code, _) = t.sign_in(&f, &[], "angela").await;
        let send = |form: Vec<(&'static str, String)>| {
            t.http
                .post(t.url("/token"))
                .header("authorization", basic(CLIENT, SECRET))
                .form(&form)
                .send()
        };
        let r = send(vec![("grant_type", "password".into())]).await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "unsupported_grant_type"
        );
        let r = send(vec![("code", code.clone())]).await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
        let r = send(vec![
            ("grant_type", "authorization_code".into()),
            ("redirect_uri", CB.into()),
        ])
        .await
        .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
        // Other redirect_uri.
        let r = send(vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.clone()),
            ("redirect_uri", "http://rp.example/other".into()),
            ("code_verifier", f.verifier.clone()),
        ])
        .await
        .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
        // Not a form.
        let r = t
            .http
            .post(t.url("/token"))
            .header("authorization", basic(CLIENT, SECRET))
            .json(&json!({"grant_type": "authorization_code"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
        // An expired code.
        for g in lock(&t.idp.inner.store).codes.values_mut() {
            g.expires = 1;
        }
        let r = t.token(&code, Some(&f.verifier), false).await;
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "invalid_grant");
        assert_eq!(e["error_description"], "authorization code expired");
    }

    #[tokio::test]
    async fn code_is_single_use() {
        let t = start().await;
        let f = Flow::new();
        let (code, _) = t.sign_in(&f, &[], "angela").await;
        let r = t.token(&code, Some(&f.verifier), false).await;
        assert_eq!(r.status(), 200);
        let at = r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(t.userinfo(&at).await.status(), 200);
        let r = t.token(&code, Some(&f.verifier), false).await;
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
        // Reuse revokes the access token it gave.
        assert_eq!(t.userinfo(&at).await.status(), 401);
        let r = t.token("no-such-code", Some(&f.verifier), false).await;
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    }

    #[tokio::test]
    async fn pkce_is_enforced() {
        let t = start().await;
        let f = Flow::new();
        let (code, _) = t.sign_in(&f, &[], "angela").await;
        let r = t.token(&code, Some(&random_token(32)), false).await;
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
        let r = t.token(&code, None, false).await;
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
        assert_eq!(t.token(&code, Some(&f.verifier), false).await.status(), 200);

        // No challenge at authorize: a verifier at token is refused (downgrade).
        let f = Flow::new();
        let (code, cookie) = t
            .sign_in(
                &f,
                &[("code_challenge", ""), ("code_challenge_method", "")],
                "angela",
            )
            .await;
        let r = t.token(&code, Some(&f.verifier), false).await;
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
        // Without PKCE at all the flow works.
        let f = Flow::new();
        let r = t
            .authorize(
                &f,
                &[("code_challenge", ""), ("code_challenge_method", "")],
                Some(&cookie),
            )
            .await;
        let code = location(&r)["code"].clone();
        assert_eq!(t.token(&code, None, false).await.status(), 200);

        // plain is rejected, as is a missing method (defaults to plain).
        for method in ["plain", ""] {
            let f = Flow::new();
            let r = t
                .authorize(&f, &[("code_challenge_method", method)], None)
                .await;
            assert_eq!(r.status(), 302);
            let q = location(&r);
            assert_eq!(q["error"], "invalid_request");
            assert_eq!(q["state"], f.state);
            assert_eq!(q["iss"], t.base);
        }
    }

    #[tokio::test]
    async fn untrusted_redirect_uri_gets_a_page() {
        let t = start().await;
        let f = Flow::new();
        for extra in [
            [("redirect_uri", "http://evil.example/cb")],
            [("redirect_uri", "http://rp.example/callback/")],
            [("redirect_uri", "")],
            [("client_id", "unknown")],
            [("client_id", "")],
        ] {
            let r = t.authorize(&f, &extra, None).await;
            assert_eq!(r.status(), 400, "{extra:?}");
            assert!(r.headers().get("location").is_none());
            assert!(r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"));
            assert!(r.text().await.unwrap().contains("lang=\"fr\""));
        }
    }

    #[tokio::test]
    async fn authorize_request_errors_go_back_to_the_client() {
        let t = start().await;
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[("response_type", "token")], "unsupported_response_type"),
            (&[("response_type", "")], "invalid_request"),
            (&[("scope", "profile")], "invalid_scope"),
            (&[("nonce", "")], "invalid_request"),
            (&[("prompt", "none login")], "invalid_request"),
            (&[("request", "eyJ")], "request_not_supported"),
        ];
        for (extra, error) in cases {
            let f = Flow::new();
            let r = t.authorize(&f, extra, None).await;
            assert_eq!(r.status(), 302, "{extra:?}");
            assert_eq!(location_base(&r), CB);
            let q = location(&r);
            assert_eq!(q["error"], error, "{extra:?}");
            assert_eq!(q["state"], f.state);
            assert_eq!(q["iss"], t.base);
        }
        // Missing state: an error without state.
        let f = Flow::new();
        let r = t.authorize(&f, &[("state", "")], None).await;
        let q = location(&r);
        assert_eq!(q["error"], "invalid_request");
        assert!(!q.contains_key("state"));
        // POST /authorize is accepted too.
        let challenge = sha256_b64(f.verifier.as_bytes());
        let r = t
            .http
            .post(t.url("/authorize"))
            .form(&[
                ("client_id", CLIENT),
                ("redirect_uri", CB),
                ("response_type", "code"),
                ("scope", "openid"),
                ("state", "s"),
                ("nonce", "n"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("request_id"));
    }

    #[tokio::test]
    async fn prompt_none_without_session() {
        let t = start().await;
        let f = Flow::new();
        let r = t.authorize(&f, &[("prompt", "none")], None).await;
        assert_eq!(r.status(), 302);
        let q = location(&r);
        assert_eq!(q["error"], "login_required");
        assert_eq!(q["state"], f.state);
        assert_eq!(q["iss"], t.base);
        // An unknown cookie is no session either.
        let r = t
            .authorize(&f, &[("prompt", "none")], Some("demo_idp_x=y; other=z"))
            .await;
        assert_eq!(location(&r)["error"], "login_required");
    }

    #[tokio::test]
    async fn sso_with_the_session_cookie() {
        let t = start().await;
        let f = Flow::new();
        let (_, cookie) = t.sign_in(&f, &[], "angela").await;
        let auth_time = lock(&t.idp.inner.store)
            .sessions
            .values()
            .next()
            .unwrap()
            .auth_time;
        let f = Flow::new();
        let r = t.authorize(&f, &[], Some(&cookie)).await;
        assert_eq!(r.status(), 302, "no form");
        let q = location(&r);
        assert_eq!(q["state"], f.state);
        let tok: Value = t
            .token(&q["code"], Some(&f.verifier), false)
            .await
            .json()
            .await
            .unwrap();
        let c = payload(tok["id_token"].as_str().unwrap());
        assert_eq!(c["auth_time"], auth_time);
        assert_eq!(c["given_name"], "Angela Claire Louise");
        // prompt=none works with the session.
        let r = t
            .authorize(&Flow::new(), &[("prompt", "none")], Some(&cookie))
            .await;
        assert!(location(&r).contains_key("code"));
        // prompt=login, max_age=0 and another login_hint show the form.
        for extra in [
            ("prompt", "login"),
            ("max_age", "0"),
            ("login_hint", "eric"),
        ] {
            let r = t.authorize(&Flow::new(), &[extra], Some(&cookie)).await;
            assert_eq!(r.status(), 200, "{extra:?}");
        }
        assert_eq!(t.idp.session_count(), 1);
        // Signing in again (prompt=login) replaces the browser's session.
        let html = t
            .authorize(&Flow::new(), &[("prompt", "login")], Some(&cookie))
            .await
            .text()
            .await
            .unwrap();
        let r = t
            .http
            .post(t.url("/login"))
            .header("cookie", &cookie)
            .form(&[
                ("request_id", request_id(&html).as_str()),
                ("login", "eric"),
                ("password", "123"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        assert_ne!(cookie_of(&r), cookie);
        assert_eq!(t.idp.session_count(), 1);
    }

    #[tokio::test]
    async fn session_end_with_cookie() {
        let t = start().await;
        let f = Flow::new();
        let (_, cookie) = t.sign_in(&f, &[], "angela").await;
        assert_eq!(t.idp.session_count(), 1);
        let r = t
            .http
            .get(t.url("/session/end"))
            .query(&[
                ("post_logout_redirect_uri", BYE),
                ("state", "bye-state"),
                ("client_id", CLIENT),
            ])
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(location_base(&r), BYE);
        assert_eq!(location(&r)["state"], "bye-state");
        let sc = r.headers()["set-cookie"].to_str().unwrap();
        assert!(sc.contains("Max-Age=0"), "{sc}");
        assert_eq!(t.idp.session_count(), 0);
        let r = t
            .authorize(&Flow::new(), &[("prompt", "none")], Some(&cookie))
            .await;
        assert_eq!(location(&r)["error"], "login_required");

        // Unregistered post_logout_redirect_uri: a page, no redirect.
        let r = t
            .http
            .get(t.url("/session/end"))
            .query(&[
                ("post_logout_redirect_uri", "http://evil.example/"),
                ("client_id", CLIENT),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("location").is_none());
        assert!(r.text().await.unwrap().contains("déconnecté"));
    }

    #[tokio::test]
    async fn session_end_with_id_token_hint() {
        let t = start().await;
        let f = Flow::new();
        let (code, _) = t.sign_in(&f, &[], "angela").await;
        let tok: Value = t
            .token(&code, Some(&f.verifier), false)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(t.idp.session_count(), 1);
        // No cookie, no client_id: the hint names the client and the session.
        let r = t
            .http
            .get(t.url("/session/end"))
            .query(&[
                ("id_token_hint", tok["id_token"].as_str().unwrap()),
                ("post_logout_redirect_uri", BYE),
                ("state", "st"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(location(&r)["state"], "st");
        assert_eq!(t.idp.session_count(), 0);
        // A forged hint is not trusted for the redirect.
        let forged = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(br#"{"aud":"relais-test"}"#)
        );
        let r = t
            .http
            .get(t.url("/session/end"))
            .query(&[
                ("id_token_hint", forged.as_str()),
                ("post_logout_redirect_uri", BYE),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn userinfo_errors() {
        let t = start().await;
        let r = t.http.get(t.url("/userinfo")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let wa = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(wa.starts_with("Bearer"), "{wa}");
        let r = t.userinfo("not-a-token").await;
        assert_eq!(r.status(), 401);
        let wa = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(wa.contains("error=\"invalid_token\""), "{wa}");
        let r = t
            .http
            .get(t.url("/userinfo"))
            .header("authorization", "Basic Zm9vOmJhcg==")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // Expired token.
        let t2 = start_with(Alg::ES256, "", true).await;
        let tok = t2.tokens(&Flow::new()).await;
        for g in lock(&t2.idp.inner.store).tokens.values_mut() {
            g.expires = 1;
        }
        let r = t2.userinfo(tok["access_token"].as_str().unwrap()).await;
        assert_eq!(r.status(), 401);
    }

    #[tokio::test]
    async fn auto_login_with_login_hint() {
        let t = start_with(Alg::ES256, "", true).await;
        let f = Flow::new();
        let r = t.authorize(&f, &[("login_hint", "eric")], None).await;
        assert_eq!(r.status(), 302);
        assert!(cookie_of(&r).starts_with("demo_idp_"));
        assert_eq!(t.idp.session_count(), 1);
        // Unknown hint: the form.
        let r = t.authorize(&f, &[("login_hint", "nobody")], None).await;
        assert_eq!(r.status(), 200);
        // prompt=none never signs in.
        let r = t
            .authorize(&f, &[("login_hint", "eric"), ("prompt", "none")], None)
            .await;
        assert_eq!(location(&r)["error"], "login_required");
    }

    #[tokio::test]
    async fn faults_change_the_output() {
        let t = start_with(Alg::ES256, "", true).await;
        let jwks = t.jwks().await;
        let good = t.tokens(&Flow::new()).await;
        assert!(verify_with_jwks(good["id_token"].as_str().unwrap(), &jwks).is_ok());

        t.idp.set_faults(Faults {
            tamper_signature: true,
            ..Faults::default()
        });
        let tok = t.tokens(&Flow::new()).await;
        assert_eq!(
            verify_with_jwks(tok["id_token"].as_str().unwrap(), &jwks).unwrap_err(),
            relais::crypto::JwsError::BadSignature
        );

        t.idp.set_faults(Faults {
            sign_with_foreign_key: true,
            ..Faults::default()
        });
        let tok = t.tokens(&Flow::new()).await;
        let jwt = tok["id_token"].as_str().unwrap();
        assert_eq!(
            verify_with_jwks(jwt, &jwks).unwrap_err(),
            relais::crypto::JwsError::UnknownKey
        );
        let u = relais::crypto::Unverified::parse(jwt).unwrap();
        assert_eq!(u.alg().unwrap(), Alg::ES256);

        t.idp.set_faults(Faults {
            unsigned: true,
            ..Faults::default()
        });
        let tok = t.tokens(&Flow::new()).await;
        let jwt = tok["id_token"].as_str().unwrap();
        assert!(jwt.ends_with('.'));
        let header: Value =
            serde_json::from_slice(&b64_decode(jwt.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], "none");
        assert!(verify_with_jwks(jwt, &jwks).is_err());

        t.idp.set_faults(Faults {
            wrong_nonce: true,
            ..Faults::default()
        });
        let f = Flow::new();
        let c = payload(t.tokens(&f).await["id_token"].as_str().unwrap());
        assert_ne!(c["nonce"], f.nonce.as_str());

        t.idp.set_faults(Faults {
            wrong_audience: true,
            ..Faults::default()
        });
        let c = payload(t.tokens(&Flow::new()).await["id_token"].as_str().unwrap());
        assert_ne!(c["aud"], CLIENT);

        t.idp.set_faults(Faults {
            expired: true,
            ..Faults::default()
        });
        let tok = t.tokens(&Flow::new()).await;
        let jwt = tok["id_token"].as_str().unwrap();
        assert!(verify_with_jwks(jwt, &jwks).is_ok(), "still well signed");
        assert!(payload(jwt)["exp"].as_u64().unwrap() < now());

        t.idp.set_faults(Faults {
            acr: Some("eidas3".into()),
            ..Faults::default()
        });
        let c = payload(t.tokens(&Flow::new()).await["id_token"].as_str().unwrap());
        assert_eq!(c["acr"], "eidas3");

        let mut set = Map::new();
        set.insert("family_name".into(), json!("IMPOSTEUR"));
        t.idp.set_faults(Faults {
            drop_claims: vec!["birthplace".into()],
            set_claims: set,
            ..Faults::default()
        });
        let tok = t.tokens(&Flow::new()).await;
        let c = payload(tok["id_token"].as_str().unwrap());
        assert!(!c.contains_key("birthplace"));
        assert_eq!(c["family_name"], "IMPOSTEUR");
        let ui: Value = t
            .userinfo(tok["access_token"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert!(ui.get("birthplace").is_none());
        assert_eq!(ui["family_name"], "IMPOSTEUR");
        assert_eq!(ui["given_name"], "Angela Claire Louise");

        t.idp.set_faults(Faults {
            token_delay_ms: 300,
            ..Faults::default()
        });
        let start = std::time::Instant::now();
        t.tokens(&Flow::new()).await;
        assert!(start.elapsed() >= std::time::Duration::from_millis(300));

        t.idp.set_faults(Faults {
            authorize_error: Some("temporarily_unavailable".into()),
            ..Faults::default()
        });
        let f = Flow::new();
        let r = t.authorize(&f, &[("login_hint", "angela")], None).await;
        let q = location(&r);
        assert_eq!(q["error"], "temporarily_unavailable");
        assert_eq!(q["state"], f.state);
        assert_eq!(q["iss"], t.base);
        // ...but never to an unregistered redirect_uri.
        let r = t
            .authorize(&f, &[("redirect_uri", "http://evil.example/")], None)
            .await;
        assert_eq!(r.status(), 400);

        t.idp.set_faults(Faults::default());
        let tok = t.tokens(&Flow::new()).await;
        assert!(verify_with_jwks(tok["id_token"].as_str().unwrap(), &jwks).is_ok());
    }

    #[tokio::test]
    async fn acr_selection() {
        let t = start().await;
        let cases = [
            (None, "eidas1"),
            (Some("eidas1"), "eidas1"),
            (Some("eidas2"), "eidas2"),
            (Some("eidas1 eidas2"), "eidas2"),
            (Some("eidas3"), "eidas2"),
            (Some("unknown"), "eidas1"),
        ];
        for (req, want) in cases {
            assert_eq!(t.idp.choose_acr(req).as_deref(), Some(want), "{req:?}");
        }
        let f = Flow::new();
        let (code, _) = t.sign_in(&f, &[("acr_values", "eidas3")], "eric").await;
        let tok: Value = t
            .token(&code, Some(&f.verifier), false)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(payload(tok["id_token"].as_str().unwrap())["acr"], "eidas2");
    }

    #[tokio::test]
    async fn issuer_with_a_path_and_two_instances() {
        let a = start_with(Alg::ES256, "/impots", false).await;
        let b = start_with(Alg::ES256, "/impots", false).await;
        assert_ne!(a.idp.inner.cookie_name, b.idp.inner.cookie_name);
        let d: Value = a
            .http
            .get(a.url("/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["issuer"], a.base);
        assert!(a.base.ends_with("/impots"));
        let f = Flow::new();
        let r = a.authorize(&f, &[], None).await;
        let html = r.text().await.unwrap();
        assert!(html.contains("action=\"/impots/login\""));
        let r = a.login(&html, "eric", "123").await;
        let code = location(&r)["code"].clone();
        let tok: Value = a
            .token(&code, Some(&f.verifier), false)
            .await
            .json()
            .await
            .unwrap();
        let c = payload(tok["id_token"].as_str().unwrap());
        assert_eq!(c["iss"], a.base);
        // Same person, another IdP: another sub.
        assert_ne!(c["sub"], json!(b.idp.subject("eric")));
    }

    #[tokio::test]
    async fn openidconnect_rp_accepts_it() {
        use openidconnect::core::{
            CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreResponseType,
            CoreUserInfoClaims,
        };
        use openidconnect::{
            AccessTokenHash, AuthType, AuthenticationContextClass, AuthenticationFlow,
            AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
            OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
        };
        // EdDSA also checks the at_hash convention (SHA-512 for Ed25519).
        let t = start_with(Alg::EdDSA, "/idp", false).await;
        let meta =
            CoreProviderMetadata::discover_async(IssuerUrl::new(t.base.clone()).unwrap(), &t.http)
                .await
                .unwrap();
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(CLIENT.into()),
            Some(ClientSecret::new(SECRET.into())),
        )
        .set_redirect_uri(RedirectUrl::new(CB.into()).unwrap());
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EdDsa]);

        for (post, fault) in [
            (false, None),
            (true, None),
            (
                false,
                Some(Faults {
                    tamper_signature: true,
                    ..Faults::default()
                }),
            ),
            (
                false,
                Some(Faults {
                    sign_with_foreign_key: true,
                    ..Faults::default()
                }),
            ),
            (
                false,
                Some(Faults {
                    unsigned: true,
                    ..Faults::default()
                }),
            ),
            (
                false,
                Some(Faults {
                    wrong_nonce: true,
                    ..Faults::default()
                }),
            ),
            (
                false,
                Some(Faults {
                    wrong_audience: true,
                    ..Faults::default()
                }),
            ),
            (
                false,
                Some(Faults {
                    expired: true,
                    ..Faults::default()
                }),
            ),
        ] {
            let client = if post {
                client.clone().set_auth_type(AuthType::RequestBody)
            } else {
                client.clone()
            };
            t.idp.set_faults(fault.clone().unwrap_or_default());
            let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
            let (url, state, nonce) = client
                .authorize_url(
                    AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                    CsrfToken::new_random,
                    Nonce::new_random,
                )
                .add_scope(Scope::new("identite_pivot".into()))
                .add_scope(Scope::new("email".into()))
                .add_auth_context_value(AuthenticationContextClass::new("eidas1".into()))
                .set_pkce_challenge(challenge)
                .url();
            let r = t.http.get(url.as_str()).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let html = r.text().await.unwrap();
            assert!(html.contains("action=\"/idp/login\""));
            let r = t.login(&html, "angela", "123").await;
            let q = location(&r);
            assert_eq!(&q["state"], state.secret());
            assert_eq!(q["iss"], t.base);
            let tok = client
                .exchange_code(AuthorizationCode::new(q["code"].clone()))
                .unwrap()
                .set_pkce_verifier(pkce_verifier)
                .request_async(&t.http)
                .await
                .unwrap();
            let id_token = tok.id_token().unwrap();
            let claims = id_token.claims(&verifier, &nonce);
            if fault.is_some() {
                assert!(claims.is_err(), "{fault:?} accepted");
                continue;
            }
            let claims = claims.unwrap();
            assert_eq!(claims.issuer().as_str(), t.base);
            assert_eq!(claims.auth_context_ref().unwrap().as_str(), "eidas1");
            let at_hash = AccessTokenHash::from_token(
                tok.access_token(),
                id_token.signing_alg().unwrap(),
                id_token.signing_key(&verifier).unwrap(),
            )
            .unwrap();
            assert_eq!(claims.access_token_hash(), Some(&at_hash));
            assert_eq!(
                claims.given_name().unwrap().get(None).unwrap().as_str(),
                "Angela Claire Louise"
            );
            let ui: CoreUserInfoClaims = client
                .user_info(tok.access_token().clone(), Some(claims.subject().clone()))
                .unwrap()
                .request_async(&t.http)
                .await
                .unwrap();
            assert_eq!(
                ui.family_name().unwrap().get(None).unwrap().as_str(),
                "DUBOIS"
            );
            assert_eq!(ui.email().unwrap().as_str(), "angela.dubois@example.fr");
        }
    }

    #[test]
    fn form_decoding_and_params() {
        assert_eq!(form_decode("a+b%3Ac%25%2F%C3%A9"), "a b:c%/é");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert!(parse_params(b"a=1&a=2").is_err());
        let p = parse_params(b"a=1&b=&c=x+y").unwrap();
        assert_eq!(p.get("a").unwrap(), "1");
        assert!(!p.contains_key("b"));
        assert_eq!(p.get("c").unwrap(), "x y");
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn demo_people_share_one_identity() {
        let one = demo_people(1);
        let two = demo_people(2);
        assert!((3..=4).contains(&one.len()) && (3..=4).contains(&two.len()));
        let pivot = [
            "given_name",
            "family_name",
            "birthdate",
            "gender",
            "birthplace",
            "birthcountry",
        ];
        let fold = |p: &DemoPerson, k: &str| {
            p.claims
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_uppercase()
                .replace('É', "E")
        };
        let mut shared = 0;
        for a in &one {
            for b in &two {
                if pivot.iter().all(|k| fold(a, k) == fold(b, k)) {
                    shared += 1;
                    assert_ne!(
                        a.claims["given_name"], b.claims["given_name"],
                        "written differently"
                    );
                }
            }
        }
        assert_eq!(shared, 1);
        // Someone born abroad: no birthplace.
        let abroad: Vec<_> = one
            .iter()
            .chain(&two)
            .filter(|p| p.claims["birthcountry"] != "99100")
            .collect();
        assert!(!abroad.is_empty());
        assert!(abroad.iter().all(|p| !p.claims.contains_key("birthplace")));
        assert!(one
            .iter()
            .any(|p| p.claims["given_name"] == "Angela Claire Louise"
                && p.claims["birthplace"] == "75107"));
    }
}
