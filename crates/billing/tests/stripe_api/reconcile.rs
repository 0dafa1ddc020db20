//! `reconcile`: the events webhooks missed, applied once through the webhook path, from a
//! cursor that only moves forward after they are applied.

use serde_json::{Value, json};
use tollgate_billing::process;
use tollgate_billing::reconcile::{Reconciler, Start};
use tollgate_stripe::Refetcher;
use tollgate_test_support::{Reply, invoice_object, stripe_object, subscription_object, unix_now};

use crate::helpers::*;

/// The cursor of each stream, by stream name order.
async fn cursors(h: &Harness) -> Vec<(String, String)> {
    sqlx::query_as("SELECT stream, event_id FROM reconcile_cursors ORDER BY stream")
        .fetch_all(&h.pool)
        .await
        .unwrap()
}

fn subscription_event(
    id: &str,
    event_type: &str,
    created: i64,
    status: &str,
    price: &str,
) -> Value {
    stripe_event(
        id,
        event_type,
        created,
        subscription_object("sub_r", "cus_r", status, price),
        None,
    )
}

#[tokio::test]
async fn missed_events_are_applied_once_the_cursor_advances_and_a_second_run_is_a_no_op() {
    let h = Harness::start().await;
    h.linked_customer("cus_r", "user_r").await;
    let base = unix_now() - 3_600;
    let created = subscription_event(
        "evt_r1",
        "customer.subscription.created",
        base,
        "active",
        "price_pro_monthly",
    );
    let paid = stripe_event(
        "evt_r2",
        "invoice.paid",
        base + 1,
        invoice_object("in_r1", "cus_r", "sub_r", "paid", base + 1),
        None,
    );
    let upgraded = stripe_event(
        "evt_r3",
        "customer.subscription.updated",
        base + 2,
        subscription_object("sub_r", "cus_r", "active", "price_pro_plus_monthly"),
        Some(json!({ "items": { "data": [ { "price": { "id": "price_pro_monthly" } } ] } })),
    );
    // Delivered by its webhook already (and in the second group of types).
    let succeeded = stripe_event(
        "evt_r4",
        "invoice.payment_succeeded",
        base + 1,
        invoice_object("in_r1", "cus_r", "sub_r", "paid", base + 1),
        None,
    );
    // A type billing does not handle: never asked for.
    let unrelated = stripe_event(
        "evt_r5",
        "charge.succeeded",
        base + 3,
        stripe_object("charge"),
        None,
    );
    h.stand_in.put_list(
        "events",
        vec![
            created.clone(),
            paid,
            upgraded,
            succeeded.clone(),
            unrelated,
        ],
    );
    let decoded = process::decode(&serde_json::to_vec(&succeeded).unwrap()).unwrap();
    process::apply(&h.pool, &h.plans, &Refetcher::disabled(), &decoded, 1)
        .await
        .unwrap();
    let audit_before = audit_sources(&h.pool).await;
    assert!(
        audit_before
            .iter()
            .all(|(source, _, _)| source == "stripe_webhook")
    );

    let report = reconciler(&h, 2).reconcile().await.unwrap();
    assert_eq!(report.streams.len(), 2);
    assert!(report.streams.iter().all(|s| s.start == Start::NoCursor));
    let counts = report.counts();
    assert_eq!((counts.applied, counts.known), (3, 1), "{report}");
    assert!(counts.dead_lettered.is_empty());
    assert!(!report.events_may_be_lost());
    assert!(
        report.to_string().contains("Stripe keeps 30 days"),
        "{report}"
    );

    // Applied through the webhook path: the ledger, the snapshot gate, the history.
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM stripe_events WHERE status = 'processed'"
        )
        .await,
        4
    );
    let stored: (String, String) = sqlx::query_as(
        "SELECT status, price_id FROM subscriptions WHERE stripe_subscription_id = 'sub_r'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(stored, ("active".into(), "price_pro_plus_monthly".into()));
    assert_eq!(
        access(&h.pool, "cus_r").await,
        ("active".into(), Some("pro_plus".into()))
    );
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM transactions WHERE kind = 'upgrade'"
        )
        .await,
        1
    );
    // Changes reconcile caused are audited as such; the webhook's stay the webhook's.
    let audit = audit_sources(&h.pool).await;
    assert_eq!(audit[..audit_before.len()], audit_before[..]);
    let new: Vec<_> = audit[audit_before.len()..].to_vec();
    assert!(!new.is_empty());
    assert!(
        new.iter().all(|(source, _, _)| source == "reconciliation"),
        "{new:?}"
    );
    assert_eq!(
        new.last().unwrap(),
        &("reconciliation".into(), "active".into(), "pro_plus".into())
    );

    // Each group asked for its types only; the cursors are the newest of each group.
    let requests = h.stand_in.requests_to("GET", "/v1/events");
    requests.iter().for_each(assert_stripe_headers);
    let first = &requests[0];
    assert_eq!(first.query_value("limit").as_deref(), Some("2"));
    assert_eq!(
        first.query_value("types[0]").as_deref(),
        Some("charge.dispute.closed")
    );
    assert!(first.query_value("types[20]").is_none(), "at most 20 types");
    assert_eq!(first.query_value("ending_before"), None);
    let mut expected: Vec<String> = vec!["evt_r3".into(), "evt_r4".into()];
    let mut stored: Vec<String> = cursors(&h).await.into_iter().map(|(_, id)| id).collect();
    expected.sort();
    stored.sort();
    assert_eq!(stored, expected);

    // Again: nothing new, nothing changed, one request per group from its cursor.
    let before = h.stand_in.requests().len();
    let events_before = count(&h.pool, "SELECT count(*) FROM stripe_events").await;
    let again = reconciler(&h, 2).reconcile().await.unwrap();
    assert_eq!(again.counts().applied, 0);
    assert_eq!(again.counts().known, 0);
    assert!(matches!(again.streams[0].start, Start::Cursor { .. }));
    let requests = h.stand_in.requests();
    assert_eq!(requests.len() - before, 2);
    for request in &requests[before..] {
        assert!(request.query_value("ending_before").is_some());
    }
    assert_eq!(
        count(&h.pool, "SELECT count(*) FROM stripe_events").await,
        events_before
    );
    assert_eq!(audit_sources(&h.pool).await, audit);

    // A new event after the cursor: applied, and the cursor follows.
    let mut canceled = subscription_object("sub_r", "cus_r", "canceled", "price_pro_plus_monthly");
    canceled["ended_at"] = (base + 20).into();
    h.stand_in.push_to_list(
        "events",
        stripe_event(
            "evt_r6",
            "customer.subscription.deleted",
            base + 20,
            canceled,
            None,
        ),
    );
    let third = reconciler(&h, 2).reconcile().await.unwrap();
    assert_eq!(third.counts().applied, 1);
    assert_eq!(
        access(&h.pool, "cus_r").await,
        ("canceled".into(), Some("free".into()))
    );
    assert!(cursors(&h).await.iter().any(|(_, id)| id == "evt_r6"));
    assert_eq!(
        audit_sources(&h.pool).await.last().unwrap(),
        &("reconciliation".into(), "canceled".into(), "free".into())
    );
}

