//! The fleet's JetStream topology, declared once as data, ensured idempotently.
//!
//! Work streams (one per worker area) are work queues: a message leaves when it is acked (or
//! terminated, after being copied to the dead-letter stream). Each refuses messages over its
//! size limit at publish time, and each subject may have a tighter limit the job loop enforces
//! ([`ConsumerSpec::payload_limits`]). The tenant stream also holds message schedules (work due
//! later, [`crate::schedule`]) under `tenant.schedule.*`, which its consumer does not read. Progress, hooks and dead letters
//! are limit-retention streams: history kept for a time. Each worker area has one durable pull
//! consumer. Current state lives in KV buckets. Every publish carries `Nats-Msg-Id`, deduplicated
//! within each stream's duplicate window.
//!
//! [`Topology::ensure`] creates what is missing and updates what may change in place (subjects,
//! limits, duplicate window, consumer settings); a stream whose retention or storage differs is
//! [`TopologyError::Incompatible`] — reported, never silently recreated. Servers older than 2.12
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
    /// Largest message the stream accepts, in bytes (-1 = the server's `max_payload`, 1 MiB by
    /// default); a larger publish is refused by the server.
    pub max_msg_size: i32,
    /// Whether the stream holds message schedules (`Nats-Schedule`, nats-server ≥ 2.12).
    pub allow_schedules: bool,
}

/// The largest payload a subject accepts, in bytes (checked before a handler sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadLimit {
    /// Subject pattern (NATS wildcards `*` and `>`, without the prefix).
    pub subject: String,
    /// Largest payload, in bytes.
    pub max_bytes: usize,
}

/// The consumer settings the configuration controls (`[nats]`), the same for every consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// How long a delivery may stay unacknowledged before redelivery (running jobs renew it):
    /// how soon a crashed worker's message moves on. The server reports exactly this value: no
    /// consumer `backoff` overrides it.
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
    /// Unacknowledged deliveries at most, across replicas.
    pub max_ack_pending: i64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
        }
    }
}

impl ConsumerSettings {
    /// The settings of `[nats]`, and `max_deliver` from `[worker.retry]`'s `max_attempts`.
    pub fn from_config(config: &fleet_config::Config) -> Self {
        Self {
            ack_wait: Duration::from_millis(config.nats.ack_wait_ms),
            max_deliver: i64::from(config.worker.retry.max_attempts()),
            max_ack_pending: i64::from(config.nats.max_ack_pending),
        }
    }
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
    /// How long a delivery may stay unacked (extended by progress acks). Redeliveries after a
    /// timeout wait this long too: the consumer has no `backoff`, which would override it.
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
    /// Unacked messages at most (bounds in-flight work across replicas). Nothing waits while
    /// holding one: work due later is a message schedule, never a long nak.
    pub max_ack_pending: i64,
    /// Per-subject payload limits; the first matching pattern applies.
    pub payload_limits: Vec<PayloadLimit>,
}

impl ConsumerSpec {
    /// The payload limit of `subject` (unprefixed), if one is declared.
    pub fn payload_limit(&self, subject: &str) -> Option<usize> {
        payload_limit(&self.payload_limits, subject).map(|l| l.max_bytes)
    }
}

/// The first of `limits` whose pattern matches `subject` (unprefixed).
pub fn payload_limit<'a>(limits: &'a [PayloadLimit], subject: &str) -> Option<&'a PayloadLimit> {
    limits.iter().find(|l| subject_matches(&l.subject, subject))
}

/// Whether `subject` matches the NATS pattern `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for want in pattern.split('.') {
        match (want, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(token)) if want == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// One KV bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    /// Bucket name.
    pub bucket: String,
    /// Revisions kept per key.
    pub history: i64,
    /// Copies of the bucket kept by the cluster (1 locally, 3 in production clusters); set
    /// when the bucket is created, never changed afterwards.
    pub replicas: usize,
    /// How long a value is kept after its last write (zero: for ever).
    pub max_age: Duration,
}

/// Why the topology could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The server is older than the fleet supports.
    #[error(
        "nats-server {found} is too old: the fleet needs JetStream on nats-server 2.12 or newer (message schedules)"
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
    #[error("{what}")]
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
    /// The streams: a work queue per command kind, and the progress, hooks and dead-letter
    /// histories (kept for days).
    pub streams: Vec<StreamSpec>,
    /// The durable pull consumers on those streams, one per consuming worker (provisioner,
    /// deployer, installer, quota auditor).
    pub consumers: Vec<ConsumerSpec>,
    /// KV buckets.
    pub buckets: Vec<BucketSpec>,
    /// Object store holding the payloads of dead letters too big to carry them.
    pub dead_letter_payloads: String,
}

