//! `just bench`: measures the fleet's hot paths against baselines run in the same process, and
//! prints ratios (never absolute claims; nothing here is asserted).
//!
//! - validating a deploy bundle (every issue, paths, defaults) vs a plain serde decode;
//! - planning + applying CRM v1 on a fresh libSQL file vs executing the same DDL directly;
//! - a tenant connection from the router-style cache (open once, connect per request) vs opening
//!   the database file for every request.

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_protocol::{DeployBundle, parse_value};
use fleet_schema::{PlanOptions, apply_plan, open_local, plan_database};
use fleet_tenantdb::{LocalBackend, TenantDatabases};

/// Median duration of `runs` runs of `f`.
async fn median<F, Fut>(runs: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let started = Instant::now();
        f(i).await;
        times.push(started.elapsed());
    }
    times.sort();
    times[runs / 2]
}

fn report(name: &str, measured: Duration, baseline_name: &str, baseline: Duration) {
    let ratio = measured.as_secs_f64() / baseline.as_secs_f64().max(f64::EPSILON);
    println!(
        "{name:<44} {:>10.3} ms   {ratio:>6.2}× {baseline_name} ({:.3} ms)",
        measured.as_secs_f64() * 1e3,
        baseline.as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("examples/crm-v1.bundle.json"))
        .expect("examples/crm-v1.bundle.json");
    let document: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let bundle: DeployBundle = serde_json::from_value(document.clone()).expect("a bundle");
    let objects = bundle.object_definitions().expect("valid objects");
    println!("fleet benchmarks (median of repeated runs; ratios against same-run baselines)\n");

    // 1. Validation vs decode.
    let decode = median(200, |_| {
        let d = document.clone();
        async move {
            std::hint::black_box(serde_json::from_value::<DeployBundle>(d).unwrap());
        }
    })
    .await;
    let validate = median(200, |_| {
        let d = document.clone();
        async move {
            std::hint::black_box(parse_value::<DeployBundle>(&d).unwrap());
        }
    })
    .await;
    report(
        "validate DeployBundle (all issues, paths)",
        validate,
        "plain serde decode",
        decode,
    );

    // 2. Plan + apply vs raw DDL.
    let dir = tempfile::tempdir().expect("temp dir");
    let planned = {
        let conn = open_local(&dir.path().join("probe.db")).await.unwrap();
        plan_database(&conn, &objects, PlanOptions::default())
            .await
            .unwrap()
    };
    let ddl: Vec<String> = planned
        .plan
        .statements
        .iter()
        .map(|s| s.sql.clone())
        .collect();
    let raw = median(30, |i| {
        let path = dir.path().join(format!("raw-{i}.db"));
        let ddl = ddl.clone();
        async move {
            let conn = open_local(&path).await.unwrap();
            conn.execute_batch(&format!("BEGIN; {}; COMMIT;", ddl.join(";\n")))
                .await
                .unwrap();
        }
    })
    .await;
    let engine = median(30, |i| {
        let path = dir.path().join(format!("engine-{i}.db"));
        let objects = objects.clone();
        async move {
            let conn = open_local(&path).await.unwrap();
            let planned = plan_database(&conn, &objects, PlanOptions::default())
                .await
                .unwrap();
            apply_plan(&conn, &planned.plan).await.unwrap();
        }
    })
    .await;
    report(
        "introspect + diff + plan + apply CRM v1",
        engine,
        "the same DDL executed directly",
        raw,
    );

    // 3. Cached database handle vs open per request.
    let backend = LocalBackend::new(dir.path().join("tenants"), "");
    let tenant = fleet_protocol::TenantId::parse("bench").unwrap();
    backend.create_database(&tenant, None).await.unwrap();
    let name = backend.database_name(&tenant);
    let token = backend
        .issue_token(
            &name,
            fleet_protocol::turso::TursoTokenScope::FullAccess,
            None,
        )
        .await
        .unwrap()
        .token;
    let cached = backend.open(&name, &token).await.unwrap();
    let per_request = median(200, |_| {
        let (backend, name, token) = (&backend, name.clone(), token.clone());
        async move {
            let db = backend.open(&name, &token).await.unwrap();
            let conn = db.connect().await.unwrap();
            conn.query("SELECT 1", ()).await.unwrap();
        }
    })
    .await;
    let from_cache = median(200, |_| {
        let cached = &cached;
        async move {
            let conn = cached.connect().await.unwrap();
            conn.query("SELECT 1", ()).await.unwrap();
        }
    })
    .await;
    report(
        "tenant query via the cached database handle",
        from_cache,
        "opening the tenant db per request",
        per_request,
    );
}
