//! The state store: compare-and-set; a race between two writers ends in one valid state.

use std::sync::Arc;
use std::time::Duration;

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

/// A written state's progress entries wait for a stream that gives no answer (here: none
/// exists yet, as while NATS restarts) and land once it does, each once; a stream that refuses
/// them (full) is not waited on: the write returns `StateError::Progress` naming the revision
/// already written.
#[tokio::test]
async fn progress_entries_wait_for_an_answer_but_not_on_a_refusal() {
    use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy};
    let env = Env::start().await;
    let kv = env
        .js
        .get_key_value(&env.topology.bucket(names::TENANTS).unwrap().bucket)
        .await
        .unwrap();
    let store =
        StateStore::<Status>::new("tenant", kv.clone(), env.publisher.clone(), "late.tenant");

    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .try_write_steps::<Illegal>(
                    "later",
                    None,
                    Status::Active,
                    vec![event("database")],
                    event("Active"),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "returned with no stream to take its entries"
    );
    let written = kv
        .entry("later")
        .await
        .unwrap()
        .expect("the state is written first");
    let late = StreamConfig {
        name: "LATE".into(),
        subjects: vec!["late.>".into()],
        ..Default::default()
    };
    env.js.create_stream(late.clone()).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("returns once a stream takes the entries")
        .unwrap()
        .unwrap()
        .expect("written");
    assert_eq!(done.revision, written.revision);
    // The step's entry and the write's own, each once.
    let state = fleet_testkit::stream_state(&env.js, "LATE").await;
    assert_eq!(state.messages, 2, "{state:?}");

    // Full, refusing new messages: refused at once, whatever the patience.
    env.js
        .update_stream(StreamConfig {
            max_messages: 2,
            discard: DiscardPolicy::New,
            ..late
        })
        .await
        .unwrap();
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        store.transition("now", to(Status::Active)),
    )
    .await
    .expect("a refusal is not waited on")
    .unwrap_err();
    let StateError::Progress { revision, .. } = error else {
        panic!("{error}")
    };
    assert_eq!(kv.entry("now").await.unwrap().unwrap().revision, revision);
}

/// Forwards a connection to `upstream`, holding back everything the server sends while
/// `hold` is set and passing it on, in order, once it is cleared: the client's requests reach
/// the server and are carried out, their answers come too late.
async fn holding_proxy(upstream: String, hold: Arc<std::sync::atomic::AtomicBool>) -> String {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let hold = hold.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let read = tokio::time::timeout(
                        Duration::from_millis(50),
                        server_read.read(&mut buffer),
                    )
                    .await;
                    match read {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(n)) => held.extend_from_slice(&buffer[..n]),
                        Err(_) => {}
                    }
                    if !hold.load(Ordering::SeqCst) && !held.is_empty() {
                        if client_write.write_all(&held).await.is_err() {
                            return;
                        }
                        held.clear();
                    }
                }
            });
        }
    });
    format!("nats://{address}")
}

/// A write that lands but whose answer never comes (the server's replies held back past the
/// client's timeout) is found landed: returned as written at its revision, its progress entry
/// published — not reported failed, to be redelivered, found done and left without history.
/// A delete likewise.
#[tokio::test]
async fn a_write_whose_answer_was_lost_is_found_landed_with_its_history() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::start().await;
    let hold = Arc::new(AtomicBool::new(false));
    let upstream = env.server.url().trim_start_matches("nats://").to_owned();
    let url = holding_proxy(upstream, hold.clone()).await;
    let client = async_nats::connect(url).await.unwrap();
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_millis(500));
    let bucket = &env.topology.bucket(names::TENANTS).unwrap().bucket;
    let kv = js.get_key_value(bucket).await.unwrap();
    let store = StateStore::<Status>::new(
        "tenant",
        kv,
        fleet_runtime::Publisher::new(js.clone()),
        "progress.tenant",
    );
    let known = store
        .transition("acme", |_| {
            Ok::<_, Illegal>(Decision::Write {
                next: Status::Provisioning,
                event: event("created"),
            })
        })
        .await
        .unwrap()
        .unwrap();

    hold.store(true, Ordering::SeqCst);
    let writing = {
        let store = store.clone();
        let known = known.clone();
        tokio::spawn(async move {
            store
                .try_write::<Illegal>("acme", Some(&known), Status::Active, event("Active"))
                .await
        })
    };
    // Past the client's timeout (500 ms): the write is carried out, its answer held back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let direct = env
        .js
        .get_key_value(bucket)
        .await
        .unwrap()
        .entry("acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(direct.revision, known.revision + 1, "the write landed");
    hold.store(false, Ordering::SeqCst);
    let written = tokio::time::timeout(Duration::from_secs(60), writing)
        .await
        .expect("answers once the server's replies come through")
        .unwrap()
        .expect("found landed, not a store error")
        .expect("written, not a lost race");
    assert_eq!(written.revision, direct.revision);
    assert_eq!(written.state, Status::Active);
    let entries = fleet_testkit::stream_messages(&env.js, names::PROGRESS, None).await;
    let id = format!("tenant:acme:{}", written.revision);
    assert!(
        entries
            .iter()
            .any(|m| m.headers.get("Nats-Msg-Id").map(|v| v.as_str()) == Some(id.as_str())),
        "the landed write's entry {id} is in the history"
    );

    // The same for a delete: carried out, its answer held back, found done.
    hold.store(true, Ordering::SeqCst);
    let removing = {
        let written = written.clone();
        tokio::spawn(async move {
            store
                .remove::<Illegal>("acme", &written, event("deleted"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let direct = env.js.get_key_value(bucket).await.unwrap();
    assert!(
        direct.get("acme").await.unwrap().is_none(),
        "the delete landed"
    );
    hold.store(false, Ordering::SeqCst);
    let removed = tokio::time::timeout(Duration::from_secs(60), removing)
        .await
        .expect("answers once the server's replies come through")
        .unwrap()
        .expect("found done, not a store error");
    assert!(removed, "this delete, not a lost race");
    let entries = fleet_testkit::stream_messages(&env.js, names::PROGRESS, None).await;
    let id = format!("tenant:acme:deleted:{}", written.revision);
    assert!(
        entries
            .iter()
            .any(|m| m.headers.get("Nats-Msg-Id").map(|v| v.as_str()) == Some(id.as_str())),
        "the delete's entry {id} is in the history"
    );
}
