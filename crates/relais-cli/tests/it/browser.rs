//! End-to-end test in a real browser: headless Chromium, driven through
//! chromedriver over the W3C WebDriver HTTP protocol (a minimal client on
//! `reqwest`, below), signs a person in at the demo service through Relais and
//! a demo identity provider, signs out, and starts signing in again.
//!
//! Needs `/usr/bin/chromedriver` and `/usr/bin/chromium` (Debian packages
//! `chromium-driver` and `chromium`); `RELAIS_CHROMEDRIVER` and
//! `RELAIS_CHROMIUM` override those paths. Without them the test is skipped,
//! except when `CI=true`, where it fails.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SKIP_MESSAGE: &str = "SKIPPED: browser test: chromedriver/chromium not installed (apt-get install chromium chromium-driver)";
/// How long to wait for a page element to appear.
const WAIT: Duration = Duration::from_secs(20);
/// W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

#[tokio::test(flavor = "multi_thread")]
async fn browser_sign_in_consent_logout_and_sign_in_again() {
    let Some(tools) = browser_tools() else {
        return;
    };
    let data_dir = TempDir::new("relais-browser-data");
    let stack = relais_demo::Stack::start(data_dir.path(), 0, relais_demo::StackOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start the demo stack: {e}"));
    let service = stack.urls.service.clone();
    let idp1 = stack.urls.idp1.clone();
    let broker = stack.urls.broker.clone();
    let mut b = Browser::start(&tools)
        .await
        .unwrap_or_else(|e| panic!("cannot start the browser: {e}"));

    // The service's home page.
    b.goto(&format!("{service}/")).await;
    b.click("#login").await;

    // Relais' provider choice page.
    b.wait_element("button[value=impots]").await;
    b.expect_url_prefix(&broker, "the provider choice page")
        .await;
    b.click("button[value=impots]").await;

    // The demo identity provider's sign-in form.
    b.wait_element("input[name=password]").await;
    b.expect_url_prefix(&idp1, "the Impôts login form").await;
    b.assert_session(
        stack.idps[0].session_count() == 0,
        "no IdP session before signing in",
    )
    .await;
    b.type_into("input[name=login]", "angela").await;
    b.type_into("input[name=password]", "123").await;
    b.click("button[value=login]").await;

    // Relais' information (consent) page.
    b.wait_element("button[value=accept]").await;
    b.expect_url_prefix(&broker, "the consent page").await;
    let source = b.source().await;
    b.assert_session(
        source.contains("DUBOIS"),
        "the consent page names the person (DUBOIS)",
    )
    .await;
    b.assert_session(
        stack.idps[0].session_count() == 1,
        "one IdP session after signing in",
    )
    .await;
    b.click("button[value=accept]").await;

    // Back at the service, signed in.
    let welcome = b.wait_element("#welcome").await;
    b.expect_url_prefix(&service, "the service after sign-in")
        .await;
    let welcome_text = b.text(&welcome).await;
    b.assert_session(
        welcome_text.contains("Angela"),
        &format!("#welcome greets Angela (got {welcome_text:?})"),
    )
    .await;
    let source = b.source().await;
    b.assert_session(
        source.contains("id=\"welcome\"") && source.contains("Angela"),
        "the page contains id=\"welcome\" and Angela",
    )
    .await;
    let userinfo_el = b.wait_element("#userinfo").await;
    let userinfo_text = b.text(&userinfo_el).await;
    let userinfo: Value = match serde_json::from_str(&userinfo_text) {
        Ok(v) => v,
        Err(e) => panic!(
            "#userinfo is not JSON ({e}): {userinfo_text:?}\n{}",
            b.context().await
        ),
    };
    b.assert_session(
        userinfo.get("family_name") == Some(&json!("DUBOIS")),
        &format!("#userinfo has family_name DUBOIS (got {userinfo})"),
    )
    .await;
    b.assert_session(
        userinfo
            .get("sub")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
        &format!("#userinfo has a sub (got {userinfo})"),
    )
    .await;

    // Sign out: service -> Relais -> upstream provider -> Relais -> service.
    b.click("#logout").await;
    let logged_out = b.wait_element("#logged-out").await;
    b.expect_url_prefix(
        &format!("{service}/logged-out"),
        "the service's logged-out page",
    )
    .await;
    let logged_out_text = b.text(&logged_out).await;
    let source = b.source().await;
    b.assert_session(
        !source.contains("(state inattendu)") && !logged_out_text.contains("state inattendu"),
        "the logout came back with the service's own state",
    )
    .await;
    b.assert_session(
        stack.idps[0].session_count() == 0,
        &format!(
            "logout ended the upstream session (IdP session count {})",
            stack.idps[0].session_count()
        ),
    )
    .await;

    // Sign in again: Relais asks for the provider again and the provider
    // shows its form again (its session ended with the logout).
    b.click("a[href=\"/\"]").await;
    b.click("#login").await;
    b.wait_element("button[value=impots]").await;
    b.expect_url_prefix(&broker, "the provider choice page (second sign-in)")
        .await;
    b.click("button[value=impots]").await;
    b.wait_element("input[name=password]").await;
    b.expect_url_prefix(&idp1, "the Impôts login form (second sign-in)")
        .await;
    let login_forms = b.find_all("form input[name=login]").await.len();
    b.assert_session(login_forms == 1, "the provider shows its login form again")
        .await;
    b.assert_session(stack.idps[0].session_count() == 0, "still no IdP session")
        .await;

    b.quit().await;
}

// ---------------------------------------------------------------------------
// Environment.

struct Tools {
    chromedriver: PathBuf,
    chromium: PathBuf,
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The browser tools, or `None` (skip) when they are missing outside CI.
fn browser_tools() -> Option<Tools> {
    let tools = Tools {
        chromedriver: env_path("RELAIS_CHROMEDRIVER", "/usr/bin/chromedriver"),
        chromium: env_path("RELAIS_CHROMIUM", "/usr/bin/chromium"),
    };
    let missing: Vec<String> = [&tools.chromedriver, &tools.chromium]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(tools);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "browser test: CI=true but chromedriver/chromium not installed (missing: {}); \
             install them with: apt-get install chromium chromium-driver",
            missing.join(", ")
        );
    }
    eprintln!("{SKIP_MESSAGE}");
    eprintln!("(missing: {})", missing.join(", "));
    None
}

