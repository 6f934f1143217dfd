//! End to end: the real provisioner binary against a real nats-server and local libSQL files.

mod client;
mod crashes;
mod deletions;
mod lifecycle;
mod provisioning;
mod security;
mod tracing;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use fleet_protocol::TenantId;
use fleet_runtime::topology::names;
use fleet_runtime::{DeadLetter, Publisher, StateStore};
use fleet_tenants::machine::TenantRecord;
use fleet_testkit::TestFleet;
use serde_json::json;

/// Overlay: deletions carried out at once, with a backup first.
pub const IMMEDIATE_DELETE: &str = r#"
[provisioner.lifecycle.onTenantDelete]
immediate = true
gracePeriodHours = 0
createBackup = true
"#;

/// One [`TestFleet`] (server, folders, configuration, provisioner processes) and typed access
/// to its streams and tenant records.
#[allow(missing_debug_implementations)]
pub struct Fleet {
    fleet: TestFleet,
    pub js: jetstream::Context,
    pub publisher: Publisher,
    pub tenants: StateStore<TenantRecord>,
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
    /// `overlay` is TOML appended to the e2e configuration (e.g. lifecycle settings).
    pub async fn start(overlay: &str) -> Self {
        Self::with(TestFleet::start(overlay)).await
    }

    /// A fleet on a server the test started (authorization, TLS); `overlay` carries what the
    /// fleet's clients need for it (`[nats.auth]`, `[nats.tls]`).
    pub async fn start_on(server: fleet_testkit::NatsServer, overlay: &str) -> Self {
        Self::with(TestFleet::start_on(server, overlay)).await
    }

    async fn with(fleet: TestFleet) -> Self {
        // Connected as the workers connect: the same `[nats]` settings.
        let client = fleet_runtime::connect_client(&fleet.config).await.unwrap();
        let js = jetstream::new(client.clone());
        // The same topology the workers ensure from the same configuration.
        fleet_runtime::Topology::from_config(&fleet.config)
            .ensure(&client, &js)
            .await
            .unwrap();
        let publisher = Publisher::new(js.clone());
        let kv = js.get_key_value(names::TENANTS).await.unwrap();
        let tenants = StateStore::new("tenant", kv, publisher.clone(), "progress.tenant");
        Self {
            fleet,
            js,
            publisher,
            tenants,
        }
    }

    /// Starts one more provisioner process (`extra_env`: `FLEET_…` overrides, crash points).
    pub fn spawn_worker(&mut self, extra_env: &[(&str, &str)]) -> usize {
        self.fleet
            .spawn(env!("CARGO_BIN_EXE_provisioner"), extra_env)
    }

    /// SIGKILLs a worker.
    pub fn kill_worker(&mut self, index: usize) {
        self.fleet.kill(index);
    }

    pub fn worker_log(&self, index: usize) -> String {
        self.fleet.log(index)
    }

    /// The provisioner's durable consumer as the server reports it.
    pub async fn consumer(&self) -> async_nats::jetstream::consumer::Info {
        let stream = self.js.get_stream(names::TENANT_COMMANDS).await.unwrap();
        stream.consumer_info(names::PROVISIONER).await.unwrap()
    }

    /// Messages in the tenant stream on `subject` (wildcards allowed), by the server's count;
    /// `None` while the server cannot be asked (reconnecting).
    pub async fn stored(&self, subject: &str) -> Option<u64> {
        use futures::TryStreamExt;
        let stream = self.js.get_stream(names::TENANT_COMMANDS).await.ok()?;
        let mut subjects = stream.info_with_subjects(subject).await.ok()?;
        let mut total = 0;
        while let Some((_, count)) = subjects.try_next().await.ok()? {
            total += count as u64;
        }
        Some(total)
    }

    /// How many tenants of `ids` have `status`.
    pub async fn count_status(&self, ids: &[String], status: &str) -> usize {
        let mut n = 0;
        for id in ids {
            if self.status(id).await == status {
                n += 1;
            }
        }
        n
    }

    /// Registers every tenant of `ids` and waits until all are active.
    pub async fn provision(&self, ids: &[String]) {
        for id in ids {
            self.register(id, id, json!({})).await;
        }
        let limit = Duration::from_secs(120 + ids.len() as u64 / 5);
        self.eventually(limit, "all active", async || {
            self.count_status(ids, "active").await == ids.len()
        })
        .await;
    }

    /// Waits until tenant `id` has `status`.
    pub async fn wait_status(&self, id: &str, status: &str) {
        self.eventually(
            Duration::from_secs(60),
            &format!("{id} {status}"),
            async || self.status(id).await == status,
        )
        .await;
    }

    /// Waits until tenant `id` has `status` and the hook of that transition is published (it
    /// is written with the transition and published right after: a worker killed in between
    /// publishes it when the message comes back).
    pub async fn wait_settled(&self, id: &str, status: &str) {
        self.eventually(
            Duration::from_secs(60),
            &format!("{id} {status}, hook sent"),
            async || {
                self.record(id).await.is_some_and(|r| {
                    fleet_tenants::machine::status_name(&r) == status && r.pending_hook.is_none()
                })
            },
        )
        .await;
    }

    /// How many tenants of `ids` are in each status.
    pub async fn statuses(&self, ids: &[String]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for id in ids {
            *counts.entry(self.status(id).await).or_default() += 1;
        }
        counts
    }

