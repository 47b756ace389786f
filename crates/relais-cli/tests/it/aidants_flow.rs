//! Delegated sign-in (aidants) end to end, on SQLite and PostgreSQL: an
//! aidant signs in with password + TOTP on the provider choice page, picks
//! an usager and a domain; the service (the independent `openidconnect`
//! client) receives the usager's identity and pairwise `sub` plus `act` and
//! `mandate`; the mandate is re-checked at the token endpoint and userinfo.

use relais::aidants::{totp, Actor, NewAidant, NewMandate, Role, Salt};
use relais::store::Store;
use relais::subject::citizen::{pairwise_sub, PivotIdentity};
use relais_testkit::*;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";
const SIRET_A: &str = "35600000000048";
const SIRET_B: &str = "73282932000074";
const REDIRECT: &str = "http://deleg.test/cb";
const SCOPES: &[&str] = &["openid", "profile", "identite_pivot"];

/// A service accepting delegation for `social` and `logement` only.
const DELEG: &str = r#"
[[federations.citizen.clients]]
client_id = "deleg-svc"
name = "Caisse sociale"
client_secret = "deleg-secret"
redirect_uris = ["http://deleg.test/cb"]
scopes = ["openid", "profile", "identite_pivot"]
delegation_domains = ["social", "logement"]
"#;

struct Setup {
    org_a: String,
    org_b: String,
    aidant_a: String,
    secret_a: String,
    secret_b: String,
    mandate: String,
}

fn salt() -> Salt {
    Salt::new(&[7u8; 32]).unwrap()
}

/// The TOTP encryption key of the Relais under test (in its keys folder).
fn totp_key(env: &Env) -> relais::aidants::TotpKey {
    relais::aidants::TotpKey::beside(&env.stack.state.journal_salt_path).unwrap()
}

async fn aidant(env: &Env, email: &str, org: &str, now: i64) -> (String, String) {
    let a = env
        .stack
        .state
        .store
        .create_aidant(
            &NewAidant {
                email,
                name: "Marie Dupont",
                password: PASSWORD,
                org_id: org,
                role: Role::Aidant,
            },
            &Actor::Admin,
            &salt(),
            &totp_key(env),
            now,
        )
        .await
        .unwrap();
    (a.id, a.totp_secret)
}

/// Two organisations with one aidant each, and angela (pivot identity of
/// the demo person) under a mandate of organisation A for `social` and
/// `papiers`, 30 days.
async fn setup(env: &Env) -> Setup {
    let s = &env.stack.state.store;
    let now = env.stack.state.now();
    let org_a = s
        .create_organisation("France Services Rennes", SIRET_A, &[], &Actor::Admin, now)
        .await
        .unwrap();
    let org_b = s
        .create_organisation("Mairie de Brest", SIRET_B, &[], &Actor::Admin, now)
        .await
        .unwrap();
    let (aidant_a, secret_a) = aidant(env, "marie@mairie.fr", &org_a.id, now).await;
    let (aidant_b, secret_b) = aidant(env, "paul@brest.fr", &org_b.id, now).await;
    let _ = aidant_b;
    let angela = relais_demo::idp::demo_people(1)
        .into_iter()
        .find(|p| p.login == "angela")
        .unwrap();
    let identity = PivotIdentity::from_claims(&angela.claims).unwrap();
    let usager = s
        .upsert_usager(&identity.identity_key(), &salt(), now)
        .await
        .unwrap();
    s.set_usager_claims(&usager, &Value::Object(identity.to_claims()).to_string())
        .await
        .unwrap();
    let m = s
        .create_mandate(
            &NewMandate {
                org_id: &org_a.id,
                usager_id: &usager,
                aidant_id: &aidant_a,
                domains: &["social", "papiers"],
                duration_days: 30,
                consent_version: "v1",
                consent_hash: "h",
            },
            &relais::aidants::default_domains(),
            now,
        )
        .await
        .unwrap();
    Setup {
        org_a: org_a.id,
        org_b: org_b.id,
        aidant_a,
        secret_a,
        secret_b,
        mandate: m.id,
    }
}

async fn rp(env: &Env) -> Rp {
    Rp::new(env, "deleg-svc", Some("deleg-secret"), REDIRECT).await
}

/// From the authorization URL to the choice page; returns (page URL, html).
async fn choice_page(browser: &Browser, auth_url: &str) -> (String, String) {
    let (url, html) = browser.page_ok(auth_url, REDIRECT).await;
    assert!(url.contains("/interaction/"), "{url}");
    (url, html)
}

/// Submit the aidant sign-in form; returns the resulting step.
async fn aidant_login(browser: &Browser, choice_url: &str, email: &str, code: &str) -> Step {
    let (url, html) = browser
        .page_ok(&format!("{choice_url}/aidant"), REDIRECT)
        .await;
    assert!(html.contains("name=\"totp\""), "{html}");
    aidant_credentials(browser, &url, &html, (email, PASSWORD, code), REDIRECT).await
}

/// Post a (mandate, domain) choice on the usagers page.
async fn choose(browser: &Browser, usagers_url: &str, html: &str, choice: &str) -> Step {
    browser
        .submit(usagers_url, html, &[("choice", choice)], REDIRECT)
        .await
}

/// Accept the information page and return where the browser was sent.
async fn accept(browser: &Browser, step: Step) -> String {
    let (url, html) = step.ok();
    assert!(html.contains("name=\"decision\""), "{html}");
    assert!(html.contains("id=\"delegation\""), "{html}");
    browser
        .submit(&url, &html, &[("decision", "accept")], REDIRECT)
        .await
        .arrived()
}

/// A full delegated sign-in with aidant A for `social`; returns the code's
/// redirect and the authorization request.
async fn delegated(env: &Env, rp: &Rp, set: &Setup) -> (String, Auth) {
    let browser = Browser::new();
    let auth = rp.authorize(SCOPES, &[]);
    let (choice_url, html) = choice_page(&browser, &auth.url).await;
    assert!(html.contains("aidant-entry"), "{html}");
    let code = fresh_code(env, &set.secret_a);
    let (url, html) = aidant_login(&browser, &choice_url, "marie@mairie.fr", &code)
        .await
        .ok();
    assert!(html.contains("Angela Claire Louise DUBOIS"), "{html}");
    let step = choose(&browser, &url, &html, &format!("{}:social", set.mandate)).await;
    (accept(&browser, step).await, auth)
}

#[tokio::test]
async fn delegated_sign_in_carries_usager_act_and_mandate() {
    for db in databases() {
        let env = Env::start_with(db, DELEG.to_string(), vec![], false).await;
        let rp = rp(&env).await;
        // Discovery announces the claims.
        let disco: Value =
            reqwest::get(format!("{}/.well-known/openid-configuration", env.broker()))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let supported = disco["claims_supported"].as_array().unwrap();
        assert!(supported.contains(&json!("act")) && supported.contains(&json!("mandate")));
        // Angela signs in herself first: her sub at this service.
        let own = full_sign_in(&env, &rp, &Browser::new(), "impots", "angela", SCOPES, &[]).await;
        let set = setup(&env).await;

        let (arrived, auth) = delegated(&env, &rp, &set).await;
        let code = rp.code_from(&arrived, &auth);
        let t = rp.exchange(&code, &auth).await.unwrap();
        let c = &t.claims;
        assert_eq!(c["sub"], own.claims["sub"], "the usager's own pairwise sub");
        let sector = "deleg.test";
        let fed = env
            .stack
            .state
            .federations
            .iter()
            .find(|f| f.id == "citizen")
            .unwrap();
        let secret = &fed.pairwise_secret;
        let aidant_sub = pairwise_sub(secret, sector, &format!("aidant:{}", set.aidant_a));
        assert_eq!(
            c["act"],
            json!({"sub": aidant_sub, "siret": SIRET_A, "organisation": "France Services Rennes"})
        );
        assert_ne!(c["act"]["sub"], c["sub"]);
        assert_eq!(c["mandate"]["id"], json!(set.mandate));
        assert_eq!(c["mandate"]["domain"], json!("social"));
        assert!(c["mandate"]["expires_at"].as_i64().unwrap() > env.stack.state.now());
        assert_eq!(c["acr"], json!("eidas1"));
        assert_eq!(c["amr"], json!(["pwd", "otp"]));

        let r = rp.userinfo(&t.access_token).await;
        assert_eq!(r.status(), 200);
        let u: Value = r.json().await.unwrap();
        assert_eq!(u["sub"], own.claims["sub"]);
        assert_eq!(u["given_name"], json!("Angela Claire Louise"));
        assert_eq!(u["family_name"], json!("DUBOIS"));
        assert_eq!(u["act"], c["act"]);
        assert_eq!(u["mandate"], c["mandate"]);

        // The use is journalled (client, domain), without personal data.
        let entries = env.stack.state.store.journal_page(0, 1000).await.unwrap();
        let used: Vec<_> = entries
            .iter()
            .filter(|e| e.kind == "mandate_used")
            .collect();
        assert_eq!(used.len(), 1);
        let data: Value = serde_json::from_str(&used[0].data).unwrap();
        assert_eq!(data["client"], json!("deleg-svc"));
        assert_eq!(data["domain"], json!("social"));
        assert_eq!(used[0].org_id.as_deref(), Some(set.org_a.as_str()));

        // Revocation takes effect at once on the token already issued.
        env.stack
            .state
            .store
            .revoke_domain(&set.mandate, "social", &Actor::Admin, env.stack.state.now())
            .await
            .unwrap();
        let r = rp.userinfo(&t.access_token).await;
        assert_eq!(r.status(), 401);
        let www = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(www.contains("invalid_token"), "{www}");
        env.cleanup().await;
    }
}

