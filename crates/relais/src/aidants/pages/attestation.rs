//! A mandate's attestation (printable, with its hash), revocation by an
//! aidant and the revocation receipt (`/aidant/mandats/{mid}/…`).

use super::interaction::AidantStep;
use super::space::*;
use crate::aidants::rules::*;
use crate::aidants::{Mandate, Organisation};
use crate::app::Ctx;
use crate::error::{redirect, AppError};
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::FormBody;
use crate::http::params::Params;
use crate::http::params::Segment;
use crate::web::i18n::PageCode;
use crate::web::Lang;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
pub(super) struct AuthView {
    pub(super) domain: String,
    pub(super) starts: String,
    pub(super) expires: String,
    pub(super) status: &'static str,
    pub(super) active: bool,
    pub(super) revoked_at: Option<String>,
    pub(super) revoked_by: Option<String>,
}

#[derive(Serialize)]
pub(super) struct MandateView {
    pub(super) id: String,
    pub(super) usager: String,
    pub(super) authorisations: Vec<AuthView>,
    pub(super) revocable: bool,
    pub(super) revoked: bool,
    pub(super) revoke_action: String,
    pub(super) renew_url: Option<String>,
    pub(super) attestation_url: String,
    pub(super) revocation_url: String,
}

pub(super) fn auth_views(m: &Mandate, now: i64) -> Vec<AuthView> {
    m.authorisations
        .iter()
        .map(|a| AuthView {
            domain: a.domain.clone(),
            starts: super::interaction::date(a.starts_at),
            expires: super::interaction::date(a.expires_at),
            status: a.status(now),
            active: a.is_active(now),
            revoked_at: a.revoked_at.map(crate::aidants::cli::utc),
            revoked_by: a.revoked_by.clone(),
        })
        .collect()
}

/// "Given FAMILY" from the usager's stored claims (empty if unknown).
pub(super) async fn usager_name(ctx: &Ctx, usager_id: &str) -> Result<String, AppError> {
    let claims = match ctx.app.store.usager(usager_id).await? {
        Some((_, Some(raw))) => serde_json::from_str::<Value>(&raw).ok(),
        _ => None,
    };
    Ok(claims
        .map(|c| {
            format!(
                "{} {}",
                c["given_name"].as_str().unwrap_or(""),
                c["family_name"].as_str().unwrap_or("").to_uppercase()
            )
        })
        .unwrap_or_default())
}

/// The mandate `mid` of the aidant's current organisation (else 404).
pub(super) async fn org_mandate(
    ctx: &Ctx,
    lang: Lang,
    step: &AidantStep,
    mid: &str,
) -> Result<Mandate, AppError> {
    ctx.app
        .store
        .mandate(mid)
        .await?
        .filter(|m| m.org_id == step.org_id)
        .ok_or_else(|| not_found(ctx, lang))
}

/// The browser's session id and aidant sign-in, the mandate `mid` of their
/// current organisation and that organisation; None without a sign-in.
pub(super) async fn attestation_target(
    ctx: &Ctx,
    cookies: &Cookies,
    lang: Lang,
    mid: &str,
) -> Result<Option<(String, AidantStep, Mandate, Organisation)>, AppError> {
    let Some((sid, step)) = aidant_session(ctx, cookies).await? else {
        return Ok(None);
    };
    let m = org_mandate(ctx, lang, &step, mid).await?;
    let org = ctx
        .app
        .store
        .organisation(&m.org_id)
        .await?
        .ok_or_else(|| not_found(ctx, lang))?;
    Ok(Some((sid, step, m, org)))
}

