//! The fleet's JetStream topology, declared once as data, ensured idempotently.
//!
//! Work streams (one per worker area) are work queues: a message leaves when it is acked (or
//! terminated, after being copied to the dead-letter stream). Progress, hooks and dead letters
//! are limit-retention streams: history kept for a time. Each worker area has one durable pull
//! consumer. Current state lives in KV buckets. Every publish carries `Nats-Msg-Id`, deduplicated
//! within each stream's duplicate window.
//!
//! [`Topology::ensure`] creates what is missing and updates what may change in place (subjects,
//! limits, duplicate window, consumer settings); a stream whose retention or storage differs is
//! [`TopologyError::Incompatible`] — reported, never silently recreated. Servers older than 2.10
//! are refused with the version found. The Kubernetes/KEDA manifests use the same names.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, kv};

/// One stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// Work queue (message gone once acked) or limits (kept for `max_age`).
    pub retention: RetentionPolicy,
    /// Window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// Replicas (1 locally, 3 in production clusters).
    pub replicas: usize,
    /// Longest a message is kept (0 = for ever).
    pub max_age: Duration,
    /// Largest size of the stream in bytes (-1 = unlimited).
    pub max_bytes: i64,
}

/// One durable pull consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The stream it reads.
    pub stream: String,
    /// Durable name (also the dead-letter subject suffix: `dlq.<durable>`).
    pub durable: String,
    /// Subject filter.
    pub filter: String,
    /// How long a delivery may stay unacked (extended by progress acks).
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
    /// Redelivery delays after an ack timeout (at most `max_deliver` entries).
    pub backoff: Vec<Duration>,
    /// Unacked messages at most (bounds in-flight work across replicas).
    pub max_ack_pending: i64,
}

/// One KV bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    /// Bucket name.
    pub bucket: String,
    /// Revisions kept per key.
    pub history: i64,
    /// Replicas.
    pub replicas: usize,
}

/// Why the topology could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The server is older than the fleet supports.
    #[error(
        "nats-server {found} is too old: the fleet needs JetStream on nats-server 2.10 or newer"
    )]
    ServerTooOld {
        /// The version found.
        found: String,
    },
    /// An existing stream differs in a way that cannot be updated in place.
    #[error(
        "stream {stream} exists with {field} = {found}, the fleet needs {wanted}; migrate it by hand (it is never recreated automatically)"
    )]
    Incompatible {
        /// The stream.
        stream: String,
        /// The setting.
        field: &'static str,
        /// What the server has.
        found: String,
        /// What the fleet declares.
        wanted: String,
    },
    /// A JetStream call failed.
    #[error("{what}: {source}")]
    JetStream {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn js_error<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> TopologyError {
    let what = what.into();
    move |source| TopologyError::JetStream {
        what,
        source: Box::new(source),
    }
}

/// Streams, consumers and buckets of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Subject prefix (empty, or e.g. `staging`).
    pub prefix: String,
    /// Streams.
    pub streams: Vec<StreamSpec>,
    /// Consumers.
    pub consumers: Vec<ConsumerSpec>,
    /// KV buckets.
    pub buckets: Vec<BucketSpec>,
}

/// Names the fleet's streams, consumers and buckets use (before any prefix).
pub mod names {
    /// Tenant lifecycle commands.
    pub const TENANT_COMMANDS: &str = "FLEET_TENANT_COMMANDS";
    /// Deploy commands and per-tenant deploy jobs.
    pub const DEPLOY_COMMANDS: &str = "FLEET_DEPLOY_COMMANDS";
    /// App install commands.
    pub const APP_COMMANDS: &str = "FLEET_APP_COMMANDS";
    /// Quota audit jobs.
    pub const QUOTA_COMMANDS: &str = "FLEET_QUOTA_COMMANDS";
    /// Every state transition.
    pub const PROGRESS: &str = "FLEET_PROGRESS";
    /// Lifecycle hooks (CloudEvents).
    pub const HOOKS: &str = "FLEET_HOOKS";
    /// Dead letters.
    pub const DEAD_LETTERS: &str = "FLEET_DEAD_LETTERS";
    /// Consumer of the provisioner.
    pub const PROVISIONER: &str = "provisioner";
    /// Consumer of the deployer.
    pub const DEPLOYER: &str = "deployer";
    /// Consumer of the installer.
    pub const INSTALLER: &str = "installer";
    /// Consumer of the quota auditor.
    pub const QUOTA_AUDITOR: &str = "quota-auditor";
    /// Tenants' current state.
    pub const TENANTS: &str = "fleet_tenants";
    /// Deployments' current state.
    pub const DEPLOYMENTS: &str = "fleet_deployments";
    /// App installs' current state.
    pub const INSTALLS: &str = "fleet_installs";
    /// Tenants' usage.
    pub const USAGE: &str = "fleet_usage";
}

