//! The demo provider's authorization endpoint and login form.

use super::*;

impl DemoIdp {
    pub(super) fn login_page(
        &self,
        status: StatusCode,
        request_id: &str,
        req: &AuthzRequest,
        login_value: &str,
        error: Option<&str>,
    ) -> Response {
        let mut c = String::new();
        let _ = writeln!(
            c,
            "<p>Le service <strong>{}</strong> demande votre identité{}. (The service <strong>{}</strong> asks for your identity.)</p>",
            esc(&req.client_id),
            req.acr
                .as_deref()
                .map(|a| format!(" (niveau / level {})", esc(a)))
                .unwrap_or_default(),
            esc(&req.client_id),
        );
        if let Some(e) = error {
            let _ = writeln!(
                c,
                "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
                esc(e)
            );
        }
        let described = if error.is_some() {
            " aria-describedby=\"login-error\" aria-invalid=\"true\""
        } else {
            ""
        };
        let _ = write!(
            c,
            r#"<form method="post" action="{action}">
<input type="hidden" name="request_id" value="{rid}">
<label for="login">Identifiant (login)</label>
<input type="text" id="login" name="login" value="{login}" autocomplete="username" autocapitalize="none" spellcheck="false" required{described}>
<label for="password">Mot de passe (password)</label>
<input type="password" id="password" name="password" autocomplete="current-password" required{described}>
<div>
<button type="submit" name="action" value="login">Se connecter (Sign in)</button>
<button type="submit" name="action" value="cancel" formnovalidate>Annuler (Cancel)</button>
</div>
</form>
"#,
            action = esc(&format!("{}/login", self.inner.base_path)),
            rid = esc(request_id),
            login = esc(login_value),
            described = described,
        );
        c.push_str(
            "<h2>Comptes de démonstration (demo accounts)</h2>\n<table>\n<caption>Identifiants et mots de passe de test (test logins and passwords)</caption>\n<thead><tr><th scope=\"col\">Identifiant (login)</th><th scope=\"col\">Mot de passe (password)</th><th scope=\"col\">Nom (name)</th></tr></thead>\n<tbody>\n",
        );
        for p in &self.config().people {
            let name = format!(
                "{} {}",
                p.claims
                    .get("given_name")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                p.claims
                    .get("family_name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            let _ = writeln!(
                c,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.login),
                esc(&p.password),
                esc(name.trim())
            );
        }
        c.push_str("</tbody>\n</table>\n");
        html(status, page("Connexion (sign in)", &self.config().name, &c))
    }

    // -- /authorize ----------------------------------------------------------

