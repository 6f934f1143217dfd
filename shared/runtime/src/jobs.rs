//! The job loop: pull, decode, handle, settle — with one place that turns outcomes into acks.
//!
//! - Pulls from a durable consumer in batches no larger than the free concurrency, so one
//!   replica never hoards work the others could do.
//! - A handler returns an [`Outcome`]; [`settle`] maps it: `Done` → ack (confirmed by the
//!   server), `Retry` → nak with that delay, `Poison` → dead letter then term. A retry on the
//!   last allowed delivery is dead-lettered too. The dead letter (original subject, headers,
//!   payload, error chain, attempts, timestamps) is written **before** the message leaves the
//!   work stream; if that write fails the message is nak'd instead, so nothing is ever lost.
//! - While a handler runs, `Progress` acks keep the delivery from timing out.
//! - Each job runs under a span whose parent is the publisher's trace context.
//! - On shutdown, pulling stops and in-flight jobs finish (within the grace) and settle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use fleet_protocol::{Spec, Timestamp, parse_value};
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::publish::Publisher;

/// Header carrying a command's payload version (absent = 1).
pub const VERSION_HEADER: &str = "Fleet-Command-Version";

/// What a handler decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: ack it.
    Done,
    /// Failed transiently: deliver it again after `after`.
    Retry {
        /// Delay before the next delivery.
        after: Duration,
        /// What failed (kept if it ends in the dead-letter stream).
        reason: String,
    },
    /// Can never succeed: dead-letter it with the reason.
    Poison {
        /// Why (with the issues, for bad input).
        reason: String,
    },
}

impl Outcome {
    /// A retry after `after`.
    pub fn retry(after: Duration, reason: impl std::fmt::Display) -> Self {
        Self::Retry {
            after,
            reason: reason.to_string(),
        }
    }

    /// A poison outcome with the error and its whole cause chain.
    pub fn poison(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = vec![error.to_string()];
        let mut source = error.source();
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        Self::Poison {
            reason: chain.join(": "),
        }
    }
}

/// One delivered message, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Subject (with the topology prefix stripped).
    pub subject: String,
    /// Raw payload.
    pub payload: Bytes,
    /// Headers.
    pub headers: HeaderMap,
    /// Delivery count (1 on the first delivery).
    pub attempt: u64,
    /// Stream sequence.
    pub sequence: u64,
}

impl Delivery {
    /// Decodes and validates the payload as a protocol type; bad input is poison with every
    /// issue and its path.
    pub fn decode<T: Spec>(&self) -> Result<T, Outcome> {
        let value: serde_json::Value =
            serde_json::from_slice(&self.payload).map_err(|e| Outcome::Poison {
                reason: format!("payload is not JSON: {e}"),
            })?;
        parse_value::<T>(&value)
            .map(|checked| checked.value)
            .map_err(|rejected| Outcome::Poison {
                reason: format!(
                    "invalid {}: {}",
                    T::SPEC_NAME,
                    rejected
                        .errors()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            })
    }

    /// The command version the publisher declared (1 when absent).
    pub fn version(&self) -> Result<u32, String> {
        match self.headers.get(VERSION_HEADER) {
            None => Ok(1),
            Some(v) => v
                .as_str()
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("{VERSION_HEADER} {:?} is not a number", v.as_str())),
        }
    }
}

/// A worker's message handler.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Command versions this handler understands (others are dead-lettered with the reason).
    fn versions(&self) -> &[u32] {
        &[1]
    }

    /// Handles one message.
    async fn handle(&self, delivery: Delivery) -> Outcome;
}

/// A message as written to the dead-letter stream (`dlq.<consumer>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The consumer that gave up.
    pub consumer: String,
    /// `poison` or `max_deliver`.
    pub reason: String,
    /// The error and its causes.
    pub error: String,
    /// Original subject.
    pub subject: String,
    /// Original stream and sequence.
    pub stream: String,
    /// Original stream sequence.
    pub sequence: u64,
    /// Original headers.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Original payload, base64.
    pub payload_base64: String,
    /// Original payload as text, when it is UTF-8 (for humans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    /// Deliveries made.
    pub attempts: u64,
    /// When the message was first published.
    pub published_at: String,
    /// When it was dead-lettered.
    pub dead_lettered_at: Timestamp,
}

impl DeadLetter {
    /// A dead letter for a message of `stream` at `sequence`, keeping its subject, headers and
    /// payload.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &JobLoopSettings,
        reason: &str,
        error: String,
        subject: String,
        sequence: u64,
        headers: &HeaderMap,
        payload: &[u8],
        attempts: u64,
        published_at: String,
    ) -> Self {
        Self {
            consumer: settings.consumer.clone(),
            reason: reason.to_owned(),
            error,
            subject,
            stream: settings.stream.clone(),
            sequence,
            headers: headers
                .iter()
                .map(|(k, vs)| {
                    (
                        k.to_string(),
                        vs.iter().map(|v| v.as_str().to_owned()).collect(),
                    )
                })
                .collect(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(payload),
            payload_text: std::str::from_utf8(payload).ok().map(str::to_owned),
            attempts,
            published_at,
            dead_lettered_at: Timestamp::now(),
        }
    }

    /// The original payload.
    pub fn payload(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.payload_base64)
            .unwrap_or_default()
    }
}

