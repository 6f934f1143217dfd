//! The provisioner: `tenant.created` → a database of the tenant's own, a token, its connection
//! sealed in the control plane, the base system schema, seed data → `active` and
//! `hooks.tenant.created`; and the rest of the lifecycle (`tenant.suspended`, `tenant.resumed`,
//! `tenant.deleted`, `tenant.plan_changed`).
//!
//! Every step is idempotent and recorded (status, start, duration, error) in the tenant's KV
//! record — changed only by compare-and-set through the pure [`machine`] — and on
//! `progress.tenant.<id>`:
//! - the database name derives from the tenant id, and creating it again returns it;
//! - one executor at a time: a lease in the record (a second replica retries later);
//! - a token is issued only while none is stored, after revoking any orphan from a crashed
//!   attempt — so there is always exactly one valid token;
//! - schema sync re-plans from the live database (empty once applied); seeding inserts with
//!   `OR IGNORE`;
//! - a hook is decided in the same write as its transition and published afterwards under an id
//!   derived from the transition, so a crash anywhere ends in one hook.
//!
//! Transient failures are retried with exponential backoff; permanent ones (an unmapped region,
//! a create that conflicts with an existing tenant, bad input, a corrupt database record) fail
//! the tenant with the step and the error, publish `hooks.tenant.failed`, and dead-letter the
//! message for replay. A `tenant.created` that runs out of deliveries (retries exhausted, or
//! workers killed on every attempt) fails its tenant the same way when the runtime reports it
//! dead-lettered: no tenant is ever left `provisioning` without an outcome.
//!
//! A deletion with a grace period (`onTenantDelete.immediate = false`) is recorded
//! (`destroying`, due at `deleteAfter`), scheduled as a JetStream message schedule on
//! `tenant.schedule.<id>` that fires `tenant.deletion_due` when due, and acknowledged: no
//! delivery slot waits out the grace period, and the schedule survives restarts.

/// The tenant state machine (in `fleet-tenants`, shared with the deployer and `fleetctl`).
pub use fleet_tenants::machine;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use async_trait::async_trait;
use fleet_protocol::turso::TursoTokenScope;
use fleet_protocol::{
    DatabaseName, TenantConnectionConfig, TenantCreated, TenantDatabaseLifecycle, TenantId,
    TenantLifecycleCommand, TenantProvisioningStatus, TenantRegion, Timestamp,
};
use fleet_runtime::worker::{BuildError, Worker, WorkerContext};
use fleet_runtime::{
    DeadLetter, Decision, Delivery, Handler, Hook, Hooks, Outcome, Scheduler, StateError,
    StateStore, Versioned, error_chain,
};
use fleet_schema::SchemaError;
use fleet_tenantdb::{
    KeyRing, SecretError, StoredConnectionConfig, TenantDatabases, TenantDbError, crashpoint,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use fleet_tenants::machine::{
    FinishedStep, PendingHook, Step, StepUpdate, TenantRecord, TransitionError,
};

/// The provisioner's own crash points (see [`fleet_tenantdb::crashpoint`]), in the order a
/// deletion passes them: the backup written to its `.partial` file, renamed to its final name,
/// the database deleted (before the tenant is recorded deleted).
pub const DELETE_CRASH_POINTS: &[&str] = &[
    "delete.backup_written",
    "delete.backup_renamed",
    "delete.database_deleted",
];

/// A command of the provisioner, parsed once from a delivery's subject and payload.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    /// `tenant.created`: provision a new tenant.
    Create(TenantCreated),
    /// `tenant.suspended`, with the reason for the record and the hook.
    Suspend {
        /// The tenant.
        tenant: TenantId,
        /// Why (billing, policy, request).
        reason: Option<String>,
    },
    /// `tenant.resumed`.
    Resume(TenantId),
    /// `tenant.deleted`: delete now or schedule the deletion after the grace period.
    Delete(TenantId),
    /// `tenant.deletion_due`: a scheduled deletion fired.
    DeletionDue(TenantId),
    /// `tenant.plan_changed`.
    ChangePlan {
        /// The tenant.
        tenant: TenantId,
        /// The new plan.
        plan: fleet_protocol::TenantPlan,
    },
    /// `tenant.quota_changed`: quotas overriding the plan's for one tenant.
    OverrideQuotas {
        /// The tenant.
        tenant: TenantId,
        /// The quotas set.
        quotas: fleet_protocol::TenantQuota,
    },
}

impl TenantCommand {
    /// Parses a delivery (subject, then its payload); anything else is poison with the reason.
    pub fn parse(delivery: &Delivery) -> Result<Self, Outcome> {
        let lifecycle = || delivery.decode::<TenantLifecycleCommand>();
        Ok(match delivery.subject.as_str() {
            "tenant.created" => Self::Create(delivery.decode::<TenantCreated>()?),
            "tenant.suspended" => {
                let command = lifecycle()?;
                Self::Suspend {
                    tenant: command.tenant_id,
                    reason: command.reason,
                }
            }
            "tenant.resumed" => Self::Resume(lifecycle()?.tenant_id),
            "tenant.deleted" => Self::Delete(lifecycle()?.tenant_id),
            "tenant.deletion_due" => Self::DeletionDue(lifecycle()?.tenant_id),
            "tenant.quota_changed" => {
                let command = lifecycle()?;
                let quotas = command.quotas.ok_or_else(|| Outcome::Poison {
                    reason: "tenant.quota_changed needs `quotas`".to_owned(),
                })?;
                Self::OverrideQuotas {
                    tenant: command.tenant_id,
                    quotas,
                }
            }
            "tenant.plan_changed" => {
                let command = lifecycle()?;
                let plan = command.plan.ok_or_else(|| Outcome::Poison {
                    reason: "tenant.plan_changed needs `plan`".to_owned(),
                })?;
                Self::ChangePlan {
                    tenant: command.tenant_id,
                    plan,
                }
            }
            other => {
                return Err(Outcome::Poison {
                    reason: format!("the provisioner handles no {other:?} commands"),
                });
            }
        })
    }
}

/// The crash point after a tenant is active and its hook published, before the message is
/// acknowledged: its creation is delivered again later.
pub const ACTIVATED_CRASH_POINT: &str = "create.activated";

/// Settings of the provisioner.
#[derive(Debug, Clone)]
pub struct ProvisionerSettings {
    /// Region → database group (data residency).
    pub regions: BTreeMap<TenantRegion, String>,
    /// Lifecycle hooks configuration.
    pub lifecycle: TenantDatabaseLifecycle,
    /// Lifetime of issued tokens (`None`: never expire).
    pub token_ttl: Option<Duration>,
    /// Where backups before deletion go.
    pub backup_dir: PathBuf,
    /// How long one worker holds a tenant's provisioning lease.
    pub lease: Duration,
    /// Chaos testing only: a pause inside every step (`provisioner.step_delay_ms`), so a
    /// test can kill the worker in the middle of one. Zero in production.
    pub step_delay: Duration,
    /// A provisioning step that takes at least this long is written as soon as it ends
    /// (`provisioner.checkpoint_step_after_ms`); quicker ones are written with the next write.
    pub checkpoint_after: Duration,
    /// Each plan's quotas (`[quota.plans]`).
    pub plans: machine::Plans,
}

