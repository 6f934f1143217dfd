//! The work every scenario asks of the fleet, sent the way upstream services send it:
//! registrations (`tenant.created`), a CRM bundle deployed to every tenant in waves
//! (`deploy.requested`), the contacts app installed into some (`app.install_requested`) — and
//! the waits for each to reach its terminal state, read from the workers' KV records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use fleet_protocol::{AppPackage, DeployBundle};
use serde_json::{Value, json};

use crate::harness::{Chaos, Published};

/// What the workload asked for, for the invariants to check against.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Tenants registered with a valid request.
    pub tenants: BTreeSet<String>,
    /// The deployment (id) sent to every tenant, if one was.
    pub deployment: Option<String>,
    /// Tenants the app was installed into.
    pub app_tenants: BTreeSet<String>,
    /// Message ids of valid commands (none may end in the dead-letter stream).
    pub valid_ids: BTreeSet<String>,
    /// Message ids of bad commands stored in a stream (each must end in the dead-letter
    /// stream, with a reason).
    pub bad_ids: BTreeSet<String>,
    /// Bad commands the boundary refused (too large) or dropped (a reused id): never delivered.
    pub bad_refused: usize,
}

/// The workload's inputs: the CRM bundle and the contacts app, from `examples/`.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `examples/crm-v1.bundle.json`, as sent.
    pub bundle_json: Value,
    /// The same, parsed.
    pub bundle: DeployBundle,
    /// `examples/apps/contacts-1.0.0`, parsed.
    pub app: AppPackage,
}

impl Inputs {
    /// Reads them from the repository at `root`.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(root.join("examples/crm-v1.bundle.json"))?;
        let bundle_json: Value = serde_json::from_str(&text)?;
        let bundle = fleet_protocol::parse_value::<DeployBundle>(&bundle_json)
            .map_err(|e| anyhow::anyhow!("crm-v1: {e}"))?
            .value;
        let app = fleet_apps::package::load(&root.join("examples/apps/contacts-1.0.0"))
            .map_err(|e| anyhow::anyhow!("contacts: {e}"))?
            .value;
        Ok(Self {
            bundle_json,
            bundle,
            app,
        })
    }
}

/// A tenant id for the `n`th tenant of a scenario.
pub fn tenant_id(scenario: &str, n: usize) -> String {
    format!("{scenario}-{n:05}")
}

/// Publishes `tenant.created` for each id (valid requests), recording them.
pub async fn register(
    chaos: &Chaos,
    expected: &mut Expected,
    ids: &[String],
) -> anyhow::Result<()> {
    for id in ids {
        let payload =
            json!({"tenantId": id, "orgId": "org_chaos", "plan": "pro", "region": "us-east"});
        match chaos
            .publish("tenant.created", id, serde_json::to_vec(&payload)?, &[])
            .await?
        {
            Published::Stored | Published::Duplicate => {}
            Published::Refused => bail!("tenant.created for {id} was refused"),
        }
        expected.tenants.insert(id.clone());
        expected.valid_ids.insert(id.clone());
    }
    Ok(())
}

/// The JSON value of `key` in the bucket `name` (`None`: absent, deleted, or the broker is away).
pub async fn value(chaos: &Chaos, name: &str, key: &str) -> Option<Value> {
    let store = chaos.store(name).await.ok()?;
    let bytes = store.get(key).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Waits until every tenant of `ids` has a record whose `status` is in `done`, reading the
/// still-waiting ones every half second, for at most `limit`. Returns the ids still waiting
/// with their last status.
pub async fn wait_tenants(
    chaos: &Chaos,
    ids: &BTreeSet<String>,
    done: &[&str],
    limit: Duration,
) -> BTreeMap<String, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut waiting: BTreeMap<String, String> =
        ids.iter().map(|id| (id.clone(), "none".into())).collect();
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        let keys: Vec<String> = waiting.keys().cloned().collect();
        for id in keys {
            if let Some(record) = value(chaos, fleet_runtime::topology::names::TENANTS, &id).await {
                let status = record["status"].as_str().unwrap_or("?").to_owned();
                if done.contains(&status.as_str()) {
                    waiting.remove(&id);
                } else {
                    waiting.insert(id, status);
                }
            }
        }
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    waiting
}

