//! Storage: one interface over SQLite (default, embedded) and PostgreSQL
//! (several nodes). The backend is chosen from the URL scheme; queries are
//! written once with `$n` placeholders, which both backends accept.
//!
//! One `Store` value, its methods split by domain: [`flows`] (sessions,
//! interactions, logouts, purge), [`grants`] (codes, tokens, `jti`,
//! consents), [`registry`], [`agents`], [`throttle`], and the aidants'
//! tables in `crate::aidants::store`. This file: connection, migrations,
//! the circuit breaker and the `on!` macro (one SQL text for both
//! backends). SQL lives only under `store/` folders.

mod agents;
mod flows;
mod grants;
mod registry;
mod throttle;

pub use flows::Kind;
pub use grants::{Redeem, TokenRow};

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
}
