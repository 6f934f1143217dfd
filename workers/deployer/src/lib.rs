//! The deployer: a DeployBundle to one tenant or the whole fleet, in waves.
//!
//! `deploy.requested` is validated first — every issue of the bundle, its checksum, and the
//! schema its objects map to — and a bad bundle is rejected before any tenant is touched. Then
//! the deployment record (KV `fleet_deployments`) is written with its waves, the bundle is stored
//! beside it, and the first wave fans out as one job per tenant on
//! `deploy.tenant.<deploymentId>` (message id `<deployment>:<tenant>`), so every deployer replica
//! shares the work and a crash loses nothing.
//!
//! A tenant's job: `validating` (tenant active, quotas) → `diffing` (live schema vs bundle + base
//! system objects) → `migrating` + `registering` (the DDL, the bundle's metadata in
//! `sys_metadata` and the deployment in `sys_deployment`, all in one transaction: a tenant is
//! never migrated but unregistered) → `ready`, or `failed` with the error (the transaction rolled
//! back, the tenant is as before). A tenant already at the bundle's version is skipped.
//!
//! Recording a result is a compare-and-set on the deployment; the write that completes a wave
//! starts the next (or halts the rollout when the failure ratio passes its limit, or finishes
//! it) — re-derived on every delivery, so a crash between the two is repaired by the next job.
//! `hooks.deploy.completed` / `hooks.deploy.failed` end a deployment, and
//! `hooks.deploy.tenant_failed` reports each failed tenant.

/// The deployment record and its rollout machine (in `fleet-rollouts`, shared with `fleetctl`).
pub use fleet_rollouts as rollout;

use std::sync::Arc;
use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use async_trait::async_trait;
use fleet_protocol::{
    DeployBundle, DeployRequest, DeployStatus, DeploymentId, ObjectDefinition,
    QuotaEnforcementResult, TenantDeployJob, TenantId, TenantProvisioningStatus, Timestamp,
};
use fleet_runtime::worker::{BuildError, Worker, WorkerContext};
use fleet_runtime::{
    Delivery, Handler, Hook, Hooks, Outcome, Publisher, StateStore, Subjects, Versioned,
    error_chain,
};
use fleet_schema::{BoundStatement, PlanError, PlanOptions, SchemaError};
use fleet_tenantdb::{KeyRing, TenantDatabases};
use fleet_tenants::machine::TenantRecord;
use libsql::Value as SqlValue;
use serde_json::json;

use crate::rollout::{Deployment, RolloutError, RolloutStatus, TenantOutcome};

/// The deployer's handler.
pub struct Deployer {
    deployments: StateStore<Deployment>,
    bundles: kv::Store,
    tenants: StateStore<TenantRecord>,
    backend: Arc<dyn TenantDatabases>,
    keys: Arc<KeyRing>,
    hooks: Hooks,
    publisher: Publisher,
    subjects: Subjects,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

/// A command of the deployer, parsed once from a delivery's subject and payload.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployCommand {
    /// `deploy.requested`: a bundle to roll out.
    Request(Box<DeployRequest>),
    /// `deploy.rollback`: undo a finished deployment.
    Rollback(DeploymentId),
    /// `deploy.control.<id>`: resume or cancel (the subject names the same deployment).
    Control(fleet_protocol::DeployControl),
    /// `deploy.tenant.<id>`: one tenant's job (the subject names its deployment).
    TenantJob(TenantDeployJob),
}

/// A delivery that is no deployer command: the poison outcome, and the deployment a bad
/// `deploy.requested` names (so its rejection can be recorded).
#[derive(Debug, Clone, PartialEq)]
pub struct Unparsed {
    /// Poison, with every issue.
    pub outcome: Outcome,
    /// The deployment the payload names, when it names a valid one.
    pub deployment: Option<DeploymentId>,
}

