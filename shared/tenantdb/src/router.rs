//! The tenant router: from a request to its tenant, and from a tenant to its database.
//!
//! The tenant id comes from the request by the configured [`TenantResolverStrategy`] and is
//! parsed ([`TenantId`]) before anything else sees it. The tenant's record comes from the
//! [`TenantDirectory`] (the control plane); unknown and non-active tenants are refused with typed
//! errors. Opened databases sit in a bounded cache (max entries + TTL, moka) keyed by tenant id;
//! concurrent first requests for one tenant share a single open; an evicted database is dropped,
//! which closes it. Every handle carries its tenant id and is checked against the requested one
//! before it is returned, so one tenant's database can never be handed to another.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_protocol::contracts::{
    ContractError, ContractResult, RequestParts, ResolvedTenantContext,
};
use fleet_protocol::{
    DatabaseName, TenantId, TenantPlan, TenantProvisioningStatus, TenantRegion,
    TenantResolverStrategy,
};
use libsql::Connection;
use moka::future::Cache;

use crate::backend::{TenantDatabase, TenantDatabases, TenantDbError};
use crate::secrets::{KeyRing, SecretError, StoredConnectionConfig};

/// What the control plane knows about a tenant, as the router needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEntry {
    /// The tenant.
    pub tenant: TenantId,
    /// Its status.
    pub status: TenantProvisioningStatus,
    /// Its plan.
    pub plan: TenantPlan,
    /// Its region.
    pub region: TenantRegion,
    /// Its database.
    pub database: DatabaseName,
    /// How to reach the database (token sealed).
    pub connection: StoredConnectionConfig,
}

/// The control plane's tenant records.
#[async_trait]
pub trait TenantDirectory: Send + Sync {
    /// The tenant's record, or `None` for an unknown tenant.
    async fn lookup(&self, tenant: &TenantId) -> Result<Option<TenantEntry>, TenantDbError>;

    /// The tenant serving a host name (the `lookup` strategy); `None` when none does.
    async fn tenant_for_host(&self, host: &str) -> Result<Option<TenantId>, TenantDbError> {
        let _ = host;
        Ok(None)
    }
}

/// Why the router refused a request.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The request names no tenant (for the configured strategy).
    #[error("the request names no tenant ({0})")]
    NoTenant(&'static str),
    /// The request names a tenant id that is not valid.
    #[error("invalid tenant id: {0}")]
    InvalidTenantId(#[from] fleet_protocol::InvalidIdentifier),
    /// No such tenant.
    #[error("unknown tenant {0}")]
    UnknownTenant(TenantId),
    /// The tenant is suspended.
    #[error("tenant {0} is suspended")]
    Suspended(TenantId),
    /// The tenant is not active (provisioning, failed, destroying).
    #[error("tenant {tenant} is {status:?}, not active")]
    NotActive {
        /// The tenant.
        tenant: TenantId,
        /// Its status.
        status: TenantProvisioningStatus,
    },
    /// The tenant's stored credentials cannot be opened.
    #[error("credentials of tenant {tenant}")]
    Secret {
        /// The tenant.
        tenant: TenantId,
        /// Why the sealed token could not be opened (`Malformed` too when the record has none).
        #[source]
        source: SecretError,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] TenantDbError),
    /// A cached handle did not belong to the requested tenant (never expected; refused).
    #[error("isolation check failed: asked for {asked}, cache held {held}")]
    Isolation {
        /// The tenant asked for.
        asked: TenantId,
        /// The tenant the handle belongs to.
        held: TenantId,
    },
}

impl From<Arc<RouterError>> for RouterError {
    /// moka shares one open's error between every concurrent waiter: each gets a copy.
    fn from(shared: Arc<RouterError>) -> Self {
        match &*shared {
            RouterError::NoTenant(why) => RouterError::NoTenant(why),
            RouterError::InvalidTenantId(e) => RouterError::InvalidTenantId(e.clone()),
            RouterError::UnknownTenant(t) => RouterError::UnknownTenant(t.clone()),
            RouterError::Suspended(t) => RouterError::Suspended(t.clone()),
            RouterError::NotActive { tenant, status } => RouterError::NotActive {
                tenant: tenant.clone(),
                status: *status,
            },
            RouterError::Secret { tenant, source } => RouterError::Secret {
                tenant: tenant.clone(),
                source: source.clone(),
            },
            RouterError::Backend(e) => RouterError::Backend(e.duplicate()),
            RouterError::Isolation { asked, held } => RouterError::Isolation {
                asked: asked.clone(),
                held: held.clone(),
            },
        }
    }
}

