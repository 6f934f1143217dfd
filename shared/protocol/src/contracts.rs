//! The service contracts of upstream's `contracts` module as async traits, with typed errors.
//! Implementations live next to the code that does the I/O (shared/tenantdb, shared/schema, the
//! workers); this crate only fixes the method sets and the data they exchange.
//!
//! | upstream | here |
//! |---|---|
//! | `ITursoPlatformService` | [`TursoPlatform`] |
//! | `IProvisioningService` | [`ProvisioningService`] |
//! | `ISchemaDiffService` | [`SchemaDiffService`] (+ [`IntrospectedSchema`]) |
//! | `IDeployPipelineService` | [`DeployPipelineService`] |
//! | `ITenantRouter` | [`TenantRouter`] (+ [`ResolvedTenantContext`]) |
//! | `IAppLifecycleService` | [`AppLifecycleService`] |

use std::collections::BTreeMap;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::app::{AppCompatibilityCheck, AppInstallResult, AppManifest};
use crate::deploy::{
    DeployBundle, DeployDiff, DeployStatus, DeployValidationResult, MigrationPlan,
};
use crate::ids::{AppName, DatabaseName, TenantId};
use crate::object::ObjectDefinition;
use crate::tenant::{
    TenantPlan, TenantProvisioningRequest, TenantProvisioningResult, TenantProvisioningStatus,
    TenantRegion,
};
use crate::time::Timestamp;
use crate::turso::{
    CreateTursoDatabaseOptions, SqlDialect, TursoDatabaseInfo, TursoTokenResult, TursoTokenScope,
};
use crate::validate::{Rejected, Spec};

/// Why a contract call failed. `is_transient` tells callers whether a retry may succeed.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The input is invalid (every issue included).
    #[error(transparent)]
    Invalid(#[from] Rejected),
    /// The named thing does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What was looked up (`tenant`, `database`, `group`, `deployment`, …).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The named thing exists already (with different settings).
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The state does not allow the operation (e.g. resuming an active tenant).
    #[error("illegal in the current state: {0}")]
    IllegalState(String),
    /// Credentials were refused.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A quota forbids the operation.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A dependency timed out or is unavailable; retrying later may succeed.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// Anything else, with its cause chain.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl ContractError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Result of a contract call.
pub type ContractResult<T> = Result<T, ContractError>;

/// The Turso Platform API (upstream `ITursoPlatformService`).
#[async_trait]
pub trait TursoPlatform: Send + Sync {
    /// Creates a database for a tenant.
    async fn create_database(
        &self,
        options: CreateTursoDatabaseOptions,
    ) -> ContractResult<TursoDatabaseInfo>;
    /// Deletes a database.
    async fn delete_database(&self, database: &DatabaseName) -> ContractResult<()>;
    /// Lists databases, optionally of one group.
    async fn list_databases(&self, group: Option<&str>) -> ContractResult<Vec<TursoDatabaseInfo>>;
    /// Looks a database up; `None` when it does not exist.
    async fn get_database(
        &self,
        database: &DatabaseName,
    ) -> ContractResult<Option<TursoDatabaseInfo>>;
    /// Issues a scoped token (`expiration` like `2w`, `90d`, `never`).
    async fn create_token(
        &self,
        database: &DatabaseName,
        scope: TursoTokenScope,
        expiration: Option<&str>,
    ) -> ContractResult<TursoTokenResult>;
    /// Revokes every token of a database.
    async fn revoke_tokens(&self, database: &DatabaseName) -> ContractResult<()>;
}

/// The tenant provisioning pipeline (upstream `IProvisioningService`).
#[async_trait]
pub trait ProvisioningService: Send + Sync {
    /// Provisions a tenant with an isolated database.
    async fn provision_tenant(
        &self,
        tenant: &TenantId,
        request: TenantProvisioningRequest,
    ) -> ContractResult<TenantProvisioningResult>;
    /// Suspends a tenant: revokes tokens, read-only.
    async fn suspend_tenant(&self, tenant: &TenantId) -> ContractResult<()>;
    /// Resumes a suspended tenant with new tokens.
    async fn resume_tenant(&self, tenant: &TenantId) -> ContractResult<()>;
    /// Destroys a tenant and its database (honouring the grace period and backup settings).
    async fn destroy_tenant(&self, tenant: &TenantId) -> ContractResult<()>;
    /// The tenant's provisioning status.
    async fn get_tenant_status(
        &self,
        tenant: &TenantId,
    ) -> ContractResult<TenantProvisioningStatus>;
    /// Moves a tenant to another plan.
    async fn migrate_tenant_plan(&self, tenant: &TenantId, plan: TenantPlan) -> ContractResult<()>;
}

/// A live database's schema (upstream `IntrospectedSchema`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectedSchema {
    /// Tables by name.
    pub tables: BTreeMap<String, IntrospectedTable>,
    /// The database dialect (`sqlite` for every database the fleet introspects).
    pub dialect: String,
    /// When the database was read.
    pub introspected_at: Timestamp,
    /// Fleet extension (upstream's interface has no such field): what the database holds that
    /// the schema engine does not manage — views, triggers, virtual tables, hand-made tables,
    /// columns and indexes — with the SQL that recreates it. A table rebuild keeps these, so a
    /// diff made from this schema can be planned without losing them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmanaged: Vec<IntrospectedUnmanaged>,
}

