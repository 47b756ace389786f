//! Aidant accounts: creation, enrolment, password and TOTP checks with the
//! failure lockout, TOTP secret storage (encrypted at rest).

use super::*;
use crate::aidants::journal::{sha256_hex, Event};
use crate::aidants::rules::{login_decision, LoginDecision};
use crate::aidants::secret::Opened;
use crate::aidants::{
    totp, Actor, Aidant, AidantCreated, AidantLogin, Enrolment, LoginError, MandateError,
    NewAidant, PendingEnrolment, Salt, TotpKey, ENROLMENT_TTL_SECS, LOCK_SECS, MAX_FAILED_ATTEMPTS,
    MIN_PASSWORD_CHARS,
};
use crate::crypto::random_token;
use crate::crypto::secrets::{hash_secret, verify_secret};
use crate::store::{on, Result, Store, StoreError};
use crate::subject::agent::identity::normalise_email;
use serde_json::json;

impl Store {
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

    pub(super) async fn store_totp_secret(
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
        let used = step.is_none() && totp::already_used(opened.secret(), code, now, last_step);
        let step = match login_decision(password_ok, step, used) {
            LoginDecision::Accept(step) => step,
            LoginDecision::RefuseNotCounted => {
                // A parallel sign-in with the same code won, or a replay.
                tracing::info!(aidant = %id, "aidant sign-in refused: code already used");
                return Err(LoginError::Refused);
            }
            LoginDecision::RefuseCounted => return self.refuse(&id, now).await,
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
        let step = totp::verify(opened.secret(), code, now, last_step);
        let used = step.is_none() && totp::already_used(opened.secret(), code, now, last_step);
        let step = match login_decision(true, step, used) {
            LoginDecision::Accept(step) => step,
            LoginDecision::RefuseNotCounted => {
                tracing::info!(aidant = %aidant_id, "TOTP confirmation refused: code already used");
                return Err(LoginError::Refused);
            }
            LoginDecision::RefuseCounted => return self.refuse(aidant_id, now).await,
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
    pub(super) async fn aidant_secret(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<SecretRow>> {
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
    pub(super) async fn consume_totp_step(
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
    pub(super) async fn refuse<T>(&self, id: &str, now: i64) -> std::result::Result<T, LoginError> {
        self.aidant_failure(id, now).await?;
        Err(LoginError::Refused)
    }

    /// Count a failed sign-in; lock the account at the threshold.
    pub(super) async fn aidant_failure(&self, id: &str, now: i64) -> Result<()> {
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
}
