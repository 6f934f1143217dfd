//! The job loop: pull, decode, handle, settle — with one place that turns outcomes into acks.
//!
//! - Pulls from a durable consumer in batches no larger than the free concurrency, so one
//!   replica never hoards work the others could do.
//! - A handler returns an [`Outcome`]; [`settle`] maps it: `Done` → ack (confirmed by the
//!   server), `Retry` → nak with that delay, `Poison` → dead letter then term. A retry on the
//!   last allowed delivery is dead-lettered too. The dead letter (original subject, headers,
//!   payload, error chain, attempts, timestamps) is written **before** the message leaves the
//!   work stream; if that write fails the message is nak'd instead, so nothing is ever lost.
//!   Then the handler hears of it ([`Handler::dead_lettered`]) so the entity the message was
//!   about ends in a terminal state, never stuck mid-way.
//! - Dead letters always fit the dead-letter stream: the payload is carried once (text, or
//!   base64 when it is not UTF-8), inline up to [`INLINE_PAYLOAD_MAX`]; a larger one keeps its
//!   first [`PREVIEW_BYTES`] inline and the whole payload in the dead-letter payloads object
//!   store (or says it was dropped, and why). Headers and the error are bounded too.
//! - A payload over its subject's limit ([`crate::topology::PayloadLimit`]) is poison before
//!   any handler decodes it.
//! - While a handler runs, `Progress` acks keep the delivery from timing out.
//! - Each job runs under a span whose parent is the publisher's trace context.
//! - On shutdown, pulling stops and in-flight jobs finish (within the grace) and settle.

use std::collections::{BTreeMap, HashMap};
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
    /// Failed transiently: deliver it again when the worker's retry policy (`[worker.retry]`)
    /// says, or dead-letter it once its attempts are used up.
    Transient {
        /// What failed (kept if it ends in the dead-letter stream).
        reason: String,
    },
    /// Deliver it again after `after` — for work whose due time is known (a lease that
    /// expires); still dead-lettered at `max_deliver`.
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
    /// A transient failure, retried per the worker's retry policy.
    pub fn transient(reason: impl std::fmt::Display) -> Self {
        Self::Transient {
            reason: reason.to_string(),
        }
    }

    /// A transient `error`, with its whole cause chain, retried per the worker's retry policy.
    pub fn transient_error(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::Transient {
            reason: error_chain(error),
        }
    }

    /// A retry after `after`.
    pub fn retry(after: Duration, reason: impl std::fmt::Display) -> Self {
        Self::Retry {
            after,
            reason: reason.to_string(),
        }
    }

    /// A poison outcome with the error and its whole cause chain.
    pub fn poison(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::Poison {
            reason: error_chain(error),
        }
    }
}

/// Renews a delivery (`renew`, a `Progress` ack; false when the delivery is gone) every third
/// of `ack_wait` (at least every 100 ms) until `cap` has passed: a handler still running then is
/// presumed stuck, and its message is redelivered (and dead-lettered at `max_deliver`).
/// Returns the renewals sent.
pub async fn keep_alive<F, Fut>(ack_wait: Duration, cap: Duration, mut renew: F) -> u32
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    let until = tokio::time::Instant::now() + cap;
    let mut sent = 0;
    while tokio::time::Instant::now() + every < until {
        tokio::time::sleep(every).await;
        if !renew().await {
            return sent;
        }
        sent += 1;
    }
    tracing::warn!("job exceeded its maximum duration; no longer extending its delivery");
    sent
}

/// A server timestamp (a message's `published`, a stream's `created`) as a fleet [`Timestamp`]
/// (RFC 3339 UTC to the millisecond, `2026-11-29T12:13:40.790Z`); `None` out of chrono's range.
pub fn server_time(at: time::OffsetDateTime) -> Option<Timestamp> {
    let nanos = at.unix_timestamp_nanos();
    chrono::DateTime::from_timestamp(
        (nanos.div_euclid(1_000_000_000)) as i64,
        nanos.rem_euclid(1_000_000_000) as u32,
    )
    .map(Timestamp::from)
}

/// `at` as a dead letter's `publishedAt` (empty when unknown).
fn published_text(at: Option<&Timestamp>) -> String {
    at.map(ToString::to_string).unwrap_or_default()
}

/// `error` and each of its causes, once each, joined by `: `.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push(cause.to_string());
        source = cause.source();
    }
    chain.join(": ")
}

