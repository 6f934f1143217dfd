//! `SchemaEngine` as upstream's `ISchemaDiffService`: introspect → diff → generate migrations →
//! apply, step by step through upstream's shapes, on a real libSQL file — the same plan as the
//! engine's own pipeline, every row kept through the v2 table rebuilds, a hand-made view kept.

use fleet_protocol::contracts::{ContractError, SchemaDiffService};
use fleet_protocol::turso::SqlDialect;
use fleet_protocol::{DeployDiff, MigrationPlan, ObjectDefinition};
use fleet_schema::{PlanOptions, SchemaEngine, plan_database, system::with_system_objects};
use libsql::Value;

use crate::{TestDb, example_objects};

/// One trip through the contract: introspect, diff, generate.
async fn contract_plan(db: &TestDb, objects: &[ObjectDefinition]) -> (DeployDiff, MigrationPlan) {
    let engine = SchemaEngine::default();
    let live = engine.introspect(&db.conn).await.unwrap();
    // The introspected schema survives JSON (what a remote caller would hold).
    let live = serde_json::from_value(serde_json::to_value(&live).unwrap()).unwrap();
    let diff = engine.diff(&live, objects).unwrap();
    let diff: DeployDiff = serde_json::from_value(serde_json::to_value(&diff).unwrap()).unwrap();
    let plan = engine
        .generate_migrations(&diff, SqlDialect::Sqlite)
        .unwrap();
    (diff, plan)
}

fn sqls(plan: &MigrationPlan) -> Vec<&str> {
    plan.statements.iter().map(|s| s.sql.as_str()).collect()
}

#[tokio::test]
async fn the_contract_plans_what_the_engine_plans_and_keeps_every_row() {
    let db = TestDb::new().await;
    let engine = SchemaEngine::default();
    let v1 = example_objects("crm-v1.bundle.json");
    let (diff, plan) = contract_plan(&db, &v1).await;
    assert!(diff.summary.added >= 3, "{:?}", diff.summary);
    assert!(!diff.has_breaking_changes);
    let applied = engine.apply_migrations(&db.conn, &plan).await.unwrap();
    assert!(applied.success, "{applied:?}");
    assert_eq!(applied.statements_executed, plan.statements.len() as u64);
    // Converged: nothing left to do.
    let (again, plan_again) = contract_plan(&db, &v1).await;
    assert!(again.changes.is_empty(), "{:#?}", again.changes);
    assert!(plan_again.statements.is_empty());

    db.exec(
        "INSERT INTO crm_account (id, name, industry, annual_revenue) VALUES ('a1', 'Acme', 'software', 1000), ('a2', 'Globex', NULL, NULL);
         INSERT INTO crm_contact (id, first_name, last_name, email, account) VALUES ('c1', 'Ada', 'Lovelace', 'ada@acme.example', 'a1');
         INSERT INTO crm_opportunity (id, title, amount, probability, account, primary_contact) VALUES ('o1', 'Big deal', 5000, 50, 'a1', 'c1');
         CREATE VIEW big_deals AS SELECT title FROM crm_opportunity WHERE amount > 1000;
         ALTER TABLE crm_opportunity ADD COLUMN hand_note TEXT;
         UPDATE crm_opportunity SET hand_note = 'kept';",
    )
    .await;
    let v2 = example_objects("crm-v2.bundle.json");
    let (diff, plan) = contract_plan(&db, &v2).await;
    // The same statements as the engine's own pipeline (which reads the rows too) — and one
    // more: v1 was never registered here (the contract has no registry step), so the pipeline
    // counts v1's unique index on the renamed column as hand-made and keeps it, while the
    // contract, like a deploy over a registered v1, owns it and drops it.
    let engine_plan = plan_database(
        &db.conn,
        &with_system_objects(&v2),
        PlanOptions {
            allow_destructive: true,
        },
    )
    .await
    .unwrap();
    let old_index = "DROP INDEX \"uq_crm_account_name\"";
    assert!(sqls(&plan).contains(&old_index), "{:#?}", sqls(&plan));
    let mut contract = sqls(&plan);
    contract.retain(|s| *s != old_index);
    assert_eq!(contract, sqls(&engine_plan.plan));
    assert!(
        plan.statements
            .iter()
            .any(|s| s.sql.contains("_fleet_rebuild_")),
        "v2 rebuilds a table"
    );
    assert_eq!(diff.changes.len(), engine_plan.diff.changes.len() + 1);
    // Without registered objects every column counts as the engine's: the hand-added one is a
    // removed field, and the diff says the change is breaking before anyone plans it.
    assert!(diff.has_breaking_changes);
    assert!(diff.changes.iter().any(|c| c.entity_name == "hand_note"
        && c.change_type == fleet_protocol::deploy::ChangeType::Removed));
    let applied = engine.apply_migrations(&db.conn, &plan).await.unwrap();
    assert!(applied.success, "{applied:?}");
    assert_eq!(
        db.rows("SELECT count(*) FROM crm_account").await[0][0],
        Value::Integer(2)
    );
    assert_eq!(
        db.rows("SELECT title, amount FROM crm_opportunity").await[0],
        vec![Value::Text("Big deal".into()), Value::Real(5000.0)],
        "rows survive the rebuild"
    );
    assert_eq!(
        db.rows("SELECT title FROM big_deals").await[0][0],
        Value::Text("Big deal".into()),
        "the view is recreated"
    );
    // Converged again (the rename hints of v2 already applied are dropped, as a bundle keeps them).
    let (again, _) = contract_plan(&db, &crate::strip_renames(&v2)).await;
    assert!(again.changes.is_empty(), "{:#?}", again.changes);
}

