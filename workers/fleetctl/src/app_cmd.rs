//! `fleetctl app install|upgrade|uninstall|list|check`: marketplace apps in tenants.
//!
//! `install` and `upgrade` take one tenant (`--tenant`, through the installer) or many in waves
//! (`--all`, `--plan P`, `--has-app`: an app rollout through the deployer's rollout — failure
//! halt, dry run, and `fleetctl deploy status|resume|cancel <id>`).
//!
//! `install`, `upgrade` and `uninstall` send the command the installer carries out
//! (`app.*_requested`, message id derived from the command) and wait for the app's install
//! record to settle; `list` reads the records; `check` runs the compatibility check against the
//! tenant's database directly (the same function the installer runs first), changing nothing.
//!
//! Exit codes ([`crate::exit`]): 0 done (or compatible); 1 the installer refused (incompatible,
//! destructive, depended on — the reason printed), an unknown tenant, no answer in time, no
//! server; 2 the package is invalid or unreadable, or the command line is wrong.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use clap::{Args, Subcommand};
use fleet_apps::{InstallRecord, InstallStatus};
use fleet_protocol::{AppPackage, TenantId};
use fleet_runtime::{Runtime, StateStore};
use serde_json::json;

/// Where an install or upgrade goes: one tenant (through the installer), or many in waves
/// (an app rollout, through the deployer's rollout: `fleetctl deploy status|resume|cancel <id>`).
#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "where")]
pub struct Where {
    /// One tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Every active tenant, in waves.
    #[arg(long)]
    all: bool,
    /// Every active tenant on this plan (free, pro, enterprise, custom), in waves.
    #[arg(long)]
    plan: Option<String>,
    /// Every active tenant that has the app installed, in waves (an upgrade's usual target).
    #[arg(long)]
    has_app: bool,
}

/// How a fleet-wide install or upgrade rolls out.
#[derive(Debug, Args)]
pub struct Waves {
    /// Cumulative wave sizes: counts or percentages.
    #[arg(long, value_delimiter = ',', default_value = "1,10%,100%")]
    waves: Vec<String>,
    /// Halt when more than this share of finished tenants failed.
    #[arg(long, default_value_t = 0.2)]
    max_failure_ratio: f64,
    /// Check every tenant's compatibility, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Rollout id (generated when absent).
    #[arg(long)]
    id: Option<String>,
    /// Return the rollout id at once.
    #[arg(long)]
    no_wait: bool,
}

