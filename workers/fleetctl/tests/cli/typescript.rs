//! `examples/typescript/provision.mjs` (the official NATS clients from Node) against a real
//! nats-server and the real provisioner: published per the contract, answered by the hook, its
//! payloads checked against the JSON Schemas `fleetctl schema export` writes.

use std::process::Command;

use fleet_testkit::jwt::TestOperator;
use fleet_testkit::pki::TestPki;
use fleet_testkit::{NatsServer, TestFleet};
use serde_json::Value;

use crate::{fleetctl, workspace_root};

fn node(fleet: &TestFleet, schemas: &std::path::Path, args: &[&str]) -> (i32, Value) {
    node_with(fleet, schemas, args, &[])
}

/// [`node`] with `env` (credentials, a CA) set for the example too.
fn node_with(
    fleet: &TestFleet,
    schemas: &std::path::Path,
    args: &[&str],
    env: &[(&str, &std::path::Path)],
) -> (i32, Value) {
    let example = workspace_root().join("examples/typescript");
    assert!(
        example.join("node_modules").exists(),
        "examples/typescript/node_modules is missing: run `just setup`"
    );
    let out = Command::new("node")
        .arg("provision.mjs")
        .args(args)
        .current_dir(&example)
        .env("NATS_URL", fleet.server.url())
        .env("SCHEMAS", schemas)
        .env("TIMEOUT_MS", "20000")
        .envs(env.iter().copied())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "no JSON line from provision.mjs\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), value)
}

#[tokio::test]
async fn node_provisions_a_tenant_per_the_contract_and_refuses_an_invalid_one() {
    let mut fleet = TestFleet::start("");
    fleet.spawn(crate::ops::sibling("provisioner"), &[]);
    let schemas = tempfile::tempdir().unwrap();
    fleetctl()
        .args(["schema", "export", "--out"])
        .arg(schemas.path())
        .assert()
        .success();

    let (code, answer) = node(&fleet, schemas.path(), &["ts-acme", "org_ts", "eu-west"]);
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["hook"], "io.objectos.fleet.tenant.created.v1");
    assert_eq!(answer["result"], "active");
    assert_eq!(answer["status"], "active");
    assert_eq!(answer["resultIssues"], serde_json::json!([]));
    assert_eq!(answer["duplicate"], false);

    // Sent again: dropped as a duplicate, answered from the record.
    let (code, again) = node(&fleet, schemas.path(), &["ts-acme", "org_ts", "eu-west"]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["duplicate"], true);

    // Invalid (a region upstream does not know): the schema's issues, nothing sent.
    let (code, invalid) = node(&fleet, schemas.path(), &["ts-bad", "org_ts", "mars"]);
    assert_eq!(code, 2, "{invalid}");
    assert!(
        invalid["invalid"].to_string().contains("region"),
        "{invalid}"
    );
    // Had it been sent, the provisioner would have dead-lettered it (region: unknown value).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let js = async_nats::jetstream::new(async_nats::connect(fleet.server.url()).await.unwrap());
    let letters = fleet_testkit::stream_messages(&js, "FLEET_DEAD_LETTERS", None).await;
    assert!(
        letters
            .iter()
            .all(|m| !String::from_utf8_lossy(&m.payload).contains("ts-bad")),
        "the invalid registration was never published"
    );
}

/// The example on a server like production's, demanding credentials over TLS — here an
/// operator's account (a `.creds` file, `NATS_CREDS`) and a CA to verify the server
/// (`NATS_CA`), the provisioner authenticated the same way: provisioned; without the
/// credentials it says it could not connect (exit 1) and sends nothing.
#[tokio::test]
async fn node_with_a_credentials_file_over_tls() {
    let operator = TestOperator::new();
    let pki = TestPki::new();
    let server = NatsServer::start_with(&format!(
        "{}{}",
        operator.server_block(),
        pki.server_tls_block(false)
    ));
    let mut fleet = TestFleet::start_on(
        server,
        &format!(
            "[nats.auth]\ncredentials_file = \"{}\"\n[nats.tls]\nca_file = \"{}\"\n",
            operator.creds_file.display(),
            pki.ca_file.display()
        ),
    );
    fleet.spawn(crate::ops::sibling("provisioner"), &[]);
    let schemas = tempfile::tempdir().unwrap();
    fleetctl()
        .args(["schema", "export", "--out"])
        .arg(schemas.path())
        .assert()
        .success();
    let creds = operator.creds_file.as_path();
    let ca = pki.ca_file.as_path();

    let (code, answer) = node_with(
        &fleet,
        schemas.path(),
        &["ts-creds"],
        &[("NATS_CREDS", creds), ("NATS_CA", ca)],
    );
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["status"], "active");

    let (code, refused) = node_with(&fleet, schemas.path(), &["ts-anon"], &[("NATS_CA", ca)]);
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused["connectError"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("authorization")),
        "{refused}"
    );
    // Two ways at once: refused before connecting.
    let (code, both) = node_with(
        &fleet,
        schemas.path(),
        &["ts-both"],
        &[("NATS_CREDS", creds), ("NATS_TOKEN", ca)],
    );
    assert_eq!(code, 2, "{both}");
    assert!(both["invalid"].to_string().contains("NATS_CREDS"), "{both}");
}
