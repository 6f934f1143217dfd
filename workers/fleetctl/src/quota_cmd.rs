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
}

/// Runs a `quota` subcommand.
pub async fn run(command: QuotaCommand) -> anyhow::Result<ExitCode> {
    let QuotaCommand::Show { tenant, json } = command;
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
