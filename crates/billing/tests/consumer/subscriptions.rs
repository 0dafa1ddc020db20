//! Subscription lifecycles: linking, derived access, and order-independence.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_test_support::stripe_fixture;

use crate::helpers::*;

pub const T0: i64 = 1_760_000_000;

/// A `customer.subscription.*` event in the 2025 shape (period on the item).
pub fn subscription_event(
    event_type: &str,
    created: i64,
    subscription: &str,
    customer: &str,
    status: &str,
    price: &str,
) -> (String, Vec<u8>) {
    let id = format!(
        "evt_{}",
        uuid_like(&format!(
            "{subscription}{event_type}{created}{status}{price}"
        ))
    );
    let body = json!({
        "id": id, "object": "event", "type": event_type, "created": created, "livemode": false,
        "api_version": "2025-03-31.basil",
        "data": { "object": {
            "id": subscription, "object": "subscription", "customer": customer, "status": status,
            "cancel_at_period_end": false, "trial_end": null, "canceled_at": null, "ended_at": null,
            "items": { "object": "list", "data": [{
                "id": "si_1", "current_period_start": created, "current_period_end": created + 2_592_000,
                "price": { "id": price, "product": "prod_1", "recurring": { "interval": "month" } }
            }]}
        }}
    });
    (id, serde_json::to_vec(&body).unwrap())
}

