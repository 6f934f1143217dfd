//! The one enforcement function of a plan's quotas on a tenant's path (upstream
//! `QuotaEnforcementResult`): the deployer gates a deploy with it, the installer an install.

use std::num::NonZeroU64;

use fleet_protocol::QuotaEnforcementResult;

/// Whether `usage` of the quota named `name` (upstream's key: `maxObjects`,
/// `maxDeploymentsPerDay`, …) stays within `limit` (`None`: unlimited). Refusals carry the
/// quota, the usage, the limit and a message.
pub fn enforce(name: &str, usage: u64, limit: Option<NonZeroU64>) -> QuotaEnforcementResult {
    match limit {
        Some(limit) if usage > limit.get() => QuotaEnforcementResult {
            allowed: false,
            exceeded_quota: Some(name.to_owned()),
            current_usage: Some(usage as f64),
            limit: Some(limit.get() as f64),
            message: Some(format!("{name} would be exceeded ({usage} of {limit})")),
        },
        _ => QuotaEnforcementResult {
            allowed: true,
            exceeded_quota: None,
            current_usage: Some(usage as f64),
            limit: limit.map(|l| l.get() as f64),
            message: None,
        },
    }
}

/// Every quota of `quotas` against `usage` (`largest_object`: the records of the fullest
/// object): one result per quota the plan sets, with upstream's name of the quota — the numbers
/// `fleetctl quota show` prints and the auditor acts on.
pub fn evaluate(
    quotas: &fleet_protocol::TenantQuota,
    usage: &fleet_protocol::TenantUsage,
    largest_object: u64,
) -> Vec<(&'static str, QuotaEnforcementResult)> {
    let storage = quotas.max_storage_bytes.or(quotas.max_storage);
    [
        ("maxObjects", usage.current_object_count, quotas.max_objects),
        (
            "maxRecordsPerObject",
            largest_object,
            quotas.max_records_per_object,
        ),
        ("maxStorageBytes", usage.current_storage_bytes, storage),
        (
            "maxDeploymentsPerDay",
            usage.deployments_today,
            quotas.max_deployments_per_day,
        ),
        ("maxUsers", usage.current_users, quotas.max_users),
    ]
    .into_iter()
    .filter(|(_, _, limit)| limit.is_some())
    .map(|(name, used, limit)| (name, enforce(name, used, limit)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_above_the_limit_is_refused_with_the_numbers() {
        let limit = NonZeroU64::new(10);
        assert!(enforce("maxObjects", 10, limit).allowed);
        let refused = enforce("maxObjects", 11, limit);
        assert!(!refused.allowed);
        assert_eq!(refused.exceeded_quota.as_deref(), Some("maxObjects"));
        assert_eq!(
            refused.message.as_deref(),
            Some("maxObjects would be exceeded (11 of 10)")
        );
        assert!(enforce("maxObjects", 1_000_000, None).allowed);
    }

    #[test]
    fn evaluate_reports_each_quota_the_plan_sets() {
        let quotas = fleet_protocol::TenantQuota {
            max_objects: NonZeroU64::new(2),
            max_records_per_object: NonZeroU64::new(100),
            ..Default::default()
        };
        let usage = fleet_protocol::TenantUsage {
            current_object_count: 3,
            ..Default::default()
        };
        let results = evaluate(&quotas, &usage, 40);
        let names: Vec<(&str, bool)> = results.iter().map(|(n, r)| (*n, r.allowed)).collect();
        assert_eq!(
            names,
            [("maxObjects", false), ("maxRecordsPerObject", true)]
        );
    }
}
