//! Isolation, as a property: many tenants, requests interleaved across them and across two
//! gateway replicas, a suspension racing the traffic — and no answer ever shows a record of
//! another tenant. Every record carries its tenant in its `name`; every answer is checked. The
//! tenant whose suspension races the traffic may be refused (403) or asked to retry (503) while
//! its state changes; every other tenant is served throughout.

use std::time::Duration;

use fleet_protocol::{TenantId, TenantPlan};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::Fleet;

/// One request of the generated traffic.
#[derive(Debug, Clone)]
enum Op {
    Create {
        tenant: usize,
        replica: usize,
    },
    Find {
        tenant: usize,
        replica: usize,
    },
    Get {
        tenant: usize,
        replica: usize,
        of: usize,
    },
    Update {
        tenant: usize,
        replica: usize,
        of: usize,
    },
}

fn ops(tenants: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (0..tenants, 0..2usize).prop_map(|(tenant, replica)| Op::Create { tenant, replica }),
        (0..tenants, 0..2usize).prop_map(|(tenant, replica)| Op::Find { tenant, replica }),
        (0..tenants, 0..2usize, 0..tenants).prop_map(|(tenant, replica, of)| Op::Get {
            tenant,
            replica,
            of
        }),
        (0..tenants, 0..2usize, 0..tenants).prop_map(|(tenant, replica, of)| Op::Update {
            tenant,
            replica,
            of
        }),
    ];
    proptest::collection::vec(op, 20..60)
}

fn owner(record: &Value) -> Option<&str> {
    record["name"].as_str()?.split(':').next()
}

#[test]
fn no_answer_ever_shows_another_tenants_record() {
    const TENANTS: usize = 6;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (fleet, gateways, ids) = rt.block_on(async {
        let mut fleet = Fleet::start().await;
        let gateways = [fleet.spawn_gateway().await, fleet.spawn_gateway().await];
        let mut ids = Vec::new();
        for i in 0..TENANTS {
            ids.push(
                fleet
                    .tenant(&format!("iso-{i}"), TenantPlan::Enterprise)
                    .await,
            );
        }
        (fleet, gateways, ids)
    });
    // Known record ids per tenant, so gets and updates can aim at another tenant's records.
    let known: std::sync::Mutex<Vec<Vec<String>>> =
        std::sync::Mutex::new(vec![Vec::new(); TENANTS]);
    let mut runner = TestRunner::new(Config {
        cases: 6,
        ..Config::default()
    });
    let round = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&ops(TENANTS), |ops| {
            let round = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            rt.block_on(async {
                // A suspension races the traffic: one tenant suspended, then resumed.
                let raced = round % TENANTS;
                let victim: TenantId = ids[raced].clone();
                let racing = {
                    let client = fleet.client.clone();
                    let victim = victim.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        client.suspend(&victim, Some("race".into())).await.unwrap();
                        client.resume(&victim).await.unwrap();
                    })
                };
                let requests = ops.iter().map(|op| {
                    let fleet = &fleet;
                    let gateways = &gateways;
                    let ids = &ids;
                    let known = &known;
                    async move {
                        let raced = raced;
                        match *op {
                            Op::Create { tenant, replica } => {
                                let name = format!("{}:{}", ids[tenant], uuid_like());
                                let (status, body) = fleet
                                    .call(
                                        &gateways[replica],
                                        Method::POST,
                                        Some(ids[tenant].as_str()),
                                        "/api/v1/data/account",
                                        Some(json!({"data": {"name": name}})),
                                    )
                                    .await;
                                if status == StatusCode::CREATED {
                                    assert_eq!(
                                        owner(&body["record"]),
                                        Some(ids[tenant].as_str()),
                                        "{body}"
                                    );
                                    known.lock().unwrap()[tenant]
                                        .push(body["id"].as_str().unwrap().to_owned());
                                } else {
                                    assert_eq!(
                                        status,
                                        StatusCode::FORBIDDEN,
                                        "only the suspension may refuse: {body}"
                                    );
                                }
                            }
                            Op::Find { tenant, replica } => {
                                let (status, body) = fleet
                                    .call(
                                        &gateways[replica],
                                        Method::GET,
                                        Some(ids[tenant].as_str()),
                                        "/api/v1/data/account",
                                        None,
                                    )
                                    .await;
                                if tenant == raced && status == StatusCode::SERVICE_UNAVAILABLE {
                                    return;
                                }
                                assert_eq!(status, StatusCode::OK, "{body}");
                                for record in body["records"].as_array().unwrap() {
                                    assert_eq!(
                                        owner(record),
                                        Some(ids[tenant].as_str()),
                                        "{record}"
                                    );
                                }
                            }
                            Op::Get {
                                tenant,
                                replica,
                                of,
                            }
                            | Op::Update {
                                tenant,
                                replica,
                                of,
                            } => {
                                let target = known.lock().unwrap()[of].first().cloned();
                                let Some(target) = target else { return };
                                let update = matches!(op, Op::Update { .. });
                                let (method, body) = if update {
                                    (Method::PATCH, Some(json!({"data": {"industry": "retail"}})))
                                } else {
                                    (Method::GET, None)
                                };
                                let (status, body) = fleet
                                    .call(
                                        &gateways[replica],
                                        method,
                                        Some(ids[tenant].as_str()),
                                        &format!("/api/v1/data/account/{target}"),
                                        body,
                                    )
                                    .await;
                                if tenant == of {
                                    assert!(
                                        matches!(status, StatusCode::OK | StatusCode::FORBIDDEN),
                                        "{status}: {body}"
                                    );
                                } else {
                                    // Another tenant's record id is not found in this tenant.
                                    assert!(
                                        matches!(
                                            status,
                                            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN
                                        ),
                                        "{status}: {body}"
                                    );
                                }
                                if status == StatusCode::OK {
                                    assert_eq!(
                                        owner(&body["record"]),
                                        Some(ids[tenant].as_str()),
                                        "{body}"
                                    );
                                }
                            }
                        }
                    }
                });
                futures::future::join_all(requests).await;
                racing.await.unwrap();
            });
            Ok(())
        })
        .unwrap();
    // Every tenant's table holds its own records only.
    rt.block_on(async {
        for (i, id) in ids.iter().enumerate() {
            let (_, body) = fleet
                .call(
                    &gateways[i % 2],
                    Method::GET,
                    Some(id.as_str()),
                    "/api/v1/data/account?top=200",
                    None,
                )
                .await;
            for record in body["records"].as_array().unwrap() {
                assert_eq!(owner(record), Some(id.as_str()));
            }
            assert_eq!(
                body["total"].as_u64().unwrap() as usize,
                known.lock().unwrap()[i].len()
            );
        }
    });
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("r{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
