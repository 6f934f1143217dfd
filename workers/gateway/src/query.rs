//! A find's query — upstream's `QuerySchema` subset the gateway serves — as SQL with bound
//! parameters.
//!
//! Query string of `GET /api/v1/data/:object`:
//!
//! - `filter`: a JSON `where` (upstream's filter condition): `{"field": value}` (equality),
//!   `{"field": {"$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte": value}}`,
//!   `{"field": {"$in" | "$nin": [values]}}`, `{"field": {"$contains" | "$startsWith" |
//!   "$endsWith": "text"}}`, `{"field": {"$null": true | false}}`, and `$and` / `$or` (arrays of
//!   conditions) and `$not` (a condition);
//! - `sort`: fields separated by commas, `-` before a field for descending (`-amount,title`);
//! - `select`: the fields to return, separated by commas (the system fields always come);
//! - `top` (or `limit`) and `skip` (or `offset`): the page.
//!
//! Every field named must be one of the object's (or `id`, `created_at`, `updated_at`); every
//! value is bound as a parameter; anything else is refused with the issue's path. Nothing from
//! the request is ever spliced into SQL but the quoted names of the object's own columns.

use fleet_schema::sql::quote;
use libsql::Value as Sql;
use serde_json::Value;

use crate::records::{Issue, Object};

/// The query string a find takes.
#[derive(Debug, Default, serde::Deserialize)]
pub struct FindParams {
    /// A JSON filter.
    pub filter: Option<String>,
    /// Sort fields.
    pub sort: Option<String>,
    /// Fields to return.
    pub select: Option<String>,
    /// Page size.
    pub top: Option<u64>,
    /// Page size (alias of `top`).
    pub limit: Option<u64>,
    /// Records to skip.
    pub skip: Option<u64>,
    /// Records to skip (alias of `skip`).
    pub offset: Option<u64>,
}

/// A find, ready to run.
#[derive(Debug, Default)]
pub struct Find {
    /// `WHERE …` (empty: every record).
    pub where_sql: String,
    /// Its parameters, in order.
    pub params: Vec<Sql>,
    /// `ORDER BY …`.
    pub order_sql: String,
    /// The fields asked for (`None`: all).
    pub select: Option<Vec<String>>,
    /// Page size.
    pub limit: u64,
    /// Records skipped.
    pub offset: u64,
}

/// Deepest filter nesting taken.
const MAX_DEPTH: usize = 8;

/// The find `params` describe for `object`, pages capped at `max_page`; or every issue.
pub fn find(object: &Object, params: &FindParams, max_page: u64) -> Result<Find, Vec<Issue>> {
    let mut issues = Vec::new();
    let mut find = Find {
        limit: params
            .top
            .or(params.limit)
            .unwrap_or(max_page)
            .min(max_page),
        offset: params.skip.or(params.offset).unwrap_or(0),
        ..Find::default()
    };
    if i64::try_from(find.offset).is_err() {
        issues.push(Issue::new(
            "skip",
            "too_big",
            format!("at most {}", i64::MAX),
        ));
    }
    if let Some(text) = &params.filter {
        match serde_json::from_str::<Value>(text) {
            Ok(filter) => {
                let sql = condition(object, &filter, "filter", 0, &mut find.params, &mut issues);
                if let Some(sql) = sql.filter(|s| !s.is_empty()) {
                    find.where_sql = format!(" WHERE {sql}");
                }
            }
            Err(e) => issues.push(Issue::new("filter", "invalid_json", e.to_string())),
        }
    }
    if let Some(sort) = &params.sort {
        let mut terms = Vec::new();
        for term in sort.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, direction) = match term.strip_prefix('-') {
                Some(key) => (key, "DESC"),
                None => (term.strip_prefix('+').unwrap_or(term), "ASC"),
            };
            match object.column(key) {
                Some(column) => terms.push(format!("{} {direction}", quote(column.column()))),
                None => issues.push(Issue::new(
                    "sort",
                    "unrecognized_key",
                    format!("{} has no field {key:?}", object.name),
                )),
            }
        }
        if !terms.is_empty() {
            find.order_sql = format!(" ORDER BY {}", terms.join(", "));
        }
    }
    if find.order_sql.is_empty() {
        find.order_sql = " ORDER BY \"created_at\", \"id\"".into();
    }
    if let Some(select) = &params.select {
        let mut keys = Vec::new();
        for key in select.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            if object.column(key).is_some() {
                keys.push(key.to_owned());
            } else {
                issues.push(Issue::new(
                    "select",
                    "unrecognized_key",
                    format!("{} has no field {key:?}", object.name),
                ));
            }
        }
        find.select = Some(keys);
    }
    if issues.is_empty() {
        Ok(find)
    } else {
        Err(issues)
    }
}

