//! Upstream `IAppLifecycleService` ([`AppLifecycleService`]) on the real code: the per-tenant
//! work the installer does — [`fleet_apps::tenant`] on the tenant's database, opened by the
//! [`TenantConnector`] — for callers in-process (operators' tools, tests). Upstream's methods
//! take a manifest; the definitions it names come from the packages this service was given
//! ([`AppLifecycle::add_package`]), by name and version.
//!
//! This is the work without the messaging around it: it does not move the install record in
//! KV (the worker does, around the same calls), so a fleet's apps are installed through
//! `app.*_requested`; this serves checks and single-tenant tooling.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use fleet_apps::tenant::{AppError, InstallOptions};
use fleet_control::{ConnectError, TenantConnector};
use fleet_protocol::contracts::{AppLifecycleService, ContractError, ContractResult};
use fleet_protocol::{
    AppCompatibilityCheck, AppInstallResult, AppManifest, AppName, AppPackage, ObjectDefinition,
    TenantId,
};
use fleet_tenants::machine::TenantRecord;
use serde_json::{Map, Value};

/// [`AppLifecycleService`] over tenants' databases.
#[derive(Debug)]
pub struct AppLifecycle {
    connector: TenantConnector,
    packages: Mutex<HashMap<(String, String), AppPackage>>,
}

fn contract(e: AppError) -> ContractError {
    match e {
        e if e.is_transient() => ContractError::Unavailable(fleet_runtime::error_chain(&e)),
        AppError::Incompatible(check) => ContractError::IllegalState(
            check
                .issues
                .iter()
                .map(|i| i.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        AppError::Dependents { .. } | AppError::Upgrade(_) => {
            ContractError::IllegalState(e.to_string())
        }
        e => ContractError::Other(Box::new(e)),
    }
}

fn connect_error(e: ConnectError) -> ContractError {
    match e {
        ConnectError::Unknown(t) => ContractError::NotFound {
            kind: "tenant",
            name: t.to_string(),
        },
        e if e.is_transient() => ContractError::Unavailable(fleet_runtime::error_chain(&e)),
        e => ContractError::IllegalState(fleet_runtime::error_chain(&e)),
    }
}

impl AppLifecycle {
    /// A service over the tenants `connector` reaches, knowing no packages yet.
    pub fn new(connector: TenantConnector) -> Self {
        Self {
            connector,
            packages: Mutex::new(HashMap::new()),
        }
    }

    /// Makes `package`'s definitions available to the methods that take its manifest.
    pub fn add_package(&self, package: AppPackage) {
        let key = (
            package.manifest.name.to_string(),
            package.manifest.version.clone(),
        );
        self.packages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, package);
    }

    fn package(&self, manifest: &AppManifest) -> ContractResult<AppPackage> {
        let key = (manifest.name.to_string(), manifest.version.clone());
        self.packages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
            .ok_or(ContractError::NotFound {
                kind: "app package",
                name: format!("{}@{}", key.0, key.1),
            })
    }

    /// The package `manifest` names, its object definitions, and the tenant's record and
    /// database.
    async fn open(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
    ) -> ContractResult<(
        AppPackage,
        Vec<ObjectDefinition>,
        TenantRecord,
        libsql::Connection,
    )> {
        let package = self.package(manifest)?;
        let objects = package.object_definitions()?;
        let (record, conn) = self
            .connector
            .connect(tenant)
            .await
            .map_err(connect_error)?;
        Ok((package, objects, record, conn))
    }

    async fn run(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
        options: InstallOptions,
    ) -> ContractResult<AppInstallResult> {
        let (package, objects, record, conn) = self.open(tenant, manifest).await?;
        fleet_apps::tenant::install(&conn, &package, &objects, &record.quotas, options)
            .await
            .map(|(result, _)| result)
            .map_err(contract)
    }
}

#[async_trait]
impl AppLifecycleService for AppLifecycle {
    async fn check_compatibility(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
    ) -> ContractResult<AppCompatibilityCheck> {
        let (package, objects, record, conn) = self.open(tenant, manifest).await?;
        fleet_apps::tenant::check(&conn, &package, &objects, &record.quotas)
            .await
            .map_err(contract)
    }

    async fn install_app(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
        config: Option<Map<String, Value>>,
    ) -> ContractResult<AppInstallResult> {
        let _ = config; // overrides are the app's runtime settings, not its schema
        self.run(tenant, manifest, InstallOptions::default()).await
    }

    async fn uninstall_app(
        &self,
        tenant: &TenantId,
        app: &AppName,
        drop_tables: bool,
    ) -> ContractResult<()> {
        let (_, conn) = self
            .connector
            .connect(tenant)
            .await
            .map_err(connect_error)?;
        fleet_apps::tenant::uninstall(&conn, app.as_str(), drop_tables)
            .await
            .map(|_| ())
            .map_err(contract)
    }

    async fn upgrade_app(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
    ) -> ContractResult<AppInstallResult> {
        let options = InstallOptions {
            upgrade: true,
            ..InstallOptions::default()
        };
        self.run(tenant, manifest, options).await
    }
}
