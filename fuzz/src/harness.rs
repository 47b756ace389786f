//! What each fuzz target feeds to Relais, shared by the targets
//! (`fuzz/fuzz_targets/*.rs`) and by the regression test
//! (`tests/it/fuzz_regressions.rs`, which includes this file with `#[path]`),
//! so a regression input replays through exactly the code the fuzzer ran.
//!
//! Every function takes the raw input bytes, calls library functions
//! directly, and returns `Ok(what)` when Relais accepted the input or
//! `Err(why)` when it rejected it. A panic — in Relais, or an `assert!` here
//! on an invariant (no 5xx for a client's mistake, validated identities
//! validate again) — is a crash.
//!
//! Input formats (plain text, so regression files are readable):
//! - `params`: a query string or form body.
//! - `claims`: the `claims` request parameter (JSON).
//! - `jws`, `id_token_hint`, `client_assertion`: either a compact JWS used as
//!   is, or `HEADER\nCLAIMS` — two JSON texts (taken byte for byte) that are
//!   signed by the fixture's key, so the fuzzer reaches the checks after the
//!   signature. In `HEADER`, `KID` stands for the signing key's `kid`; in
//!   `CLAIMS`, `NOW` for the current Unix time + 60 (the fixture's keys are
//!   made afresh on each run).
//! - `jwks`: a JWK set (JSON).
//! - `pivot_identity`, `agent_identity`: upstream claims (JSON object).
//! - `config_toml`: a configuration file.
//! - `env_overlay`: lines `NAME=VALUE` (`RELAIS__` is prefixed unless
//!   present) applied over the fixture configuration.

#![allow(dead_code)]

use axum::response::IntoResponse;
use openidconnect::core::{CoreIdToken, CoreJsonWebKeySet};
use openidconnect::{IssuerUrl, Nonce};
use relais::app::Ctx;
use relais::config::Config;
use relais::crypto::jws::{self, b64, SigningKey};
use relais::crypto::Alg;
use relais::http::params::Params;
use relais::oidc::claims::ClaimsRequest;
use relais::subject::agent::identity::{AgentIdentity, SiretPolicy};
use relais::subject::citizen::PivotIdentity;
use relais::subject::registry::registry_lookup_key;
use relais::subject::registry::registry_outcome;
use relais::web::Lang;
use serde_json::{Map, Value};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub type Outcome = Result<String, String>;

/// Upstream provider of the `jws` target: issuer, our client id there, nonce.
pub const UPSTREAM_ISSUER: &str = "https://idp.fuzz.test";
pub const UPSTREAM_CLIENT_ID: &str = "relais";
pub const UPSTREAM_NONCE: &str = "fuzz-nonce-0123456789abcdef";

/// Issuer of the fixture federation.
pub const ISSUER: &str = "https://relais.fuzz.test/citizen";

/// The fixture configuration; `CLIENT_JWKS` is replaced by the public JWK set
/// of the `fuzz-jwt` client (private_key_jwt), `DATA` by the data folder.
pub const FIXTURE_TOML: &str = r#"
[server]
public_url = "https://relais.fuzz.test"
database_url = "sqlite://DATA/fuzz.db"
keys_dir = "DATA/keys"

[federations.citizen]
issuer = "https://relais.fuzz.test/citizen"
pairwise_secret = "fuzz-pairwise-secret-0123456789abcdef"

[[federations.citizen.clients]]
client_id = "fuzz-jwt"
name = "Service (private_key_jwt)"
token_endpoint_auth_method = "private_key_jwt"
jwks = 'CLIENT_JWKS'
redirect_uris = ["https://service.fuzz.test/cb"]
post_logout_redirect_uris = ["https://service.fuzz.test/bye"]
scopes = ["openid", "profile", "identite_pivot", "email", "birth"]

[[federations.citizen.clients]]
client_id = "fuzz-public"
name = "Application (public)"
token_endpoint_auth_method = "none"
redirect_uris = ["https://app.fuzz.test/cb", "http://127.0.0.1:9/cb?x=1"]
scopes = ["openid", "profile"]

[[federations.citizen.providers]]
id = "idp"
name = "Fournisseur"
issuer = "https://idp.fuzz.test"
client_id = "relais"
client_secret = "relais-at-idp"
acr_values = ["eidas1", "eidas2"]
"#;

pub struct Fixture {
    pub ctx: Ctx,
    /// Private key of the `fuzz-jwt` client (ES256).
    pub client_key: Arc<SigningKey>,
    /// Upstream-style ID tokens signed by our ES256 and EdDSA keys (the
    /// `jwks` target checks them against the fuzzed JWK set).
    pub sample_tokens: Vec<(Alg, String)>,
}