impl ProvisionerSettings {
    /// Settings from the fleet configuration.
    pub fn from_config(config: &fleet_config::Config) -> Result<Self, SettingsError> {
        let mut regions = BTreeMap::new();
        for (name, group) in &config.provisioner.regions {
            let region: TenantRegion = serde_json::from_value(json!(name))
                .map_err(|_| SettingsError::UnknownRegion(name.clone()))?;
            regions.insert(region, group.group.clone());
        }
        let delete = &config.provisioner.lifecycle.on_tenant_delete;
        let horizon = fleet_runtime::topology::WORK_MAX_AGE.as_secs() / 3600;
        if !delete.immediate && delete.grace_period_hours >= horizon {
            return Err(SettingsError::GraceBeyondHorizon {
                hours: delete.grace_period_hours,
                horizon,
            });
        }
        let step_delay = config.provisioner.step_delay_ms;
        Ok(Self {
            regions,
            lifecycle: config.provisioner.lifecycle.clone(),
            token_ttl: (config.provisioner.token_expiration_days > 0)
                .then(|| Duration::from_secs(config.provisioner.token_expiration_days * 86_400)),
            backup_dir: config.provisioner.backup_dir.clone(),
            lease: Duration::from_secs(config.provisioner.lease_secs.max(1)),
            step_delay: Duration::from_millis(step_delay),
            checkpoint_after: Duration::from_millis(config.provisioner.checkpoint_step_after_ms),
            plans: machine::Plans::new(config.quota.plans.clone()),
        })
    }
}

/// Why the provisioner's settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `provisioner.regions` names a region upstream does not know.
    #[error("provisioner.regions: unknown region {0:?}")]
    UnknownRegion(String),
    /// A deletion grace period longer than a schedule can wait.
    #[error(
        "provisioner.lifecycle.onTenantDelete.gracePeriodHours: {hours} hours is beyond the {horizon} hours a deletion can be scheduled ahead (the work stream's max age)"
    )]
    GraceBeyondHorizon {
        /// The configured grace period, in hours.
        hours: u64,
        /// The longest schedulable wait, in hours.
        horizon: u64,
    },
}

/// Why a provisioning action failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The tenant database backend failed.
    #[error(transparent)]
    Backend(#[from] TenantDbError),
    /// The schema engine failed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The state machine refused.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(String),
    /// A sealed secret could not be opened.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Something permanent, explained.
    #[error("{0}")]
    Permanent(String),
    /// Publishing a hook failed.
    #[error("publishing a hook: {0}")]
    Hook(String),
    /// Publishing a schedule failed.
    #[error("scheduling: {0}")]
    Schedule(String),
}

impl ProvisionError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend(e) => {
                e.is_transient()
                    || matches!(e, TenantDbError::Database { .. } | TenantDbError::Io { .. })
            }
            Self::Schema(
                SchemaError::Introspect(_) | SchemaError::Apply(_) | SchemaError::Open { .. },
            ) => true,
            Self::Transition(TransitionError::Busy { .. })
            | Self::Store(_)
            | Self::Hook(_)
            | Self::Schedule(_) => true,
            _ => false,
        }
    }
}

impl From<StateError<TransitionError>> for ProvisionError {
    fn from(err: StateError<TransitionError>) -> Self {
        match err {
            StateError::Refused(e) => Self::Transition(e),
            other => Self::Store(error_chain(&other)),
        }
    }
}

/// The record a transition left (it always leaves one for an existing tenant).
fn latest(
    written: Result<Current, ProvisionError>,
) -> Result<Versioned<TenantRecord>, ProvisionError> {
    written?.ok_or_else(|| ProvisionError::Store("the tenant record vanished".into()))
}

/// The provisioner's handler.
pub struct Provisioner {
    tenants: StateStore<TenantRecord>,
    backend: Arc<dyn TenantDatabases>,
    keys: Arc<KeyRing>,
    hooks: Hooks,
    scheduler: Scheduler,
    settings: ProvisionerSettings,
    owner: String,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("owner", &self.owner)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

type Current = Option<Versioned<TenantRecord>>;

/// The seed data of a new tenant: its admin user (kept when it is there).
fn seed_statement(record: &TenantRecord) -> fleet_schema::BoundStatement {
    fleet_schema::BoundStatement {
        sql: "INSERT OR IGNORE INTO sys_user (id, email, display_name, role) VALUES ('admin', ?1, ?2, 'admin')".into(),
        params: vec![
            libsql::Value::Text(record.admin_email.clone().unwrap_or_default()),
            record.display_name.clone().map_or(libsql::Value::Null, libsql::Value::Text),
        ],
    }
}

impl Provisioner {
    /// A provisioner over the tenants' state store, a backend, the key ring, hooks and the
    /// scheduler of work due later.
    pub fn new(
        tenants: StateStore<TenantRecord>,
        backend: Arc<dyn TenantDatabases>,
        keys: Arc<KeyRing>,
        hooks: Hooks,
        scheduler: Scheduler,
        settings: ProvisionerSettings,
    ) -> Self {
        let owner = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        Self {
            tenants,
            backend,
            keys,
            hooks,
            scheduler,
            settings,
            owner,
        }
    }

    async fn transition(
        &self,
        tenant: &TenantId,
        decide: impl Fn(
            Option<&Versioned<TenantRecord>>,
        ) -> Result<Decision<TenantRecord>, TransitionError>,
    ) -> Result<Current, ProvisionError> {
        Ok(self.tenants.transition(tenant.as_str(), decide).await?)
    }

    /// [`Self::transition`] from a state this worker read or wrote (no read unless it changed).
    async fn transition_from(
        &self,
        tenant: &TenantId,
        known: &Versioned<TenantRecord>,
        decide: impl Fn(
            Option<&Versioned<TenantRecord>>,
        ) -> Result<Decision<TenantRecord>, TransitionError>,
    ) -> Result<Current, ProvisionError> {
        Ok(self
            .tenants
            .transition_from(tenant.as_str(), known, decide)
            .await?)
    }

    /// Publishes the record's pending hook, then clears it.
    async fn flush_hook(&self, tenant: &TenantId, record: &Current) -> Result<(), ProvisionError> {
        let Some((known, pending)) = record
            .as_ref()
            .and_then(|r| Some((r, r.state.pending_hook.clone()?)))
        else {
            return Ok(());
        };
        let hook = Hook {
            subject: pending.subject.clone(),
            event: pending.event.clone(),
            version: 1,
            entity: tenant.to_string(),
            transition: pending.key.clone(),
            at: chrono::Utc::now(),
            data: pending.data.clone(),
        };
        self.hooks
            .publish(&hook)
            .await
            .map_err(|e| ProvisionError::Hook(error_chain(&e)))?;
        // Cleared from the state that asked for it (re-read only if it changed since).
        self.transition_from(tenant, known, |cur| {
            machine::hook_sent(cur, tenant, &pending.key, &Timestamp::now())
        })
        .await?;
        Ok(())
    }

