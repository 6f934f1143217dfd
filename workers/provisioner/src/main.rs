//! The provisioner binary: configuration → telemetry → runtime → handler, until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use fleet_provisioner::{Provisioner, ProvisionerSettings};
use fleet_runtime::topology::names;
use fleet_runtime::{Hooks, Runtime, Scheduler, StateStore};
use fleet_tenants::machine::TenantRecord;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("provisioner: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = fleet_config::Config::load()?;
    let telemetry = fleet_runtime::telemetry::init("provisioner", &config.telemetry)?;
    let shutdown = fleet_runtime::shutdown::shutdown_signal();
    let runtime = Runtime::connect(&config)
        .await
        .context("starting the runtime")?;
    let tenants = StateStore::<TenantRecord>::new(
        "tenant",
        runtime.bucket(names::TENANTS).await?,
        runtime.publisher.clone(),
        runtime.topology.subject("progress.tenant"),
    );
    let backend = fleet_tenantdb::backend_from_config(&config)?;
    let keys = Arc::new(fleet_tenantdb::key_ring_from_config(&config)?);
    let hooks = Hooks::new(
        runtime.publisher.clone(),
        "/objectos-fleet/provisioner",
        runtime.topology.prefix.clone(),
    );
    let scheduler = Scheduler::new(runtime.publisher.clone(), runtime.topology.prefix.clone());
    let settings = ProvisionerSettings::from_config(&config).map_err(anyhow::Error::msg)?;
    let provisioner = Arc::new(Provisioner::new(
        tenants, backend, keys, hooks, scheduler, settings,
    ));
    tracing::info!(url = %config.nats.url, "provisioner started");
    runtime
        .run_worker(&config, names::PROVISIONER, provisioner, shutdown)
        .await?;
    tracing::info!("provisioner stopped");
    telemetry.shutdown();
    Ok(())
}
