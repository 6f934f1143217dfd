//! `fleetctl streams [show|init]`: the JetStream topology as the server reports it, next to
//! what the configuration declares — so an operator sees that `ack_wait`, `max_deliver` and
//! `max_ack_pending` mean what `config/default.toml` says, and how much work waits where
//! (pending and ack-pending are what KEDA scales on). `show` only reads; `init` creates or
//! updates everything.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use clap::Subcommand;
use fleet_runtime::Topology;
use serde_json::json;

/// The `streams` subcommands (none = `show`).
#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Every stream and consumer as the server reports it (read-only): subjects, messages,
    /// limits; each consumer's ack wait, max deliver, max ack pending, backoff, pending and
    /// ack-pending — with any difference from the configuration called out (a stream's
    /// subjects, retention, replicas, duplicate window, max age and sizes; a consumer's ack
    /// wait, max deliver, max ack pending, backoff). Exit 1 when anything differs or is
    /// missing.
    Show {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Create or update every stream, consumer and bucket (idempotent; incompatible streams are
    /// reported, never recreated).
    Init,
}

/// Runs a `streams` subcommand.
pub async fn run(command: Option<StreamsCommand>) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    match command.unwrap_or(StreamsCommand::Show { json: false }) {
        StreamsCommand::Init => init(&config).await,
        StreamsCommand::Show { json } => show(&config, json).await,
    }
}