/// One delivered message, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Subject (with the topology prefix stripped).
    pub subject: String,
    /// Raw payload.
    pub payload: Bytes,
    /// The message's NATS headers as published (`Nats-Msg-Id`, the trace context, …).
    pub headers: HeaderMap,
    /// Delivery count (1 on the first delivery).
    pub attempt: u64,
    /// Stream sequence.
    pub sequence: u64,
    /// When the message was published (stored in the stream), when known.
    pub published_at: Option<Timestamp>,
}

impl Delivery {
    /// A first delivery of `payload` on `subject` (unprefixed), with no headers: the seam to run
    /// one message through a handler (`handler.handle(Delivery::new(..))`) without the job loop.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
            headers: HeaderMap::new(),
            attempt: 1,
            sequence: 0,
            published_at: None,
        }
    }

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
    pub fn version(&self) -> Result<u32, InvalidVersion> {
        match self.headers.get(VERSION_HEADER) {
            None => Ok(1),
            Some(v) => v
                .as_str()
                .trim()
                .parse::<u32>()
                .map_err(|_| InvalidVersion(v.as_str().to_owned())),
        }
    }
}

/// A `Fleet-Command-Version` header that is not a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{VERSION_HEADER} {0:?} is not a number")]
pub struct InvalidVersion(pub String);

/// A worker's message handler.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Command versions this handler understands (others are dead-lettered with the reason).
    fn versions(&self) -> &[u32] {
        &[1]
    }

    /// Handles one message.
    async fn handle(&self, delivery: Delivery) -> Outcome;

    /// The message has left the work stream for the dead-letter stream (`letter.reason`:
    /// `poison`, or `max_deliver` — retries exhausted, or never settled because workers crashed
    /// or hung). Called after the letter is written, at least once per dead-lettered message,
    /// so a handler can leave the entity the message was about in a terminal state (a tenant
    /// `failed` with its hook) instead of stuck mid-way. Must be idempotent; the default does
    /// nothing.
    async fn dead_lettered(&self, delivery: &Delivery, letter: &DeadLetter) {
        let _ = (delivery, letter);
    }
}

/// Largest payload a dead letter carries inline, in bytes.
pub const INLINE_PAYLOAD_MAX: usize = 64 * 1024;
/// Bytes of a larger payload kept inline as a preview.
pub const PREVIEW_BYTES: usize = 4 * 1024;
/// Largest error text a dead letter keeps, in bytes.
pub const ERROR_MAX: usize = 16 * 1024;
/// Headers a dead letter keeps at most, and the longest value of each, in bytes.
pub const HEADERS_MAX: usize = 32;
/// Longest header value a dead letter keeps, in bytes.
pub const HEADER_VALUE_MAX: usize = 1024;

/// A message as written to the dead-letter stream (`dlq.<consumer>`). Bounded whatever the
/// original was: at most [`INLINE_PAYLOAD_MAX`] of payload, [`HEADERS_MAX`] headers of
/// [`HEADER_VALUE_MAX`] bytes and [`ERROR_MAX`] of error text, so it always fits the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The consumer that gave up.
    pub consumer: String,
    /// `poison` (can never succeed) or `max_deliver` (retries exhausted, or never settled).
    pub reason: String,
    /// The error and its causes (cut at [`ERROR_MAX`] bytes, saying how much was cut).
    pub error: String,
    /// Original subject (without the topology prefix).
    pub subject: String,
    /// Original stream.
    pub stream: String,
    /// Original stream sequence.
    pub sequence: u64,
    /// Original headers (at most [`HEADERS_MAX`], values cut at [`HEADER_VALUE_MAX`] bytes).
    pub headers: BTreeMap<String, Vec<String>>,
    /// How many original headers were left out (beyond [`HEADERS_MAX`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub headers_dropped: usize,
    /// Size of the original payload, in bytes.
    #[serde(default)]
    pub payload_bytes: usize,
    /// The payload as text, when it is UTF-8: whole, or its first bytes (`payloadComplete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    /// The payload as base64, when it is not UTF-8: whole, or its first bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Whether `payloadText`/`payloadBase64` hold the whole payload.
    #[serde(default = "yes")]
    pub payload_complete: bool,
    /// Where the whole payload is when it is not inline: `<object store>/<object>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_object: Option<String>,
    /// Why the whole payload was not kept, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_dropped: Option<String>,
    /// Deliveries made.
    pub attempts: u64,
    /// When the message was first published.
    pub published_at: String,
    /// When it was dead-lettered.
    pub dead_lettered_at: Timestamp,
}

