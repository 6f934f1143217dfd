//! Deletions with a grace period: recorded, scheduled and acknowledged — they hold no delivery
//! slot, so registrations keep flowing however many tenants wait; the schedules survive
//! restarts of the broker and the worker; a due schedule deletes the database.

use std::time::Duration;

use serde_json::json;

use crate::{Fleet, IMMEDIATE_DELETE, env_size};

/// `immediate = false` with no grace: due at once, but still carried out through the schedule.
const GRACE_ZERO: &str = r#"
[provisioner.lifecycle.onTenantDelete]
immediate = false
gracePeriodHours = 0
createBackup = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_flow_while_deletions_wait_out_their_grace_period() {
    // The default lifecycle: deletion 72 hours after tenant.deleted. max_ack_pending is at most
    // the number of deletions, so deletions held as naks (the old behaviour) would starve every
    // registration.
    //
    // Sizes: `FLEET_CHAOS_DELETIONS` tenants (default 40) wait for deletion with the consumer's
    // `max_ack_pending` at `FLEET_CHAOS_MAX_ACK_PENDING` (default 10). The issue's acceptance
    // run is 1 000 deletions with the shipped 1 000.
    let deletions = env_size("FLEET_CHAOS_DELETIONS", 40);
    let max_ack_pending = env_size("FLEET_CHAOS_MAX_ACK_PENDING", 10).to_string();
    let mut fleet = Fleet::start("").await;
    let env = [("FLEET_NATS__MAX_ACK_PENDING", max_ack_pending.as_str())];
    let worker = fleet.spawn_worker(&env);
    let doomed: Vec<String> = (0..deletions as usize)
        .map(|i| format!("doomed-{i:04}"))
        .collect();
    fleet.provision(&doomed).await;
    for id in &doomed {
        fleet
            .command(
                "tenant.deleted",
                json!({"tenantId": id}),
                &format!("del-{id}"),
            )
            .await;
    }
    fleet
        .eventually(
            Duration::from_secs(60 + deletions / 5),
            "all destroying",
            async || fleet.count_status(&doomed, "destroying").await == doomed.len(),
        )
        .await;
    fleet
        .eventually(Duration::from_secs(10), "one schedule each", async || {
            fleet.stored("tenant.schedule.*").await == Some(doomed.len() as u64)
        })
        .await;
    assert_eq!(
        fleet.consumer().await.config.max_ack_pending.to_string(),
        max_ack_pending
    );
    fleet
        .eventually(
            Duration::from_secs(10),
            "no deletion holds a delivery",
            async || fleet.consumer().await.num_ack_pending == 0,
        )
        .await;
    let record = fleet.record("doomed-0000").await.unwrap();
    let due = record.delete_after().unwrap().instant() - chrono::Utc::now();
    assert!(due > chrono::Duration::hours(71), "due in 72 hours: {due}");
    assert!(fleet.db_file("doomed-0000").exists(), "not yet");

    let fresh: Vec<String> = (0..5).map(|i| format!("fresh-{i}")).collect();
    fleet.provision(&fresh).await;

    // After a restart of the broker (same store) and of the worker: the schedules are still
    // there, still nothing waits, and registrations still flow.
    fleet.kill_worker(worker);
    fleet.server.restart();
    fleet.spawn_worker(&env);
    fleet
        .eventually(Duration::from_secs(30), "schedules kept", async || {
            fleet.stored("tenant.schedule.*").await == Some(doomed.len() as u64)
        })
        .await;
    let after: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    fleet.provision(&after).await;
    fleet
        .eventually(Duration::from_secs(10), "nothing pending", async || {
            fleet.consumer().await.num_ack_pending == 0
        })
        .await;
    assert_eq!(
        fleet.count_status(&doomed, "destroying").await,
        doomed.len()
    );
    assert!(fleet.dead_letters().await.is_empty());
    println!(
        "{deletions} deletions waiting (max_ack_pending {max_ack_pending}): 10 registrations active, 0 ack-pending, before and after a broker restart"
    );
}