#[tokio::test]
async fn mandate_revoked_or_expired_refused_at_token_and_selection() {
    for db in databases() {
        let env = Env::start_with(db, DELEG.to_string(), vec![], false).await;
        let rp = rp(&env).await;
        let set = setup(&env).await;
        let store = &env.stack.state.store;

        // Revoked between the code and its redemption: invalid_grant.
        let (arrived, auth) = delegated(&env, &rp, &set).await;
        let code = rp.code_from(&arrived, &auth);
        store
            .revoke_mandate(&set.mandate, &Actor::Admin, env.stack.state.now())
            .await
            .unwrap();
        assert_eq!(
            rp.exchange(&code, &auth).await.unwrap_err(),
            "invalid_grant"
        );

        // Revoked: no longer offered, and refused if posted anyway.
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&browser, &auth.url).await;
        let code = fresh_code(&env, &set.secret_a);
        let (url, _, html) = aidant_login(&browser, &choice_url, "marie@mairie.fr", &code)
            .await
            .page();
        assert!(html.contains("no-mandate"), "{html}");
        assert!(!html.contains(&set.mandate), "{html}");
        browser
            .post(
                &url,
                &[
                    ("csrf".to_string(), csrf_of(&browser, &choice_url).await),
                    ("choice".to_string(), format!("{}:social", set.mandate)),
                ],
                REDIRECT,
            )
            .await
            .expect_status(403);

        // Expired: a one-day mandate, two days later.
        let usager = store
            .mandate(&set.mandate)
            .await
            .unwrap()
            .unwrap()
            .usager_id;
        let now = env.stack.state.now();
        let m = store
            .create_mandate(
                &NewMandate {
                    org_id: &set.org_a,
                    usager_id: &usager,
                    aidant_id: &set.aidant_a,
                    domains: &["social"],
                    duration_days: 1,
                    consent_version: "v1",
                    consent_hash: "h",
                },
                &relais::aidants::default_domains(),
                now,
            )
            .await
            .unwrap();
        let mut s = set_clone(&set);
        s.mandate = m.id.clone();
        let (arrived, auth) = delegated(&env, &rp, &s).await;
        let t = rp
            .exchange(&rp.code_from(&arrived, &auth), &auth)
            .await
            .unwrap();
        assert_eq!(rp.userinfo(&t.access_token).await.status(), 200);
        let (arrived, auth) = delegated(&env, &rp, &s).await;
        let code = rp.code_from(&arrived, &auth);
        // The authorisation runs out a few seconds from now; ten seconds
        // later, the code (still fresh) and the access token are refused.
        expire_soon(store, &m.id, env.stack.state.now() + 5).await;
        env.stack.state.clock.advance(10);
        assert_eq!(
            rp.exchange(&code, &auth).await.unwrap_err(),
            "invalid_grant"
        );
        assert_eq!(rp.userinfo(&t.access_token).await.status(), 401);
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&browser, &auth.url).await;
        let code = fresh_code(&env, &set.secret_a);
        let (url, _, html) = aidant_login(&browser, &choice_url, "marie@mairie.fr", &code)
            .await
            .page();
        assert!(html.contains("no-mandate"), "{html}");
        browser
            .post(
                &url,
                &[
                    ("csrf".to_string(), csrf_of(&browser, &choice_url).await),
                    ("choice".to_string(), format!("{}:social", m.id)),
                ],
                REDIRECT,
            )
            .await
            .expect_status(403);
        env.cleanup().await;
    }
}

/// Move an authorisation's expiry (as someone with database access).
async fn expire_soon(store: &Store, mandate: &str, at: i64) {
    let sql = "UPDATE authorisations SET expires_at = $1 WHERE mandate_id = $2";
    match store.backend() {
        relais::store::Backend::Sqlite(p) => {
            sqlx::query(sql)
                .bind(at)
                .bind(mandate)
                .execute(p)
                .await
                .unwrap();
        }
        relais::store::Backend::Postgres(p) => {
            sqlx::query(sql)
                .bind(at)
                .bind(mandate)
                .execute(p)
                .await
                .unwrap();
        }
    }
}

fn set_clone(s: &Setup) -> Setup {
    Setup {
        org_a: s.org_a.clone(),
        org_b: s.org_b.clone(),
        aidant_a: s.aidant_a.clone(),
        secret_a: s.secret_a.clone(),
        secret_b: s.secret_b.clone(),
        mandate: s.mandate.clone(),
    }
}

/// The CSRF token of the form shown at `url`.
async fn csrf_of(browser: &Browser, url: &str) -> String {
    let html = browser
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = "name=\"csrf\" value=\"";
    let i = html.find(key).expect("csrf field") + key.len();
    let j = html[i..].find('"').unwrap() + i;
    unescape(&html[i..j])
}

#[tokio::test]
async fn delegation_refusals() {
    for db in databases() {
        let env = Env::start_with(db, DELEG.to_string(), vec![], false).await;
        let rp = rp(&env).await;
        let set = setup(&env).await;

        // A client without delegation never offers the entry, nor the page.
        let other = Rp::new(
            &env,
            "svc-b",
            Some("svc-b-secret"),
            "http://service-b.test/cb",
        )
        .await;
        let browser = Browser::new();
        let auth = other.authorize(&["openid"], &[]);
        let (url, html) = browser.go(&auth.url, "http://service-b.test/cb").await.ok();
        assert!(!html.contains("aidant-entry"), "{html}");
        assert!(!html.contains("aidant professionnel"), "{html}");
        browser
            .go(&format!("{url}/aidant"), "http://service-b.test/cb")
            .await
            .expect_status(404);

        // A service asking for more than an aidant's level gets no entry.
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[("acr_values", "eidas2")]);
        let (choice_url, html) = choice_page(&browser, &auth.url).await;
        assert!(!html.contains("aidant-entry"), "{html}");
        browser
            .go(&format!("{choice_url}/aidant"), REDIRECT)
            .await
            .expect_status(403);

        // Wrong code, then a replayed code: the same generic refusal.
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&browser, &auth.url).await;
        let now = env.stack.state.now();
        let valid: Vec<String> = [-30, 0, 30]
            .iter()
            .map(|d| totp::code_at(&set.secret_a, now + d).unwrap())
            .collect();
        let wrong = (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !valid.contains(c))
            .unwrap();
        let (_, html) = aidant_login(&browser, &choice_url, "marie@mairie.fr", &wrong)
            .await
            .expect_status(401);
        assert!(html.contains("aidant-error"), "{html}");
        let code = fresh_code(&env, &set.secret_a);
        aidant_login(&browser, &choice_url, "marie@mairie.fr", &code)
            .await
            .ok();
        let browser2 = Browser::new();
        let auth2 = rp.authorize(SCOPES, &[]);
        let (choice2, _) = choice_page(&browser2, &auth2.url).await;
        let (_, status, html) = aidant_login(&browser2, &choice2, "marie@mairie.fr", &code)
            .await
            .page();
        assert_eq!(status, 401, "replayed code must be refused");
        assert!(html.contains("aidant-error"), "{html}");
        // Unknown e-mail: the same page.
        let code = fresh_code(&env, &set.secret_a);
        let (_, html) = aidant_login(&browser2, &choice2, "nobody@mairie.fr", &code)
            .await
            .expect_status(401);
        assert!(html.contains("aidant-error"), "{html}");

        // A domain of the mandate the client does not accept is refused
        // (and not offered).
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&browser, &auth.url).await;
        let code = fresh_code(&env, &set.secret_a);
        let (url, _, html) = aidant_login(&browser, &choice_url, "marie@mairie.fr", &code)
            .await
            .page();
        assert!(html.contains(&format!("{}:social", set.mandate)), "{html}");
        assert!(
            !html.contains(&format!("{}:papiers", set.mandate)),
            "{html}"
        );
        choose(&browser, &url, &html, &format!("{}:papiers", set.mandate))
            .await
            .expect_status(403);

        // An aidant of another organisation neither sees nor uses it.
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&browser, &auth.url).await;
        let code = fresh_code(&env, &set.secret_b);
        let (url, html) = aidant_login(&browser, &choice_url, "paul@brest.fr", &code)
            .await
            .ok();
        assert!(html.contains("no-mandate"), "{html}");
        assert!(!html.contains("DUBOIS"), "{html}");
        browser
            .post(
                &url,
                &[
                    ("csrf".to_string(), csrf_of(&browser, &choice_url).await),
                    ("choice".to_string(), format!("{}:social", set.mandate)),
                ],
                REDIRECT,
            )
            .await
            .expect_status(403);
        let _ = &set.org_b;
        // Skipping the sign-in: no usager page.
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&browser, &auth.url).await;
        browser
            .go(&format!("{choice_url}/aidant/usagers"), REDIRECT)
            .await
            .expect_status(400);
        // No mandate use was journalled by any of this.
        let entries = env.stack.state.store.journal_page(0, 1000).await.unwrap();
        assert!(!entries.iter().any(|e| e.kind == "mandate_used"));
        env.cleanup().await;
    }
}

