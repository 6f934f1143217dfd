//! Deployments through the deployer: upstream's `IDeployPipelineService`
//! ([`DeployPipelineService`]) and the calls fleetctl's `deploy` commands make.
//!
//! A deployment is requested on `deploy.requested` (an app rollout on `deploy.app_requested`)
//! under its id as the `Nats-Msg-Id`, after the request is validated and the id checked free;
//! its record (KV `fleet_deployments`, key = the id) and each tenant's outcome (KV
//! `fleet_deploy_results`, key `<id>.t.<tenant>`) are what the answers are read from. Waits
//! follow the record with a KV watch opened before anything is published.
//!
//! The contract's per-tenant methods map onto one-tenant deployments:
//!
//! - `plan_deployment` is a **dry run** for the tenant: the deployer plans the bundle against the
//!   tenant's live schema and stores the plan in the tenant's outcome;
//! - `execute_deployment` deploys the bundle the plan came from (this client remembers which,
//!   for [`PLANS_KEPT`] plans) to that tenant. The deployer plans again against the schema as it
//!   is then: a schema changed since planning is migrated to the bundle as it is at execution —
//!   never by a stale plan;
//! - `rollback_deployment` undoes a deployment that migrated only that tenant (the fleet rolls a
//!   deployment back as a whole: a fleet-wide one is refused with the reason).

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fleet_protocol::contracts::{ContractResult, DeployExecutionResult, DeployPipelineService};
use fleet_protocol::{
    DeployBundle, DeployControl, DeployControlAction, DeployRequest, DeployRollbackRequest,
    DeployStatus, DeployTarget, DeployValidationIssue, DeployValidationResult, DeploymentId,
    IssueSeverity, MigrationPlan, RolloutOptions, Spec, TenantId, Timestamp,
};
use fleet_rollouts::{
    self as rollout, Deployment, EntryKey, ResultEntry, RolloutStatus, TenantOutcome,
};
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::{ClientError, FleetClient, messaging, read_key, watch_key};

/// How many plans a client remembers for `execute_deployment` (each entry is one bundle).
pub const PLANS_KEPT: u64 = 64;

/// A status as it is written on the wire (`completed_with_failures`, …).
pub(crate) fn wire<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A fresh deployment id `<prefix>-<unix ms>-<random>`, within the id's 64 characters.
pub fn new_deployment_id(prefix: &str) -> Result<DeploymentId, ClientError> {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let random = rand::random::<u32>() & 0xff_ffff;
    let prefix: String = prefix.chars().take(40).collect();
    DeploymentId::parse(format!("{prefix}-{millis}-{random:06x}")).map_err(|e| {
        ClientError::Invalid {
            what: "DeploymentId",
            rejected: fleet_protocol::Rejected {
                type_name: "DeploymentId",
                issues: vec![DeployValidationIssue {
                    severity: IssueSeverity::Error,
                    path: String::new(),
                    message: e.to_string(),
                    code: Some("invalid_string".into()),
                }],
            },
        }
    })
}

fn still_running(d: &Deployment) -> bool {
    matches!(
        d.status,
        RolloutStatus::Running | RolloutStatus::RollingBack
    )
}

impl FleetClient {
    /// The deployment's record and its revision (`None`: no such deployment).
    pub async fn deployment(
        &self,
        id: &DeploymentId,
    ) -> Result<Option<(Deployment, u64)>, ClientError> {
        read_key(&self.deployments, id.as_str()).await
    }

    /// The deployment's records from its current one on, as the deployer changes it.
    pub async fn follow_deployment(
        &self,
        id: &DeploymentId,
    ) -> Result<impl Stream<Item = (Deployment, u64)> + Send + use<>, ClientError> {
        watch_key(&self.deployments, id.as_str()).await
    }

    /// A tenant's outcome in deployment `id` (`rollback`: its rollback outcome).
    pub async fn outcome(
        &self,
        id: &DeploymentId,
        tenant: &TenantId,
        rollback: bool,
    ) -> Result<Option<TenantOutcome>, ClientError> {
        let key = if rollback {
            EntryKey::Rollback(tenant.clone())
        } else {
            EntryKey::Deploy(tenant.clone())
        };
        Ok(match self.results.get(id, &key).await.map_err(messaging)? {
            Some((ResultEntry::Outcome { outcome, .. }, _)) => Some(outcome),
            _ => None,
        })
    }

