//! `fleetctl deploy`: requests are checked before they are published.

use async_nats::jetstream;
use fleet_testkit::NatsServer;
use predicates::prelude::*;

use crate::fleetctl;

/// Deploy commands stored; 0 when fleetctl never even connected (the stream does not exist).
async fn deploy_commands(server: &NatsServer) -> u64 {
    let client = async_nats::connect(server.url()).await.unwrap();
    match jetstream::new(client)
        .get_stream("FLEET_DEPLOY_COMMANDS")
        .await
    {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

#[tokio::test]
async fn an_invalid_bundle_is_refused_with_its_issues_and_nothing_is_published() {
    let server = NatsServer::start();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["deploy", "examples/invalid.bundle.json", "--all"])
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "bundle.objects.project_task.fields.name.type",
        ));
    assert_eq!(deploy_commands(&server).await, 0);
}

#[tokio::test]
async fn a_valid_request_is_published_once_with_its_id() {
    let server = NatsServer::start();
    for _ in 0..2 {
        fleetctl()
            .env("FLEET_NATS__URL", server.url())
            .args([
                "deploy",
                "examples/crm-v1.bundle.json",
                "--all",
                "--no-wait",
                "--id",
                "crm-1",
            ])
            .assert()
            .success()
            .stdout("crm-1\n");
    }
    assert_eq!(
        deploy_commands(&server).await,
        1,
        "the duplicate window drops the second request"
    );
}

#[tokio::test]
async fn a_bundle_directory_is_assembled_from_its_files() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("objects")).unwrap();
    std::fs::write(dir.path().join("manifest.json"), r#"{"version": "7"}"#).unwrap();
    std::fs::write(
        dir.path().join("objects/ticket.json"),
        r#"{"name": "ticket", "fields": {"title": {"type": "text"}}}"#,
    )
    .unwrap();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["deploy", "--tenants", "acme", "--no-wait", "--id", "dir-1"])
        .arg(dir.path())
        .assert()
        .success();
    let client = async_nats::connect(server.url()).await.unwrap();
    let stream = jetstream::new(client)
        .get_stream("FLEET_DEPLOY_COMMANDS")
        .await
        .unwrap();
    let message = stream.get_raw_message(1).await.unwrap();
    let request: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(request["bundle"]["manifest"]["version"], "7");
    assert_eq!(request["bundle"]["objects"][0]["name"], "ticket");
    assert_eq!(request["target"]["tenants"], serde_json::json!(["acme"]));
}

#[tokio::test]
async fn a_bundle_path_that_does_not_exist_is_refused_not_deployed_empty() {
    let server = NatsServer::start();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["deploy", "/no/such/bundle.json", "--all", "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no such bundle file or directory"));
    let empty = tempfile::tempdir().unwrap();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["deploy", "--all"])
        .arg(empty.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("manifest.json"));
    assert_eq!(deploy_commands(&server).await, 0);
}

/// A deployment `d1` recorded as running (its first wave of 3 tenants), with no deployer to
/// carry anything out.
async fn running_deployment(fleet: &fleet_testkit::TestFleet) -> fleet_protocol::DeploymentId {
    use fleet_protocol::{DeploymentId, Timestamp};
    use fleet_rollouts::{Deployment, RolloutError, RolloutStatus};

    let runtime = fleet_runtime::Runtime::connect(&fleet.config)
        .await
        .unwrap();
    let deployments = fleet_control::deployments(&runtime).await.unwrap();
    let id = DeploymentId::parse("d1").unwrap();
    let running = Deployment {
        version: "1".into(),
        wave_ends: vec![3],
        targets_attempt: "a1".into(),
        ..Deployment::new(id.clone(), RolloutStatus::Running, Timestamp::now())
    };
    deployments
        .transition::<RolloutError, _>(id.as_str(), |cur| {
            fleet_rollouts::start(cur, &running, &Timestamp::now())
        })
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn resuming_a_running_deployment_answers_at_once_and_sends_nothing() {
    let fleet = fleet_testkit::TestFleet::start("");
    let id = running_deployment(&fleet).await;
    // No deployer runs: a resume that was sent would wait for one (and time out).
    fleetctl()
        .env("FLEET_NATS__URL", fleet.server.url())
        .args(["deploy", "resume", id.as_str()])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .success()
        .stdout(predicate::str::contains("Running"));
    assert_eq!(deploy_commands(&fleet.server).await, 0, "nothing sent");
}

#[tokio::test]
async fn a_resume_behind_a_queued_cancel_is_sent_after_it_not_answered_at_once() {
    use fleet_protocol::{DeployControl, DeployControlAction};

    let fleet = fleet_testkit::TestFleet::start("");
    let id = running_deployment(&fleet).await;
    // A cancel sent and not carried out yet (no deployer runs): the deployment is still
    // running, but the cancel will stop it before a resume sent now is read.
    let cancel = serde_json::to_vec(&DeployControl {
        deployment_id: id.clone(),
        action: DeployControlAction::Cancel,
    })
    .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "test-cancel");
    jetstream::new(async_nats::connect(fleet.server.url()).await.unwrap())
        .publish_with_headers("deploy.control.d1", headers, cancel.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let client = fleet_client::FleetClient::connect(&fleet.config)
        .await
        .unwrap()
        .with_timeout(std::time::Duration::from_secs(2));
    let answer = client
        .control_deployment(&id, DeployControlAction::Resume)
        .await;
    assert!(
        matches!(answer, Err(fleet_client::ClientError::TimedOut { .. })),
        "the resume waits for the deployer, behind the cancel: {answer:?}"
    );
    assert_eq!(
        deploy_commands(&fleet.server).await,
        2,
        "the cancel, then the resume"
    );
    let client = async_nats::connect(fleet.server.url()).await.unwrap();
    let stream = jetstream::new(client)
        .get_stream("FLEET_DEPLOY_COMMANDS")
        .await
        .unwrap();
    let last = stream.get_raw_message(2).await.unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(sent["action"], "resume");
}
