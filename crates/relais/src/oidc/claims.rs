//! Scopes and claims (FranceConnect style), and the `claims` request parameter.

use serde_json::{Map, Value};

/// Claims a scope releases.
pub fn scope_claims(scope: &str) -> &'static [&'static str] {
    match scope {
        "openid" => &["sub"],
        "profile" => &[
            "given_name",
            "family_name",
            "birthdate",
            "gender",
            "preferred_username",
        ],
        "birth" => &["birthplace", "birthcountry"],
        "identite_pivot" => &[
            "given_name",
            "family_name",
            "birthdate",
            "gender",
            "birthplace",
            "birthcountry",
        ],
        "email" => &["email"],
        "given_name" => &["given_name"],
        "family_name" => &["family_name"],
        "birthdate" => &["birthdate"],
        "gender" => &["gender"],
        "birthplace" => &["birthplace"],
        "birthcountry" => &["birthcountry"],
        "preferred_username" => &["preferred_username"],
        "idp_id" => &["idp_id"],
        "amr" => &["amr"],
        // Agent federation (ProConnect style: one scope per claim).
        "usual_name" => &["usual_name"],
        "uid" => &["uid"],
        "siret" => &["siret"],
        "siren" => &["siren"],
        "organizational_unit" => &["organizational_unit"],
        "belonging_population" => &["belonging_population"],
        "phone" => &["phone_number"],
        "idp_acr" => &["idp_acr"],
        "custom" => &["custom"],
        _ => &[],
    }
}

/// Claims of the agent profile (discovery `claims_supported`).
pub const AGENT_CLAIMS_SUPPORTED: &[&str] = &[
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
    "given_name",
    "usual_name",
    "email",
    "uid",
    "siret",
    "siren",
    "organizational_unit",
    "belonging_population",
    "phone_number",
    "idp_id",
    "idp_acr",
    "custom",
];

/// Every claim name Relais can release (discovery `claims_supported`).
pub const CLAIMS_SUPPORTED: &[&str] = &[
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
    "given_name",
    "family_name",
    "birthdate",
    "gender",
    "birthplace",
    "birthcountry",
    "preferred_username",
    "email",
    "idp_id",
];

/// Claims released for these scopes, in a stable order, without duplicates.
pub fn claims_for_scopes<'a>(scopes: impl IntoIterator<Item = &'a String>) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for s in scopes {
        for c in scope_claims(s) {
            if !out.contains(c) {
                out.push(c);
            }
        }
    }
    out
}

/// Parsed `claims` request parameter (OIDC Core §5.5).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClaimsRequest {
    /// Claims asked for in the ID token.
    pub id_token: Vec<String>,
    /// Claims asked for at userinfo.
    pub userinfo: Vec<String>,
    /// `acr` requested as essential with these values (weakest acceptable first).
    pub essential_acr: Option<Vec<String>>,
    /// `acr` requested as voluntary with these values.
    pub voluntary_acr: Option<Vec<String>>,
}

impl ClaimsRequest {
    pub fn parse(text: &str) -> Result<ClaimsRequest, String> {
        let v: Map<String, Value> =
            serde_json::from_str(text).map_err(|_| "claims is not a JSON object".to_string())?;
        let mut out = ClaimsRequest::default();
        for (member, target) in [("id_token", 0), ("userinfo", 1)] {
            let Some(obj) = v.get(member) else { continue };
            let obj = obj
                .as_object()
                .ok_or_else(|| format!("claims.{member} must be an object"))?;
            for (name, spec) in obj {
                if !(spec.is_null() || spec.is_object()) {
                    return Err(format!("claims.{member}.{name} must be null or an object"));
                }
                if name == "acr" && target == 0 {
                    let essential = spec
                        .get("essential")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let values: Vec<String> = match (spec.get("values"), spec.get("value")) {
                        (Some(Value::Array(a)), _) => a
                            .iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect(),
                        (_, Some(Value::String(s))) => vec![s.clone()],
                        _ => vec![],
                    };
                    if !values.is_empty() {
                        if essential {
                            out.essential_acr = Some(values);
                        } else {
                            out.voluntary_acr = Some(values);
                        }
                    }
                    continue;
                }
                if target == 0 {
                    out.id_token.push(name.clone());
                } else {
                    out.userinfo.push(name.clone());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_map_to_claims() {
        let s = vec![
            "openid".to_string(),
            "identite_pivot".to_string(),
            "email".to_string(),
        ];
        let c = claims_for_scopes(&s);
        assert_eq!(
            c,
            vec![
                "sub",
                "given_name",
                "family_name",
                "birthdate",
                "gender",
                "birthplace",
                "birthcountry",
                "email"
            ]
        );
    }

    #[test]
    fn claims_param_with_essential_acr() {
        let r = ClaimsRequest::parse(
            r#"{"id_token":{"acr":{"essential":true,"values":["eidas2","eidas3"]},"given_name":null},"userinfo":{"email":{"essential":true}}}"#,
        )
        .unwrap();
        assert_eq!(
            r.essential_acr,
            Some(vec!["eidas2".to_string(), "eidas3".to_string()])
        );
        assert_eq!(r.id_token, vec!["given_name"]);
        assert_eq!(r.userinfo, vec!["email"]);
        assert!(ClaimsRequest::parse("[1]").is_err());
        assert!(ClaimsRequest::parse(r#"{"userinfo":{"email":3}}"#).is_err());
    }
}
