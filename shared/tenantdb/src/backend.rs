//! The one backend contract every tenant database store implements — the Turso Platform
//! operations, generalised — and the handle of an opened tenant database.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use fleet_protocol::turso::{TursoDatabaseInfo, TursoTokenScope};
use fleet_protocol::{DatabaseName, TenantId};
use libsql::Connection;
use secrecy::SecretString;

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantDbError {
    /// The database does not exist.
    #[error("database {0} not found")]
    NotFound(String),
    /// The database exists but belongs to someone else (or has other settings).
    #[error("database {name} already exists and is not this tenant's ({why})")]
    AlreadyExists {
        /// The database.
        name: String,
        /// What differs.
        why: String,
    },
    /// The group does not exist.
    #[error("group {0:?} not found")]
    GroupNotFound(String),
    /// The token was refused (unknown, revoked, expired, or read-only for a write).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The platform account cannot do this (no subscription, quota).
    #[error("the platform refused the request for the account: {0}")]
    NoSubscription(String),
    /// The request is invalid.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The backend is temporarily unavailable (timeout, 429, 5xx, connection lost).
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A local I/O error.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A stored record is complete but unreadable (not a torn write a retry could reclaim):
    /// permanent, it needs an operator.
    #[error("{what} is corrupt: {why}")]
    Corrupt {
        /// What was read (e.g. `the record of acme`).
        what: String,
        /// Why it cannot be used.
        why: String,
    },
    /// libSQL failed.
    #[error("{what}")]
    Database {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: libsql::Error,
    },
}

impl TenantDbError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// A copy of this error (libSQL and I/O sources are carried over as their messages), for
    /// errors shared between concurrent waiters.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::NotFound(n) => Self::NotFound(n.clone()),
            Self::AlreadyExists { name, why } => Self::AlreadyExists {
                name: name.clone(),
                why: why.clone(),
            },
            Self::GroupNotFound(g) => Self::GroupNotFound(g.clone()),
            Self::Unauthorized(m) => Self::Unauthorized(m.clone()),
            Self::NoSubscription(m) => Self::NoSubscription(m.clone()),
            Self::BadRequest(m) => Self::BadRequest(m.clone()),
            Self::Unavailable(m) => Self::Unavailable(m.clone()),
            Self::Corrupt { what, why } => Self::Corrupt {
                what: what.clone(),
                why: why.clone(),
            },
            Self::Io { what, source } => Self::Io {
                what: what.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Self::Database { what, source } => Self::Database {
                what: what.clone(),
                source: libsql::Error::ConnectionFailed(source.to_string()),
            },
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(libsql::Error) -> Self {
        let what = what.into();
        move |source| Self::Database { what, source }
    }
}

/// Result of a backend operation.
pub type TenantDbResult<T> = Result<T, TenantDbError>;

/// A freshly issued database token (shown once; store it sealed).
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The token.
    pub token: SecretString,
    /// Its scope.
    pub scope: TursoTokenScope,
    /// Its lifetime (`None`: it never expires).
    pub expires_in: Option<Duration>,
}

/// Where tenant databases live: create, find, list, delete, authorise and open them.
#[async_trait]
pub trait TenantDatabases: Send + Sync + fmt::Debug {
    /// The database name of a tenant (deterministic, so provisioning is idempotent).
    fn database_name(&self, tenant: &TenantId) -> DatabaseName;

    /// The connection URL of a database.
    fn connection_url(&self, database: &DatabaseName) -> String;

    /// Creates the tenant's database in `group` (the backend's default when `None`). Creating a
    /// database that already exists for the same tenant and group returns it (idempotent).
    async fn create_database(
        &self,
        tenant: &TenantId,
        group: Option<&str>,
    ) -> TenantDbResult<TursoDatabaseInfo>;

    /// The database, or `None`.
    async fn get_database(
        &self,
        database: &DatabaseName,
    ) -> TenantDbResult<Option<TursoDatabaseInfo>>;

    /// Every database, optionally of one group.
    async fn list_databases(&self, group: Option<&str>) -> TenantDbResult<Vec<TursoDatabaseInfo>>;

    /// Deletes a database; `false` when there was none (deleting is idempotent).
    async fn delete_database(&self, database: &DatabaseName) -> TenantDbResult<bool>;

    /// Issues a token for the database.
    async fn issue_token(
        &self,
        database: &DatabaseName,
        scope: TursoTokenScope,
        expires_in: Option<Duration>,
    ) -> TenantDbResult<IssuedToken>;

    /// Invalidates every token of the database.
    async fn rotate_tokens(&self, database: &DatabaseName) -> TenantDbResult<()>;

    /// Storage the database uses, in bytes.
    async fn storage_bytes(&self, database: &DatabaseName) -> TenantDbResult<u64>;

    /// Opens the database with `token` (refused when the token is not valid for it).
    async fn open(
        &self,
        database: &DatabaseName,
        token: &SecretString,
    ) -> TenantDbResult<TenantDatabase>;
}

/// An opened tenant database. Hand each task its own connection ([`TenantDatabase::connect`]):
/// libSQL connections must not be shared between tasks.
pub struct TenantDatabase {
    tenant: TenantId,
    database: DatabaseName,
    db: libsql::Database,
    read_only: bool,
    local: bool,
}

impl fmt::Debug for TenantDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantDatabase")
            .field("tenant", &self.tenant)
            .field("database", &self.database)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl TenantDatabase {
    pub(crate) fn new(
        tenant: TenantId,
        database: DatabaseName,
        db: libsql::Database,
        read_only: bool,
        local: bool,
    ) -> Self {
        Self {
            tenant,
            database,
            db,
            read_only,
            local,
        }
    }

    /// The tenant this database belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The database's name.
    pub fn database(&self) -> &DatabaseName {
        &self.database
    }

    /// Whether it was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// A new connection: busy timeout, foreign keys on, and (local files) full fsync.
    pub async fn connect(&self) -> TenantDbResult<Connection> {
        let conn = self.db.connect().map_err(TenantDbError::db(format!(
            "connecting to {}",
            self.database
        )))?;
        if self.local {
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(TenantDbError::db("busy_timeout"))?;
            // WAL + synchronous=FULL: a committed transaction survives power loss, not only a crash.
            let pragmas = if self.read_only {
                "PRAGMA foreign_keys = ON; PRAGMA query_only = ON;"
            } else {
                "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;"
            };
            conn.execute_batch(pragmas)
                .await
                .map_err(TenantDbError::db("connection pragmas"))?;
        }
        Ok(conn)
    }
}