    /// The failed tenants of a deployment (and of its rollback) with their errors: read only
    /// when its tallies count failures.
    pub async fn failures(&self, d: &Deployment) -> Result<Vec<(TenantId, String)>, ClientError> {
        let mut out = Vec::new();
        if d.tally.failed > 0 {
            out.extend(
                self.results
                    .failures(&d.id, false)
                    .await
                    .map_err(messaging)?,
            );
        }
        if d.rollback_tally.failed > 0 {
            out.extend(
                self.results
                    .failures(&d.id, true)
                    .await
                    .map_err(messaging)?,
            );
        }
        Ok(out)
    }

    /// Requests a rollout (`R`: [`DeployRequest`] on `deploy.requested`, or an app rollout on
    /// `deploy.app_requested`) under `id` — fire and forget. Refused, with nothing sent, when
    /// the id is taken or the request is not a valid `R` (every issue with its path).
    pub async fn request_rollout<R: Spec>(
        &self,
        id: &DeploymentId,
        subject: &str,
        request: &Value,
    ) -> Result<(), ClientError> {
        if let Some((existing, _)) = self.deployment(id).await? {
            return Err(ClientError::Refused {
                kind: "deployment",
                name: id.to_string(),
                status: wire(&existing.status),
                why: format!(
                    "the id is taken (version {}): choose another",
                    existing.version
                ),
            });
        }
        fleet_protocol::parse_value::<R>(request).map_err(|rejected| ClientError::Invalid {
            what: R::SPEC_NAME,
            rejected,
        })?;
        self.publish(subject, id.as_str(), request).await
    }

    /// Requests a bundle's deployment (fire and forget; see [`Self::request_rollout`]).
    pub async fn deploy(&self, request: &DeployRequest) -> Result<(), ClientError> {
        let value = serde_json::to_value(request).map_err(messaging)?;
        self.request_rollout::<DeployRequest>(&request.deployment_id, "deploy.requested", &value)
            .await
    }

    /// Waits until the deployment's record, at a revision after `after`, satisfies `done`.
    async fn wait_deployment(
        &self,
        id: &DeploymentId,
        after: u64,
        what: &'static str,
        mut done: impl FnMut(&Deployment) -> bool,
    ) -> Result<Deployment, ClientError> {
        let changes = self.follow_deployment(id).await?;
        self.settle(changes, id, what, |d, revision| revision > after && done(d))
            .await
    }

