//! The router: strategies, refusals, hostile ids, and a stress test — 10 000 tenants through a
//! cache of 64, concurrently, never a cross-tenant answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::contracts::RequestParts;
use fleet_protocol::turso::TursoTokenScope;
use fleet_protocol::{
    TenantConnectionConfig, TenantId, TenantPlan, TenantProvisioningStatus, TenantRegion,
    TenantResolverStrategy,
};
use fleet_tenantdb::{
    InMemoryDirectory, KeyRing, MemoryBackend, Router, RouterError, RouterSettings,
    StoredConnectionConfig, TenantDatabases, TenantEntry,
};
use secrecy::ExposeSecret;
use serde_json::json;

pub struct Fleet {
    pub backend: Arc<MemoryBackend>,
    pub directory: Arc<InMemoryDirectory>,
    pub keys: Arc<KeyRing>,
}

impl Fleet {
    pub fn new() -> Self {
        let key = KeyRing::generate_key();
        Self {
            backend: Arc::new(MemoryBackend::new("")),
            directory: Arc::new(InMemoryDirectory::default()),
            keys: Arc::new(KeyRing::new("k1", [("k1", &key)]).unwrap()),
        }
    }

    /// Provisions a tenant the way the provisioner will: database, token, sealed config, record.
    pub async fn provision(&self, id: &str) -> TenantId {
        let tenant = TenantId::parse(id).unwrap();
        self.backend.create_database(&tenant, None).await.unwrap();
        let database = self.backend.database_name(&tenant);
        let token = self
            .backend
            .issue_token(&database, TursoTokenScope::FullAccess, None)
            .await
            .unwrap();
        let db = self.backend.open(&database, &token.token).await.unwrap();
        let conn = db.connect().await.unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE whoami (tenant TEXT); INSERT INTO whoami VALUES ('{tenant}');"
        ))
        .await
        .unwrap();
        let config = TenantConnectionConfig {
            url: self.backend.connection_url(&database),
            auth_token: Some(token.token.expose_secret().to_owned()),
            group: None,
        };
        self.directory.upsert(TenantEntry {
            tenant: tenant.clone(),
            status: TenantProvisioningStatus::Active,
            plan: TenantPlan::Free,
            region: TenantRegion::UsEast,
            database,
            connection: StoredConnectionConfig::seal(&config, &tenant, &self.keys),
        });
        tenant
    }

    pub fn router(&self, settings: RouterSettings) -> Router {
        Router::new(
            settings,
            self.directory.clone(),
            self.backend.clone(),
            self.keys.clone(),
        )
    }
}

async fn whoami(router: &Router, tenant: &TenantId) -> String {
    let connection = router.connect(tenant).await.unwrap();
    assert_eq!(&connection.tenant, tenant);
    let mut rows = connection
        .conn
        .query("SELECT tenant FROM whoami", ())
        .await
        .unwrap();
    rows.next()
        .await
        .unwrap()
        .unwrap()
        .get::<String>(0)
        .unwrap()
}

fn request(
    headers: &[(&str, &str)],
    host: Option<&str>,
    path: &str,
    claims: serde_json::Value,
) -> RequestParts {
    RequestParts {
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        host: host.map(str::to_owned),
        path: path.to_owned(),
        claims: claims.as_object().cloned().unwrap_or_default(),
    }
}

#[tokio::test]
async fn every_strategy_finds_the_tenant() {
    let fleet = Fleet::new();
    let acme = fleet.provision("acme").await;
    fleet.directory.map_host("crm.acme.example", acme.clone());
    let cases = [
        (
            TenantResolverStrategy::Header,
            request(&[("x-tenant-id", "acme")], None, "/", json!({})),
        ),
        (
            TenantResolverStrategy::Subdomain,
            request(&[], Some("acme.app.example:8443"), "/", json!({})),
        ),
        (
            TenantResolverStrategy::Path,
            request(&[], None, "/api/acme/records", json!({})),
        ),
        (
            TenantResolverStrategy::Token,
            request(&[], None, "/", json!({"tenant_id": "acme"})),
        ),
        (
            TenantResolverStrategy::Lookup,
            request(&[], Some("crm.acme.example"), "/", json!({})),
        ),
    ];
    for (strategy, req) in cases {
        let router = fleet.router(RouterSettings {
            strategy,
            ..RouterSettings::default()
        });
        assert_eq!(router.tenant_of(&req).await.unwrap(), acme, "{strategy:?}");
        use fleet_protocol::contracts::TenantRouter;
        let resolved = router.resolve_tenant(&req).await.unwrap().unwrap();
        assert_eq!(
            (resolved.tenant_id, resolved.status),
            (acme.clone(), TenantProvisioningStatus::Active)
        );
    }
    let router = fleet.router(RouterSettings::default());
    assert!(matches!(
        router.tenant_of(&request(&[], None, "/", json!({}))).await,
        Err(RouterError::NoTenant(_))
    ));
}

