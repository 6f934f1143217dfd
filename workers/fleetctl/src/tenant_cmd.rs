//! `fleetctl tenant create|status|list|suspend|resume|delete|plan`.
//!
//! `create` publishes `tenant.created` exactly as the registration service does (payload: the
//! TenantProvisioningRequest fields plus `tenantId`; `Nats-Msg-Id`: the tenant id); the others
//! read the tenants' KV records and the progress stream, or publish lifecycle commands.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use clap::Subcommand;
use fleet_protocol::{
    TenantId, TenantLifecycleCommand, TenantPlan, TenantProvisioningRequest, TenantRegion,
};
use fleet_runtime::topology::names;
use fleet_runtime::{ProgressEvent, Runtime, StateStore};
use fleet_tenants::machine::{TenantRecord, status_name};
use futures::StreamExt;

/// The `tenant` subcommands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Register tenants: publish `tenant.created` as the registration service would.
    Create {
        /// How many tenants.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Tenant id (only with --count 1); generated otherwise.
        #[arg(long)]
        id: Option<String>,
        /// Organisation id.
        #[arg(long, default_value = "org_demo")]
        org: String,
        /// Plan: free, pro, enterprise.
        #[arg(long, default_value = "free")]
        plan: String,
        /// Region: us-east, eu-west, …
        #[arg(long, default_value = "us-east")]
        region: String,
        /// Admin e-mail (seeded as the tenant's first user).
        #[arg(long)]
        admin_email: Option<String>,
        /// Wait until every tenant is active (or failed) and print how long each took.
        #[arg(long)]
        wait: bool,
        /// How long to wait at most, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// A tenant's state and every step with its duration.
    Status {
        /// Tenant id.
        id: String,
        /// Follow it live until it settles.
        #[arg(long)]
        watch: bool,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Every tenant.
    List {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Suspend a tenant.
    Suspend {
        /// Tenant id.
        id: String,
        /// Why it is suspended: kept on the record and shown by `tenant status`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended tenant.
    Resume {
        /// Tenant id.
        id: String,
    },
    /// Delete a tenant (after its grace period, unless immediate deletion is configured).
    Delete {
        /// Tenant id.
        id: String,
    },
    /// Move a tenant to another plan.
    Plan {
        /// Tenant id.
        id: String,
        /// The new plan.
        plan: String,
    },
    /// Quotas of one tenant over its plan's: `tenant quota set acme maxStorageBytes=1048576`.
    #[command(subcommand)]
    Quota(QuotaAction),
}

/// `fleetctl tenant quota …`.
#[derive(Debug, Subcommand)]
pub enum QuotaAction {
    /// Override quotas (upstream TenantQuota names, positive integers).
    Set {
        /// Tenant id.
        id: String,
        /// `name=value` pairs (`maxObjects=50 maxStorageBytes=1048576`).
        #[arg(required = true)]
        quotas: Vec<String>,
    },
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, value: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::json!(value))
        .map_err(|_| crate::exit::usage!("{value:?} is not a valid {what}"))
}

async fn connect() -> anyhow::Result<(fleet_config::Config, Runtime, StateStore<TenantRecord>)> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::attach(&config).await?;
    let tenants = fleet_control::tenants(&runtime).await?;
    Ok((config, runtime, tenants))
}

async fn record(
    tenants: &StateStore<TenantRecord>,
    id: &TenantId,
) -> anyhow::Result<Option<TenantRecord>> {
    Ok(tenants
        .get::<std::convert::Infallible>(id.as_str())
        .await
        .map_err(|e| anyhow::anyhow!(fleet_runtime::error_chain(&e)))?
        .map(|v| v.state))
}

/// Checks the command line's ids and names before anything connects: a bad one is exit 2
/// whether or not NATS answers.
fn check(command: &TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create {
            id,
            count,
            plan,
            region,
            ..
        } => {
            if id.is_some() && *count != 1 {
                return Err(crate::exit::usage!(
                    "--id names one tenant: use it with --count 1"
                ));
            }
            if let Some(id) = id {
                TenantId::parse(id.clone())?;
            }
            parse_enum::<TenantPlan>("plan", plan)?;
            parse_enum::<TenantRegion>("region", region)?;
        }
        TenantCommand::Status { id, .. }
        | TenantCommand::Suspend { id, .. }
        | TenantCommand::Resume { id }
        | TenantCommand::Delete { id }
        | TenantCommand::Quota(QuotaAction::Set { id, .. }) => {
            TenantId::parse(id.clone())?;
        }
        TenantCommand::Plan { id, plan } => {
            TenantId::parse(id.clone())?;
            parse_enum::<TenantPlan>("plan", plan)?;
        }
        TenantCommand::List { .. } => {}
    }
    Ok(())
}

