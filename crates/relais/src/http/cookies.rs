//! Cookies: reading them (a name sent twice counts as absent), the session key stored for a cookie, and `Set-Cookie` values for a federation (`HttpOnly`, `SameSite=Lax`, its path, `Secure` over https).

use crate::app::Ctx;
use crate::app::Federation;
use crate::crypto::sha256_b64;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderValue};
use std::collections::HashMap;

/// The browser's cookies. A name sent twice (a cookie planted with a
/// narrower path or a parent domain beside ours: cookie tossing) counts as
/// absent: neither value is trusted.
pub struct Cookies(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Cookies {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Cookies::parse(
            parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ))
    }
}

impl Cookies {
    /// Parse `Cookie` header values; names present more than once are dropped.
    pub fn parse<'a>(headers: impl Iterator<Item = &'a str>) -> Cookies {
        let mut map = HashMap::new();
        let mut twice = std::collections::HashSet::new();
        for s in headers {
            for pair in s.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if map.insert(k.to_string(), v.to_string()).is_some() {
                        twice.insert(k.to_string());
                    }
                }
            }
        }
        for k in &twice {
            map.remove(k);
        }
        Cookies(map)
    }

    /// The database id of the session named by this federation's cookie.
    pub fn session_id(&self, fed: &Federation) -> Option<String> {
        self.0.get(&fed.cookie_name).map(|v| session_key(v))
    }

    /// Whether the request carried this federation's session cookie.
    pub fn has_session_cookie(&self, fed: &Federation) -> bool {
        self.0.contains_key(&fed.cookie_name)
    }
}

/// Sessions are stored under a hash of the cookie value, so the database
/// never holds a usable cookie.
pub fn session_key(cookie_value: &str) -> String {
    sha256_b64(cookie_value.as_bytes())
}

pub fn set_cookie(ctx: &Ctx, value: &str, max_age: i64) -> HeaderValue {
    cookie_header(ctx, &ctx.fed.cookie_name, value, max_age)
}

/// A `Set-Cookie` value for one of this federation's cookies: `HttpOnly`,
/// `SameSite=Lax`, the federation's cookie path, `Secure` over https.
pub fn cookie_header(ctx: &Ctx, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if ctx.app.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let v = format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        ctx.fed.cookie_path
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

#[cfg(test)]
mod tests {
    use super::Cookies;

    #[test]
    fn a_cookie_name_sent_twice_counts_as_absent() {
        let c =
            Cookies::parse(["a=1; relais_citizen=mine", "relais_citizen=planted; b=2"].into_iter());
        assert!(!c.0.contains_key("relais_citizen"));
        assert_eq!(c.0.get("a").map(String::as_str), Some("1"));
        assert_eq!(c.0.get("b").map(String::as_str), Some("2"));
        let c = Cookies::parse(["relais_citizen=mine"].into_iter());
        assert_eq!(c.0.get("relais_citizen").map(String::as_str), Some("mine"));
    }

    #[test]
    fn cookie_prefixes() {
        use crate::app::{cookie_name, cookie_path};
        assert_eq!(cookie_name("citizen", true), "__Host-relais_citizen");
        assert_eq!(cookie_name("agent", true), "__Host-relais_agent");
        assert_eq!(cookie_path("/agent", true), "/", "__Host- requires Path=/");
        assert_eq!(cookie_name("agent", false), "relais_agent");
        assert_eq!(cookie_path("/agent", false), "/agent");
        assert_eq!(cookie_path("", false), "/");
    }
}
