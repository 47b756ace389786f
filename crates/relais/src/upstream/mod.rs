//! Federation side: Relais as an OpenID Connect client of upstream identity
//! providers, with the `openidconnect` crate (discovery, PKCE, nonce, ID token
//! verification), a JWKS cache refetched on an unknown `kid` with a cooldown,
//! and userinfo.

use crate::config::{ProviderConfig, UpstreamAuth};
use crate::crypto::{Alg, KeyRing};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, AuthUrl, AuthenticationContextClass, AuthorizationCode,
    ClientId, ClientSecret, CsrfToken, IssuerUrl, JsonWebKeySetUrl, LoginHint, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    ResponseTypes, Scope, TokenResponse, TokenUrl, UserInfoUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Provider metadata beyond what `openidconnect` reads: RP-initiated
/// logout and RFC 9207.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraMetadata {
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

pub type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// Network error or timeout: the provider did not answer.
    Unavailable(String),
    /// The provider answered with an OAuth error.
    Refused(String),
    /// The answer could not be verified (signature, nonce, audience, expiry…).
    InvalidToken(String),
    /// A required claim is missing or the acr is too low.
    Claims(String),
    Config(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unavailable(m) => write!(f, "provider unavailable: {m}"),
            UpstreamError::Refused(m) => write!(f, "provider refused: {m}"),
            UpstreamError::InvalidToken(m) => write!(f, "invalid ID token: {m}"),
            UpstreamError::Claims(m) => write!(f, "claims: {m}"),
            UpstreamError::Config(m) => write!(f, "configuration: {m}"),
        }
    }
}

/// What Relais keeps between the redirect to the provider and its callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingUpstream {
    pub provider: String,
    pub interaction: String,
    pub session: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub acr_min: Option<String>,
}

/// Verified result of an upstream sign-in.
#[derive(Debug, Clone)]
pub struct UpstreamLogin {
    /// ID token claims merged with userinfo claims.
    pub claims: Map<String, Value>,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub id_token: String,
    pub sub: String,
}

struct JwksCache {
    keys: Option<CoreJsonWebKeySet>,
    /// The same keys as JSON, for signature checks with ring.
    json: Option<Value>,
    fetched: Option<Instant>,
}

pub struct Upstream {
    pub cfg: ProviderConfig,
    meta: RwLock<Option<Arc<Metadata>>>,
    jwks: Mutex<JwksCache>,
    cooldown: Duration,
}

fn http_err<E: std::error::Error>(e: E) -> UpstreamError {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    UpstreamError::Unavailable(msg)
}

fn alg_of(name: &str) -> Option<CoreJwsSigningAlgorithm> {
    match name {
        "RS256" => Some(CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256),
        "ES256" => Some(CoreJwsSigningAlgorithm::EcdsaP256Sha256),
        "EdDSA" => Some(CoreJwsSigningAlgorithm::EdDsa),
        "PS256" => Some(CoreJwsSigningAlgorithm::RsaSsaPssSha256),
        _ => None,
    }
}

/// What one upstream sign-in asks the provider for (see [`Upstream::start`]).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRequest<'a> {
    /// Relais' callback for this provider.
    pub redirect_uri: &'a str,
    /// The minimum acr of the service's request, if any.
    pub acr_min: Option<&'a str>,
    /// The federation's acr values, weakest first.
    pub acr_ladder: &'a [String],
    pub login_hint: Option<&'a str>,
    /// Agent profile: forwarded as `siret_hint`.
    pub siret_hint: Option<&'a str>,
    /// Ask for a fresh authentication (`prompt=login`).
    pub force_login: bool,
    pub max_age: Option<i64>,
    /// The interaction and browser session the sign-in belongs to.
    pub interaction: &'a str,
    pub session: &'a str,
    /// The upstream `state` (`<interaction id>.<secret>`).
    pub state: &'a str,
}

