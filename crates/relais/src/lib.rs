//! Relais: an OpenID Connect identity federation broker.
//!
//! `app(state)` builds the HTTP router used by `relais serve`, `relais demo`
//! and the tests.

pub mod aidants;
pub mod app;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod http;
pub mod oidc;
pub mod server;
pub mod store;
pub mod subject;
pub mod upstream;
pub mod web;

use crate::web::i18n::PageCode;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub use app::AppState;

/// The whole HTTP application: every federation under its issuer path, plus
/// health endpoints.
pub fn app(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz).with_state(state.clone()));
    for fed in &state.federations {
        let r = oidc::router(state.clone(), fed.clone());
        router = if fed.prefix.is_empty() {
            router.merge(r)
        } else {
            router.nest(&fed.prefix, r)
        };
    }
    // The page of an unknown address is the HTML error page, in the
    // first federation's look (the root one when there is one).
    let base = state
        .federations
        .iter()
        .find(|f| f.prefix.is_empty())
        .or(state.federations.first())
        .map(|f| f.base.clone());
    router
        .fallback(move |headers: axum::http::HeaderMap| not_found(base.clone(), headers))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(security_headers))
}

async fn readyz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable",
            )
                .into_response()
        }
    }
}

/// Largest request body read (forms, token requests): far above what a
/// form or a token request needs, small enough that thousands of
/// connections cannot hold much memory. Past it: 413, in the route's error
/// channel (see `oidc::FormBody`, `oidc::OAuthBody`).
pub const BODY_LIMIT: usize = 64 * 1024;

async fn not_found(base: Option<web::PageBase>, headers: axum::http::HeaderMap) -> Response {
    match base {
        Some(mut base) => {
            let lang = http::page::lang_from(&headers, None);
            base.lang = lang.code();
            error::AppError::Page {
                status: axum::http::StatusCode::NOT_FOUND,
                code: PageCode::NotFound,
                detail: None,
                back: None,
                base: Box::new(base),
                lang,
            }
            .into_response()
        }
        None => (axum::http::StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        if !h.contains_key(&k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    };
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self' data: https:; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    resp
}