#[tokio::test]
async fn pages_are_walked_in_both_directions_through_429s() {
    let h = Harness::start().await;
    h.linked_customer("cus_p", "user_p").await;
    let base = unix_now() - 7_200;
    let customer_event = |i: i64| {
        stripe_event(
            &format!("evt_p{i:02}"),
            "customer.updated",
            base + i,
            customer_object("cus_p", Some("user_p"), &format!("p{i}@example.test"), base),
            None,
        )
    };
    h.stand_in
        .put_list("events", (1..=7).map(customer_event).collect());
    h.stand_in
        .reply_once("GET", "/v1/events", Reply::rate_limited());
    h.stand_in
        .reply_once("GET", "/v1/events", Reply::rate_limited());

    let report = reconciler(&h, 3).reconcile().await.unwrap();
    let customers = &report.streams[0];
    assert_eq!((customers.listed, customers.counts.applied), (7, 7));
    assert_eq!(customers.pages, 3, "3 + 3 + 1");
    assert_eq!(customers.cursor.as_deref(), Some("evt_p07"));
    let email: String =
        sqlx::query_scalar("SELECT email FROM customers WHERE stripe_customer_id = 'cus_p'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        email, "p7@example.test",
        "the newest snapshot wins whatever the order"
    );

    // Seven more: walked forward from the cursor, oldest page first.
    for i in 8..=14 {
        h.stand_in.push_to_list("events", customer_event(i));
    }
    let before = h.stand_in.requests().len();
    let report = reconciler(&h, 3).reconcile().await.unwrap();
    assert_eq!(report.streams[0].counts.applied, 7);
    let cursors_sent: Vec<String> = h.stand_in.requests()[before..]
        .iter()
        .filter(|r| r.query_value("types[0]").as_deref() == Some("charge.dispute.closed"))
        .filter_map(|r| r.query_value("ending_before"))
        .collect();
    assert_eq!(cursors_sent, ["evt_p07", "evt_p10", "evt_p13"]);
    let email: String =
        sqlx::query_scalar("SELECT email FROM customers WHERE stripe_customer_id = 'cus_p'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(email, "p14@example.test");
}

#[tokio::test]
async fn a_cursor_past_stripe_s_retention_is_reported_and_everything_still_kept_is_walked() {
    let h = Harness::start().await;
    h.linked_customer("cus_old", "user_old").await;
    let now = unix_now();
    let streams = Reconciler::streams();
    // Group 1: stored 40 days ago. Group 2: recent, but Stripe no longer has that event.
    for ((stream, types), (event_id, created)) in streams.iter().zip([
        ("evt_ancient", now - 40 * 86_400),
        ("evt_vanished", now - 86_400),
    ]) {
        sqlx::query(
            "INSERT INTO reconcile_cursors (stream, event_types, event_id, event_created) VALUES ($1, $2, $3, $4)",
        )
        .bind(stream)
        .bind(types)
        .bind(event_id)
        .bind(created)
        .execute(&h.pool)
        .await
        .unwrap();
    }
    h.stand_in.put_list(
        "events",
        vec![
            stripe_event(
                "evt_kept1",
                "customer.subscription.created",
                now - 10 * 86_400,
                subscription_object("sub_old", "cus_old", "active", "price_pro_monthly"),
                None,
            ),
            stripe_event(
                "evt_kept2",
                "invoice.payment_failed",
                now - 9 * 86_400,
                invoice_object("in_old", "cus_old", "sub_old", "open", now - 9 * 86_400),
                None,
            ),
        ],
    );
    let report = reconciler(&h, 100).reconcile().await.unwrap();
    assert!(matches!(report.streams[0].start, Start::Expired { .. }));
    assert!(matches!(report.streams[1].start, Start::Unknown { .. }));
    assert!(report.events_may_be_lost());
    let printed = report.to_string();
    assert!(
        printed.contains("older than Stripe's 30-day event retention"),
        "{printed}"
    );
    assert!(printed.contains("tollgate backfill"), "{printed}");
    assert_eq!(report.counts().applied, 2);
    assert_eq!(
        access(&h.pool, "cus_old").await,
        ("payment_failed".into(), Some("free".into()))
    );
    let cursors: Vec<String> = cursors(&h).await.into_iter().map(|(_, id)| id).collect();
    assert!(cursors.contains(&"evt_kept1".to_string()));
    assert!(cursors.contains(&"evt_kept2".to_string()));
    // The vanished cursor was asked for once, then the walk started over from the newest.
    let group2: Vec<_> = h
        .stand_in
        .requests_to("GET", "/v1/events")
        .into_iter()
        .filter(|r| r.query_value("types[0]").as_deref() == Some("invoice.payment_failed"))
        .collect();
    assert_eq!(
        group2[0].query_value("ending_before").as_deref(),
        Some("evt_vanished")
    );
    assert_eq!(group2[1].query_value("ending_before"), None);
}

#[tokio::test]
async fn events_waiting_for_an_older_one_are_retried_and_poison_becomes_a_dead_letter() {
    let h = Harness::start().await;
    h.linked_customer("cus_d", "user_d").await;
    let base = unix_now() - 600;
    let mut invoice = invoice_object("in_d", "cus_d", "sub_d", "paid", base);
    invoice["charge"] = "ch_disputed".into();
    let mut dispute = stripe_object("dispute");
    dispute["charge"] = "ch_disputed".into();
    dispute["status"] = "needs_response".into();
    let mut orphan = stripe_object("dispute");
    orphan["id"] = "dp_orphan".into();
    orphan["charge"] = "ch_not_ours".into();
    let mut poison = stripe_event(
        "evt_poison",
        "customer.subscription.updated",
        base + 3,
        json!({ "id": 5 }),
        None,
    );
    poison["data"]["object"] = json!({ "id": 5 });
    let already = stripe_event(
        "evt_already_dead",
        "customer.updated",
        base + 4,
        customer_object("cus_d", Some("user_d"), "d@example.test", base),
        None,
    );
    h.stand_in.put_list(
        "events",
        vec![
            // The walk meets the dispute (newer) before the invoice that names its charge.
            stripe_event("evt_inv", "invoice.paid", base, invoice, None),
            stripe_event(
                "evt_dispute",
                "charge.dispute.created",
                base + 1,
                dispute,
                None,
            ),
            stripe_event(
                "evt_orphan",
                "charge.dispute.created",
                base + 2,
                orphan,
                None,
            ),
            poison,
            already.clone(),
        ],
    );
    let decoded = process::decode(&serde_json::to_vec(&already).unwrap()).unwrap();
    tollgate_billing::ledger::record_failure(
        &h.pool,
        &decoded.envelope,
        &decoded.payload,
        6,
        "given up on",
        true,
    )
    .await
    .unwrap();

    let mut reconciler = reconciler(&h, 100);
    reconciler.retry_rounds = 2;
    let report = reconciler.reconcile().await.unwrap();
    let counts = report.counts();
    assert_eq!(
        counts.applied, 2,
        "the invoice, then the dispute on retry: {report}"
    );
    assert_eq!(counts.left_dead_lettered, 1);
    let mut dead = counts.dead_lettered.clone();
    dead.sort();
    assert_eq!(dead, ["evt_orphan", "evt_poison"]);
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM disputes WHERE charge = 'ch_disputed'"
        )
        .await,
        1
    );
    let letters: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_id, routing_key FROM dead_letters WHERE resolution = 'open' ORDER BY event_id",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        letters,
        [
            ("evt_orphan".into(), "charge.dispute.created".into()),
            ("evt_poison".into(), "customer.subscription.updated".into())
        ]
    );
    // The cursor moved past them: they wait for an operator, not for every run.
    assert_eq!(
        report.streams[0].cursor.as_deref(),
        Some("evt_already_dead")
    );
    let again = reconciler.reconcile().await.unwrap();
    assert_eq!(again.counts(), Default::default());
}