    /// Reads `changes` (a [`Self::follow_deployment`] watch) until a record satisfies `done`
    /// (given with its revision), within the client's timeout.
    async fn settle(
        &self,
        changes: impl Stream<Item = (Deployment, u64)>,
        id: &DeploymentId,
        what: &'static str,
        mut done: impl FnMut(&Deployment, u64) -> bool,
    ) -> Result<Deployment, ClientError> {
        let mut changes = std::pin::pin!(changes);
        tokio::time::timeout(self.timeout, async {
            while let Some((d, revision)) = changes.next().await {
                if done(&d, revision) {
                    return Ok(d);
                }
            }
            Err(messaging("the deployment's watch ended"))
        })
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::TimedOut {
                kind: "deployment",
                name: id.to_string(),
                what,
                worker: "deployer",
                timeout: self.timeout,
            })
        })
    }

    /// Waits until the deployment has ended (completed, with failures, halted, cancelled,
    /// rejected or rolled back) and answers its record.
    pub async fn settled(&self, id: &DeploymentId) -> Result<Deployment, ClientError> {
        self.wait_deployment(id, 0, "deployment", |d| !still_running(d))
            .await
    }

    /// Whether a `deploy.control.<id>` command waits in the stream, not yet carried out (the
    /// work queue keeps a command until the deployer has handled it).
    async fn control_queued(&self, id: &DeploymentId) -> Result<bool, ClientError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subjects = self.runtime.topology.subjects();
        let stream = self
            .runtime
            .js
            .get_stream(subjects.stream(fleet_runtime::topology::names::DEPLOY_COMMANDS))
            .await
            .map_err(messaging)?;
        match stream
            .get_last_raw_message_by_subject(&subjects.full(&format!("deploy.control.{id}")))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(messaging(e)),
        }
    }

    /// Sends `action` on `deploy.control.<id>` — checked against the record first, so an
    /// illegal one is refused here with the reason, and one the deployment already satisfies
    /// (a resume of a running deployment, a cancel of a cancelled one) with no other command
    /// queued answers its record without sending anything — and waits until the deployer carried it out: a resume
    /// counted, or the status `cancelled` (a cancel that the rollout outran by ending first is
    /// [`ClientError::Refused`]).
    pub async fn control_deployment(
        &self,
        id: &DeploymentId,
        action: DeployControlAction,
    ) -> Result<Deployment, ClientError> {
        let current = self.deployment(id).await?;
        let Some((before, revision)) = current.clone() else {
            return Err(ClientError::NotFound {
                kind: "deployment",
                name: id.to_string(),
            });
        };
        let now = Timestamp::now();
        let versioned =
            current.map(|(state, revision)| fleet_runtime::Versioned { state, revision });
        let check = match action {
            DeployControlAction::Resume => rollout::resume(versioned.as_ref(), id, None, &now),
            DeployControlAction::Cancel => rollout::cancel(versioned.as_ref(), id, None, &now),
        };
        match check {
            Err(refused) => {
                return Err(ClientError::Refused {
                    kind: "deployment",
                    name: id.to_string(),
                    status: wire(&before.status),
                    why: refused.to_string(),
                });
            }
            // Already what the command asks for (a resume of a running deployment, a cancel
            // of a cancelled one) with no other command queued ahead of it that could change
            // that: nothing to send, nothing to wait for. With one queued, it is sent and
            // carried out after it, in stream order.
            Ok(fleet_runtime::Decision::Unchanged) if !self.control_queued(id).await? => {
                return Ok(before);
            }
            Ok(_) => {}
        }
        let request = serde_json::to_value(DeployControl {
            deployment_id: id.clone(),
            action,
        })
        .map_err(messaging)?;
        // One command per revision it was sent at: a retried call is a duplicate.
        self.publish(
            &format!("deploy.control.{id}"),
            &format!("control:{id}:{action:?}:{revision}"),
            &request,
        )
        .await?;
        let d = self
            .wait_deployment(id, revision, "control", |d| match action {
                DeployControlAction::Resume => d.resumes > before.resumes,
                DeployControlAction::Cancel => {
                    !matches!(d.status, RolloutStatus::Running | RolloutStatus::Halted)
                }
            })
            .await?;
        if action == DeployControlAction::Cancel && d.status != RolloutStatus::Cancelled {
            return Err(ClientError::Refused {
                kind: "deployment",
                name: id.to_string(),
                status: wire(&d.status),
                why: "it ended before the cancel was carried out".into(),
            });
        }
        Ok(d)
    }

    /// Rolls a finished, halted or cancelled deployment back on every tenant it migrated (their
    /// stored reverse plans) and waits until it is rolled back: its record, whose rollback
    /// tally counts any tenant that could not be undone.
    pub async fn rollback(&self, id: &DeploymentId) -> Result<Deployment, ClientError> {
        let Some((d, revision)) = self.deployment(id).await? else {
            return Err(ClientError::NotFound {
                kind: "deployment",
                name: id.to_string(),
            });
        };
        if d.status == RolloutStatus::RolledBack {
            return Ok(d);
        }
        // The rollout machine's own rule (running, rejected and dry runs are refused), asked
        // before publishing: a refused rollback never turns `RolledBack`, so nothing would come
        // to wait for.
        let current = fleet_runtime::Versioned {
            state: d.clone(),
            revision,
        };
        if let Err(e) = rollout::start_rollback(Some(&current), id, &Timestamp::now()) {
            return Err(ClientError::Refused {
                kind: "deployment",
                name: id.to_string(),
                status: wire(&d.status),
                why: e.to_string(),
            });
        }
        let request = serde_json::to_value(DeployRollbackRequest {
            deployment_id: id.clone(),
        })
        .map_err(messaging)?;
        self.publish(
            "deploy.rollback",
            &format!("rollback:{id}:{revision}"),
            &request,
        )
        .await?;
        self.wait_deployment(id, revision, "rollback", |d| {
            d.status == RolloutStatus::RolledBack
        })
        .await
    }

    /// Plans `bundle` for `tenant` (a one-tenant dry run): the migration the deployer would
    /// run there now. Refused plans (destructive without `allow_destructive`, conflicting with
    /// the tenant's data) are [`ClientError::Failed`] with the deployer's reason.
    pub async fn plan_for(
        &self,
        tenant: &TenantId,
        bundle: &DeployBundle,
        allow_destructive: bool,
    ) -> Result<MigrationPlan, ClientError> {
        let (_, outcome) = self
            .one_tenant(tenant, bundle, "plan", allow_destructive, true)
            .await?;
        let plan = outcome.plan.ok_or_else(|| {
            messaging("the dry run's outcome holds no plan (a deployer older than this client?)")
        })?;
        self.plans
            .insert(plan_key(tenant, &plan), (bundle.clone(), allow_destructive));
        Ok(plan)
    }

    /// Deploys `bundle` to `tenant` alone and waits for its outcome (a tenant that failed is
    /// [`ClientError::Failed`]). Answers the deployment's id and the tenant's outcome.
    pub async fn deploy_to(
        &self,
        tenant: &TenantId,
        bundle: &DeployBundle,
        allow_destructive: bool,
    ) -> Result<(Deployment, TenantOutcome), ClientError> {
        self.one_tenant(tenant, bundle, "exec", allow_destructive, false)
            .await
    }

    async fn one_tenant(
        &self,
        tenant: &TenantId,
        bundle: &DeployBundle,
        prefix: &str,
        allow_destructive: bool,
        dry_run: bool,
    ) -> Result<(Deployment, TenantOutcome), ClientError> {
        let id = new_deployment_id(prefix)?;
        let request = DeployRequest {
            deployment_id: id.clone(),
            bundle: bundle.clone(),
            target: DeployTarget {
                tenants: vec![tenant.clone()],
                ..DeployTarget::default()
            },
            rollout: RolloutOptions {
                waves: vec!["100%".into()],
                max_failure_ratio: 1.0,
                allow_destructive,
                dry_run,
            },
        };
        let request = serde_json::to_value(&request).map_err(messaging)?;
        let what = if dry_run { "planning" } else { "deployment" };
        let (d, outcome) = self
            .rollout_one::<DeployRequest>(&id, "deploy.requested", &request, tenant, what)
            .await?;
        match outcome {
            Some(outcome) if outcome.status == DeployStatus::Failed => Err(ClientError::Failed {
                kind: "tenant",
                name: tenant.to_string(),
                error: outcome.error.unwrap_or_default(),
            }),
            Some(outcome) => Ok((d, outcome)),
            None => Err(Self::untouched(&d)),
        }
    }

    /// A one-tenant rollout that ended without touching its tenant: an unknown or inactive
    /// tenant, or a request the deployer rejected.
    pub(crate) fn untouched(d: &Deployment) -> ClientError {
        ClientError::Failed {
            kind: "deployment",
            name: d.id.to_string(),
            error: d.reason.clone().unwrap_or_else(|| wire(&d.status)),
        }
    }

    /// Requests the rollout `request` (an `R` on `subject`) under `id` for `tenant` alone, waits
    /// until it ended, and answers its record and the tenant's outcome (`None`: the tenant was
    /// never reached).
    pub(crate) async fn rollout_one<R: Spec>(
        &self,
        id: &DeploymentId,
        subject: &str,
        request: &Value,
        tenant: &TenantId,
        what: &'static str,
    ) -> Result<(Deployment, Option<TenantOutcome>), ClientError> {
        // The watch starts before the request: the record cannot settle unseen.
        let changes = self.follow_deployment(id).await?;
        self.request_rollout::<R>(id, subject, request).await?;
        let d = self
            .settle(changes, id, what, |d, _| !still_running(d))
            .await?;
        let outcome = self.outcome(id, tenant, false).await?;
        Ok((d, outcome))
    }

    /// Validates a bundle as the deployer will: its shape (every issue with its path), its
    /// objects, and the schema they map to (with the system objects).
    pub fn validate(&self, bundle: &DeployBundle) -> DeployValidationResult {
        validate_bundle(bundle)
    }
}

