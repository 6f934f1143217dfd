//! Operating the fleet with `fleetctl` against a real nats-server and the real provisioner: a
//! failed job through the dead-letter queue and back (also with a crash between the replay's
//! publish and the letter's removal), `status --json`, exit codes, output without a terminal,
//! and the demo script end to end with small counts.

use std::path::PathBuf;
use std::process::Command as Process;
use std::time::Duration;

use fleet_testkit::fleet::TestFleet;
use predicates::prelude::*;
use serde_json::Value;

use crate::{fleetctl, workspace_root};

/// A workspace binary beside `fleetctl` (built by `cargo test --workspace`, as `just test` runs
/// it).
pub fn sibling(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_fleetctl")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `just test`)",
        path.display()
    );
    path
}

/// `fleetctl` on the test fleet's configuration.
fn ctl(fleet: &TestFleet) -> assert_cmd::Command {
    let mut cmd = fleetctl();
    cmd.env("FLEET_CONFIG_DIR", fleet.config_dir())
        .env("FLEET_ENV", "e2e");
    cmd
}

fn json(out: &assert_cmd::assert::Assert) -> Value {
    serde_json::from_slice(&out.get_output().stdout).expect("JSON on stdout")
}

fn letters(fleet: &TestFleet) -> Vec<Value> {
    let out = ctl(fleet)
        .args(["dlq", "list", "--json"])
        .assert()
        .success();
    json(&out).as_array().cloned().unwrap_or_default()
}

/// The `hooks.tenant.<event>` CloudEvents about `tenant`.
fn hooks(fleet: &TestFleet, event: &str, tenant: &str) -> usize {
    let out = ctl(fleet)
        .args([
            "hooks",
            "--subject",
            &format!("tenant.{event}"),
            "--tenant",
            tenant,
            "--json",
        ])
        .assert()
        .success();
    json(&out).as_array().map_or(0, Vec::len)
}

fn tenant_status(fleet: &TestFleet, tenant: &str) -> String {
    let out = ctl(fleet)
        .args(["tenant", "status", tenant, "--json"])
        .output()
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["tenant"]["status"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..150 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Maps `ap-northeast` (unmapped in the e2e overlay) and restarts the provisioner: the fix.
fn map_region_and_restart(fleet: &mut TestFleet, provisioner: usize) -> usize {
    let overlay = fleet.config_dir().join("e2e.toml");
    let mut text = std::fs::read_to_string(&overlay).unwrap();
    text.push_str("\n[provisioner.regions.ap-northeast]\ngroup = \"local\"\n");
    std::fs::write(&overlay, text).unwrap();
    fleet.kill(provisioner);
    fleet.spawn(sibling("provisioner"), &[])
}

#[tokio::test]
async fn a_registration_that_failed_is_replayed_after_its_cause_is_fixed_and_ends_active_once() {
    let mut fleet = TestFleet::start("");
    let provisioner = fleet.spawn(sibling("provisioner"), &[]);
    ctl(&fleet)
        .args(["tenant", "create", "--id", "tokyo", "--org", "o1"])
        .args(["--region", "ap-northeast", "--wait", "--timeout", "30"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("not mapped to a database group"));
    let dead = letters(&fleet);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["tenantId"], "tokyo");
    assert_eq!(dead[0]["reason"], "poison");
    let sequence = dead[0]["sequence"].to_string();

    // Replayed before the fix: it fails again, a new letter, the tenant still failed.
    ctl(&fleet)
        .args(["dlq", "replay", &sequence])
        .assert()
        .success();
    eventually("the second failure's letter", || letters(&fleet).len() == 1).await;
    let again = letters(&fleet);
    assert_ne!(again[0]["sequence"].to_string(), sequence);
    assert_eq!(tenant_status(&fleet, "tokyo"), "failed");

    let _provisioner = map_region_and_restart(&mut fleet, provisioner);
    ctl(&fleet)
        .args(["dlq", "replay", "--all"])
        .assert()
        .success();
    eventually("tokyo active", || {
        tenant_status(&fleet, "tokyo") == "active"
    })
    .await;
    assert!(letters(&fleet).is_empty());
    // The hook follows the record's transition: wait for it, then count.
    eventually("its hook", || hooks(&fleet, "created", "tokyo") > 0).await;
    assert_eq!(hooks(&fleet, "created", "tokyo"), 1, "one tenant.created");
    assert_eq!(
        hooks(&fleet, "failed", "tokyo"),
        2,
        "one per failed attempt"
    );
    // Every read above (status and history, hooks, dead letters) went through a consumer of
    // its own, deleted when done rather than left to pile up until the server refuses more.
    let js = async_nats::jetstream::new(async_nats::connect(fleet.server.url()).await.unwrap());
    for stream in ["FLEET_PROGRESS", "FLEET_HOOKS", "FLEET_DEAD_LETTERS"] {
        let state = fleet_testkit::stream_state(&js, stream).await;
        assert_eq!(state.consumer_count, 0, "{stream}: consumers left behind");
    }
}

#[tokio::test]
async fn a_replay_interrupted_between_publish_and_removal_loses_nothing_and_runs_once() {
    let mut fleet = TestFleet::start("");
    let provisioner = fleet.spawn(sibling("provisioner"), &[]);
    ctl(&fleet)
        .args(["tenant", "create", "--id", "osaka", "--org", "o1"])
        .args(["--region", "ap-northeast", "--wait", "--timeout", "30"])
        .assert()
        .code(1);
    let sequence = letters(&fleet)[0]["sequence"].to_string();
    let _provisioner = map_region_and_restart(&mut fleet, provisioner);

    // fleetctl dies right after JetStream acknowledged the republished job.
    let crashed = ctl(&fleet)
        .env("FLEET_CRASH_POINT", "dlq.replay.republished")
        .args(["dlq", "replay", &sequence])
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains("crash point dlq.replay.republished")
    );
    eventually("osaka active", || {
        tenant_status(&fleet, "osaka") == "active"
    })
    .await;
    assert_eq!(
        letters(&fleet).len(),
        1,
        "the letter stays until a replay removes it"
    );

    // Replayed again: the same message id (a duplicate within the window), then removed.
    ctl(&fleet)
        .args(["dlq", "replay", &sequence])
        .assert()
        .success();
    assert!(letters(&fleet).is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tenant_status(&fleet, "osaka"), "active");
    eventually("its hook", || hooks(&fleet, "created", "osaka") > 0).await;
    assert_eq!(hooks(&fleet, "created", "osaka"), 1, "one outcome");
}

#[tokio::test]
async fn status_reports_tenants_backlogs_and_running_workers_with_stable_json() {
    let mut fleet = TestFleet::start("");
    fleet.spawn(sibling("provisioner"), &[]);
    ctl(&fleet)
        .args(["tenant", "create", "--count", "3", "--org", "o1", "--wait"])
        .assert()
        .success();
    let mut status = Value::Null;
    eventually("the provisioner's heartbeat", || {
        status = json(&ctl(&fleet).args(["status", "--json"]).assert().success());
        status["workers"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["worker"] == "provisioner"))
            .is_some_and(|w| w["replicas"] == 1)
    })
    .await;
    let mut top: Vec<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    top.sort();
    assert_eq!(
        top,
        [
            "at",
            "consumers",
            "deadLetters",
            "deployments",
            "installs",
            "nats",
            "tenants",
            "workers"
        ]
    );
    assert_eq!(status["tenants"]["total"], 3);
    assert_eq!(status["tenants"]["by"]["active"], 3);
    assert_eq!(status["deadLetters"]["total"], 0);
    let consumers: Vec<&str> = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        consumers,
        ["provisioner", "deployer", "installer", "quota-auditor"]
    );
    for consumer in status["consumers"].as_array().unwrap() {
        for field in ["pending", "ackPending", "redelivered"] {
            assert!(consumer[field].is_u64(), "{field} in {consumer}");
        }
    }
    let deployer = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker"] == "deployer")
        .unwrap();
    assert_eq!(deployer["replicas"], 0, "no deployer runs");
    ctl(&fleet).args(["status"]).assert().success().stdout(
        predicate::str::contains("tenants       3: active 3")
            .and(predicate::str::contains("PENDING")),
    );
}

