//! The usager's own page (flow 4 of the aidants issue): at `/usager` the
//! person signs in **themselves** through the normal federation (an
//! interaction for the own page `usager`: its callback comes here, never
//! to a service, and no broker session is created), sees every mandate
//! about them (organisation, domains with dates and status, last uses) and
//! revokes a domain or a whole mandate alone. Each display is journalled
//! (`usager.consulted`).

use super::attestation::{auth_views, revoke as revoke_mandate, AuthView};
use super::space::{not_found, put_interaction, session_or_new};
use crate::aidants::journal::Event;
use crate::aidants::{Actor, Salt};
use crate::app::Ctx;
use crate::error::{redirect, AppError};
use crate::http::cookies::set_cookie;
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::FormBody;
use crate::http::params::Params;
use crate::http::params::Segment;
use crate::oidc::interaction::Purpose;
use crate::oidc::interaction::{check_csrf, load_interaction, AuthRequest, Interaction};
use crate::subject::citizen::PivotIdentity;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

/// The own page a usager's consultation sign-in ends on (`/interaction/{id}/usager`).
pub const USAGER_PAGE: &str = "usager";

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
    // The interaction is bound to this browser's cookie (a new one if none).
    let (session, new_cookie) = session_or_new(&ctx, &cookies);
    let req = AuthRequest::own_sign_in(fed.url("/usager"), lang);
    let inter = Interaction::new(req, session, false, Purpose::own_page(USAGER_PAGE, &())?);
    let id = put_interaction(&ctx, &inter).await?;
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
    let expired = || ctx.expired(inter.req.lang, Some(ctx.fed.url("/usager")));
    if inter.own_page() != Some(USAGER_PAGE) {
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
    Segment(id): Segment,
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
                .filter(|u| u.mandate_id == m.id)
                .take(USES_SHOWN)
                .map(|u| UseView {
                    at: crate::aidants::cli::utc(u.at),
                    client: ctx
                        .client(&u.client)
                        .map(|c| c.cfg.name.clone())
                        .unwrap_or(u.client),
                    domain: u.domain,
                })
                .collect();
            mandates.push(MandateView {
                organisation: org.map(|o| o.name).unwrap_or_default(),
                created: super::interaction::date(m.created_at),
                authorisations: auth_views(&m, now),
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
    Segment(id): Segment,
    cookies: Cookies,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let (inter, usager) = signed_in(&ctx, &id, &cookies, &headers).await?;
    let form = Params::parse(&body).unwrap_or_default();
    check_csrf(&ctx, &inter, &form)?;
    let lang = inter.req.lang;
    let not_found = || not_found(&ctx, lang);
    let usager_id = usager.ok_or_else(not_found)?;
    let mid = form.get("mandate").unwrap_or("");
    ctx.app
        .store
        .mandate(mid)
        .await?
        .filter(|m| m.usager_id == usager_id)
        .ok_or_else(not_found)?;
    let actor = Actor::Usager(usager_id);
    revoke_mandate(&ctx, lang, mid, &form, &actor, "the usager").await?;
    Ok(redirect(&ctx.fed.url(&format!("/interaction/{id}/usager"))))
}
