//! End to end: three real quota-auditor processes against a real nats-server and local libSQL
//! tenant databases (provisioned by the provisioner's handler in this process, which also
//! carries out the suspensions and resumptions the auditor asks for).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use fleet_runtime::topology::names;
use fleet_runtime::worker::{Worker, WorkerContext};
use fleet_runtime::{Hooks, Runtime, StateStore};
use fleet_tenants::audit::UsageRecord;
use fleet_tenants::machine::TenantRecord;
use fleet_testkit::TestFleet;
use serde_json::{Value, json};
use tokio::sync::watch;

/// One-second buckets, warnings from 80 %, two seconds of grace.
const OVERLAY: &str = "[quota]\ninterval_secs = 1\nsoft_percent = 80\ngrace_secs = 2\n";

#[allow(missing_debug_implementations)]
struct Fleet {
    fleet: TestFleet,
    runtime: Runtime,
    tenants: StateStore<TenantRecord>,
    usage: StateStore<UsageRecord>,
    _provisioner: watch::Sender<bool>,
}

impl Fleet {
    async fn start() -> Self {
        let fleet = TestFleet::start(OVERLAY);
        let config = fleet.config.clone();
        let runtime = Runtime::connect(&config).await.unwrap();
        let context = WorkerContext {
            config: config.clone(),
            runtime: runtime.clone(),
            hooks: Hooks::new(
                runtime.publisher.clone(),
                "/test/provisioner",
                runtime.topology.subjects(),
            ),
        };
        let provisioner = Arc::new(
            fleet_provisioner::Provisioner::build(&context)
                .await
                .unwrap(),
        );
        let (stop, rx) = watch::channel(false);
        let (worker_runtime, worker_config) = (runtime.clone(), config.clone());
        tokio::spawn(async move {
            worker_runtime
                .run_worker(&worker_config, names::PROVISIONER, provisioner, rx)
                .await
        });
        Self {
            tenants: fleet_control::tenants(&runtime).await.unwrap(),
            usage: fleet_control::usage(&runtime).await.unwrap(),
            runtime,
            fleet,
            _provisioner: stop,
        }
    }

    async fn publish(&self, subject: &str, id: &str, payload: Value) {
        self.runtime
            .publisher
            .publish_json(subject, id, &payload, HeaderMap::new())
            .await
            .unwrap();
    }

    async fn tenant(&self, id: &str) -> Option<TenantRecord> {
        self.tenants
            .get::<std::convert::Infallible>(id)
            .await
            .unwrap()
            .map(|v| v.state)
    }

    async fn usage(&self, id: &str) -> Option<UsageRecord> {
        self.usage
            .get::<std::convert::Infallible>(id)
            .await
            .unwrap()
            .map(|v| v.state)
    }

    async fn eventually<F: AsyncFnMut() -> bool>(&self, what: &str, check: F) {
        if fleet_testkit::wait_until(Duration::from_secs(60), check).await {
            return;
        }
        let logs: Vec<String> = (0..self.fleet.processes())
            .map(|i| self.fleet.log(i))
            .collect();
        panic!("timed out waiting for: {what}\n{}", logs.join("\n---\n"));
    }

    fn db_file(&self, id: &str) -> std::path::PathBuf {
        use fleet_tenantdb::TenantDatabases;
        let backend = fleet_tenantdb::LocalBackend::new(self.fleet.dir.path().join("tenants"), "");
        backend.database_path(&backend.database_name(&fleet_protocol::TenantId::parse(id).unwrap()))
    }

    async fn sql(&self, id: &str, sql: &str) {
        let conn = fleet_schema::open_local(&self.db_file(id)).await.unwrap();
        conn.execute_batch(sql).await.unwrap();
    }

    async fn count(&self, id: &str, sql: &str) -> u64 {
        let conn = fleet_schema::open_local(&self.db_file(id)).await.unwrap();
        let mut rows = conn.query(sql, ()).await.unwrap();
        rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap() as u64
    }

