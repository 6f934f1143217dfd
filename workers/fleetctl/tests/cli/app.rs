//! `fleetctl app`: packages are checked before anything is sent; commands are sent once.

use async_nats::jetstream;
use fleet_testkit::NatsServer;
use predicates::prelude::*;

use crate::fleetctl;

async fn app_commands(server: &NatsServer) -> u64 {
    let client = async_nats::connect(server.url()).await.unwrap();
    match jetstream::new(client)
        .get_stream("FLEET_APP_COMMANDS")
        .await
    {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

#[tokio::test]
async fn an_invalid_package_is_refused_with_its_paths_and_nothing_is_sent() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("broken.json");
    std::fs::write(
        &package,
        r#"{"manifest": {"name": "broken", "label": "Broken", "version": "1.0.0", "objects": ["thing", "ghost"],
            "dependencies": ["contacts@not-a-range"], "seedData": [{"object": "nowhere"}]},
           "objects": [{"name": "thing", "fields": {"size": {"type": "no_such_type"}}}]}"#,
    )
    .unwrap();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["app", "install"])
        .arg(&package)
        .args(["--tenant", "acme"])
        .assert()
        .code(2)
        .stdout(
            predicate::str::contains("objects.thing.fields.size.type")
                .and(predicate::str::contains("manifest.objects"))
                .and(predicate::str::contains("manifest.dependencies.0"))
                .and(predicate::str::contains("manifest.seedData.0")),
        );
    assert_eq!(app_commands(&server).await, 0);
}

#[tokio::test]
async fn commands_for_an_unknown_tenant_are_refused_before_anything_is_sent() {
    let server = NatsServer::start();
    for args in [
        &[
            "app",
            "install",
            "examples/apps/contacts-1.0.0",
            "--tenant",
            "acme",
        ][..],
        &[
            "app",
            "upgrade",
            "examples/apps/contacts-1.1.0",
            "--tenant",
            "acme",
        ],
        &["app", "uninstall", "contacts", "--tenant", "acme"],
        &["app", "list", "--tenant", "acme"],
    ] {
        fleetctl()
            .env("FLEET_NATS__URL", server.url())
            .args(args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("unknown tenant acme"));
    }
    assert_eq!(app_commands(&server).await, 0);
}

#[tokio::test]
async fn quota_show_for_an_unknown_tenant_exits_1() {
    let server = NatsServer::start();
    fleetctl()
        .env("FLEET_NATS__URL", server.url())
        .args(["quota", "show", "nobody"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown tenant nobody"));
}
