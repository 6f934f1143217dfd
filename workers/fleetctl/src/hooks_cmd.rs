//! `fleetctl hooks [--subject S] [--tenant T] [--since T] [--json]`: the lifecycle hooks the
//! workers published (CloudEvents on `hooks.>`: `tenant.created`, `tenant.suspended`,
//! `quota.warning`, `deploy.completed`, …), oldest first — what the platform's other services
//! receive, read back from the hooks stream (kept 7 days).

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;
use fleet_runtime::CloudEvent;
use fleet_runtime::topology::names;

/// `fleetctl hooks`.
#[derive(Debug, Args)]
pub struct HooksArgs {
    /// Only this hook subject, after `hooks.` (`quota.warning`, `tenant.*`, `deploy.>`).
    #[arg(long, default_value = ">")]
    subject: String,
    /// Only the hooks about this tenant (the CloudEvent's `subject`).
    #[arg(long)]
    tenant: Option<String>,
    /// Only those published since: a duration back (`90s`, `30m`, `2h`, `7d`) or an RFC 3339
    /// time.
    #[arg(long, value_parser = crate::dlq_cmd::parse_since)]
    since: Option<DateTime<Utc>>,
    /// JSON for scripts (an array of CloudEvents).
    #[arg(long)]
    json: bool,
}

/// Runs `fleetctl hooks`.
pub async fn run(args: HooksArgs) -> anyhow::Result<ExitCode> {
    crate::read::check_subject_pattern(&args.subject)
        .map_err(|why| crate::exit::usage!("--subject: {why}"))?;
    let config = fleet_config::Config::load()?;
    let runtime = fleet_runtime::Runtime::attach(&config).await?;
    let filter = format!("hooks.{}", args.subject);
    let events: Vec<CloudEvent> =
        crate::read::messages(&runtime, names::HOOKS, &filter, args.since)
            .await?
            .into_iter()
            .filter_map(|(_, message)| serde_json::from_slice::<CloudEvent>(&message.payload).ok())
            .filter(|event| args.tenant.as_deref().is_none_or(|t| event.subject == t))
            .collect();
    if args.json {
        say!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(ExitCode::SUCCESS);
    }
    for event in &events {
        let data = serde_json::to_string(&event.data).unwrap_or_default();
        let data = if data.chars().count() > 100 {
            format!("{}…", data.chars().take(99).collect::<String>())
        } else {
            data
        };
        say!(
            "{}  {:<34} {:<20} {}",
            crate::dlq_cmd::printable(&event.time),
            crate::dlq_cmd::printable(&event.event_type),
            crate::dlq_cmd::printable(&event.subject),
            crate::dlq_cmd::printable(&data)
        );
    }
    say!("{} hook(s)", events.len());
    Ok(ExitCode::SUCCESS)
}
