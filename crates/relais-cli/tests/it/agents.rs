//! The agent federation: email-first routing, agent claims, account linking,
//! pairwise/public subjects, MFA, domain checks.

use relais_demo::idp::Faults;
use relais_testkit::*;

const SCOPES: &[&str] = &[
    "openid",
    "given_name",
    "usual_name",
    "email",
    "uid",
    "siret",
    "siren",
    "organizational_unit",
    "phone",
    "idp_id",
    "idp_acr",
];

/// More agent clients and providers for the tests.
fn extra() -> String {
    r#"
[[federations.agent.clients]]
client_id = "agent-public"
name = "Annuaire (sub public)"
client_secret = "agent-public-secret"
subject_type = "public"
redirect_uris = ["http://annuaire.test/cb"]
scopes = ["openid", "email"]

[[federations.agent.clients]]
client_id = "agent-other"
name = "Autre service"
client_secret = "agent-other-secret"
redirect_uris = ["http://other.test/cb"]
scopes = ["openid", "email"]

[[federations.agent.providers]]
id = "interieur-log"
name = "Intérieur (journalisation seule)"
issuer = "IDP3"
client_id = "relais"
client_secret = "relais-at-interieur"
scopes = ["openid", "given_name", "usual_name", "email", "uid", "siret"]
acr_values = ["eidas1"]
domains = ["log-only.test"]
domain_mismatch = "log"
display = false
"#
    .to_string()
}

async fn agent_env(db: Option<String>, overrides: Vec<(String, String)>) -> Env {
    Env::start_with(db, extra(), overrides, false).await
}

fn issuer(env: &Env) -> String {
    format!("{}/agent", env.broker())
}

async fn agent_rp(env: &Env, id: &str, secret: &str, redirect: &str) -> Rp {
    Rp::new_at(env, &issuer(env), id, Some(secret), redirect).await
}

async fn portal(env: &Env) -> Rp {
    let redirect = format!("{}/callback", env.stack.urls.agent_service);
    agent_rp(
        env,
        "demo-agent-service",
        "demo-agent-service-secret-change-me",
        &redirect,
    )
    .await
}

/// Drive the pages: email form, short choice, provider login, consent.
async fn agent_sign_in(
    browser: &Browser,
    auth_url: &str,
    redirect: &str,
    email: &str,
    login: &str,
    pick: Option<&str>,
) -> Step {
    let mut step = browser.go(auth_url, redirect).await;
    for _ in 0..8 {
        let (url, status, html) = match step {
            Step::Arrived(_) => return step,
            Step::Page {
                ref url,
                status,
                ref html,
            } => (url.clone(), status, html.clone()),
        };
        if status != 200 || !html.contains("<form") {
            return step;
        }
        let typed: &[(&str, &str)] = if html.contains("name=\"email\"") {
            &[("email", email)]
        } else if html.contains("name=\"provider\"") {
            &[("provider", pick.unwrap_or(""))]
        } else if html.contains("name=\"password\"") {
            &[("login", login), ("password", "123"), ("action", "login")]
        } else {
            &[("decision", "accept")]
        };
        step = browser.submit(&url, &html, typed, redirect).await;
    }
    step
}

async fn tokens(
    rp: &Rp,
    browser: &Browser,
    extra: &[(&str, &str)],
    scopes: &[&str],
    email: &str,
    login: &str,
    pick: Option<&str>,
) -> Tokens {
    let auth = rp.authorize(scopes, extra);
    let arrived = agent_sign_in(browser, &auth.url, &rp.redirect_uri, email, login, pick)
        .await
        .arrived();
    let code = rp.code_from(&arrived, &auth);
    rp.exchange(&code, &auth)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`tokens`] on a new browser, without extra parameters or provider pick.
