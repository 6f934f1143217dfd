//! Marketplace apps through the installer: upstream's `IAppLifecycleService`
//! ([`AppLifecycleService`]) and the calls fleetctl's `app` commands make.
//!
//! `install`, `upgrade` and `uninstall` are refused here, with nothing sent, when they cannot
//! fit (an unknown or inactive tenant; an install over another version, an upgrade of an app
//! not installed, anything while another operation runs — the installer's own state machine,
//! [`fleet_apps::machine::begin`], run on the app's record). Otherwise the command goes to
//! `app.<operation>_requested` under `<operation>:<tenant>.<app>:<version>:<revision>` (one
//! command per state of the record it was sent in: a retried call is a duplicate), and the
//! answer is the app's record (KV `fleet_installs`, key `<tenant>.<app>`) once it settles,
//! watched from before the publish. An uninstall's answer is the record's deletion.
//!
//! The compatibility check runs where the tenant's database is: as a one-tenant app dry run
//! through the deployer (`deploy.app_requested`), whose outcome carries the check.
//!
//! Upstream's methods take an [`AppManifest`]; the objects an install creates are in the app's
//! package, which an [`AppCatalog`] provides ([`FleetClient::with_catalog`]).

use std::path::PathBuf;

use async_nats::jetstream::kv;
use async_trait::async_trait;
use fleet_apps::machine::{self, InstallRecord, InstallStatus, Operation};
use fleet_protocol::contracts::{AppLifecycleService, ContractResult};
use fleet_protocol::deploy::{AppOperation, AppRollout, AppRolloutRequest};
use fleet_protocol::{
    AppCommand, AppCompatibilityCheck, AppInstallResult, AppManifest, AppName, AppPackage,
    AppUninstallRequest, DeployTarget, DeployValidationIssue, IssueSeverity, Rejected,
    RolloutOptions, TenantId, TenantProvisioningStatus, Timestamp,
};
use fleet_tenants::machine::status_name;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::{ClientError, FleetClient, messaging, read_key};

/// Where the client finds an app's package (its objects, views, flows and seed data) from
/// the name and version a manifest gives.
pub trait AppCatalog: Send + Sync + std::fmt::Debug {
    /// The package of `app` at `version`; `Ok(None)` when the catalog has none.
    fn package(&self, app: &AppName, version: &str) -> Result<Option<AppPackage>, ClientError>;
}

/// Packages in a directory, as `fleetctl app install` reads them: `<root>/<app>-<version>/`
/// (a `manifest.json` and `objects/`) or `<root>/<app>-<version>.json`.
#[derive(Debug, Clone)]
pub struct DirectoryCatalog {
    root: PathBuf,
}

impl DirectoryCatalog {
    /// The packages under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl AppCatalog for DirectoryCatalog {
    fn package(&self, app: &AppName, version: &str) -> Result<Option<AppPackage>, ClientError> {
        let base = format!("{app}-{version}");
        for path in [
            self.root.join(&base),
            self.root.join(format!("{base}.json")),
        ] {
            if !path.exists() {
                continue;
            }
            return match fleet_apps::package::load(&path) {
                Ok(checked) => Ok(Some(checked.value)),
                Err(fleet_apps::package::PackageError::Invalid(rejected)) => {
                    Err(ClientError::Invalid {
                        what: "AppPackage",
                        rejected,
                    })
                }
                Err(e) => Err(ClientError::Catalog(format!("{}: {e}", path.display()))),
            };
        }
        Ok(None)
    }
}

/// Packages held in memory.
impl AppCatalog for Vec<AppPackage> {
    fn package(&self, app: &AppName, version: &str) -> Result<Option<AppPackage>, ClientError> {
        Ok(self
            .iter()
            .find(|p| &p.manifest.name == app && p.manifest.version == version)
            .cloned())
    }
}

/// How an install or upgrade goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// Do not insert the app's seed data (installs).
    pub skip_seed_data: bool,
    /// Accept dropping the objects and fields the new version removed (upgrades).
    pub allow_destructive: bool,
}

fn key(tenant: &TenantId, app: &str) -> String {
    InstallRecord::key(tenant.as_str(), app)
}

