//! The fleet from the caller's side: one supported way for the registration service, the
//! marketplace and admin tools to talk to the fleet, instead of hand-built NATS messages.
//!
//! [`FleetClient`] implements upstream's `IProvisioningService`
//! ([`fleet_protocol::contracts::ProvisioningService`], here), `IDeployPipelineService`
//! ([`deploys`]) and `IAppLifecycleService` ([`apps`]) over the fleet's messaging contract:
//!
//! - every command is validated first (an invalid one is [`ClientError::Invalid`] with every
//!   issue and its path, and is never sent) and published with its `Nats-Msg-Id` —
//!   `tenant.created` under the tenant id, as the design's contract says, so a duplicate call
//!   provisions the tenant once;
//! - the answer is awaited on the tenant's record in the `fleet_tenants` KV bucket, watched
//!   **before** the command is published, so no transition is missed;
//! - every wait has a timeout ([`FleetClient::with_timeout`], 30 s by default):
//!   [`ClientError::TimedOut`] names the worker that did not answer;
//! - a caller can also fire and forget ([`FleetClient::register`]) and follow a tenant's
//!   transitions as a stream ([`FleetClient::follow`]).
//!
//! Errors ([`ClientError`]): invalid input, a conflicting registration, not found, refused in
//! the tenant's current state, failed (the fleet tried: the step and its error), timed out, the
//! fleet unreachable. Each maps to upstream's [`ContractError`] for callers of the trait.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use async_trait::async_trait;
use fleet_config::Config;
use fleet_protocol::contracts::{ContractError, ContractResult, ProvisioningService};
use fleet_protocol::{
    Rejected, TenantCreated, TenantId, TenantLifecycleCommand, TenantPlan,
    TenantProvisioningRequest, TenantProvisioningResult, TenantProvisioningStatus,
};
use fleet_runtime::Runtime;
use fleet_runtime::topology::names;
use fleet_tenants::machine::{TenantRecord, fingerprint, status_name};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

pub mod apps;
pub mod deploys;

pub use apps::{AppCatalog, DirectoryCatalog, InstallOptions};
pub use deploys::{new_deployment_id, validate_bundle};

/// How long a call waits for the fleet's answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call did not succeed. `kind` and `name` say what the call was about: `tenant`,
/// `deployment`, `app` (`<tenant>.<app>`) or `plan`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No NATS server answers at the configured URL (or the topology could not be ensured).
    #[error("the fleet is unreachable: {0}")]
    Unreachable(String),
    /// The command is not valid; nothing was sent. Each issue carries its path.
    #[error("invalid {what}: {rejected}")]
    Invalid {
        /// The protocol type (`TenantCreated`, `DeployRequest`, `AppCommand`, …).
        what: &'static str,
        /// Every issue.
        rejected: Rejected,
    },
    /// The command is larger than the server takes (its `max_payload`); nothing was sent.
    #[error("the command is {size} bytes, more than the server takes ({limit} bytes)")]
    TooLarge {
        /// The command's size in bytes.
        size: usize,
        /// The server's `max_payload` in bytes.
        limit: usize,
    },
    /// The tenant id is registered with a different request (organisation, plan, region, …);
    /// nothing was sent.
    #[error("tenant {tenant} is already registered with another request")]
    Conflict {
        /// The tenant.
        tenant: TenantId,
    },
    /// No such tenant, deployment, app or plan.
    #[error("no {kind} {name}")]
    NotFound {
        /// What was looked up.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Not possible in the current state (resuming an active tenant, installing over another
    /// version, a deployment id already taken, …); nothing was sent.
    #[error("{kind} {name} is {status}: {why}")]
    Refused {
        /// What the command was for.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Its state.
        status: String,
        /// Why the command does not apply.
        why: String,
    },
    /// The fleet carried the command out and it failed (the record says where).
    #[error("{kind} {name} failed: {error}")]
    Failed {
        /// What the command was for.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The failed step and its error, as the record holds them.
        error: String,
    },
    /// No answer in time: the command is published and may still complete.
    #[error(
        "no answer within {} s for {what} of {kind} {name} (is the {worker} running? `fleetctl status`); the command was sent and may still complete",
        timeout.as_secs_f64()
    )]
    TimedOut {
        /// What the command was for.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What was awaited (`provisioning`, `suspension`, `deployment`, `install`, …).
        what: &'static str,
        /// The worker that answers it.
        worker: &'static str,
        /// How long was waited.
        timeout: Duration,
    },
    /// NATS, JetStream or KV failed mid-call.
    #[error("the fleet's messaging failed: {0}")]
    Messaging(String),
    /// The app catalog could not read a package.
    #[error("the app catalog failed: {0}")]
    Catalog(String),
}

