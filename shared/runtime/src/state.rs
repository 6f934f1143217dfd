//! Current state in a KV bucket, changed only by compare-and-set on the revision.
//!
//! [`StateStore::transition`] reads the current value and its revision, asks a pure function for
//! the next state (or a typed refusal), and writes it with `create` (no value yet) or
//! `update(revision)`. A lost race — someone wrote in between — re-reads and re-evaluates, so the
//! function always decides on the latest state; an illegal transition is returned as the
//! function's own error, never written. Each write is appended to the progress stream
//! (`progress.<kind>.<key>`, message id `<kind>:<key>:<revision>`), the history `fleetctl`
//! shows. While NATS gives no answer (restarting, unreachable) a store waits for it, up to
//! [`OUTAGE_PATIENCE`]: a write whose answer was lost is looked for, and found landed it is
//! this write, its entries published; entries not acknowledged are published again. A worker
//! that carries several steps out in memory records them with one write
//! ([`StateStore::transition_steps_from`]): each step keeps its own entry
//! (`<kind>:<key>:<revision>:<step>`), published ahead of the write's own.

use std::marker::PhantomData;
use std::time::Duration;

use tokio::time::Instant;

use backon::Retryable;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::publish::{PublishError, Publisher};

pub use fleet_state::{Decision, ProgressEvent, Versioned};

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StateError<E: std::error::Error + 'static> {
    /// The pure state machine refused it.
    #[error(transparent)]
    Refused(E),
    /// The stored value could not be decoded.
    #[error("state of {key} is unreadable: {message}")]
    Corrupt {
        /// The KV key whose value did not decode.
        key: String,
        /// The JSON decoding error, as its message.
        message: String,
    },
    /// The KV store failed (transient).
    #[error("state store: {0}")]
    Store(String),
    /// Too many lost races in a row.
    #[error("state of {0} keeps changing under us; giving up for now")]
    Contention(String),
    /// Written, but the progress entries were refused, or still not published after the
    /// store's patience ([`OUTAGE_PATIENCE`]; transient, and that write's history stays
    /// incomplete).
    #[error("state written at revision {revision}, but its progress entry was not published")]
    Progress {
        /// The revision written.
        revision: u64,
        /// The failed publish of the progress entry.
        #[source]
        source: PublishError,
    },
}

/// A stored value of `key` at `revision`, decoded; [`StateError::Corrupt`] when it is not JSON
/// of the state's shape.
fn decode<S: DeserializeOwned, E: std::error::Error + 'static>(
    key: &str,
    bytes: &[u8],
    revision: u64,
) -> Result<Versioned<S>, StateError<E>> {
    let state = serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    Ok(Versioned { state, revision })
}

/// Why a read from a stream leader failed: the error's text, and whether NATS gave no answer
/// (the request failed or timed out, or JetStream said it is not available for now) rather
/// than refusing it.
#[derive(Debug)]
struct ReadFailure {
    message: String,
    unavailable: bool,
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The last message on `key`'s subject in `kv`'s stream, as the stream leader holds it (`None`:
/// the key never had one), a deletion's marker included. A direct get (`kv::Store::entry`) is
/// answered by any replica, and one still catching up after a restart answers from the past;
/// these reads are for callers that decide on what they read without a compare-and-set to
/// catch it.
async fn leader_message(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, ReadFailure> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    // A key is a subject token path: a wildcard (`*`, `>`) would match another key's subject
    // here, where a direct get refuses it. The same rule as the KV API's.
    let valid = !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b));
    if !valid {
        return Err(ReadFailure {
            message: format!("invalid key {key:?}"),
            unavailable: false,
        });
    }
    let subject = format!("{}{key}", kv.prefix);
    match kv.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => Ok(Some(message)),
        Err(e) => {
            let unavailable = match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                LastRawMessageErrorKind::Other => true,
                LastRawMessageErrorKind::JetStream(error) => error.code() == 503,
                LastRawMessageErrorKind::InvalidSubject => false,
            };
            Err(ReadFailure {
                message: e.to_string(),
                unavailable,
            })
        }
    }
}