/// Something in a database the schema engine does not manage (a fleet extension of
/// [`IntrospectedSchema`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectedUnmanaged {
    /// `table`, `virtual_table`, `shadow_table`, `view`, `trigger`, `index`, `column` or
    /// `generated_column`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The table it belongs to (columns, indexes, triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Its definition as SQLite stores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

/// A foreign key of a live table, named as upstream's driver introspection names it
/// (`IntrospectedForeignKey` of `@objectstack/objectql`), with the delete action SQLite reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectedForeignKey {
    /// The referencing column.
    pub column_name: String,
    /// The referenced table.
    pub referenced_table: String,
    /// The referenced column.
    pub referenced_column: String,
    /// `SET NULL`, `CASCADE`, `RESTRICT` or `NO ACTION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<String>,
}

impl Spec for IntrospectedSchema {
    const SPEC_NAME: &'static str = "IntrospectedSchema";
}

/// One table of a live database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectedTable {
    /// Table name.
    pub name: String,
    /// Columns, in table order.
    pub columns: Vec<IntrospectedColumn>,
    /// Its `CREATE INDEX` indexes, by name (not SQLite's automatic ones for UNIQUE and PRIMARY
    /// KEY constraints).
    pub indexes: Vec<IntrospectedIndex>,
    /// Foreign keys (a fleet extension of upstream's contract interface; its driver
    /// introspection has the same list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_keys: Vec<IntrospectedForeignKey>,
    /// Fleet extension: the table's `CREATE TABLE` statement as SQLite stores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

/// One column of a live table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectedColumn {
    /// Column name.
    pub name: String,
    /// Declared SQL type.
    #[serde(rename = "type")]
    pub sql_type: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Default value expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
    /// Whether the column is (part of) the primary key.
    pub primary_key: bool,
}

/// One index of a live table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectedIndex {
    /// Index name.
    pub name: String,
    /// Indexed columns, in order.
    pub columns: Vec<String>,
    /// Whether it enforces uniqueness.
    pub unique: bool,
}

/// Outcome of applying a migration plan (upstream `MigrationApplyResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationApplyResult {
    /// Whether every statement applied.
    pub success: bool,
    /// Statements executed.
    pub statements_executed: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Error of the failed statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Index of the failed statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at_index: Option<u64>,
}

