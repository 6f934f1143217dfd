//! The desired schema: ObjectStack objects → tables, by the mapping in the crate docs.
//!
//! Every problem is collected (with the path of the object or field) before anything is built:
//! names that are not safe identifiers, columns that collide, references to objects that do not
//! exist or have no table, unsupported index options, and cycles of required references (no
//! record could ever be inserted into such a cycle).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use fleet_protocol::object::DeleteBehavior;
use fleet_protocol::{DeployValidationIssue, Field, FieldType, IssueSeverity, ObjectDefinition};

use crate::model::{Column, ColumnType, ForeignKey, Index, OnDelete, Schema, Table};
use crate::sql::{check_identifier, literal};

/// Default of `created_at` / `updated_at`: the insert time, RFC 3339 UTC with milliseconds.
pub const NOW_DEFAULT: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// The desired schema could not be built; every issue found, with paths.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the objects do not map to a valid schema:\n  {}", .issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct DesiredSchemaError {
    /// Every issue.
    pub issues: Vec<DeployValidationIssue>,
}

/// The storage class of a field's column; `None` for computed fields (formula, summary), which
/// have no column. Select-like fields with `multiple`, and references with `multiple`, hold a
/// JSON array in TEXT.
pub fn column_type(field: &Field) -> Option<ColumnType> {
    use FieldType as F;
    if field.field_type.is_computed() {
        return None;
    }
    if field.multiple {
        return Some(ColumnType::Text);
    }
    Some(match field.field_type {
        F::Number | F::Currency | F::Percent | F::Rating | F::Slider | F::Progress => {
            ColumnType::Real
        }
        F::Boolean | F::Toggle => ColumnType::Integer,
        _ => ColumnType::Text,
    })
}

/// The three columns every table has.
pub fn system_columns() -> Vec<Column> {
    let column = |name: &str, primary_key: bool, default_sql: Option<&str>| Column {
        name: name.to_owned(),
        column_type: ColumnType::Text,
        not_null: true,
        primary_key,
        default_sql: default_sql.map(str::to_owned),
        references: None,
        renamed_from: None,
        field_type: None,
    };
    vec![
        column("id", true, None),
        column("created_at", false, Some(NOW_DEFAULT)),
        column("updated_at", false, Some(NOW_DEFAULT)),
    ]
}

struct Issues(Vec<DeployValidationIssue>);

impl Issues {
    fn error(&mut self, path: String, code: &str, message: String) {
        self.0.push(DeployValidationIssue {
            severity: IssueSeverity::Error,
            path,
            message,
            code: Some(code.into()),
        });
    }
}

