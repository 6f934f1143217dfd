//! Property: for random schema pairs A → B with random rows at A, applying the plan converges
//! (introspection equals B, a second plan is empty), keeps every row and every kept column's
//! values; and a plan that fails midway leaves the database exactly at A. With random views,
//! triggers and hand-made indexes over random tables at A, every plan either applies with all of
//! them intact (views still answer) or is refused without touching the database.

use std::collections::BTreeMap;

use fleet_protocol::MigrationStatement;
use fleet_schema::{
    PlanError, PlanOptions, SchemaError, apply_plan, introspect, migrate, plan_database,
    rollback_plan,
};
use libsql::Value;
use proptest::prelude::*;
use serde_json::{Map, json};

use crate::{TestDb, objects_of};

const TABLES: [&str; 3] = ["alpha", "beta", "gamma"];
const FIELDS: [&str; 5] = ["f1", "f2", "f3", "f4", "f5"];
const TYPES: [&str; 5] = ["text", "number", "boolean", "json", "date"];

#[derive(Debug, Clone)]
struct FieldSpec {
    field_type: &'static str,
    required: bool,
    unique: bool,
    index: bool,
}

type SchemaSpec = BTreeMap<&'static str, BTreeMap<&'static str, FieldSpec>>;

fn field_spec() -> impl Strategy<Value = FieldSpec> {
    (0..TYPES.len(), 0..4u8, any::<bool>()).prop_map(|(t, flags, index)| FieldSpec {
        field_type: TYPES[t],
        // Required fields always carry a default, unique ones never do (a shared default would
        // duplicate): rows are never deleted and unique indexes never conflict.
        required: flags == 1,
        unique: flags == 2 && TYPES[t] != "boolean",
        index,
    })
}

fn schema_spec() -> impl Strategy<Value = SchemaSpec> {
    let table = proptest::collection::btree_map(
        proptest::sample::select(FIELDS.to_vec()),
        field_spec(),
        0..5,
    );
    proptest::collection::btree_map(proptest::sample::select(TABLES.to_vec()), table, 1..4)
}

/// B as an evolution of A (fields retyped, made required, unique or indexed, dropped, added):
/// the common case in practice, and the one whose plans are mostly reversible.
fn evolve(a: &SchemaSpec, edits: &[u8]) -> SchemaSpec {
    let mut b = a.clone();
    let mut edits = edits.iter().copied().cycle();
    for fields in b.values_mut() {
        let names: Vec<&'static str> = fields.keys().copied().collect();
        for name in names {
            let edit = edits.next().unwrap_or(0);
            let f = fields.get_mut(name).unwrap();
            match edit % 8 {
                0 => f.field_type = TYPES[(edit as usize / 8) % TYPES.len()],
                1 => {
                    f.required = !f.required;
                    f.unique &= !f.required;
                }
                2 => {
                    f.unique = !f.unique && f.field_type != "boolean";
                    f.required &= !f.unique;
                }
                3 => f.index = !f.index,
                4 => {
                    fields.remove(name);
                }
                _ => {}
            }
        }
        let edit = edits.next().unwrap_or(0) as usize;
        if edit.is_multiple_of(3) {
            let name = FIELDS[edit % FIELDS.len()];
            fields.entry(name).or_insert(FieldSpec {
                field_type: TYPES[edit % TYPES.len()],
                required: false,
                unique: false,
                index: false,
            });
        }
    }
    for f in b.values_mut().flat_map(|t| t.values_mut()) {
        f.unique &= f.field_type != "boolean";
    }
    b
}

fn default_for(field_type: &str) -> serde_json::Value {
    match field_type {
        "number" => json!(7),
        "boolean" => json!(false),
        "json" => json!(["d"]),
        "date" => json!("2026-01-01"),
        _ => json!("dflt"),
    }
}

fn objects(spec: &SchemaSpec) -> serde_json::Value {
    let objects: Vec<serde_json::Value> = spec
        .iter()
        .map(|(table, fields)| {
            let mut map = Map::new();
            for (name, f) in fields {
                let mut field = json!({"type": f.field_type, "required": f.required, "unique": f.unique, "index": f.index});
                if f.required {
                    field["defaultValue"] = default_for(f.field_type);
                }
                map.insert((*name).to_owned(), field);
            }
            json!({"name": table, "fields": map})
        })
        .collect();
    json!(objects)
}

