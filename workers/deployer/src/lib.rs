//! The deployer: a DeployBundle to one tenant or the whole fleet, in waves.
//!
//! `deploy.requested` is validated first — every issue of the bundle, its checksum, and the
//! schema its objects map to — and a bad bundle is rejected before any tenant is touched. Then
//! the targets are written in chunks (`fleet_deploy_results`), the bundle beside the record, and
//! the deployment record (KV `fleet_deployments`) — a fixed-size record of wave ends, tallies
//! and a watermark, whatever the number of tenants. Each wave fans out as jobs on
//! `deploy.tenant.<deploymentId>`, each carrying up to `deployer.job_tenants` tenants (16; a
//! small wave is spread over at least `worker.concurrency` jobs), so every deployer replica
//! shares the work, a job costs one message, fetch, acknowledgement and fold for its batch, and
//! a crash loses nothing: a redelivered job redoes only its tenants without a result. A job out
//! of deliveries gives those tenants a failed result that says so (the rollout ends instead of
//! waiting).
//!
//! A tenant's job: `validating` (tenant active, quotas) → `diffing` (live schema vs bundle + base
//! system objects) → `migrating` + `registering` (the DDL, the bundle's metadata in
//! `sys_metadata` and the deployment in `sys_deployment`, all in one transaction: a tenant is
//! never migrated but unregistered) → `ready`, or `failed` with the error (the transaction rolled
//! back, the tenant is as before). A tenant already at the bundle's version is skipped. The
//! bundle is read and parsed once per worker and deployment, not per job.
//!
//! A result is written under the tenant's own key (the first result stands), then — once per
//! job — folded into the record: a compare-and-set that sums every result written since the
//! record's watermark (see `fleet-rollouts`; read up to 256 entries per request), so each write
//! costs the same for 10 tenants or 100 000. One fold runs at a time per deployment in a
//! process: a job that waited usually finds its results folded already. The fold
//! that completes a wave starts the next (or halts the rollout when the failure ratio passes
//! its limit, or finishes it) and marks it unannounced; whoever sees an unannounced record —
//! that worker, or any later delivery after a crash — publishes the wave's jobs or the
//! end-of-deployment hook and marks it announced. `hooks.deploy.completed` /
//! `hooks.deploy.failed` end a deployment, and `hooks.deploy.tenant_failed` reports each failed
//! tenant.
//!
//! The operator's `deploy.control.<id>` (resume, cancel) take effect in stream order, the record
//! keeping where the last one carried out was (its sequence, the stream's creation time and its
//! publish time; see `fleet_rollouts::Deployment::control_sequence`). A cancel sent mid-wave would be delivered
//! only after the wave's queued jobs, so each job looks for one in the stream when it starts and
//! carries it out then: the rest of the wave stops at once, and the cancel's own delivery is
//! stale when it comes.
//!
//! `deploy.app_requested` is the same rollout for a marketplace app: targets (a list, all, a
//! plan, every tenant that has the app), waves, halt, dry run (the compatibility check) and
//! resume, with each tenant's job the app operation the installer runs
//! ([`fleet_control::AppOperations`]). App rollouts are not rolled back.

/// The deployment record and its rollout machine (in `fleet-rollouts`, shared with `fleetctl`).
pub use fleet_rollouts as rollout;

use std::sync::Arc;
use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use async_trait::async_trait;
use fleet_control::DeployResults;
use fleet_protocol::{
    DeployBundle, DeployRequest, DeployStatus, DeploymentId, ObjectDefinition,
    QuotaEnforcementResult, TenantDeployJob, TenantId, TenantProvisioningStatus, Timestamp,
};
use fleet_runtime::worker::{BuildError, Worker, WorkerContext};
use fleet_runtime::{
    Decision, Delivery, Handler, Hook, Hooks, Outcome, Publisher, StateStore, Subjects, Versioned,
    error_chain,
};
use fleet_schema::{BoundStatement, PlanError, PlanOptions, SchemaError};
use fleet_tenants::machine::TenantRecord;
use libsql::Value as SqlValue;
use serde_json::json;

use crate::rollout::{
    Deployment, EntryKey, ResultEntry, RolloutError, RolloutStatus, TenantOutcome,
};

