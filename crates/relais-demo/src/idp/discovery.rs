//! The demo provider's discovery document.

use super::*;

impl DemoIdp {
    pub(super) fn discovery_document(&self) -> Value {
        let mut claims: Vec<&str> = vec![
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "acr",
            "amr",
            "at_hash",
            "sid",
        ];
        claims.extend(PERSON_CLAIMS);
        let mut doc = json!({
            "issuer": self.issuer(),
            "authorization_endpoint": self.endpoint("/authorize"),
            "token_endpoint": self.endpoint("/token"),
            "userinfo_endpoint": self.endpoint("/userinfo"),
            "jwks_uri": self.endpoint("/jwks"),
            "end_session_endpoint": self.endpoint("/session/end"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.config().alg.as_str()],
            "scopes_supported": SUPPORTED_SCOPES,
            "claims_supported": claims,
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "acr_values_supported": self.config().acr_values,
            "prompt_values_supported": ["none", "login"],
            "claims_parameter_supported": false,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
            "authorization_response_iss_parameter_supported": true,
        });
        if self.faults().no_end_session {
            if let Some(d) = doc.as_object_mut() {
                d.remove("end_session_endpoint");
            }
        }
        doc
    }
}
