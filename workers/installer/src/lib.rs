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
//! Each command is one [`fleet_control::AppOperations`] call — the code the deployer's app
//! rollouts run for each tenant too: the app's install record (KV `fleet_installs`, key
//! `<tenant>.<app>`, history on `progress.app.<tenant>.<app>`) moved through the pure machine of
//! [`fleet_apps::machine`], the work inside the tenant's database with [`fleet_apps::tenant`] —
//! the schema engine with the app as owner, one transaction — and the hooks. This crate maps
//! the outcome to an ack in one place. A refusal (incompatible, destructive,
//! depended on) is the tenant's answer: recorded, `hooks.app.failed`, acked. Bad input (a
//! malformed package, an unknown tenant, a command that does not fit the app's state) is
//! dead-lettered with every issue; a database that cannot be reached is retried. A worker
//! killed midway leaves the record `installing`; the redelivery carries on and ends in one
//! install (the transaction either committed or did not; seeds never insert twice).

pub mod lifecycle;

pub use lifecycle::AppLifecycle;

use async_trait::async_trait;
use fleet_apps::machine::Operation;
use fleet_apps::tenant::InstallOptions;
use fleet_control::{AppOperationError, AppOperations};
use fleet_protocol::{AppCommand, AppUninstallRequest, TenantId};
use fleet_runtime::worker::{BuildError, Worker, WorkerContext};
use fleet_runtime::{Delivery, Handler, Outcome};

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
    apps: AppOperations,
}

#[async_trait]
impl Worker for Installer {
    const NAME: &'static str = "installer";
    const CONSUMER: &'static str = fleet_runtime::topology::names::INSTALLER;

    async fn build(context: &WorkerContext) -> Result<Self, BuildError> {
        Ok(Self {
            apps: AppOperations::new(&context.runtime, &context.config, context.hooks.clone())
                .await?,
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

/// The one place an operation's failure becomes an ack: retried when transient, dead-lettered
/// when the input can never succeed, acked when the tenant refused (recorded, with its hook).
fn outcome(e: &AppOperationError) -> Outcome {
    if e.is_transient() {
        Outcome::transient_error(e)
    } else if e.is_bad_input() {
        Outcome::poison(e)
    } else {
        Outcome::Done
    }
}

fn tenant_of(raw: &str) -> Result<TenantId, Outcome> {
    TenantId::parse(raw).map_err(|e| Outcome::Poison {
        reason: format!("tenantId: {e}"),
    })
}

/// Arms the install crash points of [`INSTALL_CRASH_POINTS`].
fn crash_point(name: &str) {
    fleet_tenantdb::crashpoint::reached(name);
}

impl Installer {
    async fn install(&self, command: &AppCommand, operation: Operation) -> Outcome {
        let tenant = match tenant_of(&command.request.tenant_id) {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let options = InstallOptions {
            skip_seed_data: command.request.skip_seed_data,
            allow_destructive: command.allow_destructive,
            upgrade: operation == Operation::Upgrade,
        };
        match self
            .apps
            .install(&tenant, &command.package, operation, options, crash_point)
            .await
        {
            Ok(_) => Outcome::Done,
            Err(e) => outcome(&e),
        }
    }

    async fn uninstall(&self, request: &AppUninstallRequest) -> Outcome {
        let tenant = match tenant_of(&request.tenant_id) {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        match self
            .apps
            .uninstall(&tenant, &request.app_id, request.drop_tables)
            .await
        {
            Ok(_) => Outcome::Done,
            Err(e) => outcome(&e),
        }
    }
}
