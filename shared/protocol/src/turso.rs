//! Part A: the DB-per-tenant router configuration, Turso groups, lifecycle hooks, Turso platform
//! types, SQL dialects, and SQLite's type mapping and ALTER TABLE limitations (upstream
//! `data/driver/turso-multi-tenant.zod.ts`, `data/driver-sql.zod.ts`, the Turso contract).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::Spec;
use crate::wire::default_true;

/// How the router finds the tenant of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantResolverStrategy {
    /// The `X-Tenant-ID` header.
    Header,
    /// The first label of the host name.
    Subdomain,
    /// A URL path segment.
    Path,
    /// A JWT claim.
    #[default]
    Token,
    /// A control-plane lookup.
    Lookup,
}

impl Spec for TenantResolverStrategy {
    const SPEC_NAME: &'static str = "TenantResolverStrategy";
}

/// A Turso database group: databases that share locations (and optionally a schema database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TursoGroup {
    /// Group name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Primary location (Turso region code, e.g. `iad`, `lhr`).
    #[schemars(length(min = 2))]
    pub primary_location: String,
    /// Replica locations.
    #[serde(default)]
    #[schemars(inner(length(min = 2)))]
    pub replica_locations: Vec<String>,
    /// Schema database for multi-db schemas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_database: Option<String>,
}

impl Spec for TursoGroup {
    const SPEC_NAME: &'static str = "TursoGroup";
}

/// What happens when a tenant is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnTenantCreate {
    /// Create the database automatically.
    #[serde(default = "default_true")]
    pub auto_create: bool,
    /// Group of the new database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Apply the group's shared schema.
    #[serde(default = "default_true")]
    pub apply_group_schema: bool,
    /// Populate seed data.
    #[serde(default)]
    pub seed_data: bool,
}

/// What happens when a tenant is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnTenantDelete {
    /// Destroy immediately instead of after the grace period.
    #[serde(default)]
    pub immediate: bool,
    /// Hours before permanent deletion.
    #[serde(default = "default_grace_hours")]
    pub grace_period_hours: u64,
    /// Keep a backup before deleting.
    #[serde(default = "default_true")]
    pub create_backup: bool,
}

fn default_grace_hours() -> u64 {
    72
}

/// What happens when a tenant is suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnTenantSuspend {
    /// Revoke the tenant's tokens.
    #[serde(default = "default_true")]
    pub revoke_tokens: bool,
    /// Make the database read-only.
    #[serde(default = "default_true")]
    pub read_only: bool,
}

/// Lifecycle hooks of tenant databases. Upstream requires all three hooks to be present, even
/// though each hook's fields have defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantDatabaseLifecycle {
    /// On creation.
    pub on_tenant_create: OnTenantCreate,
    /// On deletion.
    pub on_tenant_delete: OnTenantDelete,
    /// On suspension.
    pub on_tenant_suspend: OnTenantSuspend,
}

impl Default for TenantDatabaseLifecycle {
    fn default() -> Self {
        Self {
            on_tenant_create: OnTenantCreate {
                auto_create: true,
                group: None,
                apply_group_schema: true,
                seed_data: false,
            },
            on_tenant_delete: OnTenantDelete {
                immediate: false,
                grace_period_hours: 72,
                create_backup: true,
            },
            on_tenant_suspend: OnTenantSuspend {
                revoke_tokens: true,
                read_only: true,
            },
        }
    }
}

impl Spec for TenantDatabaseLifecycle {
    const SPEC_NAME: &'static str = "TenantDatabaseLifecycle";
}

