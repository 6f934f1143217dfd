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
use fleet_tenantdb::{KeyRing, StoredConnectionConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A provisioning step (upstream `ProvisioningStep.name`), in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The tenant's database, in its region's group.
    CreateDatabase,
    /// A full-access token (an orphan of a crashed attempt revoked first).
    IssueToken,
    /// The connection, its token sealed, in the tenant record.
    StoreConnection,
    /// The base system schema.
    SyncSchema,
    /// Seed data (the admin user).
    Seed,
    /// `active`, with `hooks.tenant.created`.
    Register,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] = [
        Step::CreateDatabase,
        Step::IssueToken,
        Step::StoreConnection,
        Step::SyncSchema,
        Step::Seed,
        Step::Register,
    ];

    /// The steps that prepare the tenant; [`Step::Register`] is [`activate`]'s own write.
    pub const PREPARATION: [Step; 5] = [
        Step::CreateDatabase,
        Step::IssueToken,
        Step::StoreConnection,
        Step::SyncSchema,
        Step::Seed,
    ];

    /// The upstream step name (`create_database`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::CreateDatabase => "create_database",
            Step::IssueToken => "issue_token",
            Step::StoreConnection => "store_connection",
            Step::SyncSchema => "sync_schema",
            Step::Seed => "seed",
            Step::Register => "register",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// Subscription plan; `quotas` are its quotas with `quotaOverrides` applied.
    pub plan: TenantPlan,
    /// Where the tenant's data must live, fixed at creation (`provisioner.regions` maps it to
    /// a database group).
    pub region: TenantRegion,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Initial admin e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_email: Option<String>,
    /// Where the tenant is in its lifecycle, with what only that state has.
    #[serde(flatten)]
    pub state: TenantState,
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
    /// The quotas in force: the plan's (`quota.plans.<plan>` of the configuration) with the
    /// tenant's `quota_overrides` on top.
    pub quotas: TenantQuota,
    /// Quotas set for this tenant over its plan's (`tenant.quota_changed`); `quotas` is the
    /// plan's with these on top.
    #[serde(default, skip_serializing_if = "is_unlimited")]
    pub quota_overrides: TenantQuota,
    /// Why the tenant is suspended (the command's reason; `quota` when the quota auditor
    /// suspended it, which is the only suspension the auditor lifts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension_reason: Option<String>,
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
}

/// A tenant's lifecycle state, each variant with the data only it has: no record can be
/// "deleted but provisioning" or "due for deletion while active". Stored flattened into the
/// record as `"status": "<state>"` plus its fields (`deleteAfter`, `backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "status",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum TenantState {
    /// Steps running.
    Provisioning,
    /// Provisioned and serving.
    Active,
    /// Suspended (read-only or no connection, per the lifecycle).
    Suspended,
    /// Provisioning failed for good; a new `tenant.created` retries it.
    Failed,
    /// Deletion recorded, due at `delete_after` (scheduled when there is a grace period).
    Destroying {
        /// When the database is deleted.
        delete_after: Timestamp,
    },
    /// The database is gone.
    Deleted {
        /// The backup kept before deletion (local backends).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
    },
}

impl TenantState {
    /// The upstream status (`deleted` is reported as `destroying`, upstream has no more).
    pub fn status(&self) -> TenantProvisioningStatus {
        match self {
            Self::Provisioning => TenantProvisioningStatus::Provisioning,
            Self::Active => TenantProvisioningStatus::Active,
            Self::Suspended => TenantProvisioningStatus::Suspended,
            Self::Failed => TenantProvisioningStatus::Failed,
            Self::Destroying { .. } | Self::Deleted { .. } => TenantProvisioningStatus::Destroying,
        }
    }
}

impl TenantRecord {
    /// The upstream status.
    pub fn status(&self) -> TenantProvisioningStatus {
        self.state.status()
    }

    /// Whether the database has been deleted.
    pub fn is_deleted(&self) -> bool {
        matches!(self.state, TenantState::Deleted { .. })
    }

    /// When a recorded deletion is due.
    pub fn delete_after(&self) -> Option<&Timestamp> {
        match &self.state {
            TenantState::Destroying { delete_after } => Some(delete_after),
            _ => None,
        }
    }

    /// The backup kept before deletion.
    pub fn backup(&self) -> Option<&str> {
        match &self.state {
            TenantState::Deleted { backup } => backup.as_deref(),
            _ => None,
        }
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// Not allowed from the current status.
    #[error("tenant {tenant} is {from:?}: cannot {event}")]
    Illegal {
        /// The tenant id.
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
        /// The tenant id.
        tenant: String,
        /// The worker instance holding the lease.
        owner: String,
        /// When its lease runs out unless renewed.
        until: Timestamp,
    },
    /// The stored token could not be opened with the key ring (its key was removed, or the
    /// record was tampered with).
    #[error("tenant {tenant}: {message}")]
    Sealed {
        /// The tenant id.
        tenant: String,
        /// What opening it said.
        message: String,
    },
}

/// The quotas of each plan: the configuration's `[quota.plans.<plan>]` (upstream
/// `TenantQuota`, camelCase keys), and for a plan it does not list the built-in defaults of
/// [`plan_quotas`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plans(std::collections::BTreeMap<String, TenantQuota>);

impl Plans {
    /// Plans from the configuration (`free`, `pro`, `enterprise`, `custom` → quotas).
    pub fn new(plans: std::collections::BTreeMap<String, TenantQuota>) -> Self {
        Self(plans)
    }

