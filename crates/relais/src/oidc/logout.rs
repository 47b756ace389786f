//! RP-initiated logout (`/session/end`), chained to the upstream provider's
//! own logout when it has an `end_session_endpoint`.

use crate::app::Ctx;
use crate::crypto::random_token;
use crate::error::{redirect, with_query, AppError};
use crate::http::cookies::set_cookie;
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::Params;
use crate::oidc::session::load_session;
use crate::store::Kind;
use crate::web::i18n::PageCode;
use crate::web::Lang;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Serialize, Deserialize)]
struct LogoutFlow {
    /// Verified return address and state, if the service gave them.
    return_to: Option<String>,
    state: Option<String>,
    lang: Lang,
    /// Session allowed to confirm (confirmation page only).
    session: Option<String>,
}

/// (client id, sid) of a valid `id_token_hint` signed by this federation.
pub fn verify_hint(ctx: &Ctx, hint: &str) -> Option<(String, Option<String>)> {
    let keys = ctx.fed.keys.get();
    let u = keys.verify(hint).ok()?;
    if u.claims.get("iss").and_then(Value::as_str) != Some(ctx.fed.issuer.as_str()) {
        return None;
    }
    let sid = u
        .claims
        .get("sid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let aud = match u.claims.get("aud") {
        Some(Value::String(a)) => Some(a.clone()),
        Some(Value::Array(list)) if list.len() == 1 => {
            list.first().and_then(Value::as_str).map(str::to_string)
        }
        _ => None,
    };
    aud.map(|a| (a, sid))
}

pub async fn end_session_get(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    end_session(ctx, cookies, headers, q.unwrap_or_default()).await
}

pub async fn end_session_post(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
    crate::http::params::FormBody(body): crate::http::params::FormBody,
) -> Result<Response, AppError> {
    // Either a service posting the logout request, or the confirmation form.
    let form = Params::parse(&body).unwrap_or_default();
    if form.get("decision") == Some("logout") {
        return confirm(ctx, cookies, headers, form).await;
    }
    // A service's cross-site POST arrives without the SameSite=Lax session
    // cookie: the same request as a GET (a top-level navigation carries it).
    if !cookies.has_session_cookie(&ctx.fed) {
        if let Some(resp) = super::repeat_as_get(&ctx, "/session/end", &body) {
            return Ok(resp);
        }
    }
    end_session(ctx, cookies, headers, body).await
}

async fn end_session(
    ctx: Ctx,
    cookies: Cookies,
    headers: HeaderMap,
    raw: String,
) -> Result<Response, AppError> {
    let params = Params::parse(&raw).unwrap_or_default();
    let lang = lang_from(&headers, params.get("ui_locales"));
    // Bounded before anything is verified, stored or echoed.
    if super::authorize::over_long(&params).is_some() {
        return Err(ctx.page_error(
            lang,
            StatusCode::BAD_REQUEST,
            PageCode::InvalidRequest,
            None,
        ));
    }
    let client_id = params
        .get("id_token_hint")
        .and_then(|h| verify_hint(&ctx, h));
    let hint = match (client_id, params.get("client_id")) {
        (Some((a, _)), Some(c)) if a != c => None,
        (hint, _) => hint,
    };
    let fed = &ctx.fed;
    let Some((client_id, hint_sid)) = hint else {
        // No valid hint: ask the person, and never redirect anywhere afterwards.
        return ask_confirmation(&ctx, &cookies, lang, None, None).await;
    };
    let return_to = match params.get("post_logout_redirect_uri") {
        Some(uri) => {
            let registered = fed
                .clients
                .get(&client_id)
                .is_some_and(|c| c.cfg.post_logout_redirect_uris.iter().any(|u| u == uri));
            if !registered {
                return Err(ctx.page_error(
                    lang,
                    StatusCode::BAD_REQUEST,
                    PageCode::InvalidRedirectUri,
                    None,
                ));
            }
            Some(uri.to_string())
        }
        None => None,
    };
    let state = params.get("state").map(str::to_string);
    // The hint must name this browser's session; a hint from another session
    // (someone else's token) only earns a confirmation page.
    // A session row without a matching sign-in (an aidant's session, or a
    // citizen's of another sign-in) is not the hint's either: confirmation.
    if let Some(sid) = cookies.session_id(fed) {
        if let Some(session) = load_session(&ctx, &sid).await? {
            let current = session.authn.map(|a| a.sid);
            if current.is_none() || current != hint_sid {
                return ask_confirmation(&ctx, &cookies, lang, return_to, state).await;
            }
        }
    }
    let flow = LogoutFlow {
        return_to,
        state,
        lang,
        session: None,
    };
    tracing::info!(event = "logout", federation = %fed.id, client = %client_id, "logout requested by service");
    finish_logout(&ctx, &cookies, flow).await
}

/// Store a logout flow (600 s, single use) under a new random id.
async fn store_flow(ctx: &Ctx, flow: &LogoutFlow) -> Result<String, AppError> {
    let id = random_token(24);
    ctx.app
        .store
        .put(
            Kind::Logout,
            &id,
            &ctx.fed.id,
            &serde_json::to_string(flow).map_err(AppError::internal)?,
            ctx.now() + 600,
        )
        .await?;
    Ok(id)
}

