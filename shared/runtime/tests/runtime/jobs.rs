//! The job loop: duplicates, poison, retries, max_deliver, shutdown, server restart, tracing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use fleet_protocol::TenantProvisioningRequest;
use fleet_runtime::topology::names;
use fleet_runtime::{DeadLetter, Delivery, Handler, Outcome};
use futures::StreamExt;
use serde_json::json;

use crate::Env;

/// Records what it handles; fails the first `fail_first` deliveries of each message.
#[derive(Default)]
struct Recorder {
    fail_first: u64,
    always_retry: bool,
    delay: Duration,
    seen: Mutex<BTreeMap<String, Vec<u64>>>,
    done: Mutex<Vec<String>>,
    /// (Nats-Msg-Id, reason) of every message the runtime reported dead-lettered.
    dead: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let request = match delivery.decode::<TenantProvisioningRequest>() {
            Ok(request) => request,
            Err(poison) => return poison,
        };
        self.seen
            .lock()
            .unwrap()
            .entry(request.org_id.clone())
            .or_default()
            .push(delivery.attempt);
        tokio::time::sleep(self.delay).await;
        if self.always_retry || delivery.attempt <= self.fail_first {
            return Outcome::retry(Duration::from_millis(100), "backend unavailable");
        }
        self.done.lock().unwrap().push(request.org_id);
        Outcome::Done
    }

    async fn dead_lettered(&self, delivery: &Delivery, letter: &DeadLetter) {
        let id = delivery
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert_eq!(delivery.sequence, letter.sequence);
        self.dead.lock().unwrap().push((id, letter.reason.clone()));
    }
}

async fn publish(env: &Env, id: &str, payload: serde_json::Value) -> fleet_runtime::Published {
    env.publisher
        .publish_json("tenant.created", id, &payload, HeaderMap::new())
        .await
        .unwrap()
}