    /// The quotas of `plan`.
    pub fn quotas(&self, plan: TenantPlan) -> TenantQuota {
        let name = serde_json::to_value(plan)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.0
            .get(&name)
            .cloned()
            .unwrap_or_else(|| plan_quotas(plan))
    }
}

fn is_unlimited(quota: &TenantQuota) -> bool {
    *quota == TenantQuota::default()
}

/// `base` with every quota `overrides` sets in its place.
pub fn with_overrides(base: TenantQuota, overrides: &TenantQuota) -> TenantQuota {
    TenantQuota {
        max_users: overrides.max_users.or(base.max_users),
        max_storage: overrides.max_storage.or(base.max_storage),
        api_rate_limit: overrides.api_rate_limit.or(base.api_rate_limit),
        max_objects: overrides.max_objects.or(base.max_objects),
        max_records_per_object: overrides
            .max_records_per_object
            .or(base.max_records_per_object),
        max_deployments_per_day: overrides
            .max_deployments_per_day
            .or(base.max_deployments_per_day),
        max_storage_bytes: overrides.max_storage_bytes.or(base.max_storage_bytes),
    }
}

/// Quotas set for one tenant over its plan's (`tenant.quota_changed`): added to those set
/// before, and the tenant's quotas recomputed.
pub fn override_quotas(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    overrides: &TenantQuota,
    plans: &Plans,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if matches!(
        record.state,
        TenantState::Destroying { .. } | TenantState::Deleted { .. }
    ) {
        return Err(illegal(tenant, record.status(), "override quotas"));
    }
    let mut next = record.clone();
    next.quota_overrides = with_overrides(record.quota_overrides.clone(), overrides);
    next.quotas = with_overrides(plans.quotas(record.plan), &next.quota_overrides);
    if next == *record {
        return Ok(Decision::Unchanged);
    }
    Ok(write(next, "quota_changed", None, None, now))
}

/// The built-in quotas of a plan (used where the configuration names none).
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
    now: &Timestamp,
) -> ProgressEvent {
    ProgressEvent {
        kind: "tenant".to_owned(),
        id: record.tenant_id.to_string(),
        step: step.to_owned(),
        status: status_name(record),
        duration_ms,
        error,
        at: now.clone(),
        revision: 0,
    }
}

