//! The civil registry table (citizen federations with `registry = "table"`).

use super::{on, Result, Store, StoreError};

impl Store {
    /// Insert or replace registry records: (identity key, lookup key, JSON record).
    pub async fn registry_put(&self, rows: &[(String, String, String)]) -> Result<()> {
        on!(self, p => {
            let mut tx = p.begin().await?;
            for (id, lookup, record) in rows {
                sqlx::query("INSERT INTO registry_people (identity_key, lookup_key, record) VALUES ($1, $2, $3) ON CONFLICT (identity_key) DO UPDATE SET lookup_key = excluded.lookup_key, record = excluded.record")
                    .bind(id).bind(lookup).bind(record).execute(&mut *tx).await?;
            }
            tx.commit().await.map_err(StoreError::from)
        })
    }

    /// The record for exactly this identity key.
    pub async fn registry_get(&self, identity_key: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = on!(self, p => sqlx::query_as(
            "SELECT record FROM registry_people WHERE identity_key = $1")
            .bind(identity_key).fetch_optional(p).await)?;
        Ok(row.map(|r| r.0))
    }

    /// Records sharing the weaker lookup key (same person but other given names?).
    pub async fn registry_similar(&self, lookup_key: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = on!(self, p => sqlx::query_as(
            "SELECT record FROM registry_people WHERE lookup_key = $1 LIMIT 5")
            .bind(lookup_key).fetch_all(p).await)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
