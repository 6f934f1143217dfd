//! `fleet-client`'s `AppLifecycleService` against a real nats-server, the real installer binary
//! and the deployer (for the compatibility check's dry run): check, install, bad config,
//! upgrade, uninstall, and the refusals.

use std::path::Path;
use std::time::Duration;

use fleet_client::{DirectoryCatalog, FleetClient};
use fleet_protocol::contracts::{AppLifecycleService, ContractError};
use fleet_protocol::{AppManifest, AppName, TenantId};

use crate::{Fleet, app};

fn manifest(name: &str) -> AppManifest {
    serde_json::from_value(app(name)["manifest"].clone()).unwrap()
}

#[tokio::test]
async fn apps_through_the_client_check_install_upgrade_and_uninstall() {
    let mut fleet = Fleet::start().await;
    fleet.provision(&["acme"], "enterprise").await;
    fleet.spawn_installer(&[]);
    let catalog =
        DirectoryCatalog::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps"));
    let client = FleetClient::connect(&fleet.config)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(60))
        .with_catalog(catalog);
    let acme = TenantId::parse("acme").unwrap();

    // helpdesk needs contacts: the check says so, with the issue, and changes nothing.
    let check = client
        .check_compatibility(&acme, &manifest("helpdesk-1.0.0"))
        .await
        .unwrap();
    assert!(!check.compatible, "{check:?}");
    assert!(
        check.issues.iter().any(|i| i.message.contains("contacts")),
        "{check:?}"
    );
    let check = client
        .check_compatibility(&acme, &manifest("contacts-1.0.0"))
        .await
        .unwrap();
    assert!(check.compatible, "{check:?}");
    assert!(
        fleet.record("acme", "contacts").await.is_none(),
        "a check installs nothing"
    );

    // An unknown install option is invalid input, with its path; nothing is sent.
    let config = serde_json::json!({"colour": "blue"}).as_object().cloned();
    match client
        .install_app(&acme, &manifest("contacts-1.0.0"), config)
        .await
    {
        Err(ContractError::Invalid(rejected)) => assert!(
            rejected.issues.iter().any(|i| i.path == "config.colour"),
            "{rejected:?}"
        ),
        other => panic!("expected the issues, got {other:?}"),
    }

    let installed = client
        .install_app(&acme, &manifest("contacts-1.0.0"), None)
        .await
        .unwrap();
    assert!(installed.success, "{installed:?}");
    assert_eq!(installed.version, "1.0.0");
    assert_eq!(installed.seeded_records, 2);
    assert_eq!(
        fleet
            .count("acme", "SELECT count(*) FROM contacts_person")
            .await,
        1
    );
    // Installing the same version again is a reinstall: nothing new, the seed not repeated.
    let again = client
        .install_app(&acme, &manifest("contacts-1.0.0"), None)
        .await
        .unwrap();
    assert!(
        again.success && again.created_tables.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.seeded_records, 0);
    assert_eq!(
        fleet
            .count("acme", "SELECT count(*) FROM contacts_person")
            .await,
        1
    );

    let upgraded = client
        .upgrade_app(&acme, &manifest("contacts-1.1.0"))
        .await
        .unwrap();
    assert!(upgraded.success, "{upgraded:?}");
    assert_eq!(
        fleet
            .record("acme", "contacts")
            .await
            .unwrap()
            .installed_version
            .as_deref(),
        Some("1.1.0")
    );

    // A manifest the catalog does not hold.
    let mut unknown = manifest("contacts-1.1.0");
    unknown.version = "9.9.9".into();
    assert!(matches!(
        client.upgrade_app(&acme, &unknown).await,
        Err(ContractError::NotFound { .. })
    ));

    let contacts = AppName::parse("contacts").unwrap();
    client.uninstall_app(&acme, &contacts, true).await.unwrap();
    assert!(fleet.record("acme", "contacts").await.is_none());
    assert_eq!(
        fleet
            .count(
                "acme",
                "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'contacts_%'"
            )
            .await,
        0,
        "its tables dropped"
    );
    // Not installed any more: refused with the reason.
    assert!(matches!(
        client.uninstall_app(&acme, &contacts, false).await,
        Err(ContractError::IllegalState(_))
    ));
    // Installed again after the uninstall: a new command (not a duplicate of the first
    // install's), answered by the new record, not by the deletion.
    let again = client
        .install_app(&acme, &manifest("contacts-1.0.0"), None)
        .await
        .unwrap();
    assert!(again.success, "{again:?}");
    assert_eq!(
        fleet
            .record("acme", "contacts")
            .await
            .unwrap()
            .installed_version
            .as_deref(),
        Some("1.0.0")
    );
    // An unknown tenant.
    assert!(matches!(
        client
            .install_app(
                &TenantId::parse("nobody").unwrap(),
                &manifest("contacts-1.0.0"),
                None
            )
            .await,
        Err(ContractError::NotFound { .. })
    ));
    assert!(fleet.dead_letters().await.is_empty());
}