    fn hook(subject: &str, event: &str, key: String, data: serde_json::Value) -> PendingHook {
        PendingHook {
            subject: subject.to_owned(),
            event: event.to_owned(),
            key,
            data,
        }
    }

    fn outcome(&self, error: ProvisionError) -> Outcome {
        if error.is_transient() {
            Outcome::transient_error(&error)
        } else {
            Outcome::poison(&error)
        }
    }

    /// Fails the tenant for good (`failed`, `hooks.tenant.failed`) — unless another worker
    /// holds a live provisioning lease on it: that worker is provisioning it right now, and the
    /// tenant is left to it (transient).
    async fn fail(&self, tenant: &TenantId, step: Step, error: &ProvisionError) -> Outcome {
        self.fail_as(tenant, step, error, false).await
    }

    /// [`Self::fail`]; with `leased`, only while this worker still holds the provisioning
    /// lease (a step of its attempt failed): once another worker has taken it over, the failure
    /// is this stale attempt's — its token revoked by that worker, say — and the tenant is left
    /// to its holder (transient).
    async fn fail_as(
        &self,
        tenant: &TenantId,
        step: Step,
        error: &ProvisionError,
        leased: bool,
    ) -> Outcome {
        let reason = error_chain(error);
        let result = self
            .transition(tenant, |cur| {
                if leased {
                    machine::lease_held(cur, tenant, &self.owner, &Timestamp::now())?;
                } else {
                    machine::lease_free(cur, tenant, &self.owner, &Timestamp::now())?;
                }
                let decision =
                    machine::step_failed(cur, tenant, step, &reason, true, &Timestamp::now())?;
                let data = match &decision {
                    Decision::Write { next, .. } => {
                        serde_json::to_value(next.result()).unwrap_or_default()
                    }
                    Decision::Unchanged => json!({}),
                };
                let key = format!("failed@{}", Timestamp::now());
                Ok(machine::with_hook(
                    decision,
                    Self::hook("hooks.tenant.failed", "tenant.failed", key, data),
                ))
            })
            .await;
        match result {
            Ok(record) => {
                if let Err(e) = self.flush_hook(tenant, &record).await {
                    // The hook stays pending in the record; the tenant's next command publishes it.
                    tracing::error!(%tenant, error = %error_chain(&e), "hooks.tenant.failed not published yet");
                }
                tracing::error!(%tenant, %step, error = %reason, "provisioning failed");
                Outcome::Poison {
                    reason: format!("{step}: {reason}"),
                }
            }
            Err(lost @ ProvisionError::Transition(TransitionError::Busy { .. })) => {
                tracing::warn!(%tenant, %step, error = %reason, lease = %error_chain(&lost), "not failing the tenant: another worker holds its provisioning lease");
                Outcome::transient(format!("{step}: {reason}"))
            }
            Err(e) => Outcome::transient_error(&e),
        }
    }

    async fn created(&self, command: TenantCreated, published_at: Option<&Timestamp>) -> Outcome {
        let tenant = command.tenant_id.clone();
        let request = command.request.clone();
        // A new record is written with this worker's lease in it: one write, not two.
        let until = self.lease_until();
        let record = match self
            .tenants
            .transition_new(tenant.as_str(), |cur| {
                machine::create_leased(
                    cur,
                    &tenant,
                    &request,
                    &self.settings.plans,
                    &self.owner,
                    until.clone(),
                    &Timestamp::now(),
                )
            })
            .await
            .map_err(ProvisionError::from)
        {
            Ok(record) => record,
            Err(ProvisionError::Transition(e @ TransitionError::Conflict(_))) => {
                return Outcome::poison(&e);
            }
            Err(e) => return self.outcome(e),
        };
        if let Err(e) = self.flush_hook(&tenant, &record).await {
            return self.outcome(e);
        }
        let Some(current) = record else {
            return Outcome::transient("record vanished");
        };
        match current.state.status() {
            TenantProvisioningStatus::Active | TenantProvisioningStatus::Suspended => {
                return Outcome::Done;
            }
            // The creation that provisioned this tenant, delivered again after the deletion (its
            // worker died before the ack): published before the tenant became active, its work
            // was done — not a new request, which is refused below.
            TenantProvisioningStatus::Destroying
                if published_at.is_some_and(|published| {
                    current
                        .state
                        .provisioned_at
                        .as_ref()
                        .is_some_and(|active| published.instant() <= active.instant())
                }) =>
            {
                tracing::info!(%tenant, "late delivery of the creation that provisioned this tenant; it is being deleted");
                return Outcome::Done;
            }
            TenantProvisioningStatus::Destroying => {
                return Outcome::Poison {
                    reason: format!("tenant {tenant} is being deleted; not re-created"),
                };
            }
            _ => {}
        }
        let Some(group) = self.settings.regions.get(&request.region).cloned() else {
            let error = ProvisionError::Permanent(format!(
                "region {} is not mapped to a database group (provisioner.regions): its data has nowhere to live",
                request.region
            ));
            return self.fail(&tenant, Step::CreateDatabase, &error).await;
        };
        let record = match self.hold_lease(&tenant, &current, true).await {
            Ok(record) => record,
            Err(ProvisionError::Transition(TransitionError::Busy { until, .. })) => {
                let wait = (until.instant() - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_millis(200));
                return Outcome::retry(
                    wait,
                    format!("tenant {tenant} is being provisioned by another worker"),
                );
            }
            // Another worker finished (or failed) the tenant since it was read: its outcome is
            // that worker's, and this delivery has nothing left to do.
            Err(ProvisionError::Transition(e @ TransitionError::Illegal { from, .. }))
                if from != TenantProvisioningStatus::Provisioning =>
            {
                tracing::info!(%tenant, error = %e, "provisioned by another worker meanwhile");
                return self.ended_elsewhere(&tenant).await;
            }
            Err(e) => return self.outcome(e),
        };
        match self.run_steps(&tenant, &group, record).await {
            Ok(()) => Outcome::Done,
            // The lease was taken over (this worker stalled past it): the tenant is the new
            // holder's, whose record this worker leaves alone.
            Err((step, e @ ProvisionError::Transition(TransitionError::Busy { .. }))) => {
                tracing::warn!(%tenant, %step, error = %error_chain(&e), "provisioning lease lost; leaving the tenant to its holder");
                Outcome::transient(format!("{step}: {}", error_chain(&e)))
            }
            // No longer provisioning: another worker finished, failed or deleted the tenant
            // meanwhile (a lease renewal or a step's write found it so). Its outcome stands;
            // failing it here would dead-letter a tenant that is not this attempt's.
            Err((step, e @ ProvisionError::Transition(TransitionError::Illegal { from, .. })))
                if from != TenantProvisioningStatus::Provisioning =>
            {
                tracing::warn!(%tenant, %step, error = %error_chain(&e), "the tenant's provisioning was ended by another worker; nothing left to do");
                self.ended_elsewhere(&tenant).await
            }
            Err((step, e)) if e.is_transient() => {
                let reason = error_chain(&e);
                // Recorded only under this worker's lease: one taken over since is its
                // holder's, whose record shows its own attempt.
                match self
                    .transition(&tenant, |cur| {
                        machine::lease_held(cur, &tenant, &self.owner, &Timestamp::now())?;
                        machine::step_failed(cur, &tenant, step, &reason, false, &Timestamp::now())
                    })
                    .await
                {
                    Ok(_) => {}
                    Err(ProvisionError::Transition(TransitionError::Busy { .. })) => {
                        tracing::warn!(%tenant, %step, error = %reason, "provisioning step failed after the lease was lost; leaving the tenant to its holder");
                        return Outcome::transient(format!("{step}: {reason}"));
                    }
                    // Only the record of this attempt's failure is missing; the retry goes on.
                    Err(record) => {
                        tracing::warn!(%tenant, %step, error = %record, "the failed step could not be recorded");
                    }
                }
                tracing::warn!(%tenant, %step, error = %reason, "provisioning step failed; retrying");
                Outcome::transient(format!("{step}: {reason}"))
            }
            // A failure for good fails the tenant, unless the lease is another worker's now.
            Err((step, e)) => self.fail_as(&tenant, step, &e, true).await,
        }
    }

