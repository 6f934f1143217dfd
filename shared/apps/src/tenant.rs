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
    /// An upgrade that is not one (not installed, a downgrade) or that would break an app
    /// depending on this one.
    #[error("{0}")]
    Upgrade(String),
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

/// The tenant's metadata registry (empty when it has none).
async fn registered(conn: &Connection) -> Result<Vec<Registered>, AppError> {
    Ok(registry::read(conn)
        .await
        .map_err(SchemaError::from)?
        .unwrap_or_default())
}

/// The apps installed in the tenant.
pub async fn installed(conn: &Connection) -> Result<Vec<Installed>, AppError> {
    let rows = registered(conn).await?;
    installed_with(conn, &rows).await
}

/// [`installed`], with the registry already read.
async fn installed_with(
    conn: &Connection,
    registered: &[Registered],
) -> Result<Vec<Installed>, AppError> {
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
    let rows = registered(conn).await?;
    let live = fleet_schema::introspect(conn)
        .await
        .map_err(SchemaError::from)?;
    check_with(conn, package, objects, quotas, &rows, &live).await
}

/// [`check`], with the registry and the live schema already read.
async fn check_with(
    conn: &Connection,
    package: &AppPackage,
    objects: &[ObjectDefinition],
    quotas: &TenantQuota,
    rows: &[Registered],
    live: &fleet_schema::Schema,
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
    let ownership = Ownership::of(rows, &owner(app));
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
    let apps = installed_with(conn, rows).await?;
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
    let mut items = registry::items(&[
        ("object", &package.objects),
        ("view", &package.views),
        ("flow", &package.flows),
    ]);
    items.push((
        "app".to_owned(),
        package.manifest.name.to_string(),
        serde_json::to_string(&package.manifest).unwrap_or_default(),
    ));
    items
}

/// The registered objects of every other owner.
fn context(rows: &[Registered], app: &str) -> Vec<ObjectDefinition> {
    rows.iter()
        .filter(|r| r.kind == "object" && r.owner() != owner(app))
        .filter_map(|r| registry::object_of(&r.body).ok())
        .collect()
}

/// An install or upgrade worked out against the tenant, not yet applied: what a dry run
/// reports and what [`install`] applies.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    /// The schema engine's plan for the app's objects.
    pub planned: fleet_schema::Planned,
    /// Checked again inside the transaction: the dependencies still installed.
    guards: Vec<fleet_schema::Guard>,
    /// Registration, installed row and seed records, in the same transaction.
    after: Vec<BoundStatement>,
    /// Seed records to insert, and how many of them are there already.
    seeds: (u64, u64),
}

impl InstallPlan {
    /// Changes by kind (added, modified, removed), as the plan's diff counts them.
    pub fn changes(&self) -> [u64; 3] {
        let s = self.planned.diff.summary;
        [s.added, s.modified, s.removed]
    }

    /// The statements the migration runs.
    pub fn statements(&self) -> u64 {
        self.planned.plan.statements.len() as u64
    }

    /// Whether the migration drops anything.
    pub fn breaking(&self) -> bool {
        self.planned.diff.has_breaking_changes
    }
}

/// Refusals of an upgrade the compatibility check does not cover: the app must be installed,
/// at a version not newer than the package's, and every installed app that depends on it must
/// accept the new version.
fn upgrade_refusal(apps: &[Installed], package: &AppPackage) -> Option<AppError> {
    let app = package.manifest.name.as_str();
    let new = &package.manifest.version;
    let Some(current) = apps.iter().find(|a| a.app == app) else {
        return Some(AppError::Upgrade(format!(
            "{app} is not installed: install it instead"
        )));
    };
    if let (Ok(have), Ok(want)) = (
        semver::Version::parse(&current.version),
        semver::Version::parse(new),
    ) && want < have
    {
        return Some(AppError::Upgrade(format!(
            "{app} {have} is installed: {want} would be a downgrade"
        )));
    }
    let broken: Vec<String> = apps
        .iter()
        .filter(|a| a.app != app)
        .filter_map(|a| {
            let dependency = a
                .manifest
                .iter()
                .flat_map(|m| &m.dependencies)
                .filter_map(|d| fleet_protocol::AppDependency::parse(d).ok())
                .find(|d| d.app == app)?;
            (!dependency.accepts(new)).then(|| {
                format!(
                    "{} needs {app} {}",
                    a.app,
                    dependency
                        .versions
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                )
            })
        })
        .collect();
    (!broken.is_empty()).then(|| {
        AppError::Upgrade(format!(
            "{app} {new} would break what depends on it: {}",
            broken.join("; ")
        ))
    })
}

