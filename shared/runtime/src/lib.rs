//! The runtime every fleet worker shares, so each worker is a thin binary with a [`Handler`].
//!
//! - [`topology`]: streams, consumers and KV buckets as data, ensured idempotently.
//! - [`publish`]: publishing with `Nats-Msg-Id`, waiting for the ack, carrying trace context.
//! - [`jobs`]: the job loop — pull, decode, handle, and [`Outcome`]s mapped to acks in one
//!   place, with dead letters written before a message leaves.
//! - [`state`]: current state in KV by compare-and-set, every transition on the progress stream.
//! - [`hooks`]: lifecycle hooks as CloudEvents, one per transition.
//! - [`schedule`]: work due later as JetStream message schedules, never a long nak.
//! - [`telemetry`], [`metrics`], [`health`], [`shutdown`]: logs and traces, Prometheus metrics,
//!   probes, graceful stop.
//! - [`heartbeat`]: which worker replicas are running, in a small KV bucket.
//!
//! [`Runtime::connect`] connects and ensures the topology ([`Runtime::attach`] only creates what
//! is missing, for callers); [`Runtime::run_worker`] runs a
//! handler until the shutdown signal; [`worker::main`] is all of a worker binary's `main`.

#![deny(missing_docs)]

pub mod health;
pub mod heartbeat;
pub mod hooks;
pub mod jobs;
pub mod metrics;
pub mod publish;
pub mod schedule;
pub mod shutdown;
pub mod state;
pub mod subjects;
pub mod telemetry;
pub mod topology;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use fleet_config::Config;
use tokio::sync::watch;

pub use hooks::{CloudEvent, Hook, Hooks};
pub use jobs::{
    DeadLetter, DeadLetterWriter, Delivery, Handler, JobLoopSettings, Outcome, PayloadError,
    VERSION_HEADER, error_chain, run_job_loop,
};
pub use publish::{Published, Publisher};
pub use schedule::Scheduler;
pub use state::{Decision, ProgressEvent, StateError, StateStore, Versioned};
pub use subjects::Subjects;
pub use topology::{Topology, TopologyError};

/// Why the runtime could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// NATS could not be reached.
    #[error("connecting to {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// Why: the URL did not parse, or the connection failed (the client's message).
        message: String,
    },
    /// A file `[nats.auth]` or `[nats.tls]` names could not be used.
    #[error("{setting} ({path}): {message}")]
    NatsFile {
        /// The setting naming the file (`nats.tls.ca_file`).
        setting: &'static str,
        /// The path it gives.
        path: String,
        /// Why: the file could not be read, or does not hold what the setting needs.
        message: String,
    },
    /// A KV bucket of the topology could not be opened.
    #[error("opening bucket {bucket}: {message}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The error JetStream returned, as its message.
        message: String,
    },
    /// The topology could not be ensured.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The consumer is not declared by the topology.
    #[error("consumer {0} is not part of the topology")]
    UnknownConsumer(String),
    /// The KV bucket (its topology name, e.g. `tenants`) is not declared by the topology.
    #[error("bucket {0} is not part of the topology")]
    UnknownBucket(String),
    /// The job loop failed.
    #[error(transparent)]
    Jobs(#[from] jobs::JobLoopError),
    /// The health server could not start.
    #[error("health server on {address}")]
    Health {
        /// The address it was to listen on (`worker.health_addr`).
        address: String,
        /// The error binding it.
        #[source]
        source: std::io::Error,
    },
}

/// A connected runtime: client, JetStream context, topology, publisher.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The NATS client.
    pub client: async_nats::Client,
    /// The JetStream context on that client.
    pub js: jetstream::Context,
    /// The topology (ensured).
    pub topology: Topology,
    /// Publisher with message ids.
    pub publisher: Publisher,
}

impl Runtime {
    /// Connects to `config.nats.url` — one server, or a cluster's nodes separated by commas —
    /// (reconnecting for ever afterwards) and ensures the topology: creates what is missing and
    /// brings the streams and consumers that exist to `config`'s settings (KV buckets and the
    /// dead-letter object store are only created, never updated). For workers and `fleetctl
    /// streams init`.
    pub async fn connect(config: &Config) -> Result<Self, RuntimeError> {
        Self::open(config, true).await
    }

    /// Connects like [`Self::connect`], but only creates what is missing: streams, consumers
    /// and buckets that exist are left as they are, whatever `config` says. For callers and
    /// operator commands, whose configuration is not the fleet's to impose.
    pub async fn attach(config: &Config) -> Result<Self, RuntimeError> {
        Self::open(config, false).await
    }