/// The largest command of the small kinds (tenant lifecycle, per-tenant jobs, controls, quota
/// ticks), in bytes: 64 KiB, far above any valid one.
pub const COMMAND_MAX_BYTES: usize = 64 * 1024;

/// How long a work stream keeps a message (unconsumed commands, and schedules waiting to fire):
/// 7 days. Work due later than this cannot be scheduled.
pub const WORK_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a deployment's per-tenant entries (targets, results, rollbacks) are kept after
/// their last write: a deployment can be resumed or rolled back that long.
pub const DEPLOY_RESULTS_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a worker replica's heartbeat is kept after its last beat (the bucket's `max_age`):
/// a replica that died without saying so disappears from `fleetctl status` within this.
pub const WORKER_HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(60);

/// How long a tenant's API request count stays after its last request.
pub const API_USAGE_MAX_AGE: Duration = Duration::from_secs(600);

/// The oldest nats-server the fleet runs on: 2.12 brought message schedules (ADR-51).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 12);

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
    /// Full payloads of dead letters too big to carry them inline (object store).
    pub const DEAD_LETTER_PAYLOADS: &str = "fleet_dead_letter_payloads";
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
    /// KV bucket: per-tenant entries of deployments (targets, results, rollbacks), one
    /// revision per key (`fleet-rollouts` folds them in stream order).
    pub const DEPLOY_RESULTS: &str = "fleet_deploy_results";
    /// App installs' current state.
    pub const INSTALLS: &str = "fleet_installs";
    /// Tenants' usage.
    pub const USAGE: &str = "fleet_usage";
    /// KV bucket: one heartbeat per running worker replica, gone a minute after its last beat.
    pub const WORKERS: &str = "fleet_workers";
    /// KV bucket: each tenant's data API requests of the current minute, summed over the gateway
    /// replicas (`fleet_tenants::audit::ApiMinute`); gone ten minutes after its last request.
    pub const API_USAGE: &str = "fleet_api_usage";
}

impl Topology {
    /// The fleet's topology under `prefix` (subjects `prefix.tenant.>`, names `PREFIX_FLEET_…`),
    /// with `replicas` copies of everything and the default consumer settings.
    pub fn fleet(prefix: &str, replicas: usize) -> Self {
        Self::fleet_with(prefix, replicas, ConsumerSettings::default())
    }

    /// The topology `config` describes (`[nats]`: prefix, replicas, consumer settings).
    pub fn from_config(config: &fleet_config::Config) -> Self {
        Self::fleet_with(
            &config.nats.subject_prefix,
            config.nats.replicas,
            ConsumerSettings::from_config(config),
        )
    }

