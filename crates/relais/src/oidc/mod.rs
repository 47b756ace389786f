//! The OpenID Provider side: what services integrate, one file per
//! endpoint group — `authorize` (`/authorize`), `choose` (choice page,
//! email routing, abort), `callback` (`/callback/{provider_id}`), `consent`
//! (consent page, code), `token` (`/token`, `/userinfo`), `logout`
//! (`/session/end`, `/logout/callback`), `claims` (claims selection) and
//! `interaction` (the sign-in in progress). This file: the router, the
//! handler context [`Ctx`], cookies, parameters and body extractors.

pub mod authorize;
pub mod callback;
pub mod choose;
pub mod claims;
pub mod consent;
pub mod interaction;
pub mod logout;
pub mod token;

use crate::crypto::sha256_b64;
use crate::error::AppError;
use crate::state::{AppState, Federation};
use crate::web::{Lang, PageBase};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Handler state: the application and one federation.
#[derive(Clone)]
pub struct Ctx {
    pub app: Arc<AppState>,
    pub fed: Arc<Federation>,
}

/// The client's address key (`crate::limits::request_address`): the TCP
/// peer, or the trusted `X-Forwarded-For` entry.
pub struct ClientAddress(pub std::net::IpAddr);

impl axum::extract::FromRequestParts<Ctx> for ClientAddress {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Ctx,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(crate::limits::request_address(
            parts,
            ctx.app.trust_forwarded,
        )))
    }
}

