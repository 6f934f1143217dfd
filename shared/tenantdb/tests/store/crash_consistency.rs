//! What a crashed writer leaves behind in the local backend's data dir, and what the next
//! attempt makes of it: torn records are reclaimed, leftovers of the temp file are ignored,
//! complete-but-unreadable records are refused as corrupt (never silently replaced).

use fleet_protocol::TenantId;
use fleet_protocol::turso::TursoTokenScope;
use fleet_tenantdb::{LocalBackend, TenantDatabases, TenantDbError};

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

async fn token_count(backend: &LocalBackend, id: &str) -> usize {
    let name = backend.database_name(&tenant(id));
    let record = std::fs::read(backend.record_path(&name)).unwrap();
    serde_json::from_slice::<serde_json::Value>(&record).unwrap()["tokens"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_zero_length_record_from_a_crashed_create_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(dir.path(), "");
    std::fs::write(dir.path().join("acme.meta.json"), b"").unwrap();
    let name = backend.database_name(&tenant("acme"));
    assert!(
        backend.get_database(&name).await.unwrap().is_none(),
        "a torn record reads as never written"
    );
    let info = backend
        .create_database(&tenant("acme"), None)
        .await
        .unwrap();
    assert_eq!(info.name, "acme");
    let again = backend
        .create_database(&tenant("acme"), None)
        .await
        .unwrap();
    assert_eq!(info.db_id, again.db_id, "the reclaimed record is kept");
    let token = backend
        .issue_token(&name, TursoTokenScope::FullAccess, None)
        .await
        .unwrap();
    backend.open(&name, &token.token).await.unwrap();
    assert_eq!(token_count(&backend, "acme").await, 1);
}

#[tokio::test]
async fn a_truncated_record_is_reclaimed_and_a_complete_garbled_one_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(dir.path(), "");
    // Cut short mid-write (what a crash inside write(2) of an older version left).
    std::fs::write(
        dir.path().join("half.meta.json"),
        br#"{"tenant": "half", "group": "lo"#,
    )
    .unwrap();
    backend
        .create_database(&tenant("half"), None)
        .await
        .unwrap();
    // Complete but not a record: not a torn write; an operator must look.
    std::fs::write(dir.path().join("odd.meta.json"), b"[1, 2, 3]").unwrap();
    let err = backend
        .create_database(&tenant("odd"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, TenantDbError::Corrupt { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("odd"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("odd.meta.json")).unwrap(),
        b"[1, 2, 3]",
        "left as it was"
    );
}

#[tokio::test]
async fn leftover_temp_files_never_become_records() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(dir.path(), "");
    let acme = tenant("acme");
    let name = backend.database_name(&acme);
    let record = backend.record_path(&name);
    let temp = record.with_extension("json.tmp");
    // A crashed writer's temp file, before any record exists: not a database.
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(&temp, b"{\"tenant\":").unwrap();
    assert!(backend.get_database(&name).await.unwrap().is_none());
    assert!(backend.list_databases(None).await.unwrap().is_empty());
    backend.create_database(&acme, None).await.unwrap();
    // A temp file hard-linked to the record (what an earlier release's create left when it
    // crashed between link and unlink) must not let the next write truncate the record
    // through the shared inode.
    std::fs::remove_file(&temp).unwrap();
    std::fs::hard_link(&record, &temp).unwrap();
    let before = std::fs::read(&record).unwrap();
    backend
        .issue_token(&name, TursoTokenScope::FullAccess, None)
        .await
        .unwrap();
    assert_eq!(token_count(&backend, "acme").await, 1);
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(before["dbId"], after["dbId"]);
    assert!(
        !&temp.exists(),
        "no temp file is left after a completed write"
    );
    // Deleting removes every file of the database, leftovers included.
    std::fs::write(&temp, b"x").unwrap();
    assert!(backend.delete_database(&name).await.unwrap());
    assert_eq!(
        std::fs::read_dir(record.parent().unwrap()).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_token_issues_on_one_database_keep_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let backend = std::sync::Arc::new(LocalBackend::new(dir.path(), ""));
    let acme = tenant("acme");
    backend.create_database(&acme, None).await.unwrap();
    let name = backend.database_name(&acme);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (backend, name) = (backend.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            backend
                .issue_token(&name, TursoTokenScope::ReadOnly, None)
                .await
                .unwrap()
        }));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap());
    }
    assert_eq!(token_count(&backend, "acme").await, 20);
    for issued in &tokens {
        backend.open(&name, &issued.token).await.unwrap();
    }
}

#[tokio::test]
async fn revoking_nothing_rewrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(dir.path(), "");
    let acme = tenant("acme");
    backend.create_database(&acme, None).await.unwrap();
    let name = backend.database_name(&acme);
    let record = backend.record_path(&name);
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&record);
    backend.rotate_tokens(&name).await.unwrap();
    assert_eq!(
        inode(&record),
        before,
        "no tokens to revoke: the record is not replaced"
    );
    backend
        .issue_token(&name, TursoTokenScope::FullAccess, None)
        .await
        .unwrap();
    let issued = inode(&record);
    assert_ne!(issued, before, "a new token replaces the record");
    backend.rotate_tokens(&name).await.unwrap();
    assert_ne!(inode(&record), issued, "revoking a token replaces it again");
    assert_eq!(token_count(&backend, "acme").await, 0);
}
