//! Connection limits (security issue 9, defect 14): hyper's header read
//! timeout, the idle timeout and the connection cap, on the broker and on
//! the demo servers. These tests do not touch storage beyond starting the
//! stack, so they run on SQLite only.

use relais_testkit::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn host(url: &str) -> String {
    url.strip_prefix("http://").unwrap().to_string()
}

async fn limited_env(overrides: &[(&str, &str)]) -> Env {
    let overrides = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Env::start_with(None, String::new(), overrides, false).await
}

/// Read until the server closes the connection (EOF or reset), at most
/// `limit`; returns what was read and when it closed, `None` if it did not.
async fn wait_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A half-sent request line, then nothing.
async fn slow_connection(addr: &str) -> (TcpStream, Instant) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /.well-known/openid-conf").await.unwrap();
    (s, Instant::now())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_connections_time_out_and_do_not_starve_a_normal_request() {
    let env = limited_env(&[
        ("RELAIS__SERVER__HEADER_READ_TIMEOUT_SECS", "1"),
        ("RELAIS__SERVER__MAX_CONNECTIONS", "5000"),
    ])
    .await;
    let broker = host(env.broker());
    let discovery = format!("{}/.well-known/openid-configuration", env.broker());
    // Warm up (the discovery document is serialised once per key set).
    let http = reqwest::Client::new();
    assert_eq!(http.get(&discovery).send().await.unwrap().status(), 200);

    let mut slow = Vec::new();
    for _ in 0..2000 {
        slow.push(slow_connection(&broker).await);
    }
    // The demo servers have the same header read timeout.
    for url in [&env.stack.urls.idp1, &env.stack.urls.service] {
        for _ in 0..20 {
            slow.push(slow_connection(&host(url)).await);
        }
    }

    // A normal request, on a new connection, while 2,040 slow ones are open.
    let fresh = reqwest::Client::new();
    let t = Instant::now();
    let resp = fresh.get(&discovery).send().await.unwrap();
    let status = resp.status();
    let _ = resp.bytes().await.unwrap();
    let took = t.elapsed();
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(100),
        "normal request took {took:?} with 2,000 slow connections open"
    );

    // Every slow connection is closed by the server after ~1 s.
    let waits = slow.into_iter().map(|(mut s, opened)| {
        tokio::spawn(async move {
            let (_, closed) = wait_closed(&mut s, Duration::from_secs(5)).await;
            closed.map(|c| c - opened)
        })
    });
    let mut after = Vec::new();
    for w in waits {
        after.push(w.await.unwrap().expect("a slow connection was left open"));
    }
    let (min, max) = (after.iter().min().unwrap(), after.iter().max().unwrap());
    assert!(
        *min >= Duration::from_millis(900),
        "closed too early: {min:?}"
    );
    assert!(
        *max <= Duration::from_millis(2500),
        "closed too late: {max:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_and_stalled_bodies_are_closed() {
    // A long header read timeout, so that only the idle timeout can close.
    let env = limited_env(&[
        ("RELAIS__SERVER__HEADER_READ_TIMEOUT_SECS", "30"),
        ("RELAIS__SERVER__IDLE_TIMEOUT_SECS", "1"),
    ])
    .await;
    let broker = host(env.broker());

    // Idle keep-alive: one complete request and response, then silence.
    let mut ka = TcpStream::connect(&broker).await.unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nhost: relais\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let n = ka.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"));
    let idle_from = Instant::now();

    // A request body announced and never sent in full.
    let mut body = TcpStream::connect(&broker).await.unwrap();
    body.write_all(
        b"POST /token HTTP/1.1\r\nhost: relais\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\ngrant_type=",
    )
    .await
    .unwrap();
    let stalled_from = Instant::now();

    // The same on a demo provider.
    let mut idp = TcpStream::connect(host(&env.stack.urls.idp1))
        .await
        .unwrap();
    idp.write_all(b"GET /.well-known/openid-configuration HTTP/1.1\r\nhost: idp\r\n\r\n")
        .await
        .unwrap();
    let n = idp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idp_from = Instant::now();

    for (name, s, from) in [
        ("keep-alive", &mut ka, idle_from),
        ("stalled body", &mut body, stalled_from),
        ("demo provider keep-alive", &mut idp, idp_from),
    ] {
        let (_, closed) = wait_closed(s, Duration::from_secs(5)).await;
        let after = closed.unwrap_or_else(|| panic!("{name}: left open")) - from;
        assert!(
            after >= Duration::from_millis(800) && after <= Duration::from_millis(2500),
            "{name}: closed after {after:?}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_refused_at_once() {
    let env = limited_env(&[
        ("RELAIS__SERVER__HEADER_READ_TIMEOUT_SECS", "1"),
        ("RELAIS__SERVER__MAX_CONNECTIONS", "20"),
    ])
    .await;
    let broker = host(env.broker());
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(slow_connection(&broker).await);
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The 21st: a 503 and the connection closed, without waiting.
    let t = Instant::now();
    let mut extra = TcpStream::connect(&broker).await.unwrap();
    let (got, closed) = wait_closed(&mut extra, Duration::from_secs(5)).await;
    let closed = closed.expect("a connection past the cap was kept open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        closed - t < Duration::from_millis(100),
        "refusal took {:?}",
        closed - t
    );

    // Once the slow ones timed out, the server answers again.
    for (mut s, _) in slow {
        let (_, closed) = wait_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a slow connection was left open");
    }
    let resp = reqwest::get(format!("{}/.well-known/openid-configuration", env.broker()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    env.cleanup().await;
}