/// Routes of one federation, relative to its issuer path.
pub fn router(app: Arc<AppState>, fed: Arc<Federation>) -> Router {
    let ctx = Ctx { app, fed };
    let mut router = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route(
            "/authorize",
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route("/interaction/{id}", get(choose::choose_page))
        .route("/interaction/{id}/choose", post(choose::choose_submit))
        .route("/interaction/{id}/email", post(choose::email_submit))
        .route(
            "/interaction/{id}/consent",
            get(consent::consent_page).post(consent::consent_submit),
        )
        .route("/interaction/{id}/abort", get(choose::abort))
        .route("/callback", get(callback::legacy_callback))
        .route("/callback/{provider}", get(callback::callback))
        .route("/token", post(token::token))
        .route("/userinfo", get(token::userinfo).post(token::userinfo))
        .route(
            "/session/end",
            get(logout::end_session_get).post(logout::end_session_post),
        )
        .route("/logout/callback", get(logout::upstream_logout_callback))
        .route("/static/relais.css", get(relais_css))
        .route("/static/theme.css", get(theme_css));
    // The aidants' pages exist only in citizen federations; elsewhere
    // their paths are unknown addresses (this federation's not-found page).
    if ctx.fed.cfg.profile == crate::config::Profile::Citizen {
        router = router.merge(crate::aidants::pages::router());
    }
    // Under an issuer path, an unknown address gets this federation's
    // not-found page (the root's is set in `crate::app`).
    if !ctx.fed.prefix.is_empty() {
        router = router.fallback(not_found_here);
    }
    router
        .with_state(ctx)
        .layer(axum::middleware::from_fn(head_changes_nothing))
}

async fn not_found_here(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Read what was sent (within the body limit), as a route would: an
    // unread body would cut the connection under a client still sending.
    let _ = axum::body::to_bytes(body, crate::BODY_LIMIT).await;
    let lang = lang_from(&headers, None);
    ctx.page_error(lang, StatusCode::NOT_FOUND, "not_found", None)
        .into_response()
}

/// Longest query a cross-site POST is turned into (see [`repeat_as_get`]).
const MAX_REPEATED_QUERY: usize = 8 * 1024;

/// A cross-site POST arrives without the `SameSite=Lax` session cookie even
/// when the browser has one, and its response must not replace it: the same
/// request as a GET of `path` (a top-level navigation, which carries the
/// cookie). `None` when the parameters are over their limits or too long in
/// all for a URL: the caller then handles the POST itself (its validation
/// refuses over-long parameters before any cookie is set).
pub fn repeat_as_get(ctx: &Ctx, path: &str, body: &str) -> Option<Response> {
    let params = Params::parse(body).ok()?;
    if authorize::over_long(&params).is_some() {
        return None;
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(url::form_urlencoded::parse(body.as_bytes()))
        .finish();
    (query.len() <= MAX_REPEATED_QUERY)
        .then(|| crate::error::redirect(&format!("{}?{query}", ctx.fed.url(path))))
}

/// HEAD is answered only where GET reads nothing but public documents
/// (discovery, JWKS, style sheets). Elsewhere a GET may start or end a
/// sign-in, so HEAD (which axum would route to it) gets 405 and changes
/// nothing.
async fn head_changes_nothing(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The route template, not the request path: `/callback/jwks` (a
    // provider may be called `jwks`) must not pass for the JWKS.
    let template = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str())
        .unwrap_or("");
    let public = template.ends_with("/.well-known/openid-configuration")
        || template.ends_with("/jwks")
        || template.contains("/static/");
    if req.method() == axum::http::Method::HEAD && !public {
        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        return resp;
    }
    next.run(req).await
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
        code: &'static str,
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

pub fn html_response(html: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// Parameters of a request, from the query string or a form body; a parameter
/// given twice is an error (RFC 6749 §3.1).
#[derive(Debug, Default, Clone)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn parse(raw: &str) -> Result<Params, String> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("parameter {k} is repeated"));
            }
        }
        Ok(Params(map))
    }

    /// A parameter, treating an empty value as absent.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Where a request the extractors cannot read is answered (RFC 6749 §5.2
/// for the back channel, the HTML error page for browser routes).
#[derive(Clone, Copy)]
enum Channel {
    Page,
    OAuth,
}

/// The error for a request whose body or path could not be read: `status`
/// is the rejection's (400, or 413 past the body limit).
fn unreadable(ctx: &Ctx, headers: &HeaderMap, channel: Channel, status: StatusCode) -> AppError {
    let too_large = status == StatusCode::PAYLOAD_TOO_LARGE;
    let status = if too_large {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    match channel {
        Channel::OAuth => AppError::OAuth {
            status,
            error: "invalid_request",
            description: if too_large {
                "the request body is too large".into()
            } else {
                "the request could not be read (invalid encoding)".into()
            },
        },
        Channel::Page => ctx.page_error(
            lang_from(headers, None),
            status,
            if too_large {
                "request_too_large"
            } else {
                "invalid_request"
            },
            None,
        ),
    }
}

async fn read_body(req: Request, ctx: &Ctx, channel: Channel) -> Result<String, AppError> {
    let headers = req.headers().clone();
    String::from_request(req, ctx)
        .await
        .map_err(|r| unreadable(ctx, &headers, channel, r.status()))
}

/// A browser form body as text; what cannot be read (not UTF-8, over the
/// body limit) is the HTML error page. Browser routes take this, never
/// axum's `String`, `Form` or `Bytes`, whose rejections are `text/plain`.
pub struct FormBody(pub String);

impl FromRequest<Ctx> for FormBody {
    type Rejection = AppError;
    async fn from_request(req: Request, ctx: &Ctx) -> Result<Self, AppError> {
        read_body(req, ctx, Channel::Page).await.map(FormBody)
    }
}

/// A back-channel (token endpoint) form body as text; what cannot be read is
/// an OAuth JSON `invalid_request` (400, or 413 over the body limit).
pub struct OAuthBody(pub String);

impl FromRequest<Ctx> for OAuthBody {
    type Rejection = AppError;
    async fn from_request(req: Request, ctx: &Ctx) -> Result<Self, AppError> {
        read_body(req, ctx, Channel::OAuth).await.map(OAuthBody)
    }
}

/// The one path parameter of a browser route (`{id}`, `{mid}`, `{token}`);
/// an undecodable one (`%FF`) is the HTML error page, not axum's
/// `text/plain` rejection.
pub struct Segment(pub String);

impl FromRequestParts<Ctx> for Segment {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, AppError> {
        match axum::extract::Path::<String>::from_request_parts(parts, ctx).await {
            Ok(axum::extract::Path(v)) => Ok(Segment(v)),
            Err(r) => Err(unreadable(ctx, &parts.headers, Channel::Page, r.status())),
        }
    }
}

/// The browser's cookies. A name sent twice (a cookie planted with a
/// narrower path or a parent domain beside ours: cookie tossing) counts as
/// absent: neither value is trusted.
pub struct Cookies(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Cookies {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Cookies::parse(
            parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ))
    }
}

impl Cookies {
    /// Parse `Cookie` header values; names present more than once are dropped.
    pub fn parse<'a>(headers: impl Iterator<Item = &'a str>) -> Cookies {
        let mut map = HashMap::new();
        let mut twice = std::collections::HashSet::new();
        for s in headers {
            for pair in s.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if map.insert(k.to_string(), v.to_string()).is_some() {
                        twice.insert(k.to_string());
                    }
                }
            }
        }
        for k in &twice {
            map.remove(k);
        }
        Cookies(map)
    }

    /// The database id of the session named by this federation's cookie.
    pub fn session_id(&self, fed: &Federation) -> Option<String> {
        self.0.get(&fed.cookie_name).map(|v| session_key(v))
    }

    /// Whether the request carried this federation's session cookie.
    pub fn has_session_cookie(&self, fed: &Federation) -> bool {
        self.0.contains_key(&fed.cookie_name)
    }
}

