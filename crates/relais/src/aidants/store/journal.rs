//! The journal's rows: appends, pages, heads, and the mandate uses read from it.

use crate::aidants::journal::{Entry, Head, Pending};
use crate::aidants::MandateUse;
use crate::store::{on, Result, Store};

impl Store {
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
    /// organisation, newest first.
    pub async fn mandate_uses(&self, org_id: &str, limit: i64) -> Result<Vec<MandateUse>> {
        let rows: Vec<(i64, String)> = on!(self, p => sqlx::query_as(
                "SELECT at, data FROM journal WHERE kind = 'mandate_used' AND org_id = $1 ORDER BY seq DESC LIMIT $2")
                .bind(org_id).bind(limit).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(at, data)| {
                let v: serde_json::Value = serde_json::from_str(&data).ok()?;
                let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                Some(MandateUse {
                    at,
                    mandate_id: s("mandate_id"),
                    client: s("client"),
                    domain: s("domain"),
                })
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

    /// (seq, signing time) of the latest signed head, if any.
    pub async fn journal_last_head(&self) -> Result<Option<(i64, i64)>> {
        let row: Option<(i64, i64)> = on!(self, p => sqlx::query_as(
            "SELECT seq, at FROM journal_heads ORDER BY seq DESC, at DESC LIMIT 1")
            .fetch_optional(p).await)?;
        Ok(row)
    }
}