impl Topology {
    /// The fleet's topology under `prefix` (subjects `prefix.tenant.>`, names `PREFIX_FLEET_…`),
    /// with `replicas` copies of everything.
    pub fn fleet(prefix: &str, replicas: usize) -> Self {
        Self::fleet_with(prefix, replicas, Duration::from_secs(30))
    }

    /// [`Topology::fleet`] with the consumers' ack wait (how soon a crashed worker's message is
    /// redelivered).
    pub fn fleet_with(prefix: &str, replicas: usize, ack_wait: Duration) -> Self {
        use names::*;
        let subject = |s: &str| {
            if prefix.is_empty() {
                s.to_owned()
            } else {
                format!("{prefix}.{s}")
            }
        };
        let name = |n: &str| {
            if prefix.is_empty() {
                n.to_owned()
            } else {
                format!(
                    "{}_{n}",
                    prefix.to_ascii_uppercase().replace(['.', '-'], "_")
                )
            }
        };
        let work = |n: &str, s: &str| StreamSpec {
            name: name(n),
            subjects: vec![subject(s)],
            retention: RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            replicas,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
        };
        let history = |n: &str, s: &str, days: u64| StreamSpec {
            name: name(n),
            subjects: vec![subject(s)],
            retention: RetentionPolicy::Limits,
            // Hooks derive their ids from transitions: a long window keeps a late retry to one hook.
            duplicate_window: if n == HOOKS {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(120)
            },
            replicas,
            max_age: Duration::from_secs(days * 24 * 3600),
            max_bytes: -1,
        };
        let consumer = |stream: &str, durable: &str, filter: &str| ConsumerSpec {
            stream: name(stream),
            durable: durable.to_owned(),
            filter: subject(filter),
            ack_wait,
            max_deliver: 5,
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
            ],
            max_ack_pending: 1000,
        };
        let bucket = |b: &str| BucketSpec {
            bucket: name(b).to_ascii_lowercase(),
            history: 10,
            replicas,
        };
        Self {
            prefix: prefix.to_owned(),
            streams: vec![
                work(TENANT_COMMANDS, "tenant.>"),
                work(DEPLOY_COMMANDS, "deploy.>"),
                work(APP_COMMANDS, "app.>"),
                work(QUOTA_COMMANDS, "quota.>"),
                history(PROGRESS, "progress.>", 30),
                history(HOOKS, "hooks.>", 7),
                history(DEAD_LETTERS, "dlq.>", 30),
            ],
            consumers: vec![
                consumer(TENANT_COMMANDS, PROVISIONER, "tenant.>"),
                consumer(DEPLOY_COMMANDS, DEPLOYER, "deploy.>"),
                consumer(APP_COMMANDS, INSTALLER, "app.>"),
                consumer(QUOTA_COMMANDS, QUOTA_AUDITOR, "quota.>"),
            ],
            buckets: vec![
                bucket(TENANTS),
                bucket(DEPLOYMENTS),
                bucket(INSTALLS),
                bucket(USAGE),
            ],
        }
    }

    /// A subject under this topology's prefix.
    pub fn subject(&self, subject: &str) -> String {
        if self.prefix.is_empty() {
            subject.to_owned()
        } else {
            format!("{}.{subject}", self.prefix)
        }
    }

    /// The stream named `name` (before prefixing, e.g. [`names::HOOKS`]).
    pub fn stream(&self, name: &str) -> Option<&StreamSpec> {
        self.streams
            .iter()
            .find(|s| s.name == name || s.name.ends_with(&format!("_{name}")))
    }

    /// The consumer with durable name `durable`.
    pub fn consumer(&self, durable: &str) -> Option<&ConsumerSpec> {
        self.consumers.iter().find(|c| c.durable == durable)
    }

    /// The bucket named `bucket` (before prefixing).
    pub fn bucket(&self, bucket: &str) -> Option<&BucketSpec> {
        self.buckets
            .iter()
            .find(|b| b.bucket == bucket || b.bucket.ends_with(&format!("_{bucket}")))
    }

    /// Creates or updates everything; refuses old servers and incompatible streams.
    pub async fn ensure(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
    ) -> Result<(), TopologyError> {
        if client.server_info().version.is_empty() {
            // Connected lazily (retry_on_initial_connect): wait for the handshake first.
            client
                .flush()
                .await
                .map_err(js_error("waiting for the server"))?;
        }
        check_server_version(&client.server_info().version)?;
        for spec in &self.streams {
            ensure_stream(js, spec).await?;
        }
        for spec in &self.consumers {
            let stream = js
                .get_stream(&spec.stream)
                .await
                .map_err(js_error(format!("opening stream {}", spec.stream)))?;
            let config = pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: spec.filter.clone(),
                ack_wait: spec.ack_wait,
                max_deliver: spec.max_deliver,
                backoff: spec.backoff.clone(),
                max_ack_pending: spec.max_ack_pending,
                ..Default::default()
            };
            match stream.consumer_info(&spec.durable).await {
                Ok(_) => {
                    stream
                        .update_consumer(config)
                        .await
                        .map_err(js_error(format!("updating consumer {}", spec.durable)))?;
                }
                Err(_) => {
                    stream
                        .create_consumer(config)
                        .await
                        .map_err(js_error(format!("creating consumer {}", spec.durable)))?;
                }
            }
        }
        for spec in &self.buckets {
            if js.get_key_value(&spec.bucket).await.is_err() {
                js.create_key_value(kv::Config {
                    bucket: spec.bucket.clone(),
                    history: spec.history,
                    num_replicas: spec.replicas,
                    storage: StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(js_error(format!("creating bucket {}", spec.bucket)))?;
            }
        }
        Ok(())
    }
}

