//! What a gateway replica knows about tenants: each tenant's record (status, plan, quotas) as
//! the tenants bucket (`fleet_tenants`) holds it, read on first use and kept current by a watch
//! of the bucket — so a suspension, a resumption, a plan change or a deletion takes effect on
//! every replica as soon as the record changes, and the tenant's cached database is dropped from
//! the router at the same moment.
//!
//! The cache is bounded ([`fleet_config::GatewayConfig::max_cached_tenants`]) and every entry
//! carries the record's revision: a read that raced a newer change never overwrites it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use fleet_protocol::TenantId;
use fleet_tenants::machine::TenantRecord;
use futures::StreamExt;
use moka::future::Cache;
use moka::ops::compute::Op;
use tokio::sync::watch;

/// Why a tenant's record could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the tenants bucket: {0}")]
pub struct TenantsError(String);

/// A tenant's record at a revision (`None`: no such tenant, or deleted).
#[derive(Debug, Clone)]
pub struct Seen {
    /// The record.
    pub record: Option<TenantRecord>,
    /// Its revision in the bucket (0: never written).
    pub revision: u64,
}

/// The tenants a replica has seen (see the module docs).
#[derive(Debug, Clone)]
pub struct Tenants {
    kv: kv::Store,
    cache: Cache<TenantId, Arc<Seen>>,
}

impl Tenants {
    /// Tenants of `kv` (the `fleet_tenants` bucket), at most `capacity` kept.
    pub fn new(kv: kv::Store, capacity: u64) -> Self {
        Self {
            kv,
            cache: Cache::builder().max_capacity(capacity.max(1)).build(),
        }
    }

    /// The tenant's record (from memory, or read now).
    pub async fn get(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, TenantsError> {
        if let Some(seen) = self.cache.get(tenant).await {
            return Ok(seen.record.clone());
        }
        self.refresh(tenant).await
    }

    /// The tenant's record read from the bucket now (when its database refused the token the
    /// record held: a suspension or a rotation the watch has not delivered yet).
    pub async fn refresh(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, TenantsError> {
        let seen = match self
            .kv
            .entry(tenant.as_str())
            .await
            .map_err(|e| TenantsError(e.to_string()))?
        {
            Some(entry) => Seen {
                record: parse(&entry),
                revision: entry.revision,
            },
            None => Seen {
                record: None,
                revision: 0,
            },
        };
        let record = seen.record.clone();
        self.offer(tenant, seen).await;
        Ok(record)
    }

    /// Keeps `seen` unless a newer revision is there already.
    async fn offer(&self, tenant: &TenantId, seen: Seen) {
        let seen = Arc::new(seen);
        self.cache
            .entry(tenant.clone())
            .and_compute_with(|current| {
                let newer = current.is_none_or(|c| c.value().revision < seen.revision);
                std::future::ready(if newer { Op::Put(seen) } else { Op::Nop })
            })
            .await;
    }

    /// Follows the bucket until `shutdown`: every change updates the tenant's entry (when the
    /// replica has one) and drops what `gateway` holds of its database
    /// ([`crate::Gateway::forget`]). A watch that ends is
    /// reopened; what changed meanwhile is unknown, so the cache starts over.
    pub async fn follow(self, gateway: Arc<crate::Gateway>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let watch = match self.kv.watch_all().await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the tenants bucket; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            self.cache.invalidate_all();
            let mut watch = std::pin::pin!(watch);
            loop {
                let entry = tokio::select! {
                    entry = watch.next() => entry,
                    _ = shutdown.changed() => return,
                };
                let Some(Ok(entry)) = entry else {
                    tracing::warn!("the tenants bucket's watch ended; reopening");
                    break;
                };
                let Ok(tenant) = TenantId::parse(entry.key.as_str()) else {
                    continue;
                };
                if self.cache.contains_key(&tenant) {
                    let seen = Seen {
                        record: parse(&entry),
                        revision: entry.revision,
                    };
                    self.offer(&tenant, seen).await;
                }
                gateway.forget(&tenant).await;
            }
        }
    }
}

fn parse(entry: &kv::Entry) -> Option<TenantRecord> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let record: TenantRecord = serde_json::from_slice(&entry.value).ok()?;
    (!record.is_deleted()).then_some(record)
}
