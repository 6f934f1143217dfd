//! The raw floors the fleet is measured against, run in the same process and the same hour:
//! the same database work with nothing of the fleet around it — no NATS, no state machine,
//! no retries — on every core, and the same SQL through the `sqlite3` shell, one process per
//! tenant, as a script would.
//!
//! Same work means: the files the local backend keeps (the tenant's database in WAL mode, its
//! `.meta.json` token record written durably once: temp file, fsync, rename, directory fsync),
//! the same pragmas (`journal_mode = WAL`, `synchronous = FULL`, `foreign_keys = ON`), and the
//! same statements (the planned base schema and the seed row; a deployment's planned DDL and
//! its registry rows, through the same transaction code).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_protocol::{DatabaseName, TenantId};
use fleet_schema::BoundStatement;
use fleet_tenantdb::LocalBackend;

/// The SQL of provisioning and of a deployment, planned once on probe databases.
#[derive(Debug, Clone)]
pub struct Scripts {
    /// The base schema's plan.
    pub base: fleet_protocol::MigrationPlan,
    /// The seed row (the admin user), bound.
    pub seed: BoundStatement,
}

/// The shipped configuration's `worker.concurrency` (config/default.toml).
pub const SHIPPED_CONCURRENCY: usize = 16;

static CONCURRENCY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sets [`concurrency`] for this run (`--concurrency`); the first call wins.
pub fn set_concurrency(jobs: usize) {
    let _ = CONCURRENCY.set(jobs);
}

/// Jobs the baselines run at once: the workers' concurrency (`worker.concurrency`, the
/// shipped configuration's unless `--concurrency` says otherwise; the bench's workers run with
/// the same), each on a thread of its own (libSQL's local engine blocks its thread while it
/// waits for the disk), over all cores.
pub fn concurrency() -> usize {
    *CONCURRENCY.get_or_init(|| SHIPPED_CONCURRENCY)
}

/// One job per core: the floor without overlapping waits for the disk (for context).
pub fn per_core() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `work(i)` for `i` in `0..n`, `concurrency` at a time on threads of their own (each
/// with a runtime), on every core; returns the elapsed time.
pub fn on_all_cores<F, Fut>(n: usize, concurrency: usize, work: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (work, next) = (work.clone(), next.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        work(i).await?;
                    }
                })
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a baseline thread panicked"))??;
    }
    Ok(started.elapsed())
}

/// The tenant ids of a run.
pub fn tenant(i: usize) -> TenantId {
    TenantId::parse(format!("raw-{i:06}")).expect("a valid tenant id")
}

/// Where the local backend keeps `tenant`'s files under `root`.
pub fn paths(backend: &LocalBackend, tenant: &TenantId) -> (DatabaseName, PathBuf, PathBuf) {
    use fleet_tenantdb::TenantDatabases;
    let name = backend.database_name(tenant);
    (
        name.clone(),
        backend.database_path(&name),
        backend.record_path(&name),
    )
}

/// A token record written the way the local backend makes one durable: temp file, fsync,
/// rename, directory fsync.
fn write_record(record: &Path, tenant: &TenantId) -> anyhow::Result<()> {
    let dir = record.parent().context("a record has a folder")?;
    std::fs::create_dir_all(dir)?;
    let tmp = record.with_extension("json.tmp");
    let body = serde_json::json!({
        "tenant": tenant, "group": "local", "dbId": format!("{:032x}", rand_u128(tenant)),
        "tokens": [{"sha256": format!("{:064x}", rand_u128(tenant)), "scope": "full-access", "expiresAt": null}],
    });
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(serde_json::to_string_pretty(&body)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, record)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn rand_u128(tenant: &TenantId) -> u128 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tenant.hash(&mut h);
    u128::from(h.finish())
}

/// Opens a tenant database with the fleet's connection pragmas.
pub async fn connect(path: &Path) -> anyhow::Result<libsql::Connection> {
    let db = libsql::Builder::new_local(path).build().await?;
    let conn = db.connect()?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
        .await?;
    Ok(conn)
}

/// One tenant's provisioning, done by hand: record, database in WAL mode, base schema and
/// seed in one transaction.
pub async fn provision_one(
    backend: &LocalBackend,
    scripts: &Scripts,
    tenant: &TenantId,
) -> anyhow::Result<()> {
    let (_, db, record) = paths(backend, tenant);
    write_record(&record, tenant)?;
    let conn = connect(&db).await?;
    let mut rows = conn.query("PRAGMA journal_mode = WAL", ()).await?;
    while rows.next().await?.is_some() {}
    drop(rows);
    fleet_schema::apply_plan_with(&conn, &scripts.base, std::slice::from_ref(&scripts.seed))
        .await?;
    Ok(())
}

/// One tenant's migration, done by hand: `plan` and `registry` in one transaction.
pub async fn migrate_one(
    backend: &LocalBackend,
    plan: &fleet_protocol::MigrationPlan,
    registry: &[BoundStatement],
    tenant: &TenantId,
) -> anyhow::Result<()> {
    let (_, db, _) = paths(backend, tenant);
    let conn = connect(&db).await?;
    fleet_schema::apply_plan_with(&conn, plan, registry).await?;
    Ok(())
}

/// SQL text of `statements` with their parameters inlined as literals (for the shell).
pub fn inline(statement: &BoundStatement) -> String {
    let mut sql = statement.sql.clone();
    for (i, value) in statement.params.iter().enumerate().rev() {
        let literal = match value {
            libsql::Value::Null => "NULL".to_owned(),
            libsql::Value::Integer(n) => n.to_string(),
            libsql::Value::Real(x) => x.to_string(),
            libsql::Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
            libsql::Value::Blob(b) => format!(
                "X'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        };
        sql = sql.replace(&format!("?{}", i + 1), &literal);
    }
    sql
}

/// The shell script of a plan plus bound statements, in one transaction.
pub fn shell_script(
    pragmas: &str,
    plan: &fleet_protocol::MigrationPlan,
    after: &[BoundStatement],
) -> String {
    let mut script = format!("{pragmas}\nBEGIN IMMEDIATE;\n");
    for statement in &plan.statements {
        script.push_str(&statement.sql);
        script.push_str(";\n");
    }
    for statement in after {
        script.push_str(&inline(statement));
        script.push_str(";\n");
    }
    script.push_str("COMMIT;\n");
    script
}

/// Runs `script` through `sqlite3 <db>` (one process).
pub fn run_shell(db: &Path, script: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("sqlite3")
        .arg("-bail")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting sqlite3")?;
    child
        .stdin
        .take()
        .context("sqlite3's stdin")?
        .write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        anyhow::bail!(
            "sqlite3 {}: {}",
            db.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