    /// Runs every step not done yet. `known` is the latest state as stored; each write starts
    /// from it and returns the next, so the steps read nothing back from the store.
    ///
    /// Quick steps are carried out in memory and written together with the activation: one
    /// compare-and-set records them all, each with its own progress entry. A step that took at
    /// least `checkpoint_after` (a remote backend's database or token call) is written as soon
    /// as it ends, so that it shows while the next runs and a crash does not redo it. A crash
    /// before a step is written redoes it (every step is idempotent); a token issued and not
    /// yet stored is revoked by the retry's `issue_token`.
    async fn run_steps(
        &self,
        tenant: &TenantId,
        group: &str,
        mut known: Versioned<TenantRecord>,
    ) -> Result<(), (Step, ProvisionError)> {
        let lifecycle = &self.settings.lifecycle.on_tenant_create;
        let database = self.backend.database_name(tenant);
        let mut token: Option<SecretString> = None;
        // One connection for the steps that use the database (schema, seed): SQLite
        // checkpoints and removes the write-ahead log when a database's last connection
        // closes — once per provisioning, not once per step.
        let mut conn: Option<libsql::Connection> = None;
        // Whether the admin user is to be seeded, and whether this attempt's schema
        // transaction inserted it already.
        let seed_due = lifecycle.seed_data && known.state.admin_email.is_some();
        let mut seeded = false;
        // The steps ended and not written yet, and `known` with them applied: the record the
        // next step reads.
        let mut finished: Vec<FinishedStep> = Vec::new();
        let mut working = known.clone();
        for step in &Step::PREPARATION {
            let record = &working.state;
            // A token lives only in memory until it is stored: re-issue it unless stored.
            let redo_token =
                *step == Step::IssueToken && !machine::step_done(record, Step::StoreConnection);
            if machine::step_done(record, *step) && !redo_token {
                continue;
            }
            // Each step is a span of the tenant's trace (`provision.step`).
            let span = tracing::info_span!("provision.step", step = step.as_str(), %tenant);
            let result = async {
                let held = self
                    .hold_lease(tenant, &known, false)
                    .await
                    .map_err(|e| (*step, e))?;
                if held.revision != known.revision {
                    known = held;
                    working = machine::steps_finished(Some(&known), tenant, &finished)
                        .map_err(|e| (*step, ProvisionError::Transition(e)))?
                        .0;
                }
                let record = &working.state;
                let started = Instant::now();
                if !self.settings.step_delay.is_zero() {
                    tokio::time::sleep(self.settings.step_delay).await;
                }
                // What the step did (written with its end) and whether it was skipped.
                let (update, skipped): (Option<StepUpdate>, bool) = match *step {
                    Step::CreateDatabase => {
                        let info = if lifecycle.auto_create {
                            self.backend
                                .create_database(tenant, Some(group))
                                .await
                                .map_err(|e| (*step, e.into()))?
                        } else {
                            self.backend
                                .get_database(&database)
                                .await
                                .map_err(|e| (*step, e.into()))?
                                .ok_or_else(|| {
                                    (
                                        *step,
                                        ProvisionError::Permanent(format!(
                                            "autoCreate is off and database {database} does not exist"
                                        )),
                                    )
                                })?
                        };
                        let update: StepUpdate = Box::new(move |r: &mut TenantRecord| {
                            r.database = Some(info.name.clone());
                            r.group = Some(info.group.clone());
                        });
                        (Some(update), false)
                    }
                    Step::IssueToken => {
                        // Revoke any token an interrupted attempt issued but never stored.
                        self.backend
                            .rotate_tokens(&database)
                            .await
                            .map_err(|e| (*step, e.into()))?;
                        let issued = self
                            .backend
                            .issue_token(
                                &database,
                                TursoTokenScope::FullAccess,
                                self.settings.token_ttl,
                            )
                            .await
                            .map_err(|e| (*step, e.into()))?;
                        token = Some(issued.token);
                        (None, false)
                    }
                    Step::StoreConnection => {
                        let secret = token.clone().ok_or((
                            *step,
                            ProvisionError::Store("no token issued in this attempt".into()),
                        ))?;
                        let sealed = self.seal(tenant, &database, &secret, Some(group.to_owned()));
                        let update: StepUpdate = Box::new(move |r: &mut TenantRecord| {
                            r.connection = Some(sealed.clone())
                        });
                        (Some(update), false)
                    }
                    Step::SyncSchema if lifecycle.apply_group_schema => {
                        let conn = self
                            .step_connection(&mut conn, tenant, &database, record)
                            .await
                            .map_err(|e| (*step, e))?;
                        // The seed data goes into the schema's transaction when it is due: one
                        // commit (one WAL sync) for both; the seed step then only records it.
                        let seed = seed_due.then(|| seed_statement(record));
                        self.sync_schema(conn, seed.as_slice())
                            .await
                            .map_err(|e| (*step, e))?;
                        seeded = seed.is_some();
                        (None, false)
                    }
                    Step::Seed if seeded => (None, false),
                    Step::Seed if seed_due => {
                        let conn = self
                            .step_connection(&mut conn, tenant, &database, record)
                            .await
                            .map_err(|e| (*step, e))?;
                        self.seed(conn, record).await.map_err(|e| (*step, e))?;
                        (None, false)
                    }
                    _ => (None, true),
                };
                let took = started.elapsed();
                let done = FinishedStep {
                    step: *step,
                    skipped,
                    duration_ms: took.as_millis() as u64,
                    at: Timestamp::now(),
                    update,
                };
                working = machine::steps_finished(Some(&working), tenant, std::slice::from_ref(&done))
                    .map_err(|e| (*step, ProvisionError::Transition(e)))?
                    .0;
                finished.push(done);
                if took >= self.settings.checkpoint_after {
                    known = self
                        .write_steps(tenant, &known, &finished)
                        .await
                        .map_err(|e| (*step, e))?;
                    finished.clear();
                    working = known.clone();
                }
                Ok::<(), (Step, ProvisionError)>(())
            }
            .instrument(span)
            .await;
            if let Err((failed, error)) = result {
                // The steps that ended before this one are written first (a failure is rare,
                // and then what ran shows, and the retry does not redo it) — unless the lease
                // is someone else's now, whose record this attempt leaves alone.
                let lease_lost = matches!(
                    error,
                    ProvisionError::Transition(TransitionError::Busy { .. })
                );
                if !finished.is_empty()
                    && !lease_lost
                    && let Err(e) = self.write_steps(tenant, &known, &finished).await
                {
                    tracing::warn!(%tenant, error = %error_chain(&e), "the steps before a failed one could not be recorded");
                }
                return Err((failed, error));
            }
        }
        // `active`, then `hooks.tenant.created` (its headers carry the trace on).
        let span = tracing::info_span!("provision.activate", %tenant);
        let record = async {
            let started = Instant::now();
            let record = self
                .tenants
                .transition_steps_from(tenant.as_str(), &known, |cur| {
                    // Only under this worker's lease (see `write_steps`).
                    machine::lease_held(cur, tenant, &self.owner, &Timestamp::now())?;
                    // The steps not written yet, then `register`: one write.
                    let (record, steps) = machine::steps_finished(cur, tenant, &finished)?;
                    let ms = started.elapsed().as_millis() as u64;
                    let decision = machine::activate(Some(&record), tenant, ms, &Timestamp::now())?;
                    let Decision::Write { next, event } = decision else {
                        return Ok((Vec::new(), Decision::Unchanged));
                    };
                    let data = serde_json::to_value(next.result()).unwrap_or_default();
                    let key = format!("created@{}", next.requested_at);
                    Ok((
                        steps,
                        machine::with_hook(
                            Decision::Write { next, event },
                            Self::hook("hooks.tenant.created", "tenant.created", key, data),
                        ),
                    ))
                })
                .await
                .map_err(|e| (Step::Register, ProvisionError::from(e)))?;
            // Active, its hook pending in the record: the message's redelivery publishes it.
            crashpoint::reached("create.hook_pending");
            self.flush_hook(tenant, &record)
                .await
                .map_err(|e| (Step::Register, e))?;
            Ok::<_, (Step, ProvisionError)>(record)
        }
        .instrument(span)
        .await?;
        tracing::info!(%tenant, ms = record.as_ref().and_then(|r| r.state.total_duration_ms), "tenant active");
        crashpoint::reached("create.activated");
        Ok(())
    }

