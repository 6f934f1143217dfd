//! The schema model both sides of a diff are expressed in: what the metadata wants
//! ([`crate::desired`]) and what a live database has ([`crate::introspect`](mod@crate::introspect)).
//!
//! It is deliberately small — tables, typed columns, named indexes, column-level foreign keys —
//! because that is all the fleet creates. Uniqueness is always a named unique index (never a
//! column constraint), so switching `unique` on or off is a `CREATE/DROP INDEX`, not a rebuild.

use std::collections::BTreeMap;

use fleet_protocol::Timestamp;
use fleet_protocol::contracts::{
    IntrospectedColumn, IntrospectedForeignKey, IntrospectedIndex, IntrospectedSchema,
    IntrospectedTable, IntrospectedUnmanaged,
};
use serde::{Deserialize, Serialize};

/// SQLite storage class of a column (the declared type the fleet writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ColumnType {
    /// `TEXT`.
    Text,
    /// `REAL`.
    Real,
    /// `INTEGER`.
    Integer,
    /// `BLOB`.
    Blob,
}

impl ColumnType {
    /// The declared type as written in DDL.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Text => "TEXT",
            Self::Real => "REAL",
            Self::Integer => "INTEGER",
            Self::Blob => "BLOB",
        }
    }

    /// The storage class of a declared type, by SQLite's affinity rules (§3.1 of "Datatypes In
    /// SQLite"), so tables the fleet did not create are read sensibly too.
    pub fn from_declared(declared: &str) -> Self {
        let upper = declared.to_ascii_uppercase();
        if upper.contains("INT") {
            Self::Integer
        } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
            Self::Text
        } else if upper.is_empty() || upper.contains("BLOB") {
            Self::Blob
        } else {
            Self::Real
        }
    }

    /// Whether every value of `self` is representable in `to` without losing meaning
    /// (INTEGER → REAL, anything numeric → TEXT). Any other change narrows the type.
    pub fn widens_to(self, to: Self) -> bool {
        self == to
            || matches!(
                (self, to),
                (Self::Integer, Self::Real) | (Self::Integer | Self::Real, Self::Text)
            )
    }
}

/// What happens to referencing rows when the referenced row is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OnDelete {
    /// `SET NULL`.
    SetNull,
    /// `CASCADE`.
    Cascade,
    /// `RESTRICT`.
    Restrict,
    /// `NO ACTION` (SQLite's default; the fleet never writes it).
    NoAction,
}

impl OnDelete {
    /// As written in DDL and reported by `pragma foreign_key_list`.
    pub fn sql(self) -> &'static str {
        match self {
            Self::SetNull => "SET NULL",
            Self::Cascade => "CASCADE",
            Self::Restrict => "RESTRICT",
            Self::NoAction => "NO ACTION",
        }
    }

    /// Parses `pragma foreign_key_list`'s `on_delete`.
    pub fn from_sql(text: &str) -> Self {
        match text.to_ascii_uppercase().as_str() {
            "SET NULL" => Self::SetNull,
            "CASCADE" => Self::Cascade,
            "RESTRICT" => Self::Restrict,
            _ => Self::NoAction,
        }
    }
}

/// A column's foreign key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ForeignKey {
    /// Referenced table.
    pub table: String,
    /// Referenced column (always `id` for the fleet's own tables).
    pub column: String,
    /// Delete behaviour.
    pub on_delete: OnDelete,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Storage class.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Primary key.
    pub primary_key: bool,
    /// Default, as SQLite reports it (a literal, or an expression without its parentheses).
    pub default_sql: Option<String>,
    /// Foreign key.
    pub references: Option<ForeignKey>,
    /// Desired side only: the column's previous name (an explicit rename).
    #[serde(skip)]
    pub renamed_from: Option<String>,
    /// The ObjectStack field type the column stores (`number`, `text`, …), when known: from the
    /// bundle on the desired side, from the registered object on the live side. For display
    /// (`amount: number → text`); never part of a comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_type: Option<String>,
}

