//! One test per change kind: the schema after apply (by introspection) and the rows (by query).

use fleet_schema::{PlanError, SchemaError};
use libsql::Value;
use serde_json::json;

use crate::TestDb;

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// The conflicts a refused plan names, as `entity: why`.
pub fn conflicts(result: Result<fleet_schema::Planned, SchemaError>) -> Vec<String> {
    match result {
        Err(SchemaError::Plan(PlanError::Conflicts { conflicts })) => conflicts
            .into_iter()
            .map(|c| format!("{}: {}", c.entity, c.why))
            .collect(),
        other => panic!("expected a refusal for conflicts, got {other:?}"),
    }
}

pub fn is_destructive(result: Result<fleet_schema::Planned, SchemaError>) -> Vec<String> {
    match result {
        Err(SchemaError::Plan(PlanError::Destructive { losses, .. })) => {
            losses.into_iter().map(|l| l.entity).collect()
        }
        other => panic!("expected a destructive refusal, got {other:?}"),
    }
}

async fn crm() -> TestDb {
    let db = TestDb::new().await;
    db.migrate(
        &json!([
            {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}},
            {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    db.exec("INSERT INTO account (id, name, rating) VALUES ('a1', 'Acme', 4.5), ('a2', 'Globex', NULL);
             INSERT INTO contact (id, email, account) VALUES ('c1', 'x@acme.example', 'a1'), ('c2', NULL, NULL);")
        .await;
    db
}

#[tokio::test]
async fn add_object_creates_its_table_with_system_columns() {
    let db = crm().await;
    db.migrate(
        &json!([
            {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}},
            {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}},
            {"name": "deal", "namespace": "crm", "fields": {"amount": {"type": "currency"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    db.exec("INSERT INTO crm_deal (id, amount) VALUES ('d1', 10)")
        .await;
    let rows = db
        .rows("SELECT id, amount, created_at IS NOT NULL FROM crm_deal")
        .await;
    assert_eq!(
        rows,
        vec![vec![text("d1"), Value::Real(10.0), Value::Integer(1)]]
    );
}

#[tokio::test]
async fn drop_object_is_refused_unless_destructive_then_the_table_goes() {
    let db = crm().await;
    let only_account = json!([{"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}}]);
    assert_eq!(
        is_destructive(db.migrate(&only_account, false).await),
        ["contact"]
    );
    assert_eq!(
        db.rows("SELECT count(*) FROM contact").await[0][0],
        Value::Integer(2),
        "untouched after refusal"
    );
    let planned = db.migrate(&only_account, true).await.unwrap();
    assert!(planned.diff.has_breaking_changes);
    assert!(
        db.rows("SELECT name FROM sqlite_master WHERE name = 'contact'")
            .await
            .is_empty()
    );
    assert_eq!(
        db.rows("SELECT count(*) FROM account").await[0][0],
        Value::Integer(2)
    );
}

#[tokio::test]
async fn rename_object_keeps_its_rows() {
    let db = crm().await;
    db.migrate(
        &json!([
            {"name": "company", "renamedFrom": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}},
            {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "company"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        db.rows("SELECT id, name FROM company ORDER BY id").await,
        vec![
            vec![text("a1"), text("Acme")],
            vec![text("a2"), text("Globex")]
        ]
    );
    assert_eq!(
        db.rows("SELECT account FROM contact WHERE id = 'c1'").await[0][0],
        text("a1")
    );
}

#[tokio::test]
async fn add_field_uses_add_column_and_keeps_rows() {
    let db = crm().await;
    let planned = db
        .migrate(
            &json!([
                {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"},
                 "tier": {"type": "select", "required": true, "defaultValue": "basic"}, "website": {"type": "url"}}},
                {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
            ]),
            false,
        )
        .await
        .unwrap();
    assert!(
        planned
            .plan
            .statements
            .iter()
            .all(|s| s.sql.starts_with("ALTER TABLE \"account\" ADD COLUMN")),
        "{:#?}",
        planned.plan
    );
    assert_eq!(
        db.rows("SELECT name, tier, website FROM account ORDER BY id")
            .await[0],
        vec![text("Acme"), text("basic"), Value::Null]
    );
}

#[tokio::test]
async fn drop_field_is_refused_unless_destructive_and_keeps_other_values() {
    let db = crm().await;
    let without_rating = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}}},
        {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
    ]);
    assert_eq!(
        is_destructive(db.migrate(&without_rating, false).await),
        ["account.rating"]
    );
    db.migrate(&without_rating, true).await.unwrap();
    assert_eq!(
        db.rows("SELECT id, name FROM account ORDER BY id").await[1],
        vec![text("a2"), text("Globex")]
    );
}

#[tokio::test]
async fn rename_field_keeps_its_values() {
    let db = crm().await;
    db.migrate(
        &json!([
            {"name": "account", "fields": {"title": {"type": "text", "required": true, "renamedFrom": "name"}, "rating": {"type": "number"}}},
            {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        db.rows("SELECT title FROM account ORDER BY id").await,
        vec![vec![text("Acme")], vec![text("Globex")]]
    );
}

#[tokio::test]
async fn type_change_rebuilds_the_table_narrowing_is_checked_against_the_values() {
    let db = crm().await;
    // number → text widens: no refusal, values kept as text.
    let planned = db
        .migrate(
            &json!([
                {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "text"}}},
                {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
            ]),
            false,
        )
        .await
        .unwrap();
    assert!(
        planned.plan.statements[0]
            .sql
            .contains("CREATE TABLE \"_fleet_rebuild_account\""),
        "{:#?}",
        planned.plan
    );
    assert!(planned.plan.reversible, "a lossless rebuild has a rollback");
    assert_eq!(
        db.rows("SELECT rating FROM account WHERE id = 'a1'").await[0][0],
        text("4.5")
    );
    // text → number narrows: refused while a value is not a number, flag or not …
    let back = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}},
        {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
    ]);
    db.exec("INSERT INTO account (id, name, rating) VALUES ('a3', 'Initech', 'five')")
        .await;
    for allow_destructive in [false, true] {
        let refused = conflicts(db.migrate(&back, allow_destructive).await);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].starts_with("account.rating: 1 row(s) hold values that do not fit number"),
            "{refused:?}"
        );
    }
    assert_eq!(
        db.rows("SELECT rating FROM account WHERE id = 'a3'").await[0][0],
        text("five"),
        "untouched after refusal"
    );
    // … and applies once every value fits (not reversible: 4.5 would come back as '4.5').
    db.exec("UPDATE account SET rating = '5' WHERE id = 'a3'")
        .await;
    let planned = db.migrate(&back, false).await.unwrap();
    assert!(!planned.plan.reversible);
    assert_eq!(
        db.rows("SELECT rating FROM account WHERE id = 'a3'").await[0][0],
        Value::Real(5.0)
    );
    assert_eq!(
        db.rows("SELECT rating FROM account WHERE id = 'a1'").await[0][0],
        Value::Real(4.5)
    );
    assert_eq!(
        db.rows("SELECT count(*) FROM contact WHERE account = 'a1'")
            .await[0][0],
        Value::Integer(1),
        "references survive the rebuild"
    );
}

#[tokio::test]
async fn required_on_fills_from_the_default_or_is_refused_never_deleting_rows() {
    let db = crm().await;
    let with_default = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number", "required": true, "defaultValue": 0}}},
        {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
    ]);
    db.migrate(&with_default, false).await.unwrap();
    assert_eq!(
        db.rows("SELECT rating FROM account ORDER BY id").await,
        vec![vec![Value::Real(4.5)], vec![Value::Real(0.0)]]
    );

    let db = crm().await;
    let no_default = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}},
        {"name": "contact", "fields": {"email": {"type": "email", "required": true}, "account": {"type": "lookup", "reference": "account"}}}
    ]);
    for allow_destructive in [false, true] {
        assert_eq!(
            conflicts(db.migrate(&no_default, allow_destructive).await),
            [
                "contact.email: becomes required, but 1 row(s) have no value; give the field a defaultValue (which fills them) or fill them first"
            ]
        );
    }
    assert_eq!(
        db.rows("SELECT id FROM contact ORDER BY id").await,
        vec![vec![text("c1")], vec![text("c2")]],
        "no record is deleted"
    );
    db.exec("UPDATE contact SET email = 'y@example.org' WHERE id = 'c2'")
        .await;
    db.migrate(&no_default, false).await.unwrap();

    // required off is never destructive.
    db.migrate(
        &json!([
            {"name": "account", "fields": {"name": {"type": "text"}, "rating": {"type": "number"}}},
            {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    db.exec("INSERT INTO account (id) VALUES ('a3')").await;
}

#[tokio::test]
async fn unique_on_and_off_is_an_index_and_duplicates_are_a_conflict() {
    let db = crm().await;
    let unique_name = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true, "unique": true}, "rating": {"type": "number"}}},
        {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
    ]);
    let planned = db.migrate(&unique_name, false).await.unwrap();
    assert_eq!(planned.plan.statements.len(), 1);
    assert!(
        db.conn
            .execute("INSERT INTO account (id, name) VALUES ('a9', 'Acme')", ())
            .await
            .is_err(),
        "unique is enforced"
    );
    db.migrate(
        &json!([
            {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}},
            {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    db.exec("INSERT INTO account (id, name) VALUES ('a9', 'Acme')")
        .await;
    match db.migrate(&unique_name, true).await {
        Err(SchemaError::Plan(PlanError::Conflicts { conflicts })) => {
            assert_eq!(conflicts[0].entity, "uq_account_name")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn index_add_and_drop() {
    // Deployed (registered): a declared index the bundle drops is known to be the engine's.
    let db = TestDb::new().await;
    let indexed = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}},
         "indexes": [{"fields": ["rating", "name"]}, {"name": "account_by_name", "fields": ["name"], "unique": true}]},
        {"name": "contact", "fields": {"email": {"type": "email", "index": true}, "account": {"type": "lookup", "reference": "account"}}}
    ]);
    db.deploy(&indexed, false).await.unwrap();
    let names = db.rows("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' AND tbl_name NOT LIKE 'sys_%' ORDER BY name").await;
    assert_eq!(
        names,
        vec![
            vec![text("account_by_name")],
            vec![text("ix_account_rating_name")],
            vec![text("ix_contact_email")]
        ]
    );
    db.deploy(
        &json!([
            {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}},
            {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    assert!(
        db.rows("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' AND tbl_name NOT LIKE 'sys_%'")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn lookup_add_and_drop() {
    let db = crm().await;
    let with_owner = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"},
         "parent": {"type": "lookup", "reference": "account", "deleteBehavior": "cascade"}}},
        {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
    ]);
    db.migrate(&with_owner, false).await.unwrap();
    db.exec("UPDATE account SET parent = 'a1' WHERE id = 'a2'")
        .await;
    assert!(
        db.conn
            .execute("UPDATE account SET parent = 'nope' WHERE id = 'a1'", ())
            .await
            .is_err(),
        "the key is enforced"
    );
    let without = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number"}}},
        {"name": "contact", "fields": {"email": {"type": "email"}}}
    ]);
    let planned = db.migrate(&without, true).await.unwrap();
    assert!(
        planned
            .plan
            .statements
            .iter()
            .any(|s| s.sql.contains("_fleet_rebuild_contact")),
        "dropping a key column rebuilds"
    );
    assert_eq!(
        db.rows("SELECT id, email FROM contact ORDER BY id").await[0],
        vec![text("c1"), text("x@acme.example")]
    );
}

#[tokio::test]
async fn default_change_rebuilds_and_keeps_rows() {
    let db = crm().await;
    db.migrate(
        &json!([
            {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "number", "defaultValue": 3}}},
            {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    db.exec("INSERT INTO account (id, name) VALUES ('a3', 'Initech')")
        .await;
    assert_eq!(
        db.rows("SELECT rating FROM account ORDER BY id").await,
        vec![
            vec![Value::Real(4.5)],
            vec![Value::Null],
            vec![Value::Real(3.0)]
        ]
    );
}

#[tokio::test]
async fn failing_statement_midway_leaves_the_database_as_it_was() {
    let db = crm().await;
    let before = fleet_schema::introspect(&db.conn).await.unwrap();
    let objects = crate::objects_of(&json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}, "rating": {"type": "text"}, "extra": {"type": "text"}}},
        {"name": "contact", "fields": {"email": {"type": "email"}, "account": {"type": "lookup", "reference": "account"}}},
        {"name": "deal", "fields": {"amount": {"type": "number"}}}
    ]));
    let mut planned = fleet_schema::plan_database(&db.conn, &objects, Default::default())
        .await
        .unwrap();
    let middle = planned.plan.statements.len() / 2;
    planned.plan.statements.insert(
        middle,
        fleet_protocol::MigrationStatement {
            sql: "INSERT INTO no_such_table VALUES (1)".into(),
            reversible: true,
            rollback_sql: None,
            order: 0,
        },
    );
    for (i, s) in planned.plan.statements.iter_mut().enumerate() {
        s.order = i as u64;
    }
    let err = fleet_schema::apply_plan(&db.conn, &planned.plan)
        .await
        .unwrap_err();
    assert_eq!(err.failed_at(), Some(middle));
    let after = fleet_schema::introspect(&db.conn).await.unwrap();
    assert_eq!(before, after, "schema unchanged");
    assert_eq!(
        db.rows("SELECT rating FROM account WHERE id = 'a1'").await[0][0],
        Value::Real(4.5)
    );
    assert_eq!(
        db.rows("PRAGMA foreign_keys").await[0][0],
        Value::Integer(1),
        "foreign keys restored"
    );
}

