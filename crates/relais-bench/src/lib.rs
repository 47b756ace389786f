//! `relais bench`: a load tool that starts Relais (as a child process, so its
//! CPU time and memory can be measured), a fast built-in upstream provider and
//! simulated services, then drives complete federated sign-ins over real HTTP
//! on 127.0.0.1 — or hammers one endpoint — and reports throughput, errors and
//! latency percentiles, as text and JSON.

use relais::crypto::{keys, Alg, KeyRing};
use relais_demo::idp::{demo_people, DemoClient, DemoIdp, DemoIdpConfig};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Complete sign-in with `idp_hint` (no choice page).
    Signin,
    /// Complete sign-in through the provider choice page.
    SigninChoice,
    Userinfo,
    /// Sign-ins as in `signin`, but only the token request is counted and
    /// timed (each token request needs a fresh code).
    Token,
    Discovery,
    Jwks,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "signin" => Mode::Signin,
            "signin-choice" => Mode::SigninChoice,
            "userinfo" => Mode::Userinfo,
            "discovery" => Mode::Discovery,
            "jwks" => Mode::Jwks,
            "token" => Mode::Token,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Signin => "signin",
            Mode::SigninChoice => "signin-choice",
            Mode::Userinfo => "userinfo",
            Mode::Token => "token",
            Mode::Discovery => "discovery",
            Mode::Jwks => "jwks",
        }
    }
}

pub struct Options {
    pub database_url: Option<String>,
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub mode: Mode,
    pub output: Option<PathBuf>,
    /// ID token algorithm of the simulated services.
    pub alg: Alg,
    pub max_connections: u32,
    /// The `relais` binary to start (`relais serve`, `relais migrate`).
    pub relais_exe: PathBuf,
}

const CLIENT_ID: &str = "bench-service";
const CLIENT_SECRET: &str = "bench-service-secret";
const REDIRECT: &str = "http://bench.invalid/cb";

#[derive(Default)]
struct Recorder {
    steps: BTreeMap<&'static str, Vec<u32>>,
}

impl Recorder {
    fn add(&mut self, step: &'static str, d: Duration) {
        self.steps
            .entry(step)
            .or_default()
            .push(d.as_micros().min(u32::MAX as u128) as u32);
    }
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn percentiles(mut v: Vec<u32>) -> Percentiles {
    v.sort_unstable();
    let at = |q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    Percentiles {
        count: v.len(),
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub database: String,
    pub concurrency: usize,
    pub duration_s: f64,
    pub completed: u64,
    pub errors: u64,
    pub per_second: f64,
    pub whole: Percentiles,
    pub steps: BTreeMap<String, Percentiles>,
    pub relais_cpu_s: f64,
    pub relais_cpu_per_op_us: f64,
    pub relais_context_switches_per_op: f64,
    pub load_tool_cpu_per_op_us: f64,
    pub relais_peak_rss_mb: f64,
    pub relais_ready_ms: f64,
    pub first_error: Option<String>,
}

/// Relais child process; killed on drop.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    // utime + stime, fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100/s on Linux).
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Context switches (voluntary + involuntary) of every thread of a process:
/// a load-independent count of thread hand-offs.
fn proc_context_switches(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn proc_peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[allow(clippy::too_many_arguments)]
fn config(
    broker: &str,
    idp: &str,
    listen: &str,
    db: &str,
    keys: &Path,
    secret_hash: &str,
    alg: Alg,
    max_conn: u32,
) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
public_url = "{broker}"
database_url = "{db}"
database_max_connections = {max_conn}
keys_dir = "{keys}"
log_format = "text"

[federations.citizen]
issuer = "{broker}"
pairwise_secret = "bench-pairwise-secret-0123456789abcdef0123"

[[federations.citizen.providers]]
id = "fast"
name = "Fast upstream"
issuer = "{idp}"
client_id = "relais"
client_secret = "relais-at-fast"
scopes = ["openid", "identite_pivot", "email"]
acr_values = ["eidas1"]

[[federations.citizen.clients]]
client_id = "{CLIENT_ID}"
name = "Bench service"
client_secret = "{secret_hash}"
redirect_uris = ["{REDIRECT}"]
scopes = ["openid", "identite_pivot", "email"]
id_token_signed_response_alg = "{alg}"
"#,
        keys = keys.display()
    )
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Keep every connection alive between requests, as browsers do
        // (a cap below the concurrency made most requests open a new TCP
        // connection, on both sides of the loopback).
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

fn location(resp: &reqwest::Response) -> Result<String, String> {
    if resp.status().as_u16() != 303 && resp.status().as_u16() != 302 {
        return Err(format!(
            "{}: expected a redirect, got {}",
            resp.url(),
            resp.status()
        ));
    }
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| "redirect without location".to_string())
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let key = format!("name=\"{name}\" value=\"");
    let i = html.find(&key)? + key.len();
    let j = html[i..].find('"')? + i;
    Some(html[i..j].to_string())
}

fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/").replace("&amp;", "&")
}

