//! Each embedded backend: create → open → write/read → usage → delete; idempotent create;
//! tokens (scopes, revocation, expiry); delete of a missing database.

use std::time::Duration;

use fleet_protocol::TenantId;
use fleet_protocol::turso::TursoTokenScope;
use fleet_tenantdb::{LocalBackend, MemoryBackend, TenantDatabases, TenantDbError};
use secrecy::SecretString;

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

async fn lifecycle(backend: &dyn TenantDatabases) {
    let acme = tenant("acme");
    let info = backend.create_database(&acme, None).await.unwrap();
    let again = backend.create_database(&acme, None).await.unwrap();
    assert_eq!(
        info.db_id, again.db_id,
        "create is idempotent for the same tenant"
    );
    let name = backend.database_name(&acme);
    assert_eq!(
        backend.get_database(&name).await.unwrap().unwrap().name,
        name.as_str()
    );

    let token = backend
        .issue_token(&name, TursoTokenScope::FullAccess, None)
        .await
        .unwrap();
    let db = backend.open(&name, &token.token).await.unwrap();
    assert_eq!(db.tenant(), &acme);
    let conn = db.connect().await.unwrap();
    conn.execute_batch("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO note (body) VALUES ('hello');").await.unwrap();
    let mut rows = conn.query("SELECT body FROM note", ()).await.unwrap();
    assert_eq!(
        rows.next()
            .await
            .unwrap()
            .unwrap()
            .get::<String>(0)
            .unwrap(),
        "hello"
    );
    drop(rows);
    assert!(backend.storage_bytes(&name).await.unwrap() > 0);

    // A read-only token reads but cannot write.
    let reader = backend
        .issue_token(
            &name,
            TursoTokenScope::ReadOnly,
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let ro = backend
        .open(&name, &reader.token)
        .await
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(ro.query("SELECT count(*) FROM note", ()).await.is_ok());
    assert!(
        ro.execute("INSERT INTO note (body) VALUES ('nope')", ())
            .await
            .is_err(),
        "read-only token wrote"
    );

    // Unknown and revoked tokens are refused.
    assert!(matches!(
        backend.open(&name, &SecretString::from("flt1.bogus")).await,
        Err(TenantDbError::Unauthorized(_))
    ));
    backend.rotate_tokens(&name).await.unwrap();
    assert!(matches!(
        backend.open(&name, &token.token).await,
        Err(TenantDbError::Unauthorized(_))
    ));

    // Another tenant's database is another database.
    let globex = tenant("globex");
    backend.create_database(&globex, None).await.unwrap();
    assert_eq!(backend.list_databases(None).await.unwrap().len(), 2);

    assert!(backend.delete_database(&name).await.unwrap());
    assert!(
        !backend.delete_database(&name).await.unwrap(),
        "deleting a missing database is not an error"
    );
    assert!(backend.get_database(&name).await.unwrap().is_none());
    assert!(matches!(
        backend
            .issue_token(&name, TursoTokenScope::FullAccess, None)
            .await,
        Err(TenantDbError::NotFound(_))
    ));
}

#[tokio::test]
async fn local_backend_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(dir.path().join("tenants"), "");
    lifecycle(&backend).await;
}

#[tokio::test]
async fn memory_backend_lifecycle() {
    lifecycle(&MemoryBackend::new("")).await;
}

#[tokio::test]
async fn local_databases_are_wal_files_under_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(dir.path(), "t-");
    let acme = tenant("acme");
    backend.create_database(&acme, None).await.unwrap();
    let name = backend.database_name(&acme);
    assert_eq!(name.as_str(), "t-acme");
    let file = backend.database_path(&name);
    assert!(file.exists() && file.starts_with(dir.path()));
    assert_ne!(
        file.parent(),
        Some(dir.path()),
        "spread over shard folders, not all in the data dir"
    );
    assert_eq!(
        backend.connection_url(&name),
        format!("file:{}", file.display())
    );
    let token = backend
        .issue_token(&name, TursoTokenScope::FullAccess, None)
        .await
        .unwrap();
    let conn = backend
        .open(&name, &token.token)
        .await
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rows = conn.query("PRAGMA journal_mode", ()).await.unwrap();
    assert_eq!(
        rows.next()
            .await
            .unwrap()
            .unwrap()
            .get::<String>(0)
            .unwrap(),
        "wal"
    );
    // The record holds a hash, never the token.
    let record = std::fs::read_to_string(backend.record_path(&name)).unwrap();
    use secrecy::ExposeSecret;
    assert!(!record.contains(token.token.expose_secret()));
}