impl Upstream {
    pub fn new(cfg: ProviderConfig, cooldown: Duration) -> Upstream {
        Upstream {
            cfg,
            meta: RwLock::new(None),
            jwks: Mutex::new(JwksCache {
                keys: None,
                json: None,
                fetched: None,
            }),
            cooldown,
        }
    }

    /// Provider metadata: explicit endpoints, or discovery (cached once fetched).
    pub async fn metadata(&self, http: &reqwest::Client) -> Result<Arc<Metadata>, UpstreamError> {
        if let Some(m) = self.meta.read().ok().and_then(|g| g.clone()) {
            return Ok(m);
        }
        let issuer = IssuerUrl::new(self.cfg.issuer.clone())
            .map_err(|e| UpstreamError::Config(e.to_string()))?;
        let meta = match (
            &self.cfg.authorization_endpoint,
            &self.cfg.token_endpoint,
            &self.cfg.jwks_uri,
        ) {
            (Some(a), Some(t), Some(j)) => {
                let bad = |e: url::ParseError| UpstreamError::Config(e.to_string());
                let m = Metadata::new(
                    issuer,
                    AuthUrl::new(a.clone()).map_err(bad)?,
                    JsonWebKeySetUrl::new(j.clone()).map_err(bad)?,
                    vec![ResponseTypes::new(vec![CoreResponseType::Code])],
                    vec![CoreSubjectIdentifierType::Public],
                    vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
                    ExtraMetadata {
                        end_session_endpoint: self.cfg.end_session_endpoint.clone(),
                        authorization_response_iss_parameter_supported: None,
                    },
                )
                .set_token_endpoint(Some(TokenUrl::new(t.clone()).map_err(bad)?))
                .set_userinfo_endpoint(match &self.cfg.userinfo_endpoint {
                    Some(u) => Some(UserInfoUrl::new(u.clone()).map_err(bad)?),
                    None => None,
                });
                let keys = CoreJsonWebKeySet::fetch_async(m.jwks_uri(), http)
                    .await
                    .map_err(http_err)?;
                m.set_jwks(keys)
            }
            _ => Metadata::discover_async(issuer, http)
                .await
                .map_err(http_err)?,
        };
        if let Ok(mut j) = self.jwks.lock() {
            j.json = serde_json::to_value(meta.jwks()).ok();
            j.keys = Some(meta.jwks().clone());
            j.fetched = Some(Instant::now());
        }
        let meta = Arc::new(meta);
        if let Ok(mut g) = self.meta.write() {
            *g = Some(meta.clone());
        }
        Ok(meta)
    }

    pub fn end_session_endpoint(&self) -> Option<String> {
        self.cfg.end_session_endpoint.clone().or_else(|| {
            self.meta.read().ok().and_then(|g| {
                g.as_ref()
                    .and_then(|m| m.additional_metadata().end_session_endpoint.clone())
            })
        })
    }

    /// Relais' redirect URI at this provider, relative to the federation's
    /// issuer: one per provider, so that a callback names the provider it
    /// comes from (mix-up defence, RFC 9207 §1 and RFC 9700 §4.4.2).
    pub fn callback_path(&self) -> String {
        format!("/callback/{}", self.cfg.id)
    }

    /// Whether a callback without `iss` must be refused: the provider
    /// advertises `authorization_response_iss_parameter_supported` in its
    /// discovery document (RFC 9207 §3), or `require_iss` is set.
    pub fn iss_required(&self, meta: &Metadata) -> bool {
        self.cfg.require_iss
            || meta
                .additional_metadata()
                .authorization_response_iss_parameter_supported
                == Some(true)
    }

