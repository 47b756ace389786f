//! One error type, rendered the way the specifications say: an OAuth JSON error
//! (token endpoint), a Bearer challenge (userinfo), an error redirect to a
//! trusted redirect URI with `state` and `iss` (RFC 6749 §4.1.2.1, RFC 9207),
//! or an HTML page with an error code when nothing can be trusted.

use crate::store::StoreError;
use crate::web::i18n::PageCode;
use crate::web::{self, Lang, PageBase};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub enum AppError {
    /// HTML error page. `back` is a URL returning `access_denied` to the service.
    Page {
        status: StatusCode,
        code: PageCode,
        detail: Option<String>,
        back: Option<String>,
        base: Box<PageBase>,
        lang: Lang,
    },
    /// Error sent back to the client's (already verified) redirect URI.
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
        iss: String,
    },
    /// JSON error of the token endpoint (RFC 6749 §5.2).
    OAuth {
        status: StatusCode,
        error: &'static str,
        description: String,
    },
    /// Bearer token error (RFC 6750 §3).
    Bearer {
        status: StatusCode,
        error: &'static str,
        description: String,
    },
    /// Database unreachable: 503, retry later.
    Unavailable(String),
    Internal(String),
}

impl AppError {
    pub fn oauth(error: &'static str, description: impl Into<String>) -> AppError {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        AppError::OAuth {
            status,
            error,
            description: description.into(),
        }
    }

    pub fn bearer(description: impl Into<String>) -> AppError {
        AppError::Bearer {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_token",
            description: description.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> AppError {
        AppError::Internal(e.to_string())
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => AppError::Unavailable(m),
            StoreError::Other(m) => AppError::Internal(m),
        }
    }
}

impl From<crate::aidants::LoginError> for AppError {
    fn from(e: crate::aidants::LoginError) -> Self {
        match e {
            crate::aidants::LoginError::Store(e) => e.into(),
            e @ crate::aidants::LoginError::Refused => AppError::internal(e),
        }
    }
}

impl From<crate::aidants::MandateError> for AppError {
    fn from(e: crate::aidants::MandateError) -> Self {
        match e {
            crate::aidants::MandateError::Store(e) => e.into(),
            e => AppError::Internal(format!("{e:?}")),
        }
    }
}

/// Build `uri` with extra query parameters (keeps the URI's own query).
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(uri) {
        // No parameters: the URI as it is (no empty `?`).
        Ok(_) if params.is_empty() => uri.to_string(),
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => uri.to_string(),
    }
}

pub fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => AppError::Internal("invalid redirect location".into()).into_response(),
    }
}

fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": error, "error_description": description}).to_string();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn page(
    status: StatusCode,
    code: PageCode,
    detail: Option<&str>,
    back: Option<&str>,
    base: &PageBase,
    lang: Lang,
) -> Response {
    let message = web::i18n::error_text(lang, code);
    let html = web::render(
        "error.html",
        base,
        lang,
        minijinja::context! { code => code.as_str(), message => message, detail => detail, back_url => back },
    )
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "error page did not render");
        format!(
            "<!doctype html><html lang=\"fr\"><title>Erreur</title><h1>Erreur</h1><p>{}</p><p>{}</p>",
            web::escape(message),
            web::escape(code.as_str())
        )
    });
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Page {
                status,
                code,
                detail,
                back,
                base,
                lang,
            } => {
                tracing::info!(
                    error = code.as_str(),
                    status = status.as_u16(),
                    "error page"
                );
                page(
                    status,
                    code,
                    detail.as_deref(),
                    back.as_deref(),
                    &base,
                    lang,
                )
            }
            AppError::Redirect {
                redirect_uri,
                error,
                description,
                state,
                iss,
            } => {
                tracing::info!(error, ?description, "error redirect to client");
                let mut params = vec![
                    ("error", error),
                    ("error_description", description.as_str()),
                ];
                if let Some(s) = state.as_deref() {
                    params.push(("state", s));
                }
                params.push(("iss", iss.as_str()));
                redirect(&with_query(&redirect_uri, &params))
            }
            AppError::OAuth {
                status,
                error,
                description,
            } => {
                tracing::info!(error, ?description, "token endpoint error");
                let mut resp = json_error(status, error, &description);
                if status == StatusCode::TOO_MANY_REQUESTS {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
                }
                if status == StatusCode::UNAUTHORIZED {
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"relais\""),
                    );
                }
                resp
            }
            AppError::Bearer {
                status,
                error,
                description,
            } => {
                tracing::info!(error, ?description, "bearer error");
                let challenge = format!(
                    "Bearer error=\"{error}\", error_description=\"{}\"",
                    description.replace('"', "'")
                );
                let mut resp = json_error(status, error, &description);
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                resp
            }
            AppError::Unavailable(m) => {
                tracing::warn!(error = ?m, "dependency unavailable");
                let mut resp = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the service is temporarily unavailable, try again later",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                resp
            }
            AppError::Internal(m) => {
                tracing::error!(error = ?m, "internal error");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error",
                )
            }
        }
    }
}
