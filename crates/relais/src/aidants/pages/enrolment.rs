//! TOTP enrolment by a one-time link (`/aidant/enrolment/{token}`), issued
//! by `relais aidants create --enrolment-link` or `reset-totp
//! --enrolment-link`. The link alone shows no secret: `GET` asks for the
//! aidant's password; a right password (`step=password`) shows the new
//! secret as an `otpauth://` URI and a QR code, with a signed proof of the
//! password check valid [`PROOF_TTL_SECS`]; the aidant confirms it with a
//! first code and that proof (`step=code`). Until then the new secret does
//! not sign in (see `Store::issue_enrolment`).

use super::interaction::SignInGuard;
use crate::aidants::{cli::utc, LoginError, PendingEnrolment, TotpKey};
use crate::app::Ctx;
use crate::error::AppError;
use crate::http::page::lang_from;
use crate::http::params::FormBody;
use crate::http::params::Params;
use crate::http::params::Segment;
use crate::web::i18n::PageCode;
use crate::web::Lang;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// How long the proof of a password check lets the aidant see the secret
/// and confirm it.
pub const PROOF_TTL_SECS: i64 = 600;

/// Purpose of the HMAC key (derived from the TOTP key) signing proofs.
const PROOF_PURPOSE: &str = "aidant-enrolment-proof-v1";

/// Tolerated clock difference between nodes, for a proof issued "later".
const PROOF_SKEW_SECS: i64 = 60;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn proof_message(token: &str, aidant_id: &str, issued_at: i64) -> Vec<u8> {
    format!("{PROOF_PURPOSE}\0{token}\0{aidant_id}\0{issued_at}").into_bytes()
}

/// The proof that the password of `aidant_id` was checked for the link
/// `token` at `issued_at`: `{issued_at}.{base64url(HMAC-SHA256)}`.
pub fn sign_proof(key: &TotpKey, token: &str, aidant_id: &str, issued_at: i64) -> String {
    let tag = ring::hmac::sign(
        &key.derived_hmac_key(PROOF_PURPOSE),
        &proof_message(token, aidant_id, issued_at),
    );
    format!("{issued_at}.{}", B64.encode(tag.as_ref()))
}

