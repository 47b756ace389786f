//! Delegated sign-in: an aidant (professional helper) signs in with e-mail,
//! password and TOTP code, picks an usager among the active mandates of
//! their current organisation and a domain the service accepts; the service
//! then receives the usager's identity plus `act` and `mandate` claims.

use crate::app::Client;
use crate::app::Ctx;
use crate::config::Profile;
use crate::crypto::random_token;
use crate::error::{redirect, AppError};
use crate::http::cookies::Cookies;
use crate::http::params::FormBody;
use crate::http::params::Params;
use crate::http::params::Segment;
use crate::oidc::interaction::DomainStep;
use crate::oidc::interaction::{check_csrf, load_interaction, Interaction};
use crate::oidc::session::load_session;
use crate::oidc::session::Authn;
use crate::oidc::session::Delegation;
use crate::oidc::session::SessionData;
use crate::subject::citizen::pairwise_sub;
use crate::web::i18n::PageCode;
use crate::web::Lang;
use axum::extract::{FromRequestParts, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Mutex;

/// Level reported for an aidant's authentication (password + TOTP).
pub const AIDANT_ACR: &str = "eidas1";
/// Methods of an aidant's authentication.
pub const AIDANT_AMR: [&str; 2] = ["pwd", "otp"];

/// How long an aidant's sign-in on a browser may be reused for another
/// delegated sign-in without a new password and TOTP code.
pub const AIDANT_FRESH_SECS: i64 = 15 * 60;

/// Per-IP throttling of aidant sign-ins: at most this many failed attempts
/// (password or TOTP code) from one client address within a window of
/// [`THROTTLE_WINDOW_SECS`], counted across every node (`crate::http::limits`);
/// further attempts get a 429 page without any password or code being
/// checked.
pub const THROTTLE_MAX_FAILURES: usize = 20;
/// Window of the per-IP throttling.
pub const THROTTLE_WINDOW_SECS: i64 = 10 * 60;

const SIGN_IN_LIMIT: crate::http::limits::Limit = crate::http::limits::Limit {
    max: THROTTLE_MAX_FAILURES as i64,
    window_secs: THROTTLE_WINDOW_SECS,
};

/// Extractor for the sign-in handlers: the client's address key.
///
/// [`SignInGuard::refuse`] reserves one attempt in the application's
/// throttle; the reservation is kept by [`SignInGuard::failed`] and given
/// back when the guard is dropped otherwise (success, server or store
/// error, early return).
pub struct SignInGuard {
    key: String,
    /// The reservation made by `refuse`, until kept or given back.
    reserved: Mutex<Option<crate::http::limits::Held>>,
}

impl FromRequestParts<Ctx> for SignInGuard {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, Self::Rejection> {
        let crate::http::params::ClientAddress(ip) =
            crate::http::params::ClientAddress::from_request_parts(parts, ctx).await?;
        Ok(SignInGuard {
            key: format!("aidant-sign-in:{ip}"),
            reserved: Mutex::new(None),
        })
    }
}

impl SignInGuard {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<crate::http::limits::Held>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The 429 page when this client made too many failed attempts; else
    /// `None`, and one attempt is reserved (counted) for this client until
    /// the outcome is known (see [`SignInGuard::failed`]); it is given back
    /// when the guard is dropped otherwise (success, server or store error,
    /// early return, a client that went away).
    pub async fn refuse(&self, ctx: &Ctx, lang: Lang) -> Result<Option<Response>, AppError> {
        let app = &ctx.app;
        let now = ctx.now();
        if let Some(r) = app
            .throttle
            .try_reserve(&app.store, &self.key, SIGN_IN_LIMIT, now)
            .await?
        {
            // Called twice: the older reservation is given back (dropped).
            let _older = self
                .slot()
                .replace(crate::http::limits::Held::new(&app.store, r));
            return Ok(None);
        }
        tracing::warn!(event = "aidant_sign_in_throttled", federation = %ctx.fed.id, "too many failed aidant sign-ins from one client address");
        let mut resp = ctx
            .page_error(
                lang,
                StatusCode::TOO_MANY_REQUESTS,
                PageCode::TooManyAttempts,
                None,
            )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(THROTTLE_WINDOW_SECS));
        Ok(Some(resp))
    }

    /// Count a failed attempt (wrong password or code, locked account…):
    /// keeps the reservation made by `refuse` (or counts one if none).
    pub async fn failed(&self, ctx: &Ctx) -> Result<(), AppError> {
        let reserved = self.slot().take();
        match reserved {
            Some(held) => held.failed(),
            None => {
                let app = &ctx.app;
                app.throttle
                    .record_failure(&app.store, &self.key, SIGN_IN_LIMIT, ctx.now())
                    .await?;
            }
        }
        Ok(())
    }
}

