//! Part E: marketplace apps — manifests, compatibility, install requests and results
//! (upstream `system/app-install.zod.ts`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::AppName;
use crate::validate::Spec;

/// An installable app package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppManifest {
    /// App identifier (snake_case).
    pub name: AppName,
    /// Display label.
    #[schemars(length(min = 1))]
    pub label: String,
    /// Version (semver).
    #[schemars(length(min = 1))]
    pub version: String,
    /// What the app does, in prose for people (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Minimum kernel version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel_version: Option<String>,
    /// Object names provided.
    #[serde(default)]
    pub objects: Vec<String>,
    /// View names provided.
    #[serde(default)]
    pub views: Vec<String>,
    /// Flow names provided.
    #[serde(default)]
    pub flows: Vec<String>,
    /// Whether the app ships seed data.
    #[serde(default)]
    pub has_seed_data: bool,
    /// Seed records.
    #[serde(default)]
    pub seed_data: Vec<Map<String, Value>>,
    /// Apps that must be installed first.
    #[serde(default)]
    pub dependencies: Vec<String>,
}

impl Spec for AppManifest {
    const SPEC_NAME: &'static str = "AppManifest";
}

/// Severity of a compatibility issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompatibilitySeverity {
    /// Blocks the install.
    Error,
    /// Worth attention.
    Warning,
}

/// Category of a compatibility issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompatibilityCategory {
    /// Kernel version mismatch.
    KernelVersion,
    /// An object of that name already exists.
    ObjectConflict,
    /// A required app is not installed.
    DependencyMissing,
    /// A quota would be exceeded.
    QuotaExceeded,
}

/// One compatibility problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompatibilityIssue {
    /// `error` blocks the install (the check is then not `compatible`); `warning` only warns.
    pub severity: CompatibilitySeverity,
    /// The problem, in a sentence for people.
    pub message: String,
    /// What kind of check found it.
    pub category: CompatibilityCategory,
}

/// Whether an app can be installed into a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppCompatibilityCheck {
    /// Whether the app is compatible.
    pub compatible: bool,
    /// Problems found.
    #[serde(default)]
    pub issues: Vec<CompatibilityIssue>,
}

impl Spec for AppCompatibilityCheck {
    const SPEC_NAME: &'static str = "AppCompatibilityCheck";
}

/// A request to install an app into a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppInstallRequest {
    /// Target tenant (upstream: any non-empty string).
    #[schemars(length(min = 1))]
    pub tenant_id: String,
    /// App to install.
    #[schemars(length(min = 1))]
    pub app_id: String,
    /// Configuration overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_overrides: Option<Map<String, Value>>,
    /// Skip seed data.
    #[serde(default)]
    pub skip_seed_data: bool,
}

impl Spec for AppInstallRequest {
    const SPEC_NAME: &'static str = "AppInstallRequest";
}

/// The outcome of an install or upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppInstallResult {
    /// Whether it succeeded.
    pub success: bool,
    /// The app.
    pub app_id: String,
    /// The installed version.
    pub version: String,
    /// Objects created or updated.
    #[serde(default)]
    pub installed_objects: Vec<String>,
    /// Tables created.
    #[serde(default)]
    pub created_tables: Vec<String>,
    /// Seed records inserted.
    #[serde(default)]
    pub seeded_records: u64,
    /// Duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Error message on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Spec for AppInstallResult {
    const SPEC_NAME: &'static str = "AppInstallResult";
}

/// An app as the marketplace ships it (a fleet type): its manifest and the object, view and
/// flow definitions the manifest names. One JSON document, or a directory holding
/// `manifest.json` and `objects/`, `views/`, `flows/` (see `fleetctl app`).
///
/// Dependencies are the manifest's `dependencies` strings: `<app>` or `<app>@<semver range>`
/// (`contacts@^1.0`). Seed records name their object: `{"object": "contact", "id": "c1",
/// "name": "Ada"}` — `id` optional (a stable one is derived from the app and the record's
/// position), every other key a field of that object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPackage {
    /// The manifest.
    pub manifest: AppManifest,
    /// Object definitions (ObjectStack objects), one per name in `manifest.objects`.
    #[serde(default)]
    pub objects: Vec<Map<String, Value>>,
    /// View definitions.
    #[serde(default)]
    pub views: Vec<Map<String, Value>>,
    /// Flow definitions.
    #[serde(default)]
    pub flows: Vec<Map<String, Value>>,
}