    /// Writes `finished` (steps ended in memory) over `known` in one compare-and-set, each
    /// with its progress entry. Returns the record as written.
    async fn write_steps(
        &self,
        tenant: &TenantId,
        known: &Versioned<TenantRecord>,
        finished: &[FinishedStep],
    ) -> Result<Versioned<TenantRecord>, ProvisionError> {
        latest(
            self.tenants
                .transition_steps_from(tenant.as_str(), known, |cur| {
                    // Only under this worker's lease: after a lost race the latest record may be
                    // another worker's, who took the lease over and revoked this one's token.
                    machine::lease_held(cur, tenant, &self.owner, &Timestamp::now())?;
                    let (record, mut steps) = machine::steps_finished(cur, tenant, finished)?;
                    let Some(event) = steps.pop() else {
                        return Ok((Vec::new(), Decision::Unchanged));
                    };
                    Ok((
                        steps,
                        Decision::Write {
                            next: record.state,
                            event,
                        },
                    ))
                })
                .await
                .map_err(ProvisionError::from),
        )
    }

    /// Takes the provisioning lease, or extends ours when less than half of it is left (a
    /// write per renewal, not per step). Returns the record as written (or `record` unchanged).
    /// Without `take_over` (between steps) only a lease still ours is extended: one another
    /// worker took meanwhile — even one run out since — is refused ([`machine::renew`]), as
    /// that worker may have revoked the token this one holds.
    async fn hold_lease(
        &self,
        tenant: &TenantId,
        record: &Versioned<TenantRecord>,
        take_over: bool,
    ) -> Result<Versioned<TenantRecord>, ProvisionError> {
        let half = chrono::Duration::from_std(self.settings.lease / 2).unwrap_or_default();
        let fresh = record.state.lease.as_ref().is_some_and(|lease| {
            lease.owner == self.owner && lease.until.instant() - chrono::Utc::now() > half
        });
        if fresh {
            return Ok(record.clone());
        }
        let until = self.lease_until();
        latest(
            self.transition_from(tenant, record, |cur| {
                let now = Timestamp::now();
                if take_over {
                    machine::claim(cur, tenant, &self.owner, until.clone(), &now)
                } else {
                    machine::renew(cur, tenant, &self.owner, until.clone(), &now)
                }
            })
            .await,
        )
    }

    /// When a lease taken now ends.
    fn lease_until(&self) -> Timestamp {
        Timestamp::from(
            chrono::Utc::now()
                + chrono::Duration::from_std(self.settings.lease).unwrap_or_default(),
        )
    }

    fn seal(
        &self,
        tenant: &TenantId,
        database: &DatabaseName,
        token: &SecretString,
        group: Option<String>,
    ) -> StoredConnectionConfig {
        let plain = TenantConnectionConfig {
            url: self.backend.connection_url(database),
            auth_token: Some(token.expose_secret().to_owned()),
            group,
        };
        StoredConnectionConfig::seal(&plain, tenant, &self.keys)
    }