/// See [`FleetClient::validate`].
pub fn validate_bundle(bundle: &DeployBundle) -> DeployValidationResult {
    let value = match serde_json::to_value(bundle) {
        Ok(value) => value,
        Err(e) => {
            return DeployValidationResult::from_issues(vec![DeployValidationIssue {
                severity: IssueSeverity::Error,
                path: String::new(),
                message: e.to_string(),
                code: None,
            }]);
        }
    };
    let warnings = match fleet_protocol::parse_value::<DeployBundle>(&value) {
        Ok(checked) => checked.warnings,
        Err(rejected) => return rejected.to_result(),
    };
    let objects = match bundle.object_definitions() {
        Ok(objects) => objects,
        Err(rejected) => return rejected.to_result(),
    };
    let mut issues = warnings;
    if let Err(e) =
        fleet_schema::desired_schema(&fleet_schema::system::with_system_objects(&objects))
    {
        issues.extend(e.issues);
    }
    DeployValidationResult::from_issues(issues)
}

/// The memo key of a plan made for a tenant.
fn plan_key(tenant: &TenantId, plan: &MigrationPlan) -> String {
    use sha2::Digest;
    let body = serde_json::to_vec(plan).unwrap_or_default();
    format!("{tenant}:{}", hex::encode(sha2::Sha256::digest(&body)))
}