/// Job loop settings.
#[derive(Debug, Clone)]
pub struct JobLoopSettings {
    /// Durable consumer name.
    pub consumer: String,
    /// Stream the consumer reads.
    pub stream: String,
    /// Deliveries before dead-lettering (the consumer's `max_deliver`).
    pub max_deliver: u64,
    /// The consumer's ack wait (progress acks are sent at a third of it).
    pub ack_wait: Duration,
    /// Jobs at once.
    pub concurrency: usize,
    /// Time in-flight jobs get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Subject prefix of the topology (stripped from delivered subjects).
    pub prefix: String,
    /// Dead-letter subject (`dlq.<consumer>`, prefixed).
    pub dead_letter_subject: String,
    /// Longest a handler may keep a delivery alive with progress acks; a handler still running
    /// then is presumed stuck and its message is redelivered (and dead-lettered at max_deliver).
    pub max_job_duration: Duration,
}

/// Why the loop stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum JobLoopError {
    /// The consumer could not be opened.
    #[error("consumer {consumer}: {message}")]
    Consumer {
        /// The consumer.
        consumer: String,
        /// Why.
        message: String,
    },
}

/// Runs `handler` on the consumer until `shutdown` turns true; then lets in-flight jobs finish.
pub async fn run_job_loop<H: Handler>(
    js: jetstream::Context,
    settings: JobLoopSettings,
    handler: Arc<H>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), JobLoopError> {
    let consumer_error = |message: String| JobLoopError::Consumer {
        consumer: settings.consumer.clone(),
        message,
    };
    let stream = js
        .get_stream(&settings.stream)
        .await
        .map_err(|e| consumer_error(e.to_string()))?;
    let consumer: PullConsumer = stream
        .get_consumer(&settings.consumer)
        .await
        .map_err(|e| consumer_error(e.to_string()))?;
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let settings = Arc::new(settings);
    'pull: while !*shutdown.borrow() {
        let batch = permits.available_permits().max(1);
        let messages = consumer
            .fetch()
            .max_messages(batch)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, consumer = %settings.consumer, "pull failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.changed() => break 'pull,
                }
            }
        };
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.changed() => break 'pull,
            };
            let Some(message) = next else { break };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "receiving a message failed");
                    break;
                }
            };
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (handler, publisher, metrics, settings) = (
                handler.clone(),
                publisher.clone(),
                metrics.clone(),
                settings.clone(),
            );
            tokio::spawn(async move {
                process(message, &*handler, &publisher, &metrics, &settings).await;
                drop(permit);
            });
        }
    }
    // Stop pulling; give in-flight jobs the grace period to finish and settle.
    let all = u32::try_from(settings.concurrency.max(1)).unwrap_or(u32::MAX);
    if tokio::time::timeout(settings.shutdown_grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(consumer = %settings.consumer, "shutdown grace elapsed with jobs still running; they will be redelivered");
    }
    Ok(())
}

fn strip_prefix(prefix: &str, subject: &str) -> String {
    if prefix.is_empty() {
        return subject.to_owned();
    }
    subject
        .strip_prefix(&format!("{prefix}."))
        .unwrap_or(subject)
        .to_owned()
}

async fn process<H: Handler>(
    message: jetstream::Message,
    handler: &H,
    publisher: &Publisher,
    metrics: &Metrics,
    settings: &JobLoopSettings,
) {
    let message = Arc::new(message);
    let (attempt, sequence, published_at) = match message.info() {
        Ok(info) => (
            info.delivered.max(1) as u64,
            info.stream_sequence,
            info.published.to_string(),
        ),
        Err(_) => (1, 0, String::new()),
    };
    let headers = message.headers.clone().unwrap_or_default();
    let delivery = Delivery {
        subject: strip_prefix(&settings.prefix, message.subject.as_str()),
        payload: message.payload.clone(),
        headers: headers.clone(),
        attempt,
        sequence,
    };
    let span = tracing::info_span!("job", consumer = %settings.consumer, subject = %delivery.subject, attempt, sequence);
    crate::telemetry::set_parent_from_headers(&span, &headers);
    let started = Instant::now();
    metrics.in_flight.inc();

    let outcome = async {
        match delivery.version() {
            Ok(v) if handler.versions().contains(&v) => {}
            Ok(v) => {
                return Outcome::Poison {
                    reason: format!(
                        "unsupported command version {v} (this worker knows {:?})",
                        handler.versions()
                    ),
                };
            }
            Err(reason) => return Outcome::Poison { reason },
        }
        // Keep the delivery alive while the handler works.
        let keepalive = {
            let message = message.clone();
            let every = (settings.ack_wait / 3).max(Duration::from_millis(100));
            let until = Instant::now() + settings.max_job_duration;
            tokio::spawn(async move {
                while Instant::now() + every < until {
                    tokio::time::sleep(every).await;
                    if message.ack_with(AckKind::Progress).await.is_err() {
                        return;
                    }
                }
                tracing::warn!(
                    "job exceeded its maximum duration; no longer extending its delivery"
                );
            })
        };
        let outcome = std::panic::AssertUnwindSafe(handler.handle(delivery.clone()))
            .catch_unwind()
            .await;
        keepalive.abort();
        outcome.unwrap_or_else(|_| Outcome::retry(Duration::from_secs(1), "handler panicked"))
    }
    .instrument(span.clone())
    .await;

    let label = settle(
        &message,
        outcome,
        attempt,
        &delivery,
        &published_at,
        publisher,
        settings,
    )
    .instrument(span)
    .await;
    metrics.in_flight.dec();
    metrics.observe(label, started.elapsed());
}

