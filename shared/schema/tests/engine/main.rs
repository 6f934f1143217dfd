//! The schema engine against real libSQL files: one test per change kind, property tests,
//! failure injection, hostile input.

mod bad_input;
mod changes;
mod field_cases;
mod properties;
mod service;
mod usage;

use fleet_protocol::{DeployBundle, ObjectDefinition, parse_value};
use fleet_schema::{
    PlanOptions, Planned, SchemaError, desired_schema, introspect, migrate, open_local,
    plan_database,
};
use libsql::{Connection, Value};
use tempfile::TempDir;

/// A fresh database file in its own temp dir.
#[allow(missing_debug_implementations)]
pub struct TestDb {
    _dir: TempDir,
    pub conn: Connection,
}

impl TestDb {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_local(&dir.path().join("tenant.db")).await.unwrap();
        conn.execute("PRAGMA foreign_keys = ON", ()).await.unwrap();
        Self { _dir: dir, conn }
    }

    /// Migrates to `objects`, checks convergence, returns the plan that ran.
    pub async fn migrate(
        &self,
        objects: &serde_json::Value,
        allow_destructive: bool,
    ) -> Result<Planned, SchemaError> {
        let objects = objects_of(objects);
        let (planned, _) = migrate(&self.conn, &objects, PlanOptions { allow_destructive }).await?;
        self.assert_converged(&objects).await;
        Ok(planned)
    }

    /// Introspection equals the desired schema, and a second plan is empty.
    pub async fn assert_converged(&self, objects: &[ObjectDefinition]) {
        let desired = desired_schema(objects).unwrap();
        // What the engine manages (no registry here): hand-made views, triggers and indexes
        // are not part of the comparison.
        let live =
            fleet_schema::owned::owned(&introspect(&self.conn).await.unwrap(), &desired, None);
        assert!(
            live.same_definition(&desired),
            "live schema differs from desired:\nlive:    {live:#?}\ndesired: {desired:#?}"
        );
        let again = plan_database(&self.conn, &strip_renames(objects), PlanOptions::default())
            .await
            .unwrap();
        assert!(
            again.plan.statements.is_empty(),
            "second plan is not empty: {:#?}",
            again.plan.statements
        );
        assert!(again.diff.changes.is_empty());
    }

    /// What a deploy does: migrates to `objects` plus the system objects, and registers the
    /// objects in the metadata registry as the platform's, in the same transaction. Checks
    /// convergence (a second plan is empty).
    pub async fn deploy(
        &self,
        objects: &serde_json::Value,
        allow_destructive: bool,
    ) -> Result<Planned, SchemaError> {
        let typed = fleet_schema::system::with_system_objects(&objects_of(objects));
        let planned = plan_database(&self.conn, &typed, PlanOptions { allow_destructive }).await?;
        let items: Vec<_> = objects
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    "object".to_owned(),
                    o["name"].as_str().unwrap().to_owned(),
                    o.to_string(),
                )
            })
            .collect();
        let (register, _) = fleet_schema::registry::replace(
            planned.registered.as_deref().unwrap_or_default(),
            &fleet_schema::Owner::Platform,
            &items,
            "test",
            "deployment:test",
        );
        fleet_schema::apply_plan_with(&self.conn, &planned.plan, &register)
            .await
            .map_err(SchemaError::Apply)?;
        let again = plan_database(&self.conn, &typed, PlanOptions::default())
            .await
            .unwrap();
        assert!(
            again.plan.statements.is_empty(),
            "second plan is not empty: {:#?}",
            again.plan.statements
        );
        Ok(planned)
    }

    pub async fn exec(&self, sql: &str) {
        self.conn
            .execute_batch(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row of a query, as JSON-ish values.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Value>> {
        let mut rows = self
            .conn
            .query(sql, ())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.unwrap() {
            out.push(
                (0..row.column_count())
                    .map(|i| row.get_value(i).unwrap())
                    .collect(),
            );
        }
        out
    }
}

/// Object definitions from a JSON array (validated as upstream objects).
pub fn objects_of(value: &serde_json::Value) -> Vec<ObjectDefinition> {
    value
        .as_array()
        .expect("an array of objects")
        .iter()
        .map(|o| {
            parse_value::<ObjectDefinition>(o)
                .unwrap_or_else(|e| panic!("{e}"))
                .value
        })
        .collect()
}

/// The same objects without rename hints (what a later bundle would carry).
pub fn strip_renames(objects: &[ObjectDefinition]) -> Vec<ObjectDefinition> {
    objects
        .iter()
        .cloned()
        .map(|mut o| {
            o.renamed_from = None;
            for field in o.fields.values_mut() {
                field.renamed_from = None;
            }
            o
        })
        .collect()
}

/// The objects of a bundle file under `examples/`.
pub fn example_objects(file: &str) -> Vec<ObjectDefinition> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let bundle = fleet_protocol::parse_str::<DeployBundle>(&text)
        .unwrap()
        .value;
    bundle.object_definitions().unwrap()
}
