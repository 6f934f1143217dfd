//! Hostile and broken metadata: a clear issue with a path, and nothing executed.

use fleet_protocol::{DeployBundle, parse_value};
use fleet_schema::{PlanOptions, SchemaError, plan_database};
use serde_json::json;

use crate::{TestDb, objects_of};

async fn tables(db: &TestDb) -> usize {
    db.rows("SELECT count(*) FROM sqlite_master").await[0][0]
        .clone()
        .as_integer()
        .copied()
        .unwrap_or(0) as usize
}

#[tokio::test]
async fn hostile_identifiers_are_issues_and_nothing_runs() {
    // Names that upstream's own pattern already refuses never become objects at all.
    for name in [
        "acc\"ount",
        "a; DROP TABLE x",
        "Account",
        "acc\u{043e}unt",
        "a b",
    ] {
        let bundle =
            json!({"manifest": {"version": "1"}, "objects": [{"name": name, "fields": {}}]});
        let rejected = parse_value::<DeployBundle>(&bundle).unwrap_err();
        assert!(
            rejected.errors().any(|i| i.path.starts_with("objects.")),
            "{name:?}: {rejected}"
        );
    }
    // Names upstream accepts but SQL must not: keywords, reserved prefixes, hostile table/column names.
    let db = TestDb::new().await;
    let objects = objects_of(&json!([
        {"name": "select", "fields": {}},
        {"name": "sqlite_master", "fields": {}},
        {"name": "ok", "tableName": "x\"; DROP TABLE ok; --", "fields": {}},
        {"name": "fine", "fields": {"order": {"type": "text"}, "c": {"type": "text", "columnName": "a'b"}}}
    ]));
    let Err(SchemaError::Desired(err)) =
        plan_database(&db.conn, &objects, PlanOptions::default()).await
    else {
        panic!("hostile names must be refused")
    };
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "objects.select.tableName",
            "objects.sqlite_master.tableName",
            "objects.ok.tableName",
            "objects.fine.fields.order",
            "objects.fine.fields.c"
        ]
    );
    assert_eq!(tables(&db).await, 0, "nothing was executed");
}

#[tokio::test]
async fn unknown_field_types_are_validation_issues_with_paths() {
    let bundle = json!({"manifest": {"version": "1"}, "objects": [{"name": "a", "fields": {"x": {"type": "uuid"}, "y": {"type": "text"}}}]});
    let rejected = parse_value::<DeployBundle>(&bundle).unwrap_err();
    let errors: Vec<_> = rejected.errors().map(|i| i.path.as_str()).collect();
    assert_eq!(errors, ["objects.a.fields.x.type"]);
}

#[tokio::test]
async fn cyclic_required_lookups_are_refused() {
    let db = TestDb::new().await;
    let objects = objects_of(&json!([
        {"name": "a", "fields": {"b": {"type": "lookup", "reference": "b", "required": true}}},
        {"name": "b", "fields": {"c": {"type": "lookup", "reference": "c", "required": true}}},
        {"name": "c", "fields": {"a": {"type": "master_detail", "reference": "a"}}}
    ]));
    let Err(SchemaError::Desired(err)) =
        plan_database(&db.conn, &objects, PlanOptions::default()).await
    else {
        panic!("a cycle must be refused")
    };
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].code.as_deref(), Some("cyclic_reference"));
    assert!(
        err.issues[0].message.contains("a → b → c → a"),
        "{}",
        err.issues[0].message
    );
    assert_eq!(tables(&db).await, 0);
}
