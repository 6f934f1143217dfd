//! A fleet under load: a local nats-server, the release worker binaries (one replica each) on
//! the shipped configuration, and an independent client that publishes commands the way the
//! upstream services do and waits for the hooks that end them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::sys;

/// The settings every bench worker runs with on top of the test overlay: production timings
/// (a 30 s ack wait, a 10 s provisioning lease), the baselines' concurrency
/// ([`crate::baseline::concurrency`], the shipped 16 unless `--concurrency` says otherwise) and
/// quiet logs.
fn worker_env() -> Vec<(&'static str, String)> {
    vec![
        ("FLEET_NATS__ACK_WAIT_MS", "30000".to_owned()),
        ("FLEET_PROVISIONER__LEASE_SECS", "10".to_owned()),
        (
            "FLEET_WORKER__CONCURRENCY",
            crate::baseline::concurrency().to_string(),
        ),
        ("FLEET_TELEMETRY__LOG_FILTER", "warn".to_owned()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// One fleet: server, folders, worker processes and a client.
pub struct BenchFleet {
    pub fleet: fleet_testkit::TestFleet,
    pub client: async_nats::Client,
    pub publisher: fleet_runtime::Publisher,
    workers: HashMap<&'static str, usize>,
}

impl std::fmt::Debug for BenchFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchFleet").finish_non_exhaustive()
    }
}

/// Where the release binaries are: beside this one (`just bench` builds them all).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `just bench` (it builds the release binaries)",
            path.display()
        );
    }
    Ok(path)
}

