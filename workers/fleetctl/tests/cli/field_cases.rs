//! Issue 13's five inputs through `fleetctl db plan|apply` on real files: the right values, the
//! refusals and what `--format text` says about a modified field.

use std::path::{Path, PathBuf};

use predicates::prelude::*;
use serde_json::{Value, json};

use crate::fleetctl;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("tenant.db")
    }

    fn bundle(&self, name: &str, objects: Value) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.bundle.json"));
        let bundle = json!({"manifest": {"version": "1.0.0"}, "objects": objects});
        std::fs::write(&path, bundle.to_string()).unwrap();
        path
    }

    fn run(&self, args: &[&str], bundle: &Path) -> assert_cmd::assert::Assert {
        fleetctl()
            .args(args)
            .arg("--bundle")
            .arg(bundle)
            .arg("--db")
            .arg(self.db())
            .assert()
    }

    async fn exec(&self, sql: &str) {
        let conn = fleet_schema::open_local(&self.db()).await.unwrap();
        conn.execute_batch(sql).await.unwrap();
    }

    async fn rows(&self, sql: &str) -> Vec<Vec<libsql::Value>> {
        let conn = fleet_schema::open_local(&self.db()).await.unwrap();
        let mut rows = conn.query(sql, ()).await.unwrap();
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

fn text(s: &str) -> libsql::Value {
    libsql::Value::Text(s.to_owned())
}

fn vendor(rating: Value, extra: Option<(&str, Value)>) -> Value {
    let mut fields = json!({
        "name": {"type": "text", "required": true},
        "rating": rating,
        "notes": {"type": "textarea"}
    });
    if let Some((name, field)) = extra {
        fields[name] = field;
    }
    json!([{"name": "vendor", "fields": fields}])
}

async fn vendors(case: &Case) {
    let v1 = case.bundle("v1", vendor(json!({"type": "number"}), None));
    case.run(&["db", "apply"], &v1).success();
    case.exec(
        "INSERT INTO vendor (id, name, rating, notes) VALUES
           ('v1', 'Acme', 4, 'good'), ('v2', 'Globex', NULL, 'late'), ('v3', 'Initech', 2, NULL)",
    )
    .await;
}

#[tokio::test]
async fn input_1_a_view_over_a_rebuilt_table() {
    let case = Case::new();
    vendors(&case).await;
    case.exec("CREATE VIEW vendor_names AS SELECT id, name FROM vendor")
        .await;
    let v2 = case.bundle(
        "v2",
        vendor(json!({"type": "number", "defaultValue": 3}), None),
    );
    case.run(&["db", "plan", "--format", "text"], &v2)
        .success()
        .stdout(
            predicate::str::contains("~ field  vendor.rating: default none → 3")
                .and(predicate::str::contains("view vendor_names")),
        );
    case.run(&["db", "apply"], &v2).success();
    assert_eq!(
        case.rows("SELECT id, name FROM vendor_names ORDER BY id")
            .await
            .len(),
        3
    );
}

#[tokio::test]
async fn input_2_a_rename_into_a_name_the_change_frees() {
    let case = Case::new();
    let v1 = case.bundle(
        "v1",
        json!([{"name": "article", "fields": {"title": {"type": "text"}, "headline": {"type": "text"}}}]),
    );
    case.run(&["db", "apply"], &v1).success();
    case.exec("INSERT INTO article (id, title, headline) VALUES ('a1', 'old', 'Headline')")
        .await;
    let v2 = case.bundle(
        "v2",
        json!([{"name": "article", "fields": {"title": {"type": "text", "renamedFrom": "headline"}}}]),
    );
    case.run(&["db", "apply"], &v2)
        .code(1)
        .stderr(predicate::str::contains("article.title: field removed"));
    case.run(&["db", "apply", "--allow-destructive"], &v2)
        .success();
    assert_eq!(
        case.rows("SELECT title FROM article").await,
        vec![vec![text("Headline")]]
    );
}

#[tokio::test]
async fn input_3_a_full_text_index_in_the_database() {
    let case = Case::new();
    vendors(&case).await;
    case.exec(
        "CREATE VIRTUAL TABLE vendor_search USING fts5(name, notes);
         INSERT INTO vendor_search (name, notes) SELECT name, notes FROM vendor;",
    )
    .await;
    let v2 = case.bundle(
        "v2",
        vendor(
            json!({"type": "number"}),
            Some(("phone", json!({"type": "phone"}))),
        ),
    );
    case.run(&["db", "apply"], &v2).success().stdout(
        predicate::str::contains("diff: 1 added, 0 modified, 0 removed")
            .and(predicate::str::contains("virtual table vendor_search")),
    );
    assert_eq!(
        case.rows("SELECT count(*) FROM vendor_search").await,
        vec![vec![libsql::Value::Integer(3)]]
    );
    let out = fleetctl()
        .args(["db", "introspect", "--db"])
        .arg(case.db())
        .assert()
        .success();
    let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let unmanaged: Vec<(&str, &str)> = json["unmanaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["kind"].as_str().unwrap(), u["name"].as_str().unwrap()))
        .collect();
    assert!(
        unmanaged.contains(&("virtual_table", "vendor_search")),
        "{unmanaged:?}"
    );
    assert!(
        unmanaged.contains(&("shadow_table", "vendor_search_config")),
        "{unmanaged:?}"
    );
    assert!(json["tables"].get("vendor_search_data").is_none());
}

#[tokio::test]
async fn input_4_a_wide_object() {
    let case = Case::new();
    let survey = |required: bool| {
        let fields: serde_json::Map<String, Value> = (0..1050)
            .map(|i| {
                (
                    format!("q{i}"),
                    json!({"type": "text", "required": required}),
                )
            })
            .collect();
        json!([{"name": "survey", "fields": fields}])
    };
    let v1 = case.bundle("v1", survey(false));
    case.run(&["db", "apply"], &v1).success();
    let columns: Vec<String> = (0..1050).map(|i| format!("q{i}")).collect();
    for row in 0..2 {
        let values: Vec<String> = (0..1050).map(|i| format!("'{row}.{i}'")).collect();
        case.exec(&format!(
            "INSERT INTO survey (id, {}) VALUES ('s{row}', {})",
            columns.join(", "),
            values.join(", ")
        ))
        .await;
    }
    let v2 = case.bundle("v2", survey(true));
    case.run(&["db", "plan", "--format", "text"], &v2)
        .success()
        .stdout(predicate::str::contains("survey.q0: optional → required"));
    case.run(&["db", "apply"], &v2).success();
    assert_eq!(
        case.rows("SELECT count(*) FROM survey WHERE q1049 IS NOT NULL")
            .await,
        vec![vec![libsql::Value::Integer(2)]]
    );
}

#[tokio::test]
async fn input_5_required_over_nulls_never_deletes_records() {
    let case = Case::new();
    let account =
        |employees: Value| json!([{"name": "account", "fields": {"employees": employees}}]);
    let v1 = case.bundle("v1", account(json!({"type": "number"})));
    case.run(&["db", "apply"], &v1).success();
    case.exec("INSERT INTO account (id, employees) VALUES ('a1', 10), ('a2', NULL), ('a3', 30)")
        .await;
    let v2 = case.bundle("v2", account(json!({"type": "number", "required": true})));
    for flags in [
        &["db", "apply"][..],
        &["db", "apply", "--allow-destructive"],
    ] {
        case.run(flags, &v2)
            .code(1)
            .stderr(predicate::str::contains(
                "account.employees: becomes required, but 1 row(s) have no value",
            ));
    }
    assert_eq!(
        case.rows("SELECT count(*) FROM account").await,
        vec![vec![libsql::Value::Integer(3)]]
    );
    let v3 = case.bundle(
        "v3",
        account(json!({"type": "number", "required": true, "defaultValue": 0})),
    );
    case.run(&["db", "apply"], &v3).success();
    assert_eq!(
        case.rows("SELECT employees FROM account WHERE id = 'a2'")
            .await,
        vec![vec![libsql::Value::Real(0.0)]]
    );
}

#[tokio::test]
async fn on_a_tenant_shaped_file_apply_registers_and_changes_read_in_field_types() {
    let case = Case::new();
    // The system tables (a metadata registry among them), as provisioning creates them.
    let conn = fleet_schema::open_local(&case.db()).await.unwrap();
    fleet_schema::migrate(
        &conn,
        fleet_schema::system::base_objects(),
        fleet_schema::PlanOptions::default(),
    )
    .await
    .unwrap();
    drop(conn);
    let deal = |amount: &str| json!([{"name": "deal", "fields": {"amount": {"type": amount}}}]);
    let v1 = case.bundle("v1", deal("number"));
    case.run(&["db", "apply", "--format", "text"], &v1)
        .success()
        .stdout(predicate::str::contains("registered the bundle's metadata"));
    assert_eq!(
        case.rows("SELECT metadata_name, source FROM sys_metadata")
            .await,
        vec![vec![text("deal"), text("fleetctl:db-apply")]]
    );
    let v2 = case.bundle("v2", deal("text"));
    case.run(&["db", "plan", "--format", "text"], &v2)
        .success()
        .stdout(predicate::str::contains(
            "~ field  deal.amount: number → text",
        ));
    // A table made by hand is not the engine's: removing every object leaves it.
    case.exec("CREATE TABLE notes_by_hand (x TEXT)").await;
    let empty = case.bundle("v3", json!([]));
    case.run(
        &["db", "apply", "--allow-destructive", "--format", "text"],
        &empty,
    )
    .success()
    .stdout(
        predicate::str::contains("- object deal")
            .and(predicate::str::contains("table notes_by_hand")),
    );
    assert_eq!(
        case.rows("SELECT name FROM sqlite_master WHERE name IN ('deal', 'notes_by_hand')")
            .await,
        vec![vec![text("notes_by_hand")]]
    );
}

#[tokio::test]
async fn re_applying_a_swap_plans_nothing() {
    let case = Case::new();
    let v1 = case.bundle(
        "v1",
        json!([{"name": "t", "fields": {"x": {"type": "text"}, "y": {"type": "text"}}}]),
    );
    case.run(&["db", "apply"], &v1).success();
    case.exec("INSERT INTO t (id, x, y) VALUES ('r', 'X', 'Y')")
        .await;
    let swap = case.bundle(
        "v2",
        json!([{"name": "t", "fields": {"x": {"type": "text", "renamedFrom": "y"}, "y": {"type": "text", "renamedFrom": "x"}}}]),
    );
    case.run(&["db", "apply"], &swap).success();
    case.run(&["db", "apply"], &swap)
        .success()
        .stdout(predicate::str::contains("plan: 0 statement(s)"));
    assert_eq!(
        case.rows("SELECT x, y FROM t").await,
        vec![vec![text("Y"), text("X")]]
    );
}

#[tokio::test]
async fn a_refusal_in_json_is_json() {
    let case = Case::new();
    let account =
        |employees: Value| json!([{"name": "account", "fields": {"employees": employees}}]);
    let v1 = case.bundle("v1", account(json!({"type": "number"})));
    case.run(&["db", "apply"], &v1).success();
    case.exec("INSERT INTO account (id) VALUES ('a1')").await;
    let v2 = case.bundle("v2", account(json!({"type": "number", "required": true})));
    let out = case.run(&["db", "plan", "--format", "json"], &v2).code(1);
    let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(json["refused"], "conflicts");
    assert_eq!(json["conflicts"][0]["entity"], "account.employees");
    let gone = case.bundle("v3", json!([]));
    let out = case.run(&["db", "plan", "--format", "json"], &gone).code(1);
    let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(json["refused"], "destructive");
    assert_eq!(json["losses"][0]["entity"], "account");
}