/// Runs a `tenant` subcommand.
pub async fn run(command: TenantCommand) -> anyhow::Result<ExitCode> {
    check(&command)?;
    let (_config, runtime, tenants) = connect().await?;
    match command {
        TenantCommand::Create {
            count,
            id,
            org,
            plan,
            region,
            admin_email,
            wait,
            timeout,
        } => {
            let plan: TenantPlan = parse_enum("plan", &plan)?;
            let region: TenantRegion = parse_enum("region", &region)?;
            // Watching before publishing: no transition is missed.
            let watcher = if wait {
                Some(runtime.bucket(names::TENANTS).await?.watch_all().await?)
            } else {
                None
            };
            let client = fleet_client::FleetClient::from_runtime(runtime.clone()).await?;
            let request = TenantProvisioningRequest {
                org_id: org.clone(),
                plan,
                region,
                display_name: None,
                admin_email: admin_email.clone(),
                metadata: None,
            };
            let mut ids = Vec::new();
            let mut sent_at = std::collections::HashMap::new();
            for _ in 0..count {
                let tenant = match &id {
                    Some(id) => TenantId::parse(id.clone())?,
                    None => TenantId::parse(format!("t-{:08x}", rand::random::<u32>()))?,
                };
                sent_at.insert(tenant.to_string(), Instant::now());
                // Validated, refused on a conflicting registration, published with its id.
                client.register(&tenant, &request).await?;
                ids.push(tenant);
            }
            match watcher {
                None => {
                    for tenant in &ids {
                        say!("{tenant}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(watcher) => {
                    wait_active(&tenants, watcher, sent_at, Duration::from_secs(timeout)).await
                }
            }
        }
        TenantCommand::Status { id, watch, json } => {
            let tenant = TenantId::parse(id)?;
            let mut last = None;
            loop {
                let Some(current) = record(&tenants, &tenant).await? else {
                    eprintln!("no tenant {tenant}");
                    return Ok(crate::exit::failed());
                };
                if last.as_ref() != Some(&current) {
                    if json {
                        let history = history(&runtime, &tenant).await?;
                        say!(
                            "{}",
                            serde_json::to_string_pretty(
                                &serde_json::json!({"tenant": current, "history": history})
                            )?
                        );
                    } else {
                        print_status(&current);
                        if !watch {
                            say!("history:");
                            for event in history(&runtime, &tenant).await? {
                                say!(
                                    "  {}  {:<18} {:<12} {}{}",
                                    event.at,
                                    event.step,
                                    event.status,
                                    event
                                        .duration_ms
                                        .map(|d| format!("{d} ms"))
                                        .unwrap_or_default(),
                                    event
                                        .error
                                        .map(|e| format!("  error: {e}"))
                                        .unwrap_or_default()
                                );
                            }
                        }
                    }
                }
                let settled = matches!(
                    status_name(&current).as_str(),
                    "active" | "failed" | "suspended" | "deleted"
                );
                if !watch || settled {
                    return Ok(ExitCode::SUCCESS);
                }
                last = Some(current);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        TenantCommand::List { json } => {
            let all: Vec<TenantRecord> = crate::read::latest(&runtime, names::TENANTS)
                .await?
                .into_iter()
                .map(|(_, record)| record)
                .collect();
            // Written through a locked handle so a closed pipe (`| head`) ends quietly.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
            } else {
                writeln!(
                    out,
                    "{:<20} {:<12} {:<10} {:<12} {:>8}",
                    "TENANT", "STATUS", "PLAN", "REGION", "MS"
                )?;
                for r in &all {
                    writeln!(
                        out,
                        "{:<20} {:<12} {:<10} {:<12} {:>8}",
                        r.tenant_id,
                        status_name(r),
                        format!("{:?}", r.plan).to_lowercase(),
                        r.region.to_string(),
                        r.total_duration_ms
                            .map(|m| m.to_string())
                            .unwrap_or_default()
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Suspend { id, reason } => {
            let tenant = TenantId::parse(id)?;
            let client = fleet_client::FleetClient::from_runtime(runtime.clone()).await?;
            client.suspend(&tenant, reason).await?;
            say!("tenant {tenant} suspended");
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Resume { id } => {
            let tenant = TenantId::parse(id)?;
            let client = fleet_client::FleetClient::from_runtime(runtime.clone()).await?;
            client.resume(&tenant).await?;
            say!("tenant {tenant} active");
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Delete { id } => {
            let tenant = TenantId::parse(id)?;
            let client = fleet_client::FleetClient::from_runtime(runtime.clone()).await?;
            client.destroy(&tenant).await?;
            let status = record(&tenants, &tenant)
                .await?
                .map(|r| status_name(&r))
                .unwrap_or_default();
            say!("tenant {tenant} {status}");
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Plan { id, plan } => {
            let tenant = TenantId::parse(id)?;
            let plan: TenantPlan = parse_enum("plan", &plan)?;
            let client = fleet_client::FleetClient::from_runtime(runtime.clone()).await?;
            client.change_plan(&tenant, plan).await?;
            say!("tenant {tenant} is on plan {plan:?}");
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Quota(QuotaAction::Set { id, quotas }) => {
            let mut document = serde_json::Map::new();
            for pair in &quotas {
                let parsed = pair
                    .split_once('=')
                    .and_then(|(name, value)| Some((name, value.parse::<u64>().ok()?)));
                let Some((name, value)) = parsed else {
                    eprintln!(
                        "{pair:?}: write name=value, the value a positive integer; nothing was sent"
                    );
                    return Ok(crate::exit::input());
                };
                document.insert(name.to_owned(), serde_json::json!(value));
            }
            let tenants = fleet_control::tenants(&runtime).await?;
            if tenants
                .get::<std::convert::Infallible>(&id)
                .await?
                .is_none()
            {
                eprintln!("unknown tenant {id}; nothing was sent");
                return Ok(crate::exit::failed());
            }
            let quotas = match fleet_protocol::parse_value::<fleet_protocol::TenantQuota>(
                &serde_json::Value::Object(document),
            ) {
                Ok(checked) if checked.warnings.is_empty() => checked.value,
                Ok(checked) => {
                    for warning in &checked.warnings {
                        say!("{warning}");
                    }
                    eprintln!(
                        "refused: a name above is not a quota (upstream TenantQuota names); nothing was sent"
                    );
                    return Ok(crate::exit::input());
                }
                Err(rejected) => {
                    for issue in &rejected.issues {
                        say!("{issue}");
                    }
                    eprintln!("not valid quotas; nothing was sent");
                    return Ok(crate::exit::input());
                }
            };
            let tenant = TenantId::parse(id.clone())?;
            let command = TenantLifecycleCommand {
                tenant_id: tenant.clone(),
                reason: None,
                plan: None,
                quotas: Some(quotas),
            };
            runtime
                .publisher
                .publish_json(
                    &runtime.topology.subject("tenant.quota_changed"),
                    &format!(
                        "tenant.quota_changed:{tenant}:{}",
                        chrono::Utc::now().timestamp_millis()
                    ),
                    &command,
                    HeaderMap::new(),
                )
                .await?;
            say!("tenant.quota_changed published for {tenant}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(record: &TenantRecord) {
    let reason = record
        .suspension_reason
        .as_deref()
        .filter(|_| record.status() == fleet_protocol::TenantProvisioningStatus::Suspended)
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    say!(
        "tenant {}  {}{reason}  plan {:?}  region {}  org {}",
        record.tenant_id,
        status_name(record),
        record.plan,
        record.region,
        record.org_id
    );
    if let Some(ms) = record.total_duration_ms {
        say!(
            "provisioned in {ms} ms at {}",
            record
                .provisioned_at
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
    }
    for step in &record.steps {
        say!(
            "  {:<17} {:<10} {:>6}{}",
            step.name,
            crate::wire_name(&step.status),
            step.duration_ms
                .map(|d| format!("{d} ms"))
                .unwrap_or_default(),
            step.error
                .as_ref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(error) = &record.error {
        say!("error: {error}");
    }
}

/// Waits until every tenant of `sent_at` (id → when its `tenant.created` was published) is
/// active or failed, with a progress bar on a terminal, and prints how many turned active, in
/// how long and at what rate (from the first registration published to the last active), the
/// register → active latency (p50, p99, max, as this client saw it: publish to the record
/// turning active), each tenant's
/// line when there are at most [`EACH_LINE_UP_TO`], and every failure. Exit 1 when one failed
/// or `timeout` passed first.
async fn wait_active(
    tenants: &StateStore<TenantRecord>,
    mut watcher: async_nats::jetstream::kv::Watch,
    mut sent_at: std::collections::HashMap<String, Instant>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let total = sent_at.len();
    let started = Instant::now();
    // The rate and the total time run from the first registration published, as each
    // latency does (publishing many takes a while before the wait starts).
    let first_sent = sent_at.values().min().copied().unwrap_or(started);
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} active  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut latencies: Vec<(String, Duration)> = Vec::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let mut settle =
        |key: &str,
         record: &TenantRecord,
         sent_at: &mut std::collections::HashMap<String, Instant>| {
            let status = status_name(record);
            if !matches!(status.as_str(), "active" | "failed") {
                return;
            }
            let Some(sent) = sent_at.remove(key) else {
                return;
            };
            if status == "active" {
                latencies.push((key.to_owned(), sent.elapsed()));
            } else {
                failed.push((key.to_owned(), record.error.clone().unwrap_or_default()));
            }
            bar.set_position(latencies.len() as u64);
            bar.set_message(format!(
                "failed {}, waiting {}",
                failed.len(),
                sent_at.len()
            ));
        };
    while !sent_at.is_empty() {
        if started.elapsed() > timeout {
            bar.abandon();
            eprintln!(
                "timed out after {} s with {} tenant(s) not active yet (is the provisioner running? `fleetctl status`)",
                timeout.as_secs(),
                sent_at.len()
            );
            return Ok(crate::exit::failed());
        }
        tokio::select! {
            entry = watcher.next() => {
                let Some(entry) = entry else { break };
                let entry = entry?;
                if sent_at.contains_key(&entry.key)
                    && let Ok(record) = serde_json::from_slice::<TenantRecord>(&entry.value)
                {
                    settle(&entry.key, &record, &mut sent_at);
                }
            }
            // A tenant that was already active (a repeated registration) changes nothing, so
            // no update comes for it: read the ones still waiting now and then.
            _ = poll.tick() => {
                let waiting: Vec<String> = sent_at.keys().cloned().collect();
                for key in waiting {
                    if let Some(found) = tenants.get::<std::convert::Infallible>(&key).await? {
                        settle(&key, &found.state, &mut sent_at);
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    let elapsed = first_sent.elapsed();
    if total <= EACH_LINE_UP_TO {
        latencies.sort_by(|a, b| a.0.cmp(&b.0));
        for (tenant, latency) in &latencies {
            say!("{tenant}  active  in {} ms", latency.as_millis());
        }
    }
    for (tenant, error) in &failed {
        say!("{tenant}  failed  {error}");
    }
    let mut sorted: Vec<Duration> = latencies.iter().map(|(_, l)| *l).collect();
    sorted.sort();
    if !sorted.is_empty() {
        let at =
            |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
        say!(
            "{} of {total} tenant(s) active in {:.1} s ({:.0}/s); register → active p50 {} ms, p99 {} ms, max {} ms",
            sorted.len(),
            elapsed.as_secs_f64(),
            sorted.len() as f64 / elapsed.as_secs_f64().max(0.001),
            at(0.5).as_millis(),
            at(0.99).as_millis(),
            sorted[sorted.len() - 1].as_millis()
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        crate::exit::failed()
    })
}

/// `tenant create --wait` prints one line per tenant up to this many; the summary always.
const EACH_LINE_UP_TO: usize = 20;

/// Every progress entry of the tenant, oldest first.
async fn history(runtime: &Runtime, tenant: &TenantId) -> anyhow::Result<Vec<ProgressEvent>> {
    let messages = crate::read::messages(
        runtime,
        names::PROGRESS,
        &format!("progress.tenant.{tenant}"),
        None,
    )
    .await?;
    Ok(messages
        .iter()
        .filter_map(|(_, message)| serde_json::from_slice(&message.payload).ok())
        .collect())
}