impl DeployCommand {
    /// Parses a delivery (subject, then its payload).
    pub fn parse(delivery: &Delivery) -> Result<Self, Unparsed> {
        let poison = |outcome: Outcome| Unparsed {
            outcome,
            deployment: None,
        };
        let mismatch = |id: &DeploymentId| {
            poison(Outcome::Poison {
                reason: format!(
                    "{} carries a command for deployment {id}: subject and payload disagree",
                    delivery.subject
                ),
            })
        };
        let subject = delivery.subject.as_str();
        if subject == "deploy.requested" {
            return delivery
                .decode::<DeployRequest>()
                .map(|request| Self::Request(Box::new(request)))
                .map_err(|outcome| Unparsed {
                    outcome,
                    deployment: serde_json::from_slice::<serde_json::Value>(&delivery.payload)
                        .ok()
                        .and_then(|raw| {
                            raw.get("deploymentId")?
                                .as_str()
                                .and_then(|id| DeploymentId::parse(id).ok())
                        }),
                });
        }
        if subject == "deploy.rollback" {
            return delivery
                .decode::<fleet_protocol::DeployRollbackRequest>()
                .map(|request| Self::Rollback(request.deployment_id))
                .map_err(poison);
        }
        if let Some(named) = subject.strip_prefix("deploy.control.") {
            let control = delivery
                .decode::<fleet_protocol::DeployControl>()
                .map_err(poison)?;
            if named != control.deployment_id.as_str() {
                return Err(mismatch(&control.deployment_id));
            }
            return Ok(Self::Control(control));
        }
        if let Some(named) = subject.strip_prefix("deploy.tenant.") {
            let job = delivery.decode::<TenantDeployJob>().map_err(poison)?;
            if named != job.deployment_id.as_str() {
                return Err(mismatch(&job.deployment_id));
            }
            return Ok(Self::TenantJob(job));
        }
        Err(poison(Outcome::Poison {
            reason: format!("the deployer handles no {subject:?} commands"),
        }))
    }
}

