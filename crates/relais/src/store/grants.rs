//! Grants: authorization codes (atomic redemption, restore on refusal, reuse revokes the grant), access tokens (revocation by grant and by session), client assertion `jti` replay, explicit consents.

use super::{on, Result, Store};

impl Store {
    pub async fn insert_code(
        &self,
        code_hash: &str,
        fed: &str,
        client_id: &str,
        grant_id: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<()> {
        on!(self, p => sqlx::query(
            "INSERT INTO codes (id, federation, client_id, grant_id, data, used, expires_at) VALUES ($1, $2, $3, $4, $5, 0, $6)")
            .bind(code_hash).bind(fed).bind(client_id).bind(grant_id).bind(data).bind(expires_at)
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Mark the code used; a second redemption revokes the grant's tokens.
    pub async fn redeem_code(&self, code_hash: &str, fed: &str, now: i64) -> Result<Redeem> {
        let fresh: Option<(String, String, String)> = on!(self, p => sqlx::query_as(
            "UPDATE codes SET used = 1 WHERE id = $1 AND federation = $2 AND used = 0 AND expires_at > $3 RETURNING client_id, grant_id, data")
            .bind(code_hash).bind(fed).bind(now).fetch_optional(p).await)?;
        if let Some((client_id, grant_id, data)) = fresh {
            return Ok(Redeem::Fresh {
                client_id,
                grant_id,
                data,
            });
        }
        let used: Option<(String, i64)> = on!(self, p => sqlx::query_as(
            "SELECT grant_id, used FROM codes WHERE id = $1 AND federation = $2")
            .bind(code_hash).bind(fed).fetch_optional(p).await)?;
        match used {
            Some((grant_id, 1)) => {
                self.revoke_grant(fed, &grant_id).await?;
                Ok(Redeem::Reused { grant_id })
            }
            _ => Ok(Redeem::Unknown),
        }
    }

    /// Make a code redeemable again after [`Store::redeem_code`] took it for
    /// a request that was then refused for a mistake of the request (another
    /// client, a wrong `redirect_uri` or `code_verifier`): such a request
    /// must not use the code up for the legitimate one.
    pub async fn restore_code(&self, code_hash: &str, fed: &str, grant_id: &str) -> Result<()> {
        on!(self, p => sqlx::query(
            "UPDATE codes SET used = 0 WHERE id = $1 AND federation = $2 AND grant_id = $3 AND used = 1")
            .bind(code_hash).bind(fed).bind(grant_id).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_token(
        &self,
        token_hash: &str,
        fed: &str,
        client_id: &str,
        grant_id: &str,
        session_id: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<()> {
        on!(self, p => sqlx::query(
            "INSERT INTO tokens (id, federation, client_id, grant_id, session_id, data, revoked, expires_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)")
            .bind(token_hash).bind(fed).bind(client_id).bind(grant_id).bind(session_id).bind(data).bind(expires_at)
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn get_token(
        &self,
        token_hash: &str,
        fed: &str,
        now: i64,
    ) -> Result<Option<TokenRow>> {
        let row: Option<(String, String, String, String)> = on!(self, p => sqlx::query_as(
            "SELECT client_id, grant_id, session_id, data FROM tokens WHERE id = $1 AND federation = $2 AND revoked = 0 AND expires_at > $3")
            .bind(token_hash).bind(fed).bind(now).fetch_optional(p).await)?;
        Ok(row.map(|(client_id, grant_id, session_id, data)| TokenRow {
            client_id,
            grant_id,
            session_id,
            data,
        }))
    }

    pub async fn revoke_grant(&self, fed: &str, grant_id: &str) -> Result<u64> {
        let n = on!(self, p => sqlx::query("UPDATE tokens SET revoked = 1 WHERE grant_id = $1 AND federation = $2")
            .bind(grant_id).bind(fed).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n)
    }

    /// Revoke every access token issued within a browser session (logout).
    pub async fn revoke_session_tokens(&self, fed: &str, session_id: &str) -> Result<u64> {
        let n = on!(self, p => sqlx::query("UPDATE tokens SET revoked = 1 WHERE session_id = $1 AND federation = $2")
            .bind(session_id).bind(fed).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n)
    }

    /// Record a client assertion `jti`; false when it was seen before.
    pub async fn record_jti(
        &self,
        fed: &str,
        client_id: &str,
        jti: &str,
        expires_at: i64,
    ) -> Result<bool> {
        let n = on!(self, p => sqlx::query(
            "INSERT INTO used_jti (federation, client_id, jti, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(fed).bind(client_id).bind(jti).bind(expires_at).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    pub async fn record_consent(
        &self,
        id: &str,
        fed: &str,
        client_id: &str,
        subject: &str,
        scopes: &str,
        now: i64,
    ) -> Result<()> {
        on!(self, p => sqlx::query(
            "INSERT INTO consents (id, federation, client_id, subject, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(id).bind(fed).bind(client_id).bind(subject).bind(scopes).bind(now).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn count_consents(&self, fed: &str, client_id: &str) -> Result<i64> {
        let row: (i64,) = on!(self, p => sqlx::query_as(
            "SELECT COUNT(*) FROM consents WHERE federation = $1 AND client_id = $2")
            .bind(fed).bind(client_id).fetch_one(p).await)?;
        Ok(row.0)
    }

    // ---- identity registry ------------------------------------------------
}

/// Outcome of redeeming an authorization code.
#[derive(Debug)]
pub enum Redeem {
    Fresh {
        client_id: String,
        grant_id: String,
        data: String,
    },
    /// Already redeemed: the grant's tokens have just been revoked.
    Reused {
        grant_id: String,
    },
    Unknown,
}

#[derive(Debug)]
pub struct TokenRow {
    pub client_id: String,
    pub grant_id: String,
    pub session_id: String,
    pub data: String,
}
