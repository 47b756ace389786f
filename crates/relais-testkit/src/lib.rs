//! Test helpers for Relais's integration tests (`crates/relais-cli/tests/it`):
//! the stack builder (`start`, `start_with`), the databases every storage
//! test runs on, the service side (`openidconnect` as the relying party) and
//! the browser/page driver. Test-only code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Tests act as the outside world: they read the system clock.
#![allow(clippy::disallowed_methods)]

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdTokenVerifier, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use relais_demo::{Stack, StackOptions};
use serde_json::{Map, Value};
use std::path::PathBuf;

pub mod aidants;
pub mod pages;
pub use aidants::*;
pub use pages::*;

/// Databases every storage test runs on.
pub fn databases() -> Vec<Option<String>> {
    let mut v = vec![None];
    match std::env::var("RELAIS_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => v.push(Some(url)),
        _ => eprintln!("note: RELAIS_TEST_DATABASE_URL not set, PostgreSQL variant skipped"),
    }
    v
}

pub fn random(n: usize) -> String {
    relais::crypto::random_token(n)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("relais-it-{tag}-{}", random(8)))
}

/// Extra clients every test stack registers, besides `demo-service`.
pub const EXTRA: &str = r#"
[[federations.citizen.clients]]
client_id = "svc-b"
name = "Service B"
client_secret = "svc-b-secret"
redirect_uris = ["http://service-b.test/cb"]
post_logout_redirect_uris = ["http://service-b.test/bye"]
scopes = ["openid", "profile", "identite_pivot", "email"]

[[federations.citizen.clients]]
client_id = "private-svc"
name = "Banque privée"
kind = "private"
client_secret = "private-secret"
token_endpoint_auth_method = "client_secret_post"
redirect_uris = ["http://private.test/cb"]
scopes = ["openid", "given_name", "family_name", "birthdate"]
id_token_signed_response_alg = "EdDSA"
userinfo_signed_response_alg = "ES256"

[[federations.citizen.clients]]
client_id = "public-app"
name = "Application mobile"
token_endpoint_auth_method = "none"
redirect_uris = ["http://public.test/cb"]
scopes = ["openid", "profile"]

[[federations.citizen.providers]]
id = "ameli-bis"
name = "Ameli (réservé)"
issuer = "IDP2"
client_id = "relais"
client_secret = "relais-at-ameli"
auth_method = "client_secret_post"
acr_values = ["eidas1"]
order = 3
allowed_clients = ["private-svc"]
"#;

pub struct Env {
    pub stack: Stack,
    pub schema: Option<(String, String)>,
}

impl Env {
    pub async fn start(db: Option<String>) -> Env {
        Self::start_with(db, String::new(), vec![], false).await
    }

    pub async fn start_with(
        db: Option<String>,
        extra: String,
        overrides: Vec<(String, String)>,
        auto_login: bool,
    ) -> Env {
        let dir = temp_dir("stack");
        let (database_url, schema) = match db {
            Some(url) => {
                let s = format!("t_{}", random(10));
                (Some(format!("{url}#schema={s}")), Some((url, s)))
            }
            None => (None, None),
        };
        // The IdP 2 issuer is only known once its port is; the test provider
        // below points at it by a placeholder resolved after start, so start
        // once to learn the ports... instead we rely on the stack's fixed
        // order and patch after: see `fix_extra`.
        let opts = StackOptions {
            database_url,
            extra_toml: String::new(),
            overrides: overrides.clone(),
            auto_login,
        };
        // Two-phase: reserve ports by starting with the extra TOML whose IDP2
        // placeholder is replaced inside Stack::start via the callback below.
        let stack = Stack::start_with_extra(&dir, opts, move |urls| {
            format!("{}{}", EXTRA, extra)
                .replace("IDP2", &urls.idp2)
                .replace("IDP1", &urls.idp1)
                .replace("BROKER", &urls.broker)
                .replace("IDP3", &urls.idp3)
                .replace("IDP4", &urls.idp4)
        })
        .await
        .unwrap_or_else(|e| panic!("stack did not start: {e}"));
        Env { stack, schema }
    }

    /// Start with extra TOML placed after the generated configuration (may
    /// declare more federations; BROKER, IDP1 and IDP2 are replaced).
    pub async fn start_second(db: Option<String>, extra: String) -> Env {
        Self::start_with(db, extra, vec![], false).await
    }

    pub fn broker(&self) -> &str {
        &self.stack.urls.broker
    }

    pub async fn cleanup(self) {
        if let Some((url, schema)) = &self.schema {
            if let Ok(pool) = sqlx::PgPool::connect(url).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&pool)
                    .await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.stack.data_dir);
    }
}

/// A browser: keeps cookies, never follows redirects by itself.
pub struct Browser {
    pub http: reqwest::Client,
}

