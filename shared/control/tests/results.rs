//! `fleet_deploy_results` against a real nats-server: a deployment's entries read back in
//! batches (JetStream's batched direct get) are exactly what the stream's leader gives one
//! message at a time — across batch boundaries, other deployments' entries, target chunks,
//! retry markers and deletions.

use fleet_control::DeployResults;
use fleet_protocol::{DeploymentId, TenantId};
use fleet_rollouts::{EntryKey, ResultEntry, TenantOutcome};
use fleet_runtime::topology::names;
use fleet_testkit::NatsServer;

fn tenant(i: usize) -> TenantId {
    TenantId::parse(format!("t{i:04}")).unwrap()
}

fn outcome(i: usize) -> ResultEntry {
    ResultEntry::Outcome {
        wave: (i % 3) as u32,
        outcome: if i.is_multiple_of(7) {
            TenantOutcome::failed(format!("tenant {i} failed"))
        } else {
            TenantOutcome::ready(i as u64)
        },
    }
}

#[tokio::test]
async fn batched_reads_give_what_the_leader_gives_one_message_at_a_time() {
    let server = NatsServer::start();
    let mut config = fleet_config::Config::default();
    config.nats.url = server.url();
    let runtime = fleet_runtime::Runtime::connect(&config).await.unwrap();
    let batched = fleet_control::deploy_results(&runtime).await.unwrap();
    let bucket = runtime.bucket(names::DEPLOY_RESULTS).await.unwrap();
    let plain = DeployResults::new(bucket.clone());
    let (d1, d2) = (
        DeploymentId::parse("d1").unwrap(),
        DeploymentId::parse("d2").unwrap(),
    );
    // More entries than one batch carries (256), another deployment's in between, the
    // targets of both.
    let targets: Vec<TenantId> = (0..700).map(tenant).collect();
    batched.write_targets(&d1, "a", &targets).await.unwrap();
    for i in 0..700 {
        batched
            .record(&d1, &EntryKey::Deploy(tenant(i)), &outcome(i))
            .await
            .unwrap();
        if i.is_multiple_of(5) {
            batched
                .record(&d2, &EntryKey::Deploy(tenant(i)), &outcome(i))
                .await
                .unwrap();
        }
    }
    batched.write_targets(&d2, "a", &targets).await.unwrap();
    // A failed tenant marked for retry, a rollback result, a deleted entry.
    let (_, failed) = batched
        .get(&d1, &EntryKey::Deploy(tenant(7)))
        .await
        .unwrap()
        .unwrap();
    assert!(batched.mark_retry(&d1, &tenant(7), failed).await.unwrap());
    batched
        .record(&d1, &EntryKey::Rollback(tenant(3)), &outcome(3))
        .await
        .unwrap();
    bucket
        .delete(EntryKey::Deploy(tenant(11)).key(&d1))
        .await
        .unwrap();

    let (everything, through) = plain.read_since(&d1, 0).await.unwrap();
    // 700 results (the deleted one gone, the retried one's latest revision), the rollback.
    assert_eq!(everything.len(), 700, "{}", everything.len());
    assert!(matches!(
        everything
            .iter()
            .find(|w| w.key == EntryKey::Deploy(tenant(7)))
            .unwrap()
            .entry,
        ResultEntry::Retry { .. }
    ));
    assert_eq!(
        batched.read_since(&d1, 0).await.unwrap(),
        (everything.clone(), through)
    );
    let direct = batched.read_direct(&runtime.client, &d1, 0).await.unwrap();
    assert_eq!(
        direct,
        (everything.clone(), through),
        "the batched path alone"
    );
    // From a watermark in the middle, and past the end.
    let middle = everything[400].sequence;
    let rest = plain.read_since(&d1, middle).await.unwrap();
    assert_eq!(rest.0.len(), everything.len() - 401);
    assert_eq!(batched.read_since(&d1, middle).await.unwrap(), rest);
    assert_eq!(
        batched
            .read_direct(&runtime.client, &d1, middle)
            .await
            .unwrap(),
        rest
    );
    assert_eq!(
        batched.read_since(&d1, through).await.unwrap(),
        (Vec::new(), through)
    );
    assert_eq!(
        batched
            .read_direct(&runtime.client, &d1, through)
            .await
            .unwrap(),
        (Vec::new(), through)
    );
    // The other deployment: its own entries only.
    let (other, _) = batched.read_since(&d2, 0).await.unwrap();
    assert_eq!(other.len(), 140);
    assert!(other.iter().all(|w| matches!(w.key, EntryKey::Deploy(_))));
}
