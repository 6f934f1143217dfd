//! `fleetctl secrets reseal [--dry-run] [--json]`: after the encryption key rotates
//! (`secrets.active_key` names a new key of `secrets.keys`), every tenant's stored connection
//! token still sealed with an older key is opened and sealed again with the active one — one
//! compare-and-set per tenant record (`fleet_tenants::machine::reseal`), so it is safe while the
//! fleet works and safe to run again. `--dry-run` counts, per key id, the tokens each key
//! sealed, and touches nothing; an old key can leave the ring once it reports none on it.
//!
//! Every token is opened on the way, dry run or not (a key id in a token is only a label), so a
//! token no key of the ring opens — its key removed, another tenant's, damaged — and a record
//! that does not decode are listed with their tenant; the pass goes on past them.
//!
//! It reads every record of the tenants bucket: an operator's pass over the fleet, never on a
//! tenant's path. Exit codes: 0 every token opens and is (now, or after a real run) under the
//! active key; 1 something is listed as failed, or the command failed; 2 a configuration error
//! (a key that is not 32 bytes of base64, an active key not in the ring).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Subcommand;
use fleet_protocol::{TenantId, Timestamp};
use fleet_runtime::{Runtime, StateError};
use fleet_tenants::machine::{self, TransitionError};
use serde_json::json;

/// The `secrets` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Re-seal every stored token under the active key (after a key rotation).
    Reseal {
        /// Count the tokens sealed with each key; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// JSON for scripts: the counts by key, re-sealed, failed (tenant and reason).
        #[arg(long)]
        json: bool,
    },
}

/// What a pass found and did.
#[derive(Debug, Default)]
struct Report {
    /// Tenant records read.
    tenants: usize,
    /// Records without a stored token (not provisioned yet, deleted, suspended with revocation).
    without_token: usize,
    /// Tokens that open, by the id of the key that seals them after the pass (as found, in a
    /// dry run).
    by_key: BTreeMap<String, usize>,
    /// Tokens re-sealed under the active key in this pass.
    resealed: usize,
    /// Tenants whose record does not decode, whose token no key of the ring opens, or whose
    /// re-seal failed, with why.
    failed: Vec<(String, String)>,
}

/// Runs a `secrets` subcommand.
pub async fn run(command: SecretsCommand) -> anyhow::Result<ExitCode> {
    let SecretsCommand::Reseal { dry_run, json } = command;
    let config = fleet_config::Config::load()?;
    let keys = fleet_tenantdb::key_ring_from_config(&config)?;
    let runtime = Runtime::attach(&config).await?;
    // An operator's command reports a tenant whose write got no answer at once, instead of
    // waiting out an outage tenant by tenant as a worker would.
    let tenants = fleet_control::tenants(&runtime)
        .await?
        .with_patience(std::time::Duration::ZERO);
    let mut report = Report::default();
    let chain = |e: &(dyn std::error::Error + 'static)| fleet_runtime::error_chain(e);
    for key in tenants
        .keys()
        .await
        .map_err(|e| anyhow::anyhow!(chain(&e)))?
    {
        let Ok(tenant) = TenantId::parse(&key) else {
            continue;
        };
        let current = match tenants.get::<std::convert::Infallible>(&key).await {
            Ok(Some(current)) => current,
            Ok(None) => continue,
            // A record that does not decode is reported with the others, and the pass goes on.
            Err(e @ StateError::Corrupt { .. }) => {
                report.tenants += 1;
                report.failed.push((key.clone(), chain(&e)));
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!(chain(&e))),
        };
        report.tenants += 1;
        let Some(sealed) = current
            .state
            .connection
            .as_ref()
            .and_then(|c| c.sealed_auth_token.as_deref())
        else {
            report.without_token += 1;
            continue;
        };
        let label = sealed.split('.').nth(1).unwrap_or("?").to_owned();
        // Every token is opened, dry run or not: its key id is only a label, and a token no key
        // of the ring opens (its key gone, another tenant's, damaged) must be found before an
        // old key leaves the ring.
        if let Err(e) = keys.open(sealed, tenant.as_str()) {
            report
                .failed
                .push((key.clone(), format!("sealed with {label:?}: {e}")));
            continue;
        }
        if dry_run || !keys.needs_reseal(sealed) {
            *report.by_key.entry(label).or_default() += 1;
            continue;
        }
        let written = tenants
            .transition(&key, |cur| {
                machine::reseal(cur, &tenant, &keys, &Timestamp::now())
            })
            .await;
        match written {
            Ok(_) => {
                report.resealed += 1;
                *report
                    .by_key
                    .entry(keys.active_key().to_owned())
                    .or_default() += 1;
            }
            // Deleted meanwhile: nothing left to re-seal.
            Err(StateError::Refused(TransitionError::Unknown(_))) => {}
            Err(e) => {
                *report.by_key.entry(label).or_default() += 1;
                report.failed.push((key.clone(), chain(&e)));
            }
        }
    }
    print(&report, keys.active_key(), dry_run, json)?;
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        crate::exit::failed()
    })
}

fn print(report: &Report, active: &str, dry_run: bool, as_json: bool) -> anyhow::Result<()> {
    let on_old_keys: usize = report
        .by_key
        .iter()
        .filter(|(id, _)| id.as_str() != active)
        .map(|(_, n)| n)
        .sum();
    if as_json {
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|(tenant, reason)| json!({"tenantId": tenant, "reason": reason}))
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "activeKey": active,
                "dryRun": dry_run,
                "tenants": report.tenants,
                "withoutToken": report.without_token,
                "tokensByKey": report.by_key,
                "onOldKeys": on_old_keys,
                "resealed": report.resealed,
                "failed": failed,
            }))?
        );
        return Ok(());
    }
    say!(
        "{} tenant record(s), {} without a stored token; active key {active:?}",
        report.tenants,
        report.without_token
    );
    for (id, count) in &report.by_key {
        let note = if id == active { " (active)" } else { "" };
        say!("  sealed with {id:?}{note}: {count}");
    }
    if dry_run {
        say!("{on_old_keys} token(s) on older keys would be re-sealed (dry run: nothing changed)");
    } else {
        say!("{} token(s) re-sealed with {active:?}", report.resealed);
    }
    for (tenant, reason) in &report.failed {
        say!("  FAILED {tenant}: {reason}");
    }
    Ok(())
}
