//! End to end: the real deployer binary against a real nats-server and local libSQL tenant
//! databases, provisioned by the provisioner's handler running in this process.

mod deploys;

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use fleet_config::{Config, ConfigSource};
use fleet_deployer::rollout::{Deployment, RolloutStatus};
use fleet_provisioner::{Provisioner, ProvisionerSettings};
use fleet_runtime::metrics::Metrics;
use fleet_runtime::topology::names;
use fleet_runtime::{Hooks, JobLoopSettings, Publisher, StateStore};
use fleet_tenants::machine::TenantRecord;
use fleet_testkit::NatsServer;
use serde_json::{Value, json};
use tokio::sync::watch;

#[allow(missing_debug_implementations)]
pub struct Fleet {
    pub server: NatsServer,
    pub dir: tempfile::TempDir,
    pub js: jetstream::Context,
    pub publisher: Publisher,
    pub tenants: StateStore<TenantRecord>,
    pub deployments: StateStore<Deployment>,
    pub config: Config,
    deployers: Vec<Child>,
    _provisioner: watch::Sender<bool>,
}

impl Fleet {
    pub async fn start() -> Self {
        let server = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::copy(
            root.join("config/default.toml"),
            config_dir.join("default.toml"),
        )
        .unwrap();
        std::fs::write(
            config_dir.join("e2e.toml"),
            format!(
                r#"
[nats]
url = "{url}"
ack_wait_ms = 2000
[tenantdb]
data_dir = "{data}"
[telemetry]
log_format = "json"
[worker]
concurrency = 8
health_addr = "127.0.0.1:0"
[secrets]
active_key = "e2e"
keys = {{ e2e = "ZTJlLXRlc3Qta2V5LW5vdC1mb3ItcHJvZHVjdGlvbiE=" }}
[provisioner]
lease_secs = 1
[provisioner.regions.us-east]
group = "local"
"#,
                url = server.url(),
                data = dir.path().join("tenants").display(),
            ),
        )
        .unwrap();
        let config = Config::load_from(&ConfigSource {
            dir: config_dir,
            env: "e2e".into(),
        })
        .unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let topology = fleet_runtime::Topology::fleet_with(
            "",
            1,
            fleet_runtime::topology::ConsumerSettings {
                ack_wait: Duration::from_secs(2),
                ..Default::default()
            },
        );
        topology.ensure(&client, &js).await.unwrap();
        let publisher = Publisher::new(js.clone());
        let tenants = StateStore::new(
            "tenant",
            js.get_key_value(names::TENANTS).await.unwrap(),
            publisher.clone(),
            "progress.tenant",
        );
        let deployments = StateStore::new(
            "deploy",
            js.get_key_value(names::DEPLOYMENTS).await.unwrap(),
            publisher.clone(),
            "progress.deploy",
        );
        // The provisioner, in process.
        let provisioner = Arc::new(Provisioner::new(
            tenants.clone(),
            fleet_tenantdb::backend_from_config(&config).unwrap(),
            Arc::new(fleet_tenantdb::key_ring_from_config(&config).unwrap()),
            Hooks::new(publisher.clone(), "/test/provisioner", Default::default()),
            fleet_runtime::Scheduler::new(publisher.clone(), Default::default()),
            ProvisionerSettings::from_config(&config).unwrap(),
        ));
        let spec = topology.consumer(names::PROVISIONER).unwrap().clone();
        let settings = JobLoopSettings {
            consumer: spec.durable.clone(),
            stream: spec.stream.clone(),
            max_deliver: spec.max_deliver as u64,
            retry: fleet_config::RetryPolicy::Fixed {
                interval_ms: 100,
                max_attempts: spec.max_deliver as u32,
            },
            ack_wait: spec.ack_wait,
            concurrency: 8,
            shutdown_grace: Duration::from_secs(5),
            subjects: fleet_runtime::Subjects::default(),
            dead_letter_subject: "dlq.provisioner".into(),
            dead_letter_payloads: topology.dead_letter_payloads.clone(),
            payload_limits: spec.payload_limits.clone(),
            max_job_duration: Duration::from_secs(60),
        };
        let (stop, rx) = watch::channel(false);
        tokio::spawn(fleet_runtime::run_job_loop(
            js.clone(),
            settings,
            provisioner,
            publisher.clone(),
            Arc::new(Metrics::new("p")),
            rx,
        ));
        Self {
            server,
            dir,
            js,
            publisher,
            tenants,
            deployments,
            config,
            deployers: Vec::new(),
            _provisioner: stop,
        }
    }

