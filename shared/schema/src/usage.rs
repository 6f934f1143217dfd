//! A tenant database's usage, as upstream's `TenantUsage` counts it: registered objects, records
//! (per object and in total), storage bytes, deployments applied today, users.
//!
//! Read from the database itself: the metadata registry for the objects (their tables for the
//! records), `sys_deployment` and `sys_user`, and SQLite's `page_count × page_size` for storage
//! (a local file's size; on Turso Cloud the Platform API's usage endpoint is the authority).

use std::collections::BTreeMap;

use fleet_protocol::{TenantUsage, Timestamp};
use libsql::Connection;

use crate::introspect::{IntrospectError, count, counts};
use crate::registry;
use crate::sql::quote;

/// A tenant's usage, with the per-object record counts `TenantUsage` sums.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Upstream's totals.
    pub totals: TenantUsage,
    /// Records per registered object (by object name).
    pub records: BTreeMap<String, u64>,
}

impl Usage {
    /// The most records any one object holds (what `maxRecordsPerObject` bounds).
    pub fn largest_object(&self) -> u64 {
        self.records.values().copied().max().unwrap_or(0)
    }
}

/// Measures the database `conn` is connected to.
pub async fn measure(conn: &Connection) -> Result<Usage, IntrospectError> {
    let rows = registry::read(conn).await?.unwrap_or_default();
    // Which tables exist: the schema table's names are enough (no per-table pragmas).
    let names = crate::introspect::rows(
        conn,
        "SELECT name FROM main.sqlite_master WHERE type = 'table'",
        "table names",
    )
    .await?;
    let tables: std::collections::BTreeSet<String> = names
        .iter()
        .filter_map(|r| crate::introspect::text(&r[0]))
        .collect();
    let mut records = BTreeMap::new();
    for r in rows.iter().filter(|r| r.kind == "object") {
        let Ok(object) = registry::object_of(&r.body) else {
            continue;
        };
        let table = object.table();
        if object.r#abstract || !tables.contains(&table) {
            continue;
        }
        let n = count(conn, &format!("SELECT count(*) FROM {}", quote(&table))).await?;
        records.insert(r.name.clone(), n);
    }
    let has = |t: &str| tables.contains(t);
    let deployments_today = if has("sys_deployment") {
        count(
            conn,
            "SELECT count(*) FROM sys_deployment WHERE applied_at >= strftime('%Y-%m-%d', 'now')",
        )
        .await?
    } else {
        0
    };
    let users = if has("sys_user") {
        count(conn, "SELECT count(*) FROM sys_user WHERE active").await?
    } else {
        0
    };
    let pages = counts(
        conn,
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
    )
    .await?;
    Ok(Usage {
        totals: TenantUsage {
            current_object_count: records.len() as u64,
            current_record_count: records.values().sum(),
            current_storage_bytes: pages.first().copied().unwrap_or(0),
            deployments_today,
            current_users: users,
            api_requests_this_minute: 0,
            last_updated_at: Some(Timestamp::now()),
        },
        records,
    })
}
