//! Invoices: a failed payment revokes at once, payment restores, and the
//! transaction history follows the invoice whatever the delivery order.

use serde_json::{Value, json};
use tollgate_test_support::stripe_fixture;

use crate::helpers::*;
use crate::subscriptions::{T0, access, deliver, settle, subscription_event};

const SUB: &str = "sub_inv";
const CUS: &str = "cus_inv";

/// The real 2025-shape `invoice.payment_failed` payload (pay-rails), pointed at our
/// customer and subscription, as an event of `event_type` at `created`.
fn invoice_event(event_type: &str, created: i64, paid: bool) -> (String, Vec<u8>) {
    invoice_event_for(CUS, SUB, "in_1234", event_type, created, paid)
}

/// The same real payload for any customer, subscription and invoice id.
pub fn invoice_event_for(
    customer: &str,
    subscription: &str,
    invoice_id: &str,
    event_type: &str,
    created: i64,
    paid: bool,
) -> (String, Vec<u8>) {
    let mut data: Value = serde_json::from_slice(&stripe_fixture(
        "data-only/invoice.payment_failed.data-only.pay-rails.json",
    ))
    .unwrap();
    let invoice = &mut data["object"];
    invoice["id"] = invoice_id.into();
    invoice["customer"] = customer.into();
    invoice["parent"]["subscription_details"]["subscription"] = subscription.into();
    invoice["created"] = (T0 + 100).into();
    if paid {
        invoice["status"] = "paid".into();
        invoice["amount_paid"] = invoice["amount_due"].clone();
        invoice["amount_remaining"] = 0.into();
        invoice["status_transitions"]["paid_at"] = created.into();
    }
    let id = format!(
        "evt_{}_{invoice_id}_{created}",
        event_type.replace('.', "_")
    );
    let event = json!({ "id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "api_version": "2025-03-31.basil", "data": data });
    (id, serde_json::to_vec(&event).unwrap())
}

async fn transaction(billing: &TestBilling) -> (String, String, i64, String) {
    sqlx::query_as("SELECT kind, status, amount, currency FROM transactions WHERE stripe_object_id = 'in_1234'")
        .fetch_one(&billing.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_revokes_at_once_and_payment_restores() {
    let mut billing = spawn_billing(Options::default()).await;
    let active = subscription_event(
        "customer.subscription.created",
        T0,
        SUB,
        CUS,
        "active",
        "price_pro_monthly",
    );
    deliver(&billing, &[active]).await;
    settle(&billing, 1).await;
    assert_eq!(access(&billing, CUS).await, ("active".into(), "pro".into()));

    // The subscription is still "active" at Stripe, but access goes now.
    deliver(
        &billing,
        &[invoice_event("invoice.payment_failed", T0 + 200, false)],
    )
    .await;
    settle(&billing, 2).await;
    assert_eq!(
        access(&billing, CUS).await,
        ("payment_failed".into(), "free".into())
    );
    assert_eq!(
        transaction(&billing).await,
        (
            "subscription_payment".into(),
            "failed".into(),
            24900,
            "usd".into()
        )
    );

    deliver(&billing, &[invoice_event("invoice.paid", T0 + 300, true)]).await;
    settle(&billing, 3).await;
    assert_eq!(access(&billing, CUS).await, ("active".into(), "pro".into()));
    assert_eq!(
        transaction(&billing).await,
        (
            "subscription_payment".into(),
            "succeeded".into(),
            24900,
            "usd".into()
        )
    );
    let audit: Vec<String> = sqlx::query_scalar("SELECT new_status FROM access_audit ORDER BY id")
        .fetch_all(&billing.pool)
        .await
        .unwrap();
    assert_eq!(audit, ["active", "payment_failed", "active"]);
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_failure_notice_does_not_revoke_a_paid_invoice() {
    let mut billing = spawn_billing(Options::default()).await;
    deliver(
        &billing,
        &[
            invoice_event("invoice.paid", T0 + 300, true),
            subscription_event(
                "customer.subscription.created",
                T0,
                SUB,
                CUS,
                "active",
                "price_pro_monthly",
            ),
        ],
    )
    .await;
    settle(&billing, 2).await;
    // Stripe's retry of the older failure arrives last.
    deliver(
        &billing,
        &[invoice_event("invoice.payment_failed", T0 + 200, false)],
    )
    .await;
    settle(&billing, 3).await;
    assert_eq!(access(&billing, CUS).await, ("active".into(), "pro".into()));
    assert_eq!(
        transaction(&billing).await,
        (
            "subscription_payment".into(),
            "succeeded".into(),
            24900,
            "usd".into()
        )
    );
    let (status, paid_at): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT status, paid_at FROM invoices WHERE stripe_invoice_id = 'in_1234'")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(status, "paid");
    assert_eq!(paid_at.map(|t| t.timestamp()), Some(T0 + 300));
    billing.stop().await;
}
