//! Public documents of a federation: the discovery document (serialised once per key set), the JWKS, the built-in and theme style sheets.

use crate::app::Ctx;
use crate::app::Federation;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub(crate) async fn discovery(State(ctx): State<Ctx>) -> Response {
    let keys = ctx.fed.keys.get();
    let cached = ctx.fed.discovery.lock().ok().and_then(|c| {
        c.as_ref()
            .filter(|(k, _)| Arc::ptr_eq(k, &keys))
            .map(|(_, doc)| doc.clone())
    });
    let doc = match cached {
        Some(doc) => doc,
        None => {
            let doc: Arc<str> = discovery_document(&ctx.fed, &keys).into();
            if let Ok(mut c) = ctx.fed.discovery.lock() {
                *c = Some((keys, doc.clone()));
            }
            doc
        }
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        doc.to_string(),
    )
        .into_response()
}

/// The federation's OpenID Provider metadata, as JSON text.
pub(crate) fn discovery_document(f: &Federation, keys: &crate::crypto::KeySet) -> String {
    let algs: Vec<&str> = keys.active_algs().into_iter().map(|a| a.as_str()).collect();
    let scopes: Vec<&str> = f.cfg.profile.scopes().to_vec();
    let claims_supported = match f.cfg.profile {
        crate::config::Profile::Citizen => super::claims::CLAIMS_SUPPORTED
            .iter()
            .chain(["act", "mandate"].iter())
            .copied()
            .collect::<Vec<_>>(),
        crate::config::Profile::Agent => super::claims::AGENT_CLAIMS_SUPPORTED.to_vec(),
    };
    let doc = serde_json::json!({
        "issuer": f.issuer,
        "authorization_endpoint": f.url("/authorize"),
        "token_endpoint": f.url("/token"),
        "userinfo_endpoint": f.url("/userinfo"),
        "jwks_uri": f.url("/jwks"),
        "end_session_endpoint": f.url("/session/end"),
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": if f.cfg.profile == crate::config::Profile::Agent { vec!["pairwise", "public"] } else { vec!["pairwise"] },
        "id_token_signing_alg_values_supported": algs,
        "userinfo_signing_alg_values_supported": algs,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": claims_supported,
        "claims_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "acr_values_supported": f.cfg.acr_values,
        "prompt_values_supported": ["none", "login", "consent"],
        "ui_locales_supported": ["fr", "en"],
        "claims_locales_supported": ["fr"],
        "authorization_response_iss_parameter_supported": true,
        "frontchannel_logout_supported": false,
        "backchannel_logout_supported": false,
    });
    doc.to_string()
}

pub(crate) async fn jwks(State(ctx): State<Ctx>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        ctx.fed.keys.get().jwks_json().to_string(),
    )
        .into_response()
}

pub(crate) async fn relais_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        crate::web::RELAIS_CSS,
    )
        .into_response()
}

pub(crate) async fn theme_css(State(ctx): State<Ctx>) -> Response {
    let t = &ctx.fed.cfg.theme;
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        crate::web::theme_css(t.primary_color.as_deref(), t.extra_css.as_deref()),
    )
        .into_response()
}
