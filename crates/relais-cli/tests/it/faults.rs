//! Real faults under load (issue 3, "Several nodes"):
//!
//! - `kill_9_a_node_under_load`: three Relais nodes on one PostgreSQL, two of
//!   them separate `relais serve` processes; sign-ins run on all three, every
//!   hop on the next node, and one process gets SIGKILL in the middle. The
//!   other nodes keep serving, no completed sign-in is lost, and requests in
//!   flight either complete on another node or fail with a clean error.
//! - `postgresql_restarted_under_load`: a private PostgreSQL server (its own
//!   data folder and port, so the shared test database is not disturbed) is
//!   stopped and started again while sign-ins run: 503 /
//!   `temporarily_unavailable` fast while it is down, recovery without
//!   restarting Relais, nothing written twice.
//!
//! Both need PostgreSQL (`RELAIS_TEST_DATABASE_URL`); the restart test also
//! needs the PostgreSQL server binaries (`/usr/lib/postgresql/*/bin`).

use relais_testkit::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENT: &str = "demo-service";
const SECRET: &str = "demo-service-secret-change-me";

/// What became of one sign-in.
#[derive(Debug)]
enum Outcome {
    /// Token issued and userinfo answered: the access token.
    Completed(String),
    /// Failed with an error the protocol names (4xx error page or OAuth JSON
    /// error, or 503 `temporarily_unavailable` when allowed).
    Clean(String),
    /// Anything else: a 5xx, a malformed answer, no node reachable.
    Bad(String),
}

/// The nodes a load balancer would spread requests over.
struct Nodes {
    urls: Vec<String>,
    /// Node 1's address: the issuer, used in every redirect.
    issuer: String,
    next: AtomicUsize,
    allow_503: bool,
    /// The demo service's redirect URI.
    redirect: String,
}

impl Nodes {
    /// `url` (an address of the broker) sent to node `i`.
    fn on(&self, i: usize, url: &str) -> String {
        let rest = url.strip_prefix(&self.issuer).unwrap_or(url);
        format!("{}{}", self.urls[i % self.urls.len()], rest)
    }

    /// Send a request to the next node; on a connection failure (the node is
    /// dead, or died while answering), try the following nodes, as a load
    /// balancer does. Returns (status, location, body).
    async fn send(
        &self,
        what: &str,
        make: impl Fn(usize) -> reqwest::RequestBuilder,
    ) -> Result<(u16, Option<String>, String), Outcome> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..self.urls.len() {
            match make(first + k).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let location = r
                        .headers()
                        .get("location")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match r.text().await {
                        Ok(body) => return Ok((status, location, body)),
                        Err(e) => last = format!("{what}: body: {e}"),
                    }
                }
                Err(e) => last = format!("{what}: {e}"),
            }
        }
        Err(Outcome::Bad(format!("no node answered: {last}")))
    }

    /// Classify a non-success answer.
    fn failure(&self, what: &str, status: u16, body: &str) -> Outcome {
        let short: String = body.chars().take(300).collect();
        let json_error = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        match status {
            503 if self.allow_503 && json_error.as_deref() == Some("temporarily_unavailable") => {
                Outcome::Clean(format!("{what}: 503 temporarily_unavailable"))
            }
            503 if self.allow_503 && body.contains("<html") => {
                Outcome::Clean(format!("{what}: 503 error page"))
            }
            // A callback retried after the dead node had already redeemed the
            // upstream's code: the upstream refuses it, Relais shows its
            // error page (code `upstream_error`, a link back to the service).
            502 if what == "callback" && body.contains("<code>upstream_error</code>") => {
                Outcome::Clean(format!("{what}: 502 upstream_error"))
            }
            400..=499 if json_error.is_some() || body.contains("<html") => Outcome::Clean(format!(
                "{what}: {status} {}",
                json_error.unwrap_or_default()
            )),
            _ => Outcome::Bad(format!("{what}: {status}: {short}")),
        }
    }
}

fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string())
}

/// One complete sign-in of `login` (the demo provider signs in from
/// `login_hint`), each Relais hop on the next node.
async fn signin(nodes: &Nodes, login: &str) -> Outcome {
    match signin_inner(nodes, login).await {
        Ok(at) => Outcome::Completed(at),
        Err(o) => o,
    }
}

async fn signin_inner(nodes: &Nodes, login: &str) -> Result<String, Outcome> {
    let b = Browser::new();
    let state = random(16);
    let nonce = random(24);
    let verifier = format!("{}{}", random(30), random(30));
    let challenge = relais::crypto::sha256_b64(verifier.as_bytes());
    let authorize = reqwest::Url::parse_with_params(
        &format!("{}/authorize", nodes.issuer),
        &[
            ("response_type", "code"),
            ("client_id", CLIENT),
            ("redirect_uri", nodes.redirect.as_str()),
            ("scope", "openid identite_pivot"),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("idp_hint", "impots"),
            ("login_hint", login),
        ],
    )
    .map_err(|e| Outcome::Bad(e.to_string()))?
    .to_string();
    let expect_redirect = |what: &str, (status, location, body): (u16, Option<String>, String)| {
        if (300..400).contains(&status) {
            location.ok_or_else(|| Outcome::Bad(format!("{what}: redirect without location")))
        } else {
            Err(nodes.failure(what, status, &body))
        }
    };
    let r = nodes
        .send("authorize", |i| b.http.get(nodes.on(i, &authorize)))
        .await?;
    let upstream = expect_redirect("authorize", r)?;
    // The upstream provider (not a Relais node) signs in from login_hint.
    let r = b
        .http
        .get(&upstream)
        .send()
        .await
        .map_err(|e| Outcome::Bad(format!("upstream: {e}")))?;
    let callback = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| Outcome::Bad(format!("upstream: {}", r.status())))?;
    let r = nodes
        .send("callback", |i| b.http.get(nodes.on(i, &callback)))
        .await?;
    let consent = expect_redirect("callback", r)?;
    let (status, _, html) = nodes
        .send("consent page", |i| b.http.get(nodes.on(i, &consent)))
        .await?;
    if status != 200 {
        return Err(nodes.failure("consent page", status, &html));
    }
    // The page's own hidden fields (its CSRF token), then the answer.
    let (_, mut fields) = form(&html);
    fields.push(("decision".into(), "accept".into()));
    if html.contains("name=\"consent\"") {
        fields.push(("consent".into(), "yes".into()));
    }
    let r = nodes
        .send("consent", |i| {
            b.http.post(nodes.on(i, &consent)).form(&fields)
        })
        .await?;
    let back = expect_redirect("consent", r)?;
    if query_param(&back, "state").as_deref() != Some(state.as_str()) {
        return Err(Outcome::Bad(format!("state lost: {back}")));
    }
    let Some(code) = query_param(&back, "code") else {
        return Err(Outcome::Clean(format!("consent: error redirect {back}")));
    };
    let (status, _, body) = nodes
        .send("token", |i| {
            reqwest::Client::new()
                .post(nodes.on(i, &format!("{}/token", nodes.issuer)))
                .basic_auth(CLIENT, Some(SECRET))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", nodes.redirect.as_str()),
                    ("code_verifier", verifier.as_str()),
                ])
        })
        .await?;
    if status != 200 {
        return Err(nodes.failure("token", status, &body));
    }
    let at = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["access_token"].as_str().map(str::to_string))
        .ok_or_else(|| Outcome::Bad(format!("token: {body}")))?;
    let (status, _, body) = nodes
        .send("userinfo", |i| {
            reqwest::Client::new()
                .get(nodes.on(i, &format!("{}/userinfo", nodes.issuer)))
                .bearer_auth(&at)
        })
        .await?;
    if status != 200 {
        return Err(nodes.failure("userinfo", status, &body));
    }
    Ok(at)
}

