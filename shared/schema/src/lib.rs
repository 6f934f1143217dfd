//! The schema engine: bring a tenant's libSQL database from the schema it has to the schema its
//! ObjectStack metadata describes, safely and keeping every row.
//!
//! `objects` —[`desired::desired_schema`]→ desired [`Schema`]; the database
//! —[`introspect::introspect`]→ live [`Schema`] —[`owned::owned`] (by the metadata
//! [`registry`])→ the part the engine manages; both —[`diff::diff`]→ [`Change`]s
//! —[`plan::plan`] (with [`facts`] about the rows)→ upstream `DeployDiff` + `MigrationPlan`
//! —[`apply::apply_plan`]→ applied in one transaction. Re-planning after an apply yields an
//! empty plan. [`plan_database`] and [`migrate`] run the whole pipeline.
//!
//! # What the engine owns
//!
//! Only what it created: the tables of the objects registered in the tenant's metadata registry
//! (`sys_metadata`) by the owner a plan is for (the platform bundle, or an app), and their
//! declared columns and indexes. Views, triggers, virtual tables (FTS5 …) and their shadow
//! tables, generated columns, and tables, columns and indexes made by hand are left as they are
//! — and kept through table rebuilds — and `fleetctl db introspect` lists them as unmanaged.
//! See [`owned`] for the rule on databases without a registry.
//!
//! # Mapping (SQLite dialect)
//!
//! Every object (except `abstract` ones) is a table named `tableName`, else
//! `{namespace}_{name}`, else `name`, with three system columns:
//! `id TEXT NOT NULL PRIMARY KEY`, `created_at` and `updated_at` (`TEXT NOT NULL`, default: the
//! insert time as RFC 3339 UTC). Each field is a column named `columnName`, else its key:
//!
//! | field type | column |
//! |---|---|
//! | text, textarea, email, url, phone, password, markdown, html, richtext, code, color, signature, qrcode, select, radio, autonumber | `TEXT` |
//! | date, datetime, time | `TEXT` (ISO 8601) |
//! | image, file, avatar, video, audio | `TEXT` (a reference to the stored file) |
//! | number, currency, percent, rating, slider, progress | `REAL` |
//! | boolean, toggle | `INTEGER` (0/1) |
//! | json, multiselect, checkboxes, tags, location, address, vector | `TEXT` holding JSON |
//! | any field with `multiple: true` | `TEXT` holding a JSON array (no foreign key) |
//! | lookup, master_detail, tree | `TEXT REFERENCES <target table> (id) ON DELETE …` |
//! | formula, summary | no column (computed) |
//!
//! - `deleteBehavior`: `set_null` → `SET NULL`, `cascade` → `CASCADE`, `restrict` → `RESTRICT`;
//!   a *required* reference cannot be set to NULL, so there `set_null` becomes `RESTRICT`.
//! - `required` → `NOT NULL`. Where existing rows have no value, a `defaultValue` fills them;
//!   without one the change is refused, naming the field and the number of rows (records are
//!   never deleted to satisfy a constraint).
//! - `defaultValue` → `DEFAULT` literal: strings quoted, numbers as numbers, booleans 1/0,
//!   arrays and objects as JSON text, `null` = no default.
//! - `unique` → unique index `uq_<table>_<column>`; `index` → index `ix_<table>_<column>`.
//! - object `indexes` → an index per entry (`name`, else `ix_`/`uq_<table>_<columns>`), unique
//!   when `unique`; every SQLite index is a B-tree, and `partial` is refused (its condition
//!   would be SQL from unvalidated text).
//!
//! # Renames
//!
//! Never guessed: a field or object that disappears while another appears is a drop plus an
//! add. `renamedFrom: "<old name>"` on a field or object (a fleet extension of the upstream
//! metadata) makes a rename explicit; the column or table is renamed and its data kept — also
//! into a name the same change frees (its old holder is dropped, a destructive change), and in
//! chains and swaps. A hint that contradicts the bundle is refused; one with nothing to rename
//! is reported as a note.
//!
//! # Safety
//!
//! Identifiers must be snake_case ASCII, at most 63 characters, not an SQL keyword, not
//! `sqlite_…`/`_fleet_…` ([`sql::check_identifier`]), and are always quoted. Removing an object
//! or field is destructive: planning refuses it, listing what would be lost, unless the caller
//! allows destructive changes — which allows nothing else. Changes that depend on the data
//! (required over NULLs, a narrower type over values that do not fit, unique over duplicates)
//! are checked against the rows first and refused in any case, with the field and the number of
//! rows. Tables named `_fleet_…` (the fleet's own) are never touched.

#![deny(missing_docs)]