/// Sessions are stored under a hash of the cookie value, so the database
/// never holds a usable cookie.
pub fn session_key(cookie_value: &str) -> String {
    sha256_b64(cookie_value.as_bytes())
}

pub fn set_cookie(ctx: &Ctx, value: &str, max_age: i64) -> HeaderValue {
    cookie_header(ctx, &ctx.fed.cookie_name, value, max_age)
}

/// A `Set-Cookie` value for one of this federation's cookies: `HttpOnly`,
/// `SameSite=Lax`, the federation's cookie path, `Secure` over https.
pub fn cookie_header(ctx: &Ctx, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if ctx.app.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let v = format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        ctx.fed.cookie_path
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// Providers at which this browser may still hold someone else's session:
/// a usager signed in on it for Relais' own pages (mandate creation,
/// `/usager`) at a provider without RP-initiated logout. The next sign-in
/// through such a provider on this browser asks for a fresh authentication
/// (`prompt=login`, `max_age=0`), so it is never silent single sign-on as
/// that usager; a completed sign-in there takes the provider off the list.
/// Kept in a cookie of its own (provider ids joined by `.`), which survives
/// the broker and aidant sessions: the provider's session does too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relogin(Vec<String>);

/// How long the mark lasts (provider sessions of unknown length).
pub const RELOGIN_MAX_AGE_SECS: i64 = 180 * 86_400;

impl Relogin {
    fn name(fed: &Federation) -> String {
        format!("{}_relogin", fed.cookie_name)
    }

    /// The mark, keeping only this federation's providers.
    pub fn read(fed: &Federation, cookies: &Cookies) -> Relogin {
        let mut ids: Vec<String> = Vec::new();
        for id in cookies
            .0
            .get(&Self::name(fed))
            .map(String::as_str)
            .unwrap_or("")
            .split('.')
        {
            if fed.provider(id).is_some() && !ids.iter().any(|x| x == id) {
                ids.push(id.to_string());
            }
        }
        Relogin(ids)
    }

    pub fn contains(&self, provider: &str) -> bool {
        self.0.iter().any(|p| p == provider)
    }

    pub fn add(&mut self, provider: &str) {
        if !self.contains(provider) {
            self.0.push(provider.to_string());
        }
    }

    pub fn remove(&mut self, provider: &str) {
        self.0.retain(|p| p != provider);
    }

    /// Add the cookie to `resp` when the mark differs from `before`.
    pub fn store_if_changed(&self, ctx: &Ctx, before: &Relogin, resp: &mut Response) {
        if self == before {
            return;
        }
        let max_age = if self.0.is_empty() {
            0
        } else {
            RELOGIN_MAX_AGE_SECS
        };
        resp.headers_mut().append(
            header::SET_COOKIE,
            cookie_header(ctx, &Self::name(&ctx.fed), &self.0.join("."), max_age),
        );
    }
}

/// A session about to begin after an authentication: a new id (session
/// fixation), made before it is stored so that it can be written elsewhere
/// first (the interaction's binding).
pub struct NewSession {
    /// The cookie's value.
    value: String,
    /// The stored id (hash of the value).
    pub id: String,
}

impl Default for NewSession {
    fn default() -> Self {
        NewSession::new()
    }
}

impl NewSession {
    pub fn new() -> NewSession {
        let value = crate::crypto::random_token(32);
        let id = session_key(&value);
        NewSession { value, id }
    }

    /// Store the session (deleting `replaces`, the browser's previous one)
    /// and set its cookie on `resp`.
    pub async fn begin(
        self,
        ctx: &Ctx,
        data: &SessionData,
        replaces: Option<&str>,
        now: i64,
        mut resp: Response,
    ) -> Result<Response, AppError> {
        let fed = &ctx.fed;
        let json = serde_json::to_string(data).map_err(AppError::internal)?;
        ctx.app
            .store
            .put(
                crate::store::Kind::Session,
                &self.id,
                &fed.id,
                &json,
                now + fed.cfg.session_ttl_secs,
            )
            .await?;
        if let Some(old) = replaces {
            ctx.app
                .store
                .delete(crate::store::Kind::Session, old, &fed.id)
                .await?;
        }
        resp.headers_mut().insert(
            header::SET_COOKIE,
            set_cookie(ctx, &self.value, fed.cfg.session_ttl_secs),
        );
        Ok(resp)
    }
}

pub fn lang_from(headers: &HeaderMap, ui_locales: Option<&str>) -> Lang {
    let al = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    Lang::negotiate(ui_locales, al)
}

/// A broker session: anonymous until an upstream sign-in completed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionData {
    pub authn: Option<Authn>,
    /// An aidant's sign-in on this browser (delegated sign-in), reusable
    /// while fresh (see `aidant::AIDANT_FRESH_SECS`).
    #[serde(default)]
    pub aidant: Option<crate::aidants::pages::interaction::AidantStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Authn {
    /// Stable key of the person for pairwise subjects (citizens: the
    /// normalised pivot identity key; agents: `agent:<account id>`).
    pub subject_key: String,
    /// Subject for clients registered with `subject_type = "public"` (agents).
    #[serde(default)]
    pub public_sub: Option<String>,
    /// Name shown on the information page.
    pub display_name: String,
    /// Every claim of the person that scopes may release.
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub provider: String,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: i64,
    /// Public session id (`sid` claim).
    pub sid: String,
    /// Upstream ID token, kept as `id_token_hint` for upstream logout.
    pub upstream_id_token: String,
    /// Delegated sign-in: an aidant acts for the person under a mandate.
    #[serde(default)]
    pub delegation: Option<Delegation>,
}

/// The mandate (and domain) an aidant used to act for an usager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub mandate_id: String,
    pub domain: String,
    pub aidant_id: String,
    pub org_id: String,
}

