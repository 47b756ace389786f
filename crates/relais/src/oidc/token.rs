//! Token endpoint (client authentication, code redemption, ID token) and userinfo.

use super::interaction::CodeData;
use crate::app::Client;
use crate::app::Ctx;
use crate::config::ClientAuthMethod;
use crate::crypto::{half_hash, random_token, sha256_b64};
use crate::error::AppError;
use crate::http::limits::{Held, Limit};
use crate::http::params::ClientAddress;
use crate::http::params::Params;
use crate::store::Redeem;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// What an access token gives access to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenData {
    pub userinfo: Map<String, Value>,
    pub scopes: Vec<String>,
    /// Delegated sign-in: the mandate is re-checked at every userinfo call.
    #[serde(default)]
    pub delegation: Option<crate::oidc::session::Delegation>,
}

/// Failed client authentications (wrong client secrets) counted per
/// (client, client address): past this many in a window, that address gets
/// 429 for that client without any argon2 run.
const PER_ADDRESS: Limit = Limit {
    max: 20,
    window_secs: 60,
};

/// The per-client ceiling over every address. It only binds addresses that
/// already failed in the window: a service whose secret verifies is never
/// refused because others sent wrong secrets under its `client_id`.
const PER_CLIENT: Limit = Limit {
    max: 200,
    window_secs: 60,
};

fn too_many_failures() -> AppError {
    AppError::OAuth {
        status: StatusCode::TOO_MANY_REQUESTS,
        error: "invalid_client",
        description: "too many failed attempts, try again in a minute".into(),
    }
}

/// The credentials of an `Authorization` header value with `scheme`,
/// compared case-insensitively (RFC 7235 §2.1).
pub fn auth_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = value.split_once(' ')?;
    name.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = auth_scheme(v, "Basic")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.to_string())
    };
    Some((dec(id)?, dec(secret)?))
}

