//! The quota auditor: every tenant's usage against its plan's quotas (DESIGN part D3).
//!
//! Every replica publishes `quota.tick` once per time bucket (`[quota] interval_secs`) with the
//! message id `quota-tick:<bucket>`: the duplicate window keeps one per bucket however many
//! replicas run. The tick fans out one `quota.audit.<tenantId>` job per active tenant and per
//! tenant the auditor suspended (message id `quota-audit:<bucket>:<tenant>`: one audit per
//! tenant and bucket). A job measures the tenant's database ([`fleet_schema::usage`]), holds
//! every quota against it with the one enforcement function ([`fleet_tenants::quota`]), stores
//! the result in `fleet_usage` (with `lastUpdatedAt` and the buckets audited) and acts on the
//! pure decision of [`fleet_tenants::audit`]:
//!
//! - at or above the soft share of a limit → `hooks.quota.warning` (once per crossing);
//! - over a hard limit for longer than `[quota] grace_secs` → `tenant.suspended` with the
//!   reason `quota` (the provisioner suspends: tokens, read-only, onTenantSuspend);
//! - back within every limit → `tenant.resumed`, only for a suspension with that reason.
//!
//! `fleetctl quota audit` publishes a tick (or one tenant's job) at once. An unknown tenant is
//! bad input (dead-lettered); a tenant that is neither active nor suspended is skipped.

use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use fleet_control::{ConnectError, TenantConnector};
use fleet_protocol::quota::{QuotaAuditJob, QuotaTick};
use fleet_protocol::{TenantId, TenantProvisioningStatus, Timestamp};
use fleet_runtime::worker::{BuildError, Worker, WorkerContext};
use fleet_runtime::{
    Delivery, Handler, Hook, Hooks, Outcome, ProgressEvent, Publisher, StateStore, Subjects,
    error_chain,
};
use fleet_tenants::TenantRecord;
use fleet_tenants::audit::{self, Action, Policy, QUOTA_REASON, QuotaCheck, UsageRecord};
use serde_json::json;

/// A command of the auditor, parsed once from a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditCommand {
    /// `quota.tick`: fan out this bucket's audits.
    Tick(QuotaTick),
    /// `quota.audit.<tenantId>`: audit one tenant (the subject names the same tenant).
    Audit(QuotaAuditJob),
}

impl AuditCommand {
    /// Parses a delivery (subject, then payload).
    pub fn parse(delivery: &Delivery) -> Result<Self, Outcome> {
        let subject = delivery.subject.as_str();
        if subject == "quota.tick" {
            return Ok(Self::Tick(delivery.decode()?));
        }
        if let Some(named) = subject.strip_prefix("quota.audit.") {
            let job: QuotaAuditJob = delivery.decode()?;
            if named != job.tenant_id.as_str() {
                return Err(Outcome::Poison {
                    reason: format!(
                        "{subject} carries a job for tenant {}: subject and payload disagree",
                        job.tenant_id
                    ),
                });
            }
            return Ok(Self::Audit(job));
        }
        Err(Outcome::Poison {
            reason: format!("the quota auditor handles no {subject:?} commands"),
        })
    }
}

/// The start of the time bucket `now` falls in (unix seconds), for buckets `interval` long.
pub fn bucket_of(now_secs: u64, interval: Duration) -> u64 {
    let interval = interval.as_secs().max(1);
    now_secs - now_secs % interval
}

/// The auditor's handler.
#[derive(Debug)]
pub struct QuotaAuditor {
    tenants: StateStore<TenantRecord>,
    usage: StateStore<UsageRecord>,
    /// Each tenant's data API requests of the minute, as the gateways count them.
    api_usage: async_nats::jetstream::kv::Store,
    connector: TenantConnector,
    hooks: Hooks,
    publisher: Publisher,
    subjects: Subjects,
    policy: Policy,
}

/// Audit jobs published at once by a tick (each waits for its stream ack).
const PUBLISH_WINDOW: usize = 64;

#[async_trait]
impl Worker for QuotaAuditor {
    const NAME: &'static str = "quota-auditor";
    const CONSUMER: &'static str = fleet_runtime::topology::names::QUOTA_AUDITOR;

