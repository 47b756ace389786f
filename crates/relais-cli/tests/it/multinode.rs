//! Several Relais nodes on one PostgreSQL (issue 3, "Several nodes"): every
//! hop of a sign-in may land on a different node, SSO and logout work across
//! nodes, a key rotation made on one node reaches the others without restart,
//! and a node that dies mid-flow loses nothing.
//!
//! Node 1 is the demo stack's broker (with the demo providers and service);
//! nodes 2 and 3 are started with `relais::server::start` and the very same
//! configuration (database URL and schema, keys folder, issuer). The issuer
//! stays node 1's URL: nodes differ only by the address requests are sent to,
//! as behind a load balancer. The browser's cookie jar keys cookies by host,
//! not port, so the session cookie reaches every node, as with one host name.
//!
//! Run with `RELAIS_TEST_DATABASE_URL=postgres://…`; skipped otherwise.

use openidconnect::core::{CoreIdToken, CoreIdTokenVerifier, CoreJwsSigningAlgorithm};
use openidconnect::{AccessToken, AccessTokenHash, ClientId, ClientSecret, IssuerUrl, Nonce};
use relais::crypto::keys::{self, KeyStatus, Rotation};
use relais::crypto::{Alg, KeySet};
use relais::server::Running;
use relais_testkit::*;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PIVOT: &[&str] = &["openid", "identite_pivot", "email", "idp_id"];

fn database(test: &str) -> Option<String> {
    match std::env::var("RELAIS_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("note: RELAIS_TEST_DATABASE_URL not set, multi-node test {test} skipped");
            None
        }
    }
}

/// Node 1 (the demo stack) plus more nodes with the same configuration.
struct Cluster {
    env: Env,
    /// Base URL of node n at index n - 1.
    nodes: Vec<String>,
    /// Nodes 2, 3, … (None once killed).
    extra: Vec<Option<Running>>,
    _schema: DropSchemaOnPanic,
}

/// A failed assertion skips `Cluster::cleanup`: drop the test's schema anyway.
struct DropSchemaOnPanic(Option<(String, String)>);

impl Drop for DropSchemaOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some((url, schema)) = self.0.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                            .execute(&pool)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

impl Cluster {
    async fn start(db: String, nodes: usize) -> Cluster {
        let env = Env::start(Some(db)).await;
        let guard = DropSchemaOnPanic(env.schema.clone());
        let mut urls = vec![env.broker().to_string()];
        let mut extra = vec![];
        for n in 2..=nodes {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let running = relais::server::start(&env.stack.config, listener)
                .await
                .unwrap_or_else(|e| panic!("node {n} did not start: {e}"));
            urls.push(format!("http://{}", running.addr));
            extra.push(Some(running));
        }
        let c = Cluster {
            _schema: guard,
            env,
            nodes: urls,
            extra,
        };
        // Every node answers with the same issuer (node 1's URL).
        for n in 1..=nodes {
            let doc: Value =
                reqwest::get(format!("{}/.well-known/openid-configuration", c.node(n)))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            assert_eq!(doc["issuer"], c.node(1), "node {n}");
            assert_eq!(doc["token_endpoint"], format!("{}/token", c.node(1)));
        }
        c
    }

    fn node(&self, n: usize) -> &str {
        &self.nodes[n - 1]
    }

    /// `url` (an address of the broker) sent to node `n` instead.
    fn on(&self, n: usize, url: &str) -> String {
        let mut u = reqwest::Url::parse(url).unwrap();
        let node = reqwest::Url::parse(self.node(n)).unwrap();
        assert!(
            self.nodes.iter().any(|b| url.starts_with(b.as_str())),
            "{url} is not a broker address"
        );
        u.set_port(node.port()).unwrap();
        u.to_string()
    }

    /// The closest in-process equivalent of `kill -9`: the server task is
    /// aborted (its listener closes: new connections are refused) and its
    /// state dropped.
    async fn kill(&mut self, n: usize) {
        let running = self.extra[n - 2].take().expect("node already dead");
        running.task.abort();
        let _ = running.task.await;
        drop(running.state);
    }

    async fn cleanup(mut self) {
        for r in self.extra.iter_mut().filter_map(Option::take) {
            r.task.abort();
        }
        self.env.cleanup().await;
    }
}

/// One HTTP exchange, redirects not followed.
struct Hop {
    status: u16,
    location: Option<String>,
    set_cookie: Vec<String>,
    body: String,
}

async fn hop(req: reqwest::RequestBuilder) -> Hop {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let set_cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    Hop {
        status,
        location,
        set_cookie,
        body: resp.text().await.unwrap(),
    }
}