#[tokio::test]
async fn examples_v1_then_v2_keep_every_row() {
    let db = TestDb::new().await;
    let v1 = crate::example_objects("crm-v1.bundle.json");
    fleet_schema::migrate(&db.conn, &v1, Default::default())
        .await
        .unwrap();
    db.assert_converged(&v1).await;
    db.exec(
        "INSERT INTO crm_account (id, name, industry, annual_revenue) VALUES ('a1', 'Acme', 'software', 1000), ('a2', 'Globex', NULL, NULL);
         INSERT INTO crm_contact (id, first_name, last_name, email, account) VALUES ('c1', 'Ada', 'Lovelace', 'ada@acme.example', 'a1');
         INSERT INTO crm_opportunity (id, title, amount, probability, account, primary_contact) VALUES ('o1', 'Big deal', 5000, 50, 'a1', 'c1');",
    )
    .await;
    let v2 = crate::example_objects("crm-v2.bundle.json");
    let (planned, _) = fleet_schema::migrate(&db.conn, &v2, Default::default())
        .await
        .unwrap();
    assert!(
        planned
            .plan
            .statements
            .iter()
            .any(|s| s.sql.contains("_fleet_rebuild_")),
        "v2 needs a rebuild"
    );
    db.assert_converged(&crate::strip_renames(&v2)).await;
    assert_eq!(
        db.rows("SELECT count(*) FROM crm_account").await[0][0],
        Value::Integer(2)
    );
    assert_eq!(
        db.rows("SELECT company_name, industry FROM crm_account WHERE id = 'a1'")
            .await[0],
        vec![text("Acme"), text("software")]
    );
    assert_eq!(
        db.rows("SELECT title, amount, stage FROM crm_opportunity")
            .await[0],
        vec![text("Big deal"), Value::Real(5000.0), text("prospecting")]
    );
    assert_eq!(
        db.rows("SELECT email FROM crm_contact").await[0][0],
        text("ada@acme.example")
    );
}