/// Ask the person to confirm; afterwards only a verified return address is used.
async fn ask_confirmation(
    ctx: &Ctx,
    cookies: &Cookies,
    lang: Lang,
    return_to: Option<String>,
    state: Option<String>,
) -> Result<Response, AppError> {
    let fed = &ctx.fed;
    // Nothing to end on this browser: say so, and write nothing (an
    // anonymous request must not create rows).
    let session = match cookies.session_id(fed) {
        Some(sid) if load_session(ctx, &sid).await?.is_some() => Some(sid),
        _ => None,
    };
    if session.is_none() {
        return return_to_service(
            ctx,
            LogoutFlow {
                return_to: None,
                state: None,
                lang,
                session: None,
            },
        );
    }
    let flow = LogoutFlow {
        return_to,
        state,
        lang,
        session,
    };
    let id = store_flow(ctx, &flow).await?;
    ctx.page(
        lang,
        "logout_confirm.html",
        minijinja::context! { action => fed.url("/session/end"), csrf => id },
    )
}

async fn confirm(
    ctx: Ctx,
    cookies: Cookies,
    headers: HeaderMap,
    form: Params,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let id = form.get("csrf").unwrap_or("");
    let flow: LogoutFlow = ctx
        .app
        .store
        .take(Kind::Logout, id, &ctx.fed.id, ctx.now())
        .await?
        .and_then(|r| serde_json::from_str(&r).ok())
        .ok_or_else(|| ctx.page_error(lang, StatusCode::FORBIDDEN, PageCode::Csrf, None))?;
    if flow.session != cookies.session_id(&ctx.fed) {
        return Err(ctx.page_error(lang, StatusCode::FORBIDDEN, PageCode::Csrf, None));
    }
    tracing::info!(event = "logout", federation = %ctx.fed.id, "logout confirmed by the person");
    finish_logout(&ctx, &cookies, flow).await
}

/// End the broker session, then the upstream one if possible, then return.
async fn finish_logout(
    ctx: &Ctx,
    cookies: &Cookies,
    flow: LogoutFlow,
) -> Result<Response, AppError> {
    let fed = &ctx.fed;
    let mut upstream = None;
    if let Some(sid) = cookies.session_id(fed) {
        if let Some(s) = load_session(ctx, &sid).await? {
            if let Some(a) = s.authn {
                upstream = fed.provider(&a.provider).and_then(|p| {
                    p.end_session_endpoint()
                        .map(|e| (e, a.upstream_id_token.clone(), p.cfg.client_id.clone()))
                });
            }
        }
        ctx.app.store.delete(Kind::Session, &sid, &fed.id).await?;
        let revoked = ctx.app.store.revoke_session_tokens(&fed.id, &sid).await?;
        tracing::info!(event = "session_ended", federation = %fed.id, tokens_revoked = revoked, "broker session ended");
    }
    let mut resp = if let Some((endpoint, hint, upstream_client)) = upstream {
        upstream_redirect(ctx, &flow, &endpoint, &hint, &upstream_client).await?
    } else {
        return_to_service(ctx, flow)?
    };
    // Cleared only when the request carried it (never on a request that
    // arrived without it: that browser may still have it).
    if cookies.has_session_cookie(fed) {
        resp.headers_mut()
            .insert(header::SET_COOKIE, set_cookie(ctx, "", 0));
    }
    Ok(resp)
}

/// To the provider's logout with the ID token as hint; it returns to
/// `/logout/callback`, which goes on as `flow` says.
async fn upstream_redirect(
    ctx: &Ctx,
    flow: &LogoutFlow,
    endpoint: &str,
    hint: &str,
    upstream_client: &str,
) -> Result<Response, AppError> {
    let fed = &ctx.fed;
    let id = store_flow(ctx, flow).await?;
    let url = with_query(
        endpoint,
        &[
            ("id_token_hint", hint),
            (
                "post_logout_redirect_uri",
                fed.url("/logout/callback").as_str(),
            ),
            ("state", id.as_str()),
            ("client_id", upstream_client),
        ],
    );
    Ok(redirect(&url))
}

/// End the provider's session of a sign-in made for Relais' own pages on a
/// screen that may not be the person's (a usager on an aidant's browser):
/// the provider's logout, back to `/logout/callback`, then on to `page` (a
/// page of Relais). None when the provider has no `end_session_endpoint`.
pub(crate) async fn end_upstream_session(
    ctx: &Ctx,
    provider: &crate::upstream::Upstream,
    id_token: &str,
    page: &str,
    lang: Lang,
) -> Result<Option<Response>, AppError> {
    let Some(endpoint) = provider.end_session_endpoint() else {
        return Ok(None);
    };
    let flow = LogoutFlow {
        return_to: Some(page.to_string()),
        state: None,
        lang,
        session: None,
    };
    tracing::info!(event = "upstream_logout", federation = %ctx.fed.id, provider = %provider.cfg.id, "ending the provider's session after a sign-in on a shared screen");
    upstream_redirect(ctx, &flow, &endpoint, id_token, &provider.cfg.client_id)
        .await
        .map(Some)
}

fn return_to_service(ctx: &Ctx, flow: LogoutFlow) -> Result<Response, AppError> {
    match flow.return_to {
        Some(uri) => {
            let mut p = vec![];
            if let Some(s) = &flow.state {
                p.push(("state", s.as_str()));
            }
            Ok(redirect(&with_query(&uri, &p)))
        }
        None => {
            let t = crate::web::i18n::messages(flow.lang);
            ctx.page(
                flow.lang,
                "message.html",
                minijinja::context! { title => t.logged_out_title, message => t.logged_out },
            )
        }
    }
}

/// The upstream provider sends the browser back here after its own logout.
pub async fn upstream_logout_callback(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    let params = Params::parse(&q.unwrap_or_default()).unwrap_or_default();
    let lang = lang_from(&headers, None);
    let flow: LogoutFlow = ctx
        .app
        .store
        .take(
            Kind::Logout,
            params.get("state").unwrap_or(""),
            &ctx.fed.id,
            ctx.now(),
        )
        .await?
        .and_then(|r| serde_json::from_str(&r).ok())
        .ok_or_else(|| ctx.expired(lang, None))?;
    return_to_service(&ctx, flow)
}
