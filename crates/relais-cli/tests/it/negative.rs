//! Bad input gets the error the specifications name, never a panic, a 500 or
//! an open redirect.

use relais_demo::idp::Faults;
use relais_testkit::*;
use serde_json::Value;

const PIVOT: &[&str] = &["openid", "identite_pivot", "email"];

fn query(url: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_client_or_redirect_uri_gets_a_page_not_a_redirect() {
    let env = Env::start(None).await;
    let http = no_redirects();
    for (client, redirect, code) in [
        (
            "demo-service",
            "https://evil.test/cb",
            "invalid_redirect_uri",
        ),
        ("nobody", "https://evil.test/cb", "invalid_client"),
        ("demo-service", "", "invalid_redirect_uri"),
    ] {
        let url = relais::error::with_query(
            &format!("{}/authorize", env.broker()),
            &[
                ("client_id", client),
                ("redirect_uri", redirect),
                ("response_type", "code"),
                ("scope", "openid"),
                ("state", "s"),
                ("nonce", "n0123456789012345678901"),
            ],
        );
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        assert!(
            resp.headers().get("location").is_none(),
            "never redirect to an unverified URI"
        );
        let html = resp.text().await.unwrap();
        assert!(html.contains(code), "{html}");
    }
    // Repeated parameter: page too (cannot trust which value is meant).
    let resp = http
        .get(format!(
            "{}/authorize?client_id=demo-service&client_id=x",
            env.broker()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_return_to_the_service_with_state_and_iss() {
    let env = Env::start(None).await;
    let rp = Rp::demo(&env).await;
    let http = no_redirects();
    let base = |extra: &[(&str, &str)]| {
        let mut p = vec![
            ("client_id", "demo-service".to_string()),
            ("redirect_uri", rp.redirect_uri.clone()),
            ("response_type", "code".into()),
            ("scope", "openid".into()),
            ("state", "st-1".into()),
            ("nonce", "n0123456789012345678901".into()),
        ];
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                p.push((k, v.to_string()));
            }
        }
        let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        relais::error::with_query(&format!("{}/authorize", env.broker()), &p)
    };
    for (extra, error) in [
        (vec![("nonce", "")], "invalid_request"),
        (vec![("nonce", "short")], "invalid_request"),
        (vec![("scope", "openid unknown_scope")], "invalid_scope"),
        (vec![("scope", "profile")], "invalid_scope"),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (
            vec![
                ("code_challenge", "abc"),
                ("code_challenge_method", "plain"),
            ],
            "invalid_request",
        ),
        (vec![("prompt", "none login")], "invalid_request"),
        (vec![("max_age", "-3")], "invalid_request"),
        (vec![("claims", "not json")], "invalid_request"),
        (vec![("idp_hint", "ameli-bis")], "invalid_request"),
        (vec![("idp_hint", "nope")], "invalid_request"),
        (vec![("request", "eyJ")], "request_not_supported"),
    ] {
        let resp = http.get(base(&extra)).send().await.unwrap();
        assert_eq!(resp.status(), 303, "{extra:?}");
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        assert!(loc.starts_with(&rp.redirect_uri), "{loc}");
        let q = query(&loc);
        assert_eq!(q["error"], error, "{extra:?}");
        assert_eq!(q["state"], "st-1");
        assert_eq!(q["iss"], env.broker());
    }
    // Missing state: error without state.
    let q = query(
        http.get(base(&[("state", "")]))
            .send()
            .await
            .unwrap()
            .headers()["location"]
            .to_str()
            .unwrap(),
    );
    assert_eq!(q["error"], "invalid_request");
    assert!(!q.contains_key("state"));
    // Unknown parameters are ignored.
    let resp = http.get(base(&[("foo", "bar")])).send().await.unwrap();
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .contains("/interaction/"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nonce_policy_switch_makes_nonce_optional() {
    let env = Env::start_with(
        None,
        String::new(),
        vec![(
            "RELAIS__FEDERATIONS__CITIZEN__NONCE_REQUIRED".into(),
            "false".into(),
        )],
        false,
    )
    .await;
    let rp = Rp::demo(&env).await;
    let url = relais::error::with_query(
        &format!("{}/authorize", env.broker()),
        &[
            ("client_id", "demo-service"),
            ("redirect_uri", &rp.redirect_uri),
            ("response_type", "code"),
            ("scope", "openid"),
            ("state", "s"),
        ],
    );
    let resp = no_redirects().get(&url).send().await.unwrap();
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .contains("/interaction/"));
    env.cleanup().await;
}

async fn sign(rp: &Rp, b: &Browser) -> (String, Auth) {
    let auth = rp.authorize(PIVOT, &[]);
    let arrived = sign_in(b, &auth.url, &rp.redirect_uri, "impots", "angela").await;
    (rp.code_from(&arrived, &auth), auth)
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_errors_code_reuse_and_revocation() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();
        let http = no_redirects();
        let token_url = format!("{}/token", env.broker());
        // Wrong client secret.
        let (code, auth) = sign(&rp, &browser).await;
        let resp = http
            .post(&token_url)
            .basic_auth("demo-service", Some("wrong"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &rp.redirect_uri),
                ("code_verifier", &auth.verifier),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().contains_key("www-authenticate"));
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"],
            "invalid_client"
        );
        // Wrong PKCE verifier.
        let resp = http
            .post(&token_url)
            .basic_auth("demo-service", Some("demo-service-secret-change-me"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &rp.redirect_uri),
                ("code_verifier", &"x".repeat(43)),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"],
            "invalid_grant"
        );

        // A good exchange, then the same code again: invalid_grant and the
        // first access token stops working.
        let (code, auth) = sign(&rp, &browser).await;
        let t = rp.exchange(&code, &auth).await.unwrap();
        assert_eq!(rp.userinfo(&t.access_token).await.status(), 200);
        let again = rp.exchange(&code, &auth).await.unwrap_err();
        assert!(again.contains("invalid_grant"), "{again}");
        let resp = rp.userinfo(&t.access_token).await;
        assert_eq!(
            resp.status(),
            401,
            "tokens from a replayed code are revoked"
        );
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));

        // Expired code (codes live at most 60 s).
        let (code, auth) = sign(&rp, &browser).await;
        env.stack.state.clock.advance(61);
        let err = rp.exchange(&code, &auth).await.unwrap_err();
        assert!(err.contains("invalid_grant"), "{err}");

        // Other malformed requests.
        for (form, error) in [
            (vec![("grant_type", "password")], "unsupported_grant_type"),
            (
                vec![("grant_type", "authorization_code")],
                "invalid_request",
            ),
            (vec![("code", "x")], "invalid_request"),
        ] {
            let resp = http
                .post(&token_url)
                .basic_auth("demo-service", Some("demo-service-secret-change-me"))
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400);
            assert_eq!(resp.json::<Value>().await.unwrap()["error"], error);
        }
        let resp = http
            .post(&token_url)
            .form(&[("grant_type", "authorization_code")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        // Userinfo without or with a garbage token.
        let resp = http
            .get(format!("{}/userinfo", env.broker()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let resp = http
            .get(format!("{}/userinfo", env.broker()))
            .bearer_auth("garbage")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secrets_are_rate_limited() {
    let env = Env::start(None).await;
    let http = no_redirects();
    let mut last = 0;
    let mut limited = false;
    for _ in 0..25 {
        let resp = http
            .post(format!("{}/token", env.broker()))
            .basic_auth("svc-b", Some("nope"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("redirect_uri", "http://service-b.test/cb"),
            ])
            .send()
            .await
            .unwrap();
        last = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("too many")
        {
            limited = true;
        }
    }
    // Throttled: 429 with Retry-After (the error stays invalid_client).
    assert_eq!(last, 429);
    assert!(
        limited,
        "after 20 failures a minute the client is throttled"
    );
    env.cleanup().await;
}

/// Run a sign-in whose upstream misbehaves; return the final page.
async fn failing_sign_in(env: &Env, login: &str) -> (u16, String, String) {
    let rp = Rp::demo(env).await;
    let browser = Browser::new();
    let auth = rp.authorize(PIVOT, &[("idp_hint", "impots")]);
    let (url, status, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
    if !html.contains("name=\"password\"") {
        return (status, html, auth.state);
    }
    let (_, status, html) = provider_login(&browser, &url, &html, login, &rp.redirect_uri)
        .await
        .page();
    (status, html, auth.state)
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_end_on_an_error_page_with_a_way_back() {
    let env = Env::start_with(
        None,
        String::new(),
        vec![("RELAIS__SERVER__UPSTREAM_TIMEOUT_MS".into(), "700".into())],
        false,
    )
    .await;
    let cases: Vec<(Faults, &str)> = vec![
        (
            Faults {
                tamper_signature: true,
                ..Default::default()
            },
            "upstream_invalid_token",
        ),
        (
            Faults {
                unsigned: true,
                ..Default::default()
            },
            "upstream_invalid_token",
        ),
        (
            Faults {
                sign_with_foreign_key: true,
                ..Default::default()
            },
            "upstream_invalid_token",
        ),
        (
            Faults {
                wrong_nonce: true,
                ..Default::default()
            },
            "upstream_invalid_token",
        ),
        (
            Faults {
                wrong_audience: true,
                ..Default::default()
            },
            "upstream_invalid_token",
        ),
        (
            Faults {
                expired: true,
                ..Default::default()
            },
            "upstream_invalid_token",
        ),
        (
            Faults {
                token_delay_ms: 1500,
                ..Default::default()
            },
            "upstream_unavailable",
        ),
        (
            Faults {
                authorize_error: Some("access_denied".into()),
                ..Default::default()
            },
            "access_denied",
        ),
        (
            Faults {
                authorize_error: Some("server_error".into()),
                ..Default::default()
            },
            "upstream_error",
        ),
        (
            Faults {
                drop_claims: vec!["birthdate".into()],
                ..Default::default()
            },
            "invalid_identity",
        ),
        (
            Faults {
                set_claims: serde_json::from_str(r#"{"gender":"x"}"#).unwrap(),
                ..Default::default()
            },
            "invalid_identity",
        ),
        (
            Faults {
                set_claims: serde_json::from_str(r#"{"birthplace":""}"#).unwrap(),
                ..Default::default()
            },
            "invalid_identity",
        ),
    ];
    for (fault, code) in cases {
        let label = format!("{fault:?}");
        env.stack.idps[0].set_faults(fault);
        let (status, html, state) = failing_sign_in(&env, "angela").await;
        assert!(status >= 400 && status != 500, "{label}: status {status}");
        assert!(html.contains(code), "{label}: expected {code}:\n{html}");
        // The "back to the service" link returns access_denied with the state.
        let back = format!("error=access_denied&amp;state={state}");
        assert!(
            html.contains(&back)
                || html.contains(&format!("error=temporarily_unavailable&amp;state={state}")),
            "{label}: no way back in\n{html}"
        );
    }
    env.stack.idps[0].set_faults(Faults::default());
    let (status, html, _) = failing_sign_in(&env, "angela").await;
    assert_eq!(status, 200);
    assert!(html.contains("name=\"decision\""), "healthy again");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_check_refuses_unknown_and_deceased_people() {
    for db in databases() {
        let env = Env::start_with(
            db,
            String::new(),
            vec![(
                "RELAIS__FEDERATIONS__CITIZEN__REGISTRY".into(),
                "table".into(),
            )],
            false,
        )
        .await;
        let csv = "given_name,family_name,birthdate,gender,birthplace,birthcountry,status\n\
Angela Claire Louise,Dubois,1962-08-24,female,75107,99100,alive\n\
Paul Emile,Durand,1950-01-01,male,75056,99100,deceased\n";
        let n = relais::server::import_registry(&env.stack.config, csv)
            .await
            .unwrap();
        assert_eq!(n, 2);
        let people = relais_demo::idp::demo_people(1);
        let angela = people.iter().find(|p| p.login == "angela").unwrap();
        // Only proceed if the CSV matches the demo identity of angela.
        assert_eq!(
            angela.claims["birthdate"], "1962-08-24",
            "demo data changed; update this CSV"
        );
        let (status, html, _) = failing_sign_in(&env, "angela").await;
        assert_eq!(status, 200, "angela is in the registry: {html}");
        let (status, html, _) = failing_sign_in(&env, "eric").await;
        assert_eq!(status, 403);
        assert!(html.contains("registry_refused"));
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn csrf_token_is_required_on_forms() {
    let env = Env::start(None).await;
    let rp = Rp::demo(&env).await;
    let browser = Browser::new();
    let auth = rp.authorize(PIVOT, &[]);
    let (_, _, html) = browser.go(&auth.url, &rp.redirect_uri).await.page();
    let (action, _) = form(&html);
    for fields in [
        vec![("provider".to_string(), "impots".to_string())],
        vec![
            ("provider".into(), "impots".into()),
            ("csrf".into(), "forged".into()),
        ],
    ] {
        let (_, html) = browser
            .post(&action, &fields, &rp.redirect_uri)
            .await
            .expect_status(403);
        assert!(html.contains("csrf"));
    }
    // Another browser cannot use this interaction either.
    let (_, csrf) = form(&html);
    Browser::new()
        .post(
            &action,
            &[csrf, vec![("provider".into(), "impots".into())]].concat(),
            &rp.redirect_uri,
        )
        .await
        .expect_status(400);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_id_changes_after_the_upstream_callback() {
    let env = Env::start(None).await;
    let rp = Rp::demo(&env).await;
    let browser = Browser::new();
    let auth = rp.authorize(PIVOT, &[("idp_hint", "impots")]);
    let first = browser.http.get(&auth.url).send().await.unwrap();
    let cookie_before = first.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let loc = first.headers()["location"].to_str().unwrap().to_string();
    let (url, _, html) = browser.go(&loc, &rp.redirect_uri).await.page();
    let (action, mut f) = form(&html);
    f.extend([
        ("login".into(), "angela".into()),
        ("password".into(), "123".into()),
        ("action".into(), "login".into()),
    ]);
    let action = reqwest::Url::parse(&url)
        .unwrap()
        .join(&action)
        .unwrap()
        .to_string();
    let resp = browser.http.post(&action).form(&f).send().await.unwrap();
    let callback = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = browser.http.get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let cookie_after = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie_before.starts_with("relais_citizen="));
    assert!(cookie_after.starts_with("relais_citizen="));
    assert_ne!(cookie_before, cookie_after, "session id regenerated");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn security_headers_on_pages() {
    let env = Env::start(None).await;
    let rp = Rp::demo(&env).await;
    let auth = rp.authorize(PIVOT, &[]);
    let browser = Browser::new();
    let resp = browser.http.get(&auth.url).send().await.unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = browser.http.get(&loc).send().await.unwrap();
    let h = resp.headers();
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    let ready = reqwest::get(format!("{}/readyz", env.broker()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    env.cleanup().await;
}

/// The consent POST takes the interaction in one statement, but only for the
/// browser it belongs to: another browser, a forged CSRF token or a missing
/// consent tick remove nothing, and the real browser then completes.
#[tokio::test(flavor = "multi_thread")]
async fn consent_post_consumes_only_for_its_browser() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();
        let auth = rp.authorize(PIVOT, &[]);
        // Drive the sign-in up to the consent page.
        let mut step = browser.go(&auth.url, &rp.redirect_uri).await;
        let (consent_url, html) = loop {
            let (url, status, html) = step.page();
            assert_eq!(status, 200, "{url}:\n{html}");
            if html.contains("name=\"decision\"") {
                break (url, html);
            }
            step = choose_or_login(
                &browser,
                &url,
                &html,
                ("impots", "angela"),
                &rp.redirect_uri,
            )
            .await;
        };
        let (action, fields) = form(&html);
        let action = reqwest::Url::parse(&consent_url)
            .unwrap()
            .join(&action)
            .unwrap()
            .to_string();
        let mut accept = fields.clone();
        accept.push(("decision".into(), "accept".into()));
        if html.contains("name=\"consent\"") {
            // A private service: without the tick, back to the page.
            let step = browser.post(&action, &accept, &rp.redirect_uri).await;
            let (_, again) = step.ok();
            assert!(again.contains("name=\"decision\""));
            accept.push(("consent".into(), "yes".into()));
        }
        // Another browser, with the right CSRF token: refused, nothing taken.
        Browser::new()
            .post(&action, &accept, &rp.redirect_uri)
            .await
            .expect_status(400);
        // This browser with a forged token: 403, nothing taken.
        let forged: Vec<(String, String)> = accept
            .iter()
            .map(|(k, v)| {
                if k == "csrf" {
                    (k.clone(), "forged".to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        let (_, status, page) = browser
            .post(&action, &forged, &rp.redirect_uri)
            .await
            .page();
        assert_eq!(status, 403, "{page}");
        // The real request still completes, once.
        let arrived = browser
            .post(&action, &accept, &rp.redirect_uri)
            .await
            .arrived();
        let code = rp.code_from(&arrived, &auth);
        rp.exchange(&code, &auth).await.unwrap();
        let (_, status, _) = browser
            .post(&action, &accept, &rp.redirect_uri)
            .await
            .page();
        assert_eq!(status, 400, "single use");
        env.cleanup().await;
    }
}
