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

/// The deployer's consumer of an earlier release took every `deploy.>` subject, controls
/// included. Upgrading: attaching (callers, and a worker before it is built) leaves it as it is
/// and does not fail on the control consumer it cannot create yet; the worker's `ensure`
/// narrows the old consumer, then creates the control consumer, which receives the control
/// the old one had not handled.
#[tokio::test]
async fn the_deployer_consumer_of_an_earlier_release_is_narrowed_before_its_controls_get_their_own()
{
    use fleet_runtime::topology::names;
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let mut earlier = Topology::fleet("", 1);
    earlier
        .consumers
        .retain(|c| c.durable != names::DEPLOYER_CONTROL);
    for c in &mut earlier.consumers {
        if c.durable == names::DEPLOYER {
            c.filters = vec!["deploy.>".to_owned()];
        }
    }
    earlier.ensure(&client, &js).await.unwrap();
    js.publish(
        "deploy.control.d1",
        r#"{"deploymentId":"d1","action":"cancel"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let stream = js.get_stream("FLEET_DEPLOY_COMMANDS").await.unwrap();
    let filters = async |durable: &str| {
        let config = stream.consumer_info(durable).await.ok()?.config;
        Some(if config.filter_subject.is_empty() {
            config.filter_subjects
        } else {
            vec![config.filter_subject]
        })
    };

    let now = Topology::fleet("", 1);
    now.ensure_missing(&client, &js).await.unwrap();
    assert_eq!(
        filters(names::DEPLOYER).await.unwrap(),
        ["deploy.>"],
        "attaching changes nothing"
    );
    assert_eq!(
        filters(names::DEPLOYER_CONTROL).await,
        None,
        "not created yet"
    );

    now.ensure(&client, &js).await.unwrap();
    assert_eq!(
        filters(names::DEPLOYER).await.unwrap(),
        ["deploy.*", "deploy.tenant.>"]
    );
    assert_eq!(
        filters(names::DEPLOYER_CONTROL).await.unwrap(),
        ["deploy.control.>"]
    );
    now.ensure(&client, &js).await.unwrap();
    let control: jetstream::consumer::PullConsumer =
        stream.get_consumer(names::DEPLOYER_CONTROL).await.unwrap();
    let mut batch = control
        .fetch()
        .max_messages(1)
        .expires(std::time::Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    use futures::StreamExt;
    let message = batch.next().await.expect("the pending control").unwrap();
    assert_eq!(message.subject.as_str(), "deploy.control.d1");
}

/// A handler that holds every `deploy.tenant` job until released and records the controls.
#[derive(Default)]
struct BusyDeployer {
    started: std::sync::Mutex<Vec<String>>,
    controls: std::sync::Mutex<Vec<String>>,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl fleet_runtime::Handler for BusyDeployer {
    async fn handle(&self, delivery: fleet_runtime::Delivery) -> fleet_runtime::Outcome {
        if delivery.subject.starts_with("deploy.control.") {
            self.controls.lock().unwrap().push(delivery.subject);
        } else {
            self.started.lock().unwrap().push(delivery.subject);
            self.release.notified().await;
        }
        fleet_runtime::Outcome::Done
    }
}

/// A control is handled while every delivery slot of the deployer's main consumer is held by
/// a long job and more jobs wait behind it: controls have a consumer and a job loop of their
/// own in the deployer's process (`run_worker` runs a worker's companion consumers too).
#[tokio::test]
async fn a_control_is_handled_while_the_deployers_jobs_fill_every_slot() {
    use fleet_runtime::topology::names;
    let server = NatsServer::start();
    let mut config = fleet_config::Config::default();
    config.nats.url = server.url();
    config.worker.concurrency = 1;
    config.worker.health_addr = "127.0.0.1:0".into();
    let runtime = fleet_runtime::Runtime::connect(&config).await.unwrap();
    for i in 0..3 {
        runtime
            .publisher
            .publish_bytes(
                &format!("deploy.tenant.d{i}"),
                &format!("job-{i}"),
                "{}".into(),
                async_nats::HeaderMap::new(),
            )
            .await
            .unwrap();
    }
    let handler = std::sync::Arc::new(BusyDeployer::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = {
        let (runtime, config, handler) = (runtime.clone(), config.clone(), handler.clone());
        tokio::spawn(async move {
            runtime
                .run_worker(&config, names::DEPLOYER, handler, rx)
                .await
        })
    };
    let eventually = async |what: &str, check: &dyn Fn() -> bool| {
        for _ in 0..100 {
            if check() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{what}");
    };
    eventually("the first job started", &|| {
        handler.started.lock().unwrap().len() == 1
    })
    .await;
    runtime
        .publisher
        .publish_bytes(
            "deploy.control.d0",
            "control-d0",
            "{}".into(),
            async_nats::HeaderMap::new(),
        )
        .await
        .unwrap();
    eventually("the control handled", &|| {
        handler.controls.lock().unwrap().as_slice() == ["deploy.control.d0"]
    })
    .await;
    assert_eq!(
        handler.started.lock().unwrap().len(),
        1,
        "the control did not wait for the jobs ahead of it"
    );
    // The jobs go on, one at a time.
    for started in 1..=3 {
        handler.release.notify_one();
        if started < 3 {
            eventually("the next job started", &|| {
                handler.started.lock().unwrap().len() == started + 1
            })
            .await;
        }
    }
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
}