fn yes() -> bool {
    true
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut at `max` bytes, saying how many were cut.
fn bounded(text: &str, max: usize) -> String {
    let kept = cut(text, max);
    if kept.len() == text.len() {
        text.to_owned()
    } else {
        format!("{kept}… ({} more bytes cut)", text.len() - kept.len())
    }
}

impl DeadLetter {
    /// A dead letter for a message of `stream` at `sequence`, keeping its subject, headers and
    /// payload within the bounds above. A payload over [`INLINE_PAYLOAD_MAX`] is kept as a
    /// preview with `payloadComplete: false`; [`DeadLetterWriter::write`] stores it whole.
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
        let complete = payload.len() <= INLINE_PAYLOAD_MAX;
        let keep = if complete {
            payload.len()
        } else {
            PREVIEW_BYTES
        };
        let (payload_text, payload_base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Some(cut(text, keep).to_owned()), None),
            Err(e) if !complete && e.valid_up_to() >= PREVIEW_BYTES => {
                // Valid UTF-8 as far as the preview goes (the cut may split a character).
                let text = std::str::from_utf8(&payload[..e.valid_up_to()]).unwrap_or_default();
                (Some(cut(text, PREVIEW_BYTES).to_owned()), None)
            }
            Err(_) => {
                let kept = &payload[..keep];
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(kept)),
                )
            }
        };
        let mut kept_headers = BTreeMap::new();
        for (name, values) in headers.iter().take(HEADERS_MAX) {
            kept_headers.insert(
                cut(name.as_ref(), HEADER_VALUE_MAX).to_owned(),
                values
                    .iter()
                    .take(HEADERS_MAX)
                    .map(|v| bounded(v.as_str(), HEADER_VALUE_MAX))
                    .collect(),
            );
        }
        Self {
            consumer: settings.consumer.clone(),
            reason: reason.to_owned(),
            error: bounded(&error, ERROR_MAX),
            subject: bounded(&subject, HEADER_VALUE_MAX),
            stream: settings.stream.clone(),
            sequence,
            headers_dropped: headers.iter().count().saturating_sub(kept_headers.len()),
            headers: kept_headers,
            payload_bytes: payload.len(),
            payload_text,
            payload_base64,
            payload_complete: complete,
            payload_object: None,
            payload_dropped: None,
            attempts,
            published_at,
            dead_lettered_at: Timestamp::now(),
        }
    }

    /// The original payload, when the letter holds it whole (see [`DeadLetter::full_payload`]
    /// for one kept in the object store).
    pub fn payload(&self) -> Option<Vec<u8>> {
        if !self.payload_complete {
            return None;
        }
        match (&self.payload_text, &self.payload_base64) {
            (Some(text), _) => Some(text.clone().into_bytes()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
            (None, None) => Some(Vec::new()),
        }
    }

    /// The whole original payload: inline, or read back from the object store.
    pub async fn full_payload(&self, js: &jetstream::Context) -> Result<Vec<u8>, PayloadError> {
        if let Some(payload) = self.payload() {
            return Ok(payload);
        }
        let Some(location) = &self.payload_object else {
            return Err(PayloadError::NotKept {
                bytes: self.payload_bytes,
                why: self
                    .payload_dropped
                    .clone()
                    .unwrap_or_else(|| "the rest was dropped".to_owned()),
            });
        };
        let unreadable = |message: String| PayloadError::Unreadable {
            location: location.clone(),
            message,
        };
        let (store, object) = payload_store(js, location).await?;
        let mut reader = store
            .get(object)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let mut bytes = Vec::with_capacity(self.payload_bytes);
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        Ok(bytes)
    }

    /// Deletes the whole payload kept in the object store, if there is one: called once the
    /// letter itself was removed (replayed or purged), so no payload outlives its letter.
    pub async fn discard_payload(&self, js: &jetstream::Context) -> Result<(), PayloadError> {
        let Some(location) = &self.payload_object else {
            return Ok(());
        };
        let (store, object) = payload_store(js, location).await?;
        store
            .delete(object)
            .await
            .map_err(|e| PayloadError::Unreadable {
                location: location.clone(),
                message: e.to_string(),
            })
    }
}

/// The object store and object name a letter's `payloadObject` (`<object store>/<object>`)
/// points at.
async fn payload_store<'a>(
    js: &jetstream::Context,
    location: &'a str,
) -> Result<(jetstream::object_store::ObjectStore, &'a str), PayloadError> {
    let unreadable = |message: String| PayloadError::Unreadable {
        location: location.to_owned(),
        message,
    };
    let (bucket, object) = location
        .split_once('/')
        .ok_or_else(|| unreadable("not <bucket>/<object>".to_owned()))?;
    let store = js
        .get_object_store(bucket)
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    Ok((store, object))
}

