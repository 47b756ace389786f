//! The provider choice page (`/interaction/{id}`, `/interaction/{id}/choose`),
//! email-first routing (`/interaction/{id}/email`) and abandoning a sign-in
//! (`/interaction/{id}/abort`).

use super::authorize::{agent_next, start_upstream};
use super::interaction::*;
use crate::app::Ctx;
use crate::config::Profile;
use crate::error::{redirect, AppError};
use crate::http::cookies::Cookies;
use crate::http::params::Params;
use crate::store::Kind;
use crate::subject::agent::identity::normalise_email;
use crate::web::i18n::PageCode;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;

pub async fn email_submit(
    State(ctx): State<Ctx>,
    crate::http::params::Segment(id): crate::http::params::Segment,
    cookies: Cookies,
    headers: HeaderMap,
    crate::http::params::FormBody(body): crate::http::params::FormBody,
) -> Result<Response, AppError> {
    let mut inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let form = Params::parse(&body).unwrap_or_default();
    check_csrf(&ctx, &inter, &form)?;
    let Some(email) = form.get("email").and_then(normalise_email) else {
        return Err(ctx.page_error(
            inter.req.lang,
            StatusCode::BAD_REQUEST,
            PageCode::InvalidEmail,
            Some(ctx.fed.url(&format!("/interaction/{id}"))),
        ));
    };
    let url = agent_next(&ctx, &cookies, &id, &mut inter, &email).await?;
    ctx.save_interaction(&id, &inter).await?;
    Ok(redirect(&url))
}

/// Another way to sign in, offered under the providers on the choice page
/// by another domain (the aidants' "I am a professional helper").
#[derive(Debug, Serialize)]
pub struct OtherWay {
    /// The link's element id and class (page tests and style sheet).
    pub id: &'static str,
    pub class: &'static str,
    /// Its text (French, then English in parentheses).
    pub label: &'static str,
    pub url: String,
}

/// A domain's entry on the choice page for this sign-in (`min_rank`: the
/// minimum acr rank asked), or `None` when it does not apply.
pub type OtherWays = fn(&Ctx, &Interaction, &str, Option<usize>) -> Option<OtherWay>;

#[derive(Serialize)]
pub(crate) struct ProviderView {
    id: String,
    name: String,
    disabled: bool,
}

pub async fn choose_page(
    State(ctx): State<Ctx>,
    crate::http::params::Segment(id): crate::http::params::Segment,
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
    let other_ways: Vec<OtherWay> = fed
        .other_ways
        .iter()
        .filter_map(|way| way(&ctx, &inter, &id, min_rank))
        .collect();
    ctx.page(
        inter.req.lang,
        "choose.html",
        minijinja::context! {
            action => fed.url(&format!("/interaction/{id}/choose")),
            csrf => inter.csrf,
            providers => providers,
            client_name => client_name,
            back_url => fed.url(&format!("/interaction/{id}/abort")),
            other_ways => other_ways,
        },
    )
}

pub async fn abort(
    State(ctx): State<Ctx>,
    crate::http::params::Segment(id): crate::http::params::Segment,
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
    crate::http::params::Segment(id): crate::http::params::Segment,
    cookies: Cookies,
    headers: HeaderMap,
    crate::http::params::FormBody(body): crate::http::params::FormBody,
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
        return Err(ctx.refuse(
            &inter.req,
            StatusCode::BAD_REQUEST,
            PageCode::InvalidRequest,
        ));
    }
    let url = start_upstream(&ctx, &cookies, &id, &mut inter, &provider).await?;
    ctx.save_interaction(&id, &inter).await?;
    tracing::info!(event = "idp_chosen", federation = %ctx.fed.id, provider = %provider, via = "choice_page", "identity provider chosen");
    Ok(redirect(&url))
}
