//! Usage measured from a tenant database matches what it holds, counted independently.

use serde_json::json;

use crate::TestDb;

#[tokio::test]
async fn usage_counts_objects_records_storage_and_users() {
    let db = TestDb::new().await;
    db.deploy(
        &json!([
            {"name": "account", "fields": {"name": {"type": "text"}}},
            {"name": "deal", "fields": {"amount": {"type": "number"}}}
        ]),
        false,
    )
    .await
    .unwrap();
    db.exec(
        "INSERT INTO account (id, name) VALUES ('a1', 'A'), ('a2', 'B'), ('a3', 'C');
         INSERT INTO deal (id, amount) VALUES ('d1', 1);
         INSERT INTO sys_user (id, email, active) VALUES ('u1', 'a@x.example', 1), ('u2', 'b@x.example', 0);
         CREATE TABLE scratch (x TEXT); INSERT INTO scratch VALUES ('not counted');",
    )
    .await;
    let usage = fleet_schema::usage::measure(&db.conn).await.unwrap();
    assert_eq!(usage.totals.current_object_count, 2);
    assert_eq!(usage.totals.current_record_count, 4);
    assert_eq!(usage.largest_object(), 3);
    assert_eq!(usage.records["deal"], 1);
    assert_eq!(usage.totals.current_users, 1, "active users only");
    let pages = db
        .rows("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        .await;
    assert_eq!(
        pages[0][0],
        libsql::Value::Integer(usage.totals.current_storage_bytes as i64)
    );
    assert!(usage.totals.current_storage_bytes > 0);
}
