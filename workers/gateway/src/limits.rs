//! Quotas at the door: each tenant's `apiRateLimit` (requests per minute, upstream
//! `TenantQuota`) enforced by a keyed GCRA limiter (`governor`) per distinct limit, and
//! `maxRecordsPerObject` on create (checked by the insert statement itself, so racing creates
//! cannot pass it together) — both answered with upstream's `QuotaEnforcementResult`.
//!
//! A limiter is per replica: with `n` replicas behind a load balancer a tenant gets up to `n`
//! times its rate in the worst case (the quota auditor's `apiRequestsThisMinute` is the
//! fleet-wide count).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use fleet_protocol::TenantId;
use fleet_tenants::machine::TenantRecord;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::api::{ApiError, quota_refusal};
use crate::records::Object;

/// The limiters, one per distinct requests-per-minute limit.
#[derive(Debug, Default)]
pub struct Limits {
    limiters: Mutex<HashMap<NonZeroU32, Arc<DefaultKeyedRateLimiter<TenantId>>>>,
}

impl Limits {
    fn limiter(&self, per_minute: NonZeroU32) -> Arc<DefaultKeyedRateLimiter<TenantId>> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        limiters
            .entry(per_minute)
            .or_insert_with(|| Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))))
            .clone()
    }

    /// Admits one request of `tenant` under its plan's `apiRateLimit`, or refuses it.
    pub fn admit(&self, tenant: &TenantId, record: &TenantRecord) -> Result<(), ApiError> {
        let Some(limit) = record.quotas.api_rate_limit else {
            return Ok(());
        };
        let per_minute = NonZeroU32::new(u32::try_from(limit.get()).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        let not_until = match self.limiter(per_minute).check_key(tenant) {
            Ok(()) => return Ok(()),
            Err(not_until) => not_until,
        };
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let result = fleet_protocol::QuotaEnforcementResult {
            allowed: false,
            exceeded_quota: Some("apiRateLimit".into()),
            current_usage: Some(f64::from(per_minute.get()) + 1.0),
            limit: Some(f64::from(per_minute.get())),
            message: Some(format!(
                "tenant {tenant} made more than {per_minute} requests in a minute"
            )),
        };
        Err(quota_refusal("rate_limited", &result).retry_after(wait.as_secs() + 1))
    }

    /// Forgets tenants idle long enough to have their whole burst back (run now and then, so
    /// the limiters' memory follows the active tenants, not every tenant ever seen).
    pub fn shrink(&self) {
        let limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        for limiter in limiters.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// The refusal of a create the insert found over the tenant's `maxRecordsPerObject`, with
    /// the count as it is now.
    pub async fn refused_records(
        &self,
        conn: &libsql::Connection,
        record: &TenantRecord,
        object: &Object,
    ) -> ApiError {
        let sql = format!(
            "SELECT count(*) FROM {}",
            fleet_schema::sql::quote(&object.table)
        );
        let count = match conn.query(&sql, ()).await {
            Ok(mut rows) => match rows.next().await {
                Ok(Some(row)) => u64::try_from(row.get::<i64>(0).unwrap_or_default()).unwrap_or(0),
                _ => 0,
            },
            Err(e) => return ApiError::unavailable_from(&e),
        };
        let result = fleet_tenants::quota::enforce(
            "maxRecordsPerObject",
            count + 1,
            record.quotas.max_records_per_object,
        );
        quota_refusal("quota_exceeded", &result)
    }
}
