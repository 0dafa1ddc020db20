//! Whole customer lifecycles — signup through checkout, renewals, a failed
//! payment and its recovery, upgrades, downgrades, cancellations, credit top-ups
//! and refunds — delivered in order, shuffled, and shuffled with every event
//! twice, through the real queue to two billing processes: the final state must
//! be identical in all three runs, and the right one.

use serde_json::{Value, json};
use tollgate_test_support::stripe_fixture;

use crate::helpers::*;
use crate::subscriptions::{T0, deliver, settle, shuffle, subscription_event};

const CUSTOMERS: i64 = 12;

fn wrap(event_type: &str, id: String, created: i64, data: Value) -> (String, Vec<u8>) {
    let event = json!({ "id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "api_version": "2025-03-31.basil", "data": data });
    (id, serde_json::to_vec(&event).unwrap())
}

/// Signup: the real subscription-mode checkout (pay-rails) for customer `n`.
fn signup(n: i64, created: i64) -> (String, Vec<u8>) {
    let mut data: Value = serde_json::from_slice(&stripe_fixture(
        "data-only/checkout.session.completed.subscription_mode.data-only.pay-rails.json",
    ))
    .unwrap();
    let session = &mut data["object"];
    session["id"] = format!("cs_sub_{n}").into();
    session["client_reference_id"] = format!("user_{n}").into();
    session["customer"] = format!("cus_life_{n}").into();
    session["subscription"] = format!("sub_life_{n}").into();
    wrap(
        "checkout.session.completed",
        format!("evt_signup_{n}"),
        created,
        data,
    )
}

/// The real 2025-shape invoice (pay-rails), as invoice `k` of customer `n`.
fn invoice(n: i64, k: i64, event_type: &str, created: i64, paid: bool) -> (String, Vec<u8>) {
    let mut data: Value = serde_json::from_slice(&stripe_fixture(
        "data-only/invoice.payment_failed.data-only.pay-rails.json",
    ))
    .unwrap();
    let object = &mut data["object"];
    object["id"] = format!("in_life_{n}_{k}").into();
    object["customer"] = format!("cus_life_{n}").into();
    object["parent"]["subscription_details"]["subscription"] = format!("sub_life_{n}").into();
    object["created"] = (created - 5).into();
    if paid {
        object["status"] = "paid".into();
        object["amount_paid"] = object["amount_due"].clone();
        object["amount_remaining"] = 0.into();
        object["status_transitions"]["paid_at"] = created.into();
    }
    wrap(
        event_type,
        format!("evt_{}_{n}_{k}", event_type.replace('.', "_")),
        created,
        data,
    )
}

/// A credit pack: the real payment-mode checkout (stripe-sync-engine).
fn topup(n: i64, created: i64) -> (String, Vec<u8>) {
    let mut event: Value = serde_json::from_slice(&stripe_fixture(
        "complete/checkout.session.completed.payment_mode.stripe-sync-engine.json",
    ))
    .unwrap();
    let session = &mut event["data"]["object"];
    session["id"] = format!("cs_topup_{n}").into();
    session["customer"] = format!("cus_life_{n}").into();
    session["payment_intent"] = format!("pi_topup_{n}").into();
    session["client_reference_id"] = format!("user_{n}").into();
    session["metadata"] = json!({ "credits": (100 * (n + 1)).to_string() });
    wrap(
        "checkout.session.completed",
        format!("evt_topup_{n}"),
        created,
        event["data"].clone(),
    )
}

/// About half of the top-up's 9.99 EUR charge refunded: the real `charge.refunded` (stripe-sync-engine).
fn refund(n: i64, created: i64) -> (String, Vec<u8>) {
    let mut event: Value = serde_json::from_slice(&stripe_fixture(
        "complete/charge.refunded.stripe-sync-engine.json",
    ))
    .unwrap();
    let charge = &mut event["data"]["object"];
    charge["id"] = format!("ch_topup_{n}").into();
    charge["customer"] = format!("cus_life_{n}").into();
    charge["payment_intent"] = format!("pi_topup_{n}").into();
    charge["amount"] = 999.into();
    charge["amount_refunded"] = 500.into();
    charge["currency"] = "eur".into();
    wrap(
        "charge.refunded",
        format!("evt_refund_{n}"),
        created,
        event["data"].clone(),
    )
}

fn lifecycles() -> Vec<(String, Vec<u8>)> {
    let mut events = Vec::new();
    for n in 0..CUSTOMERS {
        let t = T0 + n * 1000;
        let (sub, cus) = (format!("sub_life_{n}"), format!("cus_life_{n}"));
        let snapshot = |ty: &str, dt: i64, status: &str, price: &str| {
            subscription_event(ty, t + dt, &sub, &cus, status, price)
        };
        events.push(signup(n, t));
        events.push(snapshot(
            "customer.subscription.created",
            0,
            "incomplete",
            "price_pro_monthly",
        ));
        events.push(snapshot(
            "customer.subscription.updated",
            0,
            "active",
            "price_pro_monthly",
        ));
        events.push(invoice(n, 1, "invoice.paid", t + 1, true));
        events.push(topup(n, t + 5));
        // Renewal, paid.
        events.push(invoice(n, 2, "invoice.paid", t + 30, true));
        // Next renewal fails: revoked at once; Stripe then marks it past_due.
        events.push(invoice(n, 3, "invoice.payment_failed", t + 60, false));
        events.push(snapshot(
            "customer.subscription.updated",
            61,
            "past_due",
            "price_pro_monthly",
        ));
        // Recovery.
        events.push(invoice(n, 3, "invoice.paid", t + 90, true));
        events.push(snapshot(
            "customer.subscription.updated",
            90,
            "active",
            "price_pro_monthly",
        ));
        match n % 4 {
            0 => events.push(snapshot(
                "customer.subscription.updated",
                120,
                "active",
                "price_pro_plus_monthly",
            )), // upgrade
            1 => {
                // upgrade, then downgrade
                events.push(snapshot(
                    "customer.subscription.updated",
                    120,
                    "active",
                    "price_pro_plus_monthly",
                ));
                events.push(snapshot(
                    "customer.subscription.updated",
                    150,
                    "active",
                    "price_pro_monthly",
                ));
            }
            2 => events.push(snapshot(
                "customer.subscription.deleted",
                120,
                "canceled",
                "price_pro_monthly",
            )), // cancellation
            _ => events.push(invoice(n, 4, "invoice.payment_failed", t + 120, false)), // failing again
        }
        if n % 2 == 0 {
            events.push(refund(n, t + 200));
        }
    }
    events
}

/// Everything billing derives, as text rows, ordered.
async fn final_state(billing: &TestBilling) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    for sql in [
        "SELECT concat_ws('|', 'customer', stripe_customer_id, user_id, access_status, tier)
           FROM customers ORDER BY stripe_customer_id",
        "SELECT concat_ws('|', 'subscription', stripe_subscription_id, status, price_id, tier)
           FROM subscriptions ORDER BY stripe_subscription_id",
        "SELECT concat_ws('|', 'invoice', stripe_invoice_id, status, amount_paid, amount_remaining)
           FROM invoices ORDER BY stripe_invoice_id",
        "SELECT concat_ws('|', 'balance', c.stripe_customer_id, b.balance)
           FROM credit_balances b JOIN customers c ON c.id = b.customer_id ORDER BY c.stripe_customer_id",
        "SELECT concat_ws('|', 'ledger', idempotency_key, delta) FROM credit_ledger ORDER BY idempotency_key",
        "SELECT concat_ws('|', 'transaction', kind, stripe_object_id, status, amount, currency)
           FROM transactions WHERE kind <> 'upgrade' AND kind <> 'downgrade'
          ORDER BY kind, stripe_object_id",
    ] {
        let part: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(&billing.pool)
            .await
            .unwrap();
        rows.extend(part);
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_lifecycles_with_payments_and_credits_converge_whatever_the_delivery_order() {
    let events = lifecycles();
    let distinct = events.len() as i64;
    let mut shuffled = events.clone();
    shuffle(&mut shuffled, 3);
    let mut doubled: Vec<_> = events.iter().chain(events.iter()).cloned().collect();
    shuffle(&mut doubled, 5);

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
        let state = final_state(&billing).await;
        states.push((name, state));
    }
    for (name, state) in &states[1..] {
        assert_eq!(&states[0].1, state, "final state: in order vs {name}");
    }

    // And it is the right state, not merely a consistent one.
    let state = &states[0].1;
    let has = |row: &str| {
        assert!(
            state.iter().any(|r| r == row),
            "expected {row} in\n{}",
            state.join("\n")
        )
    };
    has("customer|cus_life_0|user_0|active|pro_plus"); // upgraded
    has("customer|cus_life_1|user_1|active|pro"); // upgraded, then downgraded
    has("customer|cus_life_2|user_2|canceled|free"); // cancelled
    has("customer|cus_life_3|user_3|payment_failed|free"); // failing again
    has("subscription|sub_life_2|canceled|price_pro_monthly|pro");
    has("invoice|in_life_3_3|paid|24900|0"); // recovered
    // Credits: 100 × (n + 1) bought; 500/999 refunded for even n (clawback rounds down).
    has("balance|cus_life_0|50");
    has("balance|cus_life_1|200");
    has("balance|cus_life_4|250");
    has("transaction|refund|ch_topup_0|succeeded|500|eur");
    has("transaction|credit_topup|cs_topup_0|succeeded|999|eur");
    has("transaction|cancel|sub_life_2|succeeded"); // no amount: NULLs are skipped
    assert_eq!(
        state.iter().filter(|r| r.starts_with("customer|")).count(),
        CUSTOMERS as usize
    );
}