    async fn build(context: &WorkerContext) -> Result<Self, BuildError> {
        let runtime = &context.runtime;
        let tenants = fleet_control::tenants(runtime).await?;
        let interval = Duration::from_secs(context.config.quota.interval_secs.max(1));
        // The ticker: one tick per bucket from every replica; the server keeps one.
        let (publisher, subjects) = (runtime.publisher.clone(), runtime.topology.subjects());
        tokio::spawn(async move {
            loop {
                let now = chrono::Utc::now().timestamp().max(0) as u64;
                let bucket = bucket_of(now, interval);
                let tick = QuotaTick { bucket };
                if let Err(e) = publisher
                    .publish_json(
                        &subjects.full("quota.tick"),
                        &format!("quota-tick:{bucket}"),
                        &tick,
                        HeaderMap::new(),
                    )
                    .await
                {
                    tracing::warn!(error = %error_chain(&e), "the quota tick was not published; next bucket");
                }
                let next = bucket + interval.as_secs();
                tokio::time::sleep(Duration::from_secs(next.saturating_sub(now).max(1))).await;
            }
        });
        Ok(Self {
            connector: TenantConnector::new(
                tenants.clone(),
                fleet_tenantdb::backend_from_config(&context.config)?,
                std::sync::Arc::new(fleet_tenantdb::key_ring_from_config(&context.config)?),
            ),
            tenants,
            usage: fleet_control::usage(runtime).await?,
            api_usage: runtime
                .bucket(fleet_runtime::topology::names::API_USAGE)
                .await?,
            hooks: context.hooks.clone(),
            publisher: runtime.publisher.clone(),
            subjects: runtime.topology.subjects(),
            policy: Policy {
                soft_percent: context.config.quota.soft_percent,
                grace: Duration::from_secs(context.config.quota.grace_secs),
            },
        })
    }
}

#[async_trait]
impl Handler for QuotaAuditor {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        match AuditCommand::parse(&delivery) {
            Ok(AuditCommand::Tick(tick)) => self.tick(tick.bucket).await,
            Ok(AuditCommand::Audit(job)) => self.audit(&job.tenant_id, job.bucket).await,
            Err(outcome) => outcome,
        }
    }
}

impl QuotaAuditor {
    /// Whether a tenant is audited: active, or suspended by the auditor itself.
    fn audited(record: &TenantRecord) -> bool {
        match record.status() {
            TenantProvisioningStatus::Active => true,
            TenantProvisioningStatus::Suspended => {
                record.suspension_reason.as_deref() == Some(QUOTA_REASON)
            }
            _ => false,
        }
    }

    async fn tick(&self, bucket: u64) -> Outcome {
        let keys = match self.tenants.keys().await {
            Ok(keys) => keys,
            Err(e) => return Outcome::transient_error(&e),
        };
        let mut jobs = Vec::new();
        for key in keys {
            let Ok(tenant) = TenantId::parse(&key) else {
                continue;
            };
            match self.tenants.get::<std::convert::Infallible>(&key).await {
                Ok(Some(record)) if Self::audited(&record.state) => jobs.push(tenant),
                Ok(_) => {}
                Err(e) => return Outcome::transient_error(&e),
            }
        }
        for chunk in jobs.chunks(PUBLISH_WINDOW) {
            let sends = chunk.iter().map(|tenant| {
                let job = QuotaAuditJob {
                    tenant_id: tenant.clone(),
                    bucket,
                };
                let subject = self.subjects.full(&format!("quota.audit.{tenant}"));
                let id = format!("quota-audit:{bucket}:{tenant}");
                async move {
                    self.publisher
                        .publish_json(&subject, &id, &job, HeaderMap::new())
                        .await
                }
            });
            for sent in futures::future::join_all(sends).await {
                if let Err(e) = sent {
                    return Outcome::transient_error(&e);
                }
            }
        }
        Outcome::Done
    }

