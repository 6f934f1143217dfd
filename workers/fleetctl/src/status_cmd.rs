//! `fleetctl status [--json] [--watch]`: the fleet on one screen — tenants by state,
//! deployments in progress, installs by state, dead letters per consumer, each consumer's
//! pending and ack-pending messages (what KEDA scales the workers on) and the worker replicas
//! that beat recently ([`fleet_runtime::heartbeat`]).
//!
//! Everything is read in one pass per source: the tenants' and installs' buckets as their
//! streams deliver the last value per key ([`crate::read::latest`]), the dead letters as the
//! stream's per-subject counts, the consumers' and workers' state from JetStream. `--watch`
//! redraws every two seconds until interrupted; with `--json` it prints one document per line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use fleet_apps::InstallRecord;
use fleet_rollouts::{Deployment, RolloutStatus};
use fleet_runtime::Runtime;
use fleet_runtime::heartbeat::{self, Heartbeat};
use fleet_runtime::topology::names;
use fleet_tenants::machine::{TenantRecord, status_name};
use futures::StreamExt;
use serde::Serialize;

/// `fleetctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// JSON for scripts (field names are stable).
    #[arg(long)]
    json: bool,
    /// Redraw every two seconds until interrupted.
    #[arg(long)]
    watch: bool,
}

/// The whole screen, as `--json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// When it was read (RFC 3339).
    pub at: String,
    /// The NATS URL and the server's version.
    pub nats: Nats,
    /// Tenants by state (`active`, `provisioning`, `suspended`, `failed`, …).
    pub tenants: Counts,
    /// Deployments (bundle and app rollouts) running, halted or rolling back.
    pub deployments: Vec<DeploymentLine>,
    /// App installs by state (`active`, `installing`, `failed`, …).
    pub installs: Counts,
    /// Dead letters by consumer.
    pub dead_letters: Counts,
    /// Every consumer's backlog.
    pub consumers: Vec<ConsumerLine>,
    /// Every worker's replicas seen within [`heartbeat::RUNNING_WITHIN`].
    pub workers: Vec<WorkerLine>,
}

/// The server.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nats {
    /// `nats://…`.
    pub url: String,
    /// The server's version.
    pub server_version: String,
}

/// A total and its parts.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// All of them.
    pub total: u64,
    /// By state (or consumer); only non-zero parts.
    pub by: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, part: impl Into<String>, n: u64) {
        self.total += n;
        *self.by.entry(part.into()).or_default() += n;
    }

    fn text(&self) -> String {
        if self.total == 0 {
            return "0".to_owned();
        }
        let parts: Vec<String> = self.by.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("{}: {}", self.total, parts.join(", "))
    }
}

/// A deployment in progress.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentLine {
    /// Its id.
    pub id: String,
    /// The bundle's (or app's) version.
    pub version: String,
    /// The app, for an app rollout.
    pub app: Option<String>,
    /// `running`, `halted`, `rolling_back`.
    pub status: String,
    /// The wave running (1-based) and how many there are.
    pub wave: usize,
    /// Waves in all.
    pub waves: usize,
    /// Tenants ready, failed and not done yet.
    pub ready: u64,
    /// Tenants failed.
    pub failed: u64,
    /// Tenants not done yet.
    pub pending: u64,
}

/// One consumer's backlog.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerLine {
    /// The durable name (= the worker).
    pub name: String,
    /// Messages not delivered yet.
    pub pending: u64,
    /// Delivered, not acknowledged yet (being worked on, or about to be redelivered).
    pub ack_pending: u64,
    /// Delivered more than once.
    pub redelivered: u64,
}

/// One worker's replicas.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerLine {
    /// The worker (its consumer's name).
    pub worker: String,
    /// Replicas that beat within [`heartbeat::RUNNING_WITHIN`] (20 s).
    pub replicas: usize,
    /// Jobs they ran at their last beat (every [`heartbeat::BEAT_EVERY`], 5 s).
    pub in_flight: i64,
    /// Jobs they had settled since they started, at their last beat.
    pub jobs_settled: u64,
    /// Seconds since the most recent beat of any replica (none: never seen).
    pub last_seen_seconds: Option<u64>,
}

