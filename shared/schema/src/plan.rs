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
//! **Safety.** Removing an object or field loses data: such a plan is refused with the list of
//! [`Loss`]es unless `allow_destructive` is set — and that flag accepts nothing else. Changes
//! that depend on the rows are checked against them before anything is written ([`DataFacts`])
//! and refused, flag or not, as a [`Conflict`] naming the field and how many rows stand in the
//! way: required over rows without a value (and no `defaultValue` to fill them), a new required
//! field without a default on a table with rows, a narrower type over values that do not fit,
//! a unique index over duplicates. Records are never deleted to satisfy a constraint.
//!
//! **What is not the engine's is kept.** A rebuild recreates the table's unmanaged columns
//! (hand-added and generated, from their own definitions) and indexes, and saves and recreates
//! every view and trigger that names the table (SQLite's procedure); if one of them no longer
//! fits the new table, the apply fails and rolls back, leaving the database as it was.

use std::collections::{BTreeMap, BTreeSet};

use fleet_protocol::{DeployDiff, MigrationPlan, MigrationStatement};
use serde::Serialize;

pub use crate::diff::Conflict;
use crate::diff::{Change, Diff, deploy_diff};
use crate::model::{Column, Index, Schema, Table, Unmanaged, UnmanagedKind};
use crate::owned::kept_through_rebuild;
use crate::registry::Registered;
use crate::sql::{
    FLEET_TABLE_PREFIX, column_definition, create_index, create_table, drop_index, identifiers,
    is_literal, quote,
};

/// What planning knows about the rows of the current database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DataFacts {
    /// Row count per table (current name).
    pub rows: BTreeMap<String, u64>,
    /// NULL count per (desired table, desired column), for columns that become required.
    pub nulls: BTreeMap<(String, String), u64>,
    /// Count of duplicated value groups per new unique index name (on existing tables).
    pub duplicates: BTreeMap<String, u64>,
    /// Per (desired table, desired column) whose type narrows: how many values do not fit the
    /// new type (text that is not a number for `REAL`, …).
    pub misfits: BTreeMap<(String, String), u64>,
}

impl DataFacts {
    fn rows_of(&self, table: &str) -> u64 {
        self.rows.get(table).copied().unwrap_or(0)
    }
}

/// Planning options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PlanOptions {
    /// Allow dropping the objects and fields the bundle removed (nothing else is ever lost).
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

/// Why no plan was produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The plan would drop what the bundle removed and `allow_destructive` was not set.
    #[error("the migration would lose data (pass allow-destructive to accept):\n  {}", list_losses(.losses))]
    Destructive {
        /// Everything that would be lost.
        losses: Vec<Loss>,
        /// The diff, for display.
        diff: Box<DeployDiff>,
    },
    /// The data or the declared intent makes the change impossible, whatever the options.
    #[error("the migration cannot apply:\n  {}", .conflicts.iter().map(|c| format!("{}: {}", c.entity, c.why)).collect::<Vec<_>>().join("\n  "))]
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
    /// Declared hints the plan does not use (`renamedFrom` with nothing to rename), in words.
    pub notes: Vec<String>,
    /// What the database holds that the plan leaves alone (see [`crate::owned`]).
    pub unmanaged: Vec<Unmanaged>,
    /// The metadata registry as it was when planned (`None`: the database has none).
    pub registered: Option<Vec<Registered>>,
}

/// One statement in the making.
struct Step {
    sql: String,
    rollback: Option<String>,
}

/// Orders parallel renames `(from, to)` so that none overwrites a name still to be moved,
/// breaking cycles (swaps) through a scratch name.
fn sequential(
    mut moves: Vec<(String, String)>,
    scratch: &dyn Fn(usize) -> String,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut temps = 0;
    while !moves.is_empty() {
        let free = moves
            .iter()
            .position(|(_, to)| !moves.iter().any(|(from, _)| from == to));
        match free {
            Some(i) => out.push(moves.remove(i)),
            None => {
                let (from, to) = moves.remove(0);
                let temp = scratch(temps);
                temps += 1;
                out.push((from, temp.clone()));
                moves.push((temp, to));
            }
        }
    }
    out
}