pub async fn load_session(ctx: &Ctx, id: &str) -> Result<Option<SessionData>, AppError> {
    let raw = ctx
        .app
        .store
        .get(crate::store::Kind::Session, id, &ctx.fed.id, ctx.now())
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

async fn discovery(State(ctx): State<Ctx>) -> Response {
    let keys = ctx.fed.keys.get();
    let cached = ctx.fed.discovery.lock().ok().and_then(|c| {
        c.as_ref()
            .filter(|(k, _)| Arc::ptr_eq(k, &keys))
            .map(|(_, doc)| doc.clone())
    });
    let doc = match cached {
        Some(doc) => doc,
        None => {
            let doc: Arc<str> = discovery_document(&ctx.fed, &keys).into();
            if let Ok(mut c) = ctx.fed.discovery.lock() {
                *c = Some((keys, doc.clone()));
            }
            doc
        }
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        doc.to_string(),
    )
        .into_response()
}

/// The federation's OpenID Provider metadata, as JSON text.
fn discovery_document(f: &Federation, keys: &crate::crypto::KeySet) -> String {
    let algs: Vec<&str> = keys.active_algs().into_iter().map(|a| a.as_str()).collect();
    let scopes: Vec<&str> = f.cfg.profile.scopes().to_vec();
    let claims_supported = match f.cfg.profile {
        crate::config::Profile::Citizen => claims::CLAIMS_SUPPORTED
            .iter()
            .chain(["act", "mandate"].iter())
            .copied()
            .collect::<Vec<_>>(),
        crate::config::Profile::Agent => claims::AGENT_CLAIMS_SUPPORTED.to_vec(),
    };
    let doc = serde_json::json!({
        "issuer": f.issuer,
        "authorization_endpoint": f.url("/authorize"),
        "token_endpoint": f.url("/token"),
        "userinfo_endpoint": f.url("/userinfo"),
        "jwks_uri": f.url("/jwks"),
        "end_session_endpoint": f.url("/session/end"),
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": if f.cfg.profile == crate::config::Profile::Agent { vec!["pairwise", "public"] } else { vec!["pairwise"] },
        "id_token_signing_alg_values_supported": algs,
        "userinfo_signing_alg_values_supported": algs,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": claims_supported,
        "claims_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "acr_values_supported": f.cfg.acr_values,
        "prompt_values_supported": ["none", "login", "consent"],
        "ui_locales_supported": ["fr", "en"],
        "claims_locales_supported": ["fr"],
        "authorization_response_iss_parameter_supported": true,
        "frontchannel_logout_supported": false,
        "backchannel_logout_supported": false,
    });
    doc.to_string()
}

async fn jwks(State(ctx): State<Ctx>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        ctx.fed.keys.get().jwks_json().to_string(),
    )
        .into_response()
}

