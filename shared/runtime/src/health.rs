//! `/healthz` (the process is alive), `/readyz` (connected and topology ensured) and
//! `/metrics` (Prometheus), served over HTTP for Kubernetes probes and scraping.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What the probes report.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    client: Option<async_nats::Client>,
    metrics: Arc<Metrics>,
}

impl Health {
    /// Health of a worker using `client`.
    pub fn new(client: Option<async_nats::Client>, metrics: Arc<Metrics>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            client,
            metrics,
        }
    }

    /// Marks the worker ready (topology ensured) or not (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Ready = marked ready and connected to NATS.
    pub fn is_ready(&self) -> bool {
        let connected = self
            .client
            .as_ref()
            .is_none_or(|c| c.connection_state() == async_nats::connection::State::Connected);
        self.ready.load(Ordering::SeqCst) && connected
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> String {
    health.metrics.render()
}

/// Serves the probes on `address` until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    address: &str,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let stop = async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "health server failed");
        }
    });
    Ok(bound)
}