/// Requests the CRM bundle on every active tenant in waves under `id`.
pub async fn deploy_all(
    chaos: &Chaos,
    expected: &mut Expected,
    inputs: &Inputs,
    id: &str,
) -> anyhow::Result<()> {
    let request = json!({
        "deploymentId": id,
        "bundle": inputs.bundle_json,
        "target": {"all": true},
        "rollout": {"waves": ["1", "10%", "100%"], "maxFailureRatio": 0.2},
    });
    chaos
        .publish("deploy.requested", id, serde_json::to_vec(&request)?, &[])
        .await?;
    expected.deployment = Some(id.to_owned());
    expected.valid_ids.insert(id.to_owned());
    Ok(())
}

/// Waits until deployment `id` ends (any status but `running`/`rolling_back`), at most
/// `limit`. Its final record, or the last seen.
pub async fn wait_deployment(chaos: &Chaos, id: &str, limit: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = value(chaos, fleet_runtime::topology::names::DEPLOYMENTS, id)
            .await
            .or(last);
        if let Some(record) = &last
            && !matches!(
                record["status"].as_str(),
                Some("running" | "rolling_back") | None
            )
        {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

/// Waits until the work queues of the workers the scenario runs are quiet, at most `limit`:
/// each one's durable consumer has no message waiting and none delivered but unsettled
/// (`num_pending` and `num_ack_pending` both 0). A record's terminal status is not the end of
/// its work: a worker SIGKILLed between the write that activates a tenant and the publish of its
/// hook leaves the hook pending in the record, and the message's redelivery (after `ack_wait`)
/// publishes it. The invariants are about where the fleet comes to rest, so they are read once
/// it has (three quiet samples in a row). Returns the consumers still busy, with their
/// counts.
pub async fn wait_quiet(chaos: &Chaos, limit: Duration) -> Vec<String> {
    let running: BTreeSet<&'static str> = chaos
        .replicas
        .lock()
        .await
        .iter()
        .map(|r| r.worker)
        .collect();
    let topology = fleet_runtime::Topology::from_config(&chaos.config);
    let consumers: Vec<_> = topology
        .consumers
        .iter()
        .filter(|c| running.contains(c.durable.as_str()))
        .collect();
    let deadline = tokio::time::Instant::now() + limit;
    // Quiet three samples in a row (half a second): one quiet sample can fall between an ack
    // and the work it published.
    let mut quiet = 0;
    loop {
        let mut busy = Vec::new();
        for spec in &consumers {
            let info = match chaos.js.get_stream(&spec.stream).await {
                Ok(stream) => stream
                    .consumer_info(&spec.durable)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match info {
                Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
                Ok(info) => busy.push(format!(
                    "{}: {} pending, {} delivered and unsettled",
                    spec.durable, info.num_pending, info.num_ack_pending
                )),
                Err(e) => busy.push(format!("{}: {e}", spec.durable)),
            }
        }
        quiet = if busy.is_empty() { quiet + 1 } else { 0 };
        if quiet == 3 || tokio::time::Instant::now() >= deadline {
            return busy;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Requests the contacts app on each of `tenants`.
pub async fn install(
    chaos: &Chaos,
    expected: &mut Expected,
    inputs: &Inputs,
    tenants: &[String],
) -> anyhow::Result<()> {
    for tenant in tenants {
        let command = json!({
            "tenantId": tenant,
            "appId": inputs.app.manifest.name.as_str(),
            "package": inputs.app,
        });
        let id = format!("install:{tenant}:contacts:1.0.0");
        chaos
            .publish(
                "app.install_requested",
                &id,
                serde_json::to_vec(&command)?,
                &[],
            )
            .await?;
        expected.app_tenants.insert(tenant.clone());
        expected.valid_ids.insert(id);
    }
    Ok(())
}

/// Waits until every install of the app into `tenants` is `active` (or `failed`), at most
/// `limit`. The tenants still waiting, with their last status.
pub async fn wait_installs(
    chaos: &Chaos,
    tenants: &BTreeSet<String>,
    app: &str,
    limit: Duration,
) -> BTreeMap<String, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut waiting: BTreeMap<String, String> =
        tenants.iter().map(|t| (t.clone(), "none".into())).collect();
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        let keys: Vec<String> = waiting.keys().cloned().collect();
        for tenant in keys {
            let key = fleet_apps::InstallRecord::key(&tenant, app);
            if let Some(record) = value(chaos, fleet_runtime::topology::names::INSTALLS, &key).await
            {
                let status = record["status"].as_str().unwrap_or("?").to_owned();
                if matches!(status.as_str(), "active" | "failed") {
                    waiting.remove(&tenant);
                } else {
                    waiting.insert(tenant, status);
                }
            }
        }
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    waiting
}