/// The aidant who signed in during an interaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AidantStep {
    pub aidant_id: String,
    pub org_id: String,
    pub auth_time: i64,
}

impl AidantStep {
    /// Whether this sign-in is at most [`AIDANT_FRESH_SECS`] old at `now`.
    pub fn is_fresh(&self, now: i64) -> bool {
        self.auth_time <= now && now - self.auth_time <= AIDANT_FRESH_SECS
    }
}

/// The choice page's entry for aidants (`crate::oidc::choose::OtherWays`):
/// only for services that accept delegation, and when an aidant's
/// authentication is enough for the level asked.
pub fn choice_entry(
    ctx: &Ctx,
    inter: &Interaction,
    id: &str,
    min_rank: Option<usize>,
) -> Option<crate::oidc::choose::OtherWay> {
    ctx.client(&inter.req.client_id)
        .filter(|c| !c.cfg.delegation_domains.is_empty())
        .filter(|_| ctx.fed.acr_rank(AIDANT_ACR) >= min_rank)
        .map(|_| crate::oidc::choose::OtherWay {
            id: "aidant-entry",
            class: "aidant",
            label: "Je suis un aidant professionnel (I am a professional helper)",
            url: ctx.fed.url(&format!("/interaction/{id}/aidant")),
        })
}

/// The interaction's client, if it accepts delegation (citizen profile).
fn delegating_client<'a>(ctx: &'a Ctx, inter: &Interaction) -> Result<&'a Client, AppError> {
    ctx.client(&inter.req.client_id)
        .filter(|c| !c.cfg.delegation_domains.is_empty() && ctx.fed.cfg.profile == Profile::Citizen)
        .ok_or_else(|| ctx.refuse(&inter.req, StatusCode::NOT_FOUND, PageCode::NotFound))
}

/// The service asked for more than an aidant's authentication gives.
fn check_acr(ctx: &Ctx, inter: &Interaction) -> Result<(), AppError> {
    if let Some(min) = &inter.req.acr_min {
        if ctx.fed.acr_rank(AIDANT_ACR) < ctx.fed.acr_rank(min) {
            return Err(ctx.refuse(&inter.req, StatusCode::FORBIDDEN, PageCode::AcrNotSatisfied));
        }
    }
    Ok(())
}

fn refused(ctx: &Ctx, inter: &Interaction, id: &str) -> AppError {
    ctx.page_error(
        inter.req.lang,
        StatusCode::FORBIDDEN,
        PageCode::MandateRefused,
        Some(ctx.fed.url(&format!("/interaction/{id}/aidant/usagers"))),
    )
}

fn login_form(
    ctx: &Ctx,
    id: &str,
    inter: &Interaction,
    client: &Client,
    error: bool,
) -> Result<Response, AppError> {
    let mut resp = ctx.page(
        inter.req.lang,
        "aidant_login.html",
        minijinja::context! {
            action => ctx.fed.url(&format!("/interaction/{id}/aidant")),
            csrf => inter.csrf,
            client_name => client.cfg.name,
            back_url => ctx.fed.url(&format!("/interaction/{id}/abort")),
            error => error,
        },
    )?;
    if error {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
    }
    Ok(resp)
}

/// GET `/interaction/{id}/aidant`: the aidant sign-in form.
pub async fn login_page(
    State(ctx): State<Ctx>,
    Segment(id): Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let mut inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let client = delegating_client(&ctx, &inter)?;
    check_acr(&ctx, &inter)?;
    // A fresh aidant sign-in on this browser is reused.
    if let Some(step) = load_session(&ctx, &inter.session)
        .await?
        .and_then(|s| s.acting.get::<AidantStep>())
        .filter(|a| a.is_fresh(ctx.now()))
    {
        tracing::info!(event = "aidant_sign_in", federation = %ctx.fed.id, reused = true, "fresh aidant session reused");
        inter.acting = DomainStep::of(&step)?;
        inter.authn = None;
        ctx.save_interaction(&id, &inter).await?;
        return Ok(redirect(
            &ctx.fed.url(&format!("/interaction/{id}/aidant/usagers")),
        ));
    }
    login_form(&ctx, &id, &inter, client, false)
}

