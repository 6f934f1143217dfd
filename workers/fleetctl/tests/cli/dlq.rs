//! `fleetctl dlq list|replay` against a real nats-server.

use fleet_testkit::NatsServer;
use predicates::prelude::*;

use crate::fleetctl;

#[tokio::test]
async fn a_dead_letter_is_listed_and_replayed_to_its_original_subject() {
    let server = NatsServer::start();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["streams", "init"])
        .assert()
        .success();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let letter = serde_json::json!({
        "consumer": "provisioner", "reason": "poison", "error": "invalid TenantCreated: orgId: required",
        "subject": "tenant.created", "stream": "FLEET_TENANT_COMMANDS", "sequence": 7,
        "headers": {"Nats-Msg-Id": ["acme"], "X-Request": ["r1"], "Nats-Rollup": ["all"],
                    "Nats-Expected-Last-Sequence": ["1"]},
        "payloadBase64": "eyJ0ZW5hbnRJZCI6ImFjbWUifQ==", "payloadText": "{\"tenantId\":\"acme\"}",
        "attempts": 1, "publishedAt": "2026-11-28T12:00:00Z", "deadLetteredAt": "2026-11-28T12:00:01Z"
    });
    js.publish(
        "dlq.provisioner",
        serde_json::to_vec(&letter).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "list"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("tenant.created")
                .and(predicate::str::contains("orgId: required")),
        );
    // Work already waiting in the stream: a replayed `Nats-Rollup: all` would purge it.
    js.publish(
        "tenant.created",
        r#"{"tenantId":"waiting","orgId":"o"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "replay", "1"])
        .assert()
        .success();
    let mut stream = js.get_stream("FLEET_TENANT_COMMANDS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        2,
        "the waiting command survives the replay"
    );
    let replayed = stream.get_raw_message(2).await.unwrap();
    assert!(
        replayed.headers.get("Nats-Rollup").is_none()
            && replayed
                .headers
                .get("Nats-Expected-Last-Sequence")
                .is_none(),
        "NATS control headers are not replayed"
    );
    assert_eq!(replayed.subject.as_str(), "tenant.created");
    assert_eq!(&replayed.payload[..], br#"{"tenantId":"acme"}"#);
    assert_eq!(
        replayed.headers.get("X-Request").map(|v| v.as_str()),
        Some("r1")
    );
    assert_eq!(
        replayed.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("replay:1:acme")
    );
}