#[tokio::test]
async fn fresh_aidant_session_is_reused_for_15_minutes() {
    for db in databases() {
        let env = Env::start_with(db, DELEG.to_string(), vec![], false).await;
        let rp = rp(&env).await;
        let set = setup(&env).await;
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&browser, &auth.url).await;
        let code = fresh_code(&env, &set.secret_a);
        let (url, _, html) = aidant_login(&browser, &choice_url, "marie@mairie.fr", &code)
            .await
            .page();
        let step = choose(&browser, &url, &html, &format!("{}:social", set.mandate)).await;
        let arrived = accept(&browser, step).await;
        rp.exchange(&rp.code_from(&arrived, &auth), &auth)
            .await
            .unwrap();

        // Same browser, a few minutes later: straight to the usagers.
        env.stack.state.clock.advance(5 * 60);
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, html) = choice_page(&browser, &auth.url).await;
        assert!(html.contains("aidant-entry"), "{html}");
        let (url, html) = browser
            .go(&format!("{choice_url}/aidant"), REDIRECT)
            .await
            .ok();
        assert!(url.ends_with("/aidant/usagers"), "{url}");
        let step = choose(&browser, &url, &html, &format!("{}:social", set.mandate)).await;
        let arrived = accept(&browser, step).await;
        let t = rp
            .exchange(&rp.code_from(&arrived, &auth), &auth)
            .await
            .unwrap();
        assert_eq!(t.claims["mandate"]["domain"], json!("social"));
        assert_eq!(t.claims["amr"], json!(["pwd", "otp"]));

        // More than 15 minutes after the sign-in: password and code again.
        env.stack.state.clock.advance(11 * 60);
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&browser, &auth.url).await;
        let (_, html) = browser
            .go(&format!("{choice_url}/aidant"), REDIRECT)
            .await
            .ok();
        assert!(html.contains("name=\"totp\""), "{html}");
        // Another browser never gets the aidant's session.
        let other = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (choice_url, _) = choice_page(&other, &auth.url).await;
        let (_, _, html) = other
            .go(&format!("{choice_url}/aidant"), REDIRECT)
            .await
            .page();
        assert!(html.contains("name=\"totp\""), "{html}");
        env.cleanup().await;
    }
}

/// `relais demo`'s aidant data: created idempotently; the printed
/// credentials and fixed TOTP secret work through the pages at the demo
/// service, which accepts delegation; angela is listed and can be chosen.
#[tokio::test]
async fn demo_aidant_signs_in_with_printed_secret() {
    use relais_demo::aidants::*;
    for db in databases() {
        let env = Env::start_with(db, String::new(), vec![], false).await;
        let first = seed(&env.stack).await.unwrap();
        let again = seed(&env.stack).await.unwrap();
        assert_eq!(first.org_id, again.org_id);
        assert_eq!(first.aidant_id, again.aidant_id);
        assert_eq!(first.mandate_id, again.mandate_id, "idempotent");
        let s = &env.stack.state.store;
        let org = s
            .organisation_by_siret(DEMO_ORG_SIRET)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(org.name, DEMO_ORG_NAME);
        assert!(demo_otpauth_uri().contains(DEMO_AIDANT_TOTP));

        let rp = Rp::demo(&env).await;
        let stop = format!("{}/callback", env.stack.urls.service);
        let browser = Browser::new();
        let auth = rp.authorize(SCOPES, &[]);
        let (url, html) = browser.go(&auth.url, &stop).await.ok();
        assert!(html.contains("aidant-entry"), "{html}");
        let (url, html) = browser.go(&format!("{url}/aidant"), &stop).await.ok();
        env.stack.state.clock.advance(30);
        let code = totp::code_at(DEMO_AIDANT_TOTP, env.stack.state.now()).unwrap();
        let credentials = (DEMO_AIDANT_EMAIL, DEMO_AIDANT_PASSWORD, &*code);
        let (url, html) = aidant_credentials(&browser, &url, &html, credentials, &stop)
            .await
            .ok();
        assert!(html.contains("Angela Claire Louise DUBOIS"), "{html}");
        let (url, html) = browser
            .submit(
                &url,
                &html,
                &[("choice", &format!("{}:papiers", first.mandate_id))],
                &stop,
            )
            .await
            .ok();
        assert!(html.contains("id=\"delegation\""), "{html}");
        let arrived = browser
            .submit(&url, &html, &[("decision", "accept")], &stop)
            .await
            .arrived();
        let code = rp.code_from(&arrived, &auth);
        let t = rp.exchange(&code, &auth).await.unwrap();
        assert_eq!(t.claims["mandate"]["id"], json!(first.mandate_id));
        assert_eq!(t.claims["mandate"]["domain"], json!("papiers"));
        assert_eq!(t.claims["act"]["siret"], json!(DEMO_ORG_SIRET));
        env.cleanup().await;
    }
}

/// A stack with `relais demo`'s aidant data; `behind_proxy`: Relais trusts
/// `X-Forwarded-For` (for the per-IP limits).
async fn demo_stack(
    db: Option<String>,
    behind_proxy: bool,
) -> (Env, relais_demo::aidants::DemoAidants) {
    let mut overrides = vec![];
    if behind_proxy {
        overrides.push((
            "RELAIS__SERVER__TRUST_FORWARDED_HEADERS".to_string(),
            "true".to_string(),
        ));
    }
    let env = Env::start_with(db, String::new(), overrides, false).await;
    let demo = relais_demo::aidants::seed(&env.stack).await.unwrap();
    (env, demo)
}

/// The demo aidant also joins a second organisation, "Mairie de Brest".
async fn demo_aidant_joins_brest(
    env: &Env,
    demo: &relais_demo::aidants::DemoAidants,
) -> relais::aidants::Organisation {
    let store = &env.stack.state.store;
    let now = env.stack.state.now();
    let brest = store
        .create_organisation("Mairie de Brest", SIRET_B, &[], &Actor::Admin, now)
        .await
        .unwrap();
    store
        .add_aidant_to_org(&demo.aidant_id, &brest.id, Role::Aidant, &Actor::Admin, now)
        .await
        .unwrap();
    brest
}

