//! Deployments: waves across the fleet, halting, dry runs, idempotent re-runs, a crashed deployer.

use std::time::Duration;

use async_nats::HeaderMap;
use fleet_deployer::rollout::RolloutStatus;
use fleet_protocol::DeployStatus;
use fleet_runtime::topology::names;
use serde_json::json;

use crate::{Fleet, crm};

const CRM_TABLES: [&str; 3] = ["crm_account", "crm_contact", "crm_opportunity"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_rolls_out_to_300_tenants_in_three_waves() {
    let mut fleet = Fleet::start().await;
    let tenants = fleet.provision(300).await;
    // Two replicas: their jobs' results are folded into one record concurrently.
    fleet.spawn_deployer();
    fleet.spawn_deployer();
    fleet
        .request(
            "d1",
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["1", "10%", "100%"]}),
        )
        .await;
    let d = fleet.finished("d1", Duration::from_secs(240)).await;
    assert_eq!(d.status, RolloutStatus::Completed, "{:?}", d.reason);
    assert_eq!(d.wave_ends, vec![1, 30, 300]);
    assert_eq!(d.counts(), (300, 0, 0));
    // Every result counted exactly once: the tallies agree with the entries themselves.
    let results = fleet.results("d1").await;
    assert_eq!(results.len(), 300);
    assert_eq!(
        d.tally.statements,
        results.values().map(|r| r.statements).sum::<u64>()
    );
    let bundle: fleet_protocol::DeployBundle = serde_json::from_value(crm("v1")).unwrap();
    let desired = fleet_schema::desired_schema(&fleet_schema::system::with_system_objects(
        &bundle.object_definitions().unwrap(),
    ))
    .unwrap();
    for tenant in tenants.iter().step_by(37) {
        let tables = fleet.tables(tenant).await;
        for table in CRM_TABLES {
            assert!(tables.contains(&table.to_owned()), "{tenant}: {tables:?}");
        }
        let conn = fleet.connect(tenant).await;
        let live = fleet_schema::introspect(&conn).await.unwrap();
        assert!(
            live.same_definition(&desired),
            "{tenant}: introspection differs from the bundle"
        );
        assert_eq!(
            fleet
                .count(
                    tenant,
                    "SELECT count(*) FROM sys_deployment WHERE deployment_id = 'd1'"
                )
                .await,
            1
        );
        assert_eq!(
            fleet
                .count(
                    tenant,
                    "SELECT count(*) FROM sys_metadata WHERE metadata_type = 'object'"
                )
                .await,
            3,
            "registered"
        );
    }
    assert_eq!(fleet.hooks("hooks.deploy.completed").await.len(), 1);

    // The same bundle again: every tenant is already there.
    fleet
        .request(
            "d2",
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["100%"]}),
        )
        .await;
    let again = fleet.finished("d2", Duration::from_secs(120)).await;
    assert_eq!(again.status, RolloutStatus::Completed);
    assert!(
        fleet.results("d2").await.values().all(|r| r.skipped),
        "re-running a deployed version is a no-op"
    );
}

