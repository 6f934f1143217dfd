//! Tenant databases: each tenant's data in its own database, compute shared.
//!
//! - [`TenantDatabases`] is the one backend contract (the Turso Platform operations,
//!   generalised): create in a group, get, list, delete, issue tokens (`full-access` or
//!   `read-only`, with an expiration), rotate (revoke all), storage usage, open.
//! - Three backends, chosen by configuration ([`backend_from_config`]): [`LocalBackend`] (the
//!   embedded default: one libSQL file per tenant), [`TursoBackend`] (Turso Cloud through the
//!   Platform API; connections in libSQL's remote mode) and [`MemoryBackend`] (tests).
//! - [`Router`] maps a request to its tenant and a tenant to its database through a bounded
//!   cache, refusing unknown and suspended tenants; it implements the protocol's `TenantRouter`
//!   contract.
//! - [`secrets`] keeps connection tokens sealed at rest (AEAD, rotating keys) and out of logs.

#![deny(missing_docs)]

pub mod backend;
pub mod crashpoint;
mod embedded;
pub mod local;
pub mod memory;
pub mod platform;
pub mod router;
pub mod secrets;
pub mod turso;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use fleet_config::{BackendKind, Config};
use fleet_protocol::TenantId;
use secrecy::SecretString;

pub use backend::{IssuedToken, TenantDatabase, TenantDatabases, TenantDbError, TenantDbResult};
pub use local::LocalBackend;
pub use memory::MemoryBackend;
pub use router::{
    Router, RouterError, RouterSettings, TenantConnection, TenantDirectory, TenantEntry,
};
pub use secrets::{KeyRing, SecretError, StoredConnectionConfig};
pub use turso::{TursoApiSettings, TursoBackend, TursoClient};

/// Why the tenant database layer could not be set up from configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The secrets configuration is unusable.
    #[error(transparent)]
    Secrets(#[from] SecretError),
    /// The backend could not be built.
    #[error(transparent)]
    Backend(#[from] TenantDbError),
    /// A setting is missing for the chosen backend.
    #[error("configuration: {0}")]
    Missing(String),
}

/// Turns SQLite's memory statistics (`SQLITE_CONFIG_MEMSTATUS`) off for this process, so that
/// SQLite's allocations stop taking a process-wide mutex to count themselves.
///
/// With them on (SQLite's default), every `sqlite3_malloc`/`sqlite3_free` locks one global
/// mutex; a worker running its jobs on several threads queues on it (a profile of the
/// provisioner at full load showed mutex lock/unlock and futex waits as its largest items
/// outside SQLite's parser). Nothing in the fleet reads the statistics
/// (`sqlite3_memory_used`, `sqlite3_status`). SQLite accepts the setting only before it is
/// initialised — libSQL initialises it when the process opens its first database — so this
/// runs once, first thing ([`backend_from_config`] calls it); a later call changes nothing.
/// Returns whether SQLite took the setting; when it did not, the first call logs a warning.
#[allow(unsafe_code)]
pub fn tune_sqlite() -> bool {
    static TOOK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TOOK.get_or_init(|| {
        // SAFETY: sqlite3_config with SQLITE_CONFIG_MEMSTATUS takes one int; SQLite refuses
        // it with SQLITE_MISUSE (and changes nothing) once initialised.
        let rc = unsafe {
            libsql::ffi::sqlite3_config(
                libsql::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::os::raw::c_int,
            )
        };
        let took = rc == libsql::ffi::SQLITE_OK as std::os::raw::c_int;
        if !took {
            // Said once: the process works as before, with SQLite's allocations counted under
            // its process-wide lock (slower with many threads).
            tracing::warn!(
                rc,
                "SQLite was initialised before its memory statistics could be turned off (a database opened before the backend was built)"
            );
        }
        took
    })
}

/// The backend the configuration selects.
pub fn backend_from_config(config: &Config) -> Result<Arc<dyn TenantDatabases>, SetupError> {
    tune_sqlite();
    let db = &config.tenantdb;
    Ok(match db.backend {
        BackendKind::Local => Arc::new(LocalBackend::new(
            db.data_dir.clone(),
            db.database_prefix.clone(),
        )),
        BackendKind::Memory => Arc::new(MemoryBackend::new(db.database_prefix.clone())),
        BackendKind::Turso => {
            let turso = &db.turso;
            if turso.organization.is_empty() || turso.api_token.is_empty() {
                return Err(SetupError::Missing(
                    "tenantdb.turso.organization and tenantdb.turso.api_token (FLEET_TENANTDB__TURSO__API_TOKEN) are required by the turso backend".into(),
                ));
            }
            let client = TursoClient::new(TursoApiSettings {
                base_url: turso.api_url.clone(),
                organization: turso.organization.clone(),
                api_token: SecretString::from(turso.api_token.clone()),
                request_timeout: Duration::from_millis(turso.request_timeout_ms),
                retry: turso.retry.clone(),
                rate_limit_per_second: NonZeroU32::new(turso.rate_limit_per_second)
                    .unwrap_or(NonZeroU32::MIN),
            })?;
            Arc::new(TursoBackend::new(
                client,
                turso.default_group.clone(),
                db.database_prefix.clone(),
                db.url_template.clone(),
            ))
        }
    })
}

/// The key ring the configuration describes.
pub fn key_ring_from_config(config: &Config) -> Result<KeyRing, SetupError> {
    let keys: Vec<(String, SecretString)> = config
        .secrets
        .keys
        .iter()
        .map(|(id, key)| (id.clone(), SecretString::from(key.clone())))
        .collect();
    Ok(KeyRing::new(
        &config.secrets.active_key,
        keys.iter().map(|(id, key)| (id.as_str(), key)),
    )?)
}

/// Router settings from the configuration.
pub fn router_settings_from_config(config: &Config) -> RouterSettings {
    let r = &config.router;
    RouterSettings {
        strategy: r.strategy,
        header: r.header.to_ascii_lowercase(),
        path_segment: r.path_segment,
        token_claim: r.token_claim.clone(),
        max_cached_connections: r.max_cached_connections,
        connection_cache_ttl: Duration::from_secs(r.connection_cache_ttl_secs),
    }
}

/// A [`TenantDirectory`] held in memory: for tests, tools and single-process setups (the
/// workers' directory is the JetStream KV bucket of tenants).
#[derive(Debug, Default)]
pub struct InMemoryDirectory {
    entries: RwLock<HashMap<TenantId, TenantEntry>>,
    hosts: RwLock<HashMap<String, TenantId>>,
}

impl InMemoryDirectory {
    /// Adds or replaces a tenant's record.
    pub fn upsert(&self, entry: TenantEntry) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.tenant.clone(), entry);
    }

    /// Maps a host name to a tenant (the `lookup` strategy).
    pub fn map_host(&self, host: &str, tenant: TenantId) {
        self.hosts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), tenant);
    }

    /// Changes a tenant's status.
    pub fn set_status(&self, tenant: &TenantId, status: fleet_protocol::TenantProvisioningStatus) {
        if let Some(entry) = self
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(tenant)
        {
            entry.status = status;
        }
    }
}

#[async_trait]
impl TenantDirectory for InMemoryDirectory {
    async fn lookup(&self, tenant: &TenantId) -> Result<Option<TenantEntry>, TenantDbError> {
        Ok(self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned())
    }

    async fn tenant_for_host(&self, host: &str) -> Result<Option<TenantId>, TenantDbError> {
        Ok(self
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned())
    }
}
