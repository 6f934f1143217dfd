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
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use fleet_apps::InstallRecord;
use fleet_client::{ClientError, FleetClient, InstallOptions};
use fleet_protocol::{AppPackage, TenantId};
use fleet_runtime::Runtime;
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
    client: &FleetClient,
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
        client,
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

/// Prints the outcome of an install or upgrade (or why it was refused); the exit code.
fn report(done: Result<InstallRecord, ClientError>) -> anyhow::Result<ExitCode> {
    let record = match done {
        Ok(record) => record,
        Err(
            e @ (ClientError::Failed { .. }
            | ClientError::Refused { .. }
            | ClientError::NotFound { .. }),
        ) => {
            eprintln!("refused: {}", refusal(&e));
            return Ok(crate::exit::failed());
        }
        Err(ClientError::TimedOut { .. }) => {
            eprintln!(
                "no outcome in time: the installer may be down (`fleetctl dlq list` shows refused commands)"
            );
            return Ok(crate::exit::failed());
        }
        Err(e @ ClientError::TooLarge { .. }) => {
            return Err(crate::exit::usage!("{e}: the package is too large to send"));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(result) = &record.result {
        say!(
            "{} {} is {} in {}: objects {}; tables created {}; {} seed record(s); {} ms",
            record.app_id,
            record.version,
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
    Ok(ExitCode::SUCCESS)
}

/// The reason of a refusal, as the installer (or the client's check of the record) gave it.
fn refusal(e: &ClientError) -> String {
    match e {
        ClientError::Failed { error, .. } => error.clone(),
        ClientError::Refused {
            kind: "tenant",
            name,
            status,
            ..
        } => {
            format!("tenant {name} is {status}, not active")
        }
        ClientError::Refused { why, .. } => why.clone(),
        ClientError::NotFound {
            kind: "tenant",
            name,
        } => format!("unknown tenant {name}"),
        other => other.to_string(),
    }
}

/// An install or upgrade of the package at `path` (exit 2 with every issue when it is
/// invalid): in waves when no `--tenant` is named, else through the installer, its outcome
/// reported.
async fn install_or_upgrade(
    client: &FleetClient,
    path: &std::path::Path,
    upgrade: bool,
    target: &Where,
    waves: Waves,
    options: InstallOptions,
    timeout: u64,
) -> anyhow::Result<ExitCode> {
    let Some(package) = load(path)? else {
        return Ok(crate::exit::input());
    };
    let Some(tenant) = &target.tenant else {
        let verb = if upgrade { "upgrade" } else { "install" };
        return rollout(
            client,
            &package,
            verb,
            target,
            waves,
            options.skip_seed_data,
            options.allow_destructive,
        )
        .await;
    };
    let tenant = TenantId::parse(tenant.as_str()).context("--tenant")?;
    let client = client.clone().with_timeout(Duration::from_secs(timeout));
    report(client.install(&tenant, &package, upgrade, options).await)
}

/// Runs an `app` subcommand.
pub async fn run(command: AppCommand) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    if let AppCommand::Check { package, tenant } = &command {
        return check(&config, package, tenant).await;
    }
    let client = FleetClient::connect(&config).await?;
    match command {
        AppCommand::Install {
            package,
            target,
            waves,
            skip_seed_data,
            timeout,
        } => {
            let options = InstallOptions {
                skip_seed_data,
                ..InstallOptions::default()
            };
            install_or_upgrade(&client, &package, false, &target, waves, options, timeout).await
        }
        AppCommand::Upgrade {
            package,
            target,
            waves,
            allow_destructive,
            timeout,
        } => {
            let options = InstallOptions {
                allow_destructive,
                ..InstallOptions::default()
            };
            install_or_upgrade(&client, &package, true, &target, waves, options, timeout).await
        }
        AppCommand::Uninstall {
            app,
            tenant,
            drop_tables,
            timeout,
        } => {
            let tenant = TenantId::parse(&tenant).context("--tenant")?;
            let client = client.with_timeout(Duration::from_secs(timeout));
            match client.uninstall(&tenant, &app, drop_tables).await {
                Ok(()) => {
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
                Err(e) => report(Err(e)),
            }
        }
        AppCommand::List { tenant, json } => {
            let tenant = TenantId::parse(&tenant).context("--tenant")?;
            let runtime = client.runtime();
            let installs = fleet_control::installs(runtime).await?;
            if client.record(&tenant).await?.is_none() {
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
    let runtime = Runtime::attach(config).await?;
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
