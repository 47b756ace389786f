//! Storage for aidants (see `crate::mandates`): organisations, aidants,
//! usagers, mandates with their per-domain authorisations, and the journal.
//!
//! Every action runs in one write transaction together with its journal
//! entry, so an action is never recorded without happening nor the reverse.
//! Write transactions are serialised: `BEGIN IMMEDIATE` on SQLite, and on
//! PostgreSQL `LOCK TABLE journal IN EXCLUSIVE MODE` as their first
//! statement (readers are not blocked). The journal's next `seq` and
//! `prev_hash` are read under that lock, so concurrent appends never fork
//! the chain, and "one active authorisation per (usager, organisation,
//! domain)" holds without races.

use super::{Backend, Result, Store, StoreError};
use crate::agent::identity::{normalise_email, valid_siret};
use crate::crypto::random_token;
use crate::crypto::secrets::{hash_secret, verify_secret};
use crate::mandates::journal::{sha256_hex, Entry, Event, Head, Pending};
use crate::mandates::secret::Opened;
use crate::mandates::{
    totp, valid_domain_name, Actor, Aidant, AidantCreated, AidantLogin, Authorisation, Enrolment,
    LoginError, Mandate, MandateError, NewAidant, NewMandate, Organisation, PendingEnrolment, Role,
    Salt, TotpKey, ENROLMENT_TTL_SECS, LOCK_SECS, MAX_DURATION_DAYS, MAX_FAILED_ATTEMPTS,
    MIN_PASSWORD_CHARS,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A write transaction on either backend.
enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Run `$body` with `$t` bound to the transaction, whatever the backend.
macro_rules! tx {
    ($tx:expr, $t:ident => $body:expr) => {
        match $tx {
            Tx::Sqlite($t) => $body,
            Tx::Postgres($t) => $body,
        }
    };
}

impl Tx {
    async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    /// Append to the journal after its current last entry.
    async fn append(&mut self, pending: Pending) -> Result<Entry> {
        let last: Option<(i64, String)> = tx!(self, t => sqlx::query_as(
            "SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **t).await)?;
        let e = pending.seal(last);
        tx!(self, t => sqlx::query(
            "INSERT INTO journal (seq, at, kind, actor, org_id, data_hash, data, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(e.seq).bind(e.at).bind(&e.kind).bind(&e.actor).bind(e.org_id.as_deref())
            .bind(&e.data_hash).bind(&e.data).bind(&e.prev_hash).bind(&e.hash)
            .execute(&mut **t).await.map(|_| ()))?;
        Ok(e)
    }

    /// Append an event without personal fields.
    async fn record(
        &mut self,
        kind: &str,
        actor: &str,
        org_id: Option<&str>,
        data: serde_json::Value,
        now: i64,
    ) -> Result<Entry> {
        let event = Event {
            kind,
            actor,
            org_id,
            data,
            personal: vec![],
        };
        self.append(event.prepare(None, now)).await
    }

    /// Whether `sql` (selecting by `$1`) finds a row.
    async fn exists(&mut self, sql: &str, id: &str) -> Result<bool> {
        let row: Option<(String,)> = tx!(self, t => sqlx::query_as(sql)
            .bind(id).fetch_optional(&mut **t).await)?;
        Ok(row.is_some())
    }

    /// Whether the aidant belongs to the organisation.
    async fn is_member(&mut self, aidant_id: &str, org_id: &str) -> Result<bool> {
        let member: Option<(String,)> = tx!(self, t => sqlx::query_as(
            "SELECT role FROM aidant_orgs WHERE aidant_id = $1 AND org_id = $2")
            .bind(aidant_id).bind(org_id).fetch_optional(&mut **t).await)?;
        Ok(member.is_some())
    }

    /// Give the aidant `email` the TOTP secret `secret` (sealed here) and
    /// unlock the account; their unused enrolment links, which would
    /// otherwise replace it, stop working. Returns (id, current_org).
    async fn replace_secret(
        &mut self,
        email: &str,
        key: &TotpKey,
        secret: &str,
    ) -> std::result::Result<(String, Option<String>), MandateError> {
        let row: Option<(String, Option<String>)> = tx!(self, t => sqlx::query_as(
            "SELECT id, current_org FROM aidants WHERE email = $1")
            .bind(email).fetch_optional(&mut **t).await)?;
        let (id, current_org) = row.ok_or(MandateError::NotFound("aidant"))?;
        let sealed = key.seal(&id, secret).map_err(StoreError::Other)?;
        tx!(self, t => sqlx::query(
            "UPDATE aidants SET totp_secret = $1, failed_attempts = 0, locked_until = 0 WHERE id = $2")
            .bind(&sealed).bind(&id).execute(&mut **t).await.map(|_| ()))?;
        tx!(self, t => sqlx::query(
            "DELETE FROM aidant_enrolments WHERE aidant_id = $1 AND used_at IS NULL")
            .bind(&id).execute(&mut **t).await.map(|_| ()))?;
        Ok((id, current_org))
    }
}

type OrgRow = (String, String, String, i64, String, i64);
type AuthRow = (
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
);
type SecretRow = (String, String, String, i64, i64, Option<String>);
type MandateRow = (String, String, String, String, String, String, i64);

fn org_from(row: OrgRow) -> Result<Organisation> {
    let (id, name, siret, active, domains, created_at) = row;
    let domains: Vec<String> = serde_json::from_str(&domains)
        .map_err(|e| StoreError::Other(format!("organisation {id}: bad domains: {e}")))?;
    Ok(Organisation {
        id,
        name,
        siret,
        active: active != 0,
        domains,
        created_at,
    })
}

fn auth_from(row: AuthRow) -> Authorisation {
    let (id, mandate_id, domain, starts_at, expires_at, revoked_at, revoked_by) = row;
    Authorisation {
        id,
        mandate_id,
        domain,
        starts_at,
        expires_at,
        revoked_at,
        revoked_by,
    }
}

fn mandates_from(rows: Vec<MandateRow>, auths: Vec<AuthRow>) -> Vec<Mandate> {
    let mut by_mandate: HashMap<String, Vec<Authorisation>> = HashMap::new();
    for a in auths {
        let a = auth_from(a);
        by_mandate.entry(a.mandate_id.clone()).or_default().push(a);
    }
    rows.into_iter()
        .map(
            |(id, org_id, usager_id, created_by, consent_version, consent_hash, created_at)| {
                let authorisations = by_mandate.remove(&id).unwrap_or_default();
                Mandate {
                    id,
                    org_id,
                    usager_id,
                    created_by,
                    consent_version,
                    consent_hash,
                    created_at,
                    authorisations,
                }
            },
        )
        .collect()
}

impl From<crate::crypto::gate::GateError> for StoreError {
    fn from(e: crate::crypto::gate::GateError) -> StoreError {
        match e {
            crate::crypto::gate::GateError::Busy => StoreError::Unavailable(e.to_string()),
            crate::crypto::gate::GateError::Worker(_) => StoreError::Other(e.to_string()),
        }
    }
}

/// A hash to verify against when the e-mail is unknown, so that an unknown
/// account costs the same argon2 run as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_secret("relais-no-such-aidant").unwrap_or_else(|_| String::new()))
}

/// Decrypt a stored TOTP secret. A secret that does not decrypt is an
/// operator problem (another `totp-key`, a row moved to another aidant), not
/// a wrong code: it is reported as a store error, and logged.
fn open_secret(key: &TotpKey, aidant_id: &str, stored: &str) -> Result<Opened> {
    key.open(aidant_id, stored).map_err(|e| {
        tracing::error!(aidant = %aidant_id, error = %e, "aidant TOTP secret unreadable");
        StoreError::Other(format!("TOTP secret of aidant {aidant_id}: {e}"))
    })
}

/// Encrypt a secret still stored as is (older rows), in the transaction of
/// the sign-in that used it.
async fn reseal_if_plain(
    tx: &mut Tx,
    key: &TotpKey,
    aidant_id: &str,
    stored: &str,
    opened: &Opened,
) -> Result<()> {
    if let Opened::Plain(secret) = opened {
        let sealed = key.seal(aidant_id, secret).map_err(StoreError::Other)?;
        tx!(tx, t => sqlx::query(
            "UPDATE aidants SET totp_secret = $1 WHERE id = $2 AND totp_secret = $3")
            .bind(&sealed).bind(aidant_id).bind(stored)
            .execute(&mut **t).await.map(|_| ()))?;
    }
    Ok(())
}

const ORG_COLUMNS: &str = "id, name, siret, active, domains, created_at";
const MANDATE_COLUMNS: &str =
    "id, org_id, usager_id, created_by, consent_version, consent_hash, created_at";
const AUTH_COLUMNS: &str =
    "a.id, a.mandate_id, a.domain, a.starts_at, a.expires_at, a.revoked_at, a.revoked_by";

impl Store {
    /// The same argon2 run as a wrong password, for an unknown or locked
    /// account (through the gate, like every run).
    async fn burn_argon2(
        &self,
        password: &str,
    ) -> std::result::Result<(), crate::crypto::gate::GateError> {
        let password = password.to_string();
        self.argon2
            .run(move || verify_secret(dummy_hash(), &password))
            .await
            .map(|_| ())
    }

    /// Begin a write transaction serialised with every other one (and with
    /// journal appends).
    async fn begin_write(&self) -> Result<Tx> {
        match &self.backend {
            Backend::Sqlite(p) => Ok(Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?)),
            Backend::Postgres(p) => {
                let mut t = p.begin().await?;
                sqlx::query("LOCK TABLE journal IN EXCLUSIVE MODE")
                    .execute(&mut *t)
                    .await?;
                Ok(Tx::Postgres(t))
            }
        }
    }

    // ---- journal ------------------------------------------------------------

    /// Append one entry in its own transaction.
    pub async fn journal_append(&self, pending: Pending) -> Result<Entry> {
        let mut tx = self.begin_write().await?;
        let e = tx.append(pending).await?;
        tx.commit().await?;
        Ok(e)
    }

    /// (seq, hash) of the last entry.
    pub async fn journal_last(&self) -> Result<Option<(i64, String)>> {
        let row: Option<(i64, String)> = on!(self, p => sqlx::query_as(
            "SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1")
            .fetch_optional(p).await)?;
        Ok(row)
    }

    /// Up to `limit` entries with `seq > after`, in order.
    pub async fn journal_page(&self, after: i64, limit: i64) -> Result<Vec<Entry>> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            i64,
            i64,
            String,
            String,
            Option<String>,
            String,
            String,
            String,
            String,
        )> = on!(self, p => sqlx::query_as(
                "SELECT seq, at, kind, actor, org_id, data_hash, data, prev_hash, hash FROM journal WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after).bind(limit).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(
                |(seq, at, kind, actor, org_id, data_hash, data, prev_hash, hash)| Entry {
                    seq,
                    at,
                    kind,
                    actor,
                    org_id,
                    data_hash,
                    data,
                    prev_hash,
                    hash,
                },
            )
            .collect())
    }

    /// Uses of mandates at services (`mandate_used` entries) of an
    /// organisation, newest first: (time, mandate id, client, domain).
    pub async fn mandate_uses(
        &self,
        org_id: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String)>> {
        let rows: Vec<(i64, String)> = on!(self, p => sqlx::query_as(
                "SELECT at, data FROM journal WHERE kind = 'mandate_used' AND org_id = $1 ORDER BY seq DESC LIMIT $2")
                .bind(org_id).bind(limit).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(at, data)| {
                let v: serde_json::Value = serde_json::from_str(&data).ok()?;
                let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                Some((at, s("mandate_id"), s("client"), s("domain")))
            })
            .collect())
    }

    /// Every signed head.
    pub async fn journal_heads(&self) -> Result<Vec<Head>> {
        let rows: Vec<(i64, String, String, String, i64)> = on!(self, p => sqlx::query_as(
            "SELECT seq, hash, signature, kid, at FROM journal_heads ORDER BY seq, at")
            .fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(|(seq, hash, signature, kid, at)| Head {
                seq,
                hash,
                signature,
                kid,
                at,
            })
            .collect())
    }

    pub async fn journal_insert_head(&self, head: &Head) -> Result<()> {
        on!(self, p => sqlx::query(
            "INSERT INTO journal_heads (seq, hash, signature, kid, at) VALUES ($1, $2, $3, $4, $5)")
            .bind(head.seq).bind(&head.hash).bind(&head.signature).bind(&head.kid).bind(head.at)
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    // ---- organisations ------------------------------------------------------

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

    /// Create an aidant in a first organisation. Returns the TOTP secret,
    /// to show once for enrolment. The password is stored as argon2id.
    pub async fn create_aidant(
        &self,
        new: &NewAidant<'_>,
        actor: &Actor,
        salt: &Salt,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<AidantCreated, MandateError> {
        let email = normalise_email(new.email)
            .ok_or_else(|| MandateError::Invalid(format!("invalid e-mail {:?}", new.email)))?;
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(MandateError::Invalid(
                "the name must have 1 to 200 characters".into(),
            ));
        }
        if new.password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(MandateError::Invalid(format!(
                "the password must have at least {MIN_PASSWORD_CHARS} characters"
            )));
        }
        let password = new.password.to_string();
        let password_hash = self
            .argon2
            .run(move || hash_secret(&password))
            .await
            .map_err(StoreError::from)?
            .map_err(|e| MandateError::Store(StoreError::Other(e)))?;
        let secret = totp::generate_secret().map_err(StoreError::Other)?;
        let id = random_token(16);
        let sealed = key.seal(&id, &secret).map_err(StoreError::Other)?;
        let mut tx = self.begin_write().await?;
        if !tx
            .exists("SELECT id FROM organisations WHERE id = $1", new.org_id)
            .await?
        {
            return Err(MandateError::NotFound("organisation"));
        }
        let n = tx!(&mut tx, t => sqlx::query(
            "INSERT INTO aidants (id, email, name, password_hash, totp_secret, totp_last_step, failed_attempts, locked_until, current_org, created_at) VALUES ($1, $2, $3, $4, $5, 0, 0, 0, $6, $7) ON CONFLICT (email) DO NOTHING")
            .bind(&id).bind(&email).bind(name).bind(&password_hash).bind(&sealed).bind(new.org_id).bind(now)
            .execute(&mut **t).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(MandateError::Conflict(
                "an aidant with this e-mail already exists".into(),
            ));
        }
        tx!(&mut tx, t => sqlx::query(
            "INSERT INTO aidant_orgs (aidant_id, org_id, role) VALUES ($1, $2, $3)")
            .bind(&id).bind(new.org_id).bind(new.role.as_str())
            .execute(&mut **t).await.map(|_| ()))?;
        tx.append(
            Event {
                kind: "aidant.created",
                actor: &actor.name(),
                org_id: Some(new.org_id),
                data: json!({"aidant_id": id, "role": new.role.as_str()}),
                personal: vec![("email", email.clone()), ("name", name.to_string())],
            }
            .prepare(Some(salt), now),
        )
        .await?;
        tx.commit().await?;
        Ok(AidantCreated {
            id,
            email,
            totp_secret: secret,
        })
    }

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

    /// Replace an aidant's TOTP secret (and unlock the account). Returns the
    /// new secret, to show once.
    pub async fn reset_totp(
        &self,
        email: &str,
        actor: &Actor,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<AidantCreated, MandateError> {
        let secret = totp::generate_secret().map_err(StoreError::Other)?;
        self.store_totp_secret(email, secret, actor, key, now).await
    }

    /// Set a given TOTP secret (base32, at least 16 bytes) for an aidant.
    /// **Demo only** (`relais demo` prints a fixed secret that must stay
    /// valid across restarts); real accounts use [`Store::reset_totp`].
    pub async fn set_totp_secret(
        &self,
        email: &str,
        secret_b32: &str,
        actor: &Actor,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<AidantCreated, MandateError> {
        if totp::base32_decode(secret_b32).is_none_or(|b| b.len() < 16) {
            return Err(MandateError::Invalid(
                "the TOTP secret must be base32 of at least 16 bytes".into(),
            ));
        }
        self.store_totp_secret(email, secret_b32.to_string(), actor, key, now)
            .await
    }

    async fn store_totp_secret(
        &self,
        email: &str,
        secret: String,
        actor: &Actor,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<AidantCreated, MandateError> {
        let email = normalise_email(email).ok_or(MandateError::NotFound("aidant"))?;
        let mut tx = self.begin_write().await?;
        let (id, current_org) = tx.replace_secret(&email, key, &secret).await?;
        tx.record(
            "aidant.totp_reset",
            &actor.name(),
            current_org.as_deref(),
            json!({"aidant_id": id}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(AidantCreated {
            id,
            email,
            totp_secret: secret,
        })
    }

    pub async fn aidant_by_email(&self, email: &str) -> Result<Option<Aidant>> {
        let Some(email) = normalise_email(email) else {
            return Ok(None);
        };
        #[allow(clippy::type_complexity)]
        let row: Option<(String, String, String, Option<String>, i64, i64, i64, i64)> = on!(self, p => sqlx::query_as(
            "SELECT id, email, name, current_org, failed_attempts, locked_until, totp_last_step, created_at FROM aidants WHERE email = $1")
            .bind(&email).fetch_optional(p).await)?;
        let Some((
            id,
            email,
            name,
            current_org,
            failed_attempts,
            locked_until,
            totp_last_step,
            created_at,
        )) = row
        else {
            return Ok(None);
        };
        let orgs = self.aidant_memberships(&id).await?;
        Ok(Some(Aidant {
            id,
            email,
            name,
            current_org,
            failed_attempts,
            locked_until,
            totp_last_step,
            created_at,
            orgs,
        }))
    }

    /// The aidants of an organisation with their role, by e-mail.
    pub async fn org_aidants(&self, org_id: &str) -> Result<Vec<(String, String, Role)>> {
        let rows: Vec<(String, String, String)> = on!(self, p => sqlx::query_as(
            "SELECT a.id, a.email, o.role FROM aidants a JOIN aidant_orgs o ON o.aidant_id = a.id WHERE o.org_id = $1 ORDER BY a.email")
            .bind(org_id).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, email, r)| Role::parse(&r).map(|r| (id, email, r)))
            .collect())
    }

    /// Check an aidant's e-mail, password and TOTP code. Every failure is
    /// the same [`LoginError::Refused`]. After [`MAX_FAILED_ATTEMPTS`]
    /// failures in a row the account is locked for [`LOCK_SECS`], during
    /// which even correct credentials are refused. A code is accepted at
    /// most once (its time step is stored).
    pub async fn verify_password_and_totp(
        &self,
        email: &str,
        password: &str,
        code: &str,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<AidantLogin, LoginError> {
        let Some(email) = normalise_email(email) else {
            self.burn_argon2(password).await.map_err(StoreError::from)?;
            return Err(LoginError::Refused);
        };
        let row = self.aidant_secret("email", &email).await?;
        let Some((id, password_hash, secret, last_step, locked_until, current_org)) = row else {
            self.burn_argon2(password).await.map_err(StoreError::from)?;
            return Err(LoginError::Refused);
        };
        if locked_until > now {
            // The same argon2 run as any other refusal (they look alike).
            self.burn_argon2(password).await.map_err(StoreError::from)?;
            tracing::info!(aidant = %id, "aidant sign-in refused: account locked");
            return Err(LoginError::Refused);
        }
        let presented = password.to_string();
        let password_ok = self
            .argon2
            .run(move || verify_secret(&password_hash, &presented))
            .await
            .map_err(StoreError::from)?;
        let opened = open_secret(key, &id, &secret)?;
        let step = totp::verify(opened.secret(), code, now, last_step);
        let (true, Some(step)) = (password_ok, step) else {
            if password_ok && totp::already_used(opened.secret(), code, now, last_step) {
                // The right password and a genuine code whose step was just
                // consumed: a parallel sign-in with the same code won (a
                // double submission), or a replay. Refused, but not counted
                // towards the account lock.
                tracing::info!(aidant = %id, "aidant sign-in refused: code already used");
                return Err(LoginError::Refused);
            }
            return self.refuse(&id, now).await;
        };
        let mut tx = self
            .consume_totp_step(&id, step, &secret, &opened, key, now)
            .await?;
        tx.record(
            "aidant.signed_in",
            &Actor::Aidant(id.clone()).name(),
            current_org.as_deref(),
            json!({"aidant_id": id, "amr": ["pwd", "otp"]}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(AidantLogin {
            aidant_id: id,
            current_org,
            totp_step: step,
        })
    }

    /// Check a TOTP code alone for an aidant already identified (renewed
    /// strong authentication before a mandate action). Same replay,
    /// failure counting and lockout rules as [`Store::verify_password_and_totp`];
    /// journalled as `aidant.totp_confirmed` with `purpose`.
    pub async fn verify_totp(
        &self,
        aidant_id: &str,
        code: &str,
        purpose: &str,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<AidantLogin, LoginError> {
        let row = self.aidant_secret("id", aidant_id).await?;
        let Some((_, _, secret, last_step, locked_until, current_org)) = row else {
            return Err(LoginError::Refused);
        };
        if locked_until > now {
            return Err(LoginError::Refused);
        }
        let opened = open_secret(key, aidant_id, &secret)?;
        let Some(step) = totp::verify(opened.secret(), code, now, last_step) else {
            if totp::already_used(opened.secret(), code, now, last_step) {
                tracing::info!(aidant = %aidant_id, "TOTP confirmation refused: code already used");
                return Err(LoginError::Refused);
            }
            return self.refuse(aidant_id, now).await;
        };
        let mut tx = self
            .consume_totp_step(aidant_id, step, &secret, &opened, key, now)
            .await?;
        tx.record(
            "aidant.totp_confirmed",
            &Actor::Aidant(aidant_id.to_string()).name(),
            current_org.as_deref(),
            json!({"aidant_id": aidant_id, "purpose": purpose}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(AidantLogin {
            aidant_id: aidant_id.to_string(),
            current_org,
            totp_step: step,
        })
    }

    /// (id, password hash, stored TOTP secret, last TOTP step, locked
    /// until, current organisation) of the aidant whose `column` is `value`.
    async fn aidant_secret(&self, column: &'static str, value: &str) -> Result<Option<SecretRow>> {
        let row: Option<SecretRow> = on!(self, p => sqlx::query_as(&format!(
            "SELECT id, password_hash, totp_secret, totp_last_step, locked_until, current_org FROM aidants WHERE {column} = $1"))
            .bind(value).fetch_optional(p).await)?;
        Ok(row)
    }

    /// Consume the TOTP `step` just matched against the secret `stored`,
    /// only if no one used it (or a later one) meanwhile, the account is
    /// not locked and the secret unchanged; a plain secret is re-encrypted.
    /// Returns the transaction to journal the sign-in in; otherwise the
    /// failure is counted and the sign-in refused.
    async fn consume_totp_step(
        &self,
        id: &str,
        step: i64,
        stored: &str,
        opened: &Opened,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<Tx, LoginError> {
        let mut tx = self.begin_write().await?;
        let n = tx!(&mut tx, t => sqlx::query(
            "UPDATE aidants SET totp_last_step = $1, failed_attempts = 0 WHERE id = $2 AND totp_last_step < $1 AND locked_until <= $3 AND totp_secret = $4")
            .bind(step).bind(id).bind(now).bind(stored)
            .execute(&mut **t).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            // Another request consumed this step (or a later one) first, or
            // the account was locked or its secret replaced meanwhile: the
            // credentials were right, so this is not a failure to count.
            drop(tx);
            tracing::info!(aidant = %id, "aidant code refused: step consumed by a parallel request");
            return Err(LoginError::Refused);
        }
        reseal_if_plain(&mut tx, key, id, stored, opened).await?;
        Ok(tx)
    }

    /// Count a failure of the aidant `id` and refuse.
    async fn refuse<T>(&self, id: &str, now: i64) -> std::result::Result<T, LoginError> {
        self.aidant_failure(id, now).await?;
        Err(LoginError::Refused)
    }

    /// Count a failed sign-in; lock the account at the threshold.
    async fn aidant_failure(&self, id: &str, now: i64) -> Result<()> {
        let until = now + LOCK_SECS;
        let mut tx = self.begin_write().await?;
        let row: Option<(i64, i64)> = tx!(&mut tx, t => sqlx::query_as(
            "UPDATE aidants SET \
               failed_attempts = CASE WHEN failed_attempts + 1 >= $2 THEN 0 ELSE failed_attempts + 1 END, \
               locked_until = CASE WHEN failed_attempts + 1 >= $2 THEN $3 ELSE locked_until END \
             WHERE id = $1 RETURNING failed_attempts, locked_until")
            .bind(id).bind(MAX_FAILED_ATTEMPTS).bind(until)
            .fetch_optional(&mut **t).await)?;
        tracing::info!(aidant = %id, "aidant sign-in failed");
        if let Some((0, locked)) = row {
            if locked == until {
                tracing::warn!(aidant = %id, until, "aidant account locked after repeated failures");
                tx.record(
                    "aidant.locked",
                    &Actor::Aidant(id.to_string()).name(),
                    None,
                    json!({"aidant_id": id, "until": until}),
                    now,
                )
                .await?;
            }
        }
        tx.commit().await
    }

    // ---- usagers ------------------------------------------------------------

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

    async fn mandates_where(&self, column: &'static str, value: &str) -> Result<Vec<Mandate>> {
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

    async fn revoke(
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

    /// Encrypt every TOTP secret still stored as is (rows written before
    /// encryption at rest existed). Returns how many were converted; journals
    /// `aidants.totp_secrets_encrypted` (count only) when there were any.
    pub async fn encrypt_totp_secrets(
        &self,
        key: &TotpKey,
        actor: &Actor,
        now: i64,
    ) -> std::result::Result<u64, MandateError> {
        let mut tx = self.begin_write().await?;
        let rows: Vec<(String, String)> = tx!(&mut tx, t => sqlx::query_as(
            "SELECT id, totp_secret FROM aidants WHERE totp_secret NOT LIKE 'v1:%' ORDER BY id")
            .fetch_all(&mut **t).await)?;
        let mut n = 0u64;
        for (id, stored) in rows {
            let opened = key.open(&id, &stored).map_err(|e| {
                MandateError::Invalid(format!("aidant {id}: TOTP secret unreadable: {e}"))
            })?;
            let sealed = key.seal(&id, opened.secret()).map_err(StoreError::Other)?;
            tx!(&mut tx, t => sqlx::query("UPDATE aidants SET totp_secret = $1 WHERE id = $2")
                .bind(&sealed).bind(&id).execute(&mut **t).await.map(|_| ()))?;
            n += 1;
        }
        if n > 0 {
            tx.record(
                "aidants.totp_secrets_encrypted",
                &actor.name(),
                None,
                json!({"count": n}),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n)
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

    /// (seq, signing time) of the latest signed head, if any.
    pub async fn journal_last_head(&self) -> Result<Option<(i64, i64)>> {
        let row: Option<(i64, i64)> = on!(self, p => sqlx::query_as(
            "SELECT seq, at FROM journal_heads ORDER BY seq DESC, at DESC LIMIT 1")
            .fetch_optional(p).await)?;
        Ok(row)
    }

    /// Issue a one-time TOTP enrolment link for the aidant `email`: a new
    /// secret waits in `aidant_enrolments` (the token stored as its SHA-256)
    /// for [`ENROLMENT_TTL_SECS`]. The aidant's current secret is replaced
    /// at once by a random one nobody knows (old codes stop working) and the
    /// account is unlocked; the new secret only becomes usable when the
    /// aidant confirms it ([`Store::confirm_enrolment`]). Earlier unused
    /// links of the aidant stop working.
    pub async fn issue_enrolment(
        &self,
        email: &str,
        actor: &Actor,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<Enrolment, MandateError> {
        let email = normalise_email(email).ok_or(MandateError::NotFound("aidant"))?;
        let pending = totp::generate_secret().map_err(StoreError::Other)?;
        let placeholder = totp::generate_secret().map_err(StoreError::Other)?;
        let token = random_token(32);
        let expires_at = now + ENROLMENT_TTL_SECS;
        let mut tx = self.begin_write().await?;
        let (id, current_org) = tx.replace_secret(&email, key, &placeholder).await?;
        let sealed_pending = key.seal(&id, &pending).map_err(StoreError::Other)?;
        tx!(&mut tx, t => sqlx::query(
            "INSERT INTO aidant_enrolments (token_hash, aidant_id, totp_secret, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5, NULL)")
            .bind(sha256_hex(token.as_bytes())).bind(&id)
            .bind(&sealed_pending).bind(now).bind(expires_at)
            .execute(&mut **t).await.map(|_| ()))?;
        tx.record(
            "aidant.enrolment_issued",
            &actor.name(),
            current_org.as_deref(),
            json!({"aidant_id": id, "expires_at": expires_at}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Enrolment {
            aidant_id: id,
            email,
            token,
            expires_at,
        })
    }

    /// The pending enrolment of a link, if it is unused and not expired.
    pub async fn pending_enrolment(
        &self,
        token: &str,
        key: &TotpKey,
        now: i64,
    ) -> Result<Option<PendingEnrolment>> {
        let row: Option<(String, String, String, i64)> = on!(self, p => sqlx::query_as(
            "SELECT e.aidant_id, a.email, e.totp_secret, e.expires_at FROM aidant_enrolments e \
             JOIN aidants a ON a.id = e.aidant_id \
             WHERE e.token_hash = $1 AND e.used_at IS NULL AND e.expires_at > $2")
            .bind(sha256_hex(token.as_bytes())).bind(now)
            .fetch_optional(p).await)?;
        let Some((aidant_id, email, sealed, expires_at)) = row else {
            return Ok(None);
        };
        let secret = open_secret(key, &aidant_id, &sealed)?;
        Ok(Some(PendingEnrolment {
            aidant_id,
            email,
            totp_secret: secret.secret().to_string(),
            expires_at,
        }))
    }

    /// Check the aidant's password for an enrolment link (first step of the
    /// page): the pending enrolment (with its secret) only if the link is
    /// usable, the account not locked and the password right. Failures are
    /// the same [`LoginError::Refused`] whatever the cause (each costs an
    /// argon2 run), and a wrong password counts towards the account lock
    /// like a sign-in failure.
    pub async fn check_enrolment_password(
        &self,
        token: &str,
        password: &str,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<PendingEnrolment, LoginError> {
        #[allow(clippy::type_complexity)]
        let row: Option<(String, String, String, i64, String, i64)> = on!(self, p => sqlx::query_as(
            "SELECT e.aidant_id, a.email, e.totp_secret, e.expires_at, a.password_hash, a.locked_until \
             FROM aidant_enrolments e JOIN aidants a ON a.id = e.aidant_id \
             WHERE e.token_hash = $1 AND e.used_at IS NULL AND e.expires_at > $2")
            .bind(sha256_hex(token.as_bytes())).bind(now)
            .fetch_optional(p).await)?;
        let Some((id, email, sealed, expires_at, password_hash, locked_until)) = row else {
            self.burn_argon2(password).await.map_err(StoreError::from)?;
            return Err(LoginError::Refused);
        };
        if locked_until > now {
            // The same argon2 run as any other refusal (they look alike).
            self.burn_argon2(password).await.map_err(StoreError::from)?;
            return Err(LoginError::Refused);
        }
        let presented = password.to_string();
        let password_ok = self
            .argon2
            .run(move || verify_secret(&password_hash, &presented))
            .await
            .map_err(StoreError::from)?;
        if !password_ok {
            return self.refuse(&id, now).await;
        }
        let secret = open_secret(key, &id, &sealed)?;
        Ok(PendingEnrolment {
            aidant_id: id,
            email,
            totp_secret: secret.secret().to_string(),
            expires_at,
        })
    }

    /// Confirm an enrolment link with a first code of the new secret, for
    /// the aidant `aidant_id` whose password was checked before
    /// ([`Store::check_enrolment_password`], the page carrying a signed
    /// proof of it): the secret becomes the aidant's (the code's step is
    /// consumed) and the link is used up. Failures are the same
    /// [`LoginError::Refused`] whatever the cause; a wrong code counts
    /// towards the account lock like a sign-in failure.
    pub async fn confirm_enrolment(
        &self,
        token: &str,
        aidant_id: &str,
        code: &str,
        key: &TotpKey,
        now: i64,
    ) -> std::result::Result<String, LoginError> {
        let token_hash = sha256_hex(token.as_bytes());
        #[allow(clippy::type_complexity)]
        let row: Option<(String, String, i64, Option<String>)> = on!(self, p => sqlx::query_as(
            "SELECT e.aidant_id, e.totp_secret, a.locked_until, a.current_org \
             FROM aidant_enrolments e JOIN aidants a ON a.id = e.aidant_id \
             WHERE e.token_hash = $1 AND e.used_at IS NULL AND e.expires_at > $2")
            .bind(&token_hash).bind(now).fetch_optional(p).await)?;
        let Some((id, sealed, locked_until, current_org)) = row else {
            return Err(LoginError::Refused);
        };
        if id != aidant_id || locked_until > now {
            return Err(LoginError::Refused);
        }
        let secret = open_secret(key, &id, &sealed)?;
        let Some(step) = totp::verify(secret.secret(), code, now, 0) else {
            return self.refuse(&id, now).await;
        };
        let mut tx = self.begin_write().await?;
        // Only if the link is still unused, unexpired and the aidant's latest
        // (a reset or a newer link meanwhile cancels it).
        let n = tx!(&mut tx, t => sqlx::query(
            "UPDATE aidant_enrolments SET used_at = $1 WHERE token_hash = $2 AND aidant_id = $3 \
             AND used_at IS NULL AND expires_at > $1 AND NOT EXISTS ( \
               SELECT 1 FROM aidant_enrolments e2 WHERE e2.aidant_id = $3 \
               AND e2.token_hash <> $2 AND e2.created_at > aidant_enrolments.created_at)")
            .bind(now).bind(&token_hash).bind(&id)
            .execute(&mut **t).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(LoginError::Refused);
        }
        tx!(&mut tx, t => sqlx::query(
            "UPDATE aidants SET totp_secret = $1, totp_last_step = $2, failed_attempts = 0, locked_until = 0 WHERE id = $3")
            .bind(&sealed).bind(step).bind(&id)
            .execute(&mut **t).await.map(|_| ()))?;
        tx.record(
            "aidant.totp_enrolled",
            &Actor::Aidant(id.clone()).name(),
            current_org.as_deref(),
            json!({"aidant_id": id}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    // ---- delegated sign-in ----------------------------------------------------

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

// ---- Aidant pages: organisation switching (src/provider/mandate_new.rs) ----

impl Store {
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
