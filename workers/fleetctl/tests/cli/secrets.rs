//! Key rotation end to end, against a real nats-server, the real provisioner and real tenant
//! databases: tenants provisioned under one key; a new key joins the ring and becomes active;
//! `secrets reseal --dry-run` counts what the old key sealed; with the new key alone a tenant's
//! database is out of reach until `secrets reseal` has moved every token over — then it opens
//! with the same token; a second pass changes nothing; a token no key of the ring opens is
//! reported with its tenant and exit 1.

use std::path::Path;

use fleet_testkit::fleet::TestFleet;
use serde_json::Value;

use crate::fleetctl;
use crate::ops::sibling;

/// A key of the new ring (32 bytes, base64), next to the e2e overlay's `e2e`.
const NEW_KEY: &str = "bmV3LWtleS1vZi0yMDI3LW5vdC1mb3ItcHJvZHVjdCE=";

/// `fleetctl` on `config_dir`'s configuration, with `env` on top.
fn ctl(config_dir: &Path, env: &[(&str, &str)]) -> assert_cmd::Command {
    let mut cmd = fleetctl();
    cmd.env("FLEET_CONFIG_DIR", config_dir)
        .env("FLEET_ENV", "e2e");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

/// Both keys, the new one active: the ring during a rotation.
const ROTATED: [(&str, &str); 2] = [
    ("FLEET_SECRETS__ACTIVE_KEY", "k2027"),
    ("FLEET_SECRETS__KEYS__K2027", NEW_KEY),
];

fn reseal(config_dir: &Path, env: &[(&str, &str)], dry_run: bool) -> (i32, Value) {
    let mut cmd = ctl(config_dir, env);
    cmd.args(["secrets", "reseal", "--json"]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON report: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

/// The e2e configuration with the old key gone from the ring: the end of a rotation.
fn only_new_key(fleet: &TestFleet) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fleet.config_dir()).unwrap() {
        let entry = entry.unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let text = text
            .lines()
            .map(|line| {
                if line.starts_with("active_key = ") {
                    "active_key = \"k2027\"".to_owned()
                } else if line.starts_with("keys = ") {
                    format!("keys = {{ k2027 = \"{NEW_KEY}\" }}")
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join(entry.file_name()), text).unwrap();
    }
    dir
}

#[tokio::test]
async fn a_rotated_key_reseals_every_token_and_the_old_key_can_then_leave_the_ring() {
    let mut fleet = TestFleet::start("");
    fleet.spawn(sibling("provisioner"), &[]);
    let config = fleet.config_dir();
    for id in ["acme", "globex", "initech"] {
        ctl(&config, &[])
            .args(["tenant", "create", "--id", id, "--wait", "--timeout", "30"])
            .assert()
            .success();
    }
    let new_ring = only_new_key(&fleet);

    // The dry run counts the tokens each key sealed, and changes nothing.
    let (code, report) = reseal(&config, &ROTATED, true);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["tokensByKey"], serde_json::json!({"e2e": 3}));
    assert_eq!(report["onOldKeys"], 3);
    assert_eq!(report["resealed"], 0);
    // Without the old key the tokens do not open: the tenant's database is out of reach.
    let out = ctl(new_ring.path(), &[])
        .args(["quota", "show", "acme"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in the key ring"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, report) = reseal(&config, &ROTATED, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["resealed"], 3);
    assert_eq!(report["failed"], serde_json::json!([]));
    // The report is the state after the pass.
    assert_eq!(report["tokensByKey"], serde_json::json!({"k2027": 3}));
    assert_eq!(report["onOldKeys"], 0);
    let (_, report) = reseal(&config, &ROTATED, true);
    assert_eq!(report["tokensByKey"], serde_json::json!({"k2027": 3}));
    assert_eq!(report["onOldKeys"], 0, "the old key can leave the ring");
    // The new key alone opens every token, and the backend takes the token it opens: the same
    // token, sealed again.
    for id in ["acme", "globex", "initech"] {
        ctl(new_ring.path(), &[])
            .args(["quota", "show", id])
            .assert()
            .success();
    }
    // A second pass has nothing to do.
    let (code, report) = reseal(&config, &ROTATED, false);
    assert_eq!((code, report["resealed"].clone()), (0, Value::from(0)));

    // A tenant provisioned by a worker still on the old ring, re-sealed by a ring that lost
    // the old key: reported with its tenant, exit 1, the record left as it was.
    ctl(&config, &[])
        .args([
            "tenant",
            "create",
            "--id",
            "umbrella",
            "--wait",
            "--timeout",
            "30",
        ])
        .assert()
        .success();
    let (code, report) = reseal(new_ring.path(), &[], false);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["failed"][0]["tenantId"], "umbrella");
    assert!(
        report["failed"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not in the key ring"),
        "{report}"
    );
    // The dry run opens every token too: with the old key gone it finds umbrella's.
    let (code, report) = reseal(new_ring.path(), &[], true);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["failed"][0]["tenantId"], "umbrella");
    let (_, report) = reseal(&config, &ROTATED, true);
    assert_eq!(
        report["tokensByKey"],
        serde_json::json!({"e2e": 1, "k2027": 3})
    );

    // A record that does not decode is listed, and the pass goes on past it.
    let client = async_nats::connect(fleet.server.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("fleet_tenants")
        .await
        .unwrap();
    kv.put("aaa-corrupt", "{\"tenantId\":".into())
        .await
        .unwrap();
    let (code, report) = reseal(&config, &ROTATED, false);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["failed"][0]["tenantId"], "aaa-corrupt");
    assert_eq!(report["resealed"], 1, "umbrella, after the corrupt record");
    assert_eq!(report["tokensByKey"], serde_json::json!({"k2027": 4}));
}
