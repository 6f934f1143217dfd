//! `fleetctl tenant create|status|list|suspend|resume|delete|plan`.
//!
//! `create` publishes `tenant.created` exactly as the registration service does (payload: the
//! TenantProvisioningRequest fields plus `tenantId`; `Nats-Msg-Id`: the tenant id); the others
//! read the tenants' KV records and the progress stream, or publish lifecycle commands.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use clap::Subcommand;
use fleet_protocol::{
    TenantCreated, TenantId, TenantLifecycleCommand, TenantPlan, TenantProvisioningRequest,
    TenantRegion,
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
        /// Why.
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
        .with_context(|| format!("{value:?} is not a valid {what}"))
}

async fn connect() -> anyhow::Result<(fleet_config::Config, Runtime, StateStore<TenantRecord>)> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::connect(&config).await?;
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

/// Runs a `tenant` subcommand.
pub async fn run(command: TenantCommand) -> anyhow::Result<ExitCode> {
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
            if id.is_some() && count != 1 {
                bail!("--id names one tenant: use it with --count 1");
            }
            let plan: TenantPlan = parse_enum("plan", &plan)?;
            let region: TenantRegion = parse_enum("region", &region)?;
            let mut ids = Vec::new();
            for _ in 0..count {
                let tenant = match &id {
                    Some(id) => TenantId::parse(id.clone())?,
                    None => TenantId::parse(format!("t-{:08x}", rand::random::<u32>()))?,
                };
                let command = TenantCreated {
                    tenant_id: tenant.clone(),
                    request: TenantProvisioningRequest {
                        org_id: org.clone(),
                        plan,
                        region,
                        display_name: None,
                        admin_email: admin_email.clone(),
                        metadata: None,
                    },
                };
                let subject = runtime.topology.subject("tenant.created");
                runtime
                    .publisher
                    .publish_json(&subject, tenant.as_str(), &command, HeaderMap::new())
                    .await?;
                ids.push(tenant);
            }
            if !wait {
                for tenant in &ids {
                    say!("{tenant}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let started = Instant::now();
            let mut pending = ids.clone();
            let mut failed = 0;
            while !pending.is_empty() {
                if started.elapsed() > Duration::from_secs(timeout) {
                    eprintln!("timed out with {} tenant(s) not active", pending.len());
                    return Ok(ExitCode::from(1));
                }
                let mut still = Vec::new();
                for tenant in pending {
                    match record(&tenants, &tenant).await? {
                        Some(r) if status_name(&r) == "active" => {
                            say!(
                                "{tenant}  active  in {} ms",
                                r.total_duration_ms.unwrap_or_default()
                            )
                        }
                        Some(r) if status_name(&r) == "failed" => {
                            failed += 1;
                            say!("{tenant}  failed  {}", r.error.unwrap_or_default());
                        }
                        _ => still.push(tenant),
                    }
                }
                pending = still;
                if !pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        TenantCommand::Status { id, watch, json } => {
            let tenant = TenantId::parse(id)?;
            let mut last = None;
            loop {
                let Some(current) = record(&tenants, &tenant).await? else {
                    eprintln!("no tenant {tenant}");
                    return Ok(ExitCode::from(1));
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
            let keys = tenants.keys().await.map_err(anyhow::Error::msg)?;
            let mut all = Vec::new();
            for key in keys {
                if let Some(r) = record(&tenants, &TenantId::parse(key)?).await? {
                    all.push(r);
                }
            }
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
            lifecycle(&runtime, "tenant.suspended", &id, reason, None).await
        }
        TenantCommand::Resume { id } => {
            lifecycle(&runtime, "tenant.resumed", &id, None, None).await
        }
        TenantCommand::Delete { id } => {
            lifecycle(&runtime, "tenant.deleted", &id, None, None).await
        }
        TenantCommand::Plan { id, plan } => {
            let plan: TenantPlan = parse_enum("plan", &plan)?;
            lifecycle(&runtime, "tenant.plan_changed", &id, None, Some(plan)).await
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
                    return Ok(ExitCode::from(1));
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
                return Ok(ExitCode::from(1));
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
                    return Ok(ExitCode::from(1));
                }
                Err(rejected) => {
                    for issue in &rejected.issues {
                        say!("{issue}");
                    }
                    eprintln!("not valid quotas; nothing was sent");
                    return Ok(ExitCode::from(1));
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

async fn lifecycle(
    runtime: &Runtime,
    subject: &str,
    id: &str,
    reason: Option<String>,
    plan: Option<TenantPlan>,
) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(id.to_owned())?;
    let command = TenantLifecycleCommand {
        tenant_id: tenant.clone(),
        reason,
        plan,
        quotas: None,
    };
    let message_id = format!(
        "{subject}:{tenant}:{}",
        chrono::Utc::now().timestamp_millis()
    );
    runtime
        .publisher
        .publish_json(
            &runtime.topology.subject(subject),
            &message_id,
            &command,
            HeaderMap::new(),
        )
        .await?;
    say!("{subject} published for {tenant}");
    Ok(ExitCode::SUCCESS)
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
            serde_json::to_value(step.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
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

/// Every progress entry of the tenant, oldest first.
async fn history(runtime: &Runtime, tenant: &TenantId) -> anyhow::Result<Vec<ProgressEvent>> {
    let stream_name = runtime
        .topology
        .stream(names::PROGRESS)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let stream = runtime.js.get_stream(&stream_name).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: runtime
                .topology
                .subject(&format!("progress.tenant.{tenant}")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let mut events = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(300))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Ok(event) = serde_json::from_slice(&message.payload) {
                events.push(event);
            }
            got += 1;
        }
        if got == 0 {
            return Ok(events);
        }
    }
}
