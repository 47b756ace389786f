//! `/authorize`, the provider choice page, the upstream callback and the
//! information/consent page.

use super::claims::{claims_for_scopes, ClaimsRequest};
use super::{
    lang_from, load_session, session_key, set_cookie, Authn, Cookies, Ctx, Params, SessionData,
};
use crate::agent::identity::{normalise_email, Route};
use crate::config::Profile;
use crate::crypto::{random_token, sha256_b64};
use crate::error::{redirect, with_query, AppError};
use crate::identity::{
    pairwise_sub, registry_lookup_key, registry_outcome, PivotIdentity, RegistryOutcome,
    RegistryRecord,
};
use crate::state::Client;
use crate::store::Kind;
use crate::web::Lang;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A validated authorization request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub scopes: Vec<String>,
    pub code_challenge: Option<String>,
    pub acr_min: Option<String>,
    pub prompt: Vec<String>,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
    pub idp_hint: Option<String>,
    /// Agent profile: forwarded to the provider.
    #[serde(default)]
    pub siret_hint: Option<String>,
    pub lang: Lang,
    pub claims: ClaimsRequest,
}

impl AuthRequest {
    /// A sign-in for Relais' own pages (no service): the person signs in anew
    /// at their provider (`prompt=login`, the screen may be shared) and comes
    /// back to `return_to`.
    pub fn own_sign_in(return_to: String, lang: Lang) -> AuthRequest {
        AuthRequest {
            client_id: String::new(),
            redirect_uri: return_to,
            state: None,
            nonce: None,
            scopes: vec![],
            code_challenge: None,
            acr_min: None,
            prompt: vec!["login".into()],
            max_age: None,
            login_hint: None,
            idp_hint: None,
            siret_hint: None,
            lang,
            claims: ClaimsRequest::default(),
        }
    }
}

/// A sign-in in progress, bound to the browser session that started it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interaction {
    pub req: AuthRequest,
    /// Hash of the browser's session cookie (binds the interaction to it).
    pub session: String,
    /// Whether a session row existed for that cookie when the sign-in began.
    #[serde(default)]
    pub had_session: bool,
    pub csrf: String,
    pub provider: Option<String>,
    /// Upstream sign-in in progress; the upstream `state` is
    /// `<interaction id>.<secret>` and only the secret's hash is kept.
    #[serde(default)]
    pub pending: Option<crate::federation::PendingUpstream>,
    #[serde(default)]
    pub state_hash: Option<String>,
    /// The authentication used (set at the callback, or from SSO).
    #[serde(default)]
    pub authn: Option<Authn>,
    /// Agent profile: providers matching the email's domain (short choice).
    #[serde(default)]
    pub candidates: Option<Vec<String>>,
    /// Delegated sign-in: the aidant who signed in during this interaction.
    #[serde(default)]
    pub aidant: Option<super::aidant::AidantStep>,
    /// Mandate creation: the usager signs in themselves on the aidant's
    /// screen; the callback then goes to the recap, not to a service.
    #[serde(default)]
    pub mandate_draft: Option<super::mandate_new::MandateDraft>,
    /// Usager consultation: the person signs in to see and revoke the
    /// mandates about them; the callback goes to that page, never to a
    /// service, and no broker session is created.
    #[serde(default)]
    pub usager_consultation: bool,
}

/// What a code stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeData {
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub scopes: Vec<String>,
    pub sub: String,
    /// Claims for userinfo (scope-filtered).
    pub userinfo: Map<String, Value>,
    /// Extra claims for the ID token (claims request parameter).
    pub id_token_extra: Map<String, Value>,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: i64,
    pub sid: String,
    pub session: String,
    /// Delegated sign-in: re-checked at the token endpoint.
    #[serde(default)]
    pub delegation: Option<super::Delegation>,
}

impl Ctx {
    fn redirect_error(
        &self,
        req: &AuthRequest,
        error: &'static str,
        description: impl Into<String>,
    ) -> AppError {
        AppError::Redirect {
            redirect_uri: req.redirect_uri.clone(),
            error,
            description: description.into(),
            state: req.state.clone(),
            iss: self.fed.issuer.clone(),
        }
    }

    /// Link returning `access_denied` (with the original state) to the service.
    pub fn back_url(&self, req: &AuthRequest, error: &str) -> String {
        let mut p = vec![("error", error)];
        if let Some(s) = &req.state {
            p.push(("state", s));
        }
        p.push(("iss", &self.fed.issuer));
        with_query(&req.redirect_uri, &p)
    }

    /// Error page for this sign-in, with a link returning `access_denied`
    /// (and the original state) to the service.
    pub(crate) fn refuse(
        &self,
        req: &AuthRequest,
        status: StatusCode,
        code: &'static str,
    ) -> AppError {
        self.page_error(
            req.lang,
            status,
            code,
            Some(self.back_url(req, "access_denied")),
        )
    }

    pub(crate) fn client(&self, id: &str) -> Option<&Client> {
        self.fed.clients.get(id)
    }

    /// The service of a request held in an interaction. Relais' own
    /// sign-ins (the usager page, a mandate's usager) have none and never
    /// reach the consent or code steps; a request that sends them there
    /// (or whose service was removed from the configuration meanwhile) gets
    /// the "sign-in expired" page, never a 500.
    pub(crate) fn client_of(&self, req: &AuthRequest) -> Result<&Client, AppError> {
        self.client(&req.client_id).ok_or_else(|| {
            tracing::info!(federation = %self.fed.id, "interaction without a service at a service step");
            self.page_error(req.lang, StatusCode::BAD_REQUEST, "interaction_expired", None)
        })
    }
}

pub async fn authorize_get(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    authorize(ctx, cookies, headers, q.unwrap_or_default()).await
}

pub async fn authorize_post(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
    super::FormBody(body): super::FormBody,
) -> Response {
    // A cross-site POST (a service's auto-submitted form) arrives without
    // the SameSite=Lax session cookie even when the browser has one; the
    // response must not replace it. The same request as a GET (a top-level
    // navigation, which carries the cookie) is handled instead.
    if !cookies.has_session_cookie(&ctx.fed) {
        if let Some(resp) = super::repeat_as_get(&ctx, "/authorize", &body) {
            return resp;
        }
    }
    authorize(ctx, cookies, headers, body).await
}