/// One dependency of an app: the app, and the versions of it that will do.
#[derive(Debug, Clone, PartialEq)]
pub struct AppDependency {
    /// The app depended on.
    pub app: String,
    /// Acceptable versions (`None`: any).
    pub versions: Option<semver::VersionReq>,
}

impl AppDependency {
    /// Parses `<app>` or `<app>@<semver range>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (app, range) = match text.split_once('@') {
            Some((app, range)) => (app, Some(range)),
            None => (text, None),
        };
        crate::ids::AppName::parse(app).map_err(|e| format!("{text:?}: {e}"))?;
        let versions = range
            .map(|r| {
                semver::VersionReq::parse(r)
                    .map_err(|e| format!("{text:?}: {r:?} is not a semver range ({e})"))
            })
            .transpose()?;
        Ok(Self {
            app: app.to_owned(),
            versions,
        })
    }

    /// Whether `version` satisfies this dependency (an unparsable version never does).
    pub fn accepts(&self, version: &str) -> bool {
        match &self.versions {
            None => true,
            Some(range) => semver::Version::parse(version).is_ok_and(|v| range.matches(&v)),
        }
    }
}

impl AppPackage {
    /// The object definitions, typed (every issue, with paths under `objects.`).
    pub fn object_definitions(&self) -> Result<Vec<crate::ObjectDefinition>, crate::Rejected> {
        let mut checks = crate::validate::Checks::default();
        let objects = crate::deploy::typed_objects(&self.objects, &mut checks);
        let issues = checks.into_issues();
        if issues
            .iter()
            .any(|i| i.severity == crate::deploy::IssueSeverity::Error)
        {
            Err(crate::Rejected {
                type_name: "AppPackage",
                issues,
            })
        } else {
            Ok(objects)
        }
    }

    /// The manifest's dependencies (valid packages only have parsable ones).
    pub fn dependencies(&self) -> Vec<AppDependency> {
        self.manifest
            .dependencies
            .iter()
            .filter_map(|d| AppDependency::parse(d).ok())
            .collect()
    }
}

impl Spec for AppPackage {
    const SPEC_NAME: &'static str = "AppPackage";

