//! Credit top-ups and refund clawbacks, payment methods, Stripe entitlement
//! features and customer deletion, with real payload shapes.

use serde_json::{Value, json};
use tollgate_test_support::stripe_fixture;

use crate::helpers::*;
use crate::subscriptions::{T0, deliver, settle};

const CUS: &str = "cus_credits";
const PI: &str = "pi_credits_1";

fn wrap(event_type: &str, id: &str, created: i64, data: Value) -> (String, Vec<u8>) {
    let event = json!({ "id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "api_version": "2025-03-31.basil", "data": data });
    (id.to_string(), serde_json::to_vec(&event).unwrap())
}

/// The real payment-mode checkout (stripe-sync-engine) as one of our top-ups.
fn topup_event() -> (String, Vec<u8>) {
    let mut event: Value = serde_json::from_slice(&stripe_fixture(
        "complete/checkout.session.completed.payment_mode.stripe-sync-engine.json",
    ))
    .unwrap();
    let session = &mut event["data"]["object"];
    session["customer"] = CUS.into();
    session["payment_intent"] = PI.into();
    session["client_reference_id"] = "user_credits".into();
    session["metadata"] = json!({ "credits": "500" });
    wrap(
        "checkout.session.completed",
        "evt_topup",
        T0,
        event["data"].clone(),
    )
}

/// The real `charge.refunded` (stripe-sync-engine) for our top-up's payment.
fn refund_event(id: &str, created: i64, refunded: i64) -> (String, Vec<u8>) {
    let mut event: Value = serde_json::from_slice(&stripe_fixture(
        "complete/charge.refunded.stripe-sync-engine.json",
    ))
    .unwrap();
    let charge = &mut event["data"]["object"];
    charge["customer"] = CUS.into();
    charge["payment_intent"] = PI.into();
    charge["amount"] = 999.into();
    charge["amount_refunded"] = refunded.into();
    charge["currency"] = "eur".into();
    wrap("charge.refunded", id, created, event["data"].clone())
}

async fn balance(billing: &TestBilling) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE((SELECT b.balance FROM credit_balances b JOIN customers c ON c.id = b.customer_id
                           WHERE c.stripe_customer_id = $1), 0)",
    )
    .bind(CUS)
    .fetch_one(&billing.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_adds_credits_once_and_refunds_claw_them_back_in_proportion() {
    for full_refund_first in [false, true] {
        let mut billing = spawn_billing(Options::default()).await;
        let topup = topup_event();
        deliver(&billing, &[topup.clone(), topup]).await;
        settle(&billing, 1).await;
        assert_eq!(balance(&billing).await, 500);
        let (kind, status, amount, currency): (String, String, i64, String) = sqlx::query_as(
            "SELECT kind, status, amount, currency FROM transactions WHERE kind = 'credit_topup'",
        )
        .fetch_one(&billing.pool)
        .await
        .unwrap();
        assert_eq!(
            (kind.as_str(), status.as_str(), amount, currency.as_str()),
            ("credit_topup", "succeeded", 999, "eur")
        );

        let partial = refund_event("evt_refund_partial", T0 + 10, 500);
        let full = refund_event("evt_refund_full", T0 + 20, 999);
        let order = if full_refund_first {
            vec![full, partial]
        } else {
            vec![partial, full]
        };
        for refund in order {
            deliver(&billing, &[refund]).await;
        }
        settle(&billing, 3).await;
        assert_eq!(
            balance(&billing).await,
            0,
            "full refund claws back all 500 (full first: {full_refund_first})"
        );
        let refund_amount: i64 =
            sqlx::query_scalar("SELECT amount FROM transactions WHERE kind = 'refund'")
                .fetch_one(&billing.pool)
                .await
                .unwrap();
        assert_eq!(refund_amount, 999);
        let ledger_sum: i64 = sqlx::query_scalar("SELECT sum(delta)::bigint FROM credit_ledger")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
        assert_eq!(ledger_sum, 0, "balance equals the ledger");
        billing.stop().await;
    }
}

/// The ledger's customer is checked once per statement (not by a per-row foreign
/// key): a statement that names a customer that does not exist is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_refuses_a_customer_that_does_not_exist() {
    let billing = spawn_billing(Options::default()).await;
    let known: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO customers (user_id, email, stripe_customer_id) VALUES ('user_ledger', 'ledger@example.com', 'cus_ledger')
         RETURNING id",
    )
    .fetch_one(&billing.pool)
    .await
    .unwrap();
    let unknown = uuid::Uuid::new_v4();
    let code = |e: sqlx::Error| {
        e.as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.to_string())
    };

    // One known and one unknown customer in one statement: neither row is written.
    let mixed = sqlx::query(
        "INSERT INTO credit_ledger (customer_id, delta, reason, idempotency_key)
         SELECT * FROM UNNEST($1::uuid[], ARRAY[5, 5]::bigint[], ARRAY['admin_adjustment', 'admin_adjustment'], ARRAY['k1', 'k2'])",
    )
    .bind(vec![known, unknown])
    .execute(&billing.pool)
    .await
    .map_err(code);
    assert_eq!(mixed.err(), Some(Some("23503".to_string())));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_ledger")
        .fetch_one(&billing.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "a refused statement wrote nothing");

    sqlx::query(
        "INSERT INTO credit_ledger (customer_id, delta, reason, idempotency_key) VALUES ($1, 5, 'admin_adjustment', 'k1')",
    )
    .bind(known)
    .execute(&billing.pool)
    .await
    .expect("a known customer's row is written");
    let moved =
        sqlx::query("UPDATE credit_ledger SET customer_id = $1 WHERE idempotency_key = 'k1'")
            .bind(unknown)
            .execute(&billing.pool)
            .await
            .map_err(code);
    assert_eq!(moved.err(), Some(Some("23503".to_string())));
    let owner: uuid::Uuid =
        sqlx::query_scalar("SELECT customer_id FROM credit_ledger WHERE idempotency_key = 'k1'")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(owner, known);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_refund_claws_back_its_share() {
    let mut billing = spawn_billing(Options::default()).await;
    deliver(
        &billing,
        &[topup_event(), refund_event("evt_refund_half", T0 + 10, 500)],
    )
    .await;
    settle(&billing, 2).await;
    // 500 credits × 500/999 refunded = 250 (rounded down) clawed back.
    assert_eq!(balance(&billing).await, 250);
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_arrives_before_its_topup_still_claws_back() {
    let mut billing = spawn_billing(Options::default()).await;
    // Delivered and applied one after the other: the refund really comes first.
    deliver(&billing, &[refund_event("evt_refund_early", T0 + 10, 500)]).await;
    settle(&billing, 1).await;
    assert_eq!(balance(&billing).await, 0, "no credits before the top-up");
    deliver(&billing, &[topup_event()]).await;
    settle(&billing, 2).await;
    assert_eq!(
        balance(&billing).await,
        250,
        "the top-up lands already clawed back by the earlier half refund"
    );
    // The same refund again changes nothing.
    deliver(
        &billing,
        &[refund_event("evt_refund_early_again", T0 + 11, 500)],
    )
    .await;
    settle(&billing, 3).await;
    assert_eq!(balance(&billing).await, 250);
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_methods_keep_brand_and_last4_only_and_a_detach_is_final() {
    let mut billing = spawn_billing(Options::default()).await;
    let attached: Value = serde_json::from_slice(&stripe_fixture(
        "complete/payment_method.attached.stripe-sync-engine.json",
    ))
    .unwrap();
    let detached: Value = serde_json::from_slice(&stripe_fixture(
        "complete/payment_method.detached.stripe-sync-engine.json",
    ))
    .unwrap();
    let pm = attached["data"]["object"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut detached_data = detached["data"].clone();
    detached_data["object"]["id"] = pm.clone().into();
    // The detach (later) arrives before the attach.
    deliver(
        &billing,
        &[
            wrap(
                "payment_method.detached",
                "evt_pm_detach",
                T0 + 50,
                detached_data,
            ),
            wrap(
                "payment_method.attached",
                "evt_pm_attach",
                T0,
                attached["data"].clone(),
            ),
        ],
    )
    .await;
    settle(&billing, 2).await;
    let row: (String, Option<String>, Option<String>, Option<i16>, Option<i16>, bool) = sqlx::query_as(
        "SELECT type, brand, last4, exp_month, exp_year, attached FROM payment_methods WHERE stripe_payment_method_id = $1",
    )
    .bind(&pm)
    .fetch_one(&billing.pool)
    .await
    .unwrap();
    // The later (detached) snapshot wins, with its own card details.
    let card = &detached["data"]["object"]["card"];
    let expected = (
        "card".to_string(),
        card["brand"].as_str().map(str::to_string),
        card["last4"].as_str().map(str::to_string),
        card["exp_month"].as_i64().map(|m| m as i16),
        card["exp_year"].as_i64().map(|y| y as i16),
        false,
    );
    assert_eq!(row, expected);
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'payment_methods'",
    )
    .fetch_all(&billing.pool)
    .await
    .unwrap();
    assert!(
        !columns
            .iter()
            .any(|c| c.contains("number") || c.contains("cvc")),
        "{columns:?}"
    );
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_entitlement_features_and_customer_deletion_are_stored() {
    let mut billing = spawn_billing(Options::default()).await;
    let summary: Value = serde_json::from_slice(&stripe_fixture(
        "complete/entitlements.active_entitlement_summary.updated.stripe-sync-engine.json",
    ))
    .unwrap();
    let customer = summary["data"]["object"]["customer"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stripe_customer: Value =
        serde_json::from_slice(&stripe_fixture("objects/customer.openapi-fixtures3.json")).unwrap();
    stripe_customer["id"] = customer.clone().into();
    stripe_customer["email"] = "person@example.com".into();
    stripe_customer["metadata"] = json!({ "user_id": "user_features" });
    deliver(
        &billing,
        &[
            wrap(
                "entitlements.active_entitlement_summary.updated",
                "evt_summary",
                T0,
                summary["data"].clone(),
            ),
            wrap(
                "customer.created",
                "evt_cus_created",
                T0,
                json!({ "object": stripe_customer.clone() }),
            ),
            wrap(
                "customer.deleted",
                "evt_cus_deleted",
                T0 + 5,
                json!({ "object": stripe_customer }),
            ),
        ],
    )
    .await;
    settle(&billing, 3).await;
    let (features, user_id, email, deleted): (Vec<String>, Option<String>, Option<String>, bool) = sqlx::query_as(
        "SELECT stripe_features, user_id, email, deleted_at IS NOT NULL FROM customers WHERE stripe_customer_id = $1",
    )
    .bind(&customer)
    .fetch_one(&billing.pool)
    .await
    .unwrap();
    assert_eq!(features, ["journeys"]);
    assert_eq!(user_id.as_deref(), Some("user_features"));
    assert_eq!(email.as_deref(), Some("person@example.com"));
    assert!(deleted);
    billing.stop().await;
}
