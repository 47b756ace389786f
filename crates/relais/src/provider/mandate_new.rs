//! Mandate creation by an aidant (flow 1 of the aidants issue): the aidant
//! signs in at `/aidant` (password + TOTP; only the TOTP code again when
//! their sign-in on this browser is older than 15 minutes), chooses domains
//! and a duration; the usager then signs in **themselves** through the
//! normal federation on the aidant's screen (an interaction marked with a
//! [`MandateDraft`]: its callback goes to the recap, never to a service);
//! the aidant confirms the recap with a TOTP code; Relais creates the
//! mandate, stores the usager's pivot claims and shows a printable
//! attestation.

use super::aidant::{AidantStep, SignInGuard};
use super::authorize::{check_csrf, load_interaction, AuthRequest, Interaction};
use super::{lang_from, load_session, session_key, set_cookie, Cookies, Ctx, Params};
use super::{FormBody, NewSession, Segment, SessionData};
use crate::config::Profile;
use crate::crypto::{random_token, sha256_b64};
use crate::error::{redirect, AppError};
use crate::identity::PivotIdentity;
use crate::mandates::{journal::sha256_hex, Mandate, NewMandate, Organisation, Salt};
use crate::store::Kind;
use crate::web::Lang;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Version of the consent text shown on the recap.
pub const CONSENT_VERSION: &str = "relais-mandat-v1";
/// The consent text the usager is informed of (its SHA-256 is stored).
pub const CONSENT_TEXT: &str =
    "J'autorise la structure nommée ci-dessus, par ses aidants professionnels, \
à réaliser en mon nom les démarches en ligne des domaines listés, jusqu'à la date de fin indiquée. \
Je peux révoquer ce mandat à tout moment. Chaque utilisation est enregistrée dans un journal. \
(I authorise the organisation named above, through its professional helpers, to carry out on my \
behalf the online procedures of the listed domains until the end date. I can revoke this mandate \
at any time. Every use is recorded in a journal.)";

/// Durations offered: (days, label).
pub const DURATIONS: [(i64, &str); 4] = [
    (1, "1 jour (1 day)"),
    (30, "1 mois (1 month)"),
    (182, "6 mois (6 months)"),
    (365, "12 mois (12 months)"),
];

/// What the aidant chose before the usager's sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MandateDraft {
    pub aidant_id: String,
    pub org_id: String,
    pub domains: Vec<String>,
    pub duration_days: i64,
}

/// SHA-256 (hex) of the canonical mandate record printed on the
/// attestation: id, organisation, usager id, creating aidant, consent
/// version and hash, creation time and each domain with its dates.
pub fn attestation_hash(m: &Mandate, org: &Organisation) -> String {
    let auths: Vec<Value> = m
        .authorisations
        .iter()
        .map(|a| json!([a.domain, a.starts_at, a.expires_at]))
        .collect();
    let record = json!([
        "relais-mandate-attestation-v1",
        m.id,
        org.siret,
        org.name,
        m.usager_id,
        m.created_by,
        m.consent_version,
        m.consent_hash,
        m.created_at,
        auths
    ]);
    sha256_hex(record.to_string().as_bytes())
}

/// The 404 page of the aidant and usager pages.
pub(super) fn not_found(ctx: &Ctx, lang: Lang) -> AppError {
    ctx.page_error(lang, StatusCode::NOT_FOUND, "not_found", None)
}

/// The 403 page of a refused mandate step, with a link to `/aidant`.
fn refused_home(ctx: &Ctx, lang: Lang) -> AppError {
    ctx.page_error(
        lang,
        StatusCode::FORBIDDEN,
        "mandate_refused",
        Some(home_url(ctx)),
    )
}

/// The aidant and usager pages exist only in the citizen profile.
pub(super) fn citizen_only(ctx: &Ctx, lang: Lang) -> Result<(), AppError> {
    if ctx.fed.cfg.profile == Profile::Citizen {
        Ok(())
    } else {
        Err(not_found(ctx, lang))
    }
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
    let data = serde_json::to_string(inter).map_err(AppError::internal)?;
    ctx.app
        .store
        .put(
            Kind::Interaction,
            &id,
            &ctx.fed.id,
            &data,
            ctx.now() + ctx.fed.cfg.interaction_ttl_secs,
        )
        .await?;
    Ok(id)
}

