//! Situations from public bug reports of other SQLite migration tools (issue 13), each with its
//! right values, and one more case of each kind: objects the engine does not own survive and
//! are left alone; declared renames are honoured or refused; no statement outgrows SQLite's
//! parser; data-dependent changes are checked against the rows, and records are never deleted.

use fleet_schema::{PlanError, SchemaError, UnmanagedKind};
use libsql::Value;
use serde_json::json;

use crate::TestDb;
use crate::changes::{conflicts, is_destructive};

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn int(n: i64) -> Value {
    Value::Integer(n)
}

fn vendor(rating: serde_json::Value) -> serde_json::Value {
    json!([{"name": "vendor", "fields": {
        "name": {"type": "text", "required": true},
        "rating": rating,
        "notes": {"type": "textarea"}
    }}])
}

async fn vendors() -> TestDb {
    let db = TestDb::new().await;
    db.deploy(&vendor(json!({"type": "number"})), false)
        .await
        .unwrap();
    db.exec(
        "INSERT INTO vendor (id, name, rating, notes) VALUES
           ('v1', 'Acme', 4, 'good'), ('v2', 'Globex', NULL, 'late'), ('v3', 'Initech', 2, NULL)",
    )
    .await;
    db
}

async fn names(db: &TestDb, sql: &str) -> Vec<Value> {
    db.rows(sql)
        .await
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect()
}

// 1. A view over a table that needs a rebuild.
#[tokio::test]
async fn a_view_over_a_rebuilt_table_survives_with_its_rows() {
    let db = vendors().await;
    db.exec("CREATE VIEW vendor_names AS SELECT id, name FROM vendor")
        .await;
    let planned = db
        .deploy(&vendor(json!({"type": "number", "defaultValue": 3})), false)
        .await
        .unwrap();
    assert!(
        planned
            .plan
            .statements
            .iter()
            .any(|s| s.sql.contains("_fleet_rebuild_vendor")),
        "a default change rebuilds"
    );
    assert!(planned.plan.reversible, "{:#?}", planned.plan);
    assert_eq!(
        db.rows("SELECT id, name FROM vendor_names ORDER BY id")
            .await,
        vec![
            vec![text("v1"), text("Acme")],
            vec![text("v2"), text("Globex")],
            vec![text("v3"), text("Initech")]
        ]
    );
    assert!(
        planned
            .unmanaged
            .iter()
            .any(|u| u.kind == UnmanagedKind::View && u.name == "vendor_names")
    );
}

// 1, same kind: a view over that view, a trigger on another table whose body names the rebuilt
// table, and a trigger on the rebuilt table itself.
#[tokio::test]
async fn views_over_views_and_triggers_naming_a_rebuilt_table_survive_and_still_fire() {
    let db = vendors().await;
    db.exec(
        "CREATE TABLE audit (at TEXT, what TEXT);
         CREATE VIEW vendor_names AS SELECT id, name FROM vendor;
         CREATE VIEW vendor_count AS SELECT count(*) AS n FROM vendor_names;
         CREATE TRIGGER audit_touch AFTER INSERT ON audit BEGIN
           UPDATE vendor SET notes = 'audited' WHERE id = NEW.what;
         END;
         CREATE TRIGGER vendor_logged AFTER INSERT ON vendor BEGIN
           INSERT INTO audit (at, what) VALUES ('insert', NEW.id);
         END;",
    )
    .await;
    db.deploy(&vendor(json!({"type": "number", "defaultValue": 3})), false)
        .await
        .unwrap();
    assert_eq!(names(&db, "SELECT n FROM vendor_count").await, [int(3)]);
    // Both triggers are back: the insert logs, the log touches the vendor.
    db.exec("INSERT INTO vendor (id, name) VALUES ('v4', 'Umbrella')")
        .await;
    assert_eq!(
        db.rows("SELECT rating, notes FROM vendor WHERE id = 'v4'")
            .await,
        vec![vec![Value::Real(3.0), text("audited")]]
    );
    let kinds = names(
        &db,
        "SELECT type || ':' || name FROM sqlite_master WHERE type IN ('view', 'trigger') ORDER BY name",
    )
    .await;
    assert_eq!(
        kinds,
        [
            text("trigger:audit_touch"),
            text("view:vendor_count"),
            text("trigger:vendor_logged"),
            text("view:vendor_names")
        ]
    );
}

