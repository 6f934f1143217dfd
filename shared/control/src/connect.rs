//! A tenant's database, reached the way every worker reaches it: the tenant's record in the
//! control plane (it must be `active`), its sealed connection token opened with the key ring,
//! and the backend the configuration names. One implementation for the deployer, the installer
//! and whatever comes next.

use std::sync::Arc;

use fleet_protocol::{DatabaseName, TenantId, TenantProvisioningStatus};
use fleet_runtime::{StateError, StateStore, error_chain};
use fleet_tenantdb::{KeyRing, SecretError, TenantDatabases, TenantDbError};
use fleet_tenants::TenantRecord;

/// Why a tenant's database could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No such tenant in the control plane.
    #[error("unknown tenant {0}")]
    Unknown(TenantId),
    /// Only active tenants are worked on.
    #[error("tenant {0} is not active")]
    NotActive(TenantId),
    /// The record has no (usable) connection.
    #[error("tenant {0} has no stored connection")]
    NoConnection(TenantId),
    /// The stored token could not be unsealed.
    #[error("the stored connection of tenant {tenant}")]
    Token {
        /// The tenant.
        tenant: TenantId,
        /// Why the sealed token would not open (wrong key, another tenant's, tampered).
        #[source]
        source: SecretError,
    },
    /// The tenant's database could not be opened or connected to.
    #[error("opening the database of tenant {tenant}")]
    Open {
        /// The tenant.
        tenant: TenantId,
        /// The backend's error (transient when it says so).
        #[source]
        source: TenantDbError,
    },
    /// The tenants' store could not be read.
    #[error("reading tenant {tenant}")]
    Store {
        /// The tenant.
        tenant: TenantId,
        /// The KV store's error.
        #[source]
        source: StateError<std::convert::Infallible>,
    },
}

impl ConnectError {
    /// Whether retrying later may succeed: the store or the backend is unavailable, or the
    /// token read with the record was refused — revoked by a suspension or rotation between
    /// the read and the open, so the next attempt reads the record (and its new state) again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Open {
                source: TenantDbError::Unauthorized(_),
                ..
            } => true,
            Self::Open { source, .. } => source.is_transient(),
            Self::Store { .. } => true,
            _ => false,
        }
    }
}

/// Opens tenants' databases from their records.
#[derive(Clone)]
pub struct TenantConnector {
    tenants: StateStore<TenantRecord>,
    backend: Arc<dyn TenantDatabases>,
    keys: Arc<KeyRing>,
}

impl std::fmt::Debug for TenantConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConnector").finish_non_exhaustive()
    }
}

impl TenantConnector {
    /// A connector over the tenants' store, a backend and the key ring that seals tokens.
    pub fn new(
        tenants: StateStore<TenantRecord>,
        backend: Arc<dyn TenantDatabases>,
        keys: Arc<KeyRing>,
    ) -> Self {
        Self {
            tenants,
            backend,
            keys,
        }
    }

    /// The tenant's record and a connection opened with its stored token (active tenants only).
    pub async fn connect(
        &self,
        tenant: &TenantId,
    ) -> Result<(TenantRecord, libsql::Connection), ConnectError> {
        self.open(tenant, false).await
    }

    /// The storage a remote database uses by its platform's own account (Turso: the Platform
    /// API's usage endpoint); `None` for a local file, whose pages the caller counts itself.
    pub async fn remote_storage_bytes(
        &self,
        tenant: &TenantId,
        record: &TenantRecord,
    ) -> Result<Option<u64>, ConnectError> {
        let database = record
            .database
            .as_deref()
            .and_then(|n| DatabaseName::parse(n).ok())
            .unwrap_or_else(|| self.backend.database_name(tenant));
        let url = self.backend.connection_url(&database);
        if url.starts_with("file:") || url.starts_with("memory:") {
            return Ok(None);
        }
        self.backend
            .storage_bytes(&database)
            .await
            .map(Some)
            .map_err(|source| ConnectError::Open {
                tenant: tenant.clone(),
                source,
            })
    }

    /// [`Self::connect`], for a suspended tenant too (through the read-only token it keeps):
    /// for readers such as the quota auditor.
    pub async fn connect_readable(
        &self,
        tenant: &TenantId,
    ) -> Result<(TenantRecord, libsql::Connection), ConnectError> {
        self.open(tenant, true).await
    }

    async fn open(
        &self,
        tenant: &TenantId,
        suspended_too: bool,
    ) -> Result<(TenantRecord, libsql::Connection), ConnectError> {
        let record = self
            .tenants
            .get::<std::convert::Infallible>(tenant.as_str())
            .await
            .map_err(|source| ConnectError::Store {
                tenant: tenant.clone(),
                source,
            })?
            .ok_or_else(|| ConnectError::Unknown(tenant.clone()))?
            .state;
        let readable = record.status() == TenantProvisioningStatus::Active
            || (suspended_too && record.status() == TenantProvisioningStatus::Suspended);
        if !readable {
            return Err(ConnectError::NotActive(tenant.clone()));
        }
        let connection = record
            .connection
            .clone()
            .ok_or_else(|| ConnectError::NoConnection(tenant.clone()))?;
        let token = connection
            .auth_token(tenant, &self.keys)
            .map_err(|source| ConnectError::Token {
                tenant: tenant.clone(),
                source,
            })?
            .ok_or_else(|| ConnectError::NoConnection(tenant.clone()))?;
        let database = record
            .database
            .as_deref()
            .and_then(|n| DatabaseName::parse(n).ok())
            .unwrap_or_else(|| self.backend.database_name(tenant));
        let open = |source| ConnectError::Open {
            tenant: tenant.clone(),
            source,
        };
        let db = self.backend.open(&database, &token).await.map_err(open)?;
        let conn = db.connect().await.map_err(|e| {
            // A connection that will not come up now may later.
            open(TenantDbError::Unavailable(error_chain(&e)))
        })?;
        Ok((record, conn))
    }
}
