//! Worker heartbeats: which replicas are running now, for `fleetctl status`.
//!
//! Every replica puts a [`Heartbeat`] under `<worker>.<instance>` in the `fleet_workers` KV
//! bucket ([`crate::topology::names::WORKERS`]) when it starts and every [`BEAT_EVERY`] after,
//! and deletes it when it stops. The bucket's `max_age`
//! ([`crate::topology::WORKER_HEARTBEAT_MAX_AGE`]) removes the key of a replica that died
//! without deleting it; readers count a replica as running when its last beat is younger than
//! [`RUNNING_WITHIN`]. One key per replica, never per tenant: the bucket's size follows the
//! number of pods (what a Kubernetes Deployment's replica count is), not the fleet's.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// How often a replica beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);

/// A replica whose last beat is older than this is not counted as running (three beats missed).
pub const RUNNING_WITHIN: Duration = Duration::from_secs(20);

/// One replica's heartbeat (JSON, camelCase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The worker (`provisioner`, `deployer`, …): its durable consumer's name.
    pub worker: String,
    /// This replica: its host name (a Kubernetes pod's name) and process id.
    pub instance: String,
    /// The worker's version (its crate version).
    pub version: String,
    /// When the replica started (RFC 3339, UTC).
    pub started_at: String,
    /// When it last beat (RFC 3339, UTC).
    pub seen_at: String,
    /// Jobs it is running now.
    pub in_flight: i64,
    /// Jobs it settled since it started, every outcome.
    pub jobs_settled: u64,
}

impl Heartbeat {
    /// Seconds since the last beat at `now` (negative clocks skew read as zero).
    pub fn age(&self, now: chrono::DateTime<chrono::Utc>) -> Duration {
        chrono::DateTime::parse_from_rfc3339(&self.seen_at)
            .ok()
            .and_then(|seen| (now - seen.with_timezone(&chrono::Utc)).to_std().ok())
            .unwrap_or_default()
    }

    /// Whether the replica beat within [`RUNNING_WITHIN`] of `now`.
    pub fn is_running(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.age(now) <= RUNNING_WITHIN
    }
}

/// This process's instance name: `HOSTNAME` (a pod's name) or `local`, then the pid; only the
/// characters a KV key allows.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    format!("{clean}-{}", std::process::id())
}

/// Beats for `worker` every [`BEAT_EVERY`] until `shutdown` turns true, then deletes its key.
/// A failed beat is logged and tried again at the next one: heartbeats are for operators and
/// never stop the worker.
pub async fn run(
    bucket: kv::Store,
    worker: String,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let instance = instance_name();
    let key = format!("{worker}.{instance}");
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    loop {
        let beat = Heartbeat {
            worker: worker.clone(),
            instance: instance.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: started_at.clone(),
            seen_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            in_flight: metrics.in_flight.get(),
            jobs_settled: metrics.settled(),
        };
        let bytes = serde_json::to_vec(&beat).expect("a heartbeat serializes");
        if let Err(error) = bucket.put(&key, bytes.into()).await {
            tracing::warn!(%error, key, "heartbeat not written");
        }
        tokio::select! {
            _ = tokio::time::sleep(BEAT_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    if let Err(error) = bucket.delete(&key).await {
        tracing::warn!(%error, key, "heartbeat not removed at shutdown");
    }
}

/// Every heartbeat in `bucket` (those of replicas that stopped cleanly are gone; those of
/// replicas that died stay until the bucket's `max_age`): a listing of at most a few keys per
/// running pod.
pub async fn read_all(bucket: &kv::Store) -> Result<Vec<Heartbeat>, kv::WatchError> {
    let mut keys = bucket.keys().await?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        if let Ok(key) = key {
            names.push(key);
        }
    }
    let mut beats = Vec::new();
    for key in names {
        if let Ok(Some(bytes)) = bucket.get(&key).await
            && let Ok(beat) = serde_json::from_slice::<Heartbeat>(&bytes)
        {
            beats.push(beat);
        }
    }
    beats.sort_by(|a, b| (&a.worker, &a.instance).cmp(&(&b.worker, &b.instance)));
    Ok(beats)
}