#[tokio::test]
async fn exit_codes_say_failed_or_bad_input_and_output_off_a_terminal_has_no_progress_noise() {
    let mut fleet = TestFleet::start("");
    fleet.spawn(sibling("provisioner"), &[]);
    // Output to a pipe: the summary lines only, no bar redraws or escape sequences.
    let out = ctl(&fleet)
        .args(["tenant", "create", "--count", "3", "--org", "o1", "--wait"])
        .assert()
        .success();
    let output = out.get_output();
    for text in [&output.stdout, &output.stderr] {
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.contains('\r') && !text.contains('\x1b'),
            "no progress-bar noise off a terminal: {text:?}"
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("  active  in ").count(), 3, "{stdout}");
    assert!(stdout.contains("3 of 3 tenant(s) active"), "{stdout}");

    // 1: the operation failed (something named does not exist).
    ctl(&fleet)
        .args(["tenant", "status", "nobody"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no tenant nobody"));
    ctl(&fleet)
        .args(["deploy", "status", "no-such-deployment"])
        .assert()
        .code(1);
    // 2: usage and input errors.
    ctl(&fleet)
        .args(["tenant", "status", "../etc"])
        .assert()
        .code(2);
    ctl(&fleet).args(["tenant", "frobnicate"]).assert().code(2);
    ctl(&fleet)
        .args(["tenant", "create", "--id", "a", "--count", "2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--count 1"));
    ctl(&fleet)
        .args(["deploy", "--all"])
        .arg(workspace_root().join("no/such/bundle.json"))
        .assert()
        .code(2);
}

#[test]
fn the_demo_runs_end_to_end_with_small_counts() {
    let demo = tempfile::tempdir().unwrap();
    let bin_dir = sibling("fleetctl").parent().unwrap().to_path_buf();
    for worker in ["provisioner", "deployer", "installer", "quota-auditor"] {
        sibling(worker);
    }
    let out = Process::new("bash")
        .arg(workspace_root().join("scripts/demo.sh"))
        .current_dir(workspace_root())
        .env("DEMO_TENANTS", "8")
        .env("DEMO_DIR", demo.path())
        .env("DEMO_BIN_DIR", &bin_dir)
        .env("FLEET_NATS_SERVER", fleet_testkit::nats_server_binary())
        .env_remove("FLEET_ENV")
        .env_remove("FLEET_CONFIG_DIR")
        .env_remove("FLEET_NATS__URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    for expected in [
        "8 of 8 tenant(s) active",
        "deployment crm-v2  version 2.0.0  Completed",
        "deployment helpdesk-1-1  version 1.1.0  Completed",
        "quota.warning",
        "tenant freebie  suspended (quota)",
        "replayed dead letter",
        "tenant tokyo-co  active",
        "purged 1 dead letter(s)",
        "no dead letters",
        "dead letters  0",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo's output lacks {expected:?}\n{stdout}"
        );
    }
}
