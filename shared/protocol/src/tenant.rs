//! Part B: tenants and their provisioning — requests, results, steps, status, plans, regions,
//! connection configs (upstream `system/provisioning.zod.ts`, `system/tenant.zod.ts`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::TenantId;
use crate::quota::TenantQuota;
use crate::time::Timestamp;
use crate::validate::{Checks, Spec};

/// Email pattern of upstream's runtime (`z.string().email()`).
pub const EMAIL_PATTERN: &str = r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$";

/// Tenant provisioning lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantProvisioningStatus {
    /// Database creation in progress.
    Provisioning,
    /// Fully provisioned and operational.
    Active,
    /// Temporarily disabled (billing, policy).
    Suspended,
    /// Provisioning failed (retryable).
    Failed,
    /// Deletion in progress.
    Destroying,
}

impl Spec for TenantProvisioningStatus {
    const SPEC_NAME: &'static str = "TenantProvisioningStatusEnum";
}

/// Subscription plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantPlan {
    /// Free tier.
    #[default]
    Free,
    /// Professional tier.
    Pro,
    /// Enterprise tier.
    Enterprise,
}

impl Spec for TenantPlan {
    const SPEC_NAME: &'static str = "TenantPlan";
}

/// Deployment region: where a tenant's data must live.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TenantRegion {
    /// US East (Virginia).
    #[default]
    UsEast,
    /// US West (Oregon).
    UsWest,
    /// EU West (Ireland).
    EuWest,
    /// EU Central (Frankfurt).
    EuCentral,
    /// Asia Pacific (Singapore).
    ApSoutheast,
    /// Asia Pacific (Tokyo).
    ApNortheast,
}

impl fmt::Display for TenantRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.pad(&text)
    }
}

impl Spec for TenantRegion {
    const SPEC_NAME: &'static str = "TenantRegion";
}

/// Status of one provisioning step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Started (`startedAt` set), not yet finished.
    Running,
    /// Finished successfully.
    Completed,
    /// Its last attempt failed (`error` says why); tried again on a transient failure or a
    /// retried request.
    Failed,
    /// Not needed (e.g. seed data disabled).
    Skipped,
}

/// One step of the provisioning pipeline, with its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningStep {
    /// Step name (`create_database`, `sync_schema`, …).
    #[schemars(length(min = 1))]
    pub name: String,
    /// Step status.
    pub status: StepStatus,
    /// When the step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the step finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// Duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Error message when the step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Spec for ProvisioningStep {
    const SPEC_NAME: &'static str = "ProvisioningStep";
}

/// Input for creating a tenant with its isolated database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantProvisioningRequest {
    /// Organisation that owns the tenant.
    #[schemars(length(min = 1))]
    pub org_id: String,
    /// Requested plan.
    #[serde(default)]
    pub plan: TenantPlan,
    /// Preferred region.
    #[serde(default)]
    pub region: TenantRegion,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Initial admin e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = EMAIL_PATTERN))]
    pub admin_email: Option<String>,
    /// Additional metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// Code of the issue raised when a field is longer than the fleet accepts (upstream sets no
/// bound; every value ends up in the tenant's control-plane record and its hooks).
pub const TOO_LONG_CODE: &str = "too_long";

/// Longest `orgId`, in characters.
pub const ORG_ID_MAX_CHARS: usize = 128;
/// Longest `displayName`, in characters.
pub const DISPLAY_NAME_MAX_CHARS: usize = 256;
/// Longest `adminEmail`, in characters (RFC 5321's path limit).
pub const ADMIN_EMAIL_MAX_CHARS: usize = 254;
/// Largest `metadata`, in bytes of JSON.
pub const METADATA_MAX_BYTES: usize = 16 * 1024;
/// Longest `reason` of a lifecycle command, in characters.
pub const REASON_MAX_CHARS: usize = 1024;

/// Refuses `value` at `field` when it has more than `max` characters.
fn check_length(checks: &mut Checks, field: &str, value: Option<&str>, max: usize) {
    let Some(value) = value else { return };
    let chars = value.chars().count();
    if chars > max {
        checks.at(field, |c| {
            c.error(
                TOO_LONG_CODE,
                format!("{chars} characters; at most {max} are accepted"),
            )
        });
    }
}