/// Results of a load run, with the time each sign-in ended.
#[derive(Default)]
struct Tally {
    completed: Vec<(Instant, String)>,
    clean: Vec<String>,
    bad: Vec<String>,
}

/// `users` simulated browsers signing in until `stop`.
fn load(
    nodes: Arc<Nodes>,
    users: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    let logins = ["angela", "paul", "eric"];
    (0..users)
        .map(|u| {
            let (nodes, stop) = (nodes.clone(), stop.clone());
            tokio::spawn(async move {
                let mut t = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    match signin(&nodes, logins[u % logins.len()]).await {
                        Outcome::Completed(at) => t.completed.push((Instant::now(), at)),
                        Outcome::Clean(e) => t.clean.push(e),
                        Outcome::Bad(e) => t.bad.push(e),
                    }
                }
                t
            })
        })
        .collect()
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        all.completed.extend(t.completed);
        all.clean.extend(t.clean);
        all.bad.extend(t.bad);
    }
    all
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `relais serve` process; SIGKILLed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_a_node_under_load() {
    let Some(db) = std::env::var("RELAIS_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("note: RELAIS_TEST_DATABASE_URL not set, kill -9 test skipped");
        return;
    };
    let env = Env::start_with(Some(db), String::new(), vec![], true).await;
    // Nodes 2 and 3: separate processes with the very same configuration
    // file (database, keys folder, issuer), each on its own port.
    let cfg = env.stack.data_dir.join("node.toml");
    std::fs::write(&cfg, &env.stack.config_text).unwrap();
    let mut processes = vec![];
    let mut urls = vec![env.broker().to_string()];
    for _ in 2..=3 {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_relais"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RELAIS__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("RELAIS_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        processes.push(Some(Process(child)));
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&url).await;
        urls.push(url);
    }
    let nodes = Arc::new(Nodes {
        urls: urls.clone(),
        issuer: env.broker().to_string(),
        next: AtomicUsize::new(0),
        allow_503: false,
        redirect: format!("{}/callback", env.stack.urls.service),
    });

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(nodes.clone(), 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // kill -9 node 2 in the middle of the run.
    let killed_at = Instant::now();
    let mut node2 = processes[0].take().unwrap();
    node2.0.kill().unwrap(); // SIGKILL
    node2.0.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = gather(tasks).await;

    assert!(
        reqwest::get(format!("{}/healthz", urls[1])).await.is_err(),
        "node 2 is dead"
    );
    assert!(
        tally.bad.is_empty(),
        "never a 5xx or a broken answer: {:?}",
        tally.bad
    );
    let before = tally
        .completed
        .iter()
        .filter(|(t, _)| *t < killed_at)
        .count();
    let after = tally.completed.len() - before;
    assert!(before > 0, "sign-ins completed before the kill");
    assert!(after > 0, "the other nodes keep serving after the kill");
    // In-flight sign-ins may fail once each, cleanly (e.g. a code redeemed by
    // the dead node just before it died: invalid_grant on the retry).
    assert!(
        tally.clean.len() <= 8,
        "only in-flight sign-ins may fail: {:?}",
        tally.clean
    );
    eprintln!(
        "kill -9 under load: {before} sign-ins before, {after} after, {} clean failures: {:?}",
        tally.clean.len(),
        tally.clean
    );
    // No completed sign-in is lost: every access token (also those issued by
    // the dead node) still works on the surviving nodes.
    let http = reqwest::Client::new();
    for (_, at) in &tally.completed {
        for node in [&urls[0], &urls[2]] {
            let r = http
                .get(format!("{node}/userinfo"))
                .bearer_auth(at)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "token lost on {node}");
        }
    }
    drop(processes);
    env.cleanup().await;
}

