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

/// States of kind `tenant` in the tenants bucket, progress under `progress.tenant`.
async fn tenant_store<S: Serialize + serde::de::DeserializeOwned + Clone>(
    env: &Env,
) -> StateStore<S> {
    let kv = env
        .js
        .get_key_value(&env.topology.bucket(names::TENANTS).unwrap().bucket)
        .await
        .unwrap();
    StateStore::new("tenant", kv, env.publisher.clone(), "progress.tenant")
}

#[tokio::test]
async fn racing_transitions_end_in_one_valid_state() {
    let env = Env::start().await;
    let store = Arc::new(tenant_store::<Status>(&env).await);
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

#[tokio::test]
async fn steps_written_at_once_keep_an_entry_each_and_are_reapplied_after_a_lost_race() {
    let env = Env::start().await;
    let store = tenant_store::<Vec<String>>(&env).await;
    let known = store
        .transition("acme", |_| {
            Ok::<_, Illegal>(Decision::Write {
                next: Vec::new(),
                event: event("created"),
            })
        })
        .await
        .unwrap()
        .unwrap();
    // Another writer changes the state after `known` was read.
    store
        .transition("acme", |cur| {
            let mut next = cur.unwrap().state.clone();
            next.push("other".into());
            Ok::<_, Illegal>(Decision::Write {
                next,
                event: event("other"),
            })
        })
        .await
        .unwrap();
    // Two steps carried out in memory, then a third: one write for all three, decided again
    // on the latest state after the lost race.
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let written = store
        .transition_steps_from("acme", &known, |cur| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut next = cur.unwrap().state.clone();
            next.extend(["a".to_owned(), "b".to_owned(), "done".to_owned()]);
            Ok::<_, Illegal>((
                vec![event("a"), event("b")],
                Decision::Write {
                    next,
                    event: event("done"),
                },
            ))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        calls.into_inner(),
        2,
        "decided on `known`, then on the latest"
    );
    assert_eq!(written.state, ["other", "a", "b", "done"]);
    let stored = store.get::<Illegal>("acme").await.unwrap().unwrap();
    assert_eq!(stored, written);

    // The history: created, other, then a, b, done — all three at the revision that wrote them.
    let stream = env.js.get_stream(names::PROGRESS).await.unwrap();
    let mut history = Vec::new();
    for sequence in 1..=env.count(names::PROGRESS).await {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let entry: ProgressEvent = serde_json::from_slice(&message.payload).unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        history.push((entry.step, entry.revision, id));
    }
    let revision = written.revision;
    assert_eq!(
        history[2..],
        [
            (
                "a".to_owned(),
                revision,
                format!("tenant:acme:{revision}:a")
            ),
            (
                "b".to_owned(),
                revision,
                format!("tenant:acme:{revision}:b")
            ),
            (
                "done".to_owned(),
                revision,
                format!("tenant:acme:{revision}")
            ),
        ]
    );
    assert_eq!(history.len(), 5, "{history:?}");

    // A decision that writes nothing publishes none of its steps' entries.
    let unchanged = store
        .transition_steps_from("acme", &written, |_| {
            Ok::<_, Illegal>((vec![event("late")], Decision::Unchanged))
        })
        .await
        .unwrap();
    assert_eq!(unchanged, Some(written));
    assert_eq!(env.count(names::PROGRESS).await, 5);
}

/// A creation: `provisioning` when there is no state, nothing to write when there is one.
fn create_if_absent(
    current: Option<&fleet_runtime::Versioned<Status>>,
) -> Result<Decision<Status>, Illegal> {
    Ok(match current {
        None => Decision::Write {
            next: Status::Provisioning,
            event: event("created"),
        },
        Some(_) => Decision::Unchanged,
    })
}

#[tokio::test]
async fn a_new_key_is_created_without_a_read_and_an_existing_one_is_decided_on_as_it_is() {
    let env = Env::start().await;
    let store = tenant_store::<Status>(&env).await;
    // No state yet: the decision on none is written (created).
    let created = store
        .transition_new("acme", create_if_absent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.state, Status::Provisioning);
    store.transition("acme", to(Status::Active)).await.unwrap();
    // The key exists: the create loses, and the decision is made again on the stored state
    // (here: nothing to write), not on none — the active state is left as it is.
    let seen = std::sync::Mutex::new(Vec::new());
    let again = store
        .transition_new("acme", |cur| {
            seen.lock().unwrap().push(cur.map(|v| v.state));
            create_if_absent(cur)
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.state, Status::Active);
    assert!(again.revision > created.revision);
    assert_eq!(*seen.lock().unwrap(), [None, Some(Status::Active)]);
    assert_eq!(
        store.get::<Illegal>("acme").await.unwrap().unwrap().state,
        Status::Active
    );
    // A refusal on none is made again on the stored state, whose answer stands.
    let refused = store
        .transition_new("acme", |cur| match cur {
            None => Err(Illegal {
                from: Status::Failed,
                to: Status::Provisioning,
            }),
            Some(v) => Ok(if v.state == Status::Active {
                Decision::Unchanged
            } else {
                Decision::Write {
                    next: Status::Failed,
                    event: event("failed"),
                }
            }),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refused.state, Status::Active);
}

#[tokio::test]
async fn the_leader_answers_what_a_direct_get_answers() {
    let env = Env::start().await;
    let store = tenant_store::<Status>(&env).await;
    let leader = |key: &'static str| {
        let store = &store;
        async move { store.get_from_leader::<Illegal>(key).await.unwrap() }
    };
    assert!(leader("acme").await.is_none(), "no key");
    store.transition("acme", to(Status::Active)).await.unwrap();
    let direct = store.get::<Illegal>("acme").await.unwrap().unwrap();
    let read = leader("acme").await.unwrap();
    assert_eq!((read.state, read.revision), (direct.state, direct.revision));
    // A deleted key reads as none (its marker is the last message).
    store
        .remove::<Illegal>("acme", &direct, event("deleted"))
        .await
        .unwrap();
    assert!(leader("acme").await.is_none(), "deleted");
    assert!(store.get::<Illegal>("acme").await.unwrap().is_none());
    // The last revision counts the deletion's marker: what a command after it is told apart by.
    let kv = env
        .js
        .get_key_value(&env.topology.bucket(names::TENANTS).unwrap().bucket)
        .await
        .unwrap();
    let last = fleet_runtime::state::leader_revision(&kv, "acme")
        .await
        .unwrap();
    assert!(last > direct.revision, "the deletion is a revision: {last}");
    assert_eq!(
        last,
        kv.entry("acme").await.unwrap().unwrap().revision,
        "the direct get's"
    );
    assert_eq!(
        fleet_runtime::state::leader_revision(&kv, "nobody")
            .await
            .unwrap(),
        0
    );
    // A wildcard is not a key: refused, as a direct get refuses it, never another key's value.
    store
        .transition("acme.contacts", to(Status::Active))
        .await
        .unwrap();
    for key in [
        "acme.*",
        "acme.>",
        "*.contacts",
        ">",
        "",
        ".acme",
        "acme.",
        "a b",
    ] {
        assert!(
            store.get_from_leader::<Illegal>(key).await.is_err(),
            "{key:?} is refused"
        );
        assert!(store.get::<Illegal>(key).await.is_err(), "{key:?} direct");
    }
}

/// A written state's progress entries wait for a stream that does not take them (here: full,
/// refusing new messages) for as long as the store's patience: the write returns once the
/// stream takes them, with every entry there; with no patience left it returns
/// `StateError::Progress` naming the revision already written.
#[tokio::test]
async fn progress_entries_wait_for_a_stream_that_refuses_them_for_a_while() {
    use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy};
    let env = Env::start().await;
    let full = StreamConfig {
        name: "LATE".into(),
        subjects: vec!["late.>".into()],
        max_messages: 1,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    env.js.create_stream(full.clone()).await.unwrap();
    env.js
        .publish("late.filler", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let kv = env
        .js
        .get_key_value(&env.topology.bucket(names::TENANTS).unwrap().bucket)
        .await
        .unwrap();
    let store =
        StateStore::<Status>::new("tenant", kv.clone(), env.publisher.clone(), "late.tenant");

    // No patience: the state is written, its entries are not, and the error says which revision.
    let impatient = store
        .clone()
        .with_progress_patience(std::time::Duration::ZERO);
    let error = impatient
        .transition("now", to(Status::Active))
        .await
        .unwrap_err();
    let StateError::Progress { revision, .. } = error else {
        panic!("{error}")
    };
    assert_eq!(kv.entry("now").await.unwrap().unwrap().revision, revision);

    // Patience: the write waits while the stream refuses, and returns once it takes them.
    let waiting = tokio::spawn(async move {
        store
            .try_write_steps::<Illegal>(
                "later",
                None,
                Status::Active,
                vec![event("database")],
                event("Active"),
            )
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "returned while the stream refused");
    let written = kv
        .entry("later")
        .await
        .unwrap()
        .expect("the state is written first");
    env.js
        .update_stream(StreamConfig {
            max_messages: -1,
            ..full
        })
        .await
        .unwrap();
    let done = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .expect("returns once the stream takes the entries")
        .unwrap()
        .unwrap()
        .expect("written");
    assert_eq!(done.revision, written.revision);
    let info = env
        .js
        .get_stream("LATE")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    // The filler, then the step's entry and the write's own (published again and again, kept once).
    assert_eq!(info.state.messages, 3, "{:?}", info.state);
}
