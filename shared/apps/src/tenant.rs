//! An app inside one tenant's database: the compatibility check, install, upgrade and uninstall
//! (upstream `IAppLifecycleService`'s per-tenant work), on a connection the caller opened.
//!
//! An install or upgrade is the schema engine's plan for the app as owner
//! ([`fleet_schema::plan_database_for`]), then — in the same transaction — the app's seed data,
//! its registration (its objects, views and flows and its manifest in `sys_metadata`, owner
//! `app:<name>`) and its row in `sys_installed_app`: a failure anywhere leaves the tenant as it
//! was. Seed records carry ids and are inserted with `ON CONFLICT (id) DO NOTHING`, so running
//! an install again inserts nothing twice.

use std::collections::BTreeSet;
use std::time::Instant;

use fleet_protocol::app::{CompatibilityCategory, CompatibilityIssue, CompatibilitySeverity};
use fleet_protocol::{
    AppCompatibilityCheck, AppInstallResult, AppManifest, AppPackage, ObjectDefinition, TenantQuota,
};
use fleet_schema::registry::{self, Owner, Ownership, Registered};
use fleet_schema::{BoundStatement, PlanOptions, SchemaError};
use libsql::{Connection, Value};
use serde_json::Value as Json;

/// Why an app operation did not happen (the tenant's database is unchanged in every case).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The compatibility check refused the app.
    #[error("the app is not compatible with the tenant: {}", .0.issues.iter().filter(|i| i.severity == CompatibilitySeverity::Error).map(|i| i.message.clone()).collect::<Vec<_>>().join("; "))]
    Incompatible(AppCompatibilityCheck),
    /// Other installed apps depend on the app.
    #[error("{app} is needed by {}: uninstall those first", .dependents.join(", "))]
    Dependents {
        /// The app.
        app: String,
        /// The installed apps that depend on it.
        dependents: Vec<String>,
    },
    /// The schema engine refused or failed (destructive changes, data conflicts, an invalid
    /// object, or a failed apply — rolled back).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A query of the system tables failed.
    #[error("querying {what}")]
    Query {
        /// What was read.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: libsql::Error,
    },
}

impl AppError {
    /// Whether retrying later may succeed (the database could not be read); everything else is
    /// this tenant's final answer.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Schema(SchemaError::Introspect(_) | SchemaError::Open { .. })
        )
    }
}

/// An app installed in the tenant (`sys_installed_app`, with its registered manifest).
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    /// The app.
    pub app: String,
    /// Its version.
    pub version: String,
    /// `active`, or what an operator set.
    pub status: String,
    /// The manifest registered with it.
    pub manifest: Option<AppManifest>,
    /// The objects it registered.
    pub objects: Vec<String>,
}

/// How an install or upgrade runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// Skip the app's seed data.
    pub skip_seed_data: bool,
    /// An upgrade may drop objects and fields the new version removed.
    pub allow_destructive: bool,
    /// An upgrade (seed data only for objects the installed version did not have).
    pub upgrade: bool,
}

/// The owner every entry of `app` is registered under.
pub fn owner(app: &str) -> Owner {
    Owner::App(app.to_owned())
}

fn source(app: &str) -> String {
    format!("app:{app}")
}

/// The apps installed in the tenant.
pub async fn installed(conn: &Connection) -> Result<Vec<Installed>, AppError> {
    let query = |source| AppError::Query {
        what: "the installed apps",
        source,
    };
    let mut rows = conn
        .query(
            "SELECT app, version, status FROM sys_installed_app ORDER BY app",
            (),
        )
        .await
        .map_err(query)?;
    let mut apps = Vec::new();
    while let Some(row) = rows.next().await.map_err(query)? {
        apps.push(Installed {
            app: row.get::<String>(0).unwrap_or_default(),
            version: row.get::<String>(1).unwrap_or_default(),
            status: row.get::<String>(2).unwrap_or_default(),
            manifest: None,
            objects: Vec::new(),
        });
    }
    drop(rows);
    let registered = registry::read(conn)
        .await
        .map_err(SchemaError::from)?
        .unwrap_or_default();
    for app in &mut apps {
        let mine = owner(&app.app);
        app.manifest = registered
            .iter()
            .find(|r| r.kind == "app" && r.name == app.app && r.owner() == mine)
            .and_then(|r| serde_json::from_str(&r.body).ok());
        app.objects = registered
            .iter()
            .filter(|r| r.kind == "object" && r.owner() == mine)
            .map(|r| r.name.clone())
            .collect();
    }
    Ok(apps)
}