/// The column names of `table` as introspected.
async fn columns_of(conn: &libsql::Connection, table: &str) -> Vec<String> {
    let schema = fleet_schema::introspect(conn).await.unwrap();
    schema.tables[table]
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

/// Introspection reads the database's own (`main`) tables, never a connection's `temp` table
/// of the same name — which SQLite's unqualified pragmas would — and so what it caches under
/// a catalog's text is what every database with that catalog holds.
#[tokio::test]
async fn a_temp_table_shadowing_a_table_is_neither_read_nor_cached_for_other_databases() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let table = "CREATE TABLE shadowed_by_temp (id TEXT PRIMARY KEY, kept TEXT)";
    a.conn.execute(table, ()).await.unwrap();
    a.conn
        .execute("CREATE TEMP TABLE shadowed_by_temp (x TEXT, y TEXT)", ())
        .await
        .unwrap();
    assert_eq!(
        columns_of(&a.conn, "shadowed_by_temp").await,
        ["id", "kept"]
    );
    b.conn.execute(table, ()).await.unwrap();
    assert_eq!(
        columns_of(&b.conn, "shadowed_by_temp").await,
        ["id", "kept"]
    );
}

#[tokio::test]
async fn the_plan_for_an_empty_database_is_what_planning_it_gives() {
    use fleet_schema::system::{base_objects, base_schema};
    use fleet_schema::{Owner, PlanOptions};
    let db = TestDb::new().await;
    assert!(fleet_schema::is_empty(&db.conn).await.unwrap());
    let plan_base = async || {
        fleet_schema::plan_database_to(
            &db.conn,
            base_objects(),
            base_schema(),
            PlanOptions::default(),
            &Owner::Platform,
        )
        .await
        .unwrap()
    };
    let planned = plan_base().await;
    let empty = fleet_schema::plan_empty(base_schema(), PlanOptions::default()).unwrap();
    assert_eq!(empty, planned);
    assert!(!empty.plan.statements.is_empty());
    // Applied, the database is no longer empty, and its next plan has nothing to do.
    fleet_schema::apply_plan(&db.conn, &empty.plan)
        .await
        .unwrap();
    assert!(!fleet_schema::is_empty(&db.conn).await.unwrap());
    let again = plan_base().await;
    assert!(again.plan.statements.is_empty(), "{:?}", again.plan);
    // Anything at all in the catalog — a view alone — is not empty.
    let other = TestDb::new().await;
    other
        .conn
        .execute("CREATE VIEW v AS SELECT 1", ())
        .await
        .unwrap();
    assert!(!fleet_schema::is_empty(&other.conn).await.unwrap());
}