/// Why the deployer could not read its inputs or publish what a deployment needs: all
/// transient (the stores or the server are unavailable) — the job is retried.
#[derive(Debug, thiserror::Error)]
pub enum DeployerError {
    /// A job or hook could not be published.
    #[error("publishing to {subject}")]
    Publish {
        /// The subject.
        subject: String,
        /// The server's refusal or the lost connection.
        #[source]
        source: fleet_runtime::publish::PublishError,
    },
    /// The tenants could not be listed or read.
    #[error("reading the tenants")]
    Tenants(#[source] fleet_runtime::StateError<std::convert::Infallible>),
}

/// Why one tenant's deploy or rollback did not happen: recorded as that tenant's failure, or —
/// when [`TenantError::is_transient`] — retried by the job loop's retry policy.
#[derive(Debug, thiserror::Error)]
enum TenantError {
    /// No such tenant in the control plane.
    #[error("unknown tenant {0}")]
    Unknown(TenantId),
    /// Only active tenants are deployed to.
    #[error("tenant {0} is not active")]
    NotActive(TenantId),
    /// The record has no (usable) connection.
    #[error("tenant {0} has no stored connection")]
    NoConnection(TenantId),
    /// The stored token could not be unsealed.
    #[error("the stored connection of tenant {tenant}")]
    Token {
        /// The tenant.
        tenant: TenantId,
        /// Why the sealed token would not open (wrong key, another tenant's, tampered).
        #[source]
        source: fleet_tenantdb::SecretError,
    },
    /// The tenant's database could not be opened or connected to.
    #[error("opening the database of tenant {tenant}")]
    Open {
        /// The tenant.
        tenant: TenantId,
        /// The backend's error (transient when it says so).
        #[source]
        source: fleet_tenantdb::TenantDbError,
    },
    /// The tenants' store could not be read.
    #[error("reading tenant {tenant}")]
    Store {
        /// The tenant.
        tenant: TenantId,
        /// The KV store's error.
        #[source]
        source: fleet_runtime::StateError<std::convert::Infallible>,
    },
    /// The stored bundle's objects are not valid (it was validated when requested).
    #[error("the bundle's objects")]
    Bundle(#[source] fleet_protocol::validate::Rejected),
    /// A quota of the tenant's plan would be exceeded.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// The change cannot be planned for this tenant (destructive without permission,
    /// conflicting with its data or objects, an invalid desired schema).
    #[error("planning the change")]
    Refused(#[source] SchemaError),
    /// Planning could not read the tenant's database (transient).
    #[error("reading the tenant's schema")]
    Introspect(#[source] SchemaError),
    /// The migration failed and was rolled back: the tenant is as before.
    #[error("migrating")]
    Apply(#[source] fleet_schema::ApplyError),
    /// A query of the fleet's registry tables failed.
    #[error("querying {what}")]
    Query {
        /// The statement or what it reads.
        what: String,
        /// SQLite's error.
        #[source]
        source: libsql::Error,
        /// Whether retrying may succeed (reading rows, not preparing the statement).
        transient: bool,
    },
    /// The stored rollback plan does not parse.
    #[error("the stored rollback plan")]
    StoredPlan(#[source] serde_json::Error),
    /// The deployment dropped data, so it has no rollback plan.
    #[error("the deployment's plan was not reversible (it dropped data)")]
    NotReversible,
}

impl TenantError {
    /// Whether retrying later may succeed (the store, the backend or the database is
    /// unavailable); everything else is this tenant's failure.
    fn is_transient(&self) -> bool {
        match self {
            Self::Open { source, .. } => source.is_transient(),
            Self::Store { .. } | Self::Introspect(_) => true,
            Self::Query { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Publishes the jobs still open: during a rollout, the current wave's tenants without a result;
/// during a rollback, the migrated tenants not rolled back yet. Message ids derive from the
/// deployment and tenant, so a repeat within the duplicate window is dropped and a later one
/// finds the tenant recorded.
pub async fn publish_wave(
    publisher: &Publisher,
    subjects: &Subjects,
    d: &Deployment,
) -> Result<(), DeployerError> {
    let rollback = d.status == RolloutStatus::RollingBack;
    let open: Vec<TenantId> = if rollback {
        d.migrated()
            .into_iter()
            .filter(|t| !d.rollbacks.contains_key(t))
            .collect()
    } else {
        let wave = d
            .waves
            .get(d.current_wave)
            .map(Vec::as_slice)
            .unwrap_or_default();
        wave.iter()
            .filter(|t| !d.results.contains_key(*t))
            .cloned()
            .collect()
    };
    let subject = subjects.full(&format!("deploy.tenant.{}", d.id));
    let suffix = match (rollback, d.resumes) {
        (true, _) => ":rollback".to_owned(),
        (false, 0) => String::new(),
        (false, n) => format!(":resume-{n}"),
    };
    for tenant in open {
        let message_id = format!("{}:{tenant}{suffix}", d.id);
        let job = TenantDeployJob {
            deployment_id: d.id.clone(),
            tenant_id: tenant,
            wave: d.current_wave as u32,
            rollback,
        };
        publisher
            .publish_json(&subject, &message_id, &job, HeaderMap::new())
            .await
            .map_err(|source| DeployerError::Publish {
                subject: subject.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The KV key of a deployment's bundle.
pub fn bundle_key(id: &DeploymentId) -> String {
    format!("bundle.{id}")
}

#[async_trait]
impl Worker for Deployer {
    const NAME: &'static str = "deployer";
    const CONSUMER: &'static str = fleet_runtime::topology::names::DEPLOYER;

    async fn build(context: &WorkerContext) -> Result<Self, BuildError> {
        let runtime = &context.runtime;
        Ok(Self {
            deployments: fleet_control::deployments(runtime).await?,
            bundles: runtime
                .bucket(fleet_runtime::topology::names::DEPLOYMENTS)
                .await?,
            tenants: fleet_control::tenants(runtime).await?,
            backend: fleet_tenantdb::backend_from_config(&context.config)?,
            keys: Arc::new(fleet_tenantdb::key_ring_from_config(&context.config)?),
            hooks: context.hooks.clone(),
            publisher: runtime.publisher.clone(),
            subjects: runtime.topology.subjects(),
        })
    }
}

impl Deployer {
    /// A request that could not be parsed: poison, after its rejection is recorded when it names
    /// its deployment (retried until the record and its hook are written).
    async fn unparsed(&self, unparsed: Unparsed) -> Outcome {
        if let (Some(id), Outcome::Poison { reason }) = (&unparsed.deployment, &unparsed.outcome)
            && let outcome @ Outcome::Transient { .. } = self.reject(id, "?", reason).await
        {
            return outcome;
        }
        unparsed.outcome
    }

    async fn requested(&self, request: DeployRequest) -> Outcome {
        let id = request.deployment_id.clone();
        let objects = match request.bundle.object_definitions() {
            Ok(objects) => objects,
            Err(rejected) => {
                return self
                    .reject(&id, &request.bundle.manifest.version, &rejected.to_string())
                    .await;
            }
        };
        if let Err(err) =
            fleet_schema::desired_schema(&fleet_schema::system::with_system_objects(&objects))
        {
            return self
                .reject(&id, &request.bundle.manifest.version, &err.to_string())
                .await;
        }
        let targets = match self.targets(&request).await {
            Ok(targets) if targets.is_empty() => {
                return self
                    .reject(
                        &id,
                        &request.bundle.manifest.version,
                        "no tenant to deploy to",
                    )
                    .await;
            }
            Ok(targets) => targets,
            Err(e) => return Outcome::transient_error(&e),
        };
        let ends = match request.rollout.wave_ends(targets.len()) {
            Ok(ends) => ends,
            Err(e) => {
                return self
                    .reject(&id, &request.bundle.manifest.version, &e.to_string())
                    .await;
            }
        };
        let mut waves = Vec::new();
        let mut start = 0;
        for end in ends {
            waves.push(targets[start..end].to_vec());
            start = end;
        }
        let bundle = serde_json::to_vec(&request.bundle).expect("a bundle serializes");
        if let Err(e) = self.bundles.put(bundle_key(&id), bundle.into()).await {
            return Outcome::transient_error(&e);
        }
        let deployment = Deployment {
            id: id.clone(),
            version: request.bundle.manifest.version.clone(),
            checksum: request
                .bundle
                .manifest
                .checksum
                .clone()
                .unwrap_or_else(|| request.bundle.contents_checksum()),
            status: RolloutStatus::Running,
            dry_run: request.rollout.dry_run,
            allow_destructive: request.rollout.allow_destructive,
            max_failure_ratio: request.rollout.max_failure_ratio,
            waves,
            current_wave: 0,
            results: Default::default(),
            rollbacks: Default::default(),
            reason: None,
            requested_at: Timestamp::now(),
            finished_at: None,
            resumes: 0,
        };
        let written = match self
            .deployments
            .transition(id.as_str(), |cur| {
                rollout::start(cur, &deployment, &Timestamp::now())
            })
            .await
        {
            Ok(Some(written)) => written,
            Ok(None) => return Outcome::transient("deployment vanished"),
            Err(e) => return Outcome::transient_error(&e),
        };
        self.advanced(&written).await
    }

    async fn reject(&self, id: &DeploymentId, version: &str, reason: &str) -> Outcome {
        let deployment = Deployment {
            id: id.clone(),
            version: version.to_owned(),
            checksum: String::new(),
            status: RolloutStatus::Rejected,
            dry_run: false,
            allow_destructive: false,
            max_failure_ratio: 0.0,
            waves: Vec::new(),
            current_wave: 0,
            results: Default::default(),
            rollbacks: Default::default(),
            reason: Some(reason.to_owned()),
            requested_at: Timestamp::now(),
            finished_at: Some(Timestamp::now()),
            resumes: 0,
        };
        // Recorded with its hook, or retried until it is (both idempotent: the record is
        // unchanged the second time, the hook's id derives from the rejection).
        match self
            .deployments
            .transition(id.as_str(), |cur| {
                rollout::start(cur, &deployment, &Timestamp::now())
            })
            .await
        {
            Ok(Some(written)) => {
                if let Err(e) = self.finish_hook(&written).await {
                    return Outcome::transient_error(&e);
                }
            }
            Ok(None) | Err(fleet_runtime::StateError::Refused(_)) => {}
            Err(e) => return Outcome::transient_error(&e),
        }
        Outcome::Poison {
            reason: format!("deployment {id} rejected: {reason}"),
        }
    }

    /// The tenants a request targets: the named ones, or every active tenant.
    async fn targets(&self, request: &DeployRequest) -> Result<Vec<TenantId>, DeployerError> {
        let mut targets: Vec<TenantId> = if request.target.all {
            let mut active = Vec::new();
            for key in self.tenants.keys().await.map_err(DeployerError::Tenants)? {
                let Ok(tenant) = TenantId::parse(key) else {
                    continue;
                };
                let record = self
                    .tenants
                    .get::<std::convert::Infallible>(tenant.as_str())
                    .await
                    .map_err(DeployerError::Tenants)?;
                if record.is_some_and(|r| r.state.status() == TenantProvisioningStatus::Active) {
                    active.push(tenant);
                }
            }
            active
        } else {
            request.target.tenants.clone()
        };
        targets.sort();
        targets.dedup();
        Ok(targets)
    }

    /// Publishes the jobs of the current wave still without a result, or the end-of-deployment
    /// hook (both idempotent: message ids derive from the deployment).
    async fn advance(&self, deployment: &Versioned<Deployment>) -> Result<(), DeployerError> {
        let d = &deployment.state;
        if !matches!(
            d.status,
            RolloutStatus::Running | RolloutStatus::RollingBack
        ) {
            return self.finish_hook(deployment).await;
        }
        publish_wave(&self.publisher, &self.subjects, d).await
    }

    async fn finish_hook(&self, deployment: &Versioned<Deployment>) -> Result<(), DeployerError> {
        let d = &deployment.state;
        let (event, subject) = match d.status {
            RolloutStatus::Running | RolloutStatus::RollingBack => return Ok(()),
            RolloutStatus::Completed => ("deploy.completed", "hooks.deploy.completed"),
            RolloutStatus::RolledBack => ("deploy.rolled_back", "hooks.deploy.rolled_back"),
            _ => ("deploy.failed", "hooks.deploy.failed"),
        };
        let (ready, failed, pending) = d.counts();
        let failures: Vec<_> = d
            .results
            .iter()
            .filter(|(_, r)| r.status == DeployStatus::Failed)
            .map(|(t, r)| json!({"tenantId": t, "error": r.error}))
            .collect();
        let hook = Hook {
            subject: subject.to_owned(),
            event: event.to_owned(),
            version: 1,
            entity: d.id.to_string(),
            transition: format!(
                "{event}@{}",
                d.finished_at
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            at: chrono::Utc::now(),
            data: json!({"deploymentId": d.id, "version": d.version, "status": d.status, "dryRun": d.dry_run,
                         "ready": ready, "failed": failed, "pending": pending, "failures": failures, "reason": d.reason}),
        };
        self.hooks
            .publish(&hook)
            .await
            .map(|_| ())
            .map_err(|source| DeployerError::Publish {
                subject: hook.subject.clone(),
                source,
            })
    }

    async fn tenant_job(&self, job: TenantDeployJob) -> Outcome {
        let current = match self
            .deployments
            .get::<RolloutError>(job.deployment_id.as_str())
            .await
        {
            Ok(Some(current)) => current,
            Ok(None) => {
                return Outcome::Poison {
                    reason: format!("unknown deployment {}", job.deployment_id),
                };
            }
            Err(e) => return Outcome::transient_error(&e),
        };
        if job.rollback {
            return self.rollback_job(&current, &job.tenant_id).await;
        }
        if current.state.status != RolloutStatus::Running
            || current.state.results.contains_key(&job.tenant_id)
        {
            // Cancelled, halted, or already recorded: make sure the rollout moved on, nothing else.
            return self.advanced(&current).await;
        }
        let bundle = match self.bundles.get(bundle_key(&job.deployment_id)).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<DeployBundle>(&bytes) {
                Ok(bundle) => bundle,
                Err(e) => {
                    return Outcome::Poison {
                        reason: format!("stored bundle unreadable: {e}"),
                    };
                }
            },
            Ok(None) => {
                return Outcome::Poison {
                    reason: format!("bundle of {} missing", job.deployment_id),
                };
            }
            Err(e) => return Outcome::transient_error(&e),
        };
        let started = Instant::now();
        let outcome = match self
            .deploy_tenant(&current.state, &bundle, &job.tenant_id)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) if e.is_transient() => return Outcome::transient_error(&e),
            Err(e) => TenantOutcome::failed(error_chain(&e)),
        };
        let outcome = TenantOutcome {
            duration_ms: started.elapsed().as_millis() as u64,
            ..outcome
        };
        if outcome.status == DeployStatus::Failed {
            let hook = Hook {
                subject: "hooks.deploy.tenant_failed".to_owned(),
                event: "deploy.tenant_failed".to_owned(),
                version: 1,
                entity: job.tenant_id.to_string(),
                transition: format!("{}", job.deployment_id),
                at: chrono::Utc::now(),
                data: json!({"deploymentId": job.deployment_id, "tenantId": job.tenant_id, "error": outcome.error}),
            };
            if let Err(e) = self.hooks.publish(&hook).await {
                return Outcome::transient_error(&e);
            }
        }
        self.record_and_advance(&job.deployment_id, |cur| {
            rollout::record(
                cur,
                &job.deployment_id,
                &job.tenant_id,
                &outcome,
                &Timestamp::now(),
            )
        })
        .await
    }

    /// Writes a tenant's result into the deployment, then publishes what that opens up (the
    /// next wave, the remaining rollbacks, the end-of-deployment hook).
    async fn record_and_advance(
        &self,
        id: &DeploymentId,
        decide: impl Fn(
            Option<&Versioned<Deployment>>,
        ) -> Result<fleet_runtime::Decision<Deployment>, RolloutError>,
    ) -> Outcome {
        match self.deployments.transition(id.as_str(), decide).await {
            Ok(Some(written)) => self.advanced(&written).await,
            Ok(None) => Outcome::Done,
            Err(e) => Outcome::transient_error(&e),
        }
    }

    /// [`Self::advance`] as a job outcome.
    async fn advanced(&self, deployment: &Versioned<Deployment>) -> Outcome {
        match self.advance(deployment).await {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::transient_error(&e),
        }
    }

    /// `deploy.control.<id>`: resume or cancel, the operator's commands (`fleetctl deploy
    /// resume|cancel`), carried out here so only the deployer writes deployment state.
    async fn control(&self, control: fleet_protocol::DeployControl) -> Outcome {
        let id = control.deployment_id;
        let written = match control.action {
            fleet_protocol::DeployControlAction::Resume => {
                self.deployments
                    .transition(id.as_str(), |cur| {
                        rollout::resume(cur, &id, &Timestamp::now())
                    })
                    .await
            }
            fleet_protocol::DeployControlAction::Cancel => {
                self.deployments
                    .transition(id.as_str(), |cur| {
                        rollout::cancel(cur, &id, &Timestamp::now())
                    })
                    .await
            }
        };
        match written {
            Ok(Some(current)) if control.action == fleet_protocol::DeployControlAction::Resume => {
                self.advanced(&current).await
            }
            Ok(Some(_)) => Outcome::Done,
            Ok(None) => Outcome::Poison {
                reason: format!("unknown deployment {id}"),
            },
            Err(fleet_runtime::StateError::Refused(e)) => Outcome::poison(&e),
            Err(e) => Outcome::transient_error(&e),
        }
    }

    async fn rollback_requested(&self, id: DeploymentId) -> Outcome {
        match self
            .deployments
            .transition(id.as_str(), |cur| {
                rollout::start_rollback(cur, &id, &Timestamp::now())
            })
            .await
        {
            Ok(Some(current)) => self.advanced(&current).await,
            Ok(None) => Outcome::Poison {
                reason: format!("unknown deployment {id}"),
            },
            Err(fleet_runtime::StateError::Refused(e)) => Outcome::poison(&e),
            Err(e) => Outcome::transient_error(&e),
        }
    }

    /// Undoes the deployment on one tenant: its stored rollback plan, and the deployment's
    /// registry row removed, in one transaction.
    async fn rollback_job(&self, current: &Versioned<Deployment>, tenant: &TenantId) -> Outcome {
        let d = &current.state;
        if d.status != RolloutStatus::RollingBack || d.rollbacks.contains_key(tenant) {
            return self.advanced(current).await;
        }
        let started = Instant::now();
        let outcome = match self.rollback_tenant(d, tenant).await {
            Ok(statements) => TenantOutcome::ready(statements),
            Err(e) if e.is_transient() => return Outcome::transient_error(&e),
            Err(e) => TenantOutcome::failed(error_chain(&e)),
        };
        let outcome = TenantOutcome {
            duration_ms: started.elapsed().as_millis() as u64,
            ..outcome
        };
        self.record_and_advance(&d.id, |cur| {
            rollout::record_rollback(cur, &d.id, tenant, &outcome, &Timestamp::now())
        })
        .await
    }

    async fn rollback_tenant(&self, d: &Deployment, tenant: &TenantId) -> Result<u64, TenantError> {
        let (_, conn) = self.tenant_connection(tenant).await?;
        let mut rows = conn
            .query(
                "SELECT rollback_plan FROM sys_deployment WHERE deployment_id = ?1",
                vec![SqlValue::Text(d.id.to_string())],
            )
            .await
            .map_err(|source| TenantError::Query {
                what: "the deployment's rollback plan".into(),
                source,
                transient: false,
            })?;
        let Some(row) = rows.next().await.map_err(|source| TenantError::Query {
            what: "the deployment's rollback plan".into(),
            source,
            transient: true,
        })?
        else {
            return Ok(0); // already rolled back (or never recorded): nothing to undo
        };
        let plan: fleet_protocol::MigrationPlan = match row.get_value(0) {
            Ok(SqlValue::Text(text)) => {
                serde_json::from_str(&text).map_err(TenantError::StoredPlan)?
            }
            _ => return Err(TenantError::NotReversible),
        };
        // The statement must be finished before the plan's DDL runs on this connection.
        drop(row);
        drop(rows);
        let forget = BoundStatement {
            sql: "DELETE FROM sys_deployment WHERE deployment_id = ?1".to_owned(),
            params: vec![SqlValue::Text(d.id.to_string())],
        };
        fleet_schema::apply_plan_with(&conn, &plan, &[forget])
            .await
            .map_err(TenantError::Apply)?;
        Ok(plan.statements.len() as u64)
    }

    /// The tenant's record and a connection opened with its stored token (active tenants only).
    async fn tenant_connection(
        &self,
        tenant: &TenantId,
    ) -> Result<(TenantRecord, libsql::Connection), TenantError> {
        let record = self
            .tenants
            .get::<std::convert::Infallible>(tenant.as_str())
            .await
            .map_err(|source| TenantError::Store {
                tenant: tenant.clone(),
                source,
            })?
            .ok_or_else(|| TenantError::Unknown(tenant.clone()))?
            .state;
        if record.status() != TenantProvisioningStatus::Active {
            return Err(TenantError::NotActive(tenant.clone()));
        }
        let connection = record
            .connection
            .clone()
            .ok_or_else(|| TenantError::NoConnection(tenant.clone()))?;
        let token = connection
            .auth_token(tenant, &self.keys)
            .map_err(|source| TenantError::Token {
                tenant: tenant.clone(),
                source,
            })?
            .ok_or_else(|| TenantError::NoConnection(tenant.clone()))?;
        let database = record
            .database
            .as_deref()
            .and_then(|n| fleet_protocol::DatabaseName::parse(n).ok())
            .unwrap_or_else(|| self.backend.database_name(tenant));
        let open = |source| TenantError::Open {
            tenant: tenant.clone(),
            source,
        };
        let db = self.backend.open(&database, &token).await.map_err(open)?;
        let conn = db.connect().await.map_err(|e| {
            // A connection that will not come up now may later.
            open(fleet_tenantdb::TenantDbError::Unavailable(error_chain(&e)))
        })?;
        Ok((record, conn))
    }

    async fn deploy_tenant(
        &self,
        d: &Deployment,
        bundle: &DeployBundle,
        tenant: &TenantId,
    ) -> Result<TenantOutcome, TenantError> {
        // validating: the tenant is active, its stored token opens its database
        let (record, conn) = self.tenant_connection(tenant).await?;
        let objects: Vec<ObjectDefinition> =
            bundle.object_definitions().map_err(TenantError::Bundle)?;
        let already = count(
            &conn,
            "SELECT count(*) FROM sys_deployment WHERE version = ?1 AND checksum = ?2",
            vec![
                SqlValue::Text(d.version.clone()),
                SqlValue::Text(d.checksum.clone()),
            ],
        )
        .await?;
        if already > 0 {
            return Ok(TenantOutcome {
                skipped: true,
                ..TenantOutcome::ready(0)
            });
        }
        // Quota gate: objects and deployments per day.
        if let Some(max) = record.quotas.max_objects {
            let objects_count = objects.len() as u64;
            if objects_count > max.get() {
                return Err(TenantError::Quota(quota(
                    "maxObjects",
                    objects_count,
                    max.get(),
                )));
            }
        }
        if let Some(max) = record.quotas.max_deployments_per_day {
            let today = count(&conn, "SELECT count(*) FROM sys_deployment WHERE applied_at >= strftime('%Y-%m-%d', 'now')", vec![]).await?;
            if today >= max.get() {
                return Err(TenantError::Quota(quota(
                    "maxDeploymentsPerDay",
                    today,
                    max.get(),
                )));
            }
        }
        // diffing
        let desired = fleet_schema::system::with_system_objects(&objects);
        let planned = match fleet_schema::plan_database(
            &conn,
            &desired,
            PlanOptions {
                allow_destructive: d.allow_destructive,
            },
        )
        .await
        {
            Ok(planned) => planned,
            Err(
                e @ (SchemaError::Plan(PlanError::Destructive { .. } | PlanError::Conflicts { .. })
                | SchemaError::Desired(_)),
            ) => return Err(TenantError::Refused(e)),
            Err(e) => return Err(TenantError::Introspect(e)),
        };
        let summary = planned.diff.summary;
        let outcome = TenantOutcome {
            changes: [summary.added, summary.modified, summary.removed],
            breaking: planned.diff.has_breaking_changes,
            ..TenantOutcome::ready(planned.plan.statements.len() as u64)
        };
        if d.dry_run {
            return Ok(outcome);
        }
        // migrating + registering, in one transaction
        let registry = registry_statements(d, bundle, &planned.plan);
        fleet_schema::apply_plan_with(&conn, &planned.plan, &registry)
            .await
            .map_err(TenantError::Apply)?;
        Ok(outcome)
    }
}

fn quota(name: &str, current: u64, limit: u64) -> String {
    let result = QuotaEnforcementResult {
        allowed: false,
        exceeded_quota: Some(name.to_owned()),
        current_usage: Some(current as f64),
        limit: Some(limit as f64),
        message: Some(format!("{name} would be exceeded ({current} of {limit})")),
    };
    format!(
        "quota exceeded: {}",
        serde_json::to_string(&result).unwrap_or_default()
    )
}

async fn count(
    conn: &libsql::Connection,
    sql: &str,
    params: Vec<SqlValue>,
) -> Result<u64, TenantError> {
    let mut rows = conn
        .query(sql, params)
        .await
        .map_err(|source| TenantError::Query {
            what: sql.to_owned(),
            source,
            transient: false,
        })?;
    let row = rows.next().await.map_err(|source| TenantError::Query {
        what: sql.to_owned(),
        source,
        transient: true,
    })?;
    Ok(row.and_then(|r| r.get::<i64>(0).ok()).unwrap_or(0).max(0) as u64)
}

/// The bundle's metadata into `sys_metadata` and the deployment into `sys_deployment`.
fn registry_statements(
    d: &Deployment,
    bundle: &DeployBundle,
    plan: &fleet_protocol::MigrationPlan,
) -> Vec<BoundStatement> {
    let statements = plan.statements.len();
    let rollback = fleet_schema::rollback_plan(plan)
        .and_then(|p| serde_json::to_string(&p).ok())
        .map_or(SqlValue::Null, SqlValue::Text);
    let mut out = Vec::new();
    let kinds = [
        ("object", &bundle.objects),
        ("view", &bundle.views),
        ("flow", &bundle.flows),
        ("permission", &bundle.permissions),
    ];
    for (kind, items) in kinds {
        for (i, item) in items.iter().enumerate() {
            let name = item
                .get("name")
                .and_then(|n| n.as_str())
                .map_or_else(|| format!("{kind}_{i}"), str::to_owned);
            out.push(BoundStatement {
                sql: "INSERT INTO sys_metadata (id, metadata_type, metadata_name, body, version, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                      ON CONFLICT (metadata_type, metadata_name) DO UPDATE SET body = excluded.body, version = excluded.version, \
                      source = excluded.source, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
                    .to_owned(),
                params: vec![
                    SqlValue::Text(format!("{kind}:{name}")),
                    SqlValue::Text(kind.to_owned()),
                    SqlValue::Text(name),
                    SqlValue::Text(serde_json::Value::Object(item.clone()).to_string()),
                    SqlValue::Text(d.version.clone()),
                    SqlValue::Text(format!("deployment:{}", d.id)),
                ],
            });
        }
    }
    out.push(BoundStatement {
        sql: "INSERT INTO sys_deployment (id, deployment_id, version, checksum, status, statements, applied_at, rollback_plan) \
              VALUES (?1, ?1, ?2, ?3, 'ready', ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?5) ON CONFLICT (deployment_id) DO NOTHING"
            .to_owned(),
        params: vec![
            SqlValue::Text(d.id.to_string()),
            SqlValue::Text(d.version.clone()),
            SqlValue::Text(d.checksum.clone()),
            SqlValue::Real(statements as f64),
            rollback,
        ],
    });
    out
}

#[async_trait]
impl Handler for Deployer {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        match DeployCommand::parse(&delivery) {
            Ok(DeployCommand::Request(request)) => self.requested(*request).await,
            Ok(DeployCommand::Rollback(id)) => self.rollback_requested(id).await,
            Ok(DeployCommand::Control(control)) => self.control(control).await,
            Ok(DeployCommand::TenantJob(job)) => self.tenant_job(job).await,
            Err(unparsed) => self.unparsed(unparsed).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(subject: &str, payload: serde_json::Value) -> Result<DeployCommand, Unparsed> {
        DeployCommand::parse(&Delivery::new(subject, payload.to_string()))
    }

    fn reason(unparsed: &Unparsed) -> &str {
        match &unparsed.outcome {
            Outcome::Poison { reason } => reason,
            other => panic!("not poison: {other:?}"),
        }
    }

    #[test]
    fn each_subject_parses_into_its_command() {
        assert_eq!(
            parse("deploy.rollback", json!({"deploymentId": "d1"})).unwrap(),
            DeployCommand::Rollback(DeploymentId::parse("d1").unwrap())
        );
        assert!(matches!(
            parse("deploy.control.d1", json!({"deploymentId": "d1", "action": "resume"})),
            Ok(DeployCommand::Control(c)) if c.action == fleet_protocol::DeployControlAction::Resume
        ));
        assert!(matches!(
            parse(
                "deploy.tenant.d1",
                json!({"deploymentId": "d1", "tenantId": "acme", "wave": 0})
            ),
            Ok(DeployCommand::TenantJob(job)) if job.tenant_id.as_str() == "acme"
        ));
    }

    #[test]
    fn a_command_for_another_deployment_than_its_subject_names_is_refused() {
        let control = parse(
            "deploy.control.other",
            json!({"deploymentId": "d1", "action": "cancel"}),
        )
        .unwrap_err();
        assert!(reason(&control).contains("subject and payload disagree"));
        let job = parse(
            "deploy.tenant.other",
            json!({"deploymentId": "d1", "tenantId": "acme", "wave": 0}),
        )
        .unwrap_err();
        assert!(reason(&job).contains("subject and payload disagree"));
    }

    #[test]
    fn a_bad_request_names_its_deployment_so_the_rejection_is_recorded() {
        let bad = parse(
            "deploy.requested",
            json!({"deploymentId": "d9", "bundle": 1}),
        )
        .unwrap_err();
        assert_eq!(bad.deployment, Some(DeploymentId::parse("d9").unwrap()));
        assert!(reason(&bad).contains("bundle"), "{}", reason(&bad));
        let anonymous = parse("deploy.requested", json!({"bundle": 1})).unwrap_err();
        assert_eq!(anonymous.deployment, None);
        let unknown = parse("deploy.unknown", json!({})).unwrap_err();
        assert!(reason(&unknown).contains("deploy.unknown"));
    }
}
