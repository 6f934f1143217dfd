//! Reading streams the way an operator's command does: through an ephemeral consumer that
//! acknowledges nothing, in batches of 500, until nothing is pending; the consumer is deleted
//! when done (and expires by itself should the command die first).
//!
//! - [`messages`]: a history stream (progress, dead letters) from its start or from a time.
//! - [`latest`]: every current value of a KV bucket (tenants, deployments, installs), read as
//!   the bucket's stream delivers the last message per key — one pass, not one request per
//!   key. An operator's listing: it reads what the bucket holds, never on a per-tenant path.

use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use fleet_runtime::Runtime;
use futures::StreamExt;
use serde::de::DeserializeOwned;

/// Every message of stream `stream_name` on `filter` (a full subject, wildcards allowed) that
/// `deliver_policy` selects, oldest first, each with its stream sequence.
async fn consume(
    runtime: &Runtime,
    stream_name: &str,
    filter: String,
    deliver_policy: DeliverPolicy,
) -> anyhow::Result<Vec<(u64, Message)>> {
    let stream = runtime.js.get_stream(stream_name).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter,
            deliver_policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let read = drain(&consumer).await;
    // Gone at once, not after its inactivity threshold: a server caps a stream's consumers,
    // and reads in a loop (a status per tenant, a dashboard) would pile them up until refused.
    // Should the delete fail, the consumer expires after its threshold all the same.
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    read
}

/// Every message `consumer` has pending, in batches of 500, each with its stream sequence.
async fn drain(consumer: &PullConsumer) -> anyhow::Result<Vec<(u64, Message)>> {
    let mut out = Vec::new();
    loop {
        if consumer.get_info().await?.num_pending == 0 {
            return Ok(out);
        }
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            let sequence = message
                .info()
                .map(|info| info.stream_sequence)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            out.push((sequence, message));
            got += 1;
        }
        if got == 0 {
            return Ok(out);
        }
    }
}

/// Every message of the topology's stream `stream` (a name of
/// [`fleet_runtime::topology::names`]) on `filter` (a subject under the topology's prefix,
/// wildcards allowed) published at or after `since`, oldest first, each with its stream
/// sequence.
pub async fn messages(
    runtime: &Runtime,
    stream: &str,
    filter: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<Vec<(u64, Message)>> {
    let name = runtime
        .topology
        .stream(stream)
        .map(|s| s.name.clone())
        .ok_or_else(|| anyhow::anyhow!("stream {stream} is not part of the topology"))?;
    if since.is_some_and(|at| at > chrono::Utc::now()) {
        // Nothing was published in the future (and the server reads far-off start times
        // wrongly).
        return Ok(Vec::new());
    }
    let deliver_policy = match since {
        Some(at) => DeliverPolicy::ByStartTime {
            // Seconds and nanoseconds apart: `timestamp_nanos` overflows after 2262.
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(at.timestamp()) * 1_000_000_000
                    + i128::from(at.timestamp_subsec_nanos()),
            )
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
        None => DeliverPolicy::All,
    };
    consume(
        runtime,
        &name,
        runtime.topology.subject(filter),
        deliver_policy,
    )
    .await
}

/// Every current value of the topology's KV bucket `bucket` (a name of
/// [`fleet_runtime::topology::names`]) that parses as a `T`, with its key, in key order.
/// Deleted and purged keys are left out; so is a value that does not parse (`fleetctl`
/// reports what it can read).
pub async fn latest<T: DeserializeOwned>(
    runtime: &Runtime,
    bucket: &str,
) -> anyhow::Result<Vec<(String, T)>> {
    let name = runtime
        .topology
        .bucket(bucket)
        .map(|b| b.bucket.clone())
        .ok_or_else(|| anyhow::anyhow!("bucket {bucket} is not part of the topology"))?;
    let prefix = format!("$KV.{name}.");
    let messages = consume(
        runtime,
        &format!("KV_{name}"),
        format!("{prefix}>"),
        DeliverPolicy::LastPerSubject,
    )
    .await?;
    let mut out: Vec<(String, T)> = messages
        .into_iter()
        .filter(|(_, message)| {
            !message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
        })
        .filter_map(|(_, message)| {
            let key = message.subject.as_str().strip_prefix(&prefix)?.to_owned();
            let value = serde_json::from_slice(&message.payload).ok()?;
            Some((key, value))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Checks a NATS subject pattern before the server sees it: tokens separated by `.`, none
/// empty, no whitespace, `>` only as the last token.
pub fn check_subject_pattern(pattern: &str) -> Result<(), String> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("{pattern:?} has an empty token"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{pattern:?} has whitespace in a token"));
        }
        if token.contains('>') && (*token != ">" || i + 1 != tokens.len()) {
            return Err(format!("{pattern:?}: `>` stands alone, as the last token"));
        }
        if token.contains('*') && *token != "*" {
            return Err(format!("{pattern:?}: `*` stands alone as a token"));
        }
    }
    Ok(())
}
