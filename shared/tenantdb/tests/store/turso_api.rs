//! The Turso client and backend against the HTTP double: every documented answer, each fault
//! kind, Retry-After honoured, permanent 4xx not retried.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_protocol::turso::TursoTokenScope;
use fleet_protocol::{DatabaseName, TenantId};
use fleet_tenantdb::turso::Sleeper;
use fleet_tenantdb::{TenantDatabases, TenantDbError, TursoApiSettings, TursoBackend, TursoClient};
use secrecy::{ExposeSecret, SecretString};

use fleet_testkit::turso::{API_TOKEN, Fault, ORG, TursoDouble};

/// A client of `base_url` whose retry waits are recorded instead of slept.
fn client(base_url: &str, token: &str) -> (TursoClient, Arc<Mutex<Vec<Duration>>>) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let recorded = waits.clone();
    let sleeper: Sleeper = Arc::new(move |delay| {
        recorded.lock().unwrap().push(delay);
        Box::pin(async {})
    });
    let client = TursoClient::new(TursoApiSettings {
        base_url: base_url.to_owned(),
        organization: ORG.to_owned(),
        api_token: SecretString::from(token.to_owned()),
        request_timeout: Duration::from_millis(500),
        retry: retry_policy(),
        rate_limit_per_second: NonZeroU32::new(1000).unwrap(),
    })
    .unwrap()
    .with_sleeper(sleeper);
    (client, waits)
}

/// 100 ms doubling, 4 attempts in all (3 retries), jittered.
fn retry_policy() -> fleet_config::RetryPolicy {
    fleet_config::RetryPolicy::Exponential {
        initial_ms: 100,
        factor: 2.0,
        max_ms: 30_000,
        max_attempts: 4,
        jitter: true,
    }
}

fn name(n: &str) -> DatabaseName {
    DatabaseName::parse(n).unwrap()
}

