//! The control plane over JetStream, for workers and `fleetctl` alike:
//!
//! - [`tenants`], [`deployments`]: the typed state stores of tenants and deployments
//!   (`fleet_tenants` / `fleet_deployments` KV, progress on `progress.tenant.<id>` /
//!   `progress.deploy.<id>`), built from a connected runtime;
//! - [`deploy_results`]: the per-tenant entries of deployments (targets, results, rollbacks),
//!   so a deployment's record stays the same size however many tenants it targets;
//! - [`KvTenantDirectory`]: those records served to the tenant router;
//! - [`TenantConnector`]: a tenant's database, opened from its record (one implementation for
//!   every worker that works inside tenants' databases);
//! - [`AppOperations`]: an app installed, upgraded or uninstalled on one tenant, with its
//!   install record and hooks (the installer's and the deployer's app rollouts' one code path).

#![deny(missing_docs)]

pub mod apps;
pub mod connect;
pub mod deploy_results;

pub use apps::{AppOperationError, AppOperations};
pub use connect::{ConnectError, TenantConnector};
pub use deploy_results::{DeployResults, ResultsError};

use async_trait::async_trait;
use fleet_protocol::{DatabaseName, TenantId};
use fleet_rollouts::Deployment;
use fleet_runtime::topology::names;
use fleet_runtime::{Runtime, RuntimeError, StateStore};
use fleet_tenantdb::{TenantDbError, TenantDirectory, TenantEntry};
use fleet_tenants::{TenantRecord, TransitionError};

/// The deployments' state store of a connected runtime.
pub async fn deployments(runtime: &Runtime) -> Result<StateStore<Deployment>, RuntimeError> {
    Ok(StateStore::new(
        "deploy",
        runtime.bucket(names::DEPLOYMENTS).await?,
        runtime.publisher.clone(),
        runtime.topology.subject("progress.deploy"),
    ))
}

/// The per-tenant entries of deployments of a connected runtime.
pub async fn deploy_results(runtime: &Runtime) -> Result<DeployResults, RuntimeError> {
    Ok(DeployResults::with_batched_reads(
        runtime.bucket(names::DEPLOY_RESULTS).await?,
        runtime.client.clone(),
    ))
}

/// The app installs' state store of a connected runtime (KV `fleet_installs`, key
/// `<tenant>.<app>`, progress on `progress.app.<tenant>.<app>`).
pub async fn installs(
    runtime: &Runtime,
) -> Result<StateStore<fleet_apps::InstallRecord>, RuntimeError> {
    Ok(StateStore::new(
        "app",
        runtime.bucket(names::INSTALLS).await?,
        runtime.publisher.clone(),
        runtime.topology.subject("progress.app"),
    ))
}

/// The tenants' last quota audits (KV `fleet_usage`, key the tenant, progress on
/// `progress.usage.<tenant>`).
pub async fn usage(
    runtime: &Runtime,
) -> Result<StateStore<fleet_tenants::audit::UsageRecord>, RuntimeError> {
    Ok(StateStore::new(
        "usage",
        runtime.bucket(names::USAGE).await?,
        runtime.publisher.clone(),
        runtime.topology.subject("progress.usage"),
    ))
}

/// The tenants' state store of a connected runtime.
pub async fn tenants(runtime: &Runtime) -> Result<StateStore<TenantRecord>, RuntimeError> {
    Ok(StateStore::new(
        "tenant",
        runtime.bucket(names::TENANTS).await?,
        runtime.publisher.clone(),
        runtime.topology.subject("progress.tenant"),
    ))
}

/// The tenant router's view of the control plane: the tenants KV bucket.
#[derive(Debug, Clone)]
pub struct KvTenantDirectory {
    tenants: StateStore<TenantRecord>,
}

impl KvTenantDirectory {
    /// A directory over the tenants' state store.
    pub fn new(tenants: StateStore<TenantRecord>) -> Self {
        Self { tenants }
    }
}

#[async_trait]
impl TenantDirectory for KvTenantDirectory {
    async fn lookup(&self, tenant: &TenantId) -> Result<Option<TenantEntry>, TenantDbError> {
        let record = self
            .tenants
            .get::<TransitionError>(tenant.as_str())
            .await
            .map_err(|e| TenantDbError::Unavailable(format!("tenant directory: {e}")))?;
        Ok(record.and_then(|v| {
            let r = v.state;
            if r.is_deleted() {
                return None;
            }
            let database = r
                .database
                .as_deref()
                .and_then(|d| DatabaseName::parse(d).ok())?;
            let status = r.status();
            let connection = r.connection?;
            Some(TenantEntry {
                tenant: r.tenant_id,
                status,
                plan: r.plan,
                region: r.region,
                database,
                connection,
            })
        }))
    }
}
