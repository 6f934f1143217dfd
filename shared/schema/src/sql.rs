//! SQL text: identifier rules and quoting, literals, and DDL for the [`crate::model`] types.
//!
//! No SQL is built from text that has not passed [`check_identifier`]; every identifier is
//! additionally double-quoted, and every value is rendered by [`literal`].

use serde_json::Value;

use crate::model::{Column, Index, Table};

/// Longest identifier the fleet accepts.
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// Prefix of the fleet's own tables (metadata registry, deployments, rebuild scratch tables);
/// objects may not use it, and schema diffs ignore such tables.
pub const FLEET_TABLE_PREFIX: &str = "_fleet_";

/// SQLite's keywords (sqlite.org/lang_keywords.html) and its rowid aliases: rejected as names
/// even though the fleet always quotes, so that hand-written SQL against tenant databases never
/// trips over them.
pub const RESERVED_WORDS: &[&str] = &[
    "abort",
    "action",
    "add",
    "after",
    "all",
    "alter",
    "always",
    "analyze",
    "and",
    "as",
    "asc",
    "attach",
    "autoincrement",
    "before",
    "begin",
    "between",
    "by",
    "cascade",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "commit",
    "conflict",
    "constraint",
    "create",
    "cross",
    "current",
    "current_date",
    "current_time",
    "current_timestamp",
    "database",
    "default",
    "deferrable",
    "deferred",
    "delete",
    "desc",
    "detach",
    "distinct",
    "do",
    "drop",
    "each",
    "else",
    "end",
    "escape",
    "except",
    "exclude",
    "exclusive",
    "exists",
    "explain",
    "fail",
    "filter",
    "first",
    "following",
    "for",
    "foreign",
    "from",
    "full",
    "generated",
    "glob",
    "group",
    "groups",
    "having",
    "if",
    "ignore",
    "immediate",
    "in",
    "index",
    "indexed",
    "initially",
    "inner",
    "insert",
    "instead",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "key",
    "last",
    "left",
    "like",
    "limit",
    "match",
    "materialized",
    "natural",
    "no",
    "not",
    "nothing",
    "notnull",
    "null",
    "nulls",
    "of",
    "offset",
    "on",
    "or",
    "order",
    "others",
    "outer",
    "over",
    "partition",
    "plan",
    "pragma",
    "preceding",
    "primary",
    "query",
    "raise",
    "range",
    "recursive",
    "references",
    "regexp",
    "reindex",
    "release",
    "rename",
    "replace",
    "restrict",
    "returning",
    "right",
    "rollback",
    "row",
    "rows",
    "savepoint",
    "select",
    "set",
    "table",
    "temp",
    "temporary",
    "then",
    "ties",
    "to",
    "transaction",
    "trigger",
    "unbounded",
    "union",
    "unique",
    "update",
    "using",
    "vacuum",
    "values",
    "view",
    "virtual",
    "when",
    "where",
    "window",
    "with",
    "without",
    "rowid",
    "oid",
    "_rowid_",
];

/// Why a table, column or index name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdentifier {
    /// Not `^[a-z_][a-z0-9_]*$`.
    #[error("{0:?} is not snake_case ASCII (^[a-z_][a-z0-9_]*$)")]
    NotSnakeCase(String),
    /// Longer than [`MAX_IDENTIFIER_LEN`].
    #[error("{0:?} is longer than {MAX_IDENTIFIER_LEN} characters")]
    TooLong(String),
    /// An SQL keyword.
    #[error("{0:?} is an SQL keyword")]
    Keyword(String),
    /// `sqlite_…` or `_fleet_…`.
    #[error("{0:?} uses a prefix reserved for the database or the fleet")]
    ReservedPrefix(String),
}

/// Checks a table, column or index name: snake_case ASCII (`^[a-z_][a-z0-9_]*$`), at most
/// [`MAX_IDENTIFIER_LEN`] characters, not a reserved word, not `sqlite_…` or `_fleet_…`.
pub fn check_identifier(name: &str) -> Result<(), InvalidIdentifier> {
    let mut chars = name.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        return Err(InvalidIdentifier::NotSnakeCase(name.to_owned()));
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err(InvalidIdentifier::TooLong(name.to_owned()));
    }
    if RESERVED_WORDS.contains(&name) {
        return Err(InvalidIdentifier::Keyword(name.to_owned()));
    }
    if name.starts_with("sqlite_") || name.starts_with(FLEET_TABLE_PREFIX) {
        return Err(InvalidIdentifier::ReservedPrefix(name.to_owned()));
    }
    Ok(())
}

/// `"name"`, with embedded quotes doubled (names reaching here are already checked; quoting
/// is the second line of defence, and what makes introspected foreign names safe).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with embedded quotes doubled.
pub fn quote_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A JSON value as an SQL literal for a column default; `None` for `null` (no default).
/// Booleans become 1/0, numbers stay numbers, arrays and objects become their JSON text.
pub fn literal(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(quote_text(s)),
        other => Some(quote_text(&other.to_string())),
    }
}