fn value_sql(field_type: &str, row: usize, column: &str) -> String {
    match field_type {
        "number" => format!("{}.5", row),
        "boolean" => (row % 2).to_string(),
        "json" => format!("'[\"{column}{row}\"]'"),
        "date" => format!("'2026-02-{:02}'", row + 1),
        _ => format!("'v{row}_{column}'"),
    }
}

async fn snapshot(db: &TestDb, spec: &SchemaSpec) -> BTreeMap<(String, String), Vec<Value>> {
    let mut values = BTreeMap::new();
    for (table, fields) in spec {
        for column in std::iter::once("id").chain(fields.keys().copied()) {
            let rows = db
                .rows(&format!("SELECT \"{column}\" FROM \"{table}\" ORDER BY id"))
                .await;
            values.insert(
                (table.to_string(), column.to_owned()),
                rows.into_iter().map(|mut r| r.remove(0)).collect(),
            );
        }
    }
    values
}

/// Hand-made objects over A's tables, by the bits of `extras` (per table: a view over it naming
/// one of its fields, a trigger on it that names another table, an index on it); their names.
async fn hand_made(
    db: &TestDb,
    a: &SchemaSpec,
    extras: u32,
) -> Vec<(&'static str, String, String)> {
    let tables: Vec<&str> = a.keys().copied().collect();
    let mut made = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let bits = extras >> (i * 3);
        let field = a[table].keys().next().copied().unwrap_or("created_at");
        if bits & 1 == 1 {
            let name = format!("v_{table}");
            db.exec(&format!(
                "CREATE VIEW {name} AS SELECT id, \"{field}\" FROM \"{table}\""
            ))
            .await;
            made.push(("view", name, table.to_string()));
        }
        if bits & 2 == 2 {
            let other = tables[(i + 1) % tables.len()];
            let name = format!("tr_{table}");
            db.exec(&format!(
                "CREATE TRIGGER {name} AFTER DELETE ON \"{table}\" BEGIN DELETE FROM \"{other}\" WHERE id = OLD.id; END"
            ))
            .await;
            made.push(("trigger", name, table.to_string()));
        }
        if bits & 4 == 4 {
            let name = format!("hm_{table}");
            db.exec(&format!(
                "CREATE INDEX {name} ON \"{table}\" (created_at, id)"
            ))
            .await;
            made.push(("index", name, table.to_string()));
        }
    }
    made
}

async fn run_case(a: SchemaSpec, b: SchemaSpec, rows: usize, nulls: u8, fail_at: usize) {
    run_case_with(a, b, rows, nulls, fail_at, 0).await
}

