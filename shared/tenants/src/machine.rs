//! The tenant state machine (DESIGN.md §5), pure: a record, and functions that take the current
//! record and return the next one (with its progress entry) or a typed refusal. No I/O: the
//! handler persists decisions through the CAS state store.
//!
//! `provisioning` (steps create_database → issue_token → store_connection → sync_schema → seed →
//! register) → `active` ⇄ `suspended`; any → `failed` (a new `tenant.created` retries it);
//! `active | suspended | failed` → `destroying` → deleted.

use fleet_protocol::tenant::StepStatus;
use fleet_protocol::{
    ProvisioningStep, TenantId, TenantPlan, TenantProvisioningRequest, TenantProvisioningResult,
    TenantProvisioningStatus, TenantQuota, TenantRegion, Timestamp,
};
use fleet_state::{Decision, ProgressEvent, Versioned};
use fleet_tenantdb::StoredConnectionConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The provisioning steps, in order.
pub const STEPS: [&str; 6] = [
    "create_database",
    "issue_token",
    "store_connection",
    "sync_schema",
    "seed",
    "register",
];

/// A lease on a tenant's provisioning work: one executor at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Who holds it (worker instance).
    pub owner: String,
    /// Until when.
    pub until: Timestamp,
}

/// A hook decided by a transition and published after it (in the same write, so a crash between
/// the two cannot lose it: the next delivery publishes what is pending, under the same id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingHook {
    /// Subject, e.g. `hooks.tenant.created`.
    pub subject: String,
    /// Event, e.g. `tenant.created`.
    pub event: String,
    /// What identifies the transition (the event id derives from it).
    pub key: String,
    /// The payload.
    pub data: serde_json::Value,
}

/// A tenant as the control plane records it (the `fleet_tenants` KV value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRecord {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Owning organisation.
    pub org_id: String,
    /// Plan.
    pub plan: TenantPlan,
    /// Region.
    pub region: TenantRegion,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Initial admin e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_email: Option<String>,
    /// Lifecycle status.
    pub status: TenantProvisioningStatus,
    /// Whether the database has been deleted (status stays `destroying`).
    #[serde(default)]
    pub deleted: bool,
    /// The provisioning steps.
    pub steps: Vec<ProvisioningStep>,
    /// Database name at the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Database group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Connection (token sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<StoredConnectionConfig>,
    /// Quotas of the plan.
    pub quotas: TenantQuota,
    /// Digest of the creation settings (a second create with other settings is refused).
    pub fingerprint: String,
    /// Current executor of provisioning work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// When `tenant.created` was first handled.
    pub requested_at: Timestamp,
    /// When it became active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_at: Option<Timestamp>,
    /// Provisioning duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_duration_ms: Option<u64>,
    /// Last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The hook of the last transition, until it is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_hook: Option<PendingHook>,
    /// Keys of the hooks published.
    #[serde(default)]
    pub hooks_sent: Vec<String>,
    /// When a pending deletion happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after: Option<Timestamp>,
    /// The backup kept before deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// Not allowed from the current status.
    #[error("tenant {tenant} is {from:?}: cannot {event}")]
    Illegal {
        /// Tenant.
        tenant: String,
        /// Current status.
        from: TenantProvisioningStatus,
        /// What was attempted.
        event: &'static str,
    },
    /// The tenant does not exist.
    #[error("unknown tenant {0}")]
    Unknown(String),
    /// A create for an existing tenant with other settings.
    #[error(
        "tenant {0} already exists with different settings (org, plan or region); nothing was changed"
    )]
    Conflict(String),
    /// Another worker holds the lease.
    #[error("tenant {tenant} is being provisioned by {owner} until {until}")]
    Busy {
        /// Tenant.
        tenant: String,
        /// Holder.
        owner: String,
        /// Until.
        until: Timestamp,
    },
}

