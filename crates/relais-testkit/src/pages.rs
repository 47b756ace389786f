//! The page driver: fill and submit the forms of the pages a [`Browser`]
//! is shown, the way a person would (the form's hidden fields, plus what is
//! typed in), and check the page that comes back.

use crate::{form, Browser, Env, Step};

/// `action` (as written in a page) resolved against the page's URL.
pub fn absolute(base: &str, action: &str) -> String {
    reqwest::Url::parse(base)
        .unwrap()
        .join(action)
        .unwrap()
        .to_string()
}

/// The part of `html` from the `<form` that contains `marker` (e.g.
/// `id="aidant-logout"`) on: [`form`] of it is that form.
pub fn form_with<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in page:\n{html}"));
    let start = html[..at]
        .rfind("<form")
        .unwrap_or_else(|| panic!("{marker} is not inside a form:\n{html}"));
    &html[start..]
}

/// The value of the hidden field `name` of the first form of `html`.
pub fn hidden_field(html: &str, name: &str) -> String {
    form(html)
        .1
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no hidden field {name} in the form:\n{html}"))
}

/// Owned form fields from `(name, value)` pairs.
pub fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Browser {
    /// A browser whose cookie jar the test can read.
    pub fn with_jar() -> (Browser, std::sync::Arc<reqwest::cookie::Jar>) {
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        (Browser { http }, jar)
    }

    /// Submit the first form of the page `html` shown at `url`: its hidden
    /// fields followed by `typed`, posted to its action; redirects are
    /// followed until a page or a URL starting with `stop`.
    pub async fn submit(&self, url: &str, html: &str, typed: &[(&str, &str)], stop: &str) -> Step {
        let (action, mut all) = form(html);
        all.extend(fields(typed));
        self.post(&absolute(url, &action), &all, stop).await
    }

    /// GET `url` and expect a page with status 200: (page URL, html).
    pub async fn page_ok(&self, url: &str, stop: &str) -> (String, String) {
        self.go(url, stop).await.ok()
    }
}

impl Step {
    /// The page shown, which must have status 200: (page URL, html).
    pub fn ok(self) -> (String, String) {
        self.expect_status(200)
    }

    /// The page shown, which must have status `expected`: (page URL, html).
    pub fn expect_status(self, expected: u16) -> (String, String) {
        let (url, status, html) = self.page();
        assert_eq!(status, expected, "{url}:\n{html}");
        (url, html)
    }

    /// The status of the page shown (a redirect out is a failure).
    pub fn status(self) -> u16 {
        self.page().1
    }
}

/// Where the demo service's browser stops: its redirect URI.
pub fn service_callback(env: &Env) -> String {
    format!("{}/callback", env.stack.urls.service)
}

/// One step of a sign-in: on the provider choice page pick `provider`,
/// on any other page fill the demo provider's login form as `login`.
pub async fn choose_or_login(
    browser: &Browser,
    url: &str,
    html: &str,
    (provider, login): (&str, &str),
    stop: &str,
) -> Step {
    if html.contains("name=\"provider\"") {
        browser
            .submit(url, html, &[("provider", provider)], stop)
            .await
    } else {
        let typed = [("login", login), ("password", "123"), ("action", "login")];
        browser.submit(url, html, &typed, stop).await
    }
}