    /// Database files (`*.db`) in the data dir and its shard folders.
    pub fn database_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        let mut folders = vec![self.data_dir()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    folders.push(entry.path());
                } else if let Some(name) = entry.file_name().to_str()
                    && name.ends_with(".db")
                {
                    files.push(name.to_owned());
                }
            }
        }
        files.sort();
        files
    }

    /// Where the local backend keeps tenant `id`'s database file.
    pub fn db_file(&self, id: &str) -> std::path::PathBuf {
        let backend = fleet_tenantdb::LocalBackend::new(self.data_dir(), "");
        use fleet_tenantdb::TenantDatabases;
        backend.database_path(&backend.database_name(&tenant(id)))
    }

    /// Where the local backend keeps tenant `id`'s record (`.meta.json`), its folder created.
    pub fn record_file(&self, id: &str) -> std::path::PathBuf {
        let backend = fleet_tenantdb::LocalBackend::new(self.data_dir(), "");
        use fleet_tenantdb::TenantDatabases;
        let path = backend.record_path(&backend.database_name(&tenant(id)));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }

    /// Publishes `tenant.created` as the registration service does.
    pub async fn register(&self, tenant: &str, message_id: &str, extra: serde_json::Value) {
        let mut payload = json!({"tenantId": tenant, "orgId": "org_42", "plan": "pro", "region": "eu-west",
                                 "displayName": "Acme Inc", "adminEmail": "ops@acme.example"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            payload[k] = v.clone();
        }
        self.publisher
            .publish_json("tenant.created", message_id, &payload, HeaderMap::new())
            .await
            .unwrap();
    }

    pub async fn command(&self, subject: &str, payload: serde_json::Value, message_id: &str) {
        self.publisher
            .publish_json(subject, message_id, &payload, HeaderMap::new())
            .await
            .unwrap();
    }

    pub async fn record(&self, tenant: &str) -> Option<TenantRecord> {
        self.tenants
            .get::<std::convert::Infallible>(tenant)
            .await
            .unwrap()
            .map(|v| v.state)
    }

    pub async fn status(&self, tenant: &str) -> String {
        self.record(tenant)
            .await
            .map(|r| fleet_tenants::machine::status_name(&r))
            .unwrap_or_default()
    }

    /// Waits until `check` holds.
    pub async fn eventually<F: AsyncFnMut() -> bool>(&self, limit: Duration, what: &str, check: F) {
        let held = fleet_testkit::wait_until(limit, check).await;
        assert!(
            held,
            "timed out waiting for: {what}\n{}",
            self.worker_log(0)
        );
    }

    /// Every message of a stream whose subject is `subject`, as JSON.
    pub async fn messages(&self, stream: &str, subject: &str) -> Vec<serde_json::Value> {
        let messages = fleet_testkit::stream_messages(&self.js, stream, Some(subject)).await;
        messages
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    }

    pub async fn hooks(&self, subject: &str) -> Vec<serde_json::Value> {
        fleet_testkit::hooks(&self.js, subject).await
    }

    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.messages(names::DEAD_LETTERS, "dlq.provisioner")
            .await
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    /// Tables of a tenant's database file.
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

    /// Token records of a tenant's local database.
    pub fn tokens(&self, tenant: &str) -> Vec<serde_json::Value> {
        let meta = std::fs::read_to_string(self.record_file(tenant)).unwrap();
        serde_json::from_str::<serde_json::Value>(&meta).unwrap()["tokens"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// How many valid tokens the backend has issued for `tenant` so far: 0 while its record
    /// is not written yet (or is mid-write), for polling.
    pub fn tokens_issued(&self, tenant: &str) -> usize {
        std::fs::read_to_string(self.record_file(tenant))
            .ok()
            .and_then(|meta| serde_json::from_str::<serde_json::Value>(&meta).ok())
            .and_then(|meta| meta["tokens"].as_array().map(Vec::len))
            .unwrap_or_default()
    }

    /// A provisioner built in this process as its binary builds it, on this fleet's
    /// configuration changed by `edit`: for tests that hand it deliveries directly.
    pub async fn provisioner_in_process(
        &self,
        edit: impl FnOnce(&mut fleet_config::Config),
    ) -> fleet_provisioner::Provisioner {
        use fleet_runtime::worker::{Worker, WorkerContext};
        let mut config = self.config.clone();
        edit(&mut config);
        let runtime = fleet_runtime::Runtime::connect(&config).await.unwrap();
        let hooks = fleet_runtime::Hooks::new(
            runtime.publisher.clone(),
            "/test/provisioner",
            runtime.topology.subjects(),
        );
        let context = WorkerContext {
            config,
            runtime,
            hooks,
        };
        fleet_provisioner::Provisioner::build(&context)
            .await
            .unwrap()
    }

    /// [`Self::provisioner_in_process`] that carries every step out in memory (none takes the
    /// 60 s after which a step is written as it ends), each delayed by `step_delay_ms`: for the
    /// lease races, where one worker stalls in a step while another takes the tenant over.
    pub async fn provisioner_in_memory(
        &self,
        step_delay_ms: u64,
    ) -> fleet_provisioner::Provisioner {
        self.provisioner_in_process(|config| {
            config.provisioner.step_delay_ms = step_delay_ms;
            config.provisioner.checkpoint_step_after_ms = 60_000;
        })
        .await
    }
}

pub fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

/// A size of a scale or chaos run from the environment (`name`), `default` otherwise: CI runs
/// the small defaults, an acceptance run sets the issue's sizes.
pub fn env_size(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