async fn authorize(ctx: Ctx, cookies: Cookies, headers: HeaderMap, raw: String) -> Response {
    match authorize_inner(&ctx, &cookies, &headers, &raw).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Sign-ins a browser may start within one interaction lifetime
/// (`interaction_ttl_secs`) on one node: past it, `/authorize` answers 429
/// and writes nothing.
pub const MAX_PENDING_PER_BROWSER: i64 = 100;

/// The longest value accepted for each authorization request parameter that
/// is echoed, forwarded upstream or stored (in characters of the decoded
/// value). Checked before anything is written.
pub const PARAMETER_LIMITS: &[(&str, usize)] = &[
    ("client_id", 256),
    ("state", 512),
    ("nonce", 512),
    ("login_hint", 254),
    ("idp_hint", 64),
    ("siret_hint", 14),
    ("ui_locales", 64),
    ("acr_values", 256),
    ("claims", 4096),
    ("scope", 1024),
    ("prompt", 64),
    ("max_age", 10),
    ("code_challenge", 128),
    ("code_challenge_method", 16),
    ("response_type", 32),
    ("response_mode", 32),
    ("id_token_hint", 16_384),
];

/// The first parameter over its limit in [`PARAMETER_LIMITS`], with the limit.
pub fn over_long(params: &Params) -> Option<(&'static str, usize)> {
    PARAMETER_LIMITS
        .iter()
        .find(|(name, max)| params.get(name).is_some_and(|v| v.chars().count() > *max))
        .copied()
}

/// Validate the request: client and redirect URI first (HTML errors), then
/// everything else (error redirects).
pub fn validate(ctx: &Ctx, params: &Params, lang: Lang) -> Result<AuthRequest, AppError> {
    let fed = &ctx.fed;
    let client_id = params.get("client_id").unwrap_or("");
    let client = ctx
        .client(client_id)
        .ok_or_else(|| ctx.page_error(lang, StatusCode::BAD_REQUEST, "invalid_client", None))?;
    let redirect_uri = params.get("redirect_uri").unwrap_or("");
    if !client.cfg.redirect_uris.iter().any(|u| u == redirect_uri) {
        return Err(ctx.page_error(lang, StatusCode::BAD_REQUEST, "invalid_redirect_uri", None));
    }
    let mut req = AuthRequest {
        client_id: client_id.to_string(),
        redirect_uri: redirect_uri.to_string(),
        state: params.get("state").map(str::to_string),
        nonce: params.get("nonce").map(str::to_string),
        scopes: vec![],
        code_challenge: None,
        acr_min: None,
        prompt: vec![],
        max_age: None,
        login_hint: params.get("login_hint").map(str::to_string),
        idp_hint: params.get("idp_hint").map(str::to_string),
        siret_hint: params
            .get("siret_hint")
            .filter(|s| s.len() == 14 && s.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string),
        lang,
        claims: ClaimsRequest::default(),
    };
    // From here on, errors go back to the service.
    if let Some((name, max)) = over_long(params) {
        if name == "state" {
            // Not echoed: an over-long state would make the redirect huge.
            req.state = None;
        }
        return Err(ctx.redirect_error(
            &req,
            "invalid_request",
            format!("{name} is too long (at most {max} characters)"),
        ));
    }
    match params.get("response_type") {
        Some("code") => {}
        Some(_) => {
            return Err(ctx.redirect_error(
                &req,
                "unsupported_response_type",
                "only response_type=code is supported",
            ))
        }
        None => {
            return Err(ctx.redirect_error(&req, "invalid_request", "response_type is required"))
        }
    }
    if let Some(mode) = params.get("response_mode") {
        if mode != "query" {
            return Err(ctx.redirect_error(
                &req,
                "invalid_request",
                "only response_mode=query is supported",
            ));
        }
    }
    if params.get("request").is_some() {
        return Err(ctx.redirect_error(
            &req,
            "request_not_supported",
            "request objects are not supported",
        ));
    }
    if params.get("request_uri").is_some() {
        return Err(ctx.redirect_error(
            &req,
            "request_uri_not_supported",
            "request_uri is not supported",
        ));
    }
    if req.state.as_deref().is_none_or(|s| s.len() > 512) {
        return Err(ctx.redirect_error(
            &req,
            "invalid_request",
            "state is required (at most 512 characters)",
        ));
    }
    match &req.nonce {
        Some(n) if n.len() < fed.cfg.nonce_min_length || n.len() > 512 => {
            return Err(ctx.redirect_error(
                &req,
                "invalid_request",
                format!(
                    "nonce must have {} to 512 characters",
                    fed.cfg.nonce_min_length
                ),
            ))
        }
        None if fed.cfg.nonce_required => {
            return Err(ctx.redirect_error(&req, "invalid_request", "nonce is required"))
        }
        _ => {}
    }
    let scopes: Vec<String> = params
        .get("scope")
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        return Err(ctx.redirect_error(&req, "invalid_scope", "scope must include openid"));
    }
    if let Some(bad) = scopes.iter().find(|s| !client.cfg.scopes.contains(s)) {
        return Err(ctx.redirect_error(
            &req,
            "invalid_scope",
            format!("scope {bad} is not allowed for this client"),
        ));
    }
    let mut dedup = Vec::new();
    for s in scopes {
        if !dedup.contains(&s) {
            dedup.push(s);
        }
    }
    req.scopes = dedup;
    // PKCE.
    match (
        params.get("code_challenge"),
        params.get("code_challenge_method"),
    ) {
        (Some(c), Some("S256")) => {
            if c.len() != 43
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ctx.redirect_error(
                    &req,
                    "invalid_request",
                    "code_challenge must be a base64url SHA-256 (43 characters)",
                ));
            }
            req.code_challenge = Some(c.to_string());
        }
        (Some(_), _) => {
            return Err(ctx.redirect_error(
                &req,
                "invalid_request",
                "code_challenge_method must be S256",
            ))
        }
        (None, Some(_)) => {
            return Err(ctx.redirect_error(&req, "invalid_request", "code_challenge is missing"))
        }
        (None, None) => {
            if client.is_public() {
                return Err(ctx.redirect_error(
                    &req,
                    "invalid_request",
                    "PKCE (S256) is required for public clients",
                ));
            }
        }
    }
    // Prompt.
    if let Some(p) = params.get("prompt") {
        let values: Vec<String> = p.split_whitespace().map(str::to_string).collect();
        for v in &values {
            if !["none", "login", "consent", "select_account"].contains(&v.as_str()) {
                return Err(ctx.redirect_error(
                    &req,
                    "invalid_request",
                    format!("prompt value {v} is not supported"),
                ));
            }
        }
        if values.iter().any(|v| v == "none") && values.len() > 1 {
            return Err(ctx.redirect_error(
                &req,
                "invalid_request",
                "prompt=none cannot be combined",
            ));
        }
        req.prompt = values;
    }
    if let Some(m) = params.get("max_age") {
        match m.parse::<i64>() {
            Ok(v) if v >= 0 => req.max_age = Some(v),
            _ => {
                return Err(ctx.redirect_error(
                    &req,
                    "invalid_request",
                    "max_age must be a non-negative integer",
                ))
            }
        }
    }
    // Claims parameter and acr.
    if let Some(c) = params.get("claims") {
        req.claims =
            ClaimsRequest::parse(c).map_err(|e| ctx.redirect_error(&req, "invalid_request", e))?;
    }
    let ladder = &fed.cfg.acr_values;
    let lowest_known = |vals: &[String]| -> Option<String> {
        vals.iter()
            .filter_map(|v| ladder.iter().position(|l| l == v))
            .min()
            .and_then(|i| ladder.get(i).cloned())
    };
    if let Some(vals) = &req.claims.essential_acr {
        match lowest_known(vals) {
            Some(a) => req.acr_min = Some(a),
            None => {
                return Err(ctx.redirect_error(
                    &req,
                    "invalid_request",
                    "none of the essential acr values is supported",
                ))
            }
        }
    } else {
        let from_param: Vec<String> = params
            .get("acr_values")
            .map(|a| a.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let voluntary = req.claims.voluntary_acr.clone().unwrap_or_default();
        let all: Vec<String> = from_param.into_iter().chain(voluntary).collect();
        req.acr_min = lowest_known(&all);
    }
    // idp_hint must name a provider this client may use.
    if let Some(h) = &req.idp_hint {
        let ok = fed
            .provider(h)
            .is_some_and(|p| fed.provider_allowed(p, &req.client_id));
        if !ok {
            return Err(ctx.redirect_error(
                &req,
                "invalid_request",
                "idp_hint names an identity provider this client may not use",
            ));
        }
    }
    Ok(req)
}

