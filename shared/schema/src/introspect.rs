//! Reads a live database's schema: `pragma table_list` and `sqlite_master` for the tables,
//! views and triggers, `pragma table_xinfo` for columns, `index_list`/`index_info` for indexes,
//! `foreign_key_list` for keys.
//!
//! Tables of SQLite (`sqlite_…`), libSQL (`libsql_…`) and the fleet itself (`_fleet_…`) are not
//! part of a tenant's object schema and are left out. Only explicitly created indexes are read
//! (the primary key's automatic index is implied by the column). Every ordinary table comes
//! back in [`Schema::tables`]; what the engine never creates — virtual tables and their shadow
//! tables, views, triggers, generated columns — in [`Schema::unmanaged`], each with its SQL.
//! Which ordinary tables, columns and indexes the engine manages is decided afterwards, from
//! the metadata registry ([`crate::owned`]).
//!
//! Everything read here is a function of the catalog alone — the rows of `sqlite_master`
//! (`type`, `name`, `tbl_name`, `sql`): SQLite derives every pragma above from the schema SQL
//! it parsed, and every pragma names the `main` schema (unqualified, SQLite would look in the
//! connection's `temp` schema first, which is not the database's). So a schema read once is kept (a process-wide cache, [`CACHE_BYTES`] of catalog
//! text at most) under its exact catalog text, and a database whose catalog matches one read
//! before costs one query instead of four or so per table: the common case of a fleet whose
//! tenants share their schema (every deployment of a wave plans from the same one).

use std::sync::{Arc, LazyLock};

use libsql::{Connection, Value};

use crate::model::{
    Column, ColumnType, ForeignKey, Index, OnDelete, Schema, Table, Unmanaged, UnmanagedKind,
};
use crate::sql::{FLEET_TABLE_PREFIX, column_definitions, quote};

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

/// Whether the database holds nothing at all: no table, index, view or trigger in its
/// catalog (`main.sqlite_schema`) — a database just created.
pub async fn is_empty(conn: &Connection) -> Result<bool, IntrospectError> {
    let count = rows(
        conn,
        "SELECT count(*) FROM main.sqlite_schema",
        "counting the catalog's entries",
    )
    .await?;
    Ok(matches!(
        count.first().and_then(|r| r.first()),
        Some(Value::Integer(0))
    ))
}

pub(crate) async fn rows(
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

pub(crate) fn text(value: &Value) -> Option<String> {
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

/// Most catalog text (bytes, keys of the schemas read) kept by [`introspect`]'s cache.
pub const CACHE_BYTES: u64 = 16 << 20;

/// Schemas read before, by their exact catalog text.
static SCHEMAS: LazyLock<moka::sync::Cache<String, Arc<Schema>>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .weigher(|catalog: &String, _: &Arc<Schema>| {
            u32::try_from(catalog.len()).unwrap_or(u32::MAX)
        })
        .max_capacity(CACHE_BYTES)
        .build()
});

/// The catalog's rows as one text: each row's four columns, a NUL marking an SQL `NULL`, the
/// unit separator between columns and the record separator between rows (neither occurs in
/// SQLite names or schema SQL written by anyone sane; a collision would need both).
fn catalog_text(master: &[Vec<Value>]) -> String {
    let mut out = String::new();
    for row in master {
        for value in row {
            match value {
                Value::Text(s) => out.push_str(s),
                Value::Null => out.push('\0'),
                other => out.push_str(&format!("{other:?}")),
            }
            out.push('\u{1f}');
        }
        out.push('\u{1e}');
    }
    out
}

/// The schema of the tenant objects in `conn`'s database, with everything else it holds:
/// one catalog query when a database with the same catalog was read before in this process.
pub async fn introspect(conn: &Connection) -> Result<Schema, IntrospectError> {
    Ok(Schema::clone(&introspect_keyed(conn).await?.0))
}

/// [`introspect`], with the catalog text the schema is a function of when it is known to
/// describe exactly that catalog (read before, or read now with no writer changing the catalog
/// meanwhile); `None` for a read that raced a change. Callers that remember what they derive
/// from a schema key it on that text, as the cache here does.
pub(crate) async fn introspect_keyed(
    conn: &Connection,
) -> Result<(Arc<Schema>, Option<String>), IntrospectError> {
    let master = catalog(conn).await?;
    let catalog_before = catalog_text(&master);
    if let Some(schema) = SCHEMAS.get(&catalog_before) {
        return Ok((schema, Some(catalog_before)));
    }
    let schema = Arc::new(introspect_catalog(conn, &master).await?);
    // The pragmas above are reads of their own: kept only when no other writer changed the
    // schema meanwhile, so what is cached under a catalog is what that catalog describes (a
    // read that raced a change is returned, as it always was, for the caller's own
    // `schema_version` check to catch, but never handed to another database).
    if catalog_text(&catalog(conn).await?) == catalog_before {
        SCHEMAS.insert(catalog_before.clone(), schema.clone());
        return Ok((schema, Some(catalog_before)));
    }
    Ok((schema, None))
}