/// Whether `proof` was signed by [`sign_proof`] for this link and aidant,
/// less than [`PROOF_TTL_SECS`] before `now`.
pub fn check_proof(key: &TotpKey, proof: &str, token: &str, aidant_id: &str, now: i64) -> bool {
    let Some((at, tag)) = proof.split_once('.') else {
        return false;
    };
    let (Ok(issued_at), Ok(tag)) = (at.parse::<i64>(), B64.decode(tag)) else {
        return false;
    };
    if issued_at > now.saturating_add(PROOF_SKEW_SECS)
        || now.saturating_sub(issued_at) >= PROOF_TTL_SECS
    {
        return false;
    }
    ring::hmac::verify(
        &key.derived_hmac_key(PROOF_PURPOSE),
        &proof_message(token, aidant_id, issued_at),
        &tag,
    )
    .is_ok()
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

/// Every page of the flow: never cached, never sent as a referrer (the
/// address holds the link's token, the code step shows a secret).
fn private(mut resp: Response, status: StatusCode) -> Response {
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        axum::http::header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// 401 for a page shown again with an error, else 200.
fn status(error: bool) -> StatusCode {
    if error {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

fn not_found(ctx: &Ctx, lang: Lang) -> Response {
    private(
        ctx.page_error(lang, StatusCode::NOT_FOUND, PageCode::NotFound, None)
            .into_response(),
        StatusCode::NOT_FOUND,
    )
}

/// First step: the account's e-mail and a password field, no secret.
/// `error`: wrong password (or a refused step); `expired`: the proof of
/// the password check was missing, wrong or too old.
async fn password_form(
    ctx: &Ctx,
    lang: Lang,
    token: &str,
    error: bool,
    expired: bool,
) -> Result<Response, AppError> {
    let Some(pending) = ctx
        .app
        .store
        .pending_enrolment(token, &ctx.app.totp_key, ctx.now())
        .await?
    else {
        return Ok(not_found(ctx, lang));
    };
    password_page(ctx, lang, token, &pending, error, expired)
}

/// The password form for the pending enrolment `pending`.
fn password_page(
    ctx: &Ctx,
    lang: Lang,
    token: &str,
    pending: &PendingEnrolment,
    error: bool,
    expired: bool,
) -> Result<Response, AppError> {
    let resp = ctx.page(
        lang,
        "aidant_enrolment.html",
        minijinja::context! {
            step => "password",
            email => pending.email,
            expires => utc(pending.expires_at),
            action => ctx.fed.url(&format!("/aidant/enrolment/{token}")),
            error => error,
            expired => expired,
        },
    )?;
    Ok(private(resp, status(error || expired)))
}

/// Second step, after a right password: the secret (QR code, URI, base32
/// key), a code field and the proof of the password check.
fn code_form(
    ctx: &Ctx,
    lang: Lang,
    token: &str,
    pending: &PendingEnrolment,
    proof: &str,
    error: bool,
) -> Result<Response, AppError> {
    let uri = pending.otpauth_uri();
    let qr = qr_svg(&uri).map_err(AppError::internal)?;
    let resp = ctx.page(
        lang,
        "aidant_enrolment.html",
        minijinja::context! {
            step => "code",
            email => pending.email,
            otpauth_uri => uri,
            secret => pending.totp_secret,
            qr_svg => minijinja::Value::from_safe_string(qr),
            expires => utc(pending.expires_at),
            action => ctx.fed.url(&format!("/aidant/enrolment/{token}")),
            proof => proof,
            error => error,
        },
    )?;
    Ok(private(resp, status(error)))
}

/// `GET /aidant/enrolment/{token}`: the password form.
pub async fn page(
    State(ctx): State<Ctx>,
    Segment(token): Segment,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    password_form(&ctx, lang, &token, false, false).await
}

/// `POST /aidant/enrolment/{token}`: `step=password` (the password; shows
/// the secret) or `step=code` (the proof and a first code; enrols).
pub async fn submit(
    State(ctx): State<Ctx>,
    Segment(token): Segment,
    headers: HeaderMap,
    guard: SignInGuard,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let lang = lang_from(&headers, None);
    if let Some(resp) = guard.refuse(&ctx, lang).await? {
        return Ok(private(resp, StatusCode::TOO_MANY_REQUESTS));
    }
    let f = Params::parse(&body).unwrap_or_default();
    let now = ctx.now();
    if f.get("step") != Some("code") {
        let result = ctx
            .app
            .store
            .check_enrolment_password(
                &token,
                f.get("password").unwrap_or(""),
                &ctx.app.totp_key,
                now,
            )
            .await;
        return match result {
            Ok(pending) => {
                let proof = sign_proof(&ctx.app.totp_key, &token, &pending.aidant_id, now);
                code_form(&ctx, lang, &token, &pending, &proof, false)
            }
            Err(LoginError::Refused) => {
                guard.failed(&ctx).await?;
                password_form(&ctx, lang, &token, true, false).await
            }
            Err(LoginError::Store(e)) => Err(e.into()),
        };
    }
    let Some(pending) = ctx
        .app
        .store
        .pending_enrolment(&token, &ctx.app.totp_key, now)
        .await?
    else {
        guard.failed(&ctx).await?;
        return Ok(not_found(&ctx, lang));
    };
    let proof = f.get("proof").unwrap_or("");
    if !check_proof(&ctx.app.totp_key, proof, &token, &pending.aidant_id, now) {
        guard.failed(&ctx).await?;
        return password_page(&ctx, lang, &token, &pending, false, true);
    }
    let result = ctx
        .app
        .store
        .confirm_enrolment(
            &token,
            &pending.aidant_id,
            f.get("totp").unwrap_or("").trim(),
            &ctx.app.totp_key,
            now,
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
            Ok(private(resp, StatusCode::OK))
        }
        Err(LoginError::Refused) => {
            guard.failed(&ctx).await?;
            code_form(&ctx, lang, &token, &pending, proof, true)
        }
        Err(LoginError::Store(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_bound_to_link_aidant_and_time() {
        let key = TotpKey::new(&[7u8; 32]).unwrap();
        let p = sign_proof(&key, "tok", "aid", 1000);
        assert!(check_proof(&key, &p, "tok", "aid", 1000));
        assert!(check_proof(
            &key,
            &p,
            "tok",
            "aid",
            1000 + PROOF_TTL_SECS - 1
        ));
        assert!(!check_proof(&key, &p, "tok", "aid", 1000 + PROOF_TTL_SECS));
        assert!(!check_proof(
            &key,
            &p,
            "tok",
            "aid",
            1000 - PROOF_SKEW_SECS - 1
        ));
        assert!(!check_proof(&key, &p, "other", "aid", 1000));
        assert!(!check_proof(&key, &p, "tok", "other", 1000));
        // Extreme times are refused without overflowing.
        for at in [i64::MIN, i64::MAX] {
            let forged = format!("{at}.{}", p.split_once('.').unwrap().1);
            assert!(!check_proof(&key, &forged, "tok", "aid", 1000));
            assert!(!check_proof(&key, &forged, "tok", "aid", i64::MAX));
        }
        let other = TotpKey::new(&[8u8; 32]).unwrap();
        assert!(!check_proof(&other, &p, "tok", "aid", 1000));
        // The time is signed: moving it forward breaks the tag.
        let tag = p.split_once('.').unwrap().1;
        assert!(!check_proof(
            &key,
            &format!("1500.{tag}"),
            "tok",
            "aid",
            1500
        ));
        for bad in ["", "1000", "1000.", "x.y", "1000.!!"] {
            assert!(!check_proof(&key, bad, "tok", "aid", 1000));
        }
    }
}
