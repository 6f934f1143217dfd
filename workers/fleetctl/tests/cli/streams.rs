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
        .code(1)
        .stderr(
            predicate::str::contains("no NATS server answers at nats://127.0.0.1:1")
                .and(predicate::str::contains("just up")),
        );
}

#[test]
fn a_server_refusing_the_credentials_is_told_apart_from_no_server() {
    let server =
        NatsServer::start_with("authorization {\n  user: fleet\n  password: \"right-one\"\n}\n");
    let cmd = || {
        let mut cmd = fleetctl();
        cmd.env("FLEET_NATS__URL", server.url())
            .env("FLEET_NATS__AUTH__USER", "fleet");
        cmd
    };
    cmd()
        .env("FLEET_NATS__AUTH__PASSWORD", "0123-wrong-one")
        .args(["streams", "init"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("refused the connection: check [nats.auth]")
                .and(predicate::str::contains("authorization violation"))
                .and(predicate::str::contains("just up").not())
                .and(predicate::str::contains("0123-wrong-one").not()),
        );
    // A file the settings name that is not there: a configuration error (exit 2), named.
    cmd()
        .env("FLEET_NATS__AUTH__PASSWORD", "right-one")
        .env("FLEET_NATS__TLS__CA_FILE", "/nonexistent/ca.pem")
        .args(["streams", "init"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "nats.tls.ca_file (/nonexistent/ca.pem)",
        ));
    cmd()
        .env("FLEET_NATS__AUTH__PASSWORD", "right-one")
        .args(["streams", "init"])
        .assert()
        .success();
}

#[test]
fn streams_show_reports_what_the_server_has_against_the_configuration() {
    let server = NatsServer::start();
    // Nothing there yet: every stream and consumer missing, exit 1.
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["streams", "show"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "missing (run `fleetctl streams init`)",
        ));
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .env("FLEET_NATS__ACK_WAIT_MS", "45000")
        .args(["streams", "init"])
        .assert()
        .success();
    let out = fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .env("FLEET_NATS__ACK_WAIT_MS", "45000")
        .args(["streams", "show", "--json"])
        .assert()
        .success();
    let shown: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let provisioner = shown["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["durable"] == "provisioner")
        .unwrap();
    assert_eq!(
        provisioner["ackWaitMs"], 45000,
        "what the configuration says"
    );
    assert_eq!(provisioner["backoffMs"], serde_json::json!([]));
    assert_eq!(provisioner["maxDeliver"], 5);
    assert_eq!(provisioner["filter"], "tenant.*");
    // Configured otherwise than the server has it: called out, exit 1.
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .env("FLEET_NATS__ACK_WAIT_MS", "30000")
        .args(["streams"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "ackWait 45000 ms, configured 30000 ms",
        ));
    // A stream's settings too: the server has one replica, a cluster's configuration says 3.
    let out = fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .env("FLEET_NATS__ACK_WAIT_MS", "45000")
        .env("FLEET_NATS__REPLICAS", "3")
        .args(["streams", "show", "--json"])
        .assert()
        .code(1);
    let shown: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let tenant_stream = shown["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "FLEET_TENANT_COMMANDS")
        .unwrap();
    assert_eq!(
        tenant_stream["differsFromConfig"],
        serde_json::json!(["replicas 1, configured 3"])
    );
}
