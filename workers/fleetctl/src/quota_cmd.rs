//! `fleetctl quota show <tenant>`: a tenant's usage against its plan's quotas, measured now from
//! its database (upstream `TenantUsage`, one `QuotaEnforcementResult` per quota).
//!
//! `fleetctl quota list [--over P] [--json]`: the tenants whose last audit found a quota at or
//! above `P` % of its limit (their usage records, read in one pass).
//!
//! Exit codes: 0 within every quota; 1 over one, an unknown tenant, or the command failed;
//! 2 a usage error ([`crate::exit`]).

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
        /// JSON for scripts (the usage records, upstream field names).
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `quota` subcommand.
pub async fn run(command: QuotaCommand) -> anyhow::Result<ExitCode> {
    let (tenant, json) = match command {
        QuotaCommand::Show { tenant, json } => (tenant, json),
        QuotaCommand::Audit { tenant } => return audit(tenant).await,
        QuotaCommand::List { over, json } => return list(over, json).await,
    };
    let tenant = TenantId::parse(&tenant).context("tenant")?;
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::attach(&config).await?;
    let connector = fleet_control::TenantConnector::new(
        fleet_control::tenants(&runtime).await?,
        fleet_tenantdb::backend_from_config(&config)?,
        Arc::new(fleet_tenantdb::key_ring_from_config(&config)?),
    );
    let (record, conn) = match connector.connect(&tenant).await {
        Ok(found) => found,
        Err(e @ fleet_control::ConnectError::Unknown(_)) => {
            eprintln!("{e}");
            return Ok(crate::exit::failed());
        }
        Err(e) => return Err(e.into()),
    };
    let mut usage = fleet_schema::usage::measure(&conn).await?;
    // The data API's requests of the current (or last whole) minute, as the gateways count them.
    if let Some(value) = runtime
        .bucket(fleet_runtime::topology::names::API_USAGE)
        .await?
        .get(tenant.as_str())
        .await?
    {
        let minute = chrono::Utc::now().timestamp().max(0) as u64 / 60;
        usage.totals.api_requests_this_minute =
            serde_json::from_slice::<fleet_tenants::audit::ApiMinute>(&value)
                .map(|m| m.recent(minute))
                .unwrap_or_default();
    }
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
            "tenant {tenant} (plan {}): {} object(s), {} record(s), {} byte(s), {} deployment(s) today, {} user(s), {} API request(s) this minute",
            serde_json::to_value(record.plan)?
                .as_str()
                .unwrap_or_default(),
            usage.totals.current_object_count,
            usage.totals.current_record_count,
            usage.totals.current_storage_bytes,
            usage.totals.deployments_today,
            usage.totals.current_users,
            usage.totals.api_requests_this_minute
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
        crate::exit::failed()
    } else {
        ExitCode::SUCCESS
    })
}

/// Asks the quota auditor for an audit now: of every tenant, or of one.
async fn audit(tenant: Option<String>) -> anyhow::Result<ExitCode> {
    let tenant = tenant
        .map(|t| TenantId::parse(&t).context("--tenant"))
        .transpose()?;
    let config = fleet_config::Config::load()?;
    let client = fleet_client::FleetClient::connect(&config).await?;
    match client.request_audit(tenant.as_ref()).await {
        Ok(bucket) => {
            match &tenant {
                None => say!("audit of every tenant requested (bucket {bucket})"),
                Some(tenant) => say!("audit of {tenant} requested"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ fleet_client::ClientError::NotFound { .. }) => {
            eprintln!("unknown {}", e.to_string().trim_start_matches("no "));
            Ok(crate::exit::failed())
        }
        Err(e) => Err(e.into()),
    }
}

/// The tenants whose last audit found a quota at or above `over` percent of its limit.
async fn list(over: f64, json: bool) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::attach(&config).await?;
    let found: Vec<fleet_tenants::audit::UsageRecord> =
        crate::read::latest(&runtime, fleet_runtime::topology::names::USAGE)
            .await?
            .into_iter()
            .map(|(_, record)| record)
            .filter(|record: &fleet_tenants::audit::UsageRecord| record.highest_percent() >= over)
            .collect();
    if json {
        say!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(ExitCode::SUCCESS);
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
