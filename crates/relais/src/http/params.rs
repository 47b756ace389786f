//! Request extractors of every route: parameters (a repeated parameter is an error), form and OAuth bodies, path segments and the client address. Their rejections are the route's error channel (an HTML page for browser routes, an OAuth JSON error for the back channel): handlers use them, never axum's `String`/`Form`/`Path`.

use crate::app::Ctx;
use crate::error::AppError;
use crate::http::page::lang_from;
use crate::web::i18n::PageCode;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{request::Parts, HeaderMap, StatusCode};
use std::collections::HashMap;

/// The client's address key (`crate::http::limits::request_address`): the TCP
/// peer, or the trusted `X-Forwarded-For` entry.
pub struct ClientAddress(pub std::net::IpAddr);

impl axum::extract::FromRequestParts<Ctx> for ClientAddress {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Ctx,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(crate::http::limits::request_address(
            parts,
            ctx.app.trust_forwarded,
        )))
    }
}

/// Parameters of a request, from the query string or a form body; a parameter
/// given twice is an error (RFC 6749 §3.1).
#[derive(Debug, Default, Clone)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn parse(raw: &str) -> Result<Params, String> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("parameter {k} is repeated"));
            }
        }
        Ok(Params(map))
    }

    /// A parameter, treating an empty value as absent.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Where a request the extractors cannot read is answered (RFC 6749 §5.2
/// for the back channel, the HTML error page for browser routes).
#[derive(Clone, Copy)]
pub(crate) enum Channel {
    Page,
    OAuth,
}

/// The error for a request whose body or path could not be read: `status`
/// is the rejection's (400, or 413 past the body limit).
pub(crate) fn unreadable(
    ctx: &Ctx,
    headers: &HeaderMap,
    channel: Channel,
    status: StatusCode,
) -> AppError {
    let too_large = status == StatusCode::PAYLOAD_TOO_LARGE;
    let status = if too_large {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    match channel {
        Channel::OAuth => AppError::OAuth {
            status,
            error: "invalid_request",
            description: if too_large {
                "the request body is too large".into()
            } else {
                "the request could not be read (invalid encoding)".into()
            },
        },
        Channel::Page => ctx.page_error(
            lang_from(headers, None),
            status,
            if too_large {
                PageCode::RequestTooLarge
            } else {
                PageCode::InvalidRequest
            },
            None,
        ),
    }
}

pub(crate) async fn read_body(
    req: Request,
    ctx: &Ctx,
    channel: Channel,
) -> Result<String, AppError> {
    let headers = req.headers().clone();
    String::from_request(req, ctx)
        .await
        .map_err(|r| unreadable(ctx, &headers, channel, r.status()))
}

/// A browser form body as text; what cannot be read (not UTF-8, over the
/// body limit) is the HTML error page. Browser routes take this, never
/// axum's `String`, `Form` or `Bytes`, whose rejections are `text/plain`.
pub struct FormBody(pub String);

impl FromRequest<Ctx> for FormBody {
    type Rejection = AppError;
    async fn from_request(req: Request, ctx: &Ctx) -> Result<Self, AppError> {
        read_body(req, ctx, Channel::Page).await.map(FormBody)
    }
}

/// A back-channel (token endpoint) form body as text; what cannot be read is
/// an OAuth JSON `invalid_request` (400, or 413 over the body limit).
pub struct OAuthBody(pub String);

impl FromRequest<Ctx> for OAuthBody {
    type Rejection = AppError;
    async fn from_request(req: Request, ctx: &Ctx) -> Result<Self, AppError> {
        read_body(req, ctx, Channel::OAuth).await.map(OAuthBody)
    }
}

/// The one path parameter of a browser route (`{id}`, `{mid}`, `{token}`);
/// an undecodable one (`%FF`) is the HTML error page, not axum's
/// `text/plain` rejection.
pub struct Segment(pub String);

impl FromRequestParts<Ctx> for Segment {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, AppError> {
        match axum::extract::Path::<String>::from_request_parts(parts, ctx).await {
            Ok(axum::extract::Path(v)) => Ok(Segment(v)),
            Err(r) => Err(unreadable(ctx, &parts.headers, Channel::Page, r.status())),
        }
    }
}
