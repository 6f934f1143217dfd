//! Crashes: what a killed provisioner leaves behind is recognised and finished, at every
//! file-system step of `create_database` and `issue_token`, under repeated SIGKILLs, and when a
//! tenant's deliveries run out — every tenant ends with exactly one outcome.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use fleet_tenantdb::crashpoint;
use serde_json::json;

use crate::{Fleet, IMMEDIATE_DELETE, env_size};

/// One tenant's outcome: one database file, one valid token, one hook of the right kind.
async fn assert_active_once(fleet: &Fleet, id: &str) {
    fleet.wait_settled(id, "active").await;
    assert!(fleet.db_file(id).exists(), "{id}: its database");
    assert_eq!(fleet.tokens(id).len(), 1, "{id}: exactly one valid token");
    let hooks = fleet.hooks("hooks.tenant.created").await;
    assert_eq!(
        hooks.iter().filter(|h| h["subject"] == id).count(),
        1,
        "{id}: one hook"
    );
    assert!(
        !fleet.record_file(id).with_extension("json.tmp").exists(),
        "{id}: no temp file left"
    );
}

#[tokio::test]
async fn an_empty_record_left_by_a_crash_is_reclaimed_and_the_tenant_ends_active() {
    let mut fleet = Fleet::start("").await;
    // What a provisioner killed between creating the record file and writing it left behind.
    std::fs::write(fleet.record_file("acme"), b"").unwrap();
    fleet.spawn_worker(&[]);
    fleet.register("acme", "acme", json!({})).await;
    fleet.wait_status("acme", "active").await;
    assert_active_once(&fleet, "acme").await;
    assert!(fleet.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_corrupt_record_fails_the_tenant_with_its_hook_instead_of_retrying_for_ever() {
    let mut fleet = Fleet::start("").await;
    std::fs::write(fleet.record_file("acme"), b"{\"x\": 1}").unwrap();
    fleet.spawn_worker(&[]);
    fleet.register("acme", "acme", json!({})).await;
    fleet.wait_status("acme", "failed").await;
    let record = fleet.record("acme").await.unwrap();
    assert!(
        record.error.as_deref().unwrap().contains("corrupt"),
        "{:?}",
        record.error
    );
    fleet
        .eventually(Duration::from_secs(10), "failed hook", async || {
            fleet.hooks("hooks.tenant.failed").await.len() == 1
        })
        .await;
    let letters = fleet.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "poison");
    assert_eq!(
        std::fs::read(fleet.record_file("acme")).unwrap(),
        b"{\"x\": 1}",
        "left for an operator, not overwritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_file_system_step_ends_active_once() {
    let mut fleet = Fleet::start("").await;
    for (i, point) in crashpoint::LOCAL_POINTS.iter().enumerate() {
        let id = format!("crash-{i:02}");
        let doomed = fleet.spawn_worker(&[(crashpoint::ENV, point)]);
        fleet.register(&id, &id, json!({})).await;
        let status = fleet
            .wait_exit(doomed, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{point}: never reached"));
        assert_eq!(status.signal(), Some(6), "{point}: aborted at the point");
        assert!(
            fleet
                .worker_log(doomed)
                .contains(&format!("crash point {point} reached")),
            "{point}: {}",
            fleet.worker_log(doomed)
        );
        assert_ne!(fleet.status(&id).await, "active", "{point}");
        let survivor = fleet.spawn_worker(&[]);
        fleet
            .eventually(
                Duration::from_secs(60),
                &format!("{id} active after {point}"),
                async || fleet.status(&id).await == "active",
            )
            .await;
        assert_active_once(&fleet, &id).await;
        fleet.kill_worker(survivor);
    }
    let expected: Vec<String> = (0..crashpoint::LOCAL_POINTS.len())
        .map(|i| format!("crash-{i:02}.db"))
        .collect();
    assert_eq!(fleet.database_files(), expected, "one database each");
    assert!(fleet.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_activation_and_its_hook_publishes_the_hook_once_on_redelivery() {
    let mut fleet = Fleet::start("").await;
    let doomed = fleet.spawn_worker(&[(crashpoint::ENV, "create.hook_pending")]);
    fleet.register("acme", "acme", json!({})).await;
    let status = fleet
        .wait_exit(doomed, Duration::from_secs(30))
        .await
        .expect("create.hook_pending never reached");
    assert_eq!(status.signal(), Some(6), "aborted at the point");
    // What the killed worker left: the tenant active, its hook decided but not out.
    let record = fleet.record("acme").await.unwrap();
    assert_eq!(fleet_tenants::machine::status_name(&record), "active");
    let pending = record.pending_hook.expect("the hook pending in the record");
    assert_eq!(pending.subject, "hooks.tenant.created");
    assert!(fleet.hooks("hooks.tenant.created").await.is_empty());
    // The message comes back after ack_wait; the next worker publishes the hook and clears it.
    fleet.spawn_worker(&[]);
    assert_active_once(&fleet, "acme").await;
    assert!(fleet.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_deliveries_run_out_ends_failed_with_its_hook() {
    let mut fleet = Fleet::start("").await;
    // The data dir's place is taken by a file: every create fails (transiently, as a full or
    // read-only disk would) until the deliveries run out.
    std::fs::write(fleet.data_dir(), b"not a directory").unwrap();
    fleet.spawn_worker(&[("FLEET_WORKER__RETRY__MAX_ATTEMPTS", "3")]);
    fleet.register("acme", "acme", json!({})).await;
    fleet.wait_status("acme", "failed").await;
    let record = fleet.record("acme").await.unwrap();
    assert!(
        record
            .error
            .as_deref()
            .unwrap()
            .contains("gave up after 3 deliveries"),
        "{:?}",
        record.error
    );
    fleet
        .eventually(Duration::from_secs(10), "failed hook", async || {
            fleet.hooks("hooks.tenant.failed").await.len() == 1
        })
        .await;
    let letters = fleet.dead_letters().await;
    assert_eq!(
        letters
            .iter()
            .map(|l| (l.reason.as_str(), l.attempts))
            .collect::<Vec<_>>(),
        [("max_deliver", 3)]
    );
    // Once the cause is fixed, a new tenant.created (a replay) provisions it.
    std::fs::remove_file(fleet.data_dir()).unwrap();
    fleet.register("acme", "acme-replayed", json!({})).await;
    fleet
        .eventually(
            Duration::from_secs(30),
            "active after the fix",
            async || fleet.status("acme").await == "active",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_registered_while_the_provisioner_is_killed_again_and_again_all_end_active() {
    // Sizes: `FLEET_CHAOS_TENANTS` (default 200) tenants registered at full speed while the
    // provisioner is SIGKILLed `FLEET_CHAOS_KILLS` (default 8) times, every
    // `FLEET_CHAOS_KILL_EVERY_MS` (default 300) ms, and restarted. The acceptance run is
    // 1 000 tenants and 20 kills.
    let tenants = env_size("FLEET_CHAOS_TENANTS", 200);
    let kills = env_size("FLEET_CHAOS_KILLS", 8);
    let every = Duration::from_millis(env_size("FLEET_CHAOS_KILL_EVERY_MS", 300));
    let mut fleet = Fleet::start("").await;
    let mut worker = fleet.spawn_worker(&[]);
    let ids: Vec<String> = (0..tenants).map(|i| format!("chaos-{i:05}")).collect();
    let publishing = {
        let publisher = fleet.publisher.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            for id in &ids {
                let payload = json!({"tenantId": id, "orgId": "org", "plan": "pro",
                                     "region": "eu-west", "adminEmail": "ops@x.example"});
                publisher
                    .publish_json("tenant.created", id, &payload, async_nats::HeaderMap::new())
                    .await
                    .unwrap();
            }
        })
    };
    for _ in 0..kills {
        tokio::time::sleep(every).await;
        fleet.kill_worker(worker);
        worker = fleet.spawn_worker(&[]);
    }
    publishing.await.unwrap();
    let all_active =
        fleet_testkit::wait_until(Duration::from_secs(120 + tenants / 5), async || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            fleet.count_status(&ids, "active").await == ids.len()
        })
        .await;
    if !all_active {
        let stuck: Vec<_> = {
            let mut stuck = Vec::new();
            for id in &ids {
                if fleet.status(id).await != "active" {
                    stuck.push((id.clone(), fleet.record(id).await));
                }
            }
            stuck
        };
        panic!(
            "not every tenant active: {:?}\nfirst stuck: {:#?}\nconsumer: {:?}\ndead letters: {:?}",
            fleet.statuses(&ids).await,
            stuck.first(),
            fleet.consumer().await,
            fleet.dead_letters().await.len()
        );
    }
    for id in &ids {
        fleet.wait_settled(id, "active").await;
    }
    let hooks = fleet.hooks("hooks.tenant.created").await;
    let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
    for hook in &hooks {
        *per_tenant
            .entry(hook["subject"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_tenant.len(), ids.len(), "a hook for every tenant");
    assert!(per_tenant.values().all(|n| *n == 1), "one hook per tenant");
    assert!(fleet.hooks("hooks.tenant.failed").await.is_empty());
    assert_eq!(fleet.database_files().len(), ids.len(), "one database each");
    for id in ids.iter().step_by(17) {
        assert_eq!(fleet.tokens(id).len(), 1, "{id}: one valid token");
    }
    let leftovers: Vec<_> = std::fs::read_dir(fleet.data_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(fleet.dead_letters().await.is_empty());
    println!(
        "{} tenants, {kills} SIGKILLs every {every:?}: all active, one hook each",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_step_of_a_deletion_ends_deleted_with_one_backup() {
    let mut fleet = Fleet::start(IMMEDIATE_DELETE).await;
    let ids: Vec<String> = (0..fleet_provisioner::DELETE_CRASH_POINTS.len())
        .map(|i| format!("gone-{i}"))
        .collect();
    let setup = fleet.spawn_worker(&[]);
    fleet.provision(&ids).await;
    fleet.kill_worker(setup);
    for (id, point) in ids.iter().zip(fleet_provisioner::DELETE_CRASH_POINTS) {
        let doomed = fleet.spawn_worker(&[(crashpoint::ENV, point)]);
        fleet
            .command(
                "tenant.deleted",
                json!({"tenantId": id}),
                &format!("del-{id}"),
            )
            .await;
        let status = fleet
            .wait_exit(doomed, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{point}: never reached"));
        assert_eq!(status.signal(), Some(6), "{point}: aborted at the point");
        assert_ne!(fleet.status(id).await, "deleted", "{point}");
        let survivor = fleet.spawn_worker(&[]);
        fleet.wait_settled(id, "deleted").await;
        fleet.kill_worker(survivor);
        let backups: Vec<String> = std::fs::read_dir(fleet.backups_dir())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
            .filter(|n| n.starts_with(&format!("{id}-")))
            .collect();
        assert_eq!(
            backups.len(),
            1,
            "{point}: one finished backup, no partial: {backups:?}"
        );
        let record = fleet.record(id).await.unwrap();
        assert!(record.backup().unwrap().ends_with(&backups[0]), "{point}");
        assert!(!fleet.db_file(id).exists(), "{point}");
        assert!(!fleet.record_file(id).exists(), "{point}");
    }
    let hooks = fleet.hooks("hooks.tenant.deleted").await;
    assert_eq!(hooks.len(), ids.len(), "one deleted hook each");
    let letters = fleet.dead_letters().await;
    assert!(letters.is_empty(), "{letters:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steps_before_a_failed_one_are_recorded_with_it_and_its_token_stored() {
    let mut fleet = Fleet::start("").await;
    // Garbage where the tenant's database goes, long enough to pass for a complete one:
    // create_database keeps it, and sync_schema cannot open it.
    let db = fleet.db_file("acme");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, vec![b'x'; 64 * 1024]).unwrap();
    // Every step held in memory until it fails: the ones that ended are written first.
    fleet.spawn_worker(&[
        ("FLEET_WORKER__RETRY__MAX_ATTEMPTS", "2"),
        ("FLEET_PROVISIONER__CHECKPOINT_STEP_AFTER_MS", "60000"),
    ]);
    fleet.register("acme", "acme", json!({})).await;
    fleet.wait_status("acme", "failed").await;
    let record = fleet.record("acme").await.unwrap();
    let status = |name: &str| {
        let step = record.steps.iter().find(|s| s.name == name).unwrap();
        format!("{:?}", step.status)
    };
    assert_eq!(
        [
            status("create_database"),
            status("issue_token"),
            status("store_connection"),
            status("sync_schema"),
        ],
        ["Completed", "Completed", "Completed", "Failed"],
        "{:?}",
        record.steps
    );
    assert!(record.connection.is_some(), "the issued token is stored");
    assert_eq!(
        fleet.tokens("acme").len(),
        1,
        "one valid token: the stored one"
    );
    let history: Vec<String> = fleet
        .messages("FLEET_PROGRESS", "progress.tenant.acme")
        .await
        .iter()
        .map(|e| e["step"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        history.iter().any(|s| s == "store_connection"),
        "{history:?}"
    );
}