/// Router settings (upstream `TursoMultiTenantConfig`'s router part, plus where to look).
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// How the tenant is found in a request.
    pub strategy: TenantResolverStrategy,
    /// Header of the `header` strategy (lowercase), `x-tenant-id` by default.
    pub header: String,
    /// Path segment index of the `path` strategy (`/api/acme/…` → 1).
    pub path_segment: usize,
    /// Claim of the `token` strategy.
    pub token_claim: String,
    /// `maxCachedConnections`.
    pub max_cached_connections: u64,
    /// `connectionCacheTTL`.
    pub connection_cache_ttl: Duration,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            strategy: TenantResolverStrategy::Header,
            header: "x-tenant-id".to_owned(),
            path_segment: 1,
            token_claim: "tenant_id".to_owned(),
            max_cached_connections: 100,
            connection_cache_ttl: Duration::from_secs(300),
        }
    }
}

/// A connection to one tenant's database, labelled with its tenant.
#[derive(Debug)]
pub struct TenantConnection {
    /// The tenant.
    pub tenant: TenantId,
    /// The connection (use it from one task).
    pub conn: Connection,
}

/// Resolves requests to tenants and tenants to databases.
pub struct Router {
    settings: RouterSettings,
    directory: Arc<dyn TenantDirectory>,
    backend: Arc<dyn TenantDatabases>,
    keys: Arc<KeyRing>,
    cache: Cache<TenantId, Arc<TenantDatabase>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("settings", &self.settings)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router over `directory` and `backend`, opening sealed tokens with `keys`.
    pub fn new(
        settings: RouterSettings,
        directory: Arc<dyn TenantDirectory>,
        backend: Arc<dyn TenantDatabases>,
        keys: Arc<KeyRing>,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(settings.max_cached_connections.max(1))
            .time_to_live(settings.connection_cache_ttl)
            .support_invalidation_closures()
            .eviction_listener(|tenant: Arc<TenantId>, _db, cause| {
                tracing::debug!(%tenant, ?cause, "tenant database closed");
            })
            .build();
        Self {
            settings,
            directory,
            backend,
            keys,
            cache,
        }
    }

    /// The tenant id a request names, by the configured strategy.
    pub async fn tenant_of(&self, request: &RequestParts) -> Result<TenantId, RouterError> {
        let raw: Option<String> = match self.settings.strategy {
            TenantResolverStrategy::Header => request.headers.get(&self.settings.header).cloned(),
            TenantResolverStrategy::Subdomain => {
                let host = request
                    .host
                    .as_deref()
                    .map(|h| h.split(':').next().unwrap_or(h));
                host.filter(|h| h.split('.').count() >= 3)
                    .and_then(|h| h.split('.').next())
                    .map(str::to_owned)
            }
            TenantResolverStrategy::Path => request
                .path
                .split('/')
                .filter(|s| !s.is_empty())
                .nth(self.settings.path_segment)
                .map(str::to_owned),
            TenantResolverStrategy::Token => request
                .claims
                .get(&self.settings.token_claim)
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            TenantResolverStrategy::Lookup => {
                let Some(host) = request.host.as_deref() else {
                    return Err(RouterError::NoTenant("no host"));
                };
                let host = host.split(':').next().unwrap_or(host);
                return self
                    .directory
                    .tenant_for_host(host)
                    .await?
                    .ok_or(RouterError::NoTenant("no tenant serves this host"));
            }
        };
        let raw = raw.ok_or(RouterError::NoTenant(match self.settings.strategy {
            TenantResolverStrategy::Header => "no tenant header",
            TenantResolverStrategy::Subdomain => "no tenant subdomain",
            TenantResolverStrategy::Path => "no tenant path segment",
            _ => "no tenant claim",
        }))?;
        Ok(TenantId::parse(raw)?)
    }

