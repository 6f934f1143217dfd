//! The scenarios of `just bench`, each with its baselines run in the same process.

use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_protocol::{DeployBundle, DeploymentId, ObjectDefinition, Timestamp};
use fleet_schema::{BoundStatement, PlanOptions};
use fleet_tenantdb::LocalBackend;
use serde_json::{Value, json};

use crate::baseline::{self, Scripts};
use crate::fleet::BenchFleet;
use crate::sys;

/// Percentile `q` (0..=1) of sorted `values`.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn latency_summary(mut latencies: Vec<f64>) -> Value {
    latencies.sort_by(f64::total_cmp);
    json!({
        "p50Ms": round(percentile(&latencies, 0.50)),
        "p99Ms": round(percentile(&latencies, 0.99)),
        "maxMs": round(latencies.last().copied().unwrap_or(0.0)),
    })
}

/// Rounds to three significant decimals for the results file.
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The example bundles (CRM v1 and v2).
pub fn crm(version: &str) -> anyhow::Result<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(format!("examples/crm-{version}.bundle.json"));
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

fn objects(bundle: &Value) -> anyhow::Result<Vec<ObjectDefinition>> {
    let bundle: DeployBundle = serde_json::from_value(bundle.clone())?;
    Ok(bundle.object_definitions()?)
}

/// Plans the base schema on an empty probe database, and the seed row.
pub async fn provisioning_scripts(dir: &std::path::Path) -> anyhow::Result<Scripts> {
    let conn = fleet_schema::open_local(&dir.join("probe-base.db")).await?;
    let planned = fleet_schema::plan_database(
        &conn,
        fleet_schema::system::base_objects(),
        PlanOptions::default(),
    )
    .await?;
    Ok(Scripts {
        base: planned.plan,
        seed: BoundStatement {
            sql: "INSERT OR IGNORE INTO sys_user (id, email, display_name, role) VALUES ('admin', ?1, ?2, 'admin')".into(),
            params: vec![
                libsql::Value::Text("admin@raw.example".into()),
                libsql::Value::Text("Tenant raw".into()),
            ],
        },
    })
}

/// What the deployer runs on a tenant for `bundle` after `before` (plan and registry rows),
/// planned once on a probe database at `before`'s schema.
pub async fn deploy_scripts(
    dir: &std::path::Path,
    scripts: &Scripts,
    steps: &[(&str, &Value)],
) -> anyhow::Result<Vec<(fleet_protocol::MigrationPlan, Vec<BoundStatement>)>> {
    let conn = fleet_schema::open_local(&dir.join("probe-deploy.db")).await?;
    fleet_schema::apply_plan_with(&conn, &scripts.base, std::slice::from_ref(&scripts.seed))
        .await?;
    let mut out = Vec::new();
    for (id, bundle) in steps {
        let parsed: DeployBundle = serde_json::from_value((*bundle).clone())?;
        let desired = fleet_schema::system::with_system_objects(&objects(bundle)?);
        let planned = fleet_schema::plan_database(&conn, &desired, PlanOptions::default()).await?;
        let d = deployment(id, &parsed);
        let registry = fleet_deployer::registry_statements(
            &d,
            &parsed,
            &planned.plan,
            planned.registered.as_deref().unwrap_or_default(),
        );
        fleet_schema::apply_plan_with(&conn, &planned.plan, &registry).await?;
        out.push((planned.plan, registry));
    }
    Ok(out)
}

fn deployment(id: &str, bundle: &DeployBundle) -> fleet_rollouts::Deployment {
    fleet_rollouts::Deployment {
        version: bundle.manifest.version.clone(),
        checksum: bundle.contents_checksum(),
        ..fleet_rollouts::Deployment::new(
            DeploymentId::parse(id).expect("a deployment id"),
            fleet_rollouts::RolloutStatus::Running,
            Timestamp::now(),
        )
    }
}