/// The DB-per-tenant router configuration.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TursoMultiTenantConfig {
    /// Turso organisation slug.
    #[schemars(length(min = 1))]
    pub organization_slug: String,
    /// URL template with a `{tenant_id}` placeholder.
    #[schemars(length(min = 1))]
    pub url_template: String,
    /// Group-level auth token for platform operations (a secret; redacted from `Debug`).
    #[schemars(length(min = 1))]
    pub group_auth_token: String,
    /// Tenant resolution strategy.
    #[serde(default)]
    pub tenant_resolver_strategy: TenantResolverStrategy,
    /// Database group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<TursoGroup>,
    /// Lifecycle hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<TenantDatabaseLifecycle>,
    /// Maximum cached tenant connections (LRU).
    #[serde(default = "default_max_cached")]
    #[schemars(range(min = 1))]
    pub max_cached_connections: u64,
    /// Connection cache TTL in seconds.
    #[serde(default = "default_cache_ttl", rename = "connectionCacheTTL")]
    pub connection_cache_ttl: u64,
}

fn default_max_cached() -> u64 {
    100
}
fn default_cache_ttl() -> u64 {
    300
}

impl fmt::Debug for TursoMultiTenantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TursoMultiTenantConfig")
            .field("organization_slug", &self.organization_slug)
            .field("url_template", &self.url_template)
            .field("group_auth_token", &"<redacted>")
            .field("tenant_resolver_strategy", &self.tenant_resolver_strategy)
            .field("group", &self.group)
            .field("lifecycle", &self.lifecycle)
            .field("max_cached_connections", &self.max_cached_connections)
            .field("connection_cache_ttl", &self.connection_cache_ttl)
            .finish()
    }
}

impl Spec for TursoMultiTenantConfig {
    const SPEC_NAME: &'static str = "TursoMultiTenantConfig";
}

/// Access scope of a database token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TursoTokenScope {
    /// Read and write.
    FullAccess,
    /// Read only.
    ReadOnly,
}

/// A database as the platform describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TursoDatabaseInfo {
    /// Database name (unique in the organisation).
    pub name: String,
    /// Database id.
    pub db_id: String,
    /// Host name.
    pub hostname: String,
    /// The Turso group the database belongs to (`provisioner.regions` maps each tenant region
    /// to one).
    pub group: String,
    /// Primary region code.
    pub primary_region: String,
    /// Replica regions.
    pub regions: Vec<String>,
    /// `logical` or `schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Database version.
    pub version: String,
    /// Whether it is sleeping.
    pub sleeping: bool,
}

/// Seed of a new database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSeed {
    /// `database` (copy another database) or `dump` (load a SQL dump).
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["database", "dump"]))]
    pub kind: String,
    /// Source database name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Dump URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Options for creating a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateTursoDatabaseOptions {
    /// Database name.
    pub name: String,
    /// The Turso group to create it in (`provisioner.regions` maps each tenant region to one).
    pub group: String,
    /// Schema database for multi-db schemas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_database: Option<String>,
    /// What to pre-populate it from (another database or a SQL dump); empty when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<DatabaseSeed>,
}

/// A freshly issued database token. The JWT is a secret: redacted from `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TursoTokenResult {
    /// The token.
    pub jwt: String,
    /// Expiration (ISO 8601), absent for non-expiring tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

impl fmt::Debug for TursoTokenResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TursoTokenResult")
            .field("jwt", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// SQL dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SqlDialect {
    /// PostgreSQL (note: `DatabaseProvider` says `postgres`).
    Postgresql,
    /// MySQL; the schema engine plans for SQLite only and refuses it.
    Mysql,
    /// SQLite / libSQL.
    Sqlite,
    /// SQL Server.
    Mssql,
    /// Oracle Database; refused by the schema engine like every dialect but SQLite.
    Oracle,
    /// MariaDB (a MySQL fork); refused by the schema engine like every dialect but SQLite.
    Mariadb,
}

impl Spec for SqlDialect {
    const SPEC_NAME: &'static str = "SQLDialect";
}

/// SQL types for ObjectStack's storage classes (upstream `DataTypeMapping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataTypeMapping {
    /// Text fields.
    pub text: String,
    /// Number fields.
    pub number: String,
    /// Boolean fields.
    pub boolean: String,
    /// Date fields.
    pub date: String,
    /// Date-time fields.
    pub datetime: String,
    /// JSON fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    /// UUID fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Binary fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

