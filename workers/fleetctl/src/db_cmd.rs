//! `fleetctl db introspect|plan|apply`: the schema engine on one database file.
//!
//! `introspect` prints the upstream `IntrospectedSchema` of the tables the engine manages, plus
//! `unmanaged`: the views, triggers, virtual and shadow tables, generated columns and hand-made
//! tables, columns and indexes it leaves alone. `plan` and `apply` treat every database as a
//! tenant database: the bundle's objects plus the system objects, and `apply` registers the
//! bundle as the platform's in the same transaction, as a deploy does — so the engine knows
//! afterwards what it created (and which rename hints it already applied).
//!
//! Exit codes ([`crate::exit`]): 0 done; 1 the plan is refused (destructive without
//! `--allow-destructive`, or impossible for the data) or the apply failed and was rolled back;
//! 2 the bundle is missing or invalid, or the database named does not exist — in every such case
//! the database is untouched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use fleet_config::Config;
use fleet_protocol::TenantId;
use fleet_protocol::deploy::{ChangeType, EntityType};
use fleet_protocol::turso::TursoTokenScope;
use fleet_protocol::{DeployBundle, DeployDiff, MigrationPlan, ObjectDefinition, parse_str};
use fleet_schema::diff::modification;
use fleet_schema::registry::Registered;
use fleet_schema::{
    BoundStatement, Owner, PlanError, PlanOptions, Planned, SchemaError, Unmanaged,
    apply_plan_with, introspect_owned, open_local, plan_database,
};
use fleet_tenantdb::backend_from_config;
use libsql::Connection;
use serde_json::json;

/// Which database: a file, or a tenant's database through the configured backend.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A libSQL database file.
    #[arg(long)]
    db: Option<PathBuf>,
    /// A tenant: its database through the configured backend (`tenantdb.backend`; the local
    /// files under `tenantdb.data_dir` by default), opened with a short-lived token.
    #[arg(long)]
    tenant: Option<String>,
}

