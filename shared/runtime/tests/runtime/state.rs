//! The state store: compare-and-set; a race between two writers ends in one valid state.

use std::sync::Arc;

use fleet_protocol::Timestamp;
use fleet_runtime::topology::names;
use fleet_runtime::{Decision, ProgressEvent, StateError, StateStore};
use serde::{Deserialize, Serialize};

use crate::Env;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    Provisioning,
    Active,
    Failed,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("illegal transition {from:?} → {to:?}")]
struct Illegal {
    from: Status,
    to: Status,
}

fn event(step: &str) -> ProgressEvent {
    ProgressEvent {
        kind: "tenant".into(),
        id: "acme".into(),
        step: step.into(),
        status: step.into(),
        duration_ms: None,
        error: None,
        at: Timestamp::now(),
        revision: 0,
    }
}

/// A pure state machine: provisioning → active | failed; nothing leaves active or failed.
fn to(
    target: Status,
) -> impl Fn(Option<&fleet_runtime::Versioned<Status>>) -> Result<Decision<Status>, Illegal> {
    move |current| {
        let from = current.map(|v| v.state).unwrap_or(Status::Provisioning);
        match (from, target) {
            (a, b) if a == b => Ok(Decision::Unchanged),
            (Status::Provisioning, _) => Ok(Decision::Write {
                next: target,
                event: event(&format!("{target:?}")),
            }),
            (from, to) => Err(Illegal { from, to }),
        }
    }
}

#[tokio::test]
async fn racing_transitions_end_in_one_valid_state() {
    let env = Env::start().await;
    let kv = env
        .js
        .get_key_value(&env.topology.bucket(names::TENANTS).unwrap().bucket)
        .await
        .unwrap();
    let store = Arc::new(StateStore::<Status>::new(
        "tenant",
        kv,
        env.publisher.clone(),
        "progress.tenant",
    ));
    let created = store
        .transition("acme", |_| {
            Ok::<_, Illegal>(Decision::Write {
                next: Status::Provisioning,
                event: event("created"),
            })
        })
        .await
        .unwrap();
    assert_eq!(created.unwrap().state, Status::Provisioning);

    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let target = if i % 2 == 0 {
            Status::Active
        } else {
            Status::Failed
        };
        tasks.push(tokio::spawn(async move {
            (target, store.transition("acme", to(target)).await)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (target, result) = task.await.unwrap();
        match result {
            Ok(Some(v)) if v.state == target => winners.push(target),
            Ok(_) => panic!("unexpected unchanged"),
            Err(StateError::Refused(illegal)) => assert_ne!(illegal.from, Status::Provisioning),
            Err(e) => panic!("{e}"),
        }
    }
    let final_state = store.get::<Illegal>("acme").await.unwrap().unwrap().state;
    // Every writer that saw `provisioning` raced; exactly one transition out of it was written
    // (later writers of the same target find it Unchanged and report that state).
    assert!(
        winners.iter().all(|w| *w == final_state),
        "{winners:?} vs {final_state:?}"
    );
    assert!(!winners.is_empty());
    // Two transitions were recorded: the initial one and the winner.
    assert_eq!(env.count(names::PROGRESS).await, 2);
}
