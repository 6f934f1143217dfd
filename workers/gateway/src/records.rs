//! An object as the data API serves it, and the values of its records.
//!
//! The object comes from the tenant's own metadata registry (`sys_metadata`, written by deploys
//! and app installs): a name the registry does not hold is "no such object", whatever tables the
//! database has, so a request can only reach the tables the tenant's metadata declares. Its
//! table and columns are mapped exactly as the schema engine maps them (`fleet_schema`'s
//! mapping: `tableName`, else `{namespace}_{name}`; a field's `columnName`, else its key).
//!
//! A record's values are checked against the field metadata — type, `required`, `maxLength` /
//! `minLength`, `min` / `max`, select options, lookups to existing records, `unique` — and every
//! problem is reported with its path (`data.<field>`). Values are converted to SQLite values
//! (always bound as parameters) and back: booleans are stored 0/1, JSON-holding fields (`json`,
//! `multiselect`, `tags`, any `multiple` field, …) as JSON text.

use fleet_protocol::{Field, FieldType, ObjectDefinition, ObjectName};
use fleet_schema::model::ColumnType;
use fleet_schema::sql::quote;
use libsql::{Connection, Value as Sql};
use serde_json::{Map, Number, Value};

/// One problem with a request, at its path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    /// Where (`data.amount`, `filter.stage.$in`, `sort`, …).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Machine-readable code (`required`, `invalid_type`, `unique`, …).
    pub code: &'static str,
}

impl Issue {
    /// An issue at `path`.
    pub fn new(path: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            code,
        }
    }
}

/// Why an object could not be read from the registry.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The registry could not be read.
    #[error("reading the metadata registry")]
    Registry(#[source] libsql::Error),
    /// A registered object's body does not parse (the registry is damaged).
    #[error("the registered object {0} does not parse")]
    Corrupt(String),
}

/// The registered object `name` (`None`: the registry holds none, the database has no
/// registry, or the object is an app's that is not installed — an uninstall that keeps the
/// tables keeps their registration for a later install, not their API).
async fn registered(
    conn: &Connection,
    name: &str,
) -> Result<Option<ObjectDefinition>, ObjectError> {
    let mut rows = match conn
        .query(
            "SELECT m.body, m.source, \
               (SELECT i.status FROM sys_installed_app i WHERE 'app:' || i.app = m.source) \
             FROM sys_metadata m WHERE m.metadata_type = 'object' AND m.metadata_name = ?1",
            [Sql::Text(name.to_owned())],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.to_string().contains("no such table") => return Ok(None),
        Err(e) => return Err(ObjectError::Registry(e)),
    };
    let Some(row) = rows.next().await.map_err(ObjectError::Registry)? else {
        return Ok(None);
    };
    let body: String = row.get(0).map_err(ObjectError::Registry)?;
    let source: Option<String> = row.get(1).map_err(ObjectError::Registry)?;
    let installed: Option<String> = row.get(2).map_err(ObjectError::Registry)?;
    if source.as_deref().is_some_and(|s| s.starts_with("app:"))
        && installed.as_deref() != Some("active")
    {
        return Ok(None);
    }
    fleet_schema::registry::object_of(&body)
        .map(Some)
        .map_err(|_| ObjectError::Corrupt(name.to_owned()))
}

/// A field that has a column.
#[derive(Debug, Clone)]
pub struct Column {
    /// The field's key (the record's property).
    pub key: String,
    /// The column.
    pub column: String,
    /// The field's metadata.
    pub field: Field,
    /// The storage class.
    pub column_type: ColumnType,
    /// Whether the column holds JSON text.
    pub json: bool,
    /// The referenced object's table (lookups).
    pub target: Option<String>,
}

/// A registered object and its columns.
#[derive(Debug, Clone)]
pub struct Object {
    /// The object's name.
    pub name: String,
    /// Its table.
    pub table: String,
    /// Its fields with columns, in declaration order.
    pub columns: Vec<Column>,
    /// Computed fields (formula, summary): readable nowhere, writable never.
    pub computed: Vec<String>,
}

/// The system columns, as record properties.
pub const SYSTEM: [&str; 3] = ["id", "created_at", "updated_at"];

fn holds_json(field: &Field) -> bool {
    use FieldType as F;
    field.multiple
        || matches!(
            field.field_type,
            F::Json
                | F::Multiselect
                | F::Checkboxes
                | F::Tags
                | F::Location
                | F::Address
                | F::Vector
        )
}

