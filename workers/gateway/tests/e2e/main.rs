//! End to end: real gateway processes in front of tenants provisioned, deployed to and given
//! apps by the provisioner's, deployer's and installer's handlers (running in this process), on
//! a real nats-server and local libSQL files; requests over HTTP as a caller makes them.

mod data;
mod isolation;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_client::FleetClient;
use fleet_protocol::{DeployBundle, TenantId, TenantPlan, TenantProvisioningRequest, TenantRegion};
use fleet_runtime::topology::names;
use fleet_runtime::worker::{Worker, WorkerContext};
use fleet_runtime::{Handler, Hooks, Runtime};
use fleet_testkit::TestFleet;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::watch;

/// A fleet with the provisioner and the deployer in process, gateway processes, a client.
#[allow(missing_debug_implementations)]
pub struct Fleet {
    pub fleet: TestFleet,
    pub client: FleetClient,
    pub http: reqwest::Client,
    _workers: Vec<watch::Sender<bool>>,
}

async fn in_process<W: Worker + Handler + 'static>(
    runtime: &Runtime,
    config: &fleet_config::Config,
    consumer: &str,
) -> watch::Sender<bool> {
    let context = WorkerContext {
        config: config.clone(),
        runtime: runtime.clone(),
        hooks: Hooks::new(
            runtime.publisher.clone(),
            format!("/test/{consumer}"),
            runtime.topology.subjects(),
        ),
    };
    let worker = Arc::new(W::build(&context).await.unwrap());
    let (stop, rx) = watch::channel(false);
    let (runtime, config, consumer) = (runtime.clone(), config.clone(), consumer.to_owned());
    tokio::spawn(async move { runtime.run_worker(&config, &consumer, worker, rx).await });
    stop
}

/// The small plan's quotas in these tests: 30 requests a minute, 3 records per object.
pub const OVERLAY: &str = r#"
[quota.plans.free]
apiRateLimit = 30
maxRecordsPerObject = 3

[router.hosts]
"crm.acme.example" = "acme"
"#;

/// The `token` strategy's key in these tests.
pub const TOKEN_SECRET: &str = "e2e-token-secret-e2e-token-secret-0123";

impl Fleet {
    pub async fn start() -> Self {
        let fleet = TestFleet::start(OVERLAY);
        let config = fleet.config.clone();
        let runtime = Runtime::connect(&config).await.unwrap();
        let workers = vec![
            in_process::<fleet_provisioner::Provisioner>(&runtime, &config, names::PROVISIONER)
                .await,
            in_process::<fleet_deployer::Deployer>(&runtime, &config, names::DEPLOYER).await,
            in_process::<fleet_installer::Installer>(&runtime, &config, names::INSTALLER).await,
            in_process::<fleet_quota_auditor::QuotaAuditor>(
                &runtime,
                &config,
                names::QUOTA_AUDITOR,
            )
            .await,
        ];
        let client = FleetClient::from_runtime(runtime)
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(60));
        Self {
            fleet,
            client,
            http: reqwest::Client::new(),
            _workers: workers,
        }
    }

    /// Starts a gateway process on a free port; its base URL once it answers.
    pub async fn spawn_gateway(&mut self) -> String {
        self.spawn_gateway_with(&[]).await
    }

    /// [`Self::spawn_gateway`] with `env` on top (another strategy, …).
    pub async fn spawn_gateway_with(&mut self, env: &[(&str, &str)]) -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec![("FLEET_GATEWAY__LISTEN", listen.as_str())];
        all.extend_from_slice(env);
        self.fleet.spawn(env!("CARGO_BIN_EXE_gateway"), &all);
        let base = format!("http://{listen}");
        for _ in 0..200 {
            if self
                .http
                .get(format!("{base}/api/v1/data/x"))
                .send()
                .await
                .is_ok()
            {
                return base;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the gateway did not start:\n{}",
            self.fleet.log(self.fleet.processes() - 1)
        );
    }

    /// Provisions `id` on `plan` and deploys the example CRM v1 to it.
    pub async fn tenant(&self, id: &str, plan: TenantPlan) -> TenantId {
        let tenant = TenantId::parse(id).unwrap();
        let request = TenantProvisioningRequest {
            org_id: format!("org-{id}"),
            plan,
            region: TenantRegion::UsEast,
            display_name: None,
            admin_email: None,
            metadata: None,
        };
        self.client.provision(&tenant, request).await.unwrap();
        self.client
            .deploy_to(&tenant, &crm("v1"), false)
            .await
            .unwrap();
        tenant
    }

    /// A request to `base` for `tenant` (`None`: no tenant header).
    pub async fn call(
        &self,
        base: &str,
        method: Method,
        tenant: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{base}{path}"));
        if let Some(tenant) = tenant {
            request = request.header("X-Tenant-ID", tenant);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits (up to `limit`) until `check` holds.
    pub async fn eventually<F: AsyncFnMut() -> bool>(
        &self,
        limit: Duration,
        what: &str,
        mut check: F,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

/// The example CRM bundle.
pub fn crm(version: &str) -> DeployBundle {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../examples/crm-{version}.bundle.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The `issues` of an `ApiError` answer, as `path: code` strings.
pub fn issues(body: &Value) -> Vec<String> {
    body["error"]["details"]["issues"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .map(|i| {
                    format!(
                        "{}: {}",
                        i["path"].as_str().unwrap_or(""),
                        i["code"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks `body` against upstream's JSON Schema `api/<schema>.json` (`@objectstack/spec` 4.0.1,
/// fetched by `just setup` into `target/spec-fixtures`).
pub fn conforms(schema: &str, body: &Value) {
    let dir = std::env::var_os("FLEET_SPEC_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/spec-fixtures/spec-4.0.1/package")
        });
    let path = dir.join("json-schema/api").join(format!("{schema}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `just setup`)", path.display()));
    let schema_json: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::draft202012::new(&schema_json).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:?}\n{body}");
}
