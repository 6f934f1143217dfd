//! The one table that maps each protocol type to its upstream schema: the JSON Schema file in
//! `@objectstack/spec@4.0.1/json-schema/` and the Zod export in its `dist/` runtime. `fleetctl
//! validate` and `fleetctl schema` look types up here, and the conformance suite walks it (a
//! mapped file that is missing upstream fails the suite, so nothing is skipped silently).

use serde_json::Value;

use crate::app::{
    AppCommand, AppCompatibilityCheck, AppInstallRequest, AppInstallResult, AppManifest,
    AppPackage, AppUninstallRequest,
};
use crate::contracts::IntrospectedSchema;
use crate::deploy::{
    DeployBundle, DeployDiff, DeployManifest, DeployStatus, DeployValidationIssue,
    DeployValidationResult, MigrationPlan, MigrationStatement, SchemaChange,
};
use crate::object::{Field, FieldType, Index, ObjectDefinition, SelectOption};
use crate::quota::{QuotaEnforcementResult, TenantQuota, TenantRuntimeContext, TenantUsage};
use crate::tenant::{
    DatabaseProvider, ProvisioningStep, Tenant, TenantConnectionConfig, TenantCreated,
    TenantLifecycleCommand, TenantPlan, TenantProvisioningRequest, TenantProvisioningResult,
    TenantProvisioningStatus, TenantRegion,
};
use crate::turso::{
    DataTypeMapping, SqlDialect, TenantDatabaseLifecycle, TenantResolverStrategy, TursoGroup,
    TursoMultiTenantConfig,
};
use crate::validate::{DeployValidationIssueList, Rejected, Spec, export_schema, parse_value};

/// A validated document: its normalized JSON (upstream defaults applied, unknown keys dropped)
/// and the warnings found.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The normalized document.
    pub json: Value,
    /// Warnings (never errors).
    pub warnings: DeployValidationIssueList,
}

/// One protocol type and where upstream defines it.
#[derive(Debug, Clone, Copy)]
pub struct SpecEntry {
    /// The upstream schema name (what `fleetctl validate` takes).
    pub name: &'static str,
    /// DESIGN.md §3's part: `A`–`E`, or `M` for object metadata.
    pub part: char,
    /// Path of the JSON Schema under `json-schema/`, when upstream publishes one.
    pub upstream_file: Option<&'static str>,
    /// `(module, export)` of the Zod schema in `dist/`, when upstream has one.
    pub zod_export: Option<(&'static str, &'static str)>,
    validate: fn(&Value) -> Result<Normalized, Rejected>,
    schema: fn() -> Value,
}

impl SpecEntry {
    /// Validates a document as this type; on success the normalized JSON.
    pub fn validate(&self, document: &Value) -> Result<Normalized, Rejected> {
        (self.validate)(document)
    }

    /// This type's JSON Schema (draft 2020-12).
    pub fn json_schema(&self) -> Value {
        (self.schema)()
    }
}

fn validate_as<T: Spec>(document: &Value) -> Result<Normalized, Rejected> {
    let checked = parse_value::<T>(document)?;
    let json = serde_json::to_value(&checked.value).map_err(|err| Rejected {
        type_name: T::SPEC_NAME,
        issues: vec![crate::deploy::DeployValidationIssue {
            severity: crate::deploy::IssueSeverity::Error,
            path: String::new(),
            message: format!("cannot serialize: {err}"),
            code: Some("custom".to_owned()),
        }],
    })?;
    Ok(Normalized {
        json,
        warnings: checked.warnings,
    })
}

macro_rules! entry {
    ($ty:ty, $part:literal, $file:expr, $zod:expr) => {
        SpecEntry {
            name: <$ty as Spec>::SPEC_NAME,
            part: $part,
            upstream_file: $file,
            zod_export: $zod,
            validate: validate_as::<$ty>,
            schema: export_schema::<$ty>,
        }
    };
}

