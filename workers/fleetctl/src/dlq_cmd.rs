//! `fleetctl dlq list|show|replay|purge`: the dead-letter stream (`dlq.<consumer>`, one
//! [`DeadLetter`] per message that a worker gave up on).
//!
//! - `list [--consumer C] [--subject S] [--since T]`: a table (sequence, original subject,
//!   tenant, reason, attempts, age, the error's first cause) or `--json` (an array of
//!   [`Summary`]).
//! - `show <seq>`: the whole letter — its payload (read back from the dead-letter payloads
//!   object store when it was too big to travel inline), its headers, the error chain one cause
//!   per line; `--json` for the letter itself.
//! - `replay <seq>… | --all [filters]`: each letter's payload republished to its original
//!   subject with its original headers — except NATS control headers (`Nats-*`, which include
//!   rollups and expectations) and the old trace — under the message id
//!   `replay:<seq>:<original id>` and with [`REPLAY_OF`] naming the letter. The letter is deleted
//!   only after JetStream acknowledged the publish: a crash between the two leaves the letter,
//!   and replaying it again publishes the same id, which JetStream drops as a duplicate within
//!   the stream's duplicate window; after it, the job runs a second time, and every worker step
//!   is idempotent, so it still ends in one outcome.
//! - `purge <seq>… | --all [filters]`: deletes letters (and their stored payloads) after a
//!   confirmation on a terminal; scripts pass `--yes`.
//!
//! Exit codes as everywhere ([`crate::exit`]): 1 when a letter named does not exist, nothing
//! matched, or a replay failed; 2 for usage errors (a bad `--since`, `purge` without `--yes`
//! and no terminal to ask on).

use std::io::IsTerminal;
use std::process::ExitCode;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use fleet_runtime::topology::names;
use fleet_runtime::{DeadLetter, Runtime};
use serde::Serialize;

use crate::exit::{self, usage};

/// The header a replayed message carries: `<dead-letter stream>:<sequence>` of the letter it
/// was replayed from.
pub const REPLAY_OF: &str = "Fleet-Replay-Of";

/// The crash point between a replay's acknowledged publish and the letter's deletion
/// (`FLEET_CRASH_POINT`, for the crash test).
const CRASH_AFTER_REPUBLISH: &str = "dlq.replay.republished";

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters: sequence, original subject, tenant, reason, attempts, age, error.
    List {
        #[command(flatten)]
        filter: Filter,
        /// JSON for scripts (an array; field names are stable).
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: payload, headers, the whole error chain.
    Show {
        /// Its sequence (from `dlq list`).
        sequence: u64,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to their original subjects (once their cause is fixed), then
    /// remove them.
    Replay {
        /// Sequences (from `dlq list`); none with --all.
        sequences: Vec<u64>,
        /// Every dead letter the filters select.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Delete dead letters without replaying them.
    Purge {
        /// Sequences (from `dlq list`); none with --all.
        sequences: Vec<u64>,
        /// Every dead letter the filters select.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: Filter,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters a command reads.
#[derive(Debug, Clone, Default, Args)]
pub struct Filter {
    /// Only those of this worker's consumer (provisioner, deployer, installer, quota-auditor).
    #[arg(long)]
    consumer: Option<String>,
    /// Only those whose original subject matches (NATS wildcards `*` and `>` allowed).
    #[arg(long)]
    subject: Option<String>,
    /// Only those dead-lettered since: a duration back (`90s`, `30m`, `2h`, `7d`) or an
    /// RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    since: Option<DateTime<Utc>>,
}

/// A dead letter as `dlq list --json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Its sequence in the dead-letter stream: what `show`, `replay` and `purge` take.
    pub sequence: u64,
    /// The consumer (worker) that gave up.
    pub consumer: String,
    /// The original subject (without the topology prefix).
    pub subject: String,
    /// The tenant the job was for, when its payload names one.
    pub tenant_id: Option<String>,
    /// `poison` (can never succeed as sent) or `max_deliver` (retries exhausted).
    pub reason: String,
    /// The error's first line of the chain (`show` has all of it).
    pub error: String,
    /// Deliveries made before giving up.
    pub attempts: u64,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: String,
    /// Seconds since then.
    pub age_seconds: u64,
    /// The original payload's size in bytes.
    pub payload_bytes: usize,
}

pub(crate) fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if seconds > 0 => Ok(Utc::now() - chrono::Duration::seconds(n * seconds)),
        _ => Err(format!(
            "{text:?}: write a duration back (90s, 30m, 2h, 7d) or an RFC 3339 time"
        )),
    }
}

/// Whether `subject` matches the NATS pattern `pattern` (`*` one token, `>` the rest).
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(got)) if want == got => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// The tenant a payload names: `tenantId` at the top or in `request` (app commands).
fn tenant_of(letter: &DeadLetter) -> Option<String> {
    let text = letter.payload_text.as_deref()?;
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value
        .get("tenantId")
        .or_else(|| value.get("request").and_then(|r| r.get("tenantId")))
        .and_then(|t| t.as_str())
        .map(str::to_owned)
}