impl Object {
    /// The object `name` as the tenant's registry declares it; `None` when it declares none
    /// (or `name` is not a valid object name). One indexed lookup of the registry (its unique
    /// index on type and name), plus one per lookup field for the referenced object's table.
    pub async fn load(conn: &Connection, name: &str) -> Result<Option<Self>, ObjectError> {
        if ObjectName::parse(name).is_err() {
            return Ok(None);
        }
        let Some(definition) = registered(conn, name).await? else {
            return Ok(None);
        };
        if definition.r#abstract {
            return Ok(None);
        }
        let mut tables = std::collections::BTreeMap::new();
        for field in definition.fields.values() {
            if !field.field_type.is_reference() || field.multiple {
                continue;
            }
            let Some(target) = field.reference.as_deref() else {
                continue;
            };
            if tables.contains_key(target) {
                continue;
            }
            let table = if target == name {
                Some(definition.table())
            } else {
                registered(conn, target).await?.map(|o| o.table())
            };
            tables.insert(target.to_owned(), table);
        }
        Ok(Some(Self::of(&definition, |object| {
            tables.get(object).cloned().flatten()
        })))
    }

    /// The object `definition` describes; `table_of` maps a referenced object to its table.
    pub fn of(definition: &ObjectDefinition, table_of: impl Fn(&str) -> Option<String>) -> Self {
        let mut columns = Vec::new();
        let mut computed = Vec::new();
        for (key, field) in &definition.fields {
            let Some(column_type) = fleet_schema::desired::column_type(field) else {
                computed.push(key.to_string());
                continue;
            };
            let target = field
                .field_type
                .is_reference()
                .then(|| field.reference.as_deref().and_then(&table_of))
                .flatten();
            columns.push(Column {
                key: key.to_string(),
                column: field.column_name.clone().unwrap_or_else(|| key.to_string()),
                field: field.clone(),
                column_type,
                json: holds_json(field),
                target: if field.multiple { None } else { target },
            });
        }
        Self {
            name: definition.name.to_string(),
            table: definition.table(),
            columns,
            computed,
        }
    }

    /// The column of a record property (a field key or a system column).
    pub fn column(&self, key: &str) -> Option<ColumnRef<'_>> {
        if SYSTEM.contains(&key) {
            return Some(ColumnRef::System(SYSTEM.iter().find(|s| **s == key)?));
        }
        self.columns
            .iter()
            .find(|c| c.key == key)
            .map(ColumnRef::Field)
    }

    /// The quoted columns of a `SELECT`, in record order: the system columns, then `keys` (every
    /// field when `None`).
    pub fn select_list(&self, keys: Option<&[String]>) -> (String, Vec<ColumnRef<'_>>) {
        let mut refs: Vec<ColumnRef<'_>> = SYSTEM.iter().map(ColumnRef::System).collect();
        match keys {
            Some(keys) => refs.extend(
                keys.iter()
                    .filter(|k| !SYSTEM.contains(&k.as_str()))
                    .filter_map(|k| self.columns.iter().find(|c| &c.key == k))
                    .map(ColumnRef::Field),
            ),
            None => refs.extend(self.columns.iter().map(ColumnRef::Field)),
        }
        let list = refs
            .iter()
            .map(|r| quote(r.column()))
            .collect::<Vec<_>>()
            .join(", ");
        (list, refs)
    }

    /// A row of [`Self::select_list`]'s columns as a record.
    pub fn record(&self, row: &libsql::Row, refs: &[ColumnRef<'_>]) -> Map<String, Value> {
        let mut record = Map::new();
        for (i, r) in refs.iter().enumerate() {
            let value = row.get_value(i as i32).unwrap_or(Sql::Null);
            record.insert(r.key().to_owned(), r.to_json(value));
        }
        record
    }
}

/// A column a request names: a system column or a field's.
#[derive(Debug, Clone, Copy)]
pub enum ColumnRef<'a> {
    /// `id`, `created_at` or `updated_at`.
    System(&'a &'static str),
    /// A field's column.
    Field(&'a Column),
}