/// POST `/interaction/{id}/aidant`: e-mail, password and TOTP code.
pub async fn login_submit(
    State(ctx): State<Ctx>,
    Segment(id): Segment,
    cookies: Cookies,
    headers: HeaderMap,
    guard: SignInGuard,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let mut inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let form = Params::parse(&body).unwrap_or_default();
    check_csrf(&ctx, &inter, &form)?;
    let client = delegating_client(&ctx, &inter)?;
    check_acr(&ctx, &inter)?;
    if let Some(resp) = guard.refuse(&ctx, inter.req.lang).await? {
        return Ok(resp);
    }
    let now = ctx.now();
    let login = ctx
        .app
        .store
        .verify_password_and_totp(
            form.get("email").unwrap_or(""),
            form.get("password").unwrap_or(""),
            form.get("totp").unwrap_or("").trim(),
            &ctx.app.totp_key,
            now,
        )
        .await;
    let login = match login {
        Ok(l) => l,
        Err(crate::aidants::LoginError::Refused) => {
            tracing::info!(event = "aidant_sign_in", federation = %ctx.fed.id, ok = false, "aidant sign-in refused");
            guard.failed(&ctx).await?;
            return login_form(&ctx, &id, &inter, client, true);
        }
        Err(e) => return Err(e.into()),
    };
    let Some(org_id) = login.current_org else {
        return Err(refused(&ctx, &inter, &id));
    };
    tracing::info!(event = "aidant_sign_in", federation = %ctx.fed.id, ok = true, "aidant signed in");
    let step = AidantStep {
        aidant_id: login.aidant_id,
        org_id,
        auth_time: now,
    };
    // A new browser session holding only the aidant's sign-in (new id after
    // authentication: session fixation); it replaces any previous one.
    let session = crate::oidc::session::NewSession::new();
    let old = std::mem::replace(&mut inter.session, session.id.clone());
    let replaces = inter.had_session.then_some(old);
    inter.had_session = true;
    inter.acting = DomainStep::of(&step)?;
    inter.authn = None;
    ctx.save_interaction(&id, &inter).await?;
    let data = SessionData {
        authn: None,
        acting: DomainStep::of(&step)?,
    };
    let next = redirect(&ctx.fed.url(&format!("/interaction/{id}/aidant/usagers")));
    session
        .begin(&ctx, &data, replaces.as_deref(), now, next)
        .await
}

fn signed_in(ctx: &Ctx, inter: &Interaction) -> Result<AidantStep, AppError> {
    inter.acting.get::<AidantStep>().ok_or_else(|| {
        ctx.refuse(
            &inter.req,
            StatusCode::BAD_REQUEST,
            PageCode::InteractionExpired,
        )
    })
}

fn usager_name(claims: &Map<String, Value>) -> Option<String> {
    let given = claims.get("given_name")?.as_str()?;
    let family = claims.get("family_name")?.as_str()?;
    Some(format!("{given} {}", family.to_uppercase()))
}

fn stored_claims(raw: Option<String>) -> Option<Map<String, Value>> {
    serde_json::from_str::<Value>(&raw?)
        .ok()?
        .as_object()
        .cloned()
}

/// `YYYY-MM-DD` (UTC) of a Unix time (H. Hinnant's civil-from-days).
pub(crate) fn date(ts: i64) -> String {
    let z = ts.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date(0), "1970-01-01");
        assert_eq!(super::date(951_782_400), "2000-02-29");
        assert_eq!(super::date(1_798_675_200), "2026-12-31");
    }
}

#[derive(Serialize)]
struct DomainView {
    domain: String,
    expires: String,
}

#[derive(Serialize)]
struct UsagerView {
    mandate_id: String,
    name: String,
    domains: Vec<DomainView>,
}

