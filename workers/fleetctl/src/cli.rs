//! The command tree and its dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::db_cmd::{self, DbCommand};
use crate::{schema_cmd, validate_cmd};

/// Operate the ObjectOS Fleet.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a document against an ObjectStack protocol type; print it normalized.
    ///
    /// Exit 0 and the normalized JSON (upstream defaults applied) when valid; exit 1 and every
    /// issue as `path: message (code)` when invalid; exit 2 when the file cannot be read or is
    /// not JSON.
    Validate {
        /// The upstream schema name (DeployBundle, Tenant, TursoMultiTenantConfig, …); see
        /// `fleetctl schema list`.
        type_name: String,
        /// The JSON file, or `-` for standard input.
        file: PathBuf,
    },
    /// The protocol's JSON Schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Print the effective configuration (defaults, config files, FLEET_* environment).
    Config,
    /// A tenant database's schema: introspect it, plan a bundle against it, apply a bundle.
    #[command(subcommand)]
    Db(DbCommand),
    /// Tenants: register (as the registration service would), inspect, suspend, resume, delete.
    #[command(subcommand)]
    Tenant(crate::tenant_cmd::TenantCommand),
    /// Deploy a bundle to tenants in waves; `deploy status|resume|cancel <id>`.
    Deploy(crate::deploy_cmd::DeployArgs),
    /// Marketplace apps: install, upgrade, uninstall, list, check (compatibility).
    #[command(subcommand)]
    App(crate::app_cmd::AppCommand),
    /// Quotas: a tenant's usage against its plan's limits.
    #[command(subcommand)]
    Quota(crate::quota_cmd::QuotaCommand),
    /// Lifecycle hooks published (CloudEvents), oldest first.
    Hooks(crate::hooks_cmd::HooksArgs),
    /// The fleet at a glance: tenants, deployments, installs, dead letters, consumers, workers.
    Status(crate::status_cmd::StatusArgs),
    /// Dead letters: list, show, replay once their cause is fixed, purge.
    #[command(subcommand)]
    Dlq(crate::dlq_cmd::DlqCommand),
    /// Tenant connection tokens at rest: `secrets reseal` after the encryption key rotates.
    #[command(subcommand)]
    Secrets(crate::secrets_cmd::SecretsCommand),
    /// The JetStream topology: `streams [show]` as the server reports it, `streams init`.
    Streams {
        #[command(subcommand)]
        command: Option<crate::streams_cmd::StreamsCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// List every protocol type with its upstream schema file.
    List,
    /// Write one JSON Schema file per type into a folder.
    Export {
        /// Destination folder (created when missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { type_name, file } => validate_cmd::run(&type_name, &file),
        Command::Schema(SchemaCommand::List) => schema_cmd::list(),
        Command::Schema(SchemaCommand::Export { out }) => schema_cmd::export(&out),
        Command::Db(command) => db_cmd::run(command).await,
        Command::Tenant(command) => crate::tenant_cmd::run(command).await,
        Command::Dlq(command) => crate::dlq_cmd::run(command).await,
        Command::Status(args) => crate::status_cmd::run(args).await,
        Command::Hooks(args) => crate::hooks_cmd::run(args).await,
        Command::App(command) => crate::app_cmd::run(command).await,
        Command::Quota(command) => crate::quota_cmd::run(command).await,
        Command::Deploy(args) => crate::deploy_cmd::run(args).await,
        Command::Streams { command } => crate::streams_cmd::run(command).await,
        Command::Secrets(command) => crate::secrets_cmd::run(command).await,
        Command::Config => {
            let config = fleet_config::Config::load()?;
            say!("{}", serde_json::to_string_pretty(&config.redacted())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