pub enum Step {
    Page {
        url: String,
        status: u16,
        html: String,
    },
    /// The browser was sent to a URL starting with the watched prefix.
    Arrived(String),
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// GET `url` and follow redirects until a page is shown or a URL starting
    /// with `stop` is reached.
    pub async fn go(&self, url: &str, stop: &str) -> Step {
        self.follow(self.http.get(url).send().await.unwrap(), url, stop)
            .await
    }

    pub async fn post(&self, url: &str, form: &[(String, String)], stop: &str) -> Step {
        let resp = self.http.post(url).form(form).send().await.unwrap();
        self.follow(resp, url, stop).await
    }

    async fn follow(&self, mut resp: reqwest::Response, first: &str, stop: &str) -> Step {
        let mut url = first.to_string();
        for _ in 0..20 {
            if resp.status().is_redirection() {
                let loc = resp.headers()["location"].to_str().unwrap().to_string();
                let next = reqwest::Url::parse(&url)
                    .unwrap()
                    .join(&loc)
                    .unwrap()
                    .to_string();
                if next.starts_with(stop) {
                    return Step::Arrived(next);
                }
                url = next;
                resp = self.http.get(&url).send().await.unwrap();
                continue;
            }
            let status = resp.status().as_u16();
            return Step::Page {
                url,
                status,
                html: resp.text().await.unwrap(),
            };
        }
        panic!("too many redirects from {first}");
    }
}

impl Step {
    pub fn page(self) -> (String, u16, String) {
        match self {
            Step::Page { url, status, html } => (url, status, html),
            Step::Arrived(u) => panic!("expected a page, was sent to {u}"),
        }
    }
    pub fn arrived(self) -> String {
        match self {
            Step::Arrived(u) => u,
            Step::Page { url, status, html } => panic!(
                "expected a redirect to the service, got page {url} ({status}):\n{}",
                &html[..html.len().min(3000)]
            ),
        }
    }
}

pub fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// (action, hidden fields) of the first form of a page.
pub fn form(html: &str) -> (String, Vec<(String, String)>) {
    let start = html.find("<form").expect("no form in page");
    let end = html[start..]
        .find("</form>")
        .map(|e| start + e)
        .unwrap_or(html.len());
    let f = &html[start..end];
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let i = tag.find(&key)? + key.len();
        let j = tag[i..].find('"')? + i;
        Some(unescape(&tag[i..j]))
    };
    let action = attr(&f[..f.find('>').unwrap()], "action").expect("form without action");
    let mut hidden = vec![];
    for part in f.split("<input").skip(1) {
        let tag = &part[..part.find('>').unwrap_or(part.len())];
        if tag.contains("type=\"hidden\"") {
            hidden.push((
                attr(tag, "name").unwrap(),
                attr(tag, "value").unwrap_or_default(),
            ));
        }
    }
    (action, hidden)
}

/// The service, driven with the `openidconnect` crate (an independent client).
pub struct Rp {
    pub client_id: String,
    pub secret: Option<String>,
    pub redirect_uri: String,
    pub issuer: String,
    pub meta: CoreProviderMetadata,
    pub http: reqwest::Client,
    pub auth_type: openidconnect::AuthType,
}

pub struct Auth {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

#[derive(Debug)]
pub struct Tokens {
    pub id_token: String,
    pub claims: Map<String, Value>,
    pub access_token: String,
}

impl Rp {
    pub async fn new(env: &Env, client_id: &str, secret: Option<&str>, redirect_uri: &str) -> Rp {
        Self::new_at(env, env.broker(), client_id, secret, redirect_uri).await
    }

    /// A service of the federation whose issuer is `issuer`.
    pub async fn new_at(
        _env: &Env,
        issuer: &str,
        client_id: &str,
        secret: Option<&str>,
        redirect_uri: &str,
    ) -> Rp {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let meta = CoreProviderMetadata::discover_async(
            IssuerUrl::new(issuer.to_string()).unwrap(),
            &http,
        )
        .await
        .expect("discovery must work for a standard client");
        Rp {
            client_id: client_id.into(),
            secret: secret.map(str::to_string),
            redirect_uri: redirect_uri.into(),
            issuer: issuer.to_string(),
            meta,
            http,
            auth_type: openidconnect::AuthType::BasicAuth,
        }
    }

    pub async fn demo(env: &Env) -> Rp {
        let redirect = format!("{}/callback", env.stack.urls.service);
        Rp::new(
            env,
            "demo-service",
            Some("demo-service-secret-change-me"),
            &redirect,
        )
        .await
    }

