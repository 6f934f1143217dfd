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
    let usage =
        || format!("{text:?}: write a duration back (90s, 30m, 2h, 7d) or an RFC 3339 time");
    let n = number.parse::<i64>().map_err(|_| usage())?;
    if seconds == 0 {
        return Err(usage());
    }
    n.checked_mul(seconds)
        .and_then(chrono::Duration::try_seconds)
        .and_then(|back| Utc::now().checked_sub_signed(back))
        .ok_or_else(|| format!("{text:?} reaches back before any time there is"))
}

/// `text` safe for a terminal: control characters (escape sequences, newlines that would
/// forge a table row) shown escaped, as `\u{1b}`; everything else as is.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
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

/// The tenant a payload names: `tenantId` at the top or in `request` (app commands); in a
/// preview of a payload too big to keep inline (not whole JSON), the first `"tenantId":"…"`.
fn tenant_of(letter: &DeadLetter) -> Option<String> {
    let text = letter.payload_text.as_deref()?;
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        return value
            .get("tenantId")
            .or_else(|| value.get("request").and_then(|r| r.get("tenantId")))
            .and_then(|t| t.as_str())
            .map(str::to_owned);
    }
    let after = text.split_once("\"tenantId\"")?.1.trim_start();
    let quoted = after.strip_prefix(':')?.trim_start().strip_prefix('"')?;
    quoted.split_once('"').map(|(tenant, _)| tenant.to_owned())
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

/// A message on `dlq.<consumer>` that is not a dead letter (published there by something
/// else): listed as one, so it can be seen and purged.
fn unreadable(consumer: &str, message: &async_nats::jetstream::Message, why: &str) -> DeadLetter {
    let at = message
        .info()
        .ok()
        .and_then(|info| chrono::DateTime::from_timestamp(info.published.unix_timestamp(), 0))
        .map(fleet_protocol::Timestamp::from)
        .unwrap_or_else(fleet_protocol::Timestamp::now);
    DeadLetter {
        consumer: consumer.to_owned(),
        reason: "unreadable".to_owned(),
        error: format!("not a dead letter: {why}"),
        subject: message.subject.to_string(),
        stream: String::new(),
        sequence: 0,
        headers: Default::default(),
        headers_dropped: 0,
        payload_bytes: message.payload.len(),
        payload_text: Some(
            String::from_utf8_lossy(&message.payload)
                .chars()
                .take(4096)
                .collect(),
        ),
        payload_base64: None,
        payload_complete: false,
        payload_object: None,
        payload_dropped: Some("it is not a dead letter".to_owned()),
        attempts: 0,
        published_at: at.to_string(),
        dead_lettered_at: at,
    }
}

/// Refuses a `--consumer` or `--subject` that is no NATS name or subject pattern (exit 2),
/// before the server does so with a raw error.
fn check_filter(filter: &Filter) -> anyhow::Result<()> {
    if let Some(consumer) = &filter.consumer
        && (consumer.is_empty()
            || !consumer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(usage!(
            "--consumer {consumer:?}: a consumer's name (provisioner, deployer, installer, quota-auditor)"
        ));
    }
    if let Some(pattern) = &filter.subject {
        crate::read::check_subject_pattern(pattern).map_err(|why| usage!("--subject: {why}"))?;
    }
    Ok(())
}