    pub(super) fn authorize(
        &self,
        headers: &HeaderMap,
        params: Result<HashMap<String, String>, String>,
    ) -> Response {
        let bad = |detail: &str| {
            self.error_page(
                StatusCode::BAD_REQUEST,
                "Requête invalide (invalid request)",
                detail,
            )
        };
        let p = match params {
            Ok(p) => p,
            Err(e) => return bad(&e),
        };
        let Some(client_id) = p.get("client_id") else {
            return bad("client_id manquant (missing client_id)");
        };
        let Some(client) = self.client(client_id) else {
            return bad("client inconnu (unknown client_id)");
        };
        let Some(redirect_uri) = p.get("redirect_uri") else {
            return bad("redirect_uri manquant (missing redirect_uri)");
        };
        if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
            return bad("redirect_uri non enregistrée pour ce client (redirect_uri is not registered for this client)");
        }
        // From here on the redirect URI is trusted: errors go back to the client.
        let state = p.get("state").map(String::as_str);
        let back = |error: &str, description: &str| {
            self.error_redirect(redirect_uri, error, description, state)
        };
        if let Some(e) = self.faults().authorize_error {
            return back(&e, "error injected by the demo IdP");
        }
        if p.contains_key("request") {
            return back(
                "request_not_supported",
                "the request parameter is not supported",
            );
        }
        if p.contains_key("request_uri") {
            return back(
                "request_uri_not_supported",
                "the request_uri parameter is not supported",
            );
        }
        match p.get("response_type").map(String::as_str) {
            None => return back("invalid_request", "response_type is required"),
            Some("code") => {}
            Some(_) => {
                return back(
                    "unsupported_response_type",
                    "only response_type=code is supported",
                )
            }
        }
        if p.get("response_mode").is_some_and(|m| m != "query") {
            return back("invalid_request", "only response_mode=query is supported");
        }
        let requested: Vec<&str> = p
            .get("scope")
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        if !requested.contains(&"openid") {
            return back("invalid_scope", "the openid scope is required");
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in requested {
            if SUPPORTED_SCOPES.contains(&s) && !scopes.iter().any(|x| x == s) {
                scopes.push(s.to_string());
            }
        }
        let Some(state) = state else {
            return back("invalid_request", "state is required");
        };
        let Some(nonce) = p.get("nonce") else {
            return back("invalid_request", "nonce is required");
        };
        let code_challenge = match (
            p.get("code_challenge"),
            p.get("code_challenge_method").map(String::as_str),
        ) {
            (None, None) => None,
            (None, Some(_)) => {
                return back(
                    "invalid_request",
                    "code_challenge_method without code_challenge",
                )
            }
            (Some(c), Some("S256")) => {
                if c.len() != 43 || !pkce_chars(c) {
                    return back("invalid_request", "malformed S256 code_challenge");
                }
                Some(c.clone())
            }
            (Some(_), _) => {
                return back(
                    "invalid_request",
                    "transform algorithm not supported: use code_challenge_method=S256",
                )
            }
        };
        let prompts: Vec<&str> = p
            .get("prompt")
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        let prompt_none = prompts.contains(&"none");
        if prompt_none && prompts.len() > 1 {
            return back("invalid_request", "prompt=none cannot be combined");
        }
        let prompt_login = prompts.contains(&"login");
        let max_age = match p.get("max_age").map(|m| m.parse::<u64>()) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(_)) => return back("invalid_request", "max_age must be a number"),
        };
        let req = AuthzRequest {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            state: state.to_string(),
            nonce: nonce.clone(),
            scopes,
            code_challenge,
            acr: self.choose_acr(p.get("acr_values").map(String::as_str)),
            login_hint: p.get("login_hint").cloned(),
        };

        // Single sign-on with the IdP session.
        if let Some((sid, session)) = self.live_session(headers) {
            // max_age=0 asks for a fresh sign-in, like prompt=login.
            let fresh =
                max_age.is_none_or(|m| m > 0 && now().saturating_sub(session.auth_time) <= m);
            let same_person = req.login_hint.as_ref().is_none_or(|h| *h == session.login);
            if !prompt_login && fresh && same_person {
                return self.code_redirect(req, &session.login, session.auth_time, &sid);
            }
        }
        if prompt_none {
            return back("login_required", "the user is not signed in at the IdP");
        }
        if self.config().auto_login {
            if let Some(person) = req.login_hint.as_deref().and_then(|h| self.person(h)) {
                let login = person.login.clone();
                let (sid, auth_time) = self.new_session(headers, &login);
                let resp = self.code_redirect(req, &login, auth_time, &sid);
                return with_cookie(resp, &self.cookie(&sid, SESSION_TTL));
            }
        }
        let request_id = random_token(24);
        let login_value = req.login_hint.clone().unwrap_or_default();
        self.store().pending.insert(
            request_id.clone(),
            Pending {
                req: req.clone(),
                expires: now() + PENDING_TTL,
            },
        );
        self.login_page(StatusCode::OK, &request_id, &req, &login_value, None)
    }

    // -- /login --------------------------------------------------------------

    pub(super) fn login(
        &self,
        headers: &HeaderMap,
        params: Result<HashMap<String, String>, String>,
    ) -> Response {
        let bad = |detail: &str| {
            self.error_page(
                StatusCode::BAD_REQUEST,
                "Requête invalide (invalid request)",
                detail,
            )
        };
        let p = match params {
            Ok(p) => p,
            Err(e) => return bad(&e),
        };
        let Some(request_id) = p.get("request_id") else {
            return bad("request_id manquant (missing request_id)");
        };
        let now = now();
        let pending = self
            .store()
            .pending
            .get(request_id)
            .filter(|x| x.expires > now)
            .cloned();
        let Some(pending) = pending else {
            return bad("demande inconnue ou expirée (unknown or expired request)");
        };
        let req = pending.req;
        if p.get("action").is_some_and(|a| a == "cancel") {
            self.store().pending.remove(request_id);
            return self.error_redirect(
                &req.redirect_uri,
                "access_denied",
                "the user cancelled the sign-in",
                Some(&req.state),
            );
        }
        let login = p.get("login").map(String::as_str).unwrap_or("");
        let password = p.get("password").map(String::as_str).unwrap_or("");
        let person = self
            .config()
            .people
            .iter()
            .find(|x| x.login == login && secret_eq(&x.password, password));
        let Some(person) = person else {
            return self.login_page(
                StatusCode::UNAUTHORIZED,
                request_id,
                &req,
                login,
                Some("Identifiant ou mot de passe incorrect. (Wrong login or password.)"),
            );
        };
        if self.store().pending.remove(request_id).is_none() {
            return bad("demande déjà utilisée (request already used)");
        }
        let login = person.login.clone();
        let (sid, auth_time) = self.new_session(headers, &login);
        let resp = self.code_redirect(req, &login, auth_time, &sid);
        with_cookie(resp, &self.cookie(&sid, SESSION_TTL))
    }

    // -- /token --------------------------------------------------------------
}