impl ColumnRef<'_> {
    /// The record property.
    pub fn key(&self) -> &str {
        match self {
            Self::System(s) => s,
            Self::Field(c) => &c.key,
        }
    }

    /// The column.
    pub fn column(&self) -> &str {
        match self {
            Self::System(s) => s,
            Self::Field(c) => &c.column,
        }
    }

    /// The JSON of a stored value.
    pub fn to_json(&self, value: Sql) -> Value {
        let field = match self {
            Self::System(_) => None,
            Self::Field(c) => Some(*c),
        };
        match value {
            Sql::Null => Value::Null,
            Sql::Integer(i) if field.is_some_and(|c| c.column_type == ColumnType::Integer) => {
                Value::Bool(i != 0)
            }
            Sql::Integer(i) => Value::Number(i.into()),
            Sql::Real(r) => Number::from_f64(r).map_or(Value::Null, Value::Number),
            Sql::Text(t) if field.is_some_and(|c| c.json) => {
                serde_json::from_str(&t).unwrap_or(Value::String(t))
            }
            Sql::Text(t) => Value::String(t),
            Sql::Blob(_) => Value::Null,
        }
    }

    /// The SQLite value a filter compares this column with (a scalar); `None`: not comparable.
    pub fn filter_value(&self, value: &Value) -> Option<Sql> {
        match (self, value) {
            (_, Value::Null) => Some(Sql::Null),
            (Self::Field(c), Value::Bool(b)) if c.column_type == ColumnType::Integer => {
                Some(Sql::Integer(i64::from(*b)))
            }
            (_, Value::String(s)) => Some(Sql::Text(s.clone())),
            (_, Value::Number(n)) => n.as_f64().map(Sql::Real),
            (_, Value::Bool(b)) => Some(Sql::Integer(i64::from(*b))),
            _ => None,
        }
    }
}

/// Checks one value against its field; the SQLite value to store, or the problem.
fn convert(column: &Column, value: &Value) -> Result<Sql, (&'static str, String)> {
    use FieldType as F;
    let field = &column.field;
    if value.is_null() {
        return Ok(Sql::Null);
    }
    if column.json {
        if field.multiple || matches!(field.field_type, F::Multiselect | F::Checkboxes | F::Tags) {
            let Some(items) = value.as_array() else {
                return Err(("invalid_type", "expected an array".into()));
            };
            if let Some(options) = &field.options {
                for item in items {
                    let ok = item
                        .as_str()
                        .is_some_and(|v| options.iter().any(|o| o.value == v));
                    if !ok {
                        return Err((
                            "invalid_option",
                            format!("{item} is not one of the options"),
                        ));
                    }
                }
            }
        }
        return Ok(Sql::Text(value.to_string()));
    }
    match column.column_type {
        ColumnType::Integer => match value {
            Value::Bool(b) => Ok(Sql::Integer(i64::from(*b))),
            _ => Err(("invalid_type", "expected a boolean".into())),
        },
        ColumnType::Real => {
            let Some(n) = value.as_f64() else {
                return Err(("invalid_type", "expected a number".into()));
            };
            if field.min.is_some_and(|min| n < min) {
                return Err((
                    "too_small",
                    format!("must be at least {}", field.min.unwrap_or_default()),
                ));
            }
            if field.max.is_some_and(|max| n > max) {
                return Err((
                    "too_big",
                    format!("must be at most {}", field.max.unwrap_or_default()),
                ));
            }
            Ok(Sql::Real(n))
        }
        ColumnType::Text | ColumnType::Blob => {
            let Some(text) = value.as_str() else {
                return Err(("invalid_type", "expected a string".into()));
            };
            // SQLite's text ends at a NUL for every reader: refused rather than cut.
            if text.contains('\0') {
                return Err(("invalid_string", "contains a NUL character".into()));
            }
            let chars = text.chars().count() as f64;
            if field.max_length.is_some_and(|max| chars > max) {
                return Err((
                    "too_big",
                    format!(
                        "longer than {} characters",
                        field.max_length.unwrap_or_default()
                    ),
                ));
            }
            if field.min_length.is_some_and(|min| chars < min) {
                return Err((
                    "too_small",
                    format!(
                        "shorter than {} characters",
                        field.min_length.unwrap_or_default()
                    ),
                ));
            }
            match field.field_type {
                F::Email => {
                    let ok = text
                        .split_once('@')
                        .is_some_and(|(a, b)| !a.is_empty() && b.contains('.') && !b.contains('@'));
                    if !ok {
                        return Err(("invalid_string", "not an email address".into()));
                    }
                }
                F::Url if !(text.starts_with("https://") || text.starts_with("http://")) => {
                    return Err(("invalid_string", "not an http(s) URL".into()));
                }
                F::Date if chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_err() => {
                    return Err(("invalid_string", "not a date (YYYY-MM-DD)".into()));
                }
                F::Datetime if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
                    return Err(("invalid_string", "not an RFC 3339 date-time".into()));
                }
                F::Time
                    if chrono::NaiveTime::parse_from_str(text, "%H:%M:%S").is_err()
                        && chrono::NaiveTime::parse_from_str(text, "%H:%M").is_err() =>
                {
                    return Err(("invalid_string", "not a time (HH:MM[:SS])".into()));
                }
                F::Select | F::Radio => {
                    if let Some(options) = &field.options
                        && !options.iter().any(|o| o.value == text)
                    {
                        let values: Vec<&str> = options.iter().map(|o| o.value.as_str()).collect();
                        return Err((
                            "invalid_option",
                            format!("{text:?} is not one of {}", values.join(", ")),
                        ));
                    }
                }
                _ => {}
            }
            Ok(Sql::Text(text.to_owned()))
        }
    }
}