    /// The provisioning's connection, opened with the tenant's stored token on first use.
    async fn step_connection<'c>(
        &self,
        conn: &'c mut Option<libsql::Connection>,
        tenant: &TenantId,
        database: &DatabaseName,
        record: &TenantRecord,
    ) -> Result<&'c libsql::Connection, ProvisionError> {
        if conn.is_none() {
            *conn = Some(self.connect(tenant, database, record).await?);
        }
        Ok(conn.as_ref().expect("just opened"))
    }

    /// A connection with the tenant's stored token.
    async fn connect(
        &self,
        tenant: &TenantId,
        database: &DatabaseName,
        record: &TenantRecord,
    ) -> Result<libsql::Connection, ProvisionError> {
        let sealed = record.connection.as_ref().ok_or_else(|| {
            ProvisionError::Store(format!("tenant {tenant} has no stored connection"))
        })?;
        let token = sealed
            .auth_token(tenant, &self.keys)?
            .ok_or(SecretError::Malformed)?;
        let db = self.backend.open(database, &token).await?;
        Ok(db.connect().await?)
    }

    /// The base system schema, through the schema engine (a no-op when it is there), and
    /// `after` in the same transaction.
    async fn sync_schema(
        &self,
        conn: &libsql::Connection,
        after: &[fleet_schema::BoundStatement],
    ) -> Result<(), ProvisionError> {
        // A new database (nothing in its catalog, as every tenant's is on its first attempt)
        // gets the plan made once for an empty database; one an earlier attempt touched is
        // introspected and planned.
        let planned = if fleet_schema::is_empty(conn)
            .await
            .map_err(fleet_schema::SchemaError::from)?
        {
            fleet_schema::system::base_plan_from_empty()
        } else {
            &fleet_schema::plan_database_to(
                conn,
                fleet_schema::system::base_objects(),
                fleet_schema::system::base_schema(),
                fleet_schema::PlanOptions::default(),
                &fleet_schema::Owner::Platform,
            )
            .await?
        };
        fleet_schema::apply_plan_with(conn, &planned.plan, after)
            .await
            .map_err(fleet_schema::SchemaError::from)?;
        Ok(())
    }

    /// The admin user (kept when it is there), on its own.
    async fn seed(
        &self,
        conn: &libsql::Connection,
        record: &TenantRecord,
    ) -> Result<(), ProvisionError> {
        let seed = seed_statement(record);
        conn.execute(&seed.sql, seed.params).await.map_err(|e| {
            ProvisionError::Backend(TenantDbError::Database {
                what: "seeding the admin user".into(),
                source: e,
            })
        })?;
        Ok(())
    }

    /// Carries out one parsed command.
    async fn execute(&self, command: TenantCommand, delivery: &Delivery) -> Outcome {
        let result = match command {
            TenantCommand::Create(command) => {
                return self.created(command, delivery.published_at.as_ref()).await;
            }
            TenantCommand::Delete(tenant) => self.delete_requested(&tenant).await,
            TenantCommand::DeletionDue(tenant) => self.deletion_due(&tenant).await,
            TenantCommand::Suspend { tenant, reason } => self.suspend(&tenant, reason).await,
            TenantCommand::Resume(tenant) => self.resume(&tenant).await,
            TenantCommand::ChangePlan { tenant, plan } => self.change_plan(&tenant, plan).await,
            TenantCommand::OverrideQuotas { tenant, quotas } => {
                self.override_quotas(&tenant, &quotas).await
            }
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(ProvisionError::Transition(e)) => Outcome::poison(&e),
            Err(e) => self.outcome(e),
        }
    }

    /// The tenant's provisioning was ended by another worker (active, failed, deleted) while
    /// this delivery ran: its outcome stands, and this delivery is done once the hook that
    /// worker decided is out — it may have died between its write and the publish, and this
    /// ack would otherwise leave the hook for the tenant's next command. Transient when the
    /// hook cannot be published now.
    async fn ended_elsewhere(&self, tenant: &TenantId) -> Outcome {
        let flushed = async {
            let record = self.tenants.get::<TransitionError>(tenant.as_str()).await?;
            self.flush_hook(tenant, &record).await
        };
        match flushed.await {
            Ok(()) => Outcome::Done,
            Err(e) => self.outcome(e),
        }
    }

    async fn existing(&self, tenant: &TenantId) -> Result<Versioned<TenantRecord>, ProvisionError> {
        let record = self.tenants.get::<TransitionError>(tenant.as_str()).await?;
        self.flush_hook(tenant, &record).await?;
        self.tenants
            .get::<TransitionError>(tenant.as_str())
            .await?
            .ok_or_else(|| TransitionError::Unknown(tenant.to_string()).into())
    }

    fn database_of(&self, record: &TenantRecord) -> DatabaseName {
        record
            .database
            .as_deref()
            .and_then(|d| DatabaseName::parse(d).ok())
            .unwrap_or_else(|| self.backend.database_name(&record.tenant_id))
    }

    async fn suspend(
        &self,
        tenant: &TenantId,
        reason: Option<String>,
    ) -> Result<(), ProvisionError> {
        let current = self.existing(tenant).await?;
        if current.state.status() == TenantProvisioningStatus::Suspended {
            // Already suspended: only the reason may change (an admin's over the auditor's).
            self.transition(tenant, |cur| {
                let connection = cur.and_then(|c| c.state.connection.clone());
                machine::suspend(
                    cur,
                    tenant,
                    connection,
                    reason.as_deref(),
                    &Timestamp::now(),
                )
            })
            .await?;
            return Ok(());
        }
        machine::suspend(Some(&current), tenant, None, None, &Timestamp::now())?; // refuse early when illegal
        let database = self.database_of(&current.state);
        let policy = &self.settings.lifecycle.on_tenant_suspend;
        let mut connection = current.state.connection.clone();
        if policy.revoke_tokens {
            self.backend.rotate_tokens(&database).await?;
            connection = None;
        }
        if policy.read_only {
            let issued = self
                .backend
                .issue_token(
                    &database,
                    TursoTokenScope::ReadOnly,
                    self.settings.token_ttl,
                )
                .await?;
            connection = Some(self.seal(
                tenant,
                &database,
                &issued.token,
                current.state.group.clone(),
            ));
        }
        let data = json!({"tenantId": tenant, "status": "suspended", "reason": reason, "readOnly": policy.read_only});
        let record = self
            .transition(tenant, |cur| {
                let key = format!("suspended@{}", cur.map_or(0, |c| c.revision));
                Ok(machine::with_hook(
                    machine::suspend(
                        cur,
                        tenant,
                        connection.clone(),
                        reason.as_deref(),
                        &Timestamp::now(),
                    )?,
                    Self::hook(
                        "hooks.tenant.suspended",
                        "tenant.suspended",
                        key,
                        data.clone(),
                    ),
                ))
            })
            .await?;
        self.flush_hook(tenant, &record).await
    }

    async fn resume(&self, tenant: &TenantId) -> Result<(), ProvisionError> {
        let current = self.existing(tenant).await?;
        if current.state.status() == TenantProvisioningStatus::Active {
            return Ok(());
        }
        let placeholder = StoredConnectionConfig {
            url: String::new(),
            group: None,
            sealed_auth_token: None,
        };
        machine::resume(Some(&current), tenant, placeholder, &Timestamp::now())?;
        let database = self.database_of(&current.state);
        self.backend.rotate_tokens(&database).await?;
        let issued = self
            .backend
            .issue_token(
                &database,
                TursoTokenScope::FullAccess,
                self.settings.token_ttl,
            )
            .await?;
        let sealed = self.seal(
            tenant,
            &database,
            &issued.token,
            current.state.group.clone(),
        );
        let data = json!({"tenantId": tenant, "status": "active"});
        let record = self
            .transition(tenant, |cur| {
                let key = format!("resumed@{}", cur.map_or(0, |c| c.revision));
                Ok(machine::with_hook(
                    machine::resume(cur, tenant, sealed.clone(), &Timestamp::now())?,
                    Self::hook("hooks.tenant.resumed", "tenant.resumed", key, data.clone()),
                ))
            })
            .await?;
        self.flush_hook(tenant, &record).await
    }

    async fn change_plan(
        &self,
        tenant: &TenantId,
        plan: fleet_protocol::TenantPlan,
    ) -> Result<(), ProvisionError> {
        self.existing(tenant).await?;
        let data =
            json!({"tenantId": tenant, "plan": plan, "quotas": self.settings.plans.quotas(plan)});
        let record = self
            .transition(tenant, |cur| {
                let key = format!("plan_changed@{}", cur.map_or(0, |c| c.revision));
                Ok(machine::with_hook(
                    machine::change_plan(
                        cur,
                        tenant,
                        plan,
                        &self.settings.plans,
                        &Timestamp::now(),
                    )?,
                    Self::hook(
                        "hooks.tenant.plan_changed",
                        "tenant.plan_changed",
                        key,
                        data.clone(),
                    ),
                ))
            })
            .await?;
        self.flush_hook(tenant, &record).await?;
        self.reaudit(tenant, record.as_ref()).await
    }

    /// `tenant.quota_changed`: the tenant's quotas with the ones set on top of its plan's.
    async fn override_quotas(
        &self,
        tenant: &TenantId,
        quotas: &fleet_protocol::TenantQuota,
    ) -> Result<(), ProvisionError> {
        self.existing(tenant).await?;
        let record = self
            .transition(tenant, |cur| {
                machine::override_quotas(
                    cur,
                    tenant,
                    quotas,
                    &self.settings.plans,
                    &Timestamp::now(),
                )
            })
            .await?;
        self.reaudit(tenant, record.as_ref()).await
    }

    /// Asks the quota auditor to audit `tenant` now: its quotas changed (a plan change, an
    /// override). One request per record revision.
    async fn reaudit(
        &self,
        tenant: &TenantId,
        record: Option<&Versioned<TenantRecord>>,
    ) -> Result<(), ProvisionError> {
        let revision = record.map_or(0, |r| r.revision);
        let job = fleet_protocol::quota::QuotaAuditJob {
            tenant_id: tenant.clone(),
            bucket: chrono::Utc::now().timestamp().max(0) as u64,
        };
        self.scheduler
            .publish_now(
                &format!("quota.audit.{tenant}"),
                &format!("quota-audit:quotas-changed:{tenant}:{revision}"),
                &job,
            )
            .await
            .map_err(|e| ProvisionError::Schedule(error_chain(&e)))?;
        Ok(())
    }

    /// `tenant.deleted`: the tenant becomes `destroying`, due now (`immediate`) or after the
    /// grace period; an immediate deletion is carried out at once, a later one scheduled.
    async fn delete_requested(&self, tenant: &TenantId) -> Result<(), ProvisionError> {
        let policy = &self.settings.lifecycle.on_tenant_delete;
        let mut current = self.existing(tenant).await?;
        if current.state.is_deleted() {
            return Ok(());
        }
        if current.state.status() != TenantProvisioningStatus::Destroying {
            let grace = if policy.immediate {
                0
            } else {
                policy.grace_period_hours as i64
            };
            let after = Timestamp::from(chrono::Utc::now() + chrono::Duration::hours(grace));
            current = self
                .transition(tenant, |cur| {
                    machine::destroy(cur, tenant, after.clone(), &Timestamp::now())
                })
                .await?
                .ok_or_else(|| ProvisionError::Store("record vanished".into()))?;
        }
        if policy.immediate {
            self.carry_out_deletion(tenant, &current.state).await
        } else {
            self.schedule_deletion(tenant, &current.state).await
        }
    }

    /// `tenant.deletion_due` (fired by the schedule): deletes when due, schedules again when
    /// fired early (clock skew), ignores a tenant no longer waiting for deletion.
    async fn deletion_due(&self, tenant: &TenantId) -> Result<(), ProvisionError> {
        let current = self.existing(tenant).await?;
        if current.state.delete_after().is_none() {
            tracing::info!(%tenant, status = %machine::status_name(&current.state), "deletion schedule fired for a tenant not waiting for deletion; nothing to do");
            return Ok(());
        }
        let early = current
            .state
            .delete_after()
            .is_some_and(|after| after.instant() > chrono::Utc::now());
        if early {
            return self.schedule_deletion(tenant, &current.state).await;
        }
        self.carry_out_deletion(tenant, &current.state).await
    }

    /// Publishes the schedule that fires `tenant.deletion_due` at the record's `deleteAfter`
    /// (one per tenant: a new one replaces it; the message id makes a retry a no-op).
    async fn schedule_deletion(
        &self,
        tenant: &TenantId,
        record: &TenantRecord,
    ) -> Result<(), ProvisionError> {
        let due = record
            .delete_after()
            .map_or_else(chrono::Utc::now, |after| after.instant());
        // One schedule per tenant subject: publishing again replaces it, so the id needs no
        // stability — and must not have it: a re-schedule inside the duplicate window (after an
        // early or forged firing) under the first id would be dropped, losing the deletion.
        let id = format!(
            "deletion:{tenant}:{}:{}",
            due.timestamp(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        self.scheduler
            .schedule_at(
                &format!("tenant.schedule.{tenant}"),
                "tenant.deletion_due",
                due,
                &id,
                &json!({"tenantId": tenant}),
            )
            .await
            .map_err(|e| ProvisionError::Schedule(error_chain(&e)))?;
        tracing::info!(%tenant, due = %due.to_rfc3339(), "deletion scheduled");
        Ok(())
    }

    /// Backs up (per policy) and deletes the tenant's database, then records it with its hook.
    async fn carry_out_deletion(
        &self,
        tenant: &TenantId,
        record: &TenantRecord,
    ) -> Result<(), ProvisionError> {
        let policy = &self.settings.lifecycle.on_tenant_delete;
        let database = self.database_of(record);
        let backup = if policy.create_backup && record.backup().is_none() {
            self.backup(tenant, &database, record).await?
        } else {
            None
        };
        self.backend.delete_database(&database).await?;
        crashpoint::reached("delete.database_deleted");
        let data = json!({"tenantId": tenant, "status": "deleted", "backup": backup});
        let record = self
            .transition(tenant, |cur| {
                let key = format!("deleted@{}", cur.map_or(0, |c| c.revision));
                Ok(machine::with_hook(
                    machine::deleted(cur, tenant, backup.clone(), &Timestamp::now())?,
                    Self::hook("hooks.tenant.deleted", "tenant.deleted", key, data.clone()),
                ))
            })
            .await?;
        self.flush_hook(tenant, &record).await
    }

    /// A `tenant.created` that ran out of deliveries: fails its tenant (with
    /// `hooks.tenant.failed`) unless it is no longer provisioning. A lease held by another
    /// worker is waited out once: renewed meanwhile, its holder is alive and will finish the
    /// tenant; expired, the holder is gone and nobody else will.
    async fn creation_abandoned(&self, command: TenantCreated, letter: &DeadLetter) {
        let tenant = command.tenant_id;
        let held_elsewhere = |record: &TenantRecord| {
            record.lease.as_ref().and_then(|lease| {
                let left = (lease.until.instant() - chrono::Utc::now()).to_std().ok()?;
                (lease.owner != self.owner && !left.is_zero()).then_some(left)
            })
        };
        let read = async || {
            self.tenants
                .get::<TransitionError>(tenant.as_str())
                .await
                .ok()
                .flatten()
                .map(|v| v.state)
        };
        let Some(mut record) = read().await else {
            return;
        };
        if let Some(left) = held_elsewhere(&record) {
            tokio::time::sleep(left.min(self.settings.lease) + Duration::from_millis(200)).await;
            let Some(again) = read().await else { return };
            if held_elsewhere(&again).is_some() {
                return;
            }
            record = again;
        }
        if record.status() != TenantProvisioningStatus::Provisioning {
            return;
        }
        let record = &record;
        let step = machine::next_step(record);
        let error = ProvisionError::Permanent(letter.error.clone());
        self.fail(&tenant, step, &error).await;
    }

    /// A copy of the database kept before deletion, for embedded backends; Turso databases are
    /// backed up by Turso's point-in-time recovery.
    ///
    /// Crash-consistent: `VACUUM INTO` a `.partial` file (a leftover of a crashed attempt is
    /// removed first), sync it, rename it to its final name, sync the directory. The name
    /// derives from the deletion (`<database>-<deleteAfter>.db`), so a retry after a crash
    /// finds a finished backup and keeps it instead of taking a second one.
    async fn backup(
        &self,
        tenant: &TenantId,
        database: &DatabaseName,
        record: &TenantRecord,
    ) -> Result<Option<String>, ProvisionError> {
        if !self.backend.connection_url(database).starts_with("file:") {
            tracing::warn!(%tenant, "backup before deletion relies on the provider's point-in-time recovery");
            return Ok(None);
        }
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| TenantDbError::Io { what, source }
        };
        let dir = self.settings.backup_dir.clone();
        let due = record
            .delete_after()
            .map_or_else(chrono::Utc::now, |at| at.instant());
        let file = dir.join(format!("{database}-{}.db", due.format("%Y%m%dT%H%M%SZ")));
        let path = file.display().to_string();
        if tokio::fs::try_exists(&file)
            .await
            .map_err(io("looking for the backup"))?
        {
            return Ok(Some(path));
        }
        if self.backend.get_database(database).await?.is_none() {
            return Ok(None);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("creating the backup dir"))?;
        let partial = file.with_extension("db.partial");
        match tokio::fs::remove_file(&partial).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing a partial backup")(e).into()),
        }
        let issued = self
            .backend
            .issue_token(
                database,
                TursoTokenScope::FullAccess,
                Some(Duration::from_secs(600)),
            )
            .await?;
        let conn = self
            .backend
            .open(database, &issued.token)
            .await?
            .connect()
            .await?;
        // The path is built from a validated database name and a timestamp, and quoted.
        conn.execute(
            &format!(
                "VACUUM INTO {}",
                fleet_schema::sql::quote_text(&partial.display().to_string())
            ),
            (),
        )
        .await
        .map_err(|e| TenantDbError::Database {
            what: "backing up".into(),
            source: e,
        })?;
        crashpoint::reached("delete.backup_written");
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&partial)?.sync_all()?;
            std::fs::rename(&partial, &file)?;
            crashpoint::reached("delete.backup_renamed");
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| ProvisionError::Store(format!("backup task: {e}")))?
        .map_err(io("finishing the backup"))?;
        Ok(Some(path))
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "provisioner".to_owned())
}

