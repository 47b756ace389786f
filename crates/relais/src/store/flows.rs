//! Short-lived flow rows (sessions, interactions, logouts): put, read, single-use take (and take bound to a value), compare-and-swap update, delete; and the purge of every expired row.

use super::{on, Backend, Result, Store};

impl Store {
    pub async fn put(
        &self,
        kind: Kind,
        id: &str,
        fed: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (id, federation, data, expires_at) VALUES ($1, $2, $3, $4)",
            kind.table()
        );
        on!(self, p => sqlx::query(&sql).bind(id).bind(fed).bind(data).bind(expires_at).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn update(
        &self,
        kind: Kind,
        id: &str,
        fed: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET data = $1, expires_at = $2 WHERE id = $3 AND federation = $4",
            kind.table()
        );
        let n = on!(self, p => sqlx::query(&sql).bind(data).bind(expires_at).bind(id).bind(fed).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Compare-and-swap: replace `old` by `new` only if the row still holds `old`.
    pub async fn update_if(
        &self,
        kind: Kind,
        id: &str,
        fed: &str,
        old: &str,
        new: &str,
        expires_at: i64,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET data = $1, expires_at = $2 WHERE id = $3 AND federation = $4 AND data = $5",
            kind.table()
        );
        let n = on!(self, p => sqlx::query(&sql).bind(new).bind(expires_at).bind(id).bind(fed).bind(old).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    pub async fn get(&self, kind: Kind, id: &str, fed: &str, now: i64) -> Result<Option<String>> {
        let sql = format!(
            "SELECT data FROM {} WHERE id = $1 AND federation = $2 AND expires_at > $3",
            kind.table()
        );
        let row: Option<(String,)> = on!(self, p => sqlx::query_as(&sql).bind(id).bind(fed).bind(now).fetch_optional(p).await)?;
        Ok(row.map(|r| r.0))
    }

    /// Read and delete in one statement (single use).
    pub async fn take(&self, kind: Kind, id: &str, fed: &str, now: i64) -> Result<Option<String>> {
        let sql = format!(
            "DELETE FROM {} WHERE id = $1 AND federation = $2 RETURNING data, expires_at",
            kind.table()
        );
        let row: Option<(String, i64)> =
            on!(self, p => sqlx::query_as(&sql).bind(id).bind(fed).fetch_optional(p).await)?;
        Ok(row.filter(|r| r.1 > now).map(|r| r.0))
    }

    /// Take (delete and return, with its expiry) a live row whose data
    /// contains `needle` verbatim; nothing happens otherwise.
    pub async fn take_bound(
        &self,
        kind: Kind,
        id: &str,
        fed: &str,
        needle: &str,
        now: i64,
    ) -> Result<Option<(String, i64)>> {
        // A plain substring test (no pattern characters), per backend.
        let contains = match self.backend {
            Backend::Sqlite(_) => "instr(data, $3) > 0",
            Backend::Postgres(_) => "strpos(data, $3) > 0",
        };
        let sql = format!(
            "DELETE FROM {} WHERE id = $1 AND federation = $2 AND {contains} RETURNING data, expires_at",
            kind.table()
        );
        let row: Option<(String, i64)> = on!(self, p => sqlx::query_as(&sql)
            .bind(id).bind(fed).bind(needle).fetch_optional(p).await)?;
        Ok(row.filter(|r| r.1 > now))
    }

    pub async fn delete(&self, kind: Kind, id: &str, fed: &str) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE id = $1 AND federation = $2",
            kind.table()
        );
        on!(self, p => sqlx::query(&sql).bind(id).bind(fed).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    // ---- codes and tokens -------------------------------------------------

    /// Delete expired rows; returns how many.
    pub async fn purge_expired(&self, now: i64) -> Result<u64> {
        let mut total = 0;
        for table in [
            "sessions",
            "interactions",
            "logouts",
            "codes",
            "tokens",
            "used_jti",
            "throttle",
        ] {
            // Codes are kept a day past expiry so a late replay still revokes the grant.
            let cutoff = if table == "codes" { now - 86_400 } else { now };
            let sql = format!("DELETE FROM {table} WHERE expires_at <= $1");
            total += on!(self, p => sqlx::query(&sql).bind(cutoff).execute(p).await.map(|r| r.rows_affected()))?;
        }
        Ok(total)
    }
}

/// Short-lived rows with the same shape: (id, federation, data JSON, expiry).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Session,
    Interaction,
    Logout,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Session => "sessions",
            Kind::Interaction => "interactions",
            Kind::Logout => "logouts",
        }
    }
}
