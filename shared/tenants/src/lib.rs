//! The tenant control plane shared by the workers and `fleetctl`: the tenant record kept in the
//! `fleet_tenants` KV bucket, its pure state machine ([`machine`]), and [`KvTenantDirectory`],
//! which serves those records to the tenant router.

#![deny(missing_docs)]

pub mod machine;

use async_trait::async_trait;
use fleet_protocol::{DatabaseName, TenantId};
use fleet_runtime::StateStore;
use fleet_tenantdb::{TenantDbError, TenantDirectory, TenantEntry};

pub use machine::{TenantRecord, TransitionError, status_name};

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
            if r.deleted {
                return None;
            }
            let database = r
                .database
                .as_deref()
                .and_then(|d| DatabaseName::parse(d).ok())?;
            let connection = r.connection?;
            Some(TenantEntry {
                tenant: r.tenant_id,
                status: r.status,
                plan: r.plan,
                region: r.region,
                database,
                connection,
            })
        }))
    }
}