// 1, same kind: a generated column, a hand-made index and a hand-added column on a rebuilt
// table are kept as they were defined.
#[tokio::test]
async fn generated_columns_hand_made_indexes_and_columns_survive_a_rebuild() {
    let db = vendors().await;
    db.exec(
        "ALTER TABLE vendor ADD COLUMN score REAL GENERATED ALWAYS AS (coalesce(rating, 0) * 10) VIRTUAL;
         ALTER TABLE vendor ADD COLUMN legacy_code TEXT DEFAULT 'x';
         UPDATE vendor SET legacy_code = 'L-' || id;
         CREATE INDEX vendor_by_notes ON vendor (notes);",
    )
    .await;
    let planned = db
        .deploy(&vendor(json!({"type": "number", "defaultValue": 3})), false)
        .await
        .unwrap();
    let kept: Vec<(UnmanagedKind, &str)> = planned
        .unmanaged
        .iter()
        .filter(|u| u.table.as_deref() == Some("vendor"))
        .map(|u| (u.kind, u.name.as_str()))
        .collect();
    assert!(
        kept.contains(&(UnmanagedKind::GeneratedColumn, "score")),
        "{kept:?}"
    );
    assert!(
        kept.contains(&(UnmanagedKind::Column, "legacy_code")),
        "{kept:?}"
    );
    assert!(
        kept.contains(&(UnmanagedKind::Index, "vendor_by_notes")),
        "{kept:?}"
    );
    assert_eq!(
        db.rows("SELECT id, score, legacy_code FROM vendor ORDER BY id")
            .await,
        vec![
            vec![text("v1"), Value::Real(40.0), text("L-v1")],
            vec![text("v2"), Value::Real(0.0), text("L-v2")],
            vec![text("v3"), Value::Real(20.0), text("L-v3")]
        ]
    );
    assert_eq!(
        names(&db, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'vendor' AND sql IS NOT NULL").await,
        [text("vendor_by_notes")]
    );
    // Required over the hand-added column's table: the rollback of the plan keeps it too.
    let rollback = fleet_schema::rollback_plan(&planned.plan).expect("reversible");
    fleet_schema::apply_plan(&db.conn, &rollback).await.unwrap();
    assert_eq!(
        names(&db, "SELECT legacy_code FROM vendor ORDER BY id").await,
        [text("L-v1"), text("L-v2"), text("L-v3")]
    );
}

// 1, the refusal side: a view that cannot fit the new table rolls the whole apply back.
#[tokio::test]
async fn a_view_that_would_no_longer_fit_is_refused_and_everything_left() {
    let db = vendors().await;
    db.exec("CREATE VIEW vendor_notes AS SELECT id, notes FROM vendor")
        .await;
    let without_notes = json!([{"name": "vendor", "fields": {
        "name": {"type": "text", "required": true},
        "rating": {"type": "number", "defaultValue": 3}
    }}]);
    let refused = conflicts(db.deploy(&without_notes, true).await);
    assert_eq!(
        refused,
        [
            "vendor_notes: the view names vendor.notes, which this change removes or renames; change or drop the view first"
        ]
    );
    assert_eq!(
        names(&db, "SELECT notes FROM vendor_notes ORDER BY id").await,
        [text("good"), text("late"), Value::Null]
    );
}

// 2. A declared rename into a name the same change frees.
#[tokio::test]
async fn a_rename_into_a_freed_name_moves_the_values_and_drops_the_old_holder() {
    let db = TestDb::new().await;
    db.deploy(
        &json!([{"name": "article", "fields": {"title": {"type": "text"}, "headline": {"type": "text"}}}]),
        false,
    )
    .await
    .unwrap();
    db.exec("INSERT INTO article (id, title, headline) VALUES ('a1', 'old title 1', 'Headline 1'), ('a2', 'old title 2', 'Headline 2')")
        .await;
    let v2 = json!([{"name": "article", "fields": {"title": {"type": "text", "renamedFrom": "headline"}}}]);
    assert_eq!(
        is_destructive(db.deploy(&v2, false).await),
        ["article.title"],
        "the old title is dropped: refused without the flag"
    );
    db.deploy(&v2, true).await.unwrap();
    assert_eq!(
        db.rows("SELECT id, title FROM article ORDER BY id").await,
        vec![
            vec![text("a1"), text("Headline 1")],
            vec![text("a2"), text("Headline 2")]
        ]
    );
    let columns = names(
        &db,
        "SELECT name FROM pragma_table_info('article') ORDER BY cid",
    )
    .await;
    assert_eq!(
        columns,
        [
            text("id"),
            text("created_at"),
            text("updated_at"),
            text("title")
        ]
    );
}

// 2, same kind: a swap of two field names, and a chain, within one change.
#[tokio::test]
async fn swaps_and_chains_of_renames_keep_every_value() {
    let db = TestDb::new().await;
    db.deploy(
        &json!([{"name": "person", "fields": {"given": {"type": "text"}, "family": {"type": "text"}, "a": {"type": "text"}, "b": {"type": "text"}}}]),
        false,
    )
    .await
    .unwrap();
    db.exec(
        "INSERT INTO person (id, given, family, a, b) VALUES ('p1', 'Ada', 'Lovelace', 'A', 'B')",
    )
    .await;
    let planned = db
        .deploy(
            &json!([{"name": "person", "fields": {
                "given": {"type": "text", "renamedFrom": "family"},
                "family": {"type": "text", "renamedFrom": "given"},
                "c": {"type": "text", "renamedFrom": "b"},
                "b": {"type": "text", "renamedFrom": "a"}
            }}]),
            false,
        )
        .await
        .unwrap();
    assert!(planned.losses.is_empty());
    assert!(planned.plan.reversible);
    assert_eq!(
        db.rows("SELECT given, family, b, c FROM person").await,
        vec![vec![text("Lovelace"), text("Ada"), text("A"), text("B")]]
    );
    // The reverse plan swaps back.
    let rollback = fleet_schema::rollback_plan(&planned.plan).unwrap();
    fleet_schema::apply_plan(&db.conn, &rollback).await.unwrap();
    assert_eq!(
        db.rows("SELECT given, family, a, b FROM person").await,
        vec![vec![text("Ada"), text("Lovelace"), text("A"), text("B")]]
    );
}

// 2, same kind: a hint that contradicts the bundle is refused; one with nothing to rename is
// said out loud.
#[tokio::test]
async fn contradicting_renames_are_refused_and_unused_ones_are_noted() {
    let db = TestDb::new().await;
    db.deploy(
        &json!([{"name": "article", "fields": {"title": {"type": "text"}, "headline": {"type": "text"}}}]),
        false,
    )
    .await
    .unwrap();
    let both = json!([{"name": "article", "fields": {
        "title": {"type": "text", "renamedFrom": "headline"},
        "headline": {"type": "text"}
    }}]);
    let refused = conflicts(db.deploy(&both, true).await);
    assert!(
        refused[0].starts_with(
            "article.title: declares renamedFrom \"headline\", but \"headline\" is still wanted"
        ),
        "{refused:?}"
    );
    let twice = json!([{"name": "article", "fields": {
        "x": {"type": "text", "renamedFrom": "headline"},
        "y": {"type": "text", "renamedFrom": "headline"},
        "title": {"type": "text"}
    }}]);
    let refused = conflicts(db.deploy(&twice, true).await);
    assert!(
        refused[0].contains("x, y all declare renamedFrom \"headline\""),
        "{refused:?}"
    );
    let unused = json!([{"name": "article", "fields": {
        "title": {"type": "text"},
        "headline": {"type": "text"},
        "summary": {"type": "text", "renamedFrom": "abstract_text"}
    }}]);
    let planned = db.deploy(&unused, false).await.unwrap();
    assert_eq!(
        planned.notes,
        [
            "article.summary: renamedFrom \"abstract_text\" is not used — there is no \"abstract_text\", so \"summary\" is new and starts empty"
        ]
    );
}

// 3. A full-text index in the tenant's database.
#[tokio::test]
async fn a_full_text_table_and_its_shadow_tables_are_left_alone() {
    let db = vendors().await;
    db.exec(
        "CREATE VIRTUAL TABLE vendor_search USING fts5(name, notes);
         INSERT INTO vendor_search (name, notes) SELECT name, notes FROM vendor;",
    )
    .await;
    let v2 = json!([{"name": "vendor", "fields": {
        "name": {"type": "text", "required": true},
        "rating": {"type": "number"},
        "notes": {"type": "textarea"},
        "phone": {"type": "phone"}
    }}]);
    let planned = db.deploy(&v2, false).await.unwrap();
    assert!(planned.losses.is_empty() && !planned.diff.has_breaking_changes);
    assert_eq!(planned.diff.summary.added, 1, "{:#?}", planned.diff);
    assert_eq!(planned.diff.summary.removed, 0);
    let unmanaged: Vec<(UnmanagedKind, &str)> = planned
        .unmanaged
        .iter()
        .map(|u| (u.kind, u.name.as_str()))
        .collect();
    assert!(unmanaged.contains(&(UnmanagedKind::VirtualTable, "vendor_search")));
    assert!(unmanaged.contains(&(UnmanagedKind::ShadowTable, "vendor_search_data")));
    db.exec("UPDATE vendor SET phone = '555' WHERE id = 'v1'")
        .await;
    assert_eq!(
        names(
            &db,
            "SELECT name FROM vendor_search WHERE vendor_search MATCH 'late'"
        )
        .await,
        [text("Globex")]
    );
}

// 3, same kind: a table someone created by hand is not the engine's — never "removed".
#[tokio::test]
async fn a_hand_made_table_is_unmanaged_but_a_removed_object_is_dropped() {
    let db = vendors().await;
    db.exec("CREATE TABLE scratch_notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO scratch_notes (body) VALUES ('keep me');")
        .await;
    let with_deal = json!([
        {"name": "vendor", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}, "notes": {"type": "textarea"}}},
        {"name": "deal", "fields": {"amount": {"type": "currency"}}}
    ]);
    let planned = db.deploy(&with_deal, false).await.unwrap();
    assert!(
        planned
            .unmanaged
            .iter()
            .any(|u| u.kind == UnmanagedKind::Table && u.name == "scratch_notes")
    );
    // Removing `deal` from the bundle removes what the engine registered, and only that.
    assert_eq!(
        is_destructive(db.deploy(&vendor(json!({"type": "number"})), false).await),
        ["deal"]
    );
    db.deploy(&vendor(json!({"type": "number"})), true)
        .await
        .unwrap();
    assert_eq!(
        names(&db, "SELECT body FROM scratch_notes").await,
        [text("keep me")]
    );
    assert!(
        db.rows("SELECT 1 FROM sqlite_master WHERE name = 'deal'")
            .await
            .is_empty()
    );
}

