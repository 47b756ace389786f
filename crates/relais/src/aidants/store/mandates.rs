//! Usagers, mandates with their per-domain authorisations, revocation,
//! purge, and recorded uses.

use super::*;
use crate::aidants::journal::Event;
use crate::aidants::{
    valid_domain_name, Actor, Authorisation, Mandate, MandateError, NewMandate, Salt,
    MAX_DURATION_DAYS,
};
use crate::crypto::random_token;
use crate::store::{on, Result, Store};
use serde_json::json;

impl Store {
    /// The usager with this pivot identity key, created if new. Returns its id.
    pub async fn upsert_usager(
        &self,
        identity_key: &str,
        salt: &Salt,
        now: i64,
    ) -> std::result::Result<String, MandateError> {
        if identity_key.is_empty() {
            return Err(MandateError::Invalid("empty identity key".into()));
        }
        // A purge replaces the key by `purged:{id}`: such a key names no one,
        // and a person coming back gets a new, usable usager.
        if identity_key.starts_with("purged:") {
            return Err(MandateError::Invalid("invalid identity key".into()));
        }
        let id = random_token(16);
        let mut tx = self.begin_write().await?;
        let n = tx!(&mut tx, t => sqlx::query(
            "INSERT INTO usagers (id, identity_key, created_at) VALUES ($1, $2, $3) ON CONFLICT (identity_key) DO NOTHING")
            .bind(&id).bind(identity_key).bind(now)
            .execute(&mut **t).await.map(|r| r.rows_affected()))?;
        if n == 1 {
            tx.append(
                Event {
                    kind: "usager.created",
                    actor: "system",
                    org_id: None,
                    data: json!({"usager_id": id}),
                    personal: vec![("identity_key", identity_key.to_string())],
                }
                .prepare(Some(salt), now),
            )
            .await?;
            tx.commit().await?;
            return Ok(id);
        }
        let (existing,): (String,) = tx!(&mut tx, t => sqlx::query_as(
            "SELECT id FROM usagers WHERE identity_key = $1 AND purged_at IS NULL")
            .bind(identity_key).fetch_one(&mut **t).await)?;
        tx.commit().await?;
        Ok(existing)
    }

    // ---- mandates -----------------------------------------------------------

