//! The tenant-aware data gateway: upstream's data API ([`api`]) served from each tenant's own
//! database — shared, stateless compute in front of isolated data, scaled horizontally.
//!
//! A request is resolved to its tenant by the router's configured strategy (header, subdomain,
//! path, token claim, host lookup; `[router]`), checked against the tenant's record
//! ([`tenants`]: status, plan, quotas — kept current by a watch of the tenants bucket, which also
//! drops the tenant's cached database from the router at once), admitted by its rate limit
//! ([`limits`]), and served on a connection to that tenant's database alone, for the objects its
//! metadata registry declares ([`records`], [`query`]).
//!
//! The process is the one worker shape: configuration (`[gateway]`, `[router]`), telemetry
//! (W3C trace context from each request), probes and metrics on `worker.health_addr`
//! (`/healthz`, `/readyz`, `/metrics`), a heartbeat in `fleet_workers` (so `fleetctl status`
//! counts its replicas) and graceful shutdown on SIGTERM (in-flight requests finish).

pub mod api;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod query;
pub mod records;
pub mod telemetry;
pub mod tenants;
pub mod usage;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use fleet_config::Config;
use fleet_control::TenantConnector;
use fleet_runtime::Runtime;
use fleet_runtime::topology::names;
use fleet_tenantdb::Router;
use tokio::sync::watch;