impl Column {
    /// Whether the physical definitions are equal (rename hints aside).
    pub fn same_definition(&self, other: &Column) -> bool {
        self.column_type == other.column_type
            && self.not_null == other.not_null
            && self.primary_key == other.primary_key
            && self.default_sql == other.default_sql
            && self.references == other.references
    }
}

/// One index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Index {
    /// Index name (unique in the database).
    pub name: String,
    /// Indexed columns, in order.
    pub columns: Vec<String>,
    /// `UNIQUE`.
    pub unique: bool,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Table name.
    pub name: String,
    /// Columns, in table order.
    pub columns: Vec<Column>,
    /// Indexes, sorted by name.
    pub indexes: Vec<Index>,
    /// Desired side only: the table's previous name (an explicit rename).
    #[serde(skip)]
    pub renamed_from: Option<String>,
}

impl Table {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The index named `name`.
    pub fn index(&self, name: &str) -> Option<&Index> {
        self.indexes.iter().find(|i| i.name == name)
    }

    /// Whether the physical definitions are equal (column order and rename hints aside).
    pub fn same_definition(&self, other: &Table) -> bool {
        self.columns.len() == other.columns.len()
            && self
                .columns
                .iter()
                .all(|c| other.column(&c.name).is_some_and(|o| c.same_definition(o)))
            && self.indexes == other.indexes
    }
}

/// What kind of thing in a database the engine does not manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmanagedKind {
    /// A table no registered object maps to.
    Table,
    /// A virtual table (`CREATE VIRTUAL TABLE`, e.g. FTS5).
    VirtualTable,
    /// A shadow table holding a virtual table's data (`<vtab>_data`, `_idx`, …).
    ShadowTable,
    /// A view.
    View,
    /// A trigger.
    Trigger,
    /// An index no object declares (on a managed table).
    Index,
    /// A column no field declares (on a managed table).
    Column,
    /// A generated column (`GENERATED ALWAYS AS …`).
    GeneratedColumn,
}

/// One thing in a tenant's database that the engine did not create: left as it is, and kept
/// through a table rebuild by recreating it from its own SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unmanaged {
    /// What it is.
    pub kind: UnmanagedKind,
    /// Its name.
    pub name: String,
    /// The table it belongs to (columns, indexes, triggers); `None` for tables and views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Its definition as SQLite stores it: the `CREATE …` statement, or for a column its
    /// definition inside `CREATE TABLE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

/// A database schema: its tables by name, and what else the database holds that the engine does
/// not manage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Schema {
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
    /// Everything the engine does not manage (live side only), in the order SQLite holds it
    /// (views and triggers in creation order, which is the order to recreate them in).
    pub unmanaged: Vec<Unmanaged>,
    /// Live side only: the stored SQL (`sqlite_master.sql`) of each table and explicit index,
    /// by name — what a rebuild needs to keep columns and indexes the engine does not manage.
    #[serde(skip)]
    pub sql: BTreeMap<String, String>,
}

impl Schema {
    /// The unmanaged things of `kind`.
    pub fn unmanaged_of(&self, kind: UnmanagedKind) -> impl Iterator<Item = &Unmanaged> {
        self.unmanaged.iter().filter(move |u| u.kind == kind)
    }

    /// Whether both schemas define the same tables, columns, indexes and keys (what the engine
    /// manages; unmanaged things aside).
    pub fn same_definition(&self, other: &Schema) -> bool {
        self.tables.len() == other.tables.len()
            && self
                .tables
                .iter()
                .all(|(name, t)| other.tables.get(name).is_some_and(|o| t.same_definition(o)))
    }

