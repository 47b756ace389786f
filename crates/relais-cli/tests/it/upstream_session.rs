//! A usager's sign-in on the aidant's browser (mandate creation, `/usager`)
//! does not leave the usager's session at the provider behind: Relais ends
//! it (RP-initiated logout with the ID token as hint, back to Relais, then
//! the usager's page), or, at a provider without `end_session_endpoint`,
//! marks the browser so that the next sign-in there asks for a fresh
//! authentication (`prompt=login`, `max_age=0`) instead of silent single
//! sign-on as the usager.

use relais::aidants::totp;
use relais_demo::aidants::*;
use relais_demo::idp::Faults;
use relais_testkit::*;
use std::collections::HashMap;
use std::sync::Arc;

const PIVOT: &[&str] = &["openid", "identite_pivot"];

fn absolute(base: &str, action: &str) -> String {
    reqwest::Url::parse(base)
        .unwrap()
        .join(action)
        .unwrap()
        .to_string()
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn demo_code(env: &Env) -> String {
    env.stack.state.clock.advance(30);
    totp::code_at(DEMO_AIDANT_TOTP, env.stack.state.now()).unwrap()
}

fn browser_with_jar() -> (Browser, Arc<reqwest::cookie::Jar>) {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let http = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (Browser { http }, jar)
}

/// The cookies the browser sends to Relais.
fn relais_cookies(env: &Env, jar: &reqwest::cookie::Jar) -> String {
    use reqwest::cookie::CookieStore;
    jar.cookies(&reqwest::Url::parse(env.broker()).unwrap())
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Fill the demo provider's login form shown at `url`.
async fn provider_login(browser: &Browser, url: &str, html: &str, login: &str, stop: &str) -> Step {
    assert!(html.contains("name=\"password\""), "{html}");
    let (action, mut fields) = form(html);
    fields.extend([
        ("login".into(), login.into()),
        ("password".into(), "123".into()),
        ("action".into(), "login".into()),
    ]);
    browser.post(&absolute(url, &action), &fields, stop).await
}

/// An ordinary sign-in at the demo service through impots on `browser`:
/// the page shown (the provider's login form, or Relais' information page
/// when the provider signed someone in silently).
async fn ordinary_sign_in(env: &Env, rp: &Rp, browser: &Browser) -> (String, String, Auth) {
    let auth = rp.authorize(PIVOT, &[("idp_hint", "impots")]);
    let (url, status, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
    assert_eq!(status, 200, "{html}");
    let _ = env;
    (url, html, auth)
}

#[tokio::test(flavor = "multi_thread")]
async fn mandate_creation_ends_the_usagers_provider_session() {
    for db in databases() {
        let env = Env::start(db).await;
        seed(&env.stack).await.unwrap();
        let broker = env.broker().to_string();
        let rp = Rp::demo(&env).await;
        let stop = rp.redirect_uri.clone();
        let idp = &env.stack.idps[0];
        let browser = Browser::new();

        // The aidant signs in and drafts a mandate.
        let (url, status, html) = browser.go(&format!("{broker}/aidant"), &stop).await.page();
        assert_eq!(status, 200, "{html}");
        let (action, mut fields) = form(&html);
        fields.push(("email".into(), DEMO_AIDANT_EMAIL.into()));
        fields.push(("password".into(), DEMO_AIDANT_PASSWORD.into()));
        fields.push(("totp".into(), demo_code(&env)));
        let (url, status, html) = browser
            .post(&absolute(&url, &action), &fields, &stop)
            .await
            .page();
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("mandate-draft"), "{html}");
        let (action, mut fields) = form(&html);
        fields.push(("domain_social".into(), "on".into()));
        fields.push(("duration".into(), "30".into()));
        let (choice_url, status, html) = browser
            .post(&absolute(&url, &action), &fields, &stop)
            .await
            .page();
        assert_eq!(status, 200, "{html}");

        // Eric signs in himself on the aidant's screen.
        let (action, mut fields) = form(&html);
        fields.push(("provider".into(), "impots".into()));
        let (url, status, html) = browser
            .post(&absolute(&choice_url, &action), &fields, &stop)
            .await
            .page();
        assert_eq!(status, 200, "{html}");
        assert_eq!(idp.session_count(), 0);
        let (recap_url, status, html) = provider_login(&browser, &url, &html, "eric", &stop)
            .await
            .page();
        assert_eq!(status, 200, "{html}");
        // Through the provider's logout and back, on to the recap.
        assert!(recap_url.ends_with("/mandat"), "{recap_url}");
        assert!(html.contains("MERCIER"), "{html}");
        assert_eq!(idp.session_count(), 0, "Eric's provider session ended");

        // The next sign-in on this browser is not Eric's silent SSO.
        let (url, html, auth) = ordinary_sign_in(&env, &rp, &browser).await;
        assert!(
            html.contains("name=\"password\"") && !html.contains("MERCIER"),
            "the provider asks who signs in:\n{html}"
        );
        let (url, status, html) = provider_login(&browser, &url, &html, "angela", &stop)
            .await
            .page();
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("DUBOIS"), "{url}: {html}");
        let _ = auth;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_without_logout_marks_the_browser_for_a_fresh_sign_in() {
    for db in databases() {
        let env = Env::start(db).await;
        seed(&env.stack).await.unwrap();
        let broker = env.broker().to_string();
        let rp = Rp::demo(&env).await;
        let stop = rp.redirect_uri.clone();
        let idp = &env.stack.idps[0];
        // Before Relais first reads the provider's discovery (it caches it).
        idp.set_faults(Faults {
            no_end_session: true,
            ..Default::default()
        });
        let (browser, jar) = browser_with_jar();

        // Angela consults her mandates at /usager on this browser.
        let (choice_url, status, html) =
            browser.go(&format!("{broker}/usager"), &stop).await.page();
        assert_eq!(status, 200, "{html}");
        let (action, mut fields) = form(&html);
        fields.push(("provider".into(), "impots".into()));
        let (url, status, html) = browser
            .post(&absolute(&choice_url, &action), &fields, &stop)
            .await
            .page();
        assert_eq!(status, 200, "{html}");
        let (page_url, status, html) =
            provider_login(&browser, &url, &html, DEMO_USAGER_LOGIN, &stop)
                .await
                .page();
        assert_eq!(status, 200, "{html}");
        assert!(page_url.ends_with("/usager"), "{page_url}");
        // No logout at this provider: her session there remains, and the
        // browser is marked.
        assert_eq!(idp.session_count(), 1);
        assert!(
            relais_cookies(&env, &jar).contains("relais_citizen_relogin=impots"),
            "{}",
            relais_cookies(&env, &jar)
        );

        // The next sign-in through impots asks for a fresh authentication.
        let auth = rp.authorize(PIVOT, &[("idp_hint", "impots")]);
        let at_idp = browser.go(&auth.url, &env.stack.urls.idp1).await.arrived();
        let q = query(&at_idp);
        assert_eq!(
            q.get("prompt").map(String::as_str),
            Some("login"),
            "{at_idp}"
        );
        assert_eq!(q.get("max_age").map(String::as_str), Some("0"), "{at_idp}");
        let (url, status, html) = browser.go(&at_idp, &stop).await.page();
        assert_eq!(status, 200, "{html}");
        assert!(
            html.contains("name=\"password\""),
            "not Angela's silent SSO:\n{html}"
        );
        let arrived = match provider_login(&browser, &url, &html, "eric", &stop).await {
            Step::Arrived(u) => u,
            Step::Page { url, html, .. } => {
                assert!(html.contains("MERCIER"), "{url}: {html}");
                sign_in(&browser, &url, &stop, "impots", "eric").await
            }
        };
        let t = rp
            .exchange(&rp.code_from(&arrived, &auth), &auth)
            .await
            .unwrap();
        assert_eq!(t.claims["aud"], "demo-service");
        // That sign-in replaced her session there: the mark is gone.
        assert!(
            !relais_cookies(&env, &jar).contains("relogin"),
            "{}",
            relais_cookies(&env, &jar)
        );
        env.cleanup().await;
    }
}