#[tokio::test]
async fn every_documented_answer_is_understood_and_matches_the_openapi_document() {
    let double = TursoDouble::start(&["eu"]).await;
    let (api, _) = client(&double.uri(), API_TOKEN);
    let created = api.create_database(&name("acme"), "eu").await.unwrap();
    let seed = fleet_protocol::turso::DatabaseSeed {
        kind: "database".into(),
        name: Some("acme".into()),
        url: None,
    };
    api.create_database_seeded(&name("acme-copy"), "eu", Some(&seed))
        .await
        .unwrap();
    assert!(api.delete_database(&name("acme-copy")).await.unwrap());
    assert_eq!(
        (created.name.as_str(), created.group.as_str()),
        ("acme", "eu")
    );
    assert!(matches!(
        api.create_database(&name("acme"), "eu").await,
        Err(TenantDbError::AlreadyExists { .. })
    ));
    assert!(matches!(
        api.create_database(&name("other"), "nope").await,
        Err(TenantDbError::GroupNotFound(_))
    ));
    let got = api.get_database(&name("acme")).await.unwrap().unwrap();
    assert_eq!(got.db_id, created.db_id);
    assert_eq!(got.hostname, format!("acme-{ORG}.turso.io"));
    assert!(api.get_database(&name("missing")).await.unwrap().is_none());
    api.create_database(&name("globex"), "eu").await.unwrap();
    assert_eq!(api.list_databases(Some("eu")).await.unwrap().len(), 2);
    assert_eq!(api.list_databases(Some("us")).await.unwrap().len(), 0);
    let jwt = api
        .create_token(&name("acme"), TursoTokenScope::ReadOnly, "2w")
        .await
        .unwrap();
    assert!(jwt.expose_secret().contains("read-only"));
    assert!(matches!(
        api.create_token(&name("acme"), TursoTokenScope::FullAccess, "soon")
            .await,
        Err(TenantDbError::BadRequest(_))
    ));
    assert!(matches!(
        api.create_token(&name("missing"), TursoTokenScope::FullAccess, "never")
            .await,
        Err(TenantDbError::NotFound(_))
    ));
    api.rotate_tokens(&name("acme")).await.unwrap();
    assert_eq!(double.token_generation("acme"), 1);
    assert!(matches!(
        api.rotate_tokens(&name("missing")).await,
        Err(TenantDbError::NotFound(_))
    ));
    assert_eq!(api.usage(&name("acme")).await.unwrap().storage_bytes, 8192);
    assert!(api.delete_database(&name("acme")).await.unwrap());
    assert!(!api.delete_database(&name("acme")).await.unwrap());
    assert_eq!(double.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn rate_limits_are_retried_honouring_retry_after() {
    let double = TursoDouble::start(&["eu"]).await;
    let (api, waits) = client(&double.uri(), API_TOKEN);
    double.inject([
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        Fault::RateLimited {
            retry_after_secs: 2,
        },
    ]);
    api.create_database(&name("acme"), "eu").await.unwrap();
    assert_eq!(
        *waits.lock().unwrap(),
        vec![Duration::from_secs(7), Duration::from_secs(2)]
    );
    assert_eq!(double.requests().len(), 3);
}

#[tokio::test]
async fn server_errors_and_slow_answers_are_retried_with_backoff() {
    let double = TursoDouble::start(&["eu"]).await;
    let (api, waits) = client(&double.uri(), API_TOKEN);
    // The slow answer is a create that succeeded after the client gave up: the retry then meets
    // 409, which the backend resolves to the database it asked for (idempotent provisioning).
    let backend = TursoBackend::new(api, "eu", "", "libsql://{tenant_id}-acme-org.turso.io");
    double.inject([
        Fault::Status(500),
        Fault::Status(503),
        Fault::Slow(Duration::from_secs(2)),
    ]);
    let info = backend
        .create_database(&TenantId::parse("acme").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(info.name, "acme");
    let waits = waits.lock().unwrap().clone();
    assert_eq!(waits.len(), 3, "three failures, three waits: {waits:?}");
    // Each wait is the policy's delay for that retry, jittered within [delay/2, delay].
    let policy = retry_policy();
    for (n, wait) in waits.iter().enumerate() {
        let (low, high) = (
            policy.delay(n as u32 + 1, 0.0).unwrap(),
            policy.delay(n as u32 + 1, 1.0).unwrap(),
        );
        assert!(
            *wait >= low && *wait <= high,
            "retry {}: {wait:?} not in {low:?}..={high:?}",
            n + 1
        );
    }
    // POSTs: 500, 503, slow (created, but timed out), 409; then the GET that confirms it.
    assert_eq!(double.requests().len(), 5, "{:?}", double.requests());
}

#[tokio::test]
async fn retries_stop_after_the_configured_count() {
    let double = TursoDouble::start(&["eu"]).await;
    let (api, waits) = client(&double.uri(), API_TOKEN);
    double.inject(std::iter::repeat_n(Fault::Status(503), 10));
    let err = api.create_database(&name("acme"), "eu").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(double.requests().len(), 4, "1 attempt + 3 retries");
    assert_eq!(waits.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn permanent_client_errors_are_not_retried() {
    let double = TursoDouble::start(&["eu"]).await;
    let (api, waits) = client(&double.uri(), API_TOKEN);
    assert!(matches!(
        api.create_database(&name("acme"), "missing-group").await,
        Err(TenantDbError::GroupNotFound(_))
    ));
    let (wrong_token, _) = client(&double.uri(), "wrong");
    assert!(matches!(
        wrong_token.list_databases(None).await,
        Err(TenantDbError::Unauthorized(_))
    ));
    assert_eq!(double.requests().len(), 2, "one request each");
    assert!(waits.lock().unwrap().is_empty());
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    // A server that hangs up on the first two connections, then answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = {
                let mut c = counter.lock().unwrap();
                *c += 1;
                *c
            };
            if n <= 2 {
                drop(socket);
                continue;
            }
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let body = r#"{"databases": []}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    let (api, waits) = client(&format!("http://{address}"), API_TOKEN);
    assert!(api.list_databases(None).await.unwrap().is_empty());
    assert_eq!(*accepted.lock().unwrap(), 3);
    assert_eq!(waits.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn backend_create_is_idempotent_and_checks_the_group() {
    let double = TursoDouble::start(&["eu", "us"]).await;
    let (api, _) = client(&double.uri(), API_TOKEN);
    let backend = TursoBackend::new(api, "eu", "", "libsql://{tenant_id}-acme-org.turso.io");
    let acme = TenantId::parse("acme").unwrap();
    let first = backend.create_database(&acme, None).await.unwrap();
    let again = backend.create_database(&acme, None).await.unwrap();
    assert_eq!(
        first.db_id, again.db_id,
        "'already exists' in the same group is success"
    );
    assert!(matches!(
        backend.create_database(&acme, Some("us")).await,
        Err(TenantDbError::AlreadyExists { .. })
    ));
    let token = backend
        .issue_token(
            &backend.database_name(&acme),
            TursoTokenScope::FullAccess,
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert!(token.token.expose_secret().ends_with(".60m"));
    assert_eq!(
        backend.connection_url(&backend.database_name(&acme)),
        "libsql://acme-acme-org.turso.io"
    );
    assert_eq!(
        backend
            .storage_bytes(&backend.database_name(&acme))
            .await
            .unwrap(),
        8192
    );
    assert_eq!(double.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn the_platform_contract_runs_on_the_client_with_upstream_errors() {
    use fleet_protocol::contracts::{ContractError, TursoPlatform};
    use fleet_protocol::turso::CreateTursoDatabaseOptions;
    let double = TursoDouble::start(&["eu"]).await;
    let (api, _) = client(&double.uri(), API_TOKEN);
    let platform: &dyn TursoPlatform = &api;
    let options = |name: &str, group: &str| CreateTursoDatabaseOptions {
        name: name.to_owned(),
        group: group.to_owned(),
        schema_database: None,
        seed: None,
    };
    let created = platform
        .create_database(options("acme", "eu"))
        .await
        .unwrap();
    assert_eq!(created.name, "acme");
    match platform.create_database(options("acme", "eu")).await {
        Err(ContractError::AlreadyExists { name, .. }) => assert_eq!(name, "acme"),
        other => panic!("expected already exists, got {other:?}"),
    }
    assert!(matches!(
        platform.create_database(options("beta", "nowhere")).await,
        Err(ContractError::NotFound { kind: "group", .. }) | Err(ContractError::Other(_))
    ));
    assert_eq!(
        platform
            .get_database(&name("acme"))
            .await
            .unwrap()
            .unwrap()
            .name,
        "acme"
    );
    assert!(
        platform
            .get_database(&name("nobody"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(platform.list_databases(Some("eu")).await.unwrap().len(), 1);
    let token = platform
        .create_token(&name("acme"), TursoTokenScope::ReadOnly, Some("1d"))
        .await
        .unwrap();
    assert!(token.jwt.contains("read-only"), "{}", token.jwt);
    assert_eq!(token.expiration.as_deref(), Some("1d"));
    platform.revoke_tokens(&name("acme")).await.unwrap();
    assert_eq!(double.token_generation("acme"), 1);
    platform.delete_database(&name("acme")).await.unwrap();
    match platform.delete_database(&name("acme")).await {
        Err(ContractError::NotFound {
            kind: "database", ..
        }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
    // Faults past the client's retries are Unavailable (transient) to the caller.
    double.inject(std::iter::repeat_n(Fault::Status(503), 4));
    match platform.list_databases(None).await {
        Err(e @ ContractError::Unavailable(_)) => assert!(e.is_transient()),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(double.violations().is_empty(), "{:?}", double.violations());
}
