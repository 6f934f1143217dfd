//! Changes → an ordered SQLite [`MigrationPlan`] with rollback SQL, and the safety rules.
//!
//! Native `ALTER TABLE` is used where SQLite allows it: `RENAME TO`, `RENAME COLUMN`, `ADD COLUMN`
//! (nullable, or NOT NULL with a literal default, no key with a default) and `DROP COLUMN` (its
//! indexes are dropped first; not for key columns). Everything else — a type, nullability,
//! default or foreign-key change, dropping a key column, adding a required column without a
//! default — rebuilds the table by SQLite's documented procedure (sqlite.org/lang_altertable.html,
//! "making other kinds of table schema changes"): create the new table under a scratch name, copy
//! the rows, drop the old table, rename the new one, recreate the indexes. [`crate::apply`] runs
//! the whole plan in one transaction with foreign keys off and `foreign_key_check` before commit.
//!
//! Planning is pure: what it needs to know about the rows (counts, NULLs, duplicates) comes in as
//! [`DataFacts`], gathered beforehand by [`crate::facts`].
//!
//! **Safety.** Removing an object or field, narrowing a column's type, and making a column
//! required where rows have no value (and no default fills them) lose data: such a plan is
//! refused with the list of [`Loss`]es unless `allow_destructive` is set. A new unique index over
//! duplicate values can never apply, destructive or not: it is a [`Conflict`].

use std::collections::BTreeMap;

use fleet_protocol::{DeployDiff, MigrationPlan, MigrationStatement};
use serde::Serialize;

use crate::diff::{Change, deploy_diff};
use crate::model::{Column, Index, Schema, Table};
use crate::sql::{
    FLEET_TABLE_PREFIX, column_definition, create_index, create_table, drop_index, is_literal,
    quote,
};

/// What planning knows about the rows of the current database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataFacts {
    /// Row count per table (current name).
    pub rows: BTreeMap<String, u64>,
    /// NULL count per (desired table, desired column), for columns that become required.
    pub nulls: BTreeMap<(String, String), u64>,
    /// Count of duplicated value groups per new unique index name (on existing tables).
    pub duplicates: BTreeMap<String, u64>,
}

impl DataFacts {
    fn rows_of(&self, table: &str) -> u64 {
        self.rows.get(table).copied().unwrap_or(0)
    }
}

/// Planning options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Allow changes that lose data.
    pub allow_destructive: bool,
}

/// Something a plan would lose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// `table` or `table.column`.
    pub entity: String,
    /// What is lost, in words.
    pub what: String,
}

/// A change that cannot be applied whatever the options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// `table` or index name.
    pub entity: String,
    /// Why it cannot apply.
    pub why: String,
}

/// Why no plan was produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The plan would lose data and `allow_destructive` was not set.
    #[error("the migration would lose data (pass allow-destructive to accept):\n  {}", list_losses(.losses))]
    Destructive {
        /// Everything that would be lost.
        losses: Vec<Loss>,
        /// The diff, for display.
        diff: Box<DeployDiff>,
    },
    /// The data makes the change impossible.
    #[error("the migration cannot apply to this data:\n  {}", .conflicts.iter().map(|c| format!("{}: {}", c.entity, c.why)).collect::<Vec<_>>().join("\n  "))]
    Conflicts {
        /// Every conflict.
        conflicts: Vec<Conflict>,
    },
}

fn list_losses(losses: &[Loss]) -> String {
    losses
        .iter()
        .map(|l| format!("{}: {}", l.entity, l.what))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// A plan and what it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The changes, as the upstream diff.
    pub diff: DeployDiff,
    /// The statements.
    pub plan: MigrationPlan,
    /// What the plan loses (empty unless `allow_destructive`).
    pub losses: Vec<Loss>,
}

/// One statement in the making.
struct Step {
    sql: String,
    rollback: Option<String>,
}

