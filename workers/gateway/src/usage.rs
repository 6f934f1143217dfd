//! Request counts for the quota auditor: every request the gateway serves for a tenant is
//! counted in memory, and every [`FLUSH`] the counts are added to the tenant's
//! [`ApiMinute`] in KV `fleet_api_usage` by compare-and-set — summed over the replicas, a new
//! minute starting the count over. The auditor reports it as `apiRequestsThisMinute`.
//!
//! A flush touches only the tenants that made requests since the last one: its cost follows
//! the traffic, never the size of the fleet. A flush that fails keeps its counts for the next.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use fleet_protocol::TenantId;
use fleet_tenants::audit::ApiMinute;
use tokio::sync::watch;

/// How often counts are written.
pub const FLUSH: Duration = Duration::from_secs(5);

/// Compare-and-set attempts per tenant and flush before its count waits for the next flush.
const RACES: usize = 8;

/// The counts not yet written, by tenant and minute.
#[derive(Debug)]
pub struct ApiUsage {
    kv: kv::Store,
    pending: Mutex<HashMap<(TenantId, u64), u64>>,
}

/// The current minute (seconds since the Unix epoch / 60).
pub fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl ApiUsage {
    /// Counts written to `kv` (the `fleet_api_usage` bucket).
    pub fn new(kv: kv::Store) -> Self {
        Self {
            kv,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `tenant`.
    pub fn count(&self, tenant: &TenantId) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *pending.entry((tenant.clone(), minute_now())).or_default() += 1;
    }

    /// Writes the pending counts; the ones that could not be written stay pending.
    pub async fn flush(&self) {
        let batch: Vec<((TenantId, u64), u64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().collect()
        };
        for ((tenant, minute), requests) in batch {
            if !self.add(&tenant, minute, requests).await {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                *pending.entry((tenant, minute)).or_default() += requests;
            }
        }
    }

    async fn add(&self, tenant: &TenantId, minute: u64, requests: u64) -> bool {
        for _ in 0..RACES {
            let current = match self.kv.entry(tenant.as_str()).await {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::debug!(%tenant, error = %e, "reading the API usage; next flush");
                    return false;
                }
            };
            let (before, revision) = match &current {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice::<ApiMinute>(&entry.value).unwrap_or_default(),
                    entry.revision,
                ),
                Some(entry) => (ApiMinute::default(), entry.revision),
                None => (ApiMinute::default(), 0),
            };
            let after = before.add(minute, requests);
            if after == before {
                return true;
            }
            let Ok(value) = serde_json::to_vec(&after) else {
                return true;
            };
            let written = if revision == 0 {
                self.kv.create(tenant.as_str(), value.into()).await.is_ok()
            } else {
                self.kv
                    .update(tenant.as_str(), value.into(), revision)
                    .await
                    .is_ok()
            };
            if written {
                return true;
            }
        }
        false
    }

    /// Flushes every [`FLUSH`] until `shutdown`, then once more.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH) => self.flush().await,
                _ = shutdown.changed() => {
                    self.flush().await;
                    return;
                }
            }
        }
    }
}