/// Authenticate the client with the method it registered.
async fn authenticate<'a>(
    ctx: &'a Ctx,
    headers: &HeaderMap,
    form: &Params,
    address: IpAddr,
) -> Result<&'a Client, AppError> {
    let basic = basic_credentials(headers);
    let assertion = form.get("client_assertion");
    // One authentication method per request (RFC 6749 §2.3).
    let methods = usize::from(headers.contains_key(header::AUTHORIZATION))
        + usize::from(form.get("client_secret").is_some())
        + usize::from(assertion.is_some());
    if methods > 1 {
        return Err(AppError::oauth(
            "invalid_request",
            "use one client authentication method per request",
        ));
    }
    let claimed_id = match (&basic, form.get("client_id"), assertion) {
        (Some((id, _)), _, _) => id.clone(),
        (None, Some(id), _) => id.to_string(),
        (None, None, Some(a)) => crate::upstream::decode_payload(a)
            .and_then(|c| c.get("sub").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default(),
        _ => {
            return Err(AppError::oauth(
                "invalid_client",
                "client authentication is required",
            ))
        }
    };
    let bad = || AppError::oauth("invalid_client", "client authentication failed");
    let client = ctx.fed.clients.get(&claimed_id).ok_or_else(bad)?;
    let secret = match client.cfg.token_endpoint_auth_method {
        ClientAuthMethod::ClientSecretBasic => basic.as_ref().map(|(_, s)| s.clone()),
        ClientAuthMethod::ClientSecretPost if basic.is_none() => {
            form.get("client_secret").map(str::to_string)
        }
        _ => None,
    };
    let result = match client.cfg.token_endpoint_auth_method {
        ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost => {
            match (secret, client.secret_hash.clone()) {
                (Some(secret), Some(phc)) => {
                    verify_client_secret(ctx, client, &phc, &secret, address).await?
                }
                _ => false,
            }
        }
        ClientAuthMethod::PrivateKeyJwt => match (assertion, form.get("client_assertion_type")) {
            (Some(a), Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"))
                if basic.is_none() =>
            {
                verify_assertion(ctx, client, a).await?
            }
            _ => false,
        },
        ClientAuthMethod::None => {
            basic.is_none() && form.get("client_secret").is_none() && assertion.is_none()
        }
    };
    if !result {
        return Err(bad());
    }
    Ok(client)
}

/// A client secret: one HMAC when this exact secret was verified before on
/// this node; otherwise one attempt is reserved in the failure counters
/// (per address, and the per-client ceiling) *before* waiting for the argon2
/// gate, and given back when the secret verifies. So a burst of parallel
/// wrong secrets runs argon2 at most [`PER_ADDRESS`] times per address and
/// window, and the rest are refused at once.
async fn verify_client_secret(
    ctx: &Ctx,
    client: &Client,
    phc: &str,
    secret: &str,
    address: IpAddr,
) -> Result<bool, AppError> {
    let app = &ctx.app;
    let id = client.cfg.client_id.as_str();
    if app.secrets.is_cached(id, phc, secret) {
        return Ok(true);
    }
    let now = ctx.now();
    let per_address = format!("token:{}:{id}:{address}", ctx.fed.id);
    let per_client = format!("token:{}:{id}", ctx.fed.id);
    let Some(by_address) = app
        .throttle
        .try_reserve(&app.store, &per_address, PER_ADDRESS, now)
        .await?
    else {
        tracing::warn!(event = "token_auth_throttled", federation = %ctx.fed.id, client = ?id, "too many failed client authentications from one address");
        return Err(too_many_failures());
    };
    // Given back on every outcome but a wrong secret (a busy gate, a store
    // error, a client that went away are not failures).
    let by_address = Held::new(&app.store, by_address);
    let by_client = app
        .throttle
        .try_reserve(&app.store, &per_client, PER_CLIENT, now)
        .await?
        .map(|r| Held::new(&app.store, r));
    if by_client.is_none() && by_address.count() > 1 {
        tracing::warn!(event = "token_auth_throttled", federation = %ctx.fed.id, client = ?id, "too many failed client authentications for this client");
        return Err(too_many_failures());
    }
    let pass = app.argon2.enter().await.map_err(gate_error)?;
    // Another request may have verified it while we waited.
    if app.secrets.is_cached(id, phc, secret) {
        return Ok(true);
    }
    let (p, s) = (phc.to_string(), secret.to_string());
    let ok = pass
        .run(move || crate::crypto::secrets::verify_secret(&p, &s))
        .await
        .map_err(gate_error)?;
    if ok {
        app.secrets.remember(id, phc, secret);
    } else {
        tracing::info!(event = "client_auth_failed", federation = %ctx.fed.id, client = ?id, reason = "wrong secret", "client authentication failed");
        by_address.failed();
        if let Some(c) = by_client {
            c.failed();
        }
    }
    Ok(ok)
}

fn gate_error(e: crate::crypto::gate::GateError) -> AppError {
    match e {
        crate::crypto::gate::GateError::Busy => AppError::Unavailable(e.to_string()),
        crate::crypto::gate::GateError::Worker(_) => AppError::internal(e),
    }
}

/// The claims of a client assertion (RFC 7523 §3, with the 2025 audience
/// advice of the OpenID Foundation): `iss` = `sub` = the client id; `aud` a
/// single string, one of `audiences` (the issuer; the token endpoint URL
/// only for clients that opted in), never an array; `exp` in the future and
/// at most 10 minutes ahead; `iat` (required) and `nbf` (if present) not in
/// the future (60 s of clock skew); a `jti`.
pub fn assertion_claims_ok(
    c: &Map<String, Value>,
    client_id: &str,
    audiences: &[&str],
    now: i64,
) -> Result<(), &'static str> {
    const SKEW: i64 = 60;
    let s = |k: &str| c.get(k).and_then(Value::as_str);
    if s("iss") != Some(client_id) || s("sub") != Some(client_id) {
        return Err("iss and sub must be the client id");
    }
    match c.get("aud") {
        Some(Value::String(a)) if audiences.contains(&a.as_str()) => {}
        Some(Value::Array(_)) => return Err("aud must be a single string"),
        _ => return Err("wrong audience"),
    }
    let exp = c
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or("exp is required")?;
    if exp <= now || exp > now + 600 {
        return Err("exp must be within the next 10 minutes");
    }
    let iat = c
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or("iat is required")?;
    if iat > now + SKEW {
        return Err("iat is in the future");
    }
    if let Some(nbf) = c.get("nbf") {
        if nbf.as_i64().is_none_or(|n| n > now + SKEW) {
            return Err("nbf is in the future");
        }
    }
    if s("jti").is_none_or(str::is_empty) {
        return Err("jti is required");
    }
    Ok(())
}

