//! `fleetctl dlq list|replay`: the dead-letter stream, and replaying a message after its cause
//! is fixed (republished to its original subject with its original headers and payload, under a
//! new message id, so it is not dropped as a duplicate of the first attempt). A payload too big
//! to travel inside its letter is read back from the dead-letter payloads object store; one
//! that was not kept whole cannot be replayed, and says so.

use std::process::ExitCode;

use async_nats::HeaderMap;
use clap::Subcommand;
use fleet_runtime::topology::names;
use fleet_runtime::{DeadLetter, Runtime};

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Every dead letter: sequence, consumer, subject, reason, error.
    List {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to their original subjects.
    Replay {
        /// Dead-letter sequence numbers (from `dlq list`); none with --all.
        sequences: Vec<u64>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
}

async fn letters(runtime: &Runtime) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    let name = runtime
        .topology
        .stream(names::DEAD_LETTERS)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let mut stream = runtime.js.get_stream(&name).await?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await
            && let Ok(letter) = serde_json::from_slice::<DeadLetter>(&message.payload)
        {
            out.push((seq, letter));
        }
    }
    Ok(out)
}

/// Runs a `dlq` subcommand.
pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::connect(&config).await?;
    let all = letters(&runtime).await?;
    match command {
        DlqCommand::List { json } => {
            if json {
                let list: Vec<_> = all
                    .iter()
                    .map(|(seq, l)| serde_json::json!({"sequence": seq, "letter": l}))
                    .collect();
                say!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (seq, l) in &all {
                    say!(
                        "{seq:>6}  {:<14} {:<22} {:<12} {}",
                        l.consumer,
                        l.subject,
                        l.reason,
                        l.error
                    );
                }
                say!("{} dead letter(s)", all.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            sequences,
            all: every,
        } => {
            let chosen: Vec<&(u64, DeadLetter)> = all
                .iter()
                .filter(|(seq, _)| every || sequences.contains(seq))
                .collect();
            if chosen.is_empty() {
                eprintln!("nothing to replay");
                return Ok(ExitCode::from(1));
            }
            let mut failed = 0;
            for (seq, letter) in chosen {
                let mut headers = HeaderMap::new();
                for (name, values) in &letter.headers {
                    // The command's own headers travel again; NATS control headers (`Nats-*`:
                    // message id, rollups, schedules, expectations) and the old trace do not —
                    // a replayed `Nats-Rollup: all` would purge the whole work stream.
                    if name.to_ascii_lowercase().starts_with("nats-")
                        || name.eq_ignore_ascii_case("traceparent")
                        || name.eq_ignore_ascii_case("tracestate")
                    {
                        continue;
                    }
                    for value in values {
                        headers.append(name.as_str(), value.as_str());
                    }
                }
                let original = letter
                    .headers
                    .get("Nats-Msg-Id")
                    .and_then(|v| v.first())
                    .cloned()
                    .unwrap_or_default();
                let id = format!("replay:{seq}:{original}");
                let subject = runtime.topology.subject(&letter.subject);
                let payload = match letter.full_payload(&runtime.js).await {
                    Ok(payload) => payload,
                    Err(why) => {
                        eprintln!("dead letter {seq} cannot be replayed: {why}");
                        failed += 1;
                        continue;
                    }
                };
                runtime
                    .publisher
                    .publish_bytes(&subject, &id, payload.into(), headers)
                    .await?;
                say!("replayed dead letter {seq} to {subject}");
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
