//! The per-tenant entries of deployments (KV `fleet_deploy_results`, one revision per key):
//! target lists, results, retry markers and rollback results, as `fleet-rollouts` names them
//! ([`EntryKey`], [`ResultEntry`]). Every operation here touches one key or the entries of one
//! deployment written after a given stream sequence — never the whole fleet on a per-tenant
//! path. Only [`DeployResults::list`] reads a deployment's every entry: an operator's listing,
//! a resume or a rollback (once per deployment, not per tenant).

use std::ops::Range;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::RawMessageErrorKind;
use bytes::Bytes;
use fleet_protocol::{DeployStatus, DeploymentId, TenantId};
use fleet_rollouts::{EntryKey, ResultEntry, TARGET_CHUNK, Written, targets_key};

/// Why an entry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The bucket did not answer (transient: the server is unreachable or slow).
    #[error("fleet_deploy_results: {0}")]
    Store(String),
    /// A stored entry does not parse.
    #[error("entry {key} does not parse: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// The parser's message.
        message: String,
    },
    /// A chunk of a deployment's target list is missing (written before the deployment, so
    /// this is a bucket that lost data).
    #[error("deployment {0}: target chunk {1} is missing")]
    MissingTargets(DeploymentId, String),
}

impl ResultsError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

fn store_error(e: impl std::fmt::Display) -> ResultsError {
    ResultsError::Store(e.to_string())
}

/// Entries one batched direct get asks for at most.
const DIRECT_BATCH: usize = 256;

/// How long a batched direct get may take for each message it answers with.
const DIRECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `fleet_deploy_results` bucket.
#[derive(Debug, Clone)]
pub struct DeployResults {
    kv: kv::Store,
    /// The connection for batched direct gets (`$JS.API.DIRECT.GET.<stream>`), when given.
    client: Option<async_nats::Client>,
}

/// An entry as read from the bucket's stream.
struct Raw {
    sequence: u64,
    subject: String,
    deleted: bool,
    payload: Bytes,
}