async fn dead_letters(env: &Env) -> Vec<DeadLetter> {
    let messages = fleet_testkit::stream_messages(&env.js, names::DEAD_LETTERS, None).await;
    messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

#[tokio::test]
async fn a_duplicate_publish_is_dropped() {
    let env = Env::start().await;
    let first = publish(&env, "acme", json!({"orgId": "o1"})).await;
    let again = publish(&env, "acme", json!({"orgId": "o1"})).await;
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(env.count(names::TENANT_COMMANDS).await, 1);
}

#[tokio::test]
async fn poison_goes_to_the_dead_letters_with_its_reason_and_nothing_else_is_lost() {
    let env = Env::start().await;
    let handler = Arc::new(Recorder::default());
    for i in 0..5 {
        publish(
            &env,
            &format!("ok-{i}"),
            json!({"orgId": format!("org{i}")}),
        )
        .await;
    }
    publish(&env, "bad", json!({"orgId": "", "plan": "gold"})).await;
    publish(&env, "not-json", json!("just a string")).await;
    let (stop, task) = env.run(handler.clone(), 4);
    env.eventually(Duration::from_secs(10), "all settled", async || {
        env.count(names::TENANT_COMMANDS).await == 0
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(handler.done.lock().unwrap().len(), 5);
    let letters = dead_letters(&env).await;
    assert_eq!(letters.len(), 2);
    let bad = letters
        .iter()
        .find(|l| {
            l.payload_text
                .as_deref()
                .is_some_and(|t| t.contains("gold"))
        })
        .unwrap();
    assert_eq!(bad.reason, "poison");
    assert!(
        bad.error.contains("orgId") && bad.error.contains("plan"),
        "{}",
        bad.error
    );
    assert_eq!(bad.subject, "tenant.created");
    assert_eq!(
        bad.headers.get("Nats-Msg-Id").cloned(),
        Some(vec!["bad".to_owned()])
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bad.payload().unwrap()).unwrap()["plan"],
        "gold"
    );
    let mut dead = handler.dead.lock().unwrap().clone();
    dead.sort();
    assert_eq!(
        dead,
        [
            ("bad".to_owned(), "poison".to_owned()),
            ("not-json".to_owned(), "poison".to_owned())
        ],
        "the handler hears of each dead letter"
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_then_succeeds() {
    let env = Env::start().await;
    let handler = Arc::new(Recorder {
        fail_first: 2,
        ..Recorder::default()
    });
    publish(&env, "acme", json!({"orgId": "acme"})).await;
    let (stop, task) = env.run(handler.clone(), 2);
    env.eventually(Duration::from_secs(10), "done", async || {
        handler.done.lock().unwrap().len() == 1
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(handler.seen.lock().unwrap()["acme"], vec![1, 2, 3]);
    assert_eq!(env.count(names::DEAD_LETTERS).await, 0);
    assert_eq!(env.count(names::TENANT_COMMANDS).await, 0);
}

#[tokio::test]
async fn exhausting_max_deliver_dead_letters_the_message() {
    let env = Env::start().await;
    let handler = Arc::new(Recorder {
        always_retry: true,
        ..Recorder::default()
    });
    publish(&env, "acme", json!({"orgId": "acme"})).await;
    let (stop, task) = env.run(handler.clone(), 2);
    env.eventually(Duration::from_secs(10), "dead-lettered", async || {
        env.count(names::DEAD_LETTERS).await == 1
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let letter = &dead_letters(&env).await[0];
    assert_eq!(
        (letter.reason.as_str(), letter.attempts),
        ("max_deliver", 3)
    );
    assert!(letter.error.contains("backend unavailable"));
    assert_eq!(
        env.count(names::TENANT_COMMANDS).await,
        0,
        "the message left the work stream"
    );
}

#[tokio::test]
async fn shutdown_with_work_in_flight_loses_nothing() {
    let env = Env::start().await;
    let handler = Arc::new(Recorder {
        delay: Duration::from_millis(300),
        ..Recorder::default()
    });
    for i in 0..12 {
        publish(&env, &format!("t{i}"), json!({"orgId": format!("org{i}")})).await;
    }
    let (stop, task) = env.run(handler.clone(), 4);
    env.eventually(Duration::from_secs(10), "work started", async || {
        !handler.seen.lock().unwrap().is_empty()
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let started: usize = handler.seen.lock().unwrap().len();
    assert_eq!(
        handler.done.lock().unwrap().len(),
        started,
        "every started job finished before the loop returned"
    );
    // What is left is still in the stream; a new worker finishes it.
    let (stop, task) = env.run(handler.clone(), 4);
    env.eventually(Duration::from_secs(15), "all done", async || {
        env.count(names::TENANT_COMMANDS).await == 0
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let mut done = handler.done.lock().unwrap().clone();
    done.sort();
    done.dedup();
    assert_eq!(done.len(), 12);
}

#[tokio::test]
async fn a_server_restart_mid_run_reconnects_and_continues() {
    let mut env = Env::start().await;
    let handler = Arc::new(Recorder::default());
    let (stop, task) = env.run(handler.clone(), 2);
    for i in 0..3 {
        publish(&env, &format!("a{i}"), json!({"orgId": format!("a{i}")})).await;
    }
    env.eventually(Duration::from_secs(10), "first batch", async || {
        handler.done.lock().unwrap().len() == 3
    })
    .await;
    env.server.restart();
    env.eventually(Duration::from_secs(15), "reconnected", async || {
        env.client.connection_state() == async_nats::connection::State::Connected
    })
    .await;
    for i in 0..3 {
        // The first publish after a restart may race the reconnect: retry like any producer.
        let mut published = false;
        for _ in 0..50 {
            if env
                .publisher
                .publish_json(
                    "tenant.created",
                    &format!("b{i}"),
                    &json!({"orgId": format!("b{i}")}),
                    HeaderMap::new(),
                )
                .await
                .is_ok()
            {
                published = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(published);
    }
    env.eventually(Duration::from_secs(20), "second batch", async || {
        handler.done.lock().unwrap().len() == 6
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// Records the trace id of the span it runs in.
#[derive(Default)]
struct TraceRecorder {
    trace_ids: Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for TraceRecorder {
    async fn handle(&self, _delivery: Delivery) -> Outcome {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let id = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .trace_id()
            .to_string();
        self.trace_ids.lock().unwrap().push(id);
        Outcome::Done
    }
}

#[tokio::test]
async fn trace_context_survives_a_hop() {
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = fleet_runtime::telemetry::tracer_provider("test", "", 1.0).unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = Env::start().await;
    let handler = Arc::new(TraceRecorder::default());
    let span = tracing::info_span!("registration");
    let sent = {
        let _entered = span.enter();
        span.context().span().span_context().trace_id().to_string()
    };
    {
        use tracing::Instrument;
        publish(&env, "acme", json!({"orgId": "acme"}))
            .instrument(span.clone())
            .await;
    }
    let (stop, task) = env.run(handler.clone(), 1);
    env.eventually(Duration::from_secs(10), "handled", async || {
        !handler.trace_ids.lock().unwrap().is_empty()
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_ne!(sent, "00000000000000000000000000000000");
    assert_eq!(
        handler.trace_ids.lock().unwrap()[0],
        sent,
        "the handler runs in the publisher's trace"
    );
    let _ = env
        .client
        .subscribe("noop")
        .await
        .map(|mut s| async move { s.next().await });
}

#[tokio::test]
async fn messages_no_worker_settles_are_dead_lettered_at_max_deliver() {
    let env = Env::start().await;
    publish(&env, "acme", json!({"orgId": "acme"})).await;
    // Crashed workers: three deliveries taken and never settled.
    let stream = env.js.get_stream(names::TENANT_COMMANDS).await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(names::PROVISIONER).await.unwrap();
    // The advisory watcher runs with the loop; the loop itself gets a handler that never runs.
    let handler = Arc::new(Recorder::default());
    let (stop, task) = {
        // Take the deliveries away from the loop by holding them in this "crashed" consumer first.
        let mut taken = 0;
        while taken < 3 {
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(3))
                .messages()
                .await
                .unwrap();
            if let Some(Ok(message)) = batch.next().await {
                drop(message); // no ack: the worker "crashed"
                taken += 1;
            }
        }
        env.run(handler.clone(), 1)
    };
    env.eventually(Duration::from_secs(15), "dead-lettered", async || {
        env.count(names::DEAD_LETTERS).await == 1
    })
    .await;
    env.eventually(
        Duration::from_secs(5),
        "removed from the work stream",
        async || env.count(names::TENANT_COMMANDS).await == 0,
    )
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let letter = &dead_letters(&env).await[0];
    assert_eq!(
        (letter.reason.as_str(), letter.attempts),
        ("max_deliver", 3)
    );
    assert_eq!(letter.payload_text.as_deref(), Some(r#"{"orgId":"acme"}"#));
    assert!(handler.done.lock().unwrap().is_empty());
    assert_eq!(
        *handler.dead.lock().unwrap(),
        [("acme".to_owned(), "max_deliver".to_owned())],
        "the handler hears of a message no worker settled"
    );
}