#[tokio::test]
async fn hostile_tenant_ids_are_rejected_before_any_lookup() {
    let fleet = Fleet::new();
    let router = fleet.router(RouterSettings::default());
    let long = "a".repeat(300);
    for bad in [
        "../x",
        "a/b",
        "",
        long.as_str(),
        "ac\u{0435}me",
        "ACME",
        "acme;drop",
        "acme\0",
    ] {
        let err = router
            .tenant_of(&request(&[("x-tenant-id", bad)], None, "/", json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RouterError::InvalidTenantId(_)),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test]
async fn unknown_suspended_and_inactive_tenants_are_refused() {
    let fleet = Fleet::new();
    let acme = fleet.provision("acme").await;
    let router = fleet.router(RouterSettings::default());
    assert!(matches!(
        router.connect(&TenantId::parse("nobody").unwrap()).await,
        Err(RouterError::UnknownTenant(_))
    ));
    assert_eq!(whoami(&router, &acme).await, "acme");
    fleet
        .directory
        .set_status(&acme, TenantProvisioningStatus::Suspended);
    router.invalidate(&acme).await;
    assert!(matches!(
        router.connect(&acme).await,
        Err(RouterError::Suspended(_))
    ));
    fleet
        .directory
        .set_status(&acme, TenantProvisioningStatus::Provisioning);
    assert!(matches!(
        router.connect(&acme).await,
        Err(RouterError::NotActive { .. })
    ));
}

#[tokio::test]
async fn a_token_sealed_for_another_tenant_does_not_open() {
    let fleet = Fleet::new();
    let acme = fleet.provision("acme").await;
    let globex = fleet.provision("globex").await;
    // Put globex's sealed token on acme's record: the AEAD binding refuses it.
    let mut entry = futures_lookup(&fleet, &acme).await;
    entry.connection = futures_lookup(&fleet, &globex).await.connection;
    fleet.directory.upsert(entry);
    let router = fleet.router(RouterSettings::default());
    assert!(matches!(
        router.connect(&acme).await,
        Err(RouterError::Secret { .. })
    ));
}

async fn futures_lookup(fleet: &Fleet, tenant: &TenantId) -> TenantEntry {
    use fleet_tenantdb::TenantDirectory;
    fleet.directory.lookup(tenant).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tenants_through_a_cache_of_64_never_cross() {
    const TENANTS: usize = 10_000;
    let fleet = Fleet::new();
    let mut tenants = Vec::with_capacity(TENANTS);
    for i in 0..TENANTS {
        tenants.push(fleet.provision(&format!("t{i:05}")).await);
    }
    let router = Arc::new(fleet.router(RouterSettings {
        max_cached_connections: 64,
        connection_cache_ttl: Duration::from_secs(600),
        ..RouterSettings::default()
    }));
    let tenants = Arc::new(tenants);
    // 16 workers, each walking all tenants in its own order, with hot tenants revisited often.
    let workers: Vec<_> = (0..16u64)
        .map(|w| {
            let (router, tenants) = (router.clone(), tenants.clone());
            tokio::spawn(async move {
                let mut checked = 0;
                for step in 0..(TENANTS as u64 / 8) {
                    let index = ((step * 7919 + w * 104_729) % TENANTS as u64) as usize;
                    let hot = (step % 5 == 0).then_some((w % 8) as usize);
                    let tenant = &tenants[hot.unwrap_or(index)];
                    assert_eq!(
                        whoami(&router, tenant).await,
                        tenant.as_str(),
                        "cross-tenant answer"
                    );
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    assert_eq!(total, 16 * TENANTS / 8);
    let cached = router.cached().await;
    assert!(cached <= 64, "the cache is bounded: {cached} entries");
}