#[tokio::test]
async fn failures_past_the_ratio_halt_the_rollout_and_leave_the_rest_untouched() {
    let mut fleet = Fleet::start().await;
    let tenants = fleet.provision(20).await;
    // Five tenants whose data conflicts with the bundle: duplicate account names under a unique index.
    for tenant in &tenants[3..8] {
        let conn = fleet_schema::open_local(&fleet.db_file(tenant))
            .await
            .unwrap();
        conn.execute_batch("CREATE TABLE crm_account (id TEXT NOT NULL PRIMARY KEY, name TEXT); INSERT INTO crm_account VALUES ('a', 'x'), ('b', 'x');")
            .await
            .unwrap();
    }
    fleet.spawn_deployer();
    fleet.request("d1", crm("v1"), json!({"all": true}), json!({"waves": ["1", "50%", "100%"], "maxFailureRatio": 0.2, "allowDestructive": true})).await;
    let d = fleet.finished("d1", Duration::from_secs(120)).await;
    assert_eq!(d.status, RolloutStatus::Halted, "{d:?}");
    assert!(d.reason.as_deref().unwrap().contains("failure ratio"));
    let results = fleet.results("d1").await;
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, r)| r.status == DeployStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 5);
    assert!(
        failed
            .iter()
            .all(|(_, r)| r.error.as_deref().unwrap().contains("unique")),
        "{failed:?}"
    );
    // The third wave never started.
    for tenant in &tenants[10..] {
        assert!(!results.contains_key(tenant));
        assert!(
            !fleet
                .tables(tenant)
                .await
                .contains(&"crm_account".to_owned()),
            "{tenant} was touched"
        );
    }
    // The record says halted first; its hook is published right after.
    fleet
        .eventually(Duration::from_secs(30), "the halt's hook", async || {
            fleet.hooks("hooks.deploy.failed").await.len() == 1
        })
        .await;
    assert_eq!(fleet.hooks("hooks.deploy.tenant_failed").await.len(), 5);

    // The operator's commands are messages the deployer carries out: cancel the halted rollout,
    // fix the data, resume it — the failed tenants are retried and the rest of the waves run.
    fleet.control("d1", "cancel").await;
    fleet
        .until_status("d1", RolloutStatus::Cancelled, Duration::from_secs(30))
        .await;
    for tenant in &tenants[3..8] {
        fleet
            .connect(tenant)
            .await
            .execute("DELETE FROM crm_account WHERE id = 'b'", ())
            .await
            .unwrap();
    }
    fleet.control("d1", "resume").await;
    fleet
        .until_status("d1", RolloutStatus::Completed, Duration::from_secs(120))
        .await;
    for tenant in &tenants {
        assert!(
            fleet
                .tables(tenant)
                .await
                .contains(&"crm_account".to_owned()),
            "{tenant}"
        );
    }
    // A command for one deployment on another's subject is refused, not carried out.
    fleet
        .publisher
        .publish_json(
            "deploy.control.other",
            "mismatch",
            &json!({"deploymentId": "d1", "action": "cancel"}),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    fleet
        .eventually(Duration::from_secs(30), "dead-lettered", async || {
            fleet
                .dead_letters()
                .await
                .iter()
                .any(|l| l.contains("subject and payload disagree"))
        })
        .await;
    assert_eq!(
        fleet.deployment("d1").await.unwrap().status,
        RolloutStatus::Completed
    );
}

#[tokio::test]
async fn a_dry_run_plans_every_tenant_and_changes_nothing() {
    let mut fleet = Fleet::start().await;
    let tenants = fleet.provision(6).await;
    fleet.spawn_deployer();
    fleet
        .request(
            "dry",
            crm("v1"),
            json!({"all": true}),
            json!({"dryRun": true, "waves": ["100%"]}),
        )
        .await;
    let d = fleet.finished("dry", Duration::from_secs(60)).await;
    assert_eq!(d.status, RolloutStatus::Completed);
    assert!(d.dry_run);
    let results = fleet.results("dry").await;
    assert!(
        results.len() == tenants.len()
            && results
                .values()
                .all(|r| r.statements == 7 && r.changes == [3, 0, 0]),
        "{results:?}"
    );
    assert_eq!(
        (d.tally.changed, d.tally.changes),
        (tenants.len() as u64, [3 * tenants.len() as u64, 0, 0])
    );
    for tenant in &tenants {
        assert!(
            !fleet
                .tables(tenant)
                .await
                .contains(&"crm_account".to_owned())
        );
    }
}