/// The quotas of a plan.
pub fn plan_quotas(plan: TenantPlan) -> TenantQuota {
    let n = |v: u64| std::num::NonZeroU64::new(v);
    match plan {
        TenantPlan::Free => TenantQuota {
            max_users: n(5),
            max_objects: n(20),
            max_records_per_object: n(10_000),
            max_deployments_per_day: n(10),
            max_storage_bytes: n(100 * 1024 * 1024),
            api_rate_limit: n(600),
            max_storage: None,
        },
        TenantPlan::Pro => TenantQuota {
            max_users: n(100),
            max_objects: n(200),
            max_records_per_object: n(1_000_000),
            max_deployments_per_day: n(100),
            max_storage_bytes: n(10 * 1024 * 1024 * 1024),
            api_rate_limit: n(6000),
            max_storage: None,
        },
        TenantPlan::Enterprise => TenantQuota::default(),
    }
}

/// Digest of what a create asks for; the same request always gives the same digest.
pub fn fingerprint(request: &TenantProvisioningRequest) -> String {
    let text = format!(
        "{}\n{:?}\n{:?}",
        request.org_id, request.plan, request.region
    );
    hex::encode(&Sha256::digest(text)[..12])
}

fn event(
    record: &TenantRecord,
    step: &str,
    duration_ms: Option<u64>,
    error: Option<String>,
) -> ProgressEvent {
    ProgressEvent {
        kind: "tenant".to_owned(),
        id: record.tenant_id.to_string(),
        step: step.to_owned(),
        status: status_name(record),
        duration_ms,
        error,
        at: Timestamp::now(),
        revision: 0,
    }
}

/// `provisioning`, `active`, …, or `deleted`.
pub fn status_name(record: &TenantRecord) -> String {
    if record.deleted {
        return "deleted".to_owned();
    }
    serde_json::to_value(record.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn write(
    next: TenantRecord,
    step: &str,
    duration_ms: Option<u64>,
    error: Option<String>,
) -> Decision<TenantRecord> {
    let event = event(&next, step, duration_ms, error);
    Decision::Write { next, event }
}

fn existing<'a>(
    current: Option<&'a Versioned<TenantRecord>>,
    tenant: &TenantId,
) -> Result<&'a TenantRecord, TransitionError> {
    current
        .map(|v| &v.state)
        .ok_or_else(|| TransitionError::Unknown(tenant.to_string()))
}

/// `tenant.created`: a new record, or the existing one when it asks for the same (a `failed`
/// tenant is reset to `provisioning`: a create retries it).
pub fn create(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    request: &TenantProvisioningRequest,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let print = fingerprint(request);
    match current.map(|v| &v.state) {
        Some(record) if record.fingerprint != print => {
            Err(TransitionError::Conflict(tenant.to_string()))
        }
        Some(record) if record.status == TenantProvisioningStatus::Failed => {
            let mut next = record.clone();
            next.status = TenantProvisioningStatus::Provisioning;
            next.error = None;
            for step in next
                .steps
                .iter_mut()
                .filter(|s| s.status == StepStatus::Failed)
            {
                step.status = StepStatus::Pending;
                step.error = None;
            }
            Ok(write(next, "retry", None, None))
        }
        Some(_) => Ok(Decision::Unchanged),
        None => {
            let record = TenantRecord {
                tenant_id: tenant.clone(),
                org_id: request.org_id.clone(),
                plan: request.plan,
                region: request.region,
                display_name: request.display_name.clone(),
                admin_email: request.admin_email.clone(),
                status: TenantProvisioningStatus::Provisioning,
                deleted: false,
                steps: STEPS
                    .iter()
                    .map(|name| ProvisioningStep {
                        name: (*name).to_owned(),
                        status: StepStatus::Pending,
                        started_at: None,
                        completed_at: None,
                        duration_ms: None,
                        error: None,
                    })
                    .collect(),
                database: None,
                group: None,
                connection: None,
                quotas: plan_quotas(request.plan),
                fingerprint: print,
                lease: None,
                requested_at: Timestamp::now(),
                provisioned_at: None,
                total_duration_ms: None,
                error: None,
                pending_hook: None,
                hooks_sent: Vec::new(),
                delete_after: None,
                backup: None,
            };
            Ok(write(record, "requested", None, None))
        }
    }
}