/// One fleet run: N tenants provisioned at full speed, CRM v1 then v2 to all of them, then
/// (optionally) a fixed offered load at half the measured maximum. CPU per tenant is the
/// worker's and the nats-server's, from `/proc`.
///
/// The fleet is stopped when the run ends but its folders are kept (returned) until the bench
/// ends: removing tens of thousands of files between measurements would slow the next one's
/// file creation (ext4 skips recently freed inodes), charging one scenario for another's
/// clean-up.
pub async fn fleet_run(n: usize, half_load: bool) -> anyhow::Result<(Value, BenchFleet)> {
    let fleet = BenchFleet::start(&["provisioner", "deployer"]).await?;
    let idle = json!({
        "provisionerMiB": round(sys::rss_mib(fleet.pid("provisioner")).0),
        "deployerMiB": round(sys::rss_mib(fleet.pid("deployer")).0),
    });
    let tenants: Vec<String> = (0..n).map(|i| format!("t-{i:06}")).collect();
    let (p0, s0) = fleet.cpu("provisioner");
    let (c0, m0) = (sys::own_cpu_seconds(), sys::machine_ticks());
    let (latencies, elapsed) = fleet.provision(&tenants, None).await?;
    let (p1, s1) = fleet.cpu("provisioner");
    let (c1, m1) = (sys::own_cpu_seconds(), sys::machine_ticks());
    let rate = n as f64 / elapsed.as_secs_f64();
    let per_tenant = |cpu: f64| round(cpu * 1e3 / n as f64);
    let mut provisioning = json!({
        "tenantsPerSecond": round(rate),
        "seconds": round(elapsed.as_secs_f64()),
        "latency": latency_summary(latencies),
        "cpuMsPerTenant": {"provisioner": per_tenant(p1 - p0), "natsServer": per_tenant(s1 - s0), "client": per_tenant(c1 - c0)},
        "machineBusy": round(sys::busy_share(m0, m1)),
    });
    let mut deploys = serde_json::Map::new();
    for (id, version) in [("bench-v1", "v1"), ("bench-v2", "v2")] {
        let bundle = crm(version)?;
        let (d0, s0) = fleet.cpu("deployer");
        let (c0, m0) = (sys::own_cpu_seconds(), sys::machine_ticks());
        let (took, data) = fleet.deploy(id, &bundle).await?;
        let (d1, s1) = fleet.cpu("deployer");
        let (c1, m1) = (sys::own_cpu_seconds(), sys::machine_ticks());
        anyhow::ensure!(
            data["status"] == "completed" && data["ready"] == json!(n),
            "deployment {id} did not complete on every tenant: {data}"
        );
        deploys.insert(
            version.to_owned(),
            json!({
                "tenantsPerSecond": round(n as f64 / took.as_secs_f64()),
                "seconds": round(took.as_secs_f64()),
                "cpuMsPerTenant": {"deployer": per_tenant(d1 - d0), "natsServer": per_tenant(s1 - s0), "client": per_tenant(c1 - c0)},
                "machineBusy": round(sys::busy_share(m0, m1)),
            }),
        );
    }
    let mut gateway = Value::Null;
    let mut fleet = fleet;
    if half_load {
        let base = fleet.spawn_gateway().await?;
        gateway = crate::gateway::measure(&base, &fleet.fleet.data_dir(), n).await?;
    }
    if half_load {
        let offered = rate / 2.0;
        let count = (n / 2).max(100);
        let extra: Vec<String> = (0..count).map(|i| format!("h-{i:06}")).collect();
        let interval = Duration::from_secs_f64(1.0 / offered);
        let (latencies, _) = fleet.provision(&extra, Some(interval)).await?;
        provisioning["halfLoad"] = json!({
            "offeredPerSecond": round(offered),
            "tenants": count,
            "latency": latency_summary(latencies),
        });
    }
    let peak = json!({
        "provisionerMiB": round(sys::rss_mib(fleet.pid("provisioner")).1),
        "deployerMiB": round(sys::rss_mib(fleet.pid("deployer")).1),
    });
    fleet.fleet.stop();
    Ok((
        json!({
            "tenants": n,
            "provisioning": provisioning,
            "deploy": deploys,
            "gateway": gateway,
            "memory": {"idle": idle, "peak": peak},
        }),
        fleet,
    ))
}

