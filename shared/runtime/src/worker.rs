//! The one entry point of every worker binary.
//!
//! A worker is a [`Handler`] that knows its name, its durable consumer and how to build itself
//! from a [`WorkerContext`] ([`Worker`]). [`main`] does the rest, the same for every worker:
//! load the configuration (defaults → files → `FLEET_*`), start telemetry (and keep its guard),
//! install the shutdown signal, connect to NATS (creating only what is missing), build the
//! handler, then ensure the topology (bring existing streams and consumers to the
//! configuration — after the build, so a worker that cannot start changes nothing), run the
//! job loop with probes and metrics until SIGTERM, drain, flush telemetry, and turn the
//! outcome into the exit code (an error is printed with its whole cause chain). A worker's
//! `main.rs` is one line:
//!
//! ```text
//! fn main() -> std::process::ExitCode {
//!     fleet_runtime::worker::main::<fleet_provisioner::Provisioner>()
//! }
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use fleet_config::{Config, ConfigError};

use crate::schedule::Scheduler;
use crate::telemetry::TelemetryError;
use crate::{Handler, Hooks, Runtime, RuntimeError};

/// Why a worker's handler could not be built (a backend or key ring the configuration
/// describes could not be set up, a setting the worker refuses).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// What every worker is built from: its configuration and a connected runtime.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// The effective configuration.
    pub config: Config,
    /// NATS, JetStream, the ensured topology and the publisher.
    pub runtime: Runtime,
    /// Hooks published as `/objectos-fleet/<worker name>`.
    pub hooks: Hooks,
}

impl WorkerContext {
    /// The scheduler of work due later, under the topology's prefix.
    pub fn scheduler(&self) -> Scheduler {
        Scheduler::new(
            self.runtime.publisher.clone(),
            self.runtime.topology.subjects(),
        )
    }
}

/// A handler that can run as a worker binary.
#[async_trait]
pub trait Worker: Handler + Sized {
    /// The worker's name: telemetry service name, hook source, log prefix.
    const NAME: &'static str;
    /// The durable consumer it runs on (a name of [`crate::topology::names`]).
    const CONSUMER: &'static str;

    /// Builds the handler.
    async fn build(context: &WorkerContext) -> Result<Self, BuildError>;
}

/// Why a worker stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration is invalid.
    #[error("configuration")]
    Config(#[source] ConfigError),
    /// Telemetry could not start.
    #[error("telemetry")]
    Telemetry(#[source] TelemetryError),
    /// NATS, the topology or the job loop failed.
    #[error("runtime")]
    Runtime(#[source] RuntimeError),
    /// The handler could not be built.
    #[error("building the handler")]
    Build(#[source] BuildError),
}

/// Runs worker `W` until SIGTERM (see the module docs).
pub async fn run<W: Worker>() -> Result<(), WorkerError> {
    let config = Config::load().map_err(WorkerError::Config)?;
    let telemetry =
        crate::telemetry::init(W::NAME, &config.telemetry).map_err(WorkerError::Telemetry)?;
    let shutdown = crate::shutdown::shutdown_signal();
    // Only what is missing is created before the handler is built: a worker that then fails
    // to build (a bad setting the configuration's checks cannot see) leaves the existing
    // streams and consumers as they were. Its settings are applied once it is ready to run.
    let runtime = Runtime::attach(&config)
        .await
        .map_err(WorkerError::Runtime)?;
    let hooks = Hooks::new(
        runtime.publisher.clone(),
        format!("/objectos-fleet/{}", W::NAME),
        runtime.topology.subjects(),
    );
    let context = WorkerContext {
        config,
        runtime,
        hooks,
    };
    let handler = Arc::new(W::build(&context).await.map_err(WorkerError::Build)?);
    context
        .runtime
        .topology
        .ensure(&context.runtime.client, &context.runtime.js)
        .await
        .map_err(|e| WorkerError::Runtime(RuntimeError::from(e)))?;
    tracing::info!(url = %fleet_config::NatsConfig::display_url(&context.config.nats.url), worker = W::NAME, "started");
    let result = context
        .runtime
        .run_worker(&context.config, W::CONSUMER, handler, shutdown)
        .await
        .map_err(WorkerError::Runtime);
    tracing::info!(worker = W::NAME, "stopped");
    telemetry.shutdown();
    result
}

/// Runtime threads per core. Local libSQL work (statements, commits that wait for `fsync`)
/// runs on the async threads — libSQL's API is async but its local engine is not — and so
/// does the local backend's file work (its records, each write synced), so a thread per core
/// would stall every other job while one waits for the disk.
const THREADS_PER_CORE: usize = 4;

/// The whole `main` of a worker binary: a multi-threaded Tokio runtime running [`run`] (with
/// [`THREADS_PER_CORE`] threads per core, or `TOKIO_WORKER_THREADS`), the error (with its
/// causes) on stderr and exit code 1 when it fails.
pub fn main<W: Worker>() -> ExitCode {
    let mut tokio = tokio::runtime::Builder::new_multi_thread();
    // Tokio reads TOKIO_WORKER_THREADS itself when no count is set.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        tokio.worker_threads(
            std::thread::available_parallelism().map_or(1, |n| n.get()) * THREADS_PER_CORE,
        );
    }
    let tokio = match tokio.enable_all().build() {
        Ok(tokio) => tokio,
        Err(e) => {
            eprintln!("{}: starting the async runtime: {e}", W::NAME);
            return ExitCode::FAILURE;
        }
    };
    match tokio.block_on(run::<W>()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = format!("{}: {err}", W::NAME);
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
