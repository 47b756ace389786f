//! `relais serve` behaviours: HTTPS with rustls, refusing to start without keys.

use relais_testkit::*;

fn config_text(
    dir: &std::path::Path,
    public: &str,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    let urls = relais_demo::Urls {
        broker: public.into(),
        idp1: "http://127.0.0.1:9".into(),
        idp2: "http://127.0.0.1:9".into(),
        service: "http://127.0.0.1:9".into(),
        idp3: "http://127.0.0.1:9".into(),
        idp4: "http://127.0.0.1:9".into(),
        agent_service: "http://127.0.0.1:9".into(),
    };
    let mut text = relais_demo::demo_config(
        &urls,
        "127.0.0.1:0",
        &format!("sqlite://{}", dir.join("db").display()),
        &dir.join("keys"),
    );
    if let Some((c, k)) = tls {
        text = text.replace(
            "[server]",
            &format!(
                "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
                c.display(),
                k.display()
            ),
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_rustls_and_secure_cookies() {
    let dir = temp_dir("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cp, cert.cert.pem()).unwrap();
    std::fs::write(&kp, cert.key_pair.serialize_pem()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let public = format!("https://localhost:{port}");
    let config = relais::config::Config::from_toml_with_env(
        &config_text(&dir, &public, Some((&cp, &kp))),
        vec![],
    )
    .unwrap();
    for fed in ["citizen", "agent"] {
        relais::crypto::keys::ensure(
            &dir.join("keys").join(fed),
            &[
                relais::crypto::Alg::RS256,
                relais::crypto::Alg::ES256,
                relais::crypto::Alg::EdDSA,
            ],
        )
        .unwrap();
    }
    relais::server::start(&config, listener).await.unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let doc: serde_json::Value = client
        .get(format!("{public}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], public);
    let url = relais::error::with_query(
        &format!("{public}/authorize"),
        &[
            ("client_id", "demo-service"),
            ("redirect_uri", "http://127.0.0.1:9/callback"),
            ("response_type", "code"),
            ("scope", "openid"),
            ("state", "s"),
            ("nonce", "n0123456789012345678901"),
        ],
    );
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // A federation at / over https: the __Host- prefix (a sibling subdomain
    // cannot plant such a cookie), Path=/.
    assert!(cookie.starts_with("__Host-relais_citizen="), "{cookie}");
    assert!(cookie.contains("Path=/;"), "{cookie}");
    let value = cookie.split(';').next().unwrap().to_string();
    // The browser's own cookie is reused (no new one)…
    let resp = client
        .get(&url)
        .header("cookie", &value)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert!(resp.headers().get("set-cookie").is_none());
    // …but the same name twice (one planted beside it) counts as none.
    let tossed = format!("{value}; __Host-relais_citizen=planted");
    let resp = client
        .get(&url)
        .header("cookie", tossed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert!(resp.headers().get("set-cookie").is_some(), "a fresh cookie");
    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_to_start_without_keys() {
    let dir = temp_dir("nokeys");
    std::fs::create_dir_all(&dir).unwrap();
    let config = relais::config::Config::from_toml_with_env(
        &config_text(&dir, "http://127.0.0.1:1", None),
        vec![],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match relais::server::start(&config, listener).await {
        Ok(_) => panic!("must refuse to start"),
        Err(e) => e,
    };
    assert!(
        err.contains("no active RS256 key") && err.contains("relais keys generate"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
