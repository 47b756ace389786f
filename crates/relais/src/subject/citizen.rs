//! Citizen "pivot identity": validation, normalisation and pairwise
//! subjects. The civil registry (RNIPP) check is in [`super::registry`].
//!
//! The pivot identity is the set of civil-status claims (given names, birth
//! name, birth date, gender, birth place and birth country) that every upstream
//! identity provider must return. Relais validates them with
//! [`PivotIdentity::from_claims`], derives a canonical [`PivotIdentity::identity_key`]
//! from them and turns that key into a per-sector subject with [`pairwise_sub`].
//!
//! See `docs/identity.md` for the rules in prose.

use std::fmt;

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// INSEE country code of France (`birthcountry` of people born in France).
pub const BIRTHCOUNTRY_FRANCE: &str = "99100";

/// Maximum length of a name, in Unicode scalar values (after trimming).
const MAX_NAME_CHARS: usize = 256;

/// Domain-separation prefix of the pairwise subject HMAC message.
const SUB_CONTEXT: &str = "relais-sub-v1\n";

/// Citizen gender, as carried by the `gender` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    /// `"male"`.
    Male,
    /// `"female"`.
    Female,
}

impl Gender {
    pub(crate) fn as_claim(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
        }
    }
}

/// A validated citizen "pivot identity" as returned by an upstream identity provider.
///
/// Build it with [`PivotIdentity::from_claims`]: the fields are public and the
/// type is deserialisable, so a value built any other way is not validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PivotIdentity {
    /// One or several given names separated by spaces, as received (trimmed).
    pub given_name: String,
    /// Birth name, as received (trimmed).
    pub family_name: String,
    /// `YYYY-MM-DD`.
    pub birthdate: String,
    /// `male` or `female`.
    pub gender: Gender,
    /// 5-character INSEE commune code, `Some` only when born in France.
    pub birthplace: Option<String>,
    /// 5-digit INSEE country code, `"99100"` = France.
    pub birthcountry: String,
    /// Usage name, optional.
    pub preferred_username: Option<String>,
    /// Optional.
    pub email: Option<String>,
}

/// Why a set of claims is not a valid pivot identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// A required claim is absent (or JSON `null`).
    Missing(&'static str),
    /// A claim is present but does not satisfy the rules.
    Invalid {
        /// Name of the offending claim.
        claim: &'static str,
        /// Human-readable rule that was broken.
        reason: &'static str,
    },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Missing(claim) => write!(f, "missing claim {claim}"),
            IdentityError::Invalid { claim, reason } => {
                write!(f, "invalid claim {claim}: {reason}")
            }
        }
    }
}

impl std::error::Error for IdentityError {}

fn invalid(claim: &'static str, reason: &'static str) -> IdentityError {
    IdentityError::Invalid { claim, reason }
}

/// Reads an optional string claim: absent or `null` gives `None`, a
/// non-string value is invalid.
fn optional_str<'a>(
    claims: &'a Map<String, Value>,
    claim: &'static str,
) -> Result<Option<&'a str>, IdentityError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(claim, "must be a string")),
    }
}

fn required_str<'a>(
    claims: &'a Map<String, Value>,
    claim: &'static str,
) -> Result<&'a str, IdentityError> {
    optional_str(claims, claim)?.ok_or(IdentityError::Missing(claim))
}