fn issue(category: CompatibilityCategory, message: String) -> CompatibilityIssue {
    CompatibilityIssue {
        severity: CompatibilitySeverity::Error,
        message,
        category,
    }
}

/// The compatibility check of `package` (its typed `objects`) against the tenant: kernel
/// version, object conflicts (a table or object name another owner registered, or a table
/// nobody registered), dependencies (installed, active, at an accepted version) and the
/// `maxObjects` quota (the one enforcement function). Every issue, each in its category.
pub async fn check(
    conn: &Connection,
    package: &AppPackage,
    objects: &[ObjectDefinition],
    quotas: &TenantQuota,
) -> Result<AppCompatibilityCheck, AppError> {
    let app = package.manifest.name.as_str();
    let mut issues = Vec::new();
    if let Some(min) = &package.manifest.min_kernel_version {
        let kernel = semver::Version::parse(crate::KERNEL_VERSION).expect("a semver version");
        match semver::Version::parse(min) {
            Ok(min) if min > kernel => issues.push(issue(
                CompatibilityCategory::KernelVersion,
                format!("needs kernel {min} or later; the fleet runs {kernel}"),
            )),
            Ok(_) => {}
            Err(e) => issues.push(issue(
                CompatibilityCategory::KernelVersion,
                format!("minKernelVersion {min:?} is not a semver version ({e})"),
            )),
        }
    }
    let rows = registry::read(conn)
        .await
        .map_err(SchemaError::from)?
        .unwrap_or_default();
    let ownership = Ownership::of(&rows, &owner(app));
    let live = fleet_schema::introspect(conn)
        .await
        .map_err(SchemaError::from)?;
    for object in objects.iter().filter(|o| !o.r#abstract) {
        let table = object.table();
        let name = object.name.as_str();
        let other_name = rows
            .iter()
            .find(|r| r.kind == "object" && r.name == name && r.owner() != owner(app));
        if let Some(other) = ownership.others.get(&table) {
            issues.push(issue(
                CompatibilityCategory::ObjectConflict,
                format!("object {name}: table {table} belongs to {other}"),
            ));
        } else if let Some(other) = other_name {
            issues.push(issue(
                CompatibilityCategory::ObjectConflict,
                format!("object {name}: the name is registered by {}", other.owner()),
            ));
        } else if live.tables.contains_key(&table) && !ownership.mine.contains_key(&table) {
            issues.push(issue(
                CompatibilityCategory::ObjectConflict,
                format!("object {name}: a table {table} exists that no app registered (made by hand, or kept by an uninstall): drop or rename it first"),
            ));
        }
    }
    let apps = installed(conn).await?;
    for dependency in package.dependencies() {
        match apps.iter().find(|a| a.app == dependency.app) {
            None => issues.push(issue(
                CompatibilityCategory::DependencyMissing,
                format!("needs app {} installed first", dependency.app),
            )),
            Some(found) if found.status != "active" => issues.push(issue(
                CompatibilityCategory::DependencyMissing,
                format!("needs app {}, which is {}", found.app, found.status),
            )),
            Some(found) if !dependency.accepts(&found.version) => issues.push(issue(
                CompatibilityCategory::DependencyMissing,
                format!(
                    "needs app {} {}, but {} is installed",
                    found.app,
                    dependency
                        .versions
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    found.version
                ),
            )),
            Some(_) => {}
        }
    }
    let others = rows
        .iter()
        .filter(|r| r.kind == "object" && r.owner() != owner(app))
        .count() as u64;
    let quota = fleet_tenants::quota::enforce(
        "maxObjects",
        others + objects.len() as u64,
        quotas.max_objects,
    );
    if !quota.allowed {
        issues.push(issue(
            CompatibilityCategory::QuotaExceeded,
            quota.message.unwrap_or_default(),
        ));
    }
    Ok(AppCompatibilityCheck {
        compatible: issues
            .iter()
            .all(|i| i.severity != CompatibilitySeverity::Error),
        issues,
    })
}

