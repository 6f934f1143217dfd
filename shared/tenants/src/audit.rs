//! A quota audit's decision, pure: from a tenant's usage measured now, its record and the last
//! audit, the next usage record (KV `fleet_usage`) and what to do about it.
//!
//! - A quota at or above the soft share of its limit (`[quota] soft_percent`) is warned about
//!   once (`hooks.quota.warning`), again only after it went back below.
//! - Over a hard limit, the tenant is over since the first audit that saw it; still over after
//!   the grace period (`[quota] grace_secs`) an active tenant is suspended with the reason
//!   [`QUOTA_REASON`].
//! - Back within every limit, a tenant suspended with that reason — by the auditor, and only
//!   then — is resumed. An admin's suspension is never lifted here.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_protocol::{QuotaEnforcementResult, TenantProvisioningStatus, TenantUsage, Timestamp};
use serde::{Deserialize, Serialize};

use crate::TenantRecord;

/// The suspension reason the auditor gives, and the only one it lifts.
pub const QUOTA_REASON: &str = "quota";

/// Audit buckets a usage record remembers (to show that each bucket was audited once).
pub const BUCKETS_KEPT: usize = 10;

/// One quota's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaCheck {
    /// Upstream's name of the quota (`maxObjects`, …).
    pub quota: String,
    /// The result.
    pub result: QuotaEnforcementResult,
}

/// A tenant's data API requests in one minute, summed over the gateway replicas that served
/// it (the `fleet_api_usage` KV value, key: the tenant). Each replica adds its count by
/// compare-and-set every few seconds; a new minute starts the count over. The auditor reports
/// it as `apiRequestsThisMinute`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiMinute {
    /// The minute: seconds since the Unix epoch / 60.
    pub minute: u64,
    /// Requests served in it.
    pub requests: u64,
}

impl ApiMinute {
    /// This record with `requests` of `minute` added (an older minute's count is replaced; a
    /// count for a minute older than the record's is dropped — it belongs to the past).
    pub fn add(self, minute: u64, requests: u64) -> Self {
        match minute.cmp(&self.minute) {
            std::cmp::Ordering::Equal => Self {
                minute,
                requests: self.requests + requests,
            },
            std::cmp::Ordering::Greater => Self { minute, requests },
            std::cmp::Ordering::Less => self,
        }
    }

    /// The requests of the current or the last whole minute, as of `now_minute` (0 when the
    /// record is older).
    pub fn recent(&self, now_minute: u64) -> u64 {
        if self.minute + 1 >= now_minute {
            self.requests
        } else {
            0
        }
    }
}

/// A tenant's last audit (the `fleet_usage` KV value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    /// The tenant.
    pub tenant_id: String,
    /// Upstream's usage, with `lastUpdatedAt`.
    pub usage: TenantUsage,
    /// Records per registered object.
    #[serde(default)]
    pub records_per_object: BTreeMap<String, u64>,
    /// Every quota the plan sets, against the usage.
    #[serde(default)]
    pub results: Vec<QuotaCheck>,
    /// Since when a hard limit is exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_since: Option<Timestamp>,
    /// The quotas warned about (at or above the soft share).
    #[serde(default)]
    pub warned: Vec<String>,
    /// The last audit buckets, oldest first (at most [`BUCKETS_KEPT`]).
    #[serde(default)]
    pub buckets: Vec<u64>,
}

impl UsageRecord {
    /// The highest share of a limit any quota uses, in percent.
    pub fn highest_percent(&self) -> f64 {
        self.results
            .iter()
            .filter_map(|c| Some(c.result.current_usage? / c.result.limit? * 100.0))
            .fold(0.0, f64::max)
    }
}

/// What the auditor does after an audit.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `hooks.quota.warning` for a quota at or above the soft share.
    Warn(QuotaCheck),
    /// `tenant.suspended` with reason [`QUOTA_REASON`] (over since `since`).
    Suspend {
        /// When the tenant went over.
        since: Timestamp,
    },
    /// `tenant.resumed`: back within every limit after the auditor suspended it.
    Resume,
}

/// How the auditor acts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Soft share of a limit, in percent.
    pub soft_percent: u64,
    /// Grace period over a hard limit.
    pub grace: Duration,
}