/// The raw floors for N tenants: provisioning and both migrations, in-process on every core
/// and through the `sqlite3` shell (when it is installed). The folder is returned, to be
/// removed when the bench ends (see [`fleet_run`]).
pub async fn baselines(n: usize) -> anyhow::Result<(Value, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let scripts = provisioning_scripts(dir.path()).await?;
    let (v1, v2) = (crm("v1")?, crm("v2")?);
    let deploy = deploy_scripts(
        dir.path(),
        &scripts,
        &[("bench-v1", &v1), ("bench-v2", &v2)],
    )
    .await?;
    let mut out = json!({"provisioning": {}, "deploy": {"v1": {}, "v2": {}}});
    // The floor at the workers' concurrency (what the targets compare with), and with one job
    // per core (each in a folder of its own).
    for (label, concurrency) in [
        ("inProcess", baseline::concurrency()),
        ("inProcessPerCore", baseline::per_core()),
    ] {
        let backend = std::sync::Arc::new(LocalBackend::new(dir.path().join(label), ""));
        let s = std::sync::Arc::new(scripts.clone());
        // CPU of this process (all its threads) over the loop: what the same work costs per
        // tenant without the fleet around it.
        let cpu = sys::own_cpu_seconds;
        let per_tenant = |seconds: f64| round(seconds * 1e3 / n as f64);
        let (c0, m0) = (cpu(), sys::machine_ticks());
        let took = {
            let (backend, s) = (backend.clone(), s.clone());
            baseline::on_all_cores(n, concurrency, move |i| {
                let (backend, s) = (backend.clone(), s.clone());
                async move { baseline::provision_one(&backend, &s, &baseline::tenant(i)).await }
            })?
        };
        out["provisioning"][label] = json!({"tenantsPerSecond": round(n as f64 / took.as_secs_f64()), "concurrency": concurrency, "cpuMsPerTenant": per_tenant(cpu() - c0), "machineBusy": round(sys::busy_share(m0, sys::machine_ticks()))});
        for ((plan, registry), version) in deploy.iter().zip(["v1", "v2"]) {
            let work = std::sync::Arc::new((plan.clone(), registry.clone()));
            let backend = backend.clone();
            let (c0, m0) = (cpu(), sys::machine_ticks());
            let took = baseline::on_all_cores(n, concurrency, move |i| {
                let (backend, work) = (backend.clone(), work.clone());
                async move {
                    baseline::migrate_one(&backend, &work.0, &work.1, &baseline::tenant(i)).await
                }
            })?;
            out["deploy"][version][label] = json!({"tenantsPerSecond": round(n as f64 / took.as_secs_f64()), "concurrency": concurrency, "cpuMsPerTenant": per_tenant(cpu() - c0), "machineBusy": round(sys::busy_share(m0, sys::machine_ticks()))});
        }
    }
    if sys::sqlite3_version().is_some() {
        let shell = std::sync::Arc::new(LocalBackend::new(dir.path().join("shell"), ""));
        let script = baseline::shell_script(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
            &scripts.base,
            std::slice::from_ref(&scripts.seed),
        );
        let took = {
            let shell = shell.clone();
            let script = std::sync::Arc::new(script);
            baseline::on_all_cores(n, baseline::concurrency(), move |i| {
                let (shell, script) = (shell.clone(), script.clone());
                async move {
                    let (_, db, _) = baseline::paths(&shell, &baseline::tenant(i));
                    std::fs::create_dir_all(db.parent().context("a folder")?)?;
                    baseline::run_shell(&db, &script)
                }
            })?
        };
        out["provisioning"]["sqlite3"] =
            json!({"tenantsPerSecond": round(n as f64 / took.as_secs_f64())});
        for ((plan, registry), version) in deploy.iter().zip(["v1", "v2"]) {
            let script = std::sync::Arc::new(baseline::shell_script(
                "PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;",
                plan,
                registry,
            ));
            let shell = shell.clone();
            let took = baseline::on_all_cores(n, baseline::concurrency(), move |i| {
                let (shell, script) = (shell.clone(), script.clone());
                async move {
                    let (_, db, _) = baseline::paths(&shell, &baseline::tenant(i));
                    baseline::run_shell(&db, &script)
                }
            })?;
            out["deploy"][version]["sqlite3"] =
                json!({"tenantsPerSecond": round(n as f64 / took.as_secs_f64())});
        }
    }
    Ok((out, dir))
}

