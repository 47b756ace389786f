//! Upstream mix-up (RFC 9207 §1): one redirect URI per provider, a code
//! delivered on another provider's callback is refused before anything is
//! redeemed, and `iss` is required when the provider advertises it (or
//! `require_iss` is set) and must be the provider's own.

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

/// From the service's authorization request to the provider's login form,
/// then the login; returns where the provider sends the browser back
/// (Relais' callback, not followed).
async fn upstream_login(env: &Env, browser: &Browser, auth_url: &str, login: &str) -> String {
    let back = format!("{}/callback", env.broker());
    let (url, html) = browser.go(auth_url, &back).await.ok();
    assert!(html.contains("name=\"password\""), "{html}");
    provider_login(browser, &url, &html, login, &back)
        .await
        .arrived()
}

/// Provider A (impots) is chosen; provider H's (ameli) code, obtained by
/// the same browser, is delivered with A's state on H's callback, as a
/// malicious A would arrange. Relais refuses it without redeeming the code
/// (it is still fresh at H), no session is created, and H's code still
/// completes H's own sign-in on H's callback.
#[tokio::test(flavor = "multi_thread")]
async fn code_delivered_on_another_providers_callback_is_refused() {
    for db in databases() {
        let env = Env::start(db).await;
        let broker = env.broker().to_string();
        let idp1 = env.stack.urls.idp1.clone();
        let idp2 = env.stack.urls.idp2.clone();
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();

        // Sign-in through A: stop at A's authorization endpoint.
        let auth_a = rp.authorize(PIVOT, &[("idp_hint", "impots")]);
        let at_a = browser.go(&auth_a.url, &idp1).await.arrived();
        let q = query(&at_a);
        assert_eq!(
            q.get("redirect_uri"),
            Some(&format!("{broker}/callback/impots")),
            "one redirect URI per provider"
        );
        let state_a = q["state"].clone();

        // Sign-in through H, up to H's answer on H's callback.
        let auth_h = rp.authorize(PIVOT, &[("idp_hint", "ameli")]);
        let at_callback = upstream_login(&env, &browser, &auth_h.url, "marie").await;
        assert!(
            at_callback.starts_with(&format!("{broker}/callback/ameli?")),
            "{at_callback}"
        );
        let h = query(&at_callback);
        assert_eq!(h.get("iss"), Some(&idp2));
        let code_h = h["code"].clone();

        // H's code with A's state, on H's callback: refused.
        let forged = relais::error::with_query(
            &format!("{broker}/callback/ameli"),
            &[
                ("code", code_h.as_str()),
                ("state", state_a.as_str()),
                ("iss", idp2.as_str()),
            ],
        );
        let (_, html) = browser
            .go(&forged, &rp.redirect_uri)
            .await
            .expect_status(400);
        assert!(html.contains("upstream_mixup"), "{html}");
        // Also without iss (a provider that does not send it).
        let forged = relais::error::with_query(
            &format!("{broker}/callback/ameli"),
            &[("code", code_h.as_str()), ("state", state_a.as_str())],
        );
        let (_, html) = browser
            .go(&forged, &rp.redirect_uri)
            .await
            .expect_status(400);
        assert!(html.contains("upstream_mixup"), "{html}");
        // The former shared redirect URI is refused with a page saying so.
        let legacy = relais::error::with_query(
            &format!("{broker}/callback"),
            &[("code", code_h.as_str()), ("state", state_a.as_str())],
        );
        let (_, html) = browser
            .go(&legacy, &rp.redirect_uri)
            .await
            .expect_status(400);
        assert!(html.contains("callback_moved"), "{html}");

        // Nothing was redeemed: at H the code fails only on PKCE (a used
        // code would answer "already used").
        let r = reqwest::Client::new()
            .post(format!("{idp2}/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code_h.as_str()),
                ("redirect_uri", &format!("{broker}/callback/ameli")),
                ("client_id", "relais"),
                ("client_secret", "relais-at-ameli"),
                ("code_verifier", &"a".repeat(43)),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["error_description"], "PKCE verification failed",
            "{body}"
        );
        // No session: a silent request finds none.
        let silent = rp.authorize(PIVOT, &[("prompt", "none")]);
        let back = browser.go(&silent.url, &rp.redirect_uri).await.arrived();
        assert_eq!(
            query(&back).get("error").map(String::as_str),
            Some("login_required")
        );

        // H's answer on H's callback completes H's sign-in.
        let arrived = sign_in(&browser, &at_callback, &rp.redirect_uri, "ameli", "marie").await;
        let t = rp
            .exchange(&rp.code_from(&arrived, &auth_h), &auth_h)
            .await
            .unwrap();
        assert_eq!(t.claims["aud"], "demo-service");
        env.cleanup().await;
    }
}

/// Providers at the demo provider 1 configured with explicit endpoints
/// (no discovery): one with `require_iss`, one without.
const EXPLICIT: &str = r#"
[[federations.citizen.providers]]
id = "impots-strict"
name = "Impôts (explicit, iss required)"
issuer = "IDP1"
authorization_endpoint = "IDP1/authorize"
token_endpoint = "IDP1/token"
userinfo_endpoint = "IDP1/userinfo"
jwks_uri = "IDP1/jwks"
client_id = "relais"
client_secret = "relais-at-impots"
acr_values = ["eidas1", "eidas2"]
display = false
require_iss = true

[[federations.citizen.providers]]
id = "impots-lax"
name = "Impôts (explicit)"
issuer = "IDP1"
authorization_endpoint = "IDP1/authorize"
token_endpoint = "IDP1/token"
userinfo_endpoint = "IDP1/userinfo"
jwks_uri = "IDP1/jwks"
client_id = "relais"
client_secret = "relais-at-impots"
acr_values = ["eidas1", "eidas2"]
display = false
"#;

/// Sign in through `provider` (idp_hint) in a new browser; the final page.
async fn sign_in_through(env: &Env, rp: &Rp, provider: &str) -> (u16, String) {
    let browser = Browser::new();
    let auth = rp.authorize(PIVOT, &[("idp_hint", provider)]);
    let back = upstream_login(env, &browser, &auth.url, "angela").await;
    assert!(
        back.starts_with(&format!("{}/callback/{provider}?", env.broker())),
        "{back}"
    );
    let (_, status, html) = browser.go(&back, &rp.redirect_uri).await.page();
    (status, html)
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_iss_required_when_advertised_and_must_match() {
    let env = Env::start_with(None, EXPLICIT.into(), vec![], false).await;
    let rp = Rp::demo(&env).await;
    let idp = &env.stack.idps[0];
    let accepted = |(status, html): (u16, String), what: &str| {
        assert_eq!(status, 200, "{what}: {html}");
        assert!(html.contains("name=\"decision\""), "{what}: {html}");
    };
    let refused = |(status, html): (u16, String), what: &str| {
        assert_eq!(status, 400, "{what}: {html}");
        assert!(html.contains("upstream_error"), "{what}: {html}");
        assert!(
            html.contains("error=access_denied"),
            "{what}: a way back\n{html}"
        );
    };

    accepted(sign_in_through(&env, &rp, "impots").await, "healthy");
    accepted(sign_in_through(&env, &rp, "impots-lax").await, "healthy");

    // No iss: refused where discovery advertises it, and with require_iss.
    idp.set_faults(Faults {
        omit_iss: true,
        ..Default::default()
    });
    refused(sign_in_through(&env, &rp, "impots").await, "advertised");
    refused(
        sign_in_through(&env, &rp, "impots-strict").await,
        "require_iss",
    );
    accepted(
        sign_in_through(&env, &rp, "impots-lax").await,
        "explicit endpoints without require_iss",
    );

    // Another provider's iss: always refused.
    idp.set_faults(Faults {
        response_iss: Some(env.stack.urls.idp2.clone()),
        ..Default::default()
    });
    for p in ["impots", "impots-strict", "impots-lax"] {
        refused(sign_in_through(&env, &rp, p).await, p);
    }
    env.cleanup().await;
}
