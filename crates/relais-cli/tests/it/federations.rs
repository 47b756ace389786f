//! Several federations in one process: nothing leaks between them.

use relais_testkit::*;
use serde_json::Value;

/// A second federation at `<broker>/second`, with a client of the same id as
/// the citizen federation's demo service (so ids alone cannot separate them).
fn second() -> String {
    r#"
[federations.second]
issuer = "BROKER/second"
name = "Seconde fédération"
pairwise_secret = "another-pairwise-secret-0123456789abcdef"

[[federations.second.providers]]
id = "ameli"
name = "Ameli (démo)"
issuer = "IDP2"
client_id = "relais"
client_secret = "relais-at-ameli"
auth_method = "client_secret_post"
acr_values = ["eidas1"]

[[federations.second.clients]]
client_id = "demo-service"
name = "Service de la seconde fédération"
client_secret = "demo-service-secret-change-me"
redirect_uris = ["http://second.test/cb"]
post_logout_redirect_uris = ["http://second.test/bye"]
scopes = ["openid", "identite_pivot"]
"#
    .to_string()
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_federations_are_isolated() {
    for db in databases() {
        let env = Env::start_second(db, second()).await;
        let citizen = Rp::demo(&env).await;
        let mut second = Rp::new_at(
            &env,
            &format!("{}/second", env.broker()),
            "demo-service",
            Some("demo-service-secret-change-me"),
            "http://second.test/cb",
        )
        .await;
        second.auth_type = openidconnect::AuthType::BasicAuth;
        // Distinct discovery documents, issuers and keys.
        assert_ne!(
            citizen.meta.issuer().as_str(),
            second.meta.issuer().as_str()
        );
        let kids = |rp: &Rp| -> Vec<String> {
            rp.meta
                .jwks()
                .keys()
                .iter()
                .filter_map(|k| openidconnect::JsonWebKey::key_id(k).map(|i| i.to_string()))
                .collect()
        };
        assert!(
            kids(&citizen).iter().all(|k| !kids(&second).contains(k)),
            "each federation has its own keys"
        );

        let browser = Browser::new();
        let c = full_sign_in(
            &env,
            &citizen,
            &browser,
            "ameli",
            "marie",
            &["openid", "identite_pivot"],
            &[],
        )
        .await;
        assert_eq!(c.claims["iss"], env.broker());
        // The citizen session gives no SSO in the second federation.
        let auth = second.authorize(&["openid"], &[("prompt", "none")]);
        let q = query(&browser.go(&auth.url, &second.redirect_uri).await.arrived());
        assert_eq!(q["error"], "login_required");
        assert_eq!(q["iss"], format!("{}/second", env.broker()));
        // A provider of the citizen federation only is not a valid idp_hint here.
        let auth = second.authorize(&["openid"], &[("idp_hint", "impots")]);
        let q = query(&browser.go(&auth.url, &second.redirect_uri).await.arrived());
        assert_eq!(q["error"], "invalid_request");

        let s = full_sign_in(
            &env,
            &second,
            &browser,
            "ameli",
            "marie",
            &["openid", "identite_pivot"],
            &[],
        )
        .await;
        assert_eq!(s.claims["iss"], format!("{}/second", env.broker()));
        assert_ne!(
            s.claims["sub"], c.claims["sub"],
            "other federation, other secret, other sub"
        );

        // Tokens do not cross: citizen's access token at the second userinfo.
        let resp = second.userinfo(&c.access_token).await;
        assert_eq!(resp.status(), 401);
        assert_eq!(citizen.userinfo(&s.access_token).await.status(), 401);
        assert_eq!(citizen.userinfo(&c.access_token).await.status(), 200);

        // A code of the citizen federation is unknown to the second one.
        let auth = citizen.authorize(&["openid"], &[]);
        let arrived = sign_in(&browser, &auth.url, &citizen.redirect_uri, "ameli", "marie").await;
        let code = citizen.code_from(&arrived, &auth);
        let resp = second
            .http
            .post(format!("{}/second/token", env.broker()))
            .basic_auth("demo-service", Some("demo-service-secret-change-me"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://second.test/cb"),
                ("code_verifier", &auth.verifier),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"],
            "invalid_grant"
        );

        // The citizen ID token is not a valid id_token_hint for the second federation.
        let url = relais::error::with_query(
            &format!("{}/second/session/end", env.broker()),
            &[
                ("id_token_hint", &c.id_token),
                ("post_logout_redirect_uri", "http://second.test/bye"),
            ],
        );
        let (_, html) = browser.go(&url, "http://second.test").await.ok();
        assert!(
            html.contains("name=\"decision\""),
            "hint from another federation is not trusted"
        );

        // Cookies are per federation (name and path).
        let resp = Browser::new()
            .http
            .get(&second.authorize(&["openid"], &[]).url)
            .send()
            .await
            .unwrap();
        let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(
            cookie.starts_with("relais_second=") && cookie.contains("Path=/second"),
            "{cookie}"
        );
        env.cleanup().await;
    }
}