/// Refuses servers older than 2.10, naming the version found.
pub fn check_server_version(version: &str) -> Result<(), TopologyError> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (2, 10) {
        Ok(())
    } else {
        Err(TopologyError::ServerTooOld {
            found: version.to_owned(),
        })
    }
}

async fn ensure_stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<(), TopologyError> {
    let config = stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        retention: spec.retention,
        duplicate_window: spec.duplicate_window,
        num_replicas: spec.replicas,
        max_age: spec.max_age,
        max_bytes: spec.max_bytes,
        storage: StorageType::File,
        ..Default::default()
    };
    match js.get_stream(&spec.name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(js_error(format!("reading stream {}", spec.name)))?;
            let found = &info.config;
            if found.retention != spec.retention {
                return Err(TopologyError::Incompatible {
                    stream: spec.name.clone(),
                    field: "retention",
                    found: format!("{:?}", found.retention),
                    wanted: format!("{:?}", spec.retention),
                });
            }
            if found.storage != StorageType::File {
                return Err(TopologyError::Incompatible {
                    stream: spec.name.clone(),
                    field: "storage",
                    found: format!("{:?}", found.storage),
                    wanted: "File".to_owned(),
                });
            }
            let unchanged = found.subjects == spec.subjects
                && found.duplicate_window == spec.duplicate_window
                && found.max_age == spec.max_age
                && found.max_bytes == spec.max_bytes
                && found.num_replicas == spec.replicas;
            if !unchanged {
                js.update_stream(config)
                    .await
                    .map_err(js_error(format!("updating stream {}", spec.name)))?;
            }
            Ok(())
        }
        Err(_) => {
            js.create_stream(config)
                .await
                .map_err(js_error(format!("creating stream {}", spec.name)))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_2_10_are_refused_by_name() {
        for ok in ["2.10.0", "2.15.1", "v2.11.3-beta", "3.0.0"] {
            check_server_version(ok).unwrap();
        }
        let err = check_server_version("2.9.10").unwrap_err();
        assert!(err.to_string().contains("2.9.10"), "{err}");
    }

    #[test]
    fn a_prefix_moves_every_subject_and_name() {
        let t = Topology::fleet("staging", 1);
        assert_eq!(t.streams[0].subjects, ["staging.tenant.>"]);
        assert_eq!(t.streams[0].name, "STAGING_FLEET_TENANT_COMMANDS");
        assert_eq!(
            t.subject("hooks.tenant.created"),
            "staging.hooks.tenant.created"
        );
        assert_eq!(t.buckets[0].bucket, "staging_fleet_tenants");
        assert!(
            t.consumers
                .iter()
                .all(|c| c.backoff.len() as i64 <= c.max_deliver)
        );
    }
}