    async fn warnings(&self, tenant: &str) -> Vec<Value> {
        fleet_testkit::hooks(&self.runtime.js, "hooks.quota.warning")
            .await
            .into_iter()
            .filter(|h| h["subject"] == tenant)
            .collect()
    }
}

#[tokio::test]
async fn over_a_quota_a_tenant_is_warned_suspended_after_the_grace_and_resumed_once_back_under() {
    let mut fleet = Fleet::start().await;
    for (id, plan) in [("small", "free"), ("billed", "free")] {
        fleet
            .publish(
                "tenant.created",
                id,
                json!({"tenantId": id, "orgId": "org", "plan": plan}),
            )
            .await;
    }
    fleet
        .eventually("tenants active", async || {
            let mut n = 0;
            for id in ["small", "billed"] {
                if fleet
                    .tenant(id)
                    .await
                    .is_some_and(|r| r.status() == fleet_protocol::TenantProvisioningStatus::Active)
                {
                    n += 1;
                }
            }
            n == 2
        })
        .await;
    // A platform object with rows, registered as a deploy registers it.
    fleet
        .sql(
            "small",
            r#"CREATE TABLE item (id TEXT NOT NULL PRIMARY KEY, created_at TEXT NOT NULL DEFAULT '', updated_at TEXT NOT NULL DEFAULT '', n REAL);
               INSERT INTO sys_metadata (id, metadata_type, metadata_name, body, source)
                 VALUES ('object:item', 'object', 'item', '{"name":"item","fields":{"n":{"type":"number"}}}', 'deployment:test');
               WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 8500)
                 INSERT INTO item (id, n) SELECT 'r' || i, i FROM k;"#,
        )
        .await;
    // An admin suspends the other tenant: the auditor never lifts that.
    fleet
        .publish(
            "tenant.suspended",
            "admin-suspends-billed",
            json!({"tenantId": "billed", "reason": "unpaid invoice"}),
        )
        .await;
    for _ in 0..3 {
        fleet.fleet.spawn(env!("CARGO_BIN_EXE_quota-auditor"), &[]);
    }

    // 85 % of maxRecordsPerObject (10 000 on the free plan): warned, once.
    fleet
        .eventually("a warning", async || {
            !fleet.warnings("small").await.is_empty()
        })
        .await;
    let warning = &fleet.warnings("small").await[0];
    assert_eq!(warning["data"]["quota"], "maxRecordsPerObject");
    // The usage matches what the database holds, counted here independently.
    let usage = fleet.usage("small").await.unwrap();
    assert_eq!(
        usage.usage.current_record_count,
        fleet.count("small", "SELECT count(*) FROM item").await
    );
    assert_eq!(usage.usage.current_object_count, 1);
    assert!(usage.usage.last_updated_at.is_some());

    // Over the limit: suspended (reason quota) once the grace period has passed.
    fleet
        .sql(
            "small",
            "WITH RECURSIVE k(i) AS (SELECT 8501 UNION ALL SELECT i + 1 FROM k WHERE i < 10200)
             INSERT INTO item (id, n) SELECT 'r' || i, i FROM k;",
        )
        .await;
    fleet
        .eventually("suspended for quota", async || {
            fleet.tenant("small").await.is_some_and(|r| {
                r.status() == fleet_protocol::TenantProvisioningStatus::Suspended
                    && r.suspension_reason.as_deref() == Some("quota")
            })
        })
        .await;
    let over = fleet.usage("small").await.unwrap();
    assert!(over.over_since.is_some());

    // Back under: resumed.
    fleet.sql("small", "DELETE FROM item WHERE n > 100").await;
    fleet
        .eventually("resumed", async || {
            fleet.tenant("small").await.is_some_and(|r| {
                r.status() == fleet_protocol::TenantProvisioningStatus::Active
                    && r.suspension_reason.is_none()
            })
        })
        .await;
    fleet
        .eventually("usage measured after the cleanup", async || {
            fleet
                .usage("small")
                .await
                .is_some_and(|u| u.usage.current_record_count == 100 && u.over_since.is_none())
        })
        .await;
    assert_eq!(
        fleet.warnings("small").await.len(),
        1,
        "warned once while at or above 80 %"
    );

    // Three replicas, one audit per bucket.
    let buckets = fleet.usage("small").await.unwrap().buckets;
    let mut unique = buckets.clone();
    unique.dedup();
    assert!(buckets.len() >= 3, "{buckets:?}");
    assert_eq!(unique, buckets, "each bucket audited once: {buckets:?}");

    // The admin's suspension stands.
    let billed = fleet.tenant("billed").await.unwrap();
    assert_eq!(
        billed.status(),
        fleet_protocol::TenantProvisioningStatus::Suspended
    );
    assert_eq!(billed.suspension_reason.as_deref(), Some("unpaid invoice"));
    assert!(
        fleet.usage("billed").await.is_none(),
        "not audited while an admin holds it"
    );
}