/// Takes the provisioning lease for `owner` (free, expired, or already ours).
pub fn claim(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    owner: &str,
    until: Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if let Some(lease) = &record.lease
        && lease.owner != owner
        && lease.until.instant() > chrono::Utc::now()
    {
        return Err(TransitionError::Busy {
            tenant: tenant.to_string(),
            owner: lease.owner.clone(),
            until: lease.until.clone(),
        });
    }
    let mut next = record.clone();
    next.lease = Some(Lease {
        owner: owner.to_owned(),
        until,
    });
    Ok(Decision::Write {
        event: event(&next, "lease", None, None),
        next,
    })
}

fn illegal(
    tenant: &TenantId,
    from: TenantProvisioningStatus,
    event: &'static str,
) -> TransitionError {
    TransitionError::Illegal {
        tenant: tenant.to_string(),
        from,
        event,
    }
}

fn step_mut<'a>(record: &'a mut TenantRecord, step: &str) -> &'a mut ProvisioningStep {
    record
        .steps
        .iter_mut()
        .find(|s| s.name == step)
        .expect("a known step")
}

/// Whether a step is done (completed or skipped).
pub fn step_done(record: &TenantRecord, step: &str) -> bool {
    record
        .steps
        .iter()
        .any(|s| s.name == step && matches!(s.status, StepStatus::Completed | StepStatus::Skipped))
}

/// A step starts.
pub fn step_started(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    step: &str,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.status != TenantProvisioningStatus::Provisioning {
        return Err(illegal(tenant, record.status, "run a provisioning step"));
    }
    let mut next = record.clone();
    let s = step_mut(&mut next, step);
    s.status = StepStatus::Running;
    s.started_at = Some(Timestamp::now());
    s.error = None;
    Ok(write(next, step, None, None))
}

/// A step ends: completed or skipped, with what it produced.
pub fn step_finished(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    step: &str,
    skipped: bool,
    duration_ms: u64,
    update: &dyn Fn(&mut TenantRecord),
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.status != TenantProvisioningStatus::Provisioning {
        return Err(illegal(tenant, record.status, "finish a provisioning step"));
    }
    let mut next = record.clone();
    update(&mut next);
    let s = step_mut(&mut next, step);
    s.status = if skipped {
        StepStatus::Skipped
    } else {
        StepStatus::Completed
    };
    s.completed_at = Some(Timestamp::now());
    s.duration_ms = Some(duration_ms);
    Ok(write(next, step, Some(duration_ms), None))
}

/// A step failed: transiently (the status stays `provisioning`) or for good (`failed`). A
/// tenant no longer provisioning (already failed, or finished by another worker) is left as it
/// is, so a late or repeated failure report never adds a second outcome.
pub fn step_failed(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    step: &str,
    error: &str,
    permanent: bool,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.status != TenantProvisioningStatus::Provisioning {
        return Ok(Decision::Unchanged);
    }
    let mut next = record.clone();
    if next.steps.iter().any(|s| s.name == step) {
        let s = step_mut(&mut next, step);
        s.status = StepStatus::Failed;
        s.error = Some(error.to_owned());
    }
    next.error = Some(format!("{step}: {error}"));
    if permanent {
        next.status = TenantProvisioningStatus::Failed;
        next.lease = None;
    }
    Ok(write(next, step, None, Some(error.to_owned())))
}

/// All steps done: `active` (the `register` step is this write).
pub fn activate(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    register_ms: u64,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.status {
        TenantProvisioningStatus::Active => return Ok(Decision::Unchanged),
        TenantProvisioningStatus::Provisioning => {}
        from => {
            return Err(illegal(tenant, from, "activate"));
        }
    }
    let mut next = record.clone();
    let now = Timestamp::now();
    let s = step_mut(&mut next, "register");
    s.status = StepStatus::Completed;
    s.started_at.get_or_insert_with(|| now.clone());
    s.completed_at = Some(now.clone());
    s.duration_ms = Some(register_ms);
    next.status = TenantProvisioningStatus::Active;
    next.total_duration_ms = Some(
        (now.instant() - record.requested_at.instant())
            .num_milliseconds()
            .max(0) as u64,
    );
    next.provisioned_at = Some(now);
    next.lease = None;
    next.error = None;
    Ok(write(next, "register", Some(register_ms), None))
}

