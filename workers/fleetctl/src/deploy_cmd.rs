//! `fleetctl deploy <bundle-file-or-dir> [--tenants a,b | --all] [--waves 1,10%,100%]
//! [--dry-run] [--allow-destructive] [--no-wait]` and `fleetctl deploy status|resume|cancel <id>`.
//!
//! A bundle directory holds `manifest.json` and `objects/`, `views/`, `flows/`, `permissions/`
//! with one JSON document per file (a `bundle.json` in it is used as is).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use clap::{Args, Subcommand};
use fleet_protocol::{
    DeployControl, DeployControlAction, DeployRequest, DeployTarget, DeploymentId, RolloutOptions,
    TenantId, Timestamp,
};
use fleet_rollouts::{self as rollout, Deployment, RolloutStatus};
use fleet_runtime::{Runtime, StateStore};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

/// `fleetctl deploy`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeployArgs {
    #[command(subcommand)]
    action: Option<DeployAction>,
    /// The bundle: a JSON file, or a directory (see the module docs).
    bundle: Option<PathBuf>,
    /// Target these tenants (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "all")]
    tenants: Vec<String>,
    /// Target every active tenant.
    #[arg(long)]
    all: bool,
    /// Cumulative wave sizes: counts or percentages.
    #[arg(long, value_delimiter = ',', default_value = "1,10%,100%")]
    waves: Vec<String>,
    /// Halt when more than this share of finished tenants failed.
    #[arg(long, default_value_t = 0.2)]
    max_failure_ratio: f64,
    /// Plan every tenant, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Accept changes that lose data.
    #[arg(long)]
    allow_destructive: bool,
    /// Return the deployment id at once.
    #[arg(long)]
    no_wait: bool,
    /// Deployment id (generated when absent).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DeployAction {
    /// A deployment's state.
    Status {
        /// Deployment id.
        id: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Restart a halted or cancelled deployment (its failed tenants are retried).
    Resume {
        /// Deployment id.
        id: String,
    },
    /// Stop a deployment (tenants not started stay untouched).
    Cancel {
        /// Deployment id.
        id: String,
    },
    /// Undo a finished deployment on every tenant it migrated (its stored rollback plans).
    Rollback {
        /// Deployment id.
        id: String,
    },
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The bundle document of a file or directory.
fn bundle_document(path: &Path) -> anyhow::Result<Value> {
    if path.is_file() {
        return read_json(path);
    }
    if path.join("bundle.json").is_file() {
        return read_json(&path.join("bundle.json"));
    }
    let mut bundle = Map::new();
    let manifest = if path.join("manifest.json").is_file() {
        read_json(&path.join("manifest.json"))?
    } else {
        json!({"version": "0"})
    };
    bundle.insert("manifest".into(), manifest);
    for part in ["objects", "views", "flows", "permissions"] {
        let mut items = Vec::new();
        if let Ok(entries) = std::fs::read_dir(path.join(part)) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            for file in files {
                items.push(read_json(&file)?);
            }
        }
        bundle.insert(part.into(), Value::Array(items));
    }
    Ok(Value::Object(bundle))
}

