//! The provisioner on a NATS server that demands a password over TLS: a worker with the
//! fleet's `[nats.auth]` and `[nats.tls]` provisions a tenant end to end (the client, the
//! hook); one with a wrong password stops at once, saying why and not what it was given; no
//! log holds a password.

use std::time::Duration;

use fleet_client::FleetClient;
use fleet_protocol::contracts::ProvisioningService;
use fleet_protocol::{
    TenantPlan, TenantProvisioningRequest, TenantProvisioningStatus, TenantRegion,
};
use fleet_testkit::NatsServer;
use fleet_testkit::pki::TestPki;

use crate::{Fleet, tenant};

const PASSWORD: &str = "e2e-nats-password-not-for-production";

#[tokio::test]
async fn a_fleet_on_a_server_demanding_a_password_over_tls() {
    let pki = TestPki::new();
    let server = NatsServer::start_with(&format!(
        "authorization {{\n  users = [ {{ user: fleet, password: \"{PASSWORD}\" }} ]\n}}\n{}",
        pki.server_tls_block(false)
    ));
    let mut fleet = Fleet::start_on(
        server,
        &format!(
            "[nats.auth]\nuser = \"fleet\"\npassword = \"{PASSWORD}\"\n[nats.tls]\nca_file = \"{}\"\n",
            pki.ca_file.display()
        ),
    )
    .await;
    let good = fleet.spawn_worker(&[]);
    let wrong = fleet.spawn_worker(&[("FLEET_NATS__AUTH__PASSWORD", "a-wrong-guess")]);

    let client = FleetClient::connect(&fleet.config)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    let result = client
        .provision_tenant(
            &tenant("secure"),
            TenantProvisioningRequest {
                org_id: "org_secure".into(),
                plan: TenantPlan::Pro,
                region: TenantRegion::UsEast,
                display_name: Some("Secure Inc".into()),
                admin_email: Some("ops@secure.example".into()),
                metadata: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(result.status, TenantProvisioningStatus::Active);
    fleet
        .eventually(
            Duration::from_secs(10),
            "hooks.tenant.created",
            async || fleet.hooks("hooks.tenant.created").await.len() == 1,
        )
        .await;

    let status = fleet
        .wait_exit(wrong, Duration::from_secs(20))
        .await
        .expect("the worker with a wrong password stops");
    assert!(!status.success());
    let log = fleet.worker_log(wrong);
    assert!(log.contains("authorization violation"), "{log}");
    assert!(!log.contains("a-wrong-guess"), "{log}");
    let log = fleet.worker_log(good);
    assert!(log.contains("\"started\""), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
}
