//! The tenant's metadata registry (`sys_metadata`, one of the [`crate::system`] tables): what
//! was registered, by whom, and the statements that replace or restore an owner's entries.
//!
//! Each row is one piece of metadata (`metadata_type` `object`, `view`, `flow`, `permission`;
//! `metadata_name`; its JSON `body`; `version`; `source`). Its **owner** comes from `source`:
//! `app:<name>` is the marketplace app `<name>`; anything else (`deployment:<id>`,
//! `fleetctl:db-apply`) is the platform bundle. The schema engine manages exactly the tables of
//! the objects registered by the owner it plans for ([`Ownership`]), plus the ones its desired
//! schema names; everything else in the database is left alone.
//!
//! [`replace`] writes an owner's new set (upserting each entry, deleting the owner's entries the
//! new set no longer has) and returns the [`Snapshot`] of what those rows were before;
//! [`restore`] turns a snapshot back into statements, which is how a rollback puts the registry
//! back as it was.

use std::collections::{BTreeMap, BTreeSet};

use fleet_protocol::ObjectDefinition;
use libsql::{Connection, Value};
use serde::{Deserialize, Serialize};

use crate::apply::BoundStatement;
use crate::introspect::{IntrospectError, rows, text};
use crate::model::Table;

/// The registry table.
pub const REGISTRY_TABLE: &str = "sys_metadata";

/// Who registered a piece of metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Owner {
    /// The platform bundle (deployments, `fleetctl db apply`).
    Platform,
    /// A marketplace app, by name.
    App(String),
}

impl Owner {
    /// The owner a row's `source` names (`app:<name>` → the app; anything else → the platform).
    pub fn of_source(source: Option<&str>) -> Self {
        match source.and_then(|s| s.strip_prefix("app:")) {
            Some(app) => Self::App(app.to_owned()),
            None => Self::Platform,
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Platform => f.write_str("the platform bundle"),
            Self::App(app) => write!(f, "app {app}"),
        }
    }
}

/// One registry row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Registered {
    /// `metadata_type`: `object`, `view`, `flow`, `permission`.
    pub kind: String,
    /// `metadata_name`.
    pub name: String,
    /// `body`: the metadata's JSON text.
    pub body: String,
    /// `version` of the bundle or app that registered it.
    pub version: Option<String>,
    /// `source`: who registered it (see [`Owner::of_source`]).
    pub source: Option<String>,
}

impl Registered {
    /// Its owner.
    pub fn owner(&self) -> Owner {
        Owner::of_source(self.source.as_deref())
    }
}

/// Every registry row, or `None` when the database has no registry (a plain file never
/// provisioned as a tenant database: then every ordinary table counts as the engine's).
pub async fn read(conn: &Connection) -> Result<Option<Vec<Registered>>, IntrospectError> {
    let exists = rows(
        conn,
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'sys_metadata'",
        "the metadata registry",
    )
    .await?;
    if exists.is_empty() {
        return Ok(None);
    }
    let found = rows(
        conn,
        "SELECT metadata_type, metadata_name, body, version, source FROM main.sys_metadata \
         ORDER BY metadata_type, metadata_name",
        "the metadata registry",
    )
    .await?;
    Ok(Some(
        found
            .iter()
            .map(|r| Registered {
                kind: text(&r[0]).unwrap_or_default(),
                name: text(&r[1]).unwrap_or_default(),
                body: text(&r[2]).unwrap_or_default(),
                version: text(&r[3]),
                source: text(&r[4]),
            })
            .collect(),
    ))
}

/// A registered object's body as an object definition (a body without `fields` — accepted in
/// bundles as upstream accepts it — is an object with none).
pub fn object_of(body: &str) -> Result<ObjectDefinition, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_str(body)?;
    if let Some(map) = value.as_object_mut() {
        map.entry("fields")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
    serde_json::from_value(value)
}

/// Which tables the registry gives to the owner being planned for, and which to others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ownership {
    /// This owner's tables, with the table its registered object maps to (`None` when the
    /// registered body no longer maps to a schema: then all of the table's columns and indexes
    /// count as the owner's).
    pub mine: BTreeMap<String, Option<Table>>,
    /// Tables registered by other owners (never touched by this owner's plans).
    pub others: BTreeMap<String, Owner>,
}

impl Ownership {
    /// The ownership `rows` describe for `owner`.
    pub fn of(rows: &[Registered], owner: &Owner) -> Self {
        Self::build(rows, Some(owner))
    }

    /// Every registered table as managed, whoever registered it (for display).
    pub fn everyone(rows: &[Registered]) -> Self {
        Self::build(rows, None)
    }