/// Whether a default as SQLite reports it is a plain literal (writable without parentheses,
/// as `ALTER TABLE … ADD COLUMN` requires).
pub fn is_literal(default_sql: &str) -> bool {
    default_sql.starts_with('\'')
        || default_sql.eq_ignore_ascii_case("null")
        || default_sql.parse::<f64>().is_ok()
        || (default_sql.starts_with("X'") || default_sql.starts_with("x'"))
}

/// A column definition as in `CREATE TABLE` / `ADD COLUMN`.
pub fn column_definition(column: &Column) -> String {
    let mut sql = format!("{} {}", quote(&column.name), column.column_type.sql());
    if column.not_null {
        sql.push_str(" NOT NULL");
    }
    if column.primary_key {
        sql.push_str(" PRIMARY KEY");
    }
    if let Some(default) = &column.default_sql {
        if is_literal(default) {
            sql.push_str(&format!(" DEFAULT {default}"));
        } else {
            sql.push_str(&format!(" DEFAULT ({default})"));
        }
    }
    if let Some(fk) = &column.references {
        sql.push_str(&format!(
            " REFERENCES {} ({}) ON DELETE {}",
            quote(&fk.table),
            quote(&fk.column),
            fk.on_delete.sql()
        ));
    }
    sql
}

/// `CREATE TABLE` for `table` under `name` (the table's own name, or a rebuild's scratch name).
pub fn create_table(name: &str, table: &Table) -> String {
    let columns: Vec<String> = table.columns.iter().map(column_definition).collect();
    format!("CREATE TABLE {} ({})", quote(name), columns.join(", "))
}

/// `CREATE [UNIQUE] INDEX`.
pub fn create_index(table: &str, index: &Index) -> String {
    let columns: Vec<String> = index.columns.iter().map(|c| quote(c)).collect();
    format!(
        "CREATE {}INDEX {} ON {} ({})",
        if index.unique { "UNIQUE " } else { "" },
        quote(&index.name),
        quote(table),
        columns.join(", ")
    )
}

/// `DROP INDEX`.
pub fn drop_index(index: &Index) -> String {
    format!("DROP INDEX {}", quote(&index.name))
}

/// The column definitions of a `CREATE TABLE` statement as SQLite stores it in
/// `sqlite_master.sql` (the text as written, with every `ADD COLUMN` appended): each column's
/// name (unquoted) and its whole definition text. Table constraints (`PRIMARY KEY (…)`,
/// `UNIQUE`, `CHECK`, `FOREIGN KEY`, `CONSTRAINT`) are left out.
///
/// This is what lets a rebuild keep a column the engine does not manage — a hand-added or a
/// generated one — exactly as it was defined.
pub fn column_definitions(create_table: &str) -> Vec<(String, String)> {
    definition_parts(create_table)
        .into_iter()
        .filter(|(_, constraint)| !constraint)
        .filter_map(|(part, _)| first_identifier(&part).map(|(name, _)| (name, part)))
        .collect()
}

/// The table constraints of a `CREATE TABLE` statement (`CHECK (…)`, `UNIQUE (…)`, …), and
/// `WITHOUT ROWID`/`STRICT` when it has them: what a table the engine did not create may carry
/// and a rebuild from the engine's model would lose.
pub fn table_constraints(create_table: &str) -> Vec<String> {
    let mut out: Vec<String> = definition_parts(create_table)
        .into_iter()
        .filter(|(_, constraint)| *constraint)
        .map(|(part, _)| part)
        .collect();
    let stripped = strip_comments(create_table);
    if let Some(close) = stripped.rfind(')') {
        let options = stripped[close + 1..].trim();
        if !options.is_empty() && options != ";" {
            out.push(options.to_owned());
        }
    }
    out
}

/// The parts of a `CREATE TABLE` body split at top-level commas, each with whether it is a
/// table constraint.
fn definition_parts(create_table: &str) -> Vec<(String, bool)> {
    let create_table = &strip_comments(create_table);
    let Some(open) = create_table.find('(') else {
        return Vec::new();
    };
    let body = &create_table[open + 1..];
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' | '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                while let Some((_, d)) = chars.next() {
                    if d == close {
                        // A doubled quote is an escaped quote: stay inside.
                        if close != ']' && chars.peek().is_some_and(|&(_, n)| n == close) {
                            chars.next();
                            continue;
                        }
                        break;
                    }
                }
            }
            '(' => depth += 1,
            ')' if depth == 0 => {
                parts.push(&body[start..i]);
                break;
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let constraint = !part.starts_with(['"', '`', '['])
                && first_identifier(part).is_some_and(|(word, _)| {
                    ["constraint", "primary", "unique", "check", "foreign"]
                        .contains(&word.to_ascii_lowercase().as_str())
                });
            (part.to_owned(), constraint)
        })
        .collect()
}

/// `sql` with its comments (`-- …` to the end of the line, `/* … */`) replaced by a space;
/// quoted strings and names are kept as they are.
pub fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == close {
                        break; // a doubled quote reopens on the next iteration
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                out.push(' ');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for d in chars.by_ref() {
                    if last == '*' && d == '/' {
                        break;
                    }
                    last = d;
                }
                out.push(' ');
            }
            c => out.push(c),
        }
    }
    out
}

