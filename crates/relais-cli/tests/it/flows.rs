//! End-to-end sign-ins through Relais, with the `openidconnect` crate as the
//! service and the demo providers as genuine upstream OpenID providers.

use openidconnect::JsonWebKey;
use relais_testkit::*;
use serde_json::Value;

const PIVOT: &[&str] = &["openid", "identite_pivot", "email", "idp_id"];

#[tokio::test(flavor = "multi_thread")]
async fn discovery_lists_what_is_supported() {
    let env = Env::start(None).await;
    let doc: Value = reqwest::get(format!("{}/.well-known/openid-configuration", env.broker()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], env.broker());
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        doc["end_session_endpoint"],
        format!("{}/session/end", env.broker())
    );
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        doc["acr_values_supported"],
        serde_json::json!(["eidas1", "eidas2", "eidas3"])
    );
    for alg in ["RS256", "ES256", "EdDSA"] {
        assert!(doc["id_token_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&Value::from(alg)));
    }
    for m in [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    ] {
        assert!(doc["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&Value::from(m)));
    }
    for s in [
        "openid",
        "profile",
        "birth",
        "identite_pivot",
        "email",
        "birthplace",
        "idp_id",
        "amr",
    ] {
        assert!(
            doc["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&Value::from(s)),
            "{s}"
        );
    }
    let jwks: Value = reqwest::get(doc["jwks_uri"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Active and next key for three algorithms.
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 6);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn complete_sign_in_and_userinfo() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();
        let t = full_sign_in(&env, &rp, &browser, "impots", "angela", PIVOT, &[]).await;
        let c = &t.claims;
        assert_eq!(c["iss"], env.broker());
        assert_eq!(c["aud"], "demo-service");
        let sub = c["sub"].as_str().unwrap();
        assert_eq!(sub.len(), 66);
        assert!(sub.ends_with("v1"));
        for k in [
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "acr",
            "amr",
            "at_hash",
            "sid",
        ] {
            assert!(c.contains_key(k), "ID token lacks {k}: {c:?}");
        }
        assert_eq!(c["acr"], "eidas1");
        assert!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() <= 60);
        // RS256 by default: the header says so.
        let header: Value = serde_json::from_slice(
            &relais::crypto::jws::b64_decode(t.id_token.split('.').next().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "RS256");
        let resp = rp.userinfo(&t.access_token).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let info: Value = resp.json().await.unwrap();
        assert_eq!(info["sub"], sub);
        assert_eq!(info["given_name"], "Angela Claire Louise");
        assert_eq!(info["family_name"], "DUBOIS");
        assert_eq!(info["birthplace"], "75107");
        assert_eq!(info["birthcountry"], "99100");
        assert_eq!(info["idp_id"], "impots");
        assert!(
            info.get("preferred_username").is_none(),
            "profile scope was not asked"
        );
        // userinfo by POST too.
        let resp = rp
            .http
            .post(format!("{}/userinfo", env.broker()))
            .bearer_auth(&t.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn same_person_through_two_providers_gets_the_same_sub() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let a = full_sign_in(&env, &rp, &Browser::new(), "impots", "eric", PIVOT, &[]).await;
        let b = full_sign_in(&env, &rp, &Browser::new(), "ameli", "eric", PIVOT, &[]).await;
        assert_eq!(a.claims["sub"], b.claims["sub"]);
        let other = full_sign_in(&env, &rp, &Browser::new(), "impots", "angela", PIVOT, &[]).await;
        assert_ne!(a.claims["sub"], other.claims["sub"]);
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sso_to_a_second_service_with_a_different_sub() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();
        let a = full_sign_in(&env, &rp, &browser, "impots", "angela", PIVOT, &[]).await;
        let rp_b = Rp::new(
            &env,
            "svc-b",
            Some("svc-b-secret"),
            "http://service-b.test/cb",
        )
        .await;
        let auth = rp_b.authorize(&["openid", "profile"], &[]);
        // SSO: straight to the information page, no provider choice, no upstream login.
        let (url, html) = browser.go(&auth.url, &rp_b.redirect_uri).await.ok();
        assert!(
            url.contains("/consent"),
            "expected the consent page, got {url}"
        );
        assert!(html.contains("Angela Claire Louise DUBOIS"), "{html}");
        let arrived = sign_in(&browser, &auth.url, &rp_b.redirect_uri, "impots", "angela").await;
        let code = rp_b.code_from(&arrived, &auth);
        let b = rp_b.exchange(&code, &auth).await.unwrap();
        assert_ne!(
            a.claims["sub"], b.claims["sub"],
            "pairwise subs differ per service"
        );
        assert_eq!(a.claims["sid"], b.claims["sid"], "same broker session");
        assert_eq!(a.claims["auth_time"], b.claims["auth_time"]);
        env.cleanup().await;
    }
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_none_and_max_age() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();
        let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
        let arrived = browser.go(&auth.url, &rp.redirect_uri).await.arrived();
        let q = query(&arrived);
        assert_eq!(q["error"], "login_required");
        assert_eq!(q["state"], auth.state);
        assert_eq!(q["iss"], env.broker());

        full_sign_in(&env, &rp, &browser, "impots", "angela", PIVOT, &[]).await;
        // With a session, prompt=none returns a code without any page.
        let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
        let arrived = browser.go(&auth.url, &rp.redirect_uri).await.arrived();
        let code = rp.code_from(&arrived, &auth);
        rp.exchange(&code, &auth).await.unwrap();

        // max_age exceeded: back to the provider, which must ask for a login again.
        env.stack.state.clock.advance(120);
        let auth = rp.authorize(PIVOT, &[("max_age", "60"), ("idp_hint", "impots")]);
        let (url, _, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
        assert!(
            url.starts_with(&env.stack.urls.idp1),
            "expected the provider, got {url}"
        );
        assert!(
            html.contains("name=\"password\""),
            "the provider must ask for a fresh login"
        );
        // And prompt=none with max_age exceeded is login_required.
        let auth = rp.authorize(PIVOT, &[("prompt", "none"), ("max_age", "60")]);
        let q = query(&browser.go(&auth.url, &rp.redirect_uri).await.arrived());
        assert_eq!(q["error"], "login_required");
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_broker_and_upstream_sessions() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();
        let t = full_sign_in(&env, &rp, &browser, "impots", "angela", PIVOT, &[]).await;
        assert_eq!(env.stack.idps[0].session_count(), 1);
        let back = format!("{}/logged-out", env.stack.urls.service);
        let url = relais::error::with_query(
            &format!("{}/session/end", env.broker()),
            &[
                ("id_token_hint", &t.id_token),
                ("post_logout_redirect_uri", &back),
                ("state", "bye-123"),
            ],
        );
        let arrived = browser.go(&url, &back).await.arrived();
        assert_eq!(query(&arrived)["state"], "bye-123");
        assert_eq!(
            env.stack.idps[0].session_count(),
            0,
            "upstream session ended"
        );
        let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
        let q = query(&browser.go(&auth.url, &rp.redirect_uri).await.arrived());
        assert_eq!(q["error"], "login_required", "broker session ended");
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_without_valid_hint_asks_and_never_redirects() {
    let env = Env::start(None).await;
    let rp = Rp::demo(&env).await;
    let browser = Browser::new();
    let t = full_sign_in(&env, &rp, &browser, "impots", "angela", PIVOT, &[]).await;
    let mut forged = t.id_token.clone();
    forged.pop();
    forged.push(if t.id_token.ends_with('A') { 'B' } else { 'A' });
    let url = relais::error::with_query(
        &format!("{}/session/end", env.broker()),
        &[
            ("id_token_hint", &forged),
            ("post_logout_redirect_uri", "https://evil.test/"),
            ("state", "x"),
        ],
    );
    let (_, html) = browser.go(&url, "https://evil.test").await.ok();
    assert!(html.contains("name=\"decision\""), "confirmation asked");
    let (action, mut fields) = form(&html);
    fields.push(("decision".into(), "logout".into()));
    let (_, html) = browser
        .post(&action, &fields, "https://evil.test")
        .await
        .ok();
    assert!(html.contains("déconnecté"), "{html}");
    let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
    let q = query(&browser.go(&auth.url, &rp.redirect_uri).await.arrived());
    assert_eq!(q["error"], "login_required");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn private_client_consent_eddsa_and_signed_userinfo() {
    for db in databases() {
        let env = Env::start(db).await;
        let mut rp = Rp::new(
            &env,
            "private-svc",
            Some("private-secret"),
            "http://private.test/cb",
        )
        .await;
        rp.auth_type = openidconnect::AuthType::RequestBody;
        let browser = Browser::new();
        let auth = rp.authorize(&["given_name", "family_name"], &[]);
        // The consent page has a required checkbox; refusing returns access_denied.
        let mut step = browser.go(&auth.url, &rp.redirect_uri).await;
        let mut saw_checkbox = false;
        let arrived = loop {
            let (url, _, html) = match step {
                Step::Arrived(u) => break u,
                s => s.page(),
            };
            let (action, mut fields) = form(&html);
            if html.contains("name=\"provider\"") {
                fields.push(("provider".into(), "ameli".into()));
            } else if html.contains("name=\"password\"") {
                fields.extend([
                    ("login".into(), "marie".into()),
                    ("password".into(), "123".into()),
                    ("action".into(), "login".into()),
                ]);
            } else {
                assert!(
                    html.contains("type=\"checkbox\""),
                    "private clients need explicit consent"
                );
                saw_checkbox = true;
                // Without ticking the box, nothing is sent to the service.
                let again = browser
                    .post(
                        &action,
                        &[fields.clone(), vec![("decision".into(), "accept".into())]].concat(),
                        &rp.redirect_uri,
                    )
                    .await;
                assert!(matches!(again, Step::Page { .. }), "consent is required");
                fields.extend([
                    ("decision".into(), "accept".into()),
                    ("consent".into(), "yes".into()),
                ]);
            }
            let action = reqwest::Url::parse(&url)
                .unwrap()
                .join(&action)
                .unwrap()
                .to_string();
            step = browser.post(&action, &fields, &rp.redirect_uri).await;
        };
        assert!(saw_checkbox);
        let code = rp.code_from(&arrived, &auth);
        let t = rp
            .exchange(&code, &auth)
            .await
            .expect("EdDSA ID token verified by openidconnect");
        let header: Value = serde_json::from_slice(
            &relais::crypto::jws::b64_decode(t.id_token.split('.').next().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "EdDSA");
        let resp = rp.userinfo(&t.access_token).await;
        assert_eq!(resp.headers()["content-type"], "application/jwt");
        let jwt = resp.text().await.unwrap();
        // Verify the signed userinfo with the independent library's JWK code.
        let parts: Vec<&str> = jwt.split('.').collect();
        let h: Value =
            serde_json::from_slice(&relais::crypto::jws::b64_decode(parts[0]).unwrap()).unwrap();
        assert_eq!(h["alg"], "ES256");
        let key = rp
            .meta
            .jwks()
            .keys()
            .iter()
            .find(|k| k.key_id().map(|id| id.as_str()) == h["kid"].as_str())
            .expect("kid published");
        let sig = relais::crypto::jws::b64_decode(parts[2]).unwrap();
        key.verify_signature(
            &openidconnect::core::CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &sig,
        )
        .expect("userinfo JWT signature");
        let claims: Value =
            serde_json::from_slice(&relais::crypto::jws::b64_decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["family_name"], "Lefèvre-Dupont");
        assert_eq!(claims["aud"], "private-svc");
        assert!(
            claims.get("birthdate").is_none(),
            "birthdate scope not asked"
        );
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consent_refused_returns_access_denied_with_state() {
    let env = Env::start(None).await;
    let rp = Rp::demo(&env).await;
    let browser = Browser::new();
    let auth = rp.authorize(PIVOT, &[("idp_hint", "impots")]);
    let (url, _, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
    let (url, _, html) = provider_login(&browser, &url, &html, "angela", &rp.redirect_uri)
        .await
        .page();
    assert!(url.contains("/consent"));
    let (action, mut f) = form(&html);
    f.push(("decision".into(), "deny".into()));
    let q = query(&browser.post(&action, &f, &rp.redirect_uri).await.arrived());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], auth.state);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn public_client_with_pkce() {
    let env = Env::start(None).await;
    let rp = Rp::new(&env, "public-app", None, "http://public.test/cb").await;
    let browser = Browser::new();
    let t = full_sign_in(
        &env,
        &rp,
        &browser,
        "impots",
        "paul",
        &["openid", "profile"],
        &[],
    )
    .await;
    assert_eq!(t.claims["aud"], "public-app");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_levels_choice_and_check() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();
        // eidas2: Ameli (eidas1 only) is shown disabled.
        let auth = rp.authorize(PIVOT, &[("acr_values", "eidas2")]);
        let (_, _, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
        let ameli = html.find("value=\"ameli\"").unwrap();
        assert!(html[ameli..ameli + 80].contains("disabled"), "{html}");
        let impots = html.find("value=\"impots\"").unwrap();
        assert!(!html[impots..impots + 40].contains("disabled"));
        let arrived = sign_in(&browser, &auth.url, &rp.redirect_uri, "impots", "angela").await;
        let t = rp
            .exchange(&rp.code_from(&arrived, &auth), &auth)
            .await
            .unwrap();
        assert_eq!(t.claims["acr"], "eidas2");

        // Essential acr through the claims parameter; a higher level than the
        // session's forces a new upstream sign-in (no SSO).
        let claims = r#"{"id_token":{"acr":{"essential":true,"values":["eidas3"]}}}"#;
        let auth = rp.authorize(PIVOT, &[("claims", claims)]);
        let (url, _, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
        assert!(
            url.contains("/interaction/"),
            "no SSO for a higher level: {url}"
        );
        assert_eq!(
            html.matches("disabled aria-disabled").count(),
            2,
            "no provider reaches eidas3"
        );

        // The provider returns a lower level than asked: refused.
        env.stack.idps[0].set_faults(relais_demo::idp::Faults {
            acr: Some("eidas1".into()),
            ..Default::default()
        });
        let auth = rp.authorize(PIVOT, &[("acr_values", "eidas2"), ("prompt", "login")]);
        let b2 = Browser::new();
        let mut step = b2.go(&auth.url, &rp.redirect_uri).await;
        let html = loop {
            let (url, status, html) = step.page();
            if status != 200 || !html.contains("<form") {
                assert_eq!(status, 403);
                break html;
            }
            step = choose_or_login(&b2, &url, &html, ("impots", "angela"), &rp.redirect_uri).await;
        };
        assert!(html.contains("acr_not_satisfied"), "{html}");
        assert!(
            html.contains(&format!("state={}", auth.state)),
            "back link keeps the state"
        );
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idp_hint_skips_the_choice_page_and_ui_locales() {
    let env = Env::start(None).await;
    let rp = Rp::demo(&env).await;
    let browser = Browser::new();
    let auth = rp.authorize(PIVOT, &[("idp_hint", "ameli")]);
    let (url, _, _) = browser.go(&auth.url, &rp.redirect_uri).await.page();
    assert!(url.starts_with(&env.stack.urls.idp2), "{url}");
    // English pages.
    let auth = rp.authorize(PIVOT, &[("ui_locales", "en")]);
    let (_, _, html) = Browser::new().go(&auth.url, &rp.redirect_uri).await.page();
    assert!(html.contains("lang=\"en\""));
    assert!(html.contains("Choose an account"), "{html}");
    let auth = rp.authorize(PIVOT, &[]);
    let (_, _, html) = Browser::new().go(&auth.url, &rp.redirect_uri).await.page();
    assert!(html.contains("lang=\"fr\""));
    // The restricted provider is not offered to this client.
    assert!(!html.contains("ameli-bis"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_client_and_jti_replay() {
    use relais::crypto::jws::{generate_pkcs8, SigningKey};
    use relais::crypto::Alg;
    for alg in [Alg::ES256, Alg::RS256] {
        let key = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
        let jwks = serde_json::json!({"keys": [key.public_jwk]}).to_string();
        let extra = format!(
            r#"
[[federations.citizen.clients]]
client_id = "jwt-svc"
name = "JWT service"
token_endpoint_auth_method = "private_key_jwt"
jwks = '{jwks}'
redirect_uris = ["http://jwt.test/cb"]
scopes = ["openid", "profile"]
"#
        );
        let env = Env::start_with(None, extra, vec![], false).await;
        let rp = Rp::new(&env, "jwt-svc", None, "http://jwt.test/cb").await;
        let browser = Browser::new();
        let token_url = format!("{}/token", env.broker());
        let assertion = |aud: &str, jti: &str| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            key.sign_jwt("JWT", &serde_json::json!({"iss": "jwt-svc", "sub": "jwt-svc", "aud": aud, "jti": jti, "iat": now, "exp": now + 60}))
                .unwrap()
        };
        let redeem = |code: String, verifier: String, assertion: String| {
            let http = rp.http.clone();
            let token_url = token_url.clone();
            async move {
                let resp = http
                    .post(&token_url)
                    .form(&[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", "http://jwt.test/cb"),
                        ("code_verifier", &verifier),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", &assertion),
                    ])
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
            }
        };
        let auth = rp.authorize(&["openid"], &[]);
        let arrived = sign_in(&browser, &auth.url, &rp.redirect_uri, "impots", "angela").await;
        let code = rp.code_from(&arrived, &auth);
        // Wrong audience, then a good one, then the same jti again.
        let (status, body) = redeem(
            code.clone(),
            auth.verifier.clone(),
            assertion("https://other.test", "j-0"),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{alg}"
        );
        // The token endpoint URL as audience is refused by default (only
        // the issuer, as one string: the 2025 audience-injection advice), and
        // so is an array holding the issuer.
        let (status, _) = redeem(
            code.clone(),
            auth.verifier.clone(),
            assertion(&token_url, "j-0b"),
        )
        .await;
        assert_eq!(status, 401, "{alg}: token endpoint audience refused");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let array = key
            .sign_jwt("JWT", &serde_json::json!({"iss": "jwt-svc", "sub": "jwt-svc", "aud": [env.broker(), "https://x.test"], "jti": "j-0c", "iat": now, "exp": now + 60}))
            .unwrap();
        let (status, _) = redeem(code.clone(), auth.verifier.clone(), array).await;
        assert_eq!(status, 401, "{alg}: array audience refused");
        let future = key
            .sign_jwt("JWT", &serde_json::json!({"iss": "jwt-svc", "sub": "jwt-svc", "aud": env.broker(), "jti": "j-0d", "iat": now + 3600, "exp": now + 120}))
            .unwrap();
        let (status, _) = redeem(code.clone(), auth.verifier.clone(), future).await;
        assert_eq!(status, 401, "{alg}: iat in the future refused");
        let long = key
            .sign_jwt("JWT", &serde_json::json!({"iss": "jwt-svc", "sub": "jwt-svc", "aud": env.broker(), "jti": "j-0e", "iat": now, "exp": now + 3600}))
            .unwrap();
        let (status, _) = redeem(code.clone(), auth.verifier.clone(), long).await;
        assert_eq!(status, 401, "{alg}: exp more than 10 minutes ahead refused");
        let good = assertion(env.broker(), "j-1");
        let (status, body) = redeem(code, auth.verifier.clone(), good.clone()).await;
        assert_eq!(status, 200, "{alg}: {body}");
        assert!(body["id_token"].is_string());
        let auth = rp.authorize(&["openid"], &[]);
        let arrived = sign_in(&browser, &auth.url, &rp.redirect_uri, "impots", "angela").await;
        let code = rp.code_from(&arrived, &auth);
        let (status, body) = redeem(code.clone(), auth.verifier.clone(), good).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{alg}: jti replay refused"
        );
        // A key that is not the client's.
        let other = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let forged = other
            .sign_jwt("JWT", &serde_json::json!({"iss": "jwt-svc", "sub": "jwt-svc", "aud": token_url, "jti": "j-2", "iat": now, "exp": now + 60}))
            .unwrap();
        let (status, _) = redeem(code, auth.verifier.clone(), forged).await;
        assert_eq!(status, 401, "{alg}: foreign key refused");
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_key_rotation_is_picked_up_on_unknown_kid() {
    let env = Env::start_with(
        None,
        String::new(),
        vec![(
            "RELAIS__FEDERATIONS__CITIZEN__JWKS_REFETCH_COOLDOWN_SECS".into(),
            "0".into(),
        )],
        false,
    )
    .await;
    let rp = Rp::demo(&env).await;
    full_sign_in(&env, &rp, &Browser::new(), "impots", "angela", PIVOT, &[]).await;
    // Rotate the provider's key twice: its new active key was never published
    // when Relais fetched the JWKS, so Relais meets an unknown kid.
    let dir = env.stack.data_dir.join("idp1-keys");
    relais::crypto::keys::rotate(&dir, relais::crypto::Alg::ES256).unwrap();
    relais::crypto::keys::rotate(&dir, relais::crypto::Alg::ES256).unwrap();
    assert!(env.stack.idps[0].reload_keys());
    let t = full_sign_in(&env, &rp, &Browser::new(), "impots", "angela", PIVOT, &[]).await;
    assert_eq!(t.claims["aud"], "demo-service");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_configured_with_explicit_endpoints() {
    let idp = "IDP1";
    let extra = format!(
        r#"
[[federations.citizen.providers]]
id = "impots-explicit"
name = "Impôts (explicit endpoints)"
issuer = "{idp}"
authorization_endpoint = "{idp}/authorize"
token_endpoint = "{idp}/token"
userinfo_endpoint = "{idp}/userinfo"
jwks_uri = "{idp}/jwks"
end_session_endpoint = "{idp}/session/end"
client_id = "relais"
client_secret = "relais-at-impots"
acr_values = ["eidas1", "eidas2"]
"#
    );
    let env = Env::start_with(None, extra, vec![], false).await;
    let rp = Rp::demo(&env).await;
    let t = full_sign_in(
        &env,
        &rp,
        &Browser::new(),
        "impots-explicit",
        "angela",
        PIVOT,
        &[],
    )
    .await;
    assert_eq!(t.claims["aud"], "demo-service");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hint_from_another_session_needs_confirmation() {
    let env = Env::start(None).await;
    let rp = Rp::demo(&env).await;
    let victim = Browser::new();
    full_sign_in(&env, &rp, &victim, "impots", "angela", PIVOT, &[]).await;
    let attacker = full_sign_in(&env, &rp, &Browser::new(), "ameli", "marie", PIVOT, &[]).await;
    let back = format!("{}/logged-out", env.stack.urls.service);
    let url = relais::error::with_query(
        &format!("{}/session/end", env.broker()),
        &[
            ("id_token_hint", &attacker.id_token),
            ("post_logout_redirect_uri", &back),
        ],
    );
    let (_, html) = victim.go(&url, &back).await.ok();
    assert!(
        html.contains("name=\"decision\""),
        "confirmation asked:\n{html}"
    );
    // The victim's session is still there.
    let auth = rp.authorize(PIVOT, &[("prompt", "none")]);
    let arrived = victim.go(&auth.url, &rp.redirect_uri).await.arrived();
    assert!(arrived.contains("code="), "{arrived}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_with_jwks_uri_and_denied_provider() {
    use relais::crypto::jws::{generate_pkcs8, SigningKey};
    use relais::crypto::Alg;
    let key = SigningKey::from_pkcs8(Alg::ES256, &generate_pkcs8(Alg::ES256).unwrap()).unwrap();
    // The client publishes its keys at a jwks_uri.
    let jwks = serde_json::json!({"keys": [key.public_jwk]}).to_string();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_uri = format!("http://{}/jwks.json", l.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || async move { jwks }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let extra = format!(
        r#"
[[federations.citizen.clients]]
client_id = "jwks-uri-svc"
name = "JWKS URI service"
token_endpoint_auth_method = "private_key_jwt"
jwks_uri = "{jwks_uri}"
# An older library: the token endpoint URL as audience, allowed by the switch.
assertion_audience_token_endpoint = true
redirect_uris = ["http://jwks-uri.test/cb"]
scopes = ["openid"]

[[federations.citizen.providers]]
id = "impots-denied"
name = "Impôts (not for this client)"
issuer = "IDP1"
client_id = "relais"
client_secret = "relais-at-impots"
acr_values = ["eidas1"]
denied_clients = ["jwks-uri-svc"]
"#
    );
    let env = Env::start_with(None, extra, vec![], false).await;
    let rp = Rp::new(&env, "jwks-uri-svc", None, "http://jwks-uri.test/cb").await;
    let browser = Browser::new();
    // A provider that denies this client is neither listed nor usable by idp_hint.
    let auth = rp.authorize(&["openid"], &[]);
    let (_, _, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
    assert!(!html.contains("impots-denied"));
    assert!(html.contains("value=\"impots\""));
    let hinted = rp.authorize(&["openid"], &[("idp_hint", "impots-denied")]);
    let q: std::collections::HashMap<String, String> =
        reqwest::Url::parse(&browser.go(&hinted.url, &rp.redirect_uri).await.arrived())
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    assert_eq!(q["error"], "invalid_request");
    // Sign in, then authenticate at /token with a key fetched from jwks_uri.
    let arrived = sign_in(&browser, &auth.url, &rp.redirect_uri, "impots", "angela").await;
    let code = rp.code_from(&arrived, &auth);
    let token_url = format!("{}/token", env.broker());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let assertion = key
        .sign_jwt("JWT", &serde_json::json!({"iss": "jwks-uri-svc", "sub": "jwks-uri-svc", "aud": token_url, "jti": "uri-1", "iat": now, "exp": now + 60}))
        .unwrap();
    let resp = rp
        .http
        .post(&token_url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://jwks-uri.test/cb"),
            ("code_verifier", auth.verifier.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    env.cleanup().await;
}