impl TenantProvisioningRequest {
    /// The fleet's bounds on the request's free-text fields.
    fn check_lengths(&self, checks: &mut Checks) {
        check_length(checks, "orgId", Some(&self.org_id), ORG_ID_MAX_CHARS);
        check_length(
            checks,
            "displayName",
            self.display_name.as_deref(),
            DISPLAY_NAME_MAX_CHARS,
        );
        check_length(
            checks,
            "adminEmail",
            self.admin_email.as_deref(),
            ADMIN_EMAIL_MAX_CHARS,
        );
        if let Some(metadata) = &self.metadata {
            let bytes = serde_json::to_vec(metadata).map_or(0, |v| v.len());
            if bytes > METADATA_MAX_BYTES {
                checks.at("metadata", |c| {
                    c.error(
                        TOO_LONG_CODE,
                        format!("{bytes} bytes of JSON; at most {METADATA_MAX_BYTES} are accepted"),
                    )
                });
            }
        }
    }
}

impl Spec for TenantProvisioningRequest {
    const SPEC_NAME: &'static str = "TenantProvisioningRequest";

    fn check(&self, checks: &mut Checks) {
        self.check_lengths(checks);
    }
}

/// The `tenant.created` command the registration service publishes: the provisioning request's
/// fields, flat, plus the tenant id (a fleet type; upstream has no schema for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantCreated {
    /// The new tenant's id (also the message's `Nats-Msg-Id`).
    pub tenant_id: TenantId,
    /// The provisioning request.
    #[serde(flatten)]
    pub request: TenantProvisioningRequest,
}

impl Spec for TenantCreated {
    const SPEC_NAME: &'static str = "TenantCreated";

    fn check(&self, checks: &mut Checks) {
        self.request.check_lengths(checks);
    }
}

/// The `tenant.suspended`, `tenant.resumed`, `tenant.deleted` and `tenant.plan_changed`
/// commands: the tenant, and the reason or the new plan (a fleet type; upstream has no schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantLifecycleCommand {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Why (billing, policy, request), for the record and the hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The new plan (`tenant.plan_changed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<TenantPlan>,
    /// `tenant.quota_changed` only: quotas overriding the plan's for this tenant (each one set
    /// replaces the plan's value; the others keep theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<crate::quota::TenantQuota>,
}

impl Spec for TenantLifecycleCommand {
    const SPEC_NAME: &'static str = "TenantLifecycleCommand";

    fn check(&self, checks: &mut Checks) {
        check_length(checks, "reason", self.reason.as_deref(), REASON_MAX_CHARS);
    }
}

/// Output of provisioning (on success or failure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantProvisioningResult {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Database connection URL (`libsql://`, `https://` or `file:`).
    #[schemars(length(min = 1))]
    pub connection_url: String,
    /// Provisioning status.
    pub status: TenantProvisioningStatus,
    /// The tenant's region: where its database lives (or is to).
    pub region: TenantRegion,
    /// The tenant's subscription plan.
    pub plan: TenantPlan,
    /// Pipeline steps.
    #[serde(default)]
    pub steps: Vec<ProvisioningStep>,
    /// Total duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_duration_ms: Option<u64>,
    /// When provisioning completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_at: Option<Timestamp>,
    /// Error message when provisioning failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Spec for TenantProvisioningResult {
    const SPEC_NAME: &'static str = "TenantProvisioningResult";
}

/// Which database backend serves a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseProvider {
    /// Turso/libSQL (also the fleet's local libSQL files).
    Turso,
    /// PostgreSQL (wire value `postgres`); the fleet has no backend for it.
    Postgres,
    /// In-memory (tests and development).
    Memory,
}

impl Spec for DatabaseProvider {
    const SPEC_NAME: &'static str = "DatabaseProvider";
}

/// A tenant's database connection details. The `authToken` is a secret: it is encrypted at rest
/// by the fleet and redacted from `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantConnectionConfig {
    /// Connection URL.
    #[schemars(length(min = 1))]
    pub url: String,
    /// Auth token (JWT for Turso); never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Turso group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl fmt::Debug for TenantConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantConnectionConfig")
            .field("url", &self.url)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("group", &self.group)
            .finish()
    }
}

