//! Current schema vs desired schema → the list of [`Change`]s between them (pure).
//!
//! Renames are taken only from explicit `renamedFrom` hints; a table or column that disappears
//! while another appears is a drop plus an add, never a guessed rename. A hint is honoured or
//! refused, never ignored: it may move data into a name the same change frees (the old holder
//! is dropped), chains and swaps work, and a hint that contradicts the schema is a
//! [`Conflict`]; a hint with nothing to rename is a note.

use std::collections::{BTreeMap, BTreeSet};

use fleet_protocol::deploy::{ChangeType, EntityType};
use fleet_protocol::{DeployDiff, SchemaChange};
use serde::Serialize;
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

/// A change that cannot be applied whatever the options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// `table`, `table.column` or index name.
    pub entity: String,
    /// Why it cannot apply.
    pub why: String,
}

/// The differences between two schemas: the changes, the declared intents that cannot be
/// honoured, and the notes about hints the changes do not use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Every change, in a stable order.
    pub changes: Vec<Change>,
    /// Declared renames that contradict the rest of the schema.
    pub conflicts: Vec<Conflict>,
    /// `renamedFrom` hints the changes do not use (never silent).
    pub notes: Vec<String>,
}

/// Where each wanted name takes its data from, by the rename rules:
/// - `renamedFrom: old` with `old` present claims `old`, even when the wanted name also exists
///   (that one is then dropped and replaced — which is destructive — unless it is itself
///   claimed: a chain or a swap);
/// - two names claiming one `old`, or a claimed `old` that is still wanted under its own name,
///   contradict each other;
/// - any other wanted name keeps the present one of the same name, unless that one is claimed.
struct Sources {
    /// Wanted name → present name.
    of: BTreeMap<String, String>,
    conflicts: Vec<Conflict>,
    notes: Vec<String>,
}

fn resolve<'a>(
    have: &BTreeSet<&'a str>,
    wants: &[(&'a str, Option<&'a str>)],
    entity: &dyn Fn(&str) -> String,
) -> Sources {
    let mut claims: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for &(want, from) in wants {
        if let Some(old) = from.filter(|old| have.contains(old) && *old != want) {
            claims.entry(old).or_default().push(want);
        }
    }
    let mut out = Sources {
        of: BTreeMap::new(),
        conflicts: Vec::new(),
        notes: Vec::new(),
    };
    let claimed_validly = |want: &str| claims.iter().any(|(_, by)| by.len() == 1 && by[0] == want);
    let mut valid: BTreeMap<&str, &str> = BTreeMap::new();
    for (old, by) in &claims {
        if by.len() > 1 {
            out.conflicts.push(Conflict {
                entity: entity(old),
                why: format!(
                    "{} all declare renamedFrom {old:?}; only one can take its data",
                    by.join(", ")
                ),
            });
            continue;
        }
        let kept = wants.iter().any(|&(w, _)| w == *old && !claimed_validly(w));
        if kept {
            out.conflicts.push(Conflict {
                entity: entity(by[0]),
                why: format!(
                    "declares renamedFrom {old:?}, but {old:?} is still wanted under its own name; rename that one too, or remove it"
                ),
            });
            continue;
        }
        valid.insert(old, by[0]);
        out.of.insert(by[0].to_owned(), (*old).to_owned());
    }
    for &(want, from) in wants {
        if out.of.contains_key(want) {
            continue;
        }
        let taken = valid.contains_key(want);
        if have.contains(want) && !taken {
            out.of.insert(want.to_owned(), want.to_owned());
        }
        match from {
            Some(old) if old == want || claims.contains_key(old) => {}
            Some(old) if have.contains(want) && !taken => out.notes.push(format!(
                "{}: renamedFrom {old:?} is not used — there is no {old:?}, and {want:?} already exists (renamed earlier)",
                entity(want)
            )),
            Some(old) => out.notes.push(format!(
                "{}: renamedFrom {old:?} is not used — there is no {old:?}, so {want:?} is new and starts empty",
                entity(want)
            )),
            None => {}
        }
    }
    out
}

