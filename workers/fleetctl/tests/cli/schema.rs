//! `fleetctl schema list` and `fleetctl schema export`.

use predicates::prelude::*;
use serde_json::Value;

use crate::fleetctl;

#[test]
fn list_names_every_type_with_its_upstream_file() {
    fleetctl()
        .args(["schema", "list"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("DeployBundle")
                .and(predicate::str::contains("system/DeployBundle.json")),
        );
}

#[test]
fn export_writes_one_json_schema_per_type() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("schemas");
    fleetctl()
        .args(["schema", "export", "--out"])
        .arg(&out)
        .assert()
        .success();
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 35, "{} files", files.len());
    let bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("DeployBundle.json")).unwrap())
            .unwrap();
    assert_eq!(
        bundle["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(bundle["properties"]["manifest"].is_object());
    for (name, property) in bundle["properties"].as_object().unwrap() {
        assert!(
            property.get("description").is_some(),
            "{name} has a description"
        );
    }
}
