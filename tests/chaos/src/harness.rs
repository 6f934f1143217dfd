//! One fleet under chaos: a [`TestFleet`] (its own nats-server, folders and configuration), the
//! real worker binaries as replicas that can be SIGKILLed and restarted, and a client publishing
//! the way upstream services do (every publish with its `Nats-Msg-Id`, retried until JetStream
//! acknowledges it, so a broker restart loses no command).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use fleet_testkit::TestFleet;
use tokio::sync::Mutex;

/// The workers a scenario can run.
pub const WORKERS: [&str; 4] = ["provisioner", "deployer", "installer", "quota-auditor"];

/// Settings every chaos worker runs with on top of the e2e overlay: production-like leases and
/// concurrency, logs at `info` (every line of which the secret check reads).
pub const WORKER_ENV: &[(&str, &str)] = &[
    ("FLEET_WORKER__CONCURRENCY", "16"),
    ("FLEET_TELEMETRY__LOG_FILTER", "info"),
];

/// One worker replica.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The worker (binary) name.
    pub worker: &'static str,
    /// Its index in the [`TestFleet`].
    pub index: usize,
    /// Whether the chaos killed it (its exit is expected).
    pub killed: bool,
}

/// What publishing one message came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored in its stream.
    Stored,
    /// Dropped by JetStream as a duplicate of an id it already has (within the window).
    Duplicate,
    /// Refused by the server or the stream (too large, over `max_msg_size`, …).
    Refused,
}

/// The fleet and its replicas, shared between the workload and the chaos loops.
pub struct Chaos {
    /// The fleet (server, folders, configuration, processes).
    pub fleet: Mutex<TestFleet>,
    /// Replicas started so far.
    pub replicas: Mutex<Vec<Replica>>,
    /// The client (reconnects by itself after a broker restart).
    pub client: async_nats::Client,
    /// JetStream over it.
    pub js: async_nats::jetstream::Context,
    /// The fleet's configuration.
    pub config: fleet_config::Config,
    bins: PathBuf,
    env: Vec<(String, String)>,
    /// KV stores opened so far, by bucket name: the waits read thousands of keys, and opening
    /// a store is a JetStream request of its own.
    stores: std::sync::Mutex<BTreeMap<String, async_nats::jetstream::kv::Store>>,
}

impl Drop for Chaos {
    /// With `FLEET_CHAOS_KEEP=<dir>`, copies the fleet's folder (logs, config, tenant files)
    /// there before it is removed, for a post-mortem.
    fn drop(&mut self) {
        if let Some(keep) = std::env::var_os("FLEET_CHAOS_KEEP") {
            let fleet = self.fleet.get_mut();
            let to = PathBuf::from(keep).join(format!(
                "fleet-{}-{}",
                std::process::id(),
                chrono::Utc::now().format("%H%M%S%3f")
            ));
            let _ = std::fs::create_dir_all(&to);
            let _ = std::process::Command::new("cp")
                .arg("-a")
                .arg(fleet.dir.path())
                .arg(&to)
                .status();
            eprintln!("chaos: the fleet's folder is kept in {}", to.display());
        }
    }
}

impl std::fmt::Debug for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos").finish_non_exhaustive()
    }
}