/// Why a dead letter's whole payload is not available.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Only a preview was kept.
    #[error("only the first bytes of this {bytes}-byte payload were kept: {why}")]
    NotKept {
        /// Size of the original payload.
        bytes: usize,
        /// Why the whole payload was not stored.
        why: String,
    },
    /// The object store could not give it back (expired, deleted, unreachable).
    #[error("reading {location}: {message}")]
    Unreadable {
        /// `<bucket>/<object>`.
        location: String,
        /// What the object store said.
        message: String,
    },
    /// The object store could not take it.
    #[error("writing {location}: {message}")]
    Unwritable {
        /// `<bucket>/<object>`.
        location: String,
        /// What the object store said.
        message: String,
    },
}

/// Writes dead letters: the letter to `dlq.<consumer>` under the id
/// `dlq:<stream>:<sequence>` (a repeat is a no-op), and first, for a payload too big to carry,
/// the whole payload to the dead-letter payloads object store.
#[derive(Debug, Clone)]
pub struct DeadLetterWriter {
    publisher: Publisher,
    js: jetstream::Context,
    subject: String,
    payloads: String,
}

impl DeadLetterWriter {
    /// A writer publishing to `subject` (prefixed) and keeping large payloads in the object
    /// store `payloads`.
    pub fn new(
        publisher: Publisher,
        js: jetstream::Context,
        subject: String,
        payloads: String,
    ) -> Self {
        Self {
            publisher,
            js,
            subject,
            payloads,
        }
    }

    /// Stores `payload` whole when `letter` cannot carry it, then publishes the letter.
    pub async fn write(
        &self,
        mut letter: DeadLetter,
        payload: &[u8],
    ) -> Result<DeadLetter, crate::publish::PublishError> {
        if !letter.payload_complete && letter.payload_object.is_none() {
            let object = format!("{}-{}", letter.stream, letter.sequence);
            match self.store(&object, payload).await {
                Ok(()) => letter.payload_object = Some(format!("{}/{object}", self.payloads)),
                Err(error) => {
                    tracing::error!(%error, "a dead letter's payload could not be kept whole");
                    letter.payload_dropped =
                        Some(format!("the whole payload could not be stored: {error}"));
                }
            }
        }
        let id = format!("dlq:{}:{}", letter.stream, letter.sequence);
        self.publisher
            .publish_json(&self.subject, &id, &letter, HeaderMap::new())
            .await?;
        Ok(letter)
    }