/// The first identifier of `text` (bare, or quoted with `"`, `` ` `` or `[]`), unquoted, and
/// the byte length it takes.
fn first_identifier(text: &str) -> Option<(String, usize)> {
    let mut chars = text.char_indices();
    let (_, first) = chars.next()?;
    let close = match first {
        '"' => '"',
        '`' => '`',
        '[' => ']',
        c if c.is_alphanumeric() || c == '_' => {
            let end = text
                .char_indices()
                .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .map_or(text.len(), |(i, _)| i);
            return Some((text[..end].to_owned(), end));
        }
        _ => return None,
    };
    let mut name = String::new();
    let mut rest = text[1..].char_indices().peekable();
    while let Some((i, c)) = rest.next() {
        if c == close {
            if close != ']' && rest.peek().is_some_and(|&(_, n)| n == close) {
                rest.next();
                name.push(c);
                continue;
            }
            return Some((name, i + 2));
        }
        name.push(c);
    }
    None
}

/// Every identifier-like word of an SQL text (bare words and quoted names, lowercased; string
/// literals skipped): enough to tell whether a view or trigger body may name a table.
pub fn identifiers(sql: &str) -> std::collections::BTreeSet<String> {
    let sql = &strip_comments(sql);
    let mut out = std::collections::BTreeSet::new();
    let mut i = 0;
    let bytes = sql.as_bytes();
    while i < sql.len() {
        let c = sql[i..].chars().next().unwrap_or(' ');
        if c == '\'' {
            // A string literal: skip to its closing quote ('' is an escaped quote).
            let mut j = i + 1;
            while j < bytes.len() {
                if bytes[j] == b'\'' {
                    if bytes.get(j + 1) == Some(&b'\'') {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            i = j + 1;
        } else if let Some((name, len)) = first_identifier(&sql[i..]) {
            out.insert(name.to_lowercase());
            i += len.max(1);
        } else {
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hostile_identifiers_are_refused() {
        for bad in [
            "a\"b",
            "a;drop table x",
            "Account",
            "order",
            "select",
            "rowid",
            "sqlite_master",
            "_fleet_registry",
            "ac\u{0441}ount",
            "a b",
            "",
            "1abc",
            "a-b",
        ] {
            assert!(check_identifier(bad).is_err(), "{bad:?} must be refused");
        }
        check_identifier("account").unwrap();
        check_identifier("_private").unwrap();
        assert!(check_identifier(&"a".repeat(64)).is_err());
    }

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_text("it's"), "'it''s'");
    }

    #[test]
    fn column_definitions_split_at_top_level_commas_only() {
        let sql = "CREATE TABLE \"vendor\" (\"id\" TEXT NOT NULL PRIMARY KEY, \"name\" TEXT DEFAULT 'a, (b)', \
                   total REAL GENERATED ALWAYS AS (coalesce(\"rating\", 0) * 2) VIRTUAL, [odd \"\"x] INT, \
                   CONSTRAINT ck CHECK (total >= 0), UNIQUE (name))";
        let defs = column_definitions(sql);
        let names: Vec<&str> = defs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["id", "name", "total", "odd \"\"x"]);
        assert_eq!(
            defs[2].1,
            "total REAL GENERATED ALWAYS AS (coalesce(\"rating\", 0) * 2) VIRTUAL"
        );
        assert_eq!(defs[1].1, "\"name\" TEXT DEFAULT 'a, (b)'");
    }

    #[test]
    fn table_constraints_and_options_are_found() {
        let sql = "CREATE TABLE t (id TEXT PRIMARY KEY, n REAL, CHECK (n > 0)) WITHOUT ROWID";
        assert_eq!(table_constraints(sql), ["CHECK (n > 0)", "WITHOUT ROWID"]);
        assert!(table_constraints("CREATE TABLE \"t\" (\"id\" TEXT)").is_empty());
    }

    #[test]
    fn comments_hide_nothing() {
        let view =
            "CREATE VIEW v1 AS SELECT id, name -- it's the list\nFROM vendor /* it's */ WHERE 1";
        assert!(identifiers(view).contains("vendor"));
        let table = "CREATE TABLE t (a TEXT /* a, b */, b TEXT -- it's\n, c INT)";
        let names: Vec<String> = column_definitions(table)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn identifiers_skip_string_literals() {
        let found =
            identifiers("CREATE VIEW v AS SELECT \"Name\" FROM vendor WHERE note = 'account'");
        assert!(found.contains("vendor") && found.contains("name") && found.contains("v"));
        assert!(!found.contains("account"));
    }

    #[test]
    fn literals_render_json_values() {
        assert_eq!(literal(&json!("o'k")).as_deref(), Some("'o''k'"));
        assert_eq!(literal(&json!(true)).as_deref(), Some("1"));
        assert_eq!(literal(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(literal(&json!(["a"])).as_deref(), Some("'[\"a\"]'"));
        assert_eq!(literal(&json!(null)), None);
        assert!(is_literal("'x'") && is_literal("-1") && !is_literal("strftime('%s','now')"));
    }
}