/// Runs `fleetctl deploy`.
pub async fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::connect(&config).await?;
    let deployments = fleet_control::deployments(&runtime).await?;
    match args.action {
        Some(DeployAction::Status { id, json }) => {
            let id = DeploymentId::parse(id)?;
            let Some(d) = deployments
                .get::<rollout::RolloutError>(id.as_str())
                .await?
                .map(|v| v.state)
            else {
                eprintln!("no deployment {id}");
                return Ok(ExitCode::from(1));
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_summary(&d);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(DeployAction::Resume { id }) => {
            let id = DeploymentId::parse(id)?;
            control(&runtime, &deployments, &id, DeployControlAction::Resume).await
        }
        Some(DeployAction::Rollback { id }) => {
            let id = DeploymentId::parse(id)?;
            let request = fleet_protocol::DeployRollbackRequest {
                deployment_id: id.clone(),
            };
            let message_id = format!("rollback:{id}:{}", chrono::Utc::now().timestamp_millis());
            runtime
                .publisher
                .publish_json(
                    &runtime.topology.subject("deploy.rollback"),
                    &message_id,
                    &request,
                    HeaderMap::new(),
                )
                .await?;
            for _ in 0..6000 {
                if let Some(d) = deployments
                    .get::<rollout::RolloutError>(id.as_str())
                    .await?
                    .map(|v| v.state)
                    && d.status == RolloutStatus::RolledBack
                {
                    print_summary(&d);
                    let failed = d.rollbacks.values().filter(|r| r.error.is_some()).count();
                    return Ok(if failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!("still rolling back; follow it with `fleetctl deploy status {id}`");
            Ok(ExitCode::from(1))
        }
        Some(DeployAction::Cancel { id }) => {
            let id = DeploymentId::parse(id)?;
            control(&runtime, &deployments, &id, DeployControlAction::Cancel).await
        }
        None => {
            let Some(path) = args.bundle else {
                bail!("name a bundle file or directory")
            };
            let bundle = bundle_document(&path)?;
            let id = match args.id {
                Some(id) => DeploymentId::parse(id)?,
                None => DeploymentId::parse(format!(
                    "d-{}-{:06x}",
                    chrono::Utc::now().format("%Y%m%d%H%M%S"),
                    rand::random::<u32>() & 0xff_ffff
                ))?,
            };
            if !args.all && args.tenants.is_empty() {
                bail!("name --tenants or --all");
            }
            let request = json!({
                "deploymentId": id,
                "bundle": bundle,
                "target": DeployTarget {
                    tenants: args.tenants.iter().map(|t| TenantId::parse(t.clone())).collect::<Result<_, _>>()?,
                    all: args.all,
                },
                "rollout": RolloutOptions {
                    waves: args.waves,
                    max_failure_ratio: args.max_failure_ratio,
                    allow_destructive: args.allow_destructive,
                    dry_run: args.dry_run,
                },
            });
            // Refuse a bad request here, with every issue, before anything is published.
            if let Err(rejected) = fleet_protocol::parse_value::<DeployRequest>(&request) {
                for issue in rejected.errors() {
                    say!("{issue}");
                }
                eprintln!("the deployment was not requested");
                return Ok(ExitCode::from(1));
            }
            runtime
                .publisher
                .publish_json(
                    &runtime.topology.subject("deploy.requested"),
                    id.as_str(),
                    &request,
                    HeaderMap::new(),
                )
                .await?;
            if args.no_wait {
                say!("{id}");
                return Ok(ExitCode::SUCCESS);
            }
            watch(&deployments, &id).await
        }
    }
}

/// Sends `action` to the deployer on `deploy.control.<id>` — after checking it against the
/// record, so an illegal one is refused here with the reason — and waits until the deployer has
/// carried it out.
async fn control(
    runtime: &Runtime,
    deployments: &StateStore<Deployment>,
    id: &DeploymentId,
    action: DeployControlAction,
) -> anyhow::Result<ExitCode> {
    let current = deployments
        .get::<rollout::RolloutError>(id.as_str())
        .await?;
    let Some(before) = current.clone() else {
        eprintln!("no deployment {id}");
        return Ok(ExitCode::from(1));
    };
    let check = match action {
        DeployControlAction::Resume => rollout::resume(current.as_ref(), id, &Timestamp::now()),
        DeployControlAction::Cancel => rollout::cancel(current.as_ref(), id, &Timestamp::now()),
    };
    if let Err(refused) = check {
        eprintln!("{refused}");
        return Ok(ExitCode::from(1));
    }
    let request = DeployControl {
        deployment_id: id.clone(),
        action,
    };
    let message_id = format!(
        "control:{id}:{action:?}:{}",
        chrono::Utc::now().timestamp_millis()
    );
    runtime
        .publisher
        .publish_json(
            &runtime.topology.subject(&format!("deploy.control.{id}")),
            &message_id,
            &request,
            HeaderMap::new(),
        )
        .await?;
    let wanted = match action {
        DeployControlAction::Resume => RolloutStatus::Running,
        DeployControlAction::Cancel => RolloutStatus::Cancelled,
    };
    for _ in 0..300 {
        if let Some(now) = deployments
            .get::<rollout::RolloutError>(id.as_str())
            .await?
            && now.revision > before.revision
        {
            if now.state.status != wanted {
                eprintln!(
                    "deployment {id} is {:?}: the deployer did not {action:?} it",
                    now.state.status
                );
                return Ok(ExitCode::from(1));
            }
            match action {
                DeployControlAction::Resume => say!(
                    "deployment {id} resumed at wave {}",
                    now.state.current_wave + 1
                ),
                DeployControlAction::Cancel => say!("deployment {id} cancelled"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the deployer has not carried out {action:?} yet (is it running?); follow it with `fleetctl deploy status {id}`"
    );
    Ok(ExitCode::from(1))
}

/// Follows a deployment with a progress bar per wave until it ends.
async fn watch(
    deployments: &StateStore<Deployment>,
    id: &DeploymentId,
) -> anyhow::Result<ExitCode> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut wave_bars: Vec<ProgressBar> = Vec::new();
    for _ in 0..6000 {
        let Some(d) = deployments
            .get::<rollout::RolloutError>(id.as_str())
            .await?
            .map(|v| v.state)
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if wave_bars.is_empty() {
            for (i, wave) in d.waves.iter().enumerate() {
                let bar = bars.add(ProgressBar::new(wave.len() as u64));
                bar.set_style(style.clone());
                bar.set_prefix(format!("wave {}", i + 1));
                wave_bars.push(bar);
            }
        }
        for (wave, bar) in d.waves.iter().zip(&wave_bars) {
            let done = wave.iter().filter(|t| d.results.contains_key(*t)).count();
            let failed = wave
                .iter()
                .filter(|t| d.results.get(*t).is_some_and(|r| r.error.is_some()))
                .count();
            bar.set_position(done as u64);
            bar.set_message(if failed > 0 {
                format!("{failed} failed")
            } else {
                String::new()
            });
        }
        if d.status != RolloutStatus::Running {
            for bar in &wave_bars {
                bar.abandon();
            }
            print_summary(&d);
            return Ok(if d.status == RolloutStatus::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("still running after 10 minutes; follow it with `fleetctl deploy status {id}`");
    Ok(ExitCode::from(1))
}

fn print_summary(d: &Deployment) {
    let (ready, failed, pending) = d.counts();
    let skipped = d.results.values().filter(|r| r.skipped).count();
    say!(
        "deployment {}  version {}  {:?}{}  ready {ready} (skipped {skipped})  failed {failed}  pending {pending}",
        d.id,
        d.version,
        d.status,
        if d.dry_run { " (dry run)" } else { "" }
    );
    if let Some(reason) = &d.reason {
        say!("reason: {reason}");
    }
    if d.dry_run {
        let changing = d.results.values().filter(|r| r.statements > 0).count();
        let breaking = d.results.values().filter(|r| r.breaking).count();
        let [added, modified, removed] = d.results.values().fold([0, 0, 0], |acc, r| {
            [
                acc[0] + r.changes[0],
                acc[1] + r.changes[1],
                acc[2] + r.changes[2],
            ]
        });
        say!(
            "dry run: {changing} tenant(s) would change ({added} added, {modified} modified, {removed} removed in all); {breaking} with breaking changes"
        );
    }
    for (tenant, result) in d.results.iter().filter(|(_, r)| r.error.is_some()) {
        say!(
            "  failed {tenant}: {}",
            result.error.as_deref().unwrap_or_default()
        );
    }
}
