//! Mandate creation by an aidant (flow 1 of the aidants issue): the aidant
//! signs in at `/aidant` (password + TOTP; only the TOTP code again when
//! their sign-in on this browser is older than 15 minutes), chooses domains
//! and a duration; the usager then signs in **themselves** through the
//! normal federation on the aidant's screen (an interaction marked with a
//! [`MandateDraft`]: its callback goes to the recap, never to a service);
//! the aidant confirms the recap with a TOTP code; Relais creates the
//! mandate, stores the usager's pivot claims and shows a printable
//! attestation.

use super::attestation::*;
use super::interaction::{AidantStep, SignInGuard};
use crate::aidants::rules::*;
use crate::aidants::{Mandate, Organisation};
use crate::app::Ctx;
use crate::crypto::{random_token, sha256_b64};
use crate::error::{redirect, AppError};
use crate::http::cookies::session_key;
use crate::http::cookies::set_cookie;
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::FormBody;
use crate::http::params::Params;
use crate::oidc::interaction::Interaction;
use crate::oidc::session::load_session;
use crate::oidc::session::NewSession;
use crate::oidc::session::SessionData;
use crate::store::Kind;
use crate::web::i18n::PageCode;
use crate::web::Lang;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};

/// The 404 page of the aidant and usager pages.
pub(super) fn not_found(ctx: &Ctx, lang: Lang) -> AppError {
    ctx.page_error(lang, StatusCode::NOT_FOUND, PageCode::NotFound, None)
}

/// The 403 page of a refused mandate step, with a link to `/aidant`.
pub(super) fn refused_home(ctx: &Ctx, lang: Lang) -> AppError {
    ctx.page_error(
        lang,
        StatusCode::FORBIDDEN,
        PageCode::MandateRefused,
        Some(home_url(ctx)),
    )
}

/// The browser's session id, or a new cookie value and its session id
/// (no row is written).
pub(super) fn session_or_new(ctx: &Ctx, cookies: &Cookies) -> (String, Option<String>) {
    match cookies.session_id(&ctx.fed) {
        Some(sid) => (sid, None),
        None => {
            let value = random_token(32);
            (session_key(&value), Some(value))
        }
    }
}

/// Stores a new interaction; its id.
pub(super) async fn put_interaction(ctx: &Ctx, inter: &Interaction) -> Result<String, AppError> {
    let id = random_token(24);
    ctx.put_interaction(&id, inter).await?;
    Ok(id)
}

/// The browser's session id and its aidant sign-in, if any.
pub(super) async fn aidant_session(
    ctx: &Ctx,
    cookies: &Cookies,
) -> Result<Option<(String, AidantStep)>, AppError> {
    let Some(sid) = cookies.session_id(&ctx.fed) else {
        return Ok(None);
    };
    Ok(load_session(ctx, &sid)
        .await?
        .and_then(|s| s.acting.get::<AidantStep>())
        .map(|a| (sid, a)))
}

pub(super) fn fresh(ctx: &Ctx, a: &AidantStep) -> bool {
    a.is_fresh(ctx.now())
}

/// Preamble of the aidant pages' POST handlers: the form, the browser's
/// session id and its fresh aidant sign-in (CSRF checked). None: no or no
/// longer fresh sign-in (redirect to `/aidant`).
pub(super) async fn fresh_post(
    ctx: &Ctx,
    cookies: &Cookies,
    lang: Lang,
    body: &str,
) -> Result<Option<(Params, String, AidantStep)>, AppError> {
    let form = Params::parse(body).unwrap_or_default();
    let Some((sid, step)) = aidant_session(ctx, cookies).await? else {
        return Ok(None);
    };
    check_page_csrf(ctx, lang, &sid, &form)?;
    Ok(fresh(ctx, &step).then_some((form, sid, step)))
}

/// Writes `step` as the aidant sign-in of the browser's session `sid`
/// (same expiry: the session was written at the sign-in).
pub(super) async fn store_aidant_step(
    ctx: &Ctx,
    sid: &str,
    step: &AidantStep,
) -> Result<(), AppError> {
    let mut data = load_session(ctx, sid).await?.unwrap_or_default();
    data.acting = crate::oidc::interaction::DomainStep::of(step)?;
    let fed = &ctx.fed;
    ctx.app
        .store
        .update(
            Kind::Session,
            sid,
            &fed.id,
            &serde_json::to_string(&data).map_err(AppError::internal)?,
            step.auth_time + fed.cfg.session_ttl_secs,
        )
        .await?;
    Ok(())
}