#[tokio::test]
async fn a_temp_table_shadowing_the_registry_is_not_read() {
    use fleet_schema::PlanOptions;
    use fleet_schema::system::base_schema;
    let db = TestDb::new().await;
    let empty = fleet_schema::plan_empty(base_schema(), PlanOptions::default()).unwrap();
    fleet_schema::apply_plan(&db.conn, &empty.plan)
        .await
        .unwrap();
    db.conn
        .execute(
            "INSERT INTO main.sys_metadata (id, metadata_type, metadata_name, body, source) \
             VALUES ('object:account', 'object', 'account', '{}', 'app:crm')",
            (),
        )
        .await
        .unwrap();
    // A connection's temp table of the same name, empty: the registry is still main's.
    db.conn
        .execute(
            "CREATE TEMP TABLE sys_metadata (metadata_type TEXT, metadata_name TEXT, body TEXT, \
             version TEXT, source TEXT)",
            (),
        )
        .await
        .unwrap();
    let registered = fleet_schema::registry::read(&db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        registered
            .iter()
            .map(|r| (r.kind.as_str(), r.name.as_str()))
            .collect::<Vec<_>>(),
        [("object", "account")]
    );
}

/// The plan a [`fleet_schema::PlanMemo`] gives a database is the one planning it directly gives,
/// for the first database of a shape, for the next ones (remembered), for one of the same shape
/// with other data (its own data facts), for one of another shape, and for a refusal.
#[tokio::test]
async fn a_plan_memo_gives_each_database_what_planning_it_directly_gives() {
    use fleet_schema::{Owner, PlanMemo, PlanOptions};
    let v1 = json!([
        {"name": "account", "fields": {"name": {"type": "text"}, "rating": {"type": "number"}}},
        {"name": "note", "fields": {"body": {"type": "text"}}}
    ]);
    // v2: `rating` removed (destructive where an account holds one), `name` required (its
    // NULLs matter), a new object.
    let v2 = json!([
        {"name": "account", "fields": {"name": {"type": "text", "required": true}}},
        {"name": "note", "fields": {"body": {"type": "text"}}},
        {"name": "deal", "fields": {"amount": {"type": "currency"}}}
    ]);
    let objects = crate::objects_of(&v2);
    let desired = fleet_schema::desired_within(&objects, &[]).unwrap();
    let memo = PlanMemo::new(objects.clone(), desired.clone(), Owner::Platform);
    let shaped = async |rows: &str| {
        let db = TestDb::new().await;
        db.migrate(&v1, false).await.unwrap();
        if !rows.is_empty() {
            db.exec(rows).await;
        }
        db
    };
    let a = shaped("INSERT INTO account (id, name, rating) VALUES ('a1', 'Acme', 4.5);").await;
    let b = shaped("INSERT INTO account (id, name, rating) VALUES ('b1', 'Bolt', 3.0);").await;
    let empty = shaped("").await;
    let nulls = shaped("INSERT INTO account (id, name) VALUES ('n1', NULL);").await;
    let other = TestDb::new().await;
    other
        .migrate(
            &json!([{"name": "account", "fields": {"label": {"type": "text"}}}]),
            false,
        )
        .await
        .unwrap();
    let described = |r: &Result<fleet_schema::Planned, SchemaError>| match r {
        Ok(planned) => format!("{planned:?}"),
        Err(e) => format!("error: {e:?}"),
    };
    let mut seen = Vec::new();
    for allow_destructive in [false, true] {
        let options = PlanOptions { allow_destructive };
        for (name, db) in [
            ("a", &a),
            ("b", &b),
            ("a again", &a),
            ("empty", &empty),
            ("nulls", &nulls),
            ("other", &other),
        ] {
            let direct = fleet_schema::plan_database_to(
                &db.conn,
                &objects,
                &desired,
                options,
                &Owner::Platform,
            )
            .await;
            let remembered = memo.plan(&db.conn, options).await.map(|p| (*p).clone());
            assert_eq!(
                described(&remembered),
                described(&direct),
                "{name}, {options:?}"
            );
            seen.push(described(&direct));
        }
    }
    // The cases differ where they should: the refusal (rows lose `rating`) and the plan for an
    // empty table are not the same answer, and allowing destruction changes a's.
    assert_ne!(seen[0], seen[3], "rows to lose vs none");
    assert!(seen[0].starts_with("error"), "{}", seen[0]);
    assert!(!seen[6].starts_with("error"), "{}", seen[6]);
}