/// The gateway's name: its telemetry service, its metrics label, its heartbeat.
pub const NAME: &str = "gateway";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is missing or invalid.
    #[error("configuration")]
    Config(#[source] fleet_config::ConfigError),
    /// Telemetry could not start.
    #[error("telemetry")]
    Telemetry(#[source] fleet_runtime::telemetry::TelemetryError),
    /// NATS or the topology.
    #[error("runtime")]
    Runtime(#[source] fleet_runtime::RuntimeError),
    /// The tenant databases' backend or the key ring.
    #[error("tenant databases")]
    Setup(#[source] fleet_tenantdb::SetupError),
    /// The API or probe address could not be bound.
    #[error("listening on {address}")]
    Listen {
        /// The address.
        address: String,
        /// The error binding it.
        #[source]
        source: std::io::Error,
    },
}

/// What every request shares.
pub struct Gateway {
    router: Arc<Router>,
    pool: pool::Pool,
    tenants: tenants::Tenants,
    connector: TenantConnector,
    limits: limits::Limits,
    usage: usage::ApiUsage,
    metrics: metrics::RequestMetrics,
    suspended_read_only: bool,
    /// The `token` strategy's verification key (`None` under other strategies).
    token_key: Option<jsonwebtoken::DecodingKey>,
    max_page_size: u64,
    max_body_bytes: usize,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("router", &self.router)
            .field("token_strategy", &self.token_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// The gateway over a connected runtime, registering its metrics with `registry`.
    pub async fn build(
        config: &Config,
        runtime: &Runtime,
        registry: &fleet_runtime::metrics::Metrics,
    ) -> Result<Self, GatewayError> {
        let backend = fleet_tenantdb::backend_from_config(config).map_err(GatewayError::Setup)?;
        let keys =
            Arc::new(fleet_tenantdb::key_ring_from_config(config).map_err(GatewayError::Setup)?);
        let records = fleet_control::tenants(runtime)
            .await
            .map_err(GatewayError::Runtime)?;
        let router = Arc::new(Router::new(
            fleet_tenantdb::router_settings_from_config(config),
            Arc::new(Directory {
                records: fleet_control::KvTenantDirectory::new(records.clone()),
                hosts: config
                    .router
                    .hosts
                    .iter()
                    .filter_map(|(host, tenant)| {
                        Some((
                            host.clone(),
                            fleet_protocol::TenantId::parse(tenant.as_str()).ok()?,
                        ))
                    })
                    .collect(),
            }),
            backend.clone(),
            keys.clone(),
        ));
        let bucket = runtime
            .bucket(names::TENANTS)
            .await
            .map_err(GatewayError::Runtime)?;
        let api_usage = runtime
            .bucket(names::API_USAGE)
            .await
            .map_err(GatewayError::Runtime)?;
        let settings = fleet_tenantdb::router_settings_from_config(config);
        Ok(Self {
            pool: pool::Pool::new(
                settings.max_cached_connections,
                settings.connection_cache_ttl,
            ),
            router,
            tenants: tenants::Tenants::new(bucket, config.gateway.max_cached_tenants),
            connector: TenantConnector::new(records, backend, keys),
            limits: limits::Limits::default(),
            usage: usage::ApiUsage::new(api_usage),
            metrics: metrics::RequestMetrics::new(registry),
            suspended_read_only: config.provisioner.lifecycle.on_tenant_suspend.read_only,
            token_key: (config.router.strategy == fleet_protocol::TenantResolverStrategy::Token)
                .then(|| {
                    jsonwebtoken::DecodingKey::from_secret(config.router.token_secret.as_bytes())
                }),
            max_page_size: config.gateway.max_page_size,
            max_body_bytes: config.gateway.max_body_bytes,
        })
    }

    /// Drops what the gateway holds of `tenant`'s database: the router's cached database and the
    /// idle connections (its record changed, or its database refused a token).
    pub async fn forget(&self, tenant: &fleet_protocol::TenantId) {
        self.pool.forget(tenant);
        self.router.invalidate(tenant).await;
    }

    /// The data API's routes.
    pub fn app(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/api/v1/data/{object}", get(api::find).post(api::create))
            .route(
                "/api/v1/data/{object}/{id}",
                get(api::get)
                    .patch(api::update)
                    .put(api::update)
                    .delete(api::delete),
            )
            .fallback(api::no_route)
            .method_not_allowed_fallback(api::no_method)
            .with_state(self)
    }

    /// Follows the tenants bucket (see [`tenants`]), writes the request counts ([`usage`]) and
    /// trims the rate limiters every minute, until `shutdown`.
    pub fn spawn_background(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        tokio::spawn(self.tenants.clone().follow(self.clone(), shutdown.clone()));
        let gateway = self.clone();
        let flushes = shutdown.clone();
        tokio::spawn(async move { gateway.usage.run(flushes).await });
        let gateway = self.clone();
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => gateway.limits.shrink(),
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
}

/// The tenant directory the router reads: the tenants bucket, and `router.hosts` for the
/// `lookup` strategy.
struct Directory {
    records: fleet_control::KvTenantDirectory,
    hosts: std::collections::BTreeMap<String, fleet_protocol::TenantId>,
}

#[async_trait::async_trait]
impl fleet_tenantdb::TenantDirectory for Directory {
    async fn lookup(
        &self,
        tenant: &fleet_protocol::TenantId,
    ) -> Result<Option<fleet_tenantdb::TenantEntry>, fleet_tenantdb::TenantDbError> {
        self.records.lookup(tenant).await
    }

    async fn tenant_for_host(
        &self,
        host: &str,
    ) -> Result<Option<fleet_protocol::TenantId>, fleet_tenantdb::TenantDbError> {
        Ok(self.hosts.get(&host.to_ascii_lowercase()).cloned())
    }
}

/// Runs the gateway until SIGTERM / SIGINT.
pub async fn run() -> Result<(), GatewayError> {
    let config = Config::load().map_err(GatewayError::Config)?;
    let telemetry =
        fleet_runtime::telemetry::init(NAME, &config.telemetry).map_err(GatewayError::Telemetry)?;
    let shutdown = fleet_runtime::shutdown::shutdown_signal();
    // The gateway consumes nothing: it creates what is missing (the buckets it reads and
    // writes) and leaves the workers' streams and consumers to the workers.
    let runtime = Runtime::attach(&config)
        .await
        .map_err(GatewayError::Runtime)?;
    let registry = Arc::new(fleet_runtime::metrics::Metrics::new(NAME));
    let gateway = Arc::new(Gateway::build(&config, &runtime, &registry).await?);
    gateway.spawn_background(shutdown.clone());
    let health = Arc::new(fleet_runtime::health::Health::new(
        Some(runtime.client.clone()),
        registry.clone(),
    ));
    let probes =
        fleet_runtime::health::serve(&config.worker.health_addr, health.clone(), shutdown.clone())
            .await
            .map_err(|source| GatewayError::Listen {
                address: config.worker.health_addr.clone(),
                source,
            })?;
    if let Ok(bucket) = runtime.bucket(names::WORKERS).await {
        tokio::spawn(fleet_runtime::heartbeat::run(
            bucket,
            NAME.to_owned(),
            registry.clone(),
            shutdown.clone(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen)
        .await
        .map_err(|source| GatewayError::Listen {
            address: config.gateway.listen.clone(),
            source,
        })?;
    let bound = listener.local_addr().ok();
    tracing::info!(?bound, %probes, url = %fleet_config::NatsConfig::display_url(&config.nats.url), "gateway serving the data API");
    health.set_ready(true);
    let mut stop = shutdown.clone();
    let served = axum::serve(listener, gateway.app())
        .with_graceful_shutdown(async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    health.set_ready(false);
    if let Err(e) = served {
        tracing::warn!(error = %e, "the data API stopped with an error");
    }
    tracing::info!("gateway stopped");
    telemetry.shutdown();
    Ok(())
}

/// The binary's entry: a multi-threaded runtime running [`run`]; exit 1 with the error chain.
pub fn main() -> ExitCode {
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(tokio) => tokio,
        Err(e) => {
            eprintln!("{NAME}: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match tokio.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = format!("{NAME}: {err}");
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