/// Plans the migration from `current` to `desired`.
pub fn plan(
    current: &Schema,
    desired: &Schema,
    facts: &DataFacts,
    options: PlanOptions,
) -> Result<Planned, PlanError> {
    let changes = crate::diff::diff(current, desired);
    let renamed_tables: BTreeMap<&str, &str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::RenameTable { from, to } => Some((to.as_str(), from.as_str())),
            _ => None,
        })
        .collect();
    let current_name = |table: &str| {
        renamed_tables
            .get(table)
            .copied()
            .unwrap_or(table)
            .to_owned()
    };

    let mut losses = Vec::new();
    let mut conflicts = Vec::new();
    let mut rebuilt: BTreeMap<String, ()> = BTreeMap::new();
    for change in &changes {
        match change {
            Change::DropTable(t) => losses.push(Loss {
                entity: t.name.clone(),
                what: format!(
                    "object removed: table dropped with its {} row(s)",
                    facts.rows_of(&t.name)
                ),
            }),
            Change::DropColumn { table, column } => {
                losses.push(Loss {
                    entity: format!("{table}.{}", column.name),
                    what: format!(
                        "field removed: its values in {} row(s) are dropped",
                        facts.rows_of(&current_name(table))
                    ),
                });
                if column.references.is_some() || column.primary_key {
                    rebuilt.insert(table.clone(), ());
                }
            }
            Change::AlterColumn { table, from, to } => {
                rebuilt.insert(table.clone(), ());
                let rows = facts.rows_of(&current_name(table));
                if !from.column_type.widens_to(to.column_type) {
                    losses.push(Loss {
                        entity: format!("{table}.{}", to.name),
                        what: format!(
                            "type narrows from {} to {}: values in {rows} row(s) may no longer fit",
                            from.column_type.sql(),
                            to.column_type.sql()
                        ),
                    });
                }
                if to.not_null && !from.not_null && to.default_sql.is_none() {
                    let key = (table.clone(), to.name.clone());
                    let nulls = facts.nulls.get(&key).copied().unwrap_or(0);
                    if nulls > 0 {
                        losses.push(Loss {
                            entity: format!("{table}.{}", to.name),
                            what: format!("becomes required without a default: {nulls} row(s) without a value would be deleted"),
                        });
                    }
                }
            }
            Change::AddColumn { table, column } => {
                if !can_add_natively(column) {
                    rebuilt.insert(table.clone(), ());
                }
                let rows = facts.rows_of(&current_name(table));
                if column.not_null && column.default_sql.is_none() && rows > 0 {
                    losses.push(Loss {
                        entity: format!("{table}.{}", column.name),
                        what: format!("new required field without a default: the {rows} existing row(s) would be deleted"),
                    });
                }
            }
            Change::CreateIndex { index, .. } if index.unique => {
                if let Some(&groups) = facts.duplicates.get(&index.name).filter(|&&n| n > 0) {
                    conflicts.push(Conflict {
                        entity: index.name.clone(),
                        why: format!(
                            "unique on ({}) but {groups} value(s) occur more than once",
                            index.columns.join(", ")
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    if !conflicts.is_empty() {
        return Err(PlanError::Conflicts { conflicts });
    }
    let diff = deploy_diff(&changes, !losses.is_empty());
    if !losses.is_empty() && !options.allow_destructive {
        return Err(PlanError::Destructive {
            losses,
            diff: Box::new(diff),
        });
    }

    let mut steps = Vec::new();
    let dropped_tables: Vec<&str> = changes
        .iter()
        .filter_map(|c| {
            if let Change::DropTable(t) = c {
                Some(t.name.as_str())
            } else {
                None
            }
        })
        .collect();
    // 1. Indexes go first, so the columns they cover can be dropped or renamed natively.
    for change in &changes {
        if let Change::DropIndex { table, index } = change
            && !rebuilt.contains_key(table)
            && !dropped_tables.contains(&table.as_str())
        {
            steps.push(Step {
                sql: drop_index(index),
                rollback: Some(create_index(table, index)),
            });
        }
    }
    // 2. Table renames.
    for change in &changes {
        if let Change::RenameTable { from, to } = change {
            steps.push(Step {
                sql: format!("ALTER TABLE {} RENAME TO {}", quote(from), quote(to)),
                rollback: Some(format!(
                    "ALTER TABLE {} RENAME TO {}",
                    quote(to),
                    quote(from)
                )),
            });
        }
    }
    // 3. Column changes of existing tables: a rebuild, or native ALTERs.
    for (name, want) in &desired.tables {
        let Some(have) = current.tables.get(&current_name(name)) else {
            continue;
        };
        let have = &Table {
            name: name.clone(),
            ..have.clone()
        };
        if rebuilt.contains_key(name) {
            steps.push(rebuild(have, want));
            continue;
        }
        for change in &changes {
            match change {
                Change::RenameColumn { table, from, to } if table == name => steps.push(Step {
                    sql: format!(
                        "ALTER TABLE {} RENAME COLUMN {} TO {}",
                        quote(table),
                        quote(from),
                        quote(to)
                    ),
                    rollback: Some(format!(
                        "ALTER TABLE {} RENAME COLUMN {} TO {}",
                        quote(table),
                        quote(to),
                        quote(from)
                    )),
                }),
                Change::DropColumn { table, column } if table == name => steps.push(Step {
                    sql: format!(
                        "ALTER TABLE {} DROP COLUMN {}",
                        quote(table),
                        quote(&column.name)
                    ),
                    rollback: None,
                }),
                Change::AddColumn { table, column } if table == name => steps.push(Step {
                    sql: format!(
                        "ALTER TABLE {} ADD COLUMN {}",
                        quote(table),
                        column_definition(column)
                    ),
                    rollback: Some(format!(
                        "ALTER TABLE {} DROP COLUMN {}",
                        quote(table),
                        quote(&column.name)
                    )),
                }),
                _ => {}
            }
        }
    }
    // 4. New tables with their indexes.
    for change in &changes {
        if let Change::CreateTable(table) = change {
            steps.push(Step {
                sql: create_table(&table.name, table),
                rollback: Some(format!("DROP TABLE {}", quote(&table.name))),
            });
            for index in &table.indexes {
                steps.push(Step {
                    sql: create_index(&table.name, index),
                    rollback: Some(drop_index(index)),
                });
            }
        }
    }
    // 5. New indexes of existing tables not rebuilt (a rebuild recreates its own).
    for change in &changes {
        if let Change::CreateIndex { table, index } = change
            && !rebuilt.contains_key(table)
        {
            steps.push(Step {
                sql: create_index(table, index),
                rollback: Some(drop_index(index)),
            });
        }
    }
    // 6. Dropped tables last: nothing that still runs can depend on them.
    for table in &dropped_tables {
        steps.push(Step {
            sql: format!("DROP TABLE {}", quote(table)),
            rollback: None,
        });
    }

    let statements: Vec<MigrationStatement> = steps
        .into_iter()
        .enumerate()
        .map(|(order, step)| MigrationStatement {
            reversible: step.rollback.is_some(),
            sql: step.sql,
            rollback_sql: step.rollback,
            order: order as u64,
        })
        .collect();
    let plan = MigrationPlan {
        reversible: statements.iter().all(|s| s.reversible),
        statements,
        dialect: "sqlite".to_owned(),
        estimated_duration_ms: None,
    };
    Ok(Planned { diff, plan, losses })
}

/// The plan that undoes `plan` (its statements' `rollbackSql`, in reverse order); `None` when
/// some statement cannot be reversed (it dropped data).
pub fn rollback_plan(plan: &MigrationPlan) -> Option<MigrationPlan> {
    let mut forward: Vec<&MigrationStatement> = plan.statements.iter().collect();
    forward.sort_by_key(|s| s.order);
    let statements = forward
        .iter()
        .rev()
        .enumerate()
        .map(|(order, s)| {
            let sql = s.rollback_sql.clone().filter(|_| s.reversible)?;
            Some(MigrationStatement {
                sql,
                reversible: true,
                rollback_sql: Some(s.sql.clone()),
                order: order as u64,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(MigrationPlan {
        statements,
        dialect: plan.dialect.clone(),
        reversible: true,
        estimated_duration_ms: None,
    })
}

/// Whether `ALTER TABLE … ADD COLUMN` can add this column (SQLite's restrictions).
fn can_add_natively(column: &Column) -> bool {
    let literal_default = column.default_sql.as_deref().is_none_or(is_literal);
    let needs_a_default = column.not_null && column.default_sql.is_none();
    let keyed_with_default = column.references.is_some() && column.default_sql.is_some();
    !(column.primary_key || !literal_default || needs_a_default || keyed_with_default)
}

/// For each column of `want`, the column of `have` it is copied from (same name, or the one it
/// was explicitly renamed from).
fn forward_sources(have: &Table, want: &Table) -> Vec<Option<String>> {
    want.columns
        .iter()
        .map(|column| match &column.renamed_from {
            Some(old) if have.column(&column.name).is_none() && have.column(old).is_some() => {
                Some(old.clone())
            }
            _ => have.column(&column.name).map(|c| c.name.clone()),
        })
        .collect()
}

/// The rebuild of `have` into `want` (and, as its rollback, of `want` back into `have` when
/// nothing is lost on the way). `have` is addressed by `want`'s name: a table rename, when
/// there is one, has already run.
fn rebuild(have: &Table, want: &Table) -> Step {
    let mut have = have.clone();
    have.name = want.name.clone();
    let forward = forward_sources(&have, want);
    let (sql, lossless) = rebuild_sql(&have, want, &forward);
    let backward: Vec<Option<String>> = have
        .columns
        .iter()
        .map(|c| {
            forward
                .iter()
                .zip(&want.columns)
                .find(|(source, _)| source.as_deref() == Some(c.name.as_str()))
                .map(|(_, target)| target.name.clone())
        })
        .collect();
    let dropped = backward.iter().any(Option::is_none);
    let (back, back_lossless) = rebuild_sql(want, &have, &backward);
    Step {
        sql,
        rollback: (lossless && !dropped && back_lossless).then_some(back),
    }
}

/// The statements that rebuild `have` into `want`, copying `want.columns[i]` from the `have`
/// column named `sources[i]`; and whether the copy is exact (no row dropped, no NULL replaced
/// by a default — either would make the reverse rebuild restore something else).
fn rebuild_sql(have: &Table, want: &Table, sources: &[Option<String>]) -> (String, bool) {
    let scratch = format!("{FLEET_TABLE_PREFIX}rebuild_{}", want.name);
    let mut targets = Vec::new();
    let mut exprs = Vec::new();
    let mut filters = Vec::new();
    let mut filled = false;
    for (column, source) in want.columns.iter().zip(sources) {
        match source.as_deref().and_then(|name| have.column(name)) {
            Some(from) => {
                targets.push(quote(&column.name));
                let expr = quote(&from.name);
                if column.not_null && !from.not_null {
                    filled |= column.default_sql.is_some();
                    match &column.default_sql {
                        Some(d) if is_literal(d) => exprs.push(format!("COALESCE({expr}, {d})")),
                        Some(d) => exprs.push(format!("COALESCE({expr}, ({d}))")),
                        None => {
                            filters.push(format!("{expr} IS NOT NULL"));
                            exprs.push(expr);
                        }
                    }
                } else {
                    exprs.push(expr);
                }
            }
            None if column.not_null && column.default_sql.is_none() => filters.push("0".to_owned()),
            None => {}
        }
    }
    let mut parts = vec![create_table(&scratch, want)];
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    if !targets.is_empty() {
        parts.push(format!(
            "INSERT INTO {} ({}) SELECT {} FROM {}{filter}",
            quote(&scratch),
            targets.join(", "),
            exprs.join(", "),
            quote(&have.name)
        ));
    }
    parts.push(format!("DROP TABLE {}", quote(&have.name)));
    parts.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        quote(&scratch),
        quote(&want.name)
    ));
    parts.extend(
        want.indexes
            .iter()
            .map(|i: &Index| create_index(&want.name, i)),
    );
    (parts.join(";\n"), filters.is_empty() && !filled)
}