/// How many values of `facts` stop a change, as a conflict.
fn data_conflicts(
    changes: &[Change],
    facts: &DataFacts,
    current_name: &dyn Fn(&str) -> String,
) -> Vec<Conflict> {
    let mut conflicts = Vec::new();
    for change in changes {
        match change {
            Change::AlterColumn { table, from, to } => {
                let key = (table.clone(), to.name.clone());
                let misfits = facts.misfits.get(&key).copied().unwrap_or(0);
                if !from.column_type.widens_to(to.column_type) && misfits > 0 {
                    conflicts.push(Conflict {
                        entity: format!("{table}.{}", to.name),
                        why: format!(
                            "{misfits} row(s) hold values that do not fit {} ({}); fix or clear them first",
                            to.field_type.as_deref().unwrap_or(to.column_type.sql()),
                            to.column_type.sql()
                        ),
                    });
                }
                let nulls = facts.nulls.get(&key).copied().unwrap_or(0);
                if to.not_null && !from.not_null && to.default_sql.is_none() && nulls > 0 {
                    conflicts.push(Conflict {
                        entity: format!("{table}.{}", to.name),
                        why: format!(
                            "becomes required, but {nulls} row(s) have no value; give the field a defaultValue (which fills them) or fill them first"
                        ),
                    });
                }
            }
            Change::AddColumn { table, column } => {
                let rows = facts.rows_of(&current_name(table));
                if column.not_null && column.default_sql.is_none() && rows > 0 {
                    conflicts.push(Conflict {
                        entity: format!("{table}.{}", column.name),
                        why: format!("a new required field without a defaultValue, but the {rows} existing row(s) would have no value; give it a defaultValue"),
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
    conflicts
}

/// The views and triggers that must be saved and recreated around rebuilding `tables`: every
/// trigger on them, and every view or trigger whose SQL names them or a view saved before
/// (views over views), in creation order.
fn dependents<'a>(current: &'a Schema, tables: &BTreeSet<String>) -> Vec<&'a Unmanaged> {
    let mut names: BTreeSet<String> = tables.iter().map(|t| t.to_lowercase()).collect();
    let candidates: Vec<(&Unmanaged, BTreeSet<String>)> = current
        .unmanaged
        .iter()
        .filter(|u| {
            matches!(u.kind, UnmanagedKind::View | UnmanagedKind::Trigger) && u.sql.is_some()
        })
        .map(|u| (u, identifiers(u.sql.as_deref().unwrap_or_default())))
        .collect();
    let mut saved = vec![false; candidates.len()];
    loop {
        let mut grew = false;
        for (i, (u, words)) in candidates.iter().enumerate() {
            if saved[i] {
                continue;
            }
            let on_table = u
                .table
                .as_ref()
                .is_some_and(|t| names.contains(&t.to_lowercase()));
            // A view's own name in its SQL is not a dependency; a trigger may share a table's name.
            let own_name =
                |w: &String| u.kind == UnmanagedKind::View && *w == u.name.to_lowercase();
            if on_table || words.iter().any(|w| names.contains(w) && !own_name(w)) {
                saved[i] = true;
                grew = true;
                if u.kind == UnmanagedKind::View {
                    names.insert(u.name.to_lowercase());
                }
            }
        }
        if !grew {
            break;
        }
    }
    candidates
        .iter()
        .zip(saved)
        .filter(|(_, s)| *s)
        .map(|((u, _), _)| *u)
        .collect()
}

/// The views and triggers this change would break, as conflicts: one that names a table the
/// change drops, or a column it drops (or, in a rebuild, renames away — a native rename
/// rewrites them, a rebuild's copy cannot). By the words of their SQL: conservative, and the
/// refusal names what to change.
fn broken_dependents(
    changes: &[Change],
    current: &Schema,
    rebuilt: &BTreeSet<String>,
    current_name: &dyn Fn(&str) -> String,
) -> Vec<Conflict> {
    // (live table, desired table, column) gone by this change.
    let mut gone: Vec<(String, String, String)> = Vec::new();
    let mut dropped: Vec<&str> = Vec::new();
    for change in changes {
        match change {
            Change::DropTable(t) => dropped.push(&t.name),
            Change::DropColumn { table, column } => {
                gone.push((current_name(table), table.clone(), column.name.clone()))
            }
            Change::RenameColumn { table, from, .. } if rebuilt.contains(table) => {
                gone.push((current_name(table), table.clone(), from.clone()))
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for u in current.unmanaged.iter().filter(|u| {
        matches!(
            u.kind,
            UnmanagedKind::View
                | UnmanagedKind::Trigger
                | UnmanagedKind::Index
                | UnmanagedKind::GeneratedColumn
        )
    }) {
        let words = identifiers(u.sql.as_deref().unwrap_or_default());
        let kind = match u.kind {
            UnmanagedKind::View => "view",
            UnmanagedKind::Trigger => "trigger",
            UnmanagedKind::Index => "index",
            _ => "generated column",
        };
        let names = |table: &str| {
            u.table
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(table))
                || words.contains(&table.to_lowercase())
        };
        for table in &dropped {
            // An index or generated column goes with its own table.
            let part_of = matches!(
                u.kind,
                UnmanagedKind::Index | UnmanagedKind::GeneratedColumn
            ) && u.table.as_deref() == Some(*table);
            if names(table) && !part_of {
                out.push(Conflict {
                    entity: u.name.clone(),
                    why: format!("the {kind} names table {table}, which this change drops; change or drop the {kind} first"),
                });
            }
        }
        for (live, table, column) in &gone {
            if (names(live) || names(table)) && words.contains(&column.to_lowercase()) {
                out.push(Conflict {
                    entity: u.name.clone(),
                    why: format!(
                        "the {kind} names {table}.{column}, which this change removes or renames; change or drop the {kind} first"
                    ),
                });
            }
        }
    }
    out
}

/// What a rebuild could not keep, as conflicts: table constraints, `WITHOUT ROWID` and column
/// constraints the engine did not create (a table made by hand and taken over by name), and a
/// view or trigger on a table that is renamed and rebuilt in one change (its saved SQL names
/// the old table).
fn unkeepable(
    current: &Schema,
    rebuilt: &BTreeSet<String>,
    saved: &[&Unmanaged],
    current_name: &dyn Fn(&str) -> String,
) -> Vec<Conflict> {
    let mut out = Vec::new();
    for table in rebuilt {
        let live = current_name(table);
        let Some(sql) = current.sql.get(&live) else {
            continue;
        };
        let mut lost = crate::sql::table_constraints(sql);
        for (column, definition) in crate::sql::column_definitions(sql) {
            let managed = current
                .tables
                .get(&live)
                .is_some_and(|t| t.column(&column).is_some());
            let words = identifiers(&definition);
            if managed
                && ["check", "collate", "unique", "autoincrement"]
                    .iter()
                    .any(|w| words.contains(*w))
            {
                lost.push(definition);
            }
        }
        if !lost.is_empty() {
            out.push(Conflict {
                entity: table.clone(),
                why: format!(
                    "the change rebuilds the table, which has definitions the engine did not create and would lose ({}); change the table by hand or leave it out of the bundle",
                    lost.join("; ")
                ),
            });
        }
        if live != *table {
            for u in saved {
                let words = identifiers(u.sql.as_deref().unwrap_or_default());
                if u.table.as_deref() == Some(live.as_str()) || words.contains(&live.to_lowercase())
                {
                    out.push(Conflict {
                        entity: u.name.clone(),
                        why: format!(
                            "names {live}, which this change both renames to {table} and rebuilds; deploy the rename and the other changes separately, or drop it first"
                        ),
                    });
                }
            }
        }
    }
    out
}

fn drop_unmanaged(u: &Unmanaged) -> String {
    let kind = if u.kind == UnmanagedKind::View {
        "VIEW"
    } else {
        "TRIGGER"
    };
    format!("DROP {kind} {}", quote(&u.name))
}

/// Plans the migration from `current` (the managed view of the live database) to `desired`.
pub fn plan(
    current: &Schema,
    desired: &Schema,
    facts: &DataFacts,
    options: PlanOptions,
) -> Result<Planned, PlanError> {
    plan_diffed(
        current,
        desired,
        crate::diff::diff(current, desired),
        facts,
        options,
    )
}

/// [`plan`] from `diff`, the diff from `current` to `desired` already made.
pub(crate) fn plan_diffed(
    current: &Schema,
    desired: &Schema,
    diff: Diff,
    facts: &DataFacts,
    options: PlanOptions,
) -> Result<Planned, PlanError> {
    let Diff {
        changes,
        mut conflicts,
        notes,
    } = diff;
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
    let mut rebuilt: BTreeSet<String> = BTreeSet::new();
    let mut narrowed: BTreeSet<String> = BTreeSet::new();
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
                    rebuilt.insert(table.clone());
                }
            }
            Change::AlterColumn { table, from, to } => {
                rebuilt.insert(table.clone());
                if !from.column_type.widens_to(to.column_type) {
                    narrowed.insert(table.clone());
                }
            }
            Change::AddColumn { table, column } if !can_add_natively(column) => {
                rebuilt.insert(table.clone());
            }
            _ => {}
        }
    }
    conflicts.extend(data_conflicts(&changes, facts, &current_name));
    // 0. Views and triggers that name a rebuilt table are saved (dropped first, recreated
    //    last): SQLite's procedure, as the rebuild drops and renames the table they refer to.
    //    One that names a column the change removes or renames could not come back: refused.
    let mut rebuilt_names = rebuilt.clone();
    rebuilt_names.extend(rebuilt.iter().map(|t| current_name(t)));
    let saved = if rebuilt.is_empty() {
        Vec::new()
    } else {
        dependents(current, &rebuilt_names)
    };
    conflicts.extend(broken_dependents(
        &changes,
        current,
        &rebuilt,
        &current_name,
    ));
    conflicts.extend(unkeepable(current, &rebuilt, &saved, &current_name));
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
        .filter_map(|c| match c {
            Change::DropTable(t) => Some(t.name.as_str()),
            _ => None,
        })
        .collect();
    let renamed_to: BTreeSet<&str> = renamed_tables.keys().copied().collect();
    for u in saved.iter().rev() {
        steps.push(Step {
            sql: drop_unmanaged(u),
            rollback: u.sql.clone(),
        });
    }
    // 1. Indexes go first, so the columns they cover can be dropped or renamed natively.
    for change in &changes {
        if let Change::DropIndex { table, index } = change
            && !rebuilt.contains(table)
            && !dropped_tables.contains(&table.as_str())
        {
            steps.push(Step {
                sql: drop_index(index),
                rollback: Some(create_index(table, index)),
            });
        }
    }
    // 2. Tables whose name a rename takes over are dropped before it; then the renames, in an
    //    order where none overwrites a table still to be moved.
    for table in dropped_tables.iter().filter(|t| renamed_to.contains(*t)) {
        steps.push(Step {
            sql: format!("DROP TABLE {}", quote(table)),
            rollback: None,
        });
    }
    let moves = renamed_tables
        .iter()
        .map(|(to, from)| ((*from).to_owned(), (*to).to_owned()))
        .collect();
    for (from, to) in sequential(moves, &|i| format!("{FLEET_TABLE_PREFIX}rename_{i}")) {
        steps.push(Step {
            sql: format!("ALTER TABLE {} RENAME TO {}", quote(&from), quote(&to)),
            rollback: Some(format!(
                "ALTER TABLE {} RENAME TO {}",
                quote(&to),
                quote(&from)
            )),
        });
    }
    // 3. Column changes of existing tables: a rebuild, or native ALTERs (drops, then renames,
    //    then additions).
    for (name, want) in &desired.tables {
        let Some(have) = current.tables.get(&current_name(name)) else {
            continue;
        };
        let have = &Table {
            name: name.clone(),
            ..have.clone()
        };
        if rebuilt.contains(name) {
            let kept = kept_through_rebuild(current, &current_name(name));
            steps.push(rebuild(
                have,
                want,
                &changes,
                &kept,
                narrowed.contains(name),
            ));
            continue;
        }
        for change in &changes {
            if let Change::DropColumn { table, column } = change
                && table == name
            {
                steps.push(Step {
                    sql: format!(
                        "ALTER TABLE {} DROP COLUMN {}",
                        quote(table),
                        quote(&column.name)
                    ),
                    rollback: None,
                });
            }
        }
        let moves = changes
            .iter()
            .filter_map(|c| match c {
                Change::RenameColumn { table, from, to } if table == name => {
                    Some((from.clone(), to.clone()))
                }
                _ => None,
            })
            .collect();
        for (from, to) in sequential(moves, &|i| format!("{FLEET_TABLE_PREFIX}rename_{i}")) {
            let rename = |a: &str, b: &str| {
                format!(
                    "ALTER TABLE {} RENAME COLUMN {} TO {}",
                    quote(name),
                    quote(a),
                    quote(b)
                )
            };
            steps.push(Step {
                sql: rename(&from, &to),
                rollback: Some(rename(&to, &from)),
            });
        }
        for change in &changes {
            if let Change::AddColumn { table, column } = change
                && table == name
            {
                steps.push(Step {
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
                });
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
            && !rebuilt.contains(table)
        {
            steps.push(Step {
                sql: create_index(table, index),
                rollback: Some(drop_index(index)),
            });
        }
    }
    // 6. Dropped tables last: nothing that still runs can depend on them.
    for table in dropped_tables.iter().filter(|t| !renamed_to.contains(*t)) {
        steps.push(Step {
            sql: format!("DROP TABLE {}", quote(table)),
            rollback: None,
        });
    }
    // 7. The saved views and triggers, recreated from their own SQL in creation order (a view
    //    is read once, so one that does not fit the new tables fails the apply here).
    for u in &saved {
        if let Some(sql) = &u.sql {
            let sql = if u.kind == UnmanagedKind::View {
                format!("{sql};\nSELECT * FROM {} LIMIT 0", quote(&u.name))
            } else {
                sql.clone()
            };
            steps.push(Step {
                sql,
                rollback: Some(drop_unmanaged(u)),
            });
        }
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
    Ok(Planned {
        diff,
        plan,
        losses,
        notes,
        unmanaged: current.unmanaged.clone(),
        registered: None,
    })
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

/// For each column of `want`, the column of `have` it is copied from: the one `changes` (the
/// plan's diff) renames into it, none for a column it adds, else the one of the same name.
fn forward_sources(have: &Table, want: &Table, changes: &[Change]) -> Vec<Option<String>> {
    want.columns
        .iter()
        .map(|column| {
            let renamed = changes.iter().find_map(|c| match c {
                Change::RenameColumn { table, from, to }
                    if *table == want.name && *to == column.name =>
                {
                    Some(from.clone())
                }
                _ => None,
            });
            let added = changes.iter().any(|c| {
                matches!(c, Change::AddColumn { table, column: a } if *table == want.name && a.name == column.name)
            });
            match renamed {
                Some(from) => Some(from),
                None if added => None,
                None => have.column(&column.name).map(|c| c.name.clone()),
            }
        })
        .collect()
}

/// The rebuild of `have` into `want`, keeping `kept` (the table's unmanaged columns and
/// indexes); and, as its rollback, the rebuild of `want` back into `have` when that restores
/// exactly what was there (no column dropped, no NULL filled by a default, no type narrowed).
/// `have` is addressed by `want`'s name: a table rename, when there is one, has already run.
fn rebuild(
    have: &Table,
    want: &Table,
    changes: &[Change],
    kept: &[&Unmanaged],
    narrows: bool,
) -> Step {
    let mut have = have.clone();
    have.name = want.name.clone();
    let forward = forward_sources(&have, want, changes);
    let (sql, lossless) = rebuild_sql(&have, want, &forward, kept);
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
    let (back, back_lossless) = rebuild_sql(want, &have, &backward, kept);
    Step {
        sql,
        rollback: (lossless && !dropped && back_lossless && !narrows).then_some(back),
    }
}

/// The statements that rebuild `have` into `want`, copying `want.columns[i]` from the `have`
/// column named `sources[i]` and carrying `kept` over as it was defined; and whether the copy
/// is exact (no NULL replaced by a default).
///
/// Nothing here grows an expression with the number of columns: each column is its own
/// select-list item (SQLite limits expression depth, not the number of columns), and rows are
/// never filtered — the data-dependent checks ran before planning ([`DataFacts`]).
fn rebuild_sql(
    have: &Table,
    want: &Table,
    sources: &[Option<String>],
    kept: &[&Unmanaged],
) -> (String, bool) {
    let scratch = format!("{FLEET_TABLE_PREFIX}rebuild_{}", want.name);
    let mut targets = Vec::new();
    let mut exprs = Vec::new();
    let mut filled = false;
    for (column, source) in want.columns.iter().zip(sources) {
        if let Some(from) = source.as_deref().and_then(|name| have.column(name)) {
            targets.push(quote(&column.name));
            let expr = quote(&from.name);
            match &column.default_sql {
                Some(d) if column.not_null && !from.not_null => {
                    filled = true;
                    exprs.push(if is_literal(d) {
                        format!("COALESCE({expr}, {d})")
                    } else {
                        format!("COALESCE({expr}, ({d}))")
                    });
                }
                _ => exprs.push(expr),
            }
        }
    }
    let mut definition = create_table(&scratch, want);
    let extra: Vec<&str> = kept
        .iter()
        .filter(|u| {
            matches!(
                u.kind,
                UnmanagedKind::Column | UnmanagedKind::GeneratedColumn
            )
        })
        .filter_map(|u| u.sql.as_deref())
        .collect();
    if !extra.is_empty() {
        definition.pop(); // the closing parenthesis
        definition.push_str(&format!(", {})", extra.join(", ")));
    }
    for u in kept.iter().filter(|u| u.kind == UnmanagedKind::Column) {
        targets.push(quote(&u.name));
        exprs.push(quote(&u.name));
    }
    let mut parts = vec![definition];
    // The rowid is copied too: an external-content FTS index (or anything else keyed on it)
    // stays pointed at the same rows.
    parts.push(format!(
        "INSERT INTO {} (rowid{}{}) SELECT rowid{}{} FROM {}",
        quote(&scratch),
        if targets.is_empty() { "" } else { ", " },
        targets.join(", "),
        if exprs.is_empty() { "" } else { ", " },
        exprs.join(", "),
        quote(&have.name)
    ));
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
    parts.extend(
        kept.iter()
            .filter(|u| u.kind == UnmanagedKind::Index)
            .filter_map(|u| u.sql.clone()),
    );
    (parts.join(";\n"), !filled)
}
