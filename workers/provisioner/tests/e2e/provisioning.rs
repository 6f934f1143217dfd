//! tenant.created: many tenants, duplicates, a worker killed mid-step, two workers at once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::Fleet;

const SYSTEM_TABLES: [&str; 4] = [
    "sys_deployment",
    "sys_installed_app",
    "sys_metadata",
    "sys_user",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tenants_become_active_with_their_schema_and_one_hook_each() {
    let mut fleet = Fleet::start("").await;
    fleet.spawn_worker(&[]);
    let ids: Vec<String> = (0..200).map(|i| format!("acme-{i:03}")).collect();
    for id in &ids {
        fleet.register(id, id, json!({})).await;
    }
    fleet
        .eventually(Duration::from_secs(120), "200 active tenants", async || {
            let mut active = 0;
            for id in &ids {
                if fleet.status(id).await == "active" {
                    active += 1;
                }
            }
            active == ids.len()
        })
        .await;
    for id in ids.iter().step_by(20) {
        let tables = fleet.tables(id).await;
        assert_eq!(tables, SYSTEM_TABLES, "{id}");
        let record = fleet.record(id).await.unwrap();
        assert!(
            record.steps.iter().all(|s| s.duration_ms.is_some()),
            "{id}: every step timed"
        );
        assert!(
            record
                .connection
                .as_ref()
                .unwrap()
                .sealed_auth_token
                .as_deref()
                .unwrap()
                .starts_with("v1.e2e.")
        );
        assert_eq!(fleet.tokens(id).len(), 1, "{id}: exactly one valid token");
    }
    let hooks = fleet.hooks("hooks.tenant.created").await;
    let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
    for hook in &hooks {
        assert_eq!(hook["specversion"], "1.0");
        assert_eq!(hook["type"], "io.objectos.fleet.tenant.created.v1");
        assert_eq!(hook["data"]["status"], "active");
        *per_tenant
            .entry(hook["subject"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_tenant.len(), 200);
    assert!(per_tenant.values().all(|n| *n == 1), "one hook per tenant");
    assert!(fleet.dead_letters().await.is_empty());
}

/// The history of `tenant`: each progress entry's step and the revision that recorded it.
async fn history(fleet: &Fleet, tenant: &str) -> Vec<(String, u64)> {
    fleet
        .messages("FLEET_PROGRESS", &format!("progress.tenant.{tenant}"))
        .await
        .iter()
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_owned(),
                e["revision"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn quick_steps_are_written_with_the_activation_and_slow_ones_as_they_end() {
    const STEPS: [&str; 6] = [
        "create_database",
        "issue_token",
        "store_connection",
        "sync_schema",
        "seed",
        "register",
    ];
    let mut fleet = Fleet::start("").await;
    // Every step quicker than the threshold: one write records all six, and each keeps its
    // own entry in the history, in order, at that write's revision.
    let worker = fleet.spawn_worker(&[("FLEET_PROVISIONER__CHECKPOINT_STEP_AFTER_MS", "60000")]);
    fleet
        .register("acme", "acme", json!({"adminEmail": "ops@acme.example"}))
        .await;
    fleet
        .eventually(Duration::from_secs(30), "acme active", async || {
            fleet.status("acme").await == "active"
        })
        .await;
    let acme = history(&fleet, "acme").await;
    let steps: Vec<&str> = acme.iter().map(|(s, _)| s.as_str()).collect();
    let at = steps.iter().position(|s| *s == "create_database").unwrap();
    assert_eq!(steps[at..at + 6], STEPS, "{acme:?}");
    let revision = acme[at].1;
    assert!(
        acme[at..at + 6].iter().all(|(_, r)| *r == revision),
        "{acme:?}"
    );
    let record = fleet.record("acme").await.unwrap();
    assert!(record.steps.iter().all(|s| s.duration_ms.is_some()));
    assert!(record.connection.is_some());
    assert_eq!(fleet.tables("acme").await, SYSTEM_TABLES);
    fleet.kill_worker(worker);

    // Every step at or over the threshold (0): each written as it ends, at its own revision.
    fleet.spawn_worker(&[("FLEET_PROVISIONER__CHECKPOINT_STEP_AFTER_MS", "0")]);
    fleet
        .register("beta", "beta", json!({"adminEmail": "ops@beta.example"}))
        .await;
    fleet
        .eventually(Duration::from_secs(30), "beta active", async || {
            fleet.status("beta").await == "active"
        })
        .await;
    let beta = history(&fleet, "beta").await;
    let at = beta
        .iter()
        .position(|(s, _)| s == "create_database")
        .unwrap();
    let steps: Vec<&str> = beta[at..at + 6].iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(steps, STEPS, "{beta:?}");
    let revisions: std::collections::BTreeSet<u64> =
        beta[at..at + 6].iter().map(|(_, r)| *r).collect();
    assert_eq!(revisions.len(), 6, "{beta:?}");
    assert_eq!(fleet.tables("beta").await, SYSTEM_TABLES);
    assert_eq!(fleet.hooks("hooks.tenant.created").await.len(), 2);
}

#[tokio::test]
async fn a_duplicate_tenant_created_is_a_no_op() {
    let mut fleet = Fleet::start("").await;
    fleet.spawn_worker(&[]);
    fleet.register("acme", "acme", json!({})).await;
    fleet
        .eventually(Duration::from_secs(30), "active", async || {
            fleet.status("acme").await == "active"
        })
        .await;
    let first = fleet.record("acme").await.unwrap();
    // The registration service re-sends (same Nats-Msg-Id: dropped by the duplicate window) and
    // an operator replays it (a new id: handled, and found already done).
    fleet.register("acme", "acme", json!({})).await;
    fleet.register("acme", "acme-replayed", json!({})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = fleet.record("acme").await.unwrap();
    assert_eq!(first.provisioned_at, again.provisioned_at);
    assert_eq!(first.connection, again.connection, "no new token");
    assert_eq!(fleet.hooks("hooks.tenant.created").await.len(), 1);
    assert!(fleet.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_worker_killed_mid_step_and_restarted_ends_active_once() {
    let mut fleet = Fleet::start("").await;
    let slow = fleet.spawn_worker(&[("FLEET_PROVISIONER__STEP_DELAY_MS", "700")]);
    fleet.register("acme", "acme", json!({})).await;
    // Kill it while a step is running: the database exists (its step's end is written), the
    // token step is in its 700 ms delay or just issued, not stored.
    fleet
        .eventually(
            Duration::from_secs(30),
            "create_database done",
            async || {
                fleet.record("acme").await.is_some_and(|r| {
                    r.steps.iter().any(|s| {
                        s.name == "create_database" && format!("{:?}", s.status) == "Completed"
                    })
                })
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    fleet.kill_worker(slow);
    assert_ne!(fleet.status("acme").await, "active");
    fleet.spawn_worker(&[]);
    fleet
        .eventually(
            Duration::from_secs(60),
            "active after restart",
            async || fleet.status("acme").await == "active",
        )
        .await;
    assert_eq!(
        fleet.hooks("hooks.tenant.created").await.len(),
        1,
        "one hook"
    );
    assert_eq!(
        fleet.tokens("acme").len(),
        1,
        "the orphan token of the killed attempt was revoked"
    );
    let databases = fleet.database_files();
    assert_eq!(databases, ["acme.db"], "one database");
    assert_eq!(fleet.tables("acme").await, SYSTEM_TABLES);
}

#[tokio::test]
async fn a_worker_killed_after_issuing_a_token_held_in_memory_ends_active_once() {
    // Every step quicker than the threshold: nothing is written before the activation, so a
    // kill after `issue_token` leaves a token issued and recorded nowhere in the tenant's
    // record. The retry must revoke it: one valid token, one database, one hook.
    let mut fleet = Fleet::start("").await;
    let slow = fleet.spawn_worker(&[
        ("FLEET_PROVISIONER__STEP_DELAY_MS", "500"),
        ("FLEET_PROVISIONER__CHECKPOINT_STEP_AFTER_MS", "60000"),
    ]);
    fleet.register("acme", "acme", json!({})).await;
    // The token is issued at the end of `issue_token`; `store_connection` then waits 500 ms.
    fleet
        .eventually(Duration::from_secs(30), "a token issued", async || {
            fleet.tokens_issued("acme") > 0
        })
        .await;
    fleet.kill_worker(slow);
    let record = fleet.record("acme").await.unwrap();
    assert_eq!(fleet.status("acme").await, "provisioning");
    assert!(
        record
            .steps
            .iter()
            .all(|s| format!("{:?}", s.status) != "Completed"),
        "the steps were carried out in memory, none written: {:?}",
        record.steps
    );
    assert!(record.connection.is_none(), "no connection stored yet");
    assert_eq!(
        fleet.tokens_issued("acme"),
        1,
        "the killed attempt's token, valid and unrecorded"
    );

    fleet.spawn_worker(&[("FLEET_PROVISIONER__CHECKPOINT_STEP_AFTER_MS", "60000")]);
    fleet
        .eventually(
            Duration::from_secs(60),
            "active after restart",
            async || fleet.status("acme").await == "active",
        )
        .await;
    assert_eq!(
        fleet.tokens("acme").len(),
        1,
        "the orphan token of the killed attempt was revoked"
    );
    assert_eq!(fleet.database_files(), ["acme.db"], "one database");
    assert_eq!(
        fleet.hooks("hooks.tenant.created").await.len(),
        1,
        "one hook"
    );
    assert_eq!(fleet.tables("acme").await, SYSTEM_TABLES);
    // The stored connection opens the database: its token is the valid one.
    let record = fleet.record("acme").await.unwrap();
    assert!(record.connection.is_some());
    assert!(fleet.dead_letters().await.is_empty());
}

/// `tenant.created` for acme, as a delivery to hand a provisioner directly.
fn acme_created() -> fleet_runtime::Delivery {
    let payload = json!({"tenantId": "acme", "orgId": "org_42", "region": "eu-west",
                         "adminEmail": "ops@acme.example"});
    fleet_runtime::Delivery::new("tenant.created", payload.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_never_writes_its_in_memory_token() {
    // Worker A carries every step out in memory (slow steps, 1 s lease: it expires in each).
    // While A is in its last step, worker B takes the expired lease over: B's record shows no
    // step done, so B revokes every token (A's too) and issues its own. A must not then write
    // its in-memory steps — its connection's token is revoked — over B's lease.
    use fleet_runtime::{Handler, Outcome};
    use fleet_tenantdb::TenantDatabases;

    let fleet = Fleet::start("").await;
    let a = fleet.provisioner_in_memory(1_600).await;
    let b = fleet.provisioner_in_memory(400).await;
    let first = tokio::spawn(async move { a.handle(acme_created()).await });
    // The tables appear at the end of `sync_schema`: A is in `seed`, its last step, with a
    // lease renewed at its start. Once that lease has run out, B takes over.
    fleet
        .eventually(Duration::from_secs(30), "acme's schema", async || {
            fleet.db_file("acme").exists() && fleet.tables("acme").await == SYSTEM_TABLES
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1_150)).await;
    let second = b.handle(acme_created()).await;
    let first = first.await.unwrap();
    // Whoever finished it, the tenant is active once, and its stored token opens its database.
    fleet
        .eventually(Duration::from_secs(30), "acme active", async || {
            fleet.status("acme").await == "active"
        })
        .await;
    let record = fleet.record("acme").await.unwrap();
    let keys = fleet_tenantdb::key_ring_from_config(&fleet.config).unwrap();
    let token = record
        .connection
        .as_ref()
        .expect("a stored connection")
        .auth_token(&crate::tenant("acme"), &keys)
        .unwrap()
        .unwrap();
    let backend = fleet_tenantdb::LocalBackend::new(fleet.data_dir(), "");
    let database = backend.database_name(&crate::tenant("acme"));
    assert!(
        backend.open(&database, &token).await.is_ok(),
        "the stored token is valid (A: {first:?}, B: {second:?})"
    );
    assert_eq!(fleet.tokens("acme").len(), 1, "one valid token");
    // B took the lease over and finished; A, its lease lost, left the tenant to B.
    assert_eq!(second, Outcome::Done, "A: {first:?}");
    assert!(
        matches!(&first, Outcome::Transient { reason } if reason.contains("being provisioned by")),
        "A: {first:?}"
    );
    assert!(
        fleet.hooks("hooks.tenant.created").await.len() == 1,
        "one hook"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_failing_after_its_lease_was_taken_leaves_the_tenant_to_its_holder() {
    // Worker A renews its lease (1 s) at the start of `sync_schema`, then stalls in it (4 s).
    // Worker B takes the expired lease over and, in `issue_token`, revokes A's token. A then
    // opens the database with its revoked token: refused (unauthorized, not transient). That
    // failure is A's stale attempt's, not the tenant's: A must not fail the tenant on B's
    // record, and B ends it active.
    use fleet_runtime::{Handler, Outcome};

    let fleet = Fleet::start("").await;
    let a = fleet.provisioner_in_memory(4_000).await;
    let b = fleet.provisioner_in_memory(700).await;
    let first = tokio::spawn(async move { a.handle(acme_created()).await });
    // A's token is issued at the end of `issue_token` (time 0 here). A renews its lease at the
    // start of `store_connection` (until 1 s) and of `sync_schema` (4 s: until 5 s), and opens
    // the database at the end of `sync_schema`'s delay (8 s). B takes over at 5.5 s, revokes
    // A's token at about 6.9 s, and is still provisioning at 8 s (it ends at about 9 s).
    fleet
        .eventually(Duration::from_secs(30), "A's token issued", async || {
            fleet.tokens_issued("acme") > 0
        })
        .await;
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let second = b.handle(acme_created()).await;
    let first = first.await.unwrap();
    assert_eq!(
        fleet.status("acme").await,
        "active",
        "A: {first:?}, B: {second:?}, record: {:?}",
        fleet.record("acme").await
    );
    assert_eq!(second, Outcome::Done, "A: {first:?}");
    assert!(
        matches!(&first, Outcome::Transient { .. }),
        "A's failure under a lost lease is transient: {first:?}"
    );
    assert!(
        fleet.hooks("hooks.tenant.failed").await.is_empty(),
        "no failed hook"
    );
    assert_eq!(
        fleet.hooks("hooks.tenant.created").await.len(),
        1,
        "one hook"
    );
    let record = fleet.record("acme").await.unwrap();
    assert!(
        record
            .steps
            .iter()
            .all(|s| format!("{:?}", s.status) != "Failed"),
        "{:?}",
        record.steps
    );
    assert_eq!(fleet.tables("acme").await, SYSTEM_TABLES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_provisioners_never_process_a_tenant_twice() {
    let mut fleet = Fleet::start("").await;
    fleet.spawn_worker(&[]);
    fleet.spawn_worker(&[]);
    let ids: Vec<String> = (0..60).map(|i| format!("t-{i:02}")).collect();
    for id in &ids {
        fleet.register(id, id, json!({})).await;
    }
    fleet
        .eventually(Duration::from_secs(90), "all active", async || {
            let mut active = 0;
            for id in &ids {
                if fleet.status(id).await == "active" {
                    active += 1;
                }
            }
            active == ids.len()
        })
        .await;
    let hooks = fleet.hooks("hooks.tenant.created").await;
    assert_eq!(hooks.len(), ids.len(), "one hook per tenant");
    for id in &ids {
        assert_eq!(fleet.tokens(id).len(), 1, "{id}: one valid token");
        let progress = fleet
            .messages("FLEET_PROGRESS", &format!("progress.tenant.{id}"))
            .await;
        let completed = |step: &str| {
            progress
                .iter()
                .filter(|e| e["step"] == step && e["durationMs"].is_number())
                .count()
        };
        assert_eq!(
            completed("create_database"),
            1,
            "{id}: create_database ran once"
        );
        assert_eq!(completed("sync_schema"), 1, "{id}: sync_schema ran once");
    }
}

#[tokio::test]
async fn one_message_runs_through_the_handler_without_the_job_loop() {
    // The seam: the handler built as its binary builds it, one delivery handed to it directly.
    use fleet_runtime::{Delivery, Handler, Outcome};

    let fleet = Fleet::start("").await;
    let provisioner = fleet.provisioner_in_process(|_| {}).await;
    let payload = json!({"tenantId": "acme", "orgId": "org_42", "adminEmail": "ops@acme.example"});
    let outcome = provisioner
        .handle(Delivery::new("tenant.created", payload.to_string()))
        .await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(fleet.status("acme").await, "active");
    assert_eq!(fleet.tables("acme").await, SYSTEM_TABLES);
    let refused = provisioner
        .handle(Delivery::new(
            "tenant.plan_changed",
            r#"{"tenantId":"acme"}"#,
        ))
        .await;
    assert!(matches!(refused, Outcome::Poison { reason } if reason.contains("needs `plan`")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_finds_its_tenant_finished_by_another_settles_without_touching_it() {
    // Worker A stalls in its first step past its 1 s lease; worker B takes the lease over and
    // provisions the tenant to the end. When A goes on, its lease renewal finds the tenant
    // active: A must settle as done, and leave no lease on the active record (a claim used to
    // be re-decided on the active record and write A's lease onto it).
    use fleet_runtime::{Handler, Outcome};

    let fleet = Fleet::start("").await;
    // A sleeps 4 s in its first step: B's whole provisioning fits in the ~2.8 s after its
    // takeover with room to spare on a loaded machine.
    let a = fleet.provisioner_in_memory(4_000).await;
    let b = fleet.provisioner_in_memory(0).await;
    let first = tokio::spawn(async move { a.handle(acme_created()).await });
    fleet
        .eventually(Duration::from_secs(30), "acme's record", async || {
            fleet.record("acme").await.is_some()
        })
        .await;
    // A's lease (1 s) runs out while A sleeps in `create_database`; B takes it over.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let second = b.handle(acme_created()).await;
    assert_eq!(second, Outcome::Done);
    assert_eq!(fleet.status("acme").await, "active", "B finished it");
    let first = first.await.unwrap();
    assert_eq!(first, Outcome::Done, "A found it finished");
    let record = fleet.record("acme").await.unwrap();
    assert_eq!(record.lease, None, "no lease left on the active record");
    assert_eq!(fleet.status("acme").await, "active");
    assert_eq!(fleet.tokens("acme").len(), 1, "one valid token");
    assert_eq!(
        fleet.hooks("hooks.tenant.created").await.len(),
        1,
        "one hook"
    );
}