/// The browser's session id and its aidant sign-in, if any.
async fn aidant_session(
    ctx: &Ctx,
    cookies: &Cookies,
) -> Result<Option<(String, AidantStep)>, AppError> {
    let Some(sid) = cookies.session_id(&ctx.fed) else {
        return Ok(None);
    };
    Ok(load_session(ctx, &sid)
        .await?
        .and_then(|s| s.aidant)
        .map(|a| (sid, a)))
}

fn fresh(ctx: &Ctx, a: &AidantStep) -> bool {
    a.is_fresh(ctx.now())
}

/// Preamble of the aidant pages' POST handlers: the form, the browser's
/// session id and its fresh aidant sign-in (CSRF checked). None: no or no
/// longer fresh sign-in (redirect to `/aidant`).
async fn fresh_post(
    ctx: &Ctx,
    cookies: &Cookies,
    lang: Lang,
    body: &str,
) -> Result<Option<(Params, String, AidantStep)>, AppError> {
    citizen_only(ctx, lang)?;
    let form = Params::parse(body).unwrap_or_default();
    let Some((sid, step)) = aidant_session(ctx, cookies).await? else {
        return Ok(None);
    };
    check_page_csrf(ctx, lang, &sid, &form)?;
    Ok(fresh(ctx, &step).then_some((form, sid, step)))
}