    fn build(rows: &[Registered], owner: Option<&Owner>) -> Self {
        let objects: Vec<(Owner, ObjectDefinition)> = rows
            .iter()
            .filter(|r| r.kind == "object")
            .filter_map(|r| match object_of(&r.body) {
                Ok(object) => Some((r.owner(), object)),
                Err(err) => {
                    tracing::warn!(object = %r.name, error = %err, "a registered object body does not parse; its table is kept as is");
                    None
                }
            })
            .collect();
        let all: Vec<ObjectDefinition> = objects.iter().map(|(_, o)| o.clone()).collect();
        let own: Vec<ObjectDefinition> = objects
            .iter()
            .filter(|(o, _)| owner.is_none_or(|owner| o == owner))
            .map(|(_, o)| o.clone())
            .collect();
        // References may cross owners (an app's lookup to a platform object): map all first.
        let schema = crate::desired_schema(&all)
            .or_else(|_| crate::desired_schema(&own))
            .ok();
        let mut ownership = Self::default();
        for (who, object) in &objects {
            if object.r#abstract {
                continue;
            }
            let table = object.table();
            if owner.is_none_or(|owner| who == owner) {
                let mapped = schema.as_ref().and_then(|s| s.tables.get(&table)).cloned();
                ownership.mine.insert(table, mapped);
            } else {
                ownership.others.insert(table, who.clone());
            }
        }
        ownership
    }
}

/// One registry entry as it was before a change: `body: None` when there was none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `metadata_type`.
    pub kind: String,
    /// `metadata_name`.
    pub name: String,
    /// The body it had, or `None` when the entry did not exist.
    pub body: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Its source.
    pub source: Option<String>,
}

/// The registry entries a change touched, as they were before it (JSON in
/// `sys_deployment.previous_metadata`).
pub type Snapshot = Vec<Entry>;

const UPSERT: &str = "INSERT INTO main.sys_metadata (id, metadata_type, metadata_name, body, version, source) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (metadata_type, metadata_name) DO UPDATE SET \
     body = excluded.body, version = excluded.version, source = excluded.source, \
     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

const DELETE: &str =
    "DELETE FROM main.sys_metadata WHERE metadata_type = ?1 AND metadata_name = ?2";

fn opt(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |v| Value::Text(v.to_owned()))
}

fn upsert(
    kind: &str,
    name: &str,
    body: &str,
    version: Option<&str>,
    source: Option<&str>,
) -> BoundStatement {
    BoundStatement {
        sql: UPSERT.to_owned(),
        params: vec![
            Value::Text(format!("{kind}:{name}")),
            Value::Text(kind.to_owned()),
            Value::Text(name.to_owned()),
            Value::Text(body.to_owned()),
            opt(version),
            opt(source),
        ],
    }
}

fn delete(kind: &str, name: &str) -> BoundStatement {
    BoundStatement {
        sql: DELETE.to_owned(),
        params: vec![Value::Text(kind.to_owned()), Value::Text(name.to_owned())],
    }
}

/// One piece of metadata to register: `(metadata_type, metadata_name, body JSON)`.
pub type Item = (String, String, String);

/// The registry entries of metadata records by kind (`("object", &bundle.objects)`, …): each
/// record's `name` (or `<kind>_<position>`) and its JSON body.
pub fn items(kinds: &[(&str, &[serde_json::Map<String, serde_json::Value>])]) -> Vec<Item> {
    let mut items = Vec::new();
    for (kind, records) in kinds {
        for (i, record) in records.iter().enumerate() {
            let name = record
                .get("name")
                .and_then(|n| n.as_str())
                .map_or_else(|| format!("{kind}_{i}"), str::to_owned);
            let body = serde_json::Value::Object(record.clone()).to_string();
            items.push(((*kind).to_owned(), name, body));
        }
    }
    items
}

/// The text a registry's rows hold (names and bodies), in bytes: what keeping them costs.
pub fn text_len(registered: &[Registered]) -> usize {
    registered.iter().map(|r| r.body.len() + r.name.len()).sum()
}

/// The registry entries of a deploy bundle: its objects, views, flows and permissions.
pub fn bundle_items(bundle: &fleet_protocol::DeployBundle) -> Vec<Item> {
    items(&[
        ("object", &bundle.objects),
        ("view", &bundle.views),
        ("flow", &bundle.flows),
        ("permission", &bundle.permissions),
    ])
}

