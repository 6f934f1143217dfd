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
}
