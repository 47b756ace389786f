//! The OpenID Provider side: what services integrate, one file per
//! endpoint group — `authorize` (`/authorize`), `choose` (choice page,
//! email routing, abort), `callback` (`/callback/{provider_id}`), `consent`
//! (consent page, code), `token` (`/token`, `/userinfo`), `logout`
//! (`/session/end`, `/logout/callback`), `claims` (claims selection) and
//! `interaction` (the sign-in in progress), `session` (the broker session),
//! `discovery` (discovery, JWKS, style sheets). This file: the router of
//! one federation, where every URL is mapped to its file.

pub mod authorize;
pub mod callback;
pub mod choose;
pub mod claims;
pub mod consent;
pub mod discovery;
pub mod interaction;
pub mod logout;
pub mod session;
pub mod token;

use crate::app::Ctx;
use crate::app::{AppState, Federation};
use crate::http::page::lang_from;
use crate::http::params::Params;
use crate::web::i18n::PageCode;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// Routes of one federation, relative to its issuer path.
pub fn router(app: Arc<AppState>, fed: Arc<Federation>) -> Router {
    let ctx = Ctx { app, fed };
    let mut router = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(discovery::discovery),
        )
        .route("/jwks", get(discovery::jwks))
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
        .route("/static/relais.css", get(discovery::relais_css))
        .route("/static/theme.css", get(discovery::theme_css));
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
    ctx.page_error(lang, StatusCode::NOT_FOUND, PageCode::NotFound, None)
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