/// Build the fixture in `dir` (keys, SQLite file; nothing listens).
pub async fn fixture(dir: &Path) -> Result<Fixture, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let der = jws::generate_pkcs8(Alg::ES256).map_err(|e| e.to_string())?;
    let client_key = SigningKey::from_pkcs8(Alg::ES256, &der).map_err(|e| e.to_string())?;
    let client_jwks = serde_json::json!({ "keys": [client_key.public_jwk] }).to_string();
    let text = FIXTURE_TOML
        .replace("CLIENT_JWKS", &client_jwks)
        .replace("DATA", &dir.display().to_string());
    let config = Config::from_toml_with_env(&text, Vec::new()).map_err(|e| e.to_string())?;
    for id in config.federations.keys() {
        relais::crypto::keys::ensure(&config.server.keys_dir.join(id), &Alg::ALL)
            .map_err(|e| e.to_string())?;
    }
    let store = relais::store::Store::connect(&config.server.database_url, 1)
        .await
        .map_err(|e| e.to_string())?;
    let app = relais::app::build(&config, store).await?;
    let fed = app
        .federations
        .first()
        .cloned()
        .ok_or("no federation in the fixture")?;
    let claims = serde_json::json!({
        "iss": UPSTREAM_ISSUER, "aud": UPSTREAM_CLIENT_ID, "sub": "s",
        "nonce": UPSTREAM_NONCE, "iat": 1, "exp": 4_000_000_000_i64,
    });
    let keys = fed.keys.get();
    let mut sample_tokens = Vec::new();
    for alg in [Alg::EdDSA, Alg::ES256] {
        let k = keys.signer(alg).ok_or("no key in the fixture")?;
        sample_tokens.push((alg, k.sign_jwt("JWT", &claims).map_err(|e| e.to_string())?));
    }
    Ok(Fixture {
        sample_tokens,
        ctx: Ctx {
            app: Arc::new(app),
            fed,
        },
        client_key: Arc::new(client_key),
    })
}

fn text(data: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(data).map_err(|_| "not UTF-8".to_string())
}

fn json_object(data: &[u8]) -> Result<Map<String, Value>, String> {
    serde_json::from_str(text(data)?).map_err(|_| "not a JSON object".to_string())
}

/// `HEADER\nCLAIMS` signed with `key` (or, without a newline, the text as is);
/// `NOW` in the claims becomes now + 60 s, `IAT` now.
fn token_from(input: &str, key: impl Fn(&str) -> Option<Arc<SigningKey>>) -> String {
    let Some((header, claims)) = input.split_once('\n') else {
        return input.to_string();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = claims
        .replace("NOW", &(now + 60).to_string())
        .replace("IAT", &now.to_string());
    let alg = serde_json::from_str::<Value>(header)
        .ok()
        .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    let key = key(&alg);
    let header = match &key {
        Some(k) => header.replace("KID", &k.kid),
        None => header.to_string(),
    };
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let sig = key
        .and_then(|k| k.sign(signing_input.as_bytes()).ok())
        .unwrap_or_default();
    format!("{signing_input}.{}", b64(&sig))
}

/// The federation's own active key for the header's `alg` (EdDSA otherwise).
fn own_key(fx: &Fixture) -> impl Fn(&str) -> Option<Arc<SigningKey>> + '_ {
    move |alg| {
        let set = fx.ctx.fed.keys.get();
        set.signer(Alg::parse(alg).unwrap_or(Alg::EdDSA)).cloned()
    }
}

/// Authorization request (query or form) and consent form parameters:
/// `Params::parse`, then the authorization request validation, and the error
/// rendered as the browser would get it.
pub fn params(fx: &Fixture, data: &[u8]) -> Outcome {
    let raw = text(data)?;
    let params = Params::parse(raw)?;
    let _ = params.get("decision");
    match relais::oidc::authorize::validate(&fx.ctx, &params, Lang::En) {
        Ok(req) => Ok(format!("valid request for {}", req.client_id)),
        Err(e) => {
            let resp = e.into_response();
            let status = resp.status();
            assert!(
                !status.is_server_error(),
                "authorization request answered {status}"
            );
            Err(format!("rejected with {status}"))
        }
    }
}

/// The `claims` request parameter.
pub fn claims(data: &[u8]) -> Outcome {
    let r = ClaimsRequest::parse(text(data)?)?;
    Ok(format!("{} id_token claims", r.id_token.len()))
}