/// Attaches `hook` to a decision (published after the write).
pub fn with_hook(decision: Decision<TenantRecord>, hook: PendingHook) -> Decision<TenantRecord> {
    match decision {
        Decision::Write { mut next, event } => {
            next.pending_hook = Some(hook);
            Decision::Write { next, event }
        }
        unchanged => unchanged,
    }
}

/// The pending hook `key` was published.
pub fn hook_sent(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    key: &str,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.pending_hook.as_ref().is_none_or(|h| h.key != key) {
        return Ok(Decision::Unchanged);
    }
    let mut next = record.clone();
    next.pending_hook = None;
    next.hooks_sent.push(key.to_owned());
    Ok(write(next, "hook", None, None))
}

/// `active` → `suspended`, with the (read-only or no) connection left.
pub fn suspend(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    connection: Option<StoredConnectionConfig>,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.status {
        TenantProvisioningStatus::Suspended => Ok(Decision::Unchanged),
        TenantProvisioningStatus::Active => {
            let mut next = record.clone();
            next.status = TenantProvisioningStatus::Suspended;
            next.connection = connection;
            Ok(write(next, "suspend", None, None))
        }
        from => Err(illegal(tenant, from, "suspend")),
    }
}

/// `suspended` → `active`, with a new connection.
pub fn resume(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    connection: StoredConnectionConfig,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.status {
        TenantProvisioningStatus::Suspended => {
            let mut next = record.clone();
            next.status = TenantProvisioningStatus::Active;
            next.connection = Some(connection);
            Ok(write(next, "resume", None, None))
        }
        from => Err(illegal(tenant, from, "resume")),
    }
}

/// `active | suspended | failed` → `destroying` (deletion due at `delete_after`).
pub fn destroy(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    delete_after: Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.status {
        TenantProvisioningStatus::Destroying => Ok(Decision::Unchanged),
        TenantProvisioningStatus::Provisioning => {
            Err(illegal(tenant, record.status, "delete while provisioning"))
        }
        _ => {
            let mut next = record.clone();
            next.status = TenantProvisioningStatus::Destroying;
            next.delete_after = Some(delete_after);
            Ok(write(next, "destroy", None, None))
        }
    }
}

/// The database is gone.
pub fn deleted(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    backup: Option<String>,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.deleted {
        return Ok(Decision::Unchanged);
    }
    if record.status != TenantProvisioningStatus::Destroying {
        return Err(illegal(tenant, record.status, "mark deleted"));
    }
    let mut next = record.clone();
    next.deleted = true;
    next.connection = None;
    next.backup = backup.or(next.backup);
    Ok(write(next, "deleted", None, None))
}

/// A new plan and its quotas.
pub fn change_plan(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    plan: TenantPlan,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.plan == plan {
        return Ok(Decision::Unchanged);
    }
    if record.deleted || record.status == TenantProvisioningStatus::Destroying {
        return Err(illegal(tenant, record.status, "change plan"));
    }
    let mut next = record.clone();
    next.plan = plan;
    next.quotas = plan_quotas(plan);
    Ok(write(next, "plan_changed", None, None))
}