#[async_trait]
impl Worker for Provisioner {
    const NAME: &'static str = "provisioner";
    const CONSUMER: &'static str = fleet_runtime::topology::names::PROVISIONER;

    async fn build(context: &WorkerContext) -> Result<Self, BuildError> {
        let config = &context.config;
        Ok(Self::new(
            fleet_control::tenants(&context.runtime).await?,
            fleet_tenantdb::backend_from_config(config)?,
            Arc::new(fleet_tenantdb::key_ring_from_config(config)?),
            context.hooks.clone(),
            context.scheduler(),
            ProvisionerSettings::from_config(config)?,
        ))
    }
}

#[async_trait]
impl Handler for Provisioner {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        match TenantCommand::parse(&delivery) {
            Ok(command) => self.execute(command, &delivery).await,
            Err(poison) => poison,
        }
    }

    async fn dead_lettered(&self, delivery: &Delivery, letter: &DeadLetter) {
        if letter.reason == "max_deliver"
            && let Ok(TenantCommand::Create(command)) = TenantCommand::parse(delivery)
        {
            self.creation_abandoned(command, letter).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(subject: &str, payload: serde_json::Value) -> Result<TenantCommand, Outcome> {
        TenantCommand::parse(&Delivery::new(subject, payload.to_string()))
    }

    fn refusal(result: Result<TenantCommand, Outcome>) -> String {
        match result {
            Err(Outcome::Poison { reason }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn every_subject_parses_into_its_command_once() {
        let acme = TenantId::parse("acme").unwrap();
        assert!(matches!(
            parse("tenant.created", json!({"tenantId": "acme", "orgId": "o"})),
            Ok(TenantCommand::Create(c)) if c.tenant_id == acme
        ));
        assert_eq!(
            parse(
                "tenant.suspended",
                json!({"tenantId": "acme", "reason": "billing"})
            )
            .unwrap(),
            TenantCommand::Suspend {
                tenant: acme.clone(),
                reason: Some("billing".into())
            }
        );
        assert_eq!(
            parse("tenant.resumed", json!({"tenantId": "acme"})).unwrap(),
            TenantCommand::Resume(acme.clone())
        );
        assert_eq!(
            parse("tenant.deleted", json!({"tenantId": "acme"})).unwrap(),
            TenantCommand::Delete(acme.clone())
        );
        assert_eq!(
            parse("tenant.deletion_due", json!({"tenantId": "acme"})).unwrap(),
            TenantCommand::DeletionDue(acme.clone())
        );
        assert_eq!(
            parse(
                "tenant.plan_changed",
                json!({"tenantId": "acme", "plan": "pro"})
            )
            .unwrap(),
            TenantCommand::ChangePlan {
                tenant: acme,
                plan: fleet_protocol::TenantPlan::Pro
            }
        );
    }

    #[test]
    fn bad_commands_are_poison_with_the_reason() {
        assert!(
            refusal(parse("tenant.plan_changed", json!({"tenantId": "acme"})))
                .contains("needs `plan`")
        );
        assert!(
            refusal(parse("tenant.renamed", json!({"tenantId": "acme"})))
                .contains("tenant.renamed")
        );
        assert!(refusal(parse("tenant.deleted", json!({"tenantId": "../x"}))).contains("tenantId"));
        assert!(
            refusal(TenantCommand::parse(&Delivery::new("tenant.created", "{")))
                .contains("not JSON")
        );
    }

    #[test]
    fn a_grace_period_beyond_what_can_be_scheduled_is_refused() {
        let mut config = fleet_config::Config::default();
        config
            .provisioner
            .lifecycle
            .on_tenant_delete
            .grace_period_hours = 72;
        ProvisionerSettings::from_config(&config).unwrap();
        config
            .provisioner
            .lifecycle
            .on_tenant_delete
            .grace_period_hours = 24 * 7;
        let err = ProvisionerSettings::from_config(&config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gracePeriodHours: 168 hours"), "{err}");
        config.provisioner.lifecycle.on_tenant_delete.immediate = true;
        ProvisionerSettings::from_config(&config).unwrap();
    }
}
