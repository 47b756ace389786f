//! The demo provider's userinfo endpoint.

use super::*;

impl DemoIdp {
    pub(super) fn userinfo(&self, method: &Method, headers: &HeaderMap, body: &[u8]) -> Response {
        let bearer_error = |status: StatusCode, error: Option<(&str, &str)>| {
            let mut challenge = format!("Bearer realm=\"{}\"", self.issuer());
            if let Some((e, d)) = error {
                let _ = write!(challenge, ", error=\"{e}\", error_description=\"{d}\"");
            }
            let body = match error {
                Some((e, d)) => json!({"error": e, "error_description": d}),
                None => json!({"error": "invalid_token", "error_description": "no access token"}),
            };
            let mut resp = json_no_store(status, body);
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            resp
        };
        let from_header = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v.to_str().unwrap_or("");
                match v.split_once(' ') {
                    Some((s, t)) if s.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                        Some(t.trim().to_string())
                    }
                    _ => {
                        return bearer_error(
                            StatusCode::UNAUTHORIZED,
                            Some(("invalid_token", "malformed Authorization header")),
                        )
                    }
                }
            }
        };
        let from_body = if method == Method::POST {
            match form_params(headers, body) {
                Ok(p) => p.get("access_token").cloned(),
                Err(_) => {
                    return bearer_error(
                        StatusCode::BAD_REQUEST,
                        Some(("invalid_request", "malformed form body")),
                    );
                }
            }
        } else {
            None
        };
        let token = match (from_header, from_body) {
            (Some(_), Some(_)) => {
                return bearer_error(
                    StatusCode::BAD_REQUEST,
                    Some(("invalid_request", "more than one access token")),
                )
            }
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return bearer_error(StatusCode::UNAUTHORIZED, None),
        };
        let now = now();
        let grant = self
            .store()
            .tokens
            .get(&token)
            .filter(|g| g.expires > now)
            .cloned();
        let Some(grant) = grant else {
            return bearer_error(
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", "the access token is invalid or expired")),
            );
        };
        let mut claims = self.person_claims(&grant.login, &grant.scopes);
        apply_claim_faults(&mut claims, &self.faults());
        json_no_store(StatusCode::OK, Value::Object(claims))
    }

    // -- /session/end --------------------------------------------------------
}
