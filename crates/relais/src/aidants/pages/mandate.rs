//! Creating a mandate: the aidant's draft (domains, duration), the usager's
//! own sign-in on the aidant's screen, then the recap confirmed with a TOTP
//! code (`/aidant/mandats`, `/interaction/{id}/mandat`).

use super::interaction::SignInGuard;
use super::space::*;
use crate::aidants::rules::*;
use crate::aidants::MandateDraft;
use crate::aidants::{journal::sha256_hex, NewMandate, Salt};
use crate::app::Ctx;
use crate::error::{redirect, AppError};
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::FormBody;
use crate::http::params::Params;
use crate::http::params::Segment;
use crate::oidc::interaction::Purpose;
use crate::oidc::interaction::{check_csrf, load_interaction, AuthRequest, Interaction};
use crate::store::Kind;
use crate::subject::citizen::PivotIdentity;
use crate::web::i18n::PageCode;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

/// The own page a mandate creation's sign-in ends on (`/interaction/{id}/mandat`: the recap).
pub const MANDATE_PAGE: &str = "mandat";

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
            PageCode::InvalidRequest,
            Some(home_url(&ctx)),
        )
    };
    let org = ctx
        .app
        .store
        .organisation(&step.org_id)
        .await?
        .filter(|o| o.active)
        .ok_or_else(|| {
            ctx.page_error(lang, StatusCode::FORBIDDEN, PageCode::MandateRefused, None)
        })?;
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
    let draft = MandateDraft {
        aidant_id: step.aidant_id,
        org_id: step.org_id,
        domains,
        duration_days,
    };
    let inter = Interaction::new(req, sid, true, Purpose::own_page(MANDATE_PAGE, &draft)?);
    let id = put_interaction(&ctx, &inter).await?;
    Ok(redirect(&ctx.fed.url(&format!("/interaction/{id}"))))
}

/// The draft and the usager's own sign-in; without the latter there is no
/// recap.
pub(super) fn draft_and_usager(
    ctx: &Ctx,
    inter: &Interaction,
) -> Result<(MandateDraft, crate::oidc::session::Authn), AppError> {
    let expired = || ctx.expired(inter.req.lang, Some(home_url(ctx)));
    let draft = inter
        .own_data::<MandateDraft>(MANDATE_PAGE)
        .ok_or_else(expired)?;
    let authn = inter.authn.clone().ok_or_else(expired)?;
    Ok((draft, authn))
}

pub(super) fn end_date(now: i64, days: i64) -> String {
    super::interaction::date(now + days * 86_400)
}

pub(super) async fn recap(
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
    let recap = Recap {
        renew: false,
        action: ctx.fed.url(&format!("/interaction/{id}/mandat")),
        csrf: inter.csrf.clone(),
        usager: authn.display_name,
        birthdate: authn
            .claims
            .get("birthdate")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        org: &org,
        domains: draft.domains,
        days: draft.duration_days,
    };
    recap.render(ctx, inter.req.lang, now, error)
}

/// What the recap page of a mandate (new or renewed) shows before the
/// aidant confirms with a TOTP code.
pub(super) struct Recap<'a> {
    pub renew: bool,
    /// Where the confirmation form posts.
    pub action: String,
    pub csrf: String,
    pub usager: String,
    pub birthdate: String,
    pub org: &'a crate::aidants::Organisation,
    pub domains: Vec<String>,
    /// Duration from today, in days.
    pub days: i64,
}

impl Recap<'_> {
    /// The page; `error`: the code was wrong (401).
    pub(super) fn render(
        self,
        ctx: &Ctx,
        lang: crate::web::Lang,
        now: i64,
        error: bool,
    ) -> Result<Response, AppError> {
        let mut resp = ctx.page(
            lang,
            "aidant_recap.html",
            minijinja::context! {
                renew => self.renew,
                action => self.action,
                csrf => self.csrf,
                usager => self.usager,
                birthdate => self.birthdate,
                organisation => self.org.name,
                siret => self.org.siret,
                domains => self.domains,
                starts => super::interaction::date(now),
                ends => end_date(now, self.days),
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
        return Err(ctx.expired(lang, None));
    }
    let identity = PivotIdentity::from_claims(&authn.claims).map_err(AppError::internal)?;
    let salt = Salt::load_or_create(&ctx.app.journal_salt_path).map_err(AppError::internal)?;
    let refused = |e: crate::aidants::MandateError| {
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