/// Writes `step` as the aidant sign-in of the browser's session `sid`
/// (same expiry: the session was written at the sign-in).
async fn store_aidant_step(ctx: &Ctx, sid: &str, step: &AidantStep) -> Result<(), AppError> {
    let mut data = load_session(ctx, sid).await?.unwrap_or_default();
    data.aidant = Some(step.clone());
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
fn csrf_for(sid: &str) -> String {
    sha256_b64(format!("relais-aidant-csrf:{sid}").as_bytes())
}

fn home_url(ctx: &Ctx) -> String {
    ctx.fed.url("/aidant")
}

/// The sign-in form (or only the TOTP code when `totp_only`); `sid` is the
/// browser's session id, to which the form's CSRF token is bound.
fn sign_in_form(
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
struct DurationView {
    days: i64,
    label: &'static str,
}

/// GET `/aidant`: sign-in (or TOTP again), then the mandate creation form.
pub async fn home(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    citizen_only(&ctx, lang)?;
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
async fn switch_to_active(
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
            Err(crate::mandates::MandateError::NotAllowed)
            | Err(crate::mandates::MandateError::Invalid(_))
            | Err(crate::mandates::MandateError::NotFound(_)) => continue,
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
struct OrgChoice {
    id: String,
    name: String,
    current: bool,
}

/// The aidant's active organisations, when there is a choice (more than one).
async fn memberships(ctx: &Ctx, step: &AidantStep) -> Result<Vec<OrgChoice>, AppError> {
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
fn check_page_csrf(ctx: &Ctx, lang: Lang, sid: &str, form: &Params) -> Result<(), AppError> {
    let given = form.get("csrf").unwrap_or("");
    if crate::crypto::ct_eq(given.as_bytes(), csrf_for(sid).as_bytes()) {
        Ok(())
    } else {
        tracing::warn!(federation = %ctx.fed.id, page = "aidant", "CSRF token missing or wrong");
        Err(ctx.page_error(lang, StatusCode::FORBIDDEN, "csrf", None))
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
        Err(crate::mandates::MandateError::NotAllowed) => return Err(refused()),
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
    citizen_only(&ctx, lang)?;
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
async fn journal_aidant(
    ctx: &Ctx,
    step: &AidantStep,
    m: &Mandate,
    kind: &str,
    data: Value,
    now: i64,
) -> Result<(), AppError> {
    let actor = crate::mandates::Actor::Aidant(step.aidant_id.clone()).name();
    ctx.app
        .store
        .journal_append(
            crate::mandates::journal::Event {
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
async fn journal_attestation_view(
    ctx: &Ctx,
    step: &AidantStep,
    m: &Mandate,
    kind: &str,
) -> Result<(), AppError> {
    let data = json!({"mandate_id": m.id, "attestation": kind});
    journal_aidant(ctx, step, m, "mandate.attestation_viewed", data, ctx.now()).await
}

/// Outcome of the aidant's confirmation of a recap.
enum Confirmation {
    Confirmed,
    /// Not informed, or a wrong code: the recap again, with an error.
    Retry,
    /// Too many failed attempts (the 429 page).
    Throttled(Response),
}

/// The aidant's confirmation of a recap: `informed=yes` and a right TOTP
/// code of `aidant_id` (for `purpose`), throttled by `guard`.
async fn confirm(
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
        Err(crate::mandates::LoginError::Refused) => {
            guard.failed(ctx).await?;
            Ok(Confirmation::Retry)
        }
        Err(e) => Err(e.into()),
    }
}

/// Window for "mandates expiring soon" on the référent dashboard.
pub const EXPIRING_WITHIN_SECS: i64 = 30 * 86_400;
/// Recent uses shown on the référent dashboard.
const RECENT_USES: i64 = 20;

#[derive(Serialize)]
struct ExpiringView {
    mandate_id: String,
    usager: String,
    domain: String,
    expires: String,
}

#[derive(Serialize)]
struct UseView {
    at: String,
    mandate_id: String,
    client: String,
    domain: String,
}

#[derive(Serialize)]
struct DashboardView {
    aidants: Vec<(String, &'static str)>,
    expiring: Vec<ExpiringView>,
    uses: Vec<UseView>,
}

/// The référent's dashboard (None for a plain aidant): the organisation's
/// aidants, active domains expiring within 30 days, recent uses (journal).
async fn referent_dashboard(
    ctx: &Ctx,
    step: &AidantStep,
    org_id: &str,
    listed: &[Mandate],
    mandates: &[MandateView],
    now: i64,
) -> Result<Option<DashboardView>, AppError> {
    let store = &ctx.app.store;
    let aidants = store.org_aidants(org_id).await?;
    let referent = aidants.iter().any(|(id, _, role)| {
        *id == step.aidant_id && matches!(role, crate::mandates::Role::Referent)
    });
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
                    expires: super::aidant::date(a.expires_at),
                });
            }
        }
    }
    let uses = store
        .mandate_uses(org_id, RECENT_USES)
        .await?
        .into_iter()
        .map(|(at, mandate_id, client, domain)| UseView {
            at: crate::mandates::cli::utc(at),
            mandate_id,
            client: ctx
                .client(&client)
                .map(|c| c.cfg.name.clone())
                .unwrap_or(client),
            domain,
        })
        .collect();
    Ok(Some(DashboardView {
        aidants: aidants
            .into_iter()
            .map(|(_, email, role)| (email, role.as_str()))
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
    citizen_only(&ctx, lang)?;
    let form = Params::parse(&body).unwrap_or_default();
    // Login CSRF: the token of the form shown to this browser (bound to its
    // cookie), checked before anything is counted.
    let Some(sid) = cookies.session_id(&ctx.fed) else {
        tracing::warn!(federation = %ctx.fed.id, page = "aidant", "sign-in without a cookie");
        return Err(ctx.page_error(lang, StatusCode::FORBIDDEN, "csrf", None));
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
        Err(crate::mandates::LoginError::Refused) => {
            tracing::info!(event = "aidant_sign_in", federation = %ctx.fed.id, ok = false, page = "mandates", "aidant sign-in refused");
            guard.failed(&ctx).await?;
            return sign_in_form(&ctx, lang, &sid, totp_only, true);
        }
        Err(e) => return Err(e.into()),
    };
    let Some(org_id) = login.current_org else {
        return Err(ctx.page_error(lang, StatusCode::FORBIDDEN, "mandate_refused", None));
    };
    // A new session (new id after authentication), replacing any other.
    let step = AidantStep {
        aidant_id: login.aidant_id,
        org_id,
        auth_time: now,
    };
    let data = SessionData {
        authn: None,
        aidant: Some(step),
    };
    NewSession::new()
        .begin(&ctx, &data, Some(&sid), now, redirect(&home_url(&ctx)))
        .await
}

/// POST `/aidant/mandats`: domains (`domain_<name>`) and `duration` (days);
/// starts the usager's own sign-in.
pub async fn draft_submit(
    State(ctx): State<Ctx>,
    cookies: Cookies,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let Some((form, sid, step)) = fresh_post(&ctx, &cookies, lang, &body).await? else {
        return Ok(redirect(&home_url(&ctx)));
    };
    let bad = || {
        ctx.page_error(
            lang,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(home_url(&ctx)),
        )
    };
    let org = ctx
        .app
        .store
        .organisation(&step.org_id)
        .await?
        .filter(|o| o.active)
        .ok_or_else(|| ctx.page_error(lang, StatusCode::FORBIDDEN, "mandate_refused", None))?;
    let domains: Vec<String> = org
        .allowed_domains(&ctx.app.aidant_domains)
        .into_iter()
        .filter(|d| form.get(&format!("domain_{d}")).is_some())
        .collect();
    let duration_days = form
        .get("duration")
        .and_then(|d| d.parse::<i64>().ok())
        .filter(|d| DURATIONS.iter().any(|(days, _)| days == d))
        .ok_or_else(bad)?;
    if domains.is_empty() {
        return Err(bad());
    }
    let req = AuthRequest::own_sign_in(home_url(&ctx), lang);
    let inter = Interaction {
        req,
        session: sid,
        had_session: true,
        csrf: random_token(24),
        provider: None,
        pending: None,
        state_hash: None,
        authn: None,
        candidates: None,
        aidant: None,
        mandate_draft: Some(MandateDraft {
            aidant_id: step.aidant_id,
            org_id: step.org_id,
            domains,
            duration_days,
        }),
        usager_consultation: false,
    };
    let id = put_interaction(&ctx, &inter).await?;
    Ok(redirect(&ctx.fed.url(&format!("/interaction/{id}"))))
}

/// The draft and the usager's own sign-in; without the latter there is no
/// recap.
fn draft_and_usager(
    ctx: &Ctx,
    inter: &Interaction,
) -> Result<(MandateDraft, super::Authn), AppError> {
    let expired = || {
        ctx.page_error(
            inter.req.lang,
            StatusCode::BAD_REQUEST,
            "interaction_expired",
            Some(home_url(ctx)),
        )
    };
    let draft = inter.mandate_draft.clone().ok_or_else(expired)?;
    let authn = inter.authn.clone().ok_or_else(expired)?;
    Ok((draft, authn))
}

fn end_date(now: i64, days: i64) -> String {
    super::aidant::date(now + days * 86_400)
}

async fn recap(
    ctx: &Ctx,
    id: &str,
    inter: &Interaction,
    error: bool,
) -> Result<Response, AppError> {
    let (draft, authn) = draft_and_usager(ctx, inter)?;
    let org = ctx
        .app
        .store
        .organisation(&draft.org_id)
        .await?
        .ok_or_else(|| AppError::internal("organisation vanished"))?;
    let now = ctx.now();
    let mut resp = ctx.page(
        inter.req.lang,
        "aidant_recap.html",
        minijinja::context! {
            action => ctx.fed.url(&format!("/interaction/{id}/mandat")),
            csrf => inter.csrf,
            usager => authn.display_name,
            birthdate => authn.claims.get("birthdate").and_then(Value::as_str).unwrap_or(""),
            organisation => org.name,
            siret => org.siret,
            domains => draft.domains,
            starts => super::aidant::date(now),
            ends => end_date(now, draft.duration_days),
            consent_version => CONSENT_VERSION,
            consent_text => CONSENT_TEXT,
            error => error,
            back_url => home_url(ctx),
        },
    )?;
    if error {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
    }
    Ok(resp)
}

/// GET `/interaction/{id}/mandat`: the recap, after the usager's sign-in.
pub async fn recap_page(
    State(ctx): State<Ctx>,
    Segment(id): Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    recap(&ctx, &id, &inter, false).await
}

/// POST `/interaction/{id}/mandat`: the aidant confirms with a TOTP code
/// that the usager was informed and agreed; the mandate is created.
pub async fn recap_submit(
    State(ctx): State<Ctx>,
    Segment(id): Segment,
    cookies: Cookies,
    headers: HeaderMap,
    guard: SignInGuard,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let form = Params::parse(&body).unwrap_or_default();
    check_csrf(&ctx, &inter, &form)?;
    let (draft, authn) = draft_and_usager(&ctx, &inter)?;
    let lang = inter.req.lang;
    match confirm(
        &ctx,
        &guard,
        lang,
        &form,
        &draft.aidant_id,
        "mandate_creation",
    )
    .await?
    {
        Confirmation::Confirmed => {}
        Confirmation::Retry => return recap(&ctx, &id, &inter, true).await,
        Confirmation::Throttled(resp) => return Ok(resp),
    }
    let store = &ctx.app.store;
    let now = ctx.now();
    // Single use of the interaction.
    if store
        .take(Kind::Interaction, &id, &ctx.fed.id, now)
        .await?
        .is_none()
    {
        return Err(ctx.page_error(lang, StatusCode::BAD_REQUEST, "interaction_expired", None));
    }
    let identity = PivotIdentity::from_claims(&authn.claims).map_err(AppError::internal)?;
    let salt = Salt::load_or_create(&ctx.app.journal_salt_path).map_err(AppError::internal)?;
    let refused = |e: crate::mandates::MandateError| {
        tracing::warn!(event = "mandate_creation_refused", error = ?e, "mandate creation refused");
        refused_home(&ctx, lang)
    };
    let usager_id = store
        .upsert_usager(&identity.identity_key(), &salt, now)
        .await
        .map_err(refused)?;
    store
        .set_usager_claims(&usager_id, &Value::Object(identity.to_claims()).to_string())
        .await?;
    let domains: Vec<&str> = draft.domains.iter().map(String::as_str).collect();
    let mandate = store
        .create_mandate(
            &NewMandate {
                org_id: &draft.org_id,
                usager_id: &usager_id,
                aidant_id: &draft.aidant_id,
                domains: &domains,
                duration_days: draft.duration_days,
                consent_version: CONSENT_VERSION,
                consent_hash: &sha256_hex(CONSENT_TEXT.as_bytes()),
            },
            &ctx.app.aidant_domains,
            now,
        )
        .await
        .map_err(refused)?;
    tracing::info!(event = "mandate_created", federation = %ctx.fed.id, "mandate created");
    Ok(redirect(&ctx.fed.url(&format!(
        "/aidant/mandats/{}/attestation",
        mandate.id
    ))))
}

#[derive(Serialize)]
pub(super) struct AuthView {
    domain: String,
    starts: String,
    expires: String,
    status: &'static str,
    active: bool,
    revoked_at: Option<String>,
    revoked_by: Option<String>,
}

#[derive(Serialize)]
struct MandateView {
    id: String,
    usager: String,
    authorisations: Vec<AuthView>,
    revocable: bool,
    revoked: bool,
    revoke_action: String,
    renew_url: Option<String>,
    attestation_url: String,
    revocation_url: String,
}

pub(super) fn auth_views(m: &Mandate, now: i64) -> Vec<AuthView> {
    m.authorisations
        .iter()
        .map(|a| AuthView {
            domain: a.domain.clone(),
            starts: super::aidant::date(a.starts_at),
            expires: super::aidant::date(a.expires_at),
            status: a.status(now),
            active: a.is_active(now),
            revoked_at: a.revoked_at.map(crate::mandates::cli::utc),
            revoked_by: a.revoked_by.clone(),
        })
        .collect()
}

/// "Given FAMILY" from the usager's stored claims (empty if unknown).
async fn usager_name(ctx: &Ctx, usager_id: &str) -> Result<String, AppError> {
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
async fn org_mandate(
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
async fn attestation_target(
    ctx: &Ctx,
    cookies: &Cookies,
    lang: Lang,
    mid: &str,
) -> Result<Option<(String, AidantStep, Mandate, Organisation)>, AppError> {
    citizen_only(ctx, lang)?;
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
    actor: &crate::mandates::Actor,
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
        Err(crate::mandates::MandateError::NotAllowed) => {
            Err(ctx.page_error(lang, StatusCode::FORBIDDEN, "mandate_refused", None))
        }
        Err(crate::mandates::MandateError::NotFound(_)) => Err(not_found(ctx, lang)),
        Err(e) => Err(e.into()),
    }
}

/// SHA-256 (hex) of the canonical revocation record: the mandate id and,
/// for each revoked domain, its revocation time and author.
pub fn revocation_hash(m: &Mandate, org: &Organisation) -> String {
    let revoked: Vec<Value> = m
        .authorisations
        .iter()
        .filter_map(|a| {
            a.revoked_at
                .map(|at| json!([a.domain, a.starts_at, a.expires_at, at, a.revoked_by]))
        })
        .collect();
    let record = json!([
        "relais-mandate-revocation-v1",
        m.id,
        org.siret,
        m.usager_id,
        revoked
    ]);
    sha256_hex(record.to_string().as_bytes())
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
    let actor = crate::mandates::Actor::Aidant(step.aidant_id.clone());
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
            created => super::aidant::date(m.created_at),
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

/// How long after its expiry a mandate may be renewed.
pub const RENEWABLE_WITHIN_SECS: i64 = 365 * 86_400;

/// Why a mandate cannot be renewed by an aidant alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRenewable {
    /// A domain is still active (nothing to renew).
    StillActive,
    /// A domain was revoked (by the usager, an administrator or an aidant):
    /// only a new mandate, with the usager's own sign-in, may follow.
    Revoked,
    /// It expired more than [`RENEWABLE_WITHIN_SECS`] ago (or has no domain).
    TooOld,
    /// A later mandate for the same usager and organisation exists (it was
    /// renewed already): renewing the old one again could undo what became
    /// of the later one.
    Superseded,
}

/// Whether an aidant may renew a mandate without the usager signing in:
/// only a mandate that ended **by expiry**, every domain expired and none
/// revoked, less than a year ago. A revocation is the usager's (or an
/// administrator's) decision; renewing it would undo it.
pub fn renewal_rule(m: &Mandate, now: i64) -> Result<(), NotRenewable> {
    if m.authorisations.iter().any(|a| a.revoked_at.is_some()) {
        return Err(NotRenewable::Revoked);
    }
    if m.authorisations
        .iter()
        .any(|a| a.is_active(now) || now < a.starts_at)
    {
        return Err(NotRenewable::StillActive);
    }
    match m.authorisations.iter().map(|a| a.expires_at).max() {
        Some(ended) if ended <= now && now - ended < RENEWABLE_WITHIN_SECS => Ok(()),
        _ => Err(NotRenewable::TooOld),
    }
}

/// Whether a later mandate of `org_mandates` (the organisation's) exists for
/// the same usager: `m` was renewed, or replaced by a new mandate.
pub fn superseded(m: &Mandate, org_mandates: &[Mandate]) -> bool {
    org_mandates
        .iter()
        .any(|o| o.id != m.id && o.usager_id == m.usager_id && o.created_at >= m.created_at)
}

/// [`renewal_rule`] as a yes/no.
pub fn renewable(m: &Mandate, now: i64) -> bool {
    renewal_rule(m, now).is_ok()
}

/// The offered duration closest to the mandate's original one.
fn original_duration(m: &Mandate) -> i64 {
    let days = m
        .authorisations
        .first()
        .map(|a| (a.expires_at - a.starts_at) / 86_400)
        .unwrap_or(1);
    DURATIONS
        .iter()
        .map(|(d, _)| *d)
        .min_by_key(|d| (d - days).abs())
        .unwrap_or(1)
}

/// The aidant's fresh session and the renewable mandate of their current
/// organisation; None when the sign-in must be (re)done first.
async fn renewal_target(
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
        .ok_or_else(|| ctx.page_error(lang, StatusCode::FORBIDDEN, "mandate_refused", None))?;
    Ok(Some((sid, step, m, org)))
}

async fn renewal_recap(
    ctx: &Ctx,
    sid: &str,
    m: &Mandate,
    org: &Organisation,
    lang: Lang,
    error: bool,
) -> Result<Response, AppError> {
    let now = ctx.now();
    let domains: Vec<String> = m.authorisations.iter().map(|a| a.domain.clone()).collect();
    let mut resp = ctx.page(
        lang,
        "aidant_recap.html",
        minijinja::context! {
            renew => true,
            action => ctx.fed.url(&format!("/aidant/mandats/{}/renouveler", m.id)),
            csrf => csrf_for(sid),
            usager => usager_name(ctx, &m.usager_id).await?,
            birthdate => "",
            organisation => org.name,
            siret => org.siret,
            domains => domains,
            starts => super::aidant::date(now),
            ends => end_date(now, original_duration(m)),
            consent_version => CONSENT_VERSION,
            consent_text => CONSENT_TEXT,
            error => error,
            back_url => home_url(ctx),
        },
    )?;
    if error {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
    }
    Ok(resp)
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
    citizen_only(&ctx, lang)?;
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
    citizen_only(&ctx, lang)?;
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
    let refused = |e: crate::mandates::MandateError| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mandates::Authorisation;

    fn mandate(auths: &[(i64, i64, Option<i64>)]) -> Mandate {
        Mandate {
            id: "m".into(),
            org_id: "o".into(),
            usager_id: "u".into(),
            created_by: "a".into(),
            consent_version: "v".into(),
            consent_hash: "h".into(),
            created_at: 0,
            authorisations: auths
                .iter()
                .enumerate()
                .map(|(i, (starts, expires, revoked))| Authorisation {
                    id: format!("a{i}"),
                    mandate_id: "m".into(),
                    domain: format!("d{i}"),
                    starts_at: *starts,
                    expires_at: *expires,
                    revoked_at: *revoked,
                    revoked_by: revoked.map(|_| "usager:u".into()),
                })
                .collect(),
        }
    }

    #[test]
    fn only_an_expiry_is_renewable() {
        let day = 86_400;
        // Expired yesterday: renewable.
        assert_eq!(
            renewal_rule(&mandate(&[(0, 10 * day, None)]), 11 * day),
            Ok(())
        );
        // Still active, or one domain still active.
        assert_eq!(
            renewal_rule(&mandate(&[(0, 10 * day, None)]), 5 * day),
            Err(NotRenewable::StillActive)
        );
        assert_eq!(
            renewal_rule(
                &mandate(&[(0, 10 * day, None), (0, 20 * day, None)]),
                11 * day
            ),
            Err(NotRenewable::StillActive)
        );
        // Revoked, even long expired since, or one domain of several.
        assert_eq!(
            renewal_rule(&mandate(&[(0, 10 * day, Some(day))]), 11 * day),
            Err(NotRenewable::Revoked)
        );
        assert_eq!(
            renewal_rule(
                &mandate(&[(0, 10 * day, None), (0, 10 * day, Some(2 * day))]),
                11 * day
            ),
            Err(NotRenewable::Revoked)
        );
        // More than a year after the end, or no domain at all.
        assert_eq!(
            renewal_rule(
                &mandate(&[(0, 10 * day, None)]),
                10 * day + RENEWABLE_WITHIN_SECS
            ),
            Err(NotRenewable::TooOld)
        );
        assert_eq!(renewal_rule(&mandate(&[]), day), Err(NotRenewable::TooOld));
    }
}