/// A private PostgreSQL server in a temporary folder.
struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl Postgres {
    fn find_bin() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("pg_ctl").exists() && p.join("initdb").exists())
            .collect();
        dirs.sort();
        dirs.pop()
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres_user {
            // The server refuses to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .cmd(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn init() -> Option<Postgres> {
        let bin = Self::find_bin()?;
        let dir = temp_dir("pg");
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres_user = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres_user {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown of the PostgreSQL data folder");
        }
        let pg = Postgres {
            bin,
            port: free_port(),
            dir,
            as_postgres_user,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.start();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.join("log").display().to_string()
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &self.log(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_restarted_under_load() {
    if std::env::var("RELAIS_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .is_none()
    {
        eprintln!("note: RELAIS_TEST_DATABASE_URL not set, PostgreSQL restart test skipped");
        return;
    }
    let Some(pg) = Postgres::init() else {
        eprintln!("note: no PostgreSQL server binaries, PostgreSQL restart test skipped");
        return;
    };
    let env = Env::start_with(Some(pg.url()), String::new(), vec![], true).await;
    let nodes = Arc::new(Nodes {
        urls: vec![env.broker().to_string()],
        issuer: env.broker().to_string(),
        next: AtomicUsize::new(0),
        allow_503: true,
        redirect: format!("{}/callback", env.stack.urls.service),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(nodes.clone(), 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    pg.stop();
    let down_at = Instant::now();
    // While it is down: 503 temporarily_unavailable, fast (the store's
    // breaker answers at once instead of waiting for the pool's timeout).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = reqwest::Client::new();
    let mut took = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let r = http
            .post(format!("{}/token", env.broker()))
            .basic_auth(CLIENT, Some(SECRET))
            .form(&[("grant_type", "authorization_code"), ("code", "x")])
            .send()
            .await
            .unwrap();
        took.push(t.elapsed());
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 503, "database down: {body}");
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    took.sort();
    assert!(
        took[4] < Duration::from_secs(4),
        "every 503 within the pool timeout: {took:?}"
    );
    assert!(
        took[2] < Duration::from_millis(500),
        "503s are fast: {took:?}"
    );
    let ready = reqwest::get(format!("{}/readyz", env.broker()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pg.start();
    let up_at = Instant::now();
    // Recovers by itself (the pool reconnects), without restarting Relais.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = gather(tasks).await;
    eprintln!(
        "PostgreSQL restart under load: {} completed, {} clean failures, down {:?}, 503 probes {took:?}",
        tally.completed.len(),
        tally.clean.len(),
        up_at - down_at
    );
    assert!(
        tally.bad.is_empty(),
        "no 500 and no broken answer: {:?}",
        tally.bad
    );
    assert!(
        tally.completed.iter().any(|(t, _)| *t < down_at),
        "sign-ins before the outage"
    );
    assert!(
        tally.completed.iter().any(|(t, _)| *t > up_at),
        "sign-ins complete again after the restart"
    );
    assert!(
        tally.clean.iter().any(|e| e.contains("503")),
        "the load saw the outage as 503: {:?}",
        tally.clean
    );
    // Every completed sign-in's token still works.
    for (_, at) in &tally.completed {
        let r = http
            .get(format!("{}/userinfo", env.broker()))
            .bearer_auth(at)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Nothing written twice: one token per grant, one use per code.
    let schema = env.schema.clone().unwrap().1;
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let dup: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT grant_id, COUNT(*) FROM \"{schema}\".tokens GROUP BY grant_id HAVING COUNT(*) > 1"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(dup.is_empty(), "a grant got two tokens: {dup:?}");
    let (tokens,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM \"{schema}\".tokens"))
        .fetch_one(&pool)
        .await
        .unwrap();
    let (used,): (i64,) = sqlx::query_as(&format!(
        "SELECT COUNT(*) FROM \"{schema}\".codes WHERE used <> 0"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        tokens >= tally.completed.len() as i64 && tokens <= used,
        "tokens {tokens}, codes used {used}, completed {}",
        tally.completed.len()
    );
    pool.close().await;
    env.cleanup().await;
    drop(pg);
}
