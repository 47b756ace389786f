//! Storage: one interface over SQLite (default, embedded) and PostgreSQL
//! (several nodes). The backend is chosen from the URL scheme; queries are
//! written once with `$n` placeholders, which both backends accept.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone)]
pub enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Backend,
    pub(crate) breaker: std::sync::Arc<Breaker>,
    /// The process's argon2 gate: the store verifies aidant passwords; the
    /// application state holds the same gate for client secrets.
    pub(crate) argon2: std::sync::Arc<crate::crypto::gate::Argon2Gate>,
}

/// Fail fast while PostgreSQL is unreachable. Without it, every request
/// would wait for the pool's acquire timeout (seconds) before its 503. A lost
/// connection (I/O error, SQLSTATE class 08, server shutting down) opens the
/// breaker at once; pool timeouts open it after [`Breaker::TIMEOUTS`] in a
/// row without a success in between (a busy pool alone should not shed
/// load). While open (for [`Breaker::OPEN_FOR`]) requests get `Unavailable`
/// at once; then one request (the probe) goes through: its success closes
/// the breaker, its failure opens it again. SQLite (an embedded file) has no
/// breaker.
pub struct Breaker {
    enabled: bool,
    /// Milliseconds since `epoch` until which the breaker is open; 0: closed.
    open_until: std::sync::atomic::AtomicU64,
    /// Pool timeouts since the last success.
    timeouts: std::sync::atomic::AtomicU32,
    epoch: std::time::Instant,
}

impl Breaker {
    const OPEN_FOR: Duration = Duration::from_millis(500);
    const TIMEOUTS: u32 = 3;

    fn new(enabled: bool) -> Breaker {
        Breaker {
            enabled,
            open_until: Default::default(),
            timeouts: Default::default(),
            epoch: std::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1: 0 means "closed".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether this call must fail at once.
    pub fn reject(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let until = self.open_until.load(Relaxed);
        if until == 0 {
            return false;
        }
        let now = self.now_ms();
        if now < until {
            return true;
        }
        // Open time over: exactly one caller becomes the probe.
        let again = now + Self::OPEN_FOR.as_millis() as u64;
        self.open_until
            .compare_exchange(until, again, Relaxed, Relaxed)
            .is_err()
    }

    fn open(&self) {
        let until = self.now_ms() + Self::OPEN_FOR.as_millis() as u64;
        self.open_until
            .store(until, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn observe<T, E: Failure>(&self, r: &std::result::Result<T, E>) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.enabled {
            return;
        }
        match r.as_ref().err().map(Failure::kind) {
            None => {
                if self.timeouts.load(Relaxed) != 0 {
                    self.timeouts.store(0, Relaxed);
                }
                if self.open_until.load(Relaxed) != 0 {
                    self.open_until.store(0, Relaxed);
                }
            }
            Some(FailureKind::Lost) => self.open(),
            Some(FailureKind::Timeout) => {
                if self.timeouts.fetch_add(1, Relaxed) + 1 >= Self::TIMEOUTS {
                    self.open();
                }
            }
            Some(FailureKind::Other) => {}
        }
    }
}

pub(crate) enum FailureKind {
    /// The connection is gone: the database is unreachable.
    Lost,
    /// No connection within the pool's timeout (unreachable, or just busy).
    Timeout,
    Other,
}

pub(crate) trait Failure {
    fn kind(&self) -> FailureKind;
}

impl Failure for sqlx::Error {
    fn kind(&self) -> FailureKind {
        match self {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) => FailureKind::Lost,
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
                }) =>
            {
                FailureKind::Lost
            }
            sqlx::Error::PoolTimedOut => FailureKind::Timeout,
            _ => FailureKind::Other,
        }
    }
}

impl Failure for StoreError {
    fn kind(&self) -> FailureKind {
        match self {
            StoreError::Unavailable(_) => FailureKind::Timeout,
            StoreError::Other(_) => FailureKind::Other,
        }
    }
}

/// What a call rejected by the open breaker returns.
pub(crate) struct BreakerOpen;

impl From<BreakerOpen> for sqlx::Error {
    fn from(_: BreakerOpen) -> Self {
        sqlx::Error::PoolTimedOut
    }
}

