//! Installs, re-installs, dependencies, conflicts, a platform deploy beside apps, upgrades,
//! uninstalls, quotas, bad input and a crash — all through the real installer binary.

use std::time::Duration;

use async_nats::HeaderMap;
use fleet_apps::InstallStatus;
use libsql::Value;
use serde_json::json;

use crate::{Fleet, app, crm};

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn active(version: &str) -> impl Fn(Option<&fleet_apps::InstallRecord>) -> bool + '_ {
    move |r| {
        r.is_some_and(|r| {
            r.status == InstallStatus::Active && r.installed_version.as_deref() == Some(version)
        })
    }
}

#[tokio::test]
async fn install_reinstall_dependencies_upgrade_and_uninstall() {
    let mut fleet = Fleet::start().await;
    fleet.provision(&["acme"], "enterprise").await;
    fleet.spawn_installer(&[]);

    // A dependency is enforced: helpdesk needs contacts.
    fleet
        .send("install", "acme", &app("helpdesk-1.0.0"), json!({}))
        .await;
    let refused = fleet
        .until("acme", "helpdesk", "helpdesk refused", |r| {
            r.is_some_and(|r| r.status == InstallStatus::Failed)
        })
        .await
        .unwrap();
    let check = refused.check.unwrap();
    assert!(!check.compatible);
    assert_eq!(
        serde_json::to_value(check.issues[0].category).unwrap(),
        "dependency_missing"
    );
    assert_eq!(
        fleet
            .count(
                "acme",
                "SELECT count(*) FROM sqlite_master WHERE name = 'helpdesk_ticket'"
            )
            .await,
        0,
        "nothing written"
    );

    // contacts: tables, seed, registration, hook.
    fleet
        .send("install", "acme", &app("contacts-1.0.0"), json!({}))
        .await;
    let record = fleet
        .until("acme", "contacts", "contacts active", active("1.0.0"))
        .await
        .unwrap();
    let result = record.result.unwrap();
    assert_eq!(
        result.created_tables,
        ["contacts_organization", "contacts_person"]
    );
    assert_eq!(result.seeded_records, 2);
    assert_eq!(
        fleet
            .count(
                "acme",
                "SELECT count(*) FROM sys_metadata WHERE source = 'app:contacts'"
            )
            .await,
        3,
        "two objects and the manifest, owned by the app"
    );
    assert_eq!(
        fleet
            .rows("acme", "SELECT app, version, status FROM sys_installed_app")
            .await,
        vec![vec![text("contacts"), text("1.0.0"), text("active")]]
    );

    // Re-install: a no-op (no row twice).
    fleet
        .send("install", "acme", &app("contacts-1.0.0"), json!({}))
        .await;
    fleet
        .eventually(Duration::from_secs(30), "re-install done", async || {
            fleet.hooks("hooks.app.installed").await.len() == 2
        })
        .await;
    let again = fleet.record("acme", "contacts").await.unwrap();
    assert_eq!(again.status, InstallStatus::Active);
    assert_eq!(again.result.unwrap().seeded_records, 0);
    assert_eq!(
        fleet
            .count("acme", "SELECT count(*) FROM contacts_person")
            .await,
        1
    );

    // Now helpdesk installs, its lookup pointing at the contacts app's table.
    fleet
        .send("install", "acme", &app("helpdesk-1.0.0"), json!({}))
        .await;
    fleet
        .until("acme", "helpdesk", "helpdesk active", active("1.0.0"))
        .await;
    assert_eq!(
        fleet
            .rows(
                "acme",
                "SELECT \"table\" FROM pragma_foreign_key_list('helpdesk_ticket')"
            )
            .await,
        vec![vec![text("contacts_person")]]
    );

    // contacts cannot go while helpdesk needs it.
    fleet.uninstall("acme", "contacts", false).await;
    let kept = fleet
        .until("acme", "contacts", "uninstall refused", |r| {
            r.is_some_and(|r| r.error.is_some())
        })
        .await
        .unwrap();
    assert_eq!(kept.status, InstallStatus::Active);
    assert!(kept.error.unwrap().contains("needed by helpdesk"));

    // Upgrade: a new field keeps rows; a new object gets its seed, old ones are not re-seeded.
    fleet
        .send("upgrade", "acme", &app("helpdesk-1.1.0"), json!({}))
        .await;
    let upgraded = fleet
        .until("acme", "helpdesk", "helpdesk 1.1", active("1.1.0"))
        .await
        .unwrap();
    assert_eq!(upgraded.result.unwrap().seeded_records, 1);
    assert_eq!(
        fleet
            .rows("acme", "SELECT id, priority FROM helpdesk_ticket")
            .await,
        vec![vec![text("tk-1"), text("normal")]]
    );
    assert_eq!(
        fleet
            .count("acme", "SELECT count(*) FROM helpdesk_ticket_comment")
            .await,
        1
    );
    // The record says active first; the hook is published right after.
    fleet
        .eventually(Duration::from_secs(30), "the upgrade's hook", async || {
            fleet.hooks("hooks.app.upgraded").await.len() == 1
        })
        .await;

    // A downgrade is refused; 1.1.0 stays.
    fleet
        .send("upgrade", "acme", &app("helpdesk-1.0.0"), json!({}))
        .await;
    let kept = fleet
        .until("acme", "helpdesk", "downgrade refused", |r| {
            r.is_some_and(|r| r.error.is_some())
        })
        .await
        .unwrap();
    assert_eq!(kept.installed_version.as_deref(), Some("1.1.0"));
    assert!(kept.error.unwrap().contains("would be a downgrade"));

    // Uninstall dropping the tables: they go; without: unregistered, the data kept.
    fleet.uninstall("acme", "helpdesk", true).await;
    fleet
        .until("acme", "helpdesk", "helpdesk removed", |r| r.is_none())
        .await;
    assert_eq!(
        fleet
            .count(
                "acme",
                "SELECT count(*) FROM sys_metadata WHERE source = 'app:helpdesk'"
            )
            .await,
        0
    );
    assert_eq!(
        fleet
            .count(
                "acme",
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'helpdesk_%' AND type = 'table'"
            )
            .await,
        0,
        "tables dropped"
    );
    fleet.uninstall("acme", "contacts", false).await;
    fleet
        .until("acme", "contacts", "contacts removed", |r| r.is_none())
        .await;
    assert_eq!(
        fleet
            .count("acme", "SELECT count(*) FROM contacts_person")
            .await,
        1,
        "tables kept"
    );
    assert_eq!(
        fleet
            .count("acme", "SELECT count(*) FROM sys_installed_app")
            .await,
        0
    );
    // Installed again, it picks its kept tables up with their rows (no seed twice).
    fleet
        .send("install", "acme", &app("contacts-1.0.0"), json!({}))
        .await;
    let again = fleet
        .until("acme", "contacts", "contacts back", active("1.0.0"))
        .await
        .unwrap();
    assert_eq!(again.result.unwrap().seeded_records, 0);
    assert_eq!(
        fleet
            .count("acme", "SELECT count(*) FROM contacts_person")
            .await,
        1
    );
    fleet
        .eventually(
            Duration::from_secs(30),
            "the uninstalls' hooks",
            async || fleet.hooks("hooks.app.uninstalled").await.len() == 2,
        )
        .await;
    let uninstalled = fleet.hooks("hooks.app.uninstalled").await;
    assert_eq!(uninstalled.len(), 2);
    assert_eq!(
        uninstalled[0]["data"]["droppedTables"],
        json!(["helpdesk_ticket", "helpdesk_ticket_comment"])
    );
    assert!(fleet.dead_letters().await.is_empty());
}