impl Hop {
    fn redirect(&self, what: &str) -> String {
        assert!(
            (300..400).contains(&self.status),
            "{what}: expected a redirect, got {}:\n{}",
            self.status,
            &self.body[..self.body.len().min(2000)]
        );
        self.location.clone().unwrap()
    }

    fn page(&self, what: &str) -> &str {
        assert_eq!(
            self.status,
            200,
            "{what}:\n{}",
            &self.body[..self.body.len().min(2000)]
        );
        &self.body
    }

    /// Value of the broker's session cookie, if this response set one.
    fn session_cookie(&self) -> Option<String> {
        self.set_cookie.iter().find_map(|c| {
            let v = c.strip_prefix("relais_citizen=")?;
            Some(v.split(';').next().unwrap_or("").to_string()).filter(|v| !v.is_empty())
        })
    }
}

/// Which node serves each hop of a sign-in.
#[derive(Clone, Copy)]
struct Plan {
    authorize: usize,
    choice_page: usize,
    choose: usize,
    callback: usize,
    consent: usize,
}

impl Plan {
    fn all(n: usize) -> Plan {
        Plan {
            authorize: n,
            choice_page: n,
            choose: n,
            callback: n,
            consent: n,
        }
    }
}

/// `/authorize`, the provider choice page and the choice; returns the
/// upstream provider's authorization URL.
async fn begin(c: &Cluster, b: &Browser, auth_url: &str, plan: Plan) -> String {
    let interaction = hop(b.http.get(c.on(plan.authorize, auth_url)))
        .await
        .redirect("authorize");
    assert!(
        interaction.starts_with(&format!("{}/interaction/", c.node(1))),
        "redirects use the issuer's address: {interaction}"
    );
    let choice = hop(b.http.get(c.on(plan.choice_page, &interaction))).await;
    let html = choice.page("choice page");
    assert!(html.contains("name=\"provider\""), "{html}");
    let (action, mut fields) = form(html);
    fields.push(("provider".into(), "impots".into()));
    let upstream = hop(b.http.post(c.on(plan.choose, &action)).form(&fields))
        .await
        .redirect("choice");
    assert!(
        upstream.starts_with(&c.env.stack.urls.idp1),
        "expected the upstream provider, got {upstream}"
    );
    upstream
}

/// Upstream login, Relais callback, information page and acceptance.
/// Returns where the browser is sent (the service) and the session cookie
/// value the callback set.
async fn finish(
    c: &Cluster,
    b: &Browser,
    upstream: &str,
    login: &str,
    plan: Plan,
) -> (String, String) {
    let back = format!("{}/callback", c.node(1));
    let mut step = b.go(upstream, &back).await;
    let callback = loop {
        let (url, status, html) = match step {
            Step::Arrived(u) => break u,
            s => s.page(),
        };
        assert_eq!(status, 200, "{url}:\n{html}");
        assert!(
            html.contains("name=\"password\""),
            "expected the provider's login form at {url}:\n{html}"
        );
        step = provider_login(b, &url, &html, login, &back).await;
    };
    let cb = hop(b.http.get(c.on(plan.callback, &callback))).await;
    let consent = cb.redirect("upstream callback");
    let cookie = cb
        .session_cookie()
        .expect("a new session cookie after authentication");
    assert!(consent.contains("/consent"), "{consent}");
    let arrived = consent_and_accept(c, b, &consent, plan.consent).await;
    (arrived, cookie)
}

async fn consent_and_accept(c: &Cluster, b: &Browser, consent: &str, node: usize) -> String {
    let page = hop(b.http.get(c.on(node, consent))).await;
    let html = page.page("consent page");
    assert!(html.contains("name=\"decision\""), "{html}");
    let (action, mut fields) = form(html);
    fields.push(("decision".into(), "accept".into()));
    if html.contains("name=\"consent\"") {
        fields.push(("consent".into(), "yes".into()));
    }
    hop(b.http.post(c.on(node, &action)).form(&fields))
        .await
        .redirect("consent")
}

/// Token request (client_secret_basic) on one node, with reqwest directly.
async fn token_on(node: &str, rp: &Rp, code: &str, auth: &Auth) -> Map<String, Value> {
    let resp = reqwest::Client::new()
        .post(format!("{node}/token"))
        .basic_auth(&rp.client_id, rp.secret.as_deref())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", rp.redirect_uri.as_str()),
            ("code_verifier", auth.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "token on {node}: {body}");
    body.as_object().unwrap().clone()
}

