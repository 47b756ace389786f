//! The mandate rules, as pure functions: the consent text and its version,
//! the durations offered, the attestation and revocation hashes, and when a
//! mandate may be renewed by an aidant alone.

use crate::aidants::journal::sha256_hex;
use crate::aidants::{Mandate, Organisation};
use serde_json::{json, Value};

/// Version of the consent text shown on the recap.
pub const CONSENT_VERSION: &str = "relais-mandat-v1";
/// The consent text the usager is informed of (its SHA-256 is stored).
pub const CONSENT_TEXT: &str =
    "J'autorise la structure nommée ci-dessus, par ses aidants professionnels, \
à réaliser en mon nom les démarches en ligne des domaines listés, jusqu'à la date de fin indiquée. \
Je peux révoquer ce mandat à tout moment. Chaque utilisation est enregistrée dans un journal. \
(I authorise the organisation named above, through its professional helpers, to carry out on my \
behalf the online procedures of the listed domains until the end date. I can revoke this mandate \
at any time. Every use is recorded in a journal.)";

/// Durations offered: (days, label).
pub const DURATIONS: [(i64, &str); 4] = [
    (1, "1 jour (1 day)"),
    (30, "1 mois (1 month)"),
    (182, "6 mois (6 months)"),
    (365, "12 mois (12 months)"),
];

/// SHA-256 (hex) of the canonical mandate record printed on the
/// attestation: id, organisation, usager id, creating aidant, consent
/// version and hash, creation time and each domain with its dates.
pub fn attestation_hash(m: &Mandate, org: &Organisation) -> String {
    let auths: Vec<Value> = m
        .authorisations
        .iter()
        .map(|a| json!([a.domain, a.starts_at, a.expires_at]))
        .collect();
    let record = json!([
        "relais-mandate-attestation-v1",
        m.id,
        org.siret,
        org.name,
        m.usager_id,
        m.created_by,
        m.consent_version,
        m.consent_hash,
        m.created_at,
        auths
    ]);
    sha256_hex(record.to_string().as_bytes())
}

/// SHA-256 (hex) of the canonical revocation record: the mandate id and,
/// for each revoked domain, its revocation time and author.
pub fn revocation_hash(m: &Mandate, org: &Organisation) -> String {
    let revoked: Vec<Value> = m
        .authorisations
        .iter()
        .filter_map(|a| {
            a.revoked_at
                .map(|at| json!([a.domain, a.starts_at, a.expires_at, at, a.revoked_by]))
        })
        .collect();
    let record = json!([
        "relais-mandate-revocation-v1",
        m.id,
        org.siret,
        m.usager_id,
        revoked
    ]);
    sha256_hex(record.to_string().as_bytes())
}

/// How long after its expiry a mandate may be renewed.
pub const RENEWABLE_WITHIN_SECS: i64 = 365 * 86_400;

/// Why a mandate cannot be renewed by an aidant alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRenewable {
    /// A domain is still active (nothing to renew).
    StillActive,
    /// A domain was revoked (by the usager, an administrator or an aidant):
    /// only a new mandate, with the usager's own sign-in, may follow.
    Revoked,
    /// It expired more than [`RENEWABLE_WITHIN_SECS`] ago (or has no domain).
    TooOld,
    /// A later mandate for the same usager and organisation exists (it was
    /// renewed already): renewing the old one again could undo what became
    /// of the later one.
    Superseded,
}

/// Whether an aidant may renew a mandate without the usager signing in:
/// only a mandate that ended **by expiry**, every domain expired and none
/// revoked, less than a year ago. A revocation is the usager's (or an
/// administrator's) decision; renewing it would undo it.
pub fn renewal_rule(m: &Mandate, now: i64) -> Result<(), NotRenewable> {
    if m.authorisations.iter().any(|a| a.revoked_at.is_some()) {
        return Err(NotRenewable::Revoked);
    }
    if m.authorisations
        .iter()
        .any(|a| a.is_active(now) || now < a.starts_at)
    {
        return Err(NotRenewable::StillActive);
    }
    match m.authorisations.iter().map(|a| a.expires_at).max() {
        Some(ended) if ended <= now && now - ended < RENEWABLE_WITHIN_SECS => Ok(()),
        _ => Err(NotRenewable::TooOld),
    }
}

/// Whether a later mandate of `org_mandates` (the organisation's) exists for
/// the same usager: `m` was renewed, or replaced by a new mandate.
pub fn superseded(m: &Mandate, org_mandates: &[Mandate]) -> bool {
    org_mandates
        .iter()
        .any(|o| o.id != m.id && o.usager_id == m.usager_id && o.created_at >= m.created_at)
}

