//! An app operation on one tenant, as every worker carries it out — the installer for
//! `app.*_requested`, the deployer for each tenant of an app rollout — so there is one
//! implementation: the install record moved through its pure machine
//! ([`fleet_apps::machine`], KV `fleet_installs`), the work in the tenant's database
//! ([`fleet_apps::tenant`]), and the hooks (`hooks.app.installed|upgraded|uninstalled|failed`).

use std::sync::Arc;

use fleet_apps::machine::{self, InstallRecord, Operation, TransitionError};
use fleet_apps::tenant::{AppError, InstallOptions, Uninstalled};
use fleet_protocol::{AppInstallResult, AppPackage, Rejected, TenantId, Timestamp};
use fleet_runtime::publish::PublishError;
use fleet_runtime::{Hook, Hooks, ProgressEvent, Runtime, RuntimeError, StateError, StateStore};
use fleet_schema::SchemaError;
use serde_json::json;

use crate::connect::{ConnectError, TenantConnector};

/// Why an app operation on a tenant did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AppOperationError {
    /// The tenant's database could not be reached (unknown or inactive tenant: bad input).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The package's objects are invalid (bad input).
    #[error(transparent)]
    Invalid(#[from] Rejected),
    /// The install record refused the command (it does not fit the app's state) or could not
    /// be read or written.
    #[error(transparent)]
    Record(#[from] StateError<TransitionError>),
    /// The tenant refused it (incompatible, destructive, depended on, an invalid schema): the
    /// failure is recorded and `hooks.app.failed` published.
    #[error(transparent)]
    Refused(AppError),
    /// The work failed transiently (the database could not be read); nothing recorded.
    #[error(transparent)]
    Unavailable(AppError),
    /// A hook, or the quota audit an install asks for, could not be published.
    #[error("publishing the app's hook or its quota audit")]
    Hook(#[source] PublishError),
}

impl AppOperationError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(e) => e.is_transient(),
            Self::Record(e) => e.is_transient(),
            Self::Unavailable(_) | Self::Hook(_) => true,
            Self::Invalid(_) | Self::Refused(_) => false,
        }
    }

    /// Whether the input can never succeed (dead-letter it): an unknown tenant, an invalid
    /// package or schema, a command that does not fit the app's state.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Connect(e) => !e.is_transient(),
            Self::Invalid(_) => true,
            Self::Record(StateError::Refused(_)) => true,
            Self::Refused(AppError::Schema(SchemaError::Desired(_))) => true,
            _ => false,
        }
    }
}

/// What an install or upgrade did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The upstream result.
    pub result: AppInstallResult,
    /// Changes by kind (added, modified, removed) of the app's schema.
    pub changes: [u64; 3],
    /// Statements the migration ran.
    pub statements: u64,
    /// Whether it dropped anything (an upgrade with `allowDestructive`).
    pub breaking: bool,
}

/// App operations on tenants.
#[derive(Debug, Clone)]
pub struct AppOperations {
    installs: StateStore<InstallRecord>,
    connector: TenantConnector,
    hooks: Hooks,
    publisher: fleet_runtime::Publisher,
    subjects: fleet_runtime::Subjects,
}

