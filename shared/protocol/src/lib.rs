//! The ObjectStack protocol as the fleet speaks it: serde types conformant to
//! `@objectstack/spec@4.0.1`, validation that reports every problem with its path, JSON Schema
//! generation, and the service contracts as async traits. No I/O, no dependency on other crates
//! of ours.
//!
//! ## Wire rules (upstream's)
//! - Properties are camelCase, enum values snake_case (regions and token scopes kebab-case, as
//!   upstream spells them); timestamps are RFC 3339 in the `Z` form ([`Timestamp`]).
//! - Upstream defaults are filled in on deserialize, and serialization always writes them, so our
//!   output satisfies upstream's JSON Schemas (which list defaulted fields as required).
//! - Optional properties are omitted, never `null`: upstream rejects `null` for them.
//! - Unknown keys are accepted and dropped, as upstream's runtime strips them; [`validate`]
//!   reports each one as a warning.
//!
//! ## Parts (DESIGN.md §3)
//! - A — [`turso`]: router configuration, groups, lifecycle hooks, Turso types, SQL dialects,
//!   SQLite type mapping and ALTER TABLE limitations.
//! - B — [`tenant`]: provisioning requests/results/steps, status, plans, regions, tenants.
//! - C — [`deploy`]: bundles, manifests, diffs, migration plans, validation results, status.
//! - D — [`quota`]: tenant runtime context, quotas, usage, quota decisions.
//! - E — [`app`]: app manifests, compatibility, install requests and results.
//! - Object metadata — [`object`]: objects, fields, field types, indexes.
//!
//! [`registry::SPECS`] maps each type to its upstream schema; [`contracts`] holds the traits.

#![deny(missing_docs)]

pub mod app;
pub mod contracts;
pub mod deploy;
pub mod ids;
pub mod object;
pub mod quota;
pub mod registry;
pub mod tenant;
pub mod time;
pub mod turso;
pub mod validate;
mod wire;

pub use app::{
    AppCommand, AppCompatibilityCheck, AppDependency, AppInstallRequest, AppInstallResult,
    AppManifest, AppPackage, AppUninstallRequest,
};
pub use deploy::{
    DeployBundle, DeployDiff, DeployManifest, DeployStatus, DeployValidationIssue,
    DeployValidationResult, IssueSeverity, MigrationPlan, MigrationStatement, SchemaChange,
};
pub use deploy::{
    DeployControl, DeployControlAction, DeployRequest, DeployRollbackRequest, DeployTarget,
    RolloutOptions, TenantDeployJob, TenantDeployJobV1,
};
pub use ids::DeploymentId;
pub use ids::{AppName, DatabaseName, FieldName, InvalidIdentifier, ObjectName, TenantId};
pub use object::{Field, FieldType, Index, ObjectDefinition};
pub use quota::{QuotaEnforcementResult, TenantQuota, TenantRuntimeContext, TenantUsage};
pub use tenant::{
    DatabaseProvider, ProvisioningStep, Tenant, TenantConnectionConfig, TenantPlan,
    TenantProvisioningRequest, TenantProvisioningResult, TenantProvisioningStatus, TenantRegion,
};
pub use tenant::{TenantCreated, TenantLifecycleCommand};
pub use time::Timestamp;
pub use turso::{
    TenantDatabaseLifecycle, TenantResolverStrategy, TursoGroup, TursoMultiTenantConfig,
};
pub use validate::{Checked, Rejected, Spec, parse_str, parse_value};