// 3, same kind: a table another owner (an app) registered is never touched by the platform's
// plan, and claiming it is refused.
#[tokio::test]
async fn another_owners_table_is_left_alone_and_cannot_be_claimed() {
    let db = vendors().await;
    let app_object = json!({"name": "ticket", "fields": {"subject": {"type": "text"}}});
    db.exec(&format!(
        "CREATE TABLE ticket (id TEXT NOT NULL PRIMARY KEY, created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), \
           updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), subject TEXT);
         INSERT INTO sys_metadata (id, metadata_type, metadata_name, body, source) VALUES ('object:ticket', 'object', 'ticket', '{app_object}', 'app:helpdesk');"
    ))
    .await;
    let planned = db
        .deploy(&vendor(json!({"type": "number"})), false)
        .await
        .unwrap();
    assert!(planned.plan.statements.is_empty(), "{:#?}", planned.plan);
    let refused = conflicts(
        db.deploy(
            &json!([
                {"name": "vendor", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}, "notes": {"type": "textarea"}}},
                app_object
            ]),
            true,
        )
        .await,
    );
    assert_eq!(
        refused,
        [
            "ticket: the table belongs to app helpdesk, which registered it",
            "ticket: the object name is registered by app helpdesk"
        ]
    );
    assert_eq!(
        names(
            &db,
            "SELECT source FROM sys_metadata WHERE metadata_name = 'ticket'"
        )
        .await,
        [text("app:helpdesk")]
    );
}