/// What a settled record says about an install or upgrade to `version`: done, or why not.
fn settled_install(
    tenant: &TenantId,
    record: InstallRecord,
    version: &str,
) -> Result<InstallRecord, ClientError> {
    if record.error.is_none() && record.installed_version.as_deref() == Some(version) {
        return Ok(record);
    }
    let mut error = record
        .error
        .clone()
        .unwrap_or_else(|| "the operation did not complete".into());
    for issue in record.check.iter().flat_map(|c| &c.issues) {
        error.push_str(&format!("\n  {}", issue.message));
    }
    Err(ClientError::Failed {
        kind: "app",
        name: key(tenant, &record.app_id),
        error,
    })
}

impl FleetClient {
    /// The record of `app` in `tenant` and its revision (`None`: not installed, never tried).
    pub async fn app_record(
        &self,
        tenant: &TenantId,
        app: &str,
    ) -> Result<Option<(InstallRecord, u64)>, ClientError> {
        read_key(&self.installs, &key(tenant, app)).await
    }

    /// Refuses what the installer would dead-letter at once; else the record's revision (0:
    /// none).
    async fn preflight(
        &self,
        tenant: &TenantId,
        app: &str,
        operation: Operation,
        version: &str,
    ) -> Result<u64, ClientError> {
        match self.record(tenant).await? {
            None => return Err(ClientError::no_tenant(tenant)),
            Some((record, _)) if record.status() != TenantProvisioningStatus::Active => {
                return Err(ClientError::Refused {
                    kind: "tenant",
                    name: tenant.to_string(),
                    status: status_name(&record),
                    why: "apps are installed into and removed from active tenants".into(),
                });
            }
            Some(_) => {}
        }
        let current = self.app_record(tenant, app).await?;
        machine::begin(
            current.as_ref().map(|(state, _)| state),
            tenant.as_str(),
            app,
            operation,
            version,
            &Timestamp::now(),
        )
        .map_err(|e| ClientError::Refused {
            kind: "app",
            name: key(tenant, app),
            status: current.as_ref().map_or_else(
                || "not installed".into(),
                |(r, _)| crate::deploys::wire(&r.status),
            ),
            why: e.to_string(),
        })?;
        // The key's last revision, a deletion's too: an install after an uninstall is a new
        // command (its message id differs from the first install's), and the deletion is not
        // mistaken for its answer.
        let last = fleet_runtime::state::leader_revision(&self.installs, &key(tenant, app))
            .await
            .map_err(messaging)?;
        Ok(last.max(current.map_or(0, |(_, revision)| revision)))
    }

