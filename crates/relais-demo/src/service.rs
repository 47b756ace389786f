//! The demo service: a small website that signs people in through Relais with
//! the `openidconnect` crate, as any service (relying party) would.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use relais::web::escape;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct DemoService {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    base_url: String,
    issuer: String,
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
    http: reqwest::Client,
    /// Browser id -> pending login or signed-in data.
    sessions: Mutex<HashMap<String, Visit>>,
}

#[derive(Default, Clone)]
struct Visit {
    pending: Option<(String, String, String)>, // state, nonce, pkce verifier
    id_token: Option<String>,
    claims: Option<serde_json::Value>,
    userinfo: Option<serde_json::Value>,
    logout_state: Option<String>,
}

impl DemoService {
    pub fn new(
        name: &str,
        base_url: &str,
        issuer: &str,
        client_id: &str,
        client_secret: &str,
        scopes: &[&str],
    ) -> Result<DemoService, String> {
        Ok(DemoService {
            inner: Arc::new(Inner {
                name: name.into(),
                base_url: base_url.into(),
                issuer: issuer.into(),
                client_id: client_id.into(),
                client_secret: client_secret.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                http: relais::app::http_client(std::time::Duration::from_secs(5))?,
                sessions: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(home))
            .route("/login", get(login))
            .route("/callback", get(callback))
            .route("/logout", get(logout))
            .route("/logged-out", get(logged_out))
            .with_state(self.clone())
    }

    fn cookie_name(&self) -> String {
        format!(
            "demo_svc_{}",
            self.inner
                .client_id
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        )
    }

    fn browser(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(';'))
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    fn visit(&self, headers: &HeaderMap) -> Visit {
        self.browser(headers)
            .and_then(|b| {
                self.inner
                    .sessions
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&b).cloned())
            })
            .unwrap_or_default()
    }

    fn save(&self, browser: &str, v: Visit) {
        if let Ok(mut m) = self.inner.sessions.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(browser.to_string(), v);
        }
    }

    async fn client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        String,
    > {
        let issuer = IssuerUrl::new(self.inner.issuer.clone()).map_err(|e| e.to_string())?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.inner.http)
            .await
            .map_err(|e| format!("discovery: {e}"))?;
        Ok(CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.inner.client_id.clone()),
            Some(ClientSecret::new(self.inner.client_secret.clone())),
        )
        .set_redirect_uri(
            RedirectUrl::new(format!("{}/callback", self.inner.base_url))
                .map_err(|e| e.to_string())?,
        ))
    }
}

fn page(title: &str, body: &str) -> Response {
    Html(format!(
        "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
pre{{background:#f4f4f4;padding:1rem;overflow:auto;white-space:pre-wrap;word-break:break-all}}\
a.button{{display:inline-block;padding:.7rem 1.2rem;background:#000091;color:#fff;text-decoration:none;border-radius:4px}}</style>\
</head><body><main><h1>{t}</h1>{body}</main></body></html>",
        t = escape(title)
    ))
    .into_response()
}

async fn home(State(svc): State<DemoService>, headers: HeaderMap) -> Response {
    let v = svc.visit(&headers);
    let name = &svc.inner.name;
    match (&v.claims, &v.userinfo) {
        (Some(claims), userinfo) => {
            let given = userinfo
                .as_ref()
                .and_then(|u| u.get("given_name"))
                .and_then(|g| g.as_str())
                .unwrap_or("");
            let pretty = |j: &serde_json::Value| {
                escape(&serde_json::to_string_pretty(j).unwrap_or_default())
            };
            page(
                name,
                &format!(
                    "<p id=\"welcome\">Bonjour {} ! Vous êtes connecté(e) via Relais.</p>\
<h2>ID token (claims)</h2><pre id=\"id-token-claims\">{}</pre>\
<h2>Userinfo</h2><pre id=\"userinfo\">{}</pre>\
<h2>ID token (JWS)</h2><pre id=\"id-token\">{}</pre>\
<p><a class=\"button\" id=\"logout\" href=\"/logout\">Se déconnecter</a></p>",
                    escape(given),
                    pretty(claims),
                    userinfo.as_ref().map(pretty).unwrap_or_default(),
                    escape(v.id_token.as_deref().unwrap_or(""))
                ),
            )
        }
        _ => page(
            name,
            "<p>Service de démonstration. Connectez-vous avec Relais.</p>\
<p><a class=\"button\" id=\"login\" href=\"/login\">S'identifier avec Relais</a></p>",
        ),
    }
}

async fn login(State(svc): State<DemoService>, headers: HeaderMap) -> Response {
    let client = match svc.client().await {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("Relais is unreachable: {e}"),
            )
                .into_response()
        }
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for s in &svc.inner.scopes {
        if s != "openid" {
            req = req.add_scope(Scope::new(s.clone()));
        }
    }
    let (url, state, nonce) = req.url();
    let browser = svc
        .browser(&headers)
        .unwrap_or_else(|| relais::crypto::random_token(16));
    let mut v = svc.visit(&headers);
    v.pending = Some((
        state.secret().clone(),
        nonce.secret().clone(),
        verifier.secret().clone(),
    ));
    svc.save(&browser, v);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, url.to_string()),
            (
                header::SET_COOKIE,
                format!(
                    "{}={browser}; Path=/; HttpOnly; SameSite=Lax",
                    svc.cookie_name()
                ),
            ),
        ],
    )
        .into_response()
}