// 4. A wide object.
#[tokio::test]
async fn a_wide_object_becomes_required_without_outgrowing_the_parser() {
    const WIDTH: usize = 1050;
    let db = TestDb::new().await;
    let fields = |required: bool| {
        let map: serde_json::Map<String, serde_json::Value> = (0..WIDTH)
            .map(|i| {
                (
                    format!("q{i}"),
                    json!({"type": "text", "required": required}),
                )
            })
            .collect();
        json!([{"name": "survey", "fields": map}])
    };
    db.deploy(&fields(false), false).await.unwrap();
    let columns: Vec<String> = (0..WIDTH).map(|i| format!("q{i}")).collect();
    for row in 0..2 {
        let values: Vec<String> = (0..WIDTH).map(|i| format!("'r{row}a{i}'")).collect();
        db.exec(&format!(
            "INSERT INTO survey (id, {}) VALUES ('s{row}', {})",
            columns.join(", "),
            values.join(", ")
        ))
        .await;
    }
    db.deploy(&fields(true), false).await.unwrap();
    let not_null = names(
        &db,
        "SELECT count(*) FROM pragma_table_info('survey') WHERE \"notnull\" = 1",
    )
    .await;
    assert_eq!(not_null, [int(WIDTH as i64 + 3)]);
    assert_eq!(
        db.rows("SELECT q0, q1049 FROM survey ORDER BY id").await,
        vec![
            vec![text("r0a0"), text("r0a1049")],
            vec![text("r1a0"), text("r1a1049")]
        ]
    );
}