impl DeployResults {
    /// Entries in `kv` (the bucket `fleet_deploy_results` of the topology), read one message
    /// per request.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv, client: None }
    }

    /// Entries in `kv`, with [`Self::read_since`] asking for up to 256 entries per request
    /// over `client` (JetStream's batched direct get, server 2.11+; the default API prefix
    /// `$JS.API`, which the fleet never changes) instead of one request per entry.
    pub fn with_batched_reads(kv: kv::Store, client: async_nats::Client) -> Self {
        Self {
            kv,
            client: Some(client),
        }
    }

    /// Writes attempt `attempt`'s target list of `id`, [`TARGET_CHUNK`] tenants per key (in
    /// rollout order). Overwrites an earlier write of the same attempt.
    pub async fn write_targets(
        &self,
        id: &DeploymentId,
        attempt: &str,
        targets: &[TenantId],
    ) -> Result<(), ResultsError> {
        use futures::{StreamExt, TryStreamExt};
        let puts: Vec<_> = targets
            .chunks(TARGET_CHUNK)
            .enumerate()
            .map(|(chunk, tenants)| {
                let key = targets_key(id, attempt, chunk);
                let value = Bytes::from(serde_json::to_vec(tenants).expect("tenant ids serialize"));
                let kv = self.kv.clone();
                async move { kv.put(key, value).await.map(|_| ()).map_err(store_error) }
            })
            .collect();
        futures::stream::iter(puts)
            .buffer_unordered(16)
            .try_collect::<()>()
            .await
    }

    /// Targets `range` (ordinals in rollout order) of `id`'s list written by `attempt`.
    pub async fn targets(
        &self,
        id: &DeploymentId,
        attempt: &str,
        range: Range<u64>,
    ) -> Result<Vec<TenantId>, ResultsError> {
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        if range.is_empty() {
            return Ok(out);
        }
        let chunk = TARGET_CHUNK as u64;
        for index in range.start / chunk..=(range.end - 1) / chunk {
            let key = targets_key(id, attempt, index as usize);
            let value = self
                .kv
                .get(&key)
                .await
                .map_err(store_error)?
                .ok_or_else(|| ResultsError::MissingTargets(id.clone(), key.clone()))?;
            let tenants: Vec<TenantId> =
                serde_json::from_slice(&value).map_err(|e| ResultsError::Corrupt {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
            let first = index * chunk;
            for (offset, tenant) in tenants.into_iter().enumerate() {
                if range.contains(&(first + offset as u64)) {
                    out.push(tenant);
                }
            }
        }
        Ok(out)
    }

    /// The entry at `key` of `id` and its revision.
    pub async fn get(
        &self,
        id: &DeploymentId,
        key: &EntryKey,
    ) -> Result<Option<(ResultEntry, u64)>, ResultsError> {
        let key = key.key(id);
        let Some(entry) = self.kv.entry(&key).await.map_err(store_error)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let value = serde_json::from_slice(&entry.value).map_err(|e| ResultsError::Corrupt {
            key,
            message: e.to_string(),
        })?;
        Ok(Some((value, entry.revision)))
    }

    /// Records a tenant's outcome at `key` unless one is there: the first outcome stands, a
    /// retry marker is replaced. Returns the revision of the outcome that stands (ours or the
    /// earlier one) — what a fold must reach before the result counts.
    pub async fn record(
        &self,
        id: &DeploymentId,
        key: &EntryKey,
        entry: &ResultEntry,
    ) -> Result<u64, ResultsError> {
        let name = key.key(id);
        let value = Bytes::from(serde_json::to_vec(entry).expect("entries serialize"));
        for _ in 0..8 {
            match self.kv.create(&name, value.clone()).await {
                Ok(revision) => return Ok(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(store_error(e)),
            }
            match self.get(id, key).await? {
                Some((ResultEntry::Outcome { .. }, revision)) => return Ok(revision),
                Some((ResultEntry::Retry { .. }, revision)) => {
                    match self.kv.update(&name, value.clone(), revision).await {
                        Ok(revision) => return Ok(revision),
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                        Err(e) => return Err(store_error(e)),
                    }
                }
                None => {} // deleted meanwhile: create again
            }
        }
        Err(ResultsError::Store(format!(
            "{name}: too many concurrent writers"
        )))
    }

    /// Replaces the failed outcome at revision `failed` with a retry marker (a resume). `false`
    /// when the entry changed since (already marked, or retried and recorded again).
    pub async fn mark_retry(
        &self,
        id: &DeploymentId,
        tenant: &TenantId,
        failed: u64,
    ) -> Result<bool, ResultsError> {
        let value = serde_json::to_vec(&ResultEntry::Retry { replaces: failed })
            .expect("entries serialize");
        match self
            .kv
            .update(
                EntryKey::Deploy(tenant.clone()).key(id),
                value.into(),
                failed,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The entries of `id` written after stream sequence `after`, in stream order, and the
    /// sequence of the last one read (`after` when there are none). With batched reads, the
    /// entries come up to 256 per request from any replica; the end is then confirmed by the
    /// stream's leader (a follower may answer before it has the entry this worker just wrote),
    /// which also gives what the batch missed.
    pub async fn read_since(
        &self,
        id: &DeploymentId,
        after: u64,
    ) -> Result<(Vec<Written>, u64), ResultsError> {
        let filter = format!("{}{id}.>", self.kv.prefix);
        let (mut out, mut through) = match &self.client {
            Some(client) => self.read_direct(client, id, after).await?,
            None => (Vec::new(), after),
        };
        loop {
            // From the stream's leader (not a direct get).
            let message = match self
                .kv
                .stream
                .raw_message_builder()
                .sequence(through + 1)
                .next_by_subject(filter.as_str())
                .send()
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(store_error(e)),
            };
            through = message.sequence;
            let deleted = message
                .headers
                .get("KV-Operation")
                .is_some_and(|op| op.as_str() != "PUT");
            let raw = Raw {
                sequence: message.sequence,
                subject: message.subject.to_string(),
                deleted,
                payload: message.payload,
            };
            self.collect(id, raw, &mut out)?;
        }
        Ok((out, through))
    }

    /// The batched half of [`Self::read_since`] alone — whatever replica answers, without the
    /// leader's confirmation of the end (what the tests compare with the leader's reads).
    pub async fn read_direct(
        &self,
        client: &async_nats::Client,
        id: &DeploymentId,
        after: u64,
    ) -> Result<(Vec<Written>, u64), ResultsError> {
        let filter = format!("{}{id}.>", self.kv.prefix);
        let (mut out, mut through) = (Vec::new(), after);
        loop {
            let (batch, more) = self.direct_batch(client, &filter, through).await?;
            for raw in batch {
                through = raw.sequence;
                self.collect(id, raw, &mut out)?;
            }
            if !more {
                return Ok((out, through));
            }
        }
    }

    /// Adds a result entry of `id` read from the stream to `out` (deletions, target chunks and
    /// other deployments' entries are skipped).
    fn collect(
        &self,
        id: &DeploymentId,
        raw: Raw,
        out: &mut Vec<Written>,
    ) -> Result<(), ResultsError> {
        let Some(name) = raw.subject.strip_prefix(self.kv.prefix.as_str()) else {
            return Ok(());
        };
        if raw.deleted || raw.payload.is_empty() {
            return Ok(());
        }
        let Some(key) = EntryKey::parse(id, name) else {
            return Ok(());
        };
        if key == EntryKey::Targets {
            return Ok(());
        }
        let entry = serde_json::from_slice(&raw.payload).map_err(|e| ResultsError::Corrupt {
            key: name.to_owned(),
            message: e.to_string(),
        })?;
        out.push(Written {
            sequence: raw.sequence,
            key,
            entry,
        });
        Ok(())
    }

    /// One batched direct get: up to [`DIRECT_BATCH`] messages on `filter` after sequence
    /// `after`, and whether more are pending. The server answers with the messages, then an
    /// end-of-batch status (204) — or 404 when there are none.
    async fn direct_batch(
        &self,
        client: &async_nats::Client,
        filter: &str,
        after: u64,
    ) -> Result<(Vec<Raw>, bool), ResultsError> {
        use futures::StreamExt;
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.map_err(store_error)?;
        let request = serde_json::json!({
            "seq": after + 1,
            "next_by_subj": filter,
            "batch": DIRECT_BATCH,
        });
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.kv.stream_name),
                inbox,
                serde_json::to_vec(&request)
                    .expect("a request serializes")
                    .into(),
            )
            .await
            .map_err(store_error)?;
        let mut out = Vec::new();
        loop {
            let message = tokio::time::timeout(DIRECT_TIMEOUT, replies.next())
                .await
                .map_err(|_| ResultsError::Store(format!("direct get on {filter}: timed out")))?
                .ok_or_else(|| ResultsError::Store(format!("direct get on {filter}: closed")))?;
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            match message.status.map(u16::from) {
                Some(404) => return Ok((out, false)),
                Some(204) => {
                    let pending = header("Nats-Num-Pending")
                        .and_then(|p| p.parse::<u64>().ok())
                        .unwrap_or(0);
                    let more = pending > 0 && !out.is_empty();
                    return Ok((out, more));
                }
                Some(status) if status != 200 => {
                    return Err(ResultsError::Store(format!(
                        "direct get on {filter}: status {status} {}",
                        message.description.as_deref().unwrap_or_default()
                    )));
                }
                _ => {}
            }
            let sequence = header("Nats-Sequence")
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ResultsError::Store(format!("direct get on {filter}: no Nats-Sequence"))
                })?;
            let subject = header("Nats-Subject").unwrap_or_default();
            let deleted = header("KV-Operation").is_some_and(|op| op != "PUT");
            out.push(Raw {
                sequence,
                subject,
                deleted,
                payload: message.payload,
            });
        }
    }

    /// The failed tenants of `id` and their errors, in stream order: its deploys, or with
    /// `rollback` its rollbacks (one listing of its entries).
    pub async fn failures(
        &self,
        id: &DeploymentId,
        rollback: bool,
    ) -> Result<Vec<(TenantId, String)>, ResultsError> {
        Ok(self
            .list(id)
            .await?
            .into_iter()
            .filter_map(|w| {
                let tenant = match w.key {
                    EntryKey::Deploy(t) if !rollback => t,
                    EntryKey::Rollback(t) if rollback => t,
                    _ => return None,
                };
                match w.entry {
                    ResultEntry::Outcome { outcome, .. }
                        if outcome.status == DeployStatus::Failed =>
                    {
                        Some((tenant, outcome.error.unwrap_or_default()))
                    }
                    _ => None,
                }
            })
            .collect())
    }

    /// Every entry of `id` (the bucket keeps one revision per key: the latest of each).
    pub async fn list(&self, id: &DeploymentId) -> Result<Vec<Written>, ResultsError> {
        Ok(self.read_since(id, 0).await?.0)
    }
}
