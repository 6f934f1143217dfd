//! Probes and metrics over HTTP.

use std::sync::Arc;

use fleet_runtime::health::{Health, serve};
use fleet_runtime::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::Env;

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn probes_report_liveness_readiness_and_metrics() {
    let env = Env::start().await;
    let metrics = Arc::new(Metrics::new("provisioner"));
    let health = Arc::new(Health::new(Some(env.client.clone()), metrics.clone()));
    let (stop, rx) = watch::channel(false);
    let address = serve("127.0.0.1:0", health.clone(), rx).await.unwrap();
    assert_eq!(get(address, "/healthz").await.0, 200);
    assert_eq!(
        get(address, "/readyz").await.0,
        503,
        "not ready before the topology is ensured"
    );
    health.set_ready(true);
    assert_eq!(get(address, "/readyz").await.0, 200);
    metrics.observe("done", std::time::Duration::from_millis(12));
    metrics.observe("dead_lettered", std::time::Duration::from_millis(3));
    let (status, body) = get(address, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("fleet_jobs_total{worker=\"provisioner\",outcome=\"done\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("fleet_dead_lettered_total{worker=\"provisioner\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("fleet_job_duration_seconds_count{worker=\"provisioner\"} 2"),
        "{body}"
    );
    stop.send(true).unwrap();
}
