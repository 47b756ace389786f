//! The upstream callback (`/callback/{provider_id}`; the old `/callback`
//! answers with the `callback_moved` page): checks what the identity
//! provider returned, the registry, then SSO session and consent.

use super::interaction::*;
use crate::app::Ctx;
use crate::config::Profile;
use crate::crypto::{random_token, sha256_b64};
use crate::error::{redirect, AppError};
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::Params;
use crate::oidc::session::Authn;
use crate::oidc::session::SessionData;
use crate::store::Kind;
use crate::subject::citizen::PivotIdentity;
use crate::subject::registry::registry_lookup_key;
use crate::subject::registry::registry_outcome;
use crate::subject::registry::RegistryOutcome;
use crate::subject::registry::RegistryRecord;
use crate::web::i18n::PageCode;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

/// The former single redirect URI (`{issuer}/callback`), shared by every
/// provider: refused with a page saying so, since a callback that does not
/// name its provider is what makes a mix-up possible (see
/// docs/adding-an-identity-provider.md, "Migrating to one redirect URI per
/// provider").
pub async fn legacy_callback(State(ctx): State<Ctx>, headers: HeaderMap) -> AppError {
    tracing::warn!(event = "upstream_callback", federation = %ctx.fed.id, "callback on the former shared redirect URI refused: register {{issuer}}/callback/{{provider id}} at the provider");
    ctx.page_error(
        lang_from(&headers, None),
        StatusCode::BAD_REQUEST,
        PageCode::CallbackMoved,
        None,
    )
}