    async fn store(&self, object: &str, payload: &[u8]) -> Result<(), PayloadError> {
        let failed = |message: String| PayloadError::Unwritable {
            location: format!("{}/{object}", self.payloads),
            message,
        };
        let store = self
            .js
            .get_object_store(&self.payloads)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut reader = payload;
        store
            .put(object, &mut reader)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(())
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
    /// When a transient failure is retried (`[worker.retry]`).
    pub retry: fleet_config::RetryPolicy,
    /// The consumer's ack wait (progress acks are sent at a third of it).
    pub ack_wait: Duration,
    /// Jobs at once.
    pub concurrency: usize,
    /// Time in-flight jobs get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Subjects of the topology (its prefix is stripped from delivered subjects).
    pub subjects: crate::Subjects,
    /// Dead-letter subject (`dlq.<consumer>`, prefixed).
    pub dead_letter_subject: String,
    /// Object store of dead-letter payloads too big to carry inline.
    pub dead_letter_payloads: String,
    /// Per-subject payload limits (checked before the handler runs).
    pub payload_limits: Vec<crate::topology::PayloadLimit>,
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
        /// The durable consumer's name (prefixed).
        consumer: String,
        /// The error JetStream returned when the stream or consumer was looked up, as its
        /// message.
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
    let letters = DeadLetterWriter::new(
        publisher,
        js.clone(),
        settings.dead_letter_subject.clone(),
        settings.dead_letter_payloads.clone(),
    );
    let settings = Arc::new(settings);
    let in_flight = InFlight::default();
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
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            let Some(message) = in_flight.begin(sequence, message) else {
                continue;
            };
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (handler, letters, metrics, settings) = (
                handler.clone(),
                letters.clone(),
                metrics.clone(),
                settings.clone(),
            );
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let label = process(message, &*handler, &letters, &metrics, &settings).await;
                in_flight.end(sequence, label).await;
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

/// The messages this process is handling, by stream sequence, with any delivery of the same
/// message that arrived while it was still running.
///
/// JetStream delivers a message again while its first delivery is still being handled when the
/// server restarts and restores its consumer from the state it last persisted (the delivery
/// counter starts over), or when a job outlives `ack_wait` despite its progress acks. Two
/// handlers of one message in one process would race each other (a provisioning step run twice
/// at once, one token revoking the other's); leases only keep different processes apart. So a
/// second delivery never starts a handler: it waits for the first, and is acknowledged with it
/// when the first settles for good (done or dead-lettered). When the first is retried, the
/// second is left alone, to be delivered again after `ack_wait` and handled then, on its own.
#[derive(Debug, Clone, Default)]
struct InFlight {
    running: Arc<std::sync::Mutex<HashMap<u64, Vec<jetstream::Message>>>>,
}

impl InFlight {
    /// `Some(message)` to handle it; `None` when a delivery of the same message is running here
    /// (this one is kept to be settled with it). Sequence 0 (no metadata) is always handled.
    fn begin(&self, sequence: u64, message: jetstream::Message) -> Option<jetstream::Message> {
        if sequence == 0 {
            return Some(message);
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get_mut(&sequence) {
            Some(duplicates) => {
                tracing::info!(
                    sequence,
                    "delivered again while still being handled here; settled with the first delivery"
                );
                duplicates.push(message);
                None
            }
            None => {
                running.insert(sequence, Vec::new());
                Some(message)
            }
        }
    }

    /// The first delivery of `sequence` settled as `label`: acknowledges the deliveries that
    /// arrived meanwhile when it settled for good.
    async fn end(&self, sequence: u64, label: &str) {
        if sequence == 0 {
            return;
        }
        let duplicates = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sequence)
            .unwrap_or_default();
        if label == "retry" {
            return;
        }
        for duplicate in duplicates {
            if let Err(error) = duplicate.ack().await {
                tracing::warn!(%error, sequence, "the second delivery's ack was not confirmed; it may be delivered again (handlers are idempotent)");
            }
        }
    }
}

/// Handles one delivery and settles it; the outcome's label (`done`, `retry`,
/// `dead_lettered`).
async fn process<H: Handler>(
    message: jetstream::Message,
    handler: &H,
    letters: &DeadLetterWriter,
    metrics: &Metrics,
    settings: &JobLoopSettings,
) -> &'static str {
    let message = Arc::new(message);
    let (attempt, sequence, published_at) = match message.info() {
        Ok(info) => (
            info.delivered.max(1) as u64,
            info.stream_sequence,
            server_time(info.published),
        ),
        Err(_) => (1, 0, None),
    };
    let headers = message.headers.clone().unwrap_or_default();
    let delivery = Delivery {
        subject: settings.subjects.strip(message.subject.as_str()).to_owned(),
        payload: message.payload.clone(),
        headers: headers.clone(),
        attempt,
        sequence,
        published_at,
    };
    let span = tracing::info_span!("job", consumer = %settings.consumer, subject = %delivery.subject, attempt, sequence);
    crate::telemetry::set_parent_from_headers(&span, &headers);
    let started = Instant::now();
    metrics.in_flight.inc();

    let outcome = async {
        if let Some(limit) =
            crate::topology::payload_limit(&settings.payload_limits, &delivery.subject)
            && delivery.payload.len() > limit.max_bytes
        {
            return Outcome::Poison {
                reason: format!(
                    "payload of {} bytes is over the {}-byte limit of {}",
                    delivery.payload.len(),
                    limit.max_bytes,
                    limit.subject
                ),
            };
        }
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
            Err(invalid) => return Outcome::poison(&invalid),
        }
        // Keep the delivery alive while the handler works.
        let keepalive = {
            let message = message.clone();
            let (ack_wait, cap) = (settings.ack_wait, settings.max_job_duration);
            tokio::spawn(keep_alive(ack_wait, cap, move || {
                let message = message.clone();
                async move { message.ack_with(AckKind::Progress).await.is_ok() }
            }))
        };
        let outcome = std::panic::AssertUnwindSafe(handler.handle(delivery.clone()))
            .catch_unwind()
            .await;
        keepalive.abort();
        outcome.unwrap_or_else(|_| Outcome::transient("handler panicked"))
    }
    .instrument(span.clone())
    .await;

