//! Prometheus metrics of a worker: jobs by outcome, handler duration, in-flight jobs,
//! dead letters — rendered in the text exposition format on `/metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of per-outcome metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `done`, `retry` or `dead_lettered`.
    pub outcome: String,
}

/// The worker's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Jobs settled, by outcome.
    pub jobs: Family<OutcomeLabels, Counter>,
    /// Handler duration in seconds.
    pub duration: Histogram,
    /// Jobs running now.
    pub in_flight: Gauge,
    /// Messages written to the dead-letter stream.
    pub dead_lettered: Counter,
}

impl Metrics {
    /// Metrics registered under the `fleet_` prefix, labelled with the worker.
    pub fn new(worker: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "fleet",
            [("worker".into(), worker.to_owned().into())].into_iter(),
        );
        let jobs = Family::<OutcomeLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let in_flight = Gauge::default();
        let dead_lettered = Counter::default();
        registry.register("jobs", "Jobs settled, by outcome", jobs.clone());
        registry.register("job_duration_seconds", "Handler duration", duration.clone());
        registry.register("jobs_in_flight", "Jobs running now", in_flight.clone());
        registry.register(
            "dead_lettered",
            "Messages written to the dead-letter stream",
            dead_lettered.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            jobs,
            duration,
            in_flight,
            dead_lettered,
        }
    }

    /// Registers another metric of the process (the gateway's requests, …) under the same
    /// prefix and labels, rendered with the rest on `/metrics`.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    /// Records one settled job.
    pub fn observe(&self, outcome: &str, elapsed: Duration) {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
        if outcome == "dead_lettered" {
            self.dead_lettered.inc();
        }
    }

    /// Jobs settled since the worker started, every outcome (`done`, `retry`, `dead_lettered`).
    pub fn settled(&self) -> u64 {
        ["done", "retry", "dead_lettered"]
            .into_iter()
            .map(|outcome| {
                self.jobs
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