/// The next usage record and the actions, from the tenant's `record`, the last audit `previous`,
/// the `results` of every quota against `usage`, the audit's `bucket` and the time.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    previous: Option<&UsageRecord>,
    record: &TenantRecord,
    usage: TenantUsage,
    records_per_object: BTreeMap<String, u64>,
    results: Vec<QuotaCheck>,
    bucket: u64,
    policy: Policy,
    now: &Timestamp,
) -> (UsageRecord, Vec<Action>) {
    let mut actions = Vec::new();
    let over = results.iter().any(|c| !c.result.allowed);
    let percent = |c: &QuotaCheck| match (c.result.current_usage, c.result.limit) {
        (Some(used), Some(limit)) if limit > 0.0 => used / limit * 100.0,
        _ => 0.0,
    };
    let warned: Vec<String> = results
        .iter()
        .filter(|c| percent(c) >= policy.soft_percent as f64)
        .map(|c| c.quota.clone())
        .collect();
    for check in &results {
        let already = previous.is_some_and(|p| p.warned.contains(&check.quota));
        if warned.contains(&check.quota) && !already {
            actions.push(Action::Warn(check.clone()));
        }
    }
    let over_since = if over {
        Some(
            previous
                .and_then(|p| p.over_since.clone())
                .unwrap_or_else(|| now.clone()),
        )
    } else {
        None
    };
    let status = record.status();
    if let Some(since) = &over_since {
        let elapsed = (now.instant() - since.instant())
            .to_std()
            .unwrap_or_default();
        if status == TenantProvisioningStatus::Active && elapsed >= policy.grace {
            actions.push(Action::Suspend {
                since: since.clone(),
            });
        }
    } else if status == TenantProvisioningStatus::Suspended
        && record.suspension_reason.as_deref() == Some(QUOTA_REASON)
    {
        actions.push(Action::Resume);
    }
    let mut buckets = previous.map(|p| p.buckets.clone()).unwrap_or_default();
    buckets.push(bucket);
    if buckets.len() > BUCKETS_KEPT {
        buckets.remove(0);
    }
    let next = UsageRecord {
        tenant_id: record.tenant_id.to_string(),
        usage,
        records_per_object,
        results,
        over_since,
        warned,
        buckets,
    };
    (next, actions)
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_minutes_add_up_within_a_minute_and_start_over_in_the_next() {
        let m = ApiMinute::default().add(100, 3).add(100, 4);
        assert_eq!(
            m,
            ApiMinute {
                minute: 100,
                requests: 7
            }
        );
        assert_eq!(m.add(99, 50), m, "a late count of a past minute is dropped");
        assert_eq!(
            m.add(101, 2),
            ApiMinute {
                minute: 101,
                requests: 2
            }
        );
        assert_eq!(m.recent(100), 7);
        assert_eq!(m.recent(101), 7, "the last whole minute");
        assert_eq!(m.recent(102), 0);
    }

    use super::*;
    use fleet_protocol::{TenantId, TenantProvisioningRequest, parse_value};
    use fleet_state::Decision;

    fn record(status: TenantProvisioningStatus, reason: Option<&str>) -> TenantRecord {
        let request: TenantProvisioningRequest =
            parse_value(&serde_json::json!({"orgId": "o", "plan": "free"}))
                .unwrap()
                .value;
        let tenant = TenantId::parse("acme").unwrap();
        let Decision::Write { mut next, .. } = crate::machine::create(
            None,
            &tenant,
            &request,
            &crate::machine::Plans::default(),
            &Timestamp::now(),
        )
        .unwrap() else {
            panic!("a new record")
        };
        next.state = match status {
            TenantProvisioningStatus::Suspended => crate::machine::TenantState::Suspended,
            _ => crate::machine::TenantState::Active,
        };
        next.suspension_reason = reason.map(str::to_owned);
        next
    }

    fn records(used: u64) -> Vec<QuotaCheck> {
        let limit = std::num::NonZeroU64::new(100);
        vec![QuotaCheck {
            quota: "maxRecordsPerObject".into(),
            result: crate::quota::enforce("maxRecordsPerObject", used, limit),
        }]
    }

    fn at(secs: i64) -> Timestamp {
        (chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + chrono::Duration::seconds(secs)).into()
    }

    const POLICY: Policy = Policy {
        soft_percent: 80,
        grace: Duration::from_secs(60),
    };

    #[test]
    fn warned_once_suspended_after_the_grace_and_resumed_when_back_under() {
        let active = record(TenantProvisioningStatus::Active, None);
        let audit = |prev: Option<&UsageRecord>, r: &TenantRecord, used, bucket, t| {
            decide(
                prev,
                r,
                TenantUsage::default(),
                BTreeMap::new(),
                records(used),
                bucket,
                POLICY,
                &at(t),
            )
        };
        let (first, actions) = audit(None, &active, 85, 1, 0);
        assert!(
            matches!(actions.as_slice(), [Action::Warn(c)] if c.quota == "maxRecordsPerObject")
        );
        let (second, actions) = audit(Some(&first), &active, 90, 2, 10);
        assert!(actions.is_empty(), "warned once");
        let (over, actions) = audit(Some(&second), &active, 101, 3, 20);
        assert!(actions.is_empty(), "within the grace period");
        assert_eq!(over.over_since, Some(at(20)));
        let (still, actions) = audit(Some(&over), &active, 150, 4, 80);
        assert_eq!(actions, [Action::Suspend { since: at(20) }]);
        assert_eq!(still.buckets, [1, 2, 3, 4]);
        let suspended = record(TenantProvisioningStatus::Suspended, Some(QUOTA_REASON));
        let (back, actions) = audit(Some(&still), &suspended, 10, 5, 90);
        assert_eq!(actions, [Action::Resume]);
        assert!(back.over_since.is_none() && back.warned.is_empty());
    }

    #[test]
    fn an_admins_suspension_is_never_lifted() {
        let by_admin = record(TenantProvisioningStatus::Suspended, Some("unpaid invoice"));
        let (_, actions) = decide(
            None,
            &by_admin,
            TenantUsage::default(),
            BTreeMap::new(),
            records(1),
            1,
            POLICY,
            &at(0),
        );
        assert!(actions.is_empty());
        let unexplained = record(TenantProvisioningStatus::Suspended, None);
        let (_, actions) = decide(
            None,
            &unexplained,
            TenantUsage::default(),
            BTreeMap::new(),
            records(1),
            1,
            POLICY,
            &at(0),
        );
        assert!(actions.is_empty());
    }
}
