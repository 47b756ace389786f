//! The usager's own page (flow 4 of the aidants issue): at `/usager` the
//! person signs in **themselves** through the normal federation (an
//! interaction marked `usager_consultation`: its callback comes here, never
//! to a service, and no broker session is created), sees every mandate
//! about them (organisation, domains with dates and status, last uses) and
//! revokes a domain or a whole mandate alone. Each display is journalled
//! (`usager.consulted`).

use super::authorize::{check_csrf, load_interaction, AuthRequest, Interaction};
use super::{lang_from, session_key, set_cookie, Cookies, Ctx, Params};
use crate::config::Profile;
use crate::crypto::random_token;
use crate::error::{redirect, AppError};
use crate::identity::PivotIdentity;
use crate::mandates::journal::Event;
use crate::mandates::{Actor, MandateError, Salt};
use crate::store::Kind;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

/// Uses of an organisation's mandates read from the journal per page.
const USES_SCANNED: i64 = 500;
/// Last uses shown per mandate.
const USES_SHOWN: usize = 5;

/// GET `/usager`: starts the usager's own sign-in.
pub async fn start(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let fed = &ctx.fed;
    if fed.cfg.profile != Profile::Citizen {
        return Err(ctx.page_error(lang, StatusCode::NOT_FOUND, "not_found", None));
    }
    // The interaction is bound to this browser's cookie (a new one if none).
    let (session, new_cookie) = match cookies.session_id(fed) {
        Some(sid) => (sid, None),
        None => {
            let value = random_token(32);
            (session_key(&value), Some(value))
        }
    };
    let req = AuthRequest::own_sign_in(fed.url("/usager"), lang);
    let inter = Interaction {
        req,
        session,
        had_session: false,
        csrf: random_token(24),
        provider: None,
        pending: None,
        state_hash: None,
        authn: None,
        candidates: None,
        aidant: None,
        mandate_draft: None,
        usager_consultation: true,
    };
    let id = random_token(24);
    let data = serde_json::to_string(&inter).map_err(AppError::internal)?;
    ctx.app
        .store
        .put(
            Kind::Interaction,
            &id,
            &fed.id,
            &data,
            ctx.now() + fed.cfg.interaction_ttl_secs,
        )
        .await?;
    let mut resp = redirect(&fed.url(&format!("/interaction/{id}")));
    if let Some(value) = new_cookie {
        resp.headers_mut().insert(
            axum::http::header::SET_COOKIE,
            set_cookie(&ctx, &value, fed.cfg.session_ttl_secs),
        );
    }
    Ok(resp)
}

/// The interaction, checked to be a consultation with the usager's own
/// sign-in; and the usager id (None: no mandate was ever made about them).
async fn signed_in(
    ctx: &Ctx,
    id: &str,
    cookies: &Cookies,
    headers: &HeaderMap,
) -> Result<(Interaction, Option<String>), AppError> {
    let inter = load_interaction(ctx, id, cookies, headers).await?;
    let expired = || {
        ctx.page_error(
            inter.req.lang,
            StatusCode::BAD_REQUEST,
            "interaction_expired",
            Some(ctx.fed.url("/usager")),
        )
    };
    if !inter.usager_consultation {
        return Err(expired());
    }
    let authn = inter.authn.clone().ok_or_else(expired)?;
    let identity = PivotIdentity::from_claims(&authn.claims).map_err(AppError::internal)?;
    let usager = ctx
        .app
        .store
        .usager_by_identity_key(&identity.identity_key())
        .await?;
    Ok((inter, usager))
}

#[derive(Serialize)]
struct AuthView {
    domain: String,
    starts: String,
    expires: String,
    status: &'static str,
    active: bool,
    revoked_at: Option<String>,
}

#[derive(Serialize)]
struct UseView {
    at: String,
    client: String,
    domain: String,
}

#[derive(Serialize)]
struct MandateView {
    id: String,
    organisation: String,
    created: String,
    authorisations: Vec<AuthView>,
    revocable: bool,
    uses: Vec<UseView>,
}

