//! The deployer binary: configuration → telemetry → runtime → handler, until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use fleet_deployer::Deployer;
use fleet_deployer::rollout::Deployment;
use fleet_runtime::topology::names;
use fleet_runtime::{Hooks, Runtime, StateStore};
use fleet_tenants::machine::TenantRecord;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("deployer: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = fleet_config::Config::load()?;
    let telemetry = fleet_runtime::telemetry::init("deployer", &config.telemetry)?;
    let shutdown = fleet_runtime::shutdown::shutdown_signal();
    let runtime = Runtime::connect(&config)
        .await
        .context("starting the runtime")?;
    let deployments_kv = runtime.bucket(names::DEPLOYMENTS).await?;
    let deployments = StateStore::<Deployment>::new(
        "deploy",
        deployments_kv.clone(),
        runtime.publisher.clone(),
        runtime.topology.subject("progress.deploy"),
    );
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
        "/objectos-fleet/deployer",
        runtime.topology.prefix.clone(),
    );
    let deployer = Arc::new(Deployer::new(
        deployments,
        deployments_kv,
        tenants,
        backend,
        keys,
        hooks,
        runtime.publisher.clone(),
        runtime.topology.prefix.clone(),
    ));
    tracing::info!(url = %config.nats.url, "deployer started");
    runtime
        .run_worker(&config, names::DEPLOYER, deployer, shutdown)
        .await?;
    tracing::info!("deployer stopped");
    telemetry.shutdown();
    Ok(())
}
