//! `fleetctl config`: the figment chain as the binaries see it.

use predicates::prelude::*;
use serde_json::Value;

use crate::fleetctl;

#[test]
fn environment_overrides_files_and_files_override_defaults() {
    let out = fleetctl()
        .env("FLEET_ENV", "test")
        .env("FLEET_NATS__URL", "nats://127.0.0.1:4999")
        .arg("config")
        .assert()
        .success();
    let config: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(config["nats"]["url"], "nats://127.0.0.1:4999");
    assert_eq!(
        config["telemetry"]["log_format"], "json",
        "from config/test.toml"
    );
    assert_eq!(
        config["tenantdb"]["backend"], "local",
        "from config/default.toml"
    );
}

#[test]
fn invalid_settings_are_all_reported() {
    fleetctl()
        .env("FLEET_NATS__URL", "http://wrong")
        .env("FLEET_WORKER__CONCURRENCY", "0")
        .arg("config")
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("nats.url")
                .and(predicate::str::contains("worker.concurrency")),
        );
}