/// CSRF token of the aidant pages: bound to the (secret) session id.
pub(super) fn csrf_for(sid: &str) -> String {
    sha256_b64(format!("relais-aidant-csrf:{sid}").as_bytes())
}

pub(super) fn home_url(ctx: &Ctx) -> String {
    ctx.fed.url("/aidant")
}

/// The sign-in form (or only the TOTP code when `totp_only`); `sid` is the
/// browser's session id, to which the form's CSRF token is bound.
pub(super) fn sign_in_form(
    ctx: &Ctx,
    lang: Lang,
    sid: &str,
    totp_only: bool,
    error: bool,
) -> Result<Response, AppError> {
    let mut resp = ctx.page(
        lang,
        "aidant_signin.html",
        minijinja::context! {
            action => ctx.fed.url("/aidant/login"),
            csrf => csrf_for(sid),
            logout_action => ctx.fed.url("/aidant/logout"),
            totp_only => totp_only,
            error => error,
        },
    )?;
    if error {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
    }
    Ok(resp)
}

#[derive(Serialize)]
pub(super) struct DurationView {
    pub(super) days: i64,
    pub(super) label: &'static str,
}

/// GET `/aidant`: sign-in (or TOTP again), then the mandate creation form.
pub async fn home(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let Some((sid, step)) = aidant_session(&ctx, &cookies).await? else {
        // Login CSRF: the form's token is bound to the browser's cookie. A
        // browser without one gets a new cookie now (no row is written, as
        // at `/authorize`).
        let (sid, new_cookie) = session_or_new(&ctx, &cookies);
        let mut resp = sign_in_form(&ctx, lang, &sid, false, false)?;
        if let Some(value) = new_cookie {
            resp.headers_mut().insert(
                axum::http::header::SET_COOKIE,
                set_cookie(&ctx, &value, ctx.fed.cfg.session_ttl_secs),
            );
        }
        return Ok(resp);
    };
    if !fresh(&ctx, &step) {
        return sign_in_form(&ctx, lang, &sid, true, false);
    }
    let (step, org) = match ctx
        .app
        .store
        .organisation(&step.org_id)
        .await?
        .filter(|o| o.active)
    {
        Some(org) => (step, org),
        None => match switch_to_active(&ctx, &sid, &step).await? {
            Some(found) => found,
            None => {
                // No active organisation: say so, and offer the sign-out.
                let mut resp = ctx.page(
                    lang,
                    "aidant_no_org.html",
                    minijinja::context! {
                        logout_action => ctx.fed.url("/aidant/logout"),
                        csrf => csrf_for(&sid),
                    },
                )?;
                *resp.status_mut() = StatusCode::FORBIDDEN;
                return Ok(resp);
            }
        },
    };
    let now = ctx.now();
    let listed = ctx.app.store.list_mandates(&org.id).await?;
    let mut mandates = Vec::new();
    for m in &listed {
        let purged = ctx
            .app
            .store
            .usager_purged_at(&m.usager_id)
            .await?
            .is_some();
        mandates.push(MandateView {
            usager: usager_name(&ctx, &m.usager_id).await?,
            authorisations: auth_views(m, now),
            revocable: m.authorisations.iter().any(|a| a.is_active(now)),
            revoke_action: ctx.fed.url(&format!("/aidant/mandats/{}/revoquer", m.id)),
            attestation_url: ctx
                .fed
                .url(&format!("/aidant/mandats/{}/attestation", m.id)),
            revocation_url: ctx.fed.url(&format!("/aidant/mandats/{}/revocation", m.id)),
            revoked: m.authorisations.iter().any(|a| a.revoked_at.is_some()),
            renew_url: (renewable(m, now) && !purged && !superseded(m, &listed))
                .then(|| ctx.fed.url(&format!("/aidant/mandats/{}/renouveler", m.id))),
            id: m.id.clone(),
        });
    }
    let durations: Vec<DurationView> = DURATIONS
        .iter()
        .map(|(days, label)| DurationView { days: *days, label })
        .collect();
    let dashboard = referent_dashboard(&ctx, &step, &org.id, &listed, &mandates, now).await?;
    let organisations = memberships(&ctx, &step).await?;
    ctx.page(
        lang,
        "aidant_home.html",
        minijinja::context! {
            organisations => organisations,
            switch_action => ctx.fed.url("/aidant/organisation"),
            logout_action => ctx.fed.url("/aidant/logout"),
            dashboard => dashboard,
            action => ctx.fed.url("/aidant/mandats"),
            csrf => csrf_for(&sid),
            organisation => org.name,
            domains => org.allowed_domains(&ctx.app.aidant_domains),
            durations => durations,
            mandates => mandates,
        },
    )
}

