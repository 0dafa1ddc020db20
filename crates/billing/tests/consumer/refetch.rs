//! Ambiguous same-second ties settled by Stripe's copy of the object, against the Stripe
//! stand-in (docs/billing-state.md, "Ambiguous ties").

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_stripe::{Fallback, Outcome, api_version};
use tollgate_test_support::{Reply, StripeStandIn, invoice_object, subscription_object};

use crate::helpers::*;
use crate::subscriptions::{T0, access, deliver, settle, subscription_event};

const KEY: &str = "sk_test_tollgate_refetch";
const SECOND: i64 = T0 + 10;

/// Billing configured to call the stand-in, with more settings if given.
fn with_stripe(stand_in: &StripeStandIn, more: &[(&'static str, &str)]) -> Options {
    let mut env = vec![
        ("STRIPE_SECRET_KEY", KEY.to_string()),
        ("STRIPE_API_BASE", stand_in.api_base()),
    ];
    env.extend(more.iter().map(|(name, value)| (*name, value.to_string())));
    Options {
        env,
        ..Options::default()
    }
}

/// `customer.subscription.updated` with this id at `SECOND`, active on `price`.
fn updated(
    id: &str,
    sub: &str,
    cus: &str,
    price: &str,
    cancel_at_period_end: bool,
) -> (String, Vec<u8>) {
    let (_, body) = subscription_event(
        "customer.subscription.updated",
        SECOND,
        sub,
        cus,
        "active",
        price,
    );
    let mut event: Value = serde_json::from_slice(&body).unwrap();
    event["id"] = id.into();
    event["data"]["object"]["cancel_at_period_end"] = cancel_at_period_end.into();
    (id.to_string(), serde_json::to_vec(&event).unwrap())
}

/// The two same-second, same-rank snapshots of `sub` that disagree: `_a` (Pro, cancelling)
/// and `_b` (Pro Plus), whose id sorts later and so wins without Stripe.
fn tie(sub: &str, cus: &str) -> [(String, Vec<u8>); 2] {
    [
        updated(&format!("evt_{sub}_a"), sub, cus, "price_pro_monthly", true),
        updated(
            &format!("evt_{sub}_b"),
            sub,
            cus,
            "price_pro_plus_monthly",
            false,
        ),
    ]
}

/// (status, price, snapshot_event_id, refetched)
type StoredSubscription = (String, Option<String>, String, bool);

async fn stored(billing: &TestBilling, sub: &str) -> StoredSubscription {
    sqlx::query_as(
        "SELECT status, price_id, snapshot_event_id, snapshot_refetched_at IS NOT NULL
           FROM subscriptions WHERE stripe_subscription_id = $1",
    )
    .bind(sub)
    .fetch_one(&billing.pool)
    .await
    .unwrap()
}

/// What `tie(sub, _)` stores when the event id decides: `_b`'s snapshot.
fn decided_by_event_id(sub: &str) -> StoredSubscription {
    (
        "active".into(),
        Some("price_pro_plus_monthly".into()),
        format!("evt_{sub}_b"),
        false,
    )
}

/// Delivers the events one at a time, each applied before the next is sent.
async fn deliver_in_turn(billing: &TestBilling, events: &[(String, Vec<u8>)]) {
    let before = billing.event_count().await;
    for (n, event) in events.iter().enumerate() {
        deliver(billing, std::slice::from_ref(event)).await;
        settle(billing, before + n as i64 + 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripes_copy_settles_a_same_second_tie_in_either_order() {
    for reversed in [false, true] {
        let stand_in = StripeStandIn::start().await;
        let (sub, cus) = ("sub_amb", "cus_amb");
        // Stripe's object now: the payment failed after both snapshots were taken.
        stand_in.put_object(
            "subscriptions",
            &subscription_object(sub, cus, "past_due", "price_pro_monthly"),
        );
        let mut billing = spawn_billing(with_stripe(&stand_in, &[])).await;
        let mut events = tie(sub, cus);
        if reversed {
            events.reverse();
        }
        deliver_in_turn(&billing, &events).await;

        assert_eq!(
            stored(&billing, sub).await,
            (
                "past_due".into(),
                Some("price_pro_monthly".into()),
                format!("evt_{sub}_b"),
                true
            ),
            "Stripe's copy, under the tie's key (reversed = {reversed})"
        );
        assert_eq!(
            access(&billing, cus).await,
            ("past_due".into(), "free".into())
        );
        let path = format!("/v1/subscriptions/{sub}");
        let requests = stand_in.requests_to("GET", &path);
        assert_eq!(requests.len(), 1, "one refetch (reversed = {reversed})");
        assert_eq!(
            requests[0].header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(requests[0].header("stripe-version"), Some(api_version()));
        assert_eq!(billing.refetchers[0].count(Outcome::Fetched), 1);

        // A third snapshot of the same second and rank: the refetched copy settled that
        // second, so it loses without asking Stripe again.
        deliver_in_turn(
            &billing,
            &[updated(
                &format!("evt_{sub}_c"),
                sub,
                cus,
                "price_pro_plus_monthly",
                false,
            )],
        )
        .await;
        assert_eq!(stored(&billing, sub).await.0, "past_due");
        assert_eq!(stand_in.requests_to("GET", &path).len(), 1);

        // A later second wins as always, and is an event's snapshot again.
        let recovered = subscription_event(
            "customer.subscription.updated",
            SECOND + 30,
            sub,
            cus,
            "active",
            "price_pro_monthly",
        );
        let recovered_id = recovered.0.clone();
        deliver_in_turn(&billing, &[recovered]).await;
        assert_eq!(
            stored(&billing, sub).await,
            (
                "active".into(),
                Some("price_pro_monthly".into()),
                recovered_id,
                false
            )
        );
        assert_eq!(access(&billing, cus).await, ("active".into(), "pro".into()));
        billing.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_event_id_decides_and_stripe_is_never_called() {
    let stand_in = StripeStandIn::start().await;
    let (sub, cus) = ("sub_nokey", "cus_nokey");
    stand_in.put_object(
        "subscriptions",
        &subscription_object(sub, cus, "past_due", "price_pro_monthly"),
    );
    // An API base alone does not enable anything.
    let mut billing = spawn_billing(Options {
        env: vec![("STRIPE_API_BASE", stand_in.api_base())],
        ..Options::default()
    })
    .await;
    assert!(!billing.refetchers[0].is_enabled());
    let mut events = tie(sub, cus);
    events.reverse();
    deliver_in_turn(&billing, &events).await;
    assert_eq!(stored(&billing, sub).await, decided_by_event_id(sub));
    assert_eq!(
        access(&billing, cus).await,
        ("active".into(), "pro_plus".into())
    );
    assert!(stand_in.requests().is_empty());
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ties_on_one_object_share_one_request() {
    let stand_in = StripeStandIn::start().await;
    let (sub, cus) = ("sub_flight", "cus_flight");
    stand_in.reply(
        "GET",
        &format!("/v1/subscriptions/{sub}"),
        // Slow enough that every tie is waiting on the same request.
        Reply::object(&subscription_object(
            sub,
            cus,
            "past_due",
            "price_pro_monthly",
        ))
        .delayed(Duration::from_secs(1)),
    );
    let mut billing = spawn_billing(with_stripe(&stand_in, &[])).await;
    deliver_in_turn(
        &billing,
        &[updated(
            "evt_flight_0",
            sub,
            cus,
            "price_pro_monthly",
            false,
        )],
    )
    .await;
    let ties: Vec<_> = (1..=8)
        .map(|n| {
            updated(
                &format!("evt_flight_{n}"),
                sub,
                cus,
                "price_pro_plus_monthly",
                n % 2 == 0,
            )
        })
        .collect();
    deliver(&billing, &ties).await;
    settle(&billing, 9).await;

    assert_eq!(
        stand_in
            .requests_to("GET", &format!("/v1/subscriptions/{sub}"))
            .len(),
        1
    );
    let refetcher = &billing.refetchers[0];
    assert_eq!(refetcher.count(Outcome::Fetched), 1);
    // The other ties waited on that request (how many were still in their first run when
    // it started depends on scheduling; none made a request of its own).
    assert!(
        (1..=7).contains(&refetcher.count(Outcome::Shared)),
        "{}",
        refetcher.count(Outcome::Shared)
    );
    let (status, price, _, refetched) = stored(&billing, sub).await;
    assert_eq!(
        (status.as_str(), price.as_deref(), refetched),
        ("past_due", Some("price_pro_monthly"), true)
    );
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_bucket_falls_back_to_the_event_id_and_is_counted() {
    let stand_in = StripeStandIn::start().await;
    let (sub, cus) = ("sub_bucket", "cus_bucket");
    stand_in.put_object(
        "subscriptions",
        &subscription_object(sub, cus, "past_due", "price_pro_monthly"),
    );
    let mut billing = spawn_billing(with_stripe(&stand_in, &[("STRIPE_REFETCH_RATE", "0")])).await;
    deliver_in_turn(&billing, &tie(sub, cus)).await;
    assert_eq!(stored(&billing, sub).await, decided_by_event_id(sub));
    assert_eq!(
        billing.refetchers[0].count(Outcome::Fallback(Fallback::Throttled)),
        1
    );
    assert!(stand_in.requests().is_empty());
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_failing_falls_back_and_every_event_is_applied() {
    let stand_in = StripeStandIn::start().await;
    let cases = [
        ("sub_500", Reply::server_error()),
        ("sub_502", Reply::text(502, "<html>Bad gateway</html>")),
        ("sub_404", Reply::not_found("/v1/subscriptions/sub_404")),
        ("sub_429", Reply::rate_limited()),
        (
            "sub_slow",
            Reply::object(&subscription_object(
                "sub_slow",
                "cus_sub_slow",
                "past_due",
                "price_pro_monthly",
            ))
            .delayed(Duration::from_secs(3)),
        ),
        // Answered, but not usable: another customer's, or not a subscription billing can read.
        (
            "sub_other",
            Reply::object(&subscription_object(
                "sub_other",
                "cus_someone_else",
                "past_due",
                "price_pro_monthly",
            )),
        ),
        (
            "sub_garbled",
            Reply::object(&json!({ "id": "sub_garbled", "object": "subscription" })),
        ),
    ];
    for (sub, reply) in &cases {
        stand_in.reply("GET", &format!("/v1/subscriptions/{sub}"), reply.clone());
    }
    // Seven refetches at once: more than the default bucket's one-second burst.
    let mut billing = spawn_billing(with_stripe(
        &stand_in,
        &[("STRIPE_TIMEOUT_MS", "300"), ("STRIPE_REFETCH_RATE", "100")],
    ))
    .await;
    let events: Vec<_> = cases
        .iter()
        .flat_map(|(sub, _)| tie(sub, &format!("cus_{sub}")))
        .collect();
    deliver(&billing, &events).await;
    settle(&billing, events.len() as i64).await;

    for (sub, _) in &cases {
        assert_eq!(
            stored(&billing, sub).await,
            decided_by_event_id(sub),
            "{sub}: the event id decided"
        );
        assert_eq!(
            stand_in
                .requests_to("GET", &format!("/v1/subscriptions/{sub}"))
                .len(),
            1,
            "{sub}"
        );
    }
    let refetcher = &billing.refetchers[0];
    for (outcome, expected) in [
        (Outcome::Fallback(Fallback::Failed), 2),
        (Outcome::Fallback(Fallback::NotFound), 1),
        (Outcome::Fallback(Fallback::RateLimited), 1),
        (Outcome::Fallback(Fallback::Timeout), 1),
        (Outcome::Fetched, 2),
    ] {
        assert_eq!(refetcher.count(outcome), expected, "{outcome:?}");
    }
    // Applied at the first attempt: nothing retried, dead-lettered or lost.
    let statuses: Vec<(String, i32)> =
        sqlx::query_as("SELECT DISTINCT status, attempts FROM stripe_events")
            .fetch_all(&billing.pool)
            .await
            .unwrap();
    assert_eq!(statuses, [("processed".to_string(), 1)]);
    billing.stop().await;
}

/// An invoice event at `SECOND` carrying `invoice`.
fn invoice_event(id: &str, event_type: &str, invoice: Value) -> (String, Vec<u8>) {
    let event = json!({ "id": id, "object": "event", "type": event_type, "created": SECOND,
        "livemode": false, "api_version": "2025-03-31.basil", "data": { "object": invoice } });
    (id.to_string(), serde_json::to_vec(&event).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripes_copy_settles_a_same_second_invoice_tie() {
    let stand_in = StripeStandIn::start().await;
    let (inv, sub, cus) = ("in_amb", "sub_inv_amb", "cus_inv_amb");
    stand_in.put_object("invoices", &invoice_object(inv, cus, sub, "paid", T0));
    let mut billing = spawn_billing(with_stripe(&stand_in, &[])).await;
    let (_, active) = subscription_event(
        "customer.subscription.created",
        T0,
        sub,
        cus,
        "active",
        "price_pro_monthly",
    );
    // Finalized (not yet attempted) and updated (a failed attempt) in the same second:
    // both open, the same rank; the failure's id sorts later and would revoke access.
    let mut finalized = invoice_object(inv, cus, sub, "open", T0);
    finalized["attempted"] = false.into();
    finalized["attempt_count"] = 0.into();
    let failed = invoice_object(inv, cus, sub, "open", T0);
    deliver_in_turn(
        &billing,
        &[
            ("evt_inv_active".into(), active),
            invoice_event("evt_inv_amb_b", "invoice.updated", failed),
            invoice_event("evt_inv_amb_a", "invoice.finalized", finalized),
        ],
    )
    .await;

    let (status, refetched): (String, bool) = sqlx::query_as(
        "SELECT status, snapshot_refetched_at IS NOT NULL FROM invoices WHERE stripe_invoice_id = $1",
    )
    .bind(inv)
    .fetch_one(&billing.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), refetched), ("paid", true));
    assert_eq!(access(&billing, cus).await, ("active".into(), "pro".into()));
    let payment: String = sqlx::query_scalar(
        "SELECT status FROM transactions WHERE kind = 'subscription_payment' AND stripe_object_id = $1",
    )
    .bind(inv)
    .fetch_one(&billing.pool)
    .await
    .unwrap();
    assert_eq!(payment, "succeeded");
    let requests = stand_in.requests_to("GET", &format!("/v1/invoices/{inv}"));
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    billing.stop().await;
}