#[tokio::test]
async fn a_failed_statement_is_answered_with_its_index_and_nothing_changes() {
    let db = TestDb::new().await;
    let engine = SchemaEngine::default();
    let v1 = example_objects("crm-v1.bundle.json");
    let (_, mut plan) = contract_plan(&db, &v1).await;
    let last = plan.statements.len() - 1;
    plan.statements[last].sql = "CREATE TABLE broken (".into();
    let applied = engine.apply_migrations(&db.conn, &plan).await.unwrap();
    assert!(!applied.success);
    assert_eq!(applied.failed_at_index, Some(last as u64));
    assert!(applied.error.is_some());
    let tables = db
        .rows("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name LIKE 'crm_%'")
        .await;
    assert_eq!(tables[0][0], Value::Integer(0), "rolled back");
}

#[tokio::test]
async fn diffs_without_context_or_other_dialects_are_refused_with_the_reason() {
    let db = TestDb::new().await;
    let engine = SchemaEngine::default();
    let v1 = example_objects("crm-v1.bundle.json");
    let (_, plan) = contract_plan(&db, &v1).await;
    engine.apply_migrations(&db.conn, &plan).await.unwrap();
    let v2 = example_objects("crm-v2.bundle.json");
    let (mut diff, _) = contract_plan(&db, &v2).await;
    assert!(matches!(
        engine.generate_migrations(&diff, SqlDialect::Postgresql),
        Err(ContractError::IllegalState(_))
    ));
    // A diff made elsewhere (no table context) cannot be planned for SQLite's rebuilds.
    for change in &mut diff.changes {
        for value in [&mut change.old_value, &mut change.new_value]
            .into_iter()
            .flatten()
        {
            if let Some(map) = value.as_object_mut() {
                map.remove(fleet_schema::service::CONTEXT);
            }
        }
    }
    let refused = engine
        .generate_migrations(&diff, SqlDialect::Sqlite)
        .unwrap_err();
    assert!(refused.to_string().contains("table context"), "{refused}");
    // Objects that do not map to a schema: the issues, with their paths.
    let bad: Vec<ObjectDefinition> = crate::objects_of(&serde_json::json!([
        {"name": "deal", "fields": {"owner": {"type": "lookup", "reference": "nowhere"}}}
    ]));
    let live = engine.introspect(&db.conn).await.unwrap();
    match engine.diff(&live, &bad) {
        Err(ContractError::Invalid(rejected)) => {
            assert!(
                rejected.issues.iter().any(|i| i.path.contains("deal")),
                "{rejected:?}"
            );
        }
        other => panic!("expected the issues, got {other:?}"),
    }
}
