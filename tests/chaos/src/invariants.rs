//! The invariants every scenario must leave standing, checked from what the fleet wrote — the
//! tenants' database files, the KV records, the hooks and dead-letter streams, the worker
//! processes and their logs — never from what the workers said about themselves.
//!
//! A failing check names the tenants (or messages, or replicas) it failed for, the first few
//! tenants with their progress history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fleet_protocol::TenantId;
use fleet_runtime::{CloudEvent, DeadLetter};
use fleet_schema::{Owner, PlanOptions};
use secrecy::ExposeSecret;

use crate::harness::Chaos;
use crate::workload::{Expected, Inputs};

/// One invariant's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    /// Its short name (a column of the report).
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// What it counted (tenants, letters, replicas, lines).
    pub count: usize,
    /// Why not, item by item.
    pub detail: Vec<String>,
}

impl Check {
    fn new(name: &'static str, count: usize, detail: Vec<String>) -> Self {
        Self {
            name,
            ok: detail.is_empty(),
            count,
            detail,
        }
    }
}

/// The names of every invariant, in report order.
pub const NAMES: [&str; 7] = [
    "terminal",
    "one db, one hook",
    "schema",
    "dead letters",
    "workers",
    "files",
    "secrets",
];

/// Every database file of the local backend under `data`: tenant id → paths.
fn database_files(data: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for path in files_under(data) {
        if path.extension().is_some_and(|e| e == "db")
            && let Some(stem) = path.file_stem()
        {
            out.entry(stem.to_string_lossy().into_owned())
                .or_default()
                .push(path);
        }
    }
    out
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The progress history of `tenant`, one line per transition.
pub async fn history(chaos: &Chaos, tenant: &str) -> Vec<String> {
    fleet_testkit::stream_messages(
        &chaos.js,
        "FLEET_PROGRESS",
        Some(&format!("progress.tenant.{tenant}")),
    )
    .await
    .iter()
    .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
    .collect()
}

async fn with_histories(chaos: &Chaos, mut detail: Vec<String>, tenants: &[String]) -> Vec<String> {
    for tenant in tenants.iter().take(3) {
        detail.push(format!("history of {tenant}:"));
        for line in history(chaos, tenant).await {
            detail.push(format!("    {line}"));
        }
    }
    detail
}

/// Where the tenants' databases are, for the "one database each" check.
#[derive(Debug, Clone, Copy)]
pub enum Databases<'a> {
    /// Files of the local backend under the configured data dir.
    Local,
    /// Databases of the Turso Platform API double.
    Turso(&'a fleet_testkit::turso::TursoDouble),
}

/// Checks every invariant after a scenario's work (and its recovery) is done.
pub async fn check_all(
    chaos: &Chaos,
    expected: &Expected,
    inputs: &Inputs,
    databases: Databases<'_>,
) -> Vec<Check> {
    let data = chaos.config.tenantdb.data_dir.clone();
    let found = match databases {
        Databases::Local => database_files(Path::new(&data))
            .into_iter()
            .map(|(tenant, paths)| (tenant, paths.len()))
            .collect(),
        Databases::Turso(double) => {
            let prefix = &chaos.config.tenantdb.database_prefix;
            double
                .databases()
                .into_iter()
                .map(|name| {
                    (
                        name.strip_prefix(prefix.as_str())
                            .unwrap_or(&name)
                            .to_owned(),
                        1,
                    )
                })
                .collect()
        }
    };
    vec![
        terminal(chaos, expected).await,
        one_db_one_hook(chaos, expected, &found).await,
        schema(chaos, expected, inputs).await,
        dead_letters(chaos, expected).await,
        workers(chaos).await,
        files(chaos).await,
        secrets(chaos, expected).await,
    ]
}

async fn terminal(chaos: &Chaos, expected: &Expected) -> Check {
    use fleet_runtime::topology::names;
    let mut detail = Vec::new();
    let mut failing = Vec::new();
    for tenant in &expected.tenants {
        let status = crate::workload::value(chaos, names::TENANTS, tenant)
            .await
            .map(|r| r["status"].as_str().unwrap_or("?").to_owned());
        if status.as_deref() != Some("active") {
            detail.push(format!("tenant {tenant}: {status:?}, not active"));
            failing.push(tenant.clone());
        }
    }
    if let Some(id) = &expected.deployment {
        let record = crate::workload::value(chaos, names::DEPLOYMENTS, id).await;
        let status = record
            .as_ref()
            .and_then(|r| r["status"].as_str().map(str::to_owned));
        let ready = record
            .as_ref()
            .and_then(|r| r["tally"]["ready"].as_u64())
            .unwrap_or(0);
        if status.as_deref() != Some("completed") || ready != expected.tenants.len() as u64 {
            detail.push(format!(
                "deployment {id}: {status:?} with {ready} ready of {}",
                expected.tenants.len()
            ));
        }
    }
    for tenant in &expected.app_tenants {
        let key = fleet_apps::InstallRecord::key(tenant, "contacts");
        let status = crate::workload::value(chaos, names::INSTALLS, &key)
            .await
            .map(|r| r["status"].as_str().unwrap_or("?").to_owned());
        if status.as_deref() != Some("active") {
            detail.push(format!("contacts in {tenant}: {status:?}, not active"));
            failing.push(tenant.clone());
        }
    }
    let count = expected.tenants.len() + expected.app_tenants.len();
    let detail = if detail.is_empty() {
        detail
    } else {
        with_histories(chaos, detail, &failing).await
    };
    Check::new("terminal", count, detail)
}

async fn one_db_one_hook(
    chaos: &Chaos,
    expected: &Expected,
    files: &BTreeMap<String, usize>,
) -> Check {
    let mut detail = Vec::new();
    for (tenant, n) in files {
        if !expected.tenants.contains(tenant) {
            detail.push(format!("a database for no valid tenant: {tenant}"));
        } else if *n != 1 {
            detail.push(format!("{tenant} has {n} databases"));
        }
    }
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for message in
        fleet_testkit::stream_messages(&chaos.js, "FLEET_HOOKS", Some("hooks.tenant.created")).await
    {
        if let Ok(event) = serde_json::from_slice::<CloudEvent>(&message.payload) {
            *created.entry(event.subject).or_default() += 1;
        }
    }
    for tenant in &expected.tenants {
        if !files.contains_key(tenant) {
            detail.push(format!("{tenant} has no database"));
        }
        match created.get(tenant).copied().unwrap_or(0) {
            1 => {}
            n => detail.push(format!("{tenant}: {n} hooks.tenant.created")),
        }
    }
    for (tenant, n) in &created {
        if !expected.tenants.contains(tenant) {
            detail.push(format!(
                "{n} hooks.tenant.created for {tenant}, never validly registered"
            ));
        }
    }
    Check::new("one db, one hook", expected.tenants.len(), detail)
}

/// Opens tenants' databases the way every worker does: the record's sealed token, opened with
/// the key ring, through the configured backend (local files or Turso over Hrana).
async fn connector(chaos: &Chaos) -> anyhow::Result<fleet_control::TenantConnector> {
    let runtime = fleet_runtime::Runtime::connect(&chaos.config).await?;
    Ok(fleet_control::TenantConnector::new(
        fleet_control::tenants(&runtime).await?,
        fleet_tenantdb::backend_from_config(&chaos.config)?,
        std::sync::Arc::new(fleet_tenantdb::key_ring_from_config(&chaos.config)?),
    ))
}

async fn schema(chaos: &Chaos, expected: &Expected, inputs: &Inputs) -> Check {
    let mut detail = Vec::new();
    let connector = match connector(chaos).await {
        Ok(connector) => connector,
        Err(e) => return Check::new("schema", 0, vec![format!("cannot open databases: {e:#}")]),
    };
    let platform = match inputs.bundle.object_definitions() {
        Ok(objects) => fleet_schema::system::with_system_objects(&objects),
        Err(e) => return Check::new("schema", 0, vec![format!("the bundle: {e}")]),
    };
    let app = match inputs.app.object_definitions() {
        Ok(objects) => objects,
        Err(e) => return Check::new("schema", 0, vec![format!("the app: {e}")]),
    };
    let owner = Owner::App(inputs.app.manifest.name.as_str().to_owned());
    let mut failing = Vec::new();
    for tenant in &expected.tenants {
        let Ok(id) = TenantId::parse(tenant.clone()) else {
            continue;
        };
        let conn = match connector.connect(&id).await {
            Ok((_, conn)) => conn,
            Err(e) => {
                detail.push(format!("{tenant}: cannot open its database: {e}"));
                failing.push(tenant.clone());
                continue;
            }
        };
        let mut problems = Vec::new();
        if expected.deployment.is_some() {
            match fleet_schema::plan_database(&conn, &platform, PlanOptions::default()).await {
                Ok(planned) if planned.plan.statements.is_empty() => {}
                Ok(planned) => problems.push(format!(
                    "the bundle is not in place: {} statement(s) still to run, first {:?}",
                    planned.plan.statements.len(),
                    planned.plan.statements[0].sql
                )),
                Err(e) => problems.push(format!("planning the bundle: {e}")),
            }
        }
        if expected.app_tenants.contains(tenant) {
            match fleet_schema::plan_database_for(&conn, &app, PlanOptions::default(), &owner).await
            {
                Ok(planned) if planned.plan.statements.is_empty() => {}
                Ok(planned) => problems.push(format!(
                    "the app is not in place: {} statement(s) still to run",
                    planned.plan.statements.len()
                )),
                Err(e) => problems.push(format!("planning the app: {e}")),
            }
        }
        if let Ok(mut rows) = conn
            .query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_fleet\\_%' ESCAPE '\\'",
                (),
            )
            .await
        {
            while let Ok(Some(row)) = rows.next().await {
                problems.push(format!(
                    "a half-finished migration left table {}",
                    row.get::<String>(0).unwrap_or_default()
                ));
            }
        }
        if !problems.is_empty() {
            detail.push(format!("{tenant}: {}", problems.join("; ")));
            failing.push(tenant.clone());
        }
    }
    let detail = if detail.is_empty() {
        detail
    } else {
        with_histories(chaos, detail, &failing).await
    };
    Check::new("schema", expected.tenants.len(), detail)
}