/// GET `/interaction/{id}/usager`: every mandate about the signed-in person.
pub async fn page(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let (inter, usager) = signed_in(&ctx, &id, &cookies, &headers).await?;
    let store = &ctx.app.store;
    let now = ctx.now();
    let mut mandates = Vec::new();
    if let Some(usager_id) = &usager {
        for m in store.usager_mandates(usager_id).await? {
            let org = store.organisation(&m.org_id).await?;
            let uses = store
                .mandate_uses(&m.org_id, USES_SCANNED)
                .await?
                .into_iter()
                .filter(|(_, mid, _, _)| *mid == m.id)
                .take(USES_SHOWN)
                .map(|(at, _, client, domain)| UseView {
                    at: crate::mandates::cli::utc(at),
                    client: ctx
                        .client(&client)
                        .map(|c| c.cfg.name.clone())
                        .unwrap_or(client),
                    domain,
                })
                .collect();
            mandates.push(MandateView {
                organisation: org.map(|o| o.name).unwrap_or_default(),
                created: super::aidant::date(m.created_at),
                authorisations: m
                    .authorisations
                    .iter()
                    .map(|a| AuthView {
                        domain: a.domain.clone(),
                        starts: super::aidant::date(a.starts_at),
                        expires: super::aidant::date(a.expires_at),
                        status: a.status(now),
                        active: a.is_active(now),
                        revoked_at: a.revoked_at.map(crate::mandates::cli::utc),
                    })
                    .collect(),
                revocable: m.authorisations.iter().any(|a| a.is_active(now)),
                uses,
                id: m.id,
            });
        }
        let salt = Salt::load_or_create(&ctx.app.journal_salt_path).map_err(AppError::internal)?;
        let actor = Actor::Usager(usager_id.clone()).name();
        store
            .journal_append(
                Event {
                    kind: "usager.consulted",
                    actor: &actor,
                    org_id: None,
                    data: json!({"mandates": mandates.len()}),
                    personal: vec![],
                }
                .prepare(Some(&salt), now),
            )
            .await?;
    }
    tracing::info!(event = "usager_consultation", federation = %ctx.fed.id, "usager consultation");
    ctx.page(
        inter.req.lang,
        "usager_mandates.html",
        minijinja::context! {
            action => ctx.fed.url(&format!("/interaction/{id}/usager")),
            csrf => inter.csrf,
            mandates => mandates,
        },
    )
}

/// POST `/interaction/{id}/usager`: revoke `domain` of `mandate`, or the
/// whole mandate; only a mandate about the signed-in person.
pub async fn revoke(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    cookies: Cookies,
    headers: HeaderMap,
    body: String,
) -> Result<Response, AppError> {
    let (inter, usager) = signed_in(&ctx, &id, &cookies, &headers).await?;
    let form = Params::parse(&body).unwrap_or_default();
    check_csrf(&ctx, &inter, &form)?;
    let lang = inter.req.lang;
    let not_found = || ctx.page_error(lang, StatusCode::NOT_FOUND, "not_found", None);
    let usager_id = usager.ok_or_else(not_found)?;
    let store = &ctx.app.store;
    let mid = form.get("mandate").unwrap_or("").to_string();
    store
        .mandate(&mid)
        .await?
        .filter(|m| m.usager_id == usager_id)
        .ok_or_else(not_found)?;
    let actor = Actor::Usager(usager_id);
    let now = ctx.now();
    let result = match form.get("domain").filter(|d| !d.is_empty()) {
        Some(d) => store.revoke_domain(&mid, d, &actor, now).await,
        None => store.revoke_mandate(&mid, &actor, now).await,
    };
    match result {
        Ok(domains) => {
            tracing::info!(event = "mandate_revoked", federation = %ctx.fed.id, domains = %domains.join(","), "mandate revoked by the usager");
        }
        Err(MandateError::NotAllowed) => {
            return Err(ctx.page_error(lang, StatusCode::FORBIDDEN, "mandate_refused", None))
        }
        Err(MandateError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(AppError::internal(format!("{e:?}"))),
    }
    Ok(redirect(&ctx.fed.url(&format!("/interaction/{id}/usager"))))
}
