//! One trace per tenant, as an operator sees it in a collector: `tenant.created` carrying the
//! caller's `traceparent` → the provisioner's `job` span → a `provision.step` span per step →
//! `provision.activate` → `hooks.tenant.created`, whose headers carry the same trace on. The
//! real binary exports over OTLP/HTTP to a receiver that records spans.

use std::time::Duration;

use async_nats::HeaderMap;
use fleet_runtime::topology::names;
use fleet_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use serde_json::json;

use crate::Fleet;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_tenant_is_one_trace_from_tenant_created_through_every_step_to_its_hook() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let mut fleet = Fleet::start("").await;
    // Sampling at 0: only a caller's sampled trace is recorded (parent-based), so the tenant
    // registered without one leaves no spans.
    fleet.spawn_worker(&[
        ("FLEET_TELEMETRY__OTLP_ENDPOINT", &endpoint),
        ("FLEET_TELEMETRY__TRACE_SAMPLE_RATIO", "0.0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    fleet.register("globex", "globex", json!({})).await;
    fleet.wait_settled("globex", "active").await;

    let payload = json!({"tenantId": "acme", "orgId": "org_42", "plan": "pro", "region": "eu-west",
                         "displayName": "Acme Inc", "adminEmail": "ops@acme.example"});
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{TRACE}-{CALLER_SPAN}-01").as_str(),
    );
    fleet
        .publisher
        .publish_json("tenant.created", "acme", &payload, headers)
        .await
        .unwrap();
    fleet.wait_settled("acme", "active").await;

    let mut spans: Vec<ReceivedSpan> = Vec::new();
    let complete = fleet_testkit::wait_until(Duration::from_secs(30), async || {
        spans = receiver.spans().await;
        // The job span ends last (after the hook is published and the message acked).
        spans.iter().any(|s| s.name == "provision.activate")
            && spans.iter().any(|s| s.name == "job")
    })
    .await;
    assert!(
        complete,
        "no activation and job spans received: {spans:#?}\n{}",
        fleet.worker_log(0)
    );

    // Everything recorded belongs to the caller's trace.
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "spans outside the caller's trace: {spans:#?}"
    );
    assert!(spans.iter().all(|s| s.service == "provisioner"));
    let job = spans
        .iter()
        .find(|s| s.name == "job" && s.parent_span_id == CALLER_SPAN)
        .unwrap_or_else(|| panic!("no job span under the caller's span: {spans:#?}"));
    assert_eq!(job.attributes["subject"], "tenant.created");
    for step in [
        "create_database",
        "issue_token",
        "store_connection",
        "sync_schema",
        "seed",
    ] {
        let span = spans
            .iter()
            .find(|s| {
                s.name == "provision.step"
                    && s.attributes.get("step").map(String::as_str) == Some(step)
            })
            .unwrap_or_else(|| panic!("no span for step {step}: {spans:#?}"));
        assert_eq!(
            span.parent_span_id, job.span_id,
            "{step} is a child of the job"
        );
        assert_eq!(span.attributes["tenant"], "acme");
    }
    let activate = spans
        .iter()
        .find(|s| s.name == "provision.activate")
        .unwrap();
    assert_eq!(activate.parent_span_id, job.span_id);

    // The hook carries the trace on to whoever consumes it.
    let hook =
        fleet_testkit::stream_messages(&fleet.js, names::HOOKS, Some("hooks.tenant.created"))
            .await
            .into_iter()
            .find(|m| {
                serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["subject"]
                    == "acme"
            })
            .expect("acme's hook");
    let traceparent = hook
        .headers
        .get("traceparent")
        .expect("the hook carries a traceparent")
        .to_string();
    assert!(
        traceparent.starts_with(&format!("00-{TRACE}-")),
        "{traceparent}"
    );
    assert!(fleet.dead_letters().await.is_empty());
}
