//! No token text in what is stored, nor in what is logged, through a whole flow.

use std::io::Write;
use std::sync::{Arc, Mutex};

use fleet_protocol::TenantConnectionConfig;
use secrecy::ExposeSecret;

use crate::router::Fleet;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_appear_in_stored_json_or_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fleet = Fleet::new();
    let acme = fleet.provision("acme").await;
    use fleet_tenantdb::TenantDirectory;
    let entry = fleet.directory.lookup(&acme).await.unwrap().unwrap();
    let token = entry
        .connection
        .auth_token(&acme, &fleet.keys)
        .unwrap()
        .unwrap();
    let secret = token.expose_secret().to_owned();

    let stored = serde_json::to_string(&entry.connection).unwrap();
    assert!(
        !stored.contains(&secret),
        "the stored JSON holds the token in clear"
    );
    let plain = TenantConnectionConfig {
        url: entry.connection.url.clone(),
        auth_token: Some(secret.clone()),
        group: None,
    };
    tracing::info!(?plain, ?entry, ?token, ?fleet.keys, "everything we might be tempted to log");

    let router = fleet.router(fleet_tenantdb::RouterSettings::default());
    router.connect(&acme).await.unwrap();
    tracing::debug!(?router, "router state");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("everything we might be tempted to log"),
        "logs were captured"
    );
    assert!(
        !logs.contains(&secret),
        "a token leaked into the logs:\n{logs}"
    );
}