/// The aidant's current organisation is inactive (deactivated since the
/// sign-in): make the first active one of their memberships the current
/// one (`switch_organisation`, journalled as `aidant.org_switched`) for this
/// browser's sign-in too. None when no membership is active.
pub(super) async fn switch_to_active(
    ctx: &Ctx,
    sid: &str,
    step: &AidantStep,
) -> Result<Option<(AidantStep, Organisation)>, AppError> {
    let store = &ctx.app.store;
    for (org_id, _) in store.aidant_memberships(&step.aidant_id).await? {
        let Some(org) = store.organisation(&org_id).await?.filter(|o| o.active) else {
            continue;
        };
        match store
            .switch_organisation(&step.aidant_id, &org.id, ctx.now())
            .await
        {
            Ok(()) => {}
            // Left the organisation or deactivated meanwhile: try the next.
            Err(crate::aidants::MandateError::NotAllowed)
            | Err(crate::aidants::MandateError::Invalid(_))
            | Err(crate::aidants::MandateError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        }
        let step = AidantStep {
            org_id: org.id.clone(),
            ..step.clone()
        };
        store_aidant_step(ctx, sid, &step).await?;
        tracing::info!(event = "aidant_org_switched", federation = %ctx.fed.id, automatic = true, "aidant's organisation inactive: switched to an active one");
        return Ok(Some((step, org)));
    }
    Ok(None)
}

#[derive(Serialize)]
pub(super) struct OrgChoice {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) current: bool,
}

/// The aidant's active organisations, when there is a choice (more than one).
pub(super) async fn memberships(ctx: &Ctx, step: &AidantStep) -> Result<Vec<OrgChoice>, AppError> {
    let store = &ctx.app.store;
    let mut orgs = Vec::new();
    for (org_id, _) in store.aidant_memberships(&step.aidant_id).await? {
        if let Some(o) = store.organisation(&org_id).await?.filter(|o| o.active) {
            orgs.push(OrgChoice {
                current: o.id == step.org_id,
                id: o.id,
                name: o.name,
            });
        }
    }
    if orgs.len() < 2 {
        orgs.clear();
    }
    Ok(orgs)
}

/// The form's `csrf` must be the token bound to the browser's session id.
pub(super) fn check_page_csrf(
    ctx: &Ctx,
    lang: Lang,
    sid: &str,
    form: &Params,
) -> Result<(), AppError> {
    let given = form.get("csrf").unwrap_or("");
    if crate::crypto::ct_eq(given.as_bytes(), csrf_for(sid).as_bytes()) {
        Ok(())
    } else {
        tracing::warn!(federation = %ctx.fed.id, page = "aidant", "CSRF token missing or wrong");
        Err(ctx.page_error(lang, StatusCode::FORBIDDEN, PageCode::Csrf, None))
    }
}

/// POST `/aidant/organisation`: `organisation` = id of another organisation
/// of the aidant, which becomes their current one (`switch_organisation`,
/// journalled as `aidant.org_switched`) for this sign-in and the next ones.
pub async fn switch_submit(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let Some((form, sid, step)) = fresh_post(&ctx, &cookies, lang, &body).await? else {
        return Ok(redirect(&home_url(&ctx)));
    };
    let refused = || refused_home(&ctx, lang);
    let store = &ctx.app.store;
    let org = store
        .organisation(form.get("organisation").unwrap_or(""))
        .await?
        .filter(|o| o.active)
        .ok_or_else(refused)?;
    match store
        .switch_organisation(&step.aidant_id, &org.id, ctx.now())
        .await
    {
        Ok(()) => {}
        Err(crate::aidants::MandateError::NotAllowed) => return Err(refused()),
        Err(e) => return Err(e.into()),
    }
    // The browser's sign-in now acts for that organisation (same sign-in
    // time, same expiry: the session was written at the sign-in).
    let step = AidantStep {
        org_id: org.id,
        ..step
    };
    store_aidant_step(&ctx, &sid, &step).await?;
    tracing::info!(event = "aidant_org_switched", federation = %ctx.fed.id, "aidant switched organisation");
    Ok(redirect(&home_url(&ctx)))
}