    fn client(
        &self,
        meta: &Metadata,
        redirect_uri: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        UpstreamError,
    > {
        let secret = match self.cfg.auth_method {
            UpstreamAuth::PrivateKeyJwt => None,
            _ => self.cfg.client_secret.clone().map(ClientSecret::new),
        };
        let auth_type = match self.cfg.auth_method {
            UpstreamAuth::ClientSecretBasic => AuthType::BasicAuth,
            _ => AuthType::RequestBody,
        };
        let client = CoreClient::from_provider_metadata(
            meta.clone(),
            ClientId::new(self.cfg.client_id.clone()),
            secret,
        )
        .set_auth_type(auth_type)
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_string())
                .map_err(|e| UpstreamError::Config(e.to_string()))?,
        );
        Ok(client)
    }

    /// Build the authorization URL; returns (url, state, pending data).
    pub async fn start(
        &self,
        http: &reqwest::Client,
        r: &UpstreamRequest<'_>,
    ) -> Result<(String, String, PendingUpstream), UpstreamError> {
        let UpstreamRequest {
            redirect_uri,
            acr_min,
            acr_ladder,
            login_hint,
            siret_hint,
            force_login,
            max_age,
            interaction,
            session,
            state,
        } = *r;
        let meta = self.metadata(http).await?;
        let client = self.client(&meta, redirect_uri)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                {
                    let state = state.to_string();
                    move || CsrfToken::new(state)
                },
                || Nonce::new(crate::crypto::random_token(32)),
            )
            .set_pkce_challenge(challenge);
        for s in &self.cfg.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        // Ask for the weakest level this provider has at or above the minimum
        // (eIDAS levels are "at least" levels).
        let floor = acr_min
            .and_then(|a| acr_ladder.iter().position(|x| x == a))
            .unwrap_or(0);
        if let Some(a) = acr_ladder
            .iter()
            .skip(floor)
            .find(|a| self.cfg.acr_values.contains(a))
        {
            req = req.add_auth_context_value(AuthenticationContextClass::new(a.clone()));
        }
        if let Some(h) = login_hint {
            req = req.set_login_hint(LoginHint::new(h.to_string()));
        }
        if let Some(s) = siret_hint {
            req = req.add_extra_param("siret_hint", s.to_string());
        }
        if force_login {
            req = req.add_prompt(openidconnect::core::CoreAuthPrompt::Login);
        }
        if let Some(m) = max_age {
            req = req.set_max_age(Duration::from_secs(m.max(0) as u64));
        }
        let (url, state, nonce) = req.url();
        Ok((
            url.to_string(),
            state.secret().clone(),
            PendingUpstream {
                provider: self.cfg.id.clone(),
                interaction: interaction.to_string(),
                session: session.to_string(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
                acr_min: acr_min.map(str::to_string),
            },
        ))
    }

    fn cached_jwks_json(&self, meta: &Metadata) -> Value {
        self.jwks
            .lock()
            .ok()
            .and_then(|j| j.json.clone())
            .or_else(|| serde_json::to_value(meta.jwks()).ok())
            .unwrap_or(Value::Null)
    }

    fn cached_jwks(&self) -> Option<CoreJsonWebKeySet> {
        self.jwks.lock().ok().and_then(|j| j.keys.clone())
    }

    /// Refetch the JWKS unless it was fetched within the cooldown.
    async fn refetch_jwks(
        &self,
        http: &reqwest::Client,
        meta: &Metadata,
    ) -> Result<bool, UpstreamError> {
        let due = self
            .jwks
            .lock()
            .ok()
            .map(|j| j.fetched.is_none_or(|t| t.elapsed() >= self.cooldown))
            .unwrap_or(false);
        if !due {
            return Ok(false);
        }
        let keys = CoreJsonWebKeySet::fetch_async(meta.jwks_uri(), http)
            .await
            .map_err(http_err)?;
        if let Ok(mut j) = self.jwks.lock() {
            j.json = serde_json::to_value(&keys).ok();
            j.keys = Some(keys);
            j.fetched = Some(Instant::now());
        }
        tracing::info!(provider = %self.cfg.id, "upstream JWKS refetched");
        Ok(true)
    }

    /// Exchange the code, verify the ID token, fetch userinfo.
    pub async fn finish(
        &self,
        http: &reqwest::Client,
        redirect_uri: &str,
        code: &str,
        pending: &PendingUpstream,
        acr_ladder: &[String],
        signer: Option<&KeyRing>,
    ) -> Result<UpstreamLogin, UpstreamError> {
        let meta = self.metadata(http).await?;
        let client = self.client(&meta, redirect_uri)?;
        let mut exchange = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| UpstreamError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()));
        let assertion;
        if self.cfg.auth_method == UpstreamAuth::PrivateKeyJwt {
            let token_url = meta
                .token_endpoint()
                .map(|t| t.to_string())
                .unwrap_or_default();
            assertion = self.client_assertion(signer, &token_url)?;
            exchange = exchange
                .add_extra_param(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                )
                .add_extra_param("client_assertion", assertion.clone());
        }
        let resp = exchange.request_async(http).await.map_err(|e| match e {
            openidconnect::RequestTokenError::ServerResponse(r) => {
                UpstreamError::Refused(r.error().to_string())
            }
            other => http_err(other),
        })?;
        let id_token = resp
            .id_token()
            .ok_or_else(|| UpstreamError::InvalidToken("no id_token in token response".into()))?
            .clone();
        let nonce = Nonce::new(pending.nonce.clone());
        let raw = id_token.to_string();
        // Signatures in RS256, ES256 and EdDSA are checked with ring against
        // the cached JWKS (refetched once, with a cooldown, on an unknown kid);
        // the claims (iss, aud, exp, iat, nonce) with openidconnect. Any other
        // algorithm (PS256) is checked entirely by openidconnect; `none` and
        // HMAC algorithms are refused by both.
        let ring_alg = crate::crypto::jws::Unverified::parse(&raw)
            .ok()
            .and_then(|u| u.alg().ok());
        if ring_alg.is_some() {
            let mut checked =
                crate::crypto::jws::verify_with_jwks(&raw, &self.cached_jwks_json(&meta))
                    .map(|_| ());
            if checked == Err(crate::crypto::JwsError::UnknownKey)
                && self.refetch_jwks(http, &meta).await?
            {
                checked = crate::crypto::jws::verify_with_jwks(&raw, &self.cached_jwks_json(&meta))
                    .map(|_| ());
            }
            checked.map_err(|e| UpstreamError::InvalidToken(format!("signature: {e}")))?;
        }
        let verify = |keys: CoreJsonWebKeySet| {
            // With a ring algorithm, the signature was already verified just above.
            verify_id_token_claims(
                &id_token,
                &self.cfg.client_id,
                meta.issuer(),
                keys,
                ring_alg.is_some(),
                &nonce,
            )
        };
        let keys = self.cached_jwks().unwrap_or_else(|| meta.jwks().clone());
        if let Err(e) = verify(keys) {
            let unknown_kid = matches!(
                e,
                openidconnect::ClaimsVerificationError::SignatureVerification(
                    openidconnect::SignatureVerificationError::NoMatchingKey
                )
            );
            if !(unknown_kid && self.refetch_jwks(http, &meta).await?) {
                return Err(UpstreamError::InvalidToken(e.to_string()));
            }
            let keys = self.cached_jwks().unwrap_or_else(|| meta.jwks().clone());
            verify(keys).map_err(|e| UpstreamError::InvalidToken(e.to_string()))?;
        }
        // The token is verified: read its claims as JSON (all of them, including
        // the non-standard pivot claims such as birthplace).
        let mut claims = decode_payload(&raw)
            .ok_or_else(|| UpstreamError::InvalidToken("unreadable payload".into()))?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| UpstreamError::Claims("no sub".into()))?
            .to_string();
        let acr = claims
            .get("acr")
            .and_then(Value::as_str)
            .map(str::to_string);
        // acr: must be one this provider may deliver and at least the minimum asked.
        let rank = |a: &str| acr_ladder.iter().position(|x| x == a);
        if let Some(min) = &pending.acr_min {
            let got = acr.as_deref().and_then(rank);
            if got.is_none() || got < rank(min) {
                return Err(UpstreamError::Claims(format!(
                    "acr {:?} is below the requested {min}",
                    acr
                )));
            }
        }
        if let Some(a) = &acr {
            if !self.cfg.acr_values.contains(a) {
                return Err(UpstreamError::Claims(format!(
                    "acr {a:?} is not one this provider is configured for"
                )));
            }
        }
        let amr = claims
            .get("amr")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(ui) = meta.userinfo_endpoint() {
            let info = self
                .userinfo(http, ui.as_str(), resp.access_token().secret())
                .await?;
            if info.get("sub").and_then(Value::as_str) != Some(sub.as_str()) {
                return Err(UpstreamError::InvalidToken(
                    "userinfo sub differs from the ID token sub".into(),
                ));
            }
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
        Ok(UpstreamLogin {
            claims,
            acr,
            amr,
            id_token: raw,
            sub,
        })
    }

    async fn userinfo(
        &self,
        http: &reqwest::Client,
        url: &str,
        access_token: &str,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let resp = http
            .get(url)
            .bearer_auth(access_token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(http_err)?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Refused(format!(
                "userinfo answered {}",
                resp.status()
            )));
        }
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().await.map_err(http_err)?;
        if ctype.starts_with("application/jwt") {
            // Signed userinfo: verify with the provider's keys.
            let jwks = self
                .jwks
                .lock()
                .ok()
                .and_then(|j| j.json.clone())
                .unwrap_or(Value::Null);
            let u = crate::crypto::jws::verify_with_jwks(body.trim(), &jwks)
                .map_err(|e| UpstreamError::InvalidToken(format!("userinfo: {e}")))?;
            return Ok(u.claims);
        }
        serde_json::from_str(&body)
            .map_err(|_| UpstreamError::InvalidToken("userinfo is not JSON".into()))
    }

    fn client_assertion(
        &self,
        signer: Option<&KeyRing>,
        token_url: &str,
    ) -> Result<String, UpstreamError> {
        let keys =
            signer.ok_or_else(|| UpstreamError::Config("no keys for private_key_jwt".into()))?;
        let alg = self
            .cfg
            .assertion_alg
            .as_deref()
            .and_then(Alg::parse)
            .unwrap_or(Alg::RS256);
        let set = keys.get();
        let key = set
            .signer(alg)
            .ok_or_else(|| UpstreamError::Config(format!("no active {alg} key")))?;
        let now = crate::clock::system_now();
        let claims = serde_json::json!({
            "iss": self.cfg.client_id, "sub": self.cfg.client_id, "aud": token_url,
            "jti": crate::crypto::random_token(16), "iat": now, "exp": now + 60,
        });
        key.sign_jwt("JWT", &claims)
            .map_err(|e| UpstreamError::Config(e.to_string()))
    }
}

