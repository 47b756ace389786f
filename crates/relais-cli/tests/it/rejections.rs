//! Requests the extractors cannot read (security issue 9, defect 16): a body
//! that is not UTF-8, a body over the limit, an undecodable path. The back
//! channel answers OAuth JSON `invalid_request`, browser routes the HTML
//! error page with a code, never axum's `text/plain` rejections. No storage
//! is involved (the requests fail before any lookup): SQLite only.

use relais_testkit::*;

const FORM: &str = "application/x-www-form-urlencoded";
const NOT_UTF8: &[u8] = b"grant_type=authorization_code&code=\xff\xfe";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A connection the server closed after an early 413 must not be
        // reused for the next request (a pooled one raced that close).
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn post(url: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(url)
        .header("content-type", FORM)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn assert_oauth_json(resp: reqwest::Response, status: u16) {
    assert_eq!(resp.status().as_u16(), status);
    assert!(
        content_type(&resp).starts_with("application/json"),
        "{}",
        content_type(&resp)
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request", "{v}");
}

async fn assert_error_page(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status().as_u16(), status);
    assert!(
        content_type(&resp).starts_with("text/html"),
        "{}",
        content_type(&resp)
    );
    let html = resp.text().await.unwrap();
    assert!(
        html.contains(code),
        "error code {code} not on the page:\n{html}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_rejections_are_oauth_json() {
    let env = Env::start(None).await;
    let token = format!("{}/token", env.broker());
    assert_oauth_json(post(&token, NOT_UTF8.to_vec()).await, 400).await;
    let big = vec![b'a'; relais::BODY_LIMIT + 1];
    assert_oauth_json(post(&token, big).await, 413).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_rejections_are_the_html_error_page() {
    let env = Env::start(None).await;
    let b = env.broker();
    assert_error_page(
        post(&format!("{b}/authorize"), NOT_UTF8.to_vec()).await,
        400,
        "invalid_request",
    )
    .await;
    assert_error_page(
        post(&format!("{b}/interaction/abc/consent"), NOT_UTF8.to_vec()).await,
        400,
        "invalid_request",
    )
    .await;
    assert_error_page(
        post(
            &format!("{b}/interaction/abc/consent"),
            vec![b'a'; relais::BODY_LIMIT + 1],
        )
        .await,
        413,
        "request_too_large",
    )
    .await;
    let undecodable = client()
        .get(format!("{b}/interaction/%FF"))
        .send()
        .await
        .unwrap();
    assert_error_page(undecodable, 400, "invalid_request").await;
    // In English when the browser asks for it.
    let en = client()
        .get(format!("{b}/interaction/%FF%FE/consent"))
        .header("accept-language", "en")
        .send()
        .await
        .unwrap();
    assert_eq!(en.status(), 400);
    assert!(en
        .text()
        .await
        .unwrap()
        .contains("The request is not valid."));
    // An unknown address is the HTML page too.
    assert_error_page(
        client()
            .get(format!("{b}/nowhere/%FF"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    env.cleanup().await;
}

/// Every route of a federation, with `{}` where a path parameter goes.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/jwks"),
    ("GET", "/authorize"),
    ("POST", "/authorize"),
    ("GET", "/interaction/{}"),
    ("POST", "/interaction/{}/choose"),
    ("POST", "/interaction/{}/email"),
    ("GET", "/interaction/{}/consent"),
    ("POST", "/interaction/{}/consent"),
    ("GET", "/interaction/{}/abort"),
    ("GET", "/interaction/{}/aidant"),
    ("POST", "/interaction/{}/aidant"),
    ("GET", "/interaction/{}/aidant/usagers"),
    ("POST", "/interaction/{}/aidant/usagers"),
    ("GET", "/aidant"),
    ("POST", "/aidant/login"),
    ("GET", "/aidant/enrolment/{}"),
    ("POST", "/aidant/enrolment/{}"),
    ("POST", "/aidant/logout"),
    ("POST", "/aidant/organisation"),
    ("POST", "/aidant/mandats"),
    ("GET", "/aidant/mandats/{}/attestation"),
    ("POST", "/aidant/mandats/{}/revoquer"),
    ("GET", "/aidant/mandats/{}/renouveler"),
    ("POST", "/aidant/mandats/{}/renouveler"),
    ("GET", "/aidant/mandats/{}/revocation"),
    ("GET", "/interaction/{}/mandat"),
    ("POST", "/interaction/{}/mandat"),
    ("GET", "/usager"),
    ("GET", "/interaction/{}/usager"),
    ("POST", "/interaction/{}/usager"),
    ("GET", "/callback"),
    ("POST", "/token"),
    ("GET", "/userinfo"),
    ("POST", "/userinfo"),
    ("GET", "/session/end"),
    ("POST", "/session/end"),
    ("GET", "/logout/callback"),
    ("GET", "/static/relais.css"),
    ("GET", "/static/theme.css"),
];

#[tokio::test(flavor = "multi_thread")]
async fn no_route_answers_a_text_plain_rejection() {
    let env = Env::start(None).await;
    let http = client();
    let mut failures = Vec::new();
    for base in [env.broker().to_string(), format!("{}/agent", env.broker())] {
        for (method, route) in ROUTES {
            // An undecodable path parameter, and a plain one.
            let mut paths = vec![route.replace("{}", "%FF%FE")];
            if route.contains("{}") {
                paths.push(route.replace("{}", "abc"));
            }
            for path in paths {
                let url = format!("{base}{path}");
                let bodies: Vec<Option<Vec<u8>>> = if *method == "POST" {
                    vec![
                        Some(NOT_UTF8.to_vec()),
                        Some(vec![b'a'; relais::BODY_LIMIT + 1]),
                    ]
                } else {
                    vec![None]
                };
                for body in bodies {
                    let size = body.as_ref().map(Vec::len);
                    let req = match body {
                        Some(b) => http.post(&url).header("content-type", FORM).body(b),
                        None => http.get(&url),
                    };
                    let resp = match req.send().await {
                        Ok(r) => r,
                        // An oversized body may be cut by the server's early
                        // 413 (the connection closes before it is all sent).
                        Err(_) if size.is_some_and(|n| n > relais::BODY_LIMIT) => continue,
                        Err(e) => panic!("{method} {url}: {e}"),
                    };
                    let (status, ct) = (resp.status().as_u16(), content_type(&resp));
                    if ct.starts_with("text/plain") || status >= 500 {
                        failures.push(format!("{method} {url} (body {size:?}): {status} {ct}"));
                    }
                    if path.ends_with("/token") && !ct.starts_with("application/json") {
                        failures.push(format!("{method} {url}: {status} {ct}, not JSON"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    env.cleanup().await;
}
