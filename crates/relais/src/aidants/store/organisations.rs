//! Organisations (structures) and aidant memberships.

use super::*;
use crate::aidants::{valid_domain_name, Actor, MandateError, OrgMember, Organisation, Role};
use crate::crypto::random_token;
use crate::store::{on, Result, Store};
use crate::subject::agent::identity::valid_siret;
use serde_json::json;

impl Store {
    /// Create an organisation. The SIRET must be 14 digits passing the Luhn
    /// check; `domains` empty means the deployment's list (`[aidants]
    /// domains`; the command line checks a given list against it).
    pub async fn create_organisation(
        &self,
        name: &str,
        siret: &str,
        domains: &[String],
        actor: &Actor,
        now: i64,
    ) -> std::result::Result<Organisation, MandateError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(MandateError::Invalid(
                "the organisation name must have 1 to 200 characters".into(),
            ));
        }
        let siret: String = siret.chars().filter(|c| !c.is_whitespace()).collect();
        if !valid_siret(&siret) {
            return Err(MandateError::Invalid(format!(
                "invalid SIRET {siret:?}: 14 digits passing the Luhn check expected"
            )));
        }
        let mut list: Vec<String> = Vec::new();
        for d in domains {
            let d = d.trim().to_string();
            if !valid_domain_name(&d) {
                return Err(MandateError::Invalid(format!("invalid domain {d:?}")));
            }
            if !list.contains(&d) {
                list.push(d);
            }
        }
        let domains_json = serde_json::to_string(&list)
            .map_err(|e| MandateError::Invalid(format!("domains: {e}")))?;
        let id = random_token(16);
        let mut tx = self.begin_write().await?;
        let n = tx!(&mut tx, t => sqlx::query(
            "INSERT INTO organisations (id, name, siret, active, domains, created_at) VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (siret) DO NOTHING")
            .bind(&id).bind(name).bind(&siret).bind(&domains_json).bind(now)
            .execute(&mut **t).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(MandateError::Conflict(format!(
                "an organisation with SIRET {siret} already exists"
            )));
        }
        tx.record(
            "organisation.created",
            &actor.name(),
            Some(&id),
            json!({"name": name, "siret": siret, "domains": list}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Organisation {
            id,
            name: name.to_string(),
            siret,
            active: true,
            domains: list,
            created_at: now,
        })
    }

    pub async fn list_organisations(&self) -> Result<Vec<Organisation>> {
        let rows: Vec<OrgRow> = on!(self, p => sqlx::query_as(
            &format!("SELECT {ORG_COLUMNS} FROM organisations ORDER BY name, siret"))
            .fetch_all(p).await)?;
        rows.into_iter().map(org_from).collect()
    }

    pub async fn organisation_by_siret(&self, siret: &str) -> Result<Option<Organisation>> {
        let siret: String = siret.chars().filter(|c| !c.is_whitespace()).collect();
        let row: Option<OrgRow> = on!(self, p => sqlx::query_as(
            &format!("SELECT {ORG_COLUMNS} FROM organisations WHERE siret = $1"))
            .bind(&siret).fetch_optional(p).await)?;
        row.map(org_from).transpose()
    }

    pub async fn organisation(&self, id: &str) -> Result<Option<Organisation>> {
        let row: Option<OrgRow> = on!(self, p => sqlx::query_as(
            &format!("SELECT {ORG_COLUMNS} FROM organisations WHERE id = $1"))
            .bind(id).fetch_optional(p).await)?;
        row.map(org_from).transpose()
    }

    // ---- aidants ------------------------------------------------------------

    /// Add an aidant to an organisation, or change their role there.
    pub async fn add_aidant_to_org(
        &self,
        aidant_id: &str,
        org_id: &str,
        role: Role,
        actor: &Actor,
        now: i64,
    ) -> std::result::Result<(), MandateError> {
        let mut tx = self.begin_write().await?;
        if !tx
            .exists("SELECT id FROM organisations WHERE id = $1", org_id)
            .await?
        {
            return Err(MandateError::NotFound("organisation"));
        }
        if !tx
            .exists("SELECT id FROM aidants WHERE id = $1", aidant_id)
            .await?
        {
            return Err(MandateError::NotFound("aidant"));
        }
        tx!(&mut tx, t => sqlx::query(
            "INSERT INTO aidant_orgs (aidant_id, org_id, role) VALUES ($1, $2, $3) ON CONFLICT (aidant_id, org_id) DO UPDATE SET role = excluded.role")
            .bind(aidant_id).bind(org_id).bind(role.as_str())
            .execute(&mut **t).await.map(|_| ()))?;
        tx!(&mut tx, t => sqlx::query(
            "UPDATE aidants SET current_org = $1 WHERE id = $2 AND current_org IS NULL")
            .bind(org_id).bind(aidant_id)
            .execute(&mut **t).await.map(|_| ()))?;
        tx.record(
            "aidant.org_added",
            &actor.name(),
            Some(org_id),
            json!({"aidant_id": aidant_id, "role": role.as_str()}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Make `org_id` the aidant's current organisation (they must belong to it).
    pub async fn switch_organisation(
        &self,
        aidant_id: &str,
        org_id: &str,
        now: i64,
    ) -> std::result::Result<(), MandateError> {
        let mut tx = self.begin_write().await?;
        if !tx.is_member(aidant_id, org_id).await? {
            return Err(MandateError::NotAllowed);
        }
        tx!(&mut tx, t => sqlx::query("UPDATE aidants SET current_org = $1 WHERE id = $2")
            .bind(org_id).bind(aidant_id).execute(&mut **t).await.map(|_| ()))?;
        tx.record(
            "aidant.org_switched",
            &Actor::Aidant(aidant_id.to_string()).name(),
            Some(org_id),
            json!({"aidant_id": aidant_id}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The aidants of an organisation with their role, by e-mail.
    pub async fn org_aidants(&self, org_id: &str) -> Result<Vec<OrgMember>> {
        let rows: Vec<(String, String, String)> = on!(self, p => sqlx::query_as(
            "SELECT a.id, a.email, o.role FROM aidants a JOIN aidant_orgs o ON o.aidant_id = a.id WHERE o.org_id = $1 ORDER BY a.email")
            .bind(org_id).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(aidant_id, email, r)| {
                Role::parse(&r).map(|role| OrgMember {
                    aidant_id,
                    email,
                    role,
                })
            })
            .collect())
    }

    /// Activate or deactivate an organisation. While inactive, none of its
    /// mandates authorises anything and no mandate can be created for it.
    /// Returns false when it already had that state (nothing journalled).
    pub async fn set_organisation_active(
        &self,
        org_id: &str,
        active: bool,
        actor: &Actor,
        now: i64,
    ) -> std::result::Result<bool, MandateError> {
        let mut tx = self.begin_write().await?;
        let row: Option<(i64,)> = tx!(&mut tx, t => sqlx::query_as(
            "SELECT active FROM organisations WHERE id = $1")
            .bind(org_id).fetch_optional(&mut **t).await)?;
        let (current,) = row.ok_or(MandateError::NotFound("organisation"))?;
        if (current != 0) == active {
            return Ok(false);
        }
        tx!(&mut tx, t => sqlx::query("UPDATE organisations SET active = $1 WHERE id = $2")
            .bind(i64::from(active)).bind(org_id).execute(&mut **t).await.map(|_| ()))?;
        tx.record(
            if active {
                "organisation.activated"
            } else {
                "organisation.deactivated"
            },
            &actor.name(),
            Some(org_id),
            json!({"org_id": org_id}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The organisations an aidant belongs to, with their role, sorted by
    /// organisation id.
    pub async fn aidant_memberships(&self, aidant_id: &str) -> Result<Vec<(String, Role)>> {
        let rows: Vec<(String, String)> = on!(self, p => sqlx::query_as(
            "SELECT org_id, role FROM aidant_orgs WHERE aidant_id = $1 ORDER BY org_id")
            .bind(aidant_id).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(o, r)| Role::parse(&r).map(|r| (o, r)))
            .collect())
    }
}
