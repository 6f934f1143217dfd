//! The registration service end to end: a real nats-server, the real provisioner binary (built
//! beside this test by `cargo test --workspace`), the service on a free port, sign-ups over HTTP.

use std::path::PathBuf;
use std::time::Duration;

use fleet_testkit::TestFleet;
use serde_json::{Value, json};

fn provisioner() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/provisioner");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `just test`)",
        path.display()
    );
    path
}

async fn serve(fleet: &TestFleet, timeout: Duration) -> String {
    let client = fleet_client::FleetClient::connect(&fleet.config)
        .await
        .unwrap()
        .with_timeout(timeout);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, registration_service::app(client))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

async fn post(base: &str, body: Value) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(format!("{base}/signup"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_sign_up_answers_when_the_tenant_is_active_and_bad_ones_say_why() {
    let mut fleet = TestFleet::start("");
    fleet.spawn(provisioner(), &[]);
    let base = serve(&fleet, Duration::from_secs(30)).await;

    let signup = json!({"tenantId": "acme", "orgId": "org_1", "plan": "pro", "region": "eu-west", "adminEmail": "ops@acme.example"});
    let (status, body) = post(&base, signup.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "active");
    assert_eq!(body["tenantId"], "acme");
    assert!(
        !body.to_string().contains("authToken"),
        "no token in the answer: {body}"
    );
    // The same sign-up again (a client retry): the same tenant, answered at once.
    let (status, again) = post(&base, signup).await;
    assert_eq!(status, 201);
    assert_eq!(again["connectionUrl"], body["connectionUrl"]);

    let status = reqwest::get(format!("{base}/tenants/acme")).await.unwrap();
    assert_eq!(status.status().as_u16(), 200);
    assert_eq!(status.json::<Value>().await.unwrap()["status"], "active");

    // Invalid: every issue with its path.
    let (status, body) = post(
        &base,
        json!({"tenantId": "beta", "orgId": "org_1", "displayName": "x".repeat(300)}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["issues"].to_string().contains("displayName"), "{body}");
    let (status, _) = post(&base, json!({"tenantId": "../etc", "orgId": "o"})).await;
    assert_eq!(status, 422);
    // The id taken by another organisation's sign-up.
    let (status, body) = post(&base, json!({"tenantId": "acme", "orgId": "org_2"})).await;
    assert_eq!(status, 409, "{body}");
    // A region with no database group: the failure, with the step.
    let (status, body) = post(
        &base,
        json!({"tenantId": "tokyo", "orgId": "org_3", "region": "ap-northeast"}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("database group"),
        "{body}"
    );
    let missing = reqwest::get(format!("{base}/tenants/nobody"))
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}

#[tokio::test]
async fn without_a_provisioner_a_sign_up_times_out_with_504() {
    let fleet = TestFleet::start("");
    let base = serve(&fleet, Duration::from_millis(700)).await;
    let (status, body) = post(&base, json!({"tenantId": "late", "orgId": "org_1"})).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("provisioner"),
        "{body}"
    );
}