impl ClientError {
    pub(crate) fn no_tenant(tenant: &TenantId) -> Self {
        Self::NotFound {
            kind: "tenant",
            name: tenant.to_string(),
        }
    }
}

impl From<ClientError> for ContractError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid { rejected, .. } => ContractError::Invalid(rejected),
            ClientError::NotFound { kind, name } => ContractError::NotFound { kind, name },
            ClientError::Conflict { tenant } => ContractError::AlreadyExists {
                kind: "tenant",
                name: tenant.to_string(),
            },
            e @ (ClientError::Refused { .. }
            | ClientError::Failed { .. }
            | ClientError::TooLarge { .. }) => ContractError::IllegalState(e.to_string()),
            e @ (ClientError::Unreachable(_)
            | ClientError::TimedOut { .. }
            | ClientError::Messaging(_)) => ContractError::Unavailable(e.to_string()),
            e @ ClientError::Catalog(_) => ContractError::Other(Box::new(e)),
        }
    }
}

fn messaging(e: impl std::fmt::Display) -> ClientError {
    ClientError::Messaging(e.to_string())
}

/// A connection to the fleet (see the module docs).
#[derive(Debug, Clone)]
pub struct FleetClient {
    runtime: Runtime,
    tenants: kv::Store,
    deployments: kv::Store,
    results: fleet_control::DeployResults,
    installs: kv::Store,
    catalog: Option<Arc<dyn AppCatalog>>,
    /// The bundles this client planned, by tenant and plan digest (for `execute_deployment`).
    plans: moka::sync::Cache<String, (fleet_protocol::DeployBundle, bool)>,
    timeout: Duration,
}

/// Reads the value of `key` in `store` and its revision (`None`: absent or deleted), as the
/// bucket's stream leader holds it ([`fleet_runtime::state::leader_entry`]): the client decides
/// on what it reads (refusing a command, answering one already carried out), and a replica
/// still catching up after a restart would answer a direct get from the past.
async fn read_key<T: DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, ClientError> {
    match fleet_runtime::state::leader_entry(store, key)
        .await
        .map_err(messaging)?
    {
        Some((value, revision)) => {
            let value = serde_json::from_slice(&value).map_err(messaging)?;
            Ok(Some((value, revision)))
        }
        None => Ok(None),
    }
}

/// The values `key` takes in `store` from its current one on, with their revisions (deletions
/// and values that do not parse are skipped).
async fn watch_key<T: DeserializeOwned + Send + 'static>(
    store: &kv::Store,
    key: &str,
) -> Result<impl Stream<Item = (T, u64)> + Send + use<T>, ClientError> {
    let watch = store.watch_with_history(key).await.map_err(messaging)?;
    Ok(watch.filter_map(|entry| async move {
        let entry = entry.ok()?;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        let value = serde_json::from_slice::<T>(&entry.value).ok()?;
        Some((value, entry.revision))
    }))
}

impl FleetClient {
    /// Connects to `config.nats.url`, creating any stream, consumer or bucket still missing
    /// (a caller may start before the workers); what exists is left as the fleet set it.
    pub async fn connect(config: &Config) -> Result<Self, ClientError> {
        let runtime = Runtime::attach(config)
            .await
            .map_err(|e| ClientError::Unreachable(fleet_runtime::error_chain(&e)))?;
        Self::from_runtime(runtime).await
    }