/// Writes a dead letter; its message id (`dlq:<stream>:<sequence>`) makes a repeat a no-op.
async fn write_dead_letter(
    publisher: &Publisher,
    settings: &JobLoopSettings,
    letter: &DeadLetter,
) -> Result<crate::publish::Published, crate::publish::PublishError> {
    let id = format!("dlq:{}:{}", letter.stream, letter.sequence);
    publisher
        .publish_json(&settings.dead_letter_subject, &id, letter, HeaderMap::new())
        .await
}

/// The server's note that a message reached `max_deliver` without being settled.
#[derive(Debug, Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: u64,
}

/// Dead-letters messages that exhausted `max_deliver` without any worker settling them (workers
/// that crashed or hung): JetStream leaves those in the stream and says so in an advisory. One
/// replica (a queue group) copies each to the dead-letter stream, then deletes it from the work
/// stream — copy first, so nothing is lost.
pub async fn watch_max_deliveries(
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Arc<JobLoopSettings>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        settings.stream, settings.consumer
    );
    let mut advisories = match client
        .queue_subscribe(subject, format!("fleet-dlq-{}", settings.consumer))
        .await
    {
        Ok(subscription) => subscription,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch max-delivery advisories");
            return;
        }
    };
    loop {
        let advisory = tokio::select! {
            next = advisories.next() => match next { Some(message) => message, None => return },
            _ = shutdown.changed() => return,
        };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveriesAdvisory>(&advisory.payload)
        else {
            continue;
        };
        let Ok(stream) = js.get_stream(&settings.stream).await else {
            continue;
        };
        let Ok(original) = stream.get_raw_message(advisory.stream_seq).await else {
            continue;
        };
        let letter = DeadLetter::new(
            &settings,
            "max_deliver",
            format!(
                "not settled after {} deliveries (workers crashed, hung or timed out)",
                advisory.deliveries
            ),
            strip_prefix(&settings.prefix, original.subject.as_str()),
            advisory.stream_seq,
            &original.headers,
            &original.payload,
            advisory.deliveries,
            original.time.to_string(),
        );
        match write_dead_letter(&publisher, &settings, &letter).await {
            Ok(_) => {
                let _ = stream.delete_message(advisory.stream_seq).await;
                metrics.observe("dead_lettered", Duration::ZERO);
                tracing::error!(
                    sequence = advisory.stream_seq,
                    "dead-lettered a message no worker settled"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "dead-letter write failed; the message stays in the stream")
            }
        }
    }
}

/// The one place outcomes become acknowledgements. Returns the metrics label.
async fn settle(
    message: &jetstream::Message,
    outcome: Outcome,
    attempt: u64,
    delivery: &Delivery,
    published_at: &str,
    publisher: &Publisher,
    settings: &JobLoopSettings,
) -> &'static str {
    let (reason, error) = match outcome {
        Outcome::Done => {
            if let Err(e) = message.double_ack().await {
                tracing::warn!(error = %e, "ack not confirmed; the job may be redelivered (handlers are idempotent)");
            }
            return "done";
        }
        Outcome::Retry { after, reason } if attempt < settings.max_deliver => {
            tracing::info!(%reason, ?after, attempt, "retrying later");
            let _ = message.ack_with(AckKind::Nak(Some(after))).await;
            return "retry";
        }
        Outcome::Retry { reason, .. } => (
            "max_deliver",
            format!("gave up after {attempt} deliveries: {reason}"),
        ),
        Outcome::Poison { reason } => ("poison", reason),
    };
    let letter = DeadLetter::new(
        settings,
        reason,
        error.clone(),
        delivery.subject.clone(),
        delivery.sequence,
        &delivery.headers,
        &delivery.payload,
        attempt,
        published_at.to_owned(),
    );
    let id = format!("dlq:{}:{}", settings.stream, delivery.sequence);
    match publisher
        .publish_json(
            &settings.dead_letter_subject,
            &id,
            &letter,
            HeaderMap::new(),
        )
        .await
    {
        Ok(_) => {
            tracing::error!(%error, reason, "dead-lettered");
            let _ = message.ack_with(AckKind::Term).await;
            "dead_lettered"
        }
        Err(e) => {
            // Never drop a message we could not copy: try again later.
            tracing::error!(error = %e, "dead-letter write failed; keeping the message");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            "retry"
        }
    }
}