/// POST `/aidant/logout`: ends the browser's session (deleted server-side,
/// the access tokens issued under it revoked, cookie cleared).
pub async fn logout_submit(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let form = Params::parse(&body).unwrap_or_default();
    let fed = &ctx.fed;
    let Some(sid) = cookies.session_id(fed) else {
        return Ok(redirect(&home_url(&ctx)));
    };
    check_page_csrf(&ctx, lang, &sid, &form)?;
    let store = &ctx.app.store;
    store.delete(Kind::Session, &sid, &fed.id).await?;
    let revoked = store.revoke_session_tokens(&fed.id, &sid).await?;
    tracing::info!(event = "aidant_signed_out", federation = %fed.id, tokens_revoked = revoked, "aidant signed out");
    let mut resp = redirect(&home_url(&ctx));
    resp.headers_mut()
        .insert(axum::http::header::SET_COOKIE, set_cookie(&ctx, "", 0));
    Ok(resp)
}

/// Journal an aidant's action `kind` on the mandate `m`.
pub(super) async fn journal_aidant(
    ctx: &Ctx,
    step: &AidantStep,
    m: &Mandate,
    kind: &str,
    data: Value,
    now: i64,
) -> Result<(), AppError> {
    let actor = crate::aidants::Actor::Aidant(step.aidant_id.clone()).name();
    ctx.app
        .store
        .journal_append(
            crate::aidants::journal::Event {
                kind,
                actor: &actor,
                org_id: Some(&m.org_id),
                data,
                personal: vec![],
            }
            .prepare(None, now),
        )
        .await?;
    Ok(())
}

/// Journal that an aidant displayed an attestation (`kind` is `mandate`
/// or `revocation`).
pub(super) async fn journal_attestation_view(
    ctx: &Ctx,
    step: &AidantStep,
    m: &Mandate,
    kind: &str,
) -> Result<(), AppError> {
    let data = json!({"mandate_id": m.id, "attestation": kind});
    journal_aidant(ctx, step, m, "mandate.attestation_viewed", data, ctx.now()).await
}

/// Outcome of the aidant's confirmation of a recap.
pub(super) enum Confirmation {
    Confirmed,
    /// Not informed, or a wrong code: the recap again, with an error.
    Retry,
    /// Too many failed attempts (the 429 page).
    Throttled(Response),
}

/// The aidant's confirmation of a recap: `informed=yes` and a right TOTP
/// code of `aidant_id` (for `purpose`), throttled by `guard`.
pub(super) async fn confirm(
    ctx: &Ctx,
    guard: &SignInGuard,
    lang: Lang,
    form: &Params,
    aidant_id: &str,
    purpose: &str,
) -> Result<Confirmation, AppError> {
    if form.get("informed") != Some("yes") {
        return Ok(Confirmation::Retry);
    }
    if let Some(resp) = guard.refuse(ctx, lang).await? {
        return Ok(Confirmation::Throttled(resp));
    }
    match ctx
        .app
        .store
        .verify_totp(
            aidant_id,
            form.get("totp").unwrap_or("").trim(),
            purpose,
            &ctx.app.totp_key,
            ctx.now(),
        )
        .await
    {
        Ok(_) => Ok(Confirmation::Confirmed),
        Err(crate::aidants::LoginError::Refused) => {
            guard.failed(ctx).await?;
            Ok(Confirmation::Retry)
        }
        Err(e) => Err(e.into()),
    }
}

/// Window for "mandates expiring soon" on the référent dashboard.
pub const EXPIRING_WITHIN_SECS: i64 = 30 * 86_400;
/// Recent uses shown on the référent dashboard.
pub(super) const RECENT_USES: i64 = 20;

#[derive(Serialize)]
pub(super) struct ExpiringView {
    pub(super) mandate_id: String,
    pub(super) usager: String,
    pub(super) domain: String,
    pub(super) expires: String,
}

#[derive(Serialize)]
pub(super) struct UseView {
    pub(super) at: String,
    pub(super) mandate_id: String,
    pub(super) client: String,
    pub(super) domain: String,
}