    /// [`Topology::fleet`] with explicit consumer settings.
    pub fn fleet_with(prefix: &str, replicas: usize, consumers: ConsumerSettings) -> Self {
        use names::*;
        let subjects = crate::Subjects::new(prefix);
        let subject = |s: &str| subjects.full(s);
        let name = |n: &str| subjects.stream(n);
        let work = |n: &str, subjects: &[&str], max_msg_size: i32| StreamSpec {
            name: name(n),
            subjects: subjects.iter().map(|s| subject(s)).collect(),
            retention: RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            replicas,
            max_age: WORK_MAX_AGE,
            max_bytes: -1,
            max_msg_size,
            allow_schedules: false,
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
            max_msg_size: -1,
            allow_schedules: false,
        };
        let limit = |subject: &str, max_bytes: usize| PayloadLimit {
            subject: subject.to_owned(),
            max_bytes,
        };
        let consumer =
            |stream: &str, durable: &str, filter: &str, payload_limits: Vec<PayloadLimit>| {
                ConsumerSpec {
                    stream: name(stream),
                    durable: durable.to_owned(),
                    filter: subject(filter),
                    ack_wait: consumers.ack_wait,
                    max_deliver: consumers.max_deliver,
                    max_ack_pending: consumers.max_ack_pending,
                    payload_limits,
                }
            };
        // Tenant commands are a few hundred bytes; bundles and app packages may approach the
        // server's max_payload (1 MiB by default).
        let mut tenant_commands = work(
            TENANT_COMMANDS,
            &["tenant.*", "tenant.schedule.*"],
            COMMAND_MAX_BYTES as i32,
        );
        tenant_commands.allow_schedules = true;
        let bucket = |b: &str| BucketSpec {
            bucket: name(b).to_ascii_lowercase(),
            history: 10,
            replicas,
            max_age: Duration::ZERO,
        };
        Self {
            prefix: prefix.to_owned(),
            streams: vec![
                tenant_commands,
                work(DEPLOY_COMMANDS, &["deploy.>"], -1),
                work(APP_COMMANDS, &["app.>"], -1),
                work(QUOTA_COMMANDS, &["quota.>"], COMMAND_MAX_BYTES as i32),
                history(PROGRESS, "progress.>", 30),
                history(HOOKS, "hooks.>", 7),
                history(DEAD_LETTERS, "dlq.>", 30),
            ],
            consumers: vec![
                // `tenant.*`: commands and fired schedules, never the schedules themselves
                // (acking one would cancel it).
                consumer(TENANT_COMMANDS, PROVISIONER, "tenant.*", vec![]),
                consumer(
                    DEPLOY_COMMANDS,
                    DEPLOYER,
                    "deploy.>",
                    vec![
                        limit("deploy.tenant.>", COMMAND_MAX_BYTES),
                        limit("deploy.control.>", COMMAND_MAX_BYTES),
                    ],
                ),
                consumer(APP_COMMANDS, INSTALLER, "app.>", vec![]),
                consumer(QUOTA_COMMANDS, QUOTA_AUDITOR, "quota.>", vec![]),
            ],
            dead_letter_payloads: name(DEAD_LETTER_PAYLOADS).to_ascii_lowercase(),
            buckets: vec![
                bucket(TENANTS),
                bucket(DEPLOYMENTS),
                // A deployment's entries outlive it by DEPLOY_RESULTS_MAX_AGE: resumable and
                // inspectable that long, then gone (the record keeps its tallies).
                BucketSpec {
                    history: 1,
                    max_age: DEPLOY_RESULTS_MAX_AGE,
                    ..bucket(DEPLOY_RESULTS)
                },
                bucket(INSTALLS),
                bucket(USAGE),
                // A replica's heartbeat outlives it by at most WORKER_HEARTBEAT_MAX_AGE.
                BucketSpec {
                    history: 1,
                    max_age: WORKER_HEARTBEAT_MAX_AGE,
                    ..bucket(WORKERS)
                },
                BucketSpec {
                    history: 1,
                    max_age: API_USAGE_MAX_AGE,
                    ..bucket(API_USAGE)
                },
            ],
        }
    }

    /// A subject under this topology's prefix.
    pub fn subject(&self, subject: &str) -> String {
        self.subjects().full(subject)
    }

