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
    /// Description.
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
    /// Severity.
    pub severity: CompatibilitySeverity,
    /// Description.
    pub message: String,
    /// Category.
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