/// Upstream provider returns here, at its own redirect URI
/// (`{issuer}/callback/{provider id}`).
pub async fn callback(
    State(ctx): State<Ctx>,
    crate::http::params::Segment(path_provider): crate::http::params::Segment,
    cookies: Cookies,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    let params = Params::parse(&q.unwrap_or_default()).unwrap_or_default();
    let fed = &ctx.fed;
    let state = params.get("state").unwrap_or("");
    let expired = || ctx.expired(lang, None);
    let (interaction_id, secret) = state.split_once('.').ok_or_else(expired)?;
    let (inter, inter_raw) = load_interaction_raw(&ctx, interaction_id, &cookies, &headers).await?;
    // The state's secret part must match, and the upstream step must be pending.
    let state_ok = inter.state_hash.as_deref().is_some_and(|h| {
        crate::crypto::ct_eq(h.as_bytes(), sha256_b64(secret.as_bytes()).as_bytes())
    });
    let pending = match (&inter.pending, state_ok) {
        (Some(p), true) if p.session == inter.session => p.clone(),
        _ => return Err(expired()),
    };
    let lang = inter.req.lang;
    let back = Some(ctx.back_url(&inter.req, "access_denied"));
    let fail =
        |code: PageCode, status: StatusCode| ctx.page_error(lang, status, code, back.clone());
    // Mix-up defence: each provider answers at its own redirect URI, so a
    // code delivered on another provider's callback than the one this
    // sign-in went to is refused before anything is redeemed.
    if path_provider != pending.provider {
        tracing::warn!(event = "upstream_callback", provider = %pending.provider, callback_of = ?path_provider.chars().take(64).collect::<String>(), "callback on another provider's redirect URI refused (mix-up)");
        return Err(fail(PageCode::UpstreamMixup, StatusCode::BAD_REQUEST));
    }
    let provider = fed
        .provider(&pending.provider)
        .ok_or_else(|| fail(PageCode::UpstreamError, StatusCode::BAD_REQUEST))?;
    let meta = provider.metadata(&ctx.app.http).await.map_err(|e| {
        tracing::warn!(event = "upstream_callback", provider = %provider.cfg.id, error = %e, "upstream unavailable");
        fail(PageCode::UpstreamUnavailable, StatusCode::BAD_GATEWAY)
    })?;
    // RFC 9207: iss, when sent, must be the provider's own; and it must be
    // sent when the provider advertises it (or `require_iss` is set).
    match params.get("iss") {
        Some(iss) if iss != provider.cfg.issuer => {
            tracing::warn!(event = "upstream_callback", provider = %provider.cfg.id, "callback iss mismatch refused");
            return Err(fail(PageCode::UpstreamError, StatusCode::BAD_REQUEST));
        }
        None if provider.iss_required(&meta) => {
            tracing::warn!(event = "upstream_callback", provider = %provider.cfg.id, "callback without the required iss refused");
            return Err(fail(PageCode::UpstreamError, StatusCode::BAD_REQUEST));
        }
        _ => {}
    }
    if let Some(err) = params.get("error") {
        tracing::info!(event = "upstream_callback", provider = %provider.cfg.id, error = ?err, "upstream returned an error");
        let code = if err == "access_denied" {
            PageCode::AccessDenied
        } else {
            PageCode::UpstreamError
        };
        return Err(fail(code, StatusCode::BAD_REQUEST));
    }
    let code = params
        .get("code")
        .ok_or_else(|| fail(PageCode::UpstreamError, StatusCode::BAD_REQUEST))?;
    let login = provider
        .finish(&ctx.app.http, &fed.url(&provider.callback_path()), code, &pending, &fed.cfg.acr_values, Some(&fed.keys))
        .await
        .map_err(|e| {
            tracing::warn!(event = "upstream_callback", provider = %provider.cfg.id, error = ?e, "upstream sign-in failed");
            use crate::upstream::UpstreamError as U;
            match e {
                U::Unavailable(_) => fail(PageCode::UpstreamUnavailable, StatusCode::BAD_GATEWAY),
                U::Refused(_) => fail(PageCode::UpstreamError, StatusCode::BAD_GATEWAY),
                U::InvalidToken(_) => fail(PageCode::UpstreamInvalidToken, StatusCode::BAD_GATEWAY),
                U::Claims(m) if m.contains("acr") => fail(PageCode::AcrNotSatisfied, StatusCode::FORBIDDEN),
                U::Claims(_) => fail(PageCode::InvalidIdentity, StatusCode::BAD_GATEWAY),
                U::Config(_) => fail(PageCode::ServerError, StatusCode::INTERNAL_SERVER_ERROR),
            }
        })?;
    tracing::info!(event = "upstream_callback", provider = %provider.cfg.id, acr = ?login.acr, "upstream sign-in verified");
    // The person: a citizen's pivot identity, or an agent and their account.
    let (subject_key, public_sub, display_name, claims) = match fed.cfg.profile {
        Profile::Citizen => {
            let identity = PivotIdentity::from_claims(&login.claims).map_err(|e| {
                tracing::warn!(event = "identity_rejected", provider = %provider.cfg.id, reason = %e, "invalid pivot identity");
                fail(PageCode::InvalidIdentity, StatusCode::BAD_GATEWAY)
            })?;
            registry_check(&ctx, &identity, &inter.req).await?;
            let mut claims = identity.to_claims();
            claims.insert("idp_id".into(), json!(provider.cfg.id));
            claims.insert("amr".into(), json!(login.amr));
            let name = format!(
                "{} {}",
                identity.given_name,
                identity.family_name.to_uppercase()
            );
            (identity.identity_key(), None, name, claims)
        }
        Profile::Agent => {
            let agent = crate::subject::agent::identity_from_login(fed, provider, &login).map_err(|e| {
                tracing::warn!(event = "identity_rejected", provider = %provider.cfg.id, reason = ?e, "agent identity refused");
                match e {
                    crate::subject::agent::AgentRefusal::Domain(_) => fail(PageCode::DomainNotAllowed, StatusCode::FORBIDDEN),
                    crate::subject::agent::AgentRefusal::Identity(_) => fail(PageCode::InvalidIdentity, StatusCode::BAD_GATEWAY),
                }
            })?;
            let account = ctx
                .app
                .store
                .agent_account(
                    &fed.id,
                    &provider.cfg.id,
                    &agent.sub,
                    &agent.email,
                    &random_token(16),
                    ctx.now(),
                )
                .await?;
            let claims = crate::subject::agent::claims(&agent, &provider.cfg.id, &login);
            let name = format!("{} {}", agent.given_name, agent.usual_name.to_uppercase());
            (format!("agent:{account}"), Some(account), name, claims)
        }
    };
    tracing::info!(event = "identity_verified", provider = %provider.cfg.id, "identity verified");
    let now = ctx.now();
    // A sign-in for one of Relais' own pages (see `Purpose`): it stays in
    // the interaction (the browser may not be the person's: no broker
    // session), and that page follows.
    let own_page = inter.own_page().is_some();
    let authn = Authn {
        subject_key,
        public_sub,
        display_name,
        claims,
        provider: provider.cfg.id.clone(),
        acr: login.acr,
        amr: login.amr,
        auth_time: now,
        sid: random_token(16),
        // Only a broker session needs it (upstream logout).
        upstream_id_token: if own_page {
            String::new()
        } else {
            login.id_token.clone()
        },
        delegation: None,
    };
    let mut updated = inter.clone();
    updated.pending = None;
    updated.state_hash = None;
    updated.authn = Some(authn.clone());
    // A broker session gets a new id after authentication (session fixation).
    let new_session = (!own_page).then(|| {
        let session = crate::oidc::session::NewSession::new();
        updated.session = session.id.clone();
        session
    });
    let idata = serde_json::to_string(&updated).map_err(AppError::internal)?;
    // Single use of the upstream state: only one callback can move the
    // interaction on (compare-and-swap on its stored form).
    if !ctx
        .app
        .store
        .update_if(
            Kind::Interaction,
            interaction_id,
            &fed.id,
            &inter_raw,
            &idata,
            now + fed.cfg.interaction_ttl_secs,
        )
        .await?
    {
        return Err(ctx.expired(lang, None));
    }
    // A completed sign-in at this provider replaced any session a usager
    // had left there on this browser.
    let relogin_before = crate::oidc::session::Relogin::read(fed, &cookies);
    let mut relogin = relogin_before.clone();
    relogin.remove(&provider.cfg.id);
    let Some(session) = new_session else {
        let page = inter.own_page().unwrap_or_default();
        let page = fed.url(&format!("/interaction/{interaction_id}/{page}"));
        // The person signed in on a screen that may not be theirs (an
        // aidant's): end their session at the provider before their page,
        // or, when the provider has no logout, have the next sign-in there
        // on this browser ask for a fresh authentication.
        let mut resp = match super::logout::end_upstream_session(
            &ctx,
            provider,
            &login.id_token,
            &page,
            lang,
        )
        .await?
        {
            Some(resp) => resp,
            None => {
                tracing::info!(event = "upstream_relogin_marked", federation = %fed.id, provider = %provider.cfg.id, "provider without logout: next sign-in there on this browser will be forced");
                relogin.add(&provider.cfg.id);
                redirect(&page)
            }
        };
        relogin.store_if_changed(&ctx, &relogin_before, &mut resp);
        return Ok(resp);
    };
    let mut resp = session
        .begin(
            &ctx,
            &SessionData {
                authn: Some(authn),
                acting: Default::default(),
            },
            inter.had_session.then_some(inter.session.as_str()),
            now,
            redirect(&fed.url(&format!("/interaction/{}/consent", pending.interaction))),
        )
        .await?;
    relogin.store_if_changed(&ctx, &relogin_before, &mut resp);
    Ok(resp)
}

