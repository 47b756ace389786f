//! Token endpoint (client authentication, code redemption, ID token) and userinfo.

use super::authorize::CodeData;
use super::{Ctx, Params};
use crate::config::ClientAuthMethod;
use crate::crypto::{half_hash, random_token, sha256_b64};
use crate::error::AppError;
use crate::state::Client;
use crate::store::Redeem;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// What an access token gives access to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenData {
    pub userinfo: Map<String, Value>,
    pub scopes: Vec<String>,
    /// Delegated sign-in: the mandate is re-checked at every userinfo call.
    #[serde(default)]
    pub delegation: Option<super::Delegation>,
}

/// Failed client authentications per client, per minute.
#[derive(Default)]
pub struct FailureLimiter {
    slots: Mutex<HashMap<String, (i64, u32)>>,
}

const MAX_FAILURES_PER_MINUTE: u32 = 20;

impl FailureLimiter {
    fn blocked(&self, key: &str, now: i64) -> bool {
        self.slots
            .lock()
            .ok()
            .and_then(|m| m.get(key).copied())
            .is_some_and(|(start, n)| now - start < 60 && n >= MAX_FAILURES_PER_MINUTE)
    }

    fn fail(&self, key: &str, now: i64) {
        if let Ok(mut m) = self.slots.lock() {
            if m.len() > 100_000 {
                m.clear();
            }
            let e = m.entry(key.to_string()).or_insert((now, 0));
            if now - e.0 >= 60 {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }
}

pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
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
) -> Result<&'a Client, AppError> {
    let basic = basic_credentials(headers);
    let assertion = form.get("client_assertion");
    let claimed_id = match (&basic, form.get("client_id"), assertion) {
        (Some((id, _)), _, _) => id.clone(),
        (None, Some(id), _) => id.to_string(),
        (None, None, Some(a)) => crate::federation::decode_payload(a)
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
    let limiter_key = format!("{}:{}", ctx.fed.id, claimed_id);
    let now = ctx.now();
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
                    // A secret already verified costs one HMAC; anything else
                    // pays a full argon2 run, off the async workers, and is
                    // throttled per client after repeated failures (the
                    // throttle never blocks a secret already verified).
                    if ctx
                        .app
                        .secrets
                        .is_cached(&client.cfg.client_id, &phc, &secret)
                    {
                        true
                    } else if LIMITER.blocked(&limiter_key, now) {
                        return Err(AppError::oauth(
                            "invalid_client",
                            "too many failed attempts, try again in a minute",
                        ));
                    } else {
                        // At most one argon2 run per core at a time: each one
                        // takes ~19 MiB, and a burst of first requests (or of
                        // wrong secrets) must not multiply that.
                        let _permit = ARGON2_SLOTS.acquire().await.map_err(AppError::internal)?;
                        // Another request may have verified it while we waited.
                        if ctx
                            .app
                            .secrets
                            .is_cached(&client.cfg.client_id, &phc, &secret)
                        {
                            return Ok(client);
                        }
                        let (p, s) = (phc.clone(), secret.clone());
                        let ok = tokio::task::spawn_blocking(move || {
                            crate::crypto::secrets::verify_secret(&p, &s)
                        })
                        .await
                        .map_err(AppError::internal)?;
                        if ok {
                            ctx.app
                                .secrets
                                .remember(&client.cfg.client_id, &phc, &secret);
                        }
                        ok
                    }
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
        LIMITER.fail(&limiter_key, now);
        return Err(bad());
    }
    Ok(client)
}

static ARGON2_SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    )
});

static LIMITER: std::sync::LazyLock<FailureLimiter> =
    std::sync::LazyLock::new(FailureLimiter::default);

/// private_key_jwt (RFC 7523): signature with the client's keys, iss = sub =
/// client_id, aud = our token endpoint or issuer, not expired, jti never seen.
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
        tracing::warn!(client = %id, "client assertion jti replayed");
        return Ok(false);
    }
    Ok(true)
}

/// The checks of a client assertion that need no storage: signature with the
/// client's `jwks`, RS256 or ES256, iss = sub = client_id, aud = our token
/// endpoint or issuer, expiry within ten minutes, a `jti`. Returns the `jti`
/// and `exp` to record (replay check).
pub fn check_assertion(
    ctx: &Ctx,
    client: &Client,
    jwks: &Value,
    jwt: &str,
) -> Option<(String, i64)> {
    let u = match crate::crypto::jws::verify_with_jwks(jwt, jwks) {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(client = %client.cfg.client_id, error = %e, "client assertion rejected");
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
    let s = |k: &str| c.get(k).and_then(Value::as_str);
    let id = client.cfg.client_id.as_str();
    let token_url = ctx.fed.url("/token");
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == &token_url || a == &ctx.fed.issuer,
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str() == Some(&token_url) || a.as_str() == Some(&ctx.fed.issuer)),
        _ => false,
    };
    let now = ctx.now();
    let exp = c.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if s("iss") != Some(id) || s("sub") != Some(id) || !aud_ok || exp <= now || exp > now + 600 {
        return None;
    }
    s("jti").map(|jti| (jti.to_string(), exp))
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

pub async fn token(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, AppError> {
    let form = Params::parse(&body).map_err(|e| AppError::oauth("invalid_request", e))?;
    let client = authenticate(&ctx, &headers, &form).await?;
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
    let (grant_id, data) = match ctx
        .app
        .store
        .redeem_code(&sha256_b64(code.as_bytes()), &fed.id, now)
        .await?
    {
        Redeem::Fresh {
            client_id,
            grant_id,
            data,
        } => {
            if client_id != client.cfg.client_id {
                return Err(AppError::oauth(
                    "invalid_grant",
                    "code was issued to another client",
                ));
            }
            (grant_id, data)
        }
        Redeem::Reused { grant_id } => {
            tracing::warn!(federation = %fed.id, client = %client.cfg.client_id, grant = %grant_id, "authorization code reused: tokens revoked");
            return Err(AppError::oauth("invalid_grant", "code already used"));
        }
        Redeem::Unknown => {
            return Err(AppError::oauth(
                "invalid_grant",
                "code is invalid or expired",
            ))
        }
    };
    let data: CodeData = serde_json::from_str(&data).map_err(AppError::internal)?;
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
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .map(str::trim)
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
