//! Agent identity profile of the agent federation (ProConnect-style).
//!
//! Turns the claims an upstream provider returned for a public agent (ID token
//! and userinfo, merged) into a validated [`AgentIdentity`], and provides the
//! helpers of email-first sign-in: email and phone normalisation, SIRET/SIREN
//! checks, domain patterns, routing a domain to providers and the post-callback
//! "may this provider vouch for this domain" check.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Standard JWT/OIDC technical claims: never part of an agent identity and
/// never collected into [`AgentIdentity::custom`].
const TECHNICAL_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "nonce",
    "at_hash",
    "c_hash",
    "auth_time",
    "acr",
    "amr",
    "azp",
    "sid",
    "sub",
];

/// Claims that map to a dedicated [`AgentIdentity`] field (plus `custom`
/// itself), hence not collected as custom claims.
const PROFILE_CLAIMS: &[&str] = &[
    "uid",
    "given_name",
    "usual_name",
    "email",
    "siret",
    "siren",
    "organizational_unit",
    "belonging_population",
    "phone_number",
    "custom",
];

/// Maximum length, in characters, of `sub` and `uid`.
const MAX_ID_CHARS: usize = 255;
/// Maximum length, in characters, of `given_name` and `usual_name`.
const MAX_NAME_CHARS: usize = 256;

/// SIREN of La Poste, whose establishments (except the head office) use a
/// "sum of digits is a multiple of 5" rule instead of the Luhn checksum.
const LA_POSTE_SIREN: &str = "356000000";
/// SIRET of La Poste's head office, which follows the ordinary Luhn rule.
const LA_POSTE_HEAD_OFFICE_SIRET: &str = "35600000000048";

/// A validated agent identity from an upstream provider (ID token + userinfo
/// claims merged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// The provider's `sub` (1..=255 characters, kept verbatim).
    pub sub: String,
    /// The provider's `uid` (1..=255 characters, kept verbatim).
    pub uid: String,
    /// Trimmed, 1..=256 characters.
    pub given_name: String,
    /// Trimmed, 1..=256 characters.
    pub usual_name: String,
    /// Valid, trimmed and lowercased (see [`normalise_email`]).
    pub email: String,
    /// 14 digits passing [`valid_siret`].
    pub siret: Option<String>,
    /// 9 digits passing [`valid_siren`]; derived from the SIRET when absent.
    pub siren: Option<String>,
    pub organizational_unit: Option<String>,
    pub belonging_population: Option<String>,
    /// Normalised by [`normalise_phone`]; invalid numbers are dropped.
    pub phone_number: Option<String>,
    /// Every other (non-null) claim the provider sent, except the technical
    /// JWT/OIDC claims and the fields above.
    pub custom: Map<String, Value>,
}

/// Why a provider's claims do not make a valid agent identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// A required claim is absent, null or empty.
    Missing(&'static str),
    /// A claim is present but unacceptable. The reason never repeats the
    /// claim's value (no personal data in logs).
    Invalid { claim: &'static str, reason: String },
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Missing(claim) => write!(f, "missing required claim `{claim}`"),
            AgentError::Invalid { claim, reason } => {
                write!(f, "invalid claim `{claim}`: {reason}")
            }
        }
    }
}

impl std::error::Error for AgentError {}

/// What to do with an invalid SIRET (per provider setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiretPolicy<'a> {
    /// Refuse the sign-in.
    Refuse,
    /// Replace it by this SIRET (itself validated).
    Default(&'a str),
}

fn invalid(claim: &'static str, reason: impl Into<String>) -> AgentError {
    AgentError::Invalid {
        claim,
        reason: reason.into(),
    }
}

/// The claim as a string: `Ok(None)` when absent or null, an error when it has
/// another JSON type.
fn claim_str<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, AgentError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(name, "must be a string")),
    }
}

