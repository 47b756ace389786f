//! The demo provider's token endpoint: client authentication, code redemption, ID tokens.

use super::*;

impl DemoIdp {
    pub(super) fn authenticate_client(
        &self,
        headers: &HeaderMap,
        p: &HashMap<String, String>,
    ) -> Result<&DemoClient, TokenError> {
        let basic = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| TokenError::invalid_client("malformed Authorization header"))?;
                let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
                if !scheme.eq_ignore_ascii_case("basic") {
                    return Err(TokenError::invalid_client(
                        "only HTTP Basic client authentication is accepted in the header",
                    ));
                }
                let raw =
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, rest.trim())
                        .map_err(|_| {
                            TokenError::invalid_client("malformed HTTP Basic credentials")
                        })?;
                let raw = String::from_utf8(raw)
                    .map_err(|_| TokenError::invalid_client("malformed HTTP Basic credentials"))?;
                let (id, secret) = raw.split_once(':').ok_or_else(|| {
                    TokenError::invalid_client("malformed HTTP Basic credentials")
                })?;
                Some((form_decode(id), form_decode(secret)))
            }
        };
        let (client_id, secret) = match basic {
            Some((id, secret)) => {
                if p.contains_key("client_secret") {
                    return Err(TokenError::invalid_request(
                        "use only one client authentication method",
                    ));
                }
                if p.get("client_id").is_some_and(|c| *c != id) {
                    return Err(TokenError::invalid_client(
                        "client_id does not match the authenticated client",
                    ));
                }
                (id, secret)
            }
            None => match (p.get("client_id"), p.get("client_secret")) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone()),
                _ => return Err(TokenError::invalid_client("client authentication required")),
            },
        };
        match self.client(&client_id) {
            Some(c) if secret_eq(&c.client_secret, &secret) => Ok(c),
            _ => Err(TokenError::invalid_client("client authentication failed")),
        }
    }

    pub(super) async fn token(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let realm = self.issuer().to_string();
        match self.token_inner(headers, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(&realm),
        }
    }

    pub(super) async fn token_inner(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, TokenError> {
        let faults = self.faults();
        if faults.token_delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(faults.token_delay_ms)).await;
        }
        let p = form_params(headers, body).map_err(TokenError::invalid_request)?;
        let client = self.authenticate_client(headers, &p)?;
        match p.get("grant_type").map(String::as_str) {
            None => return Err(TokenError::invalid_request("grant_type is required")),
            Some("authorization_code") => {}
            Some(_) => {
                return Err(TokenError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only authorization_code is supported",
                ))
            }
        }
        let code = p
            .get("code")
            .ok_or_else(|| TokenError::invalid_request("code is required"))?;
        let redirect_uri = p
            .get("redirect_uri")
            .ok_or_else(|| TokenError::invalid_request("redirect_uri is required"))?;
        let verifier = p.get("code_verifier");
        let now = now();
        let access_token = random_token(32);
        let grant = {
            let mut store = self.store();
            let Some(g) = store.codes.get_mut(code) else {
                return Err(TokenError::invalid_grant("unknown authorization code"));
            };
            if g.expires <= now {
                store.codes.remove(code);
                return Err(TokenError::invalid_grant("authorization code expired"));
            }
            if g.used {
                // RFC 6749 section 4.1.2: revoke what the code gave.
                if let Some(at) = g.access_token.take() {
                    store.tokens.remove(&at);
                }
                return Err(TokenError::invalid_grant("authorization code already used"));
            }
            if g.req.client_id != client.client_id {
                return Err(TokenError::invalid_grant(
                    "authorization code issued to another client",
                ));
            }
            if g.req.redirect_uri != *redirect_uri {
                return Err(TokenError::invalid_grant("redirect_uri does not match"));
            }
            match (&g.req.code_challenge, verifier) {
                (None, None) => {}
                (None, Some(_)) => {
                    return Err(TokenError::invalid_grant(
                        "code_verifier sent but no code_challenge was",
                    ))
                }
                (Some(_), None) => {
                    return Err(TokenError::invalid_grant("code_verifier is required"))
                }
                (Some(challenge), Some(v)) => {
                    if v.len() < 43 || v.len() > 128 || !pkce_chars(v) {
                        return Err(TokenError::invalid_grant("malformed code_verifier"));
                    }
                    if sha256_b64(v.as_bytes()) != *challenge {
                        return Err(TokenError::invalid_grant("PKCE verification failed"));
                    }
                }
            }
            g.used = true;
            g.access_token = Some(access_token.clone());
            let grant = g.clone();
            store.tokens.insert(
                access_token.clone(),
                AccessGrant {
                    login: grant.login.clone(),
                    scopes: grant.req.scopes.clone(),
                    expires: now + ACCESS_TOKEN_TTL,
                },
            );
            grant
        };
        let claims = self.id_token_claims(&grant, &access_token, &faults, now);
        let id_token = self
            .sign_id_token(&Value::Object(claims), &faults)
            .await
            .map_err(TokenError::server_error)?;
        Ok(json_no_store(
            StatusCode::OK,
            json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": ACCESS_TOKEN_TTL,
                "id_token": id_token,
                "scope": grant.req.scopes.join(" "),
            }),
        ))
    }

    /// `sub` and the person's claims allowed by `scopes` (before faults).
    pub(super) fn person_claims(&self, login: &str, scopes: &[String]) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("sub".into(), Value::String(self.subject(login)));
        if let Some(person) = self.person(login) {
            for name in claims_for_scopes(scopes) {
                if let Some(v) = person.claims.get(name) {
                    out.insert(name.to_string(), v.clone());
                }
            }
        }
        out
    }

    pub(super) fn id_token_claims(
        &self,
        g: &CodeGrant,
        access_token: &str,
        faults: &Faults,
        now: u64,
    ) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("iss".into(), json!(self.issuer()));
        c.insert("sub".into(), json!(self.subject(&g.login)));
        c.insert("aud".into(), json!(g.req.client_id));
        c.insert("exp".into(), json!(now + ID_TOKEN_TTL));
        c.insert("iat".into(), json!(now));
        c.insert("auth_time".into(), json!(g.auth_time));
        c.insert("nonce".into(), json!(g.req.nonce));
        if let Some(acr) = &g.req.acr {
            c.insert("acr".into(), json!(acr));
        }
        c.insert("amr".into(), json!(["pwd"]));
        c.insert(
            "at_hash".into(),
            json!(token_hash(self.config().alg, access_token)),
        );
        c.insert("sid".into(), json!(g.sid));
        for (k, v) in self.person_claims(&g.login, &g.req.scopes) {
            c.insert(k, v);
        }
        if faults.wrong_nonce {
            c.insert("nonce".into(), json!(random_token(16)));
        }
        if faults.wrong_audience {
            c.insert("aud".into(), json!(format!("not-{}", g.req.client_id)));
        }
        if faults.expired {
            c.insert("exp".into(), json!(now.saturating_sub(3600)));
            c.insert("iat".into(), json!(now.saturating_sub(3600 + ID_TOKEN_TTL)));
        }
        if let Some(acr) = &faults.acr {
            c.insert("acr".into(), json!(acr));
        }
        apply_claim_faults(&mut c, faults);
        c
    }

    /// A key of the configured algorithm that is not in the JWKS, made once.
    pub(super) async fn foreign_key(&self) -> Result<Arc<SigningKey>, String> {
        if let Some(k) = lock(&self.inner.foreign_key).clone() {
            return Ok(k);
        }
        let alg = self.config().alg;
        let key = tokio::task::spawn_blocking(move || {
            generate_pkcs8(alg).and_then(|der| SigningKey::from_pkcs8(alg, &der))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let key = Arc::new(key);
        *lock(&self.inner.foreign_key) = Some(key.clone());
        Ok(key)
    }

    pub(super) async fn sign_id_token(
        &self,
        claims: &Value,
        faults: &Faults,
    ) -> Result<String, String> {
        let alg = self.config().alg;
        let payload = b64(claims.to_string().as_bytes());
        if faults.unsigned {
            let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
            return Ok(format!("{header}.{payload}."));
        }
        let jwt = if faults.sign_with_foreign_key {
            let key = self.foreign_key().await?;
            let header = json!({"alg": alg.as_str(), "kid": random_token(16), "typ": "JWT"});
            let input = format!("{}.{payload}", b64(header.to_string().as_bytes()));
            let sig = key.sign(input.as_bytes()).map_err(|e| e.to_string())?;
            format!("{input}.{}", b64(&sig))
        } else {
            let set = self.inner.keys.get();
            let key = set
                .signer(alg)
                .ok_or_else(|| format!("no active {alg} key"))?;
            key.sign_jwt("JWT", claims).map_err(|e| e.to_string())?
        };
        if !faults.tamper_signature {
            return Ok(jwt);
        }
        let (input, sig) = jwt
            .rsplit_once('.')
            .ok_or_else(|| "malformed JWS".to_string())?;
        let mut sig = b64_decode(sig).map_err(|e| e.to_string())?;
        if let Some(last) = sig.last_mut() {
            *last ^= 0x01;
        }
        Ok(format!("{input}.{}", b64(&sig)))
    }

    // -- /userinfo -----------------------------------------------------------
}
