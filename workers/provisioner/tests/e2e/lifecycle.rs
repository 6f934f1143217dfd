//! Suspend, resume, delete — and bad input, which never half-creates anything.

use std::time::Duration;

use serde_json::json;

use crate::{Fleet, IMMEDIATE_DELETE};

#[tokio::test]
async fn suspend_resume_and_delete_with_their_hooks() {
    let mut fleet = Fleet::start(IMMEDIATE_DELETE).await;
    fleet.spawn_worker(&[]);
    fleet.register("acme", "acme", json!({})).await;
    fleet
        .eventually(Duration::from_secs(30), "active", async || {
            fleet.status("acme").await == "active"
        })
        .await;
    let active_connection = fleet.record("acme").await.unwrap().connection;

    fleet
        .command(
            "tenant.suspended",
            json!({"tenantId": "acme", "reason": "billing"}),
            "s1",
        )
        .await;
    fleet
        .eventually(Duration::from_secs(30), "suspended", async || {
            fleet.status("acme").await == "suspended"
        })
        .await;
    let suspended = fleet.record("acme").await.unwrap();
    assert_ne!(
        suspended.connection, active_connection,
        "tokens were revoked; a read-only one is stored"
    );
    let tokens = fleet.tokens("acme");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["scope"], "read-only");
    fleet
        .eventually(Duration::from_secs(10), "suspended hook", async || {
            fleet.hooks("hooks.tenant.suspended").await.len() == 1
        })
        .await;
    assert_eq!(
        fleet.hooks("hooks.tenant.suspended").await[0]["data"]["reason"],
        "billing"
    );

    fleet
        .command("tenant.resumed", json!({"tenantId": "acme"}), "r1")
        .await;
    fleet
        .eventually(Duration::from_secs(30), "active again", async || {
            fleet.status("acme").await == "active"
        })
        .await;
    assert_eq!(fleet.tokens("acme")[0]["scope"], "full-access");
    fleet
        .eventually(Duration::from_secs(10), "resumed hook", async || {
            fleet.hooks("hooks.tenant.resumed").await.len() == 1
        })
        .await;

    fleet
        .command(
            "tenant.plan_changed",
            json!({"tenantId": "acme", "plan": "enterprise"}),
            "p1",
        )
        .await;
    fleet
        .eventually(Duration::from_secs(30), "plan", async || {
            fleet
                .record("acme")
                .await
                .is_some_and(|r| format!("{:?}", r.plan) == "Enterprise")
        })
        .await;

    fleet
        .command("tenant.deleted", json!({"tenantId": "acme"}), "d1")
        .await;
    fleet
        .eventually(Duration::from_secs(30), "deleted", async || {
            fleet.status("acme").await == "deleted"
        })
        .await;
    assert!(!fleet.db_file("acme").exists(), "the database is gone");
    let record = fleet.record("acme").await.unwrap();
    let backup = record.backup().expect("a backup was kept");
    assert!(std::path::Path::new(&backup).exists(), "{backup}");
    fleet
        .eventually(Duration::from_secs(10), "deleted hook", async || {
            fleet.hooks("hooks.tenant.deleted").await.len() == 1
        })
        .await;
    assert!(fleet.dead_letters().await.is_empty());
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_a_clear_reason_and_nothing_half_created() {
    let mut fleet = Fleet::start("").await;
    fleet.spawn_worker(&[]);
    fleet
        .command("tenant.suspended", json!({"tenantId": "nobody"}), "bad-1")
        .await;
    fleet
        .command(
            "tenant.created",
            json!({"tenantId": "ok-but", "plan": 7}),
            "bad-2",
        )
        .await;
    fleet
        .command(
            "tenant.created",
            json!({"tenantId": "../etc", "orgId": "o"}),
            "bad-3",
        )
        .await;
    fleet.register("acme", "acme", json!({})).await;
    fleet
        .eventually(Duration::from_secs(30), "active", async || {
            fleet.status("acme").await == "active"
        })
        .await;
    fleet
        .register("acme", "acme-other", json!({"region": "us-east"}))
        .await;
    fleet
        .register("far", "far", json!({"region": "ap-southeast"}))
        .await;
    fleet
        .eventually(Duration::from_secs(30), "five dead letters", async || {
            fleet.dead_letters().await.len() == 5
        })
        .await;
    let letters = fleet.dead_letters().await;
    let reason = |id: &str| {
        letters
            .iter()
            .find(|l| l.headers.get("Nats-Msg-Id") == Some(&vec![id.to_owned()]))
            .map(|l| l.error.clone())
            .unwrap()
    };
    assert!(
        reason("bad-1").contains("unknown tenant nobody"),
        "{}",
        reason("bad-1")
    );
    assert!(
        reason("bad-2").contains("orgId") && reason("bad-2").contains("plan"),
        "{}",
        reason("bad-2")
    );
    assert!(reason("bad-3").contains("tenantId"), "{}", reason("bad-3"));
    assert!(
        reason("acme-other").contains("different settings"),
        "{}",
        reason("acme-other")
    );
    assert!(reason("far").contains("ap-southeast"), "{}", reason("far"));
    // Nothing half-created: no database for the bad ones; the conflicting create changed nothing.
    assert!(fleet.record("nobody").await.is_none() && fleet.record("ok-but").await.is_none());
    assert_eq!(
        fleet.record("acme").await.unwrap().region.to_string(),
        "eu-west"
    );
    assert_eq!(fleet.status("far").await, "failed");
    assert!(!fleet.db_file("far").exists());
    assert_eq!(fleet.hooks("hooks.tenant.failed").await.len(), 1);
}