/// private_key_jwt (RFC 7523): signature with the client's keys, the claims
/// of [`assertion_claims_ok`], jti never seen.
async fn verify_assertion(ctx: &Ctx, client: &Client, jwt: &str) -> Result<bool, AppError> {
    let jwks = match (&client.jwks, &client.cfg.jwks_uri) {
        (Some(j), _) => j.clone(),
        (None, Some(uri)) => fetch_client_jwks(ctx, uri).await?,
        _ => return Ok(false),
    };
    let Some((jti, exp)) = check_assertion(ctx, client, &jwks, jwt) else {
        return Ok(false);
    };
    let id = client.cfg.client_id.as_str();
    if !ctx
        .app
        .store
        .record_jti(&ctx.fed.id, id, &jti, exp + 60)
        .await?
    {
        tracing::warn!(event = "client_auth_failed", client = ?id, reason = "jti replayed", "client assertion jti replayed");
        return Ok(false);
    }
    Ok(true)
}

/// The checks of a client assertion that need no storage: signature with the
/// client's `jwks`, RS256 or ES256, and the claims of
/// [`assertion_claims_ok`]. Returns the `jti` and `exp` to record (replay
/// check).
pub fn check_assertion(
    ctx: &Ctx,
    client: &Client,
    jwks: &Value,
    jwt: &str,
) -> Option<(String, i64)> {
    let u = match crate::crypto::jws::verify_with_jwks(jwt, jwks) {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(event = "client_auth_failed", federation = %ctx.fed.id, client = ?client.cfg.client_id, error = %e, "client assertion rejected");
            return None;
        }
    };
    if !matches!(
        u.alg(),
        Ok(crate::crypto::Alg::RS256 | crate::crypto::Alg::ES256)
    ) {
        return None;
    }
    let c = &u.claims;
    let id = client.cfg.client_id.as_str();
    let token_url = ctx.fed.url("/token");
    let audiences: &[&str] = if client.cfg.assertion_audience_token_endpoint {
        &[&ctx.fed.issuer, &token_url]
    } else {
        &[&ctx.fed.issuer]
    };
    if let Err(reason) = assertion_claims_ok(c, id, audiences, ctx.now()) {
        tracing::info!(event = "client_auth_failed", federation = %ctx.fed.id, client = ?id, reason, "client assertion rejected");
        return None;
    }
    let exp = c.get("exp").and_then(Value::as_i64)?;
    let jti = c.get("jti").and_then(Value::as_str)?;
    Some((jti.to_string(), exp))
}

async fn fetch_client_jwks(ctx: &Ctx, uri: &str) -> Result<Value, AppError> {
    static CACHE: std::sync::LazyLock<Mutex<HashMap<String, (i64, Value)>>> =
        std::sync::LazyLock::new(Default::default);
    let now = ctx.now();
    if let Some((at, v)) = CACHE.lock().ok().and_then(|m| m.get(uri).cloned()) {
        if now - at < 300 {
            return Ok(v);
        }
    }
    let v: Value = ctx
        .app
        .http
        .get(uri)
        .send()
        .await
        .map_err(|e| {
            AppError::oauth(
                "invalid_client",
                format!("client jwks_uri unreachable: {e}"),
            )
        })?
        .json()
        .await
        .map_err(|_| AppError::oauth("invalid_client", "client jwks_uri is not a JWK set"))?;
    if let Ok(mut m) = CACHE.lock() {
        m.insert(uri.to_string(), (now, v.clone()));
    }
    Ok(v)
}