/// Every change that turns `current` into `desired`, in a stable order, with the declared
/// intents that cannot be honoured and the notes on unused rename hints.
pub fn diff(current: &Schema, desired: &Schema) -> Diff {
    let mut out = Diff::default();
    let have: BTreeSet<&str> = current.tables.keys().map(String::as_str).collect();
    let wants: Vec<(&str, Option<&str>)> = desired
        .tables
        .values()
        .map(|t| (t.name.as_str(), t.renamed_from.as_deref()))
        .collect();
    let sources = resolve(&have, &wants, &|name| name.to_owned());
    out.conflicts.extend(sources.conflicts);
    out.notes.extend(sources.notes);
    for (to, from) in &sources.of {
        if to != from {
            out.changes.push(Change::RenameTable {
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    for table in desired.tables.values() {
        if !sources.of.contains_key(&table.name) {
            out.changes.push(Change::CreateTable(table.clone()));
        }
    }
    let used: BTreeSet<&String> = sources.of.values().collect();
    for (name, table) in &current.tables {
        if !used.contains(name) {
            out.changes.push(Change::DropTable(table.clone()));
        }
    }
    for (name, want) in &desired.tables {
        if let Some(from) = sources.of.get(name) {
            diff_table(&current.tables[from], want, &mut out);
        }
    }
    out
}

fn diff_table(have: &Table, want: &Table, out: &mut Diff) {
    let table = want.name.clone();
    let names: BTreeSet<&str> = have.columns.iter().map(|c| c.name.as_str()).collect();
    let wants: Vec<(&str, Option<&str>)> = want
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.renamed_from.as_deref()))
        .collect();
    let sources = resolve(&names, &wants, &|column| format!("{table}.{column}"));
    out.conflicts.extend(sources.conflicts);
    out.notes.extend(sources.notes);
    let used: BTreeSet<&str> = sources.of.values().map(String::as_str).collect();
    for column in &have.columns {
        if !used.contains(column.name.as_str()) {
            out.changes.push(Change::DropColumn {
                table: table.clone(),
                column: column.clone(),
            });
        }
    }
    for column in &want.columns {
        let Some(from) = sources.of.get(&column.name) else {
            out.changes.push(Change::AddColumn {
                table: table.clone(),
                column: column.clone(),
            });
            continue;
        };
        if *from != column.name {
            out.changes.push(Change::RenameColumn {
                table: table.clone(),
                from: from.clone(),
                to: column.name.clone(),
            });
        }
        let existing = have.column(from).expect("a source is a present column");
        if !existing.same_definition(column) {
            out.changes.push(Change::AlterColumn {
                table: table.clone(),
                from: Column {
                    name: column.name.clone(),
                    ..existing.clone()
                },
                to: column.clone(),
            });
        }
    }
    // Indexes compare under the columns' new names; a dropped column never matches.
    let renamed: BTreeMap<&str, &str> = sources
        .of
        .iter()
        .map(|(to, from)| (from.as_str(), to.as_str()))
        .collect();
    let moved = |index: &Index| Index {
        columns: index
            .columns
            .iter()
            .map(|c| match renamed.get(c.as_str()) {
                Some(to) => (*to).to_owned(),
                None => format!("\0dropped {c}"),
            })
            .collect(),
        ..index.clone()
    };
    let have_indexes: Vec<Index> = have.indexes.iter().map(moved).collect();
    for (index, as_moved) in have.indexes.iter().zip(&have_indexes) {
        if want.index(&index.name) != Some(as_moved) {
            out.changes.push(Change::DropIndex {
                table: table.clone(),
                index: index.clone(),
            });
        }
    }
    for index in &want.indexes {
        if have_indexes.iter().find(|i| i.name == index.name) != Some(index) {
            out.changes.push(Change::CreateIndex {
                table: table.clone(),
                index: index.clone(),
            });
        }
    }
}

/// What a modified field's change is, in words (`default none → 3`, `optional → required`,
/// `number → text`, `reference account → none`), from a `SchemaChange`'s `oldValue` and
/// `newValue` as [`Change::to_schema_change`] writes them for a field.
pub fn modification(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let type_of = |v: &Value| {
        v.get("field_type")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| v.get("type").and_then(Value::as_str).map(str::to_lowercase))
    };
    let (from, to) = (type_of(old), type_of(new));
    let storage_changed = old.get("type") != new.get("type");
    if storage_changed || (from != to && old.get("field_type").is_some()) {
        // Field types when both are known, else the storage classes.
        let (from, to) = if old.get("field_type").is_some() && new.get("field_type").is_some() {
            (from, to)
        } else {
            (
                old.get("type")
                    .and_then(Value::as_str)
                    .map(str::to_lowercase),
                new.get("type")
                    .and_then(Value::as_str)
                    .map(str::to_lowercase),
            )
        };
        if from != to {
            out.push(format!(
                "{} → {}",
                from.unwrap_or_default(),
                to.unwrap_or_default()
            ));
        }
    }
    let required = |v: &Value| v.get("not_null").and_then(Value::as_bool).unwrap_or(false);
    if required(old) != required(new) {
        let word = |r| if r { "required" } else { "optional" };
        out.push(format!("{} → {}", word(required(old)), word(required(new))));
    }
    let default = |v: &Value| {
        v.get("default_sql")
            .and_then(Value::as_str)
            .map_or_else(|| "none".to_owned(), str::to_owned)
    };
    if default(old) != default(new) {
        out.push(format!("default {} → {}", default(old), default(new)));
    }
    // `on_delete` is serialized by variant name (`SetNull`): shown as SQL says it (`set null`).
    let words = |variant: &str| {
        variant
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let space = (i > 0 && c.is_uppercase()).then_some(' ');
                space.into_iter().chain(c.to_lowercase())
            })
            .collect::<String>()
    };
    let reference = |v: &Value| match v.get("references") {
        Some(Value::Object(fk)) => format!(
            "{} on delete {}",
            fk.get("table").and_then(Value::as_str).unwrap_or_default(),
            words(
                fk.get("on_delete")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )
        ),
        _ => "none".to_owned(),
    };
    if reference(old) != reference(new) {
        out.push(format!("reference {} → {}", reference(old), reference(new)));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modified_field_is_described_in_words() {
        let old = json!({"type": "Real", "not_null": false, "default_sql": null, "field_type": "number",
                         "references": {"table": "account", "column": "id", "on_delete": "Cascade"}});
        let new = json!({"type": "Text", "not_null": true, "default_sql": "3", "field_type": "text",
                         "references": {"table": "account", "column": "id", "on_delete": "SetNull"}});
        assert_eq!(
            modification(&old, &new),
            [
                "number → text",
                "optional → required",
                "default none → 3",
                "reference account on delete cascade → account on delete set null"
            ]
        );
        assert!(modification(&old, &old).is_empty());
    }
}
