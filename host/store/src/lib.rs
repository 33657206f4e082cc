//! Storage: sqlx over SQLite (default, one file, WAL) or PostgreSQL, the migrations of both,
//! and one file per table family (`jobs`, `builds`, `queue`, `secrets`, `artifacts`, ...).
//!
//! Queries are written once against sqlx's `Any` driver with `$N` placeholders, which both
//! backends accept; where the backends differ (leasing), the code says so. Times are stored as
//! milliseconds since the Unix epoch.

#![warn(missing_docs)]

pub mod agents;
pub mod artifacts;
pub mod builds;
pub mod events;
pub mod jobs;
pub mod logs;
pub mod plugins;
pub mod queue;
pub mod schedules;
pub mod secrets;
pub mod tests_results;
pub mod users;
pub mod webhooks;

use chengis_model::Status;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use std::time::Duration;
use thiserror::Error;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// What went wrong in the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database URL is not one we support.
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database was migrated by a newer Chengis.
    #[error(
        "the database is at schema version {database}, newer than this binary's {binary}: run a newer chengis, or restore a backup"
    )]
    TooNew {
        /// Newest migration applied to the database.
        database: i64,
        /// Newest migration this binary knows.
        binary: i64,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Something that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A name that is taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// A status change the state machine forbids.
    #[error("{what}: cannot go from {from} to {to}")]
    IllegalTransition {
        /// What changed.
        what: String,
        /// Its current status.
        from: Status,
        /// The refused status.
        to: Status,
    },
    /// A write with a fencing token older than the current lease.
    #[error("stale lease on queue entry {entry}: token {token} is no longer current")]
    StaleLease {
        /// The queue entry.
        entry: i64,
        /// The token presented.
        token: i64,
    },
    /// A stored value that does not parse.
    #[error("corrupt {what} in the database: {detail}")]
    Corrupt {
        /// What was read.
        what: &'static str,
        /// Why it does not parse.
        detail: String,
    },
    /// Encryption or decryption of a secret failed.
    #[error("{0}")]
    Crypto(String),
}

/// The database of a Chengis server.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The group-commit writer of webhook deliveries, started on first use.
    deliveries: std::sync::Arc<std::sync::OnceLock<webhooks::DeliveryWriter>>,
    /// The parsed plans of the builds read last (a plan never changes once stored; every job
    /// of a wide build reads it).
    plans: std::sync::Arc<std::sync::Mutex<RecentPlans>>,
    /// Counts this process's changes to plugin records and configs (for caches of them).
    plugin_changes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Parsed plans by build id, oldest first.
type RecentPlans = std::collections::VecDeque<(i64, std::sync::Arc<chengis_pipeline::Plan>)>;

/// A new random secret: `prefix` and 64 hex digits (256 bits from the OS).
pub fn new_secret(prefix: &str) -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut raw = [0u8; 32];
    aes_gcm::aead::OsRng.fill_bytes(&mut raw);
    format!("{prefix}{}", hex::encode(raw))
}

/// How a secret is stored and looked up: its SHA-256 in hex. Looking up by digest means no
/// comparison of secrets ever runs in variable time.
pub(crate) fn secret_digest(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

pub use chengis_model::now_ms;

/// `url` with the password (if any) replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` creates the file; `postgres://...`), applies the
    /// migrations, and refuses a database newer than this binary.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let (url, max) = match backend {
            Backend::Sqlite if url.contains('?') => (url.to_string(), 4),
            Backend::Sqlite => (format!("{url}?mode=rwc"), 4),
            Backend::Postgres => (url.to_string(), 16),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            // A SQLite connection is a file handle that cannot drop: no ping (a round trip to
            // its worker thread) before every statement.
            .test_before_acquire(backend != Backend::Sqlite)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect { url: redact_url(&url), source })?;
        let store = Store {
            pool,
            backend,
            deliveries: Default::default(),
            plans: Default::default(),
            plugin_changes: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The migrations of this backend.
    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies pending migrations; refuses a database migrated by a newer binary.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let binary = self.migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations").fetch_one(&self.pool).await.ok().flatten();
        if let Some(database) = applied
            && database > binary
        {
            return Err(StoreError::TooNew { database, binary });
        }
        self.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// Parses a status stored as text.
pub(crate) fn parse_status(s: &str) -> Result<Status, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| StoreError::Corrupt { what: "status", detail: format!("unknown status `{s}`") })
}

#[cfg(any(test, feature = "test-support"))]
pub mod testdb;

#[cfg(test)]
mod tests;