    /// Create a mandate with one authorisation per domain, valid from `now`
    /// for `duration_days`. An active authorisation for the same usager,
    /// organisation and domain is revoked (replaced) in the same
    /// transaction. The aidant must belong to the organisation, which must
    /// be active and allow every domain; `deployment_domains` is the
    /// deployment's list (`[aidants] domains`, see
    /// [`Organisation::allowed_domains`]).
    pub async fn create_mandate(
        &self,
        m: &NewMandate<'_>,
        deployment_domains: &[String],
        now: i64,
    ) -> std::result::Result<Mandate, MandateError> {
        if m.domains.is_empty() {
            return Err(MandateError::Invalid("choose at least one domain".into()));
        }
        let mut domains: Vec<&str> = Vec::new();
        for d in m.domains {
            if !valid_domain_name(d) {
                return Err(MandateError::Invalid(format!("invalid domain {d:?}")));
            }
            if domains.contains(d) {
                return Err(MandateError::Invalid(format!("domain {d} given twice")));
            }
            domains.push(d);
        }
        if !(1..=MAX_DURATION_DAYS).contains(&m.duration_days) {
            return Err(MandateError::Invalid(format!(
                "the duration must be 1 to {MAX_DURATION_DAYS} days"
            )));
        }
        if m.consent_version.is_empty() || m.consent_version.len() > 64 {
            return Err(MandateError::Invalid("invalid consent version".into()));
        }
        if m.consent_hash.is_empty() || m.consent_hash.len() > 128 {
            return Err(MandateError::Invalid("invalid consent hash".into()));
        }
        let expires_at = now + m.duration_days * 86_400;
        let mut tx = self.begin_write().await?;
        let org: Option<OrgRow> = tx!(&mut tx, t => sqlx::query_as(
            &format!("SELECT {ORG_COLUMNS} FROM organisations WHERE id = $1"))
            .bind(m.org_id).fetch_optional(&mut **t).await)?;
        let org = org_from(org.ok_or(MandateError::NotFound("organisation"))?)?;
        if !org.active {
            return Err(MandateError::Invalid(
                "the organisation is not active".into(),
            ));
        }
        let allowed = org.allowed_domains(deployment_domains);
        if let Some(d) = domains.iter().find(|d| !allowed.iter().any(|a| a == *d)) {
            return Err(MandateError::Invalid(format!(
                "domain {d} is not allowed for this organisation"
            )));
        }
        if !tx.is_member(m.aidant_id, m.org_id).await? {
            return Err(MandateError::NotAllowed);
        }
        let usager: Option<(String, Option<i64>)> = tx!(&mut tx, t => sqlx::query_as(
            "SELECT id, purged_at FROM usagers WHERE id = $1")
            .bind(m.usager_id).fetch_optional(&mut **t).await)?;
        match usager {
            None => return Err(MandateError::NotFound("usager")),
            Some((_, Some(_))) => {
                return Err(MandateError::Invalid(
                    "the usager's personal data was purged: sign the person in again to create a new usager".into(),
                ))
            }
            Some((_, None)) => {}
        }
        let id = random_token(16);
        let actor_name = Actor::Aidant(m.aidant_id.to_string()).name();
        tx!(&mut tx, t => sqlx::query(&format!(
            "INSERT INTO mandates ({MANDATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(&id).bind(m.org_id).bind(m.usager_id).bind(m.aidant_id)
            .bind(m.consent_version).bind(m.consent_hash).bind(now)
            .execute(&mut **t).await.map(|_| ()))?;
        let mut replaced = Vec::new();
        let mut authorisations = Vec::new();
        for d in &domains {
            let old: Vec<(String, String)> = tx!(&mut tx, t => sqlx::query_as(
                "UPDATE authorisations SET revoked_at = $1, revoked_by = $2 \
                 WHERE domain = $3 AND revoked_at IS NULL AND expires_at > $1 \
                 AND mandate_id IN (SELECT id FROM mandates WHERE org_id = $4 AND usager_id = $5 AND id <> $6) \
                 RETURNING id, mandate_id")
                .bind(now).bind(&actor_name).bind(*d).bind(m.org_id).bind(m.usager_id).bind(&id)
                .fetch_all(&mut **t).await)?;
            for (auth_id, mandate_id) in old {
                replaced.push(
                    json!({"authorisation_id": auth_id, "mandate_id": mandate_id, "domain": d}),
                );
            }
            let auth = Authorisation {
                id: random_token(16),
                mandate_id: id.clone(),
                domain: d.to_string(),
                starts_at: now,
                expires_at,
                revoked_at: None,
                revoked_by: None,
            };
            tx!(&mut tx, t => sqlx::query(
                "INSERT INTO authorisations (id, mandate_id, domain, starts_at, expires_at, revoked_at, revoked_by) VALUES ($1, $2, $3, $4, $5, NULL, NULL)")
                .bind(&auth.id).bind(&auth.mandate_id).bind(&auth.domain).bind(auth.starts_at).bind(auth.expires_at)
                .execute(&mut **t).await.map(|_| ()))?;
            authorisations.push(auth);
        }
        tx.record(
            "mandate.created",
            &actor_name,
            Some(m.org_id),
            json!({
                "mandate_id": id,
                "usager_id": m.usager_id,
                "domains": domains,
                "starts_at": now,
                "expires_at": expires_at,
                "consent_version": m.consent_version,
                "consent_hash": m.consent_hash,
                "replaced": replaced,
            }),
            now,
        )
        .await?;
        tx.commit().await?;
        authorisations.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(Mandate {
            id,
            org_id: m.org_id.to_string(),
            usager_id: m.usager_id.to_string(),
            created_by: m.aidant_id.to_string(),
            consent_version: m.consent_version.to_string(),
            consent_hash: m.consent_hash.to_string(),
            created_at: now,
            authorisations,
        })
    }

    pub async fn mandate(&self, id: &str) -> Result<Option<Mandate>> {
        let rows: Vec<MandateRow> = on!(self, p => sqlx::query_as(&format!(
            "SELECT {MANDATE_COLUMNS} FROM mandates WHERE id = $1"))
            .bind(id).fetch_all(p).await)?;
        let auths: Vec<AuthRow> = on!(self, p => sqlx::query_as(&format!(
            "SELECT {AUTH_COLUMNS} FROM authorisations a WHERE a.mandate_id = $1 ORDER BY a.domain, a.starts_at"))
            .bind(id).fetch_all(p).await)?;
        Ok(mandates_from(rows, auths).into_iter().next())
    }

    /// Every mandate of an organisation (newest first), whatever its state.
    pub async fn list_mandates(&self, org_id: &str) -> Result<Vec<Mandate>> {
        self.mandates_where("org_id", org_id).await
    }

    /// Every mandate about an usager (newest first), whatever its state.
    pub async fn usager_mandates(&self, usager_id: &str) -> Result<Vec<Mandate>> {
        self.mandates_where("usager_id", usager_id).await
    }

    pub(super) async fn mandates_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Vec<Mandate>> {
        let rows: Vec<MandateRow> = on!(self, p => sqlx::query_as(&format!(
            "SELECT {MANDATE_COLUMNS} FROM mandates WHERE {column} = $1 ORDER BY created_at DESC, id"))
            .bind(value).fetch_all(p).await)?;
        let auths: Vec<AuthRow> = on!(self, p => sqlx::query_as(&format!(
            "SELECT {AUTH_COLUMNS} FROM authorisations a JOIN mandates m ON m.id = a.mandate_id WHERE m.{column} = $1 ORDER BY a.domain, a.starts_at"))
            .bind(value).fetch_all(p).await)?;
        Ok(mandates_from(rows, auths))
    }

    /// Whether the mandate currently authorises acting in `domain`: not
    /// revoked, started, not expired, and its organisation active.
    pub async fn active_authorisation(
        &self,
        mandate_id: &str,
        domain: &str,
        now: i64,
    ) -> Result<bool> {
        let row: Option<(String,)> = on!(self, p => sqlx::query_as(
            "SELECT a.id FROM authorisations a \
             JOIN mandates m ON m.id = a.mandate_id \
             JOIN organisations o ON o.id = m.org_id \
             WHERE a.mandate_id = $1 AND a.domain = $2 AND a.revoked_at IS NULL \
             AND a.starts_at <= $3 AND a.expires_at > $3 AND o.active = 1 LIMIT 1")
            .bind(mandate_id).bind(domain).bind(now).fetch_optional(p).await)?;
        Ok(row.is_some())
    }

    /// Revoke every active authorisation of a mandate. Allowed to the
    /// operator, to aidants of the mandate's organisation and to the usager
    /// concerned. Returns the domains revoked.
    pub async fn revoke_mandate(
        &self,
        mandate_id: &str,
        actor: &Actor,
        now: i64,
    ) -> std::result::Result<Vec<String>, MandateError> {
        self.revoke(mandate_id, None, actor, now).await
    }

    /// Revoke one domain of a mandate (same rules as [`Store::revoke_mandate`]).
    pub async fn revoke_domain(
        &self,
        mandate_id: &str,
        domain: &str,
        actor: &Actor,
        now: i64,
    ) -> std::result::Result<Vec<String>, MandateError> {
        self.revoke(mandate_id, Some(domain), actor, now).await
    }

    pub(super) async fn revoke(
        &self,
        mandate_id: &str,
        domain: Option<&str>,
        actor: &Actor,
        now: i64,
    ) -> std::result::Result<Vec<String>, MandateError> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, String)> = tx!(&mut tx, t => sqlx::query_as(
            "SELECT org_id, usager_id FROM mandates WHERE id = $1")
            .bind(mandate_id).fetch_optional(&mut **t).await)?;
        let (org_id, usager_id) = row.ok_or(MandateError::NotFound("mandate"))?;
        let allowed = match actor {
            Actor::Admin => true,
            // Scheduled tasks never revoke.
            Actor::System => false,
            Actor::Usager(u) => *u == usager_id,
            Actor::Aidant(a) => tx.is_member(a, &org_id).await?,
        };
        if !allowed {
            return Err(MandateError::NotAllowed);
        }
        let actor_name = actor.name();
        let rows: Vec<(String,)> = tx!(&mut tx, t => sqlx::query_as(
            "UPDATE authorisations SET revoked_at = $1, revoked_by = $2 \
             WHERE mandate_id = $3 AND revoked_at IS NULL AND expires_at > $1 \
             AND ($4 IS NULL OR domain = $4) RETURNING domain")
            .bind(now).bind(&actor_name).bind(mandate_id).bind(domain)
            .fetch_all(&mut **t).await)?;
        let mut domains: Vec<String> = rows.into_iter().map(|r| r.0).collect();
        domains.sort();
        if domains.is_empty() {
            return Ok(domains);
        }
        tx.record(
            if domain.is_some() {
                "authorisation.revoked"
            } else {
                "mandate.revoked"
            },
            &actor_name,
            Some(&org_id),
            json!({"mandate_id": mandate_id, "usager_id": usager_id, "domains": domains}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(domains)
    }

    // ---- operations ---------------------------------------------------------

    /// Retention purge: for every usager whose mandates all ended (expired,
    /// or revoked before expiring) at or before `now - retention_days`, and
    /// who was created before that, remove the personal data: the claims
    /// become NULL and the identity key becomes `purged:{usager id}` (which
    /// identifies no one). The usager row, its random id, its mandates and
    /// the journal stay, so the journal still verifies and the history of
    /// mandates stays readable without naming the person. Journals
    /// `usagers.purged` with counts only. Returns how many were purged.
    pub async fn purge_usagers(
        &self,
        retention_days: i64,
        actor: &Actor,
        now: i64,
    ) -> std::result::Result<u64, MandateError> {
        if retention_days < 1 {
            return Err(MandateError::Invalid(
                "the retention period must be at least 1 day".into(),
            ));
        }
        let cutoff = now.saturating_sub(retention_days.saturating_mul(86_400));
        let mut tx = self.begin_write().await?;
        let ids: Vec<(String, i64)> = tx!(&mut tx, t => sqlx::query_as(
            "SELECT u.id, (SELECT COUNT(*) FROM mandates m WHERE m.usager_id = u.id) FROM usagers u \
             WHERE u.purged_at IS NULL AND u.created_at <= $1 AND NOT EXISTS ( \
               SELECT 1 FROM authorisations a JOIN mandates m ON m.id = a.mandate_id \
               WHERE m.usager_id = u.id AND \
                 (CASE WHEN a.revoked_at IS NOT NULL AND a.revoked_at < a.expires_at \
                       THEN a.revoked_at ELSE a.expires_at END) > $1) \
             ORDER BY u.id")
            .bind(cutoff).fetch_all(&mut **t).await)?;
        let n = ids.len() as u64;
        let mut mandates = 0i64;
        for (id, count) in &ids {
            tx!(&mut tx, t => sqlx::query(
                "UPDATE usagers SET identity_key = $1, claims = NULL, purged_at = $2 WHERE id = $3")
                .bind(format!("purged:{id}")).bind(now).bind(id)
                .execute(&mut **t).await.map(|_| ()))?;
            mandates += count;
        }
        tx.record(
            "usagers.purged",
            &actor.name(),
            None,
            json!({
                "usagers": n,
                "mandates": mandates,
                "retention_days": retention_days,
                "ended_before": cutoff,
            }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Whether an usager's personal data was purged, and when.
    pub async fn usager_purged_at(&self, usager_id: &str) -> Result<Option<i64>> {
        let row: Option<(Option<i64>,)> = on!(self, p => sqlx::query_as(
            "SELECT purged_at FROM usagers WHERE id = $1")
            .bind(usager_id).fetch_optional(p).await)?;
        Ok(row.and_then(|r| r.0))
    }

    /// Remember the usager's pivot identity claims (JSON object text), so a
    /// service can receive them when an aidant acts for the usager.
    pub async fn set_usager_claims(&self, usager_id: &str, claims_json: &str) -> Result<()> {
        on!(self, p => sqlx::query("UPDATE usagers SET claims = $1 WHERE id = $2")
            .bind(claims_json).bind(usager_id).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// The usager id for a pivot identity key, if that person is known.
    pub async fn usager_by_identity_key(&self, identity_key: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = on!(self, p => sqlx::query_as(
            "SELECT id FROM usagers WHERE identity_key = $1")
            .bind(identity_key).fetch_optional(p).await)?;
        Ok(row.map(|(id,)| id))
    }

    /// An usager's identity key and stored claims (JSON text, if any).
    pub async fn usager(&self, usager_id: &str) -> Result<Option<(String, Option<String>)>> {
        let row: Option<(String, Option<String>)> = on!(self, p => sqlx::query_as(
            "SELECT identity_key, claims FROM usagers WHERE id = $1")
            .bind(usager_id).fetch_optional(p).await)?;
        Ok(row)
    }

    /// Journal the use of a mandate at a service (`mandate_used`).
    pub async fn record_mandate_use(
        &self,
        aidant_id: &str,
        org_id: &str,
        mandate_id: &str,
        client_id: &str,
        domain: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.record(
            "mandate_used",
            &Actor::Aidant(aidant_id.to_string()).name(),
            Some(org_id),
            json!({"mandate_id": mandate_id, "client": client_id, "domain": domain}),
            now,
        )
        .await?;
        tx.commit().await
    }
}