/// Upstream's `IDeployPipelineService` (see the module docs for how each method maps).
#[async_trait]
impl DeployPipelineService for FleetClient {
    fn validate_bundle(&self, bundle: &DeployBundle) -> DeployValidationResult {
        validate_bundle(bundle)
    }

    async fn plan_deployment(
        &self,
        tenant: &TenantId,
        bundle: &DeployBundle,
    ) -> ContractResult<MigrationPlan> {
        Ok(self.plan_for(tenant, bundle, false).await?)
    }

    async fn execute_deployment(
        &self,
        tenant: &TenantId,
        plan: &MigrationPlan,
    ) -> ContractResult<DeployExecutionResult> {
        let Some((bundle, allow_destructive)) = self.plans.get(&plan_key(tenant, plan)) else {
            return Err(ClientError::NotFound {
                kind: "plan",
                name: format!(
                    "for {tenant} made by this client (plan it with plan_deployment first: the fleet deploys the bundle a plan came from)"
                ),
            }
            .into());
        };
        let started = std::time::Instant::now();
        let (d, outcome) = match self.deploy_to(tenant, &bundle, allow_destructive).await {
            Ok(done) => done,
            Err(ClientError::Failed {
                kind: "tenant",
                error,
                ..
            }) => {
                return Ok(DeployExecutionResult {
                    deployment_id: String::new(),
                    status: DeployStatus::Failed,
                    duration_ms: started.elapsed().as_millis() as u64,
                    statements_executed: 0,
                    error: Some(error),
                    completed_at: Timestamp::now(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(DeployExecutionResult {
            deployment_id: d.id.to_string(),
            status: outcome.status,
            duration_ms: outcome.duration_ms,
            statements_executed: outcome.statements,
            error: outcome.error,
            completed_at: d.finished_at.unwrap_or_else(Timestamp::now),
        })
    }

    async fn rollback_deployment(
        &self,
        tenant: &TenantId,
        deployment_id: &str,
    ) -> ContractResult<()> {
        let id = DeploymentId::parse(deployment_id).map_err(|_| ClientError::NotFound {
            kind: "deployment",
            name: deployment_id.to_owned(),
        })?;
        let Some((d, _)) = self.deployment(&id).await? else {
            return Err(ClientError::NotFound {
                kind: "deployment",
                name: id.to_string(),
            }
            .into());
        };
        let targets = d.wave_ends.last().copied().unwrap_or(0);
        if targets > 1 {
            return Err(ClientError::Refused {
                kind: "deployment",
                name: id.to_string(),
                status: wire(&d.status),
                why: format!(
                    "it targeted {targets} tenants and the fleet rolls a deployment back as a whole (`fleetctl deploy rollback {id}`)"
                ),
            }
            .into());
        }
        if self.outcome(&id, tenant, false).await?.is_none() {
            return Err(ClientError::NotFound {
                kind: "tenant",
                name: format!("{tenant} in deployment {id}"),
            }
            .into());
        }
        self.rollback(&id).await?;
        match self.outcome(&id, tenant, true).await? {
            Some(outcome) if outcome.status == DeployStatus::Failed => Err(ClientError::Failed {
                kind: "tenant",
                name: tenant.to_string(),
                error: outcome.error.unwrap_or_default(),
            }
            .into()),
            _ => Ok(()),
        }
    }
}
