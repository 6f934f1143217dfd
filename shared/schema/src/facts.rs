//! Gathers the [`DataFacts`] a plan needs: row counts of the tables it touches, NULL counts of
//! columns that become required, duplicate values under new unique indexes.

use libsql::Connection;

use crate::diff::{Change, diff};
use crate::introspect::{IntrospectError, count};
use crate::model::Schema;
use crate::plan::DataFacts;
use crate::sql::quote;

/// Reads the facts about `current`'s rows that planning towards `desired` depends on.
pub async fn collect_facts(
    conn: &Connection,
    current: &Schema,
    desired: &Schema,
) -> Result<DataFacts, IntrospectError> {
    let changes = diff(current, desired);
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
    for name in current.tables.keys() {
        let rows = count(conn, &format!("SELECT COUNT(*) FROM {}", quote(name))).await?;
        facts.rows.insert(name.clone(), rows);
    }
    for change in &changes {
        match change {
            Change::AlterColumn { table, from, to } if to.not_null && !from.not_null => {
                let source = to
                    .renamed_from
                    .clone()
                    .filter(|old| {
                        current
                            .tables
                            .get(&renamed(table))
                            .is_some_and(|t| t.column(old).is_some())
                    })
                    .unwrap_or_else(|| to.name.clone());
                let sql = format!(
                    "SELECT COUNT(*) FROM {} WHERE {} IS NULL",
                    quote(&renamed(table)),
                    quote(&source)
                );
                facts
                    .nulls
                    .insert((table.clone(), to.name.clone()), count(conn, &sql).await?);
            }
            Change::CreateIndex { table, index } if index.unique => {
                let Some(have) = current.tables.get(&renamed(table)) else {
                    continue;
                };
                let want = &desired.tables[table];
                let mut sources = Vec::new();
                let mut constant_default = false;
                for column in &index.columns {
                    let desired_column = want.column(column);
                    let source = desired_column
                        .and_then(|c| c.renamed_from.clone())
                        .filter(|old| have.column(old).is_some())
                        .or_else(|| have.column(column).map(|c| c.name.clone()));
                    match source {
                        Some(source) => sources.push(quote(&source)),
                        // A new column: every existing row gets its default.
                        None => {
                            constant_default |=
                                desired_column.is_some_and(|c| c.default_sql.is_some())
                        }
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
            _ => {}
        }
    }
    Ok(facts)
}