    /// Sends one app command after [`Self::preflight`] and waits until the record changed past
    /// the revision it had and `settled` holds (`None`: the record was deleted — uninstalled).
    async fn send_app(
        &self,
        tenant: &TenantId,
        app: &str,
        operation: Operation,
        version: &str,
        command: &Value,
        settled: impl Fn(&InstallRecord) -> bool,
    ) -> Result<Option<InstallRecord>, ClientError> {
        let after = self.preflight(tenant, app, operation, version).await?;
        let key = key(tenant, app);
        let (subject, verb, what) = match operation {
            Operation::Install => ("app.install_requested", "install", "install"),
            Operation::Upgrade => ("app.upgrade_requested", "upgrade", "upgrade"),
            Operation::Uninstall => ("app.uninstall_requested", "uninstall", "uninstall"),
        };
        let watch = self
            .installs
            .watch_with_history(&key)
            .await
            .map_err(messaging)?;
        self.publish(subject, &format!("{verb}:{key}:{version}:{after}"), command)
            .await?;
        let mut watch = std::pin::pin!(watch);
        tokio::time::timeout(self.timeout, async {
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(messaging)?;
                if entry.revision <= after {
                    continue;
                }
                if entry.operation != kv::Operation::Put {
                    // Only an uninstall is answered by the record's deletion.
                    if operation == Operation::Uninstall {
                        return Ok(None);
                    }
                    continue;
                }
                let record: InstallRecord =
                    serde_json::from_slice(&entry.value).map_err(messaging)?;
                if settled(&record) {
                    return Ok(Some(record));
                }
            }
            Err(messaging("the app record's watch ended"))
        })
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::TimedOut {
                kind: "app",
                name: key.clone(),
                what,
                worker: "installer",
                timeout: self.timeout,
            })
        })
    }

    /// Installs (`operation` install) or upgrades `package` in `tenant` and waits: the app's
    /// settled record, or [`ClientError::Failed`] with the installer's reason (an incompatible
    /// app lists every issue of the check).
    pub async fn install(
        &self,
        tenant: &TenantId,
        package: &AppPackage,
        upgrade: bool,
        options: InstallOptions,
    ) -> Result<InstallRecord, ClientError> {
        let app = package.manifest.name.to_string();
        let version = package.manifest.version.clone();
        let command = json!({
            "tenantId": tenant, "appId": app, "package": package,
            "skipSeedData": options.skip_seed_data,
            "allowDestructive": options.allow_destructive,
        });
        fleet_protocol::parse_value::<AppCommand>(&command).map_err(|rejected| {
            ClientError::Invalid {
                what: "AppCommand",
                rejected,
            }
        })?;
        let operation = if upgrade {
            Operation::Upgrade
        } else {
            Operation::Install
        };
        let record = self
            .send_app(tenant, &app, operation, &version, &command, |r| {
                r.version == version && r.status != InstallStatus::Installing
            })
            .await?
            .ok_or_else(|| ClientError::NotFound {
                kind: "app",
                name: key(tenant, &app),
            })?;
        settled_install(tenant, record, &version)
    }

    /// Uninstalls `app` from `tenant` (its tables dropped with `drop_tables`, else kept
    /// unregistered) and waits until its record is gone.
    pub async fn uninstall(
        &self,
        tenant: &TenantId,
        app: &str,
        drop_tables: bool,
    ) -> Result<(), ClientError> {
        let command = serde_json::to_value(AppUninstallRequest {
            tenant_id: tenant.to_string(),
            app_id: app.to_owned(),
            drop_tables,
        })
        .map_err(messaging)?;
        let left = self
            .send_app(tenant, app, Operation::Uninstall, "", &command, |r| {
                r.status != InstallStatus::Uninstalling
            })
            .await?;
        match left {
            None => Ok(()),
            Some(record) => Err(ClientError::Failed {
                kind: "app",
                name: key(tenant, app),
                error: record.error.unwrap_or_default(),
            }),
        }
    }

    /// The compatibility check of `package` against `tenant` (an upgrade's when the app is
    /// installed there), run by the deployer as a one-tenant app dry run; nothing changes.
    pub async fn check_app(
        &self,
        tenant: &TenantId,
        package: &AppPackage,
    ) -> Result<AppCompatibilityCheck, ClientError> {
        let installed = self
            .app_record(tenant, package.manifest.name.as_str())
            .await?
            .is_some_and(|(r, _)| r.installed_version.is_some());
        let id = crate::new_deployment_id("check")?;
        let request = serde_json::to_value(AppRolloutRequest {
            deployment_id: id.clone(),
            app: AppRollout {
                operation: if installed {
                    AppOperation::Upgrade
                } else {
                    AppOperation::Install
                },
                package: package.clone(),
                skip_seed_data: false,
            },
            target: DeployTarget {
                tenants: vec![tenant.clone()],
                ..DeployTarget::default()
            },
            rollout: RolloutOptions {
                waves: vec!["100%".into()],
                max_failure_ratio: 1.0,
                allow_destructive: true,
                dry_run: true,
            },
        })
        .map_err(messaging)?;
        let (d, outcome) = self
            .rollout_one::<AppRolloutRequest>(
                &id,
                "deploy.app_requested",
                &request,
                tenant,
                "compatibility check",
            )
            .await?;
        match outcome {
            Some(outcome) => match outcome.check {
                Some(check) => Ok(check),
                None => Err(ClientError::Failed {
                    kind: "tenant",
                    name: tenant.to_string(),
                    error: outcome.error.unwrap_or_default(),
                }),
            },
            None => Err(Self::untouched(&d)),
        }
    }

    /// The catalog's package of `manifest`: its name and version, and the same manifest.
    fn package_of(&self, manifest: &AppManifest) -> Result<AppPackage, ClientError> {
        let name = format!("{}@{}", manifest.name, manifest.version);
        let Some(catalog) = &self.catalog else {
            return Err(ClientError::NotFound {
                kind: "app package",
                name: format!("{name} (the client has no catalog: FleetClient::with_catalog)"),
            });
        };
        let Some(package) = catalog.package(&manifest.name, &manifest.version)? else {
            return Err(ClientError::NotFound {
                kind: "app package",
                name,
            });
        };
        if &package.manifest != manifest {
            return Err(ClientError::Refused {
                kind: "app package",
                name,
                status: "catalogued".into(),
                why: "the manifest differs from the catalog's package of that version".into(),
            });
        }
        Ok(package)
    }
}