/// The deployer's handler.
pub struct Deployer {
    deployments: StateStore<Deployment>,
    results: DeployResults,
    bundles: kv::Store,
    prepared: moka::future::Cache<DeploymentId, Arc<Prepared>>,
    /// One fold at a time per deployment in this process: a job that waited finds its results
    /// folded by the one before it (one read of the record) instead of reading every entry
    /// since the watermark again and losing the compare-and-set.
    folds: moka::future::Cache<DeploymentId, Arc<tokio::sync::Mutex<()>>>,
    tenants: StateStore<TenantRecord>,
    /// `FLEET_DEPLOY_COMMANDS`, where a job looks for an operator's cancel queued behind the
    /// wave's jobs ([`Deployer::cancel_ahead`]).
    commands: async_nats::jetstream::stream::Stream,
    apps: fleet_control::AppOperations,
    hooks: Hooks,
    publisher: Publisher,
    subjects: Subjects,
    /// How waves are cut into jobs (`deployer.job_tenants`, `worker.concurrency`).
    batching: Batching,
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
    /// `deploy.app_requested`: an app installed or upgraded across tenants in waves.
    AppRequest(Box<fleet_protocol::deploy::AppRolloutRequest>),
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
        // The runtime let through the versions the deployer reads (1, 2); only tenant jobs
        // have a version 2.
        let version = delivery.version().unwrap_or(1);
        if version != 1 && !subject.starts_with("deploy.tenant.") {
            return Err(poison(Outcome::Poison {
                reason: format!("version {version} of {subject} is not supported (only 1)"),
            }));
        }
        // A bad request that names a valid deployment gets its rejection recorded.
        let rejected = |outcome| Unparsed {
            outcome,
            deployment: serde_json::from_slice::<serde_json::Value>(&delivery.payload)
                .ok()
                .and_then(|raw| {
                    raw.get("deploymentId")?
                        .as_str()
                        .and_then(|id| DeploymentId::parse(id).ok())
                }),
        };
        if subject == "deploy.requested" {
            return delivery
                .decode::<DeployRequest>()
                .map(|request| Self::Request(Box::new(request)))
                .map_err(rejected);
        }
        if subject == "deploy.app_requested" {
            return delivery
                .decode::<fleet_protocol::deploy::AppRolloutRequest>()
                .map(|request| Self::AppRequest(Box::new(request)))
                .map_err(rejected);
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
            let job = match version {
                1 => delivery
                    .decode::<fleet_protocol::TenantDeployJobV1>()
                    .map(TenantDeployJob::from),
                _ => delivery.decode::<TenantDeployJob>(),
            }
            .map_err(poison)?;
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
    /// The deployment's record could not be read or written.
    #[error("the deployment record")]
    Record(#[source] fleet_runtime::StateError<RolloutError>),
    /// The deployment's per-tenant entries could not be read or written.
    #[error("the deployment's entries")]
    Results(#[source] fleet_control::ResultsError),
    /// No record of this deployment.
    #[error("unknown deployment {0}")]
    Unknown(DeploymentId),
    /// The apps' install records could not be listed.
    #[error("reading the app installs")]
    Installs(#[source] fleet_runtime::StateError<std::convert::Infallible>),
    /// Folding lost [`FOLD_RACES`] races in a row to other workers.
    #[error("deployment {0}: too many concurrent folds")]
    Contention(DeploymentId),
    /// The command stream's information (its creation time, which places a command) could
    /// not be read.
    #[error("reading the command stream: {0}")]
    Commands(String),
}

/// Compare-and-set attempts of one fold before the job is retried later.
const FOLD_RACES: usize = 64;

/// Why one tenant's deploy or rollback did not happen: recorded as that tenant's failure, or —
/// when [`TenantError::is_transient`] — retried by the job loop's retry policy.
#[derive(Debug, thiserror::Error)]
enum TenantError {
    /// The tenant's database could not be reached.
    #[error(transparent)]
    Connect(#[from] fleet_control::ConnectError),
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
    /// Another job changed the tenant's schema (or applied this deployment) between the plan
    /// and the migration's transaction, which then did nothing (transient: the retry plans
    /// again, or finds the deployment applied).
    #[error("migrating: {0}")]
    Raced(String),
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
    /// A later deployment was applied after the one being rolled back.
    #[error(
        "deployment {0} was applied after this one: roll that back first (a reverse plan only fits the schema its deployment left)"
    )]
    Superseded(String),
    /// An app operation failed on this tenant (refused and recorded, or bad input).
    #[error(transparent)]
    App(#[from] fleet_control::AppOperationError),
    /// The deployment dropped data, so it has no rollback plan.
    #[error("the deployment's plan was not reversible (it dropped data)")]
    NotReversible,
}

impl TenantError {
    /// Whether retrying later may succeed (the store, the backend or the database is
    /// unavailable); everything else is this tenant's failure.
    fn is_transient(&self) -> bool {
        match self {
            Self::Connect(e) => e.is_transient(),
            Self::App(e) => e.is_transient(),
            Self::Introspect(_) | Self::Raced(_) => true,
            Self::Query { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The compatibility check that refused an app, with its issues.
    fn incompatibility(&self) -> Option<fleet_protocol::AppCompatibilityCheck> {
        match self {
            Self::App(fleet_control::AppOperationError::Refused(
                fleet_apps::tenant::AppError::Incompatible(check),
            )) => Some(check.clone()),
            _ => None,
        }
    }
}

/// The KV key of an app rollout's package and operation.
pub fn app_key(id: &DeploymentId) -> String {
    format!("app.{id}")
}

/// What starting a rollout stores and records.
struct Start {
    version: String,
    checksum: String,
    app: Option<String>,
    /// The KV key and value the jobs read (a bundle, or an app rollout).
    stored: (String, Vec<u8>),
}

/// The KV key of a deployment's bundle.
pub fn bundle_key(id: &DeploymentId) -> String {
    format!("bundle.{id}")
}

/// How long a job works on from one read of its deployment before reading it again (between
/// two tenants): how soon a cancel or a halt stops a running job.
const HEAD_REFRESH: std::time::Duration = std::time::Duration::from_millis(200);

/// Deployments whose fold lock a worker keeps (one small entry each; an evicted lock only
/// costs a fold race).
const FOLD_LOCKS: u64 = 1024;

/// Attempts at giving a dead-lettered job's tenants their results (0.5, 1, 2, 4 s apart).
const DEAD_LETTER_TRIES: u32 = 5;

/// How often a job folds the results it has recorded while it runs.
const FOLD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Jobs published at once while announcing a wave (each waits for its stream ack).
const PUBLISH_WINDOW: usize = 64;

/// The message id of a `deploy.tenant` job of `tenants`:
/// `<deployment>:<first tenant>+<count>:<digest><suffix>`, the digest the first 16 hex digits
/// of the SHA-256 of the tenant ids (each followed by a newline) — the same for the same
/// tenants in the same order, different for any other job of the deployment.
fn job_id(id: &DeploymentId, tenants: &[TenantId], suffix: &str) -> String {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for tenant in tenants {
        digest.update(tenant.as_str().as_bytes());
        digest.update(b"\n");
    }
    let digest = hex::encode(&digest.finalize()[..8]);
    let first = tenants.first().map_or("", TenantId::as_str);
    format!("{id}:{first}+{}:{digest}{suffix}", tenants.len())
}

/// How a wave's tenants are cut into `deploy.tenant` jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batching {
    /// Most tenants per job (`deployer.job_tenants`).
    job_tenants: usize,
    /// Jobs a wave is spread over at least, when it has that many tenants
    /// (`worker.concurrency`: what one replica works on at once).
    spread: usize,
}

impl Batching {
    /// `tenants` (in rollout order) as `max(ceil(n / job_tenants), min(n, spread))` jobs of
    /// even size (sizes differ by at most one; the larger first), order kept.
    fn split(&self, mut tenants: Vec<TenantId>) -> Vec<Vec<TenantId>> {
        let n = tenants.len();
        if n == 0 {
            return Vec::new();
        }
        let per_job = self
            .job_tenants
            .clamp(1, fleet_protocol::deploy::MAX_JOB_TENANTS);
        let jobs = n.div_ceil(per_job).max(n.min(self.spread.max(1)));
        let (size, larger) = (n / jobs, n % jobs);
        let mut out = Vec::with_capacity(jobs);
        for job in (0..jobs).rev() {
            let take = size + usize::from(job < larger);
            out.push(tenants.split_off(tenants.len() - take));
        }
        out.reverse();
        out
    }
}

/// Failed tenants named in an end-of-deployment hook (all of them: `fleetctl deploy status`).
const HOOK_FAILURES: usize = 100;

/// A deployment's bundle as the jobs use it, parsed once per worker and deployment.
#[derive(Debug)]
enum Prepared {
    /// A bundle deployment's bundle.
    Bundle(Box<PreparedBundle>),
    /// An app rollout's operation and package.
    App(Box<fleet_protocol::deploy::AppRollout>),
}

/// A deployment's bundle as the jobs use it.
#[derive(Debug)]
struct PreparedBundle {
    bundle: DeployBundle,
    /// The bundle's objects.
    objects: Vec<ObjectDefinition>,
    /// The objects with the base system objects: the schema every tenant should have.
    desired: Vec<ObjectDefinition>,
    /// The plans towards `desired` as a schema, made once per database shape and data facts
    /// for every tenant (`None` when the objects do not make a schema: each tenant's plan then
    /// fails with the reason).
    plans: Option<fleet_schema::PlanMemo>,
    /// The registry statements of each plan the memo shares (the rows a migration writes
    /// into `sys_metadata` and `sys_deployment` are a function of the deployment, the bundle,
    /// the plan and the registry rows in it), built once per plan instead of per tenant;
    /// bounded by [`REGISTRY_MEMO_BYTES`] (the statements' text and the plan each keeps
    /// alive).
    registry: moka::sync::Cache<SharedPlan, Arc<Vec<BoundStatement>>>,
}

/// What [`PreparedBundle::registry`] keeps at least, in bytes (estimated from text lengths): a
/// fleet on one version shares a few plans, while tenants with other data facts (row counts)
/// get plans of their own that are rarely used twice, so a small bound keeps the shared ones.
/// A large bundle raises it to [`REGISTRY_MEMO_BUNDLES`] times the bundle's size: one plan's
/// statements weigh about 1.2 (a first deploy) to 3.1 (an upgrade, the registry rows it
/// replaces counted too) times the bundle.
const REGISTRY_MEMO_BYTES: u64 = 2 << 20;

/// See [`REGISTRY_MEMO_BYTES`].
const REGISTRY_MEMO_BUNDLES: u64 = 8;

/// The text the registry memo's bound counts for a plan's registry statements: the statements'
/// SQL and values, and the plan the key keeps alive (its statements and registry rows).
fn registry_weight(planned: &fleet_schema::Planned, statements: &[BoundStatement]) -> u32 {
    let values: usize = statements
        .iter()
        .map(|s| {
            s.sql.len()
                + s.params
                    .iter()
                    .map(|v| match v {
                        SqlValue::Text(t) => t.len(),
                        SqlValue::Blob(b) => b.len(),
                        _ => 8,
                    })
                    .sum::<usize>()
        })
        .sum();
    let plan: usize = planned
        .plan
        .statements
        .iter()
        .map(|s| s.sql.len() + s.rollback_sql.as_ref().map_or(0, String::len))
        .sum();
    let registry = planned
        .registered
        .as_deref()
        .map_or(0, fleet_schema::registry::text_len);
    u32::try_from(values + plan + registry).unwrap_or(u32::MAX)
}

impl PreparedBundle {
    /// The bundle (`bundle_bytes` long as stored) prepared for its deployment's jobs.
    fn new(bundle: DeployBundle, objects: Vec<ObjectDefinition>, bundle_bytes: usize) -> Self {
        let desired = fleet_schema::system::with_system_objects(&objects);
        PreparedBundle {
            plans: fleet_schema::desired_within(&desired, &[])
                .ok()
                .map(|schema| {
                    fleet_schema::PlanMemo::new(
                        desired.clone(),
                        schema,
                        fleet_schema::Owner::Platform,
                    )
                }),
            registry: moka::sync::Cache::builder()
                .weigher(|plan: &SharedPlan, statements: &Arc<Vec<BoundStatement>>| {
                    registry_weight(&plan.0, statements)
                })
                .max_capacity(REGISTRY_MEMO_BYTES.max(REGISTRY_MEMO_BUNDLES * bundle_bytes as u64))
                .build(),
            desired,
            objects,
            bundle,
        }
    }

    /// [`registry_statements`] of `d` for `planned`: built once for a plan the memo shares
    /// (held by it as well as by the caller), built afresh for one it does not.
    fn registry(
        &self,
        d: &Deployment,
        planned: &Arc<fleet_schema::Planned>,
    ) -> Arc<Vec<BoundStatement>> {
        let build = || {
            Arc::new(registry_statements(
                d,
                &self.bundle,
                &planned.plan,
                planned.registered.as_deref().unwrap_or_default(),
            ))
        };
        if Arc::strong_count(planned) > 1 {
            self.registry.get_with(SharedPlan(planned.clone()), build)
        } else {
            build()
        }
    }
}

/// A plan the [`fleet_schema::PlanMemo`] shares, compared and hashed by its allocation: while
/// a key holds it, no other plan can have that address.
#[derive(Debug, Clone)]
struct SharedPlan(Arc<fleet_schema::Planned>);

impl PartialEq for SharedPlan {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedPlan {}

impl std::hash::Hash for SharedPlan {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

#[async_trait]
impl Worker for Deployer {
    const NAME: &'static str = "deployer";
    const CONSUMER: &'static str = fleet_runtime::topology::names::DEPLOYER;

    async fn build(context: &WorkerContext) -> Result<Self, BuildError> {
        let runtime = &context.runtime;
        let tenants = fleet_control::tenants(runtime).await?;
        Ok(Self {
            deployments: fleet_control::deployments(runtime).await?,
            results: fleet_control::deploy_results(runtime).await?,
            bundles: runtime
                .bucket(fleet_runtime::topology::names::DEPLOYMENTS)
                .await?,
            prepared: moka::future::Cache::new(PREPARED_BUNDLES),
            folds: moka::future::Cache::new(FOLD_LOCKS),
            tenants,
            commands: runtime
                .js
                .get_stream(
                    runtime
                        .topology
                        .subjects()
                        .stream(fleet_runtime::topology::names::DEPLOY_COMMANDS),
                )
                .await?,
            apps: fleet_control::AppOperations::new(
                runtime,
                &context.config,
                context.hooks.clone(),
            )
            .await?,
            hooks: context.hooks.clone(),
            publisher: runtime.publisher.clone(),
            subjects: runtime.topology.subjects(),
            batching: Batching {
                job_tenants: context.config.deployer.job_tenants,
                spread: context.config.worker.concurrency as usize,
            },
        })
    }
}

/// Deployments whose parsed bundle a worker keeps (a few run at once; each entry is one
/// bundle, up to the server's payload limit).
const PREPARED_BUNDLES: u64 = 16;

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
        let version = request.bundle.manifest.version.clone();
        let objects = match request.bundle.object_definitions() {
            Ok(objects) => objects,
            Err(rejected) => return self.reject(&id, &version, &rejected.to_string()).await,
        };
        if let Err(err) =
            fleet_schema::desired_schema(&fleet_schema::system::with_system_objects(&objects))
        {
            return self.reject(&id, &version, &err.to_string()).await;
        }
        // Delivered again (a crash after the record was written): carry on from the record.
        match self.deployments.get::<RolloutError>(id.as_str()).await {
            Ok(Some(current)) => return self.settled(current).await,
            Ok(None) => {}
            Err(e) => return Outcome::transient_error(&e),
        }
        let checksum = request
            .bundle
            .manifest
            .checksum
            .clone()
            .unwrap_or_else(|| request.bundle.contents_checksum());
        let bundle = serde_json::to_vec(&request.bundle).expect("a bundle serializes");
        let rollout = Start {
            version,
            checksum,
            app: None,
            stored: (bundle_key(&id), bundle),
        };
        self.start(&id, &request.target, &request.rollout, rollout)
            .await
    }

    /// `deploy.app_requested`: the package checked, then the same rollout as a bundle's, each
    /// tenant's job an app install or upgrade ([`fleet_control::AppOperations`]).
    async fn app_requested(&self, request: fleet_protocol::deploy::AppRolloutRequest) -> Outcome {
        let id = request.deployment_id.clone();
        let package = &request.app.package;
        let version = package.manifest.version.clone();
        if let Err(rejected) = package.object_definitions() {
            return self.reject(&id, &version, &rejected.to_string()).await;
        }
        match self.deployments.get::<RolloutError>(id.as_str()).await {
            Ok(Some(current)) => return self.settled(current).await,
            Ok(None) => {}
            Err(e) => return Outcome::transient_error(&e),
        }
        let stored = serde_json::to_vec(&request.app).expect("an app rollout serializes");
        let checksum = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&stored))
        };
        let rollout = Start {
            version,
            checksum,
            app: Some(package.manifest.name.to_string()),
            stored: (app_key(&id), stored),
        };
        self.start(&id, &request.target, &request.rollout, rollout)
            .await
    }

    /// Writes the targets, what the jobs need, and the record that starts the rollout.
    async fn start(
        &self,
        id: &DeploymentId,
        target: &fleet_protocol::deploy::DeployTarget,
        options: &fleet_protocol::deploy::RolloutOptions,
        start: Start,
    ) -> Outcome {
        let version = start.version;
        let targets = match self.targets(target).await {
            Ok(targets) if targets.is_empty() => {
                return self.reject(id, &version, "no tenant to deploy to").await;
            }
            Ok(targets) => targets,
            Err(e) => return Outcome::transient_error(&e),
        };
        let ends = match options.wave_ends(targets.len()) {
            Ok(ends) => ends,
            Err(e) => return self.reject(id, &version, &e.to_string()).await,
        };
        // The target list is written before the record that names it, under a name of this
        // attempt's own: a record only ever names a complete list.
        let attempt = format!(
            "{:x}{:x}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            std::process::id()
        );
        if let Err(e) = self.results.write_targets(id, &attempt, &targets).await {
            return Outcome::transient_error(&e);
        }
        let (key, bytes) = start.stored;
        if let Err(e) = self.bundles.put(key, bytes.into()).await {
            return Outcome::transient_error(&e);
        }
        let deployment = Deployment {
            id: id.clone(),
            version,
            checksum: start.checksum,
            status: RolloutStatus::Running,
            dry_run: options.dry_run,
            allow_destructive: options.allow_destructive,
            max_failure_ratio: options.max_failure_ratio,
            wave_ends: ends.into_iter().map(|end| end as u64).collect(),
            targets_attempt: attempt,
            app: start.app,
            ..Deployment::new(id.clone(), RolloutStatus::Running, Timestamp::now())
        };
        match self
            .deployments
            .transition(id.as_str(), |cur| {
                rollout::start(cur, &deployment, &Timestamp::now())
            })
            .await
        {
            Ok(Some(written)) => self.settled(written).await,
            Ok(None) => Outcome::transient("deployment vanished"),
            Err(e) => Outcome::transient_error(&e),
        }
    }

    async fn reject(&self, id: &DeploymentId, version: &str, reason: &str) -> Outcome {
        let deployment = Deployment {
            version: version.to_owned(),
            reason: Some(reason.to_owned()),
            finished_at: Some(Timestamp::now()),
            ..Deployment::new(id.clone(), RolloutStatus::Rejected, Timestamp::now())
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
            Ok(Some(written)) if written.state.status == RolloutStatus::Rejected => {
                if let outcome @ Outcome::Transient { .. } = self.settled(written).await {
                    return outcome;
                }
            }
            Ok(_) | Err(fleet_runtime::StateError::Refused(_)) => {}
            Err(e) => return Outcome::transient_error(&e),
        }
        Outcome::Poison {
            reason: format!("deployment {id} rejected: {reason}"),
        }
    }

    /// The tenants `target` names: a list as given; otherwise the active tenants — all, those
    /// on a plan, or those with an app installed (an operator's listing of the tenants' bucket,
    /// once per rollout).
    async fn targets(
        &self,
        target: &fleet_protocol::deploy::DeployTarget,
    ) -> Result<Vec<TenantId>, DeployerError> {
        let mut targets: Vec<TenantId> = if target.tenants.is_empty() {
            let with_app = match &target.has_app {
                Some(app) => Some(
                    self.apps
                        .installed_tenants(app)
                        .await
                        .map_err(DeployerError::Installs)?,
                ),
                None => None,
            };
            let mut active = Vec::new();
            for key in self.tenants.keys().await.map_err(DeployerError::Tenants)? {
                let Ok(tenant) = TenantId::parse(key) else {
                    continue;
                };
                if with_app.as_ref().is_some_and(|w| !w.contains(&tenant)) {
                    continue;
                }
                // From the leader: a replica catching up after a restart would leave out
                // tenants that became active meanwhile.
                let record = self
                    .tenants
                    .get_from_leader::<std::convert::Infallible>(tenant.as_str())
                    .await
                    .map_err(DeployerError::Tenants)?;
                let fits = record.is_some_and(|r| {
                    r.state.status() == TenantProvisioningStatus::Active
                        && target.plan.is_none_or(|plan| r.state.plan == plan)
                });
                if fits {
                    active.push(tenant);
                }
            }
            active
        } else {
            target.tenants.clone()
        };
        targets.sort();
        targets.dedup();
        Ok(targets)
    }

    /// Sums the results written since the record's watermark into it until the watermark
    /// reaches `at_least` (a result this worker wrote), or — with `None` — everything written
    /// so far. Returns the record as it then is.
    async fn fold(
        &self,
        id: &DeploymentId,
        at_least: Option<u64>,
    ) -> Result<Versioned<Deployment>, DeployerError> {
        let lock = self
            .folds
            .get_with_by_ref(id, async { Arc::new(tokio::sync::Mutex::new(())) })
            .await;
        let _one_at_a_time = lock.lock().await;
        for _ in 0..FOLD_RACES {
            let head = self.head(id).await?;
            if at_least.is_some_and(|sequence| head.state.folded >= sequence) {
                return Ok(head);
            }
            let (entries, through) = self
                .results
                .read_since(id, head.state.folded)
                .await
                .map_err(DeployerError::Results)?;
            let decision = rollout::fold(Some(&head), id, &entries, through, &Timestamp::now())
                .map_err(|e| DeployerError::Record(fleet_runtime::StateError::Refused(e)))?;
            let Decision::Write { next, event } = decision else {
                // Nothing new since the watermark.
                if at_least.is_none() {
                    return Ok(head);
                }
                continue;
            };
            if let Some(written) = self
                .deployments
                .try_write(id.as_str(), Some(&head), next, event)
                .await
                .map_err(DeployerError::Record)?
                && at_least.is_none_or(|sequence| written.state.folded >= sequence)
            {
                return Ok(written);
            }
            // Another worker folded first: its fold most likely covered ours.
        }
        Err(DeployerError::Contention(id.clone()))
    }

    async fn head(&self, id: &DeploymentId) -> Result<Versioned<Deployment>, DeployerError> {
        self.deployments
            .get::<RolloutError>(id.as_str())
            .await
            .map_err(DeployerError::Record)?
            .ok_or_else(|| DeployerError::Unknown(id.clone()))
    }

    /// Publishes what the deployment's state calls for unless that was done — the current
    /// wave's jobs, the rollback's jobs, the end-of-deployment hook — and records that it was
    /// (all idempotent: message ids derive from the deployment, its tenants and its resumes).
    async fn announce(&self, head: &Versioned<Deployment>) -> Result<(), DeployerError> {
        let d = &head.state;
        if d.announced {
            return Ok(());
        }
        match d.status {
            RolloutStatus::Running => self.publish_wave(d).await?,
            RolloutStatus::RollingBack => self.publish_rollbacks(d).await?,
            _ => self.finish_hook(d).await?,
        }
        let announcement = d.announcement();
        self.deployments
            .transition(d.id.as_str(), |cur| {
                rollout::announced(cur, &d.id, announcement, &Timestamp::now())
            })
            .await
            .map_err(DeployerError::Record)?;
        Ok(())
    }

    /// [`Self::announce`] as a job outcome.
    async fn settled(&self, head: Versioned<Deployment>) -> Outcome {
        match self.announce(&head).await {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::transient_error(&e),
        }
    }

    /// The current wave's jobs. A first pass publishes the wave's targets (read from their
    /// chunks); after a resume, every target up to the current wave's end, whose jobs skip the
    /// tenants with an outcome (so the retried ones, and any a cancel left unstarted, are
    /// done) — the same list, and so the same jobs, whenever the resume is announced again.
    async fn publish_wave(&self, d: &Deployment) -> Result<(), DeployerError> {
        let (range, suffix) = match d.resumes {
            0 => (d.wave_range(d.current_wave), String::new()),
            n => (0..d.wave_range(d.current_wave).end, format!(":resume-{n}")),
        };
        let tenants = self
            .results
            .targets(&d.id, &d.targets_attempt, range)
            .await
            .map_err(DeployerError::Results)?;
        self.publish_jobs(
            &d.id,
            tenants,
            d.current_wave as u32,
            false,
            &suffix,
            self.batching,
        )
        .await
    }

    /// The rollback's jobs: every tenant the deployment migrated (one listing; a finished
    /// deployment's results no longer change, so announcing again publishes the same jobs),
    /// whose jobs skip the tenants with a rollback result.
    async fn publish_rollbacks(&self, d: &Deployment) -> Result<(), DeployerError> {
        let entries = self
            .results
            .list(&d.id)
            .await
            .map_err(DeployerError::Results)?;
        let tenants = entries
            .into_iter()
            .filter_map(|w| match (w.key, w.entry) {
                (EntryKey::Deploy(t), ResultEntry::Outcome { outcome, .. })
                    if outcome.status == DeployStatus::Ready && !outcome.skipped =>
                {
                    Some(t)
                }
                _ => None,
            })
            .collect::<Vec<_>>();
        self.publish_jobs(&d.id, tenants, 0, true, ":rollback", self.batching)
            .await
    }

    /// Publishes `tenants` as jobs on `deploy.tenant.<id>`, cut by `batching`, a window of them
    /// at a time. A job is command version 2 with message id [`job_id`]; one tenant per job
    /// (`deployer.job_tenants = 1`, or a dead-lettered batch split up) is version 1 (no version
    /// header) with message id `<id>:<tenant><suffix>`, as releases before batching publish. Ids derive
    /// from the job's whole content, so publishing the same list again (a crash before the
    /// announcement was recorded) is deduplicated, and a job cut differently on the way again
    /// (a resume's list shrinks as results come in) is never mistaken for an earlier one.
    async fn publish_jobs(
        &self,
        id: &DeploymentId,
        tenants: Vec<TenantId>,
        wave: u32,
        rollback: bool,
        suffix: &str,
        batching: Batching,
    ) -> Result<(), DeployerError> {
        use futures::{StreamExt, TryStreamExt};
        let subject = self.subjects.full(&format!("deploy.tenant.{id}"));
        let single = batching.job_tenants == 1;
        futures::stream::iter(batching.split(tenants))
            .map(|tenant_ids| {
                let subject = &subject;
                async move {
                    let first = &tenant_ids[0];
                    let published = if single {
                        let job = fleet_protocol::TenantDeployJobV1 {
                            deployment_id: id.clone(),
                            tenant_id: first.clone(),
                            wave,
                            rollback,
                        };
                        let message_id = format!("{id}:{first}{suffix}");
                        self.publisher
                            .publish_json(subject, &message_id, &job, HeaderMap::new())
                            .await
                    } else {
                        let message_id = job_id(id, &tenant_ids, suffix);
                        let job = TenantDeployJob {
                            deployment_id: id.clone(),
                            tenant_ids,
                            wave,
                            rollback,
                        };
                        let mut headers = HeaderMap::new();
                        headers.insert(
                            fleet_runtime::VERSION_HEADER,
                            TenantDeployJob::VERSION.to_string().as_str(),
                        );
                        self.publisher
                            .publish_json(subject, &message_id, &job, headers)
                            .await
                    };
                    published
                        .map(|_| ())
                        .map_err(|source| DeployerError::Publish {
                            subject: subject.clone(),
                            source,
                        })
                }
            })
            .buffer_unordered(PUBLISH_WINDOW)
            .try_collect()
            .await
    }

    async fn finish_hook(&self, d: &Deployment) -> Result<(), DeployerError> {
        let (event, subject) = match d.status {
            RolloutStatus::Running | RolloutStatus::RollingBack => return Ok(()),
            RolloutStatus::Completed => ("deploy.completed", "hooks.deploy.completed"),
            RolloutStatus::RolledBack => ("deploy.rolled_back", "hooks.deploy.rolled_back"),
            _ => ("deploy.failed", "hooks.deploy.failed"),
        };
        let (ready, failed, pending) = d.counts();
        // A rollback's hook names the tenants it could not undo; the others, failed deploys.
        let rollback = d.status == RolloutStatus::RolledBack;
        let any = if rollback {
            d.rollback_tally.failed
        } else {
            failed
        };
        let failures: Vec<_> = if any > 0 {
            self.results
                .failures(&d.id, rollback)
                .await
                .map_err(DeployerError::Results)?
                .into_iter()
                .take(HOOK_FAILURES)
                .map(|(t, error)| json!({"tenantId": t, "error": error}))
                .collect()
        } else {
            Vec::new()
        };
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

    /// The parsed bundle of deployment `id` (read and parsed once per worker).
    async fn prepared(&self, d: &Deployment) -> Result<Arc<Prepared>, Outcome> {
        let id = &d.id;
        if let Some(prepared) = self.prepared.get(id).await {
            return Ok(prepared);
        }
        let key = if d.app.is_some() {
            app_key(id)
        } else {
            bundle_key(id)
        };
        let bytes = match self.bundles.get(&key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(Outcome::Poison {
                    reason: format!("{key} missing"),
                });
            }
            Err(e) => return Err(Outcome::transient_error(&e)),
        };
        let unreadable = |e: &dyn std::fmt::Display| Outcome::Poison {
            reason: format!("stored {key} unreadable: {e}"),
        };
        let prepared = if d.app.is_some() {
            Prepared::App(Box::new(
                serde_json::from_slice(&bytes).map_err(|e| unreadable(&e))?,
            ))
        } else {
            let bundle: DeployBundle =
                serde_json::from_slice(&bytes).map_err(|e| unreadable(&e))?;
            let objects = bundle.object_definitions().map_err(|e| unreadable(&e))?;
            Prepared::Bundle(Box::new(PreparedBundle::new(bundle, objects, bytes.len())))
        };
        let prepared = Arc::new(prepared);
        self.prepared.insert(id.clone(), prepared.clone()).await;
        Ok(prepared)
    }

    /// One tenant's part of an app rollout: the app operation every worker uses (record, work,
    /// hooks), or — in a dry run — its compatibility check alone.
    async fn app_tenant(
        &self,
        d: &Deployment,
        rollout: &fleet_protocol::deploy::AppRollout,
        tenant: &TenantId,
    ) -> Result<TenantOutcome, TenantError> {
        let operation = match rollout.operation {
            fleet_protocol::deploy::AppOperation::Install => fleet_apps::Operation::Install,
            fleet_protocol::deploy::AppOperation::Upgrade => fleet_apps::Operation::Upgrade,
        };
        let options = fleet_apps::InstallOptions {
            skip_seed_data: rollout.skip_seed_data,
            allow_destructive: d.allow_destructive,
            upgrade: operation == fleet_apps::Operation::Upgrade,
        };
        if d.dry_run {
            // The operation checked against the app's record and planned, nothing written.
            let plan = self
                .apps
                .plan(tenant, &rollout.package, operation, options)
                .await?;
            return Ok(TenantOutcome {
                changes: plan.changes(),
                breaking: plan.breaking(),
                plan: Some(plan.planned.plan.clone()),
                check: Some(fleet_protocol::AppCompatibilityCheck {
                    compatible: true,
                    issues: Vec::new(),
                }),
                ..TenantOutcome::ready(plan.statements())
            });
        }
        let applied = self
            .apps
            .install(tenant, &rollout.package, operation, options, |_| {})
            .await?;
        Ok(TenantOutcome {
            changes: applied.changes,
            breaking: applied.breaking,
            ..TenantOutcome::ready(applied.statements)
        })
    }

    /// A `deploy.tenant` job: its tenants one after another, each result recorded as soon as
    /// it is known, folded every [`FOLD_EVERY`] and at the end. The deployment is read again
    /// before a tenant when [`HEAD_REFRESH`] has passed, so a halt, or a cancel once carried
    /// out, stops a job between tenants. A `deploy.control` command shares the deployer's
    /// consumer, which delivers in stream order, behind every job of the wave published before
    /// it: so when a job starts and whenever it reads the head again, it looks for a cancel
    /// waiting in the stream and carries it out ([`Self::cancel_ahead`]) — a cancel sent
    /// mid-wave stops the rest of the wave at the next job's start or head refresh instead of
    /// after every queued job has run. A tenant that fails transiently does not hold up the
    /// others: the job is retried afterwards and its redelivery redoes only the tenants without
    /// a result.
    async fn tenant_job(&self, job: TenantDeployJob, attempt: u64) -> Outcome {
        let id = &job.deployment_id;
        let current = match self.head(id).await {
            Ok(current) => current,
            Err(DeployerError::Unknown(_)) => {
                return Outcome::Poison {
                    reason: format!("unknown deployment {id}"),
                };
            }
            Err(e) => return Outcome::transient_error(&e),
        };
        let wanted = working_status(&job);
        let current = if job.rollback {
            current
        } else {
            self.cancel_ahead(current).await
        };
        if current.state.status != wanted {
            // Cancelled, halted or finished: nothing to do but what the state calls for.
            return self.settled(current).await;
        }
        // The run of the rollout this job belongs to: a cancel and a resume in between make
        // the resume's own jobs carry on with the rest, so this one stops.
        let resumes = current.state.resumes;
        let mut current = current;
        // The bundle or app operation, parsed once per worker and deployment (a rollback uses
        // each tenant's stored plan instead).
        let prepared = if job.rollback {
            None
        } else {
            match self.prepared(&current.state).await {
                Ok(prepared) => Some(prepared),
                Err(outcome) => return outcome,
            }
        };
        let (mut read_at, mut folded_at) = (Instant::now(), Instant::now());
        // The highest stream sequence of a result this job wrote or found: the fold target.
        let mut recorded: Option<u64> = None;
        let mut retry: Option<String> = None;
        for tenant in &job.tenant_ids {
            if read_at.elapsed() >= HEAD_REFRESH {
                current = match self.head(id).await {
                    Ok(current) if !job.rollback => self.cancel_ahead(current).await,
                    Ok(current) => current,
                    Err(e) => {
                        retry = Some(error_chain(&e));
                        break;
                    }
                };
                read_at = Instant::now();
            }
            if current.state.status != wanted || current.state.resumes != resumes {
                // Cancelled, halted, finished or resumed since: the rest is left as it is.
                break;
            }
            match self
                .tenant(&current.state, &job, prepared.as_deref(), tenant, attempt)
                .await
            {
                Ok(sequence) => recorded = recorded.max(Some(sequence)),
                Err(reason) => {
                    tracing::warn!(deployment = %id, %tenant, error = %reason, "tenant job failed transiently; retrying");
                    retry.get_or_insert(reason);
                }
            }
            // A long job's results count while it runs (the deployment's progress, its
            // failure limit), not only at its end.
            if folded_at.elapsed() >= FOLD_EVERY
                && let Some(sequence) = recorded
            {
                if let outcome @ (Outcome::Transient { .. } | Outcome::Retry { .. }) =
                    self.counted(id, sequence).await
                {
                    tracing::debug!(deployment = %id, ?outcome, "a fold within a job failed; the job's last fold retries it");
                }
                folded_at = Instant::now();
            }
        }
        let settled = match recorded {
            Some(sequence) => self.counted(id, sequence).await,
            // Nothing recorded: do what the deployment's state calls for.
            None => match self.head(id).await {
                Ok(head) => self.settled(head).await,
                Err(e) => Outcome::transient_error(&e),
            },
        };
        match (retry, settled) {
            (Some(reason), Outcome::Done) => Outcome::transient(reason),
            (_, settled) => settled,
        }
    }

    /// One tenant of a job: its result recorded (or the one recorded by an earlier delivery
    /// found), with the hooks and audit it calls for. Returns the result's stream sequence;
    /// `Err` with the reason when it failed transiently (nothing recorded).
    async fn tenant(
        &self,
        d: &Deployment,
        job: &TenantDeployJob,
        prepared: Option<&Prepared>,
        tenant: &TenantId,
        attempt: u64,
    ) -> Result<u64, String> {
        let id = &d.id;
        let key = result_key(job, tenant);
        // Delivered again, or one of the jobs of a resume or a rollback (listed from every
        // target, not only the ones without a result, so that announcing them again publishes
        // the same jobs): recorded already? Then it only has to count. (A first delivery of a
        // wave's job skips the read: should another job of this tenant have recorded a result
        // meanwhile, the work is repeated — a tenant at the bundle's version is skipped, a
        // migration whose schema changed since its plan is refused and retried — and the
        // first result stands.)
        if attempt > 1 || d.resumes > 0 || job.rollback {
            match self.results.get(id, &key).await {
                Ok(Some((ResultEntry::Outcome { .. }, sequence))) => return Ok(sequence),
                Ok(_) => {}
                Err(e) => return Err(error_chain(&e)),
            }
        }
        // `FLEET_CRASH_POINT=deploy.tenant:<tenant>`: a worker that dies at this tenant (tests).
        fleet_tenantdb::crashpoint::reached_for("deploy.tenant", tenant.as_str());
        let started = Instant::now();
        let outcome = if let Some(prepared) = prepared {
            let done = match prepared {
                Prepared::Bundle(bundle) => self.deploy_tenant(d, bundle, tenant).await,
                Prepared::App(rollout) => self.app_tenant(d, rollout, tenant).await,
            };
            match done {
                Ok(outcome) => outcome,
                Err(e) if e.is_transient() => return Err(error_chain(&e)),
                Err(e) => TenantOutcome {
                    check: e.incompatibility(),
                    ..TenantOutcome::failed(error_chain(&e))
                },
            }
        } else {
            match self.rollback_tenant(d, tenant).await {
                Ok(statements) => TenantOutcome::ready(statements),
                Err(e) if e.is_transient() => return Err(error_chain(&e)),
                Err(e) => TenantOutcome::failed(error_chain(&e)),
            }
        };
        let outcome = TenantOutcome {
            duration_ms: started.elapsed().as_millis() as u64,
            ..outcome
        };
        self.record(d, job, tenant, &key, outcome).await
    }

    /// Writes a tenant's outcome: `hooks.deploy.tenant_failed` for a failed deploy, a quota
    /// audit for a tenant the deployment changed, then the result entry (the first result
    /// stands). Returns the sequence of the entry that stands.
    async fn record(
        &self,
        d: &Deployment,
        job: &TenantDeployJob,
        tenant: &TenantId,
        key: &EntryKey,
        outcome: TenantOutcome,
    ) -> Result<u64, String> {
        let id = &d.id;
        if outcome.status == DeployStatus::Failed && !job.rollback {
            let hook = Hook {
                subject: "hooks.deploy.tenant_failed".to_owned(),
                event: "deploy.tenant_failed".to_owned(),
                version: 1,
                entity: tenant.to_string(),
                transition: format!("{id}:{}", d.resumes),
                at: chrono::Utc::now(),
                data: json!({"deploymentId": id, "tenantId": tenant, "error": outcome.error}),
            };
            self.hooks
                .publish(&hook)
                .await
                .map_err(|e| error_chain(&e))?;
        }
        // A tenant this deployment changed is audited now, not at the next quota tick.
        let changed = outcome.status == DeployStatus::Ready
            && !outcome.skipped
            && outcome.statements > 0
            && !d.dry_run
            && !job.rollback;
        if changed {
            let audit = fleet_protocol::quota::QuotaAuditJob {
                tenant_id: tenant.clone(),
                bucket: chrono::Utc::now().timestamp().max(0) as u64,
            };
            self.publisher
                .publish_json(
                    &self.subjects.full(&format!("quota.audit.{tenant}")),
                    &format!("quota-audit:deploy:{id}:{tenant}"),
                    &audit,
                    HeaderMap::new(),
                )
                .await
                .map_err(|e| error_chain(&e))?;
        }
        let entry = ResultEntry::Outcome {
            wave: job.wave,
            outcome,
        };
        self.results
            .record(id, key, &entry)
            .await
            .map_err(|e| error_chain(&e))
    }

    /// [`Handler::dead_lettered`] for a tenant job, once: split it, or give its tenants
    /// without a result a failed one and fold them. `Err` when the store or server failed
    /// (nothing half-done matters: every step is idempotent).
    async fn dead_letter_job(
        &self,
        job: &TenantDeployJob,
        letter: &fleet_runtime::DeadLetter,
    ) -> Result<(), String> {
        let id = &job.deployment_id;
        let current = match self.head(id).await {
            Ok(current) => current,
            // The deployment is gone: nothing to give a result to.
            Err(DeployerError::Unknown(_)) => return Ok(()),
            Err(e) => return Err(error_chain(&e)),
        };
        let wanted = working_status(job);
        if current.state.status != wanted {
            return Ok(());
        }
        // The results already there (their highest sequence), and the tenants without one.
        let mut recorded: Option<u64> = None;
        let mut pending = Vec::new();
        for tenant in &job.tenant_ids {
            match self.results.get(id, &result_key(job, tenant)).await {
                Ok(Some((ResultEntry::Outcome { .. }, sequence))) => {
                    recorded = recorded.max(Some(sequence));
                }
                Ok(_) => pending.push(tenant),
                Err(e) => return Err(error_chain(&e)),
            }
        }
        if letter.reason == "max_deliver" && pending.len() > 1 {
            let one_each = Batching {
                job_tenants: 1,
                spread: 1,
            };
            let pending = pending.into_iter().cloned().collect();
            return self
                .publish_jobs(id, pending, job.wave, job.rollback, ":split", one_each)
                .await
                .map_err(|e| error_chain(&e));
        }
        let error = format!(
            "the job was dead-lettered ({}) after {} attempt(s): {}",
            letter.reason, letter.attempts, letter.error
        );
        for tenant in pending {
            let outcome = TenantOutcome::failed(error.clone());
            let sequence = self
                .record(
                    &current.state,
                    job,
                    tenant,
                    &result_key(job, tenant),
                    outcome,
                )
                .await?;
            recorded = recorded.max(Some(sequence));
        }
        match recorded {
            Some(sequence) => match self.counted(id, sequence).await {
                Outcome::Transient { reason } | Outcome::Retry { reason, .. } => Err(reason),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// A running deployment's head after carrying out an operator's cancel that is waiting in
    /// the stream: the last `deploy.control.<id>` message, when it is a cancel the record does
    /// not show as carried out. A wave's jobs are published together, ahead of any command
    /// sent while they run, so a cancel's own delivery comes only after every queued job of
    /// the wave; each job looks for one when it starts and whenever it reads the head again,
    /// so the rest of the wave stops within a job's first tenant. The cancel is recorded with
    /// its place in the stream, which makes its own delivery (and any command sent before it)
    /// stale. Only a cancel is taken early: a resume's retry markers must come first, and a
    /// cancel followed by a resume leaves the deployment running, as in order. Anything else —
    /// no message, a read or write that failed, a message that is no cancel — leaves the head
    /// as it is, for the command's delivery to carry out in order.
    async fn cancel_ahead(&self, head: Versioned<Deployment>) -> Versioned<Deployment> {
        if head.state.status != RolloutStatus::Running {
            return head;
        }
        let id = head.state.id.clone();
        let subject = format!("deploy.control.{id}");
        let message = match self
            .commands
            .get_last_raw_message_by_subject(&self.subjects.full(&subject))
            .await
        {
            Ok(message) => message,
            Err(e) => {
                if e.kind()
                    != async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                {
                    tracing::debug!(deployment = %id, error = %e, "looking for a queued cancel failed; its delivery carries it out");
                }
                return head;
            }
        };
        let published = fleet_runtime::jobs::server_time(message.time);
        let sequence = message.sequence;
        let delivery = Delivery {
            subject,
            payload: message.payload,
            headers: message.headers,
            attempt: 1,
            sequence,
            published_at: published.clone(),
        };
        let Ok(DeployCommand::Control(control)) = DeployCommand::parse(&delivery) else {
            return head;
        };
        if control.action != fleet_protocol::DeployControlAction::Cancel {
            return head;
        }
        let mark = match self.mark(sequence, published.as_ref()).await {
            Ok(Some(mark)) => mark,
            Ok(None) => return head,
            Err(e) => {
                tracing::debug!(deployment = %id, error = %e, "reading the command stream failed; a queued cancel's delivery carries it out");
                return head;
            }
        };
        if head.state.stale_control(Some(&mark)) {
            return head;
        }
        match self
            .deployments
            .transition(id.as_str(), |cur| {
                rollout::cancel(cur, &id, Some(&mark), &Timestamp::now())
            })
            .await
        {
            Ok(Some(written)) => {
                tracing::info!(deployment = %id, sequence, "cancel carried out ahead of the wave's queued jobs");
                written
            }
            Ok(None) => head,
            Err(e) => {
                tracing::debug!(deployment = %id, error = %e, "a queued cancel could not be carried out early; its delivery carries it out");
                head
            }
        }
    }

    /// Folds until the result at `sequence` counts, then publishes what that opened up (the
    /// next wave, the end-of-deployment hook).
    async fn counted(&self, id: &DeploymentId, sequence: u64) -> Outcome {
        match self.fold(id, Some(sequence)).await {
            Ok(head) => self.settled(head).await,
            Err(e) => Outcome::transient_error(&e),
        }
    }

    /// `deploy.control.<id>`: resume or cancel, the operator's commands (`fleetctl deploy
    /// resume|cancel`), carried out here so only the deployer writes deployment state. They
    /// take effect in stream order (the delivery's `sequence` and `published` time; a command
    /// without them is carried out unplaced): one the record shows as carried out or
    /// superseded — a cancel a job took from the stream ahead of its turn
    /// ([`Self::cancel_ahead`]) — changes nothing.
    async fn control(
        &self,
        control: fleet_protocol::DeployControl,
        sequence: u64,
        published: Option<&Timestamp>,
    ) -> Outcome {
        let id = control.deployment_id;
        let mark = match self.mark(sequence, published).await {
            Ok(mark) => mark,
            Err(e) => return Outcome::transient_error(&e),
        };
        let now = Timestamp::now();
        let written = match control.action {
            fleet_protocol::DeployControlAction::Resume => {
                if let Err(e) = self.mark_failed_for_retry(&id, mark.as_ref()).await {
                    return match e {
                        DeployerError::Unknown(_) => Outcome::Poison {
                            reason: format!("unknown deployment {id}"),
                        },
                        e => Outcome::transient_error(&e),
                    };
                }
                self.deployments
                    .transition(id.as_str(), |cur| {
                        rollout::resume(cur, &id, mark.as_ref(), &now)
                    })
                    .await
            }
            fleet_protocol::DeployControlAction::Cancel => {
                self.deployments
                    .transition(id.as_str(), |cur| {
                        rollout::cancel(cur, &id, mark.as_ref(), &now)
                    })
                    .await
            }
        };
        match written {
            Ok(Some(current)) => self.settled(current).await,
            Ok(None) => Outcome::Poison {
                reason: format!("unknown deployment {id}"),
            },
            Err(fleet_runtime::StateError::Refused(e)) => Outcome::poison(&e),
            Err(e) => Outcome::transient_error(&e),
        }
    }

    /// Where the command at stream sequence `sequence`, stored at `published`, is: with the
    /// command stream's creation time, read from the server (a stream created again or
    /// restored from a backup has another). `None` without a sequence or a time (a command
    /// handed over without its place in the stream).
    async fn mark(
        &self,
        sequence: u64,
        published: Option<&Timestamp>,
    ) -> Result<Option<rollout::CommandMark>, DeployerError> {
        let Some(published) = published.filter(|_| sequence != 0) else {
            return Ok(None);
        };
        let info = self
            .commands
            .get_info()
            .await
            .map_err(|e| DeployerError::Commands(error_chain(&e)))?;
        Ok(
            fleet_runtime::jobs::server_time(info.created).map(|stream| rollout::CommandMark {
                sequence,
                stream,
                published: published.clone(),
            }),
        )
    }

    /// Before a resume (at `mark` in the stream) of a halted or cancelled deployment:
    /// each failed outcome becomes a retry marker, and every entry is folded, so the resumed
    /// rollout counts only what stands. Nothing for a stale resume.
    async fn mark_failed_for_retry(
        &self,
        id: &DeploymentId,
        mark: Option<&rollout::CommandMark>,
    ) -> Result<(), DeployerError> {
        let head = self.head(id).await?;
        if !matches!(
            head.state.status,
            RolloutStatus::Halted | RolloutStatus::Cancelled
        ) || head.state.stale_control(mark)
        {
            return Ok(());
        }
        for written in self
            .results
            .list(id)
            .await
            .map_err(DeployerError::Results)?
        {
            if let (EntryKey::Deploy(tenant), ResultEntry::Outcome { outcome, .. }) =
                (&written.key, &written.entry)
                && outcome.status == DeployStatus::Failed
            {
                self.results
                    .mark_retry(id, tenant, written.sequence)
                    .await
                    .map_err(DeployerError::Results)?;
            }
        }
        self.fold(id, None).await.map(|_| ())
    }

    async fn rollback_requested(&self, id: DeploymentId) -> Outcome {
        if let Ok(Some(current)) = self.deployments.get::<RolloutError>(id.as_str()).await
            && let Some(app) = &current.state.app
        {
            return Outcome::Poison {
                reason: format!(
                    "{id} is a rollout of app {app}: apps are not rolled back — upgrade or uninstall them"
                ),
            };
        }
        // Everything recorded so far counts before the rollback fixes what it undoes.
        if let Err(e) = self.fold(&id, None).await {
            return match e {
                DeployerError::Unknown(_) => Outcome::Poison {
                    reason: format!("unknown deployment {id}"),
                },
                e => Outcome::transient_error(&e),
            };
        }
        match self
            .deployments
            .transition(id.as_str(), |cur| {
                rollout::start_rollback(cur, &id, &Timestamp::now())
            })
            .await
        {
            Ok(Some(current)) => self.settled(current).await,
            Ok(None) => Outcome::Poison {
                reason: format!("unknown deployment {id}"),
            },
            Err(fleet_runtime::StateError::Refused(e)) => Outcome::poison(&e),
            Err(e) => Outcome::transient_error(&e),
        }
    }

    async fn rollback_tenant(&self, d: &Deployment, tenant: &TenantId) -> Result<u64, TenantError> {
        let (_, conn) = self.tenant_connection(tenant).await?;
        // Only the last deployment applied can be undone: its reverse plan assumes the schema
        // it left, which a later deployment changed.
        if let Some(latest) = latest_deployment(&conn).await?
            && latest.deployment_id != d.id.as_str()
            && count(
                &conn,
                "SELECT count(*) FROM sys_deployment WHERE deployment_id = ?1",
                vec![SqlValue::Text(d.id.to_string())],
            )
            .await?
                > 0
        {
            return Err(TenantError::Superseded(latest.deployment_id));
        }
        // `SELECT *`: a deployment recorded before `previous_metadata` existed has no such column.
        let mut rows = conn
            .query(
                "SELECT * FROM sys_deployment WHERE deployment_id = ?1",
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
        let column = |name: &str| {
            (0..row.column_count())
                .find(|&i| row.column_name(i) == Some(name))
                .and_then(|i| row.get_value(i).ok())
        };
        let plan: fleet_protocol::MigrationPlan = match column("rollback_plan") {
            Some(SqlValue::Text(text)) => {
                serde_json::from_str(&text).map_err(TenantError::StoredPlan)?
            }
            _ => return Err(TenantError::NotReversible),
        };
        // The registry entries the deployment replaced, back as they were.
        let snapshot: fleet_schema::registry::Snapshot = match column("previous_metadata") {
            Some(SqlValue::Text(text)) => {
                serde_json::from_str(&text).map_err(TenantError::StoredPlan)?
            }
            _ => Vec::new(),
        };
        // The statement must be finished before the plan's DDL runs on this connection.
        drop(row);
        drop(rows);
        let mut after = fleet_schema::registry::restore(&snapshot);
        after.push(BoundStatement {
            sql: "DELETE FROM sys_deployment WHERE deployment_id = ?1".to_owned(),
            params: vec![SqlValue::Text(d.id.to_string())],
        });
        fleet_schema::apply_plan_with(&conn, &plan, &after)
            .await
            .map_err(TenantError::Apply)?;
        Ok(plan.statements.len() as u64)
    }

    /// The tenant's record and a connection opened with its stored token (active tenants only).
    async fn tenant_connection(
        &self,
        tenant: &TenantId,
    ) -> Result<(TenantRecord, libsql::Connection), TenantError> {
        Ok(self.apps.connector().connect(tenant).await?)
    }

    async fn deploy_tenant(
        &self,
        d: &Deployment,
        prepared: &PreparedBundle,
        tenant: &TenantId,
    ) -> Result<TenantOutcome, TenantError> {
        // validating: the tenant is active, its stored token opens its database
        let (record, conn) = self.tenant_connection(tenant).await?;
        let objects = &prepared.objects;
        match latest_deployment(&conn).await? {
            // This deployment's own row: an earlier delivery migrated the tenant and died
            // before its result was written. Migrated, not skipped (a rollback undoes it).
            Some(latest) if latest.deployment_id == d.id.as_str() && !d.dry_run => {
                return Ok(TenantOutcome::ready(latest.statements));
            }
            // Already at the bundle's version (the last deployment applied was this one's).
            Some(latest) if latest.version == d.version && latest.checksum == d.checksum => {
                return Ok(TenantOutcome {
                    skipped: true,
                    ..TenantOutcome::ready(0)
                });
            }
            _ => {}
        }
        // Quota gate: objects and deployments per day (the one enforcement function).
        let objects_quota = fleet_tenants::quota::enforce(
            "maxObjects",
            objects.len() as u64,
            record.quotas.max_objects,
        );
        if !objects_quota.allowed {
            return Err(TenantError::Quota(quota(&objects_quota)));
        }
        if let Some(max) = record.quotas.max_deployments_per_day {
            let today = count(&conn, "SELECT count(*) FROM sys_deployment WHERE applied_at >= strftime('%Y-%m-%d', 'now')", vec![]).await?;
            let deployments =
                fleet_tenants::quota::enforce("maxDeploymentsPerDay", today + 1, Some(max));
            if !deployments.allowed {
                return Err(TenantError::Quota(quota(&deployments)));
            }
        }
        // diffing, from the schema as it is now: checked again inside the migration's
        // transaction, where no other writer can change it until the commit.
        let schema_version = count(&conn, "PRAGMA schema_version", vec![]).await?;
        let options = PlanOptions {
            allow_destructive: d.allow_destructive,
        };
        let planned = match &prepared.plans {
            Some(plans) => plans.plan(&conn, options).await,
            None => fleet_schema::plan_database(&conn, &prepared.desired, options)
                .await
                .map(Arc::new),
        };
        let planned = match planned {
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
            return Ok(TenantOutcome {
                plan: Some(planned.plan.clone()),
                ..outcome
            });
        }
        // migrating + registering, in one transaction
        let registry = prepared.registry(d, &planned);
        let guards = migration_guards(schema_version, &d.id);
        fleet_schema::apply_plan_guarded(&conn, &planned.plan, &guards, &registry)
            .await
            .map_err(|e| match e {
                fleet_schema::ApplyError::Guard(why) => TenantError::Raced(why),
                e => TenantError::Apply(e),
            })?;
        Ok(outcome)
    }
}

/// The status a deployment has while `job`'s kind of work is due: `rolling_back` for a
/// rollback's job, `running` for a wave's.
fn working_status(job: &TenantDeployJob) -> RolloutStatus {
    if job.rollback {
        RolloutStatus::RollingBack
    } else {
        RolloutStatus::Running
    }
}

/// Where a job's result for `tenant` is kept: its deploy result, or its rollback result.
fn result_key(job: &TenantDeployJob, tenant: &TenantId) -> EntryKey {
    if job.rollback {
        EntryKey::Rollback(tenant.clone())
    } else {
        EntryKey::Deploy(tenant.clone())
    }
}

/// What a tenant's migration checks inside its transaction before it changes anything: the
/// schema is still the one it was planned from (`PRAGMA schema_version`, which SQLite bumps on
/// every schema change, read before planning), and no other job applied this deployment
/// meanwhile (a job of a resume, or one delivered twice, working the same tenant at once).
fn migration_guards(schema_version: u64, id: &DeploymentId) -> [fleet_schema::Guard; 2] {
    [
        fleet_schema::Guard {
            sql: "SELECT 1 FROM pragma_schema_version WHERE schema_version != ?1".into(),
            params: vec![SqlValue::Integer(schema_version as i64)],
            refusal: "the schema changed since it was planned".into(),
        },
        fleet_schema::Guard {
            sql: "SELECT 1 FROM sys_deployment WHERE deployment_id = ?1".into(),
            params: vec![SqlValue::Text(id.to_string())],
            refusal: format!("deployment {id} was applied meanwhile"),
        },
    ]
}

/// A refused quota as the tenant's error text (the upstream result, as JSON).
fn quota(result: &QuotaEnforcementResult) -> String {
    serde_json::to_string(result).unwrap_or_default()
}

/// The last deployment applied to a tenant (its `sys_deployment` row).
struct Applied {
    deployment_id: String,
    version: String,
    checksum: String,
    statements: u64,
}

/// The tenant's last applied deployment, if any.
async fn latest_deployment(conn: &libsql::Connection) -> Result<Option<Applied>, TenantError> {
    let sql = "SELECT deployment_id, version, checksum, statements FROM sys_deployment \
               ORDER BY applied_at DESC, rowid DESC LIMIT 1";
    let query = |transient| {
        move |source| TenantError::Query {
            what: "the last applied deployment".into(),
            source,
            transient,
        }
    };
    let mut rows = conn.query(sql, ()).await.map_err(query(false))?;
    let Some(row) = rows.next().await.map_err(query(true))? else {
        return Ok(None);
    };
    let text = |i| match row.get_value(i) {
        Ok(SqlValue::Text(t)) => t,
        _ => String::new(),
    };
    let statements = match row.get_value(3) {
        Ok(SqlValue::Integer(n)) => n.max(0) as u64,
        Ok(SqlValue::Real(x)) => x.max(0.0) as u64,
        _ => 0,
    };
    Ok(Some(Applied {
        deployment_id: text(0),
        version: text(1),
        checksum: text(2),
        statements,
    }))
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

/// Source recorded on the registry rows a deployment writes (its owner is the platform).
fn registry_source(d: &Deployment) -> String {
    format!("deployment:{}", d.id)
}

/// The bundle's metadata as the platform's whole registered set in `sys_metadata` (the entries
/// it no longer has deleted), and the deployment into `sys_deployment` with its reverse plan and
/// the registry entries it replaced — so a rollback restores both.
pub fn registry_statements(
    d: &Deployment,
    bundle: &DeployBundle,
    plan: &fleet_protocol::MigrationPlan,
    registered: &[fleet_schema::registry::Registered],
) -> Vec<BoundStatement> {
    let statements = plan.statements.len();
    let rollback = fleet_schema::rollback_plan(plan)
        .and_then(|p| serde_json::to_string(&p).ok())
        .map_or(SqlValue::Null, SqlValue::Text);
    let items = fleet_schema::registry::bundle_items(bundle);
    let (mut out, snapshot) = fleet_schema::registry::replace(
        registered,
        &fleet_schema::Owner::Platform,
        &items,
        &d.version,
        &registry_source(d),
    );
    let previous = serde_json::to_string(&snapshot).map_or(SqlValue::Null, SqlValue::Text);
    out.push(BoundStatement {
        sql: "INSERT INTO sys_deployment (id, deployment_id, version, checksum, status, statements, applied_at, rollback_plan, previous_metadata) \
              VALUES (?1, ?1, ?2, ?3, 'ready', ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?5, ?6) ON CONFLICT (deployment_id) DO NOTHING"
            .to_owned(),
        params: vec![
            SqlValue::Text(d.id.to_string()),
            SqlValue::Text(d.version.clone()),
            SqlValue::Text(d.checksum.clone()),
            SqlValue::Real(statements as f64),
            rollback,
            previous,
        ],
    });
    out
}

#[async_trait]
impl Handler for Deployer {
    /// 1 for every command; 2 for the batched `deploy.tenant` jobs.
    fn versions(&self) -> &[u32] {
        &[1, TenantDeployJob::VERSION]
    }

    /// A `deploy.tenant` job out of deliveries (retries exhausted, or workers killed on every
    /// attempt) or refused as poison (its bundle unreadable). Out of deliveries with several of
    /// its tenants still without a result, it is split: each of them gets a job of its own, so
    /// one tenant that crashes or hangs its worker on every attempt (and is reached first by
    /// each redelivery) fails alone, not the batch-mates it kept from being tried. Otherwise
    /// each tenant without a result gets a failed one saying so, and the results are folded —
    /// the deployment moves on (its failure limit, its end, `fleetctl deploy resume`) instead
    /// of waiting for results that never come.
    async fn dead_lettered(&self, delivery: &Delivery, letter: &fleet_runtime::DeadLetter) {
        let Ok(DeployCommand::TenantJob(job)) = DeployCommand::parse(delivery) else {
            return;
        };
        // Idempotent (results already there stand, split jobs have ids of their own), so a
        // store or server hiccup is retried here: the message leaves the stream afterwards,
        // and nothing else would give these tenants a result.
        let mut pause = std::time::Duration::from_millis(500);
        for attempt in 1..=DEAD_LETTER_TRIES {
            match self.dead_letter_job(&job, letter).await {
                Ok(()) => return,
                Err(e) if attempt == DEAD_LETTER_TRIES => {
                    tracing::error!(deployment = %job.deployment_id, error = %e, "a dead-lettered job's tenants could not be given a result; cancel and resume the deployment to redo them");
                }
                Err(e) => {
                    tracing::warn!(deployment = %job.deployment_id, error = %e, attempt, "settling a dead-lettered job failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }

    async fn handle(&self, delivery: Delivery) -> Outcome {
        match DeployCommand::parse(&delivery) {
            Ok(DeployCommand::Request(request)) => self.requested(*request).await,
            Ok(DeployCommand::AppRequest(request)) => self.app_requested(*request).await,
            Ok(DeployCommand::Rollback(id)) => self.rollback_requested(id).await,
            Ok(DeployCommand::Control(control)) => {
                self.control(control, delivery.sequence, delivery.published_at.as_ref())
                    .await
            }
            Ok(DeployCommand::TenantJob(job)) => self.tenant_job(job, delivery.attempt).await,
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
            Ok(DeployCommand::TenantJob(job)) if job.tenant_ids == ids(&["acme"])
        ));
    }

    fn ids(names: &[&str]) -> Vec<TenantId> {
        names.iter().map(|n| TenantId::parse(*n).unwrap()).collect()
    }

    fn versioned(subject: &str, version: &str, payload: serde_json::Value) -> Delivery {
        let mut delivery = Delivery::new(subject, payload.to_string());
        delivery
            .headers
            .insert(fleet_runtime::VERSION_HEADER, version);
        delivery
    }

    #[test]
    fn a_tenant_job_is_read_in_both_versions_and_other_commands_only_in_version_1() {
        // Version 1 (no header): one tenant, as releases before batching publish it.
        let v1 = DeployCommand::parse(&Delivery::new(
            "deploy.tenant.d1",
            json!({"deploymentId": "d1", "tenantId": "acme", "wave": 2, "rollback": true})
                .to_string(),
        ))
        .unwrap();
        assert_eq!(
            v1,
            DeployCommand::TenantJob(TenantDeployJob {
                deployment_id: DeploymentId::parse("d1").unwrap(),
                tenant_ids: ids(&["acme"]),
                wave: 2,
                rollback: true,
            })
        );
        // Version 2: a batch.
        let v2 = DeployCommand::parse(&versioned(
            "deploy.tenant.d1",
            "2",
            json!({"deploymentId": "d1", "tenantIds": ["a", "b", "c"], "wave": 1}),
        ))
        .unwrap();
        assert!(
            matches!(v2, DeployCommand::TenantJob(job) if job.tenant_ids == ids(&["a", "b", "c"]) && !job.rollback)
        );
        // A batch in a version-1 message, an empty or repeating batch: poison, with the path.
        let wrong = DeployCommand::parse(&Delivery::new(
            "deploy.tenant.d1",
            json!({"deploymentId": "d1", "tenantIds": ["a"], "wave": 1}).to_string(),
        ))
        .unwrap_err();
        assert!(reason(&wrong).contains("tenantId"), "{}", reason(&wrong));
        for (tenants, expected) in [
            (json!([]), "0 tenants"),
            (json!(["a", "b", "a"]), "tenantIds.2"),
        ] {
            let bad = DeployCommand::parse(&versioned(
                "deploy.tenant.d1",
                "2",
                json!({"deploymentId": "d1", "tenantIds": tenants, "wave": 1}),
            ))
            .unwrap_err();
            assert!(reason(&bad).contains(expected), "{}", reason(&bad));
        }
        let control = DeployCommand::parse(&versioned(
            "deploy.control.d1",
            "2",
            json!({"deploymentId": "d1", "action": "cancel"}),
        ))
        .unwrap_err();
        assert!(
            reason(&control).contains("version 2 of deploy.control.d1 is not supported"),
            "{}",
            reason(&control)
        );
    }

    #[tokio::test]
    async fn a_migration_planned_before_another_job_changed_the_schema_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = fleet_schema::open_local(&dir.path().join("t.db"))
            .await
            .unwrap();
        conn.execute_batch(
            "CREATE TABLE sys_deployment (deployment_id TEXT PRIMARY KEY); CREATE TABLE a (x);",
        )
        .await
        .unwrap();
        let id = DeploymentId::parse("d1").unwrap();
        let version = count(&conn, "PRAGMA schema_version", vec![]).await.unwrap();
        let plan = |sql: &str| fleet_protocol::MigrationPlan {
            statements: vec![fleet_protocol::MigrationStatement {
                sql: sql.into(),
                reversible: true,
                rollback_sql: None,
                order: 0,
            }],
            dialect: "sqlite".into(),
            reversible: true,
            estimated_duration_ms: None,
        };
        let apply = async |sql: &str, planned_at: u64| {
            fleet_schema::apply_plan_guarded(
                &conn,
                &plan(sql),
                &migration_guards(planned_at, &id),
                &[],
            )
            .await
        };
        // Unchanged since the plan: applied.
        apply("CREATE TABLE b (x)", version).await.unwrap();
        // Planned from the schema before that change: refused, nothing done.
        let raced = apply("CREATE TABLE c (x)", version).await.unwrap_err();
        assert!(
            matches!(&raced, fleet_schema::ApplyError::Guard(why) if why.contains("schema changed")),
            "{raced:?}"
        );
        // This deployment applied meanwhile (by another job), schema unchanged: refused.
        conn.execute("INSERT INTO sys_deployment VALUES ('d1')", ())
            .await
            .unwrap();
        let now = count(&conn, "PRAGMA schema_version", vec![]).await.unwrap();
        let applied = apply("CREATE TABLE c (x)", now).await.unwrap_err();
        assert!(
            matches!(&applied, fleet_schema::ApplyError::Guard(why) if why.contains("applied meanwhile")),
            "{applied:?}"
        );
        let tables = count(
            &conn,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'c'",
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(tables, 0);
    }

    #[tokio::test]
    async fn a_plan_the_memo_shares_gets_its_registry_statements_built_once() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/crm-v2.bundle.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let bundle: DeployBundle = serde_json::from_str(&text).unwrap();
        let objects = bundle.object_definitions().unwrap();
        let prepared = PreparedBundle::new(bundle, objects, text.len());
        let d = Deployment {
            version: "2.0.0".into(),
            checksum: "c".into(),
            ..Deployment::new(
                DeploymentId::parse("d1").unwrap(),
                RolloutStatus::Running,
                Timestamp::now(),
            )
        };
        let memo = prepared.plans.as_ref().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut planned = Vec::new();
        for name in ["a", "b"] {
            let conn = fleet_schema::open_local(&dir.path().join(format!("{name}.db")))
                .await
                .unwrap();
            planned.push(memo.plan(&conn, PlanOptions::default()).await.unwrap());
        }
        // Two new databases: one shape, one plan, shared.
        assert!(Arc::ptr_eq(&planned[0], &planned[1]));
        let direct = registry_statements(&d, &prepared.bundle, &planned[0].plan, &[]);
        let first = prepared.registry(&d, &planned[0]);
        let second = prepared.registry(&d, &planned[1]);
        assert!(Arc::ptr_eq(&first, &second), "built once");
        let text = |s: &[BoundStatement]| format!("{s:?}");
        assert_eq!(text(&first), text(&direct));
        // A plan no one else holds (planned directly) is built afresh, not kept.
        let own = Arc::new((*planned[0]).clone());
        let fresh = prepared.registry(&d, &own);
        assert!(!Arc::ptr_eq(&fresh, &first));
        assert_eq!(text(&fresh), text(&direct));
        prepared.registry.run_pending_tasks();
        assert_eq!(prepared.registry.entry_count(), 1);
    }

    #[test]
    fn a_job_id_names_its_whole_batch() {
        let d = DeploymentId::parse("d1").unwrap();
        let abc = job_id(&d, &ids(&["a", "b", "c"]), ":resume-1");
        assert!(
            abc.starts_with("d1:a+3:") && abc.ends_with(":resume-1"),
            "{abc}"
        );
        assert_eq!(abc, job_id(&d, &ids(&["a", "b", "c"]), ":resume-1"));
        // Same first tenant and size, other members (a resume's list cut again after `b`
        // got its result): another job, not a duplicate the stream would drop.
        assert_ne!(abc, job_id(&d, &ids(&["a", "c", "d"]), ":resume-1"));
        assert_ne!(abc, job_id(&d, &ids(&["a", "c", "b"]), ":resume-1"));
        assert_ne!(abc, job_id(&d, &ids(&["a", "b", "c"]), ""));
    }

    #[test]
    fn a_wave_is_cut_into_even_jobs_spread_over_the_concurrency() {
        let tenants = |n: usize| -> Vec<TenantId> {
            (0..n)
                .map(|i| TenantId::parse(format!("t{i:05}")).unwrap())
                .collect()
        };
        let sizes = |b: Batching, n: usize| -> Vec<usize> {
            let jobs = b.split(tenants(n));
            // Order kept, nothing lost or repeated.
            assert_eq!(jobs.concat(), tenants(n));
            jobs.iter().map(Vec::len).collect()
        };
        let b = Batching {
            job_tenants: 16,
            spread: 16,
        };
        assert_eq!(sizes(b, 0), Vec::<usize>::new());
        assert_eq!(sizes(b, 1), vec![1]);
        // A small wave still goes to 16 jobs at once.
        assert_eq!(sizes(b, 5), vec![1; 5]);
        assert_eq!(sizes(b, 36), [vec![3; 4], vec![2; 12]].concat());
        // A large one: jobs of at most 16, sizes within one of each other.
        assert_eq!(sizes(b, 2000), vec![16; 125]);
        let big = sizes(b, 2001);
        assert_eq!(big.len(), 126);
        assert!(big.iter().all(|&s| s == 15 || s == 16), "{big:?}");
        // One tenant per job: the version-1 jobs.
        let single = Batching {
            job_tenants: 1,
            spread: 16,
        };
        assert_eq!(sizes(single, 40), vec![1; 40]);
        // Never more than a job can carry.
        let huge = Batching {
            job_tenants: 10_000,
            spread: 1,
        };
        assert!(
            sizes(huge, 1000)
                .iter()
                .all(|&s| s <= fleet_protocol::deploy::MAX_JOB_TENANTS)
        );
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