async fn fresh_tokens(rp: &Rp, scopes: &[&str], email: &str, login: &str) -> Tokens {
    tokens(rp, &Browser::new(), &[], scopes, email, login, None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn email_first_routing_and_agent_claims() {
    for db in databases() {
        let env = agent_env(db, vec![]).await;
        let rp = portal(&env).await;
        // The first page asks for an email.
        let auth = rp.authorize(SCOPES, &[]);
        let (_, _, html) = Browser::new().go(&auth.url, &rp.redirect_uri).await.page();
        assert!(html.contains("type=\"email\""), "{html}");
        // Exact domain -> the ministry's provider, straight away.
        let b = Browser::new();
        let t = tokens(
            &rp,
            &b,
            &[],
            SCOPES,
            "camille.martin@interieur.gouv.fr",
            "camille",
            None,
        )
        .await;
        let c = &t.claims;
        assert_eq!(c["iss"], issuer(&env));
        let info: serde_json::Value = rp.userinfo(&t.access_token).await.json().await.unwrap();
        assert_eq!(info["given_name"], "Camille");
        assert_eq!(info["usual_name"], "Martin");
        assert_eq!(info["email"], "camille.martin@interieur.gouv.fr");
        assert_eq!(info["siret"], "13002526500013");
        assert_eq!(info["siren"], "130025265");
        assert_eq!(info["phone_number"], "+33140076060");
        assert_eq!(info["idp_id"], "interieur");
        assert_eq!(info["idp_acr"], "eidas1");
        assert!(info.get("family_name").is_none());
        // Subdomain pattern, and an invalid SIRET replaced by the provider's default.
        let t = fresh_tokens(&rp, SCOPES, "lea.petit@prefecture.interieur.gouv.fr", "lea").await;
        let info: serde_json::Value = rp.userinfo(&t.access_token).await.json().await.unwrap();
        assert_eq!(info["idp_id"], "interieur");
        assert_eq!(info["siret"], "13002526500013", "default SIRET");
        // No matching domain -> the default provider.
        let t = fresh_tokens(
            &rp,
            SCOPES,
            "dominique.leroy@mairie-demoville.fr",
            "dominique",
        )
        .await;
        let info: serde_json::Value = rp.userinfo(&t.access_token).await.json().await.unwrap();
        assert_eq!(info["idp_id"], "proconnect");
        // login_hint pre-fills and submits the email page.
        let auth = rp.authorize(
            SCOPES,
            &[("login_hint", "camille.martin@interieur.gouv.fr")],
        );
        let (url, _, html) = Browser::new().go(&auth.url, &rp.redirect_uri).await.page();
        assert!(url.starts_with(&env.stack.urls.idp3), "{url}");
        assert!(
            url.contains("login_hint=camille.martin"),
            "login_hint forwarded: {url}"
        );
        assert!(html.contains("name=\"password\""));
        // siret_hint is forwarded to the provider.
        let auth = rp.authorize(
            SCOPES,
            &[("idp_hint", "interieur"), ("siret_hint", "13002526500013")],
        );
        let (url, _, _) = Browser::new().go(&auth.url, &rp.redirect_uri).await.page();
        assert!(url.contains("siret_hint=13002526500013"), "{url}");
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_providers_for_a_domain_and_none_without_default() {
    let more = r#"
[[federations.agent.providers]]
id = "interieur-bis"
name = "Intérieur bis"
issuer = "IDP3"
client_id = "relais"
client_secret = "relais-at-interieur"
scopes = ["openid", "given_name", "usual_name", "email", "uid"]
acr_values = ["eidas1"]
domains = ["interieur.gouv.fr"]
"#;
    let env = Env::start_with(None, format!("{}{more}", extra()), vec![], false).await;
    let rp = portal(&env).await;
    let auth = rp.authorize(
        SCOPES,
        &[("login_hint", "camille.martin@interieur.gouv.fr")],
    );
    let browser = Browser::new();
    let (_, _, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
    assert!(
        html.contains("value=\"interieur\"") && html.contains("value=\"interieur-bis\""),
        "short choice: {html}"
    );
    assert!(
        !html.contains("value=\"proconnect\""),
        "only the matching providers"
    );
    // Choosing a provider outside the short list is refused.
    let (action, mut f) = form(&html);
    f.push(("provider".into(), "proconnect".into()));
    browser
        .post(&action, &f, &rp.redirect_uri)
        .await
        .expect_status(400);
    let t = tokens(
        &rp,
        &Browser::new(),
        &[],
        SCOPES,
        "camille.martin@interieur.gouv.fr",
        "camille",
        Some("interieur-bis"),
    )
    .await;
    assert_eq!(t.claims["aud"], "demo-agent-service");
    env.cleanup().await;

    // Without a default provider, an unknown domain gets a clear error.
    let env = Env::start_with(
        None,
        extra(),
        vec![(
            "RELAIS__FEDERATIONS__AGENT__DEFAULT_PROVIDER".into(),
            "".into(),
        )],
        false,
    )
    .await;
    let rp = portal(&env).await;
    let auth = rp.authorize(SCOPES, &[]);
    let (_, status, html) = match agent_sign_in(
        &Browser::new(),
        &auth.url,
        &rp.redirect_uri,
        "x@nowhere.test",
        "x",
        None,
    )
    .await
    {
        Step::Page { url, status, html } => (url, status, html),
        Step::Arrived(u) => panic!("{u}"),
    };
    assert_eq!(status, 400);
    assert!(html.contains("no_provider_for_domain"), "{html}");
    assert!(html.contains("error=access_denied"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_linked_by_email_and_public_or_pairwise_subjects() {
    for db in databases() {
        let env = agent_env(db, vec![]).await;
        let rp = portal(&env).await;
        let a = fresh_tokens(&rp, SCOPES, "camille.martin@interieur.gouv.fr", "camille").await;
        let b = tokens(
            &rp,
            &Browser::new(),
            &[("idp_hint", "proconnect")],
            SCOPES,
            "",
            "camille",
            None,
        )
        .await;
        assert_eq!(
            a.claims["sub"], b.claims["sub"],
            "same verified email at two providers: one account"
        );
        let d = fresh_tokens(
            &rp,
            SCOPES,
            "dominique.leroy@mairie-demoville.fr",
            "dominique",
        )
        .await;
        assert_ne!(a.claims["sub"], d.claims["sub"]);
        // Pairwise per client by default; public id for subject_type = "public".
        let other = agent_rp(
            &env,
            "agent-other",
            "agent-other-secret",
            "http://other.test/cb",
        )
        .await;
        let o = fresh_tokens(
            &other,
            &["openid", "email"],
            "camille.martin@interieur.gouv.fr",
            "camille",
        )
        .await;
        assert_ne!(o.claims["sub"], a.claims["sub"]);
        let public = agent_rp(
            &env,
            "agent-public",
            "agent-public-secret",
            "http://annuaire.test/cb",
        )
        .await;
        let p1 = fresh_tokens(
            &public,
            &["openid", "email"],
            "camille.martin@interieur.gouv.fr",
            "camille",
        )
        .await;
        let p2 = tokens(
            &public,
            &Browser::new(),
            &[("idp_hint", "proconnect")],
            &["openid", "email"],
            "",
            "camille",
            None,
        )
        .await;
        assert_eq!(p1.claims["sub"], p2.claims["sub"]);
        assert_ne!(p1.claims["sub"], a.claims["sub"]);
        assert_eq!(
            p1.claims["sub"].as_str().unwrap().len(),
            22,
            "the account's public id"
        );
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_recheck_refuses_or_logs() {
    let env = agent_env(None, vec![]).await;
    let rp = portal(&env).await;
    let mut faults = Faults::default();
    faults
        .set_claims
        .insert("email".into(), serde_json::json!("intrus@autre-domaine.fr"));
    env.stack.idps[2].set_faults(faults);
    let auth = rp.authorize(SCOPES, &[]);
    let step = agent_sign_in(
        &Browser::new(),
        &auth.url,
        &rp.redirect_uri,
        "camille.martin@interieur.gouv.fr",
        "camille",
        None,
    )
    .await;
    let (_, html) = step.expect_status(403);
    assert!(html.contains("domain_not_allowed"), "{html}");
    // A provider in log mode accepts it.
    let t = tokens(
        &rp,
        &Browser::new(),
        &[("idp_hint", "interieur-log")],
        &["openid", "email"],
        "",
        "camille",
        None,
    )
    .await;
    let info: serde_json::Value = rp.userinfo(&t.access_token).await.json().await.unwrap();
    assert_eq!(info["email"], "intrus@autre-domaine.fr");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mfa_requested_satisfied_or_refused() {
    let env = agent_env(None, vec![]).await;
    let rp = portal(&env).await;
    let mfa = r#"{"id_token":{"acr":{"essential":true,"values":["eidas1-mfa"]}}}"#;
    let browser = Browser::new();
    // Signed in without MFA first: asking for MFA then forces a fresh sign-in.
    tokens(
        &rp,
        &browser,
        &[],
        SCOPES,
        "camille.martin@interieur.gouv.fr",
        "camille",
        None,
    )
    .await;
    let auth = rp.authorize(SCOPES, &[("claims", mfa)]);
    let (url, _, _) = browser.go(&auth.url, &rp.redirect_uri).await.page();
    assert!(url.contains("/interaction/"), "no SSO reuse for MFA: {url}");
    let t = tokens(
        &rp,
        &Browser::new(),
        &[("claims", mfa)],
        SCOPES,
        "camille.martin@interieur.gouv.fr",
        "camille",
        None,
    )
    .await;
    assert_eq!(t.claims["acr"], "eidas1-mfa");
    // The default provider cannot do MFA: an email routed to it finds no provider.
    let auth = rp.authorize(SCOPES, &[("claims", mfa)]);
    let (_, html) = agent_sign_in(
        &Browser::new(),
        &auth.url,
        &rp.redirect_uri,
        "dominique.leroy@mairie-demoville.fr",
        "dominique",
        None,
    )
    .await
    .expect_status(400);
    assert!(html.contains("no_provider_for_domain"));
    // The provider returns a lower level: the service gets access_denied, the person a page.
    env.stack.idps[2].set_faults(Faults {
        acr: Some("eidas1".into()),
        ..Default::default()
    });
    let auth = rp.authorize(SCOPES, &[("claims", mfa)]);
    let (_, html) = agent_sign_in(
        &Browser::new(),
        &auth.url,
        &rp.redirect_uri,
        "camille.martin@interieur.gouv.fr",
        "camille",
        None,
    )
    .await
    .expect_status(403);
    assert!(html.contains("acr_not_satisfied"), "{html}");
    assert!(html.contains("error=access_denied"));
    env.cleanup().await;
}