pub mod apply;
pub mod desired;
pub mod diff;
pub mod facts;
pub mod introspect;
pub mod model;
pub mod owned;
pub mod plan;
pub mod registry;
pub mod service;
pub mod sql;
pub mod system;
pub mod usage;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::ObjectDefinition;
use fleet_protocol::contracts::MigrationApplyResult;
use libsql::Connection;

pub use apply::{
    ApplyError, BoundStatement, Guard, apply_plan, apply_plan_guarded, apply_plan_with,
};
pub use desired::{DesiredSchemaError, desired_schema};
pub use diff::{Change, Conflict, Diff, diff};
pub use introspect::{IntrospectError, introspect, is_empty};
pub use model::{Column, ColumnType, Index, Schema, Table, Unmanaged, UnmanagedKind};
pub use plan::{DataFacts, Loss, PlanError, PlanOptions, Planned, plan, rollback_plan};
pub use registry::Owner;
pub use service::SchemaEngine;

/// Why the schema engine could not plan or apply.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The database path.
        path: String,
        /// The database error.
        #[source]
        source: libsql::Error,
    },
    /// The objects do not describe a valid schema.
    #[error(transparent)]
    Desired(#[from] DesiredSchemaError),
    /// The live schema could not be read.
    #[error(transparent)]
    Introspect(#[from] IntrospectError),
    /// No acceptable plan exists.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The plan did not apply (the database is unchanged).
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Opens (creating if needed) a local libSQL database file with a busy timeout, so a migration
/// waits for a concurrent writer instead of failing.
pub async fn open_local(path: &Path) -> Result<Connection, SchemaError> {
    let open = |source| SchemaError::Open {
        path: path.display().to_string(),
        source,
    };
    let db = libsql::Builder::new_local(path)
        .build()
        .await
        .map_err(open)?;
    let conn = db.connect().map_err(open)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
    Ok(conn)
}

/// The live schema of `conn` as the engine sees it: the tables registered objects (of any
/// owner) and the system objects map to, and everything else listed as unmanaged. A database
/// without a registry counts every ordinary table as managed ([`owned`]).
pub async fn introspect_owned(conn: &Connection) -> Result<Schema, SchemaError> {
    let live = introspect(conn).await?;
    let Some(rows) = registry::read(conn).await? else {
        return Ok(owned::owned(&live, &Schema::default(), None));
    };
    Ok(owned::owned(
        &live,
        system::base_schema(),
        Some(&registry::Ownership::everyone(&rows)),
    ))
}

/// Introspects `conn`, and plans the migration to `objects` for the platform bundle.
pub async fn plan_database(
    conn: &Connection,
    objects: &[ObjectDefinition],
    options: PlanOptions,
) -> Result<Planned, SchemaError> {
    plan_database_for(conn, objects, options, &Owner::Platform).await
}

/// Introspects `conn`, and plans the migration of what `owner` registered to `objects`
/// (the tables other owners registered are never touched; claiming one is a conflict).
pub async fn plan_database_for(
    conn: &Connection,
    objects: &[ObjectDefinition],
    options: PlanOptions,
    owner: &Owner,
) -> Result<Planned, SchemaError> {
    plan_database_within(conn, objects, &[], options, owner).await
}

/// [`plan_database_for`] with `context`: objects `objects` may refer to (an app's lookups into
/// the objects of an app it depends on) that are someone else's — mapped so the references
/// resolve, never planned.
pub async fn plan_database_within(
    conn: &Connection,
    objects: &[ObjectDefinition],
    context: &[ObjectDefinition],
    options: PlanOptions,
    owner: &Owner,
) -> Result<Planned, SchemaError> {
    let desired = desired_within(objects, context)?;
    plan_database_to(conn, objects, &desired, options, owner).await
}

/// The schema `objects` describe, with `context` (objects they may refer to that are someone
/// else's) resolved but left out: what [`plan_database_within`] plans towards. Computed once
/// and given to [`plan_database_to`] for each database of a rollout.
pub fn desired_within(
    objects: &[ObjectDefinition],
    context: &[ObjectDefinition],
) -> Result<Schema, SchemaError> {
    if context.is_empty() {
        return Ok(desired_schema(objects)?);
    }
    let own: std::collections::BTreeSet<String> =
        objects.iter().map(ObjectDefinition::table).collect();
    let mut all: Vec<ObjectDefinition> = context
        .iter()
        .filter(|c| !objects.iter().any(|o| o.name == c.name))
        .cloned()
        .collect();
    all.extend(objects.iter().cloned());
    let mut desired = desired_schema(&all)?;
    desired.tables.retain(|name, _| own.contains(name));
    Ok(desired)
}

/// [`plan_database_within`] towards `desired`, the schema [`desired_within`] made of
/// `objects` (and their context): for a caller planning the same objects for many databases.
pub async fn plan_database_to(
    conn: &Connection,
    objects: &[ObjectDefinition],
    desired: &Schema,
    options: PlanOptions,
    owner: &Owner,
) -> Result<Planned, SchemaError> {
    let live = introspect(conn).await?;
    let registered = registry::read(conn).await?;
    Stage::new(objects, desired, owner, &live, registered.as_deref())?
        .planned(conn, options, registered)
        .await
}

/// What a plan is made of before the data is read: the part of the live schema `owner` manages
/// ([`owned`]), the desired schema with the renames already applied taken out, and the diff
/// between them. A function of the live schema, the registry's rows, `objects`, `desired` and
/// `owner` alone.
#[derive(Debug, Clone)]
struct Stage {
    current: Schema,
    desired: Schema,
    diff: Diff,
}

impl Stage {
    /// The stage of a database whose schema is `live` and registry `registered`; a table or
    /// object name another owner registered is a [`PlanError::Conflicts`].
    fn new(
        objects: &[ObjectDefinition],
        desired: &Schema,
        owner: &Owner,
        live: &Schema,
        registered: Option<&[registry::Registered]>,
    ) -> Result<Self, SchemaError> {
        let ownership = registered.map(|rows| registry::Ownership::of(rows, owner));
        if let (Some(ownership), Some(rows)) = (&ownership, registered) {
            let mut conflicts: Vec<Conflict> = desired
                .tables
                .keys()
                .filter_map(|t| {
                    ownership.others.get(t).map(|other| Conflict {
                        entity: t.clone(),
                        why: format!("the table belongs to {other}, which registered it"),
                    })
                })
                .collect();
            // Object names are unique in a tenant's registry, whatever table they map to.
            for object in objects {
                let other = rows.iter().find(|r| {
                    r.kind == "object" && r.name == object.name.as_str() && &r.owner() != owner
                });
                if let Some(other) = other {
                    conflicts.push(Conflict {
                        entity: object.name.to_string(),
                        why: format!("the object name is registered by {}", other.owner()),
                    });
                }
            }
            if !conflicts.is_empty() {
                return Err(PlanError::Conflicts { conflicts }.into());
            }
        }
        let desired = match &ownership {
            Some(ownership) => owned::without_applied_renames(desired.clone(), ownership),
            None => desired.clone(),
        };
        let current = owned::owned(live, &desired, ownership.as_ref());
        // One diff for both the facts the plan needs and the plan.
        let diff = diff::diff(&current, &desired);
        Ok(Self {
            current,
            desired,
            diff,
        })
    }

    /// What planning needs to know about `conn`'s rows for this stage's changes.
    async fn facts(&self, conn: &Connection) -> Result<DataFacts, SchemaError> {
        Ok(
            facts::collect_facts_for(conn, &self.current, &self.desired, &self.diff.changes)
                .await?,
        )
    }

    /// The plan of this stage for the rows `facts` describe.
    fn plan(&self, facts: &DataFacts, options: PlanOptions) -> Result<Planned, SchemaError> {
        Ok(plan::plan_diffed(
            &self.current,
            &self.desired,
            self.diff.clone(),
            facts,
            options,
        )?)
    }

    /// The plan of this stage for `conn`, with the registry it was made from.
    async fn planned(
        &self,
        conn: &Connection,
        options: PlanOptions,
        registered: Option<Vec<registry::Registered>>,
    ) -> Result<Planned, SchemaError> {
        let facts = self.facts(conn).await?;
        let mut planned = self.plan(&facts, options)?;
        planned.registered = registered;
        Ok(planned)
    }
}

/// Most memory (bytes, estimated) one [`PlanMemo`] keeps: per shape, its key (catalog and
/// registry text) and, for what it derives, its catalog text once for each schema it holds
/// (the owned and desired schemas and the diff, estimated at twice the catalog) and once for
/// each plan it may hold ([`PLANS_PER_SHAPE`]) — a plan's statements are about as long as the
/// catalog they change. A fleet on one version has a handful of shapes.
pub const PLAN_MEMO_BYTES: u64 = 8 << 20;

/// Plans remembered per database shape (one per distinct data facts, least recently used
/// first out): tenants whose touched tables hold different row counts have different facts.
pub const PLANS_PER_SHAPE: u64 = 16;

/// What a [`PlanMemo`] remembers a stage by: everything but `objects`, `desired` and `owner`
/// (fixed for the memo) that [`Stage::new`] reads — the catalog's exact text (the live schema
/// is a function of it, see [`introspect`]), the registry's rows, the options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    catalog: String,
    registered: Option<Vec<registry::Registered>>,
    options: PlanOptions,
}

/// A remembered stage and the plans made from it, by the data facts each was made with.
struct Remembered {
    stage: Stage,
    /// Each plan with the shape's registry rows in it, shared by every database it is for.
    plans: moka::sync::Cache<DataFacts, Arc<Planned>>,
}

/// [`plan_database_to`] for the many databases of one rollout, remembering what it derives:
/// the databases of a fleet on one version have a handful of shapes (catalog and registry),
/// so ownership, the owned schema and the diff are made once per shape and the plan once per
/// shape and data facts, instead of once per database. Bound to one `objects`, `desired` and
/// `owner`; bounded in memory ([`PLAN_MEMO_BYTES`], estimated). Gives what [`plan_database_to`]
/// gives for the same database — a plan is a function of exactly what it is remembered by —
/// and reads each database the same way (its catalog, registry and data facts every time).
pub struct PlanMemo {
    objects: Vec<ObjectDefinition>,
    desired: Schema,
    owner: Owner,
    shapes: moka::sync::Cache<Shape, Arc<Remembered>>,
}

impl std::fmt::Debug for PlanMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanMemo")
            .field("owner", &self.owner)
            .field("shapes", &self.shapes.entry_count())
            .finish_non_exhaustive()
    }
}

