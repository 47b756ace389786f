//! Agent accounts and their links to provider subjects.

use super::{on, Result, Store};

impl Store {
    /// The agent account for (provider, provider sub): an existing link, else
    /// the account with the same verified email (linked now), else a new
    /// account with id `new_id`. Safe under concurrent sign-ins.
    pub async fn agent_account(
        &self,
        fed: &str,
        provider: &str,
        provider_sub: &str,
        email: &str,
        new_id: &str,
        now: i64,
    ) -> Result<String> {
        let linked: Option<(String,)> = on!(self, p => sqlx::query_as(
            "SELECT account_id FROM agent_links WHERE federation = $1 AND provider = $2 AND provider_sub = $3")
            .bind(fed).bind(provider).bind(provider_sub).fetch_optional(p).await)?;
        if let Some((id,)) = linked {
            return Ok(id);
        }
        on!(self, p => sqlx::query(
            "INSERT INTO agent_accounts (id, federation, email, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (federation, email) DO NOTHING")
            .bind(new_id).bind(fed).bind(email).bind(now).execute(p).await.map(|_| ()))?;
        let (id,): (String,) = on!(self, p => sqlx::query_as(
            "SELECT id FROM agent_accounts WHERE federation = $1 AND email = $2")
            .bind(fed).bind(email).fetch_one(p).await)?;
        on!(self, p => sqlx::query(
            "INSERT INTO agent_links (federation, provider, provider_sub, account_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(fed).bind(provider).bind(provider_sub).bind(&id).execute(p).await.map(|_| ()))?;
        Ok(id)
    }
}