    let label = settle(&message, outcome, &delivery, handler, letters, settings)
        .instrument(span)
        .await;
    metrics.in_flight.dec();
    metrics.observe(label, started.elapsed());
    label
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
pub async fn watch_max_deliveries<H: Handler>(
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Arc<JobLoopSettings>,
    handler: Arc<H>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let letters = DeadLetterWriter::new(
        publisher,
        js.clone(),
        settings.dead_letter_subject.clone(),
        settings.dead_letter_payloads.clone(),
    );
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
        let delivery = Delivery {
            subject: settings
                .subjects
                .strip(original.subject.as_str())
                .to_owned(),
            payload: original.payload.clone(),
            headers: original.headers.clone(),
            attempt: advisory.deliveries,
            sequence: advisory.stream_seq,
            published_at: server_time(original.time),
        };
        let letter = DeadLetter::new(
            &settings,
            "max_deliver",
            format!(
                "not settled after {} deliveries (workers crashed, hung or timed out)",
                advisory.deliveries
            ),
            delivery.subject.clone(),
            advisory.stream_seq,
            &original.headers,
            &original.payload,
            advisory.deliveries,
            published_text(delivery.published_at.as_ref()),
        );
        match letters.write(letter, &original.payload).await {
            Ok(letter) => {
                handler.dead_lettered(&delivery, &letter).await;
                let _ = stream.delete_message(advisory.stream_seq).await;
                metrics.observe("dead_lettered", Duration::ZERO);
                tracing::error!(
                    sequence = advisory.stream_seq,
                    "dead-lettered a message no worker settled"
                );
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "dead-letter write failed; the message stays in the stream")
            }
        }
    }
}

/// The one place outcomes become acknowledgements. Returns the metrics label.
async fn settle<H: Handler>(
    message: &jetstream::Message,
    outcome: Outcome,
    delivery: &Delivery,
    handler: &H,
    letters: &DeadLetterWriter,
    settings: &JobLoopSettings,
) -> &'static str {
    let attempt = delivery.attempt;
    let (reason, error) = match outcome {
        Outcome::Done => {
            if let Err(e) = message.double_ack().await {
                tracing::warn!(error = %e, "ack not confirmed; the job may be redelivered (handlers are idempotent)");
            }
            return "done";
        }
        Outcome::Transient { reason } => {
            match settings.retry.delay(attempt as u32, rand::random::<f64>()) {
                Some(after) if attempt < settings.max_deliver => {
                    tracing::info!(%reason, ?after, attempt, "retrying later");
                    let _ = message.ack_with(AckKind::Nak(Some(after))).await;
                    return "retry";
                }
                _ => (
                    "max_deliver",
                    format!("gave up after {attempt} deliveries: {reason}"),
                ),
            }
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
        published_text(delivery.published_at.as_ref()),
    );
    match letters.write(letter, &delivery.payload).await {
        Ok(letter) => {
            tracing::error!(error = %letter.error, reason, "dead-lettered");
            handler.dead_lettered(delivery, &letter).await;
            let _ = message.ack_with(AckKind::Term).await;
            "dead_lettered"
        }
        Err(e) => {
            // Never drop a message we could not copy: try again later.
            tracing::error!(error = %error_chain(&e), "dead-letter write failed; keeping the message");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            "retry"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_running_job_is_kept_alive_until_its_duration_cap() {
        // ack_wait 30 s: a renewal every 10 s; a 600 s cap: renewals at 10 … 590 s.
        let started = tokio::time::Instant::now();
        let sent = keep_alive(
            Duration::from_secs(30),
            Duration::from_secs(600),
            || async { true },
        )
        .await;
        assert_eq!(sent, 59);
        assert_eq!(started.elapsed(), Duration::from_secs(590));
    }

    #[tokio::test(start_paused = true)]
    async fn renewing_stops_when_the_delivery_is_gone_and_is_never_too_rare() {
        let calls = AtomicU32::new(0);
        let sent = keep_alive(Duration::from_secs(30), Duration::from_secs(600), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { n < 2 }
        })
        .await;
        assert_eq!((sent, calls.load(Ordering::SeqCst)), (2, 3));
        // A tiny ack_wait still renews at most every 100 ms, not in a busy loop.
        let started = tokio::time::Instant::now();
        let sent = keep_alive(
            Duration::from_millis(30),
            Duration::from_secs(1),
            || async { true },
        )
        .await;
        assert_eq!(sent, 9);
        assert_eq!(started.elapsed(), Duration::from_millis(900));
    }
}