/// Introspect → diff → plan → apply (upstream `ISchemaDiffService`). `Db` is the
/// implementation's database handle.
#[async_trait]
pub trait SchemaDiffService: Send + Sync {
    /// The database handle the service works on.
    type Db: Send + Sync;
    /// Reads the live schema.
    async fn introspect(&self, db: &Self::Db) -> ContractResult<IntrospectedSchema>;
    /// Compares the live schema with the desired objects.
    fn diff(
        &self,
        current: &IntrospectedSchema,
        desired: &[ObjectDefinition],
    ) -> ContractResult<DeployDiff>;
    /// Turns a diff into ordered DDL for `dialect`.
    fn generate_migrations(
        &self,
        diff: &DeployDiff,
        dialect: SqlDialect,
    ) -> ContractResult<MigrationPlan>;
    /// Applies a plan in one transaction.
    async fn apply_migrations(
        &self,
        db: &Self::Db,
        plan: &MigrationPlan,
    ) -> ContractResult<MigrationApplyResult>;
}

/// Outcome of one deployment to one tenant (upstream `DeployExecutionResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployExecutionResult {
    /// Deployment id.
    pub deployment_id: String,
    /// Final status.
    pub status: DeployStatus,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// DDL statements executed.
    pub statements_executed: u64,
    /// Error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it finished.
    pub completed_at: Timestamp,
}

/// Validate → plan → execute → roll back (upstream `IDeployPipelineService`).
#[async_trait]
pub trait DeployPipelineService: Send + Sync {
    /// Validates a bundle (every issue).
    fn validate_bundle(&self, bundle: &DeployBundle) -> DeployValidationResult;
    /// Plans a bundle against a tenant's live schema.
    async fn plan_deployment(
        &self,
        tenant: &TenantId,
        bundle: &DeployBundle,
    ) -> ContractResult<MigrationPlan>;
    /// Executes a plan against a tenant's database and registers the metadata.
    async fn execute_deployment(
        &self,
        tenant: &TenantId,
        plan: &MigrationPlan,
    ) -> ContractResult<DeployExecutionResult>;
    /// Rolls a deployment back.
    async fn rollback_deployment(
        &self,
        tenant: &TenantId,
        deployment_id: &str,
    ) -> ContractResult<()>;
}

/// The tenant attached to a request (upstream `ResolvedTenantContext`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedTenantContext {
    /// The tenant the request resolved to.
    pub tenant_id: TenantId,
    /// Its subscription plan.
    pub plan: TenantPlan,
    /// The region its database is deployed in.
    pub region: TenantRegion,
    /// Database URL.
    pub db_url: String,
    /// Its current provisioning status.
    pub status: TenantProvisioningStatus,
}

/// What a router resolves a tenant from: the parts of an incoming request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParts {
    /// Header names (lowercase) and values.
    pub headers: BTreeMap<String, String>,
    /// Host name.
    pub host: Option<String>,
    /// URL path.
    pub path: String,
    /// Verified token claims.
    pub claims: Map<String, Value>,
}

/// Maps requests to tenant databases (upstream `ITenantRouter`).
#[async_trait]
pub trait TenantRouter: Send + Sync {
    /// The database client handed out.
    type Client: Send + Sync;
    /// Resolves the request's tenant; `None` when the request names no tenant.
    async fn resolve_tenant(
        &self,
        request: &RequestParts,
    ) -> ContractResult<Option<ResolvedTenantContext>>;
    /// A (cached) client of the tenant's database.
    async fn get_tenant_client(&self, tenant: &TenantId) -> ContractResult<Self::Client>;
    /// Drops the cached client of a tenant.
    fn invalidate_cache(&self, tenant: &TenantId);
}

/// Installs marketplace apps into tenants (upstream `IAppLifecycleService`).
#[async_trait]
pub trait AppLifecycleService: Send + Sync {
    /// Checks compatibility with the tenant.
    async fn check_compatibility(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
    ) -> ContractResult<AppCompatibilityCheck>;
    /// Installs an app.
    async fn install_app(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
        config: Option<Map<String, Value>>,
    ) -> ContractResult<AppInstallResult>;
    /// Uninstalls an app, optionally dropping its tables.
    async fn uninstall_app(
        &self,
        tenant: &TenantId,
        app: &AppName,
        drop_tables: bool,
    ) -> ContractResult<()>;
    /// Upgrades an installed app.
    async fn upgrade_app(
        &self,
        tenant: &TenantId,
        manifest: &AppManifest,
    ) -> ContractResult<AppInstallResult>;
}