    /// Provisions `n` tenants `t-000…` and waits until all are active.
    pub async fn provision(&self, n: usize) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|i| format!("t-{i:03}")).collect();
        for id in &ids {
            let payload = json!({"tenantId": id, "orgId": "org", "plan": "enterprise"});
            self.publisher
                .publish_json("tenant.created", id, &payload, HeaderMap::new())
                .await
                .unwrap();
        }
        self.eventually(Duration::from_secs(180), "tenants active", async || {
            let mut active = 0;
            for id in &ids {
                if self
                    .tenants
                    .get::<std::convert::Infallible>(id)
                    .await
                    .unwrap()
                    .is_some_and(|r| {
                        r.state.status == fleet_protocol::TenantProvisioningStatus::Active
                    })
                {
                    active += 1;
                }
            }
            active == n
        })
        .await;
        ids
    }

    pub fn spawn_deployer(&mut self) -> usize {
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("deployer-{}.log", self.deployers.len())),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_deployer"))
            .env("FLEET_CONFIG_DIR", self.dir.path().join("config"))
            .env("FLEET_ENV", "e2e")
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.deployers.push(child);
        self.deployers.len() - 1
    }

    pub fn kill_deployer(&mut self, index: usize) {
        let _ = self.deployers[index].kill();
        let _ = self.deployers[index].wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("deployer-0.log")).unwrap_or_default()
    }

    pub async fn request(&self, id: &str, bundle: Value, target: Value, rollout: Value) {
        let request =
            json!({"deploymentId": id, "bundle": bundle, "target": target, "rollout": rollout});
        self.publisher
            .publish_json("deploy.requested", id, &request, HeaderMap::new())
            .await
            .unwrap();
    }

    /// Sends an operator's command (`resume`, `cancel`) as `fleetctl deploy` does.
    pub async fn control(&self, id: &str, action: &str) {
        self.publisher
            .publish_json(
                &format!("deploy.control.{id}"),
                &format!(
                    "control:{id}:{action}:{}",
                    chrono::Utc::now().timestamp_millis()
                ),
                &json!({"deploymentId": id, "action": action}),
                HeaderMap::new(),
            )
            .await
            .unwrap();
    }

    pub async fn deployment(&self, id: &str) -> Option<Deployment> {
        self.deployments
            .get::<std::convert::Infallible>(id)
            .await
            .unwrap()
            .map(|v| v.state)
    }

    pub async fn finished(&self, id: &str, limit: Duration) -> Deployment {
        self.eventually(limit, "deployment finished", async || {
            self.deployment(id)
                .await
                .is_some_and(|d| d.status != RolloutStatus::Running)
        })
        .await;
        self.deployment(id).await.unwrap()
    }

    pub async fn eventually<F: AsyncFnMut() -> bool>(&self, limit: Duration, what: &str, check: F) {
        if fleet_testkit::wait_until(limit, check).await {
            return;
        }
        let mut records = String::new();
        for key in ["v1", "v11", "d1"] {
            if let Some(d) = self.deployment(key).await {
                records.push_str(&format!(
                    "{key}: {:?} {:?} rollbacks {:?}\n",
                    d.status, d.reason, d.rollbacks
                ));
            }
        }
        let letters = self.dead_letters().await;
        panic!(
            "timed out waiting for: {what}\n{records}\ndead letters: {letters:?}\n{}",
            self.log()
        );
    }

    /// A connection to a tenant's database file.
    pub async fn connect(&self, tenant: &str) -> libsql::Connection {
        fleet_schema::open_local(&self.dir.path().join("tenants").join(format!("{tenant}.db")))
            .await
            .unwrap()
    }

    /// A single count from a tenant's database.
    pub async fn count(&self, tenant: &str, sql: &str) -> i64 {
        let conn = self.connect(tenant).await;
        let mut rows = conn.query(sql, ()).await.unwrap();
        rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap()
    }

    pub async fn tables(&self, tenant: &str) -> Vec<String> {
        let conn =
            fleet_schema::open_local(&self.dir.path().join("tenants").join(format!("{tenant}.db")))
                .await
                .unwrap();
        let mut rows = conn
            .query(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
                (),
            )
            .await
            .unwrap();
        let mut names = Vec::new();
        while let Some(row) = rows.next().await.unwrap() {
            names.push(row.get::<String>(0).unwrap());
        }
        names
    }

    pub async fn dead_letters(&self) -> Vec<String> {
        let messages = fleet_testkit::stream_messages(&self.js, names::DEAD_LETTERS, None).await;
        messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    pub async fn hooks(&self, subject: &str) -> Vec<Value> {
        let messages = fleet_testkit::stream_messages(&self.js, names::HOOKS, Some(subject)).await;
        messages
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.deployers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The example CRM bundle.
pub fn crm(version: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../examples/crm-{version}.bundle.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