impl PlanMemo {
    /// A memo of plans towards `desired` (made of `objects`, see [`desired_within`]) for what
    /// `owner` registered.
    pub fn new(objects: Vec<ObjectDefinition>, desired: Schema, owner: Owner) -> Self {
        Self {
            objects,
            desired,
            owner,
            shapes: moka::sync::Cache::builder()
                .weigher(|shape: &Shape, _: &Arc<Remembered>| {
                    let registry = shape.registered.as_deref().map_or(0, registry::text_len);
                    let derived = shape.catalog.len() * (2 + PLANS_PER_SHAPE as usize);
                    u32::try_from(shape.catalog.len() + registry + derived).unwrap_or(u32::MAX)
                })
                .max_capacity(PLAN_MEMO_BYTES)
                .build(),
        }
    }

    /// [`plan_database_to`] of `conn`, from what this memo made for a database of the same
    /// shape and data facts when it has it: the same plan, shared (not copied) by every
    /// database it is for, so a caller may also derive what it builds from a plan once per
    /// plan (the allocation is the plan's identity while it is held).
    pub async fn plan(
        &self,
        conn: &Connection,
        options: PlanOptions,
    ) -> Result<Arc<Planned>, SchemaError> {
        let (live, catalog) = introspect::introspect_keyed(conn).await?;
        let registered = registry::read(conn).await?;
        let stage = |registered: Option<&[registry::Registered]>| {
            Stage::new(&self.objects, &self.desired, &self.owner, &live, registered)
        };
        // A read that raced a schema change is planned as it is and remembered by nothing.
        let Some(catalog) = catalog else {
            return stage(registered.as_deref())?
                .planned(conn, options, registered)
                .await
                .map(Arc::new);
        };
        let shape = Shape {
            catalog,
            registered,
            options,
        };
        let remembered = match self.shapes.get(&shape) {
            Some(remembered) => remembered,
            None => {
                // A conflict is an error, remembered by nothing (it is rare and ends the plan).
                let remembered = Arc::new(Remembered {
                    stage: stage(shape.registered.as_deref())?,
                    plans: moka::sync::Cache::new(PLANS_PER_SHAPE),
                });
                self.shapes.insert(shape.clone(), remembered.clone());
                remembered
            }
        };
        let facts = remembered.stage.facts(conn).await?;
        Ok(match remembered.plans.get(&facts) {
            Some(planned) => planned,
            None => {
                let planned = Arc::new(Planned {
                    registered: shape.registered,
                    ..remembered.stage.plan(&facts, options)?
                });
                remembered.plans.insert(facts, planned.clone());
                planned
            }
        })
    }
}

/// The plan that takes a database with nothing in it — no table, index, view or trigger, as
/// [`introspect`] reads a new tenant's database — to `desired`: what [`plan_database_to`]
/// returns for such a database. With no table there is no registry to own or rename anything
/// and no data to check a change against, so nothing but `desired` and `options` decides it,
/// and a caller may plan it once and apply it to every new database.
pub fn plan_empty(desired: &Schema, options: PlanOptions) -> Result<Planned, SchemaError> {
    Ok(plan(
        &Schema::default(),
        desired,
        &DataFacts::default(),
        options,
    )?)
}

/// Plans and applies the migration of `conn` to `objects`.
pub async fn migrate(
    conn: &Connection,
    objects: &[ObjectDefinition],
    options: PlanOptions,
) -> Result<(Planned, MigrationApplyResult), SchemaError> {
    let planned = plan_database(conn, objects, options).await?;
    let result = apply_plan(conn, &planned.plan).await?;
    Ok((planned, result))
}
