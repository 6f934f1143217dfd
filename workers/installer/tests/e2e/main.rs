//! End to end: the real installer binary against a real nats-server and local libSQL tenant
//! databases, provisioned by the provisioner's handler (and deployed to by the deployer's)
//! running in this process.

mod client;
mod installs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use fleet_apps::InstallRecord;
use fleet_runtime::topology::names;
use fleet_runtime::worker::{Worker, WorkerContext};
use fleet_runtime::{Handler, Hooks, Publisher, Runtime, StateStore};
use fleet_tenants::machine::TenantRecord;
use fleet_testkit::TestFleet;
use serde_json::{Value, json};
use tokio::sync::watch;

/// One [`TestFleet`] with installer processes, the provisioner and the deployer running in this
/// process on the same configuration, and typed access to the stores.
#[allow(missing_debug_implementations)]
pub struct Fleet {
    fleet: TestFleet,
    pub js: jetstream::Context,
    pub publisher: Publisher,
    pub tenants: StateStore<TenantRecord>,
    pub installs: StateStore<InstallRecord>,
    _workers: Vec<watch::Sender<bool>>,
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

impl Fleet {
    pub async fn start() -> Self {
        let fleet = TestFleet::start("");
        let config = fleet.config.clone();
        let runtime = Runtime::connect(&config).await.unwrap();
        let workers = vec![
            in_process::<fleet_provisioner::Provisioner>(&runtime, &config, names::PROVISIONER)
                .await,
            in_process::<fleet_deployer::Deployer>(&runtime, &config, names::DEPLOYER).await,
        ];
        Self {
            js: runtime.js.clone(),
            publisher: runtime.publisher.clone(),
            tenants: fleet_control::tenants(&runtime).await.unwrap(),
            installs: fleet_control::installs(&runtime).await.unwrap(),
            fleet,
            _workers: workers,
        }
    }

    /// Provisions tenants `ids` on `plan` and waits until all are active.
    pub async fn provision(&self, ids: &[&str], plan: &str) {
        for id in ids {
            let payload = json!({"tenantId": id, "orgId": "org", "plan": plan});
            self.publisher
                .publish_json("tenant.created", id, &payload, HeaderMap::new())
                .await
                .unwrap();
        }
        self.eventually(Duration::from_secs(120), "tenants active", async || {
            let mut active = 0;
            for id in ids {
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
            active == ids.len()
        })
        .await;
    }

    pub fn spawn_installer(&mut self, env: &[(&str, &str)]) -> usize {
        self.fleet.spawn(env!("CARGO_BIN_EXE_installer"), env)
    }

    /// Publishes an install or upgrade of `package` (a document) into `tenant`.
    pub async fn send(&self, verb: &str, tenant: &str, package: &Value, extra: Value) -> String {
        let app = package["manifest"]["name"].as_str().unwrap();
        let version = package["manifest"]["version"].as_str().unwrap();
        let mut command = json!({"tenantId": tenant, "appId": app, "package": package});
        for (k, v) in extra.as_object().into_iter().flatten() {
            command[k] = v.clone();
        }
        let id = format!("{verb}:{tenant}:{app}:{version}:{}", rand_suffix());
        self.publisher
            .publish_json(
                &format!("app.{verb}_requested"),
                &id,
                &command,
                HeaderMap::new(),
            )
            .await
            .unwrap();
        id
    }

    pub async fn uninstall(&self, tenant: &str, app: &str, drop_tables: bool) {
        let command = json!({"tenantId": tenant, "appId": app, "dropTables": drop_tables});
        self.publisher
            .publish_json(
                "app.uninstall_requested",
                &format!("uninstall:{tenant}:{app}:{}", rand_suffix()),
                &command,
                HeaderMap::new(),
            )
            .await
            .unwrap();
    }

    pub async fn record(&self, tenant: &str, app: &str) -> Option<InstallRecord> {
        self.installs
            .get::<std::convert::Infallible>(&InstallRecord::key(tenant, app))
            .await
            .unwrap()
            .map(|v| v.state)
    }

    /// Waits until the app's record satisfies `done`, and returns it.
    pub async fn until<F: Fn(Option<&InstallRecord>) -> bool>(
        &self,
        tenant: &str,
        app: &str,
        what: &str,
        done: F,
    ) -> Option<InstallRecord> {
        self.eventually(Duration::from_secs(60), what, async || {
            done(self.record(tenant, app).await.as_ref())
        })
        .await;
        self.record(tenant, app).await
    }

    pub async fn eventually<F: AsyncFnMut() -> bool>(&self, limit: Duration, what: &str, check: F) {
        if fleet_testkit::wait_until(limit, check).await {
            return;
        }
        let letters = self.dead_letters().await;
        let logs: Vec<String> = (0..self.fleet.processes())
            .map(|i| self.fleet.log(i))
            .collect();
        panic!(
            "timed out waiting for: {what}\ndead letters: {letters:?}\n{}",
            logs.join("\n---\n")
        );
    }

    /// Where the local backend keeps tenant `id`'s database file.
    pub fn db_file(&self, id: &str) -> PathBuf {
        use fleet_tenantdb::TenantDatabases;
        let backend = fleet_tenantdb::LocalBackend::new(self.dir.path().join("tenants"), "");
        backend.database_path(&backend.database_name(&fleet_protocol::TenantId::parse(id).unwrap()))
    }

    /// Every row of a query on a tenant's database.
    pub async fn rows(&self, tenant: &str, sql: &str) -> Vec<Vec<libsql::Value>> {
        let conn = fleet_schema::open_local(&self.db_file(tenant))
            .await
            .unwrap();
        let mut rows = conn.query(sql, ()).await.unwrap();
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.unwrap() {
            out.push(
                (0..row.column_count())
                    .map(|i| row.get_value(i).unwrap())
                    .collect(),
            );
        }
        out
    }

    pub async fn count(&self, tenant: &str, sql: &str) -> i64 {
        match self.rows(tenant, sql).await[0][0] {
            libsql::Value::Integer(n) => n,
            ref other => panic!("not a count: {other:?}"),
        }
    }

    pub async fn dead_letters(&self) -> Vec<String> {
        fleet_testkit::dead_letter_texts(&self.js).await
    }

    pub async fn hooks(&self, subject: &str) -> Vec<Value> {
        fleet_testkit::hooks(&self.js, subject).await
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// An example app package (`examples/apps/<name>`, a directory or a `.json` file), as the
/// document a command carries.
pub fn app(name: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps");
    let dir = root.join(name);
    let path = if dir.is_dir() {
        dir
    } else {
        root.join(format!("{name}.json"))
    };
    let checked = fleet_apps::package::load(&path).unwrap();
    serde_json::to_value(checked.value).unwrap()
}

/// The example CRM bundle (the platform's).
pub fn crm(version: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../examples/crm-{version}.bundle.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
