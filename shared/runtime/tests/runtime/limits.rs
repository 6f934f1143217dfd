//! Bounded inputs and bounded dead letters: oversized commands refused at the boundary,
//! per-subject limits, dead letters that always fit their stream (the whole payload kept in
//! the object store), and consumer settings that are what the configuration says.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use fleet_runtime::topology::{COMMAND_MAX_BYTES, names};
use fleet_runtime::{DeadLetter, Delivery, Handler, Outcome};

use crate::Env;

/// Refuses everything (as a handler does with input it cannot decode); counts its calls.
#[derive(Default)]
struct Refuser {
    handled: Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for Refuser {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        self.handled.lock().unwrap().push(delivery.subject.clone());
        Outcome::Poison {
            reason: "not a deploy bundle".into(),
        }
    }
}

async fn dead_letters(env: &Env) -> Vec<DeadLetter> {
    fleet_testkit::stream_messages(&env.js, names::DEAD_LETTERS, None)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

async fn publish(env: &Env, subject: &str, id: &str, payload: Vec<u8>) {
    env.publisher
        .publish_bytes(subject, id, payload.into(), HeaderMap::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_message_too_big_to_copy_is_dead_lettered_with_its_whole_payload_kept() {
    let env = Env::start().await;
    let handler = Arc::new(Refuser::default());
    // 600 KB of text: as base64 + text (the old letter) ~1.4 MB, over the 1 MiB max_payload.
    let text = format!(
        "{{\"bundle\": \"{}\"}}",
        "é∑x".repeat(600 * 1024 / 6) // multi-byte characters: the preview cut must respect them
    );
    let binary: Vec<u8> = (0..600 * 1024).map(|i| (i % 251) as u8 | 0x80).collect();
    publish(
        &env,
        "deploy.requested",
        "big-text",
        text.clone().into_bytes(),
    )
    .await;
    publish(&env, "deploy.requested", "big-binary", binary.clone()).await;
    let (stop, task) = env.run_on(names::DEPLOYER, handler.clone(), 2);
    env.eventually(Duration::from_secs(20), "both dead-lettered", async || {
        env.count(names::DEAD_LETTERS).await == 2 && env.count(names::DEPLOY_COMMANDS).await == 0
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let letters = dead_letters(&env).await;
    for letter in &letters {
        assert_eq!(letter.reason, "poison");
        assert!(!letter.payload_complete);
        assert!(letter.payload().is_none(), "not whole inline");
        let object = letter
            .payload_object
            .as_deref()
            .expect("kept in the object store");
        assert!(
            object.starts_with("fleet_dead_letter_payloads/"),
            "{object}"
        );
        let whole = letter.full_payload(&env.js).await.unwrap();
        let original = if letter.headers["Nats-Msg-Id"] == ["big-text"] {
            assert!(letter.payload_text.as_ref().unwrap().len() <= 4096);
            assert!(text.starts_with(letter.payload_text.as_deref().unwrap()));
            text.as_bytes().to_vec()
        } else {
            assert!(letter.payload_base64.is_some() && letter.payload_text.is_none());
            binary.clone()
        };
        assert_eq!(letter.payload_bytes, original.len());
        assert_eq!(whole, original, "the whole payload comes back for replay");
    }
}

#[tokio::test]
async fn the_rest_of_a_large_payload_is_reported_dropped_when_it_cannot_be_kept() {
    let env = Env::start().await;
    // The object store is gone (deleted by an operator): the letter still gets written, with a
    // preview and the reason the rest is missing.
    env.js
        .delete_object_store(&env.topology.dead_letter_payloads)
        .await
        .unwrap();
    let handler = Arc::new(Refuser::default());
    publish(&env, "deploy.requested", "big", vec![b'x'; 200 * 1024]).await;
    let (stop, task) = env.run_on(names::DEPLOYER, handler, 1);
    env.eventually(Duration::from_secs(20), "dead-lettered", async || {
        env.count(names::DEAD_LETTERS).await == 1 && env.count(names::DEPLOY_COMMANDS).await == 0
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let letter = &dead_letters(&env).await[0];
    assert!(letter.payload_object.is_none());
    assert!(letter.payload_dropped.is_some());
    let why = letter.full_payload(&env.js).await.unwrap_err().to_string();
    assert!(why.contains("204800-byte payload"), "{why}");
}

#[tokio::test]
async fn oversized_tenant_commands_are_refused_when_published() {
    let env = Env::start().await;
    let payload = format!(
        "{{\"tenantId\": \"acme\", \"orgId\": \"o\", \"displayName\": \"{}\"}}",
        "x".repeat(600 * 1024)
    );
    let err = env
        .publisher
        .publish_bytes("tenant.created", "acme", payload.into(), HeaderMap::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("maximum"),
        "the server says why: {err}"
    );
    assert_eq!(env.count(names::TENANT_COMMANDS).await, 0);
}

#[tokio::test]
async fn a_payload_over_its_subject_limit_is_poison_before_the_handler_runs() {
    let env = Env::start().await;
    let handler = Arc::new(Refuser::default());
    publish(
        &env,
        "deploy.tenant.d1",
        "job",
        vec![b' '; COMMAND_MAX_BYTES + 1],
    )
    .await;
    let (stop, task) = env.run_on(names::DEPLOYER, handler.clone(), 1);
    env.eventually(Duration::from_secs(10), "dead-lettered", async || {
        env.count(names::DEAD_LETTERS).await == 1
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert!(handler.handled.lock().unwrap().is_empty(), "never decoded");
    let letter = &dead_letters(&env).await[0];
    assert_eq!(
        letter.error,
        format!(
            "payload of {} bytes is over the {COMMAND_MAX_BYTES}-byte limit of deploy.tenant.>",
            COMMAND_MAX_BYTES + 1
        )
    );
    assert_eq!(
        letter.full_payload(&env.js).await.unwrap().len(),
        COMMAND_MAX_BYTES + 1,
        "kept for inspection"
    );
}

#[tokio::test]
async fn consumers_report_the_configured_settings() {
    let env = Env::start().await;
    for spec in &env.topology.consumers {
        let stream = env.js.get_stream(&spec.stream).await.unwrap();
        let info = stream.consumer_info(&spec.durable).await.unwrap();
        let config = &info.config;
        assert_eq!(config.ack_wait, Duration::from_secs(1), "{}", spec.durable);
        assert!(config.backoff.is_empty(), "{}: no backoff", spec.durable);
        assert_eq!(config.max_deliver, 3);
        assert_eq!(config.max_ack_pending, spec.max_ack_pending);
        assert_eq!(config.filter_subject, spec.filter);
    }
    let mut tenants = env.js.get_stream(names::TENANT_COMMANDS).await.unwrap();
    let info = tenants.info().await.unwrap();
    assert!(info.config.allow_message_schedules);
    assert_eq!(info.config.max_message_size, COMMAND_MAX_BYTES as i32);
}
