//! Publishing: every message carries `Nats-Msg-Id` (so JetStream's duplicate window drops
//! retries) and the call waits for the stream's acknowledgement. The current span's W3C trace
//! context travels in the headers.
//!
//! A publish the server answers with "no responders" (async-nats: `StreamNotFound`) is tried
//! again, 7 times over 3–6 s: in a cluster a node that has just (re)joined routes a stream's
//! subjects only once it has caught up with the others, and a rolling upgrade of NATS does that
//! to every node in turn (the deployer's cluster failover test met it). A publish whose ack
//! timed out (the stream's leader died and its peers are electing another) is tried again too,
//! as long as less than [`ACK_TIMEOUT_RETRY_FOR`] has passed. The message id makes every retry
//! safe: one that lands twice is dropped as a duplicate. A stream that really is missing still
//! fails, 3–6 s later.

use std::time::Duration;

use backon::Retryable;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use serde::Serialize;

/// How long after its first attempt a publish whose ack timed out is still tried again: a
/// JetStream leader election takes a few seconds.
pub const ACK_TIMEOUT_RETRY_FOR: Duration = Duration::from_secs(15);

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The payload could not be encoded.
    #[error("encoding the payload for {subject}")]
    Encode {
        /// The subject the message was for.
        subject: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// The server did not accept or acknowledge the message.
    #[error("publishing to {subject}: {message}")]
    Send {
        /// The subject the message was for.
        subject: String,
        /// What went wrong.
        message: String,
        /// No answer came (the ack timed out, the connection broke, no stream answered): NATS
        /// unreachable, restarting or electing a leader. False when the server answered with a
        /// refusal (a full stream, a permission, a bad subject).
        unavailable: bool,
    },
}

impl PublishError {
    /// Publishing failures are transient (the server is unreachable or slow, or refused what a
    /// later delivery may find accepted).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Send { .. })
    }

    /// The server gave no answer (see [`PublishError::Send`]'s `unavailable`): worth waiting
    /// for, unlike a refusal.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Send {
                unavailable: true,
                ..
            }
        )
    }
}

/// What the stream said about a published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Stream sequence.
    pub sequence: u64,
    /// True when the message id was seen within the duplicate window (nothing new stored).
    pub duplicate: bool,
}

/// Publishes JSON or bytes with a message id, waiting for the ack.
#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    /// A publisher on `js`.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes raw bytes.
    pub async fn publish_bytes(
        &self,
        subject: &str,
        message_id: &str,
        payload: Bytes,
        mut headers: HeaderMap,
    ) -> Result<Published, PublishError> {
        crate::telemetry::inject_context(&mut headers);
        let no_responders = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(800))
            .with_max_times(7)
            .with_jitter();
        let started = std::time::Instant::now();
        let ack = (|| self.publish_once(subject, message_id, payload.clone(), headers.clone()))
            .retry(no_responders)
            .when(|e: &jetstream::context::PublishError| match e.kind() {
                jetstream::context::PublishErrorKind::StreamNotFound => true,
                jetstream::context::PublishErrorKind::TimedOut => {
                    started.elapsed() < ACK_TIMEOUT_RETRY_FOR
                }
                _ => false,
            })
            .await
            .map_err(|e| PublishError::Send {
                subject: subject.to_owned(),
                message: e.to_string(),
                unavailable: matches!(
                    e.kind(),
                    jetstream::context::PublishErrorKind::TimedOut
                        | jetstream::context::PublishErrorKind::StreamNotFound
                        | jetstream::context::PublishErrorKind::BrokenPipe
                        | jetstream::context::PublishErrorKind::MaxAckPending
                ),
            })?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn publish_once(
        &self,
        subject: &str,
        message_id: &str,
        payload: Bytes,
        headers: HeaderMap,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        self.send(subject, message_id, payload, headers)
            .await?
            .await
    }

    /// Sends one message; its ack is awaited by the caller.
    async fn send(
        &self,
        subject: &str,
        message_id: &str,
        payload: Bytes,
        headers: HeaderMap,
    ) -> Result<PublishAckFuture, jetstream::context::PublishError> {
        let message = PublishMessage::build()
            .headers(headers)
            .payload(payload)
            .message_id(message_id);
        self.js.send_publish(subject.to_owned(), message).await
    }

    /// Publishes every `(message id, value)` of `entries` as JSON to `subject`, in order:
    /// each is sent before the next, and their acks are awaited together (one round trip for
    /// the lot). One not acknowledged is published again on its own, with [`Self::publish_bytes`]'s
    /// retries (its id makes that safe; only then can it land after a later entry).
    pub async fn publish_json_all<T: Serialize>(
        &self,
        subject: &str,
        entries: &[(String, T)],
    ) -> Result<(), PublishError> {
        let mut sent = Vec::with_capacity(entries.len());
        for (id, value) in entries {
            let payload = encode(subject, value)?;
            let mut headers = HeaderMap::new();
            crate::telemetry::inject_context(&mut headers);
            let ack = self
                .send(subject, id, payload.clone(), headers.clone())
                .await;
            sent.push((id, payload, headers, ack));
        }
        for (id, payload, headers, ack) in sent {
            let acked = match ack {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !acked {
                self.publish_bytes(subject, id, payload, headers).await?;
            }
        }
        Ok(())
    }

    /// Publishes `value` as JSON.
    pub async fn publish_json<T: Serialize>(
        &self,
        subject: &str,
        message_id: &str,
        value: &T,
        headers: HeaderMap,
    ) -> Result<Published, PublishError> {
        self.publish_bytes(subject, message_id, encode(subject, value)?, headers)
            .await
    }
}

/// `value` as JSON, for `subject`.
fn encode<T: Serialize>(subject: &str, value: &T) -> Result<Bytes, PublishError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|source| PublishError::Encode {
            subject: subject.to_owned(),
            source,
        })
}
