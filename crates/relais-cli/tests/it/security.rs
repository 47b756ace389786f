//! Security review fixes (issue 9): limits that hold under parallel
//! requests, across client addresses and across nodes, and the argon2 gate.

use relais_testkit::*;
use reqwest::StatusCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token request for `svc-b` with `secret`, from `http` (its local
/// address is the client address). With the right secret the client is
/// authenticated and the bogus code gives `invalid_grant` (400).
async fn token_attempt(http: &reqwest::Client, broker: &str, secret: &str) -> StatusCode {
    http.post(format!("{broker}/token"))
        .basic_auth("svc-b", Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "no-such-code"),
            ("redirect_uri", "http://service-b.test/cb"),
        ])
        .send()
        .await
        .unwrap()
        .status()
}

/// An HTTP client whose connections come from `127.0.0.N`.
fn from_address(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, n]))
        .build()
        .unwrap()
}

/// Defect 4: 200 parallel wrong secrets for one client from one address run
/// argon2 at most the per-address limit's number of times (counted by the
/// gate); the rest are refused at once with 429 and `Retry-After`; a
/// correct secret already verified is still accepted during the burst.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_wrong_secrets_run_argon2_at_most_the_limit() {
    for db in databases() {
        let env = Env::start(db).await;
        let broker = env.broker().to_string();
        let gate = env.stack.state.argon2.clone();
        let good = from_address(1);
        assert_eq!(
            token_attempt(&good, &broker, "svc-b-secret").await,
            400,
            "authenticated: invalid_grant"
        );
        let before = gate.runs();
        let attacker = from_address(3);
        let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = vec![];
        for _ in 0..200 {
            let (http, broker, statuses) = (attacker.clone(), broker.clone(), statuses.clone());
            tasks.push(tokio::spawn(async move {
                let s = token_attempt(&http, &broker, "wrong").await;
                statuses.lock().unwrap().push(s);
            }));
        }
        // The real service keeps working during the burst (cached secret).
        for _ in 0..5 {
            assert_eq!(token_attempt(&good, &broker, "svc-b-secret").await, 400);
        }
        for t in tasks {
            t.await.unwrap();
        }
        let statuses = statuses.lock().unwrap().clone();
        let unauthorized = statuses.iter().filter(|s| **s == 401).count();
        let throttled = statuses.iter().filter(|s| **s == 429).count();
        let runs = gate.runs() - before;
        assert_eq!(unauthorized + throttled, 200, "{statuses:?}");
        assert!(
            unauthorized <= 20,
            "at most the limit verified: {unauthorized}"
        );
        assert!(runs <= 20, "argon2 runs during the burst: {runs}");
        assert_eq!(runs as usize, unauthorized, "one run per refused secret");
        let r = attacker
            .post(format!("{broker}/token"))
            .basic_auth("svc-b", Some("wrong"))
            .form(&[("grant_type", "authorization_code"), ("code", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        assert!(r.headers().get("retry-after").is_some());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
        eprintln!("burst: {unauthorized} × 401 (argon2 runs {runs}), {throttled} × 429");
        env.cleanup().await;
    }
}

/// Defect 13: wrong secrets sent under a service's `client_id` from one
/// address do not lock the service out: its own requests (another address,
/// secret not yet cached on this node) verify and pass, and a secret that
/// verifies is never refused.
#[tokio::test]
async fn token_lockout_does_not_lock_out_the_real_client() {
    for db in databases() {
        let env = Env::start(db).await;
        let broker = env.broker().to_string();
        let attacker = from_address(4);
        let mut seen = vec![];
        for _ in 0..25 {
            seen.push(token_attempt(&attacker, &broker, "wrong").await.as_u16());
        }
        assert_eq!(seen[..20], [401; 20], "{seen:?}");
        assert_eq!(seen[20..], [429; 5], "{seen:?}");
        // The service, from its own address, secret not cached yet.
        let service = from_address(5);
        assert_eq!(token_attempt(&service, &broker, "svc-b-secret").await, 400);
        // Cached now: even from the throttled address, the right secret works.
        assert_eq!(token_attempt(&attacker, &broker, "svc-b-secret").await, 400);
        env.cleanup().await;
    }
}

/// The per-client ceiling: once many addresses have failed for a client,
/// an address that already failed is refused even under its own limit,
/// while an address with no failure is still verified.
#[tokio::test]
async fn per_client_ceiling_spares_addresses_that_never_failed() {
    for db in databases() {
        let env = Env::start(db).await;
        let broker = env.broker().to_string();
        // 10 addresses × 20 failures = the ceiling of 200.
        for n in 10..20 {
            let http = from_address(n);
            for _ in 0..20 {
                assert_eq!(token_attempt(&http, &broker, "wrong").await, 401);
            }
        }
        let http = from_address(20);
        assert_eq!(
            token_attempt(&http, &broker, "wrong").await,
            401,
            "first try of a new address"
        );
        assert_eq!(
            token_attempt(&http, &broker, "wrong").await,
            429,
            "over the ceiling"
        );
        assert_eq!(
            token_attempt(&from_address(21), &broker, "svc-b-secret").await,
            400
        );
        env.cleanup().await;
    }
}

/// Limits hold across nodes on PostgreSQL: the `/token` per-address limit
/// and the aidant per-address sign-in throttle count the attempts made on
/// either node (and survive a node's restart: they are rows).
#[tokio::test]
async fn failure_limits_count_across_nodes() {
    let Some(db) = std::env::var("RELAIS_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("note: RELAIS_TEST_DATABASE_URL not set, cross-node limits test skipped");
        return;
    };
    let env = Env::start(Some(db)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node2 = relais::server::start(&env.stack.config, listener)
        .await
        .unwrap();
    let nodes = [env.broker().to_string(), format!("http://{}", node2.addr)];
    let attacker = from_address(6);
    let mut seen = vec![];
    for i in 0..24 {
        seen.push(
            token_attempt(&attacker, &nodes[i % 2], "wrong")
                .await
                .as_u16(),
        );
    }
    assert_eq!(seen.iter().filter(|s| **s == 401).count(), 20, "{seen:?}");
    assert_eq!(seen[20..], [429; 4], "{seen:?}");

    // Aidant sign-ins from one address, alternating nodes: 20 failures in
    // all, then 429 on both.
    let mut statuses = vec![];
    for i in 0..24 {
        let b = Browser::new();
        let node = &nodes[i % 2];
        let email = format!("nobody{i}@example.test");
        let (target, fields) = aidant_form(&b, node, &email, "wrong password", "123456").await;
        let (_, status, _) = b.post(&target, &fields, "/never").await.page();
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(statuses[20..], [429; 4], "{statuses:?}");
    node2.task.abort();
    env.cleanup().await;
}

/// The aidant sign-in form of `node`, opened in `b` (its CSRF cookie set)
/// and filled: the target URL and the fields to POST.
async fn aidant_form(
    b: &Browser,
    node: &str,
    email: &str,
    password: &str,
    code: &str,
) -> (String, Vec<(String, String)>) {
    let (url, _, html) = b.go(&format!("{node}/aidant"), "/never").await.page();
    let (action, mut fields) = form(&html);
    fields.push(("email".into(), email.into()));
    fields.push(("password".into(), password.into()));
    fields.push(("totp".into(), code.into()));
    (absolute_on(node, &url, &action), fields)
}

/// The demo aidant signs in on `b` with a fresh code (the clock moves one
/// step first): the status and page of the answer.
async fn demo_aidant_sign_in(env: &Env, b: &Browser) -> (u16, String) {
    use relais_demo::aidants::*;
    env.stack.state.clock.advance(30);
    let code = relais::aidants::totp::code_at(DEMO_AIDANT_TOTP, env.stack.state.now()).unwrap();
    let (target, fields) = aidant_form(
        b,
        env.broker(),
        DEMO_AIDANT_EMAIL,
        DEMO_AIDANT_PASSWORD,
        &code,
    )
    .await;
    let (_, status, html) = b.post(&target, &fields, "/never").await.page();
    (status, html)
}

/// `action` of a page at `page_url`, made absolute and sent to `node`.
fn absolute_on(node: &str, page_url: &str, action: &str) -> String {
    let full = reqwest::Url::parse(page_url).unwrap().join(action).unwrap();
    let node = reqwest::Url::parse(node).unwrap();
    let mut u = full;
    u.set_port(node.port()).unwrap();
    u.to_string()
}

/// Defect 17 (last item): parallel sign-ins of one aidant with the same
/// password and code: one wins, the others are refused without counting as
/// failures, so the account is not locked (it is after 5 real failures).
#[tokio::test(flavor = "multi_thread")]
async fn parallel_sign_ins_with_one_code_do_not_lock_the_aidant() {
    use relais_demo::aidants::*;
    for db in databases() {
        let env = Env::start_with(db, String::new(), vec![], false).await;
        seed(&env.stack).await.unwrap();
        let broker = env.broker().to_string();
        for round in 0..2 {
            env.stack.state.clock.advance(30);
            let code =
                relais::aidants::totp::code_at(DEMO_AIDANT_TOTP, env.stack.state.now()).unwrap();
            // Each browser gets its login form (and CSRF cookie) first.
            let mut ready = vec![];
            for _ in 0..6 {
                let b = Browser::new();
                let (target, fields) =
                    aidant_form(&b, &broker, DEMO_AIDANT_EMAIL, DEMO_AIDANT_PASSWORD, &code).await;
                ready.push((b, target, fields));
            }
            let wins = Arc::new(AtomicUsize::new(0));
            let mut tasks = vec![];
            for (b, target, fields) in ready {
                let wins = wins.clone();
                tasks.push(tokio::spawn(async move {
                    let (_, status, html) = b.post(&target, &fields, "/never").await.page();
                    if status == 200 && html.contains("mandate-draft") {
                        wins.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(status, 401, "{html}");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(wins.load(Ordering::Relaxed), 1, "round {round}: one winner");
        }
        // 10 losers in all, more than the lock threshold: not locked.
        let browser = Browser::new();
        let (status, html) = demo_aidant_sign_in(&env, &browser).await;
        assert_eq!(status, 200, "not locked: {html}");
        assert!(html.contains("mandate-draft"), "{html}");
        env.cleanup().await;
    }
}

/// A `relais serve` process with the stack's configuration file (same
/// database, keys and issuer) on its own port, with extra environment
/// variables; its standard output piped when `capture`.
async fn serve_process(
    env: &Env,
    vars: &[(&str, &str)],
    capture: bool,
) -> (std::process::Child, String) {
    let cfg = env.stack.data_dir.join("node.toml");
    std::fs::write(&cfg, &env.stack.config_text).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_relais"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env("RELAIS__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("RELAIS_LOG", if capture { "info" } else { "error" })
        .stdout(if capture {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let node = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{node}/readyz"))
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "node never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, node)
}

/// Defect 8: values an attacker chooses (the `error` of an upstream
/// callback, parameter names, `claims` keys, error descriptions) are logged
/// escaped: a newline in them never starts a new log line (text format).
#[tokio::test(flavor = "multi_thread")]
async fn attacker_values_never_forge_log_lines() {
    use std::io::Read;
    let env = Env::start(None).await;
    let (mut child, node) = serve_process(&env, &[], true).await;
    // Cookies kept (the callback is bound to the browser), no redirects.
    let http = Browser::new().http;
    let rp = Rp::demo(&env).await;
    let on_node = |url: &str| url.replace(env.broker(), &node);
    // A sign-in at the upstream: its callback then gets an error with a
    // newline (and a forged log line after it).
    let auth = rp.authorize(&["openid"], &[("idp_hint", "impots")]);
    let r = http.get(on_node(&auth.url)).send().await.unwrap();
    let upstream = r.headers()["location"].to_str().unwrap().to_string();
    let q: std::collections::HashMap<String, String> = reqwest::Url::parse(&upstream)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let mut callback = reqwest::Url::parse(&on_node(&q["redirect_uri"])).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("state", &q["state"])
        .append_pair("iss", upstream.split("/authorize").next().unwrap())
        .append_pair("error", "access_denied\nINJECTED-1 ERROR forged line");
    let callback = callback.to_string().replace("%5Cn", "%0A");
    let _ = http.get(&callback).send().await.unwrap();
    // Another sign-in's state delivered on a provider path with a newline
    // (the mix-up refusal logs the path's provider).
    let auth = rp.authorize(&["openid"], &[("idp_hint", "impots")]);
    let r = http.get(on_node(&auth.url)).send().await.unwrap();
    let upstream = r.headers()["location"].to_str().unwrap().to_string();
    let q2: std::collections::HashMap<String, String> = reqwest::Url::parse(&upstream)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let _ = http
        .get(format!(
            "{node}/callback/x%0AINJECTED-7?state={}&code=c",
            url::form_urlencoded::byte_serialize(q2["state"].as_bytes()).collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    // A parameter name and a claims key with newlines; an invalid scope
    // whose description names the input.
    let hostile = [
        format!(
            "{}&x%0AINJECTED-2=1&x%0AINJECTED-2=2",
            on_node(&rp.authorize(&["openid"], &[]).url)
        ),
        on_node(
            &rp.authorize(
                &["openid"],
                &[(
                    "claims",
                    "{\"id_token\":{\"a\\nINJECTED-3\":{\"essential\":true}}}",
                )],
            )
            .url,
        ),
        on_node(
            &rp.authorize(&["openid"], &[("acr_values", "eidas1\nINJECTED-4 forged")])
                .url,
        ),
        on_node(&rp.authorize(&["openid", "x\nINJECTED-5"], &[]).url),
    ];
    for url in &hostile {
        let _ = http.get(url).send().await.unwrap();
    }
    let _ = http
        .post(format!("{node}/token"))
        .form(&[("grant_type", "x\nINJECTED-6"), ("client_id", "public-app")])
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    let forged: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("INJECTED"))
        .collect();
    assert!(forged.is_empty(), "forged log lines: {forged:?}\n{out}");
    for logged in ["INJECTED-1", "INJECTED-7"] {
        assert!(
            out.lines().any(|l| l.contains(logged)),
            "{logged} was logged (escaped):\n{out}"
        );
    }
    env.cleanup().await;
}

/// Peak resident memory of a process (kB), from /proc.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Defect 5: 300 parallel aidant sign-ins (unknown e-mails, each an argon2
/// run) from 300 client addresses against a `relais serve` process: every
/// run goes through the one argon2 gate (the queue past its capacity is
/// refused at once with 503), peak memory stays under 150 MB, and a normal
/// `/authorize` keeps answering fast meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn argon2_burst_is_bounded() {
    let env = Env::start(None).await;
    let (mut child, node) = serve_process(
        &env,
        &[("RELAIS__SERVER__TRUST_FORWARDED_HEADERS", "true")],
        false,
    )
    .await;
    // 300 browsers with their login form, each from its own address.
    let mut ready = vec![];
    for i in 0..300u32 {
        let b = Browser::new();
        let email = format!("nobody{i}@example.test");
        let (target, fields) = aidant_form(&b, &node, &email, "wrong password", "123456").await;
        let ip = format!("198.51.{}.{}", i / 250, i % 250 + 1);
        ready.push((b, target, fields, ip));
    }
    let before = peak_rss_kb(child.id());
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = vec![];
    for (b, target, fields, ip) in ready {
        let statuses = statuses.clone();
        tasks.push(tokio::spawn(async move {
            let r = b
                .http
                .post(&target)
                .header("x-forwarded-for", ip)
                .form(&fields)
                .send()
                .await
                .unwrap();
            statuses.lock().unwrap().push(r.status().as_u16());
        }));
    }
    // Meanwhile, a normal /authorize (a service's user arriving).
    let rp = Rp::demo(&env).await;
    let mut times = vec![];
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let auth = rp.authorize(&["openid"], &[]);
        let url = auth.url.replace(env.broker(), &node);
        let t = Instant::now();
        let r = http.get(&url).send().await.unwrap();
        times.push(t.elapsed());
        assert_eq!(r.status(), 303, "authorize answered");
    }
    for t in tasks {
        t.await.unwrap();
    }
    let peak = peak_rss_kb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let statuses = statuses.lock().unwrap().clone();
    let refused = statuses.iter().filter(|s| **s == 401).count();
    let busy = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(refused + busy, 300, "only 401 or 503: {statuses:?}");
    assert!(refused > 0, "some were checked");
    times.sort();
    eprintln!(
        "argon2 burst: {refused} × 401, {busy} × 503, peak RSS {} MB (before {} MB), authorize {:?}",
        peak / 1024,
        before / 1024,
        times
    );
    assert!(peak < 150 * 1024, "peak RSS {} kB", peak);
    assert!(
        times[times.len() / 2] < Duration::from_millis(100),
        "authorize during the burst: {times:?}"
    );
    env.cleanup().await;
}

/// A `/token` request of the demo service for `code` with these fields
/// (besides grant_type and code), authenticated with HTTP Basic.
async fn redeem_with(
    env: &Env,
    rp: &Rp,
    code: &str,
    fields: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut form = vec![("grant_type", "authorization_code"), ("code", code)];
    form.extend_from_slice(fields);
    let r = rp
        .http
        .post(format!("{}/token", env.broker()))
        .basic_auth("demo-service", Some("demo-service-secret-change-me"))
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Defect 17: a redemption refused for a mistake of the request (a wrong
/// `redirect_uri`, a wrong `code_verifier`, another client) does not use the
/// code up: the correct request that follows gets its tokens, and is not
/// taken for a replay. A real replay still revokes.
#[tokio::test]
async fn refused_redemption_does_not_use_the_code_up() {
    for db in databases() {
        let env = Env::start(db).await;
        let rp = Rp::demo(&env).await;
        let browser = Browser::new();
        let auth = rp.authorize(&["openid", "profile"], &[]);
        let arrived = sign_in(&browser, &auth.url, &rp.redirect_uri, "impots", "angela").await;
        let code = rp.code_from(&arrived, &auth);
        let (status, body) = redeem_with(
            &env,
            &rp,
            &code,
            &[
                ("redirect_uri", "http://elsewhere.test/cb"),
                ("code_verifier", &auth.verifier),
            ],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
        let wrong_verifier = "x".repeat(50);
        let (status, body) = redeem_with(
            &env,
            &rp,
            &code,
            &[
                ("redirect_uri", &rp.redirect_uri),
                ("code_verifier", &wrong_verifier),
            ],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
        // Another (authenticated) client presenting the code.
        let r = rp
            .http
            .post(format!("{}/token", env.broker()))
            .basic_auth("svc-b", Some("svc-b-secret"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", rp.redirect_uri.as_str()),
                ("code_verifier", auth.verifier.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // The legitimate request: tokens, verified by the openidconnect crate.
        let tokens = rp
            .exchange(&code, &auth)
            .await
            .expect("tokens after refused attempts");
        assert_eq!(rp.userinfo(&tokens.access_token).await.status(), 200);
        // A replay of the redeemed code revokes what it gave.
        let (status, _) = redeem_with(
            &env,
            &rp,
            &code,
            &[
                ("redirect_uri", &rp.redirect_uri),
                ("code_verifier", &auth.verifier),
            ],
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(rp.userinfo(&tokens.access_token).await.status(), 401);
        env.cleanup().await;
    }
}

/// Defect 17: one client authentication method per request (RFC 6749
/// §2.3): HTTP Basic together with `client_secret` (or a client assertion)
/// in the body is refused with `invalid_request`, even when both are right.
/// The `Bearer` and `Basic` schemes are case-insensitive (RFC 7235 §2.1).
#[tokio::test]
async fn one_authentication_method_and_case_insensitive_schemes() {
    let env = Env::start(None).await;
    let http = reqwest::Client::new();
    let token = format!("{}/token", env.broker());
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "no-such-code"),
        ("redirect_uri", "http://service-b.test/cb"),
        ("client_secret", "svc-b-secret"),
    ];
    let r = http
        .post(&token)
        .basic_auth("svc-b", Some("svc-b-secret"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let r = http
        .post(&token)
        .basic_auth("svc-b", Some("svc-b-secret"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "x"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", "a.b.c"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // `BASIC` in capitals: authenticated (then the bogus code: invalid_grant).
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("svc-b:svc-b-secret");
    let r = http
        .post(&token)
        .header("authorization", format!("BASIC {basic}"))
        .form(&form[..3])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    // `bEaReR` at userinfo, with a real access token.
    let rp = Rp::demo(&env).await;
    let browser = Browser::new();
    let auth = rp.authorize(&["openid", "profile"], &[]);
    let arrived = sign_in(&browser, &auth.url, &rp.redirect_uri, "impots", "angela").await;
    let tokens = rp
        .exchange(&rp.code_from(&arrived, &auth), &auth)
        .await
        .unwrap();
    for scheme in ["bEaReR", "BEARER", "Bearer"] {
        let r = http
            .get(format!("{}/userinfo", env.broker()))
            .header("authorization", format!("{scheme} {}", tokens.access_token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    env.cleanup().await;
}

/// Defect 12: the consent form POSTed for an interaction of Relais' own
/// sign-in (`/usager`, no service) gets the HTML "sign-in expired" page,
/// never a 500, and the interaction is left as it was.
#[tokio::test]
async fn consent_post_for_an_own_sign_in_is_not_a_500() {
    for db in databases() {
        let env = Env::start(db).await;
        let broker = env.broker().to_string();
        let browser = Browser::new();
        let (url, html) = browser.go(&format!("{broker}/usager"), "/never").await.ok();
        assert!(url.contains("/interaction/"), "{url}");
        let (_, fields) = form(&html);
        let csrf = fields.iter().find(|(k, _)| k == "csrf").unwrap().1.clone();
        let id = url
            .split("/interaction/")
            .nth(1)
            .unwrap()
            .split(['/', '?'])
            .next()
            .unwrap();
        for decision in ["accept", "deny"] {
            let post = vec![
                ("csrf".to_string(), csrf.clone()),
                ("decision".to_string(), decision.to_string()),
            ];
            let (_, status, html) = browser
                .post(
                    &format!("{broker}/interaction/{id}/consent"),
                    &post,
                    "/never",
                )
                .await
                .page();
            assert_eq!(status, 400, "{decision}: {html}");
            assert!(html.contains("interaction_expired"), "{html}");
        }
        // The interaction still works: the choice page answers.
        browser.go(&url, "/never").await.ok();
        env.cleanup().await;
    }
}

/// Defect 7: a cross-site logout request cannot end a session it does not
/// name (a session row holding only an aidant's sign-in asks for
/// confirmation), and a request that arrives without the session cookie (a
/// cross-site POST) never sets or clears it: `/authorize` and
/// `/session/end` POSTed without it are turned into the same request as a
/// GET, which the browser sends with its cookie.
#[tokio::test]
async fn cross_site_logout_and_cookieless_posts() {
    use relais_demo::aidants::*;
    for db in databases() {
        let env = Env::start_with(db, String::new(), vec![], false).await;
        seed(&env.stack).await.unwrap();
        let broker = env.broker().to_string();
        let rp = Rp::demo(&env).await;
        // An ID token of someone else's sign-in.
        let other = Browser::new();
        let auth = rp.authorize(&["openid", "profile"], &[]);
        let arrived = sign_in(&other, &auth.url, &rp.redirect_uri, "impots", "angela").await;
        let tokens = rp
            .exchange(&rp.code_from(&arrived, &auth), &auth)
            .await
            .unwrap();
        // A browser with only an aidant sign-in.
        let aidant = Browser::new();
        let (status, html) = demo_aidant_sign_in(&env, &aidant).await;
        assert_eq!(status, 200, "{html}");
        let logout = relais::error::with_query(
            &format!("{broker}/session/end"),
            &[("id_token_hint", &tokens.id_token)],
        );
        let (_, html) = aidant.go(&logout, "/never").await.ok();
        assert!(
            html.contains("name=\"decision\""),
            "confirmation asked: {html}"
        );
        let (_, html) = aidant.go(&format!("{broker}/aidant"), "/never").await.ok();
        assert!(html.contains("mandate-draft"), "still signed in: {html}");

        // Cookieless POSTs: a 303 to the same request as a GET, no cookie set
        // or cleared.
        let bare = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let auth = rp.authorize(&["openid"], &[]);
        let query = auth.url.split_once('?').unwrap().1.to_string();
        let r = bare
            .post(format!("{broker}/authorize"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(query.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert!(r.headers().get("set-cookie").is_none());
        let location = r.headers()["location"].to_str().unwrap();
        assert!(
            location.starts_with(&format!("{broker}/authorize?")),
            "{location}"
        );
        let sent: std::collections::BTreeMap<String, String> =
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
        let got: std::collections::BTreeMap<String, String> = reqwest::Url::parse(location)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(sent, got, "the same parameters");
        let r = bare
            .post(format!("{broker}/session/end"))
            .form(&[("id_token_hint", tokens.id_token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert!(r.headers().get("set-cookie").is_none(), "nothing cleared");
        // The other browser's session is intact.
        let auth = rp.authorize(&["openid"], &[("prompt", "none")]);
        assert!(other
            .go(&auth.url, &rp.redirect_uri)
            .await
            .arrived()
            .contains("code="));
        env.cleanup().await;
    }
}

/// Defect 15: parameters that are echoed, forwarded or stored are bounded
/// and refused before anything is written; an over-long `state` is not
/// echoed; an anonymous `/session/end` writes no row (nothing to end: the
/// signed-out page, no confirmation form).
/// Defect 17: HEAD changes nothing (405 outside the public documents).
#[tokio::test]
async fn bounded_parameters_and_harmless_anonymous_requests() {
    let env = Env::start(None).await;
    let broker = env.broker().to_string();
    let rp = Rp::demo(&env).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let long_state = "s".repeat(600);
    let cases: Vec<(&str, String)> = vec![
        ("state", long_state.clone()),
        ("login_hint", format!("{}@example.test", "a".repeat(300))),
        ("nonce", "n".repeat(600)),
        ("ui_locales", "fr ".repeat(40)),
        ("acr_values", "eidas1 ".repeat(60)),
        (
            "claims",
            format!("{{\"id_token\":{{\"{}\":null}}}}", "k".repeat(5000)),
        ),
    ];
    for (name, value) in &cases {
        let auth = rp.authorize(&["openid"], &[]);
        let mut u = reqwest::Url::parse(&auth.url).unwrap();
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .into_owned()
            .filter(|(k, _)| k != name)
            .collect();
        u.query_pairs_mut()
            .clear()
            .extend_pairs(pairs)
            .append_pair(name, value);
        let r = http.get(u.as_str()).send().await.unwrap();
        assert_eq!(r.status(), 303, "{name}");
        assert!(
            r.headers().get("set-cookie").is_none(),
            "{name}: nothing written"
        );
        let location = r.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&rp.redirect_uri), "{name}: {location}");
        assert!(
            location.contains("error=invalid_request"),
            "{name}: {location}"
        );
        assert!(
            location.len() < 1024,
            "{name}: nothing long echoed ({})",
            location.len()
        );
        if *name == "state" {
            assert!(!location.contains(&long_state));
        }
    }
    // Logout: an over-long state is refused, an anonymous request shows the
    // signed-out page (no confirmation form: no row).
    let r = http
        .get(format!("{broker}/session/end?state={}", "x".repeat(600)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{broker}/session/end"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(!html.contains("name=\"decision\""), "{html}");
    // HEAD: public documents yes, anything else 405 and no effect.
    let browser = Browser::new();
    let auth = rp.authorize(&["openid"], &[]);
    let (choice, _) = browser.go(&auth.url, "/never").await.ok();
    for path in ["/.well-known/openid-configuration", "/jwks"] {
        let r = http.head(format!("{broker}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for url in [
        format!("{choice}/abort"),
        format!("{broker}/session/end"),
        format!("{broker}/usager"),
        format!("{broker}/callback/impots"),
        auth.url.clone(),
    ] {
        let r = browser.http.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 405, "{url}");
    }
    // A bounded number of sign-ins started per browser (the first request
    // above had no cookie yet; the choice page GET is not a start).
    let mut last = 0;
    for i in 0..relais::oidc::authorize::MAX_PENDING_PER_BROWSER {
        let r = browser
            .http
            .get(&rp.authorize(&["openid"], &[]).url)
            .send()
            .await
            .unwrap();
        last = r.status().as_u16();
        assert_eq!(last, 303, "start {i}");
    }
    let r = browser
        .http
        .get(&rp.authorize(&["openid"], &[]).url)
        .send()
        .await
        .unwrap();
    assert_eq!((last, r.status().as_u16()), (303, 429), "past the bound");
    // The sign-in was not ended by the HEAD of its abort link.
    let (_, html) = browser.go(&choice, "/never").await.ok();
    assert!(html.contains("name=\"provider\""), "{html}");
    env.cleanup().await;
}