/// The install options an upstream `config` names (`skipSeedData`); anything else is invalid.
fn options_of(config: Option<Map<String, Value>>) -> Result<InstallOptions, ClientError> {
    let mut options = InstallOptions::default();
    let mut issues = Vec::new();
    for (name, value) in config.into_iter().flatten() {
        match (name.as_str(), value) {
            ("skipSeedData", Value::Bool(skip)) => options.skip_seed_data = skip,
            ("skipSeedData", _) => issues.push(DeployValidationIssue {
                severity: IssueSeverity::Error,
                path: "config.skipSeedData".into(),
                message: "expected a boolean".into(),
                code: Some("invalid_type".into()),
            }),
            (other, _) => issues.push(DeployValidationIssue {
                severity: IssueSeverity::Error,
                path: format!("config.{other}"),
                message: "unknown install option (the installer takes skipSeedData)".into(),
                code: Some("unrecognized_keys".into()),
            }),
        }
    }
    if issues.is_empty() {
        Ok(options)
    } else {
        Err(ClientError::Invalid {
            what: "AppInstallConfig",
            rejected: Rejected {
                type_name: "AppInstallConfig",
                issues,
            },
        })
    }
}

/// An install's upstream result from its record; a refusal by the installer is a result with
/// `success: false` and the reason (the fleet tried), everything else an error.
fn install_result(
    manifest: &AppManifest,
    done: Result<InstallRecord, ClientError>,
) -> ContractResult<AppInstallResult> {
    match done {
        Ok(record) => Ok(record.result.unwrap_or_else(|| AppInstallResult {
            success: true,
            app_id: manifest.name.to_string(),
            version: manifest.version.clone(),
            installed_objects: record.objects.clone(),
            created_tables: Vec::new(),
            seeded_records: 0,
            duration_ms: None,
            error: None,
        })),
        Err(ClientError::Failed { error, .. }) => Ok(AppInstallResult {
            success: false,
            app_id: manifest.name.to_string(),
            version: manifest.version.clone(),
            installed_objects: Vec::new(),
            created_tables: Vec::new(),
            seeded_records: 0,
            duration_ms: None,
            error: Some(error),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Upstream's `IAppLifecycleService` (see the module docs).
#[async_trait]
impl AppLifecycleService for FleetClient {
    async fn check_compatibility(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
    ) -> ContractResult<AppCompatibilityCheck> {
        let package = self.package_of(manifest)?;
        Ok(self.check_app(tenant, &package).await?)
    }

    async fn install_app(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
        config: Option<Map<String, Value>>,
    ) -> ContractResult<AppInstallResult> {
        let options = options_of(config)?;
        let package = self.package_of(manifest)?;
        install_result(
            manifest,
            self.install(tenant, &package, false, options).await,
        )
    }

    async fn uninstall_app(
        &self,
        tenant: &TenantId,
        app: &AppName,
        drop_tables: bool,
    ) -> ContractResult<()> {
        Ok(self.uninstall(tenant, app.as_str(), drop_tables).await?)
    }

    async fn upgrade_app(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
    ) -> ContractResult<AppInstallResult> {
        let package = self.package_of(manifest)?;
        let options = InstallOptions::default();
        install_result(
            manifest,
            self.install(tenant, &package, true, options).await,
        )
    }
}
