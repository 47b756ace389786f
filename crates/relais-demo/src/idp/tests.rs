//! Tests of the demo provider (its own protocol checks).
use super::*;
use relais::crypto::jws::verify_with_jwks;
use relais::crypto::keys;
use std::path::PathBuf;

const CLIENT: &str = "relais-test";
/// Characters that must be form-encoded inside HTTP Basic (RFC 6749 2.3.1).
const SECRET: &str = "s3cr:et+%/é";
const CB: &str = "http://rp.example/callback";
const BYE: &str = "http://rp.example/bye";

struct T {
    idp: DemoIdp,
    base: String,
    http: reqwest::Client,
    dir: PathBuf,
}

impl Drop for T {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

struct Flow {
    verifier: String,
    state: String,
    nonce: String,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            verifier: random_token(32),
            state: random_token(8),
            nonce: random_token(8),
        }
    }
}

async fn start_with(alg: Alg, path: &str, auto_login: bool) -> T {
    let dir = std::env::temp_dir().join(format!("relais-demoidp-{}", random_token(6)));
    keys::ensure(&dir, &[alg]).unwrap();
    let ring = Arc::new(KeyRing::open(&dir).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let issuer = format!("http://127.0.0.1:{port}{path}");
    let idp = DemoIdp::new(
        DemoIdpConfig {
            issuer: issuer.clone(),
            name: "Impots demo".into(),
            people: demo_people(1),
            clients: vec![DemoClient {
                client_id: CLIENT.into(),
                client_secret: SECRET.into(),
                redirect_uris: vec![CB.into()],
                post_logout_redirect_uris: vec![BYE.into()],
            }],
            acr_values: vec!["eidas1".into(), "eidas2".into()],
            auto_login,
            alg,
        },
        ring,
    );
    let app = if path.is_empty() {
        idp.router()
    } else {
        Router::new().nest(path, idp.router())
    };
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    T {
        idp,
        base: issuer,
        http,
        dir,
    }
}

async fn start() -> T {
    start_with(Alg::ES256, "", false).await
}

fn location(r: &reqwest::Response) -> HashMap<String, String> {
    let loc = r
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location, status {}", r.status()))
        .to_str()
        .unwrap();
    url::Url::parse(loc)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn location_base(r: &reqwest::Response) -> String {
    let loc = r.headers()["location"].to_str().unwrap();
    loc.split('?').next().unwrap().to_string()
}

fn request_id(html: &str) -> String {
    let i = html.find("name=\"request_id\" value=\"").unwrap() + 25;
    html[i..].split('"').next().unwrap().to_string()
}

/// The `name=value` part of the session cookie set by `r`.
fn cookie_of(r: &reqwest::Response) -> String {
    let sc = r.headers()["set-cookie"].to_str().unwrap();
    sc.split(';').next().unwrap().to_string()
}

fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw)
    )
}

impl T {
    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }

    /// GET /authorize with a valid request; `extra` overrides parameters
    /// (an empty value removes one).
    async fn authorize(
        &self,
        f: &Flow,
        extra: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> reqwest::Response {
        let challenge = sha256_b64(f.verifier.as_bytes());
        let mut q: Vec<(&str, &str)> = vec![
            ("client_id", CLIENT),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("scope", "openid profile birth email"),
            ("state", &f.state),
            ("nonce", &f.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        for (k, v) in extra {
            q.retain(|(a, _)| a != k);
            if !v.is_empty() {
                q.push((k, v));
            }
        }
        let mut rb = self.http.get(self.url("/authorize")).query(&q);
        if let Some(c) = cookie {
            rb = rb.header("cookie", c);
        }
        rb.send().await.unwrap()
    }

    async fn login(&self, html: &str, login: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/login"))
            .form(&[
                ("request_id", request_id(html).as_str()),
                ("login", login),
                ("password", password),
                ("action", "login"),
            ])
            .send()
            .await
            .unwrap()
    }

    /// Authorize, show the form, sign in: (code, session cookie).
    async fn sign_in(&self, f: &Flow, extra: &[(&str, &str)], login: &str) -> (String, String) {
        let r = self.authorize(f, extra, None).await;
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        let r = self.login(&html, login, "123").await;
        assert_eq!(r.status(), 302);
        let q = location(&r);
        assert_eq!(q["state"], f.state);
        assert_eq!(q["iss"], self.base);
        (q["code"].clone(), cookie_of(&r))
    }

    async fn token(&self, code: &str, verifier: Option<&str>, post: bool) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CB),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        let mut rb = self.http.post(self.url("/token"));
        if post {
            form.push(("client_id", CLIENT));
            form.push(("client_secret", SECRET));
        } else {
            rb = rb.header("authorization", basic(CLIENT, SECRET));
        }
        rb.form(&form).send().await.unwrap()
    }

    async fn jwks(&self) -> Value {
        let r = self.http.get(self.url("/jwks")).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "application/json");
        r.json().await.unwrap()
    }

    /// Code flow to the token response (auto-login must be on).
    async fn tokens(&self, f: &Flow) -> Value {
        let r = self.authorize(f, &[("login_hint", "angela")], None).await;
        let code = location(&r)["code"].clone();
        let r = self.token(&code, Some(&f.verifier), false).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn userinfo(&self, at: &str) -> reqwest::Response {
        self.http
            .get(self.url("/userinfo"))
            .bearer_auth(at)
            .send()
            .await
            .unwrap()
    }
}