/// The dead letters `filter` selects, oldest first.
async fn letters(runtime: &Runtime, filter: &Filter) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    check_filter(filter)?;
    let subject = match &filter.consumer {
        Some(consumer) => format!("dlq.{consumer}"),
        None => "dlq.>".to_owned(),
    };
    let prefix = runtime.topology.subject("dlq.");
    let messages =
        crate::read::messages(runtime, names::DEAD_LETTERS, &subject, filter.since).await?;
    Ok(messages
        .into_iter()
        .filter_map(|(sequence, message)| {
            let letter = match serde_json::from_slice::<DeadLetter>(&message.payload) {
                Ok(letter) => letter,
                Err(why) => {
                    let consumer = message
                        .subject
                        .as_str()
                        .strip_prefix(&prefix)
                        .unwrap_or("?");
                    unreadable(consumer, &message, &why.to_string())
                }
            };
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
    let mut sequences = sequences.to_vec();
    sequences.sort_unstable();
    sequences.dedup();
    let mut out = Vec::new();
    for sequence in &sequences {
        match found.iter().find(|(s, _)| s == sequence) {
            Some(entry) => out.push(entry.clone()),
            None => eprintln!("no dead letter {sequence} (see `fleetctl dlq list`)"),
        }
    }
    Ok(out)
}

/// How many different sequences were named.
fn distinct(sequences: &[u64]) -> usize {
    sequences
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
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
    // Input is checked before connecting: a bad command line is exit 2 with NATS down too.
    match &command {
        DlqCommand::List { filter, .. } => check_filter(filter)?,
        DlqCommand::Show { .. } => {}
        DlqCommand::Replay {
            sequences,
            all,
            filter,
        }
        | DlqCommand::Purge {
            sequences,
            all,
            filter,
            ..
        } => {
            check_filter(filter)?;
            if *all != sequences.is_empty() {
                return Err(usage!(
                    "name dead letters by sequence, or pass --all (not both)"
                ));
            }
        }
    }
    let config = fleet_config::Config::load()?;
    let runtime = Runtime::attach(&config).await?;
    match command {
        DlqCommand::List { filter, json } => list(&runtime, &filter, json).await,
        DlqCommand::Show { sequence, json } => show(&runtime, sequence, json).await,
        DlqCommand::Replay {
            sequences,
            all,
            filter,
        } => {
            let chosen = chosen(&runtime, &sequences, all, &filter).await?;
            replay(&runtime, chosen, distinct(&sequences)).await
        }
        DlqCommand::Purge {
            sequences,
            all,
            filter,
            yes,
        } => {
            let chosen = chosen(&runtime, &sequences, all, &filter).await?;
            purge(&runtime, chosen, distinct(&sequences), yes).await
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
            printable(&s.consumer),
            printable(&s.subject),
            printable(s.tenant_id.as_deref().unwrap_or("-")),
            printable(&s.reason),
            s.attempts,
            age(s.age_seconds),
            printable(&one_line(&s.error, 100))
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
        // The letter keeps its own fields (its `sequence` is the original stream's).
        let document = serde_json::json!({
            "sequence": sequence,
            "tenantId": tenant_of(&letter),
            "letter": letter,
        });
        say!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = summary(sequence, &letter, Utc::now());
    say!("dead letter {sequence}");
    say!("  consumer      {}", printable(&letter.consumer));
    say!(
        "  subject       {} (stream {}, sequence {})",
        printable(&letter.subject),
        printable(&letter.stream),
        letter.sequence
    );
    say!(
        "  tenant        {}",
        printable(s.tenant_id.as_deref().unwrap_or("-"))
    );
    say!("  reason        {}", printable(&letter.reason));
    say!("  attempts      {}", letter.attempts);
    say!("  published at  {}", letter.published_at);
    say!(
        "  dead-lettered {} ({} ago)",
        letter.dead_lettered_at,
        age(s.age_seconds)
    );
    say!("error (the whole chain, each cause after a \": \"):");
    say!("  {}", printable(&letter.error));
    say!("headers:");
    for (name, values) in &letter.headers {
        for value in values {
            say!("  {}: {}", printable(name), printable(value));
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
                Err(_) => say!("{}", printable(&text)),
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
                say!("{}", printable(text));
            }
            say!("(not whole: {why})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `name` can be a NATS header name (printable ASCII, no `:` or space).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
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
            || !valid_header_name(name)
        {
            continue;
        }
        // A letter is JSON anyone could have written: a value NATS could not have carried
        // (a line break) is left out rather than sent broken.
        for value in values.iter().filter(|v| !v.contains(['\r', '\n'])) {
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
        // Deterministic per letter (a second replay is a duplicate), and a valid header value.
        let original: String = original
            .chars()
            .map(|c| if c.is_control() { '_' } else { c })
            .collect();
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
