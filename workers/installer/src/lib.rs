//! The installer: marketplace apps into tenants' databases (DESIGN §4, part E).
//!
//! Commands, on the `FLEET_APP_COMMANDS` work stream (consumer `installer`):
//!
//! | subject | payload | does |
//! |---|---|---|
//! | `app.install_requested` | [`AppCommand`]: AppInstallRequest + the package | check, schema sync, seed, register → `hooks.app.installed` |
//! | `app.upgrade_requested` | [`AppCommand`] (+ `allowDestructive`) | the diff of the app's own objects as a migration, seed for new objects → `hooks.app.upgraded` |
//! | `app.uninstall_requested` | [`AppUninstallRequest`] | refused while another app depends on it; unregister, drop tables if asked → `hooks.app.uninstalled` |
//!
//! Each command moves the app's install record (KV `fleet_installs`, key `<tenant>.<app>`,
//! history on `progress.app.<tenant>.<app>`) through the pure machine of [`fleet_apps::machine`],
//! and does the work inside the tenant's database with [`fleet_apps::tenant`] — the schema
//! engine with the app as owner, one transaction. A refusal (incompatible, destructive,
//! depended on) is the tenant's answer: recorded, `hooks.app.failed`, acked. Bad input (a
//! malformed package, an unknown tenant, a command that does not fit the app's state) is
//! dead-lettered with every issue; a database that cannot be reached is retried. A worker
//! killed midway leaves the record `installing`; the redelivery carries on and ends in one
//! install (the transaction either committed or did not; seeds never insert twice).

pub mod lifecycle;

pub use lifecycle::AppLifecycle;

use async_trait::async_trait;
use fleet_apps::machine::{self, InstallRecord, Operation, TransitionError};
use fleet_apps::tenant::{AppError, InstallOptions};
use fleet_control::{ConnectError, TenantConnector};
use fleet_protocol::{
    AppCommand, AppInstallResult, AppUninstallRequest, ObjectDefinition, TenantId, Timestamp,
};
use fleet_runtime::worker::{BuildError, Worker, WorkerContext};
use fleet_runtime::{
    Delivery, Handler, Hook, Hooks, Outcome, StateError, StateStore, Versioned, error_chain,
};
use fleet_schema::SchemaError;
use fleet_tenants::TenantRecord;
use serde_json::json;
use std::sync::Arc;

/// Crash points of an install (`FLEET_CRASH_POINT`, for crash tests of the real binary): after
/// the record says `installing` and before the tenant's transaction; after the transaction
/// committed and before the record says `active`.
pub const INSTALL_CRASH_POINTS: &[&str] = &["install.begun", "install.applied"];

/// A command of the installer, parsed once from a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum InstallerCommand {
    /// `app.install_requested`.
    Install(Box<AppCommand>),
    /// `app.upgrade_requested`.
    Upgrade(Box<AppCommand>),
    /// `app.uninstall_requested`.
    Uninstall(AppUninstallRequest),
}

impl InstallerCommand {
    /// Parses a delivery (subject, then payload, every issue with its path).
    pub fn parse(delivery: &Delivery) -> Result<Self, Outcome> {
        match delivery.subject.as_str() {
            "app.install_requested" => Ok(Self::Install(Box::new(delivery.decode()?))),
            "app.upgrade_requested" => Ok(Self::Upgrade(Box::new(delivery.decode()?))),
            "app.uninstall_requested" => Ok(Self::Uninstall(delivery.decode()?)),
            other => Err(Outcome::Poison {
                reason: format!("the installer handles no {other:?} commands"),
            }),
        }
    }
}

/// The installer's handler.
#[derive(Debug)]
pub struct Installer {
    installs: StateStore<InstallRecord>,
    connector: TenantConnector,
    hooks: Hooks,
}

#[async_trait]
impl Worker for Installer {
    const NAME: &'static str = "installer";
    const CONSUMER: &'static str = fleet_runtime::topology::names::INSTALLER;