#[tokio::test]
async fn conflicts_quotas_platform_deploys_and_bad_input() {
    let mut fleet = Fleet::start().await;
    fleet.provision(&["beta", "tiny"], "enterprise").await;
    fleet.spawn_installer(&[]);

    // The platform deploys its CRM; then contacts installs beside it.
    fleet
        .publisher
        .publish_json(
            "deploy.requested",
            "crm-v1",
            &json!({"deploymentId": "crm-v1", "bundle": crm("v1"), "target": {"tenants": ["beta"]}, "rollout": {"waves": ["100%"]}}),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    fleet
        .eventually(Duration::from_secs(60), "crm deployed", async || {
            fleet
                .rows("beta", "SELECT count(*) FROM sys_deployment")
                .await[0][0]
                == Value::Integer(1)
        })
        .await;
    // An app whose object name the platform registered (`contact`): object_conflict, nothing
    // written. (Its tables could never be the platform's: an app's tables are `<app>_…`.)
    let thief = json!({
        "manifest": {"name": "crmclone", "label": "CRM clone", "version": "1.0.0", "objects": ["contact"]},
        "objects": [{"name": "contact", "namespace": "crmclone", "fields": {"name": {"type": "text"}}}]
    });
    fleet.send("install", "beta", &thief, json!({})).await;
    let refused = fleet
        .until("beta", "crmclone", "conflict with the platform", |r| {
            r.is_some_and(|r| r.status == InstallStatus::Failed)
        })
        .await
        .unwrap();
    let messages: Vec<String> = refused
        .check
        .unwrap()
        .issues
        .iter()
        .map(|i| {
            format!(
                "{}: {}",
                serde_json::to_value(i.category).unwrap().as_str().unwrap(),
                i.message
            )
        })
        .collect();
    assert_eq!(
        messages,
        ["object_conflict: object contact: the name is registered by the platform bundle"]
    );
    assert_eq!(
        fleet
            .count(
                "beta",
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'crmclone_%'"
            )
            .await,
        0
    );

    // An app beside the platform's objects; the platform's next deploy touches none of its.
    let notes = json!({
        "manifest": {"name": "notes", "label": "Notes", "version": "1.0.0", "objects": ["note"],
                     "seedData": [{"object": "note", "id": "n1", "body": "hello"}]},
        "objects": [{"name": "note", "namespace": "notes", "fields": {"body": {"type": "textarea"}, "pinned": {"type": "boolean"}}}]
    });
    fleet.send("install", "beta", &notes, json!({})).await;
    fleet
        .until("beta", "notes", "notes active", active("1.0.0"))
        .await;
    fleet
        .publisher
        .publish_json(
            "deploy.requested",
            "crm-v2",
            &json!({"deploymentId": "crm-v2", "bundle": crm("v2"), "target": {"tenants": ["beta"]}, "rollout": {"waves": ["100%"]}, "allowDestructive": true}),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    fleet
        .eventually(Duration::from_secs(60), "crm v2 deployed", async || {
            fleet
                .rows("beta", "SELECT count(*) FROM sys_deployment")
                .await[0][0]
                == Value::Integer(2)
        })
        .await;
    assert_eq!(
        fleet.rows("beta", "SELECT id, body FROM notes_note").await,
        vec![vec![text("n1"), text("hello")]]
    );
    assert_eq!(
        fleet
            .count(
                "beta",
                "SELECT count(*) FROM sys_metadata WHERE source = 'app:notes'"
            )
            .await,
        2,
        "the app's registrations stand"
    );

    // Against another app: a table the contacts app owns.
    fleet
        .send(
            "install",
            "tiny",
            &app("contacts-1.0.0"),
            json!({"skipSeedData": true}),
        )
        .await;
    let tiny = fleet
        .until("tiny", "contacts", "tiny active", active("1.0.0"))
        .await
        .unwrap();
    assert_eq!(tiny.result.unwrap().seeded_records, 0);
    let mut clone = app("contacts-1.0.0");
    clone["manifest"]["name"] = json!("contacts_clone");
    clone["manifest"]["seedData"] = json!([]);
    clone["objects"] = json!([{"name": "person", "tableName": "contacts_clone_person", "fields": {"name": {"type": "text"}}}]);
    clone["manifest"]["objects"] = json!(["person"]);
    fleet.send("install", "tiny", &clone, json!({})).await;
    let refused = fleet
        .until("tiny", "contacts_clone", "conflict with an app", |r| {
            r.is_some_and(|r| r.status == InstallStatus::Failed)
        })
        .await
        .unwrap();
    assert_eq!(
        refused.check.unwrap().issues[0].message,
        "object person: the name is registered by app contacts"
    );

    // A quota that blocks an install: 20 objects on the free plan.
    fleet.provision(&["free-one"], "free").await;
    let mut big = app("contacts-1.0.0");
    big["manifest"]["name"] = json!("big");
    big["manifest"]["seedData"] = json!([]);
    let objects: Vec<serde_json::Value> = (0..21)
        .map(|i| json!({"name": format!("thing_{i}"), "namespace": "big", "fields": {"label": {"type": "text"}}}))
        .collect();
    big["manifest"]["objects"] = json!((0..21).map(|i| format!("thing_{i}")).collect::<Vec<_>>());
    big["objects"] = json!(objects);
    fleet.send("install", "free-one", &big, json!({})).await;
    let over = fleet
        .until("free-one", "big", "quota refused", |r| {
            r.is_some_and(|r| r.status == InstallStatus::Failed)
        })
        .await
        .unwrap();
    let issue = &over.check.unwrap().issues[0];
    assert_eq!(
        serde_json::to_value(issue.category).unwrap(),
        "quota_exceeded"
    );
    assert_eq!(issue.message, "maxObjects would be exceeded (21 of 20)");
    // A platform deploy of as many objects is refused with the same enforcement result.
    let objects: Vec<serde_json::Value> = (0..21)
        .map(|i| json!({"name": format!("thing_{i}"), "fields": {"label": {"type": "text"}}}))
        .collect();
    let bundle = json!({"manifest": {"version": "1.0.0"}, "objects": objects});
    fleet
        .publisher
        .publish_json(
            "deploy.requested",
            "too-many",
            &json!({"deploymentId": "too-many", "bundle": bundle, "target": {"tenants": ["free-one"]}, "rollout": {"waves": ["100%"]}}),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    fleet
        .eventually(Duration::from_secs(60), "deploy refused", async || {
            !fleet.hooks("hooks.deploy.tenant_failed").await.is_empty()
        })
        .await;
    let failed = &fleet.hooks("hooks.deploy.tenant_failed").await[0];
    let error = failed["data"]["error"].as_str().unwrap();
    let json_start = error.find('{').unwrap();
    let result: fleet_protocol::QuotaEnforcementResult =
        serde_json::from_str(&error[json_start..]).unwrap();
    assert_eq!(
        result,
        fleet_tenants::quota::enforce("maxObjects", 21, std::num::NonZeroU64::new(20))
    );
    assert_eq!(result.message.as_deref(), Some(issue.message.as_str()));

    // Bad input is dead-lettered with its paths; the worker keeps running.
    let mut broken = app("contacts-1.0.0");
    broken["objects"][0]["fields"]["name"]["type"] = json!("no_such_type");
    fleet.send("install", "beta", &broken, json!({})).await;
    fleet
        .send("install", "nobody", &app("contacts-1.0.0"), json!({}))
        .await;
    let mut cyclic = app("contacts-1.0.0");
    cyclic["manifest"]["dependencies"] = json!(["contacts@^1"]);
    fleet.send("install", "beta", &cyclic, json!({})).await;
    fleet
        .eventually(Duration::from_secs(60), "three dead letters", async || {
            fleet.dead_letters().await.len() == 3
        })
        .await;
    let letters = fleet.dead_letters().await.join("\n");
    assert!(
        letters.contains("package.objects.organization.fields.name.type"),
        "{letters}"
    );
    assert!(letters.contains("unknown tenant nobody"), "{letters}");
    assert!(letters.contains("dependency_cycle"), "{letters}");
    // Still serving.
    fleet.uninstall("tiny", "contacts", true).await;
    fleet
        .until("tiny", "contacts", "tiny uninstalled", |r| r.is_none())
        .await;
}

#[tokio::test]
async fn an_installer_killed_after_the_transaction_ends_in_one_clean_install() {
    let mut fleet = Fleet::start().await;
    fleet.provision(&["crashy"], "enterprise").await;
    let doomed = fleet.spawn_installer(&[(fleet_tenantdb::crashpoint::ENV, "install.applied")]);
    fleet
        .send("install", "crashy", &app("contacts-1.0.0"), json!({}))
        .await;
    assert!(
        fleet
            .wait_exit(doomed, Duration::from_secs(60))
            .await
            .is_some(),
        "the installer crashed at its crash point"
    );
    assert!(
        fleet
            .log(doomed)
            .contains("crash point install.applied reached")
    );
    assert_eq!(
        fleet.record("crashy", "contacts").await.unwrap().status,
        InstallStatus::Installing
    );
    fleet.spawn_installer(&[]);
    fleet
        .until("crashy", "contacts", "contacts active", active("1.0.0"))
        .await;
    assert_eq!(
        fleet
            .count("crashy", "SELECT count(*) FROM contacts_person")
            .await,
        1,
        "seeded once"
    );
    fleet
        .eventually(Duration::from_secs(30), "one install hook", async || {
            fleet.hooks("hooks.app.installed").await.len() == 1
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fleet.hooks("hooks.app.installed").await.len(),
        1,
        "and only one"
    );
}

#[tokio::test]
async fn the_upstream_contract_is_served_by_the_same_per_tenant_code() {
    use fleet_protocol::contracts::AppLifecycleService;
    let fleet = Fleet::start().await;
    fleet.provision(&["svc"], "enterprise").await;
    let runtime = fleet_runtime::Runtime::connect(&fleet.config)
        .await
        .unwrap();
    let service = fleet_installer::AppLifecycle::new(fleet_control::TenantConnector::new(
        fleet_control::tenants(&runtime).await.unwrap(),
        fleet_tenantdb::backend_from_config(&fleet.config).unwrap(),
        std::sync::Arc::new(fleet_tenantdb::key_ring_from_config(&fleet.config).unwrap()),
    ));
    let package =
        |name: &str| -> fleet_protocol::AppPackage { serde_json::from_value(app(name)).unwrap() };
    for name in ["contacts-1.0.0", "helpdesk-1.0.0", "helpdesk-1.1.0"] {
        service.add_package(package(name));
    }
    let tenant = fleet_protocol::TenantId::parse("svc").unwrap();
    let helpdesk = package("helpdesk-1.0.0").manifest;
    let check = service
        .check_compatibility(&tenant, &helpdesk)
        .await
        .unwrap();
    assert!(!check.compatible);
    let installed = service
        .install_app(&tenant, &package("contacts-1.0.0").manifest, None)
        .await
        .unwrap();
    assert_eq!(installed.seeded_records, 2);
    service.install_app(&tenant, &helpdesk, None).await.unwrap();
    let upgraded = service
        .upgrade_app(&tenant, &package("helpdesk-1.1.0").manifest)
        .await
        .unwrap();
    assert_eq!(upgraded.created_tables, ["helpdesk_ticket_comment"]);
    let refused = service
        .uninstall_app(
            &tenant,
            &fleet_protocol::AppName::parse("contacts").unwrap(),
            true,
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("needed by helpdesk"),
        "{refused}"
    );
    let unknown = service
        .install_app(
            &fleet_protocol::TenantId::parse("ghost").unwrap(),
            &helpdesk,
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(
        unknown,
        fleet_protocol::contracts::ContractError::NotFound { kind: "tenant", .. }
    ));
}

/// Publishes an app rollout (`deploy.app_requested`) and waits until it stops running.
async fn app_rollout(
    fleet: &Fleet,
    id: &str,
    operation: &str,
    package: &serde_json::Value,
    rollout: serde_json::Value,
    skip_seed_data: bool,
) -> fleet_rollouts::Deployment {
    let request = json!({
        "deploymentId": id,
        "app": {"operation": operation, "package": package, "skipSeedData": skip_seed_data},
        "target": {"all": true},
        "rollout": rollout,
    });
    fleet
        .publisher
        .publish_json("deploy.app_requested", id, &request, HeaderMap::new())
        .await
        .unwrap();
    finished(fleet, id).await
}

async fn finished(fleet: &Fleet, id: &str) -> fleet_rollouts::Deployment {
    let runtime = fleet_runtime::Runtime::connect(&fleet.config)
        .await
        .unwrap();
    let deployments = fleet_control::deployments(&runtime).await.unwrap();
    let get = async || {
        deployments
            .get::<std::convert::Infallible>(id)
            .await
            .unwrap()
            .map(|v| v.state)
    };
    fleet
        .eventually(Duration::from_secs(60), "rollout stopped", async || {
            get()
                .await
                .is_some_and(|d| d.status != fleet_rollouts::RolloutStatus::Running)
        })
        .await;
    get().await.unwrap()
}

#[tokio::test]
async fn a_fleet_wide_upgrade_halted_by_failures_resumes_to_completion() {
    use fleet_rollouts::RolloutStatus;
    let mut fleet = Fleet::start().await;
    let tenants = ["a-1", "a-2", "a-3", "a-4"];
    fleet.provision(&tenants, "enterprise").await;
    fleet.spawn_installer(&[]);

    // Installed everywhere in waves (without seed data).
    let installed = app_rollout(
        &fleet,
        "contacts-everywhere",
        "install",
        &app("contacts-1.0.0"),
        json!({"waves": ["1", "100%"]}),
        true,
    )
    .await;
    assert_eq!(installed.status, RolloutStatus::Completed, "{installed:?}");
    assert_eq!(installed.app.as_deref(), Some("contacts"));
    for t in tenants {
        assert_eq!(
            fleet
                .record(t, "contacts")
                .await
                .unwrap()
                .installed_version
                .as_deref(),
            Some("1.0.0")
        );
    }

    // 1.2.0 makes `phone` required without a default: refused where people have no phone.
    let mut strict = app("contacts-1.1.0");
    strict["manifest"]["version"] = json!("1.2.0");
    strict["objects"][1]["fields"]["phone"] = json!({"type": "phone", "required": true});
    strict["manifest"]["seedData"] = json!([]);
    for t in ["a-1", "a-3"] {
        let conn = fleet_schema::open_local(&fleet.db_file(t)).await.unwrap();
        conn.execute(
            "INSERT INTO contacts_person (id, first_name, last_name) VALUES ('p1', 'Ada', 'L')",
            (),
        )
        .await
        .unwrap();
    }
    // A dry run plans every tenant and changes nothing.
    let dry = app_rollout(
        &fleet,
        "contacts-1-2-dry",
        "upgrade",
        &strict,
        json!({"waves": ["100%"], "dryRun": true}),
        false,
    )
    .await;
    // It sees what the real run will meet: two tenants whose people have no phone.
    assert_eq!(
        (dry.status, dry.tally.ready, dry.tally.failed),
        (RolloutStatus::Halted, 2, 2),
        "{dry:?}"
    );
    assert_eq!(
        fleet
            .record("a-2", "contacts")
            .await
            .unwrap()
            .installed_version
            .as_deref(),
        Some("1.0.0")
    );

    let halted = app_rollout(
        &fleet,
        "contacts-1-2",
        "upgrade",
        &strict,
        json!({"waves": ["1", "100%"], "maxFailureRatio": 0.0}),
        false,
    )
    .await;
    assert_eq!(halted.status, RolloutStatus::Halted, "{halted:?}");
    assert_eq!((halted.tally.ready, halted.tally.failed), (0, 1));
    let refused = fleet.record("a-1", "contacts").await.unwrap();
    assert_eq!(refused.installed_version.as_deref(), Some("1.0.0"));
    assert!(
        refused
            .error
            .as_deref()
            .unwrap()
            .contains("contacts_person.phone: a new required field without a defaultValue"),
        "{refused:?}"
    );
    assert_eq!(
        fleet
            .record("a-2", "contacts")
            .await
            .unwrap()
            .installed_version
            .as_deref(),
        Some("1.0.0"),
        "the next wave never started"
    );

    // The data fixed (the rows moved elsewhere), the rollout resumed: the failed tenant
    // retried, the rest upgraded.
    for t in ["a-1", "a-3"] {
        let conn = fleet_schema::open_local(&fleet.db_file(t)).await.unwrap();
        conn.execute("DELETE FROM contacts_person", ())
            .await
            .unwrap();
    }
    fleet
        .publisher
        .publish_json(
            "deploy.control.contacts-1-2",
            "resume-contacts-1-2",
            &json!({"deploymentId": "contacts-1-2", "action": "resume"}),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    fleet
        .eventually(
            Duration::from_secs(60),
            "resumed rollout completed",
            async || {
                let mut upgraded = 0;
                for t in tenants {
                    if fleet
                        .record(t, "contacts")
                        .await
                        .is_some_and(|r| r.installed_version.as_deref() == Some("1.2.0"))
                    {
                        upgraded += 1;
                    }
                }
                upgraded == tenants.len()
            },
        )
        .await;
    let done = finished(&fleet, "contacts-1-2").await;
    assert_eq!(done.status, RolloutStatus::Completed, "{done:?}");
    assert_eq!(fleet.hooks("hooks.app.upgraded").await.len(), 4);
}