/// The floors of a run measured twice — right before the fleet runs and right after — as one:
/// each rate and CPU figure the mean of the two, both kept under `runs` (`[before, after]`).
/// The disk of a shared machine drifts over minutes (here the same floor measured from 330 to
/// 1 090 tenants/s across one hour); bracketing the fleet compares it with the floor of its
/// own minutes, and the two runs show how far the floor moved meanwhile.
pub fn bracketed(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) if b.contains_key("tenantsPerSecond") => {
            let mut out = b.clone();
            for key in ["tenantsPerSecond", "cpuMsPerTenant", "machineBusy"] {
                if let (Some(x), Some(y)) = (
                    b.get(key).and_then(Value::as_f64),
                    a.get(key).and_then(Value::as_f64),
                ) {
                    out.insert(key.to_owned(), json!(round((x + y) / 2.0)));
                }
            }
            out.insert("runs".to_owned(), json!([before, after]));
            Value::Object(out)
        }
        (Value::Object(b), Value::Object(a)) => Value::Object(
            b.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        a.get(k).map_or_else(|| v.clone(), |w| bracketed(v, w)),
                    )
                })
                .collect(),
        ),
        _ => before.clone(),
    }
}

/// A bundle of `n` objects of ten fields each (text, numbers, dates, a select, a lookup to
/// the previous object, indexes).
pub fn wide_bundle(n: usize) -> Value {
    let objects: Vec<Value> = (0..n)
        .map(|i| {
            let mut fields = json!({
                "title": {"type": "text", "required": true, "maxLength": 200},
                "code": {"type": "text", "unique": true},
                "amount": {"type": "currency"},
                "quantity": {"type": "number"},
                "active": {"type": "boolean"},
                "due": {"type": "date"},
                "email": {"type": "email"},
                "notes": {"type": "textarea"},
                "stage": {"type": "select", "options": [
                    {"label": "Open", "value": "open"}, {"label": "Done", "value": "done"}]},
            });
            if i > 0 {
                fields["parent"] =
                    json!({"type": "lookup", "reference": format!("object_{:02}", i - 1)});
            }
            json!({
                "name": format!("object_{i:02}"),
                "label": format!("Object {i}"),
                "namespace": "bench",
                "fields": fields,
                "indexes": [{"fields": ["title"]}],
            })
        })
        .collect();
    let names: Vec<String> = (0..n).map(|i| format!("object_{i:02}")).collect();
    json!({
        "manifest": {"version": "1.0.0", "objects": names, "createdAt": "2026-11-29T00:00:00Z"},
        "objects": objects,
    })
}

/// Median of `runs` timings of `f`.
async fn median<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let started = Instant::now();
        f(i).await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[runs / 2])
}