/// Checks a (trimmed) name: 1..=256 chars, at least one letter, no control
/// characters.
fn check_name(claim: &'static str, name: &str) -> Result<(), IdentityError> {
    if name.is_empty() {
        return Err(invalid(claim, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(claim, "must be at most 256 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(claim, "must not contain control characters"));
    }
    // Checked on the normalised form, so that a name that normalises to no
    // letter at all (e.g. only combining marks) is rejected.
    if !normalise_name(name).chars().any(char::is_alphabetic) {
        return Err(invalid(claim, "must contain at least one letter"));
    }
    Ok(())
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

fn digit(b: u8) -> Option<u32> {
    if b.is_ascii_digit() {
        Some(u32::from(b - b'0'))
    } else {
        None
    }
}

/// Strict `YYYY-MM-DD`, a real calendar date, year >= 1800.
fn check_birthdate(s: &str) -> Result<(), IdentityError> {
    const FORMAT: &str = "must be a valid date in YYYY-MM-DD format";
    let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = *s.as_bytes() else {
        return Err(invalid("birthdate", FORMAT));
    };
    let number = |digits: &[u8]| {
        digits
            .iter()
            .try_fold(0u32, |acc, &b| digit(b).map(|d| acc * 10 + d))
    };
    let (Some(year), Some(month), Some(day)) = (
        number(&[y1, y2, y3, y4]),
        number(&[m1, m2]),
        number(&[d1, d2]),
    ) else {
        return Err(invalid("birthdate", FORMAT));
    };
    if day == 0 || day > days_in_month(year, month) {
        return Err(invalid("birthdate", FORMAT));
    }
    if year < 1800 {
        return Err(invalid("birthdate", "year must be 1800 or later"));
    }
    Ok(())
}

fn parse_gender(s: &str) -> Result<Gender, IdentityError> {
    match s {
        "male" => Ok(Gender::Male),
        "female" => Ok(Gender::Female),
        _ => Err(invalid("gender", "must be male or female")),
    }
}

fn check_birthcountry(s: &str) -> Result<(), IdentityError> {
    if s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid("birthcountry", "must be 5 ASCII digits"))
    }
}

fn check_birthplace(s: &str) -> Result<(), IdentityError> {
    if s.len() == 5
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(invalid(
            "birthplace",
            "must be 5 ASCII digits or uppercase letters",
        ))
    }
}

fn check_email(s: &str) -> Result<(), IdentityError> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "email",
            "must not contain whitespace or control characters",
        ));
    }
    match s.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(())
        }
        _ => Err(invalid(
            "email",
            "must contain exactly one @ with non-empty parts",
        )),
    }
}

impl PivotIdentity {
    /// Validate claims returned upstream (merged ID token + userinfo JSON object).
    ///
    /// Absent and `null` claims are treated alike. `birthplace` is required
    /// for people born in France (`birthcountry == "99100"`); for people born
    /// abroad it is ignored and stored as `None`, but a non-empty value must
    /// still be well formed. `preferred_username` and `email` are trimmed and
    /// an empty value becomes `None`; `preferred_username` follows the name
    /// rules.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Missing`] for an absent required claim,
    /// [`IdentityError::Invalid`] for a claim that breaks the rules.
    pub fn from_claims(claims: &Map<String, Value>) -> Result<PivotIdentity, IdentityError> {
        let given_name = required_str(claims, "given_name")?.trim();
        check_name("given_name", given_name)?;
        let family_name = required_str(claims, "family_name")?.trim();
        check_name("family_name", family_name)?;

        let birthdate = required_str(claims, "birthdate")?;
        check_birthdate(birthdate)?;

        let gender = parse_gender(required_str(claims, "gender")?)?;

        let birthcountry = required_str(claims, "birthcountry")?;
        check_birthcountry(birthcountry)?;

        let birthplace = optional_str(claims, "birthplace")?.filter(|s| !s.is_empty());
        if let Some(place) = birthplace {
            check_birthplace(place)?;
        }
        let birthplace = if birthcountry == BIRTHCOUNTRY_FRANCE {
            Some(
                birthplace
                    .ok_or(IdentityError::Missing("birthplace"))?
                    .to_owned(),
            )
        } else {
            None
        };

        let preferred_username = optional_str(claims, "preferred_username")?
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if let Some(name) = preferred_username {
            check_name("preferred_username", name)?;
        }

        let email = optional_str(claims, "email")?
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if let Some(email) = email {
            check_email(email)?;
        }

        Ok(PivotIdentity {
            given_name: given_name.to_owned(),
            family_name: family_name.to_owned(),
            birthdate: birthdate.to_owned(),
            gender,
            birthplace,
            birthcountry: birthcountry.to_owned(),
            preferred_username: preferred_username.map(str::to_owned),
            email: email.map(str::to_owned),
        })
    }

    /// Birth place as used in keys: the commune code when born in France,
    /// `""` otherwise.
    pub(crate) fn key_birthplace(&self) -> &str {
        if self.birthcountry == BIRTHCOUNTRY_FRANCE {
            self.birthplace.as_deref().unwrap_or_default()
        } else {
            ""
        }
    }