/// Deterministic ids so a run can be repeated exactly.
fn uuid_like(seed: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

pub async fn access(billing: &TestBilling, stripe_customer: &str) -> (String, String) {
    sqlx::query_as("SELECT access_status, tier FROM customers WHERE stripe_customer_id = $1")
        .bind(stripe_customer)
        .fetch_one(&billing.pool)
        .await
        .unwrap()
}

pub async fn deliver(billing: &TestBilling, events: &[(String, Vec<u8>)]) {
    for (id, body) in events {
        let event_type = serde_json::from_slice::<Value>(body).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_string();
        billing.publish_event(id, &event_type, body).await;
    }
}

pub async fn settle(billing: &TestBilling, distinct_events: i64) {
    eventually("every event applied", Duration::from_secs(30), || async {
        billing.event_count().await == distinct_events
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_links_the_user_and_the_subscription_grants_its_tier() {
    let mut billing = spawn_billing(Options::default()).await;
    // Real checkout payload (pay-rails), with our user id as client_reference_id.
    let mut data: Value = serde_json::from_slice(&stripe_fixture(
        "data-only/checkout.session.completed.subscription_mode.data-only.pay-rails.json",
    ))
    .unwrap();
    data["object"]["client_reference_id"] = "user_42".into();
    let customer = data["object"]["customer"].as_str().unwrap().to_string();
    let subscription = data["object"]["subscription"].as_str().unwrap().to_string();
    let checkout = json!({ "id": "evt_checkout_1", "object": "event", "type": "checkout.session.completed",
        "created": T0 + 1, "livemode": false, "api_version": "2025-03-31.basil", "data": data });
    deliver(
        &billing,
        &[(
            "evt_checkout_1".into(),
            serde_json::to_vec(&checkout).unwrap(),
        )],
    )
    .await;
    settle(&billing, 1).await;

    let (user_id, email): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT user_id, email FROM customers WHERE stripe_customer_id = $1")
            .bind(&customer)
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(user_id.as_deref(), Some("user_42"));
    assert_eq!(email.as_deref(), Some("chris@gorails.com"));
    assert_eq!(
        access(&billing, &customer).await,
        ("active".into(), "free".into()),
        "provisional: paid, tier unknown"
    );

    // The real snapshot, from a second *earlier* than the checkout, still replaces the provisional row.
    let created = subscription_event(
        "customer.subscription.created",
        T0,
        &subscription,
        &customer,
        "active",
        "price_pro_monthly",
    );
    deliver(&billing, &[created]).await;
    settle(&billing, 2).await;
    assert_eq!(
        access(&billing, &customer).await,
        ("active".into(), "pro".into())
    );

    let audit: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT previous_status, new_status, new_tier FROM access_audit a JOIN customers c ON c.id = a.customer_id
          WHERE c.stripe_customer_id = $1 ORDER BY a.id",
    )
    .bind(&customer)
    .fetch_all(&billing.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        vec![
            ("none".into(), "active".into(), Some("free".into())),
            ("active".into(), "active".into(), Some("pro".into())),
        ]
    );
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_older_snapshot_never_overwrites_a_newer_one() {
    let mut billing = spawn_billing(Options::default()).await;
    let (sub, cus) = ("sub_order", "cus_order");
    let deleted = subscription_event(
        "customer.subscription.deleted",
        T0 + 20,
        sub,
        cus,
        "canceled",
        "price_pro_monthly",
    );
    let updated = subscription_event(
        "customer.subscription.updated",
        T0 + 10,
        sub,
        cus,
        "active",
        "price_pro_plus_monthly",
    );
    let created = subscription_event(
        "customer.subscription.created",
        T0,
        sub,
        cus,
        "incomplete",
        "price_pro_monthly",
    );
    deliver(&billing, &[deleted]).await;
    settle(&billing, 1).await;
    deliver(&billing, &[updated, created]).await;
    settle(&billing, 3).await;
    assert_eq!(
        access(&billing, cus).await,
        ("canceled".into(), "free".into()),
        "deletion downgrades to free"
    );
    let (status, snapshot_created): (String, i64) = sqlx::query_as(
        "SELECT status, snapshot_created FROM subscriptions WHERE stripe_subscription_id = $1",
    )
    .bind(sub)
    .fetch_one(&billing.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), snapshot_created), ("canceled", T0 + 20));
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_second_snapshots_resolve_to_the_later_lifecycle_state_in_either_order() {
    for reversed in [false, true] {
        let mut billing = spawn_billing(Options::default()).await;
        let (sub, cus) = ("sub_tie", "cus_tie");
        let mut events = vec![
            subscription_event(
                "customer.subscription.created",
                T0,
                sub,
                cus,
                "incomplete",
                "price_pro_monthly",
            ),
            subscription_event(
                "customer.subscription.updated",
                T0,
                sub,
                cus,
                "active",
                "price_pro_monthly",
            ),
        ];
        if reversed {
            events.reverse();
        }
        for event in events {
            deliver(&billing, &[event]).await;
        }
        settle(&billing, 2).await;
        assert_eq!(
            access(&billing, cus).await,
            ("active".into(), "pro".into()),
            "reversed = {reversed}"
        );
        billing.stop().await;
    }
}

/// Full subscription lifecycles for many customers: in order, shuffled, and
/// shuffled with every event twice, through the real queue and two consumers.
/// The resulting state must be identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycles_converge_whatever_the_delivery_order() {
    let mut events = Vec::new();
    for n in 0..15 {
        let (sub, cus) = (format!("sub_conv_{n}"), format!("cus_conv_{n}"));
        let t = T0 + n * 1000;
        let step = |ty: &str, dt: i64, status: &str, price: &str| {
            subscription_event(ty, t + dt, &sub, &cus, status, price)
        };
        events.push(step(
            "customer.subscription.created",
            0,
            "incomplete",
            "price_pro_monthly",
        ));
        events.push(step(
            "customer.subscription.updated",
            0,
            "active",
            "price_pro_monthly",
        )); // same second
        events.push(step(
            "customer.subscription.updated",
            30,
            "active",
            "price_pro_monthly",
        )); // renewal
        events.push(step(
            "customer.subscription.updated",
            60,
            "past_due",
            "price_pro_monthly",
        )); // payment failed
        events.push(step(
            "customer.subscription.updated",
            90,
            "active",
            "price_pro_monthly",
        )); // recovered
        match n % 3 {
            0 => events.push(step(
                "customer.subscription.updated",
                120,
                "active",
                "price_pro_plus_monthly",
            )), // upgrade
            1 => events.push(step(
                "customer.subscription.deleted",
                120,
                "canceled",
                "price_pro_monthly",
            )), // cancel
            _ => events.push(step(
                "customer.subscription.updated",
                120,
                "past_due",
                "price_pro_monthly",
            )), // failing again
        }
    }
    let distinct = events.len() as i64;
    let mut shuffled = events.clone();
    shuffle(&mut shuffled, 7);
    let mut doubled: Vec<_> = events.iter().chain(events.iter()).cloned().collect();
    shuffle(&mut doubled, 11);

    let mut states = Vec::new();
    for (name, run) in [
        ("in order", &events),
        ("shuffled", &shuffled),
        ("duplicated", &doubled),
    ] {
        let mut billing = spawn_billing(Options {
            instances: 2,
            ..Options::default()
        })
        .await;
        deliver(&billing, run).await;
        settle(&billing, distinct).await;
        billing.stop().await;
        let customers: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT stripe_customer_id, access_status, tier FROM customers ORDER BY stripe_customer_id",
        )
        .fetch_all(&billing.pool)
        .await
        .unwrap();
        let subscriptions: Vec<SubscriptionRow> = sqlx::query_as(
            "SELECT stripe_subscription_id, status, price_id, tier, snapshot_created, snapshot_rank, snapshot_event_id
               FROM subscriptions ORDER BY stripe_subscription_id",
        )
        .fetch_all(&billing.pool)
        .await
        .unwrap();
        assert_eq!(customers.len(), 15, "{name}");
        states.push((name, customers, subscriptions));
    }
    assert_eq!(states[0].1, states[1].1, "customers: in order vs shuffled");
    assert_eq!(
        states[0].1, states[2].1,
        "customers: in order vs duplicated"
    );
    assert_eq!(
        states[0].2, states[1].2,
        "subscriptions: in order vs shuffled"
    );
    assert_eq!(
        states[0].2, states[2].2,
        "subscriptions: in order vs duplicated"
    );
    // And the state is the right one, not merely a consistent one.
    let by_customer = |i: usize| {
        states[0].1[states[0]
            .1
            .iter()
            .position(|c| c.0 == format!("cus_conv_{i}"))
            .unwrap()]
        .clone()
    };
    assert_eq!(
        (by_customer(0).1, by_customer(0).2),
        ("active".into(), Some("pro_plus".into()))
    );
    assert_eq!(
        (by_customer(1).1, by_customer(1).2),
        ("canceled".into(), Some("free".into()))
    );
    assert_eq!(
        (by_customer(2).1, by_customer(2).2),
        ("past_due".into(), Some("free".into()))
    );
}

/// (id, status, price, tier, snapshot_created, snapshot_rank, snapshot_event_id)
type SubscriptionRow = (String, String, Option<String>, String, i64, i32, String);

/// Fisher–Yates with a fixed-seed xorshift: reproducible shuffles.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// An `updated` event with `previous_attributes`, as Stripe sends plan changes.
fn change_event(
    id: &str,
    created: i64,
    status: &str,
    price: &str,
    previous: serde_json::Value,
    cancel_at_period_end: bool,
) -> (String, Vec<u8>) {
    let (_, body) = subscription_event(
        "customer.subscription.updated",
        created,
        "sub_hist",
        "cus_hist",
        status,
        price,
    );
    let mut event: Value = serde_json::from_slice(&body).unwrap();
    event["id"] = id.into();
    event["data"]["object"]["cancel_at_period_end"] = cancel_at_period_end.into();
    event["data"]["previous_attributes"] = previous;
    (id.to_string(), serde_json::to_vec(&event).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_changes_and_cancellation_appear_once_in_the_history_whatever_the_order() {
    let mut billing = spawn_billing(Options::default()).await;
    let upgrade = change_event(
        "evt_upgrade",
        T0 + 10,
        "active",
        "price_pro_plus_monthly",
        json!({ "items": { "data": [{ "price": { "id": "price_pro_monthly" } }] } }),
        false,
    );
    let downgrade = change_event(
        "evt_downgrade",
        T0 + 20,
        "active",
        "price_pro_monthly",
        json!({ "plan": { "id": "price_pro_plus_monthly" } }),
        false,
    );
    let cancel_request = change_event(
        "evt_cancel_request",
        T0 + 30,
        "active",
        "price_pro_monthly",
        json!({ "cancel_at_period_end": false }),
        true,
    );
    let deleted = subscription_event(
        "customer.subscription.deleted",
        T0 + 40,
        "sub_hist",
        "cus_hist",
        "canceled",
        "price_pro_monthly",
    );
    // Newest first, and twice.
    let events = [
        deleted.clone(),
        cancel_request.clone(),
        downgrade.clone(),
        upgrade.clone(),
        deleted,
        upgrade,
    ];
    deliver(&billing, &events).await;
    settle(&billing, 4).await;
    billing.stop().await;
    let history: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT kind, status, description FROM transactions ORDER BY occurred_at, kind",
    )
    .fetch_all(&billing.pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![
            (
                "upgrade".into(),
                "succeeded".into(),
                Some("Pro → Pro Plus".into())
            ),
            (
                "downgrade".into(),
                "succeeded".into(),
                Some("Pro Plus → Pro".into())
            ),
            (
                "cancel".into(),
                "succeeded".into(),
                Some("Subscription canceled".into())
            ),
        ]
    );
}