#[derive(Serialize)]
pub(super) struct DashboardView {
    pub(super) aidants: Vec<(String, &'static str)>,
    pub(super) expiring: Vec<ExpiringView>,
    pub(super) uses: Vec<UseView>,
}

/// The référent's dashboard (None for a plain aidant): the organisation's
/// aidants, active domains expiring within 30 days, recent uses (journal).
pub(super) async fn referent_dashboard(
    ctx: &Ctx,
    step: &AidantStep,
    org_id: &str,
    listed: &[Mandate],
    mandates: &[MandateView],
    now: i64,
) -> Result<Option<DashboardView>, AppError> {
    let store = &ctx.app.store;
    let aidants = store.org_aidants(org_id).await?;
    let referent = aidants
        .iter()
        .any(|a| a.aidant_id == step.aidant_id && matches!(a.role, crate::aidants::Role::Referent));
    if !referent {
        return Ok(None);
    }
    let mut expiring = Vec::new();
    for m in listed {
        let usager = mandates
            .iter()
            .find(|v| v.id == m.id)
            .map(|v| v.usager.clone())
            .unwrap_or_default();
        for a in &m.authorisations {
            if a.is_active(now) && a.expires_at - now <= EXPIRING_WITHIN_SECS {
                expiring.push(ExpiringView {
                    mandate_id: m.id.clone(),
                    usager: usager.clone(),
                    domain: a.domain.clone(),
                    expires: super::interaction::date(a.expires_at),
                });
            }
        }
    }
    let uses = store
        .mandate_uses(org_id, RECENT_USES)
        .await?
        .into_iter()
        .map(|u| UseView {
            at: crate::aidants::cli::utc(u.at),
            mandate_id: u.mandate_id,
            client: ctx
                .client(&u.client)
                .map(|c| c.cfg.name.clone())
                .unwrap_or(u.client),
            domain: u.domain,
        })
        .collect();
    Ok(Some(DashboardView {
        aidants: aidants
            .into_iter()
            .map(|a| (a.email, a.role.as_str()))
            .collect(),
        expiring,
        uses,
    }))
}

/// POST `/aidant/login`: e-mail, password and code; or only the code when
/// this browser holds the aidant's (no longer fresh) sign-in.
pub async fn login_submit(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
    guard: SignInGuard,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let form = Params::parse(&body).unwrap_or_default();
    // Login CSRF: the token of the form shown to this browser (bound to its
    // cookie), checked before anything is counted.
    let Some(sid) = cookies.session_id(&ctx.fed) else {
        tracing::warn!(federation = %ctx.fed.id, page = "aidant", "sign-in without a cookie");
        return Err(ctx.page_error(lang, StatusCode::FORBIDDEN, PageCode::Csrf, None));
    };
    check_page_csrf(&ctx, lang, &sid, &form)?;
    if let Some(resp) = guard.refuse(&ctx, lang).await? {
        return Ok(resp);
    }
    let now = ctx.now();
    let store = &ctx.app.store;
    let code = form.get("totp").unwrap_or("").trim();
    let existing = aidant_session(&ctx, &cookies).await?;
    let email = form.get("email").unwrap_or("");
    let (login, totp_only) = match (&existing, email.is_empty()) {
        (Some((_, step)), true) => (
            store
                .verify_totp(
                    &step.aidant_id,
                    code,
                    "renewed_authentication",
                    &ctx.app.totp_key,
                    now,
                )
                .await,
            true,
        ),
        _ => (
            store
                .verify_password_and_totp(
                    email,
                    form.get("password").unwrap_or(""),
                    code,
                    &ctx.app.totp_key,
                    now,
                )
                .await,
            false,
        ),
    };
    let login = match login {
        Ok(l) => l,
        Err(crate::aidants::LoginError::Refused) => {
            tracing::info!(event = "aidant_sign_in", federation = %ctx.fed.id, ok = false, page = "mandates", "aidant sign-in refused");
            guard.failed(&ctx).await?;
            return sign_in_form(&ctx, lang, &sid, totp_only, true);
        }
        Err(e) => return Err(e.into()),
    };
    let Some(org_id) = login.current_org else {
        return Err(ctx.page_error(lang, StatusCode::FORBIDDEN, PageCode::MandateRefused, None));
    };
    // A new session (new id after authentication), replacing any other.
    let step = AidantStep {
        aidant_id: login.aidant_id,
        org_id,
        auth_time: now,
    };
    let data = SessionData {
        authn: None,
        acting: crate::oidc::interaction::DomainStep::of(&step)?,
    };
    NewSession::new()
        .begin(&ctx, &data, Some(&sid), now, redirect(&home_url(&ctx)))
        .await
}