/// The dead letters, by the message id they were published under.
async fn letters(chaos: &Chaos) -> Vec<DeadLetter> {
    fleet_testkit::stream_messages(&chaos.js, "FLEET_DEAD_LETTERS", None)
        .await
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

fn message_id(letter: &DeadLetter) -> String {
    letter
        .headers
        .get("Nats-Msg-Id")
        .and_then(|v| v.first())
        .cloned()
        .unwrap_or_default()
}

async fn dead_letters(chaos: &Chaos, expected: &Expected) -> Check {
    let mut detail = Vec::new();
    let letters = letters(chaos).await;
    let mut seen = BTreeSet::new();
    for letter in &letters {
        let id = message_id(letter);
        if expected.valid_ids.contains(&id) {
            detail.push(format!(
                "a valid command is dead-lettered: {} {id}: {}",
                letter.subject, letter.error
            ));
        } else if !expected.bad_ids.contains(&id) {
            detail.push(format!(
                "an unexpected dead letter: {} {id:?}: {}",
                letter.subject, letter.error
            ));
        }
        if letter.error.trim().is_empty() || letter.reason.is_empty() {
            detail.push(format!("dead letter {id:?} has no reason"));
        }
        seen.insert(id);
    }
    let missing: Vec<&String> = expected.bad_ids.difference(&seen).collect();
    if !missing.is_empty() {
        detail.push(format!(
            "{} bad command(s) not in the dead-letter stream, e.g. {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        ));
    }
    Check::new("dead letters", letters.len(), detail)
}

async fn workers(chaos: &Chaos) -> Check {
    let exits = chaos.unexpected_exits().await;
    let count = chaos.replicas.lock().await.len();
    Check::new("workers", count, exits)
}

async fn files(chaos: &Chaos) -> Check {
    let fleet = chaos.fleet.lock().await;
    let mut stray = files_under(&fleet.work_dir());
    stray.extend(files_under(&fleet.tmp_dir()));
    let detail = stray
        .iter()
        .map(|p| format!("written outside the data dir: {}", p.display()))
        .collect();
    Check::new("files", stray.len(), detail)
}

async fn secrets(chaos: &Chaos, expected: &Expected) -> Check {
    use fleet_runtime::topology::names;
    let mut secrets: Vec<(String, String)> = chaos
        .config
        .secrets
        .keys
        .iter()
        .map(|(id, key)| (format!("key {id}"), key.clone()))
        .collect();
    if let Ok(keys) = fleet_tenantdb::key_ring_from_config(&chaos.config) {
        for tenant in &expected.tenants {
            let Some(record) = crate::workload::value(chaos, names::TENANTS, tenant).await else {
                continue;
            };
            let Ok(record) = serde_json::from_value::<fleet_tenants::machine::TenantRecord>(record)
            else {
                continue;
            };
            if let (Some(connection), Ok(id)) = (record.connection, TenantId::parse(tenant.clone()))
                && let Ok(Some(token)) = connection.auth_token(&id, &keys)
            {
                secrets.push((
                    format!("{tenant}'s token"),
                    token.expose_secret().to_owned(),
                ));
            }
        }
    }
    let mut texts: Vec<(String, String)> = chaos.logs().await.into_iter().collect();
    for letter in letters(chaos).await {
        texts.push((
            format!("dead letter {}", message_id(&letter)),
            serde_json::to_string(&letter).unwrap_or_default(),
        ));
    }
    let mut detail = Vec::new();
    for (what, secret) in &secrets {
        if secret.len() < 8 {
            continue;
        }
        for (place, text) in &texts {
            if text.contains(secret.as_str()) {
                detail.push(format!("{what} appears in {place}"));
            }
        }
    }
    // Counted: the secrets looked for (the key ring's keys, every tenant's token).
    Check::new("secrets", secrets.len(), detail)
}
