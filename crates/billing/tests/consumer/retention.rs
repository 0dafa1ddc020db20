//! Payload retention, and backup / restore with the project's scripts.

use std::time::Duration;

use tollgate_billing::retention::drop_old_payloads;
use tollgate_test_support::TestDatabase;

use crate::helpers::*;
use crate::subscriptions::{T0, deliver, settle, subscription_event};

async fn insert_event(billing: &TestBilling, id: &str, status: &str, days_ago: i32) {
    sqlx::query(
        "INSERT INTO stripe_events (id, type, created, livemode, payload, status, received_at)
         VALUES ($1, 'invoice.paid', 1, false, '{\"id\": 1}', $2, now() - make_interval(days => $3))",
    )
    .bind(id)
    .bind(status)
    .bind(days_ago)
    .execute(&billing.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_payloads_are_dropped_and_their_summary_rows_kept() {
    let mut billing = spawn_billing(Options::default()).await;
    billing.stop().await;
    insert_event(&billing, "evt_old", "processed", 100).await;
    insert_event(&billing, "evt_old_failed", "failed", 100).await;
    insert_event(&billing, "evt_recent", "processed", 5).await;

    let cleared = drop_old_payloads(&billing.pool, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(cleared, 1);
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT id, payload IS NOT NULL FROM stripe_events ORDER BY id")
            .fetch_all(&billing.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("evt_old".into(), false),
            ("evt_old_failed".into(), true), // still needed to retry or review
            ("evt_recent".into(), true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_an_empty_database() {
    let mut billing = spawn_billing(Options::default()).await;
    deliver(
        &billing,
        &[subscription_event(
            "customer.subscription.created",
            T0,
            "sub_bk",
            "cus_bk",
            "active",
            "price_pro_monthly",
        )],
    )
    .await;
    settle(&billing, 1).await;
    billing.stop().await;

    let scripts = format!(
        "{}/scripts",
        tollgate_test_support::workspace_root().display()
    );
    let dump = std::env::temp_dir().join(format!(
        "tollgate-test-{}.dump",
        uuid::Uuid::new_v4().simple()
    ));
    let backup = tokio::process::Command::new("bash")
        .arg(format!("{scripts}/backup.sh"))
        .arg(&dump)
        .env("DATABASE_URL", billing.database_url())
        .output()
        .await
        .unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );

    let target = TestDatabase::create().await;
    let restore = tokio::process::Command::new("bash")
        .arg(format!("{scripts}/restore.sh"))
        .arg(&dump)
        .env("DATABASE_URL", target.url())
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&dump);
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );

    let restored = target.pool().await;
    let access: (String, Option<String>) = sqlx::query_as(
        "SELECT access_status, tier FROM customers WHERE stripe_customer_id = 'cus_bk'",
    )
    .fetch_one(&restored)
    .await
    .unwrap();
    assert_eq!(access, ("active".into(), Some("pro".into())));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&restored)
        .await
        .unwrap();
    assert_eq!(events, 1);
    restored.close().await;
}
