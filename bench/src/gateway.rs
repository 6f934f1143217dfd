//! The data gateway under load, against a plain libSQL loop doing the same data statements on
//! the same tenant databases in the same run.
//!
//! After the deploys, with every tenant on CRM v2: one gateway process (release build) in
//! front of the fleet; [`CLIENTS`] HTTP clients write [`REQUESTS`] accounts
//! (`POST /api/v1/data/account`) spread over the first [`TENANTS`] tenants, then read each back
//! by id (`GET /api/v1/data/account/:id`). The baseline opens the same tenants' database files
//! itself (one connection per tenant, kept) and runs, at the same concurrency, what a write and
//! a read are as data statements: `INSERT` then `SELECT` by id; `SELECT` by id. The gateway
//! does more per request — resolve the tenant and its state, the rate limit, read the object
//! from the tenant's registry, validate every value (lookups, unique), HTTP and JSON — and the
//! ratio says what that costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_tenantdb::{LocalBackend, TenantDatabases};
use serde_json::{Value, json};

use crate::scenarios::round;

/// Concurrent clients (the workers' concurrency).
pub const CLIENTS: usize = 16;
/// Requests of each kind.
pub const REQUESTS: usize = 2000;
/// Tenants the requests spread over (at most the fleet's).
pub const TENANTS: usize = 50;

fn account(i: usize) -> Value {
    json!({"data": {"id": format!("acct-{i:06}"), "company_name": format!("Company {i}"), "industry": "software", "employees": (i % 500) as f64}})
}

/// Runs `work(i)` for `0..n` with `CLIENTS` at once; the elapsed time.
async fn run<F, Fut>(n: usize, work: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    use futures::StreamExt;
    let work = Arc::new(work);
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let work = work.clone();
            async move { work(i).await }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(started.elapsed())
}

/// The scenario on a fleet whose tenants `t-000000…` are on CRM v2; `gateway` is the data
/// API's base URL.
pub async fn measure(
    gateway: &str,
    data_dir: &std::path::Path,
    tenants: usize,
) -> anyhow::Result<Value> {
    let tenants = tenants.clamp(1, TENANTS);
    let tenant = move |i: usize| format!("t-{:06}", i % tenants);
    let http = reqwest::Client::new();
    let base = gateway.to_owned();
    let (h, b) = (http.clone(), base.clone());
    let writes = run(REQUESTS, move |i| {
        let (http, base) = (h.clone(), b.clone());
        let tenant = tenant(i);
        async move {
            let response = http
                .post(format!("{base}/api/v1/data/account"))
                .header("X-Tenant-ID", tenant)
                .json(&account(i))
                .send()
                .await?;
            anyhow::ensure!(
                response.status().as_u16() == 201,
                "write {i}: {}",
                response.text().await?
            );
            Ok(())
        }
    })
    .await?;
    let (h, b) = (http.clone(), base.clone());
    let reads = run(REQUESTS, move |i| {
        let (http, base) = (h.clone(), b.clone());
        let tenant = tenant(i);
        async move {
            let response = http
                .get(format!("{base}/api/v1/data/account/acct-{i:06}"))
                .header("X-Tenant-ID", tenant)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().as_u16() == 200,
                "read {i}: {}",
                response.text().await?
            );
            Ok(())
        }
    })
    .await?;

    // The same statements on the same files, in a plain loop.
    let backend = LocalBackend::new(data_dir.to_path_buf(), "");
    let mut connections = Vec::new();
    for i in 0..tenants {
        let id = fleet_protocol::TenantId::parse(tenant(i))?;
        let path = backend.database_path(&backend.database_name(&id));
        connections.push(Arc::new(
            crate::baseline::connect(&path)
                .await
                .with_context(|| path.display().to_string())?,
        ));
    }
    let connections = Arc::new(connections);
    let c = connections.clone();
    let raw_writes = run(REQUESTS, move |i| {
        let conn = c[i % tenants].clone();
        async move {
            let id = format!("raw-{i:06}");
            conn.execute(
                "INSERT INTO \"crm_account\" (\"id\", \"company_name\", \"industry\", \"employees\") VALUES (?1, ?2, ?3, ?4)",
                libsql::params![id.clone(), format!("Raw company {i}"), "software", (i % 500) as f64],
            )
            .await?;
            let mut rows = conn
                .query("SELECT \"id\", \"created_at\", \"updated_at\", \"company_name\", \"industry\", \"annual_revenue\", \"website\", \"employees\" FROM \"crm_account\" WHERE \"id\" = ?1", [id])
                .await?;
            anyhow::ensure!(rows.next().await?.is_some());
            Ok(())
        }
    })
    .await?;
    let c = connections.clone();
    let raw_reads = run(REQUESTS, move |i| {
        let conn = c[i % tenants].clone();
        async move {
            let mut rows = conn
                .query("SELECT \"id\", \"created_at\", \"updated_at\", \"company_name\", \"industry\", \"annual_revenue\", \"website\", \"employees\" FROM \"crm_account\" WHERE \"id\" = ?1", [format!("raw-{i:06}")])
                .await?;
            anyhow::ensure!(rows.next().await?.is_some());
            Ok(())
        }
    })
    .await?;
    let rate = |d: Duration| round(REQUESTS as f64 / d.as_secs_f64());
    Ok(json!({
        "requests": REQUESTS,
        "clients": CLIENTS,
        "tenants": tenants,
        "writes": {"perSecond": rate(writes), "rawPerSecond": rate(raw_writes), "ratio": round(raw_writes.as_secs_f64() / writes.as_secs_f64())},
        "reads": {"perSecond": rate(reads), "rawPerSecond": rate(raw_reads), "ratio": round(raw_reads.as_secs_f64() / reads.as_secs_f64())},
    }))
}