/// The `db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Print the live schema of a database (upstream IntrospectedSchema JSON, plus what the
    /// engine leaves alone under `unmanaged`).
    Introspect {
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Show what applying a bundle would do: the DeployDiff and the MigrationPlan.
    Plan {
        /// Where (a missing database plans from empty, creating nothing).
        #[command(flatten)]
        target: Target,
        /// The deploy bundle (JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// Accept changes that lose data (dropped objects/fields, narrowed types, deleted rows).
        #[arg(long)]
        allow_destructive: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Migrate a database to a bundle, in one transaction.
    Apply {
        /// Where (created when missing).
        #[command(flatten)]
        target: Target,
        /// The deploy bundle (JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// Accept changes that lose data.
        #[arg(long)]
        allow_destructive: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// JSON for scripts.
    Json,
    /// A readable summary.
    Text,
}

/// Short lifetime of the tokens fleetctl issues itself to reach a tenant's database.
const OPERATOR_TOKEN_TTL: Duration = Duration::from_secs(600);

/// Opens the target. `None` when it does not exist and `create` is false (nothing is created).
async fn open_target(
    target: &Target,
    create: bool,
) -> anyhow::Result<Option<(Connection, String)>> {
    if let Some(path) = &target.db {
        if !create && !path.exists() {
            return Ok(None);
        }
        return Ok(Some((open_local(path).await?, path.display().to_string())));
    }
    let raw = target.tenant.as_deref().unwrap_or_default();
    let tenant = TenantId::parse(raw).with_context(|| format!("--tenant {raw:?}"))?;
    let config = Config::load()?;
    let backend = backend_from_config(&config)?;
    let database = backend.database_name(&tenant);
    if backend.get_database(&database).await?.is_none() {
        if !create {
            return Ok(None);
        }
        backend.create_database(&tenant, None).await?;
    }
    let scope = if create {
        TursoTokenScope::FullAccess
    } else {
        TursoTokenScope::ReadOnly
    };
    let token = backend
        .issue_token(&database, scope, Some(OPERATOR_TOKEN_TTL))
        .await?;
    let db = backend.open(&database, &token.token).await?;
    Ok(Some((
        db.connect().await?,
        format!("tenant {tenant} ({})", backend.connection_url(&database)),
    )))
}

/// Runs a `db` subcommand.
pub async fn run(command: DbCommand) -> anyhow::Result<ExitCode> {
    match command {
        DbCommand::Introspect { target, format } => {
            let Some((conn, _)) = open_target(&target, false).await? else {
                return Err(crate::exit::usage!("no such database"));
            };
            let schema = introspect_owned(&conn).await?;
            match format {
                Format::Json => {
                    let mut out = serde_json::to_value(schema.to_introspected())?;
                    out["unmanaged"] = serde_json::to_value(&schema.unmanaged)?;
                    say!("{}", serde_json::to_string_pretty(&out)?);
                }
                Format::Text => {
                    for (name, table) in &schema.tables {
                        say!(
                            "table {name}: {} column(s), {} index(es)",
                            table.columns.len(),
                            table.indexes.len()
                        );
                    }
                    print_unmanaged(&schema.unmanaged);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Plan {
            target,
            bundle,
            allow_destructive,
            format,
        } => {
            let Some((_, objects)) = desired_objects(&bundle)? else {
                return Ok(crate::exit::input());
            };
            // Planning never creates or changes the database: a missing one is an empty database.
            let conn = match open_target(&target, false).await? {
                Some((conn, _)) => conn,
                None => open_local(Path::new(":memory:")).await?,
            };
            match plan_database(&conn, &objects, PlanOptions { allow_destructive }).await {
                Ok(planned) => {
                    print_planned(&planned, format)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => refused(err, format),
            }
        }
        DbCommand::Apply {
            target,
            bundle,
            allow_destructive,
            format,
        } => {
            let Some((parsed, objects)) = desired_objects(&bundle)? else {
                return Ok(crate::exit::input());
            };
            let Some((conn, label)) = open_target(&target, true).await? else {
                bail!("cannot open the database")
            };
            let planned =
                match plan_database(&conn, &objects, PlanOptions { allow_destructive }).await {
                    Ok(planned) => planned,
                    Err(err) => return refused(err, format),
                };
            // The bundle is registered in the same transaction (the plan creates the system
            // tables where they are missing), so the engine knows what it created.
            let register = registration(&parsed, planned.registered.as_deref().unwrap_or_default());
            match apply_plan_with(&conn, &planned.plan, &register).await {
                Ok(result) => {
                    match format {
                        Format::Json => say!(
                            "{}",
                            serde_json::to_string_pretty(
                                &json!({"diff": planned.diff, "plan": planned.plan, "result": result})
                            )?
                        ),
                        Format::Text => {
                            print_planned(&planned, Format::Text)?;
                            say!(
                                "applied {} statement(s) to {label} in {} ms",
                                result.statements_executed,
                                result.duration_ms
                            );
                            if !register.is_empty() {
                                say!(
                                    "registered the bundle's metadata ({} change(s) to sys_metadata)",
                                    register.len()
                                );
                            }
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    eprintln!("fleetctl: {}", fleet_runtime::error_chain(&err));
                    eprintln!("the database is unchanged");
                    Ok(crate::exit::failed())
                }
            }
        }
    }
}

/// Source recorded on the registry rows `fleetctl db apply` writes (owner: the platform).
const APPLY_SOURCE: &str = "fleetctl:db-apply";

/// The statements that register `bundle` as the platform's whole metadata (what a deploy
/// writes, without a deployment record).
fn registration(bundle: &DeployBundle, registered: &[Registered]) -> Vec<BoundStatement> {
    let items = fleet_schema::registry::bundle_items(bundle);
    fleet_schema::registry::replace(
        registered,
        &Owner::Platform,
        &items,
        &bundle.manifest.version,
        APPLY_SOURCE,
    )
    .0
}

/// The bundle and the objects to migrate to: the bundle's, plus the base system objects (every
/// database `fleetctl db` migrates is a tenant database, with the metadata registry that records
/// what the engine created). `None` after printing the bundle's issues.
fn desired_objects(bundle: &Path) -> anyhow::Result<Option<(DeployBundle, Vec<ObjectDefinition>)>> {
    let Some((bundle, objects)) = load_objects(bundle)? else {
        return Ok(None);
    };
    Ok(Some((
        bundle,
        fleet_schema::system::with_system_objects(&objects),
    )))
}

/// The bundle and its objects, or `None` after printing every issue (a missing file is one
/// issue).
fn load_objects(path: &Path) -> anyhow::Result<Option<(DeployBundle, Vec<ObjectDefinition>)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            say!("bundle: cannot read {}: {err} (unreadable)", path.display());
            return Ok(None);
        }
    };
    let bundle = match parse_str::<DeployBundle>(&text) {
        Ok(checked) => {
            for warning in &checked.warnings {
                eprintln!("warning: {warning}");
            }
            checked.value
        }
        Err(rejected) => {
            for issue in &rejected.issues {
                say!("{issue}");
            }
            eprintln!(
                "{} is not a valid DeployBundle; the database was not touched",
                path.display()
            );
            return Ok(None);
        }
    };
    let objects = bundle.object_definitions().context("bundle objects")?;
    Ok(Some((bundle, objects)))
}

/// Prints why a plan was refused — on stdout as JSON (`refused`, with the losses or conflicts
/// and the diff) for `--format json`, else in words on stderr — and exits 1.
fn refused(err: SchemaError, format: Format) -> anyhow::Result<ExitCode> {
    if format == Format::Json {
        let out = match &err {
            SchemaError::Desired(e) => json!({"refused": "invalid", "issues": e.issues}),
            SchemaError::Plan(PlanError::Destructive { losses, diff }) => {
                json!({"refused": "destructive", "losses": losses, "diff": diff})
            }
            SchemaError::Plan(PlanError::Conflicts { conflicts }) => {
                json!({"refused": "conflicts", "conflicts": conflicts})
            }
            _ => return Err(err.into()),
        };
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(crate::exit::failed());
    }
    match err {
        SchemaError::Desired(err) => {
            for issue in &err.issues {
                say!("{issue}");
            }
            eprintln!(
                "the bundle's objects do not map to a valid schema; the database was not touched"
            );
            Ok(crate::exit::input())
        }
        SchemaError::Plan(PlanError::Destructive { losses, diff }) => {
            print_diff(&diff);
            eprintln!(
                "refused: the migration would lose data (pass --allow-destructive to accept):"
            );
            for loss in losses {
                eprintln!("  {}: {}", loss.entity, loss.what);
            }
            Ok(crate::exit::failed())
        }
        SchemaError::Plan(PlanError::Conflicts { conflicts }) => {
            eprintln!("refused: the migration cannot apply, with or without --allow-destructive:");
            for conflict in conflicts {
                eprintln!("  {}: {}", conflict.entity, conflict.why);
            }
            Ok(crate::exit::failed())
        }
        other => Err(other.into()),
    }
}

fn print_planned(planned: &Planned, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let out = json!({
                "diff": planned.diff,
                "plan": planned.plan,
                "losses": planned.losses,
                "notes": planned.notes,
                "unmanaged": planned.unmanaged,
            });
            say!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            print_diff(&planned.diff);
            print_plan(&planned.plan);
            for loss in &planned.losses {
                say!("  ! accepted loss — {}: {}", loss.entity, loss.what);
            }
            for note in &planned.notes {
                say!("  note: {note}");
            }
            print_unmanaged(&planned.unmanaged);
        }
    }
    Ok(())
}

fn print_diff(diff: &DeployDiff) {
    let s = diff.summary;
    say!(
        "diff: {} added, {} modified, {} removed{}",
        s.added,
        s.modified,
        s.removed,
        if diff.has_breaking_changes {
            " — BREAKING"
        } else {
            ""
        }
    );
    for change in &diff.changes {
        let sign = match change.change_type {
            ChangeType::Added => '+',
            ChangeType::Modified => '~',
            ChangeType::Removed => '-',
        };
        let kind = crate::wire_name(&change.entity_type);
        let name = match &change.parent_entity {
            Some(parent) => format!("{parent}.{}", change.entity_name),
            None => change.entity_name.clone(),
        };
        let renamed = change
            .old_value
            .as_ref()
            .and_then(|v| v.get("name"))
            .and_then(|n| n.as_str())
            .filter(|old| *old != change.entity_name && change.change_type == ChangeType::Modified);
        let modified = match (&change.old_value, &change.new_value) {
            (Some(old), Some(new)) if change.entity_type == EntityType::Field => {
                modification(old, new)
            }
            _ => Vec::new(),
        };
        match (renamed, modified.is_empty()) {
            (Some(old), _) => say!("  {sign} {kind:<6} {name} (renamed from {old})"),
            (None, true) => say!("  {sign} {kind:<6} {name}"),
            (None, false) => say!("  {sign} {kind:<6} {name}: {}", modified.join(", ")),
        }
    }
}

/// What the engine leaves alone, one line each (nothing when there is nothing).
fn print_unmanaged(unmanaged: &[Unmanaged]) {
    if unmanaged.is_empty() {
        return;
    }
    say!("unmanaged (left as they are): {}", unmanaged.len());
    for u in unmanaged {
        let kind = serde_json::to_value(u.kind)
            .ok()
            .and_then(|v| v.as_str().map(|k| k.replace('_', " ")))
            .unwrap_or_default();
        match &u.table {
            Some(table) => say!("  {kind} {table}.{}", u.name),
            None => say!("  {kind} {}", u.name),
        }
    }
}

fn print_plan(plan: &MigrationPlan) {
    say!(
        "plan: {} statement(s), {}, {}",
        plan.statements.len(),
        plan.dialect,
        if plan.reversible {
            "reversible"
        } else {
            "not reversible"
        }
    );
    for statement in &plan.statements {
        let mut lines = statement.sql.lines();
        say!(
            "  {:>3}. {}",
            statement.order + 1,
            lines.next().unwrap_or_default()
        );
        for line in lines {
            say!("       {line}");
        }
    }
}
