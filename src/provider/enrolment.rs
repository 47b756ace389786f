//! TOTP enrolment by a one-time link (`/aidant/enrolment/{token}`), issued
//! by `relais aidants create --enrolment-link` or `reset-totp
//! --enrolment-link`. The page shows the new secret as an `otpauth://` URI
//! and a QR code; the aidant confirms it with their password and a first
//! code. Until then the new secret does not sign in (see
//! `Store::issue_enrolment`).

use super::aidant::SignInGuard;
use super::{lang_from, Ctx, Params};
use crate::config::Profile;
use crate::error::AppError;
use crate::mandates::{cli::utc, LoginError, TotpKey};
use crate::web::Lang;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

fn key(ctx: &Ctx) -> Result<&TotpKey, AppError> {
    Ok(&ctx.app.totp_key)
}

/// SVG of a QR code for `text`.
pub fn qr_svg(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

async fn form(ctx: &Ctx, lang: Lang, token: &str, error: bool) -> Result<Response, AppError> {
    if ctx.fed.cfg.profile != Profile::Citizen {
        return Err(ctx.page_error(lang, StatusCode::NOT_FOUND, "not_found", None));
    }
    let pending = ctx
        .app
        .store
        .pending_enrolment(token, key(ctx)?, ctx.now())
        .await?
        .ok_or_else(|| ctx.page_error(lang, StatusCode::NOT_FOUND, "not_found", None))?;
    let uri = pending.otpauth_uri();
    let qr = qr_svg(&uri).map_err(AppError::internal)?;
    let mut resp = ctx.page(
        lang,
        "aidant_enrolment.html",
        minijinja::context! {
            email => pending.email,
            otpauth_uri => uri,
            secret => pending.totp_secret,
            qr_svg => minijinja::Value::from_safe_string(qr),
            expires => utc(pending.expires_at),
            action => ctx.fed.url(&format!("/aidant/enrolment/{token}")),
            error => error,
        },
    )?;
    if error {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
    }
    // The page shows a secret: never cached, never sent as a referrer.
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        axum::http::header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("no-referrer"),
    );
    Ok(resp)
}

/// `GET /aidant/enrolment/{token}`.
pub async fn page(
    State(ctx): State<Ctx>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    form(&ctx, lang_from(&headers, None), &token, false).await
}

/// `POST /aidant/enrolment/{token}`: password and first code.
pub async fn submit(
    State(ctx): State<Ctx>,
    Path(token): Path<String>,
    headers: HeaderMap,
    guard: SignInGuard,
    body: String,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    if ctx.fed.cfg.profile != Profile::Citizen {
        return Err(ctx.page_error(lang, StatusCode::NOT_FOUND, "not_found", None));
    }
    if let Some(resp) = guard.refuse(&ctx, lang) {
        return Ok(resp);
    }
    let f = Params::parse(&body).unwrap_or_default();
    let result = ctx
        .app
        .store
        .confirm_enrolment(
            &token,
            f.get("password").unwrap_or(""),
            f.get("totp").unwrap_or("").trim(),
            key(&ctx)?,
            ctx.now(),
        )
        .await;
    match result {
        Ok(aidant) => {
            tracing::info!(event = "aidant_totp_enrolled", federation = %ctx.fed.id, %aidant, "aidant TOTP enrolled");
            let resp = ctx.page(
                lang,
                "aidant_enrolment.html",
                minijinja::context! {
                    done => true,
                    home => ctx.fed.url("/aidant"),
                },
            )?;
            Ok(resp.into_response())
        }
        Err(LoginError::Refused) => {
            guard.failed(&ctx);
            form(&ctx, lang, &token, true).await
        }
        Err(LoginError::Store(e)) => Err(e.into()),
    }
}
