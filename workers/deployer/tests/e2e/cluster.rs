//! A three-node JetStream cluster on loopback, streams and buckets with three replicas: the
//! fleet provisions and deploys through it while the node it is connected to is killed, and
//! carries on after it comes back — nothing lost (every tenant active, every tenant deployed),
//! nothing duplicated (one `hooks.tenant.created` per tenant), no dead letter.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use fleet_deployer::rollout::RolloutStatus;
use serde_json::json;

use crate::{Fleet, crm};

#[tokio::test]
async fn the_fleet_carries_on_through_a_node_failover() {
    let mut fleet = Fleet::start_clustered().await;
    fleet.spawn_deployer();
    fleet.spawn_deployer();
    let first = fleet.provision(40).await;
    fleet
        .request(
            "c1",
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["1", "50%", "100%"]}),
        )
        .await;
    // Node 1 — every client's first URL — dies in the middle of the deployment; more tenants
    // register while it is down (a caller retries its publish under the same message id).
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.server.stop();
    let late: Vec<String> = (0..20).map(|i| format!("late-{i:03}")).collect();
    for id in &late {
        let payload = json!({"tenantId": id, "orgId": "org", "plan": "enterprise"});
        let mut sent = false;
        for _ in 0..50 {
            if fleet
                .publisher
                .publish_json("tenant.created", id, &payload, HeaderMap::new())
                .await
                .is_ok()
            {
                sent = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            sent,
            "tenant.created of {id} was not accepted by the cluster"
        );
    }
    let d = fleet.finished("c1", Duration::from_secs(180)).await;
    assert_eq!(
        d.status,
        RolloutStatus::Completed,
        "{:?} {:?}",
        d.reason,
        d.tally
    );
    assert_eq!(d.tally.ready, first.len() as u64);
    // The node comes back and catches up; the fleet goes on.
    fleet.server.restart();
    fleet
        .eventually(
            Duration::from_secs(180),
            "the late tenants active",
            async || {
                let mut active = 0;
                for id in &late {
                    if fleet
                        .tenants
                        .get::<std::convert::Infallible>(id)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|r| {
                            r.state.status() == fleet_protocol::TenantProvisioningStatus::Active
                        })
                    {
                        active += 1;
                    }
                }
                active == late.len()
            },
        )
        .await;
    fleet
        .request(
            "c2",
            crm("v1"),
            json!({"all": true}),
            json!({"waves": ["100%"]}),
        )
        .await;
    let d = fleet.finished("c2", Duration::from_secs(180)).await;
    assert_eq!(
        d.status,
        RolloutStatus::Completed,
        "{:?} {:?}",
        d.reason,
        d.tally
    );
    assert_eq!(d.tally.recorded(), (first.len() + late.len()) as u64);
    assert_eq!(
        d.tally.skipped,
        first.len() as u64,
        "the first 40 were at v1 already"
    );
    for id in late.iter().chain(&first) {
        assert!(
            fleet.tables(id).await.iter().any(|t| t == "crm_account"),
            "{id}"
        );
    }
    // Exactly one creation hook per tenant, and nothing dead-lettered.
    let mut hooks: BTreeMap<String, usize> = BTreeMap::new();
    fleet
        .eventually(Duration::from_secs(30), "one hook per tenant", async || {
            hooks.clear();
            for hook in fleet.hooks("hooks.tenant.created").await {
                *hooks
                    .entry(hook["subject"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
            hooks.len() == first.len() + late.len()
        })
        .await;
    assert!(hooks.values().all(|n| *n == 1), "{hooks:?}");
    let letters = fleet.dead_letters().await;
    assert!(letters.is_empty(), "{letters:#?}");
}
