//! `fleet-client`'s `DeployPipelineService` against a real nats-server and the real deployer
//! binary: validate, plan (a one-tenant dry run: nothing changes), execute that plan, a plan the
//! client never made, and roll back.

use std::time::Duration;

use fleet_client::FleetClient;
use fleet_protocol::contracts::{ContractError, DeployPipelineService};
use fleet_protocol::{DeployBundle, DeployStatus, TenantId};

use crate::{Fleet, crm};

fn bundle(version: &str) -> DeployBundle {
    serde_json::from_value(crm(version)).unwrap()
}

#[tokio::test]
async fn deploys_through_the_client_plan_execute_and_roll_back_one_tenant() {
    let mut fleet = Fleet::start().await;
    fleet.spawn_deployer();
    let ids = fleet.provision(2).await;
    let client = FleetClient::connect(&fleet.config)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(60));
    let (t0, t1) = (
        TenantId::parse(ids[0].as_str()).unwrap(),
        TenantId::parse(ids[1].as_str()).unwrap(),
    );

    // Validation, as the deployer validates: a lookup to no object is an issue with its path.
    let valid = client.validate_bundle(&bundle("v1"));
    assert!(valid.valid, "{valid:?}");
    let mut broken = bundle("v1");
    broken.objects[0].insert(
        "fields".into(),
        serde_json::json!({"owner": {"type": "lookup", "reference": "nowhere"}}),
    );
    let result = client.validate_bundle(&broken);
    assert!(!result.valid, "{result:?}");
    assert!(
        result
            .issues
            .iter()
            .any(|i| i.message.contains("nowhere") && !i.path.is_empty()),
        "{result:?}"
    );

    // A plan is a dry run: the statements, nothing applied.
    let plan = client.plan_deployment(&t0, &bundle("v1")).await.unwrap();
    assert!(!plan.statements.is_empty());
    assert!(
        !fleet
            .tables(&ids[0])
            .await
            .iter()
            .any(|t| t.starts_with("crm_")),
        "planning changes nothing"
    );

    let done = client.execute_deployment(&t0, &plan).await.unwrap();
    assert_eq!(done.status, DeployStatus::Ready, "{done:?}");
    assert_eq!(done.statements_executed, plan.statements.len() as u64);
    assert!(
        fleet
            .tables(&ids[0])
            .await
            .iter()
            .any(|t| t == "crm_account")
    );
    assert!(
        !fleet
            .tables(&ids[1])
            .await
            .iter()
            .any(|t| t.starts_with("crm_")),
        "the other tenant is untouched"
    );

    // A plan this client did not make cannot be executed (the fleet deploys bundles).
    let mut foreign = plan.clone();
    foreign.statements.truncate(1);
    assert!(matches!(
        client.execute_deployment(&t1, &foreign).await,
        Err(ContractError::NotFound { kind: "plan", .. })
    ));

    client
        .rollback_deployment(&t0, &done.deployment_id)
        .await
        .unwrap();
    assert!(
        !fleet
            .tables(&ids[0])
            .await
            .iter()
            .any(|t| t.starts_with("crm_")),
        "rolled back"
    );
    // Unknown deployments and tenants are named as such.
    assert!(matches!(
        client.rollback_deployment(&t0, "no-such-deployment").await,
        Err(ContractError::NotFound { .. })
    ));
    assert!(matches!(
        client
            .plan_deployment(&TenantId::parse("nobody").unwrap(), &bundle("v1"))
            .await,
        Err(ContractError::IllegalState(_))
    ));
    assert!(fleet.dead_letters().await.is_empty());
}
