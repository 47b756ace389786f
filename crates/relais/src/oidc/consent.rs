//! The information/consent page (`/interaction/{id}/consent`) and issuing
//! the authorization code.

use super::claims::claims_for_scopes;
use super::interaction::*;
use crate::app::Ctx;
use crate::crypto::{random_token, sha256_b64};
use crate::error::{redirect, with_query, AppError};
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::Params;
use crate::oidc::session::Authn;
use crate::store::Kind;
use crate::subject::citizen::pairwise_sub;
use crate::web::i18n::PageCode;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

pub(crate) fn session_authn(ctx: &Ctx, inter: &Interaction) -> Result<Authn, AppError> {
    // A sign-in for one of Relais' own pages never ends at a service.
    inter
        .authn
        .clone()
        .filter(|_| inter.own_page().is_none())
        .ok_or_else(|| {
            ctx.refuse(
                &inter.req,
                StatusCode::BAD_REQUEST,
                PageCode::InteractionExpired,
            )
        })
}

pub async fn consent_page(
    State(ctx): State<Ctx>,
    crate::http::params::Segment(id): crate::http::params::Segment,
    cookies: Cookies,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let inter = load_interaction(&ctx, &id, &cookies, &headers).await?;
    let authn = session_authn(&ctx, &inter)?;
    let client = ctx.client_of(&inter.req)?;
    let lang = inter.req.lang;
    let claims: Vec<String> = claims_for_scopes(&inter.req.scopes)
        .into_iter()
        .filter(|c| *c != "sub")
        .map(|c| {
            let label = crate::web::i18n::claim_label(lang, c);
            let value = display_value(&authn, c);
            match value {
                Some(v) => format!("{label} : {v}"),
                None => label.to_string(),
            }
        })
        .collect();
    let provider_name = ctx
        .fed
        .provider(&authn.provider)
        .map(|p| p.cfg.name.clone())
        .unwrap_or_default();
    ctx.page(
        lang,
        "consent.html",
        minijinja::context! {
            action => ctx.fed.url(&format!("/interaction/{id}/consent")),
            csrf => inter.csrf,
            display_name => authn.display_name,
            client_name => client.cfg.name,
            claims => claims,
            provider_name => provider_name,
            need_consent => client.cfg.kind == crate::config::ClientKind::Private,
            delegation => authn.delegation.as_ref().map(|d| minijinja::context! {
                mandate_id => d.mandate_id,
                domain => d.domain,
            }),
        },
    )
}

