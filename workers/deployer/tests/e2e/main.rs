//! End to end: the real deployer binary against a real nats-server and local libSQL tenant
//! databases, provisioned by the provisioner's handler running in this process.

mod client;
mod cluster;
mod deploys;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use std::collections::BTreeMap;

use fleet_deployer::rollout::{Deployment, EntryKey, ResultEntry, RolloutStatus, TenantOutcome};
use fleet_provisioner::Provisioner;
use fleet_runtime::topology::names;
use fleet_runtime::worker::{Worker, WorkerContext};
use fleet_runtime::{Hooks, Publisher, Runtime, StateStore};
use fleet_tenants::machine::TenantRecord;
use fleet_testkit::TestFleet;
use serde_json::{Value, json};
use tokio::sync::watch;

/// One [`TestFleet`] with deployer processes, the provisioner running in this process on the
/// same configuration (through the worker entry's own parts), and typed access to the stores.
#[allow(missing_debug_implementations)]
pub struct Fleet {
    fleet: TestFleet,
    pub js: jetstream::Context,
    pub publisher: Publisher,
    pub tenants: StateStore<TenantRecord>,
    pub deployments: StateStore<Deployment>,
    pub results: fleet_control::DeployResults,
    _provisioner: watch::Sender<bool>,
}

impl std::ops::Deref for Fleet {
    type Target = TestFleet;

    fn deref(&self) -> &TestFleet {
        &self.fleet
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut TestFleet {
        &mut self.fleet
    }
}

impl Fleet {
    pub async fn start() -> Self {
        Self::on(TestFleet::start("")).await
    }

    /// The same on a three-node JetStream cluster (replicas 3; see `TestFleet::start_clustered`).
    pub async fn start_clustered() -> Self {
        Self::on(TestFleet::start_clustered(CLUSTER_RETRY)).await
    }

    async fn on(fleet: TestFleet) -> Self {
        let config = fleet.config.clone();
        let runtime = Runtime::connect(&config).await.unwrap();
        let (js, publisher) = (runtime.js.clone(), runtime.publisher.clone());
        let tenants = fleet_control::tenants(&runtime).await.unwrap();
        let deployments = fleet_control::deployments(&runtime).await.unwrap();
        let results = fleet_control::deploy_results(&runtime).await.unwrap();
        // The provisioner, in process: built and run as its binary would be.
        let context = WorkerContext {
            config: config.clone(),
            runtime: runtime.clone(),
            hooks: Hooks::new(
                publisher.clone(),
                "/test/provisioner",
                runtime.topology.subjects(),
            ),
        };
        let provisioner = Arc::new(Provisioner::build(&context).await.unwrap());
        let (stop, rx) = watch::channel(false);
        let worker_config = config.clone();
        tokio::spawn(async move {
            runtime
                .run_worker(&worker_config, names::PROVISIONER, provisioner, rx)
                .await
        });
        Self {
            fleet,
            js,
            publisher,
            tenants,
            deployments,
            results,
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
                        r.state.status() == fleet_protocol::TenantProvisioningStatus::Active
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
        self.fleet.spawn(env!("CARGO_BIN_EXE_deployer"), &[])
    }

    pub fn kill_deployer(&mut self, index: usize) {
        self.fleet.kill(index);
    }

    pub fn log(&self) -> String {
        self.fleet.log(0)
    }

    /// Publishes `deploy.requested`, as a caller does: tried again under the same message id
    /// while the server refuses it (for up to a minute — a cluster node that has just come
    /// back routes a stream's subjects only once it has caught up, which on a loaded machine
    /// can outlast the publisher's own few seconds of retries).
    pub async fn request(&self, id: &str, bundle: Value, target: Value, rollout: Value) {
        let request =
            json!({"deploymentId": id, "bundle": bundle, "target": target, "rollout": rollout});
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .publisher
                .publish_json("deploy.requested", id, &request, HeaderMap::new())
                .await
            {
                Ok(_) => return,
                Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("deploy.requested of {id}: {e}"),
            }
        }
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

    /// The deployment's record; read again while the store does not answer (a cluster electing
    /// a leader), for up to ten seconds.
    pub async fn deployment(&self, id: &str) -> Option<Deployment> {
        for _ in 0..50 {
            match self.deployments.get::<std::convert::Infallible>(id).await {
                Ok(found) => return found.map(|v| v.state),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        panic!("the deployments bucket does not answer")
    }

    /// The deploy outcomes of deployment `id` by tenant (`rollback`: its rollback outcomes).
    pub async fn outcomes(&self, id: &str, rollback: bool) -> BTreeMap<String, TenantOutcome> {
        let id = fleet_protocol::DeploymentId::parse(id).unwrap();
        self.results
            .list(&id)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|w| match (w.key, w.entry) {
                (EntryKey::Deploy(t), ResultEntry::Outcome { outcome, .. }) if !rollback => {
                    Some((t.to_string(), outcome))
                }
                (EntryKey::Rollback(t), ResultEntry::Outcome { outcome, .. }) if rollback => {
                    Some((t.to_string(), outcome))
                }
                _ => None,
            })
            .collect()
    }

    /// The deploy outcomes of deployment `id` by tenant.
    pub async fn results(&self, id: &str) -> BTreeMap<String, TenantOutcome> {
        self.outcomes(id, false).await
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

    /// Waits up to `limit` until deployment `id` has `status`; its record then.
    pub async fn until_status(
        &self,
        id: &str,
        status: RolloutStatus,
        limit: Duration,
    ) -> Deployment {
        self.eventually(limit, &format!("{id} {status:?}"), async || {
            self.deployment(id)
                .await
                .is_some_and(|d| d.status == status)
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
                    "{key}: {:?} {:?} tally {:?} rollbacks {:?}\n",
                    d.status, d.reason, d.tally, d.rollback_tally
                ));
            }
        }
        let letters = self.dead_letters().await;
        panic!(
            "timed out waiting for: {what}\n{records}\ndead letters: {letters:?}\n{}",
            self.log()
        );
    }

    /// Where the local backend keeps tenant `id`'s database file.
    pub fn db_file(&self, id: &str) -> std::path::PathBuf {
        use fleet_tenantdb::TenantDatabases;
        let backend = fleet_tenantdb::LocalBackend::new(self.dir.path().join("tenants"), "");
        backend.database_path(&backend.database_name(&fleet_protocol::TenantId::parse(id).unwrap()))
    }

    /// A connection to a tenant's database file.
    pub async fn connect(&self, tenant: &str) -> libsql::Connection {
        fleet_schema::open_local(&self.db_file(tenant))
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
        let conn = fleet_schema::open_local(&self.db_file(tenant))
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
        fleet_testkit::dead_letter_texts(&self.js).await
    }

    pub async fn hooks(&self, subject: &str) -> Vec<Value> {
        fleet_testkit::hooks(&self.js, subject).await
    }
}

/// A clustered fleet's retry budget (as `deploy/k8s/overlays/prod/fleet.toml` has it): enough
/// deliveries, backing off to seconds, to outlast a leader election after a node dies.
pub const CLUSTER_RETRY: &str = "
[worker.retry]
max_attempts = 10
max_ms = 5000
";

/// The example CRM bundle.
pub fn crm(version: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../examples/crm-{version}.bundle.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