#[tokio::test]
async fn an_invalid_bundle_is_rejected_before_any_tenant_is_touched() {
    let mut fleet = Fleet::start().await;
    let tenants = fleet.provision(2).await;
    fleet.spawn_deployer();
    let bad = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/invalid.bundle.json"),
        )
        .unwrap(),
    )
    .unwrap();
    fleet
        .request("bad", bad, json!({"all": true}), json!({}))
        .await;
    fleet
        .eventually(Duration::from_secs(30), "rejected", async || {
            fleet.deployment("bad").await.is_some()
        })
        .await;
    let d = fleet.deployment("bad").await.unwrap();
    assert_eq!(d.status, RolloutStatus::Rejected);
    assert!(
        d.reason
            .as_deref()
            .unwrap()
            .contains("objects.project_task.fields.name.type"),
        "{:?}",
        d.reason
    );
    for tenant in &tenants {
        assert!(
            !fleet
                .tables(tenant)
                .await
                .iter()
                .any(|t| t.starts_with("project"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_killed_mid_deployment_resumes_where_it_stopped() {
    let mut fleet = Fleet::start().await;
    fleet.provision(40).await;
    let first = fleet.spawn_deployer();
    fleet
        .request(
            "d1",
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["1", "25%", "100%"]}),
        )
        .await;
    fleet
        .eventually(Duration::from_secs(60), "some results", async || {
            fleet
                .deployment("d1")
                .await
                .is_some_and(|d| d.tally.recorded() >= 5)
        })
        .await;
    fleet.kill_deployer(first);
    fleet.spawn_deployer();
    let d = fleet.finished("d1", Duration::from_secs(120)).await;
    assert_eq!(d.status, RolloutStatus::Completed, "{:?}", d.reason);
    assert_eq!(d.counts(), (40, 0, 0));
    assert_eq!(fleet.hooks("hooks.deploy.completed").await.len(), 1);
    let results = fleet.results("d1").await;
    assert_eq!(results.len(), 40);
    for tenant in results.keys() {
        assert_eq!(
            fleet
                .count(
                    tenant.as_str(),
                    "SELECT count(*) FROM sys_deployment WHERE deployment_id = 'd1'"
                )
                .await,
            1,
            "{tenant} migrated exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_mid_wave_stops_the_jobs_queued_ahead_of_it() {
    let mut fleet = Fleet::start().await;
    let tenants = fleet.provision(40).await;
    // One tenant per job, one job at a time: the one wave is 40 jobs queued in the stream,
    // ahead of any command sent while it runs.
    let env = [
        ("FLEET_WORKER__CONCURRENCY", "1"),
        ("FLEET_DEPLOYER__JOB_TENANTS", "1"),
    ];
    let first = fleet.spawn(env!("CARGO_BIN_EXE_deployer"), &env);
    fleet
        .request(
            "d1",
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["100%"]}),
        )
        .await;
    fleet
        .eventually(Duration::from_secs(60), "a first result", async || {
            !fleet.results("d1").await.is_empty()
        })
        .await;
    // The replica dies mid-wave; the cancel is sent while none runs, so it lands behind every
    // job still queued, and the next replica starts on those jobs.
    fleet.kill_deployer(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = fleet.results("d1").await.len();
    assert!(before < tenants.len(), "the wave ended before the kill");
    fleet.control("d1", "cancel").await;
    let second = fleet.spawn(env!("CARGO_BIN_EXE_deployer"), &env);
    fleet
        .until_status("d1", RolloutStatus::Cancelled, Duration::from_secs(60))
        .await;
    // Every message settles — the queued jobs and the cancel's own delivery — ...
    let stream = fleet.js.get_stream(names::DEPLOY_COMMANDS).await.unwrap();
    fleet
        .eventually(Duration::from_secs(60), "the queue drained", async || {
            stream.get_info().await.unwrap().state.messages == 0
        })
        .await;
    // ... and not one tenant more was deployed: the first job the new replica started found
    // the cancel in the stream and carried it out (in stream order it would have come after
    // every queued job, and all 40 tenants would have been deployed).
    let results = fleet.results("d1").await;
    assert_eq!(
        results.len(),
        before,
        "deployed after the cancel: {:?}",
        results.keys().collect::<Vec<_>>()
    );
    let d = fleet.deployment("d1").await.unwrap();
    assert_eq!(d.status, RolloutStatus::Cancelled);
    assert!(d.control_sequence > 0, "the cancel's sequence is recorded");
    assert!(d.counts().0 <= before as u64, "{d:?}");
    // Its own delivery came later and changed nothing: no dead letter, one end-of-deployment
    // hook.
    assert!(fleet.dead_letters().await.is_empty());
    fleet
        .eventually(Duration::from_secs(30), "the cancel's hook", async || {
            fleet.hooks("hooks.deploy.failed").await.len() == 1
        })
        .await;
    // The databases agree: the tenants with a result, and at most one the killed replica
    // migrated without writing its result.
    let mut migrated = 0;
    for tenant in &tenants {
        if fleet
            .tables(tenant)
            .await
            .contains(&"crm_account".to_owned())
        {
            migrated += 1;
        } else {
            assert!(!results.contains_key(tenant), "{tenant}");
        }
    }
    assert!(
        migrated <= before + 1,
        "{migrated} migrated, {before} results"
    );

    // The command stream is created again, empty (a migration: it numbers from 1 again); a
    // resume sent to it counts, though its sequence is below the cancel's.
    let cancelled_at = d.control_sequence;
    fleet.kill_deployer(second);
    fleet
        .js
        .delete_stream(names::DEPLOY_COMMANDS)
        .await
        .unwrap();
    fleet.spawn_deployer();
    fleet
        .eventually(
            Duration::from_secs(30),
            "the stream created again",
            async || fleet.js.get_stream(names::DEPLOY_COMMANDS).await.is_ok(),
        )
        .await;
    fleet.control("d1", "resume").await;
    let d = fleet
        .until_status("d1", RolloutStatus::Completed, Duration::from_secs(120))
        .await;
    assert_eq!(d.resumes, 1);
    assert!(d.control_sequence < cancelled_at, "{d:?}");
    assert_eq!(fleet.results("d1").await.len(), tenants.len());
}

#[tokio::test]
async fn a_destructive_bundle_is_refused_without_the_flag() {
    let mut fleet = Fleet::start().await;
    fleet.provision(3).await;
    fleet.spawn_deployer();
    fleet
        .request(
            "v1",
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["100%"]}),
        )
        .await;
    assert_eq!(
        fleet.finished("v1", Duration::from_secs(60)).await.status,
        RolloutStatus::Completed
    );
    let mut smaller = crm("v1");
    smaller["manifest"]["version"] = json!("1.1.0");
    smaller["manifest"]["objects"] = json!(["account"]);
    smaller["objects"] = json!([smaller["objects"][0].clone()]);
    fleet
        .request(
            "drop",
            smaller.clone(),
            json!({"all": true}),
            json!({"waves": ["100%"], "maxFailureRatio": 1.0}),
        )
        .await;
    let refused = fleet.finished("drop", Duration::from_secs(60)).await;
    assert_eq!(refused.counts(), (0, 3, 0));
    let results = fleet.results("drop").await;
    assert!(
        results
            .values()
            .all(|r| r.error.as_deref().unwrap().contains("lose data")),
        "{results:?}"
    );
    assert!(
        fleet
            .tables("t-000")
            .await
            .contains(&"crm_contact".to_owned()),
        "nothing dropped"
    );
    fleet
        .request(
            "drop-ok",
            smaller,
            json!({"all": true}),
            json!({"waves": ["100%"], "allowDestructive": true}),
        )
        .await;
    let accepted = fleet.finished("drop-ok", Duration::from_secs(60)).await;
    assert_eq!(
        accepted.status,
        RolloutStatus::Completed,
        "{:?}",
        fleet.results("drop-ok").await
    );
    assert!(
        !fleet
            .tables("t-000")
            .await
            .contains(&"crm_contact".to_owned())
    );
}

#[tokio::test]
async fn a_reversible_deployment_is_rolled_back_to_the_previous_schema() {
    let mut fleet = Fleet::start().await;
    let tenants = fleet.provision(3).await;
    fleet.spawn_deployer();
    fleet
        .request(
            "v1",
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["100%"]}),
        )
        .await;
    assert_eq!(
        fleet.finished("v1", Duration::from_secs(60)).await.status,
        RolloutStatus::Completed
    );
    let before = fleet_schema::introspect(&fleet.connect(&tenants[0]).await)
        .await
        .unwrap();
    fleet
        .connect(&tenants[0])
        .await
        .execute(
            "INSERT INTO crm_account (id, name) VALUES ('a1', 'Acme')",
            (),
        )
        .await
        .unwrap();

    // v1.1 only adds: a nullable field and a new object — a reversible plan.
    let mut next = crm("v1");
    next["manifest"]["version"] = json!("1.1.0");
    next["objects"][0]["fields"]["notes"] = json!({"type": "textarea"});
    next["objects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ticket", "fields": {"title": {"type": "text"}}}));
    fleet
        .request(
            "v11",
            next,
            json!({"all": true}),
            json!({"waves": ["100%"]}),
        )
        .await;
    assert_eq!(
        fleet.finished("v11", Duration::from_secs(60)).await.status,
        RolloutStatus::Completed
    );
    assert!(
        fleet
            .tables(&tenants[0])
            .await
            .contains(&"ticket".to_owned())
    );
    let registry_v11 = "SELECT count(*) FROM sys_metadata WHERE metadata_name = 'ticket' \
                        OR (metadata_type = 'object' AND body LIKE '%\"notes\"%')";
    assert_eq!(
        fleet.count(&tenants[0], registry_v11).await,
        2,
        "v1.1 registered"
    );

    // v1 is no longer the last deployment applied: undoing it would undo v1.1 too (and drop
    // the row above). Refused on every tenant, nothing touched.
    fleet
        .publisher
        .publish_json(
            "deploy.rollback",
            "rb-0",
            &json!({"deploymentId": "v1"}),
            async_nats::HeaderMap::new(),
        )
        .await
        .unwrap();
    fleet
        .until_status("v1", RolloutStatus::RolledBack, Duration::from_secs(60))
        .await;
    let refused = fleet.deployment("v1").await.unwrap();
    assert_eq!(
        (refused.rollback_tally.ready, refused.rollback_tally.failed),
        (0, 3),
        "{refused:?}"
    );
    assert!(fleet.outcomes("v1", true).await.values().all(|r| {
        r.error
            .as_deref()
            .unwrap()
            .contains("applied after this one")
    }),);
    assert_eq!(
        fleet
            .count(&tenants[0], "SELECT count(*) FROM crm_account")
            .await,
        1,
        "nothing undone"
    );

    fleet
        .publisher
        .publish_json(
            "deploy.rollback",
            "rb-1",
            &json!({"deploymentId": "v11"}),
            async_nats::HeaderMap::new(),
        )
        .await
        .unwrap();
    fleet
        .until_status("v11", RolloutStatus::RolledBack, Duration::from_secs(60))
        .await;
    let d = fleet.deployment("v11").await.unwrap();
    let rollbacks = fleet.outcomes("v11", true).await;
    assert!(
        !rollbacks.is_empty() && rollbacks.values().all(|r| r.error.is_none()),
        "{rollbacks:?}"
    );
    assert_eq!(d.rollback_tally.ready, d.rollback_targets);
    let after = fleet_schema::introspect(&fleet.connect(&tenants[0]).await)
        .await
        .unwrap();
    // The previous schema, except the system table's new column (which stays: system schema only grows).
    let without_system = |s: &fleet_schema::Schema| {
        let mut s = s.clone();
        s.tables.retain(|name, _| !name.starts_with("sys_"));
        s
    };
    assert!(
        without_system(&after).same_definition(&without_system(&before)),
        "schema is back to v1"
    );
    assert_eq!(
        fleet
            .count(&tenants[0], "SELECT count(*) FROM crm_account")
            .await,
        1,
        "rows kept"
    );
    assert_eq!(
        fleet
            .count(
                &tenants[0],
                "SELECT count(*) FROM sys_deployment WHERE deployment_id = 'v11'"
            )
            .await,
        0
    );
    // The registry is back to v1's bodies: no ticket, no notes field, every entry v1's.
    assert_eq!(
        fleet.count(&tenants[0], registry_v11).await,
        0,
        "registry restored"
    );
    assert_eq!(
        fleet
            .count(
                &tenants[0],
                "SELECT count(*) FROM sys_metadata WHERE source <> 'deployment:v1' OR version <> '1.0.0'"
            )
            .await,
        0
    );
    let hooks = fleet.hooks("hooks.deploy.rolled_back").await;
    assert_eq!(hooks.len(), 2, "v1's refused rollback, then v11's");
    let v1 = hooks.iter().find(|h| h["subject"] == "v1").unwrap();
    assert_eq!(
        v1["data"]["failures"].as_array().map(Vec::len),
        Some(3),
        "a rollback's hook names the tenants it could not undo: {v1}"
    );
}