impl Chaos {
    /// A fresh fleet (`overlay` appended to the e2e configuration, `tenantdb` lines added to its
    /// `[tenantdb]` table) with `replicas` of each of `workers`, binaries from `bins`, `env` on
    /// top of [`WORKER_ENV`].
    pub async fn start(
        bins: &Path,
        overlay: &str,
        tenantdb: &str,
        workers: &[(&'static str, usize)],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Arc<Self>> {
        for (worker, _) in workers {
            let path = bins.join(worker);
            if !path.exists() {
                bail!(
                    "{} is missing: build the workers first (`just chaos` does)",
                    path.display()
                );
            }
        }
        let mut fleet = TestFleet::start(overlay);
        if !tenantdb.is_empty() {
            let path = fleet.config_dir().join("e2e.toml");
            let text = std::fs::read_to_string(&path)?.replacen(
                "[tenantdb]\n",
                &format!("[tenantdb]\n{tenantdb}\n"),
                1,
            );
            std::fs::write(&path, text)?;
            fleet.config = fleet_config::Config::load_from(&fleet_config::ConfigSource {
                dir: fleet.config_dir(),
                env: "e2e".into(),
            })?;
        }
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(fleet.server.url())
            .await?;
        let js = async_nats::jetstream::new(client.clone());
        fleet_runtime::Topology::from_config(&fleet.config)
            .ensure(&client, &js)
            .await?;
        let config = fleet.config.clone();
        let chaos = Arc::new(Self {
            fleet: Mutex::new(fleet),
            replicas: Mutex::new(Vec::new()),
            client,
            js,
            config,
            bins: bins.to_owned(),
            stores: Default::default(),
            env: WORKER_ENV
                .iter()
                .chain(env)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        for (worker, count) in workers {
            for _ in 0..*count {
                chaos.spawn(worker).await;
            }
        }
        // Each worker ensures the topology and starts pulling within a second or so.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(chaos)
    }

    /// The topology's KV bucket `name` (a name of [`fleet_runtime::topology::names`]), opened
    /// once and kept (a store outlives a broker restart: it is a name on the JetStream context).
    pub async fn store(&self, name: &str) -> anyhow::Result<async_nats::jetstream::kv::Store> {
        if let Some(store) = self
            .stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(store.clone());
        }
        let topology = fleet_runtime::Topology::from_config(&self.config);
        let spec = topology
            .bucket(name)
            .with_context(|| format!("bucket {name}"))?;
        let store = self.js.get_key_value(&spec.bucket).await?;
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), store.clone());
        Ok(store)
    }

    /// Starts one more replica of `worker`.
    pub async fn spawn(&self, worker: &'static str) -> usize {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let index = self.fleet.lock().await.spawn(self.bins.join(worker), &env);
        self.replicas.lock().await.push(Replica {
            worker,
            index,
            killed: false,
        });
        index
    }

    /// SIGKILLs one live replica picked at random and starts a new one of the same worker.
    /// Returns the worker killed.
    pub async fn kill_random(&self) -> Option<&'static str> {
        let victim = {
            let mut replicas = self.replicas.lock().await;
            let live: Vec<usize> = (0..replicas.len())
                .filter(|i| !replicas[*i].killed)
                .collect();
            if live.is_empty() {
                return None;
            }
            let pick = live[rand::random_range(0..live.len())];
            replicas[pick].killed = true;
            replicas[pick].clone()
        };
        self.fleet.lock().await.kill(victim.index);
        self.spawn(victim.worker).await;
        Some(victim.worker)
    }

    /// SIGKILLs the nats-server, waits `down`, and starts it again on the same port and store.
    pub async fn restart_broker(&self, down: Duration) {
        self.fleet.lock().await.server.stop();
        tokio::time::sleep(down).await;
        self.fleet.lock().await.server.restart();
    }

    /// Publishes `payload` on `subject` under `id` (plus `headers`), retrying while the broker
    /// is away (up to two minutes), until JetStream stores it, drops it as a duplicate, or
    /// refuses it.
    pub async fn publish(
        &self,
        subject: &str,
        id: &str,
        payload: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Published> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let mut map = HeaderMap::new();
            map.insert("Nats-Msg-Id", id);
            for (k, v) in headers {
                map.insert(*k, *v);
            }
            let attempt = async {
                let ack = self
                    .js
                    .publish_with_headers(subject.to_owned(), map, payload.clone().into())
                    .await?;
                ack.await
            }
            .await;
            match attempt {
                Ok(ack) if ack.duplicate => return Ok(Published::Duplicate),
                Ok(_) => return Ok(Published::Stored),
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::MaxPayloadExceeded
                            | PublishErrorKind::StreamNotFound
                            | PublishErrorKind::WrongLastMessageId
                            | PublishErrorKind::WrongLastSequence
                    ) =>
                {
                    return Ok(Published::Refused);
                }
                // The stream's own limit (`max_msg_size`, JetStream error 10054).
                Err(e)
                    if e.to_string().contains("message size exceeds maximum")
                        || e.to_string().contains("10054") =>
                {
                    return Ok(Published::Refused);
                }
                Err(e) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(e).with_context(|| format!("publishing {subject} {id}"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Replicas that exited although the chaos never killed them, with their logs' tails.
    pub async fn unexpected_exits(&self) -> Vec<String> {
        let replicas = self.replicas.lock().await.clone();
        let mut fleet = self.fleet.lock().await;
        let mut out = Vec::new();
        for replica in replicas.iter().filter(|r| !r.killed) {
            if let Some(status) = fleet
                .wait_exit(replica.index, Duration::from_millis(1))
                .await
            {
                let log = fleet.log(replica.index);
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                out.push(format!(
                    "{} #{} exited ({status}): {}",
                    replica.worker,
                    replica.index,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
        }
        out
    }

    /// Every worker log, by `<worker>#<index>`.
    pub async fn logs(&self) -> BTreeMap<String, String> {
        let replicas = self.replicas.lock().await.clone();
        let fleet = self.fleet.lock().await;
        replicas
            .iter()
            .map(|r| (format!("{}#{}", r.worker, r.index), fleet.log(r.index)))
            .collect()
    }

    /// Stops every process.
    pub async fn stop(&self) {
        self.fleet.lock().await.stop();
    }
}
