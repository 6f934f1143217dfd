//! Part D: what a request runs with — the tenant runtime context — and the quotas, usage and
//! quota decisions that bound it (upstream `kernel/context.zod.ts`, `system/tenant.zod.ts`).

use std::num::NonZeroU64;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tenant::TenantPlan;
use crate::time::Timestamp;
use crate::validate::Spec;
use crate::wire::default_true;

/// UUID pattern of upstream's runtime (`z.string().uuid()`).
pub const UUID_PATTERN: &str = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$";

/// Resource limits of a tenant. Every limit is optional; absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuota {
    /// Maximum number of users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_users: Option<NonZeroU64>,
    /// Maximum storage in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_storage: Option<NonZeroU64>,
    /// API requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_rate_limit: Option<NonZeroU64>,
    /// Maximum number of custom objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_objects: Option<NonZeroU64>,
    /// Maximum records per object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records_per_object: Option<NonZeroU64>,
    /// Maximum deployments per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deployments_per_day: Option<NonZeroU64>,
    /// Maximum storage in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_storage_bytes: Option<NonZeroU64>,
}

impl Spec for TenantQuota {
    const SPEC_NAME: &'static str = "TenantQuota";
}

/// A tenant's current resource usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantUsage {
    /// Custom objects.
    #[serde(default)]
    pub current_object_count: u64,
    /// Records across all objects.
    #[serde(default)]
    pub current_record_count: u64,
    /// Storage in bytes.
    #[serde(default)]
    pub current_storage_bytes: u64,
    /// Deployments executed today.
    #[serde(default)]
    pub deployments_today: u64,
    /// Active users.
    #[serde(default)]
    pub current_users: u64,
    /// API requests in the current minute.
    #[serde(default)]
    pub api_requests_this_minute: u64,
    /// When the usage was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_at: Option<Timestamp>,
}

impl Spec for TenantUsage {
    const SPEC_NAME: &'static str = "TenantUsage";
}

/// Whether an operation fits the tenant's quotas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaEnforcementResult {
    /// Whether the operation is within quota.
    pub allowed: bool,
    /// The quota that would be exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exceeded_quota: Option<String>,
    /// Current usage value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_usage: Option<f64>,
    /// Quota limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Spec for QuotaEnforcementResult {
    const SPEC_NAME: &'static str = "QuotaEnforcementResult";
}

/// Kernel operating mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeMode {
    /// Hot reload, verbose logging.
    Development,
    /// Optimised, strict security.
    #[default]
    Production,
    /// Test mode.
    Test,
    /// Setup/migration mode.
    Provisioning,
    /// Demo mode (never in production).
    Preview,
}

/// Role of the simulated preview user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreviewRole {
    /// Administrator role (the default).
    #[default]
    Admin,
    /// Regular user.
    User,
    /// Read-only viewer.
    Viewer,
}

/// Preview (demo) mode configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviewModeConfig {
    /// Log in automatically as the simulated user.
    #[serde(default = "default_true")]
    pub auto_login: bool,
    /// Role of the simulated user.
    #[serde(default)]
    pub simulated_role: PreviewRole,
    /// Display name of the simulated user.
    #[serde(default = "default_preview_user")]
    pub simulated_user_name: String,
    /// Read-only session.
    #[serde(default)]
    pub read_only: bool,
    /// Session length in seconds (0 = no expiry).
    #[serde(default)]
    pub expires_in_seconds: u64,
    /// Banner shown in the UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banner_message: Option<String>,
}

fn default_preview_user() -> String {
    "Preview User".to_owned()
}

/// The kernel context extended with the resolved tenant: what every downstream service of a
/// request runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantRuntimeContext {
    /// UUID of the running kernel process.
    #[schemars(regex(pattern = UUID_PATTERN))]
    pub instance_id: String,
    /// Operating mode.
    #[serde(default)]
    pub mode: RuntimeMode,
    /// Kernel version.
    pub version: String,
    /// Host application name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// Working directory.
    pub cwd: String,
    /// Workspace root if different from cwd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_root: Option<String>,
    /// Boot timestamp (ms).
    pub start_time: i64,
    /// Global feature toggles.
    #[serde(default)]
    pub features: IndexMap<String, bool>,
    /// Preview mode configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_mode: Option<PreviewModeConfig>,
    /// The resolved tenant (upstream: any non-empty string).
    #[schemars(length(min = 1))]
    pub tenant_id: String,
    /// The tenant's plan.
    pub tenant_plan: TenantPlan,
    /// The tenant's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_region: Option<String>,
    /// The tenant's database URL.
    #[schemars(length(min = 1))]
    pub tenant_db_url: String,
    /// The tenant's quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_quotas: Option<TenantQuota>,
}

impl Spec for TenantRuntimeContext {
    const SPEC_NAME: &'static str = "TenantRuntimeContext";
}

/// `quota.tick`: audit every tenant for the time bucket starting at `bucket` (unix seconds); a
/// fleet type. Every auditor replica publishes it with the message id `quota-tick:<bucket>`, so
/// the duplicate window keeps one per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaTick {
    /// Start of the time bucket, unix seconds.
    pub bucket: u64,
}

impl Spec for QuotaTick {
    const SPEC_NAME: &'static str = "QuotaTick";
}

/// `quota.audit.<tenantId>`: audit one tenant (a fleet type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaAuditJob {
    /// The tenant.
    pub tenant_id: crate::ids::TenantId,
    /// The tick's bucket (unix seconds).
    pub bucket: u64,
}

impl Spec for QuotaAuditJob {
    const SPEC_NAME: &'static str = "QuotaAuditJob";
}
