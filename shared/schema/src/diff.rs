//! Current schema vs desired schema → the list of [`Change`]s between them (pure).
//!
//! Renames are taken only from explicit `renamedFrom` hints; a table or column that disappears
//! while another appears is a drop plus an add, never a guessed rename.

use fleet_protocol::deploy::{ChangeType, EntityType};
use fleet_protocol::{DeployDiff, SchemaChange};
use serde_json::{Value, json};

use crate::model::{Column, Index, Schema, Table};

/// One difference between the current and the desired schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new table (its indexes included).
    CreateTable(Table),
    /// A table that is no longer wanted.
    DropTable(Table),
    /// An explicit table rename.
    RenameTable {
        /// Current name.
        from: String,
        /// Desired name.
        to: String,
    },
    /// A new column.
    AddColumn {
        /// Table (desired name).
        table: String,
        /// The column.
        column: Column,
    },
    /// A column that is no longer wanted.
    DropColumn {
        /// Table (desired name).
        table: String,
        /// The column as it is.
        column: Column,
    },
    /// An explicit column rename.
    RenameColumn {
        /// Table (desired name).
        table: String,
        /// Current name.
        from: String,
        /// Desired name.
        to: String,
    },
    /// A column whose type, nullability, default or key changes.
    AlterColumn {
        /// Table (desired name).
        table: String,
        /// The column as it is (under its desired name).
        from: Column,
        /// The column as it should be.
        to: Column,
    },
    /// A new or redefined index.
    CreateIndex {
        /// Table (desired name).
        table: String,
        /// The index.
        index: Index,
    },
    /// An index that is no longer wanted (or is redefined).
    DropIndex {
        /// Table (desired name).
        table: String,
        /// The index as it is.
        index: Index,
    },
}

/// Every change that turns `current` into `desired`, in a stable order.
pub fn diff(current: &Schema, desired: &Schema) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut current_tables = current.tables.clone();
    for table in desired.tables.values() {
        if let Some(old) = &table.renamed_from
            && !current_tables.contains_key(&table.name)
            && let Some(mut moved) = current_tables.remove(old)
        {
            changes.push(Change::RenameTable {
                from: old.clone(),
                to: table.name.clone(),
            });
            moved.name = table.name.clone();
            current_tables.insert(table.name.clone(), moved);
        }
    }
    for table in desired.tables.values() {
        if !current_tables.contains_key(&table.name) {
            changes.push(Change::CreateTable(table.clone()));
        }
    }
    for (name, table) in &current_tables {
        if !desired.tables.contains_key(name) {
            changes.push(Change::DropTable(table.clone()));
        }
    }
    for (name, want) in &desired.tables {
        if let Some(have) = current_tables.get(name) {
            diff_table(have, want, &mut changes);
        }
    }
    changes
}

fn diff_table(have: &Table, want: &Table, changes: &mut Vec<Change>) {
    let table = want.name.clone();
    let mut have = have.clone();
    for column in &want.columns {
        if let Some(old) = &column.renamed_from
            && have.column(&column.name).is_none()
            && have.column(old).is_some()
        {
            changes.push(Change::RenameColumn {
                table: table.clone(),
                from: old.clone(),
                to: column.name.clone(),
            });
            for c in have.columns.iter_mut().filter(|c| &c.name == old) {
                c.name = column.name.clone();
            }
            for i in &mut have.indexes {
                for c in i.columns.iter_mut().filter(|c| *c == old) {
                    *c = column.name.clone();
                }
            }
        }
    }
    for column in &have.columns {
        if want.column(&column.name).is_none() {
            changes.push(Change::DropColumn {
                table: table.clone(),
                column: column.clone(),
            });
        }
    }
    for column in &want.columns {
        match have.column(&column.name) {
            None => changes.push(Change::AddColumn {
                table: table.clone(),
                column: column.clone(),
            }),
            Some(existing) if !existing.same_definition(column) => {
                changes.push(Change::AlterColumn {
                    table: table.clone(),
                    from: existing.clone(),
                    to: column.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for index in &have.indexes {
        if want.index(&index.name) != Some(index) {
            changes.push(Change::DropIndex {
                table: table.clone(),
                index: index.clone(),
            });
        }
    }
    for index in &want.indexes {
        if have.index(&index.name) != Some(index) {
            changes.push(Change::CreateIndex {
                table: table.clone(),
                index: index.clone(),
            });
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Change {
    /// This change as an upstream `SchemaChange`.
    pub fn to_schema_change(&self) -> SchemaChange {
        let change = |entity_type,
                      name: &str,
                      parent: Option<&str>,
                      change_type,
                      old: Option<Value>,
                      new: Option<Value>| {
            SchemaChange {
                entity_type,
                entity_name: name.to_owned(),
                parent_entity: parent.map(str::to_owned),
                change_type,
                old_value: old,
                new_value: new,
            }
        };
        use ChangeType::{Added, Modified, Removed};
        use EntityType::{Field, Index as Idx, Object};
        match self {
            Self::CreateTable(t) => change(Object, &t.name, None, Added, None, Some(to_json(t))),
            Self::DropTable(t) => change(Object, &t.name, None, Removed, Some(to_json(t)), None),
            Self::RenameTable { from, to } => change(
                Object,
                to,
                None,
                Modified,
                Some(json!({"name": from})),
                Some(json!({"name": to})),
            ),
            Self::AddColumn { table, column } => change(
                Field,
                &column.name,
                Some(table),
                Added,
                None,
                Some(to_json(column)),
            ),
            Self::DropColumn { table, column } => change(
                Field,
                &column.name,
                Some(table),
                Removed,
                Some(to_json(column)),
                None,
            ),
            Self::RenameColumn { table, from, to } => change(
                Field,
                to,
                Some(table),
                Modified,
                Some(json!({"name": from})),
                Some(json!({"name": to})),
            ),
            Self::AlterColumn { table, from, to } => change(
                Field,
                &to.name,
                Some(table),
                Modified,
                Some(to_json(from)),
                Some(to_json(to)),
            ),
            Self::CreateIndex { table, index } => change(
                Idx,
                &index.name,
                Some(table),
                Added,
                None,
                Some(to_json(index)),
            ),
            Self::DropIndex { table, index } => change(
                Idx,
                &index.name,
                Some(table),
                Removed,
                Some(to_json(index)),
                None,
            ),
        }
    }
}

/// The upstream `DeployDiff` of `changes`.
pub fn deploy_diff(changes: &[Change], has_breaking_changes: bool) -> DeployDiff {
    DeployDiff::new(
        changes.iter().map(Change::to_schema_change).collect(),
        has_breaking_changes,
    )
}
