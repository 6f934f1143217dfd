//! `fleet-client`'s `ProvisioningService` against a real nats-server and the real provisioner:
//! provision → active, a duplicate call → the same tenant once, invalid input → its issues, a
//! conflicting registration, a timeout when no worker runs, and the lifecycle round trip.

use std::time::Duration;

use fleet_client::{ClientError, FleetClient};
use fleet_protocol::contracts::{ContractError, ProvisioningService};
use fleet_protocol::{
    TenantPlan, TenantProvisioningRequest, TenantProvisioningStatus, TenantRegion,
};

use crate::{Fleet, IMMEDIATE_DELETE, tenant};

fn request(org: &str) -> TenantProvisioningRequest {
    TenantProvisioningRequest {
        org_id: org.to_owned(),
        plan: TenantPlan::Pro,
        region: TenantRegion::UsEast,
        display_name: Some("Acme Inc".into()),
        admin_email: Some("ops@acme.example".into()),
        metadata: None,
    }
}

async fn client(fleet: &Fleet, timeout: Duration) -> FleetClient {
    FleetClient::connect(&fleet.config)
        .await
        .unwrap()
        .with_timeout(timeout)
}

#[tokio::test]
async fn provisioning_through_the_client_answers_active_once_and_refuses_bad_input() {
    let mut fleet = Fleet::start("").await;
    fleet.spawn_worker(&[]);
    let client = client(&fleet, Duration::from_secs(30)).await;

    let result = client
        .provision_tenant(&tenant("acme"), request("org_1"))
        .await
        .unwrap();
    assert_eq!(result.status, TenantProvisioningStatus::Active);
    assert!(
        result.connection_url.contains("acme"),
        "{}",
        result.connection_url
    );
    // A duplicate call answers from the record: the same tenant, provisioned once.
    let again = client
        .provision_tenant(&tenant("acme"), request("org_1"))
        .await
        .unwrap();
    assert_eq!(again.connection_url, result.connection_url);
    // The hook is published just after the record turns active: wait for it, then count.
    fleet
        .eventually(
            Duration::from_secs(10),
            "hooks.tenant.created",
            async || !fleet.hooks("hooks.tenant.created").await.is_empty(),
        )
        .await;
    assert_eq!(fleet.hooks("hooks.tenant.created").await.len(), 1);
    assert_eq!(
        client.get_tenant_status(&tenant("acme")).await.unwrap(),
        TenantProvisioningStatus::Active
    );

    // Invalid input: every issue with its path, nothing sent.
    let mut bad = request("org_1");
    bad.display_name = Some("x".repeat(300));
    match client.provision_tenant(&tenant("bad"), bad).await {
        Err(ContractError::Invalid(rejected)) => {
            assert!(rejected.to_string().contains("displayName"), "{rejected}")
        }
        other => panic!("expected the validation issues, got {other:?}"),
    }
    assert!(fleet.record("bad").await.is_none());

    // The same id with another request: a conflict, refused before anything is sent.
    match client
        .provision_tenant(&tenant("acme"), request("org_2"))
        .await
    {
        Err(ContractError::AlreadyExists { name, .. }) => assert_eq!(name, "acme"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    match client.get_tenant_status(&tenant("nobody")).await {
        Err(ContractError::NotFound { .. }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

#[tokio::test]
async fn with_no_provisioner_running_a_call_times_out_naming_the_worker() {
    let fleet = Fleet::start("").await;
    let client = client(&fleet, Duration::from_millis(800)).await;
    // Fire and forget needs no worker: it is published.
    client
        .register(&tenant("late"), &request("org_1"))
        .await
        .unwrap();
    match ProvisioningService::provision_tenant(&client, &tenant("late2"), request("org_1")).await {
        Err(ContractError::Unavailable(why)) => {
            assert!(why.contains("provisioner"), "{why}");
            assert!(why.contains("may still complete"), "{why}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn suspend_resume_plan_change_and_deletion_wait_for_the_fleet() {
    let mut fleet = Fleet::start(IMMEDIATE_DELETE).await;
    fleet.spawn_worker(&[]);
    let client = client(&fleet, Duration::from_secs(30)).await;
    let acme = tenant("acme");
    client
        .provision_tenant(&acme, request("org_1"))
        .await
        .unwrap();

    client
        .suspend(&acme, Some("unpaid invoice".into()))
        .await
        .unwrap();
    assert_eq!(fleet.status("acme").await, "suspended");
    // Suspending a suspended tenant is already done.
    client.suspend_tenant(&acme).await.unwrap();
    client.resume_tenant(&acme).await.unwrap();
    assert_eq!(fleet.status("acme").await, "active");
    match client.resume_tenant(&acme).await {
        Ok(()) => {}
        other => panic!("resuming an active tenant is already done: {other:?}"),
    }
    client
        .migrate_tenant_plan(&acme, TenantPlan::Enterprise)
        .await
        .unwrap();
    assert_eq!(
        fleet.record("acme").await.unwrap().plan,
        TenantPlan::Enterprise
    );
    client.destroy_tenant(&acme).await.unwrap();
    let status = fleet.status("acme").await;
    assert!(status == "deleted" || status == "destroying", "{status}");
    // Nothing to resume once deleted: refused with the state, nothing sent.
    match client.resume_tenant(&acme).await {
        Err(ContractError::IllegalState(why)) => assert!(why.contains("acme"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match client.suspend(&tenant("nobody"), None).await {
        Err(ClientError::NotFound { .. }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}
