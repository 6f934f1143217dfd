//! `registration-service [ADDR]`: serves [`registration_service::app`] on ADDR (default
//! `127.0.0.1:8080`) against the fleet the configuration names (`FLEET_NATS__URL`, …).

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let config = fleet_config::Config::load()?;
    let client = fleet_client::FleetClient::connect(&config)
        .await?
        .with_timeout(Duration::from_secs(30));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("registration-service on http://{addr} (POST /signup, GET /tenants/{{id}})");
    axum::serve(listener, registration_service::app(client)).await?;
    Ok(())
}