/// The value of `key` in `kv` and its revision as the bucket's stream leader holds it (see
/// [`leader_message`]), `None` when the key has none or was deleted. Errors are the server's,
/// as text.
pub async fn leader_entry(kv: &kv::Store, key: &str) -> Result<Option<(Bytes, u64)>, String> {
    let Some(message) = leader_message(kv, key).await.map_err(|e| e.message)? else {
        return Ok(None);
    };
    if is_deletion(&message) {
        return Ok(None);
    }
    Ok(Some((message.payload, message.sequence)))
}

/// Whether `message` marks its key deleted: a deleted or purged key keeps a marker message
/// (`KV-Operation: DEL | PURGE`); the server's own markers (`Nats-Marker-Reason`: MaxAge,
/// Purge, Remove) mean the same.
fn is_deletion(message: &async_nats::jetstream::message::StreamMessage) -> bool {
    message
        .headers
        .get("KV-Operation")
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
        || message.headers.get("Nats-Marker-Reason").is_some()
}

/// The last revision of `key` in `kv` as the bucket's stream leader holds it, a deletion's
/// included (0: the key never had one) — what a command sent after a deletion is told apart by.
pub async fn leader_revision(kv: &kv::Store, key: &str) -> Result<u64, String> {
    Ok(leader_message(kv, key)
        .await
        .map_err(|e| e.message)?
        .map_or(0, |m| m.sequence))
}

impl<E: std::error::Error + 'static> StateError<E> {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Store(_) | Self::Contention(_) | Self::Progress { .. }
        )
    }
}

/// Typed states of one kind in one bucket.
#[derive(Debug, Clone)]
pub struct StateStore<S> {
    kind: String,
    kv: kv::Store,
    publisher: Publisher,
    progress_subject: String,
    patience: Duration,
    _state: PhantomData<fn() -> S>,
}

const MAX_RACES: usize = 32;

/// How long after a write's first attempt (wall clock) a store keeps waiting on NATS when it
/// gives no answer (restarting, unreachable, electing a leader), so that no written state loses
/// its history: a write whose answer was lost is looked for (it may have landed), and progress
/// entries are published again, backing off from 250 ms to 5 s. No attempt starts after it, but
/// one started before may take [`Publisher::publish_bytes`]'s own retries (~20 s) to end. Both
/// together stay under the progress stream's 2-minute duplicate window, so an entry that was
/// stored but not acknowledged is not stored twice, and under a job's maximum duration, so its
/// delivery stays renewed meanwhile. A refusal (a full stream, a permission) is not waited on.
pub const OUTAGE_PATIENCE: Duration = Duration::from_secs(60);

/// Why a write's compare-and-set did not report success.
enum Unwritten {
    /// Refused on the revision: another writer got there first.
    Lost,
    /// A create found a value: another writer's, or ours whose answer was lost.
    Exists,
    /// Refused for good (an invalid key).
    Refused(String),
    /// No answer, or an error that leaves it unknown whether the write landed.
    Unknown(String),
}

/// `attempt`, and again while it fails with no answer from NATS (`unavailable` says which
/// failures are that) — backing off from 250 ms to 5 s, with jitter — as long as the next
/// attempt would start before `deadline`; each retry is logged with `about` and `what`. A
/// refusal ends it at once.
async fn patiently<T, E, Fut>(
    attempt: impl FnMut() -> Fut,
    unavailable: impl Fn(&E) -> bool,
    deadline: Instant,
    about: &str,
    what: &str,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter();
    attempt
        .retry(backoff)
        .adjust(|e: &E, wait| {
            wait.filter(|wait| unavailable(e) && Instant::now() + *wait < deadline)
        })
        .notify(|error, after| {
            tracing::warn!(
                about,
                error = %error,
                retry_in_ms = after.as_millis() as u64,
                "{what}; trying again"
            );
        })
        .await
}