// 5. Required over NULLs never deletes records.
#[tokio::test]
async fn required_over_nulls_is_refused_with_the_field_and_the_count_flag_or_not() {
    let db = TestDb::new().await;
    let account = |employees: serde_json::Value| json!([{"name": "account", "fields": {"employees": employees}}]);
    db.deploy(&account(json!({"type": "number"})), false)
        .await
        .unwrap();
    db.exec("INSERT INTO account (id, employees) VALUES ('a1', 10), ('a2', NULL), ('a3', 30)")
        .await;
    for allow_destructive in [false, true] {
        let refused = conflicts(
            db.deploy(
                &account(json!({"type": "number", "required": true})),
                allow_destructive,
            )
            .await,
        );
        assert_eq!(
            refused,
            [
                "account.employees: becomes required, but 1 row(s) have no value; give the field a defaultValue (which fills them) or fill them first"
            ]
        );
    }
    assert_eq!(names(&db, "SELECT count(*) FROM account").await, [int(3)]);
    // With a default it backfills.
    db.deploy(
        &account(json!({"type": "number", "required": true, "defaultValue": 0})),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        names(&db, "SELECT employees FROM account ORDER BY id").await,
        [Value::Real(10.0), Value::Real(0.0), Value::Real(30.0)]
    );
}

// 5, same kind: a new required field without a default on a table with rows.
#[tokio::test]
async fn a_new_required_field_without_a_default_is_refused_on_a_table_with_rows() {
    let db = vendors().await;
    let v2 = json!([{"name": "vendor", "fields": {
        "name": {"type": "text", "required": true},
        "rating": {"type": "number"},
        "notes": {"type": "textarea"},
        "tax_id": {"type": "text", "required": true}
    }}]);
    let refused = conflicts(db.deploy(&v2, true).await);
    assert!(
        refused[0].starts_with(
            "vendor.tax_id: a new required field without a defaultValue, but the 3 existing row(s)"
        ),
        "{refused:?}"
    );
    assert_eq!(names(&db, "SELECT count(*) FROM vendor").await, [int(3)]);
}

#[tokio::test]
async fn plans_refused_for_data_name_no_losses() {
    // The destructive flag accepts dropping what the bundle removed and nothing else: a
    // refusal for data is a conflict, never a loss the flag could accept.
    let db = vendors().await;
    let err = db
        .deploy(&vendor(json!({"type": "number", "required": true})), true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SchemaError::Plan(PlanError::Conflicts { .. })),
        "{err}"
    );
}