/// GET `/interaction/{id}/aidant/usagers`: the usagers with an active
/// mandate of the aidant's current organisation, and for each the domains
/// both active and accepted by the service.
pub async fn usagers_page(
    State(ctx): State<Ctx>,
    Segment(id): Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let client = delegating_client(&ctx, &inter)?;
    let aidant = signed_in(&ctx, &inter)?;
    let store = &ctx.app.store;
    let now = ctx.now();
    let org = store
        .organisation(&aidant.org_id)
        .await?
        .filter(|o| o.active)
        .ok_or_else(|| refused(&ctx, &inter, &id))?;
    let mut usagers = Vec::new();
    for m in store.list_mandates(&org.id).await? {
        let domains: Vec<DomainView> = m
            .authorisations
            .iter()
            .filter(|a| a.is_active(now) && client.cfg.delegation_domains.contains(&a.domain))
            .map(|a| DomainView {
                domain: a.domain.clone(),
                expires: date(a.expires_at),
            })
            .collect();
        if domains.is_empty() {
            continue;
        }
        let claims = match store.usager(&m.usager_id).await? {
            Some((_, raw)) => stored_claims(raw),
            None => None,
        };
        // An usager whose identity is unknown cannot be presented to a service.
        let Some(name) = claims.as_ref().and_then(usager_name) else {
            continue;
        };
        usagers.push(UsagerView {
            mandate_id: m.id,
            name,
            domains,
        });
    }
    ctx.page(
        inter.req.lang,
        "aidant_usagers.html",
        minijinja::context! {
            action => ctx.fed.url(&format!("/interaction/{id}/aidant/usagers")),
            csrf => inter.csrf,
            client_name => client.cfg.name,
            organisation => org.name,
            usagers => usagers,
            back_url => ctx.fed.url(&format!("/interaction/{id}/abort")),
        },
    )
}

/// POST `/interaction/{id}/aidant/usagers`: `choice` = `<mandate id>:<domain>`.
pub async fn usagers_submit(
    State(ctx): State<Ctx>,
    Segment(id): Segment,
    cookies: Cookies,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let mut inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let form = Params::parse(&body).unwrap_or_default();
    check_csrf(&ctx, &inter, &form)?;
    let client = delegating_client(&ctx, &inter)?;
    let aidant = signed_in(&ctx, &inter)?;
    let (mandate_id, domain) = form
        .get("choice")
        .and_then(|c| c.split_once(':'))
        .ok_or_else(|| refused(&ctx, &inter, &id))?;
    let store = &ctx.app.store;
    let now = ctx.now();
    let refuse = |why: &str| {
        tracing::info!(event = "mandate_refused", federation = %ctx.fed.id, client = %client.cfg.client_id, step = "selection", reason = why, "mandate refused");
        refused(&ctx, &inter, &id)
    };
    if !client.cfg.delegation_domains.iter().any(|d| d == domain) {
        return Err(refuse("domain not accepted by the service"));
    }
    let mandate = store
        .mandate(mandate_id)
        .await?
        .filter(|m| m.org_id == aidant.org_id)
        .ok_or_else(|| refuse("no such mandate in the aidant's organisation"))?;
    if !store.active_authorisation(mandate_id, domain, now).await? {
        return Err(refuse("authorisation not active"));
    }
    let expires_at = mandate
        .authorisations
        .iter()
        .filter(|a| a.domain == domain && a.is_active(now))
        .map(|a| a.expires_at)
        .max()
        .ok_or_else(|| refuse("authorisation not active"))?;
    let org = store
        .organisation(&aidant.org_id)
        .await?
        .ok_or_else(|| refuse("organisation vanished"))?;
    let (identity_key, raw) = store
        .usager(&mandate.usager_id)
        .await?
        .ok_or_else(|| refuse("usager vanished"))?;
    let mut claims = stored_claims(raw).ok_or_else(|| refuse("usager identity unknown"))?;
    let display_name = usager_name(&claims).unwrap_or_default();
    let aidant_sub = pairwise_sub(
        &ctx.fed.pairwise_secret,
        &client.sector,
        &format!("aidant:{}", aidant.aidant_id),
    );
    claims.insert("amr".into(), json!(AIDANT_AMR));
    claims.insert(
        "act".into(),
        json!({"sub": aidant_sub, "siret": org.siret, "organisation": org.name}),
    );
    claims.insert(
        "mandate".into(),
        json!({"id": mandate.id, "domain": domain, "expires_at": expires_at}),
    );
    inter.authn = Some(Authn {
        subject_key: identity_key,
        public_sub: None,
        display_name,
        claims,
        provider: "aidant".into(),
        acr: Some(AIDANT_ACR.into()),
        amr: AIDANT_AMR.iter().map(|s| s.to_string()).collect(),
        auth_time: aidant.auth_time,
        sid: random_token(16),
        upstream_id_token: String::new(),
        delegation: Some(Delegation {
            mandate_id: mandate.id.clone(),
            domain: domain.to_string(),
            aidant_id: aidant.aidant_id.clone(),
            org_id: aidant.org_id.clone(),
        }),
    });
    ctx.save_interaction(&id, &inter).await?;
    Ok(redirect(
        &ctx.fed.url(&format!("/interaction/{id}/consent")),
    ))
}