/// Every protocol type, by part.
pub static SPECS: &[SpecEntry] = &[
    // A — DB-per-tenant router, Turso, SQL.
    entry!(
        TursoMultiTenantConfig,
        'A',
        Some("data/TursoMultiTenantConfig.json"),
        Some(("data", "TursoMultiTenantConfigSchema"))
    ),
    entry!(
        TursoGroup,
        'A',
        Some("data/TursoGroup.json"),
        Some(("data", "TursoGroupSchema"))
    ),
    entry!(
        TenantDatabaseLifecycle,
        'A',
        Some("data/TenantDatabaseLifecycle.json"),
        Some(("data", "TenantDatabaseLifecycleSchema"))
    ),
    entry!(
        TenantResolverStrategy,
        'A',
        Some("data/TenantResolverStrategy.json"),
        Some(("data", "TenantResolverStrategySchema"))
    ),
    entry!(
        SqlDialect,
        'A',
        Some("data/SQLDialect.json"),
        Some(("data", "SQLDialectSchema"))
    ),
    entry!(
        DataTypeMapping,
        'A',
        Some("data/DataTypeMapping.json"),
        Some(("data", "DataTypeMappingSchema"))
    ),
    // B — tenants and provisioning.
    entry!(
        TenantProvisioningRequest,
        'B',
        Some("system/TenantProvisioningRequest.json"),
        Some(("system", "TenantProvisioningRequestSchema"))
    ),
    entry!(
        TenantProvisioningResult,
        'B',
        Some("system/TenantProvisioningResult.json"),
        Some(("system", "TenantProvisioningResultSchema"))
    ),
    entry!(
        ProvisioningStep,
        'B',
        Some("system/ProvisioningStep.json"),
        Some(("system", "ProvisioningStepSchema"))
    ),
    entry!(
        TenantProvisioningStatus,
        'B',
        Some("system/TenantProvisioningStatusEnum.json"),
        Some(("system", "TenantProvisioningStatusEnum"))
    ),
    entry!(
        TenantPlan,
        'B',
        Some("system/TenantPlan.json"),
        Some(("system", "TenantPlanSchema"))
    ),
    entry!(
        TenantRegion,
        'B',
        Some("system/TenantRegion.json"),
        Some(("system", "TenantRegionSchema"))
    ),
    entry!(
        Tenant,
        'B',
        Some("system/Tenant.json"),
        Some(("system", "TenantSchema"))
    ),
    entry!(
        TenantConnectionConfig,
        'B',
        Some("system/TenantConnectionConfig.json"),
        Some(("system", "TenantConnectionConfigSchema"))
    ),
    entry!(
        DatabaseProvider,
        'B',
        Some("system/DatabaseProvider.json"),
        Some(("system", "DatabaseProviderSchema"))
    ),
    // C — deploys.
    entry!(
        DeployBundle,
        'C',
        Some("system/DeployBundle.json"),
        Some(("system", "DeployBundleSchema"))
    ),
    entry!(
        DeployManifest,
        'C',
        Some("system/DeployManifest.json"),
        Some(("system", "DeployManifestSchema"))
    ),
    // The DeployDiff item, which upstream exports as its own schema (no JSON Schema file).
    entry!(
        SchemaChange,
        'C',
        None,
        Some(("system", "SchemaChangeSchema"))
    ),
    entry!(
        DeployDiff,
        'C',
        Some("system/DeployDiff.json"),
        Some(("system", "DeployDiffSchema"))
    ),
    entry!(
        DeployValidationResult,
        'C',
        Some("system/DeployValidationResult.json"),
        Some(("system", "DeployValidationResultSchema"))
    ),
    entry!(
        DeployValidationIssue,
        'C',
        Some("system/DeployValidationIssue.json"),
        Some(("system", "DeployValidationIssueSchema"))
    ),
    entry!(
        MigrationPlan,
        'C',
        Some("system/MigrationPlan.json"),
        Some(("system", "MigrationPlanSchema"))
    ),
    entry!(
        MigrationStatement,
        'C',
        Some("system/MigrationStatement.json"),
        Some(("system", "MigrationStatementSchema"))
    ),
    entry!(
        DeployStatus,
        'C',
        Some("system/DeployStatusEnum.json"),
        Some(("system", "DeployStatusEnum"))
    ),
    // D — runtime context and quotas.
    entry!(
        TenantRuntimeContext,
        'D',
        Some("kernel/TenantRuntimeContext.json"),
        Some(("kernel", "TenantRuntimeContextSchema"))
    ),
    entry!(
        TenantQuota,
        'D',
        Some("system/TenantQuota.json"),
        Some(("system", "TenantQuotaSchema"))
    ),
    entry!(
        TenantUsage,
        'D',
        Some("system/TenantUsage.json"),
        Some(("system", "TenantUsageSchema"))
    ),
    entry!(
        QuotaEnforcementResult,
        'D',
        Some("system/QuotaEnforcementResult.json"),
        Some(("system", "QuotaEnforcementResultSchema"))
    ),
    // E — marketplace apps.
    entry!(
        AppManifest,
        'E',
        Some("system/AppManifest.json"),
        Some(("system", "AppManifestSchema"))
    ),
    entry!(
        AppCompatibilityCheck,
        'E',
        Some("system/AppCompatibilityCheck.json"),
        Some(("system", "AppCompatibilityCheckSchema"))
    ),
    entry!(
        AppInstallRequest,
        'E',
        Some("system/AppInstallRequest.json"),
        Some(("system", "AppInstallRequestSchema"))
    ),
    entry!(
        AppInstallResult,
        'E',
        Some("system/AppInstallResult.json"),
        Some(("system", "AppInstallResultSchema"))
    ),
    // M — object metadata a bundle carries. Upstream publishes no JSON Schema for objects.
    entry!(ObjectDefinition, 'M', None, Some(("data", "ObjectSchema"))),
    entry!(
        Field,
        'M',
        Some("data/Field.json"),
        Some(("data", "FieldSchema"))
    ),
    entry!(
        FieldType,
        'M',
        Some("data/FieldType.json"),
        Some(("data", "FieldType"))
    ),
    entry!(
        Index,
        'M',
        Some("data/Index.json"),
        Some(("data", "IndexSchema"))
    ),
    entry!(
        SelectOption,
        'M',
        Some("data/SelectOption.json"),
        Some(("data", "SelectOptionSchema"))
    ),
    // Contract data with no upstream schema (a TypeScript interface only).
    entry!(IntrospectedSchema, 'C', None, None),
    // Fleet commands built from upstream types.
    entry!(TenantCreated, 'B', None, None),
    entry!(TenantLifecycleCommand, 'B', None, None),
    entry!(crate::deploy::DeployRequest, 'C', None, None),
    entry!(crate::deploy::TenantDeployJob, 'C', None, None),
    entry!(crate::deploy::TenantDeployJobV1, 'C', None, None),
    entry!(crate::deploy::DeployRollbackRequest, 'C', None, None),
    entry!(crate::deploy::DeployControl, 'C', None, None),
    entry!(AppPackage, 'E', None, None),
    entry!(AppCommand, 'E', None, None),
    entry!(AppUninstallRequest, 'E', None, None),
    entry!(crate::deploy::AppRolloutRequest, 'E', None, None),
    entry!(crate::quota::QuotaTick, 'D', None, None),
    entry!(crate::quota::QuotaAuditJob, 'D', None, None),
];

/// Looks a type up by its upstream name (exact, then case-insensitive).
pub fn find(name: &str) -> Option<&'static SpecEntry> {
    SPECS
        .iter()
        .find(|e| e.name == name)
        .or_else(|| SPECS.iter().find(|e| e.name.eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_schema_generates() {
        let mut names: Vec<_> = SPECS.iter().map(|e| e.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SPECS.len());
        for entry in SPECS {
            let schema = entry.json_schema();
            assert!(schema.is_object(), "{}", entry.name);
        }
    }

    #[test]
    fn find_is_case_insensitive_as_a_fallback() {
        assert_eq!(find("deploybundle").unwrap().name, "DeployBundle");
        assert!(find("Nope").is_none());
    }
}