/// JWS parsing and verification: our verifier against our JWK set (as for
/// `id_token_hint`), the generic JWK-set verifier (as for client assertions
/// and upstream tokens), and the upstream ID token path (`openidconnect`
/// parsing and claim checks, with and without its own signature check, then
/// `decode_payload`).
pub fn jws(fx: &Fixture, data: &[u8]) -> Outcome {
    let token = token_from(text(data)?, own_key(fx));
    let has_kid = jws::Unverified::parse(&token).is_ok_and(|u| {
        let _ = u.alg();
        u.kid().is_some()
    });
    let set = fx.ctx.fed.keys.get();
    let ours = set.verify(&token).map(|_| ());
    let jwks: Value = serde_json::from_str(set.jwks_json()).map_err(|e| e.to_string())?;
    let generic = jws::verify_with_jwks(&token, &jwks).map(|_| ());
    // Our verifier needs a kid; the JWK-set one tries every key without one.
    if has_kid {
        assert_eq!(
            ours.is_ok(),
            generic.is_ok(),
            "KeySet::verify and verify_with_jwks disagree"
        );
    }
    // Upstream ID token: our keys play the provider's.
    let keys: CoreJsonWebKeySet =
        serde_json::from_str(set.jwks_json()).map_err(|e| e.to_string())?;
    let issuer = IssuerUrl::new(UPSTREAM_ISSUER.to_string()).map_err(|e| e.to_string())?;
    let nonce = Nonce::new(UPSTREAM_NONCE.to_string());
    let id_token = CoreIdToken::from_str(&token).map_err(|e| format!("id token: {e}"));
    let upstream = id_token.and_then(|t| {
        let checked = generic.is_ok();
        let with_sig = relais::upstream::verify_id_token_claims(
            &t,
            UPSTREAM_CLIENT_ID,
            &issuer,
            keys.clone(),
            false,
            &nonce,
        );
        let without = relais::upstream::verify_id_token_claims(
            &t,
            UPSTREAM_CLIENT_ID,
            &issuer,
            keys,
            checked,
            &nonce,
        );
        with_sig.map_err(|e| e.to_string())?;
        without.map_err(|e| e.to_string())
    });
    let payload = relais::upstream::decode_payload(&token);
    match (ours, upstream) {
        (Ok(()), Ok(())) => {
            assert!(payload.is_some(), "verified token without a payload");
            Ok("verified by both".into())
        }
        (Ok(()), Err(e)) => Ok(format!("verified; upstream checks refused: {e}")),
        (Err(e), _) => Err(e.to_string()),
    }
}

/// JWK set parsing: verification of tokens made by each of our keys against
/// the fuzzed set (ring), RFC 7638 thumbprints, and `openidconnect`'s JWK set
/// type (as fetched from a provider) with its signature check.
pub fn jwks(fx: &Fixture, data: &[u8]) -> Outcome {
    let raw = text(data)?;
    let set: Value = serde_json::from_str(raw).map_err(|_| "not JSON".to_string())?;
    let mut verified = 0;
    for (alg, token) in &fx.sample_tokens {
        if jws::verify_with_jwks(token, &set).is_ok() {
            verified += 1;
        }
        // The same token without its kid: every compatible key is tried.
        let header = serde_json::json!({ "alg": alg.as_str() }).to_string();
        let rest = token.split_once('.').map(|(_, r)| r).unwrap_or("");
        let _ = jws::verify_with_jwks(&format!("{}.{rest}", b64(header.as_bytes())), &set);
        if let Ok(t) = CoreIdToken::from_str(token) {
            if let Ok(core) = serde_json::from_str::<CoreJsonWebKeySet>(raw) {
                let _ = serde_json::to_value(&core);
                let issuer =
                    IssuerUrl::new(UPSTREAM_ISSUER.to_string()).map_err(|e| e.to_string())?;
                let nonce = Nonce::new(UPSTREAM_NONCE.to_string());
                let _ = relais::upstream::verify_id_token_claims(
                    &t,
                    UPSTREAM_CLIENT_ID,
                    &issuer,
                    core,
                    false,
                    &nonce,
                );
            }
        }
    }
    if let Some(list) = set.get("keys").and_then(Value::as_array) {
        for k in list {
            let _ = jws::thumbprint(k);
        }
    }
    if verified > 0 {
        Ok(format!("{verified} tokens verified"))
    } else {
        Err("no token verified".into())
    }
}