impl From<BreakerOpen> for StoreError {
    fn from(_: BreakerOpen) -> Self {
        StoreError::Unavailable("database unreachable a moment ago; not retried yet".into())
    }
}

#[derive(Debug)]
pub enum StoreError {
    /// The database cannot be reached (or timed out): callers answer 503.
    Unavailable(String),
    Other(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "database unavailable: {e}"),
            StoreError::Other(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            // Connection lost, server shutting down or overloaded (PostgreSQL
            // class 08, 57P01-57P03, 53300), SQLite busy/locked: retry later.
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08")
                        || matches!(
                            c.as_ref(),
                            "57P01" | "57P02" | "57P03" | "53300" | "5" | "6"
                        )
                }) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

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

macro_rules! on {
    ($self:expr, $p:ident => $body:expr) => {{
        if $self.breaker.reject() {
            Err($crate::store::BreakerOpen.into())
        } else {
            let r = match &$self.backend {
                $crate::store::Backend::Sqlite($p) => $body,
                $crate::store::Backend::Postgres($p) => $body,
            };
            $self.breaker.observe(&r);
            r
        }
    }};
}
/// One SQL text for both databases: `on!(self, p => sqlx::query(..).fetch_one(p))`.
pub(crate) use on;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// The argon2 gate every password or secret verification goes through.
    pub fn argon2_gate(&self) -> std::sync::Arc<crate::crypto::gate::Argon2Gate> {
        self.argon2.clone()
    }

    /// Connect (creating the SQLite file if needed). `schema` selects a
    /// PostgreSQL schema (tests isolate themselves this way).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (base, schema) = match url.split_once("#schema=") {
                Some((b, s)) => (b, Some(s.to_string())),
                None => (url, None),
            };
            let mut opts = PgConnectOptions::from_str(base).map_err(StoreError::from)?;
            if let Some(s) = &schema {
                opts = opts.options([("search_path", s.as_str())]);
            }
            if let Some(s) = &schema {
                // Create the schema first with a one-off connection.
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(PgConnectOptions::from_str(base).map_err(StoreError::from)?)
                    .await?;
                // Several nodes may start at once: a concurrent creation is fine.
                if let Err(e) = sqlx::query(&format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                    s.replace('"', "")
                ))
                .execute(&pool)
                .await
                {
                    let benign = matches!(&e, sqlx::Error::Database(d)
                        if d.code().is_some_and(|c| c == "23505" || c == "42P06"));
                    if !benign {
                        return Err(e.into());
                    }
                }
                pool.close().await;
            }
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(3))
                .connect_with(opts)
                .await?;
            Ok(Store {
                backend: Backend::Postgres(pool),
                breaker: std::sync::Arc::new(Breaker::new(true)),
                argon2: std::sync::Arc::new(crate::crypto::gate::Argon2Gate::for_this_machine()),
            })
        } else {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(StoreError::from)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            // An embedded file cannot go away under us: no liveness ping
            // before every acquire (it was a round trip to the connection's
            // thread for every statement).
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts)
                .await?;
            Ok(Store {
                backend: Backend::Sqlite(pool),
                breaker: std::sync::Arc::new(Breaker::new(false)),
                argon2: std::sync::Arc::new(crate::crypto::gate::Argon2Gate::for_this_machine()),
            })
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(p) => SQLITE_MIGRATOR
                .run(p)
                .await
                .map_err(|e| StoreError::Other(e.to_string())),
            Backend::Postgres(p) => POSTGRES_MIGRATOR
                .run(p)
                .await
                .map_err(|e| StoreError::Other(e.to_string())),
        }
    }

    pub async fn ping(&self) -> Result<()> {
        on!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()).map_err(Into::into))
    }

    // ---- short-lived rows -------------------------------------------------

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

    /// Count one attempt of `key` in its current fixed window of
    /// `window_secs` (a new window starts when the stored one is over), in
    /// one atomic statement. Returns the count including this attempt and
    /// the window's start. See `crate::limits`.
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

    /// Revoke every access token issued within a browser session (logout).
    pub async fn revoke_session_tokens(&self, fed: &str, session_id: &str) -> Result<u64> {
        let n = on!(self, p => sqlx::query("UPDATE tokens SET revoked = 1 WHERE session_id = $1 AND federation = $2")
            .bind(session_id).bind(fed).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n)
    }

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