    fn check_input(input: &Value, checks: &mut crate::validate::Checks) {
        let records: Vec<Map<String, Value>> = input
            .get("objects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_object().cloned())
            .collect();
        let typed = crate::deploy::typed_objects(&records, checks);
        let manifest = input.get("manifest");
        let app = manifest
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(version) = manifest
            .and_then(|m| m.get("version"))
            .and_then(Value::as_str)
            && let Err(e) = semver::Version::parse(version)
        {
            checks.at_path(&["manifest", "version"], |c| {
                c.error(
                    "invalid_version",
                    format!("{version:?} is not a semver version ({e})"),
                )
            });
        }
        // Listed in the manifest ⇔ defined in the package, for objects, views and flows.
        for kind in ["objects", "views", "flows"] {
            let defined: Vec<&str> = input
                .get(kind)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|o| o.get("name")?.as_str())
                .collect();
            let listed: Vec<&str> = manifest
                .and_then(|m| m.get(kind))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for name in &listed {
                if !defined.contains(name) {
                    checks.at_path(&["manifest", kind], |c| {
                        c.error(
                            "missing_definition",
                            format!("{name:?} is listed but the package has no definition of it"),
                        )
                    });
                }
            }
            for name in &defined {
                if !listed.contains(name) {
                    checks.at_path(&[kind, name], |c| {
                        c.error(
                            "unlisted",
                            format!("{name:?} is defined but not listed in manifest.{kind}"),
                        )
                    });
                }
            }
        }
        // An app's tables are its own: named `<app>_…`, so no app can take the platform's, the
        // system's or another app's table names.
        for object in &typed {
            let table = object.table();
            if !app.is_empty() && !table.starts_with(&format!("{app}_")) {
                checks.at_path(&["objects", object.name.as_str()], |c| {
                    c.error(
                        "foreign_table",
                        format!(
                            "its table {table:?} is not the app's: an app's tables are named \"{app}_…\" (give the object \"namespace\": \"{app}\", or a \"tableName\" that starts \"{app}_\")"
                        ),
                    )
                });
            }
        }
        for (i, dependency) in manifest
            .and_then(|m| m.get("dependencies"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(text) = dependency.as_str() else {
                continue;
            };
            match AppDependency::parse(text) {
                Ok(d) if d.app == app => checks
                    .at_path(&["manifest", "dependencies", &i.to_string()], |c| {
                        c.error("dependency_cycle", format!("{app:?} depends on itself"))
                    }),
                Ok(_) => {}
                Err(why) => checks.at_path(&["manifest", "dependencies", &i.to_string()], |c| {
                    c.error("invalid_dependency", why)
                }),
            }
        }
        let mut seen_ids = std::collections::BTreeSet::new();
        for (i, record) in manifest
            .and_then(|m| m.get("seedData"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let object = record.get("object").and_then(Value::as_str);
            let path = ["manifest", "seedData", &i.to_string()];
            let Some(definition) = object.and_then(|o| typed.iter().find(|t| t.name.as_str() == o))
            else {
                checks.at_path(&path, |c| {
                    c.error(
                        "unknown_object",
                        format!("a seed record must name one of the app's objects in \"object\" (got {object:?})"),
                    )
                });
                continue;
            };
            if let Some(id) = record.get("id").and_then(Value::as_str)
                && !seen_ids.insert((definition.name.to_string(), id.to_owned()))
            {
                checks.at_path(&[path[0], path[1], path[2], "id"], |c| {
                    c.error(
                        "duplicate_id",
                        format!("another seed record of {} has id {id:?}", definition.name),
                    )
                });
            }
            for (key, field) in &definition.fields {
                let missing = record.get(key.as_str()).is_none_or(Value::is_null);
                if field.required
                    && field.default_value.is_none()
                    && missing
                    && !field.field_type.is_computed()
                {
                    checks.at_path(&[path[0], path[1], path[2], key.as_str()], |c| {
                        c.error(
                            "missing_required",
                            format!(
                                "{} requires {key} and it has no defaultValue",
                                definition.name
                            ),
                        )
                    });
                }
            }
            for key in record.as_object().into_iter().flatten().map(|(k, _)| k) {
                let known = ["object", "id"].contains(&key.as_str())
                    || definition.fields.keys().any(|f| f.as_str() == key);
                if !known {
                    checks.at_path(&[path[0], path[1], path[2], key], |c| {
                        c.error(
                            "unknown_field",
                            format!("{key:?} is not a field of {}", definition.name),
                        )
                    });
                }
            }
        }
    }
}

/// `app.install_requested` and `app.upgrade_requested`: the upstream request and the package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppCommand {
    /// The request (tenant, app, overrides, `skipSeedData`).
    #[serde(flatten)]
    pub request: AppInstallRequest,
    /// The app.
    pub package: AppPackage,
    /// Upgrades only: accept dropping objects and fields the new version removed.
    #[serde(default)]
    pub allow_destructive: bool,
}

impl Spec for AppCommand {
    const SPEC_NAME: &'static str = "AppCommand";

    fn check(&self, checks: &mut crate::validate::Checks) {
        if self.request.app_id != self.package.manifest.name.as_str() {
            checks.at("appId", |c| {
                c.error(
                    "app_mismatch",
                    format!(
                        "the request names {:?} but the package is {:?}",
                        self.request.app_id,
                        self.package.manifest.name.as_str()
                    ),
                )
            });
        }
    }

    fn check_input(input: &Value, checks: &mut crate::validate::Checks) {
        if let Some(package) = input.get("package") {
            checks.at("package", |c| AppPackage::check_input(package, c));
        }
    }
}

/// `app.uninstall_requested`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppUninstallRequest {
    /// The tenant.
    #[schemars(length(min = 1))]
    pub tenant_id: String,
    /// The app.
    #[schemars(length(min = 1))]
    pub app_id: String,
    /// Drop the app's tables too (default: keep them, unregistered).
    #[serde(default)]
    pub drop_tables: bool,
}

impl Spec for AppUninstallRequest {
    const SPEC_NAME: &'static str = "AppUninstallRequest";
}