/// The `openidconnect` checks of an upstream ID token: iss, aud, exp, iat,
/// nonce and algorithm, and the signature with `keys` unless
/// `signature_checked` (already verified with ring against the same keys).
pub fn verify_id_token_claims(
    id_token: &CoreIdToken,
    client_id: &str,
    issuer: &IssuerUrl,
    keys: CoreJsonWebKeySet,
    signature_checked: bool,
    nonce: &Nonce,
) -> Result<(), openidconnect::ClaimsVerificationError> {
    let verifier = CoreIdTokenVerifier::new_public_client(
        ClientId::new(client_id.to_string()),
        issuer.clone(),
        keys,
    )
    .set_allowed_algs([
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        CoreJwsSigningAlgorithm::EdDsa,
        CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    ]);
    let verifier = if signature_checked {
        verifier.insecure_disable_signature_check()
    } else {
        verifier
    };
    id_token.claims(&verifier, nonce).map(|_| ())
}

/// Decode a compact JWS payload (only after its signature was verified).
pub fn decode_payload(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = crate::crypto::jws::b64_decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The allowed signing algorithm list as configured names (for docs and tests).
pub fn supported_upstream_algs() -> Vec<&'static str> {
    ["RS256", "ES256", "EdDSA", "PS256"]
        .into_iter()
        .filter(|a| alg_of(a).is_some())
        .collect()
}