/// The tables `objects` describe (abstract objects have none).
pub fn desired_schema(objects: &[ObjectDefinition]) -> Result<Schema, DesiredSchemaError> {
    let mut issues = Issues(Vec::new());
    let by_name: BTreeMap<&str, &ObjectDefinition> =
        objects.iter().map(|o| (o.name.as_str(), o)).collect();
    let mut schema = Schema::default();
    let mut index_names = HashSet::new();

    for object in objects.iter().filter(|o| !o.r#abstract) {
        let path = format!("objects.{}", object.name);
        let table_name = object.table();
        if let Err(why) = check_identifier(&table_name) {
            issues.error(
                format!("{path}.tableName"),
                "invalid_identifier",
                format!("table name: {why}"),
            );
            continue;
        }
        if schema.tables.contains_key(&table_name) {
            issues.error(
                path.clone(),
                "duplicate_name",
                format!("another object also uses table {table_name:?}"),
            );
            continue;
        }
        let mut columns = system_columns();
        let mut indexes = Vec::new();
        let mut column_of_field = BTreeMap::new();
        for (key, field) in &object.fields {
            let field_path = format!("{path}.fields.{key}");
            let Some(column_type) = column_type(field) else {
                continue;
            };
            let column_name = field.column_name.clone().unwrap_or_else(|| key.to_string());
            if let Err(why) = check_identifier(&column_name) {
                issues.error(
                    field_path,
                    "invalid_identifier",
                    format!("column name: {why}"),
                );
                continue;
            }
            if columns.iter().any(|c| c.name == column_name) {
                issues.error(
                    field_path,
                    "duplicate_name",
                    format!("column {column_name:?} is already taken"),
                );
                continue;
            }
            let references = match (
                &field.reference,
                field.field_type.is_reference() && !field.multiple,
            ) {
                (Some(target), true) => match by_name.get(target.as_str()) {
                    Some(target) if !target.r#abstract => Some(ForeignKey {
                        table: target.table(),
                        column: "id".to_owned(),
                        on_delete: on_delete(field),
                    }),
                    Some(_) => {
                        issues.error(
                            format!("{field_path}.reference"),
                            "unknown_reference",
                            format!("{target:?} is abstract and has no table"),
                        );
                        None
                    }
                    None => {
                        issues.error(
                            format!("{field_path}.reference"),
                            "unknown_reference",
                            format!("references object {target:?}, which is not defined"),
                        );
                        None
                    }
                },
                (None, true) => {
                    issues.error(
                        field_path.clone(),
                        "missing_reference",
                        "a reference field needs `reference`".into(),
                    );
                    None
                }
                _ => None,
            };
            let renamed_from = field.renamed_from.as_ref().map(|f| f.to_string());
            if let Some(old) = &renamed_from
                && let Err(why) = check_identifier(old)
            {
                issues.error(
                    format!("{field_path}.renamedFrom"),
                    "invalid_identifier",
                    why.to_string(),
                );
            }
            if field.unique {
                indexes.push(Index {
                    name: format!("uq_{table_name}_{column_name}"),
                    columns: vec![column_name.clone()],
                    unique: true,
                });
            } else if field.index {
                indexes.push(Index {
                    name: format!("ix_{table_name}_{column_name}"),
                    columns: vec![column_name.clone()],
                    unique: false,
                });
            }
            column_of_field.insert(key.to_string(), column_name.clone());
            columns.push(Column {
                name: column_name,
                column_type,
                not_null: field.required,
                primary_key: false,
                default_sql: field.default_value.as_ref().and_then(literal),
                references,
                renamed_from,
                field_type: serde_json::to_value(field.field_type)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned)),
            });
        }
        for (i, index) in object.indexes.iter().flatten().enumerate() {
            let index_path = format!(
                "{path}.indexes.{}",
                index.name.clone().unwrap_or_else(|| i.to_string())
            );
            if index.partial.is_some() {
                issues.error(
                    format!("{index_path}.partial"),
                    "unsupported",
                    "partial indexes are not supported: their condition would be SQL from unvalidated text".into(),
                );
                continue;
            }
            let mut cols = Vec::new();
            for field in &index.fields {
                match column_of_field.get(field.as_str()) {
                    Some(column) => cols.push(column.clone()),
                    None if ["id", "created_at", "updated_at"].contains(&field.as_str()) => {
                        cols.push(field.clone())
                    }
                    None => issues.error(
                        format!("{index_path}.fields"),
                        "unknown_field",
                        format!("{field:?} is not a stored field of {}", object.name),
                    ),
                }
            }
            if cols.is_empty() {
                continue;
            }
            let name = match &index.name {
                Some(name) => {
                    if let Err(why) = check_identifier(name) {
                        issues.error(
                            format!("{index_path}.name"),
                            "invalid_identifier",
                            why.to_string(),
                        );
                        continue;
                    }
                    name.clone()
                }
                None => format!(
                    "{}_{table_name}_{}",
                    if index.unique { "uq" } else { "ix" },
                    cols.join("_")
                ),
            };
            indexes.push(Index {
                name,
                columns: cols,
                unique: index.unique,
            });
        }
        for index in &indexes {
            if !index_names.insert(index.name.clone()) {
                issues.error(
                    path.clone(),
                    "duplicate_name",
                    format!("index name {:?} is used twice", index.name),
                );
            }
        }
        indexes.sort_by(|a, b| a.name.cmp(&b.name));
        indexes.dedup_by(|a, b| a.name == b.name);
        let renamed_from = match (&object.renamed_from, &object.table_name, &object.namespace) {
            (Some(old), None, Some(ns)) => Some(format!("{ns}_{old}")),
            (Some(old), None, None) => Some(old.to_string()),
            _ => None,
        };
        schema.tables.insert(
            table_name.clone(),
            Table {
                name: table_name,
                columns,
                indexes,
                renamed_from,
            },
        );
    }
    find_required_cycles(objects, &mut issues);
    if issues.0.is_empty() {
        Ok(schema)
    } else {
        Err(DesiredSchemaError { issues: issues.0 })
    }
}

fn on_delete(field: &Field) -> OnDelete {
    match field.delete_behavior {
        DeleteBehavior::Cascade => OnDelete::Cascade,
        DeleteBehavior::Restrict => OnDelete::Restrict,
        // A required reference cannot be set to NULL: deleting its target is refused instead.
        DeleteBehavior::SetNull if field.required => OnDelete::Restrict,
        DeleteBehavior::SetNull => OnDelete::SetNull,
    }
}