    async fn build(context: &WorkerContext) -> Result<Self, BuildError> {
        let runtime = &context.runtime;
        Ok(Self {
            installs: fleet_control::installs(runtime).await?,
            connector: TenantConnector::new(
                fleet_control::tenants(runtime).await?,
                fleet_tenantdb::backend_from_config(&context.config)?,
                Arc::new(fleet_tenantdb::key_ring_from_config(&context.config)?),
            ),
            hooks: context.hooks.clone(),
        })
    }
}

#[async_trait]
impl Handler for Installer {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        match InstallerCommand::parse(&delivery) {
            Ok(InstallerCommand::Install(command)) => {
                self.install(&command, Operation::Install).await
            }
            Ok(InstallerCommand::Upgrade(command)) => {
                self.install(&command, Operation::Upgrade).await
            }
            Ok(InstallerCommand::Uninstall(request)) => self.uninstall(&request).await,
            Err(outcome) => outcome,
        }
    }
}

/// The outcome of a state-store failure: transient ones retried, a refused transition (the
/// command does not fit the app's state) dead-lettered with the reason.
fn store_outcome(e: &StateError<TransitionError>) -> Outcome {
    match e {
        StateError::Refused(refused) => Outcome::poison(refused),
        e if e.is_transient() => Outcome::transient_error(e),
        e => Outcome::poison(e),
    }
}

fn tenant_of(raw: &str) -> Result<TenantId, Outcome> {
    TenantId::parse(raw).map_err(|e| Outcome::Poison {
        reason: format!("tenantId: {e}"),
    })
}

impl Installer {
    /// The tenant's record and database (an unknown or inactive tenant is bad input).
    async fn connect(
        &self,
        tenant: &TenantId,
    ) -> Result<(TenantRecord, libsql::Connection), Outcome> {
        self.connector.connect(tenant).await.map_err(|e| match e {
            e if e.is_transient() => Outcome::transient_error(&e),
            e @ (ConnectError::Unknown(_) | ConnectError::NotActive(_)) => Outcome::poison(&e),
            e => Outcome::poison(&e),
        })
    }

    async fn hook(&self, name: &str, key: &str, revision: u64, data: serde_json::Value) -> Outcome {
        let hook = Hook {
            subject: format!("hooks.app.{name}"),
            event: format!("app.{name}"),
            version: 1,
            entity: key.to_owned(),
            transition: revision.to_string(),
            at: chrono::Utc::now(),
            data,
        };
        match self.hooks.publish(&hook).await {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::transient_error(&e),
        }
    }

    /// Records the failure of the operation under way, and says so on `hooks.app.failed`.
    async fn failed(
        &self,
        key: &str,
        error: &AppError,
        operation: Operation,
    ) -> Result<(), Outcome> {
        let check = match error {
            AppError::Incompatible(check) => Some(check.clone()),
            _ => None,
        };
        let text = error_chain(error);
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
            .await
            .map_err(|e| store_outcome(&e))?;
        let revision = written.map_or(0, |w| w.revision);
        let (tenant, app) = key.split_once('.').unwrap_or((key, ""));
        match self
            .hook(
                "failed",
                key,
                revision,
                json!({"tenantId": tenant, "appId": app, "operation": operation, "error": text, "check": check}),
            )
            .await
        {
            Outcome::Done => Ok(()),
            other => Err(other),
        }
    }

    async fn begin(
        &self,
        key: &str,
        tenant: &str,
        app: &str,
        operation: Operation,
        version: &str,
    ) -> Result<Option<Versioned<InstallRecord>>, Outcome> {
        self.installs
            .transition(key, |cur| {
                machine::begin(
                    cur.map(|v| &v.state),
                    tenant,
                    app,
                    operation,
                    version,
                    &Timestamp::now(),
                )
            })
            .await
            .map_err(|e| store_outcome(&e))
    }