impl BenchFleet {
    /// A fresh fleet with one replica of each of `workers` (`provisioner`, `deployer`).
    pub async fn start(workers: &[&'static str]) -> anyhow::Result<Self> {
        let mut fleet = fleet_testkit::TestFleet::start("");
        let client = async_nats::connect(fleet.server.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        fleet_runtime::Topology::from_config(&fleet.config)
            .ensure(&client, &js)
            .await?;
        let mut indexes = HashMap::new();
        let env = worker_env();
        for name in workers {
            let index = fleet.spawn(binary(name)?, &env_refs(&env));
            indexes.insert(*name, index);
        }
        let publisher = fleet_runtime::Publisher::new(js);
        let this = Self {
            fleet,
            client,
            publisher,
            workers: indexes,
        };
        // Ready when each worker's consumer has a pull waiting (the worker is up).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(this)
    }

    /// Starts a gateway process (release build) on a free port: its base URL once it answers.
    pub async fn spawn_gateway(&mut self) -> anyhow::Result<String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut env = worker_env();
        env.push(("FLEET_GATEWAY__LISTEN", listen.clone()));
        let index = self.fleet.spawn(binary("gateway")?, &env_refs(&env));
        self.workers.insert("gateway", index);
        let base = format!("http://{listen}");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&listen).await.is_ok() {
                return Ok(base);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the gateway did not start:\n{}", self.fleet.log(index))
    }

    /// Process id of a worker.
    pub fn pid(&self, worker: &str) -> u32 {
        self.fleet.pid(self.workers[worker])
    }

    /// CPU seconds used so far by `worker` and by the nats-server.
    pub fn cpu(&self, worker: &str) -> (f64, f64) {
        (
            sys::cpu_seconds(self.pid(worker)),
            self.fleet.server.pid().map_or(0.0, sys::cpu_seconds),
        )
    }

    /// Subscribes to a hook subject; each hook's CloudEvent `subject` (the entity) arrives with
    /// the instant it was received.
    pub async fn hooks(
        &self,
        subject: &str,
    ) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(String, Value, Instant)>> {
        let mut subscription = self.client.subscribe(subject.to_owned()).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let at = Instant::now();
                let Ok(event) = serde_json::from_slice::<Value>(&message.payload) else {
                    continue;
                };
                let entity = event["subject"].as_str().unwrap_or_default().to_owned();
                if tx.send((entity, event["data"].clone(), at)).is_err() {
                    break;
                }
            }
        });
        self.client.flush().await?;
        Ok(rx)
    }

    /// Registers `tenants` (at most `window` publishes in flight, or one every `interval`),
    /// and waits until each is active: register → `hooks.tenant.created` latency of each, in
    /// milliseconds, and the time from the first publish to the last hook.
    pub async fn provision(
        &self,
        tenants: &[String],
        interval: Option<Duration>,
    ) -> anyhow::Result<(Vec<f64>, Duration)> {
        let mut hooks = self.hooks("hooks.tenant.created").await?;
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let started = Instant::now();
        let publishing = {
            let sent = sent.clone();
            let tenants = tenants.to_vec();
            let publisher = self.publisher.clone();
            let this = Registrar { publisher };
            tokio::spawn(async move {
                match interval {
                    None => {
                        futures::stream::iter(tenants)
                            .map(|tenant| {
                                let (sent, this) = (sent.clone(), this.clone());
                                async move {
                                    sent.lock().unwrap().insert(tenant.clone(), Instant::now());
                                    this.register(&tenant).await
                                }
                            })
                            .buffer_unordered(256)
                            .for_each(|r| async move { r.expect("tenant.created published") })
                            .await;
                    }
                    Some(interval) => {
                        let mut tick = tokio::time::interval(interval);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        for tenant in tenants {
                            tick.tick().await;
                            let (sent, this) = (sent.clone(), this.clone());
                            tokio::spawn(async move {
                                sent.lock().unwrap().insert(tenant.clone(), Instant::now());
                                this.register(&tenant)
                                    .await
                                    .expect("tenant.created published");
                            });
                        }
                    }
                }
            })
        };
        let mut latencies = Vec::with_capacity(tenants.len());
        let mut seen = std::collections::HashSet::new();
        let deadline = Duration::from_secs(120 + tenants.len() as u64 / 5);
        while latencies.len() < tenants.len() {
            let (tenant, _, at) = tokio::time::timeout(deadline, hooks.recv())
                .await
                .context("waiting for hooks.tenant.created")?
                .context("hook subscription ended")?;
            if !seen.insert(tenant.clone()) {
                continue;
            }
            let Some(sent) = sent.lock().unwrap().get(&tenant).copied() else {
                continue;
            };
            latencies.push(at.duration_since(sent).as_secs_f64() * 1e3);
        }
        let elapsed = started.elapsed();
        publishing.await?;
        Ok((latencies, elapsed))
    }

    /// Publishes `deploy.requested` for `bundle` to every active tenant in waves 1, 10 %,
    /// 100 %, and waits for the hook that ends it: its time and its hook data.
    pub async fn deploy(&self, id: &str, bundle: &Value) -> anyhow::Result<(Duration, Value)> {
        let mut completed = self.hooks("hooks.deploy.*").await?;
        let request = json!({
            "deploymentId": id,
            "bundle": bundle,
            "target": {"all": true},
            "rollout": {"waves": ["1", "10%", "100%"]},
        });
        let started = Instant::now();
        self.publisher
            .publish_json("deploy.requested", id, &request, HeaderMap::new())
            .await
            .context("publishing deploy.requested")?;
        loop {
            let (entity, data, at) =
                tokio::time::timeout(Duration::from_secs(1800), completed.recv())
                    .await
                    .context("waiting for the deployment's hook")?
                    .context("hook subscription ended")?;
            if entity == id && data.get("ready").is_some() {
                return Ok((at.duration_since(started), data));
            }
        }
    }
}

/// Publishes `tenant.created` as the registration service does (from many tasks at once).
#[derive(Clone)]
struct Registrar {
    publisher: fleet_runtime::Publisher,
}

impl Registrar {
    async fn register(&self, tenant: &str) -> anyhow::Result<()> {
        let payload = json!({
            "tenantId": tenant,
            "orgId": format!("org-{tenant}"),
            "plan": "pro",
            "region": "us-east",
            "displayName": format!("Tenant {tenant}"),
            "adminEmail": format!("admin@{tenant}.example"),
        });
        self.publisher
            .publish_json("tenant.created", tenant, &payload, HeaderMap::new())
            .await
            .context("publishing tenant.created")?;
        Ok(())
    }
}
