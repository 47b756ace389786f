//! PostgreSQL going away under Relais: requests fail fast with 503 /
//! `temporarily_unavailable`, and Relais recovers by itself when it is back.
//! The outage is made with a TCP proxy between Relais and PostgreSQL (so the
//! shared test database keeps serving the other tests).

use relais_testkit::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

struct Proxy {
    port: u16,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: Option<tokio::task::JoinHandle<()>>,
    target: String,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let mut p = Proxy {
            port: 0,
            tasks: Arc::new(Mutex::new(vec![])),
            accept: None,
            target: target.into(),
        };
        p.up().await;
        p
    }

    async fn up(&mut self) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = l.local_addr().unwrap().port();
        let (tasks, target) = (self.tasks.clone(), self.target.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let target = target.clone();
                let t = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                tasks.lock().unwrap().push(t);
            }
        }));
    }

    /// Refuse new connections and cut the open ones.
    fn down(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_gives_503_then_recovers() {
    let Some(url) = std::env::var("RELAIS_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("note: RELAIS_TEST_DATABASE_URL not set, outage test skipped");
        return;
    };
    let parsed = reqwest::Url::parse(&url).unwrap();
    let target = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let mut proxy = Proxy::start(&target).await;
    let mut via = parsed.clone();
    via.set_port(Some(proxy.port)).unwrap();
    let env = Env::start(Some(via.to_string())).await;
    let rp = Rp::demo(&env).await;
    let t = full_sign_in(
        &env,
        &rp,
        &Browser::new(),
        "impots",
        "angela",
        &["openid", "identite_pivot"],
        &[],
    )
    .await;
    assert_eq!(rp.userinfo(&t.access_token).await.status(), 200);

    proxy.down();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let resp = rp.userinfo(&t.access_token).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 503, "database down: 503");
    assert!(took < Duration::from_secs(5), "fails fast ({took:?})");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    let ready = reqwest::get(format!("{}/readyz", env.broker()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // Keys and discovery need no database.
    assert_eq!(
        reqwest::get(format!("{}/jwks", env.broker()))
            .await
            .unwrap()
            .status(),
        200
    );

    proxy.up().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = rp.userinfo(&t.access_token).await.status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // New sign-ins work again.
    full_sign_in(
        &env,
        &rp,
        &Browser::new(),
        "impots",
        "angela",
        &["openid"],
        &[],
    )
    .await;
    // Clean up through the real server (the proxy may be gone later).
    proxy.down();
    let mut env = env;
    if let Some((_, s)) = env.schema.take() {
        env.schema = Some((url.clone(), s));
    }
    env.cleanup().await;
}
