//! The schema engine as upstream's `ISchemaDiffService` ([`SchemaEngine`], on a tenant's libSQL
//! [`Connection`]): introspect → diff → generate migrations → apply, each step on its own, with
//! upstream's shapes in between.
//!
//! - **introspect**: the database's ordinary tables, except those another owner registered in
//!   the metadata registry (an app's tables, when the engine is the platform's: those stay
//!   unmanaged) — upstream's contract has no registry, so a table made by hand counts too, and a
//!   diff lists it as removed (`hasBreakingChanges`). As `IntrospectedSchema`, with
//!   the fleet's extensions: foreign keys, each table's SQL, and what the database holds that
//!   the engine does not manage (views, triggers, hand-made columns and indexes).
//! - **diff**: the changes from that schema to the desired objects (the system objects always
//!   included, as every tenant database has them). Each change to an existing table carries,
//!   under `fleetContext` in its value, the live and desired table it touches and the unmanaged
//!   things around it: a SQLite table rebuild needs the whole table, not only the changed field,
//!   and upstream's `generateMigrations` receives nothing but the diff.
//! - **generate_migrations**: the ordered SQLite plan with its rollback SQL (SQLite only). It
//!   does not see the rows, so the refusals that depend on them (a field made required over
//!   NULLs, a unique index over duplicates, a narrower type over values that do not fit) are
//!   left to the apply, whose single transaction then fails and rolls back; losses are
//!   accepted, as the diff already said `hasBreakingChanges`. For a plan checked against the
//!   rows, and refusing losses unless allowed, use [`crate::plan_database`].
//! - **apply_migrations**: the plan in one transaction, foreign keys checked before commit; a
//!   failed statement is answered as `success: false` with its index (the database unchanged).

use std::collections::BTreeMap;
use std::time::Instant;

use async_trait::async_trait;
use fleet_protocol::contracts::{
    ContractError, ContractResult, IntrospectedSchema, MigrationApplyResult, SchemaDiffService,
};
use fleet_protocol::deploy::{ChangeType, EntityType};
use fleet_protocol::turso::SqlDialect;
use fleet_protocol::{DeployDiff, MigrationPlan, ObjectDefinition, Rejected};
use libsql::Connection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diff::{Change, Diff, deploy_diff};
use crate::model::{Schema, Table, Unmanaged, UnmanagedKind};
use crate::plan::{DataFacts, PlanOptions, plan};
use crate::registry::{Owner, Ownership};
use crate::{desired_schema, introspect, owned, registry, system};

/// The key of a change's table context in its `oldValue` / `newValue`.
pub const CONTEXT: &str = "fleetContext";

/// The schema engine for one owner's objects (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaEngine {
    owner: Owner,
}

impl Default for SchemaEngine {
    fn default() -> Self {
        Self::for_owner(Owner::Platform)
    }
}

impl SchemaEngine {
    /// The engine for `owner`'s objects (the platform bundle's, or an app's).
    pub fn for_owner(owner: Owner) -> Self {
        Self { owner }
    }
}

/// What a change to an existing table carries for planning it from the diff alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TableContext {
    /// The table as it is (under its current name).
    live: Option<Table>,
    /// Its `CREATE TABLE` statement as SQLite stores it.
    live_sql: Option<String>,
    /// The table's unmanaged columns and indexes, and every view and trigger (a rebuild saves
    /// and recreates the ones that name the table).
    unmanaged: Vec<Unmanaged>,
    /// The table as the objects describe it.
    desired: Option<Table>,
}

fn other(message: impl Into<String>) -> ContractError {
    ContractError::Other(message.into().into())
}

fn invalid(issues: Vec<fleet_protocol::DeployValidationIssue>) -> ContractError {
    ContractError::Invalid(Rejected {
        type_name: "ObjectDefinition",
        issues,
    })
}

fn from_engine(e: crate::SchemaError) -> ContractError {
    match e {
        crate::SchemaError::Desired(d) => invalid(d.issues),
        crate::SchemaError::Introspect(e) => ContractError::Unavailable(e.to_string()),
        e => other(crate_error_chain(&e)),
    }
}

fn crate_error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The table a change touches, by its desired name (`None`: a whole table created or dropped).
fn touched(change: &Change) -> Option<&str> {
    match change {
        Change::CreateTable(_) | Change::DropTable(_) => None,
        Change::RenameTable { to, .. } => Some(to),
        Change::AddColumn { table, .. }
        | Change::DropColumn { table, .. }
        | Change::RenameColumn { table, .. }
        | Change::AlterColumn { table, .. }
        | Change::CreateIndex { table, .. }
        | Change::DropIndex { table, .. } => Some(table),
    }
}