async fn callback(
    State(svc): State<DemoService>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(browser) = svc.browser(&headers) else {
        return page("Erreur", "<p>Session du service absente.</p>");
    };
    let mut v = svc.visit(&headers);
    let Some((state, nonce, verifier)) = v.pending.take() else {
        return page("Erreur", "<p>Aucune connexion en cours.</p>");
    };
    if q.get("state") != Some(&state) {
        return page("Erreur", "<p>Paramètre state invalide.</p>");
    }
    if let Some(err) = q.get("error") {
        svc.save(&browser, v);
        return page(
            "Connexion interrompue",
            &format!("<p id=\"error\">Relais a renvoyé l'erreur <code>{}</code>.</p><p><a href=\"/\">Retour</a></p>", escape(err)),
        );
    }
    let result = async {
        let client = svc.client().await?;
        let code = q.get("code").ok_or("no code")?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.clone()))
            .map_err(|e| e.to_string())?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&svc.inner.http)
            .await
            .map_err(|e| format!("token: {e}"))?;
        let id_token = token.id_token().ok_or("no id_token")?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(nonce))
            .map_err(|e| format!("ID token: {e}"))?;
        let claims_json = serde_json::to_value(claims).map_err(|e| e.to_string())?;
        let userinfo: serde_json::Value = svc
            .inner
            .http
            .get(format!("{}/userinfo", svc.inner.issuer))
            .bearer_auth(token.access_token().secret())
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((id_token.to_string(), claims_json, userinfo))
    }
    .await;
    match result {
        Ok((raw, claims, userinfo)) => {
            v.id_token = Some(raw);
            v.claims = Some(claims);
            v.userinfo = Some(userinfo);
            svc.save(&browser, v);
            (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
        }
        Err(e) => page("Erreur", &format!("<p>{}</p>", escape(&e))),
    }
}

async fn logout(State(svc): State<DemoService>, headers: HeaderMap) -> Response {
    let Some(browser) = svc.browser(&headers) else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    };
    let mut v = svc.visit(&headers);
    let Some(hint) = v.id_token.take() else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    };
    let state = relais::crypto::random_token(16);
    v.claims = None;
    v.userinfo = None;
    v.logout_state = Some(state.clone());
    svc.save(&browser, v);
    let url = relais::error::with_query(
        &format!("{}/session/end", svc.inner.issuer),
        &[
            ("id_token_hint", hint.as_str()),
            (
                "post_logout_redirect_uri",
                &format!("{}/logged-out", svc.inner.base_url),
            ),
            ("state", &state),
        ],
    );
    (StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response()
}

async fn logged_out(
    State(svc): State<DemoService>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let v = svc.visit(&headers);
    let ok = v.logout_state.is_some() && v.logout_state.as_ref() == q.get("state");
    page(
        &svc.inner.name,
        &format!(
            "<p id=\"logged-out\">Vous êtes déconnecté(e){}.</p><p><a class=\"button\" href=\"/\">Accueil</a></p>",
            if ok { "" } else { " (state inattendu)" }
        ),
    )
}
