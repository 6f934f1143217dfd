//! What of a live database the engine manages for one plan (pure).
//!
//! The engine owns only what it created. With a metadata registry ([`crate::registry`]) that
//! is: the tables of the objects its owner registered, and the tables the desired schema names
//! (or renames from); of those tables, the system columns and the columns and indexes the
//! registered or the desired object declares. Everything else — tables someone created by hand
//! or another owner registered, hand-added columns and indexes, generated columns, and (always)
//! views, triggers, virtual tables and their shadow tables — is *unmanaged*: never diffed,
//! never dropped, and kept through a table rebuild.
//!
//! A database without a registry (a plain file the engine migrated before, or never) has no
//! record of what the engine created: there every ordinary table and column counts as the
//! engine's, as before registries existed, and of the indexes those named as the engine names
//! them (`ix_<table>_…`, `uq_<table>_…`) or declared by the desired objects; views, triggers,
//! virtual tables and generated columns never do.

use std::collections::BTreeSet;

use crate::model::{Schema, Unmanaged, UnmanagedKind};
use crate::registry::Ownership;
use crate::sql::column_definitions;

/// The managed view of `live` for a plan towards `desired`, by `ownership` (`None`: no
/// registry). Unmanaged tables, columns and indexes move to [`Schema::unmanaged`] with their SQL.
pub fn owned(live: &Schema, desired: &Schema, ownership: Option<&Ownership>) -> Schema {
    let mut out = Schema {
        tables: Default::default(),
        unmanaged: Vec::new(),
        sql: live.sql.clone(),
    };
    let mut extra = Vec::new();
    for (name, table) in &live.tables {
        let want = desired.tables.get(name).or_else(|| {
            desired
                .tables
                .values()
                .find(|t| t.renamed_from.as_deref() == Some(name))
        });
        let Some(ownership) = ownership else {
            // No registry: every ordinary table and column is the engine's; of the indexes,
            // the ones named as the engine names them (`ix_<table>_…`, `uq_<table>_…`) or that
            // the desired object declares.
            let mut table = table.clone();
            table.indexes.retain(|i| {
                let keep = i.name.starts_with(&format!("ix_{name}_"))
                    || i.name.starts_with(&format!("uq_{name}_"))
                    || want.is_some_and(|w| w.index(&i.name).is_some());
                if !keep {
                    extra.push(unmanaged(
                        UnmanagedKind::Index,
                        &i.name,
                        Some(name),
                        live.sql.get(&i.name),
                    ));
                }
                keep
            });
            out.tables.insert(name.clone(), table);
            continue;
        };
        let registered = ownership.mine.get(name);
        if want.is_none() && registered.is_none() {
            extra.push(unmanaged(
                UnmanagedKind::Table,
                name,
                None,
                live.sql.get(name),
            ));
            continue;
        }
        let mut table = table.clone();
        let declared = registered.cloned().flatten();
        if let Some(before) = &declared {
            for column in &mut table.columns {
                column.field_type = before
                    .column(&column.name)
                    .and_then(|c| c.field_type.clone());
            }
        }
        // Columns: with a registered definition, only the ones it or the desired object
        // declares (a registered table whose body no longer maps, or a table taken over by
        // name: all of them).
        if let Some(before) = &declared {
            let mut known: BTreeSet<&str> = ["id", "created_at", "updated_at"].into();
            known.extend(before.columns.iter().map(|c| c.name.as_str()));
            for c in want.iter().flat_map(|w| &w.columns) {
                known.insert(&c.name);
                known.extend(c.renamed_from.as_deref());
            }
            let definitions = live
                .sql
                .get(name)
                .map(|s| column_definitions(s))
                .unwrap_or_default();
            table.columns.retain(|c| {
                let keep = known.contains(c.name.as_str());
                if !keep {
                    let sql = definitions
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&c.name))
                        .map(|(_, d)| d.clone());
                    extra.push(Unmanaged {
                        kind: UnmanagedKind::Column,
                        name: c.name.clone(),
                        table: Some(name.clone()),
                        sql,
                    });
                }
                keep
            });
        }
        // Indexes: the ones the registered or the desired object declares (all of them when the
        // registered body no longer maps).
        if registered.is_none() || declared.is_some() {
            let mut known: BTreeSet<&str> = BTreeSet::new();
            known.extend(
                declared
                    .iter()
                    .flat_map(|t| t.indexes.iter().map(|i| i.name.as_str())),
            );
            known.extend(
                want.iter()
                    .flat_map(|t| t.indexes.iter().map(|i| i.name.as_str())),
            );
            table.indexes.retain(|i| {
                let keep = known.contains(i.name.as_str());
                if !keep {
                    extra.push(unmanaged(
                        UnmanagedKind::Index,
                        &i.name,
                        Some(name),
                        live.sql.get(&i.name),
                    ));
                }
                keep
            });
        }
        out.tables.insert(name.clone(), table);
    }
    // Hand-made tables first (they exist before anything that may refer to them), then what
    // introspection found, in SQLite's order.
    out.unmanaged = extra;
    out.unmanaged.extend(live.unmanaged.iter().cloned());
    out
}

fn unmanaged(
    kind: UnmanagedKind,
    name: &str,
    table: Option<&str>,
    sql: Option<&String>,
) -> Unmanaged {
    Unmanaged {
        kind,
        name: name.to_owned(),
        table: table.map(str::to_owned),
        sql: sql.cloned(),
    }
}

/// `desired` without the `renamedFrom` hints the registered objects already carried: those were
/// applied by an earlier change, and a bundle keeps them long after (re-applying a swap would
/// swap the data back).
pub fn without_applied_renames(mut desired: Schema, ownership: &Ownership) -> Schema {
    for table in desired.tables.values_mut() {
        let Some(Some(before)) = ownership.mine.get(&table.name) else {
            continue;
        };
        if table.renamed_from.is_some() && before.renamed_from == table.renamed_from {
            table.renamed_from = None;
        }
        for column in &mut table.columns {
            let applied = before
                .column(&column.name)
                .is_some_and(|b| b.renamed_from.is_some() && b.renamed_from == column.renamed_from);
            if applied {
                column.renamed_from = None;
            }
        }
    }
    desired
}

/// The unmanaged columns and indexes of `table` in `schema`: what a rebuild of it must keep.
pub fn kept_through_rebuild<'a>(schema: &'a Schema, table: &str) -> Vec<&'a Unmanaged> {
    schema
        .unmanaged
        .iter()
        .filter(|u| {
            u.table.as_deref() == Some(table)
                && matches!(
                    u.kind,
                    UnmanagedKind::Column | UnmanagedKind::GeneratedColumn | UnmanagedKind::Index
                )
        })
        .collect()
}
