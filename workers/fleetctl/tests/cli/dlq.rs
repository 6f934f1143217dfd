//! `fleetctl dlq list|show|replay|purge` against a real nats-server, on hand-written letters (the
//! round trip through a real worker is in `ops.rs`).

use fleet_testkit::NatsServer;
use predicates::prelude::*;
use serde_json::Value;

use crate::fleetctl;

async fn put_letter(js: &async_nats::jetstream::Context, consumer: &str, letter: Value) {
    js.publish(
        format!("dlq.{consumer}"),
        serde_json::to_vec(&letter).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

fn letter(tenant: &str, subject: &str, error: &str) -> Value {
    let payload = format!(r#"{{"tenantId":"{tenant}"}}"#);
    serde_json::json!({
        "consumer": "provisioner", "reason": "poison", "error": error,
        "subject": subject, "stream": "FLEET_TENANT_COMMANDS", "sequence": 7,
        "headers": {"Nats-Msg-Id": [tenant], "X-Request": ["r1"], "Nats-Rollup": ["all"],
                    "Nats-Expected-Last-Sequence": ["1"]},
        "payloadText": payload, "payloadBytes": payload.len(),
        "attempts": 1, "publishedAt": "2026-11-28T12:00:00Z", "deadLetteredAt": "2026-11-28T12:00:01Z"
    })
}

fn list_json(server: &NatsServer, extra: &[&str]) -> Vec<Value> {
    let out = fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "list", "--json"])
        .args(extra)
        .assert()
        .success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}

async fn init(server: &NatsServer) -> async_nats::jetstream::Context {
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["streams", "init"])
        .assert()
        .success();
    let client = async_nats::connect(server.url()).await.unwrap();
    async_nats::jetstream::new(client)
}

#[tokio::test]
async fn a_dead_letter_is_listed_shown_and_replayed_to_its_original_subject_then_removed() {
    let server = NatsServer::start();
    let js = init(&server).await;
    put_letter(
        &js,
        "provisioner",
        letter(
            "acme",
            "tenant.created",
            "invalid TenantCreated: orgId: required",
        ),
    )
    .await;
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "list"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("tenant.created")
                .and(predicate::str::contains("acme"))
                .and(predicate::str::contains("orgId: required"))
                .and(predicate::str::contains("1 dead letter(s)")),
        );
    // The JSON listing's field names are a contract for scripts.
    let listed = list_json(&server, &[]);
    let mut fields: Vec<&str> = listed[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "ageSeconds",
            "attempts",
            "consumer",
            "deadLetteredAt",
            "error",
            "payloadBytes",
            "reason",
            "sequence",
            "subject",
            "tenantId"
        ]
    );
    assert_eq!(listed[0]["tenantId"], "acme");
    assert_eq!(listed[0]["sequence"], 1);
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "show", "1"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("invalid TenantCreated: orgId: required")
                .and(predicate::str::contains("X-Request: r1"))
                .and(predicate::str::contains("\"tenantId\": \"acme\"")),
        );
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "show", "99"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no dead letter 99"));
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
    assert_eq!(
        replayed.headers.get("Fleet-Replay-Of").map(|v| v.as_str()),
        Some("FLEET_DEAD_LETTERS:1"),
        "the replay names the letter it came from"
    );
    assert!(
        list_json(&server, &[]).is_empty(),
        "a replayed letter is removed once its publish was acknowledged"
    );
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "replay", "1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no dead letter 1"));
}

