//! The demo provider's RP-initiated logout.

use super::*;

impl DemoIdp {
    pub(super) fn end_session(
        &self,
        headers: &HeaderMap,
        params: Result<HashMap<String, String>, String>,
    ) -> Response {
        let p = match params {
            Ok(p) => p,
            Err(e) => {
                return self.error_page(
                    StatusCode::BAD_REQUEST,
                    "Requête invalide (invalid request)",
                    &e,
                )
            }
        };
        // The hint is one of our ID tokens: verify it (expired is fine).
        let keys = self.inner.keys.get();
        let hint = p
            .get("id_token_hint")
            .and_then(|h| keys.verify(h).ok())
            .map(|u| u.claims)
            .filter(|c| c.get("iss").and_then(Value::as_str) == Some(self.issuer()));
        let hint_aud = hint.as_ref().and_then(|c| match c.get("aud") {
            Some(Value::String(a)) => Some(a.clone()),
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(String::from),
            _ => None,
        });
        let hint_invalid = p.contains_key("id_token_hint") && hint.is_none();
        let mut ended = 0;
        {
            let mut store = self.store();
            if let Some(sid) = self.session_id(headers) {
                ended += usize::from(store.sessions.remove(&sid).is_some());
            }
            if let Some(sid) = hint
                .as_ref()
                .and_then(|c| c.get("sid"))
                .and_then(Value::as_str)
            {
                ended += usize::from(store.sessions.remove(sid).is_some());
            }
        }
        let expire = self.cookie("", 0);
        let client_id = match (p.get("client_id"), hint_aud) {
            (Some(c), Some(a)) if *c != a => None,
            (Some(c), _) => Some(c.clone()),
            (None, a) => a,
        };
        let mut note = String::new();
        if let Some(uri) = p.get("post_logout_redirect_uri") {
            let registered = client_id
                .as_deref()
                .and_then(|c| self.client(c))
                .is_some_and(|c| c.post_logout_redirect_uris.iter().any(|u| u == uri));
            if registered && !hint_invalid {
                let mut params = Vec::new();
                if let Some(s) = p.get("state") {
                    params.push(("state", s.as_str()));
                }
                return with_cookie(redirect_with(uri, &params), &expire);
            }
            note = "<p class=\"error\" role=\"alert\">L'adresse de retour n'est pas enregistrée pour ce client : vous restez ici. (The post_logout_redirect_uri is not registered for this client.)</p>\n".into();
        }
        let content = format!(
            "{note}<p>Vous êtes déconnecté de {} ({}). (You are signed out.)</p>",
            esc(&self.config().name),
            if ended > 0 {
                "session terminée / session ended"
            } else {
                "aucune session / no session"
            }
        );
        with_cookie(
            html(
                StatusCode::OK,
                page("Déconnexion (signed out)", &self.config().name, &content),
            ),
            &expire,
        )
    }

    // -- discovery -----------------------------------------------------------
}