#[tokio::test]
async fn the_router_reaches_a_provisioned_tenant_and_refuses_it_once_suspended() {
    use std::sync::Arc;

    use fleet_tenantdb::{LocalBackend, Router, RouterError, RouterSettings};
    use secrecy::SecretString;

    let mut fleet = Fleet::start("").await;
    fleet.spawn_worker(&[]);
    fleet.register("acme", "acme", json!({})).await;
    fleet
        .eventually(Duration::from_secs(30), "active", async || {
            fleet.status("acme").await == "active"
        })
        .await;

    let key = SecretString::from("ZTJlLXRlc3Qta2V5LW5vdC1mb3ItcHJvZHVjdGlvbiE=".to_owned());
    let keys = Arc::new(fleet_tenantdb::KeyRing::new("e2e", [("e2e", &key)]).unwrap());
    let directory = Arc::new(fleet_control::KvTenantDirectory::new(fleet.tenants.clone()));
    let backend = Arc::new(LocalBackend::new(fleet.data_dir(), ""));
    let router = Router::new(RouterSettings::default(), directory, backend, keys);
    let acme = crate::tenant("acme");
    let connection = router.connect(&acme).await.unwrap();
    let mut rows = connection
        .conn
        .query("SELECT email, role FROM sys_user", ())
        .await
        .unwrap();
    let row = rows.next().await.unwrap().unwrap();
    assert_eq!(
        (row.get::<String>(0).unwrap(), row.get::<String>(1).unwrap()),
        ("ops@acme.example".to_owned(), "admin".to_owned())
    );
    drop(rows);

    fleet
        .command("tenant.suspended", json!({"tenantId": "acme"}), "s1")
        .await;
    fleet
        .eventually(Duration::from_secs(30), "suspended", async || {
            fleet.status("acme").await == "suspended"
        })
        .await;
    router.invalidate(&acme).await;
    assert!(matches!(
        router.connect(&acme).await,
        Err(RouterError::Suspended(_))
    ));
    assert!(matches!(
        router.connect(&crate::tenant("nobody")).await,
        Err(RouterError::UnknownTenant(_))
    ));
}

#[tokio::test]
async fn oversized_commands_are_refused_at_the_boundary_with_a_clear_reason() {
    let mut fleet = Fleet::start("").await;
    fleet.spawn_worker(&[]);
    // 600 KB: refused by the tenant stream when published, so it can never sit in the work
    // stream undead-letterable; the publisher hears why.
    let huge = "x".repeat(600 * 1024);
    for subject in ["tenant.created", "tenant.suspended", "tenant.deleted"] {
        let payload = json!({"tenantId": "acme", "orgId": "o", "reason": huge});
        let err = fleet
            .publisher
            .publish_json(subject, subject, &payload, async_nats::HeaderMap::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("maximum"),
            "{subject}: {err}"
        );
    }
    // Under the stream's limit but over a field's: dead-lettered with the path and the bound;
    // no tenant record, no database.
    fleet
        .register(
            "acme",
            "long-name",
            json!({"displayName": "x".repeat(60_000)}),
        )
        .await;
    fleet
        .eventually(Duration::from_secs(30), "dead-lettered", async || {
            fleet.dead_letters().await.len() == 1
        })
        .await;
    let letter = &fleet.dead_letters().await[0];
    assert!(
        letter.error.contains("displayName")
            && letter.error.contains("60000 characters; at most 256"),
        "{}",
        letter.error
    );
    assert!(fleet.record("acme").await.is_none());
    assert!(fleet.database_files().is_empty());
}