fn value_of<T: for<'de> Deserialize<'de>>(value: Option<&Value>, what: &str) -> ContractResult<T> {
    let value = value.ok_or_else(|| other(format!("{what}: the change carries no value")))?;
    serde_json::from_value(value.clone()).map_err(|e| other(format!("{what}: {e}")))
}

/// `(from, to)` when a change's old and new values name different things (a rename).
fn renamed(old: Option<&Value>, new: Option<&Value>) -> Option<(String, String)> {
    let name = |v: Option<&Value>| v?.get("name")?.as_str().map(str::to_owned);
    match (name(old), name(new)) {
        (Some(from), Some(to)) if from != to => Some((from, to)),
        _ => None,
    }
}

#[async_trait]
impl SchemaDiffService for SchemaEngine {
    type Db = Connection;

    async fn introspect(&self, db: &Connection) -> ContractResult<IntrospectedSchema> {
        let live = introspect(db)
            .await
            .map_err(|e| ContractError::Unavailable(e.to_string()))?;
        let rows = registry::read(db)
            .await
            .map_err(|e| ContractError::Unavailable(e.to_string()))?;
        // Upstream's introspection has no registry: every ordinary table counts, except the
        // ones another owner registered (an app's tables, for the platform), which stay
        // unmanaged and are never diffed.
        let mut schema = owned::owned(&live, system::base_schema(), None);
        if let Some(rows) = rows.as_deref() {
            for table in Ownership::of(rows, &self.owner).others.keys() {
                if schema.tables.remove(table).is_some() {
                    schema.unmanaged.push(Unmanaged {
                        kind: UnmanagedKind::Table,
                        name: table.clone(),
                        table: None,
                        sql: schema.sql.get(table).cloned(),
                    });
                }
            }
        }
        Ok(schema.to_introspected())
    }

    fn diff(
        &self,
        current: &IntrospectedSchema,
        desired: &[ObjectDefinition],
    ) -> ContractResult<DeployDiff> {
        let mut current = Schema::from_introspected(current).map_err(other)?;
        let desired = desired_schema(&system::with_system_objects(desired))
            .map_err(|e| from_engine(e.into()))?;
        // Introspection cannot know the desired objects: an index on a managed table is the
        // engine's when the objects declare it and it is exactly what the engine creates for
        // that declaration (its stored SQL), as the engine's own pipeline decides.
        current.unmanaged.retain(|u| {
            let (UnmanagedKind::Index, Some(table)) = (u.kind, &u.table) else {
                return true;
            };
            let declared = desired.tables.get(table).and_then(|t| t.index(&u.name));
            match (declared, current.tables.get_mut(table)) {
                (Some(index), Some(live))
                    if u.sql.as_deref()
                        == Some(crate::sql::create_index(table, index).as_str()) =>
                {
                    live.indexes.push(index.clone());
                    live.indexes.sort_by(|a, b| a.name.cmp(&b.name));
                    false
                }
                _ => true,
            }
        });
        let Diff {
            changes, conflicts, ..
        } = crate::diff::diff(&current, &desired);
        if !conflicts.is_empty() {
            let why: Vec<String> = conflicts
                .iter()
                .map(|c| format!("{}: {}", c.entity, c.why))
                .collect();
            return Err(ContractError::IllegalState(why.join("; ")));
        }
        let breaking = changes
            .iter()
            .any(|c| matches!(c, Change::DropTable(_) | Change::DropColumn { .. }));
        let mut out = deploy_diff(&changes, breaking);
        let live_names: BTreeMap<&str, &str> = changes
            .iter()
            .filter_map(|c| match c {
                Change::RenameTable { from, to } => Some((to.as_str(), from.as_str())),
                _ => None,
            })
            .collect();
        for (change, schema_change) in changes.iter().zip(out.changes.iter_mut()) {
            let Some(table) = touched(change) else {
                continue;
            };
            let live_name = live_names.get(table).copied().unwrap_or(table);
            let context = TableContext {
                live: current.tables.get(live_name).cloned(),
                live_sql: current.sql.get(live_name).cloned(),
                unmanaged: current
                    .unmanaged
                    .iter()
                    .filter(|u| {
                        u.table.as_deref() == Some(live_name)
                            || matches!(u.kind, UnmanagedKind::View | UnmanagedKind::Trigger)
                    })
                    .cloned()
                    .collect(),
                desired: desired.tables.get(table).cloned(),
            };
            let context = serde_json::to_value(context).map_err(|e| other(e.to_string()))?;
            let value = match (&mut schema_change.new_value, &mut schema_change.old_value) {
                (Some(value), _) | (None, Some(value)) => value,
                (None, None) => continue,
            };
            if let Value::Object(map) = value {
                map.insert(CONTEXT.to_owned(), context);
            }
        }
        Ok(out)
    }