impl<S: Serialize + DeserializeOwned + Clone> StateStore<S> {
    /// States of `kind` in `kv`, progress published under `progress_prefix` (e.g.
    /// `progress.tenant`, prefixed as the topology says).
    pub fn new(
        kind: impl Into<String>,
        kv: kv::Store,
        publisher: Publisher,
        progress_prefix: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.into(),
            kv,
            publisher,
            progress_subject: progress_prefix.into(),
            patience: OUTAGE_PATIENCE,
            _state: PhantomData,
        }
    }

    /// This store waiting `patience` on NATS instead of [`OUTAGE_PATIENCE`] (a command-line
    /// tool reports at once instead: `Duration::ZERO`).
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Publishes a write's progress `entries` (see [`Publisher::publish_json_all`]), and again
    /// while NATS gives no answer, until `deadline`. The state is written by then: given up,
    /// its entries would be missing from the history for good, since the write is never made
    /// again.
    async fn publish_progress(
        &self,
        subject: &str,
        entries: &[(String, ProgressEvent)],
        deadline: Instant,
    ) -> Result<(), PublishError> {
        patiently(
            || self.publisher.publish_json_all(subject, entries),
            PublishError::is_unavailable,
            deadline,
            subject,
            "a written state's progress entries are not published yet",
        )
        .await
    }

    /// The last message on `key`'s subject as the bucket's stream leader holds it, after a
    /// change whose answer never came: read again while NATS does not answer, until
    /// `deadline`; `None` when there is none or it cannot be read.
    async fn look_up(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Option<async_nats::jetstream::message::StreamMessage> {
        patiently(
            || leader_message(&self.kv, key),
            |e: &ReadFailure| e.unavailable,
            deadline,
            key,
            "a change's answer was lost and its key cannot be read yet",
        )
        .await
        .ok()
        .flatten()
    }

    /// The revision at which a write of `bytes` to `key` over revision `base` (0: a create)
    /// landed although its answer never came: the key's latest value, as the bucket's stream
    /// leader holds it, is those bytes at a later revision (a state carries its own times and
    /// holder, so another writer's is not byte for byte the same). `None` when it did not land
    /// or cannot be told by `deadline`.
    async fn landed(&self, key: &str, bytes: &[u8], base: u64, deadline: Instant) -> Option<u64> {
        let message = self.look_up(key, deadline).await?;
        (message.sequence > base && !is_deletion(&message) && message.payload.as_ref() == bytes)
            .then_some(message.sequence)
    }

    /// The current state of `key`.
    pub async fn get<E: std::error::Error + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<S>>, StateError<E>> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| StateError::Store(e.to_string()))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                decode(key, &entry.value, entry.revision).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The current state of `key` as the bucket's stream leader holds it. [`Self::get`] is a
    /// direct get, which any replica answers — one that has just restarted and is still
    /// catching up answers from the past; a caller that writes next finds that out by its
    /// compare-and-set, one that only reads (choosing a rollout's targets) would not.
    pub async fn get_from_leader<E: std::error::Error + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<S>>, StateError<E>> {
        match leader_entry(&self.kv, key)
            .await
            .map_err(StateError::Store)?
        {
            Some((value, revision)) => decode(key, &value, revision).map(Some),
            None => Ok(None),
        }
    }

    /// Every key with a value (an operator's listing: it reads the whole bucket).
    pub async fn keys(&self) -> Result<Vec<String>, StateError<std::convert::Infallible>> {
        use futures::TryStreamExt;
        let keys = self
            .kv
            .keys()
            .await
            .map_err(|e| StateError::Store(e.to_string()))?;
        let mut keys: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| StateError::Store(e.to_string()))?;
        keys.sort();
        Ok(keys)
    }

    /// Writes `next` over `current` (created when `current` is `None`) by compare-and-set,
    /// then publishes `event` with the new revision. `Ok(None)`: another writer got there first
    /// (re-read and decide again). For callers whose decision needs I/O between the read and
    /// the write, which [`Self::transition`]'s pure `decide` cannot do.
    pub async fn try_write<E: std::error::Error + 'static>(
        &self,
        key: &str,
        current: Option<&Versioned<S>>,
        next: S,
        event: ProgressEvent,
    ) -> Result<Option<Versioned<S>>, StateError<E>> {
        self.try_write_steps(key, current, next, Vec::new(), event)
            .await
    }

    /// [`Self::try_write`] of a state that also records `earlier`: steps finished in memory
    /// before this write (see [`Self::transition_steps_from`]). Their entries are published
    /// ahead of `event`, in order, each under `<kind>:<key>:<revision>:<step>`, their acks
    /// awaited together (one round trip for the lot, not one per entry).
    pub async fn try_write_steps<E: std::error::Error + 'static>(
        &self,
        key: &str,
        current: Option<&Versioned<S>>,
        next: S,
        earlier: Vec<ProgressEvent>,
        event: ProgressEvent,
    ) -> Result<Option<Versioned<S>>, StateError<E>> {
        let deadline = Instant::now() + self.patience;
        let bytes = Bytes::from(serde_json::to_vec(&next).expect("states serialize"));
        let base = current.map_or(0, |c| c.revision);
        let written = match current {
            None => self
                .kv
                .create(key, bytes.clone())
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => Unwritten::Exists,
                    kv::CreateErrorKind::InvalidKey => Unwritten::Refused(e.to_string()),
                    _ => Unwritten::Unknown(e.to_string()),
                }),
            Some(current) => self
                .kv
                .update(key, bytes.clone(), current.revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => Unwritten::Lost,
                    kv::UpdateErrorKind::InvalidKey => Unwritten::Refused(e.to_string()),
                    _ => Unwritten::Unknown(e.to_string()),
                }),
        };
        // A write whose answer was lost may have landed: then it is this write, history included.
        let revision = match written {
            Ok(revision) => revision,
            Err(Unwritten::Lost) => return Ok(None),
            Err(Unwritten::Refused(message)) => return Err(StateError::Store(message)),
            Err(Unwritten::Exists) => match self.landed(key, &bytes, base, deadline).await {
                Some(revision) => revision,
                None => return Ok(None),
            },
            Err(Unwritten::Unknown(message)) => {
                match self.landed(key, &bytes, base, deadline).await {
                    Some(revision) => revision,
                    None => return Err(StateError::Store(message)),
                }
            }
        };
        let subject = format!("{}.{key}", self.progress_subject);
        let id = format!("{}:{key}:{revision}", self.kind);
        // The earlier steps' entries, then the write's own.
        let mut entries: Vec<(String, ProgressEvent)> = earlier
            .into_iter()
            .map(|e| (format!("{id}:{}", e.step), e))
            .collect();
        entries.push((id, event));
        for (_, e) in &mut entries {
            e.revision = revision;
        }
        self.publish_progress(&subject, &entries, deadline)
            .await
            .map_err(|source| StateError::Progress { revision, source })?;
        Ok(Some(Versioned {
            state: next,
            revision,
        }))
    }

    /// Deletes `key` if it is still at `known`'s revision (compare-and-set), then publishes
    /// `event` (message id `<kind>:<key>:deleted:<revision>`). `Ok(false)`: another writer
    /// changed it first (re-read and decide again). A delete whose answer never came is looked
    /// up as a write is (see [`OUTAGE_PATIENCE`]): found done, it is this delete.
    pub async fn remove<E: std::error::Error + 'static>(
        &self,
        key: &str,
        known: &Versioned<S>,
        mut event: ProgressEvent,
    ) -> Result<bool, StateError<E>> {
        let deadline = Instant::now() + self.patience;
        match self
            .kv
            .delete_expect_revision(key, Some(known.revision))
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => return Ok(false),
            // A delete whose answer never came may have landed: the key's last message is a
            // deletion after `known` (this one, or a racing remover's of the same revision,
            // whose entry has the same id).
            Err(e) => match self.look_up(key, deadline).await {
                Some(last) if last.sequence > known.revision && is_deletion(&last) => {}
                _ => return Err(StateError::Store(e.to_string())),
            },
        }
        event.revision = known.revision;
        let subject = format!("{}.{key}", self.progress_subject);
        let id = format!("{}:{key}:deleted:{}", self.kind, known.revision);
        self.publish_progress(&subject, &[(id, event)], deadline)
            .await
            .map_err(|source| StateError::Progress {
                revision: known.revision,
                source,
            })?;
        Ok(true)
    }

    /// [`Self::transition`] starting from `known`, a state of `key` the caller read or wrote
    /// before: decided on and written by compare-and-set without reading it again, and only
    /// re-read if another writer changed it since (a worker that owns an entity saves a read
    /// per write).
    pub async fn transition_from<E, F>(
        &self,
        key: &str,
        known: &Versioned<S>,
        decide: F,
    ) -> Result<Option<Versioned<S>>, StateError<E>>
    where
        E: std::error::Error + 'static,
        F: Fn(Option<&Versioned<S>>) -> Result<Decision<S>, E>,
    {
        self.transition_steps_from(key, known, |cur| Ok((Vec::new(), decide(cur)?)))
            .await
    }

    /// [`Self::transition_from`] for a worker that carries steps out in memory and writes
    /// several at once: `decide` applies them to the state it is given (the latest, after a
    /// lost race) and returns their progress entries with the decision. One compare-and-set
    /// records them all, and every step keeps its own entry in the history (published ahead
    /// of the decision's, see [`Self::try_write_steps`]). Entries of a decision that writes
    /// nothing are dropped.
    pub async fn transition_steps_from<E, F>(
        &self,
        key: &str,
        known: &Versioned<S>,
        decide: F,
    ) -> Result<Option<Versioned<S>>, StateError<E>>
    where
        E: std::error::Error + 'static,
        F: Fn(Option<&Versioned<S>>) -> Result<(Vec<ProgressEvent>, Decision<S>), E>,
    {
        match self.decide_and_write(key, Some(known), &decide).await? {
            Some(done) => Ok(done),
            None => self.transition_steps(key, decide).await,
        }
    }

    /// Decides on `current` and carries the decision out: `Some` with the state written (or
    /// `current`, when the decision writes nothing), `None` when another writer changed `key`
    /// since `current` (decide again on the latest).
    async fn decide_and_write<E, F>(
        &self,
        key: &str,
        current: Option<&Versioned<S>>,
        decide: &F,
    ) -> Result<Option<Option<Versioned<S>>>, StateError<E>>
    where
        E: std::error::Error + 'static,
        F: Fn(Option<&Versioned<S>>) -> Result<(Vec<ProgressEvent>, Decision<S>), E>,
    {
        let (earlier, decision) = decide(current).map_err(StateError::Refused)?;
        let Decision::Write { next, event } = decision else {
            return Ok(Some(current.cloned()));
        };
        Ok(self
            .try_write_steps(key, current, next, earlier, event)
            .await?
            .map(Some))
    }

    /// Applies `decide` to the latest state of `key` until it is written without a lost race.
    /// Returns the written state, or the current one when `decide` said [`Decision::Unchanged`].
    pub async fn transition<E, F>(
        &self,
        key: &str,
        decide: F,
    ) -> Result<Option<Versioned<S>>, StateError<E>>
    where
        E: std::error::Error + 'static,
        F: Fn(Option<&Versioned<S>>) -> Result<Decision<S>, E>,
    {
        self.transition_steps(key, |cur| Ok((Vec::new(), decide(cur)?)))
            .await
    }

    /// [`Self::transition`] for a key that is expected not to exist yet (a new entity): when
    /// `decide` on no state writes one, it is created without reading the key first, and the
    /// key is read and decided on again only when it does exist (a redelivery, a concurrent
    /// creator) — the same outcome as [`Self::transition`], one request fewer in the common
    /// case. A decision on no state that refuses or writes nothing is made again on the
    /// state as read.
    pub async fn transition_new<E, F>(
        &self,
        key: &str,
        decide: F,
    ) -> Result<Option<Versioned<S>>, StateError<E>>
    where
        E: std::error::Error + 'static,
        F: Fn(Option<&Versioned<S>>) -> Result<Decision<S>, E>,
    {
        if let Ok(Decision::Write { next, event }) = decide(None)
            && let Some(written) = self.try_write(key, None, next, event).await?
        {
            return Ok(Some(written));
        }
        self.transition(key, decide).await
    }

    /// [`Self::transition`] with the earlier steps of [`Self::transition_steps_from`].
    async fn transition_steps<E, F>(
        &self,
        key: &str,
        decide: F,
    ) -> Result<Option<Versioned<S>>, StateError<E>>
    where
        E: std::error::Error + 'static,
        F: Fn(Option<&Versioned<S>>) -> Result<(Vec<ProgressEvent>, Decision<S>), E>,
    {
        for _ in 0..MAX_RACES {
            let current = self.get(key).await?;
            if let Some(done) = self
                .decide_and_write(key, current.as_ref(), &decide)
                .await?
            {
                return Ok(done);
            }
            // lost the race: re-read, re-decide
        }
        Err(StateError::Contention(key.to_owned()))
    }
}
