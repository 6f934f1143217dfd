//! `fleetctl streams init` against a real nats-server.

use fleet_testkit::NatsServer;
use predicates::prelude::*;

use crate::fleetctl;

#[test]
fn streams_init_is_idempotent() {
    let server = NatsServer::start();
    for _ in 0..2 {
        fleetctl()
            .env("FLEET_NATS__URL", server.url())
            .args(["streams", "init"])
            .assert()
            .success()
            .stdout(
                predicate::str::contains("FLEET_TENANT_COMMANDS")
                    .and(predicate::str::contains("topology ensured")),
            );
    }
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    fleetctl()
        .env("FLEET_NATS__URL", "nats://127.0.0.1:1")
        .env("FLEET_NATS__CONNECT_TIMEOUT_MS", "500")
        .args(["streams", "init"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("connecting to nats://127.0.0.1:1"));
}