/// `provisioning`, `active`, …, or `deleted`.
pub fn status_name(record: &TenantRecord) -> String {
    if record.is_deleted() {
        return "deleted".to_owned();
    }
    serde_json::to_value(record.status())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn write(
    next: TenantRecord,
    step: &str,
    duration_ms: Option<u64>,
    error: Option<String>,
    now: &Timestamp,
) -> Decision<TenantRecord> {
    let event = event(&next, step, duration_ms, error, now);
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
    plans: &Plans,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let print = fingerprint(request);
    match current.map(|v| &v.state) {
        Some(record) if record.fingerprint != print => {
            Err(TransitionError::Conflict(tenant.to_string()))
        }
        Some(record) if record.state == TenantState::Failed => {
            let mut next = record.clone();
            next.state = TenantState::Provisioning;
            next.error = None;
            for step in next
                .steps
                .iter_mut()
                .filter(|s| s.status == StepStatus::Failed)
            {
                step.status = StepStatus::Pending;
                step.error = None;
            }
            Ok(write(next, "retry", None, None, now))
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
                state: TenantState::Provisioning,
                steps: Step::ALL
                    .iter()
                    .map(|step| ProvisioningStep {
                        name: step.as_str().to_owned(),
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
                quotas: plans.quotas(request.plan),
                quota_overrides: TenantQuota::default(),
                suspension_reason: None,
                fingerprint: print,
                lease: None,
                requested_at: now.clone(),
                provisioned_at: None,
                total_duration_ms: None,
                error: None,
                pending_hook: None,
                hooks_sent: Vec::new(),
            };
            Ok(write(record, "requested", None, None, now))
        }
    }
}

/// [`create`] with `owner`'s provisioning lease (until `until`) already in the new record: the
/// worker that creates a tenant goes on to provision it, in one write, not two. A repeated
/// request changes nothing (the lease is then [`claim`]ed as for any delivery).
pub fn create_leased(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    request: &TenantProvisioningRequest,
    plans: &Plans,
    owner: &str,
    until: Timestamp,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    Ok(match create(current, tenant, request, plans, now)? {
        Decision::Write { mut next, event } => {
            next.lease = Some(Lease {
                owner: owner.to_owned(),
                until,
            });
            Decision::Write { next, event }
        }
        Decision::Unchanged => Decision::Unchanged,
    })
}

/// Takes the provisioning lease for `owner` until `until` (free, expired at `now`, or already
/// ours) on a tenant being provisioned.
///
/// Errors: [`TransitionError::Illegal`] when the tenant is not `provisioning` (another worker
/// finished, failed or deleted it since it was read: a lease on such a record would outlive
/// the provisioning it guards); [`TransitionError::Busy`] while another worker's lease is live.
pub fn claim(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    owner: &str,
    until: Timestamp,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.state != TenantState::Provisioning {
        return Err(illegal(
            tenant,
            record.state.status(),
            "take the provisioning lease",
        ));
    }
    lease_free(current, tenant, owner, now)?;
    let mut next = record.clone();
    next.lease = Some(Lease {
        owner: owner.to_owned(),
        until,
    });
    Ok(write(next, "lease", None, None, now))
}

/// Checks that no other worker holds a live provisioning lease on the tenant (a lease of
/// `owner`'s, or one run out, is free): what a worker that does not hold the lease checks
/// before it fails a tenant (its deliveries ran out, say) — never one another worker is
/// provisioning right now.
pub fn lease_free(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    owner: &str,
    now: &Timestamp,
) -> Result<(), TransitionError> {
    match current.and_then(|c| c.state.lease.as_ref()) {
        Some(lease) if lease.owner != owner && lease.until.instant() > now.instant() => {
            Err(busy(tenant, lease.owner.clone(), lease.until.clone()))
        }
        _ => Ok(()),
    }
}

/// Checks that `owner` still holds the provisioning lease of a tenant being provisioned. A
/// worker writes its steps (and the token it holds in memory) only under its own lease: once
/// another worker has taken the lease over — even one that has run out since — that worker may
/// have revoked this one's token and redone its steps, and this one's results are stale. A
/// tenant no longer provisioning (or unknown) is left to the transition that follows.
pub fn lease_held(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    owner: &str,
    now: &Timestamp,
) -> Result<(), TransitionError> {
    let Some(record) = current.map(|c| &c.state) else {
        return Ok(());
    };
    if record.state != TenantState::Provisioning {
        return Ok(());
    }
    match &record.lease {
        Some(lease) if lease.owner == owner => Ok(()),
        Some(lease) => Err(busy(tenant, lease.owner.clone(), lease.until.clone())),
        None => Err(busy(tenant, String::new(), now.clone())),
    }
}

/// [`TransitionError::Busy`]: `owner`'s lease on `tenant`, until `until`.
fn busy(tenant: &TenantId, owner: String, until: Timestamp) -> TransitionError {
    TransitionError::Busy {
        tenant: tenant.to_string(),
        owner,
        until,
    }
}

/// Extends `owner`'s provisioning lease until `until`: [`claim`] of a lease [`lease_held`] by
/// `owner` — never one another worker took over meanwhile, even if it has run out since.
pub fn renew(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    owner: &str,
    until: Timestamp,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    lease_held(current, tenant, owner, now)?;
    claim(current, tenant, owner, until, now)
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

/// The record's entry for `step`, added (pending) when a record written by an older release
/// lacks it — never a panic.
fn step_mut(record: &mut TenantRecord, step: Step) -> &mut ProvisioningStep {
    let index = match record.steps.iter().position(|s| s.name == step.as_str()) {
        Some(index) => index,
        None => {
            record.steps.push(ProvisioningStep {
                name: step.as_str().to_owned(),
                status: StepStatus::Pending,
                started_at: None,
                completed_at: None,
                duration_ms: None,
                error: None,
            });
            record.steps.len() - 1
        }
    };
    &mut record.steps[index]
}

/// Whether a step is done (completed or skipped).
pub fn step_done(record: &TenantRecord, step: Step) -> bool {
    record.steps.iter().any(|s| {
        s.name == step.as_str() && matches!(s.status, StepStatus::Completed | StepStatus::Skipped)
    })
}

/// The first step not done yet ([`Step::Register`] when all preparation is done).
pub fn next_step(record: &TenantRecord) -> Step {
    Step::PREPARATION
        .into_iter()
        .find(|step| !step_done(record, *step))
        .unwrap_or(Step::Register)
}

/// A step starts.
pub fn step_started(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    step: Step,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.state != TenantState::Provisioning {
        return Err(illegal(tenant, record.status(), "run a provisioning step"));
    }
    let mut next = record.clone();
    let s = step_mut(&mut next, step);
    s.status = StepStatus::Running;
    s.started_at = Some(now.clone());
    s.error = None;
    Ok(write(next, step.as_str(), None, None, now))
}

/// A step ends: completed or skipped, with what it produced (and its start, when
/// [`step_started`] did not record it).
pub fn step_finished(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    step: Step,
    skipped: bool,
    duration_ms: u64,
    update: &dyn Fn(&mut TenantRecord),
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.state != TenantState::Provisioning {
        return Err(illegal(
            tenant,
            record.status(),
            "finish a provisioning step",
        ));
    }
    let mut next = record.clone();
    update(&mut next);
    let s = step_mut(&mut next, step);
    s.status = if skipped {
        StepStatus::Skipped
    } else {
        StepStatus::Completed
    };
    // A step whose start was not written (the provisioner writes only its end): it started
    // `duration_ms` before it ended.
    s.started_at.get_or_insert_with(|| {
        Timestamp::from(now.instant() - chrono::Duration::milliseconds(duration_ms as i64))
    });
    s.completed_at = Some(now.clone());
    s.duration_ms = Some(duration_ms);
    s.error = None;
    Ok(write(next, step.as_str(), Some(duration_ms), None, now))
}

/// What a provisioning step that ended changes in the record (`None`: only its status).
pub type StepUpdate = Box<dyn Fn(&mut TenantRecord) + Send + Sync>;

/// A provisioning step that ended and is not written yet: a worker carries quick steps out in
/// memory and records several with one write ([`steps_finished`]).
pub struct FinishedStep {
    /// The step.
    pub step: Step,
    /// Skipped (its lifecycle switch is off) rather than completed.
    pub skipped: bool,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// When it ended.
    pub at: Timestamp,
    /// What it produced (the database's name, the sealed connection).
    pub update: Option<StepUpdate>,
}

impl std::fmt::Debug for FinishedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinishedStep")
            .field("step", &self.step)
            .field("skipped", &self.skipped)
            .field("duration_ms", &self.duration_ms)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// Every step of `finished`, in order, applied to `current` as [`step_finished`] would have at
/// its end: the record they make (revision unchanged: not written yet) and each one's progress
/// entry. The same refusals as [`step_finished`] (a tenant no longer provisioning).
pub fn steps_finished(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    finished: &[FinishedStep],
) -> Result<(Versioned<TenantRecord>, Vec<ProgressEvent>), TransitionError> {
    let mut record = existing(current, tenant)?.clone();
    let revision = current.map_or(0, |c| c.revision);
    let mut events = Vec::with_capacity(finished.len());
    for done in finished {
        let at = Versioned {
            state: record,
            revision,
        };
        let noop = |_: &mut TenantRecord| {};
        let update: &dyn Fn(&mut TenantRecord) = match &done.update {
            Some(update) => update,
            None => &noop,
        };
        match step_finished(
            Some(&at),
            tenant,
            done.step,
            done.skipped,
            done.duration_ms,
            update,
            &done.at,
        )? {
            Decision::Write { next, event } => {
                record = next;
                events.push(event);
            }
            Decision::Unchanged => record = at.state,
        }
    }
    Ok((
        Versioned {
            state: record,
            revision,
        },
        events,
    ))
}

/// A step failed: transiently (the status stays `provisioning`) or for good (`failed`). A
/// tenant no longer provisioning (already failed, or finished by another worker) is left as it
/// is, so a late or repeated failure report never adds a second outcome.
pub fn step_failed(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    step: Step,
    error: &str,
    permanent: bool,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.state != TenantState::Provisioning {
        return Ok(Decision::Unchanged);
    }
    let mut next = record.clone();
    let s = step_mut(&mut next, step);
    s.status = StepStatus::Failed;
    s.error = Some(error.to_owned());
    next.error = Some(format!("{step}: {error}"));
    if permanent {
        next.state = TenantState::Failed;
        next.lease = None;
    }
    Ok(write(
        next,
        step.as_str(),
        None,
        Some(error.to_owned()),
        now,
    ))
}

/// All steps done: `active` (the `register` step is this write).
pub fn activate(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    register_ms: u64,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.state {
        TenantState::Active => return Ok(Decision::Unchanged),
        TenantState::Provisioning => {}
        _ => {
            return Err(illegal(tenant, record.status(), "activate"));
        }
    }
    let mut next = record.clone();
    let s = step_mut(&mut next, Step::Register);
    s.status = StepStatus::Completed;
    s.started_at.get_or_insert_with(|| now.clone());
    s.completed_at = Some(now.clone());
    s.duration_ms = Some(register_ms);
    next.state = TenantState::Active;
    next.total_duration_ms = Some(
        (now.instant() - record.requested_at.instant())
            .num_milliseconds()
            .max(0) as u64,
    );
    next.provisioned_at = Some(now.clone());
    next.lease = None;
    next.error = None;
    Ok(write(next, "register", Some(register_ms), None, now))
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
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.pending_hook.as_ref().is_none_or(|h| h.key != key) {
        return Ok(Decision::Unchanged);
    }
    let mut next = record.clone();
    next.pending_hook = None;
    next.hooks_sent.push(key.to_owned());
    Ok(write(next, "hook", None, None, now))
}

/// `active` → `suspended`, with the (read-only or no) connection left.
pub fn suspend(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    connection: Option<StoredConnectionConfig>,
    reason: Option<&str>,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.state {
        // Suspended by the quota auditor, then by someone else: their reason holds it now (the
        // auditor lifts only its own suspensions). A quota reason never replaces another.
        TenantState::Suspended
            if record.suspension_reason.as_deref() == Some(crate::audit::QUOTA_REASON)
                && reason.is_some_and(|r| r != crate::audit::QUOTA_REASON) =>
        {
            let mut next = record.clone();
            next.suspension_reason = reason.map(str::to_owned);
            Ok(write(next, "suspend", None, None, now))
        }
        TenantState::Suspended => Ok(Decision::Unchanged),
        TenantState::Active => {
            let mut next = record.clone();
            next.state = TenantState::Suspended;
            next.connection = connection;
            next.suspension_reason = reason.map(str::to_owned);
            Ok(write(next, "suspend", None, None, now))
        }
        _ => Err(illegal(tenant, record.status(), "suspend")),
    }
}

/// Key rotation: the stored token re-sealed under `keys`' active key, in whatever state the
/// tenant is (a suspended tenant's read-only token too). `Unchanged` when it already is, or
/// when there is no token; an error when no key of the ring opens it. Not deterministic (a
/// seal draws a fresh nonce), so it is written by compare-and-set like every transition: a
/// record changed meanwhile is read again and re-sealed from its new contents.
pub fn reseal(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    keys: &KeyRing,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    let Some(connection) = &record.connection else {
        return Ok(Decision::Unchanged);
    };
    let resealed = connection
        .resealed(tenant, keys)
        .map_err(|e| TransitionError::Sealed {
            tenant: tenant.to_string(),
            message: e.to_string(),
        })?;
    match resealed {
        Some(connection) => {
            let mut next = record.clone();
            next.connection = Some(connection);
            Ok(write(next, "reseal", None, None, now))
        }
        None => Ok(Decision::Unchanged),
    }
}

/// `suspended` → `active`, with a new connection.
pub fn resume(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    connection: StoredConnectionConfig,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.state {
        TenantState::Suspended => {
            let mut next = record.clone();
            next.state = TenantState::Active;
            next.connection = Some(connection);
            next.suspension_reason = None;
            Ok(write(next, "resume", None, None, now))
        }
        _ => Err(illegal(tenant, record.status(), "resume")),
    }
}

/// `active | suspended | failed` → `destroying` (deletion due at `delete_after`).
pub fn destroy(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    delete_after: Timestamp,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.state {
        TenantState::Destroying { .. } | TenantState::Deleted { .. } => Ok(Decision::Unchanged),
        TenantState::Provisioning => Err(illegal(
            tenant,
            record.status(),
            "delete while provisioning",
        )),
        _ => {
            let mut next = record.clone();
            next.state = TenantState::Destroying { delete_after };
            Ok(write(next, "destroy", None, None, now))
        }
    }
}

/// The database is gone.
pub fn deleted(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    backup: Option<String>,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    match record.state {
        TenantState::Deleted { .. } => return Ok(Decision::Unchanged),
        TenantState::Destroying { .. } => {}
        _ => return Err(illegal(tenant, record.status(), "mark deleted")),
    }
    let mut next = record.clone();
    next.state = TenantState::Deleted { backup };
    next.connection = None;
    Ok(write(next, "deleted", None, None, now))
}

/// A new plan and its quotas.
pub fn change_plan(
    current: Option<&Versioned<TenantRecord>>,
    tenant: &TenantId,
    plan: TenantPlan,
    plans: &Plans,
    now: &Timestamp,
) -> Result<Decision<TenantRecord>, TransitionError> {
    let record = existing(current, tenant)?;
    if record.plan == plan {
        return Ok(Decision::Unchanged);
    }
    if matches!(
        record.state,
        TenantState::Destroying { .. } | TenantState::Deleted { .. }
    ) {
        return Err(illegal(tenant, record.status(), "change plan"));
    }
    let mut next = record.clone();
    next.plan = plan;
    next.quotas = with_overrides(plans.quotas(plan), &record.quota_overrides);
    Ok(write(next, "plan_changed", None, None, now))
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
            status: self.status(),
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
    //! Every transition, legal and illegal, at pinned times.

    use super::*;

    /// `t(0)` is 2026-01-01T00:00:00Z; `t(n)` is `n` seconds later.
    fn t(seconds: i64) -> Timestamp {
        let epoch = Timestamp::parse("2026-01-01T00:00:00Z").unwrap().instant();
        Timestamp::from(epoch + chrono::Duration::seconds(seconds))
    }

    fn acme() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

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

    fn connection(url: &str) -> StoredConnectionConfig {
        StoredConnectionConfig {
            url: url.into(),
            group: None,
            sealed_auth_token: None,
        }
    }

    /// Applies a decision as the store would (revision + 1), returning the new current value.
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

    fn event_of(decision: &Decision<TenantRecord>) -> &ProgressEvent {
        match decision {
            Decision::Write { event, .. } => event,
            Decision::Unchanged => panic!("nothing written"),
        }
    }

    fn status(s: &Option<Versioned<TenantRecord>>) -> TenantProvisioningStatus {
        s.as_ref().unwrap().state.status()
    }

    fn is_illegal<T: std::fmt::Debug>(result: Result<T, TransitionError>) -> bool {
        matches!(result, Err(TransitionError::Illegal { .. }))
    }

    #[test]
    fn reseal_moves_a_token_to_the_active_key_and_keeps_it() {
        use secrecy::ExposeSecret;
        let (k1, k2) = (KeyRing::generate_key(), KeyRing::generate_key());
        let old = KeyRing::new("k1", [("k1", &k1)]).unwrap();
        let rotated = KeyRing::new("k2", [("k1", &k1), ("k2", &k2)]).unwrap();
        let only_new = KeyRing::new("k2", [("k2", &k2)]).unwrap();
        let mut s = active().unwrap();
        s.state.connection = Some(StoredConnectionConfig::seal(
            &fleet_protocol::TenantConnectionConfig {
                url: "file:acme.db".into(),
                auth_token: Some("jwt-of-acme".into()),
                group: Some("eu".into()),
            },
            &acme(),
            &old,
        ));
        // No key of the ring opens it: refused, nothing written.
        assert!(matches!(
            reseal(Some(&s), &acme(), &only_new, &t(20)),
            Err(TransitionError::Sealed { .. })
        ));
        let Decision::Write { next, event } = reseal(Some(&s), &acme(), &rotated, &t(20)).unwrap()
        else {
            panic!("a token sealed with k1 is re-sealed")
        };
        assert_eq!(event.step, "reseal");
        assert_eq!(next.state, s.state.state, "the tenant's state is untouched");
        let connection = next.connection.clone().unwrap();
        assert!(
            connection
                .sealed_auth_token
                .as_deref()
                .unwrap()
                .starts_with("v1.k2.")
        );
        assert_eq!(connection.url, "file:acme.db");
        let token = connection.auth_token(&acme(), &only_new).unwrap().unwrap();
        assert_eq!(token.expose_secret(), "jwt-of-acme");
        // Already under the active key, or no token at all: nothing to do.
        let resealed = Versioned {
            state: next,
            revision: s.revision + 1,
        };
        assert_eq!(
            reseal(Some(&resealed), &acme(), &rotated, &t(21)).unwrap(),
            Decision::Unchanged
        );
        let mut bare = resealed.clone();
        bare.state.connection = None;
        assert_eq!(
            reseal(Some(&bare), &acme(), &rotated, &t(21)).unwrap(),
            Decision::Unchanged
        );
        assert!(matches!(
            reseal(None, &acme(), &rotated, &t(21)),
            Err(TransitionError::Unknown(_))
        ));
    }

    /// A tenant provisioned through every step, active at `t(10)`.
    fn active() -> Option<Versioned<TenantRecord>> {
        let mut s = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        for (i, step) in Step::PREPARATION.into_iter().enumerate() {
            let at = t(i as i64 + 1);
            s = apply(
                s.clone(),
                step_started(s.as_ref(), &acme(), step, &at).unwrap(),
            );
            s = apply(
                s.clone(),
                step_finished(s.as_ref(), &acme(), step, false, 3, &|_| {}, &at).unwrap(),
            );
        }
        apply(s.clone(), activate(s.as_ref(), &acme(), 1, &t(10)).unwrap())
    }

    #[test]
    fn a_leased_create_holds_the_lease_and_repeats_are_no_ops() {
        let decision = create_leased(
            None,
            &acme(),
            &request(),
            &Plans::default(),
            "w1",
            t(10),
            &t(0),
        )
        .unwrap();
        let s = apply(None, decision);
        let lease = s.as_ref().unwrap().state.lease.clone().unwrap();
        assert_eq!((lease.owner.as_str(), lease.until), ("w1", t(10)));
        assert_eq!(
            create_leased(
                s.as_ref(),
                &acme(),
                &request(),
                &Plans::default(),
                "w2",
                t(20),
                &t(1)
            )
            .unwrap(),
            Decision::Unchanged
        );
    }

    #[test]
    fn create_writes_a_record_with_every_step_pending_and_repeats_are_no_ops() {
        let decision = create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap();
        assert_eq!(event_of(&decision).step, "requested");
        assert_eq!(event_of(&decision).at, t(0));
        let s = apply(None, decision);
        let record = &s.as_ref().unwrap().state;
        assert_eq!(record.requested_at, t(0));
        assert_eq!(
            record
                .steps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            Step::ALL.map(Step::as_str)
        );
        assert!(record.steps.iter().all(|s| s.status == StepStatus::Pending));
        assert_eq!(record.quotas, plan_quotas(TenantPlan::Pro));
        assert_eq!(
            create(s.as_ref(), &acme(), &request(), &Plans::default(), &t(1)).unwrap(),
            Decision::Unchanged
        );
        let mut other = request();
        other.region = TenantRegion::UsEast;
        assert_eq!(
            create(s.as_ref(), &acme(), &other, &Plans::default(), &t(1)),
            Err(TransitionError::Conflict("acme".into()))
        );
    }

    #[test]
    fn a_lease_is_busy_until_it_expires_at_the_given_time() {
        let s = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        let s = apply(
            s.clone(),
            claim(s.as_ref(), &acme(), "w1", t(15), &t(0)).unwrap(),
        );
        assert!(matches!(
            claim(s.as_ref(), &acme(), "w2", t(30), &t(14)),
            Err(TransitionError::Busy { until, .. }) if until == t(15)
        ));
        assert!(
            claim(s.as_ref(), &acme(), "w1", t(30), &t(14)).is_ok(),
            "the holder renews"
        );
        let taken = claim(s.as_ref(), &acme(), "w2", t(30), &t(15)).unwrap();
        assert_eq!(event_of(&taken).step, "lease");
        let s = apply(s, taken);
        assert_eq!(s.unwrap().state.lease.unwrap().owner, "w2");
        assert_eq!(
            claim(None, &acme(), "w1", t(1), &t(0)),
            Err(TransitionError::Unknown("acme".into()))
        );
    }

    #[test]
    fn a_lease_is_taken_only_while_the_tenant_is_provisioning() {
        // Another worker activated the tenant between this one's read and its claim: the
        // claim re-decided on the active record must not leave a lease on it.
        let active = active();
        assert!(active.as_ref().unwrap().state.lease.is_none());
        assert!(matches!(
            claim(active.as_ref(), &acme(), "w2", t(30), &t(11)),
            Err(TransitionError::Illegal {
                from: TenantProvisioningStatus::Active,
                ..
            })
        ));
        assert!(is_illegal(renew(
            active.as_ref(),
            &acme(),
            "w2",
            t(30),
            &t(11)
        )));
        let leased = leased_by("w1", t(15));
        let failed = step_failed(
            leased.as_ref(),
            &acme(),
            Step::CreateDatabase,
            "boom",
            true,
            &t(1),
        );
        let failed = apply(leased, failed.unwrap());
        assert!(is_illegal(claim(
            failed.as_ref(),
            &acme(),
            "w1",
            t(30),
            &t(2)
        )));
    }

    #[test]
    fn steps_start_and_finish_with_their_times_and_what_they_produced() {
        let s = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        let s = apply(
            s.clone(),
            step_started(s.as_ref(), &acme(), Step::CreateDatabase, &t(1)).unwrap(),
        );
        let step = &s.as_ref().unwrap().state.steps[0];
        assert_eq!(
            (step.status, step.started_at.clone()),
            (StepStatus::Running, Some(t(1)))
        );
        let decision = step_finished(
            s.as_ref(),
            &acme(),
            Step::CreateDatabase,
            false,
            42,
            &|r| r.database = Some("acme".into()),
            &t(2),
        )
        .unwrap();
        assert_eq!(event_of(&decision).duration_ms, Some(42));
        let s = apply(s, decision);
        let record = &s.as_ref().unwrap().state;
        assert_eq!(record.database.as_deref(), Some("acme"));
        assert!(step_done(record, Step::CreateDatabase));
        assert_eq!(record.steps[0].completed_at, Some(t(2)));
        assert_eq!(next_step(record), Step::IssueToken);
        let skipped = step_finished(
            s.as_ref(),
            &acme(),
            Step::IssueToken,
            true,
            0,
            &|_| {},
            &t(3),
        );
        let s = apply(s.clone(), skipped.unwrap());
        assert_eq!(
            s.as_ref().unwrap().state.steps[1].status,
            StepStatus::Skipped
        );
        assert!(step_done(&s.as_ref().unwrap().state, Step::IssueToken));
    }

    /// A tenant created at `t(0)` with `owner`'s lease until `until`.
    fn leased_by(owner: &str, until: Timestamp) -> Option<Versioned<TenantRecord>> {
        let created = create_leased(
            None,
            &acme(),
            &request(),
            &Plans::default(),
            owner,
            until,
            &t(0),
        );
        apply(None, created.unwrap())
    }

    #[test]
    fn a_lease_is_free_unless_another_worker_holds_it_live() {
        let s = leased_by("w1", t(15));
        assert!(lease_free(s.as_ref(), &acme(), "w1", &t(1)).is_ok(), "ours");
        assert!(matches!(
            lease_free(s.as_ref(), &acme(), "w2", &t(1)),
            Err(TransitionError::Busy { owner, until, .. }) if owner == "w1" && until == t(15)
        ));
        assert!(
            lease_free(s.as_ref(), &acme(), "w2", &t(16)).is_ok(),
            "run out"
        );
        assert!(lease_free(None, &acme(), "w2", &t(1)).is_ok(), "no record");
    }

    #[test]
    fn a_lease_taken_over_is_never_renewed_by_its_former_holder() {
        let s = leased_by("w1", t(15));
        assert!(lease_held(s.as_ref(), &acme(), "w1", &t(1)).is_ok());
        assert!(renew(s.as_ref(), &acme(), "w1", t(30), &t(14)).is_ok());
        // Run out: w2 takes it over; w1 may not renew it, not even once w2's has run out too.
        let s = apply(
            s.clone(),
            claim(s.as_ref(), &acme(), "w2", t(40), &t(20)).unwrap(),
        );
        for now in [t(21), t(50)] {
            assert!(matches!(
                lease_held(s.as_ref(), &acme(), "w1", &now),
                Err(TransitionError::Busy { owner, until, .. }) if owner == "w2" && until == t(40)
            ));
            assert!(matches!(
                renew(s.as_ref(), &acme(), "w1", t(80), &now),
                Err(TransitionError::Busy { .. })
            ));
        }
        assert!(renew(s.as_ref(), &acme(), "w2", t(80), &t(50)).is_ok());
        // A tenant no longer provisioning is for the transition itself to judge.
        assert!(lease_held(active().as_ref(), &acme(), "w1", &t(50)).is_ok());
        assert!(lease_held(None, &acme(), "w1", &t(50)).is_ok());
    }

    #[test]
    fn steps_finished_in_memory_apply_in_order_each_as_its_own_step_would() {
        let s = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        let finished = vec![
            FinishedStep {
                step: Step::CreateDatabase,
                skipped: false,
                duration_ms: 4,
                at: t(1),
                update: Some(Box::new(|r: &mut TenantRecord| {
                    r.database = Some("acme".into())
                })),
            },
            FinishedStep {
                step: Step::IssueToken,
                skipped: true,
                duration_ms: 0,
                at: t(2),
                update: None,
            },
        ];
        let (batch, events) = steps_finished(s.as_ref(), &acme(), &finished).unwrap();
        // The same record as the steps written one by one, at the revision it was read at.
        let mut one_by_one = s.clone();
        let mut singles = Vec::new();
        for done in &finished {
            let update: &dyn Fn(&mut TenantRecord) = match &done.update {
                Some(u) => u,
                None => &|_| {},
            };
            let decision = step_finished(
                one_by_one.as_ref(),
                &acme(),
                done.step,
                done.skipped,
                done.duration_ms,
                update,
                &done.at,
            )
            .unwrap();
            singles.push(event_of(&decision).clone());
            let Decision::Write { next, .. } = decision else {
                unreachable!()
            };
            one_by_one.as_mut().unwrap().state = next;
        }
        assert_eq!(Some(&batch), one_by_one.as_ref());
        assert_eq!(batch.revision, s.as_ref().unwrap().revision);
        assert_eq!(events, singles);
        assert_eq!(
            events.iter().map(|e| e.step.as_str()).collect::<Vec<_>>(),
            ["create_database", "issue_token"]
        );
        assert_eq!(batch.state.database.as_deref(), Some("acme"));
        assert_eq!(batch.state.steps[0].completed_at, Some(t(1)));
        assert_eq!(batch.state.steps[1].status, StepStatus::Skipped);
        // None at all: the record as it is.
        let (same, none) = steps_finished(s.as_ref(), &acme(), &[]).unwrap();
        assert_eq!(Some(same), s);
        assert!(none.is_empty());
        // A tenant no longer provisioning takes none of them.
        assert!(is_illegal(steps_finished(
            active().as_ref(),
            &acme(),
            &finished
        )));
        assert_eq!(
            steps_finished(None, &acme(), &finished).unwrap_err(),
            TransitionError::Unknown("acme".into())
        );
    }

    #[test]
    fn a_step_missing_from_an_old_record_is_added_not_a_panic() {
        let mut s = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        s.as_mut().unwrap().state.steps.retain(|s| s.name != "seed");
        let s = apply(
            s.clone(),
            step_started(s.as_ref(), &acme(), Step::Seed, &t(1)).unwrap(),
        );
        assert!(s.unwrap().state.steps.iter().any(|s| s.name == "seed"));
    }

    #[test]
    fn steps_are_refused_outside_provisioning() {
        let s = active();
        assert!(is_illegal(step_started(
            s.as_ref(),
            &acme(),
            Step::Seed,
            &t(11)
        )));
        assert!(is_illegal(step_finished(
            s.as_ref(),
            &acme(),
            Step::Seed,
            false,
            1,
            &|_| {},
            &t(11)
        )));
        assert_eq!(
            step_failed(s.as_ref(), &acme(), Step::Seed, "late", true, &t(11)).unwrap(),
            Decision::Unchanged,
            "a late failure report leaves an active tenant alone"
        );
        assert_eq!(
            step_started(None, &acme(), Step::Seed, &t(0)),
            Err(TransitionError::Unknown("acme".into()))
        );
    }

    #[test]
    fn a_transient_failure_keeps_provisioning_and_a_permanent_one_fails_for_good() {
        let s = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        let s = apply(
            s.clone(),
            claim(s.as_ref(), &acme(), "w1", t(15), &t(0)).unwrap(),
        );
        let transient = step_failed(
            s.as_ref(),
            &acme(),
            Step::CreateDatabase,
            "503",
            false,
            &t(1),
        );
        let s = apply(s.clone(), transient.unwrap());
        assert_eq!(status(&s), TenantProvisioningStatus::Provisioning);
        assert!(s.as_ref().unwrap().state.lease.is_some(), "the lease stays");
        let permanent = step_failed(
            s.as_ref(),
            &acme(),
            Step::CreateDatabase,
            "no group",
            true,
            &t(2),
        )
        .unwrap();
        assert_eq!(event_of(&permanent).error.as_deref(), Some("no group"));
        let s = apply(s, permanent);
        let record = &s.as_ref().unwrap().state;
        assert_eq!(record.status(), TenantProvisioningStatus::Failed);
        assert_eq!(record.error.as_deref(), Some("create_database: no group"));
        assert!(record.lease.is_none());
        assert_eq!(
            step_failed(
                s.as_ref(),
                &acme(),
                Step::CreateDatabase,
                "again",
                true,
                &t(3)
            )
            .unwrap(),
            Decision::Unchanged,
            "a failed tenant is not failed twice"
        );
        // A new tenant.created retries it: failed steps pending again.
        let s = apply(
            s.clone(),
            create(s.as_ref(), &acme(), &request(), &Plans::default(), &t(4)).unwrap(),
        );
        let record = &s.as_ref().unwrap().state;
        assert_eq!(record.status(), TenantProvisioningStatus::Provisioning);
        assert!(record.error.is_none());
        assert_eq!(record.steps[0].status, StepStatus::Pending);
    }

    #[test]
    fn activation_records_the_total_time_and_is_idempotent() {
        let s = active();
        let record = &s.as_ref().unwrap().state;
        assert_eq!(record.status(), TenantProvisioningStatus::Active);
        assert_eq!(record.provisioned_at, Some(t(10)));
        assert_eq!(record.total_duration_ms, Some(10_000));
        assert!(
            record
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Completed)
        );
        assert_eq!(
            activate(s.as_ref(), &acme(), 1, &t(11)).unwrap(),
            Decision::Unchanged
        );
        let failed = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        let failed = apply(
            failed.clone(),
            step_failed(failed.as_ref(), &acme(), Step::Seed, "x", true, &t(1)).unwrap(),
        );
        assert!(is_illegal(activate(failed.as_ref(), &acme(), 1, &t(2))));
    }

    #[test]
    fn a_hook_rides_its_transition_and_is_cleared_once_sent() {
        let s = active();
        let hook = PendingHook {
            subject: "hooks.tenant.suspended".into(),
            event: "tenant.suspended".into(),
            key: "suspended@3".into(),
            data: serde_json::json!({}),
        };
        let decision = with_hook(
            suspend(s.as_ref(), &acme(), None, None, &t(20)).unwrap(),
            hook,
        );
        let s = apply(s, decision);
        assert_eq!(
            s.as_ref().unwrap().state.pending_hook.as_ref().unwrap().key,
            "suspended@3"
        );
        assert_eq!(
            hook_sent(s.as_ref(), &acme(), "other", &t(21)).unwrap(),
            Decision::Unchanged,
            "another key clears nothing"
        );
        let s = apply(
            s.clone(),
            hook_sent(s.as_ref(), &acme(), "suspended@3", &t(21)).unwrap(),
        );
        let record = &s.as_ref().unwrap().state;
        assert!(record.pending_hook.is_none());
        assert_eq!(record.hooks_sent, ["suspended@3"]);
        let again = PendingHook {
            subject: "hooks.tenant.suspended".into(),
            event: "tenant.suspended".into(),
            key: "suspended@4".into(),
            data: serde_json::json!({}),
        };
        assert_eq!(
            with_hook(
                suspend(s.as_ref(), &acme(), None, None, &t(22)).unwrap(),
                again
            ),
            Decision::Unchanged,
            "no write, no hook"
        );
    }

    #[test]
    fn an_admins_suspension_over_the_auditors_takes_its_reason() {
        let s = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        let mut record = s.clone().unwrap();
        record.state.state = TenantState::Suspended;
        record.state.suspension_reason = Some("quota".into());
        let by_auditor = Some(record);
        let decision = suspend(by_auditor.as_ref(), &acme(), None, Some("billing"), &t(1)).unwrap();
        let Decision::Write { next, .. } = decision else {
            panic!("the reason changes")
        };
        assert_eq!(next.suspension_reason.as_deref(), Some("billing"));
        let by_admin = Some(Versioned {
            state: next,
            revision: by_auditor.map_or(1, |v| v.revision + 1),
        });
        assert_eq!(
            suspend(by_admin.as_ref(), &acme(), None, Some("quota"), &t(2)).unwrap(),
            Decision::Unchanged,
            "the auditor never takes over an admin's suspension"
        );
    }

    #[test]
    fn suspend_and_resume_swap_the_connection() {
        let s = active();
        assert!(is_illegal(resume(
            s.as_ref(),
            &acme(),
            connection("x"),
            &t(20)
        )));
        let s = apply(
            s.clone(),
            suspend(
                s.as_ref(),
                &acme(),
                Some(connection("read-only")),
                None,
                &t(20),
            )
            .unwrap(),
        );
        assert_eq!(status(&s), TenantProvisioningStatus::Suspended);
        assert_eq!(
            s.as_ref().unwrap().state.connection,
            Some(connection("read-only"))
        );
        assert_eq!(
            suspend(s.as_ref(), &acme(), None, None, &t(21)).unwrap(),
            Decision::Unchanged
        );
        let s = apply(
            s.clone(),
            resume(s.as_ref(), &acme(), connection("fresh"), &t(22)).unwrap(),
        );
        assert_eq!(status(&s), TenantProvisioningStatus::Active);
        assert_eq!(
            s.as_ref().unwrap().state.connection,
            Some(connection("fresh"))
        );
        let provisioning = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        assert!(is_illegal(suspend(
            provisioning.as_ref(),
            &acme(),
            None,
            None,
            &t(1)
        )));
        assert!(is_illegal(resume(
            provisioning.as_ref(),
            &acme(),
            connection("x"),
            &t(1)
        )));
    }

    #[test]
    fn deletion_goes_through_destroying_with_its_due_time() {
        let s = active();
        let s = apply(
            s.clone(),
            destroy(s.as_ref(), &acme(), t(3600), &t(20)).unwrap(),
        );
        let record = &s.as_ref().unwrap().state;
        assert_eq!(record.status(), TenantProvisioningStatus::Destroying);
        assert_eq!(record.delete_after(), Some(&t(3600)));
        assert_eq!(
            destroy(s.as_ref(), &acme(), t(9999), &t(21)).unwrap(),
            Decision::Unchanged,
            "a repeated tenant.deleted keeps the first due time"
        );
        assert!(is_illegal(suspend(s.as_ref(), &acme(), None, None, &t(21))));
        assert!(is_illegal(change_plan(
            s.as_ref(),
            &acme(),
            TenantPlan::Free,
            &Plans::default(),
            &t(21)
        )));
        let s = apply(
            s.clone(),
            deleted(s.as_ref(), &acme(), Some("/b/acme.db".into()), &t(3600)).unwrap(),
        );
        let record = &s.as_ref().unwrap().state;
        assert_eq!(status_name(record), "deleted");
        assert!(record.connection.is_none());
        assert_eq!(record.backup(), Some("/b/acme.db"));
        assert_eq!(
            deleted(s.as_ref(), &acme(), None, &t(3601)).unwrap(),
            Decision::Unchanged
        );
        assert!(is_illegal(step_started(
            s.as_ref(),
            &acme(),
            Step::Seed,
            &t(3601)
        )));
        // Not while provisioning, and never straight from active to deleted.
        let provisioning = apply(
            None,
            create(None, &acme(), &request(), &Plans::default(), &t(0)).unwrap(),
        );
        assert!(is_illegal(destroy(
            provisioning.as_ref(),
            &acme(),
            t(1),
            &t(0)
        )));
        assert!(is_illegal(deleted(
            active().as_ref(),
            &acme(),
            None,
            &t(11)
        )));
    }

    #[test]
    fn a_plan_change_brings_its_quotas() {
        let s = active();
        assert_eq!(
            change_plan(
                s.as_ref(),
                &acme(),
                TenantPlan::Pro,
                &Plans::default(),
                &t(20)
            )
            .unwrap(),
            Decision::Unchanged
        );
        let decision = change_plan(
            s.as_ref(),
            &acme(),
            TenantPlan::Free,
            &Plans::default(),
            &t(20),
        )
        .unwrap();
        assert_eq!(event_of(&decision).at, t(20));
        let s = apply(s, decision);
        let record = &s.as_ref().unwrap().state;
        assert_eq!(record.plan, TenantPlan::Free);
        assert_eq!(record.quotas, plan_quotas(TenantPlan::Free));
        assert_eq!(
            change_plan(None, &acme(), TenantPlan::Free, &Plans::default(), &t(20)),
            Err(TransitionError::Unknown("acme".into()))
        );
    }

    #[test]
    fn the_fingerprint_covers_org_plan_and_region_only() {
        let mut a = request();
        let b = request();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        a.display_name = Some("Other name".into());
        assert_eq!(fingerprint(&a), fingerprint(&b));
        a.plan = TenantPlan::Free;
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn the_result_is_upstream_shaped() {
        let s = active();
        let result = s.unwrap().state.result();
        assert_eq!(result.status, TenantProvisioningStatus::Active);
        assert_eq!(
            result.connection_url, "-",
            "no connection stored in this test"
        );
        assert_eq!(result.total_duration_ms, Some(10_000));
        assert_eq!(result.steps.len(), 6);
    }

    #[test]
    fn the_state_is_stored_flat_with_only_its_own_fields() {
        let s = active();
        let s = apply(
            s.clone(),
            destroy(s.as_ref(), &acme(), t(3600), &t(20)).unwrap(),
        );
        let json = serde_json::to_value(&s.as_ref().unwrap().state).unwrap();
        assert_eq!(json["status"], "destroying");
        assert_eq!(json["deleteAfter"], "2026-01-01T01:00:00.000Z");
        assert!(json.get("backup").is_none());
        let back: TenantRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.delete_after(), Some(&t(3600)));
        let s = apply(
            s.clone(),
            deleted(s.as_ref(), &acme(), Some("/b/x.db".into()), &t(3600)).unwrap(),
        );
        let json = serde_json::to_value(&s.unwrap().state).unwrap();
        assert_eq!(
            (json["status"].as_str(), json["backup"].as_str()),
            (Some("deleted"), Some("/b/x.db"))
        );
        assert!(
            json.get("deleteAfter").is_none(),
            "a deleted tenant is due for nothing"
        );
    }
}