/// Revokes `domain` of the mandate `mid` (the whole mandate without one)
/// for `actor`; `by` names the actor in the log.
pub(super) async fn revoke(
    ctx: &Ctx,
    lang: Lang,
    mid: &str,
    form: &Params,
    actor: &crate::aidants::Actor,
    by: &str,
) -> Result<(), AppError> {
    let store = &ctx.app.store;
    let now = ctx.now();
    let result = match form.get("domain").filter(|d| !d.is_empty()) {
        Some(d) => store.revoke_domain(mid, d, actor, now).await,
        None => store.revoke_mandate(mid, actor, now).await,
    };
    match result {
        Ok(domains) => {
            tracing::info!(event = "mandate_revoked", federation = %ctx.fed.id, domains = %domains.join(","), "mandate revoked by {by}");
            Ok(())
        }
        Err(crate::aidants::MandateError::NotAllowed) => {
            Err(ctx.page_error(lang, StatusCode::FORBIDDEN, PageCode::MandateRefused, None))
        }
        Err(crate::aidants::MandateError::NotFound(_)) => Err(not_found(ctx, lang)),
        Err(e) => Err(e.into()),
    }
}

/// POST `/aidant/mandats/{mid}/revoquer`: revoke the whole mandate, or one
/// `domain`. Needs a fresh sign-in (else the TOTP code is asked again).
pub async fn revoke_submit(
    State(ctx): State<Ctx>,
    Segment(mid): Segment,
    cookies: Cookies,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let Some((form, _, step)) = fresh_post(&ctx, &cookies, lang, &body).await? else {
        return Ok(redirect(&home_url(&ctx)));
    };
    // Only mandates of the aidant's current organisation.
    org_mandate(&ctx, lang, &step, &mid).await?;
    let actor = crate::aidants::Actor::Aidant(step.aidant_id.clone());
    revoke(&ctx, lang, &mid, &form, &actor, "an aidant").await?;
    Ok(redirect(
        &ctx.fed.url(&format!("/aidant/mandats/{mid}/revocation")),
    ))
}

/// GET `/aidant/mandats/{mid}/revocation`: printable revocation attestation.
pub async fn revocation(
    State(ctx): State<Ctx>,
    Segment(mid): Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let Some((sid, step, m, org)) = attestation_target(&ctx, &cookies, lang, &mid).await? else {
        return Ok(redirect(&home_url(&ctx)));
    };
    let revoked: Vec<AuthView> = auth_views(&m, ctx.now())
        .into_iter()
        .filter(|a| a.revoked_at.is_some())
        .collect();
    if revoked.is_empty() {
        return Err(not_found(&ctx, lang));
    }
    journal_attestation_view(&ctx, &step, &m, "revocation").await?;
    ctx.page(
        lang,
        "aidant_revocation.html",
        minijinja::context! {
            mandate_id => m.id,
            organisation => org.name,
            siret => org.siret,
            usager => usager_name(&ctx, &m.usager_id).await?,
            revoked => revoked,
            hash => revocation_hash(&m, &org),
            home_url => home_url(&ctx),
            csrf => csrf_for(&sid),
            logout_action => ctx.fed.url("/aidant/logout"),
        },
    )
}

/// GET `/aidant/mandats/{mid}/attestation`: printable attestation, for an
/// aidant of the mandate's organisation.
pub async fn attestation(
    State(ctx): State<Ctx>,
    Segment(mid): Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let Some((sid, step, m, org)) = attestation_target(&ctx, &cookies, lang, &mid).await? else {
        return Ok(redirect(&home_url(&ctx)));
    };
    let name = usager_name(&ctx, &m.usager_id).await?;
    journal_attestation_view(&ctx, &step, &m, "mandate").await?;
    let auths = auth_views(&m, ctx.now());
    ctx.page(
        lang,
        "aidant_attestation.html",
        minijinja::context! {
            mandate_id => m.id,
            organisation => org.name,
            siret => org.siret,
            usager => name,
            created => super::interaction::date(m.created_at),
            consent_version => m.consent_version,
            consent_hash => m.consent_hash,
            authorisations => auths,
            hash => attestation_hash(&m, &org),
            home_url => home_url(&ctx),
            csrf => csrf_for(&sid),
            logout_action => ctx.fed.url("/aidant/logout"),
        },
    )
}