fn no_store_json(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Whether this token request may redeem a code issued as `data` to
/// `code_client` (RFC 6749 §4.1.3, RFC 7636 §4.6): the same client, the
/// same `redirect_uri`, the PKCE verifier of the challenge.
fn redemption_rule(
    code_client: &str,
    data: &CodeData,
    client: &Client,
    form: &Params,
) -> Result<(), AppError> {
    if code_client != client.cfg.client_id {
        return Err(AppError::oauth(
            "invalid_grant",
            "code was issued to another client",
        ));
    }
    if form.get("redirect_uri") != Some(data.redirect_uri.as_str()) {
        return Err(AppError::oauth(
            "invalid_grant",
            "redirect_uri does not match the authorization request",
        ));
    }
    match (&data.code_challenge, form.get("code_verifier")) {
        (Some(challenge), Some(verifier)) => {
            let ok_len = (43..=128).contains(&verifier.len());
            if !ok_len || sha256_b64(verifier.as_bytes()) != *challenge {
                return Err(AppError::oauth(
                    "invalid_grant",
                    "code_verifier does not match the code_challenge",
                ));
            }
        }
        (Some(_), None) => {
            return Err(AppError::oauth(
                "invalid_grant",
                "code_verifier is required",
            ))
        }
        (None, Some(_)) => {
            return Err(AppError::oauth(
                "invalid_grant",
                "no code_challenge was sent with the authorization request",
            ))
        }
        (None, None) => {}
    }
    Ok(())
}

pub async fn token(
    State(ctx): State<Ctx>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    crate::http::params::OAuthBody(body): crate::http::params::OAuthBody,
) -> Result<Response, AppError> {
    let form = Params::parse(&body).map_err(|e| AppError::oauth("invalid_request", e))?;
    let client = authenticate(&ctx, &headers, &form, address).await?;
    match form.get("grant_type") {
        Some("authorization_code") => {}
        Some(_) => {
            return Err(AppError::oauth(
                "unsupported_grant_type",
                "only authorization_code is supported",
            ))
        }
        None => return Err(AppError::oauth("invalid_request", "grant_type is required")),
    }
    let code = form
        .get("code")
        .ok_or_else(|| AppError::oauth("invalid_request", "code is required"))?;
    let fed = &ctx.fed;
    let now = ctx.now();
    let code_hash = sha256_b64(code.as_bytes());
    let (grant_id, data) = match ctx.app.store.redeem_code(&code_hash, &fed.id, now).await? {
        Redeem::Fresh {
            client_id,
            grant_id,
            data,
        } => {
            let data: CodeData = serde_json::from_str(&data).map_err(AppError::internal)?;
            if let Err(refused) = redemption_rule(&client_id, &data, client, &form) {
                // A mistake of this request does not use the code up (the
                // legitimate request may still come): see docs/security.md.
                ctx.app
                    .store
                    .restore_code(&code_hash, &fed.id, &grant_id)
                    .await?;
                return Err(refused);
            }
            (grant_id, data)
        }
        Redeem::Reused { grant_id } => {
            tracing::warn!(federation = %fed.id, client = ?client.cfg.client_id, grant = %grant_id, "authorization code reused: tokens revoked");
            return Err(AppError::oauth("invalid_grant", "code already used"));
        }
        Redeem::Unknown => {
            return Err(AppError::oauth(
                "invalid_grant",
                "code is invalid or expired",
            ))
        }
    };
    // Delegated sign-in: the mandate must still be valid for the domain.
    if let Some(d) = &data.delegation {
        if !ctx
            .app
            .store
            .active_authorisation(&d.mandate_id, &d.domain, now)
            .await?
        {
            tracing::info!(event = "mandate_refused", federation = %fed.id, client = %client.cfg.client_id, step = "token", "mandate no longer valid");
            return Err(AppError::oauth(
                "invalid_grant",
                "the mandate is expired or revoked",
            ));
        }
    }
    let access_token = random_token(32);
    let ttl = fed.cfg.access_token_ttl_secs;
    let token_data = TokenData {
        userinfo: data.userinfo.clone(),
        scopes: data.scopes.clone(),
        delegation: data.delegation.clone(),
    };
    ctx.app
        .store
        .insert_token(
            &sha256_b64(access_token.as_bytes()),
            &fed.id,
            &client.cfg.client_id,
            &grant_id,
            &data.session,
            &serde_json::to_string(&token_data).map_err(AppError::internal)?,
            now + ttl,
        )
        .await?;
    let mut claims = json!({
        "iss": fed.issuer,
        "sub": data.sub,
        "aud": client.cfg.client_id,
        "exp": now + fed.cfg.id_token_ttl_secs,
        "iat": now,
        "auth_time": data.auth_time,
        "amr": data.amr,
        "at_hash": half_hash(client.id_token_alg, &access_token),
        "sid": data.sid,
    });
    if let Some(obj) = claims.as_object_mut() {
        if let Some(n) = &data.nonce {
            obj.insert("nonce".into(), json!(n));
        }
        if let Some(a) = &data.acr {
            obj.insert("acr".into(), json!(a));
        }
        for (k, v) in &data.id_token_extra {
            obj.entry(k.clone()).or_insert(v.clone());
        }
    }
    let keys = fed.keys.get();
    let key = keys
        .signer(client.id_token_alg)
        .ok_or_else(|| AppError::internal(format!("no active {} key", client.id_token_alg)))?;
    let id_token = key.sign_jwt("JWT", &claims).map_err(AppError::internal)?;
    tracing::info!(event = "token_issued", federation = %fed.id, client = %client.cfg.client_id, "tokens issued");
    let body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "id_token": id_token,
        "scope": data.scopes.join(" "),
    });
    Ok(no_store_json(body.to_string()))
}