    /// Canonical normalised string identifying the person.
    ///
    /// `"v1"`, normalised given names, normalised family name, birthdate,
    /// gender, birthplace (`""` when born abroad) and birthcountry, joined with
    /// `'\n'`. Normalised names never contain `'\n'`, so for a validated
    /// identity the key is unambiguous. `preferred_username` and `email` are
    /// not part of it.
    #[must_use]
    pub fn identity_key(&self) -> String {
        [
            "v1",
            &normalise_name(&self.given_name),
            &normalise_name(&self.family_name),
            &self.birthdate,
            self.gender.as_claim(),
            self.key_birthplace(),
            &self.birthcountry,
        ]
        .join("\n")
    }

    /// Claims for this identity as a JSON object.
    #[must_use]
    pub fn to_claims(&self) -> Map<String, Value> {
        let mut claims = Map::new();
        let mut put = |name: &str, value: &str| {
            claims.insert(name.to_owned(), Value::String(value.to_owned()));
        };
        put("given_name", &self.given_name);
        put("family_name", &self.family_name);
        put("birthdate", &self.birthdate);
        put("gender", self.gender.as_claim());
        if let Some(place) = &self.birthplace {
            put("birthplace", place);
        }
        put("birthcountry", &self.birthcountry);
        if let Some(name) = &self.preferred_username {
            put("preferred_username", name);
        }
        if let Some(email) = &self.email {
            put("email", email);
        }
        claims
    }
}

/// Pairwise subject: lowercase hex of
/// `HMAC-SHA256(key = secret, msg = "relais-sub-v1\n" + sector + "\n" + identity_key)`
/// followed by `"v1"` (66 characters).
#[must_use]
pub fn pairwise_sub(secret: &[u8], sector: &str, identity_key: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(SUB_CONTEXT.as_bytes());
    ctx.update(sector.as_bytes());
    ctx.update(b"\n");
    ctx.update(identity_key.as_bytes());
    let tag = ctx.sign();
    let mut out = String::with_capacity(66);
    for byte in tag.as_ref() {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out.push_str("v1");
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

/// Separators inside names: hyphens and dashes, apostrophes, dots,
/// underscores and any whitespace.
fn is_name_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '\u{2010}'
                ..='\u{2015}'
                    | '\u{2212}'
                    | '\''
                    | '\u{2018}'
                    | '\u{2019}'
                    | '\u{02BC}'
                    | '.'
                    | '_'
        )
}