fn attr_action(html: &str) -> Option<String> {
    let i = html.find("action=\"")? + 8;
    let j = html[i..].find('"')? + i;
    Some(unescape(&html[i..j]))
}

/// One complete federated sign-in; records per-step latencies.
async fn one_signin(
    c: &reqwest::Client,
    broker: &str,
    login: &str,
    choice: bool,
    rec: &mut Recorder,
) -> Result<String, String> {
    // Every sign-in is a new browser: its own cookies.
    let mut jar = Jar::default();
    fn e(s: &'static str) -> impl Fn(reqwest::Error) -> String {
        move |err| format!("{s}: {err}")
    }
    let state = relais::crypto::random_token(12);
    let nonce = relais::crypto::random_token(18);
    let verifier = relais::crypto::random_token(32);
    let challenge = relais::crypto::sha256_b64(verifier.as_bytes());
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("scope", "openid identite_pivot email"),
        ("state", &state),
        ("nonce", &nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("login_hint", login),
    ];
    if !choice {
        params.push(("idp_hint", "fast"));
    }
    let url = relais::error::with_query(&format!("{broker}/authorize"), &params);
    let t = Instant::now();
    let r = jar.send(c.get(&url)).await.map_err(e("authorize"))?;
    rec.add("authorize", t.elapsed());
    let mut next = location(&r)?;
    if choice {
        let t = Instant::now();
        let html = jar
            .send(c.get(&next))
            .await
            .map_err(e("choice"))?
            .text()
            .await
            .map_err(e("choice"))?;
        rec.add("choice_page", t.elapsed());
        let csrf = hidden(&html, "csrf").ok_or("no csrf on choice page")?;
        let action = attr_action(&html).ok_or("no form action")?;
        let t = Instant::now();
        let r = jar
            .send(
                c.post(&action)
                    .form(&[("csrf", csrf.as_str()), ("provider", "fast")]),
            )
            .await
            .map_err(e("choose"))?;
        rec.add("choose", t.elapsed());
        next = location(&r)?;
    }
    // Upstream (auto login with login_hint).
    let t = Instant::now();
    let r = jar.send(c.get(&next)).await.map_err(e("upstream"))?;
    rec.add("upstream_authorize", t.elapsed());
    let callback = location(&r)?;
    let t = Instant::now();
    let r = jar.send(c.get(&callback)).await.map_err(e("callback"))?;
    rec.add("callback", t.elapsed());
    let consent_url = location(&r)?;
    let t = Instant::now();
    let html = jar
        .send(c.get(&consent_url))
        .await
        .map_err(e("consent"))?
        .text()
        .await
        .map_err(e("consent"))?;
    rec.add("consent_page", t.elapsed());
    let csrf = hidden(&html, "csrf").ok_or("no csrf on consent page")?;
    let t = Instant::now();
    let r = jar
        .send(
            c.post(&consent_url)
                .form(&[("csrf", csrf.as_str()), ("decision", "accept")]),
        )
        .await
        .map_err(e("consent post"))?;
    rec.add("consent_submit", t.elapsed());
    if r.status().as_u16() != 303 {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        return Err(format!(
            "consent: {status}: {}",
            body.chars().take(600).collect::<String>()
        ));
    }
    let back = location(&r)?;
    let code = reqwest::Url::parse(&back)
        .map_err(|e| e.to_string())?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .ok_or_else(|| format!("no code in {back}"))?;
    let t = Instant::now();
    let r = c
        .post(format!("{broker}/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .map_err(e("token"))?;
    if !r.status().is_success() {
        return Err(format!("token: {}", r.status()));
    }
    let body: serde_json::Value = r.json().await.map_err(e("token json"))?;
    rec.add("token", t.elapsed());
    let at = body["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_string();
    let t = Instant::now();
    let r = c
        .get(format!("{broker}/userinfo"))
        .bearer_auth(&at)
        .send()
        .await
        .map_err(e("userinfo"))?;
    if !r.status().is_success() {
        return Err(format!("userinfo: {}", r.status()));
    }
    let _ = r.bytes().await.map_err(e("userinfo body"))?;
    rec.add("userinfo", t.elapsed());
    Ok(at)
}

/// Cookies of one simulated browser (names are distinct per server here).
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    async fn send(
        &mut self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let rb = if self.0.is_empty() {
            rb
        } else {
            let h: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rb.header("cookie", h.join("; "))
        };
        let resp = rb.send().await?;
        for v in resp.headers().get_all("set-cookie") {
            let Ok(v) = v.to_str() else { continue };
            let first = v.split(';').next().unwrap_or("");
            if let Some((k, val)) = first.split_once('=') {
                self.0.retain(|(n, _)| n != k);
                if !val.is_empty() && !v.contains("Max-Age=0") {
                    self.0.push((k.to_string(), val.to_string()));
                }
            }
        }
        Ok(resp)
    }
}

async fn wait_ready(url: &str, deadline: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let c = reqwest::Client::new();
    while start.elapsed() < deadline {
        if let Ok(r) = c.get(url).send().await {
            if r.status().is_success() {
                return Ok(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("{url} not ready after {deadline:?}"))
}

pub async fn run(opts: Options) -> Result<Report, String> {
    let dir = std::env::temp_dir().join(format!(
        "relais-bench-{}",
        relais::crypto::random_token(6).replace(['-', '_'], "")
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = run_in(&dir, &opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, opts: &Options) -> Result<Report, String> {
    // Upstream provider, in this process.
    let idp_l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let broker_l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let broker_addr = broker_l.local_addr().map_err(|e| e.to_string())?;
    drop(broker_l);
    let idp_url = format!("http://{}", idp_l.local_addr().map_err(|e| e.to_string())?);
    let broker = format!("http://{broker_addr}");
    let idp_keys = dir.join("idp-keys");
    keys::ensure(&idp_keys, &[Alg::ES256]).map_err(|e| e.to_string())?;
    let ring = Arc::new(KeyRing::open(&idp_keys).map_err(|e| e.to_string())?);
    let people = demo_people(1);
    let logins: Vec<String> = people.iter().map(|p| p.login.clone()).collect();
    let idp = DemoIdp::new(
        DemoIdpConfig {
            issuer: idp_url.clone(),
            name: "Fast upstream".into(),
            people,
            clients: vec![DemoClient {
                client_id: "relais".into(),
                client_secret: "relais-at-fast".into(),
                redirect_uris: vec![format!("{broker}/callback/fast")],
                post_logout_redirect_uris: vec![],
            }],
            acr_values: vec!["eidas1".into()],
            auto_login: true,
            alg: Alg::ES256,
        },
        ring,
    );
    let router = idp.router();
    relais::http::serve::raise_fd_limit();
    relais::http::serve::spawn(idp_l, router, relais::http::serve::Limits::default());

    // Relais, as a child process.
    let db = opts
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("relais.db").display()));
    keys::ensure(
        &dir.join("keys/citizen"),
        &[Alg::RS256, Alg::ES256, Alg::EdDSA],
    )
    .map_err(|e| e.to_string())?;
    let hash = relais::crypto::secrets::hash_secret(CLIENT_SECRET)?;
    let cfg_path = dir.join("relais.toml");
    std::fs::write(
        &cfg_path,
        config(
            &broker,
            &idp_url,
            &broker_addr.to_string(),
            &db,
            &dir.join("keys"),
            &hash,
            opts.alg,
            opts.max_connections,
        ),
    )
    .map_err(|e| e.to_string())?;
    // Migrate first so that start-up time measures serving, not schema creation.
    let exe = &opts.relais_exe;
    let status = std::process::Command::new(exe)
        .args(["migrate", "--config"])
        .arg(&cfg_path)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("relais migrate failed".into());
    }
    let spawned = Instant::now();
    let child = Child(
        std::process::Command::new(exe)
            .args(["serve", "--config"])
            .arg(&cfg_path)
            .env("RELAIS_LOG", "warn")
            .spawn()
            .map_err(|e| format!("cannot start relais: {e}"))?,
    );
    let pid = child.0.id();
    wait_ready(&format!("{broker}/readyz"), Duration::from_secs(20)).await?;
    let ready = spawned.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for vu in 0..opts.concurrency {
        let c = http_client()?;
        let broker = broker.clone();
        let login = logins
            .get(vu % logins.len().max(1))
            .cloned()
            .unwrap_or_default();
        let (stop, measuring, completed, errors, first_error) = (
            stop.clone(),
            measuring.clone(),
            completed.clone(),
            errors.clone(),
            first_error.clone(),
        );
        let mode = opts.mode;
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            let mut whole = Vec::new();
            let mut token = None::<String>;
            while !stop.load(Ordering::Relaxed) {
                let mut local = Recorder::default();
                let t = Instant::now();
                let r = match mode {
                    Mode::Signin | Mode::SigninChoice | Mode::Token => {
                        one_signin(&c, &broker, &login, mode == Mode::SigninChoice, &mut local)
                            .await
                            .map(|_| ())
                    }
                    Mode::Discovery => {
                        hit(
                            &c,
                            &format!("{broker}/.well-known/openid-configuration"),
                            None,
                        )
                        .await
                    }
                    Mode::Jwks => hit(&c, &format!("{broker}/jwks"), None).await,
                    Mode::Userinfo => {
                        if token.is_none() {
                            token = fetch_token(&c, &broker, &login).await.ok();
                        }
                        let r = hit(&c, &format!("{broker}/userinfo"), token.as_deref()).await;
                        if r.is_err() {
                            token = None;
                        }
                        r
                    }
                };
                let mut elapsed = t.elapsed();
                if mode == Mode::Token {
                    // Only the token request counts in this mode.
                    let tok = local.steps.remove("token").unwrap_or_default();
                    elapsed = Duration::from_micros(tok.first().copied().unwrap_or(0) as u64);
                    local.steps.clear();
                    local.steps.insert("token", tok);
                }
                if measuring.load(Ordering::Relaxed) {
                    match r {
                        Ok(()) => {
                            completed.fetch_add(1, Ordering::Relaxed);
                            whole.push(elapsed.as_micros().min(u32::MAX as u128) as u32);
                            for (k, v) in local.steps {
                                rec.steps.entry(k).or_default().extend(v);
                            }
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                }
            }
            (rec, whole)
        }));
    }
    tokio::time::sleep(opts.warmup).await;
    let cpu0 = proc_cpu_seconds(pid);
    let own_cpu0 = proc_cpu_seconds(std::process::id());
    let cs0 = proc_context_switches(pid);
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(opts.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_seconds(pid) - cpu0;
    let own_cpu = proc_cpu_seconds(std::process::id()) - own_cpu0;
    let switches = proc_context_switches(pid).saturating_sub(cs0);
    stop.store(true, Ordering::Relaxed);
    let mut steps: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
    let mut whole = Vec::new();
    for t in tasks {
        if let Ok((rec, w)) = t.await {
            for (k, v) in rec.steps {
                steps.entry(k).or_default().extend(v);
            }
            whole.extend(w);
        }
    }
    let rss = proc_peak_rss_mb(pid);
    drop(child);
    let completed = completed.load(Ordering::Relaxed);
    Ok(Report {
        mode: opts.mode.name().into(),
        database: if db.starts_with("postgres") {
            "postgresql".into()
        } else {
            "sqlite".into()
        },
        concurrency: opts.concurrency,
        duration_s: wall,
        completed,
        errors: errors.load(Ordering::Relaxed),
        per_second: completed as f64 / wall,
        whole: percentiles(whole),
        steps: steps
            .into_iter()
            .map(|(k, v)| (k.to_string(), percentiles(v)))
            .collect(),
        relais_cpu_s: cpu,
        relais_cpu_per_op_us: if completed > 0 {
            cpu * 1e6 / completed as f64
        } else {
            0.0
        },
        relais_context_switches_per_op: if completed > 0 {
            switches as f64 / completed as f64
        } else {
            0.0
        },
        load_tool_cpu_per_op_us: if completed > 0 {
            own_cpu * 1e6 / completed as f64
        } else {
            0.0
        },
        relais_peak_rss_mb: rss,
        relais_ready_ms: ready.as_secs_f64() * 1000.0,
        first_error: first_error.lock().ok().and_then(|f| f.clone()),
    })
}

async fn hit(c: &reqwest::Client, url: &str, bearer: Option<&str>) -> Result<(), String> {
    let mut req = c.get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let ok = r.status().is_success();
    let status = r.status();
    let _ = r.bytes().await.map_err(|e| e.to_string())?;
    if ok {
        Ok(())
    } else {
        Err(format!("{url}: {status}"))
    }
}

async fn fetch_token(c: &reqwest::Client, broker: &str, login: &str) -> Result<String, String> {
    let mut rec = Recorder::default();
    one_signin(c, broker, login, false, &mut rec).await
}

/// Human-readable report.
pub fn print(r: &Report) {
    println!(
        "mode {} on {} — {} virtual users, {:.1} s",
        r.mode, r.database, r.concurrency, r.duration_s
    );
    println!(
        "  completed {}  errors {}  → {:.0} per second",
        r.completed, r.errors, r.per_second
    );
    println!(
        "  whole      p50 {:7.2} ms  p95 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms",
        r.whole.p50_ms, r.whole.p95_ms, r.whole.p99_ms, r.whole.max_ms
    );
    for (k, p) in &r.steps {
        println!(
            "  {k:18} p50 {:7.2} ms  p95 {:7.2} ms  p99 {:7.2} ms  (n={})",
            p.p50_ms, p.p95_ms, p.p99_ms, p.count
        );
    }
    println!(
        "  relais: {:.2} CPU s ({:.0} µs per operation), peak RSS {:.1} MB, ready in {:.0} ms (process start included)",
        r.relais_cpu_s, r.relais_cpu_per_op_us, r.relais_peak_rss_mb, r.relais_ready_ms
    );
    println!(
        "  relais: {:.1} context switches per operation; load tool and upstream provider: {:.0} µs CPU per operation",
        r.relais_context_switches_per_op, r.load_tool_cpu_per_op_us
    );
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
}

pub fn to_json(r: &Report) -> String {
    serde_json::to_string_pretty(&json!(r)).unwrap_or_default()
}

/// The load tool's command line (`relais bench …` and
/// `cargo run --release -p relais-bench -- …` take the same options).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// signin, signin-choice, token, userinfo, discovery or jwks.
    #[arg(long, default_value = "signin")]
    pub mode: String,
    /// PostgreSQL URL; default: a temporary SQLite file.
    #[arg(long)]
    pub database_url: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// ID token algorithm of the simulated services (RS256, ES256, EdDSA).
    #[arg(long, default_value = "ES256")]
    pub alg: String,
    /// Database pool size of the Relais under test.
    #[arg(long, default_value_t = 16)]
    pub max_connections: u32,
    /// Write the report as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The `relais` binary under test; default: `relais` beside this
    /// program (`target/release/relais` after `cargo build --release`).
    #[arg(long)]
    pub relais: Option<PathBuf>,
}

/// The `relais` binary beside the running program, or a clear error.
fn relais_beside_me() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = me.with_file_name(format!("relais{}", std::env::consts::EXE_SUFFIX));
    if exe.is_file() {
        Ok(exe)
    } else {
        Err(format!(
            "no relais binary at {}: build it first (cargo build --release), or pass --relais PATH",
            exe.display()
        ))
    }
}

/// Run the load tool with parsed options: measure, print, and write the
/// JSON report when asked.
pub async fn main_with(args: Args) -> Result<(), String> {
    let mode = Mode::parse(&args.mode).ok_or_else(|| format!("unknown mode {:?}", args.mode))?;
    let alg = Alg::parse(&args.alg).ok_or_else(|| {
        format!(
            "unknown algorithm {:?}: use RS256, ES256 or EdDSA",
            args.alg
        )
    })?;
    let report = run(Options {
        database_url: args.database_url,
        concurrency: args.concurrency.max(1),
        duration: Duration::from_secs(args.duration.max(1)),
        warmup: Duration::from_secs(args.warmup),
        mode,
        output: args.output.clone(),
        alg,
        max_connections: args.max_connections,
        relais_exe: match args.relais {
            Some(p) => p,
            None => relais_beside_me()?,
        },
    })
    .await?;
    print(&report);
    if let Some(path) = args.output {
        std::fs::write(&path, to_json(&report)).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