pub async fn userinfo(State(ctx): State<Ctx>, headers: HeaderMap) -> Result<Response, AppError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = auth_scheme(auth, "Bearer")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::Bearer {
            status: axum::http::StatusCode::UNAUTHORIZED,
            error: "invalid_request",
            description: "a Bearer access token is required".into(),
        })?;
    let fed = &ctx.fed;
    let row = ctx
        .app
        .store
        .get_token(&sha256_b64(token.as_bytes()), &fed.id, ctx.now())
        .await?
        .ok_or_else(|| AppError::bearer("the access token is invalid, expired or revoked"))?;
    let data: TokenData = serde_json::from_str(&row.data).map_err(AppError::internal)?;
    if let Some(d) = &data.delegation {
        if !ctx
            .app
            .store
            .active_authorisation(&d.mandate_id, &d.domain, ctx.now())
            .await?
        {
            tracing::info!(event = "mandate_refused", federation = %fed.id, client = %row.client_id, step = "userinfo", "mandate no longer valid");
            return Err(AppError::bearer(
                "the mandate behind this access token is expired or revoked",
            ));
        }
    }
    let client = fed.clients.get(&row.client_id);
    if let Some(alg) = client.and_then(|c| c.userinfo_alg) {
        let mut claims = data.userinfo.clone();
        claims.insert("iss".into(), json!(fed.issuer));
        claims.insert("aud".into(), json!(row.client_id));
        claims.insert("iat".into(), json!(ctx.now()));
        let keys = fed.keys.get();
        let key = keys
            .signer(alg)
            .ok_or_else(|| AppError::internal(format!("no active {alg} key")))?;
        let jwt = key
            .sign_jwt("JWT", &Value::Object(claims))
            .map_err(AppError::internal)?;
        return Ok((
            [
                (header::CONTENT_TYPE, "application/jwt"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            jwt,
        )
            .into_response());
    }
    Ok(no_store_json(Value::Object(data.userinfo).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn assertion_audience_and_times() {
        let iss = "https://id.example";
        let tok = "https://id.example/token";
        let now = 1_000_000;
        let base =
            json!({"iss": "c", "sub": "c", "aud": iss, "exp": now + 60, "iat": now, "jti": "j"});
        let with = |k: &str, v: Value| {
            let mut c = claims(base.clone());
            c.insert(k.into(), v);
            c
        };
        assert_eq!(
            assertion_claims_ok(&claims(base.clone()), "c", &[iss], now),
            Ok(())
        );
        // The token endpoint only when the client opted in; arrays never.
        assert!(assertion_claims_ok(&with("aud", json!(tok)), "c", &[iss], now).is_err());
        assert_eq!(
            assertion_claims_ok(&with("aud", json!(tok)), "c", &[iss, tok], now),
            Ok(())
        );
        assert!(assertion_claims_ok(&with("aud", json!([iss])), "c", &[iss, tok], now).is_err());
        assert!(assertion_claims_ok(&with("aud", json!([iss, "x"])), "c", &[iss], now).is_err());
        assert!(
            assertion_claims_ok(&with("aud", json!("https://other")), "c", &[iss], now).is_err()
        );
        // iss / sub.
        assert!(assertion_claims_ok(&with("sub", json!("d")), "c", &[iss], now).is_err());
        assert!(assertion_claims_ok(&claims(base.clone()), "d", &[iss], now).is_err());
        // exp: in the future, at most 10 minutes.
        assert!(assertion_claims_ok(&with("exp", json!(now)), "c", &[iss], now).is_err());
        assert!(assertion_claims_ok(&with("exp", json!(now + 601)), "c", &[iss], now).is_err());
        assert_eq!(
            assertion_claims_ok(&with("exp", json!(now + 600)), "c", &[iss], now),
            Ok(())
        );
        // iat required and not in the future; nbf not in the future.
        let mut no_iat = claims(base.clone());
        no_iat.remove("iat");
        assert!(assertion_claims_ok(&no_iat, "c", &[iss], now).is_err());
        assert!(assertion_claims_ok(&with("iat", json!(now + 61)), "c", &[iss], now).is_err());
        assert_eq!(
            assertion_claims_ok(&with("iat", json!(now + 30)), "c", &[iss], now),
            Ok(())
        );
        assert!(assertion_claims_ok(&with("nbf", json!(now + 120)), "c", &[iss], now).is_err());
        assert!(assertion_claims_ok(&with("nbf", json!("soon")), "c", &[iss], now).is_err());
        assert_eq!(
            assertion_claims_ok(&with("nbf", json!(now - 5)), "c", &[iss], now),
            Ok(())
        );
        // jti.
        assert!(assertion_claims_ok(&with("jti", json!("")), "c", &[iss], now).is_err());
    }
}