/// The SQL of one filter condition (`None` after pushing its issues).
fn condition(
    object: &Object,
    filter: &Value,
    path: &str,
    depth: usize,
    params: &mut Vec<Sql>,
    issues: &mut Vec<Issue>,
) -> Option<String> {
    if depth > MAX_DEPTH {
        issues.push(Issue::new(
            path,
            "too_deep",
            format!("nested deeper than {MAX_DEPTH}"),
        ));
        return None;
    }
    let Some(map) = filter.as_object() else {
        issues.push(Issue::new(path, "invalid_type", "expected an object"));
        return None;
    };
    let mut parts = Vec::new();
    for (key, value) in map {
        let here = format!("{path}.{key}");
        match key.as_str() {
            "$and" | "$or" => {
                let Some(items) = value.as_array() else {
                    issues.push(Issue::new(
                        here,
                        "invalid_type",
                        "expected an array of conditions",
                    ));
                    continue;
                };
                let joined: Vec<String> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| {
                        condition(
                            object,
                            item,
                            &format!("{here}.{i}"),
                            depth + 1,
                            params,
                            issues,
                        )
                    })
                    .map(|sql| {
                        if sql.is_empty() {
                            "1".to_owned()
                        } else {
                            format!("({sql})")
                        }
                    })
                    .collect();
                if joined.is_empty() {
                    parts.push(if key == "$and" {
                        "1".into()
                    } else {
                        "0".into()
                    });
                } else {
                    let op = if key == "$and" { " AND " } else { " OR " };
                    parts.push(format!("({})", joined.join(op)));
                }
            }
            "$not" => {
                if let Some(sql) = condition(object, value, &here, depth + 1, params, issues) {
                    let sql = if sql.is_empty() { "1".to_owned() } else { sql };
                    parts.push(format!("NOT ({sql})"));
                }
            }
            field => {
                let Some(column) = object.column(field) else {
                    issues.push(Issue::new(
                        here,
                        "unrecognized_key",
                        format!("{} has no field {field:?}", object.name),
                    ));
                    continue;
                };
                let name = quote(column.column());
                let operators = match value {
                    Value::Object(ops) if ops.is_empty() => {
                        issues.push(Issue::new(here, "invalid_type", "an empty condition"));
                        continue;
                    }
                    Value::Object(ops) if ops.keys().all(|k| k.starts_with('$')) => ops.clone(),
                    _ => {
                        let mut eq = serde_json::Map::new();
                        eq.insert("$eq".into(), value.clone());
                        eq
                    }
                };
                for (op, operand) in &operators {
                    let at = format!("{here}.{op}");
                    let bind =
                        |v: &Value, params: &mut Vec<Sql>, issues: &mut Vec<Issue>| match column
                            .filter_value(v)
                        {
                            Some(sql) => {
                                params.push(sql);
                                Some(format!("?{}", params.len()))
                            }
                            None => {
                                issues.push(Issue::new(
                                    at.clone(),
                                    "invalid_type",
                                    "expected a string, number, boolean or null",
                                ));
                                None
                            }
                        };
                    let compare = |sign: &str, params: &mut Vec<Sql>, issues: &mut Vec<Issue>| {
                        bind(operand, params, issues).map(|p| format!("{name} {sign} {p}"))
                    };
                    let sql = match op.as_str() {
                        "$eq" if operand.is_null() => Some(format!("{name} IS NULL")),
                        "$ne" if operand.is_null() => Some(format!("{name} IS NOT NULL")),
                        "$eq" => compare("=", params, issues),
                        "$ne" => compare("IS NOT", params, issues),
                        "$gt" => compare(">", params, issues),
                        "$gte" => compare(">=", params, issues),
                        "$lt" => compare("<", params, issues),
                        "$lte" => compare("<=", params, issues),
                        "$in" | "$nin" => match operand.as_array() {
                            Some(items) if items.is_empty() => {
                                Some(if op == "$in" { "0".into() } else { "1".into() })
                            }
                            Some(items) => {
                                let mut bound = Vec::new();
                                for item in items {
                                    if let Some(p) = bind(item, params, issues) {
                                        bound.push(p);
                                    }
                                }
                                let not = if op == "$nin" { "NOT " } else { "" };
                                Some(format!("{name} {not}IN ({})", bound.join(", ")))
                            }
                            None => {
                                issues.push(Issue::new(
                                    at.clone(),
                                    "invalid_type",
                                    "expected an array",
                                ));
                                None
                            }
                        },
                        "$contains" | "$startsWith" | "$endsWith" => match operand.as_str() {
                            Some(text) => {
                                let escaped = text
                                    .replace('\\', "\\\\")
                                    .replace('%', "\\%")
                                    .replace('_', "\\_");
                                let pattern = match op.as_str() {
                                    "$contains" => format!("%{escaped}%"),
                                    "$startsWith" => format!("{escaped}%"),
                                    _ => format!("%{escaped}"),
                                };
                                params.push(Sql::Text(pattern));
                                Some(format!("{name} LIKE ?{} ESCAPE '\\'", params.len()))
                            }
                            None => {
                                issues.push(Issue::new(
                                    at.clone(),
                                    "invalid_type",
                                    "expected a string",
                                ));
                                None
                            }
                        },
                        "$null" => match operand.as_bool() {
                            Some(true) => Some(format!("{name} IS NULL")),
                            Some(false) => Some(format!("{name} IS NOT NULL")),
                            None => {
                                issues.push(Issue::new(
                                    at.clone(),
                                    "invalid_type",
                                    "expected a boolean",
                                ));
                                None
                            }
                        },
                        other => {
                            issues.push(Issue::new(
                                at.clone(),
                                "unknown_operator",
                                format!("unknown operator {other}"),
                            ));
                            None
                        }
                    };
                    parts.extend(sql);
                }
            }
        }
    }
    Some(parts.join(" AND "))
}