    async fn active_entry(&self, tenant: &TenantId) -> Result<TenantEntry, RouterError> {
        let entry = self
            .directory
            .lookup(tenant)
            .await?
            .ok_or_else(|| RouterError::UnknownTenant(tenant.clone()))?;
        match entry.status {
            TenantProvisioningStatus::Active => Ok(entry),
            TenantProvisioningStatus::Suspended => Err(RouterError::Suspended(tenant.clone())),
            status => Err(RouterError::NotActive {
                tenant: tenant.clone(),
                status,
            }),
        }
    }

    /// The tenant's opened database, from the cache or opened now (once, however many ask).
    pub async fn database(&self, tenant: &TenantId) -> Result<Arc<TenantDatabase>, RouterError> {
        let db = self
            .cache
            .try_get_with(tenant.clone(), async {
                let entry = self.active_entry(tenant).await?;
                let token = entry
                    .connection
                    .auth_token(tenant, &self.keys)
                    .map_err(|source| RouterError::Secret {
                        tenant: tenant.clone(),
                        source,
                    })?
                    .ok_or_else(|| RouterError::Secret {
                        tenant: tenant.clone(),
                        source: SecretError::Malformed,
                    })?;
                let db = self.backend.open(&entry.database, &token).await?;
                Ok::<_, RouterError>(Arc::new(db))
            })
            .await
            .map_err(RouterError::from)?;
        if db.tenant() != tenant {
            self.cache.invalidate(tenant).await;
            return Err(RouterError::Isolation {
                asked: tenant.clone(),
                held: db.tenant().clone(),
            });
        }
        Ok(db)
    }

    /// A new connection to the tenant's database.
    pub async fn connect(&self, tenant: &TenantId) -> Result<TenantConnection, RouterError> {
        let db = self.database(tenant).await?;
        Ok(TenantConnection {
            tenant: db.tenant().clone(),
            conn: db.connect().await?,
        })
    }

    /// Forgets the tenant's cached database (after a suspension, rotation or plan change).
    pub async fn invalidate(&self, tenant: &TenantId) {
        self.cache.invalidate(tenant).await;
    }

    /// How many databases are cached (after pending maintenance).
    pub async fn cached(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

fn contract_error(err: RouterError) -> ContractError {
    match err {
        RouterError::UnknownTenant(t) => ContractError::NotFound {
            kind: "tenant",
            name: t.to_string(),
        },
        RouterError::Suspended(t) => {
            ContractError::IllegalState(format!("tenant {t} is suspended"))
        }
        RouterError::NotActive { tenant, status } => {
            ContractError::IllegalState(format!("tenant {tenant} is {status:?}"))
        }
        RouterError::Backend(e) if e.is_transient() => ContractError::Unavailable(e.to_string()),
        other => ContractError::Other(Box::new(other)),
    }
}

#[async_trait]
impl fleet_protocol::contracts::TenantRouter for Router {
    type Client = TenantConnection;

    async fn resolve_tenant(
        &self,
        request: &RequestParts,
    ) -> ContractResult<Option<ResolvedTenantContext>> {
        let tenant = match self.tenant_of(request).await {
            Ok(tenant) => tenant,
            Err(RouterError::NoTenant(_)) => return Ok(None),
            Err(e) => return Err(contract_error(e)),
        };
        let Some(entry) = self
            .directory
            .lookup(&tenant)
            .await
            .map_err(|e| contract_error(e.into()))?
        else {
            return Ok(None);
        };
        Ok(Some(ResolvedTenantContext {
            tenant_id: entry.tenant,
            plan: entry.plan,
            region: entry.region,
            db_url: entry.connection.url,
            status: entry.status,
        }))
    }

    async fn get_tenant_client(&self, tenant: &TenantId) -> ContractResult<TenantConnection> {
        self.connect(tenant).await.map_err(contract_error)
    }

    fn invalidate_cache(&self, tenant: &TenantId) {
        // moka's sync invalidation: drops the entry immediately for new lookups.
        self.cache
            .invalidate_entries_if({
                let tenant = tenant.clone();
                move |k, _| *k == tenant
            })
            .ok();
    }
}
