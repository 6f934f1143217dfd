//! One fleet under test: [`TestFleet::start`] gives a test its own nats-server, a temp dir (tenant
//! data, backups, logs), and a configuration folder holding the shipped `config/default.toml`
//! and an `e2e.toml` overlay pointing at them with fast timings — loaded through the real
//! configuration chain into [`TestFleet::config`]. [`TestFleet::spawn`] starts any worker
//! binary on that configuration (as many replicas as a test wants), each with its own log;
//! [`TestFleet::kill`] is a SIGKILL; dropping the fleet stops everything. Workers run in the
//! fleet's `work/` folder with `TMPDIR` at its `tmp/`, so stray files can be found.
//!
//! The overlay's settings: the test's server, `ack_wait_ms = 2000` (a crashed worker's message
//! moves on in 2 s), `provisioner.lease_secs = 1` (shorter than ack_wait), concurrency 8,
//! probes on a free port, JSON logs at `info`, a test key, regions `us-east` and `eu-west` on
//! the local backend's group. A test adds tables of its own with `overlay` (appended), and
//! overrides a key the overlay already sets through the environment (`FLEET_NATS__…`) when it
//! spawns a worker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use fleet_config::{Config, ConfigSource};

use crate::NatsServer;

/// A test's fleet: server, folders, configuration, worker processes.
#[derive(Debug)]
pub struct TestFleet {
    /// The test's nats-server (node 1 of a cluster).
    pub server: NatsServer,
    /// The other nodes of a cluster ([`Self::start_clustered`]); empty otherwise.
    pub peers: Vec<NatsServer>,
    /// Everything on disk: `tenants/`, `backups/`, `config/`, `<worker>-<n>.log`.
    pub dir: tempfile::TempDir,
    /// The configuration the workers load (defaults → `default.toml` → `e2e.toml`).
    pub config: Config,
    workers: Vec<(String, Child)>,
}

impl TestFleet {
    /// A fresh fleet; `overlay` is TOML appended to the e2e overlay (new tables only).
    pub fn start(overlay: &str) -> Self {
        Self::on(vec![NatsServer::start()], overlay)
    }

    /// A fresh fleet on a three-node JetStream cluster on loopback: streams and buckets with
    /// three replicas, every client given every node's URL. [`Self::server`] is node 1,
    /// [`Self::peers`] nodes 2 and 3.
    pub fn start_clustered(overlay: &str) -> Self {
        Self::on(NatsServer::cluster(3), overlay)
    }

    /// A fresh fleet on `server`, one the test started itself (e.g. with
    /// [`NatsServer::start_with`]: authorization, TLS); `overlay` as for [`Self::start`] — the
    /// `[nats.auth]` and `[nats.tls]` tables its clients need go there.
    pub fn start_on(server: NatsServer, overlay: &str) -> Self {
        Self::on(vec![server], overlay)
    }

    fn on(mut servers: Vec<NatsServer>, overlay: &str) -> Self {
        let url = servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        let replicas = servers.len();
        // A cluster's leader elections take seconds: jobs waiting on them must not be taken for
        // stuck ones (ack wait) — the production settings' proportions, shortened.
        let ack_wait_ms = if replicas > 1 { 10_000 } else { 2_000 };
        let server = servers.remove(0);
        let peers = servers;
        let dir = tempfile::tempdir().expect("a temp dir");
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).expect("the config folder");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::copy(
            root.join("config/default.toml"),
            config_dir.join("default.toml"),
        )
        .expect("config/default.toml");
        std::fs::write(
            config_dir.join("e2e.toml"),
            format!(
                r#"
[nats]
url = "{url}"
ack_wait_ms = {ack_wait_ms}
replicas = {replicas}

[tenantdb]
data_dir = "{data}"

[telemetry]
log_format = "json"
log_filter = "info"

[worker]
concurrency = 8
health_addr = "127.0.0.1:0"
shutdown_grace_ms = 5000

[secrets]
active_key = "e2e"
keys = {{ e2e = "ZTJlLXRlc3Qta2V5LW5vdC1mb3ItcHJvZHVjdGlvbiE=" }}

[provisioner]
backup_dir = "{backups}"
lease_secs = 1

[provisioner.regions.us-east]
group = "local"
[provisioner.regions.eu-west]
group = "local"
{overlay}
"#,
                url = url,
                replicas = replicas,
                ack_wait_ms = ack_wait_ms,
                data = dir.path().join("tenants").display(),
                backups = dir.path().join("backups").display(),
            ),
        )
        .expect("the e2e overlay");
        let config = Config::load_from(&ConfigSource {
            dir: config_dir,
            env: "e2e".into(),
        })
        .expect("the e2e configuration is valid");
        Self {
            server,
            peers,
            dir,
            config,
            workers: Vec::new(),
        }
    }

    /// The configuration folder (`FLEET_CONFIG_DIR` of every worker).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// The local backend's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("tenants")
    }

    /// The workers' working directory (empty unless a worker writes where it should not).
    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The workers' `TMPDIR`.
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// Where backups before deletion go.
    pub fn backups_dir(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// Starts `binary` (e.g. `env!("CARGO_BIN_EXE_provisioner")`) on the fleet's configuration,
    /// with `env` on top (`FLEET_…` overrides, crash points); stdout and stderr go to
    /// `<name>-<index>.log`. Returns the index.
    pub fn spawn(&mut self, binary: impl AsRef<Path>, env: &[(&str, &str)]) -> usize {
        let binary = binary.as_ref();
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "worker".to_owned());
        let index = self.workers.len();
        let log = std::fs::File::create(self.dir.path().join(format!("{name}-{index}.log")))
            .expect("a log file");
        // Every worker runs in the fleet's own `work/` folder with its own `tmp/`: a file a
        // worker writes outside the data dir lands there, where a test can see it.
        let work = self.work_dir();
        let tmp = self.tmp_dir();
        std::fs::create_dir_all(&work).expect("the work folder");
        std::fs::create_dir_all(&tmp).expect("the tmp folder");
        let mut command = Command::new(binary);
        command
            .current_dir(&work)
            .env("TMPDIR", &tmp)
            .env("FLEET_CONFIG_DIR", self.config_dir())
            .env("FLEET_ENV", "e2e")
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("the worker binary starts");
        self.workers.push((name, child));
        index
    }

    /// How many worker processes were started.
    pub fn processes(&self) -> usize {
        self.workers.len()
    }

    /// The process id of worker `index`.
    pub fn pid(&self, index: usize) -> u32 {
        self.workers[index].1.id()
    }

    /// Stops every worker and the server, keeping the folders (until the fleet is dropped).
    pub fn stop(&mut self) {
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.server.stop();
        for peer in &mut self.peers {
            peer.stop();
        }
    }

    /// SIGKILLs worker `index` and reaps it.
    pub fn kill(&mut self, index: usize) {
        let child = &mut self.workers[index].1;
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits up to `limit` for worker `index` to exit by itself: its status, or `None`.
    pub async fn wait_exit(&mut self, index: usize, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.workers[index].1.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Everything worker `index` logged so far.
    pub fn log(&self, index: usize) -> String {
        let Some((name, _)) = self.workers.get(index) else {
            return String::new();
        };
        std::fs::read_to_string(self.dir.path().join(format!("{name}-{index}.log")))
            .unwrap_or_default()
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