    async fn open(config: &Config, update: bool) -> Result<Self, RuntimeError> {
        let client = connect_client(config).await?;
        let js = jetstream::new(client.clone());
        let topology = Topology::from_config(config);
        if update {
            topology.ensure(&client, &js).await?;
        } else {
            topology.ensure_missing(&client, &js).await?;
        }
        let publisher = Publisher::new(js.clone());
        Ok(Self {
            client,
            js,
            topology,
            publisher,
        })
    }

    /// A KV bucket of the topology.
    pub async fn bucket(&self, name: &str) -> Result<jetstream::kv::Store, RuntimeError> {
        let spec = self
            .topology
            .bucket(name)
            .ok_or_else(|| RuntimeError::UnknownBucket(name.to_owned()))?;
        self.js
            .get_key_value(&spec.bucket)
            .await
            .map_err(|e| RuntimeError::Bucket {
                bucket: spec.bucket.clone(),
                message: e.to_string(),
            })
    }

    /// Runs `handler` on the durable consumer `consumer` with the configured concurrency and
    /// grace, serving probes on `worker.health_addr`, until `shutdown` turns true.
    pub async fn run_worker<H: Handler>(
        &self,
        config: &Config,
        consumer: &str,
        handler: Arc<H>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), RuntimeError> {
        let spec = self
            .topology
            .consumer(consumer)
            .ok_or_else(|| RuntimeError::UnknownConsumer(consumer.to_owned()))?
            .clone();
        let metrics = Arc::new(metrics::Metrics::new(consumer));
        let health = Arc::new(health::Health::new(
            Some(self.client.clone()),
            metrics.clone(),
        ));
        let address = config.worker.health_addr.clone();
        let bound = health::serve(&address, health.clone(), shutdown.clone())
            .await
            .map_err(|source| RuntimeError::Health { address, source })?;
        tracing::info!(%bound, consumer, "probes and metrics served");
        health.set_ready(true);
        let heartbeat = match self.bucket(topology::names::WORKERS).await {
            Ok(bucket) => Some(tokio::spawn(heartbeat::run(
                bucket,
                spec.durable.clone(),
                metrics.clone(),
                shutdown.clone(),
            ))),
            Err(error) => {
                tracing::warn!(%error, "no heartbeats: the workers bucket cannot be opened");
                None
            }
        };
        let settings = JobLoopSettings {
            consumer: spec.durable.clone(),
            stream: spec.stream.clone(),
            max_deliver: spec.max_deliver as u64,
            retry: config.worker.retry.clone(),
            ack_wait: spec.ack_wait,
            concurrency: config.worker.concurrency as usize,
            shutdown_grace: Duration::from_millis(config.worker.shutdown_grace_ms),
            subjects: self.topology.subjects(),
            dead_letter_subject: self.topology.subject(&format!("dlq.{}", spec.durable)),
            dead_letter_payloads: self.topology.dead_letter_payloads.clone(),
            payload_limits: spec.payload_limits.clone(),
            max_job_duration: Duration::from_millis(config.worker.max_job_duration_ms),
        };
        let watcher = tokio::spawn(jobs::watch_max_deliveries(
            self.client.clone(),
            self.js.clone(),
            Arc::new(settings.clone()),
            handler.clone(),
            self.publisher.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        let result = run_job_loop(
            self.js.clone(),
            settings,
            handler,
            self.publisher.clone(),
            metrics,
            shutdown,
        )
        .await;
        watcher.abort();
        if let Some(heartbeat) = heartbeat {
            // The loop has stopped (shutdown is true): the heartbeat deletes its key and ends.
            let _ = tokio::time::timeout(Duration::from_secs(2), heartbeat).await;
        }
        health.set_ready(false);
        // Bounded: with the server gone, a flush would wait for a reconnection that may never
        // come, and the worker would not exit on SIGTERM.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        Ok(result?)
    }
}

/// A NATS client on `config.nats.url` — one server, or a cluster's nodes separated by commas
/// (the client fails over between them) — reconnecting for ever once connected, authenticated
/// and encrypted as `[nats.auth]` and `[nats.tls]` say ([`connect_options`]). Nothing about
/// the topology is checked or created: [`Runtime::connect`] and [`Runtime::attach`] do that.
pub async fn connect_client(config: &Config) -> Result<async_nats::Client, RuntimeError> {
    let url = config.nats.url.clone();
    let shown = fleet_config::NatsConfig::display_url(&url);
    // One server, or several separated by commas (a cluster's nodes: the client fails over
    // between them, and learns the rest of the cluster from whichever answers).
    let servers = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RuntimeError::Connect {
            url: shown.clone(),
            message: e.to_string(),
        })?;
    let client = connect_options(&config.nats)
        .await?
        .connect(servers)
        .await
        .map_err(|e| {
            let mut message = e.to_string();
            // What rustls says of a server answering its handshake in plain text ("received
            // corrupt message of type InvalidContentType") is no help on its own.
            if message.contains("corrupt message") {
                message.push_str(
                    " (the server did not answer in TLS: is it set up for the TLS that [nats.tls] or a tls:// URL asks for, handshake_first included?)",
                );
            }
            // A server that wants the TLS handshake before its greeting waits for one, then
            // hangs up: async-nats only sees the greeting never came.
            if message.contains("expected INFO, got nothing") {
                message.push_str(
                    " (the server hung up without greeting: if it wants the TLS handshake first, set [nats.tls] handshake_first = true)",
                );
            }
            RuntimeError::Connect {
                url: shown.clone(),
                message,
            }
        })?;
    Ok(client)
}

/// The client options `nats` asks for: the connection name and timeout, the one way of
/// authenticating `[nats.auth]` sets (credentials file, NKey seed file, user and password, or
/// token) and TLS as `[nats.tls]` sets it (required; CA file instead of the system's roots;
/// client certificate and key; handshake first). Every file named is read and parsed here (the
/// seed as a seed, certificates and key as PEM), so one missing, unreadable or holding
/// something else is [`RuntimeError::NatsFile`] with its setting and path before anything
/// connects; what the files hold never appears in an error. (A key that does not match its
/// certificate is found by the handshake.)
pub async fn connect_options(
    nats: &fleet_config::NatsConfig,
) -> Result<async_nats::ConnectOptions, RuntimeError> {
    use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let file_error = |setting: &'static str, path: &str, message: String| RuntimeError::NatsFile {
        setting,
        path: path.to_owned(),
        message,
    };
    // rustls picks its process-wide crypto provider from its crate features, and gives up (a
    // panic inside the handshake) when it finds two: async-nats brings `ring`, reqwest (the
    // Turso backend) `aws-lc-rs`. Chosen whatever the settings say — a server that requires
    // TLS turns it on by itself — : `ring`, unless the process chose one already.
    if async_nats::rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    }
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(nats.connect_timeout_ms))
        .name("objectos-fleet");
    let auth = &nats.auth;
    if !auth.credentials_file.is_empty() {
        let path = &auth.credentials_file;
        // async-nats's messages name the file and what is wrong with it, not what it holds.
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| file_error("nats.auth.credentials_file", path, e.to_string()))?;
    }
    if !auth.nkey_seed_file.is_empty() {
        let path = &auth.nkey_seed_file;
        let seed = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| file_error("nats.auth.nkey_seed_file", path, e.to_string()))?;
        let seed = seed.trim().to_owned();
        // Checked here: a bad seed would otherwise fail inside the handshake, unexplained.
        if nkeys::KeyPair::from_seed(&seed).is_err() {
            return Err(file_error(
                "nats.auth.nkey_seed_file",
                path,
                "does not hold an NKey seed (the file is the seed alone, one line: \"SU…\")".into(),
            ));
        }
        options = options.nkey(seed);
    }
    if !auth.user.is_empty() {
        options = options.user_and_password(auth.user.clone(), auth.password.clone());
    }
    if !auth.token.is_empty() {
        options = options.token(auth.token.clone());
    }
    let tls = &nats.tls;
    // What is wrong with a PEM file, without quoting it.
    let pem_problem = |e: async_nats::rustls::pki_types::pem::Error| match e {
        async_nats::rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        async_nats::rustls::pki_types::pem::Error::NoItemsFound => {
            "holds nothing of the kind in PEM".to_owned()
        }
        _ => "is not valid PEM".to_owned(),
    };
    // Parsed as what they must hold, so a wrong file is named here rather than reported by
    // the handshake as the server's fault (an empty CA file: "UnknownIssuer").
    let certificates = |setting: &'static str, path: &str| {
        let found = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_error(setting, path, pem_problem(e)))?;
        if found.is_empty() {
            return Err(file_error(
                setting,
                path,
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        Ok(())
    };
    if !tls.ca_file.is_empty() {
        certificates("nats.tls.ca_file", &tls.ca_file)?;
        options = options.add_root_certificates(tls.ca_file.clone().into());
    }
    if !tls.cert_file.is_empty() {
        certificates("nats.tls.cert_file", &tls.cert_file)?;
        PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
            file_error(
                "nats.tls.key_file",
                &tls.key_file,
                format!(
                    "{} (a PEM private key: PKCS#8, PKCS#1 or SEC1)",
                    pem_problem(e)
                ),
            )
        })?;
        options = options
            .add_client_certificate(tls.cert_file.clone().into(), tls.key_file.clone().into());
    }
    if tls.enabled() {
        options = options.require_tls(true);
    }
    if tls.handshake_first {
        options = options.tls_first();
    }
    Ok(options)
}