impl Spec for DataTypeMapping {
    const SPEC_NAME: &'static str = "DataTypeMapping";
}

/// SQLite's storage class for each of ObjectStack's storage kinds (upstream
/// `SQLiteDataTypeMappingDefaults`), as typed constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteTypeMapping {
    /// Text fields.
    pub text: &'static str,
    /// Number fields.
    pub number: &'static str,
    /// Boolean fields.
    pub boolean: &'static str,
    /// Date fields.
    pub date: &'static str,
    /// Date-time fields.
    pub datetime: &'static str,
    /// JSON fields.
    pub json: &'static str,
    /// UUID fields.
    pub uuid: &'static str,
    /// Binary fields.
    pub binary: &'static str,
}

/// Upstream's SQLite defaults.
pub const SQLITE_TYPE_MAPPING: SqliteTypeMapping = SqliteTypeMapping {
    text: "TEXT",
    number: "REAL",
    boolean: "INTEGER",
    date: "TEXT",
    datetime: "TEXT",
    json: "TEXT",
    uuid: "TEXT",
    binary: "BLOB",
};

impl SqliteTypeMapping {
    /// The mapping as the upstream `DataTypeMapping` document.
    pub fn to_data_type_mapping(self) -> DataTypeMapping {
        DataTypeMapping {
            text: self.text.into(),
            number: self.number.into(),
            boolean: self.boolean.into(),
            date: self.date.into(),
            datetime: self.datetime.into(),
            json: Some(self.json.into()),
            uuid: Some(self.uuid.into()),
            binary: Some(self.binary.into()),
        }
    }
}

/// How a migration planner works around what SQLite's ALTER TABLE cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildStrategy {
    /// SQLite's documented procedure: create the new table, copy rows, drop the old, rename.
    CreateCopyDropRename,
}

/// What SQLite's ALTER TABLE supports (upstream `SQLiteAlterTableLimitations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteAlterTableLimitations {
    /// ADD COLUMN.
    pub supports_add_column: bool,
    /// RENAME COLUMN (3.25.0+).
    pub supports_rename_column: bool,
    /// DROP COLUMN (3.35.0+), when nothing depends on the column.
    pub supports_drop_column: bool,
    /// Changing a column's type, nullability or default.
    pub supports_modify_column: bool,
    /// Adding a constraint to an existing table.
    pub supports_add_constraint: bool,
    /// The fallback for everything else.
    pub rebuild_strategy: RebuildStrategy,
}

/// Upstream's SQLite limitations.
pub const SQLITE_ALTER_TABLE_LIMITATIONS: SqliteAlterTableLimitations =
    SqliteAlterTableLimitations {
        supports_add_column: true,
        supports_rename_column: true,
        supports_drop_column: true,
        supports_modify_column: false,
        supports_add_constraint: false,
        rebuild_strategy: RebuildStrategy::CreateCopyDropRename,
    };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_value;
    use serde_json::json;

    #[test]
    fn router_config_defaults_and_secret_redaction() {
        let c = parse_value::<TursoMultiTenantConfig>(&json!({
            "organizationSlug": "myorg", "urlTemplate": "libsql://{tenant_id}-myorg.turso.io", "groupAuthToken": "tok"
        }))
        .unwrap()
        .value;
        assert_eq!(
            (c.max_cached_connections, c.connection_cache_ttl),
            (100, 300)
        );
        assert_eq!(c.tenant_resolver_strategy, TenantResolverStrategy::Token);
        assert!(!format!("{c:?}").contains("tok\""));
        assert_eq!(
            serde_json::to_value(&c).unwrap()["connectionCacheTTL"],
            json!(300)
        );
    }

    #[test]
    fn lifecycle_requires_all_three_hooks() {
        let err =
            parse_value::<TenantDatabaseLifecycle>(&json!({"onTenantCreate": {}})).unwrap_err();
        let paths: Vec<_> = err.errors().map(|i| i.path.clone()).collect();
        assert_eq!(paths, ["onTenantDelete", "onTenantSuspend"]);
    }
}