pub(crate) fn display_value(authn: &Authn, claim: &str) -> Option<String> {
    match authn.claims.get(claim)? {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub async fn consent_submit(
    State(ctx): State<Ctx>,
    crate::http::params::Segment(id): crate::http::params::Segment,
    cookies: Cookies,
    headers: HeaderMap,
    crate::http::params::FormBody(body): crate::http::params::FormBody,
) -> Result<Response, AppError> {
    // Single use: the interaction ends here. It is taken at once (one
    // statement on the sign-in's hot path instead of a read then a delete),
    // and only by the browser it belongs to: the delete matches the session
    // binding stored in the interaction (the JSON member
    // `"session":"<this browser's session id>"`, which JSON escaping keeps
    // from appearing inside any string value), so a request without this
    // browser's cookie removes nothing. The binding is checked again below;
    // a request that may not use the interaction puts it back untouched.
    let lang = lang_from(&headers, None);
    let expired = || ctx.expired(lang, None);
    let Some(sid) = cookies.session_id(&ctx.fed) else {
        return Err(expired());
    };
    let binding = format!(
        "\"session\":{}",
        serde_json::to_string(&sid).map_err(AppError::internal)?
    );
    let Some((raw, expires_at)) = ctx
        .app
        .store
        .take_bound(Kind::Interaction, &id, &ctx.fed.id, &binding, ctx.now())
        .await?
    else {
        return Err(expired());
    };
    let restore = || async {
        ctx.app
            .store
            .put(Kind::Interaction, &id, &ctx.fed.id, &raw, expires_at)
            .await
            .map_err(AppError::from)
    };
    let inter: Interaction = serde_json::from_str(&raw).map_err(AppError::internal)?;
    if sid != inter.session {
        restore().await?;
        return Err(expired());
    }
    let form = Params::parse(&body).unwrap_or_default();
    if let Err(e) = check_csrf(&ctx, &inter, &form) {
        restore().await?;
        return Err(e);
    }
    let client = match ctx.client_of(&inter.req) {
        Ok(c) => c,
        Err(e) => {
            restore().await?;
            return Err(e);
        }
    };
    if form.get("decision") == Some("deny") {
        tracing::info!(event = "consent", federation = %ctx.fed.id, client = %inter.req.client_id, granted = false, "consent refused");
        return Ok(redirect(&ctx.back_url(&inter.req, "access_denied")));
    }
    if client.cfg.kind == crate::config::ClientKind::Private && form.get("consent") != Some("yes") {
        restore().await?;
        return Ok(redirect(
            &ctx.fed.url(&format!("/interaction/{id}/consent")),
        ));
    }
    let authn = match session_authn(&ctx, &inter) {
        Ok(a) => a,
        Err(e) => {
            // A mandate creation or an usager consultation: not for a
            // service; its own pages go on with it.
            restore().await?;
            return Err(e);
        }
    };
    let sub = pairwise_sub(&ctx.fed.pairwise_secret, &client.sector, &authn.subject_key);
    // Explicit consents (private services) are recorded for audit; public
    // services only show information, nothing to record.
    if client.cfg.kind == crate::config::ClientKind::Private {
        ctx.app
            .store
            .record_consent(
                &random_token(12),
                &ctx.fed.id,
                &client.cfg.client_id,
                &sub,
                &inter.req.scopes.join(" "),
                ctx.now(),
            )
            .await?;
    }
    tracing::info!(event = "consent", federation = %ctx.fed.id, client = %inter.req.client_id, granted = true, "consent given");
    issue_code(&ctx, &inter.req, &authn, &inter.session).await
}

/// Create the authorization code and send the browser back to the service.
pub(crate) async fn issue_code(
    ctx: &Ctx,
    req: &AuthRequest,
    authn: &Authn,
    session: &str,
) -> Result<Response, AppError> {
    let client = ctx.client_of(req)?;
    let sub = match (&client.cfg.subject_type, &authn.public_sub) {
        (crate::config::SubjectType::Public, Some(public)) => public.clone(),
        _ => pairwise_sub(&ctx.fed.pairwise_secret, &client.sector, &authn.subject_key),
    };
    let released = claims_for_scopes(&req.scopes);
    let all = &authn.claims;
    let mut userinfo = Map::new();
    userinfo.insert("sub".into(), json!(sub));
    for c in &released {
        if let Some(v) = all.get(*c) {
            userinfo.insert((*c).to_string(), v.clone());
        }
    }
    // Claims asked through the claims parameter, limited to what the scopes release.
    let mut id_token_extra = Map::new();
    for c in &req.claims.id_token {
        if released.contains(&c.as_str()) {
            if let Some(v) = all.get(c) {
                id_token_extra.insert(c.clone(), v.clone());
            }
        }
    }
    // Delegated sign-in: `act` and `mandate` are released whatever the
    // scopes, in the ID token and at userinfo.
    if let Some(d) = &authn.delegation {
        for c in ["act", "mandate"] {
            if let Some(v) = all.get(c) {
                userinfo.insert(c.to_string(), v.clone());
                id_token_extra.insert(c.to_string(), v.clone());
            }
        }
        ctx.app
            .store
            .record_mandate_use(
                &d.aidant_id,
                &d.org_id,
                &d.mandate_id,
                &req.client_id,
                &d.domain,
                ctx.now(),
            )
            .await?;
        tracing::info!(event = "mandate_used", federation = %ctx.fed.id, client = %req.client_id, domain = %d.domain, "mandate used");
    }
    let data = CodeData {
        redirect_uri: req.redirect_uri.clone(),
        code_challenge: req.code_challenge.clone(),
        nonce: req.nonce.clone(),
        scopes: req.scopes.clone(),
        sub,
        userinfo,
        id_token_extra,
        acr: authn.acr.clone(),
        amr: authn.amr.clone(),
        auth_time: authn.auth_time,
        sid: authn.sid.clone(),
        session: session.to_string(),
        delegation: authn.delegation.clone(),
    };
    let code = random_token(32);
    let fed = &ctx.fed;
    ctx.app
        .store
        .insert_code(
            &sha256_b64(code.as_bytes()),
            &fed.id,
            &req.client_id,
            &random_token(16),
            &serde_json::to_string(&data).map_err(AppError::internal)?,
            ctx.now() + fed.cfg.code_ttl_secs,
        )
        .await?;
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = &req.state {
        params.push(("state", s));
    }
    params.push(("iss", &fed.issuer));
    tracing::info!(event = "code_issued", federation = %fed.id, client = %req.client_id, "authorization code issued");
    Ok(redirect(&with_query(&req.redirect_uri, &params)))
}
