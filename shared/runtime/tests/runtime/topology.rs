//! Topology: idempotent, and incompatible streams reported, never recreated.

use async_nats::jetstream::stream::{Config, RetentionPolicy};
use async_nats::jetstream::{self};
use fleet_runtime::{Topology, TopologyError};
use fleet_testkit::NatsServer;

#[tokio::test]
async fn ensure_is_idempotent() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let topology = Topology::fleet("", 1);
    topology.ensure(&client, &js).await.unwrap();
    topology.ensure(&client, &js).await.unwrap();
    for stream in &topology.streams {
        let mut s = js.get_stream(&stream.name).await.unwrap();
        assert_eq!(s.info().await.unwrap().config.subjects, stream.subjects);
    }
    for bucket in &topology.buckets {
        js.get_key_value(&bucket.bucket).await.unwrap();
    }
}

#[tokio::test]
async fn an_incompatible_stream_is_reported_and_left_alone() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(Config {
        name: "FLEET_PROGRESS".into(),
        subjects: vec!["progress.>".into()],
        retention: RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = Topology::fleet("", 1)
        .ensure(&client, &js)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TopologyError::Incompatible {
                field: "retention",
                ..
            }
        ),
        "{err}"
    );
    let mut stream = js.get_stream("FLEET_PROGRESS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.retention,
        RetentionPolicy::WorkQueue,
        "not recreated"
    );
}

#[tokio::test]
async fn an_existing_fleet_is_upgraded_in_place_to_the_declared_settings() {
    // What the previous release created: `tenant.>` on the tenant stream, no size limit, no
    // schedules, and a consumer with a backoff that overrode its ack_wait (the server reported
    // 1 s while the configuration said 30 s).
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(Config {
            name: "FLEET_TENANT_COMMANDS".into(),
            subjects: vec!["tenant.>".into()],
            retention: RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("provisioner".into()),
            filter_subject: "tenant.>".into(),
            ack_wait: std::time::Duration::from_secs(30),
            max_deliver: 5,
            backoff: vec![
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(5),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let topology = Topology::fleet("", 1);
    topology.ensure(&client, &js).await.unwrap();
    let mut stream = js.get_stream("FLEET_TENANT_COMMANDS").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, ["tenant.*", "tenant.schedule.*"]);
    assert!(config.allow_message_schedules);
    let consumer = stream.consumer_info("provisioner").await.unwrap();
    assert_eq!(consumer.config.ack_wait, std::time::Duration::from_secs(30));
    assert!(consumer.config.backoff.is_empty(), "the backoff is gone");
    assert_eq!(consumer.config.filter_subject, "tenant.*");
}

#[tokio::test]
async fn a_caller_attaching_creates_what_is_missing_and_changes_nothing_that_exists() {
    // The fleet's topology, as its workers ensured it: the consumers' max_deliver is the
    // workers' retry budget.
    let server = NatsServer::start();
    let mut fleet = fleet_config::Config::default();
    fleet.nats.url = server.url();
    fleet.worker.retry = fleet_config::RetryPolicy::Fixed {
        interval_ms: 100,
        max_attempts: 10,
    };
    fleet_runtime::Runtime::connect(&fleet).await.unwrap();
    // An operator's laptop: the default retry budget. Attaching leaves the consumers alone…
    let laptop = fleet_config::Config {
        nats: fleet.nats.clone(),
        ..Default::default()
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let max_deliver = async || {
        let stream = js.get_stream("FLEET_TENANT_COMMANDS").await.unwrap();
        stream
            .consumer_info("provisioner")
            .await
            .unwrap()
            .config
            .max_deliver
    };
    fleet_runtime::Runtime::attach(&laptop).await.unwrap();
    assert_eq!(max_deliver().await, 10, "attaching changed nothing");
    // …but creates what is missing (a caller may start before any worker).
    js.delete_key_value("fleet_usage").await.unwrap();
    fleet_runtime::Runtime::attach(&laptop).await.unwrap();
    js.get_key_value("fleet_usage").await.unwrap();
    // Ensuring (a worker, `fleetctl streams init`) applies the configuration it carries.
    fleet_runtime::Runtime::connect(&laptop).await.unwrap();
    assert_eq!(
        max_deliver().await,
        i64::from(laptop.worker.retry.max_attempts())
    );
}
