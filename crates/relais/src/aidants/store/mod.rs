//! Storage for aidants (see `crate::aidants`): organisations, aidants,
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

use crate::aidants::journal::{Entry, Event, Pending};
use crate::aidants::secret::Opened;
use crate::aidants::{Authorisation, Mandate, MandateError, Organisation, TotpKey};
use crate::crypto::secrets::{hash_secret, verify_secret};
use crate::store::{Backend, Result, Store, StoreError};
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
}

// The `impl Store` methods of the aidants domain, by subject (after the
// `tx!` macro, which they use).
mod accounts;
mod journal;
mod mandates;
mod organisations;