#[tokio::test]
async fn a_600_kb_request_is_dead_lettered_with_its_whole_payload_kept() {
    // Too big for a dead letter that copies the payload twice (base64 + text ≈ 2.3×, over the
    // server's 1 MiB max_payload): it used to stay in the work stream for ever, invisible.
    let mut fleet = Fleet::start().await;
    fleet.spawn_deployer();
    let payload = format!(
        "{{\"deploymentId\": \"huge\", \"bundle\": \"{}",
        "x".repeat(600 * 1024)
    );
    fleet
        .publisher
        .publish_bytes(
            "deploy.requested",
            "huge",
            payload.clone().into(),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    fleet
        .eventually(Duration::from_secs(30), "dead-lettered", async || {
            fleet.dead_letters().await.len() == 1
        })
        .await;
    let letter: fleet_runtime::DeadLetter =
        serde_json::from_str(&fleet.dead_letters().await[0]).unwrap();
    assert_eq!(letter.reason, "poison");
    assert!(
        letter.error.contains("payload is not JSON"),
        "{}",
        letter.error
    );
    assert_eq!(letter.payload_bytes, payload.len());
    assert_eq!(
        letter.full_payload(&fleet.js).await.unwrap(),
        payload.as_bytes(),
        "replayable from the object store"
    );
    // Terminated once the handler has seen the letter (after the letter is written).
    fleet
        .eventually(
            Duration::from_secs(30),
            "left the work stream",
            async || {
                let mut stream = fleet.js.get_stream(names::DEPLOY_COMMANDS).await.unwrap();
                stream.info().await.unwrap().state.messages == 0
            },
        )
        .await;
}

#[tokio::test]
async fn a_job_out_of_deliveries_fails_its_tenants_without_a_result_and_the_rollout_ends() {
    let mut fleet = Fleet::start().await;
    let tenants = fleet.provision(20).await;
    // One tenant's database file is no database any more: every attempt at it fails
    // transiently (its schema cannot be read), so its job is retried until it is dead-lettered.
    // Its batch-mates are deployed on the first delivery.
    let broken = &tenants[7];
    std::fs::write(fleet.db_file(broken), vec![0x5a; 8192]).unwrap();
    fleet.spawn_deployer();
    fleet.request_tolerant("d1").await;
    let d = fleet.finished("d1", Duration::from_secs(120)).await;
    assert_eq!(d.counts(), (19, 1, 0), "{d:?}");
    let results = fleet.results("d1").await;
    assert_eq!(results.len(), 20);
    let failed = &results[broken];
    assert_eq!(failed.status, DeployStatus::Failed);
    let error = failed.error.as_deref().unwrap();
    assert!(
        error.contains("dead-lettered (max_deliver)"),
        "the result says why: {error}"
    );
    assert!(
        fleet
            .dead_letters()
            .await
            .iter()
            .any(|l| l.contains(broken.as_str())),
        "the job is in the dead-letter stream"
    );
    for tenant in tenants.iter().filter(|t| *t != broken) {
        assert_eq!(results[tenant].status, DeployStatus::Ready, "{tenant}");
        assert!(
            fleet
                .tables(tenant)
                .await
                .contains(&"crm_account".to_owned())
        );
    }
    fleet
        .eventually(
            Duration::from_secs(30),
            "the failed tenant's hook",
            async || {
                fleet
                    .hooks("hooks.deploy.tenant_failed")
                    .await
                    .iter()
                    .any(|h| h["data"]["tenantId"] == json!(broken))
            },
        )
        .await;
}

#[tokio::test]
async fn a_tenant_that_kills_its_worker_every_time_fails_alone_not_its_batch() {
    let mut fleet = Fleet::start().await;
    let tenants = fleet.provision(12).await;
    // One replica working one job at a time: the wave is one job of all twelve tenants. The
    // worker dies whenever it reaches the fourth (and is started again), so every redelivery
    // stops there — before the eight after it were ever tried.
    let crashing = tenants[3].clone();
    let point = format!("deploy.tenant:{crashing}");
    let env = [
        ("FLEET_WORKER__CONCURRENCY", "1"),
        ("FLEET_CRASH_POINT", point.as_str()),
    ];
    let mut deployer = fleet.spawn(env!("CARGO_BIN_EXE_deployer"), &env);
    fleet.request_tolerant("d1").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let mut restarts = 0;
    let d = loop {
        if let Some(d) = fleet.deployment("d1").await
            && d.status != RolloutStatus::Running
        {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        if fleet
            .wait_exit(deployer, Duration::from_millis(200))
            .await
            .is_some()
        {
            restarts += 1;
            deployer = fleet.spawn(env!("CARGO_BIN_EXE_deployer"), &env);
        }
    };
    assert!(
        restarts >= 2,
        "the worker died at the tenant ({restarts} restarts)"
    );
    let results = fleet.results("d1").await;
    assert_eq!(results.len(), 12);
    let failed = &results[crashing.as_str()];
    assert_eq!(failed.status, DeployStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("dead-lettered (max_deliver)"),
        "{failed:?}"
    );
    // Its batch-mates were split into jobs of their own and deployed — all but, at most, the
    // one job a dying worker had already fetched beside the one it was working on (the job
    // loop pulls one message ahead), which died with it on every crash. Without the split,
    // all eight after it failed with it.
    let collateral = &tenants[4];
    for tenant in tenants
        .iter()
        .filter(|t| **t != crashing && *t != collateral)
    {
        assert_eq!(
            results[tenant].status,
            DeployStatus::Ready,
            "{tenant}: {results:?}"
        );
    }
    assert!(d.counts().0 >= 10, "{d:?}");
}

impl Fleet {
    /// CRM v1 to every tenant in one wave, halting only past half of them failed (the
    /// deployments whose failures these tests make on purpose).
    async fn request_tolerant(&self, id: &str) {
        self.request(
            id,
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["100%"], "maxFailureRatio": 0.5}),
        )
        .await;
    }
}
