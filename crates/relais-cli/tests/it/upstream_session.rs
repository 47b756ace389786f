//! A usager's sign-in on the aidant's browser (mandate creation, `/usager`)
//! does not leave the usager's session at the provider behind: Relais ends
//! it (RP-initiated logout with the ID token as hint, back to Relais, then
//! the usager's page), or, at a provider without `end_session_endpoint`,
//! marks the browser so that the next sign-in there asks for a fresh
//! authentication (`prompt=login`, `max_age=0`) instead of silent single
//! sign-on as the usager.

use relais_demo::aidants::*;
use relais_demo::idp::Faults;
use relais_testkit::*;
use std::collections::HashMap;

const PIVOT: &[&str] = &["openid", "identite_pivot"];

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// The cookies the browser sends to Relais.
fn relais_cookies(env: &Env, jar: &reqwest::cookie::Jar) -> String {
    use reqwest::cookie::CookieStore;
    jar.cookies(&reqwest::Url::parse(env.broker()).unwrap())
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// An ordinary sign-in at the demo service through impots on `browser`:
/// the page shown (the provider's login form, or Relais' information page
/// when the provider signed someone in silently).
async fn ordinary_sign_in(env: &Env, rp: &Rp, browser: &Browser) -> (String, String, Auth) {
    let auth = rp.authorize(PIVOT, &[("idp_hint", "impots")]);
    let (url, html) = browser.go(&auth.url, &rp.redirect_uri).await.ok();
    let _ = env;
    (url, html, auth)
}

#[tokio::test(flavor = "multi_thread")]
async fn mandate_creation_ends_the_usagers_provider_session() {
    for db in databases() {
        let env = Env::start(db).await;
        seed(&env.stack).await.unwrap();
        let rp = Rp::demo(&env).await;
        let stop = rp.redirect_uri.clone();
        let idp = &env.stack.idps[0];
        let browser = Browser::new();

        // The aidant signs in and drafts a mandate.
        let (url, html) = demo_aidant_home(&env, &browser).await;
        let (choice_url, html) = browser
            .submit(
                &url,
                &html,
                &[("domain_social", "on"), ("duration", "30")],
                &stop,
            )
            .await
            .ok();

        // Eric signs in himself on the aidant's screen.
        let (url, html) = browser
            .submit(&choice_url, &html, &[("provider", "impots")], &stop)
            .await
            .ok();
        assert_eq!(idp.session_count(), 0);
        let (recap_url, html) = provider_login(&browser, &url, &html, "eric", &stop)
            .await
            .ok();
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
        let (url, html) = provider_login(&browser, &url, &html, "angela", &stop)
            .await
            .ok();
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
        let (browser, jar) = Browser::with_jar();

        // Angela consults her mandates at /usager on this browser.
        let (choice_url, html) = browser.go(&format!("{broker}/usager"), &stop).await.ok();
        let (url, html) = browser
            .submit(&choice_url, &html, &[("provider", "impots")], &stop)
            .await
            .ok();
        let (page_url, _) = provider_login(&browser, &url, &html, DEMO_USAGER_LOGIN, &stop)
            .await
            .ok();
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
        let (url, html) = browser.go(&at_idp, &stop).await.ok();
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