fn payload(jwt: &str) -> Map<String, Value> {
    let p = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&b64_decode(p).unwrap()).unwrap()
}

#[tokio::test]
async fn discovery_document() {
    let t = start().await;
    let d: Value = t
        .http
        .get(t.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], t.base);
    assert_eq!(d["authorization_endpoint"], t.url("/authorize"));
    assert_eq!(d["token_endpoint"], t.url("/token"));
    assert_eq!(d["userinfo_endpoint"], t.url("/userinfo"));
    assert_eq!(d["jwks_uri"], t.url("/jwks"));
    assert_eq!(d["end_session_endpoint"], t.url("/session/end"));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["acr_values_supported"], json!(["eidas1", "eidas2"]));
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    let scopes = d["scopes_supported"].as_array().unwrap();
    for s in ["openid", "identite_pivot", "birth", "birthcountry"] {
        assert!(scopes.contains(&json!(s)), "{s}");
    }
    assert_eq!(t.jwks().await["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn full_code_flow_with_pkce() {
    let t = start().await;
    let f = Flow::new();
    let r = t.authorize(&f, &[("acr_values", "eidas2")], None).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("<html lang=\"fr\">"));
    assert!(html.contains("<label for=\"login\">"));
    assert!(html.contains("<label for=\"password\">"));
    assert!(html.contains("action=\"/login\""));
    assert!(
        html.contains("<td>angela</td><td>123</td>"),
        "demo accounts listed"
    );

    let r = t.login(&html, "angela", "123").await;
    assert_eq!(r.status(), 302);
    assert_eq!(location_base(&r), CB);
    let sc = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(sc.starts_with("demo_idp_"), "{sc}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(sc.contains(attr), "{sc}");
    }
    assert_eq!(t.idp.session_count(), 1);
    let q = location(&r);
    assert_eq!(q["state"], f.state);
    assert_eq!(q["iss"], t.base);

    let r = t.token(&q["code"], Some(&f.verifier), false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let tok: Value = r.json().await.unwrap();
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["expires_in"], 300);
    assert_eq!(tok["scope"], "openid profile birth email");
    let at = tok["access_token"].as_str().unwrap();
    let id_token = tok["id_token"].as_str().unwrap();

    let jwks = t.jwks().await;
    let u = verify_with_jwks(id_token, &jwks).unwrap();
    assert_eq!(u.header["alg"], "ES256");
    let c = &u.claims;
    let now = now();
    assert_eq!(c["iss"], t.base);
    assert_eq!(c["aud"], CLIENT);
    assert_eq!(c["nonce"], f.nonce.as_str());
    assert_eq!(c["acr"], "eidas2");
    assert_eq!(c["amr"], json!(["pwd"]));
    assert_eq!(c["at_hash"], half_hash(Alg::ES256, at).as_str());
    let sub = hex(ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}angela", t.base).as_bytes(),
    )
    .as_ref());
    assert_eq!(c["sub"], sub.as_str());
    assert!(c["exp"].as_u64().unwrap() > now + 200);
    assert!(c["iat"].as_u64().unwrap() <= now + 1);
    assert!(c["auth_time"].as_u64().unwrap() <= now + 1);
    assert_eq!(c["given_name"], "Angela Claire Louise");
    assert_eq!(c["birthplace"], "75107");
    assert_eq!(c["birthcountry"], "99100");
    assert_eq!(c["email"], "angela.dubois@example.fr");

    let r = t.userinfo(at).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let ui: Value = r.json().await.unwrap();
    assert_eq!(ui["sub"], sub.as_str());
    assert_eq!(ui["family_name"], "DUBOIS");
    assert_eq!(ui["birthdate"], "1962-08-24");
    assert!(ui.get("nonce").is_none());
    // POST with the token in the body (RFC 6750 section 2.2).
    let r = t
        .http
        .post(t.url("/userinfo"))
        .form(&[("access_token", at)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), ui);
}