async fn run_case_with(
    a: SchemaSpec,
    b: SchemaSpec,
    rows: usize,
    nulls: u8,
    fail_at: usize,
    extras: u32,
) {
    let db = TestDb::new().await;
    migrate(&db.conn, &objects_of(&objects(&a)), PlanOptions::default())
        .await
        .unwrap();
    for (table, fields) in &a {
        for row in 0..rows {
            let mut columns = vec!["id".to_owned()];
            let mut values = vec![format!("'r{row}'")];
            for (i, (name, f)) in fields.iter().enumerate() {
                let null = !f.required && (nulls >> ((i + row) % 8)) & 1 == 1;
                columns.push(format!("\"{name}\""));
                values.push(if null {
                    "NULL".into()
                } else {
                    value_sql(f.field_type, row, name)
                });
            }
            db.exec(&format!(
                "INSERT INTO \"{table}\" ({}) VALUES ({})",
                columns.join(", "),
                values.join(", ")
            ))
            .await;
        }
    }
    let made = hand_made(&db, &a, extras).await;
    let schema_a = introspect(&db.conn).await.unwrap();
    let rows_a = snapshot(&db, &a).await;

    let objects_b = objects_of(&objects(&b));
    let planned = match plan_database(
        &db.conn,
        &objects_b,
        PlanOptions {
            allow_destructive: true,
        },
    )
    .await
    {
        Ok(planned) => planned,
        // Duplicate values under a new unique index: refused up front, nothing touched.
        Err(SchemaError::Plan(PlanError::Conflicts { .. })) => {
            assert_eq!(introspect(&db.conn).await.unwrap(), schema_a);
            assert_eq!(snapshot(&db, &a).await, rows_a);
            return;
        }
        Err(other) => panic!("planning failed: {other}"),
    };

    // Failure injection: a statement that fails midway leaves the database at A.
    let mut broken = planned.plan.clone();
    let at = fail_at % (broken.statements.len() + 1);
    broken.statements.insert(
        at,
        MigrationStatement {
            sql: "SELECT * FROM _no_such_table".into(),
            reversible: true,
            rollback_sql: None,
            order: 0,
        },
    );
    for (i, s) in broken.statements.iter_mut().enumerate() {
        s.order = i as u64;
    }
    assert!(apply_plan(&db.conn, &broken).await.is_err());
    assert_eq!(
        introspect(&db.conn).await.unwrap(),
        schema_a,
        "failed apply changed the schema"
    );
    assert_eq!(snapshot(&db, &a).await, rows_a, "failed apply changed rows");

    apply_plan(&db.conn, &planned.plan).await.unwrap();
    db.assert_converged(&objects_b).await;
    // Every hand-made object is intact (an index goes only with its table).
    for (kind, name, table) in &made {
        let present = db
            .rows(&format!(
                "SELECT count(*) FROM sqlite_master WHERE type = '{kind}' AND name = '{name}'"
            ))
            .await;
        let expected = i64::from(*kind != "index" || b.contains_key(table.as_str()));
        assert_eq!(present[0][0], Value::Integer(expected), "{kind} {name}");
        if *kind == "view" {
            db.rows(&format!("SELECT * FROM {name}")).await;
        }
    }

    // A reversible plan's rollback brings the schema back to A, keeping the rows; then forward again.
    if let Some(rollback) = rollback_plan(&planned.plan) {
        apply_plan(&db.conn, &rollback).await.unwrap();
        assert!(
            introspect(&db.conn)
                .await
                .unwrap()
                .same_definition(&schema_a),
            "rollback did not restore A"
        );
        for table in a.keys() {
            assert_eq!(
                db.rows(&format!("SELECT count(*) FROM \"{table}\"")).await[0][0],
                Value::Integer(rows as i64)
            );
        }
        apply_plan(&db.conn, &planned.plan).await.unwrap();
        db.assert_converged(&objects_b).await;
    }

    // Kept tables keep their rows; kept columns of the same type keep their values (a column
    // that became required has its NULLs filled by the default).
    for (table, fields) in &b {
        let Some(old_fields) = a.get(table) else {
            continue;
        };
        let ids = db
            .rows(&format!("SELECT id FROM \"{table}\" ORDER BY id"))
            .await;
        assert_eq!(ids.len(), rows, "{table}: rows kept");
        for (name, f) in fields {
            let Some(old) = old_fields.get(name) else {
                continue;
            };
            if old.field_type != f.field_type {
                continue;
            }
            let now: Vec<Value> = db
                .rows(&format!("SELECT \"{name}\" FROM \"{table}\" ORDER BY id"))
                .await
                .into_iter()
                .map(|mut r| r.remove(0))
                .collect();
            let before = &rows_a[&(table.to_string(), name.to_string())];
            for (was, is) in before.iter().zip(&now) {
                if *was != Value::Null || !f.required {
                    assert_eq!(was, is, "{table}.{name} changed");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_migrations_converge_and_keep_data(a in schema_spec(), b in schema_spec(), rows in 0usize..5, nulls in any::<u8>(), fail_at in any::<usize>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_case(a, b, rows, nulls, fail_at));
    }

    #[test]
    fn hand_made_views_triggers_and_indexes_survive_or_the_plan_is_refused(a in schema_spec(), edits in proptest::collection::vec(any::<u8>(), 1..24), rows in 0usize..4, nulls in any::<u8>(), fail_at in any::<usize>(), extras in 1u32..512) {
        let b = evolve(&a, &edits);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_case_with(a, b, rows, nulls, fail_at, extras));
    }

    #[test]
    fn evolved_schemas_converge_keep_data_and_roll_back(a in schema_spec(), edits in proptest::collection::vec(any::<u8>(), 1..24), rows in 0usize..5, nulls in any::<u8>(), fail_at in any::<usize>()) {
        let b = evolve(&a, &edits);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_case(a, b, rows, nulls, fail_at));
    }
}
