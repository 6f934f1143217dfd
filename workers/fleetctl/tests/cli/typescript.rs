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

/// [`node`] with `env` (credentials, a CA, another URL) set for the example too.
fn node_with(
    fleet: &TestFleet,
    schemas: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
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
        .envs(env.iter().map(|(k, v)| (*k, v)))
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

/// `fleet` with a provisioner running, and the JSON Schemas `fleetctl schema export` writes.
fn with_provisioner(mut fleet: TestFleet) -> (TestFleet, tempfile::TempDir) {
    fleet.spawn(crate::ops::sibling("provisioner"), &[]);
    let schemas = tempfile::tempdir().unwrap();
    fleetctl()
        .args(["schema", "export", "--out"])
        .arg(schemas.path())
        .assert()
        .success();
    (fleet, schemas)
}

#[tokio::test]
async fn node_provisions_a_tenant_per_the_contract_and_refuses_an_invalid_one() {
    let (fleet, schemas) = with_provisioner(TestFleet::start(""));

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
/// (`NATS_CA`), the provisioner authenticated the same way: provisioned. Without the
/// credentials it says it could not connect (exit 1); with two ways at once, a credentials file
/// it cannot read or a CA file that holds no certificate, it names the setting (exit 2); a
/// `tls://` URL to a server without TLS is refused, never downgraded. Nothing is sent then.
#[tokio::test]
async fn node_with_a_credentials_file_over_tls() {
    let operator = TestOperator::new();
    let pki = TestPki::new();
    let server = NatsServer::start_with(&format!(
        "{}{}",
        operator.server_block(),
        pki.server_tls_block(false)
    ));
    let (fleet, schemas) = with_provisioner(TestFleet::start_on(
        server,
        &format!(
            "[nats.auth]\ncredentials_file = \"{}\"\n[nats.tls]\nca_file = \"{}\"\n",
            operator.creds_file.display(),
            pki.ca_file.display()
        ),
    ));
    let creds = ("NATS_CREDS", operator.creds_file.display().to_string());
    let ca = ("NATS_CA", pki.ca_file.display().to_string());

    let (code, answer) = node_with(
        &fleet,
        schemas.path(),
        &["ts-creds"],
        &[creds.clone(), ca.clone()],
    );
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["status"], "active");

    let (code, refused) = node_with(
        &fleet,
        schemas.path(),
        &["ts-anon"],
        std::slice::from_ref(&ca),
    );
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused["connectError"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("authorization")),
        "{refused}"
    );
    let invalid = |env: &[(&str, String)], named: &str| {
        let (code, answer) = node_with(&fleet, schemas.path(), &["ts-invalid"], env);
        assert_eq!(code, 2, "{answer}");
        assert!(answer["invalid"].to_string().contains(named), "{answer}");
        assert!(!answer.to_string().contains("junk-secret"), "{answer}");
    };
    invalid(&[creds.clone(), ("NATS_TOKEN", "t".into())], "NATS_CREDS");
    invalid(
        &[
            ("NATS_CREDS", "/nonexistent/fleet.creds".into()),
            ca.clone(),
        ],
        "NATS_CREDS (/nonexistent/fleet.creds) cannot be read",
    );
    let junk = pki.dir().join("junk.pem");
    std::fs::write(&junk, "junk-secret").unwrap();
    invalid(
        &[creds.clone(), ("NATS_CA", junk.display().to_string())],
        "holds no PEM certificate",
    );

    // tls:// (in either case) to a server without TLS: refused, the password never sent in
    // plain text.
    let plain = NatsServer::start_with(
        "authorization {\n  users = [ { user: fleet, password: \"plain-secret\" } ]\n}\n",
    );
    for scheme in ["tls://", "TLS://"] {
        let (code, downgraded) = node_with(
            &fleet,
            schemas.path(),
            &["ts-plain"],
            &[
                ("NATS_URL", plain.url().replace("nats://", scheme)),
                ("NATS_USER", "fleet".into()),
                ("NATS_PASSWORD", "plain-secret".into()),
            ],
        );
        assert_eq!(code, 1, "{downgraded}");
        assert!(downgraded["connectError"].is_string(), "{downgraded}");
    }
    // A server without the fleet's streams: the publish's failure in the JSON line.
    let bare = NatsServer::start();
    let (code, unpublished) = node_with(
        &fleet,
        schemas.path(),
        &["ts-bare"],
        &[("NATS_URL", bare.url())],
    );
    assert_eq!(code, 1, "{unpublished}");
    assert!(unpublished["publishError"].is_string(), "{unpublished}");
}

/// An NKey seed file over TLS with the handshake first, both sides: the provisioner's
/// `[nats.auth] nkey_seed_file` and `[nats.tls] handshake_first`, the example's
/// `NATS_NKEY_SEED_FILE` and `NATS_TLS_HANDSHAKE_FIRST`.
#[tokio::test]
async fn node_with_an_nkey_seed_and_the_tls_handshake_first() {
    let pki = TestPki::new();
    let (user, seed) = fleet_testkit::jwt::user_seed_file(pki.dir(), "user.nk");
    let tls = pki
        .server_tls_block(false)
        .replace("verify: false", "verify: false\n  handshake_first: true");
    let server = NatsServer::start_with(&format!(
        "authorization {{\n  users = [ {{ nkey: \"{user}\" }} ]\n}}\n{tls}"
    ));
    let (fleet, schemas) = with_provisioner(TestFleet::start_on(
        server,
        &format!(
            "[nats.auth]\nnkey_seed_file = \"{}\"\n[nats.tls]\nca_file = \"{}\"\nhandshake_first = true\n",
            seed.display(),
            pki.ca_file.display()
        ),
    ));
    let (code, answer) = node_with(
        &fleet,
        schemas.path(),
        &["ts-nkey"],
        &[
            ("NATS_NKEY_SEED_FILE", seed.display().to_string()),
            ("NATS_CA", pki.ca_file.display().to_string()),
            ("NATS_TLS_HANDSHAKE_FIRST", "true".into()),
        ],
    );
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["status"], "active");
    // Without the handshake first: told which setting it needs.
    let (code, refused) = node_with(
        &fleet,
        schemas.path(),
        &["ts-greeting-first"],
        &[
            ("NATS_NKEY_SEED_FILE", seed.display().to_string()),
            ("NATS_CA", pki.ca_file.display().to_string()),
        ],
    );
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused["connectError"]
            .as_str()
            .is_some_and(|e| e.contains("NATS_TLS_HANDSHAKE_FIRST=true")),
        "{refused}"
    );
}