// From a hostile run: an external-content FTS5 index keyed on rowid stays valid through a
// rebuild (the copy keeps rowids, even after a delete left a gap).
#[tokio::test]
async fn an_external_content_fts_index_stays_valid_through_a_rebuild() {
    let db = vendors().await;
    db.exec(
        "CREATE VIRTUAL TABLE vs USING fts5(name, notes, content='vendor', content_rowid='rowid');
         INSERT INTO vs(vs) VALUES('rebuild');
         CREATE TRIGGER vs_ad AFTER DELETE ON vendor BEGIN
           INSERT INTO vs(vs, rowid, name, notes) VALUES('delete', old.rowid, old.name, old.notes);
         END;
         DELETE FROM vendor WHERE id = 'v2';",
    )
    .await;
    let before = db.rows("SELECT rowid, id FROM vendor ORDER BY rowid").await;
    db.deploy(&vendor(json!({"type": "number", "defaultValue": 3})), false)
        .await
        .unwrap();
    assert_eq!(
        db.rows("SELECT rowid, id FROM vendor ORDER BY rowid").await,
        before
    );
    assert_eq!(
        names(&db, "SELECT name FROM vs WHERE vs MATCH 'initech'").await,
        [text("Initech")]
    );
}

// From a hostile run: what would not survive is refused before anything runs — a view whose
// SQL hides the table behind a comment with an apostrophe, a hand-made index on a column a
// rebuild renames away, a table made by hand with constraints the engine would lose, and a
// view on a table both renamed and rebuilt.
#[tokio::test]
async fn what_a_rebuild_cannot_keep_is_refused_up_front() {
    let db = vendors().await;
    db.exec("CREATE VIEW v1 AS SELECT id, name -- it's the list\nFROM vendor")
        .await;
    let planned = db
        .deploy(&vendor(json!({"type": "number", "defaultValue": 3})), false)
        .await
        .unwrap();
    assert!(
        planned.plan.statements[0]
            .sql
            .starts_with("DROP VIEW \"v1\"")
    );
    assert_eq!(names(&db, "SELECT count(*) FROM v1").await, [int(3)]);

    db.exec("CREATE INDEX by_rating ON vendor (rating)").await;
    let renamed = json!([{"name": "vendor", "fields": {
        "name": {"type": "text", "required": true},
        "score": {"type": "number", "defaultValue": 5, "renamedFrom": "rating"},
        "notes": {"type": "textarea"}
    }}]);
    let refused = conflicts(db.deploy(&renamed, true).await);
    assert!(
        refused
            .iter()
            .any(|r| r.starts_with("by_rating: the index names vendor.rating")),
        "{refused:?}"
    );

    let moved = json!([{"name": "supplier", "renamedFrom": "vendor", "fields": {
        "name": {"type": "text", "required": true},
        "rating": {"type": "number", "defaultValue": 4},
        "notes": {"type": "textarea"}
    }}]);
    let refused = conflicts(db.deploy(&moved, true).await);
    assert!(
        refused.iter().any(|r| r.starts_with(
            "v1: names vendor, which this change both renames to supplier and rebuilds"
        )),
        "{refused:?}"
    );

    db.exec("CREATE TABLE part (id TEXT NOT NULL PRIMARY KEY, created_at TEXT NOT NULL DEFAULT '', updated_at TEXT NOT NULL DEFAULT '', qty REAL, CHECK (qty > 0))")
        .await;
    let with_part = json!([
        {"name": "vendor", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number", "defaultValue": 3}, "notes": {"type": "textarea"}}},
        {"name": "part", "fields": {"qty": {"type": "number", "required": true, "defaultValue": 1}}}
    ]);
    let refused = conflicts(db.deploy(&with_part, true).await);
    assert!(
        refused.iter().any(|r| r.starts_with("part: the change rebuilds the table, which has definitions the engine did not create and would lose (CHECK (qty > 0))")),
        "{refused:?}"
    );
}

// From a hostile run: text that reads as a number fits a number field ('1.50', '1e3').
#[tokio::test]
async fn numbers_written_as_text_fit_a_number_field() {
    let db = TestDb::new().await;
    let item = |t: &str| json!([{"name": "item", "fields": {"price": {"type": t}}}]);
    db.deploy(&item("text"), false).await.unwrap();
    db.exec(
        "INSERT INTO item (id, price) VALUES ('a', '10'), ('b', '1.50'), ('c', '1e3'), ('d', NULL)",
    )
    .await;
    db.deploy(&item("number"), false).await.unwrap();
    assert_eq!(
        names(&db, "SELECT price FROM item ORDER BY id").await,
        [
            Value::Real(10.0),
            Value::Real(1.5),
            Value::Real(1000.0),
            Value::Null
        ]
    );
}