/// The statements that make `items` the whole registered set of `owner` (given the registry
/// as it is, `previous`): each item upserted with `version` and `source`, each of the owner's
/// entries that `items` no longer has deleted; and the snapshot of the touched entries as they
/// were.
pub fn replace(
    previous: &[Registered],
    owner: &Owner,
    items: &[Item],
    version: &str,
    source: &str,
) -> (Vec<BoundStatement>, Snapshot) {
    let before: BTreeMap<(&str, &str), &Registered> = previous
        .iter()
        .map(|r| ((r.kind.as_str(), r.name.as_str()), r))
        .collect();
    let wanted: BTreeSet<(&str, &str)> = items
        .iter()
        .map(|(k, n, _)| (k.as_str(), n.as_str()))
        .collect();
    let mut statements = Vec::new();
    let mut snapshot = Vec::new();
    let mut remember = |kind: &str, name: &str| {
        let was = before.get(&(kind, name));
        snapshot.push(Entry {
            kind: kind.to_owned(),
            name: name.to_owned(),
            body: was.map(|r| r.body.clone()),
            version: was.and_then(|r| r.version.clone()),
            source: was.and_then(|r| r.source.clone()),
        });
    };
    for (kind, name, body) in items {
        let unchanged = before
            .get(&(kind.as_str(), name.as_str()))
            .is_some_and(|r| {
                &r.body == body
                    && r.version.as_deref() == Some(version)
                    && r.source.as_deref() == Some(source)
            });
        if unchanged {
            continue;
        }
        remember(kind, name);
        statements.push(upsert(kind, name, body, Some(version), Some(source)));
    }
    for r in previous {
        if &r.owner() == owner && !wanted.contains(&(r.kind.as_str(), r.name.as_str())) {
            remember(&r.kind, &r.name);
            statements.push(delete(&r.kind, &r.name));
        }
    }
    (statements, snapshot)
}

/// The statements that put every entry of `snapshot` back as it was.
pub fn restore(snapshot: &[Entry]) -> Vec<BoundStatement> {
    snapshot
        .iter()
        .map(|e| match &e.body {
            Some(body) => upsert(
                &e.kind,
                &e.name,
                body,
                e.version.as_deref(),
                e.source.as_deref(),
            ),
            None => delete(&e.kind, &e.name),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, name: &str, body: &str, source: &str) -> Registered {
        Registered {
            kind: kind.into(),
            name: name.into(),
            body: body.into(),
            version: Some("1".into()),
            source: Some(source.into()),
        }
    }

    #[test]
    fn owners_come_from_the_source() {
        assert_eq!(Owner::of_source(Some("app:crm")), Owner::App("crm".into()));
        assert_eq!(Owner::of_source(Some("deployment:d1")), Owner::Platform);
        assert_eq!(Owner::of_source(None), Owner::Platform);
    }

    #[test]
    fn replace_upserts_deletes_only_the_owners_leftovers_and_snapshots_them() {
        let previous = vec![
            row(
                "object",
                "a",
                "{\"name\":\"a\",\"fields\":{}}",
                "deployment:d1",
            ),
            row(
                "object",
                "gone",
                "{\"name\":\"gone\",\"fields\":{}}",
                "deployment:d1",
            ),
            row(
                "object",
                "app_thing",
                "{\"name\":\"app_thing\",\"fields\":{}}",
                "app:crm",
            ),
        ];
        let items = vec![
            (
                "object".to_owned(),
                "a".to_owned(),
                "{\"name\":\"a\",\"fields\":{\"x\":{}}}".to_owned(),
            ),
            (
                "object".to_owned(),
                "b".to_owned(),
                "{\"name\":\"b\",\"fields\":{}}".to_owned(),
            ),
        ];
        let (statements, snapshot) =
            replace(&previous, &Owner::Platform, &items, "2", "deployment:d2");
        assert_eq!(
            statements.len(),
            3,
            "a and b upserted, gone deleted, the app's kept"
        );
        let names: Vec<(&str, bool)> = snapshot
            .iter()
            .map(|e| (e.name.as_str(), e.body.is_some()))
            .collect();
        assert_eq!(names, [("a", true), ("b", false), ("gone", true)]);
        let back = restore(&snapshot);
        assert_eq!(back.len(), 3);
        assert!(back[1].sql.starts_with("DELETE"), "b did not exist before");
    }

    #[test]
    fn ownership_maps_registered_objects_to_their_tables() {
        let rows = vec![
            row(
                "object",
                "vendor",
                r#"{"name":"vendor","fields":{"name":{"type":"text"}}}"#,
                "deployment:d1",
            ),
            row(
                "object",
                "deal",
                r#"{"name":"deal","namespace":"crm","fields":{"vendor":{"type":"lookup","reference":"vendor"}}}"#,
                "app:crm",
            ),
            row("object", "broken", "not json", "deployment:d1"),
        ];
        let platform = Ownership::of(&rows, &Owner::Platform);
        assert!(
            platform.mine["vendor"]
                .as_ref()
                .is_some_and(|t| t.column("name").is_some())
        );
        assert_eq!(
            platform.others.get("crm_deal"),
            Some(&Owner::App("crm".into()))
        );
        let app = Ownership::of(&rows, &Owner::App("crm".into()));
        assert!(app.mine.contains_key("crm_deal") && app.others.contains_key("vendor"));
    }
}
