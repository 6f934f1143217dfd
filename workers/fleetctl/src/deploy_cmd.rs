//! `fleetctl deploy <bundle-file-or-dir> [--tenants a,b | --all] [--waves 1,10%,100%]
//! [--dry-run] [--allow-destructive] [--no-wait]` and `fleetctl deploy status|resume|cancel <id>`.
//!
//! A bundle directory holds `manifest.json` and `objects/`, `views/`, `flows/`, `permissions/`
//! with one JSON document per file (a `bundle.json` in it is used as is).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use fleet_client::{ClientError, FleetClient};
use fleet_protocol::{
    DeployControlAction, DeployRequest, DeployTarget, DeploymentId, RolloutOptions, TenantId,
};
use fleet_rollouts::{Deployment, RolloutStatus};
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
        /// Follow a running deployment with its wave bars until it ends.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
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
    if !path.is_dir() {
        return Err(crate::exit::usage!(
            "{}: no such bundle file or directory",
            path.display()
        ));
    }
    if !path.join("manifest.json").is_file() && !path.join("bundle.json").is_file() {
        return Err(crate::exit::usage!(
            "{}: a bundle directory holds manifest.json (or bundle.json)",
            path.display()
        ));
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

/// The deploy request the command line describes, and its deployment id.
fn request(args: &DeployArgs) -> anyhow::Result<(DeploymentId, Value)> {
    let Some(path) = &args.bundle else {
        return Err(crate::exit::usage!("name a bundle file or directory"));
    };
    let bundle = bundle_document(path)?;
    if !args.all && args.tenants.is_empty() {
        return Err(crate::exit::usage!("name --tenants or --all"));
    }
    let id = rollout_id(args.id.clone(), "d")?;
    let request = json!({
        "deploymentId": id,
        "bundle": bundle,
        "target": DeployTarget {
            tenants: args
                .tenants
                .iter()
                .map(|t| TenantId::parse(t.clone()))
                .collect::<Result<_, _>>()?,
            all: args.all,
            ..DeployTarget::default()
        },
        "rollout": RolloutOptions {
            waves: args.waves.clone(),
            max_failure_ratio: args.max_failure_ratio,
            allow_destructive: args.allow_destructive,
            dry_run: args.dry_run,
        },
    });
    Ok((id, request))
}

/// Runs `fleetctl deploy`.
pub async fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    // The ids, the bundle and the whole request are read before connecting: a bad one is
    // exit 2 with NATS down too.
    let request = match &args.action {
        Some(
            DeployAction::Status { id, .. }
            | DeployAction::Resume { id }
            | DeployAction::Cancel { id }
            | DeployAction::Rollback { id },
        ) => {
            DeploymentId::parse(id.clone())?;
            None
        }
        None => Some(request(&args)?),
    };
    let config = fleet_config::Config::load()?;
    let client = FleetClient::connect(&config)
        .await?
        .with_timeout(Duration::from_secs(600));
    match args.action {
        Some(DeployAction::Status {
            id,
            json: false,
            watch: true,
        }) => {
            let id = DeploymentId::parse(id)?;
            // A deployment just requested (`--no-wait`) appears once the deployer took it.
            let mut found = false;
            for _ in 0..50 {
                if client.deployment(&id).await?.is_some() {
                    found = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !found {
                eprintln!("no deployment {id}");
                return Ok(crate::exit::failed());
            }
            watch(&client, &id).await
        }
        Some(DeployAction::Status { id, json, .. }) => {
            let id = DeploymentId::parse(id)?;
            let Some((d, _)) = client.deployment(&id).await? else {
                eprintln!("no deployment {id}");
                return Ok(crate::exit::failed());
            };
            let failures = client.failures(&d).await?;
            if json {
                let failures: Vec<Value> = failures
                    .iter()
                    .map(|(tenant, error)| json!({"tenantId": tenant, "error": error}))
                    .collect();
                let mut document = serde_json::to_value(&d)?;
                if let Some(object) = document.as_object_mut() {
                    object.insert("failures".into(), Value::Array(failures));
                }
                say!("{}", serde_json::to_string_pretty(&document)?);
            } else {
                print_summary(&d, &failures);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(DeployAction::Resume { id }) => {
            let id = DeploymentId::parse(id)?;
            control(&client, &id, DeployControlAction::Resume).await
        }
        Some(DeployAction::Cancel { id }) => {
            let id = DeploymentId::parse(id)?;
            control(&client, &id, DeployControlAction::Cancel).await
        }
        Some(DeployAction::Rollback { id }) => {
            let id = DeploymentId::parse(id)?;
            match client.rollback(&id).await {
                Ok(d) => {
                    print_summary(&d, &client.failures(&d).await?);
                    Ok(if d.rollback_tally.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        crate::exit::failed()
                    })
                }
                Err(ClientError::TimedOut { .. }) => {
                    eprintln!("still rolling back; follow it with `fleetctl deploy status {id}`");
                    Ok(crate::exit::failed())
                }
                Err(e @ (ClientError::NotFound { .. } | ClientError::Refused { .. })) => {
                    eprintln!("{e}");
                    Ok(crate::exit::failed())
                }
                Err(e) => Err(e.into()),
            }
        }
        None => {
            let (id, request) = request.expect("read above for a deploy");
            start_rollout::<DeployRequest>(&client, &id, "deploy.requested", &request, args.no_wait)
                .await
        }
    }
}

/// The id a rollout is requested under: `--id`, or `<prefix>-<time>-<random>`.
pub(crate) fn rollout_id(given: Option<String>, prefix: &str) -> anyhow::Result<DeploymentId> {
    Ok(match given {
        Some(id) => DeploymentId::parse(id)?,
        None => DeploymentId::parse(format!(
            "{prefix}-{}-{:06x}",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            rand::random::<u32>() & 0xff_ffff
        ))?,
    })
}

/// Requests a rollout (a bundle's or an app's) on `subject` under `id` through the client and
/// watches it: refused when the id is taken or the request is not a valid `R` (every issue
/// printed), so nothing is published then.
pub(crate) async fn start_rollout<R: fleet_protocol::Spec>(
    client: &FleetClient,
    id: &DeploymentId,
    subject: &str,
    request: &Value,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
    match client.request_rollout::<R>(id, subject, request).await {
        Ok(()) => {}
        Err(ClientError::Refused { status, why, .. }) => {
            eprintln!("deployment {id} already exists ({status}); {why} (--id)");
            return Ok(crate::exit::input());
        }
        Err(ClientError::Invalid { rejected, .. }) => {
            for issue in rejected.errors() {
                say!("{issue}");
            }
            eprintln!("the deployment was not requested");
            return Ok(crate::exit::input());
        }
        Err(e) => return Err(e.into()),
    }
    if no_wait {
        say!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    watch(client, id).await
}

/// Resumes or cancels through the client (checked against the record first, so an illegal
/// one is refused with the reason), waiting until the deployer carried it out.
async fn control(
    client: &FleetClient,
    id: &DeploymentId,
    action: DeployControlAction,
) -> anyhow::Result<ExitCode> {
    let client = client.clone().with_timeout(Duration::from_secs(30));
    match client.control_deployment(id, action).await {
        Ok(d) => {
            match action {
                DeployControlAction::Resume => say!(
                    "deployment {id} resumed at wave {}: now {:?}",
                    d.current_wave + 1,
                    d.status
                ),
                DeployControlAction::Cancel => say!("deployment {id} cancelled"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::NotFound { .. }) => {
            eprintln!("no deployment {id}");
            Ok(crate::exit::failed())
        }
        Err(ClientError::Refused { status, why, .. }) if why.starts_with("it ended") => {
            eprintln!("deployment {id} ended {status} before the cancel was carried out");
            Ok(crate::exit::failed())
        }
        Err(ClientError::Refused { why, .. }) => {
            eprintln!("{why}");
            Ok(crate::exit::failed())
        }
        Err(ClientError::TimedOut { .. }) => {
            eprintln!(
                "the deployer has not carried out {action:?} yet (is it running?); follow it with `fleetctl deploy status {id}`"
            );
            Ok(crate::exit::failed())
        }
        Err(e) => Err(e.into()),
    }
}

/// Follows a deployment with a progress bar per wave until it ends.
pub(crate) async fn watch(client: &FleetClient, id: &DeploymentId) -> anyhow::Result<ExitCode> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}  ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut wave_bars: Vec<ProgressBar> = Vec::new();
    for _ in 0..6000 {
        let Some((d, _)) = client.deployment(id).await? else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if wave_bars.is_empty() {
            for wave in 0..d.wave_ends.len() {
                let range = d.wave_range(wave);
                let bar = bars.add(ProgressBar::new(range.end - range.start));
                bar.set_style(style.clone());
                bar.set_prefix(format!("wave {}", wave + 1));
                wave_bars.push(bar);
            }
        }
        // Waves run in order: the results so far fill the waves from the first.
        let recorded = d.tally.recorded();
        for (wave, bar) in wave_bars.iter().enumerate() {
            let range = d.wave_range(wave);
            bar.set_position(recorded.clamp(range.start, range.end) - range.start);
            bar.set_message(if wave == d.current_wave {
                let (ready, failed, pending) = d.counts();
                format!("ready {ready}, failed {failed}, pending {pending}")
            } else {
                String::new()
            });
        }
        if d.status != RolloutStatus::Running {
            for bar in &wave_bars {
                bar.abandon();
            }
            print_summary(&d, &client.failures(&d).await?);
            return Ok(if d.status == RolloutStatus::Completed {
                ExitCode::SUCCESS
            } else {
                crate::exit::failed()
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("still running after 10 minutes; follow it with `fleetctl deploy status {id}`");
    Ok(crate::exit::failed())
}

fn print_summary(d: &Deployment, failures: &[(TenantId, String)]) {
    let (ready, failed, pending) = d.counts();
    let t = &d.tally;
    say!(
        "deployment {}  version {}  {:?}{}  ready {ready} (skipped {})  failed {failed}  pending {pending}",
        d.id,
        d.version,
        d.status,
        if d.dry_run { " (dry run)" } else { "" },
        t.skipped
    );
    if let Some(reason) = &d.reason {
        say!("reason: {reason}");
    }
    if d.dry_run {
        let [added, modified, removed] = t.changes;
        say!(
            "dry run: {} tenant(s) would change ({added} added, {modified} modified, {removed} removed in all); {} with breaking changes",
            t.changed,
            t.breaking
        );
    }
    if d.rollback_targets > 0 {
        say!(
            "rollback: {} of {} undone, {} failed",
            d.rollback_tally.ready,
            d.rollback_targets,
            d.rollback_tally.failed
        );
    }
    for (tenant, error) in failures {
        say!("  failed {tenant}: {error}");
    }
}
