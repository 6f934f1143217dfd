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