/// [`renewal_rule`] as a yes/no.
pub fn renewable(m: &Mandate, now: i64) -> bool {
    renewal_rule(m, now).is_ok()
}

/// The offered duration closest to the mandate's original one.
pub fn original_duration(m: &Mandate) -> i64 {
    let days = m
        .authorisations
        .first()
        .map(|a| (a.expires_at - a.starts_at) / 86_400)
        .unwrap_or(1);
    DURATIONS
        .iter()
        .map(|(d, _)| *d)
        .min_by_key(|d| (d - days).abs())
        .unwrap_or(1)
}

/// What one sign-in check decides, from what was verified (pure; the
/// reads, the argon2 run and the atomic failure count are the store's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDecision {
    /// Accepted: this TOTP step is consumed.
    Accept(i64),
    /// Refused and counted towards the account lock.
    RefuseCounted,
    /// Refused without counting: the right password (if one was asked) and
    /// a genuine code whose step was just consumed — a double submission
    /// or a replay, not a guess.
    RefuseNotCounted,
}

/// The decision after the checks: `password_ok` (true when no password
/// was asked), `step` the TOTP step the code matched (a step after the
/// last one used), `already_used` whether the code is genuine but its step
/// was consumed already. A lock is decided before (an account locked is
/// refused without checks).
pub fn login_decision(password_ok: bool, step: Option<i64>, already_used: bool) -> LoginDecision {
    match (password_ok, step) {
        (true, Some(step)) => LoginDecision::Accept(step),
        (true, None) if already_used => LoginDecision::RefuseNotCounted,
        _ => LoginDecision::RefuseCounted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aidants::Authorisation;

    fn mandate(auths: &[(i64, i64, Option<i64>)]) -> Mandate {
        Mandate {
            id: "m".into(),
            org_id: "o".into(),
            usager_id: "u".into(),
            created_by: "a".into(),
            consent_version: "v".into(),
            consent_hash: "h".into(),
            created_at: 0,
            authorisations: auths
                .iter()
                .enumerate()
                .map(|(i, (starts, expires, revoked))| Authorisation {
                    id: format!("a{i}"),
                    mandate_id: "m".into(),
                    domain: format!("d{i}"),
                    starts_at: *starts,
                    expires_at: *expires,
                    revoked_at: *revoked,
                    revoked_by: revoked.map(|_| "usager:u".into()),
                })
                .collect(),
        }
    }

    #[test]
    fn only_an_expiry_is_renewable() {
        let day = 86_400;
        // Expired yesterday: renewable.
        assert_eq!(
            renewal_rule(&mandate(&[(0, 10 * day, None)]), 11 * day),
            Ok(())
        );
        // Still active, or one domain still active.
        assert_eq!(
            renewal_rule(&mandate(&[(0, 10 * day, None)]), 5 * day),
            Err(NotRenewable::StillActive)
        );
        assert_eq!(
            renewal_rule(
                &mandate(&[(0, 10 * day, None), (0, 20 * day, None)]),
                11 * day
            ),
            Err(NotRenewable::StillActive)
        );
        // Revoked, even long expired since, or one domain of several.
        assert_eq!(
            renewal_rule(&mandate(&[(0, 10 * day, Some(day))]), 11 * day),
            Err(NotRenewable::Revoked)
        );
        assert_eq!(
            renewal_rule(
                &mandate(&[(0, 10 * day, None), (0, 10 * day, Some(2 * day))]),
                11 * day
            ),
            Err(NotRenewable::Revoked)
        );
        // More than a year after the end, or no domain at all.
        assert_eq!(
            renewal_rule(
                &mandate(&[(0, 10 * day, None)]),
                10 * day + RENEWABLE_WITHIN_SECS
            ),
            Err(NotRenewable::TooOld)
        );
        assert_eq!(renewal_rule(&mandate(&[]), day), Err(NotRenewable::TooOld));
    }

    #[test]
    fn login_decisions() {
        assert_eq!(
            login_decision(true, Some(7), false),
            LoginDecision::Accept(7)
        );
        // A replayed or double-submitted genuine code is not a guess.
        assert_eq!(
            login_decision(true, None, true),
            LoginDecision::RefuseNotCounted
        );
        // A wrong code, or any code with a wrong password, counts.
        assert_eq!(
            login_decision(true, None, false),
            LoginDecision::RefuseCounted
        );
        assert_eq!(
            login_decision(false, Some(7), false),
            LoginDecision::RefuseCounted
        );
        assert_eq!(
            login_decision(false, None, true),
            LoginDecision::RefuseCounted
        );
    }
}