/// The schema engine alone: plan + apply of a 50-object bundle on a fresh database vs the
/// same DDL executed directly; introspecting the result (a catalog seen before, and one seen
/// for the first time) vs reading `sqlite_schema`; and the
/// hot paths of earlier benches (validation vs decode, cached handle vs open per request).
pub async fn engine() -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let bundle = wide_bundle(50);
    let objects = objects(&bundle)?;
    let probe = fleet_schema::open_local(&dir.path().join("probe.db")).await?;
    let planned = fleet_schema::plan_database(&probe, &objects, PlanOptions::default()).await?;
    let ddl: Vec<String> = planned
        .plan
        .statements
        .iter()
        .map(|s| s.sql.clone())
        .collect();
    let statements = ddl.len();
    let raw = median(15, |i| {
        let path = dir.path().join(format!("raw-{i}.db"));
        let ddl = ddl.join(";\n");
        async move {
            let conn = fleet_schema::open_local(&path).await?;
            conn.execute_batch(&format!("BEGIN; {ddl}; COMMIT;"))
                .await?;
            Ok(())
        }
    })
    .await?;
    let engine = median(15, |i| {
        let path = dir.path().join(format!("engine-{i}.db"));
        let objects = objects.clone();
        async move {
            let conn = fleet_schema::open_local(&path).await?;
            let planned =
                fleet_schema::plan_database(&conn, &objects, PlanOptions::default()).await?;
            fleet_schema::apply_plan(&conn, &planned.plan).await?;
            Ok(())
        }
    })
    .await?;
    let conn = fleet_schema::open_local(&dir.path().join("engine-0.db")).await?;
    let introspect = median(31, |_| {
        let conn = &conn;
        async move {
            std::hint::black_box(fleet_schema::introspect(conn).await?);
            Ok(())
        }
    })
    .await?;
    // A catalog introspected for the first time (introspection is cached by the catalog's
    // text): each run first adds a one-column table, untimed, so every run is a miss.
    let first = fleet_schema::open_local(&dir.path().join("engine-1.db")).await?;
    let mut misses = Vec::new();
    for i in 0..15 {
        first
            .execute(&format!("CREATE TABLE bench_probe_{i} (x)"), ())
            .await?;
        let started = std::time::Instant::now();
        std::hint::black_box(fleet_schema::introspect(&first).await?);
        misses.push(started.elapsed());
    }
    misses.sort();
    let introspect_first = misses[misses.len() / 2];
    let read_schema = median(31, |_| {
        let conn = &conn;
        async move {
            let mut rows = conn
                .query("SELECT type, name, tbl_name, sql FROM sqlite_schema", ())
                .await?;
            while let Some(row) = rows.next().await? {
                std::hint::black_box(row.get_value(3)?);
            }
            Ok(())
        }
    })
    .await?;
    let replan = median(31, |_| {
        let (conn, objects) = (&conn, &objects);
        async move {
            let planned =
                fleet_schema::plan_database(conn, objects, PlanOptions::default()).await?;
            anyhow::ensure!(planned.plan.statements.is_empty(), "a second plan is empty");
            Ok(())
        }
    })
    .await?;
    let document = crm("v1")?;
    let decode = median(201, |_| {
        let d = document.clone();
        async move {
            std::hint::black_box(serde_json::from_value::<DeployBundle>(d)?);
            Ok(())
        }
    })
    .await?;
    let validate = median(201, |_| {
        let d = document.clone();
        async move {
            std::hint::black_box(
                fleet_protocol::parse_value::<DeployBundle>(&d)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
            Ok(())
        }
    })
    .await?;
    let ms = |d: Duration| round(d.as_secs_f64() * 1e3);
    Ok(json!({
        "objects": 50,
        "statements": statements,
        "planApplyMs": ms(engine),
        "rawDdlMs": ms(raw),
        "introspectMs": ms(introspect),
        "introspectFirstMs": ms(introspect_first),
        "readSqliteSchemaMs": ms(read_schema),
        "replanUnchangedMs": ms(replan),
        "validateBundleMs": ms(validate),
        "decodeBundleMs": ms(decode),
    }))
}