impl AppOperations {
    /// Operations over `runtime`'s stores, reaching tenants through the configuration's backend
    /// and key ring, publishing hooks with `hooks`.
    pub async fn new(
        runtime: &Runtime,
        config: &fleet_config::Config,
        hooks: Hooks,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            installs: crate::installs(runtime).await?,
            connector: TenantConnector::new(
                crate::tenants(runtime).await?,
                fleet_tenantdb::backend_from_config(config)?,
                Arc::new(fleet_tenantdb::key_ring_from_config(config)?),
            ),
            hooks,
            publisher: runtime.publisher.clone(),
            subjects: runtime.topology.subjects(),
        })
    }

    /// The connector (for callers that read tenants' databases themselves).
    pub fn connector(&self) -> &TenantConnector {
        &self.connector
    }

    async fn hook(
        &self,
        name: &str,
        key: &str,
        transition: String,
        data: serde_json::Value,
    ) -> Result<(), AppOperationError> {
        let hook = Hook {
            subject: format!("hooks.app.{name}"),
            event: format!("app.{name}"),
            version: 1,
            entity: key.to_owned(),
            transition,
            at: chrono::Utc::now(),
            data,
        };
        self.hooks
            .publish(&hook)
            .await
            .map(|_| ())
            .map_err(AppOperationError::Hook)
    }

    /// Records the failure of the operation under way and publishes `hooks.app.failed`.
    async fn fail(
        &self,
        key: &str,
        error: AppError,
        operation: Operation,
    ) -> Result<AppError, AppOperationError> {
        let check = match &error {
            AppError::Incompatible(check) => Some(check.clone()),
            _ => None,
        };
        let text = fleet_runtime::error_chain(&error);
        let written = self
            .installs
            .transition(key, |cur| {
                Ok::<_, TransitionError>(machine::failed(
                    cur.map(|v| &v.state),
                    &text,
                    check.clone(),
                    &Timestamp::now(),
                ))
            })
            .await?;
        let (tenant, app) = key.split_once('.').unwrap_or((key, ""));
        self.hook(
            "failed",
            key,
            written.map_or(0, |w| w.revision).to_string(),
            json!({"tenantId": tenant, "appId": app, "operation": operation, "error": text, "check": check}),
        )
        .await?;
        Ok(error)
    }

    /// Installs or upgrades `package` in `tenant` (`crash_point` is called between the steps
    /// with `install.begun` and `install.applied`, for crash tests).
    pub async fn install(
        &self,
        tenant: &TenantId,
        package: &AppPackage,
        operation: Operation,
        options: InstallOptions,
        crash_point: fn(&str),
    ) -> Result<Applied, AppOperationError> {
        let objects = package.object_definitions()?;
        let (record, conn) = self.connector.connect(tenant).await?;
        let app = package.manifest.name.as_str();
        let version = package.manifest.version.as_str();
        let key = InstallRecord::key(tenant.as_str(), app);
        self.installs
            .transition(&key, |cur| {
                machine::begin(
                    cur.map(|v| &v.state),
                    tenant.as_str(),
                    app,
                    operation,
                    version,
                    &Timestamp::now(),
                )
            })
            .await?;
        crash_point("install.begun");
        let (result, plan) =
            match fleet_apps::tenant::install(&conn, package, &objects, &record.quotas, options)
                .await
            {
                Ok(done) => done,
                Err(e) if e.is_transient() => return Err(AppOperationError::Unavailable(e)),
                Err(e) => {
                    return Err(AppOperationError::Refused(
                        self.fail(&key, e, operation).await?,
                    ));
                }
            };
        crash_point("install.applied");
        let names: Vec<String> = objects.iter().map(|o| o.name.to_string()).collect();
        let written = self
            .installs
            .transition(&key, |cur| {
                Ok::<_, TransitionError>(machine::installed(
                    cur.map(|v| &v.state),
                    &result,
                    names.clone(),
                    &Timestamp::now(),
                ))
            })
            .await?;
        let mut data = serde_json::to_value(&result).unwrap_or_default();
        data["tenantId"] = json!(tenant);
        let hook = if operation == Operation::Upgrade {
            "upgraded"
        } else {
            "installed"
        };
        let revision = written.map_or(0, |w| w.revision);
        self.hook(hook, &key, revision.to_string(), data).await?;
        // The tenant's usage changed: audited now, not at the next tick.
        let job = fleet_protocol::quota::QuotaAuditJob {
            tenant_id: tenant.clone(),
            bucket: chrono::Utc::now().timestamp().max(0) as u64,
        };
        self.publisher
            .publish_json(
                &self.subjects.full(&format!("quota.audit.{tenant}")),
                &format!("quota-audit:app:{key}:{revision}"),
                &job,
                async_nats::HeaderMap::new(),
            )
            .await
            .map_err(AppOperationError::Hook)?;
        Ok(Applied {
            changes: plan.changes(),
            statements: plan.statements(),
            breaking: plan.breaking(),
            result,
        })
    }

    /// What [`Self::install`] would do, recording nothing (a dry run): the operation must fit
    /// the app's record, then the compatibility check and the plan.
    pub async fn plan(
        &self,
        tenant: &TenantId,
        package: &AppPackage,
        operation: Operation,
        options: InstallOptions,
    ) -> Result<fleet_apps::tenant::InstallPlan, AppOperationError> {
        let objects = package.object_definitions()?;
        let (record, conn) = self.connector.connect(tenant).await?;
        let key = InstallRecord::key(tenant.as_str(), package.manifest.name.as_str());
        let current = self.installs.get::<TransitionError>(&key).await?;
        machine::begin(
            current.as_ref().map(|v| &v.state),
            tenant.as_str(),
            package.manifest.name.as_str(),
            operation,
            &package.manifest.version,
            &Timestamp::now(),
        )
        .map_err(StateError::Refused)?;
        fleet_apps::tenant::plan_install(&conn, package, &objects, &record.quotas, options)
            .await
            .map_err(|e| {
                if e.is_transient() {
                    AppOperationError::Unavailable(e)
                } else {
                    AppOperationError::Refused(e)
                }
            })
    }

    /// The tenants where `app` is installed and active (an operator's listing of the installs
    /// bucket, once per fleet-wide rollout).
    pub async fn installed_tenants(
        &self,
        app: &str,
    ) -> Result<Vec<TenantId>, StateError<std::convert::Infallible>> {
        let suffix = format!(".{app}");
        let mut out = Vec::new();
        for key in self.installs.keys().await? {
            let Some(tenant) = key.strip_suffix(&suffix) else {
                continue;
            };
            let record = self.installs.get::<std::convert::Infallible>(&key).await?;
            let active = record.is_some_and(|r| {
                r.state.status == fleet_apps::InstallStatus::Active
                    && r.state.installed_version.is_some()
            });
            if let (true, Ok(tenant)) = (active, TenantId::parse(tenant)) {
                out.push(tenant);
            }
        }
        Ok(out)
    }

    /// Uninstalls `app` from `tenant` (`None`: it was not installed, or another command holds
    /// the record).
    pub async fn uninstall(
        &self,
        tenant: &TenantId,
        app: &str,
        drop_tables: bool,
    ) -> Result<Option<Uninstalled>, AppOperationError> {
        let (_, conn) = self.connector.connect(tenant).await?;
        let key = InstallRecord::key(tenant.as_str(), app);
        let version = self
            .installs
            .get::<TransitionError>(&key)
            .await?
            .and_then(|c| c.state.installed_version)
            .unwrap_or_default();
        let Some(started) = self
            .installs
            .transition(&key, |cur| {
                machine::begin(
                    cur.map(|v| &v.state),
                    tenant.as_str(),
                    app,
                    Operation::Uninstall,
                    &version,
                    &Timestamp::now(),
                )
            })
            .await?
        else {
            return Ok(None);
        };
        let done = match fleet_apps::tenant::uninstall(&conn, app, drop_tables).await {
            Ok(done) => done,
            Err(e) if e.is_transient() => return Err(AppOperationError::Unavailable(e)),
            Err(e) => {
                return Err(AppOperationError::Refused(
                    self.fail(&key, e, Operation::Uninstall).await?,
                ));
            }
        };
        let event = ProgressEvent {
            kind: "app".into(),
            id: key.clone(),
            step: "uninstalled".into(),
            status: "uninstalled".into(),
            duration_ms: None,
            error: None,
            at: Timestamp::now(),
            revision: 0,
        };
        // Removed at its latest revision (ours, or the one a redelivery left).
        let latest = self.installs.get::<TransitionError>(&key).await?;
        let latest = latest.unwrap_or(started);
        if !self
            .installs
            .remove::<TransitionError>(&key, &latest, event)
            .await?
        {
            return Ok(None);
        }
        self.hook(
            "uninstalled",
            &key,
            latest.revision.to_string(),
            json!({"tenantId": tenant, "appId": app, "droppedTables": done.dropped_tables, "unregistered": done.unregistered}),
        )
        .await?;
        Ok(Some(done))
    }
}

/// Why [`AppOperations`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A store could not be opened.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The tenant database backend or key ring is misconfigured.
    #[error(transparent)]
    Setup(#[from] fleet_tenantdb::SetupError),
}