/// Verify an ID token with the `openidconnect` crate (signature with the
/// JWKS from the RP's discovery, iss, aud, exp, nonce, at_hash).
fn verify_id_token(rp: &Rp, id_token: &str, nonce: &str, access_token: &str) -> Map<String, Value> {
    let verifier = CoreIdTokenVerifier::new_confidential_client(
        ClientId::new(rp.client_id.clone()),
        ClientSecret::new(rp.secret.clone().unwrap()),
        IssuerUrl::new(rp.issuer.clone()).unwrap(),
        rp.meta.jwks().clone(),
    )
    .set_allowed_algs([
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        CoreJwsSigningAlgorithm::EdDsa,
    ]);
    let token: CoreIdToken = id_token.parse().expect("ID token parses");
    let claims = token
        .claims(&verifier, &Nonce::new(nonce.to_string()))
        .unwrap_or_else(|e| panic!("openidconnect rejects the ID token: {e}"));
    let expected = claims.access_token_hash().expect("at_hash").clone();
    let actual = AccessTokenHash::from_token(
        &AccessToken::new(access_token.to_string()),
        token.signing_alg().unwrap(),
        token.signing_key(&verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(actual, expected, "at_hash");
    relais::upstream::decode_payload(id_token).unwrap()
}

fn jws_header(jwt: &str) -> Value {
    serde_json::from_slice(
        &relais::crypto::jws::b64_decode(jwt.split('.').next().unwrap()).unwrap(),
    )
    .unwrap()
}

async fn userinfo_on(node: &str, access_token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{node}/userinfo"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn jwks_kids(node: &str) -> BTreeSet<String> {
    let jwks: Value = reqwest::get(format!("{node}/jwks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_one_postgresql() {
    let Some(db) = database("three_nodes_share_one_postgresql") else {
        return;
    };
    let started = Instant::now();
    let c = Cluster::start(db, 3).await;
    let rp = Rp::demo(&c.env).await;
    let browser = Browser::new();

    // authorize on node 1, choice page on node 2, choice on node 3, upstream
    // callback on node 2, information page and acceptance on node 3.
    let plan = Plan {
        authorize: 1,
        choice_page: 2,
        choose: 3,
        callback: 2,
        consent: 3,
    };
    let auth = rp.authorize(PIVOT, &[]);
    let upstream = begin(&c, &browser, &auth.url, plan).await;
    let (arrived, session_cookie) = finish(&c, &browser, &upstream, "angela", plan).await;
    let code = rp.code_from(&arrived, &auth);

    // Token on node 3, userinfo on node 1.
    let t = token_on(c.node(3), &rp, &code, &auth).await;
    let id_token = t["id_token"].as_str().unwrap();
    let access_token = t["access_token"].as_str().unwrap();
    let claims = verify_id_token(&rp, id_token, &auth.nonce, access_token);
    assert_eq!(claims["iss"], c.node(1));
    assert_eq!(claims["aud"], "demo-service");
    let (status, info) = userinfo_on(c.node(1), access_token).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["sub"], claims["sub"]);
    assert_eq!(info["given_name"], "Angela Claire Louise");
    assert_eq!(info["family_name"], "DUBOIS");
    assert_eq!(info["idp_id"], "impots");
    // The code was redeemed on node 3: node 1 and 2 refuse it too.
    for n in [1, 2] {
        let resp = reqwest::Client::new()
            .post(format!("{}/token", c.node(n)))
            .basic_auth(&rp.client_id, rp.secret.as_deref())
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", rp.redirect_uri.as_str()),
                ("code_verifier", auth.verifier.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "node {n}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant", "node {n}");
    }
    // Code replay revoked the grant's tokens, everywhere.
    let (status, _) = userinfo_on(c.node(2), access_token).await;
    assert_eq!(status, 401, "replayed code revokes the access token");

    // SSO on node 2 for a second service: no choice page, no upstream login.
    let rp_b = Rp::new(
        &c.env,
        "svc-b",
        Some("svc-b-secret"),
        "http://service-b.test/cb",
    )
    .await;
    let auth_b = rp_b.authorize(&["openid", "profile"], &[]);
    let consent = hop(browser.http.get(c.on(2, &auth_b.url)))
        .await
        .redirect("SSO authorize");
    assert!(
        consent.contains("/consent"),
        "SSO goes straight to the information page: {consent}"
    );
    let arrived = consent_and_accept(&c, &browser, &consent, 2).await;
    let code_b = rp_b.code_from(&arrived, &auth_b);
    let tb = token_on(c.node(2), &rp_b, &code_b, &auth_b).await;
    let claims_b = verify_id_token(
        &rp_b,
        tb["id_token"].as_str().unwrap(),
        &auth_b.nonce,
        tb["access_token"].as_str().unwrap(),
    );
    assert_eq!(claims_b["sid"], claims["sid"], "same broker session");
    assert_ne!(claims_b["sub"], claims["sub"], "pairwise subjects differ");
    let (status, _) = userinfo_on(c.node(3), tb["access_token"].as_str().unwrap()).await;
    assert_eq!(status, 200);

    // Logout on node 3 (chained to the upstream provider), the upstream
    // provider's return handled by node 2.
    assert_eq!(c.env.stack.idps[0].session_count(), 1);
    let bye = format!("{}/logged-out", c.env.stack.urls.service);
    let url = relais::error::with_query(
        &format!("{}/session/end", c.node(3)),
        &[
            ("id_token_hint", id_token),
            ("post_logout_redirect_uri", &bye),
            ("state", "bye-3"),
        ],
    );
    let upstream_logout = hop(browser.http.get(&url)).await.redirect("session/end");
    assert!(
        upstream_logout.starts_with(&c.env.stack.urls.idp1),
        "{upstream_logout}"
    );
    let logout_cb = browser
        .go(&upstream_logout, &format!("{}/logout/callback", c.node(1)))
        .await
        .arrived();
    let back = hop(browser.http.get(c.on(2, &logout_cb)))
        .await
        .redirect("logout callback");
    assert!(back.starts_with(&bye), "{back}");
    assert_eq!(query(&back)["state"], "bye-3");
    assert_eq!(
        c.env.stack.idps[0].session_count(),
        0,
        "upstream session ended"
    );
    let (status, _) = userinfo_on(c.node(1), tb["access_token"].as_str().unwrap()).await;
    assert_eq!(status, 401, "logout revokes the session's tokens");

    // On node 1, prompt=none now gives login_required: with this browser
    // (its cookie was cleared) and even with the old cookie replayed (the
    // session row is gone from the shared database).
    let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
    let q = query(
        &hop(browser.http.get(c.on(1, &auth.url)))
            .await
            .redirect("prompt=none"),
    );
    assert_eq!(q["error"], "login_required");
    assert_eq!(q["state"], auth.state);
    let replay = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(c.on(1, &auth.url))
        .header("cookie", format!("relais_citizen={session_cookie}"));
    let q = query(
        &hop(replay)
            .await
            .redirect("prompt=none with the old cookie"),
    );
    assert_eq!(q["error"], "login_required");

    eprintln!("three_nodes_share_one_postgresql: {:?}", started.elapsed());
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_on_one_node_reaches_the_others() {
    let Some(db) = database("key_rotation_on_one_node_reaches_the_others") else {
        return;
    };
    let c = Cluster::start(db, 3).await;
    let rp = Rp::demo(&c.env).await;
    let browser = Browser::new();
    let dir = c.env.stack.config.server.keys_dir.join("citizen");

    // A sign-in before the rotation; its tokens come from node 2.
    let auth = rp.authorize(PIVOT, &[]);
    let arrived = sign_in(&browser, &auth.url, &rp.redirect_uri, "impots", "angela").await;
    let code = rp.code_from(&arrived, &auth);
    let before = token_on(c.node(2), &rp, &code, &auth).await;
    let old_kid = jws_header(before["id_token"].as_str().unwrap())["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let set = KeySet::load(&dir).unwrap();
    let kid_of = |set: &KeySet, status: KeyStatus| {
        set.infos()
            .iter()
            .find(|i| i.status == status && i.alg == Alg::RS256)
            .map(|i| i.kid.clone())
    };
    assert_eq!(
        kid_of(&set, KeyStatus::Active).as_deref(),
        Some(old_kid.as_str())
    );
    let next_kid = kid_of(&set, KeyStatus::Next).expect("a published next RS256 key");
    let published: BTreeSet<String> = set.infos().iter().map(|i| i.kid.clone()).collect();
    for n in 1..=3 {
        assert_eq!(
            jwks_kids(c.node(n)).await,
            published,
            "node {n} before rotation"
        );
    }

    // `relais keys rotate --alg RS256`, run on one node.
    assert_eq!(keys::rotate(&dir, Alg::RS256).unwrap(), Rotation::Rotated);
    let rotated = Instant::now();
    let set = KeySet::load(&dir).unwrap();
    assert_eq!(
        kid_of(&set, KeyStatus::Active).as_deref(),
        Some(next_kid.as_str())
    );
    assert_eq!(
        kid_of(&set, KeyStatus::Retired).as_deref(),
        Some(old_kid.as_str())
    );
    let expected: BTreeSet<String> = set.infos().iter().map(|i| i.kid.clone()).collect();
    assert!(
        expected.contains(&old_kid),
        "the retired key stays published"
    );
    loop {
        let mut all = true;
        for n in 1..=3 {
            all &= jwks_kids(c.node(n)).await == expected;
        }
        if all {
            break;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(8),
            "the nodes did not publish the rotated keys within 8 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "rotation published by every node after {:?}",
        rotated.elapsed()
    );

    // A token issued by node 2 after the rotation is signed with the new
    // active key, and verifies with a refreshed JWKS (new discovery).
    let rp = Rp::demo(&c.env).await;
    let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
    let arrived = hop(browser.http.get(c.on(2, &auth.url)))
        .await
        .redirect("prompt=none on node 2");
    let code = rp.code_from(&arrived, &auth);
    let after = token_on(c.node(2), &rp, &code, &auth).await;
    let header = jws_header(after["id_token"].as_str().unwrap());
    assert_eq!(header["alg"], "RS256");
    assert_eq!(
        header["kid"],
        next_kid.as_str(),
        "signed with the new active key"
    );
    verify_id_token(
        &rp,
        after["id_token"].as_str().unwrap(),
        &auth.nonce,
        after["access_token"].as_str().unwrap(),
    );
    // Nodes 1 and 3 sign with the new key too.
    for n in [1, 3] {
        let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
        let arrived = hop(browser.http.get(c.on(n, &auth.url)))
            .await
            .redirect("prompt=none");
        let t = token_on(c.node(n), &rp, &rp.code_from(&arrived, &auth), &auth).await;
        assert_eq!(
            jws_header(t["id_token"].as_str().unwrap())["kid"],
            next_kid.as_str(),
            "node {n}"
        );
    }
    // The token signed before the rotation still verifies (retired key published).
    let first_auth_nonce = decode_nonce(before["id_token"].as_str().unwrap());
    verify_id_token(
        &rp,
        before["id_token"].as_str().unwrap(),
        &first_auth_nonce,
        before["access_token"].as_str().unwrap(),
    );
    c.cleanup().await;
}

fn decode_nonce(id_token: &str) -> String {
    relais::upstream::decode_payload(id_token).unwrap()["nonce"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_dies_mid_flow() {
    let Some(db) = database("a_node_dies_mid_flow") else {
        return;
    };
    let mut c = Cluster::start(db, 3).await;
    let rp = Rp::demo(&c.env).await;

    // A sign-in completed on node 2 before it dies.
    let done = Browser::new();
    let auth0 = rp.authorize(PIVOT, &[]);
    let upstream = begin(&c, &done, &auth0.url, Plan::all(2)).await;
    let (arrived, _) = finish(&c, &done, &upstream, "angela", Plan::all(2)).await;
    let t0 = token_on(c.node(2), &rp, &rp.code_from(&arrived, &auth0), &auth0).await;

    // Another one starts on node 2 (authorize and provider choice: the
    // interaction and the upstream state are written by node 2)...
    let browser = Browser::new();
    let auth = rp.authorize(PIVOT, &[]);
    let upstream = begin(&c, &browser, &auth.url, Plan::all(2)).await;

    // ... node 2 dies ...
    c.kill(2).await;
    let refused = reqwest::Client::new()
        .get(format!("{}/healthz", c.node(2)))
        .send()
        .await;
    assert!(refused.is_err(), "node 2 must be down");

    // ... and the sign-in completes on node 3.
    let (arrived, _) = finish(&c, &browser, &upstream, "paul", Plan::all(3)).await;
    let code = rp.code_from(&arrived, &auth);
    let t = token_on(c.node(3), &rp, &code, &auth).await;
    let claims = verify_id_token(
        &rp,
        t["id_token"].as_str().unwrap(),
        &auth.nonce,
        t["access_token"].as_str().unwrap(),
    );
    let (status, info) = userinfo_on(c.node(3), t["access_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["sub"], claims["sub"]);
    assert_eq!(info["family_name"], "Durand");

    // The sign-in completed on node 2 is not lost: its access token works on
    // the surviving nodes, its ID token still verifies.
    for n in [1, 3] {
        let (status, info) = userinfo_on(c.node(n), t0["access_token"].as_str().unwrap()).await;
        assert_eq!(status, 200, "node {n}: {info}");
        assert_eq!(info["family_name"], "DUBOIS");
    }
    verify_id_token(
        &rp,
        t0["id_token"].as_str().unwrap(),
        &auth0.nonce,
        t0["access_token"].as_str().unwrap(),
    );
    // Its SSO session too.
    let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
    let arrived = hop(done.http.get(c.on(3, &auth.url))).await.redirect("SSO");
    rp.code_from(&arrived, &auth);
    c.cleanup().await;
}