#[tokio::test]
async fn a_tenant_over_its_overridden_storage_quota_is_suspended_and_resumed() {
    let mut fleet = Fleet::start().await;
    fleet
        .publish(
            "tenant.created",
            "roomy",
            json!({"tenantId": "roomy", "orgId": "org", "plan": "free"}),
        )
        .await;
    fleet
        .eventually("active", async || {
            fleet
                .tenant("roomy")
                .await
                .is_some_and(|r| r.status() == fleet_protocol::TenantProvisioningStatus::Active)
        })
        .await;
    let size = fleet
        .count(
            "roomy",
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        )
        .await;
    // An operator's override of one quota: the plan's others stay.
    let limit = size + 256 * 1024;
    fleet
        .publish(
            "tenant.quota_changed",
            "roomy-storage",
            json!({"tenantId": "roomy", "quotas": {"maxStorageBytes": limit}}),
        )
        .await;
    fleet
        .eventually("the override recorded", async || {
            fleet.tenant("roomy").await.is_some_and(|r| {
                r.quotas.max_storage_bytes.map(|n| n.get()) == Some(limit)
                    && r.quotas.max_objects.map(|n| n.get()) == Some(20)
            })
        })
        .await;
    fleet.fleet.spawn(env!("CARGO_BIN_EXE_quota-auditor"), &[]);
    fleet
        .sql(
            "roomy",
            "CREATE TABLE attachment (body BLOB);
             WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 64)
               INSERT INTO attachment SELECT randomblob(8192) FROM k;",
        )
        .await;
    fleet
        .eventually("suspended for storage", async || {
            fleet
                .tenant("roomy")
                .await
                .is_some_and(|r| r.suspension_reason.as_deref() == Some("quota"))
        })
        .await;
    let over = fleet.usage("roomy").await.unwrap();
    assert!(over.usage.current_storage_bytes > limit);
    assert!(
        over.results
            .iter()
            .any(|c| c.quota == "maxStorageBytes" && !c.result.allowed)
    );
    assert!(
        fleet
            .warnings("roomy")
            .await
            .iter()
            .any(|w| w["data"]["quota"] == "maxStorageBytes")
    );
    // An admin suspends it too: their hold outlasts the quota's.
    fleet
        .publish(
            "tenant.suspended",
            "roomy-legal-hold",
            json!({"tenantId": "roomy", "reason": "legal hold"}),
        )
        .await;
    fleet
        .eventually("the admin's reason recorded", async || {
            fleet
                .tenant("roomy")
                .await
                .is_some_and(|r| r.suspension_reason.as_deref() == Some("legal hold"))
        })
        .await;
    fleet.sql("roomy", "DROP TABLE attachment; VACUUM;").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = fleet.tenant("roomy").await.unwrap();
    assert_eq!(
        (held.status(), held.suspension_reason.as_deref()),
        (
            fleet_protocol::TenantProvisioningStatus::Suspended,
            Some("legal hold")
        ),
        "back under its quota, but an admin holds it"
    );
}