async fn relais_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        crate::web::RELAIS_CSS,
    )
        .into_response()
}

async fn theme_css(State(ctx): State<Ctx>) -> Response {
    let t = &ctx.fed.cfg.theme;
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        crate::web::theme_css(t.primary_color.as_deref(), t.extra_css.as_deref()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::Cookies;

    #[test]
    fn a_cookie_name_sent_twice_counts_as_absent() {
        let c =
            Cookies::parse(["a=1; relais_citizen=mine", "relais_citizen=planted; b=2"].into_iter());
        assert!(!c.0.contains_key("relais_citizen"));
        assert_eq!(c.0.get("a").map(String::as_str), Some("1"));
        assert_eq!(c.0.get("b").map(String::as_str), Some("2"));
        let c = Cookies::parse(["relais_citizen=mine"].into_iter());
        assert_eq!(c.0.get("relais_citizen").map(String::as_str), Some("mine"));
    }

    #[test]
    fn cookie_prefixes() {
        use crate::state::{cookie_name, cookie_path};
        assert_eq!(cookie_name("citizen", true), "__Host-relais_citizen");
        assert_eq!(cookie_name("agent", true), "__Host-relais_agent");
        assert_eq!(cookie_path("/agent", true), "/", "__Host- requires Path=/");
        assert_eq!(cookie_name("agent", false), "relais_agent");
        assert_eq!(cookie_path("/agent", false), "/agent");
        assert_eq!(cookie_path("", false), "/");
    }
}