    /// The upstream `IntrospectedSchema` shape of this schema.
    pub fn to_introspected(&self) -> IntrospectedSchema {
        let tables = self
            .tables
            .iter()
            .map(|(name, table)| {
                let columns = table
                    .columns
                    .iter()
                    .map(|c| IntrospectedColumn {
                        name: c.name.clone(),
                        sql_type: c.column_type.sql().to_owned(),
                        nullable: !c.not_null,
                        default_value: c.default_sql.clone(),
                        primary_key: c.primary_key,
                    })
                    .collect();
                let indexes = table
                    .indexes
                    .iter()
                    .map(|i| IntrospectedIndex {
                        name: i.name.clone(),
                        columns: i.columns.clone(),
                        unique: i.unique,
                    })
                    .collect();
                let foreign_keys = table
                    .columns
                    .iter()
                    .filter_map(|c| {
                        let fk = c.references.as_ref()?;
                        Some(IntrospectedForeignKey {
                            column_name: c.name.clone(),
                            referenced_table: fk.table.clone(),
                            referenced_column: fk.column.clone(),
                            on_delete: Some(fk.on_delete.sql().to_owned()),
                        })
                    })
                    .collect();
                (
                    name.clone(),
                    IntrospectedTable {
                        name: name.clone(),
                        columns,
                        indexes,
                        foreign_keys,
                        sql: self.sql.get(name).cloned(),
                    },
                )
            })
            .collect();
        let unmanaged = self
            .unmanaged
            .iter()
            .map(|u| IntrospectedUnmanaged {
                kind: serde_json::to_value(u.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                name: u.name.clone(),
                table: u.table.clone(),
                sql: u.sql.clone(),
            })
            .collect();
        IntrospectedSchema {
            tables,
            dialect: "sqlite".to_owned(),
            introspected_at: Timestamp::now(),
            unmanaged,
        }
    }

    /// The schema an upstream `IntrospectedSchema` describes (the inverse of
    /// [`Self::to_introspected`]): column types by SQLite's affinity rules, foreign keys from
    /// `foreignKeys`, and — when the fleet's extensions are there — the unmanaged things and
    /// each table's SQL. An unknown `unmanaged` kind is an error.
    pub fn from_introspected(schema: &IntrospectedSchema) -> Result<Self, String> {
        let mut out = Schema::default();
        for (name, table) in &schema.tables {
            let columns = table
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    column_type: ColumnType::from_declared(&c.sql_type),
                    not_null: !c.nullable,
                    primary_key: c.primary_key,
                    default_sql: c.default_value.clone(),
                    references: table
                        .foreign_keys
                        .iter()
                        .find(|fk| fk.column_name == c.name)
                        .map(|fk| ForeignKey {
                            table: fk.referenced_table.clone(),
                            column: fk.referenced_column.clone(),
                            on_delete: OnDelete::from_sql(
                                fk.on_delete.as_deref().unwrap_or("NO ACTION"),
                            ),
                        }),
                    renamed_from: None,
                    field_type: None,
                })
                .collect();
            let mut indexes: Vec<Index> = table
                .indexes
                .iter()
                .map(|i| Index {
                    name: i.name.clone(),
                    columns: i.columns.clone(),
                    unique: i.unique,
                })
                .collect();
            indexes.sort_by(|a, b| a.name.cmp(&b.name));
            if let Some(sql) = &table.sql {
                out.sql.insert(name.clone(), sql.clone());
            }
            out.tables.insert(
                name.clone(),
                Table {
                    name: name.clone(),
                    columns,
                    indexes,
                    renamed_from: None,
                },
            );
        }
        for u in &schema.unmanaged {
            let kind = serde_json::from_value(serde_json::Value::String(u.kind.clone()))
                .map_err(|_| format!("unmanaged {:?}: unknown kind {:?}", u.name, u.kind))?;
            out.unmanaged.push(Unmanaged {
                kind,
                name: u.name.clone(),
                table: u.table.clone(),
                sql: u.sql.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_rules_classify_foreign_declared_types() {
        assert_eq!(ColumnType::from_declared("varchar(20)"), ColumnType::Text);
        assert_eq!(ColumnType::from_declared("BIGINT"), ColumnType::Integer);
        assert_eq!(ColumnType::from_declared("DOUBLE"), ColumnType::Real);
        assert_eq!(ColumnType::from_declared(""), ColumnType::Blob);
    }

    #[test]
    fn widening_is_integer_to_real_and_numbers_to_text() {
        assert!(ColumnType::Integer.widens_to(ColumnType::Real));
        assert!(ColumnType::Real.widens_to(ColumnType::Text));
        assert!(!ColumnType::Text.widens_to(ColumnType::Real));
        assert!(!ColumnType::Real.widens_to(ColumnType::Integer));
    }
}
