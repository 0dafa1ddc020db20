//! `backfill`: every customer and subscription Stripe lists, fed to the webhook handlers as
//! snapshots keyed by the listing's time.

use tollgate_test_support::{Reply, subscription_object, unix_now};

use crate::helpers::*;

#[tokio::test]
async fn backfill_repairs_missing_and_stale_state_audits_it_and_changes_nothing_the_second_time() {
    let h = Harness::start().await;
    // b1: unknown to billing (its webhooks were lost). b2: a stale past_due row from an old
    // event. b3: a row from an event newer than the listing (the gate keeps it).
    h.linked_customer("cus_b2", "user_b2").await;
    h.stored_subscription("sub_b2", "cus_b2", "past_due", "price_pro_monthly")
        .await;
    h.linked_customer("cus_b3", "user_b3").await;
    h.stored_subscription("sub_b3", "cus_b3", "active", "price_pro_monthly")
        .await;
    sqlx::query(
        "UPDATE subscriptions SET snapshot_created = $1, snapshot_event_id = 'evt_future'
          WHERE stripe_subscription_id = 'sub_b3'",
    )
    .bind(unix_now() + 3_600)
    .execute(&h.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE customers SET access_status = 'active', tier = 'pro' WHERE stripe_customer_id = 'cus_b3'")
        .execute(&h.pool)
        .await
        .unwrap();

    h.stand_in.put_list(
        "customers",
        vec![
            customer_object("cus_b1", Some("user_b1"), "b1@example.test", 1_700_000_003),
            customer_object("cus_b2", None, "b2@example.test", 1_700_000_002),
            customer_object("cus_b3", None, "b3@example.test", 1_700_000_001),
        ],
    );
    let listed = |id: &str, customer: &str, status: &str, price: &str, created: i64| {
        let mut s = subscription_object(id, customer, status, price);
        s["created"] = created.into();
        if status == "canceled" {
            s["canceled_at"] = (created + 100).into();
            s["ended_at"] = (created + 100).into();
        }
        s
    };
    h.stand_in.put_list(
        "subscriptions",
        vec![
            listed(
                "sub_b1",
                "cus_b1",
                "active",
                "price_pro_monthly",
                1_700_000_040,
            ),
            listed(
                "sub_b2",
                "cus_b2",
                "active",
                "price_pro_plus_monthly",
                1_700_000_030,
            ),
            listed(
                "sub_b3",
                "cus_b3",
                "canceled",
                "price_pro_monthly",
                1_700_000_020,
            ),
            // Canceled long ago: listed only with status=all.
            listed(
                "sub_b4",
                "cus_b2",
                "canceled",
                "price_pro_monthly",
                1_700_000_010,
            ),
        ],
    );
    h.stand_in
        .reply_once("GET", "/v1/customers", Reply::rate_limited());
    h.stand_in
        .reply_once("GET", "/v1/subscriptions", Reply::rate_limited());

    let report = reconciler(&h, 2).backfill().await.unwrap();
    assert_eq!((report.customers.listed, report.customers.pages), (3, 2));
    assert_eq!(
        (report.subscriptions.listed, report.subscriptions.pages),
        (4, 2)
    );
    assert_eq!(report.customers.counts.applied, 3);
    assert_eq!(report.subscriptions.counts.applied, 4);

    // Every page asked for all statuses, 2 at a time, paging with starting_after.
    let pages = h.stand_in.requests_to("GET", "/v1/subscriptions");
    assert_eq!(pages.len(), 3, "one 429, then two pages");
    pages.iter().for_each(assert_stripe_headers);
    for page in &pages {
        assert_eq!(page.query_value("status").as_deref(), Some("all"));
        assert_eq!(page.query_value("limit").as_deref(), Some("2"));
    }
    assert_eq!(
        pages[2].query_value("starting_after").as_deref(),
        Some("sub_b2")
    );

    // b1: created, linked from the customer's metadata, granted.
    let b1: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM customers WHERE stripe_customer_id = 'cus_b1'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(b1.as_deref(), Some("user_b1"));
    assert_eq!(
        access(&h.pool, "cus_b1").await,
        ("active".into(), Some("pro".into()))
    );
    // b2: the stale row replaced, the old canceled one stored, its cancellation recorded.
    assert_eq!(
        access(&h.pool, "cus_b2").await,
        ("active".into(), Some("pro_plus".into()))
    );
    let b4: String = sqlx::query_scalar(
        "SELECT status FROM subscriptions WHERE stripe_subscription_id = 'sub_b4'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(b4, "canceled");
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM transactions WHERE kind = 'cancel' AND stripe_object_id = 'sub_b4'"
        )
        .await,
        1
    );
    // b3: the newer row stays.
    let b3: (String, String) = sqlx::query_as(
        "SELECT status, snapshot_event_id FROM subscriptions WHERE stripe_subscription_id = 'sub_b3'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(b3, ("active".into(), "evt_future".into()));

    let audit = audit_sources(&h.pool).await;
    assert!(audit.len() >= 2);
    assert!(
        audit
            .iter()
            .all(|(source, _, _)| source == "reconciliation"),
        "{audit:?}"
    );
    assert!(audit.contains(&("reconciliation".into(), "active".into(), "pro_plus".into())));

    // Again: the same objects are the same snapshots, already in the ledger.
    let events = count(&h.pool, "SELECT count(*) FROM stripe_events").await;
    let updated: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT stripe_subscription_id, updated_at FROM subscriptions ORDER BY 1")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    let again = reconciler(&h, 2).backfill().await.unwrap();
    assert_eq!(again.customers.counts.applied, 0);
    assert_eq!(again.subscriptions.counts.applied, 0);
    assert_eq!(again.subscriptions.counts.known, 4);
    assert_eq!(
        count(&h.pool, "SELECT count(*) FROM stripe_events").await,
        events
    );
    assert_eq!(audit_sources(&h.pool).await, audit);
    let updated_again: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT stripe_subscription_id, updated_at FROM subscriptions ORDER BY 1")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(updated_again, updated, "no row was written");
    let printed = again.to_string();
    assert!(
        printed.contains("subscriptions (every status)"),
        "{printed}"
    );
}

#[tokio::test]
async fn only_one_run_at_a_time() {
    let h = Harness::start().await;
    h.stand_in.put_list("customers", Vec::new());
    h.stand_in.put_list("subscriptions", Vec::new());
    // A slow first page keeps the first run busy while the second starts.
    h.stand_in.reply_once(
        "GET",
        "/v1/customers",
        Reply::object(&serde_json::json!({ "object": "list", "data": [], "has_more": false }))
            .delayed(std::time::Duration::from_millis(500)),
    );
    let first = reconciler(&h, 10);
    let second = reconciler(&h, 10);
    let (a, b) = tokio::join!(first.backfill(), async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        second.backfill().await
    });
    assert!(a.is_ok());
    let refused = b.unwrap_err();
    assert!(
        matches!(
            refused,
            tollgate_billing::reconcile::ReconcileError::AlreadyRunning("backfill")
        ),
        "{refused}"
    );
    // Released afterwards.
    reconciler(&h, 10).backfill().await.unwrap();
}