    async fn audit(&self, tenant: &TenantId, bucket: u64) -> Outcome {
        let (record, conn) = match self.connector.connect_readable(tenant).await {
            Ok(found) => found,
            Err(e @ ConnectError::Unknown(_)) => return Outcome::poison(&e),
            Err(ConnectError::NotActive(_)) => return Outcome::Done,
            Err(e) if e.is_transient() => return Outcome::transient_error(&e),
            Err(e) => return Outcome::poison(&e),
        };
        if !Self::audited(&record) {
            return Outcome::Done;
        }
        let mut measured = match fleet_schema::usage::measure(&conn).await {
            Ok(measured) => measured,
            Err(e) => return Outcome::transient_error(&e),
        };
        // The data API's requests of the current (or last whole) minute, over every gateway.
        match self.api_usage.get(tenant.as_str()).await {
            Ok(Some(value)) => {
                let minute = chrono::Utc::now().timestamp().max(0) as u64 / 60;
                measured.totals.api_requests_this_minute =
                    serde_json::from_slice::<fleet_tenants::audit::ApiMinute>(&value)
                        .map(|m| m.recent(minute))
                        .unwrap_or_default();
            }
            Ok(None) => {}
            Err(e) => return Outcome::transient_error(&e),
        }
        // A remote database's storage is its platform's account (Turso's usage endpoint).
        match self.connector.remote_storage_bytes(tenant, &record).await {
            Ok(Some(bytes)) => measured.totals.current_storage_bytes = bytes,
            Ok(None) => {}
            Err(e) => return Outcome::transient_error(&e),
        }
        let results: Vec<QuotaCheck> = fleet_tenants::quota::evaluate(
            &record.quotas,
            &measured.totals,
            measured.largest_object(),
        )
        .into_iter()
        .map(|(quota, result)| QuotaCheck {
            quota: quota.to_owned(),
            result,
        })
        .collect();
        // Decided on the last audit read, written by compare-and-set (re-decided on a race).
        let mut written = None;
        for _ in 0..8 {
            let previous = match self
                .usage
                .get::<std::convert::Infallible>(tenant.as_str())
                .await
            {
                Ok(previous) => previous,
                Err(e) => return Outcome::transient_error(&e),
            };
            let (next, actions) = audit::decide(
                previous.as_ref().map(|v| &v.state),
                &record,
                measured.totals.clone(),
                measured.records.clone(),
                results.clone(),
                bucket,
                self.policy,
                &Timestamp::now(),
            );
            let event = ProgressEvent {
                kind: "usage".into(),
                id: tenant.to_string(),
                step: "audit".into(),
                status: if next.over_since.is_some() {
                    "over"
                } else {
                    "within"
                }
                .into(),
                duration_ms: None,
                error: None,
                at: Timestamp::now(),
                revision: 0,
            };
            match self
                .usage
                .try_write::<std::convert::Infallible>(
                    tenant.as_str(),
                    previous.as_ref(),
                    next,
                    event,
                )
                .await
            {
                Ok(Some(done)) => {
                    written = Some((done, actions));
                    break;
                }
                Ok(None) => continue,
                Err(e) => return Outcome::transient_error(&e),
            }
        }
        let Some((done, actions)) = written else {
            return Outcome::transient("the usage record keeps changing; audit again");
        };
        tracing::debug!(tenant = %tenant, bucket, over = done.state.over_since.is_some(), "audited");
        for action in &actions {
            match action {
                Action::Warn(check) => {
                    tracing::info!(tenant = %tenant, quota = %check.quota, "quota warning")
                }
                Action::Suspend { since } => {
                    tracing::info!(tenant = %tenant, over_since = %since, "over a quota past the grace period: suspending")
                }
                Action::Resume => {
                    tracing::info!(tenant = %tenant, "back within every quota: resuming")
                }
            }
        }
        for action in actions {
            if let Err(outcome) = self.act(tenant, bucket, &done.state, action).await {
                return outcome;
            }
        }
        Outcome::Done
    }

    async fn act(
        &self,
        tenant: &TenantId,
        bucket: u64,
        usage: &UsageRecord,
        action: Action,
    ) -> Result<(), Outcome> {
        let published = match action {
            Action::Warn(check) => {
                let hook = Hook {
                    subject: "hooks.quota.warning".into(),
                    event: "quota.warning".into(),
                    version: 1,
                    entity: tenant.to_string(),
                    transition: format!("{}@{bucket}", check.quota),
                    at: chrono::Utc::now(),
                    data: json!({"tenantId": tenant, "quota": check.quota, "result": check.result, "usage": usage.usage}),
                };
                self.hooks.publish(&hook).await.map(|_| ())
            }
            Action::Suspend { since } => {
                let command = json!({"tenantId": tenant, "reason": QUOTA_REASON});
                self.publisher
                    .publish_json(
                        &self.subjects.full("tenant.suspended"),
                        &format!("quota-suspend:{tenant}:{since}"),
                        &command,
                        HeaderMap::new(),
                    )
                    .await
                    .map(|_| ())
            }
            Action::Resume => {
                let command = json!({"tenantId": tenant});
                self.publisher
                    .publish_json(
                        &self.subjects.full("tenant.resumed"),
                        &format!("quota-resume:{tenant}:{bucket}"),
                        &command,
                        HeaderMap::new(),
                    )
                    .await
                    .map(|_| ())
            }
        };
        published.map_err(|e| Outcome::transient_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_at_interval_boundaries() {
        let five = Duration::from_secs(300);
        assert_eq!(bucket_of(1_000, five), 900);
        assert_eq!(bucket_of(1_199, five), 900);
        assert_eq!(bucket_of(1_200, five), 1_200);
    }

    #[test]
    fn a_job_for_another_tenant_than_its_subject_is_refused() {
        let delivery = Delivery::new(
            "quota.audit.other",
            json!({"tenantId": "acme", "bucket": 1}).to_string(),
        );
        assert!(matches!(
            AuditCommand::parse(&delivery),
            Err(Outcome::Poison { .. })
        ));
        let tick = Delivery::new("quota.tick", json!({"bucket": 60}).to_string());
        assert_eq!(
            AuditCommand::parse(&tick).unwrap(),
            AuditCommand::Tick(QuotaTick { bucket: 60 })
        );
    }
}