    /// The subjects under this topology's prefix.
    pub fn subjects(&self) -> crate::Subjects {
        crate::Subjects::new(self.prefix.clone())
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

    /// Creates or updates everything; refuses old servers and incompatible streams. What the
    /// workers and `fleetctl streams init` run: the configuration they carry is the fleet's.
    pub async fn ensure(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
    ) -> Result<(), TopologyError> {
        self.ensure_with(client, js, true).await
    }

    /// Creates what is missing and leaves everything that exists as it is: what callers and
    /// operator commands run (fleet-client, `fleetctl status`, …). A laptop's configuration
    /// (one replica, the default retry budget) must never rewrite a production cluster's
    /// streams and consumers just by connecting to it.
    pub async fn ensure_missing(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
    ) -> Result<(), TopologyError> {
        self.ensure_with(client, js, false).await
    }

    async fn ensure_with(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        update: bool,
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
            ensure_stream(js, spec, update).await?;
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
                max_ack_pending: spec.max_ack_pending,
                ..Default::default()
            };
            match stream.consumer_info(&spec.durable).await {
                Ok(_) if !update => {}
                Ok(_) => {
                    stream
                        .update_consumer(config)
                        .await
                        .map_err(js_error(format!("updating consumer {}", spec.durable)))?;
                }
                // Attaching creates only a consumer the server says is missing, and strictly
                // (never create-or-update): a timed-out or failed lookup (a leader election)
                // must not become a rewrite with the caller's settings.
                Err(e) if !update => {
                    if e.kind() != jetstream::context::ConsumerInfoErrorKind::NotFound {
                        return Err(js_error(format!("reading consumer {}", spec.durable))(e));
                    }
                    if let Err(e) = stream.create_consumer_strict(config).await
                        // Another caller created it meanwhile: as good.
                        && stream.consumer_info(&spec.durable).await.is_err()
                    {
                        return Err(js_error(format!("creating consumer {}", spec.durable))(e));
                    }
                }
                Err(_) => {
                    stream
                        .create_consumer(config)
                        .await
                        .map_err(js_error(format!("creating consumer {}", spec.durable)))?;
                }
            }
        }
        let payloads = &self.dead_letter_payloads;
        if js.get_object_store(&payloads).await.is_err() {
            js.create_object_store(async_nats::jetstream::object_store::Config {
                bucket: payloads.clone(),
                description: Some("full payloads of dead letters too big to carry them".into()),
                max_age: Duration::from_secs(30 * 24 * 3600),
                storage: StorageType::File,
                num_replicas: self.streams.first().map_or(1, |s| s.replicas),
                ..Default::default()
            })
            .await
            .map_err(js_error(format!("creating object store {payloads}")))?;
        }
        for spec in &self.buckets {
            if js.get_key_value(&spec.bucket).await.is_err() {
                js.create_key_value(kv::Config {
                    bucket: spec.bucket.clone(),
                    history: spec.history,
                    max_age: spec.max_age,
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

/// Refuses servers older than [`MIN_SERVER_VERSION`], naming the version found.
pub fn check_server_version(version: &str) -> Result<(), TopologyError> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= MIN_SERVER_VERSION {
        Ok(())
    } else {
        Err(TopologyError::ServerTooOld {
            found: version.to_owned(),
        })
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
    update: bool,
) -> Result<(), TopologyError> {
    let config = stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        retention: spec.retention,
        duplicate_window: spec.duplicate_window,
        num_replicas: spec.replicas,
        max_age: spec.max_age,
        max_bytes: spec.max_bytes,
        max_message_size: spec.max_msg_size,
        allow_message_schedules: spec.allow_schedules,
        storage: StorageType::File,
        ..Default::default()
    };
    match js.get_stream(&spec.name).await {
        Ok(_) if !update => Ok(()),
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
                && found.max_message_size == spec.max_msg_size
                && found.allow_message_schedules == spec.allow_schedules
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
    fn versions_before_2_12_are_refused_by_name() {
        for ok in ["2.12.0", "2.15.1", "v2.12.3-beta", "3.0.0"] {
            check_server_version(ok).unwrap();
        }
        for old in ["2.9.10", "2.11.4"] {
            let err = check_server_version(old).unwrap_err();
            assert!(err.to_string().contains(old), "{err}");
        }
    }

    #[test]
    fn a_prefix_moves_every_subject_and_name() {
        let t = Topology::fleet("staging", 1);
        assert_eq!(
            t.streams[0].subjects,
            ["staging.tenant.*", "staging.tenant.schedule.*"]
        );
        assert_eq!(t.streams[0].name, "STAGING_FLEET_TENANT_COMMANDS");
        assert_eq!(
            t.subject("hooks.tenant.created"),
            "staging.hooks.tenant.created"
        );
        assert_eq!(t.buckets[0].bucket, "staging_fleet_tenants");
    }

    #[test]
    fn patterns_match_as_nats_does() {
        assert!(subject_matches("deploy.tenant.>", "deploy.tenant.d1"));
        assert!(subject_matches("deploy.tenant.>", "deploy.tenant.d1.x"));
        assert!(!subject_matches("deploy.tenant.>", "deploy.tenant"));
        assert!(subject_matches("tenant.*", "tenant.created"));
        assert!(!subject_matches("tenant.*", "tenant.schedule.acme"));
        assert!(!subject_matches("tenant.*", "tenant"));
        assert!(subject_matches("deploy.requested", "deploy.requested"));
        assert!(!subject_matches("deploy.requested", "deploy.requested.x"));
    }

    #[test]
    fn per_subject_limits_and_consumer_settings_come_from_the_declaration() {
        let settings = ConsumerSettings {
            ack_wait: Duration::from_millis(2500),
            max_deliver: 7,
            max_ack_pending: 20,
        };
        let t = Topology::fleet_with("", 1, settings);
        let deployer = t.consumer(names::DEPLOYER).unwrap();
        assert_eq!(deployer.ack_wait, Duration::from_millis(2500));
        assert_eq!((deployer.max_deliver, deployer.max_ack_pending), (7, 20));
        assert_eq!(
            deployer.payload_limit("deploy.tenant.d1"),
            Some(COMMAND_MAX_BYTES)
        );
        assert_eq!(deployer.payload_limit("deploy.requested"), None);
        let tenants = t.stream(names::TENANT_COMMANDS).unwrap();
        assert!(tenants.allow_schedules);
        assert_eq!(tenants.max_msg_size, COMMAND_MAX_BYTES as i32);
    }
}