/// Cycles of two or more objects linked by required (NOT NULL) references or master-detail
/// ownership: the first record of such a cycle could never be inserted, or every record would
/// own its owner.
fn find_required_cycles(objects: &[ObjectDefinition], issues: &mut Issues) {
    let mut edges: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for object in objects {
        for (key, field) in &object.fields {
            let binding = field.required || field.field_type == FieldType::MasterDetail;
            if let (true, true, Some(target)) =
                (field.field_type.is_reference(), binding, &field.reference)
                && target.as_str() != object.name.as_str()
            {
                edges
                    .entry(object.name.as_str())
                    .or_default()
                    .push((key.as_str(), target.as_str()));
            }
        }
    }
    let mut reported: BTreeSet<Vec<&str>> = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(*start, vec![*start], Vec::<&str>::new())];
        while let Some((node, path, fields)) = stack.pop() {
            for (field, target) in edges.get(node).into_iter().flatten() {
                let mut fields = fields.clone();
                fields.push(field);
                if target == start {
                    let mut key = path.clone();
                    key.sort();
                    if reported.insert(key) {
                        let chain = path
                            .iter()
                            .chain(std::iter::once(start))
                            .copied()
                            .collect::<Vec<_>>()
                            .join(" → ");
                        issues.error(
                            format!("objects.{start}.fields.{}", fields[0]),
                            "cyclic_reference",
                            format!("required/master-detail references form a cycle {chain}: no record could ever be inserted"),
                        );
                    }
                } else if !path.contains(target) {
                    let mut next = path.clone();
                    next.push(target);
                    stack.push((target, next, fields));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::parse_value;
    use serde_json::json;

    fn objects(value: serde_json::Value) -> Vec<ObjectDefinition> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|o| parse_value::<ObjectDefinition>(o).unwrap().value)
            .collect()
    }

    #[test]
    fn fields_map_to_columns_indexes_and_keys() {
        let schema = desired_schema(&objects(json!([
            {"name": "account", "fields": {"name": {"type": "text", "required": true, "unique": true}}},
            {"name": "contact", "fields": {
                "account": {"type": "lookup", "reference": "account", "index": true},
                "score": {"type": "number", "defaultValue": 1.5},
                "active": {"type": "boolean", "defaultValue": true},
                "tags": {"type": "tags"},
                "total": {"type": "formula", "expression": "1"}
            }}
        ])))
        .unwrap();
        let contact = &schema.tables["contact"];
        let names: Vec<_> = contact.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "created_at",
                "updated_at",
                "account",
                "score",
                "active",
                "tags"
            ]
        );
        let fk = contact
            .column("account")
            .unwrap()
            .references
            .clone()
            .unwrap();
        assert_eq!(
            (fk.table.as_str(), fk.on_delete),
            ("account", OnDelete::SetNull)
        );
        assert_eq!(
            contact.column("score").unwrap().default_sql.as_deref(),
            Some("1.5")
        );
        assert_eq!(
            contact.column("active").unwrap().column_type,
            ColumnType::Integer
        );
        assert_eq!(contact.indexes[0].name, "ix_contact_account");
        assert!(schema.tables["account"].indexes[0].unique);
    }

    #[test]
    fn bad_input_gets_every_issue_and_nothing_is_built() {
        let err = desired_schema(&objects(json!([
            {"name": "order", "fields": {}},
            {"name": "a", "fields": {"b": {"type": "master_detail", "reference": "b"}, "x": {"type": "lookup", "reference": "nowhere"}}},
            {"name": "b", "fields": {"a": {"type": "lookup", "reference": "a", "required": true}, "select": {"type": "text"}}},
            {"name": "c", "fields": {"t": {"type": "text"}}, "indexes": [{"fields": ["t"], "partial": "t = 1; DROP TABLE c"}]}
        ])))
        .unwrap_err();
        let codes: BTreeSet<_> = err
            .issues
            .iter()
            .map(|i| (i.path.as_str(), i.code.as_deref().unwrap()))
            .collect();
        assert!(
            codes.contains(&("objects.order.tableName", "invalid_identifier")),
            "{codes:?}"
        );
        assert!(
            codes.contains(&("objects.a.fields.x.reference", "unknown_reference")),
            "{codes:?}"
        );
        assert!(
            codes.contains(&("objects.b.fields.select", "invalid_identifier")),
            "{codes:?}"
        );
        assert!(
            codes.contains(&("objects.c.indexes.0.partial", "unsupported")),
            "{codes:?}"
        );
        assert!(
            codes.iter().any(|(_, c)| *c == "cyclic_reference"),
            "{codes:?}"
        );
        assert_eq!(
            err.issues
                .iter()
                .filter(|i| i.code.as_deref() == Some("cyclic_reference"))
                .count(),
            1
        );
    }

    #[test]
    fn optional_and_self_references_are_not_cycles() {
        desired_schema(&objects(json!([
            {"name": "a", "fields": {"b": {"type": "lookup", "reference": "b"}, "parent": {"type": "lookup", "reference": "a", "required": true}}},
            {"name": "b", "fields": {"a": {"type": "lookup", "reference": "a", "required": true}}}
        ])))
        .unwrap();
    }
}
