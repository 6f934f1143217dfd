//! Gathers the [`DataFacts`] a plan needs: row counts of the tables it touches, NULL counts of
//! columns that become required, values that do not fit a narrower type, duplicate values under
//! new unique indexes.
//!
//! Per-column checks of one table run as one query with one `sum(…)` per column (in chunks of
//! [`CHECKS_PER_QUERY`]): a wide table costs one scan, and no expression grows with the number
//! of columns (SQLite limits expression depth to 1 000).

use libsql::Connection;

use crate::diff::{Change, diff};
use crate::introspect::{IntrospectError, count, counts};
use crate::model::{ColumnType, Schema};
use crate::plan::DataFacts;
use crate::sql::quote;

/// Most per-column checks in one query.
pub const CHECKS_PER_QUERY: usize = 200;

/// What counts the values of `source` that a column of type `to` cannot hold as they are: text
/// that is not a number for `REAL`, anything but a whole number for `INTEGER`, blobs for `TEXT`.
fn misfit(source: &str, to: ColumnType) -> String {
    // A text is a number when it reads as one (JSON's number grammar: `1.50`, `-2`, `1e3`).
    let number = |kinds: &str| {
        // CASE, not AND: json_type() fails on text that is not JSON, so it must not run there.
        format!(
            "coalesce(CASE WHEN typeof({source}) = 'text' AND json_valid({source}) THEN json_type({source}) END IN ({kinds}), 0)"
        )
    };
    match to {
        ColumnType::Real => format!(
            "{source} IS NOT NULL AND typeof({source}) NOT IN ('integer', 'real') AND NOT {}",
            number("'integer', 'real'")
        ),
        ColumnType::Integer => format!(
            "{source} IS NOT NULL AND NOT (typeof({source}) = 'integer' \
             OR (typeof({source}) = 'real' AND {source} = CAST({source} AS INTEGER)) OR {})",
            number("'integer'")
        ),
        ColumnType::Text => format!("typeof({source}) = 'blob'"),
        ColumnType::Blob => "0".to_owned(),
    }
}

/// One per-column check: the fact it feeds, and its expression.
enum Check {
    Nulls(String, String),
    Misfits(String, String),
}

/// Reads the facts about `current`'s rows that planning towards `desired` depends on.
pub async fn collect_facts(
    conn: &Connection,
    current: &Schema,
    desired: &Schema,
) -> Result<DataFacts, IntrospectError> {
    collect_facts_for(conn, current, desired, &diff(current, desired).changes).await
}

/// [`collect_facts`] for `changes`, the diff from `current` to the desired schema already made
/// (planning makes it once for both).
pub(crate) async fn collect_facts_for(
    conn: &Connection,
    current: &Schema,
    desired: &Schema,
    changes: &[Change],
) -> Result<DataFacts, IntrospectError> {
    let mut facts = DataFacts::default();
    let renamed = |table: &str| {
        changes
            .iter()
            .find_map(|c| match c {
                Change::RenameTable { from, to } if to == table => Some(from.clone()),
                _ => None,
            })
            .unwrap_or_else(|| table.to_owned())
    };
    let source_of = |table: &str, column: &str| {
        changes
            .iter()
            .find_map(|c| match c {
                Change::RenameColumn { table: t, from, to } if t == table && to == column => {
                    Some(from.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| column.to_owned())
    };
    // Row counts of the tables a change touches (by their current name): the only ones a
    // plan asks about — a table the migration leaves alone costs no scan.
    for name in current.tables.keys() {
        let touched = changes.iter().any(|c| match c {
            Change::CreateTable(_) => false,
            Change::DropTable(t) => t.name == *name,
            Change::RenameTable { from, .. } => from == name,
            Change::AddColumn { table, .. }
            | Change::DropColumn { table, .. }
            | Change::RenameColumn { table, .. }
            | Change::AlterColumn { table, .. }
            | Change::CreateIndex { table, .. }
            | Change::DropIndex { table, .. } => renamed(table) == *name,
        });
        if touched {
            let rows = count(conn, &format!("SELECT COUNT(*) FROM {}", quote(name))).await?;
            facts.rows.insert(name.clone(), rows);
        }
    }
    let mut checks: std::collections::BTreeMap<String, Vec<Check>> = Default::default();
    for change in changes {
        if let Change::AlterColumn { table, from, to } = change {
            let source = quote(&source_of(table, &to.name));
            let list = checks.entry(renamed(table)).or_default();
            if to.not_null && !from.not_null {
                list.push(Check::Nulls(to.name.clone(), format!("{source} IS NULL")));
            }
            if !from.column_type.widens_to(to.column_type) {
                list.push(Check::Misfits(
                    to.name.clone(),
                    misfit(&source, to.column_type),
                ));
            }
        }
    }
    for (live_table, list) in &checks {
        let desired_table = changes
            .iter()
            .find_map(|c| match c {
                Change::RenameTable { from, to } if from == live_table => Some(to.clone()),
                _ => None,
            })
            .unwrap_or_else(|| live_table.clone());
        for chunk in list.chunks(CHECKS_PER_QUERY) {
            let sums: Vec<String> = chunk
                .iter()
                .map(|c| match c {
                    Check::Nulls(_, e) | Check::Misfits(_, e) => format!("coalesce(sum({e}), 0)"),
                })
                .collect();
            let sql = format!("SELECT {} FROM {}", sums.join(", "), quote(live_table));
            let found = counts(conn, &sql).await?;
            for (check, n) in chunk.iter().zip(found) {
                match check {
                    Check::Nulls(column, _) => facts
                        .nulls
                        .insert((desired_table.clone(), column.clone()), n),
                    Check::Misfits(column, _) => facts
                        .misfits
                        .insert((desired_table.clone(), column.clone()), n),
                };
            }
        }
    }
    for change in changes {
        let Change::CreateIndex { table, index } = change else {
            continue;
        };
        if !index.unique {
            continue;
        }
        let Some(have) = current.tables.get(&renamed(table)) else {
            continue;
        };
        let want = &desired.tables[table];
        let mut sources = Vec::new();
        let mut constant_default = false;
        for column in &index.columns {
            let source = source_of(table, column);
            let added = changes.iter().any(
                |c| matches!(c, Change::AddColumn { table: t, column: a } if t == table && a.name == *column),
            );
            if !added && have.column(&source).is_some() {
                sources.push(quote(&source));
            } else {
                // A new column: every existing row gets its default.
                constant_default |= want.column(column).is_some_and(|c| c.default_sql.is_some());
            }
        }
        let rows = facts.rows.get(&have.name).copied().unwrap_or(0);
        let groups = if sources.len() < index.columns.len() {
            u64::from(constant_default && rows > 1 && sources.is_empty())
        } else {
            let not_null: Vec<String> =
                sources.iter().map(|s| format!("{s} IS NOT NULL")).collect();
            let sql = format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM {} WHERE {} GROUP BY {} HAVING COUNT(*) > 1)",
                quote(&have.name),
                not_null.join(" AND "),
                sources.join(", ")
            );
            count(conn, &sql).await?
        };
        facts.duplicates.insert(index.name.clone(), groups);
    }
    Ok(facts)
}