#[tokio::test]
async fn filters_select_letters_and_purge_asks_unless_told_yes() {
    let server = NatsServer::start();
    let js = init(&server).await;
    put_letter(
        &js,
        "provisioner",
        letter("one", "tenant.created", "bad one"),
    )
    .await;
    put_letter(
        &js,
        "provisioner",
        letter("two", "tenant.suspended", "bad two"),
    )
    .await;
    let mut deploy = letter("three", "deploy.requested", "bad three");
    deploy["consumer"] = "deployer".into();
    put_letter(&js, "deployer", deploy).await;

    assert_eq!(list_json(&server, &[]).len(), 3);
    assert_eq!(list_json(&server, &["--consumer", "deployer"]).len(), 1);
    let tenants: Vec<Value> = list_json(&server, &["--subject", "tenant.*"])
        .iter()
        .map(|l| l["tenantId"].clone())
        .collect();
    assert_eq!(tenants, ["one", "two"]);
    assert_eq!(list_json(&server, &["--since", "1h"]).len(), 3);
    let later = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    assert!(
        list_json(&server, &["--since", &later]).is_empty(),
        "nothing was dead-lettered after that time"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mark = chrono::Utc::now().to_rfc3339();
    put_letter(
        &js,
        "provisioner",
        letter("four", "tenant.created", "bad four"),
    )
    .await;
    let recent: Vec<Value> = list_json(&server, &["--since", &mark])
        .iter()
        .map(|l| l["tenantId"].clone())
        .collect();
    assert_eq!(
        recent,
        ["four"],
        "only what was dead-lettered since the mark"
    );
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "list", "--since", "soon"])
        .assert()
        .code(2);

    // Standard input is not a terminal here: no prompt, a usage error, nothing deleted.
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "purge", "--all", "--subject", "tenant.*"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--yes"));
    assert_eq!(list_json(&server, &[]).len(), 4);
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "purge", "1", "--all"])
        .assert()
        .code(2);
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "purge", "--all", "--subject", "tenant.*", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("purged 3 dead letter(s)"));
    let left = list_json(&server, &[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["consumer"], "deployer");
}

#[tokio::test]
async fn hostile_letters_and_filters_are_handled_as_input_not_as_crashes_or_forged_rows() {
    let server = NatsServer::start();
    let js = init(&server).await;
    // A tenant id that would clear the screen and forge a table row if printed raw.
    put_letter(
        &js,
        "provisioner",
        letter(
            "x\u{1b}[2J\nFAKE 99 row",
            "tenant.created",
            "bad\u{1b}[31m red",
        ),
    )
    .await;
    // Not a dead letter at all, on a dead-letter subject.
    js.publish("dlq.provisioner", "garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let out = fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "list"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(!text.contains('\u{1b}'), "no raw escape sequence: {text:?}");
    assert!(
        !text.lines().any(|l| l.starts_with("FAKE")),
        "no forged row: {text}"
    );
    assert!(text.contains("not a dead letter"), "{text}");
    assert!(text.contains("2 dead letter(s)"), "{text}");
    // `show --json` keeps the letter's own fields (its sequence is the original stream's).
    let out = fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "show", "1", "--json"])
        .assert()
        .success();
    let shown: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(shown["sequence"], 1);
    assert_eq!(shown["letter"]["sequence"], 7);
    // The same sequence twice is one replay.
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "replay", "1", "1"])
        .assert()
        .success();
    // The unreadable one can still be purged.
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["dlq", "purge", "--all", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("purged 1 dead letter(s)"));
    for args in [
        &["dlq", "list", "--since", "999999999d"][..],
        &["dlq", "list", "--consumer", "a b"],
        &["dlq", "list", "--subject", "foo.>.bar"],
        &["hooks", "--subject", "a b"],
        &["hooks", "--since", "99999999999999999s"],
    ] {
        fleetctl()
            .env("FLEET_NATS__URL", server.url())
            .args(args)
            .assert()
            .code(2);
    }
    // Input errors are exit 2 with no server too: checked before connecting.
    for args in [
        &["tenant", "status", "BAD ID!"][..],
        &["deploy", "/no/such/bundle.json", "--all"],
        &["dlq", "replay", "1", "--all"],
    ] {
        fleetctl()
            .env("FLEET_NATS__URL", "nats://127.0.0.1:1")
            .env("FLEET_NATS__CONNECT_TIMEOUT_MS", "300")
            .args(args)
            .assert()
            .code(2);
    }
}