impl TenantRecord {
    /// The upstream provisioning result of this record.
    pub fn result(&self) -> TenantProvisioningResult {
        TenantProvisioningResult {
            tenant_id: self.tenant_id.clone(),
            connection_url: self
                .connection
                .as_ref()
                .map(|c| c.url.clone())
                .unwrap_or_else(|| "-".to_owned()),
            status: self.status,
            region: self.region,
            plan: self.plan,
            steps: self.steps.clone(),
            total_duration_ms: self.total_duration_ms,
            provisioned_at: self.provisioned_at.clone(),
            error: self.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TenantProvisioningRequest {
        TenantProvisioningRequest {
            org_id: "org".into(),
            plan: TenantPlan::Pro,
            region: TenantRegion::EuWest,
            display_name: None,
            admin_email: None,
            metadata: None,
        }
    }

    fn apply(
        current: Option<Versioned<TenantRecord>>,
        decision: Decision<TenantRecord>,
    ) -> Option<Versioned<TenantRecord>> {
        match decision {
            Decision::Write { next, .. } => Some(Versioned {
                state: next,
                revision: current.map_or(1, |c| c.revision + 1),
            }),
            Decision::Unchanged => current,
        }
    }

    #[test]
    fn the_lifecycle_walks_through_its_states() {
        let t = TenantId::parse("acme").unwrap();
        let mut s = apply(None, create(None, &t, &request()).unwrap());
        assert_eq!(
            create(s.as_ref(), &t, &request()).unwrap(),
            Decision::Unchanged,
            "a repeated create is a no-op"
        );
        let mut other = request();
        other.region = TenantRegion::UsEast;
        assert!(matches!(
            create(s.as_ref(), &t, &other),
            Err(TransitionError::Conflict(_))
        ));
        for step in &STEPS[..5] {
            s = apply(s.clone(), step_started(s.as_ref(), &t, step).unwrap());
            s = apply(
                s.clone(),
                step_finished(s.as_ref(), &t, step, false, 3, &|_| {}).unwrap(),
            );
        }
        s = apply(s.clone(), activate(s.as_ref(), &t, 1).unwrap());
        let record = &s.as_ref().unwrap().state;
        assert_eq!(record.status, TenantProvisioningStatus::Active);
        assert!(
            record
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Completed)
        );
        assert!(matches!(
            resume(
                s.as_ref(),
                &t,
                record.connection.clone().unwrap_or(StoredConnectionConfig {
                    url: "x".into(),
                    group: None,
                    sealed_auth_token: None
                })
            ),
            Err(TransitionError::Illegal { .. })
        ));
        s = apply(s.clone(), suspend(s.as_ref(), &t, None).unwrap());
        assert_eq!(suspend(s.as_ref(), &t, None).unwrap(), Decision::Unchanged);
        s = apply(
            s.clone(),
            destroy(s.as_ref(), &t, Timestamp::now()).unwrap(),
        );
        s = apply(s.clone(), deleted(s.as_ref(), &t, None).unwrap());
        assert_eq!(status_name(&s.as_ref().unwrap().state), "deleted");
        assert!(matches!(
            step_started(s.as_ref(), &t, "seed"),
            Err(TransitionError::Illegal { .. })
        ));
    }

    #[test]
    fn a_lease_held_by_another_worker_is_busy_until_it_expires() {
        let t = TenantId::parse("acme").unwrap();
        let s = apply(None, create(None, &t, &request()).unwrap());
        let later = Timestamp::from(chrono::Utc::now() + chrono::Duration::seconds(60));
        let s = apply(
            s.clone(),
            claim(s.as_ref(), &t, "w1", later.clone()).unwrap(),
        );
        assert!(matches!(
            claim(s.as_ref(), &t, "w2", later.clone()),
            Err(TransitionError::Busy { .. })
        ));
        assert!(
            claim(s.as_ref(), &t, "w1", later).is_ok(),
            "the holder renews"
        );
        let expired = apply(
            s.clone(),
            claim(
                s.as_ref(),
                &t,
                "w1",
                Timestamp::from(chrono::Utc::now() - chrono::Duration::seconds(1)),
            )
            .unwrap(),
        );
        assert!(claim(expired.as_ref(), &t, "w2", Timestamp::now()).is_ok());
    }

    #[test]
    fn a_permanent_failure_fails_the_tenant_and_a_new_create_retries_it() {
        let t = TenantId::parse("acme").unwrap();
        let s = apply(None, create(None, &t, &request()).unwrap());
        let s = apply(
            s.clone(),
            step_failed(s.as_ref(), &t, "create_database", "group not found", true).unwrap(),
        );
        assert_eq!(
            s.as_ref().unwrap().state.status,
            TenantProvisioningStatus::Failed
        );
        assert_eq!(
            step_failed(s.as_ref(), &t, "create_database", "late report", true).unwrap(),
            Decision::Unchanged,
            "a failed tenant is not failed twice"
        );
        let s = apply(s.clone(), create(s.as_ref(), &t, &request()).unwrap());
        assert_eq!(
            s.as_ref().unwrap().state.status,
            TenantProvisioningStatus::Provisioning
        );
    }
}