/// The rows of `main.sqlite_master` — type, name, tbl_name, sql — in creation order.
async fn catalog(conn: &Connection) -> Result<Vec<Vec<Value>>, IntrospectError> {
    rows(
        conn,
        "SELECT type, name, tbl_name, sql FROM main.sqlite_master ORDER BY rowid",
        "the schema table",
    )
    .await
}

/// [`introspect`] from the catalog's rows (`master`), without the cache.
async fn introspect_catalog(
    conn: &Connection,
    master: &[Vec<Value>],
) -> Result<Schema, IntrospectError> {
    let mut schema = Schema::default();
    // schema, name, type (table, view, shadow, virtual), ncol, wr, strict
    let list = rows(conn, "PRAGMA main.table_list", "tables").await?;
    let mut tables = Vec::new();
    for row in &list {
        let (Some(name), Some(kind)) = (text(&row[1]), text(&row[2])) else {
            continue;
        };
        if is_internal_table(&name) {
            continue;
        }
        let kind = match kind.as_str() {
            "table" => {
                tables.push(name);
                continue;
            }
            "virtual" => UnmanagedKind::VirtualTable,
            "shadow" => UnmanagedKind::ShadowTable,
            _ => continue, // views are read with their SQL below
        };
        schema.unmanaged.push(Unmanaged {
            kind,
            name,
            table: None,
            sql: None,
        });
    }
    for row in master {
        let (Some(kind), Some(name)) = (text(&row[0]), text(&row[1])) else {
            continue;
        };
        let sql = text(&row[3]);
        match kind.as_str() {
            "view" | "trigger" => schema.unmanaged.push(Unmanaged {
                kind: if kind == "view" {
                    UnmanagedKind::View
                } else {
                    UnmanagedKind::Trigger
                },
                name,
                table: (kind == "trigger").then(|| text(&row[2])).flatten(),
                sql,
            }),
            _ => {
                if let Some(sql) = sql {
                    schema.sql.insert(name.clone(), sql.clone());
                    if let Some(u) = schema.unmanaged.iter_mut().find(|u| u.name == name) {
                        u.sql = Some(sql);
                    }
                }
            }
        }
    }
    tables.sort();
    for name in tables {
        let (table, generated) = introspect_table(conn, &name).await?;
        let definitions = schema
            .sql
            .get(&name)
            .map(|sql| column_definitions(sql))
            .unwrap_or_default();
        for column in generated {
            let sql = definitions
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&column))
                .map(|(_, d)| d.clone());
            schema.unmanaged.push(Unmanaged {
                kind: UnmanagedKind::GeneratedColumn,
                name: column,
                table: Some(name.clone()),
                sql,
            });
        }
        schema.tables.insert(name, table);
    }
    Ok(schema)
}

/// One table: its columns (generated ones aside, returned by name), indexes and keys.
async fn introspect_table(
    conn: &Connection,
    name: &str,
) -> Result<(Table, Vec<String>), IntrospectError> {
    let quoted = quote(name);
    let keys = rows(
        conn,
        &format!("PRAGMA main.foreign_key_list({quoted})"),
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
    let mut generated = Vec::new();
    // cid, name, type, notnull, dflt_value, pk, hidden
    for row in rows(
        conn,
        &format!("PRAGMA main.table_xinfo({quoted})"),
        &format!("columns of {name}"),
    )
    .await?
    {
        if int(&row[6]) != 0 {
            // 2: generated VIRTUAL, 3: generated STORED (1: hidden, in virtual tables only)
            generated.extend(text(&row[1]));
            continue;
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
            field_type: None,
        });
    }
    let mut indexes = Vec::new();
    // seq, name, unique, origin, partial
    for row in rows(
        conn,
        &format!("PRAGMA main.index_list({quoted})"),
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
            &format!("PRAGMA main.index_info({})", quote(&index_name)),
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
    Ok((
        Table {
            name: name.to_owned(),
            columns,
            indexes,
            renamed_from: None,
        },
        generated,
    ))
}

/// Row count of a table.
pub async fn count(conn: &Connection, sql: &str) -> Result<u64, IntrospectError> {
    Ok(counts(conn, sql).await?.first().copied().unwrap_or(0))
}

/// The counts of a one-row query with one count per column (`SELECT count(…), sum(…) …`).
pub async fn counts(conn: &Connection, sql: &str) -> Result<Vec<u64>, IntrospectError> {
    let found = rows(conn, sql, "row counts").await?;
    Ok(found
        .first()
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    Value::Integer(i) => (*i).max(0) as u64,
                    Value::Real(x) => x.max(0.0) as u64,
                    _ => 0,
                })
                .collect()
        })
        .unwrap_or_default())
}