/// Reads the whole status.
pub async fn read(runtime: &Runtime, url: &str) -> anyhow::Result<FleetStatus> {
    let now = chrono::Utc::now();
    let mut tenants = Counts::default();
    for (_, record) in crate::read::latest::<TenantRecord>(runtime, names::TENANTS).await? {
        tenants.add(status_name(&record), 1);
    }
    let deployments = crate::read::latest::<Deployment>(runtime, names::DEPLOYMENTS)
        .await?
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| {
            matches!(
                d.status,
                RolloutStatus::Running | RolloutStatus::Halted | RolloutStatus::RollingBack
            )
        })
        .map(|d| {
            let (ready, failed, pending) = d.counts();
            DeploymentLine {
                status: crate::wire_name(&d.status),
                wave: (d.current_wave + 1).min(d.wave_ends.len()),
                waves: d.wave_ends.len(),
                id: d.id.to_string(),
                version: d.version,
                app: d.app,
                ready,
                failed,
                pending,
            }
        })
        .collect();
    let mut installs = Counts::default();
    for (_, record) in crate::read::latest::<InstallRecord>(runtime, names::INSTALLS).await? {
        let state = crate::wire_name(&record.status);
        installs.add(state, 1);
    }
    let mut dead_letters = Counts::default();
    if let Some(spec) = runtime.topology.stream(names::DEAD_LETTERS) {
        let prefix = runtime.topology.subject("dlq.");
        let stream = runtime.js.get_stream(&spec.name).await?;
        let mut subjects = stream
            .info_with_subjects(runtime.topology.subject("dlq.>"))
            .await?;
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry?;
            let consumer = subject.strip_prefix(&prefix).unwrap_or(&subject).to_owned();
            dead_letters.add(consumer, count as u64);
        }
    }
    let mut consumers = Vec::new();
    for spec in &runtime.topology.consumers {
        let stream = runtime.js.get_stream(&spec.stream).await?;
        let info = stream.consumer_info(&spec.durable).await?;
        consumers.push(ConsumerLine {
            name: spec.durable.clone(),
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
        });
    }
    let beats: Vec<Heartbeat> = match runtime.bucket(names::WORKERS).await {
        Ok(bucket) => heartbeat::read_all(&bucket).await?,
        Err(_) => Vec::new(),
    };
    let workers = runtime
        .topology
        .consumers
        .iter()
        .map(|spec| {
            let mine: Vec<&Heartbeat> = beats.iter().filter(|b| b.worker == spec.durable).collect();
            let running: Vec<&&Heartbeat> = mine.iter().filter(|b| b.is_running(now)).collect();
            WorkerLine {
                worker: spec.durable.clone(),
                replicas: running.len(),
                in_flight: running.iter().map(|b| b.in_flight).sum(),
                jobs_settled: running.iter().map(|b| b.jobs_settled).sum(),
                last_seen_seconds: mine.iter().map(|b| b.age(now).as_secs()).min(),
            }
        })
        .collect();
    Ok(FleetStatus {
        at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        nats: Nats {
            url: url.to_owned(),
            server_version: runtime.client.server_info().version,
        },
        tenants,
        deployments,
        installs,
        dead_letters,
        consumers,
        workers,
    })
}

/// Prints the status as a table.
pub fn print(status: &FleetStatus) {
    say!(
        "ObjectOS Fleet at {} (nats-server {}), {}",
        status.nats.url,
        status.nats.server_version,
        status.at
    );
    say!("");
    say!("tenants       {}", status.tenants.text());
    if status.deployments.is_empty() {
        say!("deployments   none in progress");
    } else {
        say!("deployments   {} in progress", status.deployments.len());
        for d in &status.deployments {
            say!(
                "  {:<24} {:<10} {:<12} wave {}/{}  ready {}  failed {}  pending {}{}",
                d.id,
                d.version,
                d.status,
                d.wave,
                d.waves,
                d.ready,
                d.failed,
                d.pending,
                d.app
                    .as_ref()
                    .map(|a| format!("  (app {a})"))
                    .unwrap_or_default()
            );
        }
    }
    say!("installs      {}", status.installs.text());
    say!(
        "dead letters  {}{}",
        status.dead_letters.text(),
        if status.dead_letters.total > 0 {
            "   (fleetctl dlq list)"
        } else {
            ""
        }
    );
    say!("");
    say!(
        "{:<16} {:>8} {:>12} {:>12}",
        "CONSUMER",
        "PENDING",
        "ACK-PENDING",
        "REDELIVERED"
    );
    for c in &status.consumers {
        say!(
            "{:<16} {:>8} {:>12} {:>12}",
            c.name,
            c.pending,
            c.ack_pending,
            c.redelivered
        );
    }
    say!("");
    say!(
        "{:<16} {:>8} {:>10} {:>9}  LAST SEEN",
        "WORKER",
        "REPLICAS",
        "IN FLIGHT",
        "SETTLED"
    );
    for w in &status.workers {
        let seen = match w.last_seen_seconds {
            Some(s) => format!("{} ago", crate::dlq_cmd::age(s)),
            None if w.replicas == 0 => "none running (`just up` starts every worker)".to_owned(),
            None => "-".to_owned(),
        };
        say!(
            "{:<16} {:>8} {:>10} {:>9}  {seen}",
            w.worker,
            w.replicas,
            w.in_flight,
            w.jobs_settled
        );
    }
    say!("(in flight and settled: as of each replica's last beat, every 5 s)");
}

/// Runs `fleetctl status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::attach(&config).await?;
    let redraw = args.watch && !args.json && std::io::stdout().is_terminal();
    loop {
        let url = fleet_config::NatsConfig::display_url(&config.nats.url);
        let status = read(&runtime, &url).await?;
        if args.json {
            if args.watch {
                say!("{}", serde_json::to_string(&status)?);
            } else {
                say!("{}", serde_json::to_string_pretty(&status)?);
            }
        } else {
            if redraw {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            print(&status);
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if !redraw && !args.json {
            say!("");
        }
    }
}
