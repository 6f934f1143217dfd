//! Reads a live database's schema: `sqlite_master` for the tables, `pragma table_xinfo` for
//! columns, `index_list`/`index_info` for indexes, `foreign_key_list` for keys.
//!
//! Tables of SQLite (`sqlite_…`), libSQL (`libsql_…`) and the fleet itself (`_fleet_…`) are not
//! part of a tenant's object schema and are left out. Only explicitly created indexes are read
//! (the primary key's automatic index is implied by the column).

use libsql::{Connection, Value};

use crate::model::{Column, ColumnType, ForeignKey, Index, OnDelete, Schema, Table};
use crate::sql::{FLEET_TABLE_PREFIX, quote};

/// Why introspection failed.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    /// A query against the catalog failed.
    #[error("cannot read the schema ({what})")]
    Query {
        /// What was being read.
        what: String,
        /// The database error.
        #[source]
        source: libsql::Error,
    },
}

async fn rows(
    conn: &Connection,
    sql: &str,
    what: &str,
) -> Result<Vec<Vec<Value>>, IntrospectError> {
    let err = |source| IntrospectError::Query {
        what: what.to_owned(),
        source,
    };
    let mut rows = conn.query(sql, ()).await.map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.map_err(err)? {
        let values = (0..row.column_count())
            .map(|i| row.get_value(i).unwrap_or(Value::Null))
            .collect();
        out.push(values);
    }
    Ok(out)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Integer(i) => *i,
        _ => 0,
    }
}

/// Whether a table belongs to SQLite, libSQL or the fleet rather than to a tenant's objects.
pub fn is_internal_table(name: &str) -> bool {
    name.starts_with("sqlite_")
        || name.starts_with("libsql_")
        || name.starts_with(FLEET_TABLE_PREFIX)
}

/// The schema of the tenant objects in `conn`'s database.
pub async fn introspect(conn: &Connection) -> Result<Schema, IntrospectError> {
    let mut schema = Schema::default();
    let tables = rows(
        conn,
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        "tables",
    )
    .await?;
    for name in tables.iter().filter_map(|r| text(&r[0])) {
        if is_internal_table(&name) {
            continue;
        }
        let table = introspect_table(conn, &name).await?;
        schema.tables.insert(name, table);
    }
    Ok(schema)
}

async fn introspect_table(conn: &Connection, name: &str) -> Result<Table, IntrospectError> {
    let quoted = quote(name);
    let keys = rows(
        conn,
        &format!("PRAGMA foreign_key_list({quoted})"),
        &format!("foreign keys of {name}"),
    )
    .await?;
    // id, seq, table, from, to, on_update, on_delete, match — single-column keys only.
    let key_of = |column: &str| {
        keys.iter()
            .find(|k| text(&k[3]).as_deref() == Some(column))
            .map(|k| ForeignKey {
                table: text(&k[2]).unwrap_or_default(),
                column: text(&k[4]).unwrap_or_else(|| "id".to_owned()),
                on_delete: OnDelete::from_sql(&text(&k[6]).unwrap_or_default()),
            })
    };
    let mut columns = Vec::new();
    // cid, name, type, notnull, dflt_value, pk, hidden
    for row in rows(
        conn,
        &format!("PRAGMA table_xinfo({quoted})"),
        &format!("columns of {name}"),
    )
    .await?
    {
        if int(&row[6]) != 0 {
            continue; // generated or hidden columns are not the fleet's
        }
        let column_name = text(&row[1]).unwrap_or_default();
        columns.push(Column {
            references: key_of(&column_name),
            name: column_name,
            column_type: ColumnType::from_declared(&text(&row[2]).unwrap_or_default()),
            not_null: int(&row[3]) != 0,
            primary_key: int(&row[5]) != 0,
            default_sql: text(&row[4]),
            renamed_from: None,
        });
    }
    let mut indexes = Vec::new();
    // seq, name, unique, origin, partial
    for row in rows(
        conn,
        &format!("PRAGMA index_list({quoted})"),
        &format!("indexes of {name}"),
    )
    .await?
    {
        if text(&row[3]).as_deref() != Some("c") {
            continue;
        }
        let index_name = text(&row[1]).unwrap_or_default();
        let info = rows(
            conn,
            &format!("PRAGMA index_info({})", quote(&index_name)),
            &format!("index {index_name}"),
        )
        .await?;
        // seqno, cid, name
        let mut parts: Vec<(i64, String)> = info
            .iter()
            .map(|r| (int(&r[0]), text(&r[2]).unwrap_or_default()))
            .collect();
        parts.sort();
        indexes.push(Index {
            name: index_name,
            columns: parts.into_iter().map(|(_, c)| c).collect(),
            unique: int(&row[2]) != 0,
        });
    }
    indexes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Table {
        name: name.to_owned(),
        columns,
        indexes,
        renamed_from: None,
    })
}

/// Row count of a table.
pub async fn count(conn: &Connection, sql: &str) -> Result<u64, IntrospectError> {
    let found = rows(conn, sql, "row count").await?;
    Ok(found.first().map_or(0, |r| int(&r[0]).max(0) as u64))
}
