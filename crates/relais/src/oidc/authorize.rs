//! `/authorize` (GET and POST): request validation (parameter limits,
//! client, redirect URI, scopes, PKCE, prompt/max_age), the SSO decision,
//! and the start of the upstream sign-in (choice page, `idp_hint`, email
//! routing for agents).

use super::claims::ClaimsRequest;
use super::consent::issue_code;
use super::interaction::*;
use crate::app::Ctx;
use crate::config::Profile;
use crate::crypto::{random_token, sha256_b64};
use crate::error::{redirect, AppError};
use crate::http::cookies::session_key;
use crate::http::cookies::set_cookie;
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::Params;
use crate::oidc::session::load_session;
use crate::oidc::session::Authn;
use crate::subject::agent::identity::{normalise_email, Route};
use crate::web::i18n::PageCode;
use crate::web::Lang;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

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
    crate::http::params::FormBody(body): crate::http::params::FormBody,
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
    let client = ctx.client(client_id).ok_or_else(|| {
        ctx.page_error(lang, StatusCode::BAD_REQUEST, PageCode::InvalidClient, None)
    })?;
    let redirect_uri = params.get("redirect_uri").unwrap_or("");
    if !client.cfg.redirect_uris.iter().any(|u| u == redirect_uri) {
        return Err(ctx.page_error(
            lang,
            StatusCode::BAD_REQUEST,
            PageCode::InvalidRedirectUri,
            None,
        ));
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
    if crate::subject::agent::wants_mfa(fed, req.acr_min.as_deref()) {
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
    let params = Params::parse(raw).map_err(|_| {
        ctx.page_error(
            pre_lang,
            StatusCode::BAD_REQUEST,
            PageCode::InvalidRequest,
            None,
        )
    })?;
    let lang = lang_from(headers, params.get("ui_locales"));
    let req = validate(ctx, &params, lang)?;
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
            PageCode::TooManyAttempts,
            None,
        ));
    }
    let id = random_token(24);
    let mut inter = Interaction::new(
        req,
        session_id,
        had_session,
        super::interaction::Purpose::Service,
    );
    if sso {
        inter.authn = existing;
    }
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
    ctx.put_interaction(&id, &inter).await?;
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
pub(crate) async fn agent_next(
    ctx: &Ctx,
    cookies: &Cookies,
    id: &str,
    inter: &mut Interaction,
    email: &str,
) -> Result<String, AppError> {
    let fed = &ctx.fed;
    inter.req.login_hint = Some(email.to_string());
    match crate::subject::agent::route_email(
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
            PageCode::NoProviderForDomain,
        )),
    }
}

/// Prepare the redirect to the upstream provider and remember its state.
pub(crate) async fn start_upstream(
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
                PageCode::InvalidRequest,
                back.clone(),
            )
        })?;
    if let Some(min) = &inter.req.acr_min {
        if fed.provider_max_rank(provider) < fed.acr_rank(min) {
            return Err(ctx.page_error(
                lang,
                StatusCode::BAD_REQUEST,
                PageCode::AcrNotSatisfied,
                back,
            ));
        }
    }
    // Someone else may still be signed in at this provider on this browser
    // (a usager's sign-in on an aidant's screen, provider without logout):
    // a fresh authentication, never silent single sign-on.
    let relogin = crate::oidc::session::Relogin::read(fed, cookies).contains(provider_id);
    if relogin {
        tracing::info!(event = "upstream_relogin", federation = %fed.id, provider = %provider_id, "fresh upstream sign-in forced on this browser");
    }
    let force_login = relogin
        || inter.req.prompt.iter().any(|p| p == "login")
        || inter.req.max_age.is_some()
        || crate::subject::agent::wants_mfa(fed, inter.req.acr_min.as_deref());
    let max_age = if relogin { Some(0) } else { inter.req.max_age };
    let (url, _state, pending) = provider
        .start(
            &ctx.app.http,
            &crate::upstream::UpstreamRequest {
                redirect_uri: &fed.url(&provider.callback_path()),
                acr_min: inter.req.acr_min.as_deref(),
                acr_ladder: &fed.cfg.acr_values,
                login_hint: inter.req.login_hint.as_deref(),
                siret_hint: inter.req.siret_hint.as_deref(),
                force_login,
                max_age,
                interaction: interaction_id,
                session: &inter.session,
                state: &state,
            },
        )
        .await
        .map_err(|e| {
            tracing::warn!(provider = ?provider_id, error = ?e, "upstream unavailable");
            ctx.page_error(
                lang,
                StatusCode::BAD_GATEWAY,
                PageCode::UpstreamUnavailable,
                back.clone(),
            )
        })?;
    debug_assert_eq!(_state, state);
    inter.provider = Some(provider_id.to_string());
    inter.pending = Some(pending);
    inter.state_hash = Some(sha256_b64(secret.as_bytes()));
    Ok(url)
}
