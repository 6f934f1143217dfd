//! The runtime against a real nats-server (one per test).

mod deploy;
mod health;
mod jobs;
mod limits;
mod security;
mod state;
mod topology;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use fleet_runtime::metrics::Metrics;
use fleet_runtime::topology::names;
use fleet_runtime::{Handler, JobLoopSettings, Publisher, Topology};
use fleet_testkit::NatsServer;
use tokio::sync::watch;

/// A server, a client and the fleet topology with test-sized timings.
#[allow(missing_debug_implementations)]
pub struct Env {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
    pub publisher: Publisher,
}

impl Env {
    pub async fn start() -> Self {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let mut topology = Topology::fleet("", 1);
        for consumer in &mut topology.consumers {
            consumer.max_deliver = 3;
            consumer.ack_wait = Duration::from_secs(1);
        }
        topology.ensure(&client, &js).await.unwrap();
        let publisher = Publisher::new(js.clone());
        Self {
            server,
            client,
            js,
            topology,
            publisher,
        }
    }

    /// Runs `handler` on the provisioner's consumer until the returned sender says stop.
    pub fn run<H: Handler>(
        &self,
        handler: Arc<H>,
        concurrency: usize,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        self.run_on(names::PROVISIONER, handler, concurrency)
    }

    /// Runs `handler` on the durable consumer `consumer` until the returned sender says stop.
    pub fn run_on<H: Handler>(
        &self,
        consumer: &str,
        handler: Arc<H>,
        concurrency: usize,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let spec = self.topology.consumer(consumer).unwrap().clone();
        let settings = JobLoopSettings {
            consumer: spec.durable.clone(),
            stream: spec.stream.clone(),
            max_deliver: spec.max_deliver as u64,
            retry: fleet_config::RetryPolicy::Fixed {
                interval_ms: 100,
                max_attempts: spec.max_deliver as u32,
            },
            ack_wait: spec.ack_wait,
            concurrency,
            shutdown_grace: Duration::from_secs(10),
            subjects: fleet_runtime::Subjects::default(),
            dead_letter_subject: format!("dlq.{}", spec.durable),
            dead_letter_payloads: self.topology.dead_letter_payloads.clone(),
            payload_limits: spec.payload_limits.clone(),
            max_job_duration: Duration::from_secs(60),
        };
        let (tx, rx) = watch::channel(false);
        let (js, publisher, client) =
            (self.js.clone(), self.publisher.clone(), self.client.clone());
        let metrics = Arc::new(Metrics::new("test"));
        let watcher = tokio::spawn(fleet_runtime::jobs::watch_max_deliveries(
            client,
            js.clone(),
            Arc::new(settings.clone()),
            handler.clone(),
            publisher.clone(),
            metrics.clone(),
            rx.clone(),
        ));
        let task = tokio::spawn(async move {
            fleet_runtime::run_job_loop(js, settings, handler, publisher, metrics, rx)
                .await
                .unwrap();
            watcher.abort();
        });
        (tx, task)
    }

    /// Messages currently in a stream.
    pub async fn count(&self, stream: &str) -> u64 {
        let mut stream = self.js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Waits until `check` holds (polling), panicking after `limit`.
    pub async fn eventually<F: AsyncFnMut() -> bool>(&self, limit: Duration, what: &str, check: F) {
        assert!(
            fleet_testkit::wait_until(limit, check).await,
            "timed out waiting for: {what}"
        );
    }
}