impl Spec for TenantConnectionConfig {
    const SPEC_NAME: &'static str = "TenantConnectionConfig";
}

/// How tenant data is separated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantIsolationLevel {
    /// Shared database and schema, row-level isolation.
    SharedSchema,
    /// Shared database, a schema per tenant.
    IsolatedSchema,
    /// A database per tenant (the fleet's model).
    IsolatedDb,
}

/// A tenant (upstream `Tenant`, deprecated upstream in favour of HubSpace but still the shape
/// the fleet's control plane speaks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// Tenant id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Isolation level.
    pub isolation_level: TenantIsolationLevel,
    /// Database provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_provider: Option<DatabaseProvider>,
    /// Connection configuration (encrypted at rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_config: Option<TenantConnectionConfig>,
    /// Provisioning status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<TenantProvisioningStatus>,
    /// Subscription plan (`free`, `pro` or `enterprise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<TenantPlan>,
    /// Custom configuration values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customizations: Option<Map<String, Value>>,
    /// Resource quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<TenantQuota>,
}

impl Spec for Tenant {
    const SPEC_NAME: &'static str = "Tenant";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_value;
    use serde_json::json;

    #[test]
    fn request_defaults_are_free_and_us_east() {
        let r = parse_value::<TenantProvisioningRequest>(&json!({"orgId": "org_42"}))
            .unwrap()
            .value;
        assert_eq!((r.plan, r.region), (TenantPlan::Free, TenantRegion::UsEast));
        assert_eq!(r.region.to_string(), "us-east");
    }

    #[test]
    fn tenant_created_is_the_request_plus_a_tenant_id() {
        let doc =
            json!({"tenantId": "acme", "orgId": "org_42", "plan": "pro", "region": "eu-west"});
        let checked = parse_value::<TenantCreated>(&doc).unwrap();
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
        assert_eq!(checked.value.tenant_id.as_str(), "acme");
        assert_eq!(checked.value.request.region, TenantRegion::EuWest);
        let bad = parse_value::<TenantCreated>(&json!({"tenantId": "Acme Inc", "orgId": "o"}))
            .unwrap_err();
        assert_eq!(
            bad.errors().next().unwrap().code.as_deref(),
            Some("invalid_tenant_id")
        );
    }

    #[test]
    fn auth_token_never_shows_in_debug() {
        let c = TenantConnectionConfig {
            url: "file:x".into(),
            auth_token: Some("s3cr3t".into()),
            group: None,
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn null_for_an_optional_field_is_rejected_like_upstream() {
        let err =
            parse_value::<TenantProvisioningRequest>(&json!({"orgId": "o", "displayName": null}))
                .unwrap_err();
        assert_eq!(err.errors().next().unwrap().path, "displayName");
    }

    #[test]
    fn oversized_free_text_is_refused_with_its_path_and_a_fleet_code() {
        let doc = json!({"tenantId": "acme", "orgId": "o",
                         "displayName": "x".repeat(1_000_000),
                         "adminEmail": format!("{}@example.com", "a".repeat(300))});
        let err = parse_value::<TenantCreated>(&doc).unwrap_err();
        let found: Vec<_> = err
            .errors()
            .map(|i| (i.path.as_str(), i.code.as_deref()))
            .collect();
        assert!(
            found.contains(&("displayName", Some(TOO_LONG_CODE))),
            "{found:?}"
        );
        assert!(
            found.contains(&("adminEmail", Some(TOO_LONG_CODE))),
            "{found:?}"
        );
        assert!(err.to_string().contains("1000000 characters"), "{err}");
        // At the bound exactly, accepted (characters, not bytes: 256 two-byte letters pass).
        let at_bound = json!({"tenantId": "acme", "orgId": "o", "displayName": "é".repeat(256)});
        parse_value::<TenantCreated>(&at_bound).unwrap();
        let reason = json!({"tenantId": "acme", "reason": "r".repeat(REASON_MAX_CHARS + 1)});
        let err = parse_value::<TenantLifecycleCommand>(&reason).unwrap_err();
        assert_eq!(err.errors().next().unwrap().path, "reason");
    }
}