/// A fresh directory, removed on drop unless the test failed (then kept
/// for inspection).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("browser test failed: kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// One blocking HTTP/1.1 request to chromedriver (used from `Drop`, where
/// nothing async can run). Errors are ignored: this is best-effort cleanup.
fn blocking_request(port: u16, method: &str, path: &str) {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
    else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_ok() {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
}

// ---------------------------------------------------------------------------
// A minimal W3C WebDriver client.

/// chromedriver (a child process) and one browser session. Dropping it ends
/// the session, stops chromedriver and removes the browser profile, also
/// when the test panics.
struct Browser {
    http: reqwest::Client,
    port: u16,
    child: Child,
    session: Option<String>,
    dir: TempDir,
}

impl Browser {
    async fn start(tools: &Tools) -> Result<Browser, String> {
        let dir = TempDir::new("relais-browser-chromium");
        let profile = dir.path().join("profile");
        let port = free_port();
        // chromedriver's own errors (Chromium's go to its log: --enable-chrome-logs).
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))
            .map_err(|e| format!("cannot create the chromedriver log: {e}"))?;
        let child = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .arg("--enable-chrome-logs")
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", tools.chromedriver.display()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| e.to_string())?;
        let mut b = Browser {
            http,
            port,
            child,
            session: None,
            dir,
        };
        match b.open(tools, &profile).await {
            Ok(()) => Ok(b),
            Err(e) => {
                let mut msg = format!(
                    "{e}\nchromedriver log (end):\n{}",
                    b.log_tail("chromedriver.log", 15)
                );
                let stderr = b.log_tail("stderr.log", 15);
                if !stderr.trim().is_empty() {
                    msg.push_str(&format!("\nchromedriver stderr (end):\n{stderr}"));
                }
                Err(msg)
            }
        }
    }

    /// Wait for chromedriver, then open a browser session.
    async fn open(&mut self, tools: &Tools, profile: &Path) -> Result<(), String> {
        self.wait_ready().await?;
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": tools.chromium.display().to_string(),
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                },
            },
        });
        let v = self
            .send(reqwest::Method::POST, "/session", Some(caps))
            .await?;
        let id = v
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("new session: no sessionId in {v}"))?
            .to_string();
        self.session = Some(id);
        self.session_cmd(
            reqwest::Method::POST,
            "/timeouts",
            Some(json!({"implicit": 0, "pageLoad": 30_000, "script": 10_000})),
        )
        .await?;
        Ok(())
    }

    /// The last lines of chromedriver's log (for failure messages).
    fn log_tail(&self, file: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Wait until chromedriver's `GET /status` says it is ready.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("chromedriver exited early ({status})"));
            }
            match self.send(reqwest::Method::GET, "/status", None).await {
                Ok(v) if v.get("ready") == Some(&Value::Bool(true)) => return Ok(()),
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "chromedriver on port {} not ready after 20 s: {last}",
            self.port
        ))
    }

    /// One WebDriver command; returns the response's `value`, or the
    /// WebDriver error as text.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| format!("{method} {path}: HTTP {status}, not JSON: {e}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if !status.is_success() || value.get("error").is_some() {
            let error = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            let message = value.get("message").and_then(Value::as_str).unwrap_or("");
            // (The stack trace is in another field; the message is short.)
            let message = message.lines().take(6).collect::<Vec<_>>().join("\n");
            return Err(format!(
                "{method} {path}: HTTP {status}: {error}: {message}"
            ));
        }
        Ok(value)
    }

    async fn session_cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let id = self.session.as_deref().ok_or("no browser session")?;
        self.send(method, &format!("/session/{id}{path}"), body)
            .await
    }

    /// Run a command of the scenario; a failure panics with the page context.
    async fn must(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        match self.session_cmd(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e}\n{}", self.context().await),
        }
    }

    async fn goto(&self, url: &str) {
        self.must(
            &format!("navigate to {url}"),
            reqwest::Method::POST,
            "/url",
            Some(json!({ "url": url })),
        )
        .await;
    }

    async fn current_url(&self) -> Result<String, String> {
        let v = self.session_cmd(reqwest::Method::GET, "/url", None).await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("current URL: unexpected {v}"))
    }

    async fn page_source(&self) -> Result<String, String> {
        let v = self
            .session_cmd(reqwest::Method::GET, "/source", None)
            .await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("page source: unexpected {v}"))
    }

    async fn source(&self) -> String {
        match self.page_source().await {
            Ok(s) => s,
            Err(e) => panic!("get page source: {e}\n{}", self.context().await),
        }
    }

    /// Current URL and an excerpt of the page, for failure messages.
    async fn context(&self) -> String {
        let url = self
            .current_url()
            .await
            .unwrap_or_else(|e| format!("(unknown: {e})"));
        let source = self
            .page_source()
            .await
            .unwrap_or_else(|e| format!("(unknown: {e})"));
        // Skip the head (styles), show the page's content.
        let start = ["<main", "<body"]
            .iter()
            .find_map(|m| source.find(m))
            .unwrap_or(0);
        let excerpt: String = source[start..].chars().take(2000).collect();
        format!("  current URL: {url}\n  page source (excerpt):\n{excerpt}")
    }

    /// Panic with the page context unless `ok`.
    async fn assert_session(&self, ok: bool, what: &str) {
        if !ok {
            panic!("assertion failed: {what}\n{}", self.context().await);
        }
    }

    async fn expect_url_prefix(&self, prefix: &str, what: &str) {
        let url = self.current_url().await.unwrap_or_default();
        self.assert_session(
            url.starts_with(prefix),
            &format!("{what} is at {prefix}… (got {url})"),
        )
        .await;
    }

    async fn try_find_all(&self, css: &str) -> Result<Vec<String>, String> {
        let v = self
            .session_cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|e| e.get(ELEMENT_KEY).and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        match self.try_find_all(css).await {
            Ok(v) => v,
            Err(e) => panic!("find {css}: {e}\n{}", self.context().await),
        }
    }

    /// Wait for an element matching `css` (pages load after clicks and
    /// redirects) and return its reference.
    async fn wait_element(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last_error = String::new();
        loop {
            match self.try_find_all(css).await {
                Ok(found) if !found.is_empty() => return found[0].clone(),
                Ok(_) => {}
                // Finding can fail while a navigation is under way.
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                panic!(
                    "no element {css} after {} s{}\n{}",
                    WAIT.as_secs(),
                    if last_error.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {last_error})")
                    },
                    self.context().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let el = self.wait_element(css).await;
        self.must(
            &format!("click {css}"),
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.wait_element(css).await;
        self.must(
            &format!("clear {css}"),
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        )
        .await;
        self.must(
            &format!("type into {css}"),
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn text(&self, el: &str) -> String {
        let v = self
            .must(
                "get element text",
                reqwest::Method::GET,
                &format!("/element/{el}/text"),
                None,
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// End the browser session (chromedriver is stopped on drop).
    async fn quit(&mut self) {
        if let Some(id) = self.session.take() {
            if let Err(e) = self
                .send(reqwest::Method::DELETE, &format!("/session/{id}"), None)
                .await
            {
                panic!("delete session: {e}");
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            blocking_request(self.port, "DELETE", &format!("/session/{id}"));
        }
        // chromedriver's own shutdown command, then the hard way.
        blocking_request(self.port, "GET", "/shutdown");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}