    fn generate_migrations(
        &self,
        diff: &DeployDiff,
        dialect: SqlDialect,
    ) -> ContractResult<MigrationPlan> {
        if dialect != SqlDialect::Sqlite {
            return Err(ContractError::IllegalState(format!(
                "the engine plans for SQLite (libSQL), not {dialect:?}"
            )));
        }
        let mut current = Schema::default();
        let mut desired = Schema::default();
        let mut table_renames = Vec::new();
        let mut column_renames = Vec::new();
        for change in &diff.changes {
            let (old, new) = (change.old_value.as_ref(), change.new_value.as_ref());
            let what = format!("change of {}", change.entity_name);
            match (change.entity_type, change.change_type) {
                (EntityType::Object, ChangeType::Added) => {
                    let table: Table = value_of(new, &what)?;
                    desired.tables.insert(table.name.clone(), table);
                    continue;
                }
                (EntityType::Object, ChangeType::Removed) => {
                    let table: Table = value_of(old, &what)?;
                    current.tables.insert(table.name.clone(), table);
                    continue;
                }
                (EntityType::Object, _) => {
                    table_renames.extend(renamed(old, new));
                }
                (EntityType::Field, ChangeType::Modified) => {
                    if let (Some((from, to)), Some(parent)) =
                        (renamed(old, new), &change.parent_entity)
                    {
                        column_renames.push((parent.clone(), from, to));
                    }
                }
                _ => {}
            }
            let context = new
                .or(old)
                .and_then(|v| v.get(CONTEXT))
                .ok_or_else(|| {
                    other(format!(
                        "{what} carries no table context: generate migrations from a diff SchemaEngine::diff made"
                    ))
                })?;
            let context: TableContext = serde_json::from_value(context.clone())
                .map_err(|e| other(format!("{what}: {e}")))?;
            if let Some(live) = context.live {
                if let Some(sql) = context.live_sql {
                    current.sql.insert(live.name.clone(), sql);
                }
                current.tables.insert(live.name.clone(), live);
            }
            for u in context.unmanaged {
                if !current.unmanaged.contains(&u) {
                    current.unmanaged.push(u);
                }
            }
            if let Some(table) = context.desired {
                desired.tables.entry(table.name.clone()).or_insert(table);
            }
        }
        for (from, to) in table_renames {
            if let Some(table) = desired.tables.get_mut(&to) {
                table.renamed_from = Some(from);
            }
        }
        for (table, from, to) in column_renames {
            if let Some(column) = desired
                .tables
                .get_mut(&table)
                .and_then(|t| t.columns.iter_mut().find(|c| c.name == to))
            {
                column.renamed_from = Some(from);
            }
        }
        let options = PlanOptions {
            allow_destructive: true,
        };
        let planned = plan(&current, &desired, &DataFacts::default(), options)
            .map_err(|e| ContractError::IllegalState(e.to_string()))?;
        if planned.diff.changes.len() != diff.changes.len() {
            return Err(other(format!(
                "the diff's {} change(s) do not match the {} its tables give: was it edited?",
                diff.changes.len(),
                planned.diff.changes.len()
            )));
        }
        Ok(planned.plan)
    }

    async fn apply_migrations(
        &self,
        db: &Connection,
        plan: &MigrationPlan,
    ) -> ContractResult<MigrationApplyResult> {
        let started = Instant::now();
        match crate::apply_plan(db, plan).await {
            Ok(result) => Ok(result),
            Err(e) => match e.failed_at() {
                Some(index) => Ok(MigrationApplyResult {
                    success: false,
                    statements_executed: index as u64,
                    duration_ms: started.elapsed().as_millis() as u64,
                    error: Some(crate_error_chain(&e)),
                    failed_at_index: Some(index as u64),
                }),
                None => Err(other(crate_error_chain(&e))),
            },
        }
    }
}
