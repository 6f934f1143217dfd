//! `fleetctl quota show <tenant>`: a tenant's usage against its plan's quotas, measured now from
//! its database (upstream `TenantUsage`, one `QuotaEnforcementResult` per quota).
//!
//! Exit codes: 0 within every quota; 1 over one (or an unknown tenant); 2 the command could not
//! run.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use fleet_protocol::TenantId;
use fleet_runtime::Runtime;
use serde_json::json;

/// The `quota` subcommands.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Usage against limits, with percentages.
    Show {
        /// The tenant.
        tenant: String,
        /// JSON for scripts (TenantUsage, the quotas, one result per quota).
        #[arg(long)]
        json: bool,
    },
    /// Audit now: every tenant (a tick), or one.
    Audit {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// The tenants near or over a limit, from their last audit.
    List {
        /// At or above this share of a limit, in percent.
        #[arg(long, default_value_t = 80.0)]
        over: f64,
    },
}

/// Runs a `quota` subcommand.
pub async fn run(command: QuotaCommand) -> anyhow::Result<ExitCode> {
    let (tenant, json) = match command {
        QuotaCommand::Show { tenant, json } => (tenant, json),
        QuotaCommand::Audit { tenant } => return audit(tenant).await,
        QuotaCommand::List { over } => return list(over).await,
    };
    let tenant = TenantId::parse(&tenant).context("tenant")?;
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::connect(&config).await?;
    let connector = fleet_control::TenantConnector::new(
        fleet_control::tenants(&runtime).await?,
        fleet_tenantdb::backend_from_config(&config)?,
        Arc::new(fleet_tenantdb::key_ring_from_config(&config)?),
    );
    let (record, conn) = match connector.connect(&tenant).await {
        Ok(found) => found,
        Err(e @ fleet_control::ConnectError::Unknown(_)) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let usage = fleet_schema::usage::measure(&conn).await?;
    let results =
        fleet_tenants::quota::evaluate(&record.quotas, &usage.totals, usage.largest_object());
    let over = results.iter().any(|(_, r)| !r.allowed);
    if json {
        let quotas: Vec<_> = results
            .iter()
            .map(|(name, r)| json!({"quota": name, "result": r}))
            .collect();
        let out = json!({
            "tenantId": tenant,
            "plan": record.plan,
            "usage": usage.totals,
            "recordsPerObject": usage.records,
            "quotas": record.quotas,
            "results": quotas,
        });
        say!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        say!(
            "tenant {tenant} (plan {}): {} object(s), {} record(s), {} byte(s), {} deployment(s) today, {} user(s)",
            serde_json::to_value(record.plan)?
                .as_str()
                .unwrap_or_default(),
            usage.totals.current_object_count,
            usage.totals.current_record_count,
            usage.totals.current_storage_bytes,
            usage.totals.deployments_today,
            usage.totals.current_users
        );
        say!(
            "{:<22} {:>14} {:>14} {:>8}",
            "quota",
            "used",
            "limit",
            "used %"
        );
        for (name, r) in &results {
            let used = r.current_usage.unwrap_or_default();
            let limit = r.limit.unwrap_or_default();
            let percent = if limit > 0.0 {
                used / limit * 100.0
            } else {
                0.0
            };
            say!(
                "{:<22} {:>14} {:>14} {:>7.1}%{}",
                name,
                used,
                limit,
                percent,
                if r.allowed { "" } else { "  OVER" }
            );
        }
        if results.is_empty() {
            say!("(the plan sets no quotas)");
        }
    }
    Ok(if over {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Publishes a tick for a bucket of its own (every tenant), or one tenant's audit job.
async fn audit(tenant: Option<String>) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::connect(&config).await?;
    let now = chrono::Utc::now();
    // A bucket no periodic tick uses (any second, not a multiple of the interval's start), so
    // its audits are not dropped as duplicates of the last ones.
    let bucket = now.timestamp().max(0) as u64;
    let nonce = now.timestamp_millis();
    match tenant {
        None => {
            runtime
                .publisher
                .publish_json(
                    &runtime.topology.subject("quota.tick"),
                    &format!("quota-tick:now:{nonce}"),
                    &json!({"bucket": bucket}),
                    async_nats::HeaderMap::new(),
                )
                .await?;
            say!("audit of every tenant requested (bucket {bucket})");
        }
        Some(tenant) => {
            let tenant = TenantId::parse(&tenant).context("--tenant")?;
            let tenants = fleet_control::tenants(&runtime).await?;
            if tenants
                .get::<std::convert::Infallible>(tenant.as_str())
                .await?
                .is_none()
            {
                eprintln!("unknown tenant {tenant}");
                return Ok(ExitCode::from(1));
            }
            runtime
                .publisher
                .publish_json(
                    &runtime.topology.subject(&format!("quota.audit.{tenant}")),
                    &format!("quota-audit:now:{nonce}:{tenant}"),
                    &json!({"tenantId": tenant, "bucket": bucket}),
                    async_nats::HeaderMap::new(),
                )
                .await?;
            say!("audit of {tenant} requested");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The tenants whose last audit found a quota at or above `over` percent of its limit.
async fn list(over: f64) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::connect(&config).await?;
    let usage = fleet_control::usage(&runtime).await?;
    let mut found = Vec::new();
    for key in usage.keys().await? {
        if let Some(record) = usage.get::<std::convert::Infallible>(&key).await? {
            let record = record.state;
            if record.highest_percent() >= over {
                found.push(record);
            }
        }
    }
    if found.is_empty() {
        say!("no tenant at or above {over} % of a limit");
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<24} {:>8}  quotas at or above {over} %",
        "tenant",
        "highest"
    );
    for record in &found {
        let names: Vec<String> = record
            .results
            .iter()
            .filter(|c| {
                matches!((c.result.current_usage, c.result.limit), (Some(u), Some(l)) if l > 0.0 && u / l * 100.0 >= over)
            })
            .map(|c| format!("{}{}", c.quota, if c.result.allowed { "" } else { " (OVER)" }))
            .collect();
        say!(
            "{:<24} {:>7.1}%  {}{}",
            record.tenant_id,
            record.highest_percent(),
            names.join(", "),
            record
                .over_since
                .as_ref()
                .map(|s| format!("; over since {s}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