    fn client(
        &self,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        CoreClient::from_provider_metadata(
            self.meta.clone(),
            ClientId::new(self.client_id.clone()),
            self.secret.clone().map(ClientSecret::new),
        )
        .set_auth_type(self.auth_type.clone())
        .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone()).unwrap())
    }

    /// Authorization URL with PKCE and nonce, plus extra parameters.
    pub fn authorize(&self, scopes: &[&str], extra: &[(&str, &str)]) -> Auth {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in scopes {
            req = req.add_scope(Scope::new(s.to_string()));
        }
        for (k, v) in extra {
            req = req.add_extra_param(*k, *v);
        }
        let (url, state, nonce) = req.url();
        Auth {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        }
    }

    /// Check the redirect (state, iss) and return the code.
    pub fn code_from(&self, arrived: &str, auth: &Auth) -> String {
        let u = reqwest::Url::parse(arrived).unwrap();
        let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
        assert!(arrived.starts_with(&self.redirect_uri), "{arrived}");
        assert_eq!(q.get("state"), Some(&auth.state), "state must come back");
        assert_eq!(
            q.get("iss"),
            Some(&self.issuer),
            "iss must be sent (RFC 9207)"
        );
        q.get("code")
            .unwrap_or_else(|| panic!("no code in {arrived}"))
            .clone()
    }

    /// Exchange the code and verify the ID token with the openidconnect crate.
    pub async fn exchange(&self, code: &str, auth: &Auth) -> Result<Tokens, String> {
        let client = self.client();
        let resp = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| e.to_string())?
            .set_pkce_verifier(PkceCodeVerifier::new(auth.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(r) => r.error().to_string(),
                other => other.to_string(),
            })?;
        let id_token = resp.id_token().ok_or("no id token")?;
        let verifier: CoreIdTokenVerifier = client.id_token_verifier().set_allowed_algs([
            openidconnect::core::CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            openidconnect::core::CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            openidconnect::core::CoreJwsSigningAlgorithm::EdDsa,
        ]);
        let claims = id_token
            .claims(&verifier, &Nonce::new(auth.nonce.clone()))
            .map_err(|e| e.to_string())?;
        // at_hash checked by the independent library too.
        if let Some(expected) = claims.access_token_hash() {
            let actual = openidconnect::AccessTokenHash::from_token(
                resp.access_token(),
                id_token.signing_alg().map_err(|e| e.to_string())?,
                id_token.signing_key(&verifier).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            if &actual != expected {
                return Err("at_hash mismatch".into());
            }
        } else {
            return Err("no at_hash".into());
        }
        let raw = id_token.to_string();
        let claims = relais::upstream::decode_payload(&raw).ok_or("payload")?;
        Ok(Tokens {
            id_token: raw,
            claims,
            access_token: resp.access_token().secret().clone(),
        })
    }

    pub async fn userinfo(&self, access_token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/userinfo", self.issuer))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }
}

/// Complete the provider choice, upstream login and consent for `login` at
/// `provider`, starting from the authorization URL. Returns where the
/// browser was finally sent (the service's redirect URI).
pub async fn sign_in(
    browser: &Browser,
    auth_url: &str,
    redirect_uri: &str,
    provider: &str,
    login: &str,
) -> String {
    let mut step = browser.go(auth_url, redirect_uri).await;
    loop {
        let (url, status, html) = match step {
            Step::Arrived(u) => return u,
            Step::Page { url, status, html } => (url, status, html),
        };
        assert_eq!(
            status,
            200,
            "unexpected page {url}:\n{}",
            &html[..html.len().min(3000)]
        );
        let (action, mut fields) = form(&html);
        if html.contains("name=\"provider\"") {
            fields.push(("provider".into(), provider.into()));
        } else if html.contains("name=\"password\"") {
            fields.push(("login".into(), login.into()));
            fields.push(("password".into(), "123".into()));
            fields.push(("action".into(), "login".into()));
        } else if html.contains("name=\"decision\"") {
            fields.push(("decision".into(), "accept".into()));
            if html.contains("name=\"consent\"") {
                fields.push(("consent".into(), "yes".into()));
            }
        } else {
            panic!("unknown page {url}:\n{html}");
        }
        let action = reqwest::Url::parse(&url)
            .unwrap()
            .join(&action)
            .unwrap()
            .to_string();
        step = browser.post(&action, &fields, redirect_uri).await;
    }
}

/// Sign in through the demo service client and exchange the code.
pub async fn full_sign_in(
    env: &Env,
    rp: &Rp,
    browser: &Browser,
    provider: &str,
    login: &str,
    scopes: &[&str],
    extra: &[(&str, &str)],
) -> Tokens {
    let auth = rp.authorize(scopes, extra);
    let arrived = sign_in(browser, &auth.url, &rp.redirect_uri, provider, login).await;
    let code = rp.code_from(&arrived, &auth);
    let _ = env;
    rp.exchange(&code, &auth)
        .await
        .unwrap_or_else(|e| panic!("exchange failed: {e}"))
}