    async fn install(&self, command: &AppCommand, operation: Operation) -> Outcome {
        let package = &command.package;
        let tenant = match tenant_of(&command.request.tenant_id) {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let app = package.manifest.name.as_str();
        let objects: Vec<ObjectDefinition> = match package.object_definitions() {
            Ok(objects) => objects,
            Err(rejected) => return Outcome::poison(&rejected),
        };
        let (record, conn) = match self.connect(&tenant).await {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let key = InstallRecord::key(tenant.as_str(), app);
        if let Err(outcome) = self
            .begin(
                &key,
                tenant.as_str(),
                app,
                operation,
                &package.manifest.version,
            )
            .await
        {
            return outcome;
        }
        fleet_tenantdb::crashpoint::reached(INSTALL_CRASH_POINTS[0]);
        let options = InstallOptions {
            skip_seed_data: command.request.skip_seed_data,
            allow_destructive: command.allow_destructive,
            upgrade: operation == Operation::Upgrade,
        };
        let result: AppInstallResult =
            match fleet_apps::tenant::install(&conn, package, &objects, &record.quotas, options)
                .await
            {
                Ok(result) => result,
                Err(e) if e.is_transient() => return Outcome::transient_error(&e),
                Err(e) => {
                    if let Err(outcome) = self.failed(&key, &e, operation).await {
                        return outcome;
                    }
                    // An app whose objects do not map to a schema is bad input: dead-lettered too.
                    return match e {
                        AppError::Schema(SchemaError::Desired(_)) => Outcome::poison(&e),
                        _ => Outcome::Done,
                    };
                }
            };
        fleet_tenantdb::crashpoint::reached(INSTALL_CRASH_POINTS[1]);
        let names: Vec<String> = objects.iter().map(|o| o.name.to_string()).collect();
        let written = match self
            .installs
            .transition(&key, |cur| {
                Ok::<_, TransitionError>(machine::installed(
                    cur.map(|v| &v.state),
                    &result,
                    names.clone(),
                    &Timestamp::now(),
                ))
            })
            .await
        {
            Ok(written) => written,
            Err(e) => return store_outcome(&e),
        };
        let hook = match operation {
            Operation::Upgrade => "upgraded",
            _ => "installed",
        };
        let mut data = serde_json::to_value(&result).unwrap_or_default();
        data["tenantId"] = json!(tenant);
        self.hook(hook, &key, written.map_or(0, |w| w.revision), data)
            .await
    }

    async fn uninstall(&self, request: &AppUninstallRequest) -> Outcome {
        let tenant = match tenant_of(&request.tenant_id) {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let app = request.app_id.as_str();
        let (_, conn) = match self.connect(&tenant).await {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let key = InstallRecord::key(tenant.as_str(), app);
        let current = match self.installs.get::<TransitionError>(&key).await {
            Ok(current) => current,
            Err(e) => return store_outcome(&e),
        };
        let version = current
            .as_ref()
            .and_then(|c| c.state.installed_version.clone())
            .unwrap_or_default();
        let started = match self
            .begin(&key, tenant.as_str(), app, Operation::Uninstall, &version)
            .await
        {
            Ok(Some(started)) => started,
            Ok(None) => return Outcome::Done,
            Err(outcome) => return outcome,
        };
        let done = match fleet_apps::tenant::uninstall(&conn, app, request.drop_tables).await {
            Ok(done) => done,
            Err(e) if e.is_transient() => return Outcome::transient_error(&e),
            Err(e) => {
                return match self.failed(&key, &e, Operation::Uninstall).await {
                    Ok(()) => Outcome::Done,
                    Err(outcome) => outcome,
                };
            }
        };
        let event = fleet_runtime::ProgressEvent {
            kind: "app".into(),
            id: key.clone(),
            step: "uninstalled".into(),
            status: "uninstalled".into(),
            duration_ms: None,
            error: None,
            at: Timestamp::now(),
            revision: 0,
        };
        // Removed at the revision the uninstall started from; a record changed since (a new
        // command) is left to that command.
        let latest = match self.installs.get::<TransitionError>(&key).await {
            Ok(Some(latest)) => latest,
            Ok(None) => started,
            Err(e) => return store_outcome(&e),
        };
        if let Err(e) = self
            .installs
            .remove::<TransitionError>(&key, &latest, event)
            .await
        {
            return store_outcome(&e);
        }
        self.hook(
            "uninstalled",
            &key,
            latest.revision,
            json!({"tenantId": tenant, "appId": app, "droppedTables": done.dropped_tables, "unregistered": done.unregistered}),
        )
        .await
    }
}
