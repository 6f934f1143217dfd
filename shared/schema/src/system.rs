//! The base system schema every tenant database gets at provisioning: the metadata registry,
//! deployment history, installed apps and users, as ObjectStack objects in the `sys` namespace
//! (tables `sys_metadata`, `sys_deployment`, `sys_installed_app`, `sys_user`).
//!
//! `sys_deployment.rollback_plan` holds the reverse `MigrationPlan` of a deployment and
//! `previous_metadata` the registry entries it replaced, as they were ([`crate::registry::Snapshot`]
//! JSON): together they are what a rollback restores.
//!
//! They go through the same engine as tenant objects, so a desired schema for a tenant is always
//! [`with_system_objects`] of its bundle: the system tables are never seen as "removed".

use std::sync::LazyLock;

use fleet_protocol::{ObjectDefinition, parse_value};
use serde_json::json;

use crate::Schema;

/// The system objects and their schema, made once per process (every provisioning and every
/// deployed tenant plans towards them).
static BASE: LazyLock<(Vec<ObjectDefinition>, Schema)> = LazyLock::new(|| {
    let objects = parse_base_objects();
    let schema = crate::desired_schema(&objects).expect("the system objects make a schema");
    (objects, schema)
});

/// The system objects.
pub fn base_objects() -> &'static [ObjectDefinition] {
    &BASE.0
}

/// The schema of the system objects: [`crate::desired_schema`] of [`base_objects`].
pub fn base_schema() -> &'static Schema {
    &BASE.1
}

/// The plan that takes an empty database (a new tenant's) to [`base_schema`]:
/// [`crate::plan_empty`] with the default options, made once per process.
pub fn base_plan_from_empty() -> &'static crate::Planned {
    static PLAN: LazyLock<crate::Planned> = LazyLock::new(|| {
        crate::plan_empty(base_schema(), crate::PlanOptions::default())
            .expect("the system objects plan from an empty database")
    });
    &PLAN
}

fn parse_base_objects() -> Vec<ObjectDefinition> {
    let objects = json!([
        {"name": "metadata", "namespace": "sys", "label": "Metadata", "isSystem": true, "fields": {
            "metadata_type": {"type": "text", "required": true},
            "metadata_name": {"type": "text", "required": true},
            "body": {"type": "json", "required": true},
            "version": {"type": "text"},
            "source": {"type": "text"}
        }, "indexes": [{"fields": ["metadata_type", "metadata_name"], "unique": true}]},
        {"name": "deployment", "namespace": "sys", "label": "Deployment", "isSystem": true, "fields": {
            "deployment_id": {"type": "text", "required": true, "unique": true},
            "version": {"type": "text", "required": true},
            "checksum": {"type": "text"},
            "status": {"type": "text", "required": true, "defaultValue": "ready"},
            "statements": {"type": "number", "defaultValue": 0},
            "applied_at": {"type": "datetime"},
            "rollback_plan": {"type": "json"},
            "previous_metadata": {"type": "json"}
        }},
        {"name": "installed_app", "namespace": "sys", "label": "Installed App", "isSystem": true, "fields": {
            "app": {"type": "text", "required": true, "unique": true},
            "version": {"type": "text", "required": true},
            "status": {"type": "text", "required": true, "defaultValue": "active"},
            "installed_at": {"type": "datetime"}
        }},
        {"name": "user", "namespace": "sys", "label": "User", "isSystem": true, "fields": {
            "email": {"type": "email", "required": true, "unique": true},
            "display_name": {"type": "text"},
            "role": {"type": "text", "required": true, "defaultValue": "member"},
            "active": {"type": "boolean", "required": true, "defaultValue": true}
        }}
    ]);
    objects
        .as_array()
        .expect("an array")
        .iter()
        .map(|o| {
            parse_value::<ObjectDefinition>(o)
                .expect("the system objects are valid")
                .value
        })
        .collect()
}

/// `objects` plus the system objects (which always win on a name clash).
pub fn with_system_objects(objects: &[ObjectDefinition]) -> Vec<ObjectDefinition> {
    let system = base_objects();
    let mut all: Vec<ObjectDefinition> = objects
        .iter()
        .filter(|o| !system.iter().any(|s| s.table() == o.table()))
        .cloned()
        .collect();
    all.extend_from_slice(system);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_objects_map_to_a_valid_schema() {
        let schema = crate::desired_schema(base_objects()).unwrap();
        assert_eq!(&schema, base_schema());
        // The seed's table (the provisioner inserts the admin user), one table per object.
        assert!(schema.tables.contains_key("sys_user"));
        assert_eq!(schema.tables.len(), base_objects().len());
        let names: Vec<_> = schema.tables.keys().cloned().collect();
        assert_eq!(
            names,
            [
                "sys_deployment",
                "sys_installed_app",
                "sys_metadata",
                "sys_user"
            ]
        );
    }
}
