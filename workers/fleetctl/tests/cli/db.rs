//! `fleetctl db introspect|plan|apply` on real libSQL files.

use predicates::prelude::*;
use serde_json::Value;

use crate::fleetctl;

async fn exec(db: &std::path::Path, sql: &str) {
    let conn = fleet_schema::open_local(db).await.unwrap();
    conn.execute_batch(sql).await.unwrap();
}

async fn count(db: &std::path::Path, sql: &str) -> i64 {
    let conn = fleet_schema::open_local(db).await.unwrap();
    let mut rows = conn.query(sql, ()).await.unwrap();
    rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap()
}

#[test]
fn plan_on_a_missing_database_plans_from_empty_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tenant.db");
    let out = fleetctl()
        .args([
            "db",
            "plan",
            "--bundle",
            "examples/crm-v1.bundle.json",
            "--db",
        ])
        .arg(&db)
        .assert()
        .success();
    let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    // The bundle's three objects and the four system tables (every database is a tenant's).
    assert_eq!(json["diff"]["summary"]["added"], 7);
    assert_eq!(json["plan"]["dialect"], "sqlite");
    assert!(!db.exists(), "planning must not create the database");
}

#[test]
fn an_invalid_or_missing_bundle_exits_2_with_paths_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tenant.db");
    fleetctl()
        .args([
            "db",
            "apply",
            "--bundle",
            "examples/invalid.bundle.json",
            "--db",
        ])
        .arg(&db)
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "objects.project_task.fields.name.type",
        ));
    assert!(!db.exists());
    fleetctl()
        .args(["db", "apply", "--bundle", "no/such/bundle.json", "--db"])
        .arg(&db)
        .assert()
        .code(2)
        .stdout(predicate::str::contains("cannot read no/such/bundle.json"));
    assert!(!db.exists());
}

#[tokio::test]
async fn apply_v1_then_v2_keeps_every_row_and_then_plans_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tenant.db");
    fleetctl()
        .args([
            "db",
            "apply",
            "--bundle",
            "examples/crm-v1.bundle.json",
            "--db",
        ])
        .arg(&db)
        .assert()
        .success();
    exec(
        &db,
        "INSERT INTO crm_account (id, name) VALUES ('a1', 'Acme'), ('a2', 'Globex');
         INSERT INTO crm_opportunity (id, title, stage, account) VALUES ('o1', 'Deal', NULL, 'a1');",
    )
    .await;
    fleetctl()
        .args([
            "db",
            "plan",
            "--format",
            "text",
            "--bundle",
            "examples/crm-v2.bundle.json",
            "--db",
        ])
        .arg(&db)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("crm_account.company_name (renamed from name)")
                .and(predicate::str::contains("_fleet_rebuild_crm_opportunity")),
        );
    fleetctl()
        .args([
            "db",
            "apply",
            "--bundle",
            "examples/crm-v2.bundle.json",
            "--db",
        ])
        .arg(&db)
        .assert()
        .success()
        .stdout(predicate::str::contains("applied 6 statement(s)"));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM crm_account WHERE company_name IN ('Acme', 'Globex')"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM crm_opportunity WHERE stage = 'prospecting'"
        )
        .await,
        1
    );
    let out = fleetctl()
        .args([
            "db",
            "plan",
            "--bundle",
            "examples/crm-v2.bundle.json",
            "--db",
        ])
        .arg(&db)
        .assert()
        .success();
    let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        json["plan"]["statements"],
        serde_json::json!([]),
        "converged"
    );

    let introspected = fleetctl()
        .args(["db", "introspect", "--db"])
        .arg(&db)
        .assert()
        .success();
    let schema: Value = serde_json::from_slice(&introspected.get_output().stdout).unwrap();
    assert_eq!(schema["dialect"], "sqlite");
    assert!(
        schema["tables"]["crm_account"]["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "company_name")
    );
}

#[tokio::test]
async fn destructive_changes_are_refused_with_what_would_be_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tenant.db");
    let bundle = dir.path().join("smaller.json");
    fleetctl()
        .args([
            "db",
            "apply",
            "--bundle",
            "examples/crm-v1.bundle.json",
            "--db",
        ])
        .arg(&db)
        .assert()
        .success();
    exec(
        &db,
        "INSERT INTO crm_account (id, name) VALUES ('a1', 'Acme')",
    )
    .await;
    std::fs::write(
        &bundle,
        r#"{"manifest": {"version": "3"}, "objects": [{"name": "account", "namespace": "crm", "fields": {"name": {"type": "text"}}}]}"#,
    )
    .unwrap();
    fleetctl()
        .args(["db", "apply", "--bundle"])
        .arg(&bundle)
        .arg("--db")
        .arg(&db)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("--allow-destructive")
                .and(predicate::str::contains("crm_contact")),
        );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_master WHERE name = 'crm_contact'"
        )
        .await,
        1,
        "untouched"
    );
    fleetctl()
        .args(["db", "apply", "--allow-destructive", "--bundle"])
        .arg(&bundle)
        .arg("--db")
        .arg(&db)
        .assert()
        .success();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_master WHERE name = 'crm_contact'"
        )
        .await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM crm_account").await, 1);
}

#[test]
fn introspecting_a_missing_database_exits_2() {
    fleetctl()
        .args(["db", "introspect", "--db", "/nonexistent/tenant.db"])
        .assert()
        .code(2);
}

#[tokio::test]
async fn a_tenant_database_is_reached_through_the_configured_backend() {
    let dir = tempfile::tempdir().unwrap();
    let with_backend = |args: &[&str]| {
        let mut cmd = fleetctl();
        cmd.env("FLEET_TENANTDB__DATA_DIR", dir.path()).args(args);
        cmd
    };
    with_backend(&[
        "db",
        "plan",
        "--tenant",
        "acme",
        "--bundle",
        "examples/crm-v1.bundle.json",
    ])
    .assert()
    .success();
    assert!(!dir.path().join("acme.db").exists(), "plan creates nothing");
    with_backend(&[
        "db",
        "apply",
        "--tenant",
        "acme",
        "--bundle",
        "examples/crm-v1.bundle.json",
    ])
    .assert()
    .success()
    .stdout(predicate::str::contains(
        "applied 15 statement(s) to tenant acme",
    ));
    let backend = fleet_tenantdb::LocalBackend::new(dir.path(), "");
    let name = fleet_protocol::DatabaseName::parse("acme").unwrap();
    assert!(backend.database_path(&name).exists() && backend.record_path(&name).exists());
    let out = with_backend(&["db", "introspect", "--tenant", "acme"])
        .assert()
        .success();
    let schema: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(schema["tables"]["crm_account"].is_object());
    with_backend(&["db", "introspect", "--tenant", "../etc"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("tenant id"));
}