#[tokio::test]
async fn a_due_schedule_deletes_the_database_with_its_backup_and_hook() {
    let mut fleet = Fleet::start(GRACE_ZERO).await;
    fleet.spawn_worker(&[]);
    fleet.provision(&["acme".to_owned()]).await;
    fleet
        .command("tenant.deleted", json!({"tenantId": "acme"}), "d1")
        .await;
    fleet
        .eventually(Duration::from_secs(30), "deleted", async || {
            fleet.status("acme").await == "deleted"
        })
        .await;
    assert!(!fleet.db_file("acme").exists());
    let backup = fleet
        .record("acme")
        .await
        .unwrap()
        .backup()
        .unwrap()
        .to_owned();
    assert!(std::path::Path::new(&backup).exists(), "{backup}");
    fleet
        .eventually(Duration::from_secs(10), "deleted hook", async || {
            fleet.hooks("hooks.tenant.deleted").await.len() == 1
        })
        .await;
    assert!(
        fleet.worker_log(0).contains("deletion scheduled"),
        "through the schedule, not inline"
    );
    assert_eq!(
        fleet.stored("tenant.schedule.*").await,
        Some(0),
        "fired and gone"
    );
    // A repeated tenant.deleted and a stale schedule firing again change nothing.
    fleet
        .command("tenant.deleted", json!({"tenantId": "acme"}), "d2")
        .await;
    fleet
        .command(
            "tenant.deletion_due",
            json!({"tenantId": "acme"}),
            "due-again",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.hooks("hooks.tenant.deleted").await.len(), 1);
    assert!(fleet.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_schedule_fired_early_is_put_back_at_the_real_due_time() {
    // The default lifecycle (72 hours). A schedule replaced by one due now — forged, or left by
    // an operator — fires early; the deletion must be scheduled again, not dropped as a
    // duplicate of the first scheduling and lost.
    let mut fleet = Fleet::start("").await;
    fleet.spawn_worker(&[]);
    fleet.provision(&["acme".to_owned()]).await;
    fleet
        .command("tenant.deleted", json!({"tenantId": "acme"}), "d1")
        .await;
    fleet
        .eventually(Duration::from_secs(30), "scheduled", async || {
            fleet.stored("tenant.schedule.acme").await == Some(1)
        })
        .await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Schedule", "@at 2020-01-01T00:00:00Z");
    headers.insert("Nats-Schedule-Target", "tenant.deletion_due");
    fleet
        .publisher
        .publish_bytes(
            "tenant.schedule.acme",
            "forged",
            r#"{"tenantId":"acme"}"#.into(),
            headers,
        )
        .await
        .unwrap();
    fleet
        .eventually(Duration::from_secs(30), "scheduled again", async || {
            let schedules = fleet_testkit::stream_messages(
                &fleet.js,
                "FLEET_TENANT_COMMANDS",
                Some("tenant.schedule.acme"),
            )
            .await;
            schedules.len() == 1
                && schedules[0]
                    .headers
                    .get("Nats-Schedule")
                    .is_some_and(|at| !at.as_str().contains("2020"))
        })
        .await;
    assert_eq!(fleet.status("acme").await, "destroying");
    assert!(fleet.db_file("acme").exists(), "not deleted early");
}

#[tokio::test]
async fn the_creation_delivered_again_after_the_deletion_is_done_not_dead_lettered() {
    // The worker that provisioned the tenant dies before acknowledging tenant.created; the
    // tenant is deleted before that message comes back. Its work was done: it must end done,
    // not as a dead letter ("being deleted; not re-created" is for new requests).
    let mut fleet = Fleet::start(IMMEDIATE_DELETE).await;
    let doomed = fleet.spawn_worker(&[(
        fleet_tenantdb::crashpoint::ENV,
        fleet_provisioner::ACTIVATED_CRASH_POINT,
    )]);
    fleet.register("acme", "acme", json!({})).await;
    let status = fleet.wait_exit(doomed, Duration::from_secs(30)).await;
    assert!(status.is_some(), "the worker died after activating acme");
    assert_eq!(fleet.status("acme").await, "active");
    fleet.spawn_worker(&[]);
    fleet
        .command("tenant.deleted", json!({"tenantId": "acme"}), "d1")
        .await;
    fleet.wait_status("acme", "deleted").await;
    fleet
        .eventually(
            Duration::from_secs(30),
            "the creation settled",
            async || {
                fleet.consumer().await.num_ack_pending == 0
                    && fleet.consumer().await.num_pending == 0
            },
        )
        .await;
    assert!(fleet.dead_letters().await.is_empty());
    // A new creation of the same tenant while it is deleted is refused, as before.
    fleet.register("acme", "acme-again", json!({})).await;
    fleet
        .eventually(Duration::from_secs(30), "refused", async || {
            fleet.dead_letters().await.len() == 1
        })
        .await;
    assert!(
        fleet.dead_letters().await[0]
            .error
            .contains("not re-created")
    );
}