/// Does the broker session satisfy this request without a new upstream sign-in?
fn sso_usable(ctx: &Ctx, req: &AuthRequest, authn: &Authn) -> bool {
    let fed = &ctx.fed;
    if req
        .prompt
        .iter()
        .any(|p| p == "login" || p == "select_account")
    {
        return false;
    }
    // Multi-factor levels always mean a fresh upstream sign-in.
    if crate::agent::wants_mfa(fed, req.acr_min.as_deref()) {
        return false;
    }
    if let Some(m) = req.max_age {
        if m == 0 || ctx.now() - authn.auth_time > m {
            return false;
        }
    }
    if let Some(min) = &req.acr_min {
        let have = authn.acr.as_deref().and_then(|a| fed.acr_rank(a));
        if have < fed.acr_rank(min) {
            return false;
        }
    }
    if let Some(h) = &req.idp_hint {
        if h != &authn.provider {
            return false;
        }
    }
    fed.provider(&authn.provider)
        .is_some_and(|p| fed.provider_allowed(p, &req.client_id))
}

async fn authorize_inner(
    ctx: &Ctx,
    cookies: &Cookies,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Response, AppError> {
    let pre_lang = lang_from(headers, None);
    let params = Params::parse(raw)
        .map_err(|_| ctx.page_error(pre_lang, StatusCode::BAD_REQUEST, "invalid_request", None))?;
    let lang = lang_from(headers, params.get("ui_locales"));
    let req = validate(ctx, &params, lang)?;
    let now = ctx.now();
    let fed = &ctx.fed;
    tracing::info!(event = "authorize_received", federation = %fed.id, client = %req.client_id, scopes = %req.scopes.join(" "), acr = ?req.acr_min, "authorize request");

    let mut session = None;
    if let Some(sid) = cookies.session_id(fed) {
        if let Some(data) = load_session(ctx, &sid).await? {
            session = Some((sid, data));
        }
    }
    let sso = session
        .as_ref()
        .and_then(|(_, d)| d.authn.as_ref())
        .is_some_and(|a| sso_usable(ctx, &req, a));

    if req.prompt.iter().any(|p| p == "none") {
        if !sso {
            return Err(ctx.redirect_error(&req, "login_required", "no usable session"));
        }
        let client = ctx.client_of(&req)?;
        if client.cfg.kind == crate::config::ClientKind::Private {
            return Err(ctx.redirect_error(
                &req,
                "consent_required",
                "this service needs an explicit consent",
            ));
        }
        let (sid, data) = session.ok_or_else(|| AppError::internal("session vanished"))?;
        let authn = data
            .authn
            .ok_or_else(|| AppError::internal("session vanished"))?;
        return issue_code(ctx, &req, &authn, &sid).await;
    }

    // A browser without a session gets a cookie now; no row is written until
    // it has authenticated (the interaction is bound to the cookie's hash).
    let mut set_new_cookie = None;
    let (session_id, had_session, existing) = match session {
        Some((sid, data)) => (sid, true, data.authn),
        // A cookie without a row (a sign-in already under way in another
        // tab): keep it, so both interactions stay bound to this browser.
        None if cookies.session_id(fed).is_some() => {
            (cookies.session_id(fed).unwrap_or_default(), false, None)
        }
        None => {
            let value = random_token(32);
            let sid = session_key(&value);
            set_new_cookie = Some(value);
            (sid, false, None)
        }
    };
    // A bounded number of sign-ins started per browser within an
    // interaction's lifetime (a fresh browser has none yet). Counted in
    // memory on this node: an anti-loop bound, no statement on the hot path.
    if set_new_cookie.is_none()
        && !ctx.app.pending.try_count(
            &format!("{}:{session_id}", fed.id),
            MAX_PENDING_PER_BROWSER,
            fed.cfg.interaction_ttl_secs.max(1),
            ctx.now(),
        )
    {
        tracing::warn!(event = "authorize_refused", federation = %fed.id, reason = "too many pending sign-ins in one browser", "authorize refused");
        return Err(ctx.page_error(
            req.lang,
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            None,
        ));
    }
    let id = random_token(24);
    let mut inter = Interaction {
        req,
        session: session_id,
        had_session,
        csrf: random_token(24),
        provider: None,
        pending: None,
        state_hash: None,
        authn: if sso { existing } else { None },
        candidates: None,
        aidant: None,
        mandate_draft: None,
        usager_consultation: false,
    };
    let location = if sso {
        fed.url(&format!("/interaction/{id}/consent"))
    } else if let Some(hint) = inter.req.idp_hint.clone() {
        let url = start_upstream(ctx, cookies, &id, &mut inter, &hint).await?;
        tracing::info!(event = "idp_chosen", federation = %fed.id, provider = %hint, via = "idp_hint", "identity provider chosen");
        url
    } else if fed.cfg.profile == Profile::Agent {
        // Email-first: a login_hint that is an email is routed at once.
        match inter
            .req
            .login_hint
            .clone()
            .and_then(|h| normalise_email(&h))
        {
            Some(email) => agent_next(ctx, cookies, &id, &mut inter, &email).await?,
            None => fed.url(&format!("/interaction/{id}")),
        }
    } else {
        fed.url(&format!("/interaction/{id}"))
    };
    let data = serde_json::to_string(&inter).map_err(AppError::internal)?;
    ctx.app
        .store
        .put(
            Kind::Interaction,
            &id,
            &fed.id,
            &data,
            now + fed.cfg.interaction_ttl_secs,
        )
        .await?;
    let mut resp = redirect(&location);
    if let Some(v) = set_new_cookie {
        resp.headers_mut().insert(
            header::SET_COOKIE,
            set_cookie(ctx, &v, fed.cfg.session_ttl_secs),
        );
    }
    Ok(resp)
}

/// Agent profile: route a professional email to its provider(s); returns
/// where to send the browser.
async fn agent_next(
    ctx: &Ctx,
    cookies: &Cookies,
    id: &str,
    inter: &mut Interaction,
    email: &str,
) -> Result<String, AppError> {
    let fed = &ctx.fed;
    inter.req.login_hint = Some(email.to_string());
    match crate::agent::route_email(
        fed,
        &inter.req.client_id,
        email,
        inter.req.acr_min.as_deref(),
    ) {
        Route::One(p) | Route::Default(p) => {
            tracing::info!(event = "idp_chosen", federation = %fed.id, provider = %p, via = "email_domain", "identity provider chosen");
            start_upstream(ctx, cookies, id, inter, &p).await
        }
        Route::Several(list) => {
            inter.candidates = Some(list);
            Ok(fed.url(&format!("/interaction/{id}")))
        }
        Route::NoMatch => Err(ctx.refuse(
            &inter.req,
            StatusCode::BAD_REQUEST,
            "no_provider_for_domain",
        )),
    }
}

pub async fn email_submit(
    State(ctx): State<Ctx>,
    super::Segment(id): super::Segment,
    cookies: Cookies,
    headers: HeaderMap,
    super::FormBody(body): super::FormBody,
) -> Result<Response, AppError> {
    let mut inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let form = Params::parse(&body).unwrap_or_default();
    check_csrf(&ctx, &inter, &form)?;
    let Some(email) = form.get("email").and_then(normalise_email) else {
        return Err(ctx.page_error(
            inter.req.lang,
            StatusCode::BAD_REQUEST,
            "invalid_email",
            Some(ctx.fed.url(&format!("/interaction/{id}"))),
        ));
    };
    let url = agent_next(&ctx, &cookies, &id, &mut inter, &email).await?;
    let data = serde_json::to_string(&inter).map_err(AppError::internal)?;
    ctx.app
        .store
        .update(
            Kind::Interaction,
            &id,
            &ctx.fed.id,
            &data,
            ctx.now() + ctx.fed.cfg.interaction_ttl_secs,
        )
        .await?;
    Ok(redirect(&url))
}

/// Prepare the redirect to the upstream provider and remember its state.
async fn start_upstream(
    ctx: &Ctx,
    cookies: &Cookies,
    interaction_id: &str,
    inter: &mut Interaction,
    provider_id: &str,
) -> Result<String, AppError> {
    let secret = random_token(24);
    let state = format!("{interaction_id}.{secret}");
    let fed = &ctx.fed;
    let lang = inter.req.lang;
    let back = Some(ctx.back_url(&inter.req, "access_denied"));
    let provider = fed
        .provider(provider_id)
        .filter(|p| fed.provider_allowed(p, &inter.req.client_id))
        .ok_or_else(|| {
            ctx.page_error(
                lang,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                back.clone(),
            )
        })?;
    if let Some(min) = &inter.req.acr_min {
        if fed.provider_max_rank(provider) < fed.acr_rank(min) {
            return Err(ctx.page_error(lang, StatusCode::BAD_REQUEST, "acr_not_satisfied", back));
        }
    }
    // Someone else may still be signed in at this provider on this browser
    // (a usager's sign-in on an aidant's screen, provider without logout):
    // a fresh authentication, never silent single sign-on.
    let relogin = super::Relogin::read(fed, cookies).contains(provider_id);
    if relogin {
        tracing::info!(event = "upstream_relogin", federation = %fed.id, provider = %provider_id, "fresh upstream sign-in forced on this browser");
    }
    let force_login = relogin
        || inter.req.prompt.iter().any(|p| p == "login")
        || inter.req.max_age.is_some()
        || crate::agent::wants_mfa(fed, inter.req.acr_min.as_deref());
    let max_age = if relogin { Some(0) } else { inter.req.max_age };
    let (url, _state, pending) = provider
        .start(
            &ctx.app.http,
            &fed.url(&provider.callback_path()),
            inter.req.acr_min.as_deref(),
            &fed.cfg.acr_values,
            inter.req.login_hint.as_deref(),
            inter.req.siret_hint.as_deref(),
            force_login,
            max_age,
            interaction_id,
            &inter.session,
            &state,
        )
        .await
        .map_err(|e| {
            tracing::warn!(provider = ?provider_id, error = ?e, "upstream unavailable");
            ctx.page_error(
                lang,
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                back.clone(),
            )
        })?;
    debug_assert_eq!(_state, state);
    inter.provider = Some(provider_id.to_string());
    inter.pending = Some(pending);
    inter.state_hash = Some(sha256_b64(secret.as_bytes()));
    Ok(url)
}

/// Load an interaction and check it belongs to this browser.
pub(crate) async fn load_interaction(
    ctx: &Ctx,
    id: &str,
    cookies: &Cookies,
    headers: &HeaderMap,
) -> Result<Interaction, AppError> {
    load_interaction_raw(ctx, id, cookies, headers)
        .await
        .map(|(i, _)| i)
}

/// Same, with the stored JSON (for compare-and-swap updates).
async fn load_interaction_raw(
    ctx: &Ctx,
    id: &str,
    cookies: &Cookies,
    headers: &HeaderMap,
) -> Result<(Interaction, String), AppError> {
    let lang = lang_from(headers, None);
    let expired = || ctx.page_error(lang, StatusCode::BAD_REQUEST, "interaction_expired", None);
    let raw = ctx
        .app
        .store
        .get(Kind::Interaction, id, &ctx.fed.id, ctx.now())
        .await?
        .ok_or_else(expired)?;
    let inter: Interaction = serde_json::from_str(&raw).map_err(AppError::internal)?;
    if cookies.session_id(&ctx.fed).as_deref() != Some(inter.session.as_str()) {
        return Err(expired());
    }
    Ok((inter, raw))
}

#[derive(Serialize)]
struct ProviderView {
    id: String,
    name: String,
    disabled: bool,
}

pub async fn choose_page(
    State(ctx): State<Ctx>,
    super::Segment(id): super::Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let fed = &ctx.fed;
    let client_name = ctx
        .client(&inter.req.client_id)
        .map(|c| c.cfg.name.clone())
        .unwrap_or_default();
    if fed.cfg.profile == Profile::Agent && inter.candidates.is_none() {
        return ctx.page(
            inter.req.lang,
            "email.html",
            minijinja::context! {
                action => fed.url(&format!("/interaction/{id}/email")),
                csrf => inter.csrf,
                email => inter.req.login_hint.clone().unwrap_or_default(),
                client_name => client_name,
                back_url => fed.url(&format!("/interaction/{id}/abort")),
            },
        );
    }
    let min_rank = inter.req.acr_min.as_deref().and_then(|a| fed.acr_rank(a));
    let providers: Vec<ProviderView> = fed
        .providers
        .iter()
        .filter(|p| {
            let listed = match &inter.candidates {
                Some(c) => c.contains(&p.cfg.id),
                None => p.cfg.display,
            };
            listed && fed.provider_allowed(p, &inter.req.client_id)
        })
        .map(|p| ProviderView {
            id: p.cfg.id.clone(),
            name: p.cfg.name.clone(),
            disabled: fed.provider_max_rank(p) < min_rank,
        })
        .collect();
    // Delegated sign-in: only for services that accept it.
    // Delegated sign-in: only for services that accept it, and when an
    // aidant's authentication is enough for the level asked.
    let aidant_url = ctx
        .client(&inter.req.client_id)
        .filter(|c| !c.cfg.delegation_domains.is_empty())
        .filter(|_| fed.acr_rank(super::aidant::AIDANT_ACR) >= min_rank)
        .map(|_| fed.url(&format!("/interaction/{id}/aidant")));
    ctx.page(
        inter.req.lang,
        "choose.html",
        minijinja::context! {
            action => fed.url(&format!("/interaction/{id}/choose")),
            csrf => inter.csrf,
            providers => providers,
            client_name => client_name,
            back_url => fed.url(&format!("/interaction/{id}/abort")),
            aidant_url => aidant_url,
        },
    )
}

pub async fn abort(
    State(ctx): State<Ctx>,
    super::Segment(id): super::Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    ctx.app
        .store
        .delete(Kind::Interaction, &id, &ctx.fed.id)
        .await?;
    Ok(redirect(&ctx.back_url(&inter.req, "access_denied")))
}

pub async fn choose_submit(
    State(ctx): State<Ctx>,
    super::Segment(id): super::Segment,
    cookies: Cookies,
    headers: HeaderMap,
    super::FormBody(body): super::FormBody,
) -> Result<Response, AppError> {
    let mut inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let form = Params::parse(&body).unwrap_or_default();
    check_csrf(&ctx, &inter, &form)?;
    let provider = form.get("provider").unwrap_or("").to_string();
    if inter
        .candidates
        .as_ref()
        .is_some_and(|c| !c.contains(&provider))
    {
        return Err(ctx.refuse(&inter.req, StatusCode::BAD_REQUEST, "invalid_request"));
    }
    let url = start_upstream(&ctx, &cookies, &id, &mut inter, &provider).await?;
    let data = serde_json::to_string(&inter).map_err(AppError::internal)?;
    ctx.app
        .store
        .update(
            Kind::Interaction,
            &id,
            &ctx.fed.id,
            &data,
            ctx.now() + ctx.fed.cfg.interaction_ttl_secs,
        )
        .await?;
    tracing::info!(event = "idp_chosen", federation = %ctx.fed.id, provider = %provider, via = "choice_page", "identity provider chosen");
    Ok(redirect(&url))
}

pub(crate) fn check_csrf(ctx: &Ctx, inter: &Interaction, form: &Params) -> Result<(), AppError> {
    let given = form.get("csrf").unwrap_or("");
    if !crate::crypto::ct_eq(given.as_bytes(), inter.csrf.as_bytes()) {
        tracing::warn!(federation = %ctx.fed.id, "CSRF token missing or wrong");
        return Err(ctx.page_error(inter.req.lang, StatusCode::FORBIDDEN, "csrf", None));
    }
    Ok(())
}

/// The former single redirect URI (`{issuer}/callback`), shared by every
/// provider: refused with a page saying so, since a callback that does not
/// name its provider is what makes a mix-up possible (see
/// docs/adding-an-identity-provider.md, "Migrating to one redirect URI per
/// provider").
pub async fn legacy_callback(State(ctx): State<Ctx>, headers: HeaderMap) -> AppError {
    tracing::warn!(event = "upstream_callback", federation = %ctx.fed.id, "callback on the former shared redirect URI refused: register {{issuer}}/callback/{{provider id}} at the provider");
    ctx.page_error(
        lang_from(&headers, None),
        StatusCode::BAD_REQUEST,
        "callback_moved",
        None,
    )
}

/// Upstream provider returns here, at its own redirect URI
/// (`{issuer}/callback/{provider id}`).
pub async fn callback(
    State(ctx): State<Ctx>,
    super::Segment(path_provider): super::Segment,
    cookies: Cookies,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let params = Params::parse(&q.unwrap_or_default()).unwrap_or_default();
    let fed = &ctx.fed;
    let state = params.get("state").unwrap_or("");
    let expired = || ctx.page_error(lang, StatusCode::BAD_REQUEST, "interaction_expired", None);
    let (interaction_id, secret) = state.split_once('.').ok_or_else(expired)?;
    let (inter, inter_raw) = load_interaction_raw(&ctx, interaction_id, &cookies, &headers).await?;
    // The state's secret part must match, and the upstream step must be pending.
    let state_ok = inter.state_hash.as_deref().is_some_and(|h| {
        crate::crypto::ct_eq(h.as_bytes(), sha256_b64(secret.as_bytes()).as_bytes())
    });
    let pending = match (&inter.pending, state_ok) {
        (Some(p), true) if p.session == inter.session => p.clone(),
        _ => return Err(expired()),
    };
    let lang = inter.req.lang;
    let back = Some(ctx.back_url(&inter.req, "access_denied"));
    let fail =
        |code: &'static str, status: StatusCode| ctx.page_error(lang, status, code, back.clone());
    // Mix-up defence: each provider answers at its own redirect URI, so a
    // code delivered on another provider's callback than the one this
    // sign-in went to is refused before anything is redeemed.
    if path_provider != pending.provider {
        tracing::warn!(event = "upstream_callback", provider = %pending.provider, callback_of = ?path_provider.chars().take(64).collect::<String>(), "callback on another provider's redirect URI refused (mix-up)");
        return Err(fail("upstream_mixup", StatusCode::BAD_REQUEST));
    }
    let provider = fed
        .provider(&pending.provider)
        .ok_or_else(|| fail("upstream_error", StatusCode::BAD_REQUEST))?;
    let meta = provider.metadata(&ctx.app.http).await.map_err(|e| {
        tracing::warn!(event = "upstream_callback", provider = %provider.cfg.id, error = %e, "upstream unavailable");
        fail("upstream_unavailable", StatusCode::BAD_GATEWAY)
    })?;
    // RFC 9207: iss, when sent, must be the provider's own; and it must be
    // sent when the provider advertises it (or `require_iss` is set).
    match params.get("iss") {
        Some(iss) if iss != provider.cfg.issuer => {
            tracing::warn!(event = "upstream_callback", provider = %provider.cfg.id, "callback iss mismatch refused");
            return Err(fail("upstream_error", StatusCode::BAD_REQUEST));
        }
        None if provider.iss_required(&meta) => {
            tracing::warn!(event = "upstream_callback", provider = %provider.cfg.id, "callback without the required iss refused");
            return Err(fail("upstream_error", StatusCode::BAD_REQUEST));
        }
        _ => {}
    }
    if let Some(err) = params.get("error") {
        tracing::info!(event = "upstream_callback", provider = %provider.cfg.id, error = ?err, "upstream returned an error");
        let code = if err == "access_denied" {
            "access_denied"
        } else {
            "upstream_error"
        };
        return Err(fail(code, StatusCode::BAD_REQUEST));
    }
    let code = params
        .get("code")
        .ok_or_else(|| fail("upstream_error", StatusCode::BAD_REQUEST))?;
    let login = provider
        .finish(&ctx.app.http, &fed.url(&provider.callback_path()), code, &pending, &fed.cfg.acr_values, Some(&fed.keys))
        .await
        .map_err(|e| {
            tracing::warn!(event = "upstream_callback", provider = %provider.cfg.id, error = ?e, "upstream sign-in failed");
            use crate::federation::UpstreamError as U;
            match e {
                U::Unavailable(_) => fail("upstream_unavailable", StatusCode::BAD_GATEWAY),
                U::Refused(_) => fail("upstream_error", StatusCode::BAD_GATEWAY),
                U::InvalidToken(_) => fail("upstream_invalid_token", StatusCode::BAD_GATEWAY),
                U::Claims(m) if m.contains("acr") => fail("acr_not_satisfied", StatusCode::FORBIDDEN),
                U::Claims(_) => fail("invalid_identity", StatusCode::BAD_GATEWAY),
                U::Config(_) => fail("server_error", StatusCode::INTERNAL_SERVER_ERROR),
            }
        })?;
    tracing::info!(event = "upstream_callback", provider = %provider.cfg.id, acr = ?login.acr, "upstream sign-in verified");
    // The person: a citizen's pivot identity, or an agent and their account.
    let (subject_key, public_sub, display_name, claims) = match fed.cfg.profile {
        Profile::Citizen => {
            let identity = PivotIdentity::from_claims(&login.claims).map_err(|e| {
                tracing::warn!(event = "identity_rejected", provider = %provider.cfg.id, reason = %e, "invalid pivot identity");
                fail("invalid_identity", StatusCode::BAD_GATEWAY)
            })?;
            registry_check(&ctx, &identity, &inter.req).await?;
            let mut claims = identity.to_claims();
            claims.insert("idp_id".into(), json!(provider.cfg.id));
            claims.insert("amr".into(), json!(login.amr));
            let name = format!(
                "{} {}",
                identity.given_name,
                identity.family_name.to_uppercase()
            );
            (identity.identity_key(), None, name, claims)
        }
        Profile::Agent => {
            let agent = crate::agent::identity_from_login(fed, provider, &login).map_err(|e| {
                tracing::warn!(event = "identity_rejected", provider = %provider.cfg.id, reason = ?e, "agent identity refused");
                match e {
                    crate::agent::AgentRefusal::Domain(_) => fail("domain_not_allowed", StatusCode::FORBIDDEN),
                    crate::agent::AgentRefusal::Identity(_) => fail("invalid_identity", StatusCode::BAD_GATEWAY),
                }
            })?;
            let account = ctx
                .app
                .store
                .agent_account(
                    &fed.id,
                    &provider.cfg.id,
                    &agent.sub,
                    &agent.email,
                    &random_token(16),
                    ctx.now(),
                )
                .await?;
            let claims = crate::agent::claims(&agent, &provider.cfg.id, &login);
            let name = format!("{} {}", agent.given_name, agent.usual_name.to_uppercase());
            (format!("agent:{account}"), Some(account), name, claims)
        }
    };
    tracing::info!(event = "identity_verified", provider = %provider.cfg.id, "identity verified");
    let now = ctx.now();
    // Mandate creation and the usager's own page: the sign-in stays in the
    // interaction (for a mandate the browser is the aidant's: no broker
    // session for the usager), and their own page follows.
    let own_page = inter.mandate_draft.is_some() || inter.usager_consultation;
    let authn = Authn {
        subject_key,
        public_sub,
        display_name,
        claims,
        provider: provider.cfg.id.clone(),
        acr: login.acr,
        amr: login.amr,
        auth_time: now,
        sid: random_token(16),
        // Only a broker session needs it (upstream logout).
        upstream_id_token: if own_page {
            String::new()
        } else {
            login.id_token.clone()
        },
        delegation: None,
    };
    let mut updated = inter.clone();
    updated.pending = None;
    updated.state_hash = None;
    updated.authn = Some(authn.clone());
    // A broker session gets a new id after authentication (session fixation).
    let new_session = (!own_page).then(|| {
        let session = super::NewSession::new();
        updated.session = session.id.clone();
        session
    });
    let idata = serde_json::to_string(&updated).map_err(AppError::internal)?;
    // Single use of the upstream state: only one callback can move the
    // interaction on (compare-and-swap on its stored form).
    if !ctx
        .app
        .store
        .update_if(
            Kind::Interaction,
            interaction_id,
            &fed.id,
            &inter_raw,
            &idata,
            now + fed.cfg.interaction_ttl_secs,
        )
        .await?
    {
        return Err(ctx.page_error(lang, StatusCode::BAD_REQUEST, "interaction_expired", None));
    }
    // A completed sign-in at this provider replaced any session a usager
    // had left there on this browser.
    let relogin_before = super::Relogin::read(fed, &cookies);
    let mut relogin = relogin_before.clone();
    relogin.remove(&provider.cfg.id);
    let Some(session) = new_session else {
        let page = if inter.usager_consultation {
            "usager"
        } else {
            "mandat"
        };
        let page = fed.url(&format!("/interaction/{interaction_id}/{page}"));
        // The usager signed in on a screen that may not be theirs (the
        // aidant's): end their session at the provider before their page,
        // or, when the provider has no logout, have the next sign-in there
        // on this browser ask for a fresh authentication.
        let mut resp = match super::logout::end_upstream_session(
            &ctx,
            provider,
            &login.id_token,
            &page,
            lang,
        )
        .await?
        {
            Some(resp) => resp,
            None => {
                tracing::info!(event = "upstream_relogin_marked", federation = %fed.id, provider = %provider.cfg.id, "provider without logout: next sign-in there on this browser will be forced");
                relogin.add(&provider.cfg.id);
                redirect(&page)
            }
        };
        relogin.store_if_changed(&ctx, &relogin_before, &mut resp);
        return Ok(resp);
    };
    let mut resp = session
        .begin(
            &ctx,
            &SessionData {
                authn: Some(authn),
                aidant: None,
            },
            inter.had_session.then_some(inter.session.as_str()),
            now,
            redirect(&fed.url(&format!("/interaction/{}/consent", pending.interaction))),
        )
        .await?;
    relogin.store_if_changed(&ctx, &relogin_before, &mut resp);
    Ok(resp)
}

async fn registry_check(
    ctx: &Ctx,
    identity: &PivotIdentity,
    req: &AuthRequest,
) -> Result<(), AppError> {
    if ctx.fed.cfg.registry != crate::config::RegistryKind::Table {
        return Ok(());
    }
    let store = &ctx.app.store;
    let outcome = match store.registry_get(&identity.identity_key()).await {
        Ok(Some(raw)) => registry_outcome(identity, stored_record(&raw).as_ref()),
        Ok(None) => match store.registry_similar(&registry_lookup_key(identity)).await {
            Ok(similar) => {
                let record = similar.iter().find_map(|r| stored_record(r));
                registry_outcome(identity, record.as_ref())
            }
            Err(e) => RegistryOutcome::Unavailable(e.to_string()),
        },
        Err(e) => RegistryOutcome::Unavailable(e.to_string()),
    };
    match outcome {
        RegistryOutcome::Found => Ok(()),
        RegistryOutcome::Unavailable(e) => {
            tracing::warn!(event = "registry_check", error = ?e, "registry unavailable");
            Err(ctx.page_error(
                req.lang,
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                Some(ctx.back_url(req, "temporarily_unavailable")),
            ))
        }
        other => {
            tracing::info!(event = "registry_check", outcome = ?other, "registry refused the identity");
            Err(ctx.page_error(
                req.lang,
                StatusCode::FORBIDDEN,
                "registry_refused",
                Some(ctx.back_url(req, "access_denied")),
            ))
        }
    }
}

/// Registry records are stored as JSON {"identity": {...}, "deceased": bool}.
pub fn stored_record(raw: &str) -> Option<RegistryRecord> {
    let v: Value = serde_json::from_str(raw).ok()?;
    let identity: PivotIdentity = serde_json::from_value(v.get("identity")?.clone()).ok()?;
    let deceased = v.get("deceased").and_then(Value::as_bool).unwrap_or(false);
    Some(RegistryRecord {
        identity,
        status: if deceased {
            crate::identity::RegistryStatus::Deceased
        } else {
            crate::identity::RegistryStatus::Alive
        },
    })
}

pub fn record_json(r: &RegistryRecord) -> String {
    json!({
        "identity": r.identity,
        "deceased": r.status == crate::identity::RegistryStatus::Deceased,
    })
    .to_string()
}

fn session_authn(ctx: &Ctx, inter: &Interaction) -> Result<Authn, AppError> {
    // A mandate creation never ends at a service.
    inter
        .authn
        .clone()
        .filter(|_| inter.mandate_draft.is_none() && !inter.usager_consultation)
        .ok_or_else(|| ctx.refuse(&inter.req, StatusCode::BAD_REQUEST, "interaction_expired"))
}

pub async fn consent_page(
    State(ctx): State<Ctx>,
    super::Segment(id): super::Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let authn = session_authn(&ctx, &inter)?;
    let client = ctx.client_of(&inter.req)?;
    let lang = inter.req.lang;
    let claims: Vec<String> = claims_for_scopes(&inter.req.scopes)
        .into_iter()
        .filter(|c| *c != "sub")
        .map(|c| {
            let label = crate::web::i18n::claim_label(lang, c);
            let value = display_value(&authn, c);
            match value {
                Some(v) => format!("{label} : {v}"),
                None => label.to_string(),
            }
        })
        .collect();
    let provider_name = ctx
        .fed
        .provider(&authn.provider)
        .map(|p| p.cfg.name.clone())
        .unwrap_or_default();
    ctx.page(
        lang,
        "consent.html",
        minijinja::context! {
            action => ctx.fed.url(&format!("/interaction/{id}/consent")),
            csrf => inter.csrf,
            display_name => authn.display_name,
            client_name => client.cfg.name,
            claims => claims,
            provider_name => provider_name,
            need_consent => client.cfg.kind == crate::config::ClientKind::Private,
            delegation => authn.delegation.as_ref().map(|d| minijinja::context! {
                mandate_id => d.mandate_id,
                domain => d.domain,
            }),
        },
    )
}

fn display_value(authn: &Authn, claim: &str) -> Option<String> {
    match authn.claims.get(claim)? {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub async fn consent_submit(
    State(ctx): State<Ctx>,
    super::Segment(id): super::Segment,
    cookies: Cookies,
    headers: HeaderMap,
    super::FormBody(body): super::FormBody,
) -> Result<Response, AppError> {
    // Single use: the interaction ends here. It is taken at once (one
    // statement on the sign-in's hot path instead of a read then a delete),
    // and only by the browser it belongs to: the delete matches the session
    // binding stored in the interaction (the JSON member
    // `"session":"<this browser's session id>"`, which JSON escaping keeps
    // from appearing inside any string value), so a request without this
    // browser's cookie removes nothing. The binding is checked again below;
    // a request that may not use the interaction puts it back untouched.
    let lang = lang_from(&headers, None);
    let expired = || ctx.page_error(lang, StatusCode::BAD_REQUEST, "interaction_expired", None);
    let Some(sid) = cookies.session_id(&ctx.fed) else {
        return Err(expired());
    };
    let binding = format!(
        "\"session\":{}",
        serde_json::to_string(&sid).map_err(AppError::internal)?
    );
    let Some((raw, expires_at)) = ctx
        .app
        .store
        .take_bound(Kind::Interaction, &id, &ctx.fed.id, &binding, ctx.now())
        .await?
    else {
        return Err(expired());
    };
    let restore = || async {
        ctx.app
            .store
            .put(Kind::Interaction, &id, &ctx.fed.id, &raw, expires_at)
            .await
            .map_err(AppError::from)
    };
    let inter: Interaction = serde_json::from_str(&raw).map_err(AppError::internal)?;
    if sid != inter.session {
        restore().await?;
        return Err(expired());
    }
    let form = Params::parse(&body).unwrap_or_default();
    if let Err(e) = check_csrf(&ctx, &inter, &form) {
        restore().await?;
        return Err(e);
    }
    let client = match ctx.client_of(&inter.req) {
        Ok(c) => c,
        Err(e) => {
            restore().await?;
            return Err(e);
        }
    };
    if form.get("decision") == Some("deny") {
        tracing::info!(event = "consent", federation = %ctx.fed.id, client = %inter.req.client_id, granted = false, "consent refused");
        return Ok(redirect(&ctx.back_url(&inter.req, "access_denied")));
    }
    if client.cfg.kind == crate::config::ClientKind::Private && form.get("consent") != Some("yes") {
        restore().await?;
        return Ok(redirect(
            &ctx.fed.url(&format!("/interaction/{id}/consent")),
        ));
    }
    let authn = match session_authn(&ctx, &inter) {
        Ok(a) => a,
        Err(e) => {
            // A mandate creation or an usager consultation: not for a
            // service; its own pages go on with it.
            restore().await?;
            return Err(e);
        }
    };
    let sub = pairwise_sub(&ctx.fed.pairwise_secret, &client.sector, &authn.subject_key);
    // Explicit consents (private services) are recorded for audit; public
    // services only show information, nothing to record.
    if client.cfg.kind == crate::config::ClientKind::Private {
        ctx.app
            .store
            .record_consent(
                &random_token(12),
                &ctx.fed.id,
                &client.cfg.client_id,
                &sub,
                &inter.req.scopes.join(" "),
                ctx.now(),
            )
            .await?;
    }
    tracing::info!(event = "consent", federation = %ctx.fed.id, client = %inter.req.client_id, granted = true, "consent given");
    issue_code(&ctx, &inter.req, &authn, &inter.session).await
}

/// Create the authorization code and send the browser back to the service.
async fn issue_code(
    ctx: &Ctx,
    req: &AuthRequest,
    authn: &Authn,
    session: &str,
) -> Result<Response, AppError> {
    let client = ctx.client_of(req)?;
    let sub = match (&client.cfg.subject_type, &authn.public_sub) {
        (crate::config::SubjectType::Public, Some(public)) => public.clone(),
        _ => pairwise_sub(&ctx.fed.pairwise_secret, &client.sector, &authn.subject_key),
    };
    let released = claims_for_scopes(&req.scopes);
    let all = &authn.claims;
    let mut userinfo = Map::new();
    userinfo.insert("sub".into(), json!(sub));
    for c in &released {
        if let Some(v) = all.get(*c) {
            userinfo.insert((*c).to_string(), v.clone());
        }
    }
    // Claims asked through the claims parameter, limited to what the scopes release.
    let mut id_token_extra = Map::new();
    for c in &req.claims.id_token {
        if released.contains(&c.as_str()) {
            if let Some(v) = all.get(c) {
                id_token_extra.insert(c.clone(), v.clone());
            }
        }
    }
    // Delegated sign-in: `act` and `mandate` are released whatever the
    // scopes, in the ID token and at userinfo.
    if let Some(d) = &authn.delegation {
        for c in ["act", "mandate"] {
            if let Some(v) = all.get(c) {
                userinfo.insert(c.to_string(), v.clone());
                id_token_extra.insert(c.to_string(), v.clone());
            }
        }
        ctx.app
            .store
            .record_mandate_use(
                &d.aidant_id,
                &d.org_id,
                &d.mandate_id,
                &req.client_id,
                &d.domain,
                ctx.now(),
            )
            .await?;
        tracing::info!(event = "mandate_used", federation = %ctx.fed.id, client = %req.client_id, domain = %d.domain, "mandate used");
    }
    let data = CodeData {
        redirect_uri: req.redirect_uri.clone(),
        code_challenge: req.code_challenge.clone(),
        nonce: req.nonce.clone(),
        scopes: req.scopes.clone(),
        sub,
        userinfo,
        id_token_extra,
        acr: authn.acr.clone(),
        amr: authn.amr.clone(),
        auth_time: authn.auth_time,
        sid: authn.sid.clone(),
        session: session.to_string(),
        delegation: authn.delegation.clone(),
    };
    let code = random_token(32);
    let fed = &ctx.fed;
    ctx.app
        .store
        .insert_code(
            &sha256_b64(code.as_bytes()),
            &fed.id,
            &req.client_id,
            &random_token(16),
            &serde_json::to_string(&data).map_err(AppError::internal)?,
            ctx.now() + fed.cfg.code_ttl_secs,
        )
        .await?;
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = &req.state {
        params.push(("state", s));
    }
    params.push(("iss", &fed.issuer));
    tracing::info!(event = "code_issued", federation = %fed.id, client = %req.client_id, "authorization code issued");
    Ok(redirect(&with_query(&req.redirect_uri, &params)))
}
