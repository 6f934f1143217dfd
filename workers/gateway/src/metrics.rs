//! The gateway's request metrics, labelled by plan, object and operation — never by tenant id,
//! so their cardinality follows the fleet's metadata, not its size — served with the process's
//! other metrics on the health port's `/metrics` (`fleet_gateway_requests_total`,
//! `fleet_gateway_request_duration_seconds`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Labels of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The tenant's plan (`-` when no tenant was resolved).
    pub plan: String,
    /// The object named in the path.
    pub object: String,
    /// `create`, `get`, `update`, `delete` or `find`.
    pub operation: String,
    /// The HTTP status.
    pub status: u16,
}

/// Labels of a duration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `create`, `get`, `update`, `delete` or `find`.
    pub operation: String,
}

/// Requests by labels, and their durations by operation.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<OperationLabels, Histogram>,
}

impl RequestMetrics {
    /// The metrics, registered with the process's.
    pub fn new(registry: &fleet_runtime::metrics::Metrics) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "gateway_requests",
            "Data API requests by plan, object, operation and status",
            requests.clone(),
        );
        registry.register(
            "gateway_request_duration_seconds",
            "Data API request duration by operation",
            duration.clone(),
        );
        Self { requests, duration }
    }

    /// Counts one request.
    pub fn observe(
        &self,
        plan: &str,
        object: &str,
        operation: &str,
        status: u16,
        elapsed: Duration,
    ) {
        // An object is a label only on a success (the tenant's registry knew it): the path is
        // the caller's, and names nobody registered must not grow the label set.
        let object = if status < 400 { object } else { "-" };
        self.requests
            .get_or_create(&RequestLabels {
                plan: plan.to_owned(),
                object: object.to_owned(),
                operation: operation.to_owned(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}