#[tokio::test]
async fn scopes_select_claims() {
    let t = start_with(Alg::ES256, "", true).await;
    let f = Flow::new();
    let r = t
        .authorize(
            &f,
            &[
                ("login_hint", "hiroshi"),
                ("scope", "openid birthcountry unknown_scope"),
            ],
            None,
        )
        .await;
    let code = location(&r)["code"].clone();
    let tok: Value = t
        .token(&code, Some(&f.verifier), true)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tok["scope"], "openid birthcountry");
    let c = payload(tok["id_token"].as_str().unwrap());
    assert_eq!(c["birthcountry"], "99217");
    assert!(!c.contains_key("given_name"));
    assert!(!c.contains_key("birthplace"));
    assert_eq!(c["acr"], "eidas1", "lowest level when none is requested");
    let ui: Value = t
        .userinfo(tok["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ui.as_object().unwrap().len(), 2, "{ui}");

    // identite_pivot of someone born abroad: no birthplace.
    let f = Flow::new();
    let r = t
        .authorize(
            &f,
            &[
                ("login_hint", "hiroshi"),
                ("scope", "openid identite_pivot"),
            ],
            None,
        )
        .await;
    let code = location(&r)["code"].clone();
    let tok: Value = t
        .token(&code, Some(&f.verifier), true)
        .await
        .json()
        .await
        .unwrap();
    let c = payload(tok["id_token"].as_str().unwrap());
    for k in [
        "given_name",
        "family_name",
        "birthdate",
        "gender",
        "birthcountry",
    ] {
        assert!(c.contains_key(k), "{k}");
    }
    assert!(!c.contains_key("birthplace"));
    assert!(!c.contains_key("email"));
}

#[tokio::test]
async fn wrong_password_shows_the_form_again() {
    let t = start().await;
    let f = Flow::new();
    let html = t.authorize(&f, &[], None).await.text().await.unwrap();
    let r = t.login(&html, "angela", "nope").await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("location").is_none());
    assert!(r.headers().get("set-cookie").is_none());
    let again = r.text().await.unwrap();
    assert!(again.contains("role=\"alert\""));
    assert!(again.contains("value=\"angela\""));
    assert_eq!(request_id(&again), request_id(&html));
    assert_eq!(t.idp.session_count(), 0);
    // The same pending request still works with the right password.
    let r = t.login(&again, "angela", "123").await;
    assert_eq!(r.status(), 302);
    assert!(location(&r).contains_key("code"));
    // ...once.
    let r = t.login(&again, "angela", "123").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn cancel_returns_access_denied() {
    let t = start().await;
    let f = Flow::new();
    let html = t.authorize(&f, &[], None).await.text().await.unwrap();
    let r = t
        .http
        .post(t.url("/login"))
        .form(&[
            ("request_id", request_id(&html).as_str()),
            ("action", "cancel"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(location_base(&r), CB);
    let q = location(&r);
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], f.state);
    assert_eq!(q["iss"], t.base);
}

#[tokio::test]
async fn client_authentication() {
    let t = start().await;
    // client_secret_post works.
    let f = Flow::new();
    let (code, _) = t.sign_in(&f, &[], "eric").await;
    let r = t.token(&code, Some(&f.verifier), true).await;
    assert_eq!(r.status(), 200);

    // Wrong secret, Basic and post.
    let f = Flow::new();
    let (code, _) = t.sign_in(&f, &[], "eric").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CB),
        ("code_verifier", f.verifier.as_str()),
    ];
    let r = t
        .http
        .post(t.url("/token"))
        .header("authorization", basic(CLIENT, "wrong"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    let mut post = form.to_vec();
    post.push(("client_id", CLIENT));
    post.push(("client_secret", "wrong"));
    let r = t
        .http
        .post(t.url("/token"))
        .form(&post)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    // The raw secret in Basic without form-encoding is not the secret.
    let raw = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{CLIENT}:{SECRET}")
        )
    );
    let r = t
        .http
        .post(t.url("/token"))
        .header("authorization", raw)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // No authentication at all.
    let r = t
        .http
        .post(t.url("/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Two methods at once.
    let mut both = form.to_vec();
    both.push(("client_secret", SECRET));
    let r = t
        .http
        .post(t.url("/token"))
        .header("authorization", basic(CLIENT, SECRET))
        .form(&both)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    // The code was not consumed by the failures.
    let r = t.token(&code, Some(&f.verifier), false).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn token_request_errors() {
    let t = start().await;
    let f = Flow::new();
    let (code, _) = t.sign_in(&f, &[], "angela").await;
    let send = |form: Vec<(&'static str, String)>| {
        t.http
            .post(t.url("/token"))
            .header("authorization", basic(CLIENT, SECRET))
            .form(&form)
            .send()
    };
    let r = send(vec![("grant_type", "password".into())]).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    let r = send(vec![("code", code.clone())]).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    let r = send(vec![
        ("grant_type", "authorization_code".into()),
        ("redirect_uri", CB.into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    // Other redirect_uri.
    let r = send(vec![
        ("grant_type", "authorization_code".into()),
        ("code", code.clone()),
        ("redirect_uri", "http://rp.example/other".into()),
        ("code_verifier", f.verifier.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    // Not a form.
    let r = t
        .http
        .post(t.url("/token"))
        .header("authorization", basic(CLIENT, SECRET))
        .json(&json!({"grant_type": "authorization_code"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    // An expired code.
    for g in lock(&t.idp.inner.store).codes.values_mut() {
        g.expires = 1;
    }
    let r = t.token(&code, Some(&f.verifier), false).await;
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_grant");
    assert_eq!(e["error_description"], "authorization code expired");
}

#[tokio::test]
async fn code_is_single_use() {
    let t = start().await;
    let f = Flow::new();
    let (code, _) = t.sign_in(&f, &[], "angela").await;
    let r = t.token(&code, Some(&f.verifier), false).await;
    assert_eq!(r.status(), 200);
    let at = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.userinfo(&at).await.status(), 200);
    let r = t.token(&code, Some(&f.verifier), false).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    // Reuse revokes the access token it gave.
    assert_eq!(t.userinfo(&at).await.status(), 401);
    let r = t.token("no-such-code", Some(&f.verifier), false).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}

#[tokio::test]
async fn pkce_is_enforced() {
    let t = start().await;
    let f = Flow::new();
    let (code, _) = t.sign_in(&f, &[], "angela").await;
    let r = t.token(&code, Some(&random_token(32)), false).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let r = t.token(&code, None, false).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    assert_eq!(t.token(&code, Some(&f.verifier), false).await.status(), 200);

    // No challenge at authorize: a verifier at token is refused (downgrade).
    let f = Flow::new();
    let (code, cookie) = t
        .sign_in(
            &f,
            &[("code_challenge", ""), ("code_challenge_method", "")],
            "angela",
        )
        .await;
    let r = t.token(&code, Some(&f.verifier), false).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    // Without PKCE at all the flow works.
    let f = Flow::new();
    let r = t
        .authorize(
            &f,
            &[("code_challenge", ""), ("code_challenge_method", "")],
            Some(&cookie),
        )
        .await;
    let code = location(&r)["code"].clone();
    assert_eq!(t.token(&code, None, false).await.status(), 200);

    // plain is rejected, as is a missing method (defaults to plain).
    for method in ["plain", ""] {
        let f = Flow::new();
        let r = t
            .authorize(&f, &[("code_challenge_method", method)], None)
            .await;
        assert_eq!(r.status(), 302);
        let q = location(&r);
        assert_eq!(q["error"], "invalid_request");
        assert_eq!(q["state"], f.state);
        assert_eq!(q["iss"], t.base);
    }
}

#[tokio::test]
async fn untrusted_redirect_uri_gets_a_page() {
    let t = start().await;
    let f = Flow::new();
    for extra in [
        [("redirect_uri", "http://evil.example/cb")],
        [("redirect_uri", "http://rp.example/callback/")],
        [("redirect_uri", "")],
        [("client_id", "unknown")],
        [("client_id", "")],
    ] {
        let r = t.authorize(&f, &extra, None).await;
        assert_eq!(r.status(), 400, "{extra:?}");
        assert!(r.headers().get("location").is_none());
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(r.text().await.unwrap().contains("lang=\"fr\""));
    }
}

#[tokio::test]
async fn authorize_request_errors_go_back_to_the_client() {
    let t = start().await;
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("response_type", "token")], "unsupported_response_type"),
        (&[("response_type", "")], "invalid_request"),
        (&[("scope", "profile")], "invalid_scope"),
        (&[("nonce", "")], "invalid_request"),
        (&[("prompt", "none login")], "invalid_request"),
        (&[("request", "eyJ")], "request_not_supported"),
    ];
    for (extra, error) in cases {
        let f = Flow::new();
        let r = t.authorize(&f, extra, None).await;
        assert_eq!(r.status(), 302, "{extra:?}");
        assert_eq!(location_base(&r), CB);
        let q = location(&r);
        assert_eq!(q["error"], error, "{extra:?}");
        assert_eq!(q["state"], f.state);
        assert_eq!(q["iss"], t.base);
    }
    // Missing state: an error without state.
    let f = Flow::new();
    let r = t.authorize(&f, &[("state", "")], None).await;
    let q = location(&r);
    assert_eq!(q["error"], "invalid_request");
    assert!(!q.contains_key("state"));
    // POST /authorize is accepted too.
    let challenge = sha256_b64(f.verifier.as_bytes());
    let r = t
        .http
        .post(t.url("/authorize"))
        .form(&[
            ("client_id", CLIENT),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("scope", "openid"),
            ("state", "s"),
            ("nonce", "n"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("request_id"));
}

#[tokio::test]
async fn prompt_none_without_session() {
    let t = start().await;
    let f = Flow::new();
    let r = t.authorize(&f, &[("prompt", "none")], None).await;
    assert_eq!(r.status(), 302);
    let q = location(&r);
    assert_eq!(q["error"], "login_required");
    assert_eq!(q["state"], f.state);
    assert_eq!(q["iss"], t.base);
    // An unknown cookie is no session either.
    let r = t
        .authorize(&f, &[("prompt", "none")], Some("demo_idp_x=y; other=z"))
        .await;
    assert_eq!(location(&r)["error"], "login_required");
}

#[tokio::test]
async fn sso_with_the_session_cookie() {
    let t = start().await;
    let f = Flow::new();
    let (_, cookie) = t.sign_in(&f, &[], "angela").await;
    let auth_time = lock(&t.idp.inner.store)
        .sessions
        .values()
        .next()
        .unwrap()
        .auth_time;
    let f = Flow::new();
    let r = t.authorize(&f, &[], Some(&cookie)).await;
    assert_eq!(r.status(), 302, "no form");
    let q = location(&r);
    assert_eq!(q["state"], f.state);
    let tok: Value = t
        .token(&q["code"], Some(&f.verifier), false)
        .await
        .json()
        .await
        .unwrap();
    let c = payload(tok["id_token"].as_str().unwrap());
    assert_eq!(c["auth_time"], auth_time);
    assert_eq!(c["given_name"], "Angela Claire Louise");
    // prompt=none works with the session.
    let r = t
        .authorize(&Flow::new(), &[("prompt", "none")], Some(&cookie))
        .await;
    assert!(location(&r).contains_key("code"));
    // prompt=login, max_age=0 and another login_hint show the form.
    for extra in [
        ("prompt", "login"),
        ("max_age", "0"),
        ("login_hint", "eric"),
    ] {
        let r = t.authorize(&Flow::new(), &[extra], Some(&cookie)).await;
        assert_eq!(r.status(), 200, "{extra:?}");
    }
    assert_eq!(t.idp.session_count(), 1);
    // Signing in again (prompt=login) replaces the browser's session.
    let html = t
        .authorize(&Flow::new(), &[("prompt", "login")], Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    let r = t
        .http
        .post(t.url("/login"))
        .header("cookie", &cookie)
        .form(&[
            ("request_id", request_id(&html).as_str()),
            ("login", "eric"),
            ("password", "123"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_ne!(cookie_of(&r), cookie);
    assert_eq!(t.idp.session_count(), 1);
}

#[tokio::test]
async fn session_end_with_cookie() {
    let t = start().await;
    let f = Flow::new();
    let (_, cookie) = t.sign_in(&f, &[], "angela").await;
    assert_eq!(t.idp.session_count(), 1);
    let r = t
        .http
        .get(t.url("/session/end"))
        .query(&[
            ("post_logout_redirect_uri", BYE),
            ("state", "bye-state"),
            ("client_id", CLIENT),
        ])
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(location_base(&r), BYE);
    assert_eq!(location(&r)["state"], "bye-state");
    let sc = r.headers()["set-cookie"].to_str().unwrap();
    assert!(sc.contains("Max-Age=0"), "{sc}");
    assert_eq!(t.idp.session_count(), 0);
    let r = t
        .authorize(&Flow::new(), &[("prompt", "none")], Some(&cookie))
        .await;
    assert_eq!(location(&r)["error"], "login_required");

    // Unregistered post_logout_redirect_uri: a page, no redirect.
    let r = t
        .http
        .get(t.url("/session/end"))
        .query(&[
            ("post_logout_redirect_uri", "http://evil.example/"),
            ("client_id", CLIENT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("déconnecté"));
}

#[tokio::test]
async fn session_end_with_id_token_hint() {
    let t = start().await;
    let f = Flow::new();
    let (code, _) = t.sign_in(&f, &[], "angela").await;
    let tok: Value = t
        .token(&code, Some(&f.verifier), false)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t.idp.session_count(), 1);
    // No cookie, no client_id: the hint names the client and the session.
    let r = t
        .http
        .get(t.url("/session/end"))
        .query(&[
            ("id_token_hint", tok["id_token"].as_str().unwrap()),
            ("post_logout_redirect_uri", BYE),
            ("state", "st"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r)["state"], "st");
    assert_eq!(t.idp.session_count(), 0);
    // A forged hint is not trusted for the redirect.
    let forged = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(br#"{"aud":"relais-test"}"#)
    );
    let r = t
        .http
        .get(t.url("/session/end"))
        .query(&[
            ("id_token_hint", forged.as_str()),
            ("post_logout_redirect_uri", BYE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn userinfo_errors() {
    let t = start().await;
    let r = t.http.get(t.url("/userinfo")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let wa = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(wa.starts_with("Bearer"), "{wa}");
    let r = t.userinfo("not-a-token").await;
    assert_eq!(r.status(), 401);
    let wa = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(wa.contains("error=\"invalid_token\""), "{wa}");
    let r = t
        .http
        .get(t.url("/userinfo"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Expired token.
    let t2 = start_with(Alg::ES256, "", true).await;
    let tok = t2.tokens(&Flow::new()).await;
    for g in lock(&t2.idp.inner.store).tokens.values_mut() {
        g.expires = 1;
    }
    let r = t2.userinfo(tok["access_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn auto_login_with_login_hint() {
    let t = start_with(Alg::ES256, "", true).await;
    let f = Flow::new();
    let r = t.authorize(&f, &[("login_hint", "eric")], None).await;
    assert_eq!(r.status(), 302);
    assert!(cookie_of(&r).starts_with("demo_idp_"));
    assert_eq!(t.idp.session_count(), 1);
    // Unknown hint: the form.
    let r = t.authorize(&f, &[("login_hint", "nobody")], None).await;
    assert_eq!(r.status(), 200);
    // prompt=none never signs in.
    let r = t
        .authorize(&f, &[("login_hint", "eric"), ("prompt", "none")], None)
        .await;
    assert_eq!(location(&r)["error"], "login_required");
}

#[tokio::test]
async fn faults_change_the_output() {
    let t = start_with(Alg::ES256, "", true).await;
    let jwks = t.jwks().await;
    let good = t.tokens(&Flow::new()).await;
    assert!(verify_with_jwks(good["id_token"].as_str().unwrap(), &jwks).is_ok());

    t.idp.set_faults(Faults {
        tamper_signature: true,
        ..Faults::default()
    });
    let tok = t.tokens(&Flow::new()).await;
    assert_eq!(
        verify_with_jwks(tok["id_token"].as_str().unwrap(), &jwks).unwrap_err(),
        relais::crypto::JwsError::BadSignature
    );

    t.idp.set_faults(Faults {
        sign_with_foreign_key: true,
        ..Faults::default()
    });
    let tok = t.tokens(&Flow::new()).await;
    let jwt = tok["id_token"].as_str().unwrap();
    assert_eq!(
        verify_with_jwks(jwt, &jwks).unwrap_err(),
        relais::crypto::JwsError::UnknownKey
    );
    let u = relais::crypto::Unverified::parse(jwt).unwrap();
    assert_eq!(u.alg().unwrap(), Alg::ES256);

    t.idp.set_faults(Faults {
        unsigned: true,
        ..Faults::default()
    });
    let tok = t.tokens(&Flow::new()).await;
    let jwt = tok["id_token"].as_str().unwrap();
    assert!(jwt.ends_with('.'));
    let header: Value =
        serde_json::from_slice(&b64_decode(jwt.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "none");
    assert!(verify_with_jwks(jwt, &jwks).is_err());

    t.idp.set_faults(Faults {
        wrong_nonce: true,
        ..Faults::default()
    });
    let f = Flow::new();
    let c = payload(t.tokens(&f).await["id_token"].as_str().unwrap());
    assert_ne!(c["nonce"], f.nonce.as_str());

    t.idp.set_faults(Faults {
        wrong_audience: true,
        ..Faults::default()
    });
    let c = payload(t.tokens(&Flow::new()).await["id_token"].as_str().unwrap());
    assert_ne!(c["aud"], CLIENT);

    t.idp.set_faults(Faults {
        expired: true,
        ..Faults::default()
    });
    let tok = t.tokens(&Flow::new()).await;
    let jwt = tok["id_token"].as_str().unwrap();
    assert!(verify_with_jwks(jwt, &jwks).is_ok(), "still well signed");
    assert!(payload(jwt)["exp"].as_u64().unwrap() < now());

    t.idp.set_faults(Faults {
        acr: Some("eidas3".into()),
        ..Faults::default()
    });
    let c = payload(t.tokens(&Flow::new()).await["id_token"].as_str().unwrap());
    assert_eq!(c["acr"], "eidas3");

    let mut set = Map::new();
    set.insert("family_name".into(), json!("IMPOSTEUR"));
    t.idp.set_faults(Faults {
        drop_claims: vec!["birthplace".into()],
        set_claims: set,
        ..Faults::default()
    });
    let tok = t.tokens(&Flow::new()).await;
    let c = payload(tok["id_token"].as_str().unwrap());
    assert!(!c.contains_key("birthplace"));
    assert_eq!(c["family_name"], "IMPOSTEUR");
    let ui: Value = t
        .userinfo(tok["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert!(ui.get("birthplace").is_none());
    assert_eq!(ui["family_name"], "IMPOSTEUR");
    assert_eq!(ui["given_name"], "Angela Claire Louise");

    t.idp.set_faults(Faults {
        token_delay_ms: 300,
        ..Faults::default()
    });
    let start = std::time::Instant::now();
    t.tokens(&Flow::new()).await;
    assert!(start.elapsed() >= std::time::Duration::from_millis(300));

    t.idp.set_faults(Faults {
        authorize_error: Some("temporarily_unavailable".into()),
        ..Faults::default()
    });
    let f = Flow::new();
    let r = t.authorize(&f, &[("login_hint", "angela")], None).await;
    let q = location(&r);
    assert_eq!(q["error"], "temporarily_unavailable");
    assert_eq!(q["state"], f.state);
    assert_eq!(q["iss"], t.base);
    // ...but never to an unregistered redirect_uri.
    let r = t
        .authorize(&f, &[("redirect_uri", "http://evil.example/")], None)
        .await;
    assert_eq!(r.status(), 400);

    t.idp.set_faults(Faults::default());
    let tok = t.tokens(&Flow::new()).await;
    assert!(verify_with_jwks(tok["id_token"].as_str().unwrap(), &jwks).is_ok());
}

#[tokio::test]
async fn acr_selection() {
    let t = start().await;
    let cases = [
        (None, "eidas1"),
        (Some("eidas1"), "eidas1"),
        (Some("eidas2"), "eidas2"),
        (Some("eidas1 eidas2"), "eidas2"),
        (Some("eidas3"), "eidas2"),
        (Some("unknown"), "eidas1"),
    ];
    for (req, want) in cases {
        assert_eq!(t.idp.choose_acr(req).as_deref(), Some(want), "{req:?}");
    }
    let f = Flow::new();
    let (code, _) = t.sign_in(&f, &[("acr_values", "eidas3")], "eric").await;
    let tok: Value = t
        .token(&code, Some(&f.verifier), false)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(payload(tok["id_token"].as_str().unwrap())["acr"], "eidas2");
}

#[tokio::test]
async fn issuer_with_a_path_and_two_instances() {
    let a = start_with(Alg::ES256, "/impots", false).await;
    let b = start_with(Alg::ES256, "/impots", false).await;
    assert_ne!(a.idp.inner.cookie_name, b.idp.inner.cookie_name);
    let d: Value = a
        .http
        .get(a.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], a.base);
    assert!(a.base.ends_with("/impots"));
    let f = Flow::new();
    let r = a.authorize(&f, &[], None).await;
    let html = r.text().await.unwrap();
    assert!(html.contains("action=\"/impots/login\""));
    let r = a.login(&html, "eric", "123").await;
    let code = location(&r)["code"].clone();
    let tok: Value = a
        .token(&code, Some(&f.verifier), false)
        .await
        .json()
        .await
        .unwrap();
    let c = payload(tok["id_token"].as_str().unwrap());
    assert_eq!(c["iss"], a.base);
    // Same person, another IdP: another sub.
    assert_ne!(c["sub"], json!(b.idp.subject("eric")));
}

#[tokio::test]
async fn openidconnect_rp_accepts_it() {
    use openidconnect::core::{
        CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreResponseType,
        CoreUserInfoClaims,
    };
    use openidconnect::{
        AccessTokenHash, AuthType, AuthenticationContextClass, AuthenticationFlow,
        AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
        OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
    };
    // EdDSA also checks the at_hash convention (SHA-512 for Ed25519).
    let t = start_with(Alg::EdDSA, "/idp", false).await;
    let meta =
        CoreProviderMetadata::discover_async(IssuerUrl::new(t.base.clone()).unwrap(), &t.http)
            .await
            .unwrap();
    let client = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(CLIENT.into()),
        Some(ClientSecret::new(SECRET.into())),
    )
    .set_redirect_uri(RedirectUrl::new(CB.into()).unwrap());
    let verifier = client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EdDsa]);

    for (post, fault) in [
        (false, None),
        (true, None),
        (
            false,
            Some(Faults {
                tamper_signature: true,
                ..Faults::default()
            }),
        ),
        (
            false,
            Some(Faults {
                sign_with_foreign_key: true,
                ..Faults::default()
            }),
        ),
        (
            false,
            Some(Faults {
                unsigned: true,
                ..Faults::default()
            }),
        ),
        (
            false,
            Some(Faults {
                wrong_nonce: true,
                ..Faults::default()
            }),
        ),
        (
            false,
            Some(Faults {
                wrong_audience: true,
                ..Faults::default()
            }),
        ),
        (
            false,
            Some(Faults {
                expired: true,
                ..Faults::default()
            }),
        ),
    ] {
        let client = if post {
            client.clone().set_auth_type(AuthType::RequestBody)
        } else {
            client.clone()
        };
        t.idp.set_faults(fault.clone().unwrap_or_default());
        let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("identite_pivot".into()))
            .add_scope(Scope::new("email".into()))
            .add_auth_context_value(AuthenticationContextClass::new("eidas1".into()))
            .set_pkce_challenge(challenge)
            .url();
        let r = t.http.get(url.as_str()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        assert!(html.contains("action=\"/idp/login\""));
        let r = t.login(&html, "angela", "123").await;
        let q = location(&r);
        assert_eq!(&q["state"], state.secret());
        assert_eq!(q["iss"], t.base);
        let tok = client
            .exchange_code(AuthorizationCode::new(q["code"].clone()))
            .unwrap()
            .set_pkce_verifier(pkce_verifier)
            .request_async(&t.http)
            .await
            .unwrap();
        let id_token = tok.id_token().unwrap();
        let claims = id_token.claims(&verifier, &nonce);
        if fault.is_some() {
            assert!(claims.is_err(), "{fault:?} accepted");
            continue;
        }
        let claims = claims.unwrap();
        assert_eq!(claims.issuer().as_str(), t.base);
        assert_eq!(claims.auth_context_ref().unwrap().as_str(), "eidas1");
        let at_hash = AccessTokenHash::from_token(
            tok.access_token(),
            id_token.signing_alg().unwrap(),
            id_token.signing_key(&verifier).unwrap(),
        )
        .unwrap();
        assert_eq!(claims.access_token_hash(), Some(&at_hash));
        assert_eq!(
            claims.given_name().unwrap().get(None).unwrap().as_str(),
            "Angela Claire Louise"
        );
        let ui: CoreUserInfoClaims = client
            .user_info(tok.access_token().clone(), Some(claims.subject().clone()))
            .unwrap()
            .request_async(&t.http)
            .await
            .unwrap();
        assert_eq!(
            ui.family_name().unwrap().get(None).unwrap().as_str(),
            "DUBOIS"
        );
        assert_eq!(ui.email().unwrap().as_str(), "angela.dubois@example.fr");
    }
}

#[test]
fn form_decoding_and_params() {
    assert_eq!(form_decode("a+b%3Ac%25%2F%C3%A9"), "a b:c%/é");
    assert_eq!(form_decode("100%"), "100%");
    assert_eq!(form_decode("%zz%4"), "%zz%4");
    assert!(parse_params(b"a=1&a=2").is_err());
    let p = parse_params(b"a=1&b=&c=x+y").unwrap();
    assert_eq!(p.get("a").unwrap(), "1");
    assert!(!p.contains_key("b"));
    assert_eq!(p.get("c").unwrap(), "x y");
    assert_eq!(
        esc("<a href=\"x\">&'"),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
}

#[test]
fn demo_people_share_one_identity() {
    let one = demo_people(1);
    let two = demo_people(2);
    assert!((3..=4).contains(&one.len()) && (3..=4).contains(&two.len()));
    let pivot = [
        "given_name",
        "family_name",
        "birthdate",
        "gender",
        "birthplace",
        "birthcountry",
    ];
    let fold = |p: &DemoPerson, k: &str| {
        p.claims
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_uppercase()
            .replace('É', "E")
    };
    let mut shared = 0;
    for a in &one {
        for b in &two {
            if pivot.iter().all(|k| fold(a, k) == fold(b, k)) {
                shared += 1;
                assert_ne!(
                    a.claims["given_name"], b.claims["given_name"],
                    "written differently"
                );
            }
        }
    }
    assert_eq!(shared, 1);
    // Someone born abroad: no birthplace.
    let abroad: Vec<_> = one
        .iter()
        .chain(&two)
        .filter(|p| p.claims["birthcountry"] != "99100")
        .collect();
    assert!(!abroad.is_empty());
    assert!(abroad.iter().all(|p| !p.claims.contains_key("birthplace")));
    assert!(one
        .iter()
        .any(|p| p.claims["given_name"] == "Angela Claire Louise"
            && p.claims["birthplace"] == "75107"));
}