fn summary(sequence: u64, letter: &DeadLetter, now: DateTime<Utc>) -> Summary {
    let at = letter.dead_lettered_at.instant();
    Summary {
        sequence,
        consumer: letter.consumer.clone(),
        subject: letter.subject.clone(),
        tenant_id: tenant_of(letter),
        reason: letter.reason.clone(),
        error: letter.error.clone(),
        attempts: letter.attempts,
        dead_lettered_at: letter.dead_lettered_at.to_string(),
        age_seconds: (now - at).num_seconds().max(0) as u64,
        payload_bytes: letter.payload_bytes,
    }
}

/// `12s`, `5m`, `3h`, `2d`.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `text` on one line, cut at `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line = text.replace(['\n', '\r'], " ");
    if line.chars().count() <= max {
        line
    } else {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    }
}

/// The dead letters `filter` selects, oldest first.
async fn letters(runtime: &Runtime, filter: &Filter) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    let subject = match &filter.consumer {
        Some(consumer) => format!("dlq.{consumer}"),
        None => "dlq.>".to_owned(),
    };
    let messages =
        crate::read::messages(runtime, names::DEAD_LETTERS, &subject, filter.since).await?;
    Ok(messages
        .into_iter()
        .filter_map(|(sequence, message)| {
            let letter = serde_json::from_slice::<DeadLetter>(&message.payload).ok()?;
            let wanted = filter
                .subject
                .as_deref()
                .is_none_or(|pattern| subject_matches(pattern, &letter.subject));
            wanted.then_some((sequence, letter))
        })
        .collect())
}

/// The letters a replay or purge names: the sequences given, or every one the filters select
/// with `--all`. Names missing letters on stderr.
async fn chosen(
    runtime: &Runtime,
    sequences: &[u64],
    all: bool,
    filter: &Filter,
) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    if all != sequences.is_empty() {
        return Err(usage!(
            "name dead letters by sequence, or pass --all (not both)"
        ));
    }
    let found = letters(runtime, filter).await?;
    if all {
        return Ok(found);
    }
    let mut out = Vec::new();
    for sequence in sequences {
        match found.iter().find(|(s, _)| s == sequence) {
            Some(entry) => out.push(entry.clone()),
            None => eprintln!("no dead letter {sequence} (see `fleetctl dlq list`)"),
        }
    }
    Ok(out)
}

fn stream_name(runtime: &Runtime) -> String {
    runtime
        .topology
        .stream(names::DEAD_LETTERS)
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// Runs a `dlq` subcommand.
pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::connect(&config).await?;
    match command {
        DlqCommand::List { filter, json } => list(&runtime, &filter, json).await,
        DlqCommand::Show { sequence, json } => show(&runtime, sequence, json).await,
        DlqCommand::Replay {
            sequences,
            all,
            filter,
        } => {
            let chosen = chosen(&runtime, &sequences, all, &filter).await?;
            replay(&runtime, chosen, sequences.len()).await
        }
        DlqCommand::Purge {
            sequences,
            all,
            filter,
            yes,
        } => {
            let chosen = chosen(&runtime, &sequences, all, &filter).await?;
            purge(&runtime, chosen, sequences.len(), yes).await
        }
    }
}