/// Works out the install (or upgrade) of `package` against the tenant: the compatibility check
/// (and an upgrade's own refusals), the schema engine's plan for the app as owner, the seed
/// records, the registration. Nothing is written.
pub async fn plan_install(
    conn: &Connection,
    package: &AppPackage,
    objects: &[ObjectDefinition],
    quotas: &TenantQuota,
    options: InstallOptions,
) -> Result<InstallPlan, AppError> {
    let app = package.manifest.name.as_str();
    // The registry and the live schema, read once for the check, the upgrade's refusals, the
    // references' context and the seeds (the engine's plan reads its own).
    let rows = registered(conn).await?;
    let live = fleet_schema::introspect(conn)
        .await
        .map_err(SchemaError::from)?;
    let check = check_with(conn, package, objects, quotas, &rows, &live).await?;
    if !check.compatible {
        return Err(AppError::Incompatible(check));
    }
    if options.upgrade
        && let Some(refusal) = upgrade_refusal(&installed_with(conn, &rows).await?, package)
    {
        return Err(refusal);
    }
    // The objects of other owners (an app this one depends on) resolve its references.
    let context = context(&rows, app);
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
    let live: BTreeSet<String> = live.tables.into_keys().collect();
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
    let guards = package
        .dependencies()
        .into_iter()
        .map(|d| fleet_schema::Guard {
            sql: "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM sys_installed_app WHERE app = ?1 AND status = 'active')"
                .to_owned(),
            params: vec![Value::Text(d.app.clone())],
            refusal: format!("needs app {} installed first (it was uninstalled meanwhile)", d.app),
        })
        .collect();
    Ok(InstallPlan {
        planned,
        guards,
        after,
        seeds: (seeds.len() as u64, already),
    })
}

/// Installs (or upgrades) `package` into the tenant: [`plan_install`], then schema sync, seed
/// data, registration and the installed row in one transaction (the dependencies checked again
/// inside it).
pub async fn install(
    conn: &Connection,
    package: &AppPackage,
    objects: &[ObjectDefinition],
    quotas: &TenantQuota,
    options: InstallOptions,
) -> Result<(AppInstallResult, InstallPlan), AppError> {
    let started = Instant::now();
    let app = package.manifest.name.as_str();
    let plan = plan_install(conn, package, objects, quotas, options).await?;
    fleet_schema::apply_plan_guarded(conn, &plan.planned.plan, &plan.guards, &plan.after)
        .await
        .map_err(SchemaError::from)?;
    let created_tables = plan
        .planned
        .diff
        .changes
        .iter()
        .filter(|c| {
            c.entity_type == fleet_protocol::deploy::EntityType::Object
                && c.change_type == fleet_protocol::deploy::ChangeType::Added
        })
        .map(|c| c.entity_name.clone())
        .collect();
    let result = AppInstallResult {
        success: true,
        app_id: app.to_owned(),
        version: package.manifest.version.clone(),
        installed_objects: objects.iter().map(|o| o.name.to_string()).collect(),
        created_tables,
        seeded_records: plan.seeds.0 - plan.seeds.1,
        duration_ms: Some(started.elapsed().as_millis() as u64),
        error: None,
    };
    Ok((result, plan))
}

/// What an uninstall did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// The tables dropped (only with `drop_tables`).
    pub dropped_tables: Vec<String>,
    /// The registry entries removed or changed.
    pub unregistered: usize,
}

/// Uninstalls `app`: refused while another installed app depends on it (checked again inside
/// the transaction); removes its installed row, manifest, views and flows; drops its tables
/// only when `drop_tables` — otherwise they stay with their rows, their objects still
/// registered to the app, so a later install picks them up. One transaction.
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
    // Kept tables stay registered to the app (its objects' entries, nothing else): a later
    // install picks them up with their rows, and no one else can claim them meanwhile.
    let kept: Vec<registry::Item> = if drop_tables {
        Vec::new()
    } else {
        previous
            .iter()
            .filter(|r| r.kind == "object" && r.owner() == owner(app))
            .map(|r| (r.kind.clone(), r.name.clone(), r.body.clone()))
            .collect()
    };
    let version = previous
        .iter()
        .find(|r| r.kind == "object" && r.owner() == owner(app))
        .and_then(|r| r.version.clone())
        .unwrap_or_default();
    let (mut after, snapshot) =
        registry::replace(&previous, &owner(app), &kept, &version, &source(app));
    after.push(BoundStatement {
        sql: "DELETE FROM sys_installed_app WHERE app = ?1".to_owned(),
        params: vec![Value::Text(app.to_owned())],
    });
    // Another app that depends on this one, installed meanwhile, refuses it.
    let guard = fleet_schema::Guard {
        sql: "SELECT 1 FROM sys_metadata m, json_each(m.body, '$.dependencies') d \
              WHERE m.metadata_type = 'app' AND m.metadata_name <> ?1 \
              AND (d.value = ?1 OR d.value LIKE ?1 || '@%')"
            .to_owned(),
        params: vec![Value::Text(app.to_owned())],
        refusal: format!("{app} is needed by an app installed meanwhile: uninstall that first"),
    };
    fleet_schema::apply_plan_guarded(conn, &plan, &[guard], &after)
        .await
        .map_err(SchemaError::from)?;
    Ok(Uninstalled {
        dropped_tables,
        unregistered: snapshot.len(),
    })
}
