//! `fleetctl validate`.

use predicates::prelude::*;
use serde_json::Value;

use crate::fleetctl;

#[test]
fn a_valid_bundle_exits_0_with_normalized_json() {
    let out = fleetctl()
        .args(["validate", "DeployBundle", "examples/crm-v1.bundle.json"])
        .assert()
        .success();
    let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        json["manifest"]["views"],
        serde_json::json!([]),
        "defaults applied"
    );
    assert_eq!(json["seedData"], serde_json::json!([]));
    assert_eq!(json["objects"].as_array().unwrap().len(), 3);
}

#[test]
fn three_mistakes_give_three_issues_with_their_paths_and_exit_1() {
    let out = fleetctl()
        .args(["validate", "DeployBundle", "examples/invalid.bundle.json"])
        .assert()
        .code(1);
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("warning:"))
        .collect();
    assert_eq!(errors.len(), 3, "{stdout}");
    assert!(errors[0].starts_with("manifest.version: ") && errors[0].ends_with("(too_small)"));
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with("objects.project_task.fields.name.type: "))
    );
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with("objects.project_task.fields.owner.reference: "))
    );
    assert!(
        stdout.contains("warning: objects.project_task.auth_token"),
        "unknown keys are reported: {stdout}"
    );
}

#[test]
fn standard_input_is_read_with_a_dash_and_warnings_go_to_stderr() {
    fleetctl()
        .args(["validate", "TenantProvisioningRequest", "-"])
        .write_stdin(r#"{"orgId": "org_42", "auth_token": "x"}"#)
        .assert()
        .success()
        .stdout(
            predicate::str::contains(r#""plan": "free""#)
                .and(predicate::str::contains("auth_token").not()),
        )
        .stderr(predicate::str::contains("warning: auth_token"));
}

#[test]
fn non_json_unreadable_files_and_unknown_types_exit_2() {
    fleetctl()
        .args(["validate", "Tenant", "-"])
        .write_stdin("{not json")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not JSON"));
    fleetctl()
        .args(["validate", "Tenant", "does/not/exist.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read does/not/exist.json"));
    fleetctl()
        .args(["validate", "NoSuchType", "-"])
        .write_stdin("{}")
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("unknown type \"NoSuchType\"")
                .and(predicate::str::contains("DeployBundle")),
        );
}

#[test]
fn a_schema_change_validates_as_the_deploy_diff_item_upstream_exports() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("change.json");
    std::fs::write(
        &good,
        r#"{"entityType": "field", "entityName": "rating", "parentEntity": "vendor", "changeType": "modified", "oldValue": {"default": null}, "newValue": {"default": 3}}"#,
    )
    .unwrap();
    fleetctl()
        .args(["validate", "SchemaChange"])
        .arg(&good)
        .assert()
        .success()
        .stdout(predicate::str::contains("\"entityName\": \"rating\""));
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"entityType": "table", "entityName": "", "changeType": "modified"}"#,
    )
    .unwrap();
    fleetctl()
        .args(["validate", "SchemaChange"])
        .arg(&bad)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("entityType").and(predicate::str::contains("entityName")));
}

#[test]
fn a_bundle_object_without_fields_is_accepted_as_upstream_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.json");
    std::fs::write(
        &bundle,
        r#"{"manifest": {"version": "1.0.0"}, "objects": [{"name": "marker"}]}"#,
    )
    .unwrap();
    fleetctl()
        .args(["validate", "DeployBundle"])
        .arg(&bundle)
        .assert()
        .success();
    let db = dir.path().join("tenant.db");
    fleetctl()
        .args(["db", "apply", "--bundle"])
        .arg(&bundle)
        .arg("--db")
        .arg(&db)
        .assert()
        .success()
        .stdout(predicate::str::contains("+ object marker"));
    let out = fleetctl()
        .args(["db", "introspect", "--db"])
        .arg(&db)
        .assert()
        .success();
    let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let columns: Vec<&str> = json["tables"]["marker"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["id", "created_at", "updated_at"]);
}