#[tokio::test]
async fn databases_of_the_flat_layout_are_found_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(dir.path(), "");
    let acme = tenant("acme");
    backend.create_database(&acme, None).await.unwrap();
    let name = backend.database_name(&acme);
    let token = backend
        .issue_token(&name, TursoTokenScope::FullAccess, None)
        .await
        .unwrap();
    // What an earlier release left: every file directly under the data dir.
    for file in [backend.database_path(&name), backend.record_path(&name)] {
        std::fs::rename(&file, dir.path().join(file.file_name().unwrap())).unwrap();
    }
    let backend = LocalBackend::new(dir.path(), "");
    assert_eq!(backend.database_path(&name), dir.path().join("acme.db"));
    assert_eq!(backend.list_databases(None).await.unwrap().len(), 1);
    let conn = backend
        .open(&name, &token.token)
        .await
        .unwrap()
        .connect()
        .await
        .unwrap();
    conn.execute("CREATE TABLE t (x)", ()).await.unwrap();
    assert!(backend.delete_database(&name).await.unwrap());
    assert!(!dir.path().join("acme.db").exists() && !dir.path().join("acme.meta.json").exists());
}

#[tokio::test]
async fn concurrent_creates_of_one_database_end_with_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let backend = std::sync::Arc::new(LocalBackend::new(dir.path(), ""));
    let acme = tenant("acme");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (backend, acme) = (backend.clone(), acme.clone());
            tokio::spawn(async move { backend.create_database(&acme, None).await.unwrap().db_id })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every create returned the same database");
}

#[tokio::test]
async fn create_in_another_group_is_refused() {
    let backend = MemoryBackend::new("");
    backend
        .create_database(&tenant("acme"), Some("eu"))
        .await
        .unwrap();
    assert!(matches!(
        backend.create_database(&tenant("acme"), Some("us")).await,
        Err(TenantDbError::AlreadyExists { .. })
    ));
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let backend = MemoryBackend::new("");
    let acme = tenant("acme");
    backend.create_database(&acme, None).await.unwrap();
    let name = backend.database_name(&acme);
    let token = backend
        .issue_token(
            &name,
            TursoTokenScope::FullAccess,
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    backend.open(&name, &token.token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        matches!(backend.open(&name, &token.token).await, Err(TenantDbError::Unauthorized(m)) if m.contains("expired"))
    );
}

/// The local backend's empty WAL-mode image (built in memory, no temp file) is what SQLite
/// writes for a new database after `PRAGMA journal_mode = WAL`, byte for byte, and a database started from it opens in WAL mode and takes a schema.
#[tokio::test]
async fn the_empty_database_image_is_what_sqlite_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reference.db");
    {
        let db = libsql::Builder::new_local(&path).build().await.unwrap();
        let conn = db.connect().unwrap();
        let mut rows = conn.query("PRAGMA journal_mode = WAL", ()).await.unwrap();
        while rows.next().await.unwrap().is_some() {}
    }
    let written = std::fs::read(&path).unwrap();
    let image = fleet_tenantdb::local::empty_wal_database();
    assert_eq!(written.len(), image.len());
    let differing: Vec<usize> = (0..image.len())
        .filter(|&i| written[i] != image[i])
        .collect();
    assert!(differing.is_empty(), "bytes differ at {differing:?}");

    let copy = dir.path().join("from-image.db");
    std::fs::write(&copy, &image).unwrap();
    let db = libsql::Builder::new_local(&copy).build().await.unwrap();
    let conn = db.connect().unwrap();
    let mut rows = conn.query("PRAGMA journal_mode", ()).await.unwrap();
    let mode: String = rows.next().await.unwrap().unwrap().get(0).unwrap();
    assert_eq!(mode, "wal");
    drop(rows);
    conn.execute("CREATE TABLE t (x INTEGER)", ())
        .await
        .unwrap();
    conn.execute("INSERT INTO t VALUES (1)", ()).await.unwrap();
    let mut rows = conn.query("PRAGMA integrity_check", ()).await.unwrap();
    let check: String = rows.next().await.unwrap().unwrap().get(0).unwrap();
    assert_eq!(check, "ok");
}
