//! Failure limits shared by the nodes (`crate::http::limits::Throttle`): an atomic reservation per key and fixed window.

use super::{on, Result, Store};

impl Store {
    /// Count one attempt of `key` in its current fixed window of
    /// `window_secs` (a new window starts when the stored one is over), in
    /// one atomic statement. Returns the count including this attempt and
    /// the window's start. See `crate::http::limits`.
    pub async fn throttle_reserve(
        &self,
        key: &str,
        now: i64,
        window_secs: i64,
    ) -> Result<(i64, i64)> {
        let row: (i64, i64) = on!(self, p => sqlx::query_as(
            "INSERT INTO throttle (key, window_start, count, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (key) DO UPDATE SET \
               count = CASE WHEN throttle.window_start <= $4 THEN 1 ELSE throttle.count + 1 END, \
               window_start = CASE WHEN throttle.window_start <= $4 THEN $2 ELSE throttle.window_start END, \
               expires_at = CASE WHEN throttle.window_start <= $4 THEN $3 ELSE throttle.expires_at END \
             RETURNING count, window_start")
            .bind(key).bind(now).bind(now + window_secs).bind(now - window_secs)
            .fetch_one(p).await)?;
        Ok(row)
    }

    /// Give back one attempt counted by [`Store::throttle_reserve`] in the
    /// window that started at `window_start` (nothing if a new window began).
    pub async fn throttle_release(&self, key: &str, window_start: i64) -> Result<()> {
        on!(self, p => sqlx::query(
            "UPDATE throttle SET count = count - 1 WHERE key = $1 AND window_start = $2 AND count > 0")
            .bind(key).bind(window_start).execute(p).await.map(|_| ()))?;
        Ok(())
    }
}