async fn init(config: &fleet_config::Config) -> anyhow::Result<ExitCode> {
    let runtime = fleet_runtime::Runtime::connect(config).await?;
    let t = &runtime.topology;
    for stream in &t.streams {
        say!(
            "stream   {:<28} {}",
            stream.name,
            stream.subjects.join(", ")
        );
    }
    for consumer in &t.consumers {
        say!(
            "consumer {:<28} on {} ({})",
            consumer.durable,
            consumer.stream,
            consumer.filter
        );
    }
    for bucket in &t.buckets {
        say!("bucket   {}", bucket.bucket);
    }
    say!("object   {}", t.dead_letter_payloads);
    say!(
        "topology ensured on {}",
        fleet_config::NatsConfig::display_url(&config.nats.url)
    );
    Ok(ExitCode::SUCCESS)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

async fn show(config: &fleet_config::Config, as_json: bool) -> anyhow::Result<ExitCode> {
    // Read-only: a client, no topology ensured (one server or a cluster's comma-separated nodes).
    let client = fleet_runtime::connect_client(config).await?;
    let js = jetstream::new(client);
    let declared = Topology::from_config(config);
    let mut streams = Vec::new();
    // Settings that differ from the configuration, and anything missing: exit 1.
    let mut differences = 0;
    for spec in &declared.streams {
        let entry = match js.get_stream(&spec.name).await {
            Ok(mut stream) => {
                let info = stream.info().await?;
                let c = &info.config;
                let mut differs = Vec::new();
                let mut check = |what: &str, found: String, wanted: String| {
                    if found != wanted {
                        differs.push(format!("{what} {found}, configured {wanted}"));
                    }
                };
                check("subjects", c.subjects.join(","), spec.subjects.join(","));
                check(
                    "retention",
                    format!("{:?}", c.retention),
                    format!("{:?}", spec.retention),
                );
                check(
                    "replicas",
                    c.num_replicas.to_string(),
                    spec.replicas.to_string(),
                );
                check(
                    "duplicateWindow",
                    format!("{} ms", ms(c.duplicate_window)),
                    format!("{} ms", ms(spec.duplicate_window)),
                );
                check(
                    "maxAge",
                    format!("{} s", c.max_age.as_secs()),
                    format!("{} s", spec.max_age.as_secs()),
                );
                check(
                    "maxBytes",
                    c.max_bytes.to_string(),
                    spec.max_bytes.to_string(),
                );
                check(
                    "maxMsgSize",
                    c.max_message_size.to_string(),
                    spec.max_msg_size.to_string(),
                );
                check(
                    "allowSchedules",
                    c.allow_message_schedules.to_string(),
                    spec.allow_schedules.to_string(),
                );
                differences += differs.len();
                json!({
                    "name": spec.name,
                    "subjects": c.subjects,
                    "messages": info.state.messages,
                    "bytes": info.state.bytes,
                    "maxMsgSize": c.max_message_size,
                    "allowSchedules": c.allow_message_schedules,
                    "replicas": c.num_replicas,
                    "differsFromConfig": differs,
                })
            }
            Err(_) => {
                differences += 1;
                json!({"name": spec.name, "missing": true})
            }
        };
        streams.push(entry);
    }
    let mut consumers = Vec::new();
    for spec in &declared.consumers {
        let found = match js.get_stream(&spec.stream).await {
            Ok(stream) => stream.consumer_info(&spec.durable).await.ok(),
            Err(_) => None,
        };
        let Some(info) = found else {
            differences += 1;
            consumers
                .push(json!({"durable": spec.durable, "stream": spec.stream, "missing": true}));
            continue;
        };
        let c = &info.config;
        let mut differs = Vec::new();
        if c.ack_wait != spec.ack_wait {
            differs.push(format!(
                "ackWait {} ms, configured {} ms",
                ms(c.ack_wait),
                ms(spec.ack_wait)
            ));
        }
        if c.max_deliver != spec.max_deliver {
            differs.push(format!(
                "maxDeliver {}, configured {}",
                c.max_deliver, spec.max_deliver
            ));
        }
        if c.max_ack_pending != spec.max_ack_pending {
            differs.push(format!(
                "maxAckPending {}, configured {}",
                c.max_ack_pending, spec.max_ack_pending
            ));
        }
        if !c.backoff.is_empty() {
            differs.push("a backoff overrides ackWait (run `fleetctl streams init`)".to_owned());
        }
        differences += differs.len();
        consumers.push(json!({
            "durable": spec.durable,
            "stream": spec.stream,
            "filter": c.filter_subject,
            "ackWaitMs": ms(c.ack_wait),
            "maxDeliver": c.max_deliver,
            "maxAckPending": c.max_ack_pending,
            "backoffMs": c.backoff.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "numPending": info.num_pending,
            "numAckPending": info.num_ack_pending,
            "differsFromConfig": differs,
        }));
    }
    if as_json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({"streams": streams, "consumers": consumers}))?
        );
    } else {
        say!(
            "{:<28} {:>9} {:>12} {:>10}  subjects",
            "STREAM",
            "MESSAGES",
            "BYTES",
            "MAX MSG"
        );
        for s in &streams {
            if s["missing"] == true {
                say!(
                    "{:<28} missing (run `fleetctl streams init`)",
                    s["name"].as_str().unwrap_or_default()
                );
                continue;
            }
            say!(
                "{:<28} {:>9} {:>12} {:>10}  {}{}",
                s["name"].as_str().unwrap_or_default(),
                s["messages"].to_string(),
                s["bytes"].to_string(),
                s["maxMsgSize"].to_string(),
                s["subjects"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                if s["allowSchedules"] == true {
                    "  (schedules)"
                } else {
                    ""
                }
            );
            for why in s["differsFromConfig"].as_array().into_iter().flatten() {
                say!("  ! {}", why.as_str().unwrap_or_default());
            }
        }
        say!("");
        say!(
            "{:<14} {:<16} {:>10} {:>11} {:>15} {:>8} {:>12}",
            "CONSUMER",
            "FILTER",
            "ACK WAIT",
            "MAX DELIVER",
            "MAX ACK PENDING",
            "PENDING",
            "ACK PENDING"
        );
        for c in &consumers {
            if c["missing"] == true {
                say!(
                    "{:<14} missing (run `fleetctl streams init`)",
                    c["durable"].as_str().unwrap_or_default()
                );
                continue;
            }
            say!(
                "{:<14} {:<16} {:>10} {:>11} {:>15} {:>8} {:>12}",
                c["durable"].as_str().unwrap_or_default(),
                c["filter"].as_str().unwrap_or_default(),
                format!("{}ms", c["ackWaitMs"]),
                c["maxDeliver"].to_string(),
                c["maxAckPending"].to_string(),
                c["numPending"].to_string(),
                c["numAckPending"].to_string()
            );
            for why in c["differsFromConfig"].as_array().into_iter().flatten() {
                say!("  ! {}", why.as_str().unwrap_or_default());
            }
        }
    }
    Ok(if differences == 0 {
        ExitCode::SUCCESS
    } else {
        crate::exit::failed()
    })
}