/// A required identifier (`sub`, `uid`): kept verbatim, 1..=255 characters.
fn required_id(claims: &Map<String, Value>, name: &'static str) -> Result<String, AgentError> {
    let value = claim_str(claims, name)?
        .filter(|s| !s.is_empty())
        .ok_or(AgentError::Missing(name))?;
    if value.chars().count() > MAX_ID_CHARS {
        return Err(invalid(
            name,
            format!("longer than {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// A required name (`given_name`, `usual_name`): trimmed, 1..=256 characters.
fn required_name(claims: &Map<String, Value>, name: &'static str) -> Result<String, AgentError> {
    let value = claim_str(claims, name)?
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(AgentError::Missing(name))?;
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            name,
            format!("longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// An optional free-text claim: trimmed; absent, empty or non-string -> None.
fn optional_text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name) {
        Some(Value::String(s)) => {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_owned())
        }
        _ => None,
    }
}

/// Removes the separators people and systems put in SIRET/SIREN numbers
/// (whitespace, including non-breaking spaces, and dots).
fn compact_number(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '.')
        .collect()
}

/// A SIRET/SIREN claim as sent.
enum RawNumber {
    /// Absent, null, or empty once compacted.
    Absent,
    /// Not a string: invalid.
    NotString,
    /// Compacted, not yet validated.
    Text(String),
}

fn raw_number(claims: &Map<String, Value>, name: &str) -> RawNumber {
    match claims.get(name) {
        None | Some(Value::Null) => RawNumber::Absent,
        Some(Value::String(s)) => {
            let compact = compact_number(s);
            if compact.is_empty() {
                RawNumber::Absent
            } else {
                RawNumber::Text(compact)
            }
        }
        Some(_) => RawNumber::NotString,
    }
}

fn siren_of(siret: &str) -> Option<String> {
    siret.get(..9).map(str::to_owned)
}

fn is_technical_or_profile(name: &str) -> bool {
    TECHNICAL_CLAIMS.contains(&name) || PROFILE_CLAIMS.contains(&name)
}

impl AgentIdentity {
    /// Validates and normalises the merged claims of an upstream provider.
    ///
    /// Required: `sub`, `uid`, `given_name`, `usual_name` and a valid
    /// `email` (absent, null or empty -> [`AgentError::Missing`]; wrong type,
    /// too long or malformed -> [`AgentError::Invalid`]).
    ///
    /// `siret`: separators (spaces, dots) are removed; an invalid one (bad
    /// checksum, wrong length or not a string) is refused or replaced per
    /// `siret_policy`. An empty one counts as absent.
    ///
    /// `siren`: when sent, it must be valid and match the SIRET's first nine
    /// digits; when absent it is derived from the SIRET. When the SIRET was
    /// replaced by the provider's default, the SIREN is always derived from
    /// that default (the provider's one described the invalid SIRET).
    ///
    /// `phone_number`: normalised, or dropped when invalid (never an error).
    ///
    /// `custom`: every other non-null claim. If the provider itself sent a
    /// `custom` object (a chained broker, or [`AgentIdentity::to_claims`]
    /// output), its entries are merged in, top-level claims winning.
    pub fn from_claims(
        claims: &Map<String, Value>,
        siret_policy: SiretPolicy,
    ) -> Result<AgentIdentity, AgentError> {
        let sub = required_id(claims, "sub")?;
        let uid = required_id(claims, "uid")?;
        let given_name = required_name(claims, "given_name")?;
        let usual_name = required_name(claims, "usual_name")?;

        let email = claim_str(claims, "email")?
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(AgentError::Missing("email"))?;
        let email =
            normalise_email(email).ok_or_else(|| invalid("email", "not a valid email address"))?;

        let (siret, siret_replaced) = match raw_number(claims, "siret") {
            RawNumber::Absent => (None, false),
            RawNumber::Text(s) if valid_siret(&s) => (Some(s), false),
            RawNumber::Text(_) | RawNumber::NotString => match siret_policy {
                SiretPolicy::Refuse => {
                    return Err(invalid(
                        "siret",
                        "not a valid SIRET (14 digits with a valid checksum)",
                    ))
                }
                SiretPolicy::Default(default) => {
                    let default = compact_number(default);
                    if !valid_siret(&default) {
                        return Err(invalid(
                            "siret",
                            "not a valid SIRET, and the provider's default SIRET is not valid either",
                        ));
                    }
                    (Some(default), true)
                }
            },
        };

        let siren = if siret_replaced {
            siret.as_deref().and_then(siren_of)
        } else {
            match raw_number(claims, "siren") {
                RawNumber::Absent => siret.as_deref().and_then(siren_of),
                RawNumber::Text(s) if valid_siren(&s) => {
                    if let Some(from_siret) = siret.as_deref().and_then(siren_of) {
                        if from_siret != s {
                            return Err(invalid("siren", "does not match the SIRET"));
                        }
                    }
                    Some(s)
                }
                RawNumber::Text(_) | RawNumber::NotString => {
                    return Err(invalid(
                        "siren",
                        "not a valid SIREN (9 digits with a valid checksum)",
                    ))
                }
            }
        };

        let phone_number = match claims.get("phone_number") {
            Some(Value::String(s)) => normalise_phone(s),
            _ => None,
        };

        let mut custom = Map::new();
        for (name, value) in claims {
            if !value.is_null() && !is_technical_or_profile(name) {
                custom.insert(name.clone(), value.clone());
            }
        }
        if let Some(Value::Object(nested)) = claims.get("custom") {
            for (name, value) in nested {
                if !value.is_null() && !is_technical_or_profile(name) && !custom.contains_key(name)
                {
                    custom.insert(name.clone(), value.clone());
                }
            }
        }

        Ok(AgentIdentity {
            sub,
            uid,
            given_name,
            usual_name,
            email,
            siret,
            siren,
            organizational_unit: optional_text(claims, "organizational_unit"),
            belonging_population: optional_text(claims, "belonging_population"),
            phone_number,
            custom,
        })
    }

    /// Claims for services: `given_name`, `usual_name`, `email`, `uid`,
    /// `siret`, `siren`, `organizational_unit`, `belonging_population`,
    /// `phone_number` (only the present ones), and `custom` (an object, only
    /// when non-empty). The provider's `sub` is not included: services get
    /// their own subject.
    pub fn to_claims(&self) -> Map<String, Value> {
        let mut claims = Map::new();
        let mut put = |name: &str, value: &str| {
            claims.insert(name.to_owned(), Value::String(value.to_owned()));
        };
        put("given_name", &self.given_name);
        put("usual_name", &self.usual_name);
        put("email", &self.email);
        put("uid", &self.uid);
        let optional = [
            ("siret", &self.siret),
            ("siren", &self.siren),
            ("organizational_unit", &self.organizational_unit),
            ("belonging_population", &self.belonging_population),
            ("phone_number", &self.phone_number),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                put(name, value);
            }
        }
        if !self.custom.is_empty() {
            claims.insert("custom".to_owned(), Value::Object(self.custom.clone()));
        }
        claims
    }

    /// The email's domain, lowercase (the email is normalised by
    /// [`AgentIdentity::from_claims`]); empty if the email has no `@`.
    pub fn email_domain(&self) -> &str {
        self.email.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

/// Luhn check of a digit string (SIRET/SIREN). Empty strings and strings with
/// anything but ASCII digits fail.
///
/// Special case: SIRETs of La Poste (14 digits starting with SIREN
/// 356000000), except its head office 35600000000048, use the rule "sum of
/// digits is a multiple of 5" instead (as INSEE numbers them, and as
/// python-stdnum checks them).
pub fn luhn_ok(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let values = digits.bytes().map(|b| u32::from(b - b'0'));
    if digits.len() == 14
        && digits.starts_with(LA_POSTE_SIREN)
        && digits != LA_POSTE_HEAD_OFFICE_SIRET
    {
        return values.sum::<u32>().is_multiple_of(5);
    }
    let sum: u32 = values
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// 14 ASCII digits passing [`luhn_ok`] (La Poste rule included), whose first
/// nine digits are a valid SIREN.
pub fn valid_siret(s: &str) -> bool {
    s.len() == 14 && luhn_ok(s) && s.get(..9).is_some_and(valid_siren)
}

/// 9 ASCII digits passing the Luhn check.
pub fn valid_siren(s: &str) -> bool {
    s.len() == 9 && luhn_ok(s)
}

fn valid_email_domain(domain: &str) -> bool {
    domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Email syntax check used for login emails: exactly one '@', non-empty local
/// part (<= 64 chars, no spaces/control chars), domain with at least one dot,
/// labels of [a-z0-9-] (1..=63 chars) not starting/ending with '-', total <=
/// 254 chars. Returns the lowercased, trimmed email or None.
pub fn normalise_email(s: &str) -> Option<String> {
    let (local, domain) = s.trim().split_once('@')?;
    if domain.contains('@')
        || local.is_empty()
        || local.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    // Domains are checked as ASCII before lowercasing so that no Unicode case
    // folding (e.g. the Kelvin sign to 'k') can turn into an ASCII domain.
    if !domain.is_ascii() {
        return None;
    }
    let local = local.to_lowercase();
    let domain = domain.to_ascii_lowercase();
    if local.chars().count() > 64 || !valid_email_domain(&domain) {
        return None;
    }
    let email = format!("{local}@{domain}");
    (email.chars().count() <= 254).then_some(email)
}

fn is_phone_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '.' | '-' | '(' | ')' | '\u{2010}'..='\u{2015}')
}

/// French/international phone normalisation: strip spaces, dots, dashes,
/// parentheses; accept "+" followed by 8..=15 digits, or 10 digits starting
/// with 0 (French national: returned as "+33" + the 9 digits after the 0).
/// Anything else -> None.
pub fn normalise_phone(s: &str) -> Option<String> {
    let compact: String = s.chars().filter(|c| !is_phone_separator(*c)).collect();
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if let Some(digits) = compact.strip_prefix('+') {
        return ((8..=15).contains(&digits.len()) && all_digits(digits))
            .then(|| format!("+{digits}"));
    }
    if compact.len() == 10 && all_digits(&compact) {
        return compact
            .strip_prefix('0')
            .map(|national| format!("+33{national}"));
    }
    None
}

fn is_wildcard(pattern: &str) -> bool {
    pattern.trim().starts_with("*.")
}

/// Domain patterns attached to a provider: "exact.gouv.fr" matches only that
/// domain; "*.gouv.fr" matches any subdomain at any depth (a.gouv.fr,
/// b.a.gouv.fr) but NOT "gouv.fr" itself. Case-insensitive; patterns (and
/// the domain) are trimmed. Empty patterns and patterns with a '*' anywhere
/// but a leading "*." match nothing.
pub fn domain_matches(pattern: &str, domain: &str) -> bool {
    let pattern = pattern.trim().to_ascii_lowercase();
    let domain = domain.trim().to_ascii_lowercase();
    if domain.is_empty() {
        return false;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            if suffix.is_empty() || suffix.starts_with('.') || suffix.contains('*') {
                return false;
            }
            domain
                .strip_suffix(suffix)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|sub| !sub.is_empty() && !sub.starts_with('.') && !sub.ends_with('.'))
        }
        None => !pattern.is_empty() && !pattern.contains('*') && pattern == domain,
    }
}

/// Routing for email-first sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Exactly one provider: go straight to it.
    One(String),
    /// Several providers (in display order): let the person choose.
    Several(Vec<String>),
    /// No provider matched: the federation's default provider.
    Default(String),
    /// No provider matched and there is no default provider.
    NoMatch,
}

/// `providers`: (provider id, its attached domain patterns), in display order.
/// Returns One if exactly one provider matches, Several (ids, in the given
/// order, without duplicates) if more, Default(id) when none match and a
/// (non-empty) default provider is given, else NoMatch. An exact-pattern match
/// takes precedence over wildcard matches: if any provider matches the domain
/// with an exact pattern, only exact matches count.
pub fn route(
    domain: &str,
    providers: &[(String, Vec<String>)],
    default_provider: Option<&str>,
) -> Route {
    let mut exact: Vec<String> = Vec::new();
    let mut wildcard: Vec<String> = Vec::new();
    for (id, patterns) in providers {
        let matching = |want_wildcard: bool| {
            patterns
                .iter()
                .any(|p| is_wildcard(p) == want_wildcard && domain_matches(p, domain))
        };
        if matching(false) {
            if !exact.contains(id) {
                exact.push(id.clone());
            }
        } else if matching(true) && !wildcard.contains(id) {
            wildcard.push(id.clone());
        }
    }
    let matched = if exact.is_empty() { wildcard } else { exact };
    match matched.as_slice() {
        [] => match default_provider.filter(|d| !d.is_empty()) {
            Some(default) => Route::Default(default.to_owned()),
            None => Route::NoMatch,
        },
        [one] => Route::One(one.clone()),
        _ => Route::Several(matched),
    }
}

/// May this provider vouch for this email domain? (attached patterns or extra
/// accepted patterns, or it is the default provider).
pub fn may_vouch(domain: &str, patterns: &[String], extra: &[String], is_default: bool) -> bool {
    is_default
        || patterns
            .iter()
            .chain(extra)
            .any(|pattern| domain_matches(pattern, domain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DINUM_SIRET: &str = "13002526500013";
    const DINUM_SIREN: &str = "130025265";

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn base_claims() -> Map<String, Value> {
        obj(json!({
            "sub": "provider-sub-123",
            "uid": "u-42",
            "given_name": "  Jean  ",
            "usual_name": "Dupont",
            "email": " Jean.Dupont@Numerique.GOUV.fr ",
        }))
    }

    fn from(claims: &Map<String, Value>) -> Result<AgentIdentity, AgentError> {
        AgentIdentity::from_claims(claims, SiretPolicy::Refuse)
    }

    fn providers(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(id, pats)| {
                (
                    (*id).to_owned(),
                    pats.iter().map(|p| (*p).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn valid_identity_full() {
        let mut claims = base_claims();
        claims.extend(obj(json!({
            "siret": DINUM_SIRET,
            "siren": DINUM_SIREN,
            "organizational_unit": " DINUM / Opérateurs ",
            "belonging_population": "agent",
            "phone_number": "06 12 34 56 78",
            "iss": "https://idp.example",
            "aud": "relais",
            "exp": 1,
            "iat": 0,
            "email_verified": true,
        })));
        let id = from(&claims).unwrap();
        assert_eq!(
            id,
            AgentIdentity {
                sub: "provider-sub-123".into(),
                uid: "u-42".into(),
                given_name: "Jean".into(),
                usual_name: "Dupont".into(),
                email: "jean.dupont@numerique.gouv.fr".into(),
                siret: Some(DINUM_SIRET.into()),
                siren: Some(DINUM_SIREN.into()),
                organizational_unit: Some("DINUM / Opérateurs".into()),
                belonging_population: Some("agent".into()),
                phone_number: Some("+33612345678".into()),
                custom: obj(json!({"email_verified": true})),
            }
        );
        assert_eq!(id.email_domain(), "numerique.gouv.fr");
    }

    #[test]
    fn minimal_identity_has_no_optional_fields() {
        let id = from(&base_claims()).unwrap();
        assert_eq!(id.siret, None);
        assert_eq!(id.siren, None);
        assert_eq!(id.organizational_unit, None);
        assert_eq!(id.belonging_population, None);
        assert_eq!(id.phone_number, None);
        assert!(id.custom.is_empty());
    }

    #[test]
    fn each_missing_required_claim() {
        for name in ["sub", "uid", "given_name", "usual_name", "email"] {
            let mut claims = base_claims();
            claims.remove(name);
            assert_eq!(
                from(&claims),
                Err(AgentError::Missing(name)),
                "absent {name}"
            );

            let mut claims = base_claims();
            claims.insert(name.into(), Value::Null);
            assert_eq!(from(&claims), Err(AgentError::Missing(name)), "null {name}");

            let mut claims = base_claims();
            claims.insert(name.into(), json!(""));
            assert_eq!(
                from(&claims),
                Err(AgentError::Missing(name)),
                "empty {name}"
            );
        }
        for name in ["given_name", "usual_name", "email"] {
            let mut claims = base_claims();
            claims.insert(name.into(), json!("   "));
            assert_eq!(
                from(&claims),
                Err(AgentError::Missing(name)),
                "blank {name}"
            );
        }
    }

    #[test]
    fn required_claims_type_and_length() {
        for name in ["sub", "uid", "given_name", "usual_name", "email"] {
            let mut claims = base_claims();
            claims.insert(name.into(), json!(12));
            assert!(
                matches!(from(&claims), Err(AgentError::Invalid { claim, .. }) if claim == name),
                "{name} as a number"
            );
        }
        for name in ["sub", "uid"] {
            let mut claims = base_claims();
            claims.insert(name.into(), json!("é".repeat(255)));
            assert!(from(&claims).is_ok(), "{name} at 255 chars");
            claims.insert(name.into(), json!("x".repeat(256)));
            assert!(
                matches!(from(&claims), Err(AgentError::Invalid { claim, .. }) if claim == name),
                "{name} at 256 chars"
            );
        }
        for name in ["given_name", "usual_name"] {
            let mut claims = base_claims();
            claims.insert(name.into(), json!(format!("  {}  ", "é".repeat(256))));
            let id = from(&claims).unwrap();
            let got = if name == "given_name" {
                &id.given_name
            } else {
                &id.usual_name
            };
            assert_eq!(got.chars().count(), 256);
            claims.insert(name.into(), json!("x".repeat(257)));
            assert!(
                matches!(from(&claims), Err(AgentError::Invalid { claim, .. }) if claim == name),
                "{name} at 257 chars"
            );
        }
    }

    #[test]
    fn invalid_email_refused() {
        for bad in [
            "not-an-email",
            "a@b",
            "a@@b.fr",
            "a@b@c.fr",
            "jean dupont@gouv.fr",
            "@gouv.fr",
        ] {
            let mut claims = base_claims();
            claims.insert("email".into(), json!(bad));
            assert_eq!(
                from(&claims),
                Err(AgentError::Invalid {
                    claim: "email",
                    reason: "not a valid email address".into()
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn normalise_email_rules() {
        assert_eq!(
            normalise_email("  Jean.Dupont+X@Sub.Numerique.GOUV.FR\n").as_deref(),
            Some("jean.dupont+x@sub.numerique.gouv.fr")
        );
        assert_eq!(
            normalise_email("a@b-c.d1.fr").as_deref(),
            Some("a@b-c.d1.fr")
        );
        for bad in [
            "",
            "a",
            "a@b",
            "@b.fr",
            "a@b@c.fr",
            "a b@c.fr",
            "a\u{7}b@c.fr",
            "a@-b.fr",
            "a@b-.fr",
            "a@b..fr",
            "a@.b.fr",
            "a@b.fr.",
            "a@b_c.fr",
            "a@b c.fr",
            "a@\u{212A}.gouv.fr",
            "a@exämple.fr",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad:?}");
        }
        // Local part: 64 chars max.
        let local64 = "a".repeat(64);
        assert!(normalise_email(&format!("{local64}@gouv.fr")).is_some());
        assert!(normalise_email(&format!("{local64}a@gouv.fr")).is_none());
        // Labels: 63 chars max.
        assert!(normalise_email(&format!("a@{}.fr", "b".repeat(63))).is_some());
        assert!(normalise_email(&format!("a@{}.fr", "b".repeat(64))).is_none());
        // Total: 254 chars max ("a@" + domain).
        let domain = |len: usize| {
            let mut labels = Vec::new();
            let mut left = len;
            while left > 0 {
                let take = left.min(61);
                labels.push("c".repeat(take));
                left -= take;
                left = left.saturating_sub(1); // the dot
            }
            labels.join(".")
        };
        let ok = format!("a@{}", domain(252));
        assert_eq!(ok.len(), 254);
        assert!(normalise_email(&ok).is_some());
        let too_long = format!("a@{}", domain(253));
        assert_eq!(too_long.len(), 255);
        assert!(normalise_email(&too_long).is_none());
    }

    #[test]
    fn luhn_basics() {
        assert!(luhn_ok("79927398713"));
        assert!(!luhn_ok("79927398710"));
        assert!(luhn_ok("0"));
        assert!(!luhn_ok(""));
        assert!(!luhn_ok("1234a"));
        assert!(!luhn_ok(" 130025265"));
        assert!(!luhn_ok("١٢٣")); // non-ASCII digits
    }

    #[test]
    fn known_sirets_and_sirens() {
        for good in [DINUM_SIRET, "73282932000074"] {
            assert!(valid_siret(good), "{good}");
            assert!(valid_siren(&good[..9]), "{good}");
        }
        for bad in [
            "13002526500014",
            "73282932000079",
            "1300252650001",
            "130025265000130",
            "1300252650001a",
            "130 025 265 00013",
            "",
        ] {
            assert!(!valid_siret(bad), "{bad}");
        }
        assert!(valid_siren(DINUM_SIREN));
        assert!(!valid_siren("130025266"));
        assert!(!valid_siren("13002526"));
        assert!(!valid_siren(DINUM_SIRET));
        // A SIRET whose whole number passes Luhn but whose SIREN does not.
        assert!(luhn_ok("10000000000008"));
        assert!(!valid_siren("100000000"));
        assert!(!valid_siret("10000000000008"));
    }

    #[test]
    fn la_poste_rule() {
        assert!(valid_siren(LA_POSTE_SIREN));
        // Head office: ordinary Luhn (its digit sum, 26, is not a multiple of 5).
        assert!(valid_siret("35600000000048"));
        // Establishments: digit sum multiple of 5, Luhn irrelevant.
        assert!(luhn_ok("35600000000015")); // sum 20, fails ordinary Luhn
        assert!(valid_siret("35600000000015"));
        assert!(valid_siret("35600000049837")); // sum 45
        assert!(!luhn_ok("35600000000014")); // passes ordinary Luhn, sum 19
        assert!(!valid_siret("35600000000014"));
        assert!(!valid_siret("35600000000049")); // neither rule
                                                 // Only 14-digit numbers of that SIREN: a 9-digit string uses Luhn.
        assert!(!luhn_ok("356000001")); // sum 15, fails Luhn
                                        // Other SIRENs use Luhn even when their digit sum is a multiple of 5.
        assert!(!luhn_ok("12345678901234")); // digit sum 50
    }

    #[test]
    fn siret_invalid_refused() {
        let mut claims = base_claims();
        claims.insert("siret".into(), json!("13002526500014"));
        assert!(matches!(
            from(&claims),
            Err(AgentError::Invalid { claim: "siret", .. })
        ));
        // Not a string counts as invalid.
        claims.insert("siret".into(), json!(13002526500013_u64));
        assert!(matches!(
            from(&claims),
            Err(AgentError::Invalid { claim: "siret", .. })
        ));
    }

    #[test]
    fn siret_invalid_replaced_by_default() {
        let mut claims = base_claims();
        claims.insert("siret".into(), json!("12345678901234"));
        claims.insert("siren".into(), json!("123456789"));
        let id = AgentIdentity::from_claims(&claims, SiretPolicy::Default(DINUM_SIRET)).unwrap();
        assert_eq!(id.siret.as_deref(), Some(DINUM_SIRET));
        assert_eq!(id.siren.as_deref(), Some(DINUM_SIREN));
        // The default itself is validated.
        let err = AgentIdentity::from_claims(&claims, SiretPolicy::Default("13002526500014"))
            .unwrap_err();
        assert!(matches!(err, AgentError::Invalid { claim: "siret", .. }));
        // A valid SIRET is kept, not replaced.
        claims.insert("siret".into(), json!("73282932000074"));
        claims.remove("siren");
        let id = AgentIdentity::from_claims(&claims, SiretPolicy::Default(DINUM_SIRET)).unwrap();
        assert_eq!(id.siret.as_deref(), Some("73282932000074"));
        assert_eq!(id.siren.as_deref(), Some("732829320"));
        // Absent SIRET is not replaced.
        claims.remove("siret");
        let id = AgentIdentity::from_claims(&claims, SiretPolicy::Default(DINUM_SIRET)).unwrap();
        assert_eq!(id.siret, None);
        assert_eq!(id.siren, None);
    }

    #[test]
    fn siret_separators_and_empty() {
        let mut claims = base_claims();
        claims.insert("siret".into(), json!(" 130 025 265\u{a0}00013 "));
        let id = from(&claims).unwrap();
        assert_eq!(id.siret.as_deref(), Some(DINUM_SIRET));
        claims.insert("siret".into(), json!("  "));
        let id = from(&claims).unwrap();
        assert_eq!(id.siret, None);
        assert_eq!(id.siren, None);
    }

    #[test]
    fn siren_derivation_and_checks() {
        let mut claims = base_claims();
        claims.insert("siret".into(), json!(DINUM_SIRET));
        assert_eq!(from(&claims).unwrap().siren.as_deref(), Some(DINUM_SIREN));

        // Sent and consistent.
        claims.insert("siren".into(), json!("130 025 265"));
        assert_eq!(from(&claims).unwrap().siren.as_deref(), Some(DINUM_SIREN));

        // Sent but not matching the SIRET.
        claims.insert("siren".into(), json!("732829320"));
        assert!(matches!(
            from(&claims),
            Err(AgentError::Invalid { claim: "siren", .. })
        ));

        // Sent but invalid.
        claims.insert("siren".into(), json!("130025266"));
        assert!(matches!(
            from(&claims),
            Err(AgentError::Invalid { claim: "siren", .. })
        ));

        // SIREN alone.
        claims.remove("siret");
        claims.insert("siren".into(), json!(DINUM_SIREN));
        let id = from(&claims).unwrap();
        assert_eq!(id.siret, None);
        assert_eq!(id.siren.as_deref(), Some(DINUM_SIREN));

        // La Poste establishment: derived SIREN is La Poste's.
        claims.remove("siren");
        claims.insert("siret".into(), json!("35600000049837"));
        assert_eq!(
            from(&claims).unwrap().siren.as_deref(),
            Some(LA_POSTE_SIREN)
        );
    }

    #[test]
    fn phone_normalisation() {
        assert_eq!(
            normalise_phone("06 12 34 56 78").as_deref(),
            Some("+33612345678")
        );
        assert_eq!(
            normalise_phone("+44 20 7946 0958").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalise_phone("01.23.45.67.89").as_deref(),
            Some("+33123456789")
        );
        assert_eq!(
            normalise_phone("(01) 23-45-67-89").as_deref(),
            Some("+33123456789")
        );
        assert_eq!(
            normalise_phone("06\u{a0}12\u{202f}34 56 78").as_deref(),
            Some("+33612345678")
        );
        assert_eq!(normalise_phone("+1234567").as_deref(), None); // 7 digits
        assert_eq!(normalise_phone("+12345678").as_deref(), Some("+12345678"));
        assert_eq!(
            normalise_phone("+123456789012345").as_deref(),
            Some("+123456789012345")
        );
        for bad in [
            "12",
            "",
            "+",
            "+1234567890123456",
            "612345678",
            "1612345678",
            "06123456789",
            "06 12 34 56 7x",
            "++33612345678",
            "33+612345678",
            "tel:+33612345678",
        ] {
            assert_eq!(normalise_phone(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn invalid_phone_dropped_without_error() {
        let mut claims = base_claims();
        claims.insert("phone_number".into(), json!("12"));
        let id = from(&claims).unwrap();
        assert_eq!(id.phone_number, None);
        assert!(!id.custom.contains_key("phone_number"));
        claims.insert("phone_number".into(), json!(612345678));
        assert_eq!(from(&claims).unwrap().phone_number, None);
    }

    #[test]
    fn custom_claims_collected_technical_excluded() {
        let mut claims = base_claims();
        claims.extend(obj(json!({
            "iss": "https://idp", "aud": ["relais"], "exp": 2, "iat": 1, "nbf": 1,
            "jti": "j", "nonce": "n", "at_hash": "h", "c_hash": "c", "auth_time": 1,
            "acr": "eidas1", "amr": ["pwd"], "azp": "relais", "sid": "s",
            "siret": DINUM_SIRET, "phone_number": "bad",
            "organizational_unit": 42,
            "email_verified": true,
            "preferred_username": "jdupont",
            "chorusdt": {"matricule": "X1"},
            "idp_id": "from-provider",
            "nothing": null,
        })));
        let id = from(&claims).unwrap();
        assert_eq!(
            id.custom,
            obj(json!({
                "email_verified": true,
                "preferred_username": "jdupont",
                "chorusdt": {"matricule": "X1"},
                "idp_id": "from-provider",
            }))
        );
        assert_eq!(id.organizational_unit, None);
    }

    #[test]
    fn nested_custom_merged_top_level_wins() {
        let mut claims = base_claims();
        claims.extend(obj(json!({
            "grade": "A",
            "custom": {"grade": "B", "corps": "attaché", "email": "x@y.fr", "iss": "z", "n": null},
        })));
        let id = from(&claims).unwrap();
        assert_eq!(id.custom, obj(json!({"grade": "A", "corps": "attaché"})));
    }

    #[test]
    fn to_claims_shape_and_round_trip() {
        let id = from(&base_claims()).unwrap();
        assert_eq!(
            Value::Object(id.to_claims()),
            json!({
                "given_name": "Jean",
                "usual_name": "Dupont",
                "email": "jean.dupont@numerique.gouv.fr",
                "uid": "u-42",
            })
        );

        let mut claims = base_claims();
        claims.extend(obj(json!({
            "siret": DINUM_SIRET,
            "belonging_population": "agent",
            "phone_number": "+44 20 7946 0958",
            "grade": "A",
            "acr": "eidas1",
        })));
        let id = from(&claims).unwrap();
        let out = id.to_claims();
        assert_eq!(
            Value::Object(out.clone()),
            json!({
                "given_name": "Jean",
                "usual_name": "Dupont",
                "email": "jean.dupont@numerique.gouv.fr",
                "uid": "u-42",
                "siret": DINUM_SIRET,
                "siren": DINUM_SIREN,
                "belonging_population": "agent",
                "phone_number": "+442079460958",
                "custom": {"grade": "A"},
            })
        );
        assert!(!out.contains_key("sub"));
        // Feeding the output back (with a sub) gives the same identity.
        let mut back = out;
        back.insert("sub".into(), json!(id.sub.clone()));
        assert_eq!(from(&back).unwrap(), id);
    }

    #[test]
    fn serde_round_trip() {
        let mut claims = base_claims();
        claims.insert("grade".into(), json!("A"));
        let id = from(&claims).unwrap();
        let text = serde_json::to_string(&id).unwrap();
        let back: AgentIdentity = serde_json::from_str(&text).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn email_domain_of_identity() {
        let mut claims = base_claims();
        claims.insert("email".into(), json!("A.B@Interieur.Gouv.FR"));
        assert_eq!(from(&claims).unwrap().email_domain(), "interieur.gouv.fr");
        let mut id = from(&claims).unwrap();
        id.email = "no-at-sign".into();
        assert_eq!(id.email_domain(), "");
    }

    #[test]
    fn error_display() {
        assert_eq!(
            AgentError::Missing("uid").to_string(),
            "missing required claim `uid`"
        );
        assert_eq!(
            invalid("siret", "bad checksum").to_string(),
            "invalid claim `siret`: bad checksum"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(AgentError::Missing("sub"));
        assert!(boxed.to_string().contains("sub"));
    }

    #[test]
    fn domain_matching() {
        // Exact.
        assert!(domain_matches("numerique.gouv.fr", "numerique.gouv.fr"));
        assert!(!domain_matches("numerique.gouv.fr", "a.numerique.gouv.fr"));
        assert!(!domain_matches("numerique.gouv.fr", "gouv.fr"));
        assert!(!domain_matches("gouv.fr", "xgouv.fr"));
        // Wildcard, any depth, not the apex.
        assert!(domain_matches("*.gouv.fr", "a.gouv.fr"));
        assert!(domain_matches("*.gouv.fr", "b.a.gouv.fr"));
        assert!(!domain_matches("*.gouv.fr", "gouv.fr"));
        assert!(!domain_matches("*.gouv.fr", "xgouv.fr"));
        assert!(!domain_matches("*.gouv.fr", "a.gouv.fr.evil.com"));
        assert!(!domain_matches("*.gouv.fr", ".gouv.fr"));
        // Case and whitespace.
        assert!(domain_matches("  *.GOUV.fr ", "A.Gouv.FR"));
        assert!(domain_matches(" Numerique.Gouv.Fr\t", "NUMERIQUE.gouv.fr"));
        // Degenerate patterns match nothing.
        for pattern in ["", "  ", "*", "*.", "*..gouv.fr", "a*.gouv.fr", "*.*.fr"] {
            assert!(!domain_matches(pattern, "a.gouv.fr"), "{pattern:?}");
            assert!(!domain_matches(pattern, "gouv.fr"), "{pattern:?}");
        }
        assert!(!domain_matches("gouv.fr", ""));
    }

    #[test]
    fn routing() {
        let list = providers(&[
            ("dinum", &["numerique.gouv.fr"]),
            ("interieur", &["*.interieur.gouv.fr", "interieur.gouv.fr"]),
            ("etat", &["*.gouv.fr"]),
            ("culture", &["culture.gouv.fr", "*.culture.fr"]),
            ("mc", &["*.culture.fr"]),
        ]);
        // One (exact).
        assert_eq!(
            route("numerique.gouv.fr", &list, None),
            Route::One("dinum".into())
        );
        // Exact beats wildcard: numerique.gouv.fr also matches *.gouv.fr.
        assert_eq!(
            route("NUMERIQUE.gouv.fr", &list, Some("pci")),
            Route::One("dinum".into())
        );
        // Several wildcards, in display order.
        assert_eq!(
            route("dgpn.interieur.gouv.fr", &list, None),
            Route::Several(strings(&["interieur", "etat"]))
        );
        assert_eq!(
            route("x.culture.fr", &list, None),
            Route::Several(strings(&["culture", "mc"]))
        );
        // One (wildcard only).
        assert_eq!(
            route("sante.gouv.fr", &list, None),
            Route::One("etat".into())
        );
        // No match: default or NoMatch.
        assert_eq!(
            route("mairie-paris.fr", &list, Some("pci")),
            Route::Default("pci".into())
        );
        assert_eq!(route("mairie-paris.fr", &list, None), Route::NoMatch);
        assert_eq!(route("mairie-paris.fr", &list, Some("")), Route::NoMatch);
        // Apex is not covered by the wildcard.
        assert_eq!(route("culture.fr", &list, None), Route::NoMatch);
        assert_eq!(route("anything.fr", &[], None), Route::NoMatch);
    }

    #[test]
    fn routing_exact_precedence_with_several() {
        let list = providers(&[
            ("wild", &["*.gouv.fr"]),
            ("a", &["agri.gouv.fr"]),
            ("b", &["AGRI.gouv.fr "]),
            ("a", &["agri.gouv.fr"]),
        ]);
        assert_eq!(
            route("agri.gouv.fr", &list, None),
            Route::Several(strings(&["a", "b"]))
        );
        assert_eq!(
            route("x.agri.gouv.fr", &list, None),
            Route::One("wild".into())
        );
    }

    #[test]
    fn vouching() {
        let patterns = strings(&["interieur.gouv.fr", "*.interieur.gouv.fr"]);
        let extra = strings(&["*.prefecture.fr"]);
        assert!(may_vouch("interieur.gouv.fr", &patterns, &extra, false));
        assert!(may_vouch(
            "dgpn.interieur.gouv.fr",
            &patterns,
            &extra,
            false
        ));
        assert!(may_vouch("X.Prefecture.fr", &patterns, &extra, false));
        assert!(!may_vouch("prefecture.fr", &patterns, &extra, false));
        assert!(!may_vouch("numerique.gouv.fr", &patterns, &extra, false));
        assert!(!may_vouch("numerique.gouv.fr", &[], &[], false));
        // The default provider may vouch for any domain.
        assert!(may_vouch("numerique.gouv.fr", &[], &[], true));
        assert!(may_vouch("mairie.fr", &patterns, &extra, true));
    }
}
