//! Server-rendered pages: templates (minijinja, compiled into the binary),
//! French by default with English, and static assets.

pub mod i18n;

use minijinja::Environment;
use serde::Serialize;
use std::sync::LazyLock;

pub use i18n::Lang;

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    for (name, src) in [
        ("base.html", include_str!("templates/base.html")),
        ("choose.html", include_str!("templates/choose.html")),
        ("consent.html", include_str!("templates/consent.html")),
        ("error.html", include_str!("templates/error.html")),
        (
            "logout_confirm.html",
            include_str!("templates/logout_confirm.html"),
        ),
        ("message.html", include_str!("templates/message.html")),
        ("email.html", include_str!("templates/email.html")),
        (
            "aidant_login.html",
            include_str!("templates/aidant_login.html"),
        ),
        (
            "aidant_enrolment.html",
            include_str!("templates/aidant_enrolment.html"),
        ),
        (
            "aidant_usagers.html",
            include_str!("templates/aidant_usagers.html"),
        ),
        (
            "aidant_signin.html",
            include_str!("templates/aidant_signin.html"),
        ),
        (
            "aidant_home.html",
            include_str!("templates/aidant_home.html"),
        ),
        (
            "aidant_no_org.html",
            include_str!("templates/aidant_no_org.html"),
        ),
        (
            "aidant_recap.html",
            include_str!("templates/aidant_recap.html"),
        ),
        (
            "aidant_attestation.html",
            include_str!("templates/aidant_attestation.html"),
        ),
        (
            "aidant_revocation.html",
            include_str!("templates/aidant_revocation.html"),
        ),
        (
            "usager_mandates.html",
            include_str!("templates/usager_mandates.html"),
        ),
    ] {
        // Templates are compiled into the binary and covered by tests; a broken
        // one is reported at render time rather than aborting the process.
        if let Err(e) = env.add_template(name, src) {
            tracing::error!(template = name, error = %e, "template does not compile");
        }
    }
    env
});

pub const RELAIS_CSS: &str = include_str!("static/relais.css");

/// Common page context.
#[derive(Debug, Clone, Serialize)]
pub struct PageBase {
    pub lang: &'static str,
    pub fed_name: String,
    pub prefix: String,
    pub logo_url: Option<String>,
}

/// Render `name` with the base context merged with `extra` (a serializable map).
pub fn render(
    name: &str,
    base: &PageBase,
    lang: Lang,
    extra: minijinja::Value,
) -> Result<String, String> {
    let tmpl = ENV.get_template(name).map_err(|e| e.to_string())?;
    let ctx = minijinja::context! {
        ..extra,
        ..minijinja::context! {
            lang => base.lang,
            fed_name => base.fed_name,
            prefix => base.prefix,
            logo_url => base.logo_url,
            t => minijinja::Value::from_serialize(i18n::messages(lang)),
        }
    };
    tmpl.render(ctx).map_err(|e| e.to_string())
}

/// Theme stylesheet for a federation (colours and operator CSS).
pub fn theme_css(primary: Option<&str>, extra: Option<&str>) -> String {
    let mut css = String::new();
    if let Some(p) = primary {
        // Only accept a plain colour token, never arbitrary CSS here.
        if p.chars().all(|c| c.is_ascii_alphanumeric() || c == '#') {
            css.push_str(&format!(":root {{ --primary: {p}; }}\n"));
        }
    }
    if let Some(e) = extra {
        css.push_str(e);
        css.push('\n');
    }
    css
}

/// Minimal HTML escaping for the rare page built without a template.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