pub(crate) async fn registry_check(
    ctx: &Ctx,
    identity: &PivotIdentity,
    req: &AuthRequest,
) -> Result<(), AppError> {
    if ctx.fed.cfg.registry != crate::config::RegistryKind::Table {
        return Ok(());
    }
    let store = &ctx.app.store;
    let outcome = match store.registry_get(&identity.identity_key()).await {
        Ok(Some(raw)) => registry_outcome(identity, stored_record(&raw).as_ref()),
        Ok(None) => match store.registry_similar(&registry_lookup_key(identity)).await {
            Ok(similar) => {
                let record = similar.iter().find_map(|r| stored_record(r));
                registry_outcome(identity, record.as_ref())
            }
            Err(e) => RegistryOutcome::Unavailable(e.to_string()),
        },
        Err(e) => RegistryOutcome::Unavailable(e.to_string()),
    };
    match outcome {
        RegistryOutcome::Found => Ok(()),
        RegistryOutcome::Unavailable(e) => {
            tracing::warn!(event = "registry_check", error = ?e, "registry unavailable");
            Err(ctx.page_error(
                req.lang,
                StatusCode::SERVICE_UNAVAILABLE,
                PageCode::TemporarilyUnavailable,
                Some(ctx.back_url(req, "temporarily_unavailable")),
            ))
        }
        other => {
            tracing::info!(event = "registry_check", outcome = ?other, "registry refused the identity");
            Err(ctx.page_error(
                req.lang,
                StatusCode::FORBIDDEN,
                PageCode::RegistryRefused,
                Some(ctx.back_url(req, "access_denied")),
            ))
        }
    }
}

/// Registry records are stored as JSON {"identity": {...}, "deceased": bool}.
pub fn stored_record(raw: &str) -> Option<RegistryRecord> {
    let v: Value = serde_json::from_str(raw).ok()?;
    let identity: PivotIdentity = serde_json::from_value(v.get("identity")?.clone()).ok()?;
    let deceased = v.get("deceased").and_then(Value::as_bool).unwrap_or(false);
    Some(RegistryRecord {
        identity,
        status: if deceased {
            crate::subject::registry::RegistryStatus::Deceased
        } else {
            crate::subject::registry::RegistryStatus::Alive
        },
    })
}

pub fn record_json(r: &RegistryRecord) -> String {
    json!({
        "identity": r.identity,
        "deceased": r.status == crate::subject::registry::RegistryStatus::Deceased,
    })
    .to_string()
}