    /// A client over an already connected runtime.
    pub async fn from_runtime(runtime: Runtime) -> Result<Self, ClientError> {
        let unreachable = |e: fleet_runtime::RuntimeError| {
            ClientError::Unreachable(fleet_runtime::error_chain(&e))
        };
        let tenants = runtime.bucket(names::TENANTS).await.map_err(unreachable)?;
        let deployments = runtime
            .bucket(names::DEPLOYMENTS)
            .await
            .map_err(unreachable)?;
        let results = fleet_control::DeployResults::new(
            runtime
                .bucket(names::DEPLOY_RESULTS)
                .await
                .map_err(unreachable)?,
        );
        let installs = runtime.bucket(names::INSTALLS).await.map_err(unreachable)?;
        Ok(Self {
            runtime,
            tenants,
            deployments,
            results,
            installs,
            catalog: None,
            plans: moka::sync::Cache::new(deploys::PLANS_KEPT),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client resolving app manifests to their packages through `catalog` (what
    /// [`AppLifecycleService`](fleet_protocol::contracts::AppLifecycleService)'s methods, which
    /// take a manifest, need).
    pub fn with_catalog(mut self, catalog: impl AppCatalog + 'static) -> Self {
        self.catalog = Some(Arc::new(catalog));
        self
    }

    /// How long each call waits for the fleet's answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same client waiting at most `timeout` for each answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The runtime underneath (publisher, topology).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The tenant's record and its revision (`None`: no such tenant).
    pub async fn record(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<(TenantRecord, u64)>, ClientError> {
        read_key(&self.tenants, tenant.as_str()).await
    }

    /// The tenant's transitions from now on (its current record first), as its record changes.
    pub async fn follow(
        &self,
        tenant: &TenantId,
    ) -> Result<impl Stream<Item = (TenantRecord, u64)> + Send + use<>, ClientError> {
        watch_key(&self.tenants, tenant.as_str()).await
    }

    /// Validates and publishes `tenant.created` (fire and forget): under the tenant id as its
    /// `Nats-Msg-Id` for a first registration; under an id of the record's revision when it
    /// retries a failed one (a new attempt, not a duplicate). A registration that conflicts
    /// with the tenant's record is refused here.
    pub async fn register(
        &self,
        tenant: &TenantId,
        request: &TenantProvisioningRequest,
    ) -> Result<Option<(TenantRecord, u64)>, ClientError> {
        let command = TenantCreated {
            tenant_id: tenant.clone(),
            request: request.clone(),
        };
        let value = serde_json::to_value(&command).map_err(messaging)?;
        fleet_protocol::parse_value::<TenantCreated>(&value).map_err(|rejected| {
            ClientError::Invalid {
                what: "TenantCreated",
                rejected,
            }
        })?;
        let current = self.record(tenant).await?;
        let message_id = match &current {
            Some((record, _)) if record.fingerprint != fingerprint(request) => {
                return Err(ClientError::Conflict {
                    tenant: tenant.clone(),
                });
            }
            Some((record, revision)) if record.status() == TenantProvisioningStatus::Failed => {
                format!("{tenant}:retry:{revision}")
            }
            _ => tenant.to_string(),
        };
        self.publish("tenant.created", &message_id, &value).await?;
        Ok(current)
    }

    /// Publishes `payload` on `subject` (prefixed as the topology says) under `message_id`,
    /// refused first when it is larger than the server takes.
    async fn publish(
        &self,
        subject: &str,
        message_id: &str,
        payload: &serde_json::Value,
    ) -> Result<(), ClientError> {
        let size = serde_json::to_vec(payload).map_or(0, |b| b.len());
        let limit = self.runtime.client.server_info().max_payload;
        if size > limit {
            return Err(ClientError::TooLarge { size, limit });
        }
        self.runtime
            .publisher
            .publish_json(
                &self.runtime.topology.subject(subject),
                message_id,
                payload,
                HeaderMap::new(),
            )
            .await
            .map(|_| ())
            .map_err(|e| messaging(fleet_runtime::error_chain(&e)))
    }

    /// Waits until `done` decides on a record of `tenant` newer than `after` (a revision).
    async fn wait<T>(
        &self,
        tenant: &TenantId,
        after: u64,
        what: &'static str,
        worker: &'static str,
        mut done: impl FnMut(&TenantRecord) -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let changes = self.follow(tenant).await?;
        let mut changes = std::pin::pin!(changes);
        let timed_out = || ClientError::TimedOut {
            kind: "tenant",
            name: tenant.to_string(),
            what,
            worker,
            timeout: self.timeout,
        };
        tokio::time::timeout(self.timeout, async {
            while let Some((record, revision)) = changes.next().await {
                if revision <= after {
                    continue;
                }
                if let Some(result) = done(&record) {
                    return result;
                }
            }
            Err(messaging("the record's watch ended"))
        })
        .await
        .unwrap_or_else(|_| Err(timed_out()))
    }

    /// Publishes a lifecycle command for an existing tenant and waits until its record shows
    /// `reached` (at once when it already does).
    #[allow(clippy::too_many_arguments)]
    async fn lifecycle(
        &self,
        tenant: &TenantId,
        subject: &'static str,
        command: TenantLifecycleCommand,
        what: &'static str,
        allowed: &[TenantProvisioningStatus],
        reached: impl Fn(&TenantRecord) -> bool,
    ) -> Result<(), ClientError> {
        let Some((record, revision)) = self.record(tenant).await? else {
            return Err(ClientError::no_tenant(tenant));
        };
        if reached(&record) {
            return Ok(());
        }
        if !allowed.contains(&record.status()) {
            return Err(ClientError::Refused {
                kind: "tenant",
                name: tenant.to_string(),
                status: status_name(&record),
                why: format!("{subject} applies to a tenant that is {allowed:?}"),
            });
        }
        let value = serde_json::to_value(&command).map_err(messaging)?;
        // One command per state it was sent in: a retried call is a duplicate, a later one not.
        self.publish(subject, &format!("{subject}:{tenant}:{revision}"), &value)
            .await?;
        self.wait(tenant, revision, what, "provisioner", |record| {
            if reached(record) {
                Some(Ok(()))
            } else if record.status() == TenantProvisioningStatus::Failed {
                Some(Err(ClientError::Failed {
                    kind: "tenant",
                    name: tenant.to_string(),
                    error: record.error.clone().unwrap_or_default(),
                }))
            } else {
                None
            }
        })
        .await
    }

    fn command(tenant: &TenantId) -> TenantLifecycleCommand {
        TenantLifecycleCommand {
            tenant_id: tenant.clone(),
            reason: None,
            plan: None,
            quotas: None,
        }
    }

    /// Suspends the tenant (`reason` kept in its record and hook) and waits until it is.
    pub async fn suspend(
        &self,
        tenant: &TenantId,
        reason: Option<String>,
    ) -> Result<(), ClientError> {
        let command = TenantLifecycleCommand {
            reason,
            ..Self::command(tenant)
        };
        self.lifecycle(
            tenant,
            "tenant.suspended",
            command,
            "suspension",
            &[TenantProvisioningStatus::Active],
            |r| r.status() == TenantProvisioningStatus::Suspended,
        )
        .await
    }
}

impl FleetClient {
    /// Registers the tenant and waits until it is active: its result (connection URL, steps
    /// with their durations; never a token). A tenant already active with the same request
    /// answers at once; a failed one is retried.
    pub async fn provision(
        &self,
        tenant: &TenantId,
        request: TenantProvisioningRequest,
    ) -> Result<TenantProvisioningResult, ClientError> {
        let watch_from = self.record(tenant).await?;
        if let Some((record, _)) = &watch_from
            && record.fingerprint == fingerprint(&request)
            && record.status() == TenantProvisioningStatus::Active
        {
            return Ok(record.result());
        }
        // `wait` reads the record's history from the revision seen here, so a transition
        // between the publish and the wait is not missed.
        let before = watch_from.as_ref().map_or(0, |(_, revision)| *revision);
        self.register(tenant, &request).await?;
        self.wait(
            tenant,
            before,
            "provisioning",
            "provisioner",
            |record| match record.status() {
                TenantProvisioningStatus::Active => Some(Ok(record.result())),
                TenantProvisioningStatus::Failed => Some(Err(ClientError::Failed {
                    kind: "tenant",
                    name: tenant.to_string(),
                    error: record.error.clone().unwrap_or_default(),
                })),
                _ => None,
            },
        )
        .await
    }

    /// Resumes a suspended tenant and waits until it is active.
    pub async fn resume(&self, tenant: &TenantId) -> Result<(), ClientError> {
        self.lifecycle(
            tenant,
            "tenant.resumed",
            Self::command(tenant),
            "resumption",
            &[TenantProvisioningStatus::Suspended],
            |r| r.status() == TenantProvisioningStatus::Active,
        )
        .await
    }

    /// Deletes the tenant: answers once the deletion is recorded (due after the configured
    /// grace period, or done at once when deletion is immediate).
    pub async fn destroy(&self, tenant: &TenantId) -> Result<(), ClientError> {
        self.lifecycle(
            tenant,
            "tenant.deleted",
            Self::command(tenant),
            "deletion",
            &[
                TenantProvisioningStatus::Active,
                TenantProvisioningStatus::Suspended,
                TenantProvisioningStatus::Failed,
            ],
            |r| r.status() == TenantProvisioningStatus::Destroying || r.is_deleted(),
        )
        .await
    }

    /// Moves the tenant to `plan` (its quotas follow) and waits until its record shows it.
    pub async fn change_plan(
        &self,
        tenant: &TenantId,
        plan: TenantPlan,
    ) -> Result<(), ClientError> {
        let command = TenantLifecycleCommand {
            plan: Some(plan),
            ..Self::command(tenant)
        };
        self.lifecycle(
            tenant,
            "tenant.plan_changed",
            command,
            "plan change",
            &[
                TenantProvisioningStatus::Active,
                TenantProvisioningStatus::Suspended,
            ],
            |r| r.plan == plan,
        )
        .await
    }

    /// Asks the quota auditor for an audit now (fire and forget): of `tenant` alone
    /// (`quota.audit.<tenant>`), or of every tenant (`quota.tick`). The audit runs under a
    /// bucket of its own — the current second, which no periodic tick uses as its start — so it
    /// is not dropped as a duplicate of the last periodic one; answers that bucket.
    pub async fn request_audit(&self, tenant: Option<&TenantId>) -> Result<u64, ClientError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let bucket = now.as_secs();
        let nonce = now.as_millis();
        match tenant {
            None => {
                let tick = serde_json::json!({"bucket": bucket});
                self.publish("quota.tick", &format!("quota-tick:now:{nonce}"), &tick)
                    .await?;
            }
            Some(tenant) => {
                if self.record(tenant).await?.is_none() {
                    return Err(ClientError::no_tenant(tenant));
                }
                let job = serde_json::json!({"tenantId": tenant, "bucket": bucket});
                self.publish(
                    &format!("quota.audit.{tenant}"),
                    &format!("quota-audit:now:{nonce}:{tenant}"),
                    &job,
                )
                .await?;
            }
        }
        Ok(bucket)
    }

    /// The tenant's status.
    pub async fn status(&self, tenant: &TenantId) -> Result<TenantProvisioningStatus, ClientError> {
        match self.record(tenant).await? {
            Some((record, _)) => Ok(record.status()),
            None => Err(ClientError::no_tenant(tenant)),
        }
    }
}

/// Upstream's `IProvisioningService`: the methods above, their errors as [`ContractError`]s.
#[async_trait]
impl ProvisioningService for FleetClient {
    async fn provision_tenant(
        &self,
        tenant: &TenantId,
        request: TenantProvisioningRequest,
    ) -> ContractResult<TenantProvisioningResult> {
        Ok(self.provision(tenant, request).await?)
    }

    async fn suspend_tenant(&self, tenant: &TenantId) -> ContractResult<()> {
        Ok(self.suspend(tenant, None).await?)
    }

    async fn resume_tenant(&self, tenant: &TenantId) -> ContractResult<()> {
        Ok(self.resume(tenant).await?)
    }

    async fn destroy_tenant(&self, tenant: &TenantId) -> ContractResult<()> {
        Ok(self.destroy(tenant).await?)
    }

    async fn get_tenant_status(
        &self,
        tenant: &TenantId,
    ) -> ContractResult<TenantProvisioningStatus> {
        Ok(self.status(tenant).await?)
    }

    async fn migrate_tenant_plan(&self, tenant: &TenantId, plan: TenantPlan) -> ContractResult<()> {
        Ok(self.change_plan(tenant, plan).await?)
    }
}