async fn list(runtime: &Runtime, filter: &Filter, json: bool) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let all: Vec<Summary> = letters(runtime, filter)
        .await?
        .iter()
        .map(|(sequence, letter)| summary(*sequence, letter, now))
        .collect();
    if json {
        say!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        say!("no dead letters");
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:>6}  {:<14} {:<24} {:<20} {:<11} {:>8} {:>5}  ERROR",
        "SEQ",
        "CONSUMER",
        "SUBJECT",
        "TENANT",
        "REASON",
        "ATTEMPTS",
        "AGE"
    );
    for s in &all {
        say!(
            "{:>6}  {:<14} {:<24} {:<20} {:<11} {:>8} {:>5}  {}",
            s.sequence,
            s.consumer,
            s.subject,
            s.tenant_id.as_deref().unwrap_or("-"),
            s.reason,
            s.attempts,
            age(s.age_seconds),
            one_line(&s.error, 100)
        );
    }
    say!("{} dead letter(s)", all.len());
    Ok(ExitCode::SUCCESS)
}

async fn show(runtime: &Runtime, sequence: u64, json: bool) -> anyhow::Result<ExitCode> {
    let Some((_, letter)) = letters(runtime, &Filter::default())
        .await?
        .into_iter()
        .find(|(s, _)| *s == sequence)
    else {
        eprintln!("no dead letter {sequence} (see `fleetctl dlq list`)");
        return Ok(exit::failed());
    };
    if json {
        let mut document = serde_json::to_value(&letter)?;
        if let Some(object) = document.as_object_mut() {
            object.insert("sequence".into(), sequence.into());
            object.insert("tenantId".into(), tenant_of(&letter).into());
        }
        say!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = summary(sequence, &letter, Utc::now());
    say!("dead letter {sequence}");
    say!("  consumer      {}", letter.consumer);
    say!(
        "  subject       {} (stream {}, sequence {})",
        letter.subject,
        letter.stream,
        letter.sequence
    );
    say!("  tenant        {}", s.tenant_id.as_deref().unwrap_or("-"));
    say!("  reason        {}", letter.reason);
    say!("  attempts      {}", letter.attempts);
    say!("  published at  {}", letter.published_at);
    say!(
        "  dead-lettered {} ({} ago)",
        letter.dead_lettered_at,
        age(s.age_seconds)
    );
    say!("error (the whole chain, each cause after a \": \"):");
    say!("  {}", letter.error);
    say!("headers:");
    for (name, values) in &letter.headers {
        for value in values {
            say!("  {name}: {value}");
        }
    }
    if letter.headers_dropped > 0 {
        say!("  ({} more header(s) not kept)", letter.headers_dropped);
    }
    say!("payload ({} bytes):", letter.payload_bytes);
    match letter.full_payload(&runtime.js).await {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(value) => say!("{}", serde_json::to_string_pretty(&value)?),
                Err(_) => say!("{text}"),
            },
            Err(raw) => {
                use base64::Engine as _;
                say!(
                    "(not UTF-8; base64) {}",
                    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
                );
            }
        },
        Err(why) => {
            if let Some(text) = &letter.payload_text {
                say!("{text}");
            }
            say!("(not whole: {why})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The headers a replay carries: the original ones but NATS control headers (`Nats-*`: message
/// id, rollups, schedules, expectations — a replayed `Nats-Rollup: all` would purge the whole
/// work stream) and the old trace; plus [`REPLAY_OF`].
fn replay_headers(letter: &DeadLetter, origin: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in &letter.headers {
        if name.to_ascii_lowercase().starts_with("nats-")
            || name.eq_ignore_ascii_case("traceparent")
            || name.eq_ignore_ascii_case("tracestate")
            || name.eq_ignore_ascii_case(REPLAY_OF)
        {
            continue;
        }
        for value in values {
            headers.append(name.as_str(), value.as_str());
        }
    }
    headers.insert(REPLAY_OF, origin);
    headers
}

async fn replay(
    runtime: &Runtime,
    chosen: Vec<(u64, DeadLetter)>,
    named: usize,
) -> anyhow::Result<ExitCode> {
    if chosen.is_empty() {
        eprintln!("nothing to replay");
        return Ok(exit::failed());
    }
    let stream_name = stream_name(runtime);
    let stream = runtime.js.get_stream(&stream_name).await?;
    let mut failed = named.saturating_sub(chosen.len());
    for (sequence, letter) in chosen {
        let payload = match letter.full_payload(&runtime.js).await {
            Ok(payload) => payload,
            Err(why) => {
                eprintln!("dead letter {sequence} cannot be replayed: {why}");
                failed += 1;
                continue;
            }
        };
        let original = letter
            .headers
            .get("Nats-Msg-Id")
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default();
        let id = format!("replay:{sequence}:{original}");
        let subject = runtime.topology.subject(&letter.subject);
        let headers = replay_headers(&letter, &format!("{stream_name}:{sequence}"));
        // Acknowledged (stored, or dropped as a duplicate of an earlier replay of this letter)
        // before the letter goes.
        runtime
            .publisher
            .publish_bytes(&subject, &id, payload.into(), headers)
            .await?;
        fleet_tenantdb::crashpoint::reached(CRASH_AFTER_REPUBLISH);
        if let Err(error) = stream.delete_message(sequence).await {
            eprintln!(
                "dead letter {sequence} was replayed but not removed ({error}); replaying it again is harmless"
            );
            failed += 1;
            continue;
        }
        if let Err(error) = letter.discard_payload(&runtime.js).await {
            eprintln!("dead letter {sequence}: its stored payload was not removed: {error}");
        }
        say!("replayed dead letter {sequence} to {subject}");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        exit::failed()
    })
}

async fn purge(
    runtime: &Runtime,
    chosen: Vec<(u64, DeadLetter)>,
    named: usize,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    if chosen.is_empty() {
        eprintln!("nothing to purge");
        return Ok(exit::failed());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(usage!(
                "purging {} dead letter(s) needs confirmation: pass --yes",
                chosen.len()
            ));
        }
        eprint!(
            "delete {} dead letter(s) for good, without replaying them? [y/N] ",
            chosen.len()
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing was deleted");
            return Ok(exit::failed());
        }
    }
    let stream = runtime.js.get_stream(stream_name(runtime)).await?;
    let mut failed = named.saturating_sub(chosen.len());
    let mut deleted = 0;
    for (sequence, letter) in chosen {
        match stream.delete_message(sequence).await {
            Ok(_) => {
                deleted += 1;
                if let Err(error) = letter.discard_payload(&runtime.js).await {
                    eprintln!(
                        "dead letter {sequence}: its stored payload was not removed: {error}"
                    );
                }
            }
            Err(error) => {
                eprintln!("dead letter {sequence} was not deleted: {error}");
                failed += 1;
            }
        }
    }
    say!("purged {deleted} dead letter(s)");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        exit::failed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("tenant.created", "tenant.created"));
        assert!(subject_matches("tenant.*", "tenant.created"));
        assert!(subject_matches("deploy.>", "deploy.tenant.d1.acme"));
        assert!(!subject_matches("deploy.>", "deploy"));
        assert!(!subject_matches("tenant.*", "tenant.schedule.x"));
        assert!(!subject_matches("tenant.created", "tenant.deleted"));
    }

    #[test]
    fn since_reads_durations_and_times() {
        let back = parse_since("30m").unwrap();
        let expected = Utc::now() - chrono::Duration::minutes(30);
        assert!((back - expected).num_seconds().abs() <= 2);
        assert_eq!(
            parse_since("2026-11-28T12:00:00Z").unwrap().to_rfc3339(),
            "2026-11-28T12:00:00+00:00"
        );
        assert!(parse_since("soon").is_err());
        assert!(parse_since("10y").is_err());
    }
}
