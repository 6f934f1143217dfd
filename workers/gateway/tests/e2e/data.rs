//! CRUD, validation with paths, injection attempts, suspension on every replica, rate limit
//! and record quota — through real gateway processes.

use std::time::{Duration, Instant};

use fleet_protocol::TenantPlan;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{Fleet, conforms, issues};

#[tokio::test]
async fn records_are_created_read_found_updated_and_deleted_in_the_tenants_own_database() {
    let mut fleet = Fleet::start().await;
    let gw = fleet.spawn_gateway().await;
    fleet.tenant("acme", TenantPlan::Pro).await;
    let t = Some("acme");

    let (status, created) = fleet
        .call(&gw, Method::POST, t, "/api/v1/data/account", Some(json!({"object": "account", "data": {"name": "Acme", "industry": "software", "annual_revenue": 1000.5}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    conforms("CreateDataResponse", &created);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["object"], "account");
    assert_eq!(created["record"]["name"], "Acme");
    assert_eq!(created["record"]["annual_revenue"], 1000.5);
    assert!(created["record"]["created_at"].is_string());

    let (status, contact) = fleet
        .call(&gw, Method::POST, t, "/api/v1/data/contact", Some(json!({"data": {"id": "c-ada", "first_name": "Ada", "last_name": "Lovelace", "email": "ada@acme.example", "account": id}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{contact}");
    assert_eq!(contact["id"], "c-ada");

    let (status, got) = fleet
        .call(
            &gw,
            Method::GET,
            t,
            &format!("/api/v1/data/account/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    conforms("GetDataResponse", &got);
    assert_eq!(got["record"]["industry"], "software");

    for (name, industry) in [("Globex", "retail"), ("Initech", "software")] {
        let (status, body) = fleet
            .call(
                &gw,
                Method::POST,
                t,
                "/api/v1/data/account",
                Some(json!({"data": {"name": name, "industry": industry}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let filter = urlencode(r#"{"industry":"software"}"#);
    let (status, found) = fleet
        .call(
            &gw,
            Method::GET,
            t,
            &format!("/api/v1/data/account?filter={filter}&sort=-name&select=name"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    conforms("FindDataResponse", &found);
    let names: Vec<&str> = found["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Initech", "Acme"]);
    assert_eq!(found["total"], 2);
    assert!(
        found["records"][0].get("industry").is_none(),
        "select keeps the asked fields"
    );
    let filter =
        urlencode(r#"{"$or":[{"name":{"$startsWith":"Glo"}},{"annual_revenue":{"$gt":500}}]}"#);
    let (_, found) = fleet
        .call(
            &gw,
            Method::GET,
            t,
            &format!("/api/v1/data/account?filter={filter}&sort=name&top=1"),
            None,
        )
        .await;
    assert_eq!(found["records"].as_array().unwrap().len(), 1);
    assert_eq!(found["records"][0]["name"], "Acme");
    assert_eq!(found["hasMore"], true);

    let (status, updated) = fleet
        .call(
            &gw,
            Method::PATCH,
            t,
            &format!("/api/v1/data/account/{id}"),
            Some(json!({"data": {"industry": "retail"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    conforms("UpdateDataResponse", &updated);
    assert_eq!(updated["record"]["industry"], "retail");
    assert_eq!(updated["record"]["name"], "Acme");

    // The contact refers to it: its lookup is SET NULL, the delete goes through.
    let (status, deleted) = fleet
        .call(
            &gw,
            Method::DELETE,
            t,
            &format!("/api/v1/data/account/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    conforms("DeleteDataResponse", &deleted);
    assert_eq!(deleted["success"], true);
    let (status, gone) = fleet
        .call(
            &gw,
            Method::GET,
            t,
            &format!("/api/v1/data/account/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["success"], false);
    assert_eq!(gone["error"]["code"], "record_not_found");
    conforms("BaseResponse", &gone);
    conforms("ApiError", &gone["error"]);
    let (_, contact) = fleet
        .call(&gw, Method::GET, t, "/api/v1/data/contact/c-ada", None)
        .await;
    assert!(contact["record"]["account"].is_null(), "{contact}");

    // No tenant, an unknown tenant, an object the tenant's metadata does not declare.
    let (status, body) = fleet
        .call(&gw, Method::GET, None, "/api/v1/data/account", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("tenant_required"))
    );
    let (status, body) = fleet
        .call(
            &gw,
            Method::GET,
            Some("nobody"),
            "/api/v1/data/account",
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("tenant_not_found"))
    );
    let (status, body) = fleet
        .call(&gw, Method::GET, t, "/api/v1/data/sys_metadata", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("object_not_found"))
    );
}

#[tokio::test]
async fn bad_values_are_refused_with_every_problem_and_its_path() {
    let mut fleet = Fleet::start().await;
    let gw = fleet.spawn_gateway().await;
    fleet.tenant("acme", TenantPlan::Pro).await;
    let t = Some("acme");
    let (status, body) = fleet
        .call(&gw, Method::POST, t, "/api/v1/data/opportunity", Some(json!({"data": {
            "amount": "lots", "stage": "won?", "close_date": "tomorrow", "account": "no-such-account",
            "probability": true, "color": "red", "created_at": "2020-01-01T00:00:00Z"
        }})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    conforms("BaseResponse", &body);
    let mut found = issues(&body);
    found.sort();
    assert_eq!(
        found,
        [
            "data.account: not_found",
            "data.amount: invalid_type",
            "data.close_date: invalid_string",
            "data.color: unrecognized_key",
            "data.created_at: read_only",
            "data.probability: invalid_type",
            "data.stage: invalid_option",
            "data.title: required",
        ],
        "{body}"
    );
    // A lookup to a record that does not exist, alone.
    let (status, body) = fleet
        .call(
            &gw,
            Method::POST,
            t,
            "/api/v1/data/opportunity",
            Some(json!({"data": {"title": "Deal", "account": "no-such-account"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(issues(&body), ["data.account: not_found"]);
    // Unique fields.
    for expected in [StatusCode::CREATED, StatusCode::BAD_REQUEST] {
        let (status, body) = fleet
            .call(
                &gw,
                Method::POST,
                t,
                "/api/v1/data/contact",
                Some(
                    json!({"data": {"first_name": "A", "last_name": "B", "email": "a@b.example"}}),
                ),
            )
            .await;
        assert_eq!(status, expected, "{body}");
        if expected == StatusCode::BAD_REQUEST {
            assert_eq!(issues(&body), ["data.email: unique"]);
        }
    }
    // A unique index (CRM's account name), on create and on update: the field's path.
    let mut ids = Vec::new();
    for name in ["Acme", "Globex"] {
        let (_, body) = fleet
            .call(
                &gw,
                Method::POST,
                t,
                "/api/v1/data/account",
                Some(json!({"data": {"name": name}})),
            )
            .await;
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = fleet
        .call(
            &gw,
            Method::POST,
            t,
            "/api/v1/data/account",
            Some(json!({"data": {"name": "Acme"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(issues(&body), ["data.name: unique"]);
    let (status, body) = fleet
        .call(
            &gw,
            Method::PATCH,
            t,
            &format!("/api/v1/data/account/{}", ids[1]),
            Some(json!({"data": {"name": "Acme"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(issues(&body), ["data.name: unique"]);
    // Text SQLite would cut at a NUL, and blank ids, are refused.
    let (status, body) = fleet
        .call(
            &gw,
            Method::POST,
            t,
            "/api/v1/data/account",
            Some(json!({"data": {"id": "z\u{0}y", "name": "Z\u{0}"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mut found = issues(&body);
    found.sort();
    assert_eq!(
        found,
        ["data.id: invalid_type", "data.name: invalid_string"]
    );
    let (status, _) = fleet
        .call(
            &gw,
            Method::POST,
            t,
            "/api/v1/data/account",
            Some(json!({"data": {"id": "   ", "name": "Blank"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The body's shape.
    let (status, body) = fleet
        .call(
            &gw,
            Method::POST,
            t,
            "/api/v1/data/contact",
            Some(json!({"object": "account", "values": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut found = issues(&body);
    found.sort();
    assert_eq!(
        found,
        [
            "data: required",
            "object: mismatch",
            "values: unrecognized_key"
        ]
    );
}

#[tokio::test]
async fn injection_attempts_in_names_filters_and_sorts_are_refused_and_change_nothing() {
    let mut fleet = Fleet::start().await;
    let gw = fleet.spawn_gateway().await;
    fleet.tenant("acme", TenantPlan::Pro).await;
    let t = Some("acme");
    let (status, _) = fleet
        .call(
            &gw,
            Method::POST,
            t,
            "/api/v1/data/account",
            Some(json!({"data": {"name": "Robert'); DROP TABLE crm_account;--"}})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a value is data, bound as a parameter"
    );
    let attempts = [
        (
            "/api/v1/data/account%3BDROP%20TABLE%20crm_account",
            StatusCode::NOT_FOUND,
        ),
        ("/api/v1/data/crm_account", StatusCode::NOT_FOUND),
        (
            &format!(
                "/api/v1/data/account?filter={}",
                urlencode(r#"{"name) OR 1=1 --":"x"}"#)
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            &format!(
                "/api/v1/data/account?filter={}",
                urlencode(r#"{"name":{"$raw":"1=1"}}"#)
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/data/account?sort=name%3BDROP%20TABLE%20crm_account",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/data/account?sort=%22name%22",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/data/account?select=*", StatusCode::BAD_REQUEST),
        (
            "/api/v1/data/account?filter=not-json",
            StatusCode::BAD_REQUEST,
        ),
        (
            &format!(
                "/api/v1/data/account?filter={}",
                urlencode(r#"{"name":{}}"#)
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/data/account?skip=18446744073709551615",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/data", StatusCode::NOT_FOUND),
        ("/api/v1/data/account/a/b", StatusCode::NOT_FOUND),
    ];
    for (path, expected) in attempts {
        let (status, body) = fleet.call(&gw, Method::GET, t, path, None).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert_eq!(body["success"], false, "{path}");
    }
    let (status, body) = fleet
        .call(&gw, Method::OPTIONS, t, "/api/v1/data/account", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    // A value that looks like SQL finds only itself.
    let filter = urlencode(r#"{"name":"x' OR '1'='1"}"#);
    let (_, found) = fleet
        .call(
            &gw,
            Method::GET,
            t,
            &format!("/api/v1/data/account?filter={filter}"),
            None,
        )
        .await;
    assert_eq!(found["total"], 0);
    let (_, all) = fleet
        .call(&gw, Method::GET, t, "/api/v1/data/account", None)
        .await;
    assert_eq!(all["total"], 1, "the table is intact: {all}");
    // A tenant id that is not one.
    let (status, body) = fleet
        .call(
            &gw,
            Method::GET,
            Some("../globex"),
            "/api/v1/data/account",
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_tenant"))
    );
}

#[tokio::test]
async fn a_suspension_reaches_every_replica_at_once_and_leaves_reads() {
    let mut fleet = Fleet::start().await;
    let gateways = [fleet.spawn_gateway().await, fleet.spawn_gateway().await];
    let tenant = fleet.tenant("acme", TenantPlan::Pro).await;
    let t = Some("acme");
    for gw in &gateways {
        let (status, body) = fleet
            .call(
                gw,
                Method::POST,
                t,
                "/api/v1/data/account",
                Some(json!({"data": {"name": format!("via {gw}")}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    fleet
        .client
        .suspend(&tenant, Some("unpaid".into()))
        .await
        .unwrap();
    let suspended = Instant::now();
    // The probe is a real write: one a replica takes before the suspension reaches it is a
    // record like any other, counted for the total below.
    let taken = std::sync::atomic::AtomicU64::new(0);
    for gw in &gateways {
        fleet
            .eventually(
                Duration::from_secs(10),
                "the suspension on every replica",
                async || {
                    let (status, _) = fleet
                        .call(
                            gw,
                            Method::POST,
                            t,
                            "/api/v1/data/account",
                            Some(json!({"data": {"name": "late"}})),
                        )
                        .await;
                    if status == StatusCode::CREATED {
                        taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    status == StatusCode::FORBIDDEN
                },
            )
            .await;
    }
    let taken = taken.into_inner();
    println!(
        "refused on both replicas {} ms after the suspension was recorded",
        suspended.elapsed().as_millis()
    );
    for gw in &gateways {
        let (status, body) = fleet
            .call(
                gw,
                Method::POST,
                t,
                "/api/v1/data/account",
                Some(json!({"data": {"name": "late"}})),
            )
            .await;
        assert_eq!(
            body["error"]["code"], "tenant_suspended",
            "{status}: {body}"
        );
        // Reads go on (the lifecycle's readOnly).
        let (status, found) = fleet
            .call(gw, Method::GET, t, "/api/v1/data/account", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        assert_eq!(
            found["total"],
            2 + taken,
            "2 before the suspension, {taken} while it spread"
        );
    }
    fleet.client.resume(&tenant).await.unwrap();
    for gw in &gateways {
        fleet
            .eventually(
                Duration::from_secs(10),
                "the resumption on every replica",
                async || {
                    let (status, _) = fleet
                        .call(
                            gw,
                            Method::POST,
                            t,
                            "/api/v1/data/account",
                            Some(json!({"data": {"name": format!("back {gw}")}})),
                        )
                        .await;
                    status == StatusCode::CREATED
                },
            )
            .await;
    }
}

#[tokio::test]
async fn the_plans_rate_limit_and_record_quota_are_enforced_with_their_results() {
    let mut fleet = Fleet::start().await;
    let probes = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let gw = fleet
        .spawn_gateway_with(&[("FLEET_WORKER__HEALTH_ADDR", probes.as_str())])
        .await;
    fleet.tenant("small", TenantPlan::Free).await;
    fleet.tenant("big", TenantPlan::Pro).await;
    let small = Some("small");
    // maxRecordsPerObject = 3 on the free plan, checked by the insert itself: of eight creates
    // racing each other, exactly three get in.
    let creates = (0..8).map(|i| {
        fleet.call(
            &gw,
            Method::POST,
            small,
            "/api/v1/data/account",
            Some(json!({"data": {"name": format!("a{i}")}})),
        )
    });
    let answers = futures::future::join_all(creates).await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 3, "{answers:?}");
    let (status, body) = answers
        .iter()
        .find(|(s, _)| *s != StatusCode::CREATED)
        .cloned()
        .unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    conforms("BaseResponse", &body);
    assert_eq!(
        body["error"]["details"]["exceededQuota"],
        "maxRecordsPerObject"
    );
    assert_eq!(body["error"]["details"]["allowed"], false);
    assert_eq!(body["error"]["details"]["limit"], 3.0);
    let (_, all) = fleet
        .call(&gw, Method::GET, small, "/api/v1/data/account", None)
        .await;
    assert_eq!(all["total"], 3);
    // apiRateLimit = 30 a minute on the free plan: the 9 requests above count; the rest of the
    // minute's budget goes, then the answer is 429 with Retry-After — and another tenant is not
    // affected.
    let mut limited = None;
    for i in 0..40 {
        let (status, body) = fleet
            .call(&gw, Method::GET, small, "/api/v1/data/account", None)
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, body));
            break;
        }
    }
    let (after, body) = limited.expect("the rate limit refuses within the minute's budget");
    assert!(after <= 22, "refused after {after} more requests");
    let response = fleet
        .http
        .get(format!("{gw}/api/v1/data/account"))
        .header("X-Tenant-ID", "small")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["details"]["exceededQuota"], "apiRateLimit");
    let (status, _) = fleet
        .call(&gw, Method::GET, Some("big"), "/api/v1/data/account", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // The metrics: by plan, object, operation and status — the refusals under the tenant's
    // plan, never a tenant id.
    let metrics = fleet
        .http
        .get(format!("http://{probes}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |needle: &[&str]| {
        metrics.lines().any(|l| {
            l.starts_with("fleet_gateway_requests_total") && needle.iter().all(|n| l.contains(n))
        })
    };
    assert!(
        line(&["plan=\"free\"", "status=\"429\"", "operation=\"find\""]),
        "{metrics}"
    );
    assert!(
        line(&["plan=\"free\"", "object=\"account\"", "status=\"201\""]),
        "{metrics}"
    );
    assert!(
        !metrics.contains("small") && !metrics.contains("tenant="),
        "{metrics}"
    );
}

#[tokio::test]
async fn request_counts_reach_the_quota_auditors_usage_over_every_replica() {
    let mut fleet = Fleet::start().await;
    let gateways = [fleet.spawn_gateway().await, fleet.spawn_gateway().await];
    let tenant = fleet.tenant("acme", TenantPlan::Pro).await;
    for i in 0..14 {
        let (status, _) = fleet
            .call(
                &gateways[i % 2],
                Method::GET,
                Some("acme"),
                "/api/v1/data/account",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Each replica writes its counts every few seconds; the auditor reads their sum.
    let usage = fleet
        .client
        .runtime()
        .bucket(fleet_runtime::topology::names::API_USAGE)
        .await
        .unwrap();
    fleet
        .eventually(
            Duration::from_secs(20),
            "both replicas' counts",
            async || match usage.get("acme").await.unwrap() {
                Some(value) => {
                    serde_json::from_slice::<fleet_tenants::audit::ApiMinute>(&value)
                        .unwrap()
                        .requests
                        >= 14
                }
                None => false,
            },
        )
        .await;
    let records = fleet_control::usage(fleet.client.runtime()).await.unwrap();
    fleet.client.request_audit(Some(&tenant)).await.unwrap();
    fleet
        .eventually(
            Duration::from_secs(20),
            "the audit with the API requests",
            async || {
                records
                    .get::<std::convert::Infallible>("acme")
                    .await
                    .unwrap()
                    .is_some_and(|r| r.state.usage.api_requests_this_minute >= 14)
            },
        )
        .await;
}

#[tokio::test]
async fn a_verified_token_claim_or_the_host_names_the_tenant() {
    let mut fleet = Fleet::start().await;
    let by_token = fleet
        .spawn_gateway_with(&[
            ("FLEET_ROUTER__STRATEGY", "token"),
            ("FLEET_ROUTER__TOKEN_SECRET", crate::TOKEN_SECRET),
        ])
        .await;
    let by_host = fleet
        .spawn_gateway_with(&[("FLEET_ROUTER__STRATEGY", "lookup")])
        .await;
    fleet.tenant("acme", TenantPlan::Pro).await;
    fleet.tenant("globex", TenantPlan::Pro).await;
    let token = |tenant: &str, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"tenant_id": tenant, "exp": chrono::Utc::now().timestamp() + 300}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let post = |base: &str| fleet.http.post(format!("{base}/api/v1/data/account"));
    let created = post(&by_token)
        .bearer_auth(token("acme", crate::TOKEN_SECRET))
        .json(&json!({"data": {"name": "By token"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    // The header names another tenant: under the token strategy only the verified claim counts.
    let found: serde_json::Value = fleet
        .http
        .get(format!("{by_token}/api/v1/data/account"))
        .bearer_auth(token("globex", crate::TOKEN_SECRET))
        .header("X-Tenant-ID", "acme")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["total"], 0, "globex's database: {found}");
    // Forged, missing or expired tokens are refused.
    for request in [
        post(&by_token).bearer_auth(token("acme", "another-secret-another-secret-0123456")),
        post(&by_token),
        post(&by_token).bearer_auth("not.a.jwt"),
    ] {
        let response = request
            .json(&json!({"data": {"name": "x"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"tenant_id": "acme", "exp": chrono::Utc::now().timestamp() - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(crate::TOKEN_SECRET.as_bytes()),
    )
    .unwrap();
    let response = post(&by_token)
        .bearer_auth(expired)
        .json(&json!({"data": {"name": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The host the request is for names the tenant (router.hosts).
    let found: serde_json::Value = fleet
        .http
        .get(format!("{by_host}/api/v1/data/account"))
        .header("Host", "CRM.acme.example:8443")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["total"], 1, "acme's database: {found}");
    let response = fleet
        .http
        .get(format!("{by_host}/api/v1/data/account"))
        .header("Host", "unknown.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_installed_apps_objects_are_served_until_it_is_uninstalled() {
    let mut fleet = Fleet::start().await;
    let gw = fleet.spawn_gateway().await;
    let tenant = fleet.tenant("acme", TenantPlan::Pro).await;
    let t = Some("acme");
    let package = |name: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/apps")
            .join(name);
        fleet_apps::package::load(&path).unwrap().value
    };
    let options = fleet_client::InstallOptions::default();
    fleet
        .client
        .install(&tenant, &package("contacts-1.0.0"), false, options)
        .await
        .unwrap();
    // The app's seed is there; its lookup (person → organization) is checked.
    let (status, people) = fleet
        .call(&gw, Method::GET, t, "/api/v1/data/person", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{people}");
    assert_eq!(people["total"], 1);
    let (status, body) = fleet
        .call(&gw, Method::POST, t, "/api/v1/data/person", Some(json!({"data": {"first_name": "Grace", "last_name": "Hopper", "organization": "org-acme"}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = fleet
        .call(&gw, Method::POST, t, "/api/v1/data/person", Some(json!({"data": {"first_name": "No", "last_name": "Org", "organization": "org-none"}})))
        .await;
    assert_eq!(
        (status, issues(&body)),
        (
            StatusCode::BAD_REQUEST,
            vec!["data.organization: not_found".to_owned()]
        )
    );
    // Uninstalled with its tables kept: registered for a later install, not served.
    fleet
        .client
        .uninstall(&tenant, "contacts", false)
        .await
        .unwrap();
    let (status, body) = fleet
        .call(&gw, Method::GET, t, "/api/v1/data/person", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("object_not_found"))
    );
    // Installed again: served, with the rows it kept.
    fleet
        .client
        .install(&tenant, &package("contacts-1.0.0"), false, options)
        .await
        .unwrap();
    let (status, people) = fleet
        .call(&gw, Method::GET, t, "/api/v1/data/person", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{people}");
    assert_eq!(people["total"], 2);
}

/// Percent-encodes a query value.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
