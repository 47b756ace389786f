//! Renewing an expired mandate without the usager (only when
//! [`crate::aidants::rules::renewal_rule`] allows it):
//! `/aidant/mandats/{mid}/renouveler`.

use super::attestation::*;
use super::interaction::{AidantStep, SignInGuard};
use super::space::*;
use crate::aidants::rules::*;
use crate::aidants::{journal::sha256_hex, Mandate, NewMandate, Organisation};
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
use serde_json::json;

/// The aidant's fresh session and the renewable mandate of their current
/// organisation; None when the sign-in must be (re)done first.
pub(super) async fn renewal_target(
    ctx: &Ctx,
    cookies: &Cookies,
    lang: Lang,
    mid: &str,
) -> Result<Option<(String, AidantStep, Mandate, Organisation)>, AppError> {
    let Some((sid, step)) = aidant_session(ctx, cookies).await? else {
        return Ok(None);
    };
    if !fresh(ctx, &step) {
        return Ok(None);
    }
    let store = &ctx.app.store;
    let not_found = || not_found(ctx, lang);
    let m = store
        .mandate(mid)
        .await?
        .filter(|m| m.org_id == step.org_id)
        .ok_or_else(not_found)?;
    // Renewed once already (or followed by any later mandate for the same
    // usager here): that later mandate, and what became of it (a
    // revocation), decides; the old one is never renewed again.
    let rule = if superseded(&m, &store.list_mandates(&m.org_id).await?) {
        Err(NotRenewable::Superseded)
    } else {
        renewal_rule(&m, ctx.now())
    };
    match rule {
        Ok(()) => {}
        Err(reason @ (NotRenewable::Revoked | NotRenewable::Superseded)) => {
            let reason = if reason == NotRenewable::Revoked {
                "revoked"
            } else {
                "superseded"
            };
            // Journalled: an attempt to act again for someone who (or for
            // whom an administrator) withdrew the mandate.
            journal_aidant(
                ctx,
                &step,
                &m,
                "mandate.renewal_refused",
                json!({"mandate_id": m.id, "reason": reason}),
                ctx.now(),
            )
            .await?;
            tracing::warn!(event = "mandate_renewal_refused", federation = %ctx.fed.id, reason, "renewal of a revoked or superseded mandate refused");
            return Err(not_found());
        }
        Err(_) => return Err(not_found()),
    }
    // A purged usager cannot be renewed for (nothing names the person).
    if store.usager_purged_at(&m.usager_id).await?.is_some() {
        return Err(not_found());
    }
    let org = store
        .organisation(&m.org_id)
        .await?
        .filter(|o| o.active)
        .ok_or_else(|| {
            ctx.page_error(lang, StatusCode::FORBIDDEN, PageCode::MandateRefused, None)
        })?;
    Ok(Some((sid, step, m, org)))
}

pub(super) async fn renewal_recap(
    ctx: &Ctx,
    sid: &str,
    m: &Mandate,
    org: &Organisation,
    lang: Lang,
    error: bool,
) -> Result<Response, AppError> {
    let recap = super::mandate::Recap {
        renew: true,
        action: ctx.fed.url(&format!("/aidant/mandats/{}/renouveler", m.id)),
        csrf: csrf_for(sid),
        usager: usager_name(ctx, &m.usager_id).await?,
        birthdate: String::new(),
        org,
        domains: m.authorisations.iter().map(|a| a.domain.clone()).collect(),
        days: original_duration(m),
    };
    recap.render(ctx, lang, ctx.now(), error)
}

/// GET `/aidant/mandats/{mid}/renouveler`: the recap of the renewal (same
/// usager, organisation and domains; the original duration).
pub async fn renew_page(
    State(ctx): State<Ctx>,
    Segment(mid): Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let Some((sid, _, m, org)) = renewal_target(&ctx, &cookies, lang, &mid).await? else {
        return Ok(redirect(&home_url(&ctx)));
    };
    renewal_recap(&ctx, &sid, &m, &org, lang, false).await
}

/// POST `/aidant/mandats/{mid}/renouveler`: the aidant confirms with a TOTP
/// code that the usager was informed and agreed; a new mandate is created
/// and the renewal journalled (`mandate.renewed`).
pub async fn renew_submit(
    State(ctx): State<Ctx>,
    Segment(mid): Segment,
    cookies: Cookies,
    headers: HeaderMap,
    guard: SignInGuard,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let form = Params::parse(&body).unwrap_or_default();
    let Some((sid, step, m, org)) = renewal_target(&ctx, &cookies, lang, &mid).await? else {
        return Ok(redirect(&home_url(&ctx)));
    };
    check_page_csrf(&ctx, lang, &sid, &form)?;
    match confirm(
        &ctx,
        &guard,
        lang,
        &form,
        &step.aidant_id,
        "mandate_renewal",
    )
    .await?
    {
        Confirmation::Confirmed => {}
        Confirmation::Retry => return renewal_recap(&ctx, &sid, &m, &org, lang, true).await,
        Confirmation::Throttled(resp) => return Ok(resp),
    }
    let store = &ctx.app.store;
    let now = ctx.now();
    let refused = |e: crate::aidants::MandateError| {
        tracing::warn!(event = "mandate_renewal_refused", error = ?e, "mandate renewal refused");
        refused_home(&ctx, lang)
    };
    let domains: Vec<&str> = m.authorisations.iter().map(|a| a.domain.as_str()).collect();
    let renewed = store
        .create_mandate(
            &NewMandate {
                org_id: &m.org_id,
                usager_id: &m.usager_id,
                aidant_id: &step.aidant_id,
                domains: &domains,
                duration_days: original_duration(&m),
                consent_version: CONSENT_VERSION,
                consent_hash: &sha256_hex(CONSENT_TEXT.as_bytes()),
            },
            &ctx.app.aidant_domains,
            now,
        )
        .await
        .map_err(refused)?;
    journal_aidant(
        &ctx,
        &step,
        &m,
        "mandate.renewed",
        json!({"mandate_id": m.id, "renewed_as": renewed.id}),
        now,
    )
    .await?;
    tracing::info!(event = "mandate_renewed", federation = %ctx.fed.id, "mandate renewed");
    Ok(redirect(&ctx.fed.url(&format!(
        "/aidant/mandats/{}/attestation",
        renewed.id
    ))))
}