/// Invisible formatting characters dropped by [`normalise_name`]: soft
/// hyphen, zero-width space/joiners, word joiner and byte order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// Normalise one name: Unicode NFKD, combining marks dropped, `œ`/`æ`/`ß`
/// expanded to `OE`/`AE`/`SS`, uppercased; hyphens, apostrophes, dots,
/// underscores and whitespace are separators, each run of them becomes one
/// space, and the result is trimmed.
///
/// `"Jean-Pierre  d’Artagnan"` gives `"JEAN PIERRE D ARTAGNAN"`.
#[must_use]
pub fn normalise_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_separator = false;
    for c in s.nfkd() {
        if is_combining_mark(c) || is_invisible(c) {
            continue;
        }
        if is_name_separator(c) {
            pending_separator = true;
            continue;
        }
        if pending_separator && !out.is_empty() {
            out.push(' ');
        }
        pending_separator = false;
        match c {
            'œ' | 'Œ' => out.push_str("OE"),
            'æ' | 'Æ' => out.push_str("AE"),
            'ß' | 'ẞ' => out.push_str("SS"),
            _ => out.extend(c.to_uppercase().filter(|u| !is_combining_mark(*u))),
        }
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) const SECRET: &[u8] = b"test-secret-0123456789abcdef";

    pub(crate) fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    pub(crate) fn french_claims() -> Map<String, Value> {
        obj(json!({
            "given_name": "Angela Claire Louise",
            "family_name": "DUBOIS",
            "birthdate": "1962-08-24",
            "gender": "female",
            "birthplace": "75107",
            "birthcountry": "99100",
            "preferred_username": "Dupont",
            "email": "angela.dubois@example.fr",
        }))
    }

    pub(crate) fn with(
        mut claims: Map<String, Value>,
        key: &str,
        value: Value,
    ) -> Map<String, Value> {
        claims.insert(key.to_owned(), value);
        claims
    }

    pub(crate) fn without(mut claims: Map<String, Value>, key: &str) -> Map<String, Value> {
        claims.remove(key);
        claims
    }

    pub(crate) fn err(claims: &Map<String, Value>) -> IdentityError {
        PivotIdentity::from_claims(claims).expect_err("claims should be rejected")
    }

    pub(crate) fn inv(claim: &'static str, reason: &'static str) -> IdentityError {
        IdentityError::Invalid { claim, reason }
    }

    pub(crate) fn ok(claims: &Map<String, Value>) -> PivotIdentity {
        PivotIdentity::from_claims(claims).expect("claims should be valid")
    }

    // ---- normalise_name ----

    #[test]
    fn normalise_name_examples() {
        assert_eq!(
            normalise_name("Jean-Pierre  d’Artagnan"),
            "JEAN PIERRE D ARTAGNAN"
        );
        assert_eq!(normalise_name("Éloïse"), "ELOISE");
        assert_eq!(normalise_name("  marie  "), "MARIE");
        assert_eq!(normalise_name("François"), "FRANCOIS");
        assert_eq!(normalise_name("Lætitia"), "LAETITIA");
        assert_eq!(normalise_name("Œdipe cœur"), "OEDIPE COEUR");
        assert_eq!(normalise_name("Straße"), "STRASSE");
        assert_eq!(normalise_name("O'Neil"), "O NEIL");
        assert_eq!(normalise_name("St. John_Smith"), "ST JOHN SMITH");
        assert_eq!(normalise_name("--Anne--Sophie--"), "ANNE SOPHIE");
        assert_eq!(normalise_name("a\t-\u{00A0}b"), "A B");
        assert_eq!(normalise_name("Zoë Ångström"), "ZOE ANGSTROM");
        // Letters without a canonical decomposition are kept as they are.
        assert_eq!(normalise_name("Søren Łukasz"), "SØREN ŁUKASZ");
        assert_eq!(normalise_name(""), "");
        assert_eq!(normalise_name(" - ' "), "");
    }

    #[test]
    fn normalise_name_handles_decomposed_and_compatibility_forms() {
        // "e" + combining acute accent (already decomposed input).
        assert_eq!(normalise_name("Ele\u{0301}onore"), "ELEONORE");
        // Fullwidth letters and the "ﬁ" ligature fold through NFKD.
        assert_eq!(normalise_name("ＡＢ ﬁne"), "AB FINE");
        // Non-breaking hyphen and modifier-letter apostrophe are separators.
        assert_eq!(
            normalise_name("Anne\u{2011}Marie d\u{02BC}Arc"),
            "ANNE MARIE D ARC"
        );
        // Invisible formatting characters are dropped.
        assert_eq!(normalise_name("Jo\u{00AD}se\u{200B}ph"), "JOSEPH");
    }

    #[test]
    fn normalise_name_is_idempotent() {
        for s in [
            "Jean-Pierre  d’Artagnan",
            "Éloïse",
            "Lætitia Straße",
            "x.y_z",
        ] {
            let once = normalise_name(s);
            assert_eq!(normalise_name(&once), once);
        }
    }

    // ---- from_claims ----

    #[test]
    fn valid_french_identity() {
        let id = ok(&french_claims());
        assert_eq!(id.given_name, "Angela Claire Louise");
        assert_eq!(id.family_name, "DUBOIS");
        assert_eq!(id.birthdate, "1962-08-24");
        assert_eq!(id.gender, Gender::Female);
        assert_eq!(id.birthplace.as_deref(), Some("75107"));
        assert_eq!(id.birthcountry, "99100");
        assert_eq!(id.preferred_username.as_deref(), Some("Dupont"));
        assert_eq!(id.email.as_deref(), Some("angela.dubois@example.fr"));
    }

    #[test]
    fn names_are_trimmed() {
        let c = with(french_claims(), "given_name", json!("  Jean Pierre \t"));
        let c = with(c, "family_name", json!("\n Martin "));
        let id = ok(&c);
        assert_eq!(id.given_name, "Jean Pierre");
        assert_eq!(id.family_name, "Martin");
    }

    #[test]
    fn corsican_birthplace_is_accepted() {
        let id = ok(&with(french_claims(), "birthplace", json!("2A004")));
        assert_eq!(id.birthplace.as_deref(), Some("2A004"));
    }

    #[test]
    fn foreign_born_identity_has_no_birthplace() {
        let c = with(
            without(french_claims(), "birthplace"),
            "birthcountry",
            json!("99134"),
        );
        let id = ok(&c);
        assert_eq!(id.birthplace, None);
        assert_eq!(id.birthcountry, "99134");

        let empty = with(c.clone(), "birthplace", json!(""));
        assert_eq!(ok(&empty).birthplace, None);
        let null = with(c.clone(), "birthplace", Value::Null);
        assert_eq!(ok(&null).birthplace, None);
        // A well-formed but meaningless birthplace abroad is ignored.
        let present = with(c.clone(), "birthplace", json!("75107"));
        assert_eq!(ok(&present).birthplace, None);
        // ... but a malformed one is still rejected.
        let bad = with(c, "birthplace", json!("751"));
        assert_eq!(
            err(&bad),
            inv("birthplace", "must be 5 ASCII digits or uppercase letters")
        );
    }

    #[test]
    fn missing_required_claims() {
        for claim in [
            "given_name",
            "family_name",
            "birthdate",
            "gender",
            "birthcountry",
        ] {
            assert_eq!(
                err(&without(french_claims(), claim)),
                IdentityError::Missing(claim),
                "{claim}"
            );
            assert_eq!(
                err(&with(french_claims(), claim, Value::Null)),
                IdentityError::Missing(claim),
                "{claim} null"
            );
        }
    }

    #[test]
    fn french_birth_requires_birthplace() {
        assert_eq!(
            err(&without(french_claims(), "birthplace")),
            IdentityError::Missing("birthplace")
        );
        assert_eq!(
            err(&with(french_claims(), "birthplace", json!(""))),
            IdentityError::Missing("birthplace")
        );
    }

    #[test]
    fn bad_birthplace_format() {
        for bad in ["7510", "751070", "2a004", "75 07", "7510é"] {
            assert_eq!(
                err(&with(french_claims(), "birthplace", json!(bad))),
                inv("birthplace", "must be 5 ASCII digits or uppercase letters"),
                "{bad}"
            );
        }
    }

    #[test]
    fn non_string_values_are_invalid() {
        for claim in [
            "given_name",
            "family_name",
            "birthdate",
            "gender",
            "birthplace",
            "birthcountry",
            "preferred_username",
            "email",
        ] {
            for value in [json!(42), json!(true), json!(["x"]), json!({"a": "b"})] {
                assert_eq!(
                    err(&with(french_claims(), claim, value.clone())),
                    inv(claim, "must be a string"),
                    "{claim} = {value}"
                );
            }
        }
    }

    #[test]
    fn name_rules() {
        let c = |v: &str| with(french_claims(), "family_name", json!(v));
        assert_eq!(err(&c("")), inv("family_name", "must not be empty"));
        assert_eq!(err(&c("   ")), inv("family_name", "must not be empty"));
        assert_eq!(
            err(&c("1234 - 56")),
            inv("family_name", "must contain at least one letter")
        );
        assert_eq!(
            err(&c("\u{0345}")),
            inv("family_name", "must contain at least one letter")
        );
        assert_eq!(
            err(&c("\u{200B}")),
            inv("family_name", "must contain at least one letter")
        );
        assert_eq!(
            err(&c("Du\u{0007}bois")),
            inv("family_name", "must not contain control characters")
        );
        assert_eq!(
            err(&c("Du\nbois")),
            inv("family_name", "must not contain control characters")
        );
        // 256 characters (multi-byte) are accepted, 257 are not.
        let max = "é".repeat(256);
        assert_eq!(ok(&c(&max)).family_name.chars().count(), 256);
        let long = "é".repeat(257);
        assert_eq!(
            err(&c(&long)),
            inv("family_name", "must be at most 256 characters")
        );
        let long_given = with(french_claims(), "given_name", json!("a".repeat(257)));
        assert_eq!(
            err(&long_given),
            inv("given_name", "must be at most 256 characters")
        );
        // Trimming happens before the length check.
        assert!(PivotIdentity::from_claims(&c(&format!("  {max}  "))).is_ok());
    }

    #[test]
    fn birthdate_rules() {
        const FORMAT: &str = "must be a valid date in YYYY-MM-DD format";
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "1980-00-00",
            "1980-01-00",
            "1980-13-01",
            "1980-04-31",
            "1980-1-01",
            "80-01-01",
            "1980/01/01",
            "19800101",
            " 1980-01-01",
            "1980-01-01T00:00:00Z",
            "１９８０-01-01",
            "",
        ] {
            assert_eq!(
                err(&with(french_claims(), "birthdate", json!(bad))),
                inv("birthdate", FORMAT),
                "{bad:?}"
            );
        }
        assert_eq!(
            err(&with(french_claims(), "birthdate", json!("1799-12-31"))),
            inv("birthdate", "year must be 1800 or later")
        );
        for good in ["2024-02-29", "2000-02-29", "1800-01-01", "1999-12-31"] {
            assert_eq!(
                ok(&with(french_claims(), "birthdate", json!(good))).birthdate,
                good
            );
        }
    }

    #[test]
    fn gender_rules() {
        assert_eq!(
            ok(&with(french_claims(), "gender", json!("male"))).gender,
            Gender::Male
        );
        for bad in ["x", "M", "F", "Male", "FEMALE", " male", ""] {
            assert_eq!(
                err(&with(french_claims(), "gender", json!(bad))),
                inv("gender", "must be male or female"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn birthcountry_rules() {
        for bad in ["9910", "991000", "99-10", "FR", "９９１００", ""] {
            assert_eq!(
                err(&with(french_claims(), "birthcountry", json!(bad))),
                inv("birthcountry", "must be 5 ASCII digits"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn optional_claims() {
        let c = with(french_claims(), "preferred_username", json!("  "));
        let c = with(c, "email", json!(""));
        let id = ok(&c);
        assert_eq!(id.preferred_username, None);
        assert_eq!(id.email, None);

        let id = ok(&without(
            without(french_claims(), "email"),
            "preferred_username",
        ));
        assert_eq!(id.preferred_username, None);
        assert_eq!(id.email, None);

        assert_eq!(
            err(&with(
                french_claims(),
                "preferred_username",
                json!("a\u{0000}b")
            )),
            inv("preferred_username", "must not contain control characters")
        );
    }

    #[test]
    fn email_rules() {
        const AT: &str = "must contain exactly one @ with non-empty parts";
        for bad in ["nobody", "@example.fr", "user@", "a@b@c", "@"] {
            assert_eq!(
                err(&with(french_claims(), "email", json!(bad))),
                inv("email", AT),
                "{bad:?}"
            );
        }
        assert_eq!(
            err(&with(french_claims(), "email", json!("a b@example.fr"))),
            inv("email", "must not contain whitespace or control characters")
        );
        let id = ok(&with(french_claims(), "email", json!(" x@y ")));
        assert_eq!(id.email.as_deref(), Some("x@y"));
    }

    #[test]
    fn error_display() {
        assert_eq!(
            IdentityError::Missing("birthdate").to_string(),
            "missing claim birthdate"
        );
        assert_eq!(
            inv("gender", "must be male or female").to_string(),
            "invalid claim gender: must be male or female"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(IdentityError::Missing("gender"));
        assert_eq!(boxed.to_string(), "missing claim gender");
    }

    // ---- to_claims / serde ----

    #[test]
    fn to_claims_round_trips() {
        let id = ok(&french_claims());
        let claims = id.to_claims();
        assert_eq!(
            Value::Object(claims.clone()),
            Value::Object(french_claims())
        );
        assert_eq!(ok(&claims), id);
    }

    #[test]
    fn to_claims_omits_absent_optionals() {
        let c = with(
            without(french_claims(), "birthplace"),
            "birthcountry",
            json!("99134"),
        );
        let c = without(without(c, "email"), "preferred_username");
        let claims = ok(&c).to_claims();
        let mut keys: Vec<&str> = claims.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "birthcountry",
                "birthdate",
                "family_name",
                "gender",
                "given_name"
            ]
        );
    }

    #[test]
    fn serde_uses_lowercase_gender() {
        let id = ok(&french_claims());
        let v = serde_json::to_value(&id).unwrap();
        assert_eq!(v["gender"], json!("female"));
        let back: PivotIdentity = serde_json::from_value(v).unwrap();
        assert_eq!(back, id);
        assert_eq!(serde_json::to_string(&Gender::Male).unwrap(), "\"male\"");
    }

    // ---- identity_key / pairwise_sub ----

    #[test]
    fn identity_key_layout() {
        let id = ok(&french_claims());
        assert_eq!(
            id.identity_key(),
            "v1\nANGELA CLAIRE LOUISE\nDUBOIS\n1962-08-24\nfemale\n75107\n99100"
        );
        let abroad = ok(&with(
            without(french_claims(), "birthplace"),
            "birthcountry",
            json!("99134"),
        ));
        assert_eq!(
            abroad.identity_key(),
            "v1\nANGELA CLAIRE LOUISE\nDUBOIS\n1962-08-24\nfemale\n\n99134"
        );
    }

    #[test]
    fn same_person_spelled_differently_has_same_key_and_sub() {
        let a = ok(&obj(json!({
            "given_name": "Jean-François Éloïse",
            "family_name": "d’Artagnan",
            "birthdate": "1970-01-31",
            "gender": "male",
            "birthplace": "2A004",
            "birthcountry": "99100",
            "email": "a@example.fr",
        })));
        let b = ok(&obj(json!({
            "given_name": "  JEAN FRANCOIS  eloise ",
            "family_name": "D'ARTAGNAN",
            "birthdate": "1970-01-31",
            "gender": "male",
            "birthplace": "2A004",
            "birthcountry": "99100",
            "preferred_username": "Other",
            "email": "b@example.org",
        })));
        assert_ne!(a, b);
        assert_eq!(a.identity_key(), b.identity_key());
        assert_eq!(
            pairwise_sub(SECRET, "https://sp.example.fr", &a.identity_key()),
            pairwise_sub(SECRET, "https://sp.example.fr", &b.identity_key())
        );
    }

    #[test]
    fn different_people_have_different_keys() {
        let base = ok(&french_claims());
        let variants = [
            with(french_claims(), "given_name", json!("Angela Claire")),
            with(french_claims(), "family_name", json!("DUBOISE")),
            with(french_claims(), "birthdate", json!("1962-08-25")),
            with(french_claims(), "gender", json!("male")),
            with(french_claims(), "birthplace", json!("75108")),
            with(
                with(
                    without(french_claims(), "birthplace"),
                    "birthcountry",
                    json!("99134"),
                ),
                "birthplace",
                json!(""),
            ),
        ];
        for v in variants {
            let other = ok(&v);
            assert_ne!(other.identity_key(), base.identity_key(), "{other:?}");
        }
    }

    #[test]
    fn pairwise_sub_shape_and_separation() {
        let key = ok(&french_claims()).identity_key();
        let sub = pairwise_sub(SECRET, "sector-a", &key);
        assert_eq!(sub.len(), 66);
        assert!(sub.ends_with("v1"));
        assert!(sub
            .chars()
            .take(64)
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(sub, pairwise_sub(SECRET, "sector-a", &key));
        assert_ne!(sub, pairwise_sub(SECRET, "sector-b", &key));
        assert_ne!(sub, pairwise_sub(b"another-secret", "sector-a", &key));
        assert_ne!(sub, pairwise_sub(SECRET, "sector-a", "v1\nother"));
    }

    #[test]
    fn pairwise_sub_matches_reference_hmac() {
        // RFC 4231 test case 2 key, with our message framing.
        let sub = pairwise_sub(b"Jefe", "s", "k");
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"Jefe"),
            b"relais-sub-v1\ns\nk",
        );
        let hex = to_hex(tag.as_ref());
        assert_eq!(sub, format!("{hex}v1"));
        // And the primitive itself against RFC 4231 test case 2.
        let rfc = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"Jefe"),
            b"what do ya want for nothing?",
        );
        let rfc_hex = to_hex(rfc.as_ref());
        assert_eq!(
            rfc_hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn to_hex(bytes: &[u8]) -> String {
        use std::fmt::Write as _;
        bytes.iter().fold(String::new(), |mut acc, b| {
            write!(acc, "{b:02x}").unwrap();
            acc
        })
    }
}
