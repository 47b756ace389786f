//! Page steps of the aidants' flows shared by several test files: TOTP
//! codes, the demo provider's login form, the aidant's sign-in form.

use crate::{service_callback, Browser, Env, Step};
use relais_demo::aidants::DEMO_AIDANT_TOTP;

/// A fresh TOTP code for `secret`: the clock moves one step first, so no
/// code is ever reused by accident within a test.
pub fn fresh_code(env: &Env, secret: &str) -> String {
    env.stack.state.clock.advance(30);
    relais::aidants::totp::code_at(secret, env.stack.state.now()).unwrap()
}

/// A fresh code of the demo aidant (the clock moves one step first).
pub fn demo_code(env: &Env) -> String {
    fresh_code(env, DEMO_AIDANT_TOTP)
}

/// Fill the demo provider's login form shown at `url` as `login`.
pub async fn provider_login(
    browser: &Browser,
    url: &str,
    html: &str,
    login: &str,
    stop: &str,
) -> Step {
    assert!(html.contains("name=\"password\""), "{html}");
    let typed = [("login", login), ("password", "123"), ("action", "login")];
    browser.submit(url, html, &typed, stop).await
}

/// Fill the aidant's sign-in form (e-mail, password, TOTP code) shown at
/// `url`.
pub async fn aidant_credentials(
    browser: &Browser,
    url: &str,
    html: &str,
    (email, password, code): (&str, &str, &str),
    stop: &str,
) -> Step {
    let typed = [("email", email), ("password", password), ("totp", code)];
    browser.submit(url, html, &typed, stop).await
}

/// Confirm the mandate recap (creation or renewal) shown at `url`: the
/// "usager informed" box when `informed`, then the TOTP `code`.
pub async fn confirm_recap(
    browser: &Browser,
    url: &str,
    html: &str,
    informed: bool,
    code: &str,
    stop: &str,
) -> Step {
    let mut typed = vec![];
    if informed {
        typed.push(("informed", "yes"));
    }
    typed.push(("totp", code));
    browser.submit(url, html, &typed, stop).await
}

/// Sign in at `/aidant` with e-mail, password and a fresh code of
/// `secret`; the aidant's page must follow: (page URL, html).
pub async fn aidant_home(
    env: &Env,
    browser: &Browser,
    email: &str,
    password: &str,
    secret: &str,
) -> (String, String) {
    let stop = service_callback(env);
    let (url, html) = browser
        .page_ok(&format!("{}/aidant", env.broker()), &stop)
        .await;
    let code = fresh_code(env, secret);
    let (url, html) = aidant_credentials(browser, &url, &html, (email, password, &code), &stop)
        .await
        .ok();
    assert!(html.contains("mandate-draft"), "{html}");
    (url, html)
}

/// [`aidant_home`] as the demo aidant (`relais demo`'s credentials).
pub async fn demo_aidant_home(env: &Env, browser: &Browser) -> (String, String) {
    use relais_demo::aidants::{DEMO_AIDANT_EMAIL, DEMO_AIDANT_PASSWORD};
    aidant_home(
        env,
        browser,
        DEMO_AIDANT_EMAIL,
        DEMO_AIDANT_PASSWORD,
        DEMO_AIDANT_TOTP,
    )
    .await
}