/// A JSON value bound as an SQLite value (arrays and objects as their JSON text).
fn bind(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(i64::from(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

/// The seed records to insert (objects of `only`, when given), as statements with their ids:
/// `(table, id, statement)`.
fn seeds(
    package: &AppPackage,
    objects: &[ObjectDefinition],
    only: Option<&BTreeSet<String>>,
) -> Vec<(String, String, BoundStatement)> {
    let app = package.manifest.name.as_str();
    let mut out = Vec::new();
    for (i, record) in package.manifest.seed_data.iter().enumerate() {
        let Some(object) = record
            .get("object")
            .and_then(Json::as_str)
            .and_then(|name| objects.iter().find(|o| o.name.as_str() == name))
        else {
            continue;
        };
        if only.is_some_and(|only| !only.contains(object.name.as_str())) {
            continue;
        }
        let id = record
            .get("id")
            .and_then(Json::as_str)
            .map_or_else(|| format!("seed-{app}-{i}"), str::to_owned);
        let mut columns = vec!["\"id\"".to_owned()];
        let mut params = vec![Value::Text(id.clone())];
        for (key, field) in &object.fields {
            if let Some(value) = record.get(key.as_str()) {
                let column = field.column_name.clone().unwrap_or_else(|| key.to_string());
                columns.push(fleet_schema::sql::quote(&column));
                params.push(bind(value));
            }
        }
        let table = object.table();
        let placeholders: Vec<String> = (1..=params.len()).map(|n| format!("?{n}")).collect();
        out.push((
            table.clone(),
            id,
            BoundStatement {
                sql: format!(
                    "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (\"id\") DO NOTHING",
                    fleet_schema::sql::quote(&table),
                    columns.join(", "),
                    placeholders.join(", ")
                ),
                params,
            },
        ));
    }
    out
}

/// How many of `seeds` are already in the tables that exist.
async fn existing_seeds(
    conn: &Connection,
    seeds: &[(String, String, BoundStatement)],
    tables: &BTreeSet<String>,
) -> Result<u64, AppError> {
    let mut found = 0;
    for (table, id, _) in seeds.iter().filter(|(t, _, _)| tables.contains(t)) {
        let query = |source| AppError::Query {
            what: "the seed records",
            source,
        };
        let mut rows = conn
            .query(
                &format!(
                    "SELECT 1 FROM {} WHERE \"id\" = ?1",
                    fleet_schema::sql::quote(table)
                ),
                vec![Value::Text(id.clone())],
            )
            .await
            .map_err(query)?;
        if rows.next().await.map_err(query)?.is_some() {
            found += 1;
        }
    }
    Ok(found)
}

/// The registry entries of `package`: its objects, views and flows, and its manifest
/// (`metadata_type` `app`).
fn items(package: &AppPackage) -> Vec<registry::Item> {
    let mut items = Vec::new();
    for (kind, records) in [
        ("object", &package.objects),
        ("view", &package.views),
        ("flow", &package.flows),
    ] {
        for (i, record) in records.iter().enumerate() {
            let name = record
                .get("name")
                .and_then(Json::as_str)
                .map_or_else(|| format!("{kind}_{i}"), str::to_owned);
            items.push((
                kind.to_owned(),
                name,
                Json::Object(record.clone()).to_string(),
            ));
        }
    }
    items.push((
        "app".to_owned(),
        package.manifest.name.to_string(),
        serde_json::to_string(&package.manifest).unwrap_or_default(),
    ));
    items
}

/// The registered objects of every other owner.
async fn context(conn: &Connection, app: &str) -> Result<Vec<ObjectDefinition>, AppError> {
    let rows = registry::read(conn)
        .await
        .map_err(SchemaError::from)?
        .unwrap_or_default();
    Ok(rows
        .iter()
        .filter(|r| r.kind == "object" && r.owner() != owner(app))
        .filter_map(|r| registry::object_of(&r.body).ok())
        .collect())
}

/// Installs (or upgrades) `package` into the tenant: the check, then schema sync, seed data,
/// registration and the installed row in one transaction.
pub async fn install(
    conn: &Connection,
    package: &AppPackage,
    objects: &[ObjectDefinition],
    quotas: &TenantQuota,
    options: InstallOptions,
) -> Result<AppInstallResult, AppError> {
    let started = Instant::now();
    let app = package.manifest.name.as_str();
    let check = check(conn, package, objects, quotas).await?;
    if !check.compatible {
        return Err(AppError::Incompatible(check));
    }
    // The objects of other owners (an app this one depends on) resolve its references.
    let context = context(conn, app).await?;
    let planned = fleet_schema::plan_database_within(
        conn,
        objects,
        &context,
        PlanOptions {
            allow_destructive: options.upgrade && options.allow_destructive,
        },
        &owner(app),
    )
    .await?;
    let previous: Vec<Registered> = planned.registered.clone().unwrap_or_default();
    let had: BTreeSet<String> = previous
        .iter()
        .filter(|r| r.kind == "object" && r.owner() == owner(app))
        .map(|r| r.name.clone())
        .collect();
    let new_objects: BTreeSet<String> = objects
        .iter()
        .map(|o| o.name.to_string())
        .filter(|n| !had.contains(n))
        .collect();
    let seeds = if options.skip_seed_data {
        Vec::new()
    } else if options.upgrade {
        seeds(package, objects, Some(&new_objects))
    } else {
        seeds(package, objects, None)
    };
    let live: BTreeSet<String> = fleet_schema::introspect(conn)
        .await
        .map_err(SchemaError::from)?
        .tables
        .into_keys()
        .collect();
    let already = existing_seeds(conn, &seeds, &live).await?;
    let (mut after, _) = registry::replace(
        &previous,
        &owner(app),
        &items(package),
        &package.manifest.version,
        &source(app),
    );
    after.push(BoundStatement {
        sql: "INSERT INTO sys_installed_app (id, app, version, status, installed_at) \
              VALUES (?1, ?1, ?2, 'active', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
              ON CONFLICT (app) DO UPDATE SET version = excluded.version, status = 'active', \
              updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
            .to_owned(),
        params: vec![
            Value::Text(app.to_owned()),
            Value::Text(package.manifest.version.clone()),
        ],
    });
    after.extend(seeds.iter().map(|(_, _, s)| s.clone()));
    fleet_schema::apply_plan_with(conn, &planned.plan, &after)
        .await
        .map_err(SchemaError::from)?;
    let created_tables = planned
        .diff
        .changes
        .iter()
        .filter(|c| {
            c.entity_type == fleet_protocol::deploy::EntityType::Object
                && c.change_type == fleet_protocol::deploy::ChangeType::Added
        })
        .map(|c| c.entity_name.clone())
        .collect();
    Ok(AppInstallResult {
        success: true,
        app_id: app.to_owned(),
        version: package.manifest.version.clone(),
        installed_objects: objects.iter().map(|o| o.name.to_string()).collect(),
        created_tables,
        seeded_records: seeds.len() as u64 - already,
        duration_ms: Some(started.elapsed().as_millis() as u64),
        error: None,
    })
}

/// What an uninstall did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// The tables dropped (only with `drop_tables`).
    pub dropped_tables: Vec<String>,
    /// The registry entries removed.
    pub unregistered: usize,
}

/// Uninstalls `app`: refused while another installed app depends on it; unregisters it and
/// removes its installed row; drops its tables only when `drop_tables` (otherwise they stay,
/// unregistered — the engine no longer manages them). One transaction.
pub async fn uninstall(
    conn: &Connection,
    app: &str,
    drop_tables: bool,
) -> Result<Uninstalled, AppError> {
    let apps = installed(conn).await?;
    let dependents: Vec<String> = apps
        .iter()
        .filter(|a| a.app != app)
        .filter(|a| {
            a.manifest.as_ref().is_some_and(|m| {
                m.dependencies
                    .iter()
                    .any(|d| fleet_protocol::AppDependency::parse(d).is_ok_and(|d| d.app == app))
            })
        })
        .map(|a| a.app.clone())
        .collect();
    if !dependents.is_empty() {
        return Err(AppError::Dependents {
            app: app.to_owned(),
            dependents,
        });
    }
    // Dropping the tables is the engine's plan for the app owning nothing; keeping them, only
    // the registration goes (the tables stay, unmanaged).
    let (plan, dropped_tables) = if drop_tables {
        let planned = fleet_schema::plan_database_for(
            conn,
            &[],
            PlanOptions {
                allow_destructive: true,
            },
            &owner(app),
        )
        .await?;
        let dropped = planned
            .diff
            .changes
            .iter()
            .filter(|c| c.change_type == fleet_protocol::deploy::ChangeType::Removed)
            .map(|c| c.entity_name.clone())
            .collect();
        (planned.plan, dropped)
    } else {
        let empty = fleet_protocol::MigrationPlan {
            statements: Vec::new(),
            dialect: "sqlite".to_owned(),
            reversible: true,
            estimated_duration_ms: None,
        };
        (empty, Vec::new())
    };
    let previous = registry::read(conn)
        .await
        .map_err(SchemaError::from)?
        .unwrap_or_default();
    let (mut after, snapshot) = registry::replace(&previous, &owner(app), &[], "", &source(app));
    after.push(BoundStatement {
        sql: "DELETE FROM sys_installed_app WHERE app = ?1".to_owned(),
        params: vec![Value::Text(app.to_owned())],
    });
    fleet_schema::apply_plan_with(conn, &plan, &after)
        .await
        .map_err(SchemaError::from)?;
    Ok(Uninstalled {
        dropped_tables,
        unregistered: snapshot.len(),
    })
}