/// `client_assertion` (private_key_jwt) of the `fuzz-jwt` client: everything
/// but the replay check (which needs the store).
pub fn client_assertion(fx: &Fixture, data: &[u8]) -> Outcome {
    let token = token_from(text(data)?, |_| Some(fx.client_key.clone()));
    let client = fx
        .ctx
        .fed
        .clients
        .get("fuzz-jwt")
        .ok_or("no fuzz-jwt client")?;
    let jwks = client.jwks.clone().ok_or("no client jwks")?;
    match relais::oidc::token::check_assertion(&fx.ctx, client, &jwks, &token) {
        Some((jti, _)) => Ok(format!("accepted, jti {jti}")),
        None => Err("refused".into()),
    }
}

/// `id_token_hint` at the logout endpoint: a token we signed, our issuer,
/// one audience.
pub fn id_token_hint(fx: &Fixture, data: &[u8]) -> Outcome {
    let token = token_from(text(data)?, own_key(fx));
    match relais::oidc::logout::verify_hint(&fx.ctx, &token) {
        Some((client, sid)) => Ok(format!("hint for {client}, sid {sid:?}")),
        None => Err("not a valid hint".into()),
    }
}

/// Pivot identity validation of upstream claims; an accepted identity must
/// give claims that validate again to the same identity key.
pub fn pivot_identity(data: &[u8]) -> Outcome {
    let claims = json_object(data)?;
    let id = PivotIdentity::from_claims(&claims).map_err(|e| e.to_string())?;
    let key = id.identity_key();
    let again = PivotIdentity::from_claims(&id.to_claims());
    assert_eq!(again.as_ref(), Ok(&id), "to_claims does not validate again");
    let _ = registry_lookup_key(&id);
    let _ = registry_outcome(&id, None);
    Ok(key)
}

/// Agent identity validation (both SIRET policies); an accepted identity's
/// claims (with its `sub`) must validate again to the same identity.
pub fn agent_identity(data: &[u8]) -> Outcome {
    let claims = json_object(data)?;
    let _ = AgentIdentity::from_claims(&claims, SiretPolicy::Default("35600000000048"));
    let agent =
        AgentIdentity::from_claims(&claims, SiretPolicy::Refuse).map_err(|e| e.to_string())?;
    let domain = agent.email_domain().to_string();
    let _ = relais::subject::agent::identity::may_vouch(&domain, &["*.gouv.fr".into()], &[], false);
    // A chained broker sends our claims with its own sub: same identity.
    let mut claims = agent.to_claims();
    claims.insert("sub".into(), Value::String(agent.sub.clone()));
    let again = AgentIdentity::from_claims(&claims, SiretPolicy::Refuse);
    assert_eq!(
        again.as_ref(),
        Ok(&agent),
        "to_claims does not validate again"
    );
    Ok(domain)
}

/// TOML configuration: parse, overlay (none), deserialise, validate.
pub fn config_toml(data: &[u8]) -> Outcome {
    Config::from_toml_with_env(text(data)?, Vec::new())
        .map(|c| format!("{} federations", c.federations.len()))
        .map_err(|e| e.to_string())
}

/// `RELAIS__…` environment overlay over the fixture configuration.
pub fn env_overlay(data: &[u8]) -> Outcome {
    let env: Vec<(String, String)> = text(data)?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let k = if k.starts_with("RELAIS__") {
                k.to_string()
            } else {
                format!("RELAIS__{k}")
            };
            (k, v.to_string())
        })
        .collect();
    let base = FIXTURE_TOML
        .replace("CLIENT_JWKS", r#"{"keys":[]}"#)
        .replace("DATA", "/nonexistent");
    Config::from_toml_with_env(&base, env)
        .map(|c| format!("{} federations", c.federations.len()))
        .map_err(|e| e.to_string())
}

/// The `Authorization: Basic` header of a client at `/token` and `/revoke`.
pub fn basic_auth(data: &[u8]) -> Outcome {
    let value = axum::http::HeaderValue::from_bytes(data).map_err(|_| "not a header value")?;
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(axum::http::header::AUTHORIZATION, value);
    relais::oidc::token::basic_credentials(&headers)
        .map(|(id, _)| format!("client {id}"))
        .ok_or_else(|| "no credentials".to_string())
}

/// The identity registry CSV file (`relais registry import`): the RFC 4180
/// reader, the header, and each row's pivot identity validation.
pub fn registry_csv(data: &[u8]) -> Outcome {
    relais::subject::registry::parse_registry_csv(text(data)?)
        .map(|r| format!("{} records", r.len()))
}