/// A record's values checked and converted: the columns and values to write.
#[derive(Debug, Default)]
pub struct Checked {
    /// `(column, value)` in request order.
    pub values: Vec<(String, Sql)>,
}

/// Checks `data` for a create (`id`: `None`) or an update of record `id`: every issue, with its
/// path, or the values to write. Lookups must name existing records; unique fields must not
/// repeat another record's value.
pub async fn check(
    conn: &Connection,
    object: &Object,
    data: &Map<String, Value>,
    id: Option<&str>,
) -> Result<Result<Checked, Vec<Issue>>, libsql::Error> {
    let mut issues = Vec::new();
    let mut checked = Checked::default();
    for (key, value) in data {
        let path = format!("data.{key}");
        if SYSTEM.contains(&key.as_str()) {
            if key == "id" && id.is_none() {
                match value.as_str() {
                    Some(v) if !v.trim().is_empty() && v.len() <= 128 && !v.contains('\0') => {
                        checked.values.push(("id".into(), Sql::Text(v.to_owned())));
                    }
                    _ => issues.push(Issue::new(
                        path,
                        "invalid_type",
                        "expected a string of at most 128 characters, not blank, without NUL",
                    )),
                }
            } else {
                issues.push(Issue::new(path, "read_only", "set by the gateway"));
            }
            continue;
        }
        if object.computed.contains(key) {
            issues.push(Issue::new(path, "read_only", "a computed field"));
            continue;
        }
        let Some(column) = object.columns.iter().find(|c| &c.key == key) else {
            issues.push(Issue::new(
                path,
                "unrecognized_key",
                format!("{} has no field {key}", object.name),
            ));
            continue;
        };
        if value.is_null() && column.field.required {
            issues.push(Issue::new(path, "required", "required"));
            continue;
        }
        match convert(column, value) {
            Ok(v) => checked.values.push((column.column.clone(), v)),
            Err((code, message)) => issues.push(Issue::new(path, code, message)),
        }
    }
    if id.is_none() {
        for column in &object.columns {
            let given = data.get(&column.key).is_some_and(|v| !v.is_null());
            let defaulted = column
                .field
                .default_value
                .as_ref()
                .is_some_and(|v| !v.is_null());
            if column.field.required && !given && !defaulted && !data.contains_key(&column.key) {
                issues.push(Issue::new(
                    format!("data.{}", column.key),
                    "required",
                    "required",
                ));
            }
        }
    }
    // Lookups and unique values, against the rows (only for values that passed the above).
    for column in &object.columns {
        let Some((_, value)) = checked.values.iter().find(|(c, _)| *c == column.column) else {
            continue;
        };
        if matches!(value, Sql::Null) {
            continue;
        }
        let path = format!("data.{}", column.key);
        if let Some(target) = &column.target {
            let sql = format!("SELECT 1 FROM {} WHERE \"id\" = ?1 LIMIT 1", quote(target));
            let mut rows = conn.query(&sql, [value.clone()]).await?;
            if rows.next().await?.is_none() {
                issues.push(Issue::new(
                    path.clone(),
                    "not_found",
                    format!(
                        "no {} record with this id",
                        column.field.reference.as_deref().unwrap_or("referenced")
                    ),
                ));
            }
        }
        if column.field.unique {
            let sql = format!(
                "SELECT 1 FROM {} WHERE {} = ?1 AND \"id\" IS NOT ?2 LIMIT 1",
                quote(&object.table),
                quote(&column.column)
            );
            let other = id.map_or(Sql::Null, |i| Sql::Text(i.to_owned()));
            let mut rows = conn.query(&sql, [value.clone(), other]).await?;
            if rows.next().await?.is_some() {
                issues.push(Issue::new(path, "unique", "another record has this value"));
            }
        }
    }
    Ok(if issues.is_empty() {
        Ok(checked)
    } else {
        Err(issues)
    })
}
