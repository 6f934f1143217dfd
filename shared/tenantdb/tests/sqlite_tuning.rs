//! `tune_sqlite` in a process of its own (SQLite takes the setting only before it is
//! initialised, so it cannot share a process with tests that open databases first).

#![allow(unsafe_code)]

/// Memory SQLite counts as in use; 0 whenever its statistics are off.
fn memory_used() -> i64 {
    // SAFETY: sqlite3_memory_used takes no argument and only reads a counter.
    unsafe { libsql::ffi::sqlite3_memory_used() }
}

#[tokio::test]
async fn sqlite_memory_statistics_are_off_once_tuned_before_the_first_database() {
    assert!(fleet_tenantdb::tune_sqlite(), "SQLite took the setting");
    assert!(
        fleet_tenantdb::tune_sqlite(),
        "a second call answers the same"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = libsql::Builder::new_local(dir.path().join("t.db"))
        .build()
        .await
        .unwrap();
    let conn = db.connect().unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t (name) VALUES ('a');",
    )
    .await
    .unwrap();
    let mut rows = conn.query("SELECT count(*) FROM t", ()).await.unwrap();
    let n: i64 = rows.next().await.unwrap().unwrap().get(0).unwrap();
    assert_eq!(n, 1, "SQLite works as before");
    // With the statistics on (SQLite's default), an open connection and its schema hold
    // memory that SQLite counts; off, nothing is counted.
    assert_eq!(memory_used(), 0);
}