/// The kinds of the journal's first 1000 entries.
async fn journal_kinds(store: &Store) -> Vec<String> {
    store
        .journal_page(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// Mandate creation through the pages: aidant sign-in (and TOTP again after
/// 15 minutes), domains and duration, the usager's OWN sign-in (no recap
/// without it), recap confirmed by TOTP, printable attestation; the new
/// mandate is then usable in a delegated sign-in at the demo service.
#[tokio::test]
async fn mandate_creation_requires_usager_sign_in_then_usable() {
    use relais_demo::aidants::*;
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let store = &env.stack.state.store;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        let browser = Browser::new();

        // Aidant sign-in.
        let (url, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert!(html.contains("name=\"email\""), "{html}");
        let wrong = (DEMO_AIDANT_EMAIL, "wrong password!", &*demo_code(&env));
        aidant_credentials(&browser, &url, &html, wrong, &stop)
            .await
            .expect_status(401);
        let right = (DEMO_AIDANT_EMAIL, DEMO_AIDANT_PASSWORD, &*demo_code(&env));
        let (_, html) = aidant_credentials(&browser, &url, &html, right, &stop)
            .await
            .ok();
        assert!(html.contains("mandate-draft"), "{html}");

        // 16 minutes later: only a new TOTP code is asked.
        env.stack.state.clock.advance(16 * 60);
        let (url, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert!(
            !html.contains("name=\"email\"") && html.contains("name=\"totp\""),
            "{html}"
        );
        let (url, html) = browser
            .submit(&url, &html, &[("totp", &demo_code(&env))], &stop)
            .await
            .ok();
        assert!(html.contains("mandate-draft"), "{html}");

        // Domains and duration; then the usager's own sign-in.
        let (choice_url, html) = browser
            .submit(
                &url,
                &html,
                &[
                    ("domain_famille", "on"),
                    ("domain_social", "on"),
                    ("duration", "30"),
                ],
                &stop,
            )
            .await
            .ok();
        assert!(html.contains("name=\"provider\""), "{html}");
        assert!(!html.contains("aidant-entry"), "{html}");

        // No recap, no creation without the usager's sign-in.
        browser
            .go(&format!("{choice_url}/mandat"), &stop)
            .await
            .expect_status(400);
        let (_, mut hidden) = form(&html);
        hidden.push(("informed".into(), "yes".into()));
        hidden.push(("totp".into(), demo_code(&env)));
        browser
            .post(&format!("{choice_url}/mandat"), &hidden, &stop)
            .await
            .expect_status(400);
        let (_, status, _) = browser
            .go(&format!("{choice_url}/consent"), &stop)
            .await
            .page();
        assert_eq!(status, 400, "never reaches a service's consent");
        assert_eq!(store.list_mandates(&demo.org_id).await.unwrap().len(), 1);

        // Eric signs in himself at his provider.
        let (url, html) = browser
            .submit(&choice_url, &html, &[("provider", "impots")], &stop)
            .await
            .ok();
        assert!(html.contains("name=\"password\""), "{html}");
        let (recap_url, html) = provider_login(&browser, &url, &html, "eric", &stop)
            .await
            .ok();
        assert!(recap_url.ends_with("/mandat"), "{recap_url}");
        assert!(
            html.contains("mandate-recap") && html.contains("MERCIER"),
            "{html}"
        );
        assert!(html.contains("famille, social"), "{html}");

        // Confirmation: checkbox and a valid, fresh code are required.
        let recap = html;
        let code = demo_code(&env);
        let step = confirm_recap(&browser, &recap_url, &recap, false, &code, &stop);
        assert_eq!(
            step.await.status(),
            401,
            "not confirmed that the usager was informed"
        );
        let step = confirm_recap(&browser, &recap_url, &recap, true, "000000", &stop);
        assert_eq!(step.await.status(), 401, "wrong code");
        assert_eq!(store.list_mandates(&demo.org_id).await.unwrap().len(), 1);
        let (att_url, html) =
            confirm_recap(&browser, &recap_url, &recap, true, &demo_code(&env), &stop)
                .await
                .ok();
        assert!(att_url.ends_with("/attestation"), "{att_url}");
        let mid = att_url.rsplit('/').nth(1).unwrap().to_string();
        let m = store.mandate(&mid).await.unwrap().unwrap();
        assert_eq!(m.org_id, demo.org_id);
        assert_eq!(m.consent_version, "relais-mandat-v1");
        let domains: Vec<_> = m.authorisations.iter().map(|a| a.domain.as_str()).collect();
        assert_eq!(domains, ["famille", "social"]);
        let days = (m.authorisations[0].expires_at - m.authorisations[0].starts_at) / 86_400;
        assert_eq!(days, 30);
        let org = store.organisation(&demo.org_id).await.unwrap().unwrap();
        let hash = relais::aidants::rules::attestation_hash(&m, &org);
        assert!(html.contains(&hash) && html.contains(&mid), "{html}");
        let (_, claims) = store.usager(&m.usager_id).await.unwrap().unwrap();
        assert!(claims.unwrap().contains("Mercier"));
        // The interaction is used up.
        browser.go(&recap_url, &stop).await.expect_status(400);
        let kinds = journal_kinds(store).await;
        assert!(kinds.contains(&"mandate.created".to_string()));
        assert!(kinds.contains(&"aidant.totp_confirmed".to_string()));

        // Eric's own sub at the demo service, then the aidant acts for him.
        let rp = Rp::demo(&env).await;
        let own = full_sign_in(&env, &rp, &Browser::new(), "impots", "eric", SCOPES, &[]).await;
        let auth = rp.authorize(SCOPES, &[]);
        let (choice, html) = browser.go(&auth.url, &stop).await.ok();
        assert!(html.contains("aidant-entry"), "{html}");
        // The aidant's sign-in on this browser is fresh: straight to the usagers.
        let (url, html) = browser.go(&format!("{choice}/aidant"), &stop).await.ok();
        assert!(html.contains("MERCIER"), "{html}");
        let (url, html) = browser
            .submit(&url, &html, &[("choice", &format!("{mid}:famille"))], &stop)
            .await
            .ok();
        let arrived = browser
            .submit(&url, &html, &[("decision", "accept")], &stop)
            .await
            .arrived();
        let t = rp
            .exchange(&rp.code_from(&arrived, &auth), &auth)
            .await
            .unwrap();
        assert_eq!(t.claims["sub"], own.claims["sub"]);
        assert_eq!(t.claims["mandate"]["id"], json!(mid));
        assert_eq!(t.claims["mandate"]["domain"], json!("famille"));
        env.cleanup().await;
    }
}

/// Delegated sign-in at the demo service with the demo aidant on `browser`
/// (signing in unless the browser holds a fresh aidant sign-in).
async fn demo_delegated(env: &Env, rp: &Rp, browser: &Browser, choice: &str) -> Tokens {
    use relais_demo::aidants::*;
    let stop = format!("{}/callback", env.stack.urls.service);
    let auth = rp.authorize(SCOPES, &[]);
    let (url, _) = browser.go(&auth.url, &stop).await.ok();
    let (mut url, status, mut html) = browser.go(&format!("{url}/aidant"), &stop).await.page();
    assert_eq!(status, 200, "{html}");
    if html.contains("name=\"password\"") {
        (url, _, html) = aidant_credentials(
            browser,
            &url,
            &html,
            (DEMO_AIDANT_EMAIL, DEMO_AIDANT_PASSWORD, &demo_code(env)),
            &stop,
        )
        .await
        .page();
    }
    let (url, html) = browser
        .submit(&url, &html, &[("choice", choice)], &stop)
        .await
        .ok();
    let arrived = browser
        .submit(&url, &html, &[("decision", "accept")], &stop)
        .await
        .arrived();
    rp.exchange(&rp.code_from(&arrived, &auth), &auth)
        .await
        .unwrap()
}

/// Revocation by an aidant through the pages (one domain, then the whole
/// mandate): a fresh sign-in is required, a printable revocation
/// attestation is shown, and access tokens already issued stop working at
/// userinfo at once.
#[tokio::test]
async fn aidant_revocation_page_takes_effect_immediately() {
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let mid = demo.mandate_id.clone();
        let store = &env.stack.state.store;
        let rp = Rp::demo(&env).await;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        let browser = Browser::new();
        let first = demo_delegated(&env, &rp, &browser, &format!("{mid}:papiers")).await;
        assert_eq!(rp.userinfo(&first.access_token).await.status(), 200);

        // The aidant's page lists the mandate with its revocation forms.
        let (_, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert!(html.contains(&format!("mandate-{mid}")), "{html}");
        assert!(html.contains("ANGELA") || html.contains("DUBOIS"), "{html}");
        let (_, hidden) = form(&html);
        let revoke = format!("{broker}/aidant/mandats/{mid}/revoquer");

        // Wrong CSRF token: refused.
        let bad = vec![
            ("csrf".to_string(), "nope".to_string()),
            ("domain".to_string(), "papiers".to_string()),
        ];
        browser.post(&revoke, &bad, &stop).await.expect_status(403);
        // Not fresh: the code is asked again, nothing revoked.
        env.stack.state.clock.advance(16 * 60);
        let mut fields = hidden.clone();
        fields.push(("domain".into(), "papiers".into()));
        let (url, html) = browser.post(&revoke, &fields, &stop).await.ok();
        assert!(
            html.contains("name=\"totp\"") && !html.contains("name=\"email\""),
            "{html}"
        );
        let now = env.stack.state.now();
        assert!(store
            .active_authorisation(&mid, "papiers", now)
            .await
            .unwrap());
        let (_, html) = browser
            .submit(&url, &html, &[("totp", &demo_code(&env))], &stop)
            .await
            .ok();
        let (_, hidden) = form(&html);
        // Tokens issued under the renewed sign-in (same browser, reused).
        let papiers = demo_delegated(&env, &rp, &browser, &format!("{mid}:papiers")).await;
        let social = demo_delegated(&env, &rp, &browser, &format!("{mid}:social")).await;
        assert_eq!(rp.userinfo(&papiers.access_token).await.status(), 200);

        // One domain.
        let mut fields = hidden.clone();
        fields.push(("domain".into(), "papiers".into()));
        let (url, html) = browser.post(&revoke, &fields, &stop).await.ok();
        assert!(url.ends_with("/revocation"), "{url}");
        assert!(
            html.contains("papiers") && !html.contains("<td>social</td>"),
            "{html}"
        );
        let m = store.mandate(&mid).await.unwrap().unwrap();
        let org = store.organisation(&m.org_id).await.unwrap().unwrap();
        assert!(html.contains(&relais::aidants::rules::revocation_hash(&m, &org)));
        assert_eq!(rp.userinfo(&papiers.access_token).await.status(), 401);
        assert_eq!(rp.userinfo(&social.access_token).await.status(), 200);

        // The whole mandate.
        browser.post(&revoke, &hidden, &stop).await.ok();
        assert_eq!(rp.userinfo(&social.access_token).await.status(), 401);
        let now = env.stack.state.now();
        assert!(!store
            .active_authorisation(&mid, "social", now)
            .await
            .unwrap());
        let kinds = journal_kinds(store).await;
        assert!(kinds.contains(&"authorisation.revoked".to_string()));
        assert!(kinds.contains(&"mandate.revoked".to_string()));

        // Another browser (no aidant sign-in) sees neither page nor action.
        let other = Browser::new();
        let (_, html) = other
            .go(&format!("{broker}/aidant/mandats/{mid}/revocation"), &stop)
            .await
            .ok();
        assert!(
            html.contains("name=\"email\"") && !html.contains(&mid),
            "{html}"
        );
        env.cleanup().await;
    }
}

/// The usager signs in themselves at `/usager` and returns to a page
/// listing the mandates about them (no broker session, no service).
async fn usager_page(env: &Env, browser: &Browser, login: &str) -> (String, String) {
    let stop = format!("{}/callback", env.stack.urls.service);
    let broker = env.broker().to_string();
    let (choice_url, html) = browser.go(&format!("{broker}/usager"), &stop).await.ok();
    assert!(html.contains("name=\"provider\""), "{html}");
    assert!(!html.contains("aidant-entry"), "{html}");
    let (url, html) = browser
        .submit(&choice_url, &html, &[("provider", "impots")], &stop)
        .await
        .ok();
    let (url, html) = provider_login(browser, &url, &html, login, &stop)
        .await
        .ok();
    assert!(url.ends_with("/usager"), "{url}");
    (url, html)
}

/// Flow 4: the usager revokes alone. Angela sees her mandate (organisation,
/// domains, last use) and revokes one domain: a delegated access token for
/// that domain stops working at userinfo. Another person sees nothing and
/// cannot revoke her mandate.
#[tokio::test]
async fn usager_sees_and_revokes_own_mandate() {
    use relais_demo::aidants::*;
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let mid = demo.mandate_id.clone();
        let store = &env.stack.state.store;
        let rp = Rp::demo(&env).await;
        let stop = format!("{}/callback", env.stack.urls.service);
        let aidant_browser = Browser::new();
        let papiers = demo_delegated(&env, &rp, &aidant_browser, &format!("{mid}:papiers")).await;
        let social = demo_delegated(&env, &rp, &aidant_browser, &format!("{mid}:social")).await;
        assert_eq!(rp.userinfo(&papiers.access_token).await.status(), 200);

        // Angela, on her own browser.
        let browser = Browser::new();
        let (url, html) = usager_page(&env, &browser, DEMO_USAGER_LOGIN).await;
        assert!(html.contains(&format!("mandate-{mid}")), "{html}");
        assert!(html.contains(DEMO_ORG_NAME), "{html}");
        assert!(
            html.contains("papiers") && html.contains("social"),
            "{html}"
        );
        assert!(html.contains("Dernières utilisations"), "{html}");
        let (action, _) = form(&html);
        let csrf = hidden_field(&html, "csrf");
        let target = absolute(&url, &action);

        // Wrong CSRF token: refused, nothing revoked.
        let bad = vec![
            ("csrf".to_string(), "nope".to_string()),
            ("mandate".to_string(), mid.clone()),
            ("domain".to_string(), "papiers".to_string()),
        ];
        browser.post(&target, &bad, &stop).await.expect_status(403);
        let now = env.stack.state.now();
        assert!(store
            .active_authorisation(&mid, "papiers", now)
            .await
            .unwrap());

        // One domain.
        let fields = vec![
            ("csrf".to_string(), csrf.clone()),
            ("mandate".to_string(), mid.clone()),
            ("domain".to_string(), "papiers".to_string()),
        ];
        let (back, _) = browser.post(&target, &fields, &stop).await.ok();
        assert!(back.ends_with("/usager"), "{back}");
        assert_eq!(rp.userinfo(&papiers.access_token).await.status(), 401);
        assert_eq!(rp.userinfo(&social.access_token).await.status(), 200);
        let m = store.mandate(&mid).await.unwrap().unwrap();
        let revoked = m
            .authorisations
            .iter()
            .find(|a| a.domain == "papiers")
            .unwrap();
        assert!(revoked
            .revoked_by
            .as_deref()
            .unwrap()
            .starts_with("usager:"));

        // No broker session was opened for her: a service asks again.
        let auth = rp.authorize(SCOPES, &[]);
        let (_, html) = browser.go(&auth.url, &stop).await.ok();
        assert!(html.contains("name=\"provider\""), "{html}");

        // Eric, without any mandate, sees nothing.
        let other = Browser::new();
        let (_, html) = usager_page(&env, &other, "eric").await;
        assert!(html.contains("no-mandate"), "{html}");
        assert!(!html.contains(&mid), "{html}");
        // With a mandate of his own, he still cannot revoke Angela's.
        let eric = relais_demo::idp::demo_people(1)
            .into_iter()
            .find(|p| p.login == "eric")
            .unwrap();
        let identity = PivotIdentity::from_claims(&eric.claims).unwrap();
        let now = env.stack.state.now();
        let eric_id = store
            .upsert_usager(&identity.identity_key(), &salt(), now)
            .await
            .unwrap();
        let eric_mandate = store
            .create_mandate(
                &NewMandate {
                    org_id: &demo.org_id,
                    usager_id: &eric_id,
                    aidant_id: &demo.aidant_id,
                    domains: &["famille"],
                    duration_days: 30,
                    consent_version: "v1",
                    consent_hash: "h",
                },
                &relais::aidants::default_domains(),
                now,
            )
            .await
            .unwrap();
        let other = Browser::new();
        let (url, html) = usager_page(&env, &other, "eric").await;
        assert!(
            html.contains(&format!("mandate-{}", eric_mandate.id)),
            "{html}"
        );
        assert!(!html.contains(&mid), "{html}");
        let (action, hidden) = form(&html);
        let mut fields = hidden.clone();
        fields.retain(|(k, _)| k == "csrf");
        fields.push(("mandate".into(), mid.clone()));
        fields.push(("domain".into(), "social".into()));
        other
            .post(&absolute(&url, &action), &fields, &stop)
            .await
            .expect_status(404);
        let now = env.stack.state.now();
        assert!(store
            .active_authorisation(&mid, "social", now)
            .await
            .unwrap());

        // Angela revokes the whole mandate.
        let fields = vec![
            ("csrf".to_string(), csrf.clone()),
            ("mandate".to_string(), mid.clone()),
        ];
        browser.post(&target, &fields, &stop).await.ok();
        assert_eq!(rp.userinfo(&social.access_token).await.status(), 401);
        let kinds = journal_kinds(store).await;
        assert!(kinds.contains(&"usager.consulted".to_string()));
        env.cleanup().await;
    }
}

/// Flow 6: a référent of the organisation sees its aidants, the mandates
/// expiring within 30 days and the recent uses; a plain aidant does not.
#[tokio::test]
async fn referent_dashboard_shown_only_to_referents() {
    use relais_demo::aidants::*;
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let mid = demo.mandate_id.clone();
        let store = &env.stack.state.store;
        let now = env.stack.state.now();
        let referent = store
            .create_aidant(
                &NewAidant {
                    email: "referente@demo.test",
                    name: "Rita Référente",
                    password: PASSWORD,
                    org_id: &demo.org_id,
                    role: Role::Referent,
                },
                &Actor::Admin,
                &salt(),
                &totp_key(&env),
                now,
            )
            .await
            .unwrap();
        // One use of the mandate at the demo service.
        let rp = Rp::demo(&env).await;
        let aidant_browser = Browser::new();
        demo_delegated(&env, &rp, &aidant_browser, &format!("{mid}:papiers")).await;

        // The plain aidant: no dashboard.
        let (_, html) = demo_aidant_home(&env, &Browser::new()).await;
        assert!(!html.contains("referent-dashboard"), "{html}");

        // The référent.
        let referent_browser = Browser::new();
        let (_, html) = aidant_home(
            &env,
            &referent_browser,
            "referente@demo.test",
            PASSWORD,
            &referent.totp_secret,
        )
        .await;
        assert!(html.contains("referent-dashboard"), "{html}");
        assert!(
            html.contains(DEMO_AIDANT_EMAIL) && html.contains("referente@demo.test"),
            "{html}"
        );
        // The demo mandate (12 months) is not expiring soon; the use is listed.
        assert!(!html.contains(&format!("expiring-{mid}-papiers")), "{html}");
        assert!(html.contains(&format!("use-{mid}")), "{html}");
        // Once it ends within 30 days, it is listed as expiring.
        let soon = env.stack.state.now() + 10 * 86_400;
        expire_soon(store, &mid, soon).await;
        let stop = format!("{}/callback", env.stack.urls.service);
        let (_, html) = referent_browser
            .go(&format!("{}/aidant", env.broker()), &stop)
            .await
            .ok();
        assert!(html.contains(&format!("expiring-{mid}-papiers")), "{html}");
        assert!(html.contains(&format!("use-{mid}")), "{html}");
        env.cleanup().await;
    }
}

/// Flow 5: an expired mandate (less than a year ago) is renewed from the
/// aidant's page with the same confirmation (informed usager + TOTP code):
/// a new mandate for the same usager, organisation and domains, usable at
/// once; an active mandate cannot be "renewed".
#[tokio::test]
async fn expired_mandate_renewed_with_totp_confirmation() {
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let mid = demo.mandate_id.clone();
        let store = &env.stack.state.store;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        let browser = Browser::new();
        let (_, html) = demo_aidant_home(&env, &browser).await;
        assert!(!html.contains(&format!("renew-{mid}")), "{html}");
        let renew = format!("{broker}/aidant/mandats/{mid}/renouveler");
        let (_, status, _) = browser.go(&renew, &stop).await.page();
        assert_eq!(status, 404, "an active mandate is not renewable");

        // The demo mandate lasts 365 days: two days after its end.
        env.stack.state.clock.advance(367 * 86_400);
        let browser = Browser::new();
        let (_, html) = demo_aidant_home(&env, &browser).await;
        assert!(html.contains(&format!("renew-{mid}")), "{html}");

        let (url, html) = browser.go(&renew, &stop).await.ok();
        assert!(html.contains("mandate-recap"), "{html}");
        // Not confirmed; then a wrong code: nothing created.
        confirm_recap(&browser, &url, &html, false, &demo_code(&env), &stop)
            .await
            .expect_status(401);
        confirm_recap(&browser, &url, &html, true, "000000", &stop)
            .await
            .expect_status(401);
        assert_eq!(store.list_mandates(&demo.org_id).await.unwrap().len(), 1);

        let (att_url, _) = confirm_recap(&browser, &url, &html, true, &demo_code(&env), &stop)
            .await
            .ok();
        assert!(att_url.ends_with("/attestation"), "{att_url}");
        let new_id = att_url.rsplit('/').nth(1).unwrap().to_string();
        assert_ne!(new_id, mid);
        let old = store.mandate(&mid).await.unwrap().unwrap();
        let new = store.mandate(&new_id).await.unwrap().unwrap();
        assert_eq!(new.usager_id, old.usager_id);
        assert_eq!(new.org_id, old.org_id);
        let domains = |m: &relais::aidants::Mandate| {
            let mut d: Vec<String> = m.authorisations.iter().map(|a| a.domain.clone()).collect();
            d.sort();
            d
        };
        assert_eq!(domains(&new), domains(&old));
        let now = env.stack.state.now();
        assert!(store
            .active_authorisation(&new_id, "papiers", now)
            .await
            .unwrap());
        assert!(!store
            .active_authorisation(&mid, "papiers", now)
            .await
            .unwrap());
        let kinds = journal_kinds(store).await;
        assert!(kinds.contains(&"mandate.renewed".to_string()));
        // The renewed mandate is usable in a delegated sign-in.
        let rp = Rp::demo(&env).await;
        let tokens = demo_delegated(&env, &rp, &browser, &format!("{new_id}:papiers")).await;
        assert_eq!(rp.userinfo(&tokens.access_token).await.status(), 200);
        // Renewed once: the old mandate is never renewed again, also after
        // the usager revokes the new one (that would undo the revocation).
        let (_, status, _) = browser.go(&renew, &stop).await.page();
        assert_eq!(status, 404, "renewed already");
        store
            .revoke_mandate(
                &new_id,
                &Actor::Usager(new.usager_id.clone()),
                env.stack.state.now(),
            )
            .await
            .unwrap();
        let (_, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert!(!html.contains(&format!("renew-{mid}")), "{html}");
        let (_, status, _) = browser.go(&renew, &stop).await.page();
        assert_eq!(status, 404, "the revocation of the renewal stands");
        env.cleanup().await;
    }
}

/// A browser behind the (trusted) proxy, which adds `X-Forwarded-For`.
fn browser_from(forwarded_for: &str) -> Browser {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("x-forwarded-for", forwarded_for.parse().unwrap());
    Browser {
        http: reqwest::Client::builder()
            .cookie_store(true)
            .default_headers(h)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

/// Journal entries of one kind.
async fn journal_of(store: &Store, kind: &str) -> Vec<relais::aidants::journal::Entry> {
    store
        .journal_page(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

/// Login CSRF at `/aidant/login` (a token bound to the browser's cookie;
/// missing, wrong or cookie-less posts get 403 and count nothing), then the
/// aidant's sign-out: session deleted server-side, cookie cleared, access
/// tokens issued under it revoked, and `/aidant` asks for the password.
#[tokio::test]
async fn aidant_login_csrf_and_sign_out() {
    use relais_demo::aidants::*;
    use reqwest::cookie::CookieStore;
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let store = &env.stack.state.store;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        let login_url = format!("{broker}/aidant/login");
        let (browser, jar) = Browser::with_jar();

        let (url, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        let (action, hidden) = form(&html);
        assert_eq!(absolute(&url, &action), login_url);
        let csrf = hidden
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.clone())
            .expect("the sign-in form carries a CSRF token");
        assert!(!csrf.is_empty());
        let credentials = |password: &str, code: String| {
            vec![
                ("email".to_string(), DEMO_AIDANT_EMAIL.to_string()),
                ("password".to_string(), password.to_string()),
                ("totp".to_string(), code),
            ]
        };

        // Without a token, with a wrong one, and from a browser without
        // the cookie: 403, more times than the lockout and throttle limits.
        for i in 0..(relais::aidants::pages::interaction::THROTTLE_MAX_FAILURES + 1) {
            let mut fields = credentials("wrong password!", demo_code(&env));
            if i % 2 == 1 {
                fields.push(("csrf".into(), "forged".into()));
            }
            let (_, html) = browser
                .post(&login_url, &fields, &stop)
                .await
                .expect_status(403);
            assert!(html.contains("<code>csrf</code>"), "{html}");
        }
        let mut fields = credentials(DEMO_AIDANT_PASSWORD, demo_code(&env));
        fields.push(("csrf".into(), csrf.clone()));
        let (_, status, _) = Browser::new().post(&login_url, &fields, &stop).await.page();
        assert_eq!(status, 403, "the token is bound to the browser's cookie");
        // Nothing was counted: no failure on the account, no lock, and the
        // correct sign-in (same address) works.
        let a = store
            .aidant_by_email(DEMO_AIDANT_EMAIL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.failed_attempts, 0);
        assert!(a.locked_until <= env.stack.state.now());
        let (_, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert!(html.contains("name=\"email\""), "not signed in: {html}");
        let mut fields = credentials(DEMO_AIDANT_PASSWORD, demo_code(&env));
        fields.push(("csrf".into(), csrf.clone()));
        let (_, html) = browser.post(&login_url, &fields, &stop).await.ok();
        assert!(html.contains("mandate-draft"), "{html}");
        assert!(html.contains("aidant-logout"), "{html}");

        // A delegated sign-in under this sign-in (same browser).
        let rp = Rp::demo(&env).await;
        let tokens =
            demo_delegated(&env, &rp, &browser, &format!("{}:papiers", demo.mandate_id)).await;
        assert_eq!(rp.userinfo(&tokens.access_token).await.status(), 200);

        // Sign-out: wrong token refused (still signed in), then done.
        let (_, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        let (logout_action, logout_fields) = form(form_with(&html, "id=\"aidant-logout\""));
        let logout = absolute(&broker, &logout_action);
        assert_eq!(logout, format!("{broker}/aidant/logout"));
        let old_cookie = jar
            .cookies(&reqwest::Url::parse(&broker).unwrap())
            .expect("session cookie")
            .to_str()
            .unwrap()
            .to_string();
        let bad = vec![("csrf".to_string(), "forged".to_string())];
        browser.post(&logout, &bad, &stop).await.expect_status(403);
        let (_, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert!(html.contains("mandate-draft"), "still signed in: {html}");
        let (url, html) = browser.post(&logout, &logout_fields, &stop).await.ok();
        assert!(url.ends_with("/aidant"), "{url}");
        assert!(
            html.contains("name=\"email\"") && html.contains("name=\"password\""),
            "the password is asked again: {html}"
        );
        assert_eq!(
            rp.userinfo(&tokens.access_token).await.status(),
            401,
            "tokens issued under the ended session are revoked"
        );
        // The old cookie, replayed, no longer names a session.
        let replay = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = replay
            .get(format!("{broker}/aidant"))
            .header("cookie", &old_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let html = resp.text().await.unwrap();
        assert!(
            html.contains("name=\"password\"") && !html.contains("mandate-draft"),
            "{html}"
        );
        // The delegated flow asks for the password again too.
        let auth = rp.authorize(SCOPES, &[]);
        let (choice, _, _) = browser.go(&auth.url, &stop).await.page();
        let (_, html) = browser.go(&format!("{choice}/aidant"), &stop).await.ok();
        assert!(html.contains("name=\"password\""), "{html}");
        env.cleanup().await;
    }
}

/// Per-IP throttling (trusted proxy: the right-most `X-Forwarded-For`
/// entry): after the limit of failed attempts from one address, every
/// aidant sign-in from it gets 429, even with correct credentials and a
/// spoofed left-most entry, at `/aidant/login` and at the delegated
/// sign-in; another address still signs in; the window then expires.
#[tokio::test]
async fn aidant_sign_ins_throttled_per_ip() {
    use relais::aidants::pages::interaction::{THROTTLE_MAX_FAILURES, THROTTLE_WINDOW_SECS};
    use relais_demo::aidants::*;
    for db in databases() {
        let (env, _) = demo_stack(db, true).await;
        let store = &env.stack.state.store;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        let attacker = browser_from("10.1.1.1, 203.0.113.66");

        let (url, html) = attacker.go(&format!("{broker}/aidant"), &stop).await.ok();
        let (action, hidden) = form(&html);
        let target = absolute(&url, &action);
        for i in 0..THROTTLE_MAX_FAILURES {
            let mut fields = hidden.clone();
            fields.push(("email".into(), format!("intrus{i}@example.org")));
            fields.push(("password".into(), "guessed password".into()));
            fields.push(("totp".into(), "123456".into()));
            let (_, status, html) = attacker.post(&target, &fields, &stop).await.page();
            assert_eq!(status, 401, "attempt {i}: {html}");
            assert!(html.contains("aidant-error"), "{html}");
        }
        // Over the limit: 429, even with correct credentials; the left-most
        // (client-supplied) entry changes nothing.
        let mut fields = hidden.clone();
        fields.push(("email".into(), DEMO_AIDANT_EMAIL.into()));
        fields.push(("password".into(), DEMO_AIDANT_PASSWORD.into()));
        fields.push(("totp".into(), demo_code(&env)));
        let (_, html) = attacker
            .post(&target, &fields, &stop)
            .await
            .expect_status(429);
        assert!(
            html.contains("Trop de tentatives") && !html.contains("aidant-error"),
            "{html}"
        );
        assert!(!html.contains(DEMO_AIDANT_EMAIL), "no account hint: {html}");
        let resp = attacker
            .http
            .post(&target)
            .header("x-forwarded-for", "192.0.2.200, 203.0.113.66")
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        let a = store
            .aidant_by_email(DEMO_AIDANT_EMAIL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.failed_attempts, 0, "no password or code was checked");

        // The delegated sign-in page shares the limit.
        let rp = Rp::demo(&env).await;
        let auth = rp.authorize(SCOPES, &[]);
        let (choice, _) = attacker.go(&auth.url, &stop).await.ok();
        let (url, html) = attacker.go(&format!("{choice}/aidant"), &stop).await.ok();
        aidant_credentials(
            &attacker,
            &url,
            &html,
            (DEMO_AIDANT_EMAIL, DEMO_AIDANT_PASSWORD, &demo_code(&env)),
            &stop,
        )
        .await
        .expect_status(429);

        // Another address signs in normally, on both pages.
        let other = browser_from("10.1.1.1, 203.0.113.77");
        demo_aidant_home(&env, &other).await;
        let colleague = browser_from("203.0.113.78");
        let (choice, _, _) = colleague.go(&auth.url, &stop).await.page();
        let (url, html) = colleague.go(&format!("{choice}/aidant"), &stop).await.ok();
        let (_, html) = aidant_credentials(
            &colleague,
            &url,
            &html,
            (DEMO_AIDANT_EMAIL, DEMO_AIDANT_PASSWORD, &demo_code(&env)),
            &stop,
        )
        .await
        .ok();
        assert!(html.contains("Angela Claire Louise DUBOIS"), "{html}");

        // Once the window has passed, the address may try again.
        env.stack.state.clock.advance(THROTTLE_WINDOW_SECS);
        let (url, html) = attacker.go(&format!("{broker}/aidant"), &stop).await.ok();
        let (_, html) = aidant_credentials(
            &attacker,
            &url,
            &html,
            (DEMO_AIDANT_EMAIL, DEMO_AIDANT_PASSWORD, &demo_code(&env)),
            &stop,
        )
        .await
        .ok();
        assert!(html.contains("mandate-draft"), "{html}");
        env.cleanup().await;
    }
}

/// An aidant of two organisations switches from the aidant's page (CSRF,
/// fresh sign-in, membership required; `aidant.org_switched` journalled):
/// the mandates listed and the delegated sign-in then use the new
/// organisation. Viewing an attestation or a revocation attestation is
/// journalled (`mandate.attestation_viewed`).
#[tokio::test]
async fn organisation_switch_and_attestation_views_journalled() {
    use relais_demo::aidants::*;
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let store = &env.stack.state.store;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        let now = env.stack.state.now();
        let brest = store
            .create_organisation("Mairie de Brest", SIRET_B, &[], &Actor::Admin, now)
            .await
            .unwrap();
        let rennes = store
            .create_organisation("France Services Rennes", SIRET_A, &[], &Actor::Admin, now)
            .await
            .unwrap();
        store
            .add_aidant_to_org(&demo.aidant_id, &brest.id, Role::Aidant, &Actor::Admin, now)
            .await
            .unwrap();
        let brest_mandate = store
            .create_mandate(
                &NewMandate {
                    org_id: &brest.id,
                    usager_id: &demo.usager_id,
                    aidant_id: &demo.aidant_id,
                    domains: &["famille"],
                    duration_days: 30,
                    consent_version: "v1",
                    consent_hash: "h",
                },
                &relais::aidants::default_domains(),
                now,
            )
            .await
            .unwrap()
            .id;
        let actor = format!("aidant:{}", demo.aidant_id);

        let browser = Browser::new();
        let (_, html) = demo_aidant_home(&env, &browser).await;
        assert!(html.contains("id=\"org-switch\""), "{html}");
        assert!(html.contains("Mairie de Brest"), "{html}");
        assert!(
            !html.contains("France Services Rennes"),
            "not a member: {html}"
        );
        assert!(
            html.contains(&format!("mandate-{}", demo.mandate_id)),
            "{html}"
        );
        assert!(
            !html.contains(&format!("mandate-{brest_mandate}")),
            "{html}"
        );
        let (_, hidden) = form(&html);
        let switch = format!("{broker}/aidant/organisation");
        let with = |hidden: &[(String, String)], org: &str| {
            let mut f = hidden.to_vec();
            f.push(("organisation".into(), org.into()));
            f
        };
        let forged = vec![("csrf".to_string(), "forged".to_string())];

        // Refused: wrong CSRF token, an organisation the aidant is not in.
        browser
            .post(&switch, &with(&forged, &brest.id), &stop)
            .await
            .expect_status(403);
        browser
            .post(&switch, &with(&hidden, &rennes.id), &stop)
            .await
            .expect_status(403);
        // A stale sign-in: the code is asked again, nothing switched.
        env.stack.state.clock.advance(16 * 60);
        let (url, html) = browser
            .post(&switch, &with(&hidden, &brest.id), &stop)
            .await
            .ok();
        assert!(
            html.contains("name=\"totp\"") && !html.contains("name=\"email\""),
            "{html}"
        );
        assert!(journal_of(store, "aidant.org_switched").await.is_empty());
        let current = |a: relais::aidants::Aidant| a.current_org.unwrap();
        assert_eq!(
            current(
                store
                    .aidant_by_email(DEMO_AIDANT_EMAIL)
                    .await
                    .unwrap()
                    .unwrap()
            ),
            demo.org_id
        );
        let (_, html) = browser
            .submit(&url, &html, &[("totp", &demo_code(&env))], &stop)
            .await
            .ok();
        // (The renewed sign-in is a new session: a new token.)
        let (_, hidden) = form(&html);

        // Switched.
        let (url, html) = browser
            .post(&switch, &with(&hidden, &brest.id), &stop)
            .await
            .ok();
        assert!(url.ends_with("/aidant"), "{url}");
        assert!(
            html.contains("<p id=\"current-org\">Mairie de Brest</p>"),
            "{html}"
        );
        assert!(html.contains(&format!("mandate-{brest_mandate}")), "{html}");
        assert!(
            !html.contains(&format!("mandate-{}", demo.mandate_id)),
            "{html}"
        );
        let switched = journal_of(store, "aidant.org_switched").await;
        assert_eq!(switched.len(), 1);
        assert_eq!(switched[0].actor, actor);
        assert_eq!(switched[0].org_id.as_deref(), Some(brest.id.as_str()));
        assert_eq!(
            current(
                store
                    .aidant_by_email(DEMO_AIDANT_EMAIL)
                    .await
                    .unwrap()
                    .unwrap()
            ),
            brest.id
        );

        // The delegated sign-in (same browser) acts for the new organisation.
        let rp = Rp::demo(&env).await;
        let auth = rp.authorize(SCOPES, &[]);
        let (choice, _, _) = browser.go(&auth.url, &stop).await.page();
        let (_, html) = browser.go(&format!("{choice}/aidant"), &stop).await.ok();
        assert!(html.contains("Mairie de Brest"), "{html}");
        assert!(html.contains(&format!("{brest_mandate}:famille")), "{html}");
        assert!(!html.contains(&demo.mandate_id), "{html}");
        let t = demo_delegated(&env, &rp, &browser, &format!("{brest_mandate}:famille")).await;
        assert_eq!(t.claims["act"]["siret"], json!(SIRET_B));
        assert_eq!(t.claims["mandate"]["id"], json!(brest_mandate));

        // Attestation views are journalled, for the current organisation's
        // mandates only.
        assert!(journal_of(store, "mandate.attestation_viewed")
            .await
            .is_empty());
        let (_, html) = browser
            .go(
                &format!("{broker}/aidant/mandats/{brest_mandate}/attestation"),
                &stop,
            )
            .await
            .ok();
        assert!(html.contains("aidant-logout"), "{html}");
        let (_, status, _) = browser
            .go(
                &format!("{broker}/aidant/mandats/{}/attestation", demo.mandate_id),
                &stop,
            )
            .await
            .page();
        assert_eq!(status, 404, "another organisation's mandate");
        let (_, html) = Browser::new()
            .go(
                &format!("{broker}/aidant/mandats/{brest_mandate}/attestation"),
                &stop,
            )
            .await
            .ok();
        assert!(html.contains("name=\"password\""), "not signed in: {html}");
        let viewed = journal_of(store, "mandate.attestation_viewed").await;
        assert_eq!(viewed.len(), 1, "{viewed:?}");
        assert_eq!(viewed[0].actor, actor);
        assert_eq!(viewed[0].org_id.as_deref(), Some(brest.id.as_str()));
        let data: Value = serde_json::from_str(&viewed[0].data).unwrap();
        assert_eq!(data["mandate_id"], json!(brest_mandate));
        assert_eq!(data["attestation"], json!("mandate"));

        // Revocation through the page, which shows the revocation attestation.
        let (_, _, html) = browser.go(&format!("{broker}/aidant"), &stop).await.page();
        let (_, hidden) = form(&html);
        let (url, _) = browser
            .post(
                &format!("{broker}/aidant/mandats/{brest_mandate}/revoquer"),
                &hidden,
                &stop,
            )
            .await
            .ok();
        assert!(url.ends_with("/revocation"), "{url}");
        let viewed = journal_of(store, "mandate.attestation_viewed").await;
        assert_eq!(viewed.len(), 2, "{viewed:?}");
        assert_eq!(viewed[1].actor, actor);
        let data: Value = serde_json::from_str(&viewed[1].data).unwrap();
        assert_eq!(data["mandate_id"], json!(brest_mandate));
        assert_eq!(data["attestation"], json!("revocation"));
        assert_eq!(journal_of(store, "mandate.revoked").await.len(), 1);
        env.cleanup().await;
    }
}

/// Review fix: the per-IP limit is checked and reserved in one step, so a
/// burst of parallel wrong attempts from one address cannot all pass the
/// check before any failure is counted: at most the limit get a 401, the
/// rest 429. A success does not use up the address's allowance.
#[tokio::test]
async fn parallel_sign_ins_cannot_bypass_per_ip_throttle() {
    use relais::aidants::pages::interaction::THROTTLE_MAX_FAILURES;
    use relais_demo::aidants::*;
    for db in databases() {
        let (env, _) = demo_stack(db, true).await;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        // A success gives its reservation back (earlier failures stay):
        // limit - 1 failures, a success, then one more failure is still
        // allowed (401), the next is refused (429).
        let colleague = browser_from("203.0.113.90");
        let (url, html) = colleague.go(&format!("{broker}/aidant"), &stop).await.ok();
        let (action, hidden) = form(&html);
        let login = absolute(&url, &action);
        let attempt = |password: &str, code: String| {
            let mut f = hidden.clone();
            f.push(("email".into(), DEMO_AIDANT_EMAIL.into()));
            f.push(("password".into(), password.into()));
            f.push(("totp".into(), code));
            f
        };
        for i in 0..(THROTTLE_MAX_FAILURES - 1) {
            let wrong = attempt("guessed password", "123456".into());
            let (_, status, _) = colleague.post(&login, &wrong, &stop).await.page();
            assert_eq!(status, 401, "attempt {i}");
            if i % 4 == 3 {
                // Stay under the account lock (5 failures in a row).
                store_unlock(&env).await;
            }
        }
        let right = attempt(DEMO_AIDANT_PASSWORD, demo_code(&env));
        store_unlock(&env).await;
        let (_, html) = colleague.post(&login, &right, &stop).await.ok();
        assert!(html.contains("mandate-draft"), "{html}");
        // (A new session: the page's new CSRF token.)
        let (_, fresh_hidden) = form(&html);
        let mut wrong: Vec<(String, String)> = fresh_hidden
            .into_iter()
            .filter(|(k, _)| k == "csrf")
            .collect();
        wrong.push(("email".into(), DEMO_AIDANT_EMAIL.into()));
        wrong.push(("password".into(), "guessed password".into()));
        wrong.push(("totp".into(), "123456".into()));
        let (_, status, _) = colleague.post(&login, &wrong, &stop).await.page();
        assert_eq!(status, 401, "the success did not use up the allowance");
        colleague
            .post(&login, &wrong, &stop)
            .await
            .expect_status(429);

        let attacker = browser_from("203.0.113.66");
        let (url, html) = attacker.go(&format!("{broker}/aidant"), &stop).await.ok();
        let (action, hidden) = form(&html);
        let target = absolute(&url, &action);
        let tries = 2 * THROTTLE_MAX_FAILURES;
        let mut tasks = Vec::new();
        for i in 0..tries {
            let http = attacker.http.clone();
            let target = target.clone();
            let mut fields = hidden.clone();
            fields.push(("email".into(), format!("intrus{i}@example.org")));
            fields.push(("password".into(), "guessed password".into()));
            fields.push(("totp".into(), "123456".into()));
            tasks.push(tokio::spawn(async move {
                http.post(&target)
                    .form(&fields)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        let refused = statuses.iter().filter(|s| **s == 401).count();
        let throttled = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(refused + throttled, tries, "{statuses:?}");
        assert!(refused <= THROTTLE_MAX_FAILURES, "{statuses:?}");
        assert_eq!(refused, THROTTLE_MAX_FAILURES, "{statuses:?}");
        env.cleanup().await;
    }
}

/// Reset the demo aidant's failure counter (the account lock is not what
/// these tests look at).
async fn store_unlock(env: &Env) {
    let sql = "UPDATE aidants SET failed_attempts = 0, locked_until = 0";
    match env.stack.state.store.backend() {
        relais::store::Backend::Sqlite(p) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
        relais::store::Backend::Postgres(p) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
    }
}

/// Review fix: after `org-deactivate` of the aidant's current organisation,
/// `/aidant` switches to the first active one of their organisations
/// (journalled `aidant.org_switched`); with none active, a page says so and
/// offers the sign-out (instead of a 403 forever).
#[tokio::test]
async fn inactive_current_organisation_switches_or_explains() {
    use relais_demo::aidants::*;
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let store = &env.stack.state.store;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        let now = env.stack.state.now();
        let brest = demo_aidant_joins_brest(&env, &demo).await;
        let browser = Browser::new();
        let (_, html) = demo_aidant_home(&env, &browser).await;
        assert!(!html.contains("<p id=\"current-org\">Mairie de Brest</p>"));
        store
            .set_organisation_active(&demo.org_id, false, &Actor::Admin, now)
            .await
            .unwrap();
        let (_, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert!(
            html.contains("<p id=\"current-org\">Mairie de Brest</p>"),
            "{html}"
        );
        let switched = journal_of(store, "aidant.org_switched").await;
        assert_eq!(switched.len(), 1);
        assert_eq!(switched[0].org_id.as_deref(), Some(brest.id.as_str()));
        let a = store
            .aidant_by_email(DEMO_AIDANT_EMAIL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.current_org.as_deref(), Some(brest.id.as_str()));
        // Shown again: no second switch.
        browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert_eq!(journal_of(store, "aidant.org_switched").await.len(), 1);

        // No active organisation left: a clear page with the sign-out.
        store
            .set_organisation_active(&brest.id, false, &Actor::Admin, now)
            .await
            .unwrap();
        let (_, html) = browser
            .go(&format!("{broker}/aidant"), &stop)
            .await
            .expect_status(403);
        assert!(html.contains("id=\"no-active-org\""), "{html}");
        assert!(!html.contains("mandate-draft"), "{html}");
        let logout = form_with(&html, "id=\"aidant-logout\"");
        let (url, html) = browser.submit(&broker, logout, &[], &stop).await.ok();
        assert!(url.ends_with("/aidant"), "{url}");
        assert!(html.contains("name=\"password\""), "signed out: {html}");
        assert_eq!(journal_of(store, "aidant.org_switched").await.len(), 1);
        env.cleanup().await;
    }
}

/// Review fix: a mandate of a purged usager is not offered for renewal
/// (no link, 404), even within the renewal year.
#[tokio::test]
async fn purged_usager_mandate_not_renewable() {
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let mid = demo.mandate_id.clone();
        let store = &env.stack.state.store;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();
        // Expired two days ago (the demo mandate lasts 365 days).
        env.stack.state.clock.advance(367 * 86_400);
        let browser = Browser::new();
        let (_, html) = demo_aidant_home(&env, &browser).await;
        assert!(html.contains(&format!("renew-{mid}")), "renewable: {html}");
        let n = store
            .purge_usagers(1, &Actor::Admin, env.stack.state.now())
            .await
            .unwrap();
        assert!(n >= 1);
        assert!(store
            .usager_purged_at(&demo.usager_id)
            .await
            .unwrap()
            .is_some());
        let (_, html) = browser.go(&format!("{broker}/aidant"), &stop).await.ok();
        assert!(html.contains(&format!("mandate-{mid}")), "{html}");
        assert!(!html.contains(&format!("renew-{mid}")), "{html}");
        browser
            .go(&format!("{broker}/aidant/mandats/{mid}/renouveler"), &stop)
            .await
            .expect_status(404);
        env.cleanup().await;
    }
}

/// Security review (issue 9, defect 1): a revocation is the usager's (or an
/// administrator's) decision. A mandate with a revoked domain is never
/// offered for renewal, and neither the renewal page nor its POST accept it
/// (whoever revoked it: the usager on `/usager`, an administrator, an
/// aidant); the refusal is journalled. Only an expiry is renewable.
#[tokio::test]
async fn revoked_mandate_never_renewable() {
    use relais_demo::aidants::*;
    for db in databases() {
        let (env, demo) = demo_stack(db, false).await;
        let mid = demo.mandate_id.clone();
        let store = &env.stack.state.store;
        let stop = format!("{}/callback", env.stack.urls.service);
        let broker = env.broker().to_string();

        // The usager revokes one domain themselves, then an administrator
        // revokes the rest.
        let usager = Browser::new();
        let (url, html) = usager_page(&env, &usager, DEMO_USAGER_LOGIN).await;
        let (action, hidden) = form(&html);
        let csrf = hidden.iter().find(|(k, _)| k == "csrf").unwrap().1.clone();
        let fields = vec![
            ("csrf".to_string(), csrf),
            ("mandate".to_string(), mid.clone()),
            ("domain".to_string(), "papiers".to_string()),
        ];
        usager
            .post(&absolute(&url, &action), &fields, &stop)
            .await
            .ok();
        for step in ["usager", "admin", "expired"] {
            if step == "admin" {
                store
                    .revoke_mandate(&mid, &Actor::Admin, env.stack.state.now())
                    .await
                    .unwrap();
            }
            if step == "expired" {
                // Even once every domain has also passed its end.
                env.stack.state.clock.advance(367 * 86_400);
            }
            let browser = Browser::new();
            let (_, home) = demo_aidant_home(&env, &browser).await;
            assert!(!home.contains(&format!("renew-{mid}")), "{step}: {home}");
            let renew = format!("{broker}/aidant/mandats/{mid}/renouveler");
            let (_, status, _) = browser.go(&renew, &stop).await.page();
            assert_eq!(status, 404, "{step}: renewal page refused");
            // The POST re-checks (a recap page opened earlier, or a forged
            // form): a valid CSRF token and TOTP code change nothing.
            let csrf = hidden_field(&home, "csrf");
            let fields = vec![
                ("csrf".to_string(), csrf),
                ("informed".to_string(), "yes".to_string()),
                ("totp".to_string(), demo_code(&env)),
            ];
            let (_, status, _) = browser.post(&renew, &fields, &stop).await.page();
            assert_eq!(status, 404, "{step}: renewal POST refused");
            assert_eq!(
                store.list_mandates(&demo.org_id).await.unwrap().len(),
                1,
                "{step}: no new mandate"
            );
        }
        let refusals = journal_of(store, "mandate.renewal_refused").await;
        assert!(refusals.len() >= 6, "journalled: {}", refusals.len());
        env.cleanup().await;
    }
}