/// The `app` subcommands.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Install an app (a package file or directory) into a tenant — or many, in waves — and
    /// wait for the outcome.
    Install {
        /// The package: one JSON file, or a directory with manifest.json and objects/.
        package: PathBuf,
        #[command(flatten)]
        target: Where,
        #[command(flatten)]
        waves: Waves,
        /// Do not insert the app's seed data.
        #[arg(long)]
        skip_seed_data: bool,
        /// Seconds to wait for a single tenant's outcome.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Upgrade an installed app to the package's version, in a tenant or many, and wait.
    Upgrade {
        /// The package of the new version.
        package: PathBuf,
        #[command(flatten)]
        target: Where,
        #[command(flatten)]
        waves: Waves,
        /// Accept dropping objects and fields the new version removed.
        #[arg(long)]
        allow_destructive: bool,
        /// Seconds to wait for a single tenant's outcome.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Uninstall an app from a tenant (its tables stay unless --drop-tables).
    Uninstall {
        /// The app.
        app: String,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Drop the app's tables too.
        #[arg(long)]
        drop_tables: bool,
        /// Seconds to wait for the outcome.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// The apps of a tenant: name, version, state, objects.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The compatibility check alone (nothing is changed).
    Check {
        /// The package.
        package: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// Starts an app rollout (`deploy.app_requested`) and watches it like `fleetctl deploy`.
#[allow(clippy::too_many_arguments)]
async fn rollout(
    runtime: &Runtime,
    package: &AppPackage,
    operation: &str,
    target: &Where,
    waves: Waves,
    skip_seed_data: bool,
    allow_destructive: bool,
) -> anyhow::Result<ExitCode> {
    let id = crate::deploy_cmd::rollout_id(waves.id, &format!("app-{}", package.manifest.name))?;
    let mut selector = json!({});
    if target.all {
        selector["all"] = json!(true);
    }
    if let Some(plan) = &target.plan {
        selector["plan"] = json!(plan);
    }
    if target.has_app {
        selector["hasApp"] = json!(package.manifest.name);
    }
    let request = json!({
        "deploymentId": id,
        "app": {"operation": operation, "package": package, "skipSeedData": skip_seed_data},
        "target": selector,
        "rollout": {"waves": waves.waves, "maxFailureRatio": waves.max_failure_ratio,
                    "dryRun": waves.dry_run, "allowDestructive": allow_destructive},
    });
    crate::deploy_cmd::start_rollout::<fleet_protocol::deploy::AppRolloutRequest>(
        runtime,
        &id,
        "deploy.app_requested",
        &request,
        waves.no_wait,
    )
    .await
}

/// Reads and validates a package; `None` after printing every issue.
fn load(path: &std::path::Path) -> anyhow::Result<Option<AppPackage>> {
    match fleet_apps::package::load(path) {
        Ok(checked) => {
            for warning in &checked.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(Some(checked.value))
        }
        Err(fleet_apps::package::PackageError::Invalid(rejected)) => {
            for issue in &rejected.issues {
                say!("{issue}");
            }
            eprintln!("{} is not a valid app package", path.display());
            Ok(None)
        }
        Err(e) => Err(crate::exit::input_error(e)),
    }
}

/// Waits until the app's record changed past `after` (a revision; 0: none yet) and `settled`
/// holds for it (checked every 200 ms). `None`: the record is gone.
async fn wait(
    installs: &StateStore<InstallRecord>,
    key: &str,
    after: u64,
    timeout: Duration,
    settled: impl Fn(&InstallRecord) -> bool,
) -> anyhow::Result<Option<InstallRecord>> {
    let deadline = Instant::now() + timeout;
    loop {
        let record = installs.get::<std::convert::Infallible>(key).await?;
        match record {
            None if after > 0 => return Ok(None),
            Some(r) if r.revision > after && settled(&r.state) => return Ok(Some(r.state)),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!(
                "no outcome within {timeout:?}: the installer may be down (`fleetctl dlq list` shows refused commands)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn revision(installs: &StateStore<InstallRecord>, key: &str) -> anyhow::Result<u64> {
    Ok(installs
        .get::<std::convert::Infallible>(key)
        .await?
        .map_or(0, |v| v.revision))
}

/// Refuses here, with the reason, what the installer would dead-letter at once: an unknown or
/// inactive tenant, a command that does not fit the app's record (an install over another
/// version, an upgrade of an app not installed, anything while another operation runs).
async fn preflight(
    runtime: &Runtime,
    installs: &StateStore<InstallRecord>,
    tenant: &TenantId,
    app: &str,
    operation: fleet_apps::Operation,
    version: &str,
) -> anyhow::Result<Option<String>> {
    let tenants = fleet_control::tenants(runtime).await?;
    match tenants
        .get::<std::convert::Infallible>(tenant.as_str())
        .await?
    {
        None => return Ok(Some(format!("unknown tenant {tenant}"))),
        Some(r) if r.state.status() != fleet_protocol::TenantProvisioningStatus::Active => {
            return Ok(Some(format!(
                "tenant {tenant} is {}, not active",
                fleet_tenants::status_name(&r.state)
            )));
        }
        Some(_) => {}
    }
    let current = installs
        .get::<std::convert::Infallible>(&InstallRecord::key(tenant.as_str(), app))
        .await?;
    Ok(fleet_apps::machine::begin(
        current.as_ref().map(|v| &v.state),
        tenant.as_str(),
        app,
        operation,
        version,
        &fleet_protocol::Timestamp::now(),
    )
    .err()
    .map(|e| e.to_string()))
}

/// The largest command the server takes (its `max_payload`).
fn payload_limit(runtime: &Runtime) -> usize {
    runtime.client.server_info().max_payload
}

/// Prints the outcome of an install or upgrade; the exit code.
fn report(record: Option<InstallRecord>, version: &str) -> ExitCode {
    let Some(record) = record else {
        return crate::exit::failed();
    };
    if record.error.is_none() && record.installed_version.as_deref() == Some(version) {
        if let Some(result) = &record.result {
            say!(
                "{} {} is {} in {}: objects {}; tables created {}; {} seed record(s); {} ms",
                record.app_id,
                version,
                crate::wire_name(&record.status),
                record.tenant_id,
                result.installed_objects.join(", "),
                if result.created_tables.is_empty() {
                    "none".to_owned()
                } else {
                    result.created_tables.join(", ")
                },
                result.seeded_records,
                result.duration_ms.unwrap_or_default()
            );
        }
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "refused: {}",
        record
            .error
            .as_deref()
            .unwrap_or("the operation did not complete")
    );
    for issue in record.check.iter().flat_map(|c| &c.issues) {
        eprintln!("  {}: {}", crate::wire_name(&issue.category), issue.message);
    }
    crate::exit::failed()
}

/// What the single-tenant commands share: the connection, the install records, the server's
/// payload limit and the stamp that makes each command's message id its own.
struct Sender {
    runtime: Runtime,
    installs: StateStore<InstallRecord>,
    limit: usize,
    stamp: i64,
}

impl Sender {
    /// One operation on one tenant: refused here when it cannot fit the tenant or the app's
    /// record ([`preflight`]); else sent once and waited for until the record changed past the
    /// revision it had and `settled` holds. `Err(reason)`: refused before sending.
    #[allow(clippy::too_many_arguments)]
    async fn one_tenant(
        &self,
        tenant: &TenantId,
        app: &str,
        operation: fleet_apps::Operation,
        version: &str,
        command: serde_json::Value,
        timeout: u64,
        settled: impl Fn(&InstallRecord) -> bool,
    ) -> anyhow::Result<Result<Option<InstallRecord>, String>> {
        if let Some(refusal) = preflight(
            &self.runtime,
            &self.installs,
            tenant,
            app,
            operation,
            version,
        )
        .await?
        {
            return Ok(Err(refusal));
        }
        let key = InstallRecord::key(tenant.as_str(), app);
        let after = revision(&self.installs, &key).await?;
        let size = serde_json::to_vec(&command).map_or(0, |b| b.len());
        if size > self.limit {
            return Err(crate::exit::usage!(
                "the command is {size} bytes, more than the server takes ({} bytes, its max_payload): the package is too large to send",
                self.limit
            ));
        }
        let (subject, verb) = match operation {
            fleet_apps::Operation::Install => ("app.install_requested", "install"),
            fleet_apps::Operation::Upgrade => ("app.upgrade_requested", "upgrade"),
            fleet_apps::Operation::Uninstall => ("app.uninstall_requested", "uninstall"),
        };
        self.runtime
            .publisher
            .publish_json(
                &self.runtime.topology.subject(subject),
                &format!("{verb}:{key}:{version}:{}", self.stamp),
                &command,
                HeaderMap::new(),
            )
            .await
            .with_context(|| format!("sending {subject}"))?;
        Ok(Ok(wait(
            &self.installs,
            &key,
            after,
            Duration::from_secs(timeout),
            settled,
        )
        .await?))
    }

    /// Loads the package at `path` (exit 2 with every issue when it is invalid), then
    /// [`Self::install_or_upgrade`].
    async fn load_and_send(
        &self,
        path: &std::path::Path,
        operation: fleet_apps::Operation,
        target: &Where,
        waves: Waves,
        options: serde_json::Value,
        timeout: u64,
    ) -> anyhow::Result<ExitCode> {
        let Some(package) = load(path)? else {
            return Ok(crate::exit::input());
        };
        self.install_or_upgrade(&package, operation, target, waves, options, timeout)
            .await
    }

    /// An install or upgrade of `package`: in waves when no `--tenant` is named, else through
    /// the installer, its outcome reported.
    async fn install_or_upgrade(
        &self,
        package: &AppPackage,
        operation: fleet_apps::Operation,
        target: &Where,
        waves: Waves,
        options: serde_json::Value,
        timeout: u64,
    ) -> anyhow::Result<ExitCode> {
        let verb = if operation == fleet_apps::Operation::Upgrade {
            "upgrade"
        } else {
            "install"
        };
        let Some(tenant) = &target.tenant else {
            let flag = |name: &str| options[name].as_bool().unwrap_or(false);
            return rollout(
                &self.runtime,
                package,
                verb,
                target,
                waves,
                flag("skipSeedData"),
                flag("allowDestructive"),
            )
            .await;
        };
        let tenant = TenantId::parse(tenant.as_str()).context("--tenant")?;
        let app = package.manifest.name.to_string();
        let version = package.manifest.version.clone();
        let mut command = json!({"tenantId": tenant, "appId": app, "package": package});
        for (key, value) in options.as_object().into_iter().flatten() {
            command[key] = value.clone();
        }
        let sent = self
            .one_tenant(&tenant, &app, operation, &version, command, timeout, |r| {
                r.version == version && r.status != InstallStatus::Installing
            })
            .await?;
        match sent {
            Ok(record) => Ok(report(record, &version)),
            Err(refusal) => {
                eprintln!("refused: {refusal}");
                Ok(crate::exit::failed())
            }
        }
    }
}

/// Runs an `app` subcommand.
pub async fn run(command: AppCommand) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    if let AppCommand::Check { package, tenant } = &command {
        return check(&config, package, tenant).await;
    }
    let runtime = Runtime::connect(&config).await?;
    let sender = Sender {
        installs: fleet_control::installs(&runtime).await?,
        limit: payload_limit(&runtime),
        stamp: chrono::Utc::now().timestamp_millis(),
        runtime,
    };
    match command {
        AppCommand::Install {
            package,
            target,
            waves,
            skip_seed_data,
            timeout,
        } => {
            let options = json!({"skipSeedData": skip_seed_data});
            let operation = fleet_apps::Operation::Install;
            sender
                .load_and_send(&package, operation, &target, waves, options, timeout)
                .await
        }
        AppCommand::Upgrade {
            package,
            target,
            waves,
            allow_destructive,
            timeout,
        } => {
            let options = json!({"allowDestructive": allow_destructive});
            let operation = fleet_apps::Operation::Upgrade;
            sender
                .load_and_send(&package, operation, &target, waves, options, timeout)
                .await
        }
        AppCommand::Uninstall {
            app,
            tenant,
            drop_tables,
            timeout,
        } => {
            let tenant = TenantId::parse(&tenant).context("--tenant")?;
            let command = json!({"tenantId": tenant, "appId": app, "dropTables": drop_tables});
            let sent = sender
                .one_tenant(
                    &tenant,
                    &app,
                    fleet_apps::Operation::Uninstall,
                    "",
                    command,
                    timeout,
                    |r| r.status != InstallStatus::Uninstalling,
                )
                .await?;
            match sent {
                Err(refusal) => {
                    eprintln!("refused: {refusal}");
                    Ok(crate::exit::failed())
                }
                Ok(None) => {
                    say!(
                        "{app} uninstalled from {tenant}{}",
                        if drop_tables {
                            ", its tables dropped"
                        } else {
                            " (its tables kept)"
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Ok(Some(record)) => {
                    eprintln!("refused: {}", record.error.unwrap_or_default());
                    Ok(crate::exit::failed())
                }
            }
        }
        AppCommand::List { tenant, json } => {
            let tenant = TenantId::parse(&tenant).context("--tenant")?;
            let installs = &sender.installs;
            let tenants = fleet_control::tenants(&sender.runtime).await?;
            if tenants
                .get::<std::convert::Infallible>(tenant.as_str())
                .await?
                .is_none()
            {
                eprintln!("unknown tenant {tenant}");
                return Ok(crate::exit::failed());
            }
            let prefix = format!("{tenant}.");
            let mut records = Vec::new();
            for key in installs
                .keys()
                .await?
                .into_iter()
                .filter(|k| k.starts_with(&prefix))
            {
                if let Some(record) = installs.get::<std::convert::Infallible>(&key).await? {
                    records.push(record.state);
                }
            }
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::to_value(&records)?)?
                );
            } else if records.is_empty() {
                say!("no apps in {tenant}");
            } else {
                say!("{:<20} {:<10} {:<13} objects", "app", "version", "state");
                for r in &records {
                    say!(
                        "{:<20} {:<10} {:<13} {}{}",
                        r.app_id,
                        r.installed_version.as_deref().unwrap_or("-"),
                        crate::wire_name(&r.status),
                        r.objects.join(", "),
                        r.error
                            .as_deref()
                            .map(|e| format!("  (last error: {e})"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AppCommand::Check { .. } => unreachable!("handled above"),
    }
}

/// The compatibility check against the tenant's database, through the control plane's record
/// (its quotas, its sealed token) and the configured backend.
async fn check(
    config: &fleet_config::Config,
    package: &std::path::Path,
    tenant: &str,
) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(tenant).context("--tenant")?;
    let Some(package) = load(package)? else {
        return Ok(crate::exit::input());
    };
    let objects = package.object_definitions()?;
    let runtime = Runtime::connect(config).await?;
    let connector = fleet_control::TenantConnector::new(
        fleet_control::tenants(&runtime).await?,
        fleet_tenantdb::backend_from_config(config)?,
        Arc::new(fleet_tenantdb::key_ring_from_config(config)?),
    );
    let (record, conn) = connector.connect(&tenant).await?;
    let check = fleet_apps::tenant::check(&conn, &package, &objects, &record.quotas).await?;
    say!("{}", serde_json::to_string_pretty(&check)?);
    Ok(if check.compatible {
        ExitCode::SUCCESS
    } else {
        crate::exit::failed()
    })
}
